//! Interrupt lines: the one way a device signals the guest.
//!
//! Devices never see the hypervisor. The trigger traits live in vmkit-exits (so that a
//! hypervisor backend can implement them without knowing any device) and are re-exported here:
//! the VMM hands each device an [`InterruptTrigger`] for each line it wires to it (vmkit-vcpu
//! has ready-made ones: `IrqLine` over `KVM_IRQ_LINE`, `IrqfdLine` over an irqfd, with a
//! resample fd for level lines). `SuperioTrigger` (feature `legacy`) adapts a line to vm-superio's trigger,
//! [`CountingTrigger`] is a test double that records what a device did, and [`NoopTrigger`]
//! accepts everything.

#[cfg(feature = "legacy")]
use std::io;

pub use vmkit_exits::{CountingTrigger, InterruptTrigger, MsiTrigger, NoopTrigger};

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

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
