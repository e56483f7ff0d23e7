//! The 256-byte type-0 configuration header of a PCI endpoint (PCI Local Bus 3.0, chapter 6).
//!
//! [`ConfigSpace`] keeps the register bytes beside two masks: the bits a guest may write and the
//! status bits a guest clears by writing 1 (RW1C). Every guest write goes through the masks, so
//! read-only registers (ids, class, header type, capability structure) stay what the device set.
//! BARs fall out of the same rule: a BAR's address bits above its size are writable and the rest
//! are read-only, so the standard sizing sequence (write all ones, read back the mask) works
//! without a special case. Capabilities are appended from 0x40 and chained from the pointer at
//! 0x34, which also sets the status register's capabilities-list bit.

use std::fmt;

use vmkit_exits::{PCI_NUM_BARS, PciBar, PciBarKind};

/// Size of the conventional configuration space of a function.
pub const CONFIG_SPACE_SIZE: usize = 256;

/// Vendor ID register (16 bits, read-only).
pub const VENDOR_ID: usize = 0x00;
/// Device ID register (16 bits, read-only).
pub const DEVICE_ID: usize = 0x02;
/// Command register (16 bits).
pub const COMMAND: usize = 0x04;
/// Status register (16 bits).
pub const STATUS: usize = 0x06;
/// Revision ID register (8 bits, read-only).
pub const REVISION_ID: usize = 0x08;
/// Class code (24 bits at 0x09: programming interface, subclass, base class; read-only).
pub const CLASS_CODE: usize = 0x09;
/// Cache line size register (8 bits, read-write).
pub const CACHE_LINE_SIZE: usize = 0x0C;
/// Header type register (8 bits, read-only; 0 for an endpoint).
pub const HEADER_TYPE: usize = 0x0E;
/// First base address register; BAR `n` is at `BAR0 + 4 * n`.
pub const BAR0: usize = 0x10;
/// Subsystem vendor ID register (16 bits, read-only).
pub const SUBSYSTEM_VENDOR_ID: usize = 0x2C;
/// Subsystem ID register (16 bits, read-only).
pub const SUBSYSTEM_ID: usize = 0x2E;
/// Expansion ROM base address (not implemented: reads 0, so sizing reports no ROM).
pub const EXPANSION_ROM: usize = 0x30;
/// Capabilities pointer (8 bits, read-only).
pub const CAPABILITIES_POINTER: usize = 0x34;
/// Interrupt line register (8 bits, read-write: the IRQ/GSI firmware routed INTx# to).
pub const INTERRUPT_LINE: usize = 0x3C;
/// Interrupt pin register (8 bits, read-only: 0 none, 1..=4 INTA#..INTD#).
pub const INTERRUPT_PIN: usize = 0x3D;
/// Where the first capability goes: the end of the predefined header.
pub const FIRST_CAPABILITY: usize = 0x40;
/// Number of base address registers of a type-0 header (vmkit-exits' `PCI_NUM_BARS`).
pub const NUM_BARS: usize = PCI_NUM_BARS;

/// Command bit: respond to I/O space accesses (I/O BAR decode).
pub const COMMAND_IO_SPACE: u16 = 1 << 0;
/// Command bit: respond to memory space accesses (memory BAR decode).
pub const COMMAND_MEMORY_SPACE: u16 = 1 << 1;
/// Command bit: the function may master the bus (DMA, MSI writes).
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command bit: parity error response.
pub const COMMAND_PARITY_ERROR_RESPONSE: u16 = 1 << 6;
/// Command bit: SERR# enable.
pub const COMMAND_SERR: u16 = 1 << 8;
/// Command bit: the function must not assert INTx#.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;

/// Status bit: INTx# is pending in the function (read-only, reflects the device).
pub const STATUS_INTERRUPT: u16 = 1 << 3;
/// Status bit: the capabilities pointer at 0x34 is valid (read-only).
pub const STATUS_CAPABILITIES_LIST: u16 = 1 << 4;
/// Status bits that are set by the function and cleared by the guest writing 1 (master data
/// parity error, signaled/received target abort, received master abort, signaled system error,
/// detected parity error).
pub const STATUS_RW1C: u16 = 0xF900;

/// Command bits a guest may always write (besides the decode bits of the BARs present).
const COMMAND_WRITABLE: u16 =
    COMMAND_BUS_MASTER | COMMAND_PARITY_ERROR_RESPONSE | COMMAND_SERR | COMMAND_INTX_DISABLE;

/// Smallest memory BAR the PCI specification allows.
pub const MIN_MEMORY_BAR_SIZE: u64 = 16;
/// Smallest I/O BAR.
pub const MIN_IO_BAR_SIZE: u64 = 4;
/// Largest I/O BAR the PCI specification allows.
pub const MAX_IO_BAR_SIZE: u64 = 256;

/// The identity of a function: what its read-only header registers report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciIds {
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Revision ID.
    pub revision_id: u8,
    /// Class code: base class in bits 23:16, subclass in 15:8, programming interface in 7:0.
    pub class_code: u32,
    /// Subsystem vendor ID.
    pub subsystem_vendor_id: u16,
    /// Subsystem ID.
    pub subsystem_id: u16,
}

/// Which bus a decoded BAR sits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BarSpace {
    /// The MMIO bus.
    Memory,
    /// The port-I/O bus.
    Io,
}

/// A BAR a device declares: its register index, kind and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// The register index, 0..=5 (the lower register of a 64-bit BAR).
    pub index: u8,
    /// The kind.
    pub kind: PciBarKind,
    /// The size in bytes, a power of two.
    pub size: u64,
    /// Whether a memory BAR is marked prefetchable.
    pub prefetchable: bool,
}

/// Where a BAR decodes right now: its address with decoding enabled in the command register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BarMapping {
    /// The register index.
    pub index: u8,
    /// The bus it decodes on.
    pub space: BarSpace,
    /// The base address the guest (or the VMM) programmed.
    pub address: u64,
    /// The size in bytes.
    pub size: u64,
}

impl BarMapping {
    /// Where each of `bars` (as `PciDevice::bars` reports them, by register index) decodes
    /// now: `None` for a register without a BAR and for a BAR that does not decode.
    pub fn decoded(bars: &[Option<PciBar>; NUM_BARS]) -> [Option<BarMapping>; NUM_BARS] {
        let mut mappings = [None; NUM_BARS];
        for ((index, bar), mapping) in (0u8..).zip(bars).zip(&mut mappings) {
            *mapping = bar.filter(|bar| bar.decoding).map(|bar| BarMapping {
                index,
                space: match bar.kind {
                    PciBarKind::Io => BarSpace::Io,
                    PciBarKind::Memory32 | PciBarKind::Memory64 => BarSpace::Memory,
                },
                address: bar.address,
                size: bar.size,
            });
        }
        mappings
    }
}

/// A configuration-space layout request the device model got wrong; nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, displaydoc::Display, thiserror::Error)]
#[ignore_extra_doc_attributes]
pub enum ConfigError {
    /// BAR index {0} is not 0..=5 (or 0..=4 for a 64-bit BAR)
    BarIndex(u8),
    /// BAR {0} is already declared
    BarInUse(u8),
    /// BAR size {size:#x} is not a power of two in the range allowed for a {kind:?} BAR
    BarSize {
        /// The kind of BAR.
        kind: PciBarKind,
        /// The refused size.
        size: u64,
    },
    /// BAR {0} is not declared
    NoSuchBar(u8),
    /// address {address:#x} is not aligned to the size of BAR {index} or does not fit it
    BarAddress {
        /// The BAR.
        index: u8,
        /// The refused address.
        address: u64,
    },
    /// a capability of {len} bytes does not fit in the configuration space
    CapabilitySpace {
        /// The capability's length, header included.
        len: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BarSlot {
    Unused,
    Declared(Bar),
    /// The upper register of the 64-bit BAR one below.
    Upper,
}

/// The configuration header and capabilities of one function.
#[derive(Clone)]
pub struct ConfigSpace {
    regs: [u8; CONFIG_SPACE_SIZE],
    writable: [u8; CONFIG_SPACE_SIZE],
    rw1c: [u8; CONFIG_SPACE_SIZE],
    bars: [BarSlot; NUM_BARS],
    next_capability: usize,
    last_capability: Option<usize>,
}

impl fmt::Debug for ConfigSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigSpace")
            .field(
                "vendor_id",
                &format_args!("{:#06x}", self.read_u16(VENDOR_ID)),
            )
            .field(
                "device_id",
                &format_args!("{:#06x}", self.read_u16(DEVICE_ID)),
            )
            .field("command", &format_args!("{:#06x}", self.command()))
            .field("bars", &self.bars)
            .finish_non_exhaustive()
    }
}

impl ConfigSpace {
    /// A type-0 header with the given identity, no BARs, no capabilities, no interrupt pin,
    /// and the command register at its power-on value 0 (nothing decoded).
    pub fn new(ids: PciIds) -> Self {
        let mut config = Self {
            regs: [0; CONFIG_SPACE_SIZE],
            writable: [0; CONFIG_SPACE_SIZE],
            rw1c: [0; CONFIG_SPACE_SIZE],
            bars: [BarSlot::Unused; NUM_BARS],
            next_capability: FIRST_CAPABILITY,
            last_capability: None,
        };
        config.set_u16(VENDOR_ID, ids.vendor_id);
        config.set_u16(DEVICE_ID, ids.device_id);
        config.set_u8(REVISION_ID, ids.revision_id);
        let class = ids.class_code.to_le_bytes();
        config.regs[CLASS_CODE..CLASS_CODE + 3].copy_from_slice(&class[..3]);
        config.set_u16(SUBSYSTEM_VENDOR_ID, ids.subsystem_vendor_id);
        config.set_u16(SUBSYSTEM_ID, ids.subsystem_id);
        config.set_mask(COMMAND, &COMMAND_WRITABLE.to_le_bytes());
        config.rw1c[STATUS..STATUS + 2].copy_from_slice(&STATUS_RW1C.to_le_bytes());
        config.writable[CACHE_LINE_SIZE] = 0xFF;
        config.writable[INTERRUPT_LINE] = 0xFF;
        config
    }

    /// Copies the bytes at `offset` into `data`; bytes past the end of the space read 0.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i)
                .and_then(|o| self.regs.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    /// Applies a guest write of `data` at `offset`: only writable bits change, and RW1C bits
    /// written as 1 are cleared. Bytes past the end of the space are ignored.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, &value) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i).filter(|&o| o < CONFIG_SPACE_SIZE) else {
                break;
            };
            let writable = self.writable[o];
            let cleared = value & self.rw1c[o];
            self.regs[o] = ((self.regs[o] & !writable) | (value & writable)) & !cleared;
        }
    }

    /// The byte at `offset` (0 past the end).
    pub fn read_u8(&self, offset: usize) -> u8 {
        let mut b = [0u8; 1];
        self.read(offset, &mut b);
        b[0]
    }

    /// The little-endian 16-bit value at `offset`.
    pub fn read_u16(&self, offset: usize) -> u16 {
        let mut b = [0u8; 2];
        self.read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    /// The little-endian 32-bit value at `offset`.
    pub fn read_u32(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        self.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Sets bytes at `offset` directly, bypassing the guest masks (the device's own view).
    /// Bytes past the end are ignored.
    pub fn set_bytes(&mut self, offset: usize, data: &[u8]) {
        for (i, &value) in data.iter().enumerate() {
            if let Some(reg) = offset.checked_add(i).and_then(|o| self.regs.get_mut(o)) {
                *reg = value;
            }
        }
    }

    /// Sets the byte at `offset`, bypassing the guest masks.
    pub fn set_u8(&mut self, offset: usize, value: u8) {
        self.set_bytes(offset, &[value]);
    }

    /// Sets the 16-bit value at `offset`, bypassing the guest masks.
    pub fn set_u16(&mut self, offset: usize, value: u16) {
        self.set_bytes(offset, &value.to_le_bytes());
    }

    /// Sets the 32-bit value at `offset`, bypassing the guest masks.
    pub fn set_u32(&mut self, offset: usize, value: u32) {
        self.set_bytes(offset, &value.to_le_bytes());
    }

    fn set_mask(&mut self, offset: usize, mask: &[u8]) {
        for (i, &m) in mask.iter().enumerate() {
            if let Some(w) = self.writable.get_mut(offset + i) {
                *w = m;
            }
        }
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.read_u16(COMMAND)
    }

    /// Sets command bits as firmware would (only bits a guest could write take effect).
    pub fn enable_command(&mut self, bits: u16) {
        let writable = u16::from_le_bytes([self.writable[COMMAND], self.writable[COMMAND + 1]]);
        self.set_u16(COMMAND, self.command() | (bits & writable));
    }

    /// The status register.
    pub fn status(&self) -> u16 {
        self.read_u16(STATUS)
    }

    /// Sets status bits on behalf of the function (e.g. an RW1C error bit).
    pub fn set_status_bits(&mut self, bits: u16) {
        self.set_u16(STATUS, self.status() | bits);
    }

    /// Clears status bits on behalf of the function.
    pub fn clear_status_bits(&mut self, bits: u16) {
        self.set_u16(STATUS, self.status() & !bits);
    }

    /// Reports INTx# on `pin` (1 = INTA# .. 4 = INTD#; 0 none) routed to `line` (the GSI the VMM
    /// chose, as firmware writes it in the interrupt line register).
    pub fn set_interrupt(&mut self, pin: u8, line: u8) {
        self.set_u8(INTERRUPT_PIN, pin);
        self.set_u8(INTERRUPT_LINE, line);
    }

    /// The interrupt line register.
    pub fn interrupt_line(&self) -> u8 {
        self.read_u8(INTERRUPT_LINE)
    }

    /// The interrupt pin register.
    pub fn interrupt_pin(&self) -> u8 {
        self.read_u8(INTERRUPT_PIN)
    }

    /// Declares BAR `index` of `kind` and `size` (a power of two: at least 16 bytes and at most
    /// 2 GiB for a 32-bit memory BAR, at most 2^63 for a 64-bit one, 4..=256 ports for I/O).
    ///
    /// The BAR's address starts at 0; the decode bit of its space becomes writable in the
    /// command register.
    pub fn add_bar(
        &mut self,
        index: u8,
        kind: PciBarKind,
        size: u64,
        prefetchable: bool,
    ) -> Result<(), ConfigError> {
        let i = usize::from(index);
        let last = if kind == PciBarKind::Memory64 {
            i + 1
        } else {
            i
        };
        if last >= NUM_BARS {
            return Err(ConfigError::BarIndex(index));
        }
        if self.bars[i..=last].iter().any(|s| *s != BarSlot::Unused) {
            return Err(ConfigError::BarInUse(index));
        }
        let (min, max) = match kind {
            PciBarKind::Memory32 => (MIN_MEMORY_BAR_SIZE, 1 << 31),
            PciBarKind::Memory64 => (MIN_MEMORY_BAR_SIZE, 1 << 63),
            PciBarKind::Io => (MIN_IO_BAR_SIZE, MAX_IO_BAR_SIZE),
        };
        if !size.is_power_of_two() || size < min || size > max {
            return Err(ConfigError::BarSize { kind, size });
        }
        let address_mask = !(size - 1);
        let offset = BAR0 + 4 * i;
        let prefetch_bit = if prefetchable && kind != PciBarKind::Io {
            1 << 3
        } else {
            0
        };
        let (type_bits, low_mask, decode) = match kind {
            PciBarKind::Memory32 => (0, address_mask as u32 & !0xF, COMMAND_MEMORY_SPACE),
            PciBarKind::Memory64 => (0b100, address_mask as u32 & !0xF, COMMAND_MEMORY_SPACE),
            PciBarKind::Io => (0b01, address_mask as u32 & 0xFFFC, COMMAND_IO_SPACE),
        };
        self.set_u32(offset, type_bits | prefetch_bit);
        self.set_mask(offset, &low_mask.to_le_bytes());
        if kind == PciBarKind::Memory64 {
            self.set_u32(offset + 4, 0);
            self.set_mask(offset + 4, &((address_mask >> 32) as u32).to_le_bytes());
            self.bars[i + 1] = BarSlot::Upper;
        }
        self.bars[i] = BarSlot::Declared(Bar {
            index,
            kind,
            size,
            prefetchable: prefetch_bit != 0,
        });
        self.writable[COMMAND] |= decode as u8;
        Ok(())
    }

    /// The BARs declared, in index order.
    pub fn bars(&self) -> impl Iterator<Item = Bar> + '_ {
        self.bars.iter().filter_map(|slot| match slot {
            BarSlot::Declared(bar) => Some(*bar),
            _ => None,
        })
    }

    fn bar(&self, index: u8) -> Result<Bar, ConfigError> {
        match self.bars.get(usize::from(index)) {
            Some(BarSlot::Declared(bar)) => Ok(*bar),
            _ => Err(ConfigError::NoSuchBar(index)),
        }
    }

    /// Programs BAR `index` to `address` as firmware would (aligned to the BAR's size; below
    /// 4 GiB for a 32-bit BAR, below 64 KiB for an I/O BAR).
    pub fn set_bar_address(&mut self, index: u8, address: u64) -> Result<(), ConfigError> {
        let bar = self.bar(index)?;
        let limit = match bar.kind {
            PciBarKind::Memory32 => 1 << 32,
            PciBarKind::Memory64 => u64::MAX,
            PciBarKind::Io => 1 << 16,
        };
        if address & (bar.size - 1) != 0 || address > limit - bar.size {
            return Err(ConfigError::BarAddress { index, address });
        }
        let offset = BAR0 + 4 * usize::from(index);
        let low = (self.read_u32(offset) & 0xF) | (address as u32 & !0xF);
        self.set_u32(offset, low);
        if bar.kind == PciBarKind::Memory64 {
            self.set_u32(offset + 4, (address >> 32) as u32);
        }
        Ok(())
    }

    /// The address BAR `index` holds now (whether or not it decodes), or `None` when it is not
    /// declared.
    pub fn bar_address(&self, index: u8) -> Option<u64> {
        let bar = self.bar(index).ok()?;
        let offset = BAR0 + 4 * usize::from(index);
        let low = self.read_u32(offset);
        Some(match bar.kind {
            PciBarKind::Memory32 => u64::from(low & !0xF),
            PciBarKind::Memory64 => {
                u64::from(low & !0xF) | (u64::from(self.read_u32(offset + 4)) << 32)
            }
            PciBarKind::Io => u64::from(low & !0x3),
        })
    }

    /// Every BAR as a function reports it through `PciDevice::bars`, at its register index:
    /// kind, size, the address it holds and whether the command register enables its space.
    pub fn pci_bars(&self) -> [Option<PciBar>; NUM_BARS] {
        let command = self.command();
        let mut bars = [None; NUM_BARS];
        for bar in self.bars() {
            let decode = match bar.kind {
                PciBarKind::Io => COMMAND_IO_SPACE,
                PciBarKind::Memory32 | PciBarKind::Memory64 => COMMAND_MEMORY_SPACE,
            };
            bars[usize::from(bar.index)] = self.bar_address(bar.index).map(|address| PciBar {
                kind: bar.kind,
                size: bar.size,
                address,
                prefetchable: bar.prefetchable,
                decoding: command & decode != 0,
            });
        }
        bars
    }

    /// Where each BAR decodes now: its address and size when the command register enables its
    /// space, `None` otherwise (and for registers that hold no BAR).
    pub fn bar_mappings(&self) -> [Option<BarMapping>; NUM_BARS] {
        BarMapping::decoded(&self.pci_bars())
    }

    /// Appends a capability with ID `id` whose bytes after the ID and next pointer are `body`;
    /// bits set in `writable` (aligned with `body`, may be shorter) are guest-writable. Returns
    /// the capability's offset.
    pub fn add_capability(
        &mut self,
        id: u8,
        body: &[u8],
        writable: &[u8],
    ) -> Result<usize, ConfigError> {
        let len = body.len() + 2;
        let offset = self.next_capability;
        if offset + len > CONFIG_SPACE_SIZE {
            return Err(ConfigError::CapabilitySpace { len });
        }
        self.set_u8(offset, id);
        self.set_u8(offset + 1, 0);
        self.set_bytes(offset + 2, body);
        self.set_mask(offset + 2, &writable[..writable.len().min(body.len())]);
        match self.last_capability {
            // Offsets are below 256, so they fit the 8-bit pointers.
            Some(last) => self.set_u8(last + 1, offset as u8),
            None => self.set_u8(CAPABILITIES_POINTER, offset as u8),
        }
        self.set_status_bits(STATUS_CAPABILITIES_LIST);
        self.last_capability = Some(offset);
        self.next_capability = (offset + len).next_multiple_of(4);
        Ok(offset)
    }

    /// The offsets of the capabilities with ID `id`, walking the chain as a guest does (at most
    /// 48 links, so a corrupt chain cannot loop).
    pub fn find_capabilities(&self, id: u8) -> Vec<usize> {
        let mut found = Vec::new();
        if self.status() & STATUS_CAPABILITIES_LIST == 0 {
            return found;
        }
        let mut next = usize::from(self.read_u8(CAPABILITIES_POINTER) & !3);
        for _ in 0..48 {
            if next < FIRST_CAPABILITY {
                break;
            }
            if self.read_u8(next) == id {
                found.push(next);
            }
            next = usize::from(self.read_u8(next + 1) & !3);
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> PciIds {
        PciIds {
            vendor_id: 0x1AF4,
            device_id: 0x1042,
            revision_id: 1,
            class_code: 0x01_80_00,
            subsystem_vendor_id: 0x1AF4,
            subsystem_id: 0x1100,
        }
    }

    #[test]
    fn header_is_read_only_where_it_must_be() {
        let mut c = ConfigSpace::new(ids());
        assert_eq!(c.read_u32(0), 0x1042_1AF4);
        assert_eq!(c.read_u32(0x08), 0x0180_0001);
        assert_eq!(c.read_u16(SUBSYSTEM_ID), 0x1100);
        let before = c.regs;
        // Try to overwrite every read-only field.
        for offset in [0, 2, 8, 0x0C - 3, 0x0E, 0x2C, 0x30, 0x34, 0x3D] {
            c.write(offset, &[0x5A; 4]);
        }
        assert_eq!(c.read_u32(0), 0x1042_1AF4);
        assert_eq!(c.read_u32(0x08), 0x0180_0001);
        assert_eq!(c.read_u32(0x2C), before_u32(&before, 0x2C));
        assert_eq!(c.read_u32(EXPANSION_ROM), 0);
        assert_eq!(c.read_u8(INTERRUPT_PIN), 0);
        c.write(CACHE_LINE_SIZE, &[0x10]);
        c.write(INTERRUPT_LINE, &[11]);
        assert_eq!((c.read_u8(CACHE_LINE_SIZE), c.interrupt_line()), (0x10, 11));
        c.set_interrupt(1, 9);
        assert_eq!((c.interrupt_pin(), c.interrupt_line()), (1, 9));
    }

    fn before_u32(regs: &[u8; 256], o: usize) -> u32 {
        u32::from_le_bytes([regs[o], regs[o + 1], regs[o + 2], regs[o + 3]])
    }

    #[test]
    fn command_decode_bits_follow_the_bars_present() {
        let mut c = ConfigSpace::new(ids());
        c.write(COMMAND, &0xFFFFu16.to_le_bytes());
        assert_eq!(c.command(), COMMAND_WRITABLE, "no BAR: no decode bits");
        c.add_bar(0, PciBarKind::Memory32, 0x1000, false).unwrap();
        c.write(COMMAND, &0xFFFFu16.to_le_bytes());
        assert_eq!(c.command(), COMMAND_WRITABLE | COMMAND_MEMORY_SPACE);
        c.add_bar(1, PciBarKind::Io, 0x20, false).unwrap();
        c.write(COMMAND, &[0xFF]);
        assert_ne!(c.command() & COMMAND_IO_SPACE, 0);
        c.write(COMMAND, &[0, 0]);
        assert_eq!(c.command(), 0);
        c.enable_command(COMMAND_MEMORY_SPACE | 0x8000);
        assert_eq!(c.command(), COMMAND_MEMORY_SPACE);
    }

    #[test]
    fn status_bits_are_rw1c_and_read_only() {
        let mut c = ConfigSpace::new(ids());
        c.set_status_bits(0x2000 | 0x0100 | STATUS_INTERRUPT);
        c.write(STATUS, &0x0100u16.to_le_bytes());
        assert_eq!(
            c.status(),
            0x2000 | STATUS_INTERRUPT,
            "only the written 1 cleared"
        );
        c.write(STATUS, &0xFFFFu16.to_le_bytes());
        assert_eq!(c.status(), STATUS_INTERRUPT, "read-only bit survives");
        c.clear_status_bits(STATUS_INTERRUPT);
        assert_eq!(c.status(), 0);
        // A dword write at COMMAND reaches both command and status.
        c.set_status_bits(0x8000);
        c.write(COMMAND, &0x8000_0002u32.to_le_bytes());
        assert_eq!(c.status(), 0);
    }

    #[test]
    fn memory32_bar_sizing_and_programming() {
        let mut c = ConfigSpace::new(ids());
        c.add_bar(0, PciBarKind::Memory32, 0x4000, true).unwrap();
        assert_eq!(c.read_u32(BAR0), 0x8, "prefetchable 32-bit memory");
        c.write(BAR0, &[0xFF; 4]);
        assert_eq!(c.read_u32(BAR0), 0xFFFF_C008);
        assert_eq!(!(c.read_u32(BAR0) & !0xF) + 1, 0x4000);
        c.write(BAR0, &0xD000_1234u32.to_le_bytes());
        assert_eq!(c.bar_address(0), Some(0xD000_0000));
        // Byte writes reach the right bytes.
        c.write(BAR0 + 3, &[0xE0]);
        assert_eq!(c.bar_address(0), Some(0xE000_0000));
        assert_eq!(c.bar_mappings()[0], None, "decode is off");
        c.enable_command(COMMAND_MEMORY_SPACE);
        assert_eq!(
            c.bar_mappings()[0],
            Some(BarMapping {
                index: 0,
                space: BarSpace::Memory,
                address: 0xE000_0000,
                size: 0x4000
            })
        );
    }

    #[test]
    fn memory64_bar_sizing_and_programming() {
        let mut c = ConfigSpace::new(ids());
        c.add_bar(2, PciBarKind::Memory64, 0x8000, false).unwrap();
        assert_eq!(c.read_u32(BAR0 + 8), 0x4);
        c.write(BAR0 + 8, &[0xFF; 4]);
        c.write(BAR0 + 12, &[0xFF; 4]);
        let low = c.read_u32(BAR0 + 8);
        let high = c.read_u32(BAR0 + 12);
        assert_eq!((low, high), (0xFFFF_8004, 0xFFFF_FFFF));
        let size = !((u64::from(high) << 32) | u64::from(low & !0xF)) + 1;
        assert_eq!(size, 0x8000);
        c.set_bar_address(2, 0x1_2345_8000).unwrap();
        assert_eq!(c.read_u32(BAR0 + 8), 0x2345_8004);
        assert_eq!(c.read_u32(BAR0 + 12), 1);
        assert_eq!(c.bar_address(2), Some(0x1_2345_8000));
        assert_eq!(c.bars().count(), 1);
        assert_eq!(
            c.add_bar(3, PciBarKind::Memory32, 0x1000, false),
            Err(ConfigError::BarInUse(3))
        );
        assert_eq!(c.bar_address(3), None);
        assert_eq!(c.set_bar_address(3, 0), Err(ConfigError::NoSuchBar(3)));
    }

    #[test]
    fn io_bar_sizing_and_mapping() {
        let mut c = ConfigSpace::new(ids());
        c.add_bar(5, PciBarKind::Io, 0x40, true).unwrap();
        assert_eq!(c.read_u32(BAR0 + 20), 1, "I/O BARs are never prefetchable");
        c.write(BAR0 + 20, &[0xFF; 4]);
        assert_eq!(c.read_u32(BAR0 + 20), 0xFFC1);
        c.set_bar_address(5, 0xC040).unwrap();
        c.enable_command(COMMAND_IO_SPACE);
        assert_eq!(
            c.bar_mappings()[5],
            Some(BarMapping {
                index: 5,
                space: BarSpace::Io,
                address: 0xC040,
                size: 0x40
            })
        );
        assert!(c.set_bar_address(5, 0x1_0000).is_err());
        assert!(c.set_bar_address(5, 0xC044).is_err());
    }

    #[test]
    fn pci_bars_report_layout_addresses_and_decode_per_space() {
        let mut c = ConfigSpace::new(ids());
        assert_eq!(c.pci_bars(), [None; NUM_BARS]);
        c.add_bar(0, PciBarKind::Memory64, 0x8000, true).unwrap();
        c.add_bar(3, PciBarKind::Io, 0x20, false).unwrap();
        c.set_bar_address(0, 0x1_0000_8000).unwrap();
        c.set_bar_address(3, 0xC020).unwrap();
        c.enable_command(COMMAND_IO_SPACE);
        let bars = c.pci_bars();
        let memory = PciBar {
            kind: PciBarKind::Memory64,
            size: 0x8000,
            address: 0x1_0000_8000,
            prefetchable: true,
            decoding: false,
        };
        let io = PciBar {
            kind: PciBarKind::Io,
            size: 0x20,
            address: 0xC020,
            prefetchable: false,
            decoding: true,
        };
        assert_eq!(bars, [Some(memory), None, None, Some(io), None, None]);
        assert_eq!(
            BarMapping::decoded(&bars),
            [
                None,
                None,
                None,
                Some(BarMapping {
                    index: 3,
                    space: BarSpace::Io,
                    address: 0xC020,
                    size: 0x20
                }),
                None,
                None
            ]
        );
        // The guest turns memory decoding on and moves the 64-bit BAR's upper half.
        c.write(COMMAND, &[3, 0]);
        c.write(BAR0 + 4, &2u32.to_le_bytes());
        let bars = c.pci_bars();
        assert_eq!(
            bars[0],
            Some(PciBar {
                address: 0x2_0000_8000,
                decoding: true,
                ..memory
            })
        );
        assert_eq!(c.bar_mappings(), BarMapping::decoded(&bars));
    }

    #[test]
    fn bar_declarations_are_validated() {
        let mut c = ConfigSpace::new(ids());
        assert_eq!(
            c.add_bar(6, PciBarKind::Memory32, 0x1000, false),
            Err(ConfigError::BarIndex(6))
        );
        assert_eq!(
            c.add_bar(5, PciBarKind::Memory64, 0x1000, false),
            Err(ConfigError::BarIndex(5))
        );
        for (kind, size) in [
            (PciBarKind::Memory32, 0x1800),
            (PciBarKind::Memory32, 8),
            (PciBarKind::Memory32, 1 << 32),
            (PciBarKind::Io, 2),
            (PciBarKind::Io, 512),
        ] {
            assert_eq!(
                c.add_bar(0, kind, size, false),
                Err(ConfigError::BarSize { kind, size })
            );
        }
        c.add_bar(0, PciBarKind::Memory32, 0x1000, false).unwrap();
        assert!(c.set_bar_address(0, 0xFFFF_F000).is_ok());
        assert_eq!(
            c.set_bar_address(0, 0x1_0000_0000),
            Err(ConfigError::BarAddress {
                index: 0,
                address: 0x1_0000_0000
            })
        );
        assert!(ConfigError::BarIndex(9).to_string().contains('9'));
        assert!(format!("{c:?}").contains("0x1af4"));
    }

    #[test]
    fn capability_chain_walks() {
        let mut c = ConfigSpace::new(ids());
        assert!(c.find_capabilities(0x09).is_empty());
        assert_eq!(c.status() & STATUS_CAPABILITIES_LIST, 0);
        let a = c.add_capability(0x11, &[0; 10], &[]).unwrap();
        let b = c
            .add_capability(0x09, &[14, 1, 2, 3], &[0, 0, 0xFF])
            .unwrap();
        let d = c.add_capability(0x09, &[14, 7], &[]).unwrap();
        assert_eq!((a, b, d), (0x40, 0x4C, 0x54));
        assert_ne!(c.status() & STATUS_CAPABILITIES_LIST, 0);
        assert_eq!(c.read_u8(CAPABILITIES_POINTER), 0x40);
        assert_eq!(c.read_u8(0x41), 0x4C);
        assert_eq!(c.read_u8(0x4D), 0x54);
        assert_eq!(c.read_u8(0x55), 0);
        assert_eq!(c.find_capabilities(0x09), vec![0x4C, 0x54]);
        // Only the masked byte is writable; ID and next pointer are not.
        c.write(0x4C, &[0xAA; 8]);
        assert_eq!(c.read_u32(0x4C), 0x010E_5409);
        assert_eq!(c.read_u8(0x50), 0xAA);
        assert_eq!(c.read_u8(0x51), 3);
        assert_eq!(
            c.add_capability(0x09, &[0; 200], &[]),
            Err(ConfigError::CapabilitySpace { len: 202 })
        );
        // A corrupt (looping) chain still terminates.
        c.set_u8(0x55, 0x4C);
        assert_eq!(c.find_capabilities(0x09).len(), 47);
    }

    #[test]
    fn accesses_past_the_end_are_harmless() {
        let mut c = ConfigSpace::new(ids());
        let mut data = [0xAA; 4];
        c.read(254, &mut data);
        assert_eq!(data[2..], [0, 0]);
        c.write(254, &[0xFF; 4]);
        c.set_bytes(255, &[1, 2, 3]);
        assert_eq!(c.read_u8(255), 1);
        c.read(usize::MAX, &mut data);
        assert_eq!(data, [0; 4]);
        c.write(usize::MAX, &[1]);
    }
}
