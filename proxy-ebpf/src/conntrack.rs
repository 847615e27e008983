//! Connection tracking: the two CT tables, flow creation, per-packet state,
//! partner refresh and recreation, and retiring dead state.
//!
//! TCP flows live in `CT_TCP`, everything else in `CT_ANY` (see
//! `proxy_common::ct`). Code that touches an entry is generic over the
//! [`Table`] it lives in, and each program picks the table once, from the
//! packet's protocol: the verifier then checks each table's path on its own
//! instead of every mix of the two.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns},
};
use proxy_common::{
    Backend, CtEntry, CtKey, CtStats, FragKey, FragPorts,
    ct::{
        CT_DIR_EGRESS, CT_DIR_REPLY, CT_DIR_SERVICE, CT_F_ASSURED, CT_F_FIB_ROUTE,
        CT_F_FIN_BACKEND, CT_F_FIN_CLIENT, CT_F_HAIRPIN, CT_F_REDIRECT_BACK, CT_F_REPLY_SEEN,
        CT_F_REWRITE_DST, CT_F_REWRITE_SRC, CT_F_RST, CT_F_USED, CT_STATE_MASK, CT_STATS_ANY,
        CT_STATS_TCP,
    },
    proto, reason,
    service::HAIRPIN_SNAT_ADDR,
    stats::write_error,
};

use crate::{
    maps::{CT_ANY, CT_STATS, CT_TCP, FRAGS, count_write_error},
    packet::{FRAG_FIRST, Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    verdict::Verdict,
};

pub const HAIRPIN_ADDR: u32 = u32::from_ne_bytes(HAIRPIN_SNAT_ADDR);

/// Map helper errors, as the helpers return them (negative errno).
const EEXIST: i32 = -17;
const E2BIG: i32 = -7;

/// One of the two CT maps.
pub trait Table {
    /// Its row in `CT_STATS`.
    const STATS: u32;
    fn get(key: &CtKey) -> Option<*mut CtEntry>;
    fn insert(key: &CtKey, e: &CtEntry, flags: u64) -> Result<(), i32>;
    fn remove(key: &CtKey) -> Result<(), i32>;
}

macro_rules! table {
    ($(#[$doc:meta])* $name:ident, $map:ident, $row:ident) => {
        $(#[$doc])*
        pub struct $name;

        impl Table for $name {
            const STATS: u32 = $row;
            #[inline(always)]
            fn get(key: &CtKey) -> Option<*mut CtEntry> {
                $map.get_ptr_mut(key)
            }
            #[inline(always)]
            fn insert(key: &CtKey, e: &CtEntry, flags: u64) -> Result<(), i32> {
                $map.insert(key, e, flags)
            }
            #[inline(always)]
            fn remove(key: &CtKey) -> Result<(), i32> {
                $map.remove(key)
            }
        }
    };
}

table!(
    /// `CT_TCP`.
    Tcp,
    CT_TCP,
    CT_STATS_TCP
);
table!(
    /// `CT_ANY`.
    Any,
    CT_ANY,
    CT_STATS_ANY
);

/// Calls `f::<Tcp>(args)` or `f::<Any>(args)`, by the packet's protocol:
/// each program picks its table once.
macro_rules! per_table {
    ($pkt:expr, $f:ident($($arg:expr),* $(,)?)) => {
        if $pkt.proto == proto::TCP {
            $f::<$crate::conntrack::Tcp>($($arg),*)
        } else {
            $f::<$crate::conntrack::Any>($($arg),*)
        }
    };
}
pub(crate) use per_table;

/// A copy of the entry under `key`, from the table its protocol uses.
#[inline(always)]
pub fn lookup_copy(key: &CtKey) -> Option<CtEntry> {
    let p = if key.proto == proto::TCP {
        Tcp::get(key)
    } else {
        Any::get(key)
    }?;
    // SAFETY: pointer to a live map value, copied at once.
    Some(unsafe { *p })
}

#[inline(always)]
fn count<C: Table>(f: impl FnOnce(&mut CtStats)) {
    if let Some(s) = CT_STATS.get_ptr_mut(C::STATS) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { f(&mut *s) }
    }
}

/// Why a new flow's state could not be stored.
pub enum CreateError {
    /// The TCP table is full.
    Full,
    /// Every masquerade port tried was taken.
    PortsExhausted,
    Other,
}

impl CreateError {
    /// What the first packet of the flow that could not be stored gets.
    #[inline(always)]
    pub fn verdict(self) -> Verdict {
        Verdict::drop(match self {
            CreateError::Full => reason::DROP_CT_FULL,
            CreateError::PortsExhausted => reason::DROP_SNAT_PORTS_EXHAUSTED,
            CreateError::Other => reason::DROP_CT_CREATE,
        })
    }
}

/// Stores a new entry, replacing a dead one under the same key.
#[inline(always)]
fn put<C: Table>(key: &CtKey, e: &CtEntry) -> Result<(), CreateError> {
    match C::insert(key, e, BPF_NOEXIST as u64) {
        Ok(()) => {
            count::<C>(|s| s.created += 1);
            Ok(())
        }
        // A dead flow's entry (or another CPU's, for the same first packet).
        Err(EEXIST) => C::insert(key, e, BPF_ANY as u64).map_err(|_| CreateError::Other),
        Err(E2BIG) => {
            count::<C>(|s| s.full += 1);
            Err(CreateError::Full)
        }
        Err(_) => Err(CreateError::Other),
    }
}

/// Monotonic seconds, the clock of every CT timestamp. The coarse clock
/// (tick-granular, CLOCK_MONOTONIC_COARSE) reads no hardware counter, and
/// second-granular timeouts need nothing finer.
#[inline(always)]
pub fn now() -> u32 {
    // SAFETY: helper without arguments.
    (unsafe { bpf_ktime_get_coarse_ns() } / 1_000_000_000) as u32
}

#[inline(always)]
pub fn key(pkt: &Packet, dir: u8) -> CtKey {
    CtKey {
        saddr: pkt.saddr,
        daddr: pkt.daddr,
        sport: pkt.sport,
        dport: pkt.dport,
        proto: pkt.proto,
        dir,
        _pad: [0; 2],
    }
}

#[inline(always)]
pub fn is_pure_syn(pkt: &Packet) -> bool {
    pkt.proto == proto::TCP && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// Whether a forward entry may no longer carry this packet: dead by its
/// timeout, or a fresh TCP SYN reusing the tuple of a connection that was
/// established or closed (a new connection gets a new backend choice).
#[inline(always)]
pub fn is_stale(e: &CtEntry, pkt: &Packet, now: u32) -> bool {
    e.expired(pkt.proto, now) || (is_pure_syn(pkt) && e.flags & CT_F_USED != 0)
}

/// Whether a reply entry may no longer translate this packet: dead by its
/// timeout (a stale entry never translates, or every packet it rewrote
/// would keep it alive), or a SYN in the reply direction of a connection
/// that was established or closed: the SYN-ACK of a new connection that
/// reuses the client's port towards the backend itself, which must reach
/// the client as it is.
#[inline(always)]
pub fn reply_is_stale(e: &CtEntry, pkt: &Packet, now: u32) -> bool {
    e.expired(pkt.proto, now)
        || (pkt.proto == proto::TCP && pkt.tcp_flags & TCP_SYN != 0 && e.flags & CT_F_USED != 0)
}

/// Removes a dead entry and its partner (found through the entry's own
/// rewrite of `key`), so that it captures nothing more.
#[inline(always)]
pub fn retire<C: Table>(key: &CtKey, e: &CtEntry) {
    let partner = key.partner(e, key.partner_dir(e));
    let mut removed = 0;
    if C::remove(key).is_ok() {
        removed += 1;
    }
    if C::remove(&partner).is_ok() {
        removed += 1;
    }
    count::<C>(|s| s.removed += removed);
}

/// A pod's fresh SYN to a destination that is no service: if a dead or
/// closed translated flow's reply entry matches the connection's replies
/// (the pod reuses a port it last used towards a ClusterIP, now towards the
/// backend itself), remove that state before the SYN-ACK can meet it.
#[inline(always)]
pub fn clear_port_reuse(pkt: &Packet, now: u32) {
    if !is_pure_syn(pkt) {
        return;
    }
    let reply = CtKey {
        saddr: pkt.daddr,
        daddr: pkt.saddr,
        sport: pkt.dport,
        dport: pkt.sport,
        proto: pkt.proto,
        dir: CT_DIR_REPLY,
        _pad: [0; 2],
    };
    if let Some(p) = Tcp::get(&reply) {
        // SAFETY: pointer to a live map value, copied at once.
        let e = unsafe { *p };
        if e.expired(pkt.proto, now) || e.flags & CT_F_USED != 0 {
            retire::<Tcp>(&reply, &e);
        }
    }
}

/// A new entry with `pkt` accounted as its first packet.
#[inline(always)]
fn first_entry(pkt: &Packet, flags: u16, svc_id: u32, backend_id: u32, now: u32) -> CtEntry {
    CtEntry {
        new_saddr: 0,
        new_daddr: 0,
        new_sport: 0,
        new_dport: 0,
        flags: flags | client_state_bits(pkt),
        _pad0: 0,
        svc_id,
        backend_id,
        created: now,
        last_seen: now,
        synced: now,
        ifindex: 0,
        packets: 1,
        bytes: pkt.len as u64,
    }
}

/// The reply entry that goes with a forward entry: accounted nothing yet.
#[inline(always)]
fn reply_entry(fwd: &CtEntry, flags: u16) -> CtEntry {
    CtEntry {
        flags: flags | (fwd.flags & CT_STATE_MASK),
        packets: 0,
        bytes: 0,
        ..*fwd
    }
}

/// Tries per new SNATed flow before giving up on a free port.
const SNAT_TRIES: u32 = 8;

/// Claims a source port for an SNATed flow: inserts `rev` under `rev_key`
/// with its destination port set to candidates from `[min, max]` until one
/// is free. BPF_NOEXIST makes the claim atomic: two CPUs never hand out the
/// same (peer, port) pair.
#[inline(always)]
fn claim_port<C: Table>(
    mut rev_key: CtKey,
    rev: &CtEntry,
    min: u16,
    max: u16,
) -> Result<u16, CreateError> {
    let span = u32::from(max.saturating_sub(min)) + 1;
    if span == 0 {
        return Err(CreateError::PortsExhausted);
    }
    // SAFETY: plain helper call.
    let start = unsafe { bpf_get_prandom_u32() };
    for i in 0..SNAT_TRIES {
        // A large odd stride spreads the retries over the range.
        let port = min + (start.wrapping_add(i.wrapping_mul(40_503)) % span) as u16;
        rev_key.dport = port.to_be();
        match C::insert(&rev_key, rev, BPF_NOEXIST as u64) {
            Ok(()) => {
                count::<C>(|s| s.created += 1);
                return Ok(port);
            }
            Err(E2BIG) => {
                count::<C>(|s| s.full += 1);
                return Err(CreateError::Full);
            }
            Err(_) => {}
        }
    }
    Err(CreateError::PortsExhausted)
}

/// A new flow from a pod to a Service: DNAT to `be`, and when the pod is
/// its own backend (hairpin) SNAT to the hairpin address as well. Returns
/// the service entry.
#[inline(always)]
pub fn create_service_flow<C: Table>(
    pkt: &Packet,
    svc_id: u32,
    backend_id: u32,
    be: &Backend,
    ifindex: u32,
    now: u32,
) -> Result<CtEntry, CreateError> {
    let hairpin = be.addr == pkt.saddr;
    let (client_addr, extra) = if hairpin {
        (
            HAIRPIN_ADDR,
            CT_F_REWRITE_SRC | CT_F_HAIRPIN | CT_F_REDIRECT_BACK,
        )
    } else {
        (pkt.saddr, 0)
    };
    let mut fwd = first_entry(pkt, CT_F_REWRITE_DST | extra, svc_id, backend_id, now);
    fwd.new_saddr = client_addr;
    fwd.new_sport = pkt.sport;
    fwd.new_daddr = be.addr;
    fwd.new_dport = be.port;
    fwd.ifindex = ifindex;
    let mut rev = reply_entry(
        &fwd,
        CT_F_REWRITE_SRC | if hairpin { extra | CT_F_REWRITE_DST } else { 0 },
    );
    rev.new_saddr = pkt.daddr;
    rev.new_sport = pkt.dport;
    rev.new_daddr = pkt.saddr;
    rev.new_dport = pkt.sport;
    let rev_key = CtKey {
        saddr: be.addr,
        daddr: client_addr,
        sport: be.port,
        dport: pkt.sport,
        proto: pkt.proto,
        dir: CT_DIR_REPLY,
        _pad: [0; 2],
    };
    // The reply entry first: once the service entry exists, packets are
    // forwarded and replies may follow at once.
    put::<C>(&rev_key, &rev)?;
    put::<C>(&key(pkt, CT_DIR_SERVICE), &fwd)?;
    Ok(fwd)
}

/// Where an external flow's SNAT source comes from.
pub struct Snat {
    pub addr: u32,
    pub port_min: u16,
    pub port_max: u16,
}

/// A new flow from outside the cluster to a NodePort, LoadBalancer or
/// externalIP frontend: DNAT to `be`, and with `snat` also a source the
/// backend's reply must come back to. Returns the service entry.
#[inline(always)]
pub fn create_external_flow<C: Table>(
    pkt: &Packet,
    svc_id: u32,
    backend_id: u32,
    be: &Backend,
    snat: Option<Snat>,
    now: u32,
) -> Result<CtEntry, CreateError> {
    let mut fwd = first_entry(pkt, CT_F_REWRITE_DST, svc_id, backend_id, now);
    fwd.new_daddr = be.addr;
    fwd.new_dport = be.port;
    let mut rev = reply_entry(&fwd, CT_F_REWRITE_SRC);
    rev.new_saddr = pkt.daddr;
    rev.new_sport = pkt.dport;
    let mut rev_key = CtKey {
        saddr: be.addr,
        daddr: pkt.saddr,
        sport: be.port,
        dport: pkt.sport,
        proto: pkt.proto,
        dir: CT_DIR_REPLY,
        _pad: [0; 2],
    };
    match snat {
        None => put::<C>(&rev_key, &rev)?,
        Some(s) => {
            rev.flags |= CT_F_REWRITE_DST | CT_F_FIB_ROUTE;
            rev.new_daddr = pkt.saddr;
            rev.new_dport = pkt.sport;
            rev_key.daddr = s.addr;
            let port = claim_port::<C>(rev_key, &rev, s.port_min, s.port_max)?;
            fwd.flags |= CT_F_REWRITE_SRC | CT_F_FIB_ROUTE;
            fwd.new_saddr = s.addr;
            fwd.new_sport = port.to_be();
        }
    }
    put::<C>(&key(pkt, CT_DIR_SERVICE), &fwd)?;
    Ok(fwd)
}

/// A new masqueraded flow: `pkt` (a pod's packet leaving the cluster) gets
/// `s.addr` and a free port as its source. Returns the forward entry.
#[inline(always)]
pub fn create_masquerade_flow<C: Table>(
    pkt: &Packet,
    s: Snat,
    now: u32,
) -> Result<CtEntry, CreateError> {
    let mut fwd = first_entry(pkt, CT_F_REWRITE_SRC, 0, 0, now);
    fwd.new_saddr = s.addr;
    let mut rev = reply_entry(&fwd, CT_F_REWRITE_DST);
    rev.new_saddr = 0;
    rev.new_daddr = pkt.saddr;
    rev.new_dport = pkt.sport;
    let rev_key = CtKey {
        saddr: pkt.daddr,
        daddr: s.addr,
        sport: pkt.dport,
        dport: 0,
        proto: pkt.proto,
        dir: CT_DIR_REPLY,
        _pad: [0; 2],
    };
    let port = claim_port::<C>(rev_key, &rev, s.port_min, s.port_max)?;
    fwd.new_sport = port.to_be();
    put::<C>(&key(pkt, CT_DIR_EGRESS), &fwd)?;
    Ok(fwd)
}

/// The TCP state bits a packet sets, by direction.
#[inline(always)]
fn state_bits(pkt: &Packet, from_client: bool) -> u16 {
    let mut bits = 0;
    if pkt.proto == proto::TCP {
        if pkt.tcp_flags & TCP_RST != 0 {
            bits |= CT_F_RST;
        }
        if pkt.tcp_flags & TCP_FIN != 0 {
            bits |= if from_client {
                CT_F_FIN_CLIENT
            } else {
                CT_F_FIN_BACKEND
            };
        }
        if !from_client && pkt.tcp_flags & TCP_ACK != 0 {
            bits |= CT_F_REPLY_SEEN;
        }
    } else if !from_client {
        bits |= CT_F_REPLY_SEEN;
    }
    bits
}

#[inline(always)]
fn client_state_bits(pkt: &Packet) -> u16 {
    state_bits(pkt, true)
}

/// Accounts a packet on its entry and returns the TCP state bits it set anew.
/// `from_client` is the packet's direction within the connection.
#[inline(always)]
pub fn observe(e: *mut CtEntry, pkt: &Packet, now: u32, from_client: bool) -> u16 {
    let mut bits = state_bits(pkt, from_client);
    // SAFETY: `e` points into a CT map value that stays valid for this run.
    unsafe {
        // The client's ACK after the backend's answer completes the
        // handshake.
        if from_client
            && pkt.proto == proto::TCP
            && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_ACK
            && (*e).flags & CT_F_REPLY_SEEN != 0
        {
            bits |= CT_F_ASSURED;
        }
        let new_bits = bits & !(*e).flags;
        (*e).flags |= new_bits;
        (*e).last_seen = now;
        (*e).packets += 1;
        (*e).bytes += pkt.len as u64;
        new_bits
    }
}

/// Refreshes the other entry of the connection: at once when the TCP state
/// changed, otherwise at most once a second. `before` is the packet's key
/// (this entry's key) and `pkt` the packet after its rewrite, so its
/// swapped tuple is the partner's key. A partner that vanished (evicted,
/// removed by hand) is recreated from this entry, so the flow's other
/// direction keeps being translated.
#[inline(always)]
pub fn sync_partner<C: Table>(
    e: *mut CtEntry,
    before: &CtKey,
    pkt: &Packet,
    partner_dir: u8,
    new_bits: u16,
    now: u32,
) {
    // SAFETY: as in `observe`.
    unsafe {
        if new_bits == 0 && (*e).synced == now {
            return;
        }
        (*e).synced = now;
        let partner = CtKey {
            saddr: pkt.daddr,
            daddr: pkt.saddr,
            sport: pkt.dport,
            dport: pkt.sport,
            proto: pkt.proto,
            dir: partner_dir,
            _pad: [0; 2],
        };
        match C::get(&partner) {
            Some(p) => {
                (*p).flags |= (*e).flags & CT_STATE_MASK;
                (*p).last_seen = now;
                (*p).synced = now;
            }
            None => {
                let fresh = (*e).inverse(before);
                match C::insert(&partner, &fresh, BPF_NOEXIST as u64) {
                    Ok(()) => count::<C>(|s| {
                        s.created += 1;
                        s.recreated += 1;
                    }),
                    // Another CPU recreated it first.
                    Err(EEXIST) => {}
                    Err(_) => count_write_error(write_error::CT_PARTNER),
                }
            }
        }
    }
}

/// Remembers the ports of a translated first fragment so later fragments of
/// the datagram (which carry no L4 header) follow the same flow.
#[inline(always)]
pub fn remember_fragment(pkt: &Packet) {
    if pkt.frag != FRAG_FIRST {
        return;
    }
    let k = FragKey {
        saddr: pkt.saddr,
        daddr: pkt.daddr,
        id: pkt.ip_id,
        proto: pkt.proto,
        _pad: 0,
    };
    let v = FragPorts {
        sport: pkt.sport,
        dport: pkt.dport,
    };
    if FRAGS.insert(k, v, 0).is_err() {
        count_write_error(write_error::FRAGMENT);
    }
}

/// Fills in the ports of a later fragment from its first fragment.
#[inline(always)]
pub fn fragment_ports(pkt: &mut Packet) -> bool {
    let k = FragKey {
        saddr: pkt.saddr,
        daddr: pkt.daddr,
        id: pkt.ip_id,
        proto: pkt.proto,
        _pad: 0,
    };
    // SAFETY: read-only copy of a map value.
    match unsafe { FRAGS.get(k) } {
        Some(p) => {
            pkt.sport = p.sport;
            pkt.dport = p.dport;
            true
        }
        None => false,
    }
}
