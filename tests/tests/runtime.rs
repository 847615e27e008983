//! The conflist sluiced writes, driven by a real container runtime: podman
//! 4.3 from Debian's packages with its CNI backend (libcni 1.1, as in
//! containerd 1.6/1.7), in a simulated node's network namespace. A pod
//! started by the runtime gets its address and datapath from sluice-cni,
//! serves a ClusterIP, and is released by the runtime's DEL.

use std::{net::Ipv4Addr, time::Duration};

use sluice_tests::{
    manifests::{self, ready, tcp_port},
    podman::{IMAGE, Podman},
    sim::{Cluster, wait_until},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);

#[test]
fn podman_runs_pods_on_the_conflist_sluiced_writes() {
    let mut cluster = Cluster::new(1).unwrap();
    cluster.start_daemon(0).unwrap();
    let node = &cluster.nodes[0];
    let conflist: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(node.conflist_path()).unwrap()).unwrap();
    assert_eq!(conflist["cniVersion"], "1.0.0");
    assert_eq!(
        conflist["cniVersions"],
        serde_json::json!(["1.0.0", "1.1.0"])
    );
    let podman = Podman::new(
        &cluster.fs.scratch().join("podman"),
        &node.ns.path(),
        &node.cni_conf_dir,
        &[
            cluster.bins.dir.as_path(),
            std::path::Path::new("/usr/lib/cni"),
        ],
    )
    .unwrap();

    // A server pod, started by the runtime.
    podman
        .run(&[
            "run",
            "-d",
            "--name",
            "web",
            "--network",
            "sluice",
            IMAGE,
            "/bin/busybox",
            "httpd",
            "-f",
            "-p",
            "8080",
            "-h",
            "/www",
        ])
        .unwrap();
    let ip: Ipv4Addr = podman
        .run(&[
            "inspect",
            "-f",
            "{{.NetworkSettings.Networks.sluice.IPAddress}}",
            "web",
        ])
        .unwrap()
        .parse()
        .expect("the runtime recorded the address sluice-cni gave");
    assert!(
        ip.octets()[..3] == [10, 244, 1],
        "{ip} is not from the node's pod CIDR {}",
        node.pod_cidr
    );
    // Its datapath was attached before ADD returned, on the veth named
    // after the runtime's container id.
    let id = podman.run(&["inspect", "-f", "{{.Id}}", "web"]).unwrap();
    let veth = sluice_net::pods::host_veth_name(&id, "eth0");
    for hook in ["ingress", "egress"] {
        let filters = node
            .ns
            .output("tc", &["filter", "show", "dev", &veth, hook])
            .unwrap();
        assert!(filters.contains("bpf"), "{veth} {hook}: {filters}");
    }

    // A ClusterIP in front of it, reached from another runtime-made pod.
    let svc = manifests::service("podweb", VIP, vec![tcp_port("http", 80, 8080)]);
    cluster.apply("podweb-svc.yaml", &svc.yaml()).unwrap();
    cluster
        .apply(
            "podweb-slice.yaml",
            &manifests::endpoint_slice(&svc, &[("http", 8080, "TCP")], &[ready(ip, &node.name)]),
        )
        .unwrap();
    let mut last = String::new();
    let served = wait_until(Duration::from_secs(20), || {
        // (Debian's static busybox wget crashes; nc does the asking.)
        match podman.run(&[
            "run",
            "--rm",
            "--network",
            "sluice",
            IMAGE,
            "/bin/sh",
            "-c",
            &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | /bin/busybox nc -w 2 {VIP} 80"),
        ]) {
            Ok(body) => body.contains("served by a podman container"),
            Err(e) => {
                last = format!("{e:#}");
                false
            }
        }
    });
    assert!(served, "the ClusterIP never answered a podman pod: {last}");

    // DEL, by the runtime: the address goes back to the pool.
    let allocations = || {
        let dir = node.state_dir.join("ipam").join("sluice");
        std::fs::read_to_string(dir.join("allocations.json")).unwrap_or_default()
    };
    assert!(allocations().contains(&ip.to_string()), "{}", allocations());
    podman.run(&["rm", "-f", "-t", "0", "web"]).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || !allocations()
            .contains(&ip.to_string())),
        "the runtime's DEL left {ip} allocated: {}",
        allocations()
    );
}

#[test]
fn podman_rejects_what_sluiced_used_to_write() {
    // The control for the test above: the conflist as releases before the
    // fix wrote it (cniVersion 1.1.0, no cniVersions). libcni 1.1 hands
    // the plugin 1.1.0 and cannot read the 1.1.0 result it gets back.
    let mut cluster = Cluster::new(1).unwrap();
    cluster.start_daemon(0).unwrap();
    let node = &cluster.nodes[0];
    let mut old: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(node.conflist_path()).unwrap()).unwrap();
    old["cniVersion"] = "1.1.0".into();
    old.as_object_mut().unwrap().remove("cniVersions");
    old["name"] = "sluice-old".into();
    let dir = cluster.fs.scratch().join("old-net.d");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("10-sluice.conflist"), old.to_string()).unwrap();
    let podman = Podman::new(
        &cluster.fs.scratch().join("podman"),
        &node.ns.path(),
        &dir,
        &[cluster.bins.dir.as_path()],
    )
    .unwrap();
    let out = podman
        .output(&[
            "run",
            "--rm",
            "--network",
            "sluice-old",
            IMAGE,
            "/bin/busybox",
            "true",
        ])
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("unsupported CNI result version \"1.1.0\""),
        "{stderr}"
    );
}
