//! `sluicectl nodes`: the overlay device and every peer's entries.

use anyhow::Result;
use sluice::ctl::nodes;

use super::{Ctx, Report};

pub fn run(ctx: &Ctx) -> Result<Report> {
    let n = nodes::collect(&ctx.state_dir)?;
    let mut text = match (&n.device, n.device_up) {
        (None, _) => "overlay: off (sluiced runs with --overlay none)\n".to_string(),
        (Some(d), Some(up)) => format!("overlay: {d} {}\n", if up { "up" } else { "DOWN" }),
        (Some(d), None) => format!("overlay: {d} MISSING\n"),
    };
    if let Some(me) = &n.this_node {
        text.push_str(&format!("this node: {me}\n"));
    }
    text.push_str(&nodes::table(&n).to_string());
    Report::new(&n, text)
}
