//! The kernel tests must fail, never skip, where they cannot run: check the
//! things they need up front and say exactly what is missing.

use std::process::Command;

use anyhow::{Result, bail};

use crate::run::output;

pub fn check() -> Result<()> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the test suite loads BPF programs and creates network namespaces: run it as root");
    }
    bpf_works()?;
    netns_works()?;
    Ok(())
}

/// Loads a two-instruction socket filter (r0 = 0; exit).
fn bpf_works() -> Result<()> {
    #[repr(C)]
    #[derive(Default)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
    }
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
    let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    let license = c"GPL";
    let attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
        insn_cnt: 2,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: attr is a valid, fully initialised bpf_attr prefix.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoad,
            size_of::<ProgLoad>(),
        )
    };
    if fd < 0 {
        bail!(
            "the kernel refused to load a trivial BPF program ({}): BPF is unavailable here",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: fd is ours.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

fn netns_works() -> Result<()> {
    let name = format!("sl-preflight-{}", std::process::id());
    output(Command::new("ip").args(["netns", "add", &name]))
        .map_err(|e| anyhow::anyhow!("cannot create a network namespace (`ip netns add`): {e}"))?;
    let _ = output(Command::new("ip").args(["netns", "del", &name]));
    Ok(())
}
