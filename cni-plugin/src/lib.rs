//! sluice-cni: the Sluice CNI plugin.
//!
//! Bridge networking on a node: one bridge (`sluice0`) carrying the pod
//! CIDR's gateway address, one veth pair per pod with a deterministic
//! host-side name, addresses from a file-backed IPAM store, and the Sluice
//! datapath (pinned TC programs) attached to every pod veth before ADD
//! returns. Speaks CNI 0.3.1, 0.4.0, 1.0.0 and 1.1.0 (ADD, DEL, CHECK,
//! STATUS, GC, VERSION).
//!
//! What the daemon shares with the plugin (the configuration format, pod
//! veth names, attaching the programs, the liveness lock) lives in
//! `sluice-net`; nothing depends on this crate.

pub mod bridge;
pub mod cmd;
mod endpoint;
pub mod env;
pub mod ipam;
mod log;
pub mod netns;
pub mod result;

pub use cmd::{Outcome, dispatch};
pub use ipam::{Allocation, Attachment, IpamStore};
pub use sluice_net::cni::error::CniError;
