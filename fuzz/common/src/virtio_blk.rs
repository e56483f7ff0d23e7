//! Fuzz surface `virtio_blk`: arbitrary descriptor tables, available rings, request headers and
//! guest memory contents for a live virtio-blk device, on an in-memory disk or on a sparse file
//! of realistic size ([`FILE_DISK_BYTES`]), over guest memory with a hole, with notifications,
//! ring corruption, resets and a failing disk.
//!
//! Checked after every operation: nothing panics or hangs; the device never takes more chains
//! than were published (unless the available index was overwritten); the disk keeps its size,
//! never changes when read-only, and changes only when a write succeeded; every disk call lies
//! inside the disk; the device's counters add up; a request the harness built well-formed
//! completes inside the notification with a defined status; `EVENT_IDX` is never negotiated.
//! And the work of each notification is bounded, whatever the ring holds (data landing on the
//! ring or on other requests' headers included): at most the queue size of chains (and at most
//! [`MAX_CHAINS_PER_NOTIFY`]), each at most [`MAX_DISK_CALLS_PER_CHAIN`] disk calls moving at
//! most [`MAX_REQUEST_BYTES`].
//!
//! The input starts with a [`Setup`] (disk size, read-only, features, queue size, memory
//! layout) and continues with [`Op`]s, both in a small byte format read with `arbitrary`'s
//! primitives, so [`encode`] writes seeds that decode to exactly the intended operations.

mod disk;
pub mod request;

use arbitrary::{Arbitrary, Unstructured};
use vmkit_devices::virtio::block::{
    MAX_CHAINS_PER_NOTIFY, MAX_DISK_CALLS_PER_CHAIN, MAX_REQUEST_BYTES, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use vmkit_devices::virtio::driver::{self, QueueConfig, Ring};
use vmkit_devices::virtio::{
    F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, F_VERSION_1,
    STATUS_DEVICE_NEEDS_RESET as STATUS_NEEDS_RESET, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
    VirtioPciInterrupts,
};
use vmkit_devices::{VirtioBlock, VirtioPciDevice};
use vmkit_memory::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Most operations taken from one input.
pub const MAX_OPS: usize = 256;
/// End of the first RAM region.
pub const LOW_END: u64 = 0x1_0000;
/// Start and end of the optional second region (a hole lies between).
pub const HIGH: (u64, u64) = (0x1_8000, 0x2_0000);
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const HDR: u64 = 0x4000;
const DATA: u64 = 0x5000;
const STATUS: u64 = 0xF000;
/// Request types the fuzzer picks from (the last two are unsupported).
const KINDS: [u32; 6] = [
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    2,
    11,
];

pub use disk::{DiskCalls, FILE_DISK_BYTES, FileTurn, FuzzDisk};

/// The device and memory an input runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setup {
    /// Size of the in-memory disk in sectors (1..=64).
    pub sectors: u8,
    /// The disk is the shared sparse file of [`FILE_DISK_BYTES`] instead.
    pub file_backed: bool,
    /// Whether the disk is read-only.
    pub read_only: bool,
    /// Ask for `EVENT_IDX` first: the device does not offer it, so `FEATURES_OK` must be
    /// refused, and the driver negotiates again without it.
    pub event_idx: bool,
    /// Negotiate `INDIRECT_DESC`.
    pub indirect: bool,
    /// log2 of the queue size (0..=8).
    pub size_log: u8,
    /// Whether guest memory has a second region above a hole.
    pub two_regions: bool,
}

impl Setup {
    fn read(u: &mut Unstructured<'_>) -> arbitrary::Result<Self> {
        let disk = u8::arbitrary(u)?;
        let flags = u8::arbitrary(u)?;
        Ok(Self {
            sectors: disk % 64 + 1,
            file_backed: disk & 0x80 != 0,
            read_only: flags & 1 != 0,
            event_idx: flags & 2 != 0,
            indirect: flags & 4 != 0,
            two_regions: flags & 8 != 0,
            size_log: (flags >> 4) % 9,
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.push((self.sectors - 1) | u8::from(self.file_backed) << 7);
        out.push(
            u8::from(self.read_only)
                | u8::from(self.event_idx) << 1
                | u8::from(self.indirect) << 2
                | u8::from(self.two_regions) << 3
                | self.size_log << 4,
        );
    }

    fn queue_size(&self) -> u16 {
        1 << self.size_log
    }
}

/// A guest address: inside the first region, or anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addr {
    /// An address below [`LOW_END`].
    Ram(u16),
    /// Any address.
    Raw(u64),
}

impl Addr {
    fn read(u: &mut Unstructured<'_>) -> arbitrary::Result<Self> {
        Ok(if u8::arbitrary(u)? & 1 == 0 {
            Addr::Ram(u16::arbitrary(u)?)
        } else {
            Addr::Raw(u64::arbitrary(u)?)
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Addr::Ram(a) => {
                out.push(0);
                out.extend_from_slice(&a.to_le_bytes());
            }
            Addr::Raw(a) => {
                out.push(1);
                out.extend_from_slice(&a.to_le_bytes());
            }
        }
    }

    fn value(self) -> u64 {
        match self {
            Addr::Ram(a) => u64::from(a),
            Addr::Raw(a) => a,
        }
    }
}

/// One step of a fuzz input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Writes descriptor `index` (modulo the queue size) of the table.
    Desc {
        /// Index.
        index: u16,
        /// Buffer address.
        addr: Addr,
        /// Buffer length.
        len: u32,
        /// Flags (NEXT 1, WRITE 2, INDIRECT 4; other bits too).
        flags: u16,
        /// Next index (not reduced: may be out of range).
        next: u16,
    },
    /// Puts `head` (not reduced) in the available ring and bumps its index.
    Publish {
        /// The chain head.
        head: u16,
    },
    /// Notifies the queue.
    Notify,
    /// Guest memory bytes at `addr` (in the first region).
    Memory {
        /// Address.
        addr: u16,
        /// Bytes (0..=64).
        data: Vec<u8>,
    },
    /// A request header at `addr`.
    Header {
        /// Address (in the first region).
        addr: u16,
        /// Index into the request types.
        kind: u8,
        /// Sector.
        sector: u64,
    },
    /// A well-formed request in fresh descriptors (header, data, status), published and
    /// notified.
    Request {
        /// Index into the request types.
        kind: u8,
        /// Sector.
        sector: u64,
        /// Data sectors (0..=7).
        sectors: u8,
        /// Framing: bit 0 splits the header, bit 1 puts the status in the data descriptor.
        layout: u8,
    },
    /// Sets the available index (corrupting the ring).
    SetAvailIdx(u16),
    /// Sets `used_event`.
    SetUsedEvent(u16),
    /// Resets the device and initialises it again (fresh rings).
    Reinit,
    /// The disk starts (`true`) or stops failing.
    FailDisk(bool),
}

const OP_KINDS: u8 = 10;

fn bytes(u: &mut Unstructured<'_>, max: u8) -> arbitrary::Result<Vec<u8>> {
    let len = u8::arbitrary(u)? % (max + 1);
    Ok(u.bytes(usize::from(len))?.to_vec())
}

impl Op {
    fn read(u: &mut Unstructured<'_>) -> arbitrary::Result<Self> {
        Ok(match u8::arbitrary(u)? % OP_KINDS {
            0 => Op::Desc {
                index: u16::arbitrary(u)?,
                addr: Addr::read(u)?,
                len: u32::arbitrary(u)?,
                flags: u16::arbitrary(u)?,
                next: u16::arbitrary(u)?,
            },
            1 => Op::Publish {
                head: u16::arbitrary(u)?,
            },
            2 => Op::Notify,
            3 => Op::Memory {
                addr: u16::arbitrary(u)?,
                data: bytes(u, 64)?,
            },
            4 => Op::Header {
                addr: u16::arbitrary(u)?,
                kind: u8::arbitrary(u)?,
                sector: u64::arbitrary(u)?,
            },
            5 => Op::Request {
                kind: u8::arbitrary(u)?,
                sector: u64::arbitrary(u)?,
                sectors: u8::arbitrary(u)? % 8,
                layout: u8::arbitrary(u)?,
            },
            6 => Op::SetAvailIdx(u16::arbitrary(u)?),
            7 => Op::SetUsedEvent(u16::arbitrary(u)?),
            8 => Op::Reinit,
            _ => Op::FailDisk(bool::arbitrary(u)?),
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Op::Desc {
                index,
                addr,
                len,
                flags,
                next,
            } => {
                out.push(0);
                out.extend_from_slice(&index.to_le_bytes());
                addr.encode(out);
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(&flags.to_le_bytes());
                out.extend_from_slice(&next.to_le_bytes());
            }
            Op::Publish { head } => {
                out.push(1);
                out.extend_from_slice(&head.to_le_bytes());
            }
            Op::Notify => out.push(2),
            Op::Memory { addr, data } => {
                out.push(3);
                out.extend_from_slice(&addr.to_le_bytes());
                out.push(data.len() as u8);
                out.extend_from_slice(data);
            }
            Op::Header { addr, kind, sector } => {
                out.push(4);
                out.extend_from_slice(&addr.to_le_bytes());
                out.push(*kind);
                out.extend_from_slice(&sector.to_le_bytes());
            }
            Op::Request {
                kind,
                sector,
                sectors,
                layout,
            } => {
                out.extend_from_slice(&[5, *kind]);
                out.extend_from_slice(&sector.to_le_bytes());
                out.extend_from_slice(&[*sectors, *layout]);
            }
            Op::SetAvailIdx(v) => {
                out.push(6);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Op::SetUsedEvent(v) => {
                out.push(7);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Op::Reinit => out.push(8),
            Op::FailDisk(fail) => out.extend_from_slice(&[9, u8::from(*fail)]),
        }
    }
}

/// The setup and operations an input decodes to (`None` when it is too short for a setup).
pub fn parse(data: &[u8]) -> Option<(Setup, Vec<Op>)> {
    let mut u = Unstructured::new(data);
    if u.len() < 2 {
        return None;
    }
    let setup = Setup::read(&mut u).ok()?;
    let ops = crate::ops::decode(&mut u, MAX_OPS, Op::read);
    Some((setup, ops))
}

/// The bytes that decode to `setup` and `ops`.
pub fn encode(setup: &Setup, ops: &[Op]) -> Vec<u8> {
    let mut out = Vec::new();
    setup.encode(&mut out);
    for op in ops {
        op.encode(&mut out);
    }
    out
}

struct Harness {
    setup: Setup,
    dev: VirtioPciDevice<VirtioBlock<FuzzDisk>>,
    memory: GuestMemoryMmap,
    disk_size: u64,
    /// The driver's side of the ring (vmkit-devices' driver helper).
    ring: Ring,
    /// Chains published since the last initialisation, and the chains the device had taken
    /// (completed or dropped) then.
    published: u64,
    popped_base: u64,
    /// The available index in memory stopped being the harness's (the guest, or a request's
    /// data, overwrote it): the device may take chains nobody published.
    corrupted: bool,
    /// The shared file's turn, for a file-backed disk; released after the device (and its
    /// disk) are dropped.
    _turn: Option<FileTurn>,
}

impl Harness {
    fn new(setup: Setup) -> Self {
        let mut ranges = vec![(GuestAddress(0), LOW_END as usize)];
        if setup.two_regions {
            ranges.push((GuestAddress(HIGH.0), (HIGH.1 - HIGH.0) as usize));
        }
        let memory = GuestMemoryMmap::from_ranges(&ranges).expect("small guest memory");
        let (disk, turn) = if setup.file_backed {
            let (disk, turn) = FuzzDisk::file(setup.read_only);
            (disk, Some(turn))
        } else {
            let data: Vec<u8> = (0..usize::from(setup.sectors) * 512)
                .map(|i| (i % 251) as u8)
                .collect();
            (FuzzDisk::memory(data, setup.read_only), None)
        };
        let disk_size = vmkit_devices::DiskBackend::size(&disk);
        let dev = VirtioPciDevice::new(
            VirtioBlock::new(disk),
            memory.clone(),
            VirtioPciInterrupts::default(),
        )
        .expect("virtio-blk fits the transport");
        let ring = Ring::at(&memory, setup.queue_size(), DESC, AVAIL, USED);
        let mut h = Self {
            setup,
            dev,
            memory,
            disk_size,
            ring,
            published: 0,
            popped_base: 0,
            corrupted: false,
            _turn: turn,
        };
        h.init();
        h
    }

    fn init(&mut self) {
        let _ = self.memory.write_slice(&[0; 0x3000], GuestAddress(DESC));
        let features = F_VERSION_1
            | if self.setup.indirect {
                F_RING_INDIRECT_DESC
            } else {
                0
            };
        if self.setup.event_idx {
            let refused = driver::negotiate(&mut self.dev, features | F_RING_EVENT_IDX);
            assert_eq!(refused & STATUS_FEATURES_OK, 0, "EVENT_IDX negotiated");
        }
        let queue = QueueConfig {
            size: self.setup.queue_size(),
            desc: DESC,
            driver: AVAIL,
            device: USED,
            msix_vector: None,
        };
        let status = driver::init(&mut self.dev, features, &[queue]);
        assert!(status.is_ok(), "features refused: {status:?}");
        assert!(self.dev.is_active(), "a valid initialisation activates");
        self.ring = Ring::at(&self.memory, self.setup.queue_size(), DESC, AVAIL, USED);
        self.published = 0;
        self.popped_base = self.popped();
        self.corrupted = false;
    }

    /// Chains the device took: completed with a status, dropped, or with a head out of range.
    fn popped(&self) -> u64 {
        let s = self.dev.device().stats();
        s.requests + s.dropped + s.invalid_heads
    }

    /// Whether the device is live and not waiting for a reset.
    fn healthy(&self) -> bool {
        self.dev.is_active() && self.dev.status() & STATUS_NEEDS_RESET == 0
    }

    fn set_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.ring
            .set_desc(index % self.setup.queue_size(), addr, len, flags, next);
    }

    fn publish(&mut self, head: u16) {
        self.ring.publish(head);
        self.published += 1;
    }

    fn header(&self, addr: u64, kind: u8, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&KINDS[usize::from(kind) % KINDS.len()].to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        let _ = self.memory.write_slice(&h, GuestAddress(addr));
    }

    fn notify(&mut self) {
        let idx: u16 = self.memory.read_obj(GuestAddress(AVAIL + 2)).unwrap_or(0);
        self.corrupted |= idx != self.ring.avail_idx();
        let writes = self.dev.device().stats().writes;
        let popped = self.popped();
        let calls = self.dev.device().disk().counts();
        let before = self.dev.device().disk().memory_data().map(<[u8]>::to_vec);
        driver::notify(&mut self.dev, 0);
        let disk = self.dev.device().disk();
        // The bound of one exit.
        let chains = self.popped() - popped;
        let done = disk.counts();
        let most = u64::from(self.setup.queue_size()).min(MAX_CHAINS_PER_NOTIFY);
        assert!(chains <= most, "one notification took {chains} chains");
        assert!(done.calls - calls.calls <= chains * MAX_DISK_CALLS_PER_CHAIN);
        assert!(done.bytes - calls.bytes <= chains * MAX_REQUEST_BYTES);
        // The disk changes only through a write request that succeeded.
        assert_eq!(vmkit_devices::DiskBackend::size(disk), self.disk_size);
        if self.setup.read_only || self.dev.device().stats().writes == writes {
            assert_eq!(
                done.writes, calls.writes,
                "the disk changed without a write"
            );
            assert!(
                disk.memory_data().map(<[u8]>::to_vec) == before,
                "the disk changed without a write"
            );
        }
    }

    /// A well-formed request, published and notified: how many chains the notification took,
    /// and the status when it took exactly this one.
    fn request(&mut self, kind: u8, sector: u64, sectors: u8, layout: u8) -> (u64, Option<u8>) {
        let size = self.setup.queue_size();
        let kind_value = KINDS[usize::from(kind) % KINDS.len()];
        self.header(HDR, kind, sector);
        let len = u32::from(sectors) * 512;
        let data_write = kind_value != VIRTIO_BLK_T_OUT;
        let _ = self.memory.write_obj(0xEEu8, GuestAddress(STATUS));
        let mut chain: Vec<(u64, u32, bool)> = Vec::new();
        if layout & 1 != 0 {
            chain.push((HDR, 8, false));
            chain.push((HDR + 8, 8, false));
        } else {
            chain.push((HDR, 16, false));
        }
        let status_addr = if layout & 2 != 0 && data_write {
            chain.push((DATA, len + 1, true));
            DATA + u64::from(len)
        } else {
            if len > 0 {
                chain.push((DATA, len, data_write));
            }
            chain.push((STATUS, 1, true));
            STATUS
        };
        if chain.len() > usize::from(size) {
            return (0, None);
        }
        let before = self.popped();
        self.ring.add(&chain);
        self.published += 1;
        self.notify();
        let taken = self.popped() - before;
        let status = (taken == 1)
            .then(|| self.memory.read_obj(GuestAddress(status_addr)).ok())
            .flatten();
        (taken, status)
    }

    fn check(&self) {
        if !self.corrupted {
            let taken = self.popped() - self.popped_base;
            assert!(
                taken <= self.published,
                "took {taken} chains, {} published",
                self.published
            );
        }
        let s = self.dev.device().stats();
        assert_eq!(
            s.requests,
            s.reads + s.writes + s.flushes + s.get_ids + s.unsupported + s.errors
        );
        if self.dev.is_active() {
            assert_ne!(self.dev.status() & STATUS_DRIVER_OK, 0);
        }
    }
}

fn apply(h: &mut Harness, op: Op) {
    match op {
        Op::Desc {
            index,
            addr,
            len,
            flags,
            next,
        } => h.set_desc(index, addr.value(), len, flags, next),
        Op::Publish { head } => {
            if !h.corrupted {
                h.publish(head);
            }
        }
        Op::Notify => h.notify(),
        Op::Memory { addr, data } => {
            let addr = u64::from(addr);
            let n = data.len().min((LOW_END - addr) as usize);
            let _ = h.memory.write_slice(&data[..n], GuestAddress(addr));
        }
        Op::Header { addr, kind, sector } => {
            h.header(u64::from(addr).min(LOW_END - 16), kind, sector)
        }
        Op::Request {
            kind,
            sector,
            sectors,
            layout,
        } => {
            let healthy = h.healthy() && !h.corrupted;
            let (taken, status) = h.request(kind, sector, sectors, layout);
            if healthy && h.healthy() && !h.corrupted && h.setup.queue_size() >= 4 {
                // The notification completes the request before it returns.
                assert!(taken >= 1, "a well-formed request was not taken");
                if let Some(status) = status {
                    assert!(status <= 2, "status {status}");
                }
            }
        }
        Op::SetAvailIdx(v) => {
            let _ = h.memory.write_obj(v, GuestAddress(AVAIL + 2));
            h.corrupted |= v != h.ring.avail_idx();
        }
        Op::SetUsedEvent(v) => {
            let addr = AVAIL + 4 + 2 * u64::from(h.setup.queue_size());
            let _ = h.memory.write_obj(v, GuestAddress(addr));
        }
        Op::Reinit => h.init(),
        Op::FailDisk(fail) => h.dev.device_mut().disk_mut().set_failing(fail),
    }
}

/// Target body.
pub fn run(data: &[u8]) {
    let Some((setup, ops)) = parse(data) else {
        return;
    };
    let mut h = Harness::new(setup);
    for op in ops {
        apply(&mut h, op);
        h.check();
    }
    let _ = h.dev.config_space();
}

/// The ring attack on a queue of 4 and a disk of 16 sectors: sector `k` is first written to
/// hold an available ring that publishes one more chain and a request header that reads sector
/// `k + 1`; then one chain reads sector 0 into the available ring and its own header. Each
/// completion publishes the next request, so a device that served until the ring looked empty
/// would take 17 chains in one notification.
fn ring_overlap_attack() -> Vec<Op> {
    let mut ops = Vec::new();
    for k in 0..16u64 {
        // 16 requests before the attack chain, which is the 17th: sector k's completion makes
        // the index 17 + k + 1.
        let mut ring = vec![0u8; 12];
        ring[2..4].copy_from_slice(&(18 + k as u16).to_le_bytes());
        ops.push(Op::Memory {
            addr: DATA as u16,
            data: ring,
        });
        let mut header = vec![0u8; 16];
        header[8..].copy_from_slice(&(k + 1).to_le_bytes());
        ops.push(Op::Memory {
            addr: DATA as u16 + 256,
            data: header,
        });
        ops.push(Op::Request {
            kind: 1,
            sector: k,
            sectors: 1,
            layout: 0,
        });
    }
    let desc = |index, addr: u64, len, flags, next| Op::Desc {
        index,
        addr: Addr::Ram(addr as u16),
        len,
        flags,
        next,
    };
    ops.extend([
        Op::Header {
            addr: HDR as u16,
            kind: 0,
            sector: 0,
        },
        desc(0, HDR, 16, 1, 1),
        desc(1, AVAIL, 256, 3, 2),
        desc(2, HDR, 256, 3, 3),
        desc(3, STATUS, 1, 2, 0),
        Op::Publish { head: 0 },
        Op::Notify,
        Op::Notify,
        Op::Notify,
    ]);
    ops
}

/// Named seed inputs: small, meaningful scenarios.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let setup = Setup {
        sectors: 16,
        file_backed: false,
        read_only: false,
        event_idx: false,
        indirect: false,
        size_log: 4,
        two_regions: true,
    };
    let capacity = FILE_DISK_BYTES / 512;
    let attack_setup = Setup {
        size_log: 2,
        ..setup
    };
    let req = |kind, sector, sectors, layout| Op::Request {
        kind,
        sector,
        sectors,
        layout,
    };
    let desc = |index, addr, len, flags, next| Op::Desc {
        index,
        addr: Addr::Ram(addr),
        len,
        flags,
        next,
    };
    let scenarios: Vec<(&'static str, Setup, Vec<Op>)> = vec![
        (
            "read_write_flush_id",
            setup,
            vec![
                req(1, 2, 2, 0),
                req(0, 2, 2, 0),
                req(0, 15, 1, 3),
                req(2, 0, 0, 0),
                req(3, 0, 0, 0),
                req(4, 0, 0, 0),
            ],
        ),
        (
            "out_of_range",
            setup,
            vec![
                req(0, 16, 1, 0),
                req(1, 15, 2, 0),
                req(0, u64::MAX, 1, 0),
                req(1, u64::MAX / 512, 1, 1),
            ],
        ),
        (
            "read_only",
            Setup {
                read_only: true,
                ..setup
            },
            vec![req(1, 0, 1, 0), req(0, 0, 1, 0), req(2, 0, 0, 0)],
        ),
        (
            "bad_chains",
            setup,
            vec![
                Op::Header {
                    addr: 0x4000,
                    kind: 0,
                    sector: 0,
                },
                // Looping chain.
                desc(0, 0x4000, 16, 1, 1),
                desc(1, 0xF000, 1, 3, 0),
                Op::Publish { head: 0 },
                // Next index out of range.
                desc(2, 0x4000, 16, 1, 200),
                Op::Publish { head: 2 },
                // Status not writable, then outside memory.
                desc(3, 0x4000, 16, 1, 4),
                desc(4, 0xF000, 1, 0, 0),
                Op::Publish { head: 3 },
                Op::Desc {
                    index: 5,
                    addr: Addr::Raw(0x1_2000),
                    len: 1,
                    flags: 2,
                    next: 0,
                },
                Op::Publish { head: 5 },
                Op::Publish { head: 999 },
                Op::Notify,
                req(0, 1, 1, 0),
            ],
        ),
        (
            "indirect_and_event_idx",
            Setup {
                indirect: true,
                event_idx: true,
                ..setup
            },
            vec![
                Op::Header {
                    addr: 0x4000,
                    kind: 0,
                    sector: 3,
                },
                desc(8, 0x4000, 16, 1, 9),
                desc(9, 0x5000, 512, 3, 10),
                desc(10, 0xF000, 1, 2, 0),
                // The indirect table is descriptors 8..=10 of the ring's own table.
                desc(0, 0x1080, 48, 4, 0),
                Op::SetUsedEvent(0),
                Op::Publish { head: 0 },
                Op::Notify,
                req(0, 3, 1, 0),
            ],
        ),
        ("ring_overlap_attack", attack_setup, ring_overlap_attack()),
        (
            "file_backed",
            Setup {
                file_backed: true,
                ..setup
            },
            vec![
                req(1, capacity - 2, 2, 0),
                req(0, capacity - 2, 2, 0),
                req(0, capacity - 1, 2, 1),
                req(1, capacity, 1, 0),
                req(0, u64::MAX / 512, 1, 0),
                req(2, 0, 0, 0),
                req(3, 0, 0, 2),
                Op::FailDisk(true),
                req(1, 0, 1, 0),
                Op::FailDisk(false),
                req(0, 0, 7, 0),
            ],
        ),
        (
            "file_backed_read_only",
            Setup {
                file_backed: true,
                read_only: true,
                ..setup
            },
            vec![req(1, 0, 1, 0), req(0, capacity - 1, 1, 0), req(2, 0, 0, 0)],
        ),
        (
            "corrupt_ring_and_reinit",
            setup,
            vec![
                req(0, 0, 1, 0),
                Op::SetAvailIdx(500),
                Op::Notify,
                Op::Reinit,
                Op::FailDisk(true),
                req(0, 0, 1, 0),
                Op::FailDisk(false),
                req(0, 0, 1, 0),
            ],
        ),
    ];
    scenarios
        .into_iter()
        .map(|(name, setup, ops)| (name, encode(&setup, &ops)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed_files;

    #[test]
    fn seeds_round_trip_and_pass() {
        for (name, bytes) in seeds() {
            let (setup, ops) = parse(&bytes).unwrap();
            assert_eq!(encode(&setup, &ops), bytes, "{name}");
            run(&bytes);
        }
    }

    #[test]
    fn well_formed_requests_complete() {
        let (_, bytes) = seeds().remove(0);
        let (setup, _) = parse(&bytes).unwrap();
        let mut h = Harness::new(setup);
        h.memory
            .write_slice(&[0x42; 1024], GuestAddress(DATA))
            .unwrap();
        assert_eq!(h.request(1, 2, 2, 0), (1, Some(0)));
        let disk = h.dev.device().disk().memory_data().unwrap();
        assert_eq!(&disk[1024..2048], &[0x42; 1024][..]);
        assert_eq!(h.request(0, 16, 1, 0), (1, Some(1)), "past the end");
        assert_eq!(h.request(5, 0, 0, 0), (1, Some(2)), "unsupported");
        assert_eq!(
            h.request(3, 0, 0, 2),
            (1, Some(0)),
            "GET_ID, status in the data"
        );
        assert_eq!(h.request(0, 1, 1, 1), (1, Some(0)), "split header");
        assert!(h.healthy() && !h.corrupted);
    }

    #[test]
    fn committed_seeds_replay() {
        seed_files::replay("virtio_blk", &seeds(), true, run);
    }

    #[test]
    fn file_backed_runs_use_the_file_and_leave_it_as_found() {
        let (setup, _) = parse(&seeds().remove(0).1).unwrap();
        let setup = Setup {
            file_backed: true,
            ..setup
        };
        let last = FILE_DISK_BYTES / 512 - 1;
        let sector = |h: &Harness| {
            let mut data = vec![0u8; 512];
            h.memory.read_slice(&mut data, GuestAddress(DATA)).unwrap();
            data
        };
        {
            let mut h = Harness::new(setup);
            assert_eq!(h.disk_size, FILE_DISK_BYTES);
            h.memory
                .write_slice(&[0x5A; 512], GuestAddress(DATA))
                .unwrap();
            assert_eq!(h.request(1, last, 1, 0), (1, Some(0)));
            h.memory.write_slice(&[0; 512], GuestAddress(DATA)).unwrap();
            assert_eq!(h.request(0, last, 1, 0), (1, Some(0)));
            assert_eq!(sector(&h), [0x5A; 512]);
            let counts = h.dev.device().disk().counts();
            assert_eq!((counts.calls, counts.bytes, counts.writes), (2, 1024, 1));
        }
        let mut h = Harness::new(setup);
        h.memory
            .write_slice(&[0xFF; 512], GuestAddress(DATA))
            .unwrap();
        assert_eq!(h.request(0, last, 1, 0), (1, Some(0)));
        assert_eq!(sector(&h), [0; 512], "the last run's write was undone");
    }

    /// The attack seed does what it says: each completion publishes the next chain, and each
    /// notification serves one.
    #[test]
    fn the_ring_attack_publishes_one_chain_per_completion() {
        let (_, bytes) = seeds()
            .into_iter()
            .find(|(n, _)| *n == "ring_overlap_attack")
            .unwrap();
        let (setup, ops) = parse(&bytes).unwrap();
        let mut h = Harness::new(setup);
        let mut taken = Vec::new();
        for op in ops {
            let before = h.popped();
            let notify = op == Op::Notify;
            apply(&mut h, op);
            if notify {
                let idx: u16 = h.memory.read_obj(GuestAddress(AVAIL + 2)).unwrap();
                taken.push((h.popped() - before, idx));
            }
        }
        assert_eq!(taken, [(1, 18), (1, 19), (1, 20)]);
        assert!(h.healthy());
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        run(&[]);
        run(&[0]);
        run(&[0xFF; 64]);
        run(&(0..=255).collect::<Vec<u8>>());
        for tag in 0..=255u8 {
            run(&[15, tag, tag, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 2]);
        }
    }

    /// Writes the seed files; run with `cargo test -- --ignored write_seeds`.
    #[test]
    #[ignore]
    fn write_seeds() {
        seed_files::write("virtio_blk", &seeds());
    }
}
