//! Upgrades keep connections. The node first runs the previous release's
//! datapath (its eBPF object, kept in `tests/fixtures/legacy/`, built from
//! commit 98c3779, whose connection tracking is one LRU map of the v1
//! layout) with live flows through it: a Service connection whose server
//! speaks first, a client-first one, and a masqueraded one. Then this
//! release's sluiced starts, migrates the tracked flows and replaces the
//! programs: every flow keeps working without a reset.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    sync::atomic::Ordering,
    time::Duration,
};

use proxy_common::{CtEntry, CtKey, names};
use sluice::datapath::{Capacities, Loader, PinnedMaps, map_path};
use sluice_tests::{
    apps::{self, PushListener, Stream},
    manifests::{self, ready, tcp_port},
    sim::{Cluster, wait_until},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const LEGACY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/fixtures/legacy/datapath-98c3779.o"
);
/// The maps that release pinned (its `names::ALL_MAPS`).
const LEGACY_MAPS: [&str; 10] = [
    "sluice_svc4_v1",
    "sluice_be4_v1",
    "sluice_ct4_v1",
    "sluice_frag4_v1",
    "sluice_rsn_v1",
    "sluice_svst_v1",
    "sluice_cfg_v1",
    "sluice_aff4_v1",
    "sluice_srcr4_v1",
    "sluice_mglv4_v3",
];

/// The object's bytes in 8-byte aligned storage (the ELF reader wants
/// aligned data), and their length.
fn legacy_object() -> (Vec<u64>, usize) {
    let bytes = std::fs::read(LEGACY).unwrap();
    let mut words = vec![0u64; bytes.len().div_ceil(8)];
    // SAFETY: the vector holds at least bytes.len() bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), words.as_mut_ptr().cast::<u8>(), bytes.len())
    };
    (words, bytes.len())
}

fn as_bytes(words: &[u64], len: usize) -> &[u8] {
    assert!(len <= words.len() * 8);
    // SAFETY: the words hold `len` bytes of the object.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), len) }
}

/// Puts the previous release's datapath on the node, as it ran before the
/// upgrade: its programs on every hooked interface, its CT map pinned, and
/// the maps it did not know unpinned (what its own start did to them).
fn downgrade(cluster: &Cluster) {
    let node = &cluster.nodes[0];
    let bpffs = node.bpffs.clone();
    let (object, len) = legacy_object();
    let mut progs = Loader::new(&bpffs, Capacities::default())
        .with_object(as_bytes(&object, len))
        .load()
        .expect("the previous release's object loads");
    progs.pin().unwrap();
    let dir = bpffs.clone();
    let pods = node.ns.run(move || sluice::daemon::reattach(&dir)).unwrap();
    assert!(pods >= 3, "{pods} pods re-attached");
    drop(progs);
    for name in names::ALL_MAPS.iter().filter(|n| !LEGACY_MAPS.contains(n)) {
        std::fs::remove_file(map_path(&bpffs, name)).unwrap();
    }
    assert!(map_path(&bpffs, names::LEGACY_MAP_CT_V1).exists());
}

/// Entries of the previous release's CT map.
fn legacy_entries(bpffs: &Path) -> Vec<(CtKey, CtEntry)> {
    let data = aya::maps::MapData::from_pin(map_path(bpffs, names::LEGACY_MAP_CT_V1)).unwrap();
    let map: aya::maps::HashMap<_, CtKey, CtEntry> =
        aya::maps::HashMap::try_from(aya::maps::Map::from_map_data(data).unwrap()).unwrap();
    map.iter().filter_map(Result::ok).collect()
}

#[test]
fn an_upgrade_migrates_tracked_flows_and_none_breaks() {
    let mut cluster = Cluster::new(1).unwrap();
    cluster.start_daemon(0).unwrap();
    let backend = cluster.add_pod(0, "backend").unwrap();
    let client = cluster.add_pod(0, "client").unwrap();
    let pusher = cluster.add_pod(0, "pushee").unwrap();
    let _servers = [
        apps::serve_tcp(&backend.ns, "backend", 8080).unwrap(),
        apps::serve_push(&backend.ns, "backend", 9090, Duration::from_millis(500)).unwrap(),
        apps::serve_tcp(&cluster.outside, "outside", 7000).unwrap(),
    ];
    let svc = manifests::service(
        "web",
        VIP,
        vec![tcp_port("http", 80, 8080), tcp_port("push", 90, 9090)],
    );
    cluster.apply("web-svc.yaml", &svc.yaml()).unwrap();
    cluster
        .apply(
            "web-slice.yaml",
            &manifests::endpoint_slice(
                &svc,
                &[("http", 8080, "TCP"), ("push", 9090, "TCP")],
                &[ready(backend.ip, "node-1")],
            ),
        )
        .unwrap();
    let vip = SocketAddr::from((VIP, 80));
    assert!(wait_until(Duration::from_secs(5), || client
        .ns
        .run(move || apps::tcp_ask(vip).is_ok())
        .unwrap_or(false)));
    cluster.stop_daemon(0).unwrap();

    // The previous release runs the node, and carries the flows.
    downgrade(&cluster);
    let outside = SocketAddr::from((cluster.outside_ip, 7000));
    let service_stream = Stream::start(&client.ns, vip, Duration::from_millis(20)).unwrap();
    let masq_stream = Stream::start(&client.ns, outside, Duration::from_millis(20)).unwrap();
    let push = PushListener::start(
        &pusher.ns,
        SocketAddr::from((VIP, 90)),
        Duration::from_secs(3),
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(5), || {
        push.received.load(Ordering::SeqCst) >= 2
            && masq_stream.exchanged.load(Ordering::SeqCst) > 10
            && service_stream.exchanged.load(Ordering::SeqCst) > 10
    }));
    let bpffs = cluster.nodes[0].bpffs.clone();
    let legacy = legacy_entries(&bpffs);
    assert!(
        legacy.len() >= 6,
        "the previous release tracks the three flows in its own map: {} entries",
        legacy.len()
    );

    // The upgrade.
    cluster.start_daemon(0).unwrap();
    let node = &cluster.nodes[0];
    assert!(
        wait_until(Duration::from_secs(10), || !map_path(
            &bpffs,
            names::LEGACY_MAP_CT_V1
        )
        .exists()),
        "the old CT map was not retired: {}",
        node.log_tail()
    );
    std::thread::sleep(Duration::from_secs(3));
    let (s, m, p) = (service_stream.stop(), masq_stream.stop(), push.stop());
    assert!(
        s.error.is_none(),
        "the Service connection broke: {s:?}\n{}",
        node.log_tail()
    );
    assert!(
        m.error.is_none(),
        "the masqueraded connection broke: {m:?}\n{}",
        node.log_tail()
    );
    assert!(
        p.error.is_none(),
        "the server-first connection broke: {p:?}\n{}",
        node.log_tail()
    );
    assert!(p.exchanged >= 6, "{p:?}");
    // Migrated, not recreated: the new maps hold the old entries.
    let maps = PinnedMaps::open(&bpffs).unwrap();
    let carried = legacy
        .iter()
        .filter(|(k, _)| maps.ct_for(k.proto).get(k, 0).is_ok())
        .count();
    assert!(
        carried >= 6,
        "{carried} of {} entries carried over",
        legacy.len()
    );
    let log = std::fs::read_to_string(&node.log).unwrap();
    assert!(
        log.contains("connection tracking migrated"),
        "{}",
        node.log_tail()
    );
}

#[test]
fn pins_of_layouts_this_release_does_not_know_are_left_alone() {
    let mut cluster = Cluster::new(1).unwrap();
    let node = &cluster.nodes[0];
    let dir = sluice::datapath::pin_dir(&node.bpffs);
    std::fs::create_dir_all(&dir).unwrap();
    // The legacy CT name with a layout no release had, and a newer
    // release's map (a downgrade).
    for name in [names::LEGACY_MAP_CT_V1, "sluice_ct4_tcp_v3"] {
        let fd = sluice::datapath::raw::create_array(4, 8, 0).unwrap();
        aya::maps::MapData::from_fd(fd)
            .unwrap()
            .pin(dir.join(name))
            .unwrap();
    }
    cluster.start_daemons().unwrap();
    let node = &cluster.nodes[0];
    for name in [names::LEGACY_MAP_CT_V1, "sluice_ct4_tcp_v3"] {
        assert!(
            dir.join(name).exists(),
            "{name} was removed: {}",
            node.log_tail()
        );
    }
    let log = std::fs::read_to_string(&node.log).unwrap();
    assert!(
        log.contains("unknown layout left alone"),
        "{}",
        node.log_tail()
    );
    assert!(log.contains("sluice_ct4_tcp_v3"), "{}", node.log_tail());
}
