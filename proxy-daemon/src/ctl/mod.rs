//! `sluicectl`'s reading and rendering of the live datapath.

pub mod snapshot;
pub mod status;
pub mod table;
pub mod views;
