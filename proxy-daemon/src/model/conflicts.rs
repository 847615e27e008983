//! One owner per frontend address. The API server keeps ClusterIPs and
//! NodePorts unique, but not externalIPs or load balancer IPs, and manifests
//! are not validated at all; when two Service ports claim the same
//! address+port+protocol, the older Service keeps it (then namespace/name,
//! then port order) and the other is told why it lost.

use std::{collections::BTreeMap, net::Ipv4Addr, sync::Arc};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{
    Frontend, FrontendKey, FrontendKind, ObjectKey, Protocol, Skip,
    service_spec::{PortSpec, ServiceSpec, service_skip},
};

/// Who asks for a frontend; orders from strongest claim to weakest.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Owner {
    age: Age,
    service: ObjectKey,
    port_index: usize,
    /// For messages only (the fields above are already unique).
    port_label: String,
}

/// Older first; a Service without creationTimestamp (a hand-written
/// manifest) after every Service that has one.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Age {
    Created(Time),
    Unknown,
}

impl Owner {
    pub fn new(service: &ServiceSpec, port: &PortSpec) -> Self {
        Owner {
            age: service.created.clone().map_or(Age::Unknown, Age::Created),
            service: service.key.clone(),
            port_index: port.index,
            port_label: if port.name.is_empty() {
                format!("port {}", port.port)
            } else {
                format!("port {}", port.name)
            },
        }
    }
}

/// A frontend a Service port asks for.
#[derive(Clone, Debug)]
pub(crate) struct Candidate {
    pub owner: Owner,
    /// Shared with the desired state when it wins.
    pub frontend: Arc<Frontend>,
}

/// The datapath's view of a frontend address, whatever the scope.
pub(crate) type Slot = (Ipv4Addr, u16, Protocol);

pub(crate) fn slot(key: &FrontendKey) -> Slot {
    (key.addr, key.port, key.protocol)
}

/// When one Service port lists an address twice (say its load balancer IP
/// also among its externalIPs), which meaning to keep: a load balancer IP
/// stays firewalled by loadBalancerSourceRanges, as kube-proxy's rules for
/// it still apply.
fn kind_rank(kind: FrontendKind) -> u8 {
    match kind {
        FrontendKind::ClusterIp => 0,
        FrontendKind::LoadBalancer => 1,
        FrontendKind::ExternalIp => 2,
        FrontendKind::NodePort => 3,
    }
}

/// Keeps the strongest claim on every slot; reports the others.
pub(crate) fn resolve(
    candidates: Vec<Candidate>,
    skips: &mut Vec<Skip>,
) -> BTreeMap<FrontendKey, Arc<Frontend>> {
    let mut by_slot: BTreeMap<Slot, Vec<&Candidate>> = BTreeMap::new();
    for candidate in &candidates {
        by_slot
            .entry(slot(&candidate.frontend.key))
            .or_default()
            .push(candidate);
    }
    let mut frontends = BTreeMap::new();
    for (slot, claims) in by_slot {
        let (won, lost) = resolve_slot(slot, claims);
        frontends.extend(won.into_iter().map(|f| (f.key, f)));
        skips.extend(lost);
    }
    frontends
}

/// The frontends (one per scope) the strongest claim on `slot` gets, and
/// a skip for every other Service port that claimed it.
pub(crate) fn resolve_slot(
    slot: Slot,
    mut claims: Vec<&Candidate>,
) -> (Vec<Arc<Frontend>>, Vec<Skip>) {
    claims.sort_by(|a, b| {
        (&a.owner, kind_rank(a.frontend.kind)).cmp(&(&b.owner, kind_rank(b.frontend.kind)))
    });
    let Some(winner) = claims.first().map(|c| &c.owner) else {
        return (Vec::new(), Vec::new());
    };
    let mut won: Vec<Arc<Frontend>> = Vec::new();
    let mut losers: Vec<&Owner> = Vec::new();
    for claim in &claims {
        if claim.owner != *winner {
            if !losers.contains(&&claim.owner) {
                losers.push(&claim.owner);
            }
        } else if !won.iter().any(|f| f.key == claim.frontend.key) {
            // The first (best-ranked) frontend of each scope wins.
            won.push(claim.frontend.clone());
        }
    }
    let (addr, port, protocol) = slot;
    let lost = losers
        .into_iter()
        .map(|loser| {
            let holder = if winner.service == loser.service {
                format!("{} of this Service", winner.port_label)
            } else {
                let why = match (&winner.age, &loser.age) {
                    (Age::Created(_), _) if winner.age < loser.age => "older",
                    _ => "first by namespace/name",
                };
                format!("Service {} ({why})", winner.service)
            };
            service_skip(
                &loser.service,
                format!(
                    "{}: frontend {addr}:{port}/{protocol} already belongs to {holder}",
                    loser.port_label
                ),
            )
        })
        .collect();
    (won, lost)
}
