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
