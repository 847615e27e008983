//! Connection tracking.
//!
//! Every translated connection has two entries:
//! - the *forward* entry, keyed by the tuple the client sent: towards a
//!   frontend (`CT_DIR_SERVICE`) or, for masquerade, towards outside the
//!   cluster (`CT_DIR_EGRESS`); it holds the chosen backend, so packets of
//!   the flow keep their backend;
//! - the *reply* entry (`CT_DIR_REPLY`), keyed by the tuple of the replies
//!   as they appear on the wire, holding the rewrite that restores the
//!   original addresses.
//!
//! Each entry says how to rewrite a matching packet (`new_*` fields, applied
//! when `CT_F_REWRITE_SRC` / `CT_F_REWRITE_DST` are set), so DNAT, hairpin and
//! SNAT flows share one code path. Swapping the rewritten tuple of a packet
//! gives the key of the partner entry ([`CtKey::partner`]); each side refreshes
//! its partner at most once a second (and at once on TCP state changes), so
//! both stay alive while either direction carries traffic, and a side that
//! finds its partner gone recreates it.
//!
//! TCP entries live in a plain hash (`sluice_ct4_tcp_v2`), everything else in
//! an LRU hash (`sluice_ct4_any_v2`): a flood of UDP flows or SYNs can evict
//! nothing but other non-TCP flows, and a full TCP map refuses new connections
//! instead of breaking established ones (user space removes what expired).

/// Key of `sluice_ct4_tcp_v2` and `sluice_ct4_any_v2`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtKey {
    /// Source IPv4 address, NBO.
    pub saddr: u32,
    /// Destination IPv4 address, NBO.
    pub daddr: u32,
    /// Source port (ICMP: echo id), NBO.
    pub sport: u16,
    /// Destination port, NBO.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// [`CT_DIR_SERVICE`], [`CT_DIR_REPLY`] or [`CT_DIR_EGRESS`].
    pub dir: u8,
    pub _pad: [u8; 2],
}
crate::assert_size!(CtKey, 16);

/// Entry keyed by the client's tuple towards a frontend.
pub const CT_DIR_SERVICE: u8 = 1;
/// Entry keyed by the reply tuple of a translated flow.
pub const CT_DIR_REPLY: u8 = 2;
/// Entry keyed by a pod's tuple towards outside the cluster (masquerade).
pub const CT_DIR_EGRESS: u8 = 3;

/// Value of the CT maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtEntry {
    /// New source address (with `CT_F_REWRITE_SRC`), NBO.
    pub new_saddr: u32,
    /// New destination address (with `CT_F_REWRITE_DST`), NBO.
    pub new_daddr: u32,
    /// New source port, NBO.
    pub new_sport: u16,
    /// New destination port, NBO.
    pub new_dport: u16,
    /// `CT_F_*`.
    pub flags: u16,
    pub _pad0: u16,
    /// Frontend id (counters, names).
    pub svc_id: u32,
    /// Backend id chosen for the flow.
    pub backend_id: u32,
    /// Seconds of CLOCK_MONOTONIC_COARSE (`bpf_ktime_get_coarse_ns`) when
    /// the flow was created.
    pub created: u32,
    /// Monotonic seconds of the last packet in this entry's direction, or of
    /// the last refresh by the partner entry.
    pub last_seen: u32,
    /// Monotonic seconds of the last refresh of the partner entry.
    pub synced: u32,
    /// Interface the flow's packets enter on (hairpin turns replies around here).
    pub ifindex: u32,
    /// Packets seen in this entry's direction.
    pub packets: u64,
    /// Bytes seen in this entry's direction.
    pub bytes: u64,
}
crate::assert_size!(CtEntry, 56);

pub const CT_F_REWRITE_SRC: u16 = 1 << 0;
pub const CT_F_REWRITE_DST: u16 = 1 << 1;
/// The packet is sent back out of the interface it came in on (hairpin).
pub const CT_F_REDIRECT_BACK: u16 = 1 << 2;
/// The backend has answered (TCP: a segment with ACK from it, i.e. the SYN-ACK).
pub const CT_F_REPLY_SEEN: u16 = 1 << 3;
/// TCP: FIN seen from the client.
pub const CT_F_FIN_CLIENT: u16 = 1 << 4;
/// TCP: FIN seen from the backend.
pub const CT_F_FIN_BACKEND: u16 = 1 << 5;
/// TCP: RST seen in either direction.
pub const CT_F_RST: u16 = 1 << 6;
/// The flow is a pod reaching itself through a service.
pub const CT_F_HAIRPIN: u16 = 1 << 7;
/// The datapath routes the flow's packets itself (FIB lookup and redirect):
/// after SNAT at ingress their source is one of this node's addresses,
/// which the kernel's input path would drop as martian.
pub const CT_F_FIB_ROUTE: u16 = 1 << 8;
/// TCP: the client acknowledged after the backend answered: the three-way
/// handshake is complete (netfilter's "assured"). Only then does an entry get
/// the established lifetime; half-open flows keep the short SYN lifetime.
pub const CT_F_ASSURED: u16 = 1 << 9;

/// Flags both entries of a connection share (kept in step by partner refresh).
pub const CT_STATE_MASK: u16 =
    CT_F_REPLY_SEEN | CT_F_ASSURED | CT_F_FIN_CLIENT | CT_F_FIN_BACKEND | CT_F_RST;
/// The state bits that say a TCP connection was answered or is closing: a
/// fresh SYN on such a tuple is a new connection (port reuse), and a SYN-ACK
/// matching such a reply entry belongs to some other connection.
pub const CT_F_USED: u16 = CT_F_ASSURED | CT_F_FIN_CLIENT | CT_F_FIN_BACKEND | CT_F_RST;

/// Timeouts in seconds, as Cilium's defaults: a TCP connection whose handshake
/// is not complete, an established one, a closing one, UDP and anything else.
pub const CT_LIFETIME_TCP_SYN: u32 = 60;
pub const CT_LIFETIME_TCP_ESTABLISHED: u32 = 21_600;
pub const CT_LIFETIME_TCP_CLOSE: u32 = 10;
pub const CT_LIFETIME_UDP: u32 = 60;
pub const CT_LIFETIME_OTHER: u32 = 60;

/// Default capacities of the TCP CT map (two entries per connection), the
/// non-TCP CT map and the fragment map.
pub const DEFAULT_MAX_CT_TCP_ENTRIES: u32 = 262_144;
pub const DEFAULT_MAX_CT_ANY_ENTRIES: u32 = 131_072;
pub const DEFAULT_MAX_FRAG_ENTRIES: u32 = 8_192;

/// Idle time after which an entry with these flags is dead.
#[inline(always)]
pub const fn lifetime(proto: u8, flags: u16) -> u32 {
    if proto == crate::proto::TCP {
        if flags & (CT_F_RST | CT_F_FIN_CLIENT | CT_F_FIN_BACKEND) != 0 {
            CT_LIFETIME_TCP_CLOSE
        } else if flags & CT_F_ASSURED != 0 {
            CT_LIFETIME_TCP_ESTABLISHED
        } else {
            CT_LIFETIME_TCP_SYN
        }
    } else if proto == crate::proto::UDP {
        CT_LIFETIME_UDP
    } else {
        CT_LIFETIME_OTHER
    }
}

/// Seconds from `then` to `now` on the wrapping 32-bit clock, negative when
/// `then` is later than `now`: another CPU (or the datapath, while user space
/// walks the map) may stamp an entry with a second this reader has not seen
/// tick yet. Unsigned wrapping arithmetic would make that entry 136 years old.
#[inline(always)]
pub const fn age(now: u32, then: u32) -> i32 {
    now.wrapping_sub(then) as i32
}

impl CtEntry {
    /// Whether the entry is dead at monotonic second `now`. An entry stamped
    /// after `now` is alive.
    #[inline(always)]
    pub const fn expired(&self, proto: u8, now: u32) -> bool {
        // Lifetimes are far below i32::MAX seconds.
        age(now, self.last_seen) > lifetime(proto, self.flags) as i32
    }

    /// Seconds left before the entry expires at `now` (0 when expired).
    pub const fn expires_in(&self, proto: u8, now: u32) -> u32 {
        let left = lifetime(proto, self.flags) as i64 - age(now, self.last_seen) as i64;
        if left < 0 { 0 } else { left as u32 }
    }

    /// The tuple `(saddr, daddr, sport, dport)` of a packet matching `key`
    /// after this entry's rewrite.
    #[inline(always)]
    pub const fn rewritten(&self, key: &CtKey) -> (u32, u32, u16, u16) {
        let (daddr, dport) = if self.flags & CT_F_REWRITE_DST != 0 {
            (self.new_daddr, self.new_dport)
        } else {
            (key.daddr, key.dport)
        };
        let (saddr, sport) = if self.flags & CT_F_REWRITE_SRC != 0 {
            (self.new_saddr, self.new_sport)
        } else {
            (key.saddr, key.sport)
        };
        (saddr, daddr, sport, dport)
    }

    /// The entry for the other direction of the connection whose entry this
    /// is, for a packet matching `key` (the tuple before the rewrite): it
    /// undoes this entry's rewrite. Used to recreate a partner that vanished.
    #[inline(always)]
    pub const fn inverse(&self, key: &CtKey) -> CtEntry {
        let mut flags =
            self.flags & (CT_STATE_MASK | CT_F_HAIRPIN | CT_F_REDIRECT_BACK | CT_F_FIB_ROUTE);
        if self.flags & CT_F_REWRITE_DST != 0 {
            flags |= CT_F_REWRITE_SRC;
        }
        if self.flags & CT_F_REWRITE_SRC != 0 {
            flags |= CT_F_REWRITE_DST;
        }
        CtEntry {
            new_saddr: key.daddr,
            new_daddr: key.saddr,
            new_sport: key.dport,
            new_dport: key.sport,
            flags,
            _pad0: 0,
            svc_id: self.svc_id,
            backend_id: self.backend_id,
            created: self.created,
            last_seen: self.last_seen,
            synced: self.synced,
            ifindex: self.ifindex,
            packets: 0,
            bytes: 0,
        }
    }

    /// The direction of the partner of a reply entry: masquerade flows
    /// carry no frontend id.
    #[inline(always)]
    pub const fn forward_dir(&self) -> u8 {
        if self.svc_id == 0 {
            CT_DIR_EGRESS
        } else {
            CT_DIR_SERVICE
        }
    }
}

impl CtKey {
    /// The key of the other entry of the connection: the tuple of a packet
    /// matching `self` after `e`'s rewrite, swapped, under `dir`.
    #[inline(always)]
    pub const fn partner(&self, e: &CtEntry, dir: u8) -> CtKey {
        let (saddr, daddr, sport, dport) = e.rewritten(self);
        CtKey {
            saddr: daddr,
            daddr: saddr,
            sport: dport,
            dport: sport,
            proto: self.proto,
            dir,
            _pad: [0; 2],
        }
    }

    /// The direction of this entry's partner.
    #[inline(always)]
    pub const fn partner_dir(&self, e: &CtEntry) -> u8 {
        if self.dir == CT_DIR_REPLY {
            e.forward_dir()
        } else {
            CT_DIR_REPLY
        }
    }
}

/// Rows of `sluice_ctst_v1`, the per-CPU counters of the CT maps. The
/// datapath adds to the first two; user space keeps its own changes (the
/// sweep's removals, migrated entries) in the last two, on CPU 0, so the
/// two writers never share a value.
pub const CT_STATS_TCP: u32 = 0;
pub const CT_STATS_ANY: u32 = 1;
pub const CT_STATS_TCP_USER: u32 = 2;
pub const CT_STATS_ANY_USER: u32 = 3;
pub const CT_STATS_ROWS: u32 = 4;

/// Value of `sluice_ctst_v1`. For a plain hash, `created - removed` of both
/// writers is the number of entries; for the LRU map the difference to the
/// entries found by a walk is what the kernel evicted.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtStats {
    /// Entries inserted under a key that had none.
    pub created: u64,
    /// Entries deleted.
    pub removed: u64,
    /// Inserts that failed because the map was full.
    pub full: u64,
    /// Partner entries recreated after they vanished (evicted, or removed by
    /// hand).
    pub recreated: u64,
}
crate::assert_size!(CtStats, 32);

impl core::ops::Add for CtStats {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self {
            created: self.created + o.created,
            removed: self.removed + o.removed,
            full: self.full + o.full,
            recreated: self.recreated + o.recreated,
        }
    }
}

/// Human-readable state of a TCP connection from its flags.
pub const fn tcp_state_name(flags: u16) -> &'static str {
    if flags & CT_F_RST != 0 {
        "RESET"
    } else if flags & CT_F_FIN_CLIENT != 0 && flags & CT_F_FIN_BACKEND != 0 {
        "CLOSED"
    } else if flags & (CT_F_FIN_CLIENT | CT_F_FIN_BACKEND) != 0 {
        "CLOSING"
    } else if flags & CT_F_ASSURED != 0 {
        "ESTABLISHED"
    } else if flags & CT_F_REPLY_SEEN != 0 {
        "SYN_RECV"
    } else {
        "SYN_SENT"
    }
}

/// Key of `sluice_frag4_v1`: identifies one fragmented datagram.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    /// Source address, NBO.
    pub saddr: u32,
    /// Destination address, NBO.
    pub daddr: u32,
    /// IP identification, NBO.
    pub id: u16,
    pub proto: u8,
    pub _pad: u8,
}
crate::assert_size!(FragKey, 12);

/// Value of `sluice_frag4_v1`: the L4 ports from the first fragment.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragPorts {
    /// NBO.
    pub sport: u16,
    /// NBO.
    pub dport: u16,
}
crate::assert_size!(FragPorts, 4);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{TCP, UDP};

    #[test]
    fn tcp_lifetime_follows_state() {
        assert_eq!(lifetime(TCP, 0), CT_LIFETIME_TCP_SYN);
        // Answered but not acknowledged by the client: still half-open.
        assert_eq!(lifetime(TCP, CT_F_REPLY_SEEN), CT_LIFETIME_TCP_SYN);
        assert_eq!(
            lifetime(TCP, CT_F_REPLY_SEEN | CT_F_ASSURED),
            CT_LIFETIME_TCP_ESTABLISHED
        );
        assert_eq!(
            lifetime(TCP, CT_F_ASSURED | CT_F_FIN_CLIENT),
            CT_LIFETIME_TCP_CLOSE
        );
        assert_eq!(lifetime(TCP, CT_F_RST), CT_LIFETIME_TCP_CLOSE);
        assert_eq!(lifetime(UDP, CT_F_REPLY_SEEN), CT_LIFETIME_UDP);
    }

    #[test]
    fn expiry_survives_clock_wrap_and_is_strict() {
        let e = CtEntry {
            last_seen: u32::MAX - 5,
            ..Default::default()
        };
        // 10 seconds later across the wrap: still inside the 60 s SYN lifetime.
        assert!(!e.expired(TCP, 4));
        let e = CtEntry {
            last_seen: 100,
            ..Default::default()
        };
        assert!(!e.expired(UDP, 160));
        assert!(e.expired(UDP, 161));
        assert_eq!(e.expires_in(UDP, 150), 10);
        assert_eq!(e.expires_in(UDP, 170), 0);
    }

    #[test]
    fn an_entry_stamped_after_now_is_alive() {
        // The datapath stamped the entry in a second the reader has not seen
        // tick yet (a sweep that read `now` before walking the map, or
        // another CPU). The old unsigned arithmetic called it expired.
        let e = CtEntry {
            last_seen: 1_001,
            flags: CT_F_REPLY_SEEN | CT_F_ASSURED,
            ..Default::default()
        };
        assert!(!e.expired(TCP, 1_000));
        assert!(!e.expired(UDP, 1_000));
        assert_eq!(age(1_000, 1_001), -1);
        assert!(e.expires_in(TCP, 1_000) > CT_LIFETIME_TCP_ESTABLISHED - 1);
        // Across the wrap as well.
        let e = CtEntry {
            last_seen: 2,
            ..Default::default()
        };
        assert!(!e.expired(UDP, u32::MAX));
    }

    #[test]
    fn state_names() {
        assert_eq!(tcp_state_name(0), "SYN_SENT");
        assert_eq!(tcp_state_name(CT_F_REPLY_SEEN), "SYN_RECV");
        assert_eq!(
            tcp_state_name(CT_F_REPLY_SEEN | CT_F_ASSURED),
            "ESTABLISHED"
        );
        assert_eq!(
            tcp_state_name(CT_F_REPLY_SEEN | CT_F_FIN_BACKEND),
            "CLOSING"
        );
        assert_eq!(tcp_state_name(CT_F_FIN_CLIENT | CT_F_FIN_BACKEND), "CLOSED");
        assert_eq!(tcp_state_name(CT_F_RST | CT_F_REPLY_SEEN), "RESET");
    }

    fn key(saddr: u32, daddr: u32, sport: u16, dport: u16, dir: u8) -> CtKey {
        CtKey {
            saddr,
            daddr,
            sport,
            dport,
            proto: TCP,
            dir,
            _pad: [0; 2],
        }
    }

    #[test]
    fn partners_and_inverses_round_trip() {
        // Client 1:10 -> frontend 2:20, DNAT to backend 3:30.
        let fwd_key = key(1, 2, 10, 20, CT_DIR_SERVICE);
        let fwd = CtEntry {
            new_saddr: 1,
            new_daddr: 3,
            new_sport: 10,
            new_dport: 30,
            flags: CT_F_REWRITE_DST | CT_F_REPLY_SEEN,
            svc_id: 7,
            backend_id: 9,
            ..Default::default()
        };
        let rev_key = fwd_key.partner(&fwd, CT_DIR_REPLY);
        assert_eq!(rev_key, key(3, 1, 30, 10, CT_DIR_REPLY));
        let rev = fwd.inverse(&fwd_key);
        assert_eq!(rev.flags, CT_F_REWRITE_SRC | CT_F_REPLY_SEEN);
        assert_eq!((rev.new_saddr, rev.new_sport), (2, 20));
        assert_eq!((rev.svc_id, rev.backend_id), (7, 9));
        // The reply's partner is the forward entry again, and its inverse
        // rewrites towards the backend.
        assert_eq!(rev_key.partner_dir(&rev), CT_DIR_SERVICE);
        assert_eq!(rev_key.partner(&rev, CT_DIR_SERVICE), fwd_key);
        let again = rev.inverse(&rev_key);
        assert_eq!(again.flags, fwd.flags);
        assert_eq!((again.new_daddr, again.new_dport), (3, 30));
    }

    #[test]
    fn snat_flows_invert_both_rewrites() {
        // Outside 1:10 -> node port 2:20, DNAT to 3:30 and SNAT to 4:40.
        let fwd_key = key(1, 2, 10, 20, CT_DIR_SERVICE);
        let fwd = CtEntry {
            new_saddr: 4,
            new_daddr: 3,
            new_sport: 40,
            new_dport: 30,
            flags: CT_F_REWRITE_DST | CT_F_REWRITE_SRC | CT_F_FIB_ROUTE,
            svc_id: 1,
            ..Default::default()
        };
        let rev_key = fwd_key.partner(&fwd, CT_DIR_REPLY);
        assert_eq!(rev_key, key(3, 4, 30, 40, CT_DIR_REPLY));
        let rev = fwd.inverse(&fwd_key);
        assert_eq!(
            rev.flags,
            CT_F_REWRITE_SRC | CT_F_REWRITE_DST | CT_F_FIB_ROUTE
        );
        assert_eq!(rev.rewritten(&rev_key), (2, 1, 20, 10));
        // Masquerade replies (no frontend id) pair with an EGRESS entry.
        let masq = CtEntry { svc_id: 0, ..rev };
        assert_eq!(rev_key.partner_dir(&masq), CT_DIR_EGRESS);
    }
}
