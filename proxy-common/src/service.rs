//! Frontends, backend slots and backends (Cilium's lb4 model).
//!
//! A frontend is `(address, port, protocol, scope)`. Its master entry has
//! `slot == 0` and carries the number of backend slots; slots `1..=count` name
//! one backend id each. An address-only entry (`port == 0`, `proto == 0`) marks
//! an address as a service address, so traffic to an unknown port, or a
//! fragment we cannot place, is refused instead of leaking to the node's routes.

/// Key of `sluice_svc4_v1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// Frontend IPv4 address, NBO.
    pub addr: u32,
    /// Frontend port, NBO; 0 in the address-only entry.
    pub port: u16,
    /// 0 for the master entry, 1..=count for backend slots.
    pub slot: u16,
    /// IP protocol; 0 in the address-only entry.
    pub proto: u8,
    /// [`SCOPE_EXTERNAL`] or [`SCOPE_INTERNAL`].
    pub scope: u8,
    pub _pad: [u8; 2],
}
crate::assert_size!(ServiceKey, 12);

/// Default scope: the frontend applies to all traffic.
pub const SCOPE_EXTERNAL: u8 = 0;
/// In-cluster scope of a frontend whose external traffic is node-local
/// (externalTrafficPolicy=Local): pods still reach every backend through it.
pub const SCOPE_INTERNAL: u8 = 1;

impl ServiceKey {
    pub const fn frontend(addr: u32, port: u16, proto: u8, scope: u8) -> Self {
        Self {
            addr,
            port,
            slot: 0,
            proto,
            scope,
            _pad: [0; 2],
        }
    }

    pub const fn address_only(addr: u32) -> Self {
        Self::frontend(addr, 0, 0, SCOPE_EXTERNAL)
    }

    pub const fn with_slot(mut self, slot: u16) -> Self {
        self.slot = slot;
        self
    }
}

/// Value of `sluice_svc4_v1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    /// Slot entries: the backend id. Master entries: 0.
    pub backend_id: u32,
    /// Frontend id: index of per-service counters, stored in CT entries.
    pub svc_id: u32,
    /// Master entries: number of backend slots (0 = refuse connections).
    pub count: u16,
    /// `SVC_F_*`.
    pub flags: u8,
    /// `KIND_*`.
    pub kind: u8,
    /// ClientIP session affinity timeout in seconds (master, with `SVC_F_AFFINITY`).
    pub affinity_timeout: u32,
}
crate::assert_size!(ServiceValue, 16);

/// Master entry marks an address, not a frontend.
pub const SVC_F_ADDR_ONLY: u8 = 1 << 0;
/// sessionAffinity: ClientIP.
pub const SVC_F_AFFINITY: u8 = 1 << 1;
/// Backends are only this node's (externalTrafficPolicy or internalTrafficPolicy Local).
pub const SVC_F_LOCAL: u8 = 1 << 2;
/// Replies to remote backends need SNAT to the node (NodePort-style frontends).
pub const SVC_F_SNAT_REMOTE: u8 = 1 << 3;
/// With no backend, drop new connections instead of refusing them (a Local
/// traffic policy without local endpoints, as kube-proxy does).
pub const SVC_F_DROP_EMPTY: u8 = 1 << 4;
/// Only sources in `sluice_srcr4_v1` for this frontend may connect
/// (loadBalancerSourceRanges).
pub const SVC_F_SOURCE_RANGES: u8 = 1 << 5;
/// Address-only entry of one of the node's own addresses: NodePorts live
/// there, but other ports belong to the node (SSH, kubelet) and pass.
pub const SVC_F_NODE_ADDR: u8 = 1 << 6;
/// The frontend has a Maglev table in `sluice_mglv4_v3`.
pub const SVC_F_MAGLEV: u8 = 1 << 7;

pub const KIND_CLUSTER_IP: u8 = 0;
pub const KIND_NODE_PORT: u8 = 1;
pub const KIND_LOAD_BALANCER: u8 = 2;
pub const KIND_EXTERNAL_IP: u8 = 3;

/// Human-readable name of a frontend kind.
pub const fn kind_name(kind: u8) -> &'static str {
    match kind {
        KIND_CLUSTER_IP => "ClusterIP",
        KIND_NODE_PORT => "NodePort",
        KIND_LOAD_BALANCER => "LoadBalancer",
        KIND_EXTERNAL_IP => "ExternalIP",
        _ => "unknown",
    }
}

/// Value of `sluice_be4_v1` (key: backend id, `u32`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    /// Backend IPv4 address, NBO.
    pub addr: u32,
    /// Backend port, NBO.
    pub port: u16,
    /// IP protocol.
    pub proto: u8,
    /// `BE_F_*`.
    pub flags: u8,
}
crate::assert_size!(Backend, 8);

/// The backend runs on this node.
pub const BE_F_LOCAL: u8 = 1 << 0;
/// The endpoint is terminating (used only through kube-proxy's fallback).
pub const BE_F_TERMINATING: u8 = 1 << 1;

/// Default capacities; the daemon may override them at load time.
pub const DEFAULT_MAX_SERVICE_ENTRIES: u32 = 262_144;
pub const DEFAULT_MAX_BACKENDS: u32 = 65_536;
/// Service ids are `1..MAX_SERVICE_IDS`; 0 is never assigned.
pub const DEFAULT_MAX_SERVICE_IDS: u32 = 65_536;

/// Source address used when a pod reaches itself through a Service: without a
/// rewrite its reply would never leave its own namespace. The pod's route to
/// it is its default route, so the reply comes back through the datapath,
/// which turns it around. Link-local, never routed off the node.
pub const HAIRPIN_SNAT_ADDR: [u8; 4] = [169, 254, 42, 1];

/// Key of `sluice_aff4_v1` (ClientIP session affinity).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AffinityKey {
    /// Client address, NBO.
    pub client: u32,
    pub svc_id: u32,
}
crate::assert_size!(AffinityKey, 8);

/// Value of `sluice_aff4_v1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityValue {
    pub backend_id: u32,
    /// Monotonic seconds of the last new connection that used it.
    pub last_used: u32,
}
crate::assert_size!(AffinityValue, 8);

/// Data part of an `sluice_srcr4_v1` LPM key: the frontend id (always fully
/// matched: the prefix length counts its 32 bits) then the source prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceRangeKey {
    pub svc_id: u32,
    /// Source address, NBO.
    pub addr: u32,
}
crate::assert_size!(SourceRangeKey, 8);

pub const DEFAULT_MAX_AFFINITY_ENTRIES: u32 = 65_536;
pub const DEFAULT_MAX_SOURCE_RANGES: u32 = 16_384;
/// Frontends that may have a Maglev table at the same time: one per
/// possible frontend id (the outer map costs little; memory goes to the
/// tables that exist).
pub const DEFAULT_MAX_MAGLEV_TABLES: u32 = DEFAULT_MAX_SERVICE_IDS;
/// Maglev table size: a prime, as the Maglev paper requires.
pub const DEFAULT_MAGLEV_TABLE_SIZE: u32 = 16_381;

/// Flags of every Maglev table (the outer map's template and each inner
/// array must agree): any size (`BPF_F_INNER_MAP`), and mappable
/// (`BPF_F_MMAPABLE`) so user space writes a table with one memcpy; the
/// kernel's batch update costs about 300 ns per entry, five seconds per
/// thousand tables of 16381. Each element holds two slots (`[u32; 2]`):
/// slot `s` is half `s % 2` of element `s / 2`.
pub const MAGLEV_TABLE_FLAGS: u32 = 0x1000 | 0x400;
