//! sluiced's real kube-rs client against the test API server
//! (`sluice_tests::apiserver`), end to end: Services and EndpointSlices
//! created, scaled and deleted through the API; the API server down for
//! 30 s; expired resourceVersions forcing relists. Plus the source on its
//! own (in process, no datapath) for what only its published views show.
//!
//! Run one test at a time (`--test-threads=1`): the 30 s outage dominates.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::json;
use sluice::{
    datapath::PinnedMaps,
    source::kube::{self as kube_source, KubeSourceConfig},
};
use sluice_testkit::netns::NetNs;
use sluice_tests::{
    apiserver::{ApiServer, ApiServerConfig, GoneMode, Kind},
    apps::{self, Stream},
    fixture, manifests,
    scenarios::Web,
    sim::{Cluster, wait_until},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const TARGET: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(VIP), 80);

/// One node running sluiced on the API server, `backends` backend pods
/// serving TCP 8080, a client pod, and Service `web` (10.96.0.10:80 ->
/// 8080) with the first `ready` backends as endpoints, answering.
fn setup(backends: usize, ready: usize) -> Web {
    let mut cluster = Cluster::new(1).expect("cluster");
    cluster
        .start_api_server(ApiServerConfig::default())
        .expect("test API server");
    cluster.start_daemons().expect("sluiced on the API server");
    let svc = manifests::service("web", VIP, vec![manifests::tcp_port("http", 80, 8080)]);
    Web::start(cluster, svc, backends, ready, Duration::from_secs(10))
}

fn names(seen: &BTreeMap<String, usize>) -> BTreeSet<String> {
    seen.keys().cloned().collect()
}

#[test]
fn a_services_created_scaled_and_deleted_through_the_api() {
    let s = setup(3, 1);
    // One endpoint: every connection goes to it.
    let seen = s.spread(TARGET, 30);
    assert_eq!(
        names(&seen),
        BTreeSet::from(["web-1".to_string()]),
        "{seen:?}"
    );

    // Scale up through the API: the new backends get connections.
    s.set_endpoints(&s.backends.iter().collect::<Vec<_>>());
    let all: BTreeSet<String> = s.backends.iter().map(|b| b.name.clone()).collect();
    let scaled_up = wait_until(Duration::from_secs(5), || {
        names(&s.spread(TARGET, 40)) == all
    });
    assert!(
        scaled_up,
        "new endpoints never got connections: {}",
        s.log()
    );

    // Scale down: removed backends get nothing 1 s after the change.
    s.set_endpoints(&[&s.backends[2]]);
    std::thread::sleep(Duration::from_secs(1));
    let seen = s.spread(TARGET, 60);
    assert_eq!(
        names(&seen),
        BTreeSet::from(["web-3".to_string()]),
        "removed endpoints still got new connections 1 s after the change: {seen:?}"
    );

    // Delete the Service: new connections fail.
    s.cluster
        .api_server()
        .delete(Kind::Service, "default", "web")
        .expect("Service deleted");
    let failing = wait_until(Duration::from_secs(1), || {
        s.client
            .ns
            .run(|| apps::tcp_ask(TARGET).is_err())
            .unwrap_or(false)
    });
    assert!(
        failing,
        "the deleted Service still answered 1 s later: {}",
        s.log()
    );
    let still = s
        .client
        .ns
        .run(|| (0..10).filter(|_| apps::tcp_ask(TARGET).is_ok()).count())
        .unwrap();
    assert_eq!(still, 0, "connections to a deleted Service succeeded");
}

#[test]
fn b_api_server_down_for_30s_traffic_flows_and_changes_converge_after() {
    let s = setup(3, 2);
    let stream = Stream::start(&s.client.ns, TARGET, Duration::from_millis(50)).unwrap();
    assert!(
        stream.exchanged.load(Ordering::SeqCst) > 0,
        "stream did not start"
    );
    let watches_before = s.cluster.api_server().stats().watches;

    // New connections all through the outage, from another thread of the
    // client pod.
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let prober = {
        let (stop, made, failures) = (stop.clone(), made.clone(), failures.clone());
        s.client
            .ns
            .spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match apps::tcp_ask(TARGET) {
                        Ok(_) => {
                            made.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => failures.lock().unwrap().push(e.to_string()),
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
            .unwrap()
    };

    s.cluster
        .api_server()
        .stop_listening()
        .expect("API server stopped");
    let down = Instant::now();
    // A change made while this API server is away (through another one,
    // as far as the cluster is concerned): the third backend joins.
    std::thread::sleep(Duration::from_secs(5));
    s.set_endpoints(&s.backends.iter().collect::<Vec<_>>());
    std::thread::sleep(Duration::from_secs(30).saturating_sub(down.elapsed()));
    let during = made.load(Ordering::SeqCst);
    let web3_during = s.spread(TARGET, 30).contains_key("web-3");
    let log_down = std::fs::read_to_string(&s.cluster.nodes[0].log).unwrap_or_default();
    s.cluster
        .api_server()
        .start_listening()
        .expect("API server back");
    let back = Instant::now();

    // The change converges once the daemon reconnects: each kind's next
    // attempt is at most the 30 s backoff cap away (jitter stays under it),
    // and the first kind to get an answer wakes the others.
    let converged = wait_until(Duration::from_secs(35), || {
        s.spread(TARGET, 20).contains_key("web-3")
    });
    let took = back.elapsed();
    stop.store(true, Ordering::SeqCst);
    prober.join().unwrap();
    let report = stream.stop();

    let log = std::fs::read_to_string(&s.cluster.nodes[0].log).unwrap_or_default();
    assert!(
        log.contains("API watch failed"),
        "the daemon never noticed the outage: {}",
        s.log()
    );
    // Jittered exponential backoff capped at 30 s: 250 ms, 0.5, 1, 2, 4, 8,
    // 16 s ... is about 7 attempts per kind in 30 s. A backoff reset by
    // kube-runtime's Init event (sent before any request) gave ~120.
    // The first failure is the watch's; every later attempt is a probe of
    // /version (no lists against a server that is down).
    for kind in ["Service", "EndpointSlice", "Node"] {
        let attempts = log_lines(&log_down, "API watch failed", kind)
            + log_lines(&log_down, "API server still unreachable", kind);
        assert!(
            (1..=10).contains(&attempts),
            "{attempts} failed {kind} watch attempts in 30 s of outage (want 1..=10): {}",
            s.log()
        );
    }
    assert_eq!(
        log_down.matches("API server reachable again").count(),
        0,
        "a recovery was logged while the API server was still down: {}",
        s.log()
    );
    assert!(
        log.contains("API server reachable again"),
        "the recovery was never logged: {}",
        s.log()
    );
    // The first kind to reconnect wakes the others out of their backoff.
    let all_back = wait_until(Duration::from_secs(5), || {
        let log = std::fs::read_to_string(&s.cluster.nodes[0].log).unwrap_or_default();
        ["Service", "EndpointSlice", "Node"]
            .iter()
            .all(|kind| log_lines(&log, "API server reachable again", kind) >= 1)
    });
    assert!(
        all_back,
        "not every kind resumed after the API server's return: {}",
        s.log()
    );
    assert!(
        report.error.is_none(),
        "the established stream broke during the outage: {report:?}"
    );
    assert!(
        report.exchanged > 400,
        "the stream stalled: {} exchanges in ~{} s",
        report.exchanged,
        down.elapsed().as_secs()
    );
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "new connections failed while the API server was down: {failures:?}"
    );
    assert!(
        during >= 150,
        "only {during} new connections in 30 s of outage"
    );
    assert!(
        !web3_during,
        "web-3 got traffic while the API server was down: the change cannot have arrived"
    );
    assert!(
        converged,
        "the change made during the outage did not converge within 35 s of the API server's return: {}",
        s.log()
    );
    assert!(
        s.cluster.api_server().stats().watches.iter().sum::<u64>()
            > watches_before.iter().sum::<u64>(),
        "the daemon never re-established its watches"
    );
    eprintln!(
        "outage: {during} new connections during 30 s, {} stream exchanges, converged {} ms after the API server's return",
        report.exchanged,
        took.as_millis()
    );
}

#[test]
fn c_expired_resource_version_relists_without_flapping() {
    let s = setup(4, 3);
    let stream = Stream::start(&s.client.ns, TARGET, Duration::from_millis(20)).unwrap();
    let maps = PinnedMaps::open(&s.cluster.nodes[0].bpffs).expect("pinned maps");
    let stable: BTreeSet<Ipv4Addr> = s.backends[..3].iter().map(|b| b.ip).collect();
    let initial = fixture::frontend_backends(&maps, VIP, 80).expect("frontend programmed");
    assert_eq!(
        initial.iter().copied().collect::<BTreeSet<_>>(),
        stable,
        "datapath before the relist"
    );

    // Poll the datapath every ~millisecond through both relists.
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let stop = stop.clone();
        let stable = stable.clone();
        std::thread::spawn(move || {
            let mut polls = 0u64;
            let mut dips = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let now = fixture::frontend_backends(&maps, VIP, 80);
                let have: BTreeSet<Ipv4Addr> = now.iter().flatten().copied().collect();
                if !stable.is_subset(&have) && dips.len() < 10 {
                    dips.push(format!("poll {polls}: {now:?}"));
                }
                polls += 1;
                std::thread::sleep(Duration::from_micros(500));
            }
            (polls, dips)
        })
    };

    let mut rounds = Vec::new();
    for (round, mode) in [GoneMode::ErrorEvent, GoneMode::HttpStatus]
        .into_iter()
        .enumerate()
    {
        s.cluster.api_server().set_gone_mode(mode);
        // Relists take a while, as in a large cluster: far longer than the
        // daemon's coalescing window.
        s.cluster
            .api_server()
            .set_list_delay(Duration::from_millis(400));
        let before = s.cluster.api_server().stats();
        // Every watcher's resourceVersion expires and its connection is
        // cut; a change lands while the daemon relists.
        s.cluster.api_server().expire_watches();
        if round == 1 {
            s.set_endpoints(&s.backends.iter().collect::<Vec<_>>());
        }
        let relisted = wait_until(Duration::from_secs(15), || {
            let now = s.cluster.api_server().stats();
            Kind::ALL
                .iter()
                .all(|&k| now.list_starts(k) > before.list_starts(k))
        });
        let after = s.cluster.api_server().stats();
        assert!(
            relisted,
            "{mode:?}: not every kind was relisted after the expiry: {before:?} -> {after:?}: {}",
            s.log()
        );
        assert!(after.gone > before.gone, "{mode:?}: no 410 was sent");
        rounds.push((mode, after.gone - before.gone));
    }
    // The change made during the second relist converges.
    let all: BTreeSet<String> = s.backends.iter().map(|b| b.name.clone()).collect();
    let converged = wait_until(Duration::from_secs(5), || {
        names(&s.spread(TARGET, 40)) == all
    });
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    let (polls, dips) = poller.join().unwrap();
    let report = stream.stop();

    assert!(
        dips.is_empty(),
        "a backend present before and after the relist was missing from the datapath: {dips:?}"
    );
    assert!(polls > 500, "the datapath was polled only {polls} times");
    assert!(
        report.error.is_none(),
        "the stream broke during the relist: {report:?}"
    );
    assert!(
        converged,
        "the endpoint added during the relist never got connections: {}",
        s.log()
    );
    let log = std::fs::read_to_string(&s.cluster.nodes[0].log).unwrap_or_default();
    assert!(
        log.contains("relisting"),
        "the daemon did not log its relist: {}",
        s.log()
    );
    eprintln!("relists: {rounds:?}, datapath polled {polls} times, no dip");
}

/// A namespace holding only the API server (on its loopback) and the
/// source's client thread.
struct SourceHarness {
    server: ApiServer,
    kubeconfig: PathBuf,
    ns: NetNs,
    /// Holds the kubeconfig; named after the process, so `cargo xtask`
    /// sweeps it if the test dies.
    dir: PathBuf,
}

impl SourceHarness {
    fn new() -> Self {
        sluice_testkit::privileges::require_root();
        let ns = NetNs::new("apisrc").expect("namespace");
        let server = ApiServer::start(&ns, Ipv4Addr::LOCALHOST, ApiServerConfig::default())
            .expect("test API server");
        let dir = sluice_testkit::bpffs::scratch_dir("apisrc").expect("scratch directory");
        let kubeconfig = dir.join("kubeconfig");
        server.write_kubeconfig(&kubeconfig).unwrap();
        Self {
            server,
            kubeconfig,
            ns,
            dir,
        }
    }
}

impl Drop for SourceHarness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn svc_json(i: u32) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc-{i}"), "namespace": "default"},
        "spec": {"clusterIP": Ipv4Addr::from(u32::from(VIP) + i).to_string(),
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}
    })
}

fn slice_json(i: u32, endpoints: u32) -> serde_json::Value {
    let eps: Vec<_> = (0..endpoints)
        .map(|e| {
            json!({"addresses": [format!("10.244.{}.{}", i % 200, e + 1)],
                        "conditions": {"ready": true}})
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("svc-{i}-abcde"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    })
}

/// A published view reduced to what the test checks.
#[derive(Clone, Debug)]
struct View {
    services: usize,
    slices: usize,
    nodes: usize,
    /// Endpoints of the slice of svc-0.
    svc0_endpoints: usize,
}

#[test]
fn d_the_source_publishes_only_complete_views() {
    const N: u32 = 1200;
    let h = SourceHarness::new();
    // More than two pages (kube-rs asks for 500 at a time).
    h.server
        .apply_all((0..N).flat_map(|i| [svc_json(i), slice_json(i, 3)]))
        .unwrap();
    h.server
        .apply_yaml(&manifests::node(
            "node-1",
            Ipv4Addr::new(10, 77, 0, 10),
            "10.244.1.0/24",
        ))
        .unwrap();
    // Down at first: nothing may be published until it is back and every
    // kind is listed.
    h.server.stop_listening().unwrap();

    let views = Arc::new(Mutex::new(Vec::<View>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let source = {
        let (views, stop, path) = (views.clone(), stop.clone(), h.kubeconfig.clone());
        h.ns.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let client = kube_source::client_from_kubeconfig(&path).await.unwrap();
                let cfg = KubeSourceConfig {
                    backoff_max: Duration::from_secs(1),
                    ..KubeSourceConfig::default()
                };
                let mut rx = kube_source::spawn(client, cfg);
                while !stop.load(Ordering::SeqCst) {
                    let changed =
                        tokio::time::timeout(Duration::from_millis(50), rx.changed()).await;
                    if matches!(changed, Ok(Err(_))) {
                        break;
                    }
                    let Some(u) = rx.borrow_and_update().clone() else {
                        continue;
                    };
                    let st = &u.state;
                    let svc0 = st
                        .endpoint_slices
                        .iter()
                        .find(|(k, _)| &*k.name == "svc-0-abcde")
                        .map_or(0, |(_, s)| s.endpoints.len());
                    let view = View {
                        services: st.services.len(),
                        slices: st.endpoint_slices.len(),
                        nodes: st.nodes.len(),
                        svc0_endpoints: svc0,
                    };
                    let mut v = views.lock().unwrap();
                    if v.last().is_none_or(|l| {
                        l.services != view.services
                            || l.slices != view.slices
                            || l.svc0_endpoints != view.svc0_endpoints
                            || l.nodes != view.nodes
                    }) {
                        v.push(view);
                    }
                }
            });
        })
        .unwrap()
    };
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        views.lock().unwrap().is_empty(),
        "published while the API server was unreachable"
    );
    h.server.start_listening().unwrap();
    let listed = wait_until(Duration::from_secs(15), || {
        !views.lock().unwrap().is_empty()
    });
    assert!(listed, "nothing published after the API server came up");
    let first = views.lock().unwrap()[0].clone();
    assert_eq!(
        (first.services, first.slices, first.nodes),
        (N as usize, N as usize, 1),
        "the first published view was not complete: {first:?}"
    );

    // Relists, with the real server's ERROR event and with a bare HTTP 410
    // (which kube-rs alone would retry forever), each with a change.
    for (round, mode) in [
        GoneMode::ErrorEvent,
        GoneMode::HttpStatus,
        GoneMode::ErrorEvent,
    ]
    .into_iter()
    .enumerate()
    {
        h.server.set_gone_mode(mode);
        let before = h.server.stats();
        h.server.expire_watches();
        h.server.apply(slice_json(0, 4 + round as u32)).unwrap();
        let want = 4 + round;
        let ok = wait_until(Duration::from_secs(15), || {
            views
                .lock()
                .unwrap()
                .last()
                .is_some_and(|v| v.svc0_endpoints == want)
        });
        let after = h.server.stats();
        assert!(
            ok,
            "{mode:?}: the change during the relist never arrived: {:?} {before:?} -> {after:?}",
            views.lock().unwrap().last()
        );
        assert!(after.gone > before.gone, "{mode:?}: no 410 sent");
        assert!(
            after.list_starts(Kind::EndpointSlice) > before.list_starts(Kind::EndpointSlice),
            "{mode:?}: no relist"
        );
    }
    // A deletion seen through the watch.
    h.server
        .delete(Kind::Service, "default", &format!("svc-{}", N - 1))
        .unwrap();
    let deleted = wait_until(Duration::from_secs(5), || {
        views
            .lock()
            .unwrap()
            .last()
            .is_some_and(|v| v.services == N as usize - 1)
    });
    stop.store(true, Ordering::SeqCst);
    source.join().unwrap();
    assert!(deleted, "a deletion never reached the view");
    let views = views.lock().unwrap().clone();
    for v in &views {
        assert!(
            v.services >= N as usize - 1 && v.slices == N as usize && v.nodes == 1,
            "a partial view was published: {v:?} (all: {views:?})"
        );
    }
    eprintln!("{} distinct views published: {views:?}", views.len());
}

/// Lines of a daemon log with `message` logged for `kind` (the `kind`
/// field, however the formatter quotes it).
fn log_lines(log: &str, message: &str, kind: &str) -> usize {
    let quoted = format!("kind=\"{kind}\"");
    let bare = format!("kind={kind} ");
    log.lines()
        .filter(|l| l.contains(message) && (l.contains(&quoted) || l.contains(&bare)))
        .count()
}
