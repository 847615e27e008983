//! deploy/daemonset.yaml's security contexts, exercised: sluiced runs with
//! exactly the capabilities the manifest grants (every other one removed
//! from all of its sets with setpriv) and still loads, pins, attaches and
//! serves ClusterIP and NodePort traffic on a two-node cluster; the init
//! step runs with none and installs the plugin and the same conflist the
//! daemon writes.

use std::{
    ffi::OsString,
    net::{Ipv4Addr, SocketAddr},
    os::unix::fs::PermissionsExt,
    path::Path,
    time::Duration,
};

use serde_json::Value;
use sluice_tests::{
    apps,
    manifests::{self, Port, ready, tcp_port},
    sim::{Cluster, wait_until},
};

fn daemonset() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/daemonset.yaml");
    serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The capabilities the manifest adds to container `name`, as setpriv
/// spells them (`+bpf,+net_admin,...`), after checking it drops ALL.
fn setpriv_caps(ds: &Value, init: bool, name: &str) -> String {
    let spec = &ds["spec"]["template"]["spec"];
    let list = if init {
        &spec["initContainers"]
    } else {
        &spec["containers"]
    };
    let c = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"));
    let caps = &c["securityContext"]["capabilities"];
    assert_eq!(caps["drop"], serde_json::json!(["ALL"]), "{name}");
    let mut out = String::from("-all");
    for cap in caps["add"].as_array().into_iter().flatten() {
        out.push_str(&format!(",+{}", cap.as_str().unwrap().to_lowercase()));
    }
    out
}

/// `setpriv` leaving the process exactly `caps` (inheritable, ambient and
/// bounding sets), so root without them is what runs.
fn confined(caps: &str) -> Vec<OsString> {
    [
        "setpriv".to_string(),
        format!("--inh-caps={caps}"),
        format!("--ambient-caps={caps}"),
        format!("--bounding-set={caps}"),
        "--".to_string(),
    ]
    .into_iter()
    .map(OsString::from)
    .collect()
}

#[test]
fn sluiced_works_with_only_the_manifests_capabilities() {
    let ds = daemonset();
    let caps = setpriv_caps(&ds, false, "sluiced");
    let mut cluster = Cluster::new(2).unwrap();
    cluster.daemon_wrapper = confined(&caps);
    cluster.start_daemons().unwrap();
    let mut servers = Vec::new();
    let mut pods = Vec::new();
    for n in 0..2 {
        let pod = cluster.add_pod(n, &format!("web-{n}")).unwrap();
        servers.push(apps::serve_tcp(&pod.ns, &pod.name, 8080).unwrap());
        pods.push(pod);
    }
    let client = cluster.add_pod(0, "client").unwrap();
    let vip = Ipv4Addr::new(10, 96, 0, 10);
    let mut svc = manifests::service(
        "web",
        vip,
        vec![Port {
            node_port: Some(30080),
            ..tcp_port("http", 80, 8080)
        }],
    );
    svc.kind = "NodePort";
    cluster.apply("web.yaml", &svc.yaml()).unwrap();
    let eps: Vec<_> = pods.iter().map(|p| ready(p.ip, &p.node)).collect();
    cluster
        .apply(
            "web-slice.yaml",
            &manifests::endpoint_slice(&svc, &[("http", 8080, "TCP")], &eps),
        )
        .unwrap();
    let cluster_ip = SocketAddr::from((vip, 80));
    let ok = wait_until(Duration::from_secs(10), || {
        client
            .ns
            .run(move || apps::tcp_ask(cluster_ip).is_ok())
            .unwrap_or(false)
    });
    assert!(
        ok,
        "ClusterIP never answered: {}",
        cluster.nodes[0].log_tail()
    );
    // Both backends (one across the overlay), from a pod and from outside
    // through the NodePort.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        seen.insert(
            client
                .ns
                .run(move || apps::tcp_ask(cluster_ip))
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    // node-2's daemon applies the Service at its own pace.
    let node_port = SocketAddr::from((cluster.nodes[1].ip, 30080));
    let answered = wait_until(Duration::from_secs(10), || {
        cluster
            .outside
            .run(move || apps::tcp_ask(node_port).is_ok())
            .unwrap_or(false)
    });
    assert!(
        answered,
        "NodePort never answered: {}",
        cluster.nodes[1].log_tail()
    );
    // Socket load balancing attached with those capabilities too.
    for node in &cluster.nodes {
        let log = std::fs::read_to_string(&node.log).unwrap();
        assert!(
            log.contains("socket load balancing attached"),
            "{}: {}",
            node.name,
            node.log_tail()
        );
    }
    // The daemons really ran confined.
    for node in &cluster.nodes {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", node.daemon_pid().unwrap()))
                .unwrap();
        let eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap();
        // CAP_NET_ADMIN 12, CAP_PERFMON 38, CAP_BPF 39.
        assert_eq!(
            eff,
            (1 << 12) | (1 << 38) | (1 << 39),
            "{}: {status}",
            node.name
        );
    }
}

/// The manifest gives sluiced the host's cgroup2 hierarchy, not the
/// container's own (its cgroup namespace would cover only the pod).
#[test]
fn the_daemonset_attaches_socket_programs_to_the_hosts_cgroup() {
    let ds = daemonset();
    let spec = &ds["spec"]["template"]["spec"];
    let c = spec["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "sluiced")
        .unwrap();
    let args: Vec<&str> = c["command"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(args.contains(&"--cgroup-root=$(CGROUP_ROOT)"), "{args:?}");
    assert!(args.contains(&"--socket-lb=$(SOCKET_LB)"), "{args:?}");
    let config: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config.yaml"),
        )
        .unwrap(),
    )
    .unwrap();
    let root = config["data"]["cgroup-root"].as_str().unwrap();
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| root.starts_with(m["mountPath"].as_str().unwrap()) && m["mountPath"] != "/")
        .unwrap_or_else(|| panic!("no volume mounted where {root} is"));
    let volume = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert_eq!(volume["hostPath"]["path"], "/sys/fs/cgroup", "{volume}");
    assert_eq!(config["data"]["socket-lb"], "host");
}

#[test]
fn the_init_step_installs_plugin_and_conflist_without_capabilities() {
    let ds = daemonset();
    let caps = setpriv_caps(&ds, true, "install-cni");
    assert_eq!(caps, "-all", "the init container should need no capability");
    let mut cluster = Cluster::new(1).unwrap();
    cluster.start_daemons().unwrap();
    let node = &cluster.nodes[0];
    assert!(
        wait_until(Duration::from_secs(5), || node.conflist_path().exists()),
        "{}",
        node.log_tail()
    );
    let bin_dir = cluster.fs.scratch().join("host-opt-cni-bin");
    let conf_dir = cluster.fs.scratch().join("host-etc-cni-net.d");
    let out = node
        .ns
        .command("setpriv")
        .args(confined(&caps).iter().skip(1))
        .arg(&cluster.bins.sluiced)
        .arg("--install-cni-to")
        .arg(&bin_dir)
        .arg("--cni-binary")
        .arg(&cluster.bins.cni)
        .args(["--node-name", &node.name])
        .arg("--manifests")
        .arg(&cluster.manifests)
        .arg("--cni-conf-dir")
        .arg(&conf_dir)
        .arg("--state-dir")
        .arg(&node.state_dir)
        .arg("--bpffs")
        .arg(&node.bpffs)
        .args(["--cluster-cidr", sluice_tests::sim::CLUSTER_CIDR])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "install mode failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let installed = bin_dir.join("sluice-cni");
    let mode = std::fs::metadata(&installed).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(&cluster.bins.cni).unwrap()
    );
    // The same configuration the running daemon wrote (pod CIDR, overlay
    // MTU, paths): the init step and the daemon never fight over it.
    assert_eq!(
        std::fs::read_to_string(conf_dir.join("10-sluice.conflist")).unwrap(),
        std::fs::read_to_string(node.conflist_path()).unwrap()
    );
}
