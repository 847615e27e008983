//! The manifests directory as a running source: inotify events (and a
//! periodic rescan, for anything inotify misses) lead to a reread of the
//! files that changed and, when the objects changed, a new [`Update`].

use std::{path::PathBuf, sync::Arc, time::Duration, time::Instant};

use tokio::sync::{mpsc, watch};
use tracing::warn;

use super::{Update, manifest_dir::ManifestDir};

/// Editors and `kubectl` write in bursts: wait this long after the first
/// event before rereading.
const QUIET: Duration = Duration::from_millis(30);
const RESCAN: Duration = Duration::from_secs(10);

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

/// Rereads what changed; publishes a new view if the objects changed.
/// Returns false once nobody listens any more.
fn scan(dir: &mut ManifestDir, seen: Instant, tx: &watch::Sender<Option<Update>>) -> bool {
    let scan = dir.rescan();
    for p in &scan.problems {
        warn!(file = %p.file.display(), reason = %p.reason, "manifest skipped");
    }
    if scan.changed {
        let update = Update {
            state: Arc::new(dir.state()),
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
    let mut watcher = notify::recommended_watcher(move |_event| {
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
        state: Arc::new(files.state()),
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
                Some(()) = dirty.recv() => {
                    let seen = Instant::now();
                    tokio::time::sleep(QUIET).await;
                    while dirty.try_recv().is_ok() {}
                    scan(&mut files, seen, &tx)
                }
                _ = rescan.tick() => scan(&mut files, Instant::now(), &tx),
            };
            if !alive {
                break;
            }
        }
    });
    Ok(rx)
}
