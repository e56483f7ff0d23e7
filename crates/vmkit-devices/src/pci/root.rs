//! The root complex: bus 0, its slots, configuration access and BAR placement on the buses.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use log::debug;
use vmkit_exits::{
    BusError, BusRange, DeviceAction, IoBus, MmioAddress, MmioBus, MmioDevice, PioAddress,
    PioDevice,
};
use vmkit_memory::layout::{PCI_ECAM_SIZE, PCI_ECAM_START};
use vmkit_memory::{AddressRange, AllocatorError, Allocators, PortRange};

use super::config::{
    BAR0, BarMapping, BarSpace, COMMAND, COMMAND_IO_SPACE, COMMAND_MEMORY_SPACE, ConfigSpace,
    MAX_IO_BAR_SIZE, MIN_IO_BAR_SIZE, MIN_MEMORY_BAR_SIZE, NUM_BARS, PciIds,
};
use super::{MutPciDevice, PciBar, PciBarKind, PciDevice, lock};

/// First port of the type-1 configuration mechanism: CONFIG_ADDRESS at 0xCF8, CONFIG_DATA at
/// 0xCFC..=0xCFF.
pub const CONFIG_IO_PORT: u16 = 0xCF8;
/// Ports the type-1 mechanism covers (0xCF8..0xD00).
pub const CONFIG_IO_LEN: u64 = 8;
/// CONFIG_ADDRESS bit 31: the next CONFIG_DATA access is a configuration cycle.
pub const CONFIG_ADDRESS_ENABLE: u32 = 1 << 31;
/// CONFIG_ADDRESS bits that hold state: enable, bus, device, function and dword register.
const CONFIG_ADDRESS_MASK: u32 = 0x80FF_FFFC;
/// Device numbers on bus 0: slot 0 is the host bridge, 1..=31 take endpoints.
pub const MAX_SLOTS: usize = 32;
/// The most devices [`PciRoot::add_device`] places on the root bus: every slot but the host
/// bridge's (slot 0). A VMM derives its limit on PCI devices (disks, say) from it.
pub const MAX_ENDPOINTS: usize = MAX_SLOTS - 1;
/// Host bridge vendor ID (Intel, as Cloud Hypervisor's host bridge).
pub const HOST_BRIDGE_VENDOR_ID: u16 = 0x8086;
/// Host bridge device ID (as Cloud Hypervisor's host bridge).
pub const HOST_BRIDGE_DEVICE_ID: u16 = 0x0D57;
/// Size of one function's ECAM window.
const ECAM_FUNCTION_SIZE: usize = 4096;

/// A device or root-complex set-up failure; the root is unchanged.
#[derive(Debug, displaydoc::Display, thiserror::Error)]
#[ignore_extra_doc_attributes]
pub enum PciError {
    /// registering the configuration-access ranges failed
    Bus(#[from] BusError),
    /// all 31 device slots of bus 0 are taken
    NoFreeSlot,
    /// no room for BAR {index} of {size:#x} bytes
    Allocation {
        /// The BAR.
        index: u8,
        /// Its size.
        size: u64,
        /// What the allocator said.
        source: AllocatorError,
    },
    /// BAR {index} ({kind:?}, {size:#x} bytes) is not a BAR the PCI specification allows
    InvalidBar {
        /// The BAR.
        index: u8,
        /// Its kind.
        kind: PciBarKind,
        /// Its size.
        size: u64,
    },
    /// BAR {index} does not decode at {address:#x} after the firmware's set-up
    BarRefused {
        /// The BAR.
        index: u8,
        /// The address written to it.
        address: u64,
    },
    /// BAR {index} overlaps a range already on the bus
    BarConflict {
        /// The BAR.
        index: u8,
        /// What the bus said.
        source: BusError,
    },
}

/// Counts of the root's configuration traffic and BAR placement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PciStats {
    /// Configuration reads (type-1 and ECAM).
    pub config_reads: u64,
    /// Configuration writes (type-1 and ECAM).
    pub config_writes: u64,
    /// Configuration accesses to a function that does not exist (read as all ones).
    pub unclaimed: u64,
    /// Accesses of a size or alignment the mechanism does not define (read as all ones).
    pub bad_accesses: u64,
    /// BAR ranges placed, moved or removed on a bus.
    pub bar_updates: u64,
    /// BAR placements the bus refused (overlap, wrap); the BAR does not decode.
    pub bar_conflicts: u64,
}

#[derive(Default)]
struct Counters {
    config_reads: AtomicU64,
    config_writes: AtomicU64,
    unclaimed: AtomicU64,
    bad_accesses: AtomicU64,
    bar_updates: AtomicU64,
    bar_conflicts: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The host bridge at 00:00.0: a bare type-0 header (class 06/00), as virtual platforms
/// present it. Guests probe it to detect the type-1 mechanism.
#[derive(Debug)]
pub struct HostBridge {
    config: ConfigSpace,
}

impl HostBridge {
    /// The host bridge's header.
    pub fn new() -> Self {
        Self {
            config: ConfigSpace::new(PciIds {
                vendor_id: HOST_BRIDGE_VENDOR_ID,
                device_id: HOST_BRIDGE_DEVICE_ID,
                revision_id: 0,
                class_code: 0x06_00_00,
                subsystem_vendor_id: 0,
                subsystem_id: 0,
            }),
        }
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

/// A bare header with no BARs: the host bridge is plugged as a `Mutex<HostBridge>`.
impl MutPciDevice for HostBridge {
    fn config_read(&mut self, offset: u8, data: &mut [u8]) {
        self.config.read(offset.into(), data);
    }
    fn config_write(&mut self, offset: u8, data: &[u8]) {
        self.config.write(offset.into(), data);
    }
    fn bars(&self) -> [Option<PciBar>; NUM_BARS] {
        self.config.pci_bars()
    }
}

/// The bus handler of one BAR: forwards accesses to the device, which synchronises itself.
struct BarRegion {
    device: Arc<dyn PciDevice>,
    index: u8,
}

impl MmioDevice for BarRegion {
    fn mmio_read(&self, _base: MmioAddress, offset: u64, data: &mut [u8]) {
        self.device.bar_read(self.index, offset, data);
    }
    fn mmio_write(&self, _base: MmioAddress, offset: u64, data: &[u8]) -> DeviceAction {
        self.device.bar_write(self.index, offset, data)
    }
}

impl PioDevice for BarRegion {
    fn pio_read(&self, _base: PioAddress, offset: u16, data: &mut [u8]) {
        self.device.bar_read(self.index, offset.into(), data);
    }
    fn pio_write(&self, _base: PioAddress, offset: u16, data: &[u8]) -> DeviceAction {
        self.device.bar_write(self.index, offset.into(), data)
    }
}

/// What the allocators handed out for one BAR.
#[derive(Clone, Copy, Debug)]
enum Allocation {
    Mmio(AddressRange),
    Pio(PortRange),
}

struct Slot {
    name: Arc<str>,
    device: Arc<dyn PciDevice>,
    regions: [Option<Arc<BarRegion>>; NUM_BARS],
    /// What the configuration space asked for at the last reconciliation.
    wanted: [Option<BarMapping>; NUM_BARS],
    /// What is on a bus now.
    placed: [Option<BarMapping>; NUM_BARS],
    allocations: Vec<Allocation>,
}

/// The PCI root complex: bus 0 with a host bridge at 00:00.0 and up to 31 endpoints (function 0
/// each), reached through CONFIG_ADDRESS/CONFIG_DATA (0xCF8..0xD00) and through ECAM.
///
/// It is a [`PioDevice`] (registered at [`CONFIG_IO_PORT`]) and an [`MmioDevice`] (registered
/// over [`PCI_ECAM_START`]). It refers to the buses weakly, because they hold it: a strong
/// reference would be a cycle that outlives the VM.
pub struct PciRoot {
    io_bus: Weak<IoBus>,
    mmio_bus: Weak<MmioBus>,
    address: AtomicU32,
    /// Slot `n` at index `n`; the vector grows as devices are plugged (to at most
    /// [`MAX_SLOTS`]), so that a root with few devices does not hold 32 empty slots.
    slots: Mutex<Vec<Option<Slot>>>,
    counters: Counters,
}

impl fmt::Debug for PciRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let slots = lock(&self.slots);
        let names: Vec<_> = slots
            .iter()
            .enumerate()
            .filter_map(|(n, s)| s.as_ref().map(|s| (n, s.name.clone())))
            .collect();
        f.debug_struct("PciRoot")
            .field("slots", &names)
            .finish_non_exhaustive()
    }
}

impl PciRoot {
    /// A root complex with the host bridge at 00:00.0, registered on `io_bus` at
    /// 0xCF8..0xD00 and on `mmio_bus` over the ECAM window of the layout.
    pub fn new(io_bus: &Arc<IoBus>, mmio_bus: &Arc<MmioBus>) -> Result<Arc<Self>, PciError> {
        let bridge: Arc<dyn PciDevice> = Arc::new(Mutex::new(HostBridge::new()));
        let slots = vec![Some(Slot {
            name: Arc::from("host-bridge"),
            device: bridge,
            regions: Default::default(),
            wanted: [None; NUM_BARS],
            placed: [None; NUM_BARS],
            allocations: Vec::new(),
        })];
        let root = Arc::new(Self {
            io_bus: Arc::downgrade(io_bus),
            mmio_bus: Arc::downgrade(mmio_bus),
            address: AtomicU32::new(0),
            slots: Mutex::new(slots),
            counters: Counters::default(),
        });
        io_bus.register_named(
            BusRange::new(PioAddress(CONFIG_IO_PORT), CONFIG_IO_LEN),
            "pci-config",
            root.clone(),
        )?;
        if let Err(err) = mmio_bus.register_named(
            BusRange::new(MmioAddress(PCI_ECAM_START), PCI_ECAM_SIZE),
            "pci-ecam",
            root.clone(),
        ) {
            let _ = io_bus.unregister(PioAddress(CONFIG_IO_PORT));
            return Err(err.into());
        }
        Ok(root)
    }

    /// Plugs `device` into the lowest free slot as firmware would: every BAR gets an address
    /// from `allocators` (memory BARs, 64-bit ones included, from the MMIO32 window below
    /// 4 GiB, naturally aligned; I/O BARs from the port window), decoding is enabled in the
    /// command register, and the BARs are placed on the buses under `name`. The BAR registers
    /// and the command register are programmed through [`PciDevice::config_write`], as firmware
    /// programs them. Returns the device number (1..=31). On error nothing is allocated,
    /// registered or plugged.
    ///
    /// A function written with `&mut self` is passed as an `Arc<Mutex<T>>` (a
    /// [`MutPciDevice`] behind a `Mutex` is a [`PciDevice`]).
    pub fn add_device(
        &self,
        name: &str,
        device: Arc<dyn PciDevice>,
        allocators: &mut Allocators,
    ) -> Result<u8, PciError> {
        let mut slots = lock(&self.slots);
        let number = slots
            .iter()
            .position(Option::is_none)
            .or((slots.len() < MAX_SLOTS).then_some(slots.len()))
            .ok_or(PciError::NoFreeSlot)?;
        let bars = device.bars();
        let allocations = Self::assign_bars(device.as_ref(), &bars, allocators)?;
        let regions: [Option<Arc<BarRegion>>; NUM_BARS] = std::array::from_fn(|i| {
            bars[i].map(|_| {
                Arc::new(BarRegion {
                    device: device.clone(),
                    // `i` < NUM_BARS = 6.
                    index: i as u8,
                })
            })
        });
        let mut slot = Slot {
            name: Arc::from(name),
            device,
            regions,
            wanted: [None; NUM_BARS],
            placed: [None; NUM_BARS],
            allocations,
        };
        if let Some((index, source)) = self.reconcile(&mut slot) {
            for mapping in slot.placed.iter().flatten() {
                self.remove(mapping);
            }
            Self::free(&slot.allocations, allocators);
            return Err(PciError::BarConflict { index, source });
        }
        match slots.get_mut(number) {
            Some(free) => *free = Some(slot),
            None => slots.push(Some(slot)),
        }
        // `number` < MAX_SLOTS = 32.
        Ok(number as u8)
    }

    /// Gives every BAR of `bars` an address and turns decoding on, as firmware does; on error
    /// what was allocated is freed.
    fn assign_bars(
        device: &dyn PciDevice,
        bars: &[Option<PciBar>; NUM_BARS],
        allocators: &mut Allocators,
    ) -> Result<Vec<Allocation>, PciError> {
        let mut allocations = Vec::new();
        match Self::program_bars(device, bars, allocators, &mut allocations) {
            Ok(()) => Ok(allocations),
            Err(err) => {
                Self::free(&allocations, allocators);
                Err(err)
            }
        }
    }

    fn program_bars(
        device: &dyn PciDevice,
        bars: &[Option<PciBar>; NUM_BARS],
        allocators: &mut Allocators,
        allocations: &mut Vec<Allocation>,
    ) -> Result<(), PciError> {
        let mut decode = 0;
        let mut assigned = [None; NUM_BARS];
        for ((index, bar), assigned) in (0u8..).zip(bars).zip(&mut assigned) {
            let Some(bar) = bar else {
                continue;
            };
            let (allocation, address) = Self::allocate_bar(index, bar, allocators)?;
            allocations.push(allocation);
            decode |= match bar.kind {
                PciBarKind::Io => COMMAND_IO_SPACE,
                PciBarKind::Memory32 | PciBarKind::Memory64 => COMMAND_MEMORY_SPACE,
            };
            // BAR registers are at 0x10..0x28: the offsets fit a byte.
            let register = (BAR0 + 4 * usize::from(index)) as u8;
            device.config_write(register, &(address as u32).to_le_bytes());
            if bar.kind == PciBarKind::Memory64 {
                device.config_write(register + 4, &((address >> 32) as u32).to_le_bytes());
            }
            *assigned = Some(address);
        }
        if decode != 0 {
            let mut command = [0u8; 2];
            device.config_read(COMMAND as u8, &mut command);
            let command = u16::from_le_bytes(command) | decode;
            device.config_write(COMMAND as u8, &command.to_le_bytes());
        }
        // The function must now decode every BAR where it was put.
        let now = device.bars();
        for ((index, address), bar) in (0u8..).zip(assigned).zip(now) {
            if let Some(address) = address
                && !bar.is_some_and(|bar| bar.address == address && bar.decoding)
            {
                return Err(PciError::BarRefused { index, address });
            }
        }
        Ok(())
    }

    /// An address for BAR `index` from the allocators, aligned to its size.
    fn allocate_bar(
        index: u8,
        bar: &PciBar,
        allocators: &mut Allocators,
    ) -> Result<(Allocation, u64), PciError> {
        let invalid = PciError::InvalidBar {
            index,
            kind: bar.kind,
            size: bar.size,
        };
        let allowed = match bar.kind {
            PciBarKind::Io => (MIN_IO_BAR_SIZE..=MAX_IO_BAR_SIZE).contains(&bar.size),
            PciBarKind::Memory32 => bar.size >= MIN_MEMORY_BAR_SIZE,
            // Its upper half needs the next register.
            PciBarKind::Memory64 => {
                bar.size >= MIN_MEMORY_BAR_SIZE && usize::from(index) + 1 < NUM_BARS
            }
        };
        if !allowed || !bar.size.is_power_of_two() {
            return Err(invalid);
        }
        let allocated = match bar.kind {
            PciBarKind::Memory32 | PciBarKind::Memory64 => allocators
                .allocate_mmio32(bar.size, bar.size)
                .map(|r| (Allocation::Mmio(r), r.start.0)),
            PciBarKind::Io => {
                let size = u16::try_from(bar.size).map_err(|_| invalid)?;
                allocators
                    .allocate_pio(size, size)
                    .map(|r| (Allocation::Pio(r), u64::from(r.start)))
            }
        };
        allocated.map_err(|source| PciError::Allocation {
            index,
            size: bar.size,
            source,
        })
    }

    fn free(allocations: &[Allocation], allocators: &mut Allocators) {
        for allocation in allocations {
            // These are exactly what the allocators handed out, so freeing cannot fail.
            let _ = match *allocation {
                Allocation::Mmio(range) => allocators.free_mmio32(range),
                Allocation::Pio(range) => allocators.free_pio(range),
            };
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> PciStats {
        let c = &self.counters;
        PciStats {
            config_reads: c.config_reads.load(Ordering::Relaxed),
            config_writes: c.config_writes.load(Ordering::Relaxed),
            unclaimed: c.unclaimed.load(Ordering::Relaxed),
            bad_accesses: c.bad_accesses.load(Ordering::Relaxed),
            bar_updates: c.bar_updates.load(Ordering::Relaxed),
            bar_conflicts: c.bar_conflicts.load(Ordering::Relaxed),
        }
    }

    /// Where the BARs of device `number` are on the buses now.
    pub fn placed_bars(&self, number: u8) -> Vec<BarMapping> {
        lock(&self.slots)
            .get(usize::from(number))
            .and_then(Option::as_ref)
            .map(|slot| slot.placed.iter().flatten().copied().collect())
            .unwrap_or_default()
    }

    /// Where BAR `index` of device `number` is on a bus now (`None` when it is not placed):
    /// [`placed_bars`](Self::placed_bars) for one BAR, without allocating.
    pub fn placed_bar(&self, number: u8, index: u8) -> Option<BarMapping> {
        let slots = lock(&self.slots);
        let slot = slots.get(usize::from(number))?.as_ref()?;
        slot.placed.get(usize::from(index)).copied().flatten()
    }

    /// A configuration read of function `bus:device.function` at `offset` (0..=0xFFF). The
    /// access must stay inside one dword; a function that does not exist reads all ones, the
    /// extended space (0x100 and up) of one that does reads 0.
    pub fn config_read(&self, bus: u8, device: u8, function: u8, offset: usize, data: &mut [u8]) {
        bump(&self.counters.config_reads);
        if !Self::access_ok(offset, data.len()) {
            bump(&self.counters.bad_accesses);
            debug!(
                "pci: bad config read of {} bytes at {offset:#x}",
                data.len()
            );
            data.fill(0xFF);
            return;
        }
        let slots = lock(&self.slots);
        match Self::slot(&slots, bus, device, function) {
            None => {
                bump(&self.counters.unclaimed);
                data.fill(0xFF);
            }
            Some(slot) => match u8::try_from(offset) {
                Ok(offset) => slot.device.config_read(offset, data),
                // The extended space (0x100 and up).
                Err(_) => data.fill(0),
            },
        }
    }

    /// A configuration write of function `bus:device.function` at `offset` (0..=0xFFF); the
    /// device's BARs are then brought in step on the buses.
    pub fn config_write(&self, bus: u8, device: u8, function: u8, offset: usize, data: &[u8]) {
        bump(&self.counters.config_writes);
        if !Self::access_ok(offset, data.len()) {
            bump(&self.counters.bad_accesses);
            debug!(
                "pci: bad config write of {} bytes at {offset:#x}",
                data.len()
            );
            return;
        }
        let mut slots = lock(&self.slots);
        let Some(number) = Self::slot(&slots, bus, device, function).map(|_| usize::from(device))
        else {
            bump(&self.counters.unclaimed);
            return;
        };
        // Writes to the extended space (0x100 and up) are dropped.
        if let (Ok(offset), Some(slot)) = (u8::try_from(offset), slots[number].as_mut()) {
            slot.device.config_write(offset, data);
            // The call has returned, with whatever lock the device took for it: the buses may
            // now be changed.
            self.reconcile(slot);
        }
    }

    fn access_ok(offset: usize, len: usize) -> bool {
        len > 0 && (offset % 4) + len <= 4 && offset < ECAM_FUNCTION_SIZE
    }

    fn slot(slots: &[Option<Slot>], bus: u8, device: u8, function: u8) -> Option<&Slot> {
        if bus != 0 || function != 0 {
            return None;
        }
        slots.get(usize::from(device)).and_then(Option::as_ref)
    }

    /// Brings the slot's BARs on the buses in step with its configuration space. Returns the
    /// first placement the bus refused (the BAR then does not decode).
    fn reconcile(&self, slot: &mut Slot) -> Option<(u8, BusError)> {
        let wanted = BarMapping::decoded(&slot.device.bars());
        let mut refused = None;
        for (i, &want) in wanted.iter().enumerate() {
            if want == slot.wanted[i] {
                continue;
            }
            slot.wanted[i] = want;
            let Some(region) = slot.regions[i].clone() else {
                continue;
            };
            let old = slot.placed[i].take();
            let result = match (old, want) {
                (Some(old), Some(new)) if old.space == new.space && old.size == new.size => {
                    self.relocate(&old, &new).inspect_err(|_| self.remove(&old))
                }
                (old, new) => {
                    if let Some(old) = old {
                        self.remove(&old);
                    }
                    match new {
                        Some(new) => self.place(&slot.name, &new, region),
                        None => Ok(()),
                    }
                }
            };
            match result {
                Ok(()) => slot.placed[i] = want,
                Err(err) => {
                    bump(&self.counters.bar_conflicts);
                    debug!("pci: {} BAR {i} does not decode: {err}", slot.name);
                    refused.get_or_insert((i as u8, err));
                }
            }
        }
        refused
    }

    fn place(&self, name: &str, m: &BarMapping, region: Arc<BarRegion>) -> Result<(), BusError> {
        bump(&self.counters.bar_updates);
        let name = format!("{name}-bar{}", m.index);
        match m.space {
            BarSpace::Memory => match self.mmio_bus.upgrade() {
                Some(bus) => {
                    bus.register_named(BusRange::new(MmioAddress(m.address), m.size), &name, region)
                }
                None => Ok(()),
            },
            BarSpace::Io => match (self.io_bus.upgrade(), u16::try_from(m.address)) {
                (Some(bus), Ok(port)) => {
                    bus.register_named(BusRange::new(PioAddress(port), m.size), &name, region)
                }
                (Some(_), Err(_)) => Err(BusError::RangeWraps {
                    base: m.address,
                    len: m.size,
                }),
                (None, _) => Ok(()),
            },
        }
    }

    fn relocate(&self, old: &BarMapping, new: &BarMapping) -> Result<(), BusError> {
        bump(&self.counters.bar_updates);
        match old.space {
            BarSpace::Memory => match self.mmio_bus.upgrade() {
                Some(bus) => bus.relocate(MmioAddress(old.address), MmioAddress(new.address)),
                None => Ok(()),
            },
            BarSpace::Io => match (self.io_bus.upgrade(), u16::try_from(new.address)) {
                // The old address was placed, so it fits 16 bits.
                (Some(bus), Ok(port)) => {
                    bus.relocate(PioAddress(old.address as u16), PioAddress(port))
                }
                (Some(_), Err(_)) => Err(BusError::RangeWraps {
                    base: new.address,
                    len: new.size,
                }),
                (None, _) => Ok(()),
            },
        }
    }

    fn remove(&self, m: &BarMapping) {
        bump(&self.counters.bar_updates);
        // The range was placed by `place` or `relocate`, so it is there to remove.
        match m.space {
            BarSpace::Memory => {
                if let Some(bus) = self.mmio_bus.upgrade() {
                    let _ = bus.unregister(MmioAddress(m.address));
                }
            }
            BarSpace::Io => {
                if let Some(bus) = self.io_bus.upgrade() {
                    let _ = bus.unregister(PioAddress(m.address as u16));
                }
            }
        }
    }

    /// The function CONFIG_ADDRESS selects: (bus, device, function, dword register), or `None`
    /// when the enable bit is clear.
    fn selected(&self) -> Option<(u8, u8, u8, usize)> {
        let address = self.address.load(Ordering::Relaxed);
        if address & CONFIG_ADDRESS_ENABLE == 0 {
            return None;
        }
        Some((
            (address >> 16) as u8,
            ((address >> 11) & 0x1F) as u8,
            ((address >> 8) & 0x7) as u8,
            (address & 0xFC) as usize,
        ))
    }

    /// The function an ECAM offset names: (bus, device, function, register), or `None` past
    /// the window's 256 buses (an offset the bus never passes, but a caller may).
    fn ecam_function(offset: u64) -> Option<(u8, u8, u8, usize)> {
        (offset < PCI_ECAM_SIZE).then_some((
            (offset >> 20) as u8,
            ((offset >> 15) & 0x1F) as u8,
            ((offset >> 12) & 0x7) as u8,
            (offset & 0xFFF) as usize,
        ))
    }
}

impl PioDevice for PciRoot {
    fn pio_read(&self, _base: PioAddress, offset: u16, data: &mut [u8]) {
        match (offset, data.len()) {
            (0, 4) => data.copy_from_slice(&self.address.load(Ordering::Relaxed).to_le_bytes()),
            (4..=7, len) if usize::from(offset - 4) + len <= 4 => match self.selected() {
                Some((bus, dev, func, reg)) => {
                    self.config_read(bus, dev, func, reg + usize::from(offset - 4), data)
                }
                None => data.fill(0xFF),
            },
            _ => {
                bump(&self.counters.bad_accesses);
                data.fill(0xFF);
            }
        }
    }

    fn pio_write(&self, _base: PioAddress, offset: u16, data: &[u8]) -> DeviceAction {
        match (offset, data) {
            (0, &[a, b, c, d]) => self.address.store(
                u32::from_le_bytes([a, b, c, d]) & CONFIG_ADDRESS_MASK,
                Ordering::Relaxed,
            ),
            (4..=7, data) if usize::from(offset - 4) + data.len() <= 4 => {
                if let Some((bus, dev, func, reg)) = self.selected() {
                    self.config_write(bus, dev, func, reg + usize::from(offset - 4), data);
                }
            }
            _ => bump(&self.counters.bad_accesses),
        }
        DeviceAction::Resume
    }
}

impl MmioDevice for PciRoot {
    fn mmio_read(&self, _base: MmioAddress, offset: u64, data: &mut [u8]) {
        match Self::ecam_function(offset) {
            Some((bus, device, function, reg)) => {
                self.config_read(bus, device, function, reg, data)
            }
            None => {
                bump(&self.counters.bad_accesses);
                data.fill(0xFF);
            }
        }
    }

    fn mmio_write(&self, _base: MmioAddress, offset: u64, data: &[u8]) -> DeviceAction {
        match Self::ecam_function(offset) {
            Some((bus, device, function, reg)) => {
                self.config_write(bus, device, function, reg, data)
            }
            None => bump(&self.counters.bad_accesses),
        }
        DeviceAction::Resume
    }
}

#[cfg(test)]
mod tests;
