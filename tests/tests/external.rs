//! Traffic from outside the cluster: NodePort, LoadBalancer and externalIP
//! frontends with both external traffic policies, health-check node ports,
//! source ranges, session affinity and Maglev, on three simulated nodes.

use std::{
    collections::BTreeSet,
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

use sluice_testkit::netns::NetNs;
use sluice_tests::{
    apps, fixture,
    manifests::{self, Port, Service, ready, tcp_port},
    scenarios::{self, ThreeNodes},
    sim::{Pod, wait_until},
};

const NODE_PORT: u16 = 30080;

/// Three nodes, two pods each, every pod serving its name on 8080 and the
/// address it sees its clients from on 9000.
fn three_nodes() -> ThreeNodes {
    scenarios::three_nodes(|pod| {
        Ok(vec![
            apps::serve_tcp(&pod.ns, &pod.name, 8080)?,
            apps::serve_peer_address(&pod.ns, 9000)?,
        ])
    })
}

fn node_port(name: &'static str, port: u16, node_port: u16, target: u16) -> Port {
    Port {
        node_port: Some(node_port),
        ..tcp_port(name, port, target)
    }
}

/// A Service `name` with ports http (80 -> 8080) and whoami (90 -> 9000),
/// both as NodePorts, backed by `backends`.
fn publish(s: &ThreeNodes, mut svc: Service, backends: &[&Pod]) -> Service {
    svc.ports = vec![
        node_port("http", 80, NODE_PORT, 8080),
        node_port("whoami", 90, NODE_PORT + 1, 9000),
    ];
    s.cluster
        .apply(&format!("{}-svc.yaml", svc.name), &svc.yaml())
        .unwrap();
    s.cluster
        .apply(
            &format!("{}-slice.yaml", svc.name),
            &manifests::endpoint_slice(
                &svc,
                &[("http", 8080, "TCP"), ("whoami", 9000, "TCP")],
                &backends
                    .iter()
                    .map(|p| ready(p.ip, &p.node))
                    .collect::<Vec<_>>(),
            ),
        )
        .unwrap();
    svc
}

fn node_ip(s: &ThreeNodes, i: usize) -> Ipv4Addr {
    s.cluster.nodes[i].ip
}

/// Waits until `target` answers from the outside host.
fn reachable_from_outside(s: &ThreeNodes, target: SocketAddr) -> bool {
    wait_until(Duration::from_secs(5), || {
        s.cluster
            .outside
            .run(move || apps::tcp_ask(target).is_ok())
            .unwrap()
    })
}

fn outside_ask(s: &ThreeNodes, target: SocketAddr) -> anyhow::Result<String> {
    s.cluster
        .outside
        .run(move || apps::tcp_ask(target))
        .unwrap()
}

fn outside_seen_as(s: &ThreeNodes, target: SocketAddr) -> String {
    // The node behind `target` may still be applying the Service.
    assert!(reachable_from_outside(s, target), "{target} never answered");
    s.cluster
        .outside
        .run(move || apps::ask_peer_address(target))
        .unwrap()
        .unwrap()
}

/// Whether a connection attempt is silently dropped (times out), as
/// opposed to refused or answered.
fn dropped(ns: &NetNs, target: SocketAddr) -> bool {
    ns.run(move || {
        matches!(TcpStream::connect_timeout(&target, Duration::from_millis(1500)),
            Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::WouldBlock)
    })
    .unwrap()
}

#[test]
fn nodeport_cluster_policy_reaches_a_backend_on_another_node_from_outside() {
    let s = three_nodes();
    let backend = &s.pods[4]; // on node-3
    let svc = manifests::service("np", Ipv4Addr::new(10, 96, 1, 1), vec![]);
    publish(
        &s,
        Service {
            kind: "NodePort",
            ..svc
        },
        &[backend],
    );
    let via_node1 = SocketAddr::from((node_ip(&s, 0), NODE_PORT));
    assert!(
        reachable_from_outside(&s, via_node1),
        "NodePort never answered: {}",
        s.cluster.nodes[0].log_tail()
    );
    for _ in 0..20 {
        // A connected socket only accepts node-1:30080 as the answer's
        // source: the reply was reverse-translated on its way out.
        assert_eq!(outside_ask(&s, via_node1).unwrap(), backend.name);
    }
    // The remote backend saw node-1 (its overlay address) as the client.
    let seen = outside_seen_as(&s, SocketAddr::from((node_ip(&s, 0), NODE_PORT + 1)));
    assert_eq!(
        seen, "10.244.1.0",
        "remote backend must see the node, not the client"
    );
    // Through the backend's own node, nothing needs rewriting: the client
    // keeps its address.
    let seen = outside_seen_as(&s, SocketAddr::from((node_ip(&s, 2), NODE_PORT + 1)));
    assert_eq!(seen, s.cluster.outside_ip.to_string());
    // Pods reach the NodePort too.
    let from_pod = s.pods[0]
        .ns
        .run(move || apps::tcp_ask(via_node1))
        .unwrap()
        .unwrap();
    assert_eq!(from_pod, backend.name);
}

#[test]
fn nodeport_local_policy_keeps_the_client_address_and_drops_without_local_endpoints() {
    let s = three_nodes();
    let backend = &s.pods[2]; // on node-2
    let mut svc = manifests::service("local", Ipv4Addr::new(10, 96, 1, 2), vec![]);
    svc.kind = "NodePort";
    svc.external_traffic_policy = Some("Local");
    publish(&s, svc, &[backend]);
    let via_node2 = SocketAddr::from((node_ip(&s, 1), NODE_PORT));
    assert!(reachable_from_outside(&s, via_node2));
    let seen = outside_seen_as(&s, SocketAddr::from((node_ip(&s, 1), NODE_PORT + 1)));
    assert_eq!(
        seen,
        s.cluster.outside_ip.to_string(),
        "the source must reach the backend unchanged"
    );
    // node-1 has no local endpoint: once its daemon has programmed the
    // frontend (each node at its own pace), it drops, as kube-proxy does.
    let via_node1 = SocketAddr::from((node_ip(&s, 0), NODE_PORT));
    let maps = sluice::datapath::PinnedMaps::open(&s.cluster.nodes[0].bpffs).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || {
            fixture::frontend_backends(&maps, node_ip(&s, 0), NODE_PORT).is_some()
        }),
        "node-1 never programmed the NodePort: {}",
        s.cluster.nodes[0].log_tail()
    );
    assert!(
        dropped(&s.cluster.outside, via_node1),
        "node-1 answered or refused instead of dropping"
    );
    // Pods are short-circuited to every endpoint, wherever they are.
    let from_pod = s.pods[0]
        .ns
        .run(move || apps::tcp_ask(via_node1))
        .unwrap()
        .unwrap();
    assert_eq!(from_pod, backend.name);
}

#[test]
fn health_check_node_ports_answer_like_kube_proxy() {
    let s = three_nodes();
    let backend = &s.pods[2]; // on node-2
    let mut svc = manifests::service("hc", Ipv4Addr::new(10, 96, 1, 3), vec![]);
    svc.kind = "LoadBalancer";
    svc.external_traffic_policy = Some("Local");
    svc.health_check_node_port = Some(32100);
    publish(&s, svc, &[backend]);
    let ask = |node: usize| {
        let target = SocketAddr::from((node_ip(&s, node), 32100));
        s.cluster
            .outside
            .run(move || apps::http_get(target, "/healthz"))
            .unwrap()
    };
    // Every node's daemon opens the port when it applies the Service, each
    // at its own pace.
    for n in [0, 1] {
        assert!(
            wait_until(Duration::from_secs(5), || ask(n).is_ok()),
            "health check port never opened on node {n}: {}",
            s.cluster.nodes[n].log_tail()
        );
    }
    let (status, body) = ask(1).unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["service"]["namespace"], "default");
    assert_eq!(v["service"]["name"], "hc");
    assert_eq!(v["localEndpoints"], 1);
    let (status, body) = ask(0).unwrap();
    assert_eq!(status, 503);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["localEndpoints"], 0);
}

#[test]
fn load_balancer_and_external_ips_work_like_node_ports_on_the_receiving_node() {
    let s = three_nodes();
    let lb_ip = Ipv4Addr::new(10, 200, 0, 10);
    let ext_ip = Ipv4Addr::new(10, 200, 0, 20);
    let backends = [&s.pods[2], &s.pods[4]];
    let mut svc = manifests::service("lb", Ipv4Addr::new(10, 96, 1, 4), vec![]);
    svc.kind = "LoadBalancer";
    svc.load_balancer_ips = vec![lb_ip];
    svc.external_ips = vec![ext_ip];
    publish(&s, svc, &backends);
    // The outside host reaches both addresses through node-1 (as a load
    // balancer or a router would send them).
    for ip in [lb_ip, ext_ip] {
        s.cluster
            .outside
            .ip(&[
                "route",
                "add",
                &format!("{ip}/32"),
                "via",
                &node_ip(&s, 0).to_string(),
            ])
            .unwrap();
    }
    for ip in [lb_ip, ext_ip] {
        let target = SocketAddr::from((ip, 80));
        assert!(reachable_from_outside(&s, target), "{ip} never answered");
        let names: BTreeSet<String> = (0..30).map(|_| outside_ask(&s, target).unwrap()).collect();
        assert!(
            names.iter().all(|n| backends.iter().any(|b| b.name == *n)),
            "{names:?}"
        );
        // In-cluster clients reach them too.
        let who = s.pods[0]
            .ns
            .run(move || apps::tcp_ask(target))
            .unwrap()
            .unwrap();
        assert!(backends.iter().any(|b| b.name == who));
    }
}

#[test]
fn load_balancer_source_ranges_admit_one_host_and_drop_another() {
    let s = three_nodes();
    let other_ip = Ipv4Addr::new(10, 77, 0, 201);
    let other = s.cluster.add_host("outside2", other_ip).unwrap();
    let lb_ip = Ipv4Addr::new(10, 200, 0, 30);
    let mut svc = manifests::service("fw", Ipv4Addr::new(10, 96, 1, 5), vec![]);
    svc.kind = "LoadBalancer";
    svc.load_balancer_ips = vec![lb_ip];
    let admitted = format!("{}/32", s.cluster.outside_ip);
    svc.source_ranges = vec![Box::leak(admitted.into_boxed_str())];
    publish(&s, svc, &[&s.pods[0]]);
    for ns in [&s.cluster.outside, &other] {
        ns.ip(&[
            "route",
            "add",
            &format!("{lb_ip}/32"),
            "via",
            &node_ip(&s, 0).to_string(),
        ])
        .unwrap();
    }
    let target = SocketAddr::from((lb_ip, 80));
    assert!(
        reachable_from_outside(&s, target),
        "the admitted host was refused"
    );
    assert!(
        dropped(&other, target),
        "a host outside the source ranges got through"
    );
}

#[test]
fn session_affinity_keeps_a_client_on_one_backend_until_it_lapses() {
    let s = three_nodes();
    let backends = [&s.pods[0], &s.pods[2], &s.pods[4]];
    let mut svc = manifests::service("sticky", Ipv4Addr::new(10, 96, 1, 6), vec![]);
    svc.kind = "NodePort";
    svc.session_affinity_timeout = Some(2);
    publish(&s, svc, &backends);
    let vip = SocketAddr::from((Ipv4Addr::new(10, 96, 1, 6), 80));
    let np = SocketAddr::from((node_ip(&s, 0), NODE_PORT));
    assert!(reachable_from_outside(&s, np));
    // ClusterIP from a pod, NodePort from outside: 50 connections, 1 backend.
    let pod_seen: BTreeSet<String> = s.pods[1]
        .ns
        .run(move || (0..50).map(|_| apps::tcp_ask(vip).unwrap()).collect())
        .unwrap();
    assert_eq!(pod_seen.len(), 1, "ClusterIP affinity broke: {pod_seen:?}");
    let out_seen: BTreeSet<String> = (0..50).map(|_| outside_ask(&s, np).unwrap()).collect();
    assert_eq!(out_seen.len(), 1, "NodePort affinity broke: {out_seen:?}");
    // After the 2 s timeout a fresh choice is made: over several lapses
    // more than one backend turns up.
    let mut across = BTreeSet::new();
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(3200));
        across.insert(
            s.pods[1]
                .ns
                .run(move || apps::tcp_ask(vip).unwrap())
                .unwrap(),
        );
    }
    assert!(across.len() > 1, "affinity never lapsed: {across:?}");
}

#[test]
fn maglev_sends_a_flow_to_the_same_backend_through_any_node() {
    let s = three_nodes();
    let backends: Vec<&Pod> = s.pods.iter().collect();
    let mut svc = manifests::service("mg", Ipv4Addr::new(10, 96, 1, 7), vec![]);
    svc.kind = "NodePort";
    // NodePorts use Maglev by default; the annotation puts the ClusterIPs
    // on it too, so that table sharing between them shows below.
    svc.annotations.push(("sluice.dev/lb-algorithm", "maglev"));
    publish(&s, svc, &backends);
    for n in 0..3 {
        assert!(reachable_from_outside(
            &s,
            SocketAddr::from((node_ip(&s, n), NODE_PORT))
        ));
    }
    let mut distinct = BTreeSet::new();
    for i in 0..20u16 {
        let port = 41_000 + i;
        let answers: Vec<String> = (0..3)
            .map(|n| {
                let target = SocketAddr::from((node_ip(&s, n), NODE_PORT));
                s.cluster
                    .outside
                    .run(move || apps::tcp_ask_from(port, target))
                    .unwrap()
                    .unwrap()
            })
            .collect();
        assert!(
            answers.iter().all(|a| *a == answers[0]),
            "flow from port {port} reached different backends through different nodes: {answers:?}"
        );
        distinct.insert(answers[0].clone());
    }
    assert!(
        distinct.len() > 2,
        "Maglev used too few backends: {distinct:?}"
    );
    // Each of the two ports has a ClusterIP and a NodePort frontend with
    // the same backends: the kernel holds one table per port, not four.
    // (Without the annotation the ClusterIPs would have none.)
    let maps = sluice::datapath::PinnedMaps::open(&s.cluster.nodes[0].bpffs).unwrap();
    let ids: Vec<u32> = maps.maglev.keys().map(Result::unwrap).collect();
    assert_eq!(ids.len(), 4, "expected a table per frontend: {ids:?}");
    let tables: BTreeSet<u32> = ids
        .iter()
        .map(|id| maps.maglev.get(id, 0).unwrap().info().unwrap().id())
        .collect();
    assert_eq!(tables.len(), 2, "frontends {ids:?} hold tables {tables:?}");
    // Every entry of a table, as the program reads it, is one of the
    // frontend's backends, and each backend owns about 1/N of the entries.
    let table: aya::maps::Array<_, [u32; 2]> =
        aya::maps::Array::try_from(aya::maps::Map::Array(maps.maglev.get(&ids[0], 0).unwrap()))
            .unwrap();
    // Two slots per element; 16381 is odd, so the last half is padding.
    let pairs: Vec<[u32; 2]> = table.iter().map(Result::unwrap).collect();
    assert_eq!(pairs.len(), 16_382 / 2);
    assert_eq!(pairs[pairs.len() - 1][1], 0, "padding");
    let entries: Vec<u32> = pairs.into_iter().flatten().take(16_381).collect();
    assert_eq!(entries.len(), 16_381);
    let mut owned = std::collections::BTreeMap::<u32, usize>::new();
    for id in &entries {
        assert!(maps.backends.get(id, 0).is_ok(), "entry {id} is no backend");
        *owned.entry(*id).or_default() += 1;
    }
    assert_eq!(owned.len(), backends.len(), "{owned:?}");
    let fair = entries.len() / backends.len();
    assert!(
        owned.values().all(|n| n.abs_diff(fair) <= fair / 10),
        "uneven table: {owned:?}"
    );
    // Deleting the Service removes all four (one batch; each single removal
    // would wait for an RCU grace period).
    s.cluster.delete("mg-svc.yaml").unwrap();
    let emptied = wait_until(Duration::from_secs(5), || {
        maps.maglev.keys().next().is_none()
    });
    let left: Vec<u32> = maps.maglev.keys().map(Result::unwrap).collect();
    assert!(emptied, "tables left after the Service went: {left:?}");
}
