//! What `sluicectl` prints, computed from a snapshot (pure, so it can be
//! tested on fixed map contents). Every view serializes to JSON for
//! scripts and renders as an aligned table for people.

use std::{collections::BTreeMap, net::Ipv4Addr};

use proxy_common::{
    Backend, CtEntry,
    codec::{Proto, endpoint, from_nbo},
    ct::{self, CT_DIR_REPLY, CT_DIR_SERVICE, CT_F_HAIRPIN},
    reason,
    service::{SCOPE_INTERNAL, SVC_F_ADDR_ONLY, SVC_F_AFFINITY, kind_name},
};
use serde::Serialize;

use super::{snapshot::Snapshot, table::Table};
use crate::writer::meta::FrontendMeta;

fn proto_name(p: u8) -> String {
    Proto(p).to_string()
}

pub(crate) fn names_by_id(s: &Snapshot) -> BTreeMap<u32, &FrontendMeta> {
    s.meta.frontends.iter().map(|f| (f.id, &**f)).collect()
}

pub(crate) fn service_name(m: Option<&&FrontendMeta>) -> String {
    match m {
        Some(m) if m.port_name.is_empty() => format!("{}/{}", m.namespace, m.name),
        Some(m) => format!("{}/{}:{}", m.namespace, m.name, m.port_name),
        None => "-".into(),
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackendRow {
    pub id: u32,
    pub address: String,
    pub protocol: String,
    pub state: Vec<&'static str>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceRow {
    pub id: u32,
    pub frontend: String,
    pub protocol: String,
    pub scope: &'static str,
    pub kind: &'static str,
    pub service: String,
    pub flags: Vec<String>,
    pub backends: Vec<BackendRow>,
    pub packets: u64,
    pub bytes: u64,
    pub new_connections: u64,
    pub refused: u64,
}

pub fn services(s: &Snapshot) -> Vec<ServiceRow> {
    let names = names_by_id(s);
    let mut rows = Vec::new();
    for (k, v) in &s.services {
        if k.slot != 0 || v.flags & SVC_F_ADDR_ONLY != 0 {
            continue;
        }
        let flags = v.describe_flags(k.scope);
        let backends = (1..=v.count)
            .filter_map(|slot| s.services.get(&k.with_slot(slot)))
            .map(|slot| {
                let b = s.backends.get(&slot.backend_id);
                BackendRow {
                    id: slot.backend_id,
                    address: b.map_or("missing".into(), |b| endpoint(b.addr, b.port)),
                    protocol: b.map_or(String::new(), |b| proto_name(b.proto)),
                    state: b.map_or(vec!["missing"], Backend::state_names),
                }
            })
            .collect();
        let c = s.svc_counters.get(&v.svc_id).copied().unwrap_or_default();
        rows.push(ServiceRow {
            id: v.svc_id,
            frontend: endpoint(k.addr, k.port),
            protocol: proto_name(k.proto),
            scope: if k.scope == SCOPE_INTERNAL {
                "internal"
            } else {
                "all"
            },
            kind: kind_name(v.kind),
            service: service_name(names.get(&v.svc_id)),
            flags,
            backends,
            packets: c.packets,
            bytes: c.bytes,
            new_connections: c.new_conns,
            refused: c.refused,
        });
    }
    rows.sort_by(|a, b| (&a.service, a.id).cmp(&(&b.service, b.id)));
    rows
}

pub fn services_table(rows: &[ServiceRow]) -> Table {
    let mut t = Table::new(&[
        "ID", "FRONTEND", "KIND", "SERVICE", "BACKENDS", "FLAGS", "PACKETS", "BYTES", "CONNS",
        "REFUSED",
    ]);
    for r in rows {
        let mut frontend = format!("{}/{}", r.frontend, r.protocol);
        if r.scope == "internal" {
            frontend.push_str(" (in-cluster)");
        }
        let first = r
            .backends
            .first()
            .map_or("(none: refusing)".to_string(), fmt_backend);
        t.row(vec![
            r.id.to_string(),
            frontend,
            r.kind.to_string(),
            r.service.clone(),
            first,
            if r.flags.is_empty() {
                "-".into()
            } else {
                r.flags.join(",")
            },
            r.packets.to_string(),
            r.bytes.to_string(),
            r.new_connections.to_string(),
            r.refused.to_string(),
        ]);
        for b in r.backends.iter().skip(1) {
            let mut line = vec![String::new(); 10];
            line[4] = fmt_backend(b);
            t.row(line);
        }
    }
    t
}

fn fmt_backend(b: &BackendRow) -> String {
    format!("{} #{} {}", b.address, b.id, b.state.join(","))
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackendUse {
    pub id: u32,
    pub address: String,
    pub protocol: String,
    pub state: Vec<&'static str>,
    /// Frontends (by service name and frontend) that use this backend.
    pub used_by: Vec<String>,
}

pub fn backends(s: &Snapshot) -> Vec<BackendUse> {
    let names = names_by_id(s);
    let mut users: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for (k, v) in &s.services {
        if k.slot != 0 {
            let who = format!(
                "{} ({}/{})",
                service_name(names.get(&v.svc_id)),
                endpoint(k.addr, k.port),
                proto_name(k.proto)
            );
            users.entry(v.backend_id).or_default().push(who);
        }
    }
    s.backends
        .iter()
        .map(|(id, b)| BackendUse {
            id: *id,
            address: endpoint(b.addr, b.port),
            protocol: proto_name(b.proto),
            state: b.state_names(),
            used_by: users.remove(id).unwrap_or_default(),
        })
        .collect()
}

pub fn backends_table(rows: &[BackendUse]) -> Table {
    let mut t = Table::new(&["ID", "BACKEND", "PROTO", "STATE", "USED BY"]);
    for r in rows {
        t.row(vec![
            r.id.to_string(),
            r.address.clone(),
            r.protocol.clone(),
            r.state.join(","),
            if r.used_by.is_empty() {
                "-".into()
            } else {
                r.used_by.join("; ")
            },
        ]);
    }
    t
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConnRow {
    pub protocol: String,
    pub client: String,
    pub frontend: String,
    pub backend: String,
    pub backend_id: u32,
    pub service_id: u32,
    pub service: String,
    pub state: &'static str,
    pub age_seconds: u32,
    pub expires_in_seconds: u32,
    pub packets_to_backend: u64,
    pub bytes_to_backend: u64,
    pub packets_to_client: u64,
    pub bytes_to_client: u64,
    pub hairpin: bool,
}

/// One row per connection: the service entry joined with its reply entry.
pub fn conntrack(s: &Snapshot, only: Option<&[u32]>) -> Vec<ConnRow> {
    let names = names_by_id(s);
    let mut rows = Vec::new();
    for (k, e) in &s.ct {
        if k.dir != CT_DIR_SERVICE || only.is_some_and(|ids| !ids.contains(&e.svc_id)) {
            continue;
        }
        let reply = s.ct.get(&k.partner(e, CT_DIR_REPLY));
        let last = reply.map_or(e.last_seen, |r| {
            if ct::age(r.last_seen, e.last_seen) > 0 {
                r.last_seen
            } else {
                e.last_seen
            }
        });
        let flags = e.flags | reply.map_or(0, |r| r.flags & ct::CT_STATE_MASK);
        let merged = CtEntry {
            flags,
            last_seen: last,
            ..*e
        };
        rows.push(ConnRow {
            protocol: proto_name(k.proto),
            client: endpoint(k.saddr, k.sport),
            frontend: endpoint(k.daddr, k.dport),
            backend: endpoint(e.new_daddr, e.new_dport),
            backend_id: e.backend_id,
            service_id: e.svc_id,
            service: service_name(names.get(&e.svc_id)),
            state: merged.state_name(k.proto),
            age_seconds: s.now.saturating_sub(e.created),
            expires_in_seconds: merged.expires_in(k.proto, s.now),
            packets_to_backend: e.packets,
            bytes_to_backend: e.bytes,
            packets_to_client: reply.map_or(0, |r| r.packets),
            bytes_to_client: reply.map_or(0, |r| r.bytes),
            hairpin: e.flags & CT_F_HAIRPIN != 0,
        });
    }
    rows.sort_by(|a, b| (&a.service, &a.client).cmp(&(&b.service, &b.client)));
    rows
}

pub fn conntrack_table(rows: &[ConnRow]) -> Table {
    let mut t = Table::new(&[
        "PROTO", "CLIENT", "FRONTEND", "BACKEND", "SERVICE", "STATE", "AGE", "EXPIRES", "PKTS>",
        "BYTES>", "<PKTS", "<BYTES",
    ]);
    for r in rows {
        let mut state = r.state.to_string();
        if r.hairpin {
            state.push_str(",hairpin");
        }
        t.row(vec![
            r.protocol.clone(),
            r.client.clone(),
            r.frontend.clone(),
            format!("{} #{}", r.backend, r.backend_id),
            r.service.clone(),
            state,
            format!("{}s", r.age_seconds),
            format!("{}s", r.expires_in_seconds),
            r.packets_to_backend.to_string(),
            r.bytes_to_backend.to_string(),
            r.packets_to_client.to_string(),
            r.bytes_to_client.to_string(),
        ]);
    }
    t
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReasonRow {
    pub code: u32,
    pub reason: String,
    pub verdict: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

pub fn reasons(s: &Snapshot) -> Vec<ReasonRow> {
    s.reasons
        .iter()
        .map(|(code, c)| ReasonRow {
            code: *code,
            reason: reason::name(*code).map_or_else(|| format!("code-{code}"), str::to_string),
            verdict: if reason::is_drop(*code) {
                "drop"
            } else {
                "pass"
            },
            packets: c.packets,
            bytes: c.bytes,
        })
        .collect()
}

pub fn stats_tables(s: &Snapshot) -> (Table, Table) {
    let mut r = Table::new(&["CODE", "REASON", "VERDICT", "PACKETS", "BYTES"]);
    for row in reasons(s) {
        r.row(vec![
            row.code.to_string(),
            row.reason,
            row.verdict.to_string(),
            row.packets.to_string(),
            row.bytes.to_string(),
        ]);
    }
    let mut m = Table::new(&["MAP", "ENTRIES", "CAPACITY", "FILL", "EVICTED", "FULL"]);
    for f in &s.fill {
        let ct = s.conntrack.iter().find(|c| c.name == f.name);
        m.row(vec![
            f.name.to_string(),
            f.entries.to_string(),
            f.capacity.to_string(),
            format!(
                "{:.1}%",
                100.0 * f.entries as f64 / f.capacity.max(1) as f64
            ),
            ct.map_or_else(|| "-".into(), |c| c.evicted.to_string()),
            ct.map_or_else(|| "-".into(), |c| c.full.to_string()),
        ]);
    }
    (r, m)
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AffinityRow {
    pub client: Ipv4Addr,
    pub service_id: u32,
    pub service: String,
    pub backend: String,
    pub backend_id: u32,
    pub last_used_seconds_ago: u32,
    pub expires_in_seconds: u32,
}

/// ClientIP affinity entries still in force (timeouts from the frontend).
pub fn affinity(s: &Snapshot) -> Vec<AffinityRow> {
    let names = names_by_id(s);
    let timeouts: BTreeMap<u32, u32> = s
        .services
        .iter()
        .filter(|(k, v)| k.slot == 0 && v.flags & SVC_F_AFFINITY != 0)
        .map(|(_, v)| (v.svc_id, v.affinity_timeout))
        .collect();
    let mut rows: Vec<AffinityRow> = s
        .affinity
        .iter()
        .filter_map(|(k, v)| {
            let timeout = *timeouts.get(&k.svc_id)?;
            let idle = s.now.saturating_sub(v.last_used);
            (idle <= timeout).then(|| AffinityRow {
                client: from_nbo(k.client),
                service_id: k.svc_id,
                service: service_name(names.get(&k.svc_id)),
                backend: s
                    .backends
                    .get(&v.backend_id)
                    .map_or("gone".into(), |b| endpoint(b.addr, b.port)),
                backend_id: v.backend_id,
                last_used_seconds_ago: idle,
                expires_in_seconds: timeout - idle,
            })
        })
        .collect();
    rows.sort_by(|a, b| (&a.service, a.client).cmp(&(&b.service, b.client)));
    rows
}

pub fn affinity_table(rows: &[AffinityRow]) -> Table {
    let mut t = Table::new(&["CLIENT", "SERVICE", "BACKEND", "LAST USED", "EXPIRES"]);
    for r in rows {
        t.row(vec![
            r.client.to_string(),
            r.service.clone(),
            format!("{} #{}", r.backend, r.backend_id),
            format!("{}s ago", r.last_used_seconds_ago),
            format!("{}s", r.expires_in_seconds),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    //! Every view rendered from one fixed set of map contents: a ClusterIP
    //! with two backends (one terminating), a NodePort with
    //! externalTrafficPolicy=Local and ClientIP affinity, one tracked TCP
    //! connection and one affinity entry.

    use std::net::Ipv4Addr;

    use proxy_common::{
        AffinityKey, AffinityValue, Backend, CtEntry, CtKey, ReasonCounter, ServiceCounter,
        ServiceKey, ServiceValue,
        ct::{CT_DIR_REPLY, CT_DIR_SERVICE, CT_F_ASSURED, CT_F_REPLY_SEEN, CT_F_REWRITE_DST},
        proto, reason,
        service::{
            BE_F_LOCAL, BE_F_TERMINATING, KIND_CLUSTER_IP, KIND_NODE_PORT, SCOPE_EXTERNAL,
            SCOPE_INTERNAL, SVC_F_AFFINITY, SVC_F_LOCAL,
        },
    };

    use super::*;
    use crate::{
        ctl::snapshot::{MapFill, Snapshot},
        writer::meta::{DatapathMeta, FrontendMeta},
    };

    fn nbo(a: [u8; 4]) -> u32 {
        u32::from_ne_bytes(a)
    }

    fn meta(id: u32, name: &str, kind: &str) -> FrontendMeta {
        FrontendMeta {
            id,
            namespace: "shop".into(),
            name: name.into(),
            port_name: "".into(),
            kind: kind.into(),
            addr: Ipv4Addr::UNSPECIFIED,
            port: 0,
            protocol: "TCP".into(),
            internal_scope: false,
            local_only: false,
            affinity_timeout: None,
            snat_remote: false,
            health_check_node_port: None,
        }
    }

    fn frontend(s: &mut Snapshot, key: ServiceKey, master: ServiceValue, backends: &[u32]) {
        s.services.insert(key, master);
        for (i, b) in backends.iter().enumerate() {
            s.services.insert(
                key.with_slot(i as u16 + 1),
                ServiceValue {
                    backend_id: *b,
                    svc_id: master.svc_id,
                    ..Default::default()
                },
            );
        }
    }

    fn fixed() -> Snapshot {
        let mut s = Snapshot {
            now: 1000,
            ..Default::default()
        };
        let cart = ServiceKey::frontend(
            nbo([10, 96, 0, 10]),
            80u16.to_be(),
            proto::TCP,
            SCOPE_EXTERNAL,
        );
        frontend(
            &mut s,
            cart,
            ServiceValue {
                svc_id: 1,
                count: 2,
                kind: KIND_CLUSTER_IP,
                ..Default::default()
            },
            &[7, 8],
        );
        let web = ServiceKey::frontend(
            nbo([10, 77, 0, 1]),
            30080u16.to_be(),
            proto::TCP,
            SCOPE_EXTERNAL,
        );
        frontend(
            &mut s,
            web,
            ServiceValue {
                svc_id: 2,
                count: 1,
                kind: KIND_NODE_PORT,
                flags: SVC_F_LOCAL | SVC_F_AFFINITY,
                affinity_timeout: 600,
                ..Default::default()
            },
            &[9],
        );
        frontend(
            &mut s,
            ServiceKey {
                scope: SCOPE_INTERNAL,
                ..web
            },
            ServiceValue {
                svc_id: 3,
                count: 0,
                kind: KIND_NODE_PORT,
                ..Default::default()
            },
            &[],
        );
        for (id, a, flags) in [
            (7, [10, 244, 1, 5], 0),
            (8, [10, 244, 2, 5], BE_F_TERMINATING),
            (9, [10, 244, 1, 9], BE_F_LOCAL),
        ] {
            s.backends.insert(
                id,
                Backend {
                    addr: nbo(a),
                    port: 8080u16.to_be(),
                    proto: proto::TCP,
                    flags,
                },
            );
        }
        s.svc_counters.insert(
            1,
            ServiceCounter {
                packets: 12,
                bytes: 3400,
                new_conns: 2,
                refused: 0,
            },
        );
        s.svc_counters.insert(
            3,
            ServiceCounter {
                refused: 4,
                ..Default::default()
            },
        );
        let client = CtKey {
            saddr: nbo([10, 244, 1, 2]),
            daddr: nbo([10, 96, 0, 10]),
            sport: 40000u16.to_be(),
            dport: 80u16.to_be(),
            proto: proto::TCP,
            dir: CT_DIR_SERVICE,
            _pad: [0; 2],
        };
        s.ct.insert(
            client,
            CtEntry {
                new_daddr: nbo([10, 244, 2, 5]),
                new_dport: 8080u16.to_be(),
                flags: CT_F_REWRITE_DST,
                svc_id: 1,
                backend_id: 8,
                created: 990,
                last_seen: 995,
                packets: 6,
                bytes: 700,
                ..Default::default()
            },
        );
        s.ct.insert(
            CtKey {
                saddr: nbo([10, 244, 2, 5]),
                daddr: nbo([10, 244, 1, 2]),
                sport: 8080u16.to_be(),
                dport: 40000u16.to_be(),
                dir: CT_DIR_REPLY,
                ..client
            },
            CtEntry {
                flags: CT_F_REPLY_SEEN | CT_F_ASSURED,
                svc_id: 1,
                backend_id: 8,
                created: 990,
                last_seen: 998,
                packets: 5,
                bytes: 2700,
                ..Default::default()
            },
        );
        s.affinity.insert(
            AffinityKey {
                client: nbo([10, 77, 0, 200]),
                svc_id: 2,
            },
            AffinityValue {
                backend_id: 9,
                last_used: 900,
            },
        );
        // Expired (timeout 600 s): not shown.
        s.affinity.insert(
            AffinityKey {
                client: nbo([10, 77, 0, 201]),
                svc_id: 2,
            },
            AffinityValue {
                backend_id: 9,
                last_used: 100,
            },
        );
        s.reasons.insert(
            reason::FWD_NEW,
            ReasonCounter {
                packets: 2,
                bytes: 120,
            },
        );
        s.reasons.insert(
            reason::DROP_MALFORMED,
            ReasonCounter {
                packets: 1,
                bytes: 60,
            },
        );
        s.fill = vec![
            MapFill {
                name: "sluice_ct4_any_v2",
                entries: 2,
                capacity: 8,
            },
            MapFill {
                name: "sluice_be4_v1",
                entries: 3,
                capacity: 16,
            },
        ];
        s.conntrack = vec![crate::ctl::snapshot::CtMapStats {
            name: "sluice_ct4_any_v2",
            entries: 2,
            evicted: 5,
            full: 0,
            recreated: 1,
        }];
        s.meta = DatapathMeta {
            node: "node-1".into(),
            version: "0.1.0".into(),
            frontends: vec![
                meta(1, "cart", "ClusterIP").into(),
                meta(2, "web", "NodePort").into(),
                meta(3, "web", "NodePort").into(),
            ],
        };
        s
    }

    #[test]
    fn services_table_names_kinds_backends_flags_and_counters() {
        let t = services_table(&services(&fixed())).to_string();
        let want = [
            "ID  FRONTEND                          KIND       SERVICE    BACKENDS                         FLAGS                                         PACKETS  BYTES  CONNS  REFUSED",
            "1   10.96.0.10:80/TCP                 ClusterIP  shop/cart  10.244.1.5:8080 #7 active        -                                             12       3400   2      0",
            "                                                            10.244.2.5:8080 #8 terminating",
            "2   10.77.0.1:30080/TCP               NodePort   shop/web   10.244.1.9:8080 #9 active,local  external-policy=Local,affinity=ClientIP/600s  0        0      0      0",
            "3   10.77.0.1:30080/TCP (in-cluster)  NodePort   shop/web   (none: refusing)                 -                                             0        0      0      4",
        ];
        assert_eq!(t.lines().collect::<Vec<_>>(), want, "\n{t}");
    }

    #[test]
    fn services_json_carries_every_backend() {
        let rows = services(&fixed());
        let v = serde_json::to_value(&rows).unwrap();
        assert_eq!(v[0]["service"], "shop/cart");
        assert_eq!(v[0]["kind"], "ClusterIP");
        assert_eq!(
            v[0]["backends"][1]["state"],
            serde_json::json!(["terminating"])
        );
        assert_eq!(v[0]["new_connections"], 2);
        assert_eq!(v[2]["scope"], "internal");
    }

    #[test]
    fn conntrack_joins_the_reply_entry() {
        let rows = conntrack(&fixed(), None);
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!(r.client, "10.244.1.2:40000");
        assert_eq!(r.frontend, "10.96.0.10:80");
        assert_eq!(r.backend, "10.244.2.5:8080");
        assert_eq!(r.service, "shop/cart");
        // The reply entry saw the answer: the connection is established.
        assert_eq!(r.state, "ESTABLISHED");
        assert_eq!(r.age_seconds, 10);
        assert_eq!(r.expires_in_seconds, ct::CT_LIFETIME_TCP_ESTABLISHED - 2);
        assert_eq!((r.packets_to_backend, r.bytes_to_backend), (6, 700));
        assert_eq!((r.packets_to_client, r.bytes_to_client), (5, 2700));
        let t = conntrack_table(&rows).to_string();
        assert!(t.lines().nth(1).unwrap().starts_with(
            "TCP    10.244.1.2:40000  10.96.0.10:80  10.244.2.5:8080 #8  shop/cart  ESTABLISHED  10s"
        ), "{t}");
        assert!(conntrack(&fixed(), Some(&[2])).is_empty());
    }

    #[test]
    fn affinity_hides_expired_entries() {
        let rows = affinity(&fixed());
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].client, Ipv4Addr::new(10, 77, 0, 200));
        assert_eq!(rows[0].backend, "10.244.1.9:8080");
        assert_eq!(rows[0].expires_in_seconds, 500);
        assert_eq!(
            affinity_table(&rows).to_string(),
            "CLIENT       SERVICE   BACKEND             LAST USED  EXPIRES\n\
             10.77.0.200  shop/web  10.244.1.9:8080 #9  100s ago   500s\n"
        );
    }

    #[test]
    fn stats_name_reasons_and_fill() {
        let (r, m) = stats_tables(&fixed());
        let r = r.to_string();
        assert!(r.contains("fwd-new-connection"), "{r}");
        assert!(
            r.lines()
                .any(|l| l.contains("drop") && l.ends_with("1        60")),
            "{r}"
        );
        assert_eq!(
            m.to_string(),
            "MAP                ENTRIES  CAPACITY  FILL   EVICTED  FULL\n\
             sluice_ct4_any_v2  2        8         25.0%  5        0\n\
             sluice_be4_v1      3        16        18.8%  -        -\n"
        );
    }

    #[test]
    fn backends_list_their_users() {
        let rows = backends(&fixed());
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].used_by, vec!["shop/cart (10.96.0.10:80/TCP)"]);
        assert_eq!(rows[2].state, vec!["active", "local"]);
    }
}
