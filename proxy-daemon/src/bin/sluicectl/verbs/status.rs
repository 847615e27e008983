//! `sluicectl status`: the daemon, the pins, where the programs are.

use anyhow::Result;
use sluice::ctl::status;

use super::{Ctx, Report};

pub fn run(ctx: &Ctx) -> Result<Report> {
    let st = status::collect(&ctx.bpffs, &ctx.state_dir);
    Report::new(&st, status::render(&st))
}
