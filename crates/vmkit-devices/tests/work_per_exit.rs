//! The work one exit handler does is bounded by a constant no guest value can raise.
//!
//! Each device is driven with a storm of hostile accesses (every offset around its registers,
//! every access size, random values), and test doubles count, exit by exit, what the device did
//! to the world around it: bytes handed to its output, interrupt-line calls, clock reads, calls
//! into a PCI function or a virtio device model, bus changes, MSI-X messages. Each count stays
//! under the bound the crate's README states for the device. (virtio-blk's own bound, in
//! descriptors, memory accesses and disk calls per notification, is tested beside it.)

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmkit_devices::pci::{ConfigSpace, MutPciDevice, NUM_BARS, PciBar, PciBarKind, PciIds};
use vmkit_devices::virtio::{MsiRecorder, QueueError, VirtioInterrupt, VirtioPciInterrupts};
use vmkit_devices::{
    AcpiPmDevice, CmosRtc, CountingTrigger, DebugExit, I8042Device, PcTestDev, PciRoot,
    SerialDevice, VirtioDevice, VirtioPciDevice,
};
use vmkit_exits::{IoBus, LogLimit, MmioAddress, MmioBus, MmioDevice, PioAddress, PioDevice};
use vmkit_memory::GuestLayout;
use vmkit_memory::vm_memory::{GuestAddress, GuestMemoryMmap};

/// Exits per storm.
const EXITS: usize = 20_000;

/// A small xorshift generator: every storm is the same on every run.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// An access size: mostly what the bus routes, sometimes empty.
    fn size(&mut self) -> usize {
        [0, 1, 1, 2, 4, 8][self.below(6) as usize]
    }

    fn bytes(&mut self) -> Vec<u8> {
        (0..self.size()).map(|_| self.next() as u8).collect()
    }
}

/// One port access to `dev` at `base` plus an offset below `span`, a write or a read of random
/// size; returns the size.
fn pio(dev: &dyn PioDevice, rng: &mut Rng, base: u16, span: u64) -> u64 {
    let offset = rng.below(span) as u16;
    if rng.below(2) == 0 {
        let data = rng.bytes();
        dev.pio_write(PioAddress(base), offset, &data);
        data.len() as u64
    } else {
        let mut data = vec![0u8; rng.size()];
        dev.pio_read(PioAddress(base), offset, &mut data);
        data.len() as u64
    }
}

fn line_calls(line: &CountingTrigger) -> u64 {
    line.edges() + line.asserts() + line.deasserts()
}

/// Output that counts the bytes it is handed.
#[derive(Default)]
struct CountingOutput {
    bytes: u64,
}

impl Write for CountingOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bytes += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Serial: an exit hands at most its own bytes to the output and makes at most two interrupt
/// calls per byte.
#[test]
fn serial() {
    let line = Arc::new(CountingTrigger::new());
    let dev = SerialDevice::new(line.clone(), CountingOutput::default());
    let mut rng = Rng::new(1);
    for _ in 0..EXITS {
        let (out, calls) = (dev.with_output(|o| o.bytes), line_calls(&line));
        let len = pio(&dev, &mut rng, 0x3F8, 12);
        assert!(dev.with_output(|o| o.bytes) - out <= len);
        // An IER write may raise both the received-data and the THR-empty interrupt.
        assert!(line_calls(&line) - calls <= 2 * len);
    }
    assert!(
        dev.bytes_written() > 0 && line.edges() > 0,
        "the storm reached both"
    );
}

/// i8042: at most one interrupt call per byte of the access; the output queue never grows past
/// its 16 bytes (a guest draining it reads at most that many bytes before it is empty).
#[test]
fn i8042() {
    let line = Arc::new(CountingTrigger::new());
    let dev = I8042Device::new(line.clone());
    let mut rng = Rng::new(2);
    for _ in 0..EXITS {
        let calls = line_calls(&line);
        let len = pio(&dev, &mut rng, 0x60, 8);
        assert!(line_calls(&line) - calls <= len);
        let mut full = 0;
        let mut status = [0u8];
        loop {
            dev.pio_read(PioAddress(0x64), 0, &mut status);
            if status[0] & 1 == 0 || rng.below(4) != 0 {
                break;
            }
            dev.pio_read(PioAddress(0x60), 0, &mut [0]);
            full += 1;
            assert!(full <= vmkit_devices::i8042::OUTPUT_QUEUE_LEN);
        }
    }
    assert!(line.edges() > 0, "the storm reached the keyboard");
}

/// A wall clock that counts its reads, moving a random step each time.
#[derive(Debug, Default)]
struct CountingWallClock {
    reads: AtomicU64,
    now: AtomicU64,
}

impl vmkit_devices::WallClock for CountingWallClock {
    fn now(&self) -> Duration {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let step = self.reads.load(Ordering::Relaxed).wrapping_mul(0x9E37_79B9) % 90_000;
        Duration::from_secs(self.now.fetch_add(step, Ordering::Relaxed))
    }
}

/// CMOS RTC: one clock read per exit, whatever register, size or value (time, alarm and
/// periodic-rate writes included).
#[test]
fn cmos() {
    let clock = Arc::new(CountingWallClock::default());
    let dev = CmosRtc::with_clock(clock.clone(), 128 << 20, 0);
    let mut rng = Rng::new(3);
    for _ in 0..EXITS {
        let reads = clock.reads.load(Ordering::Relaxed);
        // Index writes aim at the clock, alarm and status registers most of the time.
        if rng.below(2) == 0 {
            dev.pio_write(
                PioAddress(0x70),
                0,
                &[rng.below(0x10) as u8 | (rng.below(2) as u8) << 7],
            );
        } else {
            pio(&dev, &mut rng, 0x70, 6);
        }
        assert!(clock.reads.load(Ordering::Relaxed) - reads <= 1);
    }
}

/// A monotonic clock that counts its reads.
#[derive(Debug, Default)]
struct CountingClock {
    reads: AtomicU64,
}

impl vmkit_exits::Clock for CountingClock {
    fn now(&self) -> Duration {
        Duration::from_millis(self.reads.fetch_add(1, Ordering::Relaxed))
    }
}

/// ACPI PM: per byte at most one clock read and one log line (let through or suppressed).
#[test]
fn acpi_pm() {
    let clock = Arc::new(CountingClock::default());
    let dev = AcpiPmDevice::with_log_limit(LogLimit::default(), clock.clone());
    let mut rng = Rng::new(4);
    let lines = |d: &AcpiPmDevice| d.stats().log_lines + d.stats().log_lines_suppressed;
    for _ in 0..EXITS {
        let (reads, logged) = (clock.reads.load(Ordering::Relaxed), lines(&dev));
        let len = pio(&dev, &mut rng, 0x600, 6);
        assert!(clock.reads.load(Ordering::Relaxed) - reads <= len);
        assert!(lines(&dev) - logged <= len);
    }
    assert!(lines(&dev) > 0, "the storm reached the sleep register");
}

/// Debug exit: one access counted, an answer, nothing else.
#[test]
fn debug_exit() {
    let dev = DebugExit::new();
    let mut rng = Rng::new(5);
    for i in 1..=EXITS as u64 {
        pio(&dev, &mut rng, 0xF4, 8);
        let s = dev.stats();
        assert_eq!(s.reads + s.writes, i);
    }
}

/// pc-testdev: at most one interrupt-line call per exit, port or scratch memory.
#[test]
fn testdev() {
    use vmkit_devices::testdev::{IOMEM_BASE, IOMEM_SIZE, IRQ_LINE_COUNT, IRQ_LINE_PORT};
    let line = Arc::new(CountingTrigger::new());
    let mut dev = PcTestDev::new();
    for n in 0..IRQ_LINE_COUNT {
        dev = dev.with_irq_line(n, line.clone()).unwrap();
    }
    let mut rng = Rng::new(6);
    for _ in 0..EXITS {
        let calls = line_calls(&line);
        match rng.below(3) {
            0 => {
                pio(&dev, &mut rng, 0xE0, 16);
            }
            1 => {
                pio(&dev, &mut rng, IRQ_LINE_PORT, 28);
            }
            _ => {
                let offset = match rng.below(3) {
                    0 => rng.below(16),
                    1 => IOMEM_SIZE - rng.below(16),
                    _ => rng.next(),
                };
                let data = rng.bytes();
                dev.mmio_write(MmioAddress(IOMEM_BASE), offset, &data);
                let mut back = vec![0u8; rng.size()];
                dev.mmio_read(MmioAddress(IOMEM_BASE), offset, &mut back);
            }
        }
        assert!(line_calls(&line) - calls <= 1);
    }
    assert!(dev.stats().irq_writes > 0, "the storm reached the lines");
}

/// A PCI function with six BARs that counts the configuration calls the root makes into it,
/// and apart from them its BAR-layout queries.
struct CountingFunction {
    config: ConfigSpace,
    calls: Arc<AtomicU64>,
    layout_queries: Arc<AtomicU64>,
}

impl MutPciDevice for CountingFunction {
    fn config_read(&mut self, offset: u8, data: &mut [u8]) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.config.read(offset.into(), data);
    }
    fn config_write(&mut self, offset: u8, data: &[u8]) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.config.write(offset.into(), data);
    }
    fn bars(&self) -> [Option<PciBar>; NUM_BARS] {
        self.layout_queries.fetch_add(1, Ordering::Relaxed);
        self.config.pci_bars()
    }
}

/// PCI root: one configuration call into one function per exit (and after a write one query of
/// its BARs), then at most two bus changes (remove and place) per BAR.
#[test]
fn pci_root() {
    let io = Arc::new(IoBus::new());
    let mmio = Arc::new(MmioBus::new());
    let root = PciRoot::new(&io, &mmio).unwrap();
    let mut allocators = GuestLayout::new(256 << 20).unwrap().allocators().unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let layout_queries = Arc::new(AtomicU64::new(0));
    for name in ["a", "b"] {
        let mut config = ConfigSpace::new(PciIds {
            vendor_id: 0x1234,
            device_id: 0x5678,
            revision_id: 0,
            class_code: 0xFF_00_00,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
        });
        for index in 0..NUM_BARS as u8 {
            let kind = if index % 2 == 0 {
                PciBarKind::Memory32
            } else {
                PciBarKind::Io
            };
            let size = if kind == PciBarKind::Io { 16 } else { 0x1000 };
            config.add_bar(index, kind, size, false).unwrap();
        }
        let function = CountingFunction {
            config,
            calls: calls.clone(),
            layout_queries: layout_queries.clone(),
        };
        root.add_device(name, Arc::new(Mutex::new(function)), &mut allocators)
            .unwrap();
    }
    let mut rng = Rng::new(7);
    let most_bus_changes = 2 * NUM_BARS as u64;
    for _ in 0..EXITS {
        let (before, queries, updates) = (
            calls.load(Ordering::Relaxed),
            layout_queries.load(Ordering::Relaxed),
            root.stats().bar_updates,
        );
        let device = rng.below(4);
        let register = 4 * rng.below(16);
        match rng.below(3) {
            0 => {
                let address = 0x8000_0000 | (device << 11) | register;
                root.pio_write(PioAddress(0xCF8), 0, &(address as u32).to_le_bytes());
            }
            1 => {
                pio(root.as_ref(), &mut rng, 0xCF8, 9);
            }
            _ => {
                let offset = (device << 15) | register | rng.below(4);
                let data = rng.bytes();
                root.mmio_write(MmioAddress(0), offset, &data);
            }
        }
        assert!(calls.load(Ordering::Relaxed) - before <= 1);
        assert!(layout_queries.load(Ordering::Relaxed) - queries <= 1);
        assert!(root.stats().bar_updates - updates <= most_bus_changes);
    }
    assert!(root.stats().bar_updates > 0, "the storm moved BARs");
}

/// A virtio device model that counts the calls the transport makes into it and signals a used
/// buffer on every notification.
struct CountingModel {
    calls: Arc<AtomicU64>,
    interrupt: Option<Arc<dyn VirtioInterrupt>>,
}

impl VirtioDevice for CountingModel {
    fn device_type(&self) -> u32 {
        0x2A
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 16]
    }
    fn features(&self) -> u64 {
        0
    }
    fn config_len(&self) -> usize {
        8
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        data.fill(0);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }
    fn activate(
        &mut self,
        _acked_features: u64,
        _queues: Vec<virtio_queue::Queue>,
        _memory: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), vmkit_devices::virtio::ActivateError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.interrupt = Some(interrupt);
        Ok(())
    }
    fn process_queue(&mut self, index: u16) -> Result<(), QueueError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if let Some(interrupt) = &self.interrupt {
            interrupt.signal_used_queue(index);
        }
        Ok(())
    }
    fn reset(&mut self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.interrupt = None;
    }
}

/// virtio-pci transport: at most one call into the device model per exit, and at most one
/// MSI-X message per vector (an unmask delivers what was pending).
#[test]
fn virtio_pci() {
    use vmkit_devices::virtio::{MSIX_TABLE_OFFSET, NOTIFY_OFFSET};
    let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let msi = Arc::new(MsiRecorder::new());
    let model = CountingModel {
        calls: calls.clone(),
        interrupt: None,
    };
    let interrupts = VirtioPciInterrupts {
        intx: Some(Arc::new(CountingTrigger::new())),
        intx_line: 5,
        msi: Some(msi.clone()),
    };
    let mut dev = VirtioPciDevice::new(model, memory, interrupts).unwrap();
    let msix = dev
        .config_space()
        .find_capabilities(vmkit_devices::pci::CAP_ID_MSIX)[0];
    let vectors = 3;
    let mut rng = Rng::new(8);
    let w = |dev: &mut VirtioPciDevice<CountingModel>, offset: u64, data: &[u8]| {
        dev.bar_write(0, offset, data);
    };
    for round in 0..EXITS {
        let (before, sent) = (calls.load(Ordering::Relaxed), msi.messages().len());
        if round % 64 == 0 {
            // A driver's bring-up, so that notifications reach a live device: each write is
            // an exit of its own and is checked as one.
            let steps: [(u64, Vec<u8>); 12] = [
                (0x14, vec![0]),
                (0x14, vec![3]),
                (0x08, 1u32.to_le_bytes().to_vec()),
                (0x0C, 1u32.to_le_bytes().to_vec()),
                (0x14, vec![11]),
                (0x10, 0u16.to_le_bytes().to_vec()),
                (0x1A, 1u16.to_le_bytes().to_vec()),
                (0x20, 0x1000u64.to_le_bytes().to_vec()),
                (0x28, 0x2000u64.to_le_bytes().to_vec()),
                (0x30, 0x3000u64.to_le_bytes().to_vec()),
                (0x1C, 1u16.to_le_bytes().to_vec()),
                (0x14, vec![15]),
            ];
            for (offset, data) in steps {
                let (before, sent) = (calls.load(Ordering::Relaxed), msi.messages().len());
                w(&mut dev, offset, &data);
                assert!(calls.load(Ordering::Relaxed) - before <= 1);
                assert!(msi.messages().len() - sent <= vectors);
            }
            continue;
        }
        let offset = match rng.below(8) {
            0 | 1 => rng.below(0x40),
            2 => 0x1000 + rng.below(4),
            3 => 0x2000 + rng.below(12),
            4 | 5 => NOTIFY_OFFSET + rng.below(12),
            6 => MSIX_TABLE_OFFSET + rng.below(0x30),
            _ => rng.below(vmkit_devices::virtio::BAR_SIZE + 16),
        };
        match rng.below(4) {
            0 => {
                let mut data = vec![0u8; rng.size()];
                dev.bar_read(0, offset, &mut data);
            }
            1 => {
                // MSI-X on or off, function masked or not; or any configuration register.
                let (at, data) = if rng.below(2) == 0 {
                    (msix + 3, vec![rng.next() as u8 & 0xC0])
                } else {
                    (rng.below(0x100) as usize, rng.bytes())
                };
                if !data.is_empty() && at % 4 + data.len() <= 4 {
                    dev.config_write(at as u8, &data);
                }
            }
            _ => w(&mut dev, offset, &rng.bytes()),
        }
        assert!(calls.load(Ordering::Relaxed) - before <= 1);
        assert!(msi.messages().len() - sent <= vectors);
    }
    assert!(
        dev.stats().notifications > 0,
        "the storm reached the device"
    );
    assert!(!msi.messages().is_empty(), "and its vectors");
}
