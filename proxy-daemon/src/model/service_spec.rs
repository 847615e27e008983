//! Reading one Service the way kube-proxy's IPv4 proxier does
//! (pkg/proxy/servicechangetracker.go, serviceport.go): which Services it
//! proxies at all, which of their addresses are IPv4, and the per-port
//! settings every frontend of a port shares.
//!
//! Anything unusable is reported as a [`Skip`] and left out; the rest of the
//! Service is still programmed.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use ipnetwork::{IpNetwork, Ipv4Network};
use k8s_openapi::{
    api::core::v1::{Service, ServiceSpec as ServiceSpecApi, ServiceStatus},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};

use super::{
    LB_ALGORITHM_ANNOTATION, LbAlgorithm, ObjectKey, Protocol, Skip, SkipKind, node::is_ipv6,
};

/// Services with this label belong to another service proxy; kube-proxy's
/// informers filter them out (and so their EndpointSlices too).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Set on headless Services' endpoints objects; kube-proxy's informers
/// filter it out like the label above.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// sessionAffinityConfig.clientIP.timeoutSeconds when unset (API default).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

pub(crate) const IPV6_REASON: &str = "IPv6 not supported by the datapath yet";

/// One Service as the datapath will see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServiceSpec {
    pub key: ObjectKey,
    /// For choosing the owner of a frontend two Services claim.
    pub created: Option<Time>,
    pub cluster_ip: Ipv4Addr,
    pub external_ips: Vec<Ipv4Addr>,
    /// status.loadBalancer.ingress IPs in VIP mode.
    pub load_balancer_ips: Vec<Ipv4Addr>,
    pub source_ranges: Vec<Ipv4Network>,
    /// externalTrafficPolicy Local on a Service reachable from outside.
    pub external_local: bool,
    pub internal_local: bool,
    pub affinity_timeout: Option<u32>,
    pub health_check_node_port: Option<u16>,
    pub lb_algorithm: Option<LbAlgorithm>,
    pub has_selector: bool,
    pub ports: Vec<PortSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PortSpec {
    /// Position in spec.ports: the tie-breaker between ports of one Service.
    pub index: usize,
    /// spec.ports[].name: endpoints are matched to the port by this name
    /// and the protocol, never by targetPort.
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub node_port: Option<u16>,
}

impl PortSpec {
    /// kube-proxy's ExternallyAccessible() for one port.
    pub fn externally_accessible(&self, service: &ServiceSpec) -> bool {
        self.node_port.is_some()
            || !service.load_balancer_ips.is_empty()
            || !service.external_ips.is_empty()
    }

    /// kube-proxy's UsesClusterEndpoints(): even with externalTrafficPolicy
    /// Local, in-cluster traffic to external addresses uses every endpoint.
    pub fn uses_cluster_endpoints(&self, service: &ServiceSpec) -> bool {
        !service.internal_local || self.externally_accessible(service)
    }

    /// kube-proxy's UsesLocalEndpoints().
    pub fn uses_local_endpoints(&self, service: &ServiceSpec) -> bool {
        service.internal_local || (service.external_local && self.externally_accessible(service))
    }
}

pub(crate) fn service_skip(key: &ObjectKey, reason: impl Into<String>) -> Skip {
    Skip {
        object: format!("Service {key}"),
        reason: reason.into(),
        kind: SkipKind::Invalid,
    }
}

/// A Service as the model keeps it: read once, on receipt (kube-proxy's
/// ServiceChangeTracker converts Services the same way), so a stored
/// Service costs its spec, not the API object, and an update that changes
/// nothing the model reads compares equal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    pub(crate) spec: Option<ServiceSpec>,
    /// What of it is skipped, and why.
    pub(crate) skips: Vec<Skip>,
}

impl ServiceInfo {
    pub fn new(key: &ObjectKey, service: &Service) -> Self {
        let mut skips = Vec::new();
        let spec = read_service(key, service, &mut skips);
        Self { spec, skips }
    }

    /// The ClusterIP, when the Service is proxied at all.
    pub fn cluster_ip(&self) -> Option<Ipv4Addr> {
        self.spec.as_ref().map(|s| s.cluster_ip)
    }
}

/// How kube-proxy reads `service`, or `None` when nothing of it is
/// proxied: either by design (silently) or for a reason pushed to `skips`.
pub(crate) fn read_service(
    key: &ObjectKey,
    service: &Service,
    skips: &mut Vec<Skip>,
) -> Option<ServiceSpec> {
    let mut skip = |reason: String| skips.push(service_skip(key, reason));
    if ignored_by_design(service) {
        return None;
    }
    let default_spec = Default::default();
    let spec = service.spec.as_ref().unwrap_or(&default_spec);
    let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
    let cluster_ip = ipv4_cluster_ip(spec, &mut skip)?;
    let ports = read_ports(service, type_, &mut skip);
    if ports.is_empty() {
        if spec.ports.as_ref().is_none_or(Vec::is_empty) {
            skip("no ports: nothing to proxy".into());
        }
        return None;
    }
    // kube-proxy (pkg/api/v1/service): externalTrafficPolicy only matters
    // for a Service reachable from outside: NodePort, LoadBalancer, or a
    // ClusterIP Service with externalIPs.
    let externally_accessible = matches!(type_, "NodePort" | "LoadBalancer")
        || (type_ == "ClusterIP"
            && spec
                .external_ips
                .as_ref()
                .is_some_and(|ips| !ips.is_empty()));
    let external_local =
        externally_accessible && spec.external_traffic_policy.as_deref() == Some("Local");
    Some(ServiceSpec {
        key: key.clone(),
        created: service.metadata.creation_timestamp.clone(),
        cluster_ip,
        external_ips: external_ips(spec, &mut skip),
        load_balancer_ips: load_balancer_ips(service, &mut skip),
        source_ranges: source_ranges(spec, &mut skip),
        external_local,
        internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
        affinity_timeout: affinity_timeout(spec, &mut skip),
        health_check_node_port: health_check_node_port(spec, type_, external_local, &mut skip),
        lb_algorithm: lb_algorithm(service, &mut skip),
        has_selector: spec.selector.as_ref().is_some_and(|s| !s.is_empty()),
        ports,
    })
}

/// Drops every part of `service` that [`read_service`] does not read, so
/// that a stored Service costs what the model needs (the API's objects
/// carry uids, owner references, status conditions, families, ...) and an
/// update touching only those parts compares equal. Whoever changes what
/// `read_service` reads changes this too; a test holds the two together.
pub fn trim_service(service: &mut Service) {
    let meta = std::mem::take(&mut service.metadata);
    let keep = |m: Option<BTreeMap<String, String>>, keys: &[&str]| {
        m.map(|m| {
            m.into_iter()
                .filter(|(k, _)| keys.contains(&k.as_str()))
                .collect::<BTreeMap<_, _>>()
        })
        .filter(|m| !m.is_empty())
    };
    service.metadata = ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        creation_timestamp: meta.creation_timestamp,
        labels: keep(meta.labels, &[SERVICE_PROXY_NAME_LABEL, HEADLESS_LABEL]),
        annotations: keep(meta.annotations, &[LB_ALGORITHM_ANNOTATION]),
        ..Default::default()
    };
    if let Some(spec) = service.spec.take() {
        service.spec = Some(ServiceSpecApi {
            type_: spec.type_,
            cluster_ip: spec.cluster_ip,
            cluster_ips: spec.cluster_ips,
            external_ips: spec.external_ips,
            ports: spec.ports,
            // Only whether there is one matters.
            selector: spec
                .selector
                .filter(|s| !s.is_empty())
                .map(|_| BTreeMap::from([(String::new(), String::new())])),
            session_affinity: spec.session_affinity,
            session_affinity_config: spec.session_affinity_config,
            external_traffic_policy: spec.external_traffic_policy,
            internal_traffic_policy: spec.internal_traffic_policy,
            health_check_node_port: spec.health_check_node_port,
            load_balancer_source_ranges: spec.load_balancer_source_ranges,
            ..Default::default()
        });
    }
    if let Some(status) = service.status.take() {
        service.status = status.load_balancer.map(|lb| ServiceStatus {
            load_balancer: Some(lb),
            ..Default::default()
        });
    }
}

/// Services kube-proxy never proxies by design (another proxy's, headless,
/// ExternalName): left out without a word, since they are normal in every
/// cluster and a skip is logged as a warning.
fn ignored_by_design(service: &Service) -> bool {
    let labels = service.metadata.labels.as_ref();
    labels
        .is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL) || l.contains_key(HEADLESS_LABEL))
        || service.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("ExternalName")
}

/// The clusterIP the IPv4 proxier serves: the first IPv4 one. A Service
/// without one (IPv6 single-stack) is not served on IPv4 at all, NodePorts
/// included; `clusterIP: None` (headless) is not served either.
fn ipv4_cluster_ip(spec: &ServiceSpecApi, skip: &mut impl FnMut(String)) -> Option<Ipv4Addr> {
    // The API server keeps clusterIP == clusterIPs[0]; objects written by
    // hand may set only one of them.
    let listed: Vec<&str> = match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => spec.cluster_ip.as_deref().into_iter().collect(),
    };
    match listed.first().map(|ip| ip.trim()) {
        Some("None") => return None,
        // The API server always allocates one (or None): only a manifest
        // can lack it.
        None | Some("") => {
            skip("no clusterIP allocated: nothing to proxy".into());
            return None;
        }
        Some(_) => {}
    }
    let mut cluster_ip = None;
    let mut ipv6 = Vec::new();
    for ip in &listed {
        match ip.trim().parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) if cluster_ip.is_none() => cluster_ip = Some(v4),
            Ok(IpAddr::V4(v4)) => skip(format!("second IPv4 clusterIP {v4} ignored")),
            Ok(IpAddr::V6(v6)) => ipv6.push(v6),
            Err(_) => skip(format!("invalid clusterIP {ip:?}")),
        }
    }
    for v6 in ipv6 {
        let what = if cluster_ip.is_some() {
            "clusterIP"
        } else {
            "IPv6-only Service, clusterIP"
        };
        skip(format!("{what} {v6}: {IPV6_REASON}"));
    }
    cluster_ip
}

fn external_ips(spec: &ServiceSpecApi, skip: &mut impl FnMut(String)) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    for ip in spec.external_ips.iter().flatten() {
        match parse_ipv4(ip) {
            Ok(v4) if !out.contains(&v4) => out.push(v4),
            Ok(_) => {}
            Err(why) => skip(format!("externalIP {ip:?}: {why}")),
        }
    }
    out
}

/// status.loadBalancer.ingress IPs the node captures (ipMode VIP or unset).
fn load_balancer_ips(service: &Service, skip: &mut impl FnMut(String)) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let ingress = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default();
    for ing in ingress {
        // Hostname-only ingress points at a load balancer by name; there is
        // no address to capture.
        let Some(ip) = ing.ip.as_deref().filter(|ip| !ip.is_empty()) else {
            continue;
        };
        match ing.ip_mode.as_deref() {
            None | Some("VIP") => {}
            // ipMode Proxy: the load balancer delivers to the nodes itself
            // (with its own source address); capturing the IP in the node
            // would bypass it. Normal, so not reported.
            Some(_) => continue,
        }
        match parse_ipv4(ip) {
            Ok(v4) if !out.contains(&v4) => out.push(v4),
            Ok(_) => {}
            Err(why) => skip(format!("load balancer ingress {ip:?}: {why}")),
        }
    }
    out
}

fn source_ranges(spec: &ServiceSpecApi, skip: &mut impl FnMut(String)) -> Vec<Ipv4Network> {
    let mut out = Vec::new();
    for range in spec.load_balancer_source_ranges.iter().flatten() {
        // API validation has long let whitespace padding through; kube-proxy
        // trims it, so do we.
        let trimmed = range.trim();
        match super::parse_cidr(trimmed) {
            Ok(IpNetwork::V4(net)) => {
                if !out.contains(&net) {
                    out.push(net);
                }
            }
            Ok(IpNetwork::V6(_)) => {
                skip(format!("loadBalancerSourceRange {trimmed}: {IPV6_REASON}"))
            }
            Err(_) => skip(format!("invalid loadBalancerSourceRange {range:?} ignored")),
        }
    }
    out
}

fn affinity_timeout(spec: &ServiceSpecApi, skip: &mut impl FnMut(String)) -> Option<u32> {
    if spec.session_affinity.as_deref() != Some("ClientIP") {
        return None;
    }
    let timeout = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds);
    match timeout {
        None => Some(DEFAULT_AFFINITY_TIMEOUT),
        Some(t) if t > 0 => Some(t.unsigned_abs()),
        Some(t) => {
            skip(format!(
                "sessionAffinityConfig.clientIP.timeoutSeconds {t} is not positive; using {DEFAULT_AFFINITY_TIMEOUT}"
            ));
            Some(DEFAULT_AFFINITY_TIMEOUT)
        }
    }
}

/// Only LoadBalancer Services with Local policy get a health check (the
/// cloud load balancer asks each node whether it has local endpoints).
fn health_check_node_port(
    spec: &ServiceSpecApi,
    type_: &str,
    external_local: bool,
    skip: &mut impl FnMut(String),
) -> Option<u16> {
    if type_ != "LoadBalancer" || !external_local {
        return None;
    }
    match spec.health_check_node_port {
        Some(p) if (1..=65535).contains(&p) => u16::try_from(p).ok(),
        None | Some(0) => {
            skip("externalTrafficPolicy Local without a healthCheckNodePort".to_string());
            None
        }
        Some(p) => {
            skip(format!("invalid healthCheckNodePort {p}"));
            None
        }
    }
}

fn lb_algorithm(service: &Service, skip: &mut impl FnMut(String)) -> Option<LbAlgorithm> {
    match service
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LB_ALGORITHM_ANNOTATION))
        .map(|v| v.trim())
    {
        None => None,
        Some("random") => Some(LbAlgorithm::Random),
        Some("maglev") => Some(LbAlgorithm::Maglev),
        Some(other) => {
            skip(format!(
                "annotation {LB_ALGORITHM_ANNOTATION}: {other:?} is neither random nor maglev; using the node's default"
            ));
            None
        }
    }
}

fn read_ports(service: &Service, type_: &str, skip: &mut impl FnMut(String)) -> Vec<PortSpec> {
    let mut out = Vec::new();
    let ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default();
    for (index, port) in ports.iter().enumerate() {
        let name = port.name.clone().unwrap_or_default();
        let label = if name.is_empty() {
            format!("port {}", port.port)
        } else {
            format!("port {name}")
        };
        let protocol = match parse_protocol(port.protocol.as_deref()) {
            Ok(Protocol::Sctp) => {
                skip(format!("{label}: SCTP not supported by the datapath yet"));
                continue;
            }
            Ok(p) => p,
            Err(why) => {
                skip(format!("{label}: {why}"));
                continue;
            }
        };
        let Some(number) = port_number(port.port) else {
            skip(format!("{label}: invalid port {}", port.port));
            continue;
        };
        let node_port = match port.node_port {
            None | Some(0) => None,
            // The API server refuses a nodePort on a ClusterIP Service;
            // only a hand-written manifest can have one.
            Some(np) if !matches!(type_, "NodePort" | "LoadBalancer") => {
                skip(format!(
                    "{label}: nodePort {np} on a {type_} Service ignored"
                ));
                None
            }
            Some(np) => match port_number(np) {
                Some(np) => Some(np),
                None => {
                    skip(format!("{label}: invalid nodePort {np}"));
                    None
                }
            },
        };
        out.push(PortSpec {
            index,
            name,
            protocol,
            port: number,
            node_port,
        });
    }
    out
}

/// A port number in 1..=65535.
pub(crate) fn port_number(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|&p| p != 0)
}

/// A protocol as the API spells it; unset means TCP (the API default).
pub(crate) fn parse_protocol(protocol: Option<&str>) -> Result<Protocol, String> {
    match protocol {
        None | Some("TCP") => Ok(Protocol::Tcp),
        Some("UDP") => Ok(Protocol::Udp),
        Some("SCTP") => Ok(Protocol::Sctp),
        Some(other) => Err(format!("unknown protocol {other:?}")),
    }
}

/// An IPv4 address, or why not.
pub(crate) fn parse_ipv4(addr: &str) -> Result<Ipv4Addr, String> {
    match addr.trim().parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => Ok(v4),
        Ok(IpAddr::V6(_)) => Err(IPV6_REASON.to_string()),
        Err(_) if is_ipv6(addr) => Err(IPV6_REASON.to_string()),
        Err(_) => Err("not an IP address".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn plan(spec: serde_json::Value) -> (Option<ServiceSpec>, Vec<Skip>) {
        plan_with(
            json!({"name": "web", "namespace": "default"}),
            spec,
            json!({}),
        )
    }

    fn plan_with(
        meta: serde_json::Value,
        spec: serde_json::Value,
        status: serde_json::Value,
    ) -> (Option<ServiceSpec>, Vec<Skip>) {
        let svc: Service =
            serde_json::from_value(json!({"metadata": meta, "spec": spec, "status": status}))
                .unwrap();
        let mut skips = Vec::new();
        let plan = read_service(&ObjectKey::new("default", "web"), &svc, &mut skips);
        (plan, skips)
    }

    #[test]
    fn a_trimmed_service_reads_the_same_and_keeps_only_that() {
        let full: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u-1", "resourceVersion": "7",
                "generation": 3, "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": {"app": "web", SERVICE_PROXY_NAME_LABEL: "other"},
                "annotations": {LB_ALGORITHM_ANNOTATION: "random", "note": "x"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "o", "uid": "u-2"}]},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                "externalIPs": ["192.0.2.1"], "selector": {"app": "web"},
                "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Cluster",
                "healthCheckNodePort": 30100, "loadBalancerSourceRanges": ["198.51.100.0/24"],
                "allocateLoadBalancerNodePorts": true,
                "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.5", "ipMode": "VIP"}]},
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z",
                    "reason": "r", "message": "m"}]}
        }))
        .unwrap();
        let key = ObjectKey::new("shop", "web");
        let mut trimmed = full.clone();
        trim_service(&mut trimmed);
        // Labelled for another proxy: ignored either way; without the
        // label, read in full.
        let mut unlabelled = full.clone();
        unlabelled
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .remove(SERVICE_PROXY_NAME_LABEL);
        let mut unlabelled_trimmed = unlabelled.clone();
        trim_service(&mut unlabelled_trimmed);
        for (a, b) in [(&full, &trimmed), (&unlabelled, &unlabelled_trimmed)] {
            let (mut sa, mut sb) = (Vec::new(), Vec::new());
            assert_eq!(
                read_service(&key, a, &mut sa),
                read_service(&key, b, &mut sb)
            );
            assert_eq!(sa, sb);
        }
        let mut s = Vec::new();
        assert!(read_service(&key, &unlabelled_trimmed, &mut s).is_some());
        assert_eq!(trimmed.metadata.uid, None);
        assert_eq!(trimmed.metadata.owner_references, None);
        assert_eq!(trimmed.metadata.annotations.as_ref().unwrap().len(), 1);
        assert_eq!(trimmed.spec.as_ref().unwrap().ip_families, None);
        assert_eq!(trimmed.status.as_ref().unwrap().conditions, None);
    }

    fn reasons(skips: &[Skip]) -> Vec<&str> {
        skips.iter().map(|s| s.reason.as_str()).collect()
    }

    #[test]
    fn services_kube_proxy_does_not_proxy() {
        let port = json!([{"port": 80}]);
        // (metadata, spec, reason reported; None = left out silently)
        let cases = [
            (json!({}), json!({"clusterIP": "None", "ports": port}), None),
            (
                json!({}),
                json!({"clusterIPs": ["None"], "ports": port}),
                None,
            ),
            (
                json!({}),
                json!({"type": "ExternalName", "externalName": "example.com"}),
                None,
            ),
            (
                json!({}),
                json!({"type": "ExternalName", "clusterIP": "10.96.0.1", "ports": port}),
                None,
            ),
            (
                json!({"labels": {SERVICE_PROXY_NAME_LABEL: "other-proxy"}}),
                json!({"clusterIP": "10.96.0.1", "ports": port}),
                None,
            ),
            (
                json!({"labels": {HEADLESS_LABEL: ""}}),
                json!({"clusterIP": "10.96.0.1", "ports": port}),
                None,
            ),
            (json!({}), json!({"ports": port}), Some("no clusterIP")),
            (
                json!({}),
                json!({"clusterIP": "fd00::1", "ports": port}),
                Some(IPV6_REASON),
            ),
            (
                json!({}),
                json!({"clusterIP": "10.96.0.300", "ports": port}),
                Some("invalid clusterIP"),
            ),
            (
                json!({}),
                json!({"clusterIP": "10.96.0.1"}),
                Some("no ports"),
            ),
        ];
        for (meta, spec, want) in cases {
            let mut meta = meta;
            meta["name"] = json!("web");
            let (plan, skips) = plan_with(meta, spec.clone(), json!({}));
            assert!(plan.is_none(), "{spec}");
            match want {
                None => assert!(skips.is_empty(), "{spec}: {skips:?}"),
                Some(want) => assert!(
                    skips.len() == 1
                        && skips[0].reason.contains(want)
                        && skips[0].object == "Service default/web",
                    "{spec}: {skips:?}"
                ),
            }
        }
    }

    #[test]
    fn cluster_ip_is_the_first_ipv4_of_cluster_ips() {
        let cases = [
            (json!({"clusterIP": "10.96.0.1"}), "10.96.0.1", 0),
            (
                json!({"clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1", "fd00::1"]}),
                "10.96.0.1",
                1,
            ),
            (
                json!({"clusterIP": "fd00::1", "clusterIPs": ["fd00::1", "10.96.0.2"]}),
                "10.96.0.2",
                1,
            ),
            (json!({"clusterIPs": ["10.96.0.3"]}), "10.96.0.3", 0),
        ];
        for (mut spec, want, ipv6_skips) in cases {
            spec["ports"] = json!([{"port": 80}]);
            let (plan, skips) = plan(spec.clone());
            assert_eq!(
                plan.unwrap().cluster_ip,
                want.parse::<Ipv4Addr>().unwrap(),
                "{spec}"
            );
            assert_eq!(
                skips
                    .iter()
                    .filter(|s| s.reason.contains(IPV6_REASON))
                    .count(),
                ipv6_skips
            );
        }
    }

    #[test]
    fn ports_are_checked_one_by_one() {
        let (plan, skips) = plan(json!({
            "clusterIP": "10.96.0.1",
            "type": "NodePort",
            "ports": [
                {"name": "http", "port": 80, "nodePort": 30080},
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "sig", "port": 2905, "protocol": "SCTP"},
                {"name": "bad", "port": 0},
                {"name": "huge", "port": 70000},
                {"name": "weird", "port": 81, "protocol": "ICMP"},
                {"port": 82, "nodePort": 99999},
            ],
        }));
        let ports = plan.unwrap().ports;
        assert_eq!(
            ports,
            vec![
                PortSpec {
                    index: 0,
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    port: 80,
                    node_port: Some(30080)
                },
                PortSpec {
                    index: 1,
                    name: "dns".into(),
                    protocol: Protocol::Udp,
                    port: 53,
                    node_port: None
                },
                PortSpec {
                    index: 6,
                    name: String::new(),
                    protocol: Protocol::Tcp,
                    port: 82,
                    node_port: None
                },
            ]
        );
        assert_eq!(
            reasons(&skips),
            vec![
                "port sig: SCTP not supported by the datapath yet",
                "port bad: invalid port 0",
                "port huge: invalid port 70000",
                "port weird: unknown protocol \"ICMP\"",
                "port 82: invalid nodePort 99999",
            ]
        );
    }

    #[test]
    fn all_ports_unusable_means_nothing_to_program() {
        let (plan, skips) =
            plan(json!({"clusterIP": "10.96.0.1", "ports": [{"port": 5000, "protocol": "SCTP"}]}));
        assert!(plan.is_none());
        assert_eq!(
            reasons(&skips),
            vec!["port 5000: SCTP not supported by the datapath yet"]
        );
    }

    #[test]
    fn node_port_on_a_cluster_ip_service_is_ignored() {
        let (plan, skips) =
            plan(json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80, "nodePort": 30080}]}));
        assert_eq!(plan.unwrap().ports[0].node_port, None);
        assert_eq!(
            reasons(&skips),
            vec!["port 80: nodePort 30080 on a ClusterIP Service ignored"]
        );
    }

    #[test]
    fn external_addresses_keep_ipv4_in_vip_mode_only() {
        let (plan, skips) = plan_with(
            json!({"name": "web"}),
            json!({
                "type": "LoadBalancer", "clusterIP": "10.96.0.1", "ports": [{"port": 80, "nodePort": 30080}],
                "externalIPs": ["192.0.2.1", "fd00::5", "192.0.2.1", "nonsense"],
                "loadBalancerSourceRanges": [" 198.51.100.0/24 ", "10.1.2.3/8", "fd00::/8", "300.0.0.0/8"],
            }),
            json!({"loadBalancer": {"ingress": [
                {"ip": "203.0.113.1"},
                {"ip": "203.0.113.2", "ipMode": "VIP"},
                {"ip": "203.0.113.3", "ipMode": "Proxy"},
                {"hostname": "lb.example.com"},
                {"ip": "fd00::9"},
            ]}}),
        );
        let plan = plan.unwrap();
        let v4 = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(plan.external_ips, vec![v4("192.0.2.1")]);
        assert_eq!(
            plan.load_balancer_ips,
            vec![v4("203.0.113.1"), v4("203.0.113.2")]
        );
        assert_eq!(
            plan.source_ranges,
            vec![
                "198.51.100.0/24".parse::<Ipv4Network>().unwrap(),
                "10.0.0.0/8".parse().unwrap()
            ]
        );
        assert_eq!(
            reasons(&skips),
            vec![
                "externalIP \"fd00::5\": IPv6 not supported by the datapath yet",
                "externalIP \"nonsense\": not an IP address",
                "load balancer ingress \"fd00::9\": IPv6 not supported by the datapath yet",
                "loadBalancerSourceRange fd00::/8: IPv6 not supported by the datapath yet",
                "invalid loadBalancerSourceRange \"300.0.0.0/8\" ignored",
            ]
        );
    }

    #[test]
    fn traffic_policies_follow_kube_proxy() {
        // (type, externalIPs, externalTrafficPolicy, internalTrafficPolicy) -> (external_local, internal_local)
        let cases = [
            ("ClusterIP", false, "Local", "Cluster", false, false),
            ("ClusterIP", true, "Local", "Cluster", true, false),
            ("NodePort", false, "Local", "Cluster", true, false),
            ("LoadBalancer", false, "Local", "Local", true, true),
            ("LoadBalancer", false, "Cluster", "Local", false, true),
            ("NodePort", false, "Bogus", "Bogus", false, false),
        ];
        for (type_, ext_ips, etp, itp, want_ext, want_int) in cases {
            let mut spec = json!({
                "type": type_, "clusterIP": "10.96.0.1", "ports": [{"port": 80}],
                "externalTrafficPolicy": etp, "internalTrafficPolicy": itp, "healthCheckNodePort": 31000,
            });
            if ext_ips {
                spec["externalIPs"] = json!(["192.0.2.1"]);
            }
            let (plan, _) = plan(spec);
            let plan = plan.unwrap();
            assert_eq!(
                (plan.external_local, plan.internal_local),
                (want_ext, want_int),
                "{type_} {etp} {itp}"
            );
            let want_hc = (type_ == "LoadBalancer" && want_ext).then_some(31000);
            assert_eq!(plan.health_check_node_port, want_hc, "{type_} {etp}");
        }
    }

    #[test]
    fn session_affinity_timeout() {
        let cases = [
            (json!({}), None, 0),
            (json!({"sessionAffinity": "None"}), None, 0),
            (json!({"sessionAffinity": "ClientIP"}), Some(10_800), 0),
            (
                json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}),
                Some(60),
                0,
            ),
            (
                json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}}),
                Some(10_800),
                1,
            ),
        ];
        for (mut spec, want, n_skips) in cases {
            spec["clusterIP"] = json!("10.96.0.1");
            spec["ports"] = json!([{"port": 80}]);
            let (plan, skips) = plan(spec.clone());
            assert_eq!(plan.unwrap().affinity_timeout, want, "{spec}");
            assert_eq!(skips.len(), n_skips, "{spec}");
        }
    }

    #[test]
    fn lb_algorithm_annotation() {
        let cases = [
            (None, None, 0),
            (Some("maglev"), Some(LbAlgorithm::Maglev), 0),
            (Some(" random "), Some(LbAlgorithm::Random), 0),
            (Some("round-robin"), None, 1),
        ];
        for (value, want, n_skips) in cases {
            let mut meta = json!({"name": "web", "namespace": "default"});
            if let Some(v) = value {
                meta["annotations"] = json!({ LB_ALGORITHM_ANNOTATION: v });
            }
            let spec = json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80}]});
            let (plan, skips) = plan_with(meta, spec, json!({}));
            assert_eq!(plan.unwrap().lb_algorithm, want, "{value:?}");
            assert_eq!(skips.len(), n_skips, "{value:?}: {skips:?}");
        }
    }
}
