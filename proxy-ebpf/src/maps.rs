//! Map definitions. Names are the versioned pin names from
//! `proxy_common::names`; sizes are defaults the daemon may override.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use proxy_common::{
    Backend, CtEntry, CtKey, FragKey, FragPorts, NodeConfig, ReasonCounter, ServiceCounter,
    ServiceKey, ServiceValue,
    ct::{DEFAULT_MAX_CT_ENTRIES, DEFAULT_MAX_FRAG_ENTRIES},
    reason,
    service::{DEFAULT_MAX_BACKENDS, DEFAULT_MAX_SERVICE_ENTRIES, DEFAULT_MAX_SERVICE_IDS},
};

#[map(name = "sluice_svc4_v1")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::pinned(DEFAULT_MAX_SERVICE_ENTRIES, 0);

#[map(name = "sluice_be4_v1")]
pub static BACKENDS: HashMap<u32, Backend> = HashMap::pinned(DEFAULT_MAX_BACKENDS, 0);

#[map(name = "sluice_ct4_v1")]
pub static CT: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(DEFAULT_MAX_CT_ENTRIES, 0);

#[map(name = "sluice_frag4_v1")]
pub static FRAGS: LruHashMap<FragKey, FragPorts> = LruHashMap::pinned(DEFAULT_MAX_FRAG_ENTRIES, 0);

#[map(name = "sluice_rsn_v1")]
pub static REASONS: PerCpuArray<ReasonCounter> = PerCpuArray::pinned(reason::MAX, 0);

#[map(name = "sluice_svst_v1")]
pub static SVC_STATS: PerCpuArray<ServiceCounter> = PerCpuArray::pinned(DEFAULT_MAX_SERVICE_IDS, 0);

#[map(name = "sluice_cfg_v1")]
pub static CONFIG: Array<NodeConfig> = Array::pinned(1, 0);

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
