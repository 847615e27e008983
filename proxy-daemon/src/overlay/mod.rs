//! The VXLAN overlay between nodes (flannel's vxlan backend, minus its
//! writes to the API server).
//!
//! One device per node (`sluice.<vni>`), learning off; for every other node
//! a permanent neighbour entry (its VTEP address -> its VTEP MAC), an FDB
//! entry (its VTEP MAC -> its node address) and an onlink route to its pod
//! CIDR via its VTEP address. Pods keep their addresses end to end: the
//! kernel routes pod CIDRs of other nodes into the device, which wraps the
//! frame in UDP to the other node; no NAT anywhere.
//!
//! Every node derives every other node's VTEP MAC from that node's address
//! ([`vtep_mac`]) and its VTEP address from its pod CIDR, so the Node
//! objects are all a node needs: nothing is published, and nothing has to
//! be remembered across restarts. The kernel's tables are the only state;
//! each [`Overlay::sync`] reads them back and changes only what differs
//! (so a restarted daemon adopts the device without touching a packet).
//!
//! [`peers`] and [`plan`] are pure and unit-tested; [`Overlay`] and
//! [`inspect`] talk rtnetlink in the caller's network namespace.

mod device;
mod error;
mod kernel;
mod peers;
mod plan;

use std::{collections::BTreeSet, net::Ipv4Addr, time::Instant};

use ipnetwork::Ipv4Network;
use sluice_net::Netlink;
use tracing::{info, warn};

pub use device::{PORT_FLAG, VNI_FLAG};
pub use error::OverlayError;
pub use kernel::ROUTE_PROTOCOL;
pub use peers::{
    DEVICE_PREFIX, MAX_VNI, Mac, Peer, VTEP_MAC_PREFIX, device_name, internal_ipv4, peers, vtep_mac,
};
pub use plan::{Change, Entries, FdbEntry, Neighbour, Route, plan, route_to_peer};

/// The Linux kernel's historical VXLAN port, which flannel also uses (the
/// IANA port is 4789).
pub const DEFAULT_PORT: u16 = 8472;
/// flannel's default VNI.
pub const DEFAULT_VNI: u32 = 1;

/// This node's side of the overlay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlayConfig {
    /// VXLAN network identifier (24 bits); the same on every node.
    pub vni: u32,
    /// UDP port of the tunnels; the same on every node.
    pub port: u16,
    /// This node's InternalIP: the tunnels' outer source address. The
    /// uplink is the interface holding it; the device's MTU follows it.
    pub node_addr: Ipv4Addr,
    /// This node's pod CIDR.
    pub pod_cidr: Ipv4Network,
}

/// What one [`Overlay::sync`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Peers asked for.
    pub peers: usize,
    /// Changes made to the device itself (created, MTU, address, up),
    /// including those of the [`Overlay::ensure`] before the first sync.
    pub device: Vec<String>,
    /// Entry changes made, in the order they were made.
    pub applied: Vec<Change>,
    /// Entry changes the kernel refused; the next sync retries them.
    pub failures: Vec<SyncFailure>,
}

impl SyncReport {
    /// Nothing needed changing (the usual case after the first sync).
    pub fn is_noop(&self) -> bool {
        self.device.is_empty() && self.applied.is_empty() && self.failures.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncFailure {
    pub change: Change,
    pub error: String,
}

/// The overlay device of this node and a netlink socket to maintain it.
///
/// The socket lives in the network namespace of the thread that called
/// [`Overlay::ensure`], whatever thread later drives it.
pub struct Overlay {
    cfg: OverlayConfig,
    nl: Netlink,
    device: String,
    index: u32,
    mtu: u32,
    uplink: String,
    /// Device changes made by `ensure`, reported by the first sync.
    pending: Vec<String>,
}

impl Overlay {
    /// Creates the device, or adopts the one a previous run left (recreated
    /// if its VNI, port, local address, underlay or MAC differ), with MAC
    /// [`vtep_mac`]`(node_addr)`, learning off, MTU = uplink MTU - 50,
    /// address `<pod CIDR network>/32`, up.
    ///
    /// Fails with [`OverlayError::PortTaken`] when another VXLAN device
    /// uses the port and [`OverlayError::PortInUse`] when some other socket
    /// holds it. Must run inside a tokio runtime with I/O enabled.
    pub async fn ensure(cfg: &OverlayConfig) -> Result<Self, OverlayError> {
        device::validate(cfg)?;
        let nl = Netlink::connect()?;
        let dev = device::ensure(&nl, cfg, true).await?;
        if dev.changes.is_empty() {
            info!(device = %dev.name, mtu = dev.mtu, uplink = %dev.uplink, "overlay device adopted as it was");
        }
        Ok(Self {
            cfg: cfg.clone(),
            nl,
            device: dev.name,
            index: dev.index,
            mtu: dev.mtu,
            uplink: dev.uplink,
            pending: dev.changes,
        })
    }

    /// The MTU pods must use: the uplink's less the encapsulation.
    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// The device's name.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The uplink the tunnels leave through.
    pub fn uplink(&self) -> &str {
        &self.uplink
    }

    pub fn config(&self) -> &OverlayConfig {
        &self.cfg
    }

    /// Makes the device's entries match `peers` (see [`plan`] for the
    /// order): adds or replaces what is missing or wrong, removes what no
    /// peer needs. Only entries on our device are touched.
    ///
    /// Idempotent and cheap when nothing changed (a handful of netlink
    /// dumps), so it can run on every change and on a timer. The device
    /// itself is checked first and repaired if someone changed or deleted
    /// it. A refused entry does not stop the others (the peer's later steps
    /// are skipped, so no route is added without its next hop); it is
    /// reported and retried by the next sync.
    pub async fn sync(&mut self, peers: &[Peer]) -> Result<SyncReport, OverlayError> {
        let started = Instant::now();
        let dev = device::ensure(&self.nl, &self.cfg, false).await?;
        if dev.mtu != self.mtu {
            warn!(device = %dev.name, from = self.mtu, to = dev.mtu, "overlay MTU changed with the uplink's; existing pods keep their old MTU");
        }
        self.index = dev.index;
        self.mtu = dev.mtu;
        self.uplink = dev.uplink;

        let current = kernel::read_entries(&self.nl, self.index).await?;
        let mut device_changes = std::mem::take(&mut self.pending);
        device_changes.extend(dev.changes);
        let mut report = SyncReport {
            peers: peers.len(),
            device: device_changes,
            ..Default::default()
        };
        let mut failed: BTreeSet<String> = BTreeSet::new();
        for change in plan(peers, &current) {
            if change.node().is_some_and(|n| failed.contains(n)) {
                continue;
            }
            match kernel::apply(&self.nl, self.index, &change).await {
                Ok(()) => {
                    info!(device = %self.device, node = change.node().unwrap_or("-"), change = %change, "overlay entry changed");
                    report.applied.push(change);
                }
                Err(e) => {
                    warn!(device = %self.device, node = change.node().unwrap_or("-"), change = %change, error = %e, "overlay entry change refused; retried on the next sync");
                    if let Some(n) = change.node() {
                        failed.insert(n.to_owned());
                    }
                    report.failures.push(SyncFailure {
                        change,
                        error: e.to_string(),
                    });
                }
            }
        }
        if !report.is_noop() {
            info!(
                device = %self.device,
                peers = report.peers,
                changes = report.applied.len(),
                failures = report.failures.len(),
                micros = started.elapsed().as_micros() as u64,
                "overlay synced"
            );
        }
        Ok(report)
    }
}

/// Whether one of a peer's entries is in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryState {
    Present,
    Missing,
    /// There, but different; says how.
    Wrong(String),
}

impl EntryState {
    pub fn is_present(&self) -> bool {
        *self == EntryState::Present
    }
}

impl std::fmt::Display for EntryState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EntryState::Present => f.write_str("ok"),
            EntryState::Missing => f.write_str("missing"),
            EntryState::Wrong(how) => write!(f, "wrong: {how}"),
        }
    }
}

/// One peer's entries on the device, for `sluicectl nodes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerState {
    pub peer: Peer,
    pub neighbour: EntryState,
    pub fdb: EntryState,
    pub route: EntryState,
}

impl PeerState {
    /// All three entries are in place: the node's pods are reachable.
    pub fn ok(&self) -> bool {
        self.neighbour.is_present() && self.fdb.is_present() && self.route.is_present()
    }
}

/// The device's own parameters as the kernel reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceState {
    pub name: String,
    pub index: u32,
    pub mac: Vec<u8>,
    pub mtu: u32,
    pub up: bool,
    pub vni: Option<u32>,
    pub port: Option<u16>,
    pub local: Option<Ipv4Addr>,
    pub learning: Option<bool>,
}

/// What [`inspect`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspection {
    /// `None`: the device does not exist (every peer is then missing).
    pub device: Option<DeviceState>,
    pub peers: Vec<PeerState>,
    /// Entries on the device that no peer needs (the next sync removes them).
    pub stale: Vec<Change>,
}

/// Reads the device `device` and, per peer, whether its route, FDB and
/// neighbour entries are in place. Read-only; runs in the caller's network
/// namespace, inside a tokio runtime.
pub async fn inspect(device: &str, peers: &[Peer]) -> Result<Inspection, OverlayError> {
    inspect_with(&Netlink::connect()?, device, peers).await
}

/// [`inspect`] for callers without a runtime (`sluicectl`): runs it on a
/// private current-thread runtime. Must not be called from inside one.
pub fn inspect_blocking(device: &str, peers: &[Peer]) -> Result<Inspection, OverlayError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(OverlayError::Socket)?
        .block_on(inspect(device, peers))
}

async fn inspect_with(
    nl: &Netlink,
    device: &str,
    peers: &[Peer],
) -> Result<Inspection, OverlayError> {
    let Some(link) = nl.link(device).await? else {
        return Ok(Inspection {
            device: None,
            peers: peers
                .iter()
                .map(|p| PeerState {
                    peer: p.clone(),
                    neighbour: EntryState::Missing,
                    fdb: EntryState::Missing,
                    route: EntryState::Missing,
                })
                .collect(),
            stale: Vec::new(),
        });
    };
    let entries = kernel::read_entries(nl, link.index).await?;
    let v = link.vxlan.clone().unwrap_or_default();
    let state = DeviceState {
        name: link.name.clone(),
        index: link.index,
        mac: link.mac.clone(),
        mtu: link.mtu,
        up: link.up,
        vni: v.vni,
        port: v.port,
        local: v.local,
        learning: v.learning,
    };
    let peer_states = peers.iter().map(|p| peer_state(p, &entries)).collect();
    let stale = plan(peers, &entries)
        .into_iter()
        .filter(|c| c.node().is_none())
        .collect();
    Ok(Inspection {
        device: Some(state),
        peers: peer_states,
        stale,
    })
}

fn peer_state(p: &Peer, e: &Entries) -> PeerState {
    let mac = p.vtep_mac();
    let neighbour = match e.neighbours.iter().find(|n| n.addr == p.vtep_addr()) {
        Some(n) if n.mac == mac => EntryState::Present,
        Some(n) => EntryState::Wrong(format!("lladdr {}, want {}", Mac(n.mac), Mac(mac))),
        None => EntryState::Missing,
    };
    let fdb = if e.fdb.contains(&FdbEntry {
        mac,
        dst: p.node_addr,
    }) {
        EntryState::Present
    } else {
        let dsts: Vec<String> = e
            .fdb
            .iter()
            .filter(|f| f.mac == mac)
            .map(|f| f.dst.to_string())
            .collect();
        if dsts.is_empty() {
            EntryState::Missing
        } else {
            EntryState::Wrong(format!("dst {}, want {}", dsts.join(","), p.node_addr))
        }
    };
    let want = route_to_peer(p);
    let route = match e.routes.iter().find(|r| r.dst == want.dst && r.metric == 0) {
        Some(r) if *r == want => EntryState::Present,
        Some(r) => EntryState::Wrong(format!("{r}, want {want}")),
        None => EntryState::Missing,
    };
    PeerState {
        peer: p.clone(),
        neighbour,
        fdb,
        route,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> Peer {
        Peer {
            node: "n2".into(),
            node_addr: "10.77.1.2".parse().unwrap(),
            pod_cidr: "10.244.2.0/24".parse().unwrap(),
        }
    }

    #[test]
    fn peer_state_reads_each_entry() {
        let p = peer();
        let mut e = Entries::default();
        let s = peer_state(&p, &e);
        assert_eq!(
            (s.neighbour, s.fdb, s.route),
            (
                EntryState::Missing,
                EntryState::Missing,
                EntryState::Missing
            )
        );
        e.neighbours.push(Neighbour {
            addr: p.vtep_addr(),
            mac: p.vtep_mac(),
        });
        e.fdb.push(FdbEntry {
            mac: p.vtep_mac(),
            dst: "10.77.1.9".parse().unwrap(),
        });
        e.routes.push(Route {
            onlink: false,
            ..route_to_peer(&p)
        });
        let s = peer_state(&p, &e);
        assert_eq!(s.neighbour, EntryState::Present);
        assert_eq!(
            s.fdb,
            EntryState::Wrong("dst 10.77.1.9, want 10.77.1.2".into())
        );
        assert!(matches!(s.route, EntryState::Wrong(_)), "{:?}", s.route);
        assert!(!s.ok());
        e.fdb[0].dst = p.node_addr;
        e.routes[0].onlink = true;
        assert!(peer_state(&p, &e).ok());
    }

    #[test]
    fn config_is_validated() {
        let cfg = OverlayConfig {
            vni: DEFAULT_VNI,
            port: DEFAULT_PORT,
            node_addr: "10.77.1.1".parse().unwrap(),
            pod_cidr: "10.244.1.0/24".parse().unwrap(),
        };
        assert!(device::validate(&cfg).is_ok());
        let err = device::validate(&OverlayConfig {
            vni: MAX_VNI + 1,
            ..cfg.clone()
        })
        .unwrap_err();
        assert!(err.to_string().contains(VNI_FLAG), "{err}");
        let err = device::validate(&OverlayConfig {
            port: 0,
            ..cfg.clone()
        })
        .unwrap_err();
        assert!(err.to_string().contains(PORT_FLAG), "{err}");
        assert!(
            device::validate(&OverlayConfig {
                node_addr: "10.244.1.7".parse().unwrap(),
                ..cfg
            })
            .is_err()
        );
    }

    #[test]
    fn errors_name_the_device_the_port_and_the_flag() {
        let e = OverlayError::PortTaken {
            device: "flannel.1".into(),
            vni: 1,
            port: 8472,
            flag: PORT_FLAG,
        };
        let s = e.to_string();
        for want in ["flannel.1", "8472", "--vxlan-port"] {
            assert!(s.contains(want), "{s}");
        }
        let s = OverlayError::PortInUse {
            device: "sluice.1".into(),
            port: 8472,
            flag: PORT_FLAG,
        }
        .to_string();
        for want in ["sluice.1", "8472", "--vxlan-port", "EADDRINUSE"] {
            assert!(s.contains(want), "{s}");
        }
    }
}
