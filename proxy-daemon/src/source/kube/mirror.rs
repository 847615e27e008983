//! The watched objects as the published view should hold them, folded from
//! the watchers' events, with relists collected aside and views recycled.

use std::{collections::BTreeMap, sync::Arc};

use ::kube::runtime::watcher::Event;
use k8s_openapi::{
    api::{
        core::v1::{Node, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use crate::{
    model::{ClusterState, ObjectKey, ServiceInfo, Slice},
    source::views::{Dirty, Touched, Views},
};

/// `kubectl apply` keeps a copy of the whole object in this annotation; it
/// is large and no part of the model reads it.
pub(super) const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// One watcher event, tagged with its kind.
// Unboxed: an event is moved from the watcher through the channel into
// the mirror, which stores the objects, never the events.
#[expect(
    clippy::large_enum_variant,
    reason = "an event moves once from the watcher through the channel into the mirror"
)]
#[derive(Debug)]
pub enum Change {
    Service(Event<Service>),
    EndpointSlice(Event<EndpointSlice>),
    Node(Event<Node>),
}

/// A relist in progress (between `Init` and `InitDone`) and whether the
/// kind has been listed completely at least once.
#[derive(Debug)]
pub(super) struct Relist<K, T> {
    pub(super) pending: Option<BTreeMap<K, T>>,
    pub(super) synced: bool,
}

impl<K, T> Default for Relist<K, T> {
    fn default() -> Self {
        Self {
            pending: None,
            synced: false,
        }
    }
}

/// The watched objects as the published view should hold them: the live
/// state of every kind plus, aside, the relists in progress.
#[derive(Debug, Default)]
pub struct Mirror {
    pub(super) state: ClusterState,
    pub(super) services: Relist<ObjectKey, Arc<ServiceInfo>>,
    pub(super) slices: Relist<ObjectKey, Arc<Slice>>,
    pub(super) nodes: Relist<String, Arc<Node>>,
    pub(super) views: Views,
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
                |key, s: Service| ServiceInfo::new(key, &s),
            )
            .map(Dirty::Service),
            Change::EndpointSlice(e) => apply_event(
                &mut self.state.endpoint_slices,
                &mut self.slices,
                e,
                |s: &EndpointSlice| ObjectKey::of(&s.metadata),
                |_, s| Slice::from(s),
            )
            .map(Dirty::EndpointSlice),
            Change::Node(e) => apply_event(
                &mut self.state.nodes,
                &mut self.nodes,
                e,
                |n: &Node| n.metadata.name.clone().filter(|n| !n.is_empty()),
                |_, mut n: Node| {
                    trim_node(&mut n);
                    n
                },
            )
            .map(Dirty::Node),
        };
        match dirty {
            Some(d) => {
                self.views.note(d);
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

    /// The current view as an immutable snapshot to publish.
    pub fn view(&mut self) -> Arc<ClusterState> {
        self.views.publish(&self.state)
    }
}

/// Applies one event to a kind's live map (or its relist). Returns what
/// changed in the live map, if anything.
pub(super) fn apply_event<K: Ord + Clone, T, U: PartialEq>(
    live: &mut BTreeMap<K, Arc<U>>,
    relist: &mut Relist<K, Arc<U>>,
    event: Event<T>,
    key: impl Fn(&T) -> Option<K>,
    keep: impl Fn(&K, T) -> U,
) -> Option<Touched<K>> {
    match event {
        Event::Init => {
            // A restarted list starts from nothing; whatever a broken
            // earlier attempt had collected is dropped with it.
            relist.pending = Some(BTreeMap::new());
            None
        }
        Event::InitApply(obj) => {
            if let Some(k) = key(&obj) {
                let kept = Arc::new(keep(&k, obj));
                relist
                    .pending
                    .get_or_insert_with(BTreeMap::new)
                    .insert(k, kept);
            }
            None
        }
        Event::InitDone => {
            let listed = relist.pending.take().unwrap_or_default();
            let first = !relist.synced;
            relist.synced = true;
            // An object the relist found unchanged keeps the allocation the
            // views already share, so the model sees it as untouched
            // without comparing its fields again.
            let mut changed = listed.len() != live.len();
            let merged = listed
                .into_iter()
                .map(|(k, v)| match live.get(&k) {
                    Some(old) if **old == *v => (k, old.clone()),
                    _ => {
                        changed = true;
                        (k, v)
                    }
                })
                .collect();
            *live = merged;
            (changed || first).then_some(Touched::All)
        }
        Event::Apply(obj) => {
            let k = key(&obj)?;
            let obj = keep(&k, obj);
            if live.get(&k).is_some_and(|old| **old == obj) {
                return None;
            }
            live.insert(k.clone(), Arc::new(obj));
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
pub(super) fn trim_meta(meta: &mut ObjectMeta) {
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
pub(super) fn trim_node(node: &mut Node) {
    trim_meta(&mut node.metadata);
    if let Some(status) = node.status.as_mut() {
        status.conditions = None;
        status.images = None;
        status.volumes_attached = None;
        status.volumes_in_use = None;
    }
}
