//! DEL: remove the veth and release the address; idempotent.
//!
//! DEL never enters the pod's namespace: deleting the host end of a veth
//! pair deletes the pod end too, wherever it is. So DEL works the same when
//! the namespace is gone, when `CNI_NETNS` is empty, and when the interface
//! was already removed.

use super::Ctx;
use crate::endpoint;
use crate::ipam::{Attachment, IpamStore};
use sluice_net::BlockingNetlink as Netlink;
use sluice_net::cni::error::CniError;
use sluice_net::pods::host_veth_name;

pub(crate) fn run(ctx: &Ctx<'_>) -> Result<(), CniError> {
    let (cid, ifname) = ctx.env.attachment()?;
    ctx.env.require_path()?;
    let host = host_veth_name(&cid, &ifname);

    // Veth first, address second: if we die in between, the reservation
    // still names the attachment and the next DEL (or GC) finishes the job;
    // the other order could leave a veth no reservation points to.
    let nl = Netlink::new()?;
    if nl.delete_link(&host)? {
        ctx.log.info(format_args!("deleted host veth {host}"));
    }
    let store = IpamStore::open(ctx.conf.ipam_dir())?;
    let owner = Attachment::new(cid, ifname);
    // Before the release: once released, the address may be another pod's.
    if let Some(ip) = store.lookup(&owner)? {
        endpoint::forget(&ctx.log, &ctx.conf.bpffs, &[ip]);
    }
    for ip in store.release(&owner)? {
        ctx.log.info(format_args!("released {ip}"));
    }
    Ok(())
}
