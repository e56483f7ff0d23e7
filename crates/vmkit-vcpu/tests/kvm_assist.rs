//! The emulation assist under KVM: a ring-0 long-mode guest runs `lock cmpxchg16b` (both
//! outcomes), `lock cmpxchg8b` (both outcomes) and an `int3` whose `#BP` handler records the
//! frame's RIP and returns, and reports what it saw through port I/O. Where the host's KVM cannot
//! emulate one of those instructions (a nested host emulating ring-0 code), the assist in
//! `run_until_stop_with_assist` completes it; where the host runs it itself, the results must be
//! the same. Either way the guest must see the architecture's results and no `#UD`.
//!
//! These tests need `/dev/kvm`; without it they fail, naming the reason, unless
//! `VMKIT_SKIP_KVM_TESTS=1` skips them explicitly.

#![allow(clippy::unwrap_used)]

mod common;

use std::cell::RefCell;
use std::sync::atomic::AtomicBool;

use common::{CODE, DONE_PORT, Machine};
use vmkit_exits::state::Exception;
use vmkit_exits::{
    Assisted, EmulationAssist, ExitAction, SoftExceptionRip, StopReason, VcpuState, VmExit,
};
use vmkit_vcpu::GuestAddress;
use vmkit_vcpu::x86::SELECTOR_CODE;
use vmkit_vcpu::{LongModeEntry, LoopExit, Vcpu, Vm, run_until_stop_with_assist};

/// The port the guest reports 64-bit values on, as two 32-bit `out`s (low half first).
const VALUE_PORT: u8 = 0xf0;
/// The port the `#BP` handler reports the frame's RIP on.
const BP_PORT: u8 = 0xf3;
/// The port every other exception handler reports its vector on before ending the test.
const VECTOR_PORT: u8 = 0xf7;
/// Exit status of a guest whose `#BP` handler ran more often than the guest executes `int3`.
const STATUS_BP_LOOP: u32 = 0xbb;
/// Exit status of a guest that took an exception other than `#BP`.
const STATUS_EXCEPTION: u32 = 0xee;

/// The IDT: 32 gates of 16 bytes.
const IDT: u64 = 0x2_0000;
/// The operands: the 16-byte one at `DATA`, the 8-byte one at `DATA + 0x40`.
const DATA: u64 = 0x2_1000;
/// How often the `#BP` handler ran.
const BP_COUNT: u64 = 0x2_1100;
/// The `#BP` handler.
const BP_HANDLER: u64 = CODE + 0x800;
/// The other handlers, 16 bytes apart.
const STUBS: u64 = CODE + 0xa00;

const CX16_OLD: [u64; 2] = [0x1111_2222_3333_4444, 0x5555_6666_7777_8888];
const CX16_NEW: [u64; 2] = [0xaaaa_bbbb_cccc_dddd, 0xeeee_ffff_0000_1111];
const CX16_UNUSED: [u64; 2] = [0x0bad_0bad_0bad_0bad, 0x0bad_0bad_0bad_0bad];
const CX8_OLD: u64 = 0x0123_4567_89ab_cdef;
const CX8_NEW: u64 = 0xfedc_ba98_7654_3210;
const CX8_UNUSED: u64 = 0x0bad_f00d_0bad_f00d;

const RFLAGS_ZF: u64 = 1 << 6;

/// A little x86-64 assembler: just the instructions the guest needs.
#[derive(Default)]
struct Asm(Vec<u8>);

/// Register numbers as ModRM and `B8+r` encode them.
const RAX: u8 = 0;
const RCX: u8 = 1;
const RDX: u8 = 2;
const RBX: u8 = 3;
const RSI: u8 = 6;
const RDI: u8 = 7;
const R8: u8 = 8;
const R9: u8 = 9;
const R10: u8 = 10;
const R11: u8 = 11;

impl Asm {
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }

    fn here(&self) -> u64 {
        self.0.len() as u64
    }

    /// `mov reg, imm64`.
    fn mov_imm(&mut self, reg: u8, imm: u64) -> &mut Self {
        let rex = if reg >= 8 { 0x49 } else { 0x48 };
        self.bytes(&[rex, 0xb8 + (reg & 7)]);
        self.bytes(&imm.to_le_bytes())
    }

    /// `mov dst, src` between 64-bit registers.
    fn mov(&mut self, dst: u8, src: u8) -> &mut Self {
        let rex = 0x48 | (u8::from(src >= 8) << 2) | u8::from(dst >= 8);
        self.bytes(&[rex, 0x89, 0xc0 | ((src & 7) << 3) | (dst & 7)])
    }

    /// `mov rax, [base + disp8]` for a base of RSI or RDI.
    fn load_rax(&mut self, base: u8, disp: u8) -> &mut Self {
        self.bytes(&[0x48, 0x8b, 0x40 | base, disp])
    }

    /// `pushfq; pop r8`: the flags into R8.
    fn flags_to_r8(&mut self) -> &mut Self {
        self.bytes(&[0x9c, 0x41, 0x58])
    }

    /// `out port, eax; shr rax, 32; out port, eax`: RAX as two 32-bit writes.
    fn report_rax(&mut self, port: u8) -> &mut Self {
        self.bytes(&[0xe7, port, 0x48, 0xc1, 0xe8, 0x20, 0xe7, port])
    }

    /// Reports `reg` on [`VALUE_PORT`] (through RAX).
    fn report(&mut self, reg: u8) -> &mut Self {
        if reg != RAX {
            self.mov(RAX, reg);
        }
        self.report_rax(VALUE_PORT)
    }

    /// `mov al, status; out DONE_PORT, al`.
    fn done(&mut self, status: u8) -> &mut Self {
        self.bytes(&[0xb0, status, 0xe6, DONE_PORT as u8])
    }
}

/// The main code; returns it with the offset of its `int3`.
fn main_code() -> (Vec<u8>, u64) {
    let mut a = Asm::default();
    a.mov_imm(RSI, DATA).mov_imm(RDI, DATA + 0x40);
    // lock cmpxchg16b [rsi], equal: memory gets RCX:RBX, ZF=1.
    a.mov_imm(RAX, CX16_OLD[0]).mov_imm(RDX, CX16_OLD[1]);
    a.mov_imm(RBX, CX16_NEW[0]).mov_imm(RCX, CX16_NEW[1]);
    a.bytes(&[0xf0, 0x48, 0x0f, 0xc7, 0x0e]).flags_to_r8();
    a.report(R8)
        .load_rax(RSI, 0)
        .report(RAX)
        .load_rax(RSI, 8)
        .report(RAX);
    // lock cmpxchg16b [rsi], not equal (memory holds the new value): RDX:RAX gets memory, ZF=0.
    a.mov_imm(RAX, CX16_OLD[0]).mov_imm(RDX, CX16_OLD[1]);
    a.mov_imm(RBX, CX16_UNUSED[0]).mov_imm(RCX, CX16_UNUSED[1]);
    a.bytes(&[0xf0, 0x48, 0x0f, 0xc7, 0x0e]).flags_to_r8();
    a.mov(R9, RAX).mov(R10, RDX);
    a.report(R8).report(R9).report(R10);
    a.load_rax(RSI, 0).report(RAX).load_rax(RSI, 8).report(RAX);
    // lock cmpxchg8b [rdi], equal: memory gets ECX:EBX, ZF=1.
    a.mov_imm(RAX, CX8_OLD & 0xffff_ffff)
        .mov_imm(RDX, CX8_OLD >> 32);
    a.mov_imm(RBX, CX8_NEW & 0xffff_ffff)
        .mov_imm(RCX, CX8_NEW >> 32);
    a.bytes(&[0xf0, 0x0f, 0xc7, 0x0f]).flags_to_r8();
    a.report(R8).load_rax(RDI, 0).report(RAX);
    // lock cmpxchg8b [rdi], not equal: EDX:EAX gets memory (zero-extended), ZF=0.
    a.mov_imm(RAX, CX8_OLD & 0xffff_ffff)
        .mov_imm(RDX, CX8_OLD >> 32);
    a.mov_imm(RBX, CX8_UNUSED & 0xffff_ffff)
        .mov_imm(RCX, CX8_UNUSED >> 32);
    a.bytes(&[0xf0, 0x0f, 0xc7, 0x0f]).flags_to_r8();
    a.mov(R9, RAX).mov(R10, RDX);
    a.report(R8)
        .report(R9)
        .report(R10)
        .load_rax(RDI, 0)
        .report(RAX);
    // int3; the #BP handler returns to the byte after it: a nop, then a marker.
    let int3 = a.here();
    a.bytes(&[0xcc, 0x90]);
    a.mov_imm(RAX, 0x600d).report(RAX).done(0);
    (a.0, int3)
}

/// The `#BP` handler: reports the frame's RIP on [`BP_PORT`], counts its runs (ending the test
/// with [`STATUS_BP_LOOP`] on the third, as a frame RIP at the `int3` would loop) and returns
/// with `iretq`.
fn bp_handler() -> Vec<u8> {
    let mut a = Asm::default();
    a.bytes(&[0x48, 0x8b, 0x04, 0x24]); // mov rax, [rsp]
    a.report_rax(BP_PORT);
    a.mov_imm(R11, BP_COUNT);
    a.bytes(&[0x49, 0xff, 0x03]); // inc qword [r11]
    a.bytes(&[0x49, 0x83, 0x3b, 0x03]); // cmp qword [r11], 3
    a.bytes(&[0x73, 0x02]); // jae +2
    a.bytes(&[0x48, 0xcf]); // iretq
    a.done(STATUS_BP_LOOP as u8);
    a.0
}

/// The handler of vector `v` (other than `#BP`): reports `v` on [`VECTOR_PORT`] and ends the
/// test with [`STATUS_EXCEPTION`]; 8 bytes.
fn stub(v: u8) -> [u8; 8] {
    [
        0xb0,
        v,
        0xe6,
        VECTOR_PORT,
        0xb0,
        STATUS_EXCEPTION as u8,
        0xe6,
        DONE_PORT as u8,
    ]
}

/// A 64-bit interrupt gate to `handler` in the boot code segment.
fn gate(handler: u64) -> [u8; 16] {
    let mut g = [0u8; 16];
    g[0..2].copy_from_slice(&(handler as u16).to_le_bytes());
    g[2..4].copy_from_slice(&SELECTOR_CODE.to_le_bytes());
    g[5] = 0x8e; // present, DPL 0, 64-bit interrupt gate
    g[6..8].copy_from_slice(&((handler >> 16) as u16).to_le_bytes());
    g[8..12].copy_from_slice(&((handler >> 32) as u32).to_le_bytes());
    g
}

/// What the guest reported, and what the assist did.
#[derive(Debug)]
struct Outcome {
    exit: LoopExit,
    values: Vec<u64>,
    bp_rips: Vec<u64>,
    vectors: Vec<u8>,
    int3_at: u64,
    memory16: [u64; 2],
    memory8: u64,
    completed: Vec<(Assisted, u64)>,
    pending_after: Option<Exception>,
    report: Option<String>,
}

impl Outcome {
    fn completed(&self, kind: Assisted) -> u64 {
        self.completed
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(0, |(_, n)| *n)
    }
}

/// Runs the guest on a fresh machine with the assist using `strategy`; `None` when KVM tests
/// are skipped.
fn run_guest(strategy: SoftExceptionRip) -> Option<Outcome> {
    let m = Machine::new()?;
    // Identity-map the first 16 MiB with 2 MiB pages.
    m.write(0x9000, &(0xa000u64 | 3).to_le_bytes());
    m.write(0xa000, &(0xb000u64 | 3).to_le_bytes());
    for i in 0..8u64 {
        m.write(0xb000 + i * 8, &((i << 21) | 0x83).to_le_bytes());
    }
    let (code, int3) = main_code();
    m.write(CODE, &code);
    m.write(BP_HANDLER, &bp_handler());
    for v in 0..32u8 {
        let handler = if v == 3 {
            BP_HANDLER
        } else {
            let at = STUBS + u64::from(v) * 16;
            m.write(at, &stub(v));
            at
        };
        m.write(IDT + u64::from(v) * 16, &gate(handler));
    }
    m.write(DATA, &CX16_OLD[0].to_le_bytes());
    m.write(DATA + 8, &CX16_OLD[1].to_le_bytes());
    m.write(DATA + 0x40, &CX8_OLD.to_le_bytes());
    m.write(BP_COUNT, &0u64.to_le_bytes());

    let mut vcpu = m.vm.create_vcpu(0, 1).unwrap();
    vcpu.setup_long_mode(&LongModeEntry {
        entry: GuestAddress(CODE),
        page_table: GuestAddress(0x9000),
        gdt: GuestAddress(0x500),
        boot_params: GuestAddress(0x7000),
        stack_pointer: GuestAddress(0x8ff0),
    })
    .unwrap();
    let mut sregs = vcpu.special_registers().unwrap();
    sregs.idt.base = IDT;
    sregs.idt.limit = 32 * 16 - 1;
    vcpu.set_special_registers(&sregs).unwrap();

    let words: RefCell<Vec<u32>> = RefCell::default();
    let bp_words: RefCell<Vec<u32>> = RefCell::default();
    let vectors: RefCell<Vec<u8>> = RefCell::default();
    let handler = |exit: VmExit<'_>| match exit {
        VmExit::IoOut { port, data } if port == DONE_PORT => {
            ExitAction::Stop(StopReason::GuestExit(u32::from(data[0])))
        }
        VmExit::IoOut { port, data } if data.len() == 4 => {
            let word = u32::from_le_bytes(data.try_into().unwrap());
            match u8::try_from(port) {
                Ok(VALUE_PORT) => words.borrow_mut().push(word),
                Ok(BP_PORT) => bp_words.borrow_mut().push(word),
                _ => return ExitAction::Stop(StopReason::Unhandled(u32::from(port))),
            }
            ExitAction::Resume
        }
        VmExit::IoOut { port, data } if port == u16::from(VECTOR_PORT) => {
            vectors.borrow_mut().push(data[0]);
            ExitAction::Resume
        }
        VmExit::InternalError { suberror, insn } => {
            ExitAction::Stop(StopReason::InternalError { suberror, insn })
        }
        other => panic!("unexpected exit {other:?}"),
    };
    let assist = EmulationAssist::default().with_soft_exception_rip(strategy);
    let stop = AtomicBool::new(false);
    let exit = run_until_stop_with_assist(&mut vcpu, &handler, &assist, &m.memory, &stop).unwrap();

    let pairs = |w: &[u32]| -> Vec<u64> {
        w.chunks_exact(2)
            .map(|p| u64::from(p[0]) | (u64::from(p[1]) << 32))
            .collect()
    };
    let read_u64 = |at: u64| u64::from_le_bytes(m.read(at, 8).try_into().unwrap());
    let counts = assist.counts();
    Some(Outcome {
        exit,
        values: pairs(&words.borrow()),
        bp_rips: pairs(&bp_words.borrow()),
        vectors: vectors.into_inner(),
        int3_at: CODE + int3,
        memory16: [read_u64(DATA), read_u64(DATA + 8)],
        memory8: read_u64(DATA + 0x40),
        completed: Assisted::ALL
            .iter()
            .map(|&k| (k, counts.completed(k)))
            .collect(),
        pending_after: vcpu.pending_exception().unwrap(),
        report: assist.last_report().map(|r| r.to_string()),
    })
}

/// Says whether the assist completed `kind` or the host ran it itself, and checks that it was
/// one or the other for each of the guest's `executed` instances.
fn assisted_or_native(o: &Outcome, kind: Assisted, executed: u64) -> &'static str {
    let n = o.completed(kind);
    assert!(
        n == 0 || n == executed,
        "{} assisted {n} times of {executed}",
        kind.name()
    );
    if n == 0 {
        "executed by the host"
    } else {
        "assisted"
    }
}

#[test]
fn the_assist_completes_what_the_host_cannot_emulate() {
    let Some(o) = run_guest(SoftExceptionRip::default()) else {
        return;
    };
    assert_eq!(
        o.exit,
        LoopExit::Stopped(StopReason::GuestExit(0)),
        "{o:#?}"
    );
    assert_eq!(o.vectors, [], "no exception other than #BP, and no #UD");
    assert_eq!(o.pending_after, None);
    assert_eq!(o.report, None, "the assist never stopped");

    let zf = |flags: u64| flags & RFLAGS_ZF != 0;
    let v = &o.values;
    assert_eq!(v.len(), 15, "{v:#x?}");
    // cmpxchg16b, equal: ZF=1, memory = RCX:RBX.
    assert!(zf(v[0]), "cmpxchg16b equal sets ZF: {:#x}", v[0]);
    assert_eq!(v[1..3], CX16_NEW);
    // cmpxchg16b, not equal: ZF=0, RDX:RAX = memory, memory unchanged.
    assert!(!zf(v[3]), "cmpxchg16b not equal clears ZF: {:#x}", v[3]);
    assert_eq!(v[4..6], CX16_NEW, "RDX:RAX got memory");
    assert_eq!(v[6..8], CX16_NEW, "memory unchanged");
    assert_eq!(o.memory16, CX16_NEW);
    // cmpxchg8b, equal: ZF=1, memory = ECX:EBX.
    assert!(zf(v[8]), "cmpxchg8b equal sets ZF: {:#x}", v[8]);
    assert_eq!(v[9], CX8_NEW);
    // cmpxchg8b, not equal: ZF=0, EDX:EAX = memory, zero-extended.
    assert!(!zf(v[10]), "cmpxchg8b not equal clears ZF: {:#x}", v[10]);
    assert_eq!((v[11], v[12]), (CX8_NEW & 0xffff_ffff, CX8_NEW >> 32));
    assert_eq!(v[13], CX8_NEW, "memory unchanged");
    assert_eq!(o.memory8, CX8_NEW);
    // int3: the #BP frame holds the address of the byte after the int3, once.
    assert_eq!(o.bp_rips, [o.int3_at + 1], "#BP frame RIP");
    assert_eq!(v[14], 0x600d, "the handler returned behind the int3");

    eprintln!(
        "on this host: cmpxchg16b {}, cmpxchg8b {}, int3 {}",
        assisted_or_native(&o, Assisted::Cmpxchg16b, 2),
        assisted_or_native(&o, Assisted::Cmpxchg8b, 2),
        assisted_or_native(&o, Assisted::Int3, 1),
    );
}

#[test]
fn both_int3_strategies_on_this_host() {
    let Some(default) = run_guest(SoftExceptionRip::default()) else {
        return;
    };
    let Some(other) = run_guest(SoftExceptionRip::BackendAddsLength) else {
        return;
    };
    let describe = |o: &Outcome| match o.bp_rips.first() {
        Some(&rip) => format!(
            "#BP frame RIP = int3 {:+} ({} #BP), exit {:?}",
            rip.wrapping_sub(o.int3_at) as i64,
            o.bp_rips.len(),
            o.exit
        ),
        None => format!("no #BP, exit {:?}", o.exit),
    };
    eprintln!(
        "int3 {}: AdvanceRip: {}; BackendAddsLength: {}",
        assisted_or_native(&default, Assisted::Int3, 1),
        describe(&default),
        describe(&other),
    );
    assert_eq!(
        default.bp_rips,
        [default.int3_at + 1],
        "the default strategy gives the architecture's frame RIP"
    );
    if default.completed(Assisted::Int3) == 1 {
        assert_ne!(
            other.bp_rips.first(),
            Some(&(other.int3_at + 1)),
            "both strategies cannot be right on one host"
        );
    }
}
