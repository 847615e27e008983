//! The clusters several end-to-end test files start from. They panic on
//! failure: they are the tests' set-up.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use crate::{
    apps::{self, Server},
    manifests::{self, Endpoint, Service, ready},
    sim::{Cluster, Pod, wait_until},
};

/// Pods of a cluster with the servers they run; the pods and servers go
/// before the cluster.
pub struct ThreeNodes {
    pub pods: Vec<Pod>,
    _servers: Vec<Server>,
    pub cluster: Cluster,
}

/// Three nodes running sluiced, two pods each (`n<node>-p<1|2>`, in node
/// order), every pod running the servers `serve` starts for it.
pub fn three_nodes(serve: impl Fn(&Pod) -> anyhow::Result<Vec<Server>>) -> ThreeNodes {
    let mut cluster = Cluster::new(3).unwrap();
    cluster.start_daemons().unwrap();
    let mut pods = Vec::new();
    let mut servers = Vec::new();
    for n in 0..3 {
        for p in 1..=2 {
            let pod = cluster.add_pod(n, &format!("n{}-p{p}", n + 1)).unwrap();
            servers.extend(serve(&pod).unwrap());
            pods.push(pod);
        }
    }
    ThreeNodes {
        pods,
        _servers: servers,
        cluster,
    }
}

/// One node, backend pods `web-1`, `web-2`... serving their names on every
/// target port of Service `svc` (over the port's protocol), a pod
/// `client`, and the Service with its EndpointSlice published where the
/// daemon reads the cluster.
pub struct Web {
    pub backends: Vec<Pod>,
    pub client: Pod,
    pub svc: Service,
    _servers: Vec<Server>,
    // Last: torn down after the pods and servers above.
    pub cluster: Cluster,
}

/// Ready endpoints on the pods' addresses and nodes.
pub fn endpoints(pods: &[&Pod]) -> Vec<Endpoint> {
    pods.iter().map(|p| ready(p.ip, &p.node)).collect()
}

impl Web {
    /// On a one-node `cluster` whose daemon runs: `backends` backend pods
    /// and the client; `svc` is published with the first `ready` of them
    /// as endpoints, and answers the client within `patience`.
    pub fn start(
        mut cluster: Cluster,
        svc: Service,
        backends: usize,
        ready: usize,
        patience: Duration,
    ) -> Self {
        let mut pods = Vec::new();
        let mut servers = Vec::new();
        for i in 1..=backends {
            let pod = cluster.add_pod(0, &format!("web-{i}")).unwrap();
            for port in &svc.ports {
                servers.push(
                    match port.protocol {
                        "UDP" => apps::serve_udp(&pod.ns, &pod.name, port.target_port),
                        _ => apps::serve_tcp(&pod.ns, &pod.name, port.target_port),
                    }
                    .unwrap(),
                );
            }
            pods.push(pod);
        }
        let client = cluster.add_pod(0, "client").unwrap();
        let s = Self {
            backends: pods,
            client,
            svc,
            _servers: servers,
            cluster,
        };
        s.cluster
            .publish(&format!("{}-svc.yaml", s.svc.name), &s.svc.yaml())
            .unwrap();
        s.set_endpoints(&s.backends.iter().take(ready).collect::<Vec<_>>());
        let target = s.target();
        let answered = wait_until(patience, || {
            s.client
                .ns
                .run(move || apps::tcp_ask(target).is_ok())
                .unwrap_or(false)
        });
        assert!(answered, "the Service never answered: {}", s.log());
        s
    }

    /// Replaces the Service's EndpointSlice: ready endpoints on `pods`, on
    /// every target port of the Service.
    pub fn set_endpoints(&self, pods: &[&Pod]) {
        let ports: Vec<(&str, u16, &str)> = self
            .svc
            .ports
            .iter()
            .map(|p| (p.name, p.target_port, p.protocol))
            .collect();
        self.cluster
            .publish(
                &format!("{}-slice.yaml", self.svc.name),
                &manifests::endpoint_slice(&self.svc, &ports, &endpoints(pods)),
            )
            .unwrap();
    }

    /// The Service's first port on its ClusterIP.
    pub fn target(&self) -> SocketAddr {
        SocketAddr::from((self.svc.cluster_ip, self.svc.ports[0].port))
    }

    /// Which backends answer `n` new connections from the client to
    /// `target` (all must succeed).
    pub fn spread(&self, target: SocketAddr, n: usize) -> BTreeMap<String, usize> {
        apps::tcp_spread(&self.client.ns, target, n)
    }

    /// The end of the daemon's log, for failure messages.
    pub fn log(&self) -> String {
        self.cluster.nodes[0].log_tail()
    }
}
