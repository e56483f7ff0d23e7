//! Each rule of EPT on hand-built tables.

use super::*;
use crate::BufferMemory;
use crate::nested::NestedFault;

const PML4: u64 = 0x1000;
const PDPT: u64 = 0x2000;
const PD: u64 = 0x3000;
const PT: u64 = 0x4000;
const PML5: u64 = 0x5000;
const RWX: u64 = READ | WRITE | EXECUTE;
const WB: u64 = 6 << 3;

const GPA: u64 = (1 << 39) | (2 << 30) | (3 << 21) | (4 << 12) | 0x567;

/// EPT with PML4[1] → PDPT, PDPT[2] → PD, PD[3] → PT, PT[4] = `pte`.
fn tables(pte: u64) -> BufferMemory {
    let mem = BufferMemory::new(0, 0x10_0000).unwrap();
    mem.write_u64(PML4 + 8, PDPT | RWX).unwrap();
    mem.write_u64(PDPT + 16, PD | RWX).unwrap();
    mem.write_u64(PD + 24, PT | RWX).unwrap();
    mem.write_u64(PT + 32, pte).unwrap();
    mem
}

fn ept() -> Ept {
    Ept::new(PML4, EptCaps::all(46))
}

fn nested_fault(result: Result<Translation, WalkError>) -> NestedFault {
    match result {
        Err(WalkError::Nested(fault)) => fault,
        other => panic!("expected a nested fault, got {other:?}"),
    }
}

#[test]
fn translates_pages_of_every_size_with_memory_type() {
    let mem = tables(0xab_c000 | RWX | WB | IGNORE_PAT);
    let t = ept().translate(&mem, GPA, AccessKind::Write).unwrap();
    assert_eq!(
        (t.address, t.page_size, t.refs),
        (0xab_c567, PageSize::Size4K, 4)
    );
    assert_eq!(memory_type(t.leaf), 6);
    assert!(ignores_pat(t.leaf));
    assert!(t.rights.read && t.rights.write && t.rights.execute && !t.rights.user);

    mem.write_u64(PD + 24, 0x40_0000 | READ | PAGE_SIZE | (4 << 3))
        .unwrap();
    let t = ept().translate(&mem, GPA, AccessKind::Read).unwrap();
    assert_eq!(
        (t.address, t.page_size),
        (0x40_0000 | (GPA & 0x1f_ffff), PageSize::Size2M)
    );
    assert_eq!(memory_type(t.leaf), 4);
    assert!(!ignores_pat(t.leaf));

    mem.write_u64(PDPT + 16, 0x1_4000_0000 | RWX | PAGE_SIZE)
        .unwrap();
    let t = ept().translate(&mem, GPA, AccessKind::Fetch).unwrap();
    assert_eq!(t.address, 0x1_4000_0000 | (GPA & 0x3fff_ffff));
    assert_eq!((t.page_size, t.refs), (PageSize::Size1G, 2));
}

#[test]
fn violations_report_access_and_combined_rights() {
    // Not present: rights 0.
    let mem = tables(0);
    let fault = nested_fault(ept().translate(&mem, GPA, AccessKind::Read));
    assert_eq!(fault.cause, NestedCause::NotPresent);
    assert_eq!((fault.gpa, fault.level, fault.info), (GPA, 1, 1));
    assert_eq!((fault.stage, fault.linear), (Stage::Direct, None));
    assert!(!fault.is_ept_misconfig());

    // Read-only page written: the qualification shows R and X of all levels, W of none.
    let mem = tables(0x9000 | READ | EXECUTE | WB);
    let fault = nested_fault(ept().translate(&mem, GPA, AccessKind::Write));
    assert_eq!(fault.cause, NestedCause::Denied);
    assert_eq!(fault.info, 2 | (1 << 3) | (1 << 5));

    // Non-executable upper level, fetch.
    let mem = tables(0x9000 | RWX | WB);
    mem.write_u64(PDPT + 16, PD | READ | WRITE).unwrap();
    let fault = nested_fault(ept().translate(&mem, GPA, AccessKind::Fetch));
    assert_eq!(fault.info, 4 | (1 << 3) | (1 << 4));
    assert!(ept().translate(&mem, GPA, AccessKind::Write).is_ok());
    assert!(alloc::format!("{fault}").starts_with("EPT violation at GPA"));
}

#[test]
fn permission_misconfigurations() {
    // Write without read.
    let mem = tables(0x9000 | WRITE | WB);
    let fault = nested_fault(ept().translate(&mem, GPA, AccessKind::Read));
    assert!(fault.is_ept_misconfig());
    assert_eq!((fault.info, fault.level), (0, 1));
    assert!(alloc::format!("{fault}").starts_with("EPT misconfiguration"));
    // Execute-only: fine when supported, a misconfiguration when not.
    let mem = tables(0x9000 | EXECUTE | WB);
    assert!(ept().translate(&mem, GPA, AccessKind::Fetch).is_ok());
    let fault = nested_fault(ept().translate(&mem, GPA, AccessKind::Read));
    assert_eq!(
        (fault.cause, fault.info),
        (NestedCause::Denied, 1 | (1 << 5))
    );
    let caps = EptCaps {
        execute_only: false,
        ..EptCaps::all(46)
    };
    let strict = Ept::new(PML4, caps);
    assert!(nested_fault(strict.translate(&mem, GPA, AccessKind::Fetch)).is_ept_misconfig());
    // Write-only in a non-leaf entry.
    let mem = tables(0x9000 | RWX | WB);
    mem.write_u64(PML4 + 8, PDPT | WRITE | EXECUTE).unwrap();
    assert!(nested_fault(ept().translate(&mem, GPA, AccessKind::Read)).is_ept_misconfig());
}

#[test]
fn memory_type_and_reserved_bit_misconfigurations() {
    for bad in [2, 3, 7] {
        let mem = tables(0x9000 | RWX | (bad << 3));
        assert!(nested_fault(ept().translate(&mem, GPA, AccessKind::Read)).is_ept_misconfig());
    }
    for good in [0, 1, 4, 5, 6] {
        let mem = tables(0x9000 | RWX | (good << 3));
        assert!(ept().translate(&mem, GPA, AccessKind::Read).is_ok());
    }
    // Non-leaf: bits 7:3 of a PML4E, 6:3 of a PDPTE or PDE are reserved.
    for (at, bit) in [(PML4 + 8, 3), (PML4 + 8, 7), (PDPT + 16, 6), (PD + 24, 3)] {
        let mem = tables(0x9000 | RWX | WB);
        let entry = mem.read_u64(at).unwrap();
        mem.write_u64(at, entry | (1 << bit)).unwrap();
        assert!(
            nested_fault(ept().translate(&mem, GPA, AccessKind::Read)).is_ept_misconfig(),
            "bit {bit} at {at:#x}"
        );
    }
    // Large pages: bits 20:12 (2 MiB) and 29:12 (1 GiB).
    let mem = tables(0);
    mem.write_u64(PD + 24, 0x40_0000 | RWX | WB | PAGE_SIZE | (1 << 12))
        .unwrap();
    assert!(nested_fault(ept().translate(&mem, GPA, AccessKind::Read)).is_ept_misconfig());
    mem.write_u64(PDPT + 16, 0x4000_0000 | RWX | WB | PAGE_SIZE | (1 << 29))
        .unwrap();
    assert!(nested_fault(ept().translate(&mem, GPA, AccessKind::Read)).is_ept_misconfig());
    // 1 GiB pages without the capability.
    mem.write_u64(PDPT + 16, 0x4000_0000 | RWX | WB | PAGE_SIZE)
        .unwrap();
    assert!(ept().translate(&mem, GPA, AccessKind::Read).is_ok());
    let caps = EptCaps {
        gbpages: false,
        ..EptCaps::all(46)
    };
    let no_1g = Ept::new(PML4, caps);
    assert!(nested_fault(no_1g.translate(&mem, GPA, AccessKind::Read)).is_ept_misconfig());
    assert_eq!(no_1g.page_sizes(), PageSizes::UP_TO_2M);
    // Address bits at and above MAXPHYADDR; ignored bits 63:52, 11:10 are not reserved.
    let mem = tables((1 << 46) | RWX | WB);
    assert!(nested_fault(ept().translate(&mem, GPA, AccessKind::Read)).is_ept_misconfig());
    let mem = tables(0x9000 | RWX | WB | (0xfff << 52) | (3 << 10));
    assert!(ept().translate(&mem, GPA, AccessKind::Read).is_ok());
}

#[test]
fn accessed_and_dirty_flags_only_when_enabled() {
    let mem = tables(0x9000 | RWX | WB);
    ept().translate(&mem, GPA, AccessKind::Write).unwrap();
    assert_eq!(mem.read_u64(PT + 32).unwrap(), 0x9000 | RWX | WB);
    let with_ad = Ept {
        accessed_dirty: true,
        ..ept()
    };
    with_ad.translate(&mem, GPA, AccessKind::Read).unwrap();
    for at in [PML4 + 8, PDPT + 16, PD + 24, PT + 32] {
        assert_eq!(mem.read_u64(at).unwrap() & (ACCESSED | DIRTY), ACCESSED);
    }
    with_ad.probe(&mem, GPA, AccessKind::Write).unwrap();
    assert_eq!(mem.read_u64(PT + 32).unwrap() & DIRTY, 0);
    with_ad.translate(&mem, GPA, AccessKind::Write).unwrap();
    assert_eq!(mem.read_u64(PT + 32).unwrap() & DIRTY, DIRTY);
    assert_eq!(mem.read_u64(PD + 24).unwrap() & DIRTY, 0);
    // A faulting walk sets nothing.
    let mem = tables(0x9000 | READ | WB);
    assert!(with_ad.translate(&mem, GPA, AccessKind::Write).is_err());
    assert_eq!(mem.read_u64(PML4 + 8).unwrap() & ACCESSED, 0);
}

#[test]
fn guest_physical_width_and_five_levels() {
    let mem = tables(0x9000 | RWX | WB);
    let fault = nested_fault(ept().translate(&mem, 1 << 48, AccessKind::Read));
    assert_eq!(
        (fault.cause, fault.level, fault.info),
        (NestedCause::NotPresent, 4, 1)
    );
    let five = Ept {
        root: PML5,
        five_level: true,
        ..ept()
    };
    mem.write_u64(PML5 + 2 * 8, PML4 | RWX).unwrap();
    let t = five
        .translate(&mem, (2 << 48) | GPA, AccessKind::Read)
        .unwrap();
    assert_eq!((t.address, t.refs), (0x9567, 5));
    assert_eq!(PagingFormat::levels(&five), 5);
}

#[test]
fn eptp_round_trip_and_validation() {
    let caps = EptCaps::all(46);
    let ept = Ept {
        root: 0x12_3000,
        five_level: false,
        accessed_dirty: true,
        caps,
    };
    assert_eq!(ept.eptp(), 0x12_3000 | 6 | (3 << 3) | (1 << 6));
    assert_eq!(Ept::from_eptp(ept.eptp(), caps), Ok(ept));
    let five = Ept {
        five_level: true,
        accessed_dirty: false,
        ..ept
    };
    assert_eq!(Ept::from_eptp(five.eptp(), caps), Ok(five));
    assert_eq!(
        Ept::from_eptp(0x1000 | (3 << 3), caps).unwrap().root,
        0x1000
    );
    assert_eq!(
        Ept::from_eptp(0x1000 | 1 | (3 << 3), caps),
        Err(EptpError::MemoryType(1))
    );
    assert_eq!(
        Ept::from_eptp(0x1000 | 6 | (5 << 3), caps),
        Err(EptpError::WalkLength(6))
    );
    let four_only = EptCaps {
        five_level: false,
        accessed_dirty: false,
        ..caps
    };
    assert_eq!(
        Ept::from_eptp(five.eptp(), four_only),
        Err(EptpError::WalkLength(5))
    );
    assert_eq!(
        Ept::from_eptp(ept.eptp(), four_only),
        Err(EptpError::AccessedDirty)
    );
    assert_eq!(
        Ept::from_eptp(0x1000 | 6 | (3 << 3) | (1 << 8), caps),
        Err(EptpError::Reserved(1 << 8))
    );
    assert_eq!(
        Ept::from_eptp((1 << 46) | 6 | (3 << 3), caps),
        Err(EptpError::Reserved(1 << 46))
    );
    assert!(alloc::format!("{}", EptpError::WalkLength(6)).contains("6-level walk"));
}

#[test]
fn capabilities_from_the_msr() {
    let caps = EptCaps::from_msr(1 | (1 << 7) | (1 << 17) | (1 << 21), 39);
    assert_eq!(caps, EptCaps::all(39));
    let none = EptCaps::from_msr(1 << 6, 60);
    assert!(!none.execute_only && !none.five_level && !none.gbpages && !none.accessed_dirty);
    assert_eq!(none.max_phys_bits, 52);
}

#[test]
fn flags_and_page_entries_for_the_builder() {
    let ept = ept();
    let ram = EptFlags::RAM;
    assert_eq!(ram.bits(), RWX | WB);
    assert_eq!(
        ept.page_entry(0x20_0000, PageSize::Size2M, ram | EptFlags::IGNORE_PAT),
        Some(0x20_0000 | RWX | WB | IGNORE_PAT | PAGE_SIZE)
    );
    let mut flags = EptFlags::READ.with_memory_type(MemoryType::WriteThrough);
    flags |= EptFlags::ACCESSED | EptFlags::DIRTY;
    assert_eq!(flags.bits(), READ | (4 << 3) | ACCESSED | DIRTY);
    assert_eq!(
        EptFlags::RAM
            .with_memory_type(MemoryType::Uncacheable)
            .bits(),
        RWX
    );
    assert_eq!(
        ept.page_entry(0x1000, PageSize::Size4K, EptFlags::WRITE),
        None
    );
    assert_eq!(
        ept.page_entry(0x1000, PageSize::Size4K, EptFlags::default()),
        None
    );
    assert_eq!(ept.page_entry(0x1000, PageSize::Size2M, ram), None);
    assert_eq!(ept.page_entry(1 << 46, PageSize::Size4K, ram), None);
    assert!(
        ept.page_entry(0, PageSize::Size4K, EptFlags::EXECUTE)
            .is_some()
    );
    let strict = Ept::new(
        0,
        EptCaps {
            execute_only: false,
            gbpages: false,
            ..EptCaps::all(46)
        },
    );
    assert_eq!(
        strict.page_entry(0, PageSize::Size4K, EptFlags::EXECUTE),
        None
    );
    assert_eq!(strict.page_entry(0, PageSize::Size1G, ram), None);
    assert_eq!(ept.table_entry(0x3000), 0x3000 | RWX);
    for (bits, ty) in [
        (0, MemoryType::Uncacheable),
        (1, MemoryType::WriteCombining),
        (4, MemoryType::WriteThrough),
        (5, MemoryType::WriteProtected),
        (6, MemoryType::WriteBack),
    ] {
        assert_eq!(MemoryType::from_bits(bits), Some(ty));
    }
    assert_eq!(MemoryType::from_bits(7), None);
    assert_eq!(PagingFormat::max_phys_bits(&ept), 46);
    assert_eq!(ept.kind(), NestedKind::Ept);
}
