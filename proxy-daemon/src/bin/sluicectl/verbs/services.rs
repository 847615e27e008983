//! `sluicectl services`: frontends with their backends, flags and counters.

use anyhow::Result;
use sluice::ctl::{snapshot::Snapshot, views};

use super::{Ctx, Report};

pub fn run(ctx: &Ctx) -> Result<Report> {
    let s = Snapshot::read(&ctx.bpffs, &ctx.state_dir, false)?;
    let rows = views::services(&s);
    Report::new(&rows, views::services_table(&rows))
}
