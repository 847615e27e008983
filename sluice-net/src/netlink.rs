//! The one rtnetlink layer: links, addresses, routes, neighbours, FDB
//! entries and TC filters, in the network namespace the socket was opened
//! in. [`Netlink`] is async, for the daemon's runtime;
//! [`crate::blocking::BlockingNetlink`] runs the same calls to completion
//! for the CNI plugin, which has no runtime of its own.
//!
//! Removing what is already gone and adding what is already there succeed
//! where the caller's goal is the state, not the operation; the doc of each
//! call says which.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use netlink_packet_route::{
    AddressFamily,
    address::{AddressAttribute, AddressMessage},
    link::{
        AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoBridgePort, InfoData, InfoKind,
        InfoPortData, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
    },
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
    },
    route::{RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol},
    tc::{TcAttribute, TcMessage},
};
use rtnetlink::{
    Handle, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

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

impl From<crate::blocking::ThreadError> for NetlinkError {
    fn from(e: crate::blocking::ThreadError) -> Self {
        Self::Unexpected(e.to_string())
    }
}

impl NetlinkError {
    /// The kernel's (positive) errno for a refused request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Request { source, .. } => Some(errno_of(source)).filter(|c| *c != 0),
            _ => None,
        }
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

/// The facts about a link that Sluice looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub kind: Option<InfoKind>,
    pub mac: Vec<u8>,
    pub mtu: u32,
    pub up: bool,
    /// Index of the bridge (or other controller) this link is a port of.
    pub controller: Option<u32>,
    /// Hairpin mode, for bridge ports.
    pub hairpin: Option<bool>,
    /// A VXLAN device's parameters.
    pub vxlan: Option<VxlanFacts>,
}

/// A VXLAN device's parameters, as the kernel reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VxlanFacts {
    pub vni: Option<u32>,
    pub port: Option<u16>,
    pub local: Option<Ipv4Addr>,
    /// Index of the underlay device (`dev` in `ip link add ... type vxlan`).
    pub link: Option<u32>,
    pub learning: Option<bool>,
    pub collect_metadata: bool,
    /// Default remote or multicast group (floods unknown destinations).
    pub group: Option<Ipv4Addr>,
}

impl Link {
    fn from_message(m: &LinkMessage) -> Self {
        let mut l = Link {
            index: m.header.index,
            up: m.header.flags.contains(LinkFlags::Up),
            ..Default::default()
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::Address(mac) => l.mac = mac.clone(),
                LinkAttribute::Mtu(mtu) => l.mtu = *mtu,
                LinkAttribute::Controller(c) if *c != 0 => l.controller = Some(*c),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        match i {
                            LinkInfo::Kind(k) => l.kind = Some(k.clone()),
                            LinkInfo::Data(InfoData::Vxlan(v)) => {
                                l.vxlan = Some(VxlanFacts::from_info(v))
                            }
                            LinkInfo::PortData(InfoPortData::BridgePort(opts)) => {
                                for o in opts {
                                    if let InfoBridgePort::HairpinMode(h) = o {
                                        l.hairpin = Some(*h);
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
        if l.kind == Some(InfoKind::Vxlan) && l.vxlan.is_none() {
            l.vxlan = Some(VxlanFacts::default());
        }
        l
    }
}

impl VxlanFacts {
    fn from_info(infos: &[InfoVxlan]) -> Self {
        let mut v = VxlanFacts::default();
        for i in infos {
            match i {
                InfoVxlan::Id(id) => v.vni = Some(*id),
                InfoVxlan::Port(p) => v.port = Some(*p),
                InfoVxlan::Local(a) => v.local = Some(*a),
                InfoVxlan::Link(l) if *l != 0 => v.link = Some(*l),
                InfoVxlan::Learning(b) => v.learning = Some(*b),
                InfoVxlan::CollectMetadata(b) => v.collect_metadata = *b,
                InfoVxlan::Group(g) if !g.is_unspecified() => v.group = Some(*g),
                _ => {}
            }
        }
        v
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

/// A permanent IPv4 neighbour entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Neighbour {
    pub addr: Ipv4Addr,
    pub mac: [u8; 6],
}

/// A permanent FDB entry of a VXLAN device: frames to `mac` go to `dst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbEntry {
    pub mac: [u8; 6],
    pub dst: Ipv4Addr,
}

/// An IPv4 route of the main table through one link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub dst: Ipv4Network,
    pub gateway: Option<Ipv4Addr>,
    pub onlink: bool,
    pub metric: u32,
}

impl std::fmt::Display for Route {
    /// As `ip route` shows it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.dst)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if self.onlink {
            f.write_str(" onlink")?;
        }
        if self.metric != 0 {
            write!(f, " metric {}", self.metric)?;
        }
        Ok(())
    }
}

/// A netlink socket of the calling thread's network namespace, whose
/// connection runs as a task of the current tokio runtime.
#[derive(Clone)]
pub struct Netlink {
    h: Handle,
}

impl Netlink {
    /// Opens the socket; must be called inside a tokio runtime.
    pub fn connect() -> Result<Self, NetlinkError> {
        let (conn, h, _) = rtnetlink::new_connection().map_err(NetlinkError::Setup)?;
        tokio::spawn(conn);
        Ok(Self { h })
    }

    /// The link called `name`, if there is one.
    pub async fn link(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let r = self
            .h
            .link()
            .get()
            .match_name(name.to_owned())
            .execute()
            .try_next()
            .await;
        match r {
            Ok(m) => Ok(m.as_ref().map(Link::from_message)),
            Err(e) if errno_of(&e) == libc::ENODEV => Ok(None),
            Err(e) => Err(request(format!("get link {name}"))(e)),
        }
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>, NetlinkError> {
        let r = self
            .h
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_next()
            .await;
        match r {
            Ok(m) => Ok(m.as_ref().map(Link::from_message)),
            Err(e) if errno_of(&e) == libc::ENODEV => Ok(None),
            Err(e) => Err(request(format!("get link #{index}"))(e)),
        }
    }

    /// Every link in the namespace.
    pub async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        self.h
            .link()
            .get()
            .execute()
            .map_ok(|m| Link::from_message(&m))
            .try_collect()
            .await
            .map_err(request("list links"))
    }

    /// Creates a bridge; `Ok(false)` when one of that name already exists
    /// (another ADD may have won the race).
    pub async fn create_bridge(
        &self,
        name: &str,
        mtu: u32,
        mac: [u8; 6],
    ) -> Result<bool, NetlinkError> {
        let msg = rtnetlink::LinkBridge::new(name)
            .mtu(mtu)
            .address(mac.to_vec())
            .build();
        match self.h.link().add(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno_of(&e) == libc::EEXIST => Ok(false),
            Err(e) => Err(request(format!("create bridge {name}"))(e)),
        }
    }

    /// Creates a veth pair whose peer is born inside `peer_ns` under its
    /// final name (no temporary name, no rename, no move), with `host`
    /// enslaved to `controller`. Both ends get `mtu`.
    pub async fn create_veth(
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
        self.create_link(msg, &format!("veth {host} (peer {peer})"))
            .await
    }

    /// Creates a link from a prepared message (a VXLAN device, say).
    pub async fn create_link(&self, msg: LinkMessage, what: &str) -> Result<(), NetlinkError> {
        self.h
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(request(format!("create {what}")))
    }

    /// Deletes link `index`; `Ok(false)` when it is already gone.
    pub async fn delete_link(&self, index: u32, name: &str) -> Result<bool, NetlinkError> {
        match self.h.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno_of(&e) == libc::ENODEV => Ok(false),
            Err(e) => Err(request(format!("delete link {name}"))(e)),
        }
    }

    /// Deletes the link called `name`; `Ok(false)` when there is none.
    pub async fn delete_link_named(&self, name: &str) -> Result<bool, NetlinkError> {
        match self.link(name).await? {
            Some(link) => self.delete_link(link.index, name).await,
            None => Ok(false),
        }
    }

    /// Applies a prepared change to a link.
    async fn set_link(&self, msg: LinkMessage, what: String) -> Result<(), NetlinkError> {
        self.h
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(request(what))
    }

    /// Brings the link up. A VXLAN device binds its UDP socket here, so the
    /// error's errno may be EADDRINUSE.
    pub async fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.set_link(msg, format!("set link #{index} up")).await
    }

    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.set_link(msg, format!("set MTU {mtu} on link #{index}"))
            .await
    }

    /// Hairpin lets a pod reach itself through a Service address: the
    /// datapath may send its packet back out of the port it came in on.
    pub async fn set_hairpin(&self, index: u32, on: bool) -> Result<(), NetlinkError> {
        let msg = LinkBridgePort::new(index).hairpin(on).build();
        self.h
            .link()
            .set_port(msg)
            .execute()
            .await
            .map_err(request(format!("set hairpin on link #{index}")))
    }

    /// Stops the kernel from giving the link an IPv6 link-local address.
    pub async fn disable_ipv6_addrgen(&self, index: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index)
            .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
            )]))
            .build();
        self.set_link(msg, format!("disable IPv6 addresses on link #{index}"))
            .await
    }

    /// Adds `ip/prefix` to the link; an identical existing address is fine.
    pub async fn add_address(
        &self,
        index: u32,
        ip: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        match self
            .h
            .address()
            .add(index, IpAddr::V4(ip), prefix)
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == libc::EEXIST => Ok(()),
            Err(e) => Err(request(format!(
                "add address {ip}/{prefix} to link #{index}"
            ))(e)),
        }
    }

    /// Removes `ip/prefix` from the link; an absent address is fine.
    pub async fn delete_address(
        &self,
        index: u32,
        ip: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.index = index;
        msg.header.prefix_len = prefix;
        msg.attributes.push(AddressAttribute::Local(IpAddr::V4(ip)));
        match self.h.address().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno_of(&e), libc::EADDRNOTAVAIL | libc::ENOENT) => Ok(()),
            Err(e) => Err(request(format!(
                "delete address {ip}/{prefix} from link #{index}"
            ))(e)),
        }
    }

    /// Every IPv4 address in the namespace: (link index, address, prefix).
    pub async fn ipv4_addresses(&self) -> Result<Vec<(u32, Ipv4Addr, u8)>, NetlinkError> {
        let msgs: Vec<AddressMessage> = self
            .h
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(request("list addresses"))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.family == AddressFamily::Inet)
            .filter_map(|m| {
                // IFA_LOCAL is the interface's own address; IFA_ADDRESS
                // differs from it only on point-to-point links (it is the
                // peer's there).
                let local = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                    _ => None,
                });
                let addr = local.or_else(|| {
                    m.attributes.iter().find_map(|a| match a {
                        AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                        _ => None,
                    })
                })?;
                Some((m.header.index, addr, m.header.prefix_len))
            })
            .collect())
    }

    /// IPv4 addresses (with prefix length) on link `index`.
    pub async fn addresses(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, NetlinkError> {
        Ok(self
            .ipv4_addresses()
            .await?
            .into_iter()
            .filter(|(i, _, _)| *i == index)
            .map(|(_, a, p)| (a, p))
            .collect())
    }

    /// The link holding `addr`, if any: the node's uplink for its address.
    pub async fn link_with_address(&self, addr: Ipv4Addr) -> Result<Option<Link>, NetlinkError> {
        let index = self
            .ipv4_addresses()
            .await?
            .into_iter()
            .find(|(_, a, _)| *a == addr)
            .map(|(i, _, _)| i);
        match index {
            Some(i) => self.link_by_index(i).await,
            None => Ok(None),
        }
    }

    /// Adds `default via gw dev #index` to the main table.
    pub async fn add_default_route(&self, index: u32, gw: Ipv4Addr) -> Result<(), NetlinkError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gw)
            .output_interface(index)
            .build();
        self.h
            .route()
            .add(msg)
            .execute()
            .await
            .map_err(request(format!("add default route via {gw}")))
    }

    async fn main_table_routes(&self) -> Result<Vec<RouteMessage>, NetlinkError> {
        let msgs: Vec<RouteMessage> = self
            .h
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(request("list routes"))?;
        Ok(msgs
            .into_iter()
            .filter(|m| m.header.address_family == AddressFamily::Inet)
            .filter(|m| table(m) == u32::from(RouteHeader::RT_TABLE_MAIN))
            .collect())
    }

    /// IPv4 default routes of the main table.
    pub async fn default_routes(&self) -> Result<Vec<DefaultRoute>, NetlinkError> {
        Ok(self
            .main_table_routes()
            .await?
            .iter()
            .filter(|m| m.header.destination_prefix_length == 0)
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

    /// Main-table routes of `protocol` through link `index`.
    pub async fn routes(&self, index: u32, protocol: u8) -> Result<Vec<Route>, NetlinkError> {
        Ok(self
            .main_table_routes()
            .await?
            .iter()
            .filter(|m| m.header.protocol == RouteProtocol::from(protocol))
            .filter(|m| {
                m.attributes
                    .iter()
                    .any(|a| matches!(a, RouteAttribute::Oif(o) if *o == index))
            })
            .filter_map(route_of)
            .collect())
    }

    /// Adds `route` through link `index` with `protocol`, replacing a route
    /// to the same destination.
    pub async fn replace_route(
        &self,
        index: u32,
        route: &Route,
        protocol: u8,
    ) -> Result<(), NetlinkError> {
        self.h
            .route()
            .add(route_message(index, route, protocol))
            .replace()
            .execute()
            .await
            .map_err(request(format!("set route to {}", route.dst)))
    }

    /// Removes `route`; an absent route is fine.
    pub async fn delete_route(
        &self,
        index: u32,
        route: &Route,
        protocol: u8,
    ) -> Result<(), NetlinkError> {
        match self
            .h
            .route()
            .del(route_message(index, route, protocol))
            .execute()
            .await
        {
            Err(e) if gone(&e) => Ok(()),
            r => r.map_err(request(format!("delete route to {}", route.dst))),
        }
    }

    /// The permanent IPv4 neighbours of link `index` (entries the kernel
    /// made by itself, ARP attempts, age out on their own).
    pub async fn neighbours(&self, index: u32) -> Result<Vec<Neighbour>, NetlinkError> {
        self.permanent_neighbours(index, AddressFamily::Inet, "list neighbours", |m| {
            Some(Neighbour {
                addr: neigh_dst(m)?,
                mac: lladdr(m)?,
            })
        })
        .await
    }

    /// The permanent FDB entries of link `index`.
    pub async fn fdb(&self, index: u32) -> Result<Vec<FdbEntry>, NetlinkError> {
        self.permanent_neighbours(index, AddressFamily::Bridge, "list FDB entries", |m| {
            Some(FdbEntry {
                mac: lladdr(m)?,
                dst: neigh_dst(m).unwrap_or(Ipv4Addr::UNSPECIFIED),
            })
        })
        .await
    }

    /// The permanent entries of link `index` in the `family` neighbour
    /// table, read by `entry`.
    async fn permanent_neighbours<T>(
        &self,
        index: u32,
        family: AddressFamily,
        what: &str,
        entry: impl Fn(&NeighbourMessage) -> Option<T>,
    ) -> Result<Vec<T>, NetlinkError> {
        // The kernel filters an FDB dump by device only for strict-checking
        // sockets; filtering here works on every kernel.
        let msgs: Vec<NeighbourMessage> = self
            .h
            .neighbours()
            .get()
            .set_address_family(family)
            .execute()
            .try_collect()
            .await
            .map_err(request(what))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.ifindex == index && m.header.state == NeighbourState::Permanent)
            .filter_map(entry)
            .collect())
    }

    /// Sets a permanent neighbour on link `index`, replacing its MAC.
    pub async fn set_neighbour(&self, index: u32, n: &Neighbour) -> Result<(), NetlinkError> {
        self.h
            .neighbours()
            .add(index, IpAddr::V4(n.addr))
            .link_layer_address(&n.mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(request(format!("set neighbour {}", n.addr)))
    }

    /// Sets a permanent FDB entry of VXLAN device `index`.
    pub async fn set_fdb(&self, index: u32, f: &FdbEntry) -> Result<(), NetlinkError> {
        // NTF_SELF: the entry belongs to the VXLAN device's own table
        // (there is no bridge above it). Replace rewrites the entry's
        // destination when the MAC is already known.
        self.h
            .neighbours()
            .add_bridge(index, &f.mac)
            .destination(IpAddr::V4(f.dst))
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(request(format!("set FDB entry to {}", f.dst)))
    }

    /// Removes an FDB entry; an absent one is fine. With a destination only
    /// that one goes, not every destination the MAC has.
    pub async fn delete_fdb(&self, index: u32, f: &FdbEntry) -> Result<(), NetlinkError> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = index;
        m.header.flags = NeighbourFlags::Own;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(f.mac.to_vec()));
        if !f.dst.is_unspecified() {
            m.attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                    f.dst,
                )));
        }
        match self.h.neighbours().del(m).execute().await {
            Err(e) if gone(&e) => Ok(()),
            r => r.map_err(request("delete FDB entry")),
        }
    }

    /// Removes a neighbour; an absent one is fine.
    pub async fn delete_neighbour(&self, index: u32, n: &Neighbour) -> Result<(), NetlinkError> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.ifindex = index;
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                n.addr,
            )));
        match self.h.neighbours().del(m).execute().await {
            Err(e) if gone(&e) => Ok(()),
            r => r.map_err(request(format!("delete neighbour {}", n.addr))),
        }
    }

    /// The TC filters on a clsact hook of the link (empty without clsact).
    pub async fn tc_filters(
        &self,
        index: u32,
        hook: ClsactHook,
    ) -> Result<Vec<TcFilter>, NetlinkError> {
        let ifindex = i32::try_from(index)
            .map_err(|_| NetlinkError::Unexpected(format!("link index {index} out of range")))?;
        let req = self.h.traffic_filter(ifindex).get();
        let req = match hook {
            ClsactHook::Ingress => req.ingress(),
            ClsactHook::Egress => req.egress(),
        };
        let msgs = match req.execute().try_collect::<Vec<TcMessage>>().await {
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

fn gone(e: &rtnetlink::Error) -> bool {
    matches!(errno_of(e), libc::ENOENT | libc::ESRCH)
}

fn six(bytes: &[u8]) -> Option<[u8; 6]> {
    bytes.try_into().ok()
}

fn lladdr(m: &NeighbourMessage) -> Option<[u8; 6]> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(b) => six(b),
        _ => None,
    })
}

fn neigh_dst(m: &NeighbourMessage) -> Option<Ipv4Addr> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        // Bridge-family (FDB) messages carry the VXLAN remote as raw bytes.
        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
            <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from)
        }
        _ => None,
    })
}

fn table(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
}

fn route_of(m: &RouteMessage) -> Option<Route> {
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut gateway = None;
    let mut metric = 0;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(*g),
            RouteAttribute::Priority(p) => metric = *p,
            _ => {}
        }
    }
    Some(Route {
        dst: Ipv4Network::new(dst, m.header.destination_prefix_length).ok()?,
        gateway,
        onlink: m.header.flags.contains(RouteFlags::Onlink),
        metric,
    })
}

fn route_message(index: u32, r: &Route, protocol: u8) -> RouteMessage {
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(r.dst.network(), r.dst.prefix())
        .output_interface(index)
        .protocol(RouteProtocol::from(protocol));
    if let Some(gw) = r.gateway {
        b = b.gateway(gw);
    }
    if r.onlink {
        b = b.onlink();
    }
    if r.metric != 0 {
        b = b.priority(r.metric);
    }
    b.build()
}
