//! The VXLAN overlay against the kernel, in network namespaces this test
//! builds: a "fabric" namespace with a bridge (the underlay LAN) and "node"
//! namespaces on it through veths (10.77.1.N/24), each with a bridge
//! `sluice0` holding its pod gateway address 10.244.N.1/24. The overlay runs
//! in each node namespace on a thread that entered it.
//!
//! Safety: every link is created with `ip -n <ns>` inside a test namespace
//! (never in the root namespace), no namespace has a default route, and
//! every namespace is deleted by a guard, also when a test fails; each test
//! ends by checking that none of its namespaces is left and that the root
//! namespace's links are unchanged. Needs root; fails (does not skip)
//! without it.

use std::{
    collections::BTreeSet,
    future::Future,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::mpsc,
    time::{Duration, Instant},
};

use ipnetwork::Ipv4Network;
use k8s_openapi::api::core::v1::Node;
use sluice::{
    model::ClusterState,
    overlay::{
        self, DEFAULT_PORT, EntryState, Overlay, OverlayConfig, OverlayError, PORT_FLAG, Peer,
        SyncReport,
    },
};
use sluice_testkit::{
    fabric::Fabric,
    netns::{NetNs, ip},
    privileges::require_root,
};

const VNI: u32 = 1;
const DEVICE: &str = "sluice.1";

// ---------------------------------------------------------------------------
// Namespaces

/// The root namespace's links, to check that a test left them alone.
fn root_links() -> BTreeSet<String> {
    ip(&["-o", "link", "show"])
        .unwrap()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some(format!("{} {}", f.next()?, f.next()?))
        })
        .collect()
}

fn netns_names() -> Vec<String> {
    ip(&["netns", "list"])
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

trait Block {
    /// Runs an async block on a current-thread runtime inside the namespace.
    fn block<F, Fut>(&self, f: F) -> Fut::Output
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future,
        Fut::Output: Send + 'static;
}

impl Block for NetNs {
    fn block<F, Fut>(&self, f: F) -> Fut::Output
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future,
        Fut::Output: Send + 'static,
    {
        self.run(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(f())
        })
        .unwrap()
    }
}

// ---------------------------------------------------------------------------
// The simulated cluster

struct SimNode {
    name: String,
    addr: Ipv4Addr,
    pod_cidr: Ipv4Network,
    ns: NetNs,
}

impl SimNode {
    fn gateway(&self) -> Ipv4Addr {
        self.pod_cidr.nth(1).expect("a pod CIDR has hosts")
    }

    fn config(&self) -> OverlayConfig {
        OverlayConfig {
            vni: VNI,
            port: DEFAULT_PORT,
            node_addr: self.addr,
            pod_cidr: self.pod_cidr,
        }
    }

    /// What a daemon start does: ensure the device, sync it with the peers.
    fn start(&self, peers: Vec<Peer>) -> Result<(u32, SyncReport), OverlayError> {
        self.start_with(self.config(), peers)
    }

    fn start_with(
        &self,
        cfg: OverlayConfig,
        peers: Vec<Peer>,
    ) -> Result<(u32, SyncReport), OverlayError> {
        self.ns.block(move || async move {
            let mut ov = Overlay::ensure(&cfg).await?;
            assert_eq!(ov.device(), DEVICE);
            let report = ov.sync(&peers).await?;
            Ok((ov.mtu(), report))
        })
    }

    fn inspect(&self, peers: Vec<Peer>) -> overlay::Inspection {
        self.ns
            .block(move || async move { overlay::inspect(DEVICE, &peers).await })
            .expect("inspect")
    }

    fn ping(&self, from: Ipv4Addr, to: Ipv4Addr) -> anyhow::Result<String> {
        self.ns.output(
            "ping",
            &[
                "-c",
                "1",
                "-W",
                "2",
                "-I",
                &from.to_string(),
                &to.to_string(),
            ],
        )
    }
}

/// The fabric and its nodes; dropping it deletes every namespace (nodes
/// first, then the fabric).
struct Sim {
    nodes: Vec<SimNode>,
    fabric: Fabric,
}

impl Sim {
    /// `n` nodes: node i has 10.77.1.i on its uplink `eth0` and pod CIDR
    /// 10.244.i.0/24 with 10.244.i.1 on its `sluice0` bridge.
    fn new(n: u8) -> Sim {
        let mut sim = Sim {
            nodes: Vec::new(),
            fabric: Fabric::new().expect("the fabric namespace"),
        };
        for i in 1..=n {
            let name = format!("node{i}");
            let ns = NetNs::new(&name).expect("a node namespace");
            let addr = Ipv4Addr::new(10, 77, 1, i);
            sim.fabric
                .attach(&ns, &name, &format!("{addr}/24"))
                .expect("the node on the fabric");
            let pod_cidr: Ipv4Network = format!("10.244.{i}.0/24").parse().unwrap();
            ns.ip(&["link", "add", "sluice0", "type", "bridge"])
                .unwrap();
            let gateway = format!("10.244.{i}.1/24");
            ns.ip(&["addr", "add", &gateway, "dev", "sluice0"]).unwrap();
            ns.ip(&["link", "set", "sluice0", "up"]).unwrap();
            sim.nodes.push(SimNode {
                name,
                addr,
                pod_cidr,
                ns,
            });
        }
        sim
    }

    fn node(&self, i: usize) -> &SimNode {
        &self.nodes[i - 1]
    }

    /// The Node objects of the cluster, as the sources would see them.
    fn cluster(&self) -> ClusterState {
        let mut c = ClusterState::default();
        for n in &self.nodes {
            c.nodes.insert(
                n.name.clone(),
                node_object(&n.name, n.addr, n.pod_cidr).into(),
            );
        }
        c
    }

    /// Deletes every namespace and checks that none is left and that the
    /// root namespace's links are as they were.
    fn finish(self, root_before: &BTreeSet<String>) {
        let ours: Vec<String> = self
            .nodes
            .iter()
            .map(|n| &n.ns)
            .chain([self.fabric.ns()])
            .map(|ns| ns.name().to_owned())
            .collect();
        drop(self);
        let left: Vec<String> = netns_names()
            .into_iter()
            .filter(|n| ours.contains(n))
            .collect();
        assert!(left.is_empty(), "namespaces left behind: {left:?}");
        assert_eq!(
            &root_links(),
            root_before,
            "the root namespace's links changed"
        );
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.nodes.clear();
    }
}

fn node_object(name: &str, addr: Ipv4Addr, pod_cidr: Ipv4Network) -> Node {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"podCIDR": pod_cidr.to_string()},
        "status": {"addresses": [
            {"type": "Hostname", "address": name},
            {"type": "InternalIP", "address": addr.to_string()},
        ]},
    }))
    .expect("a Node object")
}

fn peers_of(cluster: &ClusterState, node: &str) -> Vec<Peer> {
    let (peers, skipped) = overlay::peers(cluster, node);
    assert!(skipped.is_empty(), "{skipped:?}");
    peers
}

fn mac_of(addr: Ipv4Addr) -> String {
    overlay::Mac(overlay::vtep_mac(addr)).to_string()
}

/// Sends a datagram from `src` in `from` to `dst` in `to` and has it echoed:
/// returns the source address the receiver saw and whether the echo came
/// back (it is addressed to `src`, a pod-side address, so it can only
/// return through the overlay too).
fn udp_echo(from: &SimNode, src: Ipv4Addr, to: &SimNode, dst: Ipv4Addr) -> (SocketAddr, bool) {
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = to
        .ns
        .spawn(move || {
            let sock = UdpSocket::bind((dst, 7777)).expect("bind the echo server");
            sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            ready_tx.send(()).unwrap();
            let mut buf = [0u8; 64];
            let (n, peer) = sock
                .recv_from(&mut buf)
                .expect("datagram through the overlay");
            sock.send_to(&buf[..n], peer).expect("echo");
            peer
        })
        .unwrap();
    ready_rx.recv().expect("echo server ready");
    let echoed = from
        .ns
        .run(move || {
            let sock = UdpSocket::bind((src, 0)).expect("bind the client");
            sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            sock.send_to(b"sluice", (dst, 7777)).expect("send");
            let mut buf = [0u8; 64];
            matches!(sock.recv_from(&mut buf), Ok((6, _)))
        })
        .unwrap();
    let seen = server
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
    (seen, echoed)
}

// ---------------------------------------------------------------------------
// Tests

#[test]
fn overlay_carries_pod_traffic_and_follows_node_changes() {
    require_root();
    let root_before = root_links();
    let sim = Sim::new(3);
    let mut cluster = sim.cluster();

    // Every node starts its overlay.
    for i in 1..=3 {
        let n = sim.node(i);
        let (mtu, report) = n.start(peers_of(&cluster, &n.name)).expect("overlay start");
        assert_eq!(mtu, 1450, "uplink MTU 1500 less 50");
        assert_eq!(report.applied.len(), 6, "{report:#?}");
        assert!(report.failures.is_empty(), "{report:#?}");
        assert!(report.device.iter().any(|d| d == "created sluice.1"));
    }

    // The device, as `ip` sees it.
    let n1 = sim.node(1);
    let link = n1.ns.ip(&["-d", "link", "show", DEVICE]).unwrap();
    for want in [
        "mtu 1450",
        "vxlan id 1 ",
        "local 10.77.1.1",
        "dev eth0",
        "dstport 8472",
        "nolearning",
        "link/ether 02:5c:0a:4d:01:01",
        ",UP,",
    ] {
        assert!(link.contains(want), "{want:?} missing from:\n{link}");
    }
    let addrs = n1.ns.ip(&["-4", "addr", "show", "dev", DEVICE]).unwrap();
    assert!(addrs.contains("inet 10.244.1.0/32"), "{addrs}");
    let v6 = n1.ns.ip(&["-6", "addr", "show", "dev", DEVICE]).unwrap();
    assert!(
        v6.trim().is_empty(),
        "no IPv6 link-local on the overlay: {v6}"
    );

    // Its entries, as `ip`/`bridge` see them, in the order of peers.
    let neigh = n1.ns.ip(&["neigh", "show", "dev", DEVICE]).unwrap();
    let fdb = n1
        .ns
        .output("bridge", &["fdb", "show", "dev", DEVICE])
        .unwrap();
    let routes = n1.ns.ip(&["route", "show", "dev", DEVICE]).unwrap();
    for (i, cidr) in [(2u8, "10.244.2.0/24"), (3, "10.244.3.0/24")] {
        let addr = Ipv4Addr::new(10, 77, 1, i);
        let vtep = format!("10.244.{i}.0");
        let mac = mac_of(addr);
        assert!(
            neigh.contains(&format!("{vtep} lladdr {mac} PERMANENT")),
            "{neigh}"
        );
        assert!(
            fdb.contains(&format!("{mac} dst {addr} self permanent")),
            "{fdb}"
        );
        assert!(
            routes.contains(&format!("{cidr} via {vtep} proto 92 onlink")),
            "{routes}"
        );
    }
    assert_eq!(fdb.lines().count(), 2, "only the peers' entries: {fdb}");

    // inspect() agrees, and reports the device's parameters.
    let peers1 = peers_of(&cluster, "node1");
    let seen = n1.inspect(peers1.clone());
    let dev = seen.device.as_ref().expect("device found");
    assert_eq!(
        (dev.vni, dev.port, dev.mtu, dev.learning, dev.up),
        (Some(VNI), Some(DEFAULT_PORT), 1450, Some(false), true)
    );
    assert_eq!(dev.local, Some(n1.addr));
    assert_eq!(dev.mac, overlay::vtep_mac(n1.addr).to_vec());
    assert_eq!(seen.peers.len(), 2);
    assert!(seen.peers.iter().all(|p| p.ok()), "{:#?}", seen.peers);
    assert!(seen.stale.is_empty(), "{:?}", seen.stale);

    // Pod-side addresses reach each other across the overlay, unchanged.
    for i in 2..=3 {
        let to = sim.node(i);
        n1.ping(n1.gateway(), to.gateway())
            .unwrap_or_else(|e| panic!("node1 -> {}: {e}", to.name));
    }
    let (seen_src, echoed) = udp_echo(n1, n1.gateway(), sim.node(2), sim.node(2).gateway());
    assert_eq!(
        seen_src.ip(),
        n1.gateway(),
        "inner source address preserved"
    );
    assert!(
        echoed,
        "the echo to 10.244.1.1 came back through the overlay"
    );

    // A daemon restart: ensure + sync on the existing device changes nothing.
    let index_before = n1.ns.ip(&["-o", "link", "show", DEVICE]).unwrap();
    let (_, report) = n1.start(peers1.clone()).expect("restart");
    assert!(report.is_noop(), "{report:#?}");
    assert_eq!(
        n1.ns.ip(&["-o", "link", "show", DEVICE]).unwrap(),
        index_before
    );

    // node3 leaves the cluster: node1 drops its route, FDB and neighbour.
    cluster.nodes.remove("node3");
    let peers1 = peers_of(&cluster, "node1");
    let started = Instant::now();
    let (_, report) = n1.start(peers1.clone()).expect("sync after removal");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "sync took {:?}",
        started.elapsed()
    );
    let applied: Vec<String> = report.applied.iter().map(ToString::to_string).collect();
    assert_eq!(
        applied,
        [
            "delete route 10.244.3.0/24 via 10.244.3.0 onlink",
            format!(
                "delete fdb {} dst 10.77.1.3",
                mac_of(Ipv4Addr::new(10, 77, 1, 3))
            )
            .as_str(),
            format!(
                "delete neighbour 10.244.3.0 lladdr {}",
                mac_of(Ipv4Addr::new(10, 77, 1, 3))
            )
            .as_str(),
        ]
    );
    assert!(
        !n1.ns
            .ip(&["route", "show", "dev", DEVICE])
            .unwrap()
            .contains("10.244.3.0")
    );
    assert!(
        !n1.ns
            .ip(&["neigh", "show", "dev", DEVICE])
            .unwrap()
            .contains("10.244.3.0")
    );
    assert!(
        !n1.ns
            .output("bridge", &["fdb", "show", "dev", DEVICE])
            .unwrap()
            .contains("10.77.1.3")
    );
    assert!(n1.ping(n1.gateway(), sim.node(3).gateway()).is_err());
    n1.ping(n1.gateway(), sim.node(2).gateway())
        .expect("node2 still reachable");

    // node2 is re-addressed (same name, new InternalIP): its own overlay is
    // recreated with the new local address and MAC, node1 updates in place.
    let new_addr = Ipv4Addr::new(10, 77, 1, 22);
    let n2 = sim.node(2);
    n2.ns
        .ip(&["addr", "del", "10.77.1.2/24", "dev", "eth0"])
        .unwrap();
    n2.ns
        .ip(&["addr", "add", &format!("{new_addr}/24"), "dev", "eth0"])
        .unwrap();
    cluster.nodes.insert(
        "node2".into(),
        node_object("node2", new_addr, n2.pod_cidr).into(),
    );
    let cfg2 = OverlayConfig {
        node_addr: new_addr,
        ..n2.config()
    };
    let (_, report) = n2
        .start_with(cfg2, peers_of(&cluster, "node2"))
        .expect("node2 restarted on its new address");
    assert!(
        report
            .device
            .iter()
            .any(|d| d.starts_with("deleted sluice.1")),
        "{report:#?}"
    );
    let peers1 = peers_of(&cluster, "node1");
    let (_, report) = n1.start(peers1.clone()).expect("node1 follows");
    let new_mac = mac_of(new_addr);
    let applied: Vec<String> = report.applied.iter().map(ToString::to_string).collect();
    assert_eq!(
        applied,
        [
            format!("set neighbour 10.244.2.0 lladdr {new_mac} (node2)"),
            format!("set fdb {new_mac} dst 10.77.1.22 (node2)"),
            format!(
                "delete fdb {} dst 10.77.1.2",
                mac_of(Ipv4Addr::new(10, 77, 1, 2))
            ),
        ]
    );
    let fdb = n1
        .ns
        .output("bridge", &["fdb", "show", "dev", DEVICE])
        .unwrap();
    assert_eq!(
        fdb.trim(),
        format!("{new_mac} dst 10.77.1.22 self permanent"),
        "{fdb}"
    );
    let neigh = n1.ns.ip(&["neigh", "show", "dev", DEVICE]).unwrap();
    assert!(
        neigh.contains(&format!("10.244.2.0 lladdr {new_mac} PERMANENT")),
        "{neigh}"
    );
    let seen = n1.inspect(peers1);
    assert!(seen.peers.iter().all(|p| p.ok()), "{:#?}", seen.peers);
    n1.ping(n1.gateway(), sim.node(2).gateway())
        .expect("node2 reachable on its new address");

    sim.finish(&root_before);
}

#[test]
fn device_is_repaired_and_reconfigured() {
    require_root();
    let root_before = root_links();
    let sim = Sim::new(2);
    let cluster = sim.cluster();
    let n1 = sim.node(1);
    let peers = peers_of(&cluster, "node1");
    n1.start(peers.clone()).expect("start");
    sim.node(2)
        .start(peers_of(&cluster, "node2"))
        .expect("start node2");

    let node2_neigh = format!(
        "set neighbour 10.244.2.0 lladdr {} (node2)",
        mac_of(sim.node(2).addr)
    );
    let node2_route = "set route 10.244.2.0/24 via 10.244.2.0 onlink (node2)".to_string();

    // Someone sets the device down and shrinks its MTU. Down flushes the
    // device's routes and neighbours (permanent ones too); the next sync
    // brings it up and puts them back.
    n1.ns.ip(&["link", "set", DEVICE, "mtu", "1300"]).unwrap();
    n1.ns.ip(&["link", "set", DEVICE, "down"]).unwrap();
    let (mtu, report) = n1.start(peers.clone()).expect("repair");
    assert_eq!(mtu, 1450);
    assert_eq!(
        report.device,
        ["MTU 1300 -> 1450", "sluice.1 up"],
        "{report:#?}"
    );
    let applied: Vec<String> = report.applied.iter().map(ToString::to_string).collect();
    assert_eq!(applied, [node2_neigh.clone(), node2_route.clone()]);

    // Someone edits the entries: a wrong neighbour, a missing route, a
    // stray route of ours (removed) and a route of someone else's (kept).
    n1.ns
        .ip(&["route", "del", "10.244.2.0/24", "dev", DEVICE])
        .unwrap();
    n1.ns
        .ip(&[
            "neigh",
            "replace",
            "10.244.2.0",
            "lladdr",
            "02:00:00:00:00:01",
            "dev",
            DEVICE,
            "nud",
            "permanent",
        ])
        .unwrap();
    n1.ns
        .ip(&[
            "route",
            "add",
            "10.244.9.0/24",
            "via",
            "10.244.9.0",
            "dev",
            DEVICE,
            "onlink",
            "proto",
            "92",
        ])
        .unwrap();
    n1.ns
        .ip(&[
            "route",
            "add",
            "10.244.8.0/24",
            "via",
            "10.244.8.0",
            "dev",
            DEVICE,
            "onlink",
        ])
        .unwrap();
    let (_, report) = n1.start(peers.clone()).expect("repair");
    assert!(report.device.is_empty(), "{report:#?}");
    let applied: Vec<String> = report.applied.iter().map(ToString::to_string).collect();
    assert_eq!(
        applied,
        [
            node2_neigh,
            node2_route,
            "delete route 10.244.9.0/24 via 10.244.9.0 onlink".to_string(),
        ]
    );
    let routes = n1.ns.ip(&["route", "show", "dev", DEVICE]).unwrap();
    assert!(
        routes.contains("10.244.8.0/24 via 10.244.8.0"),
        "not ours, kept: {routes}"
    );
    n1.ping(n1.gateway(), sim.node(2).gateway())
        .expect("repaired overlay carries traffic");

    // A device with the right name but the wrong parameters (an older
    // configuration) is recreated.
    n1.ns.ip(&["link", "del", DEVICE]).unwrap();
    n1.ns
        .ip(&[
            "link",
            "add",
            DEVICE,
            "type",
            "vxlan",
            "id",
            "1",
            "dstport",
            "8472",
            "dev",
            "eth0",
            "local",
            "10.77.1.1",
            "learning",
        ])
        .unwrap();
    let (_, report) = n1.start(peers.clone()).expect("recreate");
    assert!(
        report
            .device
            .iter()
            .any(|d| d.starts_with("deleted sluice.1") && d.contains("learning on")),
        "{report:#?}"
    );
    assert!(
        n1.ns
            .ip(&["-d", "link", "show", DEVICE])
            .unwrap()
            .contains("nolearning")
    );

    // A VNI change: the new device replaces the old one, which is removed.
    let cfg = OverlayConfig {
        vni: 2,
        ..n1.config()
    };
    let peers2 = peers.clone();
    let dev = n1.ns.block(move || async move {
        let mut ov = Overlay::ensure(&cfg).await.expect("ensure with VNI 2");
        ov.sync(&peers2).await.expect("sync");
        ov.device().to_owned()
    });
    assert_eq!(dev, "sluice.2");
    let links = n1.ns.ip(&["-o", "link", "show"]).unwrap();
    assert!(!links.contains("sluice.1"), "{links}");
    let routes = n1.ns.ip(&["route", "show", "dev", "sluice.2"]).unwrap();
    assert!(
        routes.contains("10.244.2.0/24 via 10.244.2.0 proto 92 onlink"),
        "{routes}"
    );

    sim.finish(&root_before);
}

#[test]
fn port_conflicts_are_reported_clearly() {
    require_root();
    let root_before = root_links();
    let sim = Sim::new(1);
    let n1 = sim.node(1);

    // Another VXLAN device (flannel's, say) holds the port.
    n1.ns
        .ip(&[
            "link",
            "add",
            "flannel.1",
            "type",
            "vxlan",
            "id",
            "7",
            "dstport",
            "8472",
            "dev",
            "eth0",
            "local",
            "10.77.1.1",
            "nolearning",
        ])
        .unwrap();
    let err = n1.start(Vec::new()).expect_err("port taken");
    assert!(
        matches!(&err, OverlayError::PortTaken { device, port: 8472, .. } if device == "flannel.1"),
        "{err:?}"
    );
    let msg = err.to_string();
    for want in ["flannel.1", "8472", PORT_FLAG] {
        assert!(msg.contains(want), "{want:?} missing from: {msg}");
    }
    assert!(
        !n1.ns.ip(&["-o", "link", "show"]).unwrap().contains(DEVICE),
        "nothing created on a conflict"
    );
    // The flag's remedy works.
    let cfg = OverlayConfig {
        port: 8473,
        ..n1.config()
    };
    n1.ns
        .block(move || async move { Overlay::ensure(&cfg).await.map(|_| ()) })
        .expect("another port is fine");
    n1.ns.ip(&["link", "del", DEVICE]).unwrap();
    n1.ns.ip(&["link", "del", "flannel.1"]).unwrap();

    // A plain socket holds the port: bringing the device up fails.
    let cfg = n1.config();
    let err = n1
        .ns
        .block(move || async move {
            let _held = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, DEFAULT_PORT)).expect("bind 8472");
            Overlay::ensure(&cfg).await.map(|_| ())
        })
        .expect_err("port in use");
    assert!(
        matches!(&err, OverlayError::PortInUse { port: 8472, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    for want in [DEVICE, "8472", "EADDRINUSE", PORT_FLAG] {
        assert!(msg.contains(want), "{want:?} missing from: {msg}");
    }
    // Once the socket is gone, the next start adopts the device and brings it up.
    let (_, report) = n1.start(Vec::new()).expect("port free again");
    assert_eq!(report.device, ["sluice.1 up"], "{report:#?}");

    // inspect() of a missing device says so instead of failing.
    n1.ns.ip(&["link", "del", DEVICE]).unwrap();
    let peer = Peer {
        node: "node9".into(),
        node_addr: Ipv4Addr::new(10, 77, 1, 9),
        pod_cidr: "10.244.9.0/24".parse().unwrap(),
    };
    let seen = n1.inspect(vec![peer]);
    assert!(seen.device.is_none());
    assert_eq!(seen.peers[0].route, EntryState::Missing);

    sim.finish(&root_before);
}
