//! [`Netlink`] for callers without a runtime (the CNI plugin, and the
//! daemon's synchronous start-up steps): each call runs to completion on a
//! private single-threaded runtime.

use std::net::Ipv4Addr;
use std::os::fd::BorrowedFd;

use tokio::runtime::Runtime;

use crate::netlink::{ClsactHook, DefaultRoute, Link, Netlink, NetlinkError, TcFilter};

pub struct BlockingNetlink {
    rt: Runtime,
    nl: Netlink,
}

impl BlockingNetlink {
    /// Opens a socket in the calling thread's network namespace. The thread
    /// must not be inside another tokio runtime (see [`on_fresh_thread`]).
    pub fn new() -> Result<Self, NetlinkError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(NetlinkError::Setup)?;
        let nl = rt.block_on(async { Netlink::connect() })?;
        Ok(Self { rt, nl })
    }

    pub fn link(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        self.rt.block_on(self.nl.link(name))
    }

    pub fn link_by_index(&self, index: u32) -> Result<Option<Link>, NetlinkError> {
        self.rt.block_on(self.nl.link_by_index(index))
    }

    pub fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        self.rt.block_on(self.nl.links())
    }

    pub fn link_with_address(&self, addr: Ipv4Addr) -> Result<Option<Link>, NetlinkError> {
        self.rt.block_on(self.nl.link_with_address(addr))
    }

    pub fn create_bridge(&self, name: &str, mtu: u32, mac: [u8; 6]) -> Result<bool, NetlinkError> {
        self.rt.block_on(self.nl.create_bridge(name, mtu, mac))
    }

    pub fn create_veth(
        &self,
        host: &str,
        peer: &str,
        peer_ns: BorrowedFd<'_>,
        mtu: u32,
        controller: u32,
    ) -> Result<(), NetlinkError> {
        self.rt
            .block_on(self.nl.create_veth(host, peer, peer_ns, mtu, controller))
    }

    pub fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        self.rt.block_on(self.nl.set_up(index))
    }

    pub fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        self.rt.block_on(self.nl.set_mtu(index, mtu))
    }

    pub fn set_hairpin(&self, index: u32, on: bool) -> Result<(), NetlinkError> {
        self.rt.block_on(self.nl.set_hairpin(index, on))
    }

    /// Deletes the link called `name`; `Ok(false)` when there is none.
    pub fn delete_link(&self, name: &str) -> Result<bool, NetlinkError> {
        self.rt.block_on(self.nl.delete_link_named(name))
    }

    pub fn add_address(&self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<(), NetlinkError> {
        self.rt.block_on(self.nl.add_address(index, ip, prefix))
    }

    pub fn addresses(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, NetlinkError> {
        self.rt.block_on(self.nl.addresses(index))
    }

    pub fn add_default_route(&self, index: u32, gw: Ipv4Addr) -> Result<(), NetlinkError> {
        self.rt.block_on(self.nl.add_default_route(index, gw))
    }

    pub fn default_routes(&self) -> Result<Vec<DefaultRoute>, NetlinkError> {
        self.rt.block_on(self.nl.default_routes())
    }

    pub fn tc_filters(&self, index: u32, hook: ClsactHook) -> Result<Vec<TcFilter>, NetlinkError> {
        self.rt.block_on(self.nl.tc_filters(index, hook))
    }
}

/// A thread of ours could not run the work.
#[derive(Debug, thiserror::Error)]
#[error("worker thread: {0}")]
pub struct ThreadError(pub String);

/// Runs `f` on a fresh thread in the caller's namespace. A
/// [`BlockingNetlink`] builds its own runtime; doing that on a thread that
/// is already inside a runtime (the daemon's) would panic, a fresh thread
/// cannot be. Threads start in their creator's network namespace.
pub fn on_fresh_thread<T: Send>(f: impl FnOnce() -> T + Send) -> Result<T, ThreadError> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("sluice-nl".into())
            .spawn_scoped(scope, f)
            .map_err(|e| ThreadError(e.to_string()))?
            .join()
            .map_err(|_| ThreadError("panicked".into()))
    })
}
