//! One module per `sluicectl` verb. Each returns a [`Report`]: the same
//! content for people (a table) and for scripts (JSON).

use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;

pub mod affinity;
pub mod backends;
pub mod conntrack;
pub mod nodes;
pub mod services;
pub mod socket_lb;
pub mod stats;
pub mod status;
pub mod trace;

/// Where the node's datapath and the daemon's state are.
pub struct Ctx {
    pub bpffs: PathBuf,
    pub state_dir: PathBuf,
}

/// What a verb shows.
pub struct Report {
    json: serde_json::Value,
    text: String,
}

impl Report {
    pub fn new<T: Serialize>(value: &T, text: impl std::fmt::Display) -> Result<Self> {
        Ok(Self {
            json: serde_json::to_value(value)?,
            text: text.to_string(),
        })
    }

    /// Prints the report as JSON or as text.
    pub fn print(&self, json: bool) -> Result<()> {
        if json {
            println!("{}", serde_json::to_string_pretty(&self.json)?);
        } else {
            print!("{}", self.text);
        }
        Ok(())
    }
}
