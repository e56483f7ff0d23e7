//! `popcnt`, `lzcnt` and `tzcnt`: 16-, 32- and 64-bit destinations, register and memory
//! sources, zero sources, and the flags each defines.
//!
//! The destination starts as [`JUNK`]: a 64-bit result replaces it, a 32-bit one zero-extends,
//! a 16-bit one keeps its upper 48 bits. The flags start all set or all clear (CF, PF, AF, ZF,
//! SF, OF) so that both the ones an instruction sets and the ones it clears show.

use core::arch::asm;

use crate::cpu::Features;
use crate::idt::{self, RESUME, Trap};
use crate::report::Report;

/// The destination's value before the instruction.
const JUNK: u64 = 0xdead_beef_cafe_f00d;
/// The status flags: CF, PF, AF, ZF, SF, OF.
const STATUS: u64 = 0x8d5;
const CF: u64 = 1 << 0;
const ZF: u64 = 1 << 6;
/// RFLAGS bit 1 is always set.
const RFLAGS_FIXED: u64 = 1 << 1;

/// What an instruction left: destination, status flags, the trap record.
struct Outcome {
    dest: u64,
    flags: u64,
    trap: Trap,
}

/// Runs `$template` (operands `{d}` destination, `{s}` source register or address) with the
/// status flags preset to `$flags`.
macro_rules! bitop {
    ($template:literal, $source:expr, $flags:expr) => {{
        let (dest, flags): (u64, u64);
        idt::take();
        // `popfq` loads only the status flags and the fixed bit (IF, TF, AC and IOPL stay clear,
        // as they are). A fault resumes at `3:`.
        // SAFETY: the instruction writes only its destination register and the flags; a memory
        // source is a local of the caller, valid for the operand size.
        unsafe {
            asm!(
                "lea {tmp}, [rip + 3f]",
                "mov [rip + {resume}], {tmp}",
                "push {f}",
                "popfq",
                concat!("2: ", $template),
                "3: pushfq",
                "pop {f}",
                "mov qword ptr [rip + {resume}], 0",
                resume = sym RESUME,
                tmp = out(reg) _,
                d = inout(reg) JUNK => dest,
                s = in(reg) $source,
                f = inout(reg) $flags | RFLAGS_FIXED => flags,
            );
        }
        Outcome {
            dest,
            flags: flags & STATUS,
            trap: idt::take(),
        }
    }};
}

/// One line: the check, the source, what the destination and the defined flags became.
fn line(report: &mut Report<'_>, check: &str, source: u64, out: &Outcome, defined: u64, ok: bool) {
    report
        .start(check)
        .str(" traps=")
        .dec(out.trap.count)
        .str(" src=")
        .hex(source)
        .str(" dest=")
        .hex(out.dest)
        .str(" flags=")
        .hex(out.flags & defined);
    report.end(out.trap.count == 0 && ok);
}

/// The result of a `bits`-wide count in a [`JUNK`] destination.
fn merged(count: u64, bits: u32) -> u64 {
    match bits {
        16 => JUNK & !0xffff | count,
        _ => count,
    }
}

/// Runs the checks CPUID allows.
pub fn check(report: &mut Report<'_>, features: &Features) {
    if features.popcnt {
        // popcnt: ZF from the source, the other status flags cleared.
        let src = 0xf0f0_0000_0000_0001u64;
        let out = bitop!("popcnt {d}, {s}", src, STATUS);
        let ok = out.dest == 9 && out.flags == 0;
        line(report, "popcnt-r64", src, &out, STATUS, ok);

        let zero = 0u32;
        let out = bitop!("popcnt {d:e}, dword ptr [{s}]", &zero, STATUS);
        let ok = out.dest == 0 && out.flags == ZF;
        line(report, "popcnt-m32-zero", 0, &out, STATUS, ok);

        let src = 0x8001u64;
        let out = bitop!("popcnt {d:x}, {s:x}", src, 0);
        let ok = out.dest == merged(2, 16) && out.flags == 0;
        line(report, "popcnt-r16", src, &out, STATUS, ok);
    } else {
        report.note("popcnt skipped: no POPCNT in CPUID");
    }

    // lzcnt and tzcnt define CF (source zero) and ZF (count zero) alone.
    if features.lzcnt {
        let src = 0x1000u64;
        let out = bitop!("lzcnt {d:e}, {s:e}", src, STATUS);
        let ok = out.dest == 19 && out.flags & (CF | ZF) == 0;
        line(report, "lzcnt-r32", src, &out, CF | ZF, ok);

        let out = bitop!("lzcnt {d}, {s}", 0u64, 0);
        let ok = out.dest == 64 && out.flags & (CF | ZF) == CF;
        line(report, "lzcnt-r64-zero", 0, &out, CF | ZF, ok);

        let src = 0x8000u16;
        let out = bitop!("lzcnt {d:x}, word ptr [{s}]", &src, 0);
        let ok = out.dest == merged(0, 16) && out.flags & (CF | ZF) == ZF;
        line(report, "lzcnt-m16", u64::from(src), &out, CF | ZF, ok);
    } else {
        report.note("lzcnt skipped: no LZCNT in CPUID");
    }

    if features.bmi1 {
        let src = 0x100u64 << 32;
        let out = bitop!("tzcnt {d}, {s}", src, STATUS);
        let ok = out.dest == 40 && out.flags & (CF | ZF) == 0;
        line(report, "tzcnt-r64", src, &out, CF | ZF, ok);

        let zero = 0u32;
        let out = bitop!("tzcnt {d:e}, dword ptr [{s}]", &zero, 0);
        let ok = out.dest == 32 && out.flags & (CF | ZF) == CF;
        line(report, "tzcnt-m32-zero", 0, &out, CF | ZF, ok);

        let src = 0x0001u64;
        let out = bitop!("tzcnt {d:x}, {s:x}", src, STATUS);
        let ok = out.dest == merged(0, 16) && out.flags & (CF | ZF) == ZF;
        line(report, "tzcnt-r16", src, &out, CF | ZF, ok);
    } else {
        report.note("tzcnt skipped: no BMI1 in CPUID");
    }
}
