//! What the pod MTU is: the uplink's, less the overlay's encapsulation.

/// Bytes VXLAN over IPv4 adds to every packet: outer Ethernet, IPv4, UDP
/// and VXLAN headers.
pub const VXLAN_OVERHEAD: u32 = 14 + 20 + 8 + 8;

/// The MTU when the uplink's cannot be read.
pub const DEFAULT_UPLINK_MTU: u32 = 1500;

/// The pod (and overlay device) MTU for an uplink MTU.
pub const fn pod_mtu(uplink_mtu: u32, overlay: bool) -> u32 {
    if overlay {
        uplink_mtu.saturating_sub(VXLAN_OVERHEAD)
    } else {
        uplink_mtu
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_takes_fifty_bytes() {
        assert_eq!(pod_mtu(1500, true), 1450);
        assert_eq!(pod_mtu(9000, false), 9000);
        assert_eq!(pod_mtu(30, true), 0);
    }
}
