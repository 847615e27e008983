//! `sluicectl`'s reading and rendering of the live datapath.

pub mod nodes;
pub mod snapshot;
pub mod socket_lb;
pub mod status;
pub mod table;
pub mod trace;
pub mod trace_host;
pub mod views;
