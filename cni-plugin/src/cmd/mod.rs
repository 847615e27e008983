//! The CNI verbs and the dispatcher that turns (environment, stdin) into
//! (stdout, exit code).

mod add;
mod check;
mod del;
mod gc;
mod status;

use std::ffi::OsString;

use serde_json::{Map, Value};

use crate::env::{CniEnv, Command};
use crate::log::Logger;
use sluice_net::cni::conf::NetConf;
use sluice_net::cni::error::{CniError, code};
use sluice_net::cni::version::{CniVersion, version_info};

/// Largest stdin accepted. A GC list for thousands of pods is well under
/// a megabyte; anything near this is not a network configuration.
pub const MAX_STDIN: usize = 16 << 20;

/// What the plugin prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: Vec<u8>,
    pub exit_code: u8,
}

impl Outcome {
    fn success(v: Option<Value>) -> Self {
        let stdout = v.map(|v| json_line(&v)).unwrap_or_default();
        Outcome {
            stdout,
            exit_code: 0,
        }
    }

    /// The spec's error JSON on stdout, exit 1.
    pub fn error(e: &CniError, version: CniVersion) -> Self {
        Outcome {
            stdout: json_line(&e.to_json(version.as_str())),
            exit_code: 1,
        }
    }
}

fn json_line(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(v).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Everything a verb needs.
pub(crate) struct Ctx<'a> {
    pub env: &'a CniEnv,
    pub conf: NetConf,
    pub version: CniVersion,
    /// The decoded stdin, for runtime-injected keys (`prevResult`, ...).
    pub raw: Map<String, Value>,
    pub log: Logger,
}

/// Runs one plugin invocation. Never panics on any input; every failure is
/// an [`Outcome`] carrying the spec's error JSON.
pub fn dispatch<I>(vars: I, stdin: &[u8]) -> Outcome
where
    I: IntoIterator<Item = (OsString, OsString)>,
{
    let env = match CniEnv::from_vars(vars) {
        Ok(env) => env,
        Err(e) => return Outcome::error(&e, CniVersion::LATEST),
    };
    let command = match env.command() {
        Ok(c) => c,
        Err(e) => return Outcome::error(&e, CniVersion::LATEST),
    };
    if command == Command::Version {
        // The reply does not depend on the input, so a runtime probing with
        // an odd or empty stdin still learns what we speak.
        return Outcome::success(Some(version_info()));
    }

    let (raw, version) = match decode(stdin) {
        Ok(x) => x,
        Err((e, v)) => return Outcome::error(&e, v),
    };
    let conf = match NetConf::from_object(&raw) {
        Ok(c) => c,
        Err(e) => return Outcome::error(&e, version),
    };
    let who = match (&env.container_id, &env.ifname) {
        (Some(c), Some(i)) => format!("{} {c}/{i}", command.as_str()),
        _ => command.as_str().to_owned(),
    };
    let log = Logger::new(conf.log_file.as_deref(), who);
    let ctx = Ctx {
        env: &env,
        conf,
        version,
        raw,
        log,
    };

    let result = match command {
        Command::Add => add::run(&ctx).map(Some),
        Command::Del => del::run(&ctx).map(|()| None),
        Command::Check => check::run(&ctx).map(|()| None),
        Command::Status => status::run(&ctx).map(|()| None),
        Command::Gc => gc::run(&ctx).map(|()| None),
        Command::Version => Ok(Some(version_info())),
    };
    match result {
        Ok(v) => {
            if command != Command::Status {
                ctx.log.info("ok");
            }
            Outcome::success(v)
        }
        Err(e) => {
            ctx.log.error(&e);
            Outcome::error(&e, version)
        }
    }
}

/// Decodes stdin into a JSON object and reads its `cniVersion`. On error,
/// also returns the version to report it in.
fn decode(stdin: &[u8]) -> Result<(Map<String, Value>, CniVersion), (CniError, CniVersion)> {
    let latest = CniVersion::LATEST;
    if stdin.len() > MAX_STDIN {
        return Err((
            CniError::new(
                code::DECODE,
                format!("network configuration larger than {MAX_STDIN} bytes"),
            ),
            latest,
        ));
    }
    let raw = match serde_json::from_slice::<Value>(stdin) {
        Ok(Value::Object(m)) => m,
        Ok(_) => {
            return Err((
                CniError::new(code::DECODE, "network configuration is not a JSON object"),
                latest,
            ));
        }
        Err(e) => {
            return Err((
                CniError::new(
                    code::DECODE,
                    "cannot decode the network configuration on stdin",
                )
                .with_details(e.to_string()),
                latest,
            ));
        }
    };
    let version = match raw.get("cniVersion") {
        Some(Value::String(s)) => CniVersion::parse(s).ok_or_else(|| {
            (
                CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    format!("unsupported cniVersion {s:?}"),
                )
                .with_details(format!(
                    "supported: {}",
                    sluice_net::cni::version::SUPPORTED
                        .map(|v| v.as_str())
                        .join(", ")
                )),
                latest,
            )
        })?,
        Some(_) => {
            return Err((
                CniError::new(code::INVALID_CONFIG, "cniVersion is not a string"),
                latest,
            ));
        }
        None => {
            return Err((
                CniError::new(code::INVALID_CONFIG, "cniVersion is missing"),
                latest,
            ));
        }
    };
    Ok((raw, version))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(vars: &[(&str, &str)], stdin: &[u8]) -> (u8, Value) {
        let out = dispatch(
            vars.iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
            stdin,
        );
        let v = if out.stdout.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&out.stdout).unwrap()
        };
        (out.exit_code, v)
    }

    #[test]
    fn version_needs_nothing() {
        let (rc, v) = run(&[("CNI_COMMAND", "VERSION")], b"");
        assert_eq!(rc, 0);
        assert_eq!(
            v["supportedVersions"],
            json!(["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
    }

    #[test]
    fn decode_errors() {
        let add = [("CNI_COMMAND", "ADD")];
        let (rc, v) = run(&add, b"{not json");
        assert_eq!((rc, v["code"].clone()), (1, json!(6)));
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(run(&add, b"[1,2]").1["code"], 6);
        assert_eq!(run(&add, br#"{"cniVersion":"0.1.0"}"#).1["code"], 1);
        assert_eq!(run(&add, br#"{"cniVersion":1}"#).1["code"], 7);
        assert_eq!(run(&add, br#"{"name":"x"}"#).1["code"], 7);
        let (_, v) = run(&add, br#"{"cniVersion":"0.4.0","name":"x"}"#);
        assert_eq!(v["code"], 7, "podCIDR missing");
        assert_eq!(
            v["cniVersion"], "0.4.0",
            "errors answer in the request's version"
        );
        assert!(v["msg"].is_string() && v["details"].is_string());
    }

    #[test]
    fn env_errors() {
        assert_eq!(run(&[], b"{}").1["code"], 4);
        assert_eq!(run(&[("CNI_COMMAND", "FROB")], b"{}").1["code"], 4);
        let conf = br#"{"cniVersion":"1.0.0","name":"n","podCIDR":"10.0.0.0/24","stateDir":"/nonexistent/x"}"#;
        // ADD without CNI_CONTAINERID: refused before touching anything.
        let (rc, v) = run(&[("CNI_COMMAND", "ADD")], conf);
        assert_eq!((rc, v["code"].clone()), (1, json!(4)));
        let (_, v) = run(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c")], conf);
        assert_eq!(v["code"], 4, "CNI_IFNAME missing");
    }

    #[test]
    fn verbs_refused_by_old_versions() {
        let vars = [
            ("CNI_COMMAND", "CHECK"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/nonexistent"),
            ("CNI_PATH", "/opt/cni/bin"),
        ];
        let conf = br#"{"cniVersion":"0.3.1","name":"n","podCIDR":"10.0.0.0/24","stateDir":"/nonexistent/x"}"#;
        let (_, v) = run(&vars, conf);
        assert_eq!(v["code"], 1);
        let conf = br#"{"cniVersion":"1.0.0","name":"n","podCIDR":"10.0.0.0/24","stateDir":"/nonexistent/x"}"#;
        assert_eq!(run(&[("CNI_COMMAND", "STATUS")], conf).1["code"], 1);
        assert_eq!(
            run(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")], conf).1["code"],
            1
        );
    }

    #[test]
    fn status_without_daemon_is_50() {
        let dir = tempfile::tempdir().unwrap();
        let conf = json!({
            "cniVersion": "1.1.0", "name": "n", "podCIDR": "10.0.0.0/24",
            "stateDir": dir.path(), "bpffs": dir.path(),
        });
        let (rc, v) = run(&[("CNI_COMMAND", "STATUS")], conf.to_string().as_bytes());
        assert_eq!(rc, 1);
        assert_eq!(v["code"], 50);
        let msg = v["msg"].as_str().unwrap();
        assert!(
            msg.contains("prog_from_pod") && msg.contains("sluiced"),
            "{msg}"
        );
    }

    #[test]
    fn gc_requires_the_attachment_list() {
        let dir = tempfile::tempdir().unwrap();
        let conf = json!({
            "cniVersion": "1.1.0", "name": "n", "podCIDR": "10.0.0.0/24",
            "stateDir": dir.path(), "bpffs": dir.path(),
        });
        let vars = [("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")];
        assert_eq!(run(&vars, conf.to_string().as_bytes()).1["code"], 7);
        let mut bad = conf.clone();
        bad["cni.dev/valid-attachments"] = json!([{"containerID": 5}]);
        assert_eq!(run(&vars, bad.to_string().as_bytes()).1["code"], 7);
        // Nothing was created for the refused requests.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
