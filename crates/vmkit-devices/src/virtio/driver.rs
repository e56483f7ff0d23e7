//! A minimal virtio-pci driver (feature `test-utils`): what a guest driver does to bring a
//! device up — reset, feature negotiation, queue set-up, `DRIVER_OK` — plus notifications and
//! the driver side of a split virtqueue ([`Ring`]). For tests, fuzzers and benchmarks that drive
//! a [`VirtioPciDevice`] directly or through an [`MmioBus`]; not for production.
//!
//! Register access goes through [`Bar0`], implemented for the transport itself and for a BAR
//! placed on a bus ([`BusBar0`]). Offsets are the named ones of [`common_cfg`].
//!
//! ```
//! use vmkit_devices::virtio::driver::{self, Ring};
//! use vmkit_devices::virtio::{F_VERSION_1, STATUS_DRIVER_OK, VirtioPciInterrupts};
//! use vmkit_devices::{MemDisk, VirtioBlock, VirtioPciDevice};
//! use vmkit_memory::vm_memory::{GuestAddress, GuestMemoryMmap};
//!
//! let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
//! let mut dev = VirtioPciDevice::new(
//!     VirtioBlock::new(MemDisk::new(vec![0; 4096], false)),
//!     memory.clone(),
//!     VirtioPciInterrupts::default(),
//! )
//! .unwrap();
//! let ring = Ring::new(&memory, 16);
//! let status = driver::init(&mut dev, F_VERSION_1, &[ring.config()]).unwrap();
//! assert_ne!(status & STATUS_DRIVER_OK, 0);
//! assert!(dev.is_active());
//! ```

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmkit_exits::{MmioAddress, MmioBus};

use super::common_cfg;
use super::pci::{DEVICE_CFG_OFFSET, NOTIFY_OFF_MULTIPLIER, NOTIFY_OFFSET};
use super::{
    STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK, VirtioDevice,
    VirtioPciDevice,
};
use crate::pci::MutPciDevice;

/// Descriptor flag: the chain continues at `next`.
pub const DESC_F_NEXT: u16 = VRING_DESC_F_NEXT as u16;
/// Descriptor flag: the buffer is device-writable.
pub const DESC_F_WRITE: u16 = VRING_DESC_F_WRITE as u16;
/// Descriptor flag: the buffer is an indirect descriptor table.
pub const DESC_F_INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

/// Where [`Ring::new`] puts the descriptor table, available ring and used ring.
pub const DEFAULT_DESC: u64 = 0x1000;
/// See [`DEFAULT_DESC`].
pub const DEFAULT_AVAIL: u64 = 0x2000;
/// See [`DEFAULT_DESC`].
pub const DEFAULT_USED: u64 = 0x3000;

/// Driver-side access to the registers of a virtio-pci device's BAR 0 (offsets inside the BAR).
pub trait Bar0 {
    /// Writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
    /// Reads `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);

    /// Reads `len` (at most 8) bytes at `offset`, little-endian.
    fn r(&mut self, offset: u64, len: usize) -> u64 {
        let mut data = [0u8; 8];
        self.read(offset, &mut data[..len.min(8)]);
        u64::from_le_bytes(data)
    }
    /// Writes `data` at `offset`.
    fn w(&mut self, offset: u64, data: &[u8]) {
        self.write(offset, data);
    }
    /// An 8-bit write.
    fn w8(&mut self, offset: u64, v: u8) {
        self.write(offset, &[v]);
    }
    /// A 16-bit write.
    fn w16(&mut self, offset: u64, v: u16) {
        self.write(offset, &v.to_le_bytes());
    }
    /// A 32-bit write.
    fn w32(&mut self, offset: u64, v: u32) {
        self.write(offset, &v.to_le_bytes());
    }
    /// A 64-bit write.
    fn w64(&mut self, offset: u64, v: u64) {
        self.write(offset, &v.to_le_bytes());
    }
    /// An 8-bit read.
    fn r8(&mut self, offset: u64) -> u8 {
        self.r(offset, 1) as u8
    }
    /// A 16-bit read.
    fn r16(&mut self, offset: u64) -> u16 {
        self.r(offset, 2) as u16
    }
    /// A 32-bit read.
    fn r32(&mut self, offset: u64) -> u32 {
        self.r(offset, 4) as u32
    }
}

impl<D: VirtioDevice> Bar0 for VirtioPciDevice<D> {
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.bar_write(0, offset, data);
    }
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.bar_read(0, offset, data);
    }
}

/// BAR 0 of a device placed on an [`MmioBus`] at `base` (what the guest reaches). An access
/// the bus does not route panics: the test set the BAR up wrong.
#[derive(Clone, Copy, Debug)]
pub struct BusBar0<'a> {
    /// The bus.
    pub bus: &'a MmioBus,
    /// BAR 0's guest-physical address.
    pub base: u64,
}

impl Bar0 for BusBar0<'_> {
    fn write(&mut self, offset: u64, data: &[u8]) {
        let routed = self
            .bus
            .write(MmioAddress(self.base + offset), data)
            .is_some();
        assert!(routed, "no device at {:#x}", self.base + offset);
    }
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let routed = self.bus.read(MmioAddress(self.base + offset), data);
        assert!(routed, "no device at {:#x}", self.base + offset);
    }
}

/// Where a queue lives and how it signals, as the driver programs it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueConfig {
    /// Queue size (entries).
    pub size: u16,
    /// Guest address of the descriptor table.
    pub desc: u64,
    /// Guest address of the available (driver) ring.
    pub driver: u64,
    /// Guest address of the used (device) ring.
    pub device: u64,
    /// The MSI-X vector to program, if any.
    pub msix_vector: Option<u16>,
}

/// Resets the device (status 0).
pub fn reset(dev: &mut impl Bar0) {
    dev.w8(common_cfg::DEVICE_STATUS, 0);
}

/// Resets the device and negotiates `features` as a driver does (virtio 1.x, 3.1.1: reset,
/// `ACKNOWLEDGE`, `DRIVER`, both feature windows, `FEATURES_OK`); returns the status read back,
/// which lacks `FEATURES_OK` when the device refused the features.
pub fn negotiate(dev: &mut impl Bar0, features: u64) -> u8 {
    reset(dev);
    dev.w8(common_cfg::DEVICE_STATUS, STATUS_ACKNOWLEDGE);
    dev.w8(
        common_cfg::DEVICE_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER,
    );
    for (select, half) in [(0, features as u32), (1, (features >> 32) as u32)] {
        dev.w32(common_cfg::DRIVER_FEATURE_SELECT, select);
        dev.w32(common_cfg::DRIVER_FEATURE, half);
    }
    dev.w8(
        common_cfg::DEVICE_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
    dev.r8(common_cfg::DEVICE_STATUS)
}

/// Programs queue `index` as `queue` says and enables it. The addresses are written as two
/// 32-bit halves, as Linux writes them.
pub fn setup_queue(dev: &mut impl Bar0, index: u16, queue: &QueueConfig) {
    dev.w16(common_cfg::QUEUE_SELECT, index);
    dev.w16(common_cfg::QUEUE_SIZE, queue.size);
    for (offset, address) in [
        (common_cfg::QUEUE_DESC, queue.desc),
        (common_cfg::QUEUE_DRIVER, queue.driver),
        (common_cfg::QUEUE_DEVICE, queue.device),
    ] {
        dev.w32(offset, address as u32);
        dev.w32(offset + 4, (address >> 32) as u32);
    }
    if let Some(vector) = queue.msix_vector {
        dev.w16(common_cfg::QUEUE_MSIX_VECTOR, vector);
    }
    dev.w16(common_cfg::QUEUE_ENABLE, 1);
}

/// Adds `DRIVER_OK` to `status` (the status after negotiation); returns the status read back.
pub fn driver_ok(dev: &mut impl Bar0, status: u8) -> u8 {
    dev.w8(common_cfg::DEVICE_STATUS, status | STATUS_DRIVER_OK);
    dev.r8(common_cfg::DEVICE_STATUS)
}

/// The whole bring-up: [`negotiate`] `features`, [`setup_queue`] each of `queues` (queue *i* is
/// `queues[i]`), [`driver_ok`]. Returns the final status, or `Err` with the status after
/// `FEATURES_OK` when the device refused the features (then no queue is touched).
pub fn init(dev: &mut impl Bar0, features: u64, queues: &[QueueConfig]) -> Result<u8, u8> {
    let status = negotiate(dev, features);
    if status & STATUS_FEATURES_OK == 0 {
        return Err(status);
    }
    for (index, queue) in (0u16..).zip(queues) {
        setup_queue(dev, index, queue);
    }
    Ok(driver_ok(dev, status))
}

/// Notifies queue `index` (a 16-bit write of the index at its notification address, as Linux
/// does; the transport's `queue_notify_off` is the index).
pub fn notify(dev: &mut impl Bar0, index: u16) {
    let offset = NOTIFY_OFFSET + u64::from(NOTIFY_OFF_MULTIPLIER) * u64::from(index);
    dev.w16(offset, index);
}

/// Reads `len` (at most 8) bytes of device configuration at `offset`.
pub fn device_config(dev: &mut impl Bar0, offset: u64, len: usize) -> u64 {
    dev.r(DEVICE_CFG_OFFSET + offset, len)
}

/// The driver side of a split virtqueue in guest memory. It panics when guest memory refuses an
/// access to its own rings (a test set-up error).
#[derive(Clone, Debug)]
pub struct Ring {
    /// The guest memory the ring lives in.
    pub mem: GuestMemoryMmap,
    /// Queue size.
    pub size: u16,
    /// Guest address of the descriptor table.
    pub desc: u64,
    /// Guest address of the available ring.
    pub avail: u64,
    /// Guest address of the used ring.
    pub used: u64,
    next_desc: u16,
    avail_idx: u16,
}

impl Ring {
    /// A ring of `size` entries at [`DEFAULT_DESC`], [`DEFAULT_AVAIL`] and [`DEFAULT_USED`].
    pub fn new(mem: &GuestMemoryMmap, size: u16) -> Self {
        Self::at(mem, size, DEFAULT_DESC, DEFAULT_AVAIL, DEFAULT_USED)
    }

    /// A ring of `size` entries at the given addresses.
    pub fn at(mem: &GuestMemoryMmap, size: u16, desc: u64, avail: u64, used: u64) -> Self {
        Self {
            mem: mem.clone(),
            size,
            desc,
            avail,
            used,
            next_desc: 0,
            avail_idx: 0,
        }
    }

    /// The queue registers that point the device at this ring (no MSI-X vector).
    pub fn config(&self) -> QueueConfig {
        QueueConfig {
            size: self.size,
            desc: self.desc,
            driver: self.avail,
            device: self.used,
            msix_vector: None,
        }
    }

    /// Writes descriptor `index`.
    pub fn set_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let base = GuestAddress(self.desc + 16 * u64::from(index));
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..].copy_from_slice(&next.to_le_bytes());
        self.mem
            .write_slice(&raw, base)
            .expect("descriptor table in guest memory");
    }

    /// Makes `head` available: writes it to the next slot and bumps the available index.
    pub fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        self.mem
            .write_obj(head, GuestAddress(self.avail + 4 + 2 * slot))
            .expect("available ring in guest memory");
        self.set_avail_idx(self.avail_idx.wrapping_add(1));
    }

    /// The available index the driver published last.
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// Sets the available index in memory directly (to corrupt the ring, or to restart it).
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.avail_idx = idx;
        self.mem
            .write_obj(idx, GuestAddress(self.avail + 2))
            .expect("available ring in guest memory");
    }

    /// Chains `buffers` (address, length, device-writable) into the next free descriptors and
    /// makes the chain available; returns its head.
    pub fn add(&mut self, buffers: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        let n = buffers.len() as u16;
        for (i, &(addr, len, write)) in (0u16..).zip(buffers) {
            let index = (head + i) % self.size;
            let last = i + 1 == n;
            let flags = if write { DESC_F_WRITE } else { 0 } | if last { 0 } else { DESC_F_NEXT };
            self.set_desc(index, addr, len, flags, (index + 1) % self.size);
        }
        self.next_desc = (head + n) % self.size;
        self.publish(head);
        head
    }

    /// The used ring's index.
    pub fn used_idx(&self) -> u16 {
        self.mem
            .read_obj(GuestAddress(self.used + 2))
            .expect("used ring in guest memory")
    }

    /// Used-ring element `i` (modulo the queue size): (id, len).
    pub fn used_elem(&self, i: u16) -> (u32, u32) {
        let base = GuestAddress(self.used + 4 + 8 * u64::from(i % self.size));
        let read =
            |at: GuestAddress| -> u32 { self.mem.read_obj(at).expect("used ring in guest memory") };
        (read(base), read(base.unchecked_add(4)))
    }
}
