//! The interrupt descriptor table: one stub per exception vector (0..=31) that records the
//! exception in [`TRAP`] and either returns or resumes at the address a check armed.
//!
//! A check that expects a fault stores the address to resume at in [`RESUME`] right before the
//! instruction (see the `asm!` blocks of the checks); the handler then replaces the pushed RIP
//! with it and disarms it. `#BP` is a trap: with nothing armed it returns to the byte after the
//! `int3`. Any other exception with nothing armed is unexpected: the handler resumes in
//! [`unexpected`], which prints it and ends the VM with [`crate::EXIT_UNEXPECTED_TRAP`].

use core::arch::{asm, global_asm};
use core::ptr::{addr_of, read_volatile, write_volatile};

/// The last exception taken, and how many since the last [`take`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Trap {
    /// Exceptions taken.
    pub count: u64,
    /// Vector of the last one.
    pub vector: u64,
    /// Its error code (0 for vectors without one).
    pub error: u64,
    /// The RIP it pushed.
    pub rip: u64,
    /// CR2 when it was taken.
    pub cr2: u64,
}

/// Written by the handler (offsets 0, 8, 16, 24, 32: see `assist_isr_common`).
static mut TRAP: Trap = Trap {
    count: 0,
    vector: 0,
    error: 0,
    rip: 0,
    cr2: 0,
};

/// Where the next exception resumes; 0 when nothing is armed.
pub static mut RESUME: u64 = 0;

/// Vectors with a gate.
const VECTORS: usize = 32;
/// `#BP`.
pub const BP: u64 = 3;
/// `#UD`.
pub const UD: u64 = 6;
/// `#NM`.
pub const NM: u64 = 7;
/// `#GP`.
pub const GP: u64 = 13;
/// `#PF`.
pub const PF: u64 = 14;
/// `#MF`.
pub const MF: u64 = 16;

global_asm!(
    // One stub per vector: a zero in place of the missing error code, then the vector. The
    // vectors that push an error code are 8, 10..=14, 17, 21, 29 and 30.
    ".macro assist_isr vector, has_error",
    ".balign 16",
    "assist_isr_\\vector:",
    ".if \\has_error == 0",
    "    push 0",
    ".endif",
    "    push \\vector",
    "    jmp assist_isr_common",
    ".endm",
    ".section .text.assist_isr, \"ax\"",
    ".irp v, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31",
    "assist_isr \\v, 0",
    ".endr",
    ".irp v, 8,10,11,12,13,14,17,21,29,30",
    "assist_isr \\v, 1",
    ".endr",
    // Stack: vector, error code, RIP, CS, RFLAGS, RSP, SS (then the saved RAX on top).
    "assist_isr_common:",
    "    push rax",
    "    mov rax, [rsp + 8]",
    "    mov [rip + {trap} + 8], rax",
    "    mov rax, [rsp + 16]",
    "    mov [rip + {trap} + 16], rax",
    "    mov rax, [rsp + 24]",
    "    mov [rip + {trap} + 24], rax",
    "    mov rax, cr2",
    "    mov [rip + {trap} + 32], rax",
    "    inc qword ptr [rip + {trap}]",
    "    mov rax, [rip + {resume}]",
    "    test rax, rax",
    "    jnz 2f",
    "    cmp qword ptr [rsp + 8], 3",
    "    je 3f",
    "    lea rax, [rip + assist_unexpected]",
    "2:  mov [rsp + 24], rax",
    "    mov qword ptr [rip + {resume}], 0",
    "3:  pop rax",
    "    add rsp, 16",
    "    iretq",
    // Entered with the interrupted stack, of any alignment.
    "assist_unexpected:",
    "    and rsp, -16",
    "    call {unexpected}",
    "    ud2",
    // The stubs' addresses, by vector.
    ".section .rodata.assist_isr, \"a\"",
    ".balign 8",
    "assist_isr_table:",
    ".irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    "    .quad assist_isr_\\v",
    ".endr",
    ".text",
    trap = sym TRAP,
    resume = sym RESUME,
    unexpected = sym unexpected,
);

unsafe extern "C" {
    /// The stubs' addresses, by vector (defined above).
    static assist_isr_table: [u64; VECTORS];
}

/// A 64-bit interrupt gate.
#[repr(C, align(16))]
#[derive(Clone, Copy)]
struct Gate([u64; 2]);

/// The IDT (only read by the processor once loaded).
static mut IDT: [Gate; VECTORS] = [Gate([0; 2]); VECTORS];

/// The code segment guest-rt's GDT gives 64-bit code.
const KERNEL_CS: u64 = 0x08;
/// Present, DPL 0, 64-bit interrupt gate (type 0xE).
const GATE_PRESENT_INTERRUPT: u64 = 0x8e;

/// Fills the IDT with the stubs and loads it.
pub fn install() {
    let idt = &raw mut IDT;
    // SAFETY: `assist_isr_table` is an array of `VECTORS` addresses in `.rodata`, written by
    // the assembler and never changed.
    let handlers = unsafe { read_volatile(addr_of!(assist_isr_table)) };
    for (vector, handler) in handlers.into_iter().enumerate() {
        let low = (handler & 0xffff)
            | KERNEL_CS << 16
            | GATE_PRESENT_INTERRUPT << 40
            | (handler >> 16 & 0xffff) << 48;
        let high = handler >> 32;
        // SAFETY: `idt` points to the static IDT, `vector` is in bounds, and no IDT is loaded
        // yet that the processor could be reading.
        unsafe { write_volatile(&raw mut (*idt)[vector], Gate([low, high])) };
    }
    let pointer = IdtPointer {
        limit: (size_of::<[Gate; VECTORS]>() - 1) as u16,
        base: idt as u64,
    };
    // Every gate points to a stub of `assist_isr_common`, which preserves every register it
    // touches and returns with `iretq`, or resumes where a check armed it or at `unexpected`.
    // SAFETY: the IDT is complete (above) and lives as long as the program.
    unsafe { asm!("lidt [{}]", in(reg) &pointer, options(readonly, nostack, preserves_flags)) };
}

/// The operand of `lidt`.
#[repr(C, packed)]
struct IdtPointer {
    limit: u16,
    base: u64,
}

/// Returns the exceptions recorded since the last call and clears the record.
pub fn take() -> Trap {
    let trap = &raw mut TRAP;
    // Volatile: the handler's writes are invisible to the compiler.
    // SAFETY: the handler writes `TRAP` only while it runs, never concurrently with this
    // single-threaded program (it interrupts only the instruction a check runs).
    unsafe {
        let taken = read_volatile(trap);
        write_volatile(trap, Trap { count: 0, ..taken });
        write_volatile(&raw mut RESUME, 0);
        taken
    }
}

/// Resumed in by the handler for an exception no check expected: prints it and ends the VM.
extern "C" fn unexpected() -> ! {
    let trap = take();
    guest_rt::Console::new("assist")
        .line()
        .str("unexpected exception vector=")
        .hex(trap.vector)
        .str(" error=")
        .hex(trap.error)
        .str(" rip=")
        .hex(trap.rip)
        .str(" cr2=")
        .hex(trap.cr2)
        .str("\n");
    guest_rt::exit(crate::EXIT_UNEXPECTED_TRAP)
}
