//! Sluice's TC programs.
//!
//! - `from_pod`, TC ingress of a pod's host-side veth: traffic the pod sends.
//!   Service frontends are translated to a backend (DNAT, connection tracked);
//!   a pod reaching itself is turned around at once (hairpin).
//! - `to_pod`, TC egress of the same veth: traffic about to enter the pod.
//!   Replies of translated flows get the frontend back as their source.
//! - `to_netdev` / `from_netdev`, TC egress / ingress of the node's uplink:
//!   masquerade of pod traffic leaving the cluster, and its replies.
//!
//! Every path ends in exactly one reason code, counted per CPU.
#![no_std]
#![no_main]
// Inline assembly for single-instruction unaligned packet access (access.rs).
#![feature(asm_experimental_arch)]

mod access;
mod conntrack;
mod lb;
mod maps;
mod nat;
mod netdev;
mod packet;
mod reject;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::bpf_redirect,
    macros::classifier,
    programs::TcContext,
};
use proxy_common::{
    CtEntry, ServiceValue,
    ct::{CT_DIR_REPLY, CT_DIR_SERVICE, CT_F_REDIRECT_BACK},
    reason,
};

use crate::{
    conntrack::HAIRPIN_ADDR,
    maps::{CT, SvcDelta, count_reason, count_service},
    packet::{FRAG_LATER, Packet, Parsed},
};

const PASS: i32 = TC_ACT_OK;
const DROP: i32 = TC_ACT_SHOT;

/// A verdict and the reason it is counted under.
struct Verdict {
    action: i32,
    reason: u32,
}

impl Verdict {
    const fn pass(reason: u32) -> Self {
        Self {
            action: PASS,
            reason,
        }
    }
    const fn drop(reason: u32) -> Self {
        Self {
            action: DROP,
            reason,
        }
    }
}

#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: reading a field of the program's own __sk_buff.
    unsafe { (*ctx.skb.skb).ifindex }
}

#[inline(always)]
fn finish(ctx: &TcContext, v: Verdict) -> i32 {
    count_reason(v.reason, ctx.len());
    v.action
}

#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    let v = match packet::parse(&ctx) {
        Parsed::NotIpv4 => Verdict::pass(reason::PASS_NON_IPV4),
        Parsed::Malformed => Verdict::drop(reason::DROP_MALFORMED),
        Parsed::Ipv4(mut pkt) => {
            if pkt.daddr == HAIRPIN_ADDR {
                hairpin_reply(&ctx, &mut pkt)
            } else {
                to_service(&ctx, &mut pkt)
            }
        }
    };
    finish(&ctx, v)
}

#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    let v = match packet::parse(&ctx) {
        Parsed::NotIpv4 => Verdict::pass(reason::PASS_NON_IPV4),
        // The kernel built or forwarded this packet; what the pod's stack
        // makes of a bad header is its business, not ours to hide.
        Parsed::Malformed => Verdict::pass(reason::PASS_NOT_SERVICE),
        Parsed::Ipv4(mut pkt) => reverse_nat(&ctx, &mut pkt, false),
    };
    finish(&ctx, v)
}

#[classifier]
pub fn to_netdev(ctx: TcContext) -> i32 {
    let v = match packet::parse(&ctx) {
        Parsed::NotIpv4 => Verdict::pass(reason::PASS_NON_IPV4),
        // The node's own stack built it; not ours to judge.
        Parsed::Malformed => Verdict::pass(reason::PASS_UPLINK),
        Parsed::Ipv4(mut pkt) => netdev::masquerade(&ctx, &mut pkt),
    };
    finish(&ctx, v)
}

#[classifier]
pub fn from_netdev(ctx: TcContext) -> i32 {
    let v = match packet::parse(&ctx) {
        Parsed::NotIpv4 => Verdict::pass(reason::PASS_NON_IPV4),
        // The node's stack drops what is really broken.
        Parsed::Malformed => Verdict::pass(reason::PASS_UPLINK),
        Parsed::Ipv4(mut pkt) => netdev::unmasquerade(&ctx, &mut pkt),
    };
    finish(&ctx, v)
}

/// Non-service packets a parse flagged as unusual are still passed, but
/// counted under what made them unusual.
#[inline(always)]
fn pass_reason(pkt: &Packet) -> u32 {
    if pkt.frag != packet::FRAG_NONE {
        reason::PASS_FRAGMENT
    } else if pkt.has_options {
        reason::PASS_IP_OPTIONS
    } else if pkt.has_ports() && !pkt.l4_complete {
        reason::PASS_TRUNCATED
    } else {
        reason::PASS_NOT_SERVICE
    }
}

/// Why a packet addressed to a service cannot be translated, if it cannot.
#[inline(always)]
fn untranslatable(pkt: &Packet) -> Option<u32> {
    if pkt.has_options {
        Some(reason::DROP_IP_OPTIONS)
    } else if pkt.frag != FRAG_LATER && !pkt.l4_complete {
        Some(reason::DROP_TRUNCATED)
    } else {
        None
    }
}

/// Traffic a pod sends. An established flow needs one lookup (its CT
/// entry), which also keeps flows of a Service that was just deleted alive
/// until they end, as kube-proxy's conntrack does. Otherwise: is the
/// destination a service address at all, then the frontend and a backend.
#[inline(always)]
fn to_service(ctx: &TcContext, pkt: &mut Packet) -> Verdict {
    if !pkt.has_ports() {
        return if lb::is_service_addr(pkt.daddr) {
            Verdict::drop(reason::DROP_UNSUPPORTED_PROTO)
        } else {
            Verdict::pass(pass_reason(pkt))
        };
    }
    if pkt.frag == FRAG_LATER && !conntrack::fragment_ports(pkt) {
        return if lb::is_service_addr(pkt.daddr) {
            Verdict::drop(reason::DROP_FRAG_NO_STATE)
        } else {
            Verdict::pass(reason::PASS_FRAGMENT)
        };
    }
    let now = conntrack::now();
    if let Some(entry) = CT.get_ptr_mut(conntrack::key(pkt, CT_DIR_SERVICE))
        // SAFETY: pointer to a live map value.
        && !conntrack::is_stale(unsafe { &*entry }, pkt, now)
    {
        if let Some(r) = untranslatable(pkt) {
            return Verdict::drop(r);
        }
        return established(ctx, pkt, entry, now);
    }
    if !lb::is_service_addr(pkt.daddr) {
        return Verdict::pass(pass_reason(pkt));
    }
    if let Some(r) = untranslatable(pkt) {
        return Verdict::drop(r);
    }
    if pkt.frag == FRAG_LATER {
        return Verdict::drop(reason::DROP_FRAG_NO_STATE);
    }
    let Some(fe) = lb::frontend(pkt) else {
        return refuse(ctx, pkt, reason::REJECT_UNKNOWN_PORT);
    };
    new_connection(ctx, pkt, &fe, now)
}

#[inline(always)]
fn refuse(ctx: &TcContext, pkt: &Packet, why: u32) -> Verdict {
    match reject::port_unreachable(ctx, pkt) {
        Ok(action) => Verdict {
            action,
            reason: why,
        },
        Err(()) => Verdict::drop(reason::DROP_REJECT_FAILED),
    }
}

/// A packet of a flow that has its backend.
#[inline(always)]
fn established(ctx: &TcContext, pkt: &mut Packet, entry: *mut CtEntry, now: u32) -> Verdict {
    let len = pkt.len;
    let new_bits = conntrack::observe(entry, pkt, now, true);
    // SAFETY: pointer to a live map value; copied so later map updates
    // cannot change the rewrite half-way.
    let e = unsafe { *entry };
    conntrack::remember_fragment(pkt);
    if nat::apply(ctx, pkt, &e).is_err() {
        return Verdict::drop(reason::DROP_REWRITE);
    }
    conntrack::sync_partner(entry, pkt, CT_DIR_REPLY, new_bits, now);
    count_service(
        e.svc_id,
        SvcDelta {
            len,
            new_conn: false,
            refused: false,
        },
    );
    forward(ctx, &e, reason::FWD_ESTABLISHED)
}

/// The first packet of a flow: choose a backend, create both CT entries.
#[inline(always)]
fn new_connection(ctx: &TcContext, pkt: &mut Packet, fe: &ServiceValue, now: u32) -> Verdict {
    let len = pkt.len;
    if fe.count == 0 {
        count_service(
            fe.svc_id,
            SvcDelta {
                len,
                new_conn: false,
                refused: true,
            },
        );
        return refuse(ctx, pkt, reason::REJECT_NO_BACKEND);
    }
    let Some((backend_id, be)) = lb::pick_backend(pkt, fe) else {
        return Verdict::drop(reason::DROP_MAP_INCONSISTENT);
    };
    let Ok(e) = conntrack::create(pkt, fe.svc_id, backend_id, &be, ifindex(ctx), now) else {
        return Verdict::drop(reason::DROP_CT_CREATE);
    };
    conntrack::remember_fragment(pkt);
    if nat::apply(ctx, pkt, &e).is_err() {
        return Verdict::drop(reason::DROP_REWRITE);
    }
    count_service(
        e.svc_id,
        SvcDelta {
            len,
            new_conn: true,
            refused: false,
        },
    );
    forward(ctx, &e, reason::FWD_NEW)
}

/// Passes a translated packet on, or turns a hairpinned one around.
#[inline(always)]
fn forward(ctx: &TcContext, e: &CtEntry, reason: u32) -> Verdict {
    if e.flags & CT_F_REDIRECT_BACK != 0 {
        return redirect_back(ctx, reason);
    }
    Verdict::pass(reason)
}

/// A pod's reply to a hairpinned flow of its own, sent to the hairpin
/// address: restore the frontend and turn it around into the pod.
#[inline(always)]
fn hairpin_reply(ctx: &TcContext, pkt: &mut Packet) -> Verdict {
    let v = reverse_nat(ctx, pkt, true);
    if v.reason != reason::REV_NAT {
        return v;
    }
    redirect_back(ctx, reason::HAIRPIN_REPLY)
}

/// Sends the packet back into the pod it came from. It was addressed to
/// the gateway's MAC; the pod would discard it as someone else's frame, so
/// the addresses are swapped as if the gateway had routed it back.
#[inline(always)]
fn redirect_back(ctx: &TcContext, reason: u32) -> Verdict {
    if packet::swap_macs(ctx).is_err() {
        return Verdict::drop(reason::DROP_REWRITE);
    }
    // SAFETY: plain helper call.
    let action = unsafe { bpf_redirect(ifindex(ctx), 0) } as i32;
    if action != TC_ACT_REDIRECT {
        return Verdict::drop(reason::DROP_REWRITE);
    }
    Verdict { action, reason }
}

/// Restores the frontend on replies of translated flows. `hairpin` says the
/// packet was sent to the hairpin address, which nothing else may receive,
/// so a miss is dropped instead of passed.
#[inline(always)]
fn reverse_nat(ctx: &TcContext, pkt: &mut Packet, hairpin: bool) -> Verdict {
    let miss = |pkt: &Packet| {
        if hairpin {
            Verdict::drop(reason::DROP_HAIRPIN_NO_STATE)
        } else {
            Verdict::pass(pass_reason(pkt))
        }
    };
    if !pkt.has_ports() {
        return miss(pkt);
    }
    if pkt.frag == FRAG_LATER && !conntrack::fragment_ports(pkt) {
        return if hairpin {
            Verdict::drop(reason::DROP_FRAG_NO_STATE)
        } else {
            Verdict::pass(reason::PASS_REPLY_FRAGMENT)
        };
    }
    let Some(entry) = CT.get_ptr_mut(conntrack::key(pkt, CT_DIR_REPLY)) else {
        return miss(pkt);
    };
    if let Some(r) = untranslatable(pkt) {
        return Verdict::drop(r);
    }
    let now = conntrack::now();
    let len = pkt.len;
    let new_bits = conntrack::observe(entry, pkt, now, false);
    // SAFETY: as in `translate`.
    let e = unsafe { *entry };
    conntrack::remember_fragment(pkt);
    if nat::apply(ctx, pkt, &e).is_err() {
        return Verdict::drop(reason::DROP_REWRITE);
    }
    conntrack::sync_partner(entry, pkt, CT_DIR_SERVICE, new_bits, now);
    count_service(
        e.svc_id,
        SvcDelta {
            len,
            new_conn: false,
            refused: false,
        },
    );
    Verdict::pass(reason::REV_NAT)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
