//! A simulated cluster in network namespaces (ARCHITECTURE.md, "Test
//! topology"): a "fabric" namespace with a bridge as the underlay LAN, one namespace per
//! node attached to it, pods as namespaces wired by the real `sluice-cni`
//! binary run inside the node's namespace as a container runtime would,
//! `sluiced` running inside each node's namespace on a shared manifests
//! directory, and an "outside" host on the fabric.
//!
//! Nothing is added to the root network namespace; no namespace has a route
//! off the machine; everything is removed on drop (or on a signal).

use std::{
    fs,
    io::Write,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use sluice_testkit::{
    bpffs::TempBpffs,
    cgroup::TestCgroup,
    cleanup::{self, Item},
    fabric::Fabric,
    netns::NetNs,
};

use crate::{
    apiserver::{ApiServer, ApiServerConfig},
    manifests,
};

pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
pub const FABRIC_PREFIX: u8 = 24;
/// The test API server's host on the fabric ([`Cluster::start_api_server`]).
pub const APISERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 250);

/// Where the binaries under test are (`cargo xtask build` puts them there).
#[derive(Clone, Debug)]
pub struct Bins {
    pub sluiced: PathBuf,
    pub sluicectl: PathBuf,
    pub cni: PathBuf,
    pub dir: PathBuf,
}

impl Bins {
    pub fn locate() -> Result<Self> {
        let dir = std::env::var_os("SLUICE_BIN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release"));
        let bins = Self {
            sluiced: dir.join("sluiced"),
            sluicectl: dir.join("sluicectl"),
            cni: dir.join("sluice-cni"),
            dir,
        };
        for b in [&bins.sluiced, &bins.sluicectl, &bins.cni] {
            if !b.exists() {
                bail!(
                    "{} is missing: build the binaries first (`cargo xtask build`, or run the suite with `cargo xtask test`)",
                    b.display()
                );
            }
        }
        Ok(bins)
    }
}

/// Polls `f` every 20 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Node {
    pub name: String,
    pub ns: NetNs,
    pub ip: Ipv4Addr,
    pub pod_cidr: String,
    pub bpffs: PathBuf,
    pub state_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub log: PathBuf,
    daemon: Option<Child>,
    pods: u32,
}

pub struct Pod {
    pub name: String,
    pub ns: NetNs,
    pub ip: Ipv4Addr,
    pub node: String,
    pub container_id: String,
}

/// A test API server on its own host on the fabric.
pub struct ApiHost {
    pub server: ApiServer,
    pub kubeconfig: PathBuf,
    // After the server: its thread runs inside this namespace.
    pub ns: NetNs,
}

pub struct Cluster {
    pub bins: Bins,
    pub nodes: Vec<Node>,
    pub outside: NetNs,
    pub outside_ip: Ipv4Addr,
    pub manifests: PathBuf,
    /// When set, daemons started from now on watch this API server instead
    /// of the manifests directory.
    pub api: Option<ApiHost>,
    /// Command prefix for daemons started from now on (e.g. `setpriv ...
    /// --`), so a test can run sluiced confined the way a pod would.
    pub daemon_wrapper: Vec<std::ffi::OsString>,
    /// The cluster's own cgroup under the cgroup2 mount: every daemon
    /// attaches its socket programs here (`--cgroup-root`), never to the
    /// machine's root cgroup, and "host" clients run inside it
    /// ([`Cluster::as_host`]). After the nodes: the daemons are gone first.
    pub cgroup: TestCgroup,
    // Dropped last, in this order: namespaces above go first.
    pub fabric: Fabric,
    pub fs: TempBpffs,
}

fn fabric_ip(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, host)
}

impl Cluster {
    /// Builds the fabric, `nodes` node namespaces and an outside host, and
    /// writes each Node object into the manifests directory. Daemons are
    /// not started yet.
    pub fn new(nodes: usize) -> Result<Self> {
        sluice_testkit::privileges::require_root();
        let bins = Bins::locate()?;
        let fs = TempBpffs::new("cluster")?;
        let manifests = fs.scratch().join("manifests");
        fs::create_dir_all(&manifests)?;
        let fabric = Fabric::new()?;

        let mut c = Self {
            bins,
            nodes: Vec::new(),
            outside: NetNs::new("outside")?,
            outside_ip: fabric_ip(200),
            manifests,
            api: None,
            daemon_wrapper: Vec::new(),
            cgroup: TestCgroup::new("cluster")?,
            fabric,
            fs,
        };
        c.attach_host(&c.outside, "outside", c.outside_ip)?;
        for i in 0..nodes {
            let name = format!("node-{}", i + 1);
            let ns = NetNs::new(&format!("n{}", i + 1))?;
            let ip = fabric_ip(10 + i as u8);
            c.attach_host(&ns, &format!("n{}", i + 1), ip)?;
            let pod_cidr = format!("10.244.{}.0/24", i + 1);
            let dir = c.fs.scratch().join(&name);
            let bpffs = c.fs.path().join(&name);
            fs::create_dir_all(&bpffs)?;
            fs::create_dir_all(&dir)?;
            let node = Node {
                name: name.clone(),
                ns,
                ip,
                pod_cidr: pod_cidr.clone(),
                bpffs,
                state_dir: dir.join("state"),
                cni_conf_dir: dir.join("cni"),
                log: dir.join("sluiced.log"),
                daemon: None,
                pods: 0,
            };
            c.apply(
                &format!("node-{name}.yaml"),
                &manifests::node(&name, ip, &pod_cidr),
            )?;
            c.nodes.push(node);
        }
        Ok(c)
    }

    /// Connects a host namespace to the fabric with `eth0` = `ip`.
    fn attach_host(&self, ns: &NetNs, tag: &str, ip: Ipv4Addr) -> Result<()> {
        self.fabric
            .attach(ns, tag, &format!("{ip}/{FABRIC_PREFIX}"))
    }

    /// Another host on the fabric (e.g. a second outside client).
    pub fn add_host(&self, tag: &str, ip: Ipv4Addr) -> Result<NetNs> {
        let ns = NetNs::new(tag)?;
        self.attach_host(&ns, tag, ip)?;
        Ok(ns)
    }

    /// Starts a test API server on its own host on the fabric
    /// ([`APISERVER_IP`]), creates every node's Node object there, and makes
    /// daemons started from now on use it (`--kubeconfig`) instead of the
    /// manifests directory.
    pub fn start_api_server(&mut self, cfg: ApiServerConfig) -> Result<&ApiServer> {
        if self.api.is_some() {
            bail!("the cluster already has an API server");
        }
        let ns = NetNs::new("apiserver")?;
        self.attach_host(&ns, "api", APISERVER_IP)?;
        let server = ApiServer::start(&ns, APISERVER_IP, cfg)?;
        for node in &self.nodes {
            server.apply_yaml(&manifests::node(&node.name, node.ip, &node.pod_cidr))?;
        }
        let kubeconfig = self.fs.scratch().join("kubeconfig");
        server.write_kubeconfig(&kubeconfig)?;
        let api = self.api.insert(ApiHost {
            server,
            kubeconfig,
            ns,
        });
        Ok(&api.server)
    }

    /// The API server of [`Cluster::start_api_server`].
    pub fn api_server(&self) -> &ApiServer {
        &self.api.as_ref().expect("start_api_server first").server
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .expect("known node")
    }

    /// Writes a manifest atomically (temporary file + rename), as an
    /// operator's tooling would.
    pub fn apply(&self, file: &str, yaml: &str) -> Result<()> {
        let tmp = self.manifests.join(format!(".{file}.tmp"));
        let mut f = fs::File::create(&tmp)?;
        f.write_all(yaml.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, self.manifests.join(file))?;
        Ok(())
    }

    /// Applies a manifest where the daemons read the cluster: through the
    /// API server when the cluster has one, else as `file` in the manifests
    /// directory.
    pub fn publish(&self, file: &str, yaml: &str) -> Result<()> {
        match &self.api {
            Some(api) => api.server.apply_yaml(yaml).map(drop),
            None => self.apply(file, yaml),
        }
    }

    pub fn delete(&self, file: &str) -> Result<()> {
        fs::remove_file(self.manifests.join(file)).with_context(|| format!("removing {file}"))
    }

    /// Starts `sluiced` on every node and waits until each has written its
    /// CNI configuration.
    pub fn start_daemons(&mut self) -> Result<()> {
        for i in 0..self.nodes.len() {
            self.start_daemon(i)?;
        }
        Ok(())
    }

    pub fn start_daemon(&mut self, i: usize) -> Result<()> {
        self.start_daemon_with_args(i, &[])
    }

    /// Starts `sluiced` on node `i` with extra arguments (capacities, log
    /// format...), on the API server if the cluster has one.
    pub fn start_daemon_with_args(&mut self, i: usize, extra: &[&str]) -> Result<()> {
        let bins = self.bins.clone();
        let mut args: Vec<std::ffi::OsString> = match &self.api {
            Some(api) => vec!["--kubeconfig".into(), api.kubeconfig.clone().into()],
            None => vec!["--manifests".into(), self.manifests.clone().into()],
        };
        args.push("--cgroup-root".into());
        args.push(self.cgroup.path().into());
        args.extend(extra.iter().map(|a| a.into()));
        let wrapper = self.daemon_wrapper.clone();
        let node = &mut self.nodes[i];
        node.start(&bins, &wrapper, &args)
    }

    pub fn stop_daemon(&mut self, i: usize) -> Result<()> {
        self.nodes[i].stop()
    }

    /// Runs `f` as a process of node `i` itself would: in the node's
    /// network namespace, and in the cluster's cgroup, where the socket
    /// programs are attached. Sockets keep the cgroup they were created in,
    /// so one made here stays served after `f` returns.
    pub fn as_host<T: Send>(&self, i: usize, f: impl FnOnce() -> T + Send) -> Result<T> {
        self.in_cgroup(|| self.nodes[i].ns.run(f))?
    }

    /// Runs `f` with this process in the cluster's cgroup: the sockets it
    /// creates (in whatever namespace) are the socket programs' to serve.
    pub fn in_cgroup<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        let _turn = sluice_testkit::cgroup::process_lock();
        self.cgroup.enter()?;
        let out = f();
        self.cgroup.leave()?;
        Ok(out)
    }

    /// `sluicectl -o json ARGS` on node `i`, parsed.
    pub fn ctl_json(&self, i: usize, args: &[&str]) -> Result<serde_json::Value> {
        let node = &self.nodes[i];
        let out = node
            .ns
            .command(&self.bins.sluicectl)
            .arg("--bpffs")
            .arg(&node.bpffs)
            .arg("--state-dir")
            .arg(&node.state_dir)
            .args(["-o", "json"])
            .args(args)
            .output()
            .context("running sluicectl")?;
        if !out.status.success() {
            bail!(
                "sluicectl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "sluicectl {args:?} printed no JSON: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Creates a pod on node `i`, wired by `sluice-cni` ADD.
    pub fn add_pod(&mut self, i: usize, name: &str) -> Result<Pod> {
        let bins = self.bins.clone();
        self.nodes[i].add_pod(&bins, name)
    }
}

impl Node {
    /// The pid of the running sluiced (the wrapper execs it, so the same).
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    fn start(
        &mut self,
        bins: &Bins,
        wrapper: &[std::ffi::OsString],
        source: &[std::ffi::OsString],
    ) -> Result<()> {
        if self.daemon.is_some() {
            bail!("sluiced already runs on {}", self.name);
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        // Entered with setns, not `ip netns exec`: that one mounts a fresh
        // /sys, which hides the cgroup2 mount the daemon attaches to.
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = self.ns.command_entering(program)?;
                c.args(rest).arg(&bins.sluiced);
                c
            }
            None => self.ns.command_entering(&bins.sluiced)?,
        };
        let child = command
            .args(["--node-name", &self.name])
            .args(source)
            .arg("--bpffs")
            .arg(&self.bpffs)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--cni-conf-dir")
            .arg(&self.cni_conf_dir)
            .args(["--cluster-cidr", CLUSTER_CIDR])
            .env(
                "RUST_LOG",
                std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting sluiced")?;
        cleanup::register(Item::Process(child.id() as i32));
        self.daemon = Some(child);
        let conflist = self.conflist_path();
        if !wait_until(Duration::from_secs(20), || {
            conflist.exists() || self.exited()
        }) {
            bail!(
                "sluiced on {} did not write {}: {}",
                self.name,
                conflist.display(),
                self.log_tail()
            );
        }
        if self.exited() {
            bail!("sluiced on {} exited: {}", self.name, self.log_tail());
        }
        Ok(())
    }

    fn exited(&mut self) -> bool {
        matches!(
            self.daemon.as_mut().map(|c| c.try_wait()),
            Some(Ok(Some(_)))
        )
    }

    /// Stops the daemon the way the kubelet does (SIGTERM) and waits.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.daemon.take() else {
            return Ok(());
        };
        // SAFETY: plain kill of our child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if child.try_wait()?.is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("sluiced on {} ignored SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        cleanup::unregister(&Item::Process(child.id() as i32));
        Ok(())
    }

    pub fn running(&mut self) -> bool {
        self.daemon.is_some() && !self.exited()
    }

    pub fn conflist_path(&self) -> PathBuf {
        self.cni_conf_dir.join("10-sluice.conflist")
    }

    /// The last lines of the daemon's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(25)..].join("\n")
    }

    /// The plugin configuration a runtime would pass on stdin: the conflist's
    /// first plugin with the network's name and cniVersion injected.
    pub fn cni_stdin(&self) -> Result<serde_json::Value> {
        let text = fs::read_to_string(self.conflist_path())
            .with_context(|| format!("reading {}", self.conflist_path().display()))?;
        let list: serde_json::Value = serde_json::from_str(&text)?;
        let mut conf = list["plugins"][0].clone();
        conf["name"] = list["name"].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        Ok(conf)
    }

    /// Invokes the plugin inside this node's namespace like a container
    /// runtime: environment variables and the configuration on stdin.
    pub fn cni(
        &self,
        bins: &Bins,
        command: &str,
        container_id: &str,
        netns: &Path,
        stdin: &serde_json::Value,
    ) -> Result<serde_json::Value> {
        let mut child = self
            .ns
            .command(&bins.cni)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &bins.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting sluice-cni")?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(stdin.to_string().as_bytes())?;
        let out = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "sluice-cni {command} failed ({}): {stdout} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if stdout.trim().is_empty() {
            return Ok(serde_json::Value::Null);
        }
        Ok(serde_json::from_str(&stdout)?)
    }

    fn add_pod(&mut self, bins: &Bins, name: &str) -> Result<Pod> {
        self.pods += 1;
        let ns = NetNs::new(&format!("p-{name}"))?;
        let container_id = format!("{}-{}-{:08x}", self.name, name, std::process::id());
        let result = self.cni(bins, "ADD", &container_id, &ns.path(), &self.cni_stdin()?)?;
        let addr = result["ips"][0]["address"]
            .as_str()
            .context("ADD result without an address")?;
        let ip: Ipv4Addr = addr
            .split('/')
            .next()
            .unwrap_or_default()
            .parse()
            .with_context(|| format!("bad address {addr} in ADD result"))?;
        Ok(Pod {
            name: name.to_string(),
            ns,
            ip,
            node: self.name.clone(),
            container_id,
        })
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
            cleanup::unregister(&Item::Process(child.id() as i32));
        }
    }
}
