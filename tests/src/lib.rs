//! Test support for Sluice: packets with real checksums, private BPF
//! filesystems, and (in `sim`) simulated nodes in network namespaces.
//!
//! Everything here creates its own kernel objects and removes them when
//! dropped; nothing touches the root network namespace.

pub mod bpffs;
pub mod fixture;
pub mod packet;
pub mod privileges;
