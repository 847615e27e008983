//! The ADD result, rendered in the version the request asked for, and read
//! back from `prevResult` for CHECK.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde_json::{Map, Value, json};

use sluice_net::cni::error::{CniError, code};
use sluice_net::cni::version::CniVersion;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: Option<String>,
    pub mtu: Option<u32>,
    /// The container's netns path; `None` for host-side interfaces.
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// Address with the prefix length of its subnet.
    pub address: Ipv4Network,
    pub gateway: Option<Ipv4Addr>,
    /// Index into the result's `interfaces` (not a kernel ifindex).
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: Ipv4Network,
    pub gw: Option<Ipv4Addr>,
}

/// An IPv4 CNI result. DNS is always empty: cluster DNS is the kubelet's job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
}

/// Formats a hardware address the way the spec's examples do.
pub fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl CniResult {
    /// The result JSON for `version`.
    pub fn to_json(&self, version: CniVersion) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut o = Map::new();
                o.insert("name".into(), json!(i.name));
                if let Some(mac) = &i.mac {
                    o.insert("mac".into(), json!(mac));
                }
                if let (Some(mtu), true) = (i.mtu, version.interfaces_carry_mtu()) {
                    o.insert("mtu".into(), json!(mtu));
                }
                if let Some(sb) = &i.sandbox {
                    o.insert("sandbox".into(), json!(sb));
                }
                Value::Object(o)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = Map::new();
                if version.ips_carry_version() {
                    o.insert("version".into(), json!("4"));
                }
                o.insert("address".into(), json!(ip.address.to_string()));
                if let Some(gw) = ip.gateway {
                    o.insert("gateway".into(), json!(gw.to_string()));
                }
                if let Some(idx) = ip.interface {
                    o.insert("interface".into(), json!(idx));
                }
                Value::Object(o)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut o = Map::new();
                o.insert("dst".into(), json!(r.dst.to_string()));
                if let Some(gw) = r.gw {
                    o.insert("gw".into(), json!(gw.to_string()));
                }
                Value::Object(o)
            })
            .collect();
        json!({
            "cniVersion": version.as_str(),
            "interfaces": interfaces,
            "ips": ips,
            "routes": routes,
            "dns": {},
        })
    }

    /// Reads a `prevResult` of any supported version. Other plugins in the
    /// chain may have added entries we do not understand (IPv6 addresses,
    /// extra fields): those are skipped, not rejected. A structurally broken
    /// object is an error.
    pub fn from_json(v: &Value) -> Result<Self, CniError> {
        let bad =
            |what: &str| CniError::new(code::DECODE, format!("cannot decode prevResult: {what}"));
        let obj = v.as_object().ok_or_else(|| bad("not an object"))?;
        let list = |key: &str| -> Result<Vec<&Map<String, Value>>, CniError> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|e| {
                        e.as_object()
                            .ok_or_else(|| bad(&format!("{key} entry is not an object")))
                    })
                    .collect(),
                Some(_) => Err(bad(&format!("{key} is not a list"))),
            }
        };
        let opt_str = |o: &Map<String, Value>, key: &str| -> Result<Option<String>, CniError> {
            match o.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(bad(&format!("{key} is not a string"))),
            }
        };
        let mut out = CniResult::default();
        for i in list("interfaces")? {
            out.interfaces.push(Interface {
                name: opt_str(i, "name")?.ok_or_else(|| bad("interface without a name"))?,
                mac: opt_str(i, "mac")?,
                mtu: i
                    .get("mtu")
                    .and_then(Value::as_u64)
                    .and_then(|m| u32::try_from(m).ok()),
                sandbox: opt_str(i, "sandbox")?.filter(|s| !s.is_empty()),
            });
        }
        for ip in list("ips")? {
            let addr = opt_str(ip, "address")?.ok_or_else(|| bad("ip without an address"))?;
            // Not IPv4 (or not ours to understand): skip it.
            let Ok(address) = addr.parse::<Ipv4Network>() else {
                continue;
            };
            let gateway = opt_str(ip, "gateway")?.and_then(|g| g.parse().ok());
            let interface = match ip.get("interface") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => Some(
                    n.as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or_else(|| {
                            bad("interface index is not a small non-negative integer")
                        })?,
                ),
                Some(_) => return Err(bad("interface index is not a number")),
            };
            out.ips.push(IpConfig {
                address,
                gateway,
                interface,
            });
        }
        for r in list("routes")? {
            let dst = opt_str(r, "dst")?.ok_or_else(|| bad("route without dst"))?;
            let Ok(dst) = dst.parse::<Ipv4Network>() else {
                continue;
            };
            let gw = opt_str(r, "gw")?.and_then(|g| g.parse().ok());
            out.routes.push(Route { dst, gw });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "sluice0".into(),
                    mac: Some("02:00:00:00:00:01".into()),
                    mtu: Some(1450),
                    sandbox: None,
                },
                Interface {
                    name: "sl0123456789a".into(),
                    mac: Some("02:00:00:00:00:02".into()),
                    mtu: Some(1450),
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("02:00:00:00:00:03".into()),
                    mtu: Some(1450),
                    sandbox: Some("/run/netns/pod".into()),
                },
            ],
            ips: vec![IpConfig {
                address: "10.244.1.2/24".parse().unwrap(),
                gateway: Some(Ipv4Addr::new(10, 244, 1, 1)),
                interface: Some(2),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some(Ipv4Addr::new(10, 244, 1, 1)),
            }],
        }
    }

    fn golden(version: &str, with_ip_version: bool, with_mtu: bool) -> Value {
        let iface = |name: &str, mac: &str, sandbox: Option<&str>| {
            let mut o = json!({"name": name, "mac": mac});
            if with_mtu {
                o["mtu"] = json!(1450);
            }
            if let Some(s) = sandbox {
                o["sandbox"] = json!(s);
            }
            o
        };
        let mut ip = json!({"address": "10.244.1.2/24", "gateway": "10.244.1.1", "interface": 2});
        if with_ip_version {
            ip["version"] = json!("4");
        }
        json!({
            "cniVersion": version,
            "interfaces": [
                iface("sluice0", "02:00:00:00:00:01", None),
                iface("sl0123456789a", "02:00:00:00:00:02", None),
                iface("eth0", "02:00:00:00:00:03", Some("/run/netns/pod")),
            ],
            "ips": [ip],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
            "dns": {}
        })
    }

    #[test]
    fn golden_results_per_version() {
        let r = sample();
        assert_eq!(r.to_json(CniVersion::V0_3_1), golden("0.3.1", true, false));
        assert_eq!(r.to_json(CniVersion::V0_4_0), golden("0.4.0", true, false));
        assert_eq!(r.to_json(CniVersion::V1_0_0), golden("1.0.0", false, false));
        assert_eq!(r.to_json(CniVersion::V1_1_0), golden("1.1.0", false, true));
    }

    #[test]
    fn golden_text_1_0_0() {
        // Byte-exact: serde_json sorts keys (no preserve_order feature).
        let text = serde_json::to_string(&sample().to_json(CniVersion::V1_0_0)).unwrap();
        assert_eq!(
            text,
            r#"{"cniVersion":"1.0.0","dns":{},"interfaces":[{"mac":"02:00:00:00:00:01","name":"sluice0"},{"mac":"02:00:00:00:00:02","name":"sl0123456789a"},{"mac":"02:00:00:00:00:03","name":"eth0","sandbox":"/run/netns/pod"}],"ips":[{"address":"10.244.1.2/24","gateway":"10.244.1.1","interface":2}],"routes":[{"dst":"0.0.0.0/0","gw":"10.244.1.1"}]}"#
        );
    }

    #[test]
    fn prev_result_round_trips_in_every_version() {
        for v in sluice_net::cni::version::SUPPORTED {
            let mut back = CniResult::from_json(&sample().to_json(v)).unwrap();
            if !v.interfaces_carry_mtu() {
                for i in &mut back.interfaces {
                    i.mtu = Some(1450);
                }
            }
            assert_eq!(back, sample(), "{v}");
        }
    }

    #[test]
    fn prev_result_tolerates_foreign_entries() {
        let v = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": "/x", "socketPath": "/s"}],
            "ips": [{"address": "fd00::2/64", "interface": 0}, {"address": "10.0.0.2/24", "interface": 0}],
            "routes": [{"dst": "::/0"}],
            "dns": {"nameservers": ["10.0.0.10"]}
        });
        let r = CniResult::from_json(&v).unwrap();
        assert_eq!(r.ips.len(), 1);
        assert_eq!(r.routes.len(), 0);
        assert_eq!(r.interfaces[0].mac, None);
    }

    #[test]
    fn broken_prev_result_is_code_6() {
        for v in [
            json!([]),
            json!({"interfaces": 3}),
            json!({"interfaces": [1]}),
            json!({"interfaces": [{"mac": "x"}]}),
            json!({"ips": [{"interface": 0}]}),
            json!({"ips": [{"address": "10.0.0.1/24", "interface": -1}]}),
            json!({"ips": [{"address": "10.0.0.1/24", "interface": "0"}]}),
            json!({"ips": [{"address": 5}]}),
        ] {
            assert_eq!(
                CniResult::from_json(&v).unwrap_err().code,
                code::DECODE,
                "{v}"
            );
        }
    }

    #[test]
    fn mac_format() {
        assert_eq!(
            format_mac(&[0x02, 0xab, 0, 1, 2, 0xff]),
            "02:ab:00:01:02:ff"
        );
    }
}
