//! The CNI error type and the error codes the plugin reports.
//!
//! Every failure ends as a [`CniError`]; the binary prints it as the spec's
//! error JSON on stdout and exits non-zero. Module errors convert into it with
//! the code that tells a runtime what to do next (retry, give up, clean up).

use serde_json::{Value, json};

/// Error codes: 1–99 are defined by the CNI spec, 100 and up are ours.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist; the runtime need not clean up.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid or missing `CNI_*` environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure (files, netlink, kernel).
    pub const IO: u32 = 5;
    /// Failed to decode the content on stdin.
    pub const DECODE: u32 = 6;
    /// Invalid network configuration.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later (the datapath is not ready yet).
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot service ADD requests.
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;

    /// The pod CIDR has no free address left. Not 11: waiting does not help,
    /// only a DEL (or GC) of another pod does, and a runtime that saw 11 would
    /// spin on it.
    pub const POOL_EXHAUSTED: u32 = 100;
    /// ADD: the interface name already exists in the container's namespace.
    pub const INTERFACE_EXISTS: u32 = 101;
    /// CHECK: the attachment does not match `prevResult` or the IPAM store.
    pub const CHECK_FAILED: u32 = 102;
    /// Attaching the pinned datapath programs failed for a reason other than
    /// missing pins (those give [`TRY_AGAIN_LATER`]).
    pub const DATAPATH: u32 = 103;
}

/// A CNI error as the spec defines it: a code, a short message, details.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg} (code {code}){}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The spec's error object, stamped with the version the reply is in.
    pub fn to_json(&self, cni_version: &str) -> Value {
        json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
    }
}

impl From<crate::netlink::NetlinkError> for CniError {
    fn from(e: crate::netlink::NetlinkError) -> Self {
        CniError::new(code::IO, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_spec_fields() {
        let e = CniError::new(code::INVALID_CONFIG, "bad podCIDR").with_details("x");
        assert_eq!(
            e.to_json("1.0.0"),
            json!({"cniVersion": "1.0.0", "code": 7, "msg": "bad podCIDR", "details": "x"})
        );
        assert_eq!(e.to_string(), "bad podCIDR (code 7): x");
        assert_eq!(CniError::new(5, "io").to_string(), "io (code 5)");
    }
}
