//! The Kubernetes API as a source: kube-rs watchers on Services,
//! EndpointSlices (discovery.k8s.io/v1) and Nodes, mirrored into one
//! [`ClusterState`] that is published as a whole.
//!
//! What the daemon can rely on:
//! - Nothing is published before the first complete list of all three kinds
//!   has arrived: a daemon that started against an empty view would program
//!   "no services" and refuse every connection.
//! - A relist (after a 410 Gone / "Expired" resourceVersion, or any restart
//!   of a watcher) is collected aside and swapped in whole when the watcher
//!   says it is complete (`InitDone`); until then the last complete view of
//!   that kind stays published. An object that exists before and after a
//!   relist is therefore never missing from any published view, and a
//!   relist that finds what we already had publishes nothing at all.
//! - Lists are quorum reads (kube-rs' `ListSemantic::MostRecent`, the
//!   default): a relist served from a lagging cache could be older than what
//!   the watch already showed, and would take back a backend for a moment.
//! - When the API server cannot be reached nothing is published, so the
//!   datapath keeps its last state; each watcher retries with jittered
//!   exponential backoff and resumes from its last resourceVersion, or
//!   relists when that is gone. The first kind to get an answer wakes the
//!   others, so all three resume together instead of each waiting out its
//!   own (up to 30 s) delay.
//! - Bursts are coalesced: a change is published at once when the previous
//!   view is older than [`KubeSourceConfig::coalesce`], else when it is that
//!   old, together with everything that arrived meanwhile; each view is
//!   stamped with when its oldest change arrived.
//!
//! Read-only: the daemon needs `get`, `list` and `watch` on services, nodes
//! and endpointslices.discovery.k8s.io, nothing else.

mod backoff;
mod client;
mod mirror;
mod reflect;

use std::{path::PathBuf, sync::Arc, time::Duration};

use ::kube::{
    Api, Client,
    config::{InClusterError, KubeconfigError},
};
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use tokio::{
    sync::{Notify, mpsc, watch},
    time::Instant,
};
use tracing::{debug, info};

use super::Update;

pub use client::{client_from_kubeconfig, client_in_cluster};
pub use mirror::{Change, Mirror};

/// Events between the watchers and the mirror. Large enough that a page of
/// a list (500 objects) never waits for the mirror.
const EVENT_QUEUE: usize = 4096;

/// Tuning of the API source.
#[derive(Clone, Debug)]
pub struct KubeSourceConfig {
    /// Shortest time between two published views (a burst of changes
    /// within it becomes one view).
    pub coalesce: Duration,
    /// First retry delay after a failed list or watch.
    pub backoff_min: Duration,
    /// Longest retry delay: client-go's 30 s. Every node retries against
    /// the same recovering API server, so the cap decides the load it
    /// meets (5 000 nodes x 3 kinds at 30 s: 500 requests/s).
    pub backoff_max: Duration,
    /// A watcher that has not failed for this long starts again at
    /// `backoff_min` (a failed watch start gives no success event to reset
    /// on, so time is the signal).
    pub backoff_reset: Duration,
    /// Objects per list page (client-go's pager uses 500 as well).
    pub page_size: u32,
}

impl Default for KubeSourceConfig {
    fn default() -> Self {
        Self {
            coalesce: Duration::from_millis(20),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            backoff_reset: Duration::from_secs(60),
            page_size: 500,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    #[error("reading kubeconfig {path}: {source}")]
    ReadKubeconfig {
        path: PathBuf,
        #[source]
        source: KubeconfigError,
    },
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: KubeconfigError,
    },
    #[error(
        "in-cluster configuration (service account token, KUBERNETES_SERVICE_HOST/PORT): {0}; outside a cluster pass --kubeconfig or --manifests"
    )]
    InCluster(#[source] InClusterError),
    #[error("creating the API client: {0}")]
    Client(#[source] ::kube::Error),
}

/// Folds the watchers' events into the mirror and publishes views once
/// every kind is synced: at once when the last view is older than
/// `coalesce` (with whatever else has already arrived), otherwise when it
/// is `coalesce` old. kube-proxy's BoundedFrequencyRunner works the same
/// way: a lone change costs no waiting, a burst at most one view per
/// interval.
async fn publish(
    mut events: mpsc::Receiver<Change>,
    tx: watch::Sender<Option<Update>>,
    coalesce: Duration,
) {
    let mut mirror = Mirror::new();
    // The oldest change not yet published.
    let mut dirty_since: Option<Instant> = None;
    let mut last_publish: Option<Instant> = None;
    let mut deadline: Option<Instant> = None;
    loop {
        let change = tokio::select! {
            c = events.recv() => match c {
                Some(c) => Some(c),
                // Every watcher is gone (they only stop when nobody listens).
                None => return,
            },
            () = sleep_until_some(deadline) => None,
            () = tx.closed() => return,
        };
        if let Some(change) = change {
            let was_synced = mirror.synced();
            if mirror.apply(change) {
                dirty_since.get_or_insert_with(Instant::now);
            }
            // Take in what has already arrived before deciding.
            while let Ok(change) = events.try_recv() {
                if mirror.apply(change) {
                    dirty_since.get_or_insert_with(Instant::now);
                }
            }
            if mirror.synced() && !was_synced {
                info!(
                    services = mirror.state().services.len(),
                    endpoint_slices = mirror.state().endpoint_slices.len(),
                    nodes = mirror.state().nodes.len(),
                    "Services, EndpointSlices and Nodes listed; publishing"
                );
            }
        }
        let Some(since) = dirty_since.filter(|_| mirror.synced()) else {
            continue;
        };
        let now = Instant::now();
        let due = last_publish.map_or(now, |t| t + coalesce);
        if due > now {
            deadline = Some(due);
            continue;
        }
        deadline = None;
        dirty_since = None;
        last_publish = Some(now);
        let update = Update {
            state: mirror.view(),
            seen: since.into_std(),
            problems: 0,
        };
        debug!(
            services = update.state.services.len(),
            endpoint_slices = update.state.endpoint_slices.len(),
            nodes = update.state.nodes.len(),
            "publishing a new view of the cluster"
        );
        if tx.send(Some(update)).is_err() {
            return;
        }
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Starts watching the API server. The receiver holds `None` until every
/// kind has been listed completely, then always the newest view; a slow
/// reader skips intermediate views. The tasks end when the receiver is
/// dropped. Must be called inside a tokio runtime.
pub fn spawn(client: Client, cfg: KubeSourceConfig) -> watch::Receiver<Option<Update>> {
    let (tx, rx) = watch::channel(None);
    let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
    let reachable = Arc::new(Notify::new());
    tokio::spawn(reflect::reflect(
        Api::<Service>::all(client.clone()),
        "Service",
        cfg.clone(),
        events_tx.clone(),
        Change::Service,
        reachable.clone(),
    ));
    tokio::spawn(reflect::reflect(
        Api::<EndpointSlice>::all(client.clone()),
        "EndpointSlice",
        cfg.clone(),
        events_tx.clone(),
        Change::EndpointSlice,
        reachable.clone(),
    ));
    tokio::spawn(reflect::reflect(
        Api::<Node>::all(client),
        "Node",
        cfg.clone(),
        events_tx,
        Change::Node,
        reachable,
    ));
    tokio::spawn(publish(events, tx, cfg.coalesce));
    rx
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use std::{
        collections::{BTreeMap, BTreeSet},
        sync::Arc,
    };

    use ::kube::runtime::watcher::Event;

    use super::{backoff::Backoff, *};
    use crate::model::{ClusterState, ObjectKey};

    fn svc(name: &str, ip: &str, rv: &str) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "resourceVersion": rv,
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {"clusterIP": ip, "ports": [{"port": 80}]}
        }))
        .unwrap()
    }

    fn slice(name: &str, addrs: &[&str]) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": addrs.iter().map(|a| json!({"addresses": [a]})).collect::<Vec<_>>()
        }))
        .unwrap()
    }

    fn node(name: &str, heartbeat: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"podCIDR": "10.244.1.0/24"},
            "status": {
                "addresses": [{"type": "InternalIP", "address": "10.77.0.10"}],
                "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": heartbeat}]
            }
        }))
        .unwrap()
    }

    fn list_services(m: &mut Mirror, items: Vec<Service>) -> bool {
        let mut changed = m.apply(Change::Service(Event::Init));
        for s in items {
            changed |= m.apply(Change::Service(Event::InitApply(s)));
        }
        changed | m.apply(Change::Service(Event::InitDone))
    }

    fn sync_all(m: &mut Mirror) {
        list_services(m, vec![svc("web", "10.96.0.10", "1")]);
        m.apply(Change::EndpointSlice(Event::Init));
        m.apply(Change::EndpointSlice(Event::InitApply(slice(
            "web-a",
            &["10.244.1.2"],
        ))));
        m.apply(Change::EndpointSlice(Event::InitDone));
        m.apply(Change::Node(Event::Init));
        m.apply(Change::Node(Event::InitDone));
    }

    #[test]
    fn nothing_is_synced_before_all_three_kinds_are_listed() {
        let mut m = Mirror::new();
        assert!(list_services(&mut m, vec![svc("web", "10.96.0.10", "1")]));
        assert!(!m.synced());
        m.apply(Change::EndpointSlice(Event::Init));
        assert!(m.apply(Change::EndpointSlice(Event::InitDone)));
        assert!(!m.synced());
        m.apply(Change::Node(Event::Init));
        m.apply(Change::Node(Event::InitApply(node(
            "n1",
            "2025-01-01T00:00:01Z",
        ))));
        assert!(!m.synced(), "a list in progress is not a complete list");
        // An empty first list is still a change: the view exists now.
        assert!(m.apply(Change::Node(Event::InitDone)));
        assert!(m.synced());
        assert_eq!(m.state().services.len(), 1);
        assert!(m.state().nodes.contains_key("n1"));
    }

    #[test]
    fn a_relist_is_invisible_until_complete_and_keeps_what_still_exists() {
        let mut m = Mirror::new();
        sync_all(&mut m);
        let key = ObjectKey::new("default", "web-a");
        // Relist: Init and the first items change nothing visible.
        assert!(!m.apply(Change::EndpointSlice(Event::Init)));
        assert!(m.state().endpoint_slices.contains_key(&key));
        assert!(!m.apply(Change::EndpointSlice(Event::InitApply(slice(
            "web-b",
            &["10.244.1.3"]
        )))));
        assert!(
            m.state().endpoint_slices.contains_key(&key),
            "web-a vanished from the view in the middle of a relist"
        );
        assert!(m.synced());
        // The list restarts (the server failed mid-list): the partial
        // collection is discarded, the view is still the old one.
        assert!(!m.apply(Change::EndpointSlice(Event::Init)));
        assert!(!m.apply(Change::EndpointSlice(Event::InitApply(slice(
            "web-a",
            &["10.244.1.2"]
        )))));
        assert!(!m.apply(Change::EndpointSlice(Event::InitApply(slice(
            "web-c",
            &["10.244.1.4"]
        )))));
        assert_eq!(m.state().endpoint_slices.len(), 1);
        // Complete: swapped in whole. web-b (seen only by the broken
        // attempt) is not there.
        assert!(m.apply(Change::EndpointSlice(Event::InitDone)));
        let names: Vec<_> = m
            .state()
            .endpoint_slices
            .keys()
            .map(|k| k.name.to_string())
            .collect();
        assert_eq!(names, ["web-a", "web-c"]);
    }

    #[test]
    fn a_relist_of_unchanged_objects_is_not_a_change() {
        let mut m = Mirror::new();
        sync_all(&mut m);
        // Same objects, newer resourceVersions: nothing for the model.
        assert!(!list_services(&mut m, vec![svc("web", "10.96.0.10", "99")]));
        // A deletion the watch missed is found by the relist.
        assert!(list_services(&mut m, vec![]));
        assert!(m.state().services.is_empty());
    }

    #[test]
    fn watch_events_apply_and_no_op_updates_are_ignored() {
        let mut m = Mirror::new();
        sync_all(&mut m);
        assert!(!m.apply(Change::Service(Event::Apply(svc("web", "10.96.0.10", "7")))));
        assert!(m.apply(Change::Service(Event::Apply(svc("web", "10.96.0.11", "8")))));
        assert!(m.apply(Change::Service(Event::Apply(svc("db", "10.96.0.12", "9")))));
        assert_eq!(m.state().services.len(), 2);
        let stored = &m.state().services[&ObjectKey::new("default", "web")];
        assert_eq!(stored.cluster_ip(), Some("10.96.0.11".parse().unwrap()));
        assert!(m.apply(Change::Service(Event::Delete(svc(
            "db",
            "10.96.0.12",
            "10"
        )))));
        assert!(!m.apply(Change::Service(Event::Delete(svc(
            "db",
            "10.96.0.12",
            "10"
        )))));
        // Node heartbeats are not changes; an address change is.
        assert!(m.apply(Change::Node(Event::Apply(node(
            "n1",
            "2025-01-01T00:00:01Z"
        )))));
        assert!(!m.apply(Change::Node(Event::Apply(node(
            "n1",
            "2025-01-01T00:00:02Z"
        )))));
        let mut moved = node("n1", "2025-01-01T00:00:03Z");
        moved.status.as_mut().unwrap().addresses.as_mut().unwrap()[0].address = "10.77.0.11".into();
        assert!(m.apply(Change::Node(Event::Apply(moved))));
        // Objects without a name are dropped.
        let nameless: Service = serde_json::from_value(json!({"metadata": {}})).unwrap();
        assert!(!m.apply(Change::Service(Event::Apply(nameless))));
    }

    /// The client must come up for a plain-HTTP kubeconfig (the test API
    /// server) without a process-wide TLS provider having been installed.
    #[test]
    fn a_client_comes_from_a_kubeconfig() {
        let dir = std::env::temp_dir().join(format!("sluice-kubeconfig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:1\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\nusers:\n- name: u\n  user: {}\ncurrent-context: c\n",
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = rt.block_on(client_from_kubeconfig(&path));
        let missing = rt.block_on(client_from_kubeconfig(&dir.join("missing")));
        std::fs::remove_dir_all(&dir).unwrap();
        client.unwrap();
        assert!(matches!(
            missing,
            Err(KubeSourceError::ReadKubeconfig { .. })
        ));
    }

    fn assert_view_is_live(v: &ClusterState, m: &Mirror, when: &str) {
        assert!(
            v.services == m.state().services
                && v.endpoint_slices == m.state().endpoint_slices
                && v.nodes == m.state().nodes,
            "{when}: the published view differs from the live state"
        );
    }

    #[test]
    fn recycled_views_equal_the_live_state() {
        let mut m = Mirror::new();
        sync_all(&mut m);
        // Views still held, as the watch channel and the daemon hold them.
        let mut held: Vec<Arc<ClusterState>> = Vec::new();
        let mut previous: Option<ClusterState> = None;
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for step in 0..600u32 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let i = seed % 12;
            let name = format!("s{i}");
            let ip = format!("10.96.0.{}", step % 250);
            match (seed >> 8) % 8 {
                0 => {
                    m.apply(Change::Service(Event::Delete(svc(&name, "", "1"))));
                }
                1 | 2 => {
                    let addr = format!("10.244.1.{}", step % 250);
                    m.apply(Change::EndpointSlice(Event::Apply(slice(&name, &[&addr]))));
                }
                3 => {
                    m.apply(Change::EndpointSlice(Event::Delete(slice(&name, &[]))));
                }
                4 if step % 5 == 0 => {
                    // A relist with a subset of the services.
                    let items = (0..12)
                        .filter(|k| (seed >> k) & 1 == 1)
                        .map(|k| svc(&format!("s{k}"), "10.96.1.1", "2"))
                        .collect();
                    list_services(&mut m, items);
                }
                _ => {
                    m.apply(Change::Service(Event::Apply(svc(&name, &ip, "1"))));
                }
            }
            if (seed >> 20).is_multiple_of(3) {
                let v = m.view();
                assert_view_is_live(&v, &m, &format!("step {step}"));
                if let Some(before) = &previous {
                    assert_delta_covers(before, &v, &format!("step {step}"));
                }
                // A copy: holding the view itself would keep it from
                // being recycled.
                previous = Some((*v).clone());
                held.push(v);
                while held.len() > ((seed >> 24) % 3) as usize {
                    held.remove(0);
                }
            }
        }
        assert!(
            m.views.recycled > 50,
            "views were recycled only {} times",
            m.views.recycled
        );
        assert!(
            m.views.journal.len() < 200,
            "the journal keeps growing: {}",
            m.views.journal.len()
        );
        // Every held view still shows what it showed when published:
        // recycling only ever touches views nobody holds.
        let v = m.view();
        assert_view_is_live(&v, &m, "last");
    }

    /// `after` says it follows `before`, and its delta names every key
    /// whose object differs between the two.
    fn assert_delta_covers(before: &ClusterState, after: &ClusterState, at: &str) {
        let delta = after.delta.as_ref().expect("a published view has a delta");
        assert_eq!(delta.from, before.id, "{at}");
        assert_eq!(after.id, before.id + 1, "{at}");
        fn covers<V: PartialEq>(
            a: &BTreeMap<ObjectKey, Arc<V>>,
            b: &BTreeMap<ObjectKey, Arc<V>>,
            keys: &Option<BTreeSet<ObjectKey>>,
            at: &str,
        ) {
            let Some(keys) = keys else { return };
            for k in a.keys().chain(b.keys()) {
                if a.get(k) != b.get(k) {
                    assert!(keys.contains(k), "{at}: {k} changed, not in the delta");
                }
            }
        }
        covers(&before.services, &after.services, &delta.services, at);
        covers(
            &before.endpoint_slices,
            &after.endpoint_slices,
            &delta.endpoint_slices,
            at,
        );
    }

    #[test]
    fn a_view_lists_what_changed_since_the_last_one_and_a_relist_lists_all() {
        let mut m = Mirror::new();
        sync_all(&mut m);
        let first = m.view();
        assert_eq!(first.delta, None, "nothing came before the first view");
        m.apply(Change::Service(Event::Apply(svc("web", "10.96.0.99", "2"))));
        m.apply(Change::Node(Event::Apply(node(
            "n1",
            "2026-01-01T00:00:00Z",
        ))));
        let second = m.view();
        let d = second.delta.as_ref().unwrap();
        assert_eq!(d.from, first.id);
        let web: BTreeSet<_> = [ObjectKey::new("default", "web")].into();
        assert_eq!(d.services.as_ref(), Some(&web));
        assert_eq!(d.endpoint_slices.as_ref(), Some(&BTreeSet::new()));
        list_services(&mut m, vec![svc("web", "10.96.0.98", "3")]);
        let third = m.view();
        let d = third.delta.as_ref().unwrap();
        assert_eq!((d.from, &d.services), (second.id, &None));
        assert_eq!(d.endpoint_slices.as_ref(), Some(&BTreeSet::new()));
    }

    #[test]
    fn held_views_are_never_modified() {
        let mut m = Mirror::new();
        sync_all(&mut m);
        let first = m.view();
        let second = m.view();
        m.apply(Change::Service(Event::Apply(svc("web", "10.96.0.99", "2"))));
        let third = m.view();
        m.apply(Change::Service(Event::Apply(svc("web", "10.96.0.98", "3"))));
        let fourth = m.view();
        let ip = |v: &ClusterState| {
            v.services[&ObjectKey::new("default", "web")]
                .cluster_ip()
                .unwrap()
                .to_string()
        };
        assert_eq!(ip(&first), "10.96.0.10");
        assert_eq!(ip(&second), "10.96.0.10");
        assert_eq!(ip(&third), "10.96.0.99");
        assert_eq!(ip(&fourth), "10.96.0.98");
        assert_eq!(m.views.recycled, 0, "a held view was reused");
        drop((first, second, third));
        m.apply(Change::Service(Event::Apply(svc("web", "10.96.0.97", "4"))));
        let fifth = m.view();
        assert_eq!(ip(&fifth), "10.96.0.97");
        assert_eq!(ip(&fourth), "10.96.0.98");
        assert_eq!(m.views.recycled, 1);
    }

    #[test]
    fn backoff_grows_to_the_cap_with_jitter_and_resets() {
        let cfg = KubeSourceConfig {
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
            backoff_reset: Duration::from_secs(60),
            ..KubeSourceConfig::default()
        };
        let mut b = Backoff::new(&cfg);
        let now = Instant::now();
        let delays: Vec<u128> = (0..8).map(|_| b.delay(now).as_millis()).collect();
        for (d, base) in delays
            .iter()
            .zip([100, 200, 400, 800, 1000, 1000, 1000, 1000])
        {
            assert!(
                *d >= base * 3 / 4 && *d <= (base * 5 / 4).min(1000),
                "{d} ms outside 75-125% of {base} ms or above the cap: {delays:?}"
            );
        }
        b.reset();
        assert!(b.delay(now) <= Duration::from_millis(125));
        // A failure long after the previous one starts again at the bottom.
        for _ in 0..5 {
            b.delay(now);
        }
        let later = now + Duration::from_secs(61);
        assert!(b.delay(later) <= Duration::from_millis(125));
    }
}
