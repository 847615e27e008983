//! The frontends of one Service port: its ClusterIP, and for traffic from
//! outside its NodePort on every node address, its load balancer IPs and
//! its externalIPs, each with the endpoints its traffic policy allows
//! (as kube-proxy's nftables/iptables proxiers route them).

use std::sync::Arc;

use ipnetwork::Ipv4Network;

use super::{
    BackendAddr, Frontend, FrontendKey, FrontendKind, NodeContext, Scope, ServiceRef,
    conflicts::{Candidate, Owner},
    intern::intern,
    service_spec::{PortSpec, ServiceSpec},
    topology::{Categorized, Usable},
};

/// All frontends `port` of `service` asks for on this node.
pub(crate) fn port_frontends(
    service: &ServiceSpec,
    port: &PortSpec,
    endpoints: &Categorized<'_>,
    node: &NodeContext,
) -> Vec<Candidate> {
    let owner = Owner::new(service, port);
    let service_ref = ServiceRef {
        namespace: service.key.namespace.clone(),
        name: service.key.name.clone(),
        port_name: intern(&port.name),
    };
    let cluster = backends(endpoints.cluster.as_ref());
    let local = backends(endpoints.local.as_ref());
    let base = |addr, port_number, scope, kind| Frontend {
        key: FrontendKey {
            addr,
            port: port_number,
            protocol: port.protocol,
            scope,
        },
        kind,
        service: service_ref.clone(),
        backends: Vec::new(),
        local_only: false,
        drop_when_empty: false,
        affinity_timeout: service.affinity_timeout,
        snat_remote: false,
        source_ranges: Vec::new(),
        health_check_node_port: None,
        lb_algorithm: service.lb_algorithm,
    };

    let mut out = Vec::new();

    // Traffic to the ClusterIP comes from inside the cluster: it keeps its
    // source and follows internalTrafficPolicy.
    let mut cluster_ip = base(
        service.cluster_ip,
        port.port,
        Scope::External,
        FrontendKind::ClusterIp,
    );
    // kube-proxy drops what a Local policy cannot serve on this node, but
    // rejects when the Service has no usable endpoint anywhere (whether or
    // not any of its frontends uses the cluster-wide list).
    let drop_when_no_local = local.is_empty() && endpoints.has_any;
    if service.internal_local {
        cluster_ip.backends = local.clone();
        cluster_ip.local_only = true;
        cluster_ip.drop_when_empty = drop_when_no_local;
    } else {
        cluster_ip.backends = cluster.clone();
    }
    out.push(cluster_ip);

    let mut external = |addr, port_number, kind| {
        // Only load balancer IPs are firewalled: kube-proxy never applied
        // loadBalancerSourceRanges to NodePorts or externalIPs.
        let source_ranges = if kind == FrontendKind::LoadBalancer {
            source_ranges(service, node)
        } else {
            Vec::new()
        };
        let mut outside = base(addr, port_number, Scope::External, kind);
        outside.source_ranges = source_ranges.clone();
        if service.external_local {
            // Outside clients keep their source address, so only this
            // node's endpoints may answer them...
            outside.backends = local.clone();
            outside.local_only = true;
            outside.drop_when_empty = drop_when_no_local;
            outside.health_check_node_port = service.health_check_node_port;
            // ...but pods and the node itself reaching the same address are
            // short-circuited to every endpoint, as if they had gone out to
            // the load balancer and come back in.
            let mut inside = base(addr, port_number, Scope::Internal, kind);
            inside.backends = cluster.clone();
            inside.source_ranges = source_ranges;
            out.push(outside);
            out.push(inside);
        } else {
            // Cluster policy may pick an endpoint on another node; its reply
            // must come back through this node, so the source is rewritten.
            outside.backends = cluster.clone();
            outside.snat_remote = true;
            out.push(outside);
        }
    };

    if let Some(node_port) = port.node_port {
        for &addr in &node.addresses {
            external(addr, node_port, FrontendKind::NodePort);
        }
    }
    for &addr in &service.load_balancer_ips {
        external(addr, port.port, FrontendKind::LoadBalancer);
    }
    for &addr in &service.external_ips {
        external(addr, port.port, FrontendKind::ExternalIp);
    }

    out.into_iter()
        .map(|frontend| Candidate {
            owner: owner.clone(),
            frontend: Arc::new(frontend),
        })
        .collect()
}

fn backends(usable: Option<&Usable<'_>>) -> Vec<BackendAddr> {
    let Some(usable) = usable else {
        return Vec::new();
    };
    let mut backends: Vec<BackendAddr> = usable
        .endpoints
        .iter()
        .map(|ep| BackendAddr {
            addr: ep.addr,
            port: ep.port,
            local: ep.local,
            terminating: usable.terminating_fallback,
        })
        .collect();
    backends.sort_by_key(|b| (b.addr, b.port));
    backends.dedup_by_key(|b| (b.addr, b.port));
    backends
}

/// loadBalancerSourceRanges as kube-proxy enforces them. A VIP-style load
/// balancer often puts the VIP on the node itself, so a request from the
/// node loops back with the VIP as source; when the ranges admit the node,
/// kube-proxy admits the VIPs too.
fn source_ranges(service: &ServiceSpec, node: &NodeContext) -> Vec<Ipv4Network> {
    let mut ranges = service.source_ranges.clone();
    if ranges.is_empty() {
        return ranges;
    }
    let admits_node = node
        .addresses
        .first()
        .is_some_and(|ip| ranges.iter().any(|r| r.contains(*ip)));
    if admits_node {
        for &vip in &service.load_balancer_ips {
            let host = Ipv4Network::from(vip);
            if !ranges.contains(&host) {
                ranges.push(host);
            }
        }
    }
    ranges
}
