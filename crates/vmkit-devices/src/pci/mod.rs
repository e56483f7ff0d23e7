//! PCI: a root complex on bus 0 with type-1 (0xCF8/0xCFC) and ECAM configuration access, a host
//! bridge, and the [`PciDevice`] trait endpoints implement.
//!
//! Devices are plain state machines: a [`ConfigSpace`] (the type-0 header with its writable-bit
//! masks, BARs and capabilities) plus BAR register files. [`PciRoot`] owns the slots, answers
//! configuration cycles, and keeps the buses in step with the BARs: it pre-assigns every BAR from
//! the VMM's allocators (below 4 GiB), and whenever the guest rewrites a BAR or toggles decoding in
//! the command register it moves, removes or restores the device's ranges on the MMIO (or port)
//! bus. Devices never touch a bus themselves. The root bus has [`MAX_SLOTS`] slots; the host
//! bridge takes slot 0, so at most [`MAX_ENDPOINTS`] devices plug in.
//!
//! [`MsixTable`] is the MSI-X table and pending-bit array any function with the MSI-X capability
//! keeps in a BAR (the virtio-pci transport is one): it answers the guest's table accesses and
//! turns a fired vector into the [`MsixMessage`] to send, or a pending bit while masked.
//!
//! Locking: the root serialises configuration cycles with its slot lock, takes a device's lock
//! only to run the device's handler, and releases it before it changes a bus. BAR accesses reach
//! a device through its own lock alone, never the root's.

mod config;
mod msix;
mod root;

pub use config::{
    BAR0, Bar, BarKind, BarMapping, BarSpace, CACHE_LINE_SIZE, CAPABILITIES_POINTER, CLASS_CODE,
    COMMAND, COMMAND_BUS_MASTER, COMMAND_INTX_DISABLE, COMMAND_IO_SPACE, COMMAND_MEMORY_SPACE,
    COMMAND_PARITY_ERROR_RESPONSE, COMMAND_SERR, CONFIG_SPACE_SIZE, ConfigError, ConfigSpace,
    DEVICE_ID, EXPANSION_ROM, FIRST_CAPABILITY, HEADER_TYPE, INTERRUPT_LINE, INTERRUPT_PIN,
    MAX_IO_BAR_SIZE, MIN_IO_BAR_SIZE, MIN_MEMORY_BAR_SIZE, NUM_BARS, PciIds, REVISION_ID, STATUS,
    STATUS_CAPABILITIES_LIST, STATUS_INTERRUPT, STATUS_RW1C, SUBSYSTEM_ID, SUBSYSTEM_VENDOR_ID,
    VENDOR_ID,
};
pub use msix::{MSIX_ENTRY_SIZE, MsixDelivery, MsixMessage, MsixTable};
pub use root::{
    CONFIG_ADDRESS_ENABLE, CONFIG_IO_LEN, CONFIG_IO_PORT, HOST_BRIDGE_DEVICE_ID,
    HOST_BRIDGE_VENDOR_ID, HostBridge, MAX_ENDPOINTS, MAX_SLOTS, PciError, PciRoot, PciStats,
};

use std::sync::{Mutex, MutexGuard, PoisonError};

use vmkit_exits::DeviceAction;

/// Locks a mutex, serving the data even if a panic poisoned it: no code of this crate panics
/// while holding a device lock, so the state behind it is consistent.
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Capability ID of a vendor-specific capability (virtio's structures use it).
pub const CAP_ID_VENDOR: u8 = 0x09;
/// Capability ID of MSI-X.
pub const CAP_ID_MSIX: u8 = 0x11;

/// A PCI function on the root bus: a configuration space and the registers behind its BARs.
///
/// The root calls these with the device's lock held, one access at a time. Every argument is
/// guest-controlled; an implementation answers any offset with a defined value and never panics.
/// Configuration accesses are 1 to 4 bytes and never cross a dword boundary; BAR accesses are
/// any size the bus routes (1, 2, 4 or 8 bytes), at any offset inside the BAR.
pub trait PciDevice: Send {
    /// The configuration space (the root reads the BARs and decode bits from it).
    fn config_space(&self) -> &ConfigSpace;

    /// The configuration space, to pre-assign BARs and enable decoding as firmware would.
    fn config_space_mut(&mut self) -> &mut ConfigSpace;

    /// A guest configuration read at `offset` (0..=0xFF). Reads may have side effects (a
    /// capability that windows into a BAR), hence `&mut self`.
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.config_space().read(offset, data);
    }

    /// A guest configuration write at `offset` (0..=0xFF).
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config_space_mut().write(offset, data);
    }

    /// A guest read at `offset` inside BAR `index`. Fill all of `data`.
    fn bar_read(&mut self, index: u8, offset: u64, data: &mut [u8]) {
        let _ = (index, offset);
        data.fill(0xFF);
    }

    /// A guest write at `offset` inside BAR `index`.
    fn bar_write(&mut self, index: u8, offset: u64, data: &[u8]) -> DeviceAction {
        let _ = (index, offset, data);
        DeviceAction::Resume
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_methods_serve_the_header_and_no_bars() {
        let mut bridge = HostBridge::new();
        let mut data = [0u8; 4];
        bridge.config_read(0, &mut data);
        assert_eq!(u32::from_le_bytes(data), 0x0D57_8086);
        bridge.config_write(INTERRUPT_LINE, &[7]);
        assert_eq!(bridge.config_space().interrupt_line(), 7);
        bridge.config_space_mut().set_interrupt(1, 9);
        assert_eq!(bridge.config_space().interrupt_pin(), 1);
        bridge.bar_read(0, 0, &mut data);
        assert_eq!(data, [0xFF; 4]);
        assert_eq!(bridge.bar_write(0, 0, &data), DeviceAction::Resume);
        let m = Mutex::new(5);
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 6);
    }
}
