//! Pod interfaces on the node: the bridge they hang off and the
//! deterministic names of their host-side veths.

use proxy_common::names::VETH_PREFIX;
use sha2::{Digest, Sha256};

use crate::blocking::{BlockingNetlink, on_fresh_thread};
use crate::netlink::{Link, NetlinkError};

/// The bridge every pod veth is a port of.
pub const DEFAULT_BRIDGE: &str = "sluice0";

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

/// Host-side pod veths among `links`: named like [`host_veth_name`], veths,
/// ports of `bridge`. Sorted by name; empty when the bridge does not exist.
pub fn pod_veths_among(links: &[Link], bridge: &str) -> Vec<String> {
    let mut names: Vec<String> = pod_veth_links(links, bridge)
        .map(|l| l.name.clone())
        .collect();
    names.sort();
    names
}

fn pod_veth_links<'a>(links: &'a [Link], bridge: &str) -> impl Iterator<Item = &'a Link> {
    let bridge = links.iter().find(|l| l.name == bridge).map(|b| b.index);
    links.iter().filter(move |l| {
        bridge.is_some()
            && l.controller == bridge
            && is_host_veth_name(&l.name)
            && matches!(l.kind, Some(netlink_packet_route::link::InfoKind::Veth))
    })
}

/// The host-side pod veths of `bridge` in the caller's network namespace.
pub fn list_pod_veths(bridge: &str) -> Result<Vec<String>, NetlinkError> {
    on_fresh_thread(|| -> Result<Vec<String>, NetlinkError> {
        Ok(pod_veths_among(&BlockingNetlink::new()?.links()?, bridge))
    })?
}

/// Interface indexes of the host-side pod veths of `bridge`.
pub fn list_pod_veth_indexes(bridge: &str) -> Result<Vec<u32>, NetlinkError> {
    on_fresh_thread(|| -> Result<Vec<u32>, NetlinkError> {
        let links = BlockingNetlink::new()?.links()?;
        Ok(pod_veth_links(&links, bridge).map(|l| l.index).collect())
    })?
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
}
