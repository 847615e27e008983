//! Cleaning up when a test run is interrupted.
//!
//! A failing test unwinds and its guards' `Drop` remove what it made. An
//! interrupt (Ctrl-C, a CI timeout's SIGTERM) unwinds nothing, so every
//! guard also registers what it made here, and the first signal removes all
//! of it before the process exits. What dies harder (SIGKILL) is left to
//! [`crate::sweep`].

use std::{
    path::PathBuf,
    sync::{Mutex, Once},
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    Netns(String),
    Mount(PathBuf),
    Dir(PathBuf),
    Process(i32),
    /// A test cgroup ([`crate::cgroup`]) and where what is inside goes
    /// back to before it is removed.
    Cgroup {
        dir: PathBuf,
        home: PathBuf,
    },
}

static ITEMS: Mutex<Vec<Item>> = Mutex::new(Vec::new());
static HANDLER: Once = Once::new();

pub fn register(item: Item) {
    HANDLER.call_once(install_handler);
    ITEMS.lock().unwrap_or_else(|e| e.into_inner()).push(item);
}

pub fn unregister(item: &Item) {
    let mut items = ITEMS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = items.iter().rposition(|x| x == item) {
        items.remove(i);
    }
}

fn remove(item: &Item) {
    match item {
        Item::Process(pid) => {
            // SAFETY: plain kill.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        Item::Netns(name) => {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", name])
                .status();
        }
        Item::Mount(path) => crate::bpffs::unmount(path),
        Item::Dir(path) => {
            let _ = std::fs::remove_dir_all(path);
        }
        Item::Cgroup { dir, home } => {
            let _ = crate::cgroup::remove(dir, home);
        }
    }
}

fn install_handler() {
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ]);
    let Ok(mut signals) = signals else {
        return;
    };
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            let items = ITEMS.lock().unwrap_or_else(|e| e.into_inner()).clone();
            // Newest first: processes before the namespaces they run in,
            // namespaces before the mounts their daemons used.
            for item in items.iter().rev() {
                remove(item);
            }
            eprintln!(
                "interrupted (signal {sig}): removed {} test objects",
                items.len()
            );
            std::process::exit(128 + sig);
        }
    });
}
