//! Direct delivery between the pods of one node: packets a pod sends to a
//! pod on the same node (plain, or translated from a ClusterIP) go straight
//! into the destination's veth instead of through the bridge and the
//! node's IP stack. The node's own forwarding counter is the witness: it
//! counts every packet the stack routes, and the datapath does not feed it.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use proxy_common::{LocalEndpoint, reason};
use sluice::datapath::PinnedMaps;
use sluice_net::pods::host_veth_name;
use sluice_tests::{
    apps,
    manifests::{self, tcp_port},
    scenarios::Web,
    sim::{Cluster, Node, Pod, wait_until},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const CONNECTIONS: usize = 200;

fn setup() -> Web {
    let mut cluster = Cluster::new(1).unwrap();
    cluster.start_daemon(0).unwrap();
    let svc = manifests::service("web", VIP, vec![tcp_port("http", 80, 8080)]);
    Web::start(cluster, svc, 2, 2, Duration::from_secs(5))
}

/// `ForwDatagrams` of the node's IPv4 stack (read through the calling
/// thread's namespace: /proc/self/net would show the process's).
fn forwarded(node: &Node) -> u64 {
    let snmp = node
        .ns
        .run(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))
        .unwrap()
        .unwrap();
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (ip.next().unwrap(), ip.next().unwrap());
    let column = names
        .split_whitespace()
        .position(|n| n == "ForwDatagrams")
        .expect("ForwDatagrams column");
    values
        .split_whitespace()
        .nth(column)
        .unwrap()
        .parse()
        .unwrap()
}

/// The pod's host veth index (in the node) and its own interface's MAC.
fn expected_entry(node: &Node, pod: &Pod) -> LocalEndpoint {
    let host = host_veth_name(&pod.container_id, "eth0");
    let host_index = node
        .ns
        .run(move || sluice_net::BlockingNetlink::new()?.link(&host))
        .unwrap()
        .unwrap()
        .expect("host veth")
        .index;
    let mac = pod
        .ns
        .run(|| sluice_net::BlockingNetlink::new()?.link("eth0"))
        .unwrap()
        .unwrap()
        .expect("pod eth0")
        .mac;
    LocalEndpoint {
        ifindex: host_index,
        mac: mac.try_into().expect("6-byte MAC"),
        _pad: [0; 2],
    }
}

fn key(ip: Ipv4Addr) -> u32 {
    u32::from(ip).to_be()
}

#[test]
fn a_service_and_pod_traffic_skips_the_node_stack_until_the_entries_go() {
    let s = setup();
    let node = &s.cluster.nodes[0];
    let mut maps = PinnedMaps::open(&node.bpffs).expect("pinned maps");

    // The CNI plugin registered every pod with its veth and MAC.
    for pod in s.backends.iter().chain([&s.client]) {
        let got = maps
            .local_endpoints
            .get(&key(pod.ip), 0)
            .unwrap_or_else(|e| panic!("no local endpoint for {} ({}): {e}", pod.name, pod.ip));
        assert_eq!(got, expected_entry(node, pod), "entry of {}", pod.name);
    }

    let target = SocketAddr::from((VIP, 80));
    let direct_before = maps.reason_total(reason::FWD_LOCAL_POD).unwrap().packets;
    let before = forwarded(node);
    let seen = s.spread(target, CONNECTIONS);
    assert_eq!(seen.values().sum::<usize>(), CONNECTIONS, "{seen:?}");
    // And straight to a backend's own address, no Service involved.
    let backend = SocketAddr::from((s.backends[0].ip, 8080));
    for _ in 0..20 {
        let who = s.client.ns.run(move || apps::tcp_ask(backend)).unwrap();
        assert_eq!(who.unwrap(), s.backends[0].name);
    }
    let routed = forwarded(node) - before;
    let direct = maps.reason_total(reason::FWD_LOCAL_POD).unwrap().packets - direct_before;
    // Each connection is 5+ packets each way; all of them went direct.
    assert!(
        routed < 10,
        "{routed} packets went through the node's IP stack for {CONNECTIONS} ClusterIP connections"
    );
    // Replies of ClusterIP flows and the 20 plain connections both ways.
    assert!(
        direct >= (CONNECTIONS as u64) * 4,
        "only {direct} packets counted as delivered directly to a local pod"
    );

    // Without the entries the same traffic is routed by the node again:
    // the witness above can tell the two apart.
    for pod in s.backends.iter().chain([&s.client]) {
        maps.local_endpoints.remove(&key(pod.ip)).unwrap();
    }
    let before = forwarded(node);
    let seen = s.spread(target, 50);
    assert_eq!(seen.values().sum::<usize>(), 50, "{seen:?}");
    let routed = forwarded(node) - before;
    assert!(
        routed >= 50 * 4,
        "only {routed} packets routed by the node with direct delivery off"
    );
}

#[test]
fn b_del_forgets_a_pod_and_the_daemon_prunes_entries_of_vanished_veths() {
    let mut s = setup();
    let mut maps = PinnedMaps::open(&s.cluster.nodes[0].bpffs).expect("pinned maps");

    // CNI DEL of a backend: its entry goes with its veth.
    let gone = s.backends.pop().unwrap();
    let node = &s.cluster.nodes[0];
    let stdin = node.cni_stdin().unwrap();
    node.cni(
        &s.cluster.bins,
        "DEL",
        &gone.container_id,
        &gone.ns.path(),
        &stdin,
    )
    .unwrap();
    assert!(
        maps.local_endpoints.get(&key(gone.ip), 0).is_err(),
        "the deleted pod {} still has a local endpoint",
        gone.ip
    );

    // An entry whose veth vanished without a DEL (a crashed runtime): the
    // daemon removes it when it starts (and at every full resync).
    let orphan = Ipv4Addr::new(10, 244, 0, 200);
    let bogus = LocalEndpoint {
        ifindex: 999_999,
        mac: [2, 0, 0, 0, 0, 1],
        _pad: [0; 2],
    };
    maps.local_endpoints.insert(key(orphan), bogus, 0).unwrap();
    s.cluster.stop_daemon(0).unwrap();
    s.cluster.start_daemon(0).unwrap();
    let pruned = wait_until(Duration::from_secs(10), || {
        maps.local_endpoints.get(&key(orphan), 0).is_err()
    });
    assert!(
        pruned,
        "the orphan entry survived a daemon start: {}",
        s.log()
    );
    assert!(
        s.cluster.nodes[0]
            .log_tail()
            .contains("removed the local endpoint of a vanished pod veth"),
        "the prune was not logged: {}",
        s.log()
    );
    // Live pods keep theirs, and still reach each other. (The Service
    // still lists the deleted pod: nothing told it otherwise.)
    for pod in s.backends.iter().chain([&s.client]) {
        assert!(
            maps.local_endpoints.get(&key(pod.ip), 0).is_ok(),
            "{} lost its entry",
            pod.name
        );
    }
    let backend = SocketAddr::from((s.backends[0].ip, 8080));
    let who = s.client.ns.run(move || apps::tcp_ask(backend)).unwrap();
    assert_eq!(who.unwrap(), s.backends[0].name);
}

#[test]
fn c_traffic_to_a_pod_on_another_node_is_routed_to_the_overlay_by_the_datapath() {
    let mut cluster = Cluster::new(2).unwrap();
    cluster.start_daemons().unwrap();
    let client = cluster.add_pod(0, "client").unwrap();
    let server = cluster.add_pod(1, "server").unwrap();
    let _srv = apps::serve_tcp(&server.ns, "server", 8080).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || client.ns.ping(server.ip)),
        "overlay never came up: {}",
        cluster.nodes[0].log_tail()
    );
    let node = &cluster.nodes[0];
    let mut maps = PinnedMaps::open(&node.bpffs).expect("pinned maps");
    let target = SocketAddr::from((server.ip, 8080));
    // Packets node 0's stack forwards per connection, and those the
    // datapath routed itself.
    let run = |maps: &PinnedMaps| {
        let (fwd0, direct0) = (
            forwarded(node),
            maps.reason_total(reason::FWD_REMOTE_POD).unwrap().packets,
        );
        for _ in 0..100 {
            let who = client.ns.run(move || apps::tcp_ask(target)).unwrap();
            assert_eq!(who.unwrap(), "server");
        }
        (
            forwarded(node) - fwd0,
            maps.reason_total(reason::FWD_REMOTE_POD).unwrap().packets - direct0,
        )
    };
    let (routed_fast, direct) = run(&maps);
    // The client's packets leave by the datapath; only the replies that
    // arrive over the overlay are routed by the node into the bridge.
    assert!(
        direct >= 100 * 4,
        "only {direct} packets routed by the datapath for 100 connections"
    );

    // Without the cluster CIDR the datapath does not know which addresses
    // are remote pods, and leaves them all to the stack: more forwarded.
    let cfg = maps.config.get(&0, 0).unwrap();
    let off = proxy_common::NodeConfig {
        cluster_mask: 0,
        ..cfg
    };
    maps.config.set(0, off, 0).unwrap();
    let (routed_slow, direct_off) = run(&maps);
    maps.config.set(0, cfg, 0).unwrap();
    eprintln!(
        "100 cross-node connections: node 0 forwarded {routed_fast} packets ({direct} routed by the datapath), {routed_slow} with the datapath's routing off"
    );
    assert_eq!(direct_off, 0, "routed by the datapath while switched off");
    assert!(
        routed_fast * 4 < routed_slow * 3,
        "the node forwarded {routed_fast} packets with the datapath routing, {routed_slow} without"
    );
}
