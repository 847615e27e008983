//! Connection-tracking housekeeping from user space.
//!
//! The datapath decides liveness on every packet; this removes what no
//! packet will come for: expired entries (the LRU would only evict them
//! under pressure, and `sluicectl conntrack` should not show the dead), and
//! UDP flows to backends that left their Service, so those clients move to
//! a live backend at once, as kube-proxy does by clearing conntrack.

use std::collections::BTreeSet;

use aya::maps::{HashMap, MapData, MapError};
use proxy_common::{CtEntry, CtKey, proto};

/// CLOCK_MONOTONIC_COARSE in whole seconds: the datapath's clock
/// (bpf_ktime_get_coarse_ns).
pub fn monotonic_secs() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u32
}

type CtMap = HashMap<MapData, CtKey, CtEntry>;

/// What a pass over the table did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    pub removed: usize,
    /// Entries left (as walked; the datapath adds and evicts meanwhile).
    pub remaining: usize,
}

fn delete_matching(
    ct: &mut CtMap,
    pred: impl Fn(&CtKey, &CtEntry) -> bool,
) -> Result<Sweep, MapError> {
    // Collect first: deleting while walking get_next_key restarts the walk.
    let mut seen = 0;
    let doomed: Vec<CtKey> = ct
        .iter()
        .filter_map(Result::ok)
        .inspect(|_| seen += 1)
        .filter(|(k, e)| pred(k, e))
        .map(|(k, _)| k)
        .collect();
    let mut removed = 0;
    for k in doomed {
        match ct.remove(&k) {
            Ok(()) => removed += 1,
            Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Sweep {
        removed,
        remaining: seen - removed,
    })
}

/// Removes entries whose flow has been idle past its timeout.
pub fn collect_expired(ct: &mut CtMap, now: u32) -> Result<Sweep, MapError> {
    delete_matching(ct, |k, e| e.expired(k.proto, now))
}

/// Removes both entries of every UDP flow to one of `backends`.
pub fn flush_udp_backends(ct: &mut CtMap, backends: &BTreeSet<u32>) -> Result<usize, MapError> {
    delete_matching(ct, |k, e| {
        k.proto == proto::UDP && backends.contains(&e.backend_id)
    })
    .map(|s| s.removed)
}

/// Removes every entry (the `sluicectl conntrack --flush` of a service, or all).
pub fn flush(ct: &mut CtMap, svc_ids: Option<&BTreeSet<u32>>) -> Result<usize, MapError> {
    delete_matching(ct, |_, e| svc_ids.is_none_or(|ids| ids.contains(&e.svc_id))).map(|s| s.removed)
}
