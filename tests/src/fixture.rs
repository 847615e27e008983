//! Running the datapath's programs on packets with BPF_PROG_TEST_RUN against
//! maps seeded by the test: the kernel's verifier, helpers and maps, with no
//! interface in the way.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use aya::programs::{TestRun, TestRunOptions};
use proxy_common::{
    Backend, CtEntry, CtKey, ServiceKey, ServiceValue, ct, proto,
    service::{KIND_CLUSTER_IP, SCOPE_EXTERNAL, SVC_F_ADDR_ONLY},
};
use sluice::datapath::{Capacities, LoadedPrograms, Loader, PinnedMaps};
use sluice_testkit::bpffs::TempBpffs;

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

pub use proxy_common::codec::nbo;

/// A loaded datapath on a private bpffs, with its maps open.
pub struct Datapath {
    pub progs: LoadedPrograms,
    pub maps: PinnedMaps,
    // Declared last: unmounted after programs and maps are closed.
    pub fs: TempBpffs,
}

pub struct RunResult {
    pub action: u32,
    pub output: Vec<u8>,
    pub duration_ns: u64,
}

impl Datapath {
    pub fn load(tag: &str, capacities: Capacities) -> Result<Self> {
        sluice_testkit::privileges::require_root();
        let fs = TempBpffs::new(tag)?;
        let progs = Loader::new(fs.path(), capacities)
            .load()
            .context("loading the datapath")?;
        let maps = PinnedMaps::open(fs.path())?;
        Ok(Self { progs, maps, fs })
    }

    /// Runs `prog` once on `input`.
    pub fn run(&mut self, prog: &'static str, input: &[u8]) -> Result<RunResult> {
        self.run_repeat(prog, input, 1)
    }

    /// Runs `prog` `repeat` times on one skb built from `input` (the kernel
    /// reports the mean time per run).
    pub fn run_repeat(
        &mut self,
        prog: &'static str,
        input: &[u8],
        repeat: u32,
    ) -> Result<RunResult> {
        let p = self.progs.program(prog)?;
        let mut out = vec![0u8; input.len().max(128) + 256];
        let r = p
            .test_run(TestRunOptions {
                data_in: Some(input),
                data_out: Some(&mut out),
                repeat,
                ..Default::default()
            })
            .with_context(|| format!("BPF_PROG_TEST_RUN of {prog}"))?;
        out.truncate(r.data_size_out as usize);
        Ok(RunResult {
            action: r.return_value,
            output: out,
            duration_ns: r.duration.as_nanos() as u64,
        })
    }

    /// Sum over CPUs of the packet counter of a reason code.
    pub fn reason_count(&self, code: u32) -> u64 {
        self.maps
            .reasons
            .get(&code, 0)
            .map(|v| v.iter().map(|c| c.packets).sum())
            .unwrap_or(0)
    }

    /// Sum over CPUs of a service's counters: (packets, new connections, refused).
    pub fn service_count(&self, svc_id: u32) -> (u64, u64, u64) {
        self.maps
            .svc_stats
            .get(&svc_id, 0)
            .map(|v| {
                v.iter().fold((0, 0, 0), |a, c| {
                    (a.0 + c.packets, a.1 + c.new_conns, a.2 + c.refused)
                })
            })
            .unwrap_or((0, 0, 0))
    }

    /// Seeds a ClusterIP frontend with the given backends (ids chosen by the
    /// caller), as the daemon's writer would.
    pub fn seed_service(
        &mut self,
        vip: (Ipv4Addr, u16),
        proto: u8,
        svc_id: u32,
        backends: &[(u32, Ipv4Addr, u16)],
    ) -> Result<()> {
        let m = &mut self.maps;
        m.services.insert(
            ServiceKey::address_only(nbo(vip.0)),
            ServiceValue {
                flags: SVC_F_ADDR_ONLY,
                ..Default::default()
            },
            0,
        )?;
        let fe = ServiceKey::frontend(nbo(vip.0), vip.1.to_be(), proto, SCOPE_EXTERNAL);
        for (slot, (id, addr, port)) in backends.iter().enumerate() {
            m.backends.insert(
                id,
                Backend {
                    addr: nbo(*addr),
                    port: port.to_be(),
                    proto,
                    flags: 0,
                },
                0,
            )?;
            m.services.insert(
                fe.with_slot(slot as u16 + 1),
                ServiceValue {
                    backend_id: *id,
                    svc_id,
                    ..Default::default()
                },
                0,
            )?;
        }
        m.services.insert(
            fe,
            ServiceValue {
                svc_id,
                count: backends.len() as u16,
                kind: KIND_CLUSTER_IP,
                ..Default::default()
            },
            0,
        )?;
        Ok(())
    }

    pub fn set_config(&mut self, c: proxy_common::NodeConfig) -> Result<()> {
        self.maps.config.set(0, c, 0)?;
        Ok(())
    }

    /// Inserts into the CT map of the key's protocol.
    pub fn ct_insert(&mut self, key: CtKey, entry: CtEntry) -> Result<()> {
        self.maps.ct_for_mut(key.proto).insert(key, entry, 0)?;
        Ok(())
    }

    pub fn ct_get(&self, key: &CtKey) -> Option<CtEntry> {
        self.maps.ct_for(key.proto).get(key, 0).ok()
    }

    pub fn ct_remove(&mut self, key: &CtKey) -> Result<()> {
        self.maps.ct_for_mut(key.proto).remove(key)?;
        Ok(())
    }
}

/// The `i`th of a made-up set of established ClusterIP TCP flows (from
/// 10.200.0.0/14 to 10.201.0.0/24, port 80), last seen at CT time `seen`:
/// load for sweeps and CT tables, never one of a test host's flows.
pub fn made_up_tcp_flow(i: u32, seen: u32) -> (CtKey, CtEntry) {
    let key = CtKey {
        saddr: u32::from_ne_bytes([10, 200 + (i >> 24) as u8, (i >> 16) as u8, (i >> 8) as u8]),
        daddr: u32::from_ne_bytes([10, 201, 0, i as u8]),
        sport: 1000u16.to_be(),
        dport: 80u16.to_be(),
        proto: proto::TCP,
        dir: ct::CT_DIR_SERVICE,
        _pad: [0; 2],
    };
    let entry = CtEntry {
        flags: ct::CT_F_REWRITE_DST | ct::CT_F_REPLY_SEEN | ct::CT_F_ASSURED,
        new_daddr: key.daddr,
        new_dport: key.dport,
        last_seen: seen,
        created: seen,
        ..Default::default()
    };
    (key, entry)
}

/// The backends of frontend `vip:port`/TCP as the datapath has them, read
/// from the pinned maps; `None` when there is no such frontend. A slot or
/// backend that cannot be read is left out: that is what a packet would
/// find.
pub fn frontend_backends(maps: &PinnedMaps, vip: Ipv4Addr, port: u16) -> Option<Vec<Ipv4Addr>> {
    let mut key = frontend_key(vip, port);
    let master = maps.services.get(&key, 0).ok()?;
    let mut out = Vec::with_capacity(usize::from(master.count));
    for slot in 1..=master.count {
        key.slot = slot;
        let Ok(v) = maps.services.get(&key, 0) else {
            continue;
        };
        if let Ok(b) = maps.backends.get(&v.backend_id, 0) {
            out.push(b.ip());
        }
    }
    Some(out)
}

/// The frontend (slot 0) key of TCP `vip:port`.
fn frontend_key(vip: Ipv4Addr, port: u16) -> ServiceKey {
    ServiceKey {
        addr: nbo(vip),
        port: port.to_be(),
        slot: 0,
        proto: proto::TCP,
        scope: SCOPE_EXTERNAL,
        _pad: [0; 2],
    }
}

/// The service id of TCP frontend `vip:port`, the index of its counters.
pub fn frontend_id(maps: &PinnedMaps, vip: Ipv4Addr, port: u16) -> Option<u32> {
    maps.services
        .get(&frontend_key(vip, port), 0)
        .ok()
        .map(|v| v.svc_id)
}
