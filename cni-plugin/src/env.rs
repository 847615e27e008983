//! The `CNI_*` environment: which verb to run and on which attachment.

use std::ffi::OsString;

use sluice_net::cni::conf::check_ifname;
use sluice_net::cni::error::{CniError, code};

/// A CNI verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "STATUS" => Self::Status,
            "GC" => Self::Gc,
            "VERSION" => Self::Version,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Status => "STATUS",
            Self::Gc => "GC",
            Self::Version => "VERSION",
        }
    }
}

/// The raw `CNI_*` variables, decoded as UTF-8 but not yet validated per
/// verb (each verb needs a different subset).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniEnv {
    pub command: Option<String>,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
    pub path: Option<String>,
}

impl CniEnv {
    /// Picks the `CNI_*` variables out of a process environment.
    pub fn from_vars<I>(vars: I) -> Result<Self, CniError>
    where
        I: IntoIterator<Item = (OsString, OsString)>,
    {
        let mut env = Self::default();
        for (k, v) in vars {
            let slot = match k.to_str() {
                Some("CNI_COMMAND") => &mut env.command,
                Some("CNI_CONTAINERID") => &mut env.container_id,
                Some("CNI_NETNS") => &mut env.netns,
                Some("CNI_IFNAME") => &mut env.ifname,
                Some("CNI_ARGS") => &mut env.args,
                Some("CNI_PATH") => &mut env.path,
                _ => continue,
            };
            let v = v.into_string().map_err(|_| {
                CniError::new(
                    code::INVALID_ENV,
                    format!("{} is not valid UTF-8", k.to_string_lossy()),
                )
            })?;
            *slot = Some(v);
        }
        Ok(env)
    }

    pub fn command(&self) -> Result<Command, CniError> {
        match self.command.as_deref() {
            None | Some("") => Err(CniError::new(code::INVALID_ENV, "CNI_COMMAND is not set")),
            Some(c) => Command::parse(c).ok_or_else(|| {
                CniError::new(code::INVALID_ENV, format!("unknown CNI_COMMAND {c:?}"))
            }),
        }
    }

    /// The attachment of an ADD, DEL or CHECK.
    pub fn attachment(&self) -> Result<(String, String), CniError> {
        let cid = required(&self.container_id, "CNI_CONTAINERID")?;
        if !valid_container_id(cid) {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("invalid CNI_CONTAINERID {cid:?}: must match [a-zA-Z0-9][a-zA-Z0-9_.-]*"),
            ));
        }
        let ifname = required(&self.ifname, "CNI_IFNAME")?;
        check_ifname(ifname).map_err(|why| {
            CniError::new(
                code::INVALID_ENV,
                format!("invalid CNI_IFNAME {ifname:?}: {why}"),
            )
        })?;
        Ok((cid.to_owned(), ifname.to_owned()))
    }

    /// `CNI_NETNS` for ADD and CHECK, where it is mandatory.
    pub fn netns(&self) -> Result<&str, CniError> {
        required(&self.netns, "CNI_NETNS")
    }

    /// `CNI_NETNS` for DEL, where it may be missing or empty.
    pub fn netns_opt(&self) -> Option<&str> {
        self.netns.as_deref().filter(|s| !s.is_empty())
    }

    /// The spec requires `CNI_PATH` for every verb that acts on the network
    /// (ADD, DEL, CHECK, GC), even though this plugin delegates to nothing.
    pub fn require_path(&self) -> Result<(), CniError> {
        required(&self.path, "CNI_PATH").map(|_| ())
    }

    /// `CNI_ARGS`, `K=V` pairs separated by `;`. We use none of them, but a
    /// malformed value means the runtime is broken, so it is reported.
    pub fn args(&self) -> Result<Vec<(String, String)>, CniError> {
        let Some(raw) = self.args.as_deref() else {
            return Ok(Vec::new());
        };
        raw.split(';')
            .filter(|pair| !pair.is_empty())
            .map(|pair| match pair.split_once('=') {
                Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
                _ => Err(CniError::new(
                    code::INVALID_ENV,
                    format!("invalid CNI_ARGS pair {pair:?}: expected KEY=VALUE"),
                )),
            })
            .collect()
    }
}

fn required<'a>(v: &'a Option<String>, name: &str) -> Result<&'a str, CniError> {
    match v.as_deref() {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(CniError::new(
            code::INVALID_ENV,
            format!("{name} is not set"),
        )),
    }
}

/// The spec's container ID rule.
pub fn valid_container_id(id: &str) -> bool {
    sluice_net::cni::conf::valid_network_name(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<CniEnv, CniError> {
        CniEnv::from_vars(
            pairs
                .iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
        )
    }

    #[test]
    fn parses_an_add() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc-1.2_3"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web;"),
            ("CNI_PATH", "/opt/cni/bin"),
            ("HOME", "/root"),
        ])
        .unwrap();
        assert_eq!(e.command().unwrap(), Command::Add);
        assert_eq!(e.attachment().unwrap(), ("abc-1.2_3".into(), "eth0".into()));
        assert_eq!(e.netns().unwrap(), "/run/netns/x");
        assert_eq!(e.args().unwrap().len(), 2);
        assert!(e.require_path().is_ok());
    }

    #[test]
    fn missing_and_invalid_values_are_code_4() {
        let e = env(&[]).unwrap();
        assert_eq!(e.command().unwrap_err().code, code::INVALID_ENV);
        assert_eq!(e.attachment().unwrap_err().code, code::INVALID_ENV);
        assert_eq!(e.netns().unwrap_err().code, code::INVALID_ENV);
        assert_eq!(e.require_path().unwrap_err().code, code::INVALID_ENV);
        assert_eq!(e.netns_opt(), None);
        assert_eq!(
            env(&[("CNI_COMMAND", "add")])
                .unwrap()
                .command()
                .unwrap_err()
                .code,
            4
        );
        for cid in ["", "-x", "a b", "a/b", "ä"] {
            let e = env(&[("CNI_CONTAINERID", cid), ("CNI_IFNAME", "eth0")]).unwrap();
            assert_eq!(e.attachment().unwrap_err().code, 4, "{cid:?}");
        }
        for ifn in ["", "..", "eth0:1", "0123456789abcdef"] {
            let e = env(&[("CNI_CONTAINERID", "c"), ("CNI_IFNAME", ifn)]).unwrap();
            assert_eq!(e.attachment().unwrap_err().code, 4, "{ifn:?}");
        }
        let e = env(&[("CNI_ARGS", "A=1;garbage")]).unwrap();
        assert_eq!(e.args().unwrap_err().code, 4);
        let e = env(&[("CNI_NETNS", "")]).unwrap();
        assert_eq!(e.netns_opt(), None);
    }

    #[test]
    fn non_utf8_is_code_4() {
        use std::os::unix::ffi::OsStringExt;
        let r = CniEnv::from_vars([(OsString::from("CNI_IFNAME"), OsString::from_vec(vec![0xff]))]);
        assert_eq!(r.unwrap_err().code, code::INVALID_ENV);
        // Foreign variables may be anything.
        let r = CniEnv::from_vars([(OsString::from("X"), OsString::from_vec(vec![0xff]))]);
        assert!(r.is_ok());
    }
}
