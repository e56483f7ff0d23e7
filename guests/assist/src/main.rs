//! `assist`: runs, in ring 0, the instructions a hardware-assisted backend may fail to emulate
//! (the ones a VMM's emulation assist completes) and checks each result against the
//! architecture, printing one line per check in a form that does not depend on the VMM.
//!
//! Set-up: an IDT whose handlers record every exception (vector, error code, pushed RIP, CR2)
//! and resume where the check said ([`idt`]); CR0.NE, CR0.MP and CR0.WP; CR4.OSXSAVE and XCR0
//! (x87, SSE, AVX as CPUID allows; XCR0 is never read back with `xgetbv`, which is no instruction
//! the assist completes: the saved XSTATE_BV shows it). Then, in order:
//!
//! | check | instructions | what must happen |
//! |---|---|---|
//! | `int3` | `int3` | one `#BP`, pushed RIP = the byte after it |
//! | `ud2` | `ud2` | `#UD` at the instruction (the handler's fault path) |
//! | `cmpxchg16b-*` | `lock cmpxchg16b` | equal: ZF=1, memory = RCX:RBX; unequal: ZF=0, RDX:RAX = memory, memory kept; misaligned: `#GP(0)`; read-only page (unequal): `#PF` P|W; unmapped: `#PF` W; CR2 = the operand |
//! | `cmpxchg8b-*` | `lock cmpxchg8b` | both outcomes; a failure zero-extends EDX:EAX into RDX:RAX, a success keeps them |
//! | `xrstor-*`, `xsavec-xrstor`, `xsaves-xrstors` | the XSAVE family | known x87/SSE/AVX state survives save, clobber (init), restore; compacted forms when CPUID has them; `#GP(0)` for a misaligned area and a reserved header byte |
//! | `popcnt-*`, `lzcnt-*`, `tzcnt-*` | the counts | 16/32/64-bit results, register and memory sources, defined flags |
//! | `stac-clac` | `stac`, `clac` | RFLAGS.AC set, then clear |
//! | `fwait`, `fwait-ts`, `fwait-mf` | `fwait` | nothing pending: no exception; CR0.TS: `#NM`; an unmasked pending x87 exception: `#MF` |
//! | `ldmxcsr-*` | `ldmxcsr`, `stmxcsr` | round trip of a non-default value, then the default |
//!
//! Each line reads `vmkit assist: <check> <fields> ok` (or `MISMATCH`); a group of checks whose
//! feature CPUID lacks prints `vmkit assist: <group> skipped: <why>` instead (groups: `xsave`,
//! `xsavec`, `xsaves`, `popcnt`, `lzcnt`, `tzcnt`, `stac-clac`, `fwait-mf`). Nothing printed
//! names an address, so the report is the same under every VMM that gives the same CPUID bits.
//!
//! | status | meaning |
//! |---|---|
//! | 0 | every check matched the architecture |
//! | 1 | a check did not (its line ends in `MISMATCH`) |
//! | 2 | the start-info pointer or magic is wrong |
//! | 3 | panic (the message is printed first) |
//! | 4 | an exception no check expected (printed with its vector, error code, RIP and CR2) |

#![no_std]
#![no_main]

mod atomic;
mod bits;
mod control;
mod cpu;
mod idt;
mod report;
mod xsave;

use guest_rt::{Console, EXIT_OK, StartInfo};

use report::Report;

guest_rt::entry!("assist", main);

/// Exit status: a check did not match the architecture.
const EXIT_MISMATCH: u32 = 1;
/// Exit status: an exception no check expected.
pub const EXIT_UNEXPECTED_TRAP: u32 = 4;

fn main(console: &mut Console, _info: &StartInfo) -> u32 {
    idt::install();
    cpu::enable_fpu_errors_and_write_protect();
    let features = cpu::Features::read();
    let mut report = Report::new(console);

    control::check_int3(&mut report);
    control::check_ud2(&mut report);
    atomic::check_cmpxchg16b(&mut report);
    atomic::check_cmpxchg8b(&mut report);
    xsave::check(&mut report, &features);
    bits::check(&mut report, &features);
    control::check_stac_clac(&mut report, &features);
    control::check_fwait(&mut report);
    xsave::check_fwait_pending(&mut report, &features);
    control::check_mxcsr(&mut report);

    let mismatches = report.mismatches();
    report
        .start("done")
        .str(" mismatches=")
        .dec(u64::from(mismatches));
    report.end(mismatches == 0);
    if mismatches == 0 {
        EXIT_OK
    } else {
        EXIT_MISMATCH
    }
}
