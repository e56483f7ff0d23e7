//! Fuzz surface `testdev`: QEMU's pc-testdev (scratch register, page-flush port, interrupt lines,
//! 64 KiB of scratch memory) on vmkit-fuzzing's device harness: guest reads and writes through
//! the port and MMIO buses and handed to the device directly (any size and offset), with
//! interrupt lines that fail one at a time as the fixture's own operation.
//!
//! The device is registered as a VMM registers it: the register ports and the interrupt-line
//! ports on the port bus, the scratch memory on the MMIO bus. Lines 0 to 23 are wired to the
//! harness's counting lines except every fourth one (3, 7, ...), which stays unwired.
//!
//! The device runs against a byte-wise reference model of `hw/misc/pc-testdev.c` as the device's
//! documentation states it. Checked after every operation, besides what the harness checks of
//! every device (no panic):
//!
//! - every read fills the whole buffer with what the model says (the scratch register in its
//!   byte lanes, 0 for the flush and interrupt ports, scratch memory, 0xFF past everything):
//!   the harness's comparison with the model;
//! - every write continues the VM: the model answers `Resume` to every write;
//! - every write changes exactly what the model changes: the scratch register, the level of
//!   each wired line (a one-byte write to a wired line that does not fail) and, through reads
//!   and the VMM's own view of it (`read_iomem` of the last bytes and past the end, after every
//!   write to it), scratch memory: [`Fixture::check`];
//! - the work of each exit is bounded: at most one interrupt-line call per access, whatever
//!   the access ([`Fixture::max_line_calls_per_access`]);
//! - the device's counters (accesses, ignored bytes, page flushes, interrupt writes) match the
//!   model's: [`Fixture::check`].
//!
//! The fixture's own operation ([`FAIL_LINE`]) makes one line fail or succeed again; the
//! harness's `FailInterrupts` does it to all of them at once, and the model hears of both.

use std::cell::Cell;
use std::sync::Arc;

use vmkit_devices::PcTestDev;
use vmkit_devices::testdev::{
    FLUSH_PAGE_PORT, IOMEM_BASE, IOMEM_SIZE, IRQ_LINE_COUNT, IRQ_LINE_PORT, IRQ_LINE_PORTS,
    REGISTER_PORTS, SCRATCH_BYTE_PORT, SCRATCH_PORT,
};
use vmkit_exits::DeviceAction;
use vmkit_fuzzing::{Access, DeviceFuzzer, Fixture, Line, Offset, Op, Setup, encode};

/// The fixture's own operation (any tag: it is the only one): line `data[0]` (modulo 24)
/// starts failing when bit 0 of `data[1]` is set, and stops otherwise (missing bytes read 0).
pub const FAIL_LINE: u8 = 0;

/// The regions, in the order the fixture registers them.
const REGISTERS: usize = 0;
const LINES: usize = 1;
const IOMEM: usize = 2;

const LINE_COUNT: usize = IRQ_LINE_COUNT as usize;

/// The model's scratch memory comes in pages of this many bytes.
const PAGE: usize = 0x1000;
const IOMEM_PAGES: usize = IOMEM_SIZE as usize / PAGE;

/// Whether line `n` is wired.
fn wired(line: usize) -> bool {
    line % 4 != 3
}

/// The first port of port region `region`.
fn port_base(region: usize) -> u16 {
    if region == LINES {
        IRQ_LINE_PORT
    } else {
        SCRATCH_PORT
    }
}

/// The reference model: the device's state and the counters it must report.
#[derive(Debug)]
pub struct TestDevModel {
    scratch: u32,
    /// Scratch memory in pages, each allocated at its first write (the device's memory starts
    /// zeroed): an input pays for the pages it writes, not for 64 KiB.
    pages: [Option<Box<[u8]>>; IOMEM_PAGES],
    levels: [bool; LINE_COUNT],
    failing: [bool; LINE_COUNT],
    /// Port accesses: reads, writes, ignored bytes or writes.
    pio: (u64, u64, u64),
    /// Scratch-memory accesses: reads, writes, ignored bytes.
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

fn irq_line(port: u32) -> Option<usize> {
    let ports = u32::from(IRQ_LINE_PORTS.start)..u32::from(IRQ_LINE_PORTS.end);
    ports
        .contains(&port)
        .then(|| (port - u32::from(IRQ_LINE_PORT)) as usize)
}

impl TestDevModel {
    fn new() -> Self {
        Self {
            scratch: 0,
            pages: Default::default(),
            levels: [false; LINE_COUNT],
            failing: [false; LINE_COUNT],
            pio: (0, 0, 0),
            mmio: (0, 0, 0),
            page_flushes: 0,
            irq_writes: 0,
        }
    }

    /// The port byte `offset` of port region `region` stands for: the device adds the offset
    /// to its range's base without wrapping.
    fn port(region: usize, offset: u64) -> u32 {
        // Port offsets fit 16 bits: the harness truncates them to the port space.
        u32::from(port_base(region)) + u32::from(offset as u16)
    }

    fn pio_read(&mut self, start: u32, data: &mut [u8]) {
        self.pio.0 += 1;
        if irq_line(start).is_some() {
            data.fill(0);
            return;
        }
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = match reg(start.saturating_add(i as u32)) {
                Reg::Lane(shift) => (self.scratch >> shift) as u8,
                Reg::Flush => 0,
                Reg::Nothing => {
                    self.pio.2 += 1;
                    0xFF
                }
            };
        }
    }

    fn pio_write(&mut self, start: u32, data: &[u8]) {
        self.pio.1 += 1;
        if let Some(line) = irq_line(start) {
            match data {
                [level] if wired(line) && !self.failing[line] => {
                    self.levels[line] = *level != 0;
                    self.irq_writes += 1;
                }
                _ => self.pio.2 += 1,
            }
            return;
        }
        if start == u32::from(FLUSH_PAGE_PORT) && data.len() == 4 {
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

    /// The byte of scratch memory at `at` (inside it).
    fn iomem(&self, at: usize) -> u8 {
        self.pages[at / PAGE]
            .as_ref()
            .map_or(0, |page| page[at % PAGE])
    }

    /// The last bytes of scratch memory.
    fn mmio_tail(&self, tail: &mut [u8; 8]) {
        for (i, byte) in tail.iter_mut().enumerate() {
            *byte = self.iomem(IOMEM_SIZE as usize - 8 + i);
        }
    }

    fn mmio_read(&mut self, offset: u64, data: &mut [u8]) {
        self.mmio.0 += 1;
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = match Self::index(offset, i) {
                Some(at) => self.iomem(at),
                None => {
                    self.mmio.2 += 1;
                    0xFF
                }
            };
        }
    }

    fn mmio_write(&mut self, offset: u64, data: &[u8]) {
        self.mmio.1 += 1;
        for (i, &byte) in data.iter().enumerate() {
            match Self::index(offset, i) {
                Some(at) => {
                    let page = self.pages[at / PAGE].get_or_insert_with(|| vec![0; PAGE].into());
                    page[at % PAGE] = byte;
                }
                None => self.mmio.2 += 1,
            }
        }
    }
}

impl vmkit_fuzzing::Model for TestDevModel {
    fn read(&mut self, region: usize, offset: u64, data: &mut [u8]) {
        match region {
            IOMEM => self.mmio_read(offset, data),
            _ => self.pio_read(Self::port(region, offset), data),
        }
    }

    fn write(&mut self, region: usize, offset: u64, data: &[u8]) -> DeviceAction {
        match region {
            IOMEM => self.mmio_write(offset, data),
            _ => self.pio_write(Self::port(region, offset), data),
        }
        DeviceAction::Resume
    }

    fn user_op(&mut self, _tag: u8, data: &[u8]) -> u64 {
        let (line, failing) = fail_line(data);
        self.failing[line] = failing;
        0
    }

    fn fail_interrupts(&mut self, failing: bool) {
        self.failing = [failing; LINE_COUNT];
    }
}

/// The line and the failing state a [`FAIL_LINE`] operation names.
fn fail_line(data: &[u8]) -> (usize, bool) {
    let line = usize::from(data.first().copied().unwrap_or(0)) % LINE_COUNT;
    let failing = data.get(1).is_some_and(|b| b & 1 == 1);
    (line, failing)
}

/// The device on both buses, its wired lines on the harness's counting lines.
pub struct TestDevFixture;

/// One instance: the device and its lines (`None` where unwired).
pub struct TestDevDevices {
    /// The model's count of memory writes when the VMM's view of scratch memory was last
    /// checked: only writes change it.
    iomem_checked: Cell<Option<u64>>,
    device: Arc<PcTestDev>,
    lines: [Option<Line>; LINE_COUNT],
}

impl Fixture for TestDevFixture {
    type Devices = TestDevDevices;
    type Model = TestDevModel;

    fn build(&self, setup: &mut Setup) -> TestDevDevices {
        let mut device = PcTestDev::new();
        let mut lines: [Option<Line>; LINE_COUNT] = Default::default();
        for (n, slot) in (0..IRQ_LINE_COUNT).zip(&mut lines) {
            if wired(usize::from(n)) {
                let line = setup.interrupt();
                device = match device.with_irq_line(n, line.clone()) {
                    Ok(device) => device,
                    Err(e) => panic!("fixture: {e}"),
                };
                *slot = Some(line);
            }
        }
        let device = Arc::new(device);
        let register_ports = REGISTER_PORTS.end - REGISTER_PORTS.start;
        let line_ports = IRQ_LINE_PORTS.end - IRQ_LINE_PORTS.start;
        setup.pio("registers", SCRATCH_PORT, register_ports, device.clone());
        setup.pio("irq_lines", IRQ_LINE_PORT, line_ports, device.clone());
        setup.mmio("iomem", IOMEM_BASE, IOMEM_SIZE, device.clone());
        TestDevDevices {
            iomem_checked: Cell::new(None),
            device,
            lines,
        }
    }

    fn model(&self) -> TestDevModel {
        TestDevModel::new()
    }

    fn user_op(&self, devices: &TestDevDevices, _tag: u8, data: &[u8]) -> u64 {
        let (line, failing) = fail_line(data);
        if let Some(line) = &devices.lines[line] {
            line.set_failing(failing);
        }
        0
    }

    fn check(&self, devices: &TestDevDevices, m: &TestDevModel) {
        let stats = devices.device.stats();
        assert_eq!(devices.device.scratch(), m.scratch);
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
        for (n, line) in devices.lines.iter().enumerate() {
            if let Some(line) = line {
                assert_eq!(line.is_asserted(), m.levels[n], "line {n}");
            }
        }
        // The VMM's view of scratch memory, after every write to it: the last bytes, and open
        // bus past the end.
        if devices.iomem_checked.replace(Some(m.mmio.1)) != Some(m.mmio.1) {
            let mut tail = [0u8; 16];
            devices.device.read_iomem(IOMEM_SIZE - 8, &mut tail);
            let mut expected = [0u8; 8];
            m.mmio_tail(&mut expected);
            assert_eq!(tail[..8], expected);
            assert_eq!(tail[8..], [0xFF; 8]);
        }
    }

    fn max_line_calls_per_access(&self) -> u64 {
        1
    }
}

/// Target body.
pub fn run(data: &[u8]) {
    DeviceFuzzer::new(TestDevFixture).run(data);
}

/// Named seed inputs: small, meaningful scenarios that reach every register and answer.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let regs = REGISTERS as u8;
    let lines = LINES as u8;
    let iomem = IOMEM as u8;
    // Through the buses, as a guest's accesses reach the device in a VMM.
    let r = |region, offset, size| Op::Access(Access::read_at(region, offset, size));
    let w = |region, offset, data: &[u8]| Op::Access(Access::write_at(region, offset, data));
    // Handed to the device directly: any size, any offset.
    let dr = |region, offset, size| Op::Direct(Access::read_at(region, offset, size));
    let dw = |region, offset, data: &[u8]| Op::Direct(Access::write_at(region, offset, data));
    let at = Offset::FromStart;
    let line_fails = |line: u8, failing: bool| Op::User {
        tag: FAIL_LINE,
        data: vec![line, u8::from(failing)],
    };
    // Register offsets: 0 is the scratch register, 4 the flush port, 8 the byte-wise scratch
    // register; line offset n drives line n.
    let scratch_every_size = vec![
        w(regs, at(0), &[0x78, 0x56, 0x34, 0x12]),
        r(regs, at(0), 4),
        r(regs, at(2), 2),
        r(regs, at(3), 1),
        w(regs, at(1), &[0xCD, 0xAB]),
        r(regs, at(0), 8),
        w(regs, at(8), &[1, 2, 3, 4]),
        r(regs, at(8), 4),
        w(regs, at(11), &[0xFF]),
        r(regs, at(0), 4),
        dw(regs, at(9), &[0xA1, 0xA2, 0xA3]),
        dr(regs, at(7), 6),
    ];
    let page_flush = vec![
        w(regs, at(4), &0x1234_5000u32.to_le_bytes()),
        w(regs, at(4), &[1, 2]),
        dw(regs, at(5), &[1, 2, 3]),
        r(regs, at(4), 4),
        w(regs, at(2), &[0x30, 0x40, 0x50, 0x60]),
        r(regs, at(4), 8),
        dw(regs, at(4), &0x1234_6000u64.to_le_bytes()),
    ];
    let irq_lines = vec![
        w(lines, at(0), &[1]),
        w(lines, at(0), &[0]),
        w(lines, at(5), &[7]),
        r(lines, at(5), 4),
        w(lines, at(5), &[1, 0]),
        w(lines, at(3), &[1]),
        w(lines, at(23), &[1]),
        // Just past the last line: no longer a line port.
        dw(lines, at(24), &[1]),
        line_fails(5, true),
        w(lines, at(5), &[0]),
        line_fails(5, false),
        w(lines, at(5), &[0]),
    ];
    let lines_fail_together = vec![
        w(lines, at(1), &[1]),
        Op::FailInterrupts(true),
        w(lines, at(1), &[0]),
        w(lines, at(2), &[1]),
        line_fails(2, false),
        w(lines, at(2), &[1]),
        Op::FailInterrupts(false),
        w(lines, at(1), &[0]),
        Op::Burst {
            count: 8,
            access: Access::write_at(lines, at(6), &[1]),
        },
        Op::Reset,
        r(lines, at(6), 1),
        w(lines, at(6), &[0]),
    ];
    let iomem_edges = vec![
        w(iomem, at(0x10), &0x1122_3344_5566_7788u64.to_le_bytes()),
        w(iomem, at(0x11), &[0xEE]),
        r(iomem, at(0x10), 4),
        r(iomem, at(0x10), 8),
        // Straddling the end: the bus routes none of these.
        w(iomem, Offset::BeforeEnd(0), &[1, 2, 3, 4]),
        r(iomem, Offset::BeforeEnd(3), 8),
        r(iomem, Offset::BeforeEnd(3), 4),
        // Handed to the device: the bytes inside count, the rest is open bus.
        dw(iomem, Offset::BeforeEnd(0), &[1, 2, 3, 4]),
        dr(iomem, Offset::BeforeEnd(3), 8),
        dr(iomem, Offset::Absolute(u64::MAX), 4),
        dw(iomem, Offset::Absolute(u64::MAX - 1), &[9; 8]),
        dw(iomem, Offset::BeforeEnd(3), &[5; 8]),
        dr(iomem, Offset::BeforeEnd(3), 8),
        dr(iomem, Offset::BeforeStart(0), 2),
    ];
    // Odd sizes at odd ports, in seeds of two places each: libFuzzer's first length limit is
    // the longest seed's length, and longer inputs make fewer runs.
    let odd_ports = |places: [(u8, Offset); 2]| {
        let mut ops = Vec::new();
        for (region, offset) in places {
            for size in [0, 1, 3, 8] {
                ops.push(dr(region, offset, size));
            }
            ops.push(dw(region, offset, &[]));
            ops.push(dw(region, offset, &[1, 2, 3, 4, 5]));
            ops.push(r(region, offset, 1));
            ops.push(w(region, offset, &[1, 2]));
        }
        encode(&ops)
    };
    let odd_register_ports = odd_ports([(regs, at(12)), (regs, Offset::Absolute(0x1F))]);
    let odd_far_ports = odd_ports([
        (regs, Offset::BeforeStart(0)),
        (regs, Offset::Absolute(0xFFFF)),
    ]);
    let odd_line_ports = odd_ports([
        (lines, Offset::Absolute(0x1F)),
        (lines, Offset::BeforeStart(0)),
    ]);
    let odd_last_line_port = odd_ports([(lines, Offset::BeforeEnd(0)), (lines, at(24))]);
    vec![
        ("scratch_every_size", encode(&scratch_every_size)),
        ("page_flush", encode(&page_flush)),
        ("irq_lines", encode(&irq_lines)),
        ("lines_fail_together", encode(&lines_fail_together)),
        ("iomem_edges", encode(&iomem_edges)),
        ("odd_register_ports", odd_register_ports),
        ("odd_far_ports", odd_far_ports),
        ("odd_line_ports", odd_line_ports),
        ("odd_last_line_port", odd_last_line_port),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed_files;

    /// The seeds taken from the committed recordings: each guest's accesses to the devices'
    /// regions, through the buses, as the fixture registers them.
    fn recorded_seeds() -> Vec<(String, Vec<u8>)> {
        let mut setup = vmkit_fuzzing::Setup::default();
        TestDevFixture.build(&mut setup);
        let max_len = seed_files::recorded_seed_len(&seeds());
        seed_files::recorded(|recording| {
            let ops = vmkit_fuzzing::ops_for_regions(recording, setup.regions());
            seed_files::harness_inputs(&ops, max_len)
        })
    }

    /// Every seed: the written ones and the recorded ones.
    fn all_seeds() -> Vec<(String, Vec<u8>)> {
        seed_files::all(seeds(), recorded_seeds())
    }

    fn seed(name: &str) -> Vec<Op> {
        let (_, bytes) = seeds().into_iter().find(|(n, _)| *n == name).unwrap();
        vmkit_fuzzing::decode(&bytes)
    }

    #[test]
    fn seeds_round_trip_and_pass() {
        for (name, bytes) in seeds() {
            let ops = vmkit_fuzzing::decode(&bytes);
            assert_eq!(encode(&ops), bytes, "{name}");
            run(&bytes);
        }
    }

    #[test]
    fn committed_seeds_replay() {
        seed_files::replay("testdev", &seed_files::named(&all_seeds()), true, run);
    }

    #[test]
    fn seeds_reach_the_lines_and_memory() {
        let fuzzer = DeviceFuzzer::new(TestDevFixture);
        fuzzer.run_ops_then(&seed("irq_lines"), |devices, _| {
            let line = |n: usize| devices.lines[n].as_ref().unwrap();
            assert_eq!(line(5).asserts(), 1);
            assert_eq!(
                line(5).deasserts(),
                1,
                "one deassert failed, one went through"
            );
            assert!(!line(0).is_asserted());
            assert!(devices.lines[3].is_none() && devices.lines[23].is_none());
            assert_eq!(devices.device.stats().irq_writes, 4);
        });
        fuzzer.run_ops_then(&seed("lines_fail_together"), |devices, _| {
            // After the reset: one read, one write that lowered line 6 again.
            assert_eq!(devices.device.stats().irq_writes, 1);
            assert!(!devices.lines[6].as_ref().unwrap().is_asserted());
        });
        fuzzer.run_ops_then(&seed("lines_fail_together")[..9], |devices, _| {
            let line = |n: usize| devices.lines[n].as_ref().unwrap();
            // Line 1 raised, then lowered only once the lines worked again; line 2 raised
            // while the others failed, the per-line operation having made it work.
            assert!(!line(1).is_asserted());
            assert_eq!((line(1).asserts(), line(1).deasserts()), (1, 1));
            assert!(line(2).is_asserted());
            assert!(line(6).is_asserted());
            assert_eq!(line(6).asserts(), 8);
        });
        fuzzer.run_ops_then(&seed("iomem_edges"), |devices, model| {
            let mut bytes = [0u8; 8];
            devices.device.read_iomem(0x10, &mut bytes);
            assert_eq!(bytes, [0x88, 0xEE, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]);
            devices.device.read_iomem(IOMEM_SIZE - 4, &mut bytes);
            assert_eq!(bytes, [5, 5, 5, 5, 0xFF, 0xFF, 0xFF, 0xFF]);
            // Routed accesses that straddle the end never reached the device.
            assert_eq!(model.mmio.1, 5);
        });
    }

    #[test]
    fn recorded_seeds_are_what_the_guests_did() {
        let recorded = recorded_seeds();
        let names: Vec<_> = recorded.iter().map(|(name, _)| name.as_str()).collect();
        // The exits guest drives the scratch register and memory; the hostile guest reads a
        // register and two line ports among its probes of every port.
        assert_eq!(names[..2], ["recorded-exits-0", "recorded-exits-1"]);
        assert_eq!(names.last(), Some(&"recorded-hostile-0"));
        let fuzzer = DeviceFuzzer::new(TestDevFixture);
        let (mut port_writes, mut memory_writes) = (0, 0);
        for (name, bytes) in &recorded {
            let ops = vmkit_fuzzing::decode(bytes);
            fuzzer.run_ops_then(&ops, |devices, model| {
                let stats = devices.device.stats();
                if name.starts_with("recorded-exits") {
                    port_writes += stats.pio.writes;
                    memory_writes += stats.mmio.writes;
                }
                assert_eq!(stats.mmio.writes, model.mmio.1);
            });
        }
        assert!(port_writes > 0 && memory_writes > 0);
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        seed_files::odd_inputs(run);
    }

    /// Writes the seed files; run with `cargo test -- --ignored write_seeds`.
    #[test]
    #[ignore]
    fn write_seeds() {
        seed_files::write("testdev", &seed_files::named(&all_seeds()));
    }
}
