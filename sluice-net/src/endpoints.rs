//! The local-endpoint map (`sluice_ep4_v1`): which pod on this node owns an
//! address, its host veth and its MAC, so the datapath can deliver to it
//! directly. The CNI plugin registers a pod once its interface is
//! configured and forgets it at DEL; the daemon drops entries whose veth is
//! gone (a pod removed without a DEL).
//!
//! The map is an optimisation: a pod without an entry is reached through
//! the bridge and the node's stack as before. So a missing map (a daemon
//! older than the map) or a full one is reported, never fatal.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, Map, MapData, MapError};
use proxy_common::{LocalEndpoint, names};

use crate::tc::pin_dir;

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("local-endpoint map {} is not pinned (a sluiced older than this plugin?)", .0.display())]
    MissingMap(PathBuf),
    #[error("local-endpoint map {}: {source}", path.display())]
    Map {
        path: PathBuf,
        #[source]
        source: MapError,
    },
}

/// The pinned map, opened for reading and writing.
pub struct LocalEndpoints {
    path: PathBuf,
    map: HashMap<MapData, u32, LocalEndpoint>,
}

impl LocalEndpoints {
    pub fn open(bpffs: &Path) -> Result<Self, EndpointError> {
        let path = pin_dir(bpffs).join(names::MAP_LOCAL_ENDPOINTS);
        if !path.exists() {
            return Err(EndpointError::MissingMap(path));
        }
        let map = MapData::from_pin(&path)
            .and_then(|d| HashMap::try_from(Map::HashMap(d)))
            .map_err(|source| EndpointError::Map {
                path: path.clone(),
                source,
            })?;
        Ok(Self { path, map })
    }

    fn err(&self, source: MapError) -> EndpointError {
        EndpointError::Map {
            path: self.path.clone(),
            source,
        }
    }

    /// Records that `ip` is the pod behind host veth `ifindex`, whose own
    /// interface has `mac`.
    pub fn register(
        &mut self,
        ip: Ipv4Addr,
        ifindex: u32,
        mac: [u8; 6],
    ) -> Result<(), EndpointError> {
        let value = LocalEndpoint {
            ifindex,
            mac,
            _pad: [0; 2],
        };
        self.map.insert(key(ip), value, 0).map_err(|e| self.err(e))
    }

    /// Forgets `ip`; `true` when it had an entry.
    pub fn forget(&mut self, ip: Ipv4Addr) -> Result<bool, EndpointError> {
        match self.map.remove(&key(ip)) {
            Ok(()) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(MapError::SyscallError(s)) if s.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(false)
            }
            Err(e) => Err(self.err(e)),
        }
    }

    /// Forgets `ip` if its entry is still `seen` (a pod that took the
    /// address since keeps its entry); `true` when removed.
    pub fn forget_if(&mut self, ip: Ipv4Addr, seen: &LocalEndpoint) -> Result<bool, EndpointError> {
        match self.map.get(&key(ip), 0) {
            Ok(now) if now == *seen => self.forget(ip),
            _ => Ok(false),
        }
    }

    /// Every entry, as (pod address, entry). Entries that vanish while
    /// being listed are skipped.
    pub fn entries(&self) -> Vec<(Ipv4Addr, LocalEndpoint)> {
        self.map
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (Ipv4Addr::from(u32::from_be(k)), v))
            .collect()
    }
}

/// Entries whose host veth is not among `live` (interface indexes of the
/// pod veths listed after the entries were read, so an entry registered
/// meanwhile is not judged on a listing older than its veth).
pub fn stale(
    entries: &[(Ipv4Addr, LocalEndpoint)],
    live: &[u32],
) -> Vec<(Ipv4Addr, LocalEndpoint)> {
    entries
        .iter()
        .filter(|(_, e)| !live.contains(&e.ifindex))
        .copied()
        .collect()
}

/// The map key: the address in network byte order, as the datapath reads
/// it from the packet.
fn key(ip: Ipv4Addr) -> u32 {
    u32::from(ip).to_be()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ifindex: u32) -> LocalEndpoint {
        LocalEndpoint {
            ifindex,
            mac: [2, 0, 0, 0, 0, ifindex as u8],
            _pad: [0; 2],
        }
    }

    #[test]
    fn entries_of_vanished_veths_are_stale() {
        let entries = [
            (Ipv4Addr::new(10, 244, 0, 2), entry(7)),
            (Ipv4Addr::new(10, 244, 0, 3), entry(9)),
            (Ipv4Addr::new(10, 244, 0, 4), entry(11)),
        ];
        let stale = stale(&entries, &[7, 11, 12]);
        assert_eq!(stale, vec![(Ipv4Addr::new(10, 244, 0, 3), entry(9))]);
        assert!(super::stale(&entries, &[7, 9, 11]).is_empty());
    }

    #[test]
    fn keys_are_in_network_byte_order() {
        assert_eq!(
            key(Ipv4Addr::new(10, 244, 0, 2)).to_ne_bytes(),
            [10, 244, 0, 2]
        );
    }
}
