//! Who the overlay tunnels to, and the names and addresses derived from
//! node addresses. Pure: no kernel, no files.

use std::{fmt, net::Ipv4Addr};

use ipnetwork::Ipv4Network;
use k8s_openapi::api::core::v1::Node;

use crate::model::{ClusterState, Skip, SkipKind, node_info};

/// First two octets of every VTEP MAC: `02` sets the locally administered
/// bit and keeps the multicast bit clear, so the address can never collide
/// with a vendor-assigned NIC address; `5c` marks it as Sluice's.
pub const VTEP_MAC_PREFIX: [u8; 2] = [0x02, 0x5c];

/// The MAC of the overlay device on the node whose address is `node_addr`.
///
/// Every node computes every other node's MAC from the Node object alone,
/// so no node has to publish its MAC (flannel writes it into a Node
/// annotation) and nothing has to be remembered across restarts.
pub fn vtep_mac(node_addr: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = node_addr.octets();
    [VTEP_MAC_PREFIX[0], VTEP_MAC_PREFIX[1], a, b, c, d]
}

/// A MAC address in the usual `aa:bb:cc:dd:ee:ff` form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// The prefix of the overlay device's name; any VXLAN device whose name
/// starts with it belongs to Sluice.
pub const DEVICE_PREFIX: &str = "sluice.";

/// The largest VNI the VXLAN header can carry (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// The overlay device's name for a VNI: `sluice.<vni>`, at most 15
/// characters (the kernel's IFNAMSIZ less the NUL) for every VNI up to
/// [`MAX_VNI`].
pub fn device_name(vni: u32) -> String {
    format!("{DEVICE_PREFIX}{vni}")
}

/// Another node the overlay tunnels to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Peer {
    /// The Node's name (for logs and `sluicectl`).
    pub node: String,
    /// Its first IPv4 InternalIP: the outer destination of tunnelled packets.
    pub node_addr: Ipv4Addr,
    /// Its IPv4 pod CIDR, routed through the tunnel.
    pub pod_cidr: Ipv4Network,
}

impl Peer {
    /// The peer's overlay device address: the network address of its pod
    /// CIDR (flannel's choice). It never belongs to a pod (IPAM skips it),
    /// and it lets every node compute the next hop for a pod CIDR from the
    /// CIDR alone.
    pub fn vtep_addr(&self) -> Ipv4Addr {
        self.pod_cidr.network()
    }

    /// The MAC of the peer's overlay device.
    pub fn vtep_mac(&self) -> [u8; 6] {
        vtep_mac(self.node_addr)
    }
}

/// The first IPv4 InternalIP of a Node. ExternalIPs are deliberately not
/// used (unlike the service model's node address): they are often NAT
/// addresses of a cloud, which tunnelled traffic between nodes must not
/// take.
pub fn internal_ipv4(node: &Node) -> Option<Ipv4Addr> {
    node.status
        .as_ref()?
        .addresses
        .as_deref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.trim().parse::<Ipv4Addr>().ok())
}

fn usable_unicast(addr: Ipv4Addr) -> bool {
    !(addr.is_unspecified()
        || addr.is_loopback()
        || addr.is_multicast()
        || addr.is_broadcast()
        || addr.is_link_local())
}

fn overlaps(a: Ipv4Network, b: Ipv4Network) -> bool {
    a.overlaps(b)
}

/// The nodes the overlay of `own_node` tunnels to: every other Node with an
/// IPv4 InternalIP and an IPv4 pod CIDR, sorted by name. Nodes that cannot
/// be served are returned as [`Skip`]s with the reason, so the daemon can
/// log them once; IPv6 addresses and CIDRs are ignored (IPv4 only for now).
///
/// Two nodes claiming overlapping pod CIDRs would fight over the same
/// routes, so the first by name keeps its CIDR and the later one is
/// skipped; a node overlapping this node's own pod CIDR, or claiming this
/// node's address, is skipped too.
pub fn peers(cluster: &ClusterState, own_node: &str) -> (Vec<Peer>, Vec<Skip>) {
    let own = cluster.nodes.get(own_node).map(|n| &**n);
    let own_addr = own.and_then(internal_ipv4);
    let own_cidr = own.and_then(|n| node_info(n).ok()).and_then(|i| i.pod_cidr);

    let mut peers: Vec<Peer> = Vec::new();
    let mut skipped = Vec::new();
    for (key, node) in &cluster.nodes {
        let name = node.metadata.name.as_deref().unwrap_or(key);
        if key == own_node || name == own_node {
            continue;
        }
        let skip = |reason: String| Skip {
            object: format!("Node {name}"),
            reason: format!("not in the overlay: {reason}"),
            kind: SkipKind::Invalid,
        };
        let info = match node_info(node) {
            Ok(info) => info,
            Err(e) => {
                skipped.push(skip(e));
                continue;
            }
        };
        let Some(node_addr) = internal_ipv4(node) else {
            skipped.push(skip(
                "no IPv4 InternalIP in status.addresses (tunnels go to InternalIPs only)".into(),
            ));
            continue;
        };
        if !usable_unicast(node_addr) {
            skipped.push(skip(format!(
                "InternalIP {node_addr} is not a unicast address a tunnel can reach"
            )));
            continue;
        }
        let Some(pod_cidr) = info.pod_cidr else {
            skipped.push(skip("no IPv4 pod CIDR in spec.podCIDR(s)".into()));
            continue;
        };
        if own_addr == Some(node_addr) {
            skipped.push(skip(format!(
                "its InternalIP {node_addr} is this node's ({own_node})"
            )));
            continue;
        }
        if let Some(own_cidr) = own_cidr.filter(|c| overlaps(*c, pod_cidr)) {
            skipped.push(skip(format!(
                "pod CIDR {pod_cidr} overlaps this node's ({own_node}) {own_cidr}"
            )));
            continue;
        }
        if let Some(other) = peers.iter().find(|p| overlaps(p.pod_cidr, pod_cidr)) {
            skipped.push(skip(format!(
                "pod CIDR {pod_cidr} overlaps {} of Node {}",
                other.pod_cidr, other.node
            )));
            continue;
        }
        peers.push(Peer {
            node: info.name,
            node_addr,
            pod_cidr,
        });
    }
    peers.sort();
    skipped.sort();
    (peers, skipped)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node(v: serde_json::Value) -> Node {
        serde_json::from_value(v).unwrap()
    }

    fn simple(name: &str, ip: &str, cidr: &str) -> Node {
        node(json!({
            "metadata": {"name": name},
            "spec": {"podCIDR": cidr},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
        }))
    }

    fn cluster(nodes: Vec<Node>) -> ClusterState {
        let mut c = ClusterState::default();
        for n in nodes {
            c.nodes.insert(n.metadata.name.clone().unwrap(), n.into());
        }
        c
    }

    fn peer(node: &str, ip: &str, cidr: &str) -> Peer {
        Peer {
            node: node.into(),
            node_addr: ip.parse().unwrap(),
            pod_cidr: cidr.parse().unwrap(),
        }
    }

    #[test]
    fn vtep_mac_is_deterministic_local_unicast_and_embeds_the_address() {
        let a = vtep_mac(Ipv4Addr::new(10, 77, 1, 2));
        assert_eq!(a, [0x02, 0x5c, 10, 77, 1, 2]);
        assert_eq!(a, vtep_mac(Ipv4Addr::new(10, 77, 1, 2)));
        assert_ne!(a, vtep_mac(Ipv4Addr::new(10, 77, 1, 3)));
        for ip in [Ipv4Addr::new(0, 0, 0, 0), Ipv4Addr::new(255, 255, 255, 255)] {
            let m = vtep_mac(ip);
            assert_eq!(m[0] & 0x01, 0, "unicast");
            assert_eq!(m[0] & 0x02, 0x02, "locally administered");
        }
        assert_eq!(Mac(a).to_string(), "02:5c:0a:4d:01:02");
    }

    #[test]
    fn device_names_fit_ifnamsiz() {
        assert_eq!(device_name(1), "sluice.1");
        assert_eq!(device_name(MAX_VNI), "sluice.16777215");
        assert!(device_name(MAX_VNI).len() <= 15);
        assert!(device_name(0).starts_with(DEVICE_PREFIX));
    }

    #[test]
    fn vtep_addr_is_the_pod_cidr_network() {
        let p = peer("n2", "10.77.1.2", "10.244.2.0/24");
        assert_eq!(p.vtep_addr(), Ipv4Addr::new(10, 244, 2, 0));
        assert_eq!(p.vtep_mac(), [0x02, 0x5c, 10, 77, 1, 2]);
    }

    #[test]
    fn every_other_usable_node_sorted_and_self_excluded() {
        let c = cluster(vec![
            simple("n3", "10.77.1.3", "10.244.3.0/24"),
            simple("n1", "10.77.1.1", "10.244.1.0/24"),
            simple("n2", "10.77.1.2", "10.244.2.0/24"),
        ]);
        let (p, s) = peers(&c, "n2");
        assert_eq!(
            p,
            vec![
                peer("n1", "10.77.1.1", "10.244.1.0/24"),
                peer("n3", "10.77.1.3", "10.244.3.0/24"),
            ]
        );
        assert!(s.is_empty(), "{s:?}");
        // Not being in the cluster yet does not stop the others.
        let (p, _) = peers(&c, "elsewhere");
        assert_eq!(p.len(), 3);
    }

    #[test]
    fn ipv6_is_ignored_and_dual_stack_nodes_use_their_ipv4_parts() {
        let c = cluster(vec![
            node(json!({
                "metadata": {"name": "dual"},
                "spec": {"podCIDR": "fd00:2::/64", "podCIDRs": ["fd00:2::/64", "10.244.2.0/24"]},
                "status": {"addresses": [
                    {"type": "InternalIP", "address": "fd00::2"},
                    {"type": "ExternalIP", "address": "203.0.113.2"},
                    {"type": "InternalIP", "address": "10.77.1.2"},
                ]},
            })),
            node(json!({
                "metadata": {"name": "v6only"},
                "spec": {"podCIDR": "fd00:3::/64"},
                "status": {"addresses": [{"type": "InternalIP", "address": "fd00::3"}]},
            })),
            simple("v6cidr", "10.77.1.4", "fd00:4::/64"),
        ]);
        let (p, s) = peers(&c, "me");
        assert_eq!(p, vec![peer("dual", "10.77.1.2", "10.244.2.0/24")]);
        let reasons: Vec<_> = s.iter().map(|s| (s.object.as_str(), &s.reason)).collect();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert_eq!(reasons[0].0, "Node v6cidr");
        assert!(reasons[0].1.contains("no IPv4 pod CIDR"), "{reasons:?}");
        assert_eq!(reasons[1].0, "Node v6only");
        assert!(reasons[1].1.contains("no IPv4 InternalIP"), "{reasons:?}");
    }

    #[test]
    fn unusable_nodes_are_skipped_with_reasons() {
        let c = cluster(vec![
            simple("me", "10.77.1.1", "10.244.1.0/24"),
            node(json!({
                "metadata": {"name": "external-only"},
                "spec": {"podCIDR": "10.244.5.0/24"},
                "status": {"addresses": [{"type": "ExternalIP", "address": "203.0.113.5"}]},
            })),
            node(json!({
                "metadata": {"name": "no-cidr"},
                "status": {"addresses": [{"type": "InternalIP", "address": "10.77.1.6"}]},
            })),
            node(json!({"metadata": {"name": "no-status"}, "spec": {"podCIDR": "10.244.7.0/24"}})),
            simple("bad-cidr", "10.77.1.8", "10.244.8.0/33"),
            simple("same-addr", "10.77.1.1", "10.244.9.0/24"),
            simple("overlaps-me", "10.77.1.10", "10.244.0.0/16"),
            simple("a-first", "10.77.1.11", "10.244.11.0/24"),
            simple("b-overlaps", "10.77.1.12", "10.244.11.128/25"),
            simple("loopback", "127.0.0.1", "10.244.13.0/24"),
        ]);
        let (p, s) = peers(&c, "me");
        assert_eq!(p, vec![peer("a-first", "10.77.1.11", "10.244.11.0/24")]);
        let want = [
            ("Node b-overlaps", "overlaps 10.244.11.0/24 of Node a-first"),
            ("Node bad-cidr", "invalid pod CIDR"),
            ("Node external-only", "no IPv4 InternalIP"),
            ("Node loopback", "not a unicast address"),
            ("Node no-cidr", "no IPv4 pod CIDR"),
            ("Node no-status", "no IPv4 InternalIP or ExternalIP"),
            (
                "Node overlaps-me",
                "overlaps this node's (me) 10.244.1.0/24",
            ),
            ("Node same-addr", "is this node's (me)"),
        ];
        assert_eq!(s.len(), want.len(), "{s:#?}");
        for (skip, (object, reason)) in s.iter().zip(want) {
            assert_eq!(skip.object, object);
            assert!(
                skip.reason.contains(reason),
                "{skip:?} should say {reason:?}"
            );
            assert!(skip.reason.starts_with("not in the overlay: "), "{skip:?}");
        }
    }
}
