//! Sluice's TC programs.
//!
//! - `from_pod`, TC ingress of a pod's host-side veth: traffic the pod sends.
//!   Service frontends are translated to a backend (DNAT, connection
//!   tracked); a pod reaching itself is turned around at once (hairpin);
//!   whatever is then addressed to a pod on this node goes straight into
//!   that pod's veth (`deliver`).
//! - `to_pod`, TC egress of the same veth: traffic about to enter the pod.
//!   Replies of translated flows get the frontend back as their source.
//! - `from_netdev` / `to_netdev`, TC ingress / egress of the node's uplink:
//!   Services reached from outside the cluster, masquerade of pod traffic
//!   leaving it, and their replies.
//! - `from_overlay`, TC ingress of the VXLAN device: replies of external
//!   flows that a backend on another node served.
//!
//! - `sock_connect4` / `sock_sendmsg4`, cgroup socket hooks: a socket
//!   connecting or sending to a Service gets a backend before its first
//!   packet exists; `sock_recvmsg4` / `sock_getpeername4` show it the
//!   Service address back (`sock`).
//!
//! Every path ends in exactly one reason code, counted per CPU.
#![no_std]
#![no_main]
// Inline assembly for single-instruction unaligned packet access (access.rs).
#![feature(asm_experimental_arch)]

mod access;
mod conntrack;
mod csum;
mod deliver;
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
mod skb;
mod sock;
mod tracked;
mod verdict;

use aya_ebpf::{
    macros::{cgroup_sock_addr, classifier},
    programs::{SockAddrContext, TcContext},
};
use proxy_common::reason;

use crate::{maps::count_reason, packet::Parsed, verdict::Verdict};

/// Parses the packet and hands IPv4 to `handle`. `malformed` is what a bad
/// IPv4 header gets: dropped where pods send it, passed where the kernel
/// built or forwarded it (the stack judges those itself). A macro, not a
/// function taking the handler: through a closure LLVM may outline the
/// handler, and an outlined function returning a `Verdict` hands back a
/// stack pointer, which the verifier refuses.
macro_rules! run {
    ($ctx:expr, $malformed:expr, $handle:path) => {{
        let ctx = &$ctx;
        let v = match packet::parse(ctx) {
            Parsed::NotIpv4 => Verdict::pass(reason::PASS_NON_IPV4),
            Parsed::Malformed => $malformed,
            Parsed::Ipv4(mut pkt) => $handle(ctx, &mut pkt),
        };
        count_reason(v.reason, ctx.len());
        v.action
    }};
}

#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    run!(ctx, Verdict::drop(reason::DROP_MALFORMED), pod::from_pod)
}

#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    run!(ctx, Verdict::pass(reason::PASS_NOT_SERVICE), pod::to_pod)
}

#[classifier]
pub fn from_netdev(ctx: TcContext) -> i32 {
    run!(ctx, Verdict::pass(reason::PASS_UPLINK), netdev::from_netdev)
}

#[classifier]
pub fn to_netdev(ctx: TcContext) -> i32 {
    run!(ctx, Verdict::pass(reason::PASS_UPLINK), netdev::to_netdev)
}

#[classifier]
pub fn from_overlay(ctx: TcContext) -> i32 {
    run!(
        ctx,
        Verdict::pass(reason::PASS_OVERLAY),
        netdev::from_overlay
    )
}

#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    sock::translate(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::translate(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
