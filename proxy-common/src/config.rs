//! Node configuration written by the daemon into `sluice_cfg_v1[0]`.

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeConfig {
    /// Layout version of this struct; the datapath ignores a config whose
    /// version it does not know.
    pub version: u32,
    /// Reserved for node-wide switches; 0.
    pub flags: u32,
    /// The node's address, NBO.
    pub node_addr: u32,
    /// This node's pod CIDR, NBO, and its netmask, NBO.
    pub pod_cidr: u32,
    pub pod_mask: u32,
    /// The cluster's pod CIDR and netmask, NBO (0/0 when unknown).
    pub cluster_cidr: u32,
    pub cluster_mask: u32,
    /// Source ports masquerade may allocate (host order, inclusive). Kept
    /// out of the kernel's ephemeral range so a masqueraded flow never
    /// takes a port a host socket uses.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// Entries of every Maglev table (a prime); 0 when Maglev is off.
    pub maglev_size: u32,
    pub _pad: u32,
}
crate::assert_size!(NodeConfig, 40);

pub const NODE_CONFIG_VERSION: u32 = 1;

/// Default masquerade port range: above Linux's default ephemeral range
/// (32768-60999).
pub const DEFAULT_SNAT_PORT_MIN: u16 = 61_000;
pub const DEFAULT_SNAT_PORT_MAX: u16 = 65_535;
