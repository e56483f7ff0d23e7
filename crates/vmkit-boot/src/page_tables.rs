//! Boot page tables: the identity map a 64-bit entry (the Linux 64-bit boot protocol, or any
//! long-mode entry) starts on, built with vmkit-paging's [`TableBuilder`].
//!
//! # What is mapped
//!
//! Guest-physical `[0, 4 GiB)` ([`IDENTITY_MAP_END`]) is mapped to itself: present, writable,
//! supervisor-only, executable (no XD bit), with the largest page size the caller allows — pass
//! what the backend supports (vmkit-vcpu's `Hypervisor::supported_page_sizes()`: 4 KiB and
//! 2 MiB everywhere, 1 GiB where the CPU model offers `pdpe1gb`). Every part of the range is
//! aligned to every page size, so the whole map uses that one size. Leaf entries have their accessed and dirty flags
//! set, as Linux's own early identity map has them, so the first accesses need no flag updates.
//!
//! The Linux 64-bit boot protocol asks that "the range with `setup_header.init_size` from start
//! address of loaded kernel and zero page and command line buffer get ident mapping". In
//! vmkit-memory's layout all RAM below 4 GiB lies in `[0, 3 GiB)`, so wherever a loader puts
//! the kernel (with its `init_size`), the zero page, the command line, the boot GDT and a stack
//! below 4 GiB, this map covers them; what is loaded above 4 GiB is not covered, and a loader
//! using these tables must keep the boot structures below 4 GiB (as vmkit-boot's PVH loader
//! keeps its structures and modules).
//! The map also covers the 32-bit MMIO hole `[3 GiB, 4 GiB)`, so early code reaches the
//! IOAPIC, the local APIC, the PCI ECAM and 32-bit BARs before it builds its own tables. The
//! hole's entries carry write-back attributes like the rest; emulated MMIO always exits to the
//! VMM, so they never reach a device. 4 GiB is also the natural edge of the tables: one PDPT
//! entry per GiB, four page directories with 2 MiB pages.
//!
//! # Where the tables go
//!
//! | address | content |
//! |---|---|
//! | [`PAGE_TABLES_START`] `0x9000` | PML4 (the CR3 value) |
//! | `0xa000` | PDPT |
//! | `0xb000`..`0xf000` | four page directories (2 MiB pages only) |
//!
//! This is the layout Firecracker and Cloud Hypervisor use (PML4 `0x9000`, PDPT `0xa000`,
//! page directories from `0xb000`): conventional memory, which is usable RAM in every
//! vmkit-memory layout (at least 2 MiB of RAM), below the EBDA, clear of the real-mode IVT and
//! BIOS data area, of the PVH structures ([`BOOT_DATA_AREAS`](crate::pvh::BOOT_DATA_AREAS):
//! `0x6000..0x8000` and `0x2_0000..0x2_1000`) and of the RAM from 1 MiB where kernels load. vmkit-boot
//! never places anything of its own in `[PAGE_TABLES_START, PAGE_TABLES_END)` (PVH modules
//! skip it); a VMM keeps its own structures (the boot GDT, the zero page, a stack) out of it.
//! Linux keeps its allocator out of the first MiB and builds its own tables right after entry,
//! so the window needs no reserved entry in the memory map.
//!
//! Frames come from a [`BumpAllocator`] over the window, so running out of it is an error,
//! never a write past it. With 1 GiB pages the tables take two frames (`0x9000..0xb000`), with
//! 2 MiB pages six (`0x9000..0xf000`). With 4 KiB pages alone they would take 2054 frames
//! (8 MiB), which no fixed place in low memory holds: [`build_boot_page_tables`] refuses them
//! with [`PageTableError::TablesDoNotFit`], and a VMM on such a backend passes a window of its own
//! to [`build_boot_page_tables_in`]. Every x86-64 processor maps 2 MiB pages in long mode, so
//! that backend is hypothetical.
//!
//! Everything is checked (a page size to use, the window's alignment, that it lies in guest RAM
//! backed by guest memory and holds the tables) before any byte of guest memory is written.

use std::ops::Range;

use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmkit_memory::GuestLayout;
use vmkit_paging::{
    BuildError, BumpAllocator, GuestMemoryPhys, PageSize, PageSizes, PteFlags, TableBuilder,
    X86Format,
};

/// Why boot page tables could not be built ([`build_boot_page_tables`]). Nothing is written
/// unless every check passed.
#[derive(Debug, displaydoc::Display, thiserror::Error)]
#[ignore_extra_doc_attributes]
pub enum PageTableError {
    /// no page size is allowed for the boot page tables: the set of page sizes is empty
    NoPageSize,
    /// the page-table window {start:#x}..{end:#x} is empty or not 4 KiB aligned
    BadWindow {
        /// First address of the window.
        start: u64,
        /// One past the last address of the window.
        end: u64,
    },
    /// the page-table window {start:#x}..{end:#x} does not lie in guest RAM backed by guest memory
    WindowOutOfMemory {
        /// First address of the window.
        start: u64,
        /// One past the last address of the window.
        end: u64,
    },
    /// boot page tables with {page_size} pages take {needed} frames; the window holds {available}
    TablesDoNotFit {
        /// The page size the tables would use.
        page_size: vmkit_paging::PageSize,
        /// 4 KiB frames the tables take.
        needed: u64,
        /// 4 KiB frames in the window.
        available: u64,
    },
    /// building the boot page tables failed
    Build(#[source] vmkit_paging::BuildError),
}

/// First guest-physical address of the boot page-table window: the PML4 goes here.
pub const PAGE_TABLES_START: u64 = 0x9000;
/// One past the last byte of the boot page-table window: room for a PML4, a PDPT and four page
/// directories, what `[0, 4 GiB)` needs with 2 MiB pages.
pub const PAGE_TABLES_END: u64 = 0xf000;
/// The boot page tables map guest-physical `[0, IDENTITY_MAP_END)` to itself.
pub const IDENTITY_MAP_END: u64 = 1 << 32;

/// Size of a table frame.
const FRAME_SIZE: u64 = 0x1000;
/// Levels of the tables: 4-level paging, as the 64-bit entry runs.
const LEVELS: u8 = 4;

const _: () = {
    assert!(PAGE_TABLES_START.is_multiple_of(FRAME_SIZE));
    assert!(PAGE_TABLES_END.is_multiple_of(FRAME_SIZE));
    assert!((PAGE_TABLES_END - PAGE_TABLES_START) / FRAME_SIZE == tables_needed(PageSize::Size2M));
    // The window stays inside conventional memory.
    assert!(PAGE_TABLES_END <= vmkit_memory::layout::EBDA_START);
};

/// Boot page tables written to guest memory: what the vCPU's entry state needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootPageTables {
    /// The value for CR3: the guest-physical address of the PML4 (PWT and PCD clear).
    pub cr3: u64,
    /// The table frames used, `[start, end)`, 4 KiB each, starting with the PML4.
    pub frames: Range<u64>,
    /// The page size of every mapping.
    pub page_size: PageSize,
    /// The guest-physical range mapped to itself: `[0, IDENTITY_MAP_END)`.
    pub mapped: Range<u64>,
}

impl BootPageTables {
    /// How many 4 KiB table frames the tables take.
    pub fn frame_count(&self) -> u64 {
        (self.frames.end - self.frames.start) / FRAME_SIZE
    }
}

/// Builds the boot page tables in the fixed window `[PAGE_TABLES_START, PAGE_TABLES_END)`:
/// `[0, 4 GiB)` identity-mapped with the largest page size in `sizes` (pass the backend's
/// `supported_page_sizes()`), writable, supervisor-only and executable. See the
/// [module documentation](crate::page_tables) for the range and the window.
///
/// The window must be guest RAM in `layout` and backed by `memory`; with 4 KiB pages alone the
/// tables do not fit it ([`PageTableError::TablesDoNotFit`]). Nothing is written unless every
/// check passes.
pub fn build_boot_page_tables<M: GuestMemoryBackend>(
    memory: &M,
    layout: &GuestLayout,
    sizes: PageSizes,
) -> Result<BootPageTables, PageTableError> {
    build_boot_page_tables_in(memory, layout, sizes, PAGE_TABLES_START..PAGE_TABLES_END)
}

/// Like [`build_boot_page_tables`], with the tables in `window` instead of the fixed window: for
/// a VMM whose guest memory has other plans for `0x9000..0xf000`, or whose backend allows 4 KiB
/// pages only (2054 frames). `window` must be 4 KiB aligned, non-empty, guest RAM in `layout`
/// and backed by `memory`; the frames are used from its start.
pub fn build_boot_page_tables_in<M: GuestMemoryBackend>(
    memory: &M,
    layout: &GuestLayout,
    sizes: PageSizes,
    window: Range<u64>,
) -> Result<BootPageTables, PageTableError> {
    let result = build(memory, layout, sizes, window);
    match &result {
        Ok(tables) => log::debug!(
            "boot page tables at {:#x}..{:#x}: [0, {IDENTITY_MAP_END:#x}) with {} pages",
            tables.frames.start,
            tables.frames.end,
            tables.page_size
        ),
        Err(error) => log::debug!("boot page tables not built: {error}"),
    }
    result
}

fn build<M: GuestMemoryBackend>(
    memory: &M,
    layout: &GuestLayout,
    sizes: PageSizes,
    window: Range<u64>,
) -> Result<BootPageTables, PageTableError> {
    let (start, end) = (window.start, window.end);
    // The largest size first; `[0, 4 GiB)` is aligned to each, so it is the only one used.
    let page_size = sizes.iter().next().ok_or(PageTableError::NoPageSize)?;
    if start >= end || !start.is_multiple_of(FRAME_SIZE) || !end.is_multiple_of(FRAME_SIZE) {
        return Err(PageTableError::BadWindow { start, end });
    }
    let len = end - start;
    let backed = usize::try_from(len).is_ok_and(|len| memory.check_range(GuestAddress(start), len));
    if !layout.is_ram(GuestAddress(start), len) || !backed {
        return Err(PageTableError::WindowOutOfMemory { start, end });
    }
    let needed = tables_needed(page_size);
    let available = len / FRAME_SIZE;
    if needed > available {
        return Err(PageTableError::TablesDoNotFit {
            page_size,
            needed,
            available,
        });
    }

    let format = X86Format::new()
        .with_gbpages(page_size == PageSize::Size1G)
        .with_max_phys_bits(layout.phys_bits());
    let frames_end = write_tables(&GuestMemoryPhys(memory), format, page_size, start, end)
        .map_err(PageTableError::Build)?;
    Ok(BootPageTables {
        cr3: start,
        frames: start..frames_end,
        page_size,
        mapped: 0..IDENTITY_MAP_END,
    })
}

/// Identity-maps `[0, IDENTITY_MAP_END)` with `page_size` pages, the tables in `[start, end)`;
/// returns the end of the frames used. The root is the first frame.
fn write_tables<M: vmkit_paging::PhysMemory + ?Sized>(
    memory: &M,
    format: X86Format,
    page_size: PageSize,
    start: u64,
    end: u64,
) -> Result<u64, BuildError> {
    let frames = BumpAllocator::new(start, end);
    let sizes = PageSizes::EMPTY.with(page_size);
    let mut builder = TableBuilder::new(format, memory, frames, sizes)?;
    let flags = PteFlags::WRITABLE | PteFlags::ACCESSED | PteFlags::DIRTY;
    builder.identity_map(0, IDENTITY_MAP_END, flags)?;
    Ok(builder.into_allocator().next_frame())
}

/// The table frames `[0, IDENTITY_MAP_END)` takes with `page_size` pages: at each level from
/// the PML4 down to the one holding the leaves, one table per span that a table maps.
const fn tables_needed(page_size: PageSize) -> u64 {
    let mut level = LEVELS;
    let mut tables = 0;
    while level >= page_size.level() {
        // A table at `level` maps 512 entries of 2^(12 + 9 (level - 1)) bytes each.
        let span_shift = 12 + 9 * level as u32;
        tables += IDENTITY_MAP_END.div_ceil(1 << span_shift);
        level -= 1;
    }
    tables
}

#[cfg(test)]
mod tests;
