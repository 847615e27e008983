//! STATUS: can this node take ADDs? Needs the pinned programs and a live
//! `sluiced` (see [`crate::liveness`]).

use super::Ctx;
use sluice_net::cni::error::{CniError, code};
use sluice_net::liveness::{daemon_lock_path, daemon_running};
use sluice_net::tc::missing_pins;

pub(crate) fn run(ctx: &Ctx<'_>) -> Result<(), CniError> {
    if !ctx.version.has_status_and_gc() {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("STATUS is not defined in cniVersion {}", ctx.version),
        ));
    }
    let conf = &ctx.conf;
    let mut problems: Vec<String> = missing_pins(&conf.bpffs)
        .into_iter()
        .map(|p| format!("pinned program {} is missing", p.display()))
        .collect();
    if !daemon_running(&conf.state_dir) {
        problems.push(format!(
            "sluiced is not running (nobody holds {})",
            daemon_lock_path(&conf.state_dir).display()
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            code::PLUGIN_NOT_AVAILABLE,
            problems.join("; "),
        ))
    }
}
