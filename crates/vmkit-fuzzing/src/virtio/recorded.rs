//! A recorded guest driver as the simulator's operations: what a guest did to a virtio-pci
//! function (its accesses to the structures of the function's BARs, and the chains it
//! published as the device read them from guest memory) made into [`VirtioOp`]s that replay
//! the same driver in the simulator's memory, for seeds.

use std::collections::BTreeMap;

use vmkit_exits::record::{Direction, RecordedExit};

use super::driver::{
    DEVICE_STATUS, DRIVER_FEATURE, DRIVER_FEATURE_SELECT, F_INDIRECT, F_NEXT, F_WRITE, QUEUE_DESC,
    QUEUE_DEVICE, QUEUE_DRIVER, QUEUE_ENABLE, QUEUE_MSIX_VECTOR, QUEUE_SELECT, QUEUE_SIZE,
};
use super::ops::{COMMON_FIELDS, Chain, Form, MAX_PAYLOAD, QueueSetup, Structure, VirtioOp};
use super::{Segment, VirtioFixture, VirtioFuzzer};
use crate::Recording;

/// The most descriptors one recorded chain is followed through (a looping chain ends there).
const MAX_DESCRIPTORS: usize = 64;
/// Bytes of one split-ring descriptor.
const DESCRIPTOR: u64 = 16;

/// What the driver set up for one queue, as the recording shows it.
#[derive(Clone, Copy, Debug, Default)]
struct RecordedQueue {
    size: Option<u16>,
    vector: Option<u16>,
    desc: u64,
    avail: u64,
}

/// The converter's state: the registers the guest's driver selected and the queues it set up.
#[derive(Default)]
struct Converter {
    feature_select: u32,
    queue_select: u16,
    /// Queues being set up or enabled, by index.
    queues: BTreeMap<u16, RecordedQueue>,
    ops: Vec<VirtioOp>,
}

/// `bytes` as a little-endian number (at most 8 bytes are read).
fn le(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .take(8)
        .rev()
        .fold(0, |value, &b| value << 8 | u64::from(b))
}

/// Sets the 32-bit half of `*address` that `offset` (0 or 4 past its start) names.
fn set_half(address: &mut u64, offset: u64, value: u64) {
    let shift = 8 * (offset & 4);
    *address = *address & !(0xFFFF_FFFF << shift) | (value & 0xFFFF_FFFF) << shift;
}

impl Converter {
    fn common_write(&mut self, offset: u64, data: &[u8]) {
        let value = le(data);
        let queue = self.queue_select;
        match (offset, data.len()) {
            (DEVICE_STATUS, 1) if value == 0 => self.ops.push(VirtioOp::Reset),
            (DEVICE_STATUS, 1) => self.ops.push(VirtioOp::Status(value as u8)),
            (DRIVER_FEATURE_SELECT, 4) => self.feature_select = value as u32,
            (DRIVER_FEATURE, 4) => self.ops.push(VirtioOp::Features {
                select: self.feature_select as u8,
                value: value as u32,
            }),
            (QUEUE_SELECT, 2) => self.queue_select = value as u16,
            (QUEUE_SIZE, 2) => self.queues.entry(queue).or_default().size = Some(value as u16),
            (QUEUE_MSIX_VECTOR, 2) => {
                self.queues.entry(queue).or_default().vector = Some(value as u16)
            }
            (QUEUE_ENABLE, 2) if value == 1 && queue <= u16::from(u8::MAX) => {
                let q = self.queues.entry(queue).or_default();
                // The simulator places the rings in its own memory; the recorded addresses
                // only serve to read the recorded chains.
                self.ops.push(VirtioOp::Queue(QueueSetup {
                    size: q.size.unwrap_or(0),
                    vector: q.vector,
                    ..QueueSetup::honest(queue as u8)
                }));
            }
            (QUEUE_DESC..QUEUE_DRIVER, 4) => set_half(
                &mut self.queues.entry(queue).or_default().desc,
                offset - QUEUE_DESC,
                value,
            ),
            (QUEUE_DRIVER..QUEUE_DEVICE, 4) => set_half(
                &mut self.queues.entry(queue).or_default().avail,
                offset - QUEUE_DRIVER,
                value,
            ),
            // The used ring: the simulator's own.
            (QUEUE_DEVICE..0x38, 4) => {}
            _ => match COMMON_FIELDS
                .iter()
                .position(|&(at, width)| at == offset && usize::from(width) == data.len())
            {
                Some(field) => self.ops.push(VirtioOp::Common {
                    field: field as u8,
                    value,
                }),
                None => self.ops.push(VirtioOp::Write {
                    at: Structure::Common,
                    offset: offset as u16,
                    data: data.to_vec(),
                }),
            },
        }
    }

    /// The chains of `queue` the device read at exit `seq`, published before its notification.
    fn chains<F: VirtioFixture>(
        &mut self,
        fixture: &F,
        recording: &Recording,
        seq: u64,
        queue: u16,
    ) {
        let (Some(q), Some(effects)) = (self.queues.get(&queue), recording.effects(seq)) else {
            return;
        };
        let reads: Vec<(u64, &[u8])> = effects
            .memory
            .iter()
            .filter(|m| m.direction == Direction::Read)
            .filter_map(|m| Some((m.gpa, recording.payloads().resolve(&m.data)?)))
            .collect();
        // The bytes at `addr..addr + len` as one read of the device holds them.
        let read = |addr: u64, len: u64| {
            reads.iter().find_map(|&(gpa, bytes)| {
                let from = addr.checked_sub(gpa)?;
                let to = from.checked_add(len)?;
                bytes.get(usize::try_from(from).ok()?..usize::try_from(to).ok()?)
            })
        };
        // The bytes the device read from the start of a buffer, padded to its length.
        let content = |addr: u64, len: u32| {
            let mut bytes = reads
                .iter()
                .find(|&&(gpa, _)| gpa == addr)
                .map_or(Vec::new(), |&(_, bytes)| bytes.to_vec());
            bytes.resize(len as usize, 0);
            bytes
        };
        let descriptor = |table: u64, index: u16| {
            let d = read(
                table.checked_add(DESCRIPTOR * u64::from(index))?,
                DESCRIPTOR,
            )?;
            Some((
                le(&d[..8]),
                le(&d[8..12]) as u32,
                le(&d[12..14]) as u16,
                le(&d[14..]) as u16,
            ))
        };
        let ring = q.avail.saturating_add(4);
        let ring_end = ring.saturating_add(2 * u64::from(q.size.unwrap_or(256)));
        let heads: Vec<u16> = reads
            .iter()
            .filter(|&&(gpa, bytes)| gpa >= ring && gpa < ring_end && bytes.len() == 2)
            .map(|&(_, bytes)| le(bytes) as u16)
            .collect();
        for head in heads {
            let mut segments = Vec::new();
            let mut indirect = false;
            let (mut table, mut index) = (q.desc, head);
            for _ in 0..MAX_DESCRIPTORS {
                let Some((addr, len, flags, next)) = descriptor(table, index) else {
                    break;
                };
                if flags & F_INDIRECT != 0 && !indirect {
                    (indirect, table, index) = (true, addr, 0);
                    continue;
                }
                segments.push(if flags & F_WRITE != 0 {
                    Segment::Writable(len)
                } else {
                    Segment::Readable(content(addr, len))
                });
                if flags & F_NEXT == 0 {
                    break;
                }
                index = next;
            }
            if let Some(mut payload) = fixture.payload(queue, &segments) {
                payload.truncate(MAX_PAYLOAD);
                self.ops.push(VirtioOp::Chain(Chain {
                    form: if indirect {
                        Form::Indirect
                    } else {
                        Form::Direct
                    },
                    ..Chain::direct(queue as u8, &payload)
                }));
            }
        }
    }
}

impl<F: VirtioFixture> VirtioFuzzer<F> {
    /// The operations of the driver a recording shows at the function this fixture's device
    /// stands for, whose BAR `n` the guest placed at address `a` for each `(n, a)` of `bars`:
    /// seeds that start the simulator where a real guest went.
    ///
    /// Each access to a structure of those BARs becomes its operation: status writes
    /// [`VirtioOp::Status`] (0: [`VirtioOp::Reset`]), driver-feature writes
    /// [`VirtioOp::Features`], a queue's set-up [`VirtioOp::Queue`] when the guest enabled it
    /// (the rings go where the simulator puts them), other common-configuration writes
    /// [`VirtioOp::Common`], ISR and device-configuration accesses [`VirtioOp::Read`] and
    /// [`VirtioOp::Write`], a notification [`VirtioOp::Notify`] after one [`VirtioOp::Chain`] per
    /// chain the device read from that queue's rings then (its buffers as it read them, made
    /// into a payload by [`VirtioFixture::payload`]). Reads of the common configuration and
    /// accesses outside every structure (an MSI-X table) are left out; so is configuration
    /// space (the simulator enables the function itself).
    pub fn ops_from_recording(
        &self,
        config: &F::Config,
        recording: &Recording,
        bars: &[(u8, u64)],
    ) -> Vec<VirtioOp> {
        // The capability walk of a device built for `config` says where the structures are
        // (a device is built and walked, nothing run on it).
        let structures = self.simulate(config, |_| (), |_, _, walk| walk.structures());
        let windows: Vec<(Structure, u64, u64)> = structures
            .into_iter()
            .filter_map(|(structure, bar, offset, len)| {
                let &(_, base) = bars.iter().find(|&&(n, _)| n == bar)?;
                Some((structure, base.checked_add(offset)?, len))
            })
            .collect();
        let mut converter = Converter::default();
        for exit in recording.exits() {
            let (addr, data, write) = match &exit.exit {
                RecordedExit::MmioRead { addr, data } => (*addr, data, false),
                RecordedExit::MmioWrite { addr, data } => (*addr, data, true),
                _ => continue,
            };
            let Some((at, offset)) = windows.iter().find_map(|&(structure, start, len)| {
                let offset = addr.checked_sub(start)?;
                (offset < len).then_some((structure, offset))
            }) else {
                continue;
            };
            match (at, write) {
                (Structure::Common, true) => converter.common_write(offset, data),
                (Structure::Common, false) => {}
                (Structure::Notify, true) => {
                    let queue = le(data) as u16;
                    converter.chains(&self.fixture, recording, exit.seq, queue);
                    converter.ops.push(VirtioOp::Notify(queue));
                }
                (Structure::Notify, false) => {}
                (at, true) => converter.ops.push(VirtioOp::Write {
                    at,
                    offset: offset as u16,
                    data: data.clone(),
                }),
                (at, false) => converter.ops.push(VirtioOp::Read {
                    at,
                    offset: offset as u16,
                    size: data.len() as u8,
                }),
            }
        }
        converter.ops
    }
}
