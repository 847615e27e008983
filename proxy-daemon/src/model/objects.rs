//! Putting Kubernetes objects into a [`ClusterState`], whichever source
//! they came from (API watchers or manifest files).

use k8s_openapi::{
    api::{
        core::v1::{Endpoints, Node, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use std::sync::Arc;

use super::{ClusterState, ObjectKey, ServiceInfo, Slice};

/// Namespace of a namespaced object that does not name one, as `kubectl
/// apply` assumes.
pub const DEFAULT_NAMESPACE: &str = "default";

/// One object of a kind the model reads.
// Shared: the manifests source keeps each file's objects and puts the
// same allocations into every view it publishes.
#[derive(Clone, Debug, PartialEq)]
pub enum KubeObject {
    Service(Arc<Service>),
    /// Converted on receipt ([`KubeObject::endpoint_slice`]), with the key
    /// its metadata gave.
    EndpointSlice(Option<ObjectKey>, Arc<Slice>),
    Endpoints(Arc<Endpoints>),
    Node(Arc<Node>),
}

impl KubeObject {
    /// The object's `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            KubeObject::Service(_) => "Service",
            KubeObject::EndpointSlice(..) => "EndpointSlice",
            KubeObject::Endpoints(_) => "Endpoints",
            KubeObject::Node(_) => "Node",
        }
    }

    /// An EndpointSlice, converted to what the model keeps of it.
    pub fn endpoint_slice(slice: EndpointSlice) -> Self {
        KubeObject::EndpointSlice(ObjectKey::of(&slice.metadata), Arc::new(Slice::from(slice)))
    }

    /// `namespace/name` (namespace empty for a Node); `None` without a name.
    pub fn key(&self) -> Option<ObjectKey> {
        match self {
            KubeObject::Node(o) => {
                let name = o.metadata.name.as_deref().filter(|n| !n.is_empty())?;
                Some(ObjectKey::new("", name))
            }
            KubeObject::Service(o) => ObjectKey::of(&o.metadata),
            KubeObject::EndpointSlice(key, _) => key.clone(),
            KubeObject::Endpoints(o) => ObjectKey::of(&o.metadata),
        }
    }
}

impl ObjectKey {
    /// The key of a namespaced object; an object without a namespace is in
    /// `default` (what the API server would have made of it). `None` when
    /// the object has no name.
    pub fn of(meta: &ObjectMeta) -> Option<ObjectKey> {
        let name = meta.name.as_deref().filter(|n| !n.is_empty())?;
        let namespace = meta
            .namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or(DEFAULT_NAMESPACE);
        Some(ObjectKey::new(namespace, name))
    }
}

impl ClusterState {
    /// A state holding `objects`; a later object with the same kind and key
    /// replaces an earlier one. Objects without a name are dropped (parsers
    /// and watchers never produce them).
    pub fn from_objects(objects: impl IntoIterator<Item = KubeObject>) -> Self {
        let mut state = ClusterState::default();
        for object in objects {
            state.insert(object);
        }
        state
    }

    /// Adds or replaces one object. Returns false (and changes nothing) when
    /// the object has no name.
    pub fn insert(&mut self, object: KubeObject) -> bool {
        let Some(key) = object.key() else {
            return false;
        };
        match object {
            KubeObject::Service(o) => {
                let info = ServiceInfo::new(&key, &o);
                self.services.insert(key, Arc::new(info));
            }
            KubeObject::EndpointSlice(_, o) => {
                self.endpoint_slices.insert(key, o);
            }
            KubeObject::Endpoints(o) => {
                self.endpoints.insert(key, o);
            }
            KubeObject::Node(o) => {
                self.nodes.insert(key.name.to_string(), o);
            }
        }
        true
    }

    /// Removes the object of `kind` ("Service", "EndpointSlice", "Endpoints"
    /// or "Node") with `key` (namespace ignored for a Node). Returns whether
    /// it was there.
    pub fn remove(&mut self, kind: &str, key: &ObjectKey) -> bool {
        match kind {
            "Service" => self.services.remove(key).is_some(),
            "EndpointSlice" => self.endpoint_slices.remove(key).is_some(),
            "Endpoints" => self.endpoints.remove(key).is_some(),
            "Node" => self.nodes.remove(&*key.name).is_some(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn service(meta: serde_json::Value) -> KubeObject {
        let ip = meta["labels"]["v"].as_str().map(|v| format!("10.96.0.{v}"));
        KubeObject::Service(Arc::new(
            serde_json::from_value(json!({
                "metadata": meta,
                "spec": {"clusterIP": ip, "ports": [{"port": 80}]}
            }))
            .unwrap(),
        ))
    }

    #[test]
    fn keys_default_the_namespace_and_need_a_name() {
        assert_eq!(
            service(json!({"name": "web"})).key(),
            Some(ObjectKey::new("default", "web"))
        );
        assert_eq!(
            service(json!({"name": "web", "namespace": "shop"})).key(),
            Some(ObjectKey::new("shop", "web"))
        );
        assert_eq!(service(json!({"namespace": "shop"})).key(), None);
        assert_eq!(service(json!({"name": ""})).key(), None);
        let node = KubeObject::Node(Arc::new(
            serde_json::from_value(json!({"metadata": {"name": "n1"}})).unwrap(),
        ));
        assert_eq!(node.key(), Some(ObjectKey::new("", "n1")));
    }

    #[test]
    fn later_objects_replace_earlier_ones_and_nameless_ones_are_dropped() {
        let first = service(json!({"name": "web", "labels": {"v": "1"}}));
        let second = service(json!({"name": "web", "labels": {"v": "2"}}));
        let nameless = service(json!({}));
        let node = KubeObject::Node(Arc::new(
            serde_json::from_value(json!({"metadata": {"name": "n1"}})).unwrap(),
        ));
        let mut state = ClusterState::from_objects([first, second, nameless, node]);
        assert_eq!(state.services.len(), 1);
        let web = &state.services[&ObjectKey::new("default", "web")];
        assert_eq!(
            web.cluster_ip(),
            Some(std::net::Ipv4Addr::new(10, 96, 0, 2))
        );
        assert!(state.nodes.contains_key("n1"));

        assert!(state.remove("Service", &ObjectKey::new("default", "web")));
        assert!(!state.remove("Service", &ObjectKey::new("default", "web")));
        assert!(state.remove("Node", &ObjectKey::new("ignored", "n1")));
        assert!(state.services.is_empty() && state.nodes.is_empty());
    }
}
