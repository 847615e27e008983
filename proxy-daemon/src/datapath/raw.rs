//! Map system calls aya 0.14 does not expose: creating a standalone array
//! with given flags as a plain fd, and BPF_MAP_UPDATE_BATCH, which writes a
//! Maglev table of 16381 entries in one system call instead of 16381.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_TYPE_ARRAY: u32 = 2;

#[repr(C)]
#[derive(Default)]
struct CreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// A new `u32 -> u32` array of `entries`, with `flags`.
pub fn create_array(entries: u32, flags: u32) -> std::io::Result<OwnedFd> {
    let attr = CreateAttr {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: entries,
        map_flags: flags,
    };
    // SAFETY: attr is a valid bpf_attr prefix that outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &attr as *const CreateAttr,
            std::mem::size_of::<CreateAttr>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just handed us this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Writes `values[i]` at index `i` of the array map `fd`.
pub fn fill_array(fd: BorrowedFd<'_>, values: &[u32]) -> std::io::Result<()> {
    let keys: Vec<u32> = (0..values.len() as u32).collect();
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: values.len() as u32,
        map_fd: fd.as_raw_fd() as u32,
        ..Default::default()
    };
    // SAFETY: attr points at live key and value buffers of `count` entries.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_BATCH,
            &mut attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if attr.count as usize != values.len() {
        return Err(std::io::Error::other(format!(
            "batch update wrote {} of {} entries",
            attr.count,
            values.len()
        )));
    }
    Ok(())
}
