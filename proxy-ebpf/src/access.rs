//! Single-instruction loads and stores of packet data.
//!
//! Packet headers sit at any alignment. Rust may not dereference a
//! misaligned `*const u32`, and `read_unaligned` makes LLVM's BPF backend
//! split every 32-bit field into four byte loads, shifts and ors, a large
//! share of the programs' cost. These wrappers emit the one `ldx`/`stx`
//! instruction the hardware and the kernel handle fine (the verifier
//! allows unaligned packet access on architectures with efficient
//! unaligned access, which is where Sluice runs); the verifier still checks
//! every access against the bounds the caller established.

use core::arch::asm;

/// Loads a 32-bit value from packet memory, as stored (NBO fields stay NBO).
///
/// # Safety
/// `p` must point at four readable bytes of packet data.
#[inline(always)]
pub unsafe fn load32(p: usize) -> u32 {
    let v: u32;
    // SAFETY: the caller guarantees `p` is in bounds.
    unsafe {
        asm!("{v} = *(u32 *)({p} + 0)", p = in(reg) p, v = lateout(reg) v,
            options(pure, readonly, nostack, preserves_flags));
    }
    v
}

/// # Safety
/// `p` must point at two readable bytes of packet data.
#[inline(always)]
pub unsafe fn load16(p: usize) -> u16 {
    let v: u16;
    // SAFETY: the caller guarantees `p` is in bounds.
    unsafe {
        asm!("{v} = *(u16 *)({p} + 0)", p = in(reg) p, v = lateout(reg) v,
            options(pure, readonly, nostack, preserves_flags));
    }
    v
}

/// # Safety
/// `p` must point at four writable bytes of packet data.
#[inline(always)]
pub unsafe fn store32(p: usize, v: u32) {
    // SAFETY: the caller guarantees `p` is in bounds.
    unsafe {
        asm!("*(u32 *)({p} + 0) = {v}", p = in(reg) p, v = in(reg) v,
            options(nostack, preserves_flags));
    }
}

/// # Safety
/// `p` must point at two writable bytes of packet data.
#[inline(always)]
pub unsafe fn store16(p: usize, v: u16) {
    // SAFETY: the caller guarantees `p` is in bounds.
    unsafe {
        asm!("*(u16 *)({p} + 0) = {v}", p = in(reg) p, v = in(reg) v,
            options(nostack, preserves_flags));
    }
}
