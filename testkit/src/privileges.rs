//! Kernel tests must fail, not skip, where they cannot run.

/// Panics with a clear message unless the process can load BPF programs and
/// create network namespaces and devices (root with CAP_BPF, CAP_NET_ADMIN
/// and CAP_SYS_ADMIN).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "kernel tests need root (BPF, network namespaces and devices) and fail rather than skip without it; run them with `cargo xtask test` as root"
    );
}
