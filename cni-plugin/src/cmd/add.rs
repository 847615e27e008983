//! ADD: bridge, address, veth, datapath, pod configuration — or nothing.
//!
//! Order matters for what a failure (or a SIGKILL) can leave behind:
//! 1. checks that change nothing: pins present, netns valid, ifname free;
//! 2. IPAM reservation (owned by the attachment, so DEL/GC can find it);
//! 3. veth under a name derived from the attachment (so DEL/GC can find it);
//! 4. datapath attached before the veth is up, so no packet bypasses it;
//! 5. pod side configured last, then registered for direct delivery.
//!
//! A failure after step 2 undoes steps 2–5 before returning; a kill leaves
//! only things the following DEL removes by name.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde_json::Value;

use super::Ctx;
use crate::bridge::{enable_ip_forward, ensure_bridge};
use crate::endpoint;
use crate::ipam::{Attachment, IpamStore, Pool};
use crate::netns::NetNs;
use crate::result::{CniResult, Interface, IpConfig, Route, format_mac};
use sluice_net::BlockingNetlink as Netlink;
use sluice_net::cni::error::{CniError, code};
use sluice_net::pods::host_veth_name;
use sluice_net::tc::{self as datapath, AttachError};

pub(crate) fn run(ctx: &Ctx<'_>) -> Result<Value, CniError> {
    let (cid, ifname) = ctx.env.attachment()?;
    let netns_path = ctx.env.netns()?;
    ctx.env.require_path()?;
    ctx.env.args()?;
    let conf = &ctx.conf;
    let pool = Pool::new(conf.pod_cidr)?;

    if let Some(pin) = datapath::missing_pins(&conf.bpffs).into_iter().next() {
        return Err(AttachError::MissingPin(pin).into());
    }
    let ns = NetNs::open(netns_path)?;
    // Never clobber: the name may be this very attachment's live interface
    // (a repeated ADD), and its address must survive this failure.
    let taken =
        ns.run(|| -> Result<bool, CniError> { Ok(Netlink::new()?.link(&ifname)?.is_some()) })?;
    if taken {
        return Err(interface_exists(&ifname, netns_path));
    }

    let store = IpamStore::open(conf.ipam_dir())?;
    let owner = Attachment::new(&cid, &ifname);
    let ip = store.allocate(&pool, &owner)?;
    let host = host_veth_name(&cid, &ifname);
    ctx.log
        .info(format_args!("allocated {ip}, host veth {host}"));

    match setup(ctx, &ns, &ifname, &host, ip, &pool) {
        Ok(result) => Ok(result.to_json(ctx.version)),
        Err(e) => {
            undo(ctx, &store, &owner, &host);
            Err(e)
        }
    }
}

fn interface_exists(ifname: &str, netns: &str) -> CniError {
    CniError::new(
        code::INTERFACE_EXISTS,
        format!("interface {ifname} already exists in {netns}"),
    )
}

fn setup(
    ctx: &Ctx<'_>,
    ns: &NetNs,
    ifname: &str,
    host: &str,
    ip: Ipv4Addr,
    pool: &Pool,
) -> Result<CniResult, CniError> {
    let conf = &ctx.conf;
    let gateway = pool.gateway();
    let prefix = conf.pod_cidr.prefix();

    enable_ip_forward()?;
    let nl = Netlink::new()?;
    let bridge = ensure_bridge(&nl, &conf.bridge, conf.mtu, conf.pod_cidr, gateway)?;

    // A veth under this attachment's name is debris of an ADD that died
    // half-way (its pod end is not in the netns: we checked the name).
    if nl.delete_link(host)? {
        ctx.log
            .warn(format_args!("removed leftover host veth {host}"));
    }
    if let Err(e) = nl.create_veth(host, ifname, ns.fd(), conf.mtu, bridge.index) {
        if e.errno() == Some(libc::EEXIST) {
            return Err(interface_exists(ifname, &ns.path().display().to_string()));
        }
        return Err(e.into());
    }
    let host_link = nl.link(host)?.ok_or_else(|| {
        CniError::new(
            code::IO,
            format!("host veth {host} vanished after creation"),
        )
    })?;
    nl.set_hairpin(host_link.index, true)?;
    datapath::attach_pod_programs(host, &conf.bpffs)?;
    nl.set_up(host_link.index)?;

    let pod_link = ns.run(|| configure_pod(ifname, ip, prefix, gateway))?;
    endpoint::register(&ctx.log, &conf.bpffs, ip, host_link.index, &pod_link.mac);

    let mtu = Some(conf.mtu);
    Ok(CniResult {
        interfaces: vec![
            Interface {
                name: bridge.name.clone(),
                mac: Some(format_mac(&bridge.mac)),
                mtu,
                sandbox: None,
            },
            Interface {
                name: host.to_owned(),
                mac: Some(format_mac(&host_link.mac)),
                mtu,
                sandbox: None,
            },
            Interface {
                name: ifname.to_owned(),
                mac: Some(format_mac(&pod_link.mac)),
                mtu,
                sandbox: Some(ns.path().display().to_string()),
            },
        ],
        ips: vec![IpConfig {
            address: Ipv4Network::new(ip, prefix)
                .map_err(|e| CniError::new(code::IO, e.to_string()))?,
            gateway: Some(gateway),
            interface: Some(2),
        }],
        routes: vec![Route {
            dst: Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).expect("0.0.0.0/0"),
            gw: Some(gateway),
        }],
    })
}

/// Runs inside the pod's namespace.
fn configure_pod(
    ifname: &str,
    ip: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
) -> Result<sluice_net::netlink::Link, CniError> {
    let nl = Netlink::new()?;
    if let Some(lo) = nl.link("lo")?
        && !lo.up
    {
        nl.set_up(lo.index)?;
    }
    let link = nl.link(ifname)?.ok_or_else(|| {
        CniError::new(
            code::IO,
            format!("{ifname} missing in the pod namespace after creation"),
        )
    })?;
    nl.add_address(link.index, ip, prefix)?;
    // Up before the route: the gateway is reachable only once the subnet
    // route exists, which the kernel adds when the link comes up.
    nl.set_up(link.index)?;
    nl.add_default_route(link.index, gateway).map_err(|e| {
        if e.errno() == Some(libc::EEXIST) {
            CniError::new(
                code::IO,
                format!("the pod namespace already has a default route (adding one via {gateway})"),
            )
        } else {
            e.into()
        }
    })?;
    Ok(link)
}

/// Best effort: each step is attempted even if another fails, and failures
/// are logged; the runtime's DEL retries whatever is left.
fn undo(ctx: &Ctx<'_>, store: &IpamStore, owner: &Attachment, host: &str) {
    if let Ok(Some(ip)) = store.lookup(owner) {
        endpoint::forget(&ctx.log, &ctx.conf.bpffs, &[ip]);
    }
    match Netlink::new().and_then(|nl| nl.delete_link(host)) {
        Ok(_) => {}
        Err(e) => ctx.log.warn(format_args!("undo: delete {host}: {e}")),
    }
    if let Err(e) = store.release(owner) {
        ctx.log.warn(format_args!("undo: release address: {e}"));
    }
}
