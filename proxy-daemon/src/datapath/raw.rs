//! Map system calls aya 0.14 does not expose: creating a standalone array
//! with given flags as a plain fd, BPF_MAP_LOOKUP_BATCH (whole-map walks)
//! and BPF_MAP_UPDATE_BATCH / BPF_MAP_DELETE_BATCH. A batch writes a Maglev table of 16381 entries in
//! one system call instead of 16381, and, on the map-of-maps, waits for one
//! RCU grace period per batch where single updates wait for one each
//! (about 13 ms here: 10k Services took two minutes to program one by one).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
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

/// A new array of `entries` values of `value_size` bytes (`u32` keys),
/// with `flags`.
pub fn create_array(entries: u32, value_size: u32, flags: u32) -> std::io::Result<OwnedFd> {
    let attr = CreateAttr {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size,
        max_entries: entries,
        map_flags: flags,
    };
    // SAFETY: attr is a valid bpf_attr prefix that outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &attr as *const CreateAttr,
            size_of::<CreateAttr>(),
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

/// A batch operation that stopped early: the first `done` entries took
/// effect, the one after failed with `source`.
#[derive(Debug)]
pub struct BatchError {
    pub done: usize,
    pub source: std::io::Error,
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "batch stopped after {} entries: {}",
            self.done, self.source
        )
    }
}

impl std::error::Error for BatchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// One `bpf(cmd, attr)` batch call; the error, if it failed.
///
/// # Safety
/// Every pointer in `attr` must point at a live buffer of the size the
/// map and `attr.count` imply, for the duration of the call.
unsafe fn bpf_batch(cmd: libc::c_long, attr: &mut BatchAttr) -> Option<std::io::Error> {
    // SAFETY: the caller's contract; attr itself is a live, exclusive
    // BatchAttr of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            size_of::<BatchAttr>(),
        )
    };
    (rc != 0).then(std::io::Error::last_os_error)
}

/// Runs one batch command over `count` entries.
fn batch<K, V>(
    cmd: libc::c_long,
    fd: BorrowedFd<'_>,
    keys: &[K],
    values: Option<&[V]>,
) -> Result<(), BatchError> {
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.map_or(0, |v| v.as_ptr() as u64),
        count: keys.len() as u32,
        map_fd: fd.as_raw_fd() as u32,
        ..Default::default()
    };
    // SAFETY: attr points at live key (and value) buffers of `count`
    // entries each, which outlive the call.
    let failed = unsafe { bpf_batch(cmd, &mut attr) };
    // The kernel writes back how many entries it processed, also on error.
    let done = (attr.count as usize).min(keys.len());
    if let Some(source) = failed {
        return Err(BatchError { done, source });
    }
    if done != keys.len() {
        return Err(BatchError {
            done,
            source: std::io::Error::other("the kernel processed only part of the batch"),
        });
    }
    Ok(())
}

/// Sets `keys[i]` to `values[i]` in the map `fd`, in order (for a
/// map-of-maps the values are inner map fds). On an error the entries
/// before `done` are written, the others not.
pub fn update_batch<K: aya::Pod, V: aya::Pod>(
    fd: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> Result<(), BatchError> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    batch(BPF_MAP_UPDATE_BATCH, fd, keys, Some(values))
}

/// Reads every entry of the hash map `fd` (keys `K`, values `V`, both
/// plain data of the map's sizes), `chunk` entries per system call, and
/// calls `f` on each: a walk of 1M entries takes ~250 calls where a
/// get-next-key walk takes two per entry. Entries added or removed during
/// the walk may or may not be seen, as with any walk.
pub fn lookup_batch<K: aya::Pod, V: aya::Pod>(
    fd: BorrowedFd<'_>,
    chunk: usize,
    mut f: impl FnMut(K, V),
) -> std::io::Result<()> {
    // SAFETY: K is plain data: all-zero bytes are a value of it.
    let zero_key: K = unsafe { std::mem::zeroed() };
    // SAFETY: likewise for V.
    let zero_value: V = unsafe { std::mem::zeroed() };
    let mut keys: Vec<K> = vec![zero_key; chunk];
    let mut values: Vec<V> = vec![zero_value; chunk];
    // The hash map's batch token is its bucket index; none for the first
    // call.
    let mut token: Option<u32> = None;
    loop {
        let mut next: u32 = 0;
        let mut attr = BatchAttr {
            in_batch: token.as_ref().map_or(0, |t| t as *const u32 as u64),
            out_batch: &mut next as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: attr points at the token and at key and value buffers of
        // `chunk` entries of the map's sizes, all outliving the call.
        let err = unsafe { bpf_batch(BPF_MAP_LOOKUP_BATCH, &mut attr) };
        let n = (attr.count as usize).min(chunk);
        for i in 0..n {
            f(keys[i], values[i]);
        }
        match err {
            None => {}
            // The walk is over (the last chunk may still have held some).
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Some(e) => return Err(e),
        }
        token = Some(next);
    }
}

/// Entries per batched read of a hash map: more than any hash bucket
/// holds (the kernel refuses a chunk smaller than a bucket), few enough to
/// stay in cache.
const WALK_CHUNK: usize = 4096;

/// Calls `f` on every entry of `map`: batched reads where the kernel has
/// them (5.6 and later), key by key otherwise, skipping entries that go
/// away during the walk. No entry is shown twice: after a batch that
/// failed part way the walk stops with the error.
pub fn walk_hash<K: aya::Pod, V: aya::Pod>(
    map: &aya::maps::HashMap<aya::maps::MapData, K, V>,
    mut f: impl FnMut(K, V),
) -> std::io::Result<()> {
    let fd = aya::maps::IterableMap::map(map).fd().as_fd();
    let mut delivered = false;
    let walked = lookup_batch(fd, WALK_CHUNK, |k, v| {
        delivered = true;
        f(k, v);
    });
    match walked {
        Err(e) if !delivered => {
            tracing::debug!(error = %e, "batched map walk unavailable; walking key by key");
            for (k, v) in map.iter().filter_map(Result::ok) {
                f(k, v);
            }
            Ok(())
        }
        other => other,
    }
}

/// Deletes `keys` from the map `fd`; stops at the first missing key
/// (ENOENT), like the kernel does.
pub fn delete_batch(fd: BorrowedFd<'_>, keys: &[u32]) -> Result<(), BatchError> {
    batch::<u32, u32>(BPF_MAP_DELETE_BATCH, fd, keys, None)
}

/// A new Maglev table holding `values` (two slots per 8-byte element, the
/// last half zero when their number is odd), with the flags the outer
/// map's template has, written through a shared mapping of the array.
pub fn maglev_table(values: &[u32]) -> std::io::Result<OwnedFd> {
    let elements = values.len().div_ceil(2) as u32;
    let fd = create_array(elements, 8, proxy_common::service::MAGLEV_TABLE_FLAGS)?;
    write_mapped_array(fd.as_fd(), values)?;
    Ok(fd)
}

/// Writes `values` as consecutive `u32`s into the value area of a
/// `BPF_F_MMAPABLE` array of 8-byte values (so with no padding between
/// them) through a shared mapping, which starts at the first value.
fn write_mapped_array(fd: BorrowedFd<'_>, values: &[u32]) -> std::io::Result<()> {
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
        .map_err(|_| std::io::Error::other("no page size"))?;
    let bytes = size_of_val(values);
    let len = bytes.div_ceil(page) * page;
    if len == 0 {
        return Ok(());
    }
    // SAFETY: a fresh shared mapping of the map's value area, as long as
    // the kernel allows (the area rounded up to a page).
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `bytes` <= `len`; the source is a live slice that cannot
    // overlap a fresh mapping.
    unsafe {
        std::ptr::copy_nonoverlapping(values.as_ptr().cast::<u8>(), base.cast::<u8>(), bytes)
    };
    // SAFETY: unmaps exactly what was mapped above.
    if unsafe { libc::munmap(base, len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// `bpf_attr.test` up to `ctx_out`.
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
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
}

/// BPF_PROG_TEST_RUN with only a context (what aya offers for packet
/// programs only): `(return value, ns per run)`. Kernels refuse it for
/// program types they cannot run this way (ENOTSUPP, 524).
pub fn test_run_ctx(
    prog: BorrowedFd<'_>,
    ctx_in: &[u8],
    ctx_out: &mut [u8],
    repeat: u32,
) -> std::io::Result<(u32, u32)> {
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        repeat,
        ctx_size_in: ctx_in.len() as u32,
        ctx_size_out: ctx_out.len() as u32,
        ctx_in: ctx_in.as_ptr() as u64,
        ctx_out: ctx_out.as_mut_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: attr points at buffers that outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            size_of::<TestRunAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((attr.retval, attr.duration))
}
