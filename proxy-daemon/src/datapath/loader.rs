use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::MapType,
    programs::{
        CgroupAttachMode, CgroupSockAddr, Program, SchedClassifier,
        links::{FdLink, PinnedLink},
    },
};
use proxy_common::{
    AffinityKey, AffinityValue, Backend, CtEntry, CtKey, CtStats, FragKey, FragPorts, NodeConfig,
    ReasonCounter, ServiceCounter, ServiceKey, ServiceValue, SockAffinityKey, SockConfig,
    SockRevKey, SockRevValue, SourceRangeKey, names,
};
use tracing::{debug, info};

use super::{Capacities, DatapathError, OBJECT, maps::open_pinned, pin_dir};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Fails unless `path` is the root of (or a directory on) a BPF filesystem.
pub fn check_bpffs(path: &Path) -> Result<(), DatapathError> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
        DatapathError::NotBpffs {
            path: path.to_owned(),
        }
    })?;
    // SAFETY: statfs is plain data; all zeroes is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a writable statfs.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(DatapathError::from_pin_io(
            path.to_owned(),
            std::io::Error::last_os_error(),
        ));
    }
    if st.f_type as i64 != BPF_FS_MAGIC {
        return Err(DatapathError::NotBpffs {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// The layout a pinned map must have for this build to reuse it.
struct Layout {
    name: &'static str,
    kind: MapType,
    key: usize,
    value: usize,
}

const fn layout<K, V>(name: &'static str, kind: MapType) -> Layout {
    Layout {
        name,
        kind,
        key: size_of::<K>(),
        value: size_of::<V>(),
    }
}

const LAYOUTS: [Layout; 17] = [
    layout::<ServiceKey, ServiceValue>(names::MAP_SERVICES, MapType::Hash),
    layout::<u32, Backend>(names::MAP_BACKENDS, MapType::Hash),
    layout::<CtKey, CtEntry>(names::MAP_CT_TCP, MapType::Hash),
    layout::<CtKey, CtEntry>(names::MAP_CT_ANY, MapType::LruHash),
    layout::<u32, CtStats>(names::MAP_CT_STATS, MapType::PerCpuArray),
    layout::<u32, u64>(names::MAP_WRITE_ERRORS, MapType::PerCpuArray),
    layout::<FragKey, FragPorts>(names::MAP_FRAG, MapType::LruHash),
    layout::<u32, ReasonCounter>(names::MAP_REASONS, MapType::PerCpuArray),
    layout::<u32, ServiceCounter>(names::MAP_SVC_STATS, MapType::PerCpuArray),
    layout::<u32, NodeConfig>(names::MAP_CONFIG, MapType::Array),
    layout::<AffinityKey, AffinityValue>(names::MAP_AFFINITY, MapType::LruHash),
    // LPM keys start with the 32-bit prefix length.
    layout::<(u32, SourceRangeKey), u32>(names::MAP_SOURCE_RANGES, MapType::LpmTrie),
    // Values of a map of maps are map fds.
    layout::<u32, u32>(names::MAP_MAGLEV, MapType::HashOfMaps),
    layout::<u32, SockConfig>(names::MAP_SOCK_CONFIG, MapType::Array),
    layout::<SockRevKey, SockRevValue>(names::MAP_SOCK_REV, MapType::LruHash),
    layout::<SockAffinityKey, AffinityValue>(names::MAP_SOCK_AFFINITY, MapType::LruHash),
    layout::<u32, u32>(names::MAP_NODE_ADDRS, MapType::Hash),
];

/// Programs and the pin file each is published under (for the CNI plugin
/// and for re-attaching).
const PROGRAMS: [(&str, &str); 5] = [
    (names::PROG_FROM_POD, names::PIN_PROG_FROM_POD),
    (names::PROG_TO_POD, names::PIN_PROG_TO_POD),
    (names::PROG_FROM_NETDEV, names::PIN_PROG_FROM_NETDEV),
    (names::PROG_TO_NETDEV, names::PIN_PROG_TO_NETDEV),
    (names::PROG_FROM_OVERLAY, names::PIN_PROG_FROM_OVERLAY),
];

/// Loads Sluice's programs against the maps pinned under `<bpffs>/sluice`,
/// creating the maps on first start and reusing them afterwards, so that
/// connection tracking and service state survive a restart or an upgrade.
pub struct Loader<'a> {
    bpffs: PathBuf,
    capacities: Capacities,
    object: &'a [u8],
}

impl Loader<'static> {
    /// A loader for this build's programs.
    pub fn new(bpffs: impl Into<PathBuf>, capacities: Capacities) -> Self {
        Self {
            bpffs: bpffs.into(),
            capacities,
            object: OBJECT,
        }
    }
}

impl<'a> Loader<'a> {
    /// Loads another build of the programs instead (an earlier release's
    /// object, for upgrade tests). Its maps are pinned by their own names.
    pub fn with_object<'b>(self, object: &'b [u8]) -> Loader<'b> {
        Loader {
            bpffs: self.bpffs,
            capacities: self.capacities,
            object,
        }
    }

    /// Checks every existing pin against this build's layout and the
    /// configured capacities before anything is loaded.
    fn check_pins(&self) -> Result<(), DatapathError> {
        for l in &LAYOUTS {
            let path = super::map_path(&self.bpffs, l.name);
            if !path.exists() {
                continue;
            }
            let info =
                open_pinned(&self.bpffs, l.name)?
                    .info()
                    .map_err(|source| DatapathError::Map {
                        name: l.name,
                        source,
                    })?;
            let kind = info.map_type().map_err(|source| DatapathError::Map {
                name: l.name,
                source,
            })?;
            if kind != l.kind
                || info.key_size() as usize != l.key
                || info.value_size() as usize != l.value
            {
                return Err(DatapathError::Incompatible {
                    map: l.name,
                    detail: format!(
                        "pinned {:?} key {} value {}, expected {:?} key {} value {}",
                        kind,
                        info.key_size(),
                        info.value_size(),
                        l.kind,
                        l.key,
                        l.value
                    ),
                });
            }
            let configured = self.capacities.of(l.name);
            // The kernel keeps the capacity a map was created with: a
            // different one configured now would silently not apply.
            if info.max_entries() != configured {
                return Err(DatapathError::CapacityMismatch {
                    map: l.name,
                    pinned: info.max_entries(),
                    configured,
                });
            }
        }
        Ok(())
    }

    pub fn load(&self) -> Result<LoadedPrograms, DatapathError> {
        if self.object.is_empty() {
            return Err(DatapathError::NoObject);
        }
        check_bpffs(&self.bpffs)?;
        let dir = pin_dir(&self.bpffs);
        fs::create_dir_all(&dir).map_err(|e| DatapathError::from_pin_io(dir.clone(), e))?;
        self.check_pins()?;

        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(&dir);
        for l in &LAYOUTS {
            loader.map_max_entries(l.name, self.capacities.of(l.name));
        }
        // BTF-defined maps carry no pinning attribute: pin them by name.
        let maglev_pin = super::map_path(&self.bpffs, names::MAP_MAGLEV);
        loader.map_pin_path(names::MAP_MAGLEV, maglev_pin.as_path());
        let mut ebpf = loader.load(self.object)?;
        for (name, _) in PROGRAMS {
            let prog = classifier(&mut ebpf, name)?;
            prog.load()
                .map_err(|source| DatapathError::Program { name, source })?;
            debug!(program = name, "loaded");
        }
        info!(pin_dir = %dir.display(), "datapath loaded");
        Ok(LoadedPrograms { ebpf, dir })
    }
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    let prog: &mut Program = ebpf.program_mut(name).ok_or(DatapathError::Incompatible {
        map: name,
        detail: "program missing from the eBPF object".into(),
    })?;
    prog.try_into()
        .map_err(|source| DatapathError::Program { name, source })
}

/// Programs loaded into the kernel, sharing the pinned maps.
pub struct LoadedPrograms {
    ebpf: Ebpf,
    dir: PathBuf,
}

impl LoadedPrograms {
    /// One of the programs, e.g. for BPF_PROG_TEST_RUN.
    pub fn program(&mut self, name: &'static str) -> Result<&mut SchedClassifier, DatapathError> {
        classifier(&mut self.ebpf, name)
    }

    /// Publishes the programs under their pin names, replacing older pins in
    /// one rename each, so the CNI plugin never finds a pin missing. (The
    /// temporary name has no dot: bpffs reserves dotted names.)
    pub fn pin(&mut self) -> Result<(), DatapathError> {
        for (name, pin) in PROGRAMS {
            let path = self.dir.join(pin);
            let tmp = self.dir.join(format!("{pin}_new"));
            let _ = fs::remove_file(&tmp);
            classifier(&mut self.ebpf, name)?
                .pin(&tmp)
                .map_err(|e| DatapathError::Io {
                    path: tmp.clone(),
                    source: match e {
                        aya::pin::PinError::SyscallError(s) => s.io_error,
                        other => std::io::Error::other(other.to_string()),
                    },
                })?;
            fs::rename(&tmp, &path).map_err(|source| DatapathError::Io { path, source })?;
        }
        Ok(())
    }
}

impl LoadedPrograms {
    /// One socket program, loaded (not attached): for BPF_PROG_TEST_RUN.
    pub fn socket_program(
        &mut self,
        name: &'static str,
    ) -> Result<&mut CgroupSockAddr, DatapathError> {
        let prog: &mut CgroupSockAddr = self
            .ebpf
            .program_mut(name)
            .ok_or(DatapathError::Incompatible {
                map: name,
                detail: "program missing from the eBPF object".into(),
            })?
            .try_into()
            .map_err(|source| DatapathError::Program { name, source })?;
        if prog.fd().is_err() {
            prog.load()
                .map_err(|source| DatapathError::Program { name, source })?;
        }
        Ok(prog)
    }

    /// Loads the socket programs and attaches them to `cgroup`, each
    /// through a link pinned next to the maps: attached while no daemon
    /// runs, and replaced by the next one in one rename (the new link is
    /// attached before the old one goes, so no connect() in between is
    /// missed; one that both see is translated by the first, and the second
    /// finds a backend address, not a Service).
    pub fn attach_socket_programs(&mut self, cgroup: &Path) -> Result<(), DatapathError> {
        let cg = fs::File::open(cgroup).map_err(|source| DatapathError::Io {
            path: cgroup.to_owned(),
            source,
        })?;
        for (name, pin, prog_pin_name) in names::SOCK_PROGRAMS {
            let prog = self.socket_program(name)?;
            // Through a bpf_link (kernel 5.7+), which always shares the
            // cgroup with other programs (Cilium's, the node's): the kernel
            // refuses any attach flag there, so no mode is passed.
            let id = prog
                .attach(&cg, CgroupAttachMode::Single)
                .map_err(|source| DatapathError::Program { name, source })?;
            let link: FdLink = prog
                .take_link(id)
                .map_err(|source| DatapathError::Program { name, source })?
                .try_into()
                .map_err(|e: aya::programs::links::LinkError| DatapathError::Io {
                    path: cgroup.to_owned(),
                    source: std::io::Error::other(format!(
                        "{name}: the kernel attached it without a link ({e}); socket load balancing needs bpf_link (Linux 5.7+)"
                    )),
                })?;
            let path = self.dir.join(pin);
            let tmp = self.dir.join(format!("{pin}_new"));
            let _ = fs::remove_file(&tmp);
            let pinned: PinnedLink = link.pin(&tmp).map_err(|e| DatapathError::Io {
                path: tmp.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
            fs::rename(&tmp, &path).map_err(|source| DatapathError::Io {
                path: path.clone(),
                source,
            })?;
            // The pin holds the link now; dropping our handle leaves it.
            drop(pinned);
            // The program itself too, as the TC programs are: for
            // `sluicectl status` (id, tag) and BPF_PROG_TEST_RUN-style tools.
            let prog_pin = self.dir.join(prog_pin_name);
            let prog_tmp = self.dir.join(format!("{prog_pin_name}_new"));
            let _ = fs::remove_file(&prog_tmp);
            self.socket_program(name)?
                .pin(&prog_tmp)
                .map_err(|e| DatapathError::Io {
                    path: prog_tmp.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?;
            fs::rename(&prog_tmp, &prog_pin).map_err(|source| DatapathError::Io {
                path: prog_pin.clone(),
                source,
            })?;
            debug!(program = name, cgroup = %cgroup.display(), "socket program attached");
        }
        Ok(())
    }
}

/// Detaches the socket programs an earlier daemon attached (by unpinning
/// their links, and their program pins). Returns how many were attached.
pub fn detach_socket_programs(bpffs: &Path) -> Result<usize, DatapathError> {
    let dir = pin_dir(bpffs);
    let mut removed = 0;
    for (_, link, prog_pin) in names::SOCK_PROGRAMS {
        let path = dir.join(link);
        match fs::remove_file(&path) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(DatapathError::from_pin_io(path, e)),
        }
        let prog = dir.join(prog_pin);
        match fs::remove_file(&prog) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(DatapathError::from_pin_io(prog, e)),
        }
    }
    Ok(removed)
}
