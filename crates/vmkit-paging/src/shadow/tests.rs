use super::*;
use crate::x86::{ACCESSED, GLOBAL, PAGE_SIZE, PRESENT};
use crate::{AccessKind, BufferMemory, Privilege};

/// Host-physical base of guest RAM.
const HOST: u64 = 0x1_0000_0000;
const RWU: u64 = PRESENT | WRITABLE | USER;
const PML4: u64 = 0x1000;
const PDPT: u64 = 0x2000;
const PD: u64 = 0x3000;
const PT: u64 = 0x4000;
/// GVA 0x40_0000 + i * 4 KiB maps GPA 0x10_0000 + i * 4 KiB through `PT`, i < 15;
/// GVA 0x40_f000 maps `PT` itself; GVA 0x60_0000 is a 2 MiB page at GPA 0x20_0000.
const SMALL: u64 = 0x40_0000;
const SELF_MAP: u64 = 0x40_f000;
const LARGE: u64 = 0x60_0000;

const READ: Access = Access::read(Privilege::User);
const WRITE: Access = Access::write(Privilege::User);

struct Guest {
    mem: BufferMemory,
    map: GpaRanges,
    mmu: ShadowMmu,
}

fn guest(policy: SyncPolicy) -> Guest {
    let mem = BufferMemory::new(0, 4 << 20).unwrap();
    let set = |addr: u64, value: u64| mem.write_u64(addr, value).unwrap();
    set(PML4, PDPT | RWU);
    set(PDPT, PD | RWU);
    set(PD + 2 * 8, PT | RWU);
    set(PD + 3 * 8, 0x20_0000 | RWU | PAGE_SIZE);
    for i in 0..15 {
        set(PT + i * 8, (0x10_0000 + i * 4096) | RWU);
    }
    set(PT + 15 * 8, PT | RWU);
    let map = GpaRanges::new().with(0, 4 << 20, HOST).unwrap();
    let config = ShadowConfig {
        policy,
        ..ShadowConfig::default()
    };
    let mmu = ShadowMmu::new(X86Paging::new(PML4), config);
    Guest { mem, map, mmu }
}

impl Guest {
    fn go(&mut self, gva: u64, access: Access) -> Result<ShadowTranslation, ShadowError> {
        self.mmu.translate(&self.mem, &self.map, gva, access)
    }

    fn word(&self, addr: u64) -> u64 {
        self.mem.read_u64(addr).unwrap()
    }
}

#[test]
fn fill_sets_accessed_then_hits_and_the_first_write_sets_dirty() {
    let mut g = guest(SyncPolicy::Resync);
    let t = g.go(SMALL + 0x1234, READ).unwrap();
    assert!(t.filled);
    assert_eq!((t.gpa, t.hpa), (0x10_1234, HOST + 0x10_1234));
    assert_eq!(t.page_size, PageSize::Size4K);
    for addr in [PML4, PDPT, PD + 16, PT + 8] {
        assert_ne!(g.word(addr) & ACCESSED, 0, "{addr:#x}");
    }
    assert_eq!(g.word(PT + 8) & DIRTY, 0);
    let hit = g.go(SMALL + 0x1238, READ).unwrap();
    assert!(!hit.filled);
    assert_eq!((hit.hpa, hit.refs), (HOST + 0x10_1238, 4));
    // The page is clean: the first write faults, sets D, and refills.
    let write = g.go(SMALL + 0x1000, WRITE).unwrap();
    assert!(write.filled);
    assert_ne!(g.word(PT + 8) & DIRTY, 0);
    assert!(!g.go(SMALL + 0x1008, WRITE).unwrap().filled);
    let stats = g.mmu.stats();
    assert_eq!(
        (stats.hits, stats.shadow_faults, stats.translations),
        (2, 2, 4)
    );
    assert_eq!(stats.pages_in_use, 4);
}

#[test]
fn guest_faults_carry_the_walkers_error_code_and_no_backing_is_apart() {
    let mut g = guest(SyncPolicy::Resync);
    // Not present.
    let walker = X86Paging::new(PML4);
    for (gva, access) in [
        (0x80_0000, READ),
        (SELF_MAP + 0x1000, Access::fetch(Privilege::User)),
        (1 << 47, READ),
    ] {
        let expected = walker.translate(&g.mem, gva, access).unwrap_err();
        let got = g.go(gva, access).unwrap_err();
        match expected {
            WalkError::PageFault(fault) => assert_eq!(got, ShadowError::GuestPageFault(fault)),
            other => assert_eq!(got, ShadowError::Walk(other)),
        }
    }
    // A read-only user page: the user write faults with P|W|U after a read filled the shadow.
    g.mem
        .write_u64(PT + 2 * 8, 0x10_2000 | PRESENT | USER)
        .unwrap();
    g.go(SMALL + 0x2000, READ).unwrap();
    assert_eq!(
        g.go(SMALL + 0x2000, WRITE),
        Err(ShadowError::GuestPageFault(PageFault {
            address: SMALL + 0x2000,
            error_code: PageFault::PRESENT | PageFault::WRITE | PageFault::USER,
        }))
    );
    // CR0.WP clear: a supervisor write to it is allowed.
    g.mmu.write_cr0(0);
    assert!(
        g.go(SMALL + 0x2000, Access::write(Privilege::Supervisor))
            .is_ok()
    );
    // A GPA beyond RAM.
    g.mem.write_u64(PT + 3 * 8, 0x50_0000 | RWU).unwrap();
    assert_eq!(
        g.go(SMALL + 0x3010, READ),
        Err(ShadowError::NoBacking {
            gva: SMALL + 0x3010,
            gpa: 0x50_0010
        })
    );
    let stats = g.mmu.stats();
    assert_eq!((stats.guest_faults, stats.no_backing), (3, 1));
}

#[test]
fn a_guest_table_write_faults_and_invalidates_exactly_the_derived_entry() {
    let mut g = guest(SyncPolicy::Resync);
    g.go(SMALL, READ).unwrap();
    g.go(SMALL + 0x1000, READ).unwrap();
    // The guest's store through its self-map is a write to its page table.
    assert_eq!(
        g.go(SELF_MAP + 8, WRITE),
        Err(ShadowError::PageTableWrite {
            gva: SELF_MAP + 8,
            gpa: PT + 8
        })
    );
    assert_eq!(g.mmu.stats().write_protect_faults, 1);
    // The VMM emulates it: entry 1 now maps another page.
    let zaps = g.mmu.stats().zaps;
    g.mmu
        .write_guest(&g.mem, PT + 8, 0x30_0000 | RWU | ACCESSED)
        .unwrap();
    assert_eq!(g.mmu.stats().zaps, zaps + 1);
    assert!(!g.go(SMALL, READ).unwrap().filled, "entry 0 untouched");
    let moved = g.go(SMALL + 0x1000, READ).unwrap();
    assert!(moved.filled);
    assert_eq!(moved.gpa, 0x30_0000);
    // Reads of the table through the self-map are fine, and stay read-only.
    assert!(g.go(SELF_MAP, READ).is_ok());
    assert!(matches!(
        g.go(SELF_MAP, WRITE),
        Err(ShadowError::PageTableWrite { .. })
    ));
}

#[test]
fn one_table_under_two_roles_has_two_shadows() {
    let mut g = guest(SyncPolicy::Resync);
    // PD entry 4 links the same PT without U/S: another access role.
    g.mem
        .write_u64(PD + 4 * 8, PT | PRESENT | WRITABLE)
        .unwrap();
    g.go(SMALL, READ).unwrap();
    g.go(0x80_0000, Access::read(Privilege::Supervisor))
        .unwrap();
    let mut roles = g.mmu.roles_of(PT >> 12);
    roles.sort();
    assert_eq!(roles.len(), 2);
    assert_eq!(roles[0].access | access::USER, roles[1].access);
    // The supervisor-only path denies user reads though the other allows them.
    assert!(matches!(
        g.go(0x80_0000, READ),
        Err(ShadowError::GuestPageFault(_))
    ));
    // A mode bit is part of the role too.
    g.mmu.write_cr4(CR4_SMEP);
    g.go(SMALL, READ).unwrap();
    assert_eq!(g.mmu.roles_of(PT >> 12).len(), 3);
    assert!(g.mmu.roles_of(PT >> 12).iter().any(|role| role.smep));
}

#[test]
fn large_pages_map_whole_unless_they_hold_a_guest_table() {
    let mut g = guest(SyncPolicy::Resync);
    let t = g.go(LARGE + 0x1_2345, WRITE).unwrap();
    assert_eq!((t.gpa, t.page_size), (0x21_2345, PageSize::Size2M));
    let hit = g.go(LARGE + 0x1f_0000, WRITE).unwrap();
    assert_eq!(
        (hit.filled, hit.refs, hit.hpa),
        (false, 3, HOST + 0x3f_0000)
    );
    // The guest moves its PT into the large page: a table there splits the shadow.
    g.mmu
        .write_guest(&g.mem, PD + 2 * 8, 0x20_5000 | RWU)
        .unwrap();
    g.mem.write_u64(0x20_5000, 0x10_0000 | RWU).unwrap();
    g.go(SMALL, READ).unwrap();
    let split = g.go(LARGE + 0x1f_0000, WRITE).unwrap();
    assert!(split.filled);
    assert_eq!(split.page_size, PageSize::Size2M, "the guest's page size");
    assert!(!g.go(LARGE + 0x1f_0008, WRITE).unwrap().filled);
    assert_eq!(g.go(LARGE + 0x1f_0008, READ).unwrap().refs, 4);
    assert!(matches!(
        g.go(LARGE + 0x5000, WRITE),
        Err(ShadowError::PageTableWrite { gpa: 0x20_5000, .. })
    ));
}

#[test]
fn a_clean_large_page_split_by_a_table_faults_once_for_dirty() {
    let mut g = guest(SyncPolicy::Resync);
    g.mmu
        .write_guest(&g.mem, PD + 2 * 8, 0x20_5000 | RWU)
        .unwrap();
    g.mem.write_u64(0x20_5000, 0x10_0000 | RWU).unwrap();
    g.go(SMALL, READ).unwrap();
    assert!(g.go(LARGE + 0x7000, READ).unwrap().filled);
    assert_eq!(g.word(PD + 3 * 8) & DIRTY, 0);
    assert!(g.go(LARGE + 0x7000, WRITE).unwrap().filled);
    assert_ne!(g.word(PD + 3 * 8) & DIRTY, 0);
    assert!(!g.go(LARGE + 0x7000, WRITE).unwrap().filled);
}

#[test]
fn unsync_tables_are_written_freely_and_resynced_at_invlpg_and_cr3() {
    let mut g = guest(SyncPolicy::Unsync);
    g.go(SMALL + 0x1000, READ).unwrap();
    // The store to the PT unsyncs it instead of faulting to the VMM.
    let store = g.go(SELF_MAP + 8, WRITE).unwrap();
    assert!(g.mmu.is_unsync(PT >> 12));
    assert_eq!(g.mmu.stats().unsyncs, 1);
    assert_eq!(store.hpa, HOST + PT + 8);
    // The guest rewrites entry 1 natively: the old translation may stay until INVLPG.
    g.mem.write_u64(PT + 8, 0x30_0000 | RWU).unwrap();
    assert_eq!(g.go(SMALL + 0x1000, READ).unwrap().gpa, 0x10_1000);
    g.mmu.invlpg(SMALL + 0x1000);
    let fresh = g.go(SMALL + 0x1000, READ).unwrap();
    assert_eq!((fresh.gpa, fresh.filled), (0x30_0000, true));
    assert!(g.mmu.is_unsync(PT >> 12), "INVLPG syncs one entry");
    // Again, and a CR3 load resyncs the whole table and protects it again.
    g.mem.write_u64(PT + 8, 0x31_0000 | RWU).unwrap();
    g.mmu.write_cr3(PML4);
    assert_eq!(g.go(SMALL + 0x1000, READ).unwrap().gpa, 0x31_0000);
    assert!(!g.mmu.is_unsync(PT >> 12));
    assert!(g.mmu.stats().syncs >= 2);
    // A table also used at another level is never unsync.
    g.mem.write_u64(PDPT + 8, PT | RWU).unwrap();
    // Through PDPT entry 1, PT entry 15 (the self-map) is a PDE linking PT as a PT.
    assert_eq!(g.go(0x41e0_0000, READ).unwrap().gpa, 0x10_0000);
    assert!(g.mmu.roles_of(PT >> 12).iter().any(|role| role.level == 2));
    assert!(matches!(
        g.go(SELF_MAP, WRITE),
        Err(ShadowError::PageTableWrite { .. })
    ));
}

#[test]
fn pcid_no_flush_invpcid_and_cr4_toggles_resync() {
    let mut g = guest(SyncPolicy::Unsync);
    g.mmu.write_cr4(CR4_PCIDE | CR4_PGE);
    g.mmu.write_cr3(PML4 | 5 | CR3_NO_FLUSH);
    assert_eq!(g.mmu.pcid(), 5);
    assert_eq!(g.mmu.paging().cr3, PML4 | 5);
    g.go(SMALL + 0x1000, READ).unwrap();
    g.go(SELF_MAP + 8, WRITE).unwrap();
    let rewrite = |g: &mut Guest, gpa: u64| {
        g.mem.write_u64(PT + 8, gpa | RWU).unwrap();
        assert_ne!(
            g.go(SMALL + 0x1000, READ).unwrap().gpa,
            gpa,
            "stale allowed"
        );
    };
    // Type 0 for another PCID leaves the current one's entries.
    rewrite(&mut g, 0x30_0000);
    g.mmu.invpcid(Invpcid::Address {
        pcid: 6,
        gva: SMALL + 0x1000,
    });
    assert_eq!(g.go(SMALL + 0x1000, READ).unwrap().gpa, 0x10_1000);
    g.mmu.invpcid(Invpcid::Address {
        pcid: 5,
        gva: SMALL + 0x1000,
    });
    assert_eq!(g.go(SMALL + 0x1000, READ).unwrap().gpa, 0x30_0000);
    g.go(SELF_MAP + 8, WRITE).unwrap();
    for (i, kind) in [
        Invpcid::SingleContext { pcid: 5 },
        Invpcid::AllNonGlobal,
        Invpcid::AllIncludingGlobal,
    ]
    .into_iter()
    .enumerate()
    {
        let gpa = 0x31_0000 + ((i as u64) << 12);
        rewrite(&mut g, gpa);
        g.mmu.invpcid(kind);
        assert_eq!(g.go(SMALL + 0x1000, READ).unwrap().gpa, gpa, "{kind:?}");
        g.go(SELF_MAP + 8, WRITE).unwrap();
    }
    // Toggling PGE flushes everything.
    rewrite(&mut g, 0x38_0000);
    g.mmu.write_cr4(CR4_PCIDE);
    assert_eq!(g.go(SMALL + 0x1000, READ).unwrap().gpa, 0x38_0000);
    assert_eq!(g.mmu.pcid(), 5);
    g.mmu.write_cr4(0);
    assert_eq!(g.mmu.pcid(), 0);
}

#[test]
fn shared_tables_survive_cr3_switches() {
    let mut g = guest(SyncPolicy::Resync);
    // A second address space whose PML4 shares the PDPT (as kernels share their half).
    g.mem.write_u64(0x5000, PDPT | RWU | GLOBAL).unwrap();
    g.go(SMALL, READ).unwrap();
    let created = g.mmu.stats().pages_created;
    g.mmu.write_cr3(0x5000);
    assert!(g.go(SMALL, READ).unwrap().filled);
    assert_eq!(
        g.mmu.stats().pages_created,
        created + 1,
        "only the new root"
    );
    g.mmu.write_cr3(PML4);
    assert!(g.go(SMALL, READ).unwrap().filled);
    assert!(!g.go(SMALL, READ).unwrap().filled);
    assert_eq!(g.mmu.stats().pages_created, created + 1);
}

#[test]
fn the_page_bound_evicts_and_translations_stay_right() {
    let mut g = guest(SyncPolicy::Resync);
    g.mmu = ShadowMmu::new(
        X86Paging::new(PML4),
        ShadowConfig {
            max_pages: 1,
            policy: SyncPolicy::Resync,
        },
    );
    assert_eq!(g.mmu.config().max_pages, MIN_SHADOW_PAGES);
    // 32 page tables, each mapping one 2 MiB region's first page.
    for i in 0..32u64 {
        let pt = 0x10_0000 + i * 0x1000;
        g.mem.write_u64(PD + (8 + i) * 8, pt | RWU).unwrap();
        g.mem.write_u64(pt, (0x30_0000 + i * 0x1000) | RWU).unwrap();
    }
    for round in 0..2 {
        for i in 0..32u64 {
            let t = g.go(((8 + i) << 21) + 0x10, READ).unwrap();
            assert_eq!(t.gpa, 0x30_0010 + i * 0x1000, "round {round}");
        }
    }
    let stats = g.mmu.stats();
    assert!(stats.pages_in_use <= MIN_SHADOW_PAGES);
    assert!(stats.max_pages_in_use <= MIN_SHADOW_PAGES);
    assert!(stats.evictions > 0);
}

#[test]
fn five_level_tables_and_non_canonical_addresses() {
    let mut g = guest(SyncPolicy::Resync);
    g.mem.write_u64(0x6000, PML4 | RWU).unwrap();
    g.mmu = ShadowMmu::new(
        X86Paging::new(0x6000).with_five_level(true),
        ShadowConfig::default(),
    );
    let t = g.go(SMALL + 8, READ).unwrap();
    assert_eq!(t.gpa, 0x10_0008);
    assert_eq!(g.go(SMALL + 8, READ).unwrap().refs, 5);
    assert_eq!(
        g.go(1 << 56, READ),
        Err(ShadowError::Walk(WalkError::NonCanonical(1 << 56)))
    );
    assert!(g.mmu.roles_of(0x6).iter().all(|role| role.five_level));
    g.mmu.write_efer(0);
    g.mmu.set_ac(true);
    assert!(!g.mmu.paging().format.nxe && g.mmu.paging().ac);
    assert!(format!("{:?}", g.mmu).contains("ShadowMmu"));
    let fault = ShadowError::PageTableWrite { gva: 1, gpa: 2 };
    assert!(alloc::format!("{fault}").contains("write_guest"));
}

#[test]
fn the_access_kind_is_checked_on_hits() {
    let mut g = guest(SyncPolicy::Resync);
    g.mem
        .write_u64(PT + 4 * 8, 0x10_4000 | RWU | NO_EXECUTE)
        .unwrap();
    g.go(SMALL + 0x4000, READ).unwrap();
    assert!(matches!(
        g.go(
            SMALL + 0x4000,
            Access::new(AccessKind::Fetch, Privilege::User)
        ),
        Err(ShadowError::GuestPageFault(_))
    ));
    assert!(matches!(
        g.go(SMALL + 0x4000, Access::read(Privilege::Supervisor)),
        Ok(ShadowTranslation { filled: false, .. })
    ));
    g.mmu.write_cr4(CR4_SMAP);
    assert!(matches!(
        g.go(SMALL + 0x4000, Access::read(Privilege::Supervisor)),
        Err(ShadowError::GuestPageFault(_))
    ));
    g.mmu.set_ac(true);
    assert!(
        g.go(SMALL + 0x4000, Access::read(Privilege::Supervisor))
            .is_ok()
    );
}

#[test]
fn a_store_that_makes_a_1g_page_is_not_served_by_the_split_of_a_2m_page() {
    let mut g = guest(SyncPolicy::Resync);
    // PD entry 4 is a 2 MiB page at GPA 0: it holds the guest's tables, so a direct shadow page
    // maps it with 4 KiB host pages, each leaf reporting the guest's 2 MiB.
    g.mem
        .write_u64(PD + 4 * 8, RWU | PAGE_SIZE | ACCESSED | DIRTY)
        .unwrap();
    for gva in [0x80_5000, 0x80_6000] {
        let t = g.go(gva, WRITE).unwrap();
        assert_eq!((t.gpa, t.page_size), (gva - 0x80_0000, PageSize::Size2M));
    }
    // The guest store turns PDPT entry 0, which linked the PD, into a 1 GiB page at GPA 0: the
    // same frames under the same rights, split the same way one level further down.
    g.mmu
        .write_guest(&g.mem, PDPT, RWU | PAGE_SIZE | ACCESSED | DIRTY)
        .unwrap();
    for gva in [0x5000, 0x6000, 0x6008] {
        let t = g.go(gva, WRITE).unwrap();
        assert_eq!((t.gpa, t.page_size), (gva, PageSize::Size1G), "{gva:#x}");
    }
    assert!(!g.go(0x6010, WRITE).unwrap().filled);
    // And back: the entry links the PD again, and the 2 MiB page is not served by the leaves
    // of the 1 GiB page either.
    g.go(0x7000, WRITE).unwrap();
    g.mmu
        .write_guest(&g.mem, PDPT, PD | RWU | ACCESSED)
        .unwrap();
    for gva in [0x80_6000, 0x80_7000] {
        let t = g.go(gva, WRITE).unwrap();
        assert_eq!((t.gpa, t.page_size), (gva - 0x80_0000, PageSize::Size2M));
    }
}

#[test]
fn a_shadow_linked_anew_brings_the_unsync_tables_below_it_in_sync() {
    let mut g = guest(SyncPolicy::Unsync);
    g.go(SMALL + 0x1000, READ).unwrap();
    g.go(SMALL + 0x2000, READ).unwrap();
    g.go(SELF_MAP + 8, WRITE).unwrap();
    assert!(g.mmu.is_unsync(PT >> 12));
    // The guest rewrites two PT entries natively: SMALL's translations may stay stale.
    g.mem.write_u64(PT + 8, 0x30_1000 | RWU).unwrap();
    g.mem.write_u64(PT + 2 * 8, 0x30_2000 | RWU).unwrap();
    // PDPT entry 1 links the PD too: a new linear range over the same tables, which no TLB
    // has seen, so it must see them as they are now.
    g.mmu.write_guest(&g.mem, PDPT + 8, PD | RWU).unwrap();
    const ALIAS: u64 = (1 << 30) + SMALL;
    for (gva, gpa) in [(ALIAS + 0x1000, 0x30_1000), (ALIAS + 0x2000, 0x30_2000)] {
        assert_eq!(g.go(gva, READ).unwrap().gpa, gpa, "{gva:#x}");
    }
    assert!(!g.go(ALIAS + 0x2008, READ).unwrap().filled);
}

#[test]
fn a_reset_mmu_translates_and_counts_as_a_new_one() {
    fn workload(g: &mut Guest) -> Vec<Result<ShadowTranslation, ShadowError>> {
        let mut results = Vec::new();
        for gva in [
            SMALL,
            SMALL + 0x1000,
            LARGE + 0x5000,
            SELF_MAP + 8,
            SMALL + 0x1008,
        ] {
            results.push(g.go(gva, WRITE));
        }
        g.mem.write_u64(PT + 8, 0x30_1000 | RWU).unwrap();
        g.mmu.invlpg(SMALL + 0x1000);
        results.push(g.go(SMALL + 0x1000, READ));
        g.mmu.write_cr3(PML4);
        results.push(g.go(SMALL + 0x2000, READ));
        results
    }
    let mut fresh = guest(SyncPolicy::Unsync);
    let expected = workload(&mut fresh);
    // Another MMU fills pages under another policy (leaving entries in its storage), then is
    // reset onto a guest like the first.
    let mut used = guest(SyncPolicy::Resync);
    workload(&mut used);
    assert!(used.mmu.stats().pages_in_use > 0);
    let mut again = guest(SyncPolicy::Unsync);
    let config = *again.mmu.config();
    used.mmu.reset(X86Paging::new(PML4), config);
    assert_eq!(used.mmu.stats(), ShadowStats::default());
    again.mmu = used.mmu;
    assert_eq!(workload(&mut again), expected);
    assert_eq!(again.mmu.stats(), fresh.mmu.stats());
    assert_eq!(again.mem.words(), fresh.mem.words());
}

#[test]
fn packed_roles_order_as_roles() {
    let mut roles = Vec::new();
    for bits in 0..1u32 << 12 {
        let flag = |bit: u32| bits & (1 << bit) != 0;
        for level in 1..=5 {
            roles.push(Role {
                level,
                direct: flag(0),
                guest_level: (bits >> 1 & 3) as u8,
                access: (bits >> 3 & 0xf) as u8,
                wp: flag(7),
                smep: flag(8),
                smap: flag(9),
                nxe: flag(10),
                five_level: flag(11),
            });
        }
    }
    roles.sort();
    assert!(roles.windows(2).all(|w| w[0].packed() < w[1].packed()));
    assert!(roles.iter().all(|role| role.packed() < 1 << ROLE_BITS));
    assert_eq!(frame_keys(1 << 60, 1), 0..0);
}
