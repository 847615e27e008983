//! Connection-tracking housekeeping from user space.
//!
//! The datapath decides liveness on every packet; this removes what no
//! packet will come for: expired entries (the TCP map is a plain hash that
//! nothing else empties, and `sluicectl conntrack` should not show the
//! dead), and UDP flows to backends that left their Service, so those
//! clients move to a live backend at once, as kube-proxy does by clearing
//! conntrack.
//!
//! Deleting is careful, because a wrong delete breaks a live connection
//! (its replies would leave untranslated): an entry goes only if it is dead
//! when it is read again just before the delete, with a clock read at that
//! moment, and only together with its partner, never while the partner
//! lives (a live partner refreshes it, or recreates it).

use std::collections::{BTreeSet, HashSet};

use aya::maps::{HashMap, MapData, MapError, PerCpuValues};
use proxy_common::{
    CtEntry, CtKey, CtStats,
    ct::{
        self, CT_F_ASSURED, CT_F_FIN_BACKEND, CT_F_FIN_CLIENT, CT_F_RST, CT_STATS_ANY,
        CT_STATS_ANY_USER, CT_STATS_TCP, CT_STATS_TCP_USER,
    },
    names, proto,
};

use crate::datapath::{DatapathError, PinnedMaps};

/// CLOCK_MONOTONIC_COARSE in whole seconds: the datapath's clock
/// (bpf_ktime_get_coarse_ns).
pub fn monotonic_secs() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u32
}

type CtMap = HashMap<MapData, CtKey, CtEntry>;

/// `BPF_NOEXIST`: create, never replace.
const BPF_NOEXIST: u64 = 1;

/// One of the two CT maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CtClass {
    Tcp,
    Any,
}

impl CtClass {
    pub const ALL: [CtClass; 2] = [CtClass::Tcp, CtClass::Any];

    pub fn of(protocol: u8) -> Self {
        if protocol == proto::TCP {
            Self::Tcp
        } else {
            Self::Any
        }
    }

    pub fn map_name(self) -> &'static str {
        match self {
            Self::Tcp => names::MAP_CT_TCP,
            Self::Any => names::MAP_CT_ANY,
        }
    }

    fn protocol(self) -> u8 {
        match self {
            Self::Tcp => proto::TCP,
            Self::Any => proto::UDP,
        }
    }

    fn rows(self) -> (u32, u32) {
        match self {
            Self::Tcp => (CT_STATS_TCP, CT_STATS_TCP_USER),
            Self::Any => (CT_STATS_ANY, CT_STATS_ANY_USER),
        }
    }

    fn map(self, maps: &mut PinnedMaps) -> &mut CtMap {
        maps.ct_for_mut(self.protocol())
    }
}

/// Which entries a sweep removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Entries idle past their timeout.
    Expired,
    /// The TCP map is (nearly) full and new connections are being refused:
    /// also half-open connections idle for [`PRESSURE_HALF_OPEN_IDLE`] and
    /// closing ones idle for [`PRESSURE_CLOSING_IDLE`], as the kernel's
    /// conntrack drops unassured entries early. Established connections
    /// are never touched.
    Pressure,
}

/// Idle seconds after which a half-open TCP connection goes under pressure.
pub const PRESSURE_HALF_OPEN_IDLE: i32 = 5;
/// Idle seconds after which a closing TCP connection goes under pressure.
pub const PRESSURE_CLOSING_IDLE: i32 = 2;

impl Policy {
    /// Whether the entry under `k` is to be removed at `now`.
    pub fn doomed(self, k: &CtKey, e: &CtEntry, now: u32) -> bool {
        if e.expired(k.proto, now) {
            return true;
        }
        if self == Policy::Expired || k.proto != proto::TCP {
            return false;
        }
        let idle = ct::age(now, e.last_seen);
        if e.flags & (CT_F_FIN_CLIENT | CT_F_FIN_BACKEND | CT_F_RST) != 0 {
            idle >= PRESSURE_CLOSING_IDLE
        } else if e.flags & CT_F_ASSURED == 0 {
            idle >= PRESSURE_HALF_OPEN_IDLE
        } else {
            false
        }
    }
}

/// What a pass over one map did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    pub removed: usize,
    /// Entries found by the walk and left (the datapath adds and evicts
    /// meanwhile).
    pub remaining: usize,
}

impl std::ops::Add for Sweep {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self {
            removed: self.removed + o.removed,
            remaining: self.remaining + o.remaining,
        }
    }
}

fn map_err(class: CtClass) -> impl Fn(MapError) -> DatapathError {
    move |source| DatapathError::Map {
        name: class.map_name(),
        source,
    }
}

/// What a sweep needs of a CT map: the kernel's, or a test's.
trait Store {
    /// Calls `f` on every entry.
    fn walk(&self, f: &mut dyn FnMut(CtKey, CtEntry));
    /// The entry under `k` as it is now.
    fn get(&self, k: &CtKey) -> Result<Option<CtEntry>, MapError>;
    /// Whether there was an entry to remove.
    fn remove(&mut self, k: &CtKey) -> Result<bool, MapError>;
}

impl Store for CtMap {
    fn walk(&self, f: &mut dyn FnMut(CtKey, CtEntry)) {
        if let Err(e) = crate::datapath::raw::walk_hash(self, f) {
            tracing::warn!(error = %e, "CT walk stopped part way; the next sweep walks the map again");
        }
    }

    fn get(&self, k: &CtKey) -> Result<Option<CtEntry>, MapError> {
        live(self, k)
    }

    fn remove(&mut self, k: &CtKey) -> Result<bool, MapError> {
        remove(self, k)
    }
}

/// The entry under `k` as the kernel has it now.
fn live(map: &CtMap, k: &CtKey) -> Result<Option<CtEntry>, MapError> {
    match map.get(k, 0) {
        Ok(e) => Ok(Some(e)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

fn remove(map: &mut CtMap, k: &CtKey) -> Result<bool, MapError> {
    match HashMap::remove(map, k) {
        Ok(()) => Ok(true),
        Err(MapError::KeyNotFound) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes what `policy` dooms from one map, pairs together. `clock` is
/// read for the walk and again before each delete.
fn sweep_map(
    map: &mut impl Store,
    policy: Policy,
    clock: &mut impl FnMut() -> u32,
) -> Result<Sweep, MapError> {
    let now = clock();
    let mut seen = 0usize;
    // Collect first: deleting while walking get_next_key restarts the walk.
    let mut candidates: Vec<CtKey> = Vec::new();
    map.walk(&mut |k, e| {
        seen += 1;
        if policy.doomed(&k, &e, now) {
            candidates.push(k);
        }
    });
    let mut done: HashSet<CtKey> = HashSet::new();
    let mut removed = 0;
    for k in candidates {
        if done.contains(&k) {
            continue;
        }
        // Read again, with the clock of this moment: the datapath may have
        // refreshed the entry since the walk.
        let Some(e) = map.get(&k)? else {
            continue;
        };
        let now = clock();
        if !policy.doomed(&k, &e, now) {
            continue;
        }
        let pk = k.partner(&e, k.partner_dir(&e));
        let partner = map.get(&pk)?;
        if partner.is_some_and(|p| !policy.doomed(&pk, &p, now)) {
            // Alive on the other side: it keeps this one fresh.
            continue;
        }
        removed += usize::from(map.remove(&k)?);
        if partner.is_some() {
            removed += usize::from(map.remove(&pk)?);
            done.insert(pk);
        }
    }
    Ok(Sweep {
        removed,
        remaining: seen.saturating_sub(removed),
    })
}

/// Removes both entries of every matching flow of one map.
fn delete_matching(
    map: &mut CtMap,
    pred: impl Fn(&CtKey, &CtEntry) -> bool,
) -> Result<usize, MapError> {
    let mut doomed: Vec<CtKey> = Vec::new();
    map.walk(&mut |k, e| {
        if pred(&k, &e) {
            doomed.push(k);
        }
    });
    let mut removed = 0;
    for k in doomed {
        removed += usize::from(remove(map, &k)?);
    }
    Ok(removed)
}

/// Adds user-space changes to a map's counters (CPU 0 of its user row;
/// the datapath never writes that row).
fn account(
    maps: &mut PinnedMaps,
    class: CtClass,
    created: usize,
    removed: usize,
) -> Result<(), DatapathError> {
    if created == 0 && removed == 0 {
        return Ok(());
    }
    let (_, row) = class.rows();
    let name = names::MAP_CT_STATS;
    let mut values: Vec<CtStats> = maps
        .ct_stats
        .get(&row, 0)
        .map_err(|source| DatapathError::Map { name, source })?
        .iter()
        .copied()
        .collect();
    if let Some(first) = values.first_mut() {
        first.created += created as u64;
        first.removed += removed as u64;
    }
    let values = PerCpuValues::try_from(values).map_err(|source| DatapathError::Io {
        path: name.into(),
        source,
    })?;
    maps.ct_stats
        .set(row, values, 0)
        .map_err(|source| DatapathError::Map { name, source })
}

/// Sweeps both maps with `policy`. Returns what each map kept and lost.
pub fn collect(
    maps: &mut PinnedMaps,
    policy: Policy,
) -> Result<Vec<(CtClass, Sweep)>, DatapathError> {
    let mut out = Vec::new();
    for class in CtClass::ALL {
        let sweep =
            sweep_map(class.map(maps), policy, &mut monotonic_secs).map_err(map_err(class))?;
        account(maps, class, 0, sweep.removed)?;
        out.push((class, sweep));
    }
    Ok(out)
}

/// Removes both entries of every UDP flow to one of `backends`.
pub fn flush_udp_backends(
    maps: &mut PinnedMaps,
    backends: &BTreeSet<u32>,
) -> Result<usize, DatapathError> {
    let removed = delete_matching(&mut maps.ct_any, |k, e| {
        k.proto == proto::UDP && backends.contains(&e.backend_id)
    })
    .map_err(map_err(CtClass::Any))?;
    account(maps, CtClass::Any, 0, removed)?;
    Ok(removed)
}

/// Removes every entry of the given frontends, or all (`sluicectl conntrack --flush`).
pub fn flush(
    maps: &mut PinnedMaps,
    svc_ids: Option<&BTreeSet<u32>>,
) -> Result<usize, DatapathError> {
    let mut total = 0;
    for class in CtClass::ALL {
        let removed = delete_matching(class.map(maps), |_, e| {
            svc_ids.is_none_or(|ids| ids.contains(&e.svc_id))
        })
        .map_err(map_err(class))?;
        account(maps, class, 0, removed)?;
        total += removed;
    }
    Ok(total)
}

/// A map's counters: the datapath's and user space's rows summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassStats {
    pub created: u64,
    pub removed: u64,
    /// Inserts refused because the map was full.
    pub full: u64,
    /// Partner entries the datapath recreated.
    pub recreated: u64,
}

impl ClassStats {
    /// Entries the counters account for: exact for the TCP hash, which
    /// nothing evicts.
    pub fn accounted(&self) -> u64 {
        self.created.saturating_sub(self.removed)
    }

    /// Entries the kernel evicted, given how many a walk found now: zero
    /// for the TCP hash, the LRU's evictions for the other.
    pub fn evicted(&self, entries_now: u64) -> u64 {
        self.accounted().saturating_sub(entries_now)
    }
}

/// Both rows of a map's counters, summed over CPUs.
pub fn class_stats(maps: &PinnedMaps, class: CtClass) -> Result<ClassStats, DatapathError> {
    let (dp, user) = class.rows();
    let (a, b) = (maps.ct_stats_total(dp)?, maps.ct_stats_total(user)?);
    Ok(ClassStats {
        created: a.created + b.created,
        removed: a.removed + b.removed,
        full: a.full + b.full,
        recreated: a.recreated + b.recreated,
    })
}

/// The share of the TCP map in use, from its counters (no walk): what the
/// daemon polls to start a pressure sweep before the map fills up.
pub fn tcp_fill(maps: &PinnedMaps, capacity: u32) -> Result<(f64, ClassStats), DatapathError> {
    let s = class_stats(maps, CtClass::Tcp)?;
    Ok((s.accounted() as f64 / f64::from(capacity.max(1)), s))
}

/// Inserts migrated entries, counted as user-space creations.
pub fn insert_migrated(
    maps: &mut PinnedMaps,
    entries: &[(CtKey, CtEntry)],
) -> Result<usize, DatapathError> {
    let mut created = [0usize; 2];
    for (k, e) in entries {
        let class = CtClass::of(k.proto);
        let map = class.map(maps);
        match live(map, k).map_err(map_err(class))? {
            // The new datapath already tracks it: keep the fresher state.
            Some(cur) if ct::age(e.last_seen, cur.last_seen) <= 0 => {}
            Some(cur) => {
                let merged = CtEntry {
                    last_seen: e.last_seen,
                    flags: cur.flags | (e.flags & ct::CT_STATE_MASK),
                    ..cur
                };
                map.insert(k, merged, 0).map_err(map_err(class))?;
            }
            None => match map.insert(k, *e, BPF_NOEXIST) {
                Ok(()) => created[class as usize] += 1,
                Err(MapError::SyscallError(s))
                    if s.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                Err(source) => return Err(map_err(class)(source)),
            },
        }
    }
    account(maps, CtClass::Tcp, created[0], 0)?;
    account(maps, CtClass::Any, created[1], 0)?;
    Ok(created[0] + created[1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxy_common::ct::{CT_DIR_REPLY, CT_DIR_SERVICE, CT_F_REPLY_SEEN, CT_F_REWRITE_DST};

    fn key(dir: u8) -> CtKey {
        CtKey {
            saddr: 1,
            daddr: 2,
            sport: 3,
            dport: 4,
            proto: proto::TCP,
            dir,
            _pad: [0; 2],
        }
    }

    fn entry(flags: u16, last_seen: u32) -> CtEntry {
        CtEntry {
            flags: flags | CT_F_REWRITE_DST,
            last_seen,
            ..Default::default()
        }
    }

    #[test]
    fn expired_policy_spares_everything_alive() {
        let k = key(CT_DIR_SERVICE);
        let established = entry(CT_F_REPLY_SEEN | CT_F_ASSURED, 1000);
        assert!(!Policy::Expired.doomed(&k, &established, 1000 + 3600));
        assert!(Policy::Expired.doomed(&k, &established, 1000 + 21_601));
        // Stamped after the sweep read its clock: alive, whatever the wrap.
        assert!(!Policy::Expired.doomed(&k, &entry(0, 1001), 1000));
        let half_open = entry(CT_F_REPLY_SEEN, 1000);
        assert!(!Policy::Expired.doomed(&k, &half_open, 1030));
    }

    #[test]
    fn pressure_drops_half_open_and_closing_early_but_never_established() {
        let k = key(CT_DIR_REPLY);
        let half_open = entry(CT_F_REPLY_SEEN, 1000);
        assert!(!Policy::Pressure.doomed(&k, &half_open, 1004));
        assert!(Policy::Pressure.doomed(&k, &half_open, 1005));
        let closing = entry(CT_F_ASSURED | CT_F_FIN_CLIENT, 1000);
        assert!(!Policy::Pressure.doomed(&k, &closing, 1001));
        assert!(Policy::Pressure.doomed(&k, &closing, 1002));
        let established = entry(CT_F_REPLY_SEEN | CT_F_ASSURED, 1000);
        assert!(!Policy::Pressure.doomed(&k, &established, 1000 + 21_600));
        // UDP has no handshake to judge: only its timeout counts.
        let udp = CtKey {
            proto: proto::UDP,
            ..k
        };
        assert!(!Policy::Pressure.doomed(&udp, &entry(0, 1000), 1030));
    }

    /// A CT map in memory; `refresh` stamps entries as the datapath would.
    #[derive(Default)]
    struct Fake(std::cell::RefCell<std::collections::BTreeMap<CtKey, CtEntry>>);

    impl Store for std::rc::Rc<Fake> {
        fn walk(&self, f: &mut dyn FnMut(CtKey, CtEntry)) {
            let all: Vec<_> = self.0.borrow().iter().map(|(k, e)| (*k, *e)).collect();
            for (k, e) in all {
                f(k, e);
            }
        }
        fn get(&self, k: &CtKey) -> Result<Option<CtEntry>, MapError> {
            Ok(self.0.borrow().get(k).copied())
        }
        fn remove(&mut self, k: &CtKey) -> Result<bool, MapError> {
            Ok(self.0.borrow_mut().remove(k).is_some())
        }
    }

    /// A UDP flow client -> frontend translated to a backend: both entries.
    fn udp_flow(fake: &Fake, port: u16, fwd_seen: u32, rev_seen: u32) -> (CtKey, CtKey) {
        let fwd_key = CtKey {
            saddr: 1,
            daddr: 2,
            sport: port,
            dport: 53,
            proto: proto::UDP,
            dir: CT_DIR_SERVICE,
            _pad: [0; 2],
        };
        let fwd = CtEntry {
            new_daddr: 3,
            new_dport: 5353,
            flags: CT_F_REWRITE_DST | CT_F_REPLY_SEEN,
            svc_id: 7,
            last_seen: fwd_seen,
            ..Default::default()
        };
        let rev_key = fwd_key.partner(&fwd, CT_DIR_REPLY);
        let rev = CtEntry {
            last_seen: rev_seen,
            ..fwd.inverse(&fwd_key)
        };
        fake.0.borrow_mut().insert(fwd_key, fwd);
        fake.0.borrow_mut().insert(rev_key, rev);
        (fwd_key, rev_key)
    }

    #[test]
    fn a_sweep_straddling_a_second_keeps_entries_stamped_in_it() {
        let fake = std::rc::Rc::new(Fake::default());
        // The sweep read 1000; while it walks, the datapath stamps a live
        // flow with 1001. The old arithmetic took 1000 - 1001 for 136 years.
        let (a, b) = udp_flow(&fake, 1, 1001, 1001);
        let (c, d) = udp_flow(&fake, 2, 900, 900);
        let mut map = fake.clone();
        let sweep = sweep_map(&mut map, Policy::Expired, &mut || 1000).unwrap();
        assert_eq!(sweep.removed, 2);
        let left = fake.0.borrow();
        assert!(left.contains_key(&a) && left.contains_key(&b));
        assert!(!left.contains_key(&c) && !left.contains_key(&d));
    }

    #[test]
    fn an_entry_refreshed_between_walk_and_delete_is_kept() {
        let fake = std::rc::Rc::new(Fake::default());
        let (a, b) = udp_flow(&fake, 1, 900, 900);
        let mut reads = 0;
        let refresher = fake.clone();
        let mut clock = || {
            reads += 1;
            if reads == 2 {
                // A packet arrives after the walk, before the delete.
                for e in refresher.0.borrow_mut().values_mut() {
                    e.last_seen = 1000;
                }
            }
            1000
        };
        let mut map = fake.clone();
        let sweep = sweep_map(&mut map, Policy::Expired, &mut clock).unwrap();
        assert_eq!(sweep.removed, 0);
        assert!(fake.0.borrow().contains_key(&a) && fake.0.borrow().contains_key(&b));
    }

    #[test]
    fn an_expired_entry_whose_partner_lives_is_kept() {
        let fake = std::rc::Rc::new(Fake::default());
        // The reply side went quiet, the client side did not (it refreshes
        // its partner at most once a second, and recreates it if missing).
        let (fwd, rev) = udp_flow(&fake, 1, 1000, 930);
        let mut map = fake.clone();
        let sweep = sweep_map(&mut map, Policy::Expired, &mut || 1000).unwrap();
        assert_eq!(sweep.removed, 0);
        assert!(fake.0.borrow().contains_key(&fwd) && fake.0.borrow().contains_key(&rev));
        // Once both are dead, both go, and a lone dead entry goes too.
        fake.0.borrow_mut().get_mut(&fwd).unwrap().last_seen = 930;
        let (lone, partner) = udp_flow(&fake, 2, 900, 900);
        fake.0.borrow_mut().remove(&partner);
        let sweep = sweep_map(&mut map, Policy::Expired, &mut || 1000).unwrap();
        assert_eq!(sweep.removed, 3);
        assert!(!fake.0.borrow().contains_key(&lone));
        assert_eq!(sweep.remaining, 0);
    }

    #[test]
    fn class_stats_account_and_evictions() {
        let s = ClassStats {
            created: 100,
            removed: 30,
            ..Default::default()
        };
        assert_eq!(s.accounted(), 70);
        assert_eq!(s.evicted(70), 0);
        assert_eq!(s.evicted(50), 20);
        assert_eq!(s.evicted(90), 0);
        assert_eq!(CtClass::of(proto::TCP), CtClass::Tcp);
        assert_eq!(CtClass::of(proto::UDP), CtClass::Any);
        assert_eq!(CtClass::of(proto::ICMP), CtClass::Any);
    }
}
