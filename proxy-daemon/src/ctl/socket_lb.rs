//! `sluicectl socket-lb`: where the socket programs are attached, which
//! sockets they serve, and the sockets they translated.

use std::path::Path;

use proxy_common::{codec::endpoint, names, reason, socket::SOCK_CONFIG_VERSION};
use serde::Serialize;

use super::{snapshot::Snapshot, table::Table, views};
use crate::{
    datapath::{DatapathError, PinnedMaps, pin_dir},
    socket_lb::{self, Scope},
};

#[derive(Clone, Debug, Serialize)]
pub struct SocketLbView {
    /// host, all or off, as the programs read it (`sluice_sockcfg_v1`).
    pub scope: String,
    /// The cgroup the daemon attached to, from its state file.
    pub cgroup: Option<String>,
    pub netns_cookie: u64,
    /// Each socket program and whether its link is pinned (attached).
    pub programs: Vec<ProgramRow>,
    /// Calls translated, refused (no endpoint), and reverse translations.
    pub translated: u64,
    pub refused: u64,
    pub reversed: u64,
    /// Per-socket reverse entries: the backend a socket was given, and
    /// the frontend getpeername()/recvmsg() show instead.
    pub sockets: Vec<SocketRow>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProgramRow {
    pub program: &'static str,
    pub attached: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct SocketRow {
    pub socket_cookie: u64,
    pub backend: String,
    pub frontend: String,
    pub service: String,
}

pub fn read(bpffs: &Path, state_dir: &Path) -> Result<SocketLbView, DatapathError> {
    let maps = PinnedMaps::open(bpffs)?;
    let snapshot = Snapshot::read(bpffs, state_dir, false)?;
    let map_err = |name| move |source| DatapathError::Map { name, source };
    let cfg = maps
        .sock_config
        .get(&0, 0)
        .map_err(map_err(names::MAP_SOCK_CONFIG))?;
    let scope = if cfg.version == SOCK_CONFIG_VERSION {
        Scope::from_mode(cfg.mode).map_or_else(
            || format!("unknown mode {}", cfg.mode),
            |s| s.name().to_string(),
        )
    } else {
        "not configured".to_string()
    };
    let dir = pin_dir(bpffs);
    let programs = names::SOCK_PROGRAMS
        .iter()
        .map(|(program, link, _)| ProgramRow {
            program,
            attached: dir.join(link).exists(),
        })
        .collect();
    let names_by_id = views::names_by_id(&snapshot);
    let mut sockets = Vec::new();
    for item in maps.sock_rev.iter() {
        let (k, v) = item.map_err(map_err(names::MAP_SOCK_REV))?;
        sockets.push(SocketRow {
            socket_cookie: k.cookie,
            backend: endpoint(k.addr, k.port),
            frontend: endpoint(v.addr, v.port),
            service: views::service_name(names_by_id.get(&v.svc_id)),
        });
    }
    sockets.sort_by(|a, b| (&a.service, a.socket_cookie).cmp(&(&b.service, b.socket_cookie)));
    let count = |code| snapshot.reasons.get(&code).map_or(0, |c| c.packets);
    Ok(SocketLbView {
        scope,
        cgroup: socket_lb::read_meta(state_dir)
            .ok()
            .and_then(|m| m.cgroup)
            .map(|c| c.display().to_string()),
        netns_cookie: cfg.netns_cookie,
        programs,
        translated: count(reason::SOCK_TRANSLATED),
        refused: count(reason::SOCK_REFUSED) + count(reason::SOCK_NO_LOCAL_BACKEND),
        reversed: count(reason::SOCK_REV_NAT),
        sockets,
    })
}

pub fn render(v: &SocketLbView) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "scope:        {}", v.scope);
    let _ = writeln!(
        out,
        "cgroup:       {}",
        v.cgroup.as_deref().unwrap_or("none recorded")
    );
    let _ = writeln!(out, "netns cookie: {}", v.netns_cookie);
    let attached: Vec<&str> = v
        .programs
        .iter()
        .map(|p| if p.attached { p.program } else { "-" })
        .collect();
    let _ = writeln!(out, "programs:     {}", attached.join(" "));
    let _ = writeln!(
        out,
        "calls:        {} translated, {} refused, {} reverse-translated",
        v.translated, v.refused, v.reversed
    );
    let mut t = Table::new(&["SOCKET", "BACKEND", "SHOWN AS", "SERVICE"]);
    for s in &v.sockets {
        t.row(vec![
            s.socket_cookie.to_string(),
            s.backend.clone(),
            s.frontend.clone(),
            s.service.clone(),
        ]);
    }
    if t.is_empty() {
        out.push_str("no translated sockets\n");
    } else {
        let _ = write!(out, "{t}");
    }
    out
}
