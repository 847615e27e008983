//! Refusing a connection the way kube-proxy's REJECT does: the packet is
//! turned into an ICMP port-unreachable for its sender and sent back out of
//! the interface it came from. For TCP the client's connect() fails at once
//! with ECONNREFUSED; for UDP the next receive on a connected socket does.

use aya_ebpf::{
    bindings::TC_ACT_REDIRECT,
    helpers::{bpf_csum_diff, bpf_skb_change_tail, bpf_skb_load_bytes},
    programs::TcContext,
};

use crate::{
    csum,
    packet::{ETH_HLEN, Packet},
    skb,
};

/// Bytes of the offending datagram an ICMP error quotes: its IP header
/// (callers never reject packets with options) and 8 bytes of L4 header.
const QUOTE_LEN: usize = 28;

#[repr(C, align(4))]
struct Ipv4Header {
    vihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag_off: u16,
    ttl: u8,
    proto: u8,
    check: u16,
    saddr: u32,
    daddr: u32,
}

#[repr(C, align(4))]
struct IcmpUnreachable {
    kind: u8,
    code: u8,
    check: u16,
    unused: u32,
    quote: [u8; QUOTE_LEN],
}

const IP_LEN: usize = size_of::<Ipv4Header>();
const ICMP_LEN: usize = size_of::<IcmpUnreachable>();
const FRAME_LEN: usize = ETH_HLEN + IP_LEN + ICMP_LEN;

/// Copies exactly `N` bytes at `offset` (a constant size, which the verifier
/// needs; aya's `load_bytes` clamps the length to the packet).
#[inline(always)]
fn load_exact<const N: usize>(ctx: &TcContext, offset: u32, dst: &mut [u8; N]) -> Result<(), ()> {
    // SAFETY: `dst` is N writable bytes on our stack.
    let rc = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            offset,
            dst.as_mut_ptr() as *mut _,
            N as u32,
        )
    };
    if rc == 0 { Ok(()) } else { Err(()) }
}

#[inline(always)]
fn checksum<T>(v: &T) -> u16 {
    // SAFETY: `v` is a stack object of size_of::<T>() bytes, a multiple of 4.
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            v as *const T as *mut u32,
            size_of::<T>() as u32,
            0,
        )
    } as u64;
    csum::of_sum(sum)
}

/// Rewrites the packet into an ICMP port-unreachable and redirects it back
/// to its sender. Returns the TC verdict, or `Err` if the packet could not be
/// rewritten (it is then dropped by the caller).
#[inline(always)]
pub fn port_unreachable(ctx: &TcContext, pkt: &Packet) -> Result<i32, ()> {
    let mut eth = [0u8; 12];
    load_exact(ctx, 0, &mut eth)?;
    let mut icmp = IcmpUnreachable {
        kind: 3,
        code: 3,
        check: 0,
        unused: 0,
        quote: [0; QUOTE_LEN],
    };
    load_exact(ctx, ETH_HLEN as u32, &mut icmp.quote)?;
    icmp.check = checksum(&icmp);
    let mut ip = Ipv4Header {
        vihl: 0x45,
        tos: 0xc0,
        tot_len: ((IP_LEN + ICMP_LEN) as u16).to_be(),
        id: 0,
        frag_off: 0,
        ttl: 64,
        proto: proxy_common::proto::ICMP,
        check: 0,
        saddr: pkt.daddr,
        daddr: pkt.saddr,
    };
    ip.check = checksum(&ip);

    // SAFETY: helper on the program's own skb.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb as *mut _, FRAME_LEN as u32, 0) } != 0 {
        return Err(());
    }
    let mut mac = [0u8; 14];
    mac[..6].copy_from_slice(&eth[6..12]);
    mac[6..12].copy_from_slice(&eth[..6]);
    mac[12] = 0x08;
    ctx.store(0, &mac, 0).map_err(|_| ())?;
    ctx.store(ETH_HLEN, &ip, 0).map_err(|_| ())?;
    ctx.store(ETH_HLEN + IP_LEN, &icmp, 0).map_err(|_| ())?;

    let v = skb::redirect_here(ctx, 0);
    if v.action == TC_ACT_REDIRECT {
        Ok(v.action)
    } else {
        Err(())
    }
}
