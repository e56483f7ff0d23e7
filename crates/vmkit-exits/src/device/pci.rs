//! PCI functions: what a PCI root (or a fuzzer) needs of an endpoint, in types that name no
//! device model and no backend.
//!
//! A function is its configuration space and the registers behind its BARs. The root answers
//! the guest's configuration cycles with [`config_read`](PciDevice::config_read) and
//! [`config_write`](PciDevice::config_write), learns after each write where the BARs are and
//! whether they decode ([`bars`](PciDevice::bars)), and keeps the bus ranges in step; the bus
//! then routes BAR accesses to [`bar_read`](PciDevice::bar_read) and
//! [`bar_write`](PciDevice::bar_write) by BAR index and offset. Firmware's set-up is
//! configuration writes too: the root pre-assigns a BAR by writing its address into the BAR
//! register (the upper half of a 64-bit BAR into the next one) and enables decoding by setting
//! the space bits of the command register, as firmware does, so a function needs no second way
//! in for it.

use std::sync::Mutex;

use super::{DeviceAction, lock};

/// Number of base address registers of a type-0 header (offsets 0x10..0x28).
pub const PCI_NUM_BARS: usize = 6;

/// The address space and width of a BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PciBarKind {
    /// A 32-bit memory BAR (one register).
    Memory32,
    /// A 64-bit memory BAR (two registers: this one and the next hold the upper half).
    Memory64,
    /// An I/O BAR (16-bit port addresses on x86).
    Io,
}

/// One BAR as a function presents it now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PciBar {
    /// The address space and width.
    pub kind: PciBarKind,
    /// The size in bytes: a power of two, at least 16 for a memory BAR, 4 to 256 for an I/O BAR.
    pub size: u64,
    /// The base address the register(s) hold now, decoded or not.
    pub address: u64,
    /// Whether a memory BAR is marked prefetchable.
    pub prefetchable: bool,
    /// Whether the function decodes the BAR now: the command register enables its space (I/O
    /// space for an I/O BAR, memory space for a memory BAR).
    pub decoding: bool,
}

/// A PCI function on a root bus, shared across vCPU threads.
///
/// Every argument is guest-controlled: an implementation answers any offset, index and size
/// with a defined value and never panics. Configuration offsets are 0..=0xFF (the conventional
/// space; the root answers the extended space itself); the root's configuration accesses are
/// 1 to 4 bytes and never cross a dword (`offset % 4 + len <= 4`), and its BAR accesses are the
/// sizes the bus routes (1, 2, 4 or 8 bytes) at offsets inside the BAR. A caller that breaks
/// these (a fuzzer) still gets a defined answer.
pub trait PciDevice: Send + Sync {
    /// A configuration read of `data.len()` bytes at `offset`. Fill all of `data`. A read may
    /// have side effects (a capability that windows into a BAR).
    fn config_read(&self, offset: u8, data: &mut [u8]);

    /// A configuration write of `data` at `offset`. The caller asks [`bars`](Self::bars)
    /// afterwards where the BARs are.
    fn config_write(&self, offset: u8, data: &[u8]);

    /// Every BAR as the function presents it now, at its register index: `None` for a register
    /// that holds no BAR and for the upper register of a 64-bit BAR. No side effects. A root
    /// places the BARs a function has when it is plugged; one that appears later is not placed.
    fn bars(&self) -> [Option<PciBar>; PCI_NUM_BARS];

    /// A read at `offset` inside BAR `index`. Fill all of `data`; the default answers all ones,
    /// as for a BAR nothing backs.
    fn bar_read(&self, index: u8, offset: u64, data: &mut [u8]) {
        let _ = (index, offset);
        data.fill(0xFF);
    }

    /// A write at `offset` inside BAR `index`; the default ignores it.
    fn bar_write(&self, index: u8, offset: u64, data: &[u8]) -> DeviceAction {
        let _ = (index, offset, data);
        DeviceAction::Resume
    }
}

/// [`PciDevice`] with `&mut self` handlers; share it as a `Mutex<T>`, which is a [`PciDevice`].
/// The contract of each method is that of its [`PciDevice`] namesake.
pub trait MutPciDevice: Send {
    /// See [`PciDevice::config_read`].
    fn config_read(&mut self, offset: u8, data: &mut [u8]);

    /// See [`PciDevice::config_write`].
    fn config_write(&mut self, offset: u8, data: &[u8]);

    /// See [`PciDevice::bars`].
    fn bars(&self) -> [Option<PciBar>; PCI_NUM_BARS];

    /// See [`PciDevice::bar_read`]; the default answers all ones.
    fn bar_read(&mut self, index: u8, offset: u64, data: &mut [u8]) {
        let _ = (index, offset);
        data.fill(0xFF);
    }

    /// See [`PciDevice::bar_write`]; the default ignores it.
    fn bar_write(&mut self, index: u8, offset: u64, data: &[u8]) -> DeviceAction {
        let _ = (index, offset, data);
        DeviceAction::Resume
    }
}

/// Each call locks the mutex for its own length, so a PCI root that calls
/// [`config_write`](PciDevice::config_write) and then [`bars`](PciDevice::bars) holds the lock
/// across neither its own bookkeeping nor a bus change.
impl<T: MutPciDevice> PciDevice for Mutex<T> {
    fn config_read(&self, offset: u8, data: &mut [u8]) {
        MutPciDevice::config_read(&mut *lock(self), offset, data);
    }
    fn config_write(&self, offset: u8, data: &[u8]) {
        MutPciDevice::config_write(&mut *lock(self), offset, data);
    }
    fn bars(&self) -> [Option<PciBar>; PCI_NUM_BARS] {
        MutPciDevice::bars(&*lock(self))
    }
    fn bar_read(&self, index: u8, offset: u64, data: &mut [u8]) {
        MutPciDevice::bar_read(&mut *lock(self), index, offset, data);
    }
    fn bar_write(&self, index: u8, offset: u64, data: &[u8]) -> DeviceAction {
        MutPciDevice::bar_write(&mut *lock(self), index, offset, data)
    }
}
