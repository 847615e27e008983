//! What can go wrong setting up or syncing the overlay.

use std::net::Ipv4Addr;

/// An overlay failure. Kernel refusals carry the operation that failed and
/// the kernel's error; configuration conflicts say what to change.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("invalid overlay configuration: {0}")]
    Config(String),

    #[error("opening a netlink socket: {0}")]
    Socket(#[source] std::io::Error),

    #[error(
        "no interface in this network namespace has the node address {addr}: the overlay \
         tunnels from the Node's InternalIP, so it must be assigned to the node's uplink"
    )]
    NoUplink { addr: Ipv4Addr },

    #[error(
        "UDP port {port} is already used by VXLAN device {device} (VNI {vni}): \
         give Sluice's overlay another port with {flag}, or remove {device}"
    )]
    PortTaken {
        device: String,
        vni: u32,
        port: u16,
        flag: &'static str,
    },

    #[error(
        "cannot bring up {device}: UDP port {port} is in use by another socket in this \
         network namespace (EADDRINUSE); stop whatever holds it, or give Sluice's overlay \
         another port with {flag}"
    )]
    PortInUse {
        device: String,
        port: u16,
        flag: &'static str,
    },

    #[error(
        "{device} exists but is not a VXLAN device (kind {kind}); Sluice does not replace a \
         link it did not create: remove or rename it"
    )]
    NameTaken { device: String, kind: String },

    #[error(transparent)]
    Netlink(#[from] sluice_net::NetlinkError),
}

impl OverlayError {
    /// The kernel's errno, for a refused netlink request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Netlink(e) => e.errno(),
            _ => None,
        }
    }
}
