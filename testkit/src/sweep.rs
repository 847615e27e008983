//! Removing what interrupted test runs left behind.
//!
//! Every test object is named after the process that made it: namespaces
//! `sl<pid>-...` ([`crate::netns`]), scratch directories and bpffs mounts
//! `/run/sluice-test/<pid>-...` ([`crate::bpffs`]), cgroups
//! `<cgroup2 mount>/sluice-test-<pid>-...` ([`crate::cgroup`]). Objects
//! of processes that are gone are removed; a running test's are left
//! alone, so any number of test processes may sweep at once.

use std::{path::Path, process::Command, sync::Once};

use crate::{bpffs::TEST_RUN_DIR, netns::ip};

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The pid a test object's name starts with, if it is one of ours.
fn owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("sl").unwrap_or(name);
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Sweeps on the first call in this process: a test run straight through
/// `cargo test` (no `cargo xtask test` around it) still starts clean.
pub(crate) fn once() {
    static SWEEP: Once = Once::new();
    SWEEP.call_once(sweep);
}

pub fn sweep() {
    let mut removed = 0;
    if let Ok(list) = ip(&["netns", "list"]) {
        for line in list.lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if !name.starts_with("sl") {
                continue;
            }
            if let Some(pid) = owner(name)
                && !alive(pid)
            {
                if let Ok(pids) = ip(&["netns", "pids", name]) {
                    for p in pids.split_whitespace() {
                        let _ = Command::new("kill").args(["-9", p]).status();
                    }
                }
                let _ = ip(&["netns", "del", name]);
                removed += 1;
            }
        }
    }
    // After the namespaces, whose processes are gone by now: what is left
    // in a dead run's cgroup goes to the root cgroup (moving a process
    // there attaches nothing), and the cgroup is removed.
    if let Ok(mount) = crate::cgroup::cgroup2_mount()
        && let Ok(dir) = std::fs::read_dir(&mount)
    {
        for e in dir.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            if crate::cgroup::owner(&name).is_some_and(|p| !alive(p))
                && crate::cgroup::remove(&e.path(), &mount).is_ok()
            {
                removed += 1;
            }
        }
    }
    // Mounts before directories: removing a directory that still holds a
    // bpffs would descend into it.
    if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
        for line in mounts.lines() {
            let Some(target) = line.split_whitespace().nth(1) else {
                continue;
            };
            if let Some(rest) = target.strip_prefix(&format!("{TEST_RUN_DIR}/"))
                && let Some(pid) = owner(rest)
                && !alive(pid)
            {
                let _ = Command::new("umount").args(["-l", target]).status();
                removed += 1;
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir(TEST_RUN_DIR) {
        for e in dir.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            if owner(&name).is_some_and(|p| !alive(p)) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    if removed > 0 {
        eprintln!("sweep: removed {removed} leftovers of earlier interrupted test runs");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn owners() {
        assert_eq!(super::owner("sl1234-0-n1"), Some(1234));
        assert_eq!(super::owner("99-3-fixtures"), Some(99));
        assert_eq!(super::owner("slx"), None);
    }
}
