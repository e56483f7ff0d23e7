//! The two-dimensional walk: reference counts, fault attribution and flag updates.

use super::*;
use crate::BufferMemory;
use crate::builder::{BumpAllocator, TableBuilder};
use crate::ept::{self, Ept, EptCaps, EptFlags};
use crate::memory::MemoryError;
use crate::npt::{EXITINFO1_FINAL, EXITINFO1_GUEST_TABLE, Npt};
use crate::size::{PageSize, PageSizes};
use crate::x86::{self, PteFlags, X86Format};

const GVA_BASE: u64 = 0xffff_8000_0000_0000;
const MIB: u64 = 1 << 20;

/// Guest tables (at GPA 16 MiB) mapping GVA_BASE.. to GPA 0.., and EPT and NPT tables (at HPA
/// 20 and 24 MiB) mapping GPA 0.. to HPA 0.., with the given page sizes.
struct Setup {
    mem: BufferMemory,
    guest: X86Paging,
    ept: Ept,
    npt: Npt,
}

fn only(size: PageSize) -> PageSizes {
    PageSizes::of(&[size])
}

fn span(size: PageSize) -> u64 {
    if size == PageSize::Size1G {
        1 << 30
    } else {
        32 * MIB
    }
}

fn setup(guest_size: PageSize, nested_size: PageSize, five_level: bool) -> Setup {
    let mem = BufferMemory::new(0, 32 * MIB).unwrap();
    let guest_format = X86Format::new().with_five_level(five_level);
    let mut guest = TableBuilder::new(
        guest_format,
        &mem,
        BumpAllocator::new(16 * MIB, 20 * MIB),
        only(guest_size),
    )
    .unwrap();
    guest
        .map(GVA_BASE, 0, span(guest_size), PteFlags::WRITABLE)
        .unwrap();
    let ept_format = Ept {
        five_level,
        ..Ept::new(0, EptCaps::all(46))
    };
    let mut ept = TableBuilder::new(
        ept_format,
        &mem,
        BumpAllocator::new(20 * MIB, 24 * MIB),
        only(nested_size),
    )
    .unwrap();
    ept.identity_map(0, span(nested_size), EptFlags::RAM)
        .unwrap();
    let npt_format = Npt {
        five_level,
        ..Npt::new(0)
    };
    let mut npt = TableBuilder::new(
        npt_format,
        &mem,
        BumpAllocator::new(24 * MIB, 28 * MIB),
        only(nested_size),
    )
    .unwrap();
    npt.identity_map(0, span(nested_size), PteFlags::WRITABLE)
        .unwrap();
    Setup {
        guest: X86Paging::new(guest.root()).with_format(guest_format),
        ept: Ept {
            root: ept.root(),
            ..ept_format
        },
        npt: Npt {
            ncr3: npt.root(),
            ..npt_format
        },
        mem,
    }
}

const READ: Access = Access::read(Privilege::Supervisor);
const WRITE: Access = Access::write(Privilege::Supervisor);

#[test]
fn memory_references_per_page_size() {
    use PageSize::*;
    for (guest, nested, five, refs) in [
        (Size4K, Size4K, false, 24),
        (Size2M, Size4K, false, 19),
        (Size4K, Size2M, false, 19),
        (Size2M, Size2M, false, 15),
        (Size1G, Size1G, false, 8),
        (Size1G, Size4K, false, 14),
        (Size4K, Size4K, true, 35),
    ] {
        let s = setup(guest, nested, five);
        let gva = GVA_BASE + 0x12_3456;
        for t in [
            probe(&s.guest, &s.ept, &s.mem, gva, READ).unwrap(),
            probe(&s.guest, &s.npt, &s.mem, gva, READ).unwrap(),
        ] {
            assert_eq!((t.gpa, t.hpa), (0x12_3456, 0x12_3456));
            assert_eq!(t.refs, refs, "{guest:?} on {nested:?}, five-level {five}");
            assert_eq!(t.refs, t.guest.refs + t.host.refs);
            assert_eq!((t.guest.page_size, t.host.page_size), (guest, nested));
        }
        // The native walk of the same guest tables (GPA = HPA here).
        let native = s.guest.probe(&s.mem, gva, READ).unwrap();
        assert_eq!(native.address, 0x12_3456);
        assert_eq!(
            native.refs,
            u32::from(PagingFormat::levels(&s.guest.format)) + 1 - u32::from(guest.level())
        );
    }
}

#[test]
fn flag_updates_cost_references_once() {
    let s = setup(PageSize::Size4K, PageSize::Size4K, false);
    let gva = GVA_BASE + 0x5000;
    // First write with EPT flags disabled: every guest entry needs its accessed flag (the PTE
    // its dirty flag too), each update a fresh nested write translation of 4 references.
    let first = translate(&s.guest, &s.ept, &s.mem, gva, WRITE).unwrap();
    assert_eq!(first.refs, 24 + 4 * 4);
    let second = translate(&s.guest, &s.ept, &s.mem, gva, WRITE).unwrap();
    assert_eq!(second.refs, 24);
    assert_eq!(
        second.guest.leaf & (x86::ACCESSED | x86::DIRTY),
        x86::ACCESSED | x86::DIRTY
    );
}

fn nested_fault(result: Result<NestedTranslation, WalkError>) -> NestedFault {
    match result {
        Err(WalkError::Nested(fault)) => fault,
        other => panic!("expected a nested fault, got {other:?}"),
    }
}

/// Replaces the EPT leaf for GPA page `gpa` (4 KiB nested pages) with `entry`.
fn set_ept_leaf(s: &Setup, gpa: u64, entry: u64) {
    let at = s
        .ept
        .probe(&s.mem, gpa, AccessKind::Read)
        .map(|_| ())
        .map_err(|_| ())
        .and_then(|()| find_leaf(&s.mem, s.ept.root, gpa, 4));
    s.mem.write_u64(at.unwrap(), entry).unwrap();
}

/// The address of the level-1 entry for `addr` in 4-level tables rooted at `root`.
fn find_leaf(mem: &BufferMemory, root: u64, addr: u64, levels: u32) -> Result<u64, ()> {
    let mut table = root;
    for level in (2..=levels).rev() {
        let index = (addr >> (12 + 9 * (level - 1))) & 511;
        table = mem.read_u64(table + index * 8).map_err(|_| ())? & 0x000f_ffff_ffff_f000;
    }
    Ok(table + ((addr >> 12) & 511) * 8)
}

#[test]
fn guest_page_faults_pass_through() {
    let s = setup(PageSize::Size4K, PageSize::Size4K, false);
    let unmapped = GVA_BASE + 64 * MIB;
    assert_eq!(
        translate(&s.guest, &s.ept, &s.mem, unmapped, READ),
        Err(WalkError::PageFault(x86::PageFault {
            address: unmapped,
            error_code: 0
        }))
    );
    assert_eq!(
        translate(&s.guest, &s.npt, &s.mem, 0x8000_0000_0000, READ),
        Err(WalkError::NonCanonical(0x8000_0000_0000))
    );
    // Read-only guest page, user write.
    let gva = GVA_BASE + 0x3000;
    let pte = find_leaf(&s.mem, s.guest.root(), gva, 4).unwrap();
    let entry = s.mem.read_u64(pte).unwrap();
    s.mem
        .write_u64(pte, (entry & !x86::WRITABLE) | x86::USER)
        .unwrap();
    let err = translate(
        &s.guest,
        &s.ept,
        &s.mem,
        gva,
        Access::write(Privilege::User),
    );
    assert!(matches!(err, Err(WalkError::PageFault(f)) if f.error_code == 0b111));
}

#[test]
fn ept_violation_on_a_guest_table() {
    let s = setup(PageSize::Size4K, PageSize::Size4K, false);
    let gva = GVA_BASE + 0x7000;
    let pml4_gpa = s.guest.root();
    set_ept_leaf(&s, pml4_gpa, 0);
    let fault = nested_fault(translate(&s.guest, &s.ept, &s.mem, gva, READ));
    assert_eq!(fault.stage, Stage::GuestTable { level: 4 });
    assert_eq!(fault.gpa, pml4_gpa + 256 * 8);
    assert_eq!(fault.linear, Some(gva));
    assert_eq!(fault.access, AccessKind::Read);
    // Read access, rights 0, linear address valid, not the final access.
    assert_eq!(fault.info, 1 | (1 << 7));
}

#[test]
fn read_only_guest_tables_without_and_with_ept_accessed_dirty() {
    let s = setup(PageSize::Size4K, PageSize::Size4K, false);
    let gva = GVA_BASE + 0x7000;
    let pml4_gpa = s.guest.root();
    set_ept_leaf(&s, pml4_gpa, pml4_gpa | ept::READ | (6 << 3));
    // EPT A/D disabled: the walk reads the table, then writing its accessed flag faults.
    let fault = nested_fault(translate(&s.guest, &s.ept, &s.mem, gva, READ));
    assert_eq!(fault.stage, Stage::GuestTable { level: 4 });
    assert_eq!(
        (fault.access, fault.cause),
        (AccessKind::Write, NestedCause::Denied)
    );
    assert_eq!(fault.info, 2 | (1 << 3) | (1 << 7));
    // Once the flag is set, reads work.
    let at = pml4_gpa + 256 * 8;
    let entry = s.mem.read_u64(at).unwrap();
    s.mem.write_u64(at, entry | x86::ACCESSED).unwrap();
    assert!(translate(&s.guest, &s.ept, &s.mem, gva, READ).is_ok());
    // EPT A/D enabled: every guest-table access is a write.
    let with_ad = Ept {
        accessed_dirty: true,
        ..s.ept
    };
    let fault = nested_fault(translate(&s.guest, &with_ad, &s.mem, gva, READ));
    assert_eq!(
        (fault.access, fault.stage),
        (AccessKind::Write, Stage::GuestTable { level: 4 })
    );
    // And the EPT dirty flag is set for guest-table pages.
    set_ept_leaf(&s, pml4_gpa, pml4_gpa | ept::READ | ept::WRITE | (6 << 3));
    translate(&s.guest, &with_ad, &s.mem, gva, READ).unwrap();
    let leaf = s
        .mem
        .read_u64(find_leaf(&s.mem, s.ept.root, pml4_gpa, 4).unwrap())
        .unwrap();
    assert_eq!(
        leaf & (ept::ACCESSED | ept::DIRTY),
        ept::ACCESSED | ept::DIRTY
    );
    let data = s
        .mem
        .read_u64(find_leaf(&s.mem, s.ept.root, 0x7000, 4).unwrap())
        .unwrap();
    assert_eq!(data & (ept::ACCESSED | ept::DIRTY), ept::ACCESSED);
}

#[test]
fn violation_on_the_final_access() {
    let s = setup(PageSize::Size4K, PageSize::Size4K, false);
    let gva = GVA_BASE + 0x9000;
    set_ept_leaf(&s, 0x9000, 0x9000 | ept::READ | (6 << 3));
    assert!(translate(&s.guest, &s.ept, &s.mem, gva, READ).is_ok());
    let fault = nested_fault(translate(&s.guest, &s.ept, &s.mem, gva + 8, WRITE));
    assert_eq!(
        (fault.stage, fault.gpa, fault.linear),
        (Stage::Final, 0x9008, Some(gva + 8))
    );
    assert_eq!(fault.info, 2 | (1 << 3) | (1 << 7) | (1 << 8));
    // The guest translation succeeded first: its dirty flag is set.
    let pte = s
        .mem
        .read_u64(find_leaf(&s.mem, s.guest.root(), gva, 4).unwrap())
        .unwrap();
    assert_eq!(pte & x86::DIRTY, x86::DIRTY);
    let fetch = nested_fault(translate(
        &s.guest,
        &s.ept,
        &s.mem,
        gva,
        Access::fetch(Privilege::Supervisor),
    ));
    assert_eq!(fetch.info, 4 | (1 << 3) | (1 << 7) | (1 << 8));
}

#[test]
fn npt_faults_on_guest_tables_and_final_accesses() {
    let s = setup(PageSize::Size4K, PageSize::Size4K, false);
    let gva = GVA_BASE + 0x9000;
    let pml4_gpa = s.guest.root();
    // The guest PML4 page is read-only for the nested walk: guest-table accesses are writes.
    let at = find_leaf(&s.mem, s.npt.ncr3, pml4_gpa, 4).unwrap();
    let entry = s.mem.read_u64(at).unwrap();
    s.mem.write_u64(at, entry & !x86::WRITABLE).unwrap();
    let fault = nested_fault(translate(&s.guest, &s.npt, &s.mem, gva, READ));
    assert_eq!(fault.kind, NestedKind::Npt);
    assert_eq!(fault.info, EXITINFO1_GUEST_TABLE | 0b111);
    s.mem.write_u64(at, entry).unwrap();
    // The data page is not executable.
    let at = find_leaf(&s.mem, s.npt.ncr3, 0x9000, 4).unwrap();
    let entry = s.mem.read_u64(at).unwrap();
    s.mem.write_u64(at, entry | x86::NO_EXECUTE).unwrap();
    let fetch = Access::fetch(Privilege::Supervisor);
    let fault = nested_fault(translate(&s.guest, &s.npt, &s.mem, gva, fetch));
    assert_eq!(fault.stage, Stage::Final);
    assert_eq!(fault.info, EXITINFO1_FINAL | 0b1_0101);
}

#[test]
fn host_addresses_outside_memory() {
    let s = setup(PageSize::Size4K, PageSize::Size4K, false);
    let gva = GVA_BASE + 0x9000;
    let pml4_gpa = s.guest.root();
    set_ept_leaf(&s, pml4_gpa, (1 << 40) | 7 | (6 << 3));
    assert_eq!(
        translate(&s.guest, &s.ept, &s.mem, gva, READ),
        Err(WalkError::Memory(MemoryError::OutOfRange(
            (1 << 40) + 256 * 8
        )))
    );
    let far = Ept {
        root: 1 << 40,
        ..s.ept
    };
    assert!(matches!(
        translate_gpa(&far, &s.mem, 0, AccessKind::Read),
        Err(WalkError::Memory(_))
    ));
}

#[test]
fn gpa_translation_alone() {
    let s = setup(PageSize::Size4K, PageSize::Size2M, false);
    let t = translate_gpa(&s.ept, &s.mem, 0x34_5678, AccessKind::Write).unwrap();
    assert_eq!(
        (t.address, t.page_size, t.refs),
        (0x34_5678, PageSize::Size2M, 3)
    );
    let t = probe_gpa(&s.npt, &s.mem, 0x34_5678, AccessKind::Fetch).unwrap();
    assert_eq!(t.address, 0x34_5678);
    let fault = match translate_gpa(&s.npt, &s.mem, 1 << 35, AccessKind::Read) {
        Err(WalkError::Nested(fault)) => fault,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (fault.stage, fault.linear, fault.info),
        (Stage::Direct, None, 4)
    );
}

/// Memory whose exchanges always find a changed value.
struct Hostile<'a>(&'a BufferMemory);

impl PhysMemory for Hostile<'_> {
    fn read_u64(&self, addr: u64) -> Result<u64, MemoryError> {
        self.0.read_u64(addr)
    }
    fn write_u64(&self, addr: u64, value: u64) -> Result<(), MemoryError> {
        self.0.write_u64(addr, value)
    }
    fn compare_exchange_u64(
        &self,
        addr: u64,
        _current: u64,
        _new: u64,
    ) -> Result<Result<u64, u64>, MemoryError> {
        self.0.read_u64(addr).map(Err)
    }
}

#[test]
fn contention_is_reported() {
    let s = setup(PageSize::Size4K, PageSize::Size4K, false);
    let hostile = Hostile(&s.mem);
    assert_eq!(
        translate(&s.guest, &s.npt, &hostile, GVA_BASE, READ),
        Err(WalkError::Contended)
    );
    let with_ad = Ept {
        accessed_dirty: true,
        ..s.ept
    };
    assert_eq!(
        translate_gpa(&with_ad, &hostile, 0, AccessKind::Read),
        Err(WalkError::Contended)
    );
    // Guest flags contended while nested flags are already set.
    translate(&s.guest, &s.npt, &s.mem, GVA_BASE + 0x1000, READ).unwrap();
    assert_eq!(
        translate(&s.guest, &s.ept, &hostile, GVA_BASE, READ),
        Err(WalkError::Contended)
    );
}
