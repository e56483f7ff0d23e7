use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use super::*;
use crate::bus::{IoBus, MmioBus};

/// One call a device saw: the method, the base (or BAR index), the offset and the bytes
/// written (or the length read).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    PioRead(u16, u16, usize),
    PioWrite(u16, u16, Vec<u8>),
    MmioRead(u64, u64, usize),
    MmioWrite(u64, u64, Vec<u8>),
    ConfigRead(u8, usize),
    ConfigWrite(u8, Vec<u8>),
    BarRead(u8, u64, usize),
    BarWrite(u8, u64, Vec<u8>),
}

/// A `&mut self` device of all three kinds that records every call. Reads answer a pattern of
/// the offset; a write of 0xEE panics (to poison its mutex), any other write stops the VM with
/// the first byte as the status.
#[derive(Default)]
struct Recorder {
    calls: Vec<Call>,
    /// `bars` takes `&self`, so it counts here.
    bars_calls: AtomicU32,
}

fn fill(data: &mut [u8], seed: u64) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = (seed as u8).wrapping_add(i as u8);
    }
}

fn answer(data: &[u8]) -> DeviceAction {
    assert_ne!(data.first(), Some(&0xEE), "the test's poison write");
    DeviceAction::Stop(StopReason::GuestExit(
        data.first().copied().unwrap_or(0).into(),
    ))
}

const BAR: PciBar = PciBar {
    kind: PciBarKind::Memory64,
    size: 0x4000,
    address: 0xE000_0000,
    prefetchable: true,
    decoding: false,
};

impl MutPioDevice for Recorder {
    fn pio_read(&mut self, base: PioAddress, offset: u16, data: &mut [u8]) {
        self.calls.push(Call::PioRead(base.0, offset, data.len()));
        fill(data, offset.into());
    }
    fn pio_write(&mut self, base: PioAddress, offset: u16, data: &[u8]) -> DeviceAction {
        self.calls
            .push(Call::PioWrite(base.0, offset, data.to_vec()));
        answer(data)
    }
}

impl MutMmioDevice for Recorder {
    fn mmio_read(&mut self, base: MmioAddress, offset: u64, data: &mut [u8]) {
        self.calls.push(Call::MmioRead(base.0, offset, data.len()));
        fill(data, offset);
    }
    fn mmio_write(&mut self, base: MmioAddress, offset: u64, data: &[u8]) -> DeviceAction {
        self.calls
            .push(Call::MmioWrite(base.0, offset, data.to_vec()));
        answer(data)
    }
}

impl MutPciDevice for Recorder {
    fn config_read(&mut self, offset: u8, data: &mut [u8]) {
        self.calls.push(Call::ConfigRead(offset, data.len()));
        fill(data, offset.into());
    }
    fn config_write(&mut self, offset: u8, data: &[u8]) {
        self.calls.push(Call::ConfigWrite(offset, data.to_vec()));
        assert_ne!(data.first(), Some(&0xEE), "the test's poison write");
    }
    fn bars(&self) -> [Option<PciBar>; PCI_NUM_BARS] {
        self.bars_calls.fetch_add(1, Ordering::Relaxed);
        [None, None, Some(BAR), None, None, None]
    }
    fn bar_read(&mut self, index: u8, offset: u64, data: &mut [u8]) {
        self.calls.push(Call::BarRead(index, offset, data.len()));
        fill(data, offset);
    }
    fn bar_write(&mut self, index: u8, offset: u64, data: &[u8]) -> DeviceAction {
        self.calls
            .push(Call::BarWrite(index, offset, data.to_vec()));
        answer(data)
    }
}

fn calls(device: &Mutex<Recorder>) -> Vec<Call> {
    std::mem::take(&mut lock(device).calls)
}

#[test]
fn mutex_forwards_every_port_and_mmio_call() {
    let device = Mutex::new(Recorder::default());
    let pio: &dyn PioDevice = &device;
    let mut data = [0u8; 2];
    pio.pio_read(PioAddress(0x3F8), 5, &mut data);
    assert_eq!(data, [5, 6]);
    assert_eq!(
        pio.pio_write(PioAddress(0x3F8), 1, &[7]),
        DeviceAction::Stop(StopReason::GuestExit(7))
    );
    let mmio: &dyn MmioDevice = &device;
    let mut data = [0u8; 4];
    mmio.mmio_read(MmioAddress(0xD000_0000), 0x10, &mut data);
    assert_eq!(data, [0x10, 0x11, 0x12, 0x13]);
    assert_eq!(
        mmio.mmio_write(MmioAddress(0xD000_0000), 0x18, &[9, 9]),
        DeviceAction::Stop(StopReason::GuestExit(9))
    );
    assert_eq!(
        calls(&device),
        vec![
            Call::PioRead(0x3F8, 5, 2),
            Call::PioWrite(0x3F8, 1, vec![7]),
            Call::MmioRead(0xD000_0000, 0x10, 4),
            Call::MmioWrite(0xD000_0000, 0x18, vec![9, 9]),
        ]
    );
}

#[test]
fn mutex_forwards_every_pci_call() {
    let device = Mutex::new(Recorder::default());
    let pci: &dyn PciDevice = &device;
    let mut data = [0u8; 4];
    pci.config_read(0x10, &mut data);
    assert_eq!(data, [0x10, 0x11, 0x12, 0x13]);
    pci.config_write(0x04, &[6, 0]);
    assert_eq!(pci.bars(), [None, None, Some(BAR), None, None, None]);
    let mut data = [0u8; 8];
    pci.bar_read(2, 0x3FF8, &mut data);
    assert_eq!(data[0], 0xF8);
    assert_eq!(
        pci.bar_write(2, 0x20, &[3, 0, 0, 0]),
        DeviceAction::Stop(StopReason::GuestExit(3))
    );
    assert_eq!(
        calls(&device),
        vec![
            Call::ConfigRead(0x10, 4),
            Call::ConfigWrite(0x04, vec![6, 0]),
            Call::BarRead(2, 0x3FF8, 8),
            Call::BarWrite(2, 0x20, vec![3, 0, 0, 0]),
        ]
    );
    assert_eq!(lock(&device).bars_calls.load(Ordering::Relaxed), 1);
}

/// A function with no BAR handlers of its own: the defaults answer all ones and ignore writes,
/// through the `&mut self` twin and through the `&self` trait alike.
struct Bare;

impl MutPciDevice for Bare {
    fn config_read(&mut self, _offset: u8, data: &mut [u8]) {
        data.fill(0);
    }
    fn config_write(&mut self, _offset: u8, _data: &[u8]) {}
    fn bars(&self) -> [Option<PciBar>; PCI_NUM_BARS] {
        [None; PCI_NUM_BARS]
    }
}

impl PciDevice for Bare {
    fn config_read(&self, _offset: u8, data: &mut [u8]) {
        data.fill(0);
    }
    fn config_write(&self, _offset: u8, _data: &[u8]) {}
    fn bars(&self) -> [Option<PciBar>; PCI_NUM_BARS] {
        [None; PCI_NUM_BARS]
    }
}

#[test]
fn default_bar_handlers_read_all_ones_and_ignore_writes() {
    let shared = Mutex::new(Bare);
    for device in [&shared as &dyn PciDevice, &Bare] {
        let mut data = [0u8; 4];
        device.bar_read(0, 0, &mut data);
        assert_eq!(data, [0xFF; 4]);
        assert_eq!(device.bar_write(0, 0, &data), DeviceAction::Resume);
        assert_eq!(device.bars(), [None; PCI_NUM_BARS]);
    }
}

#[test]
fn a_poisoned_device_keeps_answering() {
    let device = Arc::new(Mutex::new(Recorder::default()));
    let pio: Arc<dyn PioDevice> = device.clone();
    let mmio: Arc<dyn MmioDevice> = device.clone();
    let pci: Arc<dyn PciDevice> = device.clone();
    pio.pio_write(PioAddress(0x60), 0, &[1]);
    // A handler panics while the blanket impl holds the lock: the mutex is poisoned.
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        pio.pio_write(PioAddress(0x60), 0, &[0xEE])
    }));
    assert!(panicked.is_err());
    assert!(device.is_poisoned());

    // Every later call is served, with the state the device had.
    let mut data = [0u8; 1];
    pio.pio_read(PioAddress(0x60), 4, &mut data);
    assert_eq!(data, [4]);
    assert_eq!(
        mmio.mmio_write(MmioAddress(0x1000), 0, &[2]),
        DeviceAction::Stop(StopReason::GuestExit(2))
    );
    pci.config_write(0x3C, &[0x0B]);
    assert!(device.is_poisoned());
    pci.config_read(0, &mut data);
    assert_eq!(pci.bars()[2], Some(BAR));
    pci.bar_read(2, 1, &mut data);
    assert_eq!(data, [1]);
    assert_eq!(
        pci.bar_write(2, 0, &[5]),
        DeviceAction::Stop(StopReason::GuestExit(5))
    );
    let seen = calls(&device);
    assert_eq!(seen.first(), Some(&Call::PioWrite(0x60, 0, vec![1])));
    assert_eq!(seen.len(), 8, "{seen:?}");
    assert_eq!(
        seen[1],
        Call::PioWrite(0x60, 0, vec![0xEE]),
        "the panicking call"
    );
}

#[test]
fn a_mutex_device_sits_on_the_buses() {
    let device = Arc::new(Mutex::new(Recorder::default()));
    let io = IoBus::new();
    io.register(0x510..0x512, device.clone()).unwrap();
    let mmio = MmioBus::new();
    mmio.register(0xFED0_0000..0xFED0_1000, device.clone())
        .unwrap();
    let mut data = [0u8; 1];
    assert!(io.read(PioAddress(0x511), &mut data));
    assert_eq!(data, [1]);
    assert_eq!(
        mmio.write(MmioAddress(0xFED0_0010), &[8]),
        Some(DeviceAction::Stop(StopReason::GuestExit(8)))
    );
    assert_eq!(
        calls(&device),
        vec![
            Call::PioRead(0x510, 1, 1),
            Call::MmioWrite(0xFED0_0000, 0x10, vec![8]),
        ]
    );
}
