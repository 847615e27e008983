//! ICMP errors about translated flows.
//!
//! A client pod C sends to frontend V:v; the datapath rewrites the packet to
//! backend B:b. An ICMP error about it (port unreachable from B, time
//! exceeded or fragmentation needed from a router on the way) quotes the
//! packet as rewritten, C:c -> B:b, and the client's kernel matches no
//! socket to it: a UDP client never learns the port is closed, a TCP client
//! never learns the path MTU. This makes the error about C:c -> V:v, from V
//! if B sent it, as conntrack's ICMP translation does for kube-proxy.
//!
//! Only plain DNAT flows are translated (the reply entry rewrites the
//! source only); the quoted L4 checksum is left as it is (no receiver
//! checks it, and it may not even be quoted whole).

use aya_ebpf::programs::TcContext;
use proxy_common::{
    CtKey,
    ct::{CT_DIR_REPLY, CT_F_REWRITE_DST, CT_F_REWRITE_SRC},
    proto, reason,
};

use crate::{
    access::{load16, load32, store16, store32},
    conntrack,
    csum::{add, delta16, delta32, updated},
    packet::{ETH_HLEN, FRAG_NONE, Packet},
    verdict::Verdict,
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
/// ICMP header, then the quoted IPv4 header (no options) and the first
/// four bytes of its L4 header (the ports).
const QUOTE_LEN: usize = 8 + 20 + 4;

/// `to_pod`: translates an ICMP error about a flow this node DNATed back
/// to the frontend the client used; anything else passes unchanged.
#[inline(always)]
pub fn to_client(ctx: &TcContext, pkt: &Packet) -> Verdict {
    let pass = Verdict::pass(reason::PASS_NOT_SERVICE);
    if pkt.frag != FRAG_NONE || pkt.has_options {
        return pass;
    }
    let l4 = pkt.l4_off as usize;
    let start = ctx.data() + l4;
    if start + QUOTE_LEN > ctx.data_end() {
        return pass;
    }
    // SAFETY: QUOTE_LEN bytes from `start` are inside the packet (checked
    // above).
    let kind = unsafe { load16(start) } as u8;
    if kind != ICMP_DEST_UNREACH && kind != ICMP_TIME_EXCEEDED {
        return pass;
    }
    let inner = start + 8;
    // SAFETY: as above; the quote's 24 bytes end inside the QUOTE_LEN.
    let (w0, w2, in_saddr, in_daddr, ports) = unsafe {
        (
            load32(inner),
            load32(inner + 8),
            load32(inner + 12),
            load32(inner + 16),
            load32(inner + 20),
        )
    };
    let in_proto = (w2 >> 8) as u8;
    // Version 4, no options: the ports follow the 20-byte header.
    if w0 as u8 != 0x45 || (in_proto != proto::TCP && in_proto != proto::UDP) {
        return pass;
    }
    let (in_sport, in_dport) = (ports as u16, (ports >> 16) as u16);
    // The quoted packet went client -> backend; its reply entry is keyed
    // backend -> client.
    let key = CtKey {
        saddr: in_daddr,
        daddr: in_saddr,
        sport: in_dport,
        dport: in_sport,
        proto: in_proto,
        dir: CT_DIR_REPLY,
        _pad: [0; 2],
    };
    let Some(e) = conntrack::lookup_copy(&key) else {
        return pass;
    };
    if e.flags & (CT_F_REWRITE_SRC | CT_F_REWRITE_DST) != CT_F_REWRITE_SRC {
        return pass;
    }
    let (vip, vport) = (e.new_saddr, e.new_sport);
    let ip = ctx.data() + ETH_HLEN;
    if ip + 20 > ctx.data_end() {
        return pass;
    }
    // SAFETY: the quote (QUOTE_LEN bytes from `start`) and the outer IPv4
    // header (20 bytes from `ip`) are inside the packet, both checked above.
    unsafe {
        // The quoted header: destination back to the frontend, and its own
        // checksum.
        let in_check = load16(inner + 10);
        let in_check_new = updated(in_check, delta32(in_daddr, vip));
        store32(inner + 16, vip);
        store16(inner + 10, in_check_new);
        store16(inner + 22, vport);
        // The ICMP checksum covers all of it.
        let icmp_diff = add(
            add(delta32(in_daddr, vip), delta16(in_dport, vport)),
            delta16(in_check, in_check_new),
        );
        store16(start + 2, updated(load16(start + 2), icmp_diff));
        // Sent by the backend itself: from the frontend, as its replies are.
        if pkt.saddr == in_daddr {
            store32(ip + 12, vip);
            store16(ip + 10, updated(load16(ip + 10), delta32(in_daddr, vip)));
        }
    }
    Verdict::pass(reason::ICMP_ERROR_REV_NAT)
}
