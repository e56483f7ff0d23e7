//! Interrupt triggers: the one way a device signals the guest.
//!
//! Device models never see the hypervisor. They raise lines through [`InterruptTrigger`] (a pin
//! of the PIC/IOAPIC: edge or level) and send message-signalled interrupts through
//! [`MsiTrigger`] (a PCI device's MSI/MSI-X messages); the VMM hands them implementations. The
//! traits live in this layer so that a hypervisor backend (vmkit-vcpu's KVM triggers) and a
//! device crate (vmkit-devices) can meet without knowing each other. [`NoopTrigger`] accepts
//! everything and does nothing, for devices whose interrupts nobody listens to;
//! [`CountingTrigger`] counts what a device did to its line and can be told to fail, for tests
//! and fuzz harnesses. [`RecordingLine`] and [`RecordingMsi`] wrap a line or a sender and record every call to a
//! [`RecordWriter`], attributed to the exit being handled.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::record::{LineEvent, Record, RecordWriter};

/// An interrupt line a device raises.
///
/// Edge-triggered devices (the UART, the i8042 keyboard) call [`trigger`](Self::trigger) once per
/// event. Level-triggered devices (virtio INTx#) [`assert`](Self::assert) the line while
/// their condition holds and [`deassert`](Self::deassert) it once the guest acknowledged it.
///
/// Devices call these from the vCPU thread that is handling an exit, with the device's own lock
/// held: an implementation must not block and must not call back into the device (a
/// non-blocking eventfd write or one ioctl is the intended shape). A failure is counted and
/// logged by the device, never fatal to the guest access.
pub trait InterruptTrigger: Send + Sync {
    /// Signals one edge-triggered interrupt.
    fn trigger(&self) -> io::Result<()>;
    /// Raises a level-triggered line; it stays raised until [`deassert`](Self::deassert).
    fn assert(&self) -> io::Result<()>;
    /// Lowers a level-triggered line.
    fn deassert(&self) -> io::Result<()>;
}

impl<T: InterruptTrigger + ?Sized> InterruptTrigger for Arc<T> {
    fn trigger(&self) -> io::Result<()> {
        (**self).trigger()
    }
    fn assert(&self) -> io::Result<()> {
        (**self).assert()
    }
    fn deassert(&self) -> io::Result<()> {
        (**self).deassert()
    }
}

impl<T: InterruptTrigger + ?Sized> InterruptTrigger for Box<T> {
    fn trigger(&self) -> io::Result<()> {
        (**self).trigger()
    }
    fn assert(&self) -> io::Result<()> {
        (**self).assert()
    }
    fn deassert(&self) -> io::Result<()> {
        (**self).deassert()
    }
}

/// Sends message-signalled interrupts (PCI MSI and MSI-X): a write of `data` to `address`, as the
/// device's message table entry for the vector says. With KVM, vmkit-vcpu's `MsiLine` sends
/// them with `KVM_SIGNAL_MSI`.
///
/// Called with device locks held: an implementation must not block and must not call back into
/// the device. A failure is counted by the device, never fatal to the guest access.
pub trait MsiTrigger: Send + Sync {
    /// Delivers one message.
    fn send(&self, address: u64, data: u32) -> io::Result<()>;
}

impl<T: MsiTrigger + ?Sized> MsiTrigger for Arc<T> {
    fn send(&self, address: u64, data: u32) -> io::Result<()> {
        (**self).send(address, data)
    }
}

impl<T: MsiTrigger + ?Sized> MsiTrigger for Box<T> {
    fn send(&self, address: u64, data: u32) -> io::Result<()> {
        (**self).send(address, data)
    }
}

/// A line and a message sink that accept every call and deliver nothing: for a device whose
/// interrupts no guest listens to (a benchmark, a fuzz harness, a device wired to nothing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoopTrigger;

impl InterruptTrigger for NoopTrigger {
    fn trigger(&self) -> io::Result<()> {
        Ok(())
    }
    fn assert(&self) -> io::Result<()> {
        Ok(())
    }
    fn deassert(&self) -> io::Result<()> {
        Ok(())
    }
}

impl MsiTrigger for NoopTrigger {
    fn send(&self, _address: u64, _data: u32) -> io::Result<()> {
        Ok(())
    }
}

/// A test double that counts what a device did to its line and can be told to fail.
#[derive(Debug, Default)]
pub struct CountingTrigger {
    calls: AtomicU64,
    edges: AtomicU64,
    asserts: AtomicU64,
    deasserts: AtomicU64,
    level: AtomicBool,
    failing: AtomicBool,
}

impl CountingTrigger {
    /// A line that succeeds and has counted nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many calls the device made, failed ones included: the work it asked of its line.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// How many edges were triggered.
    pub fn edges(&self) -> u64 {
        self.edges.load(Ordering::Relaxed)
    }

    /// How many times the level line was asserted.
    pub fn asserts(&self) -> u64 {
        self.asserts.load(Ordering::Relaxed)
    }

    /// How many times the level line was deasserted.
    pub fn deasserts(&self) -> u64 {
        self.deasserts.load(Ordering::Relaxed)
    }

    /// Whether the level line is raised now.
    pub fn is_asserted(&self) -> bool {
        self.level.load(Ordering::Relaxed)
    }

    /// Makes every later call fail (`true`) or succeed again (`false`). Failed calls are not
    /// counted.
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::Relaxed);
    }

    fn check(&self) -> io::Result<()> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.failing.load(Ordering::Relaxed) {
            Err(io::Error::other("interrupt line configured to fail"))
        } else {
            Ok(())
        }
    }
}

impl InterruptTrigger for CountingTrigger {
    fn trigger(&self) -> io::Result<()> {
        self.check()?;
        self.edges.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn assert(&self) -> io::Result<()> {
        self.check()?;
        self.asserts.fetch_add(1, Ordering::Relaxed);
        self.level.store(true, Ordering::Relaxed);
        Ok(())
    }

    fn deassert(&self) -> io::Result<()> {
        self.check()?;
        self.deasserts.fetch_add(1, Ordering::Relaxed);
        self.level.store(false, Ordering::Relaxed);
        Ok(())
    }
}

/// An interrupt line that records every call (an [`Record::Interrupt`] with `line`, the event
/// and whether `inner` accepted it) before it returns `inner`'s answer.
#[derive(Debug)]
pub struct RecordingLine<T> {
    inner: T,
    line: u32,
    recorder: Arc<RecordWriter>,
}

impl<T: InterruptTrigger> RecordingLine<T> {
    /// Wraps `inner`, recorded as line `line` (the GSI it is wired to) to `recorder`.
    pub fn new(inner: T, line: u32, recorder: Arc<RecordWriter>) -> Self {
        Self {
            inner,
            line,
            recorder,
        }
    }

    fn record(&self, event: LineEvent, result: io::Result<()>) -> io::Result<()> {
        self.recorder.write(&Record::Interrupt {
            at: self.recorder.attribution(),
            line: self.line,
            event,
            ok: result.is_ok(),
        });
        result
    }
}

impl<T: InterruptTrigger> InterruptTrigger for RecordingLine<T> {
    fn trigger(&self) -> io::Result<()> {
        self.record(LineEvent::Edge, self.inner.trigger())
    }
    fn assert(&self) -> io::Result<()> {
        self.record(LineEvent::Assert, self.inner.assert())
    }
    fn deassert(&self) -> io::Result<()> {
        self.record(LineEvent::Deassert, self.inner.deassert())
    }
}

/// A message sender that records every message (a [`Record::Msi`] with whether `inner` accepted
/// it) before it returns `inner`'s answer.
#[derive(Debug)]
pub struct RecordingMsi<T> {
    inner: T,
    recorder: Arc<RecordWriter>,
}

impl<T: MsiTrigger> RecordingMsi<T> {
    /// Wraps `inner`, recording to `recorder`.
    pub fn new(inner: T, recorder: Arc<RecordWriter>) -> Self {
        Self { inner, recorder }
    }
}

impl<T: MsiTrigger> MsiTrigger for RecordingMsi<T> {
    fn send(&self, address: u64, data: u32) -> io::Result<()> {
        let result = self.inner.send(address, data);
        self.recorder.write(&Record::Msi {
            at: self.recorder.attribution(),
            address,
            data,
            ok: result.is_ok(),
        });
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts calls: edges, asserts, deasserts and messages, in that order of digits.
    #[derive(Debug, Default)]
    struct Calls(AtomicU64);

    impl InterruptTrigger for Calls {
        fn trigger(&self) -> io::Result<()> {
            self.0.fetch_add(1000, Ordering::Relaxed);
            Ok(())
        }
        fn assert(&self) -> io::Result<()> {
            self.0.fetch_add(100, Ordering::Relaxed);
            Ok(())
        }
        fn deassert(&self) -> io::Result<()> {
            self.0.fetch_add(10, Ordering::Relaxed);
            Ok(())
        }
    }

    impl MsiTrigger for Calls {
        fn send(&self, address: u64, data: u32) -> io::Result<()> {
            if address != 0xFEE0_0000 || data != 0x41 {
                return Err(io::Error::other("unexpected message"));
            }
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    #[test]
    fn noop_trigger_accepts_every_call() {
        let line: Box<dyn InterruptTrigger> = Box::new(NoopTrigger);
        line.trigger().unwrap();
        line.assert().unwrap();
        line.deassert().unwrap();
        let msi: Arc<dyn MsiTrigger> = Arc::new(NoopTrigger);
        msi.send(0xFEE0_0000, 0x41).unwrap();
        msi.send(u64::MAX, u32::MAX).unwrap();
    }

    #[test]
    fn shared_and_boxed_triggers_forward_each_call() {
        let calls = Arc::new(Calls::default());
        let boxed: Box<dyn InterruptTrigger> = Box::new(Arc::clone(&calls));
        boxed.trigger().unwrap();
        boxed.assert().unwrap();
        boxed.deassert().unwrap();
        let shared: Arc<dyn InterruptTrigger> = calls.clone();
        shared.trigger().unwrap();
        shared.assert().unwrap();
        assert_eq!(calls.0.load(Ordering::Relaxed), 2210);

        let boxed: Box<dyn MsiTrigger> = Box::new(Arc::clone(&calls));
        boxed.send(0xFEE0_0000, 0x41).unwrap();
        assert!(boxed.send(0xFEE0_0000, 0x42).is_err());
        let shared: Arc<dyn MsiTrigger> = calls.clone();
        shared.send(0xFEE0_0000, 0x41).unwrap();
        assert_eq!(calls.0.load(Ordering::Relaxed), 2212);
    }

    #[test]
    fn counts_edges_and_levels() {
        let line = CountingTrigger::new();
        line.trigger().unwrap();
        line.trigger().unwrap();
        assert_eq!(line.edges(), 2);
        assert!(!line.is_asserted());
        line.assert().unwrap();
        assert!(line.is_asserted());
        line.deassert().unwrap();
        assert!(!line.is_asserted());
        assert_eq!((line.asserts(), line.deasserts()), (1, 1));
    }

    #[test]
    fn failing_line_reports_errors_and_counts_nothing() {
        let line = CountingTrigger::new();
        line.set_failing(true);
        assert!(line.trigger().is_err());
        assert!(line.assert().is_err());
        assert!(line.deassert().is_err());
        assert_eq!((line.edges(), line.asserts(), line.deasserts()), (0, 0, 0));
        assert_eq!(line.calls(), 3);
        line.set_failing(false);
        assert!(line.trigger().is_ok());
    }

    #[test]
    fn recording_decorators_record_each_call_and_its_result() {
        use crate::record::{Attribution, ExitScope, RecordReader};
        use std::sync::Mutex;

        #[derive(Clone, Default)]
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Shared {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }

        let sink = Shared::default();
        let recorder = Arc::new(RecordWriter::new(sink.clone(), u64::MAX));
        let calls = Arc::new(Calls::default());
        let line = RecordingLine::new(calls.clone(), 5, recorder.clone());
        let msi = RecordingMsi::new(calls.clone(), recorder.clone());
        let seq = recorder.begin_exit();
        {
            let _scope = ExitScope::enter(seq);
            line.trigger().unwrap();
            line.assert().unwrap();
            msi.send(0xFEE0_0000, 0x41).unwrap();
        }
        line.deassert().unwrap();
        assert!(msi.send(0xFEE0_0000, 0x42).is_err(), "the inner answer");
        assert_eq!(calls.0.load(Ordering::Relaxed), 1111);
        assert!(format!("{line:?}{msi:?}").contains("RecordingLine"));
        recorder.finish();
        let bytes = sink.0.lock().unwrap().clone();
        let records = RecordReader::new(&bytes[..]).unwrap().read_all().unwrap();
        let during = Attribution::Exit(0);
        let after = Attribution::Outside { exits_before: 1 };
        assert_eq!(
            records,
            [
                Record::Interrupt {
                    at: during,
                    line: 5,
                    event: LineEvent::Edge,
                    ok: true
                },
                Record::Interrupt {
                    at: during,
                    line: 5,
                    event: LineEvent::Assert,
                    ok: true
                },
                Record::Msi {
                    at: during,
                    address: 0xFEE0_0000,
                    data: 0x41,
                    ok: true
                },
                Record::Interrupt {
                    at: after,
                    line: 5,
                    event: LineEvent::Deassert,
                    ok: true
                },
                Record::Msi {
                    at: after,
                    address: 0xFEE0_0000,
                    data: 0x42,
                    ok: false
                },
            ]
        );
    }
}
