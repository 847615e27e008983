//! IPv4 parsing for the TC programs.
//!
//! Parsing never trusts the packet: every read is bounds-checked against
//! `data_end`, and the result says whether the L4 header the datapath would
//! rewrite is complete, so callers can refuse to translate instead of
//! rewriting bytes that are not there.

use aya_ebpf::{helpers::bpf_skb_pull_data, programs::TcContext};
use proxy_common::proto;

use crate::access::{load16, load32, store16, store32};

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IP_MIN_HLEN: usize = 20;
const IP_MF: u16 = 0x2000;
const IP_OFFSET_MASK: u16 = 0x1fff;

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;

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

/// The largest offset into a frame the datapath reads or writes at: far
/// beyond the last header field it touches (Ethernet, IPv4 with options,
/// an ICMP error's quote).
const MAX_OFFSET: usize = 511;

/// Headers the datapath reads in one pass: Ethernet, IPv4 with up to 40
/// bytes of options, and a TCP header without options.
const MAX_HEADERS: u32 = (ETH_HLEN + 60 + 20) as u32;

/// Not ICMP echo.
pub const ECHO_NONE: u8 = 0;
/// ICMP echo request: its identifier plays the source port.
pub const ECHO_REQUEST: u8 = 1;
/// ICMP echo reply: its identifier plays the destination port.
pub const ECHO_REPLY: u8 = 2;

pub struct Packet {
    /// NBO, as on the wire.
    pub saddr: u32,
    pub daddr: u32,
    /// NBO; zero when the L4 header is absent. For ICMP echo the identifier
    /// is the source port of a request and the destination port of a reply,
    /// so a reply's tuple is the swapped request tuple, as for TCP and UDP.
    pub sport: u16,
    pub dport: u16,
    /// `ECHO_*`.
    pub echo: u8,
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
            proto::ICMP if self.echo != ECHO_NONE => Some(self.l4_off + 2),
            _ => None,
        }
    }

    /// Where the source and destination ports (ICMP echo: the identifier)
    /// are, if the packet carries them.
    #[inline(always)]
    pub fn port_offsets(&self) -> (Option<usize>, Option<usize>) {
        let l4 = self.l4_off as usize;
        if self.frag == FRAG_LATER {
            return (None, None);
        }
        if self.has_ports() {
            return (Some(l4), Some(l4 + 2));
        }
        match self.echo {
            ECHO_REQUEST => (Some(l4 + 4), None),
            ECHO_REPLY => (None, Some(l4 + 4)),
            _ => (None, None),
        }
    }

    /// Whether the L4 checksum covers the addresses (TCP and UDP have a
    /// pseudo-header; ICMP does not).
    #[inline(always)]
    pub fn csum_covers_addresses(&self) -> bool {
        self.has_ports()
    }

    /// Whether the packet is TCP or UDP (what Services translate).
    #[inline(always)]
    pub fn has_ports(&self) -> bool {
        self.proto == proto::TCP || self.proto == proto::UDP
    }

    /// Whether masquerade can translate the packet: TCP, UDP, ICMP echo.
    #[inline(always)]
    pub fn nat_capable(&self) -> bool {
        self.has_ports() || self.echo != ECHO_NONE
    }
}

pub enum Parsed {
    NotIpv4,
    Malformed,
    Ipv4(Packet),
}

#[inline(always)]
pub fn at(ctx: &TcContext, off: usize, len: usize) -> Option<usize> {
    // An explicit bound on the offset: the verifier may have lost track of
    // a header offset that went through the stack, and rejects a packet
    // pointer whose variable part could exceed 64 KiB however the end is
    // checked afterwards.
    if off > MAX_OFFSET {
        return None;
    }
    let p = ctx.data() + off;
    if p + len > ctx.data_end() {
        return None;
    }
    Some(p)
}

/// Bytes from the frame's start the datapath may read: Ethernet, the IPv4
/// header with its options, and the L4 header it uses (TCP 20, UDP 8, for
/// ICMP an error's quote), capped at [`MAX_HEADERS`] and the packet's
/// length. Judged from the linear part when it holds the IPv4 header;
/// otherwise the cap.
#[inline(always)]
fn header_need(ctx: &TcContext, len: u32) -> u32 {
    let cap = if len < MAX_HEADERS { len } else { MAX_HEADERS };
    let Some(ip) = at(ctx, ETH_HLEN, IP_MIN_HLEN) else {
        return cap;
    };
    // SAFETY: `ip` is IP_MIN_HLEN bytes inside the packet (checked by `at`).
    let (w0, w2) = unsafe { (load32(ip), load32(ip + 8)) };
    let ihl = u32::from(w0 as u8 & 0x0f) * 4;
    let l4 = match (w2 >> 8) as u8 {
        proto::TCP => 20,
        proto::UDP => 8,
        // Header, then the quoted IPv4 header (with options) and 8 bytes.
        proto::ICMP => 8 + 60 + 8,
        _ => 0,
    };
    let need = ETH_HLEN as u32 + ihl + l4;
    if need < cap { need } else { cap }
}

#[inline(always)]
pub fn parse(ctx: &TcContext) -> Parsed {
    let len = ctx.len();
    // Headers of a non-linear skb may sit outside the linear area; pull what
    // the datapath reads into it, and no more: a pull past the headers
    // (into a TCP segment's payload, which sits in page fragments) copies
    // the head of what is usually a clone, on every packet.
    let need = header_need(ctx, len);
    if (ctx.data_end() - ctx.data()) < need as usize {
        // SAFETY: plain helper call on the program's own skb.
        unsafe { bpf_skb_pull_data(ctx.skb.skb as *mut _, need) };
    }

    let Some(eth) = at(ctx, 0, ETH_HLEN) else {
        return Parsed::NotIpv4;
    };
    // SAFETY: `eth` is ETH_HLEN bytes inside the packet (checked by `at`).
    if unsafe { load16(eth + 12) } != ETH_P_IP.to_be() {
        return Parsed::NotIpv4;
    }
    let Some(ip) = at(ctx, ETH_HLEN, IP_MIN_HLEN) else {
        return Parsed::Malformed;
    };
    // Little-endian words of the fixed header: byte 0 is the low byte.
    // SAFETY: `ip` is IP_MIN_HLEN bytes inside the packet (checked by `at`).
    let (w0, w1, w2, saddr, daddr) = unsafe {
        (
            load32(ip),
            load32(ip + 4),
            load32(ip + 8),
            load32(ip + 12),
            load32(ip + 16),
        )
    };
    let vihl = w0 as u8;
    let tot_len = u32::from(u16::from_be((w0 >> 16) as u16));
    let ip_id = w1 as u16;
    let frag_off = u16::from_be((w1 >> 16) as u16);
    let l4proto = (w2 >> 8) as u8;

    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < IP_MIN_HLEN {
        return Parsed::Malformed;
    }
    // A datagram longer than the frame is truncated; shorter is padding.
    if tot_len < ihl as u32 || tot_len + ETH_HLEN as u32 > len {
        return Parsed::Malformed;
    }
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
        echo: ECHO_NONE,
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
        proto::ICMP => return Parsed::Ipv4(parse_echo(ctx, pkt, l4_off, l4_avail)),
        _ => return Parsed::Ipv4(pkt),
    };
    if let Some(l4) = at(ctx, l4_off, 4) {
        // SAFETY: 4 bytes at `l4` are inside the packet (checked by `at`).
        let ports = unsafe { load32(l4) };
        pkt.sport = ports as u16;
        pkt.dport = (ports >> 16) as u16;
    }
    if l4proto == proto::TCP
        && let Some(l4) = at(ctx, l4_off, 14)
    {
        // Bytes 12-13: data offset, flags.
        // SAFETY: 14 bytes at `l4` are inside the packet (checked by `at`).
        pkt.tcp_flags = (unsafe { load16(l4 + 12) } >> 8) as u8;
    }
    // Complete means both inside the datagram and inside the linear data.
    pkt.l4_complete = l4_avail >= need && at(ctx, l4_off, need as usize).is_some();
    Parsed::Ipv4(pkt)
}

/// ICMP echo: type, code, checksum, identifier, sequence.
#[inline(always)]
fn parse_echo(ctx: &TcContext, mut pkt: Packet, l4_off: usize, l4_avail: u32) -> Packet {
    if l4_avail < 8 {
        return pkt;
    }
    let Some(l4) = at(ctx, l4_off, 8) else {
        return pkt;
    };
    // SAFETY: the eight bytes are inside the packet (checked above).
    let (kind, id) = unsafe { (load16(l4) as u8, load16(l4 + 4)) };
    match kind {
        ICMP_ECHO_REQUEST => {
            pkt.echo = ECHO_REQUEST;
            pkt.sport = id;
        }
        ICMP_ECHO_REPLY => {
            pkt.echo = ECHO_REPLY;
            pkt.dport = id;
        }
        _ => return pkt,
    }
    pkt.l4_complete = true;
    pkt
}

/// Swaps the Ethernet source and destination addresses.
#[inline(always)]
pub fn swap_macs(ctx: &TcContext) -> Result<(), ()> {
    let Some(p) = at(ctx, 0, 12) else {
        return Err(());
    };
    // SAFETY: the 12 bytes are inside the packet (checked above).
    unsafe {
        let (d0, d1) = (load32(p), load16(p + 4));
        let (s0, s1) = (load32(p + 6), load16(p + 10));
        store32(p, s0);
        store16(p + 4, s1);
        store32(p + 6, d0);
        store16(p + 10, d1);
    }
    Ok(())
}
