use super::*;
use crate::pci::config::{BAR0, COMMAND, INTERRUPT_LINE, STATUS_CAPABILITIES_LIST};
use crate::pci::{CAP_ID_MSIX, CAP_ID_VENDOR};
use std::sync::atomic::AtomicU64;
use vmkit_memory::GuestLayout;
use vmkit_memory::layout::{MMIO32_START, PIO_START};

/// Records BAR accesses; reads answer the low byte of the offset.
struct TestDevice {
    config: ConfigSpace,
    seen: Vec<(u8, u64, usize, bool)>,
}

impl TestDevice {
    fn new(bars: &[(u8, PciBarKind, u64)]) -> Arc<Mutex<Self>> {
        let mut config = ConfigSpace::new(PciIds {
            vendor_id: 0x1234,
            device_id: 0x5678,
            revision_id: 2,
            class_code: 0xFF_00_00,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
        });
        for &(index, kind, size) in bars {
            config.add_bar(index, kind, size, false).unwrap();
        }
        config
            .add_capability(CAP_ID_VENDOR, &[4, 0xAB], &[])
            .unwrap();
        config.add_capability(CAP_ID_MSIX, &[0; 10], &[]).unwrap();
        Arc::new(Mutex::new(Self {
            config,
            seen: Vec::new(),
        }))
    }
}

impl MutPciDevice for TestDevice {
    fn config_read(&mut self, offset: u8, data: &mut [u8]) {
        self.config.read(offset.into(), data);
    }
    fn config_write(&mut self, offset: u8, data: &[u8]) {
        self.config.write(offset.into(), data);
    }
    fn bars(&self) -> [Option<PciBar>; NUM_BARS] {
        self.config.pci_bars()
    }
    fn bar_read(&mut self, index: u8, offset: u64, data: &mut [u8]) {
        self.seen.push((index, offset, data.len(), false));
        data.fill(offset as u8);
    }
    fn bar_write(&mut self, index: u8, offset: u64, data: &[u8]) -> DeviceAction {
        self.seen.push((index, offset, data.len(), true));
        DeviceAction::Resume
    }
}

struct Machine {
    io: Arc<IoBus>,
    mmio: Arc<MmioBus>,
    root: Arc<PciRoot>,
    allocators: Allocators,
}

fn machine() -> Machine {
    let io = Arc::new(IoBus::new());
    let mmio = Arc::new(MmioBus::new());
    let root = PciRoot::new(&io, &mmio).unwrap();
    let allocators = GuestLayout::new(256 << 20).unwrap().allocators().unwrap();
    Machine {
        io,
        mmio,
        root,
        allocators,
    }
}

fn address(device: u8, reg: u8) -> u32 {
    CONFIG_ADDRESS_ENABLE | (u32::from(device) << 11) | u32::from(reg)
}

impl Machine {
    fn select(&self, device: u8, reg: u8) {
        self.io
            .write(PioAddress(0xCF8), &address(device, reg).to_le_bytes());
    }
    fn read32(&self, device: u8, reg: u8) -> u32 {
        self.select(device, reg);
        let mut data = [0u8; 4];
        assert!(self.io.read(PioAddress(0xCFC), &mut data));
        u32::from_le_bytes(data)
    }
    fn write32(&self, device: u8, reg: u8, value: u32) {
        self.select(device, reg);
        self.io.write(PioAddress(0xCFC), &value.to_le_bytes());
    }
    fn mmio_claimed(&self, addr: u64) -> bool {
        self.mmio.read(MmioAddress(addr), &mut [0u8; 4])
    }
}

#[test]
fn type1_address_register_and_host_bridge() {
    let m = machine();
    m.io.write(PioAddress(0xCF8), &0xFFFF_FFFFu32.to_le_bytes());
    let mut data = [0u8; 4];
    m.io.read(PioAddress(0xCF8), &mut data);
    assert_eq!(
        u32::from_le_bytes(data),
        0x80FF_FFFC,
        "reserved bits read 0"
    );
    // Linux's probe: write 0x80000000 and read it back.
    m.io.write(PioAddress(0xCF8), &0x8000_0000u32.to_le_bytes());
    m.io.read(PioAddress(0xCF8), &mut data);
    assert_eq!(u32::from_le_bytes(data), 0x8000_0000);
    assert_eq!(m.read32(0, 0), 0x0D57_8086);
    assert_eq!(m.read32(0, 8) >> 8, 0x06_00_00, "host bridge class");
    // Byte and word reads at the right lanes.
    m.select(0, 0);
    let mut byte = [0u8];
    m.io.read(PioAddress(0xCFD), &mut byte);
    assert_eq!(byte[0], 0x80);
    let mut word = [0u8; 2];
    m.io.read(PioAddress(0xCFE), &mut word);
    assert_eq!(u16::from_le_bytes(word), 0x0D57);
    m.io.read(PioAddress(0xCFD), &mut word);
    assert_eq!(
        u16::from_le_bytes(word),
        0x5780,
        "unaligned word inside the dword"
    );
}

#[test]
fn type1_odd_accesses_and_missing_functions() {
    let m = machine();
    // Non-dword accesses to CONFIG_ADDRESS are not configuration cycles.
    m.io.write(PioAddress(0xCF8), &0x8000_0000u32.to_le_bytes());
    m.io.write(PioAddress(0xCF9), &[0x06]);
    m.io.write(PioAddress(0xCF8), &[0, 0]);
    let mut data = [0u8; 4];
    m.io.read(PioAddress(0xCF8), &mut data);
    assert_eq!(u32::from_le_bytes(data), 0x8000_0000);
    let mut two = [0u8; 2];
    m.io.read(PioAddress(0xCF8), &mut two);
    assert_eq!(two, [0xFF; 2]);
    // A word straddling address and data registers.
    m.io.read(PioAddress(0xCFB), &mut two);
    assert_eq!(two, [0xFF; 2]);
    m.io.write(PioAddress(0xCFB), &[1, 2]);
    let bad = m.root.stats().bad_accesses;
    assert_eq!(bad, 5);

    // Enable bit clear: all ones, writes go nowhere.
    m.io.write(PioAddress(0xCF8), &0u32.to_le_bytes());
    m.io.read(PioAddress(0xCFC), &mut data);
    assert_eq!(data, [0xFF; 4]);
    m.io.write(PioAddress(0xCFC), &[0; 4]);
    // Empty slot, other bus, other function.
    assert_eq!(m.read32(5, 0), u32::MAX);
    m.io.write(
        PioAddress(0xCF8),
        &(CONFIG_ADDRESS_ENABLE | (1 << 16)).to_le_bytes(),
    );
    m.io.read(PioAddress(0xCFC), &mut data);
    assert_eq!(data, [0xFF; 4]);
    m.io.write(
        PioAddress(0xCF8),
        &(CONFIG_ADDRESS_ENABLE | (1 << 8)).to_le_bytes(),
    );
    m.io.read(PioAddress(0xCFC), &mut data);
    assert_eq!(data, [0xFF; 4]);
    m.write32(7, 0x10, 0);
    let stats = m.root.stats();
    assert_eq!(stats.unclaimed, 4);
    assert!(stats.config_reads >= 3 && stats.config_writes >= 1);
}

#[test]
fn devices_get_slots_and_pre_assigned_bars() {
    let mut m = machine();
    let dev = TestDevice::new(&[
        (0, PciBarKind::Memory64, 0x8000),
        (2, PciBarKind::Memory32, 0x1000),
    ]);
    let number = m
        .root
        .add_device("blk0", dev.clone(), &mut m.allocators)
        .unwrap();
    assert_eq!(number, 1);
    let config = dev.lock().unwrap().config.clone();
    let bar0 = config.bar_address(0).unwrap();
    let bar2 = config.bar_address(2).unwrap();
    assert!(bar0 >= MMIO32_START && bar0 + 0x8000 <= 1 << 32);
    assert_eq!(bar0 % 0x8000, 0, "naturally aligned");
    assert!((MMIO32_START..1 << 32).contains(&bar2));
    assert_ne!(config.command() & COMMAND_MEMORY_SPACE, 0);
    assert_eq!(m.read32(1, 0), 0x5678_1234);
    assert_eq!(m.read32(1, 0x10), bar0 as u32 | 0x4);
    assert_eq!(m.read32(1, 0x14), 0, "below 4 GiB");
    assert_eq!(m.root.placed_bars(1).len(), 2);
    assert!(m.root.placed_bars(9).is_empty());
    let placed = m.root.placed_bars(1);
    for mapping in &placed {
        assert_eq!(m.root.placed_bar(1, mapping.index), Some(*mapping));
    }
    assert_eq!(m.root.placed_bar(9, 0), None);
    assert_eq!(m.root.placed_bar(1, 200), None);

    // The BARs decode on the MMIO bus, with offsets from their bases.
    let mut data = [0u8; 4];
    assert!(m.mmio.read(MmioAddress(bar0 + 0x3004), &mut data));
    assert_eq!(data, [4; 4]);
    m.mmio.write(MmioAddress(bar2 + 8), &[1, 2]);
    assert_eq!(
        dev.lock().unwrap().seen,
        vec![(0, 0x3004, 4, false), (2, 8, 2, true)]
    );
    let names: Vec<_> = m
        .mmio
        .range_stats()
        .into_iter()
        .filter_map(|r| r.name.map(|n| n.to_string()))
        .collect();
    assert!(names.contains(&"blk0-bar0".to_string()));
    assert!(names.contains(&"pci-ecam".to_string()));

    let second = TestDevice::new(&[(0, PciBarKind::Memory32, 0x1000)]);
    assert_eq!(
        m.root
            .add_device("second", second, &mut m.allocators)
            .unwrap(),
        2
    );
    assert!(format!("{:?}", m.root).contains("second"));
}

#[test]
fn bar_sizing_through_the_ports() {
    let mut m = machine();
    let dev = TestDevice::new(&[
        (0, PciBarKind::Memory64, 0x8000),
        (2, PciBarKind::Memory32, 0x1000),
    ]);
    m.root.add_device("d", dev, &mut m.allocators).unwrap();
    let bar0 = m.read32(1, 0x10);
    // The firmware's sequence, with decoding left on.
    m.write32(1, 0x10, u32::MAX);
    let low = m.read32(1, 0x10) & !0xF;
    m.write32(1, 0x10, bar0);
    m.write32(1, 0x14, u32::MAX);
    let high = m.read32(1, 0x14);
    m.write32(1, 0x14, 0);
    let size = !((u64::from(high) << 32) | u64::from(low)) + 1;
    assert_eq!(size, 0x8000);
    m.write32(1, 0x18, u32::MAX);
    assert_eq!(m.read32(1, 0x18), 0xFFFF_F000);
    m.write32(1, 0x1C, u32::MAX);
    assert_eq!(m.read32(1, 0x1C), 0, "unused BAR");
    m.write32(1, 0x30, u32::MAX);
    assert_eq!(m.read32(1, 0x30), 0, "no expansion ROM");
    // After sizing the BAR is back where it was and decodes there.
    assert!(m.mmio_claimed(u64::from(bar0 & !0xF)));
}

#[test]
fn decode_off_removes_ranges_and_on_restores_them() {
    let mut m = machine();
    let dev = TestDevice::new(&[(0, PciBarKind::Memory32, 0x1000)]);
    m.root.add_device("d", dev, &mut m.allocators).unwrap();
    let bar = u64::from(m.read32(1, 0x10) & !0xF);
    assert!(m.mmio_claimed(bar));
    let command = m.read32(1, COMMAND as u8);
    m.write32(1, COMMAND as u8, command & !u32::from(COMMAND_MEMORY_SPACE));
    assert!(!m.mmio_claimed(bar), "decode off: the range is gone");
    assert!(m.root.placed_bars(1).is_empty());
    // Moving the BAR while decode is off, then turning decode on, places it at the new address.
    m.write32(1, 0x10, 0xE000_0000);
    assert!(!m.mmio_claimed(0xE000_0000));
    m.write32(1, COMMAND as u8, command);
    assert!(m.mmio_claimed(0xE000_0000));
    assert!(!m.mmio_claimed(bar));
}

/// A function written on `&self`: its configuration space behind its own lock, and its BAR
/// accesses recorded behind another. With `bus`, each configuration write also records whether
/// BAR 0's range was on the bus at the address the root last placed it (`placed_at`).
struct SharedDevice {
    config: Mutex<ConfigSpace>,
    seen: Mutex<Vec<(u8, u64, usize, bool)>>,
    bus: Option<Weak<MmioBus>>,
    placed_at: AtomicU64,
    claimed_during_writes: Mutex<Vec<bool>>,
}

impl SharedDevice {
    fn new(bars: &[(u8, PciBarKind, u64)], bus: Option<&Arc<MmioBus>>) -> Arc<Self> {
        let test = TestDevice::new(bars);
        let config = test.lock().unwrap().config.clone();
        Arc::new(Self {
            config: Mutex::new(config),
            seen: Mutex::new(Vec::new()),
            bus: bus.map(Arc::downgrade),
            placed_at: AtomicU64::new(0),
            claimed_during_writes: Mutex::new(Vec::new()),
        })
    }

    fn seen(&self) -> Vec<(u8, u64, usize, bool)> {
        self.seen.lock().unwrap().clone()
    }
}

impl PciDevice for SharedDevice {
    fn config_read(&self, offset: u8, data: &mut [u8]) {
        self.config.lock().unwrap().read(offset.into(), data);
    }
    fn config_write(&self, offset: u8, data: &[u8]) {
        // The root holds no bus lock while a device runs, and changes no bus before the
        // device's call returns: the range is still where it was placed.
        if let Some(bus) = self.bus.as_ref().and_then(Weak::upgrade) {
            let at = MmioAddress(self.placed_at.load(Ordering::Relaxed));
            let claimed = bus.lookup(at, 1).is_some();
            self.claimed_during_writes.lock().unwrap().push(claimed);
        }
        self.config.lock().unwrap().write(offset.into(), data);
    }
    fn bars(&self) -> [Option<PciBar>; NUM_BARS] {
        self.config.lock().unwrap().pci_bars()
    }
    fn bar_read(&self, index: u8, offset: u64, data: &mut [u8]) {
        self.seen
            .lock()
            .unwrap()
            .push((index, offset, data.len(), false));
        data.fill(offset as u8);
    }
    fn bar_write(&self, index: u8, offset: u64, data: &[u8]) -> DeviceAction {
        self.seen
            .lock()
            .unwrap()
            .push((index, offset, data.len(), true));
        DeviceAction::Stop(vmkit_exits::StopReason::GuestExit(data.len() as u32))
    }
}

#[test]
fn bar_moves_move_the_range() {
    // The same guest sequence, against a `Mutex<T: MutPciDevice>` and a `&self` device.
    let locked = TestDevice::new(&[(0, PciBarKind::Memory64, 0x4000)]);
    let seen = locked.clone();
    bar_moves_move_the_range_of(locked, &move || seen.lock().unwrap().seen.clone());
    let shared = SharedDevice::new(&[(0, PciBarKind::Memory64, 0x4000)], None);
    let seen = shared.clone();
    bar_moves_move_the_range_of(shared, &move || seen.seen());
}

fn bar_moves_move_the_range_of(
    dev: Arc<dyn PciDevice>,
    seen: &dyn Fn() -> Vec<(u8, u64, usize, bool)>,
) {
    let mut m = machine();
    m.root.add_device("d", dev, &mut m.allocators).unwrap();
    let old = u64::from(m.read32(1, 0x10) & !0xF);
    // Byte write to the top byte of the low half.
    m.select(1, 0x10);
    m.io.write(PioAddress(0xCFF), &[0xE1]);
    let moved = (old & 0x00FF_FFFF) | 0xE100_0000;
    assert!(m.mmio_claimed(moved));
    assert!(!m.mmio_claimed(old));
    // The upper half moves it above 4 GiB.
    m.write32(1, 0x14, 0x2);
    let high = 0x2_0000_0000 | moved;
    assert!(m.mmio_claimed(high + 0x3FFC));
    assert!(!m.mmio_claimed(high + 0x4000));
    assert!(!m.mmio_claimed(moved));
    assert_eq!(seen().last(), Some(&(0, 0x3FFC, 4, false)));
    assert_eq!(
        m.root.placed_bars(1),
        vec![BarMapping {
            index: 0,
            space: BarSpace::Memory,
            address: high,
            size: 0x4000
        }]
    );
}

#[test]
fn overlapping_bars_do_not_decode_until_moved_apart() {
    let mut m = machine();
    let a = TestDevice::new(&[(0, PciBarKind::Memory32, 0x1000)]);
    let b = TestDevice::new(&[(0, PciBarKind::Memory32, 0x1000)]);
    m.root
        .add_device("a", a.clone(), &mut m.allocators)
        .unwrap();
    m.root
        .add_device("b", b.clone(), &mut m.allocators)
        .unwrap();
    let bar_a = m.read32(1, 0x10);
    let bar_b = m.read32(2, 0x10);
    m.write32(2, 0x10, bar_a);
    assert_eq!(m.root.stats().bar_conflicts, 1);
    assert!(m.root.placed_bars(2).is_empty(), "b does not decode");
    m.mmio.read(MmioAddress(u64::from(bar_a)), &mut [0u8; 1]);
    assert_eq!(a.lock().unwrap().seen.len(), 1, "a still decodes");
    assert!(b.lock().unwrap().seen.is_empty());
    // Moving b to a free place brings it back; onto ECAM is refused too.
    m.write32(2, 0x10, 0xC000_0000);
    assert!(m.root.placed_bars(2).is_empty());
    m.write32(2, 0x10, bar_b);
    assert_eq!(m.root.placed_bars(2).len(), 1);
    assert!(m.mmio_claimed(u64::from(bar_b)));
    assert_eq!(m.root.stats().bar_conflicts, 2);
}

#[test]
fn relocation_onto_another_range_unmaps_the_bar() {
    let mut m = machine();
    let a = TestDevice::new(&[(0, PciBarKind::Memory32, 0x1000)]);
    m.root.add_device("a", a, &mut m.allocators).unwrap();
    let bar = u64::from(m.read32(1, 0x10));
    // Move it onto ECAM (a range of the same bus): refused, and it stops decoding at the old place.
    m.write32(1, 0x10, 0xC000_1000);
    assert!(!m.mmio_claimed(bar));
    assert!(m.root.placed_bars(1).is_empty());
    m.write32(1, 0x10, bar as u32);
    assert!(m.mmio_claimed(bar));
}

#[test]
fn io_bars_are_placed_on_the_port_bus() {
    let mut m = machine();
    let dev = TestDevice::new(&[(1, PciBarKind::Io, 0x20)]);
    m.root
        .add_device("io", dev.clone(), &mut m.allocators)
        .unwrap();
    let port = m.read32(1, 0x14);
    assert_eq!(port & 1, 1);
    let port = (port & !3) as u16;
    assert!(port >= PIO_START);
    let mut data = [0u8; 2];
    assert!(m.io.read(PioAddress(port + 6), &mut data));
    assert_eq!(data, [6, 6]);
    m.io.write(PioAddress(port + 0x1F), &[1]);
    assert_eq!(dev.lock().unwrap().seen.last(), Some(&(1, 0x1F, 1, true)));
    m.write32(1, 0x14, 0x2000);
    assert!(m.io.read(PioAddress(0x2000), &mut data));
    assert!(!m.io.read(PioAddress(port), &mut data));
    let command = m.read32(1, COMMAND as u8);
    m.write32(1, COMMAND as u8, command & !u32::from(COMMAND_IO_SPACE));
    assert!(!m.io.read(PioAddress(0x2000), &mut data));
}

#[test]
fn ecam_reaches_the_same_functions() {
    let mut m = machine();
    let dev = TestDevice::new(&[(0, PciBarKind::Memory32, 0x1000)]);
    m.root.add_device("d", dev, &mut m.allocators).unwrap();
    let ecam = |dev: u64, reg: u64| PCI_ECAM_START + (dev << 15) + reg;
    let mut data = [0u8; 4];
    assert!(m.mmio.read(MmioAddress(ecam(1, 0)), &mut data));
    assert_eq!(u32::from_le_bytes(data), 0x5678_1234);
    m.mmio
        .write(MmioAddress(ecam(1, INTERRUPT_LINE as u64)), &[9]);
    assert_eq!(m.read32(1, INTERRUPT_LINE as u8) & 0xFF, 9);
    // Extended space of a present function reads 0, of an absent one all ones.
    m.mmio.read(MmioAddress(ecam(1, 0x100)), &mut data);
    assert_eq!(data, [0; 4]);
    m.mmio.write(MmioAddress(ecam(1, 0x100)), &[1; 4]);
    m.mmio.read(MmioAddress(ecam(3, 0x100)), &mut data);
    assert_eq!(data, [0xFF; 4]);
    // Another bus, a function other than 0.
    m.mmio
        .read(MmioAddress(PCI_ECAM_START + (1 << 20)), &mut data);
    assert_eq!(data, [0xFF; 4]);
    m.mmio.read(MmioAddress(ecam(1, 1 << 12)), &mut data);
    assert_eq!(data, [0xFF; 4]);
    // Accesses crossing a dword, and 8-byte ones, are not defined.
    m.mmio.read(MmioAddress(ecam(1, 2)), &mut data);
    assert_eq!(data, [0xFF; 4]);
    let mut eight = [0u8; 8];
    m.mmio.read(MmioAddress(ecam(1, 0)), &mut eight);
    assert_eq!(eight, [0xFF; 8]);
    m.mmio.write(MmioAddress(ecam(1, 0x3E)), &[0; 4]);
    assert_eq!(m.root.stats().bad_accesses, 3);
}

#[test]
fn ecam_offsets_past_the_window_reach_no_function() {
    // A caller that hands the root an offset past its 256 buses (a range registered larger
    // than the window, a harness calling it directly) must not reach bus `offset >> 20`
    // modulo 256.
    let mut m = machine();
    let dev = TestDevice::new(&[(0, PciBarKind::Memory32, 0x1000)]);
    m.root.add_device("d", dev, &mut m.allocators).unwrap();
    let base = MmioAddress(PCI_ECAM_START);
    let past = PCI_ECAM_SIZE + (1 << 15);
    let mut data = [0u8; 4];
    m.root.mmio_read(base, past, &mut data);
    assert_eq!(data, [0xFF; 4]);
    m.root.mmio_write(base, past + INTERRUPT_LINE as u64, &[9]);
    assert_ne!(m.read32(1, INTERRUPT_LINE as u8) & 0xFF, 9);
    m.root.mmio_read(base, u64::MAX - 3, &mut data);
    assert_eq!(data, [0xFF; 4]);
    assert_eq!(m.root.stats().bad_accesses, 3);
}

#[test]
fn capability_chain_through_config_cycles() {
    let mut m = machine();
    let dev = TestDevice::new(&[(0, PciBarKind::Memory32, 0x1000)]);
    m.root.add_device("d", dev, &mut m.allocators).unwrap();
    let status = (m.read32(1, 4) >> 16) as u16;
    assert_ne!(status & STATUS_CAPABILITIES_LIST, 0);
    let mut next = (m.read32(1, 0x34) & 0xFC) as u8;
    let mut ids = Vec::new();
    while next != 0 {
        let header = m.read32(1, next);
        ids.push(header as u8);
        next = ((header >> 8) & 0xFC) as u8;
    }
    assert_eq!(ids, vec![CAP_ID_VENDOR, CAP_ID_MSIX]);
    // The interrupt line is writable, the pin is not.
    m.write32(1, 0x3C, 0xFFFF_FFFF);
    assert_eq!(m.read32(1, 0x3C), 0x0000_00FF);
    assert_eq!(BAR0, 0x10);
}

#[test]
fn slots_run_out_and_failed_plugs_leave_nothing_behind() {
    let mut m = machine();
    let huge = TestDevice::new(&[
        (0, PciBarKind::Memory32, 0x1000),
        (1, PciBarKind::Memory32, 1 << 31),
    ]);
    let err = m
        .root
        .add_device("huge", huge, &mut m.allocators)
        .unwrap_err();
    assert!(
        matches!(err, PciError::Allocation { index: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("BAR 1"));
    // The first BAR's allocation was returned: the next device gets the window's start.
    let first = m.allocators.allocate_mmio32(0x1000, 0x1000).unwrap();
    assert_eq!(first.start.0, MMIO32_START);
    m.allocators.free_mmio32(first).unwrap();
    assert_eq!(m.read32(1, 0), u32::MAX, "nothing was plugged");

    for n in 1..=MAX_ENDPOINTS {
        let dev = TestDevice::new(&[]);
        assert_eq!(
            m.root.add_device("d", dev, &mut m.allocators).unwrap(),
            n as u8
        );
    }
    let err = m
        .root
        .add_device("extra", TestDevice::new(&[]), &mut m.allocators)
        .unwrap_err();
    assert!(matches!(err, PciError::NoFreeSlot));
}

#[test]
fn a_plug_whose_bar_lands_on_a_taken_range_is_refused() {
    let mut m = machine();
    // Something else already sits where the allocator will place the BAR.
    let squatter = TestDevice::new(&[]);
    let region: Arc<dyn MmioDevice> = Arc::new(BarRegion {
        device: squatter,
        index: 0,
    });
    m.mmio
        .register(
            BusRange::new(MmioAddress(MMIO32_START + 0x1000), 0x1000),
            region,
        )
        .unwrap();
    let dev = TestDevice::new(&[
        (0, PciBarKind::Memory32, 0x1000),
        (1, PciBarKind::Memory32, 0x1000),
    ]);
    let err = m.root.add_device("d", dev, &mut m.allocators).unwrap_err();
    assert!(
        matches!(err, PciError::BarConflict { index: 1, .. }),
        "{err}"
    );
    assert!(!m.mmio_claimed(MMIO32_START), "BAR 0 was taken off again");
    assert_eq!(m.read32(1, 0), u32::MAX);
    let again = m.allocators.allocate_mmio32(0x1000, 0x1000).unwrap();
    assert_eq!(again.start.0, MMIO32_START, "allocations were freed");
}

#[test]
fn config_access_registration_conflicts_are_reported() {
    let io = Arc::new(IoBus::new());
    let mmio = Arc::new(MmioBus::new());
    let _root = PciRoot::new(&io, &mmio).unwrap();
    assert!(matches!(
        PciRoot::new(&io, &mmio).unwrap_err(),
        PciError::Bus(BusError::Overlap { .. })
    ));
    let io2 = Arc::new(IoBus::new());
    let err = PciRoot::new(&io2, &mmio).unwrap_err();
    assert!(err.to_string().contains("configuration-access"));
    assert!(io2.is_empty(), "the port range was taken back");
}

#[test]
fn dropped_buses_are_tolerated() {
    let mut m = machine();
    let dev = TestDevice::new(&[(0, PciBarKind::Memory32, 0x1000), (1, PciBarKind::Io, 0x10)]);
    m.root.add_device("d", dev, &mut m.allocators).unwrap();
    let root = m.root.clone();
    drop(m.io);
    drop(m.mmio);
    root.config_write(0, 1, 0, 0x10, &0xE000_0000u32.to_le_bytes());
    root.config_write(0, 1, 0, 0x14, &0x3000u32.to_le_bytes());
    root.config_write(0, 1, 0, COMMAND, &[0, 0]);
    root.config_write(0, 1, 0, COMMAND, &[3, 0]);
    let mut data = [0u8; 4];
    root.config_read(0, 1, 0, 0x10, &mut data);
    assert_eq!(u32::from_le_bytes(data), 0xE000_0000);
    assert!(PciRoot::new(&Arc::new(IoBus::new()), &Arc::new(MmioBus::new())).is_ok());
    assert!(format!("{:?}", HostBridge::default()).contains("0x8086"));
}

#[test]
fn a_shared_device_is_programmed_and_reached_without_the_root() {
    let mut m = machine();
    let dev = SharedDevice::new(
        &[(0, PciBarKind::Memory32, 0x1000), (2, PciBarKind::Io, 0x10)],
        Some(&m.mmio),
    );
    m.root
        .add_device("shared", dev.clone(), &mut m.allocators)
        .unwrap();
    // Firmware's set-up reached the device through configuration writes.
    let bars = dev.bars();
    let (bar0, bar2) = (bars[0].unwrap(), bars[2].unwrap());
    assert!(bar0.decoding && bar2.decoding);
    assert_eq!(u64::from(m.read32(1, 0x10) & !0xF), bar0.address);
    dev.placed_at.store(bar0.address, Ordering::Relaxed);
    dev.claimed_during_writes.lock().unwrap().clear();

    // BAR accesses go straight to the device; a write's answer comes back through the bus.
    let mut data = [0u8; 2];
    assert!(m.mmio.read(MmioAddress(bar0.address + 0x12), &mut data));
    assert_eq!(data, [0x12; 2]);
    let port = PioAddress(bar2.address as u16);
    assert_eq!(
        m.io.write(PioAddress(port.0 + 3), &[1, 2, 3, 4]),
        Some(DeviceAction::Stop(vmkit_exits::StopReason::GuestExit(4)))
    );
    assert_eq!(dev.seen(), vec![(0, 0x12, 2, false), (2, 3, 4, true)]);

    // The guest moves BAR 0: during the device's call the range is still at the old place,
    // after it the range has moved.
    m.write32(1, 0x10, 0xE000_0000);
    assert_eq!(*dev.claimed_during_writes.lock().unwrap(), vec![true]);
    assert!(m.mmio_claimed(0xE000_0000));
    assert!(!m.mmio_claimed(bar0.address));
    assert_eq!(m.root.placed_bars(1)[0].address, 0xE000_0000);
}

/// A function whose BAR layout the root refuses, or that ignores the firmware's writes.
struct OddDevice {
    bars: [Option<PciBar>; NUM_BARS],
}

impl PciDevice for OddDevice {
    fn config_read(&self, _offset: u8, data: &mut [u8]) {
        data.fill(0);
    }
    fn config_write(&self, _offset: u8, _data: &[u8]) {}
    fn bars(&self) -> [Option<PciBar>; NUM_BARS] {
        self.bars
    }
}

#[test]
fn bars_the_root_cannot_place_are_refused_and_leave_nothing_behind() {
    let mut m = machine();
    let bar = |kind, size| PciBar {
        kind,
        size,
        address: 0,
        prefetchable: false,
        decoding: false,
    };
    let cases = [
        (
            5,
            bar(PciBarKind::Memory64, 0x1000),
            "no register for the upper half",
        ),
        (0, bar(PciBarKind::Memory32, 0x1800), "not a power of two"),
        (0, bar(PciBarKind::Memory32, 8), "below 16 bytes"),
        (1, bar(PciBarKind::Io, 0x200), "over 256 ports"),
        (1, bar(PciBarKind::Io, 2), "below 4 ports"),
        (0, bar(PciBarKind::Memory32, 0), "empty"),
    ];
    for (index, odd, why) in cases {
        let mut bars = [None; NUM_BARS];
        // A good BAR first, so an allocation is made and must be returned.
        bars[if index == 0 { 2 } else { 0 }] = Some(bar(PciBarKind::Memory32, 0x1000));
        bars[index] = Some(odd);
        let err = m
            .root
            .add_device("odd", Arc::new(OddDevice { bars }), &mut m.allocators)
            .unwrap_err();
        assert!(
            matches!(err, PciError::InvalidBar { index: i, .. } if usize::from(i) == index),
            "{why}: {err}"
        );
    }
    assert!(
        PciError::InvalidBar {
            index: 5,
            kind: PciBarKind::Memory64,
            size: 0x1000
        }
        .to_string()
        .starts_with("BAR 5 (Memory64, 0x1000 bytes)")
    );

    // A device that ignores the BAR writes (its BAR stays at 0, decoding off).
    let mut bars = [None; NUM_BARS];
    bars[0] = Some(bar(PciBarKind::Memory32, 0x1000));
    let err = m
        .root
        .add_device("deaf", Arc::new(OddDevice { bars }), &mut m.allocators)
        .unwrap_err();
    assert!(
        matches!(err, PciError::BarRefused { index: 0, address } if address == MMIO32_START),
        "{err}"
    );
    assert!(err.to_string().contains("does not decode"));
    assert_eq!(m.read32(1, 0), u32::MAX, "nothing was plugged");
    let first = m.allocators.allocate_mmio32(0x1000, 0x1000).unwrap();
    assert_eq!(first.start.0, MMIO32_START, "every allocation was returned");
}

#[test]
fn a_function_without_bars_is_plugged_without_touching_its_command_register() {
    let mut m = machine();
    let dev = SharedDevice::new(&[], Some(&m.mmio));
    m.root
        .add_device("plain", dev.clone(), &mut m.allocators)
        .unwrap();
    assert!(dev.claimed_during_writes.lock().unwrap().is_empty());
    assert!(m.root.placed_bars(1).is_empty());
}

/// An ill-behaved function with one I/O BAR of 16 ports: a BAR write takes the whole dword as
/// the address (no mask), and bit 0 of the command register turns decoding on and off.
struct UnmaskedIoBar {
    bar: Mutex<PciBar>,
}

impl PciDevice for UnmaskedIoBar {
    fn config_read(&self, offset: u8, data: &mut [u8]) {
        let command = u16::from(self.bar.lock().unwrap().decoding);
        let bytes = if usize::from(offset) == COMMAND {
            command.to_le_bytes()
        } else {
            [0, 0]
        };
        for (byte, value) in data.iter_mut().zip(bytes.into_iter().chain([0; 4])) {
            *byte = value;
        }
    }
    fn config_write(&self, offset: u8, data: &[u8]) {
        let mut bar = self.bar.lock().unwrap();
        match (usize::from(offset), data) {
            (BAR0, &[a, b, c, d]) => bar.address = u32::from_le_bytes([a, b, c, d]).into(),
            (COMMAND, &[command, ..]) => bar.decoding = command & 1 != 0,
            _ => {}
        }
    }
    fn bars(&self) -> [Option<PciBar>; NUM_BARS] {
        [
            Some(*self.bar.lock().unwrap()),
            None,
            None,
            None,
            None,
            None,
        ]
    }
}

#[test]
fn an_io_bar_reported_above_64k_does_not_decode() {
    let mut m = machine();
    let dev = Arc::new(UnmaskedIoBar {
        bar: Mutex::new(PciBar {
            kind: PciBarKind::Io,
            size: 0x10,
            address: 0,
            prefetchable: false,
            decoding: false,
        }),
    });
    m.root
        .add_device("io", dev.clone(), &mut m.allocators)
        .unwrap();
    let port = dev.bar.lock().unwrap().address;
    assert!(m.io.read(PioAddress(port as u16), &mut [0u8]));

    // Moved past the port space while decoding: the move is refused and the range goes.
    m.write32(1, 0x10, 0x1_0000);
    assert!(!m.io.read(PioAddress(port as u16), &mut [0u8]));
    assert!(m.root.placed_bars(1).is_empty());
    // Decoding off and on again at that address: placing it is refused as well.
    m.write32(1, COMMAND as u8, 0);
    m.write32(1, COMMAND as u8, 1);
    assert!(m.root.placed_bars(1).is_empty());
    assert_eq!(m.root.stats().bar_conflicts, 2);
    // Back inside the port space it decodes again.
    m.write32(1, 0x10, 0x2000);
    assert!(m.io.read(PioAddress(0x2000), &mut [0u8]));
}
