//! Where Kubernetes objects come from: a directory of manifests or the API
//! server. Every source delivers whole views of the cluster
//! ([`crate::model::ClusterState`]) as they change; the daemon does not care
//! which one it runs on.

use std::{sync::Arc, time::Instant};

use crate::model::ClusterState;

pub mod kube;
pub mod manifest_dir;
pub mod manifests;
pub mod parse;
mod views;

/// A new view of the cluster.
#[derive(Clone, Debug)]
pub struct Update {
    pub state: Arc<ClusterState>,
    /// When the change behind this view was first seen (for the
    /// change-to-programmed latency).
    pub seen: Instant,
    /// Files or documents of the source that cannot be used right now
    /// (the manifests source; always 0 for the API).
    pub problems: usize,
}
