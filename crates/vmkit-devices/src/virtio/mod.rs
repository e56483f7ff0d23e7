//! Virtio 1.x devices over PCI (modern, non-transitional): the transport
//! ([`VirtioPciDevice`]) and the device trait ([`VirtioDevice`]) that virtio-blk
//! ([`block::VirtioBlock`]) implements.
//!
//! The transport is a [`MutPciDevice`](crate::pci::MutPciDevice), plugged into the PCI root as
//! an `Arc<Mutex<VirtioPciDevice<D>>>`, with one 64-bit memory BAR below 4 GiB that holds the common configuration, ISR, device configuration and notification
//! structures and the MSI-X table and PBA, found through virtio's vendor capabilities. It runs
//! the device-status state machine and feature negotiation, keeps the queue registers, and on
//! `DRIVER_OK` hands configured [`Queue`]s to the device. A notification write completes the
//! device's work before the exit returns, so a polling driver finds its request done on its
//! first look. Interrupts go out through MSI-X ([`MsiTrigger`]) or, with MSI-X off, a
//! level-triggered INTx# line ([`InterruptTrigger`](crate::InterruptTrigger)) that the guest
//! acknowledges by reading ISR.

pub mod block;
pub mod common_cfg;
#[cfg(any(test, feature = "test-utils"))]
#[cfg_attr(docsrs, doc(cfg(feature = "test-utils")))]
pub mod driver;
mod interrupt;
mod pci;
#[cfg(test)]
mod testing;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use virtio_bindings::{virtio_config, virtio_ids, virtio_ring};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use crate::pci::{MsixMessage, lock};

/// The MSI sender trait, defined in vmkit-exits (it is PCI's, not virtio's); kept at this path.
pub use vmkit_exits::MsiTrigger;

pub use pci::{
    BAR_SIZE, COMMON_CFG_LEN, COMMON_CFG_OFFSET, DEVICE_CFG_OFFSET, ISR_OFFSET, MAX_QUEUES,
    MSIX_PBA_OFFSET, MSIX_TABLE_OFFSET, NOTIFY_OFF_MULTIPLIER, NOTIFY_OFFSET,
    VIRTIO_PCI_CAP_COMMON_CFG, VIRTIO_PCI_CAP_DEVICE_CFG, VIRTIO_PCI_CAP_ISR_CFG,
    VIRTIO_PCI_CAP_NOTIFY_CFG, VIRTIO_PCI_CAP_PCI_CFG, VirtioPciDevice, VirtioPciError,
    VirtioPciInterrupts, VirtioPciStats,
};

// The virtio constants below come from virtio-bindings where it has them (device types, status
// bits, feature bits). virtio-bindings 0.2 has no `virtio_pci` module, so the PCI IDs,
// `VIRTIO_MSI_NO_VECTOR`, the ISR bits and the `VIRTIO_PCI_CAP_*` types (in `pci.rs`) are
// written here, from the specification (virtio 1.x, section 4.1).

/// PCI vendor ID of virtio devices.
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1AF4;
/// PCI device ID of a modern virtio device of type 0; add the device type.
pub const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;
/// PCI subsystem ID of vmkit's virtio devices (as QEMU's modern devices; at least 0x40).
pub const VIRTIO_PCI_SUBSYSTEM_ID: u16 = 0x1100;
/// "No MSI-X vector": the event is not signalled when MSI-X is enabled.
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xFFFF;

/// Device type of a network card.
pub const TYPE_NET: u32 = virtio_ids::VIRTIO_ID_NET;
/// Device type of a block device.
pub const TYPE_BLOCK: u32 = virtio_ids::VIRTIO_ID_BLOCK;
/// Device type of a console.
pub const TYPE_CONSOLE: u32 = virtio_ids::VIRTIO_ID_CONSOLE;

/// Device status: the guest noticed the device.
pub const STATUS_ACKNOWLEDGE: u8 = virtio_config::VIRTIO_CONFIG_S_ACKNOWLEDGE as u8;
/// Device status: the guest has a driver for it.
pub const STATUS_DRIVER: u8 = virtio_config::VIRTIO_CONFIG_S_DRIVER as u8;
/// Device status: the driver is ready; the device may use its queues.
pub const STATUS_DRIVER_OK: u8 = virtio_config::VIRTIO_CONFIG_S_DRIVER_OK as u8;
/// Device status: feature negotiation is complete (refused unless the features are acceptable).
pub const STATUS_FEATURES_OK: u8 = virtio_config::VIRTIO_CONFIG_S_FEATURES_OK as u8;
/// Device status: the device hit an error it cannot recover from without a reset.
pub const STATUS_DEVICE_NEEDS_RESET: u8 = virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET as u8;
/// Device status: the driver gave up on the device.
pub const STATUS_FAILED: u8 = virtio_config::VIRTIO_CONFIG_S_FAILED as u8;

/// Feature: the device follows virtio 1.x (required by a modern transport).
pub const F_VERSION_1: u64 = 1 << virtio_config::VIRTIO_F_VERSION_1;
/// Feature: descriptors may point to indirect descriptor tables.
pub const F_RING_INDIRECT_DESC: u64 = 1 << virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
/// Feature: `used_event`/`avail_event` suppress notifications. The transport handles it, but
/// only a device that lists it in its own features offers it: with it, a device that serves a
/// bounded number of chains per notification could leave a chain published meanwhile without a
/// notification to come (virtio-blk does not offer it).
pub const F_RING_EVENT_IDX: u64 = 1 << virtio_ring::VIRTIO_RING_F_EVENT_IDX;
/// Features the transport adds to every device's: the queue implementation handles them.
pub const TRANSPORT_FEATURES: u64 = F_VERSION_1 | F_RING_INDIRECT_DESC;

/// ISR bit: a queue has used buffers.
pub const ISR_QUEUE: u8 = 1;
/// ISR bit: the device configuration changed.
pub const ISR_CONFIG: u8 = 2;

/// A test double that records the messages sent and can be told to fail.
#[derive(Debug, Default)]
pub struct MsiRecorder {
    messages: Mutex<Vec<MsixMessage>>,
    failing: AtomicBool,
}

impl MsiRecorder {
    /// A recorder with nothing recorded.
    pub fn new() -> Self {
        Self::default()
    }

    /// The messages sent so far, oldest first.
    pub fn messages(&self) -> Vec<MsixMessage> {
        lock(&self.messages).clone()
    }

    /// Makes every later send fail (`true`) or succeed again (`false`); failures are not recorded.
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::Relaxed);
    }
}

impl MsiTrigger for MsiRecorder {
    fn send(&self, address: u64, data: u32) -> io::Result<()> {
        if self.failing.load(Ordering::Relaxed) {
            return Err(io::Error::other("MSI configured to fail"));
        }
        lock(&self.messages).push(MsixMessage { address, data });
        Ok(())
    }
}

/// How a device signals the driver; the transport implements it (MSI-X vector or ISR + INTx#).
pub trait VirtioInterrupt: Send + Sync {
    /// Queue `queue` has new used buffers.
    fn signal_used_queue(&self, queue: u16);
    /// The device configuration changed (bumps the configuration generation).
    fn signal_config_change(&self);
}

/// Why a device refused activation; the transport then sets `DEVICE_NEEDS_RESET`.
#[derive(Debug, displaydoc::Display, thiserror::Error)]
#[ignore_extra_doc_attributes]
pub enum ActivateError {
    /// queue {0} is required but the driver did not enable it
    QueueNotEnabled(u16),
    /// the device got {got} queues, it has {expected}
    QueueCount {
        /// The device's queue count.
        expected: usize,
        /// What it was given.
        got: usize,
    },
}

/// A queue the device can no longer use; the transport then sets `DEVICE_NEEDS_RESET`.
#[derive(Debug, displaydoc::Display, thiserror::Error)]
#[ignore_extra_doc_attributes]
pub enum QueueError {
    /// queue {0} does not exist or is not active
    NotActive(u16),
    /// queue {index} is broken
    Broken {
        /// The queue.
        index: u16,
        /// What the queue implementation said.
        source: virtio_queue::Error,
    },
}

/// A virtio device model behind a transport.
///
/// The transport calls these with the device's lock held. Guest-controlled data (configuration
/// offsets and values, descriptor chains) gets a defined answer and never panics.
pub trait VirtioDevice: Send {
    /// The virtio device type (2 for block).
    fn device_type(&self) -> u32;

    /// The maximum size of each queue (powers of two); the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// The device's feature bits (the transport adds [`TRANSPORT_FEATURES`]).
    fn features(&self) -> u64;

    /// Bytes of device configuration space.
    fn config_len(&self) -> usize;

    /// Reads device configuration at `offset`; bytes past the end read 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes device configuration at `offset`; read-only and unknown bytes are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// The driver set `DRIVER_OK`: start using `queues` (one per entry of
    /// [`queue_max_sizes`](Self::queue_max_sizes); a queue the driver did not enable is not
    /// ready). `acked_features` is what the driver accepted; queues already have `EVENT_IDX`
    /// set accordingly, so a device signals through `interrupt` when `needs_notification` says.
    fn activate(
        &mut self,
        acked_features: u64,
        queues: Vec<Queue>,
        memory: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError>;

    /// The driver notified queue `index`: process what it made available.
    ///
    /// This runs inside the guest's exit: its work must be bounded by a constant no guest value
    /// can raise (virtio-blk serves only the chains published before the call, each read up to
    /// a fixed number of descriptors).
    fn process_queue(&mut self, index: u16) -> Result<(), QueueError>;

    /// The driver reset the device: drop the queues, memory and interrupt, back to the state
    /// before activation (the backend, e.g. a disk image, stays).
    fn reset(&mut self);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_records_and_fails() {
        let msi = Arc::new(MsiRecorder::new());
        msi.send(0xFEE0_0000, 0x41).unwrap();
        let shared: Arc<dyn MsiTrigger> = msi.clone();
        shared.send(0xFEE0_1000, 0x42).unwrap();
        msi.set_failing(true);
        assert!(msi.send(1, 2).is_err());
        assert_eq!(
            msi.messages(),
            vec![
                MsixMessage {
                    address: 0xFEE0_0000,
                    data: 0x41
                },
                MsixMessage {
                    address: 0xFEE0_1000,
                    data: 0x42
                }
            ]
        );
    }

    #[test]
    fn errors_read_well() {
        assert!(
            ActivateError::QueueNotEnabled(0)
                .to_string()
                .contains("queue 0")
        );
        assert!(
            ActivateError::QueueCount {
                expected: 1,
                got: 2
            }
            .to_string()
            .contains("got 2")
        );
        assert!(QueueError::NotActive(3).to_string().contains('3'));
        let broken = QueueError::Broken {
            index: 0,
            source: virtio_queue::Error::InvalidAvailRingIndex,
        };
        assert!(broken.to_string().contains("broken"));
    }
}
