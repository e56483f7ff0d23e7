//! Each rule of x86-64 paging on hand-built tables.

use super::*;
use crate::BufferMemory;
use crate::memory::MemoryError;
use crate::walk::MAX_RETRIES;
use core::cell::Cell;

const PML5: u64 = 0x1000;
const PML4: u64 = 0x2000;
const PDPT: u64 = 0x3000;
const PD: u64 = 0x4000;
const PT: u64 = 0x5000;
const LINK: u64 = PRESENT | WRITABLE | USER;

/// Memory with PML4[1] → PDPT, PDPT[2] → PD, PD[3] → PT, PT[4] = `pte`.
fn tables(pte: u64) -> BufferMemory {
    let mem = BufferMemory::new(0, 0x10_0000).unwrap();
    mem.write_u64(PML4 + 8, PDPT | LINK).unwrap();
    mem.write_u64(PDPT + 2 * 8, PD | LINK).unwrap();
    mem.write_u64(PD + 3 * 8, PT | LINK).unwrap();
    mem.write_u64(PT + 4 * 8, pte).unwrap();
    mem
}

const VA: u64 = (1 << 39) | (2 << 30) | (3 << 21) | (4 << 12) | 0x123;

fn paging() -> X86Paging {
    X86Paging::new(PML4)
}

fn fault(result: Result<Translation, WalkError>) -> u32 {
    match result {
        Err(WalkError::PageFault(fault)) => fault.error_code,
        other => panic!("expected a page fault, got {other:?}"),
    }
}

const R_SUP: Access = Access::read(Privilege::Supervisor);
const W_SUP: Access = Access::write(Privilege::Supervisor);
const X_SUP: Access = Access::fetch(Privilege::Supervisor);
const R_USER: Access = Access::read(Privilege::User);
const W_USER: Access = Access::write(Privilege::User);
const X_USER: Access = Access::fetch(Privilege::User);
const R_IMPLICIT: Access = Access::read(Privilege::Implicit);
const W_IMPLICIT: Access = Access::write(Privilege::Implicit);

#[test]
fn translates_4k_page_with_offset_refs_and_rights() {
    let mem = tables(0x7_7000 | PRESENT | WRITABLE | USER);
    let t = paging().translate(&mem, VA, R_USER).unwrap();
    assert_eq!(t.address, 0x7_7123);
    assert_eq!(t.page_size, PageSize::Size4K);
    assert_eq!(t.refs, 4);
    assert_eq!(t.leaf, 0x7_7000 | PRESENT | WRITABLE | USER);
    assert_eq!(
        t.rights,
        Rights {
            read: true,
            write: true,
            execute: true,
            user: true
        }
    );
}

#[test]
fn translates_2m_and_1g_pages() {
    let mem = tables(0);
    mem.write_u64(PD + 3 * 8, 0x4060_0000 | PRESENT | PAGE_SIZE | LARGE_PAT)
        .unwrap();
    let t = paging().translate(&mem, VA, R_SUP).unwrap();
    assert_eq!(t.address, 0x4060_0000 | (VA & 0x1f_ffff));
    assert_eq!(t.page_size, PageSize::Size2M);
    assert_eq!(t.refs, 3);
    assert!(!t.rights.write && !t.rights.user);

    mem.write_u64(
        PDPT + 2 * 8,
        0x80_4000_0000 | PRESENT | PAGE_SIZE | NO_EXECUTE,
    )
    .unwrap();
    let t = paging().translate(&mem, VA, R_SUP).unwrap();
    assert_eq!(t.address, 0x80_4000_0000 | (VA & 0x3fff_ffff));
    assert_eq!(t.page_size, PageSize::Size1G);
    assert_eq!(t.refs, 2);
    assert!(!t.rights.execute);
}

#[test]
fn not_present_at_each_level_gives_p0_with_access_bits() {
    for level_addr in [PML4 + 8, PDPT + 16, PD + 24, PT + 32] {
        let mem = tables(0x7_7000 | LINK);
        mem.write_u64(level_addr, 0xffff_ffff_ffff_fffe).unwrap();
        assert_eq!(fault(paging().translate(&mem, VA, R_SUP)), 0);
        assert_eq!(
            fault(paging().translate(&mem, VA, W_USER)),
            PageFault::WRITE | PageFault::USER
        );
        assert_eq!(fault(paging().translate(&mem, VA, X_SUP)), PageFault::FETCH);
    }
}

#[test]
fn cr2_is_the_full_linear_address() {
    let mem = tables(0);
    let va = 0xffff_8000_0000_1234;
    assert_eq!(
        paging().translate(&mem, va, R_SUP),
        Err(WalkError::PageFault(PageFault {
            address: va,
            error_code: 0
        }))
    );
}

#[test]
fn read_only_pages_and_cr0_wp() {
    let mem = tables(0x7_7000 | PRESENT | USER);
    assert_eq!(
        fault(paging().translate(&mem, VA, W_USER)),
        PageFault::PRESENT | PageFault::WRITE | PageFault::USER
    );
    assert_eq!(
        fault(paging().translate(&mem, VA, W_SUP)),
        PageFault::PRESENT | PageFault::WRITE
    );
    let no_wp = X86Paging {
        wp: false,
        ..paging()
    };
    assert!(no_wp.translate(&mem, VA, W_SUP).is_ok());
    // WP never lets user mode write.
    assert!(no_wp.translate(&mem, VA, W_USER).is_err());
    // R/W clear at an upper level only.
    let mem = tables(0x7_7000 | LINK);
    mem.write_u64(PDPT + 16, PD | PRESENT | USER).unwrap();
    assert!(paging().translate(&mem, VA, W_USER).is_err());
    assert!(paging().translate(&mem, VA, R_USER).is_ok());
}

#[test]
fn user_supervisor_at_any_level() {
    let mem = tables(0x7_7000 | PRESENT | WRITABLE);
    assert_eq!(
        fault(paging().translate(&mem, VA, R_USER)),
        PageFault::PRESENT | PageFault::USER
    );
    assert!(paging().translate(&mem, VA, R_SUP).is_ok());
    let mem = tables(0x7_7000 | LINK);
    mem.write_u64(PML4 + 8, PDPT | PRESENT | WRITABLE).unwrap();
    assert!(paging().translate(&mem, VA, R_USER).is_err());
    assert!(!paging().translate(&mem, VA, R_SUP).unwrap().rights.user);
}

#[test]
fn execute_disable_needs_nxe_and_is_reserved_without_it() {
    let mem = tables(0x7_7000 | LINK | NO_EXECUTE);
    assert_eq!(
        fault(paging().translate(&mem, VA, X_SUP)),
        PageFault::PRESENT | PageFault::FETCH
    );
    assert_eq!(
        fault(paging().translate(&mem, VA, X_USER)),
        PageFault::PRESENT | PageFault::FETCH | PageFault::USER
    );
    assert!(paging().translate(&mem, VA, R_USER).is_ok());
    // XD at an upper level.
    let mem = tables(0x7_7000 | LINK);
    mem.write_u64(PD + 24, PT | LINK | NO_EXECUTE).unwrap();
    assert!(paging().translate(&mem, VA, X_SUP).is_err());
    // Without NXE, bit 63 is reserved, and fetch faults have no I/D bit.
    let no_nxe = paging().with_format(X86Format::new().with_nxe(false));
    assert_eq!(
        fault(no_nxe.translate(&mem, VA, X_SUP)),
        PageFault::PRESENT | PageFault::RESERVED
    );
    assert_eq!(
        fault(no_nxe.translate(&mem, VA, R_SUP)),
        PageFault::PRESENT | PageFault::RESERVED
    );
    let clean = tables(0);
    assert_eq!(fault(no_nxe.translate(&clean, VA, X_SUP)), 0);
    let smep_only = X86Paging {
        smep: true,
        ..no_nxe
    };
    assert_eq!(
        fault(smep_only.translate(&clean, VA, X_SUP)),
        PageFault::FETCH
    );
}

#[test]
fn smep_blocks_supervisor_fetches_from_user_pages() {
    let mem = tables(0x7_7000 | LINK);
    let smep = X86Paging {
        smep: true,
        ..paging()
    };
    assert_eq!(
        fault(smep.translate(&mem, VA, X_SUP)),
        PageFault::PRESENT | PageFault::FETCH
    );
    // An implicit "fetch" is checked as a supervisor fetch.
    assert!(
        smep.translate(&mem, VA, Access::fetch(Privilege::Implicit))
            .is_err()
    );
    assert!(smep.translate(&mem, VA, X_USER).is_ok());
    assert!(smep.translate(&mem, VA, R_SUP).is_ok());
    let supervisor_page = tables(0x7_7000 | PRESENT | WRITABLE);
    assert!(smep.translate(&supervisor_page, VA, X_SUP).is_ok());
}

#[test]
fn smap_with_rflags_ac_and_implicit_accesses() {
    let mem = tables(0x7_7000 | LINK);
    let smap = X86Paging {
        smap: true,
        ..paging()
    };
    assert_eq!(fault(smap.translate(&mem, VA, R_SUP)), PageFault::PRESENT);
    assert_eq!(
        fault(smap.translate(&mem, VA, W_SUP)),
        PageFault::PRESENT | PageFault::WRITE
    );
    let ac = X86Paging { ac: true, ..smap };
    assert!(ac.translate(&mem, VA, R_SUP).is_ok());
    assert!(ac.translate(&mem, VA, W_SUP).is_ok());
    // AC never overrides SMAP for implicit accesses.
    assert_eq!(
        fault(ac.translate(&mem, VA, R_IMPLICIT)),
        PageFault::PRESENT
    );
    assert_eq!(
        fault(ac.translate(&mem, VA, W_IMPLICIT)),
        PageFault::PRESENT | PageFault::WRITE
    );
    // SMAP does not restrict fetches, user accesses, or supervisor pages.
    assert!(smap.translate(&mem, VA, X_SUP).is_ok());
    assert!(smap.translate(&mem, VA, R_USER).is_ok());
    let supervisor_page = tables(0x7_7000 | PRESENT | WRITABLE);
    assert!(smap.translate(&supervisor_page, VA, R_IMPLICIT).is_ok());
    // With AC set, a read-only user page is still read-only under WP, but writable without.
    let read_only = tables(0x7_7000 | PRESENT | USER);
    assert!(ac.translate(&read_only, VA, W_SUP).is_err());
    assert!(
        X86Paging { wp: false, ..ac }
            .translate(&read_only, VA, W_SUP)
            .is_ok()
    );
    // Without SMAP, implicit accesses to user pages are allowed.
    assert!(paging().translate(&mem, VA, W_IMPLICIT).is_ok());
}

#[test]
fn reserved_bits() {
    let rsvd = PageFault::PRESENT | PageFault::RESERVED;
    let narrow = paging().with_max_phys_bits(40);
    // Address bits at and above MAXPHYADDR, at any level.
    let mem = tables((1 << 45) | PRESENT);
    assert_eq!(fault(narrow.translate(&mem, VA, R_SUP)), rsvd);
    assert!(paging().translate(&mem, VA, R_SUP).is_ok());
    let mem = tables(0x7_7000 | PRESENT);
    mem.write_u64(PML4 + 8, PDPT | LINK | (1 << 51)).unwrap();
    assert_eq!(fault(narrow.translate(&mem, VA, W_USER)), rsvd | 6);
    // Ignored bits 62:52 and 11:9 are not reserved.
    mem.write_u64(PML4 + 8, PDPT | LINK | (0x7ff << 52) | (7 << 9))
        .unwrap();
    assert!(narrow.translate(&mem, VA, R_SUP).is_ok());
    // PS in a PML4E.
    mem.write_u64(PML4 + 8, PDPT | LINK | PAGE_SIZE).unwrap();
    assert_eq!(fault(paging().translate(&mem, VA, R_SUP)), rsvd);
    // Large-page reserved bits: 20:13 of a 2 MiB entry, 29:13 of a 1 GiB entry.
    let mem = tables(0);
    mem.write_u64(PD + 24, PRESENT | PAGE_SIZE | (1 << 13))
        .unwrap();
    assert_eq!(fault(paging().translate(&mem, VA, R_SUP)), rsvd);
    mem.write_u64(PD + 24, PRESENT | PAGE_SIZE | (1 << 20))
        .unwrap();
    assert_eq!(fault(paging().translate(&mem, VA, R_SUP)), rsvd);
    mem.write_u64(PD + 24, PRESENT | PAGE_SIZE | LARGE_PAT | (1 << 21))
        .unwrap();
    assert!(paging().translate(&mem, VA, R_SUP).is_ok());
    mem.write_u64(PDPT + 16, PRESENT | PAGE_SIZE | (1 << 29))
        .unwrap();
    assert_eq!(fault(paging().translate(&mem, VA, R_SUP)), rsvd);
    mem.write_u64(PDPT + 16, PRESENT | PAGE_SIZE | LARGE_PAT | (1 << 30))
        .unwrap();
    assert!(paging().translate(&mem, VA, R_SUP).is_ok());
    // Without 1 GiB page support, PS in a PDPTE is reserved.
    assert_eq!(
        fault(paging().with_gbpages(false).translate(&mem, VA, R_SUP)),
        rsvd
    );
    // Bit 7 of a PTE is PAT, not reserved.
    let mem = tables(0x7_7000 | PRESENT | PAGE_SIZE);
    assert!(paging().translate(&mem, VA, R_SUP).is_ok());
}

#[test]
fn reserved_bits_ignored_in_not_present_entries_and_first_problem_wins() {
    // A not-present entry's other bits do not matter.
    let mem = tables(!PRESENT);
    assert_eq!(
        fault(paging().with_max_phys_bits(36).translate(&mem, VA, W_SUP)),
        2
    );
    // Not present below a supervisor-only upper level: P = 0 (no valid translation, rights
    // are not checked).
    let mem = tables(0);
    mem.write_u64(PML4 + 8, PDPT | PRESENT).unwrap();
    assert_eq!(fault(paging().translate(&mem, VA, R_USER)), PageFault::USER);
    // Reserved bit above a not-present entry: RSVD.
    mem.write_u64(PML4 + 8, PDPT | LINK | PAGE_SIZE).unwrap();
    assert_eq!(
        fault(paging().translate(&mem, VA, R_USER)),
        PageFault::PRESENT | PageFault::RESERVED | PageFault::USER
    );
}

#[test]
fn canonical_addresses_4_and_5_level() {
    let mem = tables(0x7_7000 | LINK);
    let four = paging();
    assert_eq!(
        four.translate(&mem, 0x0000_8000_0000_0000, R_SUP),
        Err(WalkError::NonCanonical(0x0000_8000_0000_0000))
    );
    assert!(four.is_canonical(0xffff_8000_0000_0000));
    assert!(!four.is_canonical(0xfeff_8000_0000_0000));
    let five = X86Paging::new(PML5).with_five_level(true);
    assert!(five.is_canonical(0x0000_8000_0000_0000));
    assert!(!five.is_canonical(0x0100_0000_0000_0000));
    assert!(five.is_canonical(0xff00_0000_0000_0000));
    assert_eq!(
        five.translate(&mem, 0x0100_0000_0000_0000, R_SUP),
        Err(WalkError::NonCanonical(0x0100_0000_0000_0000))
    );
}

#[test]
fn five_level_walk_and_ps_reserved_in_pml5() {
    let mem = tables(0x7_7000 | LINK);
    let five = X86Paging::new(PML5).with_five_level(true);
    let va = (3 << 48) | VA;
    mem.write_u64(PML5 + 3 * 8, PML4 | LINK).unwrap();
    let t = five.translate(&mem, va, R_USER).unwrap();
    assert_eq!((t.address, t.refs), (0x7_7123, 5));
    mem.write_u64(PML5 + 3 * 8, PML4 | LINK | PAGE_SIZE)
        .unwrap();
    assert_eq!(
        fault(five.translate(&mem, va, R_USER)),
        PageFault::PRESENT | PageFault::RESERVED | PageFault::USER
    );
}

fn entries(mem: &BufferMemory) -> [u64; 4] {
    [PML4 + 8, PDPT + 16, PD + 24, PT + 32].map(|at| mem.read_u64(at).unwrap())
}

#[test]
fn accessed_on_every_entry_dirty_on_the_leaf_for_writes() {
    let mem = tables(0x7_7000 | LINK);
    paging().translate(&mem, VA, R_SUP).unwrap();
    for entry in entries(&mem) {
        assert_eq!(entry & (ACCESSED | DIRTY), ACCESSED);
    }
    paging().translate(&mem, VA, W_SUP).unwrap();
    let [l4, l3, l2, l1] = entries(&mem);
    assert_eq!([l4, l3, l2].map(|e| e & DIRTY), [0; 3]);
    assert_eq!(l1 & DIRTY, DIRTY);
    // A 2 MiB leaf gets its dirty flag.
    let mem = tables(0);
    mem.write_u64(PD + 24, PRESENT | WRITABLE | PAGE_SIZE)
        .unwrap();
    paging().translate(&mem, VA, W_SUP).unwrap();
    assert_eq!(
        mem.read_u64(PD + 24).unwrap() & (ACCESSED | DIRTY),
        ACCESSED | DIRTY
    );
}

#[test]
fn no_flag_updates_on_faulting_walks_or_probes() {
    let mem = tables(0x7_7000 | PRESENT | USER);
    let before = entries(&mem);
    assert!(paging().translate(&mem, VA, W_USER).is_err());
    assert_eq!(entries(&mem), before);
    let mem = tables(0x7_7000 | LINK);
    mem.write_u64(PD + 24, PT | LINK | (1 << 51)).unwrap();
    assert!(
        paging()
            .with_max_phys_bits(48)
            .translate(&mem, VA, R_SUP)
            .is_err()
    );
    let mem = tables(0x7_7000 | LINK);
    let before = entries(&mem);
    let probed = paging().probe(&mem, VA, W_SUP).unwrap();
    assert_eq!(entries(&mem), before);
    assert_eq!(probed, paging().translate(&mem, VA, W_SUP).unwrap());
    assert_ne!(entries(&mem), before);
}

/// Memory that counts exchanges and can change an entry under the walker.
struct Racy<'a> {
    mem: &'a BufferMemory,
    exchanges: Cell<u32>,
    /// Flip an ignored bit of the leaf before every exchange this many times.
    interfere: Cell<u32>,
}

impl PhysMemory for Racy<'_> {
    fn read_u64(&self, addr: u64) -> Result<u64, MemoryError> {
        self.mem.read_u64(addr)
    }
    fn write_u64(&self, addr: u64, value: u64) -> Result<(), MemoryError> {
        self.mem.write_u64(addr, value)
    }
    fn compare_exchange_u64(
        &self,
        addr: u64,
        current: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, MemoryError> {
        self.exchanges.set(self.exchanges.get() + 1);
        if self.interfere.get() > 0 {
            self.interfere.set(self.interfere.get() - 1);
            let value = self.mem.read_u64(addr)?;
            self.mem.write_u64(addr, value ^ (1 << 9))?;
        }
        self.mem.compare_exchange_u64(addr, current, new)
    }
}

#[test]
fn preset_flags_need_no_update_and_changed_entries_restart_the_walk() {
    let mem = tables(0x7_7000 | LINK | ACCESSED | DIRTY);
    for at in [PML4 + 8, PDPT + 16, PD + 24] {
        let entry = mem.read_u64(at).unwrap();
        mem.write_u64(at, entry | ACCESSED).unwrap();
    }
    let racy = Racy {
        mem: &mem,
        exchanges: Cell::new(0),
        interfere: Cell::new(0),
    };
    paging().translate(&racy, VA, W_SUP).unwrap();
    assert_eq!(racy.exchanges.get(), 0);

    // Another writer changes the entry between read and update: the walk restarts and wins.
    let mem = tables(0x7_7000 | LINK);
    let racy = Racy {
        mem: &mem,
        exchanges: Cell::new(0),
        interfere: Cell::new(2),
    };
    let t = paging().translate(&racy, VA, R_SUP).unwrap();
    assert_eq!(t.refs, 12);
    assert!(entries(&mem).iter().all(|e| e & ACCESSED != 0));

    // It never stops changing: the walk gives up.
    let mem = tables(0x7_7000 | LINK);
    let racy = Racy {
        mem: &mem,
        exchanges: Cell::new(0),
        interfere: Cell::new(u32::MAX),
    };
    assert_eq!(
        paging().translate(&racy, VA, R_SUP),
        Err(WalkError::Contended)
    );
    assert_eq!(racy.exchanges.get(), MAX_RETRIES + 1);
}

#[test]
fn self_referencing_tables_terminate() {
    // PML4[511] points to the PML4 itself (a recursive mapping): the address with all indices
    // 511 maps the PML4 page.
    let mem = tables(0);
    mem.write_u64(PML4 + 511 * 8, PML4 | PRESENT | WRITABLE)
        .unwrap();
    let va = 0xffff_ffff_ffff_f008;
    let t = paging().translate(&mem, va, R_SUP).unwrap();
    assert_eq!(t.address, PML4 + 8);
    // The same entry is used at every level and got its accessed flag once, after a restart.
    assert_eq!(t.refs, 8);
    assert_eq!(
        mem.read_u64(PML4 + 511 * 8).unwrap(),
        PML4 | PRESENT | WRITABLE | ACCESSED
    );
}

#[test]
fn tables_outside_memory_are_errors() {
    let mem = tables(0);
    mem.write_u64(PD + 24, 0x40_0000_0000 | LINK).unwrap();
    assert_eq!(
        paging().translate(&mem, VA, R_SUP),
        Err(WalkError::Memory(MemoryError::OutOfRange(
            0x40_0000_0000 + 32
        )))
    );
    let far = X86Paging::new(0x7fff_0000);
    assert!(matches!(
        far.translate(&mem, VA, R_SUP),
        Err(WalkError::Memory(_))
    ));
}

#[test]
fn registers_root_and_builders() {
    let paging = X86Paging::from_registers(
        CR0_WP,
        0x8000_0000_1234_5fff,
        CR4_LA57 | CR4_SMEP | CR4_SMAP,
        EFER_NXE,
        RFLAGS_AC,
    );
    assert!(paging.wp && paging.format.five_level && paging.smep && paging.smap);
    assert!(paging.format.nxe && paging.ac && paging.format.gbpages);
    assert_eq!(paging.root(), 0x1234_5000);
    let none = X86Paging::from_registers(0, 0, 0, 0, 0);
    assert!(!none.wp && !none.format.five_level && !none.smep && !none.smap);
    assert!(!none.format.nxe && !none.ac);
    // The CPU's part of the format, added to the registers' state.
    let narrow = X86Paging::new(0x1_0000_2000).with_max_phys_bits(32);
    assert_eq!(narrow.root(), 0x2000);
    assert_eq!(narrow.format.max_phys_bits, 32);
    assert_eq!(
        X86Paging::new(0)
            .with_max_phys_bits(99)
            .format
            .max_phys_bits,
        52
    );
    assert_eq!(X86Paging::default(), X86Paging::new(0));
    assert_eq!(X86Paging::new(0).format, X86Format::default());
    assert!(!X86Paging::new(0).with_gbpages(false).format.gbpages);
    let five = X86Format::new().with_five_level(true);
    assert_eq!(paging.with_format(five).format, five);
    assert!(paging.is_canonical(0xff00_0000_0000_0000) && !five.is_canonical(1 << 56));
    assert_eq!(PagingFormat::levels(&X86Format::default()), 4);
    assert_eq!(PagingFormat::levels(&five), 5);
    assert_eq!(PagingFormat::max_phys_bits(&narrow.format), 32);
    assert_eq!(
        X86Format::new().with_gbpages(false).page_sizes(),
        PageSizes::UP_TO_2M
    );
}

#[test]
fn page_entries_for_the_builder() {
    let paging = X86Format::new();
    assert_eq!(
        paging.page_entry(
            0x20_0000,
            PageSize::Size2M,
            PteFlags::WRITABLE | PteFlags::PAT
        ),
        Some(0x20_0000 | PRESENT | WRITABLE | PAGE_SIZE | LARGE_PAT)
    );
    assert_eq!(
        paging.page_entry(
            0x1000,
            PageSize::Size4K,
            PteFlags::PAT | PteFlags::NO_EXECUTE
        ),
        Some(0x1000 | PRESENT | PAGE_SIZE | NO_EXECUTE)
    );
    assert_eq!(
        paging.page_entry(0x1000, PageSize::Size2M, PteFlags::EMPTY),
        None
    );
    assert_eq!(
        paging.page_entry(1 << 52, PageSize::Size4K, PteFlags::EMPTY),
        None
    );
    assert_eq!(
        paging
            .with_max_phys_bits(40)
            .page_entry(1 << 40, PageSize::Size4K, PteFlags::EMPTY),
        None
    );
    let no_nxe = paging.with_nxe(false);
    assert_eq!(
        no_nxe.page_entry(0, PageSize::Size4K, PteFlags::NO_EXECUTE),
        None
    );
    assert_eq!(paging.table_entry(0x5000 | 0xfff), 0x5000 | LINK);
    let mut flags = PteFlags::USER;
    flags |= PteFlags::GLOBAL;
    assert!(flags.contains(PteFlags::USER) && !flags.contains(PteFlags::WRITABLE));
    assert_eq!(flags.bits(), USER | GLOBAL);
    assert_eq!(
        (PteFlags::ACCESSED | PteFlags::DIRTY | PteFlags::WRITE_THROUGH | PteFlags::CACHE_DISABLE)
            .bits(),
        ACCESSED | DIRTY | WRITE_THROUGH | CACHE_DISABLE
    );
    assert_eq!(
        alloc::format!(
            "{}",
            PageFault {
                address: 0x10,
                error_code: 0x1f
            }
        ),
        "#PF at 0x10, error code 0x1f"
    );
}

#[test]
fn a_prepared_walker_answers_as_the_state_it_was_prepared_for() {
    let mem = tables(0x7_7000 | PRESENT | USER);
    for state in [
        paging(),
        paging().with_max_phys_bits(36),
        X86Paging::from_registers(0, PML4, CR4_SMAP, 0, 0),
    ] {
        let walker = state.walker();
        assert_eq!(*walker.paging(), state);
        for addr in [VA, VA + 0x1000, 1 << 47, VA | 0xffff << 48] {
            for access in [R_SUP, W_SUP, X_SUP, R_USER, W_USER, X_USER, R_IMPLICIT] {
                assert_eq!(
                    walker.probe(&mem, addr, access),
                    state.probe(&mem, addr, access)
                );
                let copy = mem.clone();
                assert_eq!(
                    walker.translate(&mem, addr, access),
                    state.translate(&copy, addr, access)
                );
                assert_eq!(entries(&mem), entries(&copy), "the same flag updates");
            }
        }
    }
    // A table outside memory is a memory error through the prepared walker too.
    let far = X86Paging::new(0x20_0000).walker();
    assert_eq!(
        far.probe(&mem, VA, R_SUP),
        Err(WalkError::Memory(MemoryError::OutOfRange(0x20_0008)))
    );
}
