//! `sluicectl status`: is this node's datapath whole?

use std::{fmt::Write as _, path::Path};

use proxy_common::names;
use serde::Serialize;

use crate::datapath::{check_bpffs, map_path, pin_dir};

#[derive(Clone, Debug, Serialize)]
pub struct Pin {
    pub name: &'static str,
    pub present: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Program {
    pub pin: &'static str,
    pub id: Option<u32>,
    pub tag: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Attachment {
    pub interface: String,
    pub attached: bool,
}

/// Where the programs run: one interface with Sluice's filters.
#[derive(Clone, Debug, Serialize)]
pub struct Hook {
    pub interface: String,
    /// pod, uplink or overlay.
    pub role: &'static str,
    /// The programs on its ingress and egress hooks (None: no filter).
    pub ingress: Option<&'static str>,
    pub egress: Option<&'static str>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
    /// The version of the sluiced that last programmed the maps.
    pub daemon_version: Option<String>,
    pub daemon_running: bool,
    pub bpffs: String,
    pub maps: Vec<Pin>,
    pub programs: Vec<Program>,
    pub pod_interfaces: Vec<Attachment>,
    pub hooks: Vec<Hook>,
    pub problems: Vec<String>,
}

pub fn collect(bpffs: &Path, state_dir: &Path) -> Status {
    let mut problems = Vec::new();
    if let Err(e) = check_bpffs(bpffs) {
        problems.push(e.to_string());
    }
    let maps: Vec<Pin> = names::ALL_MAPS
        .iter()
        .map(|name| Pin {
            name,
            present: map_path(bpffs, name).exists(),
        })
        .collect();
    if maps.iter().any(|p| !p.present) {
        problems
            .push("map pins missing: sluiced has not run on this node (or another --bpffs)".into());
    }
    let programs = [
        names::PIN_PROG_FROM_POD,
        names::PIN_PROG_TO_POD,
        names::PIN_PROG_FROM_NETDEV,
        names::PIN_PROG_TO_NETDEV,
        names::PIN_PROG_FROM_OVERLAY,
    ]
    .into_iter()
    .map(|pin| {
        let info = aya::programs::SchedClassifier::from_pin(pin_dir(bpffs).join(pin))
            .ok()
            .and_then(|p| p.info().ok());
        Program {
            pin,
            id: info.as_ref().map(|i| i.id()),
            tag: info.as_ref().map(|i| format!("{:016x}", i.tag())),
        }
    })
    .collect::<Vec<_>>();
    if programs.iter().any(|p| p.id.is_none()) {
        problems.push("program pins missing: new pods cannot get their datapath".into());
    }
    // Socket programs are pinned only while socket load balancing is on:
    // listed when present, never a problem when absent.
    let mut programs = programs;
    programs.extend(names::SOCK_PROGRAMS.into_iter().filter_map(|(_, _, pin)| {
        let info = aya::programs::ProgramInfo::from_pin(pin_dir(bpffs).join(pin)).ok()?;
        Some(Program {
            pin,
            id: Some(info.id()),
            tag: Some(format!("{:016x}", info.tag())),
        })
    }));
    let pod_interfaces = match sluice_net::pods::list_pod_veths(sluice_net::pods::DEFAULT_BRIDGE) {
        Ok(veths) => veths
            .into_iter()
            .map(|v| Attachment {
                attached: sluice_net::tc::pod_programs_attached(&v).unwrap_or(false),
                interface: v,
            })
            .collect(),
        Err(e) => {
            problems.push(format!("listing pod interfaces: {e}"));
            Vec::new()
        }
    };
    for a in &pod_interfaces {
        if !a.attached {
            problems.push(format!("{}: datapath programs not attached", a.interface));
        }
    }
    let overlay_device = crate::writer::meta::read_overlay(state_dir)
        .ok()
        .and_then(|m| m.device);
    let hooks = match sluice_net::tc::hooked_links() {
        Ok(links) => links
            .into_iter()
            .map(|l| hook(l, overlay_device.as_deref()))
            .collect(),
        Err(e) => {
            problems.push(format!("listing TC filters: {e}"));
            Vec::new()
        }
    };
    let daemon_running = sluice_net::liveness::daemon_running(state_dir);
    if !daemon_running {
        problems.push("sluiced is not running (the datapath keeps its last state)".into());
    }
    Status {
        version: env!("CARGO_PKG_VERSION"),
        daemon_version: crate::writer::meta::read(state_dir)
            .ok()
            .map(|m| m.version)
            .filter(|v| !v.is_empty()),
        daemon_running,
        bpffs: bpffs.display().to_string(),
        maps,
        programs,
        pod_interfaces,
        hooks,
        problems,
    }
}

/// Names what runs on a hooked link from its role: the CNI plugin puts the
/// pod programs on pod veths, sluiced the overlay program on its device and
/// the node programs on the uplink.
fn hook(l: sluice_net::tc::HookedLink, overlay_device: Option<&str>) -> Hook {
    let (role, ingress, egress) = if sluice_net::pods::is_host_veth_name(&l.interface) {
        ("pod", names::PROG_FROM_POD, names::PROG_TO_POD)
    } else if Some(l.interface.as_str()) == overlay_device {
        ("overlay", names::PROG_FROM_OVERLAY, "?")
    } else {
        ("uplink", names::PROG_FROM_NETDEV, names::PROG_TO_NETDEV)
    };
    Hook {
        interface: l.interface,
        role,
        ingress: l.ingress.then_some(ingress),
        egress: l.egress.then_some(egress),
    }
}

pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "sluicectl {}, maps last programmed by sluiced {}",
        s.version,
        s.daemon_version.as_deref().unwrap_or("(unknown)")
    );
    let _ = writeln!(
        out,
        "daemon:    {}",
        if s.daemon_running {
            "running"
        } else {
            "not running"
        }
    );
    let _ = writeln!(out, "bpffs:     {}", s.bpffs);
    let present = s.maps.iter().filter(|p| p.present).count();
    let _ = writeln!(out, "maps:      {present}/{} pinned", s.maps.len());
    for p in &s.programs {
        match (&p.id, &p.tag) {
            (Some(id), Some(tag)) => {
                let _ = writeln!(out, "program:   {} id {id} tag {tag}", p.pin);
            }
            _ => {
                let _ = writeln!(out, "program:   {} MISSING", p.pin);
            }
        }
    }
    for h in s.hooks.iter().filter(|h| h.role != "pod") {
        let _ = writeln!(
            out,
            "attached:  {} ({}): ingress {}, egress {}",
            h.interface,
            h.role,
            h.ingress.unwrap_or("-"),
            h.egress.unwrap_or("-")
        );
    }
    let attached = s.pod_interfaces.iter().filter(|a| a.attached).count();
    let _ = writeln!(
        out,
        "pods:      {attached}/{} pod interfaces have the datapath attached",
        s.pod_interfaces.len()
    );
    if s.problems.is_empty() {
        let _ = writeln!(out, "healthy");
    } else {
        for p in &s.problems {
            let _ = writeln!(out, "problem:   {p}");
        }
    }
    out
}
