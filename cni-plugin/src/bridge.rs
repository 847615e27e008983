//! The node side: the pod bridge, host-side veth names, IPv4 forwarding.

use std::io;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use netlink_packet_route::link::InfoKind;
use proxy_common::names::VETH_PREFIX;
use sha2::{Digest, Sha256};

use crate::error::{CniError, code};
use crate::netlink::{LinkSummary, Netlink, NetlinkError};
use crate::netns::{NetnsError, on_fresh_thread};

/// Hex digits of the attachment hash in a host veth name: `sl` + 11 = 13
/// bytes, under the 15-byte limit with room to spare for humans' eyes.
const VETH_HASH_LEN: usize = 11;

/// The host-side veth name of an attachment: `sl` + the first 11 hex digits
/// of SHA-256(`containerID` NUL `ifname`). Deterministic, so DEL and GC find
/// the veth from the attachment alone, and the daemon can map veths back to
/// attachments. (Container IDs and interface names cannot contain NUL, so
/// the encoding is unambiguous.)
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let mut h = Sha256::new();
    h.update(container_id.as_bytes());
    h.update([0u8]);
    h.update(ifname.as_bytes());
    let digest = h.finalize();
    let hex: String = digest[..VETH_HASH_LEN.div_ceil(2)]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{VETH_PREFIX}{}", &hex[..VETH_HASH_LEN])
}

/// Whether `name` has the shape of a host-side pod veth name.
pub fn is_host_veth_name(name: &str) -> bool {
    name.strip_prefix(VETH_PREFIX).is_some_and(|rest| {
        rest.len() == VETH_HASH_LEN && rest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

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

/// Host-side pod veths in the caller's network namespace: links named like
/// [`host_veth_name`] that are ports of `bridge`. Sorted by name. Empty when
/// the bridge does not exist.
pub fn list_pod_veths(bridge: &str) -> Result<Vec<String>, CniError> {
    on_fresh_thread(|| -> Result<Vec<String>, CniError> {
        let nl = Netlink::new()?;
        pod_veths(&nl, bridge).map_err(CniError::from)
    })
    .map_err(CniError::from)?
}

pub(crate) fn pod_veths(nl: &Netlink, bridge: &str) -> Result<Vec<String>, NetlinkError> {
    let links = nl.links()?;
    let Some(br) = links.iter().find(|l| l.name == bridge) else {
        return Ok(Vec::new());
    };
    let mut names: Vec<String> = links
        .iter()
        .filter(|l| l.controller == Some(br.index) && is_host_veth_name(&l.name))
        .filter(|l| matches!(l.kind, Some(InfoKind::Veth)))
        .map(|l| l.name.clone())
        .collect();
    names.sort();
    Ok(names)
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
    fn veth_names_are_deterministic_and_well_formed() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a, host_veth_name("abc", "eth0"));
        assert_eq!(a.len(), 13);
        assert!(a.starts_with("sl"));
        assert!(is_host_veth_name(&a));
        assert_ne!(a, host_veth_name("abc", "eth1"));
        assert_ne!(a, host_veth_name("abd", "eth0"));
        // The separator keeps ("ab", "ceth0") apart from ("abc", "eth0").
        assert_ne!(host_veth_name("ab", "ceth0"), a);
        // Golden value (`printf 'abc\0eth0' | sha256sum`): the daemon and
        // every plugin version must agree on it.
        assert_eq!(a, "sld887cd28687");
    }

    #[test]
    fn veth_name_shape() {
        assert!(is_host_veth_name("sl0123456789a"));
        assert!(!is_host_veth_name("sl0123456789"));
        assert!(!is_host_veth_name("sl0123456789ab"));
        assert!(!is_host_veth_name("sl0123456789A"));
        assert!(!is_host_veth_name("xx0123456789a"));
        assert!(!is_host_veth_name("sluice0"));
    }

    #[test]
    fn bridge_mac_is_local_unicast_and_stable() {
        let cidr: Ipv4Network = "10.244.1.0/24".parse().unwrap();
        let m = bridge_mac("sluice0", cidr);
        assert_eq!(m, bridge_mac("sluice0", cidr));
        assert_eq!(m[0] & 0x03, 0x02);
        assert_ne!(m, bridge_mac("sluice0", "10.244.2.0/24".parse().unwrap()));
    }
}
