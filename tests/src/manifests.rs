//! Kubernetes objects for the manifests directory, written as YAML the way
//! people and `kubectl get -o yaml` write them.

use std::{fmt::Write as _, net::Ipv4Addr};

#[derive(Clone, Debug)]
pub struct Port {
    pub name: &'static str,
    pub port: u16,
    pub target_port: u16,
    pub protocol: &'static str,
    pub node_port: Option<u16>,
}

pub fn tcp_port(name: &'static str, port: u16, target_port: u16) -> Port {
    Port {
        name,
        port,
        target_port,
        protocol: "TCP",
        node_port: None,
    }
}

pub fn udp_port(name: &'static str, port: u16, target_port: u16) -> Port {
    Port {
        protocol: "UDP",
        ..tcp_port(name, port, target_port)
    }
}

#[derive(Clone, Debug)]
pub struct Service {
    pub namespace: &'static str,
    pub name: &'static str,
    pub cluster_ip: Ipv4Addr,
    pub ports: Vec<Port>,
    pub kind: &'static str,
    pub external_traffic_policy: Option<&'static str>,
    pub session_affinity_timeout: Option<u32>,
    pub load_balancer_ips: Vec<Ipv4Addr>,
    pub external_ips: Vec<Ipv4Addr>,
    pub source_ranges: Vec<&'static str>,
    pub health_check_node_port: Option<u16>,
    pub annotations: Vec<(&'static str, &'static str)>,
}

pub fn service(name: &'static str, cluster_ip: Ipv4Addr, ports: Vec<Port>) -> Service {
    Service {
        namespace: "default",
        name,
        cluster_ip,
        ports,
        kind: "ClusterIP",
        external_traffic_policy: None,
        session_affinity_timeout: None,
        load_balancer_ips: Vec::new(),
        external_ips: Vec::new(),
        source_ranges: Vec::new(),
        health_check_node_port: None,
        annotations: Vec::new(),
    }
}

impl Service {
    pub fn yaml(&self) -> String {
        let mut y = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {}\n  namespace: {}\n  resourceVersion: \"1\"\nspec:\n  type: {}\n  clusterIP: {}\n  clusterIPs:\n  - {}\n  selector:\n    app: {}\n",
            self.name, self.namespace, self.kind, self.cluster_ip, self.cluster_ip, self.name
        );
        if !self.annotations.is_empty() {
            let at = y.find("spec:\n").expect("the spec line");
            let mut a = String::from("  annotations:\n");
            for (k, v) in &self.annotations {
                let _ = writeln!(a, "    {k}: \"{v}\"");
            }
            y.insert_str(at, &a);
        }
        if let Some(p) = self.external_traffic_policy {
            let _ = writeln!(y, "  externalTrafficPolicy: {p}");
        }
        if let Some(t) = self.session_affinity_timeout {
            let _ = write!(
                y,
                "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: {t}\n"
            );
        }
        if let Some(p) = self.health_check_node_port {
            let _ = writeln!(y, "  healthCheckNodePort: {p}");
        }
        if !self.external_ips.is_empty() {
            y.push_str("  externalIPs:\n");
            for ip in &self.external_ips {
                let _ = writeln!(y, "  - {ip}");
            }
        }
        if !self.source_ranges.is_empty() {
            y.push_str("  loadBalancerSourceRanges:\n");
            for r in &self.source_ranges {
                let _ = writeln!(y, "  - {r}");
            }
        }
        y.push_str("  ports:\n");
        for p in &self.ports {
            let _ = write!(
                y,
                "  - name: {}\n    port: {}\n    targetPort: {}\n    protocol: {}\n",
                p.name, p.port, p.target_port, p.protocol
            );
            if let Some(np) = p.node_port {
                let _ = writeln!(y, "    nodePort: {np}");
            }
        }
        if !self.load_balancer_ips.is_empty() {
            y.push_str("status:\n  loadBalancer:\n    ingress:\n");
            for ip in &self.load_balancer_ips {
                let _ = writeln!(y, "    - ip: {ip}");
            }
        }
        y
    }
}

/// One endpoint of a slice.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub addr: Ipv4Addr,
    pub node: String,
    pub ready: bool,
}

pub fn ready(addr: Ipv4Addr, node: &str) -> Endpoint {
    Endpoint {
        addr,
        node: node.to_string(),
        ready: true,
    }
}

/// An EndpointSlice for `service` with the given ports (name, port, protocol).
pub fn endpoint_slice(
    service: &Service,
    ports: &[(&str, u16, &str)],
    endpoints: &[Endpoint],
) -> String {
    let mut y = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-abcde\n  namespace: {ns}\n  labels:\n    kubernetes.io/service-name: {name}\n    endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io\naddressType: IPv4\n",
        name = service.name,
        ns = service.namespace
    );
    if endpoints.is_empty() {
        y.push_str("endpoints: []\n");
    } else {
        y.push_str("endpoints:\n");
    }
    for e in endpoints {
        let _ = write!(
            y,
            "- addresses:\n  - {}\n  conditions:\n    ready: {}\n    serving: {}\n    terminating: false\n  nodeName: {}\n",
            e.addr, e.ready, e.ready, e.node
        );
    }
    y.push_str("ports:\n");
    for (name, port, proto) in ports {
        let _ = write!(y, "- name: {name}\n  port: {port}\n  protocol: {proto}\n");
    }
    y
}

pub fn node(name: &str, internal_ip: Ipv4Addr, pod_cidr: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    kubernetes.io/hostname: {name}\nspec:\n  podCIDR: {pod_cidr}\n  podCIDRs:\n  - {pod_cidr}\nstatus:\n  addresses:\n  - type: InternalIP\n    address: {internal_ip}\n  - type: Hostname\n    address: {name}\n"
    )
}

/// `n` ClusterIP Services `<prefix>-<i>` (10.<net>.<i/250>.<i%250>, port
/// 80 -> 8080) as one `kind: List`, the way `kubectl get svc -A -o yaml`
/// prints a cluster: metadata with labels, annotations, managedFields,
/// status, IPv4 families.
pub fn service_list(n: usize, prefix: &str, net: u8) -> String {
    let mut y = String::from("apiVersion: v1\nitems:\n");
    for i in 0..n {
        let (a, b) = (i / 250, i % 250);
        let _ = write!(
            y,
            "- apiVersion: v1\n  kind: Service\n  metadata:\n    annotations:\n      kubectl.kubernetes.io/last-applied-configuration: |\n        {{\"apiVersion\":\"v1\",\"kind\":\"Service\",\"metadata\":{{\"name\":\"{prefix}-{i}\"}}}}\n    creationTimestamp: \"2026-11-01T00:00:00Z\"\n    labels:\n      app: {prefix}-{i}\n    managedFields:\n    - apiVersion: v1\n      fieldsType: FieldsV1\n      fieldsV1:\n        f:spec:\n          f:ports:\n            .: {{}}\n          f:selector: {{}}\n      manager: kubectl-client-side-apply\n      operation: Update\n      time: \"2026-11-01T00:00:00Z\"\n    name: {prefix}-{i}\n    namespace: default\n    resourceVersion: \"{rv}\"\n    uid: 5c1c0000-0000-4000-8000-{i:012}\n  spec:\n    clusterIP: 10.{net}.{a}.{b}\n    clusterIPs:\n    - 10.{net}.{a}.{b}\n    internalTrafficPolicy: Cluster\n    ipFamilies:\n    - IPv4\n    ipFamilyPolicy: SingleStack\n    ports:\n    - name: http\n      port: 80\n      protocol: TCP\n      targetPort: 8080\n    selector:\n      app: {prefix}-{i}\n    sessionAffinity: None\n    type: ClusterIP\n  status:\n    loadBalancer: {{}}\n",
            rv = 10_000 + i,
        );
    }
    y.push_str("kind: List\nmetadata:\n  resourceVersion: \"\"\n");
    y
}
