//! `sluicectl nodes`: the overlay as the kernel holds it, per peer.

use std::path::Path;

use serde::Serialize;

use super::table::Table;
use crate::{
    overlay::{self, EntryState, Peer},
    writer::meta,
};

#[derive(Clone, Debug, Serialize)]
pub struct NodeRow {
    pub node: String,
    pub address: String,
    pub pod_cidr: String,
    pub vtep_mac: String,
    pub route: String,
    pub fdb: String,
    pub neighbour: String,
    pub ok: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Nodes {
    pub device: Option<String>,
    pub device_up: Option<bool>,
    pub this_node: Option<String>,
    pub peers: Vec<NodeRow>,
}

fn state(e: &EntryState) -> String {
    match e {
        EntryState::Present => "ok".into(),
        EntryState::Missing => "MISSING".into(),
        EntryState::Wrong(why) => format!("WRONG ({why})"),
    }
}

/// Reads the peers the daemon last synced and checks each one's entries
/// on the overlay device in this network namespace.
pub fn collect(state_dir: &Path) -> anyhow::Result<Nodes> {
    let path = state_dir.join(meta::NODES_FILE);
    let m = meta::read_overlay(state_dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow::anyhow!(
            "{} does not exist: sluiced has not synced the overlay with this --state-dir",
            path.display()
        ),
        std::io::ErrorKind::PermissionDenied => {
            anyhow::anyhow!("{}: permission denied (run as root)", path.display())
        }
        _ => anyhow::anyhow!("{} is unreadable: {e}", path.display()),
    })?;
    let peers: Vec<Peer> = m
        .peers
        .iter()
        .map(|p| Peer {
            node: p.name.clone(),
            node_addr: p.addr,
            pod_cidr: p.pod_cidr,
        })
        .collect();
    let Some(device) = m.device.clone() else {
        return Ok(Nodes {
            device: None,
            device_up: None,
            this_node: m.node.map(|n| n.name),
            peers: Vec::new(),
        });
    };
    let found = overlay::inspect_blocking(&device, &peers)?;
    Ok(Nodes {
        device_up: found.device.as_ref().map(|d| d.up),
        device: Some(device),
        this_node: m
            .node
            .map(|n| format!("{} {} {}", n.name, n.addr, n.pod_cidr)),
        peers: found
            .peers
            .iter()
            .map(|p| NodeRow {
                node: p.peer.node.clone(),
                address: p.peer.node_addr.to_string(),
                pod_cidr: p.peer.pod_cidr.to_string(),
                vtep_mac: overlay::Mac(p.peer.vtep_mac()).to_string(),
                route: state(&p.route),
                fdb: state(&p.fdb),
                neighbour: state(&p.neighbour),
                ok: p.ok(),
            })
            .collect(),
    })
}

pub fn table(n: &Nodes) -> Table {
    let mut t = Table::new(&[
        "NODE",
        "ADDRESS",
        "POD CIDR",
        "VTEP MAC",
        "ROUTE",
        "FDB",
        "NEIGHBOUR",
    ]);
    for r in &n.peers {
        t.row(vec![
            r.node.clone(),
            r.address.clone(),
            r.pod_cidr.clone(),
            r.vtep_mac.clone(),
            r.route.clone(),
            r.fdb.clone(),
            r.neighbour.clone(),
        ]);
    }
    t
}
