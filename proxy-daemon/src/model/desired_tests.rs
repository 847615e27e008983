//! `desired_state` end to end: Services, EndpointSlices and Endpoints in,
//! frontends out, as kube-proxy would program them on node `node-a`.

use std::net::Ipv4Addr;

use serde_json::{Value, json};

use super::*;

// ---- building objects ----------------------------------------------------

/// A Service in `default` with `spec` (and optional extra top-level keys
/// such as `status` or `metadata`).
fn svc(name: &str, spec: Value) -> KubeObject {
    svc_with(name, spec, json!({}))
}

fn svc_with(name: &str, spec: Value, extra: Value) -> KubeObject {
    let mut v = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    });
    merge(&mut v, extra);
    KubeObject::Service(std::sync::Arc::new(serde_json::from_value(v).unwrap()))
}

/// An IPv4 EndpointSlice of Service `service`.
fn slice(name: &str, service: &str, ports: Value, endpoints: Value) -> KubeObject {
    KubeObject::endpoint_slice(serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "default", "labels": {SERVICE_NAME_LABEL: service}},
            "addressType": "IPv4",
            "ports": ports,
            "endpoints": endpoints,
        }))
        .unwrap(),
    )
}

/// A ready endpoint, on `node` if given.
fn ep(addr: &str, node: Option<&str>) -> Value {
    let mut v = json!({"addresses": [addr]});
    if let Some(node) = node {
        v["nodeName"] = json!(node);
    }
    v
}

fn with(mut v: Value, extra: Value) -> Value {
    merge(&mut v, extra);
    v
}

fn merge(v: &mut Value, extra: Value) {
    if let (Value::Object(into), Value::Object(from)) = (v, extra) {
        for (k, val) in from {
            match into.get_mut(&k) {
                Some(existing @ Value::Object(_)) if val.is_object() => merge(existing, val),
                _ => {
                    into.insert(k, val);
                }
            }
        }
    }
}

const NODE: &str = "node-a";

fn node() -> NodeContext {
    NodeContext {
        name: NODE.into(),
        addresses: vec![ip("192.168.0.10"), ip("203.0.113.10")],
        zone: Some("zone-a".into()),
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// The desired state for `objects`, computed from scratch; on the way,
/// the incremental model is checked against it at every step of adding
/// the objects one by one and of taking them away again.
fn state(objects: Vec<KubeObject>) -> DesiredState {
    let full = desired_state(&ClusterState::from_objects(objects.clone()), &node());
    incremental_agrees(&objects);
    full
}

/// Feeds views that grow by one object, then shrink by one, to the
/// incremental model; after each, its state must be the one computed from
/// scratch (skips in any order).
fn incremental_agrees(objects: &[KubeObject]) {
    // Two models: one finds what changed by comparing views (the
    // manifests source), one from the deltas the views carry (the API
    // source); each view here says it follows the one before.
    let mut model = IncrementalModel::new();
    let mut by_delta = IncrementalModel::new();
    let mut view = ClusterState::default();
    let mut check_on =
        |view: &ClusterState, touched: Option<&KubeObject>, node: &NodeContext, step: &str| {
            let changes = model.update(&std::sync::Arc::new(view.clone()), node);
            let numbered = ClusterState {
                id: view.id + 1,
                delta: Some(delta_of(view.id, touched)),
                ..view.clone()
            };
            let delta_changes = by_delta.update(&std::sync::Arc::new(numbered), node);
            let full = desired_state(view, node);
            for (got, how) in [
                (model.desired(), "compared"),
                (by_delta.desired(), "by delta"),
            ] {
                assert_eq!(
                    got.frontends, full.frontends,
                    "{step} ({how}): frontends differ"
                );
                assert_eq!(
                    got.service_addrs, full.service_addrs,
                    "{step} ({how}): addresses"
                );
                assert_eq!(
                    got.node_addrs, full.node_addrs,
                    "{step} ({how}): node addresses"
                );
                let sorted = |s: &[Skip]| {
                    let mut s = s.to_vec();
                    s.sort();
                    s
                };
                assert_eq!(
                    sorted(&got.skipped),
                    sorted(&full.skipped),
                    "{step} ({how}): skips"
                );
            }
            assert_eq!(
                changes, delta_changes,
                "{step}: the two models saw different changes"
            );
            changes
        };
    check_on(&view, None, &node(), "empty");
    for (i, o) in objects.iter().enumerate() {
        view.insert(o.clone());
        view.id += 1;
        let changes = check_on(&view, Some(o), &node(), &format!("after adding object {i}"));
        assert!(!changes.full, "adding object {i} recomputed everything");
    }
    // This node changes (zone label, then back): everything is recomputed
    // over a model that already holds every frontend.
    let moved = NodeContext {
        zone: Some("zone-b".into()),
        ..node()
    };
    view.id += 1;
    assert!(check_on(&view, None, &moved, "after the node's zone changed").full);
    view.id += 1;
    assert!(check_on(&view, None, &node(), "after the node's zone changed back").full);
    for (i, o) in objects.iter().enumerate().rev() {
        view.remove(o.kind(), &o.key().unwrap());
        view.id += 1;
        check_on(
            &view,
            Some(o),
            &node(),
            &format!("after removing object {i}"),
        );
    }
}

/// The delta of a view that differs from view `from` in `touched` only.
fn delta_of(from: u64, touched: Option<&KubeObject>) -> ViewDelta {
    let mut d = ViewDelta {
        from,
        services: Some(Default::default()),
        endpoint_slices: Some(Default::default()),
        endpoints: Some(Default::default()),
    };
    if let Some(o) = touched {
        let keys = match o {
            KubeObject::Service(_) => &mut d.services,
            KubeObject::EndpointSlice(..) => &mut d.endpoint_slices,
            KubeObject::Endpoints(_) => &mut d.endpoints,
            KubeObject::Node(_) => return d,
        };
        keys.as_mut().unwrap().insert(o.key().unwrap());
    }
    d
}

// ---- reading the result ----------------------------------------------------

/// Every frontend key, as `FrontendKey` displays it.
fn keys(s: &DesiredState) -> Vec<String> {
    s.frontends.keys().map(ToString::to_string).collect()
}

/// The frontend whose key displays as `key`, e.g. `10.96.0.1:80/TCP` or
/// `10.96.0.1:80/TCP (internal)`.
fn fe<'a>(s: &'a DesiredState, key: &str) -> &'a Frontend {
    s.frontends
        .values()
        .find(|f| f.key.to_string() == key)
        .unwrap_or_else(|| panic!("no frontend {key}; have {:?}", keys(s)))
}

/// `addr:port`, then ` local` / ` terminating` when set.
fn backends(f: &Frontend) -> Vec<String> {
    f.backends
        .iter()
        .map(|b| {
            let mut s = format!("{}:{}", b.addr, b.port);
            if b.local {
                s.push_str(" local");
            }
            if b.terminating {
                s.push_str(" terminating");
            }
            s
        })
        .collect()
}

fn skips(s: &DesiredState) -> Vec<String> {
    s.skipped
        .iter()
        .map(|k| format!("{}: {}", k.object, k.reason))
        .collect()
}

fn addrs(s: &DesiredState) -> Vec<String> {
    s.service_addrs.iter().map(ToString::to_string).collect()
}

/// A common endpoint set: one local, two remote (one not ready).
fn web_slice() -> KubeObject {
    slice(
        "web-abc",
        "web",
        json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
        json!([
            ep("10.1.0.2", Some("node-b")),
            ep("10.1.0.1", Some(NODE)),
            with(
                ep("10.1.0.3", Some("node-b")),
                json!({"conditions": {"ready": false}})
            ),
        ]),
    )
}

const HTTP: &str = r#"[{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080}]"#;

fn http_ports() -> Value {
    serde_json::from_str(HTTP).unwrap()
}

// ---- tests -----------------------------------------------------------------

#[test]
fn cluster_ip_service() {
    let s = state(vec![
        svc(
            "web",
            json!({"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}),
        ),
        web_slice(),
    ]);
    assert_eq!(keys(&s), ["10.96.0.10:80/TCP"]);
    let f = fe(&s, "10.96.0.10:80/TCP");
    assert_eq!(f.kind, FrontendKind::ClusterIp);
    assert_eq!(
        f.service,
        ServiceRef {
            namespace: "default".into(),
            name: "web".into(),
            port_name: "http".into()
        }
    );
    // Sorted by address, the unready one left out, the local one marked.
    assert_eq!(backends(f), ["10.1.0.1:8080 local", "10.1.0.2:8080"]);
    assert!(!f.local_only && !f.snat_remote);
    assert_eq!(f.affinity_timeout, None);
    assert!(f.source_ranges.is_empty());
    assert_eq!(f.health_check_node_port, None);
    assert_eq!(addrs(&s), ["10.96.0.10"]);
    assert!(s.skipped.is_empty(), "{:?}", skips(&s));
}

#[test]
fn several_ports_and_protocols_each_get_their_endpoints() {
    let s = state(vec![
        svc(
            "dns",
            json!({"clusterIP": "10.96.0.53", "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 5353},
                {"name": "metrics", "port": 9153, "targetPort": "metrics"},
                {"name": "sig", "port": 2905, "protocol": "SCTP"},
            ]}),
        ),
        slice(
            "dns-1",
            "dns",
            json!([
                {"name": "dns", "port": 5353, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 5353, "protocol": "TCP"},
                {"name": "metrics", "port": 9253, "protocol": "TCP"},
                {"name": "sig", "port": 2905, "protocol": "SCTP"},
            ]),
            json!([ep("10.1.0.7", None)]),
        ),
    ]);
    assert_eq!(
        keys(&s),
        [
            "10.96.0.53:53/TCP",
            "10.96.0.53:53/UDP",
            "10.96.0.53:9153/TCP"
        ]
    );
    assert_eq!(backends(fe(&s, "10.96.0.53:53/UDP")), ["10.1.0.7:5353"]);
    assert_eq!(backends(fe(&s, "10.96.0.53:53/TCP")), ["10.1.0.7:5353"]);
    assert_eq!(backends(fe(&s, "10.96.0.53:9153/TCP")), ["10.1.0.7:9253"]);
    assert_eq!(
        fe(&s, "10.96.0.53:53/UDP").service.port_name.as_ref(),
        "dns"
    );
    assert_eq!(
        skips(&s),
        ["Service default/dns: port sig: SCTP not supported by the datapath yet"]
    );
}

#[test]
fn endpoints_match_the_service_port_by_name_and_protocol_only() {
    // (service port, slice port) -> backends
    let cases = [
        (
            json!({"name": "http", "port": 80, "targetPort": 9999}),
            json!({"name": "http", "port": 8080}),
            vec!["10.1.0.1:8080"],
        ),
        (
            json!({"port": 80}),
            json!({"name": "", "port": 8080}),
            vec!["10.1.0.1:8080"],
        ),
        (
            json!({"port": 80}),
            json!({"port": 8080}),
            vec!["10.1.0.1:8080"],
        ),
        (
            json!({"port": 80}),
            json!({"name": "http", "port": 8080}),
            vec![],
        ),
        (
            json!({"name": "http", "port": 80}),
            json!({"port": 8080}),
            vec![],
        ),
        (
            json!({"name": "http", "port": 80}),
            json!({"name": "http", "port": 8080, "protocol": "UDP"}),
            vec![],
        ),
    ];
    for (service_port, slice_port, want) in cases {
        let s = state(vec![
            svc(
                "web",
                json!({"clusterIP": "10.96.0.10", "ports": [service_port]}),
            ),
            slice(
                "web-1",
                "web",
                json!([slice_port]),
                json!([ep("10.1.0.1", None)]),
            ),
        ]);
        assert_eq!(
            backends(fe(&s, "10.96.0.10:80/TCP")),
            want,
            "{service_port} / {slice_port}"
        );
    }
}

#[test]
fn services_that_are_not_proxied() {
    let ports = json!([{"port": 80}]);
    // (Service, reason reported; None = normal, left out silently)
    let cases = [
        (svc("a", json!({"clusterIP": "None", "ports": ports})), None),
        (
            svc(
                "a",
                json!({"type": "ExternalName", "externalName": "db.example.com"}),
            ),
            None,
        ),
        (
            svc_with(
                "a",
                json!({"clusterIP": "10.96.0.1", "ports": ports}),
                json!({"metadata": {"labels": {SERVICE_PROXY_NAME_LABEL: "other"}}}),
            ),
            None,
        ),
        (
            svc(
                "a",
                json!({"clusterIP": "fd00::1", "clusterIPs": ["fd00::1"], "ports": ports}),
            ),
            Some(
                "Service default/a: IPv6-only Service, clusterIP fd00::1: IPv6 not supported by the datapath yet",
            ),
        ),
    ];
    for (service, want) in cases {
        let s = state(vec![
            service,
            slice(
                "a-1",
                "a",
                json!([{"port": 80}]),
                json!([ep("10.1.0.1", None)]),
            ),
        ]);
        assert!(s.frontends.is_empty(), "{want:?}");
        assert!(s.service_addrs.is_empty(), "{want:?}");
        assert_eq!(skips(&s), want.into_iter().collect::<Vec<_>>());
    }
}

#[test]
fn dual_stack_programs_ipv4_and_reports_ipv6() {
    let s = state(vec![
        svc(
            "web",
            json!({"clusterIP": "fd00::10", "clusterIPs": ["fd00::10", "10.96.0.10"], "type": "NodePort",
                   "externalIPs": ["fd00::20", "192.0.2.20"], "ports": http_ports()}),
        ),
        web_slice(),
    ]);
    assert_eq!(
        keys(&s),
        [
            "10.96.0.10:80/TCP",
            "192.0.2.20:80/TCP",
            "192.168.0.10:30080/TCP",
            "203.0.113.10:30080/TCP"
        ]
    );
    assert_eq!(
        skips(&s),
        [
            "Service default/web: clusterIP fd00::10: IPv6 not supported by the datapath yet",
            "Service default/web: externalIP \"fd00::20\": IPv6 not supported by the datapath yet",
        ]
    );
}

#[test]
fn node_port_listens_on_every_node_address_with_snat() {
    let s = state(vec![
        svc(
            "web",
            json!({"type": "NodePort", "clusterIP": "10.96.0.10", "ports": http_ports()}),
        ),
        web_slice(),
    ]);
    assert_eq!(
        keys(&s),
        [
            "10.96.0.10:80/TCP",
            "192.168.0.10:30080/TCP",
            "203.0.113.10:30080/TCP"
        ]
    );
    for key in ["192.168.0.10:30080/TCP", "203.0.113.10:30080/TCP"] {
        let f = fe(&s, key);
        assert_eq!(f.kind, FrontendKind::NodePort);
        assert!(f.snat_remote && !f.local_only, "{key}");
        assert_eq!(backends(f), ["10.1.0.1:8080 local", "10.1.0.2:8080"]);
        assert_eq!(f.health_check_node_port, None);
    }
    assert!(!fe(&s, "10.96.0.10:80/TCP").snat_remote);
    // The node's addresses are not service addresses.
    assert_eq!(addrs(&s), ["10.96.0.10"]);
}

#[test]
fn load_balancer_ingress_and_external_ips() {
    let s = state(vec![
        svc_with(
            "web",
            json!({
                "type": "LoadBalancer", "clusterIP": "10.96.0.10", "allocateLoadBalancerNodePorts": false,
                "externalIPs": ["192.0.2.20"], "ports": [{"name": "http", "port": 80}],
            }),
            json!({"status": {"loadBalancer": {"ingress": [
                {"ip": "198.51.100.1", "ipMode": "VIP"},
                {"ip": "198.51.100.2"},
                {"ip": "198.51.100.3", "ipMode": "Proxy"},
                {"hostname": "web.lb.example.com"},
            ]}}}),
        ),
        web_slice(),
    ]);
    assert_eq!(
        keys(&s),
        [
            "10.96.0.10:80/TCP",
            "192.0.2.20:80/TCP",
            "198.51.100.1:80/TCP",
            "198.51.100.2:80/TCP"
        ]
    );
    assert_eq!(
        fe(&s, "198.51.100.1:80/TCP").kind,
        FrontendKind::LoadBalancer
    );
    assert_eq!(fe(&s, "192.0.2.20:80/TCP").kind, FrontendKind::ExternalIp);
    for key in [
        "198.51.100.1:80/TCP",
        "198.51.100.2:80/TCP",
        "192.0.2.20:80/TCP",
    ] {
        assert!(fe(&s, key).snat_remote, "{key}");
        assert_eq!(
            backends(fe(&s, key)),
            ["10.1.0.1:8080 local", "10.1.0.2:8080"]
        );
    }
    assert_eq!(
        addrs(&s),
        ["10.96.0.10", "192.0.2.20", "198.51.100.1", "198.51.100.2"]
    );
    // ipMode Proxy is normal: not programmed, not reported.
    assert!(s.skipped.is_empty(), "{:?}", skips(&s));
}

#[test]
fn external_ips_work_on_a_cluster_ip_service() {
    let s = state(vec![
        svc(
            "web",
            json!({"clusterIP": "10.96.0.10", "externalIPs": ["192.0.2.20"], "ports": [{"name": "http", "port": 80}]}),
        ),
        web_slice(),
    ]);
    assert_eq!(keys(&s), ["10.96.0.10:80/TCP", "192.0.2.20:80/TCP"]);
    assert!(fe(&s, "192.0.2.20:80/TCP").snat_remote);
}

/// externalTrafficPolicy Local on every kind of external frontend.
#[test]
fn external_traffic_policy_local() {
    let lb = svc_with(
        "web",
        json!({
            "type": "LoadBalancer", "clusterIP": "10.96.0.10", "externalTrafficPolicy": "Local",
            "healthCheckNodePort": 31999, "externalIPs": ["192.0.2.20"], "ports": http_ports(),
        }),
        json!({"status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}}}),
    );
    let s = state(vec![lb, web_slice()]);
    assert_eq!(
        keys(&s),
        [
            "10.96.0.10:80/TCP",
            "192.0.2.20:80/TCP",
            "192.0.2.20:80/TCP (internal)",
            "192.168.0.10:30080/TCP",
            "192.168.0.10:30080/TCP (internal)",
            "198.51.100.1:80/TCP",
            "198.51.100.1:80/TCP (internal)",
            "203.0.113.10:30080/TCP",
            "203.0.113.10:30080/TCP (internal)",
        ]
    );
    for addr in [
        "192.0.2.20:80/TCP",
        "192.168.0.10:30080/TCP",
        "198.51.100.1:80/TCP",
    ] {
        let outside = fe(&s, addr);
        assert_eq!(backends(outside), ["10.1.0.1:8080 local"], "{addr}");
        assert!(outside.local_only && !outside.snat_remote, "{addr}");
        assert_eq!(outside.health_check_node_port, Some(31999), "{addr}");
        assert_eq!(outside.key.scope, Scope::External);

        let inside = fe(&s, &format!("{addr} (internal)"));
        assert_eq!(
            backends(inside),
            ["10.1.0.1:8080 local", "10.1.0.2:8080"],
            "{addr}"
        );
        assert!(!inside.local_only && !inside.snat_remote, "{addr}");
        assert_eq!(inside.health_check_node_port, None);
        assert_eq!(inside.kind, outside.kind);
    }
    // The ClusterIP is unaffected by externalTrafficPolicy.
    let cip = fe(&s, "10.96.0.10:80/TCP");
    assert_eq!(backends(cip), ["10.1.0.1:8080 local", "10.1.0.2:8080"]);
    assert!(!cip.local_only);
    assert_eq!(cip.health_check_node_port, None);
}

#[test]
fn external_traffic_policy_local_without_local_endpoints() {
    let s = state(vec![
        svc(
            "web",
            json!({"type": "NodePort", "clusterIP": "10.96.0.10", "externalTrafficPolicy": "Local", "ports": http_ports()}),
        ),
        slice(
            "web-1",
            "web",
            json!([{"name": "http", "port": 8080}]),
            json!([ep("10.1.0.2", Some("node-b"))]),
        ),
    ]);
    // Outside clients are dropped here (the Service has endpoints
    // elsewhere); pods still get through.
    assert_eq!(
        backends(fe(&s, "192.168.0.10:30080/TCP")),
        Vec::<String>::new()
    );
    assert!(fe(&s, "192.168.0.10:30080/TCP").drop_when_empty);
    assert!(!fe(&s, "192.168.0.10:30080/TCP (internal)").drop_when_empty);
    assert_eq!(
        backends(fe(&s, "192.168.0.10:30080/TCP (internal)")),
        ["10.1.0.2:8080"]
    );
    // NodePort type: no health check node port (only LoadBalancer has one).
    assert_eq!(
        fe(&s, "192.168.0.10:30080/TCP").health_check_node_port,
        None
    );
}

#[test]
fn external_traffic_policy_local_needs_an_externally_reachable_service() {
    // On a plain ClusterIP Service the field means nothing.
    let s = state(vec![
        svc(
            "web",
            json!({"clusterIP": "10.96.0.10", "externalTrafficPolicy": "Local", "ports": http_ports()}),
        ),
        web_slice(),
    ]);
    assert_eq!(keys(&s), ["10.96.0.10:80/TCP"]);
    assert!(s.skipped.iter().any(|k| {
        k.reason
            .contains("nodePort 30080 on a ClusterIP Service ignored")
    }));
    // A ClusterIP Service with externalIPs is reachable from outside.
    let s = state(vec![
        svc(
            "web",
            json!({"clusterIP": "10.96.0.10", "externalTrafficPolicy": "Local", "externalIPs": ["192.0.2.20"],
                   "ports": [{"name": "http", "port": 80}]}),
        ),
        web_slice(),
    ]);
    assert_eq!(
        backends(fe(&s, "192.0.2.20:80/TCP")),
        ["10.1.0.1:8080 local"]
    );
    assert_eq!(
        backends(fe(&s, "192.0.2.20:80/TCP (internal)")),
        ["10.1.0.1:8080 local", "10.1.0.2:8080"]
    );
}

#[test]
fn internal_traffic_policy_local() {
    let s = state(vec![
        svc(
            "web",
            json!({"type": "NodePort", "clusterIP": "10.96.0.10", "internalTrafficPolicy": "Local", "ports": http_ports()}),
        ),
        web_slice(),
    ]);
    let cip = fe(&s, "10.96.0.10:80/TCP");
    assert_eq!(backends(cip), ["10.1.0.1:8080 local"]);
    assert!(cip.local_only);
    // External traffic follows externalTrafficPolicy (Cluster) instead.
    let np = fe(&s, "192.168.0.10:30080/TCP");
    assert_eq!(backends(np), ["10.1.0.1:8080 local", "10.1.0.2:8080"]);
    assert!(!np.local_only && np.snat_remote);

    assert!(!cip.drop_when_empty);

    // No local endpoint: kube-proxy's CategorizeEndpoints counts every
    // ready (or serving-terminating) endpoint anywhere towards
    // hasAnyEndpoints, even for a Service that only uses local ones, so
    // the ClusterIP drops (the nftables proxier's TestInternalTrafficPolicy
    // case "no local endpoints"); with nothing usable anywhere it rejects.
    let elsewhere = |conditions: Value| {
        state(vec![
            svc(
                "web",
                json!({"clusterIP": "10.96.0.10", "internalTrafficPolicy": "Local", "ports": [{"name": "http", "port": 80}]}),
            ),
            slice(
                "web-1",
                "web",
                json!([{"name": "http", "port": 8080}]),
                json!([{"addresses": ["10.1.0.2"], "nodeName": "node-b", "conditions": conditions}]),
            ),
        ])
    };
    for (conditions, drops) in [
        (json!({"ready": true}), true),
        (
            json!({"ready": false, "serving": true, "terminating": true}),
            true,
        ),
        (
            json!({"ready": false, "serving": false, "terminating": true}),
            false,
        ),
    ] {
        let s = elsewhere(conditions.clone());
        let cip = fe(&s, "10.96.0.10:80/TCP");
        assert!(cip.backends.is_empty(), "{conditions}");
        assert_eq!(cip.drop_when_empty, drops, "{conditions}");
    }

    // The same with a Cluster external policy in play: the Service has
    // endpoints it can use (elsewhere), so the ClusterIP drops instead.
    let s = state(vec![
        svc(
            "web",
            json!({"type": "NodePort", "clusterIP": "10.96.0.10", "internalTrafficPolicy": "Local", "ports": http_ports()}),
        ),
        slice(
            "web-1",
            "web",
            json!([{"name": "http", "port": 8080}]),
            json!([ep("10.1.0.2", Some("node-b"))]),
        ),
    ]);
    assert!(fe(&s, "10.96.0.10:80/TCP").backends.is_empty());
    assert!(fe(&s, "10.96.0.10:80/TCP").drop_when_empty);
}

#[test]
fn session_affinity_applies_to_every_frontend_of_the_service() {
    let cases = [
        (json!({}), None),
        (json!({"sessionAffinity": "ClientIP"}), Some(10_800)),
        (
            json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 300}}}),
            Some(300),
        ),
    ];
    for (affinity, want) in cases {
        let spec = with(
            json!({"type": "NodePort", "clusterIP": "10.96.0.10", "externalIPs": ["192.0.2.20"], "ports": http_ports()}),
            affinity.clone(),
        );
        let s = state(vec![svc("web", spec), web_slice()]);
        assert_eq!(s.frontends.len(), 4);
        for f in s.frontends.values() {
            assert_eq!(f.affinity_timeout, want, "{affinity} {}", f.key);
        }
    }
}

#[test]
fn load_balancer_source_ranges_apply_to_load_balancer_ips_only() {
    let lb = |ranges: Value| {
        svc_with(
            "web",
            json!({"type": "LoadBalancer", "clusterIP": "10.96.0.10", "externalIPs": ["192.0.2.20"],
                   "loadBalancerSourceRanges": ranges, "ports": http_ports()}),
            json!({"status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}, {"ip": "198.51.100.2"}]}}}),
        )
    };
    let net = |s: &str| s.parse::<ipnetwork::Ipv4Network>().unwrap();

    let s = state(vec![
        lb(json!([
            "10.0.0.0/8",
            " 172.16.0.0/12 ",
            "bogus",
            "fd00::/8"
        ])),
        web_slice(),
    ]);
    for key in ["198.51.100.1:80/TCP", "198.51.100.2:80/TCP"] {
        assert_eq!(
            fe(&s, key).source_ranges,
            vec![net("10.0.0.0/8"), net("172.16.0.0/12")],
            "{key}"
        );
    }
    for key in [
        "10.96.0.10:80/TCP",
        "192.0.2.20:80/TCP",
        "192.168.0.10:30080/TCP",
    ] {
        assert!(fe(&s, key).source_ranges.is_empty(), "{key}");
    }
    assert_eq!(
        skips(&s),
        [
            "Service default/web: invalid loadBalancerSourceRange \"bogus\" ignored",
            "Service default/web: loadBalancerSourceRange fd00::/8: IPv6 not supported by the datapath yet",
        ]
    );

    // Ranges that admit the node admit its loopback to the VIPs as well.
    let s = state(vec![lb(json!(["192.168.0.0/16"])), web_slice()]);
    assert_eq!(
        fe(&s, "198.51.100.1:80/TCP").source_ranges,
        vec![
            net("192.168.0.0/16"),
            net("198.51.100.1/32"),
            net("198.51.100.2/32")
        ]
    );

    // No ranges: open to all.
    let s = state(vec![lb(json!([])), web_slice()]);
    assert!(fe(&s, "198.51.100.1:80/TCP").source_ranges.is_empty());
}

#[test]
fn terminating_endpoints_are_used_only_when_nothing_is_ready() {
    let draining = |addr, node| {
        with(
            ep(addr, node),
            json!({"conditions": {"ready": false, "serving": true, "terminating": true}}),
        )
    };
    let gone = |addr, node| {
        with(
            ep(addr, node),
            json!({"conditions": {"ready": false, "serving": false, "terminating": true}}),
        )
    };
    let ports = json!([{"name": "http", "port": 8080}]);
    let spec = json!({"type": "NodePort", "clusterIP": "10.96.0.10", "externalTrafficPolicy": "Local", "ports": http_ports()});

    // Ready remote endpoint, local one draining: cluster uses the ready one,
    // Local policy drains through the local one.
    let s = state(vec![
        svc("web", spec.clone()),
        slice(
            "web-1",
            "web",
            ports.clone(),
            json!([
                ep("10.1.0.2", Some("node-b")),
                draining("10.1.0.1", Some(NODE)),
                gone("10.1.0.3", Some(NODE))
            ]),
        ),
    ]);
    assert_eq!(backends(fe(&s, "10.96.0.10:80/TCP")), ["10.1.0.2:8080"]);
    assert_eq!(
        backends(fe(&s, "192.168.0.10:30080/TCP")),
        ["10.1.0.1:8080 local terminating"]
    );
    assert_eq!(
        backends(fe(&s, "192.168.0.10:30080/TCP (internal)")),
        ["10.1.0.2:8080"]
    );

    // Nothing ready anywhere: everything that still serves.
    let s = state(vec![
        svc("web", spec),
        slice(
            "web-1",
            "web",
            ports,
            json!([
                draining("10.1.0.2", Some("node-b")),
                draining("10.1.0.1", Some(NODE)),
                gone("10.1.0.3", None)
            ]),
        ),
    ]);
    assert_eq!(
        backends(fe(&s, "10.96.0.10:80/TCP")),
        [
            "10.1.0.1:8080 local terminating",
            "10.1.0.2:8080 terminating"
        ]
    );
    assert_eq!(
        backends(fe(&s, "192.168.0.10:30080/TCP")),
        ["10.1.0.1:8080 local terminating"]
    );
}

#[test]
fn endpoint_conditions_default_like_kube_proxy() {
    // ready unset = ready; terminating unset = not terminating; serving
    // unset = serving (so an unready terminating endpoint drains).
    let s = state(vec![
        svc(
            "web",
            json!({"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]}),
        ),
        slice(
            "web-1",
            "web",
            json!([{"name": "http", "port": 8080}]),
            json!([with(
                ep("10.1.0.1", None),
                json!({"conditions": {"ready": false, "terminating": true}})
            )]),
        ),
    ]);
    assert_eq!(
        backends(fe(&s, "10.96.0.10:80/TCP")),
        ["10.1.0.1:8080 terminating"]
    );
    let s = state(vec![
        svc(
            "web",
            json!({"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]}),
        ),
        slice(
            "web-1",
            "web",
            json!([{"name": "http", "port": 8080}]),
            json!([with(ep("10.1.0.1", None), json!({"conditions": {}}))]),
        ),
    ]);
    assert_eq!(backends(fe(&s, "10.96.0.10:80/TCP")), ["10.1.0.1:8080"]);
}

#[test]
fn topology_hints() {
    let hinted = |addr: &str, zone: &str| {
        with(
            ep(addr, None),
            json!({"hints": {"forZones": [{"name": zone}]}}),
        )
    };
    let objects = || {
        vec![
            svc(
                "web",
                json!({"clusterIP": "10.96.0.10", "trafficDistribution": "PreferClose", "ports": [{"name": "http", "port": 80}]}),
            ),
            slice(
                "web-1",
                "web",
                json!([{"name": "http", "port": 8080}]),
                json!([
                    hinted("10.1.0.1", "zone-a"),
                    hinted("10.1.0.2", "zone-b"),
                    hinted("10.1.0.3", "zone-a")
                ]),
            ),
        ]
    };
    let cluster = ClusterState::from_objects(objects());
    let in_zone = |zone: Option<&str>| {
        let n = NodeContext {
            zone: zone.map(String::from),
            ..node()
        };
        backends(fe(&desired_state(&cluster, &n), "10.96.0.10:80/TCP"))
    };
    assert_eq!(in_zone(Some("zone-a")), ["10.1.0.1:8080", "10.1.0.3:8080"]);
    assert_eq!(in_zone(Some("zone-b")), ["10.1.0.2:8080"]);
    // Hints for other zones only, or a node without a zone: every endpoint.
    assert_eq!(
        in_zone(Some("zone-c")),
        ["10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"]
    );
    assert_eq!(
        in_zone(None),
        ["10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"]
    );
    assert_eq!(
        in_zone(Some("")),
        ["10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"]
    );

    // PreferSameNode: node hints.
    let s = state(vec![
        svc(
            "web",
            json!({"clusterIP": "10.96.0.10", "trafficDistribution": "PreferSameNode", "ports": [{"name": "http", "port": 80}]}),
        ),
        slice(
            "web-1",
            "web",
            json!([{"name": "http", "port": 8080}]),
            json!([
                with(
                    ep("10.1.0.1", Some(NODE)),
                    json!({"hints": {"forNodes": [{"name": NODE}], "forZones": [{"name": "zone-a"}]}})
                ),
                with(
                    ep("10.1.0.2", Some("node-b")),
                    json!({"hints": {"forNodes": [{"name": "node-b"}], "forZones": [{"name": "zone-a"}]}})
                ),
            ]),
        ),
    ]);
    assert_eq!(
        backends(fe(&s, "10.96.0.10:80/TCP")),
        ["10.1.0.1:8080 local"]
    );
}

#[test]
fn slices_are_merged_and_deduplicated() {
    let ports = json!([{"name": "http", "port": 8080}]);
    let s = state(vec![
        svc("web", json!({"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]})),
        slice("web-a", "web", ports.clone(), json!([ep("10.1.0.1", None), with(ep("10.1.0.2", None), json!({"conditions": {"ready": false}}))])),
        slice("web-b", "web", ports.clone(), json!([ep("10.1.0.2", None), ep("10.1.0.3", None), ep("10.1.0.1", None)])),
        // Another namespace's slice with the same service name is not ours.
        KubeObject::endpoint_slice(serde_json::from_value(json!({
                "metadata": {"name": "web-x", "namespace": "other", "labels": {SERVICE_NAME_LABEL: "web"}},
                "addressType": "IPv4", "ports": ports, "endpoints": [ep("10.9.9.9", None)],
            }))
            .unwrap(),
        ),
    ]);
    assert_eq!(
        backends(fe(&s, "10.96.0.10:80/TCP")),
        ["10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"]
    );
}

#[test]
fn selectorless_service_uses_its_endpoints_object() {
    let endpoints = KubeObject::Endpoints(std::sync::Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "db", "namespace": "default"},
            "subsets": [{
                "addresses": [{"ip": "10.3.0.1", "nodeName": NODE}],
                "notReadyAddresses": [{"ip": "10.3.0.2"}],
                "ports": [{"name": "pg", "port": 5432}],
            }],
        }))
        .unwrap(),
    ));
    let s = state(vec![
        svc(
            "db",
            json!({"clusterIP": "10.96.0.20", "ports": [{"name": "pg", "port": 5432}]}),
        ),
        endpoints.clone(),
    ]);
    assert_eq!(
        backends(fe(&s, "10.96.0.20:5432/TCP")),
        ["10.3.0.1:5432 local"]
    );

    // With a selector, the EndpointSlice controller owns the endpoints.
    let s = state(vec![
        svc(
            "db",
            json!({"clusterIP": "10.96.0.20", "selector": {"app": "db"}, "ports": [{"name": "pg", "port": 5432}]}),
        ),
        endpoints,
    ]);
    assert!(fe(&s, "10.96.0.20:5432/TCP").backends.is_empty());
}

#[test]
fn a_service_without_endpoints_still_gets_its_frontends() {
    let s = state(vec![svc(
        "web",
        json!({"type": "NodePort", "clusterIP": "10.96.0.10", "ports": http_ports()}),
    )]);
    assert_eq!(s.frontends.len(), 3);
    assert!(s.frontends.values().all(|f| f.backends.is_empty()));
    assert!(s.skipped.is_empty());
}

#[test]
fn invalid_parts_are_reported_and_the_rest_still_works() {
    let s = state(vec![
        svc(
            "bad-ip",
            json!({"clusterIP": "10.96.0.999", "ports": [{"port": 80}]}),
        ),
        svc(
            "bad-port",
            json!({"clusterIP": "10.96.0.11", "ports": [{"name": "a", "port": 0}, {"name": "b", "port": 81, "protocol": "QUIC"}, {"name": "c", "port": 82}]}),
        ),
        svc(
            "web",
            json!({"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]}),
        ),
        slice(
            "web-1",
            "web",
            json!([{"name": "http", "port": 8080}, {"name": "x", "port": 70000}]),
            json!([ep("10.1.0.1", None), ep("not-an-ip", None), ep("fd00::1", None), {"addresses": []}]),
        ),
    ]);
    assert_eq!(keys(&s), ["10.96.0.10:80/TCP", "10.96.0.11:82/TCP"]);
    assert_eq!(backends(fe(&s, "10.96.0.10:80/TCP")), ["10.1.0.1:8080"]);
    assert_eq!(
        skips(&s),
        [
            "Service default/bad-ip: invalid clusterIP \"10.96.0.999\"",
            "Service default/bad-port: port a: invalid port 0",
            "Service default/bad-port: port b: unknown protocol \"QUIC\"",
            "EndpointSlice default/web-1: port x: invalid port 70000",
            "EndpointSlice default/web-1: endpoint \"not-an-ip\": not an IP address",
            "EndpointSlice default/web-1: endpoint \"fd00::1\": IPv6 not supported by the datapath yet",
            "EndpointSlice default/web-1: endpoints[3]: no addresses",
        ]
    );
}

#[test]
fn conflicting_frontends_go_to_the_older_service() {
    let at = |t: &str| json!({"metadata": {"creationTimestamp": t}});
    let s = state(vec![
        svc_with(
            "aaa-new",
            json!({"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}, {"name": "other", "port": 81}]}),
            at("2025-01-02T00:00:00Z"),
        ),
        svc_with(
            "zzz-old",
            json!({"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]}),
            at("2024-01-01T00:00:00Z"),
        ),
    ]);
    assert_eq!(fe(&s, "10.96.0.10:80/TCP").service.name.as_ref(), "zzz-old");
    // The loser keeps what nobody else claims.
    assert_eq!(fe(&s, "10.96.0.10:81/TCP").service.name.as_ref(), "aaa-new");
    assert_eq!(
        skips(&s),
        [
            "Service default/aaa-new: port http: frontend 10.96.0.10:80/TCP already belongs to Service default/zzz-old (older)"
        ]
    );
}

#[test]
fn conflicts_without_timestamps_go_by_namespace_and_name() {
    let s = state(vec![
        svc(
            "b",
            json!({"type": "NodePort", "clusterIP": "10.96.0.2", "ports": [{"port": 80, "nodePort": 30080}]}),
        ),
        svc(
            "a",
            json!({"type": "NodePort", "clusterIP": "10.96.0.1", "ports": [{"port": 80, "nodePort": 30080}]}),
        ),
    ]);
    assert_eq!(fe(&s, "192.168.0.10:30080/TCP").service.name.as_ref(), "a");
    assert_eq!(fe(&s, "203.0.113.10:30080/TCP").service.name.as_ref(), "a");
    assert_eq!(fe(&s, "10.96.0.2:80/TCP").service.name.as_ref(), "b");
    assert_eq!(
        skips(&s),
        [
            "Service default/b: port 80: frontend 192.168.0.10:30080/TCP already belongs to Service default/a (first by namespace/name)",
            "Service default/b: port 80: frontend 203.0.113.10:30080/TCP already belongs to Service default/a (first by namespace/name)",
        ]
    );
}

#[test]
fn conflicts_cover_every_scope_of_an_external_traffic_policy_local_frontend() {
    let s = state(vec![
        svc(
            "a",
            json!({"clusterIP": "10.96.0.1", "externalIPs": ["192.0.2.20"], "externalTrafficPolicy": "Local", "ports": [{"port": 80}]}),
        ),
        svc(
            "b",
            json!({"clusterIP": "10.96.0.2", "externalIPs": ["192.0.2.20"], "ports": [{"port": 80}]}),
        ),
    ]);
    assert_eq!(fe(&s, "192.0.2.20:80/TCP").service.name.as_ref(), "a");
    assert_eq!(
        fe(&s, "192.0.2.20:80/TCP (internal)").service.name.as_ref(),
        "a"
    );
    assert_eq!(skips(&s).len(), 1);
}

#[test]
fn conflicts_within_one_service() {
    let s = state(vec![svc_with(
        "web",
        json!({"type": "LoadBalancer", "clusterIP": "10.96.0.10", "externalIPs": ["198.51.100.1"],
               "loadBalancerSourceRanges": ["10.0.0.0/8"],
               "ports": [{"name": "a", "port": 80, "nodePort": 30080}, {"name": "b", "port": 81, "nodePort": 30080}]}),
        json!({"status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}}}),
    )]);
    // The same address as load balancer IP and externalIP is one frontend,
    // firewalled like a load balancer IP.
    let f = fe(&s, "198.51.100.1:80/TCP");
    assert_eq!(f.kind, FrontendKind::LoadBalancer);
    assert_eq!(f.source_ranges.len(), 1);
    assert_eq!(
        fe(&s, "192.168.0.10:30080/TCP").service.port_name.as_ref(),
        "a"
    );
    assert_eq!(
        skips(&s),
        [
            "Service default/web: port b: frontend 192.168.0.10:30080/TCP already belongs to port a of this Service",
            "Service default/web: port b: frontend 203.0.113.10:30080/TCP already belongs to port a of this Service",
        ]
    );
}

#[test]
fn node_addresses_are_never_service_addresses() {
    let s = state(vec![svc(
        "web",
        json!({"clusterIP": "10.96.0.10", "externalIPs": ["192.168.0.10", "192.0.2.20"], "ports": [{"port": 8443}]}),
    )]);
    assert_eq!(
        keys(&s),
        [
            "10.96.0.10:8443/TCP",
            "192.0.2.20:8443/TCP",
            "192.168.0.10:8443/TCP"
        ]
    );
    assert_eq!(addrs(&s), ["10.96.0.10", "192.0.2.20"]);
}

#[test]
fn the_same_objects_always_give_the_same_state() {
    let objects = || {
        vec![
            svc(
                "web",
                json!({"type": "NodePort", "clusterIP": "10.96.0.10", "ports": http_ports()}),
            ),
            web_slice(),
            slice(
                "web-b",
                "web",
                json!([{"name": "http", "port": 8080}]),
                json!([ep("10.1.0.2", Some(NODE))]),
            ),
            svc(
                "zzz-dup",
                json!({"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]}),
            ),
        ]
    };
    let forward = state(objects());
    let mut reversed = objects();
    reversed.reverse();
    assert_eq!(forward, state(reversed));
    assert_eq!(forward, state(objects()));
    // The copy of 10.1.0.2 that is local wins over the remote one.
    assert_eq!(
        backends(fe(&forward, "10.96.0.10:80/TCP")),
        ["10.1.0.1:8080 local", "10.1.0.2:8080 local"]
    );
}

#[test]
fn a_slice_of_no_service_is_reported_as_such() {
    let s = state(vec![
        svc(
            "web",
            json!({"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]}),
        ),
        web_slice(),
        // A label typo: the slice names "wbe".
        slice(
            "wbe-xyz",
            "wbe",
            json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
            json!([ep("10.1.0.9", Some(NODE))]),
        ),
    ]);
    let orphans: Vec<&Skip> = s
        .skipped
        .iter()
        .filter(|k| k.kind == SkipKind::NoService)
        .collect();
    assert_eq!(orphans.len(), 1, "{:?}", skips(&s));
    assert_eq!(orphans[0].object, "EndpointSlice default/wbe-xyz");
    assert!(
        orphans[0].reason.contains("default/wbe"),
        "{}",
        orphans[0].reason
    );
    assert_eq!(SkipKind::NoService.label(), "no-service");
    // The Service that exists is untouched by it.
    assert_eq!(backends(fe(&s, "10.96.0.10:80/TCP")).len(), 2);
}
