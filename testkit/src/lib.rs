//! What Sluice's tests, benchmarks and tools share, kept free of every
//! Sluice crate so that any of them can use it: network namespaces, an L2
//! fabric between them, private BPF filesystems, cgroups to attach cgroup
//! socket programs to, trivial BPF programs, and the privilege check.
//!
//! Every kernel object made here is named after the process that made it
//! (see [`sweep`]), removed when its guard drops, removed on SIGINT/SIGTERM
//! ([`cleanup`]), and swept once its process is gone. Nothing touches the
//! root network namespace, and nothing is attached to the root cgroup.

pub mod bpf;
pub mod bpffs;
pub mod cgroup;
pub mod cleanup;
pub mod fabric;
pub mod netns;
pub mod privileges;
pub mod sweep;
