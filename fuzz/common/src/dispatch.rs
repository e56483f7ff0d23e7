//! Fuzz surface `exit_dispatch`: bus registration, unregistration and relocation interleaved with
//! every kind of `VmExit`, run through an `ExitDispatcher` and checked against a naive model (a
//! `Vec` of ranges scanned linearly).
//!
//! Checked after every operation: nothing panics; each access reaches exactly the device whose
//! range holds all of it, with the right base and offset, or is answered as unclaimed (reads all
//! ones, no device called); bus errors are exactly the model's; each exit yields the model's
//! action; and the statistics (per exit kind, per range, unclaimed, bad sizes, log lines) agree
//! with the model's counts. The work of each exit is bounded whatever the guest asks: at most
//! [`MAX_DEVICE_CALLS_PER_EXIT`] device call carrying no more than the access's bytes, and at most
//! [`MAX_LOG_LINES_PER_EXIT`] log line, let through or suppressed.
//!
//! The input is a sequence of [`Op`]s in a small byte format (tags and little-endian integers,
//! read with `arbitrary`'s primitives), so [`Op::encode`] can write seeds that decode to exactly
//! the intended operations.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use vmkit_exits::{
    AccessCounts, BusError, BusRange, CpuMode, DeviceAction, ExitAction, ExitDispatcher, ExitKind,
    InsnBytes, IoBus, LogLimit, ManualClock, MmioAddress, MmioBus, MmioDevice, PioAddress,
    PioDevice, StopReason, SystemEvent, VmExit, decode::decode, describe_insn,
};

/// Most operations taken from one input.
pub const MAX_OPS: usize = 256;

/// Longest access or instruction byte string an operation carries.
const MAX_DATA: usize = 20;

/// Most device calls one exit makes: the dispatcher hands an access to one device, once.
pub const MAX_DEVICE_CALLS_PER_EXIT: usize = 1;
/// Most log lines one exit produces (let through or suppressed by the limiter).
pub const MAX_LOG_LINES_PER_EXIT: u64 = 1;

/// An address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    /// Ports.
    Pio,
    /// Guest-physical addresses.
    Mmio,
}

/// An address, absolute or relative to a registered range (so accesses find the edges).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addr {
    /// This address (truncated to 16 bits for ports).
    Raw(u64),
    /// `delta` from the base of the `index`-th registered range (modulo their count).
    NearBase {
        /// Which range, in address order.
        index: u8,
        /// The offset from its base, wrapping in the address space.
        delta: i8,
    },
    /// `delta` from the last address of the `index`-th registered range.
    NearLast {
        /// Which range, in address order.
        index: u8,
        /// The offset from its last address, wrapping in the address space.
        delta: i8,
    },
}

/// An exit other than a port or MMIO access.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OtherExit {
    /// `VmExit::Hlt`.
    Hlt,
    /// `VmExit::TripleFault`.
    TripleFault,
    /// `VmExit::SystemEvent`: 0 reset, 1 power-off, 2 crash, 3 `Other(raw)`.
    SystemEvent {
        /// The event, 0..=3.
        kind: u8,
        /// The raw type of `Other`.
        raw: u32,
    },
    /// `VmExit::FailEntry`.
    FailEntry {
        /// Hardware reason.
        reason: u64,
        /// Physical CPU.
        cpu: u32,
    },
    /// `VmExit::InternalError`.
    InternalError {
        /// The sub-error.
        suberror: u32,
        /// The instruction bytes, if reported (capped at 15 by `InsnBytes`).
        insn: Option<Vec<u8>>,
    },
    /// `VmExit::Debug`.
    Debug {
        /// Guest instruction pointer.
        pc: u64,
        /// Exception vector.
        exception: u32,
    },
    /// `VmExit::Other`.
    Other {
        /// Raw exit reason.
        reason: u32,
    },
}

/// One step of a fuzz input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Register a recording device.
    Register {
        /// Which bus.
        space: Space,
        /// The range's base.
        base: Addr,
        /// The range's length.
        len: u32,
        /// Use `register_named`.
        named: bool,
        /// The device stops the VM on every write.
        stop_on_write: bool,
    },
    /// Unregister the range at `base`.
    Unregister {
        /// Which bus.
        space: Space,
        /// The base to remove.
        base: Addr,
    },
    /// Move the range at `base` to `new_base`.
    Relocate {
        /// Which bus.
        space: Space,
        /// The range's base.
        base: Addr,
        /// Where to move it.
        new_base: Addr,
    },
    /// An `IoIn` or `MmioRead` of `size` bytes (0..=15).
    Read {
        /// Which bus.
        space: Space,
        /// Where.
        addr: Addr,
        /// How many bytes.
        size: u8,
    },
    /// An `IoOut` or `MmioWrite` of `data` (0..=15 bytes).
    Write {
        /// Which bus.
        space: Space,
        /// Where.
        addr: Addr,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Any other exit.
    Exit(OtherExit),
    /// Advance the log limiter's clock.
    AdvanceClock {
        /// Milliseconds.
        ms: u16,
    },
}

const OP_KINDS: u8 = 7;

fn space_bit(space: Space) -> u8 {
    match space {
        Space::Pio => 0,
        Space::Mmio => 1,
    }
}

impl Addr {
    fn read(u: &mut Unstructured<'_>, space: Space) -> arbitrary::Result<Self> {
        Ok(match u8::arbitrary(u)? % 3 {
            0 => Addr::Raw(match space {
                Space::Pio => u64::from(u16::arbitrary(u)?),
                Space::Mmio => u64::arbitrary(u)?,
            }),
            1 => Addr::NearBase {
                index: u8::arbitrary(u)?,
                delta: i8::arbitrary(u)?,
            },
            _ => Addr::NearLast {
                index: u8::arbitrary(u)?,
                delta: i8::arbitrary(u)?,
            },
        })
    }

    fn encode(&self, space: Space, out: &mut Vec<u8>) {
        match *self {
            Addr::Raw(a) => {
                out.push(0);
                match space {
                    Space::Pio => out.extend_from_slice(&(a as u16).to_le_bytes()),
                    Space::Mmio => out.extend_from_slice(&a.to_le_bytes()),
                }
            }
            Addr::NearBase { index, delta } => out.extend_from_slice(&[1, index, delta as u8]),
            Addr::NearLast { index, delta } => out.extend_from_slice(&[2, index, delta as u8]),
        }
    }
}

fn read_bytes(u: &mut Unstructured<'_>, max: usize) -> arbitrary::Result<Vec<u8>> {
    let len = usize::from(u8::arbitrary(u)?) % (max + 1);
    (0..len).map(|_| u8::arbitrary(u)).collect()
}

fn encode_bytes(data: &[u8], out: &mut Vec<u8>) {
    out.push(data.len() as u8);
    out.extend_from_slice(data);
}

impl<'a> Arbitrary<'a> for Op {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let tag = u8::arbitrary(u)?;
        let space = if tag & 1 == 0 {
            Space::Pio
        } else {
            Space::Mmio
        };
        Ok(match (tag >> 1) % OP_KINDS {
            0 => {
                let base = Addr::read(u, space)?;
                let len = u32::arbitrary(u)?;
                let flags = u8::arbitrary(u)?;
                Op::Register {
                    space,
                    base,
                    len,
                    named: flags & 1 != 0,
                    stop_on_write: flags & 2 != 0,
                }
            }
            1 => Op::Unregister {
                space,
                base: Addr::read(u, space)?,
            },
            2 => Op::Relocate {
                space,
                base: Addr::read(u, space)?,
                new_base: Addr::read(u, space)?,
            },
            3 => Op::Read {
                space,
                addr: Addr::read(u, space)?,
                size: u8::arbitrary(u)? & 15,
            },
            4 => Op::Write {
                space,
                addr: Addr::read(u, space)?,
                data: read_bytes(u, 15)?,
            },
            5 => Op::Exit(match u8::arbitrary(u)? % 7 {
                0 => OtherExit::Hlt,
                1 => OtherExit::TripleFault,
                2 => OtherExit::SystemEvent {
                    kind: u8::arbitrary(u)? % 4,
                    raw: u32::arbitrary(u)?,
                },
                3 => OtherExit::FailEntry {
                    reason: u64::arbitrary(u)?,
                    cpu: u32::arbitrary(u)?,
                },
                4 => OtherExit::InternalError {
                    suberror: u32::arbitrary(u)?,
                    insn: match u8::arbitrary(u)? & 1 {
                        0 => None,
                        _ => Some(read_bytes(u, MAX_DATA)?),
                    },
                },
                5 => OtherExit::Debug {
                    pc: u64::arbitrary(u)?,
                    exception: u32::arbitrary(u)?,
                },
                _ => OtherExit::Other {
                    reason: u32::arbitrary(u)?,
                },
            }),
            _ => Op::AdvanceClock {
                ms: u16::arbitrary(u)?,
            },
        })
    }
}

impl Op {
    /// Appends the bytes that [`Op::arbitrary`] reads back as this operation.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let tag = |kind: u8, space: Space| (kind << 1) | space_bit(space);
        match self {
            Op::Register {
                space,
                base,
                len,
                named,
                stop_on_write,
            } => {
                out.push(tag(0, *space));
                base.encode(*space, out);
                out.extend_from_slice(&len.to_le_bytes());
                out.push(u8::from(*named) | (u8::from(*stop_on_write) << 1));
            }
            Op::Unregister { space, base } => {
                out.push(tag(1, *space));
                base.encode(*space, out);
            }
            Op::Relocate {
                space,
                base,
                new_base,
            } => {
                out.push(tag(2, *space));
                base.encode(*space, out);
                new_base.encode(*space, out);
            }
            Op::Read { space, addr, size } => {
                out.push(tag(3, *space));
                addr.encode(*space, out);
                out.push(*size);
            }
            Op::Write { space, addr, data } => {
                out.push(tag(4, *space));
                addr.encode(*space, out);
                encode_bytes(data, out);
            }
            Op::Exit(exit) => {
                out.push(tag(5, Space::Pio));
                match exit {
                    OtherExit::Hlt => out.push(0),
                    OtherExit::TripleFault => out.push(1),
                    OtherExit::SystemEvent { kind, raw } => {
                        out.extend_from_slice(&[2, *kind]);
                        out.extend_from_slice(&raw.to_le_bytes());
                    }
                    OtherExit::FailEntry { reason, cpu } => {
                        out.push(3);
                        out.extend_from_slice(&reason.to_le_bytes());
                        out.extend_from_slice(&cpu.to_le_bytes());
                    }
                    OtherExit::InternalError { suberror, insn } => {
                        out.push(4);
                        out.extend_from_slice(&suberror.to_le_bytes());
                        match insn {
                            None => out.push(0),
                            Some(bytes) => {
                                out.push(1);
                                encode_bytes(bytes, out);
                            }
                        }
                    }
                    OtherExit::Debug { pc, exception } => {
                        out.push(5);
                        out.extend_from_slice(&pc.to_le_bytes());
                        out.extend_from_slice(&exception.to_le_bytes());
                    }
                    OtherExit::Other { reason } => {
                        out.push(6);
                        out.extend_from_slice(&reason.to_le_bytes());
                    }
                }
            }
            Op::AdvanceClock { ms } => {
                out.push(tag(6, Space::Pio));
                out.extend_from_slice(&ms.to_le_bytes());
            }
        }
    }
}

/// The operations in `data`, at most [`MAX_OPS`].
pub fn parse(data: &[u8]) -> Vec<Op> {
    crate::ops::decode(&mut Unstructured::new(data), MAX_OPS, Op::arbitrary)
}

/// The bytes that [`parse`] reads back as `ops`.
pub fn encode(ops: &[Op]) -> Vec<u8> {
    crate::ops::encode(ops, Op::encode)
}

/// One device call, as a recording device saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Hit {
    id: u32,
    base: u64,
    offset: u64,
    len: usize,
    write: bool,
}

/// A device that records its calls in a log shared by all devices of a run.
struct Recorder {
    id: u32,
    stop_on_write: bool,
    log: Arc<Mutex<Vec<Hit>>>,
}

/// What a recorder answers at `offset + i`.
fn pattern(id: u32, offset: u64, i: usize) -> u8 {
    (u64::from(id).wrapping_mul(31) ^ offset.wrapping_add(i as u64)) as u8
}

impl Recorder {
    fn record(&self, base: u64, offset: u64, len: usize, write: bool) {
        if let Ok(mut log) = self.log.lock() {
            log.push(Hit {
                id: self.id,
                base,
                offset,
                len,
                write,
            });
        }
    }
    fn read(&self, base: u64, offset: u64, data: &mut [u8]) {
        self.record(base, offset, data.len(), false);
        for (i, b) in data.iter_mut().enumerate() {
            *b = pattern(self.id, offset, i);
        }
    }
    fn write(&self, base: u64, offset: u64, data: &[u8]) -> DeviceAction {
        self.record(base, offset, data.len(), true);
        if self.stop_on_write {
            DeviceAction::Stop(StopReason::GuestExit(self.id))
        } else {
            DeviceAction::Resume
        }
    }
}

impl PioDevice for Recorder {
    fn pio_read(&self, base: PioAddress, offset: u16, data: &mut [u8]) {
        self.read(base.into(), offset.into(), data);
    }
    fn pio_write(&self, base: PioAddress, offset: u16, data: &[u8]) -> DeviceAction {
        self.write(base.into(), offset.into(), data)
    }
}

impl MmioDevice for Recorder {
    fn mmio_read(&self, base: MmioAddress, offset: u64, data: &mut [u8]) {
        self.read(base.into(), offset, data);
    }
    fn mmio_write(&self, base: MmioAddress, offset: u64, data: &[u8]) -> DeviceAction {
        self.write(base.into(), offset, data)
    }
}

#[derive(Clone, Debug)]
struct ModelRange {
    base: u64,
    last: u64,
    id: u32,
    name: Option<String>,
    stop_on_write: bool,
    hits: u64,
}

/// The naive model: ranges in a `Vec`, scanned linearly.
#[derive(Default)]
struct Model {
    pio: Vec<ModelRange>,
    mmio: Vec<ModelRange>,
    exits: [u64; ExitKind::COUNT],
    unclaimed: AccessCounts,
    bad_size: AccessCounts,
}

fn max_addr(space: Space) -> u64 {
    match space {
        Space::Pio => u64::from(u16::MAX),
        Space::Mmio => u64::MAX,
    }
}

impl Model {
    fn ranges(&self, space: Space) -> &Vec<ModelRange> {
        match space {
            Space::Pio => &self.pio,
            Space::Mmio => &self.mmio,
        }
    }

    fn ranges_mut(&mut self, space: Space) -> &mut Vec<ModelRange> {
        match space {
            Space::Pio => &mut self.pio,
            Space::Mmio => &mut self.mmio,
        }
    }

    /// The address `addr` names in `space` now.
    fn resolve(&self, space: Space, addr: Addr) -> u64 {
        let max = max_addr(space);
        let mut sorted: Vec<&ModelRange> = self.ranges(space).iter().collect();
        sorted.sort_by_key(|r| r.base);
        let near = |index: u8, pick: fn(&ModelRange) -> u64, delta: i8| {
            let anchor = match sorted.len() {
                0 => 0,
                n => pick(sorted[usize::from(index) % n]),
            };
            anchor.wrapping_add(delta as i64 as u64) & max
        };
        match addr {
            Addr::Raw(a) => a & max,
            Addr::NearBase { index, delta } => near(index, |r| r.base, delta),
            Addr::NearLast { index, delta } => near(index, |r| r.last, delta),
        }
    }

    /// The range of `len` at `base`, or the bus's error, ignoring the range at `skip`.
    fn place(&self, space: Space, base: u64, len: u64, skip: Option<u64>) -> Result<u64, BusError> {
        if len == 0 {
            return Err(BusError::EmptyRange { base });
        }
        let last = match base.checked_add(len - 1) {
            Some(last) if last <= max_addr(space) => last,
            _ => return Err(BusError::RangeWraps { base, len }),
        };
        let clash = self
            .ranges(space)
            .iter()
            .filter(|r| Some(r.base) != skip && r.base <= last && base <= r.last)
            .max_by_key(|r| r.base);
        match clash {
            Some(r) => Err(BusError::Overlap {
                base,
                last,
                other_base: r.base,
                other_last: r.last,
            }),
            None => Ok(last),
        }
    }

    /// The range that holds all of `size` bytes at `addr`, counting a hit on it.
    fn route(&mut self, space: Space, addr: u64, size: usize) -> Option<ModelRange> {
        let end = addr.checked_add(size as u64 - 1)?;
        let r = self
            .ranges_mut(space)
            .iter_mut()
            .find(|r| r.base <= addr && addr <= r.last)?;
        if end > r.last {
            return None;
        }
        r.hits += 1;
        Some(r.clone())
    }
}

fn count(counts: &mut AccessCounts, space: Space, write: bool) {
    match (space, write) {
        (Space::Pio, false) => counts.pio_read += 1,
        (Space::Pio, true) => counts.pio_write += 1,
        (Space::Mmio, false) => counts.mmio_read += 1,
        (Space::Mmio, true) => counts.mmio_write += 1,
    }
}

/// One run: the system under test, the model, and the devices' shared log.
struct Harness {
    dispatcher: ExitDispatcher,
    clock: Arc<ManualClock>,
    model: Model,
    log: Arc<Mutex<Vec<Hit>>>,
    next_id: u32,
}

impl Harness {
    fn new() -> Self {
        let clock = Arc::new(ManualClock::new());
        let dispatcher = ExitDispatcher::new(Arc::new(IoBus::new()), Arc::new(MmioBus::new()))
            .with_log_limit(LogLimit::default(), clock.clone());
        Self {
            dispatcher,
            clock,
            model: Model::default(),
            log: Arc::new(Mutex::new(Vec::new())),
            next_id: 1,
        }
    }

    /// Log lines so far, let through or suppressed.
    fn log_lines(&self) -> u64 {
        let s = self.dispatcher.stats();
        s.log_lines + s.log_suppressed
    }

    /// Takes the device calls of the exit just dispatched and checks its work against the
    /// bound: `lines` is the log count before the exit, `size` the access's bytes.
    fn exit_work(&self, lines: u64, size: usize) -> Vec<Hit> {
        let calls = self.take_log();
        assert!(calls.len() <= MAX_DEVICE_CALLS_PER_EXIT, "{calls:?}");
        assert!(calls.iter().all(|hit| hit.len <= size), "{calls:?}");
        assert!(self.log_lines() - lines <= MAX_LOG_LINES_PER_EXIT);
        calls
    }

    fn take_log(&self) -> Vec<Hit> {
        self.log
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    }

    fn register(&mut self, space: Space, base: Addr, len: u32, named: bool, stop: bool) {
        let base = self.model.resolve(space, base);
        let len = u64::from(len);
        let id = self.next_id;
        self.next_id += 1;
        let name = named.then(|| format!("dev{id}"));
        let expected = self.model.place(space, base, len, None);
        let dev = Arc::new(Recorder {
            id,
            stop_on_write: stop,
            log: Arc::clone(&self.log),
        });
        let got = match (space, &name) {
            (Space::Pio, Some(n)) => self.dispatcher.io_bus().register_named(
                BusRange::new(PioAddress(base as u16), len),
                n,
                dev,
            ),
            (Space::Pio, None) => self
                .dispatcher
                .io_bus()
                .register(BusRange::new(PioAddress(base as u16), len), dev),
            (Space::Mmio, Some(n)) => self.dispatcher.mmio_bus().register_named(
                BusRange::new(MmioAddress(base), len),
                n,
                dev,
            ),
            (Space::Mmio, None) => self
                .dispatcher
                .mmio_bus()
                .register(BusRange::new(MmioAddress(base), len), dev),
        };
        assert_eq!(
            got,
            expected.clone().map(|_| ()),
            "register {space:?} {base:#x}+{len:#x}"
        );
        if let Ok(last) = expected {
            self.model.ranges_mut(space).push(ModelRange {
                base,
                last,
                id,
                name,
                stop_on_write: stop,
                hits: 0,
            });
        }
    }

    fn unregister(&mut self, space: Space, base: Addr) {
        let base = self.model.resolve(space, base);
        let ranges = self.model.ranges_mut(space);
        let expected = ranges
            .iter()
            .position(|r| r.base == base)
            .map(|i| ranges.remove(i));
        match space {
            Space::Pio => match self.dispatcher.io_bus().unregister(PioAddress(base as u16)) {
                Ok(handler) => handler.pio_read(PioAddress(0), 0, &mut [0]),
                Err(e) => assert_eq!(e, BusError::NotFound(base)),
            },
            Space::Mmio => match self.dispatcher.mmio_bus().unregister(MmioAddress(base)) {
                Ok(handler) => handler.mmio_read(MmioAddress(0), 0, &mut [0]),
                Err(e) => assert_eq!(e, BusError::NotFound(base)),
            },
        }
        // The returned handler is the removed range's device.
        let ids: Vec<u32> = self.take_log().iter().map(|h| h.id).collect();
        assert_eq!(ids, expected.map(|r| r.id).into_iter().collect::<Vec<_>>());
    }

    fn relocate(&mut self, space: Space, base: Addr, new_base: Addr) {
        let old = self.model.resolve(space, base);
        let new = self.model.resolve(space, new_base);
        let expected = match self.model.ranges(space).iter().find(|r| r.base == old) {
            None => Err(BusError::NotFound(old)),
            Some(r) => self.model.place(space, new, r.last - r.base + 1, Some(old)),
        };
        let got = match space {
            Space::Pio => self
                .dispatcher
                .io_bus()
                .relocate(PioAddress(old as u16), PioAddress(new as u16)),
            Space::Mmio => self
                .dispatcher
                .mmio_bus()
                .relocate(MmioAddress(old), MmioAddress(new)),
        };
        assert_eq!(
            got,
            expected.clone().map(|_| ()),
            "relocate {old:#x} -> {new:#x}"
        );
        if let Ok(last) = expected {
            let r = self
                .model
                .ranges_mut(space)
                .iter_mut()
                .find(|r| r.base == old);
            if let Some(r) = r {
                r.base = new;
                r.last = last;
            }
        }
    }

    /// Model side of an access: the range hit (counted) or the bad/unclaimed count.
    fn expect_access(
        &mut self,
        space: Space,
        addr: u64,
        size: usize,
        write: bool,
    ) -> Option<ModelRange> {
        if !matches!(size, 1 | 2 | 4 | 8) {
            count(&mut self.model.bad_size, space, write);
            return None;
        }
        let hit = self.model.route(space, addr, size);
        if hit.is_none() {
            count(&mut self.model.unclaimed, space, write);
        }
        hit
    }

    fn read(&mut self, space: Space, addr: Addr, size: u8) {
        let addr = self.model.resolve(space, addr);
        let size = usize::from(size);
        let mut data = vec![0u8; size];
        let (exit, kind) = match space {
            Space::Pio => (
                VmExit::IoIn {
                    port: addr as u16,
                    data: &mut data,
                },
                ExitKind::IoIn,
            ),
            Space::Mmio => (
                VmExit::MmioRead {
                    addr,
                    data: &mut data,
                },
                ExitKind::MmioRead,
            ),
        };
        self.model.exits[kind as usize] += 1;
        let lines = self.log_lines();
        assert_eq!(self.dispatcher.dispatch(exit), ExitAction::Resume);
        let expected = self.expect_access(space, addr, size, false);
        let log = self.exit_work(lines, size);
        match expected {
            Some(r) => {
                let offset = addr - r.base;
                assert_eq!(
                    log,
                    [Hit {
                        id: r.id,
                        base: r.base,
                        offset,
                        len: size,
                        write: false
                    }],
                    "read {space:?} {addr:#x}/{size}"
                );
                for (i, b) in data.iter().enumerate() {
                    assert_eq!(*b, pattern(r.id, offset, i));
                }
            }
            None => {
                assert!(
                    log.is_empty(),
                    "unclaimed read {addr:#x}/{size} reached {log:?}"
                );
                assert!(
                    data.iter().all(|&b| b == 0xff),
                    "unclaimed read data {data:02x?}"
                );
            }
        }
    }

    fn write(&mut self, space: Space, addr: Addr, data: &[u8]) {
        let addr = self.model.resolve(space, addr);
        let (exit, kind) = match space {
            Space::Pio => (
                VmExit::IoOut {
                    port: addr as u16,
                    data,
                },
                ExitKind::IoOut,
            ),
            Space::Mmio => (VmExit::MmioWrite { addr, data }, ExitKind::MmioWrite),
        };
        self.model.exits[kind as usize] += 1;
        let lines = self.log_lines();
        let action = self.dispatcher.dispatch(exit);
        let expected = self.expect_access(space, addr, data.len(), true);
        let log = self.exit_work(lines, data.len());
        match expected {
            Some(r) => {
                assert_eq!(
                    log,
                    [Hit {
                        id: r.id,
                        base: r.base,
                        offset: addr - r.base,
                        len: data.len(),
                        write: true
                    }],
                    "write {space:?} {addr:#x}/{}",
                    data.len()
                );
                let want = match r.stop_on_write {
                    true => ExitAction::Stop(StopReason::GuestExit(r.id)),
                    false => ExitAction::Resume,
                };
                assert_eq!(action, want);
            }
            None => {
                assert!(log.is_empty(), "unclaimed write {addr:#x} reached {log:?}");
                assert_eq!(action, ExitAction::Resume);
            }
        }
    }

    fn other(&mut self, exit: &OtherExit) {
        let insn = match exit {
            OtherExit::InternalError {
                insn: Some(bytes), ..
            } => {
                check_decoder(bytes);
                Some(InsnBytes::new(bytes))
            }
            _ => None,
        };
        let (vm_exit, want) = match *exit {
            OtherExit::Hlt => (VmExit::Hlt, ExitAction::Halt),
            OtherExit::TripleFault => (
                VmExit::TripleFault,
                ExitAction::Stop(StopReason::TripleFault),
            ),
            OtherExit::SystemEvent { kind, raw } => {
                let (event, reason) = match kind {
                    0 => (SystemEvent::Reset, StopReason::Reset),
                    1 => (SystemEvent::PowerOff, StopReason::PowerOff),
                    2 => (SystemEvent::Crash, StopReason::Crash),
                    _ => (SystemEvent::Other(raw), StopReason::Unhandled(raw)),
                };
                (VmExit::SystemEvent(event), ExitAction::Stop(reason))
            }
            OtherExit::FailEntry { reason, cpu } => (
                VmExit::FailEntry { reason, cpu },
                ExitAction::Stop(StopReason::EntryFailed(reason)),
            ),
            OtherExit::InternalError { suberror, .. } => (
                VmExit::InternalError { suberror, insn },
                ExitAction::Stop(StopReason::InternalError { suberror, insn }),
            ),
            OtherExit::Debug { pc, exception } => {
                (VmExit::Debug { pc, exception }, ExitAction::Resume)
            }
            OtherExit::Other { reason } => (
                VmExit::Other { reason },
                ExitAction::Stop(StopReason::Unhandled(reason)),
            ),
        };
        self.model.exits[vm_exit.kind() as usize] += 1;
        let lines = self.log_lines();
        let action = self.dispatcher.dispatch(vm_exit);
        assert_eq!(action, want);
        if let ExitAction::Stop(reason) = action {
            assert!(!reason.to_string().is_empty());
        }
        assert!(
            self.exit_work(lines, 0).is_empty(),
            "a non-access exit reached a device"
        );
    }

    fn check_stats(&self) {
        let s = self.dispatcher.stats();
        for kind in ExitKind::ALL {
            assert_eq!(s.exits(kind), self.model.exits[kind as usize], "{kind}");
        }
        assert_eq!(s.unclaimed, self.model.unclaimed);
        assert_eq!(s.bad_size, self.model.bad_size);
        assert_eq!(
            s.log_lines + s.log_suppressed,
            self.model.unclaimed.total() + self.model.bad_size.total(),
            "every bad access is logged or suppressed"
        );
        for (space, got) in [(Space::Pio, &s.pio_ranges), (Space::Mmio, &s.mmio_ranges)] {
            let mut want = self.model.ranges(space).clone();
            want.sort_by_key(|r| r.base);
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                assert_eq!((g.base, g.last, g.hits), (w.base, w.last, w.hits));
                assert_eq!(g.name.as_deref(), w.name.as_deref());
            }
        }
    }
}

/// The decoder never reads past the bytes or the 15-byte limit, whatever the mode.
fn check_decoder(bytes: &[u8]) {
    for mode in [CpuMode::Bits16, CpuMode::Bits32, CpuMode::Bits64] {
        if let Ok(insn) = decode(bytes, mode) {
            let len = insn.len;
            assert!(len >= 1 && len <= bytes.len() && len <= 15, "{bytes:02x?}");
            assert!(!insn.to_string().is_empty());
        }
    }
    assert!(!describe_insn(bytes).is_empty());
}

/// Target body.
pub fn run(data: &[u8]) {
    let mut h = Harness::new();
    for op in parse(data) {
        match op {
            Op::Register {
                space,
                base,
                len,
                named,
                stop_on_write,
            } => h.register(space, base, len, named, stop_on_write),
            Op::Unregister { space, base } => h.unregister(space, base),
            Op::Relocate {
                space,
                base,
                new_base,
            } => h.relocate(space, base, new_base),
            Op::Read { space, addr, size } => h.read(space, addr, size),
            Op::Write { space, addr, data } => h.write(space, addr, &data),
            Op::Exit(exit) => h.other(&exit),
            Op::AdvanceClock { ms } => h.clock.advance(Duration::from_millis(u64::from(ms))),
        }
        h.check_stats();
    }
    assert!(!h.dispatcher.stats().to_string().is_empty());
}

/// Named seed inputs: small, meaningful scenarios that reach every operation and exit.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use Addr::{NearBase, NearLast, Raw};
    let reg = |space, base, len, named, stop_on_write| Op::Register {
        space,
        base,
        len,
        named,
        stop_on_write,
    };
    let read = |space, addr, size| Op::Read { space, addr, size };
    let write = |space, addr, data: &[u8]| Op::Write {
        space,
        addr,
        data: data.to_vec(),
    };
    let first_base = NearBase { index: 0, delta: 0 };
    let scenarios: Vec<(&'static str, Vec<Op>)> = vec![
        (
            "serial_port",
            vec![
                reg(Space::Pio, Raw(0x3f8), 8, true, false),
                write(Space::Pio, Raw(0x3f8), b"h"),
                read(Space::Pio, Raw(0x3fd), 1),
                read(
                    Space::Pio,
                    NearLast {
                        index: 0,
                        delta: -1,
                    },
                    2,
                ),
                read(Space::Pio, NearLast { index: 0, delta: 0 }, 2),
                read(Space::Pio, Raw(0x80), 1),
            ],
        ),
        (
            "debug_exit",
            vec![
                reg(Space::Pio, Raw(0xf4), 1, true, true),
                write(Space::Pio, Raw(0xf4), &[0x31]),
                write(Space::Pio, Raw(0xf4), &[0x31, 0]),
            ],
        ),
        (
            "mmio_bar_moves",
            vec![
                reg(Space::Mmio, Raw(0xd000_0000), 0x1000, true, false),
                reg(Space::Mmio, Raw(0xd000_2000), 0x1000, false, false),
                write(
                    Space::Mmio,
                    NearBase {
                        index: 0,
                        delta: 0x10,
                    },
                    &[1, 2, 3, 4],
                ),
                Op::Relocate {
                    space: Space::Mmio,
                    base: first_base,
                    new_base: Raw(0xd000_1800),
                },
                Op::Relocate {
                    space: Space::Mmio,
                    base: first_base,
                    new_base: Raw(0xe000_0000),
                },
                read(Space::Mmio, Raw(0xe000_0ff8), 8),
                read(Space::Mmio, Raw(0xd000_0000), 4),
                Op::Unregister {
                    space: Space::Mmio,
                    base: Raw(0xd000_2000),
                },
                Op::Unregister {
                    space: Space::Mmio,
                    base: Raw(0xd000_2000),
                },
            ],
        ),
        (
            "bad_ranges",
            vec![
                reg(Space::Pio, Raw(0x10), 0, false, false),
                reg(Space::Pio, Raw(0xfff0), 0x11, false, false),
                reg(Space::Pio, Raw(0xfff0), 0x10, false, false),
                reg(Space::Pio, Raw(0xfff8), 4, false, false),
                reg(Space::Mmio, Raw(u64::MAX - 3), 4, true, false),
                reg(Space::Mmio, Raw(u64::MAX), 2, false, false),
                read(Space::Mmio, Raw(u64::MAX - 1), 4),
                read(Space::Mmio, Raw(u64::MAX - 1), 2),
            ],
        ),
        (
            "bad_sizes_and_log_limit",
            vec![
                reg(Space::Pio, Raw(0x60), 16, false, false),
                read(Space::Pio, Raw(0x60), 3),
                write(Space::Pio, Raw(0x60), &[]),
                read(Space::Mmio, Raw(0x1000), 6),
                write(Space::Mmio, Raw(0x1000), &[0; 9]),
                read(Space::Pio, Raw(0x70), 1),
                read(Space::Pio, Raw(0x70), 1),
                Op::AdvanceClock { ms: 2000 },
                read(Space::Pio, Raw(0x70), 1),
            ],
        ),
        (
            "other_exits",
            vec![
                Op::Exit(OtherExit::Hlt),
                Op::Exit(OtherExit::TripleFault),
                Op::Exit(OtherExit::SystemEvent { kind: 0, raw: 0 }),
                Op::Exit(OtherExit::SystemEvent { kind: 1, raw: 0 }),
                Op::Exit(OtherExit::SystemEvent { kind: 2, raw: 0 }),
                Op::Exit(OtherExit::SystemEvent { kind: 3, raw: 4 }),
                Op::Exit(OtherExit::FailEntry {
                    reason: 0x8000_0021,
                    cpu: 1,
                }),
                Op::Exit(OtherExit::Debug {
                    pc: 0x10_0000,
                    exception: 1,
                }),
                Op::Exit(OtherExit::Other { reason: 99 }),
            ],
        ),
        (
            "emulation_failures",
            vec![
                Op::Exit(OtherExit::InternalError {
                    suberror: 1,
                    insn: Some(vec![0xf0, 0x48, 0x0f, 0xc7, 0x0e]),
                }),
                Op::Exit(OtherExit::InternalError {
                    suberror: 1,
                    insn: Some(vec![0x0f, 0xae, 0x2f]),
                }),
                Op::Exit(OtherExit::InternalError {
                    suberror: 1,
                    insn: Some(vec![0x62, 0xf1, 0x7c, 0x48, 0x10, 0x47, 0x01]),
                }),
                Op::Exit(OtherExit::InternalError {
                    suberror: 1,
                    insn: Some(vec![0x66; 20]),
                }),
                Op::Exit(OtherExit::InternalError {
                    suberror: 3,
                    insn: None,
                }),
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
    use vmkit_fuzzing::{Region, Space as HarnessSpace};

    use super::*;
    use crate::seed_files;

    /// The reference VMM's device ranges (a virtio-pci BAR for each of two disks, where the
    /// first 32-bit BARs are allocated), as regions of the harness whose operations
    /// [`vmkit_fuzzing::ops_for_regions`] makes of a recording; the debug-exit port stops the
    /// VM on every write, as there.
    fn vmm_ranges() -> Vec<(Region, bool)> {
        use vmkit_devices::acpi_pm::{ACPI_PM_PORT, ACPI_PM_PORT_LEN};
        use vmkit_devices::cmos::{CMOS_PORT, CMOS_PORT_LEN};
        use vmkit_devices::debug_exit::{DEBUG_EXIT_PORT, DEBUG_EXIT_PORT_LEN};
        use vmkit_devices::i8042::{I8042_COMMAND_PORT, I8042_DATA_PORT};
        use vmkit_devices::pci::{CONFIG_IO_LEN, CONFIG_IO_PORT};
        use vmkit_devices::serial::{COM1_PORT, SERIAL_PORT_LEN};
        use vmkit_devices::testdev::{IOMEM_BASE, IOMEM_SIZE, IRQ_LINE_PORTS, REGISTER_PORTS};
        use vmkit_devices::virtio::BAR_SIZE;
        use vmkit_memory::layout::{MMIO32_START, PCI_ECAM_SIZE, PCI_ECAM_START};
        let region = |name, space, base: u64, len: u64| Region {
            name,
            space,
            base,
            len,
        };
        let port =
            |name, base: u16, len: u16| region(name, HarnessSpace::Pio, base.into(), len.into());
        let mmio = |name, base, len| region(name, HarnessSpace::Mmio, base, len);
        vec![
            (port("com1", COM1_PORT, SERIAL_PORT_LEN), false),
            (
                port("debug-exit", DEBUG_EXIT_PORT, DEBUG_EXIT_PORT_LEN),
                true,
            ),
            (port("i8042-data", I8042_DATA_PORT, 1), false),
            (port("i8042-cmd", I8042_COMMAND_PORT, 1), false),
            (port("cmos", CMOS_PORT, CMOS_PORT_LEN), false),
            (port("acpi-pm", ACPI_PM_PORT, ACPI_PM_PORT_LEN), false),
            (
                port("testdev", REGISTER_PORTS.start, REGISTER_PORTS.len() as u16),
                false,
            ),
            (
                port(
                    "testdev-irq",
                    IRQ_LINE_PORTS.start,
                    IRQ_LINE_PORTS.len() as u16,
                ),
                false,
            ),
            (
                port("pci-config", CONFIG_IO_PORT, CONFIG_IO_LEN as u16),
                false,
            ),
            (mmio("ecam", PCI_ECAM_START, PCI_ECAM_SIZE), false),
            (mmio("testdev-iomem", IOMEM_BASE, IOMEM_SIZE), false),
            (mmio("virtio-bar-0", MMIO32_START, BAR_SIZE), false),
            (
                mmio("virtio-bar-1", MMIO32_START + BAR_SIZE, BAR_SIZE),
                false,
            ),
        ]
    }

    /// A recording's accesses to the reference VMM's ranges, as seed inputs: each input
    /// registers the ranges its accesses reach (in the order it first reaches them), then makes
    /// the accesses at their recorded addresses, a burst as that many accesses. Inputs are cut
    /// at [`MAX_OPS`] operations and `max_len` bytes, and kept only when they make an access no
    /// input kept before makes (the bytes written aside).
    fn recorded_inputs(recording: &vmkit_fuzzing::Recording, max_len: usize) -> Vec<Vec<u8>> {
        let ranges = vmm_ranges();
        let regions: Vec<Region> = ranges.iter().map(|(region, _)| region.clone()).collect();
        let mut accesses = Vec::new();
        for op in vmkit_fuzzing::ops_for_regions(recording, &regions) {
            let (count, access) = match op {
                vmkit_fuzzing::Op::Access(access) => (1, access),
                vmkit_fuzzing::Op::Burst { count, access } => (count, access),
                other => unreachable!("a recording makes accesses only: {other:?}"),
            };
            let index = usize::from(access.region);
            let region = &regions[index];
            let (space, last) = match region.space {
                HarnessSpace::Pio => (Space::Pio, u64::from(u16::MAX)),
                HarnessSpace::Mmio => (Space::Mmio, u64::MAX),
                HarnessSpace::PciConfig | HarnessSpace::PciBar(_) => {
                    unreachable!("the VMM's ranges are port and MMIO ranges")
                }
            };
            let Some(addr) = access.offset.address(region.base, region.len, last) else {
                continue;
            };
            let op = match access.read {
                Some(size) => Op::Read {
                    space,
                    addr: Addr::Raw(addr),
                    size,
                },
                None => Op::Write {
                    space,
                    addr: Addr::Raw(addr),
                    data: access.data,
                },
            };
            for _ in 0..count {
                accesses.push((index, op.clone()));
            }
        }
        let register = |index: usize| {
            let (region, stop_on_write) = &ranges[index];
            let space = match region.space {
                HarnessSpace::Pio => Space::Pio,
                HarnessSpace::Mmio => Space::Mmio,
                HarnessSpace::PciConfig | HarnessSpace::PciBar(_) => {
                    unreachable!("the VMM's ranges are port and MMIO ranges")
                }
            };
            Op::Register {
                space,
                base: Addr::Raw(region.base),
                len: region.len as u32,
                named: true,
                stop_on_write: *stop_on_write,
            }
        };
        let mut inputs = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let (mut used, mut ops): (Vec<usize>, Vec<Op>) = (Vec::new(), Vec::new());
        let mut finish = |used: &mut Vec<usize>, ops: &mut Vec<Op>| {
            let accesses = ops.iter().map(|op| match op {
                Op::Write { space, addr, data } => {
                    format!("{space:?} {addr:?} write {}", data.len())
                }
                other => format!("{other:?}"),
            });
            let novel = seed_files::novel(&mut seen, accesses);
            let mut input: Vec<Op> = used.drain(..).map(register).collect();
            input.append(ops);
            if novel {
                inputs.push(encode(&input));
            }
        };
        for (index, op) in accesses {
            let mut more = Vec::new();
            if !used.contains(&index) {
                register(index).encode(&mut more);
            }
            op.encode(&mut more);
            let len = encode(&used.iter().map(|&i| register(i)).collect::<Vec<_>>()).len()
                + encode(&ops).len();
            if used.len() + ops.len() == MAX_OPS || len + more.len() > max_len {
                finish(&mut used, &mut ops);
            }
            if !used.contains(&index) {
                used.push(index);
            }
            ops.push(op);
        }
        finish(&mut used, &mut ops);
        inputs
    }

    /// The seeds taken from the committed recordings.
    fn recorded_seeds() -> Vec<(String, Vec<u8>)> {
        let max_len = seed_files::recorded_seed_len(&seeds());
        seed_files::recorded(|recording| recorded_inputs(recording, max_len))
    }

    /// Every seed: the written ones and the recorded ones.
    fn all_seeds() -> Vec<(String, Vec<u8>)> {
        seed_files::all(seeds(), recorded_seeds())
    }

    #[test]
    fn seeds_round_trip_and_pass() {
        for (name, bytes) in seeds() {
            let ops = parse(&bytes);
            assert_eq!(encode(&ops), bytes, "{name}");
            run(&bytes);
        }
    }

    #[test]
    fn committed_seeds_replay() {
        seed_files::replay("exit_dispatch", &seed_files::named(&all_seeds()), true, run);
    }

    #[test]
    fn recorded_seeds_register_the_ranges_they_reach() {
        let recorded = recorded_seeds();
        assert!(recorded.iter().any(|(name, _)| name == "recorded-blk-0"));
        for (name, bytes) in &recorded {
            let ops = parse(bytes);
            // The ranges first, then the accesses.
            let registered = ops
                .iter()
                .take_while(|op| matches!(op, Op::Register { .. }))
                .count();
            assert!(registered > 0, "{name}");
            assert!(
                ops[registered..]
                    .iter()
                    .all(|op| matches!(op, Op::Read { .. } | Op::Write { .. }))
            );
            run(bytes);
        }
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        seed_files::odd_inputs(run);
    }

    /// Writes the seed files; run with `cargo test -- --ignored write_seeds`.
    #[test]
    #[ignore]
    fn write_seeds() {
        seed_files::write("exit_dispatch", &seed_files::named(&all_seeds()));
    }
}
