//! `cargo xtask bench e2e`: new connections and requests per second through
//! a ClusterIP, end to end, against a plain bridge and kube-proxy's two
//! layouts, in one run.
//!
//! Modes, each on simulated nodes in namespaces of their own:
//! - ceiling: two pods on a plain Linux bridge (Debian's `bridge` +
//!   `host-local` plugins), no BPF, no rules, client to server pod;
//! - Sluice pod->pod: sluice-cni pods, sluiced running, client to server pod;
//! - Sluice ClusterIP: the same node, client to the probe Service;
//! - Sluice ClusterIP, socket LB: the same, the client's sockets made in
//!   the cluster's cgroup where sluiced (`--socket-lb all`) attached its
//!   socket programs: translated at connect(), no per-packet NAT; and its
//!   control, pod->pod from the same cgroup (the programs run and find no
//!   Service), so the two differ only in the translation;
//! - kube-proxy iptables: the bridge node with br_netfilter's
//!   bridge-nf-call-iptables on and the ruleset kube-proxy's iptables mode
//!   writes for the N Services (`iptables-restore`);
//! - kube-proxy nftables: the same with its nftables transaction (`nft -f`).
//!
//! N Services: the probe (its one endpoint is the server pod) and N-1
//! others x 10 endpoints. Client and server are one thread each, pinned to
//! CPU 0; sluiced is pinned to CPU 1. For every N the modes are built
//! side by side and measured interleaved (the order rotates per
//! repetition): connection rate (connect, 1 byte each way, close) and
//! request rate (64 bytes each way on one connection), medians of the
//! repetitions with their spread and p50/p99 latency. Then, with the
//! kernel's BPF run-time statistics on (an extra pass, so they cost the
//! figures above nothing), Sluice's program time per connection and per
//! request. Each mode's path is checked: the server counts the
//! connections; Sluice's frontend counter and direct-delivery counter grow
//! by the connections made; the socket mode's connect() translations do
//! and the TC path made no new flow for it (the TC mode made no socket
//! translation); the iptables DNAT rule's counter does; the nftables
//! node's conntrack holds entries. Last, the connect4 program's time per
//! call (run-time statistics; BPF_PROG_TEST_RUN is tried and its answer
//! printed).
//!
//! `SLUICE_BENCH_N=1,1000` picks the sizes (default 1, 1000, 10000 and
//! 100000, the last for Sluice and the ceiling only: kube-proxy's layouts
//! take minutes to load there); `SLUICE_BENCH_REPS` (default 3) and
//! `SLUICE_BENCH_CELL_MS` (default 3000) the repetitions and cell length.
//! The plot goes to `docs/bench-e2e.svg` (`SLUICE_BENCH_PLOT` overrides).

mod load;
mod plot;
mod worlds;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use proxy_common::{names, reason};
use sluice::datapath::PinnedMaps;

use self::{
    load::{Cell, Server, connection_rate, request_rate, tune_client},
    worlds::{BridgedNode, SluiceNode, probe_endpoints, probe_target},
};
use crate::{
    bench::{
        control_plane::{nft::full_ruleset_with, restore, restore_input},
        pin_process_to_cpu,
    },
    fixture::frontend_id,
};

const LOAD_CPU: usize = 0;
const DAEMON_CPU: usize = 1;
/// Above this, kube-proxy's layouts are not loaded (minutes per load).
const PEER_MAX: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Ceiling,
    SluicePod,
    SluicePodInCgroup,
    SluiceVip,
    SluiceSockVip,
    Iptables,
    Nft,
}

impl Mode {
    const ALL: [Mode; 7] = [
        Mode::Ceiling,
        Mode::SluicePod,
        Mode::SluicePodInCgroup,
        Mode::SluiceVip,
        Mode::SluiceSockVip,
        Mode::Iptables,
        Mode::Nft,
    ];

    fn label(self) -> &'static str {
        match self {
            Mode::Ceiling => "ceiling: plain bridge, no BPF",
            Mode::SluicePod => "Sluice pod->pod",
            Mode::SluicePodInCgroup => "Sluice pod->pod, in the cgroup",
            Mode::SluiceVip => "Sluice ClusterIP",
            Mode::SluiceSockVip => "Sluice ClusterIP, socket LB",
            Mode::Iptables => "kube-proxy iptables layout",
            Mode::Nft => "kube-proxy nftables layout",
        }
    }
}

struct Knobs {
    sizes: Vec<usize>,
    reps: usize,
    cell: Duration,
}

fn knobs() -> Result<Knobs> {
    let sizes = match std::env::var("SLUICE_BENCH_N") {
        Err(_) => vec![1, 1_000, 10_000, 100_000],
        Ok(v) => v
            .split(',')
            .map(|s| s.trim().parse::<usize>())
            .collect::<Result<Vec<_>, _>>()
            .ok()
            .filter(|v| !v.is_empty() && v.iter().all(|&n| n > 0))
            .with_context(|| format!("SLUICE_BENCH_N={v:?}: comma-separated positive sizes"))?,
    };
    let num = |name: &str, default: u64| -> Result<u64> {
        match std::env::var(name) {
            Err(_) => Ok(default),
            Ok(v) => v
                .trim()
                .parse()
                .ok()
                .filter(|&n| n > 0)
                .with_context(|| format!("{name}={v:?}: a positive number")),
        }
    };
    Ok(Knobs {
        sizes,
        reps: num("SLUICE_BENCH_REPS", 3)? as usize,
        cell: Duration::from_millis(num("SLUICE_BENCH_CELL_MS", 3_000)?),
    })
}

/// Every cell of one mode at one N.
#[derive(Default)]
struct Runs {
    conn: Vec<Cell>,
    req: Vec<Cell>,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The cell with the median rate (its latencies are reported with it).
fn median_cell(cells: &[Cell]) -> &Cell {
    let mut idx: Vec<usize> = (0..cells.len()).collect();
    idx.sort_by(|&a, &b| cells[a].per_sec.total_cmp(&cells[b].per_sec));
    &cells[idx[idx.len() / 2]]
}

fn spread(cells: &[Cell]) -> (f64, f64) {
    let rates = cells.iter().map(|c| c.per_sec);
    (
        rates.clone().fold(f64::INFINITY, f64::min),
        rates.fold(0.0, f64::max),
    )
}

/// The worlds of one N and what each mode dials.
struct Worlds {
    ceiling: BridgedNode,
    sluice: SluiceNode,
    iptables: Option<BridgedNode>,
    nft: Option<BridgedNode>,
    // Servers stop before their namespaces go.
    servers: Vec<Server>,
}

impl Worlds {
    fn build(n: usize) -> Result<Self> {
        let t0 = Instant::now();
        let ceiling = BridgedNode::new("ceil", false)?;
        let sluice = SluiceNode::new(n)?;
        println!(
            "  sluiced: {n} Services programmed {:.0} ms after start",
            sluice.cold_start.as_secs_f64() * 1e3
        );
        let (iptables, nft) = if n <= PEER_MAX {
            (Some(iptables_node(n)?), Some(nft_node(n)?))
        } else {
            (None, None)
        };
        if let Some(pid) = sluice.daemon_pid() {
            pin_process_to_cpu(pid, DAEMON_CPU);
        }
        let mut servers = Vec::new();
        for ns in [&ceiling.server, &sluice.server.ns]
            .into_iter()
            .chain(iptables.iter().map(|b| &b.server))
            .chain(nft.iter().map(|b| &b.server))
        {
            servers.push(Server::start(ns, LOAD_CPU)?);
        }
        for ns in [&ceiling.client, &sluice.client.ns]
            .into_iter()
            .chain(iptables.iter().map(|b| &b.client))
            .chain(nft.iter().map(|b| &b.client))
        {
            tune_client(ns)?;
        }
        println!("  set up in {:.1} s", t0.elapsed().as_secs_f64());
        Ok(Self {
            ceiling,
            sluice,
            iptables,
            nft,
            servers,
        })
    }

    fn modes(&self) -> Vec<Mode> {
        Mode::ALL
            .into_iter()
            .filter(|m| match m {
                Mode::Iptables => self.iptables.is_some(),
                Mode::Nft => self.nft.is_some(),
                _ => true,
            })
            .collect()
    }

    /// The client namespace and the target of `mode`.
    fn dial(&self, mode: Mode) -> (&sluice_testkit::netns::NetNs, SocketAddr) {
        let pod = |b: &BridgedNode| SocketAddr::from((b.server_ip, load::PORT));
        match mode {
            Mode::Ceiling => (&self.ceiling.client, pod(&self.ceiling)),
            Mode::SluicePod | Mode::SluicePodInCgroup => {
                (&self.sluice.client.ns, self.sluice.server_target())
            }
            Mode::SluiceVip | Mode::SluiceSockVip => (&self.sluice.client.ns, probe_target()),
            Mode::Iptables => (
                &self.iptables.as_ref().expect("iptables node").client,
                probe_target(),
            ),
            Mode::Nft => (&self.nft.as_ref().expect("nft node").client, probe_target()),
        }
    }

    /// Runs a mode's client: for the socket mode with this process in the
    /// cluster's cgroup, so its sockets are translated at connect(); the
    /// same for the pod->pod control, so the two differ only in the
    /// translation.
    fn client_side<T>(&self, mode: Mode, f: impl FnOnce() -> Result<T>) -> Result<T> {
        if matches!(mode, Mode::SluiceSockVip | Mode::SluicePodInCgroup) {
            self.sluice.cluster.in_cgroup(f)?
        } else {
            f()
        }
    }

    fn server(&self, mode: Mode) -> &Server {
        let i = match mode {
            Mode::Ceiling => 0,
            Mode::SluicePod | Mode::SluicePodInCgroup | Mode::SluiceVip | Mode::SluiceSockVip => 1,
            Mode::Iptables => 2,
            Mode::Nft => 2 + usize::from(self.iptables.is_some()),
        };
        &self.servers[i]
    }
}

fn iptables_node(n: usize) -> Result<BridgedNode> {
    let node = BridgedNode::new("ipt", true)?;
    let eps = probe_endpoints(node.server_ip);
    let input = restore_input(n, &eps, None, true);
    let took = restore(
        &node.node.path(),
        "iptables-restore",
        &["-w", "5"],
        input.as_bytes(),
    )?;
    node.short_time_wait()?;
    println!(
        "  iptables-restore ({}): {} rules in {:.1} s",
        node.node
            .output("iptables-restore", &["--version"])
            .unwrap_or_default()
            .trim(),
        input.lines().filter(|l| l.starts_with("-A ")).count(),
        took.as_secs_f64()
    );
    Ok(node)
}

fn nft_node(n: usize) -> Result<BridgedNode> {
    let node = BridgedNode::new("nft", true)?;
    let eps = probe_endpoints(node.server_ip);
    let input = full_ruleset_with(n, &eps);
    let took = restore(&node.node.path(), "nft", &["-f", "-"], input.as_bytes())?;
    node.short_time_wait()?;
    println!(
        "  nft -f: {} rules in {:.1} s",
        input.lines().filter(|l| l.starts_with("add rule ")).count(),
        took.as_secs_f64()
    );
    Ok(node)
}

/// Packets the iptables node's DNAT rule to the server pod translated.
fn dnat_packets(node: &BridgedNode) -> Result<u64> {
    let save = node.node.output("iptables-save", &["-c", "-t", "nat"])?;
    let target = format!("--to-destination {}:{}", node.server_ip, load::PORT);
    let line = save
        .lines()
        .find(|l| l.contains(&target))
        .context("no DNAT rule to the server pod in the iptables node")?;
    // "[packets:bytes] -A KUBE-SEP-... -j DNAT ..."
    line.trim_start_matches('[')
        .split(':')
        .next()
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no counter on {line:?}"))
}

/// What a Sluice mode's counters say, for the path check.
struct SluiceCounters {
    probe_new: u64,
    direct: u64,
    tc_new: u64,
    sock_translated: u64,
}

fn sluice_counters(maps: &PinnedMaps, probe_id: u32) -> Result<SluiceCounters> {
    Ok(SluiceCounters {
        probe_new: maps.service_total(probe_id)?.new_conns,
        direct: maps.reason_total(reason::FWD_LOCAL_POD)?.packets,
        tc_new: maps.reason_total(reason::FWD_NEW)?.packets,
        sock_translated: maps.reason_total(reason::SOCK_TRANSLATED)?.packets,
    })
}

/// Runs every mode interleaved; checks each path while at it.
fn measure(w: &Worlds, k: &Knobs) -> Result<BTreeMap<Mode, Runs>> {
    let maps = PinnedMaps::open(w.sluice.bpffs())?;
    let probe_id = frontend_id(&maps, probe_target().ip().to_string().parse()?, 80)
        .context("probe frontend missing")?;
    let modes = w.modes();
    let mut runs: BTreeMap<Mode, Runs> = BTreeMap::new();
    // One connection each first: ARP, caches, conntrack modules.
    for &m in &modes {
        let (ns, target) = w.dial(m);
        w.client_side(m, || {
            connection_rate(ns, target, Duration::from_millis(200), LOAD_CPU)
        })
        .with_context(|| format!("warm-up of {}", m.label()))?;
    }
    for rep in 0..k.reps {
        for i in 0..modes.len() {
            let m = modes[(i + rep) % modes.len()];
            let (ns, target) = w.dial(m);
            let accepted = w.server(m).accepted();
            let counters = sluice_counters(&maps, probe_id)?;
            let dnat = match (&w.iptables, m) {
                (Some(node), Mode::Iptables) => dnat_packets(node)?,
                _ => 0,
            };
            let conn = w
                .client_side(m, || connection_rate(ns, target, k.cell, LOAD_CPU))
                .with_context(|| format!("{}: connection rate", m.label()))?;
            check_path(w, m, &maps, probe_id, &conn, accepted, &counters, dnat)?;
            let req = w
                .client_side(m, || request_rate(ns, target, k.cell, LOAD_CPU))
                .with_context(|| format!("{}: request rate", m.label()))?;
            let r = runs.entry(m).or_default();
            r.conn.push(conn);
            r.req.push(req);
        }
    }
    Ok(runs)
}

/// Fails the bench when a mode's traffic did not take the path it claims.
#[allow(clippy::too_many_arguments)]
fn check_path(
    w: &Worlds,
    m: Mode,
    maps: &PinnedMaps,
    probe_id: u32,
    conn: &Cell,
    accepted_before: u64,
    before: &SluiceCounters,
    dnat_before: u64,
) -> Result<()> {
    let server = w.server(m);
    let accepted = server.accepted() - accepted_before;
    if accepted < conn.count {
        bail!(
            "{}: the server accepted {accepted} of {} connections",
            m.label(),
            conn.count
        );
    }
    let after = sluice_counters(maps, probe_id)?;
    match m {
        Mode::SluiceVip
            if after.probe_new - before.probe_new < conn.count
                || after.sock_translated != before.sock_translated =>
        {
            bail!(
                "Sluice ClusterIP: the probe frontend counted {} new connections of {}, the socket programs {}",
                after.probe_new - before.probe_new,
                conn.count,
                after.sock_translated - before.sock_translated
            )
        }
        Mode::SluiceSockVip
            if after.sock_translated - before.sock_translated < conn.count
                || after.tc_new != before.tc_new =>
        {
            bail!(
                "Sluice socket LB: {} connect() translated for {} connections, {} by TC",
                after.sock_translated - before.sock_translated,
                conn.count,
                after.tc_new - before.tc_new
            )
        }
        Mode::SluicePod | Mode::SluicePodInCgroup
            if after.direct - before.direct < conn.count * 2 =>
        {
            bail!(
                "{}: {} packets delivered directly for {} connections",
                m.label(),
                after.direct - before.direct,
                conn.count
            )
        }
        Mode::Iptables => {
            let node = w.iptables.as_ref().expect("iptables node");
            let dnat = dnat_packets(node)? - dnat_before;
            if dnat < conn.count {
                bail!(
                    "kube-proxy iptables: the DNAT rule translated {dnat} packets for {} connections",
                    conn.count
                );
            }
        }
        Mode::Nft => {
            let node = w.nft.as_ref().expect("nft node");
            let tracked = node.conntrack_count()?;
            let peer = server.last_peer().map(|p| p.ip());
            if tracked == 0 || peer != Some(std::net::IpAddr::V4(node.client_ip)) {
                bail!(
                    "kube-proxy nftables: {tracked} conntrack entries, server saw {peer:?} (client {})",
                    node.client_ip
                );
            }
        }
        _ => {}
    }
    Ok(())
}

/// Sluice's program time per connection and per request: `[from_pod,
/// to_pod]` over every pod veth, with the kernel's run-time stats on.
struct ProgramTime {
    mode: Mode,
    per_conn: [f64; 2],
    per_req: [f64; 2],
}

fn program_time(w: &Worlds, k: &Knobs) -> Result<Vec<ProgramTime>> {
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("enabling BPF run-time statistics")?;
    let pins = [
        w.sluice.program_pin(names::PIN_PROG_FROM_POD),
        w.sluice.program_pin(names::PIN_PROG_TO_POD),
    ];
    let times = || -> Result<[Duration; 2]> {
        let mut t = [Duration::ZERO; 2];
        for (slot, p) in t.iter_mut().zip(&pins) {
            *slot = aya::programs::ProgramInfo::from_pin(p)
                .with_context(|| format!("program info of {}", p.display()))?
                .run_time();
        }
        Ok(t)
    };
    let per = |before: [Duration; 2], after: [Duration; 2], count: u64| {
        [0, 1].map(|i| (after[i] - before[i]).as_nanos() as f64 / count as f64)
    };
    let mut out = Vec::new();
    for mode in [Mode::SluicePod, Mode::SluiceVip, Mode::SluiceSockVip] {
        let (ns, target) = w.dial(mode);
        let t0 = times()?;
        let c = w.client_side(mode, || connection_rate(ns, target, k.cell, LOAD_CPU))?;
        let per_conn = per(t0, times()?, c.count);
        let t0 = times()?;
        let r = w.client_side(mode, || request_rate(ns, target, k.cell, LOAD_CPU))?;
        let per_req = per(t0, times()?, r.count);
        out.push(ProgramTime {
            mode,
            per_conn,
            per_req,
        });
    }
    Ok(out)
}

/// The connect4 program's own time per call, from the kernel's run-time
/// statistics over one connection-rate cell of the socket mode, and what
/// BPF_PROG_TEST_RUN says when asked to run it.
fn connect4_cost(w: &Worlds, k: &Knobs) -> Result<(f64, u64, String)> {
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("enabling BPF run-time statistics")?;
    let find = || -> Result<aya::programs::ProgramInfo> {
        aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .find(|p| p.name_as_str() == Some(names::PROG_SOCK_CONNECT4))
            .context("no sock_connect4 program loaded")
    };
    let before = find()?;
    let (ns, target) = w.dial(Mode::SluiceSockVip);
    w.client_side(Mode::SluiceSockVip, || {
        connection_rate(ns, target, k.cell, LOAD_CPU)
    })?;
    let after = find()?;
    let calls = after.run_count() - before.run_count();
    let ns_per_call =
        (after.run_time() - before.run_time()).as_nanos() as f64 / calls.max(1) as f64;
    let fd = after.fd().context("sock_connect4 fd")?;
    use std::os::fd::AsFd;
    let ctx = [0u8; 72];
    let mut out = [0u8; 72];
    let test_run = match sluice::datapath::raw::test_run_ctx(fd.as_fd(), &ctx, &mut out, 1000) {
        Ok((_, ns)) => format!("BPF_PROG_TEST_RUN: {ns} ns per run"),
        Err(e) => format!("BPF_PROG_TEST_RUN refuses cgroup/connect4 on this kernel ({e})"),
    };
    Ok((ns_per_call, calls, test_run))
}

fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn report(runs: &BTreeMap<Mode, Runs>) {
    let ceiling = &runs[&Mode::Ceiling];
    let (c0, r0) = (
        median(&ceiling.conn.iter().map(|c| c.per_sec).collect::<Vec<_>>()),
        median(&ceiling.req.iter().map(|c| c.per_sec).collect::<Vec<_>>()),
    );
    println!();
    println!(
        "  {:<30} {:>18} {:>7} {:>15}   {:>18} {:>7} {:>13}",
        "mode",
        "conn/s (min-max)",
        "x ceil",
        "p50/p99 us",
        "req/s (min-max)",
        "x ceil",
        "p50/p99 us"
    );
    for (m, r) in runs {
        let conn = median(&r.conn.iter().map(|c| c.per_sec).collect::<Vec<_>>());
        let req = median(&r.req.iter().map(|c| c.per_sec).collect::<Vec<_>>());
        let (cl, ch) = spread(&r.conn);
        let (rl, rh) = spread(&r.req);
        let (mc, mr) = (median_cell(&r.conn), median_cell(&r.req));
        println!(
            "  {:<30} {:>6.0} ({:>4.0}-{:<4.0}) {:>7.3} {:>7.0}/{:<7.0}   {:>6.0} ({:>5.0}-{:<5.0}) {:>7.3} {:>6.1}/{:<6.1}",
            m.label(),
            conn,
            cl,
            ch,
            conn / c0,
            us(mc.p50),
            us(mc.p99),
            req,
            rl,
            rh,
            req / r0,
            us(mr.p50),
            us(mr.p99)
        );
    }
    let rate = |m: Mode, f: fn(&Runs) -> &Vec<Cell>| {
        runs.get(&m)
            .map(|r| median(&f(r).iter().map(|c| c.per_sec).collect::<Vec<_>>()))
    };
    for direct in [Mode::SluicePod, Mode::SluicePodInCgroup] {
        if let (Some(sc), Some(dc), Some(sr), Some(dr)) = (
            rate(Mode::SluiceSockVip, |r| &r.conn),
            rate(direct, |r| &r.conn),
            rate(Mode::SluiceSockVip, |r| &r.req),
            rate(direct, |r| &r.req),
        ) {
            println!(
                "  Sluice ClusterIP with socket LB vs {}: {:.2}x conn/s, {:.2}x req/s (target >= 0.98x)",
                direct.label(),
                sc / dc,
                sr / dr
            );
        }
    }
    for peer in [Mode::Iptables, Mode::Nft] {
        if let (Some(sc), Some(pc), Some(sr), Some(pr)) = (
            rate(Mode::SluiceVip, |r| &r.conn),
            rate(peer, |r| &r.conn),
            rate(Mode::SluiceVip, |r| &r.req),
            rate(peer, |r| &r.req),
        ) {
            println!(
                "  Sluice ClusterIP vs {}: {:.2}x conn/s, {:.2}x req/s",
                peer.label(),
                sc / pc,
                sr / pr
            );
        }
    }
}

fn plot_path() -> PathBuf {
    std::env::var_os("SLUICE_BENCH_PLOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/bench-e2e.svg"))
}

fn write_plot(all: &BTreeMap<usize, BTreeMap<Mode, Runs>>) -> Result<PathBuf> {
    let series = |f: fn(&Runs) -> &Vec<Cell>| -> Vec<plot::Series> {
        Mode::ALL
            .iter()
            .map(|&m| plot::Series {
                label: m.label().to_string(),
                points: all
                    .iter()
                    .filter_map(|(n, runs)| {
                        let r = runs.get(&m)?;
                        Some((
                            *n,
                            median(&f(r).iter().map(|c| c.per_sec).collect::<Vec<_>>()),
                        ))
                    })
                    .collect(),
            })
            .collect()
    };
    let svg = plot::svg(&[
        plot::Panel {
            title: "New TCP connections per second".into(),
            unit: "connections/s".into(),
            series: series(|r| &r.conn),
        },
        plot::Panel {
            title: "Requests per second (one connection)".into(),
            unit: "requests/s".into(),
            series: series(|r| &r.req),
        },
    ]);
    let path = plot_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

pub fn run() -> Result<()> {
    sluice_testkit::privileges::require_root();
    let k = knobs()?;
    for tool in ["iptables-restore", "iptables-save", "nft"] {
        if which(tool).is_none() {
            bail!("{tool} is missing: run `cargo xtask setup`");
        }
    }
    println!(
        "e2e: TCP through each path, {} x {} ms per cell, client+server on CPU {LOAD_CPU}, sluiced on CPU {DAEMON_CPU}",
        k.reps,
        k.cell.as_millis()
    );
    let mut all = BTreeMap::new();
    for &n in &k.sizes {
        println!("\nN = {n} Services (the probe + {} x 10 endpoints)", n - 1);
        let worlds = Worlds::build(n)?;
        let runs = measure(&worlds, &k)?;
        report(&runs);
        for t in program_time(&worlds, &k)? {
            println!(
                "  {}: programs {:.0} ns per connection (from_pod {:.0}, to_pod {:.0}), {:.0} ns per request ({:.0} + {:.0}), both pods",
                t.mode.label(),
                t.per_conn[0] + t.per_conn[1],
                t.per_conn[0],
                t.per_conn[1],
                t.per_req[0] + t.per_req[1],
                t.per_req[0],
                t.per_req[1]
            );
        }
        let (ns_per_call, calls, test_run) = connect4_cost(&worlds, &k)?;
        println!(
            "  sock_connect4: {ns_per_call:.0} ns per connect() over {calls} calls (kernel run-time stats); {test_run}"
        );
        if let Some(rss) = worlds.sluice.daemon_pid().and_then(rss_mib) {
            println!("  sluiced RSS: {rss:.1} MiB");
        }
        println!(
            "  paths checked: every mode's connections reached the server; Sluice's frontend and direct-delivery counters, the iptables DNAT counter and the nftables node's conntrack agree"
        );
        all.insert(n, runs);
    }
    let path = write_plot(&all)?;
    println!("\nplot: {}", path.display());
    Ok(())
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(tool))
            .find(|f| f.exists())
    })
}
