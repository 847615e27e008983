//! Address and port rewrites with checksum maintenance.
//!
//! Rewrites go through the skb helpers rather than direct stores: the helpers
//! keep the L4 checksum right whatever the skb's checksum state (a pod's TCP
//! packets on a veth are CHECKSUM_PARTIAL, where only the pseudo-header part
//! may be touched), unshare cloned data, and handle UDP's "no checksum" zero.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use proxy_common::{CtEntry, ct::CT_F_REWRITE_DST, ct::CT_F_REWRITE_SRC, proto};

use crate::packet::{IP_CSUM_OFF, IP_DADDR_OFF, IP_SADDR_OFF, Packet};

pub struct RewriteError;

#[inline(always)]
fn l4_flags(pkt: &Packet, size: u64) -> u64 {
    let mangled = if pkt.proto == proto::UDP {
        BPF_F_MARK_MANGLED_0 as u64
    } else {
        0
    };
    size | mangled
}

#[inline(always)]
fn set_addr(
    ctx: &TcContext,
    pkt: &Packet,
    off: u32,
    old: u32,
    new: u32,
) -> Result<(), RewriteError> {
    if old == new {
        return Ok(());
    }
    ctx.store(off as usize, &new, 0).map_err(|_| RewriteError)?;
    ctx.l3_csum_replace(IP_CSUM_OFF as usize, old as u64, new as u64, 4)
        .map_err(|_| RewriteError)?;
    if let Some(csum) = pkt.l4_csum_off() {
        ctx.l4_csum_replace(
            csum as usize,
            old as u64,
            new as u64,
            l4_flags(pkt, 4) | BPF_F_PSEUDO_HDR as u64,
        )
        .map_err(|_| RewriteError)?;
    }
    Ok(())
}

#[inline(always)]
fn set_port(
    ctx: &TcContext,
    pkt: &Packet,
    off: u32,
    old: u16,
    new: u16,
) -> Result<(), RewriteError> {
    // Later fragments carry no ports: the first fragment's rewrite covers them.
    let Some(csum) = pkt.l4_csum_off() else {
        return Ok(());
    };
    if old == new {
        return Ok(());
    }
    ctx.store(off as usize, &new, 0).map_err(|_| RewriteError)?;
    ctx.l4_csum_replace(csum as usize, old as u64, new as u64, l4_flags(pkt, 2))
        .map_err(|_| RewriteError)
}

/// Applies a CT entry's rewrite to the packet and updates `pkt` to match.
#[inline(always)]
pub fn apply(ctx: &TcContext, pkt: &mut Packet, e: &CtEntry) -> Result<(), RewriteError> {
    if e.flags & CT_F_REWRITE_DST != 0 {
        set_addr(ctx, pkt, IP_DADDR_OFF, pkt.daddr, e.new_daddr)?;
        set_port(ctx, pkt, pkt.l4_off + 2, pkt.dport, e.new_dport)?;
        pkt.daddr = e.new_daddr;
        pkt.dport = e.new_dport;
    }
    if e.flags & CT_F_REWRITE_SRC != 0 {
        set_addr(ctx, pkt, IP_SADDR_OFF, pkt.saddr, e.new_saddr)?;
        set_port(ctx, pkt, pkt.l4_off, pkt.sport, e.new_sport)?;
        pkt.saddr = e.new_saddr;
        pkt.sport = e.new_sport;
    }
    Ok(())
}
