//! Counter values of the per-CPU statistics maps.

/// Value of `sluice_rsn_v1` (index: reason code).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReasonCounter {
    pub packets: u64,
    pub bytes: u64,
}
crate::assert_size!(ReasonCounter, 16);

/// Value of `sluice_svst_v1` (index: service id). Counts both directions.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceCounter {
    pub packets: u64,
    pub bytes: u64,
    /// Connections (flows) created towards this frontend.
    pub new_conns: u64,
    /// New connections refused because the frontend had no backend.
    pub refused: u64,
}
crate::assert_size!(ServiceCounter, 32);

impl core::ops::Add for ReasonCounter {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self {
            packets: self.packets + o.packets,
            bytes: self.bytes + o.bytes,
        }
    }
}

impl core::ops::Add for ServiceCounter {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self {
            packets: self.packets + o.packets,
            bytes: self.bytes + o.bytes,
            new_conns: self.new_conns + o.new_conns,
            refused: self.refused + o.refused,
        }
    }
}

/// Map writes of the datapath that failed without deciding a packet's
/// fate (the packet goes on; what it would have recorded is lost), counted
/// per CPU in `sluice_werr_v1` by these indices. Append-only.
pub mod write_error {
    /// A session-affinity entry could not be stored: the client's next
    /// connection is balanced afresh.
    pub const AFFINITY: u32 = 0;
    /// A first fragment's ports could not be stored: later fragments of
    /// that datagram find no state.
    pub const FRAGMENT: u32 = 1;
    /// A vanished partner CT entry could not be recreated (the map was
    /// full): the flow's other direction stays untranslated until it is.
    pub const CT_PARTNER: u32 = 2;
    /// A socket's reverse entry could not be stored: getpeername() and
    /// recvfrom() on it show the backend's address instead of the Service's.
    pub const SOCK_REV: u32 = 3;
    /// Size of the counter array.
    pub const MAX: u32 = 8;

    pub const fn name(i: u32) -> Option<&'static str> {
        Some(match i {
            AFFINITY => "affinity",
            FRAGMENT => "fragment",
            CT_PARTNER => "ct-partner",
            SOCK_REV => "sock-reverse",
            _ => return None,
        })
    }
}
