//! What to change on the overlay device: the entries the peers need,
//! diffed against what the kernel holds. Pure, so the order of operations
//! (the part that matters for traffic in flight) is unit-tested.

use std::{collections::BTreeSet, fmt, net::Ipv4Addr};

use ipnetwork::Ipv4Network;

use super::peers::{Mac, Peer};

pub use sluice_net::netlink::{FdbEntry, Neighbour, Route};

/// The route a peer needs: its pod CIDR via its VTEP address, onlink
/// because that address is on no subnet of ours (the device has a /32).
pub fn route_to_peer(peer: &Peer) -> Route {
    Route {
        dst: peer.pod_cidr,
        gateway: Some(peer.vtep_addr()),
        onlink: true,
        metric: 0,
    }
}

/// The overlay entries the kernel holds on our device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entries {
    pub neighbours: Vec<Neighbour>,
    pub fdb: Vec<FdbEntry>,
    pub routes: Vec<Route>,
}

/// One change to the kernel's tables. `Set*` add or replace an entry for a
/// peer; `Del*` remove an entry no peer needs (a node that left, moved to
/// another address or pod CIDR, or something stale on our device).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    SetNeighbour { node: String, entry: Neighbour },
    SetFdb { node: String, entry: FdbEntry },
    SetRoute { node: String, route: Route },
    DelRoute(Route),
    DelFdb(FdbEntry),
    DelNeighbour(Neighbour),
}

impl Change {
    /// The peer a `Set*` change is for.
    pub fn node(&self) -> Option<&str> {
        match self {
            Change::SetNeighbour { node, .. }
            | Change::SetFdb { node, .. }
            | Change::SetRoute { node, .. } => Some(node),
            _ => None,
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::SetNeighbour { node, entry } => {
                write!(
                    f,
                    "set neighbour {} lladdr {} ({node})",
                    entry.addr,
                    Mac(entry.mac)
                )
            }
            Change::SetFdb { node, entry } => {
                write!(f, "set fdb {} dst {} ({node})", Mac(entry.mac), entry.dst)
            }
            Change::SetRoute { node, route } => write!(f, "set route {route} ({node})"),
            Change::DelRoute(route) => write!(f, "delete route {route}"),
            Change::DelFdb(e) => write!(f, "delete fdb {} dst {}", Mac(e.mac), e.dst),
            Change::DelNeighbour(n) => {
                write!(f, "delete neighbour {} lladdr {}", n.addr, Mac(n.mac))
            }
        }
    }
}

/// The changes that turn `current` into what `peers` need.
///
/// For each peer (in the given order) its neighbour, then its FDB entry,
/// then its route, each only when missing or wrong: a route is usable the
/// moment it exists, so what it resolves through must be there first
/// (flannel's order). Then the removals, in the reverse order: every stale
/// route, then FDB entries, then neighbours, so no route ever points at a
/// next hop that no longer resolves.
///
/// Wrong entries are replaced in place rather than deleted and re-added:
/// traffic to a re-addressed node never sees a missing route. An FDB entry
/// is keyed by (MAC, destination) because a VXLAN FDB entry may hold
/// several destinations; the replace rewrites the first, and any other
/// destination is removed as stale.
///
/// Peers whose VTEP address or pod CIDR was already claimed by an earlier
/// peer are ignored (the caller's [`super::peers`] already skips them).
pub fn plan(peers: &[Peer], current: &Entries) -> Vec<Change> {
    let mut sets = Vec::new();
    let mut want_neigh: BTreeSet<Ipv4Addr> = BTreeSet::new();
    let mut want_fdb: BTreeSet<FdbEntry> = BTreeSet::new();
    let mut want_routes: BTreeSet<Ipv4Network> = BTreeSet::new();

    for p in peers {
        let neigh = Neighbour {
            addr: p.vtep_addr(),
            mac: p.vtep_mac(),
        };
        let fdb = FdbEntry {
            mac: p.vtep_mac(),
            dst: p.node_addr,
        };
        let route = route_to_peer(p);
        if want_neigh.contains(&neigh.addr) || want_routes.contains(&route.dst) {
            continue;
        }
        want_neigh.insert(neigh.addr);
        want_fdb.insert(fdb);
        want_routes.insert(route.dst);

        if !current.neighbours.contains(&neigh) {
            sets.push(Change::SetNeighbour {
                node: p.node.clone(),
                entry: neigh,
            });
        }
        if !current.fdb.contains(&fdb) {
            sets.push(Change::SetFdb {
                node: p.node.clone(),
                entry: fdb,
            });
        }
        if !current.routes.contains(&route) {
            sets.push(Change::SetRoute {
                node: p.node.clone(),
                route,
            });
        }
    }

    // A route at metric 0 to a wanted CIDR is fixed by the replace above;
    // deleting it by its old attributes could delete the replacement.
    let stale_routes = current
        .routes
        .iter()
        .filter(|r| !(r.metric == 0 && want_routes.contains(&r.dst)))
        .copied()
        .map(Change::DelRoute);
    let stale_fdb = current
        .fdb
        .iter()
        .filter(|e| !want_fdb.contains(e))
        .copied()
        .map(Change::DelFdb);
    let stale_neigh = current
        .neighbours
        .iter()
        .filter(|n| !want_neigh.contains(&n.addr))
        .copied()
        .map(Change::DelNeighbour);

    let mut dels: Vec<Change> = stale_routes.chain(stale_fdb).chain(stale_neigh).collect();
    dedup_keep_order(&mut dels);
    sets.extend(dels);
    sets
}

fn dedup_keep_order(changes: &mut Vec<Change>) {
    let mut seen = Vec::with_capacity(changes.len());
    changes.retain(|c| {
        if seen.contains(c) {
            false
        } else {
            seen.push(c.clone());
            true
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(node: &str, ip: &str, cidr: &str) -> Peer {
        Peer {
            node: node.into(),
            node_addr: ip.parse().unwrap(),
            pod_cidr: cidr.parse().unwrap(),
        }
    }

    /// What the kernel holds once `peers` are fully programmed.
    fn programmed(peers: &[Peer]) -> Entries {
        Entries {
            neighbours: peers
                .iter()
                .map(|p| Neighbour {
                    addr: p.vtep_addr(),
                    mac: p.vtep_mac(),
                })
                .collect(),
            fdb: peers
                .iter()
                .map(|p| FdbEntry {
                    mac: p.vtep_mac(),
                    dst: p.node_addr,
                })
                .collect(),
            routes: peers.iter().map(route_to_peer).collect(),
        }
    }

    fn kinds(changes: &[Change]) -> Vec<String> {
        changes.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn new_peers_get_neighbour_fdb_route_in_that_order() {
        let peers = [
            peer("n2", "10.77.1.2", "10.244.2.0/24"),
            peer("n3", "10.77.1.3", "10.244.3.0/24"),
        ];
        let changes = plan(&peers, &Entries::default());
        assert_eq!(
            kinds(&changes),
            [
                "set neighbour 10.244.2.0 lladdr 02:5c:0a:4d:01:02 (n2)",
                "set fdb 02:5c:0a:4d:01:02 dst 10.77.1.2 (n2)",
                "set route 10.244.2.0/24 via 10.244.2.0 onlink (n2)",
                "set neighbour 10.244.3.0 lladdr 02:5c:0a:4d:01:03 (n3)",
                "set fdb 02:5c:0a:4d:01:03 dst 10.77.1.3 (n3)",
                "set route 10.244.3.0/24 via 10.244.3.0 onlink (n3)",
            ]
        );
        assert_eq!(changes[0].node(), Some("n2"));
    }

    #[test]
    fn programmed_state_needs_no_change() {
        let peers = [
            peer("n2", "10.77.1.2", "10.244.2.0/24"),
            peer("n3", "10.77.1.3", "10.244.3.0/24"),
        ];
        assert!(plan(&peers, &programmed(&peers)).is_empty());
        assert!(plan(&[], &Entries::default()).is_empty());
    }

    #[test]
    fn removed_peer_loses_route_then_fdb_then_neighbour() {
        let before = [
            peer("n2", "10.77.1.2", "10.244.2.0/24"),
            peer("n3", "10.77.1.3", "10.244.3.0/24"),
        ];
        let changes = plan(&before[..1], &programmed(&before));
        assert_eq!(
            kinds(&changes),
            [
                "delete route 10.244.3.0/24 via 10.244.3.0 onlink",
                "delete fdb 02:5c:0a:4d:01:03 dst 10.77.1.3",
                "delete neighbour 10.244.3.0 lladdr 02:5c:0a:4d:01:03",
            ]
        );
        assert_eq!(changes[0].node(), None);
    }

    #[test]
    fn readdressed_peer_is_replaced_in_place_and_its_old_fdb_entry_removed() {
        let old = [peer("n2", "10.77.1.2", "10.244.2.0/24")];
        let new = [peer("n2", "10.77.1.22", "10.244.2.0/24")];
        assert_eq!(
            kinds(&plan(&new, &programmed(&old))),
            [
                "set neighbour 10.244.2.0 lladdr 02:5c:0a:4d:01:16 (n2)",
                "set fdb 02:5c:0a:4d:01:16 dst 10.77.1.22 (n2)",
                "delete fdb 02:5c:0a:4d:01:02 dst 10.77.1.2",
            ]
        );
    }

    #[test]
    fn peer_with_a_new_pod_cidr_moves_its_route_and_neighbour() {
        let old = [peer("n2", "10.77.1.2", "10.244.2.0/24")];
        let new = [peer("n2", "10.77.1.2", "10.244.20.0/24")];
        assert_eq!(
            kinds(&plan(&new, &programmed(&old))),
            [
                "set neighbour 10.244.20.0 lladdr 02:5c:0a:4d:01:02 (n2)",
                "set route 10.244.20.0/24 via 10.244.20.0 onlink (n2)",
                "delete route 10.244.2.0/24 via 10.244.2.0 onlink",
                "delete neighbour 10.244.2.0 lladdr 02:5c:0a:4d:01:02",
            ]
        );
    }

    #[test]
    fn wrong_entries_are_replaced_not_deleted() {
        let peers = [peer("n2", "10.77.1.2", "10.244.2.0/24")];
        let mut cur = programmed(&peers);
        cur.neighbours[0].mac = [0x02, 0, 0, 0, 0, 1];
        cur.routes[0].onlink = false;
        cur.routes[0].gateway = Some("10.244.2.9".parse().unwrap());
        assert_eq!(
            kinds(&plan(&peers, &cur)),
            [
                "set neighbour 10.244.2.0 lladdr 02:5c:0a:4d:01:02 (n2)",
                "set route 10.244.2.0/24 via 10.244.2.0 onlink (n2)",
            ]
        );
    }

    #[test]
    fn stray_entries_on_the_device_are_removed() {
        let peers = [peer("n2", "10.77.1.2", "10.244.2.0/24")];
        let mut cur = programmed(&peers);
        // A second destination for the peer's MAC, a default (flooding)
        // entry, and our route at another metric.
        cur.fdb.push(FdbEntry {
            mac: peers[0].vtep_mac(),
            dst: "10.77.1.99".parse().unwrap(),
        });
        cur.fdb.push(FdbEntry {
            mac: [0; 6],
            dst: "10.77.1.100".parse().unwrap(),
        });
        cur.routes.push(Route {
            metric: 100,
            ..route_to_peer(&peers[0])
        });
        assert_eq!(
            kinds(&plan(&peers, &cur)),
            [
                "delete route 10.244.2.0/24 via 10.244.2.0 onlink metric 100",
                "delete fdb 02:5c:0a:4d:01:02 dst 10.77.1.99",
                "delete fdb 00:00:00:00:00:00 dst 10.77.1.100",
            ]
        );
    }

    #[test]
    fn a_peer_reusing_a_claimed_cidr_is_ignored() {
        let peers = [
            peer("n2", "10.77.1.2", "10.244.2.0/24"),
            peer("n9", "10.77.1.9", "10.244.2.0/24"),
        ];
        let changes = plan(&peers, &Entries::default());
        assert_eq!(changes.len(), 3);
        assert!(changes.iter().all(|c| c.node() == Some("n2")));
    }
}
