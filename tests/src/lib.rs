//! Test support for Sluice on top of `sluice_testkit`: packet fixtures
//! against the real datapath, a simulated cluster in network namespaces
//! with real binaries and real traffic, the scenarios end-to-end tests
//! start from, a test API server, demo and benchmarks.
//!
//! Everything here creates its own kernel objects and removes them when
//! dropped (or on SIGINT/SIGTERM); nothing touches the root network namespace.

pub mod apiserver;
pub mod apps;
pub mod bench;
pub mod fixture;
pub mod manifests;
pub mod podman;
pub mod scenarios;
pub mod sim;
