//! Fuzz surface `testdev`: arbitrary sequences of port and scratch-memory reads and writes of any
//! size and offset to QEMU's pc-testdev (scratch register, page-flush port, interrupt lines,
//! 64 KiB of scratch memory), interleaved with interrupt lines that start or stop failing.
//!
//! The device runs against a byte-wise reference model of `hw/misc/pc-testdev.c` as the device's
//! documentation states it. Checked after every operation: nothing panics; every read fills the
//! whole buffer with what the model says (the scratch register in its byte lanes, 0 for the
//! flush and interrupt ports, scratch memory, 0xFF past everything); every write continues the
//! VM and changes exactly what the model changes (a lane of the scratch register, a byte of
//! scratch memory, the level of a wired line on a one-byte write); the work of each exit is
//! bounded: at most one interrupt-line call, whatever the access; and the device's counters
//! (accesses, ignored bytes, page flushes, interrupt writes) match the model's.
//!
//! Lines 0 to 23 are wired to counting triggers except every fourth one (3, 7, ...), which
//! stays unwired. The input is a sequence of [`Op`]s in a small byte format (a tag byte, then
//! fields of one byte or little-endian integers, read with `arbitrary`'s primitives), so
//! [`encode`] writes seeds that decode to exactly the intended operations.

use std::sync::Arc;

use arbitrary::{Arbitrary, Unstructured};
use vmkit_devices::testdev::{
    FLUSH_PAGE_PORT, IOMEM_BASE, IOMEM_SIZE, IRQ_LINE_COUNT, IRQ_LINE_PORT, IRQ_LINE_PORTS,
    SCRATCH_BYTE_PORT, SCRATCH_PORT,
};
use vmkit_devices::{CountingTrigger, PcTestDev};
use vmkit_exits::{DeviceAction, MmioAddress, MmioDevice, PioAddress, PioDevice};

/// Most operations taken from one input.
pub const MAX_OPS: usize = 512;
/// Widest access an operation makes.
const MAX_ACCESS: u8 = 8;

/// The port a port code stands for: codes below 0x40 give the register block and the ports up
/// to 0xFF after it, 0x40..=0x7F the interrupt-line ports and the ones just past them,
/// 0x80..=0xBF the ports just before both blocks, 0xC0..=0xFF far ports (0xC0C0..=0xFFFF, so
/// accesses also run past port 0xFFFF).
pub fn port_of(code: u8) -> u16 {
    match code {
        0x00..=0x3F => SCRATCH_PORT + u16::from(code & 0x1F),
        0x40..=0x7F => IRQ_LINE_PORT + u16::from(code & 0x1F),
        0x80..=0x9F => SCRATCH_PORT - 1 - u16::from(code & 0x07),
        0xA0..=0xBF => IRQ_LINE_PORT - 1 - u16::from(code & 0x07),
        _ => u16::from_le_bytes([code, code]),
    }
}

/// The scratch-memory offset an offset code stands for: the first and last 0x80 bytes, or far
/// offsets up to `u64::MAX`.
pub fn offset_of(code: u16) -> u64 {
    match code >> 14 {
        0 => u64::from(code & 0x7F),
        1 => IOMEM_SIZE - 0x80 + u64::from(code & 0x7F),
        2 => u64::from(code & 0x3FFF) * 4,
        _ => u64::MAX - u64::from(code & 0xFF),
    }
}

/// One step of a fuzz input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A port read of `size` (0..=8) bytes.
    PioRead {
        /// The port code (see [`port_of`]).
        port: u8,
        /// How many bytes.
        size: u8,
    },
    /// A port write of `data` (0..=8 bytes).
    PioWrite {
        /// The port code (see [`port_of`]).
        port: u8,
        /// The bytes.
        data: Vec<u8>,
    },
    /// A scratch-memory read of `size` (0..=8) bytes.
    MmioRead {
        /// The offset code (see [`offset_of`]).
        offset: u16,
        /// How many bytes.
        size: u8,
    },
    /// A scratch-memory write of `data` (0..=8 bytes).
    MmioWrite {
        /// The offset code (see [`offset_of`]).
        offset: u16,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Interrupt line `line` (modulo 24) starts or stops failing.
    FailLine {
        /// The line.
        line: u8,
        /// Whether it fails from now on.
        failing: bool,
    },
}

const OP_KINDS: u8 = 5;

fn data(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
    let len = u8::arbitrary(u)? % (MAX_ACCESS + 1);
    Ok(u.bytes(usize::from(len))?.to_vec())
}

impl Op {
    fn read(u: &mut Unstructured<'_>) -> arbitrary::Result<Self> {
        Ok(match u8::arbitrary(u)? % OP_KINDS {
            0 => Op::PioRead {
                port: u8::arbitrary(u)?,
                size: u8::arbitrary(u)? % (MAX_ACCESS + 1),
            },
            1 => Op::PioWrite {
                port: u8::arbitrary(u)?,
                data: data(u)?,
            },
            2 => Op::MmioRead {
                offset: u16::arbitrary(u)?,
                size: u8::arbitrary(u)? % (MAX_ACCESS + 1),
            },
            3 => Op::MmioWrite {
                offset: u16::arbitrary(u)?,
                data: data(u)?,
            },
            _ => Op::FailLine {
                line: u8::arbitrary(u)?,
                failing: bool::arbitrary(u)?,
            },
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Op::PioRead { port, size } => out.extend_from_slice(&[0, *port, *size]),
            Op::PioWrite { port, data } => {
                out.extend_from_slice(&[1, *port, data.len() as u8]);
                out.extend_from_slice(data);
            }
            Op::MmioRead { offset, size } => {
                out.push(2);
                out.extend_from_slice(&offset.to_le_bytes());
                out.push(*size);
            }
            Op::MmioWrite { offset, data } => {
                out.push(3);
                out.extend_from_slice(&offset.to_le_bytes());
                out.push(data.len() as u8);
                out.extend_from_slice(data);
            }
            Op::FailLine { line, failing } => {
                out.extend_from_slice(&[4, *line, u8::from(*failing)])
            }
        }
    }
}

/// The operations an input decodes to (at most [`MAX_OPS`]; a truncated last operation is
/// dropped).
pub fn parse(data: &[u8]) -> Vec<Op> {
    crate::ops::decode(&mut Unstructured::new(data), MAX_OPS, Op::read)
}

/// The bytes that decode to `ops`.
pub fn encode(ops: &[Op]) -> Vec<u8> {
    crate::ops::encode(ops, Op::encode)
}

/// Whether line `n` is wired.
fn wired(line: u8) -> bool {
    line % 4 != 3
}

/// The reference model: the device's state and the counters it must report.
#[derive(Debug)]
struct Model {
    scratch: u32,
    iomem: Vec<u8>,
    levels: [bool; IRQ_LINE_COUNT as usize],
    failing: [bool; IRQ_LINE_COUNT as usize],
    pio: (u64, u64, u64),
    mmio: (u64, u64, u64),
    page_flushes: u64,
    irq_writes: u64,
}

/// What a byte at port position `position` of the register block is.
enum Reg {
    Lane(u32),
    Flush,
    Nothing,
}

fn reg(position: u32) -> Reg {
    let block = position & !3;
    if block == u32::from(SCRATCH_PORT) || block == u32::from(SCRATCH_BYTE_PORT) {
        Reg::Lane(8 * (position & 3))
    } else if block == u32::from(FLUSH_PAGE_PORT) {
        Reg::Flush
    } else {
        Reg::Nothing
    }
}

fn irq_line(port: u32) -> Option<u8> {
    let ports = u32::from(IRQ_LINE_PORTS.start)..u32::from(IRQ_LINE_PORTS.end);
    ports
        .contains(&port)
        .then(|| (port - u32::from(IRQ_LINE_PORT)) as u8)
}

impl Model {
    fn new() -> Self {
        Self {
            scratch: 0,
            iomem: vec![0; IOMEM_SIZE as usize],
            levels: [false; IRQ_LINE_COUNT as usize],
            failing: [false; IRQ_LINE_COUNT as usize],
            pio: (0, 0, 0),
            mmio: (0, 0, 0),
            page_flushes: 0,
            irq_writes: 0,
        }
    }

    fn pio_read(&mut self, port: u16, size: usize) -> Vec<u8> {
        self.pio.0 += 1;
        let start = u32::from(port);
        if irq_line(start).is_some() {
            return vec![0; size];
        }
        (0..size)
            .map(|i| match reg(start.saturating_add(i as u32)) {
                Reg::Lane(shift) => (self.scratch >> shift) as u8,
                Reg::Flush => 0,
                Reg::Nothing => {
                    self.pio.2 += 1;
                    0xFF
                }
            })
            .collect()
    }

    fn pio_write(&mut self, port: u16, data: &[u8]) {
        self.pio.1 += 1;
        let start = u32::from(port);
        if let Some(line) = irq_line(start) {
            let n = usize::from(line);
            match data {
                [level] if wired(line) && !self.failing[n] => {
                    self.levels[n] = *level != 0;
                    self.irq_writes += 1;
                }
                _ => self.pio.2 += 1,
            }
            return;
        }
        if port == FLUSH_PAGE_PORT && data.len() == 4 {
            self.page_flushes += 1;
            return;
        }
        for (i, &byte) in data.iter().enumerate() {
            match reg(start.saturating_add(i as u32)) {
                Reg::Lane(shift) => {
                    self.scratch = (self.scratch & !(0xFF << shift)) | (u32::from(byte) << shift)
                }
                Reg::Flush | Reg::Nothing => self.pio.2 += 1,
            }
        }
    }

    fn index(offset: u64, i: usize) -> Option<usize> {
        offset
            .checked_add(i as u64)
            .filter(|&at| at < IOMEM_SIZE)
            .map(|at| at as usize)
    }

    fn mmio_read(&mut self, offset: u64, size: usize) -> Vec<u8> {
        self.mmio.0 += 1;
        (0..size)
            .map(|i| match Self::index(offset, i) {
                Some(at) => self.iomem[at],
                None => {
                    self.mmio.2 += 1;
                    0xFF
                }
            })
            .collect()
    }

    fn mmio_write(&mut self, offset: u64, data: &[u8]) {
        self.mmio.1 += 1;
        for (i, &byte) in data.iter().enumerate() {
            match Self::index(offset, i) {
                Some(at) => self.iomem[at] = byte,
                None => self.mmio.2 += 1,
            }
        }
    }
}

struct Harness {
    device: PcTestDev,
    lines: Vec<Arc<CountingTrigger>>,
    model: Model,
}

impl Harness {
    fn new() -> Self {
        let lines: Vec<_> = (0..IRQ_LINE_COUNT)
            .map(|_| Arc::new(CountingTrigger::new()))
            .collect();
        let mut device = PcTestDev::new();
        for (n, line) in (0..IRQ_LINE_COUNT).zip(&lines) {
            if wired(n) {
                device = device
                    .with_irq_line(n, line.clone())
                    .expect("lines 0 to 23 exist");
            }
        }
        Self {
            device,
            lines,
            model: Model::new(),
        }
    }

    /// Interrupt-line calls so far, over all lines.
    fn line_calls(&self) -> u64 {
        self.lines
            .iter()
            .map(|l| l.edges() + l.asserts() + l.deasserts())
            .sum()
    }

    /// Runs one exit and checks its work: at most one interrupt-line call.
    fn exit(&mut self, op: &Op) {
        let before = self.line_calls();
        match op {
            Op::PioRead { port, size } => {
                let port = port_of(*port);
                let expected = self.model.pio_read(port, usize::from(*size));
                // Pre-filled with the complement of the answer: a byte left unwritten shows.
                let mut data: Vec<u8> = expected.iter().map(|b| !b).collect();
                self.device.pio_read(PioAddress(port), 0, &mut data);
                assert_eq!(data, expected, "port read of {size} bytes at {port:#x}");
            }
            Op::PioWrite { port, data } => {
                let port = port_of(*port);
                self.model.pio_write(port, data);
                // The bus hands the device its range's base and the offset into it.
                let base = port & !3;
                let action = self.device.pio_write(PioAddress(base), port - base, data);
                assert_eq!(action, DeviceAction::Resume);
            }
            Op::MmioRead { offset, size } => {
                let offset = offset_of(*offset);
                let expected = self.model.mmio_read(offset, usize::from(*size));
                let mut data: Vec<u8> = expected.iter().map(|b| !b).collect();
                self.device
                    .mmio_read(MmioAddress(IOMEM_BASE), offset, &mut data);
                assert_eq!(data, expected, "memory read of {size} bytes at {offset:#x}");
            }
            Op::MmioWrite { offset, data } => {
                let offset = offset_of(*offset);
                self.model.mmio_write(offset, data);
                let action = self
                    .device
                    .mmio_write(MmioAddress(IOMEM_BASE), offset, data);
                assert_eq!(action, DeviceAction::Resume);
            }
            Op::FailLine { line, failing } => {
                let n = usize::from(line % IRQ_LINE_COUNT);
                self.lines[n].set_failing(*failing);
                self.model.failing[n] = *failing;
            }
        }
        assert!(
            self.line_calls() - before <= 1,
            "{op:?}: more than one line call"
        );
    }

    fn check(&self) {
        let stats = self.device.stats();
        let m = &self.model;
        assert_eq!(self.device.scratch(), m.scratch);
        assert_eq!(
            (stats.pio.reads, stats.pio.writes, stats.pio.ignored),
            m.pio
        );
        assert_eq!(
            (stats.mmio.reads, stats.mmio.writes, stats.mmio.ignored),
            m.mmio
        );
        assert_eq!(stats.page_flushes, m.page_flushes);
        assert_eq!(stats.irq_writes, m.irq_writes);
        for (n, line) in self.lines.iter().enumerate() {
            assert_eq!(line.is_asserted(), m.levels[n], "line {n}");
        }
    }
}

/// Target body.
pub fn run(data: &[u8]) {
    let mut h = Harness::new();
    for op in parse(data) {
        h.exit(&op);
        h.check();
    }
    let mut copy = vec![0u8; 16];
    h.device.read_iomem(IOMEM_SIZE - 8, &mut copy);
    assert_eq!(&copy[..8], &h.model.iomem[IOMEM_SIZE as usize - 8..]);
    assert!(copy[8..].iter().all(|&b| b == 0xFF));
}

/// Named seed inputs: small, meaningful scenarios that reach every register and answer.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let pr = |port: u8, size| Op::PioRead { port, size };
    let pw = |port: u8, data: &[u8]| Op::PioWrite {
        port,
        data: data.to_vec(),
    };
    let mr = |offset, size| Op::MmioRead { offset, size };
    let mw = |offset, data: &[u8]| Op::MmioWrite {
        offset,
        data: data.to_vec(),
    };
    // Port codes: 0 is the scratch register, 4 the flush port, 8 the byte-wise scratch
    // register, 0x40 + n interrupt line n.
    let scratch_every_size = vec![
        pw(0, &[0x78, 0x56, 0x34, 0x12]),
        pr(0, 4),
        pr(2, 2),
        pr(3, 1),
        pw(1, &[0xCD, 0xAB]),
        pr(0, 8),
        pw(8, &[1, 2, 3, 4]),
        pr(8, 4),
        pw(11, &[0xFF]),
        pr(0, 4),
    ];
    let page_flush = vec![
        pw(4, &0x1234_5000u32.to_le_bytes()),
        pw(4, &[1, 2]),
        pw(5, &[1, 2, 3]),
        pr(4, 4),
        pw(2, &[0x30, 0x40, 0x50, 0x60]),
        pr(4, 8),
    ];
    let irq_lines = vec![
        pw(0x40, &[1]),
        pw(0x40, &[0]),
        pw(0x45, &[7]),
        pr(0x45, 4),
        pw(0x45, &[1, 0]),
        pw(0x43, &[1]),
        pw(0x57, &[1]),
        pw(0x58, &[1]),
        Op::FailLine {
            line: 5,
            failing: true,
        },
        pw(0x45, &[0]),
        Op::FailLine {
            line: 5,
            failing: false,
        },
        pw(0x45, &[0]),
    ];
    let iomem_edges = vec![
        mw(0x10, &0x1122_3344_5566_7788u64.to_le_bytes()),
        mw(0x11, &[0xEE]),
        mr(0x10, 4),
        mr(0x10, 8),
        mw(0x407F, &[1, 2, 3, 4]),
        mr(0x407C, 8),
        mr(0xC000, 4),
        mw(0xC001, &[9; 8]),
        mw(0x8000 | 0x3FFF, &[5; 8]),
        mr(0x8000 | 0x3FFF, 8),
    ];
    let mut odd_ports = Vec::new();
    for port in [0x1F, 0x3F, 0x7F, 0x80, 0x87, 0xA0, 0xC0, 0xFF] {
        for size in [0, 1, 3, 8] {
            odd_ports.push(pr(port, size));
        }
        odd_ports.push(pw(port, &[]));
        odd_ports.push(pw(port, &[1, 2, 3, 4, 5]));
    }
    vec![
        ("scratch_every_size", encode(&scratch_every_size)),
        ("page_flush", encode(&page_flush)),
        ("irq_lines", encode(&irq_lines)),
        ("iomem_edges", encode(&iomem_edges)),
        ("odd_ports", encode(&odd_ports)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed_files;

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
        seed_files::replay("testdev", &seeds(), true, run);
    }

    #[test]
    fn seeds_reach_the_lines_and_memory() {
        let (_, bytes) = seeds()
            .into_iter()
            .find(|(n, _)| *n == "irq_lines")
            .unwrap();
        let mut h = Harness::new();
        for op in parse(&bytes) {
            h.exit(&op);
        }
        h.check();
        assert_eq!(h.lines[5].asserts(), 1);
        assert_eq!(
            h.lines[5].deasserts(),
            1,
            "one deassert failed, one went through"
        );
        assert!(!h.lines[0].is_asserted());
        assert_eq!(h.device.stats().irq_writes, 4);
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        run(&[]);
        run(&[0xff; 64]);
        run(&(0..=255).collect::<Vec<u8>>());
        for tag in 0..=255u8 {
            run(&[tag]);
            run(&[tag, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        }
    }

    #[test]
    fn codes_cover_both_blocks_and_far_addresses() {
        assert_eq!(port_of(0), SCRATCH_PORT);
        assert_eq!(port_of(0x40), IRQ_LINE_PORT);
        assert_eq!(port_of(0x80), SCRATCH_PORT - 1);
        assert_eq!(port_of(0xA0), IRQ_LINE_PORT - 1);
        assert_eq!(port_of(0xFF), 0xFFFF);
        assert_eq!(offset_of(0x4000), IOMEM_SIZE - 0x80);
        assert_eq!(offset_of(0xC000), u64::MAX);
    }

    /// Writes the seed files; run with `cargo test -- --ignored write_seeds`.
    #[test]
    #[ignore]
    fn write_seeds() {
        seed_files::write("testdev", &seeds());
    }
}
