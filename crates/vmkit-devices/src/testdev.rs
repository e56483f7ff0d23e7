//! A test device compatible with QEMU's `-device pc-testdev` (`hw/misc/pc-testdev.c`), so that the
//! same test guest behaves the same under QEMU and a vmkit VMM.
//!
//! The device decodes absolute ports, so the VMM registers it at [`REGISTER_PORTS`] and
//! [`IRQ_LINE_PORTS`] on its port bus, and at [`IOMEM_BASE`] (length [`IOMEM_SIZE`]) on its MMIO
//! bus; the MMIO side decodes offsets, so any base works there.
//!
//! | where | what | reads | writes |
//! |---|---|---|---|
//! | ports 0xE0–0xE3 | 32-bit scratch register, any access size | byte lane `port & 3` | byte lane `port & 3` |
//! | ports 0xE4–0xE7 | page flush | 0 | a 4-byte write at 0xE4 is counted ([`TestDevStats::page_flushes`]) |
//! | ports 0xE8–0xEB | the scratch register again, byte-wise | byte lane `port & 3` | byte lane `port & 3` |
//! | ports 0x2000–0x2017 | ISA interrupt lines 0–23 | 0 | a 1-byte write drives line `port - 0x2000` to `value != 0` |
//! | MMIO 64 KiB | scratch memory, zeroed | little-endian bytes | little-endian bytes |
//!
//! Wide and unaligned accesses are taken byte by byte, lowest byte first, which is what QEMU's
//! memory core makes of them: a 4-byte access at 0xE2 touches scratch lanes 2 and 3 and two flush
//! ports. QEMU's page flush `mprotect`s the page at the written address to make KVM fault it in
//! again; guest-visible state does not change, and vmkit devices never map guest memory, so here
//! the write is only counted. Interrupt lines are driven through [`InterruptTrigger`]s the VMM
//! wires with [`PcTestDev::with_irq_line`] (assert on a non-zero write, deassert on zero); a line
//! that is not wired, a write that is not 1 byte wide (QEMU accepts only those), and a failing
//! trigger are counted as ignored. Bytes outside every register read [`OPEN_BUS`] and ignore
//! writes.

use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use log::debug;
use vmkit_exits::{DeviceAction, MmioAddress, MmioDevice, PioAddress, PioDevice};

use crate::io::{IoCounters, IoStats, OPEN_BUS};
use crate::trigger::InterruptTrigger;

/// The 32-bit scratch register, accessed at any size.
pub const SCRATCH_PORT: u16 = 0xE0;
/// The page-flush port: a 4-byte write of a guest-physical address.
pub const FLUSH_PAGE_PORT: u16 = 0xE4;
/// The scratch register again, with accesses split into bytes.
pub const SCRATCH_BYTE_PORT: u16 = 0xE8;
/// The register ports: scratch, page flush and byte-wise scratch, four ports each.
pub const REGISTER_PORTS: Range<u16> = SCRATCH_PORT..SCRATCH_BYTE_PORT + 4;
/// The first interrupt-line port: port `IRQ_LINE_PORT + n` drives ISA line `n`.
pub const IRQ_LINE_PORT: u16 = 0x2000;
/// How many interrupt lines the device drives.
pub const IRQ_LINE_COUNT: u8 = 24;
/// The interrupt-line ports.
pub const IRQ_LINE_PORTS: Range<u16> = IRQ_LINE_PORT..IRQ_LINE_PORT + IRQ_LINE_COUNT as u16;
/// Where QEMU maps the scratch memory.
pub const IOMEM_BASE: u64 = 0xFF00_0000;
/// The size of the scratch memory.
pub const IOMEM_SIZE: u64 = 0x1_0000;

/// The device could not be built as asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, displaydoc::Display, thiserror::Error)]
#[ignore_extra_doc_attributes]
pub enum TestDevError {
    /// interrupt line {0} does not exist: the device drives lines 0 to 23
    NoSuchIrqLine(u8),
}

/// Counts of the guest's accesses to a [`PcTestDev`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TestDevStats {
    /// Port accesses.
    pub pio: IoStats,
    /// Scratch-memory accesses.
    pub mmio: IoStats,
    /// 4-byte writes to the page-flush port.
    pub page_flushes: u64,
    /// Interrupt-line writes that reached a trigger.
    pub irq_writes: u64,
}

/// What one port of the register block is.
enum Port {
    Scratch(u32),
    Flush,
    Unbacked,
}

fn decode(port: u32) -> Port {
    let lane = port & 3;
    match port & !3 {
        p if p == u32::from(SCRATCH_PORT) || p == u32::from(SCRATCH_BYTE_PORT) => {
            Port::Scratch(lane * 8)
        }
        p if p == u32::from(FLUSH_PAGE_PORT) => Port::Flush,
        _ => Port::Unbacked,
    }
}

/// QEMU's `pc-testdev`: a scratch register, scratch memory, a page-flush port and interrupt lines.
///
/// See the [module documentation](self) for the register map.
pub struct PcTestDev {
    scratch: AtomicU32,
    iomem: Mutex<Box<[u8]>>,
    irq_lines: Vec<Option<Box<dyn InterruptTrigger>>>,
    pio: IoCounters,
    mmio: IoCounters,
    page_flushes: AtomicU64,
    irq_writes: AtomicU64,
}

impl std::fmt::Debug for PcTestDev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcTestDev")
            .field("scratch", &self.scratch())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Default for PcTestDev {
    fn default() -> Self {
        Self::new()
    }
}

impl PcTestDev {
    /// A device with a zero scratch register, zeroed scratch memory and no interrupt line wired.
    pub fn new() -> Self {
        Self {
            scratch: AtomicU32::new(0),
            iomem: Mutex::new(vec![0; IOMEM_SIZE as usize].into_boxed_slice()),
            irq_lines: (0..IRQ_LINE_COUNT).map(|_| None).collect(),
            pio: IoCounters::default(),
            mmio: IoCounters::default(),
            page_flushes: AtomicU64::new(0),
            irq_writes: AtomicU64::new(0),
        }
    }

    /// This device with interrupt line `line` (0 to 23) driven through `trigger`.
    pub fn with_irq_line(
        mut self,
        line: u8,
        trigger: impl InterruptTrigger + 'static,
    ) -> Result<Self, TestDevError> {
        let slot = self
            .irq_lines
            .get_mut(usize::from(line))
            .ok_or(TestDevError::NoSuchIrqLine(line))?;
        *slot = Some(Box::new(trigger));
        Ok(self)
    }

    /// The scratch register's value.
    pub fn scratch(&self) -> u32 {
        self.scratch.load(Ordering::Acquire)
    }

    /// Copies scratch memory from `offset` into `buf`; bytes past the end read [`OPEN_BUS`].
    pub fn read_iomem(&self, offset: u64, buf: &mut [u8]) {
        let iomem = self.iomem.lock().unwrap_or_else(PoisonError::into_inner);
        for (i, byte) in buf.iter_mut().enumerate() {
            *byte = iomem_index(offset, i)
                .and_then(|at| iomem.get(at).copied())
                .unwrap_or(OPEN_BUS);
        }
    }

    /// Counts of the guest's accesses.
    pub fn stats(&self) -> TestDevStats {
        TestDevStats {
            pio: self.pio.snapshot(),
            mmio: self.mmio.snapshot(),
            page_flushes: self.page_flushes.load(Ordering::Relaxed),
            irq_writes: self.irq_writes.load(Ordering::Relaxed),
        }
    }

    fn read_registers(&self, start: u32, data: &mut [u8]) {
        let scratch = self.scratch();
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = match decode(start.saturating_add(i as u32)) {
                Port::Scratch(shift) => (scratch >> shift) as u8,
                Port::Flush => 0,
                Port::Unbacked => {
                    self.pio.ignored();
                    OPEN_BUS
                }
            };
        }
    }

    fn write_registers(&self, start: u32, data: &[u8]) {
        if start == u32::from(FLUSH_PAGE_PORT) && data.len() == 4 {
            self.page_flushes.fetch_add(1, Ordering::Relaxed);
            debug!(
                "pc-testdev: page flush of {:#x} (no host mapping to flush)",
                u32::from_le_bytes([data[0], data[1], data[2], data[3]])
            );
            return;
        }
        let (mut mask, mut value) = (0u32, 0u32);
        for (i, &byte) in data.iter().enumerate() {
            match decode(start.saturating_add(i as u32)) {
                Port::Scratch(shift) => {
                    mask |= 0xFF << shift;
                    value = (value & !(0xFF << shift)) | (u32::from(byte) << shift);
                }
                Port::Flush | Port::Unbacked => self.pio.ignored(),
            }
        }
        if mask != 0 {
            // The closure always returns `Some`, so the update cannot fail.
            let _ = self
                .scratch
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                    Some((old & !mask) | value)
                });
        }
    }

    fn write_irq_line(&self, port: u32, data: &[u8]) {
        let line = port.wrapping_sub(u32::from(IRQ_LINE_PORT));
        let trigger = usize::try_from(line)
            .ok()
            .and_then(|line| self.irq_lines.get(line))
            .and_then(Option::as_ref);
        let (Some(trigger), [level]) = (trigger, data) else {
            self.pio.ignored();
            return;
        };
        let result: io::Result<()> = if *level != 0 {
            trigger.assert()
        } else {
            trigger.deassert()
        };
        match result {
            Ok(()) => {
                self.irq_writes.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => {
                self.pio.ignored();
                debug!("pc-testdev: interrupt line {line} not driven: {err}");
            }
        }
    }
}

/// The index into scratch memory of byte `i` of an access at `offset`, if it lies inside.
fn iomem_index(offset: u64, i: usize) -> Option<usize> {
    let at = offset.checked_add(i as u64)?;
    if at < IOMEM_SIZE {
        usize::try_from(at).ok()
    } else {
        None
    }
}

fn in_irq_ports(port: u32) -> bool {
    (u32::from(IRQ_LINE_PORTS.start)..u32::from(IRQ_LINE_PORTS.end)).contains(&port)
}

impl PioDevice for PcTestDev {
    fn pio_read(&self, base: PioAddress, offset: u16, data: &mut [u8]) {
        self.pio.read();
        let port = u32::from(base.0) + u32::from(offset);
        if in_irq_ports(port) {
            data.fill(0);
        } else {
            self.read_registers(port, data);
        }
    }

    fn pio_write(&self, base: PioAddress, offset: u16, data: &[u8]) -> DeviceAction {
        self.pio.write();
        let port = u32::from(base.0) + u32::from(offset);
        if in_irq_ports(port) {
            self.write_irq_line(port, data);
        } else {
            self.write_registers(port, data);
        }
        DeviceAction::Resume
    }
}

impl MmioDevice for PcTestDev {
    fn mmio_read(&self, _base: MmioAddress, offset: u64, data: &mut [u8]) {
        self.mmio.read();
        let iomem = self.iomem.lock().unwrap_or_else(PoisonError::into_inner);
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = match iomem_index(offset, i).and_then(|at| iomem.get(at)) {
                Some(&value) => value,
                None => {
                    self.mmio.ignored();
                    OPEN_BUS
                }
            };
        }
    }

    fn mmio_write(&self, _base: MmioAddress, offset: u64, data: &[u8]) -> DeviceAction {
        self.mmio.write();
        let mut iomem = self.iomem.lock().unwrap_or_else(PoisonError::into_inner);
        for (i, &value) in data.iter().enumerate() {
            match iomem_index(offset, i).and_then(|at| iomem.get_mut(at)) {
                Some(byte) => *byte = value,
                None => self.mmio.ignored(),
            }
        }
        DeviceAction::Resume
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::trigger::CountingTrigger;

    fn read(dev: &PcTestDev, port: u16, len: usize) -> Vec<u8> {
        let mut data = vec![0xAA; len];
        dev.pio_read(PioAddress(port), 0, &mut data);
        data
    }

    fn write(dev: &PcTestDev, port: u16, data: &[u8]) {
        assert_eq!(
            dev.pio_write(PioAddress(port), 0, data),
            DeviceAction::Resume
        );
    }

    #[test]
    fn scratch_register_round_trips_at_every_size() {
        let dev = PcTestDev::new();
        assert_eq!(read(&dev, SCRATCH_PORT, 4), [0; 4]);
        write(&dev, SCRATCH_PORT, &[0x78, 0x56, 0x34, 0x12]);
        assert_eq!(dev.scratch(), 0x1234_5678);
        assert_eq!(read(&dev, SCRATCH_PORT, 4), [0x78, 0x56, 0x34, 0x12]);
        assert_eq!(read(&dev, SCRATCH_PORT + 2, 2), [0x34, 0x12]);
        assert_eq!(read(&dev, SCRATCH_PORT + 3, 1), [0x12]);
        write(&dev, SCRATCH_PORT + 1, &[0xCD, 0xAB]);
        assert_eq!(dev.scratch(), 0x12AB_CD78);
        write(&dev, SCRATCH_PORT, &[0xEF]);
        assert_eq!(dev.scratch(), 0x12AB_CDEF);
    }

    #[test]
    fn byte_port_is_the_same_register() {
        let dev = PcTestDev::new();
        write(&dev, SCRATCH_BYTE_PORT, &[1, 2, 3, 4]);
        assert_eq!(dev.scratch(), 0x0403_0201);
        assert_eq!(read(&dev, SCRATCH_PORT, 4), [1, 2, 3, 4]);
        write(&dev, SCRATCH_BYTE_PORT + 3, &[0xFF]);
        assert_eq!(read(&dev, SCRATCH_BYTE_PORT, 4), [1, 2, 3, 0xFF]);
    }

    #[test]
    fn accesses_across_registers_go_byte_by_byte() {
        let dev = PcTestDev::new();
        write(&dev, SCRATCH_PORT, &[1, 2, 3, 4]);
        // Lanes 2 and 3 of the scratch register, then two flush ports (read 0, ignore writes).
        assert_eq!(read(&dev, SCRATCH_PORT + 2, 4), [3, 4, 0, 0]);
        write(&dev, SCRATCH_PORT + 2, &[0x30, 0x40, 0x50, 0x60]);
        assert_eq!(dev.scratch(), 0x4030_0201);
        assert_eq!(dev.stats().pio.ignored, 2);
        assert_eq!(dev.stats().page_flushes, 0);
        // An 8-byte read from the flush port reaches the byte-wise scratch register.
        assert_eq!(
            read(&dev, FLUSH_PAGE_PORT, 8),
            [0, 0, 0, 0, 1, 2, 0x30, 0x40]
        );
    }

    #[test]
    fn page_flush_counts_only_four_byte_writes_at_its_port() {
        let dev = PcTestDev::new();
        write(&dev, FLUSH_PAGE_PORT, &0x1234_5000u32.to_le_bytes());
        assert_eq!(dev.stats().page_flushes, 1);
        write(&dev, FLUSH_PAGE_PORT, &[1, 2]);
        write(&dev, FLUSH_PAGE_PORT + 1, &[1, 2, 3]);
        assert_eq!(dev.stats().page_flushes, 1);
        assert_eq!(read(&dev, FLUSH_PAGE_PORT, 4), [0; 4]);
        assert_eq!(
            dev.scratch(),
            0,
            "flush writes never reach the scratch register"
        );
    }

    #[test]
    fn unbacked_ports_read_open_bus_and_ignore_writes() {
        let dev = PcTestDev::new();
        let past = REGISTER_PORTS.end;
        assert_eq!(read(&dev, past, 2), [OPEN_BUS; 2]);
        write(&dev, past, &[1, 2]);
        // The register block's last lane and the next port, which nothing backs.
        assert_eq!(read(&dev, past - 1, 2), [0, OPEN_BUS]);
        // Port 0xFFFF plus a wide access: positions past 0xFFFF belong to nothing.
        assert_eq!(read(&dev, 0xFFFF, 4), [OPEN_BUS; 4]);
        write(&dev, 0xFFFF, &[9; 8]);
        assert_eq!(dev.scratch(), 0);
        assert_eq!(dev.stats().pio.ignored, 2 + 2 + 1 + 4 + 8);
    }

    #[test]
    fn irq_lines_drive_their_triggers() {
        let line5 = Arc::new(CountingTrigger::new());
        let dev = PcTestDev::new().with_irq_line(5, line5.clone()).unwrap();
        write(&dev, IRQ_LINE_PORT + 5, &[1]);
        assert!(line5.is_asserted());
        write(&dev, IRQ_LINE_PORT + 5, &[0]);
        assert!(!line5.is_asserted());
        assert_eq!((line5.asserts(), line5.deasserts()), (1, 1));
        assert_eq!(dev.stats().irq_writes, 2);
        // Reads return 0 at any size.
        assert_eq!(read(&dev, IRQ_LINE_PORT + 5, 4), [0; 4]);
        // Wide writes, unwired lines and failing triggers are ignored and counted.
        write(&dev, IRQ_LINE_PORT + 5, &[1, 0]);
        write(&dev, IRQ_LINE_PORT + 6, &[1]);
        write(&dev, IRQ_LINE_PORTS.end - 1, &[1]);
        line5.set_failing(true);
        write(&dev, IRQ_LINE_PORT + 5, &[1]);
        assert_eq!(line5.asserts(), 1);
        let stats = dev.stats();
        assert_eq!((stats.irq_writes, stats.pio.ignored), (2, 4));
        assert_eq!((stats.pio.reads, stats.pio.writes), (1, 6));
    }

    #[test]
    fn irq_line_out_of_range_is_refused() {
        let err = PcTestDev::new()
            .with_irq_line(IRQ_LINE_COUNT, CountingTrigger::new())
            .unwrap_err();
        assert_eq!(err, TestDevError::NoSuchIrqLine(24));
        assert_eq!(
            err.to_string(),
            "interrupt line 24 does not exist: the device drives lines 0 to 23"
        );
        assert!(
            PcTestDev::new()
                .with_irq_line(IRQ_LINE_COUNT - 1, CountingTrigger::new())
                .is_ok()
        );
    }

    #[test]
    fn iomem_stores_little_endian_values_of_every_size() {
        let dev = PcTestDev::new();
        let mut data = [0xAAu8; 8];
        dev.mmio_read(MmioAddress(IOMEM_BASE), 0x100, &mut data);
        assert_eq!(data, [0; 8], "scratch memory starts zeroed");
        dev.mmio_write(
            MmioAddress(IOMEM_BASE),
            0x100,
            &0x1122_3344_5566_7788u64.to_le_bytes(),
        );
        dev.mmio_write(MmioAddress(IOMEM_BASE), 0x101, &[0xEE]);
        let mut word = [0u8; 4];
        dev.mmio_read(MmioAddress(IOMEM_BASE), 0x100, &mut word);
        assert_eq!(u32::from_le_bytes(word), 0x5566_EE88);
        let mut copy = [0u8; 2];
        dev.read_iomem(0x106, &mut copy);
        assert_eq!(copy, [0x22, 0x11]);
        let last = IOMEM_SIZE - 1;
        dev.mmio_write(MmioAddress(IOMEM_BASE), last, &[0x5A]);
        let mut byte = [0u8];
        dev.mmio_read(MmioAddress(IOMEM_BASE), last, &mut byte);
        assert_eq!(byte, [0x5A]);
        let stats = dev.stats().mmio;
        assert_eq!((stats.reads, stats.writes, stats.ignored), (3, 3, 0));
    }

    #[test]
    fn iomem_bytes_past_the_end_are_open_bus() {
        let dev = PcTestDev::new();
        let mut data = [0u8; 4];
        dev.mmio_write(MmioAddress(IOMEM_BASE), IOMEM_SIZE - 2, &[1, 2, 3, 4]);
        dev.mmio_read(MmioAddress(IOMEM_BASE), IOMEM_SIZE - 2, &mut data);
        assert_eq!(data, [1, 2, OPEN_BUS, OPEN_BUS]);
        dev.mmio_read(MmioAddress(IOMEM_BASE), u64::MAX, &mut data);
        assert_eq!(data, [OPEN_BUS; 4]);
        dev.mmio_write(MmioAddress(IOMEM_BASE), u64::MAX - 1, &[1; 8]);
        let mut copy = [0u8; 3];
        dev.read_iomem(u64::MAX, &mut copy);
        assert_eq!(copy, [OPEN_BUS; 3]);
        assert_eq!(dev.stats().mmio.ignored, 2 + 2 + 4 + 8);
    }

    #[test]
    fn concurrent_lane_writes_do_not_lose_bytes() {
        let dev = Arc::new(PcTestDev::new());
        let threads: Vec<_> = (0..4u16)
            .map(|lane| {
                let dev = dev.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        dev.pio_write(PioAddress(SCRATCH_BYTE_PORT), lane, &[lane as u8 + 1]);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(dev.scratch(), 0x0403_0201);
    }

    #[test]
    fn debug_output_names_the_state() {
        let dev = PcTestDev::default();
        write(&dev, SCRATCH_PORT, &[7]);
        let text = format!("{dev:?}");
        assert!(text.contains("scratch: 7"), "{text}");
    }

    #[test]
    fn fixed_addresses_match_qemu() {
        assert_eq!(REGISTER_PORTS, 0xE0..0xEC);
        assert_eq!(IRQ_LINE_PORTS, 0x2000..0x2018);
        assert_eq!((IOMEM_BASE, IOMEM_SIZE), (0xFF00_0000, 0x1_0000));
    }

    #[test]
    fn iomem_lies_in_the_hole_outside_the_windows_and_reserved_pages() {
        use vmkit_memory::GuestLayout;
        use vmkit_memory::layout::{
            IOAPIC_SIZE, IOAPIC_START, KVM_IDENTITY_MAP_START, LAPIC_SIZE, LAPIC_START,
            MMIO_HOLE_SIZE, MMIO_HOLE_START,
        };
        use vmkit_memory::vm_memory::GuestAddress;

        let end = IOMEM_BASE + IOMEM_SIZE;
        assert!(IOMEM_BASE >= MMIO_HOLE_START && end <= MMIO_HOLE_START + MMIO_HOLE_SIZE);
        for size in [128 << 20, 5 << 30] {
            let layout = GuestLayout::new(size).unwrap();
            assert!(!layout.is_ram(GuestAddress(IOMEM_BASE), 1));
            let window = layout.mmio32_window();
            let window_end = window.start.0 + window.size;
            assert!(
                IOMEM_BASE >= window_end,
                "the MMIO32 allocator never hands it out"
            );
            assert!(
                layout
                    .memory_map()
                    .iter()
                    .all(|e| e.end() <= IOMEM_BASE || e.addr >= end),
                "nothing else in the memory map overlaps it"
            );
        }
        for (start, size) in [(IOAPIC_START, IOAPIC_SIZE), (LAPIC_START, LAPIC_SIZE)] {
            assert!(start + size <= IOMEM_BASE);
        }
        assert!(end <= KVM_IDENTITY_MAP_START);
    }
}
