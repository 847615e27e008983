//! Names for ids: which Service each frontend id belongs to.
//!
//! The maps hold numbers; operators want names. The writer records every
//! programmed frontend in `<state-dir>/frontends.json` (replaced atomically)
//! so `sluicectl` can show `namespace/name` next to each id, whether or not
//! the daemon is running.

use std::{
    io::Write,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use crate::model::{Frontend, Scope};

pub const META_FILE: &str = "frontends.json";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontendMeta {
    pub id: u32,
    // Shared with the frontend's ServiceRef while the daemon holds it.
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub port_name: Arc<str>,
    pub kind: String,
    pub addr: Ipv4Addr,
    pub port: u16,
    pub protocol: String,
    pub internal_scope: bool,
    pub local_only: bool,
    pub affinity_timeout: Option<u32>,
    pub snat_remote: bool,
    pub health_check_node_port: Option<u16>,
}

impl FrontendMeta {
    pub fn new(id: u32, fe: &Frontend) -> Self {
        Self {
            id,
            namespace: fe.service.namespace.clone(),
            name: fe.service.name.clone(),
            port_name: fe.service.port_name.clone(),
            kind: fe.kind.name().to_string(),
            addr: fe.key.addr,
            port: fe.key.port,
            protocol: fe.key.protocol.to_string(),
            internal_scope: fe.key.scope == Scope::Internal,
            local_only: fe.local_only,
            affinity_timeout: fe.affinity_timeout,
            snat_remote: fe.snat_remote,
            health_check_node_port: fe.health_check_node_port,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatapathMeta {
    pub node: String,
    /// The sluiced version that wrote the file.
    #[serde(default)]
    pub version: String,
    /// Shared with the writer's names while it serializes them.
    pub frontends: Vec<Arc<FrontendMeta>>,
}

pub fn meta_path(state_dir: &Path) -> PathBuf {
    state_dir.join(META_FILE)
}

/// Writes the file through a temporary and a rename, so readers never see
/// half of it.
pub fn write(state_dir: &Path, meta: &DatapathMeta) -> std::io::Result<()> {
    write_json(state_dir, META_FILE, meta)
}

/// Writes `frontends.json` on a thread of its own, newest names first:
/// with 10k Services the file is over a megabyte and its fsync can take
/// tens of milliseconds here, which must not delay the next change. A
/// snapshot published while an earlier one is being written replaces any
/// other waiting one. Readers see the old file or the new, never half.
pub struct NamesFile {
    pending: Arc<(std::sync::Mutex<Pending>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How long the names file waits after a change for more to come.
const COALESCE: std::time::Duration = std::time::Duration::from_millis(20);

#[derive(Default)]
struct Pending {
    snapshot: Option<Vec<Arc<FrontendMeta>>>,
    closed: bool,
}

impl NamesFile {
    pub fn spawn(state_dir: &Path, node: &str) -> std::io::Result<Self> {
        let pending: Arc<(std::sync::Mutex<Pending>, std::sync::Condvar)> = Default::default();
        let (state_dir, node) = (state_dir.to_owned(), node.to_owned());
        let shared = pending.clone();
        let thread = std::thread::Builder::new()
            .name("frontends.json".into())
            .spawn(move || {
                // Behind the control loop: on a busy node this thread waits,
                // the next change does not.
                // SAFETY: setpriority on the calling thread (who 0).
                unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
                let (lock, ready) = &*shared;
                loop {
                    let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
                    while p.snapshot.is_none() && !p.closed {
                        p = ready.wait(p).unwrap_or_else(|e| e.into_inner());
                    }
                    if p.snapshot.is_none() {
                        return;
                    }
                    drop(p);
                    // A burst of changes (a rollout) becomes one write.
                    std::thread::sleep(COALESCE);
                    let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
                    let Some(mut frontends) = p.snapshot.take() else {
                        return;
                    };
                    drop(p);
                    frontends.sort_by_key(|f| f.id);
                    let meta = DatapathMeta {
                        node: node.clone(),
                        version: env!("CARGO_PKG_VERSION").to_string(),
                        frontends,
                    };
                    if let Err(e) = write(&state_dir, &meta) {
                        tracing::warn!(
                            path = %meta_path(&state_dir).display(),
                            error = %e,
                            "recording frontend names failed; sluicectl shows ids only until the next change"
                        );
                    }
                }
            })?;
        Ok(Self {
            pending,
            thread: Some(thread),
        })
    }

    /// Queues `frontends` to be written (replacing a snapshot not yet
    /// written).
    pub fn publish(&self, frontends: Vec<Arc<FrontendMeta>>) {
        let (lock, ready) = &*self.pending;
        lock.lock().unwrap_or_else(|e| e.into_inner()).snapshot = Some(frontends);
        ready.notify_one();
    }
}

impl Drop for NamesFile {
    /// Lets the thread write what is queued, and waits for it: a daemon
    /// that stops leaves the names of what it programmed.
    fn drop(&mut self) {
        let (lock, ready) = &*self.pending;
        lock.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        ready.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn read(state_dir: &Path) -> std::io::Result<DatapathMeta> {
    let bytes = std::fs::read(meta_path(state_dir))?;
    serde_json::from_slice(&bytes).map_err(std::io::Error::other)
}

/// The overlay as the daemon last synced it, for `sluicectl nodes`.
pub const NODES_FILE: &str = "nodes.json";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMeta {
    pub name: String,
    pub addr: Ipv4Addr,
    pub pod_cidr: ipnetwork::Ipv4Network,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayMeta {
    /// The overlay device; `None` when the overlay is off.
    pub device: Option<String>,
    /// This node.
    pub node: Option<NodeMeta>,
    /// The other nodes, as overlay peers.
    pub peers: Vec<NodeMeta>,
}

/// Writes a JSON file in `state_dir` through a temporary and a rename.
fn write_json<T: Serialize>(state_dir: &Path, name: &str, value: &T) -> std::io::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    let path = state_dir.join(name);
    let tmp = path.with_extension("json.tmp");
    // Buffered: serde writes token by token, a syscall each otherwise
    // (10k frontends took ~1 s of CPU per write that way).
    let mut f = std::io::BufWriter::with_capacity(1 << 16, std::fs::File::create(&tmp)?);
    serde_json::to_writer(&mut f, value)?;
    f.write_all(b"\n")?;
    f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, &path)
}

pub fn write_overlay(state_dir: &Path, meta: &OverlayMeta) -> std::io::Result<()> {
    write_json(state_dir, NODES_FILE, meta)
}

pub fn read_overlay(state_dir: &Path) -> std::io::Result<OverlayMeta> {
    let bytes = std::fs::read(state_dir.join(NODES_FILE))?;
    serde_json::from_slice(&bytes).map_err(std::io::Error::other)
}
