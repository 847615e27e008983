//! Benchmarks run by `cargo xtask bench`. They print figures and
//! comparisons; they assert nothing about speed (that would flake).

pub mod cni;
pub mod control_plane;
pub mod datapath;
