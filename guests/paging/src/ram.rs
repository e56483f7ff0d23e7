//! The guest's own RAM as vmkit-paging sees it: the work area it takes from the memory map, and
//! a [`PhysMemory`] over the part that holds the page tables.

use core::sync::atomic::{AtomicU64, Ordering};

use guest_rt::StartInfo;
use vmkit_paging::{MemoryError, PhysMemory};

/// e820 type of usable RAM.
const E820_RAM: u32 = 1;
/// The most memory-map entries looked at.
const MEMMAP_MAX: u32 = 128;
/// guest-rt's entry code identity-maps `[0, 4 GiB)`: the work area must lie below, so that it
/// is reachable while those tables are live.
const IDENTITY_MAPPED_END: u64 = 4 << 30;
/// The size of `hvm_start_info` (version 1), and the offsets of the fields read here.
const START_INFO_SIZE: u64 = 56;
const START_INFO_NR_MODULES: u64 = 12;
const START_INFO_CMDLINE_PADDR: u64 = 24;
const START_INFO_MEMMAP_PADDR: u64 = 40;
/// The size of `hvm_memmap_table_entry`.
const MEMMAP_ENTRY_SIZE: u64 = 24;

/// The work area's alignment: 2 MiB, so that it can be mapped with 2 MiB pages.
pub const WORK_ALIGN: u64 = 2 << 20;

/// Why no work area was found.
pub enum NoWorkArea {
    /// The VMM placed modules, which lie in usable RAM the guest would take.
    Modules(u32),
    /// No usable memory-map entry has `len` bytes, 2 MiB aligned, above the image and the
    /// boot structures and below the limit.
    NoRoom,
}

/// Reads the `T` at `offset` in the start info.
///
/// # Safety
/// `offset..offset + size_of::<T>()` must lie inside the structure, aligned for `T` (the
/// structure itself is 8-byte aligned), and `T` must be valid for any bit pattern.
unsafe fn start_info_field<T: Copy>(info: &StartInfo, offset: u64) -> T {
    // Volatile: the VMM wrote the structure, outside the program's knowledge.
    // SAFETY: `StartInfo::read` checked that the structure lies in the identity-mapped range,
    // 8-byte aligned; the caller keeps the read inside it and aligned.
    unsafe { core::ptr::read_volatile((info.address() + offset) as usize as *const T) }
}

/// One past the last byte of the PVH boot structures: the start info, its command line and
/// its memory map (the guest reads them in place, so its work area must not overlap them).
fn boot_data_end(info: &StartInfo) -> u64 {
    // SAFETY: both fields are 64-bit and 8-byte aligned inside the structure.
    let (cmdline, memmap) = unsafe {
        (
            start_info_field::<u64>(info, START_INFO_CMDLINE_PADDR),
            start_info_field::<u64>(info, START_INFO_MEMMAP_PADDR),
        )
    };
    let cmdline_end = match cmdline {
        0 => 0,
        // The bytes up to the NUL, and the NUL.
        addr => addr.saturating_add(info.cmdline().len() as u64 + 1),
    };
    let memmap_end =
        memmap.saturating_add(u64::from(info.memmap_entries()).saturating_mul(MEMMAP_ENTRY_SIZE));
    (info.address() + START_INFO_SIZE)
        .max(cmdline_end)
        .max(memmap_end)
}

/// The first `WORK_ALIGN`-aligned range of `len` bytes in usable RAM above `image_end` and the
/// PVH boot structures, and below `below` (and 4 GiB), as the PVH memory map reports it.
///
/// Modules, which a VMM places in usable RAM, are refused: what is returned holds nothing but
/// free RAM.
pub fn find_work_area(
    info: &StartInfo,
    image_end: u64,
    len: u64,
    below: u64,
) -> Result<u64, NoWorkArea> {
    let limit = below.min(IDENTITY_MAPPED_END);
    // SAFETY: a 32-bit field, 4-byte aligned inside the structure.
    let modules = unsafe { start_info_field::<u32>(info, START_INFO_NR_MODULES) };
    if modules != 0 {
        return Err(NoWorkArea::Modules(modules));
    }
    let lowest = image_end.max(boot_data_end(info));
    let entries = info.memmap(MEMMAP_MAX).ok_or(NoWorkArea::NoRoom)?;
    for entry in entries.filter(|entry| entry.kind == E820_RAM) {
        let Some(end) = entry.addr.checked_add(entry.size) else {
            continue;
        };
        let Some(start) = entry.addr.max(lowest).checked_next_multiple_of(WORK_ALIGN) else {
            continue;
        };
        if start
            .checked_add(len)
            .is_some_and(|work_end| work_end <= end.min(limit))
        {
            return Ok(start);
        }
    }
    Err(NoWorkArea::NoRoom)
}

/// Physical memory the guest owns, reached through an identity map: the frames its page
/// tables are built in. Every access is an aligned atomic 64-bit access (a plain `mov`, or
/// `lock cmpxchg` for the compare-exchange).
pub struct GuestRam {
    start: u64,
    end: u64,
}

impl GuestRam {
    /// The memory `[start, end)`.
    ///
    /// # Safety
    /// `[start, end)` must be RAM that this guest owns and that nothing else in the program
    /// accesses while the value lives (no reference into it, no other writer), identity-mapped
    /// writable by the live page tables for as long as the value is used.
    pub unsafe fn new(start: u64, end: u64) -> Self {
        Self { start, end }
    }

    /// The word at `addr`, after checking that it lies inside the memory and is aligned.
    fn word(&self, addr: u64) -> Result<&AtomicU64, MemoryError> {
        if !addr.is_multiple_of(8) {
            return Err(MemoryError::Misaligned(addr));
        }
        if addr < self.start || addr.checked_add(8).is_none_or(|after| after > self.end) {
            return Err(MemoryError::OutOfRange(addr));
        }
        // `addr` is 8-byte aligned (the alignment of `AtomicU64`) and its 8 bytes lie in
        // `[start, end)` (both checked above), which `new`'s contract makes identity-mapped,
        // writable RAM that only this value accesses and that stays for the guest's life.
        // SAFETY: so the reference points at valid memory no other reference aliases.
        Ok(unsafe { &*(addr as usize as *const AtomicU64) })
    }
}

impl PhysMemory for GuestRam {
    fn read_u64(&self, addr: u64) -> Result<u64, MemoryError> {
        Ok(self.word(addr)?.load(Ordering::Relaxed))
    }

    fn write_u64(&self, addr: u64, value: u64) -> Result<(), MemoryError> {
        self.word(addr)?.store(value, Ordering::Relaxed);
        Ok(())
    }

    fn compare_exchange_u64(
        &self,
        addr: u64,
        current: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, MemoryError> {
        Ok(self
            .word(addr)?
            .compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire))
    }
}
