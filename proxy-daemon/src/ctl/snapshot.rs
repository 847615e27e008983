//! Everything `sluicectl` shows, read in one pass from the pinned maps and
//! the frontend names the daemon records. Reading only: nothing here writes
//! a map.

use std::{collections::BTreeMap, path::Path};

use proxy_common::{
    AffinityKey, AffinityValue, Backend, CtEntry, CtKey, ReasonCounter, ServiceCounter, ServiceKey,
    ServiceValue, names, reason,
};

use crate::{
    conntrack::monotonic_secs,
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
        for item in maps.services.iter() {
            let (k, v) = item.map_err(map_err(names::MAP_SERVICES))?;
            s.services.insert(k, v);
        }
        for item in maps.backends.iter() {
            let (k, v) = item.map_err(map_err(names::MAP_BACKENDS))?;
            s.backends.insert(k, v);
        }
        let ids: std::collections::BTreeSet<u32> = s
            .services
            .values()
            .map(|v| v.svc_id)
            .filter(|id| *id != 0)
            .collect();
        for id in ids {
            s.svc_counters.insert(id, maps.service_total(id)?);
        }
        for code in 0..reason::MAX {
            let sum = maps.reason_total(code)?;
            if sum.packets > 0 {
                s.reasons.insert(code, sum);
            }
        }
        let mut ct_entries = 0u64;
        for item in maps.ct.iter() {
            let (k, v) = item.map_err(map_err(names::MAP_CT))?;
            ct_entries += 1;
            if with_ct {
                s.ct.insert(k, v);
            }
        }
        let frag_entries = maps.frags.keys().filter(Result::is_ok).count() as u64;
        for item in maps.affinity.iter() {
            let (k, v) = item.map_err(map_err(names::MAP_AFFINITY))?;
            s.affinity.insert(k, v);
        }
        let caps = |name: &'static str| -> u64 {
            crate::datapath::open_pinned_info(bpffs, name)
                .map(|i| u64::from(i.max_entries()))
                .unwrap_or_else(|_| u64::from(Capacities::default().of(name)))
        };
        s.fill = vec![
            MapFill {
                name: names::MAP_SERVICES,
                entries: s.services.len() as u64,
                capacity: caps(names::MAP_SERVICES),
            },
            MapFill {
                name: names::MAP_BACKENDS,
                entries: s.backends.len() as u64,
                capacity: caps(names::MAP_BACKENDS),
            },
            MapFill {
                name: names::MAP_CT,
                entries: ct_entries,
                capacity: caps(names::MAP_CT),
            },
            MapFill {
                name: names::MAP_FRAG,
                entries: frag_entries,
                capacity: caps(names::MAP_FRAG),
            },
            MapFill {
                name: names::MAP_SVC_STATS,
                entries: s.svc_counters.len() as u64,
                capacity: caps(names::MAP_SVC_STATS),
            },
            MapFill {
                name: names::MAP_AFFINITY,
                entries: s.affinity.len() as u64,
                capacity: caps(names::MAP_AFFINITY),
            },
            MapFill {
                name: names::MAP_SOURCE_RANGES,
                entries: maps.source_ranges.keys().filter(Result::is_ok).count() as u64,
                capacity: caps(names::MAP_SOURCE_RANGES),
            },
            MapFill {
                name: names::MAP_MAGLEV,
                entries: maps.maglev.keys().filter(Result::is_ok).count() as u64,
                capacity: caps(names::MAP_MAGLEV),
            },
        ];
        Ok(s)
    }
}
