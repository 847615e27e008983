//! Kubernetes objects in, this node's desired datapath state out.

use std::{collections::BTreeSet, net::Ipv4Addr};

use k8s_openapi::api::core::v1::Endpoints;

use super::{
    ClusterState, DesiredState, Frontend, FrontendKind, NodeContext, ObjectKey, Skip, Slice,
    conflicts::{Candidate, resolve},
    endpoints::{PortKey, SliceIndex, service_endpoints},
    frontends::port_frontends,
    service_spec::ServiceInfo,
    topology::categorize,
};

/// What this node's datapath should hold for `cluster`, with the endpoint
/// choices kube-proxy would make on the node `node`. Pure and
/// deterministic: the same objects always give the same state. (The
/// daemon keeps it up to date change by change with
/// [`super::IncrementalModel`], which must always agree with this.)
pub fn desired_state(cluster: &ClusterState, node: &NodeContext) -> DesiredState {
    let mut skipped = Vec::new();
    let slices = SliceIndex::new(cluster, &mut skipped);
    slices.report_orphans(cluster, &mut skipped);

    let mut candidates = Vec::new();
    for (key, service) in &cluster.services {
        candidates.extend(service_candidates(
            key,
            service,
            slices.slices(key),
            cluster.endpoints.get(key).map(|e| &**e),
            node,
            &mut skipped,
        ));
    }
    let frontends = resolve(candidates, &mut skipped);
    let service_addrs = frontends
        .values()
        .filter_map(|f| service_addr(f, node))
        .collect();
    DesiredState {
        frontends,
        service_addrs,
        node_addrs: node.addresses.iter().copied().collect::<BTreeSet<_>>(),
        skipped,
    }
}

/// The frontends one Service asks for on this node, before conflicts with
/// other Services are resolved.
pub(crate) fn service_candidates(
    key: &ObjectKey,
    service: &ServiceInfo,
    slices: &[(&ObjectKey, &Slice)],
    endpoints: Option<&Endpoints>,
    node: &NodeContext,
    skipped: &mut Vec<Skip>,
) -> Vec<Candidate> {
    skipped.extend(service.skips.iter().cloned());
    let Some(spec) = &service.spec else {
        return Vec::new();
    };
    let zone = node.zone.as_deref().filter(|z| !z.is_empty());
    let endpoints = service_endpoints(
        slices,
        endpoints,
        key,
        spec.has_selector,
        &node.name,
        skipped,
    );
    let mut candidates = Vec::new();
    for port in &spec.ports {
        let port_key = PortKey {
            name: port.name.clone(),
            protocol: port.protocol,
        };
        let port_endpoints = endpoints.get(&port_key).map_or(&[][..], Vec::as_slice);
        let categorized = categorize(
            port_endpoints,
            port.uses_cluster_endpoints(spec),
            port.uses_local_endpoints(spec),
            &node.name,
            zone,
        );
        candidates.extend(port_frontends(spec, port, &categorized, node));
    }
    candidates
}

/// The address-only entry a frontend needs, if any. The node's own
/// addresses never become service addresses: an address-only entry
/// refuses every port not listed, and NodePorts (or externalIPs set to a
/// node IP) share the node's address with its SSH, kubelet and everything
/// else.
pub(crate) fn service_addr(frontend: &Frontend, node: &NodeContext) -> Option<Ipv4Addr> {
    (frontend.kind != FrontendKind::NodePort && !node.addresses.contains(&frontend.key.addr))
        .then_some(frontend.key.addr)
}
