//! `int3`, `ud2`, `stac`/`clac`, `fwait` (nothing pending, and CR0.TS) and `ldmxcsr`/`stmxcsr`.

use core::arch::asm;

use crate::cpu::{self, CR0_TS, Features};
use crate::idt::{self, BP, NM, RESUME, Trap, UD};
use crate::report::{Report, is_fault, trap_fields};

/// RFLAGS.AC.
const RFLAGS_AC: u64 = 1 << 18;

/// `int3` with no resume address armed: the handler returns to the RIP the `#BP` pushed, which
/// must be the byte after the `int3` (`rip=next`), and it must be taken exactly once.
pub fn check_int3(report: &mut Report<'_>) {
    let (insn, next): (u64, u64);
    idt::take();
    // SAFETY: `int3` raises `#BP`, whose gate returns to the pushed RIP with every register
    // preserved.
    unsafe {
        asm!(
            "lea {insn}, [rip + 2f]",
            "lea {next}, [rip + 3f]",
            "2: int3",
            "3:",
            insn = out(reg) insn,
            next = out(reg) next,
            options(nostack),
        );
    }
    let trap = idt::take();
    let console = report.start("int3");
    trap_fields(console, &trap, insn, next);
    report.end(trap.count == 1 && trap.vector == BP && trap.rip == next);
}

/// `ud2`: `#UD` at the instruction (the handler's fault path, with nothing assisted).
pub fn check_ud2(report: &mut Report<'_>) {
    let insn: u64;
    idt::take();
    // SAFETY: `ud2` faults; the handler resumes at `3:` with every register preserved.
    unsafe {
        asm!(
            "lea {tmp}, [rip + 3f]",
            "mov [rip + {resume}], {tmp}",
            "lea {insn}, [rip + 2f]",
            "2: ud2",
            "3:",
            resume = sym RESUME,
            tmp = out(reg) _,
            insn = out(reg) insn,
            options(nostack),
        );
    }
    let trap = idt::take();
    let console = report.start("ud2");
    trap_fields(console, &trap, insn, 0);
    report.end(is_fault(&trap, UD, 0, insn));
}

/// `stac` then `clac`: RFLAGS.AC set, then clear.
pub fn check_stac_clac(report: &mut Report<'_>, features: &Features) {
    if !features.smap {
        report.note("stac-clac skipped: no SMAP in CPUID");
        return;
    }
    let (after_stac, after_clac): (u64, u64);
    idt::take();
    // SAFETY: AC only matters to CPL-3 alignment checks and SMAP (off in CR4); it is clear again
    // at the end. A fault resumes at `3:`.
    unsafe {
        asm!(
            "lea {tmp}, [rip + 3f]",
            "mov [rip + {resume}], {tmp}",
            "stac",
            "pushfq",
            "pop {a}",
            "clac",
            "pushfq",
            "pop {b}",
            "3: mov qword ptr [rip + {resume}], 0",
            resume = sym RESUME,
            tmp = out(reg) _,
            a = out(reg) after_stac,
            b = out(reg) after_clac,
        );
    }
    let trap = idt::take();
    let set = after_stac & RFLAGS_AC != 0;
    let clear = after_clac & RFLAGS_AC == 0;
    report
        .start("stac-clac")
        .str(" traps=")
        .dec(trap.count)
        .str(" ac-after-stac=")
        .dec(u64::from(set))
        .str(" ac-after-clac=")
        .dec(u64::from(!clear));
    report.end(trap.count == 0 && set && clear && cpu::rflags() & RFLAGS_AC == 0);
}

/// Runs `fwait`, catching a fault; returns the trap record and the instruction's address.
pub fn fwait() -> (Trap, u64) {
    let insn: u64;
    idt::take();
    // SAFETY: `fwait` touches no memory; a fault resumes at `3:`.
    unsafe {
        asm!(
            "lea {tmp}, [rip + 3f]",
            "mov [rip + {resume}], {tmp}",
            "lea {insn}, [rip + 2f]",
            "2: fwait",
            "3: mov qword ptr [rip + {resume}], 0",
            resume = sym RESUME,
            tmp = out(reg) _,
            insn = out(reg) insn,
            options(nostack),
        );
    }
    (idt::take(), insn)
}

/// `fwait` with nothing pending (no exception), then with CR0.TS set (`#NM`, CR0.MP being set).
pub fn check_fwait(report: &mut Report<'_>) {
    let (trap, insn) = fwait();
    let console = report.start("fwait");
    trap_fields(console, &trap, insn, 0);
    report.end(trap.count == 0);

    let cr0 = cpu::cr0();
    // SAFETY: TS only makes x87/SSE/XSAVE instructions raise `#NM`; the program uses none until
    // CR0 is restored below.
    unsafe { cpu::set_cr0(cr0 | CR0_TS) };
    let (trap, insn) = fwait();
    // SAFETY: restores the CR0 read above.
    unsafe { cpu::set_cr0(cr0) };
    let console = report.start("fwait-ts");
    trap_fields(console, &trap, insn, 0);
    report.end(is_fault(&trap, NM, 0, insn));
}

/// `ldmxcsr` of `value` from memory then `stmxcsr` to memory, catching a fault of either;
/// returns what `stmxcsr` stored, the trap record and the `ldmxcsr`'s address.
fn ldmxcsr_stmxcsr(value: u32) -> (u32, Trap, u64) {
    let input = value;
    let mut output = 0u32;
    let insn: u64;
    idt::take();
    // A fault (of the `ldmxcsr`) resumes at `3:`, where `stmxcsr` stores the MXCSR it left.
    // SAFETY: both operands are locals of this function; MXCSR only controls SSE arithmetic,
    // which the program does not use.
    unsafe {
        asm!(
            "lea {tmp}, [rip + 3f]",
            "mov [rip + {resume}], {tmp}",
            "lea {insn}, [rip + 2f]",
            "2: ldmxcsr dword ptr [{input}]",
            "3: mov qword ptr [rip + {resume}], 0",
            "stmxcsr dword ptr [{output}]",
            resume = sym RESUME,
            tmp = out(reg) _,
            insn = out(reg) insn,
            input = in(reg) &input,
            output = in(reg) &mut output,
            options(nostack),
        );
    }
    (output, idt::take(), insn)
}

/// `ldmxcsr`/`stmxcsr` round trip (round-up mode, IE flag set), then back to the power-up value.
pub fn check_mxcsr(report: &mut Report<'_>) {
    const VALUE: u32 = 0x5f81;
    const DEFAULT: u32 = 0x1f80;
    let (stored, trap, insn) = ldmxcsr_stmxcsr(VALUE);
    let console = report.start("ldmxcsr-stmxcsr");
    trap_fields(console, &trap, insn, 0)
        .str(" mxcsr=")
        .hex(u64::from(stored));
    report.end(trap.count == 0 && stored == VALUE);

    let (stored, trap, _) = ldmxcsr_stmxcsr(DEFAULT);
    report
        .start("ldmxcsr-default")
        .str(" traps=")
        .dec(trap.count)
        .str(" mxcsr=")
        .hex(u64::from(stored));
    report.end(trap.count == 0 && stored == DEFAULT);
}
