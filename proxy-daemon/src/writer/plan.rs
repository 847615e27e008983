//! Turning a desired state into map operations, in an order that never
//! leaves the datapath inconsistent (pure; the executor applies the result).
//!
//! Planning is incremental: the [`Planner`] remembers what it planned for
//! every frontend and how often each backend is used, so a change plans
//! only the frontends it touched (kube-proxy's partial sync). A full plan
//! (every frontend touched) is the same code with every key touched, and
//! on an unchanged state it emits nothing.
//!
//! The maps are the source of truth for what is programmed: on start the
//! writer reads them back, so ids stay stable across restarts and only the
//! difference is written. Within one frontend, backend slots are written
//! before the master entry that counts them, and a shrinking master is
//! written before its surplus slots are deleted, so a packet never finds a
//! slot missing (Cilium's ordering). Backends are added before anything
//! refers to them and removed after nothing does.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
    sync::Arc,
};

use ipnetwork::Ipv4Network;

use proxy_common::{
    Backend, ServiceKey, ServiceValue,
    codec::nbo,
    proto,
    service::{
        BE_F_LOCAL, BE_F_TERMINATING, SVC_F_ADDR_ONLY, SVC_F_AFFINITY, SVC_F_DROP_EMPTY,
        SVC_F_LOCAL, SVC_F_MAGLEV, SVC_F_NODE_ADDR, SVC_F_SNAT_REMOTE, SVC_F_SOURCE_RANGES,
    },
};

use super::{ids::IdAllocator, maglev};
use crate::model::{
    BackendAddr, DesiredState, Frontend, FrontendKey, FrontendKind, LbAlgorithm, Protocol,
};

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
    /// The frontend the group programs, if any: when the group fails, that
    /// frontend is planned again with the next change.
    pub frontend: Option<FrontendKey>,
}

impl Group {
    pub(super) fn single(op: Op) -> Self {
        Self {
            ops: vec![op],
            needs_backends: Vec::new(),
            frontend: None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub groups: Vec<Group>,
    /// Backends no longer used, by id.
    pub removed_backends: BTreeSet<u32>,
    /// The UDP ones among them: their flows are flushed from CT (kube-proxy
    /// clears conntrack for removed UDP endpoints). Kept apart because
    /// finding flows walks the whole CT map, which a TCP endpoint change
    /// must not pay for.
    pub removed_udp_backends: BTreeSet<u32>,
    /// Frontend ids assigned in this plan (their counters start at zero).
    pub new_service_ids: BTreeSet<u32>,
    /// The frontends this plan touched, with their id (`None`: removed, or
    /// no id left for it).
    pub touched: Vec<(FrontendKey, Option<u32>)>,
    /// Affinity entries to forget: (frontend id, backend id) pairs whose
    /// backend left the frontend, and frontends that are gone (all theirs).
    pub affinity_flush: BTreeSet<(u32, u32)>,
    pub affinity_flush_frontends: BTreeSet<u32>,
    /// Frontends left out, or programmed without some of their backends,
    /// because the ids ran out (`--max-service-ids`, `--max-backends`):
    /// planned again with every change until they fit.
    pub starved: BTreeSet<FrontendKey>,
    /// How many frontends got no id, and how many backends of the planned
    /// frontends got none.
    pub frontends_without_id: usize,
    pub backends_without_id: usize,
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

fn backend_identity(b: &BackendAddr, protocol: Protocol) -> BackendIdentity {
    (nbo(b.addr), b.port.to_be(), protocol.number())
}

/// How the planned frontends use one backend. Its flags follow from the
/// uses (local if any use says so, terminating only if every use is), and
/// it lives as long as one frontend uses it: a backend shared by two
/// Services survives the removal of one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Uses {
    frontends: u32,
    local: u32,
    serving: u32,
}

impl Uses {
    fn backend(&self, ident: BackendIdentity) -> Backend {
        let mut flags = 0;
        if self.local > 0 {
            flags |= BE_F_LOCAL;
        }
        if self.serving == 0 {
            flags |= BE_F_TERMINATING;
        }
        Backend {
            addr: ident.0,
            port: ident.1,
            proto: ident.2,
            flags,
        }
    }
}

/// Which frontends a plan covers.
#[derive(Clone, Copy, Debug)]
pub enum Touch<'a> {
    /// Every frontend, desired or programmed, and every entry the maps
    /// hold: the first plan after a start, and the periodic resync.
    All,
    /// Only these frontends (added, changed or removed), and these
    /// addresses (that became or stopped being service addresses).
    Frontends {
        keys: &'a BTreeSet<FrontendKey>,
        addresses: &'a BTreeSet<Ipv4Addr>,
    },
}

/// Plans map operations, remembering between plans what it planned, so
/// that ids stay stable and a change costs what it touches.
#[derive(Debug)]
pub struct Planner {
    options: PlanOptions,
    svc_ids: IdAllocator,
    backend_ids: IdAllocator,
    /// Ids of the frontends the maps hold or this planner planned.
    frontend_ids: BTreeMap<FrontendKey, u32>,
    /// Ids of the backends the maps hold or this planner planned.
    backend_index: BTreeMap<BackendIdentity, u32>,
    /// The backends last planned for each frontend (all the use counts
    /// need).
    planned: BTreeMap<FrontendKey, Vec<BackendAddr>>,
    uses: BTreeMap<BackendIdentity, Uses>,
}

/// What one plan collects on the way, phase by phase.
#[derive(Default)]
struct Phases {
    backends: BTreeMap<u32, Backend>,
    frontends: Vec<Group>,
    new_addrs: Vec<Group>,
    removed_masters: Vec<Group>,
    removed_parts: Vec<Group>,
    removed_addrs: Vec<Group>,
    /// With the protocol of each.
    removed_backends: Vec<(u32, u8)>,
}

impl Planner {
    /// A planner for maps holding `current` (read back after a start): ids
    /// of what they hold are kept.
    pub fn new(
        current: &MapContents,
        mut svc_ids: IdAllocator,
        mut backend_ids: IdAllocator,
        options: PlanOptions,
    ) -> Self {
        svc_ids.clear_used();
        backend_ids.clear_used();
        let mut frontend_ids = BTreeMap::new();
        for (k, v) in &current.services {
            if k.slot != 0 || v.flags & SVC_F_ADDR_ONLY != 0 {
                continue;
            }
            if let Some(fk) = FrontendKey::from_service_key(k) {
                frontend_ids.insert(fk, v.svc_id);
                svc_ids.mark_used(v.svc_id);
            }
        }
        let mut backend_index = BTreeMap::new();
        for (id, b) in &current.backends {
            backend_index.entry(identity(b)).or_insert(*id);
            backend_ids.mark_used(*id);
        }
        Self {
            options,
            svc_ids,
            backend_ids,
            frontend_ids,
            backend_index,
            planned: BTreeMap::new(),
            uses: BTreeMap::new(),
        }
    }

    /// The id allocators back (for a planner rebuilt from the maps).
    pub fn into_allocators(self) -> (IdAllocator, IdAllocator) {
        (self.svc_ids, self.backend_ids)
    }

    /// The operations that take `current` to what `desired` asks for, for
    /// the frontends `touch` names.
    pub fn plan(
        &mut self,
        current: &MapContents,
        desired: &DesiredState,
        touch: Touch<'_>,
    ) -> Plan {
        let all = matches!(touch, Touch::All);
        let keys: BTreeSet<FrontendKey> = match touch {
            Touch::All => desired
                .frontends
                .keys()
                .chain(self.planned.keys())
                .chain(self.frontend_ids.keys())
                .copied()
                .collect(),
            Touch::Frontends { keys, .. } => keys.clone(),
        };

        let mut plan = Plan::default();
        let mut phases = Phases::default();
        let mut touched_backends = self.follow_uses(&keys, desired);
        if all {
            touched_backends.extend(self.backend_index.keys().copied());
        }
        self.plan_backends(current, &touched_backends, all, &mut phases);
        self.plan_frontends(current, desired, &keys, &mut plan, &mut phases);
        match touch {
            Touch::All => self.plan_addresses(current, desired, &mut phases),
            Touch::Frontends { addresses, .. } => {
                self.plan_some_addresses(current, desired, addresses, &mut phases)
            }
        }
        if all {
            self.plan_strays(current, desired, &mut phases);
        }
        plan.groups.extend(
            phases
                .backends
                .into_iter()
                .map(|(id, be)| Group::single(Op::PutBackend(id, be))),
        );
        plan.groups.extend(phases.frontends);
        // New address-only entries come after the frontends: until its
        // address entry exists a new address is not a service address and
        // its packets pass as before, where the other way round a packet
        // in between would be refused as an unknown port.
        plan.groups.extend(phases.new_addrs);
        // Masters of removed frontends before any of their slots, then
        // what they used, address-only entries nothing uses any more, and
        // last the backends nothing refers to.
        plan.groups.extend(phases.removed_masters);
        plan.groups.extend(phases.removed_parts);
        plan.groups.extend(phases.removed_addrs);
        for (id, protocol) in phases.removed_backends {
            plan.groups.push(Group::single(Op::DeleteBackend(id)));
            plan.removed_backends.insert(id);
            if protocol == proto::UDP {
                plan.removed_udp_backends.insert(id);
            }
        }
        plan
    }

    /// Moves the use counts of the touched frontends from what was planned
    /// for them to what is desired; returns the backends whose uses changed.
    fn follow_uses(
        &mut self,
        keys: &BTreeSet<FrontendKey>,
        desired: &DesiredState,
    ) -> BTreeSet<BackendIdentity> {
        let mut touched = BTreeSet::new();
        for k in keys {
            let new = desired.frontends.get(k).map(|f| &f.backends);
            if self.planned.get(k) == new {
                continue;
            }
            if let Some(old) = self.planned.remove(k) {
                self.count(k.protocol, &old, false, &mut touched);
            }
            if let Some(new) = new {
                self.count(k.protocol, new, true, &mut touched);
                self.planned.insert(*k, new.clone());
            }
        }
        touched
    }

    fn count(
        &mut self,
        protocol: Protocol,
        backends: &[BackendAddr],
        add: bool,
        touched: &mut BTreeSet<BackendIdentity>,
    ) {
        for b in backends {
            let ident = backend_identity(b, protocol);
            touched.insert(ident);
            let uses = self.uses.entry(ident).or_default();
            let step = |n: &mut u32, counts: bool| {
                if counts {
                    *n = if add { *n + 1 } else { n.saturating_sub(1) };
                }
            };
            step(&mut uses.frontends, true);
            step(&mut uses.local, b.local);
            step(&mut uses.serving, !b.terminating);
            if uses.frontends == 0 {
                self.uses.remove(&ident);
            }
        }
    }

    /// New or changed backends are written first; unused ones go last.
    fn plan_backends(
        &mut self,
        current: &MapContents,
        touched: &BTreeSet<BackendIdentity>,
        all: bool,
        phases: &mut Phases,
    ) {
        for ident in touched {
            match self.uses.get(ident).copied() {
                Some(uses) => {
                    if let Some(id) = self.backend_id(*ident) {
                        let be = uses.backend(*ident);
                        if current.backends.get(&id) != Some(&be) {
                            phases.backends.insert(id, be);
                        }
                    }
                    // Out of ids: left out; the frontends needing it are
                    // programmed without it.
                }
                None => {
                    if let Some(id) = self.backend_index.remove(ident) {
                        self.backend_ids.release(id);
                        if current.backends.contains_key(&id) {
                            phases.removed_backends.push((id, ident.2));
                        }
                    }
                }
            }
        }
        if all {
            // A second entry for an identity that already has an id (left
            // by an earlier release or written by hand) is never used.
            for (id, b) in &current.backends {
                if self.backend_index.get(&identity(b)) != Some(id)
                    && !phases.removed_backends.iter().any(|(r, _)| r == id)
                {
                    phases.removed_backends.push((*id, b.proto));
                }
            }
        }
    }

    fn backend_id(&mut self, ident: BackendIdentity) -> Option<u32> {
        if let Some(id) = self.backend_index.get(&ident) {
            return Some(*id);
        }
        let id = self.backend_ids.allocate()?;
        self.backend_index.insert(ident, id);
        Some(id)
    }

    fn plan_frontends(
        &mut self,
        current: &MapContents,
        desired: &DesiredState,
        keys: &BTreeSet<FrontendKey>,
        plan: &mut Plan,
        phases: &mut Phases,
    ) {
        // Populating a table is the costly part of planning (M x backends
        // steps): done only for tables that changed, once per distinct one.
        let mut tables: HashMap<u64, Arc<[u32]>> = HashMap::new();
        for k in keys {
            let Some(fe) = desired.frontends.get(k) else {
                plan.touched.push((*k, None));
                if let Some(id) = self.frontend_ids.remove(k) {
                    self.svc_ids.release(id);
                    self.plan_removal(current, k, id, plan, phases);
                }
                continue;
            };
            let svc_id = match self.frontend_ids.get(k) {
                Some(id) => *id,
                None => match self.svc_ids.allocate() {
                    Some(id) => {
                        self.frontend_ids.insert(*k, id);
                        plan.new_service_ids.insert(id);
                        id
                    }
                    None => {
                        plan.touched.push((*k, None));
                        plan.starved.insert(*k);
                        plan.frontends_without_id += 1;
                        continue;
                    }
                },
            };
            plan.touched.push((*k, Some(svc_id)));
            if let Some(group) = self.frontend_group(current, fe, svc_id, &mut tables, plan, phases)
            {
                phases.frontends.push(group);
            }
        }
    }

    /// One frontend's group: changed slots, new source ranges and a changed
    /// Maglev table, then the master that uses them; afterwards what it no
    /// longer uses (ranges, table, surplus slots).
    fn frontend_group(
        &self,
        current: &MapContents,
        fe: &Frontend,
        svc_id: u32,
        tables: &mut HashMap<u64, Arc<[u32]>>,
        plan: &mut Plan,
        phases: &mut Phases,
    ) -> Option<Group> {
        let mk = fe.key.service_key();
        let mut ops = Vec::new();
        let mut needs = Vec::new();
        let mut members = Vec::new();
        let mut count: u16 = 0;
        for b in &fe.backends {
            let ident = backend_identity(b, fe.key.protocol);
            let Some(&id) = self.backend_index.get(&ident) else {
                // No id was left for it (see `plan_backends`).
                plan.starved.insert(fe.key);
                plan.backends_without_id += 1;
                continue;
            };
            // A backend written by an earlier plan whose write failed (or
            // removed by hand) is written again before its slot.
            if let Some(uses) = self.uses.get(&ident) {
                let be = uses.backend(ident);
                if current.backends.get(&id) != Some(&be) {
                    phases.backends.insert(id, be);
                }
            }
            count += 1;
            let slot = ServiceValue {
                backend_id: id,
                svc_id,
                ..Default::default()
            };
            let sk = mk.with_slot(count);
            if current.services.get(&sk) != Some(&slot) {
                ops.push(Op::PutService(sk, slot));
            }
            needs.push(id);
            members.push(maglev::Member {
                addr: b.addr,
                port: b.port,
                id,
            });
            if count == u16::MAX {
                break;
            }
        }
        let mut flags = frontend_flags(fe);
        let before = current.ranges_of(svc_id);
        let after: BTreeSet<Ipv4Network> = fe.source_ranges.iter().copied().collect();
        ops.extend(
            after
                .difference(&before)
                .map(|r| Op::PutSourceRange(svc_id, *r)),
        );
        let maglev = (self.wants_maglev(fe) && members.len() > 1).then(|| {
            flags |= SVC_F_MAGLEV;
            maglev::fingerprint(&members, self.options.maglev_size)
        });
        if let Some(print) = maglev
            && current.maglev.get(&svc_id) != Some(&print)
        {
            let table = tables
                .entry(print)
                .or_insert_with(|| Arc::from(maglev::table(&members, self.options.maglev_size)))
                .clone();
            ops.push(Op::PutMaglev(svc_id, table, print));
        }
        let master = ServiceValue {
            backend_id: 0,
            svc_id,
            count,
            flags,
            kind: fe.kind.wire(),
            affinity_timeout: fe.affinity_timeout.unwrap_or(0),
        };
        let old_master = current.services.get(&mk);
        if old_master != Some(&master) {
            ops.push(Op::PutService(mk, master));
        }
        ops.extend(
            before
                .difference(&after)
                .map(|r| Op::DeleteSourceRange(svc_id, *r)),
        );
        if maglev.is_none() && current.maglev.contains_key(&svc_id) {
            ops.push(Op::DeleteMaglev(svc_id));
        }
        let old_count = old_master.map_or(0, |m| m.count);
        ops.extend(
            current
                .slots_after(mk, count, old_count)
                .map(Op::DeleteService),
        );
        // Affinity to backends the frontend no longer has is forgotten, so
        // the client's next connection makes a fresh choice.
        if old_master.is_some_and(|m| m.flags & SVC_F_AFFINITY != 0) {
            let kept: BTreeSet<u32> = needs.iter().copied().collect();
            for gone in current.slot_backends(mk, old_count) {
                if !kept.contains(&gone) {
                    plan.affinity_flush.insert((svc_id, gone));
                }
            }
        }
        (!ops.is_empty()).then_some(Group {
            ops,
            needs_backends: needs,
            frontend: Some(fe.key),
        })
    }

    fn wants_maglev(&self, fe: &Frontend) -> bool {
        // A ClusterIP flow is balanced on the client's own node, where
        // connection tracking pins it: only frontends that the packets of
        // one flow may reach through different nodes need the same choice
        // everywhere (Cilium's default too).
        let default = self.options.maglev_by_default && fe.kind != FrontendKind::ClusterIp;
        self.options.maglev_size > 0
            && fe
                .lb_algorithm
                .map_or(default, |a| a == LbAlgorithm::Maglev)
    }

    /// A frontend no longer desired: its master first, then its slots,
    /// source ranges and table.
    fn plan_removal(
        &self,
        current: &MapContents,
        key: &FrontendKey,
        svc_id: u32,
        plan: &mut Plan,
        phases: &mut Phases,
    ) {
        let mk = key.service_key();
        let count = current.services.get(&mk).map_or(0, |m| m.count);
        if let Some(master) = current.services.get(&mk) {
            phases
                .removed_masters
                .push(Group::single(Op::DeleteService(mk)));
            if master.flags & SVC_F_AFFINITY != 0 {
                plan.affinity_flush_frontends.insert(svc_id);
            }
        }
        let parts = current
            .slots_after(mk, 0, count)
            .map(Op::DeleteService)
            .chain(
                current
                    .ranges_of(svc_id)
                    .into_iter()
                    .map(|r| Op::DeleteSourceRange(svc_id, r)),
            )
            .chain(
                current
                    .maglev
                    .contains_key(&svc_id)
                    .then_some(Op::DeleteMaglev(svc_id)),
            );
        phases.removed_parts.extend(parts.map(Group::single));
    }

    /// Address-only entries: service addresses refuse unknown ports; the
    /// node's own addresses pass them.
    fn plan_addresses(
        &mut self,
        current: &MapContents,
        desired: &DesiredState,
        phases: &mut Phases,
    ) {
        let mut wanted: BTreeMap<Ipv4Addr, ServiceValue> = BTreeMap::new();
        for a in &desired.service_addrs {
            wanted.insert(
                *a,
                ServiceValue {
                    flags: SVC_F_ADDR_ONLY,
                    ..Default::default()
                },
            );
        }
        for a in &desired.node_addrs {
            wanted.entry(*a).or_insert(ServiceValue {
                flags: SVC_F_ADDR_ONLY | SVC_F_NODE_ADDR,
                ..Default::default()
            });
        }
        for (a, v) in &wanted {
            let k = ServiceKey::address_only(nbo(*a));
            if current.services.get(&k) != Some(v) {
                phases.new_addrs.push(Group::single(Op::PutService(k, *v)));
            }
        }
        // A full plan: every address entry the maps hold and nobody wants
        // goes.
        for (k, v) in &current.services {
            if k.slot == 0 && v.flags & SVC_F_ADDR_ONLY != 0 && !wanted.contains_key(&k.ip()) {
                phases
                    .removed_addrs
                    .push(Group::single(Op::DeleteService(*k)));
            }
        }
    }

    /// The address-only entries of `addrs` only.
    fn plan_some_addresses(
        &mut self,
        current: &MapContents,
        desired: &DesiredState,
        addrs: &BTreeSet<Ipv4Addr>,
        phases: &mut Phases,
    ) {
        for a in addrs {
            let k = ServiceKey::address_only(nbo(*a));
            let flags = if desired.service_addrs.contains(a) {
                Some(SVC_F_ADDR_ONLY)
            } else if desired.node_addrs.contains(a) {
                Some(SVC_F_ADDR_ONLY | SVC_F_NODE_ADDR)
            } else {
                None
            };
            match flags {
                Some(flags) => {
                    let v = ServiceValue {
                        flags,
                        ..Default::default()
                    };
                    if current.services.get(&k) != Some(&v) {
                        phases.new_addrs.push(Group::single(Op::PutService(k, v)));
                    }
                }
                None => {
                    if current.services.contains_key(&k) {
                        phases
                            .removed_addrs
                            .push(Group::single(Op::DeleteService(k)));
                    }
                }
            }
        }
    }

    /// What a full plan finds in the maps that no frontend accounts for:
    /// slots without a master or beyond its count, source ranges and
    /// tables of ids no frontend has.
    fn plan_strays(&self, current: &MapContents, desired: &DesiredState, phases: &mut Phases) {
        let live: BTreeMap<ServiceKey, u32> = desired
            .frontends
            .keys()
            .filter_map(|k| Some((k.service_key(), *self.frontend_ids.get(k)?)))
            .collect();
        let live_ids: BTreeSet<u32> = live.values().copied().collect();
        let planned_deletes: BTreeSet<ServiceKey> = phases
            .frontends
            .iter()
            .chain(&phases.removed_masters)
            .chain(&phases.removed_parts)
            .flat_map(|g| &g.ops)
            .filter_map(|op| match op {
                Op::DeleteService(k) => Some(*k),
                _ => None,
            })
            .collect();
        for (k, v) in &current.services {
            if k.slot == 0 || planned_deletes.contains(k) {
                continue;
            }
            // A slot of a live frontend within its backend count is kept
            // (and rewritten by its group if its value is wrong).
            let counted = FrontendKey::from_service_key(&k.with_slot(0))
                .and_then(|fk| desired.frontends.get(&fk))
                .is_some_and(|fe| {
                    live.get(&fe.key.service_key()) == Some(&v.svc_id)
                        && usize::from(k.slot) <= fe.backends.len()
                });
            if !counted {
                phases
                    .removed_parts
                    .push(Group::single(Op::DeleteService(*k)));
            }
        }
        for (id, r) in &current.source_ranges {
            if !live_ids.contains(id) {
                phases
                    .removed_parts
                    .push(Group::single(Op::DeleteSourceRange(*id, *r)));
            }
        }
        for id in current.maglev.keys() {
            if !live_ids.contains(id) {
                phases
                    .removed_parts
                    .push(Group::single(Op::DeleteMaglev(*id)));
            }
        }
    }
}

/// The master entry's flags a frontend's policies give.
fn frontend_flags(fe: &Frontend) -> u8 {
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
    }
    flags
}

impl MapContents {
    /// The source ranges programmed for frontend id `svc_id`.
    fn ranges_of(&self, svc_id: u32) -> BTreeSet<Ipv4Network> {
        let from = (
            svc_id,
            Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).expect("0.0.0.0/0"),
        );
        self.source_ranges
            .range(from..)
            .take_while(|(id, _)| *id == svc_id)
            .map(|(_, r)| *r)
            .collect()
    }

    /// Slot keys of master `mk` after slot `keep`: up to `count`, and any
    /// further ones the map holds (a master whose write failed after its
    /// slots were written).
    fn slots_after(
        &self,
        mk: ServiceKey,
        keep: u16,
        count: u16,
    ) -> impl Iterator<Item = ServiceKey> {
        let mut slot = keep;
        std::iter::from_fn(move || {
            loop {
                slot = slot.checked_add(1)?;
                let k = mk.with_slot(slot);
                if self.services.contains_key(&k) {
                    return Some(k);
                }
                if slot > count {
                    return None;
                }
            }
        })
    }

    /// Backend ids in slots `1..=count` of master `mk`.
    fn slot_backends(&self, mk: ServiceKey, count: u16) -> impl Iterator<Item = u32> + '_ {
        (1..=count).filter_map(move |s| self.services.get(&mk.with_slot(s)).map(|v| v.backend_id))
    }

    /// Mirrors one successful operation.
    pub fn record(&mut self, op: &Op) {
        match op {
            Op::PutBackend(id, b) => {
                self.backends.insert(*id, *b);
            }
            Op::PutService(k, v) => {
                self.services.insert(*k, *v);
            }
            Op::DeleteService(k) => {
                self.services.remove(k);
            }
            Op::DeleteBackend(id) => {
                self.backends.remove(id);
            }
            Op::PutSourceRange(id, net) => {
                self.source_ranges.insert((*id, *net));
            }
            Op::DeleteSourceRange(id, net) => {
                self.source_ranges.remove(&(*id, *net));
            }
            Op::PutMaglev(id, _, print) => {
                self.maglev.insert(*id, *print);
            }
            Op::DeleteMaglev(id) => {
                self.maglev.remove(id);
            }
        }
    }
}

/// A full plan from the maps' contents, as a restarted daemon makes it,
/// with the contents it leads to (for tests).
#[cfg(test)]
pub(crate) struct Planned {
    pub plan: Plan,
    pub target: MapContents,
}

#[cfg(test)]
impl std::ops::Deref for Planned {
    type Target = Plan;
    fn deref(&self) -> &Plan {
        &self.plan
    }
}

#[cfg(test)]
pub(crate) fn plan(
    current: &MapContents,
    desired: &DesiredState,
    svc_ids: &mut IdAllocator,
    backend_ids: &mut IdAllocator,
    options: PlanOptions,
) -> Planned {
    let take = |a: &mut IdAllocator| std::mem::replace(a, IdAllocator::new(1));
    let mut planner = Planner::new(current, take(svc_ids), take(backend_ids), options);
    let plan = planner.plan(current, desired, Touch::All);
    (*svc_ids, *backend_ids) = planner.into_allocators();
    let mut target = current.clone();
    for op in plan.groups.iter().flat_map(|g| &g.ops) {
        target.record(op);
    }
    Planned { plan, target }
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
                port_name: "".into(),
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
            d.frontends.insert(f.key, f.into());
        }
        d
    }

    fn ids() -> (IdAllocator, IdAllocator) {
        (IdAllocator::new(1000), IdAllocator::new(1000))
    }

    /// The plan for `d` on empty maps, with default options.
    fn plan_from_empty(d: &DesiredState, s: &mut IdAllocator, b: &mut IdAllocator) -> Planned {
        plan(&MapContents::default(), d, s, b, PlanOptions::default())
    }

    /// The maps after planning `d` on empty ones.
    fn from_empty(d: &DesiredState, s: &mut IdAllocator, b: &mut IdAllocator) -> MapContents {
        plan_from_empty(d, s, b).target
    }

    /// Applies a plan's operations to a copy of `current`.
    fn apply(current: &MapContents, plan: &Plan) -> MapContents {
        let mut m = current.clone();
        for op in plan.groups.iter().flat_map(|g| &g.ops) {
            m.record(op);
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
                        groups: vec![Group::single(op.clone())],
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
        let p = plan_from_empty(&d, &mut s, &mut b);
        assert_consistent_throughout(&MapContents::default(), &p);
        let after = apply(&MapContents::default(), &p);
        // 2 backends; 2 address-only + 2 masters + 2 slots.
        assert_eq!(after.backends.len(), 2);
        assert_eq!(after.services.len(), 6);
        assert_eq!(p.new_service_ids.len(), 2);
    }

    #[test]
    fn replanning_the_same_state_is_a_no_op_and_keeps_ids() {
        let (mut s, mut b) = ids();
        let d = desired(vec![fe("10.96.0.1", 80, &[("10.0.0.1", 8080)])]);
        let first = plan_from_empty(&d, &mut s, &mut b);
        let programmed = apply(&MapContents::default(), &first);
        // A restarted daemon has fresh allocators and reads the maps back.
        let (mut s2, mut b2) = ids();
        let again = plan(&programmed, &d, &mut s2, &mut b2, PlanOptions::default());
        assert!(again.is_empty(), "{:?}", again.groups);
        assert_eq!(again.target, programmed);
        assert!(again.new_service_ids.is_empty());
    }

    #[test]
    fn frontends_and_backends_the_ids_do_not_stretch_to_are_counted() {
        // One frontend id, two backend ids.
        let (mut s, mut b) = (IdAllocator::new(2), IdAllocator::new(3));
        let d = desired(vec![
            fe(
                "10.96.0.1",
                80,
                &[("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 80)],
            ),
            fe("10.96.0.2", 80, &[("10.0.0.1", 80)]),
        ]);
        let p = plan_from_empty(&d, &mut s, &mut b);
        assert_eq!(p.plan.frontends_without_id, 1);
        assert_eq!(p.plan.backends_without_id, 1);
        let keys: Vec<String> = p.plan.starved.iter().map(ToString::to_string).collect();
        assert_eq!(keys, ["10.96.0.1:80/TCP", "10.96.0.2:80/TCP"]);
        // The frontend that got an id is programmed with what fits.
        assert_eq!(p.target.backends.len(), 2);
    }

    #[test]
    fn removed_udp_backends_are_listed_for_the_ct_flush() {
        let (mut s, mut b) = ids();
        let udp = |backends: &[(&str, u16)]| {
            let mut f = fe("10.96.0.10", 53, backends);
            f.key.protocol = Protocol::Udp;
            desired(vec![f])
        };
        let two = udp(&[("10.0.0.1", 53), ("10.0.0.2", 53)]);
        let m1 = from_empty(&two, &mut s, &mut b);
        let p2 = plan(
            &m1,
            &udp(&[("10.0.0.2", 53)]),
            &mut s,
            &mut b,
            PlanOptions::default(),
        );
        assert_eq!(p2.removed_backends.len(), 1);
        assert_eq!(p2.removed_udp_backends, p2.removed_backends);
    }

    #[test]
    fn shrinking_and_growing_stay_consistent_at_every_step() {
        let (mut s, mut b) = ids();
        let three = desired(vec![fe(
            "10.96.0.1",
            80,
            &[("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 80)],
        )]);
        let m1 = from_empty(&three, &mut s, &mut b);
        let one = desired(vec![fe("10.96.0.1", 80, &[("10.0.0.3", 80)])]);
        let p2 = plan(&m1, &one, &mut s, &mut b, PlanOptions::default());
        assert_consistent_throughout(&m1, &p2);
        assert_eq!(p2.removed_backends.len(), 2);
        assert!(
            p2.removed_udp_backends.is_empty(),
            "TCP backends flush no CT"
        );
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
        let m = from_empty(&d, &mut s, &mut b);
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
        let p = plan_from_empty(&d, &mut s, &mut b);
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

    pub(super) fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// A LoadBalancer frontend `vip:80`/TCP of Service default/lb.
    pub(super) fn fe(vip: &str, backends: &[&str]) -> Frontend {
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
                port_name: "".into(),
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

    pub(super) fn desired(fes: Vec<Frontend>, node: &[&str]) -> DesiredState {
        let mut d = DesiredState::default();
        for f in fes {
            d.service_addrs.insert(f.key.addr);
            d.frontends.insert(f.key, f.into());
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
        let svc = p.touched[0].1.unwrap();
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

#[cfg(test)]
mod incremental_tests {
    use super::{
        extra_tests::{self, fe as lb, ip},
        *,
    };
    use crate::model::{FrontendKind, ServiceRef};

    /// A frontend `vip:80`/TCP of `kind`, of a Service named after it.
    fn fe(vip: &str, kind: FrontendKind, backends: &[&str]) -> Frontend {
        Frontend {
            kind,
            service: ServiceRef {
                namespace: "default".into(),
                name: vip.into(),
                port_name: "".into(),
            },
            snat_remote: false,
            ..lb(vip, backends)
        }
    }

    fn cip(vip: &str, backends: &[&str]) -> Frontend {
        fe(vip, FrontendKind::ClusterIp, backends)
    }

    fn desired(fes: &[Frontend]) -> DesiredState {
        extra_tests::desired(fes.to_vec(), &[])
    }

    const OPTIONS: PlanOptions = PlanOptions {
        maglev_size: 251,
        maglev_by_default: true,
    };

    fn planner() -> Planner {
        Planner::new(
            &MapContents::default(),
            IdAllocator::new(1000),
            IdAllocator::new(1000),
            OPTIONS,
        )
    }

    /// Applies every operation of `plan` to `m`.
    fn run(m: &mut MapContents, plan: &Plan) {
        for op in plan.groups.iter().flat_map(|g| &g.ops) {
            m.record(op);
        }
    }

    /// A planner rebuilt from `m` (a restart) must find nothing to do:
    /// the incremental plans left the maps exactly where a full plan would.
    fn assert_full_plan_is_empty(m: &MapContents, d: &DesiredState) {
        let mut fresh = Planner::new(m, IdAllocator::new(1000), IdAllocator::new(1000), OPTIONS);
        let p = fresh.plan(m, d, Touch::All);
        assert!(p.is_empty(), "a full plan still wants {:?}", p.groups);
    }

    fn only(keys: &[&Frontend]) -> BTreeSet<FrontendKey> {
        keys.iter().map(|f| f.key).collect()
    }

    fn master(m: &MapContents, f: &Frontend) -> ServiceValue {
        m.services[&f.key.service_key()]
    }

    #[test]
    fn a_change_plans_only_its_frontend_and_ids_stay() {
        let (a, b, c) = (
            cip("10.96.0.1", &["10.1.0.1", "10.1.0.2"]),
            cip("10.96.0.2", &["10.1.0.3"]),
            cip("10.96.0.3", &["10.1.0.4"]),
        );
        let mut p = planner();
        let mut m = MapContents::default();
        let d = desired(&[a.clone(), b.clone(), c.clone()]);
        let first = p.plan(&m, &d, Touch::All);
        run(&mut m, &first);
        let before = m.clone();

        let mut b2 = b.clone();
        b2.backends[0].addr = ip("10.1.0.9");
        let d2 = desired(&[a.clone(), b2.clone(), c.clone()]);
        let plan = p.plan(
            &m,
            &d2,
            Touch::Frontends {
                keys: &only(&[&b2]),
                addresses: &BTreeSet::new(),
            },
        );
        let b_key = b.key.service_key();
        for op in plan.groups.iter().flat_map(|g| &g.ops) {
            match op {
                Op::PutService(k, _) | Op::DeleteService(k) => {
                    assert_eq!(k.with_slot(0), b_key, "{op:?} is not b's")
                }
                Op::PutBackend(_, be) => assert_eq!(be.addr, nbo(ip("10.1.0.9"))),
                Op::DeleteBackend(id) => assert_eq!(before.backends[id].addr, nbo(ip("10.1.0.3"))),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            plan.touched,
            vec![(b.key, Some(master(&before, &b).svc_id))]
        );
        run(&mut m, &plan);
        for f in [&a, &b, &c] {
            assert_eq!(
                master(&m, f).svc_id,
                master(&before, f).svc_id,
                "{} changed id",
                f.key
            );
        }
        assert_full_plan_is_empty(&m, &d2);
        // A full resync of the same planner on unchanged maps writes nothing.
        assert!(p.plan(&m, &d2, Touch::All).is_empty());
    }

    #[test]
    fn a_backend_shared_by_two_services_survives_the_removal_of_one() {
        let a = cip("10.96.0.1", &["10.1.0.1"]);
        let b = cip("10.96.0.2", &["10.1.0.1"]);
        let mut p = planner();
        let mut m = MapContents::default();
        let first = p.plan(&m, &desired(&[a.clone(), b.clone()]), Touch::All);
        run(&mut m, &first);
        assert_eq!(m.backends.len(), 1, "one backend for both");
        let id = *m.backends.keys().next().unwrap();

        let d = desired(std::slice::from_ref(&b));
        let plan = p.plan(
            &m,
            &d,
            Touch::Frontends {
                keys: &only(&[&a]),
                addresses: &[a.key.addr].into(),
            },
        );
        assert!(plan.removed_backends.is_empty());
        run(&mut m, &plan);
        assert!(m.backends.contains_key(&id), "the shared backend went away");
        assert!(!m.services.contains_key(&a.key.service_key()));
        assert!(
            !m.services
                .contains_key(&ServiceKey::address_only(nbo(a.key.addr)))
        );
        assert_full_plan_is_empty(&m, &d);

        let empty = DesiredState::default();
        let plan = p.plan(
            &m,
            &empty,
            Touch::Frontends {
                keys: &only(&[&b]),
                addresses: &[b.key.addr].into(),
            },
        );
        assert_eq!(plan.removed_backends, [id].into());
        run(&mut m, &plan);
        assert!(m.backends.is_empty() && m.services.is_empty(), "{m:?}");
    }

    #[test]
    fn a_frontend_whose_writes_failed_is_completed_when_planned_again() {
        let a = cip("10.96.0.1", &["10.1.0.1", "10.1.0.2"]);
        let mut p = planner();
        let mut m = MapContents::default();
        let d = desired(std::slice::from_ref(&a));
        let plan = p.plan(&m, &d, Touch::All);
        // Only the backends got written (the frontend's group failed).
        for g in &plan.groups {
            if g.frontend.is_none() {
                for op in &g.ops {
                    m.record(op);
                }
            }
        }
        let retry = p.plan(
            &m,
            &d,
            Touch::Frontends {
                keys: &only(&[&a]),
                addresses: &BTreeSet::new(),
            },
        );
        assert!(!retry.is_empty());
        run(&mut m, &retry);
        assert_full_plan_is_empty(&m, &d);
    }

    #[test]
    fn maglev_by_default_is_for_external_frontends_only() {
        let c = cip("10.96.0.1", &["10.1.0.1", "10.1.0.2"]);
        let n = fe(
            "10.96.0.2",
            FrontendKind::NodePort,
            &["10.1.0.1", "10.1.0.2"],
        );
        let mut annotated = cip("10.96.0.3", &["10.1.0.1", "10.1.0.2"]);
        annotated.lb_algorithm = Some(LbAlgorithm::Maglev);
        let mut p = planner();
        let mut m = MapContents::default();
        let first = p.plan(
            &m,
            &desired(&[c.clone(), n.clone(), annotated.clone()]),
            Touch::All,
        );
        run(&mut m, &first);
        let flags = |f: &Frontend| master(&m, f).flags & SVC_F_MAGLEV != 0;
        assert!(!flags(&c), "a ClusterIP got a table by default");
        assert!(flags(&n), "a NodePort got no table");
        assert!(flags(&annotated), "the annotation's choice was ignored");
        assert_eq!(m.maglev.len(), 2);
    }

    #[test]
    fn a_full_resync_repairs_entries_removed_behind_its_back() {
        let a = cip("10.96.0.1", &["10.1.0.1", "10.1.0.2"]);
        let mut p = planner();
        let mut m = MapContents::default();
        let d = desired(std::slice::from_ref(&a));
        let first = p.plan(&m, &d, Touch::All);
        run(&mut m, &first);
        let good = m.clone();
        // Someone deletes a slot and a backend, and adds a stray entry.
        m.services.remove(&a.key.service_key().with_slot(2));
        let (id, _) = m.backends.pop_first().unwrap();
        m.services
            .insert(a.key.service_key().with_slot(7), ServiceValue::default());
        let repair = p.plan(&m, &d, Touch::All);
        let ops: Vec<&Op> = repair.groups.iter().flat_map(|g| &g.ops).collect();
        assert_eq!(ops.len(), 3, "{ops:?}");
        assert!(
            ops.iter()
                .any(|op| matches!(op, Op::PutBackend(i, _) if *i == id))
        );
        run(&mut m, &repair);
        assert_eq!(m, good);
    }
}
