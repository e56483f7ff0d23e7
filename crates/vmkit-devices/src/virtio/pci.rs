//! The modern virtio-pci transport (virtio 1.x, section 4.1 "Virtio Over PCI Bus").

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use log::debug;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmkit_exits::DeviceAction;

use super::interrupt::PciInterrupt;
use super::{
    F_RING_EVENT_IDX, F_VERSION_1, MsiTrigger, STATUS_ACKNOWLEDGE, STATUS_DEVICE_NEEDS_RESET,
    STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FAILED, STATUS_FEATURES_OK, TRANSPORT_FEATURES,
    TYPE_BLOCK, TYPE_CONSOLE, TYPE_NET, VIRTIO_MSI_NO_VECTOR, VIRTIO_PCI_DEVICE_ID_BASE,
    VIRTIO_PCI_SUBSYSTEM_ID, VIRTIO_PCI_VENDOR_ID, VirtioDevice, VirtioInterrupt,
};
use crate::pci::MSIX_ENTRY_SIZE;
use crate::pci::{
    CAP_ID_MSIX, CAP_ID_VENDOR, COMMAND, COMMAND_INTX_DISABLE, ConfigError, ConfigSpace,
    MutPciDevice, NUM_BARS, PciBar, PciBarKind, PciIds, STATUS, STATUS_INTERRUPT,
};
use crate::trigger::InterruptTrigger;

/// Size of BAR 0.
pub const BAR_SIZE: u64 = 0x8000;
/// Offset of the common configuration structure in BAR 0.
pub const COMMON_CFG_OFFSET: u64 = 0x0000;
/// Length of the common configuration structure (virtio 1.1 layout).
pub const COMMON_CFG_LEN: u64 = 0x38;
/// Offset of the ISR status byte in BAR 0.
pub const ISR_OFFSET: u64 = 0x1000;
/// Offset of the device configuration in BAR 0.
pub const DEVICE_CFG_OFFSET: u64 = 0x2000;
/// Offset of the notification area in BAR 0.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Bytes between the notification addresses of consecutive queues.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
/// Offset of the MSI-X table in BAR 0.
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
/// Offset of the MSI-X pending-bit array in BAR 0.
pub const MSIX_PBA_OFFSET: u64 = 0x6000;
/// Most queues a device may have: one MSI-X vector each plus one for configuration changes
/// must fit the 8 KiB table area.
pub const MAX_QUEUES: usize = 511;
/// Size of each structure's page.
const REGION_SIZE: u64 = 0x1000;

// virtio-bindings 0.2 has no `virtio_pci` module: the capability types are written here, as
// `linux/virtio_pci.h` has them.

/// `cfg_type` of the common configuration capability.
pub const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
/// `cfg_type` of the notification capability.
pub const VIRTIO_PCI_CAP_NOTIFY_CFG: u8 = 2;
/// `cfg_type` of the ISR capability.
pub const VIRTIO_PCI_CAP_ISR_CFG: u8 = 3;
/// `cfg_type` of the device configuration capability.
pub const VIRTIO_PCI_CAP_DEVICE_CFG: u8 = 4;
/// `cfg_type` of the PCI configuration access capability.
pub const VIRTIO_PCI_CAP_PCI_CFG: u8 = 5;

/// MSI-X message control: MSI-X enable.
const MSIX_ENABLE: u16 = 1 << 15;
/// MSI-X message control: function mask.
const MSIX_FUNCTION_MASK: u16 = 1 << 14;

/// The interrupt lines a VMM wires to the transport. Either may be absent: without `msi` the
/// device offers no MSI-X capability (drivers use INTx#); without `intx` its interrupt pin
/// register reads 0. With neither, a driver can only poll.
#[derive(Clone, Default)]
pub struct VirtioPciInterrupts {
    /// The level-triggered INTA# line.
    pub intx: Option<Arc<dyn InterruptTrigger>>,
    /// The GSI INTA# is routed to, reported in the interrupt line register.
    pub intx_line: u8,
    /// Where MSI-X messages go.
    pub msi: Option<Arc<dyn MsiTrigger>>,
}

/// A device the transport cannot present; nothing was built.
#[derive(Debug, displaydoc::Display, thiserror::Error)]
#[ignore_extra_doc_attributes]
pub enum VirtioPciError {
    /// the device has {0} queues; the transport takes 1..=511
    QueueCount(usize),
    /// queue {index} has maximum size {size}, not a power of two in 1..=32768
    QueueSize {
        /// The queue.
        index: usize,
        /// Its maximum size.
        size: u16,
    },
    /// device configuration of {0} bytes does not fit its 4 KiB page
    ConfigLen(usize),
    /// device type {0} has no modern PCI device ID
    DeviceType(u32),
    /// the configuration space refused the layout
    Config(#[from] ConfigError),
}

/// Counts of a transport's guest traffic and events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtioPciStats {
    /// Queue notifications processed.
    pub notifications: u64,
    /// Notifications ignored (device not live, or needing a reset).
    pub ignored_notifications: u64,
    /// BAR or capability accesses of a size or offset that means nothing (ignored).
    pub bad_accesses: u64,
    /// Driver requests the specification forbids (ignored): clearing status bits, writing
    /// features after `FEATURES_OK`, changing an enabled queue, an invalid queue size.
    pub driver_errors: u64,
    /// `FEATURES_OK` refused (features not offered, or no `VIRTIO_F_VERSION_1`).
    pub features_refused: u64,
    /// Resets (status written 0).
    pub resets: u64,
    /// Successful activations (`DRIVER_OK`).
    pub activations: u64,
    /// Times the device entered `DEVICE_NEEDS_RESET`.
    pub needs_reset: u64,
    /// MSI-X messages sent.
    pub msi_sent: u64,
    /// INTx# assertions.
    pub intx_asserted: u64,
    /// Events with no interrupt to send (no vector mapped).
    pub interrupts_suppressed: u64,
    /// Interrupt triggers that failed.
    pub interrupt_failures: u64,
}

#[derive(Default)]
struct Counters {
    notifications: AtomicU64,
    ignored_notifications: AtomicU64,
    bad_accesses: AtomicU64,
    driver_errors: AtomicU64,
    features_refused: AtomicU64,
    resets: AtomicU64,
    activations: AtomicU64,
    needs_reset: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The queue registers of one queue, as the driver programmed them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct QueueRegs {
    max_size: u16,
    size: u16,
    enabled: bool,
    desc: u64,
    avail: u64,
    used: u64,
}

impl QueueRegs {
    fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            enabled: false,
            desc: 0,
            avail: 0,
            used: 0,
        }
    }
}

/// The little-endian value of up to eight bytes, zero-extended.
fn le_value(data: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = data.len().min(8);
    bytes[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(bytes)
}

/// Whether `offset..offset + len` overlaps `start..start + span`.
fn overlaps(offset: usize, len: usize, start: usize, span: usize) -> bool {
    offset < start + span && start < offset + len
}

/// The PCI class code of a device type.
fn class_code(device_type: u32) -> u32 {
    match device_type {
        TYPE_NET => 0x02_00_00,
        TYPE_BLOCK => 0x01_80_00,
        TYPE_CONSOLE => 0x07_80_00,
        _ => 0xFF_00_00,
    }
}

/// A virtio device on the PCI bus, modern (virtio 1.x) and non-transitional.
///
/// BAR 0 (64-bit memory, [`BAR_SIZE`] bytes) holds every structure, each in its own 4 KiB page:
///
/// | offset | structure | capability |
/// |---|---|---|
/// | 0x0000 | common configuration (0x38 bytes) | `VIRTIO_PCI_CAP_COMMON_CFG` |
/// | 0x1000 | ISR status (1 byte, read clears) | `VIRTIO_PCI_CAP_ISR_CFG` |
/// | 0x2000 | device configuration | `VIRTIO_PCI_CAP_DEVICE_CFG` |
/// | 0x3000 | notifications, queue `n` at `4 * n` | `VIRTIO_PCI_CAP_NOTIFY_CFG` |
/// | 0x4000 | MSI-X table | MSI-X |
/// | 0x6000 | MSI-X pending bits | MSI-X |
///
/// plus the `VIRTIO_PCI_CAP_PCI_CFG` window that reaches the BAR through configuration space.
/// Common-configuration reads of any size return the fields' bytes; writes must use each
/// field's natural width (or 32-bit halves of the 64-bit addresses), as the specification
/// requires of drivers, and anything else is ignored and counted.
pub struct VirtioPciDevice<D: VirtioDevice> {
    device: D,
    config: ConfigSpace,
    interrupt: Arc<PciInterrupt>,
    memory: GuestMemoryMmap,
    msix_cap: Option<usize>,
    pci_cfg_cap: usize,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    queue_select: u16,
    queues: Vec<QueueRegs>,
    active: bool,
    counters: Counters,
}

impl<D: VirtioDevice> VirtioPciDevice<D> {
    /// Presents `device` on PCI: vendor 0x1AF4, device 0x1040 + type, revision 1, BAR 0 as in
    /// the [type docs](Self), MSI-X when `interrupts.msi` is given and INTA# when
    /// `interrupts.intx` is. `memory` is the guest memory its queues live in.
    pub fn new(
        device: D,
        memory: GuestMemoryMmap,
        interrupts: VirtioPciInterrupts,
    ) -> Result<Self, VirtioPciError> {
        let sizes = device.queue_max_sizes().to_vec();
        if sizes.is_empty() || sizes.len() > MAX_QUEUES {
            return Err(VirtioPciError::QueueCount(sizes.len()));
        }
        if let Some((index, &size)) = sizes
            .iter()
            .enumerate()
            .find(|(_, s)| !s.is_power_of_two() || **s > 32768)
        {
            return Err(VirtioPciError::QueueSize { index, size });
        }
        let config_len = device.config_len();
        if config_len as u64 > REGION_SIZE {
            return Err(VirtioPciError::ConfigLen(config_len));
        }
        let device_type = device.device_type();
        let device_id = u16::try_from(device_type)
            .ok()
            .filter(|&t| t < 0x40)
            .map(|t| VIRTIO_PCI_DEVICE_ID_BASE + t)
            .ok_or(VirtioPciError::DeviceType(device_type))?;
        let mut config = ConfigSpace::new(PciIds {
            vendor_id: VIRTIO_PCI_VENDOR_ID,
            device_id,
            revision_id: 1,
            class_code: class_code(device_type),
            subsystem_vendor_id: VIRTIO_PCI_VENDOR_ID,
            subsystem_id: VIRTIO_PCI_SUBSYSTEM_ID,
        });
        config.add_bar(0, PciBarKind::Memory64, BAR_SIZE, false)?;
        // At most 511 queues, so the vector count fits the 11-bit table size.
        let vectors = sizes.len() as u16 + 1;
        let msix_cap = match interrupts.msi {
            Some(_) => {
                let mut body = Vec::with_capacity(10);
                body.extend_from_slice(&(vectors - 1).to_le_bytes());
                body.extend_from_slice(&(MSIX_TABLE_OFFSET as u32).to_le_bytes());
                body.extend_from_slice(&(MSIX_PBA_OFFSET as u32).to_le_bytes());
                Some(config.add_capability(CAP_ID_MSIX, &body, &[0, 0xC0])?)
            }
            None => None,
        };
        let notify_len = sizes.len() as u32 * NOTIFY_OFF_MULTIPLIER;
        Self::add_virtio_cap(&mut config, VIRTIO_PCI_CAP_COMMON_CFG, 0, 0x38, &[])?;
        Self::add_virtio_cap(
            &mut config,
            VIRTIO_PCI_CAP_NOTIFY_CFG,
            NOTIFY_OFFSET,
            notify_len,
            &NOTIFY_OFF_MULTIPLIER.to_le_bytes(),
        )?;
        Self::add_virtio_cap(&mut config, VIRTIO_PCI_CAP_ISR_CFG, ISR_OFFSET, 1, &[])?;
        if config_len > 0 {
            Self::add_virtio_cap(
                &mut config,
                VIRTIO_PCI_CAP_DEVICE_CFG,
                DEVICE_CFG_OFFSET,
                config_len as u32,
                &[],
            )?;
        }
        let pci_cfg_cap = config.add_capability(
            CAP_ID_VENDOR,
            &[
                20,
                VIRTIO_PCI_CAP_PCI_CFG,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
            ],
            &[
                0, 0, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                0xFF, 0xFF,
            ],
        )?;
        if interrupts.intx.is_some() {
            config.set_interrupt(1, interrupts.intx_line);
        }
        let interrupt = Arc::new(PciInterrupt::new(
            sizes.len(),
            vectors,
            interrupts.intx,
            interrupts.msi,
        ));
        Ok(Self {
            device,
            config,
            interrupt,
            memory,
            msix_cap,
            pci_cfg_cap,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            queue_select: 0,
            queues: sizes.into_iter().map(QueueRegs::new).collect(),
            active: false,
            counters: Counters::default(),
        })
    }

    fn add_virtio_cap(
        config: &mut ConfigSpace,
        cfg_type: u8,
        offset: u64,
        length: u32,
        extra: &[u8],
    ) -> Result<usize, ConfigError> {
        // Offsets are inside the 32 KiB BAR.
        let offset = offset as u32;
        let mut body = vec![16 + extra.len() as u8, cfg_type, 0, 0, 0, 0];
        body.extend_from_slice(&offset.to_le_bytes());
        body.extend_from_slice(&length.to_le_bytes());
        body.extend_from_slice(extra);
        config.add_capability(CAP_ID_VENDOR, &body, &[])
    }

    /// The device model.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device model, mutably (for the VMM; guest accesses go through the transport).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The device status register.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// The configuration space as the function presents it (read-only: the guest changes it
    /// through configuration writes).
    pub fn config_space(&self) -> &ConfigSpace {
        &self.config
    }

    /// Whether the device is live (activated at `DRIVER_OK` and not reset since).
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The features the driver accepted (meaningful once `FEATURES_OK` is set).
    pub fn acked_features(&self) -> u64 {
        self.driver_features
    }

    /// Raises INTx# again if the guest has not yet read ISR: for a VMM whose level line was
    /// lowered at the guest's EOI (a KVM resample eventfd).
    pub fn resample_intx(&self) {
        self.interrupt.resample();
    }

    /// The device signals a configuration change (e.g. a resized disk): the generation moves
    /// and the driver is interrupted.
    pub fn signal_config_change(&self) {
        self.interrupt.signal_config_change();
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> VirtioPciStats {
        let c = &self.counters;
        let i = &self.interrupt.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        VirtioPciStats {
            notifications: get(&c.notifications),
            ignored_notifications: get(&c.ignored_notifications),
            bad_accesses: get(&c.bad_accesses),
            driver_errors: get(&c.driver_errors),
            features_refused: get(&c.features_refused),
            resets: get(&c.resets),
            activations: get(&c.activations),
            needs_reset: get(&c.needs_reset),
            msi_sent: get(&i.msi_sent),
            intx_asserted: get(&i.intx_asserted),
            interrupts_suppressed: get(&i.suppressed),
            interrupt_failures: get(&i.failures),
        }
    }

    fn offered_features(&self) -> u64 {
        self.device.features() | TRANSPORT_FEATURES
    }

    fn driver_error(&self, what: &str) {
        bump(&self.counters.driver_errors);
        debug!("virtio-pci: driver error ignored: {what}");
    }

    fn bad_access(&self, offset: u64, len: usize) {
        bump(&self.counters.bad_accesses);
        debug!("virtio-pci: ignored access of {len} bytes at BAR offset {offset:#x}");
    }

    // ---- BAR 0 -----------------------------------------------------------------------------

    fn read_bar0(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset < ISR_OFFSET {
            self.common_read(offset, data);
        } else if offset < DEVICE_CFG_OFFSET {
            if let (ISR_OFFSET, Some(isr)) = (offset, data.first_mut()) {
                *isr = self.interrupt.read_isr();
            }
        } else if offset < NOTIFY_OFFSET {
            self.device.read_config(offset - DEVICE_CFG_OFFSET, data);
        } else if offset < MSIX_TABLE_OFFSET {
            // The notification area reads 0.
        } else if self.msix_cap.is_none() {
            // No MSI-X: the table and PBA pages read 0.
        } else if offset < MSIX_PBA_OFFSET {
            self.interrupt.read_table(offset - MSIX_TABLE_OFFSET, data);
        } else if offset < BAR_SIZE {
            self.interrupt.read_pba(offset - MSIX_PBA_OFFSET, data);
        }
    }

    fn write_bar0(&mut self, offset: u64, data: &[u8]) {
        if offset < ISR_OFFSET {
            self.common_write(offset, data);
        } else if (DEVICE_CFG_OFFSET..NOTIFY_OFFSET).contains(&offset) {
            self.device.write_config(offset - DEVICE_CFG_OFFSET, data);
        } else if (NOTIFY_OFFSET..MSIX_TABLE_OFFSET).contains(&offset) {
            self.notify(offset - NOTIFY_OFFSET, data.len());
        } else if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&offset) && self.msix_cap.is_some()
        {
            if !self.interrupt.write_table(offset - MSIX_TABLE_OFFSET, data) {
                self.bad_access(offset, data.len());
            }
        } else {
            // ISR and PBA are read-only; the rest is unused.
            self.bad_access(offset, data.len());
        }
    }

    // ---- common configuration ----------------------------------------------------------------

    fn selected_queue(&self) -> Option<&QueueRegs> {
        self.queues.get(usize::from(self.queue_select))
    }

    /// The field that holds byte `offset` of the common configuration: its start and value.
    fn common_field(&self, offset: u64) -> (u64, u64) {
        let window = |value: u64, select: u32| match select {
            0 => value & 0xFFFF_FFFF,
            1 => value >> 32,
            _ => 0,
        };
        let queue = self.selected_queue();
        let queue_field = |f: fn(&QueueRegs) -> u64| queue.map_or(0, f);
        match offset {
            0x00..=0x03 => (0x00, self.device_feature_select.into()),
            0x04..=0x07 => (
                0x04,
                window(self.offered_features(), self.device_feature_select),
            ),
            0x08..=0x0B => (0x08, self.driver_feature_select.into()),
            0x0C..=0x0F => (
                0x0C,
                window(self.driver_features, self.driver_feature_select),
            ),
            0x10..=0x11 => (0x10, self.interrupt.config_vector().into()),
            0x12..=0x13 => (0x12, self.queues.len() as u64),
            0x14 => (0x14, self.status.into()),
            0x15 => (0x15, self.interrupt.generation().into()),
            0x16..=0x17 => (0x16, self.queue_select.into()),
            0x18..=0x19 => (0x18, queue_field(|q| q.size.into())),
            0x1A..=0x1B => (
                0x1A,
                match queue {
                    Some(_) => self.interrupt.queue_vector(self.queue_select).into(),
                    None => VIRTIO_MSI_NO_VECTOR.into(),
                },
            ),
            0x1C..=0x1D => (0x1C, queue_field(|q| q.enabled.into())),
            0x1E..=0x1F => (0x1E, queue.map_or(0, |_| self.queue_select.into())),
            0x20..=0x27 => (0x20, queue_field(|q| q.desc)),
            0x28..=0x2F => (0x28, queue_field(|q| q.avail)),
            0x30..=0x37 => (0x30, queue_field(|q| q.used)),
            _ => (offset, 0),
        }
    }

    fn common_read(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            let o = offset + i as u64;
            if o < COMMON_CFG_LEN {
                let (start, value) = self.common_field(o);
                *byte = (value >> (8 * (o - start))) as u8;
            }
        }
    }

    fn common_write(&mut self, offset: u64, data: &[u8]) {
        let value = le_value(data);
        match (offset, data.len()) {
            (0x00, 4) => self.device_feature_select = value as u32,
            (0x08, 4) => self.driver_feature_select = value as u32,
            (0x0C, 4) => self.write_driver_features(value as u32),
            (0x10, 2) => self.interrupt.set_config_vector(value as u16),
            (0x14, 1) => self.write_status(value as u8),
            (0x16, 2) => self.queue_select = value as u16,
            (0x18, 2) => self.write_queue(|q| {
                let size = value as u16;
                if size.is_power_of_two() && size <= q.max_size {
                    q.size = size;
                    true
                } else {
                    false
                }
            }),
            (0x1A, 2) => match self.selected_queue() {
                Some(_) => self
                    .interrupt
                    .set_queue_vector(self.queue_select, value as u16),
                None => self.driver_error("vector of a queue that does not exist"),
            },
            (0x1C, 2) => self.write_queue(|q| {
                // Only 1 is defined; a driver must not write 0 (no queue reset offered).
                q.enabled = value == 1;
                value == 1
            }),
            (0x20..=0x37, 4) if offset.is_multiple_of(4) => {
                let high = offset % 8 == 4;
                let field = (offset - 0x20) / 8;
                self.write_queue(|q| {
                    let address = match field {
                        0 => &mut q.desc,
                        1 => &mut q.avail,
                        _ => &mut q.used,
                    };
                    *address = if high {
                        (*address & 0xFFFF_FFFF) | (value << 32)
                    } else {
                        (*address & !0xFFFF_FFFF) | value
                    };
                    true
                });
            }
            (0x20 | 0x28 | 0x30, 8) => {
                let field = (offset - 0x20) / 8;
                self.write_queue(|q| {
                    match field {
                        0 => q.desc = value,
                        1 => q.avail = value,
                        _ => q.used = value,
                    }
                    true
                });
            }
            _ => self.bad_access(offset, data.len()),
        }
    }

    /// Changes the selected queue's registers when the driver still may: the queue exists, is
    /// not enabled and the device is not live. `change` says whether the value was valid.
    fn write_queue(&mut self, change: impl FnOnce(&mut QueueRegs) -> bool) {
        let live = self.status & STATUS_DRIVER_OK != 0;
        match self.queues.get_mut(usize::from(self.queue_select)) {
            Some(q) if !q.enabled && !live => {
                let mut copy = *q;
                if change(&mut copy) {
                    *q = copy;
                } else {
                    self.driver_error("invalid queue register value");
                }
            }
            _ => self.driver_error("queue register of a missing, enabled or live queue"),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & STATUS_FEATURES_OK != 0 {
            return self.driver_error("features written after FEATURES_OK");
        }
        match self.driver_feature_select {
            0 => self.driver_features = (self.driver_features & !0xFFFF_FFFF) | u64::from(value),
            1 => {
                self.driver_features =
                    (self.driver_features & 0xFFFF_FFFF) | (u64::from(value) << 32)
            }
            _ if value == 0 => {}
            _ => self.driver_error("feature bits beyond 63"),
        }
    }

    // ---- status state machine ----------------------------------------------------------------

    fn write_status(&mut self, value: u8) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        // DEVICE_NEEDS_RESET belongs to the device: the driver neither sets nor clears it.
        let new = (value & !STATUS_DEVICE_NEEDS_RESET) | (old & STATUS_DEVICE_NEEDS_RESET);
        if new & old != old {
            return self.driver_error("status bits cleared without a reset");
        }
        let added = new & !old;
        let needs = |bit: u8, prerequisite: u8| added & bit == 0 || new & prerequisite != 0;
        if !needs(STATUS_DRIVER, STATUS_ACKNOWLEDGE)
            || !needs(STATUS_FEATURES_OK, STATUS_DRIVER)
            || !needs(STATUS_DRIVER_OK, STATUS_FEATURES_OK)
        {
            return self.driver_error("status bits set out of order");
        }
        let mut new = new;
        if added & STATUS_FEATURES_OK != 0 && !self.features_acceptable() {
            bump(&self.counters.features_refused);
            debug!(
                "virtio-pci: FEATURES_OK refused for features {:#x}",
                self.driver_features
            );
            new &= !(STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        }
        self.status = new;
        if added & new & STATUS_DRIVER_OK != 0 && new & STATUS_FAILED == 0 {
            self.activate();
        }
    }

    fn features_acceptable(&self) -> bool {
        self.driver_features & !self.offered_features() == 0
            && self.driver_features & F_VERSION_1 != 0
    }

    fn set_needs_reset(&mut self) {
        bump(&self.counters.needs_reset);
        self.status |= STATUS_DEVICE_NEEDS_RESET;
        if self.status & STATUS_DRIVER_OK != 0 {
            self.interrupt.signal_config_change();
        }
    }

    /// Whether the ring of `regs` is aligned and inside guest memory.
    fn queue_fits(&self, regs: &QueueRegs) -> bool {
        let n = u64::from(regs.size);
        let ring = |address: u64, align: u64, len: u64| {
            address.is_multiple_of(align)
                && self.memory.check_range(GuestAddress(address), len as usize)
        };
        ring(regs.desc, 16, 16 * n)
            && ring(regs.avail, 2, 6 + 2 * n)
            && ring(regs.used, 4, 6 + 8 * n)
    }

    fn activate(&mut self) {
        let event_idx = self.driver_features & F_RING_EVENT_IDX != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, regs) in self.queues.iter().enumerate() {
            // Maximum sizes were validated at construction, so `Queue::new` succeeds.
            let Ok(mut queue) = Queue::new(regs.max_size) else {
                return self.set_needs_reset();
            };
            if regs.enabled {
                if !self.queue_fits(regs) {
                    debug!("virtio-pci: queue {index} is misaligned or outside guest memory");
                    return self.set_needs_reset();
                }
                let configured = queue
                    .try_set_size(regs.size)
                    .and_then(|()| queue.try_set_desc_table_address(GuestAddress(regs.desc)))
                    .and_then(|()| queue.try_set_avail_ring_address(GuestAddress(regs.avail)))
                    .and_then(|()| queue.try_set_used_ring_address(GuestAddress(regs.used)));
                if configured.is_err() {
                    return self.set_needs_reset();
                }
                queue.set_event_idx(event_idx);
                queue.set_ready(true);
            }
            queues.push(queue);
        }
        let interrupt: Arc<dyn VirtioInterrupt> = self.interrupt.clone();
        match self
            .device
            .activate(self.driver_features, queues, self.memory.clone(), interrupt)
        {
            Ok(()) => {
                bump(&self.counters.activations);
                self.active = true;
            }
            Err(err) => {
                debug!("virtio-pci: activation refused: {err}");
                self.set_needs_reset();
            }
        }
    }

    fn reset(&mut self) {
        bump(&self.counters.resets);
        self.device.reset();
        self.active = false;
        self.status = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.queue_select = 0;
        for q in &mut self.queues {
            *q = QueueRegs::new(q.max_size);
        }
        self.interrupt.reset();
    }

    // ---- notifications -----------------------------------------------------------------------

    fn notify(&mut self, offset: u64, len: usize) {
        let multiplier = u64::from(NOTIFY_OFF_MULTIPLIER);
        let queue = offset / multiplier;
        if !offset.is_multiple_of(multiplier) || queue >= self.queues.len() as u64 {
            return self.bad_access(NOTIFY_OFFSET + offset, len);
        }
        if !self.active || self.status & STATUS_DEVICE_NEEDS_RESET != 0 {
            bump(&self.counters.ignored_notifications);
            return;
        }
        bump(&self.counters.notifications);
        // `queue` < MAX_QUEUES.
        if let Err(err) = self.device.process_queue(queue as u16) {
            debug!("virtio-pci: {err}");
            self.set_needs_reset();
        }
    }

    // ---- configuration-space hooks ------------------------------------------------------------

    /// Runs the access the PCI configuration access capability describes.
    fn pci_cfg_access(&mut self, write: bool) {
        let cap = self.pci_cfg_cap;
        let bar = self.config.read_u8(cap + 4);
        let offset = u64::from(self.config.read_u32(cap + 8));
        let length = self.config.read_u32(cap + 12) as usize;
        if bar != 0
            || !matches!(length, 1 | 2 | 4)
            || offset % length as u64 != 0
            || offset + length as u64 > BAR_SIZE
        {
            return self.bad_access(offset, length);
        }
        let mut data = [0u8; 4];
        if write {
            self.config.read(cap + 16, &mut data[..length]);
            self.write_bar0(offset, &data[..length]);
        } else {
            self.read_bar0(offset, &mut data[..length]);
            self.config.set_bytes(cap + 16, &data[..length]);
        }
    }
}

/// The transport is plugged as a `Mutex<VirtioPciDevice<D>>`.
impl<D: VirtioDevice> MutPciDevice for VirtioPciDevice<D> {
    fn config_read(&mut self, offset: u8, data: &mut [u8]) {
        let offset = usize::from(offset);
        if overlaps(offset, data.len(), self.pci_cfg_cap + 16, 4) {
            self.pci_cfg_access(false);
        }
        if overlaps(offset, data.len(), STATUS, 2) {
            if self.interrupt.intx_pending() {
                self.config.set_status_bits(STATUS_INTERRUPT);
            } else {
                self.config.clear_status_bits(STATUS_INTERRUPT);
            }
        }
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: u8, data: &[u8]) {
        let offset = usize::from(offset);
        self.config.write(offset, data);
        if overlaps(offset, data.len(), COMMAND, 2) {
            let disabled = self.config.command() & COMMAND_INTX_DISABLE != 0;
            self.interrupt.set_intx_disabled(disabled);
        }
        if let Some(cap) = self.msix_cap
            && overlaps(offset, data.len(), cap + 2, 2)
        {
            let control = self.config.read_u16(cap + 2);
            self.interrupt.set_msix_control(
                control & MSIX_ENABLE != 0,
                control & MSIX_FUNCTION_MASK != 0,
            );
        }
        if overlaps(offset, data.len(), self.pci_cfg_cap + 16, 4) {
            self.pci_cfg_access(true);
        }
    }

    fn bars(&self) -> [Option<PciBar>; NUM_BARS] {
        self.config.pci_bars()
    }

    fn bar_read(&mut self, index: u8, offset: u64, data: &mut [u8]) {
        if index == 0 && offset < BAR_SIZE {
            self.read_bar0(offset, data);
        } else {
            self.bad_access(offset, data.len());
            data.fill(0xFF);
        }
    }

    fn bar_write(&mut self, index: u8, offset: u64, data: &[u8]) -> DeviceAction {
        if index == 0 && offset < BAR_SIZE {
            self.write_bar0(offset, data);
        } else {
            self.bad_access(offset, data.len());
        }
        DeviceAction::Resume
    }
}

impl<D: VirtioDevice> std::fmt::Debug for VirtioPciDevice<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioPciDevice")
            .field("device_type", &self.device.device_type())
            .field("status", &self.status)
            .field("active", &self.active)
            .field("msix", &self.interrupt.msix_enabled())
            .finish_non_exhaustive()
    }
}

/// MSI-X table entries fit their page (checked at compile time).
const _: () =
    assert!((MAX_QUEUES as u64 + 1) * MSIX_ENTRY_SIZE <= MSIX_PBA_OFFSET - MSIX_TABLE_OFFSET);

#[cfg(test)]
mod tests;
