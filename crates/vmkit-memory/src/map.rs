//! The guest memory map: sorted, non-overlapping, e820-style entries.

use crate::layout::{
    EBDA_START, HIGH_MEMORY_START, IOAPIC_SIZE, IOAPIC_START, KVM_IDENTITY_MAP_SIZE,
    KVM_IDENTITY_MAP_START, KVM_TSS_SIZE, LAPIC_SIZE, LAPIC_START, PCI_ECAM_SIZE, PCI_ECAM_START,
    RAM_START,
};
use crate::range::AddressRange;

/// What a memory-map entry holds, as the guest must treat it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemoryKind {
    /// Usable RAM (e820 type 1).
    Ram,
    /// Reserved: RAM the guest must not allocate, or an address range claimed by the platform
    /// (e820 type 2).
    Reserved,
    /// RAM holding ACPI tables, reclaimable once the guest has read them (e820 type 3).
    Acpi,
    /// ACPI non-volatile storage, to be preserved across sleep states (e820 type 4).
    Nvs,
}

impl MemoryKind {
    /// The e820 type number of this kind, as written into the Linux zero page or a PVH memory map.
    pub fn e820_type(self) -> u32 {
        match self {
            MemoryKind::Ram => 1,
            MemoryKind::Reserved => 2,
            MemoryKind::Acpi => 3,
            MemoryKind::Nvs => 4,
        }
    }
}

/// One entry of the memory map: `size` bytes from guest physical address `addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MemoryMapEntry {
    /// First guest physical address of the entry.
    pub addr: u64,
    /// Length of the entry in bytes (never zero).
    pub size: u64,
    /// How the guest must treat the range.
    pub kind: MemoryKind,
}

impl MemoryMapEntry {
    /// One past the last address of the entry.
    pub fn end(&self) -> u64 {
        self.addr + self.size
    }
}

/// Builds the memory map of guest RAM laid out as `ram` (low region first, sorted).
pub(crate) fn build(ram: &[AddressRange]) -> Vec<MemoryMapEntry> {
    let entry = |addr: u64, end: u64, kind| MemoryMapEntry {
        addr,
        size: end - addr,
        kind,
    };
    let mut map = Vec::with_capacity(9);
    // RAM below the hole always covers the first 2 MiB (the validated minimum).
    let low_end = ram.first().map_or(HIGH_MEMORY_START, |r| r.end().0);
    map.push(entry(RAM_START, EBDA_START, MemoryKind::Ram));
    map.push(entry(EBDA_START, HIGH_MEMORY_START, MemoryKind::Reserved));
    map.push(entry(HIGH_MEMORY_START, low_end, MemoryKind::Ram));
    for (start, size) in [
        (PCI_ECAM_START, PCI_ECAM_SIZE),
        (IOAPIC_START, IOAPIC_SIZE),
        (LAPIC_START, LAPIC_SIZE),
        (KVM_IDENTITY_MAP_START, KVM_IDENTITY_MAP_SIZE + KVM_TSS_SIZE),
    ] {
        map.push(entry(start, start + size, MemoryKind::Reserved));
    }
    for high in ram.iter().skip(1) {
        map.push(entry(high.start.0, high.end().0, MemoryKind::Ram));
    }
    map
}

/// Returns `map` with `[addr, end)` set to `kind`: overlapped entries are cut, the new entry is
/// inserted, and neighbours of equal kind that touch are merged — but never across the start or
/// end of a RAM region in `ram`, so every entry stays wholly inside RAM or wholly outside it
/// (reserved RAM at the top of low RAM does not swallow the reserved hole above it). The caller
/// has checked that the range is non-empty and lies in RAM that the map covers.
pub(crate) fn with_kind(
    map: &[MemoryMapEntry],
    ram: &[AddressRange],
    addr: u64,
    end: u64,
    kind: MemoryKind,
) -> Vec<MemoryMapEntry> {
    let mut pieces = Vec::with_capacity(map.len() + 2);
    for e in map {
        if e.end() <= addr || e.addr >= end {
            pieces.push(*e);
            continue;
        }
        if e.addr < addr {
            pieces.push(MemoryMapEntry {
                addr: e.addr,
                size: addr - e.addr,
                kind: e.kind,
            });
        }
        if e.end() > end {
            pieces.push(MemoryMapEntry {
                addr: end,
                size: e.end() - end,
                kind: e.kind,
            });
        }
    }
    pieces.push(MemoryMapEntry {
        addr,
        size: end - addr,
        kind,
    });
    pieces.sort_unstable_by_key(|e| e.addr);

    let mut merged: Vec<MemoryMapEntry> = Vec::with_capacity(pieces.len());
    for e in pieces {
        match merged.last_mut() {
            Some(last)
                if last.kind == e.kind
                    && last.end() == e.addr
                    && !ram
                        .iter()
                        .any(|r| r.start.0 == e.addr || r.end().0 == e.addr) =>
            {
                last.size += e.size
            }
            _ => merged.push(e),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    fn low(size: u64) -> Vec<AddressRange> {
        vec![AddressRange::new(GuestAddress(0), size)]
    }

    #[test]
    fn e820_types_match_the_acpi_numbering() {
        assert_eq!(MemoryKind::Ram.e820_type(), 1);
        assert_eq!(MemoryKind::Reserved.e820_type(), 2);
        assert_eq!(MemoryKind::Acpi.e820_type(), 3);
        assert_eq!(MemoryKind::Nvs.e820_type(), 4);
    }

    #[test]
    fn entry_end_is_exclusive() {
        let e = MemoryMapEntry {
            addr: 0x1000,
            size: 0x2000,
            kind: MemoryKind::Ram,
        };
        assert_eq!(e.end(), 0x3000);
    }

    #[test]
    fn small_guest_map_reports_legacy_areas_and_hole() {
        let map = build(&low(16 << 20));
        let summary: Vec<_> = map.iter().map(|e| (e.addr, e.size, e.kind)).collect();
        assert_eq!(
            summary,
            vec![
                (0, 0x9_FC00, MemoryKind::Ram),
                (0x9_FC00, 0x6_0400, MemoryKind::Reserved),
                (0x10_0000, (16 << 20) - 0x10_0000, MemoryKind::Ram),
                (0xC000_0000, 0x1000_0000, MemoryKind::Reserved),
                (0xFEC0_0000, 0x1000, MemoryKind::Reserved),
                (0xFEE0_0000, 0x1000, MemoryKind::Reserved),
                (0xFFFB_C000, 0x4000, MemoryKind::Reserved),
            ]
        );
    }

    #[test]
    fn with_kind_splits_an_entry_in_three() {
        let map = build(&low(16 << 20));
        let map = with_kind(&map, &[], 0x20_0000, 0x20_1000, MemoryKind::Acpi);
        let ram: Vec<_> = map
            .iter()
            .take(5)
            .map(|e| (e.addr, e.end(), e.kind))
            .collect();
        assert_eq!(
            ram,
            vec![
                (0, 0x9_FC00, MemoryKind::Ram),
                (0x9_FC00, 0x10_0000, MemoryKind::Reserved),
                (0x10_0000, 0x20_0000, MemoryKind::Ram),
                (0x20_0000, 0x20_1000, MemoryKind::Acpi),
                (0x20_1000, 16 << 20, MemoryKind::Ram),
            ]
        );
    }

    #[test]
    fn with_kind_never_merges_across_a_ram_boundary() {
        // Reserved RAM up to the hole's start next to the reserved hole stays two entries.
        let ram = [AddressRange::new(GuestAddress(0), 0x1000)];
        let entry = |addr: u64, end: u64, kind| MemoryMapEntry {
            addr,
            size: end - addr,
            kind,
        };
        let map = [
            entry(0, 0x1000, MemoryKind::Ram),
            entry(0x1000, 0x2000, MemoryKind::Reserved),
        ];
        let map = with_kind(&map, &ram, 0, 0x1000, MemoryKind::Reserved);
        assert_eq!(
            map,
            vec![
                entry(0, 0x1000, MemoryKind::Reserved),
                entry(0x1000, 0x2000, MemoryKind::Reserved)
            ]
        );
    }

    #[test]
    fn with_kind_merges_touching_entries_of_equal_kind() {
        let map = build(&low(16 << 20));
        // Turning the legacy area back into RAM joins three entries into one.
        let map = with_kind(&map, &[], EBDA_START, HIGH_MEMORY_START, MemoryKind::Ram);
        assert_eq!(
            (map[0].addr, map[0].end(), map[0].kind),
            (0, 16 << 20, MemoryKind::Ram)
        );
        // Reserving a range that touches the legacy area extends it instead of adding an entry.
        let map = build(&low(16 << 20));
        let map = with_kind(&map, &[], 0x10_0000, 0x10_2000, MemoryKind::Reserved);
        assert_eq!((map[1].addr, map[1].end()), (EBDA_START, 0x10_2000));
        assert_eq!(map.len(), 7);
    }

    #[test]
    fn with_kind_can_span_several_entries() {
        let map = build(&low(16 << 20));
        let map = with_kind(&map, &[], 0x9_0000, 0x11_0000, MemoryKind::Nvs);
        let head: Vec<_> = map
            .iter()
            .take(3)
            .map(|e| (e.addr, e.end(), e.kind))
            .collect();
        assert_eq!(
            head,
            vec![
                (0, 0x9_0000, MemoryKind::Ram),
                (0x9_0000, 0x11_0000, MemoryKind::Nvs),
                (0x11_0000, 16 << 20, MemoryKind::Ram),
            ]
        );
    }
}
