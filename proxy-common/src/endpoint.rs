//! Pods on this node, for delivering their packets without the detour
//! through the bridge and the node's IP stack.

/// Value of `sluice_ep4_v1` (key: the pod's IPv4 address, NBO `u32`). The
/// CNI plugin writes it at ADD once the pod's interface is configured and
/// removes it at DEL; `sluiced` removes entries whose veth is gone.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LocalEndpoint {
    /// Host-side veth of the pod: packets for it are sent out of this
    /// interface (its TC egress, `to_pod`, still runs).
    pub ifindex: u32,
    /// MAC address of the pod's own interface: the destination of frames
    /// the datapath routes to it.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}
crate::assert_size!(LocalEndpoint, 12);

/// Default capacity: pods per node (a /24 pod CIDR holds 254; kubelet's
/// default limit is 110). At the limit the CNI plugin logs that the pod's
/// packets take the bridge and the node's stack, which still works.
pub const DEFAULT_MAX_LOCAL_ENDPOINTS: u32 = 4_096;
