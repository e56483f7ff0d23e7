//! What CPUID reports, and the control registers, XCR0 and MSRs the checks set.

use core::arch::asm;
use core::arch::x86_64::{__cpuid, __cpuid_count};

/// CR0.MP: `wait`/`fwait` honour CR0.TS.
const CR0_MP: u64 = 1 << 1;
/// CR0.TS: task switched (x87/SSE use raises `#NM`).
pub const CR0_TS: u64 = 1 << 3;
/// CR0.NE: x87 errors are reported as `#MF`, not through FERR#.
const CR0_NE: u64 = 1 << 5;
/// CR0.WP: supervisor writes honour read-only pages.
const CR0_WP: u64 = 1 << 16;
/// CR4.OSXSAVE: XSAVE and XCR0 are enabled.
const CR4_OSXSAVE: u64 = 1 << 18;
/// IA32_XSS: the supervisor state components `xsaves`/`xrstors` handle.
const IA32_XSS: u32 = 0xda0;
/// XCR0: x87, SSE, AVX.
pub const XCR0_X87: u64 = 1 << 0;
/// XCR0.SSE.
pub const XCR0_SSE: u64 = 1 << 1;
/// XCR0.AVX.
pub const XCR0_AVX: u64 = 1 << 2;

/// The features the checks depend on, as CPUID reports them.
#[derive(Clone, Copy)]
pub struct Features {
    /// CPUID.1:ECX.POPCNT.
    pub popcnt: bool,
    /// CPUID.1:ECX.XSAVE.
    pub xsave: bool,
    /// CPUID.1:ECX.AVX.
    pub avx: bool,
    /// CPUID.80000001H:ECX.LZCNT (ABM).
    pub lzcnt: bool,
    /// CPUID.(7,0):EBX.BMI1 (`tzcnt`).
    pub bmi1: bool,
    /// CPUID.(7,0):EBX.SMAP (`stac`, `clac`).
    pub smap: bool,
    /// CPUID.(0DH,1):EAX.XSAVEC.
    pub xsavec: bool,
    /// CPUID.(0DH,1):EAX.XSAVES (and `xrstors`, IA32_XSS).
    pub xsaves: bool,
    /// CPUID.(0DH,0):EDX:EAX, the XCR0 bits the processor supports.
    pub xcr0_supported: u64,
    /// CPUID.(0DH,2):EBX, the offset of the AVX state in the standard format.
    pub avx_offset: u32,
}

impl Features {
    /// Reads them with CPUID.
    pub fn read() -> Self {
        let max_basic = __cpuid(0).eax;
        let leaf1 = __cpuid(1);
        let leaf7 = if max_basic >= 7 {
            __cpuid_count(7, 0).ebx
        } else {
            0
        };
        let xsave = leaf1.ecx & 1 << 26 != 0 && max_basic >= 0xd;
        let (xcr0_supported, xsave_flags, avx_offset) = if xsave {
            let main = __cpuid_count(0xd, 0);
            (
                u64::from(main.edx) << 32 | u64::from(main.eax),
                __cpuid_count(0xd, 1).eax,
                __cpuid_count(0xd, 2).ebx,
            )
        } else {
            (0, 0, 0)
        };
        let max_extended = __cpuid(0x8000_0000).eax;
        let ext1 = if max_extended >= 0x8000_0001 {
            __cpuid(0x8000_0001).ecx
        } else {
            0
        };
        Self {
            popcnt: leaf1.ecx & 1 << 23 != 0,
            xsave,
            avx: leaf1.ecx & 1 << 28 != 0,
            lzcnt: ext1 & 1 << 5 != 0,
            bmi1: leaf7 & 1 << 3 != 0,
            smap: leaf7 & 1 << 20 != 0,
            xsavec: xsave_flags & 1 << 1 != 0,
            xsaves: xsave_flags & 1 << 3 != 0,
            xcr0_supported,
            avx_offset,
        }
    }
}

/// CR0.
pub fn cr0() -> u64 {
    let cr0: u64;
    // SAFETY: reading CR0 has no side effects.
    unsafe { asm!("mov {}, cr0", out(reg) cr0, options(nomem, nostack, preserves_flags)) };
    cr0
}

/// Writes CR0.
///
/// # Safety
/// The new value must keep protected mode and paging on and must not make memory the program
/// writes read-only.
pub unsafe fn set_cr0(cr0: u64) {
    // SAFETY: the caller keeps the mode and the program's mappings as they are.
    unsafe { asm!("mov cr0, {}", in(reg) cr0, options(nostack, preserves_flags)) };
}

/// Sets CR0.NE (x87 errors as `#MF`), CR0.MP (so CR0.TS applies to `fwait`) and CR0.WP (the
/// read-only page of the `cmpxchg16b` check).
pub fn enable_fpu_errors_and_write_protect() {
    // NE and MP only choose how x87 errors and CR0.TS are reported. The one read-only page,
    // made later, is written through nothing but the checks' faulting instructions.
    // SAFETY: WP only makes supervisor writes honour R/W; guest-rt's tables map all writable.
    unsafe { set_cr0(cr0() | CR0_NE | CR0_MP | CR0_WP) };
}

/// Sets CR4.OSXSAVE and XCR0 to `xcr0`.
///
/// The caller must have checked that CPUID reports XSAVE and every bit of `xcr0`, and that
/// `xcr0` is a valid combination (x87 set; AVX only with SSE).
pub fn enable_xsave(xcr0: u64) {
    let cr4: u64;
    // SAFETY: reading CR4 has no side effects.
    unsafe { asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack, preserves_flags)) };
    // SAFETY: OSXSAVE only enables `xgetbv`, `xsetbv` and the XSAVE family; the caller checked
    // that CPUID reports XSAVE, so the bit is not reserved.
    unsafe {
        asm!("mov cr4, {}", in(reg) cr4 | CR4_OSXSAVE, options(nomem, nostack, preserves_flags))
    };
    // SAFETY: the caller checked that `xcr0` is supported and valid; the program does not use
    // the state components this enables or disables (the target has no SSE or x87 code).
    unsafe {
        asm!("xsetbv", in("ecx") 0, in("eax") xcr0 as u32, in("edx") (xcr0 >> 32) as u32,
            options(nomem, nostack, preserves_flags))
    };
}

/// Writes 0 to IA32_XSS: no supervisor state components.
///
/// The caller must have checked that CPUID reports XSAVES (which makes the MSR exist).
pub fn clear_xss() {
    // SAFETY: the MSR exists (checked by the caller); 0 enables no supervisor state, so
    // `xsaves`/`xrstors` handle the user components alone.
    unsafe {
        asm!("wrmsr", in("ecx") IA32_XSS, in("eax") 0, in("edx") 0,
            options(nomem, nostack, preserves_flags))
    };
}

/// RFLAGS.
pub fn rflags() -> u64 {
    let rflags: u64;
    // SAFETY: `pushfq; pop` reads RFLAGS through the stack, leaving it balanced.
    unsafe { asm!("pushfq", "pop {}", out(reg) rflags, options(nomem, preserves_flags)) };
    rflags
}

/// The page-directory entry that maps `[addr, addr + 2 MiB)` in guest-rt's tables (first GiB
/// only: PML4[0] → PDPT[0] → PD).
pub fn pde_for(addr: u64) -> *mut u64 {
    const FRAME: u64 = 0x000f_ffff_ffff_f000;
    let cr3: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack, preserves_flags)) };
    let pml4 = (cr3 & FRAME) as usize as *const u64;
    // SAFETY: guest-rt's tables identity-map the first 4 GiB, tables included, and PML4[0] and
    // PDPT[0] are present (they map this program).
    let pdpt = (unsafe { pml4.read_volatile() } & FRAME) as usize as *const u64;
    // SAFETY: as above.
    let pd = (unsafe { pdpt.read_volatile() } & FRAME) as usize as *mut u64;
    pd.wrapping_add((addr >> 21) as usize & 511)
}

/// Invalidates the TLB entries for `addr`.
pub fn invlpg(addr: u64) {
    // SAFETY: `invlpg` only drops cached translations.
    unsafe { asm!("invlpg [{}]", in(reg) addr, options(nostack, preserves_flags)) };
}
