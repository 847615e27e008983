//! Link, address, route and TC-filter primitives over rtnetlink.
//!
//! A [`Netlink`] owns a single-threaded tokio runtime and one rtnetlink
//! socket, created in the network namespace of the thread that calls
//! [`Netlink::new`]; every call blocks until the kernel answered. Create it
//! on a thread that is not inside another tokio runtime (see
//! [`crate::netns::on_fresh_thread`]).

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::pin::pin;

use futures::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoVeth, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute};
use netlink_packet_route::tc::{TcAttribute, TcMessage};
use rtnetlink::{
    Handle, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};
use tokio::runtime::Runtime;

use crate::error::{CniError, code};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("{op}: {source}")]
    Request {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("open netlink socket: {0}")]
    Setup(#[source] io::Error),
    #[error("{0}")]
    Unexpected(String),
}

impl NetlinkError {
    /// The kernel's errno for a refused request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Request {
                source: rtnetlink::Error::NetlinkError(m),
                ..
            } => Some(m.raw_code().abs()).filter(|c| *c != 0),
            _ => None,
        }
    }
}

impl From<NetlinkError> for CniError {
    fn from(e: NetlinkError) -> Self {
        CniError::new(code::IO, e.to_string())
    }
}

fn request(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let op = op.into();
    move |source| NetlinkError::Request { op, source }
}

fn errno_of(e: &rtnetlink::Error) -> i32 {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.raw_code().abs(),
        _ => 0,
    }
}

/// What the plugin needs to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSummary {
    pub index: u32,
    pub name: String,
    pub mac: Vec<u8>,
    pub mtu: u32,
    /// Index of the bridge (or other controller) this link is a port of.
    pub controller: Option<u32>,
    pub kind: Option<InfoKind>,
    pub up: bool,
    /// Hairpin mode, for bridge ports.
    pub hairpin: Option<bool>,
}

impl LinkSummary {
    fn from_message(m: &LinkMessage) -> Self {
        let mut s = LinkSummary {
            index: m.header.index,
            name: String::new(),
            mac: Vec::new(),
            mtu: 0,
            controller: None,
            kind: None,
            up: m.header.flags.contains(LinkFlags::Up),
            hairpin: None,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => s.name = n.clone(),
                LinkAttribute::Address(mac) => s.mac = mac.clone(),
                LinkAttribute::Mtu(mtu) => s.mtu = *mtu,
                LinkAttribute::Controller(c) if *c != 0 => s.controller = Some(*c),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        match i {
                            LinkInfo::Kind(k) => s.kind = Some(k.clone()),
                            LinkInfo::PortData(InfoPortData::BridgePort(opts)) => {
                                for o in opts {
                                    if let InfoBridgePort::HairpinMode(h) = o {
                                        s.hairpin = Some(*h);
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        s
    }
}

/// A default route: its gateway and output link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultRoute {
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
}

/// A TC filter as listed by the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcFilter {
    pub priority: u16,
    pub handle: u32,
    pub kind: String,
}

/// Which clsact hook to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClsactHook {
    Ingress,
    Egress,
}

pub struct Netlink {
    rt: Runtime,
    handle: Handle,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn new() -> Result<Self, NetlinkError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(NetlinkError::Setup)?;
        let (conn, handle, _) = rt
            .block_on(async { rtnetlink::new_connection() })
            .map_err(NetlinkError::Setup)?;
        rt.spawn(conn);
        Ok(Self { rt, handle })
    }

    fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// The link called `name`, if there is one.
    pub fn link(&self, name: &str) -> Result<Option<LinkSummary>, NetlinkError> {
        let h = self.handle.clone();
        let r = self.block_on(async move {
            let mut s = pin!(h.link().get().match_name(name.to_owned()).execute());
            s.try_next().await
        });
        match r {
            Ok(m) => Ok(m.as_ref().map(LinkSummary::from_message)),
            Err(e) if errno_of(&e) == libc::ENODEV => Ok(None),
            Err(e) => Err(request(format!("get link {name}"))(e)),
        }
    }

    pub fn link_by_index(&self, index: u32) -> Result<Option<LinkSummary>, NetlinkError> {
        let h = self.handle.clone();
        let r = self.block_on(async move {
            let mut s = pin!(h.link().get().match_index(index).execute());
            s.try_next().await
        });
        match r {
            Ok(m) => Ok(m.as_ref().map(LinkSummary::from_message)),
            Err(e) if errno_of(&e) == libc::ENODEV => Ok(None),
            Err(e) => Err(request(format!("get link #{index}"))(e)),
        }
    }

    /// Every link in the namespace.
    pub fn links(&self) -> Result<Vec<LinkSummary>, NetlinkError> {
        let h = self.handle.clone();
        self.block_on(async move {
            let s = h.link().get().execute();
            s.map_ok(|m| LinkSummary::from_message(&m))
                .try_collect::<Vec<_>>()
                .await
        })
        .map_err(request("dump links"))
    }

    /// Creates a bridge; `Ok(false)` when one of that name already exists
    /// (another ADD may have won the race).
    pub fn create_bridge(&self, name: &str, mtu: u32, mac: [u8; 6]) -> Result<bool, NetlinkError> {
        let msg = rtnetlink::LinkBridge::new(name)
            .mtu(mtu)
            .address(mac.to_vec())
            .build();
        match self.block_on(self.handle.link().add(msg).execute()) {
            Ok(()) => Ok(true),
            Err(e) if errno_of(&e) == libc::EEXIST => Ok(false),
            Err(e) => Err(request(format!("create bridge {name}"))(e)),
        }
    }

    /// Creates a veth pair whose peer is born inside `peer_ns` under its final
    /// name (no temporary name, no rename, no move), with `host` enslaved to
    /// `controller`. Both ends get `mtu`.
    pub fn create_veth(
        &self,
        host: &str,
        peer: &str,
        peer_ns: BorrowedFd<'_>,
        mtu: u32,
        controller: u32,
    ) -> Result<(), NetlinkError> {
        let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_owned())
            .mtu(mtu)
            .setns_by_fd(peer_ns.as_raw_fd())
            .build();
        let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host.to_owned())
            .mtu(mtu)
            .controller(controller)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        self.block_on(self.handle.link().add(msg).execute())
            .map_err(request(format!("create veth {host} (peer {peer})")))
    }

    pub fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.block_on(self.handle.link().set(msg).execute())
            .map_err(request(format!("set link #{index} up")))
    }

    pub fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.block_on(self.handle.link().set(msg).execute())
            .map_err(request(format!("set link #{index} mtu {mtu}")))
    }

    /// Hairpin lets a pod reach itself through a Service address: the
    /// datapath may send its packet back out of the port it came in on.
    pub fn set_hairpin(&self, index: u32, on: bool) -> Result<(), NetlinkError> {
        let msg = LinkBridgePort::new(index).hairpin(on).build();
        self.block_on(self.handle.link().set_port(msg).execute())
            .map_err(request(format!("set hairpin on link #{index}")))
    }

    /// Deletes the link called `name`; `Ok(false)` when there is none.
    pub fn delete_link(&self, name: &str) -> Result<bool, NetlinkError> {
        let Some(link) = self.link(name)? else {
            return Ok(false);
        };
        match self.block_on(self.handle.link().del(link.index).execute()) {
            Ok(()) => Ok(true),
            Err(e) if errno_of(&e) == libc::ENODEV => Ok(false),
            Err(e) => Err(request(format!("delete link {name}"))(e)),
        }
    }

    /// Adds `ip/prefix` to the link; an identical existing address is fine.
    pub fn add_address(&self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<(), NetlinkError> {
        match self.block_on(
            self.handle
                .address()
                .add(index, IpAddr::V4(ip), prefix)
                .execute(),
        ) {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == libc::EEXIST => Ok(()),
            Err(e) => Err(request(format!(
                "add address {ip}/{prefix} to link #{index}"
            ))(e)),
        }
    }

    /// IPv4 addresses (with prefix length) on the link.
    pub fn addresses(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, NetlinkError> {
        let h = self.handle.clone();
        let msgs = self
            .block_on(async move {
                h.address()
                    .get()
                    .set_link_index_filter(index)
                    .execute()
                    .try_collect::<Vec<_>>()
                    .await
            })
            .map_err(request(format!("list addresses of link #{index}")))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == index)
            .flat_map(|m| {
                m.attributes.iter().filter_map(move |a| match a {
                    AddressAttribute::Local(IpAddr::V4(ip)) => Some((*ip, m.header.prefix_len)),
                    _ => None,
                })
            })
            .collect())
    }

    /// Adds `default via gw dev #index` to the main table.
    pub fn add_default_route(&self, index: u32, gw: Ipv4Addr) -> Result<(), NetlinkError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gw)
            .output_interface(index)
            .build();
        self.block_on(self.handle.route().add(msg).execute())
            .map_err(request(format!("add default route via {gw}")))
    }

    /// IPv4 default routes of the main table.
    pub fn default_routes(&self) -> Result<Vec<DefaultRoute>, NetlinkError> {
        let h = self.handle.clone();
        let msgs = self
            .block_on(async move {
                let q = RouteMessageBuilder::<Ipv4Addr>::new().build();
                h.route().get(q).execute().try_collect::<Vec<_>>().await
            })
            .map_err(request("dump routes"))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.destination_prefix_length == 0)
            .filter(|m| {
                let table = m
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        RouteAttribute::Table(t) => Some(*t),
                        _ => None,
                    })
                    .unwrap_or(u32::from(m.header.table));
                table == u32::from(netlink_packet_route::route::RouteHeader::RT_TABLE_MAIN)
            })
            .map(|m| {
                let mut gw = None;
                let mut oif = None;
                for a in &m.attributes {
                    match a {
                        RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
                        RouteAttribute::Oif(o) => oif = Some(*o),
                        _ => {}
                    }
                }
                DefaultRoute { gateway: gw, oif }
            })
            .collect())
    }

    /// The TC filters on a clsact hook of the link (empty without clsact).
    pub fn tc_filters(&self, index: u32, hook: ClsactHook) -> Result<Vec<TcFilter>, NetlinkError> {
        let h = self.handle.clone();
        let ifindex = i32::try_from(index)
            .map_err(|_| NetlinkError::Unexpected(format!("link index {index} out of range")))?;
        let r = self.block_on(async move {
            let req = h.traffic_filter(ifindex).get();
            let req = match hook {
                ClsactHook::Ingress => req.ingress(),
                ClsactHook::Egress => req.egress(),
            };
            req.execute().try_collect::<Vec<TcMessage>>().await
        });
        let msgs = match r {
            Ok(m) => m,
            // No clsact qdisc: no filters.
            Err(e) if matches!(errno_of(&e), libc::EINVAL | libc::ENOENT) => Vec::new(),
            Err(e) => return Err(request(format!("list tc filters of link #{index}"))(e)),
        };
        Ok(msgs
            .iter()
            .filter(|m| m.header.handle.major != 0 || m.header.handle.minor != 0)
            .map(|m| TcFilter {
                priority: (m.header.info >> 16) as u16,
                handle: (u32::from(m.header.handle.major) << 16) | u32::from(m.header.handle.minor),
                kind: m
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        TcAttribute::Kind(k) => Some(k.clone()),
                        _ => None,
                    })
                    .unwrap_or_default(),
            })
            .collect())
    }
}
