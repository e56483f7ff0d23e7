//! The XSAVE family: known x87, SSE and AVX state loaded with `xrstor`, saved with `xsave`,
//! clobbered (restored from the init state), restored and saved again; then the compacted
//! `xsavec` and supervisor `xsaves`/`xrstors` forms when CPUID reports them, and the `#GP(0)`
//! of a misaligned area and of a header with reserved bits set.
//!
//! The guest's own code uses neither x87 nor SSE registers (the target is soft-float), so the
//! registers hold exactly what these instructions put there. Values are compared through the
//! fields each state component defines (FCW, FSW, the abridged FTW, ST0, MXCSR, XMM0-15 and the
//! upper halves of YMM0-15), never through bytes the architecture leaves to the implementation
//! (FOP, FIP, FDP, XSTATE_BV of a saved area).

use core::arch::asm;
use core::ptr::{read_volatile, write_volatile};

use guest_rt::Console;

use crate::cpu::{self, Features, XCR0_AVX, XCR0_SSE, XCR0_X87};
use crate::idt::{self, GP, MF, RESUME, Trap};
use crate::report::{Report, is_fault, trap_fields};

/// Bytes per area: the legacy region, the header and the AVX state (832 at the standard offset
/// of 576), with room to spare.
const AREA_LEN: usize = 1024;
/// Offsets in the legacy region and the header.
const FCW: usize = 0;
const FSW: usize = 2;
const FTW: usize = 4;
const MXCSR: usize = 24;
const ST0: usize = 32;
const XMM0: usize = 160;
const XSTATE_BV: usize = 512;
const XCOMP_BV: usize = 520;
/// The first reserved byte of the header: it must be zero for `xrstor`.
const HEADER_RESERVED: usize = 528;
/// The first extended component's offset in the compacted format.
const COMPACT_EXTENDED: usize = 576;
/// XCOMP_BV bit 63: the area is compacted.
const COMPACTED: u64 = 1 << 63;
/// MXCSR at power-up: every exception masked.
const MXCSR_DEFAULT: u32 = 0x1f80;
/// FCW of the init state.
const FCW_INIT: u16 = 0x037f;

/// An XSAVE area (64-byte aligned as the instructions require).
#[repr(C, align(64))]
struct Area([u8; AREA_LEN]);

/// The known state, an area for saves, one for compacted saves and the init state.
static mut SOURCE: Area = Area([0; AREA_LEN]);
static mut SAVED: Area = Area([0; AREA_LEN]);
static mut SCRATCH: Area = Area([0; AREA_LEN]);
static mut COMPACT: Area = Area([0; AREA_LEN]);
static mut INIT: Area = Area([0; AREA_LEN]);

/// The state the checks compare, read from an area.
#[derive(Clone, Copy, PartialEq, Eq)]
struct State {
    fcw: u16,
    fsw: u16,
    ftw: u8,
    st0: [u8; 10],
    mxcsr: u32,
    xmm: [[u64; 2]; 16],
    ymmh: [[u64; 2]; 16],
}

/// How to read an area: where the AVX state is, if it is enabled.
#[derive(Clone, Copy)]
struct Layout {
    avx: Option<usize>,
}

/// One of the areas, by address.
#[derive(Clone, Copy)]
struct AreaRef(*mut Area);

impl AreaRef {
    fn addr(self) -> u64 {
        self.0 as u64
    }

    fn read<const N: usize>(self, offset: usize) -> [u8; N] {
        let mut bytes = [0; N];
        for (i, byte) in bytes.iter_mut().enumerate() {
            // SAFETY: every `AreaRef` points to one of this module's statics, used by this
            // single-threaded program alone; callers stay inside `AREA_LEN`.
            *byte = unsafe { read_volatile((&raw const (*self.0).0[offset + i]).cast::<u8>()) };
        }
        bytes
    }

    fn write(self, offset: usize, bytes: &[u8]) {
        for (i, &byte) in bytes.iter().enumerate() {
            // SAFETY: as for `read`.
            unsafe { write_volatile(&raw mut (*self.0).0[offset + i], byte) };
        }
    }

    fn u64(self, offset: usize) -> u64 {
        u64::from_le_bytes(self.read(offset))
    }

    /// Fills the area with `byte`, except the header, which is zeroed: `xsave` writes only
    /// XSTATE_BV of it, and `xrstor` requires the rest to be zero.
    fn fill(self, byte: u8) {
        self.write(0, &[byte; AREA_LEN]);
        self.write(XSTATE_BV, &[0; 64]);
    }

    fn state(self, layout: Layout) -> State {
        let mut xmm = [[0; 2]; 16];
        let mut ymmh = [[0; 2]; 16];
        for (i, reg) in xmm.iter_mut().enumerate() {
            *reg = [self.u64(XMM0 + 16 * i), self.u64(XMM0 + 16 * i + 8)];
        }
        if let Some(avx) = layout.avx {
            for (i, reg) in ymmh.iter_mut().enumerate() {
                *reg = [self.u64(avx + 16 * i), self.u64(avx + 16 * i + 8)];
            }
        }
        State {
            fcw: u16::from_le_bytes(self.read(FCW)),
            fsw: u16::from_le_bytes(self.read(FSW)),
            ftw: self.read::<1>(FTW)[0],
            st0: self.read(ST0),
            mxcsr: u32::from_le_bytes(self.read(MXCSR)),
            xmm,
            ymmh,
        }
    }

    /// Writes `state` and a standard-format header with `xstate_bv`.
    fn set_state(self, layout: Layout, state: &State, xstate_bv: u64) {
        self.fill(0);
        self.write(FCW, &state.fcw.to_le_bytes());
        self.write(FSW, &state.fsw.to_le_bytes());
        self.write(FTW, &[state.ftw]);
        self.write(ST0, &state.st0);
        self.write(MXCSR, &state.mxcsr.to_le_bytes());
        for (i, reg) in state.xmm.iter().enumerate() {
            self.write(XMM0 + 16 * i, &reg[0].to_le_bytes());
            self.write(XMM0 + 16 * i + 8, &reg[1].to_le_bytes());
        }
        if let Some(avx) = layout.avx {
            for (i, reg) in state.ymmh.iter().enumerate() {
                self.write(avx + 16 * i, &reg[0].to_le_bytes());
                self.write(avx + 16 * i + 8, &reg[1].to_le_bytes());
            }
        }
        self.write(XSTATE_BV, &xstate_bv.to_le_bytes());
    }
}

/// The known state: a rounding-mode FCW, ST0 = pi (tag: valid), MXCSR rounding up, and a
/// different pattern in every XMM register and YMM upper half.
fn known_state(layout: Layout) -> State {
    let pattern = |i: u64| {
        let word = 0x0101_0101_0101_0101u64.wrapping_mul(i + 1) ^ 0x8040_2010_0804_0201;
        [word, !word.rotate_left(i as u32)]
    };
    let mut xmm = [[0; 2]; 16];
    let mut ymmh = [[0; 2]; 16];
    for i in 0..16 {
        xmm[i] = pattern(i as u64);
        if layout.avx.is_some() {
            ymmh[i] = pattern(16 + i as u64);
        }
    }
    let mut st0 = [0; 10];
    st0[..8].copy_from_slice(&0xc90f_daa2_2168_c235u64.to_le_bytes());
    st0[8..].copy_from_slice(&0x4000u16.to_le_bytes());
    State {
        fcw: 0x0b7f,
        fsw: 0,
        ftw: 0x01,
        st0,
        mxcsr: 0x5f80,
        xmm,
        ymmh,
    }
}

/// The init state as `xsave` stores it after an `xrstor` of [`INIT`] (whose MXCSR is loaded
/// from memory: the init state has no MXCSR of its own).
fn init_state() -> State {
    State {
        fcw: FCW_INIT,
        fsw: 0,
        ftw: 0,
        st0: [0; 10],
        mxcsr: MXCSR_DEFAULT,
        xmm: [[0; 2]; 16],
        ymmh: [[0; 2]; 16],
    }
}

/// Runs one XSAVE-family instruction on `area` with EDX:EAX = all ones (RFBM = every enabled
/// component), catching a fault; returns the trap record and the instruction's address.
macro_rules! xop {
    ($mnemonic:literal, $area:expr) => {{
        let insn: u64;
        idt::take();
        // `$area` is one of this module's 64-byte aligned statics of `AREA_LEN` bytes, or for
        // the fault checks an address inside one that makes the instruction fault before any
        // access. A fault resumes at `3:`.
        // SAFETY: the instruction touches only the enabled components' bytes (fewer than
        // `AREA_LEN`) of that static, and registers the program does not use.
        unsafe {
            asm!(
                "lea {tmp}, [rip + 3f]",
                "mov [rip + {resume}], {tmp}",
                "lea {insn}, [rip + 2f]",
                concat!("2: ", $mnemonic, " [{area}]"),
                "3: mov qword ptr [rip + {resume}], 0",
                resume = sym RESUME,
                area = in(reg) $area,
                tmp = out(reg) _,
                insn = out(reg) insn,
                in("eax") u32::MAX,
                in("edx") u32::MAX,
                options(nostack),
            );
        }
        (idt::take(), insn)
    }};
}

fn xsave(area: AreaRef) -> Trap {
    xop!("xsave64", area.addr()).0
}

fn xrstor(area: AreaRef) -> Trap {
    xop!("xrstor64", area.addr()).0
}

/// Fields of a state line: a few registers as values, then whether all of it matches.
fn state_fields<'r>(
    report: &'r mut Report<'_>,
    check: &str,
    state: &State,
    traps: u64,
) -> &'r mut Console {
    report
        .start(check)
        .str(" traps=")
        .dec(traps)
        .str(" fcw=")
        .hex(u64::from(state.fcw))
        .str(" ftw=")
        .hex(u64::from(state.ftw))
        .str(" st0=")
        .hex(u64::from(u16::from_le_bytes([state.st0[8], state.st0[9]])))
        .str(":")
        .hex(u64::from_le_bytes([
            state.st0[0],
            state.st0[1],
            state.st0[2],
            state.st0[3],
            state.st0[4],
            state.st0[5],
            state.st0[6],
            state.st0[7],
        ]))
        .str(" mxcsr=")
        .hex(u64::from(state.mxcsr))
        .str(" xmm15=")
        .hex(state.xmm[15][1])
        .str(":")
        .hex(state.xmm[15][0])
        .str(" ymmh15=")
        .hex(state.ymmh[15][1])
        .str(":")
        .hex(state.ymmh[15][0])
}

/// Sets CR4.OSXSAVE and XCR0 (x87, SSE, and AVX when CPUID has it) and runs the checks.
pub fn check(report: &mut Report<'_>, features: &Features) {
    if !features.xsave || features.xcr0_supported & (XCR0_X87 | XCR0_SSE) != XCR0_X87 | XCR0_SSE {
        report.note("xsave skipped: no XSAVE with x87 and SSE state in CPUID");
        return;
    }
    let avx_offset = features.avx_offset as usize;
    let avx = features.avx
        && features.xcr0_supported & XCR0_AVX != 0
        && avx_offset >= COMPACT_EXTENDED
        && avx_offset + 256 <= AREA_LEN;
    let xcr0 = XCR0_X87 | XCR0_SSE | if avx { XCR0_AVX } else { 0 };
    cpu::enable_xsave(xcr0);
    let standard = Layout {
        avx: avx.then_some(avx_offset),
    };
    let compacted = Layout {
        avx: avx.then_some(COMPACT_EXTENDED),
    };
    let source = AreaRef(&raw mut SOURCE);
    let saved = AreaRef(&raw mut SAVED);
    let scratch = AreaRef(&raw mut SCRATCH);
    let compact = AreaRef(&raw mut COMPACT);
    let init = AreaRef(&raw mut INIT);
    let known = known_state(standard);
    source.set_state(standard, &known, xcr0);
    init.set_state(standard, &init_state(), 0);

    // Load the known state, save it.
    let loaded = xrstor(source);
    saved.fill(0xa5);
    let stored = xsave(saved);
    let state = saved.state(standard);
    // Every component differs from its init state, so XINUSE, and XSTATE_BV with it, is XCR0.
    let xstate_bv = saved.u64(XSTATE_BV);
    state_fields(report, "xrstor-xsave", &state, loaded.count + stored.count)
        .str(" xcr0=")
        .hex(xcr0)
        .str(" xstate_bv=")
        .hex(xstate_bv);
    report.end(loaded.count + stored.count == 0 && state == known && xstate_bv == xcr0);

    // Clobber with the init state, save that.
    let cleared = xrstor(init);
    scratch.fill(0xa5);
    let stored = xsave(scratch);
    let state = scratch.state(standard);
    state_fields(report, "xrstor-init", &state, cleared.count + stored.count);
    report.end(cleared.count + stored.count == 0 && state == init_state());

    // Restore what was saved, save it again.
    let restored = xrstor(saved);
    scratch.fill(0xa5);
    let stored = xsave(scratch);
    let state = scratch.state(standard);
    state_fields(
        report,
        "xrstor-restore",
        &state,
        restored.count + stored.count,
    );
    report.end(restored.count + stored.count == 0 && state == known);

    if features.xsavec {
        compact.fill(0xa5);
        let stored = xop!("xsavec64", compact.addr()).0;
        let xcomp_bv = compact.u64(XCOMP_BV);
        let in_area = compact.state(compacted);
        let cleared = xrstor(init);
        let restored = xrstor(compact);
        scratch.fill(0xa5);
        let saved_again = xsave(scratch);
        let state = scratch.state(standard);
        let traps = stored.count + cleared.count + restored.count + saved_again.count;
        state_fields(report, "xsavec-xrstor", &state, traps)
            .str(" xcomp_bv=")
            .hex(xcomp_bv);
        report
            .end(traps == 0 && xcomp_bv == COMPACTED | xcr0 && in_area == known && state == known);
    } else {
        report.note("xsavec skipped: no XSAVEC in CPUID");
    }

    if features.xsaves {
        cpu::clear_xss();
        compact.fill(0xa5);
        let stored = xop!("xsaves64", compact.addr()).0;
        let xcomp_bv = compact.u64(XCOMP_BV);
        let in_area = compact.state(compacted);
        let cleared = xrstor(init);
        let restored = xop!("xrstors64", compact.addr()).0;
        scratch.fill(0xa5);
        let saved_again = xsave(scratch);
        let state = scratch.state(standard);
        let traps = stored.count + cleared.count + restored.count + saved_again.count;
        state_fields(report, "xsaves-xrstors", &state, traps)
            .str(" xcomp_bv=")
            .hex(xcomp_bv);
        report
            .end(traps == 0 && xcomp_bv == COMPACTED | xcr0 && in_area == known && state == known);
    } else {
        report.note("xsaves skipped: no XSAVES in CPUID");
    }

    // Faults: an area that is not 64-byte aligned, a header with a reserved byte set.
    let (trap, insn) = xop!("xrstor64", saved.addr() + 16);
    let console = report.start("xrstor-misaligned");
    trap_fields(console, &trap, insn, 0);
    report.end(is_fault(&trap, GP, 0, insn));

    scratch.set_state(standard, &known, xcr0);
    scratch.write(HEADER_RESERVED, &[1]);
    let (trap, insn) = xop!("xrstor64", scratch.addr());
    let after = xsave(saved);
    let state = saved.state(standard);
    let console = report.start("xrstor-reserved-header");
    trap_fields(console, &trap, insn, 0);
    report.end(is_fault(&trap, GP, 0, insn) && after.count == 0 && state == known);

    // Leave the init state (MXCSR as at power-up) for the checks that follow.
    xrstor(init);
}

/// `fwait` with an unmasked x87 exception pending: FCW with the zero-divide mask clear and FSW
/// with ZE and ES set, loaded with `xrstor` (x87 component alone), must raise `#MF` at the
/// `fwait`. The init state is restored afterwards. Needs [`check`] to have enabled XSAVE.
pub fn check_fwait_pending(report: &mut Report<'_>, features: &Features) {
    const FCW_ZERO_DIVIDE_UNMASKED: u16 = 0x037b;
    const FSW_ZE_ES: u16 = 0x0084;
    if !features.xsave {
        report.note("fwait-mf skipped: no XSAVE to load a pending x87 exception");
        return;
    }
    let scratch = AreaRef(&raw mut SCRATCH);
    let init = AreaRef(&raw mut INIT);
    let pending = State {
        fcw: FCW_ZERO_DIVIDE_UNMASKED,
        fsw: FSW_ZE_ES,
        ..init_state()
    };
    scratch.set_state(Layout { avx: None }, &pending, XCR0_X87);
    let loaded = xrstor(scratch);
    let (trap, insn) = crate::control::fwait();
    xrstor(init);
    let console = report.start("fwait-mf");
    trap_fields(console, &trap, insn, 0);
    report.end(loaded.count == 0 && is_fault(&trap, MF, 0, insn));
}
