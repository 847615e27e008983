//! sluicectl against a live node: what it prints is checked against the
//! traffic just sent (which backend answered, how many connections were
//! made), and `trace` against the backend real connections then get.

use std::{
    net::{Ipv4Addr, SocketAddr},
    process::Output,
    time::Duration,
};

use serde_json::Value;
use sluice_tests::{
    apps::{self, Server, Stream},
    manifests::{self, ready, tcp_port},
    sim::{Cluster, Node, Pod, wait_until},
};

const WEB: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const STICKY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);

fn sluicectl(cluster: &Cluster, node: &Node, args: &[&str]) -> Output {
    node.ns
        .command(&cluster.bins.sluicectl)
        .arg("--bpffs")
        .arg(&node.bpffs)
        .arg("--state-dir")
        .arg(&node.state_dir)
        .args(args)
        .output()
        .expect("run sluicectl")
}

/// `sluicectl -o json ARGS`, parsed; fails the test on a non-zero exit.
fn json(cluster: &Cluster, args: &[&str]) -> Value {
    cluster.ctl_json(0, args).unwrap()
}

fn service_row<'a>(services: &'a Value, frontend: &str) -> &'a Value {
    services
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["frontend"] == frontend)
        .unwrap_or_else(|| panic!("no frontend {frontend} in {services:#}"))
}

fn counter(row: &Value, field: &str) -> u64 {
    row[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {row}"))
}

struct Setup {
    backends: Vec<Pod>,
    client: Pod,
    _servers: Vec<Server>,
    cluster: Cluster,
}

impl Setup {
    fn backend_addr(&self, name: &str) -> String {
        let pod = self
            .backends
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("{name} is not a backend"));
        format!("{}:8080", pod.ip)
    }
}

/// Two nodes (so node-1 has an overlay peer); on node-1 three backends and
/// a client; Service `web` (random choice) and `sticky` (ClientIP
/// affinity) over the same backends.
fn setup() -> Setup {
    let mut cluster = Cluster::new(2).unwrap();
    cluster.start_daemons().unwrap();
    let mut backends = Vec::new();
    let mut servers = Vec::new();
    for i in 1..=3 {
        let pod = cluster.add_pod(0, &format!("web-{i}")).unwrap();
        servers.push(apps::serve_tcp(&pod.ns, &pod.name, 8080).unwrap());
        backends.push(pod);
    }
    let client = cluster.add_pod(0, "client").unwrap();
    let eps: Vec<_> = backends.iter().map(|p| ready(p.ip, &p.node)).collect();
    let web = manifests::service("web", WEB, vec![tcp_port("http", 80, 8080)]);
    let mut sticky = manifests::service("sticky", STICKY, vec![tcp_port("http", 80, 8080)]);
    sticky.session_affinity_timeout = Some(600);
    for svc in [&web, &sticky] {
        cluster
            .apply(&format!("{}-svc.yaml", svc.name), &svc.yaml())
            .unwrap();
        cluster
            .apply(
                &format!("{}-slice.yaml", svc.name),
                &manifests::endpoint_slice(svc, &[("http", 8080, "TCP")], &eps),
            )
            .unwrap();
    }
    for vip in [WEB, STICKY] {
        let target = SocketAddr::from((vip, 80));
        let ok = wait_until(Duration::from_secs(5), || {
            client
                .ns
                .run(move || apps::tcp_ask(target).is_ok())
                .unwrap_or(false)
        });
        assert!(ok, "{vip} never answered: {}", cluster.nodes[0].log_tail());
    }
    // Names reach frontends.json just after the maps (the daemon writes the
    // file off its control loop).
    let state_dir = cluster.nodes[0].state_dir.clone();
    let named = wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(state_dir.join("frontends.json"))
            .is_ok_and(|f| f.contains("\"web\"") && f.contains("\"sticky\""))
    });
    assert!(
        named,
        "frontends.json never named both Services: {}",
        cluster.nodes[0].log_tail()
    );
    Setup {
        backends,
        client,
        _servers: servers,
        cluster,
    }
}

#[test]
fn views_match_the_traffic_and_trace_names_the_next_backend() {
    let s = setup();
    let c = &s.cluster;
    let web = SocketAddr::from((WEB, 80));

    // A live connection is listed, with the backend that really answers it.
    let stream = Stream::start(&s.client.ns, web, Duration::from_millis(20)).unwrap();
    let local = stream.local().expect("stream connected");
    let server = stream.server();
    assert!(!server.is_empty(), "stream got no answer");
    let client = local.to_string();
    let find_conn = |ct: &Value| -> Value {
        ct.as_array()
            .unwrap()
            .iter()
            .find(|r| r["client"] == client.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("connection {client} not listed: {ct:#}"))
    };
    let before = find_conn(&json(c, &["conntrack", "--service", "default/web"]));
    assert_eq!(before["frontend"], "10.96.0.10:80");
    assert_eq!(before["backend"], s.backend_addr(&server).as_str());
    assert_eq!(before["service"], "default/web:http");
    assert_eq!(before["state"], "ESTABLISHED");
    std::thread::sleep(Duration::from_millis(300));
    let after = find_conn(&json(c, &["conntrack", "--service", "default/web"]));
    assert!(
        counter(&after, "packets_to_backend") > counter(&before, "packets_to_backend")
            && counter(&after, "bytes_to_client") > counter(&before, "bytes_to_client"),
        "counters of a busy connection did not move: {before} then {after}"
    );
    // Filtering by another Service hides it.
    let other = json(c, &["conntrack", "--service", "default/sticky"]);
    assert!(
        other
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["client"] != client.as_str())
    );

    // Per-service counters grow by exactly the connections made.
    let row = service_row(&json(c, &["services"]), "10.96.0.10:80").clone();
    assert_eq!(row["kind"], "ClusterIP");
    assert_eq!(row["backends"].as_array().unwrap().len(), 3);
    let n = 25;
    s.client
        .ns
        .run(move || {
            for _ in 0..n {
                apps::tcp_ask(web).unwrap();
            }
        })
        .unwrap();
    let now = service_row(&json(c, &["services"]), "10.96.0.10:80").clone();
    assert_eq!(
        counter(&now, "new_connections"),
        counter(&row, "new_connections") + n,
        "{row} then {now}"
    );
    // Each connection is at least SYN, ACK, request, FIN: four packets in.
    assert!(counter(&now, "packets") >= counter(&row, "packets") + 4 * n);
    assert!(counter(&now, "bytes") > counter(&row, "bytes"));

    // trace of the live flow: tracked, and the backend it really uses.
    let live_ct = json(c, &["conntrack"]);
    let t = json(
        c,
        &[
            "trace",
            "--from",
            &client,
            "--to",
            "10.96.0.10:80",
            "--proto",
            "tcp",
        ],
    );
    assert_eq!(t["established"], true, "{t:#}");
    assert_eq!(t["selection"], "tracked");
    assert_eq!(t["backend"], s.backend_addr(&server).as_str(), "{t:#}");
    assert_eq!(t["reason"], "fwd-established", "{t:#}");
    assert_eq!(t["loaded_tag"], t["traced_tag"], "{t:#}");
    assert!(t["loaded_tag"].is_string());

    // trace of a new flow on the affinity Service names the backend that
    // flow's connection then really gets, and writes nothing live.
    let sticky = SocketAddr::from((STICKY, 80));
    let pinned = s
        .client
        .ns
        .run(move || apps::tcp_ask(sticky))
        .unwrap()
        .unwrap();
    let aff = json(c, &["affinity"]);
    let entry = aff
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["client"] == s.client.ip.to_string().as_str())
        .unwrap_or_else(|| panic!("no affinity entry for {}: {aff:#}", s.client.ip));
    assert_eq!(entry["service"], "default/sticky:http");
    assert_eq!(entry["backend"], s.backend_addr(&pinned).as_str());
    let port = 47123;
    let from = format!("{}:{port}", s.client.ip);
    let t = json(
        c,
        &[
            "trace",
            "--from",
            &from,
            "--to",
            "10.96.0.11:80",
            "--proto",
            "tcp",
        ],
    );
    assert_eq!(t["established"], false, "{t:#}");
    assert_eq!(t["selection"], "affinity", "{t:#}");
    assert_eq!(t["reason"], "fwd-new-connection", "{t:#}");
    assert_eq!(t["backend"], s.backend_addr(&pinned).as_str(), "{t:#}");
    assert_eq!(
        t["rewritten"],
        format!("TCP {from} -> {}", s.backend_addr(&pinned))
    );
    let ct = json(c, &["conntrack"]);
    assert!(
        ct.as_array()
            .unwrap()
            .iter()
            .all(|r| r["client"] != from.as_str()),
        "trace created a live connection entry: {ct:#}"
    );
    let still = find_conn(&ct);
    assert_eq!(still["backend"], find_conn(&live_ct)["backend"]);
    let got = s
        .client
        .ns
        .run(move || apps::tcp_ask_from(port, sticky))
        .unwrap()
        .unwrap();
    assert_eq!(
        got, pinned,
        "trace said {}, the connection went to {got}",
        t["backend"]
    );
    let leftovers: Vec<_> = std::fs::read_dir(&c.nodes[0].bpffs)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("sluicectl_trace_")
        })
        .collect();
    assert!(
        leftovers.is_empty(),
        "trace left pins behind: {leftovers:?}"
    );

    // The stream never noticed any of this.
    let report = stream.stop();
    assert!(report.error.is_none(), "{report:?}");

    // The overlay peer, checked against the kernel's entries.
    let nodes = json(c, &["nodes"]);
    let peers = nodes["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 1, "{nodes:#}");
    assert_eq!(peers[0]["node"], "node-2");
    assert_eq!(peers[0]["address"], c.nodes[1].ip.to_string().as_str());
    assert_eq!(peers[0]["pod_cidr"], "10.244.2.0/24");
    assert_eq!(peers[0]["ok"], true, "{nodes:#}");

    // Status: where the programs are attached, as the kernel has it.
    let status = json(c, &["status"]);
    assert_eq!(status["daemon_running"], true, "{status:#}");
    let hooks = status["hooks"].as_array().unwrap();
    let role = |r: &str| hooks.iter().filter(|h| h["role"] == r).count();
    assert_eq!(role("pod"), 4, "{status:#}");
    assert_eq!(role("uplink"), 1, "{status:#}");
    assert_eq!(role("overlay"), 1, "{status:#}");
    assert!(hooks.iter().any(|h| h["interface"] == "eth0"
        && h["ingress"] == "from_netdev"
        && h["egress"] == "to_netdev"));
    assert!(
        status["problems"].as_array().unwrap().is_empty(),
        "{status:#}"
    );

    // Stats: the forwarded connections are counted by reason, maps are listed.
    let stats = json(c, &["stats"]);
    let fwd_new = stats["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["reason"] == "fwd-new-connection")
        .unwrap_or_else(|| panic!("{stats:#}"));
    assert!(counter(fwd_new, "packets") >= n + 2);
    assert!(
        stats["maps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "sluice_ct4_tcp_v2" && counter(m, "entries") >= 2)
    );
}

#[test]
fn works_with_the_daemon_stopped_and_explains_missing_pins() {
    let mut s = setup();
    s.cluster.stop_daemon(0).unwrap();
    let c = &s.cluster;
    let web = service_row(&json(c, &["services"]), "10.96.0.10:80").clone();
    assert_eq!(web["service"], "default/web:http");
    let table = sluicectl(c, &c.nodes[0], &["services"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("ID  FRONTEND"), "{text}");
    assert!(text.contains("default/sticky:http"), "{text}");
    assert!(text.contains("affinity=ClientIP/600s"), "{text}");
    let status = json(c, &["status"]);
    assert_eq!(status["daemon_running"], false, "{status:#}");

    let empty = c.fs.scratch().join("no-pins");
    std::fs::create_dir_all(&empty).unwrap();
    for args in [
        ["services"].as_slice(),
        &["conntrack"],
        &[
            "trace",
            "--from",
            "10.244.1.2",
            "--to",
            "10.96.0.10:80",
            "--proto",
            "tcp",
        ],
    ] {
        let out = c.nodes[0]
            .ns
            .command(&c.bins.sluicectl)
            .arg("--bpffs")
            .arg(&empty)
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("is missing: is sluiced running"),
            "{args:?}: {err}"
        );
        assert!(
            !err.contains("panicked") && !err.contains("os error"),
            "{err}"
        );
    }
}
