//! Socket load balancing: processes of a node itself (host network) reach
//! Services through the cgroup socket programs, which translate at
//! connect()/sendmsg() and give the Service address back in getpeername()
//! and recvmsg(). Every cluster attaches them to its own cgroup under the
//! cgroup2 mount; "host" processes are this test process, moved into that
//! cgroup while it creates their sockets, in the node's namespace.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, ErrorKind, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use serde_json::Value;
use sluice_tests::{
    apps::{self, Server},
    manifests::{self, Service, ready, tcp_port, udp_port},
    sim::{Cluster, Pod, wait_until},
};

const WEB: Ipv4Addr = Ipv4Addr::new(10, 96, 7, 10);
const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 99);
const LB_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 98);
const NODE_PORT: u16 = 30780;
const IO: Duration = Duration::from_secs(3);

/// `web`, a LoadBalancer: TCP 80 -> 8080 (NodePort 30780, a load balancer
/// IP, an externalIP) and UDP 53 -> 5353.
fn web_service() -> Service {
    let mut tcp = tcp_port("http", 80, 8080);
    tcp.node_port = Some(NODE_PORT);
    let mut svc = manifests::service("web", WEB, vec![tcp, udp_port("dns", 53, 5353)]);
    svc.kind = "LoadBalancer";
    svc.load_balancer_ips = vec![LB_IP];
    svc.external_ips = vec![EXTERNAL_IP];
    svc
}

/// Publishes `svc` with ready endpoints on `pods` for every port.
fn publish(cluster: &Cluster, svc: &Service, pods: &[&Pod]) {
    cluster
        .publish(&format!("{}-svc.yaml", svc.name), &svc.yaml())
        .unwrap();
    set_endpoints(cluster, svc, pods);
}

fn set_endpoints(cluster: &Cluster, svc: &Service, pods: &[&Pod]) {
    let ports: Vec<(&str, u16, &str)> = svc
        .ports
        .iter()
        .map(|p| (p.name, p.target_port, p.protocol))
        .collect();
    let endpoints: Vec<_> = pods.iter().map(|p| ready(p.ip, &p.node)).collect();
    cluster
        .publish(
            &format!("{}-slice.yaml", svc.name),
            &manifests::endpoint_slice(svc, &ports, &endpoints),
        )
        .unwrap();
}

/// A backend pod answering its name on TCP 8080 and UDP 5353.
fn backend(cluster: &mut Cluster, node: usize, name: &str) -> (Pod, Vec<Server>) {
    let pod = cluster.add_pod(node, name).unwrap();
    let servers = vec![
        apps::serve_tcp(&pod.ns, &pod.name, 8080).unwrap(),
        apps::serve_udp(&pod.ns, &pod.name, 5353).unwrap(),
    ];
    (pod, servers)
}

/// A TCP exchange from a host socket: the answering pod and the peer
/// address the socket reports.
fn tcp_ask_peer(target: SocketAddr) -> std::io::Result<(String, SocketAddr)> {
    let conn = TcpStream::connect_timeout(&target, IO)?;
    conn.set_read_timeout(Some(IO))?;
    let peer = conn.peer_addr()?;
    let mut out = conn.try_clone()?;
    out.write_all(b"hello\n")?;
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line)?;
    let who = line.split_whitespace().next().unwrap_or("").to_string();
    Ok((who, peer))
}

fn udp_connected_ask(sock: &UdpSocket, payload: &str) -> std::io::Result<String> {
    sock.send(payload.as_bytes())?;
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf)?;
    let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
    Ok(reply.split_whitespace().next().unwrap_or("").to_string())
}

/// How many connect()/sendmsg() calls node `i`'s socket programs translated.
fn translated(cluster: &Cluster, i: usize) -> u64 {
    cluster.ctl_json(i, &["socket-lb"]).unwrap()["translated"]
        .as_u64()
        .unwrap()
}

/// Waits until a host process of node 1 gets an answer from `target`.
fn wait_for_host(cluster: &Cluster, target: SocketAddr) {
    assert!(
        wait_until(Duration::from_secs(10), || {
            cluster
                .as_host(0, move || tcp_ask_peer(target).is_ok())
                .unwrap()
        }),
        "a host process never reached {target}: {}",
        cluster.nodes[0].log_tail()
    );
}

/// Socket programs `sluicectl status` on node `i` lists as pinned and loaded.
fn socket_program_pins(cluster: &Cluster, i: usize) -> usize {
    let status = cluster.ctl_json(i, &["status"]).unwrap();
    status["programs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["pin"].as_str().unwrap().starts_with("prog_sock_") && p["id"].is_u64())
        .count()
}

/// `sluicectl trace` of TCP from node `i`'s own address to `to`, on node `i`.
fn trace_from_node(cluster: &Cluster, i: usize, to: SocketAddr) -> Value {
    let from = cluster.nodes[i].ip.to_string();
    let to = to.to_string();
    let args = ["trace", "--from", &from, "--to", &to, "--proto", "tcp"];
    cluster.ctl_json(i, &args).unwrap()
}

fn frontends_of_sockets(view: &Value) -> BTreeSet<String> {
    view["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["frontend"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn host_processes_reach_cluster_ips_node_ports_lb_ips_and_external_ips_and_see_the_vip() {
    let mut cluster = Cluster::new(2).unwrap();
    cluster.start_daemons().unwrap();
    let (web1, _s1) = backend(&mut cluster, 0, "web-1");
    let (web2, _s2) = backend(&mut cluster, 1, "web-2");
    let svc = web_service();
    publish(&cluster, &svc, &[&web1, &web2]);
    let names: BTreeSet<String> = ["web-1", "web-2"].map(String::from).into();
    let cluster_ip = SocketAddr::from((WEB, 80));
    wait_for_host(&cluster, cluster_ip);
    let own_node_port = SocketAddr::from((cluster.nodes[0].ip, NODE_PORT));
    let other_node_port = SocketAddr::from((cluster.nodes[1].ip, NODE_PORT));
    let external = SocketAddr::from((EXTERNAL_IP, 80));
    let load_balancer = SocketAddr::from((LB_IP, 80));
    for target in [
        cluster_ip,
        own_node_port,
        other_node_port,
        external,
        load_balancer,
    ] {
        let (who, peer) = cluster
            .as_host(0, move || tcp_ask_peer(target))
            .unwrap()
            .unwrap_or_else(|e| panic!("TCP to {target} from the host failed: {e}"));
        assert!(names.contains(&who), "{target} answered by {who:?}");
        assert_eq!(peer, target, "getpeername() must show what was dialled");
    }

    let dns = SocketAddr::from((WEB, 53));
    let (connected_who, connected_peer, unconnected_who, reply_from) = cluster
        .as_host(0, move || {
            let c = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
            c.set_read_timeout(Some(IO)).unwrap();
            c.connect(dns).unwrap();
            let who = udp_connected_ask(&c, "q1").unwrap();
            let u = apps::udp_socket().unwrap();
            let (uwho, from) = apps::udp_ask(&u, dns, "q2").unwrap();
            (who, c.peer_addr().unwrap(), uwho, from)
        })
        .unwrap();
    assert!(names.contains(&connected_who), "{connected_who:?}");
    assert_eq!(connected_peer, dns, "connected UDP: getpeername()");
    assert!(names.contains(&unconnected_who), "{unconnected_who:?}");
    assert_eq!(
        reply_from, dns,
        "unconnected UDP: recvfrom() must give the Service address as the source"
    );

    // The other node's NodePort was translated here, at connect(), not by
    // that node's TC path.
    let view = cluster.ctl_json(0, &["socket-lb"]).unwrap();
    assert_eq!(view["scope"], "host");
    assert_eq!(
        view["cgroup"].as_str().unwrap(),
        cluster.cgroup.path().to_str().unwrap()
    );
    assert!(
        view["programs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["attached"] == true),
        "{view}"
    );
    assert_eq!(socket_program_pins(&cluster, 0), 4, "sluicectl status");
    let fronts = frontends_of_sockets(&view);
    for target in [cluster_ip, other_node_port, external, load_balancer, dns] {
        assert!(
            fronts.contains(&target.to_string()),
            "no socket entry for {target}: {fronts:?}"
        );
    }

    // Localhost NodePorts are not served (ARCHITECTURE.md says why).
    let localhost = SocketAddr::from((Ipv4Addr::LOCALHOST, NODE_PORT));
    let local = cluster
        .as_host(0, move || {
            TcpStream::connect_timeout(&localhost, Duration::from_secs(1)).map(|_| ())
        })
        .unwrap();
    assert!(local.is_err(), "127.0.0.1:{NODE_PORT} was served");

    // trace from the node's own address is the host's path: the socket
    // program's decision, never the uplink's.
    let t = trace_from_node(&cluster, 0, cluster_ip);
    assert_eq!(t["entry"], "Host", "{t}");
    assert_eq!(t["verdict"], "translate", "{t}");
    assert!(
        t["note"].as_str().unwrap().contains("BPF_PROG_TEST_RUN"),
        "the trace must say whether the program ran: {t}"
    );
}

#[test]
fn empty_services_refuse_at_connect_and_affinity_holds_for_host_clients() {
    let mut cluster = Cluster::new(1).unwrap();
    cluster.start_daemons().unwrap();
    let mut servers = Vec::new();
    let mut pods = Vec::new();
    for i in 1..=3 {
        let (p, s) = backend(&mut cluster, 0, &format!("web-{i}"));
        pods.push(p);
        servers.extend(s);
    }
    let empty = manifests::service(
        "empty",
        Ipv4Addr::new(10, 96, 7, 20),
        vec![tcp_port("http", 80, 8080), udp_port("dns", 53, 5353)],
    );
    publish(&cluster, &empty, &[]);
    let mut sticky = manifests::service(
        "sticky",
        Ipv4Addr::new(10, 96, 7, 21),
        vec![tcp_port("http", 80, 8080)],
    );
    sticky.session_affinity_timeout = Some(600);
    publish(&cluster, &sticky, &pods.iter().collect::<Vec<_>>());
    let sticky_addr = SocketAddr::from((sticky.cluster_ip, 80));
    wait_for_host(&cluster, sticky_addr);

    let empty_tcp = SocketAddr::from((empty.cluster_ip, 80));
    let empty_udp = SocketAddr::from((empty.cluster_ip, 53));
    let (tcp, took, udp, sent) = cluster
        .as_host(0, move || {
            let start = Instant::now();
            let tcp = TcpStream::connect_timeout(&empty_tcp, Duration::from_secs(5));
            let took = start.elapsed();
            let u = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
            let sent = u.send_to(b"q", empty_udp).map(|_| ());
            (tcp.map(|_| ()), took, u.connect(empty_udp), sent)
        })
        .unwrap();
    let err = tcp.expect_err("a Service without endpoints accepted a connection");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    assert!(took < Duration::from_secs(1), "refused only after {took:?}");
    let err = udp.expect_err("UDP connect() to a Service without endpoints succeeded");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    let err = sent.expect_err("sendto() a Service without endpoints succeeded");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");

    let answers: Vec<String> = cluster
        .as_host(0, move || {
            (0..12)
                .map(|_| tcp_ask_peer(sticky_addr).unwrap().0)
                .collect()
        })
        .unwrap();
    let distinct: BTreeSet<&String> = answers.iter().collect();
    assert_eq!(
        distinct.len(),
        1,
        "ClientIP affinity must keep a host client on one backend: {answers:?}"
    );
}

#[test]
fn another_nodes_processes_are_left_alone_in_host_mode() {
    let mut cluster = Cluster::new(2).unwrap();
    cluster.start_daemon(0).unwrap();
    // Same cgroup, same programs' attach point, but node 2 serves none.
    cluster
        .start_daemon_with_args(1, &["--socket-lb", "off"])
        .unwrap();
    let (web1, _s1) = backend(&mut cluster, 0, "web-1");
    let svc = web_service();
    publish(&cluster, &svc, &[&web1]);
    let target = SocketAddr::from((WEB, 80));
    wait_for_host(&cluster, target);
    let before = translated(&cluster, 0);
    let from_node2 = cluster
        .as_host(1, move || {
            TcpStream::connect_timeout(&target, Duration::from_secs(1)).map(|_| ())
        })
        .unwrap();
    assert!(
        from_node2.is_err(),
        "node-2's process reached the ClusterIP, so node-1's programs translated a socket of another namespace"
    );
    assert_eq!(
        translated(&cluster, 0),
        before,
        "node-1's programs counted a socket of node-2"
    );
    let view = cluster.ctl_json(1, &["socket-lb"]).unwrap();
    assert_eq!(view["scope"], "off");
    assert_eq!(socket_program_pins(&cluster, 1), 0, "sluicectl status");
    // Nor does node-2's trace claim a translation its path does not do.
    let t = trace_from_node(&cluster, 1, target);
    assert_eq!(t["entry"], "Host", "{t}");
    assert_eq!(t["verdict"], "pass", "{t}");
    assert_eq!(t["backend"], Value::Null, "{t}");
}

#[test]
fn with_scope_all_pods_are_translated_at_connect_and_outside_traffic_still_uses_tc() {
    let mut cluster = Cluster::new(1).unwrap();
    cluster
        .start_daemon_with_args(0, &["--socket-lb", "all"])
        .unwrap();
    let web = cluster.add_pod(0, "web-1").unwrap();
    let _peer = apps::serve_peer_address(&web.ns, 8080).unwrap();
    let client = cluster.add_pod(0, "client").unwrap();
    let svc = web_service();
    publish(&cluster, &svc, &[&web]);
    let target = SocketAddr::from((WEB, 80));
    let client_ip = client.ip.to_string();
    let seen = |cluster: &Cluster| {
        cluster
            .in_cgroup(|| client.ns.run(move || apps::ask_peer_address(target)))
            .unwrap()
            .unwrap()
    };
    assert!(
        wait_until(Duration::from_secs(10), || seen(&cluster)
            .is_ok_and(|s| s == client_ip)),
        "{}",
        cluster.nodes[0].log_tail()
    );
    let ct = cluster.ctl_json(0, &["conntrack"]).unwrap();
    assert!(
        ct.as_array().unwrap().is_empty(),
        "a pod's connection translated at connect() must leave no CT entry: {ct}"
    );
    let view = cluster.ctl_json(0, &["socket-lb"]).unwrap();
    assert_eq!(view["scope"], "all");
    assert!(
        frontends_of_sockets(&view).contains(&target.to_string()),
        "{view}"
    );

    // The outside host is not in the cgroup: its NodePort connection is
    // the TC path's, and tracked there.
    let node_port = SocketAddr::from((cluster.nodes[0].ip, NODE_PORT));
    let outside = cluster
        .outside
        .run(move || apps::ask_peer_address(node_port))
        .unwrap();
    assert!(outside.is_ok(), "NodePort from outside: {outside:?}");
    let ct = cluster.ctl_json(0, &["conntrack"]).unwrap();
    assert!(
        !ct.as_array().unwrap().is_empty(),
        "the outside client's NodePort connection should be tracked by TC"
    );
}

#[test]
fn a_connected_udp_socket_whose_backend_leaves_is_destroyed_and_reconnects_to_the_new_one() {
    let mut cluster = Cluster::new(1).unwrap();
    cluster.start_daemons().unwrap();
    let (web1, _s1) = backend(&mut cluster, 0, "web-1");
    let (web2, _s2) = backend(&mut cluster, 0, "web-2");
    let svc = web_service();
    publish(&cluster, &svc, &[&web1]);
    let dns = SocketAddr::from((WEB, 53));
    let web1_direct = SocketAddr::from((web1.ip, 5353));
    let (sock, direct) = cluster
        .as_host(0, move || {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            // A process that dialled the pod itself, not the Service.
            let d = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
            d.set_read_timeout(Some(IO)).unwrap();
            d.connect(web1_direct).unwrap();
            (s, d)
        })
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || {
            sock.connect(dns).is_ok() && udp_connected_ask(&sock, "q").is_ok_and(|w| w == "web-1")
        }),
        "{}",
        cluster.nodes[0].log_tail()
    );
    set_endpoints(&cluster, &svc, &[&web2]);
    // Until the daemon destroys the socket it still reaches web-1 (whose
    // server keeps answering): then its next send or receive fails.
    let mut last = Ok(String::new());
    let destroyed = wait_until(Duration::from_secs(10), || {
        last = udp_connected_ask(&sock, "q");
        last.is_err()
    });
    assert!(
        destroyed,
        "the socket kept its removed backend: last answer {last:?}; {}",
        cluster.nodes[0].log_tail()
    );
    let err = last.unwrap_err();
    assert!(
        matches!(
            err.raw_os_error(),
            Some(libc::ECONNABORTED | libc::EDESTADDRREQ)
        ),
        "unexpected error after the backend left: {err}"
    );
    assert_eq!(
        udp_connected_ask(&direct, "direct").unwrap(),
        "web-1",
        "a socket connected to the pod itself was destroyed with the Service's"
    );
    // What a resolver does: take the error, connect again, and the next
    // datagram goes to the live backend.
    let pending = sock.take_error().unwrap();
    assert!(
        pending.is_none()
            || pending.as_ref().and_then(|e| e.raw_os_error()) == Some(libc::ECONNABORTED),
        "{pending:?}"
    );
    sock.connect(dns).unwrap();
    // A reply web-1 sent before the socket was destroyed may still sit in
    // its queue (connect() does not flush it): match the answer to the
    // query, as resolvers match query ids.
    sock.send(b"again").unwrap();
    let mut buf = [0u8; 512];
    let answer = loop {
        let n = sock.recv(&mut buf).unwrap();
        let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
        if reply.ends_with(" again") {
            break reply;
        }
    };
    assert_eq!(answer, "web-2 again");
    assert!(
        std::fs::read_to_string(&cluster.nodes[0].log)
            .unwrap()
            .contains("UDP sockets connected to removed backends destroyed"),
        "{}",
        cluster.nodes[0].log_tail()
    );
}

#[test]
fn host_connections_survive_a_daemon_restart() {
    let mut cluster = Cluster::new(1).unwrap();
    cluster.start_daemons().unwrap();
    let (web1, _s1) = backend(&mut cluster, 0, "web-1");
    let svc = web_service();
    publish(&cluster, &svc, &[&web1]);
    let target = SocketAddr::from((WEB, 80));
    wait_for_host(&cluster, target);
    let stream = cluster
        .in_cgroup(|| apps::Stream::start(&cluster.nodes[0].ns, target, Duration::from_millis(50)))
        .unwrap()
        .unwrap();
    let dns = SocketAddr::from((WEB, 53));
    let udp = cluster
        .as_host(0, move || {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
            s.set_read_timeout(Some(IO)).unwrap();
            s.connect(dns).unwrap();
            s
        })
        .unwrap();
    assert_eq!(udp_connected_ask(&udp, "before").unwrap(), "web-1");

    cluster.stop_daemon(0).unwrap();
    // No daemon: the pinned links keep the programs attached.
    let down = cluster.as_host(0, move || tcp_ask_peer(target)).unwrap();
    assert_eq!(down.unwrap(), ("web-1".to_string(), target));
    let during = stream.exchanged();
    assert!(
        wait_until(Duration::from_secs(5), || stream.exchanged() > during + 5),
        "the host's TCP connection stalled while no daemon ran"
    );
    cluster.start_daemon(0).unwrap();
    let attached = "socket load balancing attached";
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(
            &cluster.nodes[0].log
        )
        .unwrap_or_default()
        .matches(attached)
        .count()
            >= 2),
        "the restarted daemon never attached: {}",
        cluster.nodes[0].log_tail()
    );
    let up = cluster.as_host(0, move || tcp_ask_peer(target)).unwrap();
    assert_eq!(up.unwrap(), ("web-1".to_string(), target));
    assert_eq!(udp_connected_ask(&udp, "after").unwrap(), "web-1");
    assert_eq!(udp.peer_addr().unwrap(), dns);
    let after = stream.exchanged();
    assert!(
        wait_until(Duration::from_secs(5), || stream.exchanged() > after + 5),
        "the host's TCP connection stalled after the restart"
    );
    let report = stream.stop();
    assert!(
        report.error.is_none(),
        "the host's TCP connection broke across the restart: {report:?}"
    );
    // The restart replaced the programs in place: one of each on the
    // cgroup, not the old ones and the new.
    let out = std::process::Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cluster.cgroup.path())
        .output()
        .unwrap();
    let attached: Value = serde_json::from_slice(&out.stdout).unwrap();
    let types: Vec<&str> = attached
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["attach_type"].as_str())
        .collect();
    for hook in [
        "inet4_connect",
        "udp4_sendmsg",
        "udp4_recvmsg",
        "inet4_getpeername",
    ] {
        assert_eq!(
            types.iter().filter(|t| t.contains(hook)).count(),
            1,
            "{hook} on the cgroup after the restart: {types:?}"
        );
    }
}
