//! Routing a packet from TC ourselves.
//!
//! An external flow SNATed at the uplink's ingress carries one of this
//! node's addresses as its source from then on, and so does its reply after
//! reverse translation at the overlay's ingress; the kernel's input path
//! drops such packets as martian. So the datapath does the router's job for
//! them: a FIB lookup for the next hop, the TTL decremented, the Ethernet
//! addresses rewritten, and a redirect to the egress device (the overlay
//! device encapsulates towards the right node by its FDB).

use core::mem::{size_of, zeroed};

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_REDIRECT, bpf_fib_lookup,
        bpf_redir_neigh,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use proxy_common::reason;

use crate::{
    access::{load16, store16, store32},
    csum,
    packet::{ETH_HLEN, Packet},
    skb::ifindex,
    verdict::Verdict,
};

const AF_INET: u8 = 2;

#[inline(always)]
fn at(ctx: &TcContext, off: usize, len: usize) -> Option<usize> {
    crate::packet::at(ctx, off, len)
}

/// Decrements the TTL and patches the header checksum (RFC 1624).
#[inline(always)]
pub fn decrement_ttl(ctx: &TcContext) -> Result<(), u32> {
    let ttl_proto = at(ctx, ETH_HLEN + 8, 2).ok_or(reason::DROP_REWRITE)?;
    let check = at(ctx, ETH_HLEN + 10, 2).ok_or(reason::DROP_REWRITE)?;
    // SAFETY: both addresses are inside the packet (checked above).
    unsafe {
        let old = load16(ttl_proto);
        if old & 0xff <= 1 {
            return Err(reason::DROP_TTL_EXCEEDED);
        }
        // TTL is the first byte: the low byte of the little-endian load.
        let new = old - 1;
        store16(ttl_proto, new);
        store16(check, csum::updated(load16(check), csum::delta16(old, new)));
    }
    Ok(())
}

/// Asks the node's routing table about `p` (addresses, and ports if the
/// caller has them) arriving on this program's interface; `p` receives the
/// answer (egress interface, MACs or next hop). With no flags the kernel
/// also checks the packet against the route's MTU. Fills `p` in place: a
/// returned copy would put a second 64-byte struct on the stack.
#[inline(always)]
pub fn lookup(ctx: &TcContext, p: &mut bpf_fib_lookup) -> u32 {
    p.family = AF_INET;
    p.ifindex = ifindex(ctx);
    // SAFETY: helper call with a stack struct of the size we pass.
    let rc = unsafe {
        fib_lookup(
            ctx.skb.skb as *mut _,
            p,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    rc as u32
}

/// Writes the MACs a successful lookup found into the frame.
#[inline(always)]
pub fn set_macs(ctx: &TcContext, p: &bpf_fib_lookup) -> Option<()> {
    let eth = at(ctx, 0, 12)?;
    let (d, s) = (p.dmac, p.smac);
    // SAFETY: the 12 bytes are inside the packet (checked above).
    unsafe {
        store32(eth, u32::from_ne_bytes([d[0], d[1], d[2], d[3]]));
        store16(eth + 4, u16::from_ne_bytes([d[4], d[5]]));
        store32(eth + 6, u32::from_ne_bytes([s[0], s[1], s[2], s[3]]));
        store16(eth + 10, u16::from_ne_bytes([s[4], s[5]]));
    }
    Some(())
}

/// Routes the (already translated) packet to its next hop.
#[inline(always)]
pub fn fib_redirect(ctx: &TcContext, pkt: &Packet, counted: u32) -> Verdict {
    // SAFETY: bpf_fib_lookup is plain data; zero is a valid value.
    let mut p: bpf_fib_lookup = unsafe { zeroed() };
    p.l4_protocol = pkt.proto;
    p.sport = pkt.sport;
    p.dport = pkt.dport;
    p.__bindgen_anon_3.ipv4_src = pkt.saddr;
    p.__bindgen_anon_4.ipv4_dst = pkt.daddr;
    let rc = lookup(ctx, &mut p);
    if rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH {
        return Verdict::drop(reason::DROP_NO_ROUTE);
    }
    if let Err(r) = decrement_ttl(ctx) {
        return Verdict::drop(r);
    }
    let action = if rc == BPF_FIB_LKUP_RET_SUCCESS {
        if set_macs(ctx, &p).is_none() {
            return Verdict::drop(reason::DROP_REWRITE);
        }
        // SAFETY: plain helper call.
        unsafe { bpf_redirect(p.ifindex, 0) }
    } else {
        // The next hop (gateway or destination) is in ipv4_dst now; let
        // the kernel resolve its MAC.
        // SAFETY: plain data, zero is valid.
        let mut nh: bpf_redir_neigh = unsafe { zeroed() };
        nh.nh_family = u32::from(AF_INET);
        // SAFETY: reading the union member the lookup filled in.
        nh.__bindgen_anon_1.ipv4_nh = unsafe { p.__bindgen_anon_4.ipv4_dst };
        // SAFETY: helper call with a stack struct of the size we pass.
        unsafe { bpf_redirect_neigh(p.ifindex, &mut nh, size_of::<bpf_redir_neigh>() as i32, 0) }
    } as i32;
    if action != TC_ACT_REDIRECT {
        return Verdict::drop(reason::DROP_NO_ROUTE);
    }
    Verdict {
        action,
        reason: counted,
    }
}
