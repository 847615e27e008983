//! Sluice's node daemon and debugging CLI, as a library: the binaries
//! `sluiced` and `sluicectl` are thin shells around these modules.

pub mod conntrack;
pub mod ctl;
pub mod daemon;
pub mod datapath;
pub mod frame;
pub mod health_check_ports;
pub mod model;
pub mod overlay;
pub mod socket_lb;
pub mod source;
pub mod telemetry;
pub mod writer;
