use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, HashOfMaps, LpmTrie, Map, MapData, PerCpuArray};
use proxy_common::{
    AffinityKey, AffinityValue, Backend, CtEntry, CtKey, CtStats, FragKey, FragPorts,
    LocalEndpoint, NodeConfig, ReasonCounter, ServiceCounter, ServiceKey, ServiceValue,
    SockAffinityKey, SockConfig, SockRevKey, SockRevValue, SourceRangeKey, names, proto,
};

use super::DatapathError;

pub use sluice_net::tc::pin_dir;

/// Pin path of one map.
pub fn map_path(bpffs: &Path, map: &str) -> PathBuf {
    pin_dir(bpffs).join(map)
}

/// What [`retire_stale_pins`] did with pins this release does not use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetiredPins {
    /// Earlier releases' maps, unpinned.
    pub removed: Vec<String>,
    /// `sluice_*_vN` pins of a layout this release does not know (a newer
    /// release's, after a downgrade): left alone.
    pub unknown: Vec<String>,
}

/// Unpins the maps earlier releases pinned under names this one replaced
/// ([`names::RETIRED_MAPS`]; a layout change bumps a map's version suffix,
/// so the old map is left behind under its old name). A program still
/// attached from that release keeps its map alive until it is replaced;
/// the pin alone would keep it, and everything it holds, forever. Callers
/// migrate what must survive first. Versioned pins of unknown layouts are
/// reported and kept: their state may matter to the release that made them.
pub fn retire_stale_pins(bpffs: &Path, keep: &[&str]) -> Result<RetiredPins, DatapathError> {
    let dir = pin_dir(bpffs);
    let entries =
        std::fs::read_dir(&dir).map_err(|e| DatapathError::from_pin_io(dir.clone(), e))?;
    let mut out = RetiredPins::default();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        match classify_pin(&name) {
            PinKind::Current | PinKind::Other => {}
            PinKind::Retired if keep.contains(&name.as_str()) => {}
            PinKind::Retired => {
                std::fs::remove_file(entry.path())
                    .map_err(|e| DatapathError::from_pin_io(entry.path(), e))?;
                out.removed.push(name);
            }
            PinKind::Unknown => out.unknown.push(name),
        }
    }
    out.removed.sort();
    out.unknown.sort();
    Ok(out)
}

#[derive(Debug, PartialEq, Eq)]
enum PinKind {
    /// A map of this release.
    Current,
    /// An earlier release's map this one replaced.
    Retired,
    /// A versioned map name of ours this release does not know.
    Unknown,
    /// Not a versioned map pin (programs, anything else).
    Other,
}

fn classify_pin(name: &str) -> PinKind {
    if names::ALL_MAPS.contains(&name) {
        return PinKind::Current;
    }
    if names::RETIRED_MAPS.contains(&name) {
        return PinKind::Retired;
    }
    let versioned = name
        .strip_prefix("sluice_")
        .and_then(|rest| rest.rsplit_once("_v"))
        .is_some_and(|(map, v)| {
            !map.is_empty() && !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit())
        });
    if versioned {
        PinKind::Unknown
    } else {
        PinKind::Other
    }
}

/// Opens a pinned map, turning a missing pin or missing privileges into an
/// error that says so.
pub(crate) fn open_pinned(bpffs: &Path, name: &'static str) -> Result<MapData, DatapathError> {
    let path = map_path(bpffs, name);
    std::fs::metadata(&path).map_err(|e| DatapathError::from_pin_io(path.clone(), e))?;
    MapData::from_pin(&path).map_err(|source| match source {
        aya::maps::MapError::SyscallError(e) => DatapathError::from_pin_io(path, e.io_error),
        source => DatapathError::Map { name, source },
    })
}

/// Kernel information (type, sizes, capacity) of a pinned map.
pub fn open_pinned_info(
    bpffs: &Path,
    name: &'static str,
) -> Result<aya::maps::MapInfo, DatapathError> {
    open_pinned(bpffs, name)?
        .info()
        .map_err(|source| DatapathError::Map { name, source })
}

fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(
    bpffs: &Path,
    name: &'static str,
) -> Result<T, DatapathError> {
    let data = open_pinned(bpffs, name)?;
    Map::from_map_data(data)
        .and_then(T::try_from)
        .map_err(|source| DatapathError::Map { name, source })
}

/// Handles on every pinned map of a node's datapath.
///
/// Opening them needs only the pins, not the daemon: the daemon's writer,
/// `sluicectl` and the tests all use this.
pub struct PinnedMaps {
    pub services: HashMap<MapData, ServiceKey, ServiceValue>,
    pub backends: HashMap<MapData, u32, Backend>,
    /// TCP connection tracking (plain hash).
    pub ct_tcp: HashMap<MapData, CtKey, CtEntry>,
    /// UDP and ICMP connection tracking (LRU).
    pub ct_any: HashMap<MapData, CtKey, CtEntry>,
    pub ct_stats: PerCpuArray<MapData, CtStats>,
    /// Failed datapath map writes, by `stats::write_error` index.
    pub write_errors: PerCpuArray<MapData, u64>,
    pub frags: HashMap<MapData, FragKey, FragPorts>,
    pub reasons: PerCpuArray<MapData, ReasonCounter>,
    pub svc_stats: PerCpuArray<MapData, ServiceCounter>,
    pub config: Array<MapData, NodeConfig>,
    pub affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    pub source_ranges: LpmTrie<MapData, SourceRangeKey, u32>,
    /// Frontend id -> its Maglev table (an array of backend ids).
    pub maglev: HashOfMaps<MapData, u32, MapData>,
    /// Pods on this node, for direct delivery (written by the CNI plugin).
    pub local_endpoints: HashMap<MapData, u32, LocalEndpoint>,
    /// Socket load balancing: mode and scope, per-socket reverse entries,
    /// socket clients' affinity, and every node's addresses.
    pub sock_config: Array<MapData, SockConfig>,
    pub sock_rev: HashMap<MapData, SockRevKey, SockRevValue>,
    pub sock_affinity: HashMap<MapData, SockAffinityKey, AffinityValue>,
    pub node_addrs: HashMap<MapData, u32, u32>,
}

impl PinnedMaps {
    pub fn open(bpffs: &Path) -> Result<Self, DatapathError> {
        Ok(Self {
            services: typed(bpffs, names::MAP_SERVICES)?,
            backends: typed(bpffs, names::MAP_BACKENDS)?,
            ct_tcp: typed(bpffs, names::MAP_CT_TCP)?,
            ct_any: typed(bpffs, names::MAP_CT_ANY)?,
            ct_stats: typed(bpffs, names::MAP_CT_STATS)?,
            write_errors: typed(bpffs, names::MAP_WRITE_ERRORS)?,
            frags: typed(bpffs, names::MAP_FRAG)?,
            reasons: typed(bpffs, names::MAP_REASONS)?,
            svc_stats: typed(bpffs, names::MAP_SVC_STATS)?,
            config: typed(bpffs, names::MAP_CONFIG)?,
            affinity: typed(bpffs, names::MAP_AFFINITY)?,
            source_ranges: typed(bpffs, names::MAP_SOURCE_RANGES)?,
            maglev: typed(bpffs, names::MAP_MAGLEV)?,
            local_endpoints: typed(bpffs, names::MAP_LOCAL_ENDPOINTS)?,
            sock_config: typed(bpffs, names::MAP_SOCK_CONFIG)?,
            sock_rev: typed(bpffs, names::MAP_SOCK_REV)?,
            sock_affinity: typed(bpffs, names::MAP_SOCK_AFFINITY)?,
            node_addrs: typed(bpffs, names::MAP_NODE_ADDRS)?,
        })
    }

    /// A reason's counters summed over CPUs.
    pub fn reason_total(&self, code: u32) -> Result<ReasonCounter, DatapathError> {
        cpu_sum(&self.reasons, names::MAP_REASONS, code)
    }

    /// A frontend's counters summed over CPUs.
    pub fn service_total(&self, svc_id: u32) -> Result<ServiceCounter, DatapathError> {
        cpu_sum(&self.svc_stats, names::MAP_SVC_STATS, svc_id)
    }

    /// A row of the CT counters summed over CPUs.
    pub fn ct_stats_total(&self, row: u32) -> Result<CtStats, DatapathError> {
        cpu_sum(&self.ct_stats, names::MAP_CT_STATS, row)
    }

    /// Failed datapath map writes of one kind, summed over CPUs.
    pub fn write_errors_total(&self, what: u32) -> Result<u64, DatapathError> {
        cpu_sum(&self.write_errors, names::MAP_WRITE_ERRORS, what)
    }

    /// The CT map a protocol's flows live in.
    pub fn ct_for(&self, protocol: u8) -> &HashMap<MapData, CtKey, CtEntry> {
        if protocol == proto::TCP {
            &self.ct_tcp
        } else {
            &self.ct_any
        }
    }

    /// The CT map a protocol's flows live in, for writing.
    pub fn ct_for_mut(&mut self, protocol: u8) -> &mut HashMap<MapData, CtKey, CtEntry> {
        if protocol == proto::TCP {
            &mut self.ct_tcp
        } else {
            &mut self.ct_any
        }
    }
}

/// Entry `index` of a per-CPU array, summed over CPUs.
fn cpu_sum<T>(
    map: &PerCpuArray<MapData, T>,
    name: &'static str,
    index: u32,
) -> Result<T, DatapathError>
where
    T: aya::Pod + Copy + Default + std::ops::Add<Output = T>,
{
    let per_cpu = map
        .get(&index, 0)
        .map_err(|source| DatapathError::Map { name, source })?;
    Ok(per_cpu.iter().copied().fold(T::default(), |a, c| a + c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_classified_by_name() {
        for name in names::ALL_MAPS {
            assert_eq!(classify_pin(name), PinKind::Current, "{name}");
        }
        for name in names::RETIRED_MAPS {
            assert_eq!(classify_pin(name), PinKind::Retired, "{name}");
        }
        // Versioned names of ours this release never used: kept.
        for name in ["sluice_ct4_tcp_v3", "sluice_ct4_v0", "sluice_newmap_v1"] {
            assert_eq!(classify_pin(name), PinKind::Unknown, "{name}");
        }
        for other in [
            names::PIN_PROG_FROM_POD,
            "sluice_notes",
            "sluice__v1",
            "sluice_ct4_v",
            "sluice_ct4_vx",
            "cilium_ct4_global",
        ] {
            assert_eq!(classify_pin(other), PinKind::Other, "{other}");
        }
    }
}
