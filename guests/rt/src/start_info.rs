//! `struct hvm_start_info` (Xen `arch-x86/hvm/start_info.h`), read and checked.
//!
//! The VMM wrote these structures before the guest started, and nothing writes them afterwards:
//! the guest reads them in place through the identity map of the first 4 GiB.

use crate::console::Console;

/// `hvm_start_info.magic` (`XEN_HVM_START_MAGIC_VALUE`).
const START_INFO_MAGIC: u32 = 0x336e_c578;
/// Addresses the entry code identity-maps.
const MAPPED_END: u64 = 4 << 30;
/// The longest command line read.
const CMDLINE_MAX: u64 = 4096;

/// `struct hvm_start_info`, version 1.
#[repr(C)]
#[derive(Clone, Copy)]
struct RawStartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

/// `struct hvm_memmap_table_entry`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct MemmapEntry {
    /// Base address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// e820 type (1 = usable RAM).
    pub kind: u32,
    reserved: u32,
}

/// Why the start-info pointer cannot be used.
#[derive(Clone, Copy)]
pub enum StartInfoError {
    /// Null, or not inside the identity-mapped range.
    Unusable(u64),
    /// Not 8-byte aligned.
    Misaligned,
    /// The magic value is wrong.
    BadMagic(u32),
}

impl StartInfoError {
    /// Prints the error as one line.
    pub fn report(&self, console: &mut Console) {
        match *self {
            Self::Unusable(addr) => console
                .line()
                .str("start_info pointer ")
                .hex(addr)
                .str(" is not usable\n"),
            Self::Misaligned => console.line().str("start_info is misaligned\n"),
            Self::BadMagic(magic) => console
                .line()
                .str("bad start_info magic ")
                .hex(u64::from(magic))
                .str("\n"),
        };
    }
}

/// Whether `[addr, addr + len)` lies in the identity-mapped range.
fn mapped(addr: u64, len: u64) -> bool {
    addr.checked_add(len).is_some_and(|end| end <= MAPPED_END)
}

/// Reads a `T` at physical address `addr`.
///
/// # Safety
/// `[addr, addr + size_of::<T>())` must be identity-mapped (see [`mapped`]) and `T` valid for
/// any bit pattern.
unsafe fn read_phys<T: Copy>(addr: u64) -> T {
    // SAFETY: the caller guarantees the range is mapped; the read is volatile because the memory
    // was written by the VMM, outside the program's knowledge.
    unsafe { core::ptr::read_volatile(addr as usize as *const T) }
}

/// A checked `hvm_start_info`.
pub struct StartInfo {
    addr: u64,
    raw: RawStartInfo,
}

impl StartInfo {
    /// Reads the start info at `addr`, checking that it is mapped, aligned and has the magic.
    pub fn read(addr: u64) -> Result<Self, StartInfoError> {
        if addr == 0 || !mapped(addr, size_of::<RawStartInfo>() as u64) {
            return Err(StartInfoError::Unusable(addr));
        }
        if !addr.is_multiple_of(8) {
            return Err(StartInfoError::Misaligned);
        }
        // SAFETY: the range is mapped and aligned (checked above); every bit pattern is valid.
        let raw: RawStartInfo = unsafe { read_phys(addr) };
        if raw.magic != START_INFO_MAGIC {
            return Err(StartInfoError::BadMagic(raw.magic));
        }
        Ok(Self { addr, raw })
    }

    /// The structure's physical address.
    pub fn address(&self) -> u64 {
        self.addr
    }

    /// The physical address of the ACPI RSDP (`rsdp_paddr`), 0 when the VMM gave none.
    pub fn rsdp_paddr(&self) -> u64 {
        self.raw.rsdp_paddr
    }

    /// The number of memory-map entries (0 when the structure predates version 1 or has none).
    pub fn memmap_entries(&self) -> u32 {
        if self.raw.version >= 1 && self.raw.memmap_paddr != 0 {
            self.raw.memmap_entries
        } else {
            0
        }
    }

    /// The command line up to its NUL (empty when there is none); at most 4 KiB, and only what
    /// lies in the identity-mapped range.
    pub fn cmdline(&self) -> &'static [u8] {
        let addr = self.raw.cmdline_paddr;
        if addr == 0 {
            return &[];
        }
        let mut len = 0;
        while len < CMDLINE_MAX && mapped(addr, len + 1) {
            // SAFETY: `[addr, addr + len + 1)` is mapped (loop condition); u8 has no invalid values.
            if unsafe { read_phys::<u8>(addr + len) } == 0 {
                break;
            }
            len += 1;
        }
        // SAFETY: the `len` bytes at `addr` are mapped (checked above) and never written while
        // the guest runs (module documentation), so they are a valid shared slice for its life.
        unsafe { core::slice::from_raw_parts(addr as usize as *const u8, len as usize) }
    }

    /// The first `max` memory-map entries, or `None` when the table is not mapped or misaligned.
    pub fn memmap(&self, max: u32) -> Option<impl Iterator<Item = MemmapEntry>> {
        let addr = self.raw.memmap_paddr;
        let entry_size = size_of::<MemmapEntry>() as u64;
        let shown = u64::from(self.memmap_entries().min(max));
        if !mapped(addr, shown * entry_size) || !addr.is_multiple_of(8) {
            return None;
        }
        Some((0..shown).map(move |index| {
            // SAFETY: the whole table of `shown` entries is mapped and aligned (checked above).
            unsafe { read_phys::<MemmapEntry>(addr + index * entry_size) }
        }))
    }
}
