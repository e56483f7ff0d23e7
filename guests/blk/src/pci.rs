//! PCI bus 0 through the legacy configuration mechanism (ports `0xcf8`/`0xcfc`), and memory BARs
//! that the guest places itself when no firmware did.

use guest_rt::port::{inl, outl};
use guest_rt::{MemmapEntry, StartInfo};

/// `CONFIG_ADDRESS`.
const CONFIG_ADDRESS: u16 = 0xcf8;
/// `CONFIG_DATA`.
const CONFIG_DATA: u16 = 0xcfc;
/// The command register.
pub const COMMAND: u8 = 0x04;
/// Command: memory-space decode.
pub const COMMAND_MEMORY: u32 = 1 << 1;
/// Command: bus mastering (the device may reach memory).
pub const COMMAND_BUS_MASTER: u32 = 1 << 2;
/// Status register bit (in the upper half of the command dword): a capability list exists.
const STATUS_CAPABILITIES: u32 = 1 << (16 + 4);
/// The capability-list pointer.
const CAPABILITIES_POINTER: u8 = 0x34;
/// The first BAR.
const BAR0: u8 = 0x10;
/// Addresses the guest reaches: the entry code identity-maps the first 4 GiB.
const MAPPED_END: u64 = 1 << 32;
/// Placed BARs stay below the IOAPIC, LAPIC and firmware ranges.
const PLACEMENT_END: u64 = 0xfec0_0000;
/// Capabilities followed before the list is taken to loop.
const MAX_CAPABILITIES: u32 = 48;
/// Memory map entries considered when placing a BAR.
const MAX_MEMMAP: u32 = 128;

/// One function on bus 0.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Function {
    /// The device number (0..=31).
    pub slot: u8,
    /// The function number (0..=7).
    pub function: u8,
}

impl Function {
    fn address(self, offset: u8) -> u32 {
        0x8000_0000
            | u32::from(self.slot) << 11
            | u32::from(self.function) << 8
            | u32::from(offset & 0xfc)
    }

    /// Reads the configuration dword at `offset` (rounded down to a multiple of 4).
    pub fn read(self, offset: u8) -> u32 {
        outl(CONFIG_ADDRESS, self.address(offset));
        inl(CONFIG_DATA)
    }

    /// Writes the configuration dword at `offset` (rounded down to a multiple of 4).
    pub fn write(self, offset: u8, value: u32) {
        outl(CONFIG_ADDRESS, self.address(offset));
        outl(CONFIG_DATA, value);
    }

    /// Reads the byte at `offset`.
    pub fn read_u8(self, offset: u8) -> u8 {
        (self.read(offset) >> (8 * (offset & 3))) as u8
    }

    /// The capability list: `(offset, id)` of each capability, ending at a null pointer, a
    /// pointer into the header or after [`MAX_CAPABILITIES`] entries.
    pub fn capabilities(self) -> impl Iterator<Item = (u8, u8)> {
        let mut next = if self.read(COMMAND) & STATUS_CAPABILITIES != 0 {
            self.read_u8(CAPABILITIES_POINTER) & 0xfc
        } else {
            0
        };
        let mut left = MAX_CAPABILITIES;
        core::iter::from_fn(move || {
            if next < 0x40 || left == 0 {
                return None;
            }
            left -= 1;
            let offset = next;
            let header = self.read(offset);
            next = (header >> 8) as u8 & 0xfc;
            Some((offset, header as u8))
        })
    }

    /// Whether function 0 of this slot says the slot has more functions.
    fn multifunction(self) -> bool {
        self.read(0x0c) & (0x80 << 16) != 0
    }

    /// Whether this is a type-0 (endpoint) header with six BARs.
    fn is_endpoint(self) -> bool {
        (self.read(0x0c) >> 16) & 0x7f == 0
    }
}

/// Every function present on bus 0.
fn functions() -> impl Iterator<Item = Function> {
    (0..32u8).flat_map(|slot| {
        let first = Function { slot, function: 0 };
        let count = match first.read(0) & 0xffff {
            0xffff => 0,
            _ if first.multifunction() => 8,
            _ => 1,
        };
        (0..count)
            .map(move |function| Function { slot, function })
            .filter(|f| f.read(0) & 0xffff != 0xffff)
    })
}

/// Every function on bus 0 with this vendor and device ID, in slot order.
pub fn find_all(vendor: u16, device: u16) -> impl Iterator<Item = Function> {
    let id = u32::from(vendor) | u32::from(device) << 16;
    functions().filter(move |f| f.read(0) == id)
}

/// The first function on bus 0 with this vendor and device ID.
pub fn find(vendor: u16, device: u16) -> Option<Function> {
    find_all(vendor, device).next()
}

/// A memory BAR: its register offset, whether it is 64-bit, and its address.
#[derive(Clone, Copy)]
pub struct MemoryBar {
    register: u8,
    /// A 64-bit BAR (it takes two registers).
    pub wide: bool,
    /// The address it holds (0 when unassigned).
    pub address: u64,
}

impl MemoryBar {
    /// BAR `index` of `f`, or `None` for an I/O BAR or an index past the last register.
    pub fn read(f: Function, index: u8) -> Option<Self> {
        if index > 5 {
            return None;
        }
        let register = BAR0 + 4 * index;
        let low = f.read(register);
        if low & 1 != 0 {
            return None;
        }
        let wide = (low >> 1) & 3 == 2;
        if wide && index == 5 {
            return None;
        }
        let high = if wide { f.read(register + 4) } else { 0 };
        Some(Self {
            register,
            wide,
            address: u64::from(high) << 32 | u64::from(low & !0xf),
        })
    }

    /// Sizes the BAR (decode must be off) and puts the address back; 0 when unimplemented.
    pub fn size(&self, f: Function) -> u64 {
        let write = |address: u64| {
            f.write(self.register, address as u32);
            if self.wide {
                f.write(self.register + 4, (address >> 32) as u32);
            }
        };
        write(u64::MAX);
        let low = u64::from(f.read(self.register) & !0xf);
        let mask = if self.wide {
            u64::from(f.read(self.register + 4)) << 32 | low
        } else {
            low | 0xffff_ffff_0000_0000
        };
        write(self.address);
        (!mask).wrapping_add(1)
    }

    fn write(&self, f: Function, address: u64) {
        f.write(self.register, address as u32);
        if self.wide {
            f.write(self.register + 4, (address >> 32) as u32);
        }
    }
}

/// Runs `body` with `f`'s memory decode off, then restores its command register.
pub fn with_decode_off<T>(f: Function, body: impl FnOnce() -> T) -> T {
    let command = f.read(COMMAND) & 0xffff;
    f.write(COMMAND, command & !COMMAND_MEMORY);
    let result = body();
    f.write(COMMAND, command);
    result
}

/// The address of memory BAR `index` of `f`. A BAR that is unassigned (0) or out of the guest's
/// reach (at or above 4 GiB) is sized and placed as a PCI enumerator does: in the largest gap
/// between the memory map's entries below 4 GiB (where Linux puts PCI memory), clear of every
/// other assigned BAR on bus 0, naturally aligned. `None` for an I/O BAR, an unimplemented one,
/// or when nothing fits. `place` places the BAR even when it is assigned. Leaves `f`'s memory
/// decode off when it placed the BAR.
pub fn memory_bar(f: Function, index: u8, info: &StartInfo, place: bool) -> Option<u64> {
    let bar = MemoryBar::read(f, index)?;
    if !place && bar.address != 0 && bar.address < MAPPED_END {
        return Some(bar.address);
    }
    let command = f.read(COMMAND) & 0xffff;
    f.write(COMMAND, command & !COMMAND_MEMORY);
    let size = bar.size(f);
    if size == 0 || size > PLACEMENT_END {
        return None;
    }
    let (gap_start, gap_end) = largest_gap(info)?;
    let mut start = gap_start.next_multiple_of(size);
    while start + size <= gap_end {
        match occupied(f, start, start + size) {
            Some(end) => start = end.next_multiple_of(size),
            None => {
                bar.write(f, start);
                return Some(start);
            }
        }
    }
    None
}

/// The largest gap between memory-map entries, from 1 MiB up to [`PLACEMENT_END`].
fn largest_gap(info: &StartInfo) -> Option<(u64, u64)> {
    let entries = || info.memmap(MAX_MEMMAP).into_iter().flatten();
    let end_of = |e: &MemmapEntry| e.addr.saturating_add(e.size);
    // Gap candidates start at 1 MiB and at the end of each entry; each ends at the next entry.
    let starts = core::iter::once(1u64 << 20).chain(entries().map(|e| end_of(&e)));
    starts
        .filter(|&start| {
            start < PLACEMENT_END && !entries().any(|e| e.addr <= start && start < end_of(&e))
        })
        .map(|start| {
            let end = entries()
                .map(|e| e.addr)
                .filter(|&addr| addr > start)
                .fold(PLACEMENT_END, u64::min);
            (start, end)
        })
        .max_by_key(|&(start, end)| end - start)
}

/// If `[start, end)` overlaps an assigned memory BAR of another function on bus 0, the end of
/// that BAR.
fn occupied(ours: Function, start: u64, end: u64) -> Option<u64> {
    functions().filter(|&f| f != ours).find_map(|f| {
        let bars = if f.is_endpoint() { 6 } else { 2 };
        with_decode_off(f, || {
            let mut index = 0;
            while index < bars {
                let Some(bar) = MemoryBar::read(f, index) else {
                    index += 1;
                    continue;
                };
                index += if bar.wide { 2 } else { 1 };
                if bar.address == 0 {
                    continue;
                }
                let bar_end = bar.address.saturating_add(bar.size(f));
                if bar.address < end && start < bar_end {
                    return Some(bar_end);
                }
            }
            None
        })
    })
}
