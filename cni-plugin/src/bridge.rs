//! The node side: the pod bridge and IPv4 forwarding. (Host-side veth
//! names are `sluice_net::pods`, shared with the daemon.)

use std::io;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use netlink_packet_route::link::InfoKind;
use sha2::{Digest, Sha256};

use crate::netns::NetnsError;
use sluice_net::cni::error::{CniError, code};
use sluice_net::{BlockingNetlink as Netlink, NetlinkError, netlink::Link as LinkSummary};

/// The bridge's MAC: fixed per (bridge, pod CIDR) and locally administered.
/// Setting it explicitly stops the kernel from re-deriving the bridge MAC
/// from its lowest-numbered port as pods come and go, which would leave
/// every pod's ARP entry for the gateway stale.
pub fn bridge_mac(bridge: &str, pod_cidr: Ipv4Network) -> [u8; 6] {
    let mut h = Sha256::new();
    h.update(bridge.as_bytes());
    h.update([0u8]);
    h.update(pod_cidr.to_string().as_bytes());
    let d = h.finalize();
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&d[..6]);
    mac[0] = (mac[0] & 0xfe) | 0x02; // unicast, locally administered
    mac
}

/// Makes sure the bridge exists with the gateway address, the MTU, and is
/// up. Safe to race with other ADDs doing the same.
pub fn ensure_bridge(
    nl: &Netlink,
    name: &str,
    mtu: u32,
    pod_cidr: Ipv4Network,
    gateway: Ipv4Addr,
) -> Result<LinkSummary, NetlinkError> {
    if nl.link(name)?.is_none() {
        nl.create_bridge(name, mtu, bridge_mac(name, pod_cidr))?;
    }
    let br = nl.link(name)?.ok_or_else(|| {
        NetlinkError::Unexpected(format!("bridge {name} vanished after creation"))
    })?;
    if br.kind != Some(InfoKind::Bridge) {
        return Err(NetlinkError::Unexpected(format!(
            "{name} exists but is not a bridge ({:?})",
            br.kind
        )));
    }
    if br.mtu != mtu {
        nl.set_mtu(br.index, mtu)?;
    }
    if !br.up {
        nl.set_up(br.index)?;
    }
    nl.add_address(br.index, gateway, pod_cidr.prefix())?;
    nl.link_by_index(br.index)?
        .ok_or_else(|| NetlinkError::Unexpected(format!("bridge {name} vanished")))
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Turns on IPv4 forwarding in the caller's network namespace (the node's):
/// pods reach anything beyond the bridge only through it. /proc/sys/net
/// shows the namespace of the thread that opens it.
pub fn enable_ip_forward() -> Result<(), CniError> {
    let io_err = |e: io::Error| CniError::new(code::IO, format!("{IP_FORWARD}: {e}"));
    let cur = std::fs::read_to_string(IP_FORWARD).map_err(io_err)?;
    if cur.trim() != "1" {
        std::fs::write(IP_FORWARD, "1\n").map_err(io_err)?;
    }
    Ok(())
}

impl From<NetnsError> for NetlinkError {
    fn from(e: NetnsError) -> Self {
        NetlinkError::Unexpected(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_mac_is_local_unicast_and_stable() {
        let cidr: Ipv4Network = "10.244.1.0/24".parse().unwrap();
        let m = bridge_mac("sluice0", cidr);
        assert_eq!(m, bridge_mac("sluice0", cidr));
        assert_eq!(m[0] & 0x03, 0x02);
        assert_ne!(m, bridge_mac("sluice0", "10.244.2.0/24".parse().unwrap()));
    }
}
