//! `sluicectl trace`: one synthetic packet through a private copy of the
//! datapath.

use anyhow::{Result, anyhow};
use sluice::ctl::trace::{self, Entry, Request};

use super::{Ctx, Report};

pub fn run(ctx: &Ctx, from: &str, to: &str, proto: u8, entry: Option<Entry>) -> Result<Report> {
    let (from, sport) =
        trace::parse_endpoint(from, Some(40000)).map_err(|e| anyhow!("--from {e}"))?;
    let (to, dport) = trace::parse_endpoint(to, None).map_err(|e| anyhow!("--to {e}"))?;
    let req = Request {
        from,
        sport,
        to,
        dport,
        proto,
        entry,
    };
    let o = trace::trace(&ctx.bpffs, &req)?;
    Report::new(&o, trace::render(&o))
}
