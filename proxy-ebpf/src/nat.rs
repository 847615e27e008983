//! Address and port rewrites with checksum maintenance.
//!
//! Addresses and ports are written directly into the packet and the IPv4
//! header checksum is updated incrementally here (RFC 1624). The L4
//! checksum goes through `bpf_l4_csum_replace` in diff mode, at most twice
//! (addresses, which are part of the pseudo-header, and ports): only the
//! kernel knows the skb's checksum state, and for a CHECKSUM_PARTIAL skb (a
//! pod's TCP on a veth) the field holds the pseudo-header sum, which must
//! see the address change but not the port change. The helper also keeps
//! UDP's "no checksum" zero. Doing it this way costs two helper calls per
//! packet instead of ten.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::bpf_l4_csum_replace,
    programs::TcContext,
};
use proxy_common::{
    CtEntry,
    ct::{CT_F_REWRITE_DST, CT_F_REWRITE_SRC},
    proto,
};

use crate::{
    access::{load16, store16, store32},
    csum::{add, delta16, delta32, updated},
    packet::{self, ETH_HLEN, Packet},
};

pub struct RewriteError;

/// The address of `len` bytes at `off`, if they are inside the packet.
#[inline(always)]
fn at(ctx: &TcContext, off: usize, len: usize) -> Result<usize, RewriteError> {
    packet::at(ctx, off, len).ok_or(RewriteError)
}

/// Applies a CT entry's rewrite to the packet and updates `pkt` to match.
#[inline(always)]
pub fn apply(ctx: &TcContext, pkt: &mut Packet, e: &CtEntry) -> Result<(), RewriteError> {
    let ip = ETH_HLEN;
    // Later fragments carry no L4 header: the first fragment's rewrite
    // covered the ports and the checksum of the whole datagram.
    let (sport_at, dport_at) = pkt.port_offsets();
    let mut addr_diff = 0u32;
    let mut port_diff = 0u32;
    // A port rewritten to itself (port == targetPort) needs no second
    // checksum update: the helper call is the costliest step here.
    let mut ports_rewritten = false;
    // SAFETY: every address is bounds-checked against data_end by `at`.
    unsafe {
        if e.flags & CT_F_REWRITE_DST != 0 {
            store32(at(ctx, ip + 16, 4)?, e.new_daddr);
            addr_diff = add(addr_diff, delta32(pkt.daddr, e.new_daddr));
            if let Some(off) = dport_at {
                store16(at(ctx, off, 2)?, e.new_dport);
                port_diff = add(port_diff, delta16(pkt.dport, e.new_dport));
                ports_rewritten |= pkt.dport != e.new_dport;
            }
            pkt.daddr = e.new_daddr;
            pkt.dport = e.new_dport;
        }
        if e.flags & CT_F_REWRITE_SRC != 0 {
            store32(at(ctx, ip + 12, 4)?, e.new_saddr);
            addr_diff = add(addr_diff, delta32(pkt.saddr, e.new_saddr));
            if let Some(off) = sport_at {
                store16(at(ctx, off, 2)?, e.new_sport);
                port_diff = add(port_diff, delta16(pkt.sport, e.new_sport));
                ports_rewritten |= pkt.sport != e.new_sport;
            }
            pkt.saddr = e.new_saddr;
            pkt.sport = e.new_sport;
        }
        let check = at(ctx, ip + 10, 2)?;
        store16(check, updated(load16(check), addr_diff));
    }
    if let Some(off) = pkt.l4_csum_off() {
        let mangled0 = if pkt.proto == proto::UDP {
            BPF_F_MARK_MANGLED_0 as u64
        } else {
            0
        };
        // Size 0: `to` is a precomputed checksum difference.
        // SAFETY: helper calls on the program's own skb.
        unsafe {
            if pkt.csum_covers_addresses()
                && bpf_l4_csum_replace(
                    ctx.skb.skb,
                    off,
                    0,
                    addr_diff as u64,
                    mangled0 | BPF_F_PSEUDO_HDR as u64,
                ) != 0
            {
                return Err(RewriteError);
            }
            if ports_rewritten
                && bpf_l4_csum_replace(ctx.skb.skb, off, 0, port_diff as u64, mangled0) != 0
            {
                return Err(RewriteError);
            }
        }
    }
    Ok(())
}
