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
    // RBX cannot be named as an operand but the compiler may allocate it to a `reg` one, so
    // every operand but the new low half sits in a named register: the new low half is swapped
    // into RBX and the compiler's RBX restored before the block ends (were the new low half
    // allocated to RBX itself, the swaps are no-ops). No flag is read back: the comparison's
    // outcome follows from RDX:RAX.
    // SAFETY: the caller guarantees `ptr` is 16-byte aligned and valid for 16 bytes of reads and
    // writes; only the named registers and RBX (restored) are touched.
    unsafe {
        core::arch::asm!(
            "xchg {new_lo}, rbx",
            "lock cmpxchg16b xmmword ptr [rdi]",
            "mov rbx, {new_lo}",
            new_lo = inout(reg) new as u64 => _,
            in("rdi") ptr,
            inout("rax") lo,
            inout("rdx") hi,
            in("rcx") (new >> 64) as u64,
            options(nostack),
        );
    }
    let previous = u128::from(lo) | (u128::from(hi) << 64);
    // Equal: RDX:RAX keeps the expected value; not equal: it gets memory, which differs.
    Exchanged {
        swapped: previous == expected,
        previous,
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
    // As for `cmpxchg16b`: every operand but the new low half sits in a named register, so none
    // can be the RBX the new low half is swapped into (and restored from) around the instruction.
    // SAFETY: the caller guarantees `ptr` is valid for 8 bytes of reads and writes; cmpxchg8b
    // has no alignment requirement, and only the named registers and RBX (restored) are touched.
    unsafe {
        core::arch::asm!(
            "xchg {new_lo}, rbx",
            "lock cmpxchg8b qword ptr [rdi]",
            "mov rbx, {new_lo}",
            new_lo = inout(reg) new & 0xffff_ffff => _,
            in("rdi") ptr,
            inout("rax") lo,
            inout("rdx") hi,
            in("rcx") new >> 32,
            options(nostack),
        );
    }
    let previous = (lo & 0xffff_ffff) | ((hi & 0xffff_ffff) << 32);
    Exchanged {
        swapped: previous == expected,
        previous,
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

    /// The fuzz target `emulation_assist` (seed `cmpxchg16b_into_page_table`) crashed the host
    /// in a release build: inlined into the assist, the pointer was allocated to RBX, and the
    /// swap of the new low half into RBX replaced it. The allocation depends on the code
    /// around the call, so no test forces it; the operands now sit in named registers, and
    /// this test runs both instructions with many values live around them.
    #[test]
    fn operands_survive_register_pressure() {
        let mut m = Aligned([0; 32]);
        let p = std::hint::black_box(m.0.as_mut_ptr());
        let live: [u64; 12] = std::array::from_fn(|i| std::hint::black_box(i as u64 * 0x0101));
        let mut sum = 0u64;
        for round in 0..4u64 {
            let old = u128::from(round);
            // SAFETY: `p` is 16-aligned and the buffer holds 32 bytes.
            let r = unsafe { cmpxchg16b(p, old, old + 1) };
            assert_eq!(
                r,
                Exchanged {
                    swapped: true,
                    previous: old
                }
            );
            // SAFETY: bytes 16..24 lie inside the buffer.
            let r8 = unsafe { cmpxchg8b(p.add(16), round, round + 1) };
            assert!(r8.swapped);
            sum = live.iter().fold(sum, |a, &v| a.wrapping_add(v ^ round));
        }
        assert_eq!(
            std::hint::black_box(sum),
            (0..4u64)
                .map(|r| live.iter().map(|&v| v ^ r).sum::<u64>())
                .sum::<u64>()
        );
        assert_eq!(m.0[..16], 4u128.to_le_bytes());
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
