//! The program's own socket buffer: which interface it is on, and sending
//! it back out of that interface.

use aya_ebpf::{bindings::TC_ACT_REDIRECT, helpers::bpf_redirect, programs::TcContext};
use proxy_common::reason;

use crate::{packet, verdict::Verdict};

/// The interface the packet is on.
#[inline(always)]
pub fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: reading a field of the program's own __sk_buff.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// Redirects the packet out of the interface it is on (counted as
/// `reason`), or drops it when the kernel refuses.
#[inline(always)]
pub fn redirect_here(ctx: &TcContext, reason: u32) -> Verdict {
    // SAFETY: plain helper call.
    let action = unsafe { bpf_redirect(ifindex(ctx), 0) } as i32;
    if action != TC_ACT_REDIRECT {
        return Verdict::drop(reason::DROP_REWRITE);
    }
    Verdict::action(action, reason)
}

/// Sends the packet back into the pod it came from. It was addressed to
/// the gateway's MAC; the pod would discard it as someone else's frame, so
/// the addresses are swapped as if the gateway had routed it back.
#[inline(always)]
pub fn redirect_back(ctx: &TcContext, reason: u32) -> Verdict {
    if packet::swap_macs(ctx).is_err() {
        return Verdict::drop(reason::DROP_REWRITE);
    }
    redirect_here(ctx, reason)
}
