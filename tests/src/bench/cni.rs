//! `cargo xtask bench cni`: CNI ADD/DEL latency of sluice-cni against the
//! reference bridge + host-local plugins (Debian's containernetworking-
//! plugins) on an equivalent configuration, sequential and 16-way
//! concurrent, in one run; then pod-to-pod TCP throughput across the VXLAN
//! overlay against node-to-node on the fabric (the ceiling), with iperf3.
//!
//! Both plugins are invoked the same way a container runtime invokes them:
//! a fresh process per call, entered into the node's network namespace
//! (setns before exec, no `ip netns exec` overhead), CNI environment and the
//! configuration on stdin. What is timed is the whole call as a runtime
//! sees it: process start to exit.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use sluice_testkit::netns::{NetNs, command_entering};

use crate::{
    bench::percentile,
    sim::{Cluster, wait_until},
};

const PODS: usize = 128;
const CONCURRENCY: usize = 16;
const REFERENCE_DIR: &str = "/usr/lib/cni";

/// Runs `plugin` inside the namespace at `ns_path` like a runtime would.
fn invoke(plugin: &Path, ns_path: &Path, env: &[(&str, String)], stdin: &[u8]) -> Result<Duration> {
    let mut cmd = command_entering(ns_path, plugin)?;
    cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", plugin.display()))?;
    child.stdin.take().expect("piped").write_all(stdin)?;
    let out = child.wait_with_output()?;
    let took = start.elapsed();
    if !out.status.success() {
        bail!(
            "{} failed: {} {}",
            plugin.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(took)
}

struct Plugin {
    name: &'static str,
    /// Short tag for container ids (CNI allows only [a-zA-Z0-9_.-]).
    tag: &'static str,
    binary: PathBuf,
    node: PathBuf,
    conf: serde_json::Value,
    cni_path: String,
}

impl Plugin {
    fn call(&self, cmd: &str, id: &str, netns: &Path) -> Result<Duration> {
        let env = [
            ("CNI_COMMAND", cmd.to_string()),
            ("CNI_CONTAINERID", id.to_string()),
            ("CNI_NETNS", netns.display().to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_PATH", self.cni_path.clone()),
        ];
        invoke(
            &self.binary,
            &self.node,
            &env,
            self.conf.to_string().as_bytes(),
        )
    }
}

struct Figures {
    add: Vec<Duration>,
    del: Vec<Duration>,
    wall: Duration,
}

/// ADD then DEL for `pods` pod namespaces, `workers` at a time.
fn measure(plugin: &Plugin, pods: &[NetNs], workers: usize) -> Result<Figures> {
    let jobs: Vec<(String, PathBuf)> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("bench-{}-{i}", plugin.tag), p.path()))
        .collect();
    let run = |cmd: &str| -> Result<(Vec<Duration>, Duration)> {
        let times = Arc::new(Mutex::new(Vec::new()));
        let next = Arc::new(Mutex::new(0usize));
        let start = Instant::now();
        std::thread::scope(|s| -> Result<()> {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    let (times, next, jobs) = (times.clone(), next.clone(), &jobs);
                    s.spawn(move || -> Result<()> {
                        loop {
                            let i = {
                                let mut n = next.lock().unwrap();
                                let i = *n;
                                *n += 1;
                                i
                            };
                            let Some((id, netns)) = jobs.get(i) else {
                                return Ok(());
                            };
                            let t = plugin.call(cmd, id, netns)?;
                            times.lock().unwrap().push(t);
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
            }
            Ok(())
        })?;
        let wall = start.elapsed();
        let t = Arc::try_unwrap(times).unwrap().into_inner().unwrap();
        Ok((t, wall))
    };
    let (add, wall) = run("ADD")?;
    let (del, _) = run("DEL")?;
    Ok(Figures { add, del, wall })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn latency(cluster: &Cluster) -> Result<()> {
    // sluice-cni in node-1, wired to its running daemon's pins; the
    // reference plugins in a node namespace of their own, same addressing.
    let n1 = &cluster.nodes[0];
    let sluice_conf = n1.cni_stdin()?;
    let reference_node = NetNs::new("refnode")?;
    let ref_state = cluster.fs.scratch().join("host-local");
    let reference_conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "reference",
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "hairpinMode": true,
        "ipMasq": false,
        "mtu": 1450,
        "ipam": {
            "type": "host-local",
            "ranges": [[{ "subnet": "10.250.0.0/24" }]],
            "dataDir": ref_state.display().to_string(),
        }
    });
    let reference = Plugin {
        name: "bridge+host-local",
        tag: "ref",
        binary: Path::new(REFERENCE_DIR).join("bridge"),
        node: reference_node.path(),
        conf: reference_conf,
        cni_path: REFERENCE_DIR.to_string(),
    };
    if !reference.binary.exists() {
        bail!(
            "{} missing: run `cargo xtask setup`",
            reference.binary.display()
        );
    }
    let sluice = Plugin {
        name: "sluice-cni",
        tag: "sluice",
        binary: cluster.bins.cni.clone(),
        node: n1.ns.path(),
        conf: sluice_conf,
        cni_path: cluster.bins.dir.display().to_string(),
    };
    println!(
        "== CNI ADD/DEL latency: {PODS} pods, each call a fresh process entered into the node namespace (ms)"
    );
    println!(
        "{:<18} {:>11} {:>8} {:>8} {:>8} {:>8} {:>10}",
        "plugin", "mode", "ADD p50", "ADD p99", "DEL p50", "DEL p99", "ADDs/s"
    );
    let mut rows = Vec::new();
    for workers in [1, CONCURRENCY] {
        for plugin in [&sluice, &reference] {
            let pods: Vec<NetNs> = (0..PODS)
                .map(|i| NetNs::new(&format!("bp{i}")))
                .collect::<Result<_>>()?;
            let f = measure(plugin, &pods, workers)?;
            let mode = if workers == 1 {
                "sequential".to_string()
            } else {
                format!("{workers}-way")
            };
            let row = (
                percentile(&f.add, 0.5),
                percentile(&f.add, 0.99),
                percentile(&f.del, 0.5),
                percentile(&f.del, 0.99),
                PODS as f64 / f.wall.as_secs_f64(),
            );
            println!(
                "{:<18} {:>11} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>10.0}",
                plugin.name,
                mode,
                ms(row.0),
                ms(row.1),
                ms(row.2),
                ms(row.3),
                row.4
            );
            rows.push((plugin.name, workers, row));
        }
    }
    for workers in [1, CONCURRENCY] {
        let get = |name: &str| {
            rows.iter()
                .find(|r| r.0 == name && r.1 == workers)
                .map(|r| r.2)
        };
        if let (Some(s), Some(r)) = (get("sluice-cni"), get("bridge+host-local")) {
            println!(
                "ratio sluice-cni / reference, {}: ADD p50 {:.2}x, ADD p99 {:.2}x, DEL p50 {:.2}x (below 1 = sluice-cni faster)",
                if workers == 1 { "sequential" } else { "16-way" },
                ms(s.0) / ms(r.0),
                ms(s.1) / ms(r.1),
                ms(s.2) / ms(r.2)
            );
        }
    }
    Ok(())
}

/// iperf3 throughput in Gbit/s from `client_ns` to `server` for 5 s.
fn iperf(server_ns: &NetNs, client_ns: &NetNs, server: std::net::Ipv4Addr) -> Result<f64> {
    let mut srv = server_ns
        .command("iperf3")
        .args(["-s", "-1", "-B", &server.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 (run `cargo xtask setup`)")?;
    std::thread::sleep(Duration::from_millis(300));
    let out = client_ns.output("iperf3", &["-c", &server.to_string(), "-t", "5", "-J"]);
    let _ = srv.kill();
    let _ = srv.wait();
    let v: serde_json::Value = serde_json::from_str(&out?)?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .context("no throughput in iperf3 output")
}

fn throughput(cluster: &mut Cluster) -> Result<()> {
    let a = cluster.add_pod(0, "iperf-client")?;
    let b = cluster.add_pod(1, "iperf-server")?;
    let ready = wait_until(Duration::from_secs(5), || {
        a.ns.output("ping", &["-c", "1", "-W", "1", &b.ip.to_string()])
            .is_ok()
    });
    if !ready {
        bail!("pods on node-1 and node-2 cannot reach each other");
    }
    let fabric = iperf(
        &cluster.nodes[1].ns,
        &cluster.nodes[0].ns,
        cluster.nodes[1].ip,
    )?;
    let overlay = iperf(&b.ns, &a.ns, b.ip)?;
    println!();
    println!("== TCP throughput, iperf3 5 s, one stream");
    println!("  node-1 -> node-2 on the fabric (ceiling): {fabric:>7.2} Gbit/s");
    println!("  pod on node-1 -> pod on node-2, overlay:  {overlay:>7.2} Gbit/s");
    println!(
        "  overlay / fabric:                          {:>7.2}x",
        overlay / fabric
    );
    Ok(())
}

pub fn run() -> Result<()> {
    sluice_testkit::privileges::require_root();
    let mut cluster = Cluster::new(2)?;
    cluster.start_daemons()?;
    latency(&cluster)?;
    throughput(&mut cluster)?;
    Ok(())
}
