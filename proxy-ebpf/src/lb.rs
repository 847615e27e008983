//! Frontend lookup and backend choice.

use aya_ebpf::{
    helpers::bpf_get_prandom_u32,
    maps::{LruHashMap, lpm_trie::Key},
};
use proxy_common::{
    AffinityKey, AffinityValue, Backend, NodeConfig, ServiceKey, ServiceValue, SockAffinityKey,
    SourceRangeKey,
    service::{SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_F_ADDR_ONLY, SVC_F_AFFINITY, SVC_F_MAGLEV},
    stats::write_error,
};

use crate::{
    maps::{
        AFFINITY, BACKENDS, CONFIG, MAGLEV, SERVICES, SOCK_AFFINITY, SOURCE_RANGES,
        count_write_error,
    },
    packet::Packet,
};

/// Flags of the address-only entry of `addr`, if it is a service address or
/// one of the node's own addresses.
#[inline(always)]
pub fn address_flags(addr: u32) -> Option<u8> {
    // SAFETY: copied out of the map at once.
    unsafe { SERVICES.get(ServiceKey::address_only(addr)) }.map(|v| v.flags)
}

#[inline(always)]
fn lookup(key: ServiceKey) -> Option<(ServiceKey, ServiceValue)> {
    // SAFETY: copied out of the map at once.
    let v = unsafe { SERVICES.get(key) }.copied()?;
    (v.flags & SVC_F_ADDR_ONLY == 0).then_some((key, v))
}

/// The frontend a packet from outside the cluster is addressed to.
#[inline(always)]
pub fn frontend_external(pkt: &Packet) -> Option<(ServiceKey, ServiceValue)> {
    lookup(ServiceKey::frontend(
        pkt.daddr,
        pkt.dport,
        pkt.proto,
        SCOPE_EXTERNAL,
    ))
}

/// The frontend a pod's packet is addressed to: the in-cluster entry of an
/// externalTrafficPolicy=Local frontend first (pods may use every endpoint),
/// else the frontend itself.
#[inline(always)]
pub fn frontend_internal(pkt: &Packet) -> Option<(ServiceKey, ServiceValue)> {
    frontend_internal_at(pkt.daddr, pkt.dport, pkt.proto)
}

/// [`frontend_internal`] for an address, port (both NBO) and protocol: what
/// a socket of this node connects or sends to.
#[inline(always)]
pub fn frontend_internal_at(addr: u32, port: u16, proto: u8) -> Option<(ServiceKey, ServiceValue)> {
    lookup(ServiceKey::frontend(addr, port, proto, SCOPE_INTERNAL))
        .or_else(|| lookup(ServiceKey::frontend(addr, port, proto, SCOPE_EXTERNAL)))
}

/// Whether loadBalancerSourceRanges admit the packet's source.
#[inline(always)]
pub fn source_allowed(pkt: &Packet, svc_id: u32) -> bool {
    let key = Key::new(
        64,
        SourceRangeKey {
            svc_id,
            addr: pkt.saddr,
        },
    );
    SOURCE_RANGES.get(key).is_some()
}

/// A flow's hash for Maglev: the client's address and port, the frontend
/// port and the protocol, and not the frontend address, so the flow hashes
/// the same on every node it may enter through (NodePorts differ only in
/// the node address).
#[inline(always)]
fn flow_hash(pkt: &Packet) -> u32 {
    let mut h = pkt.saddr.wrapping_mul(0x9e37_79b1);
    h ^= ((u32::from(pkt.sport) << 16) | u32::from(pkt.dport)).wrapping_mul(0x85eb_ca6b);
    h ^= u32::from(pkt.proto);
    mix(h)
}

/// murmur3's finalizer: every input bit affects every output bit.
#[inline(always)]
pub fn mix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[inline(always)]
fn backend(id: u32) -> Option<(u32, Backend)> {
    // SAFETY: copied out of the map at once.
    unsafe { BACKENDS.get(id) }.map(|b| (id, *b))
}

#[inline(always)]
fn maglev_choice(hash: u32, fe: &ServiceValue) -> Option<u32> {
    let size = CONFIG.get(0).map(|c: &NodeConfig| c.maglev_size)?;
    if size == 0 {
        return None;
    }
    let slot = hash % size;
    // SAFETY: read-only lookup through both maps.
    let pair = unsafe { MAGLEV.get_value(&fe.svc_id, &(slot / 2)) }?;
    Some(if slot & 1 == 0 { pair[0] } else { pair[1] })
}

/// Chooses a backend for a new connection to `fe` (which has `count > 0`):
/// the client's affine backend while its affinity lasts, else the Maglev
/// table's choice, else a random slot.
#[inline(always)]
pub fn pick_backend(
    pkt: &Packet,
    fe_key: &ServiceKey,
    fe: &ServiceValue,
    now: u32,
) -> Option<(u32, Backend)> {
    let aff_key = AffinityKey {
        client: pkt.saddr,
        svc_id: fe.svc_id,
    };
    choose(&AFFINITY, aff_key, flow_hash(pkt), fe_key, fe, now)
}

/// [`pick_backend`] for a socket: the client is its network namespace
/// (`netns_cookie`), and `hash` stands for the flow's, which a socket does
/// not have yet when it connects.
#[inline(always)]
pub fn pick_backend_for_socket(
    netns_cookie: u64,
    hash: u32,
    fe_key: &ServiceKey,
    fe: &ServiceValue,
    now: u32,
) -> Option<(u32, Backend)> {
    let aff_key = SockAffinityKey {
        netns_cookie,
        svc_id: fe.svc_id,
        _pad: 0,
    };
    choose(&SOCK_AFFINITY, aff_key, hash, fe_key, fe, now)
}

#[inline(always)]
fn choose<K>(
    affinity_map: &LruHashMap<K, AffinityValue>,
    aff_key: K,
    hash: u32,
    fe_key: &ServiceKey,
    fe: &ServiceValue,
    now: u32,
) -> Option<(u32, Backend)> {
    let affinity = fe.flags & SVC_F_AFFINITY != 0;
    if affinity && let Some(a) = affinity_map.get_ptr_mut(&aff_key) {
        // SAFETY: pointer to a live map value.
        unsafe {
            if now.wrapping_sub((*a).last_used) <= fe.affinity_timeout
                && let Some(chosen) = backend((*a).backend_id)
            {
                (*a).last_used = now;
                return Some(chosen);
            }
        }
    }
    let id = match (fe.flags & SVC_F_MAGLEV != 0)
        .then(|| maglev_choice(hash, fe))
        .flatten()
    {
        Some(id) => id,
        None => {
            // Checked here, not only by the caller: the compiler cannot see
            // that the count survived the helper calls above, and would
            // keep a division-by-zero panic the verifier rejects.
            let count = u32::from(fe.count);
            if count == 0 {
                return None;
            }
            // SAFETY: plain helper call.
            let slot = (unsafe { bpf_get_prandom_u32() } % count) as u16 + 1;
            // SAFETY: copied out of the map at once.
            unsafe { SERVICES.get(fe_key.with_slot(slot)) }?.backend_id
        }
    };
    let chosen = backend(id)?;
    if affinity
        && affinity_map
            .insert(
                aff_key,
                AffinityValue {
                    backend_id: id,
                    last_used: now,
                },
                0,
            )
            .is_err()
    {
        count_write_error(write_error::AFFINITY);
    }
    Some(chosen)
}
