//! Interrupt lines: the one way a device signals the guest.
//!
//! Devices never see the hypervisor. The VMM implements [`InterruptTrigger`] for each line it
//! wires to a device (with KVM: an irqfd for edge lines, an irqfd with a resample fd for level
//! lines). [`CountingTrigger`] is a test double that records what a device did.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// An interrupt line a device raises.
///
/// Edge-triggered devices (the UART, the i8042 keyboard) call [`trigger`](Self::trigger) once per
/// event. Level-triggered devices (a later virtio INTx) [`assert`](Self::assert) the line while
/// their condition holds and [`deassert`](Self::deassert) it once the guest acknowledged it.
///
/// Devices call these from the vCPU thread that is handling an exit, with the device's own lock
/// held: an implementation must not block and must not call back into the device (a
/// non-blocking eventfd write is the intended shape). A failure is counted and logged by the
/// device, never fatal to the guest access.
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

/// Adapts an [`InterruptTrigger`] to the [`vm_superio::Trigger`] the vm-superio devices take:
/// their `trigger()` is an edge.
#[cfg(feature = "legacy")]
#[derive(Debug)]
pub struct SuperioTrigger<T>(pub T);

#[cfg(feature = "legacy")]
impl<T: InterruptTrigger> vm_superio::Trigger for SuperioTrigger<T> {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.trigger()
    }
}

/// A test double that counts what a device did to its line and can be told to fail.
#[derive(Debug, Default)]
pub struct CountingTrigger {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        line.set_failing(false);
        assert!(line.trigger().is_ok());
    }

    #[test]
    fn shared_and_boxed_lines_forward() {
        let line = Arc::new(CountingTrigger::new());
        let boxed: Box<dyn InterruptTrigger> = Box::new(Arc::clone(&line));
        boxed.trigger().unwrap();
        boxed.assert().unwrap();
        boxed.deassert().unwrap();
        let shared: Arc<dyn InterruptTrigger> = line.clone();
        shared.trigger().unwrap();
        shared.assert().unwrap();
        shared.deassert().unwrap();
        assert_eq!((line.edges(), line.asserts(), line.deasserts()), (2, 2, 2));
    }

    #[cfg(feature = "legacy")]
    #[test]
    fn superio_adapter_is_an_edge() {
        use vm_superio::Trigger;

        let line = Arc::new(CountingTrigger::new());
        let adapter = SuperioTrigger(Arc::clone(&line));
        adapter.trigger().unwrap();
        assert_eq!(line.edges(), 1);
        line.set_failing(true);
        assert!(Trigger::trigger(&adapter).is_err());
    }
}
