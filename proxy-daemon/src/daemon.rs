//! The node daemon's pieces between the sources and the datapath: taking
//! the node's lock, loading and publishing the programs, re-attaching them
//! to the pods that already exist, and turning each new view of the cluster
//! into map writes, node configuration and the CNI configuration.

use std::{
    collections::BTreeSet,
    fs::File,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use aya::programs::TcAttachType;
use ipnetwork::Ipv4Network;
use proxy_common::{NodeConfig, codec::nbo, config::NODE_CONFIG_VERSION, names};
use tracing::{debug, info, warn};

use crate::{
    datapath::{
        Capacities, DatapathError, Loader, PinnedMaps,
        migrate::{self, Legacy},
    },
    health_check_ports::{HealthServers, health_checks},
    model::{ClusterState, IncrementalModel, NodeContext, NodeInfo, Skip, SkipKind, node_info},
    overlay::{self, Overlay, OverlayConfig, OverlayError},
    socket_lb::{self, CgroupError, Scope, SocketLbMeta},
    telemetry::Telemetry,
    writer::{
        ApplyReport, PlanOptions, Touch, Writer,
        meta::{self, NodeMeta, OverlayMeta},
    },
};

/// The CNI configuration file sluiced writes for runtimes.
pub const CONFLIST_NAME: &str = "10-sluice.conflist";

#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub node_name: String,
    pub bpffs: PathBuf,
    pub state_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub cluster_cidr: Option<Ipv4Network>,
    pub capacities: Capacities,
    /// Masquerade source ports (inclusive).
    pub snat_ports: (u16, u16),
    /// Maglev table size (a prime); 0 turns Maglev off.
    pub maglev_size: u32,
    /// Services without the lb-algorithm annotation use Maglev.
    pub maglev_by_default: bool,
    /// VXLAN overlay (VNI, UDP port); `None` leaves cross-node routing to
    /// someone else.
    pub overlay: Option<(u32, u16)>,
    /// The conflist's `cniVersion` (its `cniVersions` add every newer one).
    pub cni_version: sluice_net::cni::version::CniVersion,
    /// Socket load balancing: which sockets, and the cgroup to attach to
    /// (`None`: the host's cgroup2 mount).
    pub socket_lb: Scope,
    pub cgroup_root: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("another sluiced holds {path}: one daemon per node (and per --state-dir)")]
    AlreadyRunning { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("overlay: {0}")]
    Overlay(#[from] OverlayError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DaemonError + '_ {
    move |source| DaemonError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Takes the node's daemon lock (held until the returned file is dropped,
/// i.e. for the daemon's life). The CNI plugin's STATUS probes this lock to
/// tell whether the node's datapath has a running daemon.
pub fn lock_state_dir(state_dir: &Path) -> Result<File, DaemonError> {
    std::fs::create_dir_all(state_dir).map_err(io(state_dir))?;
    let path = sluice_net::liveness::daemon_lock_path(state_dir);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(DaemonError::AlreadyRunning { path });
    }
    Ok(file)
}

/// Loads the programs against the pinned maps (created on first start,
/// reused after), publishes them for the CNI plugin, and swaps them into
/// every interface that carries them: the pods', the uplink and the
/// overlay device. Replacing a cls_bpf filter in place is atomic, so a
/// restart or an upgrade never drops a packet of a live flow; connection
/// tracking of an earlier layout is migrated around the swap (see
/// [`crate::datapath::migrate`]). Returns the number of pods re-attached.
pub fn start_datapath(cfg: &DaemonConfig) -> Result<usize, DaemonError> {
    let mut progs = Loader::new(&cfg.bpffs, cfg.capacities).load()?;
    let mut maps = PinnedMaps::open(&cfg.bpffs)?;
    let mut keep: Vec<&str> = Vec::new();
    let legacy = match migrate::find_legacy_ct(&cfg.bpffs) {
        Ok(Legacy::None) => None,
        Ok(Legacy::Found(old)) => match old.copy_into(&mut maps) {
            Ok(c) => {
                info!(
                    live = c.live,
                    copied = c.created,
                    expired = c.expired,
                    "connection tracking of the previous layout copied"
                );
                Some(old)
            }
            Err(e) => {
                warn!(error = %e, "migrating connection tracking failed; the old map is kept for the next start");
                keep.push(names::LEGACY_MAP_CT_V1);
                None
            }
        },
        Ok(Legacy::Unknown(detail)) => {
            warn!(%detail, "connection-tracking pin of an unknown layout left alone");
            keep.push(names::LEGACY_MAP_CT_V1);
            None
        }
        Err(e) => {
            warn!(error = %e, "cannot read the previous connection-tracking map; left alone");
            keep.push(names::LEGACY_MAP_CT_V1);
            None
        }
    };
    progs.pin()?;
    start_socket_lb(cfg, &mut progs, &mut maps)?;
    let attached = reattach(&cfg.bpffs);
    // The loaded programs may be dropped now: pins and filters hold them.
    drop(progs);
    if let Some(old) = legacy {
        // What the old programs created or refreshed until they were replaced.
        match old.copy_into(&mut maps) {
            Ok(c) => info!(
                live = c.live,
                copied = c.created,
                "connection tracking migrated to the new layout"
            ),
            Err(e) => {
                warn!(error = %e, "second migration pass failed; the old map is kept");
                keep.push(names::LEGACY_MAP_CT_V1);
            }
        }
    }
    match crate::datapath::retire_stale_pins(&cfg.bpffs, &keep) {
        Ok(r) => {
            if !r.removed.is_empty() {
                info!(pins = ?r.removed, "unpinned maps of an earlier release");
            }
            if !r.unknown.is_empty() {
                warn!(pins = ?r.unknown, "pinned maps of a layout this release does not know left alone (another release's; remove them by hand once it is gone)");
            }
        }
        Err(e) => warn!(error = %e, "could not unpin the maps of an earlier release"),
    }
    Ok(attached)
}

/// Sets socket load balancing up as configured: the scope written before
/// the programs attach (so they act on the right sockets from their first
/// call), or, when off, written off before an earlier daemon's programs
/// are detached.
fn start_socket_lb(
    cfg: &DaemonConfig,
    progs: &mut crate::datapath::LoadedPrograms,
    maps: &mut PinnedMaps,
) -> Result<(), DaemonError> {
    let netns_cookie =
        sluice_net::sockets::netns_cookie().map_err(io(Path::new("SO_NETNS_COOKIE")))?;
    let write_config = |maps: &mut PinnedMaps, scope: Scope| {
        maps.sock_config
            .set(0, scope.config(netns_cookie), 0)
            .map_err(|source| DatapathError::Map {
                name: names::MAP_SOCK_CONFIG,
                source,
            })
    };
    let cgroup = if cfg.socket_lb == Scope::Off {
        write_config(maps, Scope::Off)?;
        let detached = crate::datapath::detach_socket_programs(&cfg.bpffs)?;
        if detached > 0 {
            info!(
                programs = detached,
                "socket load balancing off: programs detached"
            );
        }
        None
    } else {
        let cgroup = socket_lb::resolve_cgroup(cfg.cgroup_root.as_deref())?;
        write_config(maps, cfg.socket_lb)?;
        progs.attach_socket_programs(&cgroup)?;
        info!(
            scope = cfg.socket_lb.name(),
            cgroup = %cgroup.display(),
            netns_cookie,
            "socket load balancing attached"
        );
        Some(cgroup)
    };
    let meta = SocketLbMeta {
        scope: cfg.socket_lb,
        cgroup,
        netns_cookie,
    };
    if let Err(e) = socket_lb::write_meta(&cfg.state_dir, &meta) {
        warn!(error = %e, "recording the socket load balancing set-up failed");
    }
    Ok(())
}

/// Replaces the programs on every interface of the calling thread's network
/// namespace that carries Sluice's filters with the ones pinned under
/// `bpffs`: pod veths (bridge ports of `sluice0`), the overlay device and
/// the uplink (any other hooked link). Returns the number of pods.
pub fn reattach(bpffs: &Path) -> usize {
    let veths = match sluice_net::pods::list_pod_veths(sluice_net::pods::DEFAULT_BRIDGE) {
        Ok(v) => v,
        Err(e) => {
            warn!(error = %e, "listing pod interfaces failed; none re-attached");
            Vec::new()
        }
    };
    prune_local_endpoints(bpffs);
    let mut attached = 0;
    for veth in &veths {
        match sluice_net::tc::attach_pod_programs(veth, bpffs) {
            Ok(()) => attached += 1,
            Err(e) => warn!(interface = %veth, error = %e, "re-attaching the datapath failed"),
        }
    }
    let links = match sluice_net::tc::hooked_links() {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "listing hooked interfaces failed; uplink and overlay re-attached once the node is known");
            return attached;
        }
    };
    let dir = crate::datapath::pin_dir(bpffs);
    for link in links.iter().filter(|l| !veths.contains(&l.interface)) {
        let pins: Vec<_> = if link.interface.starts_with(overlay::DEVICE_PREFIX) {
            vec![(
                dir.join(names::PIN_PROG_FROM_OVERLAY),
                TcAttachType::Ingress,
            )]
        } else {
            vec![
                (dir.join(names::PIN_PROG_FROM_NETDEV), TcAttachType::Ingress),
                (dir.join(names::PIN_PROG_TO_NETDEV), TcAttachType::Egress),
            ]
        };
        match sluice_net::tc::attach_pinned(&link.interface, pins) {
            Ok(()) => info!(interface = %link.interface, "programs replaced"),
            Err(e) => {
                warn!(interface = %link.interface, error = %e, "replacing the programs failed")
            }
        }
    }
    attached
}

/// Removes the local-endpoint entries whose host veth is gone (a pod
/// deleted without a CNI DEL, a node rebooted with the pins kept): the
/// datapath would redirect its packets into an interface that no longer
/// exists. Entries are read before the veths are listed, so a pod set up
/// meanwhile is never judged on a listing older than its veth.
pub fn prune_local_endpoints(bpffs: &Path) {
    use sluice_net::endpoints::{LocalEndpoints, stale};
    let mut map = match LocalEndpoints::open(bpffs) {
        Ok(m) => m,
        Err(e) => {
            warn!(error = %e, "local endpoints not checked");
            return;
        }
    };
    let entries = map.entries();
    let live = match sluice_net::pods::list_pod_veth_indexes(sluice_net::pods::DEFAULT_BRIDGE) {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "listing pod interfaces failed; local endpoints not checked");
            return;
        }
    };
    for (ip, seen) in stale(&entries, &live) {
        match map.forget_if(ip, &seen) {
            Ok(true) => {
                info!(pod = %ip, ifindex = seen.ifindex, "removed the local endpoint of a vanished pod veth")
            }
            Ok(false) => {}
            Err(e) => warn!(pod = %ip, error = %e, "removing a stale local endpoint failed"),
        }
    }
}

/// The interface holding `addr` in this network namespace, and its MTU.
pub fn uplink(addr: Ipv4Addr) -> Option<(String, u32)> {
    let found = sluice_net::on_fresh_thread(|| {
        sluice_net::BlockingNetlink::new().and_then(|nl| nl.link_with_address(addr))
    });
    match found {
        Ok(Ok(link)) => link.map(|l| (l.name, l.mtu)),
        Ok(Err(e)) => {
            warn!(address = %addr, error = %e, "looking up the uplink failed");
            None
        }
        Err(e) => {
            warn!(address = %addr, error = %e, "looking up the uplink failed");
            None
        }
    }
}

/// Turns views of the cluster into datapath state for one node.
pub struct Reconciler {
    cfg: DaemonConfig,
    model: IncrementalModel,
    writer: Writer,
    node: Option<NodeInfo>,
    overlay: Option<Overlay>,
    health: HealthServers,
    logged: BTreeSet<Skip>,
    /// Nodes the overlay skipped at the last reconcile.
    peer_skips: Vec<Skip>,
    /// What `sluicectl nodes` was last told about the overlay.
    overlay_meta: Option<OverlayMeta>,
    /// Skipped objects and parts in the last reconcile, by kind.
    pub skipped: std::collections::BTreeMap<SkipKind, usize>,
    /// The Node objects the node-address map was last synced from (by
    /// identity: an unchanged view is not walked again), and what it holds.
    node_objects: Vec<usize>,
    node_addrs: Option<BTreeSet<Ipv4Addr>>,
}

impl Reconciler {
    pub fn new(cfg: DaemonConfig) -> Result<Self, DaemonError> {
        let options = PlanOptions {
            maglev_size: cfg.maglev_size,
            maglev_by_default: cfg.maglev_by_default,
        };
        let writer = Writer::open(
            &cfg.bpffs,
            &cfg.state_dir,
            &cfg.node_name,
            cfg.capacities,
            options,
        )?;
        Ok(Self {
            cfg,
            model: IncrementalModel::new(),
            writer,
            node: None,
            overlay: None,
            health: HealthServers::default(),
            logged: BTreeSet::new(),
            peer_skips: Vec::new(),
            overlay_meta: None,
            skipped: Default::default(),
            node_objects: Vec::new(),
            node_addrs: None,
        })
    }

    pub fn node(&self) -> Option<&NodeInfo> {
        self.node.as_ref()
    }

    pub fn writer(&mut self) -> &mut Writer {
        &mut self.writer
    }

    /// Lets the health-check node ports report the daemon's own health.
    pub fn set_telemetry(&mut self, telemetry: Telemetry) {
        self.health.set_proxy_health(telemetry);
    }

    /// Which sockets socket load balancing serves.
    pub fn scope(&self) -> Scope {
        self.cfg.socket_lb
    }

    pub fn writer_ref(&self) -> &Writer {
        &self.writer
    }

    /// Applies one view of the cluster. Problems with single objects are
    /// logged once each and never stop the rest; an error means the node
    /// cannot work as configured (the overlay's UDP port is taken, say).
    pub async fn reconcile(
        &mut self,
        cluster: std::sync::Arc<ClusterState>,
    ) -> Result<ApplyReport, DaemonError> {
        if let Some(info) = self.learn_node(&cluster) {
            self.node_changed(&info).await?;
        }
        let ctx = self.node.as_ref().map_or_else(
            || NodeContext {
                name: self.cfg.node_name.clone(),
                ..Default::default()
            },
            NodeInfo::context,
        );
        self.sync_node_addrs(&cluster);
        let changes = self.model.update(&cluster, &ctx);
        let desired = self.model.desired();
        let touch = if changes.full {
            Touch::All
        } else {
            Touch::Frontends {
                keys: &changes.frontends,
                addresses: &changes.addresses,
            }
        };
        debug!(
            services = changes.services,
            frontends = changes.frontends.len(),
            full = changes.full,
            "desired state updated"
        );
        let report = self.writer.apply(desired, touch)?;
        for f in &report.failures {
            warn!(failure = %f, "datapath update incomplete; retried on the next change");
        }
        if changes.full {
            release_free_memory();
        }
        // Only when they may have changed: finding them walks every frontend.
        if changes.full || changes.health_checks || self.health.incomplete() {
            self.health.sync(health_checks(desired)).await;
        }
        let mut peer_skips = Vec::new();
        let mut overlay_meta = OverlayMeta {
            node: self.node.as_ref().and_then(|n| {
                Some(NodeMeta {
                    name: n.name.clone(),
                    addr: n.internal_ip,
                    pod_cidr: n.pod_cidr?,
                })
            }),
            ..Default::default()
        };
        if let Some(overlay) = self.overlay.as_mut() {
            let (peers, skips) = overlay::peers(&cluster, &self.cfg.node_name);
            peer_skips = skips;
            sync_overlay(overlay, &peers).await;
            overlay_meta.device = Some(overlay.device().to_string());
            overlay_meta.peers = peers
                .iter()
                .map(|p| NodeMeta {
                    name: p.node.clone(),
                    addr: p.node_addr,
                    pod_cidr: p.pod_cidr,
                })
                .collect();
        }
        // Written on change only: reconciles can come many times a second.
        if self.overlay_meta.as_ref() != Some(&overlay_meta) {
            match meta::write_overlay(&self.cfg.state_dir, &overlay_meta) {
                Ok(()) => self.overlay_meta = Some(overlay_meta),
                Err(e) => warn!(error = %e, "recording the overlay peers failed"),
            }
        }
        if changes.skips || peer_skips != self.peer_skips {
            let skips: Vec<Skip> = desired.skipped.iter().chain(&peer_skips).cloned().collect();
            self.log_skips(&skips);
            self.peer_skips = peer_skips;
        }
        Ok(report)
    }

    /// The periodic full resync: reads the maps back and rewrites whatever
    /// differs from the desired state (entries changed or removed behind
    /// the daemon's back). On an untouched node it writes nothing.
    pub fn resync(&mut self) -> Result<ApplyReport, DaemonError> {
        let report = self.writer.resync(self.model.desired())?;
        prune_local_endpoints(&self.cfg.bpffs);
        release_free_memory();
        Ok(report)
    }

    /// Re-syncs the overlay with the last view: repairs a device someone
    /// set down (which drops its routes and neighbours) or entries removed
    /// by hand.
    pub async fn repair_overlay(&mut self) {
        if let (Some(overlay), Some(last)) = (self.overlay.as_mut(), self.model.view()) {
            let (peers, _) = overlay::peers(last, &self.cfg.node_name);
            sync_overlay(overlay, &peers).await;
        }
    }

    /// Keeps `sluice_nodes4_v1` (every node's addresses, where socket load
    /// balancing translates NodePorts) equal to the Node objects. The map
    /// is read back the first time, so a restart removes what went away
    /// while no daemon ran.
    fn sync_node_addrs(&mut self, cluster: &ClusterState) {
        let objects: Vec<usize> = cluster
            .nodes
            .values()
            .map(|n| std::sync::Arc::as_ptr(n) as usize)
            .collect();
        if self.node_addrs.is_some() && objects == self.node_objects {
            return;
        }
        let desired = socket_lb::cluster_node_addrs(cluster.nodes.values().map(|n| &**n));
        let maps = self.writer.maps();
        let current = match &self.node_addrs {
            Some(c) => c.clone(),
            None => maps
                .node_addrs
                .keys()
                .filter_map(Result::ok)
                .map(|k| Ipv4Addr::from(u32::from_be(k)))
                .collect(),
        };
        let mut held = current.clone();
        for gone in current.difference(&desired) {
            match maps.node_addrs.remove(&nbo(*gone)) {
                Ok(()) => {
                    held.remove(gone);
                }
                Err(e) => warn!(address = %gone, error = %e, "removing a node address failed"),
            }
        }
        let mut left_out = Vec::new();
        for new in desired.difference(&current) {
            match maps.node_addrs.insert(nbo(*new), 0, 0) {
                Ok(()) => {
                    held.insert(*new);
                }
                Err(_) => left_out.push(*new),
            }
        }
        if !left_out.is_empty() {
            warn!(
                addresses = ?left_out,
                capacity = proxy_common::socket::DEFAULT_MAX_NODE_ADDRS,
                "node address map full: host clients reach NodePorts on these addresses through that node's TC path"
            );
        }
        debug!(addresses = held.len(), "node addresses synced");
        self.node_addrs = Some(held);
        self.node_objects = objects;
    }

    fn log_skips(&mut self, skips: &[Skip]) {
        let now: BTreeSet<Skip> = skips.iter().cloned().collect();
        for s in now.difference(&self.logged) {
            match s.kind {
                SkipKind::Invalid => warn!(object = %s.object, reason = %s.reason, "skipped"),
                SkipKind::NoService => debug!(object = %s.object, reason = %s.reason, "skipped"),
            }
        }
        self.skipped.clear();
        for s in &now {
            *self.skipped.entry(s.kind).or_default() += 1;
        }
        self.logged = now;
    }

    /// Reads this node's Node object; returns it when it is new or changed.
    fn learn_node(&mut self, cluster: &ClusterState) -> Option<NodeInfo> {
        let Some(node) = cluster.nodes.get(&self.cfg.node_name) else {
            if self.node.is_none() {
                warn!(node = %self.cfg.node_name, "own Node object not found yet; pods cannot be wired until it appears");
            }
            return None;
        };
        let mut info = match node_info(node) {
            Ok(i) => i,
            Err(e) => {
                warn!(node = %self.cfg.node_name, reason = %e, "own Node object unusable");
                return None;
            }
        };
        // The overlay's tunnels start at the InternalIP, never an ExternalIP.
        if let Some(internal) = overlay::internal_ipv4(node) {
            info.internal_ip = internal;
        }
        (self.node.as_ref() != Some(&info)).then_some(info)
    }

    /// On the first sighting of this node or a change: node configuration
    /// for the datapath, uplink programs, the overlay, and only then the
    /// CNI configuration (its MTU depends on the overlay).
    async fn node_changed(&mut self, info: &NodeInfo) -> Result<(), DaemonError> {
        info!(node = %info.name, address = %info.internal_ip, pod_cidr = ?info.pod_cidr, "node learned");
        self.write_node_config(info);
        self.attach_uplink(info.internal_ip);
        let Some(pod_cidr) = info.pod_cidr else {
            warn!(node = %info.name, "Node has no spec.podCIDR: pods cannot be wired");
            self.node = Some(info.clone());
            return Ok(());
        };
        let mut mtu =
            uplink(info.internal_ip).map_or(sluice_net::mtu::DEFAULT_UPLINK_MTU, |(_, mtu)| mtu);
        if let Some((vni, port)) = self.cfg.overlay {
            let cfg = OverlayConfig {
                vni,
                port,
                node_addr: info.internal_ip,
                pod_cidr,
            };
            let overlay = Overlay::ensure(&cfg).await?;
            self.attach_overlay(overlay.device());
            mtu = overlay.mtu();
            info!(device = overlay.device(), mtu, "overlay up");
            self.overlay = Some(overlay);
        }
        if let Err(e) = self.write_conflist(pod_cidr, mtu) {
            warn!(error = %e, "writing the CNI configuration failed");
        }
        self.node = Some(info.clone());
        Ok(())
    }

    /// Replies of external flows SNATed to remote backends come back over
    /// the overlay, addressed to this node's overlay address.
    fn attach_overlay(&self, device: &str) {
        let pin = crate::datapath::pin_dir(&self.cfg.bpffs).join(names::PIN_PROG_FROM_OVERLAY);
        match sluice_net::tc::attach_pinned(device, [(pin, TcAttachType::Ingress)]) {
            Ok(()) => info!(interface = %device, "overlay program attached"),
            Err(e) => {
                warn!(interface = %device, error = %e, "attaching the overlay program failed")
            }
        }
    }

    /// Masquerade lives on the interface that holds the node's address.
    fn attach_uplink(&self, addr: Ipv4Addr) {
        let Some((dev, _)) = uplink(addr) else {
            warn!(address = %addr, "no interface holds the node address: masquerade is off");
            return;
        };
        let dir = crate::datapath::pin_dir(&self.cfg.bpffs);
        let pins = [
            (dir.join(names::PIN_PROG_FROM_NETDEV), TcAttachType::Ingress),
            (dir.join(names::PIN_PROG_TO_NETDEV), TcAttachType::Egress),
        ];
        match sluice_net::tc::attach_pinned(&dev, pins) {
            Ok(()) => info!(interface = %dev, "uplink programs attached"),
            Err(e) => warn!(interface = %dev, error = %e, "attaching the uplink programs failed"),
        }
    }

    fn write_node_config(&mut self, info: &NodeInfo) {
        let (pod_cidr, pod_mask) = info
            .pod_cidr
            .map_or((0, 0), |c| (nbo(c.network()), nbo(c.mask())));
        let (cluster_cidr, cluster_mask) = self
            .cfg
            .cluster_cidr
            .map_or((0, 0), |c| (nbo(c.network()), nbo(c.mask())));
        let cfg = NodeConfig {
            version: NODE_CONFIG_VERSION,
            flags: 0,
            node_addr: nbo(info.internal_ip),
            pod_cidr,
            pod_mask,
            cluster_cidr,
            cluster_mask,
            snat_port_min: self.cfg.snat_ports.0,
            snat_port_max: self.cfg.snat_ports.1,
            maglev_size: self.cfg.maglev_size,
            _pad: 0,
        };
        if let Err(e) = self.writer.maps().config.set(0, cfg, 0) {
            warn!(error = %e, "writing the node configuration map failed");
        }
    }

    fn write_conflist(&self, pod_cidr: Ipv4Network, mtu: u32) -> Result<(), DaemonError> {
        write_cni_config(&self.cfg, pod_cidr, mtu)
    }
}

/// Writes `10-sluice.conflist` for the container runtime (through a
/// temporary and a rename; untouched when the content is the same).
pub fn write_cni_config(
    cfg: &DaemonConfig,
    pod_cidr: Ipv4Network,
    mtu: u32,
) -> Result<(), DaemonError> {
    let mut conf = sluice_net::cni::conf::NetConf::new(pod_cidr);
    conf.cni_version = cfg.cni_version.as_str().to_owned();
    conf.cluster_cidr = cfg.cluster_cidr;
    conf.state_dir = cfg.state_dir.clone();
    conf.bpffs = cfg.bpffs.clone();
    conf.mtu = mtu;
    let text = serde_json::to_string_pretty(&sluice_net::cni::conf::conflist(&conf))
        .expect("a JSON value serializes");
    let dir = &cfg.cni_conf_dir;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join(CONFLIST_NAME);
    if std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    let tmp = dir.join(format!(".{CONFLIST_NAME}.tmp"));
    std::fs::write(&tmp, &text).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    info!(path = %path.display(), mtu = conf.mtu, "CNI configuration written");
    Ok(())
}

/// The pod MTU for a node whose address is `node_addr`: the uplink's,
/// less the overlay's encapsulation when there is one.
pub fn pod_mtu(node_addr: Ipv4Addr, overlay: bool) -> u32 {
    let uplink = uplink(node_addr).map_or(sluice_net::mtu::DEFAULT_UPLINK_MTU, |(_, mtu)| mtu);
    sluice_net::mtu::pod_mtu(uplink, overlay)
}

/// Copies `binary` into `bin_dir` under the same name, atomically (a
/// runtime may exec the plugin at any moment).
pub fn install_binary(binary: &Path, bin_dir: &Path) -> Result<PathBuf, DaemonError> {
    let name = binary.file_name().ok_or_else(|| DaemonError::Io {
        path: binary.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file"),
    })?;
    std::fs::create_dir_all(bin_dir).map_err(io(bin_dir))?;
    let dest = bin_dir.join(name);
    let tmp = bin_dir.join(format!(".{}.tmp", name.to_string_lossy()));
    std::fs::copy(binary, &tmp).map_err(io(&tmp))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
    Ok(dest)
}

/// Hands the heap's free pages back to the kernel. A full computation
/// (the first view, a node change, the periodic resync) allocates its plan
/// and the lists it came from all at once, tens of MiB at 10k Services,
/// and frees them when done; glibc keeps freed pages below the top of the
/// heap mapped, so without this the process's RSS stays at that peak.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and releases the allocator's own free
    // chunks; it is safe to call at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

async fn sync_overlay(overlay: &mut Overlay, peers: &[overlay::Peer]) {
    match overlay.sync(peers).await {
        Ok(r) => {
            for f in &r.failures {
                warn!(failure = ?f, "overlay entry not applied; retried on the next sync");
            }
            if !r.is_noop() {
                info!(peers = peers.len(), "overlay synced");
            }
        }
        Err(e) => warn!(error = %e, "overlay sync failed; retried on the next sync"),
    }
}
