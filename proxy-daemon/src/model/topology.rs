//! Which endpoints a Service port may use from this node: kube-proxy's
//! CategorizeEndpoints (pkg/proxy/topology.go, Kubernetes 1.34+).
//!
//! Cluster and Local traffic policy are decided independently. Each uses
//! ready endpoints, and only when it has none falls back to endpoints that
//! are serving but terminating, so connections drain instead of failing.
//! The cluster list also honours topology hints; the local list never does
//! (it is already as close as it gets).
//!
//! Hints are followed whenever they are complete, whatever the Service's
//! `trafficDistribution` or topology annotation says: since 1.33 kube-proxy
//! trusts the EndpointSlice controller, which only writes hints when the
//! Service asked for them (PreferClose/PreferSameZone, PreferSameNode, or
//! `service.kubernetes.io/topology-mode: Auto`).

use super::endpoints::EndpointInfo;

/// How the cluster endpoint list is narrowed by hints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TopologyMode {
    /// Every ready endpoint.
    Off,
    /// Ready endpoints hinted for this node's zone.
    SameZone,
    /// Ready endpoints hinted for this node.
    SameNode,
}

/// The endpoints one traffic policy uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Usable<'a> {
    pub endpoints: Vec<&'a EndpointInfo>,
    /// Taken from the serving-terminating fallback (no ready endpoint).
    pub terminating_fallback: bool,
}

/// The serving-terminating fallback; marked as such only when it found any.
fn draining<'a>(endpoints: impl Iterator<Item = &'a EndpointInfo>) -> Usable<'a> {
    let endpoints: Vec<_> = endpoints.collect();
    Usable {
        terminating_fallback: !endpoints.is_empty(),
        endpoints,
    }
}

/// The result of categorization; a list is `None` when the port never uses
/// that policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Categorized<'a> {
    pub cluster: Option<Usable<'a>>,
    pub local: Option<Usable<'a>>,
    pub mode: TopologyMode,
    /// Some endpoint anywhere is ready, or serving while terminating:
    /// kube-proxy's hasAnyEndpoints, which decides between dropping what
    /// a Local policy cannot serve here and rejecting it.
    pub has_any: bool,
}

/// Categorizes `endpoints` for a port that uses cluster and/or local
/// endpoints, on the node `node_name` in `zone`.
pub(crate) fn categorize<'a>(
    endpoints: &'a [EndpointInfo],
    uses_cluster: bool,
    uses_local: bool,
    node_name: &str,
    zone: Option<&str>,
) -> Categorized<'a> {
    let mut mode = TopologyMode::Off;
    let cluster = uses_cluster.then(|| {
        mode = topology_mode(endpoints, node_name, zone);
        let ready: Vec<_> = endpoints
            .iter()
            .filter(|ep| ep.ready && available_for_topology(ep, mode, node_name, zone))
            .collect();
        if !ready.is_empty() {
            return Usable {
                endpoints: ready,
                terminating_fallback: false,
            };
        }
        // No ready endpoint anywhere (a topology mode other than Off guarantees one
        // for this node), so topology no longer matters: any endpoint that
        // still serves is better than refusing the connection.
        draining(endpoints.iter().filter(|ep| ep.serving && ep.terminating))
    });

    let local = uses_local.then(|| {
        let ready: Vec<_> = endpoints.iter().filter(|ep| ep.local && ep.ready).collect();
        if !ready.is_empty() {
            return Usable {
                endpoints: ready,
                terminating_fallback: false,
            };
        }
        draining(
            endpoints
                .iter()
                .filter(|ep| ep.local && ep.serving && ep.terminating),
        )
    });

    let has_any = cluster.as_ref().is_some_and(|c| !c.endpoints.is_empty())
        || (uses_local
            && endpoints
                .iter()
                .any(|ep| ep.ready || (ep.serving && ep.terminating)));
    Categorized {
        cluster,
        local,
        mode,
        has_any,
    }
}

/// kube-proxy's topologyModeFromHints: same-node hints win when every
/// ready endpoint has one and one names this node; otherwise same-zone
/// hints when every ready endpoint has one and one names this node's zone;
/// otherwise no filtering. Unready endpoints neither count nor veto.
pub(crate) fn topology_mode(
    endpoints: &[EndpointInfo],
    node_name: &str,
    zone: Option<&str>,
) -> TopologyMode {
    let ready: Vec<&EndpointInfo> = endpoints.iter().filter(|ep| ep.ready).collect();
    if ready.is_empty() {
        return TopologyMode::Off;
    }
    let all_have_node_hints = ready.iter().all(|ep| !ep.node_hints.is_empty());
    if all_have_node_hints && ready.iter().any(|ep| ep.node_hints.contains(node_name)) {
        return TopologyMode::SameNode;
    }
    let all_have_zone_hints = ready.iter().all(|ep| !ep.zone_hints.is_empty());
    if let Some(zone) = zone
        && all_have_zone_hints
        && ready.iter().any(|ep| ep.zone_hints.contains(zone))
    {
        return TopologyMode::SameZone;
    }
    TopologyMode::Off
}

fn available_for_topology(
    ep: &EndpointInfo,
    mode: TopologyMode,
    node_name: &str,
    zone: Option<&str>,
) -> bool {
    match mode {
        TopologyMode::Off => true,
        TopologyMode::SameNode => ep.node_hints.contains(node_name),
        TopologyMode::SameZone => zone.is_some_and(|z| ep.zone_hints.contains(z)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// An endpoint in compact notation: `10.1.0.N` with flags.
    #[derive(Clone)]
    struct E(EndpointInfo);

    fn ep(n: u8) -> E {
        E(EndpointInfo {
            addr: [10, 1, 0, n].into(),
            port: 80,
            local: false,
            ready: true,
            serving: true,
            terminating: false,
            zone_hints: BTreeSet::new(),
            node_hints: BTreeSet::new(),
        })
    }

    impl E {
        fn local(mut self) -> Self {
            self.0.local = true;
            self
        }
        fn unready(mut self) -> Self {
            self.0.ready = false;
            self.0.serving = false;
            self
        }
        /// Terminating but still serving (ready false, as the API says).
        fn draining(mut self) -> Self {
            self.0.ready = false;
            self.0.serving = true;
            self.0.terminating = true;
            self
        }
        /// Terminating and no longer serving.
        fn gone(mut self) -> Self {
            self.0.ready = false;
            self.0.serving = false;
            self.0.terminating = true;
            self
        }
        fn zones(mut self, zones: &[&str]) -> Self {
            self.0.zone_hints = zones.iter().map(|z| z.to_string()).collect();
            self
        }
        fn nodes(mut self, nodes: &[&str]) -> Self {
            self.0.node_hints = nodes.iter().map(|n| n.to_string()).collect();
            self
        }
    }

    /// Last octets of a usable list, `t` appended when it is the fallback.
    fn octets(usable: &Option<Usable<'_>>) -> Option<(Vec<u8>, bool)> {
        usable.as_ref().map(|u| {
            (
                u.endpoints.iter().map(|e| e.addr.octets()[3]).collect(),
                u.terminating_fallback,
            )
        })
    }

    struct Case {
        name: &'static str,
        zone: Option<&'static str>,
        uses_cluster: bool,
        uses_local: bool,
        endpoints: Vec<E>,
        cluster: Option<(Vec<u8>, bool)>,
        local: Option<(Vec<u8>, bool)>,
        mode: TopologyMode,
    }

    const NODE: &str = "node-a";

    fn cluster_only(
        name: &'static str,
        zone: Option<&'static str>,
        endpoints: Vec<E>,
        want: &[u8],
        mode: TopologyMode,
    ) -> Case {
        Case {
            name,
            zone,
            uses_cluster: true,
            uses_local: false,
            endpoints,
            cluster: Some((want.to_vec(), false)),
            local: None,
            mode,
        }
    }

    #[test]
    fn categorize_endpoints() {
        use TopologyMode::{Off, SameNode, SameZone};
        let za = Some("zone-a");
        let cases = vec![
            cluster_only("no endpoints", za, vec![], &[], Off),
            cluster_only(
                "no hints: every ready endpoint",
                za,
                vec![ep(1), ep(2).unready(), ep(3)],
                &[1, 3],
                Off,
            ),
            cluster_only(
                "complete zone hints: only this zone's",
                za,
                vec![
                    ep(1).zones(&["zone-a"]),
                    ep(2).zones(&["zone-b"]),
                    ep(3).zones(&["zone-c"]),
                    ep(4).zones(&["zone-a"]),
                ],
                &[1, 4],
                SameZone,
            ),
            cluster_only(
                "an endpoint hinted for several zones counts for each",
                Some("zone-c"),
                vec![
                    ep(1).zones(&["zone-a", "zone-c"]),
                    ep(2).zones(&["zone-b"]),
                    ep(3).zones(&["zone-c"]),
                ],
                &[1, 3],
                SameZone,
            ),
            cluster_only(
                "node without a zone ignores zone hints",
                None,
                vec![ep(1).zones(&["zone-a"]), ep(2).zones(&["zone-b"])],
                &[1, 2],
                Off,
            ),
            cluster_only(
                "no endpoint hinted for this zone: hints ignored",
                Some("zone-z"),
                vec![ep(1).zones(&["zone-a"]), ep(2).zones(&["zone-b"])],
                &[1, 2],
                Off,
            ),
            cluster_only(
                "one ready endpoint without hints: hints ignored",
                za,
                vec![ep(1).zones(&["zone-a"]), ep(2).zones(&["zone-b"]), ep(3)],
                &[1, 2, 3],
                Off,
            ),
            cluster_only(
                "an unready endpoint without hints does not veto",
                za,
                vec![
                    ep(1).zones(&["zone-a"]),
                    ep(2).zones(&["zone-b"]),
                    ep(3).unready(),
                ],
                &[1],
                SameZone,
            ),
            cluster_only(
                "an unready endpoint hinted for this zone does not count",
                za,
                vec![
                    ep(1).zones(&["zone-a"]).unready(),
                    ep(2).zones(&["zone-b"]),
                    ep(3).zones(&["zone-c"]),
                ],
                &[2, 3],
                Off,
            ),
            cluster_only(
                "unready endpoints of this zone are left out",
                za,
                vec![
                    ep(1).zones(&["zone-a"]),
                    ep(2).zones(&["zone-a"]).unready(),
                    ep(3).zones(&["zone-b"]),
                ],
                &[1],
                SameZone,
            ),
            cluster_only(
                "complete node hints: only this node's",
                za,
                vec![
                    ep(1).nodes(&[NODE]).zones(&["zone-a"]),
                    ep(2).nodes(&["node-b"]).zones(&["zone-a"]),
                    ep(3).nodes(&["node-c"]).zones(&["zone-b"]),
                ],
                &[1],
                SameNode,
            ),
            cluster_only(
                "node hints naming other nodes fall back to zone hints",
                za,
                vec![
                    ep(1).nodes(&["node-b"]).zones(&["zone-a"]),
                    ep(2).nodes(&["node-c"]).zones(&["zone-b"]),
                    ep(3).nodes(&["node-d"]).zones(&["zone-a"]),
                ],
                &[1, 3],
                SameZone,
            ),
            cluster_only(
                "incomplete node hints fall back to zone hints",
                za,
                vec![
                    ep(1).nodes(&[NODE]).zones(&["zone-a"]),
                    ep(2).zones(&["zone-a"]),
                    ep(3).zones(&["zone-b"]),
                ],
                &[1, 2],
                SameZone,
            ),
            cluster_only(
                "node hints need no zone label",
                None,
                vec![ep(1).nodes(&[NODE]), ep(2).nodes(&["node-b"])],
                &[1],
                SameNode,
            ),
            cluster_only(
                "ready and terminating at once counts as ready",
                za,
                vec![ep(1).draining(), {
                    let mut e = ep(2);
                    e.0.terminating = true;
                    e
                }],
                &[2],
                Off,
            ),
            Case {
                name: "no ready endpoint: serving terminating ones, topology ignored",
                zone: za,
                uses_cluster: true,
                uses_local: false,
                endpoints: vec![
                    ep(1).draining().zones(&["zone-b"]),
                    ep(2).gone(),
                    ep(3).unready(),
                    ep(4).draining().zones(&["zone-a"]),
                ],
                cluster: Some((vec![1, 4], true)),
                local: None,
                mode: Off,
            },
            Case {
                name: "nothing usable at all",
                zone: za,
                uses_cluster: true,
                uses_local: true,
                endpoints: vec![ep(1).gone(), ep(2).unready().local()],
                cluster: Some((vec![], false)),
                local: Some((vec![], false)),
                mode: Off,
            },
            Case {
                name: "internalTrafficPolicy Local, no endpoints",
                zone: None,
                uses_cluster: false,
                uses_local: true,
                endpoints: vec![],
                cluster: None,
                local: Some((vec![], false)),
                mode: Off,
            },
            Case {
                name: "internalTrafficPolicy Local, all endpoints remote",
                zone: None,
                uses_cluster: false,
                uses_local: true,
                endpoints: vec![ep(1), ep(2)],
                cluster: None,
                local: Some((vec![], false)),
                mode: Off,
            },
            Case {
                name: "internalTrafficPolicy Local, only local ones",
                zone: None,
                uses_cluster: false,
                uses_local: true,
                endpoints: vec![ep(1).local(), ep(2), ep(3).local()],
                cluster: None,
                local: Some((vec![1, 3], false)),
                mode: Off,
            },
            Case {
                name: "local list ignores topology hints",
                zone: za,
                uses_cluster: true,
                uses_local: true,
                endpoints: vec![
                    ep(1).local().zones(&["zone-a"]),
                    ep(2).local().zones(&["zone-b"]),
                    ep(3).zones(&["zone-c"]),
                    ep(4).zones(&["zone-a"]),
                ],
                cluster: Some((vec![1, 4], false)),
                local: Some((vec![1, 2], false)),
                mode: SameZone,
            },
            Case {
                name: "local ready endpoints: local terminating ones unused",
                zone: None,
                uses_cluster: true,
                uses_local: true,
                endpoints: vec![ep(1).local(), ep(2).local().draining(), ep(3)],
                cluster: Some((vec![1, 3], false)),
                local: Some((vec![1], false)),
                mode: Off,
            },
            Case {
                name: "fallbacks are independent: local drains while remote ones are ready",
                zone: None,
                uses_cluster: true,
                uses_local: true,
                endpoints: vec![ep(1).local().draining(), ep(2), ep(3).local().gone()],
                cluster: Some((vec![2], false)),
                local: Some((vec![1], true)),
                mode: Off,
            },
            Case {
                name: "fallbacks are independent: remote drains, local unready",
                zone: None,
                uses_cluster: true,
                uses_local: true,
                endpoints: vec![ep(1).local().unready(), ep(2).draining()],
                cluster: Some((vec![2], true)),
                local: Some((vec![], false)),
                mode: Off,
            },
        ];
        for case in cases {
            let infos: Vec<EndpointInfo> = case.endpoints.iter().map(|e| e.0.clone()).collect();
            let got = categorize(&infos, case.uses_cluster, case.uses_local, NODE, case.zone);
            assert_eq!(octets(&got.cluster), case.cluster, "{}: cluster", case.name);
            assert_eq!(octets(&got.local), case.local, "{}: local", case.name);
            assert_eq!(got.mode, case.mode, "{}: mode", case.name);
        }
    }
}
