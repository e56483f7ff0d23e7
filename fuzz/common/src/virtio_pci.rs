//! Fuzz surface `virtio_pci`: arbitrary accesses to the register file of a virtio-pci
//! transport (BAR 0 at any offset and size, configuration space including the MSI-X and
//! PCI-configuration-access capabilities), mixed with whole driver initialisations, guest
//! memory writes, notifications and failing interrupt lines, on a virtio-blk device.
//!
//! Checked after every operation: nothing panics; the status register only holds states the
//! state machine allows (`DRIVER_OK` implies `FEATURES_OK` implies `DRIVER` implies
//! `ACKNOWLEDGE`; accepted features are offered and include `VERSION_1`; a live device has
//! `DRIVER_OK`); a status write of 0 resets everything; the queue-size register holds a power
//! of two no larger than the maximum; an asserted INTx# line shows in the PCI status register
//! and is never asserted while INTx# is disabled; the block device's counters add up.

use std::sync::Arc;

use arbitrary::{Arbitrary, Unstructured};
use vmkit_devices::pci::{COMMAND, COMMAND_INTX_DISABLE, MutPciDevice, STATUS, STATUS_INTERRUPT};
use vmkit_devices::virtio::block::QUEUE_SIZE;
use vmkit_devices::virtio::driver::{self, Bar0, QueueConfig};
use vmkit_devices::virtio::{
    BAR_SIZE, F_VERSION_1, MsiRecorder, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK,
    STATUS_FEATURES_OK, TRANSPORT_FEATURES, VirtioDevice, VirtioPciInterrupts, common_cfg,
};
use vmkit_devices::{CountingTrigger, MemDisk, VirtioBlock, VirtioPciDevice};
use vmkit_memory::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Most operations taken from one input.
pub const MAX_OPS: usize = 256;
/// Bytes of guest memory.
pub const MEMORY_SIZE: u64 = 0x1_0000;

/// Natural-width common-configuration fields: (offset, width).
pub const COMMON_FIELDS: [(u64, u8); 17] = [
    (common_cfg::DEVICE_FEATURE_SELECT, 4),
    (common_cfg::DEVICE_FEATURE, 4),
    (common_cfg::DRIVER_FEATURE_SELECT, 4),
    (common_cfg::DRIVER_FEATURE, 4),
    (common_cfg::MSIX_CONFIG, 2),
    (common_cfg::NUM_QUEUES, 2),
    (common_cfg::DEVICE_STATUS, 1),
    (common_cfg::CONFIG_GENERATION, 1),
    (common_cfg::QUEUE_SELECT, 2),
    (common_cfg::QUEUE_SIZE, 2),
    (common_cfg::QUEUE_MSIX_VECTOR, 2),
    (common_cfg::QUEUE_ENABLE, 2),
    (common_cfg::QUEUE_NOTIFY_OFF, 2),
    (common_cfg::QUEUE_DESC, 8),
    (common_cfg::QUEUE_DRIVER, 8),
    (common_cfg::QUEUE_DEVICE, 8),
    // The high half of `queue_desc` alone.
    (common_cfg::QUEUE_DESC + 4, 4),
];

/// One step of a fuzz input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A BAR 0 read of `size` (0..=8) bytes at `offset` (modulo the BAR size).
    Read {
        /// Offset.
        offset: u16,
        /// Size.
        size: u8,
    },
    /// A BAR 0 write.
    Write {
        /// Offset (modulo the BAR size).
        offset: u16,
        /// Bytes (0..=8).
        data: Vec<u8>,
    },
    /// A write of common-configuration field `field` (index into [`COMMON_FIELDS`]) at its
    /// natural width.
    Common {
        /// Field index (modulo the table).
        field: u8,
        /// Value (truncated to the width).
        value: u64,
    },
    /// A configuration-space read inside one dword.
    ConfigRead {
        /// Offset.
        offset: u8,
        /// Size (1..=4, clipped to the dword).
        size: u8,
    },
    /// A configuration-space write inside one dword.
    ConfigWrite {
        /// Offset.
        offset: u8,
        /// Bytes (1..=4, clipped to the dword).
        data: Vec<u8>,
    },
    /// Notify queue `queue`.
    Notify {
        /// The queue index written to its notification address.
        queue: u8,
    },
    /// A whole driver initialisation: reset, features, queue 0 at `ring` pages, `DRIVER_OK`.
    Init {
        /// Driver features (ORed with `VERSION_1` when `version_1`).
        features: u64,
        /// Whether to accept `VERSION_1`.
        version_1: bool,
        /// log2 of the queue size.
        size_log: u8,
        /// Page of the descriptor table; avail and used follow.
        ring: u8,
    },
    /// Guest memory bytes at `addr` (modulo the memory size).
    Memory {
        /// Address.
        addr: u16,
        /// Bytes (0..=32).
        data: Vec<u8>,
    },
    /// The interrupt lines start (`true`) or stop failing.
    FailInterrupts(bool),
}

const OP_KINDS: u8 = 9;

fn bytes(u: &mut Unstructured<'_>, max: u8) -> arbitrary::Result<Vec<u8>> {
    let len = u8::arbitrary(u)? % (max + 1);
    Ok(u.bytes(usize::from(len))?.to_vec())
}

impl Op {
    fn read(u: &mut Unstructured<'_>) -> arbitrary::Result<Self> {
        Ok(match u8::arbitrary(u)? % OP_KINDS {
            0 => Op::Read {
                offset: u16::arbitrary(u)?,
                size: u8::arbitrary(u)? % 9,
            },
            1 => Op::Write {
                offset: u16::arbitrary(u)?,
                data: bytes(u, 8)?,
            },
            2 => Op::Common {
                field: u8::arbitrary(u)?,
                value: u64::arbitrary(u)?,
            },
            3 => Op::ConfigRead {
                offset: u8::arbitrary(u)?,
                size: u8::arbitrary(u)?,
            },
            4 => Op::ConfigWrite {
                offset: u8::arbitrary(u)?,
                data: bytes(u, 4)?,
            },
            5 => Op::Notify {
                queue: u8::arbitrary(u)?,
            },
            6 => Op::Init {
                features: u64::arbitrary(u)?,
                version_1: bool::arbitrary(u)?,
                size_log: u8::arbitrary(u)?,
                ring: u8::arbitrary(u)?,
            },
            7 => Op::Memory {
                addr: u16::arbitrary(u)?,
                data: bytes(u, 32)?,
            },
            _ => Op::FailInterrupts(bool::arbitrary(u)?),
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let bytes = |out: &mut Vec<u8>, data: &[u8]| {
            out.push(data.len() as u8);
            out.extend_from_slice(data);
        };
        match self {
            Op::Read { offset, size } => {
                out.push(0);
                out.extend_from_slice(&offset.to_le_bytes());
                out.push(*size);
            }
            Op::Write { offset, data } => {
                out.push(1);
                out.extend_from_slice(&offset.to_le_bytes());
                bytes(out, data);
            }
            Op::Common { field, value } => {
                out.extend_from_slice(&[2, *field]);
                out.extend_from_slice(&value.to_le_bytes());
            }
            Op::ConfigRead { offset, size } => out.extend_from_slice(&[3, *offset, *size]),
            Op::ConfigWrite { offset, data } => {
                out.extend_from_slice(&[4, *offset]);
                bytes(out, data);
            }
            Op::Notify { queue } => out.extend_from_slice(&[5, *queue]),
            Op::Init {
                features,
                version_1,
                size_log,
                ring,
            } => {
                out.push(6);
                out.extend_from_slice(&features.to_le_bytes());
                out.extend_from_slice(&[u8::from(*version_1), *size_log, *ring]);
            }
            Op::Memory { addr, data } => {
                out.push(7);
                out.extend_from_slice(&addr.to_le_bytes());
                bytes(out, data);
            }
            Op::FailInterrupts(fail) => out.extend_from_slice(&[8, u8::from(*fail)]),
        }
    }
}

/// The operations an input decodes to (at most [`MAX_OPS`]).
pub fn parse(data: &[u8]) -> Vec<Op> {
    crate::ops::decode(&mut Unstructured::new(data), MAX_OPS, Op::read)
}

/// The bytes that decode to `ops`.
pub fn encode(ops: &[Op]) -> Vec<u8> {
    crate::ops::encode(ops, Op::encode)
}

struct Harness {
    dev: VirtioPciDevice<VirtioBlock<MemDisk>>,
    memory: GuestMemoryMmap,
    intx: Arc<CountingTrigger>,
    msi: Arc<MsiRecorder>,
    failed: bool,
}

impl Harness {
    fn new() -> Self {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY_SIZE as usize)])
            .expect("64 KiB of guest memory");
        let intx = Arc::new(CountingTrigger::new());
        let msi = Arc::new(MsiRecorder::new());
        let dev = VirtioPciDevice::new(
            VirtioBlock::new(MemDisk::new(vec![0; 16 << 10], false)),
            memory.clone(),
            VirtioPciInterrupts {
                intx: Some(intx.clone()),
                intx_line: 16,
                msi: Some(msi.clone()),
            },
        )
        .expect("virtio-blk fits the transport");
        Self {
            dev,
            memory,
            intx,
            msi,
            failed: false,
        }
    }

    fn read(&mut self, offset: u64, size: usize) -> u64 {
        let mut data = [0u8; 8];
        self.dev.bar_read(0, offset % BAR_SIZE, &mut data[..size]);
        u64::from_le_bytes(data)
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.dev.bar_write(0, offset % BAR_SIZE, data);
    }

    fn init(&mut self, features: u64, size_log: u8, ring: u8) {
        let page = |n: u64| (u64::from(ring) + n) * 0x1000 % MEMORY_SIZE;
        driver::reset(&mut self.dev);
        assert_eq!(
            self.dev.r8(common_cfg::DEVICE_STATUS),
            0,
            "reset completes at once"
        );
        assert!(!self.dev.is_active());
        let status = driver::negotiate(&mut self.dev, features);
        let offered = self.dev.device().features() | TRANSPORT_FEATURES;
        let acceptable = features & !offered == 0 && features & F_VERSION_1 != 0;
        assert_eq!(
            status & STATUS_FEATURES_OK != 0,
            acceptable,
            "{features:#x}"
        );
        // Queue set-up and DRIVER_OK follow even when the features were refused.
        let queue = QueueConfig {
            size: 1u16 << (size_log % 16),
            desc: page(0),
            driver: page(1),
            device: page(2),
            msix_vector: Some(1),
        };
        driver::setup_queue(&mut self.dev, 0, &queue);
        driver::driver_ok(&mut self.dev, status);
    }

    fn check(&mut self) {
        let status = self.dev.status();
        let implies = |a: u8, b: u8| status & a == 0 || status & b != 0;
        assert!(implies(STATUS_DRIVER_OK, STATUS_FEATURES_OK), "{status:#x}");
        assert!(implies(STATUS_FEATURES_OK, STATUS_DRIVER), "{status:#x}");
        assert!(implies(STATUS_DRIVER, STATUS_ACKNOWLEDGE), "{status:#x}");
        if status & STATUS_FEATURES_OK != 0 {
            let acked = self.dev.acked_features();
            let offered = self.dev.device().features() | TRANSPORT_FEATURES;
            assert_eq!(acked & !offered, 0);
            assert_ne!(acked & F_VERSION_1, 0);
        }
        if self.dev.is_active() {
            assert_ne!(status & STATUS_DRIVER_OK, 0);
        }
        // Queue-size register of the selected queue: a valid size, or 0 for none.
        let size = self.read(common_cfg::QUEUE_SIZE, 2) as u16;
        assert!(
            size == 0 || (size.is_power_of_two() && size <= QUEUE_SIZE),
            "{size}"
        );
        assert_eq!(self.read(common_cfg::NUM_QUEUES, 2), 1, "one queue");
        // INTx# as the guest sees it.
        if !self.failed && self.intx.is_asserted() {
            let mut s = [0u8; 2];
            self.dev.config_read(STATUS as u8, &mut s);
            assert_ne!(
                u16::from_le_bytes(s) & STATUS_INTERRUPT,
                0,
                "asserted but not pending"
            );
            let command = self.dev.config_space().command();
            assert_eq!(command & COMMAND_INTX_DISABLE, 0, "asserted while disabled");
        }
        let s = self.dev.device().stats();
        assert_eq!(
            s.requests,
            s.reads + s.writes + s.flushes + s.get_ids + s.unsupported + s.errors
        );
    }
}

fn apply(h: &mut Harness, op: Op) {
    match op {
        Op::Read { offset, size } => {
            h.read(u64::from(offset), usize::from(size));
        }
        Op::Write { offset, data } => {
            let status_write =
                u64::from(offset) % BAR_SIZE == common_cfg::DEVICE_STATUS && data == [0];
            h.write(u64::from(offset), &data);
            if status_write {
                assert_eq!(h.dev.status(), 0);
                assert!(!h.dev.is_active());
            }
        }
        Op::Common { field, value } => {
            let (offset, width) = COMMON_FIELDS[usize::from(field) % COMMON_FIELDS.len()];
            h.write(offset, &value.to_le_bytes()[..usize::from(width)]);
        }
        Op::ConfigRead { offset, size } => {
            let size = (usize::from(size) % 4 + 1).min(4 - usize::from(offset) % 4);
            let mut data = [0u8; 4];
            h.dev.config_read(offset, &mut data[..size]);
        }
        Op::ConfigWrite { offset, data } => {
            let size = data.len().min(4 - usize::from(offset) % 4);
            h.dev.config_write(offset, &data[..size]);
            let offset = usize::from(offset);
            if offset <= COMMAND + 1 && offset + size > COMMAND && !h.failed && h.intx.is_asserted()
            {
                assert_eq!(h.dev.config_space().command() & COMMAND_INTX_DISABLE, 0);
            }
        }
        Op::Notify { queue } => driver::notify(&mut h.dev, u16::from(queue)),
        Op::Init {
            features,
            version_1,
            size_log,
            ring,
        } => {
            let features = if version_1 {
                features | F_VERSION_1
            } else {
                features & !F_VERSION_1
            };
            h.init(features, size_log, ring);
        }
        Op::Memory { addr, data } => {
            let addr = u64::from(addr) % MEMORY_SIZE;
            let end = (addr + data.len() as u64).min(MEMORY_SIZE);
            let n = (end - addr) as usize;
            let _ = h.memory.write_slice(&data[..n], GuestAddress(addr));
        }
        Op::FailInterrupts(fail) => {
            h.failed |= fail;
            h.intx.set_failing(fail);
            h.msi.set_failing(fail);
        }
    }
}

/// Target body.
pub fn run(data: &[u8]) {
    let mut h = Harness::new();
    for op in parse(data) {
        apply(&mut h, op);
        h.check();
    }
}

/// Named seed inputs: small, meaningful scenarios.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let common = |field: u8, value: u64| Op::Common { field, value };
    let header = |addr: u16, kind: u32| {
        let mut data = kind.to_le_bytes().to_vec();
        data.extend_from_slice(&[0; 12]);
        Op::Memory { addr, data }
    };
    // A read request in guest memory: descriptors at page 1, header at 0x8000.
    let desc = |index: u16, addr: u64, len: u32, flags: u16, next: u16| {
        let mut data = addr.to_le_bytes().to_vec();
        data.extend_from_slice(&len.to_le_bytes());
        data.extend_from_slice(&flags.to_le_bytes());
        data.extend_from_slice(&next.to_le_bytes());
        Op::Memory {
            addr: 0x1000 + 16 * index,
            data,
        }
    };
    let publish = Op::Memory {
        addr: 0x2000,
        data: vec![0, 0, 1, 0, 0, 0],
    };
    let init = |features: u64| Op::Init {
        features,
        version_1: true,
        size_log: 4,
        ring: 1,
    };
    let scenarios: Vec<(&'static str, Vec<Op>)> = vec![
        (
            "firmware_read",
            vec![
                init(0),
                header(0x8000, 0),
                desc(0, 0x8000, 16, 1, 1),
                desc(1, 0x9000, 512, 3, 2),
                desc(2, 0xA000, 1, 2, 0),
                publish.clone(),
                Op::Notify { queue: 0 },
                Op::Read {
                    offset: 0x1000,
                    size: 1,
                },
            ],
        ),
        (
            "linux_msix",
            vec![
                Op::ConfigWrite {
                    offset: 0x42,
                    data: vec![0, 0x80],
                },
                Op::Write {
                    offset: 0x4010,
                    data: 0xFEE0_0000u64.to_le_bytes().to_vec(),
                },
                Op::Write {
                    offset: 0x4018,
                    data: vec![0x41, 0, 0, 0],
                },
                Op::Write {
                    offset: 0x401C,
                    data: vec![0, 0, 0, 0],
                },
                init(F_VERSION_1 | (1 << 29) | (1 << 28) | (1 << 9)),
                header(0x8000, 8),
                desc(0, 0x8000, 16, 1, 1),
                desc(1, 0x9000, 20, 3, 2),
                desc(2, 0xA000, 1, 2, 0),
                publish.clone(),
                Op::Notify { queue: 0 },
                Op::Read {
                    offset: 0x6000,
                    size: 8,
                },
            ],
        ),
        (
            "status_machine",
            vec![
                common(6, 2),
                common(6, 1),
                common(6, 3),
                common(2, 1),
                common(3, 0xFFFF_FFFF),
                common(6, 0xB),
                common(6, 0),
                Op::Init {
                    features: 0,
                    version_1: false,
                    size_log: 3,
                    ring: 2,
                },
                common(6, 0xF),
            ],
        ),
        (
            "queue_registers",
            vec![
                common(8, 0),
                common(9, 3),
                common(9, 512),
                common(9, 8),
                common(13, 0x1000),
                common(16, 1),
                common(14, 0x2001),
                common(11, 1),
                common(9, 4),
                common(8, 7),
                Op::Read {
                    offset: 0x18,
                    size: 2,
                },
            ],
        ),
        (
            "pci_cfg_window",
            vec![
                // The PCI configuration access capability is the last one, at 0x90.
                Op::ConfigWrite {
                    offset: 0x94,
                    data: vec![0],
                },
                Op::ConfigWrite {
                    offset: 0x98,
                    data: vec![0x12, 0, 0, 0],
                },
                Op::ConfigWrite {
                    offset: 0x9C,
                    data: vec![2, 0, 0, 0],
                },
                Op::ConfigRead {
                    offset: 0xA0,
                    size: 3,
                },
                Op::ConfigWrite {
                    offset: 0x98,
                    data: vec![0x14, 0, 0, 0],
                },
                Op::ConfigWrite {
                    offset: 0x9C,
                    data: vec![1, 0, 0, 0],
                },
                Op::ConfigWrite {
                    offset: 0xA0,
                    data: vec![1],
                },
            ],
        ),
        (
            "intx_and_isr",
            vec![
                init(0),
                header(0x8000, 4),
                desc(0, 0x8000, 16, 1, 1),
                desc(1, 0xA000, 1, 2, 0),
                publish,
                Op::Notify { queue: 0 },
                Op::ConfigRead { offset: 6, size: 1 },
                Op::ConfigWrite {
                    offset: 5,
                    data: vec![4],
                },
                Op::ConfigWrite {
                    offset: 5,
                    data: vec![0],
                },
                Op::FailInterrupts(true),
                Op::Read {
                    offset: 0x1000,
                    size: 4,
                },
                Op::FailInterrupts(false),
            ],
        ),
    ];
    scenarios
        .into_iter()
        .map(|(name, ops)| (name, encode(&ops)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed_files;

    #[test]
    fn seeds_round_trip_and_pass() {
        for (name, bytes) in seeds() {
            assert_eq!(encode(&parse(&bytes)), bytes, "{name}");
            run(&bytes);
        }
    }

    #[test]
    fn the_firmware_seed_completes_its_read() {
        let (name, bytes) = seeds().remove(0);
        assert_eq!(name, "firmware_read");
        let mut h = Harness::new();
        for op in parse(&bytes) {
            apply(&mut h, op);
        }
        assert!(h.dev.is_active());
        let used: u16 = h.memory.read_obj(GuestAddress(0x3002)).unwrap();
        let status: u8 = h.memory.read_obj(GuestAddress(0xA000)).unwrap();
        assert_eq!((used, status), (1, 0));
        assert_eq!(h.intx.asserts(), 1);
    }

    #[test]
    fn committed_seeds_replay() {
        seed_files::replay("virtio_pci", &seeds(), true, run);
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        run(&[]);
        run(&[0xFF; 64]);
        run(&(0..=255).collect::<Vec<u8>>());
        for tag in 0..=255u8 {
            run(&[tag, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        }
    }

    /// Writes the seed files; run with `cargo test -- --ignored write_seeds`.
    #[test]
    #[ignore]
    fn write_seeds() {
        seed_files::write("virtio_pci", &seeds());
    }
}
