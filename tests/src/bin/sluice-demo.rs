//! `cargo xtask demo`: Sluice's main job on an embedded default.
//!
//! Builds a two-node cluster in network namespaces (a fabric bridge, two
//! nodes, an outside host), wires pods with the real sluice-cni binary,
//! runs sluiced on each node from one manifests directory, serves HTTP in
//! four backend pods spread over both nodes, then sends real requests to
//! the ClusterIP from a client pod and from a host-network process of a
//! node (socket load balancing), and to the NodePort from the outside
//! host through each node, prints where they went and what the datapath
//! recorded (sluicectl), and removes everything.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use sluice_testkit::netns::NetNs;
use sluice_tests::{
    apps,
    manifests::{self, Port, ready, tcp_port},
    sim::{Cluster, Pod, wait_until},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const NODE_PORT: u16 = 30080;
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

/// `REQUESTS` GETs to `target` from `ns`; answers counted by pod.
fn spread(ns: &NetNs, target: SocketAddr) -> Result<BTreeMap<String, usize>> {
    let results = ns.run(move || (0..REQUESTS).map(|_| http_get(target)).collect::<Vec<_>>())?;
    let mut by_pod = BTreeMap::new();
    for r in results {
        *by_pod
            .entry(r.with_context(|| format!("request to {target} failed"))?)
            .or_default() += 1;
    }
    Ok(by_pod)
}

fn print_spread(title: &str, by_pod: &BTreeMap<String, usize>, pods: &[Pod]) {
    println!("{title}");
    for p in pods {
        let n = by_pod.get(&p.name).copied().unwrap_or(0);
        println!(
            "  {:<6} on {} ({:<11}) {:>3}  {}",
            p.name,
            p.node,
            p.ip.to_string(),
            n,
            "#".repeat(n)
        );
    }
}

fn sluicectl(cluster: &Cluster, node: usize, args: &[&str]) -> Result<()> {
    let n = &cluster.nodes[node];
    let out =
        n.ns.command(&cluster.bins.sluicectl)
            .arg("--bpffs")
            .arg(&n.bpffs)
            .arg("--state-dir")
            .arg(&n.state_dir)
            .args(args)
            .output()?;
    println!("\n[{}]$ sluicectl {}", n.name, args.join(" "));
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!(
            "sluicectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    println!(
        "Sluice demo: two simulated nodes, four backend pods, a client pod, an outside host\n"
    );
    let mut cluster = Cluster::new(2)?;
    for n in &cluster.nodes {
        println!(
            "  {} {:<10} pod CIDR {}",
            n.name,
            n.ip.to_string(),
            n.pod_cidr
        );
    }
    println!(
        "  outside {} (a host on the fabric, not in the cluster)",
        cluster.outside_ip
    );
    cluster.start_daemons()?;
    println!(
        "sluiced running on both nodes (VXLAN overlay between them), reading {}",
        cluster.manifests.display()
    );

    let mut pods = Vec::new();
    let mut servers = Vec::new();
    for (i, node) in [(1, 0), (2, 0), (3, 1), (4, 1)] {
        let pod = cluster.add_pod(node, &format!("web-{i}"))?;
        servers.push(apps::serve_tcp(&pod.ns, &pod.name, 8080)?);
        pods.push(pod);
    }
    let client = cluster.add_pod(0, "client")?;
    println!("pods wired by sluice-cni, serving HTTP on :8080:");
    for p in &pods {
        println!("  {:<6} {:<11} on {}", p.name, p.ip.to_string(), p.node);
    }
    println!("  client {:<11} on {}", client.ip.to_string(), client.node);

    let mut svc = manifests::service(
        "web",
        VIP,
        vec![Port {
            node_port: Some(NODE_PORT),
            ..tcp_port("http", 80, 8080)
        }],
    );
    svc.kind = "NodePort";
    cluster.apply("web-service.yaml", &svc.yaml())?;
    let eps: Vec<_> = pods.iter().map(|p| ready(p.ip, &p.node)).collect();
    cluster.apply(
        "web-endpointslice.yaml",
        &manifests::endpoint_slice(&svc, &[("http", 8080, "TCP")], &eps),
    )?;
    println!(
        "\nService default/web (NodePort): ClusterIP {VIP}:80 and NodePort {NODE_PORT} -> targetPort 8080"
    );

    let cluster_ip = SocketAddr::from((VIP, 80));
    let t = Instant::now();
    let ready = wait_until(Duration::from_secs(10), || {
        client
            .ns
            .run(move || http_get(cluster_ip).is_ok())
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

    let by_pod = spread(&client.ns, cluster_ip)?;
    print_spread(
        &format!("{REQUESTS} requests, client pod -> ClusterIP http://{VIP}:80/ :"),
        &by_pod,
        &pods,
    );
    // A process of node-1 itself (host network: the kubelet, a
    // hostNetwork pod): served by the socket programs at connect().
    let by_pod = cluster.in_cgroup(|| spread(&cluster.nodes[0].ns, cluster_ip))??;
    print_spread(
        &format!(
            "\n{REQUESTS} requests, a host-network process of {} -> ClusterIP http://{VIP}:80/ (socket load balancing):",
            cluster.nodes[0].name
        ),
        &by_pod,
        &pods,
    );
    for n in 0..cluster.nodes.len() {
        let node = &cluster.nodes[n];
        let target = SocketAddr::from((node.ip, NODE_PORT));
        let by_pod = spread(&cluster.outside, target)?;
        print_spread(
            &format!(
                "\n{REQUESTS} requests, outside host -> NodePort http://{target}/ ({}):",
                node.name
            ),
            &by_pod,
            &pods,
        );
    }

    // A connection held open, so `conntrack` has a live entry to show.
    let held = apps::Stream::start(&client.ns, cluster_ip, Duration::from_millis(50))?;
    std::thread::sleep(Duration::from_millis(200));
    sluicectl(&cluster, 0, &["services"])?;
    sluicectl(&cluster, 0, &["conntrack"])?;
    let from = held
        .local()
        .map_or_else(|| client.ip.to_string(), |a| a.to_string());
    sluicectl(
        &cluster,
        0,
        &[
            "trace",
            "--from",
            &from,
            "--to",
            &cluster_ip.to_string(),
            "--proto",
            "tcp",
        ],
    )?;
    sluicectl(&cluster, 0, &["socket-lb"])?;
    sluicectl(&cluster, 0, &["nodes"])?;
    sluicectl(&cluster, 0, &["stats"])?;
    let report = held.stop();
    if let Some(e) = report.error {
        bail!("the held connection broke: {e}");
    }

    drop(servers);
    drop(client);
    drop(pods);
    drop(cluster);
    println!("\nnamespaces, links, pins and files removed");
    Ok(())
}
