//! Applying desired states to the pinned maps.

mod ids;
pub mod meta;
pub mod plan;

use std::path::{Path, PathBuf};

use aya::maps::{MapError, PerCpuValues};
use proxy_common::{ServiceCounter, names};
use tracing::{debug, warn};

pub use self::ids::IdAllocator;
use self::{
    meta::{DatapathMeta, FrontendMeta},
    plan::{MapContents, Op, Plan},
};
use crate::{
    conntrack,
    datapath::{Capacities, DatapathError, PinnedMaps},
    model::DesiredState,
};

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
}

pub struct Writer {
    maps: PinnedMaps,
    current: MapContents,
    svc_ids: IdAllocator,
    backend_ids: IdAllocator,
    state_dir: PathBuf,
    node: String,
    capacities: Capacities,
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
    ) -> Result<Self, DatapathError> {
        let maps = PinnedMaps::open(bpffs)?;
        let mut current = MapContents::default();
        for item in maps.services.iter() {
            let (k, v) = item.map_err(|source| DatapathError::Map {
                name: names::MAP_SERVICES,
                source,
            })?;
            current.services.insert(k, v);
        }
        for item in maps.backends.iter() {
            let (k, v) = item.map_err(|source| DatapathError::Map {
                name: names::MAP_BACKENDS,
                source,
            })?;
            current.backends.insert(k, v);
        }
        debug!(
            entries = current.services.len(),
            backends = current.backends.len(),
            "read programmed state back from the maps"
        );
        Ok(Self {
            maps,
            current,
            svc_ids: IdAllocator::new(capacities.service_ids),
            backend_ids: IdAllocator::new(capacities.backends.saturating_add(1)),
            state_dir: state_dir.to_owned(),
            node: node.to_owned(),
            capacities,
        })
    }

    /// Number of programmed frontends and backends.
    pub fn programmed(&self) -> (usize, usize) {
        let fes = self
            .current
            .services
            .iter()
            .filter(|(k, v)| k.slot == 0 && v.flags & proxy_common::service::SVC_F_ADDR_ONLY == 0)
            .count();
        (fes, self.current.backends.len())
    }

    pub fn apply(&mut self, desired: &DesiredState) -> Result<ApplyReport, DatapathError> {
        let plan = plan::plan(
            &self.current,
            desired,
            &mut self.svc_ids,
            &mut self.backend_ids,
        );
        let mut report = ApplyReport::default();
        self.reset_counters(&plan, &mut report);
        self.execute(&plan, &mut report);
        if !plan.removed_backends.is_empty() {
            report.flushed_flows =
                conntrack::flush_udp_backends(&mut self.maps.ct, &plan.removed_backends)
                    .unwrap_or_else(|e| {
                        report.failures.push(format!("flushing UDP flows: {e}"));
                        0
                    });
        }
        let (fes, bes) = self.programmed();
        report.frontends = fes;
        report.backends = bes;
        let meta = DatapathMeta {
            node: self.node.clone(),
            frontends: plan
                .frontends_by_id
                .iter()
                .filter(|(_, fe)| {
                    self.current
                        .services
                        .contains_key(&plan::master_key(&fe.key))
                })
                .map(|(id, fe)| FrontendMeta::new(*id, fe))
                .collect(),
        };
        if let Err(e) = meta::write(&self.state_dir, &meta) {
            report.failures.push(format!(
                "writing {}: {e}",
                meta::meta_path(&self.state_dir).display()
            ));
        }
        Ok(report)
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
        let mut failed_backends = std::collections::BTreeSet::new();
        'groups: for g in &plan.groups {
            if g.needs_backends.iter().any(|b| failed_backends.contains(b)) {
                report.failures.push(format!(
                    "skipped {} operations: a backend they need failed",
                    g.ops.len()
                ));
                continue;
            }
            for op in &g.ops {
                let result =
                    match op {
                        Op::PutBackend(id, b) => self.maps.backends.insert(id, b, 0).map_err(|e| {
                            map_error(names::MAP_BACKENDS, self.capacities.backends, e)
                        }),
                        Op::PutService(k, v) => self.maps.services.insert(k, v, 0).map_err(|e| {
                            map_error(names::MAP_SERVICES, self.capacities.service_entries, e)
                        }),
                        Op::DeleteService(k) => match self.maps.services.remove(k) {
                            Err(MapError::KeyNotFound) => Ok(()),
                            r => r.map_err(|e| map_error(names::MAP_SERVICES, 0, e)),
                        },
                        Op::DeleteBackend(id) => match self.maps.backends.remove(id) {
                            Err(MapError::KeyNotFound) => Ok(()),
                            r => r.map_err(|e| map_error(names::MAP_BACKENDS, 0, e)),
                        },
                    };
                match result {
                    Ok(()) => {
                        report.ops += 1;
                        self.record(op);
                    }
                    Err(e) => {
                        warn!(error = %e, ?op, "map update failed; the rest of its group is skipped");
                        report.failures.push(e.to_string());
                        if let Op::PutBackend(id, _) = op {
                            failed_backends.insert(*id);
                        }
                        continue 'groups;
                    }
                }
            }
        }
    }

    /// Mirrors a successful operation in the in-memory view of the maps.
    fn record(&mut self, op: &Op) {
        match op {
            Op::PutBackend(id, b) => {
                self.current.backends.insert(*id, *b);
            }
            Op::PutService(k, v) => {
                self.current.services.insert(*k, *v);
            }
            Op::DeleteService(k) => {
                self.current.services.remove(k);
            }
            Op::DeleteBackend(id) => {
                self.current.backends.remove(id);
            }
        }
    }

    pub fn maps(&mut self) -> &mut PinnedMaps {
        &mut self.maps
    }
}
