//! Kubernetes objects in, this node's desired datapath state out.

use std::collections::BTreeSet;

use super::{
    ClusterState, DesiredState, FrontendKind, NodeContext,
    conflicts::resolve,
    endpoints::{PortKey, SliceIndex, service_endpoints},
    frontends::port_frontends,
    service_spec::read_service,
    topology::categorize,
};

/// What this node's datapath should hold for `cluster`, with the endpoint
/// choices kube-proxy would make on the node `node`. Pure and
/// deterministic: the same objects always give the same state.
pub fn desired_state(cluster: &ClusterState, node: &NodeContext) -> DesiredState {
    let mut skipped = Vec::new();
    let slices = SliceIndex::new(cluster, &mut skipped);
    slices.report_orphans(cluster, &mut skipped);
    let zone = node.zone.as_deref().filter(|z| !z.is_empty());

    let mut candidates = Vec::new();
    for (key, service) in &cluster.services {
        let Some(spec) = read_service(key, service, &mut skipped) else {
            continue;
        };
        let endpoints = service_endpoints(
            cluster,
            &slices,
            key,
            spec.has_selector,
            &node.name,
            &mut skipped,
        );
        for port in &spec.ports {
            let port_key = PortKey {
                name: port.name.clone(),
                protocol: port.protocol,
            };
            let port_endpoints = endpoints.get(&port_key).map_or(&[][..], Vec::as_slice);
            let categorized = categorize(
                port_endpoints,
                port.uses_cluster_endpoints(&spec),
                port.uses_local_endpoints(&spec),
                &node.name,
                zone,
            );
            candidates.extend(port_frontends(&spec, port, &categorized, node));
        }
    }

    let frontends = resolve(candidates, &mut skipped);

    // The node's own addresses never become service addresses: an
    // address-only entry refuses every port not listed, and NodePorts (or
    // externalIPs set to a node IP) share the node's address with its SSH,
    // kubelet and everything else.
    let service_addrs: BTreeSet<_> = frontends
        .values()
        .filter(|f| f.kind != FrontendKind::NodePort)
        .map(|f| f.key.addr)
        .filter(|addr| !node.addresses.contains(addr))
        .collect();

    DesiredState {
        frontends,
        service_addrs,
        node_addrs: node.addresses.iter().copied().collect(),
        skipped,
    }
}
