//! The device traits a VMM implements: port I/O ([`PioDevice`]), MMIO ([`MmioDevice`]) and PCI
//! functions ([`PciDevice`]).
//!
//! # One convention
//!
//! Handlers take `&self` and are shared across vCPU threads (`Send + Sync`): a bus holds an
//! `Arc` of the device and calls it with no bus lock held, so a device may re-enter the bus
//! (move its own BAR) from a handler and one vCPU's slow device never blocks another vCPU's
//! lookups; a PCI root serialises configuration cycles, but changes a bus only between calls
//! into a device. A device that keeps fine-grained locks or atomics implements the `&self`
//! trait itself.
//!
//! A device that would rather be written with `&mut self` (one lock around all its state, as
//! most register files are) implements the `&mut self` twin — [`MutPioDevice`],
//! [`MutMmioDevice`], [`MutPciDevice`] — and is shared as a `Mutex<T>`: blanket implementations
//! make `Mutex<T>` a [`PioDevice`], [`MmioDevice`] or [`PciDevice`] that locks for the length of
//! one call. A poisoned mutex (a handler panicked while holding it) keeps serving the device's
//! state instead of panicking on every later access: the panic already reported the bug, and a
//! device model answers any access from any state it can be in.
//!
//! Every argument is guest-controlled: a handler answers any offset and size with a defined
//! value and never panics.
//!
//! # Addresses
//!
//! A port or MMIO handler gets the base of its range as a [`PioAddress`] or [`MmioAddress`] and
//! the offset of the access inside it as a plain integer, so the two cannot be swapped. A PCI
//! function's handlers get offsets only: into its configuration space, or into one of its BARs
//! by index; where a BAR sits is the PCI root's business.

mod pci;
#[cfg(test)]
mod tests;

use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::action::StopReason;
use crate::address::{MmioAddress, PioAddress};

pub use pci::{MutPciDevice, PCI_NUM_BARS, PciBar, PciBarKind, PciDevice};

/// What a device asks of the vCPU loop after it handled a write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceAction {
    /// Resume the guest (the same word as [`ExitAction::Resume`](crate::ExitAction::Resume)).
    #[default]
    Resume,
    /// Stop the VM for the given reason (a debug-exit port, a reset line, a power-off register).
    Stop(StopReason),
}

/// A port-I/O device.
pub trait PioDevice: Send + Sync {
    /// Handles an `in` at `base + offset`; `data.len()` is the access size. Fill all of `data`.
    fn pio_read(&self, base: PioAddress, offset: u16, data: &mut [u8]);
    /// Handles an `out` at `base + offset`.
    fn pio_write(&self, base: PioAddress, offset: u16, data: &[u8]) -> DeviceAction;
}

/// A memory-mapped I/O device.
pub trait MmioDevice: Send + Sync {
    /// Handles a read at `base + offset`; `data.len()` is the access size. Fill all of `data`.
    fn mmio_read(&self, base: MmioAddress, offset: u64, data: &mut [u8]);
    /// Handles a write at `base + offset`.
    fn mmio_write(&self, base: MmioAddress, offset: u64, data: &[u8]) -> DeviceAction;
}

/// [`PioDevice`] with `&mut self` handlers; share it as a `Mutex<T>`, which is a [`PioDevice`].
pub trait MutPioDevice: Send {
    /// Handles an `in` at `base + offset`; `data.len()` is the access size. Fill all of `data`.
    fn pio_read(&mut self, base: PioAddress, offset: u16, data: &mut [u8]);
    /// Handles an `out` at `base + offset`.
    fn pio_write(&mut self, base: PioAddress, offset: u16, data: &[u8]) -> DeviceAction;
}

/// [`MmioDevice`] with `&mut self` handlers; share it as a `Mutex<T>`, which is an
/// [`MmioDevice`].
pub trait MutMmioDevice: Send {
    /// Handles a read at `base + offset`; `data.len()` is the access size. Fill all of `data`.
    fn mmio_read(&mut self, base: MmioAddress, offset: u64, data: &mut [u8]);
    /// Handles a write at `base + offset`.
    fn mmio_write(&mut self, base: MmioAddress, offset: u64, data: &[u8]) -> DeviceAction;
}

/// Each call locks the mutex for its own length.
impl<T: MutPioDevice> PioDevice for Mutex<T> {
    fn pio_read(&self, base: PioAddress, offset: u16, data: &mut [u8]) {
        MutPioDevice::pio_read(&mut *lock(self), base, offset, data);
    }
    fn pio_write(&self, base: PioAddress, offset: u16, data: &[u8]) -> DeviceAction {
        MutPioDevice::pio_write(&mut *lock(self), base, offset, data)
    }
}

/// Each call locks the mutex for its own length.
impl<T: MutMmioDevice> MmioDevice for Mutex<T> {
    fn mmio_read(&self, base: MmioAddress, offset: u64, data: &mut [u8]) {
        MutMmioDevice::mmio_read(&mut *lock(self), base, offset, data);
    }
    fn mmio_write(&self, base: MmioAddress, offset: u64, data: &[u8]) -> DeviceAction {
        MutMmioDevice::mmio_write(&mut *lock(self), base, offset, data)
    }
}

/// Locks a device's mutex, serving its state even when a panicking handler poisoned it (see the
/// [module docs](self)).
fn lock<T>(device: &Mutex<T>) -> MutexGuard<'_, T> {
    device.lock().unwrap_or_else(PoisonError::into_inner)
}
