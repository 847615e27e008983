//! The CNI side both binaries share: the configuration format sluiced
//! writes and sluice-cni reads ([`conf::NetConf`] is the single definition
//! of it, so the two cannot drift apart), the spec versions, and the
//! spec's error type.

pub mod conf;
pub mod error;
pub mod version;
