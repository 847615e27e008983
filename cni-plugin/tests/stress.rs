//! Concurrency, churn, crashes and reboots, with the real binary.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;

fn only_lo(pod: &NetNs) -> bool {
    pod.link_names() == ["lo"]
}

#[test]
fn concurrent_adds_get_distinct_addresses_and_are_all_reachable() {
    const PODS: usize = 32;
    let node = Node::new("cc", "10.244.10.0/24");
    let pods: Vec<NetNs> = (0..PODS).map(|_| NetNs::new("pod").unwrap()).collect();

    // All at once on a node without a bridge yet: they also race to create it.
    let children: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Invocation::new("ADD", &node.conf())
                .attachment(&format!("cc-{i}"), &p.path_str(), "eth0")
                .spawn(&node.ns)
        })
        .collect();
    let ips: Vec<String> = children
        .into_iter()
        .map(|c| {
            let out = wait_with_timeout(c, Duration::from_secs(60));
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "ADD failed: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            );
            result_addr(&serde_json::from_str(&stdout).unwrap())
        })
        .collect();
    let distinct: BTreeSet<_> = ips.iter().collect();
    assert_eq!(distinct.len(), PODS, "{ips:?}");
    assert_eq!(node.allocations().len(), PODS);
    assert_eq!(node.host_veths().len(), PODS);
    assert_eq!(
        node.ns
            .link_names()
            .iter()
            .filter(|n| *n == "sluice0")
            .count(),
        1
    );

    std::thread::scope(|s| {
        for ip in &ips {
            let node = &node;
            s.spawn(move || assert!(node.ns.ping(ip), "node cannot reach pod {ip}"));
        }
    });

    let children: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Invocation::new("DEL", &node.conf())
                .attachment(&format!("cc-{i}"), &p.path_str(), "eth0")
                .spawn(&node.ns)
        })
        .collect();
    for c in children {
        assert!(
            wait_with_timeout(c, Duration::from_secs(60))
                .status
                .success()
        );
    }
    node.assert_clean();
    assert!(pods.iter().all(only_lo));
}

#[test]
fn add_del_cycles_with_8_way_concurrency_leave_nothing_behind() {
    const CYCLES: usize = 500;
    const WORKERS: usize = 8;
    let node = Node::new("cy", "10.244.11.0/24");
    let pods: Vec<NetNs> = (0..WORKERS).map(|_| NetNs::new("pod").unwrap()).collect();
    let start = Instant::now();
    std::thread::scope(|s| {
        for (w, pod) in pods.iter().enumerate() {
            let node = &node;
            s.spawn(move || {
                for i in (w..CYCLES).step_by(WORKERS) {
                    let cid = format!("cy-{i}");
                    let r = node.add(&cid, pod);
                    r.expect_ok();
                    let ip = result_addr(&r.result());
                    assert!(ip.starts_with("10.244.11."), "{ip}");
                    node.del(&cid, pod).expect_ok();
                }
            });
        }
    });
    let took = start.elapsed();
    eprintln!("{CYCLES} ADD/DEL cycles, {WORKERS}-way: {took:?}");
    node.assert_clean();
    assert!(pods.iter().all(only_lo));
    // Round robin walked the pool instead of reusing the first address.
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(node.state.path().join("ipam/sluice/allocations.json")).unwrap(),
    )
    .unwrap();
    assert_ne!(state["last"], "10.244.11.2");
}

#[test]
fn sigkill_in_the_middle_of_add_then_del_leaves_clean_state() {
    let node = Node::new("kill", "10.244.12.0/24");
    let pod = NetNs::new("pod").unwrap();
    // Warm up (the first ADD also creates the bridge), then time a whole
    // ADD: the fastest of three, so that one slow sample (a busy machine,
    // the bridge's creation) does not push most kill delays past the end.
    node.add("warm", &pod).expect_ok();
    node.del("warm", &pod).expect_ok();
    let add_time = (0..3)
        .map(|i| {
            let cid = format!("time{i}");
            let t = Instant::now();
            node.add(&cid, &pod).expect_ok();
            let took = t.elapsed();
            node.del(&cid, &pod).expect_ok();
            took
        })
        .min()
        .unwrap();

    let (mut killed_mid_way, mut left_reservation, mut left_veth) = (0, 0, 0);
    for step in 0..=20u32 {
        let delay = add_time * step / 16;
        let cid = format!("k{step}");
        let mut child = Invocation::new("ADD", &node.conf())
            .attachment(&cid, &pod.path_str(), "eth0")
            .spawn(&node.ns);
        std::thread::sleep(delay);
        let finished = child.try_wait().unwrap().is_some();
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        if !finished {
            killed_mid_way += 1;
        }
        // What the kill left for DEL to clean up.
        if !node.allocations().is_empty() {
            left_reservation += 1;
        }
        if !node.host_veths().is_empty() {
            left_veth += 1;
        }
        node.del(&cid, &pod).expect_ok();
        node.assert_clean();
        assert!(only_lo(&pod), "step {step}: {:?}", pod.link_names());
    }
    eprintln!(
        "ADD takes {add_time:?}; {killed_mid_way} of 21 kills landed mid-ADD, \
         {left_reservation} left a reservation, {left_veth} a veth"
    );
    assert!(
        left_reservation >= 1,
        "no kill landed after the IPAM reservation"
    );
    assert!(
        killed_mid_way >= 5,
        "only {killed_mid_way} kills landed mid-ADD (ADD takes {add_time:?})"
    );
    // Nothing is wedged: the store and the node take a normal ADD.
    node.add("after", &pod).expect_ok();
    node.del("after", &pod).expect_ok();
    node.assert_clean();
}

#[test]
fn reboot_keeps_the_state_dir_and_gc_frees_everything() {
    let mut node = Node::new("rb", "10.244.13.0/24");
    let mut pods: Vec<NetNs> = (0..5).map(|_| NetNs::new("pod").unwrap()).collect();
    let mut last = String::new();
    for (i, p) in pods.iter().enumerate() {
        last = result_addr(&node.add(&format!("rb-{i}"), p).expect_ok().result());
    }
    assert_eq!(node.allocations().len(), 5);

    // Reboot: every namespace (node and pods) is gone, the state dir stays.
    let dead: Vec<String> = pods.iter().map(|p| p.path_str()).collect();
    pods.clear();
    node.ns = NetNs::new("rb").unwrap();
    assert_eq!(node.allocations().len(), 5);
    assert_eq!(node.host_veths(), Vec::<String>::new());

    // The runtime DELs what it remembers (netns gone) and GCs the rest.
    node.invoke("DEL", "rb-0", &dead[0], "eth0").expect_ok();
    assert_eq!(node.allocations().len(), 4);
    node.gc(&[]).expect_ok();
    node.assert_clean();

    // The node works again; the cursor survived, so no address is reused at once.
    let pod = NetNs::new("pod").unwrap();
    let ip = result_addr(&node.add("new", &pod).expect_ok().result());
    let next = |s: &str| s.rsplit('.').next().unwrap().parse::<u32>().unwrap();
    assert_eq!(next(&ip), next(&last) + 1, "{ip} after {last}");
    assert!(node.ns.ping(&ip));
    node.del("new", &pod).expect_ok();
    node.assert_clean();
}
