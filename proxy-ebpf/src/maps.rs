//! Map definitions. Names are the versioned pin names from
//! `proxy_common::names`; sizes are defaults the daemon may override.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps,
    macros::{btf_map, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use proxy_common::{
    AffinityKey, AffinityValue, Backend, CtEntry, CtKey, CtStats, FragKey, FragPorts,
    LocalEndpoint, NodeConfig, ReasonCounter, ServiceCounter, ServiceKey, ServiceValue,
    SockAffinityKey, SockConfig, SockRevKey, SockRevValue, SourceRangeKey,
    ct::{
        CT_STATS_ROWS, DEFAULT_MAX_CT_ANY_ENTRIES, DEFAULT_MAX_CT_TCP_ENTRIES,
        DEFAULT_MAX_FRAG_ENTRIES,
    },
    endpoint::DEFAULT_MAX_LOCAL_ENDPOINTS,
    reason,
    service::{
        DEFAULT_MAX_AFFINITY_ENTRIES, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_MAGLEV_TABLES,
        DEFAULT_MAX_SERVICE_ENTRIES, DEFAULT_MAX_SERVICE_IDS, DEFAULT_MAX_SOURCE_RANGES,
        MAGLEV_TABLE_FLAGS,
    },
    socket::{
        DEFAULT_MAX_NODE_ADDRS, DEFAULT_MAX_SOCK_AFFINITY_ENTRIES, DEFAULT_MAX_SOCK_REV_ENTRIES,
    },
    stats::write_error,
};

#[map(name = "sluice_svc4_v1")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::pinned(DEFAULT_MAX_SERVICE_ENTRIES, 0);

#[map(name = "sluice_be4_v1")]
pub static BACKENDS: HashMap<u32, Backend> = HashMap::pinned(DEFAULT_MAX_BACKENDS, 0);

/// TCP flows. A plain (preallocated) hash: when it is full a new connection
/// is refused, and no established connection is ever evicted for it.
#[map(name = "sluice_ct4_tcp_v2")]
pub static CT_TCP: HashMap<CtKey, CtEntry> = HashMap::pinned(DEFAULT_MAX_CT_TCP_ENTRIES, 0);

/// UDP and ICMP echo flows: LRU, so a flood evicts only flows of its kind.
#[map(name = "sluice_ct4_any_v2")]
pub static CT_ANY: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(DEFAULT_MAX_CT_ANY_ENTRIES, 0);

/// Failed map writes that decided nothing (`stats::write_error`).
#[map(name = "sluice_werr_v1")]
pub static WRITE_ERRORS: PerCpuArray<u64> = PerCpuArray::pinned(write_error::MAX, 0);

/// Counts a map write that failed without deciding the packet's fate.
#[inline(always)]
pub fn count_write_error(what: u32) {
    if let Some(c) = WRITE_ERRORS.get_ptr_mut(what) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *c += 1 };
    }
}

/// Counters of the CT maps (rows `CT_STATS_*`).
#[map(name = "sluice_ctst_v1")]
pub static CT_STATS: PerCpuArray<CtStats> = PerCpuArray::pinned(CT_STATS_ROWS, 0);

#[map(name = "sluice_frag4_v1")]
pub static FRAGS: LruHashMap<FragKey, FragPorts> = LruHashMap::pinned(DEFAULT_MAX_FRAG_ENTRIES, 0);

#[map(name = "sluice_rsn_v1")]
pub static REASONS: PerCpuArray<ReasonCounter> = PerCpuArray::pinned(reason::MAX, 0);

#[map(name = "sluice_svst_v1")]
pub static SVC_STATS: PerCpuArray<ServiceCounter> = PerCpuArray::pinned(DEFAULT_MAX_SERVICE_IDS, 0);

#[map(name = "sluice_cfg_v1")]
pub static CONFIG: Array<NodeConfig> = Array::pinned(1, 0);

#[map(name = "sluice_aff4_v1")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::pinned(DEFAULT_MAX_AFFINITY_ENTRIES, 0);

#[map(name = "sluice_srcr4_v1")]
pub static SOURCE_RANGES: LpmTrie<SourceRangeKey, u32> =
    LpmTrie::pinned(DEFAULT_MAX_SOURCE_RANGES, BPF_F_NO_PREALLOC);

/// Pods on this node (`deliver`), written by the CNI plugin.
#[map(name = "sluice_ep4_v1")]
pub static LOCAL_ENDPOINTS: HashMap<u32, LocalEndpoint> =
    HashMap::pinned(DEFAULT_MAX_LOCAL_ENDPOINTS, 0);

/// Socket load balancing's mode and scope (`sock`).
#[map(name = "sluice_sockcfg_v1")]
pub static SOCK_CONFIG: Array<SockConfig> = Array::pinned(1, 0);

/// Which Service address a translated socket's peer stands for.
#[map(name = "sluice_sockrev4_v1")]
pub static SOCK_REV: LruHashMap<SockRevKey, SockRevValue> =
    LruHashMap::pinned(DEFAULT_MAX_SOCK_REV_ENTRIES, 0);

/// ClientIP session affinity of socket clients (by network namespace).
#[map(name = "sluice_sockaff4_v1")]
pub static SOCK_AFFINITY: LruHashMap<SockAffinityKey, AffinityValue> =
    LruHashMap::pinned(DEFAULT_MAX_SOCK_AFFINITY_ENTRIES, 0);

/// Addresses of every node of the cluster: a socket's NodePort on any of
/// them is translated.
#[map(name = "sluice_nodes4_v1")]
pub static NODE_ADDRS: HashMap<u32, u32> = HashMap::pinned(DEFAULT_MAX_NODE_ADDRS, 0);

/// Inner tables may have any size (BPF_F_INNER_MAP): the operator picks it;
/// user space writes them through a mapping (BPF_F_MMAPABLE). Two slots per
/// element: the kernel stores array values 8 bytes apart, so a `u32` per
/// element would take twice the memory.
pub type MaglevTable = btf_maps::Array<[u32; 2], 1, { MAGLEV_TABLE_FLAGS as usize }>;

/// Pinned by the loader (BTF maps carry no pinning attribute).
#[btf_map(name = "sluice_mglv4_v3")]
pub static MAGLEV: btf_maps::HashOfMaps<u32, MaglevTable, { DEFAULT_MAX_MAGLEV_TABLES as usize }> =
    btf_maps::HashOfMaps::new();

/// Counts a verdict under its reason code.
#[inline(always)]
pub fn count_reason(code: u32, len: u32) {
    if let Some(c) = REASONS.get_ptr_mut(code) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len as u64;
        }
    }
}

/// Service counter deltas for one packet.
pub struct SvcDelta {
    pub len: u32,
    pub new_conn: bool,
    pub refused: bool,
}

#[inline(always)]
pub fn count_service(svc_id: u32, d: SvcDelta) {
    // Id 0 is no service (masquerade flows).
    if svc_id == 0 {
        return;
    }
    if let Some(c) = SVC_STATS.get_ptr_mut(svc_id) {
        // SAFETY: per-CPU slot, as above.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += d.len as u64;
            (*c).new_conns += d.new_conn as u64;
            (*c).refused += d.refused as u64;
        }
    }
}
