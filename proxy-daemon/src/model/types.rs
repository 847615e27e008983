//! The desired datapath state, computed from Kubernetes objects.
//!
//! This is the contract between the service model (pure, in this module)
//! and the writer that programs the maps: everything the writer needs, in
//! plain std types, deterministic (ordered collections, sorted backends) so
//! that recomputing from the same objects gives the same state.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::Ipv4Addr,
    sync::Arc,
};

use ipnetwork::Ipv4Network;
use proxy_common::{
    ServiceKey,
    service::{
        KIND_CLUSTER_IP, KIND_EXTERNAL_IP, KIND_LOAD_BALANCER, KIND_NODE_PORT, SCOPE_EXTERNAL,
        SCOPE_INTERNAL,
    },
};

/// Transport protocol of a frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// IANA protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => proxy_common::proto::TCP,
            Protocol::Udp => proxy_common::proto::UDP,
            Protocol::Sctp => proxy_common::proto::SCTP,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            proxy_common::proto::TCP => Some(Protocol::Tcp),
            proxy_common::proto::UDP => Some(Protocol::Udp),
            proxy_common::proto::SCTP => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// Which traffic a frontend entry applies to (see `proxy_common::service`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// All traffic (the only scope most frontends have).
    External,
    /// Traffic from inside the cluster to a frontend whose external traffic
    /// policy is Local: it may use every cluster endpoint.
    Internal,
}

/// How a frontend picks the backend of a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LbAlgorithm {
    /// A uniformly random backend per connection.
    Random,
    /// Maglev consistent hashing of the flow: the same backend through
    /// every node, little movement when backends change.
    Maglev,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrontendKind {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalIp,
}

/// Identity of a frontend in the datapath: one master entry per key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrontendKey {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    pub scope: Scope,
}

impl Scope {
    /// The scope byte of the frontend's map entries.
    pub const fn wire(self) -> u8 {
        match self {
            Scope::External => SCOPE_EXTERNAL,
            Scope::Internal => SCOPE_INTERNAL,
        }
    }
}

impl FrontendKind {
    /// The `kind` byte of the frontend's master entry.
    pub const fn wire(self) -> u8 {
        match self {
            FrontendKind::ClusterIp => KIND_CLUSTER_IP,
            FrontendKind::NodePort => KIND_NODE_PORT,
            FrontendKind::LoadBalancer => KIND_LOAD_BALANCER,
            FrontendKind::ExternalIp => KIND_EXTERNAL_IP,
        }
    }

    /// Kubernetes' name for it (`service::kind_name` of the wire byte).
    pub const fn name(self) -> &'static str {
        proxy_common::service::kind_name(self.wire())
    }
}

impl FrontendKey {
    /// The key of the frontend's master entry.
    pub const fn service_key(&self) -> ServiceKey {
        ServiceKey::for_frontend(
            self.addr,
            self.port,
            self.protocol.number(),
            self.scope.wire(),
        )
    }

    /// The frontend a master entry read back from the map belongs to.
    pub fn from_service_key(k: &ServiceKey) -> Option<Self> {
        Some(Self {
            addr: k.ip(),
            port: k.host_port(),
            protocol: Protocol::from_number(k.proto)?,
            scope: if k.scope == SCOPE_INTERNAL {
                Scope::Internal
            } else {
                Scope::External
            },
        })
    }
}

impl fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.addr, self.port, self.protocol)?;
        if self.scope == Scope::Internal {
            f.write_str(" (internal)")?;
        }
        Ok(())
    }
}

/// The Service (and port) a frontend belongs to, for names in logs and in
/// `sluicectl`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
// Shared strings: every frontend of a Service carries one, in the
// model's candidates, its desired state and the writer's names.
pub struct ServiceRef {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// `spec.ports[].name`; empty for a single unnamed port.
    pub port_name: Arc<str>,
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if !self.port_name.is_empty() {
            write!(f, ":{}", self.port_name)?;
        }
        Ok(())
    }
}

/// One endpoint a frontend may send new connections to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendAddr {
    pub addr: Ipv4Addr,
    /// The endpoint's port (targetPort resolved through the slice).
    pub port: u16,
    /// The endpoint runs on this node.
    pub local: bool,
    /// Used only through kube-proxy's serving-terminating fallback.
    pub terminating: bool,
}

/// Everything the datapath needs to know about one frontend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    pub key: FrontendKey,
    pub kind: FrontendKind,
    pub service: ServiceRef,
    /// Endpoints for new connections, sorted by (addr, port), deduplicated.
    /// Empty means: refuse new connections (ICMP unreachable), as kube-proxy does.
    pub backends: Vec<BackendAddr>,
    /// The backends are node-local only because of a Local traffic policy
    /// (for display; the list above is already filtered).
    pub local_only: bool,
    /// With no backends, drop new connections instead of refusing them:
    /// a Local traffic policy left this node without endpoints while the
    /// Service has some elsewhere (kube-proxy drops then; with no endpoints
    /// anywhere it rejects).
    pub drop_when_empty: bool,
    /// sessionAffinity ClientIP: the timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// Remote backends are reached with the node's address as source
    /// (externalTrafficPolicy Cluster on NodePort/LoadBalancer/externalIP).
    pub snat_remote: bool,
    /// loadBalancerSourceRanges; empty admits every source.
    pub source_ranges: Vec<Ipv4Network>,
    /// healthCheckNodePort of an externalTrafficPolicy=Local service.
    pub health_check_node_port: Option<u16>,
    /// The Service's own choice (annotation [`LB_ALGORITHM_ANNOTATION`]);
    /// `None` follows the node's default.
    pub lb_algorithm: Option<LbAlgorithm>,
}

/// Annotation choosing a Service's backend selection: `random` or `maglev`.
pub const LB_ALGORITHM_ANNOTATION: &str = "sluice.dev/lb-algorithm";

/// Why an object (or part of one) was not programmed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Skip {
    /// `Kind namespace/name`, e.g. `Service default/web`.
    pub object: String,
    pub reason: String,
    pub kind: SkipKind,
}

/// What kind of problem a [`Skip`] is, for logs and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SkipKind {
    /// Invalid or unsupported: a warning.
    #[default]
    Invalid,
    /// An EndpointSlice naming a Service that does not exist (a label typo,
    /// or a slice that outlived its Service): normal while objects come
    /// and go, so reported at debug level.
    NoService,
}

impl SkipKind {
    /// The `reason` label of `sluice_objects_skipped`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::NoService => "no-service",
        }
    }
}

/// The whole desired state of one node's datapath.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    /// Shared with the model's candidates they won from.
    pub frontends: BTreeMap<FrontendKey, Arc<Frontend>>,
    /// Every address used by some frontend (programmed as address-only
    /// entries, so unknown ports on them are refused).
    pub service_addrs: BTreeSet<Ipv4Addr>,
    /// The node's own addresses: NodePorts live there, every other port is
    /// the node's (programmed as address-only entries that pass).
    pub node_addrs: BTreeSet<Ipv4Addr>,
    /// Objects or parts skipped, with reasons, for logs and counters.
    pub skipped: Vec<Skip>,
}

/// What the model needs to know about the node it runs for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeContext {
    pub name: String,
    /// Addresses NodePorts listen on (the node's InternalIP/ExternalIP).
    pub addresses: Vec<Ipv4Addr>,
    /// `topology.kubernetes.io/zone` label, if any.
    pub zone: Option<String>,
}
