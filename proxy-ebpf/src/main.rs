//! Sluice's TC programs.
//!
//! - `from_pod`, TC ingress of a pod's host-side veth: traffic the pod sends.
//!   Service frontends are translated to a backend (DNAT, connection
//!   tracked); a pod reaching itself is turned around at once (hairpin).
//! - `to_pod`, TC egress of the same veth: traffic about to enter the pod.
//!   Replies of translated flows get the frontend back as their source.
//! - `from_netdev` / `to_netdev`, TC ingress / egress of the node's uplink:
//!   Services reached from outside the cluster, masquerade of pod traffic
//!   leaving it, and their replies.
//! - `from_overlay`, TC ingress of the VXLAN device: replies of external
//!   flows that a backend on another node served.
//!
//! Every path ends in exactly one reason code, counted per CPU.
#![no_std]
#![no_main]
// Inline assembly for single-instruction unaligned packet access (access.rs).
#![feature(asm_experimental_arch)]

mod access;
mod conntrack;
mod icmp_error;
mod lb;
mod maps;
mod nat;
mod netdev;
mod packet;
mod pod;
mod reject;
mod route;
mod service;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::bpf_redirect,
    macros::classifier,
    programs::TcContext,
};
use proxy_common::{CtEntry, ct::CT_DIR_REPLY, reason};

use crate::{
    conntrack::Table,
    maps::{SvcDelta, count_reason, count_service},
    packet::{Packet, Parsed},
};

const PASS: i32 = TC_ACT_OK;
const DROP: i32 = TC_ACT_SHOT;

/// A verdict and the reason it is counted under.
pub struct Verdict {
    action: i32,
    reason: u32,
}

impl Verdict {
    pub const fn pass(reason: u32) -> Self {
        Self {
            action: PASS,
            reason,
        }
    }
    pub const fn drop(reason: u32) -> Self {
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

/// Parses the packet and hands IPv4 to `handle`. `malformed` is what a bad
/// IPv4 header gets: dropped where pods send it, passed where the kernel
/// built or forwarded it (the stack judges those itself).
#[inline(always)]
fn run(
    ctx: &TcContext,
    malformed: Verdict,
    handle: impl FnOnce(&TcContext, &mut Packet) -> Verdict,
) -> i32 {
    let v = match packet::parse(ctx) {
        Parsed::NotIpv4 => Verdict::pass(reason::PASS_NON_IPV4),
        Parsed::Malformed => malformed,
        Parsed::Ipv4(mut pkt) => handle(ctx, &mut pkt),
    };
    count_reason(v.reason, ctx.len());
    v.action
}

#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    run(&ctx, Verdict::drop(reason::DROP_MALFORMED), pod::from_pod)
}

#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    run(&ctx, Verdict::pass(reason::PASS_NOT_SERVICE), pod::to_pod)
}

#[classifier]
pub fn from_netdev(ctx: TcContext) -> i32 {
    run(
        &ctx,
        Verdict::pass(reason::PASS_UPLINK),
        netdev::from_netdev,
    )
}

#[classifier]
pub fn to_netdev(ctx: TcContext) -> i32 {
    run(&ctx, Verdict::pass(reason::PASS_UPLINK), netdev::to_netdev)
}

#[classifier]
pub fn from_overlay(ctx: TcContext) -> i32 {
    run(
        &ctx,
        Verdict::pass(reason::PASS_OVERLAY),
        netdev::from_overlay,
    )
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

/// Translates a reply of a tracked flow by its reply entry, refreshes the
/// flow's other entry (`partner_dir`) and counts it under `ok`. `None` when
/// the entry is dead: it is removed, and the caller treats the packet as
/// untracked.
#[inline(always)]
fn reverse<C: Table>(
    ctx: &TcContext,
    pkt: &mut Packet,
    entry: *mut CtEntry,
    partner_dir: u8,
    ok: u32,
) -> Option<Verdict> {
    let now = conntrack::now();
    let before = conntrack::key(pkt, CT_DIR_REPLY);
    // SAFETY: pointer to a live map value, copied.
    let current = unsafe { *entry };
    if conntrack::reply_is_stale(&current, pkt, now) {
        conntrack::retire::<C>(&before, &current);
        return None;
    }
    if let Some(r) = service::untranslatable(pkt) {
        return Some(Verdict::drop(r));
    }
    let len = pkt.len;
    let new_bits = conntrack::observe(entry, pkt, now, false);
    // SAFETY: pointer to a live map value; copied before the rewrite.
    let e = unsafe { *entry };
    conntrack::remember_fragment(pkt);
    if nat::apply(ctx, pkt, &e).is_err() {
        return Some(Verdict::drop(reason::DROP_REWRITE));
    }
    conntrack::sync_partner::<C>(entry, &before, pkt, partner_dir, new_bits, now);
    count_service(
        e.svc_id,
        SvcDelta {
            len,
            new_conn: false,
            refused: false,
        },
    );
    Some(service::forward(ctx, pkt, &e, ok))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
