//! `cargo xtask bench datapath`: nanoseconds per packet of the real programs
//! under BPF_PROG_TEST_RUN, with 1 to 100k services in the maps, and the map
//! memory each service, backend and CT entry costs.
//!
//! Method (so the figures can be trusted):
//! - Every figure is the kernel's own timing of the program (the test-run
//!   loop), minus the same measurement of an empty program: the floor.
//! - Paths measured with a large repeat run the same skb again and again,
//!   so the packet must come out unchanged. A non-service packet passes
//!   untouched. For the CT-hit paths the flow's backend is its own frontend
//!   address and port: every lookup, state update, checksum helper and
//!   counter runs, and the rewrite writes back the same bytes.
//! - A new connection cannot repeat (the first run creates the flow), so it
//!   is measured one run at a time, with both CT entries deleted from user
//!   space between runs (not timed), against a floor measured the same way.
//! - Medians of several rounds; the process is pinned to one CPU.

use std::{
    net::Ipv4Addr,
    os::fd::{AsFd, AsRawFd},
};

use anyhow::{Context, Result};
use proxy_common::{
    Backend, CtKey, ServiceKey, ServiceValue,
    ct::{CT_DIR_REPLY, CT_DIR_SERVICE},
    names::{self, PROG_FROM_POD, PROG_TO_POD},
    proto,
    service::{KIND_CLUSTER_IP, SCOPE_EXTERNAL, SVC_F_ADDR_ONLY},
};
use sluice::{
    datapath::{Capacities, map_path},
    frame::{TCP_ACK, TCP_SYN, tcp},
};
use sluice_testkit::bpf::{ProgType, TrivialProgram};

use crate::fixture::{Datapath, TC_ACT_OK, nbo};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 5);
const OTHER_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 9);
const BACKENDS_PER_SERVICE: u32 = 10;
const REPEAT: u32 = 200_000;
const ROUNDS: usize = 7;
const SINGLE_RUNS: usize = 20_000;

fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i)
}

fn backend_addr(k: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + k)
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: plain affinity call on this process with a zeroed set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Kernel-accounted bytes of a pinned map (fdinfo `memlock`).
fn map_bytes(bpffs: &std::path::Path, map: &str) -> Result<u64> {
    let data = aya::maps::MapData::from_pin(map_path(bpffs, map))
        .with_context(|| format!("opening {map}"))?;
    let fd = data.fd().as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no memlock in fdinfo")
}

struct Row {
    services: u32,
    non_service: i64,
    ct_hit_fwd: i64,
    ct_hit_reply: i64,
    new_conn: i64,
    ct_hit_single: i64,
    ct_hit_moved: i64,
    seed_secs: f64,
}

/// Fills the maps with `n` services of 10 backends each (as the writer
/// would lay them out), plus `flows` established flows in CT.
fn seed(dp: &mut Datapath, n: u32, flows: u32) -> Result<()> {
    let m = &mut dp.maps;
    let mut next_backend = 1u32;
    for i in 0..n {
        let addr = nbo(vip(i));
        m.services.insert(
            ServiceKey::address_only(addr),
            ServiceValue {
                flags: SVC_F_ADDR_ONLY,
                ..Default::default()
            },
            0,
        )?;
        let fe = ServiceKey::frontend(addr, 80u16.to_be(), proto::TCP, SCOPE_EXTERNAL);
        for slot in 1..=BACKENDS_PER_SERVICE {
            let id = next_backend;
            next_backend += 1;
            m.backends.insert(
                id,
                Backend {
                    addr: nbo(backend_addr(id)),
                    port: 8080u16.to_be(),
                    proto: proto::TCP,
                    flags: 0,
                },
                0,
            )?;
            m.services.insert(
                fe.with_slot(slot as u16),
                ServiceValue {
                    backend_id: id,
                    svc_id: i + 1,
                    ..Default::default()
                },
                0,
            )?;
        }
        m.services.insert(
            fe,
            ServiceValue {
                svc_id: i + 1,
                count: BACKENDS_PER_SERVICE as u16,
                kind: KIND_CLUSTER_IP,
                ..Default::default()
            },
            0,
        )?;
    }
    // Background flows from many clients, created by the datapath itself.
    for f in 0..flows {
        let client = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 128, 0)) + f / 50_000);
        let port = 10_000 + (f % 50_000) as u16;
        let target = vip(f % n.max(1));
        dp.run(
            PROG_FROM_POD,
            &tcp((client, port), (target, 80), TCP_SYN).bytes(),
        )?;
    }
    Ok(())
}

/// The idempotent CT-hit flow: a service whose one backend is its own
/// frontend, so translation rewrites the same bytes.
fn seed_mirror(dp: &mut Datapath, addr: Ipv4Addr, svc_id: u32) -> Result<()> {
    let id = u32::MAX - 1;
    dp.maps.backends.insert(
        id,
        Backend {
            addr: nbo(addr),
            port: 80u16.to_be(),
            proto: proto::TCP,
            flags: 0,
        },
        0,
    )?;
    dp.seed_service((addr, 80), proto::TCP, svc_id, &[])?;
    let fe = ServiceKey::frontend(nbo(addr), 80u16.to_be(), proto::TCP, SCOPE_EXTERNAL);
    dp.maps.services.insert(
        fe.with_slot(1),
        ServiceValue {
            backend_id: id,
            svc_id,
            ..Default::default()
        },
        0,
    )?;
    dp.maps.services.insert(
        fe,
        ServiceValue {
            svc_id,
            count: 1,
            kind: KIND_CLUSTER_IP,
            ..Default::default()
        },
        0,
    )?;
    Ok(())
}

fn repeat_ns(dp: &mut Datapath, prog: &'static str, pkt: &[u8]) -> Result<u64> {
    let mut v = Vec::new();
    for _ in 0..ROUNDS {
        let r = dp.run_repeat(prog, pkt, REPEAT)?;
        anyhow::ensure!(r.action == TC_ACT_OK, "{prog} gave action {}", r.action);
        anyhow::ensure!(r.output == pkt, "{prog} changed an idempotent packet");
        v.push(r.duration_ns);
    }
    Ok(median(v))
}

fn measure(n: u32) -> Result<(Row, Memory)> {
    let caps = Capacities {
        service_entries: (n * (BACKENDS_PER_SERVICE + 2) + 4096)
            .max(Capacities::default().service_entries),
        backends: (n * BACKENDS_PER_SERVICE + 4096).max(Capacities::default().backends),
        service_ids: (n + 4096).max(Capacities::default().service_ids),
        ..Capacities::default()
    };
    let mut dp = Datapath::load("bench", caps)?;
    let flows = n.min(100_000);
    let t = std::time::Instant::now();
    seed(&mut dp, n, flows)?;
    let mirror = Ipv4Addr::new(10, 95, 255, 1);
    seed_mirror(&mut dp, mirror, n + 1)?;
    let seed_secs = t.elapsed().as_secs_f64();

    let floor = TrivialProgram::load(ProgType::SchedCls, "sluice_floor")
        .context("loading the empty program")?;
    let plain = tcp((CLIENT, 40000), (OTHER_POD, 80), TCP_ACK).bytes();
    let floor_repeat = median(
        (0..ROUNDS)
            .map(|_| floor.test_run(&plain, REPEAT))
            .collect::<std::io::Result<_>>()
            .context("test run of the empty program")?,
    );

    // SLUICE_BENCH_PHASE limits the run to one path (for profiling).
    let phase = std::env::var("SLUICE_BENCH_PHASE").unwrap_or_default();
    let wants = |p: &str| phase.is_empty() || phase == p;
    let mut non_service = floor_repeat;
    if wants("non-service") {
        non_service = repeat_ns(&mut dp, PROG_FROM_POD, &plain)?;
    }
    let fwd = tcp((CLIENT, 40001), (mirror, 80), TCP_ACK).bytes();
    dp.run(
        PROG_FROM_POD,
        &tcp((CLIENT, 40001), (mirror, 80), TCP_SYN).bytes(),
    )?;
    let mut ct_fwd = floor_repeat;
    if wants("ct-fwd") {
        ct_fwd = repeat_ns(&mut dp, PROG_FROM_POD, &fwd)?;
    }
    let reply = tcp((mirror, 80), (CLIENT, 40001), TCP_ACK).bytes();
    let mut ct_reply = floor_repeat;
    if wants("ct-reply") {
        ct_reply = repeat_ns(&mut dp, PROG_TO_POD, &reply)?;
    }

    // New connections, one run at a time, to a service in the middle.
    let target = vip(n / 2);
    let syn = tcp((CLIENT, 40002), (target, 80), TCP_SYN).bytes();
    let fwd_key = CtKey {
        saddr: nbo(CLIENT),
        daddr: nbo(target),
        sport: 40002u16.to_be(),
        dport: 80u16.to_be(),
        proto: proto::TCP,
        dir: CT_DIR_SERVICE,
        _pad: [0; 2],
    };
    // An established flow whose port changes (80 -> 8080): not idempotent,
    // so it is timed as single runs, like new connections.
    let moved = tcp((CLIENT, 40003), (target, 80), TCP_ACK).bytes();
    dp.run(
        PROG_FROM_POD,
        &tcp((CLIENT, 40003), (target, 80), TCP_SYN).bytes(),
    )?;
    let (mut new_conn, mut ct_hit_single, mut ct_hit_moved) = (0, 0, 0);
    if wants("new") {
        let mut singles = Vec::with_capacity(SINGLE_RUNS);
        let mut floor_singles = Vec::with_capacity(SINGLE_RUNS);
        let mut hit_singles = Vec::with_capacity(SINGLE_RUNS);
        let mut moved_singles = Vec::with_capacity(SINGLE_RUNS);
        for _ in 0..SINGLE_RUNS {
            let r = dp.run(PROG_FROM_POD, &syn)?;
            anyhow::ensure!(r.action == TC_ACT_OK);
            singles.push(r.duration_ns);
            let rev_key = CtKey {
                saddr: u32::from_ne_bytes([r.output[30], r.output[31], r.output[32], r.output[33]]),
                daddr: nbo(CLIENT),
                sport: u16::from_ne_bytes([r.output[36], r.output[37]]),
                dport: 40002u16.to_be(),
                proto: proto::TCP,
                dir: CT_DIR_REPLY,
                _pad: [0; 2],
            };
            dp.ct_remove(&fwd_key)?;
            dp.ct_remove(&rev_key)?;
            floor_singles.push(
                floor
                    .test_run(&syn, 1)
                    .context("test run of the empty program")?,
            );
            // Calibration: the established path timed the same way (one
            // run per call), to tell what single runs cost on their own.
            hit_singles.push(dp.run(PROG_FROM_POD, &fwd)?.duration_ns);
            moved_singles.push(dp.run(PROG_FROM_POD, &moved)?.duration_ns);
        }
        let floor_single = median(floor_singles) as i64;
        new_conn = median(singles) as i64 - floor_single;
        ct_hit_single = median(hit_singles) as i64 - floor_single;
        ct_hit_moved = median(moved_singles) as i64 - floor_single;
    }

    let row = Row {
        services: n,
        non_service: non_service as i64 - floor_repeat as i64,
        ct_hit_fwd: ct_fwd as i64 - floor_repeat as i64,
        ct_hit_reply: ct_reply as i64 - floor_repeat as i64,
        new_conn,
        ct_hit_single,
        ct_hit_moved,
        seed_secs,
    };
    let bpffs = dp.fs.path().to_path_buf();
    let per_entry = |map: &str, cap: u32| -> Result<f64> {
        Ok(map_bytes(&bpffs, map)? as f64 / f64::from(cap))
    };
    let ncpus = aya::util::nr_cpus().map_err(|(_, e)| e)? as f64;
    let svc_entry = per_entry(names::MAP_SERVICES, caps.service_entries)?;
    let mem = Memory {
        services: n,
        floor_repeat,
        service_entry: svc_entry,
        per_service: svc_entry * f64::from(BACKENDS_PER_SERVICE + 2)
            + per_entry(names::MAP_SVC_STATS, caps.service_ids)?,
        per_backend: per_entry(names::MAP_BACKENDS, caps.backends)?,
        per_ct_entry: per_entry(names::MAP_CT_TCP, caps.ct_tcp_entries)?,
        ncpus,
    };
    Ok((row, mem))
}

struct Memory {
    services: u32,
    floor_repeat: u64,
    service_entry: f64,
    per_service: f64,
    per_backend: f64,
    per_ct_entry: f64,
    ncpus: f64,
}

pub fn run() -> Result<()> {
    sluice_testkit::privileges::require_root();
    pin_to_cpu(1);
    let counts: Vec<u32> = std::env::var("SLUICE_BENCH_SERVICES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 1_000, 10_000, 100_000]);
    println!(
        "== datapath: ns per packet above the empty-program floor, measured by BPF_PROG_TEST_RUN"
    );
    println!(
        "   warm: one skb run {REPEAT} times, median of {ROUNDS} rounds (idempotent packets; the CT-hit flow keeps its port)"
    );
    println!(
        "   single: one run per call, median of {SINGLE_RUNS} (cold skb each time; used where a packet cannot repeat)"
    );
    println!(
        "{:>8} {:>9} | {:>11} {:>11} {:>12} | {:>12} {:>13} {:>13} | {:>6} {:>6}",
        "services",
        "backends",
        "non-service",
        "ct-hit fwd",
        "ct-hit reply",
        "ct-hit same",
        "ct-hit 80>8080",
        "new conn",
        "floor",
        "seed s"
    );
    println!(
        "{:>8} {:>9} | {:>11} {:>11} {:>12} | {:>12} {:>13} {:>13} | {:>6} {:>6}",
        "", "", "warm", "warm", "warm", "single", "single", "single", "warm", ""
    );
    let mut mems = Vec::new();
    for n in counts {
        let (r, m) = measure(n)?;
        println!(
            "{:>8} {:>9} | {:>8} ns {:>8} ns {:>9} ns | {:>9} ns {:>11} ns {:>10} ns | {:>3} ns {:>6.1}",
            r.services,
            r.services * BACKENDS_PER_SERVICE,
            r.non_service,
            r.ct_hit_fwd,
            r.ct_hit_reply,
            r.ct_hit_single,
            r.ct_hit_moved,
            r.new_conn,
            m.floor_repeat,
            r.seed_secs
        );
        mems.push(m);
    }
    if let Some(m) = mems.last() {
        println!();
        println!(
            "== map memory (kernel-accounted memlock / max_entries; hash maps are preallocated, {} CPUs)",
            m.ncpus
        );
        println!(
            "  service map entry:                 {:>7.0} B",
            m.service_entry
        );
        println!(
            "  per service (12 entries: address, frontend, 10 slots; + per-CPU counters): {:>7.0} B",
            m.per_service
        );
        println!(
            "  per backend:                       {:>7.0} B",
            m.per_backend
        );
        println!(
            "  per CT entry:                      {:>7.0} B  (a connection uses two)",
            m.per_ct_entry
        );
        let _ = m.services;
    }
    Ok(())
}
