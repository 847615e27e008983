//! Test harness: network namespaces as hosts, a private bpffs with trivial
//! pinned programs, and the real `sluice-cni` binary run inside a "node"
//! namespace the way a container runtime runs it.
//!
//! Safety: nothing here touches the root network namespace. Every address,
//! link, route and TC filter lives in a test namespace (`sluice_testkit`'s
//! guard); the plugin process enters the node namespace before exec. Guards
//! clean up on drop, also when a test fails; leftovers of killed test runs
//! (dead pid in the name) are removed at the first use.
#![allow(dead_code)]

use std::io::Write;
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_cni::ipam::{Allocation, IpamStore};
pub use sluice_testkit::netns::NetNs;
use sluice_testkit::{
    bpf::{ProgType, TrivialProgram},
    bpffs::TempBpffs,
};

pub const BIN: &str = env!("CARGO_BIN_EXE_sluice-cni");

/// What the CNI tests read from a namespace, beyond the guard itself.
pub trait Inspect {
    /// The namespace's path, as `CNI_NETNS` carries it.
    fn path_str(&self) -> String;
    /// `ip -n <ns> -j ...` parsed.
    fn ip_json(&self, args: &[&str]) -> Value;
    /// Runs a program inside the namespace, returns its output (no assert).
    fn exec(&self, args: &[&str]) -> Output;
    fn link_names(&self) -> Vec<String>;
    fn link(&self, name: &str) -> Value;
}

impl Inspect for NetNs {
    fn path_str(&self) -> String {
        self.path().display().to_string()
    }

    fn ip_json(&self, args: &[&str]) -> Value {
        let mut a = vec!["-j"];
        a.extend_from_slice(args);
        let out = self.ip(&a).unwrap();
        if out.trim().is_empty() {
            return json!([]);
        }
        serde_json::from_str(&out).expect("ip -j output")
    }

    fn exec(&self, args: &[&str]) -> Output {
        self.command(args[0])
            .args(&args[1..])
            .output()
            .expect("ip netns exec")
    }

    fn link_names(&self) -> Vec<String> {
        self.ip_json(&["link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_owned())
            .collect()
    }

    fn link(&self, name: &str) -> Value {
        self.ip_json(&["-d", "link", "show", "dev", name])[0].clone()
    }
}

/// A private bpffs for a node's datapath pins.
pub struct BpfFs {
    fs: TempBpffs,
}

impl BpfFs {
    pub fn new() -> Self {
        BpfFs {
            fs: TempBpffs::new("cni").expect("private bpffs"),
        }
    }

    pub fn dir(&self) -> &Path {
        self.fs.path()
    }

    /// Pins trivial classifiers as `<dir>/sluice/prog_from_pod` and `prog_to_pod`.
    pub fn pin_programs(&self) {
        let pins = self.dir().join("sluice");
        std::fs::create_dir_all(&pins).unwrap();
        pin_trivial_classifier(&pins.join("prog_from_pod"), "test_from_pod");
        pin_trivial_classifier(&pins.join("prog_to_pod"), "test_to_pod");
    }

    /// Pins whichever of the two programs is not pinned yet.
    pub fn pin_programs_missing_only(&self) {
        let pins = self.dir().join("sluice");
        std::fs::create_dir_all(&pins).unwrap();
        for (file, name) in [
            ("prog_from_pod", "test_from_pod"),
            ("prog_to_pod", "test_to_pod"),
        ] {
            if !pins.join(file).exists() {
                pin_trivial_classifier(&pins.join(file), name);
            }
        }
    }

    pub fn unpin_programs(&self) {
        let _ = std::fs::remove_file(self.dir().join("sluice/prog_from_pod"));
        let _ = std::fs::remove_file(self.dir().join("sluice/prog_to_pod"));
    }
}

/// Pins a classifier that passes everything (TC_ACT_OK) at `path`.
pub fn pin_trivial_classifier(path: &Path, name: &str) {
    TrivialProgram::load(ProgType::SchedCls, name)
        .and_then(|p| p.pin(path))
        .unwrap_or_else(|e| panic!("pinning a trivial classifier at {}: {e}", path.display()));
}

/// The plugin's reply.
#[derive(Debug)]
pub struct Reply {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
    pub json: Option<Value>,
}

impl Reply {
    /// The CNI error code, or 0 on success.
    pub fn code(&self) -> u64 {
        if self.ok {
            0
        } else {
            self.json
                .as_ref()
                .and_then(|j| j["code"].as_u64())
                .unwrap_or(u64::MAX)
        }
    }

    #[track_caller]
    pub fn expect_ok(&self) -> &Self {
        assert!(
            self.ok,
            "plugin failed: {} / stderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn expect_code(&self, code: u64) -> &Self {
        assert!(
            !self.ok,
            "expected error {code}, got success: {}",
            self.stdout
        );
        assert_eq!(
            self.code(),
            code,
            "stdout: {} / stderr: {}",
            self.stdout,
            self.stderr
        );
        self
    }

    pub fn result(&self) -> Value {
        self.json.clone().expect("reply JSON")
    }
}

/// The environment of one invocation.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    pub vars: Vec<(String, String)>,
    pub stdin: Vec<u8>,
}

impl Invocation {
    pub fn new(command: &str, conf: &Value) -> Self {
        Invocation {
            vars: vec![
                ("CNI_COMMAND".into(), command.into()),
                ("CNI_PATH".into(), "/usr/lib/cni".into()),
            ],
            stdin: serde_json::to_vec(conf).unwrap(),
        }
    }

    pub fn attachment(mut self, cid: &str, netns: &str, ifname: &str) -> Self {
        self.vars.push(("CNI_CONTAINERID".into(), cid.into()));
        self.vars.push(("CNI_NETNS".into(), netns.into()));
        self.vars.push(("CNI_IFNAME".into(), ifname.into()));
        self
    }

    /// Starts `bin` inside `node`'s network namespace (and nothing else:
    /// the test's bpffs stays visible).
    pub fn spawn_bin(&self, bin: &str, node: &NetNs) -> Child {
        let mut cmd = node.command_entering(bin).expect("open node netns");
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn plugin");
        let mut stdin = child.stdin.take().unwrap();
        // A plugin that exits early closes the pipe; that is its business.
        let _ = stdin.write_all(&self.stdin);
        drop(stdin);
        child
    }

    pub fn spawn(&self, node: &NetNs) -> Child {
        self.spawn_bin(BIN, node)
    }

    pub fn run_bin(&self, bin: &str, node: &NetNs) -> Reply {
        let child = self.spawn_bin(bin, node);
        let out = wait_with_timeout(child, Duration::from_secs(60));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let json = serde_json::from_str(&stdout).ok();
        Reply {
            ok: out.status.success(),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            json,
        }
    }

    pub fn run(&self, node: &NetNs) -> Reply {
        self.run_bin(BIN, node)
    }
}

/// Waits for a child, killing it (and failing the test) after `limit`.
pub fn wait_with_timeout(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait().expect("try_wait") {
            Some(_) => return child.wait_with_output().expect("wait"),
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("wait");
                panic!(
                    "plugin hung for {limit:?}; stderr: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            None => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// A simulated node: its namespace, state directory and bpffs.
pub struct Node {
    pub ns: NetNs,
    pub state: tempfile::TempDir,
    pub bpf: BpfFs,
    pub pod_cidr: String,
    pub cni_version: String,
    pub mtu: u32,
}

impl Node {
    /// A node whose datapath pins exist.
    pub fn new(tag: &str, pod_cidr: &str) -> Self {
        let node = Self::without_pins(tag, pod_cidr);
        node.bpf.pin_programs();
        node
    }

    pub fn without_pins(tag: &str, pod_cidr: &str) -> Self {
        Node {
            ns: NetNs::new(tag).unwrap(),
            state: tempfile::Builder::new()
                .prefix("slcni-state")
                .tempdir()
                .expect("tempdir"),
            bpf: BpfFs::new(),
            pod_cidr: pod_cidr.to_owned(),
            cni_version: "1.1.0".into(),
            mtu: 1450,
        }
    }

    pub fn conf(&self) -> Value {
        json!({
            "cniVersion": self.cni_version,
            "name": "sluice",
            "type": "sluice-cni",
            "podCIDR": self.pod_cidr,
            "mtu": self.mtu,
            "stateDir": self.state.path(),
            "bpffs": self.bpf.dir(),
            "logFile": self.state.path().join("cni.log"),
        })
    }

    pub fn invoke(&self, command: &str, cid: &str, netns: &str, ifname: &str) -> Reply {
        Invocation::new(command, &self.conf())
            .attachment(cid, netns, ifname)
            .run(&self.ns)
    }

    pub fn add(&self, cid: &str, pod: &NetNs) -> Reply {
        self.invoke("ADD", cid, &pod.path_str(), "eth0")
    }

    pub fn del(&self, cid: &str, pod: &NetNs) -> Reply {
        self.invoke("DEL", cid, &pod.path_str(), "eth0")
    }

    pub fn check(&self, cid: &str, pod: &NetNs, prev: &Value) -> Reply {
        let mut conf = self.conf();
        conf["prevResult"] = prev.clone();
        Invocation::new("CHECK", &conf)
            .attachment(cid, &pod.path_str(), "eth0")
            .run(&self.ns)
    }

    pub fn status(&self) -> Reply {
        Invocation::new("STATUS", &self.conf()).run(&self.ns)
    }

    pub fn gc(&self, valid: &[(&str, &str)]) -> Reply {
        let mut conf = self.conf();
        conf["cni.dev/valid-attachments"] = valid
            .iter()
            .map(|(c, i)| json!({"containerID": c, "ifname": i}))
            .collect();
        Invocation::new("GC", &conf).run(&self.ns)
    }

    pub fn allocations(&self) -> Vec<Allocation> {
        IpamStore::open(self.state.path().join("ipam/sluice"))
            .unwrap()
            .allocations()
            .unwrap()
    }

    /// Host-side pod veths in the node namespace.
    pub fn host_veths(&self) -> Vec<String> {
        self.ns
            .link_names()
            .into_iter()
            .filter(|n| sluice_net::pods::is_host_veth_name(n))
            .collect()
    }

    /// Files in the IPAM directory (lock and state only when clean).
    pub fn ipam_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.state.path().join("ipam/sluice"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Asserts no reservation, no pod veth and no temp file is left.
    #[track_caller]
    pub fn assert_clean(&self) {
        assert_eq!(self.allocations(), vec![], "leaked reservations");
        assert_eq!(self.host_veths(), Vec::<String>::new(), "leaked host veths");
        let files = self.ipam_files();
        assert!(
            files.iter().all(|f| f == "lock" || f == "allocations.json"),
            "stray IPAM files: {files:?}"
        );
    }
}

/// The pod's address (with prefix) from an ADD result.
pub fn result_ip(result: &Value) -> String {
    result["ips"][0]["address"]
        .as_str()
        .expect("ips[0].address")
        .to_owned()
}

pub fn result_addr(result: &Value) -> String {
    result_ip(result).split('/').next().unwrap().to_owned()
}
