//! The handler traits that device models implement to sit on an [`IoBus`](crate::IoBus) or
//! [`MmioBus`](crate::MmioBus).
//!
//! Handlers take `&self` and are shared across vCPU threads (`Send + Sync`); a device keeps its
//! mutable state behind its own lock. Every argument is guest-controlled: a handler answers any
//! offset and size with a defined value and never panics.

use crate::action::StopReason;
use crate::address::{MmioAddress, PioAddress};

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
