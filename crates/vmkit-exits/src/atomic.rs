//! Locked 8- and 16-byte compare-exchange on host memory, as `lock cmpxchg8b` and
//! `lock cmpxchg16b` perform them: stable Rust has no 128-bit atomic, so the instructions
//! themselves run on the host through `asm!`.

/// The outcome of a compare-exchange: whether it stored, and the value memory held before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Exchanged<T> {
    pub(crate) swapped: bool,
    pub(crate) previous: T,
}

/// `lock cmpxchg16b [ptr]`: if the 16 bytes at `ptr` equal `expected`, stores `new`.
///
/// # Safety
///
/// `ptr` must be 16-byte aligned and valid for reads and writes of 16 bytes for the duration
/// of the call (other threads may access the memory concurrently, atomically or not: the
/// instruction is atomic with respect to every other processor).
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn cmpxchg16b(ptr: *mut u8, expected: u128, new: u128) -> Exchanged<u128> {
    let (mut lo, mut hi) = (expected as u64, (expected >> 64) as u64);
    let swapped: u8;
    // SAFETY: the caller guarantees that `ptr` is 16-byte aligned (cmpxchg16b raises #GP on the
    // host otherwise) and valid for 16 bytes of reads and writes. RBX is reserved by the
    // compiler, so the new low half is swapped into it and RBX restored before the block ends;
    // every other register the instruction uses is declared.
    unsafe {
        core::arch::asm!(
            "xchg {new_lo}, rbx",
            "lock cmpxchg16b xmmword ptr [{ptr}]",
            "sete {swapped}",
            "mov rbx, {new_lo}",
            ptr = in(reg) ptr,
            new_lo = inout(reg) new as u64 => _,
            swapped = out(reg_byte) swapped,
            inout("rax") lo,
            inout("rdx") hi,
            in("rcx") (new >> 64) as u64,
            options(nostack),
        );
    }
    Exchanged {
        swapped: swapped != 0,
        previous: u128::from(lo) | (u128::from(hi) << 64),
    }
}

/// `lock cmpxchg8b [ptr]`: if the 8 bytes at `ptr` equal `expected`, stores `new`.
///
/// # Safety
///
/// `ptr` must be valid for reads and writes of 8 bytes for the duration of the call; it need
/// not be aligned (the host performs a misaligned locked access atomically; callers keep it
/// within one cache line so that it is no split lock).
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn cmpxchg8b(ptr: *mut u8, expected: u64, new: u64) -> Exchanged<u64> {
    let (mut lo, mut hi) = (expected & 0xffff_ffff, expected >> 32);
    let swapped: u8;
    // SAFETY: the caller guarantees that `ptr` is valid for 8 bytes of reads and writes;
    // cmpxchg8b has no alignment requirement. RBX is reserved by the compiler, so the new low
    // half is swapped into it and RBX restored before the block ends; every other register the
    // instruction uses is declared.
    unsafe {
        core::arch::asm!(
            "xchg {new_lo}, rbx",
            "lock cmpxchg8b qword ptr [{ptr}]",
            "sete {swapped}",
            "mov rbx, {new_lo}",
            ptr = in(reg) ptr,
            new_lo = inout(reg) new & 0xffff_ffff => _,
            swapped = out(reg_byte) swapped,
            inout("rax") lo,
            inout("rdx") hi,
            in("rcx") new >> 32,
            options(nostack),
        );
    }
    Exchanged {
        swapped: swapped != 0,
        previous: (lo & 0xffff_ffff) | ((hi & 0xffff_ffff) << 32),
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[repr(align(16))]
    struct Aligned([u8; 32]);

    #[test]
    fn sixteen_bytes_both_outcomes() {
        let mut m = Aligned([0; 32]);
        m.0[..16].copy_from_slice(&7u128.to_le_bytes());
        let p = m.0.as_mut_ptr();
        // SAFETY: `p` is 16-aligned and the buffer holds 32 bytes.
        let r = unsafe { cmpxchg16b(p, 7, u128::MAX - 1) };
        assert_eq!(
            r,
            Exchanged {
                swapped: true,
                previous: 7
            }
        );
        // SAFETY: as above.
        let r = unsafe { cmpxchg16b(p, 7, 9) };
        assert_eq!(
            r,
            Exchanged {
                swapped: false,
                previous: u128::MAX - 1
            }
        );
        assert_eq!(m.0[..16], (u128::MAX - 1).to_le_bytes());
    }

    #[test]
    fn eight_bytes_misaligned() {
        let mut m = Aligned([0; 32]);
        m.0[3..11].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
        // SAFETY: bytes 3..11 lie inside the buffer.
        let p = unsafe { m.0.as_mut_ptr().add(3) };
        // SAFETY: `p` is valid for 8 bytes.
        let r = unsafe { cmpxchg8b(p, 0x1122_3344_5566_7788, 0xaabb_ccdd_eeff_0011) };
        assert!(r.swapped);
        // SAFETY: as above.
        let r = unsafe { cmpxchg8b(p, 1, 2) };
        assert_eq!(
            r,
            Exchanged {
                swapped: false,
                previous: 0xaabb_ccdd_eeff_0011
            }
        );
        assert_eq!(m.0[0..3], [0; 3]);
        assert_eq!(m.0[11..16], [0; 5]);
    }
}
