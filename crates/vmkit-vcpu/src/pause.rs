//! Pausing a running vCPU from another thread to inspect it between two entries.
//!
//! A debugger, a sampler or a consistency check needs a vCPU's state at one instant while the
//! guest runs: its registers and control registers, `KVM_TRANSLATE`, guest memory as the guest
//! left it. An [`Inspector`] holds that inspection: a closure the run loop calls on the vCPU's
//! own thread, with `&mut` access to the vCPU, between two entries into the guest. A
//! [`PauseHandle`], cloned to any thread, asks for it: [`PauseHandle::pause`] raises the
//! inspector's flag and kicks the vCPU, so that a guest that does not exit on its own is
//! interrupted too.
//!
//! [`run_until_stop_inspected`](crate::run::run_until_stop_inspected) and
//! [`run_until_stop_with_assist_inspected`](crate::run::run_until_stop_with_assist_inspected)
//! look at the flag before every entry, with one relaxed atomic load; the loops without an
//! inspector do not look at all. Requests do not queue: several before the loop sees them run the
//! inspection once. The inspection may block (a debugger waiting for its next command): the vCPU
//! stays paused until it returns, and its [`ControlFlow`] says whether the loop goes on.
//!
//! ```
//! use std::ops::ControlFlow;
//! use std::sync::atomic::AtomicBool;
//! use vmkit_exits::{ExitAction, VcpuState, VmExit};
//! use vmkit_vcpu::fake::{FakeVcpu, ScriptedExit};
//! use vmkit_vcpu::{Inspector, LoopExit, Vcpu, run_until_stop_inspected};
//!
//! let mut vcpu = FakeVcpu::new(0);
//! vcpu.push(ScriptedExit::Hlt);
//! let mut seen_rip = None;
//! let mut inspector = Inspector::new(|vcpu: &mut FakeVcpu| {
//!     seen_rip = vcpu.registers().ok().map(|regs| regs.rip);
//!     ControlFlow::Break(())
//! });
//! // Another thread would hold the handle; here the request is already waiting.
//! inspector.handle(vcpu.kicker()).pause();
//! let handler = |_: VmExit<'_>| ExitAction::Resume;
//! let exit = run_until_stop_inspected(&mut vcpu, &handler, &AtomicBool::new(false), &mut inspector);
//! assert_eq!(exit, Ok(LoopExit::StopRequested));
//! assert_eq!(seen_rip, Some(0));
//! ```

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::hypervisor::Kick;

/// The run loop's side of a pause: the inspection and the flag that asks for it.
#[derive(Debug)]
pub struct Inspector<F> {
    requested: Arc<AtomicBool>,
    inspect: F,
}

impl<F> Inspector<F> {
    /// An inspector that calls `inspect` with the vCPU whenever a pause was requested.
    ///
    /// `inspect` returns [`ControlFlow::Continue`] to resume the guest, or
    /// [`ControlFlow::Break`] to end the loop with
    /// [`LoopExit::StopRequested`](crate::run::LoopExit::StopRequested).
    pub fn new(inspect: F) -> Self {
        Self {
            requested: Arc::default(),
            inspect,
        }
    }

    /// A handle that pauses the vCPU `kicker` kicks (the one this inspector's loop runs).
    pub fn handle<K: Kick>(&self, kicker: K) -> PauseHandle<K> {
        PauseHandle {
            requested: self.requested.clone(),
            kicker,
        }
    }

    /// Runs the inspection if a pause was requested since the last one, and says whether the
    /// loop goes on.
    pub(crate) fn poll<V>(&mut self, vcpu: &mut V) -> ControlFlow<()>
    where
        V: ?Sized,
        F: FnMut(&mut V) -> ControlFlow<()>,
    {
        // The common case is one relaxed load; the swap orders the requester's writes (Acquire)
        // before the inspection and consumes the request.
        if self.requested.load(Ordering::Relaxed) && self.requested.swap(false, Ordering::Acquire) {
            (self.inspect)(vcpu)
        } else {
            ControlFlow::Continue(())
        }
    }
}

/// Asks a vCPU's inspected run loop to pause and run its inspection; cheap to clone and usable
/// from any thread.
#[derive(Clone, Debug)]
pub struct PauseHandle<K> {
    requested: Arc<AtomicBool>,
    kicker: K,
}

impl<K: Kick> PauseHandle<K> {
    /// Requests a pause and kicks the vCPU: the inspection runs before the guest is entered
    /// again, once however many requests came in before it.
    pub fn pause(&self) {
        // Release: what this thread wrote before asking is visible to the inspection.
        self.requested.store(true, Ordering::Release);
        self.kicker.kick();
    }

    /// Whether a request waits for the loop.
    pub fn is_pending(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }
}
