//! The interrupt lines devices raise, wired to KVM's in-kernel interrupt controllers.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use log::debug;
use vmkit_devices::trigger::InterruptTrigger;
use vmkit_devices::virtio::MsiTrigger;
use vmkit_vcpu::{KvmVm, Vm};

/// A GSI of the in-kernel PIC/IOAPIC, driven with `KVM_IRQ_LINE`: an edge is a raise and a
/// lower; a level stays raised until the device lowers it (KVM keeps the level and re-delivers
/// it at EOI while it is high).
///
/// The line remembers its level, so a device that asserts on every event (virtio INTx#, once
/// per completed request) costs one ioctl per change, not one per event: raising a line KVM
/// already holds high changes nothing for either trigger mode.
pub struct IrqLine {
    vm: Arc<KvmVm>,
    gsi: u32,
    high: AtomicBool,
}

impl IrqLine {
    /// The line `gsi` of `vm`, low.
    pub fn new(vm: Arc<KvmVm>, gsi: u32) -> Self {
        Self {
            vm,
            gsi,
            high: AtomicBool::new(false),
        }
    }

    fn set(&self, level: bool) -> io::Result<()> {
        let result = self
            .vm
            .set_irq_line(self.gsi, level)
            .map_err(io::Error::other);
        // On failure the level is unknown: forget it, so the next call reaches KVM.
        self.high.store(level && result.is_ok(), Ordering::Relaxed);
        result
    }
}

impl InterruptTrigger for IrqLine {
    fn trigger(&self) -> io::Result<()> {
        self.set(true)?;
        self.set(false)
    }

    fn assert(&self) -> io::Result<()> {
        if self.high.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.set(true)
    }

    fn deassert(&self) -> io::Result<()> {
        self.set(false)
    }
}

/// MSI/MSI-X messages delivered with `KVM_SIGNAL_MSI`, from the vCPU thread whose exit
/// completed the device's work.
pub struct MsiLine {
    vm: Arc<KvmVm>,
}

impl MsiLine {
    /// Messages for `vm`'s local APICs.
    pub fn new(vm: Arc<KvmVm>) -> Self {
        Self { vm }
    }
}

impl MsiTrigger for MsiLine {
    fn send(&self, address: u64, data: u32) -> io::Result<()> {
        let delivered = self
            .vm
            .signal_msi(address, data)
            .map_err(io::Error::other)?;
        if !delivered {
            // The guest's own programming (no APIC matched, or it masked the message).
            debug!("MSI address={address:#x} data={data:#x} was blocked by the guest's APICs");
        }
        Ok(())
    }
}
