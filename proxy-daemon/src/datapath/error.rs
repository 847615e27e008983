use std::{io, path::PathBuf};

/// What can go wrong between user space and the kernel datapath.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("{path} is not a BPF filesystem (mount one with `mount -t bpf bpf {path}`)")]
    NotBpffs { path: PathBuf },
    #[error(
        "pinned object {path} is missing: is sluiced running on this node, with the same --bpffs?"
    )]
    PinMissing { path: PathBuf },
    #[error(
        "permission denied on {path}: sluice needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)"
    )]
    PermissionDenied { path: PathBuf },
    #[error(
        "pinned map {map} has {pinned} entries but {configured} are configured; \
         keep the old size or remove the pin (this drops the map's state)"
    )]
    CapacityMismatch {
        map: &'static str,
        pinned: u32,
        configured: u32,
    },
    #[error("pinned map {map} has an incompatible layout: {detail}")]
    Incompatible { map: &'static str, detail: String },
    #[error(
        "this binary was built without its eBPF object (AYA_BUILD_SKIP); rebuild with `cargo xtask build`"
    )]
    NoObject,
    #[error("loading the eBPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map {name} is full ({capacity} entries)")]
    MapFull { name: &'static str, capacity: u32 },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl DatapathError {
    /// Maps an error on a pinned path to the most helpful variant.
    pub(crate) fn from_pin_io(path: PathBuf, source: io::Error) -> Self {
        match source.kind() {
            io::ErrorKind::NotFound => Self::PinMissing { path },
            io::ErrorKind::PermissionDenied => Self::PermissionDenied { path },
            _ => Self::Io { path, source },
        }
    }
}
