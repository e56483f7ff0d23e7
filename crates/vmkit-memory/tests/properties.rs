//! Property tests: every valid layout is consistent, every invalid size is rejected with the
//! right error, and the allocators behave like a naive first-fit model.

use std::collections::BTreeMap;

use proptest::prelude::*;
use vmkit_memory::layout::{
    EBDA_START, HIGH_MEMORY_START, IOAPIC_SIZE, IOAPIC_START, KVM_IDENTITY_MAP_SIZE,
    KVM_IDENTITY_MAP_START, KVM_TSS_SIZE, KVM_TSS_START, LAPIC_SIZE, LAPIC_START,
    MAX_MEMORY_MAP_ENTRIES, MIN_RAM_SIZE, MMIO_HOLE_SIZE, MMIO_HOLE_START, PAGE_SIZE,
    PCI_ECAM_SIZE, PCI_ECAM_START,
};
use vmkit_memory::vm_memory::GuestAddress;
use vmkit_memory::{
    AddressRange, AllocatorError, GuestLayout, LayoutError, MemoryKind, MemoryMapEntry,
};

fn range(e: &MemoryMapEntry) -> AddressRange {
    AddressRange::new(GuestAddress(e.addr), e.size)
}

/// Checks every structural invariant of a layout; `ram_size` is the size it was built from.
fn check_layout(layout: &GuestLayout, ram_size: u64) {
    let map = layout.memory_map();
    assert!(map.len() <= MAX_MEMORY_MAP_ENTRIES);
    for e in map {
        assert!(e.size > 0);
    }
    for pair in map.windows(2) {
        assert!(
            pair[0].end() <= pair[1].addr,
            "sorted and disjoint: {pair:?}"
        );
    }

    let regions = layout.ram_regions();
    assert_eq!(regions.iter().map(|r| r.size).sum::<u64>(), ram_size);
    for pair in regions.windows(2) {
        assert!(pair[0].end() <= pair[1].start);
    }
    let hole = AddressRange::new(GuestAddress(MMIO_HOLE_START), MMIO_HOLE_SIZE);
    for r in regions {
        assert!(!r.overlaps(&hole), "RAM {r:?} overlaps the hole");
        // The entries inside a RAM region tile it exactly.
        let inside: Vec<_> = map.iter().filter(|e| r.overlaps(&range(e))).collect();
        assert!(inside.iter().all(|e| r.contains_range(&range(e))));
        assert_eq!(inside.first().map(|e| e.addr), Some(r.start.0));
        assert_eq!(inside.last().map(|e| e.end()), Some(r.end().0));
        for pair in inside.windows(2) {
            assert_eq!(pair[0].end(), pair[1].addr);
        }
    }
    // What is not RAM is reserved.
    for e in map {
        if !regions.iter().any(|r| r.contains_range(&range(e))) {
            assert_eq!(e.kind, MemoryKind::Reserved, "{e:?}");
        }
    }
    let reserved = |addr: u64, size: u64| {
        map.iter()
            .any(|e| e.kind == MemoryKind::Reserved && e.addr <= addr && addr + size <= e.end())
    };
    assert!(reserved(PCI_ECAM_START, PCI_ECAM_SIZE));
    assert!(reserved(IOAPIC_START, IOAPIC_SIZE));
    assert!(reserved(LAPIC_START, LAPIC_SIZE));
    assert!(reserved(KVM_IDENTITY_MAP_START, KVM_IDENTITY_MAP_SIZE));
    assert!(reserved(KVM_TSS_START, KVM_TSS_SIZE));
    assert_eq!(layout.kvm_tss_address(), GuestAddress(KVM_TSS_START));
    assert_eq!(
        layout.kvm_identity_map_address(),
        GuestAddress(KVM_IDENTITY_MAP_START)
    );

    // The windows are gaps: no RAM, no map entry; MMIO64 ends at the physical width.
    let top = 1u64 << layout.phys_bits();
    for w in [layout.mmio32_window(), layout.mmio64_window()] {
        assert!(w.size > 0);
        assert!(w.end().0 <= top);
        assert!(map.iter().all(|e| !w.overlaps(&range(e))));
        assert!(regions.iter().all(|r| !w.overlaps(r)));
    }
    assert_eq!(layout.mmio64_window().end().0, top);
}

fn any_phys_bits() -> impl Strategy<Value = u8> {
    36u8..=52
}

/// Valid RAM sizes, biased towards the interesting boundaries around the hole.
fn valid_ram_size(phys_bits: u8) -> impl Strategy<Value = u64> {
    let max_pages = GuestLayout::max_ram_size(phys_bits) / PAGE_SIZE;
    let min_pages = MIN_RAM_SIZE / PAGE_SIZE;
    let hole_pages = MMIO_HOLE_START / PAGE_SIZE;
    prop_oneof![
        min_pages..=max_pages,
        min_pages..=(2 * hole_pages).min(max_pages),
        (hole_pages - 2..=hole_pages + 2),
        Just(max_pages),
        Just(min_pages),
    ]
    .prop_map(|pages| pages * PAGE_SIZE)
}

proptest! {
    #[test]
    fn valid_sizes_give_consistent_layouts(
        (phys_bits, ram_size) in any_phys_bits().prop_flat_map(|b| (Just(b), valid_ram_size(b)))
    ) {
        let layout = GuestLayout::with_phys_bits(ram_size, phys_bits).unwrap();
        prop_assert_eq!(layout.ram_size(), ram_size);
        check_layout(&layout, ram_size);
        // A fresh map reports all RAM usable except the legacy area below 1 MiB.
        let usable: u64 = layout
            .memory_map()
            .iter()
            .filter(|e| e.kind == MemoryKind::Ram)
            .map(|e| e.size)
            .sum();
        prop_assert_eq!(usable, ram_size - (HIGH_MEMORY_START - EBDA_START));
        prop_assert!(layout.allocators().is_ok());
    }

    #[test]
    fn any_size_is_valid_or_rejected_for_the_right_reason(ram_size: u64, phys_bits: u8) {
        match GuestLayout::with_phys_bits(ram_size, phys_bits) {
            Ok(layout) => check_layout(&layout, ram_size),
            Err(LayoutError::InvalidPhysBits(b)) => {
                prop_assert_eq!(b, phys_bits);
                prop_assert!(!(36..=52).contains(&phys_bits));
            }
            Err(LayoutError::ZeroRamSize) => prop_assert_eq!(ram_size, 0),
            Err(LayoutError::UnalignedRamSize(s)) => prop_assert!(s % PAGE_SIZE != 0),
            Err(LayoutError::RamTooSmall { size, .. }) => prop_assert!(size < MIN_RAM_SIZE),
            Err(LayoutError::RamTooLarge { size, max, .. }) => {
                prop_assert!(size > max);
                prop_assert_eq!(max, GuestLayout::max_ram_size(phys_bits));
            }
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }

    #[test]
    fn memory_kind_changes_keep_the_map_consistent(
        ram_pages in (MIN_RAM_SIZE / PAGE_SIZE)..=(5u64 << 18),
        changes in prop::collection::vec((any::<u64>(), 0u64..0x40_0000, 0u8..4), 0..40),
    ) {
        let ram_size = ram_pages * PAGE_SIZE;
        let mut layout = GuestLayout::new(ram_size).unwrap();
        for (at, size, kind) in changes {
            let kind = [MemoryKind::Ram, MemoryKind::Reserved, MemoryKind::Acpi, MemoryKind::Nvs]
                [usize::from(kind)];
            // Pick an address inside RAM most of the time.
            let regions = layout.ram_regions().to_vec();
            let region = regions[(at % 2) as usize % regions.len()];
            let addr = region.start.0 + (at >> 1) % region.size;
            let before = layout.clone();
            match layout.set_memory_kind(GuestAddress(addr), size, kind) {
                Ok(()) => {
                    prop_assert!(layout.is_ram(GuestAddress(addr), size));
                    let marked = layout
                        .memory_map()
                        .iter()
                        .any(|e| e.kind == kind && e.addr <= addr && addr + size <= e.end());
                    prop_assert!(marked);
                }
                Err(_) => prop_assert_eq!(&layout, &before),
            }
            check_layout(&layout, ram_size);
        }
    }
}

/// Port-space operations for the allocator property.
#[derive(Clone, Debug)]
enum Op {
    Allocate { size: u16, align_log2: u8 },
    AllocateAt { start: u16, size: u16 },
    Free { pick: usize, corrupt: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u16..0x3000, 0u8..14).prop_map(|(size, align_log2)| Op::Allocate { size, align_log2 }),
        (1u16..8, 0u8..4).prop_map(|(size, align_log2)| Op::Allocate { size, align_log2 }),
        (any::<u16>(), 1u16..0x800).prop_map(|(start, size)| Op::AllocateAt { start, size }),
        (0xF000u16.., 1u16..4).prop_map(|(start, size)| Op::AllocateAt { start, size }),
        (any::<usize>(), any::<bool>()).prop_map(|(pick, corrupt)| Op::Free { pick, corrupt }),
    ]
}

/// The lowest `start` in `window` aligned to `align` where `size` units are free in `live`.
fn first_fit(live: &BTreeMap<u32, u32>, window: (u32, u32), size: u32, align: u32) -> Option<u32> {
    let mut cursor = window.0;
    for (&s, &len) in live.iter().chain(std::iter::once((&window.1, &0))) {
        let start = cursor.next_multiple_of(align);
        if start + size <= s {
            return Some(start);
        }
        cursor = cursor.max(s + len);
    }
    None
}

proptest! {
    #[test]
    fn port_allocator_matches_a_first_fit_model(ops in prop::collection::vec(op(), 1..200)) {
        let layout = GuestLayout::new(64 << 20).unwrap();
        let mut alloc = layout.allocators().unwrap();
        let window = (0x1000u32, 0x1_0000u32);
        let mut live: BTreeMap<u32, u32> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Allocate { size, align_log2 } => {
                    let align = 1u16 << align_log2;
                    let expected = first_fit(&live, window, size.into(), align.into());
                    match alloc.allocate_pio(size, align) {
                        Ok(r) => {
                            prop_assert_eq!(Some(u32::from(r.start)), expected);
                            prop_assert_eq!(r.size, size);
                            live.insert(r.start.into(), size.into());
                        }
                        Err(AllocatorError::OutOfSpace { .. }) => prop_assert_eq!(expected, None),
                        Err(e) => prop_assert!(false, "unexpected {e}"),
                    }
                }
                Op::AllocateAt { start, size } => {
                    let (s, e) = (u32::from(start), u32::from(start) + u32::from(size));
                    let free = s >= window.0
                        && e <= window.1
                        && live.iter().all(|(&ls, &ll)| ls + ll <= s || e <= ls);
                    let result = alloc.allocate_pio_at(start, size);
                    prop_assert_eq!(result.is_ok(), free, "{:#x}+{:#x}", start, size);
                    if free {
                        live.insert(s, size.into());
                    }
                }
                Op::Free { pick, corrupt } => {
                    if live.is_empty() {
                        prop_assert!(alloc.free_pio(vmkit_memory::PortRange::new(0x1000, 1)).is_err());
                        continue;
                    }
                    let (&s, &len) = live.iter().nth(pick % live.len()).unwrap();
                    if corrupt {
                        let bad = vmkit_memory::PortRange::new(s as u16, (len + 1) as u16);
                        prop_assert!(alloc.free_pio(bad).is_err());
                    } else {
                        alloc.free_pio(vmkit_memory::PortRange::new(s as u16, len as u16)).unwrap();
                        live.remove(&s);
                    }
                }
            }
        }
        // Free everything: the whole window is one free run again.
        for (s, len) in live {
            alloc.free_pio(vmkit_memory::PortRange::new(s as u16, len as u16)).unwrap();
        }
        prop_assert!(alloc.allocate_pio(0xF000, 1).is_ok());
    }
}
