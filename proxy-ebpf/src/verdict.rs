//! What a program decides about a packet, and the reason it is counted
//! under: every path ends in exactly one.

use aya_ebpf::bindings::{TC_ACT_OK, TC_ACT_SHOT};
use proxy_common::reason;

use crate::packet::{self, Packet};

/// A verdict and the reason it is counted under.
#[derive(Clone, Copy)]
pub struct Verdict {
    pub action: i32,
    pub reason: u32,
}

impl Verdict {
    pub const fn pass(reason: u32) -> Self {
        Self {
            action: TC_ACT_OK,
            reason,
        }
    }

    pub const fn drop(reason: u32) -> Self {
        Self {
            action: TC_ACT_SHOT,
            reason,
        }
    }

    /// A redirect (or another action a helper returned).
    pub const fn action(action: i32, reason: u32) -> Self {
        Self { action, reason }
    }
}

/// Non-service packets a parse flagged as unusual are still passed, but
/// counted under what made them unusual.
#[inline(always)]
pub fn pass_reason(pkt: &Packet) -> u32 {
    if pkt.frag != packet::FRAG_NONE {
        reason::PASS_FRAGMENT
    } else if pkt.has_options {
        reason::PASS_IP_OPTIONS
    } else if pkt.has_ports() && !pkt.l4_complete {
        reason::PASS_TRUNCATED
    } else {
        reason::PASS_NOT_SERVICE
    }
}
