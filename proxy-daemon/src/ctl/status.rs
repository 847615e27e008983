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

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub daemon_running: bool,
    pub bpffs: String,
    pub maps: Vec<Pin>,
    pub programs: Vec<Program>,
    pub pod_interfaces: Vec<Attachment>,
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
    let programs = [names::PIN_PROG_FROM_POD, names::PIN_PROG_TO_POD]
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
    let pod_interfaces = match sluice_cni::list_pod_veths(sluice_cni::config::DEFAULT_BRIDGE) {
        Ok(veths) => veths
            .into_iter()
            .map(|v| Attachment {
                attached: sluice_cni::pod_programs_attached(&v).unwrap_or(false),
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
    let daemon_running = sluice_cni::daemon_running(state_dir);
    if !daemon_running {
        problems.push("sluiced is not running (the datapath keeps its last state)".into());
    }
    Status {
        version: env!("CARGO_PKG_VERSION"),
        daemon_running,
        bpffs: bpffs.display().to_string(),
        maps,
        programs,
        pod_interfaces,
        problems,
    }
}

pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "sluicectl {}", s.version);
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
