//! The Prometheus text exposition format (version 0.0.4).

use std::fmt::Write as _;

use proxy_common::{ReasonCounter, ServiceCounter, reason};

use super::State;
use crate::conntrack::ClassStats;

/// Counters read from the datapath's maps at scrape time.
#[derive(Clone, Debug, Default)]
pub struct DatapathCounters {
    /// Verdict counters by reason code (codes with traffic only).
    pub reasons: Vec<(u32, ReasonCounter)>,
    /// Per-frontend counters by frontend id.
    pub services: Vec<(u32, ServiceCounter)>,
    /// (map, entries, capacity); entries may be unknown.
    pub maps: Vec<(&'static str, Option<u64>, u64)>,
    /// The CT maps' counters, by map.
    pub conntrack: Vec<(&'static str, ClassStats)>,
    /// Failed datapath map writes, by what was being written.
    pub write_errors: Vec<(&'static str, u64)>,
}

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

fn float(v: f64) -> String {
    if v.is_infinite() {
        "+Inf".into()
    } else {
        format!("{v}")
    }
}

struct Out(String);

impl Out {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, l: &[(&str, &str)], v: impl std::fmt::Display) {
        let _ = writeln!(self.0, "{name}{} {v}", labels(l));
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, v: impl std::fmt::Display) {
        self.header(name, kind, help);
        self.sample(name, &[], v);
    }
}

pub fn render(s: &State, d: &DatapathCounters) -> String {
    let mut o = Out(String::new());
    build_info(&mut o);
    programming_latency(&mut o, s);
    control_loop(&mut o, s);
    conntrack(&mut o, s, d);
    map_fill(&mut o, d);
    verdicts(&mut o, d);
    per_service(&mut o, s, d);
    o.0
}

/// What built this daemon.
fn build_info(o: &mut Out) {
    o.header("sluice_build_info", "gauge", "Version of sluiced.");
    o.sample(
        "sluice_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
}

/// From a change seen in the source to the maps written.
fn programming_latency(o: &mut Out, s: &State) {
    let h = "sluice_programming_latency_seconds";
    o.header(
        h,
        "histogram",
        "Time from a change seen in the object source to the datapath maps written.",
    );
    for (le, n) in s.latency.cumulative() {
        o.sample(&format!("{h}_bucket"), &[("le", &float(le))], n);
    }
    o.sample(&format!("{h}_sum"), &[], float(s.latency.sum()));
    o.sample(&format!("{h}_count"), &[], s.latency.count());
}

/// What the control loop programmed and skipped, and when.
fn control_loop(o: &mut Out, s: &State) {
    o.single(
        "sluice_syncs_total",
        "counter",
        "Views of the cluster programmed into the datapath.",
        s.syncs,
    );
    o.single(
        "sluice_sync_errors_total",
        "counter",
        "Applies that failed or left part of the view unprogrammed (retried on the next change).",
        s.sync_errors,
    );
    o.single(
        "sluice_resyncs_total",
        "counter",
        "Periodic full resyncs (--sync-period): the maps read back and compared with the desired state.",
        s.resyncs,
    );
    o.single(
        "sluice_resync_repairs_total",
        "counter",
        "Map entries full resyncs rewrote because they differed from the desired state (changed behind sluiced's back).",
        s.resync_repairs,
    );
    o.single(
        "sluice_frontends_programmed",
        "gauge",
        "Service frontends (address, port, protocol) in the datapath.",
        s.frontends,
    );
    let services: std::collections::BTreeSet<(&str, &str)> = s
        .frontend_names
        .values()
        .map(|m| (&*m.namespace, &*m.name))
        .collect();
    o.single(
        "sluice_services_programmed",
        "gauge",
        "Services with at least one frontend in the datapath.",
        services.len(),
    );
    o.single(
        "sluice_backends_programmed",
        "gauge",
        "Backends (endpoint address, port, protocol) in the datapath.",
        s.backends,
    );
    o.header(
        "sluice_objects_skipped",
        "gauge",
        "Objects or parts of objects not programmed, by reason: invalid or unsupported, an EndpointSlice of no Service, an unreadable manifest (details in the log).",
    );
    for reason in ["invalid", "no-service", "manifest"] {
        let n = s.skipped_objects.get(reason).copied().unwrap_or(0);
        o.sample("sluice_objects_skipped", &[("reason", reason)], n);
    }
    o.single(
        "sluice_ready",
        "gauge",
        "1 once the first complete view is programmed.",
        u8::from(s.ready),
    );
    if let Some(t) = s.last_programmed {
        let secs = t
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        o.single(
            "sluice_last_programmed_timestamp_seconds",
            "gauge",
            "When the datapath was last programmed (Unix time).",
            float(secs),
        );
    }
}

/// The CT maps: fill at the last sweep, evictions, counters.
fn conntrack(o: &mut Out, s: &State, d: &DatapathCounters) {
    o.header(
        "sluice_conntrack_entries",
        "gauge",
        "Connection-tracking entries per map at the last sweep (two per connection).",
    );
    for (map, g) in &s.ct_sweeps {
        o.sample("sluice_conntrack_entries", &[("map", map)], g.entries);
    }
    o.header(
        "sluice_conntrack_evictions_total",
        "counter",
        "Entries the kernel evicted from an LRU connection-tracking map to make room, as of the last sweep (always 0 for the TCP map, which evicts nothing).",
    );
    for (map, g) in &s.ct_sweeps {
        o.sample(
            "sluice_conntrack_evictions_total",
            &[("map", map)],
            g.evicted,
        );
    }
    for (metric, help, field) in [
        (
            "sluice_conntrack_created_total",
            "Connection-tracking entries created (datapath and migrations).",
            0,
        ),
        (
            "sluice_conntrack_removed_total",
            "Connection-tracking entries removed (sweeps, flushes, dead state the datapath retired).",
            1,
        ),
        (
            "sluice_conntrack_full_total",
            "Entries that could not be created because the map was full (new connections dropped as drop-ct-full).",
            2,
        ),
        (
            "sluice_conntrack_recreated_total",
            "Partner entries the datapath recreated after they vanished.",
            3,
        ),
    ] {
        o.header(metric, "counter", help);
        for (map, c) in &d.conntrack {
            let v = match field {
                0 => c.created,
                1 => c.removed,
                2 => c.full,
                _ => c.recreated,
            };
            o.sample(metric, &[("map", map)], v);
        }
    }
}

/// Every map's fill and capacity, and failed datapath writes.
fn map_fill(o: &mut Out, d: &DatapathCounters) {
    o.header(
        "sluice_datapath_write_failures_total",
        "counter",
        "Datapath map writes that failed without deciding a packet's fate (what they would have recorded is lost).",
    );
    for (what, n) in &d.write_errors {
        o.sample("sluice_datapath_write_failures_total", &[("what", what)], n);
    }

    o.header(
        "sluice_map_entries",
        "gauge",
        "Entries in each datapath map.",
    );
    for (map, entries, _) in &d.maps {
        if let Some(n) = entries {
            o.sample("sluice_map_entries", &[("map", map)], n);
        }
    }
    o.header(
        "sluice_map_capacity",
        "gauge",
        "Capacity of each datapath map, entries.",
    );
    for (map, _, cap) in &d.maps {
        o.sample("sluice_map_capacity", &[("map", map)], cap);
    }
}

/// Packets and bytes by verdict and reason; drops.
fn verdicts(o: &mut Out, d: &DatapathCounters) {
    let name = |code: u32| reason::name(code).map_or_else(|| format!("code-{code}"), String::from);
    for (metric, field, help) in [
        (
            "sluice_datapath_packets_total",
            0,
            "Packets by the datapath's verdict and its reason.",
        ),
        (
            "sluice_datapath_bytes_total",
            1,
            "Bytes by the datapath's verdict and its reason.",
        ),
    ] {
        o.header(metric, "counter", help);
        for (code, c) in &d.reasons {
            let verdict = if reason::is_drop(*code) {
                "drop"
            } else {
                "pass"
            };
            let v = if field == 0 { c.packets } else { c.bytes };
            o.sample(metric, &[("reason", &name(*code)), ("verdict", verdict)], v);
        }
    }
    o.header(
        "sluice_drops_total",
        "counter",
        "Packets the datapath dropped or refused, by reason.",
    );
    for (code, c) in d.reasons.iter().filter(|(c, _)| reason::is_drop(*c)) {
        o.sample("sluice_drops_total", &[("reason", &name(*code))], c.packets);
    }
}

/// Traffic per Service frontend, labelled with its names.
fn per_service(o: &mut Out, s: &State, d: &DatapathCounters) {
    for (metric, help) in [
        (
            "sluice_service_packets_total",
            "Packets to a Service frontend (both directions of its connections).",
        ),
        (
            "sluice_service_bytes_total",
            "Bytes through a Service frontend.",
        ),
        (
            "sluice_service_connections_total",
            "New connections to a Service frontend.",
        ),
        (
            "sluice_service_refused_total",
            "Connections refused or dropped at a frontend (no backend, source range).",
        ),
    ] {
        o.header(metric, "counter", help);
        for (id, c) in &d.services {
            let Some(m) = s.frontend_names.get(id) else {
                continue;
            };
            let frontend = format!("{}:{}/{}", m.addr, m.port, m.protocol);
            let l = [
                ("namespace", &*m.namespace),
                ("service", &*m.name),
                ("port", &*m.port_name),
                ("kind", m.kind.as_str()),
                ("frontend", frontend.as_str()),
                (
                    "scope",
                    if m.internal_scope {
                        "in-cluster"
                    } else {
                        "all"
                    },
                ),
            ];
            let v = match metric {
                "sluice_service_packets_total" => c.packets,
                "sluice_service_bytes_total" => c.bytes,
                "sluice_service_connections_total" => c.new_conns,
                _ => c.refused,
            };
            o.sample(metric, &l, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::writer::meta::FrontendMeta;

    fn state() -> State {
        let mut s = State::default();
        s.latency.observe(0.003);
        s.latency.observe(0.2);
        s.syncs = 2;
        s.frontends = 1;
        s.backends = 3;
        s.ready = true;
        s.ct_sweeps.insert(
            "sluice_ct4_any_v2",
            crate::telemetry::CtSweepGauge {
                entries: 4,
                evicted: 2,
            },
        );
        s.frontend_names.insert(
            7,
            std::sync::Arc::new(FrontendMeta {
                id: 7,
                namespace: "shop".into(),
                name: "we\"b".into(),
                port_name: "http".into(),
                kind: "ClusterIP".into(),
                addr: Ipv4Addr::new(10, 96, 0, 10),
                port: 80,
                protocol: "TCP".into(),
                internal_scope: false,
                local_only: false,
                affinity_timeout: None,
                snat_remote: false,
                health_check_node_port: None,
            }),
        );
        s
    }

    fn counters() -> DatapathCounters {
        DatapathCounters {
            reasons: vec![
                (
                    reason::FWD_NEW,
                    ReasonCounter {
                        packets: 5,
                        bytes: 300,
                    },
                ),
                (
                    reason::DROP_MALFORMED,
                    ReasonCounter {
                        packets: 2,
                        bytes: 80,
                    },
                ),
            ],
            services: vec![
                (
                    7,
                    ServiceCounter {
                        packets: 10,
                        bytes: 1000,
                        new_conns: 3,
                        refused: 1,
                    },
                ),
                // An id without a name (the names file lags): left out.
                (8, ServiceCounter::default()),
            ],
            maps: vec![
                ("sluice_ct4_any_v2", Some(4), 1024),
                ("sluice_aff4_v1", None, 64),
            ],
            write_errors: vec![("affinity", 3)],
            conntrack: vec![(
                "sluice_ct4_tcp_v2",
                ClassStats {
                    created: 9,
                    removed: 3,
                    full: 1,
                    recreated: 2,
                },
            )],
        }
    }

    #[test]
    fn every_family_has_help_and_type_and_samples_parse() {
        let text = render(&state(), &counters());
        let mut families = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                families.insert(rest.split(' ').next().unwrap().to_string());
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            // name{labels} value: the value is the last field and a number.
            let value = line.rsplit(' ').next().unwrap();
            assert!(
                value == "+Inf" || value.parse::<f64>().is_ok(),
                "bad sample {line:?}"
            );
            let name = line.split(['{', ' ']).next().unwrap();
            let family = name
                .strip_suffix("_bucket")
                .or_else(|| name.strip_suffix("_sum"))
                .or_else(|| name.strip_suffix("_count"))
                .filter(|f| families.contains(*f))
                .unwrap_or(name);
            assert!(families.contains(family), "{name} has no TYPE line");
        }
    }

    #[test]
    fn samples_carry_the_recorded_values() {
        let text = render(&state(), &counters());
        for want in [
            "sluice_programming_latency_seconds_bucket{le=\"0.0025\"} 0",
            "sluice_programming_latency_seconds_bucket{le=\"0.005\"} 1",
            "sluice_programming_latency_seconds_bucket{le=\"0.25\"} 2",
            "sluice_programming_latency_seconds_bucket{le=\"+Inf\"} 2",
            "sluice_programming_latency_seconds_count 2",
            "sluice_frontends_programmed 1",
            "sluice_services_programmed 1",
            "sluice_backends_programmed 3",
            "sluice_conntrack_entries{map=\"sluice_ct4_any_v2\"} 4",
            "sluice_conntrack_evictions_total{map=\"sluice_ct4_any_v2\"} 2",
            "sluice_conntrack_full_total{map=\"sluice_ct4_tcp_v2\"} 1",
            "sluice_datapath_write_failures_total{what=\"affinity\"} 3",
            "sluice_conntrack_recreated_total{map=\"sluice_ct4_tcp_v2\"} 2",
            "sluice_map_entries{map=\"sluice_ct4_any_v2\"} 4",
            "sluice_map_capacity{map=\"sluice_aff4_v1\"} 64",
            "sluice_datapath_packets_total{reason=\"fwd-new-connection\",verdict=\"pass\"} 5",
            "sluice_drops_total{reason=\"drop-malformed-ipv4\"} 2",
            "sluice_service_packets_total{namespace=\"shop\",service=\"we\\\"b\",port=\"http\",kind=\"ClusterIP\",frontend=\"10.96.0.10:80/TCP\",scope=\"all\"} 10",
            "sluice_service_connections_total{namespace=\"shop\",service=\"we\\\"b\",port=\"http\",kind=\"ClusterIP\",frontend=\"10.96.0.10:80/TCP\",scope=\"all\"} 3",
            "sluice_ready 1",
        ] {
            assert!(
                text.lines().any(|l| l == want),
                "missing {want:?} in\n{text}"
            );
        }
        assert!(!text.contains("sluice_map_entries{map=\"sluice_aff4_v1\"}"));
        assert!(
            !text.contains("fwd-new-connection\"} 5\nsluice_drops"),
            "passes are not drops"
        );
        assert_eq!(text.matches("sluice_service_bytes_total{").count(), 1);
    }
}
