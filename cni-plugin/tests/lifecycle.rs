//! The plugin binary, run the way a runtime runs it inside a test node
//! namespace, against pod namespaces created by the test.

mod common;

use std::fs::File;

use common::*;
use serde_json::{Value, json};

use proxy_common::names::{TC_HANDLE, TC_PRIORITY};

/// `tc -j filter show dev <veth> <hook>` in the node namespace.
fn tc_filters(node: &NetNs, dev: &str, hook: &str) -> Vec<Value> {
    let out = node.exec(&["tc", "-j", "filter", "show", "dev", dev, hook]);
    assert!(
        out.status.success(),
        "tc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(json!([]));
    v.as_array().cloned().unwrap_or_default()
}

/// Whether our cls_bpf filter (prio 1, handle 0x5c1c, direct-action) is on the hook.
fn has_our_filter(node: &NetNs, dev: &str, hook: &str, prog_name: &str) -> bool {
    tc_filters(node, dev, hook).iter().any(|f| {
        f["kind"] == "bpf"
            && f["pref"].as_u64() == Some(u64::from(TC_PRIORITY))
            && f["options"]["handle"] == format!("{TC_HANDLE:#x}").as_str()
            && f["options"]["bpf_name"]
                .as_str()
                .is_some_and(|n| n.starts_with(prog_name))
            && f["options"]["direct-action"] == true
    })
}

#[test]
fn add_check_del_round_trip() {
    let node = Node::new("rt", "10.244.1.0/24");
    let pod = NetNs::new("pod").unwrap();
    let pod2 = NetNs::new("pod").unwrap();

    let r = node.add("ctr-a", &pod);
    r.expect_ok();
    let res = r.result();
    assert_eq!(res["cniVersion"], "1.1.0");
    let ip = result_addr(&res);
    assert_eq!(result_ip(&res), format!("{ip}/24"));
    assert_eq!(ip, "10.244.1.2", "first address after the gateway");
    assert_eq!(res["ips"][0]["gateway"], "10.244.1.1");
    assert_eq!(res["ips"][0]["interface"], 2);
    assert!(res["ips"][0].get("version").is_none());
    assert_eq!(
        res["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}])
    );
    assert_eq!(res["dns"], json!({}));
    let host = sluice_net::pods::host_veth_name("ctr-a", "eth0");
    assert_eq!(res["interfaces"][0]["name"], "sluice0");
    assert_eq!(res["interfaces"][1]["name"], host.as_str());
    assert_eq!(res["interfaces"][2]["name"], "eth0");
    assert_eq!(res["interfaces"][2]["sandbox"], pod.path_str().as_str());
    assert!(res["interfaces"][1].get("sandbox").is_none());
    for i in 0..3 {
        assert_eq!(res["interfaces"][i]["mtu"], 1450);
        assert_eq!(res["interfaces"][i]["mac"].as_str().unwrap().len(), 17);
    }

    // Pod side: address, MTU, up, default route, lo up; MAC as reported.
    let eth0 = pod.ip_json(&["addr", "show", "dev", "eth0"])[0].clone();
    assert_eq!(eth0["mtu"], 1450);
    assert_eq!(eth0["operstate"], "UP");
    assert_eq!(eth0["address"], res["interfaces"][2]["mac"]);
    let inet: Vec<_> = eth0["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["family"] == "inet")
        .collect();
    assert_eq!(inet.len(), 1);
    assert_eq!(inet[0]["local"], ip.as_str());
    assert_eq!(inet[0]["prefixlen"], 24);
    let routes = pod.ip_json(&["route", "show", "default"]);
    assert_eq!(routes[0]["gateway"], "10.244.1.1");
    assert_eq!(routes[0]["dev"], "eth0");
    assert!(
        pod.link("lo")["flags"]
            .as_array()
            .unwrap()
            .contains(&json!("UP"))
    );

    // Node side: bridge with the gateway and MTU, veth on it, hairpin, up.
    let br = node.ns.ip_json(&["-d", "addr", "show", "dev", "sluice0"])[0].clone();
    assert_eq!(br["mtu"], 1450);
    assert_eq!(br["linkinfo"]["info_kind"], "bridge");
    assert!(
        br["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["local"] == "10.244.1.1" && a["prefixlen"] == 24)
    );
    assert_eq!(br["address"], res["interfaces"][0]["mac"]);
    let hv = node.ns.link(&host);
    assert_eq!(hv["master"], "sluice0");
    assert_eq!(hv["mtu"], 1450);
    assert_eq!(hv["linkinfo"]["info_kind"], "veth");
    assert_eq!(hv["linkinfo"]["info_slave_kind"], "bridge");
    assert_eq!(hv["linkinfo"]["info_slave_data"]["hairpin"], true);
    assert!(hv["flags"].as_array().unwrap().contains(&json!("UP")));
    assert_eq!(hv["address"], res["interfaces"][1]["mac"]);
    let fwd = node.ns.exec(&["cat", "/proc/sys/net/ipv4/ip_forward"]);
    assert_eq!(String::from_utf8_lossy(&fwd.stdout).trim(), "1");

    // Datapath: our filters on both hooks, exactly one each.
    assert!(
        has_our_filter(&node.ns, &host, "ingress", "test_from_pod"),
        "{:?}",
        tc_filters(&node.ns, &host, "ingress")
    );
    assert!(
        has_our_filter(&node.ns, &host, "egress", "test_to_pod"),
        "{:?}",
        tc_filters(&node.ns, &host, "egress")
    );
    let handles = |hook| {
        tc_filters(&node.ns, &host, hook)
            .iter()
            .filter(|f| f["options"]["handle"].is_string())
            .count()
    };
    assert_eq!((handles("ingress"), handles("egress")), (1, 1));
    assert!(
        node.ns
            .run(|| sluice_net::tc::pod_programs_attached(&host))
            .unwrap()
            .unwrap()
    );
    assert_eq!(
        node.ns
            .run(|| sluice_net::pods::list_pod_veths("sluice0"))
            .unwrap()
            .unwrap(),
        vec![host.clone()]
    );

    // IPAM.
    let allocs = node.allocations();
    assert_eq!(allocs.len(), 1);
    assert_eq!(allocs[0].ip.to_string(), ip);
    assert_eq!(
        allocs[0].owner,
        sluice_cni::Attachment::new("ctr-a", "eth0")
    );

    // Traffic: node -> pod, pod -> gateway, pod <-> pod through the bridge.
    let r2 = node.add("ctr-b", &pod2);
    r2.expect_ok();
    let ip2 = result_addr(&r2.result());
    assert_eq!(ip2, "10.244.1.3");
    // The bridge keeps its fixed MAC as ports come and go (pods' ARP
    // entries for the gateway stay valid).
    let br_mac = node.ns.link("sluice0")["address"].clone();
    assert_eq!(br_mac, res["interfaces"][0]["mac"]);
    let want = sluice_cni::result::format_mac(&sluice_cni::bridge::bridge_mac(
        "sluice0",
        "10.244.1.0/24".parse().unwrap(),
    ));
    assert_eq!(br_mac, want.as_str());
    assert!(node.ns.ping(&ip), "node -> pod");
    assert!(pod.ping("10.244.1.1"), "pod -> gateway");
    assert!(pod.ping(&ip2), "pod -> pod");
    assert!(pod2.ping(&ip), "pod2 -> pod");

    // CHECK passes on the real thing...
    node.check("ctr-a", &pod, &res).expect_ok();
    assert!(node.check("ctr-a", &pod, &res).stdout.is_empty());
    // ...and fails on tampering, each with its own message.
    let mut wrong = res.clone();
    wrong["ips"][0]["address"] = json!("10.244.1.77/24");
    node.check("ctr-a", &pod, &wrong).expect_code(102);
    pod.ip(&["route", "del", "default"]).unwrap();
    let r = node.check("ctr-a", &pod, &res);
    r.expect_code(102);
    assert!(r.stdout.contains("default route"), "{}", r.stdout);
    pod.ip(&[
        "route",
        "add",
        "default",
        "via",
        "10.244.1.1",
        "dev",
        "eth0",
    ])
    .unwrap();
    node.check("ctr-a", &pod, &res).expect_ok();
    node.ns
        .exec(&["tc", "filter", "del", "dev", &host, "ingress"]);
    let r = node.check("ctr-a", &pod, &res);
    r.expect_code(102);
    assert!(r.stdout.contains("datapath"), "{}", r.stdout);
    // The daemon's re-attach restores it (replace-or-create).
    node.ns
        .run(|| sluice_net::tc::attach_pod_programs(&host, node.bpf.dir()))
        .unwrap()
        .unwrap();
    node.check("ctr-a", &pod, &res).expect_ok();
    // Re-attaching over existing filters replaces in place: still one each.
    node.ns
        .run(|| sluice_net::tc::attach_pod_programs(&host, node.bpf.dir()))
        .unwrap()
        .unwrap();
    assert_eq!((handles("ingress"), handles("egress")), (1, 1));
    node.ns.ip(&["link", "set", &host, "mtu", "1400"]).unwrap();
    node.check("ctr-a", &pod, &res).expect_code(102);
    node.ns.ip(&["link", "set", &host, "mtu", "1450"]).unwrap();
    // CHECK without prevResult is a config error; CHECK under 0.3.1 is refused.
    Invocation::new("CHECK", &node.conf())
        .attachment("ctr-a", &pod.path_str(), "eth0")
        .run(&node.ns)
        .expect_code(7);

    // DEL: everything of ctr-a goes, ctr-b stays.
    node.del("ctr-a", &pod).expect_ok();
    assert!(node.del("ctr-a", &pod).stdout.is_empty());
    assert!(!pod.link_names().contains(&"eth0".to_owned()));
    assert_eq!(
        node.host_veths(),
        vec![sluice_net::pods::host_veth_name("ctr-b", "eth0")]
    );
    assert_eq!(node.allocations().len(), 1);
    node.check("ctr-a", &pod, &res).expect_code(102);

    // DEL is idempotent: again, with an empty CNI_NETNS, with the netns gone.
    node.del("ctr-a", &pod).expect_ok();
    node.invoke("DEL", "ctr-a", "", "eth0").expect_ok();
    let gone = pod2.path_str();
    drop(pod2);
    node.invoke("DEL", "ctr-b", &gone, "eth0").expect_ok();
    node.invoke("DEL", "ctr-b", &gone, "eth0").expect_ok();
    node.assert_clean();

    // The log went to logFile, not stdout.
    let log = std::fs::read_to_string(node.state.path().join("cni.log")).unwrap();
    assert!(
        log.contains("ADD ctr-a/eth0: allocated 10.244.1.2"),
        "{log}"
    );
}

#[test]
fn results_in_every_version() {
    for (version, has_ip_version, has_mtu) in [
        ("0.3.1", true, false),
        ("0.4.0", true, false),
        ("1.0.0", false, false),
        ("1.1.0", false, true),
    ] {
        let mut node = Node::new("ver", "10.244.2.0/24");
        node.cni_version = version.into();
        let pod = NetNs::new("pod").unwrap();
        let res = node.add("c1", &pod).expect_ok().result();
        assert_eq!(res["cniVersion"], version);
        assert_eq!(
            res["ips"][0].get("version").is_some(),
            has_ip_version,
            "{version}"
        );
        if has_ip_version {
            assert_eq!(res["ips"][0]["version"], "4");
        }
        assert_eq!(
            res["interfaces"][2].get("mtu").is_some(),
            has_mtu,
            "{version}"
        );
        if version == "0.3.1" {
            node.check("c1", &pod, &res).expect_code(1);
        } else {
            node.check("c1", &pod, &res).expect_ok();
        }
        node.del("c1", &pod).expect_ok();
        node.assert_clean();
        // Unsupported versions: code 1, answered in the latest version.
        node.cni_version = "0.2.0".into();
        let r = node.add("c2", &pod);
        r.expect_code(1);
        assert_eq!(r.result()["cniVersion"], "1.1.0");
        node.assert_clean();
    }
}

#[test]
fn version_command() {
    let node = NetNs::new("v").unwrap();
    let r = Invocation {
        vars: vec![("CNI_COMMAND".into(), "VERSION".into())],
        stdin: br#"{"cniVersion":"1.0.0"}"#.to_vec(),
    }
    .run(&node);
    r.expect_ok();
    assert_eq!(
        r.result(),
        json!({"cniVersion": "1.1.0", "supportedVersions": ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
}

#[test]
fn add_refuses_an_existing_interface_and_a_repeated_add() {
    let node = Node::new("ex", "10.244.3.0/24");
    let pod = NetNs::new("pod").unwrap();
    pod.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "other",
    ])
    .unwrap();
    pod.ip(&["addr", "add", "192.0.2.1/24", "dev", "eth0"])
        .unwrap();
    let r = node.add("c1", &pod);
    r.expect_code(101);
    assert!(r.stdout.contains("eth0 already exists"), "{}", r.stdout);
    let eth0 = pod.ip_json(&["addr", "show", "dev", "eth0"])[0].clone();
    assert_eq!(eth0["addr_info"][0]["local"], "192.0.2.1", "not clobbered");
    node.assert_clean();
    pod.ip(&["link", "del", "eth0"]).unwrap();

    // A second ADD of a live attachment fails and changes nothing.
    let res = node.add("c1", &pod).expect_ok().result();
    node.add("c1", &pod).expect_code(101);
    assert_eq!(node.allocations().len(), 1);
    node.check("c1", &pod, &res).expect_ok();
    // Another interface of the same container ID gets its own address (in
    // another sandbox: one namespace has room for one default route).
    let pod2 = NetNs::new("pod").unwrap();
    let r = node.invoke("ADD", "c1", &pod2.path_str(), "net1");
    r.expect_ok();
    assert_ne!(result_addr(&r.result()), result_addr(&res));
    assert_eq!(node.allocations().len(), 2);
    // ... but not a second default route.
    let r = node.invoke("ADD", "c1", &pod.path_str(), "net2");
    r.expect_code(5);
    assert!(
        r.stdout.contains("already has a default route"),
        "{}",
        r.stdout
    );
    assert!(!pod.link_names().contains(&"net2".to_owned()), "undone");
    assert_eq!(node.allocations().len(), 2);
    node.invoke("DEL", "c1", &pod2.path_str(), "net1")
        .expect_ok();
    node.del("c1", &pod).expect_ok();
    node.assert_clean();
}

#[test]
fn add_without_pins_is_retryable_and_leaves_nothing() {
    let node = Node::without_pins("np", "10.244.4.0/24");
    let pod = NetNs::new("pod").unwrap();
    let r = node.add("c1", &pod);
    r.expect_code(11);
    assert!(r.stdout.contains("prog_from_pod"), "{}", r.stdout);
    node.assert_clean();
    assert_eq!(pod.link_names(), vec!["lo".to_owned()]);
    node.status().expect_code(50);

    // Only one pin: still nothing half-done.
    std::fs::create_dir_all(node.bpf.dir().join("sluice")).unwrap();
    pin_trivial_classifier(&node.bpf.dir().join("sluice/prog_from_pod"), "only_from");
    node.add("c1", &pod).expect_code(11);
    node.assert_clean();
    assert_eq!(pod.link_names(), vec!["lo".to_owned()]);

    node.bpf.pin_programs_missing_only();
    node.add("c1", &pod).expect_ok();
    node.del("c1", &pod).expect_ok();
    node.assert_clean();
}

#[test]
fn add_with_bad_environment_or_namespace() {
    let node = Node::new("env", "10.244.5.0/24");
    let pod = NetNs::new("pod").unwrap();
    node.invoke("ADD", "c1", "/run/netns/slcni-does-not-exist", "eth0")
        .expect_code(3);
    node.invoke("ADD", "c1", "/proc/self/ns/net", "eth0")
        .expect_code(4);
    // The init namespace: refused as the node's own (4), or unreadable
    // where the sandbox lacks CAP_SYS_PTRACE (5). Never configured.
    let r = node.invoke("ADD", "c1", "/proc/1/ns/net", "eth0");
    assert!(matches!(r.code(), 4 | 5), "{}", r.stdout);
    node.invoke("ADD", "c1", "/etc/hostname", "eth0")
        .expect_code(4);
    node.invoke("ADD", "c1", "", "eth0").expect_code(4);
    node.invoke("ADD", "-bad", &pod.path_str(), "eth0")
        .expect_code(4);
    node.invoke("ADD", "c1", &pod.path_str(), "way-too-long-ifname")
        .expect_code(4);
    let mut bad = Invocation::new("ADD", &node.conf()).attachment("c1", &pod.path_str(), "eth0");
    bad.vars.retain(|(k, _)| k != "CNI_PATH");
    bad.run(&node.ns).expect_code(4);
    let mut conf = node.conf();
    conf["podCIDR"] = json!("10.244.5.0/33");
    Invocation::new("ADD", &conf)
        .attachment("c1", &pod.path_str(), "eth0")
        .run(&node.ns)
        .expect_code(7);
    let bad = Invocation {
        stdin: b"{oops".to_vec(),
        ..Invocation::new("ADD", &node.conf())
    }
    .attachment("c1", &pod.path_str(), "eth0");
    bad.run(&node.ns).expect_code(6);
    node.assert_clean();
    assert_eq!(pod.link_names(), vec!["lo".to_owned()]);
    // A bridge name that exists but is not a bridge: error, and undone.
    let mut conf = node.conf();
    conf["bridge"] = json!("lo");
    let r = Invocation::new("ADD", &conf)
        .attachment("c1", &pod.path_str(), "eth0")
        .run(&node.ns);
    r.expect_code(5);
    assert!(r.stdout.contains("not a bridge"), "{}", r.stdout);
    node.assert_clean();
}

#[test]
fn status_reflects_pins_and_daemon_lock() {
    let node = Node::new("st", "10.244.6.0/24");
    let r = node.status();
    r.expect_code(50);
    assert!(r.stdout.contains("sluiced is not running"), "{}", r.stdout);
    let lock_path = sluice_net::liveness::daemon_lock_path(node.state.path());
    let lock = File::create(&lock_path).unwrap();
    node.status().expect_code(50);
    lock.lock().unwrap();
    let r = node.status();
    r.expect_ok();
    assert!(r.stdout.is_empty());
    node.bpf.unpin_programs();
    let r = node.status();
    r.expect_code(50);
    assert!(
        r.stdout.contains("prog_to_pod") && !r.stdout.contains("sluiced is not running"),
        "{}",
        r.stdout
    );
    node.bpf.pin_programs();
    node.status().expect_ok();
    drop(lock);
    node.status().expect_code(50);
    // STATUS is a 1.1.0 verb.
    let mut old = Node::new("st", "10.244.6.0/24");
    old.cni_version = "1.0.0".into();
    old.status().expect_code(1);
}

#[test]
fn gc_releases_stale_reservations() {
    let node = Node::new("gc", "10.244.7.0/24");
    let pods: Vec<NetNs> = (0..3).map(|_| NetNs::new("pod").unwrap()).collect();
    let res: Vec<Value> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| node.add(&format!("c{i}"), p).expect_ok().result())
        .collect();
    assert_eq!(node.allocations().len(), 3);
    // A reservation whose veth is already gone (DEL died half-way).
    node.ns
        .ip(&[
            "link",
            "del",
            &sluice_net::pods::host_veth_name("c2", "eth0"),
        ])
        .unwrap();
    // A veth on the bridge with no reservation and no valid attachment.
    node.ns
        .ip(&[
            "link",
            "add",
            "sl0000000000f",
            "type",
            "veth",
            "peer",
            "name",
            "strayp",
        ])
        .unwrap();
    node.ns
        .ip(&["link", "set", "sl0000000000f", "master", "sluice0"])
        .unwrap();

    node.gc(&[("c0", "eth0"), ("unknown", "eth0")]).expect_ok();
    let allocs = node.allocations();
    assert_eq!(allocs.len(), 1);
    assert_eq!(allocs[0].owner.container_id, "c0");
    assert_eq!(
        node.host_veths(),
        vec![sluice_net::pods::host_veth_name("c0", "eth0")]
    );
    assert!(!pods[1].link_names().contains(&"eth0".to_owned()));
    node.check("c0", &pods[0], &res[0]).expect_ok();
    assert!(node.ns.ping(result_addr(&res[0])));

    // The legacy key works too; an empty list frees everything.
    let mut conf = node.conf();
    conf["cni.dev/attachments"] = json!([]);
    Invocation::new("GC", &conf).run(&node.ns).expect_ok();
    node.assert_clean();
    // GC is a 1.1.0 verb.
    let mut old = Node::new("gc", "10.244.7.0/24");
    old.cni_version = "1.0.0".into();
    old.gc(&[]).expect_code(1);
}

#[test]
fn address_exhaustion_in_a_slash_29() {
    let node = Node::new("ex", "10.244.8.0/29");
    let pods: Vec<NetNs> = (0..6).map(|_| NetNs::new("pod").unwrap()).collect();
    let mut ips = Vec::new();
    for (i, p) in pods.iter().take(5).enumerate() {
        ips.push(result_addr(
            &node.add(&format!("c{i}"), p).expect_ok().result(),
        ));
    }
    assert_eq!(
        ips,
        [
            "10.244.8.2",
            "10.244.8.3",
            "10.244.8.4",
            "10.244.8.5",
            "10.244.8.6"
        ]
    );
    let r = node.add("c5", &pods[5]);
    r.expect_code(100);
    assert!(
        r.stdout.contains("no free address left in 10.244.8.0/29"),
        "{}",
        r.stdout
    );
    assert_eq!(pods[5].link_names(), vec!["lo".to_owned()]);
    assert_eq!(node.allocations().len(), 5);
    assert_eq!(node.host_veths().len(), 5);
    // Freeing one makes room again.
    node.del("c2", &pods[2]).expect_ok();
    assert_eq!(
        result_addr(&node.add("c5", &pods[5]).expect_ok().result()),
        "10.244.8.4"
    );
    for (i, p) in pods.iter().enumerate() {
        node.del(&format!("c{i}"), p).expect_ok();
    }
    node.assert_clean();
}

/// Debian's reference portmap plugin, chained after sluice-cni the way a
/// conflist runtime chains it (our result injected as prevResult), maps a
/// host port of the node to the pod; a client namespace reaches it.
#[test]
fn chained_portmap_maps_a_host_port_to_the_pod() {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::time::Duration;

    const PORTMAP: &str = "/usr/lib/cni/portmap";
    assert!(
        std::path::Path::new(PORTMAP).exists(),
        "containernetworking-plugins is not installed"
    );
    let mut node = Node::new("pm", "10.244.9.0/24");
    node.cni_version = "1.0.0".into(); // portmap 1.1.1 speaks up to 1.0.0
    let pod = NetNs::new("pod").unwrap();
    let client = NetNs::new("cli").unwrap();

    // Node uplink to the client: a /30 between the two test namespaces.
    let (up, peer) = (
        format!("up{}", std::process::id() % 100000),
        format!("cl{}", std::process::id() % 100000),
    );
    node.ns
        .ip(&[
            "link",
            "add",
            &up,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            client.name(),
        ])
        .unwrap();
    node.ns
        .ip(&["addr", "add", "192.168.213.1/30", "dev", &up])
        .unwrap();
    node.ns.ip(&["link", "set", &up, "up"]).unwrap();
    client
        .ip(&["addr", "add", "192.168.213.2/30", "dev", &peer])
        .unwrap();
    client.ip(&["link", "set", &peer, "up"]).unwrap();

    let res = node.add("pm1", &pod).expect_ok().result();
    let pod_ip = result_addr(&res);

    let mut portmap_conf = json!({
        "cniVersion": "1.0.0",
        "name": "sluice",
        "type": "portmap",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
        "prevResult": res,
    });
    let pm = Invocation::new("ADD", &portmap_conf)
        .attachment("pm1", &pod.path_str(), "eth0")
        .run_bin(PORTMAP, &node.ns);
    pm.expect_ok();
    // portmap passes our result through.
    assert_eq!(result_addr(&pm.result()), pod_ip);

    // A server in the pod, a client in the client namespace.
    let listener = pod
        .run(|| TcpListener::bind("0.0.0.0:80").expect("bind in pod"))
        .unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().expect("accept");
        s.write_all(b"hello from the pod").unwrap();
        peer
    });
    let got = client
        .run(|| {
            let addr: SocketAddr = "192.168.213.1:8080".parse().unwrap();
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .expect("connect to hostPort");
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = String::new();
            s.read_to_string(&mut buf).unwrap();
            buf
        })
        .unwrap();
    assert_eq!(got, "hello from the pod");
    let seen_from = server.join().unwrap();
    assert_eq!(
        seen_from.ip().to_string(),
        "192.168.213.2",
        "DNAT only, the client address is kept"
    );

    // Chained CHECK and DEL (reverse order), as a runtime would. Not
    // portmap's own CHECK: v1.1.1 fails it on IPv4-only results ("could not
    // check ipv6 dnat: chain ... not found"), an upstream bug.
    portmap_conf["prevResult"] = pm.result();
    node.check("pm1", &pod, &pm.result()).expect_ok();
    Invocation::new("DEL", &portmap_conf)
        .attachment("pm1", &pod.path_str(), "eth0")
        .run_bin(PORTMAP, &node.ns)
        .expect_ok();
    node.del("pm1", &pod).expect_ok();
    node.assert_clean();
}
