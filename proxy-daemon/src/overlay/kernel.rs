//! The overlay's entries in the kernel, through `sluice_net`'s netlink
//! layer: reading what the device holds, applying one change.

use sluice_net::{Netlink, NetlinkError};

use super::plan::{Change, Entries};

/// `rtm_protocol` of the overlay's routes (`proto 92` in `ip route`): marks
/// them as Sluice's, so a sync removes only routes it made and leaves
/// anything an administrator put on the device alone. 92 (0x5c, as in the
/// VTEP MACs) is unassigned in iproute2's rt_protos.
pub const ROUTE_PROTOCOL: u8 = 92;

/// The overlay entries on the device `index`: its permanent IPv4
/// neighbours, its permanent FDB entries, and the main-table routes of our
/// protocol through it.
pub async fn read_entries(nl: &Netlink, index: u32) -> Result<Entries, NetlinkError> {
    Ok(Entries {
        neighbours: nl.neighbours(index).await?,
        fdb: nl.fdb(index).await?,
        routes: nl.routes(index, ROUTE_PROTOCOL).await?,
    })
}

/// Applies one change to the device `index`. Removing what is already gone
/// succeeds: the goal is the state, not the operation.
pub async fn apply(nl: &Netlink, index: u32, change: &Change) -> Result<(), NetlinkError> {
    match change {
        Change::SetNeighbour { entry, .. } => nl.set_neighbour(index, entry).await,
        Change::SetFdb { entry, .. } => nl.set_fdb(index, entry).await,
        Change::SetRoute { route, .. } => nl.replace_route(index, route, ROUTE_PROTOCOL).await,
        Change::DelRoute(route) => nl.delete_route(index, route, ROUTE_PROTOCOL).await,
        Change::DelFdb(entry) => nl.delete_fdb(index, entry).await,
        Change::DelNeighbour(n) => nl.delete_neighbour(index, n).await,
    }
}
