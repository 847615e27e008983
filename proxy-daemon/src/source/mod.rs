//! Where Kubernetes objects come from: manifest files (and, later, the API
//! server). Every source ends in the same [`crate::model::ClusterState`].

pub mod parse;
pub mod watch;
