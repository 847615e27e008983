//! Maglev tables swapped in and out of the map-of-maps in batches.
//!
//! Every single update or delete of a map-of-maps waits for an RCU grace
//! period before returning (so user space knows no program still sees the
//! old inner map): about 13 ms on this machine kind, two minutes for 10k
//! Services. A batch waits once. The plan's order still holds: tables are
//! batched when the executor reaches the first group that writes one, after
//! every backend they can point at is written, and removed tables when it
//! reaches the first removal, after the frontends that used them are gone.
//! Whatever a batch could not do goes through the single-entry path, which
//! reports it.

use std::{
    collections::BTreeSet,
    os::fd::{AsFd, AsRawFd},
};

use aya::maps::MapData;
use proxy_common::names;
use tracing::{debug, warn};

use super::{Writer, plan::Group, plan::Op};
use crate::datapath::{self, DatapathError};

/// The groups the executor will still run, given the backends that failed.
fn runnable<'a>(groups: &'a [Group], failed: &'a BTreeSet<u32>) -> impl Iterator<Item = &'a Op> {
    groups
        .iter()
        .filter(|g| !g.needs_backends.iter().any(|b| failed.contains(b)))
        .flat_map(|g| &g.ops)
}

impl Writer {
    /// An inner array holding `table`, shared with any frontend of this
    /// apply that has the same table.
    pub(super) fn inner_table(
        &mut self,
        table: &[u32],
        print: u64,
    ) -> Result<&MapData, DatapathError> {
        // The content is compared too: a fingerprint collision must never
        // give one frontend another's backends.
        let reusable = self
            .maglev_written
            .get(&print)
            .is_some_and(|(content, _)| content.as_slice() == table);
        if !reusable {
            let io = |source| DatapathError::Io {
                path: names::MAP_MAGLEV.into(),
                source,
            };
            let fd = datapath::raw::maglev_table(table).map_err(io)?;
            let inner = MapData::from_fd(fd).map_err(|source| DatapathError::Map {
                name: names::MAP_MAGLEV,
                source,
            })?;
            self.maglev_written.insert(print, (table.to_vec(), inner));
        }
        Ok(&self.maglev_written[&print].1)
    }

    /// Writes the tables of every runnable group from here on with one
    /// batch; records which frontends got theirs.
    pub(super) fn batch_maglev_puts(&mut self, groups: &[Group], failed: &BTreeSet<u32>) {
        let wanted: Vec<(u32, std::sync::Arc<[u32]>, u64)> = runnable(groups, failed)
            .filter_map(|op| match op {
                Op::PutMaglev(id, table, print) => Some((*id, table.clone(), *print)),
                _ => None,
            })
            .collect();
        if wanted.len() < 2 {
            return;
        }
        let mut keys = Vec::with_capacity(wanted.len());
        let mut fds = Vec::with_capacity(wanted.len());
        for (id, table, print) in &wanted {
            match self.inner_table(table, *print) {
                Ok(inner) => {
                    keys.push(*id);
                    fds.push(inner.fd().as_fd().as_raw_fd() as u32);
                }
                // Left to the single path, which reports it.
                Err(e) => debug!(svc_id = id, error = %e, "Maglev table not batched"),
            }
        }
        let done = match datapath::raw::update_batch(self.maglev_outer.fd().as_fd(), &keys, &fds) {
            Ok(()) => keys.len(),
            Err(e) => {
                warn!(error = %e, tables = keys.len(), "batched Maglev update stopped; the rest go one by one");
                e.done
            }
        };
        self.maglev_batched_puts.extend(&keys[..done]);
        debug!(tables = done, "Maglev tables swapped in with one batch");
    }

    /// Removes the tables of every runnable group from here on with as few
    /// batches as missing entries allow.
    pub(super) fn batch_maglev_deletes(&mut self, groups: &[Group], failed: &BTreeSet<u32>) {
        let mut keys: Vec<u32> = runnable(groups, failed)
            .filter_map(|op| match op {
                Op::DeleteMaglev(id) => Some(*id),
                _ => None,
            })
            .collect();
        if keys.len() < 2 {
            return;
        }
        let mut removed = 0;
        while !keys.is_empty() {
            match datapath::raw::delete_batch(self.maglev_outer.fd().as_fd(), &keys) {
                Ok(()) => {
                    removed += keys.len();
                    self.maglev_batched_deletes.extend(keys.drain(..));
                }
                // The kernel stops at a key that is already gone: that one
                // is done too, the batch goes on after it.
                Err(e) if e.source.raw_os_error() == Some(libc::ENOENT) => {
                    removed += e.done;
                    let upto = (e.done + 1).min(keys.len());
                    self.maglev_batched_deletes.extend(keys.drain(..upto));
                }
                Err(e) => {
                    warn!(error = %e, tables = keys.len(), "batched Maglev removal stopped; the rest go one by one");
                    removed += e.done;
                    self.maglev_batched_deletes.extend(keys.drain(..e.done));
                    break;
                }
            }
        }
        debug!(tables = removed, "Maglev tables removed with batches");
    }
}
