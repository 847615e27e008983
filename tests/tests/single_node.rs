//! One node, end to end: pods wired by the real sluice-cni binary, sluiced
//! reading a manifests directory, real TCP and UDP through the datapath.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use sluice_tests::{
    apps::{self, Stream},
    manifests::{self, Service, tcp_port, udp_port},
    scenarios::{Web, endpoints},
    sim::{Cluster, Pod, wait_until},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

fn web_service() -> Service {
    manifests::service(
        "web",
        VIP,
        vec![tcp_port("http", 80, 8080), udp_port("dns", 53, 5353)],
    )
}

fn slice_ports() -> Vec<(&'static str, u16, &'static str)> {
    vec![("http", 8080, "TCP"), ("dns", 5353, "UDP")]
}

/// One node, three backend pods serving TCP 8080 and UDP 5353, a client pod,
/// and Service `web` (10.96.0.10: 80/TCP -> 8080, 53/UDP -> 5353).
fn setup() -> Web {
    setup_with(&[])
}

/// [`setup`] with extra `sluiced` arguments.
fn setup_with(daemon_args: &[&str]) -> Web {
    let mut cluster = Cluster::new(1).unwrap();
    cluster.start_daemon_with_args(0, daemon_args).unwrap();
    Web::start(cluster, web_service(), 3, 3, Duration::from_secs(5))
}

fn assert_fair(seen: &BTreeMap<String, usize>, backends: &[Pod], n: usize) {
    assert_eq!(seen.values().sum::<usize>(), n);
    for b in backends {
        let got = seen.get(&b.name).copied().unwrap_or(0);
        assert!(
            got * 5 >= n,
            "{} got {got} of {n} connections (< 20%): {seen:?}",
            b.name
        );
    }
}

#[test]
fn a_tcp_connections_spread_over_backends_and_replies_come_from_the_vip() {
    let s = setup();
    // A connected TCP socket accepts segments only from the address it
    // dialled: each answer proves the reply came from VIP:80.
    let seen = s.spread(SocketAddr::from((VIP, 80)), 300);
    assert_fair(&seen, &s.backends, 300);
}

#[test]
fn b_udp_spreads_and_one_flow_stays_on_one_backend() {
    let s = setup();
    let target = SocketAddr::from((VIP, 53));
    let (spread, flow) = s
        .client
        .ns
        .run(move || {
            let mut spread = BTreeMap::new();
            for i in 0..300 {
                // A new socket is a new source port: a new flow.
                let sock = apps::udp_socket().unwrap();
                let (who, from) = apps::udp_ask(&sock, target, &format!("q{i}"))
                    .unwrap_or_else(|e| panic!("datagram {i} got no answer: {e}"));
                assert_eq!(from, target, "reply {i} came from {from}, not the VIP");
                *spread.entry(who).or_insert(0usize) += 1;
            }
            let sock = apps::udp_socket().unwrap();
            let mut flow = BTreeMap::new();
            for i in 0..100 {
                let (who, from) = apps::udp_ask(&sock, target, &format!("f{i}")).unwrap();
                assert_eq!(from, target);
                *flow.entry(who).or_insert(0usize) += 1;
            }
            (spread, flow)
        })
        .unwrap();
    assert_fair(&spread, &s.backends, 300);
    assert_eq!(
        flow.len(),
        1,
        "one UDP flow moved between backends: {flow:?}"
    );
    assert_eq!(flow.values().sum::<usize>(), 100);
}

#[test]
fn c_removed_endpoint_gets_no_new_connections_and_other_streams_live_on() {
    let s = setup();
    let target = SocketAddr::from((VIP, 80));
    let stream = Stream::start(&s.client.ns, target, Duration::from_millis(20)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let streamed = stream.exchanged.load(std::sync::atomic::Ordering::SeqCst);
    assert!(streamed > 0, "stream did not start");
    // Remove a backend the stream does not use.
    let streaming = stream.server();
    let victim = s
        .backends
        .iter()
        .find(|b| b.name != streaming)
        .expect("three backends");
    let remaining: Vec<&Pod> = s
        .backends
        .iter()
        .filter(|b| b.name != victim.name)
        .collect();
    s.set_endpoints(&remaining);
    let written = Instant::now();
    std::thread::sleep(Duration::from_secs(1).saturating_sub(written.elapsed()));
    let seen = s.spread(target, 100);
    assert!(
        !seen.contains_key(&victim.name),
        "{} still got new connections 1 s after its removal: {seen:?}",
        victim.name
    );
    assert_eq!(seen.values().sum::<usize>(), 100);
    std::thread::sleep(Duration::from_millis(300));
    let report = stream.stop();
    assert!(
        report.error.is_none(),
        "the established stream broke: {report:?}"
    );
    assert!(report.exchanged > streamed, "stream stalled: {report:?}");
    assert_eq!(
        report.server, streaming,
        "the stream moved to another backend"
    );
}

#[test]
fn d_service_without_endpoints_refuses_at_once() {
    let s = setup();
    let empty = manifests::service(
        "empty",
        Ipv4Addr::new(10, 96, 0, 20),
        vec![tcp_port("http", 80, 8080)],
    );
    s.cluster.apply("empty-svc.yaml", &empty.yaml()).unwrap();
    s.cluster
        .apply(
            "empty-slice.yaml",
            &manifests::endpoint_slice(&empty, &[("http", 8080, "TCP")], &[]),
        )
        .unwrap();
    let target = SocketAddr::from((Ipv4Addr::new(10, 96, 0, 20), 80));
    // Give the daemon time to program it, then every attempt must be refused fast.
    let programmed = wait_until(Duration::from_secs(3), || {
        s.client
            .ns
            .run(move || {
                matches!(TcpStream::connect_timeout(&target, Duration::from_secs(1)),
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused)
            })
            .unwrap()
    });
    assert!(programmed, "service without endpoints never refused");
    for _ in 0..5 {
        let (kind, took) = s
            .client
            .ns
            .run(move || {
                let t = Instant::now();
                let r = TcpStream::connect_timeout(&target, Duration::from_secs(5));
                (r.err().map(|e| e.kind()), t.elapsed())
            })
            .unwrap();
        assert_eq!(kind, Some(ErrorKind::ConnectionRefused));
        assert!(took < Duration::from_secs(1), "refusal took {took:?}");
    }
    // UDP gets ICMP port unreachable too: a connected socket sees it.
    let refused = s
        .client
        .ns
        .run(move || {
            let sock = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            sock.connect(SocketAddr::from((Ipv4Addr::new(10, 96, 0, 20), 80)))
                .unwrap();
            let _ = sock.send(b"x");
            let mut buf = [0u8; 16];
            sock.recv(&mut buf).err().map(|e| e.kind())
        })
        .unwrap();
    // Port 80/UDP is not a port of this service: refused as unknown port.
    assert_eq!(refused, Some(ErrorKind::ConnectionRefused));
}

#[test]
fn e_a_pod_reaches_itself_through_its_service() {
    let s = setup();
    let me = &s.backends[0];
    let self_svc = manifests::service(
        "self",
        Ipv4Addr::new(10, 96, 0, 30),
        vec![tcp_port("http", 80, 8080), udp_port("dns", 53, 5353)],
    );
    s.cluster.apply("self-svc.yaml", &self_svc.yaml()).unwrap();
    s.cluster
        .apply(
            "self-slice.yaml",
            &manifests::endpoint_slice(&self_svc, &slice_ports(), &endpoints(&[me])),
        )
        .unwrap();
    let tcp_target = SocketAddr::from((Ipv4Addr::new(10, 96, 0, 30), 80));
    let udp_target = SocketAddr::from((Ipv4Addr::new(10, 96, 0, 30), 53));
    let ok = wait_until(Duration::from_secs(3), || {
        me.ns
            .run(move || apps::tcp_ask(tcp_target).is_ok())
            .unwrap()
    });
    assert!(
        ok,
        "hairpin TCP never worked: {}",
        s.cluster.nodes[0].log_tail()
    );
    let name = me.name.clone();
    me.ns
        .run(move || {
            for _ in 0..20 {
                assert_eq!(apps::tcp_ask(tcp_target).unwrap(), name);
                let sock = apps::udp_socket().unwrap();
                let (who, from) = apps::udp_ask(&sock, udp_target, "me?").unwrap();
                assert_eq!((who.as_str(), from), (name.as_str(), udp_target));
            }
        })
        .unwrap();
    // Through the shared service, a backend sometimes lands on itself.
    let seen = apps::tcp_spread(&me.ns, SocketAddr::from((VIP, 80)), 60);
    assert!(seen.contains_key(&me.name), "never hairpinned: {seen:?}");
}

#[test]
fn f_a_changed_service_port_is_applied_live() {
    let s = setup();
    let mut svc = s.svc.clone();
    svc.ports[0].port = 8081;
    s.cluster.apply("web-svc.yaml", &svc.yaml()).unwrap();
    let new = SocketAddr::from((VIP, 8081));
    let old = SocketAddr::from((VIP, 80));
    let moved = wait_until(Duration::from_secs(3), || {
        s.client
            .ns
            .run(move || {
                apps::tcp_ask(new).is_ok()
                    && matches!(TcpStream::connect_timeout(&old, Duration::from_secs(1)),
                        Err(e) if e.kind() == ErrorKind::ConnectionRefused)
            })
            .unwrap()
    });
    assert!(
        moved,
        "port change not applied: {}",
        s.cluster.nodes[0].log_tail()
    );
    let seen = s.spread(new, 60);
    assert_eq!(seen.values().sum::<usize>(), 60);
}

#[test]
fn g_daemon_restart_keeps_established_streams() {
    let mut s = setup();
    let target = SocketAddr::from((VIP, 80));
    let stream = Stream::start(&s.client.ns, target, Duration::from_millis(20)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    s.cluster.stop_daemon(0).unwrap();
    let during = stream.exchanged.load(std::sync::atomic::Ordering::SeqCst);
    // With the daemon gone the datapath carries on alone, new flows included.
    std::thread::sleep(Duration::from_millis(500));
    let seen = s.spread(target, 30);
    assert_eq!(seen.values().sum::<usize>(), 30);
    s.cluster.start_daemon(0).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let seen = s.spread(target, 30);
    assert_eq!(seen.values().sum::<usize>(), 30);
    let report = stream.stop();
    assert!(
        report.error.is_none(),
        "stream broke across the restart: {report:?}"
    );
    assert!(report.exchanged > during + 20, "stream stalled: {report:?}");
}

#[test]
fn h_bad_manifests_are_skipped_and_the_rest_keeps_working() {
    let s = setup();
    s.cluster
        .apply(
            "broken.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: [oops\n",
        )
        .unwrap();
    s.cluster
        .apply(
            "invalid.yaml",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: bad\n  namespace: default\nspec:\n  clusterIP: 10.96.0.300\n  ports:\n  - port: 80\n",
        )
        .unwrap();
    let target = SocketAddr::from((VIP, 80));
    std::thread::sleep(Duration::from_millis(500));
    let seen = s.spread(target, 30);
    assert_eq!(seen.values().sum::<usize>(), 30);
    let log_has = |needle: &str| {
        wait_until(Duration::from_secs(3), || {
            s.cluster.nodes[0].log_tail().contains(needle)
                || std::fs::read_to_string(&s.cluster.nodes[0].log)
                    .unwrap_or_default()
                    .contains(needle)
        })
    };
    assert!(
        log_has("broken.yaml"),
        "parse failure not logged: {}",
        s.cluster.nodes[0].log_tail()
    );
    assert!(
        log_has("default/bad"),
        "invalid Service not logged: {}",
        s.cluster.nodes[0].log_tail()
    );
}

/// The value of the one sample of `metric` whose line contains every
/// `label` (`name="value"`).
fn sample(text: &str, metric: &str, labels: &[&str]) -> f64 {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .collect();
    assert_eq!(lines.len(), 1, "{metric} {labels:?}: {lines:?}");
    lines[0].rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn i_metrics_and_health_endpoints_report_the_datapath() {
    let s = setup();
    let node = &s.cluster.nodes[0];
    let metrics = SocketAddr::from((Ipv4Addr::LOCALHOST, 10249));
    let scrape = || {
        node.ns
            .run(move || apps::http_get(metrics, "/metrics"))
            .unwrap()
            .unwrap()
    };
    let (status, before) = scrape();
    assert_eq!(status, 200, "{before}");
    let http = [
        "service=\"web\"",
        "port=\"http\"",
        "frontend=\"10.96.0.10:80/TCP\"",
    ];
    let conns = sample(&before, "sluice_service_connections_total", &http);
    let n = 40;
    let seen = s.spread(SocketAddr::from((VIP, 80)), n);
    assert_eq!(seen.values().sum::<usize>(), n);
    let (_, after) = scrape();
    assert_eq!(
        sample(&after, "sluice_service_connections_total", &http),
        conns + n as f64
    );
    assert!(
        sample(&after, "sluice_service_packets_total", &http)
            >= sample(&before, "sluice_service_packets_total", &http) + 4.0 * n as f64
    );
    // Two frontends (80/TCP, 53/UDP) of one Service; three pods on two ports.
    assert_eq!(sample(&after, "sluice_frontends_programmed", &[]), 2.0);
    assert_eq!(sample(&after, "sluice_services_programmed", &[]), 1.0);
    assert_eq!(sample(&after, "sluice_backends_programmed", &[]), 6.0);
    assert_eq!(sample(&after, "sluice_ready", &[]), 1.0);
    let syncs = sample(&after, "sluice_programming_latency_seconds_count", &[]);
    assert!(syncs >= 1.0);
    assert_eq!(
        sample(
            &after,
            "sluice_programming_latency_seconds_bucket",
            &["le=\"+Inf\""]
        ),
        syncs
    );
    assert!(
        sample(
            &after,
            "sluice_datapath_packets_total",
            &["reason=\"fwd-new-connection\""]
        ) >= n as f64
    );
    assert!(
        sample(
            &after,
            "sluice_map_capacity",
            &["map=\"sluice_ct4_tcp_v2\""]
        ) > 0.0
    );
    // The TCP map counts its entries exactly (nothing evicts from it).
    assert!(sample(&after, "sluice_map_entries", &["map=\"sluice_ct4_tcp_v2\""]) >= 2.0);
    assert!(
        sample(
            &after,
            "sluice_conntrack_created_total",
            &["map=\"sluice_ct4_tcp_v2\""]
        ) >= 2.0
    );

    // A refused connection (Service without endpoints) shows up as a drop
    // reason and a refusal of that Service.
    let empty = manifests::service(
        "empty",
        Ipv4Addr::new(10, 96, 0, 20),
        vec![tcp_port("http", 80, 8080)],
    );
    s.cluster.apply("empty-svc.yaml", &empty.yaml()).unwrap();
    let target = SocketAddr::from((Ipv4Addr::new(10, 96, 0, 20), 80));
    let refused = wait_until(Duration::from_secs(5), || {
        s.client
            .ns
            .run(move || {
                matches!(TcpStream::connect_timeout(&target, Duration::from_secs(1)),
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused)
            })
            .unwrap()
    });
    assert!(refused, "{}", node.log_tail());
    let (_, after) = scrape();
    assert!(
        sample(
            &after,
            "sluice_service_refused_total",
            &["service=\"empty\""]
        ) >= 1.0
    );
    assert!(
        after
            .lines()
            .any(|l| l.starts_with("sluice_drops_total{reason=\"reject-no-backend")),
        "{after}"
    );
    assert_eq!(sample(&after, "sluice_services_programmed", &[]), 2.0);

    // Health, as kube-proxy answers it, on the node address from another
    // host; the metrics stay on loopback only.
    let (status, body) = s
        .cluster
        .outside
        .run({
            let addr = SocketAddr::from((node.ip, 10256));
            move || apps::http_get(addr, "/healthz")
        })
        .unwrap()
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["lastUpdated"].as_str().unwrap().ends_with('Z'), "{body}");
    let from_outside = |path: &'static str| {
        let addr = SocketAddr::from((node.ip, 10256));
        s.cluster
            .outside
            .run(move || apps::http_get(addr, path))
            .unwrap()
            .unwrap()
            .0
    };
    assert_eq!(from_outside("/readyz"), 200);
    assert_eq!(from_outside("/metrics"), 404);
    let metrics_outside = SocketAddr::from((node.ip, 10249));
    assert!(
        s.cluster
            .outside
            .run(move || apps::http_get(metrics_outside, "/metrics"))
            .unwrap()
            .is_err(),
        "metrics must not listen on the node address"
    );
}

#[test]
fn j_a_full_maglev_map_falls_back_to_random_choice_and_is_reported() {
    // Room for one table; `web` has two frontends (TCP and UDP ports with
    // different backends, so two distinct tables). The TCP one answered.
    // ClusterIPs use Maglev only when the Service asks.
    let mut cluster = Cluster::new(1).unwrap();
    cluster
        .start_daemon_with_args(0, &["--max-maglev-tables", "1"])
        .unwrap();
    let mut svc = web_service();
    svc.annotations.push(("sluice.dev/lb-algorithm", "maglev"));
    let s = Web::start(cluster, svc, 3, 3, Duration::from_secs(5));
    let tcp = SocketAddr::from((VIP, 80));
    // Both frontends serve every backend, with or without a table.
    let seen = s.spread(tcp, 60);
    assert_eq!(seen.len(), 3, "{seen:?}");
    let udp = SocketAddr::from((VIP, 53));
    let answered: BTreeSet<String> = s
        .client
        .ns
        .run(move || {
            (0..60)
                .map(|i| {
                    // A fresh socket per query: a new flow each time.
                    let sock = apps::udp_socket().unwrap();
                    apps::udp_ask(&sock, udp, &format!("q{i}")).unwrap().0
                })
                .collect()
        })
        .unwrap();
    assert_eq!(answered.len(), 3, "{answered:?}");
    let maps = sluice::datapath::PinnedMaps::open(&s.cluster.nodes[0].bpffs).unwrap();
    assert_eq!(maps.maglev.keys().count(), 1);
    let log = std::fs::read_to_string(&s.cluster.nodes[0].log).unwrap();
    assert!(
        log.contains("is full") && log.contains("at random"),
        "the full table map was not reported: {}",
        s.cluster.nodes[0].log_tail()
    );
}

#[test]
fn k_maps_an_earlier_release_pinned_under_old_names_are_unpinned() {
    let mut cluster = Cluster::new(1).unwrap();
    let node = &cluster.nodes[0];
    // What a release with the version-1 Maglev layout would have left.
    let dir = sluice::datapath::pin_dir(&node.bpffs);
    std::fs::create_dir_all(&dir).unwrap();
    let old = dir.join("sluice_mglv4_v1");
    let fd = sluice::datapath::raw::create_array(4, 4, 0).unwrap();
    aya::maps::MapData::from_fd(fd).unwrap().pin(&old).unwrap();
    assert!(old.exists());
    cluster.start_daemons().unwrap();
    let node = &cluster.nodes[0];
    assert!(!old.exists(), "stale pin left: {}", node.log_tail());
    for name in proxy_common::names::ALL_MAPS {
        assert!(dir.join(name).exists(), "{name} missing");
    }
    let log = std::fs::read_to_string(&node.log).unwrap();
    assert!(
        log.contains("sluice_mglv4_v1") && log.contains("earlier release"),
        "{}",
        node.log_tail()
    );
}

#[test]
fn l_a_closed_backend_port_reaches_the_udp_client_as_connection_refused() {
    let s = setup();
    // A Service whose backends listen on nothing at its targetPort: each
    // answers with ICMP port unreachable about the translated datagram.
    let vip = Ipv4Addr::new(10, 96, 0, 11);
    // Backends send as many errors as they are asked for (the kernel's
    // per-destination limit would otherwise allow six and then one a
    // second).
    for b in &s.backends {
        b.ns.sysctl("net.ipv4.icmp_ratelimit", "0").unwrap();
    }
    let svc = manifests::service("closed", vip, vec![udp_port("dns", 53, 5999)]);
    s.cluster.apply("closed-svc.yaml", &svc.yaml()).unwrap();
    let eps = endpoints(&s.backends.iter().collect::<Vec<_>>());
    s.cluster
        .apply(
            "closed-slice.yaml",
            &manifests::endpoint_slice(&svc, &[("dns", 5999, "UDP")], &eps),
        )
        .unwrap();
    let target = SocketAddr::from((vip, 53));
    let outcome = |attempt: u32| {
        s.client
            .ns
            .run(move || {
                let sock = apps::udp_socket().unwrap();
                sock.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                sock.connect(target).unwrap();
                sock.send(format!("q{attempt}").as_bytes()).unwrap();
                let mut buf = [0u8; 64];
                sock.recv(&mut buf).map(|_| ()).map_err(|e| e.kind())
            })
            .unwrap()
    };
    // Until the Service is programmed the datagram goes nowhere (timeout);
    // then the backend's error must reach the client's socket.
    let mut last = None;
    let refused = wait_until(Duration::from_secs(5), || {
        let r = outcome(0);
        last = Some(r);
        r == Err(ErrorKind::ConnectionRefused)
    });
    assert!(
        refused,
        "last outcome {last:?}: {}",
        s.cluster.nodes[0].log_tail()
    );
    // Every time, whichever backend the new flow gets.
    for i in 1..=10 {
        assert_eq!(outcome(i), Err(ErrorKind::ConnectionRefused), "attempt {i}");
    }
}

#[test]
fn m_a_cluster_dump_loads_and_unusable_files_and_orphan_slices_are_counted() {
    let s = setup();
    let node = &s.cluster.nodes[0];
    // `kubectl get svc -A -o yaml` of a 5000-Service cluster: one List.
    let dump = manifests::service_list(5000, "dumped", 97);
    assert!(dump.len() > 3_000_000, "{}", dump.len());
    s.cluster.apply("cluster-dump.yaml", &dump).unwrap();
    // One of them gets an endpoint, to prove the dump is programmed.
    let svc = manifests::service(
        "dumped-42",
        Ipv4Addr::new(10, 97, 0, 42),
        vec![tcp_port("http", 80, 8080)],
    );
    s.cluster
        .apply(
            "dumped-42-slice.yaml",
            &manifests::endpoint_slice(
                &svc,
                &[("http", 8080, "TCP")],
                &endpoints(&[&s.backends[0]]),
            ),
        )
        .unwrap();
    // A link loop, a dangling link, and a slice whose Service is misspelt.
    let dir = &s.cluster.manifests;
    std::os::unix::fs::symlink("loop-b.yaml", dir.join("loop-a.yaml")).unwrap();
    std::os::unix::fs::symlink("loop-a.yaml", dir.join("loop-b.yaml")).unwrap();
    std::os::unix::fs::symlink("nowhere.yaml", dir.join("dangling.yaml")).unwrap();
    let typo = manifests::service("wbe", VIP, vec![tcp_port("http", 80, 8080)]);
    s.cluster
        .apply(
            "typo-slice.yaml",
            &manifests::endpoint_slice(
                &typo,
                &[("http", 8080, "TCP")],
                &endpoints(&[&s.backends[1]]),
            ),
        )
        .unwrap();

    let target = SocketAddr::from((Ipv4Addr::new(10, 97, 0, 42), 80));
    let served = wait_until(Duration::from_secs(30), || {
        s.client
            .ns
            .run(move || apps::tcp_ask(target).is_ok())
            .unwrap_or(false)
    });
    assert!(
        served,
        "a Service of the dump never answered: {}",
        node.log_tail()
    );
    let metrics = SocketAddr::from((Ipv4Addr::LOCALHOST, 10249));
    let scrape = || {
        node.ns
            .run(move || apps::http_get(metrics, "/metrics"))
            .unwrap()
            .unwrap()
            .1
    };
    let counted = wait_until(Duration::from_secs(10), || {
        let m = scrape();
        sample(&m, "sluice_objects_skipped", &["reason=\"manifest\""]) == 3.0
            && sample(&m, "sluice_objects_skipped", &["reason=\"no-service\""]) == 1.0
    });
    let m = scrape();
    assert!(
        counted,
        "{}",
        m.lines()
            .filter(|l| l.contains("skipped"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(sample(&m, "sluice_frontends_programmed", &[]) >= 5000.0);
    let log = std::fs::read_to_string(&node.log).unwrap();
    assert!(
        log.contains("symbolic link loop") && log.contains("dangling symbolic link"),
        "{}",
        node.log_tail()
    );
    // The orphan slice is reported at debug level, not as a warning.
    assert!(
        !log.lines().any(|l| l.contains("WARN") && l.contains("wbe")),
        "{}",
        node.log_tail()
    );
    // The existing Service still works.
    let seen = s.spread(SocketAddr::from((VIP, 80)), 10);
    assert_eq!(seen.values().sum::<usize>(), 10);
}

#[test]
fn n_a_full_resync_repairs_a_map_entry_deleted_by_hand() {
    let s = setup_with(&["--sync-period", "2s"]);
    let node = &s.cluster.nodes[0];
    let mut maps = sluice::datapath::PinnedMaps::open(&node.bpffs).unwrap();
    let key = proxy_common::ServiceKey::for_frontend(
        VIP,
        80,
        proxy_common::proto::TCP,
        proxy_common::service::SCOPE_EXTERNAL,
    );
    let programmed = maps.services.get(&key, 0).unwrap();
    // On untouched maps a resync writes nothing.
    let log = || std::fs::read_to_string(&node.log).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(6), || log()
            .contains("full resync: maps agree")),
        "no resync within 6 s: {}",
        node.log_tail()
    );
    assert!(
        !log().contains("full resync rewrote"),
        "{}",
        node.log_tail()
    );

    // Someone deletes the frontend's master entry by hand.
    maps.services.remove(&key).unwrap();
    let repaired = wait_until(Duration::from_secs(6), || {
        maps.services.get(&key, 0).ok() == Some(programmed)
    });
    assert!(
        repaired,
        "the deleted entry was not put back: {}",
        node.log_tail()
    );
    // The entry is written before the resync logs what it did.
    let reported = wait_until(Duration::from_secs(2), || {
        log().contains("full resync rewrote")
    });
    assert!(reported, "the repair was not reported: {}", node.log_tail());
    let log = log();
    let line = log
        .lines()
        .find(|l| l.contains("full resync rewrote"))
        .unwrap();
    assert!(line.contains("repaired=1"), "{line}");
    let seen = s.spread(SocketAddr::from((VIP, 80)), 30);
    assert_eq!(seen.len(), 3, "{seen:?}");
}

#[test]
fn o_a_full_backend_map_is_reported_and_what_fits_keeps_working() {
    // Room for 5 backends: `web` takes 3; `more` needs 3 others (another
    // target port on the same pods) and gets only 2: the daemon says the
    // backend map is full and how many backends were left out (planning
    // `more` again with every change), while `web` keeps all its own.
    let mut cluster = Cluster::new(1).unwrap();
    cluster
        .start_daemon_with_args(0, &["--max-backends", "5"])
        .unwrap();
    let web = manifests::service("web", VIP, vec![tcp_port("http", 80, 8080)]);
    let mut s = Web::start(cluster, web, 3, 3, Duration::from_secs(5));
    let more = manifests::service(
        "more",
        Ipv4Addr::new(10, 96, 0, 11),
        vec![tcp_port("http", 80, 9090)],
    );
    s.cluster.publish("more-svc.yaml", &more.yaml()).unwrap();
    let pods: Vec<&Pod> = s.backends.iter().collect();
    s.cluster
        .publish(
            "more-slice.yaml",
            &manifests::endpoint_slice(&more, &[("http", 9090, "TCP")], &endpoints(&pods)),
        )
        .unwrap();
    let log = s.cluster.nodes[0].log.clone();
    let reported = wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("map sluice_be4_v1 is full (5 entries): 1 backends left out"))
    });
    assert!(
        reported,
        "the full backend map was not reported: {}",
        s.log()
    );
    let maps = sluice::datapath::PinnedMaps::open(&s.cluster.nodes[0].bpffs).unwrap();
    assert_eq!(maps.backends.keys().count(), 5, "the map was not filled");
    let seen = s.spread(s.target(), 30);
    assert_eq!(seen.len(), 3, "web lost backends: {seen:?}");
    assert!(s.cluster.nodes[0].running(), "sluiced died: {}", s.log());
}
