//! Kicking a vCPU out of `KVM_RUN` from another thread.
//!
//! A kick sets the vCPU's `pending` flag under a lock. If the vCPU thread is inside its run window
//! — registered under the same lock right before `KVM_RUN` and deregistered right after — the kick
//! also sets the run area's `immediate_exit` byte and sends the thread the kick signal, whose
//! handler does nothing and is installed without `SA_RESTART`:
//!
//! - a signal that arrives while the guest runs (or while KVM waits in its in-kernel `hlt`) ends
//!   `KVM_RUN` with `EINTR`;
//! - a signal that arrives before the thread has entered `KVM_RUN` is harmless, because
//!   `immediate_exit` is already set and `KVM_RUN` returns `EINTR` at once;
//! - a kick while the thread is outside the window leaves `pending` set, and the next window sets
//!   `immediate_exit` itself before entering.
//!
//! The lock also keeps the thread ID valid: the thread cannot leave the window, let alone exit,
//! while a kicker holds it, so the signal never reaches a thread that has gone (or a stranger that
//! reuses its ID). `EINTR` consumes the pending kick.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use libc::{c_int, c_void, siginfo_t};
use vmm_sys_util::signal::{SIGRTMIN, register_signal_handler};

use super::run_area::ImmediateExit;
use crate::hypervisor::Kick;

/// Which real-time signal kicks vCPU threads: `SIGRTMIN() + KICK_SIGNAL_OFFSET`.
pub const KICK_SIGNAL_OFFSET: c_int = 0;

/// The signal that kicks vCPU threads; a VMM must not use it for anything else, nor block it on a
/// vCPU thread.
pub fn kick_signal() -> c_int {
    SIGRTMIN() + KICK_SIGNAL_OFFSET
}

extern "C" fn on_kick_signal(_: c_int, _: *mut siginfo_t, _: *mut c_void) {}

/// Installs the kick signal's no-op handler (once per process; later calls return the first
/// outcome).
pub(crate) fn install_kick_handler() -> Result<(), io::Error> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            register_signal_handler(kick_signal(), on_kick_signal).map_err(|e| e.errno())
        })
        .map_err(io::Error::from_raw_os_error)
}

#[derive(Debug)]
struct Running {
    thread: libc::pthread_t,
    immediate_exit: ImmediateExit,
}

#[derive(Debug, Default)]
struct Inner {
    pending: bool,
    running: Option<Running>,
}

/// The kick state one vCPU shares with its kickers.
#[derive(Debug, Default)]
pub(crate) struct KickState {
    inner: Mutex<Inner>,
}

impl KickState {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing that runs under the lock can panic halfway through an update.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `enter` (the `KVM_RUN` ioctl) inside the kick window and returns its result, with the
    /// OS error when it failed.
    ///
    /// # Safety
    ///
    /// `immediate_exit` must belong to a run area that stays mapped until this returns.
    pub(crate) unsafe fn run_window(
        &self,
        immediate_exit: ImmediateExit,
        enter: impl FnOnce() -> c_int,
    ) -> Result<c_int, io::Error> {
        {
            let mut inner = self.lock();
            if inner.pending {
                // SAFETY: the caller keeps the run area mapped for the whole call.
                unsafe { immediate_exit.set(1) };
            }
            inner.running = Some(Running {
                // SAFETY: `pthread_self` has no preconditions.
                thread: unsafe { libc::pthread_self() },
                immediate_exit,
            });
        }
        let ret = enter();
        let result = if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret)
        };
        {
            let mut inner = self.lock();
            inner.running = None;
            if matches!(&result, Err(e) if e.raw_os_error() == Some(libc::EINTR)) {
                inner.pending = false;
            }
        }
        // SAFETY: the caller keeps the run area mapped; no kicker touches the byte any more.
        unsafe { immediate_exit.set(0) };
        result
    }

    /// Whether a kick is waiting for the next run.
    #[cfg(test)]
    pub(crate) fn is_pending(&self) -> bool {
        self.lock().pending
    }

    fn kick(&self) {
        let mut inner = self.lock();
        inner.pending = true;
        if let Some(running) = &inner.running {
            // SAFETY: `running` is set only inside `run_window`, whose caller keeps the run area
            // mapped until the window ends, and the window cannot end while we hold the lock.
            unsafe { running.immediate_exit.set(1) };
            // SAFETY: the thread cannot leave `run_window` (or exit) while we hold the lock, so its
            // ID is valid; the signal's handler is installed in `KvmHypervisor::new`.
            let ret = unsafe { libc::pthread_kill(running.thread, kick_signal()) };
            if ret != 0 {
                log::error!(
                    "sending the kick signal to a vCPU thread failed: {}",
                    io::Error::from_raw_os_error(ret)
                );
            }
        }
    }
}

/// Kicks one KVM vCPU out of `KVM_RUN`; cheap to clone and usable from any thread.
#[derive(Clone, Debug)]
pub struct KvmKicker {
    state: Arc<KickState>,
}

impl KvmKicker {
    pub(crate) fn new(state: Arc<KickState>) -> Self {
        Self { state }
    }
}

impl Kick for KvmKicker {
    fn kick(&self) {
        self.state.kick();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kicks_outside_the_window_stay_pending_until_an_eintr() {
        install_kick_handler().unwrap();
        let state = Arc::new(KickState::default());
        let kicker = KvmKicker::new(state.clone());
        kicker.kick();
        kicker.kick();
        assert!(state.is_pending());

        let mut byte = 0u8;
        let ie = ImmediateExit::for_test(&mut byte);
        // The window sees the pending kick and raises immediate_exit before entering.
        let interrupted = || {
            assert_eq!(state_byte(ie), 1);
            // SAFETY: `__errno_location` returns this thread's errno slot.
            unsafe { *libc::__errno_location() = libc::EINTR };
            -1
        };
        // SAFETY: `byte` outlives the call.
        let result = unsafe { state.run_window(ie, interrupted) };
        assert_eq!(result.unwrap_err().raw_os_error(), Some(libc::EINTR));
        assert!(!state.is_pending(), "EINTR consumes the kick");
        assert_eq!(byte, 0, "immediate_exit is lowered after the window");

        // Without a kick, a successful run leaves nothing pending.
        let ie = ImmediateExit::for_test(&mut byte);
        // SAFETY: `byte` outlives the call.
        let result = unsafe { state.run_window(ie, || 0) };
        assert_eq!(result.unwrap(), 0);
        assert!(!state.is_pending());
    }

    #[test]
    fn a_kick_inside_the_window_raises_immediate_exit_and_signals() {
        install_kick_handler().unwrap();
        let state = Arc::new(KickState::default());
        let kicker = KvmKicker::new(state.clone());
        let mut byte = 0u8;
        let ie = ImmediateExit::for_test(&mut byte);
        // A kick that lands while the "ioctl" runs, which then exits normally (not EINTR): the
        // kick stays pending for the next run.
        // SAFETY: `byte` outlives the call.
        let result = unsafe {
            state.run_window(ie, || {
                kicker.kick();
                assert_eq!(state_byte(ie), 1);
                0
            })
        };
        assert_eq!(result.unwrap(), 0);
        assert!(state.is_pending());
        assert_eq!(byte, 0);
        assert!(kick_signal() >= SIGRTMIN());
    }

    fn state_byte(ie: ImmediateExit) -> u8 {
        ie.get_for_test()
    }
}
