//! GC: release what belongs to no valid attachment.
//!
//! Like any GC, this assumes the runtime does not run an ADD for an
//! attachment missing from the list while GC runs (that ADD's reservation
//! would be released too).

use std::collections::HashSet;

use serde_json::{Map, Value};

use super::Ctx;
use crate::endpoint;
use crate::ipam::{Attachment, IpamStore};
use sluice_net::BlockingNetlink as Netlink;
use sluice_net::cni::error::{CniError, code};
use sluice_net::pods::{host_veth_name, pod_veths_among};

/// Key of the valid-attachment list in CNI 1.1.0; libcni's pre-release
/// builds used the second one.
const VALID_ATTACHMENTS: &str = "cni.dev/valid-attachments";
const LEGACY_ATTACHMENTS: &str = "cni.dev/attachments";

pub(crate) fn valid_attachments(raw: &Map<String, Value>) -> Result<HashSet<Attachment>, CniError> {
    let list = raw
        .get(VALID_ATTACHMENTS)
        .or_else(|| raw.get(LEGACY_ATTACHMENTS))
        .ok_or_else(|| {
            // Without the list every reservation would look stale: refuse.
            CniError::new(
                code::INVALID_CONFIG,
                format!("GC requires {VALID_ATTACHMENTS}"),
            )
        })?;
    let list: Vec<Attachment> = serde_json::from_value(list.clone()).map_err(|e| {
        CniError::new(code::INVALID_CONFIG, format!("invalid {VALID_ATTACHMENTS}"))
            .with_details(e.to_string())
    })?;
    Ok(list.into_iter().collect())
}

pub(crate) fn run(ctx: &Ctx<'_>) -> Result<(), CniError> {
    if !ctx.version.has_status_and_gc() {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("GC is not defined in cniVersion {}", ctx.version),
        ));
    }
    ctx.env.require_path()?;
    let valid = valid_attachments(&ctx.raw)?;

    let store = IpamStore::open(ctx.conf.ipam_dir())?;
    let stale = store.retain(|a| valid.contains(a))?;
    let released: Vec<_> = stale.iter().map(|a| a.ip).collect();
    endpoint::forget(&ctx.log, &ctx.conf.bpffs, &released);
    for a in &stale {
        ctx.log.info(format_args!(
            "released {} of stale {}/{}",
            a.ip, a.owner.container_id, a.owner.ifname
        ));
    }

    // Then the veths: those of the released reservations, and any other pod
    // veth on our bridge that no valid attachment accounts for (left by an
    // earlier GC or DEL that failed half-way).
    let keep: HashSet<String> = valid
        .iter()
        .map(|a| host_veth_name(&a.container_id, &a.ifname))
        .collect();
    let nl = Netlink::new()?;
    let mut doomed: Vec<String> = stale
        .iter()
        .map(|a| host_veth_name(&a.owner.container_id, &a.owner.ifname))
        .collect();
    doomed.extend(
        pod_veths_among(&nl.links()?, &ctx.conf.bridge)
            .into_iter()
            .filter(|n| !keep.contains(n)),
    );
    doomed.sort();
    doomed.dedup();

    let mut errors = Vec::new();
    for name in doomed {
        match nl.delete_link(&name) {
            Ok(true) => ctx.log.info(format_args!("deleted stale host veth {name}")),
            Ok(false) => {}
            Err(e) => errors.push(format!("delete {name}: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(
            CniError::new(code::IO, "GC could not remove every stale veth")
                .with_details(errors.join("; ")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn reads_current_and_legacy_keys() {
        let a = valid_attachments(&obj(json!({
            "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0", "extra": 1}]
        })))
        .unwrap();
        assert!(a.contains(&Attachment::new("c1", "eth0")));
        let b = valid_attachments(&obj(json!({"cni.dev/attachments": []}))).unwrap();
        assert!(b.is_empty());
        for bad in [
            json!({}),
            json!({"cni.dev/valid-attachments": null}),
            json!({"cni.dev/valid-attachments": [{"ifname": "x"}]}),
        ] {
            assert_eq!(
                valid_attachments(&obj(bad)).unwrap_err().code,
                code::INVALID_CONFIG
            );
        }
    }
}
