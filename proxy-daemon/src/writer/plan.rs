//! Turning a desired state into map operations, in an order that never
//! leaves the datapath inconsistent (pure; the executor applies the result).
//!
//! The maps are the source of truth for what is programmed: on start the
//! writer reads them back, so ids stay stable across restarts and only the
//! difference is written. Within one frontend, backend slots are written
//! before the master entry that counts them, and a shrinking master is
//! written before its surplus slots are deleted, so a packet never finds a
//! slot missing (Cilium's ordering). Backends are added before anything
//! refers to them and removed after nothing does.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use ipnetwork::Ipv4Network;

use proxy_common::{
    Backend, ServiceKey, ServiceValue,
    codec::nbo,
    service::{
        BE_F_LOCAL, BE_F_TERMINATING, SVC_F_ADDR_ONLY, SVC_F_AFFINITY, SVC_F_DROP_EMPTY,
        SVC_F_LOCAL, SVC_F_MAGLEV, SVC_F_NODE_ADDR, SVC_F_SNAT_REMOTE, SVC_F_SOURCE_RANGES,
    },
};

use super::{ids::IdAllocator, maglev};
use crate::model::{DesiredState, Frontend, FrontendKey, LbAlgorithm};

/// What the writer knows is programmed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapContents {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub backends: BTreeMap<u32, Backend>,
    /// loadBalancerSourceRanges by frontend id.
    pub source_ranges: BTreeSet<(u32, Ipv4Network)>,
    /// Frontend id -> fingerprint of its Maglev table (0: unknown, so the
    /// next plan rewrites it; tables are not read back after a restart).
    pub maglev: BTreeMap<u32, u64>,
}

/// One map write.
#[derive(Clone, PartialEq, Eq)]
pub enum Op {
    PutBackend(u32, Backend),
    PutService(ServiceKey, ServiceValue),
    DeleteService(ServiceKey),
    DeleteBackend(u32),
    PutSourceRange(u32, Ipv4Network),
    DeleteSourceRange(u32, Ipv4Network),
    /// A whole Maglev table, swapped in at once (with its fingerprint).
    PutMaglev(u32, Arc<[u32]>, u64),
    DeleteMaglev(u32),
}

// By hand: a failed write is logged with its operation, and a Maglev
// table is 16381 numbers.
impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::PutBackend(id, b) => f.debug_tuple("PutBackend").field(id).field(b).finish(),
            Op::PutService(k, v) => f.debug_tuple("PutService").field(k).field(v).finish(),
            Op::DeleteService(k) => f.debug_tuple("DeleteService").field(k).finish(),
            Op::DeleteBackend(id) => f.debug_tuple("DeleteBackend").field(id).finish(),
            Op::PutSourceRange(id, n) => {
                f.debug_tuple("PutSourceRange").field(id).field(n).finish()
            }
            Op::DeleteSourceRange(id, n) => f
                .debug_tuple("DeleteSourceRange")
                .field(id)
                .field(n)
                .finish(),
            Op::PutMaglev(id, table, print) => f
                .debug_struct("PutMaglev")
                .field("svc_id", id)
                .field("entries", &table.len())
                .field("fingerprint", &format_args!("{print:#x}"))
                .finish(),
            Op::DeleteMaglev(id) => f.debug_tuple("DeleteMaglev").field(id).finish(),
        }
    }
}

/// Choices the planner does not take from Kubernetes objects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanOptions {
    /// Maglev table size (a prime); 0 turns Maglev off everywhere.
    pub maglev_size: u32,
    /// Services that do not choose (annotation) use Maglev.
    pub maglev_by_default: bool,
}

/// Operations that must be applied together or not at all past a failure:
/// if one fails, the rest of its group is skipped (and groups depending on
/// a failed backend are skipped too), which keeps the invariants above.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub ops: Vec<Op>,
    /// Backend ids the group's slots point at.
    pub needs_backends: Vec<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub groups: Vec<Group>,
    /// The contents after a fully successful apply.
    pub target: MapContents,
    /// Backends no longer used, by id: their UDP flows are flushed from CT
    /// (kube-proxy clears conntrack for removed UDP endpoints).
    pub removed_backends: BTreeSet<u32>,
    /// Frontend ids assigned in this plan (their counters start at zero).
    pub new_service_ids: BTreeSet<u32>,
    /// The metadata of every programmed frontend, by id.
    pub frontends_by_id: BTreeMap<u32, Frontend>,
    /// Affinity entries to forget: (frontend id, backend id) pairs whose
    /// backend left the frontend, and frontends that are gone (all theirs).
    pub affinity_flush: BTreeSet<(u32, u32)>,
    pub affinity_flush_frontends: BTreeSet<u32>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

/// Backend identity: the same endpoint keeps one id across frontends.
type BackendIdentity = (u32, u16, u8);

fn identity(b: &Backend) -> BackendIdentity {
    (b.addr, b.port, b.proto)
}

/// Computes the operations that take `current` to the contents `desired`
/// asks for, reusing the ids already in `current`.
pub fn plan(
    current: &MapContents,
    desired: &DesiredState,
    svc_ids: &mut IdAllocator,
    backend_ids: &mut IdAllocator,
    options: PlanOptions,
) -> Plan {
    let mut plan = Plan::default();
    let mut target = MapContents::default();
    svc_ids.clear_used();
    backend_ids.clear_used();

    // Ids in use now: frontends by key, backends by identity.
    let mut current_svc: BTreeMap<FrontendKey, u32> = BTreeMap::new();
    for (k, v) in &current.services {
        if k.slot == 0
            && v.flags & SVC_F_ADDR_ONLY == 0
            && let Some(fk) = FrontendKey::from_service_key(k)
        {
            current_svc.insert(fk, v.svc_id);
            svc_ids.mark_used(v.svc_id);
        }
    }
    let mut current_be: BTreeMap<BackendIdentity, u32> = BTreeMap::new();
    for (id, b) in &current.backends {
        current_be.insert(identity(b), *id);
        backend_ids.mark_used(*id);
    }

    // Target backends: one id per identity; flags merged (local if any
    // frontend says so, terminating only if every use is terminating).
    let mut wanted: BTreeMap<BackendIdentity, Backend> = BTreeMap::new();
    for fe in desired.frontends.values() {
        for b in &fe.backends {
            let mut be = Backend {
                addr: nbo(b.addr),
                port: b.port.to_be(),
                proto: fe.key.protocol.number(),
                flags: 0,
            };
            if b.local {
                be.flags |= BE_F_LOCAL;
            }
            if b.terminating {
                be.flags |= BE_F_TERMINATING;
            }
            wanted
                .entry(identity(&be))
                .and_modify(|e| {
                    e.flags |= be.flags & BE_F_LOCAL;
                    if be.flags & BE_F_TERMINATING == 0 {
                        e.flags &= !BE_F_TERMINATING;
                    }
                })
                .or_insert(be);
        }
    }
    let mut be_id: BTreeMap<BackendIdentity, u32> = BTreeMap::new();
    for (ident, be) in &wanted {
        let id = match current_be.get(ident) {
            Some(id) => *id,
            None => match backend_ids.allocate() {
                Some(id) => id,
                None => {
                    // Out of ids: leave it out; frontends needing it are
                    // reported by the executor as not programmed.
                    continue;
                }
            },
        };
        be_id.insert(*ident, id);
        target.backends.insert(id, *be);
    }

    // Address-only entries: service addresses refuse unknown ports; the
    // node's own addresses pass them.
    for a in &desired.service_addrs {
        let v = ServiceValue {
            flags: SVC_F_ADDR_ONLY,
            ..Default::default()
        };
        target.services.insert(ServiceKey::address_only(nbo(*a)), v);
    }
    for a in &desired.node_addrs {
        let v = ServiceValue {
            flags: SVC_F_ADDR_ONLY | SVC_F_NODE_ADDR,
            ..Default::default()
        };
        target
            .services
            .entry(ServiceKey::address_only(nbo(*a)))
            .or_insert(v);
    }

    // Frontends: slots, extras (source ranges, Maglev table), master.
    struct FrontendPlan {
        slots: Vec<ServiceKey>,
        needs: Vec<u32>,
        svc_id: u32,
        /// The table's fingerprint, and the table itself when the maps do
        /// not hold it yet.
        maglev: Option<(Option<Arc<[u32]>>, u64)>,
    }
    let mut frontend_plans: BTreeMap<ServiceKey, FrontendPlan> = BTreeMap::new();
    // Populating a table is the costly part of planning (M x backends
    // steps): done only for tables that changed, once per distinct one.
    let mut tables: std::collections::HashMap<u64, Arc<[u32]>> = Default::default();
    for (fk, fe) in &desired.frontends {
        let svc_id = match current_svc.get(fk) {
            Some(id) => *id,
            None => match svc_ids.allocate() {
                Some(id) => {
                    plan.new_service_ids.insert(id);
                    id
                }
                None => continue,
            },
        };
        let mk = fk.service_key();
        let mut slot_keys = Vec::new();
        let mut needs = Vec::new();
        let mut members = Vec::new();
        let proto = fk.protocol.number();
        for b in &fe.backends {
            let ident = (nbo(b.addr), b.port.to_be(), proto);
            let Some(id) = be_id.get(&ident) else {
                continue;
            };
            let slot = slot_keys.len() as u16 + 1;
            let sk = mk.with_slot(slot);
            target.services.insert(
                sk,
                ServiceValue {
                    backend_id: *id,
                    svc_id,
                    ..Default::default()
                },
            );
            slot_keys.push(sk);
            needs.push(*id);
            members.push(maglev::Member {
                addr: b.addr,
                port: b.port,
                id: *id,
            });
            if slot == u16::MAX {
                break;
            }
        }
        let mut flags = 0;
        if fe.local_only {
            flags |= SVC_F_LOCAL;
        }
        if fe.affinity_timeout.is_some() {
            flags |= SVC_F_AFFINITY;
        }
        if fe.snat_remote {
            flags |= SVC_F_SNAT_REMOTE;
        }
        if fe.drop_when_empty {
            flags |= SVC_F_DROP_EMPTY;
        }
        if !fe.source_ranges.is_empty() {
            flags |= SVC_F_SOURCE_RANGES;
            for r in &fe.source_ranges {
                target.source_ranges.insert((svc_id, *r));
            }
        }
        let wants_maglev = fe
            .lb_algorithm
            .map_or(options.maglev_by_default, |a| a == LbAlgorithm::Maglev);
        // One backend needs no table: every flow goes to it.
        let maglev = (wants_maglev && options.maglev_size > 0 && members.len() > 1).then(|| {
            flags |= SVC_F_MAGLEV;
            let fp = maglev::fingerprint(&members, options.maglev_size);
            target.maglev.insert(svc_id, fp);
            let table = (current.maglev.get(&svc_id) != Some(&fp)).then(|| {
                tables
                    .entry(fp)
                    .or_insert_with(|| Arc::from(maglev::table(&members, options.maglev_size)))
                    .clone()
            });
            (table, fp)
        });
        target.services.insert(
            mk,
            ServiceValue {
                backend_id: 0,
                svc_id,
                count: slot_keys.len() as u16,
                flags,
                kind: fe.kind.wire(),
                affinity_timeout: fe.affinity_timeout.unwrap_or(0),
            },
        );
        frontend_plans.insert(
            mk,
            FrontendPlan {
                slots: slot_keys,
                needs,
                svc_id,
                maglev,
            },
        );
        plan.frontends_by_id.insert(svc_id, fe.clone());
    }

    // 1. New or changed backends.
    for (id, be) in &target.backends {
        if current.backends.get(id) != Some(be) {
            plan.groups.push(Group {
                ops: vec![Op::PutBackend(*id, *be)],
                needs_backends: vec![],
            });
        }
    }
    // 2. Per frontend: changed slots, new source ranges and a changed Maglev
    //    table, then the master that uses them; afterwards what it no
    //    longer uses.
    for (mk, fp) in &frontend_plans {
        let mut ops: Vec<Op> = fp
            .slots
            .iter()
            .filter(|k| current.services.get(k) != target.services.get(k))
            .map(|k| Op::PutService(*k, target.services[k]))
            .collect();
        let ranges = |m: &MapContents| -> BTreeSet<Ipv4Network> {
            m.source_ranges
                .range(
                    (
                        fp.svc_id,
                        Ipv4Network::new(std::net::Ipv4Addr::UNSPECIFIED, 0).expect("0.0.0.0/0"),
                    )..,
                )
                .take_while(|(id, _)| *id == fp.svc_id)
                .map(|(_, r)| *r)
                .collect()
        };
        let (before, after) = (ranges(current), ranges(&target));
        ops.extend(
            after
                .difference(&before)
                .map(|r| Op::PutSourceRange(fp.svc_id, *r)),
        );
        if let Some((Some(table), print)) = &fp.maglev
            && current.maglev.get(&fp.svc_id) != Some(print)
        {
            ops.push(Op::PutMaglev(fp.svc_id, table.clone(), *print));
        }
        if current.services.get(mk) != target.services.get(mk) {
            ops.push(Op::PutService(*mk, target.services[mk]));
        }
        ops.extend(
            before
                .difference(&after)
                .map(|r| Op::DeleteSourceRange(fp.svc_id, *r)),
        );
        if fp.maglev.is_none() && current.maglev.contains_key(&fp.svc_id) {
            ops.push(Op::DeleteMaglev(fp.svc_id));
        }
        if !ops.is_empty() {
            plan.groups.push(Group {
                ops,
                needs_backends: fp.needs.clone(),
            });
        }
    }
    // 3. New address-only entries, after the frontends: until its
    //    address entry exists a new address is not a service address and
    //    its packets pass as before, where the other way round a packet in
    //    between would be refused as an unknown port.
    for (k, v) in &target.services {
        if v.flags & SVC_F_ADDR_ONLY != 0 && current.services.get(k) != Some(v) {
            plan.groups.push(Group {
                ops: vec![Op::PutService(*k, *v)],
                needs_backends: vec![],
            });
        }
    }
    // 4. Deletions: masters of removed frontends before any slot, slots,
    //    then what the removed frontends used, then address-only entries
    //    nothing uses any more.
    let stale: Vec<&ServiceKey> = current
        .services
        .keys()
        .filter(|k| !target.services.contains_key(k))
        .collect();
    let (masters, rest): (Vec<&ServiceKey>, Vec<&ServiceKey>) = stale
        .into_iter()
        .partition(|k| k.slot == 0 && current.services[*k].flags & SVC_F_ADDR_ONLY == 0);
    let (slots, addrs): (Vec<&ServiceKey>, Vec<&ServiceKey>) =
        rest.into_iter().partition(|k| k.slot != 0);
    for k in masters.iter().copied().chain(slots) {
        plan.groups.push(Group {
            ops: vec![Op::DeleteService(*k)],
            needs_backends: vec![],
        });
    }
    let live: BTreeSet<u32> = frontend_plans.values().map(|f| f.svc_id).collect();
    for (id, r) in &current.source_ranges {
        if !live.contains(id) {
            plan.groups.push(Group {
                ops: vec![Op::DeleteSourceRange(*id, *r)],
                needs_backends: vec![],
            });
        }
    }
    for id in current.maglev.keys() {
        if !live.contains(id) {
            plan.groups.push(Group {
                ops: vec![Op::DeleteMaglev(*id)],
                needs_backends: vec![],
            });
        }
    }
    for k in addrs {
        plan.groups.push(Group {
            ops: vec![Op::DeleteService(*k)],
            needs_backends: vec![],
        });
    }
    // 5. Backends nothing refers to any more.
    for id in current.backends.keys() {
        if !target.backends.contains_key(id) {
            plan.groups.push(Group {
                ops: vec![Op::DeleteBackend(*id)],
                needs_backends: vec![],
            });
            plan.removed_backends.insert(*id);
        }
    }
    // Affinity to backends a frontend no longer has is forgotten, so the
    // client's next connection makes a fresh choice.
    for (k, v) in &current.services {
        if k.slot != 0 || v.flags & SVC_F_AFFINITY == 0 {
            continue;
        }
        if !target.services.contains_key(k) {
            plan.affinity_flush_frontends.insert(v.svc_id);
            continue;
        }
        let ids = |m: &MapContents| -> BTreeSet<u32> {
            (1..=m.services.get(k).map_or(0, |v| v.count))
                .filter_map(|s| m.services.get(&k.with_slot(s)))
                .map(|s| s.backend_id)
                .collect()
        };
        for gone in ids(current).difference(&ids(&target)) {
            plan.affinity_flush.insert((v.svc_id, *gone));
        }
    }
    plan.target = target;
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    use proxy_common::service::KIND_NODE_PORT;

    use crate::model::{BackendAddr, ServiceRef};
    use crate::model::{FrontendKind, Protocol, Scope};

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn fe(vip: &str, port: u16, backends: &[(&str, u16)]) -> Frontend {
        Frontend {
            key: FrontendKey {
                addr: ip(vip),
                port,
                protocol: Protocol::Tcp,
                scope: Scope::External,
            },
            kind: FrontendKind::ClusterIp,
            service: ServiceRef {
                namespace: "default".into(),
                name: "web".into(),
                port_name: String::new(),
            },
            backends: backends
                .iter()
                .map(|(a, p)| BackendAddr {
                    addr: ip(a),
                    port: *p,
                    local: false,
                    terminating: false,
                })
                .collect(),
            local_only: false,
            drop_when_empty: false,
            affinity_timeout: None,
            snat_remote: false,
            source_ranges: vec![],
            health_check_node_port: None,
            lb_algorithm: None,
        }
    }

    fn desired(fes: Vec<Frontend>) -> DesiredState {
        let mut d = DesiredState::default();
        for f in fes {
            d.service_addrs.insert(f.key.addr);
            d.frontends.insert(f.key, f);
        }
        d
    }

    fn ids() -> (IdAllocator, IdAllocator) {
        (IdAllocator::new(1000), IdAllocator::new(1000))
    }

    /// Applies a plan's operations to a copy of `current`.
    fn apply(current: &MapContents, plan: &Plan) -> MapContents {
        let mut m = current.clone();
        for g in &plan.groups {
            for op in &g.ops {
                match op {
                    Op::PutBackend(id, b) => {
                        m.backends.insert(*id, *b);
                    }
                    Op::PutService(k, v) => {
                        m.services.insert(*k, *v);
                    }
                    Op::DeleteService(k) => {
                        m.services.remove(k);
                    }
                    Op::DeleteBackend(id) => {
                        m.backends.remove(id);
                    }
                    Op::PutSourceRange(id, r) => {
                        m.source_ranges.insert((*id, *r));
                    }
                    Op::DeleteSourceRange(id, r) => {
                        m.source_ranges.remove(&(*id, *r));
                    }
                    Op::PutMaglev(id, _, print) => {
                        m.maglev.insert(*id, *print);
                    }
                    Op::DeleteMaglev(id) => {
                        m.maglev.remove(id);
                    }
                }
            }
        }
        m
    }

    /// Every state the datapath can observe between two operations is
    /// consistent: each master's slots exist and point at existing backends.
    fn assert_consistent_throughout(current: &MapContents, plan: &Plan) {
        let mut m = current.clone();
        let check = |m: &MapContents, step: &str| {
            for (k, v) in &m.services {
                if k.slot == 0 && v.flags & SVC_F_MAGLEV != 0 {
                    assert!(
                        m.maglev.contains_key(&v.svc_id),
                        "{step}: Maglev table missing"
                    );
                }
                if k.slot == 0 && v.flags & SVC_F_SOURCE_RANGES != 0 {
                    assert!(
                        m.source_ranges.iter().any(|(id, _)| *id == v.svc_id),
                        "{step}: source ranges missing"
                    );
                }
                if k.slot == 0 && v.flags & SVC_F_ADDR_ONLY == 0 {
                    for s in 1..=v.count {
                        let slot = m
                            .services
                            .get(&k.with_slot(s))
                            .unwrap_or_else(|| panic!("{step}: slot {s} of {k:?} missing"));
                        assert!(
                            m.backends.contains_key(&slot.backend_id),
                            "{step}: backend {} missing",
                            slot.backend_id
                        );
                    }
                }
            }
        };
        check(&m, "before");
        for (i, g) in plan.groups.iter().enumerate() {
            for op in &g.ops {
                m = apply(
                    &m,
                    &Plan {
                        groups: vec![Group {
                            ops: vec![op.clone()],
                            needs_backends: vec![],
                        }],
                        ..Default::default()
                    },
                );
                check(&m, &format!("after group {i} op {op:?}"));
            }
        }
    }

    #[test]
    fn first_plan_programs_everything_consistently() {
        let (mut s, mut b) = ids();
        let d = desired(vec![
            fe("10.96.0.1", 80, &[("10.0.0.1", 8080), ("10.0.0.2", 8080)]),
            fe("10.96.0.2", 53, &[]),
        ]);
        let p = plan(
            &MapContents::default(),
            &d,
            &mut s,
            &mut b,
            PlanOptions::default(),
        );
        assert_consistent_throughout(&MapContents::default(), &p);
        let after = apply(&MapContents::default(), &p);
        assert_eq!(after, p.target);
        // 2 backends; 2 address-only + 2 masters + 2 slots.
        assert_eq!(after.backends.len(), 2);
        assert_eq!(after.services.len(), 6);
        assert_eq!(p.new_service_ids.len(), 2);
    }

    #[test]
    fn replanning_the_same_state_is_a_no_op_and_keeps_ids() {
        let (mut s, mut b) = ids();
        let d = desired(vec![fe("10.96.0.1", 80, &[("10.0.0.1", 8080)])]);
        let first = plan(
            &MapContents::default(),
            &d,
            &mut s,
            &mut b,
            PlanOptions::default(),
        );
        let programmed = apply(&MapContents::default(), &first);
        // A restarted daemon has fresh allocators and reads the maps back.
        let (mut s2, mut b2) = ids();
        let again = plan(&programmed, &d, &mut s2, &mut b2, PlanOptions::default());
        assert!(again.is_empty(), "{:?}", again.groups);
        assert_eq!(again.target, programmed);
        assert!(again.new_service_ids.is_empty());
    }

    #[test]
    fn shrinking_and_growing_stay_consistent_at_every_step() {
        let (mut s, mut b) = ids();
        let three = desired(vec![fe(
            "10.96.0.1",
            80,
            &[("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 80)],
        )]);
        let p1 = plan(
            &MapContents::default(),
            &three,
            &mut s,
            &mut b,
            PlanOptions::default(),
        );
        let m1 = apply(&MapContents::default(), &p1);
        let one = desired(vec![fe("10.96.0.1", 80, &[("10.0.0.3", 80)])]);
        let p2 = plan(&m1, &one, &mut s, &mut b, PlanOptions::default());
        assert_consistent_throughout(&m1, &p2);
        assert_eq!(p2.removed_backends.len(), 2);
        let m2 = apply(&m1, &p2);
        let p3 = plan(&m2, &three, &mut s, &mut b, PlanOptions::default());
        assert_consistent_throughout(&m2, &p3);
        // The surviving backend kept its id.
        let id3 = |m: &MapContents| {
            m.backends
                .iter()
                .find(|(_, be)| be.addr == nbo(ip("10.0.0.3")))
                .map(|(id, _)| *id)
                .unwrap()
        };
        assert_eq!(id3(&m1), id3(&m2));
        assert_eq!(id3(&m2), id3(&apply(&m2, &p3)));
    }

    #[test]
    fn removing_a_frontend_deletes_master_before_slots_and_address_last() {
        let (mut s, mut b) = ids();
        let d = desired(vec![fe("10.96.0.1", 80, &[("10.0.0.1", 80)])]);
        let p = plan(
            &MapContents::default(),
            &d,
            &mut s,
            &mut b,
            PlanOptions::default(),
        );
        let m = apply(&MapContents::default(), &p);
        let gone = plan(
            &m,
            &DesiredState::default(),
            &mut s,
            &mut b,
            PlanOptions::default(),
        );
        assert_consistent_throughout(&m, &gone);
        let ops: Vec<Op> = gone.groups.iter().flat_map(|g| g.ops.clone()).collect();
        let pos = |pred: &dyn Fn(&Op) -> bool| ops.iter().position(pred).unwrap();
        let master = pos(&|o| matches!(o, Op::DeleteService(k) if k.slot == 0 && k.port != 0));
        let slot = pos(&|o| matches!(o, Op::DeleteService(k) if k.slot == 1));
        let addr = pos(&|o| matches!(o, Op::DeleteService(k) if k.port == 0));
        let backend = pos(&|o| matches!(o, Op::DeleteBackend(_)));
        assert!(master < slot && slot < addr && addr < backend, "{ops:?}");
        assert!(apply(&m, &gone).services.is_empty());
    }

    #[test]
    fn shared_backends_get_one_id_and_flags_reflect_every_use() {
        let (mut s, mut b) = ids();
        let mut a = fe("10.96.0.1", 80, &[("10.0.0.1", 80)]);
        a.backends[0].local = true;
        let mut c = fe("10.96.0.2", 80, &[("10.0.0.1", 80)]);
        c.backends[0].terminating = true;
        let p = plan(
            &MapContents::default(),
            &desired(vec![a, c]),
            &mut s,
            &mut b,
            PlanOptions::default(),
        );
        assert_eq!(p.target.backends.len(), 1);
        let be = p.target.backends.values().next().unwrap();
        assert_eq!(be.flags, BE_F_LOCAL, "terminating only if every use is");
    }

    #[test]
    fn flags_and_kind_reach_the_master_entry() {
        let (mut s, mut b) = ids();
        let mut f = fe("10.96.0.1", 80, &[("10.0.0.1", 80)]);
        f.kind = FrontendKind::NodePort;
        f.local_only = true;
        f.affinity_timeout = Some(300);
        f.snat_remote = true;
        let key = f.key.service_key();
        let p = plan(
            &MapContents::default(),
            &desired(vec![f]),
            &mut s,
            &mut b,
            PlanOptions::default(),
        );
        let v = p.target.services[&key];
        assert_eq!(v.kind, KIND_NODE_PORT);
        assert_eq!(v.flags, SVC_F_LOCAL | SVC_F_AFFINITY | SVC_F_SNAT_REMOTE);
        assert_eq!(v.affinity_timeout, 300);
        assert_eq!(FrontendKey::from_service_key(&key).unwrap().port, 80);
    }

    #[test]
    fn exhausted_ids_leave_frontends_out_instead_of_corrupting() {
        let mut s = IdAllocator::new(2); // ids 1 only
        let mut b = IdAllocator::new(1000);
        let d = desired(vec![
            fe("10.96.0.1", 80, &[("10.0.0.1", 80)]),
            fe("10.96.0.2", 80, &[("10.0.0.1", 80)]),
        ]);
        let p = plan(
            &MapContents::default(),
            &d,
            &mut s,
            &mut b,
            PlanOptions::default(),
        );
        let masters = p
            .target
            .services
            .iter()
            .filter(|(k, v)| k.slot == 0 && v.flags & SVC_F_ADDR_ONLY == 0)
            .count();
        assert_eq!(masters, 1);
        assert_consistent_throughout(&MapContents::default(), &p);
    }
}

#[cfg(test)]
mod extra_tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::model::{BackendAddr, FrontendKind, Protocol, Scope, ServiceRef};

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn fe(vip: &str, backends: &[&str]) -> Frontend {
        Frontend {
            key: FrontendKey {
                addr: ip(vip),
                port: 80,
                protocol: Protocol::Tcp,
                scope: Scope::External,
            },
            kind: FrontendKind::LoadBalancer,
            service: ServiceRef {
                namespace: "default".into(),
                name: "lb".into(),
                port_name: String::new(),
            },
            backends: backends
                .iter()
                .map(|a| BackendAddr {
                    addr: ip(a),
                    port: 8080,
                    local: false,
                    terminating: false,
                })
                .collect(),
            local_only: false,
            drop_when_empty: false,
            affinity_timeout: None,
            snat_remote: true,
            source_ranges: vec![],
            health_check_node_port: None,
            lb_algorithm: None,
        }
    }

    fn desired(fes: Vec<Frontend>, node: &[&str]) -> DesiredState {
        let mut d = DesiredState::default();
        for f in fes {
            d.service_addrs.insert(f.key.addr);
            d.frontends.insert(f.key, f);
        }
        d.node_addrs = node.iter().map(|a| ip(a)).collect();
        d
    }

    fn ops(p: &Plan) -> Vec<Op> {
        p.groups.iter().flat_map(|g| g.ops.clone()).collect()
    }

    const MAGLEV: PlanOptions = PlanOptions {
        maglev_size: 251,
        maglev_by_default: true,
    };

    #[test]
    fn node_addresses_get_entries_that_pass_unknown_ports() {
        let (mut s, mut b) = (IdAllocator::new(100), IdAllocator::new(100));
        let p = plan(
            &MapContents::default(),
            &desired(vec![], &["10.77.0.10"]),
            &mut s,
            &mut b,
            PlanOptions::default(),
        );
        let v = p.target.services[&ServiceKey::address_only(nbo(ip("10.77.0.10")))];
        assert_eq!(v.flags, SVC_F_ADDR_ONLY | SVC_F_NODE_ADDR);
    }

    #[test]
    fn the_service_annotation_overrides_the_node_default_algorithm() {
        let (mut s, mut b) = (IdAllocator::new(100), IdAllocator::new(100));
        let with = |algo| {
            let mut f = fe("10.200.0.1", &["10.1.0.1", "10.1.0.2"]);
            f.lb_algorithm = algo;
            desired(vec![f], &[])
        };
        let random_node = PlanOptions {
            maglev_by_default: false,
            ..MAGLEV
        };
        let uses_maglev = |p: &Plan| {
            ops(p)
                .iter()
                .any(|op| matches!(op, Op::PutService(k, v) if k.slot == 0 && v.flags & SVC_F_MAGLEV != 0))
        };
        let empty = MapContents::default();
        for (algo, options, want) in [
            (None, MAGLEV, true),
            (None, random_node, false),
            (Some(LbAlgorithm::Maglev), random_node, true),
            (Some(LbAlgorithm::Random), MAGLEV, false),
            // Maglev switched off on the node wins over the annotation.
            (
                Some(LbAlgorithm::Maglev),
                PlanOptions {
                    maglev_size: 0,
                    maglev_by_default: true,
                },
                false,
            ),
        ] {
            let p = plan(&empty, &with(algo), &mut s, &mut b, options);
            assert_eq!(uses_maglev(&p), want, "{algo:?} {options:?}");
        }
    }

    #[test]
    fn a_maglev_table_is_written_before_its_master_and_only_when_it_changed() {
        let (mut s, mut b) = (IdAllocator::new(100), IdAllocator::new(100));
        let d = desired(vec![fe("10.200.0.1", &["10.1.0.1", "10.1.0.2"])], &[]);
        let p = plan(&MapContents::default(), &d, &mut s, &mut b, MAGLEV);
        let o = ops(&p);
        let table = o
            .iter()
            .position(|op| matches!(op, Op::PutMaglev(..)))
            .unwrap();
        let master = o
            .iter()
            .position(|op| matches!(op, Op::PutService(k, v) if k.slot == 0 && v.flags & SVC_F_MAGLEV != 0))
            .unwrap();
        assert!(table < master, "{o:?}");
        if let Op::PutMaglev(_, t, _) = &o[table] {
            assert_eq!(t.len(), 251);
        }
        // Same backends again: no table write. A restart (fingerprint
        // unknown) rewrites it once.
        let mut programmed = p.target.clone();
        let again = plan(&programmed, &d, &mut s, &mut b, MAGLEV);
        assert!(!ops(&again).iter().any(|op| matches!(op, Op::PutMaglev(..))));
        for v in programmed.maglev.values_mut() {
            *v = 0;
        }
        let restarted = plan(&programmed, &d, &mut s, &mut b, MAGLEV);
        assert_eq!(
            ops(&restarted)
                .iter()
                .filter(|op| matches!(op, Op::PutMaglev(..)))
                .count(),
            1
        );
        // Down to one backend: the flag goes first, then the table.
        let one = desired(vec![fe("10.200.0.1", &["10.1.0.1"])], &[]);
        let shrink = plan(&p.target, &one, &mut s, &mut b, MAGLEV);
        let o = ops(&shrink);
        let master = o
            .iter()
            .position(|op| matches!(op, Op::PutService(k, v) if k.slot == 0 && v.flags & SVC_F_MAGLEV == 0))
            .unwrap();
        let del = o
            .iter()
            .position(|op| matches!(op, Op::DeleteMaglev(_)))
            .unwrap();
        assert!(master < del, "{o:?}");
    }

    #[test]
    fn a_new_address_is_announced_after_its_frontends() {
        let (mut s, mut b) = (IdAllocator::new(100), IdAllocator::new(100));
        let mut second = fe("10.200.0.1", &["10.1.0.2"]);
        second.key.port = 81;
        let d = desired(vec![fe("10.200.0.1", &["10.1.0.1"]), second], &[]);
        let p = plan(&MapContents::default(), &d, &mut s, &mut b, MAGLEV);
        let o = ops(&p);
        let addr = o
            .iter()
            .position(|op| matches!(op, Op::PutService(_, v) if v.flags & SVC_F_ADDR_ONLY != 0))
            .unwrap();
        let masters: Vec<usize> = o
            .iter()
            .enumerate()
            .filter(|(_, op)| matches!(op, Op::PutService(k, v) if k.slot == 0 && v.flags & SVC_F_ADDR_ONLY == 0))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(masters.len(), 2, "{o:?}");
        assert!(masters.iter().all(|m| *m < addr), "{o:?}");
    }

    #[test]
    fn source_ranges_exist_before_the_flag_and_go_after_it() {
        let (mut s, mut b) = (IdAllocator::new(100), IdAllocator::new(100));
        let mut f = fe("10.200.0.1", &["10.1.0.1"]);
        f.source_ranges = vec!["10.77.0.0/24".parse().unwrap()];
        let p = plan(
            &MapContents::default(),
            &desired(vec![f.clone()], &[]),
            &mut s,
            &mut b,
            PlanOptions::default(),
        );
        let o = ops(&p);
        let range = o
            .iter()
            .position(|op| matches!(op, Op::PutSourceRange(..)))
            .unwrap();
        let master = o
            .iter()
            .position(|op| matches!(op, Op::PutService(k, _) if k.slot == 0 && k.port != 0))
            .unwrap();
        assert!(range < master);
        f.source_ranges = vec!["10.88.0.0/16".parse().unwrap()];
        let p2 = plan(
            &p.target,
            &desired(vec![f], &[]),
            &mut s,
            &mut b,
            PlanOptions::default(),
        );
        let o = ops(&p2);
        let put = o
            .iter()
            .position(|op| matches!(op, Op::PutSourceRange(..)))
            .unwrap();
        let del = o
            .iter()
            .position(|op| matches!(op, Op::DeleteSourceRange(..)))
            .unwrap();
        assert!(put < del, "{o:?}");
    }

    #[test]
    fn affinity_to_departed_backends_is_flushed() {
        let (mut s, mut b) = (IdAllocator::new(100), IdAllocator::new(100));
        let mut f = fe("10.200.0.1", &["10.1.0.1", "10.1.0.2"]);
        f.affinity_timeout = Some(60);
        let p = plan(
            &MapContents::default(),
            &desired(vec![f.clone()], &[]),
            &mut s,
            &mut b,
            PlanOptions::default(),
        );
        let gone_id = p
            .target
            .backends
            .iter()
            .find(|(_, be)| be.addr == nbo(ip("10.1.0.2")))
            .map(|(id, _)| *id)
            .unwrap();
        f.backends.pop();
        let p2 = plan(
            &p.target,
            &desired(vec![f], &[]),
            &mut s,
            &mut b,
            PlanOptions::default(),
        );
        let svc = *p.frontends_by_id.keys().next().unwrap();
        assert_eq!(p2.affinity_flush, [(svc, gone_id)].into());
        let p3 = plan(
            &p2.target,
            &DesiredState::default(),
            &mut s,
            &mut b,
            PlanOptions::default(),
        );
        assert_eq!(p3.affinity_flush_frontends, [svc].into());
    }
}
