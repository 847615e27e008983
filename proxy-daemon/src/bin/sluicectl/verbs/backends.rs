//! `sluicectl backends`: every backend and the frontends that use it.

use anyhow::Result;
use sluice::ctl::{snapshot::Snapshot, views};

use super::{Ctx, Report};

pub fn run(ctx: &Ctx) -> Result<Report> {
    let s = Snapshot::read(&ctx.bpffs, &ctx.state_dir, false)?;
    let rows = views::backends(&s);
    Report::new(&rows, views::backends_table(&rows))
}
