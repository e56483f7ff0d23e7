//! Kicking a vCPU out of `KVM_RUN` from another thread.
//!
//! One atomic word holds the vCPU's kick state: `PENDING` (a kick waits for the next run),
//! `RUNNING` (the vCPU thread is inside its run window, opened right before `KVM_RUN` and closed
//! right after) and the number of kickers in flight. A kick sets `PENDING`; if the window is
//! open and no kick is pending yet it also counts itself in flight, in the same atomic step (a
//! later kick finds `PENDING` and has nothing to add), then sets the run area's
//! `immediate_exit` byte and sends the thread the kick signal, whose handler does nothing and is
//! installed without `SA_RESTART`:
//!
//! - a signal that arrives while the guest runs (or while KVM waits in its in-kernel `hlt`) ends
//!   `KVM_RUN` with `EINTR`;
//! - a signal that arrives before the thread has entered `KVM_RUN` is harmless, because
//!   `immediate_exit` is already set and `KVM_RUN` returns `EINTR` at once;
//! - a kick while the thread is outside the window leaves `PENDING` set, and the next window sets
//!   `immediate_exit` itself before entering.
//!
//! The count keeps the thread ID and the byte valid: a thread that closes its window waits until
//! no kicker is in flight before it goes on (and before it can exit), so a signal never reaches a
//! thread that has gone (or a stranger that reuses its ID), and no kicker writes the byte of a
//! run area that may be unmapped. `EINTR` consumes the pending kick. The vCPU's side costs two
//! atomic operations and a load per run, and waits only for a kicker that is sending its signal.

use std::io;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

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

/// A kick waits for the next run.
const PENDING: u64 = 1;
/// The vCPU thread is inside its run window.
const RUNNING: u64 = 2;
/// One kicker in flight; the bits above `RUNNING` count them.
const KICKER: u64 = 4;

/// How often a closing window spins on a kicker in flight before it yields the CPU to it.
const SPINS_BEFORE_YIELD: u32 = 64;

/// The kick state one vCPU shares with its kickers.
#[derive(Debug, Default)]
pub(crate) struct KickState {
    /// `PENDING | RUNNING | kickers in flight × KICKER`.
    state: AtomicU64,
    /// The thread inside the window (a `pthread_t`, an unsigned long): written by it before it sets `RUNNING`, read
    /// by kickers that saw `RUNNING` and counted themselves in flight.
    thread: AtomicU64,
    /// The window's `immediate_exit` byte, published like `thread`.
    immediate_exit: AtomicPtr<u8>,
}

impl KickState {
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
        // No kicker reads these while the window is closed: the last window waited for every
        // kicker in flight, and a kicker only counts itself in while `RUNNING` is set.
        // SAFETY: `pthread_self` has no preconditions.
        let thread = unsafe { libc::pthread_self() };
        self.thread.store(thread, Ordering::Relaxed);
        self.immediate_exit
            .store(immediate_exit.as_ptr(), Ordering::Relaxed);
        // Release: a kicker that sees RUNNING sees the two stores above.
        let before = self.state.fetch_or(RUNNING, Ordering::AcqRel);
        if before & PENDING != 0 {
            // SAFETY: the caller keeps the run area mapped for the whole call.
            unsafe { immediate_exit.set(1) };
        }
        let ret = enter();
        let result = if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret)
        };
        let mut leave = RUNNING;
        if matches!(&result, Err(e) if e.raw_os_error() == Some(libc::EINTR)) {
            leave |= PENDING;
        }
        self.state.fetch_and(!leave, Ordering::AcqRel);
        // Kickers that counted themselves in while the window was open may still write the byte
        // or signal this thread: wait until they are done (Acquire: their writes come first).
        let mut spins = 0;
        while self.state.load(Ordering::Acquire) >= KICKER {
            if spins < SPINS_BEFORE_YIELD {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        // SAFETY: the caller keeps the run area mapped; no kicker touches the byte any more.
        unsafe { immediate_exit.set(0) };
        result
    }

    /// Whether a kick is waiting for the next run.
    #[cfg(test)]
    pub(crate) fn is_pending(&self) -> bool {
        self.state.load(Ordering::SeqCst) & PENDING != 0
    }

    fn kick(&self) {
        // Set PENDING and, if the window is open and no kick is pending yet, count this kicker
        // in flight, in one step. A kick that finds the window open and PENDING already set has
        // nothing to add: either the window saw PENDING when it opened and raised
        // `immediate_exit` itself, or the kicker that set it is raising the byte and sending the
        // signal. So a window gets at most one signal however many kicks it meets (a storm of
        // queued real-time signals could otherwise keep the vCPU thread in signal delivery).
        let mut state = self.state.load(Ordering::Relaxed);
        let signal = loop {
            let signal = state & RUNNING != 0 && state & PENDING == 0;
            let next = if signal {
                (state | PENDING) + KICKER
            } else {
                state | PENDING
            };
            match self
                .state
                .compare_exchange_weak(state, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => break signal,
                Err(now) => state = now,
            }
        };
        if !signal {
            return;
        }
        // Acquire (the exchange above): `thread` and `immediate_exit` are the open window's.
        let thread: libc::pthread_t = self.thread.load(Ordering::Relaxed);
        let immediate_exit = ImmediateExit::from_ptr(self.immediate_exit.load(Ordering::Relaxed));
        // SAFETY: the window was open when this kicker counted itself in flight, and its thread
        // waits in `run_window`, whose caller keeps the run area mapped, until we are done.
        unsafe { immediate_exit.set(1) };
        // SAFETY: for the same reason the thread cannot leave `run_window` (or exit), so its ID
        // is valid; the signal's handler is installed in `KvmHypervisor::new`.
        let ret = unsafe { libc::pthread_kill(thread, kick_signal()) };
        // Release: the window may close once our writes are done (before any logging).
        self.state.fetch_sub(KICKER, Ordering::Release);
        if ret != 0 {
            log::error!(
                "sending the kick signal to a vCPU thread failed: {}",
                io::Error::from_raw_os_error(ret)
            );
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

    /// Kicks from another thread racing with thousands of windows: every window ends with its
    /// byte lowered and no kicker in flight, whatever the interleaving.
    #[test]
    fn kicks_racing_with_windows_are_done_when_a_window_closes() {
        use std::sync::Barrier;
        use std::sync::atomic::AtomicBool;
        install_kick_handler().unwrap();
        let state = Arc::new(KickState::default());
        let kicker = KvmKicker::new(state.clone());
        let done = Arc::new(AtomicBool::new(false));
        let started = Arc::new(Barrier::new(2));
        let kicks = std::thread::spawn({
            let (done, started) = (done.clone(), started.clone());
            move || {
                started.wait();
                while !done.load(Ordering::SeqCst) {
                    kicker.kick();
                }
            }
        });
        started.wait();
        let mut byte = 0u8;
        for _ in 0..20_000 {
            let ie = ImmediateExit::for_test(&mut byte);
            // An "ioctl" that ends with EINTR when a kick raised the byte, as KVM_RUN does.
            let enter = || {
                if state_byte(ie) == 1 {
                    // SAFETY: `__errno_location` returns this thread's errno slot.
                    unsafe { *libc::__errno_location() = libc::EINTR };
                    -1
                } else {
                    0
                }
            };
            // SAFETY: `byte` outlives the call.
            let _ = unsafe { state.run_window(ie, enter) };
            assert_eq!(byte, 0, "immediate_exit is lowered after the window");
            assert!(
                state.state.load(Ordering::SeqCst) < KICKER,
                "a kicker in flight"
            );
        }
        done.store(true, Ordering::SeqCst);
        kicks.join().unwrap();
    }

    fn state_byte(ie: ImmediateExit) -> u8 {
        ie.get_for_test()
    }
}
