//! Applying desired states to the pinned maps.

mod ids;
pub mod maglev;
mod maglev_batch;
pub mod meta;
pub mod plan;

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::AsFd,
    path::Path,
    sync::Arc,
};

use aya::maps::{MapData, MapError, PerCpuValues, lpm_trie::Key};
use proxy_common::{
    AffinityKey, AffinityValue, ServiceCounter, SourceRangeKey,
    codec::{from_nbo, nbo},
    names,
};
use tracing::{debug, warn};

pub use self::ids::IdAllocator;
pub use self::plan::{PlanOptions, Touch};
use self::{
    meta::{FrontendMeta, NamesFile},
    plan::{Group, MapContents, Op, Plan, Planner},
};
use crate::{
    conntrack,
    datapath::{self, Capacities, DatapathError, PinnedMaps},
    model::{DesiredState, FrontendKey},
};

/// The LPM key of one source range of a frontend: the frontend id (all 32
/// bits matched) then the range's prefix.
fn range_key(svc_id: u32, net: &ipnetwork::Ipv4Network) -> Key<SourceRangeKey> {
    Key::new(
        32 + u32::from(net.prefix()),
        SourceRangeKey {
            svc_id,
            addr: nbo(net.network()),
        },
    )
}

/// What one apply did.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub ops: usize,
    pub frontends: usize,
    pub backends: usize,
    /// Operations that failed (map full, ...), each with its reason; the
    /// affected frontends keep their previous state and are retried on the
    /// next apply.
    pub failures: Vec<String>,
    /// UDP flows dropped from CT because their backend went away.
    pub flushed_flows: usize,
    /// UDP backends (address, port) that left every frontend: sockets
    /// connected to them by socket load balancing are destroyed.
    pub removed_udp_backends: Vec<std::net::SocketAddrV4>,
    /// When the last map write finished.
    pub written_at: Option<std::time::Instant>,
    /// The names of the programmed frontends changed ([`Writer::names`]).
    pub names_changed: bool,
}

pub struct Writer {
    maps: PinnedMaps,
    current: MapContents,
    planner: Planner,
    /// Frontends whose group failed: planned again with the next change.
    retry: BTreeSet<FrontendKey>,
    capacities: Capacities,
    /// Names of the programmed frontends, for `sluicectl` and metrics.
    names: BTreeMap<FrontendKey, Arc<FrontendMeta>>,
    /// Whether `names` changed since `frontends.json` was last queued.
    names_dirty: bool,
    names_file: NamesFile,
    /// Tables written in the current apply, by fingerprint: the frontends
    /// of one Service port (ClusterIP, NodePort, load balancer IPs) have
    /// the same backends, so they share one inner array instead of holding
    /// a copy each. Tables are never changed in place, only replaced, so
    /// sharing cannot leak one frontend's change into another.
    maglev_written: std::collections::HashMap<u64, (Vec<u32>, MapData)>,
    /// A second handle on the map-of-maps, for the batch calls aya does not
    /// offer (see [`maglev_batch`]).
    maglev_outer: MapData,
    /// Frontends whose table this apply already swapped in or removed in a
    /// batch: their single operations are done.
    maglev_batched_puts: std::collections::HashSet<u32>,
    maglev_batched_deletes: std::collections::HashSet<u32>,
}

/// The entries `ops` put into `map` (`entry` picks them), in one batch.
fn update_batch<K: aya::Pod, V: aya::Pod>(
    map: &aya::maps::HashMap<MapData, K, V>,
    ops: &[&Op],
    entry: impl Fn(&Op) -> Option<(K, V)>,
) -> Result<(), datapath::raw::BatchError> {
    let (keys, values): (Vec<K>, Vec<V>) = ops.iter().filter_map(|op| entry(op)).unzip();
    let fd = aya::maps::IterableMap::map(map).fd().as_fd();
    datapath::raw::update_batch(fd, &keys, &values)
}

/// Entries per batched map update: few enough that a failure part way
/// re-runs little one by one, many enough that a cold start is a few
/// hundred system calls, not millions.
const BATCH_OPS: usize = 4096;

/// How many groups from the first on form a run [`Writer::execute_batched`]
/// can write: every op a put to the same map (backends, or service
/// entries), no group needing a backend that failed. Runs stop at a
/// group of another kind, so the plan's order between phases holds.
fn batchable_run(groups: &[Group], failed_backends: &BTreeSet<u32>) -> usize {
    let kind = |g: &Group| {
        let mut ops = g.ops.iter().map(|op| match op {
            Op::PutBackend(..) => Some(0),
            Op::PutService(..) => Some(1),
            _ => None,
        });
        let first = ops.next()??;
        ops.all(|k| k == Some(first)).then_some(first)
    };
    let Some(first) = groups.first().and_then(kind) else {
        return 0;
    };
    groups
        .iter()
        .take_while(|g| {
            kind(g) == Some(first) && !g.needs_backends.iter().any(|b| failed_backends.contains(b))
        })
        .count()
}

fn map_error(name: &'static str, capacity: u32, source: MapError) -> DatapathError {
    if let MapError::SyscallError(e) = &source
        && e.io_error.raw_os_error() == Some(libc::E2BIG)
    {
        return DatapathError::MapFull { name, capacity };
    }
    DatapathError::Map { name, source }
}

impl Writer {
    /// Opens the pinned maps and reads back what is programmed, so the first
    /// apply after a restart writes only the difference.
    pub fn open(
        bpffs: &Path,
        state_dir: &Path,
        node: &str,
        capacities: Capacities,
        options: PlanOptions,
    ) -> Result<Self, DatapathError> {
        let maps = PinnedMaps::open(bpffs)?;
        let current = read_back(&maps)?;
        debug!(
            entries = current.services.len(),
            backends = current.backends.len(),
            "read programmed state back from the maps"
        );
        let planner = Planner::new(
            &current,
            IdAllocator::new(capacities.service_ids),
            IdAllocator::new(capacities.backends.saturating_add(1)),
            options,
        );
        Ok(Self {
            maps,
            current,
            planner,
            retry: BTreeSet::new(),
            capacities,
            names: BTreeMap::new(),
            names_dirty: true,
            names_file: NamesFile::spawn(state_dir, node).map_err(|source| DatapathError::Io {
                path: meta::meta_path(state_dir),
                source,
            })?,
            maglev_written: std::collections::HashMap::new(),
            maglev_outer: datapath::open_pinned(bpffs, names::MAP_MAGLEV)?,
            maglev_batched_puts: Default::default(),
            maglev_batched_deletes: Default::default(),
        })
    }

    /// Names of the programmed frontends (complete after the first apply).
    pub fn names(&self) -> impl Iterator<Item = &Arc<FrontendMeta>> {
        self.names.values()
    }

    /// Entries in the service map (frontends and backend slots).
    pub fn service_entries(&self) -> usize {
        self.current.services.len()
    }

    /// Number of programmed frontends and backends.
    pub fn programmed(&self) -> (usize, usize) {
        (self.names.len(), self.current.backends.len())
    }

    /// Programs what `desired` asks for the frontends `touch` names (and
    /// those whose programming failed before).
    pub fn apply(
        &mut self,
        desired: &DesiredState,
        touch: Touch<'_>,
    ) -> Result<ApplyReport, DatapathError> {
        let retry = std::mem::take(&mut self.retry);
        let keys;
        let touch = match touch {
            Touch::Frontends { keys: k, addresses } if !retry.is_empty() => {
                keys = k.union(&retry).copied().collect::<BTreeSet<_>>();
                Touch::Frontends {
                    keys: &keys,
                    addresses,
                }
            }
            t => t,
        };
        let plan = self.planner.plan(&self.current, desired, touch);
        let mut report = ApplyReport {
            // Read before the plan runs: it removes them from `current`.
            removed_udp_backends: plan
                .removed_udp_backends
                .iter()
                .filter_map(|id| self.current.backends.get(id))
                .map(|b| std::net::SocketAddrV4::new(from_nbo(b.addr), u16::from_be(b.port)))
                .collect(),
            ..ApplyReport::default()
        };
        self.report_starved(&plan, &mut report);
        self.reset_counters(&plan, &mut report);
        self.execute(&plan, &mut report);
        // Dropping our handles leaves each table alive as long as a frontend
        // uses it.
        self.maglev_written.clear();
        self.maglev_batched_puts.clear();
        self.maglev_batched_deletes.clear();
        if let Err(e) = self.flush_affinity(&plan) {
            report
                .failures
                .push(format!("forgetting affinity to removed backends: {e}"));
        }
        if !plan.removed_udp_backends.is_empty() {
            report.flushed_flows =
                conntrack::flush_udp_backends(&mut self.maps, &plan.removed_udp_backends)
                    .unwrap_or_else(|e| {
                        report.failures.push(format!("flushing UDP flows: {e}"));
                        0
                    });
        }
        report.written_at = Some(std::time::Instant::now());
        self.follow_names(&plan, desired);
        let (fes, bes) = self.programmed();
        report.frontends = fes;
        report.backends = bes;
        // Rewritten on change only: with 10k Services the file is large and
        // most applies change endpoints, not frontends.
        report.names_changed = self.names_dirty;
        if self.names_dirty {
            self.names_file
                .publish(self.names.values().cloned().collect());
            self.names_dirty = false;
        }
        Ok(report)
    }

    /// Frontends the ids did not stretch to are reported, and planned
    /// again with every change until ids are free (a Service removed, a
    /// restart with larger limits).
    fn report_starved(&mut self, plan: &Plan, report: &mut ApplyReport) {
        if plan.frontends_without_id > 0 {
            report.failures.push(format!(
                "no frontend id left ({} ids, --max-service-ids): {} frontends not programmed",
                self.capacities.service_ids, plan.frontends_without_id
            ));
        }
        if plan.backends_without_id > 0 {
            let full = DatapathError::MapFull {
                name: names::MAP_BACKENDS,
                capacity: self.capacities.backends,
            };
            report.failures.push(format!(
                "{full}: {} backends left out of their frontends (--max-backends)",
                plan.backends_without_id
            ));
        }
        self.retry.extend(plan.starved.iter().copied());
    }

    /// Reads the maps back and plans everything against what they really
    /// hold: entries changed or removed behind the daemon's back are
    /// repaired (the report's `ops` counts them); on untouched maps it
    /// writes nothing.
    pub fn resync(&mut self, desired: &DesiredState) -> Result<ApplyReport, DatapathError> {
        let mut fresh = read_back(&self.maps)?;
        // Tables are not read back: an id whose table is still in the
        // outer map keeps the fingerprint of what was written.
        for (id, print) in fresh.maglev.iter_mut() {
            if let Some(known) = self.current.maglev.get(id) {
                *print = *known;
            }
        }
        self.current = fresh;
        self.apply(desired, Touch::All)
    }

    /// Keeps the names of the frontends the plan touched in step with what
    /// the maps now hold.
    fn follow_names(&mut self, plan: &Plan, desired: &DesiredState) {
        for (key, id) in &plan.touched {
            let programmed = self.current.services.contains_key(&key.service_key());
            let name = match (id, desired.frontends.get(key)) {
                (Some(id), Some(fe)) if programmed => Some(FrontendMeta::new(*id, fe)),
                _ => None,
            };
            let changed = match name {
                Some(n) if self.names.get(key).is_some_and(|old| **old == n) => false,
                Some(n) => {
                    self.names.insert(*key, Arc::new(n));
                    true
                }
                None => self.names.remove(key).is_some(),
            };
            self.names_dirty |= changed;
        }
    }

    /// New ids start with zeroed counters, whatever an earlier user left.
    fn reset_counters(&mut self, plan: &Plan, report: &mut ApplyReport) {
        let Ok(ncpus) = aya::util::nr_cpus() else {
            return;
        };
        for id in &plan.new_service_ids {
            let zero = match PerCpuValues::try_from(vec![ServiceCounter::default(); ncpus]) {
                Ok(z) => z,
                Err(_) => return,
            };
            if let Err(e) = self.maps.svc_stats.set(*id, zero, 0) {
                report
                    .failures
                    .push(format!("resetting counters of service id {id}: {e}"));
            }
        }
    }

    fn execute(&mut self, plan: &Plan, report: &mut ApplyReport) {
        let mut failed_backends = BTreeSet::new();
        let (mut puts_batched, mut deletes_batched) = (false, false);
        let mut i = 0;
        while i < plan.groups.len() {
            let g = &plan.groups[i];
            if !puts_batched && g.ops.iter().any(|op| matches!(op, Op::PutMaglev(..))) {
                puts_batched = true;
                self.batch_maglev_puts(&plan.groups[i..], &failed_backends);
            }
            if !deletes_batched && g.ops.iter().any(|op| matches!(op, Op::DeleteMaglev(..))) {
                deletes_batched = true;
                self.batch_maglev_deletes(&plan.groups[i..], &failed_backends);
            }
            let run = batchable_run(&plan.groups[i..], &failed_backends);
            if run > 1 {
                self.execute_batched(&plan.groups[i..i + run], &mut failed_backends, report);
                i += run;
                continue;
            }
            self.execute_group(g, 0, &mut failed_backends, report);
            i += 1;
        }
    }

    /// Writes a run of groups that only put backends, or only put service
    /// entries, with one system call per [`BATCH_OPS`] entries (a cold
    /// start at 100k Services is 2M entries). The kernel writes a batch in
    /// order and stops at the first failure: what it wrote is recorded,
    /// and from the failing entry on the groups run one write at a time,
    /// so failures are handled exactly as without batching.
    fn execute_batched(
        &mut self,
        run: &[Group],
        failed_backends: &mut BTreeSet<u32>,
        report: &mut ApplyReport,
    ) {
        let ops: Vec<&Op> = run.iter().flat_map(|g| &g.ops).collect();
        let mut done = 0;
        for chunk in ops.chunks(BATCH_OPS) {
            let written = self.put_batch(chunk);
            for op in &chunk[..written] {
                self.current.record(op);
            }
            done += written;
            report.ops += written;
            if written < chunk.len() {
                break;
            }
        }
        // The groups not wholly written, one write at a time.
        let mut seen = 0;
        for g in run {
            let in_group = done.saturating_sub(seen).min(g.ops.len());
            seen += g.ops.len();
            if in_group < g.ops.len() {
                self.execute_group(g, in_group, failed_backends, report);
            }
        }
    }

    /// One batched write of `ops` (all puts to one map); how many the
    /// kernel wrote.
    fn put_batch(&mut self, ops: &[&Op]) -> usize {
        let result = match ops.first() {
            Some(Op::PutBackend(..)) => update_batch(&self.maps.backends, ops, |op| match op {
                Op::PutBackend(id, b) => Some((*id, *b)),
                _ => None,
            }),
            Some(Op::PutService(..)) => update_batch(&self.maps.services, ops, |op| match op {
                Op::PutService(k, v) => Some((*k, *v)),
                _ => None,
            }),
            _ => return 0,
        };
        match result {
            Ok(()) => ops.len(),
            // Older kernels have no batched updates: every write goes one
            // at a time, which reports each failure as it is.
            Err(e) => {
                debug!(error = %e, "batched map update stopped; writing the rest one by one");
                e.done
            }
        }
    }

    /// Runs one group's operations from `from` on; a failure skips the
    /// rest of the group and queues its frontend for the next change.
    fn execute_group(
        &mut self,
        g: &Group,
        from: usize,
        failed_backends: &mut BTreeSet<u32>,
        report: &mut ApplyReport,
    ) {
        if g.needs_backends.iter().any(|b| failed_backends.contains(b)) {
            report.failures.push(format!(
                "skipped {} operations: a backend they need failed",
                g.ops.len()
            ));
            self.retry.extend(g.frontend);
            return;
        }
        for op in &g.ops[from..] {
            match self.apply_op(op) {
                Ok(()) => {
                    report.ops += 1;
                    self.current.record(op);
                }
                // No room for another table: the frontend is still
                // written and its flows fall back to a random backend
                // (the datapath's choice when a table is missing).
                // Only for a new table: a replaced one always fits.
                Err(e @ DatapathError::MapFull { .. }) if matches!(op, Op::PutMaglev(..)) => {
                    warn!(error = %e, ?op, "no room for a Maglev table; the frontend chooses backends at random until there is");
                    report.failures.push(e.to_string());
                }
                Err(e) => {
                    warn!(error = %e, ?op, "map update failed; the rest of its group is skipped");
                    report.failures.push(e.to_string());
                    if let Op::PutBackend(id, _) = op {
                        failed_backends.insert(*id);
                    }
                    self.retry.extend(g.frontend);
                    return;
                }
            }
        }
    }

    fn apply_op(&mut self, op: &Op) -> Result<(), DatapathError> {
        let caps = self.capacities;
        let m = &mut self.maps;
        let gone = |r: Result<(), MapError>, name| match r {
            Err(MapError::KeyNotFound) => Ok(()),
            r => r.map_err(|e| map_error(name, 0, e)),
        };
        match op {
            Op::PutBackend(id, b) => m
                .backends
                .insert(id, b, 0)
                .map_err(|e| map_error(names::MAP_BACKENDS, caps.backends, e)),
            Op::PutService(k, v) => m
                .services
                .insert(k, v, 0)
                .map_err(|e| map_error(names::MAP_SERVICES, caps.service_entries, e)),
            Op::DeleteService(k) => gone(m.services.remove(k), names::MAP_SERVICES),
            Op::DeleteBackend(id) => gone(m.backends.remove(id), names::MAP_BACKENDS),
            Op::PutSourceRange(id, net) => m
                .source_ranges
                .insert(&range_key(*id, net), 1, 0)
                .map_err(|e| map_error(names::MAP_SOURCE_RANGES, caps.source_ranges, e)),
            Op::DeleteSourceRange(id, net) => gone(
                m.source_ranges.remove(&range_key(*id, net)),
                names::MAP_SOURCE_RANGES,
            ),
            Op::PutMaglev(id, _, _) if self.maglev_batched_puts.contains(id) => Ok(()),
            Op::PutMaglev(id, table, print) => self.put_maglev(*id, table, *print),
            Op::DeleteMaglev(id) if self.maglev_batched_deletes.contains(id) => Ok(()),
            Op::DeleteMaglev(id) => gone(self.maps.maglev.remove(id), names::MAP_MAGLEV),
        }
    }

    /// Builds a table in a new inner array and swaps it in with one update
    /// of the outer map: the datapath never sees half a table.
    fn put_maglev(&mut self, svc_id: u32, table: &[u32], print: u64) -> Result<(), DatapathError> {
        self.inner_table(table, print)?;
        let inner = &self.maglev_written[&print].1;
        self.maps
            .maglev
            .insert(svc_id, inner, 0)
            .map_err(|e| map_error(names::MAP_MAGLEV, self.capacities.maglev_tables, e))
    }

    /// Deletes affinity entries the plan says are stale.
    fn flush_affinity(&mut self, plan: &Plan) -> std::io::Result<()> {
        if plan.affinity_flush.is_empty() && plan.affinity_flush_frontends.is_empty() {
            return Ok(());
        }
        let mut doomed: Vec<AffinityKey> = Vec::new();
        datapath::raw::walk_hash(&self.maps.affinity, |k: AffinityKey, v: AffinityValue| {
            if plan.affinity_flush_frontends.contains(&k.svc_id)
                || plan.affinity_flush.contains(&(k.svc_id, v.backend_id))
            {
                doomed.push(k);
            }
        })?;
        for k in doomed {
            match self.maps.affinity.remove(&k) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(std::io::Error::other(e)),
            }
        }
        Ok(())
    }

    pub fn maps(&mut self) -> &mut PinnedMaps {
        &mut self.maps
    }
}

/// What the pinned maps hold, read back (Maglev tables by presence only).
fn read_back(maps: &PinnedMaps) -> Result<MapContents, DatapathError> {
    let mut current = MapContents::default();
    let walk_failed = |name| {
        move |io_error| DatapathError::Map {
            name,
            source: MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_lookup_batch",
                io_error,
            }),
        }
    };
    datapath::raw::walk_hash(&maps.services, |k, v| {
        current.services.insert(k, v);
    })
    .map_err(walk_failed(names::MAP_SERVICES))?;
    datapath::raw::walk_hash(&maps.backends, |k, v| {
        current.backends.insert(k, v);
    })
    .map_err(walk_failed(names::MAP_BACKENDS))?;
    for key in maps.source_ranges.keys() {
        let key = key.map_err(|source| DatapathError::Map {
            name: names::MAP_SOURCE_RANGES,
            source,
        })?;
        let data = key.data();
        let prefix = key.prefix_len().saturating_sub(32) as u8;
        if let Ok(net) = ipnetwork::Ipv4Network::new(from_nbo(data.addr), prefix) {
            current.source_ranges.insert((data.svc_id, net));
        }
    }
    // Tables are not read back: a fingerprint of 0 makes the first plan
    // rewrite each (same content, swapped in atomically).
    for key in maps.maglev.keys() {
        let key = key.map_err(|source| DatapathError::Map {
            name: names::MAP_MAGLEV,
            source,
        })?;
        current.maglev.insert(key, 0);
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use proxy_common::{Backend, ServiceKey, ServiceValue};

    use super::*;

    fn put_backend(id: u32) -> Group {
        Group::single(Op::PutBackend(id, Backend::default()))
    }

    fn put_service(slot: u16) -> Op {
        Op::PutService(
            ServiceKey {
                slot,
                ..Default::default()
            },
            ServiceValue::default(),
        )
    }

    #[test]
    fn runs_are_puts_to_one_map_and_stop_at_anything_else() {
        let frontend = |needs: Vec<u32>| Group {
            ops: vec![put_service(1), put_service(0)],
            needs_backends: needs,
            frontend: None,
        };
        let none = BTreeSet::new();
        let groups = vec![
            put_backend(1),
            put_backend(2),
            frontend(vec![1]),
            frontend(vec![2]),
            Group::single(Op::DeleteBackend(3)),
            frontend(vec![]),
        ];
        assert_eq!(batchable_run(&groups, &none), 2, "backends first");
        assert_eq!(batchable_run(&groups[2..], &none), 2, "then the frontends");
        assert_eq!(batchable_run(&groups[4..], &none), 0, "deletes one by one");
        // A group needing a failed backend ends the run (it is skipped).
        let failed = BTreeSet::from([2]);
        assert_eq!(batchable_run(&groups[2..], &failed), 1);
        // A group mixing maps is never batched.
        let mixed = [Group {
            ops: vec![put_service(0), Op::DeleteBackend(1)],
            needs_backends: vec![],
            frontend: None,
        }];
        assert_eq!(batchable_run(&mixed, &none), 0);
    }
}
