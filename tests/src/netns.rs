//! Network namespaces owned by a test, and running code inside them.
//!
//! Names start with `sl<pid>-` so an interrupted run's leftovers can be told
//! apart and swept (`cargo xtask test` does). Code runs inside a namespace
//! either as a child process (`ip netns exec`) or on a thread that has
//! entered it (namespaces are per thread), so sockets opened there live in
//! the namespace: the test itself is the pods' clients and servers.

use std::{
    fs::File,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    thread::JoinHandle,
};

use anyhow::{Context, Result, bail};

/// A command that enters the namespace at `ns_path` between fork and exec:
/// no `ip netns exec` in between, so timing it times the program alone, and
/// the program never runs in the root namespace.
pub fn command_entering(ns_path: &Path, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
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

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs `ip` with arguments; fails with its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    check(&out, &format!("ip {}", args.join(" ")))
}

fn check(out: &Output, what: &str) -> Result<()> {
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `sl<pid>-<n>-<role>` with its loopback up.
    pub fn new(role: &str) -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("sl{}-{n}-{role}", std::process::id());
        ip(&["netns", "add", &name])?;
        crate::cleanup::register(crate::cleanup::Item::Netns(name.clone()));
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

    /// `ip -n <ns> ...`: the ip command's netlink socket is opened inside
    /// the namespace, so nothing it creates ever exists in the root one.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// A command that will run inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs a command inside the namespace and returns its stdout.
    pub fn output(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = self
            .command(program)
            .args(args)
            .output()
            .with_context(|| format!("running {program} in {}", self.name))?;
        check(
            &out,
            &format!("{program} {} in {}", args.join(" "), self.name),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Writes a sysctl of this namespace (through `ip netns exec`, whose
    /// /proc/sys/net is the namespace's own).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.output("sysctl", &["-q", "-w", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// Runs `f` on a new thread inside the namespace and waits for it.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        self.spawn(f)?
            .join()
            .map_err(|_| anyhow::anyhow!("thread in {} panicked", self.name))
    }

    /// Starts `f` on a new thread inside the namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<JoinHandle<T>> {
        let file = File::open(self.path())
            .with_context(|| format!("opening {}", self.path().display()))?;
        let name = self.name.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(format!("in-{name}"))
            .spawn(move || {
                // SAFETY: setns on a namespace fd we opened; affects only this thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                let _ = tx.send(if rc == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                });
                drop(file);
                // The caller gets the error through the channel; `f` must
                // never run in the wrong namespace.
                assert!(rc == 0, "setns failed");
                f()
            })?;
        rx.recv()
            .context("namespace thread vanished")?
            .with_context(|| format!("entering {name}"))?;
        Ok(handle)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Processes still inside would keep the namespace alive: stop them.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: plain kill.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = ip(&["netns", "del", &self.name]);
        crate::cleanup::unregister(&crate::cleanup::Item::Netns(self.name.clone()));
    }
}
