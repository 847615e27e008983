//! Creating, adopting and repairing the overlay's VXLAN device.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use netlink_packet_route::link::InfoKind;
use rtnetlink::LinkVxlan;
use sluice_net::{Netlink, mtu::VXLAN_OVERHEAD, netlink::Link};
use tracing::{debug, info, warn};

use super::{
    OverlayConfig,
    error::OverlayError,
    peers::{DEVICE_PREFIX, MAX_VNI, Mac, device_name, vtep_mac},
};

/// The smallest MTU IPv4 allows; an uplink must leave at least this much.
const MIN_IPV4_MTU: u32 = 68;

/// The daemon's flag that sets the overlay's UDP port (named in errors).
pub const PORT_FLAG: &str = "--vxlan-port";
/// The daemon's flag that sets the overlay's VNI.
pub const VNI_FLAG: &str = "--vxlan-vni";

/// The device as the last ensure left it.
#[derive(Clone, Debug)]
pub(super) struct Device {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub uplink: String,
    /// What this ensure changed, for the sync report; empty when adopted
    /// as it was.
    pub changes: Vec<String>,
}

pub(super) fn validate(cfg: &OverlayConfig) -> Result<(), OverlayError> {
    if cfg.vni > MAX_VNI {
        return Err(OverlayError::Config(format!(
            "VNI {} does not fit VXLAN's 24 bits (at most {MAX_VNI}); set another with {VNI_FLAG}",
            cfg.vni
        )));
    }
    if cfg.port == 0 {
        return Err(OverlayError::Config(format!(
            "UDP port 0 is not a port; set one with {PORT_FLAG}"
        )));
    }
    if cfg.pod_cidr.contains(cfg.node_addr) {
        return Err(OverlayError::Config(format!(
            "the node address {} lies inside the node's own pod CIDR {}",
            cfg.node_addr, cfg.pod_cidr
        )));
    }
    Ok(())
}

/// The address the device carries: the network address of the node's pod
/// CIDR as a /32, as flannel does. Traffic the node itself sends to remote
/// pods then leaves with it as source, and replies come back through the
/// overlay to an address of this node; a /32 adds no connected route that
/// could shadow the pod bridge's.
pub(super) fn device_address(pod_cidr: Ipv4Network) -> Ipv4Addr {
    pod_cidr.network()
}

/// Why an existing device cannot be kept as it is (empty: adopt it).
fn incompatibilities(l: &Link, cfg: &OverlayConfig, uplink: u32) -> Vec<String> {
    let mut why = Vec::new();
    let Some(v) = &l.vxlan else {
        return vec!["not a VXLAN device".into()];
    };
    if v.vni != Some(cfg.vni) {
        why.push(format!("VNI {:?}, want {}", v.vni, cfg.vni));
    }
    if v.port != Some(cfg.port) {
        why.push(format!("port {:?}, want {}", v.port, cfg.port));
    }
    if v.local != Some(cfg.node_addr) {
        why.push(format!("local {:?}, want {}", v.local, cfg.node_addr));
    }
    if v.link != Some(uplink) {
        why.push(format!("underlay link {:?}, want #{uplink}", v.link));
    }
    if v.learning != Some(false) {
        why.push("learning on".into());
    }
    if v.collect_metadata {
        why.push("external (collect_metadata) mode".into());
    }
    if let Some(g) = v.group {
        why.push(format!("default remote/group {g}"));
    }
    let mac = vtep_mac(cfg.node_addr);
    if l.mac != mac {
        why.push(format!(
            "MAC {}, want {}",
            l.mac
                .as_slice()
                .try_into()
                .map(|m: [u8; 6]| Mac(m).to_string())
                .unwrap_or_else(|_| format!("{:?}", l.mac)),
            Mac(mac)
        ));
    }
    why
}

async fn find_uplink(nl: &Netlink, addr: Ipv4Addr) -> Result<Link, OverlayError> {
    nl.link_with_address(addr)
        .await?
        .ok_or(OverlayError::NoUplink { addr })
}

/// Makes the device exist with exactly the configured parameters, the
/// right MTU and address, and up.
///
/// `check_conflicts`: also look for other VXLAN devices holding our UDP
/// port and remove Sluice devices of other VNIs. Done at start and
/// whenever the device has to be (re)created; a periodic check of a working
/// device skips it, so a foreign device appearing later cannot stop the
/// peers' entries from being kept up to date.
pub(super) async fn ensure(
    nl: &Netlink,
    cfg: &OverlayConfig,
    check_conflicts: bool,
) -> Result<Device, OverlayError> {
    validate(cfg)?;
    let name = device_name(cfg.vni);
    let uplink = find_uplink(nl, cfg.node_addr).await?;
    let mtu = device_mtu(&uplink)?;
    let mut changes = Vec::new();

    let mut existing = nl.link(&name).await?;
    if let Some(l) = &existing
        && l.kind != Some(InfoKind::Vxlan)
    {
        return Err(OverlayError::NameTaken {
            device: name,
            kind: l
                .kind
                .as_ref()
                .map_or_else(|| "unknown".into(), |k| k.to_string()),
        });
    }
    let recreate = existing
        .as_ref()
        .map(|l| incompatibilities(l, cfg, uplink.index))
        .filter(|why| !why.is_empty());

    if check_conflicts || existing.is_none() || recreate.is_some() {
        remove_conflicts(nl, cfg, &name, &mut changes).await?;
    }

    if let (Some(l), Some(why)) = (&existing, &recreate) {
        warn!(device = %name, differences = %why.join("; "), "overlay device differs from the configuration; recreating it");
        nl.delete_link(l.index, &name).await?;
        changes.push(format!("deleted {name} ({})", why.join("; ")));
        existing = None;
    }

    let mut dev = match existing {
        Some(l) => l,
        None => {
            let l = create(nl, cfg, &name, &uplink, mtu).await?;
            changes.push(format!("created {name}"));
            l
        }
    };

    if dev.mtu != mtu {
        nl.set_mtu(dev.index, mtu).await?;
        info!(device = %name, from = dev.mtu, to = mtu, uplink = %uplink.name, "overlay MTU set");
        changes.push(format!("MTU {} -> {mtu}", dev.mtu));
        dev.mtu = mtu;
    }

    ensure_address(nl, &dev, device_address(cfg.pod_cidr), &mut changes).await?;

    if !dev.up {
        bring_up(nl, &dev, cfg.port).await?;
        changes.push(format!("{name} up"));
    }

    Ok(Device {
        index: dev.index,
        name,
        mtu,
        uplink: uplink.name,
        changes,
    })
}

/// The device's MTU: the uplink's less VXLAN's headers, if that still
/// carries IPv4.
fn device_mtu(uplink: &Link) -> Result<u32, OverlayError> {
    uplink
        .mtu
        .checked_sub(VXLAN_OVERHEAD)
        .filter(|m| *m >= MIN_IPV4_MTU)
        .ok_or_else(|| {
            OverlayError::Config(format!(
                "the uplink {} has MTU {}: too small to carry VXLAN ({VXLAN_OVERHEAD} bytes of \
                 headers) and IPv4",
                uplink.name, uplink.mtu
            ))
        })
}

/// Creates the device on the uplink with our MAC, learning off, no IPv6.
async fn create(
    nl: &Netlink,
    cfg: &OverlayConfig,
    name: &str,
    uplink: &Link,
    mtu: u32,
) -> Result<Link, OverlayError> {
    let mac = vtep_mac(cfg.node_addr);
    let msg = LinkVxlan::new(name, cfg.vni)
        .dev(uplink.index)
        .port(cfg.port)
        .local(cfg.node_addr)
        .learning(false)
        .address(mac.to_vec())
        .mtu(mtu)
        .build();
    nl.create_link(msg, &format!("VXLAN device {name}")).await?;
    let l = nl.link(name).await?.ok_or_else(|| {
        OverlayError::Config(format!("{name} vanished right after it was created"))
    })?;
    if let Err(e) = nl.disable_ipv6_addrgen(l.index).await {
        debug!(device = %name, error = %e, "could not turn off IPv6 address generation");
    }
    info!(device = %name, vni = cfg.vni, port = cfg.port, local = %cfg.node_addr,
          uplink = %uplink.name, mac = %Mac(mac), mtu, "overlay device created");
    Ok(l)
}

/// Brings the device up, which binds its UDP socket: another socket on the
/// port is reported as such.
async fn bring_up(nl: &Netlink, dev: &Link, port: u16) -> Result<(), OverlayError> {
    match nl.set_up(dev.index).await {
        Ok(()) => Ok(()),
        Err(e) if e.errno() == Some(libc::EADDRINUSE) => Err(OverlayError::PortInUse {
            device: dev.name.clone(),
            port,
            flag: PORT_FLAG,
        }),
        Err(e) => Err(e.into()),
    }
}

/// Fails on a foreign VXLAN device using our UDP port: with a different
/// VNI the kernel would silently share the socket, and both overlays would
/// claim the same port on every node; with the same VNI it would refuse to
/// create ours with a bare EEXIST. Sluice devices of other VNIs (left by a
/// VNI change) are removed: their routes would compete with ours.
async fn remove_conflicts(
    nl: &Netlink,
    cfg: &OverlayConfig,
    name: &str,
    changes: &mut Vec<String>,
) -> Result<(), OverlayError> {
    let links = nl.links().await?;
    let others = links
        .iter()
        .filter(|l| l.name != name && l.kind == Some(InfoKind::Vxlan));
    let (own, foreign): (Vec<&Link>, Vec<&Link>) =
        others.partition(|l| l.name.starts_with(DEVICE_PREFIX));
    if let Some(l) = foreign
        .iter()
        .find(|l| l.vxlan.as_ref().and_then(|v| v.port) == Some(cfg.port))
    {
        return Err(OverlayError::PortTaken {
            device: l.name.clone(),
            vni: l.vxlan.as_ref().and_then(|v| v.vni).unwrap_or(0),
            port: cfg.port,
            flag: PORT_FLAG,
        });
    }
    for l in own {
        warn!(device = %l.name, "removing a Sluice overlay device of another VNI");
        nl.delete_link(l.index, &l.name).await?;
        changes.push(format!("deleted stale {}", l.name));
    }
    Ok(())
}

/// Leaves exactly `addr/32` as the device's IPv4 address: an old one (the
/// node's pod CIDR changed) would keep attracting traffic.
async fn ensure_address(
    nl: &Netlink,
    dev: &Link,
    addr: Ipv4Addr,
    changes: &mut Vec<String>,
) -> Result<(), OverlayError> {
    let have = nl.addresses(dev.index).await?;
    if !have.contains(&(addr, 32)) {
        nl.add_address(dev.index, addr, 32).await?;
        changes.push(format!("address {addr}/32"));
    }
    for (a, p) in have.into_iter().filter(|x| *x != (addr, 32)) {
        nl.delete_address(dev.index, a, p).await?;
        changes.push(format!("removed address {a}/{p}"));
    }
    Ok(())
}
