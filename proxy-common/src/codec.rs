//! The user-space side of the map types, in one place: addresses and ports
//! to and from network byte order, the names of protocols, kinds, scopes,
//! directions and flag bits, and how every key and value is shown.
//! The daemon's writer, `sluicectl`, the tests and the benchmarks all go
//! through these, so a layout is read the way it is written.

extern crate alloc;

use alloc::{format, string::String, vec::Vec};
use core::{fmt, net::Ipv4Addr};

use crate::{
    Backend, CtEntry, CtKey, ServiceKey, ServiceValue,
    ct::{self, CT_DIR_EGRESS, CT_DIR_REPLY, CT_DIR_SERVICE},
    proto,
    service::{
        BE_F_LOCAL, BE_F_TERMINATING, KIND_CLUSTER_IP, SCOPE_EXTERNAL, SCOPE_INTERNAL,
        SVC_F_ADDR_ONLY, SVC_F_AFFINITY, SVC_F_DROP_EMPTY, SVC_F_LOCAL, SVC_F_MAGLEV,
        SVC_F_NODE_ADDR, SVC_F_SNAT_REMOTE, SVC_F_SOURCE_RANGES,
    },
};

/// An address as the maps store it (network byte order in a `u32`).
pub const fn nbo(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

/// An address read back from a map.
pub const fn from_nbo(a: u32) -> Ipv4Addr {
    let b = a.to_ne_bytes();
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

/// `address:port` of an address and a port both in network byte order.
pub fn endpoint(addr_nbo: u32, port_nbo: u16) -> String {
    format!("{}:{}", from_nbo(addr_nbo), u16::from_be(port_nbo))
}

/// An IP protocol number, shown by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proto(pub u8);

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            proto::TCP => f.write_str("TCP"),
            proto::UDP => f.write_str("UDP"),
            proto::SCTP => f.write_str("SCTP"),
            proto::ICMP => f.write_str("ICMP"),
            other => write!(f, "{other}"),
        }
    }
}

/// What a frontend scope means.
pub const fn scope_name(scope: u8) -> &'static str {
    match scope {
        SCOPE_INTERNAL => "in-cluster",
        _ => "all",
    }
}

impl ServiceKey {
    /// The master entry of frontend `addr:port` (host order).
    pub const fn for_frontend(addr: Ipv4Addr, port: u16, proto: u8, scope: u8) -> Self {
        Self::frontend(nbo(addr), port.to_be(), proto, scope)
    }

    pub const fn ip(&self) -> Ipv4Addr {
        from_nbo(self.addr)
    }

    /// The port in host order.
    pub const fn host_port(&self) -> u16 {
        u16::from_be(self.port)
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port == 0 && self.proto == 0 {
            return write!(f, "{} (address)", self.ip());
        }
        write!(
            f,
            "{}:{}/{}",
            self.ip(),
            self.host_port(),
            Proto(self.proto)
        )?;
        if self.scope != SCOPE_EXTERNAL {
            write!(f, " ({})", scope_name(self.scope))?;
        }
        if self.slot != 0 {
            write!(f, " slot {}", self.slot)?;
        }
        Ok(())
    }
}

/// Names of `SVC_F_*` bits, in bit order.
pub const SERVICE_FLAG_NAMES: [(u8, &str); 8] = [
    (SVC_F_ADDR_ONLY, "address-only"),
    (SVC_F_AFFINITY, "affinity"),
    (SVC_F_LOCAL, "local"),
    (SVC_F_SNAT_REMOTE, "snat-remote"),
    (SVC_F_DROP_EMPTY, "drop-when-empty"),
    (SVC_F_SOURCE_RANGES, "source-ranges"),
    (SVC_F_NODE_ADDR, "node-address"),
    (SVC_F_MAGLEV, "maglev"),
];

impl ServiceValue {
    /// The frontend's flags as `sluicectl services` shows them: the traffic
    /// policy a `local` flag stands for in this scope, the affinity timeout,
    /// then the others by name.
    pub fn describe_flags(&self, scope: u8) -> Vec<String> {
        let mut out = Vec::new();
        if self.flags & SVC_F_LOCAL != 0 {
            out.push(String::from(
                if scope == SCOPE_INTERNAL || self.kind == KIND_CLUSTER_IP {
                    "internal-policy=Local"
                } else {
                    "external-policy=Local"
                },
            ));
        }
        if self.flags & SVC_F_AFFINITY != 0 {
            out.push(format!("affinity=ClientIP/{}s", self.affinity_timeout));
        }
        for (bit, name) in [
            (SVC_F_SOURCE_RANGES, "source-ranges"),
            (SVC_F_MAGLEV, "maglev"),
            (SVC_F_SNAT_REMOTE, "snat-remote"),
            (SVC_F_DROP_EMPTY, "drop-when-empty"),
        ] {
            if self.flags & bit != 0 {
                out.push(String::from(name));
            }
        }
        out
    }
}

impl Backend {
    /// A backend entry for `addr:port` (host order).
    pub const fn new(addr: Ipv4Addr, port: u16, proto: u8, flags: u8) -> Self {
        Self {
            addr: nbo(addr),
            port: port.to_be(),
            proto,
            flags,
        }
    }

    pub const fn ip(&self) -> Ipv4Addr {
        from_nbo(self.addr)
    }

    pub const fn host_port(&self) -> u16 {
        u16::from_be(self.port)
    }

    /// `active` or `terminating`, then `local` when on this node.
    pub fn state_names(&self) -> Vec<&'static str> {
        let mut v = alloc::vec![if self.flags & BE_F_TERMINATING != 0 {
            "terminating"
        } else {
            "active"
        }];
        if self.flags & BE_F_LOCAL != 0 {
            v.push("local");
        }
        v
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}/{}",
            self.ip(),
            self.host_port(),
            Proto(self.proto)
        )
    }
}

/// What a CT direction means.
pub const fn dir_name(dir: u8) -> &'static str {
    match dir {
        CT_DIR_SERVICE => "service",
        CT_DIR_REPLY => "reply",
        CT_DIR_EGRESS => "egress",
        _ => "unknown",
    }
}

impl CtKey {
    /// The key of a flow `saddr:sport -> daddr:dport` (host order).
    pub const fn for_flow(proto: u8, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), dir: u8) -> Self {
        Self {
            saddr: nbo(src.0),
            daddr: nbo(dst.0),
            sport: src.1.to_be(),
            dport: dst.1.to_be(),
            proto,
            dir,
            _pad: [0; 2],
        }
    }
}

impl fmt::Display for CtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} -> {} ({})",
            Proto(self.proto),
            endpoint(self.saddr, self.sport),
            endpoint(self.daddr, self.dport),
            dir_name(self.dir)
        )
    }
}

impl CtEntry {
    /// The connection's state as `sluicectl conntrack` shows it.
    pub const fn state_name(&self, proto: u8) -> &'static str {
        if proto == proto::TCP {
            ct::tcp_state_name(self.flags)
        } else if self.flags & ct::CT_F_REPLY_SEEN != 0 {
            "REPLIED"
        } else {
            "UNREPLIED"
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::ToString;

    use super::*;

    #[test]
    fn addresses_round_trip_in_network_order() {
        let a = Ipv4Addr::new(10, 96, 0, 10);
        assert_eq!(nbo(a).to_ne_bytes(), [10, 96, 0, 10]);
        assert_eq!(from_nbo(nbo(a)), a);
        assert_eq!(endpoint(nbo(a), 80u16.to_be()), "10.96.0.10:80");
    }

    #[test]
    fn keys_and_values_display() {
        let k = ServiceKey::for_frontend(Ipv4Addr::new(10, 96, 0, 10), 80, proto::TCP, 0);
        assert_eq!(k.to_string(), "10.96.0.10:80/TCP");
        assert_eq!(k.with_slot(3).to_string(), "10.96.0.10:80/TCP slot 3");
        let internal = ServiceKey::for_frontend(
            Ipv4Addr::new(10, 77, 0, 1),
            30080,
            proto::UDP,
            SCOPE_INTERNAL,
        );
        assert_eq!(internal.to_string(), "10.77.0.1:30080/UDP (in-cluster)");
        assert_eq!(
            ServiceKey::address_only(nbo(Ipv4Addr::new(10, 96, 0, 1))).to_string(),
            "10.96.0.1 (address)"
        );
        let b = Backend::new(Ipv4Addr::new(10, 244, 1, 5), 8080, proto::TCP, BE_F_LOCAL);
        assert_eq!(b.to_string(), "10.244.1.5:8080/TCP");
        assert_eq!(b.state_names(), ["active", "local"]);
        let ck = CtKey::for_flow(
            proto::UDP,
            (Ipv4Addr::new(10, 244, 1, 2), 5000),
            (Ipv4Addr::new(10, 96, 0, 53), 53),
            CT_DIR_SERVICE,
        );
        assert_eq!(
            ck.to_string(),
            "UDP 10.244.1.2:5000 -> 10.96.0.53:53 (service)"
        );
        assert_eq!(Proto(47).to_string(), "47");
    }

    #[test]
    fn flags_are_described() {
        let v = ServiceValue {
            flags: SVC_F_LOCAL | SVC_F_AFFINITY | SVC_F_MAGLEV,
            affinity_timeout: 600,
            kind: crate::service::KIND_NODE_PORT,
            ..Default::default()
        };
        assert_eq!(
            v.describe_flags(SCOPE_EXTERNAL),
            ["external-policy=Local", "affinity=ClientIP/600s", "maglev"]
        );
        assert_eq!(v.describe_flags(SCOPE_INTERNAL)[0], "internal-policy=Local");
        // Every bit has a name, once.
        let mut seen = 0u8;
        for (bit, _) in SERVICE_FLAG_NAMES {
            assert_eq!(seen & bit, 0);
            seen |= bit;
        }
        assert_eq!(seen, u8::MAX);
    }
}
