//! Collecting a Service's endpoints per port from its EndpointSlices (or,
//! for a selectorless Service without slices, from its v1 Endpoints, as the
//! EndpointSlice mirroring controller would), the way kube-proxy's
//! endpointslicecache.go does.
//!
//! Endpoints are matched to a Service port by (port name, protocol); the
//! endpoint's port is the slice port's number, which is how a named
//! targetPort ends up resolved. An address+port listed by several slices is
//! one endpoint.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use k8s_openapi::api::core::v1::{EndpointAddress, Endpoints};

use super::{
    Address, ClusterState, ObjectKey, Protocol, Skip, SkipKind, Slice,
    node::is_ipv6,
    service_spec::{parse_ipv4, parse_protocol, port_number},
};

/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Endpoints carrying this label (value "true") are not mirrored.
pub const SKIP_MIRROR_LABEL: &str = "endpointslice.kubernetes.io/skip-mirror";

/// One endpoint of one Service port, with what categorization needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EndpointInfo {
    pub addr: Ipv4Addr,
    pub port: u16,
    /// On this node (its nodeName is this node's name).
    pub local: bool,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub zone_hints: BTreeSet<String>,
    pub node_hints: BTreeSet<String>,
}

impl EndpointInfo {
    /// Which copy of a duplicated endpoint to keep: kube-proxy prefers a
    /// local copy; among equals, a more usable one wins.
    fn preference(&self) -> (bool, u8) {
        let usable = if self.ready {
            2
        } else if self.serving && self.terminating {
            1
        } else {
            0
        };
        (self.local, usable)
    }
}

/// A Service port as endpoints name it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct PortKey {
    pub name: String,
    pub protocol: Protocol,
}

/// Endpoints per Service port, each list sorted by (address, port).
pub(crate) type EndpointsByPort = BTreeMap<PortKey, Vec<EndpointInfo>>;

/// The EndpointSlices that kube-proxy would see, by the Service they name.
pub(crate) struct SliceIndex<'a> {
    by_service: BTreeMap<ObjectKey, Vec<(&'a ObjectKey, &'a Slice)>>,
}

impl<'a> SliceIndex<'a> {
    /// Indexes every slice once, so each Service finds its slices without
    /// scanning all of them.
    pub fn new(cluster: &'a ClusterState, skips: &mut Vec<Skip>) -> Self {
        let mut by_service: BTreeMap<ObjectKey, Vec<_>> = BTreeMap::new();
        for (key, slice) in &cluster.endpoint_slices {
            match slice_owner(key, slice) {
                SliceOwner::Invisible => {}
                SliceOwner::Nobody(skip) => skips.push(skip),
                SliceOwner::Service(service) => {
                    by_service.entry(service).or_default().push((key, &**slice))
                }
            }
        }
        Self { by_service }
    }

    pub fn slices(&self, service: &ObjectKey) -> &[(&'a ObjectKey, &'a Slice)] {
        self.by_service.get(service).map_or(&[], Vec::as_slice)
    }

    /// Reports every slice that names a Service the cluster does not have.
    pub fn report_orphans(&self, cluster: &ClusterState, skips: &mut Vec<Skip>) {
        for (service, slices) in &self.by_service {
            if cluster.services.contains_key(service) {
                continue;
            }
            skips.extend(slices.iter().map(|(key, _)| orphan_skip(key, service)));
        }
    }
}

/// Which Service an EndpointSlice belongs to, as kube-proxy sees it.
pub(crate) enum SliceOwner {
    /// kube-proxy's informer never sees it (another proxy's, or headless).
    Invisible,
    /// It names no Service.
    Nobody(Skip),
    Service(ObjectKey),
}

pub(crate) fn slice_owner(key: &ObjectKey, slice: &Slice) -> SliceOwner {
    // Same selector as for Services.
    if slice.foreign {
        return SliceOwner::Invisible;
    }
    match slice.service_name.as_deref().filter(|s| !s.is_empty()) {
        Some(service) => SliceOwner::Service(ObjectKey::new(key.namespace.clone(), service)),
        None => SliceOwner::Nobody(slice_skip(
            key,
            format!("no {SERVICE_NAME_LABEL} label: belongs to no Service"),
        )),
    }
}

/// A slice naming a Service that does not exist.
pub(crate) fn orphan_skip(key: &ObjectKey, service: &ObjectKey) -> Skip {
    Skip {
        object: format!("EndpointSlice {key}"),
        reason: format!(
            "its {SERVICE_NAME_LABEL} label names Service {service}, which does not exist"
        ),
        kind: SkipKind::NoService,
    }
}

fn slice_skip(key: &ObjectKey, reason: impl Into<String>) -> Skip {
    Skip {
        object: format!("EndpointSlice {key}"),
        reason: reason.into(),
        kind: SkipKind::Invalid,
    }
}

fn endpoints_skip(key: &ObjectKey, reason: impl Into<String>) -> Skip {
    Skip {
        object: format!("Endpoints {key}"),
        reason: reason.into(),
        kind: SkipKind::Invalid,
    }
}

/// The endpoints of the Service `key`, merged over all its slices.
pub(crate) fn service_endpoints(
    slices: &[(&ObjectKey, &Slice)],
    endpoints: Option<&Endpoints>,
    key: &ObjectKey,
    has_selector: bool,
    node_name: &str,
    skips: &mut Vec<Skip>,
) -> EndpointsByPort {
    let mut merged = Merger::default();
    for (slice_key, slice) in slices {
        if let Some(group) = slice_group(slice_key, slice, node_name, skips) {
            merged.add(&group);
        }
    }
    // The mirroring controller makes slices from the Endpoints of a Service
    // without a selector; in a cluster they exist, but a directory of
    // manifests (or an old dump) may hold only the Endpoints.
    if slices.is_empty()
        && !has_selector
        && let Some(endpoints) = endpoints
    {
        for group in mirrored_groups(key, endpoints, node_name, skips) {
            merged.add(&group);
        }
    }
    merged.finish()
}

/// Ports and endpoints that belong together: one slice, or one subset of
/// a v1 Endpoints object.
struct Group {
    ports: Vec<(PortKey, u16)>,
    endpoints: Vec<GroupEndpoint>,
}

struct GroupEndpoint {
    addr: Ipv4Addr,
    local: bool,
    ready: bool,
    serving: bool,
    terminating: bool,
    zone_hints: BTreeSet<String>,
    node_hints: BTreeSet<String>,
}

fn slice_group(
    key: &ObjectKey,
    slice: &Slice,
    node_name: &str,
    skips: &mut Vec<Skip>,
) -> Option<Group> {
    match &*slice.address_type {
        "IPv4" => {}
        // A dual-stack Service's IPv6 slice (its IPv6 clusterIP is already
        // reported) and FQDN slices (which kube-proxy ignores) are normal.
        "IPv6" | "FQDN" => return None,
        "" => {
            skips.push(slice_skip(key, "no addressType"));
            return None;
        }
        other => {
            skips.push(slice_skip(key, format!("unknown addressType {other:?}")));
            return None;
        }
    }

    let mut ports = Vec::new();
    for (i, port) in slice.ports.iter().enumerate() {
        // The API server defaults a missing name to "" and a missing
        // protocol to TCP; manifests may leave them out.
        let name = port.name.as_deref().unwrap_or_default().to_string();
        let label = if name.is_empty() {
            format!("ports[{i}]")
        } else {
            format!("port {name}")
        };
        let protocol = match parse_protocol(port.protocol.as_deref()) {
            Ok(p) => p,
            Err(why) => {
                skips.push(slice_skip(key, format!("{label}: {why}")));
                continue;
            }
        };
        match port.port.map(|p| (p, port_number(p))) {
            Some((_, Some(number))) => ports.push((PortKey { name, protocol }, number)),
            None => skips.push(slice_skip(key, format!("{label}: no port number"))),
            Some((p, None)) => skips.push(slice_skip(key, format!("{label}: invalid port {p}"))),
        }
    }

    let mut endpoints = Vec::new();
    for (i, endpoint) in slice.endpoints.iter().enumerate() {
        // Only the first address counts (the conversion kept no other).
        let addr = match &endpoint.address {
            None => {
                skips.push(slice_skip(key, format!("endpoints[{i}]: no addresses")));
                continue;
            }
            Some(Address::V4(addr)) => *addr,
            Some(Address::Other(address)) => match parse_ipv4(address) {
                Ok(addr) => addr,
                Err(why) => {
                    skips.push(slice_skip(key, format!("endpoint {address:?}: {why}")));
                    continue;
                }
            },
        };
        // kube-proxy: unknown readiness is ready, unknown serving is
        // serving, unknown terminating is not terminating.
        let ready = endpoint.ready.unwrap_or(true);
        let serving = endpoint.serving.unwrap_or(true);
        let terminating = endpoint.terminating.unwrap_or(false);
        let hints = endpoint.hints.as_deref();
        let zone_hints = hints
            .map(|h| h.zones.iter().map(|z| z.to_string()).collect())
            .unwrap_or_default();
        let node_hints = hints
            .map(|h| h.nodes.iter().map(|n| n.to_string()).collect())
            .unwrap_or_default();
        endpoints.push(GroupEndpoint {
            addr,
            local: is_local(endpoint.node_name.as_deref(), node_name),
            ready,
            serving,
            terminating,
            zone_hints,
            node_hints,
        });
    }
    Some(Group { ports, endpoints })
}

fn is_local(endpoint_node: Option<&str>, node_name: &str) -> bool {
    !node_name.is_empty() && endpoint_node == Some(node_name)
}

/// What the EndpointSlice mirroring controller would make of `endpoints`:
/// `addresses` are ready, `notReadyAddresses` are not, and nothing is
/// terminating (v1 Endpoints cannot say so).
fn mirrored_groups(
    key: &ObjectKey,
    endpoints: &Endpoints,
    node_name: &str,
    skips: &mut Vec<Skip>,
) -> Vec<Group> {
    let labels = endpoints.metadata.labels.as_ref();
    if labels
        .and_then(|l| l.get(SKIP_MIRROR_LABEL))
        .is_some_and(|v| v == "true")
    {
        return Vec::new();
    }
    let mut groups = Vec::new();
    for (s, subset) in endpoints.subsets.iter().flatten().enumerate() {
        let mut ports = Vec::new();
        for port in subset.ports.iter().flatten() {
            let name = port.name.clone().unwrap_or_default();
            let label = if name.is_empty() {
                format!("subsets[{s}] port {}", port.port)
            } else {
                format!("subsets[{s}] port {name}")
            };
            match (
                parse_protocol(port.protocol.as_deref()),
                port_number(port.port),
            ) {
                (Ok(protocol), Some(number)) => ports.push((PortKey { name, protocol }, number)),
                (Err(why), _) => skips.push(endpoints_skip(key, format!("{label}: {why}"))),
                (Ok(_), None) => skips.push(endpoints_skip(
                    key,
                    format!("{label}: invalid port {}", port.port),
                )),
            }
        }
        let mut members = Vec::new();
        let ready = subset.addresses.iter().flatten().map(|a| (a, true));
        let not_ready = subset
            .not_ready_addresses
            .iter()
            .flatten()
            .map(|a| (a, false));
        for (address, ready) in ready.chain(not_ready) {
            if let Some(member) = mirrored_endpoint(key, address, ready, node_name, skips) {
                members.push(member);
            }
        }
        groups.push(Group {
            ports,
            endpoints: members,
        });
    }
    groups
}

fn mirrored_endpoint(
    key: &ObjectKey,
    address: &EndpointAddress,
    ready: bool,
    node_name: &str,
    skips: &mut Vec<Skip>,
) -> Option<GroupEndpoint> {
    // The mirroring controller puts IPv6 addresses in an IPv6 slice, which
    // this IPv4 datapath ignores like any other IPv6 slice.
    if is_ipv6(&address.ip) {
        return None;
    }
    match parse_ipv4(&address.ip) {
        Ok(addr) => Some(GroupEndpoint {
            addr,
            local: is_local(address.node_name.as_deref(), node_name),
            ready,
            // The mirrored slice leaves serving unset, which kube-proxy
            // reads as serving; with terminating false it never matters.
            serving: true,
            terminating: false,
            zone_hints: BTreeSet::new(),
            node_hints: BTreeSet::new(),
        }),
        Err(why) => {
            skips.push(endpoints_skip(
                key,
                format!("address {:?}: {why}", address.ip),
            ));
            None
        }
    }
}

/// Deduplicates endpoints by (port name, protocol) and address+port.
#[derive(Default)]
struct Merger {
    by_port: BTreeMap<PortKey, BTreeMap<(Ipv4Addr, u16), EndpointInfo>>,
}

impl Merger {
    fn add(&mut self, group: &Group) {
        for (port_key, number) in &group.ports {
            let merged = self.by_port.entry(port_key.clone()).or_default();
            for ep in &group.endpoints {
                let candidate = EndpointInfo {
                    addr: ep.addr,
                    port: *number,
                    local: ep.local,
                    ready: ep.ready,
                    serving: ep.serving,
                    terminating: ep.terminating,
                    zone_hints: ep.zone_hints.clone(),
                    node_hints: ep.node_hints.clone(),
                };
                // Groups come in slice-name order, so on a tie the first
                // slice's copy stays: the same objects always give the same
                // result (kube-proxy's pick depends on map order).
                match merged.get(&(ep.addr, *number)) {
                    Some(kept) if kept.preference() >= candidate.preference() => {}
                    _ => {
                        merged.insert((ep.addr, *number), candidate);
                    }
                }
            }
        }
    }

    fn finish(self) -> EndpointsByPort {
        self.by_port
            .into_iter()
            .map(|(port, endpoints)| (port, endpoints.into_values().collect()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::{KubeObject, SERVICE_PROXY_NAME_LABEL};

    fn slice(name: &str, service: &str, body: serde_json::Value) -> KubeObject {
        let mut v = json!({
            "metadata": {"name": name, "namespace": "default", "labels": {SERVICE_NAME_LABEL: service}},
            "addressType": "IPv4",
        });
        for (k, val) in body.as_object().unwrap() {
            v[k] = val.clone();
        }
        KubeObject::endpoint_slice(serde_json::from_value(v).unwrap())
    }

    fn collect(objects: Vec<KubeObject>, has_selector: bool) -> (EndpointsByPort, Vec<Skip>) {
        let cluster = ClusterState::from_objects(objects);
        let mut skips = Vec::new();
        let index = SliceIndex::new(&cluster, &mut skips);
        let web = ObjectKey::new("default", "web");
        let eps = service_endpoints(
            index.slices(&web),
            cluster.endpoints.get(&web).map(|e| &**e),
            &web,
            has_selector,
            "node-a",
            &mut skips,
        );
        (eps, skips)
    }

    fn port(name: &str, protocol: Protocol) -> PortKey {
        PortKey {
            name: name.into(),
            protocol,
        }
    }

    /// `addr:port` plus flags, for compact comparisons.
    fn show(eps: &[EndpointInfo]) -> Vec<String> {
        eps.iter()
            .map(|e| {
                let mut s = format!("{}:{}", e.addr, e.port);
                for (flag, name) in [
                    (e.local, "local"),
                    (!e.ready, "unready"),
                    (e.serving && !e.ready, "serving"),
                    (e.terminating, "terminating"),
                ] {
                    if flag {
                        s.push(' ');
                        s.push_str(name);
                    }
                }
                s
            })
            .collect()
    }

    #[test]
    fn matches_ports_by_name_and_protocol_and_resolves_named_target_ports() {
        let (eps, skips) = collect(
            vec![slice(
                "web-1",
                "web",
                json!({
                    "ports": [
                        {"name": "http", "port": 8080, "protocol": "TCP"},
                        {"name": "dns", "port": 5353, "protocol": "UDP"},
                        {"name": "dns", "port": 5353, "protocol": "TCP"},
                    ],
                    "endpoints": [{"addresses": ["10.1.0.2"]}, {"addresses": ["10.1.0.1", "10.1.0.99"]}],
                }),
            )],
            true,
        );
        assert!(skips.is_empty(), "{skips:?}");
        assert_eq!(
            show(&eps[&port("http", Protocol::Tcp)]),
            ["10.1.0.1:8080", "10.1.0.2:8080"]
        );
        assert_eq!(
            show(&eps[&port("dns", Protocol::Udp)]),
            ["10.1.0.1:5353", "10.1.0.2:5353"]
        );
        assert_eq!(
            show(&eps[&port("dns", Protocol::Tcp)]),
            ["10.1.0.1:5353", "10.1.0.2:5353"]
        );
        assert!(!eps.contains_key(&port("http", Protocol::Udp)));
    }

    #[test]
    fn api_defaults_for_unnamed_ports_and_missing_protocol() {
        let (eps, _) = collect(
            vec![slice(
                "web-1",
                "web",
                json!({"ports": [{"port": 80}], "endpoints": [{"addresses": ["10.1.0.1"]}]}),
            )],
            true,
        );
        assert_eq!(show(&eps[&port("", Protocol::Tcp)]), ["10.1.0.1:80"]);
    }

    #[test]
    fn conditions_default_like_kube_proxy() {
        let (eps, _) = collect(
            vec![slice(
                "web-1",
                "web",
                json!({
                    "ports": [{"name": "", "port": 80}],
                    "endpoints": [
                        {"addresses": ["10.1.0.1"]},
                        {"addresses": ["10.1.0.2"], "conditions": {"ready": false}},
                        {"addresses": ["10.1.0.3"], "conditions": {"ready": false, "terminating": true}},
                        {"addresses": ["10.1.0.4"], "conditions": {"ready": false, "serving": false, "terminating": true}},
                        {"addresses": ["10.1.0.5"], "nodeName": "node-a"},
                        {"addresses": ["10.1.0.6"], "nodeName": "node-b"},
                    ],
                }),
            )],
            true,
        );
        assert_eq!(
            show(&eps[&port("", Protocol::Tcp)]),
            [
                "10.1.0.1:80",
                "10.1.0.2:80 unready serving",
                "10.1.0.3:80 unready serving terminating",
                "10.1.0.4:80 unready terminating",
                "10.1.0.5:80 local",
                "10.1.0.6:80",
            ]
        );
    }

    #[test]
    fn merges_slices_and_keeps_the_better_copy_of_a_duplicate() {
        let ports = json!([{"name": "http", "port": 8080}]);
        let (eps, _) = collect(
            vec![
                slice(
                    "web-a",
                    "web",
                    json!({"ports": ports, "endpoints": [
                        {"addresses": ["10.1.0.1"], "conditions": {"ready": false}},
                        {"addresses": ["10.1.0.2"]},
                        {"addresses": ["10.1.0.3"]},
                    ]}),
                ),
                slice(
                    "web-b",
                    "web",
                    json!({"ports": ports, "endpoints": [
                        {"addresses": ["10.1.0.1"]},
                        {"addresses": ["10.1.0.2"], "conditions": {"ready": false, "terminating": true}},
                        {"addresses": ["10.1.0.3"], "conditions": {"ready": false}, "nodeName": "node-a"},
                        {"addresses": ["10.1.0.4"]},
                    ]}),
                ),
                // Another Service's slice, and one in another namespace.
                slice(
                    "other-a",
                    "other",
                    json!({"ports": ports, "endpoints": [{"addresses": ["10.9.0.1"]}]}),
                ),
            ],
            true,
        );
        assert_eq!(
            show(&eps[&port("http", Protocol::Tcp)]),
            [
                "10.1.0.1:8080",
                "10.1.0.2:8080",
                // kube-proxy keeps a local copy over a remote one.
                "10.1.0.3:8080 local unready serving",
                "10.1.0.4:8080",
            ]
        );
    }

    #[test]
    fn same_address_on_different_ports_is_two_endpoints() {
        // Mid-rollout of a targetPort change: two slices disagree on the port.
        let (eps, _) = collect(
            vec![
                slice(
                    "web-a",
                    "web",
                    json!({"ports": [{"name": "http", "port": 8080}], "endpoints": [{"addresses": ["10.1.0.1"]}]}),
                ),
                slice(
                    "web-b",
                    "web",
                    json!({"ports": [{"name": "http", "port": 9090}], "endpoints": [{"addresses": ["10.1.0.1"]}]}),
                ),
            ],
            true,
        );
        assert_eq!(
            show(&eps[&port("http", Protocol::Tcp)]),
            ["10.1.0.1:8080", "10.1.0.1:9090"]
        );
    }

    #[test]
    fn reports_unusable_slices_ports_and_endpoints_but_not_ipv6_or_fqdn_slices() {
        let ports = json!([{"name": "http", "port": 8080}]);
        let ep = json!([{"addresses": ["10.1.0.1"]}]);
        let (eps, skips) = collect(
            vec![
                slice(
                    "web-v6",
                    "web",
                    json!({"addressType": "IPv6", "ports": ports, "endpoints": [{"addresses": ["fd00::1"]}]}),
                ),
                slice(
                    "web-fqdn",
                    "web",
                    json!({"addressType": "FQDN", "ports": ports, "endpoints": [{"addresses": ["a.example"]}]}),
                ),
                slice(
                    "web-odd",
                    "web",
                    json!({"addressType": "IPv5", "ports": ports, "endpoints": ep}),
                ),
                slice(
                    "web-bad",
                    "web",
                    json!({
                        "ports": [
                            {"name": "http", "port": 8080},
                            {"name": "zero", "port": 0},
                            {"name": "none"},
                            {"name": "odd", "port": 80, "protocol": "HTTP"},
                        ],
                        "endpoints": [
                            {"addresses": []},
                            {"addresses": ["fd00::2"]},
                            {"addresses": ["10.1.0.999"]},
                            {"addresses": ["10.1.0.2"]},
                        ],
                    }),
                ),
                KubeObject::endpoint_slice(
                    serde_json::from_value(json!({
                        "metadata": {"name": "orphan", "namespace": "default"},
                        "addressType": "IPv4", "ports": ports, "endpoints": ep,
                    }))
                    .unwrap(),
                ),
            ],
            true,
        );
        assert_eq!(show(&eps[&port("http", Protocol::Tcp)]), ["10.1.0.2:8080"]);
        let got: Vec<String> = skips
            .iter()
            .map(|s| format!("{}: {}", s.object, s.reason))
            .collect();
        assert_eq!(
            got,
            [
                "EndpointSlice default/orphan: no kubernetes.io/service-name label: belongs to no Service",
                "EndpointSlice default/web-bad: port zero: invalid port 0",
                "EndpointSlice default/web-bad: port none: no port number",
                "EndpointSlice default/web-bad: port odd: unknown protocol \"HTTP\"",
                "EndpointSlice default/web-bad: endpoints[0]: no addresses",
                "EndpointSlice default/web-bad: endpoint \"fd00::2\": IPv6 not supported by the datapath yet",
                "EndpointSlice default/web-bad: endpoint \"10.1.0.999\": not an IP address",
                "EndpointSlice default/web-odd: unknown addressType \"IPv5\"",
            ]
        );
    }

    #[test]
    fn slices_of_other_proxies_are_invisible() {
        let (eps, skips) = collect(
            vec![slice(
                "web-1",
                "web",
                json!({
                    "metadata": {"name": "web-1", "namespace": "default", "labels": {
                        SERVICE_NAME_LABEL: "web", SERVICE_PROXY_NAME_LABEL: "other"}},
                    "ports": [{"port": 80}], "endpoints": [{"addresses": ["10.1.0.1"]}],
                }),
            )],
            true,
        );
        assert!(eps.is_empty() && skips.is_empty());
    }

    fn endpoints(labels: serde_json::Value) -> KubeObject {
        KubeObject::Endpoints(std::sync::Arc::new(serde_json::from_value(json!({
                "metadata": {"name": "web", "namespace": "default", "labels": labels},
                "subsets": [
                    {
                        "addresses": [{"ip": "10.2.0.1", "nodeName": "node-a"}, {"ip": "10.2.0.2"}],
                        "notReadyAddresses": [{"ip": "10.2.0.3"}, {"ip": "fd00::3"}],
                        "ports": [{"name": "http", "port": 8080}, {"name": "udp", "port": 53, "protocol": "UDP"}],
                    },
                    {"addresses": [{"ip": "10.2.0.9"}], "ports": [{"name": "http", "port": 8081}]},
                ],
            }))
            .unwrap()),
        )
    }

    #[test]
    fn endpoints_are_mirrored_for_a_selectorless_service_without_slices() {
        let (eps, skips) = collect(vec![endpoints(json!({}))], false);
        assert_eq!(
            show(&eps[&port("http", Protocol::Tcp)]),
            [
                "10.2.0.1:8080 local",
                "10.2.0.2:8080",
                "10.2.0.3:8080 unready serving",
                "10.2.0.9:8081"
            ]
        );
        assert_eq!(
            show(&eps[&port("udp", Protocol::Udp)]),
            [
                "10.2.0.1:53 local",
                "10.2.0.2:53",
                "10.2.0.3:53 unready serving"
            ]
        );
        // The IPv6 address would be in a mirrored IPv6 slice: not ours.
        assert!(skips.is_empty(), "{skips:?}");
    }

    #[test]
    fn endpoints_are_not_mirrored_when_slices_exist_or_a_selector_is_set_or_mirroring_is_off() {
        let a_slice = slice(
            "web-1",
            "web",
            json!({"ports": [{"name": "http", "port": 80}], "endpoints": [{"addresses": ["10.1.0.1"]}]}),
        );
        let (eps, _) = collect(vec![endpoints(json!({})), a_slice], false);
        assert_eq!(show(&eps[&port("http", Protocol::Tcp)]), ["10.1.0.1:80"]);

        let (eps, _) = collect(vec![endpoints(json!({}))], true);
        assert!(eps.is_empty());

        let (eps, _) = collect(vec![endpoints(json!({SKIP_MIRROR_LABEL: "true"}))], false);
        assert!(eps.is_empty());
    }
}
