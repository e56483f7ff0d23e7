//! The emulation assist: completes the instructions a backend could not emulate.
//!
//! A backend reports an emulation failure as an internal error with the instruction's bytes.
//! [`EmulationAssist::handle`] decodes them with iced-x86 in the vCPU's mode, reaches memory
//! operands through segmentation and the guest's page tables (vmkit-paging's walker) in guest
//! memory (vm-memory), and then:
//!
//! - `int3`: queues `#BP` so that the frame's RIP is the byte after the `int3`
//!   ([`SoftExceptionRip`] chooses how, per backend);
//! - `cmpxchg8b` / `cmpxchg16b` (with or without `lock`): a real locked compare-exchange on the
//!   host mapping of guest memory, with the architecture's ZF and RDX:RAX results, `#GP(0)` for
//!   a misaligned 16-byte operand, and a write access (`#PF` on a read-only page, dirty bit set)
//!   in both outcomes;
//! - `xsave`, `xsaveopt`, `xsavec`, `xsaves`, `xrstor`, `xrstors`: converts between the guest's
//!   standard or compacted area and the backend's standard area (see [`xsave`](mod@crate::xsave));
//! - anything else: the policy's verdict — stop with a report (the default) or reflect `#UD`.
//!
//! A completed instruction advances RIP and drops the exception some backends queue together
//! with the failure (only when one is queued); a fault the instruction raises (`#PF` with its
//! error code and CR2, `#GP(0)`, `#SS(0)`, `#UD`) replaces it. Every outcome is counted (per
//! mnemonic for completed instructions, see [`AssistCounts`]) and stops are logged with a report
//! ([`AssistReport`]) at a bounded rate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use iced_x86::{Code, Mnemonic, OpKind};
use log::warn;
use vm_memory::GuestMemoryBackend;

use crate::action::{ExitAction, StopReason};
use crate::decode::{CpuMode, DecodeError, DecodedInsn, decode_at};
use crate::exit::{INTERNAL_ERROR_EMULATION, InsnBytes};
use crate::guest::{Abort, GuestFault, GuestView, Unsupported};
use crate::ratelimit::{LogLimit, MonotonicClock, RateLimiter, Suppressed};
use crate::simd::{self, VectorFile, VectorOp};
use crate::state::{Exception, MSR_IA32_XSS, Registers, SpecialRegisters, VcpuState};
use crate::stats::AssistCounts;
use crate::xsave::{self, XsaveLayout};

/// The invalid-opcode exception vector (`#UD`).
pub const UD_VECTOR: u8 = 6;
/// The breakpoint exception vector (`#BP`).
pub const BP_VECTOR: u8 = 3;

use vmkit_paging::x86::{
    CR0_EM, CR0_MP, CR0_TS, CR4_OSFXSR, CR4_OSXSAVE, RFLAGS_AC, RFLAGS_AF, RFLAGS_CF, RFLAGS_OF,
    RFLAGS_PF, RFLAGS_SF, RFLAGS_TF, RFLAGS_ZF,
};
/// The most vector instructions completed after the one an exit was for, in that exit, by
/// default ([`EmulationAssist::with_max_vector_run`]).
pub const MAX_VECTOR_RUN: usize = 256;
/// Offset of the x87 status word in the XSAVE (FXSAVE) area.
const FSW_OFFSET: usize = 2;
/// FSW.ES: an unmasked x87 exception is pending.
const FSW_ES: u16 = 1 << 7;

/// Queues an invalid-opcode exception (`#UD`, no error code) for the guest's next entry.
///
/// `#UD` is a fault: the guest sees it with `rip` still at the instruction, so no register
/// changes.
pub fn inject_ud<V: VcpuState + ?Sized>(vcpu: &mut V) -> Result<(), V::Error> {
    vcpu.inject_exception(Exception {
        vector: UD_VECTOR,
        error_code: None,
    })
}

/// What to do with an instruction the assist does not emulate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AssistVerdict {
    /// Stop the VM with the internal error.
    Stop,
    /// Inject `#UD` and resume the guest.
    InjectUd,
}

/// Chooses an [`AssistVerdict`] for a decoded instruction the assist does not emulate.
///
/// Closures `Fn(&DecodedInsn) -> AssistVerdict` are policies.
pub trait AssistPolicy: Send + Sync {
    /// The verdict for `insn`.
    fn verdict(&self, insn: &DecodedInsn) -> AssistVerdict;
}

impl<F: Fn(&DecodedInsn) -> AssistVerdict + Send + Sync> AssistPolicy for F {
    fn verdict(&self, insn: &DecodedInsn) -> AssistVerdict {
        self(insn)
    }
}

/// The default policy: stop on every instruction the assist does not emulate.
#[derive(Clone, Copy, Debug, Default)]
pub struct StopAlways;

impl AssistPolicy for StopAlways {
    fn verdict(&self, _insn: &DecodedInsn) -> AssistVerdict {
        AssistVerdict::Stop
    }
}

/// Reflects the named instructions (names as [`DecodedInsn::name`] gives them, such as
/// `"ud2"` or `"lock xadd"`) and stops on the rest.
#[derive(Clone, Debug, Default)]
pub struct ReflectNamed(pub Vec<&'static str>);

impl AssistPolicy for ReflectNamed {
    fn verdict(&self, insn: &DecodedInsn) -> AssistVerdict {
        if self.0.contains(&insn.name.as_str()) {
            AssistVerdict::InjectUd
        } else {
            AssistVerdict::Stop
        }
    }
}

/// How the `#BP` of an emulated `int3` gets the return address the architecture defines (the
/// byte after the `int3`).
///
/// A software exception's frame holds the address of the next instruction. Backends differ in
/// who adds the instruction's length: KVM on VMX injects vector 3 as a software exception and
/// lets the processor add the length it recorded for the last event exit, which userspace
/// cannot set through `KVM_SET_VCPU_EVENTS`; a backend that delivers an injected exception at
/// the current RIP adds nothing.
///
/// The default is [`AdvanceRip`](Self::AdvanceRip) because that is what the KVM hosts that fail
/// on `int3` (nested hosts emulating ring-0 code) need: they deliver the `#BP` injected after
/// an emulation failure at the current RIP and add no length. vmkit-vcpu's KVM test
/// (`tests/kvm_assist.rs`) checks it: a ring-0 guest's `#BP` handler records the frame's RIP,
/// which is the byte after the `int3` with the default; with
/// [`BackendAddsLength`](Self::BackendAddsLength) the frame points at the `int3` itself, and
/// the handler's return runs the `int3` again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SoftExceptionRip {
    /// Move RIP past the `int3`, then inject `#BP` as an exception delivered at RIP: right for
    /// backends that add nothing.
    #[default]
    AdvanceRip,
    /// Leave RIP at the `int3` and inject `#BP`: right for backends that add the instruction
    /// length themselves (an advanced RIP would skip one more instruction there).
    BackendAddsLength,
}

/// The instructions the assist completes, the keys of its per-mnemonic counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Assisted {
    /// `int3`.
    Int3,
    /// `cmpxchg8b`.
    Cmpxchg8b,
    /// `cmpxchg16b`.
    Cmpxchg16b,
    /// `xsave` (and `xsave64`).
    Xsave,
    /// `xsaveopt`.
    Xsaveopt,
    /// `xsavec`.
    Xsavec,
    /// `xsaves`.
    Xsaves,
    /// `xrstor`.
    Xrstor,
    /// `xrstors`.
    Xrstors,
    /// `popcnt`.
    Popcnt,
    /// `lzcnt`.
    Lzcnt,
    /// `tzcnt`.
    Tzcnt,
    /// `clac`.
    Clac,
    /// `stac`.
    Stac,
    /// `fwait` (`wait`).
    Fwait,
    /// `ldmxcsr`.
    Ldmxcsr,
    /// `stmxcsr`.
    Stmxcsr,
    /// `movdqu`, `movups` and their VEX/EVEX forms.
    Movdqu,
    /// `movdqa`, `movaps` and their VEX/EVEX forms.
    Movdqa,
    /// `movd`, `movq` and their VEX forms.
    Movd,
    /// `paddd` and `vpaddd`.
    Paddd,
    /// `paddq` and `vpaddq`.
    Paddq,
    /// `pxor`, `vpxor`, `vpxord`, `vpxorq`.
    Pxor,
    /// `vprord`.
    Vprord,
    /// `pshufd` and `vpshufd`.
    Pshufd,
    /// `vpermi2d`.
    Vpermi2d,
    /// `vextracti128`.
    Vextracti128,
    /// `vzeroupper`.
    Vzeroupper,
    /// `xgetbv`.
    Xgetbv,
}

impl Assisted {
    /// How many there are.
    pub const COUNT: usize = 29;

    /// Every one, in declaration order.
    pub const ALL: [Assisted; Self::COUNT] = [
        Assisted::Int3,
        Assisted::Cmpxchg8b,
        Assisted::Cmpxchg16b,
        Assisted::Xsave,
        Assisted::Xsaveopt,
        Assisted::Xsavec,
        Assisted::Xsaves,
        Assisted::Xrstor,
        Assisted::Xrstors,
        Assisted::Popcnt,
        Assisted::Lzcnt,
        Assisted::Tzcnt,
        Assisted::Clac,
        Assisted::Stac,
        Assisted::Fwait,
        Assisted::Ldmxcsr,
        Assisted::Stmxcsr,
        Assisted::Movdqu,
        Assisted::Movdqa,
        Assisted::Movd,
        Assisted::Paddd,
        Assisted::Paddq,
        Assisted::Pxor,
        Assisted::Vprord,
        Assisted::Pshufd,
        Assisted::Vpermi2d,
        Assisted::Vextracti128,
        Assisted::Vzeroupper,
        Assisted::Xgetbv,
    ];

    /// The mnemonic.
    pub const fn name(self) -> &'static str {
        match self {
            Assisted::Int3 => "int3",
            Assisted::Cmpxchg8b => "cmpxchg8b",
            Assisted::Cmpxchg16b => "cmpxchg16b",
            Assisted::Xsave => "xsave",
            Assisted::Xsaveopt => "xsaveopt",
            Assisted::Xsavec => "xsavec",
            Assisted::Xsaves => "xsaves",
            Assisted::Xrstor => "xrstor",
            Assisted::Xrstors => "xrstors",
            Assisted::Popcnt => "popcnt",
            Assisted::Lzcnt => "lzcnt",
            Assisted::Tzcnt => "tzcnt",
            Assisted::Clac => "clac",
            Assisted::Stac => "stac",
            Assisted::Fwait => "fwait",
            Assisted::Ldmxcsr => "ldmxcsr",
            Assisted::Stmxcsr => "stmxcsr",
            Assisted::Movdqu => "movdqu",
            Assisted::Movdqa => "movdqa",
            Assisted::Movd => "movd/movq",
            Assisted::Paddd => "paddd",
            Assisted::Paddq => "paddq",
            Assisted::Pxor => "pxor",
            Assisted::Vprord => "vprord",
            Assisted::Pshufd => "pshufd",
            Assisted::Vpermi2d => "vpermi2d",
            Assisted::Vextracti128 => "vextracti128",
            Assisted::Vzeroupper => "vzeroupper",
            Assisted::Xgetbv => "xgetbv",
        }
    }

    fn of_vector(op: VectorOp) -> Self {
        match op {
            VectorOp::MoveUnaligned => Assisted::Movdqu,
            VectorOp::MoveAligned => Assisted::Movdqa,
            VectorOp::MoveScalar => Assisted::Movd,
            VectorOp::AddDwords => Assisted::Paddd,
            VectorOp::AddQwords => Assisted::Paddq,
            VectorOp::Xor => Assisted::Pxor,
            VectorOp::RotateDwordsRight => Assisted::Vprord,
            VectorOp::ShuffleDwords => Assisted::Pshufd,
            VectorOp::PermuteTwoTables => Assisted::Vpermi2d,
            VectorOp::Extract128 => Assisted::Vextracti128,
            VectorOp::ZeroUpper => Assisted::Vzeroupper,
        }
    }

    fn of(mnemonic: Mnemonic) -> Option<Self> {
        Some(match mnemonic {
            Mnemonic::Int3 => Assisted::Int3,
            Mnemonic::Cmpxchg8b => Assisted::Cmpxchg8b,
            Mnemonic::Cmpxchg16b => Assisted::Cmpxchg16b,
            Mnemonic::Xsave | Mnemonic::Xsave64 => Assisted::Xsave,
            Mnemonic::Xsaveopt | Mnemonic::Xsaveopt64 => Assisted::Xsaveopt,
            Mnemonic::Xsavec | Mnemonic::Xsavec64 => Assisted::Xsavec,
            Mnemonic::Xsaves | Mnemonic::Xsaves64 => Assisted::Xsaves,
            Mnemonic::Xrstor | Mnemonic::Xrstor64 => Assisted::Xrstor,
            Mnemonic::Xrstors | Mnemonic::Xrstors64 => Assisted::Xrstors,
            Mnemonic::Popcnt => Assisted::Popcnt,
            Mnemonic::Lzcnt => Assisted::Lzcnt,
            Mnemonic::Tzcnt => Assisted::Tzcnt,
            Mnemonic::Clac => Assisted::Clac,
            Mnemonic::Stac => Assisted::Stac,
            Mnemonic::Wait => Assisted::Fwait,
            Mnemonic::Ldmxcsr => Assisted::Ldmxcsr,
            Mnemonic::Stmxcsr => Assisted::Stmxcsr,
            Mnemonic::Xgetbv => Assisted::Xgetbv,
            other => return VectorOp::of(other).map(Self::of_vector),
        })
    }
}

/// Why the assist stopped the VM, with what a person needs to look into it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssistReport {
    /// The instruction in Intel syntax, or why it did not decode.
    pub insn: String,
    /// Its bytes as the backend reported them.
    pub bytes: InsnBytes,
    /// The vCPU's mode.
    pub mode: CpuMode,
    /// The general-purpose registers (RIP at the instruction).
    pub regs: Registers,
    /// Why the assist did not complete it.
    pub reason: String,
}

impl std::fmt::Display for AssistReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.regs;
        write!(f, "{} [", self.insn)?;
        for (i, b) in self.bytes.as_slice().iter().enumerate() {
            write!(f, "{}{b:02x}", if i == 0 { "" } else { " " })?;
        }
        write!(
            f,
            "] at rip {:#x} ({}): {}; rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} \
             rdi={:#x} rbp={:#x} rsp={:#x} rflags={:#x}",
            r.rip,
            self.mode,
            self.reason,
            r.rax,
            r.rbx,
            r.rcx,
            r.rdx,
            r.rsi,
            r.rdi,
            r.rbp,
            r.rsp,
            r.rflags
        )
    }
}

/// The vCPU access the assist needed failed.
#[derive(Debug, displaydoc::Display, thiserror::Error)]
#[ignore_extra_doc_attributes]
pub enum AssistError<E: std::error::Error + 'static> {
    /// reading the vCPU's registers failed
    Registers(#[source] E),
    /// injecting an exception failed
    Inject(#[source] E),
    /// updating the vCPU's state failed
    Update(#[source] E),
}

impl<E: std::error::Error + 'static> AssistError<E> {
    /// The backend's error.
    pub fn into_source(self) -> E {
        match self {
            AssistError::Registers(e) | AssistError::Inject(e) | AssistError::Update(e) => e,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    completed: [AtomicU64; Assisted::COUNT],
    faulted: AtomicU64,
    reflected: AtomicU64,
    stopped: AtomicU64,
}

/// Completes instructions a backend could not emulate, counting and (rate-limited) logging
/// what it did.
///
/// Share one between vCPU threads (`&EmulationAssist` or an `Arc`): it holds only counters, the
/// log limiter and configuration.
#[derive(Debug)]
pub struct EmulationAssist<P = StopAlways> {
    policy: P,
    soft_exception: SoftExceptionRip,
    layout: XsaveLayout,
    max_vector_run: usize,
    counters: Counters,
    last_report: Mutex<Option<AssistReport>>,
    log: RateLimiter,
}

impl Default for EmulationAssist<StopAlways> {
    fn default() -> Self {
        Self::new(StopAlways)
    }
}

/// The result of emulating one instruction.
type Emulated = Result<Assisted, Abort>;

/// A value, or the fault or stop that ends the instruction.
type Guarded<T> = Result<T, Abort>;

impl<P: AssistPolicy> EmulationAssist<P> {
    /// An assist that asks `policy` about instructions it does not emulate, with
    /// [`SoftExceptionRip::AdvanceRip`], the host's XSAVE layout (CPUID leaf 0xD) and logging
    /// at the default [`LogLimit`].
    pub fn new(policy: P) -> Self {
        #[cfg(target_arch = "x86_64")]
        let layout = XsaveLayout::host();
        #[cfg(not(target_arch = "x86_64"))]
        let layout = XsaveLayout::default();
        Self {
            policy,
            soft_exception: SoftExceptionRip::default(),
            max_vector_run: MAX_VECTOR_RUN,
            layout,
            counters: Counters::default(),
            last_report: Mutex::new(None),
            log: RateLimiter::new(LogLimit::default(), Arc::new(MonotonicClock)),
        }
    }

    /// This assist with `strategy` for the `#BP` of `int3`.
    pub fn with_soft_exception_rip(mut self, strategy: SoftExceptionRip) -> Self {
        self.soft_exception = strategy;
        self
    }

    /// This assist completing at most `count` vector instructions after the one an exit was
    /// for, in the same exit (default [`MAX_VECTOR_RUN`]; 0: one instruction per exit).
    pub fn with_max_vector_run(mut self, count: usize) -> Self {
        self.max_vector_run = count;
        self
    }

    /// This assist with the XSAVE component layout `layout` (the guest's CPUID leaf 0xD).
    pub fn with_xsave_layout(mut self, layout: XsaveLayout) -> Self {
        self.layout = layout;
        self
    }

    /// Passes `action` through unless it stops the VM on an internal error; then
    /// [`handle`](Self::handle)s the error. Put it after
    /// [`ExitDispatcher::dispatch`](crate::ExitDispatcher::dispatch).
    pub fn resolve<V, M>(
        &self,
        vcpu: &mut V,
        memory: &M,
        action: ExitAction,
    ) -> Result<ExitAction, AssistError<V::Error>>
    where
        V: VcpuState + ?Sized,
        M: GuestMemoryBackend + ?Sized,
    {
        match action {
            ExitAction::Stop(StopReason::InternalError { suberror, insn }) => {
                self.handle(vcpu, memory, suberror, insn)
            }
            other => Ok(other),
        }
    }

    /// Handles an internal error: an emulation failure with instruction bytes is completed,
    /// faulted or reflected as the instruction and the policy say (the action is then
    /// [`ExitAction::Resume`]); everything else stops the VM. Never panics, whatever the guest
    /// put in its registers, page tables or memory.
    pub fn handle<V, M>(
        &self,
        vcpu: &mut V,
        memory: &M,
        suberror: u32,
        insn: Option<InsnBytes>,
    ) -> Result<ExitAction, AssistError<V::Error>>
    where
        V: VcpuState + ?Sized,
        M: GuestMemoryBackend + ?Sized,
    {
        let stop = ExitAction::Stop(StopReason::InternalError { suberror, insn });
        let Some(bytes) = insn.filter(|_| suberror == INTERNAL_ERROR_EMULATION) else {
            self.counters.stopped.fetch_add(1, Ordering::Relaxed);
            return Ok(stop);
        };
        let regs = vcpu.registers().map_err(AssistError::Registers)?;
        let sregs = vcpu.special_registers().map_err(AssistError::Registers)?;
        let mode = CpuMode::from_sregs(&sregs);
        let decoded = match decode_at(bytes.as_slice(), mode, regs.rip) {
            Ok(d) => d,
            Err(e) => {
                self.report(bytes, mode, regs, describe_error(e), e.to_string());
                return Ok(stop);
            }
        };
        let Some(kind) = Assisted::of(decoded.instruction.mnemonic()) else {
            return match self.policy.verdict(&decoded) {
                AssistVerdict::InjectUd => {
                    inject_ud(vcpu).map_err(AssistError::Inject)?;
                    self.counters.reflected.fetch_add(1, Ordering::Relaxed);
                    self.log_line(format_args!(
                        "emulation failed on {} at rip {:#x}: injected #UD",
                        decoded.text(),
                        regs.rip
                    ));
                    Ok(ExitAction::Resume)
                }
                AssistVerdict::Stop => {
                    let reason = Unsupported::Instruction.to_string();
                    self.report(bytes, mode, regs, decoded.text(), reason);
                    Ok(stop)
                }
            };
        };
        let mut emulator = Emulator {
            view: GuestView::new(memory, regs, sregs, mode),
            insn: &decoded,
            layout: &self.layout,
            soft_exception: self.soft_exception,
        };
        match emulator.run(vcpu) {
            Ok(Ok(kind)) => {
                self.counters.completed[kind as usize].fetch_add(1, Ordering::Relaxed);
                let after = emulator.view.regs;
                self.continue_vector_run(vcpu, memory, regs.rip, after, sregs, mode)?;
                Ok(ExitAction::Resume)
            }
            Ok(Err(Abort::Fault(fault))) => {
                if let GuestFault::PageFault {
                    address,
                    error_code,
                } = fault
                {
                    vcpu.inject_page_fault(address, error_code)
                } else {
                    vcpu.inject_exception(fault.exception())
                }
                .map_err(AssistError::Inject)?;
                self.counters.faulted.fetch_add(1, Ordering::Relaxed);
                let _ = kind;
                Ok(ExitAction::Resume)
            }
            Ok(Err(Abort::Stop(why))) => {
                self.report(bytes, mode, regs, decoded.text(), why.to_string());
                Ok(stop)
            }
            Err(e) => Err(e),
        }
    }

    /// After a completed instruction, completes the vector instructions that follow it on the
    /// page the backend fetched it from, in the same exit, up to [`MAX_VECTOR_RUN`]: ring-0
    /// SIMD code (BLAKE2s) is hundreds of such instructions in a row, each of which would
    /// otherwise cost a VM exit.
    /// Stops, leaving the vCPU at that instruction, at anything else: a non-vector instruction,
    /// one that would fault or that the assist reports, the end of the page (the next one may
    /// not be executable), or single-stepping (RFLAGS.TF). Whatever stops the run has had no
    /// effect; the guest then executes it (or exits for it) as usual.
    fn continue_vector_run<V, M>(
        &self,
        vcpu: &mut V,
        memory: &M,
        first_rip: u64,
        mut regs: Registers,
        sregs: SpecialRegisters,
        mode: CpuMode,
    ) -> Result<(), AssistError<V::Error>>
    where
        V: VcpuState + ?Sized,
        M: GuestMemoryBackend + ?Sized,
    {
        let page = first_rip >> 12;
        for _ in 0..self.max_vector_run {
            if regs.rflags & RFLAGS_TF != 0 || regs.rip >> 12 != page {
                break;
            }
            let view = GuestView::new(memory, regs, sregs, mode);
            let Some(bytes) = view.instruction_bytes_on_page() else {
                break;
            };
            let Ok(decoded) = decode_at(&bytes, mode, regs.rip) else {
                break;
            };
            if VectorOp::of(decoded.instruction.mnemonic()).is_none() {
                break;
            }
            let mut emulator = Emulator {
                view,
                insn: &decoded,
                layout: &self.layout,
                soft_exception: self.soft_exception,
            };
            match emulator.run(vcpu)? {
                Ok(kind) => {
                    self.counters.completed[kind as usize].fetch_add(1, Ordering::Relaxed);
                    regs = emulator.view.regs;
                }
                Err(_) => break,
            }
        }
        Ok(())
    }

    fn log_line(&self, line: std::fmt::Arguments<'_>) {
        if let Some(suppressed) = self.log.check() {
            warn!("{line}{}", Suppressed(suppressed));
        }
    }

    fn report(&self, bytes: InsnBytes, mode: CpuMode, regs: Registers, insn: String, why: String) {
        self.counters.stopped.fetch_add(1, Ordering::Relaxed);
        let report = AssistReport {
            insn,
            bytes,
            mode,
            regs,
            reason: why,
        };
        self.log_line(format_args!("emulation failure: {report}"));
        *self
            .last_report
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(report);
    }

    /// The report of the last stop, if any.
    pub fn last_report(&self) -> Option<AssistReport> {
        self.last_report
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The counts so far; [`ExitStats::with_assist`](crate::ExitStats::with_assist) adds them
    /// to a dispatcher's statistics table.
    pub fn counts(&self) -> AssistCounts {
        AssistCounts {
            completed: std::array::from_fn(|i| self.counters.completed[i].load(Ordering::Relaxed)),
            faulted: self.counters.faulted.load(Ordering::Relaxed),
            reflected: self.counters.reflected.load(Ordering::Relaxed),
            stopped: self.counters.stopped.load(Ordering::Relaxed),
        }
    }

    /// Instructions reflected to the guest as `#UD` by the policy.
    pub fn reflected(&self) -> u64 {
        self.counters.reflected.load(Ordering::Relaxed)
    }

    /// Internal errors that stopped the VM.
    pub fn stopped(&self) -> u64 {
        self.counters.stopped.load(Ordering::Relaxed)
    }
}

fn describe_error(e: DecodeError) -> String {
    match e {
        DecodeError::Empty => "no instruction bytes".into(),
        DecodeError::Truncated => "truncated instruction".into(),
        DecodeError::Invalid => "invalid instruction".into(),
    }
}

/// One instruction's emulation.
struct Emulator<'a, M: ?Sized> {
    view: GuestView<'a, M>,
    insn: &'a DecodedInsn,
    layout: &'a XsaveLayout,
    soft_exception: SoftExceptionRip,
}

impl<M: GuestMemoryBackend + ?Sized> Emulator<'_, M> {
    /// Emulates the instruction; the outer error is the backend's, the inner the guest's
    /// outcome. On success the registers (RIP past the instruction) are written back and a
    /// queued exception dropped.
    fn run<V: VcpuState + ?Sized>(
        &mut self,
        vcpu: &mut V,
    ) -> Result<Emulated, AssistError<V::Error>> {
        let kind = match Assisted::of(self.insn.instruction.mnemonic()) {
            Some(kind) => kind,
            None => return Ok(Err(Unsupported::Instruction.into())),
        };
        let outcome = match kind {
            Assisted::Int3 => return self.int3(vcpu),
            Assisted::Cmpxchg8b | Assisted::Cmpxchg16b => self.cmpxchg(),
            Assisted::Xsave | Assisted::Xsaveopt | Assisted::Xsavec | Assisted::Xsaves => {
                self.xsave(vcpu, kind)?
            }
            Assisted::Xrstor | Assisted::Xrstors => self.xrstor(vcpu, kind)?,
            Assisted::Popcnt | Assisted::Lzcnt | Assisted::Tzcnt => self.bit_count(kind),
            Assisted::Clac | Assisted::Stac => self.alignment_check(kind == Assisted::Stac),
            Assisted::Fwait => self.fwait(vcpu)?,
            Assisted::Ldmxcsr | Assisted::Stmxcsr => self.mxcsr(vcpu, kind == Assisted::Ldmxcsr)?,
            Assisted::Xgetbv => self.xgetbv(vcpu)?,
            _ => self.vector(vcpu)?,
        };
        if let Err(abort) = outcome {
            return Ok(Err(abort));
        }
        self.advance_rip();
        if vcpu
            .pending_exception()
            .map_err(AssistError::Registers)?
            .is_some()
        {
            vcpu.clear_pending_exception()
                .map_err(AssistError::Update)?;
        }
        vcpu.set_registers(&self.view.regs)
            .map_err(AssistError::Update)?;
        Ok(Ok(kind))
    }

    fn advance_rip(&mut self) {
        let mask = match self.view.mode {
            CpuMode::Bits16 => 0xffff,
            CpuMode::Bits32 => 0xffff_ffff,
            CpuMode::Bits64 => u64::MAX,
        };
        let rip = &mut self.view.regs.rip;
        *rip = rip.wrapping_add(self.insn.len as u64) & mask;
    }

    fn int3<V: VcpuState + ?Sized>(
        &mut self,
        vcpu: &mut V,
    ) -> Result<Emulated, AssistError<V::Error>> {
        if self.soft_exception == SoftExceptionRip::AdvanceRip {
            self.advance_rip();
            vcpu.set_registers(&self.view.regs)
                .map_err(AssistError::Update)?;
        }
        vcpu.inject_exception(Exception {
            vector: BP_VECTOR,
            error_code: None,
        })
        .map_err(AssistError::Inject)?;
        Ok(Ok(Assisted::Int3))
    }

    /// `popcnt`, `lzcnt` and `tzcnt`: a 16-, 32- or 64-bit count of the source (a register or
    /// memory) into the destination register, with the flags each defines (`popcnt`: ZF when
    /// the source is zero, OF, SF, AF, CF and PF clear; `lzcnt`/`tzcnt`: CF when the source is
    /// zero, ZF when the count is; their other flags are undefined and kept).
    fn bit_count(&mut self, kind: Assisted) -> Result<(), Abort> {
        let insn = &self.insn.instruction;
        let dest = insn.op0_register();
        let bits = u32::try_from(dest.size() * 8).map_err(|_| Unsupported::Instruction)?;
        if !matches!(bits, 16 | 32 | 64) {
            return Err(Unsupported::Instruction.into());
        }
        let source = match insn.op1_kind() {
            OpKind::Register => self
                .view
                .gpr(insn.op1_register())
                .ok_or(Unsupported::Instruction)?,
            OpKind::Memory => {
                let size = bits as usize / 8;
                let la = self.view.linear(insn, 1, size as u64, false)?;
                let mapped = self.view.map(la, size, false)?;
                let mut bytes = [0u8; 8];
                self.view.read(&mapped, &mut bytes[..size])?;
                u64::from_le_bytes(bytes)
            }
            _ => return Err(Unsupported::Instruction.into()),
        };
        let (count, mut set, clear) = match kind {
            Assisted::Popcnt => (
                u64::from(source.count_ones()),
                if source == 0 { RFLAGS_ZF } else { 0 },
                RFLAGS_ZF | RFLAGS_OF | RFLAGS_SF | RFLAGS_AF | RFLAGS_CF | RFLAGS_PF,
            ),
            Assisted::Lzcnt => (
                u64::from(source.leading_zeros() - (64 - bits)),
                0,
                RFLAGS_ZF | RFLAGS_CF,
            ),
            _ => (
                u64::from(source.trailing_zeros().min(bits)),
                0,
                RFLAGS_ZF | RFLAGS_CF,
            ),
        };
        if kind != Assisted::Popcnt {
            if source == 0 {
                set |= RFLAGS_CF;
            }
            if count == 0 {
                set |= RFLAGS_ZF;
            }
        }
        self.view
            .set_gpr(dest, count)
            .ok_or(Unsupported::Instruction)?;
        let r = &mut self.view.regs;
        r.rflags = (r.rflags & !clear) | set;
        Ok(())
    }

    /// `clac` and `stac`: clear or set RFLAGS.AC, which with SMAP lets ring 0 reach user pages;
    /// `#UD` outside ring 0.
    fn alignment_check(&mut self, set: bool) -> Result<(), Abort> {
        if self.view.cpl() != 0 {
            return Err(GuestFault::InvalidOpcode.into());
        }
        let r = &mut self.view.regs;
        r.rflags = if set {
            r.rflags | RFLAGS_AC
        } else {
            r.rflags & !RFLAGS_AC
        };
        Ok(())
    }

    /// `fwait`: `#NM` when CR0.MP and CR0.TS are both set, `#MF` when the x87 status word
    /// (in the vCPU's XSAVE area) says an unmasked exception is pending, else nothing.
    fn fwait<V: VcpuState + ?Sized>(
        &mut self,
        vcpu: &mut V,
    ) -> Result<Result<(), Abort>, AssistError<V::Error>> {
        let cr0 = self.view.sregs.cr0;
        if cr0 & CR0_MP != 0 && cr0 & CR0_TS != 0 {
            return Ok(Err(GuestFault::DeviceNotAvailable.into()));
        }
        let area = vcpu.xsave().map_err(AssistError::Registers)?;
        let fsw = area
            .get(FSW_OFFSET..FSW_OFFSET + 2)
            .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
        if fsw & FSW_ES != 0 {
            return Ok(Err(GuestFault::FloatingPoint.into()));
        }
        Ok(Ok(()))
    }

    /// `ldmxcsr` / `stmxcsr`: MXCSR from or to a 32-bit memory operand, through the vCPU's
    /// XSAVE area. `#UD` with CR0.EM set or CR4.OSFXSR clear, `#NM` with CR0.TS set, `#GP(0)`
    /// when a loaded value sets a bit MXCSR_MASK does not allow.
    fn mxcsr<V: VcpuState + ?Sized>(
        &mut self,
        vcpu: &mut V,
        load: bool,
    ) -> Result<Result<(), Abort>, AssistError<V::Error>> {
        let (cr0, cr4) = (self.view.sregs.cr0, self.view.sregs.cr4);
        if cr0 & CR0_EM != 0 || cr4 & CR4_OSFXSR == 0 {
            return Ok(Err(GuestFault::InvalidOpcode.into()));
        }
        if cr0 & CR0_TS != 0 {
            return Ok(Err(GuestFault::DeviceNotAvailable.into()));
        }
        let mut area = vcpu.xsave().map_err(AssistError::Registers)?;
        let operand = self
            .view
            .linear(&self.insn.instruction, 0, 4, !load)
            .and_then(|la| self.view.map(la, 4, !load));
        let mapped = match operand {
            Ok(mapped) => mapped,
            Err(abort) => return Ok(Err(abort)),
        };
        if load {
            let mut bytes = [0u8; 4];
            if let Err(abort) = self.view.read(&mapped, &mut bytes) {
                return Ok(Err(abort));
            }
            if xsave::set_mxcsr(&mut area, u32::from_le_bytes(bytes)).is_err() {
                return Ok(Err(GuestFault::GeneralProtection.into()));
            }
            vcpu.set_xsave(&area).map_err(AssistError::Update)?;
            Ok(Ok(()))
        } else {
            let value = xsave::mxcsr(&area).to_le_bytes();
            Ok(self.view.write(&mapped, &value))
        }
    }

    /// `xgetbv`: EDX:EAX = XCR0 for ECX = 0, XCR0 & XINUSE (the components not in their
    /// initial state, as the XSAVE area's XSTATE_BV says) for ECX = 1; `#GP(0)` for other ECX,
    /// `#UD` with CR4.OSXSAVE clear.
    fn xgetbv<V: VcpuState + ?Sized>(
        &mut self,
        vcpu: &mut V,
    ) -> Result<Result<(), Abort>, AssistError<V::Error>> {
        if self.view.sregs.cr4 & CR4_OSXSAVE == 0 {
            return Ok(Err(GuestFault::InvalidOpcode.into()));
        }
        let xcr0 = vcpu.xcr0().map_err(AssistError::Registers)?;
        let value = match self.view.regs.rcx & 0xffff_ffff {
            0 => xcr0,
            1 => {
                let area = vcpu.xsave().map_err(AssistError::Registers)?;
                xcr0 & xsave::header(&area).0
            }
            _ => return Ok(Err(GuestFault::GeneralProtection.into())),
        };
        self.view.regs.rax = value & 0xffff_ffff;
        self.view.regs.rdx = value >> 32;
        Ok(Ok(()))
    }

    /// A vector instruction (see [`simd`](crate::simd)), on the vector registers in the vCPU's
    /// XSAVE area, which is written back when the instruction changed it.
    fn vector<V: VcpuState + ?Sized>(
        &mut self,
        vcpu: &mut V,
    ) -> Result<Result<(), Abort>, AssistError<V::Error>> {
        let insn = &self.insn.instruction;
        let Some(op) = VectorOp::of(insn.mnemonic()) else {
            return Ok(Err(Unsupported::Instruction.into()));
        };
        let xcr0 = vcpu.xcr0().map_err(AssistError::Registers)?;
        let mut area = vcpu.xsave().map_err(AssistError::Registers)?;
        let before = area.clone();
        let mut file = VectorFile::new(&mut area, self.layout, xcr0);
        if let Err(abort) = simd::execute(&mut self.view, insn, op, &mut file) {
            return Ok(Err(abort));
        }
        if area != before {
            vcpu.set_xsave(&area).map_err(AssistError::Update)?;
        }
        Ok(Ok(()))
    }

    fn cmpxchg(&mut self) -> Result<(), Abort> {
        let wide = self.insn.instruction.code() == Code::Cmpxchg16b_m128;
        let size: usize = if wide { 16 } else { 8 };
        let la = self
            .view
            .linear(&self.insn.instruction, 0, size as u64, true)?;
        if wide && la % 16 != 0 {
            return Err(GuestFault::GeneralProtection.into());
        }
        // A write access in both outcomes: the processor writes the old value back on failure.
        let mapped = self.view.map(la, size, true)?;
        let Registers {
            rax, rbx, rcx, rdx, ..
        } = self.view.regs;
        let swapped;
        if wide {
            let expected = u128::from(rax) | (u128::from(rdx) << 64);
            let new = u128::from(rbx) | (u128::from(rcx) << 64);
            let result = self
                .view
                .with_host_operand(&mapped, size, |p| cmpxchg16b(p, expected, new))??;
            swapped = result.swapped;
            if !swapped {
                self.view.regs.rax = result.previous as u64;
                self.view.regs.rdx = (result.previous >> 64) as u64;
            }
        } else {
            let expected = (rax & 0xffff_ffff) | (rdx << 32);
            let new = (rbx & 0xffff_ffff) | (rcx << 32);
            let result = self
                .view
                .with_host_operand(&mapped, size, |p| cmpxchg8b(p, expected, new))??;
            swapped = result.swapped;
            if !swapped {
                self.view.regs.rax = result.previous & 0xffff_ffff;
                self.view.regs.rdx = result.previous >> 32;
            }
        }
        let r = &mut self.view.regs;
        r.rflags = if swapped {
            r.rflags | RFLAGS_ZF
        } else {
            r.rflags & !RFLAGS_ZF
        };
        Ok(())
    }

    /// RFBM for an XSAVE-family instruction, after its `#UD`/`#GP` checks.
    fn rfbm<V: VcpuState + ?Sized>(
        &self,
        vcpu: &V,
        supervisor: bool,
    ) -> Result<Guarded<(u64, u64)>, AssistError<V::Error>> {
        if self.view.sregs.cr4 & CR4_OSXSAVE == 0 {
            return Ok(Err(GuestFault::InvalidOpcode.into()));
        }
        if supervisor && self.view.cpl() != 0 {
            return Ok(Err(GuestFault::GeneralProtection.into()));
        }
        let xcr0 = vcpu.xcr0().map_err(AssistError::Registers)?;
        let xss = if supervisor {
            vcpu.msr(MSR_IA32_XSS)
                .map_err(AssistError::Registers)?
                .unwrap_or(0)
        } else {
            0
        };
        let allowed = xcr0 | xss;
        let r = &self.view.regs;
        let rfbm = allowed & ((r.rax & 0xffff_ffff) | (r.rdx << 32));
        if let Some(i) = self.layout.unrepresentable(rfbm) {
            return Ok(Err(Unsupported::XsaveComponent(i).into()));
        }
        Ok(Ok((rfbm, allowed)))
    }

    fn xsave<V: VcpuState + ?Sized>(
        &mut self,
        vcpu: &mut V,
        kind: Assisted,
    ) -> Result<Result<(), Abort>, AssistError<V::Error>> {
        let compacted = matches!(kind, Assisted::Xsavec | Assisted::Xsaves);
        let (rfbm, _) = match self.rfbm(vcpu, kind == Assisted::Xsaves)? {
            Ok(v) => v,
            Err(abort) => return Ok(Err(abort)),
        };
        let len = xsave::area_len(self.layout, rfbm, compacted.then_some(rfbm));
        let area = vcpu.xsave().map_err(AssistError::Registers)?;
        Ok(self.store(&area, rfbm, len, compacted))
    }

    fn store(&self, area: &[u8], rfbm: u64, len: usize, compacted: bool) -> Result<(), Abort> {
        let la = self
            .view
            .linear(&self.insn.instruction, 0, len as u64, true)?;
        if la % 64 != 0 {
            return Err(GuestFault::GeneralProtection.into());
        }
        let mapped = self.view.map(la, len, true)?;
        let mut guest = vec![0u8; len];
        self.view.read(&mapped, &mut guest)?;
        xsave::store(self.layout, area, &mut guest, rfbm, compacted)
            .ok_or(Unsupported::XsaveComponent(0))?;
        self.view.write(&mapped, &guest)
    }

    fn xrstor<V: VcpuState + ?Sized>(
        &mut self,
        vcpu: &mut V,
        kind: Assisted,
    ) -> Result<Result<(), Abort>, AssistError<V::Error>> {
        let supervisor = kind == Assisted::Xrstors;
        let (rfbm, allowed) = match self.rfbm(vcpu, supervisor)? {
            Ok(v) => v,
            Err(abort) => return Ok(Err(abort)),
        };
        let mut area = vcpu.xsave().map_err(AssistError::Registers)?;
        if let Err(abort) = self.load(&mut area, rfbm, allowed, supervisor) {
            return Ok(Err(abort));
        }
        vcpu.set_xsave(&area).map_err(AssistError::Update)?;
        Ok(Ok(()))
    }

    fn load(&self, area: &mut [u8], rfbm: u64, allowed: u64, compact: bool) -> Result<(), Abort> {
        const HEADER_END: usize = xsave::HEADER + 64;
        let la = self
            .view
            .linear(&self.insn.instruction, 0, HEADER_END as u64, false)?;
        if la % 64 != 0 {
            return Err(GuestFault::GeneralProtection.into());
        }
        let head = self.view.map(la, HEADER_END, false)?;
        let mut guest = vec![0u8; HEADER_END];
        self.view.read(&head, &mut guest)?;
        let (bv, xcomp) = xsave::check_header(&guest, allowed, compact)
            .map_err(|_| GuestFault::GeneralProtection)?;
        if let Some(x) = xcomp
            && let Some(i) = self.layout.unrepresentable(xsave::extended(x))
        {
            return Err(Unsupported::XsaveComponent(i).into());
        }
        let len = xsave::area_len(self.layout, rfbm, xcomp);
        self.view
            .linear(&self.insn.instruction, 0, len as u64, false)?;
        let mapped = self.view.map(la, len, false)?;
        guest.resize(len, 0);
        self.view.read(&mapped, &mut guest)?;
        xsave::restore(self.layout, area, &guest, rfbm, bv, xcomp)
            .map_err(|_| GuestFault::GeneralProtection.into())
    }
}

#[cfg(target_arch = "x86_64")]
fn cmpxchg16b(
    p: *mut u8,
    expected: u128,
    new: u128,
) -> Result<crate::atomic::Exchanged<u128>, Abort> {
    if !(p as usize).is_multiple_of(16) {
        return Err(Unsupported::HostAtomic.into());
    }
    // Other vCPUs may access the bytes concurrently: the locked instruction is atomic with
    // respect to them.
    // SAFETY: `with_host_operand` hands a pointer valid for reads and writes of 16 bytes of one
    // mapped guest region while the closure runs; it was just checked to be 16-byte aligned.
    Ok(unsafe { crate::atomic::cmpxchg16b(p, expected, new) })
}

#[cfg(target_arch = "x86_64")]
fn cmpxchg8b(p: *mut u8, expected: u64, new: u64) -> Result<crate::atomic::Exchanged<u64>, Abort> {
    // SAFETY: `with_host_operand` hands a pointer valid for reads and writes of 8 bytes of one
    // mapped guest region, within one cache line, while the closure runs (no alignment needed).
    Ok(unsafe { crate::atomic::cmpxchg8b(p, expected, new) })
}

#[cfg(not(target_arch = "x86_64"))]
fn cmpxchg16b(_: *mut u8, _: u128, _: u128) -> Result<crate::atomic::Exchanged<u128>, Abort> {
    Err(Unsupported::HostAtomic.into())
}

#[cfg(not(target_arch = "x86_64"))]
fn cmpxchg8b(_: *mut u8, _: u64, _: u64) -> Result<crate::atomic::Exchanged<u64>, Abort> {
    Err(Unsupported::HostAtomic.into())
}

#[cfg(test)]
#[path = "assist_tests.rs"]
mod tests;
