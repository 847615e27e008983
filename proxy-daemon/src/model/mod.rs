//! The service model: Kubernetes objects in, desired datapath state out.
//! Pure functions only; the sources feed it and the writer applies it.

mod cluster;
mod types;

pub use cluster::{ClusterState, ObjectKey};
pub use types::*;
