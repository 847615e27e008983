//! The kernel side as user space sees it: loading and pinning the programs,
//! and typed handles on the pinned maps.

mod capacity;
mod error;
mod loader;
mod maps;
pub mod migrate;
pub mod raw;

pub use capacity::Capacities;
pub use error::DatapathError;
pub use loader::{LoadedPrograms, Loader, check_bpffs, detach_socket_programs};
pub(crate) use maps::open_pinned;
pub use maps::{PinnedMaps, RetiredPins, map_path, open_pinned_info, pin_dir, retire_stale_pins};

/// The eBPF object built by build.rs (empty when built with AYA_BUILD_SKIP=1).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/proxy-ebpf"));
