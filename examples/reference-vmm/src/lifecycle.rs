//! The VMM's threads and how they end: every thread is spawned through [`spawn`], which reports a
//! panic to its supervisor instead of dying silently, and a stopping VM joins its threads with a
//! deadline ([`join_until`]), abandoning (and naming) any that does not end in time. So the
//! process exits at most [`STOP_GRACE`] plus [`REPORT_GRACE`] after the moment the VM should end.

use std::any::Any;
use std::cell::RefCell;
use std::fmt;
use std::io;
use std::panic::{self, AssertUnwindSafe, PanicHookInfo};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long the threads of a stopping VM (vCPUs, then the serial output) get, in all, to end.
pub const STOP_GRACE: Duration = Duration::from_secs(1);

/// How long the VMM then takes at most to gather `--stats` and write its last lines.
pub const REPORT_GRACE: Duration = Duration::from_millis(500);

/// How often [`join_until`] looks at the threads it waits for.
const POLL: Duration = Duration::from_millis(5);

thread_local! {
    /// Where this thread last panicked, as the panic hook saw it.
    static PANICKED_AT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// A thread that ended by panicking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadPanic {
    /// The thread's name.
    pub thread: String,
    /// The panic's message.
    pub message: String,
    /// Where in the source it panicked, when the panic hook said.
    pub location: Option<String>,
}

impl ThreadPanic {
    /// The panic this thread just caught, with the payload `catch_unwind` returned.
    pub fn caught(thread: &str, payload: &(dyn Any + Send)) -> Self {
        Self {
            thread: thread.to_string(),
            message: payload_message(payload).to_string(),
            location: PANICKED_AT
                .try_with(|at| at.borrow_mut().take())
                .ok()
                .flatten(),
        }
    }
}

/// One line: the thread, where, and the message (its lines joined).
impl fmt::Display for ThreadPanic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let message = self
            .message
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        match &self.location {
            Some(at) => write!(f, "thread {} panicked at {at}: {message}", self.thread),
            None => write!(f, "thread {} panicked: {message}", self.thread),
        }
    }
}

/// A thread of the VMM, joined by [`join_until`].
#[derive(Debug)]
pub struct Supervised {
    name: String,
    handle: JoinHandle<()>,
}

/// Spawns the thread `name` running `body`; if `body` panics, `on_panic` is called on that thread
/// with the panic.
pub fn spawn<F, P>(name: String, on_panic: P, body: F) -> io::Result<Supervised>
where
    F: FnOnce() + Send + 'static,
    P: FnOnce(ThreadPanic) + Send + 'static,
{
    let handle = thread::Builder::new().name(name.clone()).spawn({
        let name = name.clone();
        move || {
            if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(body)) {
                on_panic(ThreadPanic::caught(&name, payload.as_ref()));
            }
        }
    })?;
    Ok(Supervised { name, handle })
}

/// Joins `threads`, waiting for them until `deadline` at the latest, and returns the names of
/// those still running then: they are abandoned (their handles dropped, which detaches them),
/// and the process exits without them.
pub fn join_until(threads: Vec<Supervised>, deadline: Instant) -> Vec<String> {
    let mut running = threads;
    loop {
        let (finished, still): (Vec<_>, Vec<_>) =
            running.into_iter().partition(|t| t.handle.is_finished());
        for thread in finished {
            // `spawn` caught the body's panic and reported it.
            let _ = thread.handle.join();
        }
        running = still;
        let now = Instant::now();
        if running.is_empty() || now >= deadline {
            break;
        }
        thread::sleep(POLL.min(deadline - now));
    }
    running.into_iter().map(|t| t.name).collect()
}

/// Locks `mutex`, waiting for it until `deadline` at the latest: `None` when a thread (one that
/// did not stop, say) still holds it then. A poisoned lock is taken as it is.
pub fn lock_until<T>(mutex: &Mutex<T>, deadline: Instant) -> Option<MutexGuard<'_, T>> {
    loop {
        match mutex.try_lock() {
            Ok(guard) => return Some(guard),
            Err(TryLockError::Poisoned(poisoned)) => return Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => {}
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(1).min(deadline - now));
    }
}

/// The text of a panic's payload.
pub fn payload_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

/// Replaces the standard panic report (several lines, printed by the panicking thread, with a
/// backtrace whose symbolization opens files a confined thread may not) with a note of where the
/// thread panicked, which [`ThreadPanic::caught`] picks up: the supervisor prints the one line
/// once the VM has stopped.
pub fn install_panic_hook() {
    panic::set_hook(Box::new(|info: &PanicHookInfo<'_>| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()));
        // Not during the thread's teardown, when its thread-locals are gone.
        let _ = PANICKED_AT.try_with(|at| *at.borrow_mut() = location);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A thread that never ends on its own: a device that blocks forever.
    fn blocked_forever(name: &str) -> Supervised {
        spawn(
            name.to_string(),
            |_| {},
            || {
                loop {
                    thread::park();
                }
            },
        )
        .unwrap()
    }

    #[test]
    fn a_thread_that_never_returns_is_abandoned_by_the_deadline() {
        let quick = spawn("vcpu0".into(), |_| {}, || {}).unwrap();
        let stuck = blocked_forever("vcpu1");
        let device = blocked_forever("serial-out");
        let start = Instant::now();
        let abandoned = join_until(vec![quick, stuck, device], start + STOP_GRACE);
        // The documented bound is STOP_GRACE; allow a loaded machine plenty more.
        assert!(start.elapsed() < STOP_GRACE + Duration::from_secs(4));
        assert!(start.elapsed() >= STOP_GRACE);
        assert_eq!(abandoned, ["vcpu1", "serial-out"]);
    }

    #[test]
    fn threads_that_end_are_joined_without_waiting_for_the_deadline() {
        let threads = (0..4)
            .map(|i| spawn(format!("vcpu{i}"), |_| {}, || {}).unwrap())
            .collect();
        let start = Instant::now();
        let abandoned = join_until(threads, start + Duration::from_secs(60));
        assert!(start.elapsed() < Duration::from_secs(30));
        assert!(abandoned.is_empty());
    }

    #[test]
    fn a_panic_is_reported_with_the_thread_name() {
        let (tx, rx) = mpsc::channel();
        let thread = spawn(
            "vcpu3".into(),
            move |panic| tx.send(panic).unwrap(),
            || panic!("device model\nbroke"),
        )
        .unwrap();
        assert_eq!(thread.name, "vcpu3");
        let report = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(report.thread, "vcpu3");
        assert_eq!(report.message, "device model\nbroke");
        assert!(report.to_string().starts_with("thread vcpu3 panicked"));
        assert!(report.to_string().ends_with(": device model broke"));
        // The panic was caught: the thread ended normally.
        let abandoned = join_until(vec![thread], Instant::now() + Duration::from_secs(30));
        assert!(abandoned.is_empty());
    }

    #[test]
    fn a_lock_held_forever_is_given_up_at_the_deadline() {
        let device = std::sync::Arc::new(Mutex::new(7));
        assert_eq!(
            lock_until(&device, Instant::now()).as_deref().copied(),
            Some(7)
        );
        let (locked, wait) = mpsc::channel();
        let holder = device.clone();
        // A device model stuck forever with its lock held.
        spawn(
            "vcpu0".into(),
            |_| {},
            move || {
                let _guard = holder.lock().unwrap();
                locked.send(()).unwrap();
                loop {
                    thread::park();
                }
            },
        )
        .unwrap();
        wait.recv_timeout(Duration::from_secs(30)).unwrap();
        let start = Instant::now();
        assert!(lock_until(&device, start + Duration::from_millis(100)).is_none());
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_panic_is_one_line() {
        let panic = ThreadPanic {
            thread: "vcpu0".into(),
            message: "bad\nthings  here".into(),
            location: Some("src/vm.rs:1".into()),
        };
        assert_eq!(
            panic.to_string(),
            "thread vcpu0 panicked at src/vm.rs:1: bad things here"
        );
        let panic = ThreadPanic {
            location: None,
            ..panic
        };
        assert_eq!(panic.to_string(), "thread vcpu0 panicked: bad things here");
        let owned: Box<dyn Any + Send> = Box::new(String::from("owned"));
        assert_eq!(payload_message(owned.as_ref()), "owned");
        let other: Box<dyn Any + Send> = Box::new(7u32);
        assert_eq!(payload_message(other.as_ref()), "(no message)");
    }
}
