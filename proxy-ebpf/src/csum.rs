//! Internet checksum arithmetic (RFC 1071 sums, RFC 1624 incremental
//! updates): the datapath's one copy, used for the IPv4 header, ICMP
//! quotes, the TTL patch and refusals built from scratch.

/// Ones' complement addition with end-around carry.
#[inline(always)]
pub fn add(a: u32, b: u32) -> u32 {
    let (s, carry) = a.overflowing_add(b);
    s.wrapping_add(carry as u32)
}

/// A 32-bit ones' complement sum folded to 16 bits.
#[inline(always)]
pub fn fold(mut x: u32) -> u16 {
    x = (x & 0xffff) + (x >> 16);
    x = (x & 0xffff) + (x >> 16);
    x as u16
}

/// A checksum field after the data it covers changed by `diff` (RFC 1624:
/// HC' = ~(~HC + ~m + m')).
#[inline(always)]
pub fn updated(check: u16, diff: u32) -> u16 {
    !fold(add(u32::from(!check), diff))
}

/// The checksum difference of replacing 32-bit `old` by `new` (`~m + m'`).
#[inline(always)]
pub fn delta32(old: u32, new: u32) -> u32 {
    add(!old, new)
}

#[inline(always)]
pub fn delta16(old: u16, new: u16) -> u32 {
    add(u32::from(!old), u32::from(new))
}

/// The checksum of data whose ones' complement sum `bpf_csum_diff`
/// returned.
#[inline(always)]
pub fn of_sum(sum: u64) -> u16 {
    !fold((sum & 0xffff_ffff) as u32)
}
