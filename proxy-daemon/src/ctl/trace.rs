//! `sluicectl trace`: where would this packet go?
//!
//! The packet is run with BPF_PROG_TEST_RUN through the same eBPF program
//! the node runs, loaded a second time as a private instance whose maps are
//! private too. Those maps are seeded with copies of the live entries the
//! packet can touch: the destination's frontends, their backend slots,
//! backends and Maglev tables, the node configuration, the client's
//! affinity and the flow's connection-tracking entries. Whatever the run
//! writes (a new flow, counters, affinity) lands in the private copies,
//! which are removed afterwards: live maps are only ever read, so live
//! connections cannot be disturbed.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use crate::frame::{self as packet, TCP_ACK, TCP_SYN};
use aya::{
    maps::{Array, Map, MapData, lpm_trie::Key},
    programs::{TestRun, TestRunOptions},
};
use proxy_common::{
    AffinityKey, CtKey, ServiceKey, ServiceValue, SourceRangeKey,
    codec::{Proto, from_nbo, nbo},
    names, proto, reason,
    service::{
        SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_F_ADDR_ONLY, SVC_F_AFFINITY, SVC_F_MAGLEV,
        SVC_F_NODE_ADDR,
    },
};
use serde::Serialize;

use crate::{
    conntrack::monotonic_secs,
    datapath::{Capacities, DatapathError, Loader, PinnedMaps, pin_dir, raw},
};

/// Which hook the packet enters through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Entry {
    /// A pod's veth (`from_pod`): the client is a pod on this node.
    Pod,
    /// The node's uplink (`from_netdev`): the client is outside.
    Uplink,
    /// A socket of the node itself (or of a hostNetwork pod): its packets
    /// enter no TC hook; only socket load balancing translates them.
    Host,
}

#[derive(Clone, Debug)]
pub struct Request {
    pub from: Ipv4Addr,
    pub sport: u16,
    pub to: Ipv4Addr,
    pub dport: u16,
    /// IP protocol number (TCP or UDP).
    pub proto: u8,
    /// `None`: a pod if the client is in this node's pod CIDR, else the uplink.
    pub entry: Option<Entry>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub entry: Entry,
    pub packet: String,
    /// The flow was already tracked (its live CT entry decided).
    pub established: bool,
    pub selection: Selection,
    /// pass, drop or redirect (TC verdict).
    pub verdict: &'static str,
    pub reason: String,
    /// The backend the packet (the flow's next connection, for a new flow)
    /// goes to, if it was translated.
    pub backend: Option<String>,
    pub backend_id: Option<u32>,
    /// The packet as it left the program.
    pub rewritten: String,
    /// Tag (instruction hash, independent of map references) of the
    /// program the node runs at this hook, and of the private instance the
    /// packet went through: equal tags mean identical code.
    pub loaded_tag: Option<String>,
    pub traced_tag: Option<String>,
    /// What the trace could not do, said plainly (host traces).
    pub note: Option<String>,
}

impl Outcome {
    /// The node runs different code (sluicectl and sluiced from different
    /// builds): the trace shows what this build would do.
    pub fn program_differs(&self) -> bool {
        self.loaded_tag.is_none() || self.loaded_tag != self.traced_tag
    }
}

pub(super) fn packet(req: &Request, syn: bool) -> Vec<u8> {
    let (src, dst) = ((req.from, req.sport), (req.to, req.dport));
    if req.proto == proto::TCP {
        packet::tcp(src, dst, if syn { TCP_SYN } else { TCP_ACK }).bytes()
    } else {
        packet::udp(src, dst, &[]).bytes()
    }
}

/// "src:sport -> dst:dport" of a frame the program wrote.
pub(super) fn describe(frame: &[u8]) -> String {
    if frame.len() < 38 {
        return format!("{} bytes", frame.len());
    }
    let a = |o: usize| Ipv4Addr::new(frame[o], frame[o + 1], frame[o + 2], frame[o + 3]);
    let p = |o: usize| u16::from_be_bytes([frame[o], frame[o + 1]]);
    let proto = Proto(frame[23]);
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    if frame[23] == proto::ICMP {
        return format!("{proto} {} -> {} type {}", a(26), a(30), frame[14 + ihl]);
    }
    format!(
        "{proto} {}:{} -> {}:{}",
        a(26),
        p(14 + ihl),
        a(30),
        p(16 + ihl)
    )
}

/// A private bpffs directory for the simulation's pins, removed on drop.
pub(super) struct Private(pub(super) PathBuf);

impl Drop for Private {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

/// How the backend of a new flow is chosen, so the operator knows whether
/// another connection would land on the same one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Selection {
    /// The flow is tracked: its packets keep their backend.
    Tracked,
    /// The client has a live ClientIP affinity entry.
    Affinity,
    /// Maglev: a hash of the flow picks the slot, on every node alike.
    Maglev,
    /// One backend: no choice.
    Only,
    /// Uniformly random per connection: another one may go elsewhere.
    Random,
    /// Not a load-balanced frontend.
    None,
}

fn ct_key(req: &Request) -> CtKey {
    CtKey {
        saddr: nbo(req.from),
        daddr: nbo(req.to),
        sport: req.sport.to_be(),
        dport: req.dport.to_be(),
        proto: req.proto,
        dir: proxy_common::ct::CT_DIR_SERVICE,
        _pad: [0; 2],
    }
}

fn copy_maglev(
    live: &PinnedMaps,
    private: &mut PinnedMaps,
    svc_id: u32,
) -> Result<(), DatapathError> {
    let Ok(inner) = live.maglev.get(&svc_id, 0) else {
        return Ok(());
    };
    let io = |source| DatapathError::Io {
        path: names::MAP_MAGLEV.into(),
        source,
    };
    let table: Array<MapData, [u32; 2]> = Map::from_map_data(inner)
        .and_then(Array::try_from)
        .map_err(map_err(names::MAP_MAGLEV))?;
    let values: Vec<u32> = table.iter().filter_map(Result::ok).flatten().collect();
    let fd = raw::maglev_table(&values).map_err(io)?;
    let copy = MapData::from_fd(fd).map_err(map_err(names::MAP_MAGLEV))?;
    private
        .maglev
        .insert(svc_id, &copy, 0)
        .map_err(map_err(names::MAP_MAGLEV))
}

/// Copies into `private` everything `req`'s packet can read in `live`:
/// the node configuration, the destination's frontends (both scopes) with
/// their backend slots, backends, Maglev tables, the client's source-range
/// match and affinity, and the flow's connection-tracking entry.
fn seed(
    live: &PinnedMaps,
    private: &mut PinnedMaps,
    req: &Request,
    entry: Entry,
) -> Result<(bool, Selection), DatapathError> {
    if let Ok(c) = live.config.get(&0, 0) {
        private
            .config
            .set(0, c, 0)
            .map_err(map_err(names::MAP_CONFIG))?;
    }
    let addr_key = ServiceKey::address_only(nbo(req.to));
    if let Ok(v) = live.services.get(&addr_key, 0) {
        private
            .services
            .insert(addr_key, v, 0)
            .map_err(map_err(names::MAP_SERVICES))?;
    }
    // The frontend the program will use: pods see the in-cluster scope first.
    let scopes = match entry {
        Entry::Pod | Entry::Host => &[SCOPE_INTERNAL, SCOPE_EXTERNAL][..],
        Entry::Uplink => &[SCOPE_EXTERNAL][..],
    };
    let mut used = None;
    for &scope in scopes {
        let seeded = seed_frontend(live, private, req, scope)?;
        used = used.or(seeded);
    }
    let established = seed_flow(live, private, req)?;
    Ok((established, selection(used, established)))
}

/// Copies the frontend of `req` in `scope` with its slots, backends, Maglev
/// table, source-range match and the client's affinity; returns the
/// frontend and whether that affinity is still live.
fn seed_frontend(
    live: &PinnedMaps,
    private: &mut PinnedMaps,
    req: &Request,
    scope: u8,
) -> Result<Option<(ServiceValue, bool)>, DatapathError> {
    let svc = names::MAP_SERVICES;
    let fe = ServiceKey::frontend(nbo(req.to), req.dport.to_be(), req.proto, scope);
    let Ok(master) = live.services.get(&fe, 0) else {
        return Ok(None);
    };
    if master.flags & SVC_F_ADDR_ONLY != 0 {
        return Ok(None);
    }
    private
        .services
        .insert(fe, master, 0)
        .map_err(map_err(svc))?;
    for slot in 1..=master.count {
        let Ok(s) = live.services.get(&fe.with_slot(slot), 0) else {
            continue;
        };
        private
            .services
            .insert(fe.with_slot(slot), s, 0)
            .map_err(map_err(svc))?;
        if let Ok(b) = live.backends.get(&s.backend_id, 0) {
            private
                .backends
                .insert(s.backend_id, b, 0)
                .map_err(map_err(names::MAP_BACKENDS))?;
        }
    }
    copy_maglev(live, private, master.svc_id)?;
    let range = Key::new(
        64,
        SourceRangeKey {
            svc_id: master.svc_id,
            addr: nbo(req.from),
        },
    );
    if let Ok(v) = live.source_ranges.get(&range, 0) {
        private
            .source_ranges
            .insert(&range, v, 0)
            .map_err(map_err(names::MAP_SOURCE_RANGES))?;
    }
    let aff = AffinityKey {
        client: nbo(req.from),
        svc_id: master.svc_id,
    };
    let mut has_affinity = false;
    if let Ok(a) = live.affinity.get(&aff, 0) {
        has_affinity = monotonic_secs().saturating_sub(a.last_used) <= master.affinity_timeout;
        private
            .affinity
            .insert(aff, a, 0)
            .map_err(map_err(names::MAP_AFFINITY))?;
    }
    Ok(Some((master, has_affinity)))
}

/// Copies the flow's connection-tracking entry; true when it is live.
fn seed_flow(
    live: &PinnedMaps,
    private: &mut PinnedMaps,
    req: &Request,
) -> Result<bool, DatapathError> {
    let key = ct_key(req);
    let Ok(e) = live.ct_for(req.proto).get(&key, 0) else {
        return Ok(false);
    };
    private
        .ct_for_mut(req.proto)
        .insert(key, e, 0)
        .map_err(map_err(crate::conntrack::CtClass::of(req.proto).map_name()))?;
    Ok(!e.expired(req.proto, monotonic_secs()))
}

/// How a new packet of the flow picks its backend, given the frontend it
/// meets (and whether its client has live affinity there).
pub(super) fn selection(used: Option<(ServiceValue, bool)>, established: bool) -> Selection {
    match used {
        _ if established => Selection::Tracked,
        None => Selection::None,
        Some((m, true)) if m.flags & SVC_F_AFFINITY != 0 => Selection::Affinity,
        Some((m, _)) if m.flags & SVC_F_MAGLEV != 0 => Selection::Maglev,
        Some((m, _)) if m.count <= 1 => Selection::Only,
        Some(_) => Selection::Random,
    }
}

/// Runs `req`'s packet through a private copy of the node's datapath.
pub fn trace(bpffs: &Path, req: &Request) -> Result<Outcome, DatapathError> {
    let live = PinnedMaps::open(bpffs)?;
    let entry = req.entry.unwrap_or_else(|| default_entry(&live, req.from));
    if entry == Entry::Host {
        return super::trace_host::trace(bpffs, &live, req);
    }
    let (private_dir, mut progs) = private_datapath(bpffs)?;
    let mut private = PinnedMaps::open(&private_dir.0)?;
    let (established, selection) = seed(&live, &mut private, req, entry)?;
    // A tracked flow is asked with a plain ACK (a SYN would be port reuse,
    // a new connection); an untracked one with the SYN that opens it.
    let input = packet(req, !established);
    let (name, pin) = match entry {
        Entry::Pod => (names::PROG_FROM_POD, names::PIN_PROG_FROM_POD),
        Entry::Uplink | Entry::Host => (names::PROG_FROM_NETDEV, names::PIN_PROG_FROM_NETDEV),
    };
    let tag = |i: aya::programs::ProgramInfo| format!("{:016x}", i.tag());
    let loaded_tag = aya::programs::ProgramInfo::from_pin(pin_dir(bpffs).join(pin))
        .ok()
        .map(tag);
    let traced_tag = progs.program(name)?.info().ok().map(tag);
    let mut out = vec![0u8; 512];
    let r = progs
        .program(name)?
        .test_run(TestRunOptions {
            data_in: Some(&input),
            data_out: Some(&mut out),
            repeat: 1,
            ..Default::default()
        })
        .map_err(|source| DatapathError::Program { name, source })?;
    out.truncate(r.data_size_out as usize);
    let code = (0..reason::MAX).find(|c| {
        private
            .reasons
            .get(c, 0)
            .is_ok_and(|v| v.iter().any(|x| x.packets > 0))
    });
    let flow = private.ct_for(req.proto).get(&ct_key(req), 0).ok();
    Ok(Outcome {
        entry,
        packet: describe(&input),
        established,
        selection,
        verdict: match r.return_value {
            0 => "pass",
            2 => "drop",
            7 => "redirect",
            _ => "other",
        },
        reason: code.and_then(reason::name).unwrap_or("unknown").to_string(),
        backend: flow.map(|e| format!("{}:{}", from_nbo(e.new_daddr), u16::from_be(e.new_dport))),
        backend_id: flow.map(|e| e.backend_id),
        rewritten: describe(&out),
        loaded_tag,
        traced_tag,
        note: None,
    })
}

/// A private instance of this build's programs with small private maps,
/// pinned under <bpffs>/sluicectl_trace_<pid> until the first value drops.
pub(super) fn private_datapath(
    bpffs: &Path,
) -> Result<(Private, crate::datapath::LoadedPrograms), DatapathError> {
    // Pins need a bpffs; dotted names are reserved there.
    let dir = bpffs.join(format!("sluicectl_trace_{}", std::process::id()));
    std::fs::create_dir(&dir).map_err(|source| DatapathError::Io {
        path: dir.clone(),
        source,
    })?;
    let cleanup = Private(dir.clone());
    let small = Capacities {
        service_entries: 1024,
        backends: 1024,
        service_ids: Capacities::default().service_ids,
        ct_tcp_entries: 64,
        ct_any_entries: 64,
        frag_entries: 16,
        affinity_entries: 64,
        source_ranges: 64,
        maglev_tables: 4,
    };
    let progs = Loader::new(&dir, small).load()?;
    Ok((cleanup, progs))
}

/// Where a packet from `from` enters: a pod's veth for this node's pod
/// CIDR; the host for the node's own addresses and loopback, whose packets
/// no TC hook sees leave; else the uplink.
fn default_entry(live: &PinnedMaps, from: Ipv4Addr) -> Entry {
    let cfg = live.config.get(&0, 0).ok();
    let in_pod_cidr = cfg.is_some_and(|c| c.pod_mask != 0 && nbo(from) & c.pod_mask == c.pod_cidr);
    let own = from.is_loopback()
        || cfg.is_some_and(|c| c.node_addr == nbo(from))
        || live
            .services
            .get(&ServiceKey::address_only(nbo(from)), 0)
            .is_ok_and(|v| v.flags & SVC_F_NODE_ADDR != 0);
    if in_pod_cidr {
        Entry::Pod
    } else if own {
        Entry::Host
    } else {
        Entry::Uplink
    }
}

/// Parses `ADDR[:PORT]`; a missing port is `default_port`.
pub fn parse_endpoint(s: &str, default_port: Option<u16>) -> Result<(Ipv4Addr, u16), String> {
    let (addr, port) = match s.rsplit_once(':') {
        Some((a, p)) => (
            a,
            Some(
                p.parse::<u16>()
                    .map_err(|_| format!("{s:?}: port {p:?} is not a number from 0 to 65535"))?,
            ),
        ),
        None => (s, None),
    };
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("{s:?}: {addr:?} is not an IPv4 address"))?;
    let port = port
        .or(default_port)
        .ok_or_else(|| format!("{s:?}: a port is required (ADDR:PORT)"))?;
    Ok((addr, port))
}

pub fn render(o: &Outcome) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let hook = match o.entry {
        Entry::Pod => "a pod's veth (from_pod)",
        Entry::Uplink => "the node's uplink (from_netdev)",
        Entry::Host => "a socket of this node (cgroup/connect4, sendmsg4)",
    };
    let _ = writeln!(out, "entry:     {hook}");
    let _ = writeln!(
        out,
        "packet:    {} ({})",
        o.packet,
        if o.established {
            "tracked flow"
        } else {
            "new flow"
        }
    );
    let _ = writeln!(out, "verdict:   {} ({})", o.verdict, o.reason);
    let how = match o.selection {
        Selection::Tracked => "kept by connection tracking",
        Selection::Affinity => "ClientIP affinity",
        Selection::Maglev => "Maglev flow hash, same on every node",
        Selection::Only => "the only backend",
        Selection::Random => "random per connection: another connection may get another one",
        Selection::None => "no load-balanced frontend",
    };
    match (&o.backend, o.backend_id) {
        (Some(b), Some(id)) => {
            let _ = writeln!(out, "backend:   {b} #{id} ({how})");
        }
        _ => {
            let _ = writeln!(out, "backend:   none ({how})");
        }
    }
    let _ = writeln!(out, "rewritten: {}", o.rewritten);
    if let Some(note) = &o.note {
        let _ = writeln!(out, "note:      {note}");
    }
    match (&o.loaded_tag, &o.traced_tag) {
        _ if o.entry == Entry::Host => {}
        (Some(l), Some(t)) if l == t => {
            let _ = writeln!(out, "program:   same code as the attached one (tag {t})");
        }
        (Some(l), t) => {
            let _ = writeln!(
                out,
                "program:   WARNING the node runs tag {l}, this sluicectl carries {}: \
                 the trace shows this build's behaviour",
                t.as_deref().unwrap_or("unknown")
            );
        }
        (None, _) => {
            let _ = writeln!(
                out,
                "program:   WARNING no program pinned for this hook: the trace shows this build's behaviour"
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(proto: u8) -> Request {
        Request {
            from: Ipv4Addr::new(10, 244, 1, 2),
            sport: 40000,
            to: Ipv4Addr::new(10, 96, 0, 10),
            dport: 80,
            proto,
            entry: None,
        }
    }

    #[test]
    fn selection_follows_what_the_program_would_consult_first() {
        let fe = |flags, count| ServiceValue {
            flags,
            count,
            ..Default::default()
        };
        let cases = [
            (Some((fe(SVC_F_MAGLEV, 3), false)), true, Selection::Tracked),
            (None, false, Selection::None),
            (
                Some((fe(SVC_F_AFFINITY, 3), true)),
                false,
                Selection::Affinity,
            ),
            (
                Some((fe(SVC_F_AFFINITY, 3), false)),
                false,
                Selection::Random,
            ),
            (Some((fe(0, 3), true)), false, Selection::Random),
            (Some((fe(SVC_F_MAGLEV, 3), false)), false, Selection::Maglev),
            (Some((fe(0, 1), false)), false, Selection::Only),
            (Some((fe(0, 0), false)), false, Selection::Only),
        ];
        for (used, established, want) in cases {
            assert_eq!(selection(used, established), want, "{used:?} {established}");
        }
    }

    #[test]
    fn synthetic_packets_are_well_formed() {
        for (p, syn, len) in [
            (proto::TCP, true, 54),
            (proto::TCP, false, 54),
            (proto::UDP, false, 42),
        ] {
            let f = packet(&req(p), syn);
            assert_eq!(f.len(), len);
            packet::verify_checksums(&f).unwrap();
        }
        assert_eq!(packet(&req(proto::TCP), true)[47], TCP_SYN, "SYN only");
        assert_eq!(
            packet(&req(proto::TCP), false)[47],
            TCP_ACK,
            "ACK for a tracked flow"
        );
    }

    #[test]
    fn describe_reads_back_the_tuple() {
        assert_eq!(
            describe(&packet(&req(proto::TCP), true)),
            "TCP 10.244.1.2:40000 -> 10.96.0.10:80"
        );
        assert_eq!(describe(&[0; 10]), "10 bytes");
    }

    #[test]
    fn endpoints_parse_with_clear_errors() {
        assert_eq!(
            parse_endpoint("10.0.0.1:80", None),
            Ok((Ipv4Addr::new(10, 0, 0, 1), 80))
        );
        assert_eq!(
            parse_endpoint("10.0.0.1", Some(5)),
            Ok((Ipv4Addr::new(10, 0, 0, 1), 5))
        );
        assert!(
            parse_endpoint("10.0.0.1", None)
                .unwrap_err()
                .contains("port is required")
        );
        assert!(
            parse_endpoint("10.0.0:1", None)
                .unwrap_err()
                .contains("not an IPv4")
        );
        assert!(
            parse_endpoint("10.0.0.1:99999", None)
                .unwrap_err()
                .contains("port")
        );
    }

    #[test]
    fn render_warns_when_the_code_differs() {
        let mut o = Outcome {
            entry: Entry::Pod,
            packet: "TCP 10.244.1.2:40000 -> 10.96.0.10:80".into(),
            established: false,
            selection: Selection::Random,
            verdict: "redirect",
            reason: "fwd-new-connection".into(),
            backend: Some("10.244.2.5:8080".into()),
            backend_id: Some(8),
            rewritten: "TCP 10.244.1.2:40000 -> 10.244.2.5:8080".into(),
            loaded_tag: Some("00000000000000aa".into()),
            traced_tag: Some("00000000000000aa".into()),
            note: None,
        };
        assert_eq!(
            render(&o),
            "entry:     a pod's veth (from_pod)\n\
             packet:    TCP 10.244.1.2:40000 -> 10.96.0.10:80 (new flow)\n\
             verdict:   redirect (fwd-new-connection)\n\
             backend:   10.244.2.5:8080 #8 (random per connection: another connection may get another one)\n\
             rewritten: TCP 10.244.1.2:40000 -> 10.244.2.5:8080\n\
             program:   same code as the attached one (tag 00000000000000aa)\n"
        );
        assert!(!o.program_differs());
        o.traced_tag = Some("00000000000000bb".into());
        assert!(o.program_differs());
        assert!(render(&o).contains("WARNING the node runs tag 00000000000000aa"));
    }
}
