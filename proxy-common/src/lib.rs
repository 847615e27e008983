//! The data model shared by Sluice's eBPF programs and its user space.
//!
//! Everything here is `#[repr(C)]` plain data with explicit padding, no `bool`
//! and no Rust enums, so the kernel and user space agree on every byte. Field
//! docs say which fields are in network byte order (NBO); all others are in
//! host order. Sizes are checked at compile time.
#![no_std]

#[cfg(feature = "user")]
pub mod codec;
pub mod config;
pub mod ct;
pub mod endpoint;
pub mod names;
pub mod reason;
pub mod service;
pub mod socket;
pub mod stats;

pub use config::NodeConfig;
pub use ct::{CtEntry, CtKey, CtStats, FragKey, FragPorts};
pub use endpoint::LocalEndpoint;
pub use service::{AffinityKey, AffinityValue, Backend, ServiceKey, ServiceValue, SourceRangeKey};
pub use socket::{SockAffinityKey, SockConfig, SockRevKey, SockRevValue};
pub use stats::{ReasonCounter, ServiceCounter};

/// IANA protocol numbers used by the datapath.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const SCTP: u8 = 132;
}

/// Asserts at compile time that a type has exactly the given size.
#[macro_export]
macro_rules! assert_size {
    ($t:ty, $n:expr) => {
        const _: () = assert!(::core::mem::size_of::<$t>() == $n);
    };
}

#[cfg(feature = "user")]
mod pod_impls {
    macro_rules! pod {
        ($($t:ty),* $(,)?) => {$(
            // SAFETY: the type is #[repr(C)], made only of integers and byte
            // arrays, with all padding spelled out as fields, so any bit
            // pattern is a valid value.
            unsafe impl aya::Pod for $t {}
        )*};
    }

    pod!(
        crate::ServiceKey,
        crate::ServiceValue,
        crate::Backend,
        crate::CtKey,
        crate::CtEntry,
        crate::CtStats,
        crate::FragKey,
        crate::FragPorts,
        crate::ReasonCounter,
        crate::ServiceCounter,
        crate::NodeConfig,
        crate::AffinityKey,
        crate::AffinityValue,
        crate::SourceRangeKey,
        crate::LocalEndpoint,
        crate::SockConfig,
        crate::SockRevKey,
        crate::SockRevValue,
        crate::SockAffinityKey,
    );
}
