//! `cargo xtask demo`: Sluice's main job on an embedded default.
//!
//! Builds a simulated node in network namespaces, wires pods with the real
//! sluice-cni binary, starts sluiced on a manifests directory, serves HTTP
//! in three backend pods, sends requests to a ClusterIP from a client pod,
//! prints where they went and what the datapath saw, then removes it all.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use sluice_tests::{
    apps,
    manifests::{self, ready, tcp_port},
    sim::{Cluster, wait_until},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const REQUESTS: usize = 30;

fn http_get(target: SocketAddr) -> Result<String> {
    let mut conn = TcpStream::connect_timeout(&target, apps::IO_TIMEOUT)?;
    conn.set_read_timeout(Some(apps::IO_TIMEOUT))?;
    write!(conn, "GET / HTTP/1.1\r\nHost: web\r\n\r\n")?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    if !reply.starts_with("HTTP/1.1 200") {
        bail!("unexpected reply {reply:?}");
    }
    Ok(reply
        .rsplit("\r\n\r\n")
        .next()
        .unwrap_or("")
        .trim()
        .to_string())
}

fn main() -> Result<()> {
    println!("Sluice demo: one simulated node, three backend pods, one client pod\n");
    let mut cluster = Cluster::new(1)?;
    let node = cluster.nodes[0].name.clone();
    println!(
        "fabric + {node} ({}) built in network namespaces",
        cluster.nodes[0].ip
    );
    cluster.start_daemons()?;
    println!(
        "sluiced running in {node}, reading {}",
        cluster.manifests.display()
    );

    let mut pods = Vec::new();
    let mut servers = Vec::new();
    for i in 1..=3 {
        let pod = cluster.add_pod(0, &format!("web-{i}"))?;
        servers.push(apps::serve_tcp(&pod.ns, &pod.name, 8080)?);
        println!(
            "  pod {:<7} {:<12} wired by sluice-cni, serving HTTP on :8080",
            pod.name, pod.ip
        );
        pods.push(pod);
    }
    let client = cluster.add_pod(0, "client")?;
    println!(
        "  pod {:<7} {:<12} wired by sluice-cni",
        client.name, client.ip
    );

    let svc = manifests::service("web", VIP, vec![tcp_port("http", 80, 8080)]);
    cluster.apply("web-service.yaml", &svc.yaml())?;
    let eps: Vec<_> = pods.iter().map(|p| ready(p.ip, &p.node)).collect();
    cluster.apply(
        "web-endpointslice.yaml",
        &manifests::endpoint_slice(&svc, &[("http", 8080, "TCP")], &eps),
    )?;
    println!("\nService default/web: ClusterIP {VIP}:80 -> targetPort 8080 (manifests written)");

    let target = SocketAddr::from((VIP, 80));
    let t = Instant::now();
    let ready = wait_until(Duration::from_secs(10), || {
        client
            .ns
            .run(move || http_get(target).is_ok())
            .unwrap_or(false)
    });
    if !ready {
        bail!(
            "the service never answered:\n{}",
            cluster.nodes[0].log_tail()
        );
    }
    println!(
        "first answer {} ms after the manifests were written\n",
        t.elapsed().as_millis()
    );

    let results = client
        .ns
        .run(move || (0..REQUESTS).map(|_| http_get(target)).collect::<Vec<_>>())?;
    let mut by_pod: BTreeMap<String, usize> = BTreeMap::new();
    for r in results {
        *by_pod.entry(r.context("request failed")?).or_default() += 1;
    }
    println!("{REQUESTS} HTTP requests from client to http://{VIP}:80/ :");
    for p in &pods {
        let n = by_pod.get(&p.name).copied().unwrap_or(0);
        println!(
            "  {:<7} ({:<12}) {:>3}  {}",
            p.name,
            p.ip.to_string(),
            n,
            "#".repeat(n)
        );
    }

    for cmd in [
        ["services"].as_slice(),
        ["conntrack"].as_slice(),
        ["stats"].as_slice(),
    ] {
        let n = &cluster.nodes[0];
        let out =
            n.ns.command(&cluster.bins.sluicectl)
                .arg("--bpffs")
                .arg(&n.bpffs)
                .arg("--state-dir")
                .arg(&n.state_dir)
                .args(cmd)
                .output()?;
        println!("\n$ sluicectl {}", cmd.join(" "));
        print!("{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            print!("{}", String::from_utf8_lossy(&out.stderr));
        }
    }

    drop(servers);
    drop(client);
    drop(pods);
    drop(cluster);
    println!("\nnamespaces, links, pins and files removed");
    Ok(())
}
