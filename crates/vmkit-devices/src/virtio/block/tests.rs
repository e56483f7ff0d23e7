use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::trigger::CountingTrigger;
use crate::virtio::testing::{
    Bar0, HIGH, HOLE, INDIRECT, MEMORY_END, NEXT, REGION_SPLIT, Ring, WRITE, common_cfg,
    device_config, init, memory, notify,
};
use crate::virtio::{
    F_RING_INDIRECT_DESC, F_VERSION_1, MsiRecorder, STATUS_DEVICE_NEEDS_RESET, VirtioPciDevice,
    VirtioPciInterrupts,
};

pub(super) const HDR: u64 = 0x1_0000;
pub(super) const DATA: u64 = 0x2_0000;
pub(super) const STATUS: u64 = 0x8_0000;

pub(super) struct Blk<B: DiskBackend> {
    pub(super) dev: VirtioPciDevice<VirtioBlock<B>>,
    pub(super) ring: Ring,
    pub(super) intx: Arc<CountingTrigger>,
}

pub(super) fn blk<B: DiskBackend>(disk: B, features: u64) -> Blk<B> {
    blk_on(disk, features, memory())
}

/// A live device over `mem` (with the test rings' layout).
pub(super) fn blk_on<B: DiskBackend>(
    disk: B,
    features: u64,
    mem: vm_memory::GuestMemoryMmap,
) -> Blk<B> {
    let intx = Arc::new(CountingTrigger::new());
    let mut dev = VirtioPciDevice::new(
        VirtioBlock::new(disk),
        mem.clone(),
        VirtioPciInterrupts {
            intx: Some(intx.clone()),
            intx_line: 5,
            msi: None,
        },
    )
    .unwrap();
    let ring = Ring::new(&mem, 16);
    init(&mut dev, features, &ring);
    assert!(dev.is_active());
    Blk { dev, ring, intx }
}

fn image(sectors: u64) -> TempFile {
    let file = TempFile::new().unwrap();
    let data: Vec<u8> = (0..sectors * 512).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(file.as_path(), data).unwrap();
    file
}

pub(super) fn mem_disk(sectors: usize) -> MemDisk {
    MemDisk::new((0..sectors * 512).map(|i| (i % 253) as u8).collect(), false)
}

impl<B: DiskBackend> Blk<B> {
    pub(super) fn mem(&self) -> &vm_memory::GuestMemoryMmap {
        &self.ring.mem
    }

    pub(super) fn header(&self, addr: u64, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem().write_slice(&h, GuestAddress(addr)).unwrap();
    }

    pub(super) fn status_at(&self, addr: u64) -> u8 {
        self.mem().read_obj(GuestAddress(addr)).unwrap()
    }

    /// Submits a chain, notifies, and returns the used element (the request completes inside
    /// the notifying write).
    pub(super) fn submit(&mut self, buffers: &[(u64, u32, bool)]) -> (u32, u32) {
        let before = self.ring.used_idx();
        let head = self.ring.add(buffers);
        notify(&mut self.dev, 0);
        assert_eq!(
            self.ring.used_idx(),
            before.wrapping_add(1),
            "completed at once"
        );
        let (id, len) = self.ring.used_elem(before);
        assert_eq!(id, u32::from(head));
        (id, len)
    }

    /// A request of `kind` at `sector` with `data` buffers; returns (status, used length).
    fn request(&mut self, kind: u32, sector: u64, data: &[(u64, u32, bool)]) -> (u8, u32) {
        self.header(HDR, kind, sector);
        self.mem().write_obj(0xEEu8, GuestAddress(STATUS)).unwrap();
        let mut chain = vec![(HDR, 16, false)];
        chain.extend_from_slice(data);
        chain.push((STATUS, 1, true));
        let (_, len) = self.submit(&chain);
        (self.status_at(STATUS), len)
    }

    pub(super) fn read(&mut self, sector: u64, addr: u64, len: u32) -> (u8, u32) {
        self.request(VIRTIO_BLK_T_IN, sector, &[(addr, len, true)])
    }

    fn write(&mut self, sector: u64, addr: u64, len: u32) -> (u8, u32) {
        self.request(VIRTIO_BLK_T_OUT, sector, &[(addr, len, false)])
    }

    fn fill(&self, addr: u64, len: usize, byte: u8) {
        self.mem()
            .write_slice(&vec![byte; len], GuestAddress(addr))
            .unwrap();
    }

    pub(super) fn bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem().read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    pub(super) fn stats(&self) -> BlockStats {
        self.dev.device().stats()
    }
}

#[test]
fn configuration_and_features() {
    let tmp = image(2048);
    let mut b = blk(DiskImage::open(tmp.as_path(), false).unwrap(), 0);
    assert_eq!(device_config(&mut b.dev, 0, 8), 2048, "capacity in sectors");
    assert_eq!(device_config(&mut b.dev, 8, 4), u64::from(SIZE_MAX));
    assert_eq!(device_config(&mut b.dev, 12, 4), u64::from(SEG_MAX));
    assert_eq!(device_config(&mut b.dev, 20, 4), 512);
    assert_eq!(device_config(&mut b.dev, 34, 2), 1);
    assert_eq!(device_config(&mut b.dev, 0x24, 4), 0, "past the end");
    // Config writes are ignored.
    b.dev.w32(crate::virtio::DEVICE_CFG_OFFSET, 0);
    assert_eq!(device_config(&mut b.dev, 0, 8), 2048);
    b.dev.w32(common_cfg::DEVICE_FEATURE_SELECT, 0);
    let features = u64::from(b.dev.r32(common_cfg::DEVICE_FEATURE));
    let expected = VIRTIO_BLK_F_SIZE_MAX
        | VIRTIO_BLK_F_SEG_MAX
        | VIRTIO_BLK_F_BLK_SIZE
        | VIRTIO_BLK_F_FLUSH
        | F_RING_INDIRECT_DESC;
    assert_eq!(features, expected);
    let ro = image(8);
    let mut r = blk(
        DiskImage::open(ro.as_path(), true).unwrap(),
        VIRTIO_BLK_F_RO,
    );
    r.dev.w32(common_cfg::DEVICE_FEATURE_SELECT, 0);
    assert_ne!(
        u64::from(r.dev.r32(common_cfg::DEVICE_FEATURE)) & VIRTIO_BLK_F_RO,
        0
    );
    assert_eq!(b.dev.device().capacity(), 2048);
    assert!(format!("{:?}", b.dev.device()).contains("capacity: 2048"));
    // The PCI identity of a block device.
    let config = b.dev.config_space();
    assert_eq!(config.read_u16(crate::pci::DEVICE_ID), 0x1042);
    assert_eq!(config.read_u32(0x08) >> 8, 0x01_80_00);
}

#[test]
fn write_then_read_through_the_image_file() {
    let tmp = image(64);
    let mut b = blk(DiskImage::open(tmp.as_path(), false).unwrap(), 0);
    // Two sectors from two descriptors.
    b.fill(DATA, 512, 0xA1);
    b.fill(DATA + 0x1000, 512, 0xB2);
    b.header(HDR, VIRTIO_BLK_T_OUT, 3);
    let (_, len) = b.submit(&[
        (HDR, 16, false),
        (DATA, 512, false),
        (DATA + 0x1000, 512, false),
        (STATUS, 1, true),
    ]);
    assert_eq!((b.status_at(STATUS), len), (VIRTIO_BLK_S_OK, 1));
    // Read them back into a buffer straddling two guest memory regions.
    let target = REGION_SPLIT - 256;
    assert_eq!(b.read(3, target, 1024), (VIRTIO_BLK_S_OK, 1025));
    let got = b.bytes(target, 1024);
    assert!(got[..512].iter().all(|&x| x == 0xA1));
    assert!(got[512..].iter().all(|&x| x == 0xB2));
    // The file holds them too, and nothing else changed.
    let file = std::fs::read(tmp.as_path()).unwrap();
    let original = std::fs::read(image(64).as_path()).unwrap();
    assert!(file[3 * 512..4 * 512].iter().all(|&x| x == 0xA1));
    assert_eq!(file[..3 * 512], original[..3 * 512]);
    assert_eq!(file[5 * 512..], original[5 * 512..]);
    // A larger read than the bounce buffer, from the last sectors.
    let sectors = 2 * SIZE_MAX as u64 / 512;
    let big = image(sectors + 8);
    let mut b = blk(DiskImage::open(big.as_path(), false).unwrap(), 0);
    assert_eq!(
        b.read(8, HIGH, 2 * SIZE_MAX).0,
        VIRTIO_BLK_S_OK,
        "ends exactly at the last sector"
    );
    let file = std::fs::read(big.as_path()).unwrap();
    assert_eq!(b.bytes(HIGH, 2 * SIZE_MAX as usize), file[8 * 512..]);
    let s = b.stats();
    assert_eq!((s.reads, s.bytes_read), (1, 2 * u64::from(SIZE_MAX)));
}

#[test]
fn flush_get_id_and_unsupported() {
    let mut b = blk(mem_disk(8), 0);
    assert_eq!(b.request(VIRTIO_BLK_T_FLUSH, 0, &[]), (VIRTIO_BLK_S_OK, 1));
    // The firmware's flush carries a stale data descriptor: it is ignored.
    assert_eq!(
        b.request(VIRTIO_BLK_T_FLUSH, 0, &[(0, 0, false)]).0,
        VIRTIO_BLK_S_OK
    );
    assert_eq!(b.dev.device().disk().flushes(), 2);
    assert_eq!(
        b.request(VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 20, true)]),
        (VIRTIO_BLK_S_OK, 21)
    );
    assert_eq!(&b.bytes(DATA, 20)[..6], b"memory");
    b.dev.device_mut().set_serial(b"disk-serial-0123456789");
    b.fill(DATA, 32, 0xFF);
    // A short buffer gets what fits, split over two descriptors.
    assert_eq!(
        b.request(
            VIRTIO_BLK_T_GET_ID,
            0,
            &[(DATA, 4, true), (DATA + 8, 4, true)]
        ),
        (VIRTIO_BLK_S_OK, 9)
    );
    assert_eq!(&b.bytes(DATA, 4), b"disk");
    assert_eq!(
        &b.bytes(DATA + 8, 5),
        b"-ser\xFF",
        "4 bytes, then untouched"
    );
    for kind in [2, 11, 13, 0xFFFF_FFFF] {
        assert_eq!(b.request(kind, 0, &[]), (VIRTIO_BLK_S_UNSUPP, 1), "{kind}");
    }
    let s = b.stats();
    assert_eq!(
        (s.flushes, s.get_ids, s.unsupported, s.requests),
        (2, 2, 4, 8)
    );
    // A failing disk fails every kind of I/O.
    b.dev.device_mut().disk_mut().set_failing(true);
    assert_eq!(b.request(VIRTIO_BLK_T_FLUSH, 0, &[]).0, VIRTIO_BLK_S_IOERR);
    assert_eq!(b.read(0, DATA, 512).0, VIRTIO_BLK_S_IOERR);
    assert_eq!(b.write(0, DATA, 512).0, VIRTIO_BLK_S_IOERR);
    assert_eq!(b.stats().errors, 3);
}

#[test]
fn read_only_disks_refuse_writes() {
    let tmp = image(16);
    let before = std::fs::read(tmp.as_path()).unwrap();
    let mut b = blk(
        DiskImage::open(tmp.as_path(), true).unwrap(),
        VIRTIO_BLK_F_RO,
    );
    b.fill(DATA, 512, 0x55);
    assert_eq!(b.write(0, DATA, 512), (VIRTIO_BLK_S_IOERR, 1));
    assert_eq!(b.request(VIRTIO_BLK_T_FLUSH, 0, &[]).0, VIRTIO_BLK_S_OK);
    assert_eq!(b.read(0, DATA, 512).0, VIRTIO_BLK_S_OK);
    assert_eq!(b.bytes(DATA, 512), before[..512]);
    assert_eq!(std::fs::read(tmp.as_path()).unwrap(), before);
}

#[test]
fn out_of_range_and_malformed_requests_fail() {
    let mut b = blk(mem_disk(16), 0);
    b.fill(DATA, 0x2000, 0x77);
    for (sector, len) in [
        (16, 512),
        (15, 1024),
        (u64::MAX / 512, 512),
        (u64::MAX, 512),
    ] {
        assert_eq!(b.read(sector, DATA, len).0, VIRTIO_BLK_S_IOERR, "{sector}");
        assert_eq!(b.write(sector, DATA, len).0, VIRTIO_BLK_S_IOERR, "{sector}");
    }
    // Not whole sectors.
    assert_eq!(b.read(0, DATA, 100).0, VIRTIO_BLK_S_IOERR);
    assert_eq!(b.write(0, DATA, 513).0, VIRTIO_BLK_S_IOERR);
    // Data in the wrong direction.
    assert_eq!(
        b.request(VIRTIO_BLK_T_IN, 0, &[(DATA, 512, false), (DATA, 512, true)])
            .0,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(
        b.request(
            VIRTIO_BLK_T_OUT,
            0,
            &[(DATA, 512, false), (DATA, 512, true)]
        )
        .0,
        VIRTIO_BLK_S_IOERR
    );
    // A readable descriptor after a writable one.
    assert_eq!(
        b.request(VIRTIO_BLK_T_IN, 0, &[(DATA, 512, true), (DATA, 512, false)])
            .0,
        VIRTIO_BLK_S_IOERR
    );
    // A header shorter than 16 bytes.
    b.header(HDR, VIRTIO_BLK_T_IN, 0);
    b.submit(&[(HDR, 15, false), (STATUS, 1, true)]);
    assert_eq!(b.status_at(STATUS), VIRTIO_BLK_S_IOERR);
    // Zero-length transfers succeed.
    assert_eq!(b.read(16, DATA, 0), (VIRTIO_BLK_S_OK, 1));
    assert!(
        b.bytes(DATA, 0x2000).iter().all(|&x| x == 0x77),
        "untouched"
    );
    assert!(
        b.dev.device().disk().data() == mem_disk(16).data(),
        "disk untouched"
    );
    assert_eq!(b.stats().errors, 14);
}

#[test]
fn buffers_outside_guest_memory_fail() {
    let mut b = blk(mem_disk(16), 0);
    assert_eq!(b.read(0, HOLE, 512).0, VIRTIO_BLK_S_IOERR);
    assert_eq!(
        b.read(0, HOLE - 256, 512).0,
        VIRTIO_BLK_S_IOERR,
        "runs into the hole"
    );
    assert_eq!(b.read(0, MEMORY_END - 256, 512).0, VIRTIO_BLK_S_IOERR);
    assert_eq!(b.read(0, u64::MAX - 255, 512).0, VIRTIO_BLK_S_IOERR);
    assert_eq!(b.write(0, HOLE, 512).0, VIRTIO_BLK_S_IOERR);
    // A header outside memory.
    b.submit(&[(HOLE, 16, false), (STATUS, 1, true)]);
    assert_eq!(b.status_at(STATUS), VIRTIO_BLK_S_IOERR);
    // Bytes below the hole were not written by the failed read.
    b.fill(HOLE - 256, 256, 0x11);
    b.read(0, HOLE - 256, 512);
    assert!(b.bytes(HOLE - 256, 256).iter().all(|&x| x == 0x11));
    assert_eq!(b.dev.device().disk().data(), mem_disk(16).data());
}

#[test]
fn chains_without_a_status_are_dropped() {
    let mut b = blk(mem_disk(16), 0);
    b.header(HDR, VIRTIO_BLK_T_IN, 0);
    // The last descriptor is readable, empty, or outside memory.
    for chain in [
        vec![(HDR, 16, false), (DATA, 512, true), (STATUS, 1, false)],
        vec![(HDR, 16, false), (STATUS, 0, true)],
        vec![(HDR, 16, false), (HOLE, 1, true)],
    ] {
        let (_, len) = b.submit(&chain);
        assert_eq!(len, 0);
    }
    assert_eq!(b.stats().dropped, 3);
    // A loop: 0 -> 1 -> 0.
    b.ring.set_desc(0, HDR, 16, NEXT, 1);
    b.ring.set_desc(1, STATUS, 1, NEXT | WRITE, 0);
    b.ring.publish(0);
    notify(&mut b.dev, 0);
    // A next index past the queue.
    b.ring.set_desc(2, HDR, 16, NEXT, 99);
    b.ring.publish(2);
    notify(&mut b.dev, 0);
    assert_eq!(b.ring.used_idx(), 5);
    assert_eq!(b.ring.used_elem(3), (0, 0));
    assert_eq!(b.ring.used_elem(4), (2, 0));
    // A head index past the queue: consumed, nothing to give back.
    b.ring.publish(500);
    notify(&mut b.dev, 0);
    assert_eq!(b.ring.used_idx(), 5);
    assert_eq!(b.stats().dropped, 5);
    assert_eq!(b.stats().invalid_heads, 1);
    assert_eq!(b.stats().requests, 0);
    // The device carries on.
    assert_eq!(b.ring.used_idx(), 5);
    b.ring.set_desc(5, 0, 0, 0, 0);
    let mut b2 = blk(mem_disk(1), 0);
    assert_eq!(b2.read(0, DATA, 512).0, VIRTIO_BLK_S_OK);
    assert_eq!(b.dev.status() & STATUS_DEVICE_NEEDS_RESET, 0);
}

#[test]
fn framing_does_not_depend_on_descriptor_layout() {
    let mut b = blk(mem_disk(16), 0);
    // Header split 8 + 8, data and status in one writable descriptor.
    b.header(HDR, VIRTIO_BLK_T_IN, 2);
    let (_, len) = b.submit(&[(HDR, 8, false), (HDR + 8, 8, false), (DATA, 513, true)]);
    assert_eq!(len, 513);
    assert_eq!(b.status_at(DATA + 512), VIRTIO_BLK_S_OK);
    assert_eq!(b.bytes(DATA, 512), mem_disk(16).data()[1024..1536]);
    // Header and write data in one readable descriptor.
    b.header(DATA, VIRTIO_BLK_T_OUT, 5);
    b.fill(DATA + 16, 512, 0x3C);
    b.submit(&[(DATA, 528, false), (STATUS, 1, true)]);
    assert_eq!(b.status_at(STATUS), VIRTIO_BLK_S_OK);
    assert!(
        b.dev.device().disk().data()[2560..3072]
            .iter()
            .all(|&x| x == 0x3C)
    );
}

#[test]
fn indirect_descriptors() {
    let mut b = blk(mem_disk(16), F_RING_INDIRECT_DESC);
    let table = 0x4_0000u64;
    let m = b.ring.mem.clone();
    let desc = |i: u64, addr: u64, len: u32, flags: u16, next: u16| {
        let base = GuestAddress(table + 16 * i);
        m.write_obj(addr, base).unwrap();
        m.write_obj(len, GuestAddress(base.0 + 8)).unwrap();
        m.write_obj(flags, GuestAddress(base.0 + 12)).unwrap();
        m.write_obj(next, GuestAddress(base.0 + 14)).unwrap();
    };
    desc(0, HDR, 16, NEXT, 1);
    desc(1, DATA, 1024, NEXT | WRITE, 2);
    desc(2, STATUS, 1, WRITE, 0);
    b.header(HDR, VIRTIO_BLK_T_IN, 4);
    b.ring.set_desc(0, table, 48, INDIRECT, 0);
    b.ring.publish(0);
    notify(&mut b.dev, 0);
    assert_eq!(b.ring.used_elem(0), (0, 1025));
    assert_eq!(b.status_at(STATUS), VIRTIO_BLK_S_OK);
    assert_eq!(b.bytes(DATA, 1024), mem_disk(16).data()[2048..3072]);
    // More descriptors than the device reads: its end is never seen, so it is dropped.
    let n = MAX_DESCRIPTORS as u64 + 1;
    for i in 0..n - 1 {
        desc(i, HDR, if i == 0 { 16 } else { 0 }, NEXT, (i + 1) as u16);
    }
    desc(n - 1, STATUS, 1, WRITE, 0);
    b.mem().write_obj(0xEEu8, GuestAddress(STATUS)).unwrap();
    b.ring.set_desc(1, table, (16 * n) as u32, INDIRECT, 0);
    b.ring.publish(1);
    notify(&mut b.dev, 0);
    assert_eq!(b.ring.used_elem(1), (1, 0));
    assert_eq!(b.status_at(STATUS), 0xEE, "no status written");
    assert_eq!(b.stats().dropped, 1);
    // Exactly the limit is a request like any other.
    desc(n - 2, STATUS, 1, WRITE, 0);
    b.ring.publish(1);
    notify(&mut b.dev, 0);
    assert_eq!(b.ring.used_elem(2), (1, 1));
    assert_eq!(b.status_at(STATUS), VIRTIO_BLK_S_OK);
}

#[test]
fn request_size_is_capped() {
    let mem = memory();
    let mut disk = mem_disk(16);
    let mut bounce = vec![0; 512];
    let mut executor = request::Executor {
        disk: &mut disk,
        memory: &mem,
        bounce: &mut bounce,
        max_request: 1024,
        serial: [0; SERIAL_LEN],
    };
    let b = Blk {
        dev: VirtioPciDevice::new(
            VirtioBlock::new(mem_disk(1)),
            mem.clone(),
            VirtioPciInterrupts::default(),
        )
        .unwrap(),
        ring: Ring::new(&mem, 16),
        intx: Arc::new(CountingTrigger::new()),
    };
    let mut ring = Ring::new(&mem, 16);
    let mut queue = virtio_queue::Queue::new(16).unwrap();
    queue.set_desc_table_address(Some(ring.desc as u32), Some(0));
    queue.set_avail_ring_address(Some(ring.avail as u32), Some(0));
    queue.set_used_ring_address(Some(ring.used as u32), Some(0));
    queue.set_ready(true);
    for len in [1024u32, 1536] {
        b.header(HDR, VIRTIO_BLK_T_IN, 0);
        ring.add(&[(HDR, 16, false), (DATA, len, true), (STATUS, 1, true)]);
        let chain = queue.iter(&mem).unwrap().next().unwrap();
        let framed = request::Framed::parse(chain, &mem).unwrap();
        let done = executor.execute(&framed);
        let expected = if len <= 1024 {
            VIRTIO_BLK_S_OK
        } else {
            VIRTIO_BLK_S_IOERR
        };
        assert_eq!(done.status, expected, "{len}");
    }
    // Without a bounce buffer nothing moves.
    let mut empty = Vec::new();
    executor.bounce = &mut empty;
    ring.add(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
    let chain = queue.iter(&mem).unwrap().next().unwrap();
    let framed = request::Framed::parse(chain, &mem).unwrap();
    assert_eq!(executor.execute(&framed).status, VIRTIO_BLK_S_IOERR);
    assert_eq!(b.intx.asserts(), 0);
}

#[test]
fn interrupts_follow_the_avail_flags() {
    // Every completion interrupts...
    let mut c = blk(mem_disk(16), 0);
    c.read(0, DATA, 512);
    c.read(0, DATA, 512);
    assert_eq!(c.intx.asserts(), 2);
    // ... unless the driver sets VRING_AVAIL_F_NO_INTERRUPT, as polling drivers do.
    c.mem()
        .write_obj(1u16.to_le(), GuestAddress(crate::virtio::testing::AVAIL))
        .unwrap();
    c.read(0, DATA, 512);
    assert_eq!(c.intx.asserts(), 2, "suppressed by the avail flags");
    assert_eq!(c.stats().interrupts_suppressed, 1);
    c.mem()
        .write_obj(0u16, GuestAddress(crate::virtio::testing::AVAIL))
        .unwrap();
    c.read(0, DATA, 512);
    assert_eq!(c.intx.asserts(), 3);
    assert_eq!(
        c.dev.r8(crate::virtio::ISR_OFFSET),
        crate::virtio::ISR_QUEUE
    );
}

#[test]
fn msix_completion() {
    let mem = memory();
    let msi = Arc::new(MsiRecorder::new());
    let mut dev = VirtioPciDevice::new(
        VirtioBlock::new(mem_disk(4)),
        mem.clone(),
        VirtioPciInterrupts {
            intx: None,
            intx_line: 0,
            msi: Some(msi.clone()),
        },
    )
    .unwrap();
    let cap = dev
        .config_space()
        .find_capabilities(crate::pci::CAP_ID_MSIX)[0];
    crate::pci::MutPciDevice::config_write(&mut dev, cap as u8 + 2, &0x8000u16.to_le_bytes());
    dev.w64(crate::virtio::MSIX_TABLE_OFFSET + 16, 0xFEE0_0000);
    dev.w32(crate::virtio::MSIX_TABLE_OFFSET + 24, 0x31);
    dev.w32(crate::virtio::MSIX_TABLE_OFFSET + 28, 0);
    let mut ring = Ring::new(&mem, 16);
    crate::virtio::testing::negotiate(&mut dev, F_VERSION_1);
    dev.w16(common_cfg::QUEUE_SELECT, 0);
    dev.w16(common_cfg::QUEUE_MSIX_VECTOR, 1);
    crate::virtio::testing::setup_queue(&mut dev, 0, &ring.config());
    dev.w8(common_cfg::DEVICE_STATUS, 0x0F);
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&VIRTIO_BLK_T_GET_ID.to_le_bytes());
    mem.write_slice(&h, GuestAddress(HDR)).unwrap();
    ring.add(&[(HDR, 16, false), (DATA, 20, true), (STATUS, 1, true)]);
    notify(&mut dev, 0);
    assert_eq!(ring.used_idx(), 1);
    assert_eq!(msi.messages().len(), 1);
    assert_eq!(msi.messages()[0].data, 0x31);
}

#[test]
fn a_corrupt_ring_needs_a_reset_and_reinit_recovers() {
    let mut b = blk(mem_disk(16), 0);
    assert_eq!(b.read(1, DATA, 512).0, VIRTIO_BLK_S_OK);
    // The driver claims more chains than the queue holds.
    b.ring.set_avail_idx(100);
    notify(&mut b.dev, 0);
    assert_ne!(b.dev.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    // As Linux does after the firmware: reset, then initialise again with new rings.
    let mem = b.ring.mem.clone();
    let mut ring = Ring::new(&mem, 8);
    ring.desc = 0x5000;
    ring.avail = 0x6000;
    ring.used = 0x7000;
    init(&mut b.dev, F_RING_INDIRECT_DESC, &ring);
    assert_eq!(b.dev.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    b.ring = ring;
    assert_eq!(b.read(2, DATA, 512), (VIRTIO_BLK_S_OK, 513));
    assert_eq!(b.bytes(DATA, 512), mem_disk(16).data()[1024..1536]);
}

#[test]
fn the_device_contract_outside_the_transport() {
    let mut dev = VirtioBlock::new(mem_disk(4));
    assert!(matches!(
        dev.process_queue(0),
        Err(crate::virtio::QueueError::NotActive(0))
    ));
    let mem = memory();
    let interrupt: Arc<dyn crate::virtio::VirtioInterrupt> = Arc::new(NoInterrupt);
    let err = dev
        .activate(0, vec![], mem.clone(), interrupt.clone())
        .unwrap_err();
    assert!(matches!(
        err,
        crate::virtio::ActivateError::QueueCount {
            expected: 1,
            got: 0
        }
    ));
    let queue = virtio_queue::Queue::new(16).unwrap();
    assert!(matches!(
        dev.activate(0, vec![queue], mem.clone(), interrupt.clone()),
        Err(crate::virtio::ActivateError::QueueNotEnabled(0))
    ));
    let mut queue = virtio_queue::Queue::new(16).unwrap();
    queue.set_ready(true);
    dev.activate(0, vec![queue], mem, interrupt).unwrap();
    assert!(matches!(
        dev.process_queue(1),
        Err(crate::virtio::QueueError::NotActive(1))
    ));
    dev.reset();
    assert!(dev.process_queue(0).is_err());
    let mut data = [0xAAu8; 4];
    dev.read_config(u64::MAX - 1, &mut data);
    assert_eq!(data, [0; 4]);
    NoInterrupt.signal_config_change();
}

struct NoInterrupt;

impl crate::virtio::VirtioInterrupt for NoInterrupt {
    fn signal_used_queue(&self, _queue: u16) {}
    fn signal_config_change(&self) {}
}

/// The guard-file test: failed requests leave the file beside the image and the image's
/// other bytes exactly as they were.
#[test]
fn failed_requests_touch_nothing_outside_the_request() {
    let dir = TempFile::new().unwrap();
    let base = dir.as_path().to_path_buf();
    let image_path = base.with_extension("img");
    let guard_path = base.with_extension("guard");
    let image_bytes: Vec<u8> = (0..64 * 512).map(|i| (i * 13 % 241) as u8).collect();
    let guard_bytes: Vec<u8> = (0..8192).map(|i| (i % 7) as u8).collect();
    std::fs::write(&image_path, &image_bytes).unwrap();
    std::fs::write(&guard_path, &guard_bytes).unwrap();
    let checksum = |bytes: &[u8]| {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
    };
    {
        let mut b = blk(DiskImage::open(&image_path, false).unwrap(), 0);
        b.fill(DATA, 0x4000, 0x99);
        // Out of range, overflowing, misaligned, wrong direction, bad buffers.
        for sector in [64, 63, 1 << 55, u64::MAX] {
            assert_eq!(b.write(sector, DATA, 1024).0, VIRTIO_BLK_S_IOERR);
        }
        assert_eq!(b.write(0, DATA, 100).0, VIRTIO_BLK_S_IOERR);
        assert_eq!(b.write(0, HOLE - 512, 1024).0, VIRTIO_BLK_S_IOERR);
        assert_eq!(b.write(0, MEMORY_END - 512, 1024).0, VIRTIO_BLK_S_IOERR);
        assert_eq!(
            b.request(
                VIRTIO_BLK_T_OUT,
                0,
                &[(DATA, 512, false), (DATA, 512, true)]
            )
            .0,
            VIRTIO_BLK_S_IOERR
        );
        b.header(HDR, VIRTIO_BLK_T_OUT, 0);
        b.submit(&[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, false)]);
        // One good write, to show the file is live.
        assert_eq!(b.write(10, DATA, 512).0, VIRTIO_BLK_S_OK);
    }
    let after = std::fs::read(&image_path).unwrap();
    assert_eq!(after.len(), image_bytes.len(), "the image did not grow");
    assert!(after[10 * 512..11 * 512].iter().all(|&x| x == 0x99));
    let mut expected = image_bytes.clone();
    expected[10 * 512..11 * 512].fill(0x99);
    assert_eq!(checksum(&after), checksum(&expected));
    assert_eq!(
        checksum(&std::fs::read(&guard_path).unwrap()),
        checksum(&guard_bytes)
    );
    std::fs::remove_file(&image_path).unwrap();
    std::fs::remove_file(&guard_path).unwrap();
}

/// The boot this device is built for: rust-hypervisor-firmware finds the disk through
/// 0xCF8/0xCFC, sizes the BAR with decoding left on, walks the virtio capabilities, drives the
/// queue by polling and leaves the device live; then Linux resets it and drives it with MSI-X.
#[test]
fn firmware_then_linux_over_real_buses() {
    use crate::pci::{CAP_ID_MSIX, CAP_ID_VENDOR, PciRoot};
    use crate::virtio::{MSIX_TABLE_OFFSET, NOTIFY_OFF_MULTIPLIER, STATUS_DRIVER_OK};
    use vmkit_exits::{IoBus, MmioAddress, MmioBus, PioAddress};

    let io = Arc::new(IoBus::new());
    let mmio = Arc::new(MmioBus::new());
    let root = PciRoot::new(&io, &mmio).unwrap();
    let mut allocators = vmkit_memory::GuestLayout::new(64 << 20)
        .unwrap()
        .allocators()
        .unwrap();
    let tmp = image(4096);
    let contents = std::fs::read(tmp.as_path()).unwrap();
    let mem = memory();
    let msi = Arc::new(MsiRecorder::new());
    let intx = Arc::new(CountingTrigger::new());
    let blk = VirtioPciDevice::new(
        VirtioBlock::new(DiskImage::open(tmp.as_path(), false).unwrap()),
        mem.clone(),
        VirtioPciInterrupts {
            intx: Some(intx.clone()),
            intx_line: 16,
            msi: Some(msi.clone()),
        },
    )
    .unwrap();
    root.add_device("vda", Arc::new(std::sync::Mutex::new(blk)), &mut allocators)
        .unwrap();

    let cfg_read = |dev: u32, reg: u32| {
        io.write(
            PioAddress(0xCF8),
            &(0x8000_0000 | (dev << 11) | reg).to_le_bytes(),
        );
        let mut data = [0u8; 4];
        io.read(PioAddress(0xCFC), &mut data);
        u32::from_le_bytes(data)
    };
    let cfg_write = |dev: u32, reg: u32, value: u32| {
        io.write(
            PioAddress(0xCF8),
            &(0x8000_0000 | (dev << 11) | reg).to_le_bytes(),
        );
        io.write(PioAddress(0xCFC), &value.to_le_bytes());
    };

    // Scan bus 0.
    let slot = (0..32)
        .find(|&d| cfg_read(d, 0) == 0x1042_1AF4)
        .expect("virtio-blk on bus 0");
    cfg_write(slot, 4, cfg_read(slot, 4) | 2);
    // Size BAR 0 (64-bit) with decoding on, restoring it after.
    let low = cfg_read(slot, 0x10);
    assert_eq!(low & 0x6, 0x4, "64-bit memory BAR");
    cfg_write(slot, 0x10, u32::MAX);
    let size_low = cfg_read(slot, 0x10) & !0xF;
    cfg_write(slot, 0x10, low);
    let high = cfg_read(slot, 0x14);
    cfg_write(slot, 0x14, u32::MAX);
    let size_high = cfg_read(slot, 0x14);
    cfg_write(slot, 0x14, high);
    let size = !((u64::from(size_high) << 32) | u64::from(size_low)) + 1;
    assert_eq!(size, crate::virtio::BAR_SIZE);
    let bar = (u64::from(high) << 32) | u64::from(low & !0xF);
    assert!(
        bar != 0 && bar + size <= 1 << 32,
        "pre-assigned below 4 GiB"
    );
    // Walk the capabilities.
    assert_ne!(cfg_read(slot, 4) & (1 << 20), 0, "capability list");
    let mut next = cfg_read(slot, 0x34) & 0xFC;
    let (mut common, mut notify_at, mut multiplier, mut device_cfg, mut msix) = (0, 0, 0, 0, 0);
    while next != 0 {
        let header = cfg_read(slot, next);
        if header as u8 == CAP_ID_VENDOR {
            let offset = u64::from(cfg_read(slot, next + 8));
            match (header >> 24) as u8 {
                1 => common = bar + offset,
                2 => {
                    notify_at = bar + offset;
                    multiplier = cfg_read(slot, next + 16);
                }
                4 => device_cfg = bar + offset,
                _ => {}
            }
        } else if header as u8 == CAP_ID_MSIX {
            msix = next;
        }
        next = (header >> 8) & 0xFC;
    }
    assert_eq!(multiplier, NOTIFY_OFF_MULTIPLIER);
    assert_eq!(
        (common, notify_at - bar, device_cfg - bar),
        (bar, 0x3000, 0x2000)
    );

    // Firmware: polling driver, queue of 16.
    let mut dev = crate::virtio::driver::BusBar0 {
        bus: &mmio,
        base: bar,
    };
    let status = crate::virtio::testing::negotiate(&mut dev, F_VERSION_1);
    assert_ne!(status & crate::virtio::STATUS_FEATURES_OK, 0);
    dev.w16(common_cfg::QUEUE_SELECT, 0);
    assert!(dev.r16(common_cfg::QUEUE_SIZE) >= 16);
    let mut ring = Ring::new(&mem, 16);
    crate::virtio::testing::setup_queue(&mut dev, 0, &ring.config());
    dev.w8(common_cfg::DEVICE_STATUS, status | STATUS_DRIVER_OK);
    let capacity = dev.r32(0x2000) as u64 | (u64::from(dev.r32(0x2004)) << 32);
    assert_eq!(capacity, 4096);
    let mut header = [0u8; 16];
    header[8..].copy_from_slice(&7u64.to_le_bytes());
    mem.write_slice(&header, GuestAddress(HDR)).unwrap();
    ring.add(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
    let notify_off = u64::from(dev.r16(common_cfg::QUEUE_NOTIFY_OFF));
    assert!(
        mmio.write(
            MmioAddress(notify_at + notify_off * u64::from(multiplier)),
            &0u32.to_le_bytes()
        )
        .is_some()
    );
    assert_eq!(ring.used_idx(), 1, "done on the first look");
    let mut sector = vec![0u8; 512];
    mem.read_slice(&mut sector, GuestAddress(DATA)).unwrap();
    assert_eq!(sector, contents[7 * 512..8 * 512]);
    assert_eq!(intx.asserts(), 1, "INTx# while MSI-X is off");
    assert!(msi.messages().is_empty());

    // Linux: reset, MSI-X on, a queue of 256 elsewhere, the device is live again.
    dev.w8(common_cfg::DEVICE_STATUS, 0);
    assert_eq!(dev.r8(common_cfg::DEVICE_STATUS), 0);
    assert!(!intx.is_asserted(), "reset lowered the line");
    cfg_write(slot, msix, cfg_read(slot, msix) | (0x8000 << 16));
    dev.w64(MSIX_TABLE_OFFSET + 16, 0xFEE0_0000);
    dev.w32(MSIX_TABLE_OFFSET + 24, 0x45);
    dev.w32(MSIX_TABLE_OFFSET + 28, 0);
    let status = crate::virtio::testing::negotiate(
        &mut dev,
        F_VERSION_1 | F_RING_INDIRECT_DESC | VIRTIO_BLK_F_FLUSH,
    );
    let mut ring = Ring::new(&mem, 256);
    ring.desc = 0x4_0000;
    ring.avail = 0x5_0000;
    ring.used = 0x6_0000;
    dev.w16(common_cfg::QUEUE_SELECT, 0);
    dev.w16(common_cfg::QUEUE_MSIX_VECTOR, 1);
    crate::virtio::testing::setup_queue(&mut dev, 0, &ring.config());
    dev.w8(common_cfg::DEVICE_STATUS, status | STATUS_DRIVER_OK);
    header[8..].copy_from_slice(&4095u64.to_le_bytes());
    mem.write_slice(&header, GuestAddress(HDR)).unwrap();
    ring.add(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
    notify(&mut dev, 0);
    assert_eq!(ring.used_idx(), 1);
    mem.read_slice(&mut sector, GuestAddress(DATA)).unwrap();
    assert_eq!(sector, contents[4095 * 512..]);
    assert_eq!(msi.messages().len(), 1);
    assert_eq!(msi.messages()[0].data, 0x45);
    assert_eq!(intx.asserts(), 1, "no INTx# with MSI-X on");
}

#[test]
fn the_bounce_buffer_is_allocated_at_the_first_notification() {
    let mut b = blk(mem_disk(8), 0);
    assert!(
        b.dev.device().bounce.is_empty(),
        "a new device allocates none"
    );
    assert_eq!(b.read(0, HIGH, 512).0, VIRTIO_BLK_S_OK);
    assert_eq!(b.dev.device().bounce.len(), SIZE_MAX as usize);
    assert_eq!(b.bytes(HIGH, 512), mem_disk(1).data()[..512]);
}
