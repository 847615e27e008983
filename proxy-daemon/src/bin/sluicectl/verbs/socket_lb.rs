//! `sluicectl socket-lb`: the socket programs' attachment, scope and
//! translated sockets.

use anyhow::Result;
use sluice::ctl::socket_lb;

use super::{Ctx, Report};

pub fn run(ctx: &Ctx) -> Result<Report> {
    let v = socket_lb::read(&ctx.bpffs, &ctx.state_dir)?;
    Report::new(&v, socket_lb::render(&v))
}
