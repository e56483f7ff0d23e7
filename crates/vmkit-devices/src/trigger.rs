//! Interrupt lines: the one way a device signals the guest.
//!
//! Devices never see the hypervisor. The trigger traits live in vmkit-exits (so that a
//! hypervisor backend can implement them without knowing any device) and are re-exported here:
//! the VMM hands each device an [`InterruptTrigger`] for each line it wires to it (vmkit-vcpu
//! has ready-made ones: `IrqLine` over `KVM_IRQ_LINE`, `IrqfdLine` over an irqfd, with a
//! resample fd for level lines). `SuperioTrigger` (feature `legacy`) adapts a line to vm-superio's trigger,
//! [`CountingTrigger`] is a test double that records what a device did, and [`NoopTrigger`]
//! accepts everything.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub use vmkit_exits::{InterruptTrigger, MsiTrigger, NoopTrigger};

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
    use std::sync::Arc;

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
