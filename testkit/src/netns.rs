//! Network namespaces owned by a test, and running code inside them.
//!
//! Names are `sl<pid>-<n>-<role>`, so an interrupted run's leftovers can be
//! told apart and swept ([`crate::sweep`]). Links are made with `ip -n`,
//! whose netlink socket lives in the namespace, so nothing ever exists in
//! the root one. Code runs inside a namespace as a child process (`ip netns
//! exec`, or [`command_entering`]) or on a thread that has entered it
//! (namespaces are per thread), so sockets opened there live in the
//! namespace: the test itself can be the clients and servers.

use std::{
    any::Any,
    ffi::OsStr,
    fs::File,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    thread::JoinHandle,
};

use anyhow::{Context, Result, anyhow, bail};

use crate::cleanup::{self, Item};

static NEXT: AtomicU32 = AtomicU32::new(0);
/// `ip netns add` sets up /run/netns on first use, and concurrent adds and
/// deletes race it: tests that make namespaces from several threads at once
/// take turns.
static NETNS_LOCK: Mutex<()> = Mutex::new(());

/// Runs `ip` with arguments and returns its stdout; fails with its stderr.
pub fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    stdout_of(&out, &format!("ip {}", args.join(" ")))
}

fn stdout_of(out: &Output, what: &str) -> Result<String> {
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A command that enters the namespace at `ns_path` between fork and exec:
/// no `ip netns exec` in between, so timing it times the program alone, it
/// shares the test's mount namespace (and sees its bpffs mounts), and the
/// program never runs in the root namespace.
pub fn command_entering(ns_path: &Path, program: impl AsRef<OsStr>) -> Result<Command> {
    let ns = File::open(ns_path).with_context(|| format!("opening {}", ns_path.display()))?;
    let mut cmd = Command::new(program);
    // SAFETY: setns is async-signal-safe; it runs in the child before exec.
    // The closure owns the namespace file, so the fd stays open as long as
    // the command can be spawned.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `sl<pid>-<n>-<role>` with its loopback up.
    pub fn new(role: &str) -> Result<Self> {
        crate::sweep::once();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("sl{}-{n}-{role}", std::process::id());
        {
            let _turn = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            ip(&["netns", "add", &name])?;
        }
        cleanup::register(Item::Netns(name.clone()));
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n <ns> ...`; returns its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// A command that will run inside the namespace (through `ip netns
    /// exec`, which also gives it the namespace's own /sys).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// [`command_entering`] this namespace.
    pub fn command_entering(&self, program: impl AsRef<OsStr>) -> Result<Command> {
        command_entering(&self.path(), program)
    }

    /// Runs a command inside the namespace and returns its stdout; fails
    /// with its stderr.
    pub fn output(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = self
            .command(program)
            .args(args)
            .output()
            .with_context(|| format!("running {program} in {}", self.name))?;
        stdout_of(
            &out,
            &format!("{program} {} in {}", args.join(" "), self.name),
        )
    }

    /// Writes a sysctl of this namespace (through `ip netns exec`, whose
    /// /proc/sys/net is the namespace's own).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.output("sysctl", &["-q", "-w", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// Whether one ping to `to` is answered within 2 s.
    pub fn ping(&self, to: impl std::fmt::Display) -> bool {
        self.output("ping", &["-c", "1", "-W", "2", "-q", &to.to_string()])
            .is_ok()
    }

    /// Runs `f` on a new thread inside the namespace and waits for it; `f`
    /// may borrow from the caller. A panic in `f` is an error that carries
    /// its message.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let file = self.open()?;
        std::thread::scope(|s| {
            let (tx, rx) = std::sync::mpsc::channel();
            let handle = std::thread::Builder::new()
                .name(format!("in-{}", self.name))
                .spawn_scoped(s, move || enter(file, tx).then(f))?;
            self.entered(&rx)?;
            handle
                .join()
                .map_err(|p| self.panicked(p))
                .map(|r| r.expect("entered above"))
        })
    }

    /// Starts `f` on a new thread inside the namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<JoinHandle<T>> {
        let file = self.open()?;
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(format!("in-{}", self.name))
            .spawn(move || {
                // The caller gets the error through the channel; `f` must
                // never run in the wrong namespace.
                assert!(enter(file, tx), "setns failed");
                f()
            })?;
        self.entered(&rx)?;
        Ok(handle)
    }

    fn open(&self) -> Result<File> {
        File::open(self.path()).with_context(|| format!("opening {}", self.path().display()))
    }

    fn entered(&self, rx: &std::sync::mpsc::Receiver<std::io::Result<()>>) -> Result<()> {
        rx.recv()
            .context("namespace thread vanished")?
            .with_context(|| format!("entering {}", self.name))
    }

    fn panicked(&self, payload: Box<dyn Any + Send>) -> anyhow::Error {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        anyhow!("thread in {} panicked: {msg}", self.name)
    }
}

/// Moves the calling thread into the namespace `file` is; tells the
/// spawning thread how that went.
fn enter(file: File, tx: std::sync::mpsc::Sender<std::io::Result<()>>) -> bool {
    // SAFETY: setns on a namespace fd we opened; affects only this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    let _ = tx.send(if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    });
    rc == 0
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Processes still inside would keep the namespace alive: stop them.
        if let Ok(pids) = ip(&["netns", "pids", &self.name]) {
            for pid in pids.split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: plain kill.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        {
            let _turn = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            let _ = ip(&["netns", "del", &self.name]);
        }
        cleanup::unregister(&Item::Netns(self.name.clone()));
    }
}
