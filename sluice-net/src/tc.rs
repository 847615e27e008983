//! Attaching the pinned datapath programs to an interface: a pod's
//! host-side veth, the uplink, the overlay device.
//!
//! `sluiced` loads and pins the programs under `<bpffs>/sluice/`. The CNI
//! plugin attaches `prog_from_pod` and `prog_to_pod` before ADD returns, so
//! no pod ever sends a packet that bypasses the datapath; the daemon uses
//! the same functions to swap new programs into every hooked interface.
//!
//! Filters are cls_bpf filters on the clsact qdisc at a fixed priority and
//! handle ([`names::TC_PRIORITY`], [`names::TC_HANDLE`]). A netlink filter
//! lives in the kernel independently of any process, and the fixed address
//! lets a later attach replace the program in place (atomically, no window
//! without a program) instead of stacking a second filter.
//!
//! aya detaches a link when the program object or a taken link is dropped,
//! so every link is taken and forgotten: the filter must outlive us.

use std::io;
use std::path::{Path, PathBuf};

use aya::programs::tc::{NlOptions, SchedClassifierLink, TcAttachOptions, qdisc_add_clsact};
use aya::programs::{ProgramError, SchedClassifier, TcAttachType, TcError, TcHandle};
use proxy_common::names;

use crate::blocking::{BlockingNetlink, on_fresh_thread};
use crate::cni::error::{CniError, code};
use crate::netlink::{ClsactHook, NetlinkError};

/// `<bpffs>/sluice`: every pinned map and program.
pub fn pin_dir(bpffs: &Path) -> PathBuf {
    bpffs.join(names::PIN_DIR)
}

/// The program pins and the hook each one goes to: from-pod traffic enters
/// the host through the veth's ingress, to-pod traffic leaves through its
/// egress.
pub fn program_pins(bpffs: &Path) -> [(PathBuf, TcAttachType); 2] {
    let dir = pin_dir(bpffs);
    [
        (dir.join(names::PIN_PROG_FROM_POD), TcAttachType::Ingress),
        (dir.join(names::PIN_PROG_TO_POD), TcAttachType::Egress),
    ]
}

/// The program pins that do not exist (yet).
pub fn missing_pins(bpffs: &Path) -> Vec<PathBuf> {
    program_pins(bpffs)
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| !p.exists())
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("pinned program {} is missing: the sluiced datapath is not loaded yet", .0.display())]
    MissingPin(PathBuf),
    #[error("open pinned program {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("add clsact qdisc to {ifname}: {source}")]
    Clsact {
        ifname: String,
        #[source]
        source: TcError,
    },
    #[error("attach {} to {ifname} {hook:?}: {source}", path.display())]
    Attach {
        path: PathBuf,
        ifname: String,
        hook: TcAttachType,
        #[source]
        source: Box<ProgramError>,
    },
}

impl From<AttachError> for CniError {
    fn from(e: AttachError) -> Self {
        let c = match e {
            // The daemon has not started: the runtime should retry the ADD.
            AttachError::MissingPin(_) => code::TRY_AGAIN_LATER,
            _ => code::DATAPATH,
        };
        CniError::new(c, e.to_string())
    }
}

fn program_errno(e: &ProgramError) -> Option<i32> {
    match e {
        ProgramError::TcError(TcError::NetlinkError(n)) => n.raw_os_error(),
        ProgramError::TcError(TcError::IoError(e)) => e.raw_os_error(),
        ProgramError::NetlinkError(n) => n.raw_os_error(),
        ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        _ => None,
    }
}

/// Attaches (or atomically re-attaches) the pinned programs to the host-side
/// veth `host_ifname` in the caller's network namespace: `prog_from_pod` on
/// TC ingress, `prog_to_pod` on TC egress.
///
/// Both pins are opened before anything is changed, so a missing pin
/// ([`AttachError::MissingPin`]) leaves the interface untouched.
pub fn attach_pod_programs(host_ifname: &str, bpffs: &Path) -> Result<(), AttachError> {
    attach_pinned(host_ifname, program_pins(bpffs))
}

/// Attaches (or atomically replaces) pinned TC programs on `ifname`, each on
/// its hook, at Sluice's fixed priority and handle. All pins are opened
/// before anything is changed.
pub fn attach_pinned(
    host_ifname: &str,
    pins: impl IntoIterator<Item = (PathBuf, TcAttachType)>,
) -> Result<(), AttachError> {
    let mut progs = Vec::with_capacity(2);
    for (path, hook) in pins {
        let prog = match SchedClassifier::from_pin(&path) {
            Ok(p) => p,
            Err(e) if program_errno(&e) == Some(libc::ENOENT) => {
                return Err(AttachError::MissingPin(path));
            }
            Err(e) => {
                return Err(AttachError::Open {
                    path,
                    source: Box::new(e),
                });
            }
        };
        progs.push((path, hook, prog));
    }

    match qdisc_add_clsact(host_ifname) {
        Ok(()) => {}
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(source) => {
            return Err(AttachError::Clsact {
                ifname: host_ifname.to_owned(),
                source,
            });
        }
    }

    for (path, hook, mut prog) in progs {
        attach_one(&mut prog, host_ifname, hook).map_err(|e| AttachError::Attach {
            path,
            ifname: host_ifname.to_owned(),
            hook,
            source: Box::new(e),
        })?;
    }
    Ok(())
}

fn our_filter(ifname: &str, hook: TcAttachType) -> Result<SchedClassifierLink, ProgramError> {
    SchedClassifierLink::attached(
        ifname,
        hook,
        names::TC_PRIORITY,
        TcHandle::from(names::TC_HANDLE),
        None,
    )
    .map_err(|e: io::Error| ProgramError::TcError(TcError::IoError(e)))
}

fn attach_one(
    prog: &mut SchedClassifier,
    ifname: &str,
    hook: TcAttachType,
) -> Result<(), ProgramError> {
    // Replace first: on a live pod this swaps the program without a gap.
    let id = match prog.attach_to_link(our_filter(ifname, hook)?) {
        Ok(id) => id,
        // No filter at our priority/handle yet: create it.
        Err(e) if program_errno(&e) == Some(libc::ENOENT) => {
            let opts = TcAttachOptions::Netlink(NlOptions {
                priority: names::TC_PRIORITY,
                handle: TcHandle::from(names::TC_HANDLE),
                ..Default::default()
            });
            match prog.attach_with_options(ifname, hook, opts) {
                Ok(id) => id,
                // Someone created it in between: replace theirs.
                Err(e) if program_errno(&e) == Some(libc::EEXIST) => {
                    prog.attach_to_link(our_filter(ifname, hook)?)?
                }
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    // The filter must outlive this program object: dropping the link would
    // detach it.
    std::mem::forget(prog.take_link(id)?);
    Ok(())
}

/// Whether both of our filters are on the link (by index), per hook.
pub fn filters_present(nl: &BlockingNetlink, index: u32) -> Result<(bool, bool), NetlinkError> {
    let ours = |hook| -> Result<bool, NetlinkError> {
        Ok(nl.tc_filters(index, hook)?.iter().any(|f| {
            f.kind == "bpf" && f.priority == names::TC_PRIORITY && f.handle == names::TC_HANDLE
        }))
    };
    Ok((ours(ClsactHook::Ingress)?, ours(ClsactHook::Egress)?))
}

/// Whether `host_ifname` (in the caller's network namespace) carries both
/// datapath filters. `Ok(false)` when the link does not exist.
pub fn pod_programs_attached(host_ifname: &str) -> Result<bool, NetlinkError> {
    on_fresh_thread(|| -> Result<bool, NetlinkError> {
        let nl = BlockingNetlink::new()?;
        let Some(link) = nl.link(host_ifname)? else {
            return Ok(false);
        };
        let (ingress, egress) = filters_present(&nl, link.index)?;
        Ok(ingress && egress)
    })?
}

/// An interface carrying Sluice's TC filters, and on which hooks.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HookedLink {
    pub interface: String,
    pub ingress: bool,
    pub egress: bool,
}

/// Every link in the caller's network namespace with a Sluice filter: the
/// pod veths, the uplink and the overlay device, as the kernel has them.
pub fn hooked_links() -> Result<Vec<HookedLink>, NetlinkError> {
    on_fresh_thread(|| -> Result<Vec<HookedLink>, NetlinkError> {
        let nl = BlockingNetlink::new()?;
        let mut out = Vec::new();
        for link in nl.links()? {
            let (ingress, egress) = filters_present(&nl, link.index)?;
            if ingress || egress {
                out.push(HookedLink {
                    interface: link.name,
                    ingress,
                    egress,
                });
            }
        }
        Ok(out)
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_layout() {
        let pins = program_pins(Path::new("/sys/fs/bpf"));
        assert_eq!(pins[0].0, PathBuf::from("/sys/fs/bpf/sluice/prog_from_pod"));
        assert_eq!(pins[0].1, TcAttachType::Ingress);
        assert_eq!(pins[1].0, PathBuf::from("/sys/fs/bpf/sluice/prog_to_pod"));
        assert_eq!(pins[1].1, TcAttachType::Egress);
    }

    #[test]
    fn missing_pins_are_retryable() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(missing_pins(dir.path()).len(), 2);
        // Nothing is opened or attached when a pin is missing, so the
        // interface name is never looked up.
        let e = attach_pod_programs("does-not-exist", dir.path()).unwrap_err();
        assert!(matches!(e, AttachError::MissingPin(_)), "{e}");
        assert_eq!(CniError::from(e).code, code::TRY_AGAIN_LATER);
    }
}
