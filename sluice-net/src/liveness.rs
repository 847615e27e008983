//! Daemon liveness, as STATUS sees it.
//!
//! Protocol: `sluiced` opens `<stateDir>/sluiced.lock` and holds an exclusive
//! `flock(2)` on it for its whole life (the kernel drops it when the daemon
//! exits or dies, so there is no stale state to clean). A checker tries a
//! non-blocking *shared* lock: if that succeeds (or the file does not exist)
//! nobody holds the exclusive lock, so the daemon is not running. The shared
//! probe never blocks the daemon from taking its lock at start for longer
//! than the probe itself.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

/// The lock file name under the state directory.
pub const DAEMON_LOCK_FILE: &str = "sluiced.lock";

/// `<state_dir>/sluiced.lock`.
pub fn daemon_lock_path(state_dir: impl AsRef<Path>) -> PathBuf {
    state_dir.as_ref().join(DAEMON_LOCK_FILE)
}

/// Whether a process holds the daemon's exclusive lock.
pub fn daemon_running(state_dir: impl AsRef<Path>) -> bool {
    // Opened read-only and never created: a checker must not leave files.
    let Ok(f) = File::open(daemon_lock_path(state_dir)) else {
        return false;
    };
    match f.try_lock_shared() {
        // Got it: nobody holds it exclusively. Dropping `f` releases it.
        Ok(()) => false,
        Err(TryLockError::WouldBlock) => true,
        // Cannot tell (e.g. a filesystem without flock): not provably ready.
        Err(TryLockError::Error(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_protocol() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!daemon_running(dir.path()));
        assert!(
            !daemon_lock_path(dir.path()).exists(),
            "the check must not create the file"
        );
        let daemon = File::create(daemon_lock_path(dir.path())).unwrap();
        assert!(!daemon_running(dir.path()), "file without a lock holder");
        daemon.lock().unwrap();
        assert!(daemon_running(dir.path()));
        assert!(
            daemon_running(dir.path()),
            "the probe must not disturb the holder"
        );
        daemon.unlock().unwrap();
        assert!(!daemon_running(dir.path()));
        daemon.lock().unwrap();
        drop(daemon);
        assert!(!daemon_running(dir.path()), "closing releases the lock");
    }
}
