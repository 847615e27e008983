//! The datapath's clock, for tests that stamp or age map entries.

/// CLOCK_MONOTONIC_COARSE in whole seconds: what the datapath stamps
/// entries with (bpf_ktime_get_coarse_ns).
pub fn monotonic_secs() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u32
}
