//! `sluicectl conntrack`: tracked connections, or flushing them.

use anyhow::{Context, Result, bail};
use sluice::ctl::{snapshot::Snapshot, views};

use super::{Ctx, Report};

pub fn run(ctx: &Ctx, service: Option<&str>, flush: bool) -> Result<Report> {
    let s = Snapshot::read(&ctx.bpffs, &ctx.state_dir, true)?;
    let ids = service.map(|w| service_ids(&s, w)).transpose()?;
    if flush {
        let mut maps = sluice::datapath::PinnedMaps::open(&ctx.bpffs)?;
        let set = ids.map(|v| v.into_iter().collect());
        let n = sluice::conntrack::flush(&mut maps, set.as_ref())
            .context("flushing connection tracking")?;
        return Report::new(
            &serde_json::json!({ "flushed_entries": n }),
            format!("flushed {n} entries\n"),
        );
    }
    let rows = views::conntrack(&s, ids.as_deref());
    Report::new(&rows, views::conntrack_table(&rows))
}

/// Frontend ids of a Service named `ns/name`.
fn service_ids(s: &Snapshot, wanted: &str) -> Result<Vec<u32>> {
    let Some((ns, name)) = wanted.split_once('/') else {
        bail!("--service takes NAMESPACE/NAME, got {wanted:?}");
    };
    let ids: Vec<u32> = s
        .meta
        .frontends
        .iter()
        .filter(|f| &*f.namespace == ns && &*f.name == name)
        .map(|f| f.id)
        .collect();
    if ids.is_empty() {
        bail!("no programmed frontend belongs to Service {wanted}");
    }
    Ok(ids)
}
