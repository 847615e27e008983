//! Trivial BPF programs through the raw bpf(2) syscall, for what must not
//! depend on a loader library: checking that the kernel loads programs at
//! all, pinning stand-ins where a test needs *a* program, and measuring the
//! cost of BPF_PROG_TEST_RUN itself.
//!
//! Each attribute struct is the prefix of `union bpf_attr` its command
//! reads; the kernel zero-fills the fields past the size it is given.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// The kernel's `BPF_OBJ_NAME_LEN`, the terminating NUL included.
const NAME_LEN: usize = 16;

#[derive(Clone, Copy, Debug)]
#[repr(u32)]
pub enum ProgType {
    SocketFilter = 1,
    SchedCls = 3,
}

#[repr(C)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// `r0 = 0; exit`.
static RETURN_ZERO: [Insn; 2] = [
    Insn {
        code: 0xb7, // BPF_ALU64 | BPF_MOV | BPF_K
        regs: 0,
        off: 0,
        imm: 0,
    },
    Insn {
        code: 0x95, // BPF_JMP | BPF_EXIT
        regs: 0,
        off: 0,
        imm: 0,
    },
];

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
    prog_name: [u8; NAME_LEN],
}

#[repr(C)]
#[derive(Default)]
struct ObjPinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
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

/// bpf(2) with `attr`; the non-negative result or the error.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<i64> {
    // SAFETY: `attr` is a fully initialised prefix of `union bpf_attr` for
    // `cmd`; every pointer in it refers to memory the caller keeps alive
    // for the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A loaded `r0 = 0; exit`: TC_ACT_OK for a classifier, whatever the
/// packet.
pub struct TrivialProgram {
    fd: OwnedFd,
}

impl TrivialProgram {
    /// Loads it as `prog_type`, named `name` (at most 15 bytes: what
    /// `bpftool` and `tc filter show` print).
    pub fn load(prog_type: ProgType, name: &str) -> io::Result<Self> {
        if name.len() >= NAME_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "program name {name:?} is longer than {} bytes",
                    NAME_LEN - 1
                ),
            ));
        }
        let license = c"GPL";
        let mut attr = ProgLoadAttr {
            prog_type: prog_type as u32,
            insn_cnt: RETURN_ZERO.len() as u32,
            insns: RETURN_ZERO.as_ptr() as u64,
            license: license.as_ptr() as u64,
            ..Default::default()
        };
        attr.prog_name[..name.len()].copy_from_slice(name.as_bytes());
        let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
        // SAFETY: the kernel just gave us this fd.
        Ok(Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
        })
    }

    /// Pins the program at `path` (on a bpffs); the pin keeps it loaded.
    pub fn pin(&self, path: &Path) -> io::Result<()> {
        let cpath = CString::new(path.as_os_str().as_encoded_bytes())?;
        let mut attr = ObjPinAttr {
            pathname: cpath.as_ptr() as u64,
            bpf_fd: self.fd.as_raw_fd() as u32,
            ..Default::default()
        };
        bpf(BPF_OBJ_PIN, &mut attr).map(drop)
    }

    /// Mean ns per run over `repeat` runs on `data`, as the kernel measures
    /// it.
    pub fn test_run(&self, data: &[u8], repeat: u32) -> io::Result<u64> {
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
        bpf(BPF_PROG_TEST_RUN, &mut attr)?;
        Ok(u64::from(attr.duration))
    }
}
