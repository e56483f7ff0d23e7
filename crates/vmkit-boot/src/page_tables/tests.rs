use super::*;
use crate::elf::ElfBuilder;
use crate::pvh::{BOOT_DATA_AREAS, PvhConfig, START_INFO_ADDR, load_pvh};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmkit_paging::{Access, PageFault, PhysMemory, Privilege, WalkError, X86Paging};

const RAM: u64 = 64 << 20;
const GIB: u64 = 1 << 30;
const MIB_2: u64 = 2 << 20;
/// A window for the 2054 frames of 4 KiB tables: 16 MiB up, in RAM.
const SMALL_WINDOW: Range<u64> = 0x100_0000..0x100_0000 + 2054 * FRAME_SIZE;
const ACCESSED_DIRTY: u64 = vmkit_paging::x86::ACCESSED | vmkit_paging::x86::DIRTY;

fn layout() -> GuestLayout {
    GuestLayout::new(RAM).unwrap()
}

/// Guest memory of `layout` with its first 32 MiB set to 0xff, so stale bytes are visible.
fn dirty_memory(layout: &GuestLayout) -> GuestMemoryMmap {
    let memory = layout.create_guest_memory().unwrap();
    memory
        .write_slice(&vec![0xff; 32 << 20], GuestAddress(0))
        .unwrap();
    memory
}

/// xorshift64: a fixed, reproducible sequence.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Addresses in `[0, 4 GiB)`: both sides of every 2 MiB boundary (so of every 1 GiB one), every
/// 4 KiB page boundary of the first 2 MiB and of the window, and pseudo-random ones.
fn mapped_addresses() -> Vec<u64> {
    let mut out = Vec::new();
    let around = |boundary: u64, out: &mut Vec<u64>| {
        for delta in [1, 2, 7, 8, 0xfff, 0x1000] {
            if let Some(below) = boundary.checked_sub(delta) {
                out.push(below);
            }
            if boundary + delta < IDENTITY_MAP_END {
                out.push(boundary + delta);
            }
        }
        out.push(boundary);
    };
    for boundary in (0..IDENTITY_MAP_END).step_by(MIB_2 as usize) {
        around(boundary, &mut out);
    }
    for page in (0..MIB_2).step_by(FRAME_SIZE as usize) {
        around(page, &mut out);
    }
    out.push(IDENTITY_MAP_END - 1);
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        out.push(random.next() % IDENTITY_MAP_END);
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Addresses at and above the end of the map: unmapped, each a not-present fault.
const UNMAPPED: [u64; 9] = [
    IDENTITY_MAP_END,
    IDENTITY_MAP_END + 1,
    IDENTITY_MAP_END + 0xfff,
    IDENTITY_MAP_END + 0x1000,
    IDENTITY_MAP_END + MIB_2,
    5 * GIB + 0x1234,
    512 * GIB,
    0x7fff_ffff_f000,
    0xffff_8000_0000_0000,
];

/// Checks with vmkit-paging's walker that `tables` identity-map `[0, 4 GiB)` with their page
/// size, writable, supervisor-only and executable, and nothing else; returns how many addresses
/// were checked.
fn check_map(memory: &GuestMemoryMmap, tables: &BootPageTables) -> usize {
    let paging = X86Paging::new(tables.cr3).with_gbpages(tables.page_size == PageSize::Size1G);
    let read = Access::read(Privilege::Supervisor);
    let write = Access::write(Privilege::Supervisor);
    let fetch = Access::fetch(Privilege::Supervisor);
    let user = Access::read(Privilege::User);
    let addresses = mapped_addresses();
    for &gpa in &addresses {
        let t = paging.probe(memory, gpa, read).unwrap();
        assert_eq!(
            (t.address, t.page_size),
            (gpa, tables.page_size),
            "{gpa:#x}"
        );
        assert!(
            t.rights.read && t.rights.write && t.rights.execute && !t.rights.user,
            "{gpa:#x}: {:?}",
            t.rights
        );
        assert_eq!(t.leaf & ACCESSED_DIRTY, ACCESSED_DIRTY, "{gpa:#x}");
        assert_eq!(paging.probe(memory, gpa, write).unwrap().address, gpa);
        assert_eq!(paging.probe(memory, gpa, fetch).unwrap().address, gpa);
        assert_eq!(
            paging.probe(memory, gpa, user),
            Err(WalkError::PageFault(PageFault {
                address: gpa,
                error_code: PageFault::PRESENT | PageFault::USER,
            })),
            "{gpa:#x}"
        );
    }
    for gva in UNMAPPED {
        assert_eq!(
            paging.probe(memory, gva, read),
            Err(WalkError::PageFault(PageFault {
                address: gva,
                error_code: 0,
            })),
            "{gva:#x}"
        );
    }
    assert_eq!(
        paging.probe(memory, 0x8000_0000_0000, read),
        Err(WalkError::NonCanonical(0x8000_0000_0000))
    );
    addresses.len()
}

#[test]
fn frames_needed_per_page_size() {
    assert_eq!(tables_needed(PageSize::Size1G), 2);
    assert_eq!(tables_needed(PageSize::Size2M), 6);
    assert_eq!(tables_needed(PageSize::Size4K), 2 + 4 + 2048);
    assert_eq!(PAGE_TABLES_END - PAGE_TABLES_START, 6 * FRAME_SIZE);
}

#[test]
fn maps_4_gib_with_2m_pages_in_six_frames() {
    let layout = layout();
    let memory = dirty_memory(&layout);
    let tables = build_boot_page_tables(&memory, &layout, PageSizes::UP_TO_2M).unwrap();
    assert_eq!(
        tables,
        BootPageTables {
            cr3: 0x9000,
            frames: 0x9000..0xf000,
            page_size: PageSize::Size2M,
            mapped: 0..IDENTITY_MAP_END,
        }
    );
    assert_eq!(tables.frame_count(), 6);
    assert!(check_map(&memory, &tables) > 30_000);
    // The Firecracker / Cloud Hypervisor shape: PML4 -> PDPT at 0xa000 -> PDs from 0xb000.
    let pml4e = memory.read_u64(0x9000).unwrap();
    assert_eq!(pml4e & 0x000f_ffff_ffff_f000, 0xa000);
    for gib in 0..4 {
        let pdpte = memory.read_u64(0xa000 + gib * 8).unwrap();
        assert_eq!(pdpte & 0x000f_ffff_ffff_f000, 0xb000 + gib * FRAME_SIZE);
    }
    assert_eq!(memory.read_u64(0xa000 + 4 * 8).unwrap(), 0);
    // Nothing past the window was touched.
    assert_eq!(memory.read_obj::<u8>(GuestAddress(0xf000)).unwrap(), 0xff);
    assert_eq!(memory.read_obj::<u8>(GuestAddress(0x8fff)).unwrap(), 0xff);
}

#[test]
fn maps_4_gib_with_1g_pages_in_two_frames() {
    let layout = layout();
    let memory = dirty_memory(&layout);
    let tables = build_boot_page_tables(&memory, &layout, PageSizes::ALL).unwrap();
    assert_eq!(tables.cr3, PAGE_TABLES_START);
    assert_eq!(tables.frames, 0x9000..0xb000);
    assert_eq!(tables.frame_count(), 2);
    assert_eq!(tables.page_size, PageSize::Size1G);
    assert!(check_map(&memory, &tables) > 30_000);
    // The rest of the window is untouched.
    assert_eq!(memory.read_u64(0xb000).unwrap(), u64::MAX);
}

#[test]
fn maps_4_gib_with_4k_pages_in_a_larger_window() {
    let layout = layout();
    let memory = dirty_memory(&layout);
    let tables =
        build_boot_page_tables_in(&memory, &layout, PageSizes::SMALL, SMALL_WINDOW).unwrap();
    assert_eq!(tables.cr3, SMALL_WINDOW.start);
    assert_eq!(tables.frames, SMALL_WINDOW);
    assert_eq!(tables.frame_count(), 2054);
    assert_eq!(tables.page_size, PageSize::Size4K);
    assert!(check_map(&memory, &tables) > 30_000);
    assert_eq!(
        memory
            .read_obj::<u8>(GuestAddress(SMALL_WINDOW.end))
            .unwrap(),
        0xff
    );
}

#[test]
fn the_largest_allowed_size_wins() {
    let layout = layout();
    let memory = layout.create_guest_memory().unwrap();
    let cases = [
        (PageSizes::of(&[PageSize::Size2M]), PageSize::Size2M, 6),
        (PageSizes::of(&[PageSize::Size1G]), PageSize::Size1G, 2),
        (
            PageSizes::of(&[PageSize::Size4K, PageSize::Size1G]),
            PageSize::Size1G,
            2,
        ),
    ];
    for (sizes, page_size, frames) in cases {
        let tables = build_boot_page_tables(&memory, &layout, sizes).unwrap();
        assert_eq!(
            (tables.page_size, tables.frame_count()),
            (page_size, frames)
        );
        let paging = X86Paging::new(tables.cr3).with_gbpages(page_size == PageSize::Size1G);
        let t = paging
            .probe(&memory, 0xfee0_0030, Access::read(Privilege::Supervisor))
            .unwrap();
        assert_eq!((t.address, t.page_size), (0xfee0_0030, page_size));
    }
}

#[test]
fn rebuilding_over_old_tables_gives_the_same_tables() {
    let layout = layout();
    let memory = layout.create_guest_memory().unwrap();
    let first = build_boot_page_tables(&memory, &layout, PageSizes::UP_TO_2M).unwrap();
    let mut before = vec![0u8; 0x6000];
    memory
        .read_slice(&mut before, GuestAddress(PAGE_TABLES_START))
        .unwrap();
    // 1 GiB tables leave stale page directories behind; 2 MiB tables replace everything.
    build_boot_page_tables(&memory, &layout, PageSizes::ALL).unwrap();
    let second = build_boot_page_tables(&memory, &layout, PageSizes::UP_TO_2M).unwrap();
    assert_eq!(first, second);
    let mut after = vec![0u8; 0x6000];
    memory
        .read_slice(&mut after, GuestAddress(PAGE_TABLES_START))
        .unwrap();
    assert_eq!(before, after);
}

#[test]
fn needs_only_the_window_backed_and_any_address_width() {
    let layout = GuestLayout::with_phys_bits(RAM, 36).unwrap();
    let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let tables = build_boot_page_tables(&memory, &layout, PageSizes::UP_TO_2M).unwrap();
    assert_eq!(tables.frames, PAGE_TABLES_START..PAGE_TABLES_END);
    let paging = X86Paging::new(tables.cr3).with_max_phys_bits(36);
    let t = paging
        .probe(&memory, 0xbfff_ffff, Access::write(Privilege::Supervisor))
        .unwrap();
    assert_eq!(t.address, 0xbfff_ffff);
}

#[test]
fn rejects_an_empty_set_of_page_sizes() {
    let layout = layout();
    let memory = dirty_memory(&layout);
    let err = build_boot_page_tables(&memory, &layout, PageSizes::EMPTY).unwrap_err();
    assert!(matches!(err, PageTableError::NoPageSize), "{err}");
    assert_eq!(
        err.to_string(),
        "no page size is allowed for the boot page tables: the set of page sizes is empty"
    );
    assert_eq!(memory.read_u64(PAGE_TABLES_START).unwrap(), u64::MAX);
}

#[test]
fn rejects_bad_windows() {
    let layout = layout();
    let memory = dirty_memory(&layout);
    for window in [
        0x9000..0x9000,
        // Reversed.
        Range {
            start: 0xa000,
            end: 0x9000,
        },
        0x9001..0xf000,
        0x9000..0xefff,
        u64::MAX - 0xfff..u64::MAX,
    ] {
        let (start, end) = (window.start, window.end);
        let err =
            build_boot_page_tables_in(&memory, &layout, PageSizes::UP_TO_2M, window).unwrap_err();
        assert!(
            matches!(err, PageTableError::BadWindow { start: s, end: e } if (s, e) == (start, end)),
            "{start:#x}..{end:#x}: {err}"
        );
    }
    let err =
        build_boot_page_tables_in(&memory, &layout, PageSizes::ALL, 0x9000..0x9000).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the page-table window 0x9000..0x9000 is empty or not 4 KiB aligned"
    );
    assert_eq!(memory.read_u64(PAGE_TABLES_START).unwrap(), u64::MAX);
}

#[test]
fn rejects_windows_outside_guest_ram() {
    let layout = layout();
    let memory = dirty_memory(&layout);
    let outside = [
        // Past the end of RAM, and straddling it.
        RAM..RAM + 0x6000,
        RAM - 0x1000..RAM + 0x5000,
        // In the 32-bit hole (the local APIC page).
        0xfee0_0000..0xfee0_6000,
        // Above 4 GiB, where this guest has no RAM.
        IDENTITY_MAP_END..IDENTITY_MAP_END + 0x6000,
        // Beyond any host's address space.
        0xffff_ffff_ffff_0000..0xffff_ffff_ffff_f000,
    ];
    for window in outside {
        let (start, end) = (window.start, window.end);
        let err =
            build_boot_page_tables_in(&memory, &layout, PageSizes::UP_TO_2M, window).unwrap_err();
        assert!(
            matches!(err, PageTableError::WindowOutOfMemory { start: s, end: e } if (s, e) == (start, end)),
            "{start:#x}..{end:#x}: {err}"
        );
    }
}

#[test]
fn rejects_memory_that_does_not_back_the_window() {
    // The layout says 64 MiB of RAM, but the memory starts at 1 MiB.
    let layout = layout();
    let memory =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0x10_0000), 0x10_0000)]).unwrap();
    let err = build_boot_page_tables(&memory, &layout, PageSizes::UP_TO_2M).unwrap_err();
    assert!(
        matches!(
            err,
            PageTableError::WindowOutOfMemory {
                start: 0x9000,
                end: 0xf000
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "the page-table window 0x9000..0xf000 does not lie in guest RAM backed by guest memory"
    );
    // Memory too small for the whole window.
    let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0xe000)]).unwrap();
    let err = build_boot_page_tables(&memory, &layout, PageSizes::ALL).unwrap_err();
    assert!(
        matches!(err, PageTableError::WindowOutOfMemory { .. }),
        "{err}"
    );
    assert_eq!(memory.read_u64(PAGE_TABLES_START).unwrap(), 0);
}

#[test]
fn rejects_tables_that_do_not_fit_the_window() {
    let layout = layout();
    let memory = dirty_memory(&layout);
    let err = build_boot_page_tables(&memory, &layout, PageSizes::SMALL).unwrap_err();
    assert!(
        matches!(
            err,
            PageTableError::TablesDoNotFit {
                page_size: PageSize::Size4K,
                needed: 2054,
                available: 6
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "boot page tables with 4 KiB pages take 2054 frames; the window holds 6"
    );
    let short = PAGE_TABLES_START..PAGE_TABLES_END - FRAME_SIZE;
    let err = build_boot_page_tables_in(&memory, &layout, PageSizes::UP_TO_2M, short).unwrap_err();
    assert!(
        matches!(
            err,
            PageTableError::TablesDoNotFit {
                page_size: PageSize::Size2M,
                needed: 6,
                available: 5
            }
        ),
        "{err}"
    );
    let short = SMALL_WINDOW.start..SMALL_WINDOW.end - FRAME_SIZE;
    let err = build_boot_page_tables_in(&memory, &layout, PageSizes::SMALL, short).unwrap_err();
    assert!(
        matches!(
            err,
            PageTableError::TablesDoNotFit {
                needed: 2054,
                available: 2053,
                ..
            }
        ),
        "{err}"
    );
    // Nothing was written.
    assert_eq!(memory.read_u64(PAGE_TABLES_START).unwrap(), u64::MAX);
    assert_eq!(memory.read_u64(SMALL_WINDOW.start).unwrap(), u64::MAX);
}

#[test]
fn the_bump_allocator_reports_running_out_as_an_error() {
    // The window check rules this out; the allocator is the backstop, never an overflow.
    let layout = layout();
    let memory = dirty_memory(&layout);
    let format = X86Format::new().with_gbpages(false);
    let end = PAGE_TABLES_END - FRAME_SIZE;
    let err = write_tables(&memory, format, PageSize::Size2M, PAGE_TABLES_START, end).unwrap_err();
    assert_eq!(err, BuildError::OutOfFrames);
    assert_eq!(memory.read_obj::<u8>(GuestAddress(end)).unwrap(), 0xff);
    let err = PageTableError::Build(err);
    // The message names this step; the cause follows once, as the source.
    assert_eq!(err.to_string(), "building the boot page tables failed");
    assert_eq!(
        std::error::Error::source(&err).map(ToString::to_string),
        Some("the frame allocator has no frame left".to_string())
    );
}

#[test]
fn pvh_structures_never_overlap_the_window() {
    for (addr, size) in BOOT_DATA_AREAS {
        assert!(
            addr + size <= PAGE_TABLES_START || PAGE_TABLES_END <= addr,
            "{addr:#x}+{size:#x}"
        );
    }

    // A 2 MiB guest whose image fills the RAM above 1 MiB: the modules go into conventional
    // memory, top down, and would reach the window if they did not skip it.
    let layout = GuestLayout::new(2 << 20).unwrap();
    let memory = layout.create_guest_memory().unwrap();
    let image = ElfBuilder::new()
        .segment(
            GuestAddress(0x10_0000),
            &[0x31, 0xc0, 0xe7, 0xf4],
            0x10_0000,
        )
        .pvh_entry(GuestAddress(0x10_0000))
        .build();
    let (big, mid, page) = (vec![1; 0x7e000], vec![2; 0x1_0000], vec![3; 0x1000]);
    let modules: [&[u8]; 6] = [&big, &mid, &page, &page, &page, &page];
    let config = PvhConfig {
        cmdline: "console=ttyS0",
        modules: &modules,
        rsdp: None,
    };
    let boot = load_pvh(&memory, layout.memory_map(), &image, &config).unwrap();
    let placed: Vec<u64> = boot.modules.iter().map(|m| m.addr.0).collect();
    assert_eq!(placed, [0x2_1000, 0x1_0000, 0xf000, 0x8000, 0x5000, 0x4000]);
    for module in &boot.modules {
        let end = module.addr.0 + module.size;
        assert!(
            end <= PAGE_TABLES_START || PAGE_TABLES_END <= module.addr.0,
            "{module:x?}"
        );
    }

    // Tables built after the PVH structures leave them intact.
    let tables = build_boot_page_tables(&memory, &layout, PageSizes::UP_TO_2M).unwrap();
    assert_eq!(tables.frames, PAGE_TABLES_START..PAGE_TABLES_END);
    let magic: u32 = memory.read_obj(START_INFO_ADDR).unwrap();
    assert_eq!(magic, 0x336e_c578);
    for (module, bytes) in boot.modules.iter().zip(modules) {
        let mut content = vec![0; bytes.len()];
        memory.read_slice(&mut content, module.addr).unwrap();
        assert_eq!(content, bytes, "{module:x?}");
    }
}
