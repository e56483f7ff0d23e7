//! PCI: a root complex on bus 0 with type-1 (0xCF8/0xCFC) and ECAM configuration access, a host
//! bridge, and the configuration-space model endpoints are built on.
//!
//! [`PciRoot`] drives any [`PciDevice`], the trait vmkit-exits defines (re-exported here with
//! [`MutPciDevice`], [`PciBar`] and [`PciBarKind`]): configuration reads and writes by offset,
//! BAR accesses by index and offset, and the BARs' layout and decode state. A function written
//! with `&mut self` (the host bridge, [`VirtioPciDevice`](crate::VirtioPciDevice)) implements
//! [`MutPciDevice`] and is plugged as an `Arc<Mutex<T>>`; one with its own finer locking
//! implements [`PciDevice`] directly.
//!
//! Devices are plain state machines: a [`ConfigSpace`] (the type-0 header with its writable-bit
//! masks, BARs and capabilities; [`ConfigSpace::pci_bars`] is what [`PciDevice::bars`] reports)
//! plus BAR register files. [`PciRoot`] owns the slots, answers configuration cycles, and keeps
//! the buses in step with the BARs: it pre-assigns every BAR from the VMM's allocators (below
//! 4 GiB) and enables decoding, through configuration writes as firmware does, and whenever the
//! guest rewrites a BAR or toggles decoding in the command register it moves, removes or
//! restores the device's ranges on the MMIO (or port) bus. Devices never touch a bus
//! themselves. The root bus has [`MAX_SLOTS`] slots; the host bridge takes slot 0, so at most
//! [`MAX_ENDPOINTS`] devices plug in.
//!
//! [`MsixTable`] is the MSI-X table and pending-bit array any function with the MSI-X capability
//! keeps in a BAR (the virtio-pci transport is one): it answers the guest's table accesses and
//! turns a fired vector into the [`MsixMessage`] to send, or a pending bit while masked.
//!
//! Locking: the root serialises configuration cycles with its slot lock. It calls into a device
//! one handler at a time and changes a bus only between those calls, never from inside one, so
//! whatever lock a device takes for a call (the `Mutex` of a [`MutPciDevice`]) is released
//! before a bus changes. BAR accesses reach a device through the bus and the device's own lock
//! alone, never the root's.

mod config;
mod msix;
mod root;

pub use config::{
    BAR0, Bar, BarMapping, BarSpace, CACHE_LINE_SIZE, CAPABILITIES_POINTER, CLASS_CODE, COMMAND,
    COMMAND_BUS_MASTER, COMMAND_INTX_DISABLE, COMMAND_IO_SPACE, COMMAND_MEMORY_SPACE,
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

/// The device traits a PCI function implements, and the BAR description the root reads.
pub use vmkit_exits::{MutPciDevice, PciBar, PciBarKind, PciDevice};

/// Locks a mutex, serving the data even if a panic poisoned it: no code of this crate panics
/// while holding a device lock, so the state behind it is consistent.
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Capability ID of a vendor-specific capability (virtio's structures use it).
pub const CAP_ID_VENDOR: u8 = 0x09;
/// Capability ID of MSI-X.
pub const CAP_ID_MSIX: u8 = 0x11;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_bridge_serves_its_header_through_the_mutex() {
        let bridge: &dyn PciDevice = &Mutex::new(HostBridge::new());
        let mut data = [0u8; 4];
        bridge.config_read(0, &mut data);
        assert_eq!(u32::from_le_bytes(data), 0x0D57_8086);
        bridge.config_write(INTERRUPT_LINE as u8, &[7]);
        bridge.config_read(INTERRUPT_LINE as u8, &mut data[..1]);
        assert_eq!(data[0], 7);
        assert_eq!(bridge.bars(), [None; NUM_BARS]);
        bridge.bar_read(0, 0, &mut data);
        assert_eq!(data, [0xFF; 4]);
        assert_eq!(
            bridge.bar_write(0, 0, &data),
            vmkit_exits::DeviceAction::Resume
        );
        let m = Mutex::new(5);
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 6);
    }
}
