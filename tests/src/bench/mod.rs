//! Benchmarks run by `cargo xtask bench`. They print figures and
//! comparisons; they assert nothing about speed (that would flake).

pub mod cni;
pub mod control_plane;
pub mod datapath;
pub mod memory;

use std::time::Duration;

/// The `p` quantile of `v` (nearest rank).
pub fn percentile(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort_unstable();
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}
