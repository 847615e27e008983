//! What the daemon needs to know about its own Node object.

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::{IpNetwork, Ipv4Network};
use k8s_openapi::api::core::v1::Node;

use super::NodeContext;

/// The node label kube-proxy reads for topology-aware routing.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The IPv4 facts of one Node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// The node's primary address: its first IPv4 InternalIP, or its first
    /// IPv4 ExternalIP when it has no InternalIP (kube-proxy's choice too).
    pub internal_ip: Ipv4Addr,
    /// Every IPv4 InternalIP then every IPv4 ExternalIP, without repeats.
    pub addresses: Vec<Ipv4Addr>,
    /// `spec.podCIDR`, or the first IPv4 entry of `spec.podCIDRs` (a node
    /// whose primary family is IPv6 lists its IPv4 range second).
    pub pod_cidr: Option<Ipv4Network>,
    /// `topology.kubernetes.io/zone`; an empty label counts as none.
    pub zone: Option<String>,
}

impl NodeInfo {
    /// The part of the node the service model needs.
    pub fn context(&self) -> NodeContext {
        NodeContext {
            name: self.name.clone(),
            addresses: self.addresses.clone(),
            zone: self.zone.clone(),
        }
    }
}

/// Reads a Node. Fails when the node has no name, no IPv4 InternalIP or
/// ExternalIP, or a pod CIDR that does not parse: without those the daemon
/// cannot serve the node correctly, so it is better to say so than to guess.
pub fn node_info(node: &Node) -> Result<NodeInfo, String> {
    let name = node
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or("Node has no metadata.name")?;

    let listed = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or_default();
    let of_type = |wanted: &'static str| {
        listed
            .iter()
            .filter(move |a| a.type_ == wanted)
            .filter_map(|a| a.address.trim().parse::<Ipv4Addr>().ok())
    };
    let mut addresses: Vec<Ipv4Addr> = Vec::new();
    for addr in of_type("InternalIP").chain(of_type("ExternalIP")) {
        if !addresses.contains(&addr) {
            addresses.push(addr);
        }
    }
    let internal_ip = *addresses.first().ok_or_else(|| {
        format!("Node {name} has no IPv4 InternalIP or ExternalIP in status.addresses")
    })?;

    let pod_cidr = pod_cidr(node).map_err(|e| format!("Node {name}: {e}"))?;

    let zone = node
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(ZONE_LABEL))
        .filter(|z| !z.is_empty())
        .cloned();

    Ok(NodeInfo {
        name,
        internal_ip,
        addresses,
        pod_cidr,
        zone,
    })
}

fn pod_cidr(node: &Node) -> Result<Option<Ipv4Network>, String> {
    let Some(spec) = node.spec.as_ref() else {
        return Ok(None);
    };
    // podCIDR is podCIDRs[0] when both are set; looking at both covers
    // objects written by hand with only one of them.
    let candidates = spec.pod_cidr.iter().chain(spec.pod_cidrs.iter().flatten());
    for cidr in candidates.filter(|c| !c.is_empty()) {
        match super::parse_cidr(cidr) {
            Ok(IpNetwork::V4(net)) => return Ok(Some(net)),
            Ok(IpNetwork::V6(_)) => continue,
            Err(_) => return Err(format!("invalid pod CIDR {cidr:?}")),
        }
    }
    Ok(None)
}

/// Whether `addr` is an IPv6 address (for "not supported yet" reasons).
pub(crate) fn is_ipv6(addr: &str) -> bool {
    matches!(addr.trim().parse::<IpAddr>(), Ok(IpAddr::V6(_)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node(v: serde_json::Value) -> Node {
        serde_json::from_value(v).unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn reads_addresses_internal_first_ipv4_only_without_repeats() {
        let n = node(json!({
            "metadata": {"name": "n1", "labels": {ZONE_LABEL: "zone-a"}},
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00:1::/64"]},
            "status": {"addresses": [
                {"type": "Hostname", "address": "n1"},
                {"type": "ExternalIP", "address": "203.0.113.7"},
                {"type": "InternalIP", "address": "fd00::7"},
                {"type": "InternalIP", "address": "192.168.1.7"},
                {"type": "InternalIP", "address": "192.168.2.7"},
                {"type": "ExternalIP", "address": "192.168.1.7"},
            ]},
        }));
        let info = node_info(&n).unwrap();
        assert_eq!(
            info,
            NodeInfo {
                name: "n1".into(),
                internal_ip: ip("192.168.1.7"),
                addresses: vec![ip("192.168.1.7"), ip("192.168.2.7"), ip("203.0.113.7")],
                pod_cidr: Some("10.244.1.0/24".parse().unwrap()),
                zone: Some("zone-a".into()),
            }
        );
        assert_eq!(
            info.context(),
            NodeContext {
                name: "n1".into(),
                addresses: info.addresses.clone(),
                zone: Some("zone-a".into()),
            }
        );
    }

    #[test]
    fn falls_back_to_external_ip_and_ipv4_pod_cidr_of_an_ipv6_primary_node() {
        let n = node(json!({
            "metadata": {"name": "n2", "labels": {ZONE_LABEL: ""}},
            "spec": {"podCIDR": "fd00:1::/64", "podCIDRs": ["fd00:1::/64", "10.244.2.0/24"]},
            "status": {"addresses": [{"type": "ExternalIP", "address": "203.0.113.8"}]},
        }));
        let info = node_info(&n).unwrap();
        assert_eq!(info.internal_ip, ip("203.0.113.8"));
        assert_eq!(info.pod_cidr, Some("10.244.2.0/24".parse().unwrap()));
        assert_eq!(info.zone, None, "an empty zone label is no zone");
    }

    #[test]
    fn no_pod_cidr_is_fine() {
        let n = node(json!({
            "metadata": {"name": "n3"},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.3"}]},
        }));
        let info = node_info(&n).unwrap();
        assert_eq!(info.pod_cidr, None);
        assert_eq!(info.zone, None);
    }

    #[test]
    fn rejects_nodes_it_cannot_serve() {
        let cases = [
            (
                json!({"status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}}),
                "no metadata.name",
            ),
            (json!({"metadata": {"name": "n"}}), "no IPv4 InternalIP"),
            (
                json!({"metadata": {"name": "n"}, "status": {"addresses": [{"type": "InternalIP", "address": "fd00::1"}]}}),
                "no IPv4 InternalIP",
            ),
            (
                json!({"metadata": {"name": "n"}, "spec": {"podCIDR": "10.244.0.0/33"},
                       "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}}),
                "invalid pod CIDR",
            ),
        ];
        for (object, want) in cases {
            let err = node_info(&node(object.clone())).unwrap_err();
            assert!(err.contains(want), "{object}: {err}");
        }
    }
}
