//! What `sluicectl` prints, computed from a snapshot (pure, so it can be
//! tested on fixed map contents). Every view serializes to JSON for
//! scripts and renders as an aligned table for people.

use std::{collections::BTreeMap, net::Ipv4Addr};

use proxy_common::{
    CtEntry, CtKey,
    ct::{self, CT_DIR_REPLY, CT_DIR_SERVICE, CT_F_HAIRPIN},
    proto, reason,
    service::{
        BE_F_LOCAL, BE_F_TERMINATING, SCOPE_INTERNAL, SVC_F_ADDR_ONLY, SVC_F_AFFINITY, SVC_F_LOCAL,
        SVC_F_SNAT_REMOTE, kind_name,
    },
};
use serde::Serialize;

use super::{snapshot::Snapshot, table::Table};
use crate::writer::meta::FrontendMeta;

fn addr(a: u32) -> Ipv4Addr {
    Ipv4Addr::from(a.to_ne_bytes())
}

fn endpoint(a: u32, port_nbo: u16) -> String {
    format!("{}:{}", addr(a), u16::from_be(port_nbo))
}

pub fn proto_name(p: u8) -> String {
    match p {
        proto::TCP => "TCP".into(),
        proto::UDP => "UDP".into(),
        proto::SCTP => "SCTP".into(),
        proto::ICMP => "ICMP".into(),
        other => other.to_string(),
    }
}

fn names_by_id(s: &Snapshot) -> BTreeMap<u32, &FrontendMeta> {
    s.meta.frontends.iter().map(|f| (f.id, f)).collect()
}

fn service_name(m: Option<&&FrontendMeta>) -> String {
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

fn backend_state(flags: u8) -> Vec<&'static str> {
    let mut v = vec![if flags & BE_F_TERMINATING != 0 {
        "terminating"
    } else {
        "active"
    }];
    if flags & BE_F_LOCAL != 0 {
        v.push("local");
    }
    v
}

pub fn services(s: &Snapshot) -> Vec<ServiceRow> {
    let names = names_by_id(s);
    let mut rows = Vec::new();
    for (k, v) in &s.services {
        if k.slot != 0 || v.flags & SVC_F_ADDR_ONLY != 0 {
            continue;
        }
        let mut flags = Vec::new();
        if v.flags & SVC_F_LOCAL != 0 {
            flags.push("node-local".to_string());
        }
        if v.flags & SVC_F_AFFINITY != 0 {
            flags.push(format!("affinity={}s", v.affinity_timeout));
        }
        if v.flags & SVC_F_SNAT_REMOTE != 0 {
            flags.push("snat-remote".to_string());
        }
        let backends = (1..=v.count)
            .filter_map(|slot| s.services.get(&k.with_slot(slot)))
            .map(|slot| {
                let b = s.backends.get(&slot.backend_id);
                BackendRow {
                    id: slot.backend_id,
                    address: b.map_or("missing".into(), |b| endpoint(b.addr, b.port)),
                    protocol: b.map_or(String::new(), |b| proto_name(b.proto)),
                    state: b.map_or(vec!["missing"], |b| backend_state(b.flags)),
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
            state: backend_state(b.flags),
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

fn state_name(k: &CtKey, e: &CtEntry) -> &'static str {
    if k.proto == proto::TCP {
        ct::tcp_state_name(e.flags)
    } else if e.flags & ct::CT_F_REPLY_SEEN != 0 {
        "REPLIED"
    } else {
        "UNREPLIED"
    }
}

/// One row per connection: the service entry joined with its reply entry.
pub fn conntrack(s: &Snapshot, only: Option<&[u32]>) -> Vec<ConnRow> {
    let names = names_by_id(s);
    let mut rows = Vec::new();
    for (k, e) in &s.ct {
        if k.dir != CT_DIR_SERVICE || only.is_some_and(|ids| !ids.contains(&e.svc_id)) {
            continue;
        }
        let rewritten_src = if e.flags & ct::CT_F_REWRITE_SRC != 0 {
            (e.new_saddr, e.new_sport)
        } else {
            (k.saddr, k.sport)
        };
        let reply_key = CtKey {
            saddr: e.new_daddr,
            daddr: rewritten_src.0,
            sport: e.new_dport,
            dport: rewritten_src.1,
            proto: k.proto,
            dir: CT_DIR_REPLY,
            _pad: [0; 2],
        };
        let reply = s.ct.get(&reply_key);
        let last = reply.map_or(e.last_seen, |r| r.last_seen.max(e.last_seen));
        let flags = e.flags | reply.map_or(0, |r| r.flags & ct::CT_STATE_MASK);
        let idle = s.now.saturating_sub(last);
        rows.push(ConnRow {
            protocol: proto_name(k.proto),
            client: endpoint(k.saddr, k.sport),
            frontend: endpoint(k.daddr, k.dport),
            backend: endpoint(e.new_daddr, e.new_dport),
            backend_id: e.backend_id,
            service_id: e.svc_id,
            service: service_name(names.get(&e.svc_id)),
            state: state_name(k, &CtEntry { flags, ..*e }),
            age_seconds: s.now.saturating_sub(e.created),
            expires_in_seconds: ct::lifetime(k.proto, flags).saturating_sub(idle),
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
    let mut m = Table::new(&["MAP", "ENTRIES", "CAPACITY", "FILL"]);
    for f in &s.fill {
        m.row(vec![
            f.name.to_string(),
            f.entries.to_string(),
            f.capacity.to_string(),
            format!(
                "{:.1}%",
                100.0 * f.entries as f64 / f.capacity.max(1) as f64
            ),
        ]);
    }
    (r, m)
}
