//! Keeping the datapath's local-endpoint map in step with the pods: an
//! entry per configured pod, none for a deleted one. A failure here costs
//! only the fast path (the pod is still reached through the bridge), so it
//! is logged and never fails the command.

use std::net::Ipv4Addr;
use std::path::Path;

use sluice_net::endpoints::{EndpointError, LocalEndpoints};

use crate::log::Logger;

/// Registers the pod at `ip` behind host veth `ifindex`, its interface
/// having `mac`.
pub(crate) fn register(log: &Logger, bpffs: &Path, ip: Ipv4Addr, ifindex: u32, mac: &[u8]) {
    let Ok(mac) = <[u8; 6]>::try_from(mac) else {
        log.warn(format_args!(
            "pod interface MAC {mac:02x?} is not 6 bytes; {ip} takes the bridge path"
        ));
        return;
    };
    let done = LocalEndpoints::open(bpffs).and_then(|mut m| m.register(ip, ifindex, mac));
    match done {
        Ok(()) => log.info(format_args!("registered {ip} for direct delivery")),
        Err(e) => log.warn(format_args!("{e}; {ip} takes the bridge path")),
    }
}

/// Forgets the pods at `ips`.
pub(crate) fn forget(log: &Logger, bpffs: &Path, ips: &[Ipv4Addr]) {
    if ips.is_empty() {
        return;
    }
    let mut map = match LocalEndpoints::open(bpffs) {
        Ok(m) => m,
        // Nothing can point at a pod in a map that does not exist.
        Err(EndpointError::MissingMap(_)) => return,
        Err(e) => {
            log.warn(format_args!("{e}; the daemon removes stale entries"));
            return;
        }
    };
    for ip in ips {
        if let Err(e) = map.forget(*ip) {
            log.warn(format_args!(
                "forget {ip}: {e}; the daemon removes stale entries"
            ));
        }
    }
}
