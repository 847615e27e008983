//! The Kubernetes objects the model reads, as the sources last saw them.

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::api::core::v1::{Endpoints, Node, Service};

use super::Slice;

/// `namespace/name` of a namespaced object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
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
    pub services: BTreeMap<ObjectKey, Arc<Service>>,
    /// EndpointSlices, converted on receipt.
    pub endpoint_slices: BTreeMap<ObjectKey, Arc<Slice>>,
    /// v1 Endpoints, used for Services without a selector that have no
    /// EndpointSlice (what the EndpointSlice mirroring controller would do).
    pub endpoints: BTreeMap<ObjectKey, Arc<Endpoints>>,
    /// Nodes by name.
    pub nodes: BTreeMap<String, Arc<Node>>,
}
