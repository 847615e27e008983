//! cgroup v2 directories owned by a test, for cgroup socket programs
//! (`cgroup/connect4` and the like).
//!
//! Tests never attach anything to the machine's root cgroup: they make
//! their own cgroup `<cgroup2 mount>/sluice-test-<pid>-<n>-<tag>`, attach
//! there, move the test process (or its children) in, and remove the
//! cgroup afterwards: on drop, on SIGINT/SIGTERM ([`crate::cleanup`]), or
//! once its process is gone ([`crate::sweep`]).
//!
//! A socket's cgroup is fixed when the socket is made, so what a program
//! attached to the cgroup sees is the sockets made while the process was
//! inside. [`TestCgroup::enter`] moves the whole process, and `cargo test`
//! runs a binary's tests as threads of one process: a test that enters
//! holds [`process_lock`] while inside, and a test binary whose tests enter
//! cgroups runs with `--test-threads 1`, or the sockets and children of
//! tests running alongside end up in the cgroup too.

use std::{
    io,
    path::{Path, PathBuf},
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};

use crate::cleanup::{self, Item};

/// What the name of every test cgroup starts with, before the pid.
pub const PREFIX: &str = "sluice-test-";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Held by a test for as long as it has the process inside a cgroup, so
/// that two tests of one binary never move the process under each other.
static PROCESS: Mutex<()> = Mutex::new(());

/// Takes the process-wide turn to [`TestCgroup::enter`]: held for as long
/// as the process is inside a test cgroup. A test that panicked while
/// holding it has left its cgroup (the guard's drop runs during unwinding),
/// so poisoning is ignored.
pub fn process_lock() -> MutexGuard<'static, ()> {
    PROCESS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The cgroup2 mount point in /proc/self/mounts: /sys/fs/cgroup on unified
/// hosts, /sys/fs/cgroup/unified on hybrid ones.
pub fn cgroup2_mount() -> Result<PathBuf> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    parse_cgroup2_mount(&mounts).ok_or_else(|| {
        anyhow!("no cgroup2 filesystem is mounted (cgroup socket programs need cgroup v2)")
    })
}

/// The mount point of the first `cgroup2` filesystem in a
/// /proc/self/mounts text.
pub fn parse_cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let target = fields.nth(1)?;
        (fields.next()? == "cgroup2").then(|| PathBuf::from(unescape(target)))
    })
}

/// Undoes the octal escapes (`\040` for a space) the kernel writes into
/// mount points in /proc/self/mounts.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            d.iter()
                .all(|b| (b'0'..=b'7').contains(b))
                .then(|| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok())
                .flatten()
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup v2 path (`/` for the root) in a /proc/<pid>/cgroup text: its
/// `0::` line.
pub fn parse_own_cgroup(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

/// The cgroup directory the calling process is in now.
pub fn current(mount: &Path) -> Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    let rel = parse_own_cgroup(&text).context("/proc/self/cgroup has no cgroup v2 line")?;
    Ok(mount.join(rel.trim_start_matches('/')))
}

/// The pid a test cgroup's name starts with, if it is one of ours:
/// `sluice-test-<pid>-...`.
pub fn owner(name: &str) -> Option<u32> {
    let (pid, _) = name.strip_prefix(PREFIX)?.split_once('-')?;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// The pids listed in `<dir>/cgroup.procs`.
fn procs(dir: &Path) -> io::Result<Vec<u32>> {
    let text = std::fs::read_to_string(dir.join("cgroup.procs"))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Moves a process (all its threads) into the cgroup `dir`.
fn move_to(dir: &Path, pid: u32) -> io::Result<()> {
    std::fs::write(dir.join("cgroup.procs"), format!("{pid}\n"))
}

/// Moves every process in `dir` and the cgroups below it to the first of
/// `homes` that takes it. A process that exited meanwhile needs no move.
fn evacuate(dir: &Path, homes: &[&Path]) {
    for sub in subdirs(dir) {
        evacuate(&sub, homes);
    }
    for pid in procs(dir).unwrap_or_default() {
        for home in homes {
            match move_to(home, pid) {
                Err(e) if e.raw_os_error() != Some(libc::ESRCH) => continue,
                _ => break,
            }
        }
    }
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes a cgroup and the cgroups below it, deepest first. Only
/// directories are removed, with rmdir: a cgroup's control files go with
/// its directory, and cgroupfs refuses to unlink them one by one (so no
/// `remove_dir_all`).
fn remove_tree(dir: &Path) -> io::Result<()> {
    for sub in subdirs(dir) {
        remove_tree(&sub)?;
    }
    std::fs::remove_dir(dir)
}

/// Moves every process out of the test cgroup `dir` (to `home`, or to the
/// cgroup the test cgroup was made in, which is the mount root, if `home`
/// is gone) and removes it. A cgroup whose last process has just exited
/// may stay busy for a moment, and a process forking meanwhile may leave a
/// child behind, so this retries for a while.
pub(crate) fn remove(dir: &Path, home: &Path) -> io::Result<()> {
    let parent = dir.parent().unwrap_or(home);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        evacuate(dir, &[home, parent]);
        match remove_tree(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            r => return r,
        }
    }
}

/// A cgroup made for one test. Programs attached to it see only what runs
/// inside, and it is removed on drop with everything still in it moved
/// back out.
pub struct TestCgroup {
    dir: PathBuf,
    state: Mutex<State>,
}

struct State {
    /// Where the process goes back to: the cgroup it was in before
    /// [`TestCgroup::enter`], until then the one it was in when the guard
    /// was made. Processes left inside at drop go there too.
    home: PathBuf,
    entered: bool,
}

impl TestCgroup {
    /// Makes `<cgroup2 mount>/sluice-test-<pid>-<n>-<tag>` and registers it
    /// for removal on SIGINT/SIGTERM.
    pub fn new(tag: &str) -> Result<Self> {
        if tag.contains(['/', '\0']) {
            bail!("cgroup tag {tag:?} may not hold '/' or NUL");
        }
        crate::sweep::once();
        let mount = cgroup2_mount()?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = mount.join(format!("{PREFIX}{}-{n}-{tag}", std::process::id()));
        std::fs::create_dir(&dir).with_context(|| {
            format!("creating cgroup {} (kernel tests need root)", dir.display())
        })?;
        let home = current(&mount).unwrap_or(mount);
        cleanup::register(Item::Cgroup {
            dir: dir.clone(),
            home: home.clone(),
        });
        Ok(Self {
            dir,
            state: Mutex::new(State {
                home,
                entered: false,
            }),
        })
    }

    /// The cgroup's directory: open it to attach programs to the cgroup.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Moves the whole calling process (all its threads) into the cgroup.
    /// Sockets the process makes from now on belong to it (a socket's
    /// cgroup is fixed when it is made), and so do children spawned from
    /// now on. Remembers the cgroup the process was in, to go back to.
    /// Hold [`process_lock`] while inside.
    pub fn enter(&self) -> Result<()> {
        let mut state = self.lock();
        if !state.entered {
            let mount = self.dir.parent().context("test cgroup has no parent")?;
            let home = current(mount)?;
            if home != self.dir {
                self.rehome(&mut state, home);
            }
        }
        move_to(&self.dir, std::process::id())
            .with_context(|| format!("moving this process into {}", self.dir.display()))?;
        state.entered = true;
        Ok(())
    }

    /// Moves the process back to the cgroup it was in before
    /// [`enter`](Self::enter); does nothing if it has not entered.
    pub fn leave(&self) -> Result<()> {
        let mut state = self.lock();
        if state.entered {
            move_to(&state.home, std::process::id())
                .with_context(|| format!("moving this process back to {}", state.home.display()))?;
            state.entered = false;
        }
        Ok(())
    }

    /// The processes in the cgroup now.
    pub fn pids(&self) -> Result<Vec<u32>> {
        procs(&self.dir).with_context(|| format!("reading {}/cgroup.procs", self.dir.display()))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `home` where the process and any leftovers go back to, for
    /// [`leave`](Self::leave), drop and the signal handler alike.
    fn rehome(&self, state: &mut State, home: PathBuf) {
        cleanup::unregister(&self.item(state));
        state.home = home;
        cleanup::register(self.item(state));
    }

    fn item(&self, state: &State) -> Item {
        Item::Cgroup {
            dir: self.dir.clone(),
            home: state.home.clone(),
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Err(e) = self.leave() {
            eprintln!("{e:#}");
        }
        let state = self.lock();
        if let Err(e) = remove(&self.dir, &state.home) {
            eprintln!("removing cgroup {}: {e}", self.dir.display());
        }
        cleanup::unregister(&self.item(&state));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";
    const UNIFIED: &str = "\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate,memory_recursiveprot 0 0
bpf /sys/fs/bpf bpf rw,nosuid,nodev,noexec,relatime,mode=700 0 0
";
    const NONE: &str = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
";

    #[test]
    fn mounts() {
        assert_eq!(
            parse_cgroup2_mount(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            parse_cgroup2_mount(UNIFIED),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(parse_cgroup2_mount(NONE), None);
        assert_eq!(parse_cgroup2_mount(""), None);
        assert_eq!(
            parse_cgroup2_mount("none /mnt/cg\\040two cgroup2 rw 0 0\n"),
            Some(PathBuf::from("/mnt/cg two"))
        );
    }

    #[test]
    fn own_cgroup() {
        let hybrid = "9:name=systemd:/\n4:memory:/a/b\n0::/\n";
        assert_eq!(parse_own_cgroup(hybrid), Some("/"));
        let unified = "0::/user.slice/user-0.slice/session-1.scope\n";
        assert_eq!(
            parse_own_cgroup(unified),
            Some("/user.slice/user-0.slice/session-1.scope")
        );
        assert_eq!(parse_own_cgroup("1:cpu:/\n"), None);
    }

    #[test]
    fn owners() {
        assert_eq!(owner("sluice-test-1234-0-connect"), Some(1234));
        assert_eq!(owner("sluice-test-99-"), Some(99));
        assert_eq!(owner("sluice-test-99"), None);
        assert_eq!(owner("sluice-test--1-x"), None);
        assert_eq!(owner("sluice-test-12a-x"), None);
        assert_eq!(owner("system.slice"), None);
        assert_eq!(owner("sl1234-0-n1"), None);
    }

    fn own(mount: &Path) -> PathBuf {
        current(mount).unwrap()
    }

    #[test]
    fn enter_leave_drop() {
        crate::privileges::require_root();
        let _turn = process_lock();
        let mount = cgroup2_mount().unwrap();
        let before = own(&mount);
        let cg = TestCgroup::new("unit").unwrap();
        let dir = cg.path().to_owned();
        assert!(dir.is_dir());
        assert_eq!(dir.parent(), Some(mount.as_path()));
        assert_eq!(
            owner(&dir.file_name().unwrap().to_string_lossy()),
            Some(std::process::id())
        );
        cg.leave().unwrap(); // not entered: nothing to do

        cg.enter().unwrap();
        assert_eq!(own(&mount), dir);
        assert!(cg.pids().unwrap().contains(&std::process::id()));
        cg.leave().unwrap();
        assert_eq!(own(&mount), before);
        assert!(!cg.pids().unwrap().contains(&std::process::id()));

        drop(cg);
        assert!(!dir.exists());
        assert_eq!(own(&mount), before);
    }

    /// Dropping while inside, with a child spawned inside still running:
    /// both go back to where the process was, and the cgroup is gone.
    #[test]
    fn drop_inside_with_child() {
        crate::privileges::require_root();
        let _turn = process_lock();
        let mount = cgroup2_mount().unwrap();
        let before = own(&mount);
        let cg = TestCgroup::new("child").unwrap();
        let dir = cg.path().to_owned();
        cg.enter().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pids = cg.pids().unwrap();
        assert!(pids.contains(&child.id()), "{pids:?}");

        drop(cg);
        assert!(!dir.exists());
        assert_eq!(own(&mount), before);
        let theirs = std::fs::read_to_string(format!("/proc/{}/cgroup", child.id())).unwrap();
        assert_eq!(
            mount.join(parse_own_cgroup(&theirs).unwrap().trim_start_matches('/')),
            before
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
