//! CHECK: the attachment still looks the way ADD left it.
//!
//! Daemon liveness is deliberately not checked here: a runtime may treat a
//! failed CHECK as a permanently broken container, and a daemon restart must
//! not get pods killed. STATUS reports the daemon.

use std::net::Ipv4Addr;

use super::Ctx;
use crate::ipam::{Attachment, IpamStore, Pool};
use crate::netns::NetNs;
use crate::result::CniResult;
use sluice_net::cni::error::{CniError, code};
use sluice_net::pods::host_veth_name;
use sluice_net::tc::filters_present;
use sluice_net::{BlockingNetlink as Netlink, netlink::DefaultRoute};

fn failed(msg: String) -> CniError {
    CniError::new(code::CHECK_FAILED, msg)
}

pub(crate) fn run(ctx: &Ctx<'_>) -> Result<(), CniError> {
    if !ctx.version.has_check() {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("CHECK is not defined in cniVersion {}", ctx.version),
        ));
    }
    let (cid, ifname) = ctx.env.attachment()?;
    let netns_path = ctx.env.netns()?;
    ctx.env.require_path()?;
    let conf = &ctx.conf;
    let pool = Pool::new(conf.pod_cidr)?;
    let prev = ctx
        .raw
        .get("prevResult")
        .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "CHECK requires prevResult"))?;
    let prev = CniResult::from_json(prev)?;

    // Our address: the one prevResult assigns to the sandbox interface
    // CNI_IFNAME; failing that, any address in our pod CIDR.
    let pod_if = prev
        .interfaces
        .iter()
        .position(|i| i.name == ifname && i.sandbox.is_some());
    let ipc = prev
        .ips
        .iter()
        .filter(|ip| conf.pod_cidr.contains(ip.address.ip()))
        .find(|ip| pod_if.is_some() && ip.interface == pod_if)
        .or_else(|| {
            prev.ips
                .iter()
                .find(|ip| conf.pod_cidr.contains(ip.address.ip()))
        })
        .ok_or_else(|| {
            failed(format!(
                "prevResult has no address in {} for {ifname}",
                conf.pod_cidr
            ))
        })?;
    let ip = ipc.address.ip();
    let prefix = ipc.address.prefix();
    if prefix != conf.pod_cidr.prefix() {
        return Err(failed(format!(
            "prevResult address {} does not have the prefix of {}",
            ipc.address, conf.pod_cidr
        )));
    }
    let gateway = ipc.gateway.unwrap_or(pool.gateway());

    let store = IpamStore::open(conf.ipam_dir())?;
    match store.lookup(&Attachment::new(&cid, &ifname))? {
        Some(held) if held == ip => {}
        Some(held) => {
            return Err(failed(format!(
                "IPAM reserves {held} for this attachment, prevResult says {ip}"
            )));
        }
        None => {
            return Err(failed(format!(
                "no IPAM reservation for this attachment (expected {ip})"
            )));
        }
    }

    check_host_side(ctx, &host_veth_name(&cid, &ifname))?;

    let ns = NetNs::open(netns_path)?;
    ns.run(|| check_pod_side(&ifname, ip, prefix, gateway, conf.mtu))
}

fn check_host_side(ctx: &Ctx<'_>, host: &str) -> Result<(), CniError> {
    let conf = &ctx.conf;
    let nl = Netlink::new()?;
    let bridge = nl
        .link(&conf.bridge)?
        .ok_or_else(|| failed(format!("bridge {} does not exist", conf.bridge)))?;
    let link = nl
        .link(host)?
        .ok_or_else(|| failed(format!("host veth {host} does not exist")))?;
    if link.controller != Some(bridge.index) {
        return Err(failed(format!(
            "host veth {host} is not a port of {}",
            conf.bridge
        )));
    }
    if !link.up {
        return Err(failed(format!("host veth {host} is down")));
    }
    if link.mtu != conf.mtu {
        return Err(failed(format!(
            "host veth {host} has MTU {}, want {}",
            link.mtu, conf.mtu
        )));
    }
    if link.hairpin != Some(true) {
        return Err(failed(format!("hairpin mode is off on {host}")));
    }
    match filters_present(&nl, link.index)? {
        (true, true) => Ok(()),
        (ingress, egress) => Err(failed(format!(
            "datapath programs missing on {host} (ingress: {ingress}, egress: {egress})"
        ))),
    }
}

/// Runs inside the pod's namespace.
fn check_pod_side(
    ifname: &str,
    ip: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
    mtu: u32,
) -> Result<(), CniError> {
    let nl = Netlink::new()?;
    let link = nl
        .link(ifname)?
        .ok_or_else(|| failed(format!("{ifname} does not exist in the pod")))?;
    if !link.up {
        return Err(failed(format!("{ifname} is down")));
    }
    if link.mtu != mtu {
        return Err(failed(format!("{ifname} has MTU {}, want {mtu}", link.mtu)));
    }
    if !nl.addresses(link.index)?.contains(&(ip, prefix)) {
        return Err(failed(format!("{ifname} lacks {ip}/{prefix}")));
    }
    let want = DefaultRoute {
        gateway: Some(gateway),
        oif: Some(link.index),
    };
    if !nl.default_routes()?.contains(&want) {
        return Err(failed(format!(
            "no default route via {gateway} on {ifname}"
        )));
    }
    Ok(())
}
