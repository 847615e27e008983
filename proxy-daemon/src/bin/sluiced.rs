//! sluiced: Sluice's node daemon.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use ipnetwork::Ipv4Network;
use proxy_common::{ct, service};
use sluice::{
    conntrack::{self, Policy},
    daemon::{
        DaemonConfig, DaemonError, Reconciler, install_binary, lock_state_dir, pod_mtu,
        start_datapath, write_cni_config,
    },
    datapath::Capacities,
    model::node_info,
    overlay,
    socket_lb::{self, Scope},
    source::{Update, kube as kube_source, manifests},
    telemetry::{
        CtSweepGauge, Programmed, Telemetry,
        server::{self as telemetry_server, Endpoints},
    },
    writer::ApplyReport,
};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

/// Sluice's node daemon: programs the eBPF service datapath of this node from
/// Services, EndpointSlices and Nodes, and writes the node's CNI
/// configuration. Stopping it (SIGTERM) leaves the pinned maps and attached
/// programs in place: traffic keeps flowing, and a restart picks up where it
/// left off.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Name of this node: its Node object gives the pod CIDR and address.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,

    /// Read Services, EndpointSlices, Endpoints and Nodes from this directory
    /// of manifests (YAML or JSON, one or many objects per file, `kind: List`
    /// as `kubectl get -o yaml` prints it). Changes are applied as they happen.
    /// Without --manifests or --kubeconfig, the API server is reached with the
    /// pod's service account (in-cluster configuration).
    #[arg(long, conflicts_with = "kubeconfig")]
    manifests: Option<PathBuf>,

    /// Watch Services, EndpointSlices and Nodes on the API server named by
    /// this kubeconfig's current context.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,

    /// A BPF filesystem (or a directory on one); pins go to <bpffs>/sluice/.
    #[arg(long, default_value = "/sys/fs/bpf")]
    bpffs: PathBuf,

    /// State shared with sluice-cni: IPAM, the daemon lock, frontend names.
    #[arg(long, default_value = "/var/lib/sluice")]
    state_dir: PathBuf,

    /// Where to write 10-sluice.conflist for the container runtime.
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,

    /// The conflist's cniVersion: what runtimes on libcni before 1.2 use
    /// (containerd 1.6/1.7, podman 4, CRI-O before 1.31; they cannot read
    /// a 1.1.0 result). Its cniVersions list adds every newer version up
    /// to 1.1.0, of which newer runtimes take the highest (1.1.0 brings
    /// STATUS and GC).
    #[arg(long, default_value = "1.0.0", value_parser = parse_cni_version)]
    cni_version: sluice_net::cni::version::CniVersion,

    /// The cluster's pod CIDR (all nodes' pod CIDRs), e.g. 10.244.0.0/16.
    #[arg(long, value_parser = parse_cluster_cidr)]
    cluster_cidr: Option<Ipv4Network>,

    /// Seconds between sweeps of expired connection-tracking entries.
    #[arg(long, default_value_t = 30)]
    ct_gc_interval: u64,

    /// Period of the full resync: the maps are read back and every entry
    /// that differs from the desired state (changed or removed behind the
    /// daemon's back) is rewritten and counted; on an untouched node it
    /// writes nothing. Changes themselves are applied as they come. A
    /// number with a unit: 90s, 30m, 1h.
    #[arg(long, default_value = "1h", value_parser = parse_period)]
    sync_period: Duration,

    /// Capacity of TCP connection tracking, in entries (a connection uses
    /// two). Nothing is ever evicted from it: when it is full, new TCP
    /// connections are dropped (reason drop-ct-full) until the sweep frees
    /// room, and established connections keep working.
    #[arg(long, default_value_t = ct::DEFAULT_MAX_CT_TCP_ENTRIES)]
    ct_max: u32,

    /// Capacity of UDP and ICMP connection tracking, in entries (a flow uses
    /// two). An LRU map: when it is full the least recently used non-TCP
    /// flows are evicted, never a TCP connection.
    #[arg(long, default_value_t = ct::DEFAULT_MAX_CT_ANY_ENTRIES)]
    ct_any_max: u32,

    /// Capacity of the service map: frontends plus one entry per backend slot.
    #[arg(long, default_value_t = service::DEFAULT_MAX_SERVICE_ENTRIES)]
    max_service_entries: u32,

    /// Capacity of the backend map.
    #[arg(long, default_value_t = service::DEFAULT_MAX_BACKENDS)]
    max_backends: u32,

    /// Most frontends (service id space, also per-service counters).
    #[arg(long, default_value_t = service::DEFAULT_MAX_SERVICE_IDS)]
    max_service_ids: u32,

    /// Source ports masquerade may use, MIN-MAX. Keep it outside the
    /// node's ephemeral range (net.ipv4.ip_local_port_range).
    #[arg(long, default_value = "61000-65535", value_parser = parse_port_range)]
    snat_ports: (u16, u16),

    /// How external frontends (NodePort, LoadBalancer, externalIPs) choose
    /// a backend for a new connection, unless the Service says otherwise
    /// with the annotation `sluice.dev/lb-algorithm: random|maglev`. Maglev
    /// sends a flow to the same backend through every node, which matters
    /// when its packets may arrive through different nodes, and moves few
    /// flows when backends change, for a table per frontend (see
    /// --maglev-table-size). ClusterIPs are balanced at random unless the
    /// annotation asks for Maglev: a ClusterIP flow is always balanced on
    /// the client's node, where connection tracking pins it.
    #[arg(long, value_enum, default_value_t = LbAlgorithm::Maglev)]
    lb_algorithm: LbAlgorithm,

    /// Entries of each Maglev table (a prime; 0 turns Maglev off). Memory:
    /// 4 bytes per entry per frontend using Maglev with 2+ backends.
    #[arg(long, default_value_t = service::DEFAULT_MAGLEV_TABLE_SIZE, value_parser = parse_maglev_size)]
    maglev_table_size: u32,

    /// Most frontends using Maglev at once (their tables' map capacity).
    #[arg(long, default_value_t = Capacities::default().maglev_tables)]
    max_maglev_tables: u32,

    /// Pod network between nodes: a VXLAN overlay, or none (another
    /// plugin or the underlay routes pod CIDRs).
    #[arg(long, value_enum, default_value_t = OverlayMode::Vxlan)]
    overlay: OverlayMode,

    /// VXLAN network identifier of the overlay (the same on every node).
    #[arg(long, default_value_t = overlay::DEFAULT_VNI)]
    vxlan_vni: u32,

    /// UDP port of the overlay's tunnels (the same on every node).
    #[arg(long, default_value_t = overlay::DEFAULT_PORT)]
    vxlan_port: u16,

    /// Where to serve /metrics (Prometheus), /healthz, /readyz and /livez,
    /// or `off`. kube-proxy's metrics address by default.
    #[arg(long, default_value = "127.0.0.1:10249", value_parser = parse_listen)]
    metrics_addr: Listen,

    /// Where to serve only /healthz, /readyz and /livez, or `off`.
    /// kube-proxy's healthz address by default, so probes and cloud load
    /// balancers that check kube-proxy keep working.
    #[arg(long, default_value = "0.0.0.0:10256", value_parser = parse_listen)]
    healthz_addr: Listen,

    /// Install mode, the DaemonSet's init step: copy sluice-cni into this
    /// directory, wait until this node's Node object has a pod CIDR, write
    /// the CNI configuration to --cni-conf-dir, and exit. Nothing is loaded.
    #[arg(long, value_name = "BIN_DIR")]
    install_cni_to: Option<PathBuf>,

    /// The sluice-cni binary install mode copies (default: next to sluiced).
    #[arg(long, requires = "install_cni_to")]
    cni_binary: Option<PathBuf>,

    /// How long install mode waits for the Node's pod CIDR, seconds.
    #[arg(long, default_value_t = 600, requires = "install_cni_to")]
    install_wait: u64,

    /// Socket load balancing: at connect() and sendmsg(), cgroup socket
    /// programs translate Service addresses for `host`, the sockets of this
    /// daemon's network namespace (the node's processes, hostNetwork pods),
    /// or `all` sockets of the cgroup, pods included (their Service
    /// connections then need no per-packet NAT); `off` detaches them.
    #[arg(long, value_enum, default_value_t = Scope::Host)]
    socket_lb: Scope,

    /// The cgroup v2 directory the socket programs attach to. Default: the
    /// host's cgroup2 mount from /proc/mounts (/sys/fs/cgroup on unified
    /// hosts, /sys/fs/cgroup/unified on hybrid ones), or one mounted at
    /// /run/sluice/cgroupv2 when there is none.
    #[arg(long, value_name = "PATH")]
    cgroup_root: Option<PathBuf>,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// A listening address, or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Listen(Option<SocketAddr>);

fn parse_listen(s: &str) -> Result<Listen, String> {
    if s == "off" {
        return Ok(Listen(None));
    }
    s.parse()
        .map(|a| Listen(Some(a)))
        .map_err(|_| format!("{s:?} is neither ADDRESS:PORT nor off"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LbAlgorithm {
    Random,
    Maglev,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum OverlayMode {
    Vxlan,
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Applies one view of the cluster. Only a node that cannot work as
/// configured (its overlay port taken) is an error; the datapath keeps
/// forwarding with what it has either way.
async fn apply(reconciler: &mut Reconciler, telemetry: &Telemetry, update: &Update) -> Result<()> {
    telemetry.change_seen(update.seen);
    match reconciler.reconcile(update.state.clone()).await {
        Ok(r) => {
            let writer = reconciler.writer_ref();
            let mut skipped: std::collections::BTreeMap<&'static str, usize> = reconciler
                .skipped
                .iter()
                .map(|(kind, n)| (kind.label(), *n))
                .collect();
            if update.problems > 0 {
                skipped.insert("manifest", update.problems);
            }
            let skipped_total: usize = skipped.values().sum();
            telemetry.programmed(
                update.seen,
                r.written_at.unwrap_or_else(Instant::now),
                &Programmed {
                    frontends: r.frontends,
                    backends: r.backends,
                    service_entries: writer.service_entries(),
                    skipped_objects: skipped,
                    partial: !r.failures.is_empty(),
                },
            );
            follow_names(reconciler, telemetry, &r);
            close_sockets_of_gone_backends(reconciler, &r).await;
            info!(
                frontends = r.frontends,
                backends = r.backends,
                map_writes = r.ops,
                flushed_udp_flows = r.flushed_flows,
                skipped = skipped_total,
                micros = update.seen.elapsed().as_micros() as u64,
                "datapath programmed"
            )
        }
        Err(e @ DaemonError::Overlay(_)) => return Err(e.into()),
        Err(e) => {
            telemetry.failed();
            error!(error = %e, "programming the datapath failed")
        }
    }
    Ok(())
}

/// UDP sockets stay connected to the backend socket load balancing gave
/// them; when it leaves, they are destroyed so their owners reconnect.
async fn close_sockets_of_gone_backends(reconciler: &mut Reconciler, report: &ApplyReport) {
    let scope = reconciler.scope();
    if scope == Scope::Off || report.removed_udp_backends.is_empty() {
        return;
    }
    let gone = report.removed_udp_backends.clone();
    let cookies = socket_lb::sockets_of(reconciler.writer().maps(), &gone);
    if cookies.is_empty() {
        return;
    }
    match tokio::task::spawn_blocking(move || {
        socket_lb::destroy_connected_udp(scope, &gone, &cookies)
    })
    .await
    {
        Ok((destroyed, failed)) => {
            if destroyed > 0 {
                info!(sockets = destroyed, backends = ?report.removed_udp_backends, "UDP sockets connected to removed backends destroyed");
            }
            for f in failed {
                warn!(failure = %f, "searching for sockets of removed backends failed");
            }
        }
        Err(e) => warn!(error = %e, "destroying sockets of removed backends failed"),
    }
}

/// Starts the telemetry listeners; a port that cannot be bound is logged
/// and left closed (the datapath matters more than its metrics).
async fn spawn_telemetry(
    args: &Args,
    cfg: &DaemonConfig,
    telemetry: &Telemetry,
) -> Vec<tokio::task::JoinHandle<()>> {
    let maps = match sluice::datapath::PinnedMaps::open(&cfg.bpffs) {
        Ok(m) => Arc::new(Mutex::new(m)),
        Err(e) => {
            warn!(error = %e, "telemetry cannot read the datapath maps; endpoints off");
            return Vec::new();
        }
    };
    let mut tasks = Vec::new();
    for (listen, endpoints) in [
        (args.metrics_addr, Endpoints::All),
        (args.healthz_addr, Endpoints::Health),
    ] {
        let Listen(Some(addr)) = listen else {
            continue;
        };
        match telemetry_server::spawn(
            addr,
            endpoints,
            telemetry.clone(),
            maps.clone(),
            cfg.capacities,
        )
        .await
        {
            Ok(task) => tasks.push(task),
            Err(e) => warn!(address = %addr, error = %e, "cannot listen for telemetry"),
        }
    }
    tasks
}

async fn run(args: Args) -> Result<()> {
    let cfg = daemon_config(&args);
    if let Some(bin_dir) = &args.install_cni_to {
        return install_cni(&args, &cfg, bin_dir).await;
    }
    run_daemon(args, cfg).await
}

fn daemon_config(args: &Args) -> DaemonConfig {
    DaemonConfig {
        node_name: args.node_name.clone(),
        bpffs: args.bpffs.clone(),
        state_dir: args.state_dir.clone(),
        cni_conf_dir: args.cni_conf_dir.clone(),
        cluster_cidr: args.cluster_cidr,
        capacities: Capacities {
            service_entries: args.max_service_entries,
            backends: args.max_backends,
            service_ids: args.max_service_ids,
            ct_tcp_entries: args.ct_max,
            ct_any_entries: args.ct_any_max,
            maglev_tables: args.max_maglev_tables,
            ..Capacities::default()
        },
        snat_ports: args.snat_ports,
        maglev_size: args.maglev_table_size,
        maglev_by_default: args.lb_algorithm == LbAlgorithm::Maglev,
        overlay: (args.overlay == OverlayMode::Vxlan).then_some((args.vxlan_vni, args.vxlan_port)),
        cni_version: args.cni_version,
        socket_lb: args.socket_lb,
        cgroup_root: args.cgroup_root.clone(),
    }
}

/// The init step: the plugin binary, then the configuration that tells the
/// runtime to use it (written last: its appearance makes the node Ready).
async fn install_cni(args: &Args, cfg: &DaemonConfig, bin_dir: &Path) -> Result<()> {
    let binary = match &args.cni_binary {
        Some(b) => b.clone(),
        None => std::env::current_exe()
            .context("locating sluiced")?
            .with_file_name("sluice-cni"),
    };
    let dest = install_binary(&binary, bin_dir)
        .with_context(|| format!("installing {}", binary.display()))?;
    info!(path = %dest.display(), "CNI plugin installed");
    let mut source = spawn_source(args).await?;
    let deadline = tokio::time::sleep(Duration::from_secs(args.install_wait));
    tokio::pin!(deadline);
    let mut waiting_logged = false;
    loop {
        tokio::select! {
            changed = source.changed() => {
                if changed.is_err() {
                    anyhow::bail!("the object source stopped");
                }
                let update = source.borrow_and_update().clone();
                let Some(node) = update.as_ref().and_then(|u| u.state.nodes.get(&args.node_name).cloned()) else {
                    continue;
                };
                match node_info(&node) {
                    Ok(info) => if let Some(cidr) = info.pod_cidr {
                        let addr = overlay::internal_ipv4(&node).unwrap_or(info.internal_ip);
                        let mtu = pod_mtu(addr, cfg.overlay.is_some());
                        write_cni_config(cfg, cidr, mtu)?;
                        return Ok(());
                    },
                    Err(e) => warn!(node = %args.node_name, reason = %e, "own Node object unusable"),
                }
                if !waiting_logged {
                    info!(node = %args.node_name, "waiting for the Node's pod CIDR");
                    waiting_logged = true;
                }
            }
            _ = &mut deadline => anyhow::bail!(
                "Node {} got no usable pod CIDR within {} s",
                args.node_name,
                args.install_wait
            ),
        }
    }
}

async fn run_daemon(args: Args, cfg: DaemonConfig) -> Result<()> {
    let _lock = lock_state_dir(&args.state_dir)?;
    let attached = start_datapath(&cfg).context("starting the datapath")?;
    info!(pods = attached, bpffs = %args.bpffs.display(), "datapath loaded; existing pods re-attached");
    let telemetry = Telemetry::new();
    let _telemetry_tasks = spawn_telemetry(&args, &cfg, &telemetry).await;
    let mut reconciler = Reconciler::new(cfg)?;
    reconciler.set_telemetry(telemetry.clone());
    let mut source = spawn_source(&args).await?;

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut gc = tokio::time::interval(Duration::from_secs(args.ct_gc_interval.max(1)));
    // The TCP map's fill, from its counters (a few bytes per poll): a map
    // near full, or refusing connections, is swept at once.
    let mut pressure = tokio::time::interval(Duration::from_secs(1));
    let mut ct_pressure = CtPressure::new(args.ct_max);
    // Setting the VXLAN device down drops its routes and neighbours; this
    // puts them back even when no object changes.
    let mut repair = tokio::time::interval(Duration::from_secs(10));
    let mut resync = tokio::time::interval_at(
        tokio::time::Instant::now() + args.sync_period,
        args.sync_period,
    );
    loop {
        tokio::select! {
            changed = source.changed() => {
                if changed.is_err() {
                    anyhow::bail!("the object source stopped");
                }
                let update = source.borrow_and_update().clone();
                if let Some(update) = update {
                    apply(&mut reconciler, &telemetry, &update).await?;
                }
            }
            _ = repair.tick() => reconciler.repair_overlay().await,
            _ = resync.tick() => full_resync(&mut reconciler, &telemetry),
            _ = gc.tick() => sweep_conntrack(&mut reconciler, &telemetry, Policy::Expired),
            _ = pressure.tick() => {
                if ct_pressure.check(reconciler.writer().maps()) {
                    sweep_conntrack(&mut reconciler, &telemetry, Policy::Pressure);
                }
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    info!("stopping; pinned maps and attached programs stay in place");
    Ok(())
}

/// Gives the metrics the frontends' names when an apply or a resync
/// changed them (the writer reports a change once).
fn follow_names(reconciler: &Reconciler, telemetry: &Telemetry, report: &ApplyReport) {
    if report.names_changed {
        telemetry.set_frontend_names(reconciler.writer_ref().names());
    }
}

/// The periodic full resync, reported (a repair means something outside
/// sluiced changed the maps).
fn full_resync(reconciler: &mut Reconciler, telemetry: &Telemetry) {
    let started = Instant::now();
    match reconciler.resync() {
        Ok(r) => {
            telemetry.resynced(r.ops);
            follow_names(reconciler, telemetry, &r);
            if r.ops > 0 {
                warn!(
                    repaired = r.ops,
                    failures = r.failures.len(),
                    "full resync rewrote map entries that differed from the desired state"
                );
            } else {
                info!(
                    micros = started.elapsed().as_micros() as u64,
                    "full resync: maps agree with the desired state"
                );
            }
        }
        Err(e) => warn!(error = %e, "full resync failed; retried at the next period"),
    }
}

/// One conntrack sweep of both maps, reported.
fn sweep_conntrack(reconciler: &mut Reconciler, telemetry: &Telemetry, policy: Policy) {
    let maps = reconciler.writer().maps();
    match conntrack::collect(maps, policy) {
        Ok(sweeps) => {
            for (class, sweep) in sweeps {
                let evicted = conntrack::class_stats(maps, class)
                    .map_or(0, |s| s.evicted(sweep.remaining as u64));
                telemetry.set_ct_sweep(
                    class.map_name(),
                    CtSweepGauge {
                        entries: sweep.remaining as u64,
                        evicted,
                    },
                );
                if sweep.removed > 0 {
                    info!(
                        map = class.map_name(),
                        entries = sweep.removed,
                        remaining = sweep.remaining,
                        ?policy,
                        "connection-tracking entries removed"
                    );
                }
            }
        }
        Err(e) => warn!(error = %e, "conntrack sweep failed"),
    }
}

/// Decides when the TCP map needs a pressure sweep: at once when it refused
/// an entry since the last check; while it is 90% full, every 10 s (a
/// sweep walks the whole map).
struct CtPressure {
    capacity: u32,
    full_seen: Option<u64>,
    last_sweep: Option<Instant>,
}

impl CtPressure {
    const THRESHOLD: f64 = 0.9;
    const NEAR_FULL_EVERY: Duration = Duration::from_secs(10);

    fn new(capacity: u32) -> Self {
        Self {
            capacity,
            full_seen: None,
            last_sweep: None,
        }
    }

    fn check(&mut self, maps: &sluice::datapath::PinnedMaps) -> bool {
        let Ok((fill, stats)) = conntrack::tcp_fill(maps, self.capacity) else {
            return false;
        };
        let refused = self.full_seen.is_some_and(|n| stats.full > n);
        self.full_seen = Some(stats.full);
        if refused {
            warn!(
                map = proxy_common::names::MAP_CT_TCP,
                fill = format!("{:.0}%", fill * 100.0),
                "TCP connection tracking is full: new connections are dropped until entries expire"
            );
        }
        let due = self
            .last_sweep
            .is_none_or(|t| t.elapsed() >= Self::NEAR_FULL_EVERY);
        let sweep = refused || (fill >= Self::THRESHOLD && due);
        if sweep {
            self.last_sweep = Some(Instant::now());
        }
        sweep
    }
}

fn parse_period(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a period (a number with a unit: 90s, 30m, 1h)"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(format!("{s:?}: the unit must be s, m or h")),
    };
    if secs == 0 {
        return Err(format!("{s:?}: the period must be at least 1s"));
    }
    Ok(Duration::from_secs(secs))
}

fn parse_maglev_size(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{s}: {e}"))?;
    if n != 0 && !sluice::writer::maglev::is_prime(n) {
        return Err(format!(
            "{n} is not prime (Maglev needs a prime table size)"
        ));
    }
    Ok(n)
}

/// The one object source the arguments choose (clap rejects both at once).
async fn spawn_source(args: &Args) -> Result<tokio::sync::watch::Receiver<Option<Update>>> {
    let cfg = kube_source::KubeSourceConfig::default();
    Ok(match (&args.manifests, &args.kubeconfig) {
        (Some(dir), _) => {
            info!(dir = %dir.display(), "source: manifests directory");
            manifests::spawn(dir.clone())?
        }
        (None, Some(path)) => {
            let client = kube_source::client_from_kubeconfig(path).await?;
            info!(kubeconfig = %path.display(), "source: Kubernetes API");
            kube_source::spawn(client, cfg)
        }
        (None, None) => {
            let client = kube_source::client_in_cluster()?;
            info!("source: Kubernetes API (in-cluster configuration)");
            kube_source::spawn(client, cfg)
        }
    })
}

fn parse_cluster_cidr(s: &str) -> Result<Ipv4Network, String> {
    let (addr, _) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not a CIDR (address/prefix)"))?;
    let net: Ipv4Network = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if net.network().to_string() != addr {
        return Err(format!(
            "{s:?} has host bits set (did you mean {}/{}?)",
            net.network(),
            net.prefix()
        ));
    }
    Ok(net)
}

fn parse_cni_version(s: &str) -> Result<sluice_net::cni::version::CniVersion, String> {
    sluice_net::cni::version::CniVersion::parse(s).ok_or_else(|| {
        let known: Vec<&str> = sluice_net::cni::version::SUPPORTED
            .iter()
            .map(|v| v.as_str())
            .collect();
        format!(
            "{s:?} is not a CNI version sluice-cni speaks ({})",
            known.join(", ")
        )
    })
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s.split_once('-').ok_or("expected MIN-MAX")?;
    let (a, b): (u16, u16) = (
        a.trim().parse().map_err(|e| format!("{a}: {e}"))?,
        b.trim().parse().map_err(|e| format!("{b}: {e}"))?,
    );
    if a == 0 || a > b {
        return Err(format!("{a}-{b} is not a range of ports"));
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_default_masquerade_range_is_the_datapath_s() {
        let cmd = Args::command();
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_id() == "snat_ports")
            .expect("--snat-ports");
        let default = arg.get_default_values()[0].to_str().unwrap();
        assert_eq!(
            parse_port_range(default).unwrap(),
            (
                proxy_common::config::DEFAULT_SNAT_PORT_MIN,
                proxy_common::config::DEFAULT_SNAT_PORT_MAX
            )
        );
    }
}
