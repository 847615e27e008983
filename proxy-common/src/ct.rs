//! Connection tracking.
//!
//! Every translated connection has two entries in one LRU hash:
//! - the *service* entry, keyed by the tuple the client sent (to the frontend),
//!   holding the chosen backend: packets of the flow keep their backend;
//! - the *reply* entry, keyed by the tuple of the backend's replies as they
//!   appear on the wire, holding the rewrite that restores the frontend.
//!
//! Each entry says how to rewrite a matching packet (`new_*` fields, applied
//! when `CT_F_REWRITE_SRC` / `CT_F_REWRITE_DST` are set), so DNAT, hairpin and
//! SNAT flows share one code path. Swapping the rewritten tuple of a packet
//! gives the key of the partner entry; each side refreshes its partner at most
//! once a second (and at once on TCP state changes), so both stay alive while
//! either direction carries traffic.

/// Key of `sluice_ct4_v1`.
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
    /// [`CT_DIR_SERVICE`] or [`CT_DIR_REPLY`].
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

/// Value of `sluice_ct4_v1`.
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
    /// Monotonic seconds (CLOCK_MONOTONIC) when the flow was created.
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
/// TCP: the backend has answered (SYN-ACK seen), the connection is established.
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

/// Flags both entries of a connection share (kept in step by partner refresh).
pub const CT_STATE_MASK: u16 = CT_F_REPLY_SEEN | CT_F_FIN_CLIENT | CT_F_FIN_BACKEND | CT_F_RST;

/// Timeouts in seconds, as Cilium's defaults: a SYN that got no answer, an
/// established TCP connection, a closing one, UDP and anything else.
pub const CT_LIFETIME_TCP_SYN: u32 = 60;
pub const CT_LIFETIME_TCP_ESTABLISHED: u32 = 21_600;
pub const CT_LIFETIME_TCP_CLOSE: u32 = 10;
pub const CT_LIFETIME_UDP: u32 = 60;
pub const CT_LIFETIME_OTHER: u32 = 60;

/// Default capacity of the CT and fragment maps.
pub const DEFAULT_MAX_CT_ENTRIES: u32 = 262_144;
pub const DEFAULT_MAX_FRAG_ENTRIES: u32 = 8_192;

/// Idle time after which an entry with these flags is dead.
#[inline(always)]
pub const fn lifetime(proto: u8, flags: u16) -> u32 {
    if proto == crate::proto::TCP {
        if flags & (CT_F_RST | CT_F_FIN_CLIENT | CT_F_FIN_BACKEND) != 0 {
            CT_LIFETIME_TCP_CLOSE
        } else if flags & CT_F_REPLY_SEEN != 0 {
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

impl CtEntry {
    /// Whether the entry is dead at monotonic second `now`.
    #[inline(always)]
    pub const fn expired(&self, proto: u8, now: u32) -> bool {
        now.wrapping_sub(self.last_seen) > lifetime(proto, self.flags)
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
    } else if flags & CT_F_REPLY_SEEN != 0 {
        "ESTABLISHED"
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
        assert_eq!(lifetime(TCP, CT_F_REPLY_SEEN), CT_LIFETIME_TCP_ESTABLISHED);
        assert_eq!(
            lifetime(TCP, CT_F_REPLY_SEEN | CT_F_FIN_CLIENT),
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
    }

    #[test]
    fn state_names() {
        assert_eq!(tcp_state_name(0), "SYN_SENT");
        assert_eq!(tcp_state_name(CT_F_REPLY_SEEN), "ESTABLISHED");
        assert_eq!(
            tcp_state_name(CT_F_REPLY_SEEN | CT_F_FIN_BACKEND),
            "CLOSING"
        );
        assert_eq!(tcp_state_name(CT_F_FIN_CLIENT | CT_F_FIN_BACKEND), "CLOSED");
        assert_eq!(tcp_state_name(CT_F_RST | CT_F_REPLY_SEEN), "RESET");
    }
}
