//! The Kubernetes objects the model reads, as the sources last saw them.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use k8s_openapi::api::core::v1::{Endpoints, Node};

use super::{ServiceInfo, Slice, intern::intern};

/// `namespace/name` of a namespaced object.
///
/// Cheap to clone and to compare: a key is held by every view and by
/// several indexes of the model, and telling two views apart walks all of
/// them. A key cloned from another shares its strings, so comparing the
/// two compares pointers, not bytes (the namespace is interned besides).
#[derive(Clone, Debug)]
pub struct ObjectKey {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ObjectKey {
    pub fn new(namespace: impl AsRef<str>, name: impl AsRef<str>) -> Self {
        Self {
            namespace: intern(namespace.as_ref()),
            name: Arc::from(name.as_ref()),
        }
    }
}

fn same(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

impl PartialEq for ObjectKey {
    fn eq(&self, other: &Self) -> bool {
        same(&self.name, &other.name) && same(&self.namespace, &other.namespace)
    }
}

impl Eq for ObjectKey {}

impl Ord for ObjectKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let by = |a: &Arc<str>, b: &Arc<str>| {
            if Arc::ptr_eq(a, b) {
                std::cmp::Ordering::Equal
            } else {
                a.cmp(b)
            }
        };
        by(&self.namespace, &other.namespace).then_with(|| by(&self.name, &other.name))
    }
}

impl PartialOrd for ObjectKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::hash::Hash for ObjectKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.namespace.hash(state);
        self.name.hash(state);
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Every object of the kinds Sluice watches. Sources replace entries as
/// objects change. Objects are shared: a view is a map of pointers, so a
/// new view costs its map nodes only, and an object that did not change
/// between two views is the same allocation in both (the model compares
/// pointers first to find what a change touched).
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    /// Services, read on receipt.
    pub services: BTreeMap<ObjectKey, Arc<ServiceInfo>>,
    /// EndpointSlices, converted on receipt.
    pub endpoint_slices: BTreeMap<ObjectKey, Arc<Slice>>,
    /// v1 Endpoints, used for Services without a selector that have no
    /// EndpointSlice (what the EndpointSlice mirroring controller would do).
    pub endpoints: BTreeMap<ObjectKey, Arc<Endpoints>>,
    /// Nodes by name.
    pub nodes: BTreeMap<String, Arc<Node>>,
    /// Which published view of its source this is (0: not numbered).
    pub id: u64,
    /// What changed since an earlier view, when the source knows it.
    pub delta: Option<ViewDelta>,
}

/// The keys of each namespaced kind that changed from the view `from` of
/// the same source to this one; `None` for a kind means any may have (a
/// relist replaced it). Lets the model look at what changed instead of
/// walking every key of both views. Nodes are not listed: the model
/// derives nothing per Node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ViewDelta {
    pub from: u64,
    pub services: Option<BTreeSet<ObjectKey>>,
    pub endpoint_slices: Option<BTreeSet<ObjectKey>>,
    pub endpoints: Option<BTreeSet<ObjectKey>>,
}
