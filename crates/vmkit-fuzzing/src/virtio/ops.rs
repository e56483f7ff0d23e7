//! The operations of a virtio driver simulation, and their byte format.
//!
//! As in [`crate::ops`]: each operation is a tag byte and then fields of one byte or
//! little-endian integers; every byte string decodes (an operation cut short ends the
//! sequence), and [`encode`] writes the bytes that decode to exactly the given operations, so
//! seeds are written as operations. [`encode`] writes one tag per kind of operation; the other
//! tag bytes, the ones a fuzzer makes up, favour chains and notifications.

use arbitrary::Unstructured;

use crate::ops::{byte, decode_with, le_bytes};

/// Most operations taken from one input.
pub const MAX_OPS: usize = 256;
/// The most request bytes a [`Chain`] carries (the fixture turns them into buffers).
pub const MAX_PAYLOAD: usize = 64;
/// The most bytes a register write, a memory write or an operation of the fixture's own
/// carries.
pub const MAX_DATA: usize = 64;

/// Where the driver puts one of a queue's structures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// The simulator's own place for it: every queue's structures apart, before the buffers.
    Auto,
    /// This offset into the first memory region: anywhere, over other structures or buffers.
    Ram(u16),
    /// Any guest address: misaligned, in a hole, past the end of memory.
    Raw(u64),
}

impl Place {
    fn read(u: &mut Unstructured<'_>) -> arbitrary::Result<Self> {
        Ok(match byte(u)? % 3 {
            0 => Place::Auto,
            1 => Place::Ram(u16::from_le_bytes(le_bytes(u)?)),
            _ => Place::Raw(u64::from_le_bytes(le_bytes(u)?)),
        })
    }

    fn encode(self, out: &mut Vec<u8>) {
        match self {
            Place::Auto => out.push(0),
            Place::Ram(offset) => {
                out.push(1);
                out.extend_from_slice(&offset.to_le_bytes());
            }
            Place::Raw(addr) => {
                out.push(2);
                out.extend_from_slice(&addr.to_le_bytes());
            }
        }
    }
}

/// How a chain's descriptors are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// Descriptors of the ring's table linked by `next`.
    Direct,
    /// One descriptor of the ring pointing at an indirect table that holds them all.
    Indirect,
    /// The first buffer in a descriptor of the ring, linked to an indirect descriptor whose
    /// table holds the rest.
    Chained,
    /// An indirect table whose last entry is itself an indirect descriptor holding the last
    /// buffer: indirect inside indirect, which the specification forbids the driver.
    Nested,
}

/// What is wrong with a chain on purpose. `n` picks the buffer or the amount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flaw {
    /// Nothing: a well-formed chain.
    None,
    /// The last descriptor links back to the first: a loop.
    Loop,
    /// The last descriptor links to an index `n` past the end of its table.
    NextOutOfRange(u8),
    /// The published head is `n` past the end of the descriptor table (nothing is written).
    HeadOutOfRange(u8),
    /// Every buffer lies at the first one's address.
    Overlapping,
    /// Buffer `n` (modulo their number) lies over the queue's descriptor table, available ring
    /// or used ring (`n / 16 % 3`).
    OverRings(u8),
    /// Buffer `n` (modulo their number) has length 0.
    ZeroLength(u8),
    /// Buffer `n` (modulo their number) has length `u32::MAX - n`.
    HugeLength(u8),
}

impl Flaw {
    fn read(u: &mut Unstructured<'_>) -> arbitrary::Result<Self> {
        let kind = byte(u)?;
        let n = byte(u)?;
        Ok(match kind % 8 {
            0 => Flaw::None,
            1 => Flaw::Loop,
            2 => Flaw::NextOutOfRange(n),
            3 => Flaw::HeadOutOfRange(n),
            4 => Flaw::Overlapping,
            5 => Flaw::OverRings(n),
            6 => Flaw::ZeroLength(n),
            _ => Flaw::HugeLength(n),
        })
    }

    fn encode(self, out: &mut Vec<u8>) {
        let (kind, n) = match self {
            Flaw::None => (0, 0),
            Flaw::Loop => (1, 0),
            Flaw::NextOutOfRange(n) => (2, n),
            Flaw::HeadOutOfRange(n) => (3, n),
            Flaw::Overlapping => (4, 0),
            Flaw::OverRings(n) => (5, n),
            Flaw::ZeroLength(n) => (6, n),
            Flaw::HugeLength(n) => (7, n),
        };
        out.extend_from_slice(&[kind, n]);
    }
}

/// A descriptor chain built from structure and published to a queue's available ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// The queue (an index the device may not have).
    pub queue: u8,
    /// The layout of the descriptors.
    pub form: Form,
    /// Split the first buffer in two descriptors (a header written in two parts).
    pub split: bool,
    /// Merge neighbouring device-writable buffers into one descriptor (data and status in one).
    pub merge: bool,
    /// What is wrong with it on purpose.
    pub flaw: Flaw,
    /// The request bytes (0 to [`MAX_PAYLOAD`]) the fixture turns into the chain's buffers.
    pub payload: Vec<u8>,
}

impl Chain {
    /// A well-formed chain of direct descriptors on `queue`, for `payload`.
    pub fn direct(queue: u8, payload: &[u8]) -> Self {
        Chain {
            queue,
            form: Form::Direct,
            split: false,
            merge: false,
            flaw: Flaw::None,
            payload: payload.to_vec(),
        }
    }

    fn read(u: &mut Unstructured<'_>) -> arbitrary::Result<Self> {
        let queue = byte(u)?;
        let layout = byte(u)?;
        let flaw = Flaw::read(u)?;
        let payload = bytes(u, MAX_PAYLOAD)?;
        Ok(Chain {
            queue,
            form: match layout % 4 {
                0 => Form::Direct,
                1 => Form::Indirect,
                2 => Form::Chained,
                _ => Form::Nested,
            },
            split: layout & 4 != 0,
            merge: layout & 8 != 0,
            flaw,
            payload,
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let form = match self.form {
            Form::Direct => 0,
            Form::Indirect => 1,
            Form::Chained => 2,
            Form::Nested => 3,
        };
        out.push(self.queue);
        out.push(form | u8::from(self.split) << 2 | u8::from(self.merge) << 3);
        self.flaw.encode(out);
        put_bytes(out, &self.payload, MAX_PAYLOAD);
    }
}

/// A queue's set-up, as a driver programs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueSetup {
    /// The queue (an index the device may not have).
    pub queue: u8,
    /// The size written (0 keeps the device's maximum; any other value is written as it is).
    pub size: u16,
    /// The descriptor table.
    pub desc: Place,
    /// The available (driver) ring.
    pub avail: Place,
    /// The used (device) ring.
    pub used: Place,
    /// The MSI-X vector written, if any.
    pub vector: Option<u16>,
    /// Whether the queue is enabled at the end.
    pub enable: bool,
}

impl QueueSetup {
    /// Queue `queue` at the simulator's places, of the device's maximum size, enabled, with no
    /// vector: what an honest driver does.
    pub fn honest(queue: u8) -> Self {
        QueueSetup {
            queue,
            size: 0,
            desc: Place::Auto,
            avail: Place::Auto,
            used: Place::Auto,
            vector: None,
            enable: true,
        }
    }
}

/// One of the structures a virtio-pci device describes with a capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Structure {
    /// The common configuration.
    Common,
    /// The ISR status byte.
    Isr,
    /// The device-specific configuration.
    Device,
    /// The notification area.
    Notify,
    /// BAR `n` (modulo 6) itself, at any offset.
    Bar(u8),
}

impl Structure {
    fn read(u: &mut Unstructured<'_>) -> arbitrary::Result<Self> {
        let n = byte(u)?;
        Ok(match n % 8 {
            0 => Structure::Common,
            1 => Structure::Isr,
            2 => Structure::Device,
            3 => Structure::Notify,
            _ => Structure::Bar(n / 8),
        })
    }

    fn encode(self, out: &mut Vec<u8>) {
        out.push(match self {
            Structure::Common => 0,
            Structure::Isr => 1,
            Structure::Device => 2,
            Structure::Notify => 3,
            Structure::Bar(n) => 4 + (n % 6) * 8,
        });
    }
}

/// One step of a driver simulation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VirtioOp {
    /// Writes the status register as it is: out-of-order negotiation, bits cleared, 0 (a reset).
    Status(u8),
    /// An honest negotiation: reset, `ACKNOWLEDGE`, `DRIVER`, the offered features masked with
    /// `mask` written to both windows, `FEATURES_OK`, the status read back.
    Negotiate {
        /// The features the driver would take, of those offered.
        mask: u64,
    },
    /// Writes `value` to the driver-feature window `select` (any time, any window).
    Features {
        /// The window.
        select: u8,
        /// The bits.
        value: u32,
    },
    /// Programs a queue.
    Queue(QueueSetup),
    /// Adds `DRIVER_OK` to the status the device reports.
    DriverOk,
    /// Builds a chain and publishes it.
    Chain(Chain),
    /// Writes `queue` to queue `queue`'s notification address.
    Notify(u16),
    /// Resets the device (status 0) whatever is in flight, and checks it reads as reset.
    Reset,
    /// Writes common-configuration field `field` (an index into [`COMMON_FIELDS`], modulo its
    /// length) at its natural width.
    Common {
        /// The field.
        field: u8,
        /// The value, truncated to the width.
        value: u64,
    },
    /// Reads `size` (0 to 8) bytes at `offset` of a structure (modulo its length) or a BAR.
    Read {
        /// Where.
        at: Structure,
        /// The offset.
        offset: u16,
        /// The size.
        size: u8,
    },
    /// Writes `data` (0 to 8 bytes) at `offset` of a structure (modulo its length) or a BAR.
    Write {
        /// Where.
        at: Structure,
        /// The offset.
        offset: u16,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Reads `size` bytes (1 to 4, inside one dword) of configuration space.
    ConfigRead {
        /// The offset.
        offset: u8,
        /// The size.
        size: u8,
    },
    /// Writes configuration space (1 to 4 bytes, clipped to the dword).
    ConfigWrite {
        /// The offset.
        offset: u8,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Programs MSI-X table entry `entry` (found through the MSI-X capability).
    Msix {
        /// The entry (modulo the table size).
        entry: u16,
        /// The message address.
        address: u64,
        /// The message data.
        data: u32,
        /// Whether the entry is masked.
        masked: bool,
    },
    /// Sets the interrupt mode: MSI-X enabled (bit 0), its function mask (bit 1), INTx#
    /// disabled in the command register (bit 2).
    Interrupts(u8),
    /// The driver writes guest memory: `data` at `offset` of one of queue `queue`'s structures
    /// (`area` 0 descriptor table, 1 available ring, 2 used ring) or of the first region (3).
    Memory {
        /// The queue.
        queue: u8,
        /// The area.
        area: u8,
        /// The offset into it.
        offset: u16,
        /// The bytes (0 to [`MAX_DATA`]).
        data: Vec<u8>,
    },
    /// The interrupt lines and MSI start (`true`) or stop failing.
    FailInterrupts(bool),
    /// An operation of the fixture's own (a failing disk, a received packet).
    User {
        /// The fixture's operation code.
        tag: u8,
        /// Its bytes (0 to [`MAX_DATA`]).
        data: Vec<u8>,
    },
    /// The driver resets the device and brings it up again with the fixture's prologue
    /// ([`VirtioFixture::prologue`](super::VirtioFixture::prologue)).
    Restart,
}

/// The natural-width fields of the common configuration (virtio 1.x, 4.1.4.3): offset, width.
pub const COMMON_FIELDS: [(u64, u8); 17] = [
    (0x00, 4), // device_feature_select
    (0x04, 4), // device_feature
    (0x08, 4), // driver_feature_select
    (0x0C, 4), // driver_feature
    (0x10, 2), // config_msix_vector
    (0x12, 2), // num_queues
    (0x14, 1), // device_status
    (0x15, 1), // config_generation
    (0x16, 2), // queue_select
    (0x18, 2), // queue_size
    (0x1A, 2), // queue_msix_vector
    (0x1C, 2), // queue_enable
    (0x1E, 2), // queue_notify_off
    (0x20, 8), // queue_desc
    (0x28, 8), // queue_driver
    (0x30, 8), // queue_device
    (0x24, 4), // the high half of queue_desc alone
];

/// The kinds of operation, in [`VirtioOp`]'s order.
const OP_KINDS: u8 = 19;

/// The kind each other tag byte stands for, by `(tag - OP_KINDS) % 32`: chains and
/// notifications most, then negotiation and queue set-up, register accesses, the rest.
const KIND_OF_TAG: [u8; 32] = [
    5, 6, 5, 6, 5, 1, 3, 4, 5, 6, 9, 10, 8, 11, 12, 5, 6, 7, 0, 2, 13, 14, 15, 16, 17, 5, 6, 9, 10,
    3, 1, 17,
];

fn kind(tag: u8) -> u8 {
    match tag.checked_sub(OP_KINDS) {
        None => tag,
        Some(other) => KIND_OF_TAG[usize::from(other % 32)],
    }
}

fn bytes(u: &mut Unstructured<'_>, max: usize) -> arbitrary::Result<Vec<u8>> {
    let len = usize::from(byte(u)?) % (max + 1);
    Ok(u.bytes(len)?.to_vec())
}

fn put_bytes(out: &mut Vec<u8>, data: &[u8], max: usize) {
    let data = &data[..data.len().min(max)];
    out.push(data.len() as u8);
    out.extend_from_slice(data);
}

impl VirtioOp {
    /// Reads one operation.
    pub fn read(u: &mut Unstructured<'_>) -> arbitrary::Result<Self> {
        Ok(match kind(byte(u)?) {
            0 => VirtioOp::Status(byte(u)?),
            1 => VirtioOp::Negotiate {
                mask: u64::from_le_bytes(le_bytes(u)?),
            },
            2 => VirtioOp::Features {
                select: byte(u)?,
                value: u32::from_le_bytes(le_bytes(u)?),
            },
            3 => {
                let queue = byte(u)?;
                let size = u16::from_le_bytes(le_bytes(u)?);
                let desc = Place::read(u)?;
                let avail = Place::read(u)?;
                let used = Place::read(u)?;
                let flags = byte(u)?;
                let vector = u16::from_le_bytes(le_bytes(u)?);
                VirtioOp::Queue(QueueSetup {
                    queue,
                    size,
                    desc,
                    avail,
                    used,
                    vector: (flags & 2 != 0).then_some(vector),
                    enable: flags & 1 != 0,
                })
            }
            4 => VirtioOp::DriverOk,
            5 => VirtioOp::Chain(Chain::read(u)?),
            6 => VirtioOp::Notify(u16::from(byte(u)?)),
            7 => VirtioOp::Reset,
            8 => VirtioOp::Common {
                field: byte(u)?,
                value: u64::from_le_bytes(le_bytes(u)?),
            },
            9 => VirtioOp::Read {
                at: Structure::read(u)?,
                offset: u16::from_le_bytes(le_bytes(u)?),
                size: byte(u)? % 9,
            },
            10 => VirtioOp::Write {
                at: Structure::read(u)?,
                offset: u16::from_le_bytes(le_bytes(u)?),
                data: bytes(u, 8)?,
            },
            11 => VirtioOp::ConfigRead {
                offset: byte(u)?,
                size: byte(u)?,
            },
            12 => VirtioOp::ConfigWrite {
                offset: byte(u)?,
                data: bytes(u, 4)?,
            },
            13 => VirtioOp::Msix {
                entry: u16::from_le_bytes(le_bytes(u)?),
                address: u64::from_le_bytes(le_bytes(u)?),
                data: u32::from_le_bytes(le_bytes(u)?),
                masked: byte(u)? & 1 != 0,
            },
            14 => VirtioOp::Interrupts(byte(u)?),
            15 => VirtioOp::Memory {
                queue: byte(u)?,
                area: byte(u)? % 4,
                offset: u16::from_le_bytes(le_bytes(u)?),
                data: bytes(u, MAX_DATA)?,
            },
            16 => VirtioOp::FailInterrupts(byte(u)? & 1 != 0),
            18 => VirtioOp::Restart,
            _ => VirtioOp::User {
                tag: byte(u)?,
                data: bytes(u, MAX_DATA)?,
            },
        })
    }

    /// Appends the bytes that [`VirtioOp::read`] reads back as this operation (fields wider
    /// than the format holds are clamped; a notification's queue is truncated to 8 bits).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            VirtioOp::Status(value) => out.extend_from_slice(&[0, *value]),
            VirtioOp::Negotiate { mask } => {
                out.push(1);
                out.extend_from_slice(&mask.to_le_bytes());
            }
            VirtioOp::Features { select, value } => {
                out.extend_from_slice(&[2, *select]);
                out.extend_from_slice(&value.to_le_bytes());
            }
            VirtioOp::Queue(q) => {
                out.extend_from_slice(&[3, q.queue]);
                out.extend_from_slice(&q.size.to_le_bytes());
                q.desc.encode(out);
                q.avail.encode(out);
                q.used.encode(out);
                out.push(u8::from(q.enable) | u8::from(q.vector.is_some()) << 1);
                out.extend_from_slice(&q.vector.unwrap_or(0).to_le_bytes());
            }
            VirtioOp::DriverOk => out.push(4),
            VirtioOp::Chain(chain) => {
                out.push(5);
                chain.encode(out);
            }
            VirtioOp::Notify(queue) => out.extend_from_slice(&[6, *queue as u8]),
            VirtioOp::Reset => out.push(7),
            VirtioOp::Common { field, value } => {
                out.extend_from_slice(&[8, *field]);
                out.extend_from_slice(&value.to_le_bytes());
            }
            VirtioOp::Read { at, offset, size } => {
                out.push(9);
                at.encode(out);
                out.extend_from_slice(&offset.to_le_bytes());
                out.push(*size.min(&8));
            }
            VirtioOp::Write { at, offset, data } => {
                out.push(10);
                at.encode(out);
                out.extend_from_slice(&offset.to_le_bytes());
                put_bytes(out, data, 8);
            }
            VirtioOp::ConfigRead { offset, size } => out.extend_from_slice(&[11, *offset, *size]),
            VirtioOp::ConfigWrite { offset, data } => {
                out.extend_from_slice(&[12, *offset]);
                put_bytes(out, data, 4);
            }
            VirtioOp::Msix {
                entry,
                address,
                data,
                masked,
            } => {
                out.push(13);
                out.extend_from_slice(&entry.to_le_bytes());
                out.extend_from_slice(&address.to_le_bytes());
                out.extend_from_slice(&data.to_le_bytes());
                out.push(u8::from(*masked));
            }
            VirtioOp::Interrupts(mode) => out.extend_from_slice(&[14, *mode]),
            VirtioOp::Memory {
                queue,
                area,
                offset,
                data,
            } => {
                out.extend_from_slice(&[15, *queue, *area % 4]);
                out.extend_from_slice(&offset.to_le_bytes());
                put_bytes(out, data, MAX_DATA);
            }
            VirtioOp::FailInterrupts(fail) => out.extend_from_slice(&[16, u8::from(*fail)]),
            VirtioOp::User { tag, data } => {
                out.extend_from_slice(&[17, *tag]);
                put_bytes(out, data, MAX_DATA);
            }
            VirtioOp::Restart => out.push(18),
        }
    }
}

/// The operations `u` holds (at most [`MAX_OPS`], up to the first one cut short).
pub fn decode_ops(u: &mut Unstructured<'_>) -> Vec<VirtioOp> {
    decode_with(u, MAX_OPS, VirtioOp::read)
}

/// The bytes [`decode_ops`] reads back as `ops`.
pub fn encode(ops: &[VirtioOp]) -> Vec<u8> {
    let mut out = Vec::new();
    for op in ops {
        op.encode(&mut out);
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn every_kind() -> Vec<VirtioOp> {
        vec![
            VirtioOp::Status(3),
            VirtioOp::Negotiate { mask: u64::MAX },
            VirtioOp::Features {
                select: 1,
                value: 1,
            },
            VirtioOp::Queue(QueueSetup {
                queue: 0,
                size: 8,
                desc: Place::Ram(0x100),
                avail: Place::Raw(u64::MAX),
                used: Place::Auto,
                vector: Some(1),
                enable: true,
            }),
            VirtioOp::Queue(QueueSetup::honest(1)),
            VirtioOp::DriverOk,
            VirtioOp::Chain(Chain {
                queue: 0,
                form: Form::Nested,
                split: true,
                merge: false,
                flaw: Flaw::OverRings(17),
                payload: vec![1, 2, 3],
            }),
            VirtioOp::Chain(Chain::direct(1, &[])),
            VirtioOp::Notify(0),
            VirtioOp::Reset,
            VirtioOp::Common {
                field: 6,
                value: 0xF,
            },
            VirtioOp::Read {
                at: Structure::Device,
                offset: 3,
                size: 8,
            },
            VirtioOp::Write {
                at: Structure::Bar(5),
                offset: 0x10,
                data: vec![1, 2],
            },
            VirtioOp::ConfigRead { offset: 6, size: 2 },
            VirtioOp::ConfigWrite {
                offset: 4,
                data: vec![7],
            },
            VirtioOp::Msix {
                entry: 1,
                address: 0xFEE0_0000,
                data: 0x41,
                masked: false,
            },
            VirtioOp::Interrupts(5),
            VirtioOp::Memory {
                queue: 0,
                area: 1,
                offset: 2,
                data: vec![0xFF, 0xFF],
            },
            VirtioOp::FailInterrupts(true),
            VirtioOp::User {
                tag: 3,
                data: vec![9],
            },
            VirtioOp::Restart,
        ]
    }

    #[test]
    fn every_operation_round_trips_and_cut_inputs_end_the_sequence() {
        let ops = every_kind();
        let bytes = encode(&ops);
        assert_eq!(decode_ops(&mut Unstructured::new(&bytes)), ops);
        for cut in 0..bytes.len() {
            let decoded = decode_ops(&mut Unstructured::new(&bytes[..cut]));
            assert_eq!(decoded[..], ops[..decoded.len()]);
        }
        assert_eq!(
            decode_ops(&mut Unstructured::new(&[7; 1024])).len(),
            MAX_OPS
        );
    }

    #[test]
    fn made_up_tags_favour_chains_and_notifications() {
        let mut kinds = [0u32; OP_KINDS as usize];
        for tag in 0..=255u8 {
            kinds[usize::from(kind(tag))] += 1;
        }
        assert!(
            kinds[5] > kinds[0] * 3 && kinds[6] > kinds[0] * 3,
            "{kinds:?}"
        );
        assert!(kinds.iter().all(|&n| n > 0), "{kinds:?}");
    }
}
