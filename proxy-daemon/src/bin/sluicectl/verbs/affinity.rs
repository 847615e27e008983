//! `sluicectl affinity`: ClientIP affinity entries still in force.

use anyhow::Result;
use sluice::ctl::{snapshot::Snapshot, views};

use super::{Ctx, Report};

pub fn run(ctx: &Ctx) -> Result<Report> {
    let s = Snapshot::read(&ctx.bpffs, &ctx.state_dir, false)?;
    let rows = views::affinity(&s);
    Report::new(&rows, views::affinity_table(&rows))
}
