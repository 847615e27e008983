//! What `sluiced` and `sluice-cni` both do to a node, in one place: the
//! rtnetlink layer ([`netlink`], and [`blocking`] for callers without a
//! runtime), attaching the pinned programs at Sluice's fixed TC address
//! ([`tc`]), pod veth names and the pod bridge ([`pods`]), the pod MTU
//! ([`mtu`]), the local-endpoint map ([`endpoints`]), the CNI configuration
//! format and error type ([`cni`]), the
//! daemon's liveness lock ([`liveness`]), destroying UDP sockets connected
//! to a backend through sock_diag ([`sockets`]) and log timestamps
//! ([`time`]).
//! The CNI plugin depends on this crate and nothing depends on the plugin.

pub mod blocking;
pub mod cni;
pub mod endpoints;
pub mod liveness;
pub mod mtu;
pub mod netlink;
pub mod pods;
pub mod sockets;
pub mod tc;
pub mod time;

pub use blocking::{BlockingNetlink, on_fresh_thread};
pub use netlink::{Netlink, NetlinkError};
