//! The service model: Kubernetes objects in, desired datapath state out.
//! Pure functions only; the sources feed it and the writer applies it.

mod cluster;
mod conflicts;
mod desired;
mod endpoints;
mod frontends;
mod incremental;
mod intern;
mod node;
mod objects;
mod service_spec;
mod slice;
mod topology;
mod types;

#[cfg(test)]
mod desired_tests;

pub use cluster::{ClusterState, ObjectKey, ViewDelta};
pub use desired::desired_state;
pub use endpoints::{SERVICE_NAME_LABEL, SKIP_MIRROR_LABEL};
pub use incremental::{Changes, IncrementalModel};
pub use node::{NodeInfo, ZONE_LABEL, node_info};
pub use objects::{DEFAULT_NAMESPACE, KubeObject};
pub use service_spec::{
    DEFAULT_AFFINITY_TIMEOUT, HEADLESS_LABEL, SERVICE_PROXY_NAME_LABEL, ServiceInfo, trim_service,
};
pub use slice::{Address, Hints, Slice, SliceEndpoint, SlicePort};
pub use types::*;

/// A CIDR as Kubernetes writes it (`address/prefix`, surrounding blanks
/// tolerated as kube-proxy does), truncated to its network: a bare address
/// is not a CIDR.
pub(crate) fn parse_cidr(s: &str) -> Result<ipnetwork::IpNetwork, String> {
    let s = s.trim();
    if !s.contains('/') {
        return Err(format!("{s:?} is not a CIDR (address/prefix)"));
    }
    let net: ipnetwork::IpNetwork = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    ipnetwork::IpNetwork::new(net.network(), net.prefix()).map_err(|e| format!("{s:?}: {e}"))
}
