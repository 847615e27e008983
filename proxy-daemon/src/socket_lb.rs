//! Socket load balancing as the daemon sets it up: which cgroup the socket
//! programs attach to, which sockets they act on, and the record of it
//! that `sluicectl socket-lb` reads.

use std::{
    io,
    path::{Path, PathBuf},
};

use proxy_common::{
    SockConfig,
    socket::{SOCK_CONFIG_VERSION, SOCK_LB_ALL, SOCK_LB_HOST, SOCK_LB_OFF},
};
use serde::{Deserialize, Serialize};

/// Which sockets are load balanced when they connect or send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Only the sockets of the daemon's network namespace: the node's own
    /// processes and hostNetwork pods. Pods keep the TC path.
    Host,
    /// Every socket of the cgroup, pods included: a pod's Service
    /// connection then needs no per-packet translation at all.
    All,
    /// None: the programs are detached.
    Off,
}

impl Scope {
    pub fn config(self, netns_cookie: u64) -> SockConfig {
        SockConfig {
            version: SOCK_CONFIG_VERSION,
            mode: match self {
                Self::Host => SOCK_LB_HOST,
                Self::All => SOCK_LB_ALL,
                Self::Off => SOCK_LB_OFF,
            },
            netns_cookie,
        }
    }

    pub fn from_mode(mode: u32) -> Option<Self> {
        Some(match mode {
            SOCK_LB_HOST => Self::Host,
            SOCK_LB_ALL => Self::All,
            SOCK_LB_OFF => Self::Off,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::All => "all",
            Self::Off => "off",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "{path} is not on a cgroup2 filesystem (socket programs attach to cgroup v2 only){hint}"
    )]
    NotCgroup2 { path: PathBuf, hint: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Where Sluice mounts a cgroup2 hierarchy when the host has none (as
/// Cilium does under /run/cilium/cgroupv2).
pub const OWN_CGROUP2_MOUNT: &str = "/run/sluice/cgroupv2";

/// The cgroup the socket programs attach to: `explicit` if given (it must
/// be on cgroup2), else the host's cgroup2 mount (`/sys/fs/cgroup` on
/// unified hosts, `/sys/fs/cgroup/unified` on hybrid ones), else one
/// mounted at [`OWN_CGROUP2_MOUNT`].
pub fn resolve_cgroup(explicit: Option<&Path>) -> Result<PathBuf, CgroupError> {
    if let Some(path) = explicit {
        if is_cgroup2(path)? {
            return Ok(path.to_owned());
        }
        // A hybrid host (cgroup v1 controllers, v2 beside them) keeps its
        // v2 hierarchy one level down.
        let unified = path.join("unified");
        let hint = if is_cgroup2(&unified).unwrap_or(false) {
            format!(
                "; this is a hybrid layout whose cgroup2 hierarchy is {}",
                unified.display()
            )
        } else {
            String::new()
        };
        return Err(CgroupError::NotCgroup2 {
            path: path.to_owned(),
            hint,
        });
    }
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").map_err(|source| CgroupError::Io {
            path: "/proc/self/mounts".into(),
            source,
        })?;
    if let Some(found) = cgroup2_mounts(&mounts).into_iter().next() {
        return Ok(found);
    }
    let own = PathBuf::from(OWN_CGROUP2_MOUNT);
    mount_cgroup2(&own)?;
    Ok(own)
}

/// cgroup2 mount points listed in a mounts table, in order.
pub fn cgroup2_mounts(mounts: &str) -> Vec<PathBuf> {
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount(target)))
        })
        .collect()
}

/// Undoes the octal escapes the kernel writes for spaces and the like.
fn unescape_mount(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(oct) = s.get(i + 1..i + 4)
            && let Ok(v) = u8::from_str_radix(oct, 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_cgroup2(path: &Path) -> Result<bool, CgroupError> {
    let io_err = |source| CgroupError::Io {
        path: path.to_owned(),
        source,
    };
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io_err(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    // SAFETY: statfs is plain data; all zeroes is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a writable statfs.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io_err(io::Error::last_os_error()));
    }
    Ok(st.f_type as i64 == CGROUP2_SUPER_MAGIC)
}

fn mount_cgroup2(at: &Path) -> Result<(), CgroupError> {
    let io_err = |source| CgroupError::Io {
        path: at.to_owned(),
        source,
    };
    std::fs::create_dir_all(at).map_err(io_err)?;
    if is_cgroup2(at)? {
        return Ok(());
    }
    let target = std::ffi::CString::new(at.as_os_str().as_encoded_bytes())
        .map_err(|e| io_err(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    // SAFETY: NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            c"none".as_ptr(),
            target.as_ptr(),
            c"cgroup2".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io_err(io::Error::last_os_error()));
    }
    Ok(())
}

/// Every IPv4 address (InternalIP, ExternalIP) of the cluster's nodes:
/// where a socket's NodePort is translated. Nodes without a usable
/// address are left out (they are logged where they matter, the overlay).
pub fn cluster_node_addrs<'a>(
    nodes: impl IntoIterator<Item = &'a k8s_openapi::api::core::v1::Node>,
) -> std::collections::BTreeSet<std::net::Ipv4Addr> {
    nodes
        .into_iter()
        .filter_map(|n| crate::model::node_info(n).ok())
        .flat_map(|info| info.addresses)
        .collect()
}

/// The sockets socket load balancing connected to one of `gone`: cookies
/// of the reverse entries naming those backends (a walk of
/// `sluice_sockrev4_v1`, done only when UDP backends went).
pub fn sockets_of(
    maps: &crate::datapath::PinnedMaps,
    gone: &[std::net::SocketAddrV4],
) -> std::collections::BTreeSet<u64> {
    use proxy_common::codec::nbo;
    let wanted: std::collections::BTreeSet<(u32, u16)> = gone
        .iter()
        .map(|a| (nbo(*a.ip()), a.port().to_be()))
        .collect();
    maps.sock_rev
        .keys()
        .filter_map(Result::ok)
        .filter(|k| wanted.contains(&(k.addr, k.port)))
        .map(|k| k.cookie)
        .collect()
}

/// Destroys the UDP sockets with one of `cookies` connected to `gone`
/// (backends that left their Services): in the daemon's namespace, and
/// with [`Scope::All`] in every other namespace a task of this machine is
/// in. The owner's next send fails (EDESTADDRREQ) or its receive gets
/// ECONNABORTED; a DNS client retries on a new or reconnected socket,
/// which is balanced to a live backend. Returns the sockets destroyed and
/// the namespaces that could not be searched.
pub fn destroy_connected_udp(
    scope: Scope,
    gone: &[std::net::SocketAddrV4],
    cookies: &std::collections::BTreeSet<u64>,
) -> (usize, Vec<String>) {
    use sluice_net::sockets::{destroy_udp_matching, destroy_udp_matching_in};
    let mut destroyed = 0;
    let mut failed = Vec::new();
    if scope == Scope::Off || gone.is_empty() || cookies.is_empty() {
        return (0, failed);
    }
    match destroy_udp_matching(gone, Some(cookies)) {
        Ok(n) => destroyed += n,
        Err(e) => failed.push(format!("own namespace: {e}")),
    }
    if scope == Scope::All {
        for (path, file) in other_namespaces() {
            match destroy_udp_matching_in(&file, gone, Some(cookies)) {
                Ok(n) => destroyed += n,
                Err(e) => failed.push(format!("{path}: {e}")),
            }
        }
    }
    (destroyed, failed)
}

/// One open handle on every network namespace a task of this machine is
/// in, but the caller's own; a task that exits meanwhile is skipped.
fn other_namespaces() -> Vec<(String, std::fs::File)> {
    use std::os::unix::fs::MetadataExt;
    let own = std::fs::metadata("/proc/thread-self/ns/net").map(|m| (m.dev(), m.ino()));
    let mut seen = std::collections::BTreeSet::new();
    if let Ok(own) = own {
        seen.insert(own);
    }
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for proc_entry in procs.flatten() {
        let name = proc_entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(tasks) = std::fs::read_dir(proc_entry.path().join("task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let path = task.path().join("ns/net");
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            if let Ok(file) = std::fs::File::open(&path) {
                out.push((path.display().to_string(), file));
            }
        }
    }
    out
}

/// What the daemon set up, for `sluicectl socket-lb`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketLbMeta {
    pub scope: Scope,
    /// The cgroup the programs are attached to (`None` when off).
    pub cgroup: Option<PathBuf>,
    /// The daemon's network namespace cookie (`host` scope acts on it).
    pub netns_cookie: u64,
}

pub const SOCKET_LB_FILE: &str = "socket-lb.json";

pub fn write_meta(state_dir: &Path, meta: &SocketLbMeta) -> io::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    let path = state_dir.join(SOCKET_LB_FILE);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(meta).map_err(io::Error::other)?,
    )?;
    std::fs::rename(&tmp, &path)
}

pub fn read_meta(state_dir: &Path) -> io::Result<SocketLbMeta> {
    let bytes = std::fs::read(state_dir.join(SOCKET_LB_FILE))?;
    serde_json::from_slice(&bytes).map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_on_hybrid_and_unified_hosts() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_mounts(hybrid),
            vec![PathBuf::from("/sys/fs/cgroup/unified")]
        );
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(
            cgroup2_mounts(unified),
            vec![PathBuf::from("/sys/fs/cgroup")]
        );
        assert!(cgroup2_mounts("proc /proc proc rw 0 0\ncgroup /x cgroup rw 0 0\n").is_empty());
        let escaped = "none /run/my\\040cg cgroup2 rw 0 0\n";
        assert_eq!(cgroup2_mounts(escaped), vec![PathBuf::from("/run/my cg")]);
    }

    #[test]
    fn a_path_off_cgroup2_is_refused_with_a_reason() {
        // /proc is procfs, never cgroup2.
        let err = resolve_cgroup(Some(Path::new("/proc"))).unwrap_err();
        assert!(matches!(err, CgroupError::NotCgroup2 { .. }), "{err}");
        assert!(err.to_string().contains("not on a cgroup2 filesystem"));
    }

    #[test]
    fn node_addresses_are_every_nodes_internal_and_external_ipv4() {
        let node = |name: &str, addrs: &[(&str, &str)]| -> k8s_openapi::api::core::v1::Node {
            let addresses: Vec<_> = addrs
                .iter()
                .map(|(t, a)| serde_json::json!({"type": t, "address": a}))
                .collect();
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "spec": {"podCIDR": "10.244.1.0/24"},
                "status": {"addresses": addresses},
            }))
            .unwrap()
        };
        let nodes = [
            node(
                "a",
                &[
                    ("InternalIP", "10.0.0.1"),
                    ("ExternalIP", "203.0.113.1"),
                    ("Hostname", "a"),
                ],
            ),
            node(
                "b",
                &[("InternalIP", "10.0.0.2"), ("InternalIP", "fd00::2")],
            ),
            node("c", &[("Hostname", "c")]),
        ];
        let got: Vec<String> = cluster_node_addrs(&nodes)
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(got, ["10.0.0.1", "10.0.0.2", "203.0.113.1"]);
    }

    #[test]
    fn scope_round_trips_through_the_map_mode() {
        for scope in [Scope::Host, Scope::All, Scope::Off] {
            let cfg = scope.config(7);
            assert_eq!(cfg.version, SOCK_CONFIG_VERSION);
            assert_eq!(Scope::from_mode(cfg.mode), Some(scope));
        }
        assert_eq!(Scope::from_mode(99), None);
    }
}
