//! `cmpxchg16b` and `cmpxchg8b`: both outcomes, a misaligned 16-byte operand (`#GP(0)`), a
//! read-only page (`#PF` with a write error code even when the comparison fails: the processor
//! writes the old value back) and an unmapped address (`#PF`, not present).

use core::arch::asm;
use core::ptr::{read_volatile, write_volatile};

use guest_rt::Console;

use crate::cpu;
use crate::idt::{self, GP, PF, RESUME, Trap};
use crate::report::{Report, is_fault, trap_fields};

/// Page-fault error code bits: present, write.
const PF_PRESENT: u64 = 1 << 0;
const PF_WRITE: u64 = 1 << 1;
/// A 2 MiB page of RAM above the image (the linker script keeps every guest below 2 MiB), made
/// read-only for one check.
const READ_ONLY_PAGE: u64 = 0x20_0000;
/// The first address guest-rt's tables leave unmapped.
const UNMAPPED: u64 = 4 << 30;
/// PDE bit: writable.
const PDE_WRITABLE: u64 = 1 << 1;

/// Old and new operand values (low quadword first).
const OLD: [u64; 2] = [0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210];
const NEW: [u64; 2] = [0x1111_2222_3333_4444, 0x5555_6666_7777_8888];
const OTHER: [u64; 2] = [0x0123_4567_89ab_cdee, 0xfedc_ba98_7654_3210];

/// 16-byte aligned operands (the second one's odd quadword is the misaligned operand).
#[repr(C, align(16))]
struct Operands([u64; 4]);

static mut OPERANDS: Operands = Operands([0; 4]);

/// What one compare-exchange left behind.
struct Outcome {
    zf: bool,
    rax: u64,
    rdx: u64,
    /// The instruction's address and the next one's.
    insn: u64,
    next: u64,
    trap: Trap,
}

/// `lock cmpxchg16b [p]` with RDX:RAX = `expected`, RCX:RBX = `new` (high, low).
///
/// # Safety
/// `[p, p + 16)` is either valid for reads and writes and referenced by nothing else, or the
/// instruction faults (misaligned, read-only, unmapped) before it writes anything.
unsafe fn cmpxchg16b(p: u64, expected: [u64; 2], new: [u64; 2]) -> Outcome {
    let (rax, rdx, insn, next, zf): (u64, u64, u64, u64, u8);
    idt::take();
    // RBX is LLVM's: the new low quadword is swapped into it around the instruction. A fault
    // resumes at `3:` (armed through `RESUME`), which disarms and swaps RBX back either way.
    // SAFETY: the caller guarantees the operand; the handler resumes at `3:` on a fault, with
    // every register as the fault left it.
    unsafe {
        asm!(
            "lea {tmp}, [rip + 3f]",
            "mov [rip + {resume}], {tmp}",
            "lea {insn}, [rip + 2f]",
            "lea {next}, [rip + 3f]",
            "xchg {lo}, rbx",
            "2: lock cmpxchg16b xmmword ptr [{p}]",
            "3: sete {zf}",
            "mov qword ptr [rip + {resume}], 0",
            "xchg {lo}, rbx",
            resume = sym RESUME,
            p = in(reg) p,
            lo = inout(reg) new[0] => _,
            tmp = out(reg) _,
            insn = out(reg) insn,
            next = out(reg) next,
            zf = out(reg_byte) zf,
            inout("rax") expected[0] => rax,
            inout("rdx") expected[1] => rdx,
            in("rcx") new[1],
            options(nostack),
        );
    }
    Outcome {
        zf: zf != 0,
        rax,
        rdx,
        insn,
        next,
        trap: idt::take(),
    }
}

/// `lock cmpxchg8b [p]` with full 64-bit RAX/RDX (EDX:EAX compared; the upper halves show
/// whether they were written) and ECX:EBX = `new`.
///
/// # Safety
/// `[p, p + 8)` is valid for reads and writes and referenced by nothing else.
unsafe fn cmpxchg8b(p: u64, rax: u64, rdx: u64, new: u64) -> Outcome {
    let (rax_out, rdx_out, insn, next, zf): (u64, u64, u64, u64, u8);
    idt::take();
    // SAFETY: the caller guarantees the operand; RBX is swapped in and back as above, and a
    // fault (none is expected) resumes at `3:`.
    unsafe {
        asm!(
            "lea {tmp}, [rip + 3f]",
            "mov [rip + {resume}], {tmp}",
            "lea {insn}, [rip + 2f]",
            "lea {next}, [rip + 3f]",
            "xchg {lo}, rbx",
            "2: lock cmpxchg8b qword ptr [{p}]",
            "3: sete {zf}",
            "mov qword ptr [rip + {resume}], 0",
            "xchg {lo}, rbx",
            resume = sym RESUME,
            p = in(reg) p,
            lo = inout(reg) new & 0xffff_ffff => _,
            tmp = out(reg) _,
            insn = out(reg) insn,
            next = out(reg) next,
            zf = out(reg_byte) zf,
            inout("rax") rax => rax_out,
            inout("rdx") rdx => rdx_out,
            in("rcx") new >> 32,
            options(nostack),
        );
    }
    Outcome {
        zf: zf != 0,
        rax: rax_out,
        rdx: rdx_out,
        insn,
        next,
        trap: idt::take(),
    }
}

/// Reads the two quadwords at `p`.
///
/// # Safety
/// `[p, p + 16)` must be mapped and readable.
unsafe fn read_pair(p: u64) -> [u64; 2] {
    let p = p as usize as *const u64;
    // SAFETY: the caller guarantees both quadwords are readable.
    unsafe { [read_volatile(p), read_volatile(p.add(1))] }
}

/// Writes the two quadwords at `p`.
///
/// # Safety
/// `[p, p + 16)` must be writable and referenced by nothing else.
unsafe fn write_pair(p: u64, value: [u64; 2]) {
    let p = p as usize as *mut u64;
    // SAFETY: the caller guarantees both quadwords are writable and unaliased.
    unsafe {
        write_volatile(p, value[0]);
        write_volatile(p.add(1), value[1]);
    }
}

/// Runs the `cmpxchg16b` checks.
pub fn check_cmpxchg16b(report: &mut Report<'_>) {
    let base = (&raw mut OPERANDS) as u64;

    // Equal: ZF=1, RDX:RAX kept, memory = RCX:RBX.
    // SAFETY: `OPERANDS` is this module's, 16-byte aligned, and referenced by nothing else.
    let (out, mem) = unsafe {
        write_pair(base, OLD);
        let out = cmpxchg16b(base, OLD, NEW);
        (out, read_pair(base))
    };
    let ok = out.trap.count == 0 && out.zf && [out.rax, out.rdx] == OLD && mem == NEW;
    line16(report, "cmpxchg16b-equal", &out, mem);
    report.end(ok);

    // Not equal: ZF=0, RDX:RAX = memory, memory unchanged (written back).
    // SAFETY: as above.
    let (out, mem) = unsafe {
        write_pair(base, OLD);
        let out = cmpxchg16b(base, OTHER, NEW);
        (out, read_pair(base))
    };
    let ok = out.trap.count == 0 && !out.zf && [out.rax, out.rdx] == OLD && mem == OLD;
    line16(report, "cmpxchg16b-unequal", &out, mem);
    report.end(ok);

    // Misaligned (8 mod 16): #GP(0) whatever the comparison, nothing written.
    let odd = base + 8;
    // SAFETY: `[odd, odd + 16)` lies in `OPERANDS`; the instruction faults before any write.
    let (out, mem) = unsafe {
        write_pair(odd, OLD);
        let out = cmpxchg16b(odd, OLD, NEW);
        (out, read_pair(odd))
    };
    let ok = is_fault(&out.trap, GP, 0, out.insn) && [out.rax, out.rdx] == OLD && mem == OLD;
    fault16(report, "cmpxchg16b-misaligned", &out, mem);
    report.end(ok);

    // Read-only page, comparison failing: still a write access, so #PF(P|W) at the operand.
    let pde = cpu::pde_for(READ_ONLY_PAGE);
    // The page lies above the image (below 2 MiB), in RAM, identity-mapped and used by nothing
    // else; its PDE is guest-rt's, which this program alone changes.
    // SAFETY: the page is RAM only this code uses; the TLB entry is dropped after each change.
    let (out, mem) = unsafe {
        write_pair(READ_ONLY_PAGE, OLD);
        let writable = pde.read_volatile();
        pde.write_volatile(writable & !PDE_WRITABLE);
        cpu::invlpg(READ_ONLY_PAGE);
        let out = cmpxchg16b(READ_ONLY_PAGE, OTHER, NEW);
        pde.write_volatile(writable);
        cpu::invlpg(READ_ONLY_PAGE);
        (out, read_pair(READ_ONLY_PAGE))
    };
    let ok = is_fault(&out.trap, PF, PF_PRESENT | PF_WRITE, out.insn)
        && out.trap.cr2 == READ_ONLY_PAGE
        && [out.rax, out.rdx] == OTHER
        && mem == OLD;
    fault16(report, "cmpxchg16b-readonly", &out, mem)
        .str(" cr2=")
        .hex(out.trap.cr2);
    report.end(ok);

    // Unmapped: #PF(W), not present.
    // SAFETY: nothing is mapped at `UNMAPPED`: the instruction faults before any access.
    let out = unsafe { cmpxchg16b(UNMAPPED, OLD, NEW) };
    let ok = is_fault(&out.trap, PF, PF_WRITE, out.insn)
        && out.trap.cr2 == UNMAPPED
        && [out.rax, out.rdx] == OLD;
    let console = report.start("cmpxchg16b-unmapped");
    trap_fields(console, &out.trap, out.insn, out.next)
        .str(" cr2=")
        .hex(out.trap.cr2)
        .str(" rdx:rax=")
        .hex(out.rdx)
        .str(":")
        .hex(out.rax);
    report.end(ok);
}

fn line16(report: &mut Report<'_>, check: &str, out: &Outcome, mem: [u64; 2]) {
    report
        .start(check)
        .str(" traps=")
        .dec(out.trap.count)
        .str(" zf=")
        .dec(u64::from(out.zf))
        .str(" rdx:rax=")
        .hex(out.rdx)
        .str(":")
        .hex(out.rax)
        .str(" mem=")
        .hex(mem[1])
        .str(":")
        .hex(mem[0]);
}

fn fault16<'r>(
    report: &'r mut Report<'_>,
    check: &str,
    out: &Outcome,
    mem: [u64; 2],
) -> &'r mut Console {
    let console = report.start(check);
    trap_fields(console, &out.trap, out.insn, out.next)
        .str(" rdx:rax=")
        .hex(out.rdx)
        .str(":")
        .hex(out.rax)
        .str(" mem=")
        .hex(mem[1])
        .str(":")
        .hex(mem[0])
}

/// Runs the `cmpxchg8b` checks. RAX and RDX carry junk in their upper halves: the comparison
/// ignores it, a success keeps it, a failure loads EDX:EAX and zeroes it.
pub fn check_cmpxchg8b(report: &mut Report<'_>) {
    const MEM: u64 = 0x89ab_cdef_0123_4567;
    const JUNK: u64 = 0xdead_beef_0000_0000;
    let p = (&raw mut OPERANDS) as u64;
    for (check, expected) in [("cmpxchg8b-equal", MEM), ("cmpxchg8b-unequal", MEM ^ 1)] {
        let rax = JUNK | (expected & 0xffff_ffff);
        let rdx = JUNK | expected >> 32;
        // SAFETY: `OPERANDS` is this module's and referenced by nothing else.
        let (out, mem) = unsafe {
            write_volatile(p as usize as *mut u64, MEM);
            let out = cmpxchg8b(p, rax, rdx, NEW[0]);
            (out, read_volatile(p as usize as *const u64))
        };
        let ok = out.trap.count == 0
            && if expected == MEM {
                out.zf && out.rax == rax && out.rdx == rdx && mem == NEW[0]
            } else {
                !out.zf && out.rax == MEM & 0xffff_ffff && out.rdx == MEM >> 32 && mem == MEM
            };
        report
            .start(check)
            .str(" traps=")
            .dec(out.trap.count)
            .str(" zf=")
            .dec(u64::from(out.zf))
            .str(" rdx=")
            .hex(out.rdx)
            .str(" rax=")
            .hex(out.rax)
            .str(" mem=")
            .hex(mem);
        report.end(ok);
    }
}
