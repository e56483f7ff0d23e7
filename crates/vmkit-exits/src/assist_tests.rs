//! Unit tests of the assist: hand-made instruction bytes on an in-memory vCPU and guest memory
//! with page tables.

use super::*;
use crate::guest::{GP_VECTOR, SS_VECTOR};
use crate::state::{PF_VECTOR, Segment, SpecialRegisters, XSAVE_AREA_SIZE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmkit_paging::{BumpAllocator, PageSizes, PteFlags, TableBuilder, X86Format, X86Paging};

/// vcpu gone
#[derive(Debug, displaydoc::Display, thiserror::Error)]
struct Gone;

/// An in-memory vCPU.
#[derive(Default)]
struct MemVcpu {
    regs: Registers,
    sregs: SpecialRegisters,
    injected: Vec<Exception>,
    pending: Option<Exception>,
    xsave: Vec<u8>,
    xcr0: u64,
    xss: Option<u64>,
    fail: bool,
}

const CR3: u64 = 0x30_0000;
const RW: u64 = 0x40_0000; // two pages -> 0x10000, 0x11000
const RO: u64 = 0x50_0000; // -> 0x20000
const USER: u64 = 0x60_0000; // -> 0x30000, user
const SPLIT: u64 = 0x70_0000; // -> 0x40000, then 0x50000
const OUTSIDE: u64 = 0x80_0000; // -> beyond RAM
const UNMAPPED: u64 = 0x90_0000;

fn memory() -> GuestMemoryMmap {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    let frames = BumpAllocator::new(CR3, 4 << 20);
    let mut b = TableBuilder::new(X86Format::default(), &mem, frames, PageSizes::SMALL).unwrap();
    assert_eq!(b.root(), CR3);
    b.map(RW, 0x10000, 0x2000, PteFlags::WRITABLE).unwrap();
    b.map(RO, 0x20000, 0x1000, PteFlags::EMPTY).unwrap();
    b.map(USER, 0x30000, 0x1000, PteFlags::WRITABLE | PteFlags::USER)
        .unwrap();
    b.map(SPLIT, 0x40000, 0x1000, PteFlags::WRITABLE).unwrap();
    b.map(SPLIT + 0x1000, 0x50000, 0x1000, PteFlags::WRITABLE)
        .unwrap();
    b.map(OUTSIDE, 0x1000_0000, 0x1000, PteFlags::WRITABLE)
        .unwrap();
    mem
}

impl MemVcpu {
    fn long_mode() -> Self {
        let mut v = Self::default();
        v.sregs.cr0 = 0x8001_0011;
        v.sregs.cr3 = CR3;
        v.sregs.cr4 = 0x20 | CR4_OSXSAVE;
        v.sregs.efer = 0xd00;
        v.sregs.cs = Segment {
            l: true,
            present: true,
            type_: 0xb,
            s: true,
            ..Segment::default()
        };
        v.regs.rip = 0xffff_ffff_8100_0000;
        v.regs.rflags = 2;
        v.xsave = vec![0; XSAVE_AREA_SIZE];
        v.xcr0 = 0b111;
        v
    }

    /// 32-bit protected mode without paging, flat 4 GiB segments.
    fn protected() -> Self {
        let mut v = Self::long_mode();
        v.sregs.cr0 = 0x11;
        v.sregs.efer = 0;
        let flat = Segment {
            limit: 0xffff_ffff,
            present: true,
            type_: 0x3,
            s: true,
            db: true,
            g: true,
            ..Segment::default()
        };
        v.sregs.ds = flat;
        v.sregs.ss = flat;
        v.sregs.es = flat;
        v.sregs.cs = Segment { type_: 0xb, ..flat };
        v.regs.rip = 0x1000;
        v
    }
}

impl VcpuState for MemVcpu {
    type Error = Gone;
    fn registers(&self) -> Result<Registers, Gone> {
        if self.fail {
            return Err(Gone);
        }
        Ok(self.regs)
    }
    fn set_registers(&mut self, regs: &Registers) -> Result<(), Gone> {
        self.regs = *regs;
        Ok(())
    }
    fn special_registers(&self) -> Result<SpecialRegisters, Gone> {
        Ok(self.sregs)
    }
    fn set_special_registers(&mut self, sregs: &SpecialRegisters) -> Result<(), Gone> {
        self.sregs = *sregs;
        Ok(())
    }
    fn inject_exception(&mut self, exception: Exception) -> Result<(), Gone> {
        self.injected.push(exception);
        self.pending = Some(exception);
        Ok(())
    }
    fn pending_exception(&self) -> Result<Option<Exception>, Gone> {
        Ok(self.pending)
    }
    fn clear_pending_exception(&mut self) -> Result<(), Gone> {
        self.pending = None;
        Ok(())
    }
    fn xsave(&self) -> Result<Vec<u8>, Gone> {
        Ok(self.xsave.clone())
    }
    fn set_xsave(&mut self, area: &[u8]) -> Result<(), Gone> {
        self.xsave = area.to_vec();
        Ok(())
    }
    fn xcr0(&self) -> Result<u64, Gone> {
        Ok(self.xcr0)
    }
    fn set_xcr0(&mut self, value: u64) -> Result<(), Gone> {
        self.xcr0 = value;
        Ok(())
    }
    fn msr(&self, index: u32) -> Result<Option<u64>, Gone> {
        Ok((index == MSR_IA32_XSS).then_some(self.xss.unwrap_or(0)))
    }
    fn set_msr(&mut self, _index: u32, value: u64) -> Result<(), Gone> {
        self.xss = Some(value);
        Ok(())
    }
}

fn emu(bytes: &[u8]) -> ExitAction {
    ExitAction::Stop(StopReason::InternalError {
        suberror: INTERNAL_ERROR_EMULATION,
        insn: Some(InsnBytes::new(bytes)),
    })
}

fn assist() -> EmulationAssist {
    EmulationAssist::default().with_xsave_layout(XsaveLayout::default())
}

const UD: Exception = Exception {
    vector: UD_VECTOR,
    error_code: None,
};
const GP: Exception = Exception {
    vector: GP_VECTOR,
    error_code: Some(0),
};

/// `lock cmpxchg16b [rsi]`.
const CX16: [u8; 5] = [0xf0, 0x48, 0x0f, 0xc7, 0x0e];
/// `lock cmpxchg8b [rsi]`.
const CX8: [u8; 4] = [0xf0, 0x0f, 0xc7, 0x0e];

fn pte(mem: &GuestMemoryMmap, va: u64) -> u64 {
    let t = X86Paging::new(CR3)
        .probe(
            mem,
            va,
            vmkit_paging::Access::read(vmkit_paging::Privilege::Supervisor),
        )
        .unwrap();
    t.leaf
}

#[test]
fn cmpxchg16b_both_outcomes_with_a_queued_ud() {
    let mem = memory();
    let a = assist();
    let mut v = MemVcpu::long_mode();
    v.pending = Some(UD); // the backend queued #UD with the failure
    mem.write_obj(0x1111u64, GuestAddress(0x10020)).unwrap();
    mem.write_obj(0x2222u64, GuestAddress(0x10028)).unwrap();
    v.regs.rsi = RW + 0x20;
    (v.regs.rax, v.regs.rdx, v.regs.rbx, v.regs.rcx) = (0x1111, 0x2222, 0xaaaa, 0xbbbb);
    let rip = v.regs.rip;
    assert_eq!(
        a.resolve(&mut v, &mem, emu(&CX16)).unwrap(),
        ExitAction::Resume
    );
    assert_eq!(
        v.pending, None,
        "no spurious #UD after a completed instruction"
    );
    assert!(v.injected.is_empty());
    assert_eq!(v.regs.rip, rip + 5);
    assert_ne!(v.regs.rflags & RFLAGS_ZF, 0);
    assert_eq!(mem.read_obj::<u64>(GuestAddress(0x10020)).unwrap(), 0xaaaa);
    assert_eq!(mem.read_obj::<u64>(GuestAddress(0x10028)).unwrap(), 0xbbbb);
    assert_ne!(pte(&mem, RW) & (1 << 6), 0, "dirty");

    // Failure: the accumulator gets memory, ZF clear, memory unchanged.
    assert_eq!(
        a.resolve(&mut v, &mem, emu(&CX16)).unwrap(),
        ExitAction::Resume
    );
    assert_eq!((v.regs.rax, v.regs.rdx), (0xaaaa, 0xbbbb));
    assert_eq!(v.regs.rflags & RFLAGS_ZF, 0);
    assert_eq!(a.counts().completed(Assisted::Cmpxchg16b), 2);

    // The encoding: lock cmpxchg16b [rbp+0x20].
    v.regs.rbp = RW + 0x100;
    assert_eq!(
        a.resolve(&mut v, &mem, emu(&[0xf0, 0x48, 0x0f, 0xc7, 0x4d, 0x20]))
            .unwrap(),
        ExitAction::Resume
    );
    assert_eq!(mem.read_obj::<u64>(GuestAddress(0x10120)).unwrap(), 0);
    assert_eq!(v.regs.rflags & RFLAGS_ZF, 0);
}

#[test]
fn cmpxchg16b_faults() {
    let mem = memory();
    let a = assist();
    let mut v = MemVcpu::long_mode();
    let rip = v.regs.rip;
    // Misaligned: #GP(0), rip stays.
    v.regs.rsi = RW + 8;
    a.resolve(&mut v, &mem, emu(&CX16)).unwrap();
    assert_eq!(v.injected.pop(), Some(GP));
    assert_eq!(v.regs.rip, rip);
    // Read-only page: a write #PF even though the comparison fails.
    v.regs.rsi = RO;
    v.regs.rax = 1;
    a.resolve(&mut v, &mem, emu(&CX16)).unwrap();
    assert_eq!(
        v.injected.pop(),
        Some(Exception {
            vector: PF_VECTOR,
            error_code: Some(0b011)
        })
    );
    assert_eq!(v.sregs.cr2, RO);
    // Unmapped.
    v.regs.rsi = UNMAPPED + 0x10;
    a.resolve(&mut v, &mem, emu(&CX16)).unwrap();
    assert_eq!(v.injected.pop().unwrap().error_code, Some(0b010));
    assert_eq!(v.sregs.cr2, UNMAPPED + 0x10);
    // User page from ring 3 works; supervisor page from ring 3 faults with U/S.
    v.sregs.ss.dpl = 3;
    v.regs.rsi = USER;
    assert_eq!(
        a.resolve(&mut v, &mem, emu(&CX16)).unwrap(),
        ExitAction::Resume
    );
    assert!(v.injected.is_empty());
    v.regs.rsi = RW;
    a.resolve(&mut v, &mem, emu(&CX16)).unwrap();
    assert_eq!(v.injected.pop().unwrap().error_code, Some(0b111));
    v.sregs.ss.dpl = 0;
    // Non-canonical: #GP, or #SS through the stack segment.
    v.regs.rsi = 0x8000_0000_0000_0000;
    a.resolve(&mut v, &mem, emu(&CX16)).unwrap();
    assert_eq!(v.injected.pop(), Some(GP));
    v.regs.rbp = 0x8000_0000_0000_0000;
    a.resolve(&mut v, &mem, emu(&[0xf0, 0x48, 0x0f, 0xc7, 0x4d, 0x20]))
        .unwrap();
    assert_eq!(v.injected.pop().unwrap().vector, SS_VECTOR);
    assert_eq!(a.counts().faulted, 6);
    // Outside RAM: a report, not a fault.
    v.regs.rsi = OUTSIDE;
    assert_eq!(a.resolve(&mut v, &mem, emu(&CX16)).unwrap(), emu(&CX16));
    let report = a.last_report().unwrap();
    assert!(report.reason.contains("not guest RAM"), "{report}");
    assert!(report.to_string().contains("lock cmpxchg16b [rsi]"));
}

#[test]
fn segment_bases() {
    let mem = memory();
    let a = assist();
    let mut v = MemVcpu::long_mode();
    // gs: lock cmpxchg16b gs:[rsi]: GS base added in 64-bit mode.
    v.sregs.gs.base = RW;
    v.sregs.ds.base = 0x1000; // ignored in 64-bit mode
    v.regs.rsi = 0x40;
    (v.regs.rbx, v.regs.rcx) = (5, 6);
    a.resolve(&mut v, &mem, emu(&[0x65, 0xf0, 0x48, 0x0f, 0xc7, 0x0e]))
        .unwrap();
    assert_eq!(mem.read_obj::<u64>(GuestAddress(0x10040)).unwrap(), 5);
    v.regs.rsi = RW + 0x60;
    a.resolve(&mut v, &mem, emu(&CX16)).unwrap();
    assert_eq!(mem.read_obj::<u64>(GuestAddress(0x10060)).unwrap(), 5);
}

#[test]
fn cmpxchg8b_misaligned_straddling_and_32_bit() {
    let mem = memory();
    let a = assist();
    let mut v = MemVcpu::long_mode();
    // Misaligned within a cache line.
    mem.write_obj(0x0000_0002_0000_0001u64, GuestAddress(0x10003))
        .unwrap();
    v.regs.rsi = RW + 3;
    (v.regs.rax, v.regs.rdx, v.regs.rbx, v.regs.rcx) = (1, 2, 7, 8);
    assert_eq!(
        a.resolve(&mut v, &mem, emu(&CX8)).unwrap(),
        ExitAction::Resume
    );
    assert_eq!(
        mem.read_obj::<u64>(GuestAddress(0x10003)).unwrap(),
        0x0000_0008_0000_0007
    );
    // Failure zero-extends EDX:EAX.
    v.regs.rax = u64::MAX;
    a.resolve(&mut v, &mem, emu(&CX8)).unwrap();
    assert_eq!((v.regs.rax, v.regs.rdx), (7, 8));
    // Across a cache line: a report (the host would split-lock).
    v.regs.rsi = RW + 0x3c;
    assert_eq!(a.resolve(&mut v, &mem, emu(&CX8)).unwrap(), emu(&CX8));
    assert!(a.last_report().unwrap().reason.contains("cache line"));
    // Across pages contiguous in guest-physical memory: still a cache-line split.
    // Across pages that are not contiguous: a report.
    v.regs.rsi = SPLIT + 0xffc;
    assert_eq!(a.resolve(&mut v, &mem, emu(&CX8)).unwrap(), emu(&CX8));
    assert!(a.last_report().unwrap().reason.contains("not contiguous"));

    // 32-bit protected mode without paging, DS base and limit.
    let mut v = MemVcpu::protected();
    v.sregs.ds.base = 0x10000;
    v.regs.rsi = 0x80;
    v.regs.rax = 0;
    v.regs.rbx = 0x55;
    let rip = v.regs.rip;
    assert_eq!(
        a.resolve(&mut v, &mem, emu(&[0x0f, 0xc7, 0x0e])).unwrap(),
        ExitAction::Resume
    );
    assert_eq!(mem.read_obj::<u64>(GuestAddress(0x10080)).unwrap(), 0x55);
    assert_eq!(v.regs.rip, rip + 3);
    v.sregs.ds.limit = 0x83;
    a.resolve(&mut v, &mem, emu(&[0x0f, 0xc7, 0x0e])).unwrap();
    assert_eq!(v.injected.pop(), Some(GP), "beyond the limit");
    v.sregs.ds.limit = 0xffff_ffff;
    v.sregs.ds.type_ = 0x1; // read-only data
    a.resolve(&mut v, &mem, emu(&[0x0f, 0xc7, 0x0e])).unwrap();
    assert_eq!(v.injected.pop(), Some(GP), "read-only segment");
    v.sregs.ds.type_ = 0x3;
    v.sregs.cr0 |= 1 << 31; // 32-bit paging: not walked
    assert_eq!(
        a.resolve(&mut v, &mem, emu(&[0x0f, 0xc7, 0x0e])).unwrap(),
        emu(&[0x0f, 0xc7, 0x0e])
    );
}

#[test]
fn int3_strategies() {
    let mem = memory();
    let mut v = MemVcpu::long_mode();
    v.pending = Some(UD);
    let rip = v.regs.rip;
    let a = assist();
    assert_eq!(
        a.resolve(&mut v, &mem, emu(&[0xcc])).unwrap(),
        ExitAction::Resume
    );
    let bp = Exception {
        vector: BP_VECTOR,
        error_code: None,
    };
    assert_eq!(v.pending, Some(bp), "#BP replaces the queued #UD");
    assert_eq!(v.regs.rip, rip + 1);
    let a = assist().with_soft_exception_rip(SoftExceptionRip::BackendAddsLength);
    a.resolve(&mut v, &mem, emu(&[0xcc])).unwrap();
    assert_eq!(v.regs.rip, rip + 1, "left for the backend");
    assert_eq!(a.counts().completed(Assisted::Int3), 1);
}

fn xsave_vcpu() -> MemVcpu {
    let mut v = MemVcpu::long_mode();
    for (i, b) in v.xsave.iter_mut().enumerate().take(832) {
        *b = (i % 13) as u8 + 1;
    }
    v.xsave[24..32].copy_from_slice(&(0x1f80u64 | 0xffff << 32).to_le_bytes());
    v.xsave[512..576].fill(0);
    v.xsave[512] = 0b111;
    (v.regs.rax, v.regs.rdx) = (u64::from(u32::MAX), u64::from(u32::MAX));
    v
}

#[test]
fn xsaves_xrstors_round_trip_compacted() {
    let mem = memory();
    let a = assist();
    let mut v = xsave_vcpu();
    let saved = v.xsave.clone();
    v.regs.rdi = RW + 0x40; // 64-aligned, crosses into the second page
    // xsaves [rdi]
    assert_eq!(
        a.resolve(&mut v, &mem, emu(&[0x0f, 0xc7, 0x2f])).unwrap(),
        ExitAction::Resume
    );
    let mut hdr = [0u8; 16];
    mem.read_slice(&mut hdr, GuestAddress(0x10040 + 512))
        .unwrap();
    assert_eq!(
        u64::from_le_bytes(hdr[8..].try_into().unwrap()),
        0b111 | 1 << 63
    );
    v.xsave.fill(0);
    v.xsave[28..32].copy_from_slice(&0xffffu32.to_le_bytes()); // MXCSR_MASK: the CPU's, kept
    // xrstors [rdi]
    assert_eq!(
        a.resolve(&mut v, &mem, emu(&[0x0f, 0xc7, 0x1f])).unwrap(),
        ExitAction::Resume
    );
    assert_eq!(v.xsave[..416], saved[..416]);
    assert_eq!(v.xsave[512..832], saved[512..832]);
    assert_eq!(a.counts().completed(Assisted::Xsaves), 1);
    assert_eq!(a.counts().completed(Assisted::Xrstors), 1);
    // xsavec too.
    assert_eq!(
        a.resolve(&mut v, &mem, emu(&[0x0f, 0xc7, 0x27])).unwrap(),
        ExitAction::Resume
    );
    // xrstors of a standard-format area: #GP.
    mem.write_obj(0u64, GuestAddress(0x10040 + 520)).unwrap();
    a.resolve(&mut v, &mem, emu(&[0x0f, 0xc7, 0x1f])).unwrap();
    assert_eq!(v.injected.pop(), Some(GP));
}

#[test]
fn xsave_xrstor_round_trip_standard_and_checks() {
    let mem = memory();
    let a = assist();
    let mut v = xsave_vcpu();
    let saved = v.xsave.clone();
    v.regs.rdi = RW;
    // xsave [rdi], xsaveopt [rdi]
    assert_eq!(
        a.resolve(&mut v, &mem, emu(&[0x0f, 0xae, 0x27])).unwrap(),
        ExitAction::Resume
    );
    assert_eq!(
        a.resolve(&mut v, &mem, emu(&[0x0f, 0xae, 0x37])).unwrap(),
        ExitAction::Resume
    );
    v.xsave.fill(0);
    v.xsave[28..32].copy_from_slice(&0xffffu32.to_le_bytes());
    // xrstor [rdi]
    assert_eq!(
        a.resolve(&mut v, &mem, emu(&[0x0f, 0xae, 0x2f])).unwrap(),
        ExitAction::Resume
    );
    assert_eq!(v.xsave[..416], saved[..416]);
    assert_eq!(v.xsave[512..832], saved[512..832]);
    // Misaligned: #GP; OSXSAVE clear: #UD; XSAVES from ring 3: #GP.
    v.regs.rdi = RW + 8;
    a.resolve(&mut v, &mem, emu(&[0x0f, 0xae, 0x27])).unwrap();
    assert_eq!(v.injected.pop(), Some(GP));
    v.regs.rdi = RW;
    v.sregs.cr4 &= !CR4_OSXSAVE;
    a.resolve(&mut v, &mem, emu(&[0x0f, 0xae, 0x27])).unwrap();
    assert_eq!(v.injected.pop(), Some(UD));
    v.sregs.cr4 |= CR4_OSXSAVE;
    v.sregs.ss.dpl = 3;
    a.resolve(&mut v, &mem, emu(&[0x0f, 0xc7, 0x2f])).unwrap();
    assert_eq!(v.injected.pop(), Some(GP));
    v.sregs.ss.dpl = 0;
    // A supervisor component the standard area cannot hold: a report.
    v.xss = Some(1 << 11);
    let xsaves = emu(&[0x0f, 0xc7, 0x2f]);
    assert_eq!(a.resolve(&mut v, &mem, xsaves).unwrap(), xsaves);
    assert!(a.last_report().unwrap().reason.contains("component 11"));
    // Reserved XSTATE_BV bits: #GP.
    mem.write_obj(1u64 << 9, GuestAddress(0x10000 + 512))
        .unwrap();
    a.resolve(&mut v, &mem, emu(&[0x0f, 0xae, 0x2f])).unwrap();
    assert_eq!(v.injected.pop(), Some(GP));
}

#[test]
fn policy_and_other_outcomes() {
    let mem = memory();
    let a = EmulationAssist::new(ReflectNamed(vec!["ud2"]));
    let mut v = MemVcpu::long_mode();
    assert_eq!(
        a.resolve(&mut v, &mem, emu(&[0x0f, 0x0b])).unwrap(),
        ExitAction::Resume
    );
    assert_eq!(v.injected.pop(), Some(UD));
    let hlt = emu(&[0xf4]);
    assert_eq!(a.resolve(&mut v, &mem, hlt).unwrap(), hlt);
    assert!(
        a.last_report()
            .unwrap()
            .to_string()
            .contains("hlt [f4] at rip")
    );
    for other in [
        ExitAction::Resume,
        ExitAction::Halt,
        ExitAction::Stop(StopReason::Reset),
    ] {
        assert_eq!(a.resolve(&mut v, &mem, other).unwrap(), other);
    }
    let no_bytes = ExitAction::Stop(StopReason::InternalError {
        suberror: 1,
        insn: None,
    });
    assert_eq!(a.resolve(&mut v, &mem, no_bytes).unwrap(), no_bytes);
    let truncated = emu(&[0x0f]);
    assert_eq!(a.resolve(&mut v, &mem, truncated).unwrap(), truncated);
    assert_eq!((a.reflected(), a.stopped()), (1, 3));
    let dispatcher = crate::ExitDispatcher::new(
        Arc::new(crate::IoBus::new()),
        Arc::new(crate::MmioBus::new()),
    );
    let table = dispatcher.stats().with_assist(a.counts()).to_string();
    assert!(table.contains("assist"), "{table}");
    v.fail = true;
    let err = a.resolve(&mut v, &mem, emu(&[0xcc])).unwrap_err();
    // The message names the step; the backend's error is the source, printed once.
    assert_eq!(err.to_string(), "reading the vCPU's registers failed");
    assert_eq!(
        std::error::Error::source(&err).map(ToString::to_string),
        Some("vcpu gone".to_string())
    );
    assert!(matches!(err.into_source(), Gone));
}

/// `popcnt rax, rdi`, as Linux's `__arch_hweight64` runs it.
const POPCNT_RAX_RDI: [u8; 5] = [0xf3, 0x48, 0x0f, 0xb8, 0xc7];

#[test]
fn popcnt_counts_a_register_and_sets_only_zf() {
    let mem = memory();
    let a = assist();
    let mut v = MemVcpu::long_mode();
    v.pending = Some(UD);
    v.regs.rdi = 0xf0f0_0000_0000_0001;
    v.regs.rax = u64::MAX;
    // CF, PF, AF, SF, OF set before: all cleared; ZF clear for a non-zero source.
    v.regs.rflags = 0x2 | 0x1 | 0x4 | 0x10 | 0x80 | 0x800 | 0x40;
    let rip = v.regs.rip;
    assert_eq!(
        a.resolve(&mut v, &mem, emu(&POPCNT_RAX_RDI)).unwrap(),
        ExitAction::Resume
    );
    assert_eq!(v.regs.rax, 9);
    assert_eq!(v.regs.rflags, 0x2);
    assert_eq!(v.regs.rip, rip + 5);
    assert_eq!(v.pending, None, "the queued #UD is dropped");
    // A zero source sets ZF.
    v.regs.rdi = 0;
    a.resolve(&mut v, &mem, emu(&POPCNT_RAX_RDI)).unwrap();
    assert_eq!((v.regs.rax, v.regs.rflags), (0, 0x2 | RFLAGS_ZF));
    assert_eq!(a.counts().completed(Assisted::Popcnt), 2);
}

#[test]
fn bit_counts_of_every_width_and_from_memory() {
    let mem = memory();
    let a = assist();
    let mut v = MemVcpu::long_mode();
    // popcnt ecx, [rsi]: a 32-bit write clears the upper half.
    mem.write_obj(0x8000_0003u32, GuestAddress(0x10040))
        .unwrap();
    v.regs.rsi = RW + 0x40;
    v.regs.rcx = u64::MAX;
    a.resolve(&mut v, &mem, emu(&[0xf3, 0x0f, 0xb8, 0x0e]))
        .unwrap();
    assert_eq!(v.regs.rcx, 3);
    // popcnt cx, dx: a 16-bit write keeps the other bits.
    v.regs.rcx = 0xffff_ffff_ffff_0000;
    v.regs.rdx = 0x1_00ff;
    a.resolve(&mut v, &mem, emu(&[0x66, 0xf3, 0x0f, 0xb8, 0xca]))
        .unwrap();
    assert_eq!(v.regs.rcx, 0xffff_ffff_ffff_0008);
    // lzcnt eax, edx and tzcnt rax, rdx: counts, CF for a zero source, ZF for a zero count.
    v.regs.rdx = 0x0000_0100;
    a.resolve(&mut v, &mem, emu(&[0xf3, 0x0f, 0xbd, 0xc2]))
        .unwrap();
    assert_eq!(v.regs.rax, 23);
    assert_eq!(v.regs.rflags & (RFLAGS_CF | RFLAGS_ZF), 0);
    a.resolve(&mut v, &mem, emu(&[0xf3, 0x48, 0x0f, 0xbc, 0xc2]))
        .unwrap();
    assert_eq!(v.regs.rax, 8);
    v.regs.rdx = 0;
    a.resolve(&mut v, &mem, emu(&[0xf3, 0x48, 0x0f, 0xbc, 0xc2]))
        .unwrap();
    assert_eq!(v.regs.rax, 64);
    assert_eq!(v.regs.rflags & (RFLAGS_CF | RFLAGS_ZF), RFLAGS_CF);
    v.regs.rdx = 0x8000_0000;
    a.resolve(&mut v, &mem, emu(&[0xf3, 0x0f, 0xbd, 0xc2]))
        .unwrap();
    assert_eq!(v.regs.rax, 0);
    assert_eq!(v.regs.rflags & (RFLAGS_CF | RFLAGS_ZF), RFLAGS_ZF);
    // A memory source on an unmapped page is a #PF for a read, CR2 the address.
    v.regs.rsi = UNMAPPED;
    a.resolve(&mut v, &mem, emu(&[0xf3, 0x0f, 0xb8, 0x0e]))
        .unwrap();
    let last = *v.injected.last().unwrap();
    assert_eq!((last.vector, last.error_code), (PF_VECTOR, Some(0)));
    assert_eq!(v.sregs.cr2, UNMAPPED);
    assert_eq!(a.counts().completed(Assisted::Lzcnt), 2);
    assert_eq!(a.counts().completed(Assisted::Tzcnt), 2);
}

#[test]
fn clac_and_stac_flip_ac_in_ring_0_only() {
    let mem = memory();
    let a = assist();
    let mut v = MemVcpu::long_mode();
    v.regs.rflags = 0x2 | RFLAGS_AC;
    let rip = v.regs.rip;
    a.resolve(&mut v, &mem, emu(&[0x0f, 0x01, 0xca])).unwrap();
    assert_eq!((v.regs.rflags, v.regs.rip), (0x2, rip + 3));
    a.resolve(&mut v, &mem, emu(&[0x0f, 0x01, 0xcb])).unwrap();
    assert_eq!((v.regs.rflags, v.regs.rip), (0x2 | RFLAGS_AC, rip + 6));
    assert_eq!(a.counts().completed(Assisted::Clac), 1);
    assert_eq!(a.counts().completed(Assisted::Stac), 1);
    // Ring 3: #UD, nothing changes.
    v.sregs.cs.dpl = 3;
    v.sregs.ss.dpl = 3;
    a.resolve(&mut v, &mem, emu(&[0x0f, 0x01, 0xca])).unwrap();
    assert_eq!(v.injected.last(), Some(&UD));
    assert_eq!((v.regs.rflags, v.regs.rip), (0x2 | RFLAGS_AC, rip + 6));
}

#[test]
fn fwait_raises_what_is_pending_and_otherwise_completes() {
    let mem = memory();
    let a = assist();
    let mut v = MemVcpu::long_mode();
    v.pending = Some(UD);
    let rip = v.regs.rip;
    a.resolve(&mut v, &mem, emu(&[0x9b])).unwrap();
    assert_eq!((v.regs.rip, v.pending), (rip + 1, None));
    assert_eq!(a.counts().completed(Assisted::Fwait), 1);
    // An unmasked x87 exception pending: #MF at the fwait.
    v.xsave[2] = 0x80;
    a.resolve(&mut v, &mem, emu(&[0x9b])).unwrap();
    assert_eq!(v.injected.last().map(|e| e.vector), Some(16));
    assert_eq!(v.regs.rip, rip + 1);
    // CR0.MP and CR0.TS: #NM first.
    v.sregs.cr0 |= 0b1010;
    a.resolve(&mut v, &mem, emu(&[0x9b])).unwrap();
    assert_eq!(v.injected.last().map(|e| e.vector), Some(7));
}

#[test]
fn ldmxcsr_and_stmxcsr_go_through_the_xsave_area() {
    let mem = memory();
    let a = assist();
    let mut v = MemVcpu::long_mode();
    v.sregs.cr4 |= 1 << 9; // OSFXSR
    v.xsave[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
    v.xsave[28..32].copy_from_slice(&0xffffu32.to_le_bytes());
    v.pending = Some(UD);
    // ldmxcsr [rsi] (0f ae 16), stmxcsr [rsi+4] (0f ae 5e 04).
    mem.write_obj(0x9fc0u32, GuestAddress(0x10040)).unwrap();
    v.regs.rsi = RW + 0x40;
    let rip = v.regs.rip;
    a.resolve(&mut v, &mem, emu(&[0x0f, 0xae, 0x16])).unwrap();
    assert_eq!(&v.xsave[24..28], &0x9fc0u32.to_le_bytes());
    assert_eq!(
        v.xsave[512] & 0b10,
        0b10,
        "XSTATE_BV marks SSE in use, MXCSR with it"
    );
    assert_eq!((v.regs.rip, v.pending), (rip + 3, None));
    a.resolve(&mut v, &mem, emu(&[0x0f, 0xae, 0x5e, 0x04]))
        .unwrap();
    assert_eq!(mem.read_obj::<u32>(GuestAddress(0x10044)).unwrap(), 0x9fc0);
    assert_eq!(v.regs.rip, rip + 7);
    assert_eq!(a.counts().completed(Assisted::Ldmxcsr), 1);
    assert_eq!(a.counts().completed(Assisted::Stmxcsr), 1);
    // A bit MXCSR_MASK does not allow: #GP(0), MXCSR unchanged.
    mem.write_obj(0x1_0000u32, GuestAddress(0x10040)).unwrap();
    a.resolve(&mut v, &mem, emu(&[0x0f, 0xae, 0x16])).unwrap();
    assert_eq!(v.injected.last(), Some(&GP));
    assert_eq!(&v.xsave[24..28], &0x9fc0u32.to_le_bytes());
    // stmxcsr to a read-only page: a write #PF.
    v.regs.rsi = RO;
    a.resolve(&mut v, &mem, emu(&[0x0f, 0xae, 0x1e])).unwrap();
    let last = *v.injected.last().unwrap();
    assert_eq!((last.vector, last.error_code), (PF_VECTOR, Some(0b11)));
    // CR0.TS: #NM; CR4.OSFXSR clear: #UD.
    v.sregs.cr0 |= 1 << 3;
    a.resolve(&mut v, &mem, emu(&[0x0f, 0xae, 0x16])).unwrap();
    assert_eq!(v.injected.last().map(|e| e.vector), Some(7));
    v.sregs.cr0 &= !(1 << 3);
    v.sregs.cr4 &= !(1 << 9);
    a.resolve(&mut v, &mem, emu(&[0x0f, 0xae, 0x16])).unwrap();
    assert_eq!(v.injected.last(), Some(&UD));
}

/// Register `n`'s 64 bytes in the vCPU's standard-format area (the default layout).
fn vreg(v: &MemVcpu, n: usize) -> [u8; 64] {
    let mut out = [0u8; 64];
    if n < 16 {
        out[..16].copy_from_slice(&v.xsave[160 + 16 * n..176 + 16 * n]);
        out[16..32].copy_from_slice(&v.xsave[576 + 16 * n..592 + 16 * n]);
        out[32..].copy_from_slice(&v.xsave[1152 + 32 * n..1184 + 32 * n]);
    } else {
        out.copy_from_slice(&v.xsave[1664 + 64 * (n - 16)..1728 + 64 * (n - 16)]);
    }
    out
}

fn set_vreg(v: &mut MemVcpu, n: usize, value: &[u8; 64]) {
    v.xsave[160 + 16 * n..176 + 16 * n].copy_from_slice(&value[..16]);
    v.xsave[576 + 16 * n..592 + 16 * n].copy_from_slice(&value[16..32]);
    v.xsave[1152 + 32 * n..1184 + 32 * n].copy_from_slice(&value[32..]);
    v.xsave[512] |= 0b1110_0110; // XSTATE_BV: SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM
}

fn dwords_of(values: &[u32]) -> [u8; 64] {
    let mut out = [0u8; 64];
    for (chunk, v) in out.chunks_exact_mut(4).zip(values) {
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    out
}

/// A long-mode vCPU with SSE, AVX and AVX-512 enabled.
fn vector_vcpu() -> MemVcpu {
    let mut v = MemVcpu::long_mode();
    v.sregs.cr4 |= 1 << 9; // OSFXSR
    v.xcr0 = 0xe7;
    v
}

#[test]
fn vector_moves_load_store_and_clear_the_upper_bits_as_encoded() {
    let mem = memory();
    let a = assist();
    let mut v = vector_vcpu();
    let pattern: Vec<u8> = (1..=64).collect();
    mem.write_slice(&pattern, GuestAddress(0x10040)).unwrap();
    set_vreg(&mut v, 0, &[0xee; 64]);
    v.regs.rdi = RW + 0x40;
    v.pending = Some(UD);
    let rip = v.regs.rip;
    // vmovdqu xmm0, [rdi]: 16 bytes, bits 128 and up cleared.
    a.resolve(&mut v, &mem, emu(&[0xc5, 0xfa, 0x6f, 0x07]))
        .unwrap();
    let mut want = [0u8; 64];
    want[..16].copy_from_slice(&pattern[..16]);
    assert_eq!(vreg(&v, 0), want);
    assert_eq!((v.regs.rip, v.pending), (rip + 4, None));
    assert_eq!(
        v.xsave[512] & 0b110,
        0b110,
        "XSTATE_BV marks SSE and AVX in use"
    );
    // vmovdqu ymm6, [rsi]: 32 bytes.
    v.regs.rsi = RW + 0x40;
    a.resolve(&mut v, &mem, emu(&[0xc5, 0xfe, 0x6f, 0x36]))
        .unwrap();
    assert_eq!(&vreg(&v, 6)[..32], &pattern[..32]);
    // vmovdqa xmm10, xmm0 (register to register).
    a.resolve(&mut v, &mem, emu(&[0xc5, 0x79, 0x6f, 0xd0]))
        .unwrap();
    assert_eq!(vreg(&v, 10), want);
    // movdqu [rdi+0x20], xmm0 (legacy store) and vmovdqu [rdi+0x30], xmm10.
    a.resolve(&mut v, &mem, emu(&[0xf3, 0x0f, 0x7f, 0x47, 0x20]))
        .unwrap();
    a.resolve(&mut v, &mem, emu(&[0xc5, 0x7a, 0x7f, 0x57, 0x30]))
        .unwrap();
    let mut back = [0u8; 32];
    mem.read_slice(&mut back, GuestAddress(0x10060)).unwrap();
    assert_eq!(&back[..16], &pattern[..16]);
    assert_eq!(&back[16..], &pattern[..16]);
    // A legacy SSE load keeps bits 128 and up: movdqu xmm6, [rdi].
    set_vreg(&mut v, 6, &[0x77; 64]);
    a.resolve(&mut v, &mem, emu(&[0xf3, 0x0f, 0x6f, 0x37]))
        .unwrap();
    assert_eq!(&vreg(&v, 6)[..16], &pattern[..16]);
    assert!(vreg(&v, 6)[16..].iter().all(|&b| b == 0x77));
    // movdqa xmm0, [rdi+8]: misaligned, #GP(0), nothing changes.
    a.resolve(&mut v, &mem, emu(&[0x66, 0x0f, 0x6f, 0x47, 0x08]))
        .unwrap();
    assert_eq!(v.injected.last(), Some(&GP));
    assert_eq!(vreg(&v, 0), want);
    // vmovd xmm5, ecx and vmovq rax, xmm0.
    v.regs.rcx = 0xdead_beef_1234_5678;
    a.resolve(&mut v, &mem, emu(&[0xc5, 0xf9, 0x6e, 0xe9]))
        .unwrap();
    assert_eq!(&vreg(&v, 5)[..8], &[0x78, 0x56, 0x34, 0x12, 0, 0, 0, 0]);
    a.resolve(&mut v, &mem, emu(&[0xc4, 0xe1, 0xf9, 0x7e, 0xc0]))
        .unwrap();
    assert_eq!(
        v.regs.rax,
        u64::from_le_bytes(pattern[..8].try_into().unwrap())
    );
    // vzeroupper clears bits 128 and up of registers 0..=15 only.
    set_vreg(&mut v, 3, &[0x55; 64]);
    v.xsave[1664..1728].fill(0x44); // ZMM16
    a.resolve(&mut v, &mem, emu(&[0xc5, 0xf8, 0x77])).unwrap();
    assert_eq!(&vreg(&v, 3)[..16], &[0x55; 16]);
    assert!(vreg(&v, 3)[16..].iter().all(|&b| b == 0));
    assert_eq!(vreg(&v, 16), [0x44; 64]);
    assert_eq!(a.counts().completed(Assisted::Movdqu), 5);
    assert_eq!(a.counts().completed(Assisted::Movdqa), 1);
    assert_eq!(a.counts().completed(Assisted::Movd), 2);
    assert_eq!(a.counts().completed(Assisted::Vzeroupper), 1);
}

#[test]
fn vector_integer_operations_of_blake2s() {
    let mem = memory();
    let a = assist();
    let mut v = vector_vcpu();
    let x: Vec<u32> = (0..8).map(|i| 0x0101_0101 * (i + 1)).collect();
    let y: Vec<u32> = (0..8).map(|i| 0xf000_0000 + i).collect();
    set_vreg(&mut v, 0, &dwords_of(&x));
    set_vreg(&mut v, 1, &dwords_of(&y));
    // vpaddd xmm0, xmm0, xmm1: lanes wrap, bits 128 and up cleared.
    a.resolve(&mut v, &mem, emu(&[0xc5, 0xf9, 0xfe, 0xc1]))
        .unwrap();
    let sum: Vec<u32> = (0..4).map(|i| x[i].wrapping_add(y[i])).collect();
    assert_eq!(vreg(&v, 0), dwords_of(&sum));
    // vpxor xmm3, xmm3, xmm0 with xmm3 = y.
    set_vreg(&mut v, 3, &dwords_of(&y));
    a.resolve(&mut v, &mem, emu(&[0xc5, 0xe1, 0xef, 0xd8]))
        .unwrap();
    let xor: Vec<u32> = (0..4).map(|i| y[i] ^ sum[i]).collect();
    assert_eq!(vreg(&v, 3), dwords_of(&xor));
    // vprord xmm3, xmm3, 16 (EVEX).
    a.resolve(
        &mut v,
        &mem,
        emu(&[0x62, 0xf1, 0x65, 0x08, 0x72, 0xc3, 0x10]),
    )
    .unwrap();
    let rot: Vec<u32> = xor.iter().map(|d| d.rotate_right(16)).collect();
    assert_eq!(vreg(&v, 3), dwords_of(&rot));
    // vpshufd xmm0, xmm0, 0x93: dword i takes source dword (0x93 >> 2i) & 3 = 3, 0, 1, 2.
    a.resolve(&mut v, &mem, emu(&[0xc5, 0xf9, 0x70, 0xc0, 0x93]))
        .unwrap();
    assert_eq!(vreg(&v, 0), dwords_of(&[sum[3], sum[0], sum[1], sum[2]]));
    // vpaddq xmm4, xmm4, xmm5.
    set_vreg(&mut v, 4, &dwords_of(&[u32::MAX, 0, 5, 0]));
    set_vreg(&mut v, 5, &dwords_of(&[1, 0, 7, 1]));
    a.resolve(&mut v, &mem, emu(&[0xc5, 0xd9, 0xd4, 0xe5]))
        .unwrap();
    assert_eq!(vreg(&v, 4), dwords_of(&[0, 1, 12, 1]));
    // vpermi2d ymm8, ymm6, ymm7: index bits 0..=2 pick the element, bit 3 the table (ymm7 when
    // set); higher bits are ignored (0x13 is element 3 of ymm6).
    set_vreg(&mut v, 6, &dwords_of(&[10, 11, 12, 13, 14, 15, 16, 17]));
    set_vreg(&mut v, 7, &dwords_of(&[20, 21, 22, 23, 24, 25, 26, 27]));
    set_vreg(&mut v, 8, &dwords_of(&[0, 8, 7, 15, 1, 9, 0x13, 0xfe]));
    a.resolve(&mut v, &mem, emu(&[0x62, 0x72, 0x4d, 0x28, 0x76, 0xc7]))
        .unwrap();
    assert_eq!(vreg(&v, 8), dwords_of(&[10, 20, 17, 27, 11, 21, 13, 26]));
    // vextracti128 xmm8, ymm8, 1.
    a.resolve(&mut v, &mem, emu(&[0xc4, 0x43, 0x7d, 0x39, 0xc0, 0x01]))
        .unwrap();
    assert_eq!(vreg(&v, 8), dwords_of(&[11, 21, 13, 26]));
    // Legacy two-operand forms: paddd xmm1, xmm1 and pxor xmm1, xmm1.
    a.resolve(&mut v, &mem, emu(&[0x66, 0x0f, 0xfe, 0xc9]))
        .unwrap();
    let doubled: Vec<u32> = (0..4).map(|i| y[i].wrapping_mul(2)).collect();
    assert_eq!(&vreg(&v, 1)[..16], &dwords_of(&doubled)[..16]);
    assert_eq!(
        &vreg(&v, 1)[16..32],
        &dwords_of(&y)[16..32],
        "SSE keeps the upper bits"
    );
    a.resolve(&mut v, &mem, emu(&[0x66, 0x0f, 0xef, 0xc9]))
        .unwrap();
    assert_eq!(&vreg(&v, 1)[..16], &[0; 16]);
    for kind in [
        Assisted::Paddd,
        Assisted::Pxor,
        Assisted::Vprord,
        Assisted::Pshufd,
        Assisted::Paddq,
        Assisted::Vpermi2d,
        Assisted::Vextracti128,
    ] {
        assert!(a.counts().completed(kind) >= 1, "{kind:?}");
    }
    assert!(v.injected.is_empty());
}

#[test]
fn vector_instructions_fault_as_the_processor_does() {
    let mem = memory();
    let a = assist();
    // AVX-512 state not enabled in XCR0: an EVEX instruction is #UD.
    let mut v = vector_vcpu();
    v.xcr0 = 0b111;
    a.resolve(
        &mut v,
        &mem,
        emu(&[0x62, 0xf1, 0x65, 0x08, 0x72, 0xc3, 0x10]),
    )
    .unwrap();
    assert_eq!(v.injected.last(), Some(&UD));
    // CR4.OSXSAVE clear: VEX is #UD; CR0.TS: #NM.
    let mut v = vector_vcpu();
    v.sregs.cr4 &= !CR4_OSXSAVE;
    a.resolve(&mut v, &mem, emu(&[0xc5, 0xf9, 0xfe, 0xc1]))
        .unwrap();
    assert_eq!(v.injected.last(), Some(&UD));
    let mut v = vector_vcpu();
    v.sregs.cr0 |= 1 << 3;
    a.resolve(&mut v, &mem, emu(&[0xc5, 0xf9, 0xfe, 0xc1]))
        .unwrap();
    assert_eq!(v.injected.last().map(|e| e.vector), Some(7));
    // A store to a read-only page: write #PF, memory unchanged.
    let mut v = vector_vcpu();
    v.regs.rdi = RO;
    a.resolve(&mut v, &mem, emu(&[0xc5, 0xfa, 0x7f, 0x07]))
        .unwrap();
    let last = *v.injected.last().unwrap();
    assert_eq!((last.vector, last.error_code), (PF_VECTOR, Some(0b11)));
    // A masked EVEX form is reported, not completed: vpaddd xmm0{k1}, xmm0, xmm1.
    let mut v = vector_vcpu();
    let action = a
        .resolve(&mut v, &mem, emu(&[0x62, 0xf1, 0x7d, 0x09, 0xfe, 0xc1]))
        .unwrap();
    assert!(matches!(action, ExitAction::Stop(_)));
}

#[test]
fn xgetbv_reads_xcr0_and_the_components_in_use() {
    let mem = memory();
    let a = assist();
    let mut v = vector_vcpu();
    v.regs.rax = u64::MAX;
    v.regs.rdx = u64::MAX;
    let rip = v.regs.rip;
    a.resolve(&mut v, &mem, emu(&[0x0f, 0x01, 0xd0])).unwrap();
    assert_eq!((v.regs.rax, v.regs.rdx, v.regs.rip), (0xe7, 0, rip + 3));
    v.xsave[512] = 0b11; // x87 and SSE in use
    v.regs.rcx = 1;
    a.resolve(&mut v, &mem, emu(&[0x0f, 0x01, 0xd0])).unwrap();
    assert_eq!(v.regs.rax, 0b11);
    v.regs.rcx = 2;
    a.resolve(&mut v, &mem, emu(&[0x0f, 0x01, 0xd0])).unwrap();
    assert_eq!(v.injected.last(), Some(&GP));
    v.sregs.cr4 &= !CR4_OSXSAVE;
    a.resolve(&mut v, &mem, emu(&[0x0f, 0x01, 0xd0])).unwrap();
    assert_eq!(v.injected.last(), Some(&UD));
    assert_eq!(a.counts().completed(Assisted::Xgetbv), 2);
}

/// `vpaddd xmm0, xmm0, xmm1`, `vpxor xmm3, xmm3, xmm0`.
const VPADDD: [u8; 4] = [0xc5, 0xf9, 0xfe, 0xc1];
const VPXOR: [u8; 4] = [0xc5, 0xe1, 0xef, 0xd8];

#[test]
fn vector_instructions_that_follow_are_completed_in_the_same_exit() {
    let mem = memory();
    let a = assist();
    let mut v = vector_vcpu();
    // Code in the RW page (guest-physical 0x10000): vpaddd, vpxor, then mov eax, 1.
    let code = [&VPADDD[..], &VPXOR, &[0xb8, 1, 0, 0, 0]].concat();
    mem.write_slice(&code, GuestAddress(0x10100)).unwrap();
    v.regs.rip = RW + 0x100;
    set_vreg(&mut v, 0, &dwords_of(&[1, 2, 3, 4]));
    set_vreg(&mut v, 1, &dwords_of(&[10, 20, 30, 40]));
    set_vreg(&mut v, 3, &dwords_of(&[0xff, 0xff, 0xff, 0xff]));
    a.resolve(&mut v, &mem, emu(&VPADDD)).unwrap();
    // Both vector instructions ran; the guest resumes at the mov.
    assert_eq!(v.regs.rip, RW + 0x108);
    assert_eq!(vreg(&v, 0), dwords_of(&[11, 22, 33, 44]));
    assert_eq!(
        vreg(&v, 3),
        dwords_of(&[0xff ^ 11, 0xff ^ 22, 0xff ^ 33, 0xff ^ 44])
    );
    assert_eq!(a.counts().completed(Assisted::Paddd), 1);
    assert_eq!(a.counts().completed(Assisted::Pxor), 1);

    // A following instruction that would fault ends the run without effect: vmovdqa xmm0, [rsi]
    // with RSI misaligned is left to the guest.
    let code = [&VPADDD[..], &[0xc5, 0xf9, 0x6f, 0x06]].concat();
    mem.write_slice(&code, GuestAddress(0x10200)).unwrap();
    v.regs.rip = RW + 0x200;
    v.regs.rsi = RW + 0x41;
    a.resolve(&mut v, &mem, emu(&VPADDD)).unwrap();
    assert_eq!(v.regs.rip, RW + 0x204);
    assert!(v.injected.is_empty());
    assert_eq!(vreg(&v, 0), dwords_of(&[21, 42, 63, 84]));

    // Single-stepping (TF): one instruction per exit.
    v.regs.rip = RW + 0x100;
    v.regs.rflags |= 1 << 8;
    a.resolve(&mut v, &mem, emu(&VPADDD)).unwrap();
    assert_eq!(v.regs.rip, RW + 0x104);
    v.regs.rflags &= !(1 << 8);

    // With runs off, one instruction per exit.
    let single = assist().with_max_vector_run(0);
    v.regs.rip = RW + 0x100;
    single.resolve(&mut v, &mem, emu(&VPADDD)).unwrap();
    assert_eq!(v.regs.rip, RW + 0x104);

    // The next instruction on another page is not fetched here: vpaddd ends at the page end.
    mem.write_slice(&VPADDD, GuestAddress(0x10ffc)).unwrap();
    mem.write_slice(&VPXOR, GuestAddress(0x11000)).unwrap();
    v.regs.rip = RW + 0xffc;
    a.resolve(&mut v, &mem, emu(&VPADDD)).unwrap();
    assert_eq!(v.regs.rip, RW + 0x1000);
}
