//! What sluiced tells the outside about itself: Prometheus metrics on
//! `/metrics`, liveness on `/healthz` (kube-proxy's answer, so existing
//! probes and cloud load-balancer checks keep working) and readiness on
//! `/readyz`.
//!
//! The control loop records what it did in a [`Telemetry`]; counters the
//! datapath keeps (verdicts by reason, per-service traffic) are read from
//! the pinned maps when scraped, so a scrape costs nothing between scrapes.

mod clock;
mod histogram;
pub mod render;
pub mod server;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

pub use self::histogram::Histogram;
use crate::writer::meta::FrontendMeta;

/// Programming latency buckets, seconds: from a single map write to a cold
/// start of 10k Services.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A change seen this long ago and still not programmed makes the daemon
/// unhealthy (kube-proxy's healthz uses the same idea).
pub const STALE_AFTER: Duration = Duration::from_secs(60);

/// The control loop's record, shared with the HTTP server.
#[derive(Debug)]
pub struct State {
    pub latency: Histogram,
    pub syncs: u64,
    pub sync_errors: u64,
    /// Full resyncs done, and map entries they had to rewrite.
    pub resyncs: u64,
    pub resync_repairs: u64,
    pub frontends: usize,
    pub backends: usize,
    pub service_entries: usize,
    /// Objects or parts skipped, by reason label.
    pub skipped_objects: BTreeMap<&'static str, usize>,
    /// Frontend id -> names, for per-service labels.
    pub frontend_names: BTreeMap<u32, Arc<FrontendMeta>>,
    /// Per CT map: what the last sweep found.
    pub ct_sweeps: BTreeMap<&'static str, CtSweepGauge>,
    pub last_programmed: Option<SystemTime>,
    /// A change waiting to be programmed, since when.
    pub pending_since: Option<Instant>,
    /// The first full view has been programmed.
    pub ready: bool,
}

impl Default for State {
    fn default() -> Self {
        Self {
            latency: Histogram::new(&LATENCY_BUCKETS),
            syncs: 0,
            sync_errors: 0,
            resyncs: 0,
            resync_repairs: 0,
            frontends: 0,
            backends: 0,
            service_entries: 0,
            skipped_objects: BTreeMap::new(),
            frontend_names: BTreeMap::new(),
            ct_sweeps: BTreeMap::new(),
            last_programmed: None,
            pending_since: None,
            ready: false,
        }
    }
}

/// One CT map as the last sweep found it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtSweepGauge {
    /// Entries walked and kept.
    pub entries: u64,
    /// Entries the kernel evicted (LRU) since the map was created, as the
    /// counters and the walk tell.
    pub evicted: u64,
}

/// What one successful apply programmed.
#[derive(Clone, Debug, Default)]
pub struct Programmed {
    pub frontends: usize,
    pub backends: usize,
    pub service_entries: usize,
    /// Skipped objects by reason label (`invalid`, `no-service`, `manifest`).
    pub skipped_objects: BTreeMap<&'static str, usize>,
    /// Failures inside the apply (a full map, ...): the view is not whole.
    pub partial: bool,
}

/// Cheap to clone; every clone records into the same state.
#[derive(Clone, Debug, Default)]
pub struct Telemetry(Arc<Mutex<State>>);

impl Telemetry {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A change arrived (`seen` is when its source first noticed it).
    pub fn change_seen(&self, seen: Instant) {
        self.with(|s| {
            s.pending_since.get_or_insert(seen);
        });
    }

    /// The change seen at `seen` was in the maps at `written`.
    pub fn programmed(&self, seen: Instant, written: Instant, p: &Programmed) {
        let latency = written.saturating_duration_since(seen);
        self.with(|s| {
            s.latency.observe(latency.as_secs_f64());
            s.syncs += 1;
            s.frontends = p.frontends;
            s.backends = p.backends;
            s.service_entries = p.service_entries;
            s.skipped_objects = p.skipped_objects.clone();
            s.last_programmed = Some(SystemTime::now());
            s.pending_since = None;
            if p.partial {
                s.sync_errors += 1;
            } else {
                s.ready = true;
            }
        });
    }

    /// A full resync rewrote `repaired` map entries.
    pub fn resynced(&self, repaired: usize) {
        self.with(|s| {
            s.resyncs += 1;
            s.resync_repairs += repaired as u64;
        });
    }

    /// Programming failed as a whole; the change stays pending.
    pub fn failed(&self) {
        self.with(|s| s.sync_errors += 1);
    }

    pub fn set_frontend_names<'a>(&self, names: impl IntoIterator<Item = &'a Arc<FrontendMeta>>) {
        self.with(|s| {
            s.frontend_names = names.into_iter().map(|m| (m.id, m.clone())).collect();
        });
    }

    /// What a conntrack sweep of `map` found.
    pub fn set_ct_sweep(&self, map: &'static str, gauge: CtSweepGauge) {
        self.with(|s| {
            s.ct_sweeps.insert(map, gauge);
        });
    }

    /// Runs `f` on a consistent view of the state.
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        self.with(|s| f(s))
    }
}

/// Liveness as kube-proxy answers it: healthy unless a change has waited
/// longer than [`STALE_AFTER`] to be programmed.
pub fn healthy(s: &State, now: Instant) -> bool {
    s.pending_since
        .is_none_or(|since| now.saturating_duration_since(since) <= STALE_AFTER)
}

/// kube-proxy's /healthz body: when the proxy last programmed, the time
/// now, and whether this node should receive traffic.
pub fn healthz_body(s: &State, now: SystemTime) -> String {
    let last = s.last_programmed.map_or_else(String::new, clock::rfc3339);
    serde_json::json!({
        "lastUpdated": last,
        "currentTime": clock::rfc3339(now),
        "nodeEligible": true,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_and_readiness_follow_the_applies() {
        let t = Telemetry::new();
        assert!(!t.read(|s| s.ready));
        let seen = Instant::now();
        t.change_seen(seen);
        t.change_seen(Instant::now());
        assert_eq!(
            t.read(|s| s.pending_since),
            Some(seen),
            "the oldest change counts"
        );
        t.programmed(
            seen,
            Instant::now(),
            &Programmed {
                frontends: 2,
                partial: true,
                ..Default::default()
            },
        );
        t.read(|s| {
            assert!(!s.ready, "a partial apply is not ready");
            assert_eq!((s.syncs, s.sync_errors, s.frontends), (1, 1, 2));
            assert_eq!(s.latency.count(), 1);
            assert!(s.pending_since.is_none());
        });
        t.programmed(Instant::now(), Instant::now(), &Programmed::default());
        assert!(t.read(|s| s.ready));
    }

    #[test]
    fn a_change_stuck_past_the_limit_is_unhealthy() {
        let now = Instant::now();
        let mut s = State::default();
        assert!(healthy(&s, now));
        s.pending_since = Some(now);
        assert!(healthy(&s, now + STALE_AFTER));
        assert!(!healthy(&s, now + STALE_AFTER + Duration::from_secs(1)));
    }

    #[test]
    fn healthz_body_has_kube_proxy_fields() {
        let mut s = State::default();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        s.last_programmed = Some(at);
        let v: serde_json::Value = serde_json::from_str(&healthz_body(&s, at)).unwrap();
        assert_eq!(v["lastUpdated"], "2023-11-14T22:13:20Z");
        assert_eq!(v["currentTime"], "2023-11-14T22:13:20Z");
        assert_eq!(v["nodeEligible"], true);
    }
}
