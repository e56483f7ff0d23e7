//! The processor features and control registers the guest's paging depends on.

use core::arch::asm;
use core::arch::x86_64::__cpuid;

/// IA32_EFER.
const IA32_EFER: u32 = 0xc000_0080;
/// EFER.NXE: the execute-disable bit is honoured (and not reserved).
const EFER_NXE: u64 = 1 << 11;
/// CR0.WP: supervisor writes honour read-only pages.
const CR0_WP: u64 = 1 << 16;
/// CPUID.80000001H:EDX.NX.
const EXT1_EDX_NX: u32 = 1 << 20;
/// CPUID.80000001H:EDX.Page1GB.
const EXT1_EDX_PDPE1GB: u32 = 1 << 26;
/// MAXPHYADDR when CPUID leaf 80000008H is missing (the architectural minimum for PAE).
const DEFAULT_MAX_PHYS_BITS: u8 = 36;

/// What CPUID says about paging.
#[derive(Clone, Copy)]
pub struct Features {
    /// The execute-disable bit exists.
    pub nx: bool,
    /// 1 GiB pages exist.
    pub gbpages: bool,
    /// MAXPHYADDR.
    pub max_phys_bits: u8,
}

impl Features {
    /// Reads them with CPUID.
    pub fn read() -> Self {
        let max_extended = __cpuid(0x8000_0000).eax;
        let ext1 = if max_extended >= 0x8000_0001 {
            __cpuid(0x8000_0001).edx
        } else {
            0
        };
        let max_phys_bits = if max_extended >= 0x8000_0008 {
            (__cpuid(0x8000_0008).eax & 0xff) as u8
        } else {
            DEFAULT_MAX_PHYS_BITS
        };
        Self {
            nx: ext1 & EXT1_EDX_NX != 0,
            gbpages: ext1 & EXT1_EDX_PDPE1GB != 0,
            max_phys_bits,
        }
    }
}

/// Sets EFER.NXE (the entry code sets only LME) and CR0.WP, as a 64-bit kernel runs.
///
/// The caller must have checked [`Features::nx`]: without it setting NXE faults.
pub fn enable_nx_and_write_protect() {
    let (low, high): (u32, u32);
    // SAFETY: reading EFER has no side effects.
    unsafe {
        asm!("rdmsr", in("ecx") IA32_EFER, out("eax") low, out("edx") high,
            options(nomem, nostack, preserves_flags));
    }
    let efer = (u64::from(high) << 32 | u64::from(low)) | EFER_NXE;
    // SAFETY: NXE only makes bit 63 of paging entries meaningful; the live tables (guest-rt's)
    // never set it, so every translation stays as it was.
    unsafe {
        asm!("wrmsr", in("ecx") IA32_EFER, in("eax") efer as u32, in("edx") (efer >> 32) as u32,
            options(nomem, nostack, preserves_flags));
    }
    let cr0: u64;
    // SAFETY: reading CR0 has no side effects.
    unsafe { asm!("mov {}, cr0", out(reg) cr0, options(nomem, nostack, preserves_flags)) };
    // SAFETY: WP only makes supervisor writes honour R/W; guest-rt's tables map everything
    // writable, and the program writes nothing read-only under the tables it builds.
    unsafe {
        asm!("mov cr0, {}", in(reg) cr0 | CR0_WP, options(nostack, preserves_flags));
    }
}

/// CR3.
pub fn cr3() -> u64 {
    let cr3: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack, preserves_flags)) };
    cr3
}

/// Switches to the tables rooted at `root` (which also flushes the TLB).
///
/// # Safety
/// The tables at `root` must be complete and must map every address the program touches from
/// now on (its code, stack, statics and boot data) to the physical address it has now, with
/// the rights the program needs.
pub unsafe fn load_cr3(root: u64) {
    // No `nomem`: the table writes must be complete before the switch, and the compiler must
    // not move memory accesses across it.
    // SAFETY: the caller guarantees that the tables keep the program's own mappings.
    unsafe { asm!("mov cr3, {}", in(reg) root, options(nostack, preserves_flags)) };
}
