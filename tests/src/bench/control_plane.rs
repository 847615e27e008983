//! `cargo xtask bench control-plane`: how fast the control plane gets
//! Services into the datapath, against kube-proxy's iptables mode doing the
//! same work, in one run.
//!
//! sluiced (real kube-rs client, the test API server on the fabric, one
//! node):
//! - start to fully programmed with 10k Services x 10 endpoints already on
//!   the API server: from spawning the daemon to its "datapath programmed"
//!   log line with every frontend;
//! - one EndpointSlice change (one endpoint replaced) committed on the API
//!   server, to the new backend readable in the frontend's slots of the
//!   pinned maps (polled continuously), over 100 changes: p50/p99.
//!
//! kube-proxy (iptables mode), inside a namespace of its own: the ruleset
//! pkg/proxy/iptables/proxier.go writes for the same 10k Services x 10
//! endpoints (large-cluster mode, as >1000 endpoints puts it in: no
//! per-endpoint comments), fed to `iptables-restore --noflush --counters`
//! as kube-proxy does:
//! - the full sync on an empty node, and a full resync over it;
//! - the partial sync after one endpoint changed (kube-proxy >= 1.27): the
//!   top-level chains, every KUBE-SERVICES jump and the changed Service's
//!   KUBE-SVC/KUBE-SEP chains, over the same 100 changes: p50/p99 of the
//!   restore process, start to exit. (kube-proxy's own rule generation and
//!   its 1 s minimum sync interval come on top; they are not counted.)
//!
//! kube-proxy (nftables mode), the same way: its table for the same
//! Services through one `nft -f`, then for each change the partial sync it
//! makes (that Service's chains rewritten, the stale endpoint chain
//! deleted) as one `nft -f` transaction on the loaded ruleset.
//!
//! `SLUICE_BENCH_SERVICES` / `SLUICE_BENCH_CHANGES` scale it down for a
//! quick look; `SLUICE_BENCH_SLUICED_ARGS` adds daemon arguments;
//! `SLUICE_BENCH_ONLY=sluiced` (or `iptables`, or `nft`) runs one side.

use std::{
    fmt::Write as _,
    io::Write as _,
    net::Ipv4Addr,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use sluice::datapath::PinnedMaps;
use sluice_testkit::netns::{NetNs, command_entering};

use crate::{
    apiserver::ApiServerConfig,
    bench::{ENDPOINTS, endpoint, percentile, vip},
    fixture::{frontend_backends, made_up_tcp_flow},
    sim::{CLUSTER_CIDR, Cluster},
};

pub(crate) mod nft;

const SERVICES: usize = 10_000;
const CHANGES: usize = 100;
const SERVICE_PORT: u16 = 80;
/// Size of the iptables-nft `--noflush` full-sync probe.
const PROBE_SERVICES: usize = 1_000;
const TARGET_PORT: u16 = 8080;

/// A positive count from the environment, `default` when unset; anything
/// else (a list meant for another bench, say) is an error, not a default.
fn env_usize(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => match v.trim().parse() {
            Ok(n) if n > 0 => Ok(n),
            _ => bail!("{name}={v:?}: a positive number for this bench"),
        },
    }
}

/// The address the `k`th change brings in (never used before).
fn changed_endpoint(k: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 131, 0, 0)) + k as u32)
}

/// The Service the `k`th change touches (spread over the whole range).
fn changed_service(k: usize, services: usize) -> usize {
    (k * 7919 + 13) % services
}

pub(crate) fn service_json(i: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
        "spec": {"type": "ClusterIP", "clusterIP": vip(i).to_string(),
                 "clusterIPs": [vip(i).to_string()],
                 "selector": {"app": format!("svc-{i}")},
                 "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": TARGET_PORT,
                            "protocol": "TCP"}]}
    })
}

pub(crate) fn slice_json(i: usize, endpoints: &[Ipv4Addr]) -> Value {
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|a| {
            json!({"addresses": [a.to_string()],
                   "conditions": {"ready": true, "serving": true, "terminating": false},
                   "nodeName": "node-2"})
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("svc-{i}-abcde"), "namespace": "bench",
                     "labels": {"kubernetes.io/service-name": format!("svc-{i}"),
                                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": [{"name": "http", "port": TARGET_PORT, "protocol": "TCP"}]
    })
}

/// The endpoints of Service `i` after `changes` (service, new address).
fn endpoints_after(i: usize, changes: &[(usize, Ipv4Addr)]) -> Vec<Ipv4Addr> {
    let mut eps: Vec<Ipv4Addr> = (0..ENDPOINTS).map(|e| endpoint(i, e)).collect();
    // Each change to a Service replaces its oldest endpoint.
    let mut next = 0;
    for (svc, addr) in changes {
        if *svc == i {
            eps[next % ENDPOINTS] = *addr;
            next += 1;
        }
    }
    eps
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The values of `field=` on log lines containing `marker`, in order.
fn log_fields(log: &str, marker: &str, field: &str) -> Vec<u64> {
    let key = format!("{field}=");
    log.lines()
        .filter(|l| l.contains(marker))
        .filter_map(|l| {
            let rest = &l[l.find(&key)? + key.len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

struct SluicedFigures {
    services: usize,
    start_to_listed: Duration,
    start_to_programmed: Duration,
    /// The daemon's own view of its first apply (publish to maps written).
    first_apply: Duration,
    changes: Vec<Duration>,
    /// The daemon's own change-to-programmed figures (from the source's
    /// arrival stamp), for the same changes.
    daemon_changes: Vec<Duration>,
    /// A new Service (its slice already there) committed -> its frontend
    /// with every backend in the maps; and its deletion -> gone.
    service_adds: Vec<Duration>,
    service_deletes: Vec<Duration>,
    /// sluiced's peak and current resident memory, KiB (VmHWM, VmRSS).
    rss_peak_kib: u64,
    rss_kib: u64,
    /// Kernel memory of every BPF map sluiced created (memlock, from
    /// bpftool), bytes.
    map_bytes: u64,
    /// CPU sluiced used over an idle period, percent of one core.
    idle_cpu_percent: f64,
}

/// `VmHWM` and `VmRSS` of a process, KiB.
fn memory_kib(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        line.split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("bad {name} line {line:?}"))
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}

/// Kernel memory of all BPF maps on the machine (bpftool's
/// `bytes_memlock`), by map id: the difference before and after sluiced
/// programmed is what its maps (pinned ones and the Maglev arrays inside
/// the map-of-maps) cost.
fn map_memlock() -> Result<std::collections::BTreeMap<u64, u64>> {
    let out = std::process::Command::new("bpftool")
        .args(["map", "show", "--json"])
        .output()
        .context("running bpftool")?;
    if !out.status.success() {
        bail!("bpftool map show: {}", String::from_utf8_lossy(&out.stderr));
    }
    let maps: Vec<Value> = serde_json::from_slice(&out.stdout)?;
    Ok(maps
        .iter()
        .filter_map(|m| Some((m["id"].as_u64()?, m["bytes_memlock"].as_u64()?)))
        .collect())
}

/// The CPU `pid` uses while nothing changes for 32 s (long enough for the
/// overlay repair and a CT sweep to run at least once each), percent of
/// one core.
fn idle_cpu(pid: u32) -> Result<f64> {
    let (ticks0, t0) = (cpu_ticks(pid)?, Instant::now());
    std::thread::sleep(Duration::from_secs(32));
    let ticks = cpu_ticks(pid)? - ticks0;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks as f64 / hz / t0.elapsed().as_secs_f64() * 100.0)
}

/// Map capacities for `services` x [`ENDPOINTS`] (twice what they need).
pub(crate) fn capacity_args(services: usize) -> Vec<String> {
    [
        ("--max-backends", (services * ENDPOINTS * 2).max(65_536)),
        (
            "--max-service-entries",
            (services * (ENDPOINTS + 3)).max(262_144),
        ),
        ("--max-service-ids", (services * 2).max(65_536)),
    ]
    .into_iter()
    .flat_map(|(flag, n)| [flag.to_string(), n.to_string()])
    .collect()
}

/// User plus system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')').context("bad stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11).context("no utime")?.parse()?;
    let stime: u64 = f.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

fn measure_sluiced(services: usize, changes: usize) -> Result<SluicedFigures> {
    let mut cluster = Cluster::new(1)?;
    cluster.start_api_server(ApiServerConfig::default())?;
    let objects = (0..services).flat_map(|i| {
        let eps: Vec<Ipv4Addr> = (0..ENDPOINTS).map(|e| endpoint(i, e)).collect();
        [service_json(i), slice_json(i, &eps)]
    });
    cluster.api_server().apply_all(objects)?;
    let maps_before = map_memlock()?;
    let capacity = capacity_args(services);
    let extra = std::env::var("SLUICE_BENCH_SLUICED_ARGS").unwrap_or_default();
    let mut args: Vec<&str> = capacity.iter().map(String::as_str).collect();
    args.extend(extra.split_whitespace());

    let start = Instant::now();
    cluster.start_daemon_with_args(0, &args)?;
    let log_path = cluster.nodes[0].log.clone();
    let (programmed, listed) = wait_programmed(&cluster, services, start)?;
    let log = std::fs::read_to_string(&log_path)?;
    let first_apply = Duration::from_micros(
        log_fields(&log, "datapath programmed", "micros")
            .last()
            .copied()
            .unwrap_or_default(),
    );
    let applies_before = log_fields(&log, "datapath programmed", "micros").len();
    eprintln!(
        "  sluiced: {services} Services listed after {:.1} ms, programmed after {:.1} ms",
        ms(listed.unwrap_or(programmed)),
        ms(programmed)
    );

    let maps = PinnedMaps::open(&cluster.nodes[0].bpffs)?;
    // Spot checks that "programmed" means programmed.
    for i in [0, services / 2, services - 1] {
        let have = frontend_backends(&maps, vip(i), SERVICE_PORT)
            .with_context(|| format!("frontend of svc-{i} missing"))?;
        if have.len() != ENDPOINTS {
            bail!("svc-{i} has {} backends, not {ENDPOINTS}", have.len());
        }
    }
    // Let the daemon settle (its log line precedes the last file writes).
    std::thread::sleep(Duration::from_millis(500));

    let mut done: Vec<(usize, Ipv4Addr)> = Vec::new();
    let mut latencies = Vec::with_capacity(changes);
    for k in 0..changes {
        let i = changed_service(k, services);
        let addr = changed_endpoint(k);
        done.push((i, addr));
        let slice = slice_json(i, &endpoints_after(i, &done));
        let api = cluster.api_server();
        let t0 = Instant::now();
        api.apply(slice)?;
        wait_for(&cluster, &maps, i, t0, &mut latencies, |b| {
            b.is_some_and(|b| b.contains(&addr))
        })?;
        // Changes one at a time, as the figure is per change.
        std::thread::sleep(Duration::from_millis(30));
    }
    std::thread::sleep(Duration::from_millis(200));
    let log = std::fs::read_to_string(&log_path)?;
    let daemon_changes = log_fields(&log, "datapath programmed", "micros")
        .into_iter()
        .skip(applies_before)
        .map(Duration::from_micros)
        .collect();

    // Services added and deleted, one at a time, on the loaded node.
    let api = cluster.api_server();
    let mut service_adds = Vec::with_capacity(changes);
    let mut service_deletes = Vec::with_capacity(changes);
    for k in 0..changes {
        let i = services + k;
        let eps: Vec<Ipv4Addr> = (0..ENDPOINTS).map(|e| endpoint(i, e)).collect();
        api.apply(slice_json(i, &eps))?;
        std::thread::sleep(Duration::from_millis(20));
        let t0 = Instant::now();
        api.apply(service_json(i))?;
        wait_for(&cluster, &maps, i, t0, &mut service_adds, |b| {
            b.is_some_and(|b| b.len() == ENDPOINTS)
        })?;
        std::thread::sleep(Duration::from_millis(20));
        let t0 = Instant::now();
        api.delete(
            crate::apiserver::Kind::Service,
            "bench",
            &format!("svc-{i}"),
        )?;
        wait_for(&cluster, &maps, i, t0, &mut service_deletes, |b| {
            b.is_none()
        })?;
        std::thread::sleep(Duration::from_millis(20));
    }

    let pid = cluster.nodes[0]
        .daemon_pid()
        .context("sluiced is not running")?;
    let idle_cpu_percent = idle_cpu(pid)?;
    let (rss_peak_kib, rss_kib) = memory_kib(pid)?;
    let map_bytes = map_memlock()?
        .iter()
        .filter(|(id, _)| !maps_before.contains_key(id))
        .map(|(_, b)| b)
        .sum();
    Ok(SluicedFigures {
        services,
        start_to_listed: listed.unwrap_or(programmed),
        start_to_programmed: programmed,
        first_apply,
        changes: latencies,
        daemon_changes,
        service_adds,
        service_deletes,
        rss_peak_kib,
        rss_kib,
        map_bytes,
        idle_cpu_percent,
    })
}

/// Waits until the daemon logs `services` frontends programmed. Returns
/// the time since `start` and when its source had listed everything (the
/// API source logs it; the manifests source does not).
pub(crate) fn wait_programmed(
    cluster: &Cluster,
    services: usize,
    start: Instant,
) -> Result<(Duration, Option<Duration>)> {
    let mut listed = None;
    loop {
        let log = std::fs::read_to_string(&cluster.nodes[0].log).unwrap_or_default();
        if listed.is_none() && log.contains("listed; publishing") {
            listed = Some(start.elapsed());
        }
        if log_fields(&log, "datapath programmed", "frontends")
            .iter()
            .any(|&f| f as usize >= services)
        {
            return Ok((start.elapsed(), listed));
        }
        if start.elapsed() > Duration::from_secs(600) {
            bail!(
                "sluiced did not program {services} frontends within 10 minutes: {}",
                cluster.nodes[0].log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Polls the maps until Service `i`'s frontend backends satisfy `done`;
/// records the time since `t0`.
fn wait_for(
    cluster: &Cluster,
    maps: &PinnedMaps,
    i: usize,
    t0: Instant,
    out: &mut Vec<Duration>,
    done: impl Fn(Option<Vec<Ipv4Addr>>) -> bool,
) -> Result<()> {
    loop {
        if done(frontend_backends(maps, vip(i), SERVICE_PORT)) {
            out.push(t0.elapsed());
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(30) {
            bail!(
                "svc-{i} did not reach the expected state within 30 s: {}",
                cluster.nodes[0].log_tail()
            );
        }
        std::hint::spin_loop();
    }
}

/// The same cluster through the manifests source: one `kind: List` file
/// with every Service and slice, changes as files renamed into the
/// directory (the way `Cluster::apply` writes: temporary file, then
/// rename).
struct ManifestFigures {
    /// sluiced spawned -> every frontend programmed.
    cold_start: Duration,
    /// A slice file renamed in -> the new backend in the maps.
    changes: Vec<Duration>,
    /// A Service file renamed in (its slice already there) -> its frontend
    /// with every backend in the maps.
    service_adds: Vec<Duration>,
    /// Idle CPU, percent of one core (the source's own reads must not
    /// wake it).
    idle_cpu_percent: f64,
}

pub(crate) fn list_json(items: Vec<Value>) -> String {
    json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

/// A one-node cluster whose sluiced starts on a manifests directory holding
/// Services `range` x 10 endpoints, its maps sized for `capacity_for`
/// Services; with the time from the daemon's start to all of them
/// programmed.
pub(crate) fn cluster_with_services(
    range: std::ops::Range<usize>,
    capacity_for: usize,
    extra: &[&str],
) -> Result<(Cluster, Duration)> {
    let mut cluster = Cluster::new(1)?;
    let count = range.len();
    let items: Vec<Value> = range
        .flat_map(|i| {
            let eps: Vec<Ipv4Addr> = (0..ENDPOINTS).map(|e| endpoint(i, e)).collect();
            [service_json(i), slice_json(i, &eps)]
        })
        .collect();
    cluster.apply("00-cluster.json", &list_json(items))?;
    let capacity = capacity_args(capacity_for);
    let mut args: Vec<&str> = capacity.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    let start = Instant::now();
    cluster.start_daemon_with_args(0, &args)?;
    let (cold_start, _) = wait_programmed(&cluster, count, start)?;
    Ok((cluster, cold_start))
}

fn measure_manifests(services: usize, changes: usize) -> Result<ManifestFigures> {
    let (cluster, cold_start) = cluster_with_services(0..services, services, &[])?;
    let maps = PinnedMaps::open(&cluster.nodes[0].bpffs)?;
    std::thread::sleep(Duration::from_millis(500));

    let mut done: Vec<(usize, Ipv4Addr)> = Vec::new();
    let mut latencies = Vec::with_capacity(changes);
    for k in 0..changes {
        let i = changed_service(k, services);
        let addr = changed_endpoint(k);
        done.push((i, addr));
        // A later file wins for the same object.
        let yaml = slice_json(i, &endpoints_after(i, &done)).to_string();
        let t0 = Instant::now();
        cluster.apply(&format!("50-change-{i}.json"), &yaml)?;
        wait_for(&cluster, &maps, i, t0, &mut latencies, |b| {
            b.is_some_and(|b| b.contains(&addr))
        })?;
        std::thread::sleep(Duration::from_millis(30));
    }
    let mut service_adds = Vec::with_capacity(changes);
    for k in 0..changes {
        let i = services + k;
        let eps: Vec<Ipv4Addr> = (0..ENDPOINTS).map(|e| endpoint(i, e)).collect();
        cluster.apply(
            &format!("60-slice-{i}.json"),
            &slice_json(i, &eps).to_string(),
        )?;
        std::thread::sleep(Duration::from_millis(30));
        let t0 = Instant::now();
        cluster.apply(&format!("60-svc-{i}.json"), &service_json(i).to_string())?;
        wait_for(&cluster, &maps, i, t0, &mut service_adds, |b| {
            b.is_some_and(|b| b.len() == ENDPOINTS)
        })?;
        std::thread::sleep(Duration::from_millis(30));
    }
    let pid = cluster.nodes[0]
        .daemon_pid()
        .context("sluiced is not running")?;
    let idle_cpu_percent = idle_cpu(pid)?;
    Ok(ManifestFigures {
        cold_start,
        changes: latencies,
        service_adds,
        idle_cpu_percent,
    })
}

/// The user-space CT sweep over a full map: `entries` made-up TCP flows
/// in a map of `--ct-max` 1M (live ones, then half of them expired).
struct SweepFigures {
    entries: usize,
    /// A sweep that removes nothing (the walk alone), median of 3.
    walk: Duration,
    /// A sweep that removes half the entries.
    half: Duration,
    removed: usize,
}

fn measure_ct_sweep(entries: usize) -> Result<SweepFigures> {
    use sluice::conntrack::{Policy, collect, monotonic_secs};
    let mut cluster = Cluster::new(1)?;
    let capacity = entries.next_power_of_two().max(1 << 20).to_string();
    cluster.start_daemon_with_args(0, &["--ct-max", &capacity, "--ct-gc-interval", "86400"])?;
    let mut maps = PinnedMaps::open(&cluster.nodes[0].bpffs)?;
    let fill = |maps: &mut PinnedMaps, expired: bool| -> Result<()> {
        let now = monotonic_secs();
        for i in 0..entries as u32 {
            // Every other flow idle for a day: past every timeout (the CT
            // clock is seconds since boot; ages are wrapping differences).
            let seen = if expired && i % 2 == 0 {
                now.wrapping_sub(86_400)
            } else {
                now
            };
            let (key, entry) = made_up_tcp_flow(i, seen);
            maps.ct_tcp.insert(key, entry, 0)?;
        }
        Ok(())
    };
    fill(&mut maps, false)?;
    let mut walks = Vec::new();
    for _ in 0..3 {
        let t0 = Instant::now();
        collect(&mut maps, Policy::Expired)?;
        walks.push(t0.elapsed());
    }
    fill(&mut maps, true)?;
    let t0 = Instant::now();
    let swept = collect(&mut maps, Policy::Expired)?;
    let half = t0.elapsed();
    Ok(SweepFigures {
        entries,
        walk: percentile(&walks, 0.5),
        half,
        removed: swept.iter().map(|(_, s)| s.removed).sum(),
    })
}

// ---------------------------------------------------------------------------
// kube-proxy's iptables ruleset

/// kube-proxy's chain names: a prefix and 16 characters of base32 of a
/// hash of the service port (and endpoint). The hash here is not
/// SHA-256, only the shape matters to iptables.
fn chain_name(prefix: &str, parts: &[&str]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    // FNV-1a, twice with different seeds, for 80 bits.
    let mut h1: u64 = 0xcbf2_9ce4_8422_2325;
    let mut h2: u64 = 0x84222325_cbf29ce4;
    for p in parts {
        for b in p.bytes().chain([0u8]) {
            h1 = (h1 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
            h2 = (h2 ^ u64::from(b))
                .wrapping_mul(0x100_0000_01b3)
                .rotate_left(5);
        }
    }
    let mut out = String::from(prefix);
    for i in 0..16 {
        let bits = if i < 12 {
            h1 >> (i * 5)
        } else {
            h2 >> ((i - 12) * 5)
        };
        out.push(ALPHABET[(bits & 31) as usize] as char);
    }
    out
}

fn svc_port_name(i: usize) -> String {
    format!("bench/svc-{i}:http")
}

fn svc_chain(i: usize) -> String {
    chain_name("KUBE-SVC-", &[&svc_port_name(i), "tcp"])
}

fn sep_chain(i: usize, ep: Ipv4Addr) -> String {
    chain_name(
        "KUBE-SEP-",
        &[&svc_port_name(i), "tcp", &format!("{ep}:{TARGET_PORT}")],
    )
}

/// What kube-proxy writes for one service-port: chain lines and rules of
/// its KUBE-SVC chain and KUBE-SEP chains.
fn service_chains(i: usize, eps: &[Ipv4Addr], chains: &mut String, rules: &mut String) {
    let svc = svc_chain(i);
    let name = svc_port_name(i);
    let _ = writeln!(chains, ":{svc} - [0:0]");
    // Off-cluster sources are masqueraded (localDetector.IfNotLocal()).
    let _ = writeln!(
        rules,
        "-A {svc} -m comment --comment \"{name} cluster IP\" -m tcp -p tcp -d {} --dport {SERVICE_PORT} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ",
        vip(i)
    );
    let n = eps.len();
    for (k, ep) in eps.iter().enumerate() {
        let sep = sep_chain(i, *ep);
        if k + 1 < n {
            let _ = writeln!(
                rules,
                "-A {svc} -m statistic --mode random --probability {:.10} -j {sep}",
                1.0 / (n - k) as f64
            );
        } else {
            let _ = writeln!(rules, "-A {svc} -j {sep}");
        }
    }
    for ep in eps {
        let sep = sep_chain(i, *ep);
        let _ = writeln!(chains, ":{sep} - [0:0]");
        let _ = writeln!(rules, "-A {sep} -s {ep} -j KUBE-MARK-MASQ");
        let _ = writeln!(
            rules,
            "-A {sep} -m tcp -p tcp -j DNAT --to-destination {ep}:{TARGET_PORT}"
        );
    }
}

/// A sync's `iptables-restore` input: every service's chains on a full
/// sync, only `changed`'s on a partial one (KUBE-SERVICES is always
/// rewritten whole). `with_jumps` adds the jumps from the built-in chains
/// (for a restore that flushes the tables).
pub(crate) fn restore_input(
    services: usize,
    eps: &dyn Fn(usize) -> Vec<Ipv4Addr>,
    changed: Option<usize>,
    with_jumps: bool,
) -> String {
    let mut out = String::with_capacity(if changed.is_some() { 2 << 20 } else { 40 << 20 });
    out.push_str("*filter\n");
    for c in [
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FORWARD",
        "KUBE-NODEPORTS",
        "KUBE-PROXY-FIREWALL",
    ] {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    if with_jumps {
        out.push_str(FILTER_JUMPS);
    }
    out.push_str("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n");
    out.push_str("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n");
    out.push_str("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n");
    out.push_str("COMMIT\n*nat\n");
    let mut chains = String::new();
    let mut rules = String::new();
    for c in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        let _ = writeln!(chains, ":{c} - [0:0]");
    }
    if with_jumps {
        rules.push_str(NAT_JUMPS);
    }
    rules.push_str("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n");
    rules.push_str("-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n");
    rules.push_str("-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n");
    rules.push_str("-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n");
    for i in 0..services {
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -m comment --comment \"{} cluster IP\" -m tcp -p tcp -d {} --dport {SERVICE_PORT} -j {}",
            svc_port_name(i),
            vip(i),
            svc_chain(i)
        );
        if changed.is_none_or(|c| c == i) {
            service_chains(i, &eps(i), &mut chains, &mut rules);
        }
    }
    rules.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
    out.push_str(&chains);
    out.push_str(&rules);
    out.push_str("COMMIT\n");
    out
}

/// The jumps from the built-in chains, which kube-proxy ensures with
/// single `iptables` calls before its first restore.
const FILTER_JUMPS: &str = "-A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES
-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
";
const NAT_JUMPS: &str =
    "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
";

/// Runs `program args` with `input` on stdin inside `ns` (entered before
/// exec, so no `ip netns exec` in the timing); returns start-to-exit time.
pub(crate) fn restore(ns: &Path, program: &str, args: &[&str], input: &[u8]) -> Result<Duration> {
    let mut cmd = command_entering(ns, program)?;
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {program}"))?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let input = input.to_vec();
    // Written from a thread: a large input would fill the pipe while the
    // child is still starting.
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output()?;
    let took = start.elapsed();
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("stdin writer panicked"))??;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(took)
}

struct IptablesFigures {
    program: String,
    /// Whether the full syncs ran with `--noflush` as kube-proxy's do.
    full_noflush: bool,
    rules: usize,
    full_load: Duration,
    full_resync: Duration,
    partial: Vec<Duration>,
    partial_bytes: usize,
}

/// The full syncs and `changes` partial syncs through `program`.
/// `full_noflush`: full syncs with `--noflush` exactly as kube-proxy runs
/// them; otherwise as one flushing restore of the same rules (the same end
/// state in a namespace where nothing else uses these tables).
fn measure_iptables(
    program: &str,
    services: usize,
    changes: usize,
    full_noflush: bool,
) -> Result<IptablesFigures> {
    let ns = NetNs::new("kproxy")?;
    let path = ns.path();
    let noflush = ["-w", "5", "--noflush", "--counters"];
    let flush = ["-w", "5"];
    let full_args: &[&str] = if full_noflush { &noflush } else { &flush };
    let initial = |i: usize| (0..ENDPOINTS).map(|e| endpoint(i, e)).collect::<Vec<_>>();
    let full = restore_input(services, &initial, None, true);
    let rules = full.lines().filter(|l| l.starts_with("-A ")).count();
    let full_load = restore(&path, program, full_args, full.as_bytes())?;
    eprintln!(
        "  {program}: full sync of {rules} rules: {:.1} ms",
        ms(full_load)
    );
    // A resync writes the same rules again; with --noflush the built-in
    // chains keep their jumps, as kube-proxy leaves them.
    let resync = restore_input(services, &initial, None, !full_noflush);
    let full_resync = restore(&path, program, full_args, resync.as_bytes())?;
    eprintln!("  {program}: full resync: {:.1} ms", ms(full_resync));
    let mut done: Vec<(usize, Ipv4Addr)> = Vec::new();
    let mut partial = Vec::with_capacity(changes);
    let mut partial_bytes = 0;
    for k in 0..changes {
        let i = changed_service(k, services);
        done.push((i, changed_endpoint(k)));
        let eps = |s: usize| endpoints_after(s, &done);
        let input = restore_input(services, &eps, Some(i), false);
        partial_bytes = input.len();
        let took = restore(&path, program, &noflush, input.as_bytes())?;
        if k == 0 {
            eprintln!("  {program}: first partial sync: {:.1} ms", ms(took));
        }
        partial.push(took);
    }
    // The last change must be in the kernel's ruleset, the jumps intact.
    let (i, addr) = *done.last().context("no change made")?;
    let save = ns.output(&program.replace("-restore", "-save"), &["-t", "nat"])?;
    let sep = sep_chain(i, addr);
    if !save.contains(&format!("-A {sep} ")) || !save.contains(&format!("{addr}:{TARGET_PORT}")) {
        bail!("{program}: the last partial sync is not in the ruleset ({sep} missing)");
    }
    if !save.contains(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    ) {
        bail!("{program}: the jump from PREROUTING is gone after the syncs");
    }
    Ok(IptablesFigures {
        program: program.to_string(),
        full_noflush,
        rules,
        full_load,
        full_resync,
        partial,
        partial_bytes,
    })
}

/// kube-proxy's own full sync (`--noflush`) through iptables-nft at a
/// small size: on this iptables it grows with the square of the chain
/// count, which is why the full figure at 10k uses a flushing restore.
fn nft_noflush_probe(services: usize) -> Result<Duration> {
    let ns = NetNs::new("kproxy-probe")?;
    let initial = |i: usize| (0..ENDPOINTS).map(|e| endpoint(i, e)).collect::<Vec<_>>();
    let full = restore_input(services, &initial, None, true);
    restore(
        &ns.path(),
        "iptables-restore",
        &["-w", "5", "--noflush", "--counters"],
        full.as_bytes(),
    )
}

/// One figure's line: `label`, then p50/p99 of `samples`, then `note`.
fn print_quantiles(label: &str, samples: &[Duration], note: &str) {
    println!(
        "{label:<48}p50 {:>7.2} ms   p99 {:>7.2} ms{note}",
        ms(percentile(samples, 0.50)),
        ms(percentile(samples, 0.99)),
    );
}

/// A peer's partial-sync line, with the size of what it wrote.
fn print_partial(partial: &[Duration], size: &str) {
    print_quantiles(
        "  partial sync, one endpoint changed:",
        partial,
        &format!("   (n={}, {size})", partial.len()),
    );
}

fn program_exists(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

pub fn run() -> Result<()> {
    sluice_testkit::privileges::require_root();
    let services = env_usize("SLUICE_BENCH_SERVICES", SERVICES)?;
    let changes = env_usize("SLUICE_BENCH_CHANGES", CHANGES)?;
    let only = std::env::var("SLUICE_BENCH_ONLY").unwrap_or_default();
    println!(
        "== control plane: {services} Services x {ENDPOINTS} endpoints, {changes} single-endpoint changes"
    );
    // `sluiced`, `iptables` or `nft` runs that side alone.
    if !["", "sluiced", "iptables", "nft"].contains(&only.as_str()) {
        bail!("SLUICE_BENCH_ONLY={only:?}: sluiced, iptables or nft");
    }
    let run_sluiced = only.is_empty() || only == "sluiced";
    let run_iptables = only.is_empty() || only == "iptables";
    let run_nft = only.is_empty() || only == "nft";
    let s = if run_sluiced {
        Some(measure_sluiced(services, changes)?)
    } else {
        None
    };
    let m = if !run_sluiced || std::env::var_os("SLUICE_BENCH_NO_MANIFESTS").is_some() {
        None
    } else {
        Some(measure_manifests(services, changes)?)
    };
    let sweep = if !run_sluiced {
        None
    } else {
        Some(measure_ct_sweep(env_usize(
            "SLUICE_BENCH_CT_ENTRIES",
            1_000_000,
        )?)?)
    };
    let mut ipt = Vec::new();
    let mut nft_figures = None;
    let mut probe = None;
    if run_iptables {
        // iptables-nft's --noflush full sync is quadratic in chains here
        // (see nft_noflush_probe): past 1000 Services it would take many
        // minutes.
        for (program, full_noflush) in [
            ("iptables-restore", services <= PROBE_SERVICES),
            ("iptables-legacy-restore", true),
        ] {
            if !program_exists(program) {
                println!("  ({program} not installed: skipped)");
                continue;
            }
            match measure_iptables(program, services, changes, full_noflush) {
                Ok(f) => ipt.push(f),
                // The legacy backend needs the ip_tables module; say so.
                Err(e) if program != "iptables-restore" => println!("  ({program}: {e:#})"),
                Err(e) => return Err(e),
            }
        }
        if services > PROBE_SERVICES && program_exists("iptables-restore") {
            let took = nft_noflush_probe(PROBE_SERVICES)?;
            eprintln!(
                "  iptables-restore --noflush, full sync of {PROBE_SERVICES} Services: {:.1} ms",
                ms(took)
            );
            probe = Some(took);
        }
    }
    if run_nft {
        if program_exists("nft") {
            nft_figures = Some(nft::measure(services, changes)?);
        } else {
            println!("  (nft not installed: skipped)");
        }
    }

    if let Some(s) = &s {
        println!();
        println!("sluiced (kube-rs watch of the test API server -> BPF maps)");
        println!(
            "  start -> all {} Services listed:            {:>9.1} ms",
            s.services,
            ms(s.start_to_listed)
        );
        println!(
            "  start -> fully programmed:                    {:>9.1} ms   (first apply, publish -> maps: {:.1} ms)",
            ms(s.start_to_programmed),
            ms(s.first_apply)
        );
        println!(
            "  cold start, complete view -> all programmed:  {:>9.1} ms",
            ms(s.start_to_programmed.saturating_sub(s.start_to_listed))
        );
        print_quantiles(
            "  EndpointSlice change committed -> in maps:",
            &s.changes,
            &format!("   (n={})", s.changes.len()),
        );
        if !s.daemon_changes.is_empty() {
            print_quantiles(
                "    daemon's log, change arrival -> apply done:",
                &s.daemon_changes,
                "",
            );
        }
        print_quantiles(
            "  Service added (slice present) -> in maps:",
            &s.service_adds,
            &format!("   (n={})", s.service_adds.len()),
        );
        print_quantiles(
            "  Service deleted -> gone from maps:",
            &s.service_deletes,
            "",
        );
        println!(
            "  sluiced RSS after sync: peak (VmHWM) {:.1} MiB, now (VmRSS) {:.1} MiB",
            s.rss_peak_kib as f64 / 1024.0,
            s.rss_kib as f64 / 1024.0
        );
        println!(
            "  kernel memory of sluiced's BPF maps (memlock): {:.1} MiB",
            s.map_bytes as f64 / (1024.0 * 1024.0)
        );
        println!(
            "  sluiced CPU while nothing changes (32 s): {:.2}% of one core",
            s.idle_cpu_percent
        );
    }
    if let Some(m) = &m {
        println!();
        println!("sluiced (manifests directory: one List file, changes renamed in)");
        println!(
            "  start -> fully programmed:                    {:>9.1} ms",
            ms(m.cold_start)
        );
        print_quantiles(
            "  EndpointSlice file renamed in -> in maps:",
            &m.changes,
            &format!("   (n={})", m.changes.len()),
        );
        print_quantiles("  Service file renamed in -> in maps:", &m.service_adds, "");
        println!(
            "  sluiced CPU while nothing changes (32 s): {:.2}% of one core",
            m.idle_cpu_percent
        );
    }
    if let Some(w) = &sweep {
        println!();
        println!(
            "conntrack sweep (user space, every --ct-gc-interval), TCP map of {} live entries",
            w.entries
        );
        println!(
            "  walk, nothing expired (median of 3):          {:>9.1} ms   ({:.0} ns per entry)",
            ms(w.walk),
            w.walk.as_nanos() as f64 / w.entries as f64
        );
        println!(
            "  half expired, {} removed:               {:>9.1} ms",
            w.removed,
            ms(w.half)
        );
    }
    for f in &ipt {
        println!();
        println!(
            "kube-proxy iptables ruleset via {} ({} rules)",
            f.program, f.rules
        );
        println!(
            "  full sync, empty node {:<22}  {:>9.1} ms",
            if f.full_noflush {
                "(--noflush):"
            } else {
                "(flushing restore):"
            },
            ms(f.full_load)
        );
        println!(
            "  full resync over it:                          {:>9.1} ms",
            ms(f.full_resync)
        );
        print_partial(&f.partial, &format!("{} KiB input", f.partial_bytes / 1024));
    }
    if let Some(f) = &nft_figures {
        println!();
        println!("kube-proxy nftables ruleset via nft -f ({} rules)", f.rules);
        println!(
            "  full sync, empty node:                        {:>9.1} ms",
            ms(f.full_load)
        );
        print_partial(&f.partial, &format!("{} B transaction", f.partial_bytes));
    }
    // Each peer: its name, full sync and partial syncs.
    let mut peers: Vec<(String, Duration, &[Duration])> = ipt
        .iter()
        .map(|f| (f.program.clone(), f.full_load, f.partial.as_slice()))
        .collect();
    if let Some(f) = &nft_figures {
        peers.push(("nft (nftables mode)".into(), f.full_load, &f.partial));
    }
    println!();
    println!("| figure | sluiced | {} |", {
        let names: Vec<&str> = peers.iter().map(|p| p.0.as_str()).collect();
        names.join(" | ")
    });
    println!("|---|---|{}", "---|".repeat(peers.len()));
    type Peer<'a> = (String, Duration, &'a [Duration]);
    let row = |name: &str, ours: Option<Duration>, theirs: &dyn Fn(&Peer) -> Duration| {
        let mut line = match ours {
            Some(d) => format!("| {name} | {:.1} ms |", ms(d)),
            None => format!("| {name} | - |"),
        };
        for f in &peers {
            let t = theirs(f);
            let _ = match ours {
                Some(d) => write!(
                    line,
                    " {:.1} ms ({:.1}x sluiced) |",
                    ms(t),
                    ms(t) / ms(d).max(1e-9)
                ),
                None => write!(line, " {:.1} ms |", ms(t)),
            };
        }
        println!("{line}");
    };
    row(
        &format!("{services} Services programmed from scratch"),
        s.as_ref().map(|s| s.start_to_programmed),
        &|f| f.1,
    );
    row(
        "one endpoint change, p50",
        s.as_ref().map(|s| percentile(&s.changes, 0.50)),
        &|f| percentile(f.2, 0.50),
    );
    row(
        "one endpoint change, p99",
        s.as_ref().map(|s| percentile(&s.changes, 0.99)),
        &|f| percentile(f.2, 0.99),
    );
    println!(
        "(sluiced: whole path, API server commit -> watch -> model -> maps; iptables and nft: the restore process alone, kube-proxy's rule generation and sync interval not counted; iptables partial syncs with --noflush as kube-proxy runs them)"
    );
    if let Some(p) = probe {
        println!(
            "(iptables-nft full syncs ran as one flushing restore: with kube-proxy's --noflush they grow with the square of the chain count here; {PROBE_SERVICES} Services alone took {:.1} s)",
            p.as_secs_f64()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rulesets_follow_kube_proxys_layout() {
        let eps = |i: usize| (0..ENDPOINTS).map(|e| endpoint(i, e)).collect::<Vec<_>>();
        let full = restore_input(3, &eps, None, true);
        let svc = svc_chain(1);
        assert_eq!(svc.len(), "KUBE-SVC-".len() + 16);
        assert!(full.contains(&format!(":{svc} - [0:0]")));
        assert!(full.contains(&format!(
            "-A KUBE-SERVICES -m comment --comment \"bench/svc-1:http cluster IP\" -m tcp -p tcp -d 10.96.0.2 --dport 80 -j {svc}"
        )));
        // The probability ladder: 1/10, 1/9, ... 1/2, then the last
        // endpoint unconditionally.
        assert!(full.contains("--probability 0.1000000000 -j"));
        assert!(full.contains("--probability 0.5000000000 -j"));
        assert_eq!(full.matches(&format!("-A {svc} -m statistic")).count(), 9);
        assert_eq!(full.matches("-j DNAT --to-destination").count(), 30);
        let partial = restore_input(3, &eps, Some(2), false);
        assert_eq!(partial.matches("-j DNAT --to-destination").count(), 10);
        assert_eq!(partial.matches("-A KUBE-SERVICES ").count(), 4);
        assert!(!partial.contains(&format!(":{svc} ")));
    }

    #[test]
    fn changes_replace_the_oldest_endpoint() {
        let changes = [(5, changed_endpoint(0)), (5, changed_endpoint(1))];
        let eps = endpoints_after(5, &changes);
        assert_eq!(eps[0], changed_endpoint(0));
        assert_eq!(eps[1], changed_endpoint(1));
        assert_eq!(eps[2], endpoint(5, 2));
        assert_eq!(endpoints_after(4, &changes)[0], endpoint(4, 0));
        assert_ne!(sep_chain(5, eps[0]), sep_chain(5, endpoint(5, 0)));
    }
}
