//! The plugin's network configuration ([`NetConf`]) and the conflist the node
//! daemon writes.
//!
//! `NetConf` is the single source of truth for the configuration format:
//! `sluiced` serializes this very type, the plugin deserializes it, so the two
//! cannot drift apart. Runtime-injected keys (`prevResult`, `runtimeConfig`,
//! `cni.dev/valid-attachments`, ...) are not part of it and are read from the
//! raw JSON object by the command handlers.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::error::{CniError, code};
use super::version::CniVersion;

/// Network name the daemon writes into its conflist.
pub const NETWORK_NAME: &str = "sluice";
/// The plugin's CNI `type` (its executable name).
pub const PLUGIN_TYPE: &str = "sluice-cni";
pub use crate::pods::DEFAULT_BRIDGE;
pub const DEFAULT_MTU: u32 = 1500;
pub const DEFAULT_STATE_DIR: &str = "/var/lib/sluice";
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";
/// The `cniVersion` the daemon writes by default. Runtimes built on libcni
/// before 1.2 (containerd 1.6 and 1.7, podman 4, CRI-O before 1.31) use it
/// as it is and cannot decode a 1.1.0 result; newer ones pick the highest
/// version of the list's `cniVersions` (see [`conflist`]), 1.1.0, which has
/// STATUS and GC.
pub const DEFAULT_CNI_VERSION: CniVersion = CniVersion::V1_0_0;

/// MTU bounds: 576 is the smallest datagram every IPv4 host must accept;
/// 65535 is the largest MTU a veth or bridge takes.
pub const MIN_MTU: u32 = 576;
pub const MAX_MTU: u32 = 65535;

/// The sluice-cni plugin configuration, as found in the conflist's plugin
/// entry (with `cniVersion` and `name` injected by the runtime).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type", default = "default_type")]
    pub plugin_type: String,
    /// Bridge the pod veths are attached to; it carries the gateway address.
    #[serde(default = "default_bridge")]
    pub bridge: String,
    /// This node's pod CIDR; the first host address is the gateway.
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Ipv4Network,
    /// The cluster-wide pod CIDR. Carried for the daemon (masquerade lives
    /// in the datapath); the plugin only checks it contains `podCIDR`.
    #[serde(
        rename = "clusterCIDR",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cluster_cidr: Option<Ipv4Network>,
    /// MTU of the bridge and of both ends of every pod veth.
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    /// The IPAM store lives under `<stateDir>/ipam/<network name>/`; the
    /// daemon's liveness lock is `<stateDir>/sluiced.lock`.
    #[serde(rename = "stateDir", default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// bpffs mount; pinned programs are under `<bpffs>/sluice/`.
    #[serde(default = "default_bpffs")]
    pub bpffs: PathBuf,
    /// Log file; stderr when absent. Never stdout (that is the CNI reply).
    #[serde(rename = "logFile", default, skip_serializing_if = "Option::is_none")]
    pub log_file: Option<PathBuf>,
}

fn default_type() -> String {
    PLUGIN_TYPE.to_owned()
}
fn default_bridge() -> String {
    DEFAULT_BRIDGE.to_owned()
}
fn default_mtu() -> u32 {
    DEFAULT_MTU
}
fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}
fn default_bpffs() -> PathBuf {
    PathBuf::from(DEFAULT_BPFFS)
}

impl NetConf {
    /// A configuration with every default, for the given pod CIDR.
    pub fn new(pod_cidr: Ipv4Network) -> Self {
        Self {
            cni_version: DEFAULT_CNI_VERSION.as_str().to_owned(),
            name: NETWORK_NAME.to_owned(),
            plugin_type: PLUGIN_TYPE.to_owned(),
            bridge: DEFAULT_BRIDGE.to_owned(),
            pod_cidr,
            cluster_cidr: None,
            mtu: DEFAULT_MTU,
            state_dir: default_state_dir(),
            bpffs: default_bpffs(),
            log_file: None,
        }
    }

    /// Reads the configuration out of the decoded stdin object. Unknown keys
    /// are ignored (runtimes add their own); a key we cannot honour is not.
    pub fn from_object(obj: &Map<String, Value>) -> Result<Self, CniError> {
        if obj.contains_key("ipam") {
            return Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                "unsupported field \"ipam\": sluice-cni allocates from podCIDR itself",
            ));
        }
        let conf: NetConf = serde_json::from_value(Value::Object(obj.clone())).map_err(|e| {
            CniError::new(code::INVALID_CONFIG, "invalid network configuration")
                .with_details(e.to_string())
        })?;
        conf.validate()?;
        Ok(conf)
    }

    /// Checks every value; the error names the offending field.
    pub fn validate(&self) -> Result<(), CniError> {
        let invalid = |msg: String| Err(CniError::new(code::INVALID_CONFIG, msg));
        if CniVersion::parse(&self.cni_version).is_none() {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("unsupported cniVersion {:?}", self.cni_version),
            ));
        }
        if !valid_network_name(&self.name) {
            return invalid(format!(
                "invalid network name {:?}: must match [a-zA-Z0-9][a-zA-Z0-9_.-]*",
                self.name
            ));
        }
        if let Err(why) = check_ifname(&self.bridge) {
            return invalid(format!("invalid bridge name {:?}: {why}", self.bridge));
        }
        if self.pod_cidr.network() != self.pod_cidr.ip() {
            return invalid(format!(
                "podCIDR {} has host bits set (did you mean {}/{}?)",
                self.pod_cidr,
                self.pod_cidr.network(),
                self.pod_cidr.prefix()
            ));
        }
        if self.pod_cidr.prefix() < 8 {
            return invalid(format!(
                "podCIDR {} is larger than a /8: not a node's pod range",
                self.pod_cidr
            ));
        }
        if self.pod_cidr.prefix() > 30 {
            return invalid(format!(
                "podCIDR {} is too small: a /30 is the smallest with a gateway and a pod",
                self.pod_cidr
            ));
        }
        if let Some(cluster) = self.cluster_cidr {
            if cluster.network() != cluster.ip() {
                return invalid(format!("clusterCIDR {cluster} has host bits set"));
            }
            if !self.pod_cidr.is_subnet_of(cluster) {
                return invalid(format!(
                    "podCIDR {} is not inside clusterCIDR {cluster}",
                    self.pod_cidr
                ));
            }
        }
        if !(MIN_MTU..=MAX_MTU).contains(&self.mtu) {
            return invalid(format!("mtu {} is outside {MIN_MTU}..={MAX_MTU}", self.mtu));
        }
        check_path("stateDir", &self.state_dir)?;
        check_path("bpffs", &self.bpffs)?;
        if let Some(log) = &self.log_file {
            check_path("logFile", log)?;
        }
        Ok(())
    }

    pub fn version(&self) -> Option<CniVersion> {
        CniVersion::parse(&self.cni_version)
    }

    /// The gateway: the first host address of the pod CIDR, on the bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.pod_cidr.network()).wrapping_add(1))
    }

    /// The IPAM store directory for this network.
    pub fn ipam_dir(&self) -> PathBuf {
        self.state_dir.join("ipam").join(&self.name)
    }
}

/// The conflist the daemon installs (e.g. `/etc/cni/net.d/10-sluice.conflist`).
/// `cniVersion` and `name` live at the list level; runtimes inject them into
/// each plugin's configuration. `cniVersion` is the entry's own version;
/// `cniVersions` lists it and every newer version the plugin speaks, so a
/// runtime that reads the list (libcni 1.2 and later; SPEC 1.1: "select the
/// highest supported version") gets the newest it knows, and one that does
/// not still gets a version it can decode.
pub fn conflist(netconf: &NetConf) -> Value {
    let mut plugin = match serde_json::to_value(netconf) {
        Ok(Value::Object(map)) => map,
        // NetConf is a plain struct of strings, numbers and paths that came
        // from strings: it always serializes to an object.
        _ => Map::new(),
    };
    plugin.remove("cniVersion");
    plugin.remove("name");
    let versions: Vec<&str> = netconf.version().map_or_else(Vec::new, |v| {
        crate::cni::version::SUPPORTED
            .iter()
            .filter(|s| **s >= v)
            .map(|s| s.as_str())
            .collect()
    });
    json!({
        "cniVersion": netconf.cni_version,
        "cniVersions": versions,
        "name": netconf.name,
        "plugins": [Value::Object(plugin)],
    })
}

/// The spec's network name rule; it also keeps the name safe as a directory.
pub fn valid_network_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Linux interface name rules (the spec repeats them for `CNI_IFNAME`).
pub fn check_ifname(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > 15 {
        return Err("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return Err("\".\" and \"..\" are reserved");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        return Err("contains '/', ':', NUL or whitespace");
    }
    Ok(())
}

fn check_path(field: &str, path: &Path) -> Result<(), CniError> {
    use std::os::unix::ffi::OsStrExt;
    // A NUL would make every syscall on the path fail (and some libraries
    // panic building a C string); a relative path would depend on the
    // runtime's working directory.
    if !path.is_absolute() || path.as_os_str().as_bytes().contains(&0) {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("{field} must be an absolute path without NUL bytes, got {path:?}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    fn minimal() -> Value {
        json!({"cniVersion": "1.0.0", "name": "sluice", "type": "sluice-cni", "podCIDR": "10.244.1.0/24"})
    }

    #[test]
    fn defaults_apply() {
        let c = NetConf::from_object(&obj(minimal())).unwrap();
        assert_eq!(c.bridge, "sluice0");
        assert_eq!(c.mtu, 1500);
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/sluice"));
        assert_eq!(c.bpffs, PathBuf::from("/sys/fs/bpf"));
        assert_eq!(c.log_file, None);
        assert_eq!(c.cluster_cidr, None);
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(c.ipam_dir(), PathBuf::from("/var/lib/sluice/ipam/sluice"));
        assert_eq!(c.version(), Some(CniVersion::V1_0_0));
    }

    #[test]
    fn full_config_parses_and_ignores_runtime_keys() {
        let v = json!({
            "cniVersion": "1.1.0", "name": "sluice", "type": "sluice-cni",
            "bridge": "br-x", "podCIDR": "10.244.1.0/24", "clusterCIDR": "10.244.0.0/16",
            "mtu": 1450, "stateDir": "/tmp/s", "bpffs": "/run/bpf", "logFile": "/var/log/x.log",
            "prevResult": {"cniVersion": "1.1.0"}, "runtimeConfig": {"portMappings": []},
            "cni.dev/valid-attachments": [], "capabilities": {"portMappings": true}
        });
        let c = NetConf::from_object(&obj(v)).unwrap();
        assert_eq!(c.bridge, "br-x");
        assert_eq!(c.mtu, 1450);
        assert_eq!(c.cluster_cidr, Some("10.244.0.0/16".parse().unwrap()));
        assert_eq!(c.log_file, Some(PathBuf::from("/var/log/x.log")));
    }

    fn err_code(v: Value) -> u32 {
        NetConf::from_object(&obj(v)).unwrap_err().code
    }

    fn with(key: &str, val: Value) -> Value {
        let mut v = minimal();
        v[key] = val;
        v
    }

    #[test]
    fn invalid_values_are_code_7() {
        for (k, v) in [
            ("podCIDR", json!("10.244.1.0")),
            ("podCIDR", json!("10.244.1.0/33")),
            ("podCIDR", json!("10.244.1.5/24")),
            ("podCIDR", json!("10.244.1.0/31")),
            ("podCIDR", json!("0.0.0.0/0")),
            ("podCIDR", json!("10.0.0.0/7")),
            ("podCIDR", json!("fd00::/64")),
            ("podCIDR", json!(42)),
            ("clusterCIDR", json!("10.245.0.0/16")),
            ("clusterCIDR", json!("10.244.0.1/16")),
            ("mtu", json!(100)),
            ("mtu", json!(70000)),
            ("mtu", json!(-1)),
            ("mtu", json!("1500")),
            ("bridge", json!("")),
            ("bridge", json!("a-very-long-bridge-name")),
            ("bridge", json!("br 0")),
            ("bridge", json!("br/0")),
            ("name", json!("../etc")),
            ("name", json!("")),
            ("name", json!(".hidden")),
            ("stateDir", json!("relative/dir")),
            ("stateDir", json!("/var/lib/\u{0}x")),
            ("bpffs", json!("")),
            ("logFile", json!("log.txt")),
        ] {
            assert_eq!(
                err_code(with(k, v.clone())),
                code::INVALID_CONFIG,
                "{k}={v}"
            );
        }
        let mut missing = minimal();
        missing.as_object_mut().unwrap().remove("podCIDR");
        assert_eq!(err_code(missing), code::INVALID_CONFIG);
        let mut missing = minimal();
        missing.as_object_mut().unwrap().remove("name");
        assert_eq!(err_code(missing), code::INVALID_CONFIG);
    }

    #[test]
    fn unsupported_things() {
        assert_eq!(
            err_code(with("ipam", json!({"type": "host-local"}))),
            code::UNSUPPORTED_FIELD
        );
        assert_eq!(
            err_code(with("cniVersion", json!("0.2.0"))),
            code::INCOMPATIBLE_VERSION
        );
    }

    #[test]
    fn smallest_pool_is_a_slash_30() {
        assert!(NetConf::from_object(&obj(with("podCIDR", json!("10.0.0.0/30")))).is_ok());
    }

    #[test]
    fn conflist_round_trips_through_the_plugin_entry() {
        let mut c = NetConf::new("10.244.1.0/24".parse().unwrap());
        c.cluster_cidr = Some("10.244.0.0/16".parse().unwrap());
        c.mtu = 1450;
        let list = conflist(&c);
        assert_eq!(
            list,
            json!({
                "cniVersion": "1.0.0",
                "cniVersions": ["1.0.0", "1.1.0"],
                "name": "sluice",
                "plugins": [{
                    "type": "sluice-cni", "bridge": "sluice0", "podCIDR": "10.244.1.0/24",
                    "clusterCIDR": "10.244.0.0/16", "mtu": 1450,
                    "stateDir": "/var/lib/sluice", "bpffs": "/sys/fs/bpf"
                }]
            })
        );
        // What a runtime hands the plugin: the entry plus the list's keys.
        let mut entry = obj(list["plugins"][0].clone());
        entry.insert("cniVersion".into(), list["cniVersion"].clone());
        entry.insert("name".into(), list["name"].clone());
        assert_eq!(NetConf::from_object(&entry).unwrap(), c);
    }

    /// How libcni picks the version it runs a conflist with, as its code
    /// does it (libcni/conf.go). Before 1.2 it reads `cniVersion` only;
    /// from 1.2 on, the highest of `cniVersions` and `cniVersion` that is
    /// not newer than its own spec version (1.1.0).
    mod libcni {
        use serde_json::Value;

        fn parse(v: &str) -> (u32, u32, u32) {
            let mut it = v.split('.').map(|p| p.parse::<u32>().unwrap());
            (it.next().unwrap(), it.next().unwrap(), it.next().unwrap())
        }

        pub fn v1_1(list: &Value) -> String {
            list["cniVersion"].as_str().unwrap_or("").to_string()
        }

        pub fn v1_2(list: &Value) -> String {
            let top = list["cniVersion"].as_str().unwrap_or("").to_string();
            let Some(listed) = list["cniVersions"].as_array() else {
                return top;
            };
            let current = parse("1.1.0");
            let mut vs: Vec<String> = listed
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .chain((!top.is_empty()).then_some(top.clone()))
                .filter(|v| parse(v) <= current)
                .collect();
            vs.sort_by_key(|v| parse(v));
            vs.pop().unwrap_or(top)
        }

        /// Result versions libcni can decode (pkg/types/create).
        pub fn decodes(libcni_1_2: bool, result: &str) -> bool {
            matches!(
                result,
                "0.1.0" | "0.2.0" | "0.3.0" | "0.3.1" | "0.4.0" | "1.0.0"
            ) || (libcni_1_2 && result == "1.1.0")
        }
    }

    #[test]
    fn every_libcni_runs_the_written_conflist_with_a_version_it_can_decode() {
        for v in crate::cni::version::SUPPORTED {
            let mut c = NetConf::new("10.244.1.0/24".parse().unwrap());
            c.cni_version = v.as_str().to_string();
            let list = conflist(&c);
            for (modern, effective) in [(false, libcni::v1_1(&list)), (true, libcni::v1_2(&list))] {
                // The plugin answers in the version it was given; the
                // runtime must be able to read that answer.
                let given = CniVersion::parse(&effective)
                    .unwrap_or_else(|| panic!("{v}: plugin gets unsupported {effective}"));
                // Only an explicit `--cni-version 1.1.0` gives up the old
                // runtimes (what the written file said before this was
                // fixed: every pod failed its first ADD under containerd
                // 1.6/1.7 and podman 4).
                let readable = modern || v <= CniVersion::V1_0_0;
                assert_eq!(
                    libcni::decodes(modern, given.as_str()),
                    readable,
                    "--cni-version {v}: libcni {} and a {effective} result",
                    if modern { "1.2+" } else { "1.1" }
                );
                if modern {
                    // The newest libcni runs STATUS and GC (1.1.0 only).
                    assert!(given.has_status_and_gc(), "{v}: {effective}");
                }
            }
        }
    }

    #[test]
    fn golden_negotiation_of_the_default_conflist() {
        let list = conflist(&NetConf::new("10.244.1.0/24".parse().unwrap()));
        // containerd 1.6/1.7, podman 4 (libcni 1.1.x): 1.0.0.
        assert_eq!(libcni::v1_1(&list), "1.0.0");
        // containerd 2.x, CRI-O 1.31+, podman 5.2+ (libcni 1.2+): 1.1.0.
        assert_eq!(libcni::v1_2(&list), "1.1.0");
        // The model against libcni's own cases.
        let cases = [
            (
                r#"{"cniVersion":"1.0.0","cniVersions":["0.1.0","0.4.0"]}"#,
                "1.0.0",
            ),
            (
                r#"{"cniVersions":["99.0.0","1.1.0","0.4.0","1.0.0"]}"#,
                "1.1.0",
            ),
            (r#"{"cniVersion":"1.2.3"}"#, "1.2.3"),
            (r#"{"cniVersion":"0.4.0","cniVersions":[]}"#, "0.4.0"),
        ];
        for (text, want) in cases {
            let v: Value = serde_json::from_str(text).unwrap();
            assert_eq!(libcni::v1_2(&v), want, "{text}");
        }
    }

    #[test]
    fn ifname_rules() {
        assert!(check_ifname("eth0").is_ok());
        assert!(check_ifname("a23456789012345").is_ok());
        for bad in [
            "",
            ".",
            "..",
            "a234567890123456",
            "a:b",
            "a/b",
            "a b",
            "a\tb",
            "a\0b",
        ] {
            assert!(check_ifname(bad).is_err(), "{bad:?}");
        }
    }
}
