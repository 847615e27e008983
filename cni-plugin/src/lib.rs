//! sluice-cni: the Sluice CNI plugin.
//!
//! Bridge networking on a node: one bridge (`sluice0`) carrying the pod
//! CIDR's gateway address, one veth pair per pod with a deterministic
//! host-side name, addresses from a file-backed IPAM store, and the Sluice
//! datapath (pinned TC programs) attached to every pod veth before ADD
//! returns. Speaks CNI 0.3.1, 0.4.0, 1.0.0 and 1.1.0 (ADD, DEL, CHECK,
//! STATUS, GC, VERSION).
//!
//! The node daemon uses this library too: [`NetConf`] and [`conflist`] for
//! the configuration it installs, [`attach_pod_programs`] /
//! [`list_pod_veths`] / [`host_veth_name`] to re-attach new programs to
//! existing pods, and [`daemon_lock_path`] for the liveness lock STATUS
//! checks.

pub mod bridge;
pub mod cmd;
pub mod config;
pub mod datapath;
pub mod env;
pub mod error;
pub mod ipam;
pub mod liveness;
mod log;
pub mod netlink;
pub mod netns;
pub mod result;
pub mod version;

pub use bridge::{host_veth_name, is_host_veth_name, list_pod_veths};
pub use cmd::{Outcome, dispatch};
pub use config::{NetConf, conflist};
pub use datapath::{
    AttachError, HookedLink, attach_pinned, attach_pod_programs, hooked_links,
    pod_programs_attached,
};
pub use error::CniError;
pub use ipam::{Allocation, Attachment, IpamStore};
pub use liveness::{daemon_lock_path, daemon_running};
pub use version::CniVersion;
