//! Test harness: network namespaces as hosts, a private bpffs with trivial
//! pinned programs, and the real `sluice-cni` binary run inside a "node"
//! namespace the way a container runtime runs it.
//!
//! Safety: nothing here touches the root network namespace. Every address,
//! link, route and TC filter lives in a `slcni-<pid>-...` namespace; the
//! plugin process enters the node namespace before exec. Guards clean up on
//! drop, also when a test fails; leftovers of killed test runs (dead pid in
//! the name) are removed at the first use.
#![allow(dead_code)]

use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_cni::ipam::{Allocation, IpamStore};

pub const BIN: &str = env!("CARGO_BIN_EXE_sluice-cni");
const PREFIX: &str = "slcni";
/// Our corner of the project-wide test run directory.
const BPFFS_ROOT: &str = "/run/sluice-test/cni";

static COUNTER: AtomicUsize = AtomicUsize::new(0);
/// `ip netns add` sets up /run/netns on first use; serialize to avoid racing it.
static NETNS_LOCK: Mutex<()> = Mutex::new(());
static SWEEP: Once = Once::new();

fn unique(tag: &str) -> String {
    format!(
        "{PREFIX}-{}-{tag}{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a command, panicking with its output if it fails.
pub fn sh(cmd: &str, args: &[&str]) -> Output {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes namespaces and bpffs mounts left by test processes that died.
fn sweep_leftovers() {
    SWEEP.call_once(|| {
        let out = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip netns list");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            let Some(rest) = name.strip_prefix(&format!("{PREFIX}-")) else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if !pid_alive(pid) {
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
        if let Ok(dir) = std::fs::read_dir(BPFFS_ROOT) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(pid) = name.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                    continue;
                };
                if !pid_alive(pid) {
                    let _ = Command::new("umount").arg(e.path()).status();
                    // Not remove_dir_all: if the umount failed, that would
                    // descend into the still-mounted bpffs.
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
    });
}

/// A network namespace acting as a host. Deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        sweep_leftovers();
        let name = unique(tag);
        {
            let _g = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            sh("ip", &["netns", "add", &name]);
        }
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    pub fn path_str(&self) -> String {
        self.path().display().to_string()
    }

    /// `ip -n <ns> ...`
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        sh("ip", &a)
    }

    /// `ip -n <ns> -j ...` parsed.
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let mut a = vec!["-j"];
        a.extend_from_slice(args);
        let out = self.ip(&a);
        if out.stdout.iter().all(|b| b.is_ascii_whitespace()) {
            return json!([]);
        }
        serde_json::from_slice(&out.stdout).expect("ip -j output")
    }

    /// Runs a program inside the namespace, returns its output (no assert).
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut a = vec!["netns", "exec", self.name.as_str()];
        a.extend_from_slice(args);
        Command::new("ip").args(&a).output().expect("ip netns exec")
    }

    pub fn ping(&self, ip: &str) -> bool {
        self.exec(&["ping", "-c", "1", "-W", "2", "-q", ip])
            .status
            .success()
    }

    pub fn link_names(&self) -> Vec<String> {
        self.ip_json(&["link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_owned())
            .collect()
    }

    pub fn link(&self, name: &str) -> Value {
        self.ip_json(&["-d", "link", "show", "dev", name])[0].clone()
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = File::open(self.path()).expect("open netns");
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .expect("netns thread")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _g = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A private bpffs mount under /run/sluice-test/cni, unmounted on drop.
pub struct BpfFs {
    pub dir: PathBuf,
}

impl BpfFs {
    pub fn new() -> Self {
        sweep_leftovers();
        let dir = PathBuf::from(BPFFS_ROOT).join(format!(
            "{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create bpffs dir");
        sh("mount", &["-t", "bpf", "bpf", dir.to_str().unwrap()]);
        BpfFs { dir }
    }

    /// Pins trivial classifiers as `<dir>/sluice/prog_from_pod` and `prog_to_pod`.
    pub fn pin_programs(&self) {
        let pins = self.dir.join("sluice");
        std::fs::create_dir_all(&pins).unwrap();
        pin_trivial_classifier(&pins.join("prog_from_pod"), "test_from_pod");
        pin_trivial_classifier(&pins.join("prog_to_pod"), "test_to_pod");
    }

    /// Pins whichever of the two programs is not pinned yet.
    pub fn pin_programs_missing_only(&self) {
        let pins = self.dir.join("sluice");
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
        let _ = std::fs::remove_file(self.dir.join("sluice/prog_from_pod"));
        let _ = std::fs::remove_file(self.dir.join("sluice/prog_to_pod"));
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
struct BpfInsn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    // The kernel requires every byte past the fields it knows to be zero.
    pad: [u8; 64],
}

#[repr(C)]
struct ObjPinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    pad: [u8; 64],
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

/// Loads `r0 = 0 (TC_ACT_OK); exit` as a SCHED_CLS program and pins it.
pub fn pin_trivial_classifier(path: &Path, name: &str) {
    let insns = [
        BpfInsn {
            code: 0xb7,
            regs: 0,
            off: 0,
            imm: 0,
        }, // mov64 r0, 0
        BpfInsn {
            code: 0x95,
            regs: 0,
            off: 0,
            imm: 0,
        }, // exit
    ];
    let license = c"GPL";
    let mut prog_name = [0u8; 16];
    prog_name[..name.len()].copy_from_slice(name.as_bytes());
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name,
        pad: [0; 64],
    };
    // SAFETY: attr and the memory it points to outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>(),
        )
    };
    assert!(
        fd >= 0,
        "BPF_PROG_LOAD: {}",
        std::io::Error::last_os_error()
    );
    let cpath = CString::new(path.as_os_str().as_bytes()).unwrap();
    let pin = ObjPinAttr {
        pathname: cpath.as_ptr() as u64,
        bpf_fd: fd as u32,
        file_flags: 0,
        pad: [0; 64],
    };
    // SAFETY: as above.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            &pin as *const ObjPinAttr,
            std::mem::size_of::<ObjPinAttr>(),
        )
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: fd came from the kernel above; the pin keeps the program.
    unsafe { libc::close(fd as i32) };
    assert_eq!(rc, 0, "BPF_OBJ_PIN {}: {err}", path.display());
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
    /// same mount namespace, so the test's bpffs is visible).
    pub fn spawn_bin(&self, bin: &str, node: &Netns) -> Child {
        let ns = File::open(node.path()).expect("open node netns");
        let fd = ns.as_raw_fd();
        let mut cmd = Command::new(bin);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: setns(2) is async-signal-safe; `ns` stays open in the
        // parent until spawn returns (and is close-on-exec in the child).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn plugin");
        drop(ns);
        let mut stdin = child.stdin.take().unwrap();
        // A plugin that exits early closes the pipe; that is its business.
        let _ = stdin.write_all(&self.stdin);
        drop(stdin);
        child
    }

    pub fn spawn(&self, node: &Netns) -> Child {
        self.spawn_bin(BIN, node)
    }

    pub fn run_bin(&self, bin: &str, node: &Netns) -> Reply {
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

    pub fn run(&self, node: &Netns) -> Reply {
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
    pub ns: Netns,
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
            ns: Netns::new(tag),
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
            "bpffs": self.bpf.dir,
            "logFile": self.state.path().join("cni.log"),
        })
    }

    pub fn invoke(&self, command: &str, cid: &str, netns: &str, ifname: &str) -> Reply {
        Invocation::new(command, &self.conf())
            .attachment(cid, netns, ifname)
            .run(&self.ns)
    }

    pub fn add(&self, cid: &str, pod: &Netns) -> Reply {
        self.invoke("ADD", cid, &pod.path_str(), "eth0")
    }

    pub fn del(&self, cid: &str, pod: &Netns) -> Reply {
        self.invoke("DEL", cid, &pod.path_str(), "eth0")
    }

    pub fn check(&self, cid: &str, pod: &Netns, prev: &Value) -> Reply {
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
