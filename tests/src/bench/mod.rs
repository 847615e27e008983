//! Benchmarks run by `cargo xtask bench`. They print figures and
//! comparisons; they assert nothing about speed (that would flake).

pub mod cni;
pub mod control_plane;
pub mod datapath;
pub mod e2e;
pub mod memory;

use std::{net::Ipv4Addr, time::Duration};

/// Endpoints per Service in the control-plane and memory benches.
pub(crate) const ENDPOINTS: usize = 10;

/// The ClusterIP of the benches' Service `i`.
pub(crate) fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + 1 + i as u32)
}

/// Endpoint `e` of the benches' Service `i`.
pub(crate) fn endpoint(i: usize, e: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (i * ENDPOINTS + e) as u32)
}

/// The `p` quantile of `v` (nearest rank).
pub fn percentile(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort_unstable();
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

/// Pins the calling thread to `cpu`.
pub(crate) fn pin_thread_to_cpu(cpu: usize) {
    // SAFETY: plain affinity call on the calling thread with a zeroed set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Pins process (or thread) `pid` and, for a process, every thread it has
/// now, to `cpu`.
pub(crate) fn pin_process_to_cpu(pid: u32, cpu: usize) {
    let tasks: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    for tid in tasks {
        // SAFETY: as above, for another task.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(tid, size_of::<libc::cpu_set_t>(), &set);
        }
    }
}
