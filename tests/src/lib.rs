//! Test support for Sluice: packets with real checksums, private BPF
//! filesystems, packet fixtures, and a simulated cluster in network
//! namespaces with real binaries and real traffic.
//!
//! Everything here creates its own kernel objects and removes them when
//! dropped (or on SIGINT/SIGTERM); nothing touches the root network namespace.

pub mod apiserver;
pub mod apps;
pub mod bench;
pub mod bpffs;
pub mod cleanup;
pub mod fixture;
pub mod floor;
pub mod manifests;
pub mod netns;
pub mod packet;
pub mod podman;
pub mod privileges;
pub mod sim;
