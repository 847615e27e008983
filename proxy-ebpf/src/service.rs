//! Service flows, whichever way they came in: from a pod (ClusterIP and
//! in-cluster traffic to NodePorts, LoadBalancer IPs and externalIPs) or
//! from outside the cluster through the node's uplink.

use aya_ebpf::programs::TcContext;
use proxy_common::{
    CtEntry, NodeConfig, ServiceKey, ServiceValue,
    ct::{CT_DIR_REPLY, CT_DIR_SERVICE, CT_F_FIB_ROUTE, CT_F_REDIRECT_BACK},
    reason,
    service::{BE_F_LOCAL, SVC_F_DROP_EMPTY, SVC_F_SNAT_REMOTE, SVC_F_SOURCE_RANGES},
};

use crate::{
    conntrack,
    conntrack::{Snat, Table},
    lb,
    maps::{SvcDelta, count_service},
    nat, packet,
    packet::Packet,
    reject, route,
    skb::redirect_back,
    tracked,
    verdict::Verdict,
};

/// Where a new connection came from.
pub enum Origin<'a> {
    /// A pod on this node, through its veth.
    Pod { ifindex: u32 },
    /// Outside the cluster, through the node's uplink.
    External { node: &'a NodeConfig },
}

#[inline(always)]
pub fn refuse(ctx: &TcContext, pkt: &Packet, why: u32) -> Verdict {
    match reject::port_unreachable(ctx, pkt) {
        Ok(action) => Verdict::action(action, why),
        Err(()) => Verdict::drop(reason::DROP_REJECT_FAILED),
    }
}

/// A packet of a flow that may already have its backend: translated when
/// its forward entry is live. A dead flow, or a new connection reusing its
/// ports, loses that state and gets `None`, to be judged afresh.
#[inline(always)]
pub fn established<C: Table>(ctx: &TcContext, pkt: &mut Packet, now: u32) -> Option<Verdict> {
    let fwd_key = conntrack::key(pkt, CT_DIR_SERVICE);
    let entry = C::get(&fwd_key)?;
    // SAFETY: pointer to a live map value, copied.
    let current = unsafe { *entry };
    if conntrack::is_stale(&current, pkt, now) {
        conntrack::retire::<C>(&fwd_key, &current);
        return None;
    }
    if let Some(r) = untranslatable(pkt) {
        return Some(Verdict::drop(r));
    }
    Some(tracked::translate::<C>(
        ctx,
        pkt,
        entry,
        CT_DIR_SERVICE,
        CT_DIR_REPLY,
        reason::FWD_ESTABLISHED,
        now,
    ))
}

/// The first packet of a flow to `fe`: choose a backend, create both CT
/// entries, translate.
#[inline(always)]
pub fn new_connection<C: Table>(
    ctx: &TcContext,
    pkt: &mut Packet,
    fe_key: &ServiceKey,
    fe: &ServiceValue,
    origin: Origin,
    now: u32,
) -> Verdict {
    let len = pkt.len;
    let refused = || {
        count_service(
            fe.svc_id,
            SvcDelta {
                len,
                new_conn: false,
                refused: true,
            },
        )
    };
    if let Origin::External { .. } = origin
        && fe.flags & SVC_F_SOURCE_RANGES != 0
        && !lb::source_allowed(pkt, fe.svc_id)
    {
        refused();
        return Verdict::drop(reason::DROP_SOURCE_RANGE);
    }
    if fe.count == 0 {
        refused();
        if fe.flags & SVC_F_DROP_EMPTY != 0 {
            return Verdict::drop(reason::DROP_NO_LOCAL_BACKEND);
        }
        return refuse(ctx, pkt, reason::REJECT_NO_BACKEND);
    }
    let Some((backend_id, be)) = lb::pick_backend(pkt, fe_key, fe, now) else {
        return Verdict::drop(reason::DROP_MAP_INCONSISTENT);
    };
    let created = match origin {
        Origin::Pod { ifindex } => {
            conntrack::create_service_flow::<C>(pkt, fe.svc_id, backend_id, &be, ifindex, now)
        }
        Origin::External { node } => {
            // A remote backend answers to where the packet came from; with
            // Cluster policy that must be this node, so the source becomes
            // the node's overlay address (its pod CIDR's network address,
            // routed back here over the overlay from every other node).
            let snat =
                (fe.flags & SVC_F_SNAT_REMOTE != 0 && be.flags & BE_F_LOCAL == 0).then_some(Snat {
                    addr: node.pod_cidr,
                    port_min: node.snat_port_min,
                    port_max: node.snat_port_max,
                });
            conntrack::create_external_flow::<C>(pkt, fe.svc_id, backend_id, &be, snat, now)
        }
    };
    let e = match created {
        Ok(e) => e,
        Err(why) => return why.verdict(),
    };
    conntrack::remember_fragment(pkt);
    if nat::apply(ctx, pkt, &e).is_err() {
        return Verdict::drop(reason::DROP_REWRITE);
    }
    count_service(
        e.svc_id,
        SvcDelta {
            len,
            new_conn: true,
            refused: false,
        },
    );
    forward(ctx, pkt, &e, reason::FWD_NEW)
}

/// Passes a translated packet on: to the stack, back into the pod it came
/// from (hairpin), or straight to its next hop (see `route`).
#[inline(always)]
pub fn forward(ctx: &TcContext, pkt: &Packet, e: &CtEntry, reason: u32) -> Verdict {
    if e.flags & CT_F_REDIRECT_BACK != 0 {
        return redirect_back(ctx, reason);
    }
    if e.flags & CT_F_FIB_ROUTE != 0 {
        return route::fib_redirect(ctx, pkt, reason);
    }
    Verdict::pass(reason)
}

/// Why a packet of a service flow cannot be translated, if it cannot.
#[inline(always)]
pub fn untranslatable(pkt: &Packet) -> Option<u32> {
    if pkt.has_options {
        Some(reason::DROP_IP_OPTIONS)
    } else if pkt.frag != packet::FRAG_LATER && !pkt.l4_complete {
        Some(reason::DROP_TRUNCATED)
    } else {
        None
    }
}
