//! The manifests directory as a running source: inotify events that can
//! change content (and a periodic rescan, for anything inotify misses)
//! lead to a reread of the files that changed and, when the objects
//! changed, a new [`Update`].

use std::{
    collections::BTreeSet,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, watch};
use tracing::warn;

use super::{Update, manifest_dir::ManifestDir};

const RESCAN: Duration = Duration::from_secs(10);

/// Whether an inotify event may change what the directory holds: a file
/// created, written and closed, renamed or removed. Opening or reading a
/// file does not (the source's own reads would wake it forever), nor does
/// a write still in progress (its close follows) or a metadata change
/// (the periodic rescan sees one that matters). An event notify cannot
/// classify counts, to be safe.
fn changes_content(event: &notify::Event) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Metadata(_)) => false,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
        EventKind::Any | EventKind::Other => true,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestSourceError {
    #[error("manifests directory {0} does not exist")]
    Missing(PathBuf),
    #[error("watching {path}: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// Paths file events named since the last scan; `None` when some event
/// named none (or the watcher failed): then the whole directory is
/// scanned.
type Named = Arc<Mutex<Option<BTreeSet<PathBuf>>>>;

/// Rereads what changed (the files `named`, or the whole directory);
/// publishes a new view if the objects changed. Returns false once nobody
/// listens any more.
fn scan(
    dir: &mut ManifestDir,
    named: Option<BTreeSet<PathBuf>>,
    seen: Instant,
    tx: &watch::Sender<Option<Update>>,
) -> bool {
    let scan = match named {
        Some(paths) => dir.rescan_paths(paths.iter().map(PathBuf::as_path)),
        None => dir.rescan(),
    };
    for p in &scan.problems {
        warn!(file = %p.file.display(), reason = %p.reason, "manifest skipped");
    }
    if scan.changed {
        let update = Update {
            state: dir.view(),
            seen,
            problems: dir.problems(),
        };
        if tx.send(Some(update)).is_err() {
            return false;
        }
    }
    true
}

/// Starts watching `dir`. The receiver always holds the newest view (the
/// first one, the directory as it is, at once); a slow reader skips
/// intermediate views rather than queueing them. The task ends when the
/// receiver is dropped.
pub fn spawn(dir: PathBuf) -> Result<watch::Receiver<Option<Update>>, ManifestSourceError> {
    if !dir.is_dir() {
        return Err(ManifestSourceError::Missing(dir));
    }
    let (dirty_tx, mut dirty) = mpsc::channel::<()>(1);
    let named: Named = Arc::new(Mutex::new(Some(BTreeSet::new())));
    let noted = named.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = event.as_ref().map_or(true, changes_content);
        if !relevant {
            return;
        }
        {
            let mut named = noted.lock().unwrap_or_else(PoisonError::into_inner);
            match (&event, named.as_mut()) {
                (Ok(e), Some(paths)) if !e.paths.is_empty() => {
                    paths.extend(e.paths.iter().cloned())
                }
                // An error (a queue overflow, say) may hide any change.
                _ => *named = None,
            }
        }
        let _ = dirty_tx.try_send(());
    })
    .map_err(|source| ManifestSourceError::Watch {
        path: dir.clone(),
        source,
    })?;
    notify::Watcher::watch(&mut watcher, &dir, notify::RecursiveMode::NonRecursive).map_err(
        |source| ManifestSourceError::Watch {
            path: dir.clone(),
            source,
        },
    )?;
    let (tx, rx) = watch::channel(None);
    let mut files = ManifestDir::new(dir);
    let first = files.rescan();
    for p in &first.problems {
        warn!(file = %p.file.display(), reason = %p.reason, "manifest skipped");
    }
    tx.send_replace(Some(Update {
        state: files.view(),
        seen: Instant::now(),
        problems: files.problems(),
    }));
    tokio::spawn(async move {
        // Dropping the watcher would stop the events.
        let _watcher = watcher;
        let mut rescan = tokio::time::interval(RESCAN);
        rescan.tick().await;
        loop {
            let alive = tokio::select! {
                // No waiting for a burst to end: a lone change is read at
                // once, and events arriving while a scan runs are coalesced
                // into the next one (the channel holds one).
                Some(()) = dirty.recv() => {
                    let paths = named
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .replace(BTreeSet::new());
                    scan(&mut files, paths, Instant::now(), &tx)
                }
                _ = rescan.tick() => scan(&mut files, None, Instant::now(), &tx),
            };
            if !alive {
                break;
            }
        }
    });
    Ok(rx)
}
