//! A pod's host-side veth: `from_pod` (what the pod sends) and `to_pod`
//! (what is delivered to it).

use aya_ebpf::programs::TcContext;
use proxy_common::{ct::CT_DIR_SERVICE, proto, reason, service::SVC_F_NODE_ADDR};

use crate::{
    conntrack,
    conntrack::{HAIRPIN_ADDR, Table, per_table},
    deliver, icmp_error, lb,
    packet::{ECHO_NONE, FRAG_LATER, Packet},
    service::{self, Origin, untranslatable},
    skb::ifindex,
    tracked::reply,
    verdict::{Verdict, pass_reason},
};

#[inline(always)]
pub fn from_pod(ctx: &TcContext, pkt: &mut Packet) -> Verdict {
    if pkt.daddr == HAIRPIN_ADDR {
        return hairpin_reply(ctx, pkt);
    }
    // A pod of this node is never a frontend, so a packet for one needs no
    // service or CT lookup: only the port-reuse check every SYN to a
    // non-service address gets, then straight into the pod's veth.
    if pass_reason(pkt) == reason::PASS_NOT_SERVICE {
        let plain = Verdict::pass(reason::PASS_NOT_SERVICE);
        let d = deliver::to_local_pod(ctx, pkt, plain);
        if d.action != plain.action {
            if conntrack::is_pure_syn(pkt) {
                conntrack::clear_port_reuse(pkt, conntrack::now());
            }
            return Verdict::action(d.action, reason::FWD_LOCAL_POD);
        }
    }
    let v = to_service(ctx, pkt);
    match v.reason {
        // Translated service packets: to a backend on this node, or on
        // another one.
        reason::FWD_NEW | reason::FWD_ESTABLISHED => {
            let d = deliver::to_local_pod(ctx, pkt, v);
            if d.action != v.action {
                return d;
            }
            deliver::to_remote_pod(ctx, pkt, v)
        }
        // Plain traffic to a pod on another node.
        reason::PASS_NOT_SERVICE => {
            let d = deliver::to_remote_pod(ctx, pkt, v);
            if d.action == v.action {
                return v;
            }
            Verdict::action(d.action, reason::FWD_REMOTE_POD)
        }
        _ => v,
    }
}

/// Whether `flags` (of an address-only entry) mark a service address, as
/// opposed to one of the node's own addresses.
#[inline(always)]
fn is_service(flags: Option<u8>) -> bool {
    flags.is_some_and(|f| f & SVC_F_NODE_ADDR == 0)
}

/// Traffic a pod sends. An established flow needs one lookup (its CT
/// entry), which also keeps flows of a Service that was just deleted alive
/// until they end, as kube-proxy's conntrack does. Otherwise: is the
/// destination a service (or node) address at all, then the frontend.
#[inline(always)]
fn to_service(ctx: &TcContext, pkt: &mut Packet) -> Verdict {
    if !pkt.has_ports() {
        return if is_service(lb::address_flags(pkt.daddr)) {
            Verdict::drop(reason::DROP_UNSUPPORTED_PROTO)
        } else {
            Verdict::pass(pass_reason(pkt))
        };
    }
    if pkt.frag == FRAG_LATER && !conntrack::fragment_ports(pkt) {
        return if is_service(lb::address_flags(pkt.daddr)) {
            Verdict::drop(reason::DROP_FRAG_NO_STATE)
        } else {
            Verdict::pass(reason::PASS_FRAGMENT)
        };
    }
    per_table!(pkt, tracked_to_service(ctx, pkt))
}

/// [`to_service`] for a TCP or UDP packet, with the CT table of its protocol.
#[inline(always)]
fn tracked_to_service<C: Table>(ctx: &TcContext, pkt: &mut Packet) -> Verdict {
    let now = conntrack::now();
    if let Some(v) = service::established::<C>(ctx, pkt, now) {
        return v;
    }
    let Some(flags) = lb::address_flags(pkt.daddr) else {
        conntrack::clear_port_reuse(pkt, now);
        return Verdict::pass(pass_reason(pkt));
    };
    match lb::frontend_internal(pkt) {
        Some((key, fe)) => {
            if let Some(r) = untranslatable(pkt) {
                return Verdict::drop(r);
            }
            if pkt.frag == FRAG_LATER {
                return Verdict::drop(reason::DROP_FRAG_NO_STATE);
            }
            let origin = Origin::Pod {
                ifindex: ifindex(ctx),
            };
            service::new_connection::<C>(ctx, pkt, &key, &fe, origin, now)
        }
        // Other ports of the node's own addresses are the node's.
        None if flags & SVC_F_NODE_ADDR != 0 => {
            conntrack::clear_port_reuse(pkt, now);
            Verdict::pass(pass_reason(pkt))
        }
        None => match untranslatable(pkt) {
            Some(r) => Verdict::drop(r),
            None => service::refuse(ctx, pkt, reason::REJECT_UNKNOWN_PORT),
        },
    }
}

/// A pod's reply to a hairpinned flow of its own, sent to the hairpin
/// address, which nothing else may receive: restore the frontend and turn
/// it around into the pod, or drop it.
#[inline(always)]
fn hairpin_reply(ctx: &TcContext, pkt: &mut Packet) -> Verdict {
    if !pkt.has_ports() {
        return Verdict::drop(reason::DROP_HAIRPIN_NO_STATE);
    }
    if pkt.frag == FRAG_LATER && !conntrack::fragment_ports(pkt) {
        return Verdict::drop(reason::DROP_FRAG_NO_STATE);
    }
    // The reply entry of a hairpinned flow says to turn it around.
    let no_state = Verdict::drop(reason::DROP_HAIRPIN_NO_STATE);
    per_table!(
        pkt,
        reply(
            ctx,
            pkt,
            CT_DIR_SERVICE,
            reason::HAIRPIN_REPLY,
            no_state,
            no_state
        )
    )
}

/// Traffic about to enter a pod: replies of translated flows get the
/// frontend back as their source.
#[inline(always)]
pub fn to_pod(ctx: &TcContext, pkt: &mut Packet) -> Verdict {
    if pkt.proto == proto::ICMP && pkt.echo == ECHO_NONE {
        return icmp_error::to_client(ctx, pkt);
    }
    if !pkt.has_ports() {
        return Verdict::pass(pass_reason(pkt));
    }
    if pkt.frag == FRAG_LATER && !conntrack::fragment_ports(pkt) {
        return Verdict::pass(reason::PASS_REPLY_FRAGMENT);
    }
    let miss = Verdict::pass(pass_reason(pkt));
    per_table!(
        pkt,
        reply(
            ctx,
            pkt,
            CT_DIR_SERVICE,
            reason::REV_NAT,
            miss,
            Verdict::pass(reason::PASS_CT_STALE)
        )
    )
}
