//! Frontend lookup and backend choice.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use proxy_common::{
    Backend, ServiceKey, ServiceValue,
    service::{SCOPE_EXTERNAL, SVC_F_ADDR_ONLY},
};

use crate::{
    maps::{BACKENDS, SERVICES},
    packet::Packet,
};

/// The frontend the packet is addressed to, if any.
#[inline(always)]
pub fn frontend(pkt: &Packet) -> Option<ServiceValue> {
    let key = ServiceKey::frontend(pkt.daddr, pkt.dport, pkt.proto, SCOPE_EXTERNAL);
    // SAFETY: copied out of the map at once.
    let v = unsafe { SERVICES.get(key) }.copied()?;
    if v.flags & SVC_F_ADDR_ONLY != 0 {
        return None;
    }
    Some(v)
}

/// Whether any service uses this address (whatever the port).
#[inline(always)]
pub fn is_service_addr(addr: u32) -> bool {
    // SAFETY: existence check only.
    unsafe { SERVICES.get(ServiceKey::address_only(addr)) }.is_some()
}

/// Chooses a backend for a new connection to `fe` (which has `count > 0`).
#[inline(always)]
pub fn pick_backend(pkt: &Packet, fe: &ServiceValue) -> Option<(u32, Backend)> {
    // SAFETY: plain helper call.
    let slot = (unsafe { bpf_get_prandom_u32() } % fe.count as u32) as u16 + 1;
    let key = ServiceKey::frontend(pkt.daddr, pkt.dport, pkt.proto, SCOPE_EXTERNAL).with_slot(slot);
    // SAFETY: copied out of the map at once.
    let id = unsafe { SERVICES.get(key) }?.backend_id;
    let be = unsafe { BACKENDS.get(id) }.copied()?;
    Some((id, be))
}
