use super::*;
use alloc::vec::Vec;
use proptest::prelude::*;

const RW: Rights = Rights {
    read: true,
    write: true,
    execute: true,
    user: false,
};

fn entry(base: u64, size: PageSize, global: bool) -> TlbEntry {
    TlbEntry {
        base,
        size,
        rights: RW,
        dirty: true,
        global,
    }
}

fn tag(vpid: u16, ep4ta: u64, pcid: u16) -> Tag {
    Tag { vpid, ep4ta, pcid }
}

fn tlb() -> Tlb {
    Tlb::new(TlbConfig::default()).unwrap()
}

#[test]
fn lookups_match_vpid_ep4ta_page_and_pcid_unless_global() {
    let mut tlb = tlb();
    let t = tag(1, 0x5000, 3);
    tlb.insert(t, 0x7000, entry(0x9000, PageSize::Size4K, false));
    tlb.insert(t, 0x40_0000, entry(0x80_0000, PageSize::Size2M, true));
    assert_eq!(tlb.lookup(t, 0x7123).map(|hit| hit.0), Some(0x9123));
    assert_eq!(tlb.lookup(t, 0x5f_0000).map(|hit| hit.0), Some(0x9f_0000));
    assert!(tlb.lookup(tag(1, 0x5000, 4), 0x7123).is_none(), "PCID");
    assert!(tlb.lookup(tag(1, 0x5000, 4), 0x40_0000).is_some(), "global");
    assert!(tlb.lookup(tag(2, 0x5000, 3), 0x40_0000).is_none(), "VPID");
    assert!(tlb.lookup(tag(1, 0x6000, 3), 0x40_0000).is_none(), "EP4TA");
    assert!(tlb.lookup(t, 0x8000).is_none(), "page");
    assert_eq!(tlb.len(), 2);
    let stats = tlb.stats();
    assert_eq!((stats.lookups, stats.hits, stats.misses()), (7, 3, 4));
}

#[test]
fn sets_replace_their_least_recently_used_way() {
    let mut tlb = Tlb::new(TlbConfig {
        sets_4k: 2,
        ways_4k: 2,
        ..TlbConfig::default()
    })
    .unwrap();
    let t = tag(0, 0, 0);
    // Pages 0, 2, 4 share set 0.
    for page in [0u64, 2] {
        tlb.insert(t, page << 12, entry(page << 20, PageSize::Size4K, false));
    }
    assert!(tlb.lookup(t, 0).is_some());
    tlb.insert(t, 4 << 12, entry(4 << 20, PageSize::Size4K, false));
    assert!(tlb.lookup(t, 0).is_some());
    assert!(tlb.lookup(t, 2 << 12).is_none(), "LRU way replaced");
    // Reinserting a page replaces its own entry.
    tlb.insert(t, 4 << 12, entry(5 << 20, PageSize::Size4K, false));
    assert_eq!(tlb.lookup(t, 4 << 12).map(|hit| hit.0), Some(5 << 20));
    assert_eq!(tlb.stats().evictions, 1);
    assert!(!tlb.is_empty());
}

#[test]
fn bad_geometry_is_refused() {
    for config in [
        TlbConfig {
            sets_4k: 3,
            ..TlbConfig::default()
        },
        TlbConfig {
            ways_2m: 0,
            ..TlbConfig::default()
        },
        TlbConfig {
            sets_1g: 1 << 16,
            ways_1g: 2,
            ..TlbConfig::default()
        },
    ] {
        assert!(matches!(Tlb::new(config), Err(TlbError::Geometry(_))));
    }
    assert!(alloc::format!("{}", TlbError::Geometry(PageSize::Size2M)).contains("2 MiB"));
}

#[test]
fn invlpg_and_invpcid_types() {
    let mut tlb = tlb();
    let cur = tag(1, 0, 3);
    let fill = |tlb: &mut Tlb| {
        tlb.insert(cur, 0x1000, entry(0xa000, PageSize::Size4K, false));
        tlb.insert(tag(1, 0, 4), 0x1000, entry(0xb000, PageSize::Size4K, false));
        tlb.insert(tag(1, 0, 4), 0x2000, entry(0xc000, PageSize::Size4K, true));
        tlb.insert(tag(2, 0, 3), 0x1000, entry(0xd000, PageSize::Size4K, false));
    };
    fill(&mut tlb);
    // INVLPG: current PCID and globals, this VPID only.
    tlb.invlpg(cur, 0x1fff);
    tlb.invlpg(cur, 0x2000);
    assert!(tlb.lookup(cur, 0x1000).is_none());
    assert!(tlb.lookup(tag(1, 0, 4), 0x1000).is_some());
    assert!(tlb.lookup(tag(1, 0, 4), 0x2000).is_none());
    assert!(tlb.lookup(tag(2, 0, 3), 0x1000).is_some());
    // Type 0 spares globals.
    fill(&mut tlb);
    tlb.invpcid(
        1,
        Invpcid::Address {
            pcid: 4,
            gva: 0x1000,
        },
    );
    tlb.invpcid(
        1,
        Invpcid::Address {
            pcid: 4,
            gva: 0x2000,
        },
    );
    assert!(tlb.lookup(tag(1, 0, 4), 0x1000).is_none());
    assert!(tlb.lookup(tag(1, 0, 4), 0x2000).is_some());
    assert!(tlb.lookup(cur, 0x1000).is_some());
    // Type 1 and 3 spare globals; type 2 does not.
    tlb.invpcid(1, Invpcid::SingleContext { pcid: 3 });
    assert!(tlb.lookup(cur, 0x1000).is_none());
    fill(&mut tlb);
    tlb.invpcid(1, Invpcid::AllNonGlobal);
    assert_eq!(tlb.len(), 2, "the global and VPID 2's entry");
    tlb.invpcid(1, Invpcid::AllIncludingGlobal);
    assert_eq!(tlb.len(), 1);
    assert!(tlb.lookup(tag(2, 0, 3), 0x1000).is_some());
}

#[test]
fn cr3_writes_with_and_without_no_flush_and_cr4_toggles() {
    let mut tlb = tlb();
    let a = tag(0, 0, 1);
    tlb.insert(a, 0x1000, entry(0xa000, PageSize::Size4K, false));
    tlb.insert(a, 0x40_0000, entry(0x20_0000, PageSize::Size2M, true));
    tlb.insert(tag(0, 0, 2), 0x1000, entry(0xb000, PageSize::Size4K, false));
    tlb.write_cr3(a, true);
    assert_eq!(tlb.len(), 3);
    tlb.write_cr3(a, false);
    assert!(tlb.lookup(a, 0x1000).is_none());
    assert!(tlb.lookup(a, 0x40_0000).is_some(), "globals survive");
    assert!(
        tlb.lookup(tag(0, 0, 2), 0x1000).is_some(),
        "other PCIDs survive"
    );
    tlb.flush_vpid(0);
    assert!(tlb.is_empty());
}

#[test]
fn invvpid_invept_and_vm_transitions() {
    let mut tlb = tlb();
    let fill = |tlb: &mut Tlb| {
        tlb.insert(tag(0, 0, 0), 0x1000, entry(0xa000, PageSize::Size4K, false));
        tlb.insert(
            tag(1, 0x5000, 0),
            0x1000,
            entry(0xb000, PageSize::Size4K, true),
        );
        tlb.insert(
            tag(1, 0x6000, 7),
            0x1000,
            entry(0xc000, PageSize::Size4K, false),
        );
        tlb.insert(
            tag(2, 0x5000, 0),
            0x40_0000,
            entry(0, PageSize::Size2M, false),
        );
    };
    fill(&mut tlb);
    assert_eq!(
        tlb.invvpid(Invvpid::SingleContext { vpid: 0 }),
        Err(TlbError::InvalidVpid)
    );
    tlb.invvpid(Invvpid::Address {
        vpid: 1,
        gva: 0x1000,
    })
    .unwrap();
    assert_eq!(tlb.len(), 2, "every PCID and EP4TA, globals included");
    fill(&mut tlb);
    tlb.invvpid(Invvpid::SingleContextRetainingGlobals { vpid: 1 })
        .unwrap();
    assert!(tlb.lookup(tag(1, 0x5000, 9), 0x1000).is_some());
    assert!(tlb.lookup(tag(1, 0x6000, 7), 0x1000).is_none());
    tlb.invvpid(Invvpid::SingleContext { vpid: 1 }).unwrap();
    assert!(tlb.lookup(tag(1, 0x5000, 9), 0x1000).is_none());
    fill(&mut tlb);
    tlb.invvpid(Invvpid::AllContexts).unwrap();
    assert_eq!(tlb.len(), 1, "VPID 0 stays");
    // INVEPT: combined mappings of one EP4TA, or all of them.
    fill(&mut tlb);
    tlb.invept(Invept::SingleContext {
        eptp: 0x5000 | 0x5e,
    });
    assert_eq!(tlb.len(), 2);
    tlb.invept(Invept::Global);
    assert_eq!(tlb.len(), 1, "the linear mapping stays");
    // VM entry/exit: VPID 0 goes unless VPID is on.
    fill(&mut tlb);
    tlb.vm_transition(true);
    assert_eq!(tlb.len(), 4);
    tlb.vm_transition(false);
    assert_eq!(tlb.len(), 3);
}

#[test]
fn amd_vmrun_tlb_control_and_invlpga() {
    let mut tlb = tlb();
    let fill = |tlb: &mut Tlb| {
        tlb.insert(tag(1, 0, 0), 0x1000, entry(0xa000, PageSize::Size4K, false));
        tlb.insert(tag(1, 0, 0), 0x2000, entry(0xb000, PageSize::Size4K, true));
        tlb.insert(tag(2, 0, 0), 0x1000, entry(0xc000, PageSize::Size4K, false));
    };
    fill(&mut tlb);
    tlb.vmrun(1, TlbControl::Nothing);
    assert_eq!(tlb.len(), 3);
    tlb.invlpga(1, 0x2000);
    assert_eq!(tlb.len(), 2, "INVLPGA takes globals too");
    fill(&mut tlb);
    tlb.vmrun(1, TlbControl::AsidNonGlobal);
    assert_eq!(tlb.len(), 2);
    tlb.vmrun(1, TlbControl::Asid);
    assert_eq!(tlb.len(), 1);
    tlb.vmrun(1, TlbControl::All);
    assert!(tlb.is_empty());
}

/// One operation of the property.
#[derive(Debug, Clone)]
enum Op {
    Insert(Tag, u64, u8, bool),
    Lookup(Tag, u64),
    Invlpg(Tag, u64),
    Invpcid(u16, Invpcid),
    Cr3(Tag, bool),
    FlushVpid(u16),
    Invvpid(Invvpid),
    Invept(Invept),
    VmTransition(bool),
    Vmrun(u16, TlbControl),
    Invlpga(u16, u64),
}

fn small_tag() -> impl Strategy<Value = Tag> {
    (
        0..3u16,
        prop_oneof![Just(0u64), Just(0x5000u64), Just(0x6000u64)],
        0..3u16,
    )
        .prop_map(|(vpid, ep4ta, pcid)| Tag { vpid, ep4ta, pcid })
}

fn gva() -> impl Strategy<Value = u64> {
    (0..4u64, 0..4u64, 0..2u64)
        .prop_map(|(gib, page, mib)| (gib << 30) | (mib << 21) | (page << 12))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (small_tag(), gva(), 0..3u8, any::<bool>()).prop_map(|(t, g, s, gl)| Op::Insert(t, g, s, gl)),
        6 => (small_tag(), gva()).prop_map(|(t, g)| Op::Lookup(t, g)),
        1 => (small_tag(), gva()).prop_map(|(t, g)| Op::Invlpg(t, g)),
        1 => (0..3u16, 0..3u16, gva(), 0..4u8).prop_map(|(v, p, g, k)| Op::Invpcid(v, match k {
            0 => Invpcid::Address { pcid: p, gva: g },
            1 => Invpcid::SingleContext { pcid: p },
            2 => Invpcid::AllIncludingGlobal,
            _ => Invpcid::AllNonGlobal,
        })),
        1 => (small_tag(), any::<bool>()).prop_map(|(t, n)| Op::Cr3(t, n)),
        1 => (0..3u16).prop_map(Op::FlushVpid),
        1 => (0..3u16, gva(), 0..4u8).prop_map(|(v, g, k)| Op::Invvpid(match k {
            0 => Invvpid::Address { vpid: v, gva: g },
            1 => Invvpid::SingleContext { vpid: v },
            2 => Invvpid::AllContexts,
            _ => Invvpid::SingleContextRetainingGlobals { vpid: v },
        })),
        1 => prop_oneof![Just(0x5000u64), Just(0x6000u64), Just(0u64)].prop_map(|e| Op::Invept(if e == 0 { Invept::Global } else { Invept::SingleContext { eptp: e | 0x1e } })),
        1 => any::<bool>().prop_map(Op::VmTransition),
        1 => (0..3u16, 0..4u8).prop_map(|(a, c)| Op::Vmrun(a, [TlbControl::Nothing, TlbControl::All, TlbControl::Asid, TlbControl::AsidNonGlobal][c as usize])),
        1 => (0..3u16, gva()).prop_map(|(a, g)| Op::Invlpga(a, g)),
    ]
}

/// The reference: every translation cached and not flushed, kept in a list, each flush rule
/// written as the manuals state which entries it removes.
#[derive(Default)]
struct Reference {
    live: Vec<(Tag, u64, TlbEntry)>,
}

impl Reference {
    fn drop_where(&mut self, gone: impl Fn(&Tag, u64, &TlbEntry) -> bool) {
        self.live
            .retain(|(tag, gva, entry)| !gone(tag, *gva, entry));
    }

    fn apply(&mut self, op: &Op) {
        let same_page = |a: u64, b: u64, e: &TlbEntry| a >> e.size.shift() == b >> e.size.shift();
        match *op {
            Op::Insert(tag, gva, size, global) => {
                let size = [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G][size as usize];
                self.live
                    .push((tag, gva, entry(gva & !size.offset_mask(), size, global)));
            }
            Op::Lookup(..) => {}
            // "INVLPG invalidates ... for the current PCID and global ... of the current VPID".
            Op::Invlpg(cur, g) => self.drop_where(|t, a, e| {
                t.vpid == cur.vpid && (t.pcid == cur.pcid || e.global) && same_page(a, g, e)
            }),
            Op::Invpcid(vpid, kind) => self.drop_where(|t, a, e| {
                t.vpid == vpid
                    && match kind {
                        Invpcid::Address { pcid, gva } => {
                            t.pcid == pcid && !e.global && same_page(a, gva, e)
                        }
                        Invpcid::SingleContext { pcid } => t.pcid == pcid && !e.global,
                        Invpcid::AllIncludingGlobal => true,
                        Invpcid::AllNonGlobal => !e.global,
                    }
            }),
            Op::Cr3(new, no_flush) => {
                if !no_flush {
                    self.drop_where(|t, _, e| t.vpid == new.vpid && t.pcid == new.pcid && !e.global)
                }
            }
            Op::FlushVpid(vpid) => self.drop_where(|t, _, _| t.vpid == vpid),
            Op::Invvpid(kind) => self.drop_where(|t, a, e| match kind {
                Invvpid::Address { vpid, gva } => {
                    vpid != 0 && t.vpid == vpid && same_page(a, gva, e)
                }
                Invvpid::SingleContext { vpid } => vpid != 0 && t.vpid == vpid,
                Invvpid::AllContexts => t.vpid != 0,
                Invvpid::SingleContextRetainingGlobals { vpid } => {
                    vpid != 0 && t.vpid == vpid && !e.global
                }
            }),
            Op::Invept(kind) => self.drop_where(|t, _, _| match kind {
                Invept::SingleContext { eptp } => t.ep4ta != 0 && t.ep4ta == eptp & !0xfff,
                Invept::Global => t.ep4ta != 0,
            }),
            Op::VmTransition(vpid) => {
                if !vpid {
                    self.drop_where(|t, _, _| t.vpid == 0)
                }
            }
            Op::Vmrun(asid, control) => self.drop_where(|t, _, e| match control {
                TlbControl::Nothing => false,
                TlbControl::All => true,
                TlbControl::Asid => t.vpid == asid,
                TlbControl::AsidNonGlobal => t.vpid == asid && !e.global,
            }),
            Op::Invlpga(asid, g) => self.drop_where(|t, a, e| t.vpid == asid && same_page(a, g, e)),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 500,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Every hit is a translation the architecture still allows: inserted under a matching
    /// tag and flushed by nothing since.
    #[test]
    fn never_returns_a_flushed_translation(ops in proptest::collection::vec(op(), 1..120)) {
        let mut tlb = Tlb::new(TlbConfig {
            sets_4k: 2,
            ways_4k: 2,
            sets_2m: 2,
            ways_2m: 1,
            sets_1g: 1,
            ways_1g: 2,
        })
        .unwrap();
        let mut reference = Reference::default();
        for op in &ops {
            reference.apply(op);
            match *op {
                Op::Insert(tag, gva, size, global) => {
                    let size = [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G][size as usize];
                    tlb.insert(tag, gva, entry(gva & !size.offset_mask(), size, global));
                }
                Op::Lookup(tag, gva) => {
                    if let Some((hpa, hit)) = tlb.lookup(tag, gva) {
                        let allowed = reference.live.iter().any(|(t, a, e)| {
                            *e == hit
                                && t.vpid == tag.vpid
                                && t.ep4ta == tag.ep4ta
                                && (t.pcid == tag.pcid || e.global)
                                && a >> e.size.shift() == gva >> e.size.shift()
                        });
                        prop_assert!(allowed, "{op:?} hit {hit:?}, flushed or never cached");
                        prop_assert_eq!(hpa, hit.base | (gva & hit.size.offset_mask()));
                    }
                }
                Op::Invlpg(tag, gva) => tlb.invlpg(tag, gva),
                Op::Invpcid(vpid, kind) => tlb.invpcid(vpid, kind),
                Op::Cr3(tag, no_flush) => tlb.write_cr3(tag, no_flush),
                Op::FlushVpid(vpid) => tlb.flush_vpid(vpid),
                Op::Invvpid(kind) => {
                    let _ = tlb.invvpid(kind);
                }
                Op::Invept(kind) => tlb.invept(kind),
                Op::VmTransition(vpid) => tlb.vm_transition(vpid),
                Op::Vmrun(asid, control) => tlb.vmrun(asid, control),
                Op::Invlpga(asid, gva) => tlb.invlpga(asid, gva),
            }
        }
    }
}
