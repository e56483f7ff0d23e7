//! The bound on one notification's work, shown with test doubles that count it: disks that
//! count their calls (and play a hostile or a concurrent driver while the device runs), and a
//! guest memory that counts every lookup the device and virtio-queue make.

use std::cell::Cell;
use std::io;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::tests::{DATA, HDR, STATUS, blk, mem_disk};
use super::*;
use crate::virtio::testing::{AVAIL, Bar0, USED, common_cfg, negotiate, notify};
use crate::virtio::{F_RING_EVENT_IDX, F_VERSION_1, STATUS_DEVICE_NEEDS_RESET, STATUS_FEATURES_OK};

/// `VRING_USED_F_NO_NOTIFY`: the device asks the driver not to notify.
const USED_F_NO_NOTIFY: u16 = 1;

/// An endless disk that attacks the ring: a read of sector `k` laid over the available ring
/// (first half) and the request header (second half) publishes the same chain again with a read
/// of sector `k + 1`, so each completion makes the next request. It fails after `budget` reads,
/// so that a device without a bound ends (and the test fails) instead of hanging.
///
/// A request's two 256-byte buffers take one disk read each.
struct RingAttackDisk {
    ring_size: u16,
    head: u16,
    reads: u64,
    budget: u64,
}

impl RingAttackDisk {
    fn sector(&self, k: u64) -> [u8; 512] {
        let mut image = [0u8; 512];
        // Available ring: flags 0, idx one past the chain this sector answers, every slot `head`.
        image[2..4].copy_from_slice(&(k as u16).wrapping_add(2).to_le_bytes());
        for slot in 0..usize::from(self.ring_size) {
            image[4 + 2 * slot..6 + 2 * slot].copy_from_slice(&self.head.to_le_bytes());
        }
        // Request header: a read of the next sector.
        image[256..260].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
        image[264..272].copy_from_slice(&(k + 1).to_le_bytes());
        image
    }
}

impl DiskBackend for RingAttackDisk {
    fn size(&self) -> u64 {
        1 << 40
    }
    fn read_only(&self) -> bool {
        true
    }
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.reads += 1;
        if self.reads > self.budget {
            return Err(io::Error::other("read budget spent"));
        }
        for (i, byte) in buf.iter_mut().enumerate() {
            let at = offset + i as u64;
            *byte = self.sector(at / 512)[(at % 512) as usize];
        }
        Ok(())
    }
    fn write_all_at(&mut self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Err(io::ErrorKind::PermissionDenied.into())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_notify_serves_only_the_chains_published_before_it() {
    let disk = RingAttackDisk {
        ring_size: 16,
        head: 0,
        reads: 0,
        budget: 64,
    };
    let mut b = blk(disk, 0);
    b.header(HDR, VIRTIO_BLK_T_IN, 0);
    // The data buffers lie over the available ring and over the request's own header.
    let head = b.ring.add(&[
        (HDR, 16, false),
        (AVAIL, 256, true),
        (HDR, 256, true),
        (STATUS, 1, true),
    ]);
    assert_eq!(head, 0);
    for round in 1..=4u16 {
        notify(&mut b.dev, 0);
        assert_eq!(
            b.dev.device().disk().reads,
            2 * u64::from(round),
            "one notify serves the one chain published before it"
        );
        assert_eq!(b.ring.used_idx(), round);
        assert_eq!(b.status_at(STATUS), VIRTIO_BLK_S_OK);
        // The device's own write published the next chain: the next notify serves it.
        let idx: u16 = b.mem().read_obj(GuestAddress(AVAIL + 2)).unwrap();
        assert_eq!(idx, round + 1);
    }
    assert_eq!(b.dev.status() & STATUS_DEVICE_NEEDS_RESET, 0);
}

/// A disk that, at its first read, plays the driver on another vCPU: it publishes one more
/// chain and records whether that driver would notify (no `VRING_USED_F_NO_NOTIFY` set).
struct ConcurrentDriver {
    inner: MemDisk,
    publish: Option<Box<dyn FnOnce() -> bool + Send>>,
    would_notify: Option<bool>,
}

impl DiskBackend for ConcurrentDriver {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if let Some(publish) = self.publish.take() {
            self.would_notify = Some(publish());
        }
        self.inner.read_exact_at(buf, offset)
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, offset)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[test]
fn a_chain_published_during_a_notify_brings_its_own_notify() {
    let memory = crate::virtio::testing::memory();
    let other_vcpu = memory.clone();
    let publish = move || {
        // Chain B (descriptors 3..=5) goes into slot 1, then the index moves to 2.
        other_vcpu
            .write_obj(3u16, GuestAddress(AVAIL + 4 + 2))
            .unwrap();
        other_vcpu.write_obj(2u16, GuestAddress(AVAIL + 2)).unwrap();
        let flags: u16 = other_vcpu.read_obj(GuestAddress(USED)).unwrap();
        flags & USED_F_NO_NOTIFY == 0
    };
    let disk = ConcurrentDriver {
        inner: mem_disk(16),
        publish: Some(Box::new(publish)),
        would_notify: None,
    };
    let mut b = super::tests::blk_on(disk, 0, memory);
    b.header(HDR, VIRTIO_BLK_T_IN, 1);
    b.header(HDR + 0x100, VIRTIO_BLK_T_IN, 2);
    b.ring.set_desc(3, HDR + 0x100, 16, 1, 4);
    b.ring.set_desc(4, DATA + 0x1000, 512, 3, 5);
    b.ring.set_desc(5, STATUS + 1, 1, 2, 0);
    b.ring
        .add(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
    notify(&mut b.dev, 0);
    assert_eq!(
        b.ring.used_idx(),
        1,
        "chain B came after the notify read the ring"
    );
    assert_eq!(
        b.dev.device().disk().would_notify,
        Some(true),
        "the device never asks the driver not to notify"
    );
    notify(&mut b.dev, 0);
    assert_eq!(b.ring.used_idx(), 2);
    assert_eq!(b.ring.used_elem(1), (3, 513));
    assert_eq!(b.bytes(DATA + 0x1000, 512), mem_disk(16).data()[1024..1536]);
}

thread_local! {
    static LINES: Cell<usize> = const { Cell::new(0) };
}

/// Counts log lines (any level) per thread, so parallel tests do not see each other's.
struct LineCounter;

impl log::Log for LineCounter {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, _: &log::Record<'_>) {
        LINES.with(|n| n.set(n.get() + 1));
    }
    fn flush(&self) {}
}

static LINE_COUNTER: LineCounter = LineCounter;

/// Log lines this thread has produced so far.
fn lines_logged() -> usize {
    let _ = log::set_logger(&LINE_COUNTER);
    log::set_max_level(log::LevelFilter::Trace);
    LINES.with(Cell::get)
}

#[test]
fn out_of_range_heads_are_counted_without_log_lines() {
    let mut b = blk(mem_disk(16), 0);
    let before = lines_logged();
    for head in [16, 17, 500, u16::MAX, 16, 16, 16, 16] {
        b.ring.publish(head);
    }
    notify(&mut b.dev, 0);
    assert_eq!(lines_logged(), before, "no log line for a bad head");
    assert_eq!(b.stats().invalid_heads, 8);
    assert_eq!(b.stats().dropped, 0);
    assert_eq!(b.ring.used_idx(), 0, "nothing to give back");
    assert_eq!(b.dev.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    // The device carries on.
    assert_eq!(b.read(3, DATA, 512), (VIRTIO_BLK_S_OK, 513));
}

#[test]
fn event_idx_is_not_offered() {
    let mut b = blk(mem_disk(1), 0);
    b.dev.w32(common_cfg::DEVICE_FEATURE_SELECT, 0);
    assert_eq!(
        u64::from(b.dev.r32(common_cfg::DEVICE_FEATURE)) & F_RING_EVENT_IDX,
        0
    );
    let status = negotiate(&mut b.dev, F_VERSION_1 | F_RING_EVENT_IDX);
    assert_eq!(status & STATUS_FEATURES_OK, 0, "refused: not offered");
}

/// Guest memory that counts every region lookup: one per access the device and virtio-queue
/// make (two or more when an access straddles regions).
struct CountingMemory {
    inner: vm_memory::GuestMemoryMmap,
    lookups: Cell<u64>,
}

impl GuestMemoryBackend for CountingMemory {
    type R = vm_memory::GuestRegionMmap;

    fn num_regions(&self) -> usize {
        self.inner.num_regions()
    }

    fn find_region(&self, addr: GuestAddress) -> Option<&Self::R> {
        self.lookups.set(self.lookups.get() + 1);
        self.inner.find_region(addr)
    }

    fn iter(&self) -> impl Iterator<Item = &Self::R> {
        self.inner.iter()
    }
}

/// A disk that counts its calls and the bytes they move.
struct CountingDisk {
    inner: MemDisk,
    calls: u64,
    bytes: u64,
}

impl DiskBackend for CountingDisk {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.calls += 1;
        self.bytes += buf.len() as u64;
        self.inner.read_exact_at(buf, offset)
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.calls += 1;
        self.bytes += buf.len() as u64;
        self.inner.write_all_at(buf, offset)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.calls += 1;
        self.inner.flush()
    }
}

/// Memory lookups one chain may cost: a descriptor read and the check of its buffer (each at
/// most a few lookups, as a buffer may straddle regions), for `MAX_DESCRIPTORS` descriptors
/// plus the one pointing at an indirect table; a few per chunk moved; and a fixed part (head,
/// header, status, used element).
const LOOKUPS_PER_CHAIN: u64 =
    8 * (MAX_DESCRIPTORS as u64 + 1) + 4 * (MAX_DESCRIPTORS as u64 + SEG_MAX as u64) + 32;

/// One notification's work, counted: chains taken from the ring, memory lookups, disk calls
/// and bytes.
#[derive(Debug, Default)]
struct Work {
    chains: u64,
    lookups: u64,
    disk_calls: u64,
    disk_bytes: u64,
}

impl Work {
    /// Asserts the bound: at most `queue_size` chains, and per chain at most
    /// [`LOOKUPS_PER_CHAIN`] lookups, [`MAX_DISK_CALLS_PER_CHAIN`] disk calls and
    /// [`MAX_REQUEST_BYTES`].
    fn assert_bounded(&self, queue_size: u16) {
        assert!(
            self.chains <= u64::from(queue_size).min(MAX_CHAINS_PER_NOTIFY),
            "{self:?}"
        );
        // The ring's index and its first entry are read even when nothing is there.
        let chains = self.chains.max(1);
        assert!(self.lookups <= chains * LOOKUPS_PER_CHAIN, "{self:?}");
        assert!(
            self.disk_calls <= chains * MAX_DISK_CALLS_PER_CHAIN,
            "{self:?}"
        );
        assert!(self.disk_bytes <= chains * MAX_REQUEST_BYTES, "{self:?}");
    }
}

/// A queue of `size` on the test rings, and a device's request machinery, over counted memory.
struct Bench {
    queue: Queue,
    memory: CountingMemory,
    disk: CountingDisk,
    bounce: Vec<u8>,
    stats: BlockStats,
}

impl Bench {
    fn new(size: u16) -> Self {
        let mut queue = Queue::new(size).unwrap();
        queue.set_desc_table_address(Some(crate::virtio::testing::DESC as u32), Some(0));
        queue.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        queue.set_used_ring_address(Some(USED as u32), Some(0));
        queue.set_ready(true);
        Self {
            queue,
            memory: CountingMemory {
                inner: crate::virtio::testing::memory(),
                lookups: Cell::new(0),
            },
            disk: CountingDisk {
                inner: mem_disk(64),
                calls: 0,
                bytes: 0,
            },
            bounce: vec![0; SIZE_MAX as usize],
            stats: BlockStats::default(),
        }
    }

    fn mem(&self) -> &vm_memory::GuestMemoryMmap {
        &self.memory.inner
    }

    /// One notification, counted.
    fn notify(&mut self) -> Work {
        let (lookups, calls, bytes) = (self.memory.lookups.get(), self.disk.calls, self.disk.bytes);
        let taken = |s: &BlockStats| s.requests + s.dropped + s.invalid_heads;
        let before = taken(&self.stats);
        let mut executor = Executor {
            disk: &mut self.disk,
            memory: &self.memory,
            bounce: &mut self.bounce,
            max_request: MAX_REQUEST_BYTES,
            serial: [0; SERIAL_LEN],
        };
        if serve(&mut self.queue, &mut executor, &mut self.stats).is_err() {
            // A broken ring: the transport asks for a reset, after which the driver starts
            // from where the ring is now.
            let idx: u16 = self.mem().read_obj(GuestAddress(AVAIL + 2)).unwrap();
            self.queue.set_next_avail(idx);
        }
        Work {
            chains: taken(&self.stats) - before,
            lookups: self.memory.lookups.get() - lookups,
            disk_calls: self.disk.calls - calls,
            disk_bytes: self.disk.bytes - bytes,
        }
    }
}

/// Writes descriptor `index` of the table at `table`.
fn desc(mem: &vm_memory::GuestMemoryMmap, table: u64, index: u64, d: (u64, u32, u16, u16)) {
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&d.0.to_le_bytes());
    raw[8..12].copy_from_slice(&d.1.to_le_bytes());
    raw[12..14].copy_from_slice(&d.2.to_le_bytes());
    raw[14..].copy_from_slice(&d.3.to_le_bytes());
    mem.write_slice(&raw, GuestAddress(table + 16 * index))
        .unwrap();
}

#[test]
fn a_maximal_indirect_table_is_read_only_up_to_the_limit() {
    use crate::virtio::testing::{HIGH, INDIRECT, NEXT, WRITE};
    let mut bench = Bench::new(16);
    let mem = bench.mem().clone();
    // 65 535 entries (the most a table length can describe), chained to the end.
    let entries = u64::from(u16::MAX);
    for i in 0..entries - 1 {
        desc(&mem, HIGH, i, (HDR, 16, NEXT, (i + 1) as u16));
    }
    desc(&mem, HIGH, entries - 1, (STATUS, 1, WRITE, 0));
    desc(
        &mem,
        crate::virtio::testing::DESC,
        0,
        (HIGH, (16 * entries) as u32, INDIRECT, 0),
    );
    mem.write_obj(0u16, GuestAddress(AVAIL + 4)).unwrap();
    mem.write_obj(1u16, GuestAddress(AVAIL + 2)).unwrap();
    let work = bench.notify();
    assert_eq!(work.chains, 1);
    work.assert_bounded(16);
    assert_eq!(bench.stats.dropped, 1, "too long: no status to trust");
    assert_eq!(bench.queue.next_used(), 1, "answered with length 0");
}

/// A small xorshift generator: the storm is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Hostile rings, one notification each: random descriptors (direct and indirect, looping,
/// over the rings themselves), heads, headers and indices. Every notification stays in bound.
#[test]
fn every_notification_is_bounded_whatever_the_ring_holds() {
    use crate::virtio::testing::{DESC, HIGH, INDIRECT, MEMORY_END, NEXT, WRITE};
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for size in [1u16, 16, QUEUE_SIZE] {
        let mut bench = Bench::new(size);
        let mem = bench.mem().clone();
        let mut avail_idx = 0u16;
        let addr = |rng: &mut Rng| match rng.below(6) {
            0 => DESC + rng.below(16 * u64::from(size)),
            1 => AVAIL + rng.below(0x200),
            2 => HDR + rng.below(64),
            3 => HIGH + 16 * rng.below(0x100),
            4 => rng.below(MEMORY_END),
            _ => rng.next(),
        };
        for _ in 0..64 {
            for _ in 0..rng.below(64) {
                let table = if rng.below(4) == 0 { HIGH } else { DESC };
                let index = rng.below(if table == HIGH {
                    0x100
                } else {
                    u64::from(size)
                });
                let len = match rng.below(4) {
                    0 => rng.next() as u32,
                    1 => 16 * rng.below(0x200) as u32,
                    _ => 512 * rng.below(4) as u32 + rng.below(2) as u32,
                };
                let flags = match rng.below(8) {
                    0..=2 => NEXT,
                    3 => NEXT | WRITE,
                    4 | 5 => WRITE,
                    6 => INDIRECT,
                    _ => rng.next() as u16,
                };
                let next = rng.below(u64::from(size) + 2) as u16;
                desc(&mem, table, index, (addr(&mut rng), len, flags, next));
            }
            for _ in 0..rng.below(4) {
                let mut header = [0u8; 16];
                header[..4].copy_from_slice(&(rng.below(9) as u32).to_le_bytes());
                header[8..].copy_from_slice(&rng.below(80).to_le_bytes());
                let _ = mem.write_slice(&header, GuestAddress(addr(&mut rng)));
            }
            for _ in 0..rng.below(u64::from(size) + 1) {
                let slot = u64::from(avail_idx % size);
                let head = match rng.below(8) {
                    0 => size.wrapping_add(rng.next() as u16 % (u16::MAX - size)),
                    _ => rng.below(u64::from(size)) as u16,
                };
                mem.write_obj(head, GuestAddress(AVAIL + 4 + 2 * slot))
                    .unwrap();
                avail_idx = avail_idx.wrapping_add(1);
            }
            mem.write_obj(avail_idx, GuestAddress(AVAIL + 2)).unwrap();
            bench.notify().assert_bounded(size);
            // The device's writes may have moved the index; the driver continues from there.
            avail_idx = mem.read_obj(GuestAddress(AVAIL + 2)).unwrap();
        }
        let s = bench.stats;
        assert!(
            s.requests > 0 && s.dropped > 0 && s.invalid_heads > 0,
            "{size}: {s:?}"
        );
    }
}
