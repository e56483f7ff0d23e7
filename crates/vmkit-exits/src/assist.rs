//! The emulation assist: what to do when the backend could not emulate a guest instruction.
//!
//! The backend reports an emulation failure as an internal error with the instruction's bytes.
//! The assist decodes them (see [`decode`](crate::decode)) in the vCPU's current mode and asks
//! a policy whether to stop the VM — the default: an instruction nobody can emulate is a VMM or
//! guest bug worth looking at — or to reflect it to the guest as an invalid opcode (`#UD`), as a
//! CPU without the instruction would. It does not emulate instructions itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use log::warn;

use crate::action::{ExitAction, StopReason};
use crate::decode::{CpuMode, DecodedInsn, decode};
use crate::exit::{INTERNAL_ERROR_EMULATION, InsnBytes};
use crate::ratelimit::{LogLimit, MonotonicClock, RateLimiter, Suppressed};
use crate::state::{Exception, VcpuState};

/// The invalid-opcode exception vector (`#UD`).
pub const UD_VECTOR: u8 = 6;

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

/// What to do with an instruction the backend could not emulate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AssistVerdict {
    /// Stop the VM with the internal error.
    Stop,
    /// Inject `#UD` and resume the guest.
    InjectUd,
}

/// Chooses an [`AssistVerdict`] for a decoded instruction.
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

/// The default policy: stop on every emulation failure.
#[derive(Clone, Copy, Debug, Default)]
pub struct StopAlways;

impl AssistPolicy for StopAlways {
    fn verdict(&self, _insn: &DecodedInsn) -> AssistVerdict {
        AssistVerdict::Stop
    }
}

/// Reflects the named instructions (names as [`DecodedInsn::name`] gives them) and stops on
/// the rest.
#[derive(Clone, Debug, Default)]
pub struct ReflectNamed(pub Vec<&'static str>);

impl AssistPolicy for ReflectNamed {
    fn verdict(&self, insn: &DecodedInsn) -> AssistVerdict {
        if self.0.contains(&insn.name) {
            AssistVerdict::InjectUd
        } else {
            AssistVerdict::Stop
        }
    }
}

/// The vCPU access the assist needed failed.
#[derive(Debug, thiserror::Error)]
pub enum AssistError<E: std::error::Error + 'static> {
    /// Reading the vCPU's registers failed: {0}
    #[error("reading the vCPU's registers failed: {0}")]
    Registers(#[source] E),
    /// Injecting #UD failed: {0}
    #[error("injecting #UD failed: {0}")]
    Inject(#[source] E),
}

/// Resolves emulation failures by policy, counting and (rate-limited) logging what it did.
#[derive(Debug)]
pub struct EmulationAssist<P = StopAlways> {
    policy: P,
    reflected: AtomicU64,
    stopped: AtomicU64,
    log: RateLimiter,
}

impl Default for EmulationAssist<StopAlways> {
    fn default() -> Self {
        Self::new(StopAlways)
    }
}

impl<P: AssistPolicy> EmulationAssist<P> {
    /// An assist that asks `policy`, logging at the default [`LogLimit`].
    pub fn new(policy: P) -> Self {
        Self {
            policy,
            reflected: AtomicU64::new(0),
            stopped: AtomicU64::new(0),
            log: RateLimiter::new(LogLimit::default(), Arc::new(MonotonicClock)),
        }
    }

    /// Passes `action` through unless it stops the VM on an internal error; then
    /// [`handle`](Self::handle)s the error. Put it after
    /// [`ExitDispatcher::dispatch`](crate::ExitDispatcher::dispatch).
    pub fn resolve<V: VcpuState + ?Sized>(
        &self,
        vcpu: &mut V,
        action: ExitAction,
    ) -> Result<ExitAction, AssistError<V::Error>> {
        match action {
            ExitAction::Stop(StopReason::InternalError { suberror, insn }) => {
                self.handle(vcpu, suberror, insn)
            }
            other => Ok(other),
        }
    }

    /// Decides an internal error: for an emulation failure with instruction bytes that decode,
    /// the policy's verdict; otherwise stop. Returns the action for the vCPU loop.
    pub fn handle<V: VcpuState + ?Sized>(
        &self,
        vcpu: &mut V,
        suberror: u32,
        insn: Option<InsnBytes>,
    ) -> Result<ExitAction, AssistError<V::Error>> {
        let stop = ExitAction::Stop(StopReason::InternalError { suberror, insn });
        let Some(bytes) = insn.filter(|_| suberror == INTERNAL_ERROR_EMULATION) else {
            self.stopped.fetch_add(1, Ordering::Relaxed);
            return Ok(stop);
        };
        let sregs = vcpu.special_registers().map_err(AssistError::Registers)?;
        let decoded = decode(bytes.as_slice(), CpuMode::from_sregs(&sregs));
        let verdict = decoded
            .as_ref()
            .map_or(AssistVerdict::Stop, |d| self.policy.verdict(d));
        match (verdict, decoded) {
            (AssistVerdict::InjectUd, Ok(d)) => {
                inject_ud(vcpu).map_err(AssistError::Inject)?;
                self.reflected.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = self.log.check() {
                    let rip = vcpu.registers().map_err(AssistError::Registers)?.rip;
                    warn!(
                        "emulation failed on {d} at rip {rip:#x}: injected #UD{}",
                        Suppressed(suppressed)
                    );
                }
                Ok(ExitAction::Resume)
            }
            _ => {
                self.stopped.fetch_add(1, Ordering::Relaxed);
                Ok(stop)
            }
        }
    }

    /// Emulation failures reflected to the guest as `#UD`.
    pub fn reflected(&self) -> u64 {
        self.reflected.load(Ordering::Relaxed)
    }

    /// Internal errors that stopped the VM.
    pub fn stopped(&self) -> u64 {
        self.stopped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Registers, Segment, SpecialRegisters};

    #[derive(Debug, thiserror::Error)]
    #[error("vcpu gone")]
    struct Gone;

    /// An in-memory vCPU in 64-bit mode.
    #[derive(Default)]
    struct MemVcpu {
        regs: Registers,
        sregs: SpecialRegisters,
        injected: Vec<Exception>,
        fail_sregs: bool,
        fail_inject: bool,
    }

    impl MemVcpu {
        fn long_mode() -> Self {
            let mut v = Self::default();
            v.sregs.cr0 = 0x8000_0011;
            v.sregs.efer = 0x500;
            v.sregs.cs = Segment {
                l: true,
                ..Segment::default()
            };
            v.regs.rip = 0xffff_ffff_8100_0000;
            v
        }
    }

    impl VcpuState for MemVcpu {
        type Error = Gone;
        fn registers(&self) -> Result<Registers, Gone> {
            Ok(self.regs)
        }
        fn set_registers(&mut self, regs: &Registers) -> Result<(), Gone> {
            self.regs = *regs;
            Ok(())
        }
        fn special_registers(&self) -> Result<SpecialRegisters, Gone> {
            if self.fail_sregs {
                Err(Gone)
            } else {
                Ok(self.sregs)
            }
        }
        fn set_special_registers(&mut self, sregs: &SpecialRegisters) -> Result<(), Gone> {
            self.sregs = *sregs;
            Ok(())
        }
        fn inject_exception(&mut self, exception: Exception) -> Result<(), Gone> {
            if self.fail_inject {
                return Err(Gone);
            }
            self.injected.push(exception);
            Ok(())
        }
    }

    fn emu(bytes: &[u8]) -> ExitAction {
        ExitAction::Stop(StopReason::InternalError {
            suberror: INTERNAL_ERROR_EMULATION,
            insn: Some(InsnBytes::new(bytes)),
        })
    }

    #[test]
    fn inject_ud_queues_vector_6() {
        let mut v = MemVcpu::long_mode();
        inject_ud(&mut v).unwrap();
        assert_eq!(
            v.injected,
            [Exception {
                vector: 6,
                error_code: None
            }]
        );
    }

    #[test]
    fn policy_reflects_chosen_instructions() {
        let assist = EmulationAssist::new(ReflectNamed(vec!["xrstor", "lock cmpxchg16b"]));
        let mut v = MemVcpu::long_mode();
        let before = v.regs;
        let xrstor = emu(&[0x0f, 0xae, 0x2f]);
        assert_eq!(assist.resolve(&mut v, xrstor).unwrap(), ExitAction::Resume);
        assert_eq!(v.injected.len(), 1);
        assert_eq!(v.injected[0].vector, UD_VECTOR);
        assert_eq!(v.regs, before, "#UD is a fault: rip stays");

        let cx16 = emu(&[0xf0, 0x48, 0x0f, 0xc7, 0x0e]);
        assert_eq!(assist.resolve(&mut v, cx16).unwrap(), ExitAction::Resume);

        let int3 = emu(&[0xcc]);
        assert_eq!(assist.resolve(&mut v, int3).unwrap(), int3);
        assert_eq!((assist.reflected(), assist.stopped()), (2, 1));
        assert_eq!(v.injected.len(), 2);
    }

    #[test]
    fn decoding_follows_the_vcpu_mode() {
        // 0x48 0x0f 0xae 0x2f: in 32-bit mode 0x48 is `dec eax`, not REX.W.
        let assist = EmulationAssist::new(|d: &DecodedInsn| {
            if d.name == "dec" {
                AssistVerdict::InjectUd
            } else {
                AssistVerdict::Stop
            }
        });
        let mut v = MemVcpu::long_mode();
        let action = emu(&[0x48, 0x0f, 0xae, 0x2f]);
        assert_eq!(assist.resolve(&mut v, action).unwrap(), action);
        v.sregs.cs = Segment {
            db: true,
            ..Segment::default()
        };
        v.sregs.efer = 0;
        assert_eq!(assist.resolve(&mut v, action).unwrap(), ExitAction::Resume);
    }

    #[test]
    fn other_actions_and_errors_stop_or_pass() {
        let assist = EmulationAssist::new(|_: &DecodedInsn| AssistVerdict::InjectUd);
        let mut v = MemVcpu::long_mode();
        for a in [
            ExitAction::Resume,
            ExitAction::Halt,
            ExitAction::Stop(StopReason::Reset),
        ] {
            assert_eq!(assist.resolve(&mut v, a).unwrap(), a);
        }
        let other_suberror = ExitAction::Stop(StopReason::InternalError {
            suberror: 3,
            insn: Some(InsnBytes::new(&[0xcc])),
        });
        assert_eq!(
            assist.resolve(&mut v, other_suberror).unwrap(),
            other_suberror
        );
        let no_bytes = ExitAction::Stop(StopReason::InternalError {
            suberror: 1,
            insn: None,
        });
        assert_eq!(assist.resolve(&mut v, no_bytes).unwrap(), no_bytes);
        let undecodable = emu(&[0x66, 0x66]);
        assert_eq!(assist.resolve(&mut v, undecodable).unwrap(), undecodable);
        assert!(v.injected.is_empty());
        assert_eq!(assist.stopped(), 3);

        v.fail_sregs = true;
        let err = assist.resolve(&mut v, emu(&[0xcc])).unwrap_err();
        assert!(matches!(err, AssistError::Registers(Gone)));
        assert_eq!(
            err.to_string(),
            "reading the vCPU's registers failed: vcpu gone"
        );
        v.fail_sregs = false;
        v.fail_inject = true;
        let err = assist.resolve(&mut v, emu(&[0xcc])).unwrap_err();
        assert_eq!(err.to_string(), "injecting #UD failed: vcpu gone");
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn default_stops_always() {
        let assist = EmulationAssist::default();
        let mut v = MemVcpu::long_mode();
        let a = emu(&[0x0f, 0x0b]);
        assert_eq!(assist.resolve(&mut v, a).unwrap(), a);
        assert_eq!(assist.stopped(), 1);
        assert!(ReflectNamed::default().0.is_empty());
        let mut regs = v.regs;
        regs.rax = 1;
        v.set_registers(&regs).unwrap();
        let sregs = v.sregs;
        v.set_special_registers(&sregs).unwrap();
        assert_eq!(v.registers().unwrap().rax, 1);
    }
}
