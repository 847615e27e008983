//! File-backed IPAM: one node's pod CIDR, shared by concurrent plugin runs.
//!
//! # Design: one state file, replaced atomically
//!
//! The store is a directory (`<stateDir>/ipam/<network>/`) holding:
//! - `lock`: an empty file; every operation holds an exclusive `flock` on it
//!   for its whole read-modify-write, so concurrent ADD/DEL/GC serialize;
//! - `allocations.json`: every reservation `(ip, containerID, ifname)` plus
//!   the round-robin cursor (the last address handed out).
//!
//! A change writes `allocations.json.tmp`, fsyncs it, renames it over
//! `allocations.json` and fsyncs the directory. A crash (even SIGKILL or
//! power loss) at any point leaves either the old or the new state, never a
//! mix, and the only debris is the fixed-name temp file that the next writer
//! overwrites (and that every locked operation removes).
//!
//! Why not host-local's one-file-per-IP layout: there a reservation is
//! `O_EXCL`-created and then written, so a crash in between leaves an empty
//! file that pins its address forever without naming an owner (no DEL or GC
//! can find it), and the reservation and the cursor are separate files that
//! can disagree. Here one rename moves both together. The cost, rewriting the
//! whole file per change, is a few KiB for the ~110–250 pods a node runs; the
//! lock makes the store's throughput one change at a time, which is far above
//! what pod churn on one node needs.
//!
//! Allocation never hands out the network, gateway (first host) or broadcast
//! address, starts after the last address handed out (so a just-freed
//! address is not reused at once, which keeps stale ARP/conntrack state from
//! hitting a new pod), and is idempotent per `(containerID, ifname)`.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use sluice_net::cni::error::{CniError, code};

const LOCK_FILE: &str = "lock";
const STATE_FILE: &str = "allocations.json";
const TMP_FILE: &str = "allocations.json.tmp";
/// Layout version of `allocations.json`; bump on incompatible changes.
const STATE_FORMAT: u32 = 1;

/// The owner of a reservation: the spec's primary key within a network.
/// Serializes as the spec's GC attachment object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

impl Attachment {
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> Self {
        Self {
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }
}

/// One reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub ip: Ipv4Addr,
    #[serde(flatten)]
    pub owner: Attachment,
}

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("no free address left in {cidr}")]
    Exhausted { cidr: Ipv4Network },
    #[error("pod CIDR {cidr} has no usable addresses (a /30 is the smallest)")]
    PoolTooSmall { cidr: Ipv4Network },
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("IPAM state {} is unreadable: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
}

impl From<IpamError> for CniError {
    fn from(e: IpamError) -> Self {
        let c = match e {
            IpamError::Exhausted { .. } => code::POOL_EXHAUSTED,
            IpamError::PoolTooSmall { .. } => code::INVALID_CONFIG,
            IpamError::Io { .. } | IpamError::Corrupt { .. } => code::IO,
        };
        CniError::new(c, e.to_string())
    }
}

/// The usable addresses of a pod CIDR: everything but the network, the
/// gateway (first host) and the broadcast address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    cidr: Ipv4Network,
    first: u32,
    last: u32,
}

impl Pool {
    pub fn new(cidr: Ipv4Network) -> Result<Self, IpamError> {
        let network = u32::from(cidr.network());
        let broadcast = u32::from(cidr.broadcast());
        // network, gateway, ≥1 pod, broadcast: at least 4 addresses.
        if broadcast - network < 3 {
            return Err(IpamError::PoolTooSmall { cidr });
        }
        Ok(Self {
            cidr,
            first: network + 2,
            last: broadcast - 1,
        })
    }

    pub fn cidr(&self) -> Ipv4Network {
        self.cidr
    }

    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.first - 1)
    }

    /// How many addresses pods can get.
    pub fn size(&self) -> u32 {
        self.last - self.first + 1
    }

    pub fn is_usable(&self, ip: Ipv4Addr) -> bool {
        (self.first..=self.last).contains(&u32::from(ip))
    }

    /// Picks the first free address after `cursor` (wrapping), or `None`.
    fn pick(&self, cursor: Option<Ipv4Addr>, taken: &BTreeSet<u32>) -> Option<Ipv4Addr> {
        let size = u64::from(self.size());
        let start = match cursor {
            Some(c) if self.is_usable(c) => u64::from(u32::from(c) - self.first) + 1,
            _ => 0,
        };
        (0..size)
            .map(|i| self.first + ((start + i) % size) as u32)
            .find(|c| !taken.contains(c))
            .map(Ipv4Addr::from)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    version: u32,
    /// The round-robin cursor: the address handed out last.
    #[serde(default)]
    last: Option<Ipv4Addr>,
    #[serde(default)]
    allocations: Vec<Allocation>,
}

/// A handle on one network's store. Cheap; every call takes the lock anew,
/// so a handle can live across plugin phases without blocking others.
#[derive(Debug, Clone)]
pub struct IpamStore {
    dir: PathBuf,
}

impl IpamStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, IpamError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|source| IpamError::Io {
            op: "create directory",
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    /// Reserves an address for `owner`; returns the one it already holds if
    /// any (a repeated ADD must not leak a second address).
    pub fn allocate(&self, pool: &Pool, owner: &Attachment) -> Result<Ipv4Addr, IpamError> {
        self.locked(|state| {
            if let Some(a) = state.allocations.iter().find(|a| &a.owner == owner)
                && pool.is_usable(a.ip)
            {
                return Ok((a.ip, false));
            }
            // A reservation outside the pool belongs to an older pod CIDR:
            // the attachment is being re-added, so it moves to the new one.
            // (On exhaustion the stale one stays: a failed call changes nothing.)
            state.allocations.retain(|a| &a.owner != owner);
            let taken: BTreeSet<u32> = state.allocations.iter().map(|a| u32::from(a.ip)).collect();
            let Some(ip) = pool.pick(state.last, &taken) else {
                return Err(IpamError::Exhausted { cidr: pool.cidr });
            };
            state.allocations.push(Allocation {
                ip,
                owner: owner.clone(),
            });
            state.allocations.sort_by_key(|a| u32::from(a.ip));
            state.last = Some(ip);
            Ok((ip, true))
        })
    }

    /// Drops every reservation of `owner`; returns the addresses freed.
    pub fn release(&self, owner: &Attachment) -> Result<Vec<Ipv4Addr>, IpamError> {
        self.retain(|a| a != owner)
            .map(|gone| gone.into_iter().map(|a| a.ip).collect())
    }

    /// Drops every reservation whose owner `keep` rejects; returns them.
    pub fn retain(&self, keep: impl Fn(&Attachment) -> bool) -> Result<Vec<Allocation>, IpamError> {
        self.locked(|state| {
            let (kept, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut state.allocations)
                .into_iter()
                .partition(|a| keep(&a.owner));
            state.allocations = kept;
            let dirty = !gone.is_empty();
            Ok((gone, dirty))
        })
    }

    /// The address `owner` holds, if any.
    pub fn lookup(&self, owner: &Attachment) -> Result<Option<Ipv4Addr>, IpamError> {
        self.locked(|state| {
            let ip = state
                .allocations
                .iter()
                .find(|a| &a.owner == owner)
                .map(|a| a.ip);
            Ok((ip, false))
        })
    }

    /// Every reservation, in address order.
    pub fn allocations(&self) -> Result<Vec<Allocation>, IpamError> {
        self.locked(|state| Ok((state.allocations.clone(), false)))
    }

    /// Runs `f` on the state under the lock; persists it when `f` says it
    /// changed it. Errors from `f` leave the file untouched.
    fn locked<T>(
        &self,
        f: impl FnOnce(&mut State) -> Result<(T, bool), IpamError>,
    ) -> Result<T, IpamError> {
        let lock_path = self.dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|source| IpamError::Io {
                op: "open",
                path: lock_path.clone(),
                source,
            })?;
        // flock(2): released when `lock` is closed, including when the
        // process dies, so a killed plugin never wedges the store.
        lock.lock().map_err(|source| IpamError::Io {
            op: "lock",
            path: lock_path.clone(),
            source,
        })?;

        // Only a writer killed mid-write leaves this; nobody else is writing.
        let tmp = self.dir.join(TMP_FILE);
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(IpamError::Io {
                    op: "remove",
                    path: tmp,
                    source,
                });
            }
        }

        let mut state = self.read()?;
        let (out, dirty) = f(&mut state)?;
        if dirty {
            self.write(&state)?;
        }
        drop(lock);
        Ok(out)
    }

    fn read(&self) -> Result<State, IpamError> {
        let path = self.dir.join(STATE_FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(State {
                    version: STATE_FORMAT,
                    ..State::default()
                });
            }
            Err(source) => {
                return Err(IpamError::Io {
                    op: "read",
                    path,
                    source,
                });
            }
        };
        let state: State = serde_json::from_slice(&bytes).map_err(|e| IpamError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if state.version != STATE_FORMAT {
            return Err(IpamError::Corrupt {
                path,
                reason: format!(
                    "format version {} (this plugin reads {STATE_FORMAT})",
                    state.version
                ),
            });
        }
        Ok(state)
    }

    fn write(&self, state: &State) -> Result<(), IpamError> {
        let tmp = self.dir.join(TMP_FILE);
        let path = self.dir.join(STATE_FILE);
        let io_err = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| IpamError::Io { op, path, source }
        };
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| IpamError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        f.write_all(&bytes).map_err(io_err("write", &tmp))?;
        f.sync_all().map_err(io_err("fsync", &tmp))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io_err("rename", &tmp))?;
        // Make the rename itself durable.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync", &self.dir))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att(c: &str) -> Attachment {
        Attachment::new(c, "eth0")
    }

    fn pool(s: &str) -> Pool {
        Pool::new(s.parse().unwrap()).unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn pool_bounds() {
        let p = pool("10.244.1.0/24");
        assert_eq!(p.gateway(), ip("10.244.1.1"));
        assert_eq!(p.size(), 253);
        assert!(!p.is_usable(ip("10.244.1.0")));
        assert!(!p.is_usable(ip("10.244.1.1")));
        assert!(p.is_usable(ip("10.244.1.2")));
        assert!(p.is_usable(ip("10.244.1.254")));
        assert!(!p.is_usable(ip("10.244.1.255")));
        assert_eq!(pool("10.0.0.0/30").size(), 1);
        assert!(Pool::new("10.0.0.0/31".parse().unwrap()).is_err());
        assert!(Pool::new("10.0.0.0/32".parse().unwrap()).is_err());
    }

    #[test]
    fn skips_network_gateway_broadcast_and_round_robins() {
        let dir = tempfile::tempdir().unwrap();
        let s = IpamStore::open(dir.path()).unwrap();
        let p = pool("10.0.0.0/29"); // .2 .. .6
        let got: Vec<_> = (0..5)
            .map(|i| s.allocate(&p, &att(&format!("c{i}"))).unwrap())
            .collect();
        assert_eq!(
            got,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"].map(ip)
        );
        // Exhausted: a clear error, and nothing changes.
        let e = s.allocate(&p, &att("c5")).unwrap_err();
        assert!(matches!(e, IpamError::Exhausted { .. }));
        assert_eq!(CniError::from(e).code, code::POOL_EXHAUSTED);
        assert_eq!(s.allocations().unwrap().len(), 5);
        // Free .3 and .5: the next address comes after the cursor (.6), wraps,
        // and takes .3 first; then .5.
        s.release(&att("c1")).unwrap();
        s.release(&att("c3")).unwrap();
        assert_eq!(s.allocate(&p, &att("n1")).unwrap(), ip("10.0.0.3"));
        assert_eq!(s.allocate(&p, &att("n2")).unwrap(), ip("10.0.0.5"));
    }

    #[test]
    fn freed_address_is_not_reused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = IpamStore::open(dir.path()).unwrap();
        let p = pool("10.0.0.0/24");
        let a = s.allocate(&p, &att("a")).unwrap();
        s.release(&att("a")).unwrap();
        let b = s.allocate(&p, &att("b")).unwrap();
        assert_ne!(a, b);
        assert_eq!(u32::from(b), u32::from(a) + 1);
    }

    #[test]
    fn idempotent_per_attachment() {
        let dir = tempfile::tempdir().unwrap();
        let s = IpamStore::open(dir.path()).unwrap();
        let p = pool("10.0.0.0/24");
        let a = s.allocate(&p, &att("a")).unwrap();
        assert_eq!(s.allocate(&p, &att("a")).unwrap(), a);
        // Same container, another interface: another address.
        let a2 = s.allocate(&p, &Attachment::new("a", "net1")).unwrap();
        assert_ne!(a, a2);
        assert_eq!(s.allocations().unwrap().len(), 2);
        assert_eq!(s.lookup(&att("a")).unwrap(), Some(a));
        assert_eq!(s.release(&att("a")).unwrap(), vec![a]);
        assert!(s.release(&att("a")).unwrap().is_empty());
        assert_eq!(s.lookup(&att("a")).unwrap(), None);
    }

    #[test]
    fn persists_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = pool("10.0.0.0/24");
        let a = IpamStore::open(dir.path())
            .unwrap()
            .allocate(&p, &att("a"))
            .unwrap();
        let s = IpamStore::open(dir.path()).unwrap();
        assert_eq!(s.lookup(&att("a")).unwrap(), Some(a));
        // The cursor persisted too.
        assert_eq!(
            u32::from(s.allocate(&p, &att("b")).unwrap()),
            u32::from(a) + 1
        );
        let names: BTreeSet<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(
            names,
            BTreeSet::from(["lock".to_owned(), "allocations.json".to_owned()])
        );
    }

    #[test]
    fn leftover_temp_file_is_cleaned_and_state_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = pool("10.0.0.0/24");
        let s = IpamStore::open(dir.path()).unwrap();
        let a = s.allocate(&p, &att("a")).unwrap();
        fs::write(dir.path().join(TMP_FILE), b"{half a write").unwrap();
        assert_eq!(s.lookup(&att("a")).unwrap(), Some(a));
        assert!(!dir.path().join(TMP_FILE).exists());
    }

    #[test]
    fn corrupt_state_is_an_io_error_not_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(STATE_FILE), b"not json").unwrap();
        let s = IpamStore::open(dir.path()).unwrap();
        let e = s.allocate(&pool("10.0.0.0/24"), &att("a")).unwrap_err();
        assert!(matches!(e, IpamError::Corrupt { .. }));
        assert_eq!(CniError::from(e).code, code::IO);
        fs::write(dir.path().join(STATE_FILE), br#"{"version": 99}"#).unwrap();
        assert!(matches!(
            s.lookup(&att("a")).unwrap_err(),
            IpamError::Corrupt { .. }
        ));
    }

    #[test]
    fn retain_drops_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let s = IpamStore::open(dir.path()).unwrap();
        let p = pool("10.0.0.0/24");
        for c in ["a", "b", "c"] {
            s.allocate(&p, &att(c)).unwrap();
        }
        let gone = s.retain(|a| a.container_id == "b").unwrap();
        assert_eq!(
            gone.iter()
                .map(|a| a.owner.container_id.as_str())
                .collect::<Vec<_>>(),
            ["a", "c"]
        );
        assert_eq!(s.allocations().unwrap().len(), 1);
    }

    #[test]
    fn pod_cidr_change_moves_the_reservation() {
        let dir = tempfile::tempdir().unwrap();
        let s = IpamStore::open(dir.path()).unwrap();
        let old = s.allocate(&pool("10.0.0.0/24"), &att("a")).unwrap();
        let new = s.allocate(&pool("10.0.1.0/24"), &att("a")).unwrap();
        assert_ne!(old, new);
        assert_eq!(s.allocations().unwrap().len(), 1);
    }

    #[test]
    fn concurrent_allocations_are_distinct() {
        let dir = tempfile::tempdir().unwrap();
        let p = pool("10.0.0.0/24");
        let ips: Vec<Ipv4Addr> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..16)
                .map(|i| {
                    let d = dir.path().to_path_buf();
                    sc.spawn(move || {
                        IpamStore::open(d)
                            .unwrap()
                            .allocate(&p, &att(&format!("c{i}")))
                            .unwrap()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let set: BTreeSet<_> = ips.iter().collect();
        assert_eq!(set.len(), 16);
    }

    #[test]
    fn state_file_format() {
        let dir = tempfile::tempdir().unwrap();
        let s = IpamStore::open(dir.path()).unwrap();
        s.allocate(&pool("10.0.0.0/24"), &att("a")).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.path().join(STATE_FILE)).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "version": 1, "last": "10.0.0.2",
                "allocations": [{"ip": "10.0.0.2", "containerID": "a", "ifname": "eth0"}]
            })
        );
    }
}
