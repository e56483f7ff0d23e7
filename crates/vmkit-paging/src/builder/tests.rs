//! The builder: page-size choice, formats, and every error.

use super::*;
use crate::BufferMemory;
use crate::access::{Access, AccessKind, Privilege};
use crate::ept::{Ept, EptCaps, EptFlags};
use crate::npt::Npt;
use crate::x86::{self, PteFlags, X86Format, X86Paging};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const READ: Access = Access::read(Privilege::Supervisor);

fn memory() -> BufferMemory {
    BufferMemory::new(0, 8 * MIB).unwrap()
}

fn frames() -> BumpAllocator {
    BumpAllocator::new(4 * MIB, 8 * MIB)
}

fn size_at(mem: &BufferMemory, root: u64, addr: u64) -> PageSize {
    X86Paging::new(root)
        .probe(mem, addr, READ)
        .unwrap()
        .page_size
}

#[test]
fn identity_map_with_2m_pages() {
    let mem = memory();
    let mut builder =
        TableBuilder::new(X86Format::default(), &mem, frames(), PageSizes::UP_TO_2M).unwrap();
    builder
        .identity_map(0, 4 * GIB, PteFlags::WRITABLE | PteFlags::GLOBAL)
        .unwrap();
    // PML4 + PDPT + 4 PDs.
    assert_eq!(builder.tables_allocated(), 6);
    let root = builder.root();
    assert_eq!(root, 4 * MIB);
    assert_eq!(builder.format().levels(), 4);
    let paging = X86Paging::new(root);
    for addr in [0, 0x1234_5678, 4 * GIB - 1] {
        let t = paging
            .translate(&mem, addr, Access::write(Privilege::Supervisor))
            .unwrap();
        assert_eq!((t.address, t.page_size), (addr, PageSize::Size2M));
        assert_eq!(t.leaf & x86::GLOBAL, x86::GLOBAL);
    }
    assert!(paging.translate(&mem, 4 * GIB, READ).is_err());
    let rest = builder.into_allocator();
    assert_eq!(rest.next_frame(), 4 * MIB + 6 * 4096);
}

#[test]
fn largest_size_that_fits_alignment_and_length() {
    let mem = memory();
    let mut builder =
        TableBuilder::new(X86Format::default(), &mem, frames(), PageSizes::ALL).unwrap();
    // 0x1f_f000 .. 0x8040_1000: one 4 KiB page up to 2 MiB, 2 MiB pages up to 1 GiB, one
    // 1 GiB page, 2 MiB pages, and one 4 KiB page at the end.
    let start = 0x1f_f000;
    let end = 2 * GIB + 0x40_1000;
    builder
        .map(start, start, end - start, PteFlags::WRITABLE)
        .unwrap();
    let root = builder.root();
    assert_eq!(size_at(&mem, root, start), PageSize::Size4K);
    assert_eq!(size_at(&mem, root, 0x20_0000), PageSize::Size2M);
    assert_eq!(size_at(&mem, root, GIB - 1), PageSize::Size2M);
    assert_eq!(size_at(&mem, root, GIB), PageSize::Size1G);
    assert_eq!(size_at(&mem, root, 2 * GIB), PageSize::Size2M);
    assert_eq!(size_at(&mem, root, end - 1), PageSize::Size4K);
    // Different alignment of the output limits the size.
    builder
        .map(0x10_0000_0000, 0x20_1000, 4 * MIB, PteFlags::EMPTY)
        .unwrap();
    assert_eq!(size_at(&mem, root, 0x10_0000_0000), PageSize::Size4K);
    let t = X86Paging::new(root)
        .probe(&mem, 0x10_0000_0123, READ)
        .unwrap();
    assert_eq!(t.address, 0x20_1123);
}

#[test]
fn only_the_sizes_allowed_by_caller_and_format() {
    let mem = memory();
    let mut small =
        TableBuilder::new(X86Format::default(), &mem, frames(), PageSizes::SMALL).unwrap();
    small.identity_map(0, 2 * MIB, PteFlags::EMPTY).unwrap();
    assert_eq!(size_at(&mem, small.root(), 0x10_0000), PageSize::Size4K);
    let alloc = small.into_allocator();
    // No 1 GiB pages on this CPU, though the caller allows them.
    let no_1g = X86Format::default().with_gbpages(false);
    let mut builder = TableBuilder::new(no_1g, &mem, alloc, PageSizes::ALL).unwrap();
    builder.identity_map(0, GIB, PteFlags::EMPTY).unwrap();
    assert_eq!(size_at(&mem, builder.root(), 0), PageSize::Size2M);
    // Only 2 MiB allowed: a 4 KiB-aligned range cannot be mapped, and nothing is written.
    let mut alloc = builder.into_allocator();
    let before = alloc.next_frame();
    let mut two_m = TableBuilder::new(
        X86Format::default(),
        &mem,
        &mut alloc,
        PageSizes::of(&[PageSize::Size2M]),
    )
    .unwrap();
    assert_eq!(
        two_m.map(0, 0, 2 * MIB + 0x1000, PteFlags::EMPTY),
        Err(BuildError::NoPageSize(2 * MIB))
    );
    assert_eq!(two_m.tables_allocated(), 1);
    assert_eq!(alloc.next_frame(), before + 4096);
}

impl FrameAllocator for &mut BumpAllocator {
    fn allocate_frame(&mut self) -> Option<u64> {
        (**self).allocate_frame()
    }
}

#[test]
fn extends_existing_tables_and_refuses_overlaps() {
    let mem = memory();
    let mut builder =
        TableBuilder::new(X86Format::default(), &mem, frames(), PageSizes::ALL).unwrap();
    builder
        .identity_map(0x40_0000, 0x1000, PteFlags::EMPTY)
        .unwrap();
    let root = builder.root();
    let alloc = builder.into_allocator();
    let mut again =
        TableBuilder::with_root(X86Format::default(), &mem, alloc, PageSizes::ALL, root);
    assert_eq!(again.root(), root);
    // The 2 MiB slot at 0x40_0000 holds a table now, so 4 KiB pages fill it around the page.
    again
        .identity_map(0x40_1000, 0x1f_f000, PteFlags::EMPTY)
        .unwrap();
    assert_eq!(size_at(&mem, root, 0x5f_f000), PageSize::Size4K);
    assert_eq!(again.tables_allocated(), 0);
    assert_eq!(
        again.identity_map(0x40_0000, 0x1000, PteFlags::EMPTY),
        Err(BuildError::AlreadyMapped(0x40_0000))
    );
    // The 1 GiB slot holds a table, and the 2 MiB page at 0x60_0000 is free.
    again
        .identity_map(0x60_0000, 2 * MIB, PteFlags::EMPTY)
        .unwrap();
    assert_eq!(size_at(&mem, root, 0x60_0000), PageSize::Size2M);
    assert_eq!(
        again.identity_map(0x60_0000, 0x1000, PteFlags::EMPTY),
        Err(BuildError::AlreadyMapped(0x60_0000))
    );
}

#[test]
fn argument_errors() {
    let mem = memory();
    let mut builder =
        TableBuilder::new(X86Format::default(), &mem, frames(), PageSizes::ALL).unwrap();
    assert_eq!(
        builder.map(0x10, 0, 0x1000, PteFlags::EMPTY),
        Err(BuildError::Misaligned(0x10))
    );
    assert_eq!(
        builder.map(0, 0x10, 0x1000, PteFlags::EMPTY),
        Err(BuildError::Misaligned(0x10))
    );
    assert_eq!(
        builder.map(0, 0, 0x10, PteFlags::EMPTY),
        Err(BuildError::Misaligned(0x10))
    );
    assert_eq!(builder.map(0, 0, 0, PteFlags::EMPTY), Ok(()));
    // Non-canonical, crossing the hole, wrapping.
    let hole = 0x0000_8000_0000_0000;
    assert_eq!(
        builder.map(hole, 0, 0x1000, PteFlags::EMPTY),
        Err(BuildError::InputOutOfRange(hole))
    );
    assert_eq!(
        builder.map(hole - 0x1000, 0, 0x2000, PteFlags::EMPTY),
        Err(BuildError::InputOutOfRange(hole - 0x1000))
    );
    assert_eq!(
        builder.map(u64::MAX - 0xfff, 0, 0x2000, PteFlags::EMPTY),
        Err(BuildError::InputOutOfRange(u64::MAX - 0xfff))
    );
    // Output above MAXPHYADDR or wrapping.
    assert_eq!(
        builder.map(0, (1 << 52) - 0x1000, 0x2000, PteFlags::EMPTY),
        Err(BuildError::OutputOutOfRange((1 << 52) + 0xfff))
    );
    assert_eq!(
        builder.map(0, u64::MAX - 0xfff, 0x2000, PteFlags::EMPTY),
        Err(BuildError::OutputOutOfRange(u64::MAX - 0xfff))
    );
    // NX without NXE.
    let no_nxe = X86Format::default().with_nxe(false);
    let mut builder = TableBuilder::new(no_nxe, &mem, frames(), PageSizes::ALL).unwrap();
    assert_eq!(
        builder.map(0, 0, 0x1000, PteFlags::NO_EXECUTE),
        Err(BuildError::InvalidFlags)
    );
    assert!(alloc::format!("{}", BuildError::NoPageSize(0x1000)).contains("0x1000"));
}

#[test]
fn allocator_and_memory_errors() {
    let mem = memory();
    let none = || None;
    assert_eq!(
        TableBuilder::new(X86Format::default(), &mem, none, PageSizes::ALL).err(),
        Some(BuildError::OutOfFrames)
    );
    let mut one = Some(0x1000);
    let mut builder = TableBuilder::new(
        X86Format::default(),
        &mem,
        move || one.take(),
        PageSizes::ALL,
    )
    .unwrap();
    assert_eq!(
        builder.identity_map(0, 0x1000, PteFlags::EMPTY),
        Err(BuildError::OutOfFrames)
    );
    let unaligned = || Some(0x1234);
    assert_eq!(
        TableBuilder::new(X86Format::default(), &mem, unaligned, PageSizes::ALL).err(),
        Some(BuildError::BadFrame(0x1234))
    );
    let too_high = || Some(1 << 40);
    let narrow = X86Format::default().with_max_phys_bits(36);
    assert_eq!(
        TableBuilder::new(narrow, &mem, too_high, PageSizes::ALL).err(),
        Some(BuildError::BadFrame(1 << 40))
    );
    let outside = || Some(64 * MIB);
    assert_eq!(
        TableBuilder::new(X86Format::default(), &mem, outside, PageSizes::ALL).err(),
        Some(BuildError::Memory(crate::MemoryError::OutOfRange(64 * MIB)))
    );
    // An existing entry with reserved bits.
    mem.write_u64(0x2000, 0x3000 | x86::PRESENT | x86::PAGE_SIZE)
        .unwrap();
    let mut builder =
        TableBuilder::with_root(X86Format::default(), &mem, frames(), PageSizes::ALL, 0x2000);
    assert_eq!(
        builder.identity_map(0, 0x1000, PteFlags::EMPTY),
        Err(BuildError::Corrupt(0x2000))
    );
    let mut bump = BumpAllocator::new(0x1001, 0x3000);
    assert_eq!(bump.allocate_frame(), Some(0x2000));
    assert_eq!(bump.allocate_frame(), None);
    assert_eq!(BumpAllocator::new(u64::MAX, 5).next_frame(), 5);
}

#[test]
fn ept_and_npt_tables() {
    let mem = memory();
    let ept = Ept::new(0, EptCaps::all(46));
    let mut builder = TableBuilder::new(ept, &mem, frames(), PageSizes::ALL).unwrap();
    builder.identity_map(0, 2 * GIB, EptFlags::RAM).unwrap();
    builder
        .map(0x1_0000_0000, 0x5000, 0x1000, EptFlags::READ)
        .unwrap();
    assert_eq!(
        builder.map(0x2_0000_0000, 0, 0x1000, EptFlags::WRITE),
        Err(BuildError::InvalidFlags)
    );
    assert_eq!(
        builder.map(1 << 48, 0, 0x1000, EptFlags::RAM),
        Err(BuildError::InputOutOfRange(1 << 48))
    );
    let ept = Ept {
        root: builder.root(),
        ..ept
    };
    let t = ept.translate(&mem, GIB + 0x42, AccessKind::Fetch).unwrap();
    assert_eq!((t.address, t.page_size), (GIB + 0x42, PageSize::Size1G));
    assert_eq!(crate::ept::memory_type(t.leaf), 6);
    assert!(
        ept.translate(&mem, 0x1_0000_0010, AccessKind::Write)
            .is_err()
    );
    assert_eq!(
        ept.translate(&mem, 0x1_0000_0010, AccessKind::Read)
            .unwrap()
            .address,
        0x5010
    );

    let npt = Npt::new(0);
    let mut builder =
        TableBuilder::new(npt, &mem, builder.into_allocator(), PageSizes::UP_TO_2M).unwrap();
    builder.identity_map(0, 4 * MIB, PteFlags::EMPTY).unwrap();
    let npt = Npt {
        ncr3: builder.root(),
        ..npt
    };
    // U/S is implied for NPT pages.
    let t = npt.translate(&mem, 0x20_1000, AccessKind::Read).unwrap();
    assert!(t.rights.user && !t.rights.write);
}

#[test]
fn five_level_tables() {
    let mem = memory();
    let five = X86Format::default().with_five_level(true);
    let mut builder = TableBuilder::new(five, &mem, frames(), PageSizes::ALL).unwrap();
    let high = 0xff00_0000_0000_0000;
    builder.map(high, 0, GIB, PteFlags::WRITABLE).unwrap();
    let paging = X86Paging::new(builder.root()).with_format(five);
    let t = paging.translate(&mem, high + 0x1234, READ).unwrap();
    assert_eq!(
        (t.address, t.page_size, t.refs),
        (0x1234, PageSize::Size1G, 3)
    );
    assert_eq!(
        builder.map(0x0100_0000_0000_0000, 0, 0x1000, PteFlags::EMPTY),
        Err(BuildError::InputOutOfRange(0x0100_0000_0000_0000))
    );
}
