//! IPv4 parsing for the TC programs.
//!
//! Parsing never trusts the packet: every read is bounds-checked against
//! `data_end`, and the result says whether the L4 header the datapath would
//! rewrite is complete, so callers can refuse to translate instead of
//! rewriting bytes that are not there.

use core::mem::size_of;

use aya_ebpf::{helpers::bpf_skb_pull_data, programs::TcContext};
use proxy_common::proto;

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
pub const IP_CSUM_OFF: u32 = (ETH_HLEN + 10) as u32;
pub const IP_SADDR_OFF: u32 = (ETH_HLEN + 12) as u32;
pub const IP_DADDR_OFF: u32 = (ETH_HLEN + 16) as u32;
const IP_MIN_HLEN: usize = 20;
const IP_MF: u16 = 0x2000;
const IP_OFFSET_MASK: u16 = 0x1fff;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Not a fragment.
pub const FRAG_NONE: u8 = 0;
/// First fragment: carries the L4 header.
pub const FRAG_FIRST: u8 = 1;
/// Later fragment: no L4 header; ports come from the fragment map.
pub const FRAG_LATER: u8 = 2;

/// Headers the datapath reads in one pass: Ethernet, IPv4 with up to 40
/// bytes of options, and a TCP header without options.
const MAX_HEADERS: u32 = (ETH_HLEN + 60 + 20) as u32;

pub struct Packet {
    /// NBO, as on the wire.
    pub saddr: u32,
    pub daddr: u32,
    /// NBO; zero when the L4 header is absent.
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    /// `FRAG_*`.
    pub frag: u8,
    /// IHL > 5.
    pub has_options: bool,
    /// The L4 header (TCP 20 bytes, UDP 8) is fully present.
    pub l4_complete: bool,
    /// IP identification, NBO.
    pub ip_id: u16,
    /// Offset of the L4 header from the start of the frame.
    pub l4_off: u32,
    /// skb length, for byte counters.
    pub len: u32,
}

impl Packet {
    /// Offset of the L4 checksum, when the protocol has one we maintain.
    #[inline(always)]
    pub fn l4_csum_off(&self) -> Option<u32> {
        if self.frag == FRAG_LATER {
            return None;
        }
        match self.proto {
            proto::TCP => Some(self.l4_off + 16),
            proto::UDP => Some(self.l4_off + 6),
            _ => None,
        }
    }

    /// Whether the datapath can translate this packet's ports.
    #[inline(always)]
    pub fn has_ports(&self) -> bool {
        self.proto == proto::TCP || self.proto == proto::UDP
    }
}

pub enum Parsed {
    NotIpv4,
    Malformed,
    Ipv4(Packet),
}

#[inline(always)]
fn ptr_at<T>(ctx: &TcContext, off: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

#[inline(always)]
fn read<T: Copy>(ctx: &TcContext, off: usize) -> Option<T> {
    // SAFETY: bounds checked against data_end above; packet data has no
    // alignment guarantee, hence the unaligned read.
    ptr_at::<T>(ctx, off).map(|p| unsafe { p.read_unaligned() })
}

#[inline(always)]
pub fn parse(ctx: &TcContext) -> Parsed {
    let len = ctx.len();
    // Headers of a non-linear skb may sit outside the linear area; pull what
    // the parser reads (or the whole packet, if shorter) into it.
    let want = if len < MAX_HEADERS { len } else { MAX_HEADERS };
    if (ctx.data_end() - ctx.data()) < want as usize {
        // SAFETY: plain helper call on the program's own skb.
        unsafe { bpf_skb_pull_data(ctx.skb.skb as *mut _, want) };
    }

    let Some(ethertype) = read::<u16>(ctx, 12) else {
        return Parsed::NotIpv4;
    };
    if ethertype != ETH_P_IP.to_be() {
        return Parsed::NotIpv4;
    }
    let Some(vihl) = read::<u8>(ctx, ETH_HLEN) else {
        return Parsed::Malformed;
    };
    let Some(tot_len) = read::<u16>(ctx, ETH_HLEN + 2) else {
        return Parsed::Malformed;
    };
    let Some(frag_off) = read::<u16>(ctx, ETH_HLEN + 6) else {
        return Parsed::Malformed;
    };
    let Some(ip_id) = read::<u16>(ctx, ETH_HLEN + 4) else {
        return Parsed::Malformed;
    };
    let Some(l4proto) = read::<u8>(ctx, ETH_HLEN + 9) else {
        return Parsed::Malformed;
    };
    let Some(saddr) = read::<u32>(ctx, ETH_HLEN + 12) else {
        return Parsed::Malformed;
    };
    let Some(daddr) = read::<u32>(ctx, ETH_HLEN + 16) else {
        return Parsed::Malformed;
    };

    let ihl = ((vihl & 0x0f) as usize) * 4;
    let tot_len = u16::from_be(tot_len) as u32;
    if vihl >> 4 != 4 || ihl < IP_MIN_HLEN {
        return Parsed::Malformed;
    }
    // A datagram longer than the frame is truncated; shorter is padding.
    if tot_len < ihl as u32 || tot_len + ETH_HLEN as u32 > len {
        return Parsed::Malformed;
    }
    let frag_off = u16::from_be(frag_off);
    let frag = if frag_off & IP_OFFSET_MASK != 0 {
        FRAG_LATER
    } else if frag_off & IP_MF != 0 {
        FRAG_FIRST
    } else {
        FRAG_NONE
    };

    let l4_off = ETH_HLEN + ihl;
    let l4_avail = tot_len - ihl as u32;
    let mut pkt = Packet {
        saddr,
        daddr,
        sport: 0,
        dport: 0,
        proto: l4proto,
        tcp_flags: 0,
        frag,
        has_options: ihl > IP_MIN_HLEN,
        l4_complete: false,
        ip_id,
        l4_off: l4_off as u32,
        len,
    };
    if frag == FRAG_LATER {
        return Parsed::Ipv4(pkt);
    }
    let need = match l4proto {
        proto::TCP => 20,
        proto::UDP => 8,
        _ => return Parsed::Ipv4(pkt),
    };
    if let Some(p) = ptr_at::<u32>(ctx, l4_off) {
        let p = p as *const u16;
        // SAFETY: the four bytes at `p` are inside the packet (checked above).
        unsafe {
            pkt.sport = p.read_unaligned();
            pkt.dport = p.add(1).read_unaligned();
        }
    }
    if l4proto == proto::TCP
        && let Some(flags) = read::<u8>(ctx, l4_off + 13)
    {
        pkt.tcp_flags = flags;
    }
    // Complete means both inside the datagram and inside the linear data.
    pkt.l4_complete = l4_avail >= need && ptr_at::<u8>(ctx, l4_off + need as usize - 1).is_some();
    Parsed::Ipv4(pkt)
}

/// Swaps the Ethernet source and destination addresses.
#[inline(always)]
pub fn swap_macs(ctx: &TcContext) -> Result<(), ()> {
    let Some(macs) = read::<[u8; 12]>(ctx, 0) else {
        return Err(());
    };
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&macs[6..]);
    swapped[6..].copy_from_slice(&macs[..6]);
    ctx.store(0, &swapped, 0).map_err(|_| ())
}
