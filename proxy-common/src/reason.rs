//! Reason codes: every verdict the datapath reaches is counted under one.
//!
//! Codes index the per-CPU array `sluice_rsn_v1`. They are append-only: a code
//! keeps its number across releases so counters read by an older `sluicectl`
//! stay meaningful.

pub const PASS_NON_IPV4: u32 = 0;
pub const PASS_NOT_SERVICE: u32 = 1;
pub const FWD_ESTABLISHED: u32 = 2;
pub const FWD_NEW: u32 = 3;
pub const REV_NAT: u32 = 4;
pub const HAIRPIN_REPLY: u32 = 5;
pub const PASS_FRAGMENT: u32 = 6;
pub const PASS_TRUNCATED: u32 = 7;
pub const PASS_IP_OPTIONS: u32 = 8;
pub const DROP_MALFORMED: u32 = 9;
pub const DROP_TRUNCATED: u32 = 10;
pub const DROP_IP_OPTIONS: u32 = 11;
pub const DROP_FRAG_NO_STATE: u32 = 12;
pub const REJECT_NO_BACKEND: u32 = 13;
pub const REJECT_UNKNOWN_PORT: u32 = 14;
pub const DROP_MAP_INCONSISTENT: u32 = 15;
pub const DROP_CT_CREATE: u32 = 16;
pub const DROP_REWRITE: u32 = 17;
pub const DROP_REJECT_FAILED: u32 = 18;
pub const DROP_UNSUPPORTED_PROTO: u32 = 19;
pub const PASS_REPLY_FRAGMENT: u32 = 20;
pub const DROP_HAIRPIN_NO_STATE: u32 = 21;
pub const PASS_UPLINK: u32 = 22;
pub const MASQUERADE: u32 = 23;
pub const MASQUERADE_REPLY: u32 = 24;
pub const DROP_SNAT_PORTS_EXHAUSTED: u32 = 25;
pub const PASS_MASQUERADE_UNSUPPORTED: u32 = 26;
pub const DROP_NO_LOCAL_BACKEND: u32 = 27;
pub const DROP_SOURCE_RANGE: u32 = 28;
pub const NODEPORT_REPLY: u32 = 29;
pub const PASS_OVERLAY: u32 = 30;
pub const DROP_NO_ROUTE: u32 = 31;
pub const DROP_TTL_EXCEEDED: u32 = 32;
pub const ICMP_ERROR_REV_NAT: u32 = 33;
/// A new connection found the TCP CT map full (established ones are never
/// evicted to make room; the daemon's sweep frees expired entries).
pub const DROP_CT_FULL: u32 = 34;
/// A packet matched the state of a connection that is dead (expired, or
/// closed and now answered by a SYN-ACK of a new connection reusing its
/// ports): passed untranslated, and the dead state removed.
pub const PASS_CT_STALE: u32 = 35;
/// A pod's packet to another pod on this node, no service involved, sent
/// straight into that pod's veth.
pub const FWD_LOCAL_POD: u32 = 36;
/// A pod's packet to a pod on another node, no service involved, routed by
/// the datapath straight to the overlay device.
pub const FWD_REMOTE_POD: u32 = 37;
/// A socket's connect() or sendmsg() to a Service address was given a
/// backend (cgroup socket programs; counted per call, no bytes).
pub const SOCK_TRANSLATED: u32 = 38;
/// A socket's connect() or sendmsg() to a Service without endpoints failed
/// with ECONNREFUSED.
pub const SOCK_REFUSED: u32 = 39;
/// A socket's connect() or sendmsg() to a frontend whose Local traffic
/// policy has no endpoint on this node failed with EHOSTUNREACH.
pub const SOCK_NO_LOCAL_BACKEND: u32 = 40;
/// getpeername() or recvmsg() of a translated socket showed the Service's
/// address instead of the backend's.
pub const SOCK_REV_NAT: u32 = 41;

/// Size of the reason counter array (room for codes added later).
pub const MAX: u32 = 64;

/// Whether the code is a verdict that discards the packet.
pub const fn is_drop(code: u32) -> bool {
    matches!(
        code,
        DROP_MALFORMED
            | DROP_TRUNCATED
            | DROP_IP_OPTIONS
            | DROP_FRAG_NO_STATE
            | REJECT_NO_BACKEND
            | REJECT_UNKNOWN_PORT
            | DROP_MAP_INCONSISTENT
            | DROP_CT_CREATE
            | DROP_REWRITE
            | DROP_REJECT_FAILED
            | DROP_UNSUPPORTED_PROTO
            | DROP_HAIRPIN_NO_STATE
            | DROP_SNAT_PORTS_EXHAUSTED
            | DROP_NO_LOCAL_BACKEND
            | DROP_SOURCE_RANGE
            | DROP_NO_ROUTE
            | DROP_TTL_EXCEEDED
            | DROP_CT_FULL
            | SOCK_REFUSED
            | SOCK_NO_LOCAL_BACKEND
    )
}

/// Stable, human-readable name of a code (`None` for unassigned codes).
pub const fn name(code: u32) -> Option<&'static str> {
    Some(match code {
        PASS_NON_IPV4 => "pass-non-ipv4",
        PASS_NOT_SERVICE => "pass-not-service",
        FWD_ESTABLISHED => "fwd-established",
        FWD_NEW => "fwd-new-connection",
        REV_NAT => "reverse-nat",
        HAIRPIN_REPLY => "hairpin-reply",
        PASS_FRAGMENT => "pass-fragment",
        PASS_TRUNCATED => "pass-truncated",
        PASS_IP_OPTIONS => "pass-ip-options",
        DROP_MALFORMED => "drop-malformed-ipv4",
        DROP_TRUNCATED => "drop-truncated",
        DROP_IP_OPTIONS => "drop-ip-options",
        DROP_FRAG_NO_STATE => "drop-fragment-no-state",
        REJECT_NO_BACKEND => "reject-no-backend",
        REJECT_UNKNOWN_PORT => "reject-unknown-port",
        DROP_MAP_INCONSISTENT => "drop-map-inconsistent",
        DROP_CT_CREATE => "drop-ct-create-failed",
        DROP_REWRITE => "drop-rewrite-failed",
        DROP_REJECT_FAILED => "drop-reject-failed",
        DROP_UNSUPPORTED_PROTO => "drop-unsupported-protocol",
        PASS_REPLY_FRAGMENT => "pass-reply-fragment",
        DROP_HAIRPIN_NO_STATE => "drop-hairpin-no-state",
        PASS_UPLINK => "pass-uplink",
        MASQUERADE => "masquerade",
        MASQUERADE_REPLY => "masquerade-reply",
        DROP_SNAT_PORTS_EXHAUSTED => "drop-snat-ports-exhausted",
        PASS_MASQUERADE_UNSUPPORTED => "pass-masquerade-unsupported-protocol",
        DROP_NO_LOCAL_BACKEND => "drop-no-local-backend",
        DROP_SOURCE_RANGE => "drop-source-range",
        NODEPORT_REPLY => "external-reply",
        PASS_OVERLAY => "pass-overlay",
        DROP_NO_ROUTE => "drop-no-route",
        DROP_TTL_EXCEEDED => "drop-ttl-exceeded",
        ICMP_ERROR_REV_NAT => "icmp-error-rev-nat",
        DROP_CT_FULL => "drop-ct-full",
        PASS_CT_STALE => "pass-ct-stale",
        FWD_LOCAL_POD => "fwd-local-pod",
        FWD_REMOTE_POD => "fwd-remote-pod",
        SOCK_TRANSLATED => "sock-translated",
        SOCK_REFUSED => "reject-sock-no-backend",
        SOCK_NO_LOCAL_BACKEND => "reject-sock-no-local-backend",
        SOCK_REV_NAT => "sock-reverse-nat",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_unique_and_dense() {
        let mut seen: [Option<&str>; super::MAX as usize] = [None; super::MAX as usize];
        let mut last = 0;
        for code in 0..super::MAX {
            if let Some(n) = super::name(code) {
                assert!(!seen.iter().flatten().any(|s| *s == n), "duplicate {n}");
                seen[code as usize] = Some(n);
                last = code;
            }
        }
        // Codes are assigned densely from 0 so that gaps mean removed codes.
        assert!((0..=last).all(|c| super::name(c).is_some()));
    }

    #[test]
    fn drops_are_named_as_drops() {
        for code in 0..super::MAX {
            if let Some(n) = super::name(code) {
                assert_eq!(
                    super::is_drop(code),
                    n.starts_with("drop-") || n.starts_with("reject-"),
                    "{n}"
                );
            }
        }
    }
}
