//! Names of pinned objects and attach parameters.
//!
//! Maps are pinned as `<bpffs>/sluice/<map name>`. A map name carries a layout
//! version (`_v1`): a release that changes a key or value layout bumps it, so an
//! upgraded daemon never reinterprets an old map's bytes. The eBPF crate spells
//! these names literally in its `#[map]` attributes; a user-space test checks that
//! the built object defines every one of them.

/// Directory under the bpffs mount holding every Sluice pin.
pub const PIN_DIR: &str = "sluice";

/// Frontends (slot 0) and their backend slots: `ServiceKey -> ServiceValue`.
pub const MAP_SERVICES: &str = "sluice_svc4_v1";
/// Backends by id: `u32 -> Backend`.
pub const MAP_BACKENDS: &str = "sluice_be4_v1";
/// Connection tracking of TCP, a plain hash: `CtKey -> CtEntry`. Nothing
/// evicts an entry; expired ones are removed by the daemon's sweep.
pub const MAP_CT_TCP: &str = "sluice_ct4_tcp_v2";
/// Connection tracking of UDP and ICMP echo, LRU: `CtKey -> CtEntry`.
pub const MAP_CT_ANY: &str = "sluice_ct4_any_v2";
/// Per-CPU counters of the CT maps: `CT_STATS_* -> CtStats`.
pub const MAP_CT_STATS: &str = "sluice_ctst_v1";
/// Per-CPU counters of failed datapath map writes: `stats::write_error::* -> u64`.
pub const MAP_WRITE_ERRORS: &str = "sluice_werr_v1";
/// Ports of fragmented datagrams, LRU: `FragKey -> FragPorts`.
pub const MAP_FRAG: &str = "sluice_frag4_v1";
/// Per-CPU verdict and drop counters indexed by reason code.
pub const MAP_REASONS: &str = "sluice_rsn_v1";
/// Per-CPU per-frontend counters indexed by service id.
pub const MAP_SVC_STATS: &str = "sluice_svst_v1";
/// Node configuration, a one-element array.
pub const MAP_CONFIG: &str = "sluice_cfg_v1";
/// ClientIP session affinity, LRU: `AffinityKey -> AffinityValue`.
pub const MAP_AFFINITY: &str = "sluice_aff4_v1";
/// loadBalancerSourceRanges, LPM trie: `(svc_id, source prefix) -> u32`.
pub const MAP_SOURCE_RANGES: &str = "sluice_srcr4_v1";
/// Maglev tables, hash of maps: `svc_id -> array of backend ids`.
pub const MAP_MAGLEV: &str = "sluice_mglv4_v3";
/// Pods on this node: `u32` (pod IPv4, NBO) -> `LocalEndpoint`. Written by
/// the CNI plugin.
pub const MAP_LOCAL_ENDPOINTS: &str = "sluice_ep4_v1";

/// Socket load balancing's configuration, a one-element array of
/// `SockConfig` (mode and the daemon's network namespace cookie).
pub const MAP_SOCK_CONFIG: &str = "sluice_sockcfg_v1";
/// Per-socket reverse translation, LRU: `SockRevKey -> SockRevValue`.
pub const MAP_SOCK_REV: &str = "sluice_sockrev4_v1";
/// ClientIP session affinity of socket clients, LRU:
/// `SockAffinityKey -> AffinityValue`.
pub const MAP_SOCK_AFFINITY: &str = "sluice_sockaff4_v1";
/// Addresses of every node of the cluster: `u32` (IPv4, NBO) -> `u32` (0).
pub const MAP_NODE_ADDRS: &str = "sluice_nodes4_v1";

/// Every map the datapath pins, in the order `sluicectl status` lists them.
pub const ALL_MAPS: [&str; 18] = [
    MAP_SERVICES,
    MAP_BACKENDS,
    MAP_CT_TCP,
    MAP_CT_ANY,
    MAP_CT_STATS,
    MAP_FRAG,
    MAP_REASONS,
    MAP_WRITE_ERRORS,
    MAP_SVC_STATS,
    MAP_CONFIG,
    MAP_AFFINITY,
    MAP_SOURCE_RANGES,
    MAP_MAGLEV,
    MAP_LOCAL_ENDPOINTS,
    MAP_SOCK_CONFIG,
    MAP_SOCK_REV,
    MAP_SOCK_AFFINITY,
    MAP_NODE_ADDRS,
];

/// The one CT map of releases before the split by protocol (LRU, `CtKey`
/// 16 B -> `CtEntry` 56 B, the layout of today's entries without
/// `CT_F_ASSURED`). The daemon migrates its live entries and retires it.
pub const LEGACY_MAP_CT_V1: &str = "sluice_ct4_v1";

/// Map names earlier releases pinned and this one replaced: unpinned once
/// their state is migrated (or, for the Maglev tables, rewritten). A
/// `sluice_*_vN` pin in neither list is some other release's (a newer one's,
/// after a downgrade): reported and left alone.
pub const RETIRED_MAPS: [&str; 3] = ["sluice_mglv4_v1", "sluice_mglv4_v2", LEGACY_MAP_CT_V1];

/// TC ingress program for a pod's host-side veth (traffic leaving the pod).
pub const PROG_FROM_POD: &str = "from_pod";
/// TC egress program for a pod's host-side veth (traffic entering the pod).
pub const PROG_TO_POD: &str = "to_pod";

/// TC ingress program for the node's uplink (traffic arriving at the node).
pub const PROG_FROM_NETDEV: &str = "from_netdev";
/// TC egress program for the node's uplink (traffic leaving the node).
pub const PROG_TO_NETDEV: &str = "to_netdev";
/// TC ingress program for the overlay device (traffic from other nodes).
pub const PROG_FROM_OVERLAY: &str = "from_overlay";

/// Pin file names of the programs, under [`PIN_DIR`]. The CNI plugin attaches
/// the pod programs to each new pod before ADD returns; the daemon attaches
/// the netdev programs to the uplink.
pub const PIN_PROG_FROM_POD: &str = "prog_from_pod";
pub const PIN_PROG_TO_POD: &str = "prog_to_pod";
pub const PIN_PROG_FROM_NETDEV: &str = "prog_from_netdev";
pub const PIN_PROG_TO_NETDEV: &str = "prog_to_netdev";
pub const PIN_PROG_FROM_OVERLAY: &str = "prog_from_overlay";

/// cgroup socket programs (socket load balancing), with the pin of the
/// link that attaches each to the cgroup: a pinned link keeps the program
/// attached while no daemon runs, and a restarted daemon replaces it.
pub const PROG_SOCK_CONNECT4: &str = "sock_connect4";
pub const PROG_SOCK_SENDMSG4: &str = "sock_sendmsg4";
pub const PROG_SOCK_RECVMSG4: &str = "sock_recvmsg4";
pub const PROG_SOCK_GETPEERNAME4: &str = "sock_getpeername4";
/// Each socket program with the pin of its link (which attaches it to the
/// cgroup) and of the program itself (as the TC programs are pinned).
pub const SOCK_PROGRAMS: [(&str, &str, &str); 4] = [
    (
        PROG_SOCK_CONNECT4,
        "link_sock_connect4",
        "prog_sock_connect4",
    ),
    (
        PROG_SOCK_SENDMSG4,
        "link_sock_sendmsg4",
        "prog_sock_sendmsg4",
    ),
    (
        PROG_SOCK_RECVMSG4,
        "link_sock_recvmsg4",
        "prog_sock_recvmsg4",
    ),
    (
        PROG_SOCK_GETPEERNAME4,
        "link_sock_getpeername4",
        "prog_sock_getpeername4",
    ),
];

/// TC filter priority and handle of Sluice's cls_bpf filters. Fixed values let
/// a restarted daemon replace a filter in place (atomically) instead of adding
/// a second one.
pub const TC_PRIORITY: u16 = 1;
pub const TC_HANDLE: u32 = 0x5c1c;

/// Prefix of every host-side pod veth name.
pub const VETH_PREFIX: &str = "sl";
