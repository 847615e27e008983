//! The node's uplink: masquerade of pod traffic leaving the cluster.
//!
//! `to_netdev` (TC egress): a packet from this node's pod CIDR to an
//! address outside the cluster CIDR gets the node's address and a port from
//! the masquerade range as its source, connection tracked. `from_netdev`
//! (TC ingress): a packet addressed to the node that is the reply of such a
//! flow gets the pod's address and port back; the kernel then routes it to
//! the pod. Doing this in BPF keeps netfilter NAT, and the connection
//! tracking it turns on for every packet, out of the node's path.

use aya_ebpf::programs::TcContext;
use proxy_common::{
    NodeConfig,
    config::NODE_CONFIG_VERSION,
    ct::{CT_DIR_EGRESS, CT_DIR_REPLY},
    reason,
};

use crate::{
    Verdict, conntrack,
    maps::{CONFIG, CT},
    nat,
    packet::{FRAG_LATER, Packet},
    untranslatable,
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

/// Whether a packet leaving the node must be masqueraded.
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

pub fn masquerade(ctx: &TcContext, pkt: &mut Packet) -> Verdict {
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
    let now = conntrack::now();
    let entry = match CT.get_ptr_mut(conntrack::key(pkt, CT_DIR_EGRESS)) {
        // SAFETY: pointer to a live map value.
        Some(e) if !conntrack::is_stale(unsafe { &*e }, pkt, now) => Some(e),
        _ => None,
    };
    let (e, new_bits) = match entry {
        Some(entry) => {
            let bits = conntrack::observe(entry, pkt, now, true);
            // SAFETY: as above; copied before the rewrite.
            (unsafe { *entry }, Some((entry, bits)))
        }
        None => {
            if pkt.frag == FRAG_LATER {
                return Verdict::drop(reason::DROP_FRAG_NO_STATE);
            }
            match conntrack::create_snat(pkt, c.node_addr, c.snat_port_min, c.snat_port_max, now) {
                Ok(e) => (e, None),
                Err(()) => return Verdict::drop(reason::DROP_SNAT_PORTS_EXHAUSTED),
            }
        }
    };
    conntrack::remember_fragment(pkt);
    if nat::apply(ctx, pkt, &e).is_err() {
        return Verdict::drop(reason::DROP_REWRITE);
    }
    if let Some((entry, bits)) = new_bits {
        conntrack::sync_partner(entry, pkt, CT_DIR_REPLY, bits, now);
    }
    Verdict::pass(reason::MASQUERADE)
}

pub fn unmasquerade(ctx: &TcContext, pkt: &mut Packet) -> Verdict {
    let Some(c) = config() else {
        return Verdict::pass(reason::PASS_UPLINK);
    };
    // Replies of masqueraded flows are addressed to the node; everything
    // else on the uplink needs no lookup.
    if pkt.daddr != c.node_addr || !pkt.nat_capable() {
        return Verdict::pass(reason::PASS_UPLINK);
    }
    if pkt.frag == FRAG_LATER && !conntrack::fragment_ports(pkt) {
        return Verdict::pass(reason::PASS_UPLINK);
    }
    let Some(entry) = CT.get_ptr_mut(conntrack::key(pkt, CT_DIR_REPLY)) else {
        return Verdict::pass(reason::PASS_UPLINK);
    };
    if let Some(r) = untranslatable(pkt) {
        return Verdict::drop(r);
    }
    let now = conntrack::now();
    let bits = conntrack::observe(entry, pkt, now, false);
    // SAFETY: pointer to a live map value; copied before the rewrite.
    let e = unsafe { *entry };
    conntrack::remember_fragment(pkt);
    if nat::apply(ctx, pkt, &e).is_err() {
        return Verdict::drop(reason::DROP_REWRITE);
    }
    conntrack::sync_partner(entry, pkt, CT_DIR_EGRESS, bits, now);
    Verdict::pass(reason::MASQUERADE_REPLY)
}
