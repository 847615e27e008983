//! The nodes the modes run on, each in namespaces of its own: a node whose
//! pods are wired by Debian's reference `bridge` + `host-local` plugins
//! (the ceiling, and kube-proxy's two layouts on top of it), and a Sluice
//! node (sluice-cni pods, sluiced on a manifests directory).

use std::{
    io::Write as _,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use sluice::datapath::PinnedMaps;
use sluice_testkit::netns::NetNs;

use super::load::PORT;
use crate::{
    bench::{
        ENDPOINTS,
        control_plane::{cluster_with_services, list_json, service_json, slice_json},
        endpoint, vip,
    },
    fixture::frontend_backends,
    sim::{Cluster, Pod},
};

/// Where Debian's containernetworking-plugins puts its binaries.
const CNI_PLUGINS: &str = "/usr/lib/cni";
const POD_SUBNET: &str = "10.244.0.0/24";

/// The endpoints of Service `i` of `n`: Service 0 is the probe, whose one
/// endpoint is the server pod; the others have ten made-up ones.
pub fn probe_endpoints(server: Ipv4Addr) -> impl Fn(usize) -> Vec<Ipv4Addr> {
    move |i| {
        if i == 0 {
            vec![server]
        } else {
            (0..ENDPOINTS).map(|e| endpoint(i, e)).collect()
        }
    }
}

/// The probe Service's ClusterIP and port.
pub fn probe_target() -> SocketAddr {
    SocketAddr::from((vip(0), 80))
}

/// A node whose two pods are wired by the reference plugins: a Linux
/// bridge with the gateway address, a veth per pod, no BPF anywhere.
pub struct BridgedNode {
    pub client: NetNs,
    pub server: NetNs,
    pub client_ip: Ipv4Addr,
    pub server_ip: Ipv4Addr,
    // Last: the pods go before their node.
    pub node: NetNs,
    _ipam: IpamDir,
}

/// host-local's state, in a directory of the bench's own (not the
/// machine's /var/lib/cni).
struct IpamDir(PathBuf);

impl Drop for IpamDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl BridgedNode {
    /// `bridge_nf`: whether bridged IPv4 traffic goes through the node's
    /// iptables/nftables hooks (br_netfilter), as kube-proxy requires on a
    /// bridge.
    pub fn new(tag: &str, bridge_nf: bool) -> Result<Self> {
        if !Path::new(CNI_PLUGINS).join("bridge").exists() {
            bail!(
                "{CNI_PLUGINS}/bridge missing: run `cargo xtask setup` (containernetworking-plugins)"
            );
        }
        let node = NetNs::new(&format!("{tag}-node"))?;
        let ipam = IpamDir(std::env::temp_dir().join(format!(
            "sluice-bench-ipam-{}-{}",
            std::process::id(),
            node.name()
        )));
        std::fs::create_dir_all(&ipam.0)?;
        let client = NetNs::new(&format!("{tag}-client"))?;
        let server = NetNs::new(&format!("{tag}-server"))?;
        let conf = json!({
            "cniVersion": "1.0.0",
            "name": format!("bench-{tag}"),
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": true,
            "isDefaultGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {"type": "host-local", "subnet": POD_SUBNET, "dataDir": ipam.0},
        });
        let client_ip = cni_add(&node, &conf, &format!("{tag}-client"), &client.path())?;
        let server_ip = cni_add(&node, &conf, &format!("{tag}-server"), &server.path())?;
        node.sysctl(
            "net.bridge.bridge-nf-call-iptables",
            if bridge_nf { "1" } else { "0" },
        )
        .context("br_netfilter's sysctls are missing (modprobe br_netfilter)")?;
        Ok(Self {
            client,
            server,
            client_ip,
            server_ip,
            node,
            _ipam: ipam,
        })
    }

    /// Shortens conntrack's TIME_WAIT in the node, so the short
    /// connections of a cell do not pile up into the (machine-wide)
    /// conntrack limit. Only once a ruleset loaded conntrack.
    pub fn short_time_wait(&self) -> Result<()> {
        self.node
            .sysctl("net.netfilter.nf_conntrack_tcp_timeout_time_wait", "1")
    }

    /// Entries in the node's conntrack table.
    pub fn conntrack_count(&self) -> Result<u64> {
        Ok(self
            .node
            .output("cat", &["/proc/sys/net/netfilter/nf_conntrack_count"])?
            .trim()
            .parse()?)
    }
}

/// ADD through Debian's bridge plugin, run inside the node; the pod's
/// address.
fn cni_add(node: &NetNs, conf: &Value, id: &str, netns: &Path) -> Result<Ipv4Addr> {
    let mut child = node
        .command_entering(Path::new(CNI_PLUGINS).join("bridge"))?
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", CNI_PLUGINS)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the bridge plugin")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(conf.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "bridge plugin ADD {id}: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let result: Value = serde_json::from_slice(&out.stdout)?;
    let addr = result["ips"][0]["address"]
        .as_str()
        .context("no address in the bridge plugin's result")?;
    addr.split('/')
        .next()
        .unwrap_or_default()
        .parse()
        .with_context(|| format!("address {addr:?}"))
}

/// One Sluice node: sluiced on a manifests directory with `services`
/// Services (the probe and `services - 1` others x 10 endpoints), and two
/// pods from sluice-cni. Socket load balancing serves every socket of the
/// cluster's cgroup (`all`): a client is translated at connect() while this
/// process is in it, and by the TC path otherwise.
pub struct SluiceNode {
    pub client: Pod,
    pub server: Pod,
    pub cluster: Cluster,
    pub cold_start: Duration,
}

impl SluiceNode {
    pub fn new(services: usize) -> Result<Self> {
        // The others first: the daemon must run before pods can be wired.
        let (mut cluster, cold_start) =
            cluster_with_services(1..services, services, &["--socket-lb", "all"])?;
        let client = cluster.add_pod(0, "client")?;
        let server = cluster.add_pod(0, "server")?;
        let probe = list_json(vec![service_json(0), slice_json(0, &[server.ip])]);
        cluster.apply("10-probe.json", &probe)?;
        let maps = PinnedMaps::open(&cluster.nodes[0].bpffs)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while frontend_backends(&maps, vip(0), 80).is_none_or(|b| b != [server.ip]) {
            if Instant::now() > deadline {
                bail!(
                    "the probe Service was not programmed: {}",
                    cluster.nodes[0].log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            client,
            server,
            cluster,
            cold_start,
        })
    }

    pub fn bpffs(&self) -> &Path {
        &self.cluster.nodes[0].bpffs
    }

    pub fn daemon_pid(&self) -> Option<u32> {
        self.cluster.nodes[0].daemon_pid()
    }

    pub fn program_pin(&self, name: &str) -> PathBuf {
        sluice::datapath::pin_dir(self.bpffs()).join(name)
    }

    /// The server pod's address and port.
    pub fn server_target(&self) -> SocketAddr {
        SocketAddr::from((self.server.ip, PORT))
    }
}
