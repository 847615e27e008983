//! Delivering a pod's packet straight into the veth of its destination pod
//! on this node (or, for a pod on another node, straight to the overlay
//! device), instead of up through the bridge into the node's IP stack
//! and back down (for a translated packet, still addressed to the bridge's
//! MAC, that detour is a full routing pass).
//!
//! The packet leaves through the destination's host-side veth, so its TC
//! egress (`to_pod`, the reverse translation) runs and tcpdump on the host
//! veths sees the walk as before. What the router did and still matters
//! is done here: a routed frame (addressed to the gateway) gets the TTL
//! decremented and the gateway as its source MAC; one the pod addressed to
//! its neighbour at layer 2 is left as the bridge would. Anything the
//! stack must judge is left to it: a TTL about to expire (ICMP time
//! exceeded), a packet too big for the destination's MTU (fragmentation
//! needed), a pod without an entry (one added before the map existed).

use core::mem::zeroed;

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_OK, TC_ACT_REDIRECT, bpf_fib_lookup},
    helpers::{bpf_check_mtu, bpf_redirect},
    programs::TcContext,
};
use proxy_common::config::NODE_CONFIG_VERSION;

use crate::{
    access::{load16, load32, store16, store32},
    maps::{CONFIG, LOCAL_ENDPOINTS},
    packet::{FRAG_NONE, Packet},
    route::{self, decrement_ttl},
    skb::ifindex,
    verdict::Verdict,
};

/// `v` for `pkt`, turned into a redirect into the destination pod's veth
/// when the stack would only have forwarded it there.
#[inline(always)]
pub fn to_local_pod(ctx: &TcContext, pkt: &Packet, v: Verdict) -> Verdict {
    if v.action != TC_ACT_OK || pkt.frag != FRAG_NONE || pkt.has_options {
        return v;
    }
    match redirect(ctx, pkt.daddr) {
        TC_ACT_REDIRECT => Verdict::action(TC_ACT_REDIRECT, v.reason),
        _ => v,
    }
}

/// `v` for `pkt`, turned into a redirect to the next hop when `pkt` goes
/// to a pod on another node (the cluster's pod CIDR, not this node's): the
/// node's routing table, read through `bpf_fib_lookup`, names the overlay
/// device (or the uplink without an overlay) and the neighbour; the
/// router's part is done here. Anything the lookup cannot settle (no
/// neighbour yet, too big for the route's MTU, TTL about to expire) is left
/// to the stack.
#[inline(always)]
pub fn to_remote_pod(ctx: &TcContext, pkt: &Packet, v: Verdict) -> Verdict {
    if v.action != TC_ACT_OK || pkt.frag != FRAG_NONE || pkt.has_options {
        return v;
    }
    let Some(c) = CONFIG.get(0) else {
        return v;
    };
    let remote = c.version == NODE_CONFIG_VERSION
        && c.cluster_mask != 0
        && pkt.daddr & c.cluster_mask == c.cluster_cidr
        && pkt.daddr & c.pod_mask != c.pod_cidr;
    if !remote {
        return v;
    }
    match route(ctx, pkt.saddr, pkt.daddr) {
        TC_ACT_REDIRECT => Verdict::action(TC_ACT_REDIRECT, v.reason),
        _ => v,
    }
}

/// The FIB half of [`to_remote_pod`]; `TC_ACT_REDIRECT` or `TC_ACT_OK`
/// (untouched, for the stack). Not inlined, as [`redirect`].
#[inline(never)]
fn route(ctx: &TcContext, saddr: u32, daddr: u32) -> i32 {
    // SAFETY: bpf_fib_lookup is plain data; zero is a valid value.
    let mut p: bpf_fib_lookup = unsafe { zeroed() };
    p.__bindgen_anon_3.ipv4_src = saddr;
    p.__bindgen_anon_4.ipv4_dst = daddr;
    let rc = route::lookup(ctx, &mut p);
    if rc != BPF_FIB_LKUP_RET_SUCCESS || p.ifindex == ifindex(ctx) {
        return TC_ACT_OK;
    }
    if decrement_ttl(ctx).is_err() || route::set_macs(ctx, &p).is_none() {
        return TC_ACT_OK;
    }
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(p.ifindex, 0) as i32 }
}

/// `TC_ACT_REDIRECT` when the packet to `daddr` (NBO) was rewritten and
/// redirected into a local pod's veth, `TC_ACT_OK` when it is left to the
/// stack. Not inlined: one copy serves every caller, and its scalar result
/// keeps it a plain BPF-to-BPF call.
#[inline(never)]
fn redirect(ctx: &TcContext, daddr: u32) -> i32 {
    // SAFETY: the value is copied out at once; the map holds plain data.
    let Some(ep) = (unsafe { LOCAL_ENDPOINTS.get(daddr) }).copied() else {
        return TC_ACT_OK;
    };
    // A pod's packet to its own address never comes through its veth; an
    // entry naming the incoming veth is stale, and the stack decides.
    if ep.ifindex == ifindex(ctx) {
        return TC_ACT_OK;
    }
    let mut mtu_len: u32 = 0;
    // SAFETY: helper call on the program's own skb; the length is an out
    // parameter. Zero means the packet (or each of its GSO segments) fits.
    let fits = unsafe { bpf_check_mtu(ctx.skb.skb as *mut _, ep.ifindex, &mut mtu_len, 0, 0) };
    if fits != 0 {
        return TC_ACT_OK;
    }
    let Some(eth) = crate::packet::at(ctx, 0, 12) else {
        return TC_ACT_OK;
    };
    let want = (
        u32::from_ne_bytes([ep.mac[0], ep.mac[1], ep.mac[2], ep.mac[3]]),
        u16::from_ne_bytes([ep.mac[4], ep.mac[5]]),
    );
    // SAFETY: the 12 bytes are inside the packet (checked above).
    let dst = unsafe { (load32(eth), load16(eth + 4)) };
    if dst != want {
        // Routed through the gateway: do the router's part.
        if decrement_ttl(ctx).is_err() {
            return TC_ACT_OK;
        }
        let Some(eth) = crate::packet::at(ctx, 0, 12) else {
            return TC_ACT_OK;
        };
        // SAFETY: as above, re-checked after the header write.
        unsafe {
            store32(eth + 6, dst.0);
            store16(eth + 10, dst.1);
            store32(eth, want.0);
            store16(eth + 4, want.1);
        }
    }
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(ep.ifindex, 0) as i32 }
}
