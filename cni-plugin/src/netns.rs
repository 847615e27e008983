//! Running code inside a container's network namespace.
//!
//! Namespaces are per thread, so the work runs on a dedicated thread that
//! `setns()`es into the namespace and exits afterwards: the plugin's main
//! thread never leaves the node's namespace, and a thread that entered a pod
//! namespace is never reused for anything else. Netlink sockets opened on
//! that thread belong to the pod namespace for their whole life.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

use sluice_net::cni::error::{CniError, code};

/// `NS_GET_NSTYPE` from linux/nsfs.h: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {} does not exist", path.display())]
    NotFound { path: PathBuf },
    #[error("{} is not a network namespace", path.display())]
    NotNetns { path: PathBuf },
    #[error("{} is the node's own (or the init) network namespace", path.display())]
    IsHost { path: PathBuf },
    #[error("open {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("enter network namespace {}: {source}", path.display())]
    Enter {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("namespace worker thread: {0}")]
    Thread(String),
}

impl From<NetnsError> for CniError {
    fn from(e: NetnsError) -> Self {
        let c = match e {
            // The container is gone: nothing was set up, nothing to undo.
            NetnsError::NotFound { .. } => code::UNKNOWN_CONTAINER,
            NetnsError::NotNetns { .. } | NetnsError::IsHost { .. } => code::INVALID_ENV,
            NetnsError::Open { .. } | NetnsError::Enter { .. } | NetnsError::Thread(_) => code::IO,
        };
        CniError::new(c, e.to_string())
    }
}

/// An open handle on a network namespace (a bind mount or `/proc/<pid>/ns/net`).
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    /// Opens `path` and checks that it is a network namespace other than the
    /// one this thread is in and other than the init namespace (configuring
    /// the node's own namespace as if it were a pod's would break the node).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, NetnsError> {
        let path = path.as_ref().to_path_buf();
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(NetnsError::NotFound { path });
            }
            Err(source) => return Err(NetnsError::Open { path, source }),
        };
        // SAFETY: an ioctl without arguments on a descriptor we own.
        let ty = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if ty != libc::CLONE_NEWNET {
            return Err(NetnsError::NotNetns { path });
        }
        let theirs = file.metadata().map_err(|source| NetnsError::Open {
            path: path.clone(),
            source,
        })?;
        let ours =
            std::fs::metadata("/proc/thread-self/ns/net").map_err(|source| NetnsError::Open {
                path: "/proc/thread-self/ns/net".into(),
                source,
            })?;
        // The init namespace is the node's too whenever the plugin runs where
        // a runtime runs it; refusing it also when the plugin itself runs in
        // another namespace (tests) keeps a bad CNI_NETNS from ever touching
        // the machine's own network.
        let init = std::fs::metadata("/proc/1/ns/net").ok();
        let same = |m: &std::fs::Metadata| (m.dev(), m.ino()) == (theirs.dev(), theirs.ino());
        if same(&ours) || init.as_ref().is_some_and(same) {
            return Err(NetnsError::IsHost { path });
        }
        Ok(Self { file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Runs `f` on a fresh thread inside this namespace and returns its
    /// result. The thread exits when `f` returns.
    pub fn run<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send,
        E: Send + From<NetnsError>,
        F: FnOnce() -> Result<T, E> + Send,
    {
        std::thread::scope(|scope| {
            let handle = std::thread::Builder::new()
                .name("sluice-netns".into())
                .spawn_scoped(scope, || {
                    setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|errno| {
                        E::from(NetnsError::Enter {
                            path: self.path.clone(),
                            source: io::Error::from(errno),
                        })
                    })?;
                    f()
                })
                .map_err(|e| E::from(NetnsError::Thread(e.to_string())))?;
            handle
                .join()
                .map_err(|_| E::from(NetnsError::Thread("panicked".into())))?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_namespaces_and_the_own_namespace() {
        assert!(matches!(
            NetNs::open("/nonexistent/ns"),
            Err(NetnsError::NotFound { .. })
        ));
        assert!(matches!(
            NetNs::open("/proc/self/cmdline"),
            Err(NetnsError::NotNetns { .. })
        ));
        assert!(matches!(
            NetNs::open("/proc/thread-self/ns/mnt"),
            Err(NetnsError::NotNetns { .. })
        ));
        assert!(matches!(
            NetNs::open("/proc/thread-self/ns/net"),
            Err(NetnsError::IsHost { .. })
        ));
        // Unreadable without CAP_SYS_PTRACE (some sandboxes); refused either way.
        assert!(matches!(
            NetNs::open("/proc/1/ns/net"),
            Err(NetnsError::IsHost { .. } | NetnsError::Open { .. })
        ));
        assert_eq!(
            CniError::from(NetnsError::NotFound { path: "/x".into() }).code,
            code::UNKNOWN_CONTAINER
        );
    }
}
