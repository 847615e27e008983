//! An EndpointSlice as the model reads it, converted when it is received.
//!
//! A k8s-openapi `EndpointSlice` of ten endpoints as the EndpointSlice
//! controller writes it (target refs, owner references, uid, zone) holds
//! about 6.7 KiB; at 10k Services that alone is most of the daemon's
//! memory. This keeps what the model reads, as it was written (an
//! unparsable address stays a string, so the model reports it as before),
//! and shares the strings every endpoint repeats (node and zone names).

use std::{net::Ipv4Addr, sync::Arc};

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};

use super::{
    HEADLESS_LABEL, SERVICE_NAME_LABEL, SERVICE_PROXY_NAME_LABEL, intern::intern,
    service_spec::parse_ipv4,
};

/// What the model reads of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slice {
    /// Its `kubernetes.io/service-name` label.
    pub service_name: Option<Box<str>>,
    /// Labelled for another proxy (`service.kubernetes.io/service-proxy-name`)
    /// or headless: kube-proxy's informer never sees it.
    pub foreign: bool,
    pub address_type: Box<str>,
    pub ports: Box<[SlicePort]>,
    pub endpoints: Box<[SliceEndpoint]>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    pub name: Option<Arc<str>>,
    pub port: Option<i32>,
    pub protocol: Option<Arc<str>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    /// The first address; the API gives the others no meaning and
    /// kube-proxy ignores them. `None`: the endpoint listed none.
    pub address: Option<Address>,
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
    pub node_name: Option<Arc<str>>,
    /// Topology hints, rare enough to live behind a pointer.
    pub hints: Option<Box<Hints>>,
}

/// An endpoint address: parsed when it is an IPv4 address, otherwise kept
/// as written for the model to explain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    V4(Ipv4Addr),
    Other(Box<str>),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hints {
    pub zones: Box<[Arc<str>]>,
    pub nodes: Box<[Arc<str>]>,
}

impl Address {
    fn new(s: String) -> Self {
        parse_ipv4(&s).map_or_else(|_| Address::Other(s.into_boxed_str()), Address::V4)
    }
}

impl From<EndpointSlice> for Slice {
    fn from(slice: EndpointSlice) -> Self {
        let labels = slice.metadata.labels.unwrap_or_default();
        let foreign =
            labels.contains_key(SERVICE_PROXY_NAME_LABEL) || labels.contains_key(HEADLESS_LABEL);
        let service_name = labels
            .into_iter()
            .find(|(k, _)| k == SERVICE_NAME_LABEL)
            .map(|(_, v)| v.into_boxed_str());
        Slice {
            service_name,
            foreign,
            address_type: slice.address_type.into_boxed_str(),
            ports: slice
                .ports
                .unwrap_or_default()
                .into_iter()
                .map(SlicePort::from)
                .collect(),
            endpoints: slice
                .endpoints
                .into_iter()
                .map(SliceEndpoint::from)
                .collect(),
        }
    }
}

impl From<EndpointPort> for SlicePort {
    fn from(p: EndpointPort) -> Self {
        SlicePort {
            name: p.name.as_deref().map(intern),
            port: p.port,
            protocol: p.protocol.as_deref().map(intern),
        }
    }
}

impl From<Endpoint> for SliceEndpoint {
    fn from(e: Endpoint) -> Self {
        let conditions = e.conditions.unwrap_or_default();
        let hints = e.hints.map(|h| {
            Box::new(Hints {
                zones: h
                    .for_zones
                    .unwrap_or_default()
                    .iter()
                    .map(|z| intern(&z.name))
                    .collect(),
                nodes: h
                    .for_nodes
                    .unwrap_or_default()
                    .iter()
                    .map(|n| intern(&n.name))
                    .collect(),
            })
        });
        SliceEndpoint {
            address: e.addresses.into_iter().next().map(Address::new),
            ready: conditions.ready,
            serving: conditions.serving,
            terminating: conditions.terminating,
            node_name: e.node_name.as_deref().map(intern),
            hints,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn slice(v: serde_json::Value) -> Slice {
        Slice::from(serde_json::from_value::<EndpointSlice>(v).unwrap())
    }

    #[test]
    fn keeps_what_the_model_reads_as_written() {
        let s = slice(json!({
            "metadata": {"name": "web-1", "labels": {SERVICE_NAME_LABEL: "web", "app": "x"},
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "web", "uid": "u"}]},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"port": 0}],
            "endpoints": [
                {"addresses": ["10.1.0.1", "10.1.0.9"], "nodeName": "n1",
                 "conditions": {"ready": false, "terminating": true},
                 "hints": {"forZones": [{"name": "a"}]},
                 "targetRef": {"kind": "Pod", "name": "web-abc"}},
                {"addresses": ["10.1.0.999"]},
                {"addresses": ["010.1.0.2"]},
                {"addresses": []}
            ]
        }));
        assert_eq!(s.service_name.as_deref(), Some("web"));
        assert!(!s.foreign);
        assert_eq!(&*s.address_type, "IPv4");
        assert_eq!(s.ports.len(), 2);
        assert_eq!(s.ports[0].name.as_deref(), Some("http"));
        assert_eq!(s.ports[1].port, Some(0));
        let e = &s.endpoints;
        assert_eq!(e[0].address, Some(Address::V4(Ipv4Addr::new(10, 1, 0, 1))));
        assert_eq!(
            (e[0].ready, e[0].serving, e[0].terminating),
            (Some(false), None, Some(true))
        );
        assert_eq!(e[0].node_name.as_deref(), Some("n1"));
        assert_eq!(&*e[0].hints.as_ref().unwrap().zones[0], "a");
        assert_eq!(e[1].address, Some(Address::Other("10.1.0.999".into())));
        // Leading zeros are not an address (kube-proxy's parser agrees).
        assert_eq!(e[2].address, Some(Address::Other("010.1.0.2".into())));
        assert_eq!(e[3].address, None);
    }

    #[test]
    fn slices_for_other_proxies_and_headless_ones_are_foreign() {
        for label in [SERVICE_PROXY_NAME_LABEL, HEADLESS_LABEL] {
            let s = slice(
                json!({"metadata": {"labels": {label: "", SERVICE_NAME_LABEL: "web"}},
                                 "addressType": "IPv4", "endpoints": []}),
            );
            assert!(s.foreign, "{label}");
        }
    }

    #[test]
    fn node_names_are_shared_between_endpoints() {
        let s = slice(json!({"metadata": {}, "addressType": "IPv4", "endpoints": [
            {"addresses": ["10.1.0.1"], "nodeName": "node-shared-by-two"},
            {"addresses": ["10.1.0.2"], "nodeName": "node-shared-by-two"}]}));
        let (a, b) = (&s.endpoints[0].node_name, &s.endpoints[1].node_name);
        assert!(Arc::ptr_eq(a.as_ref().unwrap(), b.as_ref().unwrap()));
    }
}
