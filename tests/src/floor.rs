//! The empty-program floor for datapath benchmarks: a TC program that only
//! returns TC_ACT_OK, run through the same BPF_PROG_TEST_RUN path, so the
//! cost of the test harness itself (skb setup, timer, dispatch) can be
//! subtracted from the real programs' figures.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{Result, bail};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
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

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
}

pub struct EmptyProgram {
    fd: OwnedFd,
}

impl EmptyProgram {
    /// Loads `r0 = 0 (TC_ACT_OK); exit` as a SCHED_CLS program.
    pub fn load() -> Result<Self> {
        let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
        let license = c"GPL";
        let attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_SCHED_CLS,
            insn_cnt: 2,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            ..Default::default()
        };
        // SAFETY: attr is a valid bpf_attr prefix that outlives the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_LOAD,
                &attr as *const ProgLoadAttr,
                size_of::<ProgLoadAttr>(),
            )
        };
        if fd < 0 {
            bail!(
                "loading the empty program: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(Self {
            // SAFETY: the kernel just gave us this fd.
            fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
        })
    }

    /// Mean ns per run over `repeat` runs, as the kernel measures it.
    pub fn run(&self, data: &[u8], repeat: u32) -> Result<u64> {
        let mut out = vec![0u8; data.len() + 256];
        let mut attr = TestRunAttr {
            prog_fd: self.fd.as_raw_fd() as u32,
            data_size_in: data.len() as u32,
            data_size_out: out.len() as u32,
            data_in: data.as_ptr() as u64,
            data_out: out.as_mut_ptr() as u64,
            repeat,
            ..Default::default()
        };
        // SAFETY: attr points at live buffers of the sizes given.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_TEST_RUN,
                &mut attr as *mut TestRunAttr,
                size_of::<TestRunAttr>(),
            )
        };
        if rc != 0 {
            bail!(
                "test run of the empty program: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(u64::from(attr.duration))
    }
}
