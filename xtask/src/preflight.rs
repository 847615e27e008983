//! The kernel tests must fail, never skip, where they cannot run: check the
//! things they need up front and say exactly what is missing.

use anyhow::{Result, anyhow, bail};
use sluice_testkit::{
    bpf::{ProgType, TrivialProgram},
    netns::NetNs,
};

pub fn check() -> Result<()> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the test suite loads BPF programs and creates network namespaces: run it as root");
    }
    TrivialProgram::load(ProgType::SocketFilter, "sl_preflight").map_err(|e| {
        anyhow!("the kernel refused to load a trivial BPF program ({e}): BPF is unavailable here")
    })?;
    NetNs::new("preflight")
        .map_err(|e| anyhow!("cannot create a network namespace (`ip netns add`): {e:#}"))?;
    Ok(())
}
