//! Everything `sluicectl` shows, read in one pass from the pinned maps and
//! the frontend names the daemon records. Reading only: nothing here writes
//! a map.

use std::{collections::BTreeMap, path::Path};

use proxy_common::{
    AffinityKey, AffinityValue, Backend, CtEntry, CtKey, ReasonCounter, ServiceCounter, ServiceKey,
    ServiceValue, names, reason, stats::write_error,
};

use crate::{
    conntrack::{CtClass, class_stats, monotonic_secs},
    datapath::{Capacities, DatapathError, PinnedMaps},
    writer::meta::{self, DatapathMeta},
};

/// Entries and capacity of one map.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MapFill {
    pub name: &'static str,
    pub entries: u64,
    pub capacity: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub backends: BTreeMap<u32, Backend>,
    /// Per-frontend counters summed over CPUs, for ids in use.
    pub svc_counters: BTreeMap<u32, ServiceCounter>,
    /// Reason counters summed over CPUs, by code.
    pub reasons: BTreeMap<u32, ReasonCounter>,
    pub ct: BTreeMap<CtKey, CtEntry>,
    pub affinity: BTreeMap<AffinityKey, AffinityValue>,
    pub meta: DatapathMeta,
    /// Monotonic seconds when the snapshot was taken (the CT clock).
    pub now: u32,
    pub fill: Vec<MapFill>,
    /// The CT maps' counters.
    pub conntrack: Vec<CtMapStats>,
    /// Failed datapath map writes, by what was being written.
    pub write_errors: BTreeMap<&'static str, u64>,
}

/// A CT map's counters beside its fill.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CtMapStats {
    pub name: &'static str,
    pub entries: u64,
    /// Entries the kernel evicted to make room (LRU map only).
    pub evicted: u64,
    /// New entries refused because the map was full.
    pub full: u64,
    /// Partner entries recreated by the datapath.
    pub recreated: u64,
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

impl Snapshot {
    /// Reads the maps under `bpffs` and the names under `state_dir` (names
    /// are optional: without them ids are shown bare).
    pub fn read(bpffs: &Path, state_dir: &Path, with_ct: bool) -> Result<Self, DatapathError> {
        let maps = PinnedMaps::open(bpffs)?;
        let mut s = Snapshot {
            now: monotonic_secs(),
            meta: meta::read(state_dir).unwrap_or_default(),
            ..Default::default()
        };
        s.read_frontends(&maps)?;
        s.read_counters(&maps)?;
        let ct_entries = s.read_conntrack(&maps, with_ct)?;
        for item in maps.affinity.iter() {
            let (k, v) = item.map_err(map_err(names::MAP_AFFINITY))?;
            s.affinity.insert(k, v);
        }
        let caps = |name: &'static str| -> u64 {
            crate::datapath::open_pinned_info(bpffs, name)
                .map(|i| u64::from(i.max_entries()))
                .unwrap_or_else(|_| u64::from(Capacities::default().of(name)))
        };
        let count = |keys: usize| keys as u64;
        s.fill = [
            (names::MAP_SERVICES, s.services.len() as u64),
            (names::MAP_BACKENDS, s.backends.len() as u64),
            (names::MAP_CT_TCP, ct_entries[0]),
            (names::MAP_CT_ANY, ct_entries[1]),
            (
                names::MAP_FRAG,
                count(maps.frags.keys().filter(Result::is_ok).count()),
            ),
            (names::MAP_SVC_STATS, s.svc_counters.len() as u64),
            (names::MAP_AFFINITY, s.affinity.len() as u64),
            (
                names::MAP_SOURCE_RANGES,
                count(maps.source_ranges.keys().filter(Result::is_ok).count()),
            ),
            (
                names::MAP_MAGLEV,
                count(maps.maglev.keys().filter(Result::is_ok).count()),
            ),
            (
                names::MAP_LOCAL_ENDPOINTS,
                count(maps.local_endpoints.keys().filter(Result::is_ok).count()),
            ),
            (
                names::MAP_SOCK_REV,
                count(maps.sock_rev.keys().filter(Result::is_ok).count()),
            ),
            (
                names::MAP_SOCK_AFFINITY,
                count(maps.sock_affinity.keys().filter(Result::is_ok).count()),
            ),
            (
                names::MAP_NODE_ADDRS,
                count(maps.node_addrs.keys().filter(Result::is_ok).count()),
            ),
        ]
        .into_iter()
        .map(|(name, entries)| MapFill {
            name,
            entries,
            capacity: caps(name),
        })
        .collect();
        Ok(s)
    }

    fn read_frontends(&mut self, maps: &PinnedMaps) -> Result<(), DatapathError> {
        for item in maps.services.iter() {
            let (k, v) = item.map_err(map_err(names::MAP_SERVICES))?;
            self.services.insert(k, v);
        }
        for item in maps.backends.iter() {
            let (k, v) = item.map_err(map_err(names::MAP_BACKENDS))?;
            self.backends.insert(k, v);
        }
        Ok(())
    }

    /// Per-frontend and per-reason counters, and failed datapath writes.
    fn read_counters(&mut self, maps: &PinnedMaps) -> Result<(), DatapathError> {
        let ids: std::collections::BTreeSet<u32> = self
            .services
            .values()
            .map(|v| v.svc_id)
            .filter(|id| *id != 0)
            .collect();
        for id in ids {
            self.svc_counters.insert(id, maps.service_total(id)?);
        }
        for code in 0..reason::MAX {
            let sum = maps.reason_total(code)?;
            if sum.packets > 0 {
                self.reasons.insert(code, sum);
            }
        }
        for i in 0..write_error::MAX {
            if let Some(name) = write_error::name(i) {
                self.write_errors.insert(name, maps.write_errors_total(i)?);
            }
        }
        Ok(())
    }

    /// Walks both CT maps (keeping the entries with `with_ct`) and reads
    /// their counters; returns how many entries each holds.
    fn read_conntrack(
        &mut self,
        maps: &PinnedMaps,
        with_ct: bool,
    ) -> Result<[u64; 2], DatapathError> {
        let mut entries = [0u64; 2];
        for (i, (map, name)) in [
            (&maps.ct_tcp, names::MAP_CT_TCP),
            (&maps.ct_any, names::MAP_CT_ANY),
        ]
        .into_iter()
        .enumerate()
        {
            for item in map.iter() {
                let (k, v) = item.map_err(map_err(name))?;
                entries[i] += 1;
                if with_ct {
                    self.ct.insert(k, v);
                }
            }
        }
        for class in CtClass::ALL {
            let stats = class_stats(maps, class)?;
            let n = entries[usize::from(class == CtClass::Any)];
            self.conntrack.push(CtMapStats {
                name: class.map_name(),
                entries: n,
                evicted: stats.evicted(n),
                full: stats.full,
                recreated: stats.recreated,
            });
        }
        Ok(entries)
    }
}
