//! Socket-level load balancing: the cgroup socket programs translate a
//! Service address when a socket connects or sends, so the connection
//! carries the backend's address from its first packet and needs no
//! per-packet NAT.

/// Value of `sluice_sockcfg_v1[0]`, written by the daemon before it
/// attaches the programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockConfig {
    /// Layout version; the programs act only on a version they know.
    pub version: u32,
    /// `SOCK_LB_*`.
    pub mode: u32,
    /// Network namespace cookie of the daemon's namespace: in
    /// [`SOCK_LB_HOST`] mode only sockets of that namespace are translated.
    pub netns_cookie: u64,
}
crate::assert_size!(SockConfig, 16);

pub const SOCK_CONFIG_VERSION: u32 = 1;

/// No socket translates (the programs pass everything).
pub const SOCK_LB_OFF: u32 = 0;
/// Only sockets of the daemon's own network namespace: the node's
/// processes and hostNetwork pods.
pub const SOCK_LB_HOST: u32 = 1;
/// Every socket of the attached cgroup, pods included.
pub const SOCK_LB_ALL: u32 = 2;

/// Key of `sluice_sockrev4_v1`: which Service address a socket's peer
/// stands for. Socket cookies are never reused, so a closed socket's
/// entries can only age out of the LRU, never mislead a new socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockRevKey {
    pub cookie: u64,
    /// Backend address, NBO.
    pub addr: u32,
    /// Backend port, NBO.
    pub port: u16,
    pub _pad: u16,
}
crate::assert_size!(SockRevKey, 16);

/// Value of `sluice_sockrev4_v1`: the frontend the socket asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevValue {
    /// Frontend address, NBO.
    pub addr: u32,
    /// Frontend port, NBO.
    pub port: u16,
    pub _pad: u16,
    pub svc_id: u32,
}
crate::assert_size!(SockRevValue, 12);

/// Key of `sluice_sockaff4_v1`: ClientIP session affinity of socket
/// clients. A socket has no source address when it connects, so the client
/// is its network namespace (Cilium does the same): every process of a
/// node, or of a pod, counts as one client.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockAffinityKey {
    pub netns_cookie: u64,
    pub svc_id: u32,
    pub _pad: u32,
}
crate::assert_size!(SockAffinityKey, 16);

/// Reverse entries: one per (socket, backend) pair in use. At the limit the
/// least recently used go first; a socket whose entry went sees the
/// backend's address in getpeername()/recvfrom() instead of the Service's.
pub const DEFAULT_MAX_SOCK_REV_ENTRIES: u32 = 262_144;
/// Affinity entries of socket clients (LRU, as `sluice_aff4_v1`).
pub const DEFAULT_MAX_SOCK_AFFINITY_ENTRIES: u32 = 65_536;
/// Addresses of every node of the cluster (NodePorts are translated on
/// any of them). At the limit the daemon logs the addresses left out; a
/// host client reaching one goes through that node's TC path instead.
pub const DEFAULT_MAX_NODE_ADDRS: u32 = 16_384;
