//! NPT: the x86-64 format walked as user accesses, with NPF exit information.

use super::*;
use crate::BufferMemory;
use crate::nested::NestedFault;
use crate::x86::{ACCESSED, DIRTY, NO_EXECUTE, PRESENT, PteFlags, USER, WRITABLE};
use crate::{PageSize, PageSizes, PagingFormat};

const PML4: u64 = 0x1000;
const PDPT: u64 = 0x2000;
const PD: u64 = 0x3000;
const PT: u64 = 0x4000;
const LINK: u64 = PRESENT | WRITABLE | USER;
const GPA: u64 = (1 << 39) | (2 << 30) | (3 << 21) | (4 << 12) | 0x321;

fn tables(pte: u64) -> BufferMemory {
    let mem = BufferMemory::new(0, 0x10_0000).unwrap();
    mem.write_u64(PML4 + 8, PDPT | LINK).unwrap();
    mem.write_u64(PDPT + 16, PD | LINK).unwrap();
    mem.write_u64(PD + 24, PT | LINK).unwrap();
    mem.write_u64(PT + 32, pte).unwrap();
    mem
}

fn fault(result: Result<Translation, WalkError>) -> NestedFault {
    match result {
        Err(WalkError::Nested(fault)) => fault,
        other => panic!("expected a nested fault, got {other:?}"),
    }
}

const US: u64 = x86::PageFault::USER as u64;
const P: u64 = x86::PageFault::PRESENT as u64;
const W: u64 = x86::PageFault::WRITE as u64;

#[test]
fn translates_as_user_and_sets_flags() {
    let mem = tables(0x8000 | LINK);
    let npt = Npt::new(PML4);
    let t = npt.translate(&mem, GPA, AccessKind::Write).unwrap();
    assert_eq!((t.address, t.refs), (0x8321, 4));
    assert_eq!(
        mem.read_u64(PT + 32).unwrap(),
        0x8000 | LINK | ACCESSED | DIRTY
    );
    assert_eq!(mem.read_u64(PML4 + 8).unwrap(), PDPT | LINK | ACCESSED);
    let probed = npt.probe(&mem, GPA, AccessKind::Fetch).unwrap();
    assert!(probed.rights.execute && probed.rights.user);
}

#[test]
fn every_access_is_a_user_access() {
    // A supervisor page faults for every nested access.
    let mem = tables(0x8000 | PRESENT | WRITABLE);
    let npt = Npt::new(PML4);
    let f = fault(npt.translate(&mem, GPA, AccessKind::Read));
    assert_eq!(
        (f.cause, f.info, f.stage),
        (NestedCause::Denied, P | US, Stage::Direct)
    );
    assert_eq!(f.kind, NestedKind::Npt);
    assert!(!f.is_ept_misconfig());
    assert!(alloc::format!("{f}").starts_with("nested page fault at GPA"));
    // Read-only: writes fault, with RW in EXITINFO1.
    let mem = tables(0x8000 | PRESENT | USER);
    let f = fault(npt.translate(&mem, GPA, AccessKind::Write));
    assert_eq!(f.info, P | US | W);
    assert!(npt.translate(&mem, GPA, AccessKind::Read).is_ok());
}

#[test]
fn execute_disable_reserved_bits_and_width() {
    let mem = tables(0x8000 | LINK | NO_EXECUTE);
    let npt = Npt::new(PML4);
    let f = fault(npt.translate(&mem, GPA, AccessKind::Fetch));
    assert_eq!(f.info, P | US | u64::from(x86::PageFault::FETCH));
    let no_nxe = Npt { nxe: false, ..npt };
    let f = fault(no_nxe.translate(&mem, GPA, AccessKind::Read));
    assert_eq!(f.cause, NestedCause::Reserved);
    assert_eq!(f.info, P | US | u64::from(x86::PageFault::RESERVED));
    let mem = tables(0);
    let f = fault(no_nxe.translate(&mem, GPA, AccessKind::Fetch));
    assert_eq!((f.cause, f.info), (NestedCause::NotPresent, US));
    let f = fault(npt.translate(&mem, 1 << 48, AccessKind::Read));
    assert_eq!((f.cause, f.level, f.info), (NestedCause::NotPresent, 4, US));
    let narrow = Npt {
        max_phys_bits: 36,
        ..npt
    };
    let mem = tables((1 << 40) | LINK);
    assert_eq!(
        fault(narrow.translate(&mem, GPA, AccessKind::Read)).cause,
        NestedCause::Reserved
    );
    assert_eq!(NestedFormat::root(&Npt::new(0x8000_0000_0000_1fff)), 0x1000);
}

#[test]
fn format_for_the_builder() {
    let npt = Npt::new(0);
    assert_eq!(
        npt.page_entry(0x20_0000, PageSize::Size2M, PteFlags::WRITABLE),
        Some(0x20_0000 | LINK | x86::PAGE_SIZE)
    );
    assert_eq!(npt.table_entry(0x7000), 0x7000 | LINK);
    assert_eq!(npt.page_sizes(), PageSizes::ALL);
    let small = Npt {
        gbpages: false,
        five_level: true,
        max_phys_bits: 200,
        ..npt
    };
    assert_eq!(small.page_sizes(), PageSizes::UP_TO_2M);
    assert_eq!(PagingFormat::levels(&small), 5);
    assert_eq!(PagingFormat::max_phys_bits(&small), 52);
    assert_eq!(npt.guest_table_access(), AccessKind::Write);
    assert!(npt.rights(u64::MAX).user);
    assert_eq!((npt.accessed_flag(), npt.dirty_flag()), (ACCESSED, DIRTY));
}
