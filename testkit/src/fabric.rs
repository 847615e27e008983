//! An L2 segment between namespaces: the underlay LAN of simulated nodes.

use anyhow::Result;

use crate::netns::NetNs;

const BRIDGE: &str = "fab0";

/// A namespace holding one bridge; hosts join it through a veth each.
pub struct Fabric {
    ns: NetNs,
}

impl Fabric {
    pub fn new() -> Result<Self> {
        let ns = NetNs::new("fabric")?;
        ns.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        ns.ip(&["link", "set", BRIDGE, "up"])?;
        Ok(Self { ns })
    }

    pub fn ns(&self) -> &NetNs {
        &self.ns
    }

    /// Connects `host` to the bridge through port `fab-<tag>` (at most 11
    /// characters: interface names are short), with `addr` (`ADDR/PREFIX`)
    /// on the host's `eth0`. Both links are 1500 bytes, the MTU the tests'
    /// overlay arithmetic starts from.
    pub fn attach(&self, host: &NetNs, tag: &str, addr: &str) -> Result<()> {
        let port = format!("fab-{tag}");
        // Both ends are created inside the fabric namespace, then one moves:
        // never in the root namespace.
        self.ns.ip(&[
            "link",
            "add",
            &port,
            "mtu",
            "1500",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "mtu",
            "1500",
            "netns",
            host.name(),
        ])?;
        self.ns
            .ip(&["link", "set", &port, "master", BRIDGE, "up"])?;
        host.ip(&["addr", "add", addr, "dev", "eth0"])?;
        host.ip(&["link", "set", "eth0", "up"])?;
        Ok(())
    }
}
