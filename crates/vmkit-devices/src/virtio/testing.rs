//! Test support: guest memory with a hole, a minimal split-ring driver and BAR accessors.

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::pci::{DEVICE_CFG_OFFSET, NOTIFY_OFFSET};
use super::{
    F_VERSION_1, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
    VirtioDevice, VirtioPciDevice,
};
use crate::pci::PciDevice;

/// End of the first RAM region; the second follows at once (buffers may straddle them).
pub(crate) const REGION_SPLIT: u64 = 0x10_0000;
/// Start of the unmapped hole.
pub(crate) const HOLE: u64 = 0x20_0000;
/// Start of the RAM above the hole.
pub(crate) const HIGH: u64 = 0x30_0000;
/// End of guest memory.
pub(crate) const MEMORY_END: u64 = 0x40_0000;

/// Where the test rings live.
pub(crate) const DESC: u64 = 0x1000;
pub(crate) const AVAIL: u64 = 0x2000;
pub(crate) const USED: u64 = 0x3000;

pub(crate) fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), REGION_SPLIT as usize),
        (GuestAddress(REGION_SPLIT), (HOLE - REGION_SPLIT) as usize),
        (GuestAddress(HIGH), (MEMORY_END - HIGH) as usize),
    ])
    .unwrap()
}

/// Descriptor flags.
pub(crate) const NEXT: u16 = 1;
pub(crate) const WRITE: u16 = 2;
pub(crate) const INDIRECT: u16 = 4;

/// The driver side of a split virtqueue in guest memory.
pub(crate) struct Ring {
    pub(crate) mem: GuestMemoryMmap,
    pub(crate) size: u16,
    pub(crate) desc: u64,
    pub(crate) avail: u64,
    pub(crate) used: u64,
    next_desc: u16,
    avail_idx: u16,
}

impl Ring {
    pub(crate) fn new(mem: &GuestMemoryMmap, size: u16) -> Self {
        Self {
            mem: mem.clone(),
            size,
            desc: DESC,
            avail: AVAIL,
            used: USED,
            next_desc: 0,
            avail_idx: 0,
        }
    }

    /// Writes descriptor `index`.
    pub(crate) fn set_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let base = GuestAddress(self.desc + 16 * u64::from(index));
        self.mem.write_obj(addr, base).unwrap();
        self.mem.write_obj(len, base.unchecked_add(8)).unwrap();
        self.mem.write_obj(flags, base.unchecked_add(12)).unwrap();
        self.mem.write_obj(next, base.unchecked_add(14)).unwrap();
    }

    /// Makes `head` available.
    pub(crate) fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        self.mem
            .write_obj(head, GuestAddress(self.avail + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// Sets the available index directly (to corrupt the ring).
    pub(crate) fn set_avail_idx(&mut self, idx: u16) {
        self.avail_idx = idx;
        self.mem
            .write_obj(idx, GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// Chains `buffers` (address, length, device-writable) into free descriptors and makes the
    /// chain available; returns its head.
    pub(crate) fn add(&mut self, buffers: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        let n = buffers.len() as u16;
        for (i, &(addr, len, write)) in buffers.iter().enumerate() {
            let index = (head + i as u16) % self.size;
            let last = i as u16 + 1 == n;
            let flags = if write { WRITE } else { 0 } | if last { 0 } else { NEXT };
            self.set_desc(index, addr, len, flags, (index + 1) % self.size);
        }
        self.next_desc = (head + n) % self.size;
        self.publish(head);
        head
    }

    pub(crate) fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// Used-ring element `i`: (id, len).
    pub(crate) fn used_elem(&self, i: u16) -> (u32, u32) {
        let base = GuestAddress(self.used + 4 + 8 * u64::from(i % self.size));
        (
            self.mem.read_obj(base).unwrap(),
            self.mem.read_obj(base.unchecked_add(4)).unwrap(),
        )
    }
}

/// BAR 0 register access on a transport.
pub(crate) trait Bar0 {
    fn w(&mut self, offset: u64, data: &[u8]);
    fn r(&mut self, offset: u64, len: usize) -> u64;
    fn w8(&mut self, offset: u64, v: u8) {
        self.w(offset, &[v]);
    }
    fn w16(&mut self, offset: u64, v: u16) {
        self.w(offset, &v.to_le_bytes());
    }
    fn w32(&mut self, offset: u64, v: u32) {
        self.w(offset, &v.to_le_bytes());
    }
    fn w64(&mut self, offset: u64, v: u64) {
        self.w(offset, &v.to_le_bytes());
    }
    fn r8(&mut self, offset: u64) -> u8 {
        self.r(offset, 1) as u8
    }
    fn r16(&mut self, offset: u64) -> u16 {
        self.r(offset, 2) as u16
    }
    fn r32(&mut self, offset: u64) -> u32 {
        self.r(offset, 4) as u32
    }
}

impl<D: VirtioDevice> Bar0 for VirtioPciDevice<D> {
    fn w(&mut self, offset: u64, data: &[u8]) {
        self.bar_write(0, offset, data);
    }
    fn r(&mut self, offset: u64, len: usize) -> u64 {
        let mut data = [0u8; 8];
        self.bar_read(0, offset, &mut data[..len]);
        u64::from_le_bytes(data)
    }
}

/// Common configuration offsets.
pub(crate) mod cc {
    pub(crate) const DFSELECT: u64 = 0x00;
    pub(crate) const DF: u64 = 0x04;
    pub(crate) const GFSELECT: u64 = 0x08;
    pub(crate) const GF: u64 = 0x0C;
    pub(crate) const MSIX: u64 = 0x10;
    pub(crate) const NUMQ: u64 = 0x12;
    pub(crate) const STATUS: u64 = 0x14;
    pub(crate) const GENERATION: u64 = 0x15;
    pub(crate) const Q_SELECT: u64 = 0x16;
    pub(crate) const Q_SIZE: u64 = 0x18;
    pub(crate) const Q_MSIX: u64 = 0x1A;
    pub(crate) const Q_ENABLE: u64 = 0x1C;
    pub(crate) const Q_NOFF: u64 = 0x1E;
    pub(crate) const Q_DESC: u64 = 0x20;
    pub(crate) const Q_AVAIL: u64 = 0x28;
    pub(crate) const Q_USED: u64 = 0x30;
}

/// Negotiates `features` (the firmware's sequence, status read back after FEATURES_OK) and
/// returns the status after FEATURES_OK.
pub(crate) fn negotiate(dev: &mut impl Bar0, features: u64) -> u8 {
    dev.w8(cc::STATUS, 0);
    dev.w8(cc::STATUS, STATUS_ACKNOWLEDGE);
    dev.w8(cc::STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    dev.w32(cc::GFSELECT, 0);
    dev.w32(cc::GF, features as u32);
    dev.w32(cc::GFSELECT, 1);
    dev.w32(cc::GF, (features >> 32) as u32);
    dev.w8(
        cc::STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
    dev.r8(cc::STATUS)
}

/// Programs queue `index` at the ring's addresses with `size` and enables it.
pub(crate) fn setup_queue(dev: &mut impl Bar0, index: u16, ring: &Ring) {
    dev.w16(cc::Q_SELECT, index);
    dev.w16(cc::Q_SIZE, ring.size);
    // Two 32-bit halves, as Linux writes them.
    dev.w32(cc::Q_DESC, ring.desc as u32);
    dev.w32(cc::Q_DESC + 4, (ring.desc >> 32) as u32);
    dev.w64(cc::Q_AVAIL, ring.avail);
    dev.w64(cc::Q_USED, ring.used);
    dev.w16(cc::Q_ENABLE, 1);
}

/// Full initialisation with one queue: negotiate VERSION_1 | `extra`, set up queue 0, DRIVER_OK.
pub(crate) fn init(dev: &mut impl Bar0, extra: u64, ring: &Ring) {
    let status = negotiate(dev, F_VERSION_1 | extra);
    assert_ne!(status & STATUS_FEATURES_OK, 0);
    setup_queue(dev, 0, ring);
    dev.w8(cc::STATUS, status | STATUS_DRIVER_OK);
}

/// Notifies queue `index` (a 16-bit write, as Linux does).
pub(crate) fn notify(dev: &mut impl Bar0, index: u16) {
    dev.w16(NOTIFY_OFFSET + 4 * u64::from(index), index);
}

/// Reads device configuration.
pub(crate) fn device_config(dev: &mut impl Bar0, offset: u64, len: usize) -> u64 {
    dev.r(DEVICE_CFG_OFFSET + offset, len)
}
