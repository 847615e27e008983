//! Connection tracking under the conditions that broke it: sweeps that
//! straddle a clock tick, ports reused between a ClusterIP and its backend,
//! floods that fill the tables. One node, pods wired by sluice-cni, real
//! TCP and UDP.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use sluice::datapath::PinnedMaps;
use sluice_tests::{
    apps::{self, PushListener, Server, Stream},
    fixture::made_up_tcp_flow,
    manifests::{self, Endpoint, Service, ready, tcp_port, udp_port},
    sim::{Cluster, Pod, wait_until},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const VIP_DNS: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 53);

struct Setup {
    backends: Vec<Pod>,
    clients: Vec<Pod>,
    _servers: Vec<Server>,
    cluster: Cluster,
}

fn endpoints(pods: &[Pod]) -> Vec<Endpoint> {
    pods.iter().map(|p| ready(p.ip, &p.node)).collect()
}

/// One node running sluiced with `args`; `backends` pods serving TCP 8080
/// (line echo), TCP 9090 (pushes every 2 s) and UDP 5353; `clients` client
/// pods; Service `web` 10.96.0.10 with 80 -> 8080 and 90 -> 9090, and
/// Service `dns` 10.96.0.53 with 53/UDP -> 5353.
fn setup(args: &[&str], backends: usize, clients: usize) -> Setup {
    let mut cluster = Cluster::new(1).unwrap();
    cluster.start_daemon_with_args(0, args).unwrap();
    let mut pods = Vec::new();
    let mut servers = Vec::new();
    for i in 1..=backends {
        let pod = cluster.add_pod(0, &format!("be-{i}")).unwrap();
        servers.push(apps::serve_tcp(&pod.ns, &pod.name, 8080).unwrap());
        servers.push(apps::serve_push(&pod.ns, &pod.name, 9090, Duration::from_secs(2)).unwrap());
        servers.push(apps::serve_udp(&pod.ns, &pod.name, 5353).unwrap());
        pods.push(pod);
    }
    let clients: Vec<Pod> = (1..=clients)
        .map(|i| cluster.add_pod(0, &format!("client-{i}")).unwrap())
        .collect();
    let web: Service = manifests::service(
        "web",
        VIP,
        vec![tcp_port("http", 80, 8080), tcp_port("push", 90, 9090)],
    );
    let dns: Service = manifests::service("dns", VIP_DNS, vec![udp_port("dns", 53, 5353)]);
    cluster.apply("web-svc.yaml", &web.yaml()).unwrap();
    cluster.apply("dns-svc.yaml", &dns.yaml()).unwrap();
    let eps = endpoints(&pods);
    cluster
        .apply(
            "web-slice.yaml",
            &manifests::endpoint_slice(&web, &[("http", 8080, "TCP"), ("push", 9090, "TCP")], &eps),
        )
        .unwrap();
    cluster
        .apply(
            "dns-slice.yaml",
            &manifests::endpoint_slice(&dns, &[("dns", 5353, "UDP")], &eps),
        )
        .unwrap();
    let target = SocketAddr::from((VIP, 80));
    let client = &clients[0];
    assert!(
        wait_until(Duration::from_secs(5), || client
            .ns
            .run(move || apps::tcp_ask(target).is_ok())
            .unwrap_or(false)),
        "service never answered: {}",
        cluster.nodes[0].log_tail()
    );
    Setup {
        backends: pods,
        clients,
        _servers: servers,
        cluster,
    }
}

/// `sluicectl stats -o json` of the node.
fn stats(s: &Setup) -> serde_json::Value {
    let node = &s.cluster.nodes[0];
    let out = std::process::Command::new(&s.cluster.bins.sluicectl)
        .arg("--bpffs")
        .arg(&node.bpffs)
        .arg("--state-dir")
        .arg(&node.state_dir)
        .args(["-o", "json", "stats"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn reason_packets(stats: &serde_json::Value, reason: &str) -> u64 {
    stats["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["reason"] == reason)
        .map_or(0, |r| r["packets"].as_u64().unwrap())
}

#[test]
fn sweeps_that_straddle_a_second_never_break_established_streams() {
    let s = setup(&["--ct-gc-interval", "1"], 2, 1);
    // A long walk makes the clock tick during most sweeps: 150k live
    // entries of made-up connections (they expire in hours).
    let node = &s.cluster.nodes[0];
    let mut maps = PinnedMaps::open(&node.bpffs).unwrap();
    let now = sluice::conntrack::monotonic_secs();
    for i in 0..150_000u32 {
        let (key, entry) = made_up_tcp_flow(i, now);
        maps.ct_tcp.insert(key, entry, 0).unwrap();
    }
    let target = SocketAddr::from((VIP, 80));
    let streams: Vec<Stream> = (0..20)
        .map(|_| Stream::start(&s.clients[0].ns, target, Duration::from_millis(20)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_secs(15));
    let reports: Vec<_> = streams.into_iter().map(Stream::stop).collect();
    let broken: Vec<_> = reports.iter().filter(|r| r.error.is_some()).collect();
    assert!(
        broken.is_empty(),
        "{} of 20 streams broke during 15 sweeps: {broken:?}\n{}",
        broken.len(),
        node.log_tail()
    );
    assert!(reports.iter().all(|r| r.exchanged > 100), "{reports:?}");
    // Nothing alive was swept: the made-up entries are all there.
    let left = maps.ct_tcp.keys().filter(Result::is_ok).count();
    assert!(left >= 150_000, "{left} entries left");
}

/// Connects from `port` to `target` and exchanges a line.
fn ask_from(pod: &Pod, port: u16, target: SocketAddr) -> Result<String, String> {
    pod.ns
        .run(move || apps::tcp_ask_from(port, target).map_err(|e| format!("{e:#}")))
        .unwrap()
}

#[test]
fn a_port_used_towards_a_cluster_ip_can_be_used_towards_its_backend() {
    let s = setup(&[], 1, 1);
    let (client, backend) = (&s.clients[0], &s.backends[0]);
    let vip = SocketAddr::from((VIP, 80));
    let direct = SocketAddr::from((backend.ip, 8080));
    // The same local port, first through the Service, then straight to
    // the backend (what a client bootstrapping through a Service and then
    // talking to pod IPs does when Linux hands it the port again): on the
    // wire both connections are pod:port <-> backend:8080.
    let mut failures = Vec::new();
    for port in 40_000..40_100 {
        if let Err(e) = ask_from(client, port, vip) {
            failures.push(format!("{port} via the ClusterIP: {e}"));
        }
        let t = Instant::now();
        match ask_from(client, port, direct) {
            Err(e) => failures.push(format!("{port} direct: {e}")),
            Ok(_) if t.elapsed() > Duration::from_secs(1) => {
                failures.push(format!("{port} direct took {:?}", t.elapsed()))
            }
            Ok(_) => {}
        }
    }
    // And the other way round.
    for port in 41_000..41_100 {
        if let Err(e) = ask_from(client, port, direct) {
            failures.push(format!("{port} direct: {e}"));
        }
        if let Err(e) = ask_from(client, port, vip) {
            failures.push(format!("{port} via the ClusterIP afterwards: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures: {failures:#?}",
        failures.len()
    );
}

/// Sequential connections to `target` from `pod` for `for_how_long`; the
/// number made, and the failures.
fn burst(pod: &Pod, target: SocketAddr, for_how_long: Duration) -> (usize, Vec<String>) {
    pod.ns
        .run(move || {
            let start = Instant::now();
            let (mut n, mut failed) = (0, Vec::new());
            while start.elapsed() < for_how_long {
                if let Err(e) = apps::tcp_ask(target) {
                    failed.push(format!("connection {n}: {e:#}"));
                }
                n += 1;
            }
            (n, failed)
        })
        .unwrap()
}

fn many(pod: &Pod, target: SocketAddr, n: usize) -> Vec<String> {
    pod.ns
        .run(move || {
            (0..n)
                .filter_map(|i| apps::tcp_ask(target).err().map(|e| format!("{i}: {e:#}")))
                .collect()
        })
        .unwrap()
}

#[test]
fn direct_connections_after_a_cluster_ip_burst_all_succeed_and_the_reverse() {
    let s = setup(&[], 1, 1);
    let (client, backend) = (&s.clients[0], &s.backends[0]);
    let vip = SocketAddr::from((VIP, 80));
    let direct = SocketAddr::from((backend.ip, 8080));
    let (made, failed) = burst(client, vip, Duration::from_secs(3));
    assert!(failed.is_empty(), "burst: {failed:?}");
    let failed = many(client, direct, 3000);
    assert!(
        failed.is_empty(),
        "{} of 3000 direct connections after a burst of {made} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    let failed = many(client, direct, 3000);
    assert!(
        failed.is_empty(),
        "second direct round: {:?}",
        &failed[..failed.len().min(5)]
    );
    let (made, failed) = burst(client, vip, Duration::from_secs(3));
    assert!(
        failed.is_empty(),
        "{} of {made} ClusterIP connections after 6000 direct ones failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
}

#[test]
fn a_udp_flood_evicts_no_tcp_connection() {
    let s = setup(&["--ct-any-max", "8192"], 2, 2);
    let push = SocketAddr::from((VIP, 90));
    // Quiet connections whose server speaks first: after the flood only
    // their reply state can carry the next push to the client.
    let listeners: Vec<PushListener> = s
        .clients
        .iter()
        .map(|c| PushListener::start(&c.ns, push, Duration::from_secs(6)).unwrap())
        .collect();
    assert!(wait_until(Duration::from_secs(5), || listeners.iter().all(
        |l| l.received.load(std::sync::atomic::Ordering::SeqCst) >= 1
    )));
    let before: Vec<u64> = listeners
        .iter()
        .map(|l| l.received.load(std::sync::atomic::Ordering::SeqCst))
        .collect();
    // 32768 UDP flows, four times the table: a new source port each.
    let dns = SocketAddr::from((VIP_DNS, 53));
    let sent = s.clients[1]
        .ns
        .run(move || {
            let mut sent = 0;
            for i in 0..32_768u16 {
                let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 10_000 + i)).unwrap();
                if sock.send_to(b"flood", dns).is_ok() {
                    sent += 1;
                }
            }
            sent
        })
        .unwrap();
    assert_eq!(sent, 32_768);
    // Two more pushes after the flood.
    std::thread::sleep(Duration::from_secs(5));
    let reports: Vec<_> = listeners.into_iter().map(PushListener::stop).collect();
    for (r, b) in reports.iter().zip(&before) {
        assert!(
            r.error.is_none(),
            "a server-first connection broke: {reports:?}"
        );
        assert!(r.exchanged >= b + 2, "pushes stopped: {reports:?}");
    }
    let st = stats(&s);
    let any = st["conntrack"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == proxy_common::names::MAP_CT_ANY)
        .unwrap()
        .clone();
    eprintln!("UDP table after the flood: {any}");
    assert!(
        any["evicted"].as_u64().unwrap() >= 32_768,
        "the UDP table did not report its evictions: {any}"
    );
    // And UDP itself still works.
    let answered = s.clients[0]
        .ns
        .run(move || {
            let sock = apps::udp_socket().unwrap();
            apps::udp_ask(&sock, dns, "after").is_ok()
        })
        .unwrap();
    assert!(answered);
}

#[test]
fn a_full_tcp_table_refuses_new_connections_and_keeps_established_ones() {
    // 64 entries: 32 connections.
    let s = setup(&["--ct-max", "64"], 2, 1);
    let target = SocketAddr::from((VIP, 80));
    let client = &s.clients[0];
    // The setup's probe connection closed; let the sweep (pressure: closing
    // connections idle 2 s) or its timeout take it.
    let mut streams = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while streams.len() < 32 && Instant::now() < deadline {
        let st = Stream::start(&client.ns, target, Duration::from_millis(200)).unwrap();
        if st.exchanged.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            streams.push(st);
        } else {
            drop(st);
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    assert_eq!(streams.len(), 32, "could not open 32 connections");
    // Full: a new connection's SYN is dropped, counted.
    let before = reason_packets(&stats(&s), "drop-ct-full");
    let refused = client
        .ns
        .run(move || TcpStream::connect_timeout(&target, Duration::from_secs(2)).is_err())
        .unwrap();
    assert!(refused, "a connection got through a full table");
    assert!(reason_packets(&stats(&s), "drop-ct-full") > before);
    // Ten connections close; their entries go under pressure, and new
    // connections get through again.
    let closed: Vec<_> = streams.drain(..10).map(Stream::stop).collect();
    assert!(closed.iter().all(|r| r.error.is_none()), "{closed:?}");
    let t = Instant::now();
    assert!(
        wait_until(Duration::from_secs(15), || client
            .ns
            .run(move || apps::tcp_ask(target).is_ok())
            .unwrap_or(false)),
        "no new connection within 15 s of closing ten: {}",
        s.cluster.nodes[0].log_tail()
    );
    eprintln!("new connections resumed {:?} after ten closed", t.elapsed());
    std::thread::sleep(Duration::from_secs(1));
    let reports: Vec<_> = streams.into_iter().map(Stream::stop).collect();
    let broken: Vec<_> = reports.iter().filter(|r| r.error.is_some()).collect();
    assert!(
        broken.is_empty(),
        "established connections broke: {broken:?}"
    );
}
