//! Several nodes on one fabric: the VXLAN overlay between them, masquerade
//! towards the outside, and Services whose backends live on other nodes.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use sluice_tests::{
    apps,
    manifests::{self, ready, tcp_port},
    scenarios::{self, ThreeNodes},
    sim::{Cluster, Pod, wait_until},
};

/// Three nodes, two pods each, every pod serving its name on TCP 8080.
fn three_nodes() -> ThreeNodes {
    scenarios::three_nodes(|pod| Ok(vec![apps::serve_tcp(&pod.ns, &pod.name, 8080)?]))
}

#[test]
fn every_pod_reaches_every_other_pod_across_nodes_with_tcp_and_icmp() {
    let s = three_nodes();
    // Routes and FDB entries appear as each daemon learns the other nodes.
    let first = &s.pods[0];
    let last = s.pods.last().unwrap().ip;
    assert!(
        wait_until(Duration::from_secs(5), || first.ns.ping(last)),
        "overlay never came up: {}",
        s.cluster.nodes[0].log_tail()
    );
    let mut failures = Vec::new();
    for a in &s.pods {
        for b in &s.pods {
            if a.name == b.name {
                continue;
            }
            // Every daemon adds its peers at its own pace.
            if !wait_until(Duration::from_secs(5), || a.ns.ping(b.ip)) {
                failures.push(format!("no path {} -> {} within 5 s", a.name, b.name));
                continue;
            }
            let target = SocketAddr::from((b.ip, 8080));
            match a.ns.run(move || apps::tcp_ask(target)).unwrap() {
                Ok(who) if who == b.name => {}
                other => failures.push(format!("TCP {} -> {}: {other:?}", a.name, b.name)),
            }
            if !a.ns.ping(b.ip) {
                failures.push(format!("ICMP {} -> {}", a.name, b.name));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn pod_addresses_survive_the_overlay_and_outside_traffic_is_masqueraded() {
    let s = three_nodes();
    let _seen_by_pod = apps::serve_peer_address(&s.pods[5].ns, 9000).unwrap();
    let _seen_by_outside = apps::serve_peer_address(&s.cluster.outside, 9000).unwrap();
    let to_pod = SocketAddr::from((s.pods[5].ip, 9000));
    let to_outside = SocketAddr::from((s.cluster.outside_ip, 9000));
    assert!(wait_until(Duration::from_secs(5), || s.pods[0]
        .ns
        .ping(s.pods[5].ip)));
    for (i, pod) in s.pods.iter().enumerate().take(4) {
        let node_ip = s.cluster.node(&pod.node).ip;
        let (across, outside) = pod
            .ns
            .run(move || {
                (
                    apps::ask_peer_address(to_pod),
                    apps::ask_peer_address(to_outside),
                )
            })
            .unwrap();
        assert_eq!(
            across.unwrap(),
            pod.ip.to_string(),
            "pod {i}'s address was rewritten on its way to another pod"
        );
        assert_eq!(
            outside.unwrap(),
            node_ip.to_string(),
            "pod {i} reached the outside host without its node's address"
        );
    }
    // And ping leaves masqueraded too (the outside host has no route to pods).
    assert!(
        s.pods[0].ns.ping(s.cluster.outside_ip),
        "masqueraded ping failed"
    );
}

#[test]
fn a_cluster_ip_with_all_backends_on_other_nodes_works_from_every_pod() {
    let s = three_nodes();
    let vip = Ipv4Addr::new(10, 96, 0, 50);
    let svc = manifests::service("remote", vip, vec![tcp_port("http", 80, 8080)]);
    // Backends: both pods of node-3 only.
    let backends: Vec<&Pod> = s.pods.iter().filter(|p| p.node == "node-3").collect();
    s.cluster.apply("remote-svc.yaml", &svc.yaml()).unwrap();
    s.cluster
        .apply(
            "remote-slice.yaml",
            &manifests::endpoint_slice(
                &svc,
                &[("http", 8080, "TCP")],
                &backends
                    .iter()
                    .map(|p| ready(p.ip, &p.node))
                    .collect::<Vec<_>>(),
            ),
        )
        .unwrap();
    let target = SocketAddr::from((vip, 80));
    // Each node's daemon applies the Service at its own pace.
    for pod in &s.pods {
        assert!(
            wait_until(Duration::from_secs(5), || {
                pod.ns.run(move || apps::tcp_ask(target).is_ok()).unwrap()
            }),
            "{} never reached the VIP",
            pod.name
        );
    }
    for pod in &s.pods {
        let seen: BTreeMap<String, usize> = pod
            .ns
            .run(move || {
                let mut m = BTreeMap::new();
                for _ in 0..20 {
                    *m.entry(apps::tcp_ask(target).expect("through the VIP"))
                        .or_default() += 1;
                }
                m
            })
            .unwrap();
        assert_eq!(seen.values().sum::<usize>(), 20, "{}: {seen:?}", pod.name);
        assert!(
            seen.keys().all(|k| k.starts_with("n3-")),
            "{} reached a non-backend: {seen:?}",
            pod.name
        );
    }
}

fn overlay_entries(s: &ThreeNodes, node: usize) -> String {
    let ns = &s.cluster.nodes[node].ns;
    let route = ns.output("ip", &["route", "show"]).unwrap_or_default();
    let fdb = ns.output("bridge", &["fdb", "show"]).unwrap_or_default();
    let neigh = ns.output("ip", &["neigh", "show"]).unwrap_or_default();
    format!("{route}\n{fdb}\n{neigh}")
}

#[test]
fn a_removed_node_loses_its_route_fdb_and_neighbour_entries_everywhere() {
    let s = three_nodes();
    let node3_mac = "02:5c:0a:4d:00:0c"; // derived from 10.77.0.12
    for n in 0..2 {
        assert!(
            wait_until(Duration::from_secs(5), || {
                let e = overlay_entries(&s, n);
                e.contains("10.244.3.0/24") && e.contains(node3_mac) && e.contains("10.244.3.0 ")
            }),
            "node-{} never learned node-3: {}",
            n + 1,
            overlay_entries(&s, n)
        );
    }
    s.cluster.delete("node-node-3.yaml").unwrap();
    for n in 0..2 {
        assert!(
            wait_until(Duration::from_secs(1), || {
                let e = overlay_entries(&s, n);
                !e.contains("10.244.3.0/24") && !e.contains(node3_mac)
            }),
            "node-{} kept node-3's entries for over 1 s: {}",
            n + 1,
            overlay_entries(&s, n)
        );
    }
    // The others still reach each other.
    assert!(s.pods[0].ns.ping(s.pods[2].ip));
}

#[test]
fn pods_get_the_overlay_mtu() {
    let s = three_nodes();
    let link = s.pods[0]
        .ns
        .output("ip", &["-o", "link", "show", "eth0"])
        .unwrap();
    assert!(
        link.contains("mtu 1450"),
        "pod MTU is not uplink 1500 - 50: {link}"
    );
}

#[test]
fn a_vxlan_port_already_in_use_is_reported_clearly() {
    let mut cluster = Cluster::new(1).unwrap();
    let ns = &cluster.nodes[0].ns;
    ns.ip(&[
        "link", "add", "other.9", "type", "vxlan", "id", "9", "dstport", "8472", "dev", "eth0",
    ])
    .unwrap();
    ns.ip(&["link", "set", "other.9", "up"]).unwrap();
    let err = cluster.start_daemons().unwrap_err().to_string();
    assert!(
        err.contains("8472") && err.contains("other.9"),
        "the conflict is not named: {err}"
    );
}
