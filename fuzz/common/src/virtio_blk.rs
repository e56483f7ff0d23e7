//! Fuzz surface `virtio_blk`: a live virtio-blk device driven by vmkit-fuzzing's virtio driver
//! simulator: block requests in chains of every shape and flaw, guest memory scribbled over the
//! rings and the requests, notifications, resets and re-initialisations, on an in-memory disk
//! or on a sparse file of realistic size ([`FILE_DISK_BYTES`]), over guest memory with a hole,
//! with a failing disk. Each input starts with the device brought up as its [`Setup`] says (the
//! fixture's prologue), so the operations reach the request path at once.
//!
//! The simulator checks what every virtio device owes its driver (see `vmkit_fuzzing::virtio`:
//! used entries name outstanding heads, once, within their writable bytes; guest memory written
//! only inside writable buffers and the used ring). This target adds, as fixture hooks: the
//! device never takes more chains than were published (unless the driver's structures were
//! overwritten); the disk keeps its size, never changes when read-only, and changes only when a
//! write succeeded; every disk call lies inside the disk; the device's counters add up; a
//! request built well-formed is taken inside its notification and completes with a defined
//! status; `EVENT_IDX` is never negotiated; a valid initialisation activates. And the work of
//! each notification is bounded, whatever the ring holds (data landing on the ring or on other
//! requests' headers included): at most the queue size of chains (and at most
//! [`MAX_CHAINS_PER_NOTIFY`]), each at most [`MAX_DISK_CALLS_PER_CHAIN`] disk calls moving at
//! most [`MAX_REQUEST_BYTES`].
//!
//! The input starts with a [`Setup`] (disk size, read-only, features, queue size, memory
//! layout) and continues with the simulator's operations; the request bytes of a chain are
//! read by [`request`].

mod disk;
pub mod request;

use std::cell::Cell;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arbitrary::{Arbitrary, Unstructured};
use vmkit_devices::virtio::block::{
    MAX_CHAINS_PER_NOTIFY, MAX_DISK_CALLS_PER_CHAIN, MAX_REQUEST_BYTES,
};
use vmkit_devices::virtio::{
    F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, F_VERSION_1,
    STATUS_DEVICE_NEEDS_RESET as STATUS_NEEDS_RESET, STATUS_DRIVER_OK, STATUS_FAILED,
    STATUS_FEATURES_OK, VirtioPciInterrupts,
};
use vmkit_devices::{DiskBackend, VirtioBlock, VirtioPciDevice};
use vmkit_fuzzing::virtio::{
    Chain, Completion, DriverView, Flaw, Form, Notified, QueueSetup, Segment, Structure,
    VirtioFixture, VirtioFuzzer, VirtioOp, Wiring,
};
use vmkit_fuzzing::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmkit_fuzzing::vmkit_exits::PciDevice;

pub use disk::{DiskCalls, FILE_DISK_BYTES, FileTurn, FuzzDisk};

/// End of the first RAM region.
pub const LOW_END: u64 = 0x1_0000;
/// Start and end of the optional second region (a hole lies between).
pub const HIGH: (u64, u64) = (0x1_8000, 0x2_0000);
/// The fixture's operation ([`VirtioOp::User`]) that makes the disk fail (data byte 0, bit 0)
/// or succeed again.
pub const FAIL_DISK: u8 = 0;

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

/// The device under test.
pub type Transport = VirtioPciDevice<VirtioBlock<FuzzDisk>>;

/// What a notification is checked against: the counts before it.
#[derive(Clone)]
struct Before {
    popped: u64,
    writes: u64,
    calls: DiskCalls,
    /// Whether [`Devices::data_before`] holds the in-memory disk's contents.
    data: bool,
}

thread_local! {
    /// The contents of the largest in-memory disk (byte `i` is `i % 251`), copied from at each
    /// build rather than computed again.
    static DISK_PATTERN: Vec<u8> = (0..64 * 512).map(|i| (i % 251) as u8).collect();
}

/// One device and what the checks compare with.
pub struct Devices {
    /// The transport (dropped before the shared file's turn).
    pub dev: Arc<Mutex<Transport>>,
    /// The guest memory.
    pub memory: GuestMemoryMmap,
    setup: Setup,
    disk_size: u64,
    before: std::cell::RefCell<Option<Before>>,
    /// The in-memory disk's contents before the notification (the buffer is reused).
    data_before: std::cell::RefCell<Vec<u8>>,
    /// The resets seen, and the chains taken at the last one.
    base: Cell<(u64, u64)>,
    /// The shared file's turn, for a file-backed disk; released after the device (and its
    /// disk) are dropped.
    _turn: Option<FileTurn>,
}

impl Devices {
    /// The transport, locked.
    pub fn lock(&self) -> MutexGuard<'_, Transport> {
        self.dev.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Chains the device took: completed with a status, dropped, or with a head out of range.
fn popped(dev: &Transport) -> u64 {
    let s = dev.device().stats();
    s.requests + s.dropped + s.invalid_heads
}

/// The fixture: virtio-blk on the transport, as [`Setup`] says.
pub struct Fixture;

impl VirtioFixture for Fixture {
    type Devices = Devices;
    type Config = Setup;

    fn config(&self, u: &mut Unstructured<'_>) -> arbitrary::Result<Setup> {
        if u.len() < 2 {
            return Err(arbitrary::Error::NotEnoughData);
        }
        Setup::read(u)
    }

    fn encode_config(&self, setup: &Setup, out: &mut Vec<u8>) {
        setup.encode(out);
    }

    fn memory(&self, setup: &Setup) -> Vec<(u64, usize)> {
        let mut ranges = vec![(0, LOW_END as usize)];
        if setup.two_regions {
            ranges.push((HIGH.0, (HIGH.1 - HIGH.0) as usize));
        }
        ranges
    }

    fn build(&self, setup: &Setup, wiring: &mut Wiring) -> (Arc<dyn PciDevice>, Devices) {
        let memory = wiring.memory().clone();
        let (disk, turn) = if setup.file_backed {
            let (disk, turn) = FuzzDisk::file(setup.read_only);
            (disk, Some(turn))
        } else {
            let data =
                DISK_PATTERN.with(|pattern| pattern[..usize::from(setup.sectors) * 512].to_vec());
            (FuzzDisk::memory(data, setup.read_only), None)
        };
        let disk_size = disk.size();
        let dev = VirtioPciDevice::new(
            VirtioBlock::new(disk),
            memory.clone(),
            VirtioPciInterrupts::default(),
        )
        .expect("virtio-blk fits the transport");
        let dev = Arc::new(Mutex::new(dev));
        let devices = Devices {
            dev: dev.clone(),
            memory,
            setup: *setup,
            disk_size,
            before: Default::default(),
            data_before: Default::default(),
            base: Cell::new((0, 0)),
            _turn: turn,
        };
        (dev, devices)
    }

    fn prologue(&self, setup: &Setup, ops: &mut Vec<VirtioOp>) {
        if setup.event_idx {
            // Not offered: the simulator fails the run if FEATURES_OK sticks.
            ops.extend([
                VirtioOp::Status(0),
                VirtioOp::Status(1),
                VirtioOp::Status(3),
                VirtioOp::Features {
                    select: 0,
                    value: F_RING_EVENT_IDX as u32,
                },
                VirtioOp::Features {
                    select: 1,
                    value: (F_VERSION_1 >> 32) as u32,
                },
                VirtioOp::Status(0xB),
            ]);
        }
        let indirect = if setup.indirect {
            F_RING_INDIRECT_DESC
        } else {
            0
        };
        ops.extend([
            VirtioOp::Negotiate {
                mask: F_VERSION_1 | indirect,
            },
            VirtioOp::Queue(QueueSetup {
                size: setup.queue_size(),
                ..QueueSetup::honest(0)
            }),
            VirtioOp::DriverOk,
        ]);
    }

    fn request(&self, _devices: &Devices, _queue: u16, payload: &[u8], out: &mut Vec<Segment>) {
        request::segments(payload, out);
    }

    fn payload(&self, _queue: u16, segments: &[Segment]) -> Option<Vec<u8>> {
        request::payload_of(segments)
    }

    fn user_op(&self, devices: &Devices, tag: u8, data: &[u8]) {
        if tag == FAIL_DISK {
            let fail = data.first().is_some_and(|b| b & 1 == 1);
            devices.lock().device_mut().disk_mut().set_failing(fail);
        }
    }

    fn before_notify(&self, devices: &Devices) {
        let dev = devices.lock();
        let disk = dev.device().disk();
        let data = disk.memory_data();
        if let Some(data) = data {
            let mut copy = devices.data_before.borrow_mut();
            copy.clear();
            copy.extend_from_slice(data);
        }
        *devices.before.borrow_mut() = Some(Before {
            popped: popped(&dev),
            writes: dev.device().stats().writes,
            calls: disk.counts(),
            data: data.is_some(),
        });
    }

    fn after_notify(&self, devices: &Devices, notified: &Notified) {
        let Some(before) = devices.before.borrow_mut().take() else {
            return;
        };
        let dev = devices.lock();
        let disk = dev.device().disk();
        // The bound of one exit.
        let chains = popped(&dev) - before.popped;
        let done = disk.counts();
        let most = u64::from(devices.setup.queue_size()).min(MAX_CHAINS_PER_NOTIFY);
        assert!(chains <= most, "one notification took {chains} chains");
        assert!(done.calls - before.calls.calls <= chains * MAX_DISK_CALLS_PER_CHAIN);
        assert!(done.bytes - before.calls.bytes <= chains * MAX_REQUEST_BYTES);
        // The disk changes only through a write request that succeeded.
        assert_eq!(disk.size(), devices.disk_size);
        if devices.setup.read_only || dev.device().stats().writes == before.writes {
            assert_eq!(
                done.writes, before.calls.writes,
                "the disk changed without a write"
            );
            let copy = devices.data_before.borrow();
            let data_before = before.data.then_some(copy.as_slice());
            assert!(
                disk.memory_data() == data_before,
                "the disk changed without a write"
            );
        }
        // The notification serves a well-formed request before it returns.
        if notified.healthy && notified.fresh > 0 && devices.setup.queue_size() >= 4 {
            assert!(chains >= 1, "a well-formed request was not taken");
        }
    }

    fn completed(&self, devices: &Devices, completion: &Completion<'_>) {
        let status_writable = completion
            .payload
            .get(9)
            .is_none_or(|data| data & request::READABLE_STATUS == 0);
        if !completion.well_formed || !status_writable {
            return;
        }
        let last = completion.writable.last();
        let at = last.and_then(|&(addr, len)| addr.checked_add(u64::from(len))?.checked_sub(1));
        if let Some(at) = at
            && let Ok(status) = devices.memory.read_obj::<u8>(GuestAddress(at))
        {
            assert!(status <= 2, "status {status}");
        }
    }

    fn check(&self, devices: &Devices, driver: &DriverView) {
        let dev = devices.lock();
        let taken = popped(&dev);
        let (resets, base) = devices.base.get();
        if resets != driver.resets {
            devices.base.set((driver.resets, taken));
        } else if !driver.tainted {
            assert!(
                taken - base <= driver.published,
                "took {} chains, {} published",
                taken - base,
                driver.published
            );
        }
        let s = dev.device().stats();
        assert_eq!(
            s.requests,
            s.reads + s.writes + s.flushes + s.get_ids + s.unsupported + s.errors
        );
        let status = dev.status();
        if dev.is_active() {
            assert_ne!(status & STATUS_DRIVER_OK, 0);
        }
        // A driver that set FAILED gave up: the device stays down.
        if status & STATUS_DRIVER_OK != 0 && status & (STATUS_NEEDS_RESET | STATUS_FAILED) == 0 {
            assert!(
                dev.is_active(),
                "a valid initialisation activates (status {status:#x})"
            );
        }
        if status & STATUS_FEATURES_OK != 0 {
            assert_eq!(
                dev.acked_features() & F_RING_EVENT_IDX,
                0,
                "EVENT_IDX negotiated"
            );
        }
    }

    fn max_chains_per_notify(&self) -> u64 {
        MAX_CHAINS_PER_NOTIFY
    }
}

/// The simulator on the fixture.
pub fn fuzzer() -> VirtioFuzzer<Fixture> {
    VirtioFuzzer::new(Fixture)
}

thread_local! {
    /// The target's simulator: it keeps guest memory from one input to the next.
    static FUZZER: VirtioFuzzer<Fixture> = fuzzer();
}

/// Target body.
pub fn run(data: &[u8]) {
    FUZZER.with(|fuzzer| fuzzer.run(data));
}

/// A request on queue 0 (split header: `layout` bit 0; status in the data buffer: bit 1),
/// published and notified.
fn req(kind: u8, sector: u64, data: u8, layout: u8) -> [VirtioOp; 2] {
    let content: &[u8] = if kind == 1 { &[0x42, 0x17] } else { &[] };
    [
        VirtioOp::Chain(Chain {
            split: layout & 1 != 0,
            merge: layout & 2 != 0,
            ..Chain::direct(0, &request::payload(kind, sector, data, content))
        }),
        VirtioOp::Notify(0),
    ]
}

/// Where the ring attack puts its header and status.
const ATTACK_HDR: u16 = 0xE000;
const ATTACK_STATUS: u16 = 0xF000;

/// The ring attack on a queue of 4 and a disk of 16 sectors: sector `k` is first written to
/// hold an available ring that publishes one more chain and a request header that reads sector
/// `k + 1`; then one chain, written by the driver over the ring itself, reads sector 0 into the
/// available ring and its own header. Each completion publishes the next request, so a device
/// that served until the ring looked empty would take 17 chains in one notification.
fn ring_overlap_attack() -> Vec<VirtioOp> {
    let mut ops = Vec::new();
    for k in 0..16u64 {
        // Sector content, repeated every 48 bytes: an available ring at 0 (16 requests before
        // the attack chain, which is the 17th: sector k's completion makes the index
        // 17 + k + 1) and a header at 256 % 48 = 16 (the second 256-byte buffer's start).
        let mut content = vec![0u8; 48];
        content[2..4].copy_from_slice(&(18 + k as u16).to_le_bytes());
        content[24..32].copy_from_slice(&(k + 1).to_le_bytes());
        ops.push(VirtioOp::Chain(Chain::direct(
            0,
            &request::payload(1, k, 1, &content),
        )));
        ops.push(VirtioOp::Notify(0));
    }
    let memory = |queue_area: u8, offset: u16, data: &[u8]| VirtioOp::Memory {
        queue: 0,
        area: queue_area,
        offset,
        data: data.to_vec(),
    };
    let desc = |index: u16, addr: u64, len: u32, flags: u16, next: u16| {
        let mut raw = addr.to_le_bytes().to_vec();
        raw.extend_from_slice(&len.to_le_bytes());
        raw.extend_from_slice(&flags.to_le_bytes());
        raw.extend_from_slice(&next.to_le_bytes());
        memory(0, 16 * index, &raw)
    };
    // Where the simulator's places put queue 0's available ring.
    let avail = 0x2000;
    ops.extend([
        memory(3, ATTACK_HDR, &[0; 16]),
        desc(0, u64::from(ATTACK_HDR), 16, 1, 1),
        desc(1, avail, 256, 3, 2),
        desc(2, u64::from(ATTACK_HDR), 256, 3, 3),
        desc(3, u64::from(ATTACK_STATUS), 1, 2, 0),
        // Slot 16 % 4 = 0 gets head 0; the index becomes 17.
        memory(1, 4, &[0, 0]),
        memory(1, 2, &17u16.to_le_bytes()),
        VirtioOp::Notify(0),
        VirtioOp::Notify(0),
        VirtioOp::Notify(0),
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
    let fail_disk = |fail: bool| VirtioOp::User {
        tag: FAIL_DISK,
        data: vec![u8::from(fail)],
    };
    let flawed = |flaw: Flaw, payload: Vec<u8>| {
        VirtioOp::Chain(Chain {
            flaw,
            ..Chain::direct(0, &payload)
        })
    };
    let mut scenarios: Vec<(&'static str, Setup, Vec<VirtioOp>)> = vec![
        (
            "read_write_flush_id",
            setup,
            [
                req(1, 2, 2, 0),
                req(0, 2, 2, 0),
                req(0, 15, 1, 3),
                req(2, 0, 0, 0),
                req(3, 0, 0, 0),
                req(3, 0, request::ID_DATA, 2),
                req(4, 0, 0, 0),
            ]
            .concat(),
        ),
        (
            "out_of_range",
            setup,
            [
                req(0, 16, 1, 0),
                req(1, 15, 2, 0),
                req(0, u64::MAX, 1, 0),
                req(1, u64::MAX / 512, 1, 1),
            ]
            .concat(),
        ),
        (
            "read_only",
            Setup {
                read_only: true,
                ..setup
            },
            [req(1, 0, 1, 0), req(0, 0, 1, 0), req(2, 0, 0, 0)].concat(),
        ),
        (
            "bad_chains",
            setup,
            vec![
                // A looping chain, a next index out of range, a status the device cannot
                // write, a status running past the end of memory, a head out of range; then a
                // good request.
                flawed(Flaw::Loop, request::payload(0, 0, 0, &[])),
                flawed(Flaw::NextOutOfRange(200), request::payload(0, 0, 0, &[])),
                flawed(
                    Flaw::None,
                    request::payload(0, 0, request::READABLE_STATUS, &[]),
                ),
                flawed(Flaw::HugeLength(1), request::payload(0, 0, 0, &[])),
                flawed(Flaw::HeadOutOfRange(200), request::payload(0, 0, 0, &[])),
                VirtioOp::Notify(0),
                req(0, 1, 1, 0)[0].clone(),
                VirtioOp::Notify(0),
            ],
        ),
        (
            "indirect_and_event_idx",
            Setup {
                indirect: true,
                event_idx: true,
                ..setup
            },
            [
                vec![
                    VirtioOp::Chain(Chain {
                        form: Form::Indirect,
                        ..Chain::direct(0, &request::payload(0, 3, 1, &[]))
                    }),
                    // used_event, after the 16 entries of the available ring.
                    VirtioOp::Memory {
                        queue: 0,
                        area: 1,
                        offset: 4 + 2 * 16,
                        data: vec![0, 0],
                    },
                    VirtioOp::Notify(0),
                ],
                req(0, 3, 1, 0).to_vec(),
            ]
            .concat(),
        ),
        ("ring_overlap_attack", attack_setup, ring_overlap_attack()),
        (
            "file_backed",
            Setup {
                file_backed: true,
                ..setup
            },
            [
                req(1, capacity - 2, 2, 0).to_vec(),
                req(0, capacity - 2, 2, 0).to_vec(),
                req(0, capacity - 1, 2, 1).to_vec(),
                req(1, capacity, 1, 0).to_vec(),
                req(0, u64::MAX / 512, 1, 0).to_vec(),
                req(2, 0, 0, 0).to_vec(),
                req(3, 0, request::ID_DATA, 2).to_vec(),
                vec![fail_disk(true)],
                req(1, 0, 1, 0).to_vec(),
                vec![fail_disk(false)],
                req(0, 0, 7, 0).to_vec(),
            ]
            .concat(),
        ),
        (
            "file_backed_read_only",
            Setup {
                file_backed: true,
                read_only: true,
                ..setup
            },
            [req(1, 0, 1, 0), req(0, capacity - 1, 1, 0), req(2, 0, 0, 0)].concat(),
        ),
        (
            "corrupt_ring_and_reinit",
            setup,
            [
                req(0, 0, 1, 0).to_vec(),
                vec![
                    // The available index overwritten.
                    VirtioOp::Memory {
                        queue: 0,
                        area: 1,
                        offset: 2,
                        data: 500u16.to_le_bytes().to_vec(),
                    },
                    VirtioOp::Notify(0),
                    VirtioOp::Restart,
                    fail_disk(true),
                ],
                req(0, 0, 1, 0).to_vec(),
                vec![fail_disk(false)],
                req(0, 0, 1, 0).to_vec(),
            ]
            .concat(),
        ),
    ];
    // Found by the fuzzer, both wrong checks of the harness: a request taken by a notification
    // written as a raw register access counted as waiting at the next notification, and a
    // driver that sets FAILED with DRIVER_OK expected to activate the device.
    scenarios.extend([
        (
            "raw_notification",
            setup,
            vec![
                req(0, 0, 1, 0)[0].clone(),
                VirtioOp::Write {
                    at: Structure::Notify,
                    offset: 0,
                    data: vec![],
                },
                VirtioOp::Notify(0),
            ],
        ),
        ("driver_gives_up", setup, vec![VirtioOp::Status(0xFF)]),
        (
            // DRIVER_OK and FAILED set by one write (the device stays off), then a request
            // (a fuzzer's finding from the recorded seeds: the harness took the device for
            // live and healthy and blamed it for not serving the request).
            "failed_with_driver_ok",
            Setup {
                size_log: 2,
                ..setup
            },
            [
                VirtioOp::Reset,
                VirtioOp::Status(1),
                VirtioOp::Status(3),
                VirtioOp::Features {
                    select: 1,
                    value: 1,
                },
                VirtioOp::Status(0xB),
                VirtioOp::Queue(QueueSetup::honest(0)),
                VirtioOp::Status(0x8F),
            ]
            .into_iter()
            .chain(req(0, 0, 1, 0))
            .collect(),
        ),
    ]);
    let fuzzer = fuzzer();
    scenarios
        .into_iter()
        .map(|(name, setup, ops)| (name, fuzzer.encode(&setup, &ops)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed_files;
    use vmkit_memory::layout::MMIO32_START;

    /// Where the simulator puts the first chain's data buffer (after a 16-byte header at the
    /// start of its buffer area, which follows the rings of the one queue).
    const FIRST_DATA: u64 = 0x4010;

    fn decode(name: &str) -> (Setup, Vec<VirtioOp>) {
        let bytes = seeds().into_iter().find(|(n, _)| *n == name).unwrap().1;
        fuzzer().decode(&bytes).unwrap()
    }

    #[test]
    fn seeds_round_trip_and_pass() {
        let fuzzer = fuzzer();
        for (name, bytes) in seeds() {
            let (setup, ops) = fuzzer.decode(&bytes).unwrap();
            assert_eq!(fuzzer.encode(&setup, &ops), bytes, "{name}");
            run(&bytes);
        }
    }

    #[test]
    fn well_formed_requests_complete() {
        let (setup, ops) = decode("read_write_flush_id");
        let (stats, disk, driver) = fuzzer().run_ops_then(&setup, &ops, |devices, driver| {
            let dev = devices.lock();
            let disk = dev.device().disk().memory_data().unwrap().to_vec();
            (dev.device().stats(), disk, *driver)
        });
        // The write of sectors 2 and 3, the reads, the flush, the IDs, the unsupported type.
        let written: Vec<u8> = [0x42, 0x17].iter().copied().cycle().take(1024).collect();
        assert_eq!(&disk[1024..2048], &written[..]);
        assert_eq!(
            (
                stats.writes,
                stats.reads,
                stats.flushes,
                stats.get_ids,
                stats.unsupported
            ),
            (1, 2, 1, 2, 1)
        );
        assert_eq!(stats.errors, 0);
        assert!(!driver.tainted && driver.outstanding == 0);
        let (setup, ops) = decode("out_of_range");
        let (errors, outstanding) = fuzzer().run_ops_then(&setup, &ops, |devices, driver| {
            (devices.lock().device().stats().errors, driver.outstanding)
        });
        assert_eq!((errors, outstanding), (4, 0));
    }

    #[test]
    fn the_bad_chains_seed_reaches_every_flaw() {
        let (setup, ops) = decode("bad_chains");
        let (stats, driver) = fuzzer().run_ops_then(&setup, &ops, |devices, driver| {
            (devices.lock().device().stats(), *driver)
        });
        // The loop, the next index out of range, the readable status and the status past
        // memory are dropped (and given back without a length); the head out of range has
        // nothing to give back; the good request is read.
        assert_eq!((stats.dropped, stats.invalid_heads), (4, 1));
        assert_eq!((stats.requests, stats.reads), (1, 1));
        assert_eq!((driver.published, driver.outstanding), (6, 1));
        assert!(!driver.tainted);
    }

    /// The set-up of the recorded seeds: the guest's queue size, on the file disk (as large as
    /// the sectors the guests ask for).
    const RECORDED: Setup = Setup {
        sectors: 64,
        file_backed: true,
        read_only: false,
        event_idx: false,
        indirect: false,
        size_log: 2,
        two_regions: false,
    };

    /// The seeds taken from the committed recordings: the requests of each guest's driver
    /// (`guests/recordings/blk.vmrec`, and the hostile guest's), whose BAR 0 the reference VMM
    /// put at the start of the 32-bit window, on the device the prologue brought up.
    fn recorded_seeds() -> Vec<(String, Vec<u8>)> {
        let max_len = seed_files::recorded_seed_len(&seeds());
        seed_files::recorded(|recording| {
            let fuzzer = fuzzer();
            let ops = fuzzer.ops_from_recording(&RECORDED, recording, &[(0, MMIO32_START)]);
            seed_files::virtio_inputs(&fuzzer, &RECORDED, &ops, false, max_len)
        })
    }

    /// Every seed: the written ones and the recorded ones.
    fn all_seeds() -> Vec<(String, Vec<u8>)> {
        seed_files::all(seeds(), recorded_seeds())
    }

    #[test]
    fn the_recorded_seeds_make_the_guests_requests() {
        let seeds = recorded_seeds();
        assert!(
            seeds
                .iter()
                .any(|(name, _)| name.starts_with("recorded-blk-"))
        );
        let (mut served, mut written) = (0, 0);
        for (name, bytes) in &seeds {
            let (setup, ops) = fuzzer().decode(bytes).unwrap();
            assert_eq!(setup, RECORDED, "{name}");
            assert!(
                matches!(ops[0], VirtioOp::Chain(_) | VirtioOp::Notify(_)),
                "{name} starts with a request: {:?}",
                ops[0]
            );
            let (stats, driver) = fuzzer().run_ops_then(&setup, &ops, |devices, driver| {
                (devices.lock().device().stats(), *driver)
            });
            assert!(!driver.tainted && driver.outstanding == 0, "{name}");
            if name.starts_with("recorded-blk-") {
                served += stats.requests;
                written += stats.writes;
            }
        }
        // The blk guest's reads, writes and flush: at most 8 seeds of a few requests each.
        assert!(served >= 8 && written > 0, "{served} {written}");
    }

    #[test]
    fn a_driver_that_failed_is_not_served_and_the_device_not_blamed() {
        let (setup, ops) = decode("failed_with_driver_ok");
        let (active, stats, driver) = fuzzer().run_ops_then(&setup, &ops, |devices, driver| {
            let dev = devices.lock();
            (dev.is_active(), dev.device().stats(), *driver)
        });
        assert!(!active);
        assert_eq!((stats.requests, driver.outstanding), (0, 1));
        assert_eq!(driver.status & 0x84, 0x84, "DRIVER_OK and FAILED read back");
    }

    #[test]
    fn committed_seeds_replay() {
        seed_files::replay("virtio_blk", &seed_files::named(&all_seeds()), true, run);
    }

    #[test]
    fn file_backed_runs_use_the_file_and_leave_it_as_found() {
        let setup = Setup {
            file_backed: true,
            ..decode("read_write_flush_id").0
        };
        let last = FILE_DISK_BYTES / 512 - 1;
        let write = VirtioOp::Chain(Chain::direct(0, &request::payload(1, last, 1, &[0x5A])));
        let read = VirtioOp::Chain(Chain::direct(0, &request::payload(0, last, 1, &[])));
        let sector = |devices: &Devices, at: u64| {
            let mut data = vec![0u8; 512];
            devices
                .memory
                .read_slice(&mut data, GuestAddress(at))
                .unwrap();
            data
        };
        let fuzzer = fuzzer();
        // A write, then a read into the next chain's buffers (header, data, status after the
        // write's header, data and status).
        let ops = [
            write,
            VirtioOp::Notify(0),
            read.clone(),
            VirtioOp::Notify(0),
        ];
        let (data, counts) = fuzzer.run_ops_then(&setup, &ops, |devices, _| {
            let dev = devices.lock();
            (
                sector(devices, FIRST_DATA + 0x220),
                dev.device().disk().counts(),
            )
        });
        assert_eq!(data, [0x5A; 512]);
        assert_eq!((counts.calls, counts.bytes, counts.writes), (2, 1024, 1));
        let ops = [read, VirtioOp::Notify(0)];
        let data = fuzzer.run_ops_then(&setup, &ops, |devices, _| sector(devices, FIRST_DATA));
        assert_eq!(data, [0; 512], "the last run's write was undone");
    }

    /// The attack seed does what it says: each completion publishes the next chain, and each
    /// notification serves one.
    #[test]
    fn the_ring_attack_publishes_one_chain_per_completion() {
        let (setup, ops) = decode("ring_overlap_attack");
        let notifies: Vec<usize> = (0..ops.len())
            .filter(|&i| ops[i] == VirtioOp::Notify(0))
            .collect();
        let mut taken = Vec::new();
        let mut last = None;
        for &end in &notifies[notifies.len() - 4..] {
            let (popped, idx, healthy) =
                fuzzer().run_ops_then(&setup, &ops[..=end], |devices, _| {
                    let dev = devices.lock();
                    let idx: u16 = devices.memory.read_obj(GuestAddress(0x2002)).unwrap();
                    let healthy = dev.is_active() && dev.status() & STATUS_NEEDS_RESET == 0;
                    (popped(&dev), idx, healthy)
                });
            assert!(healthy);
            if let Some(before) = last {
                taken.push((popped - before, idx));
            }
            last = Some(popped);
        }
        assert_eq!(taken, [(1, 18), (1, 19), (1, 20)]);
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
        seed_files::write("virtio_blk", &seed_files::named(&all_seeds()));
    }
}
