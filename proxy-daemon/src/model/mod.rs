//! The service model: Kubernetes objects in, desired datapath state out.
//! Pure functions only; the sources feed it and the writer applies it.

mod cluster;
mod conflicts;
mod desired;
mod endpoints;
mod frontends;
mod node;
mod objects;
mod service_plan;
mod topology;
mod types;

#[cfg(test)]
mod desired_tests;

pub use cluster::{ClusterState, ObjectKey};
pub use desired::desired_state;
pub use endpoints::{SERVICE_NAME_LABEL, SKIP_MIRROR_LABEL};
pub use node::{NodeInfo, ZONE_LABEL, node_info};
pub use objects::{DEFAULT_NAMESPACE, KubeObject};
pub use service_plan::{DEFAULT_AFFINITY_TIMEOUT, HEADLESS_LABEL, SERVICE_PROXY_NAME_LABEL};
pub use types::*;
