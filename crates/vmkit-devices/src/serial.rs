//! The 16550A UART, on vm-superio's [`Serial`].
//!
//! Guest output goes to any [`Write`] the VMM passes (stdout, a file, a `Vec<u8>`); guest input
//! is pushed by the VMM with [`SerialDevice::enqueue_input`]. The transmitter is always empty
//! (LSR reads THR-empty and transmitter-idle), so a guest polling LSR before each byte never
//! waits. A wider access is split into byte accesses at consecutive registers; offsets past the
//! eight registers read [`OPEN_BUS`] and ignore writes.
//!
//! The output is written under the UART's lock, on the thread of the vCPU whose `out` sent the
//! byte, so it must never block: a write that waits for the host (stdout a pipe nobody reads, a
//! terminal on hold) stalls that vCPU and every other one that touches the UART. Give it a
//! bounded buffer drained by a thread of the VMM's own, which refuses bytes when full (the
//! reference VMM does): a refused byte is counted ([`SerialDevice::bytes_lost`]) and the guest
//! runs on.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Instant;

use log::{debug, warn};
use vm_superio::Serial;
use vm_superio::serial::{Error as SerialError, SerialEvents};
use vmkit_exits::{DeviceAction, PioAddress, PioDevice};

use crate::io::{IoCounters, IoStats, OPEN_BUS, read_bytewise, write_bytewise};
use crate::trigger::{InterruptTrigger, SuperioTrigger};

/// The first serial port's I/O base.
pub const COM1_PORT: u16 = 0x3F8;
/// The second serial port's I/O base.
pub const COM2_PORT: u16 = 0x2F8;
/// The third serial port's I/O base.
pub const COM3_PORT: u16 = 0x3E8;
/// The fourth serial port's I/O base.
pub const COM4_PORT: u16 = 0x2E8;
/// The interrupt line of COM1 and COM3.
pub const COM1_IRQ: u32 = 4;
/// The interrupt line of COM2 and COM4.
pub const COM2_IRQ: u32 = 3;
/// The number of ports a UART occupies.
pub const SERIAL_PORT_LEN: u16 = 8;

/// Register offset of the line status register.
pub const LSR_OFFSET: u16 = 5;
/// LSR bit: received data ready.
pub const LSR_DATA_READY: u8 = 0x01;
/// LSR bit: the transmit holding register is empty.
pub const LSR_THR_EMPTY: u8 = 0x20;
/// LSR bit: the transmitter is idle.
pub const LSR_TRANSMITTER_IDLE: u8 = 0x40;

/// The output-side events vm-superio reports, kept as counters and the first byte's time.
#[derive(Debug, Default)]
struct OutputEvents {
    bytes_written: AtomicU64,
    bytes_lost: AtomicU64,
    first_output: OnceLock<Instant>,
}

impl OutputEvents {
    fn output_attempted(&self) {
        // After the first byte this is one atomic load.
        self.first_output.get_or_init(Instant::now);
    }
}

impl SerialEvents for OutputEvents {
    fn buffer_read(&self) {}

    fn out_byte(&self) {
        self.output_attempted();
        self.bytes_written.fetch_add(1, Ordering::Relaxed);
    }

    fn tx_lost_byte(&self) {
        self.output_attempted();
        self.bytes_lost.fetch_add(1, Ordering::Relaxed);
    }

    fn in_buffer_empty(&self) {}
}

type Uart<T, W> = Serial<SuperioTrigger<T>, Arc<OutputEvents>, W>;

/// A 16550A UART on the port bus.
pub struct SerialDevice<T: InterruptTrigger, W: Write + Send> {
    uart: Mutex<Uart<T, W>>,
    events: Arc<OutputEvents>,
    counters: IoCounters,
    interrupt_errors: AtomicU64,
}

impl<T: InterruptTrigger, W: Write + Send> std::fmt::Debug for SerialDevice<T, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice")
            .field("stats", &self.counters.snapshot())
            .field("bytes_written", &self.bytes_written())
            .finish_non_exhaustive()
    }
}

impl<T: InterruptTrigger, W: Write + Send> SerialDevice<T, W> {
    /// A UART that raises `interrupt` (an edge line: IRQ 4 for COM1) and writes the guest's
    /// output to `output`.
    pub fn new(interrupt: T, output: W) -> Self {
        let events = Arc::new(OutputEvents::default());
        Self {
            uart: Mutex::new(Serial::with_events(
                SuperioTrigger(interrupt),
                Arc::clone(&events),
                output,
            )),
            events,
            counters: IoCounters::default(),
            interrupt_errors: AtomicU64::new(0),
        }
    }

    fn uart(&self) -> MutexGuard<'_, Uart<T, W>> {
        self.uart.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Pushes host input (for example from stdin) into the receive FIFO and raises the
    /// received-data interrupt if the guest enabled it. Returns how many bytes the FIFO took:
    /// fewer than `input.len()` when it is full (the caller keeps the rest for later), 0 in
    /// loopback mode.
    pub fn enqueue_input(&self, input: &[u8]) -> usize {
        let mut uart = self.uart();
        let room = uart.fifo_capacity().min(input.len());
        match uart.enqueue_raw_bytes(input) {
            Ok(taken) => taken,
            Err(SerialError::FullFifo) => 0,
            Err(SerialError::Trigger(err)) => {
                // The bytes are in the FIFO; only the interrupt was lost.
                self.interrupt_failed(&err);
                room
            }
            Err(SerialError::IOError(err)) => {
                debug!("serial: input not queued: {err}");
                0
            }
        }
    }

    /// Free room in the receive FIFO, in bytes.
    pub fn fifo_capacity(&self) -> usize {
        self.uart().fifo_capacity()
    }

    /// Bytes the guest transmitted that reached the output.
    pub fn bytes_written(&self) -> u64 {
        self.events.bytes_written.load(Ordering::Relaxed)
    }

    /// Bytes the guest transmitted that the output refused.
    pub fn bytes_lost(&self) -> u64 {
        self.events.bytes_lost.load(Ordering::Relaxed)
    }

    /// When the guest transmitted its first byte, if it did.
    pub fn first_output_at(&self) -> Option<Instant> {
        self.events.first_output.get().copied()
    }

    /// How many interrupts could not be delivered because the line failed.
    pub fn interrupt_errors(&self) -> u64 {
        self.interrupt_errors.load(Ordering::Relaxed)
    }

    /// Counts of the guest's accesses.
    pub fn stats(&self) -> IoStats {
        self.counters.snapshot()
    }

    /// Runs `f` on the output (to flush it, or to look at what a `Vec<u8>` collected).
    pub fn with_output<R>(&self, f: impl FnOnce(&mut W) -> R) -> R {
        f(self.uart().writer_mut())
    }

    fn interrupt_failed(&self, err: &std::io::Error) {
        self.interrupt_errors.fetch_add(1, Ordering::Relaxed);
        warn!("serial: interrupt not delivered: {err}");
    }

    fn register(&self, offset: u32) -> Option<u8> {
        u8::try_from(offset)
            .ok()
            .filter(|&offset| u16::from(offset) < SERIAL_PORT_LEN)
    }
}

impl<T: InterruptTrigger, W: Write + Send> PioDevice for SerialDevice<T, W> {
    fn pio_read(&self, _base: PioAddress, offset: u16, data: &mut [u8]) {
        self.counters.read();
        let mut uart = self.uart();
        read_bytewise(offset.into(), data, |offset| match self.register(offset) {
            Some(register) => uart.read(register),
            None => {
                self.counters.ignored();
                OPEN_BUS
            }
        });
    }

    fn pio_write(&self, _base: PioAddress, offset: u16, data: &[u8]) -> DeviceAction {
        self.counters.write();
        let mut uart = self.uart();
        write_bytewise(offset.into(), data, |offset, value| {
            let Some(register) = self.register(offset) else {
                self.counters.ignored();
                return None::<()>;
            };
            match uart.write(register, value) {
                Ok(()) => {}
                // Counted as a lost byte by the output events.
                Err(SerialError::IOError(err)) => debug!("serial: output byte lost: {err}"),
                Err(SerialError::Trigger(err)) => self.interrupt_failed(&err),
                Err(SerialError::FullFifo) => self.counters.ignored(),
            }
            None
        });
        DeviceAction::Resume
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trigger::CountingTrigger;
    use std::io;

    const DATA: u16 = 0;
    const IER: u16 = 1;
    const IIR: u16 = 2;
    const LCR: u16 = 3;
    const MCR: u16 = 4;
    const SCR: u16 = 7;

    fn uart() -> (
        Arc<CountingTrigger>,
        SerialDevice<Arc<CountingTrigger>, Vec<u8>>,
    ) {
        let line = Arc::new(CountingTrigger::new());
        (Arc::clone(&line), SerialDevice::new(line, Vec::new()))
    }

    fn read(dev: &impl PioDevice, offset: u16) -> u8 {
        let mut data = [0u8];
        dev.pio_read(PioAddress(COM1_PORT), offset, &mut data);
        data[0]
    }

    fn write(dev: &impl PioDevice, offset: u16, value: u8) {
        assert_eq!(
            dev.pio_write(PioAddress(COM1_PORT), offset, &[value]),
            DeviceAction::Resume
        );
    }

    /// An output that refuses every byte.
    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::other("broken"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_reaches_the_writer_and_is_counted() {
        let (_, dev) = uart();
        assert_eq!(dev.first_output_at(), None);
        let before = Instant::now();
        for &b in b"hi" {
            write(&dev, DATA, b);
        }
        assert_eq!(dev.with_output(|out| out.clone()), b"hi");
        assert_eq!(dev.bytes_written(), 2);
        assert_eq!(dev.bytes_lost(), 0);
        assert!(dev.first_output_at().unwrap() >= before);
    }

    #[test]
    fn lsr_always_reports_an_empty_transmitter() {
        let (_, dev) = uart();
        for _ in 0..1000 {
            write(&dev, DATA, b'x');
            let lsr = read(&dev, LSR_OFFSET);
            assert_eq!(lsr & (LSR_THR_EMPTY | LSR_TRANSMITTER_IDLE), 0x60);
        }
    }

    #[test]
    fn lost_output_is_counted_and_timestamped() {
        let dev = SerialDevice::new(CountingTrigger::new(), Broken);
        write(&dev, DATA, b'x');
        assert_eq!(dev.bytes_written(), 0);
        assert_eq!(dev.bytes_lost(), 1);
        assert!(dev.first_output_at().is_some());
    }

    #[test]
    fn input_respects_the_fifo_and_interrupts_when_enabled() {
        let (line, dev) = uart();
        assert_eq!(dev.fifo_capacity(), 64);
        // Received-data interrupt enabled.
        write(&dev, IER, 0x01);
        assert_eq!(dev.enqueue_input(b"ab"), 2);
        assert_eq!(line.edges(), 1);
        assert_eq!(read(&dev, LSR_OFFSET) & LSR_DATA_READY, LSR_DATA_READY);
        // IIR reports received data available (0x04) with the FIFO bits.
        assert_eq!(read(&dev, IIR), 0xC4);
        assert_eq!(read(&dev, DATA), b'a');
        assert_eq!(read(&dev, DATA), b'b');
        assert_eq!(read(&dev, LSR_OFFSET) & LSR_DATA_READY, 0);
        // Reading an empty FIFO yields 0.
        assert_eq!(read(&dev, DATA), 0);

        let big = [7u8; 100];
        assert_eq!(dev.enqueue_input(&big), 64);
        assert_eq!(dev.fifo_capacity(), 0);
        assert_eq!(dev.enqueue_input(&big), 0);
        assert_eq!(dev.enqueue_input(&[]), 0);
    }

    #[test]
    fn input_is_taken_even_if_the_interrupt_fails() {
        let (line, dev) = uart();
        write(&dev, IER, 0x01);
        line.set_failing(true);
        assert_eq!(dev.enqueue_input(b"xyz"), 3);
        assert_eq!(dev.interrupt_errors(), 1);
        assert_eq!(read(&dev, DATA), b'x');
    }

    #[test]
    fn thr_empty_interrupt_failure_is_counted() {
        let (line, dev) = uart();
        line.set_failing(true);
        // Enabling THR-empty raises it at once; the line fails.
        write(&dev, IER, 0x02);
        assert_eq!(dev.interrupt_errors(), 1);
        line.set_failing(false);
        // Reading IIR acknowledges it; the next byte raises it again.
        read(&dev, IIR);
        write(&dev, DATA, b'z');
        assert_eq!(line.edges(), 1);
    }

    #[test]
    fn loopback_takes_no_host_input() {
        let (_, dev) = uart();
        write(&dev, MCR, 0x10);
        assert_eq!(dev.enqueue_input(b"abc"), 0);
        write(&dev, DATA, b'L');
        assert_eq!(read(&dev, DATA), b'L');
        assert_eq!(dev.bytes_written(), 0);
    }

    #[test]
    fn wide_accesses_are_split_into_bytes() {
        let (_, dev) = uart();
        // LCR and MCR written by one 16-bit access at offset 3.
        dev.pio_write(PioAddress(COM1_PORT), LCR, &[0x03, 0x0B]);
        let mut data = [0u8; 2];
        dev.pio_read(PioAddress(COM1_PORT), LCR, &mut data);
        assert_eq!(data, [0x03, 0x0B]);
        // A 4-byte read at offset 6 covers MSR, SCR and two ports past the device.
        write(&dev, SCR, 0x5A);
        let mut data = [0u8; 4];
        dev.pio_read(PioAddress(COM1_PORT), 6, &mut data);
        assert_eq!(&data[1..], &[0x5A, OPEN_BUS, OPEN_BUS]);
        assert_eq!(dev.stats().ignored, 2);
    }

    #[test]
    fn out_of_range_offsets_are_ignored() {
        let (_, dev) = uart();
        for offset in [8, 9, 0xFF, 0x100, u16::MAX] {
            assert_eq!(read(&dev, offset), OPEN_BUS);
            write(&dev, offset, 0x41);
        }
        assert_eq!(dev.bytes_written(), 0);
        assert_eq!(
            dev.stats(),
            IoStats {
                reads: 5,
                writes: 5,
                ignored: 10
            }
        );
        for size in [0usize, 1, 2, 4, 8] {
            let mut data = vec![0u8; size];
            dev.pio_read(PioAddress(COM1_PORT), 0x1000, &mut data);
            assert!(data.iter().all(|&b| b == OPEN_BUS));
        }
    }

    #[test]
    fn divisor_latch_is_reachable_through_dlab() {
        let (_, dev) = uart();
        write(&dev, LCR, 0x80);
        write(&dev, DATA, 0x01);
        write(&dev, IER, 0x00);
        assert_eq!(read(&dev, DATA), 0x01);
        write(&dev, LCR, 0x03);
        assert_eq!(dev.bytes_written(), 0);
        assert!(format!("{dev:?}").contains("SerialDevice"));
    }
}
