//! The report: one line per check, `vmkit assist: <check> <fields> ok|MISMATCH`, and the count
//! of mismatches that decides the exit status.

use guest_rt::Console;

use crate::idt::Trap;

/// Lines and mismatches.
pub struct Report<'c> {
    console: &'c mut Console,
    mismatches: u32,
}

impl<'c> Report<'c> {
    /// A report on `console`.
    pub fn new(console: &'c mut Console) -> Self {
        Self {
            console,
            mismatches: 0,
        }
    }

    /// Starts the line of `check`; the caller adds fields (each starting with a space) and ends
    /// it with [`end`](Self::end).
    pub fn start(&mut self, check: &str) -> &mut Console {
        self.console.line().str(check)
    }

    /// Ends the line: ` ok` when the values match the architecture, ` MISMATCH` otherwise.
    pub fn end(&mut self, ok: bool) {
        if ok {
            self.console.str(" ok\n");
        } else {
            self.mismatches += 1;
            self.console.str(" MISMATCH\n");
        }
    }

    /// A line without a check: `<group> skipped: <why>`, for the checks (`<group>-...`) whose
    /// feature CPUID does not report.
    pub fn note(&mut self, text: &str) {
        self.console.line().str(text).str("\n");
    }

    /// Mismatches so far.
    pub fn mismatches(&self) -> u32 {
        self.mismatches
    }
}

/// Fields that describe a `trap` taken by the instruction at `insn`: how many exceptions, the
/// vector and error code of the last, and where its pushed RIP points (`insn`, `next` for the
/// instruction's end `next`, or the address); just the count when there was none.
pub fn trap_fields<'c>(
    console: &'c mut Console,
    trap: &Trap,
    insn: u64,
    next: u64,
) -> &'c mut Console {
    console.str(" traps=").dec(trap.count);
    if trap.count == 0 {
        return console;
    }
    console
        .str(" vector=")
        .hex(trap.vector)
        .str(" error=")
        .hex(trap.error)
        .str(" rip=");
    if trap.rip == insn {
        console.str("insn")
    } else if trap.rip == next {
        console.str("next")
    } else {
        console.hex(trap.rip)
    }
}

/// Whether `trap` is exactly one `vector` fault with `error` whose pushed RIP is `insn`.
pub fn is_fault(trap: &Trap, vector: u64, error: u64, insn: u64) -> bool {
    trap.count == 1 && trap.vector == vector && trap.error == error && trap.rip == insn
}
