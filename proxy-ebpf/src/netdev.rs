//! The node's uplink and overlay device: Services reached from outside the
//! cluster (NodePort, LoadBalancer, externalIPs), masquerade of pod traffic
//! leaving the cluster, and the replies of both.
//!
//! - `from_netdev` (uplink, TC ingress): established external flows by
//!   their CT entry; replies of masqueraded flows (addressed to the node);
//!   new connections to external frontends.
//! - `to_netdev` (uplink, TC egress): replies of external flows served by a
//!   local backend without SNAT; masquerade of pods' traffic to outside the
//!   cluster CIDR (the node's address and a port from the masquerade range).
//! - `from_overlay` (overlay device, TC ingress): replies of external flows
//!   SNATed to a remote backend, which come back addressed to this node's
//!   overlay address.
//!
//! Doing this in BPF keeps netfilter NAT, and the connection tracking it
//! turns on for every packet, out of the node's path.

use aya_ebpf::programs::TcContext;
use proxy_common::{
    NodeConfig,
    config::NODE_CONFIG_VERSION,
    ct::{CT_DIR_EGRESS, CT_DIR_REPLY, CT_DIR_SERVICE},
    proto, reason,
    service::SVC_F_NODE_ADDR,
};

use crate::{
    conntrack,
    conntrack::{Snat, Table, per_table},
    lb,
    maps::CONFIG,
    nat,
    packet::{FRAG_LATER, Packet},
    service::{self, Origin, untranslatable},
    tracked::{self, reply, reverse},
    verdict::Verdict,
};

#[inline(always)]
fn config() -> Option<NodeConfig> {
    let c = CONFIG.get(0).copied()?;
    (c.version == NODE_CONFIG_VERSION && c.node_addr != 0).then_some(c)
}

#[inline(always)]
fn in_net(addr: u32, net: u32, mask: u32) -> bool {
    addr & mask == net
}

/// Whether a packet leaving the node comes from a local pod and goes
/// outside the cluster.
#[inline(always)]
fn leaves_cluster(pkt: &Packet, c: &NodeConfig) -> bool {
    if c.pod_mask == 0 || !in_net(pkt.saddr, c.pod_cidr, c.pod_mask) {
        return false;
    }
    if c.cluster_mask != 0 {
        !in_net(pkt.daddr, c.cluster_cidr, c.cluster_mask)
    } else {
        !in_net(pkt.daddr, c.pod_cidr, c.pod_mask)
    }
}

#[inline(always)]
pub fn to_netdev(ctx: &TcContext, pkt: &mut Packet) -> Verdict {
    let Some(c) = config() else {
        return Verdict::pass(reason::PASS_UPLINK);
    };
    if !leaves_cluster(pkt, &c) {
        return Verdict::pass(reason::PASS_UPLINK);
    }
    if !pkt.nat_capable() {
        return Verdict::pass(reason::PASS_MASQUERADE_UNSUPPORTED);
    }
    if let Some(r) = untranslatable(pkt) {
        return Verdict::drop(r);
    }
    if pkt.frag == FRAG_LATER && !conntrack::fragment_ports(pkt) {
        return Verdict::drop(reason::DROP_FRAG_NO_STATE);
    }
    per_table!(pkt, leaving(ctx, pkt, &c))
}

/// A pod's packet leaving the cluster, with the CT table of its protocol.
#[inline(always)]
fn leaving<C: Table>(ctx: &TcContext, pkt: &mut Packet, c: &NodeConfig) -> Verdict {
    // A local backend answering an outside client (no SNAT on the way in).
    if let Some(entry) = C::get(&conntrack::key(pkt, CT_DIR_REPLY))
        && let Some(v) = reverse::<C>(ctx, pkt, entry, CT_DIR_SERVICE, reason::NODEPORT_REPLY)
    {
        return v;
    }
    masquerade::<C>(ctx, pkt, c)
}

#[inline(always)]
fn masquerade<C: Table>(ctx: &TcContext, pkt: &mut Packet, c: &NodeConfig) -> Verdict {
    let now = conntrack::now();
    let fwd_key = conntrack::key(pkt, CT_DIR_EGRESS);
    let entry = match C::get(&fwd_key) {
        Some(e) => {
            // SAFETY: pointer to a live map value, copied.
            let current = unsafe { *e };
            if conntrack::is_stale(&current, pkt, now) {
                conntrack::retire::<C>(&fwd_key, &current);
                None
            } else {
                Some(e)
            }
        }
        None => None,
    };
    if let Some(entry) = entry {
        return tracked::translate::<C>(
            ctx,
            pkt,
            entry,
            CT_DIR_EGRESS,
            CT_DIR_REPLY,
            reason::MASQUERADE,
            now,
        );
    }
    if pkt.frag == FRAG_LATER {
        return Verdict::drop(reason::DROP_FRAG_NO_STATE);
    }
    let snat = Snat {
        addr: c.node_addr,
        port_min: c.snat_port_min,
        port_max: c.snat_port_max,
    };
    let e = match conntrack::create_masquerade_flow::<C>(pkt, snat, now) {
        Ok(e) => e,
        Err(why) => return why.verdict(),
    };
    conntrack::remember_fragment(pkt);
    if nat::apply(ctx, pkt, &e).is_err() {
        return Verdict::drop(reason::DROP_REWRITE);
    }
    Verdict::pass(reason::MASQUERADE)
}

#[inline(always)]
pub fn from_netdev(ctx: &TcContext, pkt: &mut Packet) -> Verdict {
    let Some(c) = config() else {
        return Verdict::pass(reason::PASS_UPLINK);
    };
    if !pkt.nat_capable() {
        return Verdict::pass(reason::PASS_UPLINK);
    }
    if pkt.frag == FRAG_LATER && !conntrack::fragment_ports(pkt) {
        return Verdict::pass(reason::PASS_UPLINK);
    }
    per_table!(pkt, arriving(ctx, pkt, &c))
}

/// A packet arriving from outside, with the CT table of its protocol.
#[inline(always)]
fn arriving<C: Table>(ctx: &TcContext, pkt: &mut Packet, c: &NodeConfig) -> Verdict {
    let now = conntrack::now();
    if pkt.has_ports()
        && let Some(v) = service::established::<C>(ctx, pkt, now)
    {
        return v;
    }
    if pkt.daddr == c.node_addr
        && let Some(entry) = C::get(&conntrack::key(pkt, CT_DIR_REPLY))
        && let Some(v) = reverse::<C>(ctx, pkt, entry, CT_DIR_EGRESS, reason::MASQUERADE_REPLY)
    {
        return v;
    }
    // Replies of external flows SNATed to a remote backend: over the
    // overlay they meet from_overlay, but when another network routes pod
    // CIDRs between nodes (--overlay none) they arrive here.
    if pkt.daddr == c.pod_cidr
        && pkt.has_ports()
        && let Some(entry) = C::get(&conntrack::key(pkt, CT_DIR_REPLY))
        && let Some(v) = reverse::<C>(ctx, pkt, entry, CT_DIR_SERVICE, reason::NODEPORT_REPLY)
    {
        return v;
    }
    if !pkt.has_ports() {
        return Verdict::pass(reason::PASS_UPLINK);
    }
    let Some(flags) = lb::address_flags(pkt.daddr) else {
        return Verdict::pass(reason::PASS_UPLINK);
    };
    match lb::frontend_external(pkt) {
        Some((key, fe)) => {
            if let Some(r) = untranslatable(pkt) {
                return Verdict::drop(r);
            }
            if pkt.frag == FRAG_LATER {
                return Verdict::drop(reason::DROP_FRAG_NO_STATE);
            }
            service::new_connection::<C>(ctx, pkt, &key, &fe, Origin::External { node: c }, now)
        }
        None if flags & SVC_F_NODE_ADDR != 0 => Verdict::pass(reason::PASS_UPLINK),
        None => match untranslatable(pkt) {
            Some(r) => Verdict::drop(r),
            None => service::refuse(ctx, pkt, reason::REJECT_UNKNOWN_PORT),
        },
    }
}

#[inline(always)]
pub fn from_overlay(ctx: &TcContext, pkt: &mut Packet) -> Verdict {
    let Some(c) = config() else {
        return Verdict::pass(reason::PASS_OVERLAY);
    };
    // The overlay address is the pod CIDR's network address.
    if pkt.daddr != c.pod_cidr || !pkt.has_ports() {
        return Verdict::pass(reason::PASS_OVERLAY);
    }
    if pkt.frag == FRAG_LATER && !conntrack::fragment_ports(pkt) {
        return Verdict::pass(reason::PASS_OVERLAY);
    }
    per_table!(
        pkt,
        reply(
            ctx,
            pkt,
            CT_DIR_SERVICE,
            reason::NODEPORT_REPLY,
            Verdict::pass(reason::PASS_OVERLAY),
            Verdict::pass(reason::PASS_CT_STALE)
        )
    )
}
