//! Reading and writing the kernel's links, addresses, neighbours, FDB and
//! routes over rtnetlink, in the network namespace the socket was opened in.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use netlink_packet_route::{
    AddressFamily,
    address::{AddressAttribute, AddressMessage},
    link::{
        AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoKind, InfoVxlan, LinkAttribute,
        LinkFlags, LinkInfo, LinkMessage,
    },
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
    },
    route::{RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol},
};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use super::{
    error::{OverlayError, errno, netlink},
    plan::{Change, Entries, FdbEntry, Neighbour, Route},
};

/// `rtm_protocol` of the overlay's routes (`proto 92` in `ip route`): marks
/// them as Sluice's, so a sync removes only routes it made and leaves
/// anything an administrator put on the device alone. 92 (0x5c, as in the
/// VTEP MACs) is unassigned in iproute2's rt_protos.
pub const ROUTE_PROTOCOL: u8 = 92;

/// The facts about a link the overlay looks at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkFacts {
    pub index: u32,
    pub name: String,
    pub kind: Option<InfoKind>,
    pub mac: Vec<u8>,
    pub mtu: u32,
    pub up: bool,
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

impl LinkFacts {
    fn from_message(m: &LinkMessage) -> Self {
        let mut l = LinkFacts {
            index: m.header.index,
            up: m.header.flags.contains(LinkFlags::Up),
            ..Default::default()
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::Address(mac) => l.mac = mac.clone(),
                LinkAttribute::Mtu(mtu) => l.mtu = *mtu,
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        match i {
                            LinkInfo::Kind(k) => l.kind = Some(k.clone()),
                            LinkInfo::Data(InfoData::Vxlan(v)) => {
                                l.vxlan = Some(VxlanFacts::from_info(v))
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

pub async fn links(h: &Handle) -> Result<Vec<LinkFacts>, OverlayError> {
    h.link()
        .get()
        .execute()
        .map_ok(|m| LinkFacts::from_message(&m))
        .try_collect()
        .await
        .map_err(netlink("list links"))
}

pub async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkFacts>, OverlayError> {
    let r = h
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await;
    match r {
        Ok(m) => Ok(m.as_ref().map(LinkFacts::from_message)),
        Err(e) if errno(&e) == libc::ENODEV => Ok(None),
        Err(e) => Err(netlink(format!("get link {name}"))(e)),
    }
}

pub async fn link_by_index(h: &Handle, index: u32) -> Result<Option<LinkFacts>, OverlayError> {
    let r = h.link().get().match_index(index).execute().try_next().await;
    match r {
        Ok(m) => Ok(m.as_ref().map(LinkFacts::from_message)),
        Err(e) if errno(&e) == libc::ENODEV => Ok(None),
        Err(e) => Err(netlink(format!("get link #{index}"))(e)),
    }
}

/// Every IPv4 address in the namespace: (link index, address, prefix).
pub async fn ipv4_addresses(h: &Handle) -> Result<Vec<(u32, Ipv4Addr, u8)>, OverlayError> {
    let msgs: Vec<AddressMessage> = h
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(netlink("list addresses"))?;
    Ok(msgs
        .iter()
        .filter(|m| m.header.family == AddressFamily::Inet)
        .filter_map(|m| {
            // IFA_LOCAL is the interface's own address; IFA_ADDRESS differs
            // from it only on point-to-point links (it is the peer's there).
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

pub async fn create_vxlan(h: &Handle, msg: LinkMessage, name: &str) -> Result<(), OverlayError> {
    h.link()
        .add(msg)
        .execute()
        .await
        .map_err(netlink(format!("create VXLAN device {name}")))
}

pub async fn delete_link(h: &Handle, index: u32, name: &str) -> Result<(), OverlayError> {
    match h.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == libc::ENODEV => Ok(()),
        Err(e) => Err(netlink(format!("delete link {name}"))(e)),
    }
}

pub async fn set_mtu(h: &Handle, index: u32, mtu: u32, name: &str) -> Result<(), OverlayError> {
    let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
    h.link()
        .set(msg)
        .execute()
        .await
        .map_err(netlink(format!("set MTU {mtu} on {name}")))
}

/// Brings the link up; the raw error, so the caller can recognise
/// EADDRINUSE (the VXLAN socket is bound when the device opens).
pub async fn set_up(h: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    let msg = LinkUnspec::new_with_index(index).up().build();
    h.link().set(msg).execute().await
}

/// Stops the kernel from giving the device an IPv6 link-local address: the
/// overlay carries IPv4 only, and the neighbour discovery and MLD traffic an
/// address brings would only be dropped by a device that cannot flood.
pub async fn disable_ipv6_addrgen(h: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    let msg = LinkUnspec::new_with_index(index)
        .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
            vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
        )]))
        .build();
    h.link().set(msg).execute().await
}

pub async fn add_address(
    h: &Handle,
    index: u32,
    addr: Ipv4Addr,
    prefix: u8,
    name: &str,
) -> Result<(), OverlayError> {
    match h
        .address()
        .add(index, IpAddr::V4(addr), prefix)
        .execute()
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == libc::EEXIST => Ok(()),
        Err(e) => Err(netlink(format!("add address {addr}/{prefix} to {name}"))(e)),
    }
}

pub async fn delete_address(
    h: &Handle,
    index: u32,
    addr: Ipv4Addr,
    prefix: u8,
    name: &str,
) -> Result<(), OverlayError> {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.index = index;
    msg.header.prefix_len = prefix;
    msg.attributes
        .push(AddressAttribute::Local(IpAddr::V4(addr)));
    match h.address().del(msg).execute().await {
        Ok(()) => Ok(()),
        Err(e) if matches!(errno(&e), libc::EADDRNOTAVAIL | libc::ENOENT) => Ok(()),
        Err(e) => Err(netlink(format!(
            "delete address {addr}/{prefix} from {name}"
        ))(e)),
    }
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

/// The overlay entries on the device `index`: its permanent IPv4
/// neighbours, its permanent FDB entries, and the main-table routes of our
/// protocol through it. Entries the kernel made by itself (ARP attempts)
/// are not ours and age out on their own.
pub async fn read_entries(h: &Handle, index: u32) -> Result<Entries, OverlayError> {
    let neigh: Vec<NeighbourMessage> = h
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Inet)
        .execute()
        .try_collect()
        .await
        .map_err(netlink("list neighbours"))?;
    let neighbours = neigh
        .iter()
        .filter(|m| m.header.ifindex == index && m.header.state == NeighbourState::Permanent)
        .filter_map(|m| {
            Some(Neighbour {
                addr: neigh_dst(m)?,
                mac: lladdr(m)?,
            })
        })
        .collect();

    // The kernel filters an FDB dump by device only for strict-checking
    // sockets; filtering here works on every kernel.
    let fdb_msgs: Vec<NeighbourMessage> = h
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Bridge)
        .execute()
        .try_collect()
        .await
        .map_err(netlink("list FDB entries"))?;
    let fdb = fdb_msgs
        .iter()
        .filter(|m| m.header.ifindex == index && m.header.state == NeighbourState::Permanent)
        .filter_map(|m| {
            Some(FdbEntry {
                mac: lladdr(m)?,
                dst: neigh_dst(m).unwrap_or(Ipv4Addr::UNSPECIFIED),
            })
        })
        .collect();

    let route_msgs: Vec<RouteMessage> = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(netlink("list routes"))?;
    let routes = route_msgs
        .iter()
        .filter(|m| m.header.address_family == AddressFamily::Inet)
        .filter(|m| m.header.protocol == RouteProtocol::from(ROUTE_PROTOCOL))
        .filter(|m| table(m) == u32::from(RouteHeader::RT_TABLE_MAIN))
        .filter(|m| {
            m.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Oif(o) if *o == index))
        })
        .filter_map(route_of)
        .collect();

    Ok(Entries {
        neighbours,
        fdb,
        routes,
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

fn route_message(index: u32, r: &Route) -> RouteMessage {
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(r.dst.network(), r.dst.prefix())
        .output_interface(index)
        .protocol(RouteProtocol::from(ROUTE_PROTOCOL));
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

/// Applies one change to the device `index`. Removing what is already gone
/// succeeds: the goal is the state, not the operation.
pub async fn apply(h: &Handle, index: u32, change: &Change) -> Result<(), rtnetlink::Error> {
    let gone = |e: &rtnetlink::Error| matches!(errno(e), libc::ENOENT | libc::ESRCH);
    match change {
        Change::SetNeighbour { entry, .. } => {
            h.neighbours()
                .add(index, IpAddr::V4(entry.addr))
                .link_layer_address(&entry.mac)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
        }
        Change::SetFdb { entry, .. } => {
            // NTF_SELF: the entry belongs to the VXLAN device's own table
            // (there is no bridge above it). Replace rewrites the entry's
            // destination when the MAC is already known.
            h.neighbours()
                .add_bridge(index, &entry.mac)
                .destination(IpAddr::V4(entry.dst))
                .flags(NeighbourFlags::Own)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
        }
        Change::SetRoute { route, .. } => {
            h.route()
                .add(route_message(index, route))
                .replace()
                .execute()
                .await
        }
        Change::DelRoute(route) => match h.route().del(route_message(index, route)).execute().await
        {
            Err(e) if gone(&e) => Ok(()),
            r => r,
        },
        Change::DelFdb(entry) => {
            let mut m = NeighbourMessage::default();
            m.header.family = AddressFamily::Bridge;
            m.header.ifindex = index;
            m.header.flags = NeighbourFlags::Own;
            m.attributes
                .push(NeighbourAttribute::LinkLayerAddress(entry.mac.to_vec()));
            // With a destination only that one is removed, not every
            // destination the MAC has.
            if !entry.dst.is_unspecified() {
                m.attributes
                    .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                        entry.dst,
                    )));
            }
            match h.neighbours().del(m).execute().await {
                Err(e) if gone(&e) => Ok(()),
                r => r,
            }
        }
        Change::DelNeighbour(n) => {
            let mut m = NeighbourMessage::default();
            m.header.family = AddressFamily::Inet;
            m.header.ifindex = index;
            m.attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                    n.addr,
                )));
            match h.neighbours().del(m).execute().await {
                Err(e) if gone(&e) => Ok(()),
                r => r,
            }
        }
    }
}
