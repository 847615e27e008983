//! `sluicectl stats`: verdicts by reason, map fill, CT and write failures.

use anyhow::Result;
use sluice::ctl::{snapshot::Snapshot, views};

use super::{Ctx, Report};

pub fn run(ctx: &Ctx) -> Result<Report> {
    let s = Snapshot::read(&ctx.bpffs, &ctx.state_dir, false)?;
    let (reasons, maps) = views::stats_tables(&s);
    Report::new(
        &serde_json::json!({
            "reasons": views::reasons(&s),
            "maps": s.fill,
            "conntrack": s.conntrack,
            "write_failures": s.write_errors,
        }),
        format!("{reasons}\n{maps}"),
    )
}
