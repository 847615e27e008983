//! The desired state kept up to date from one view of the cluster to the
//! next, the way kube-proxy's change trackers feed its partial syncs: a
//! change recomputes only the Services it touches (a Service and its
//! slices merge per Service), conflicts are re-resolved only on the
//! frontend addresses those Services claim, and the result says which
//! frontends changed so the writer plans only those. A change of this
//! node (addresses, zone, name) recomputes everything.
//!
//! Objects that did not change are the same allocation in both views
//! (see [`ClusterState`]), so telling what changed costs a pointer
//! comparison per object; a source that rebuilt an equal object costs a
//! field comparison.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::Arc,
};

use super::{
    ClusterState, DesiredState, FrontendKey, NodeContext, ObjectKey, Scope, Skip, Slice, ViewDelta,
    conflicts::{Candidate, Slot, resolve_slot, slot},
    desired::{service_addr, service_candidates},
    endpoints::{SliceOwner, orphan_skip, slice_owner},
};

/// What one update changed in the desired state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Frontends added, changed or removed.
    pub frontends: BTreeSet<FrontendKey>,
    /// Addresses that became or stopped being service addresses.
    pub addresses: BTreeSet<Ipv4Addr>,
    /// Everything was recomputed (first view, or this node changed).
    pub full: bool,
    /// Services recomputed.
    pub services: usize,
    /// The skipped objects changed (`DesiredState::skipped` was rebuilt).
    pub skips: bool,
    /// A frontend with a health check node port was added, changed or
    /// removed.
    pub health_checks: bool,
}

/// One Service's part of the desired state, before conflicts.
#[derive(Debug, Default)]
struct Computed {
    candidates: Vec<Candidate>,
    skips: Vec<Skip>,
}

#[derive(Debug, Default)]
pub struct IncrementalModel {
    node: Option<NodeContext>,
    /// The view the state was computed from.
    prev: Option<Arc<ClusterState>>,
    /// EndpointSlices kube-proxy would see, by the Service they name.
    // Inner collections are sorted Vecs: nearly every Service has one
    // slice and every address one claimant, and a one-entry BTreeMap
    // allocates a whole node (half a KiB here) for it.
    slices: BTreeMap<ObjectKey, Vec<(ObjectKey, Arc<Slice>)>>,
    /// Slices that name no Service.
    unowned: BTreeMap<ObjectKey, Skip>,
    services: BTreeMap<ObjectKey, Computed>,
    /// Slices naming a Service that does not exist, by that Service.
    orphans: BTreeMap<ObjectKey, Vec<Skip>>,
    /// Which Services claim each frontend address.
    claims: BTreeMap<Slot, Vec<ObjectKey>>,
    /// Claims that lost, by address.
    lost: BTreeMap<Slot, Vec<Skip>>,
    /// Frontends using each address that needs an address-only entry.
    addr_refs: BTreeMap<Ipv4Addr, u32>,
    desired: DesiredState,
    /// Some skip list changed during this update.
    skips_changed: bool,
}

impl IncrementalModel {
    pub fn new() -> Self {
        Self::default()
    }

    /// The last view the state was computed from.
    pub fn view(&self) -> Option<&Arc<ClusterState>> {
        self.prev.as_ref()
    }

    /// The desired state for the last view.
    pub fn desired(&self) -> &DesiredState {
        &self.desired
    }

    /// Brings the desired state up to `cluster` as seen from `node`.
    pub fn update(&mut self, cluster: &Arc<ClusterState>, node: &NodeContext) -> Changes {
        let mut changes = Changes::default();
        self.skips_changed = false;
        let mut dirty = BTreeSet::new();
        let mut touched: BTreeSet<Slot> = BTreeSet::new();
        match self.prev.take() {
            Some(prev) if self.node.as_ref() == Some(node) => {
                self.follow(&prev, cluster, &mut dirty);
            }
            _ => {
                // From nothing: a full plan (`Touch::All`) compares with
                // the maps, not with the previous state, and every address
                // is claimed again by the frontends that use it.
                changes.full = true;
                *self = Self {
                    node: Some(node.clone()),
                    ..Self::default()
                };
                self.desired.node_addrs = node.addresses.iter().copied().collect();
                for (key, slice) in &cluster.endpoint_slices {
                    self.index_slice(key, slice, &mut dirty);
                }
                dirty.extend(cluster.services.keys().cloned());
            }
        }
        changes.services = dirty.len();
        for service in &dirty {
            self.recompute(cluster, service, node, &mut touched);
        }
        for s in touched {
            self.resolve(s, node, &mut changes);
        }
        self.prev = Some(cluster.clone());
        // Rebuilt only when some part changed: walking every Service's
        // (nearly always empty) list costs more than the rest of a change.
        if changes.full || self.skips_changed {
            self.desired.skipped = self.skips();
            changes.skips = true;
        }
        changes
    }

    /// Finds what changed from `prev` to `cluster`: the Services it
    /// touches are marked dirty, the slice index follows.
    fn follow(
        &mut self,
        prev: &ClusterState,
        cluster: &ClusterState,
        dirty: &mut BTreeSet<ObjectKey>,
    ) {
        // The source's own list of what changed, when it is relative to
        // the view the state was computed from; every key otherwise.
        let delta = cluster
            .delta
            .as_ref()
            .filter(|d| prev.id != 0 && d.from == prev.id);
        let keys = |pick: fn(&ViewDelta) -> &Option<BTreeSet<ObjectKey>>| {
            delta.and_then(|d| pick(d).as_ref())
        };
        diff(
            &prev.services,
            &cluster.services,
            keys(|d| &d.services),
            |key, _, _| {
                dirty.insert(key.clone());
            },
        );
        diff(
            &prev.endpoints,
            &cluster.endpoints,
            keys(|d| &d.endpoints),
            |key, _, _| {
                dirty.insert(key.clone());
            },
        );
        diff(
            &prev.endpoint_slices,
            &cluster.endpoint_slices,
            keys(|d| &d.endpoint_slices),
            |key, old, new| {
                if let Some(slice) = old {
                    self.unindex_slice(key, slice, dirty);
                }
                if let Some(slice) = new {
                    self.index_slice(key, slice, dirty);
                }
            },
        );
    }

    fn index_slice(
        &mut self,
        key: &ObjectKey,
        slice: &Arc<Slice>,
        dirty: &mut BTreeSet<ObjectKey>,
    ) {
        match slice_owner(key, slice) {
            SliceOwner::Invisible => {}
            SliceOwner::Nobody(skip) => {
                self.unowned.insert(key.clone(), skip);
                self.skips_changed = true;
            }
            SliceOwner::Service(service) => {
                let slices = self.slices.entry(service.clone()).or_default();
                match slices.binary_search_by(|(k, _)| k.cmp(key)) {
                    Ok(i) => slices[i].1 = slice.clone(),
                    Err(i) => slices.insert(i, (key.clone(), slice.clone())),
                }
                dirty.insert(service);
            }
        }
    }

    /// Undoes [`Self::index_slice`] for the slice `key` held before (its
    /// owner follows from the slice itself, so none is recorded).
    fn unindex_slice(&mut self, key: &ObjectKey, old: &Slice, dirty: &mut BTreeSet<ObjectKey>) {
        match slice_owner(key, old) {
            SliceOwner::Invisible => {}
            SliceOwner::Nobody(_) => {
                self.unowned.remove(key);
                self.skips_changed = true;
            }
            SliceOwner::Service(service) => {
                if let Some(slices) = self.slices.get_mut(&service) {
                    if let Ok(i) = slices.binary_search_by(|(k, _)| k.cmp(key)) {
                        slices.remove(i);
                    }
                    if slices.is_empty() {
                        self.slices.remove(&service);
                    }
                }
                dirty.insert(service);
            }
        }
    }

    /// Recomputes one Service's candidates; records the addresses whose
    /// claims changed.
    fn recompute(
        &mut self,
        cluster: &ClusterState,
        key: &ObjectKey,
        node: &NodeContext,
        touched: &mut BTreeSet<Slot>,
    ) {
        if let Some(old) = self.services.remove(key) {
            self.skips_changed |= !old.skips.is_empty();
            for c in &old.candidates {
                let s = slot(&c.frontend.key);
                touched.insert(s);
                if let Some(claimants) = self.claims.get_mut(&s) {
                    if let Ok(i) = claimants.binary_search(key) {
                        claimants.remove(i);
                    }
                    if claimants.is_empty() {
                        self.claims.remove(&s);
                    }
                }
            }
        }
        self.skips_changed |= self.orphans.remove(key).is_some();
        let slices: Vec<(&ObjectKey, &Slice)> = self
            .slices
            .get(key)
            .map(|v| v.iter().map(|(k, s)| (k, &**s)).collect())
            .unwrap_or_default();
        let Some(service) = cluster.services.get(key) else {
            if !slices.is_empty() {
                let skips = slices.iter().map(|(s, _)| orphan_skip(s, key)).collect();
                self.orphans.insert(key.clone(), skips);
                self.skips_changed = true;
            }
            return;
        };
        let mut skips = Vec::new();
        let candidates = service_candidates(
            key,
            service,
            &slices,
            cluster.endpoints.get(key).map(|e| &**e),
            node,
            &mut skips,
        );
        for c in &candidates {
            let s = slot(&c.frontend.key);
            touched.insert(s);
            let claimants = self.claims.entry(s).or_default();
            if let Err(i) = claimants.binary_search(key) {
                claimants.insert(i, key.clone());
            }
        }
        self.skips_changed |= !skips.is_empty();
        self.services
            .insert(key.clone(), Computed { candidates, skips });
    }

    /// Re-resolves who owns one frontend address and updates the desired
    /// frontends on it.
    fn resolve(&mut self, s: Slot, node: &NodeContext, changes: &mut Changes) {
        let claims: Vec<&Candidate> = self
            .claims
            .get(&s)
            .into_iter()
            .flatten()
            .filter_map(|service| self.services.get(service))
            .flat_map(|c| &c.candidates)
            .filter(|c| slot(&c.frontend.key) == s)
            .collect();
        let (won, lost) = resolve_slot(s, claims);
        if lost.is_empty() {
            self.skips_changed |= self.lost.remove(&s).is_some();
        } else {
            self.lost.insert(s, lost);
            self.skips_changed = true;
        }
        let (addr, port, protocol) = s;
        for scope in [Scope::External, Scope::Internal] {
            let key = FrontendKey {
                addr,
                port,
                protocol,
                scope,
            };
            let new = won.iter().find(|f| f.key == key);
            let old = self.desired.frontends.get(&key);
            if old == new {
                continue;
            }
            changes.frontends.insert(key);
            changes.health_checks |= old.is_some_and(|f| f.health_check_node_port.is_some())
                || new.is_some_and(|f| f.health_check_node_port.is_some());
            let old_addr = old.and_then(|f| service_addr(f, node));
            let new_addr = new.and_then(|f| service_addr(f, node));
            match new {
                Some(f) => {
                    self.desired.frontends.insert(key, f.clone());
                }
                None => {
                    self.desired.frontends.remove(&key);
                }
            }
            if old_addr != new_addr {
                if let Some(a) = old_addr
                    && self.release_addr(a)
                {
                    changes.addresses.insert(a);
                }
                if let Some(a) = new_addr
                    && self.claim_addr(a)
                {
                    changes.addresses.insert(a);
                }
            }
        }
    }

    /// Counts one more frontend on `addr`; true when it is a new address.
    fn claim_addr(&mut self, addr: Ipv4Addr) -> bool {
        let n = self.addr_refs.entry(addr).or_default();
        *n += 1;
        if *n == 1 {
            self.desired.service_addrs.insert(addr);
            return true;
        }
        false
    }

    /// Counts one frontend less on `addr`; true when none is left.
    fn release_addr(&mut self, addr: Ipv4Addr) -> bool {
        let Some(n) = self.addr_refs.get_mut(&addr) else {
            return false;
        };
        *n -= 1;
        if *n == 0 {
            self.addr_refs.remove(&addr);
            self.desired.service_addrs.remove(&addr);
            return true;
        }
        false
    }

    fn skips(&self) -> Vec<Skip> {
        self.unowned
            .values()
            .cloned()
            .chain(self.orphans.values().flatten().cloned())
            .chain(self.services.values().flat_map(|c| c.skips.iter().cloned()))
            .chain(self.lost.values().flatten().cloned())
            .collect()
    }
}

/// Calls `f` for every key whose value differs between `old` and `new`
/// (added, removed or changed), in key order: among `candidates` when
/// given (the rest is known equal), among all keys otherwise.
fn diff<K: Ord, V: PartialEq>(
    old: &BTreeMap<K, Arc<V>>,
    new: &BTreeMap<K, Arc<V>>,
    candidates: Option<&BTreeSet<K>>,
    mut f: impl FnMut(&K, Option<&Arc<V>>, Option<&Arc<V>>),
) {
    if let Some(candidates) = candidates {
        for k in candidates {
            // The maps' own key, not the delta's copy: the model keeps it.
            match (old.get_key_value(k), new.get_key_value(k)) {
                (None, None) => {}
                (Some((_, a)), Some((k, b))) => {
                    if !Arc::ptr_eq(a, b) && a != b {
                        f(k, Some(a), Some(b));
                    }
                }
                (Some((k, a)), None) => f(k, Some(a), None),
                (None, Some((k, b))) => f(k, None, Some(b)),
            }
        }
        return;
    }
    let mut a = old.iter().peekable();
    let mut b = new.iter().peekable();
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => return,
            (Some((ka, va)), Some((kb, vb))) if ka == kb => {
                if !Arc::ptr_eq(va, vb) && va != vb {
                    f(ka, Some(va), Some(vb));
                }
                a.next();
                b.next();
            }
            (Some((ka, va)), Some((kb, _))) if ka < kb => {
                f(ka, Some(va), None);
                a.next();
            }
            (Some((ka, va)), None) => {
                f(ka, Some(va), None);
                a.next();
            }
            (_, Some((kb, vb))) => {
                f(kb, None, Some(vb));
                b.next();
            }
        }
    }
}
