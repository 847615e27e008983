//! A private BPF filesystem per test, mounted under /run and removed on drop.

use std::{
    ffi::CString,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result, bail};

use crate::cleanup::{self, Item};

/// Root of every mount and state directory the tests create.
pub const TEST_RUN_DIR: &str = "/run/sluice-test";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A unique scratch directory under [`TEST_RUN_DIR`], named after the
/// process so a later run can tell stale ones (of dead processes) apart.
pub fn scratch_dir(tag: &str) -> Result<PathBuf> {
    crate::sweep::once();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = Path::new(TEST_RUN_DIR).join(format!("{}-{n}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

pub struct TempBpffs {
    root: PathBuf,
    mount: PathBuf,
}

impl TempBpffs {
    pub fn new(tag: &str) -> Result<Self> {
        let root = scratch_dir(tag)?;
        let mount = root.join("bpffs");
        std::fs::create_dir_all(&mount)?;
        let target = CString::new(mount.as_os_str().as_encoded_bytes())?;
        // SAFETY: valid NUL-terminated strings; no data argument.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                target.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            bail!(
                "mounting a BPF filesystem at {} failed: {} (kernel tests need root)",
                mount.display(),
                std::io::Error::last_os_error()
            );
        }
        cleanup::register(Item::Dir(root.clone()));
        cleanup::register(Item::Mount(mount.clone()));
        Ok(Self { root, mount })
    }

    /// The mount point, to pass as `--bpffs`.
    pub fn path(&self) -> &Path {
        &self.mount
    }

    /// The scratch directory the mount lives in (for state dirs and logs).
    pub fn scratch(&self) -> &Path {
        &self.root
    }
}

impl Drop for TempBpffs {
    fn drop(&mut self) {
        unmount(&self.mount);
        let _ = std::fs::remove_dir_all(&self.root);
        cleanup::unregister(&Item::Mount(self.mount.clone()));
        cleanup::unregister(&Item::Dir(self.root.clone()));
    }
}

/// Lazily detaches a mount; pins on it go away with the last user.
pub fn unmount(path: &Path) {
    if let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) {
        // SAFETY: valid path string.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}
