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
//!   relists when that is gone.
//! - Bursts are coalesced: a change is published at once when the previous
//!   view is older than [`KubeSourceConfig::coalesce`], else when it is that
//!   old, together with everything that arrived meanwhile; each view is
//!   stamped with when its oldest change arrived.
//!
//! Read-only: the daemon needs `get`, `list` and `watch` on services, nodes
//! and endpointslices.discovery.k8s.io, nothing else.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use ::kube::{
    Api, Client, Config,
    config::{InClusterError, KubeConfigOptions, Kubeconfig, KubeconfigError},
    runtime::watcher::{self, Event},
};
use futures::StreamExt;
use k8s_openapi::{
    api::{
        core::v1::{Node, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::de::DeserializeOwned;
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use tracing::{debug, info, warn};

use super::Update;
use crate::model::{ClusterState, ObjectKey};

/// `kubectl apply` keeps a copy of the whole object in this annotation; it
/// is large and no part of the model reads it.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

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
    /// Longest retry delay. A node proxy wants to converge soon after the
    /// API server is back; client-go's 30 s is kinder to a struggling API
    /// server, 10 s is still gentle at three requests per node.
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
            backoff_max: Duration::from_secs(10),
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

/// A client for the cluster a kubeconfig file's current context names.
/// Must be called inside a tokio runtime (the client spawns its workers).
pub async fn client_from_kubeconfig(path: &Path) -> Result<Client, KubeSourceError> {
    let kubeconfig =
        Kubeconfig::read_from(path).map_err(|source| KubeSourceError::ReadKubeconfig {
            path: path.to_owned(),
            source,
        })?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|source| KubeSourceError::Kubeconfig {
            path: path.to_owned(),
            source,
        })?;
    client(config)
}

/// A client from the pod's service account and `KUBERNETES_SERVICE_HOST`
/// / `KUBERNETES_SERVICE_PORT`. sluiced is the service proxy, so those must
/// name the API server itself, not the `kubernetes` Service's ClusterIP
/// (which only works once a proxy is running): the DaemonSet sets them.
pub fn client_in_cluster() -> Result<Client, KubeSourceError> {
    client(Config::incluster().map_err(KubeSourceError::InCluster)?)
}

fn client(config: Config) -> Result<Client, KubeSourceError> {
    Client::try_from(config).map_err(KubeSourceError::Client)
}

/// One watcher event, tagged with its kind.
// Unboxed: an event is moved from the watcher through the channel into
// the mirror, which stores the objects, never the events.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Change {
    Service(Event<Service>),
    EndpointSlice(Event<EndpointSlice>),
    Node(Event<Node>),
}

/// A relist in progress (between `Init` and `InitDone`) and whether the
/// kind has been listed completely at least once.
#[derive(Debug)]
struct Relist<K, T> {
    pending: Option<BTreeMap<K, T>>,
    synced: bool,
}

impl<K, T> Default for Relist<K, T> {
    fn default() -> Self {
        Self {
            pending: None,
            synced: false,
        }
    }
}

/// What a change touched, to bring an older copy of the view up to date.
#[derive(Clone, Debug)]
enum Touched<K> {
    Key(K),
    All,
}

#[derive(Clone, Debug)]
enum Dirty {
    Service(Touched<ObjectKey>),
    EndpointSlice(Touched<ObjectKey>),
    Node(Touched<String>),
}

/// Published views kept for reuse. Two suffice: when view N is published,
/// N-2 is normally held by nobody any more (the channel and the daemon
/// moved on to N-1), so it costs no memory the old views would not cost
/// anyway.
const KEPT_VIEWS: usize = 2;

/// The watched objects as the published view should hold them: the live
/// state of every kind plus, aside, the relists in progress.
///
/// Publishing a view of 10k Services by cloning every object costs about
/// as much as the daemon's whole recomputation, so views are recycled: a
/// published copy that nobody holds any more is brought up to date with
/// the objects changed since (a journal of touched keys) and published
/// again.
#[derive(Debug, Default)]
pub struct Mirror {
    state: ClusterState,
    services: Relist<ObjectKey, Service>,
    slices: Relist<ObjectKey, EndpointSlice>,
    nodes: Relist<String, Node>,
    /// What changed in `state`, from the oldest kept view on.
    journal: Vec<Dirty>,
    /// Journal position of `journal[0]`.
    journal_base: u64,
    /// Views published lately, each with the journal position it matches.
    views: std::collections::VecDeque<(Arc<ClusterState>, u64)>,
    /// Views published by bringing an old one up to date.
    recycled: u64,
}

impl Mirror {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one watcher event. Returns whether the view changed (the first
    /// complete list of a kind counts as a change even when it is empty).
    pub fn apply(&mut self, change: Change) -> bool {
        let dirty = match change {
            Change::Service(e) => apply_event(
                &mut self.state.services,
                &mut self.services,
                e,
                |s: &Service| ObjectKey::of(&s.metadata),
                |s: &mut Service| trim_meta(&mut s.metadata),
            )
            .map(Dirty::Service),
            Change::EndpointSlice(e) => apply_event(
                &mut self.state.endpoint_slices,
                &mut self.slices,
                e,
                |s: &EndpointSlice| ObjectKey::of(&s.metadata),
                |s: &mut EndpointSlice| trim_meta(&mut s.metadata),
            )
            .map(Dirty::EndpointSlice),
            Change::Node(e) => apply_event(
                &mut self.state.nodes,
                &mut self.nodes,
                e,
                |n: &Node| n.metadata.name.clone().filter(|n| !n.is_empty()),
                trim_node,
            )
            .map(Dirty::Node),
        };
        match dirty {
            Some(d) => {
                self.journal.push(d);
                true
            }
            None => false,
        }
    }

    /// Whether every kind has been listed completely at least once: only
    /// then may a view be published.
    pub fn synced(&self) -> bool {
        self.services.synced && self.slices.synced && self.nodes.synced
    }

    /// The current view (complete lists only).
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// The current view as an immutable snapshot to publish: a recycled
    /// earlier view brought up to date when one is free, a copy otherwise.
    pub fn view(&mut self) -> Arc<ClusterState> {
        let end = self.journal_base + self.journal.len() as u64;
        let free = self
            .views
            .iter()
            .position(|(v, _)| Arc::strong_count(v) == 1)
            .and_then(|i| self.views.remove(i));
        let state = match free.map(|(v, at)| (Arc::try_unwrap(v), at)) {
            Some((Ok(mut old), at)) => {
                self.recycled += 1;
                let from = usize::try_from(at - self.journal_base).unwrap_or(usize::MAX);
                for d in self.journal.get(from..).unwrap_or_default() {
                    replay(&mut old, &self.state, d);
                }
                old
            }
            // No free view (or, impossibly, one that was shared after all).
            _ => self.state.clone(),
        };
        let view = Arc::new(state);
        self.views.push_back((view.clone(), end));
        while self.views.len() > KEPT_VIEWS {
            self.views.pop_front();
        }
        // The journal is needed back to the oldest kept view only.
        let keep_from = self.views.front().map_or(end, |(_, at)| *at);
        let drained = usize::try_from(keep_from - self.journal_base).unwrap_or(0);
        self.journal.drain(..drained.min(self.journal.len()));
        self.journal_base = keep_from;
        view
    }
}

/// Makes `dst` agree with `src` on what `dirty` touched.
fn replay(dst: &mut ClusterState, src: &ClusterState, dirty: &Dirty) {
    fn one<K: Ord + Clone, T: Clone>(
        dst: &mut BTreeMap<K, T>,
        src: &BTreeMap<K, T>,
        touched: &Touched<K>,
    ) {
        match touched {
            Touched::All => dst.clone_from(src),
            Touched::Key(k) => match src.get(k) {
                Some(v) => {
                    dst.insert(k.clone(), v.clone());
                }
                None => {
                    dst.remove(k);
                }
            },
        }
    }
    match dirty {
        Dirty::Service(t) => one(&mut dst.services, &src.services, t),
        Dirty::EndpointSlice(t) => one(&mut dst.endpoint_slices, &src.endpoint_slices, t),
        Dirty::Node(t) => one(&mut dst.nodes, &src.nodes, t),
    }
}

/// Applies one event to a kind's live map (or its relist). Returns what
/// changed in the live map, if anything.
fn apply_event<K: Ord + Clone, T: PartialEq>(
    live: &mut BTreeMap<K, T>,
    relist: &mut Relist<K, T>,
    event: Event<T>,
    key: impl Fn(&T) -> Option<K>,
    trim: impl Fn(&mut T),
) -> Option<Touched<K>> {
    match event {
        Event::Init => {
            // A restarted list starts from nothing; whatever a broken
            // earlier attempt had collected is dropped with it.
            relist.pending = Some(BTreeMap::new());
            None
        }
        Event::InitApply(mut obj) => {
            trim(&mut obj);
            if let Some(k) = key(&obj) {
                relist
                    .pending
                    .get_or_insert_with(BTreeMap::new)
                    .insert(k, obj);
            }
            None
        }
        Event::InitDone => {
            let listed = relist.pending.take().unwrap_or_default();
            let first = !relist.synced;
            relist.synced = true;
            let changed = *live != listed;
            *live = listed;
            (changed || first).then_some(Touched::All)
        }
        Event::Apply(mut obj) => {
            trim(&mut obj);
            let k = key(&obj)?;
            if live.get(&k) == Some(&obj) {
                return None;
            }
            live.insert(k.clone(), obj);
            Some(Touched::Key(k))
        }
        Event::Delete(obj) => {
            let k = key(&obj)?;
            live.remove(&k)?;
            Some(Touched::Key(k))
        }
    }
}

/// Drops what changes on every write without meaning anything to the model
/// (resourceVersion, managedFields, kubectl's last-applied copy), so that a
/// no-op update or a relist of unchanged objects compares equal and costs
/// no recomputation.
fn trim_meta(meta: &mut ObjectMeta) {
    meta.resource_version = None;
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(LAST_APPLIED);
        if a.is_empty() {
            meta.annotations = None;
        }
    }
}

/// Nodes are rewritten by the kubelet for heartbeats and image lists; the
/// model reads names, labels, spec (pod CIDRs) and status.addresses. Drop
/// the churning status parts so such updates compare equal. (A model that
/// starts reading node conditions must stop dropping them here.)
fn trim_node(node: &mut Node) {
    trim_meta(&mut node.metadata);
    if let Some(status) = node.status.as_mut() {
        status.conditions = None;
        status.images = None;
        status.volumes_attached = None;
        status.volumes_in_use = None;
    }
}

/// Jittered exponential backoff that starts over after a quiet period.
#[derive(Debug)]
struct Backoff {
    min: Duration,
    max: Duration,
    reset_after: Duration,
    next: Duration,
    last_failure: Option<Instant>,
    seed: u64,
}

impl Backoff {
    fn new(cfg: &KubeSourceConfig) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32);
        Self {
            min: cfg.backoff_min,
            max: cfg.backoff_max.max(cfg.backoff_min),
            reset_after: cfg.backoff_reset,
            next: cfg.backoff_min,
            last_failure: None,
            seed: seed | 1,
        }
    }

    fn reset(&mut self) {
        self.next = self.min;
    }

    /// The delay before the next attempt, after a failure at `now`.
    fn delay(&mut self, now: Instant) -> Duration {
        if self
            .last_failure
            .is_some_and(|t| now.saturating_duration_since(t) > self.reset_after)
        {
            self.reset();
        }
        self.last_failure = Some(now);
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        // xorshift64: jitter only needs to keep many nodes from retrying
        // in lockstep, not to be unpredictable.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        // 75% to 125% of the base delay.
        let permille = 750 + self.seed % 501;
        base * permille as u32 / 1000
    }
}

/// Whether kube-rs would retry this failure forever without relisting: it
/// restarts a watch from the same resourceVersion after any failure to
/// start one, so a server that answers a too-old version with an HTTP 410
/// (rather than the usual ERROR event inside a 200 stream) would never let
/// it recover. Such a watcher is replaced by a fresh one, which relists.
fn needs_fresh_watcher(err: &watcher::Error) -> bool {
    matches!(err, watcher::Error::WatchStartFailed(::kube::Error::Api(s)) if s.code == 410)
}

/// Runs one kind's watcher for as long as the mirror listens, with backoff
/// and logging; every event goes to the mirror.
async fn reflect<K>(
    api: Api<K>,
    kind: &'static str,
    cfg: KubeSourceConfig,
    tx: mpsc::Sender<Change>,
    wrap: fn(Event<K>) -> Change,
) where
    K: ::kube::Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    // Bookmarks keep the resourceVersion of a quiet kind fresh, so that a
    // reconnect resumes instead of relisting.
    let wcfg = watcher::Config::default().page_size(cfg.page_size);
    let mut backoff = Backoff::new(&cfg);
    let mut failing_since: Option<Instant> = None;
    let mut failures = 0u64;
    let mut listed = 0usize;
    let mut synced_once = false;
    loop {
        let mut stream = watcher::watcher(api.clone(), wcfg.clone()).boxed();
        loop {
            let item = tokio::select! {
                item = stream.next() => item,
                () = tx.closed() => return,
            };
            // The stream never ends by itself; if it did, start a new one.
            let Some(item) = item else { break };
            match item {
                Ok(event) => {
                    if let Some(since) = failing_since.take() {
                        info!(
                            kind,
                            failures,
                            down_ms = since.elapsed().as_millis() as u64,
                            "API server reachable again; watch resumed"
                        );
                        failures = 0;
                    }
                    backoff.reset();
                    match &event {
                        Event::Init => {
                            listed = 0;
                            if synced_once {
                                info!(
                                    kind,
                                    "relisting (watch expired or restarted); the published view stays until the list is complete"
                                );
                            } else {
                                debug!(kind, "listing");
                            }
                        }
                        Event::InitApply(_) => listed += 1,
                        Event::InitDone => {
                            info!(
                                kind,
                                objects = listed,
                                relist = synced_once,
                                "list complete"
                            );
                            synced_once = true;
                        }
                        Event::Apply(_) | Event::Delete(_) => {}
                    }
                    if tx.send(wrap(event)).await.is_err() {
                        return;
                    }
                }
                Err(err) => {
                    let now = Instant::now();
                    let delay = backoff.delay(now);
                    failures += 1;
                    failing_since.get_or_insert(now);
                    let fresh = needs_fresh_watcher(&err);
                    warn!(
                        kind,
                        error = %err,
                        attempt = failures,
                        retry_in_ms = delay.as_millis() as u64,
                        relist = fresh,
                        "API watch failed; the datapath keeps its last state"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = tx.closed() => return,
                    }
                    if fresh {
                        break;
                    }
                }
            }
        }
    }
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
    tokio::spawn(reflect(
        Api::<Service>::all(client.clone()),
        "Service",
        cfg.clone(),
        events_tx.clone(),
        Change::Service,
    ));
    tokio::spawn(reflect(
        Api::<EndpointSlice>::all(client.clone()),
        "EndpointSlice",
        cfg.clone(),
        events_tx.clone(),
        Change::EndpointSlice,
    ));
    tokio::spawn(reflect(
        Api::<Node>::all(client),
        "Node",
        cfg.clone(),
        events_tx,
        Change::Node,
    ));
    tokio::spawn(publish(events, tx, cfg.coalesce));
    rx
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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
            .map(|k| k.name.clone())
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
        assert!(stored.metadata.managed_fields.is_none());
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
                held.push(v);
                while held.len() > ((seed >> 24) % 3) as usize {
                    held.remove(0);
                }
            }
        }
        assert!(
            m.recycled > 50,
            "views were recycled only {} times",
            m.recycled
        );
        assert!(
            m.journal.len() < 200,
            "the journal keeps growing: {}",
            m.journal.len()
        );
        // Every held view still shows what it showed when published:
        // recycling only ever touches views nobody holds.
        let v = m.view();
        assert_view_is_live(&v, &m, "last");
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
                .spec
                .as_ref()
                .unwrap()
                .cluster_ip
                .clone()
                .unwrap()
        };
        assert_eq!(ip(&first), "10.96.0.10");
        assert_eq!(ip(&second), "10.96.0.10");
        assert_eq!(ip(&third), "10.96.0.99");
        assert_eq!(ip(&fourth), "10.96.0.98");
        assert_eq!(m.recycled, 0, "a held view was reused");
        drop((first, second, third));
        m.apply(Change::Service(Event::Apply(svc("web", "10.96.0.97", "4"))));
        let fifth = m.view();
        assert_eq!(ip(&fifth), "10.96.0.97");
        assert_eq!(ip(&fourth), "10.96.0.98");
        assert_eq!(m.recycled, 1);
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
                *d >= base * 3 / 4 && *d <= base * 5 / 4,
                "{d} ms outside 75-125% of {base} ms: {delays:?}"
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
