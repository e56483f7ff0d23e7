//! What the storms need to know about the machine: the memory BARs of both disks, the ECAM
//! window the ACPI MCFG describes, and a way to put the attacked function's configuration
//! header back after a storm has scribbled on it.

use guest_rt::StartInfo;

use crate::pci::{self, COMMAND, COMMAND_MEMORY, Function, MemoryBar};

/// A range of physical addresses, `[start, start + len)`.
#[derive(Clone, Copy, Default)]
pub struct Extent {
    /// The first address.
    pub start: u64,
    /// Bytes; 0 for none.
    pub len: u64,
}

impl Extent {
    /// Whether `[addr, addr + width)` overlaps the extent.
    pub fn overlaps(&self, addr: u64, width: u8) -> bool {
        self.len != 0
            && addr < self.start.saturating_add(self.len)
            && self.start < addr.saturating_add(u64::from(width))
    }
}

/// The memory BARs of a function (unused slots have length 0).
pub fn memory_bars(f: Function) -> [Extent; 6] {
    let mut bars = [Extent::default(); 6];
    pci::with_decode_off(f, || {
        let mut index = 0;
        while index < 6 {
            let Some(bar) = MemoryBar::read(f, index) else {
                index += 1;
                continue;
            };
            let len = bar.size(f);
            if bar.address != 0 && len != 0 {
                bars[usize::from(index)] = Extent {
                    start: bar.address,
                    len,
                };
            }
            index += if bar.wide { 2 } else { 1 };
        }
    });
    bars
}

/// The enhanced configuration access window of PCI segment 0.
#[derive(Clone, Copy)]
pub struct Ecam {
    /// The address of bus 0's configuration space.
    pub base: u64,
    /// The first bus it decodes.
    pub first_bus: u8,
    /// The last bus it decodes.
    pub last_bus: u8,
}

impl Ecam {
    /// The 4 KiB configuration space of `bus:device.function`.
    pub fn function(&self, bus: u8, device: u8, function: u8) -> Extent {
        Extent {
            start: self.base
                + (u64::from(bus) << 20
                    | u64::from(device & 31) << 15
                    | u64::from(function & 7) << 12),
            len: 4096,
        }
    }
}

/// The end of what guest-rt's entry code identity-maps.
const MAPPED_END: u64 = 4 << 30;
/// The most XSDT entries looked at.
const XSDT_ENTRIES_MAX: u64 = 64;
/// Bytes of a table header, and of an MCFG up to its first allocation.
const HEADER_LEN: u64 = 36;
const MCFG_ALLOCATIONS: u64 = 44;
/// Bytes of an MCFG allocation structure.
const MCFG_ALLOCATION_LEN: u64 = 16;

/// Reads a `T` at `addr` when `[addr, addr + size)` lies in the identity map.
fn read_phys<T: Copy>(addr: u64) -> Option<T> {
    let end = addr.checked_add(size_of::<T>() as u64)?;
    if addr == 0 || end > MAPPED_END {
        return None;
    }
    // SAFETY: the range is identity-mapped (checked above) and, being ACPI tables the VMM wrote
    // before the guest started, nothing writes it; `T` is an integer or a byte array, valid for
    // any bit pattern; the read is unaligned-safe.
    Some(unsafe { core::ptr::read_unaligned(addr as usize as *const T) })
}

/// Segment 0's ECAM window from the MCFG (RSDP → XSDT → `MCFG`), or `None` when there is no
/// such table.
pub fn ecam(info: &StartInfo) -> Option<Ecam> {
    let rsdp = info.rsdp_paddr();
    if read_phys::<[u8; 8]>(rsdp)? != *b"RSD PTR " || read_phys::<u8>(rsdp + 15)? < 2 {
        return None;
    }
    let xsdt = read_phys::<u64>(rsdp + 24)?;
    if read_phys::<[u8; 4]>(xsdt)? != *b"XSDT" {
        return None;
    }
    let entries = (u64::from(read_phys::<u32>(xsdt + 4)?).saturating_sub(HEADER_LEN) / 8)
        .min(XSDT_ENTRIES_MAX);
    (0..entries).find_map(|i| {
        let table = read_phys::<u64>(xsdt + HEADER_LEN + 8 * i)?;
        if read_phys::<[u8; 4]>(table)? != *b"MCFG" {
            return None;
        }
        let len = u64::from(read_phys::<u32>(table + 4)?);
        let count = len.saturating_sub(MCFG_ALLOCATIONS) / MCFG_ALLOCATION_LEN;
        (0..count).find_map(|n| {
            let allocation = table + MCFG_ALLOCATIONS + n * MCFG_ALLOCATION_LEN;
            let segment = read_phys::<u16>(allocation + 8)?;
            (segment == 0).then_some(Ecam {
                base: read_phys::<u64>(allocation)?,
                first_bus: read_phys::<u8>(allocation + 10)?,
                last_bus: read_phys::<u8>(allocation + 11)?,
            })
        })
    })
}

/// The registers of a type-0 header a storm may change and that decide where and whether the
/// function decodes: cache line/latency/BIST, the six BARs, the expansion ROM, the interrupt
/// line, and the MSI-X message control of its MSI-X capability.
pub struct SavedHeader {
    f: Function,
    command: u32,
    registers: [u32; 9],
    msix: Option<(u8, u32)>,
}

/// The header registers [`SavedHeader`] keeps, after the command register.
const SAVED: [u8; 9] = [0x0c, 0x10, 0x14, 0x18, 0x1c, 0x20, 0x24, 0x30, 0x3c];
/// The MSI-X capability ID.
const CAP_MSIX: u8 = 0x11;

impl SavedHeader {
    /// Saves `f`'s registers.
    pub fn save(f: Function) -> Self {
        Self {
            f,
            command: f.read(COMMAND) & 0xffff,
            registers: SAVED.map(|offset| f.read(offset)),
            msix: f
                .capabilities()
                .find(|&(_, id)| id == CAP_MSIX)
                .map(|(cap, _)| (cap, f.read(cap))),
        }
    }

    /// Writes them back, decode off while the BARs are restored, the command register last.
    pub fn restore(&self) {
        let f = self.f;
        f.write(COMMAND, self.command & !COMMAND_MEMORY);
        for (&offset, &value) in SAVED.iter().zip(&self.registers) {
            f.write(offset, value);
        }
        if let Some((cap, value)) = self.msix {
            f.write(cap, value);
        }
        f.write(COMMAND, self.command);
    }
}
