//! [`GuestLayout`]: where RAM, the MMIO windows and the reserved pages of one guest lie.

use std::ops::RangeInclusive;

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::allocator::{AllocatorError, Allocators};
use crate::layout::{
    DEFAULT_PHYS_BITS, GSI_FIRST, GSI_LAST, HIGH_RAM_START, KVM_IDENTITY_MAP_START, KVM_TSS_START,
    LOW_RAM_MAX_SIZE, MAX_MEMORY_MAP_ENTRIES, MAX_PHYS_BITS, MIN_PHYS_BITS, MIN_RAM_SIZE,
    MMIO_HOLE_SIZE, MMIO32_SIZE, MMIO32_START, MMIO64_ALIGNMENT, PAGE_SIZE, PIO_LAST, PIO_START,
    RAM_START,
};
use crate::map::{self, MemoryKind, MemoryMapEntry};
use crate::range::{AddressRange, PortRange, RamRegion};

/// Errors of building or changing a [`GuestLayout`].
#[derive(Debug, Clone, PartialEq, Eq, displaydoc::Display, thiserror::Error)]
#[ignore_extra_doc_attributes]
pub enum LayoutError {
    /// guest RAM size is zero
    ZeroRamSize,
    /// guest RAM size {0:#x} is not a multiple of the 4 KiB page size
    UnalignedRamSize(u64),
    /// guest RAM size {size:#x} is below the minimum of {min:#x} bytes
    ///
    /// Guest RAM size is below the minimum a guest boots with.
    RamTooSmall {
        /// The requested size.
        size: u64,
        /// [`MIN_RAM_SIZE`].
        min: u64,
    },
    /// guest RAM size {size:#x} exceeds {max:#x}, the most a {phys_bits}-bit physical address space
    /// holds
    ///
    /// Guest RAM does not fit the physical address space beside the 32-bit hole and a minimal
    /// MMIO64 window.
    RamTooLarge {
        /// The requested size.
        size: u64,
        /// The largest size accepted for `phys_bits`.
        max: u64,
        /// The physical address width.
        phys_bits: u8,
    },
    /// physical address width of {0} bits is outside the supported 36..=52
    ///
    /// The physical address width is outside what x86-64 CPUs implement.
    InvalidPhysBits(u8),
    /// range {addr:#x}+{size:#x} is empty or not entirely inside guest RAM
    ///
    /// A memory-map change names a range that is empty, wraps, or is not entirely guest RAM.
    NotRam {
        /// First address of the range.
        addr: u64,
        /// Length of the range.
        size: u64,
    },
    /// the memory map would exceed {0} entries
    ///
    /// A memory-map change would make the map longer than a boot protocol can carry.
    TooManyEntries(usize),
}

/// Errors of creating the guest memory mapping.
#[derive(Debug, displaydoc::Display, thiserror::Error)]
#[ignore_extra_doc_attributes]
pub enum MemoryError {
    /// RAM region at {start:#x} of {size:#x} bytes does not fit the host address space
    ///
    /// A RAM region is larger than the host's address space.
    HostSize {
        /// Guest physical start of the region.
        start: u64,
        /// Size of the region.
        size: u64,
    },
    /// failed to map guest RAM
    ///
    /// Mapping guest RAM into the VMM failed.
    Mmap(#[source] vm_memory::mmap::FromRangesError),
}

/// The guest physical layout of one x86-64 VM: its RAM regions, the memory map reported to the
/// guest, the MMIO windows and the reserved pages, derived from the RAM size and the physical
/// address width (see [`layout`](crate::layout) for the fixed addresses).
///
/// RAM fills `0..min(ram_size, 3 GiB)`; the remainder starts at 4 GiB. The MMIO64 window runs
/// from the first 1 GiB boundary at or above both 4 GiB and the end of RAM up to the top of the
/// physical address space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestLayout {
    ram_size: u64,
    phys_bits: u8,
    ram_regions: Vec<RamRegion>,
    memory_map: Vec<MemoryMapEntry>,
    mmio64: AddressRange,
}

impl GuestLayout {
    /// The layout of a guest with `ram_size` bytes of RAM and a
    /// [`DEFAULT_PHYS_BITS`]-bit physical address space.
    pub fn new(ram_size: u64) -> Result<Self, LayoutError> {
        Self::with_phys_bits(ram_size, DEFAULT_PHYS_BITS)
    }

    /// The layout of a guest with `ram_size` bytes of RAM and a `phys_bits`-bit physical address
    /// space (`36..=52`; pass the width the guest's CPUID reports).
    ///
    /// `ram_size` must be a non-zero multiple of 4 KiB, at least [`MIN_RAM_SIZE`], and at most
    /// [`GuestLayout::max_ram_size`]`(phys_bits)`.
    pub fn with_phys_bits(ram_size: u64, phys_bits: u8) -> Result<Self, LayoutError> {
        if !(MIN_PHYS_BITS..=MAX_PHYS_BITS).contains(&phys_bits) {
            return Err(LayoutError::InvalidPhysBits(phys_bits));
        }
        if ram_size == 0 {
            return Err(LayoutError::ZeroRamSize);
        }
        if !ram_size.is_multiple_of(PAGE_SIZE) {
            return Err(LayoutError::UnalignedRamSize(ram_size));
        }
        if ram_size < MIN_RAM_SIZE {
            return Err(LayoutError::RamTooSmall {
                size: ram_size,
                min: MIN_RAM_SIZE,
            });
        }
        let max = Self::max_ram_size(phys_bits);
        if ram_size > max {
            return Err(LayoutError::RamTooLarge {
                size: ram_size,
                max,
                phys_bits,
            });
        }

        let low_size = ram_size.min(LOW_RAM_MAX_SIZE);
        let mut ram_regions = vec![RamRegion::new(GuestAddress(RAM_START), low_size)];
        let high_size = ram_size - low_size;
        if high_size > 0 {
            ram_regions.push(RamRegion::new(GuestAddress(HIGH_RAM_START), high_size));
        }
        // `ram_size <= max` keeps every sum below 2^52 and leaves a non-empty, 1 GiB-aligned
        // window between the end of RAM and the top of the address space.
        let ram_end = HIGH_RAM_START + high_size;
        let mmio64_start = ram_end.next_multiple_of(MMIO64_ALIGNMENT);
        let mmio64 = AddressRange::new(
            GuestAddress(mmio64_start),
            (1u64 << phys_bits) - mmio64_start,
        );
        let memory_map = map::build(&ram_regions);
        Ok(GuestLayout {
            ram_size,
            phys_bits,
            ram_regions,
            memory_map,
            mmio64,
        })
    }

    /// The largest RAM size a `phys_bits`-bit physical address space holds: all of it except the
    /// 1 GiB hole and a 1 GiB MMIO64 window (0 for a width outside `36..=52`).
    pub fn max_ram_size(phys_bits: u8) -> u64 {
        if !(MIN_PHYS_BITS..=MAX_PHYS_BITS).contains(&phys_bits) {
            return 0;
        }
        (1u64 << phys_bits) - MMIO_HOLE_SIZE - MMIO64_ALIGNMENT
    }

    /// Total guest RAM in bytes.
    pub fn ram_size(&self) -> u64 {
        self.ram_size
    }

    /// The physical address width the layout was built for.
    pub fn phys_bits(&self) -> u8 {
        self.phys_bits
    }

    /// The RAM regions, sorted: `0..min(ram_size, 3 GiB)` and, for larger guests, the rest from
    /// 4 GiB. Each becomes one mapping of the guest memory (and one KVM memory slot).
    pub fn ram_regions(&self) -> &[RamRegion] {
        &self.ram_regions
    }

    /// RAM below the 32-bit MMIO hole, in bytes: what a PC's CMOS memory-size registers and the
    /// firmware's "low memory" report (at most [`LOW_RAM_MAX_SIZE`](crate::layout::LOW_RAM_MAX_SIZE)).
    pub fn ram_below_4g(&self) -> u64 {
        self.ram_regions
            .iter()
            .filter(|r| r.start.0 < HIGH_RAM_START)
            .map(|r| r.size)
            .sum()
    }

    /// RAM from 4 GiB up, in bytes (0 for a guest whose RAM fits below the hole).
    pub fn ram_above_4g(&self) -> u64 {
        self.ram_size - self.ram_below_4g()
    }

    /// Whether all of `addr..addr + size` is guest RAM (false for an empty or wrapping range).
    pub fn is_ram(&self, addr: GuestAddress, size: u64) -> bool {
        let range = AddressRange::new(addr, size);
        range.last().is_some() && self.ram_regions.iter().any(|r| r.contains_range(&range))
    }

    /// The memory map to report to the guest (e820 style): sorted, non-overlapping, covering all
    /// RAM plus the reserved ranges of the hole. The MMIO windows are gaps.
    pub fn memory_map(&self) -> &[MemoryMapEntry] {
        &self.memory_map
    }

    /// Marks `size` bytes of RAM from `addr` as `kind` in the memory map, e.g. the pages boot code
    /// filled with ACPI tables ([`MemoryKind::Acpi`]) or must keep from the guest's allocator
    /// ([`MemoryKind::Reserved`]).
    ///
    /// The range must lie within one RAM region. Entries it overlaps are cut, and touching entries
    /// of equal kind merge. On error the map is unchanged.
    pub fn set_memory_kind(
        &mut self,
        addr: GuestAddress,
        size: u64,
        kind: MemoryKind,
    ) -> Result<(), LayoutError> {
        if !self.is_ram(addr, size) {
            return Err(LayoutError::NotRam { addr: addr.0, size });
        }
        let updated = map::with_kind(
            &self.memory_map,
            &self.ram_regions,
            addr.0,
            addr.0 + size,
            kind,
        );
        if updated.len() > MAX_MEMORY_MAP_ENTRIES {
            return Err(LayoutError::TooManyEntries(MAX_MEMORY_MAP_ENTRIES));
        }
        self.memory_map = updated;
        Ok(())
    }

    /// Where the three pages of the real-mode TSS go (`KVM_SET_TSS_ADDR`).
    pub fn kvm_tss_address(&self) -> GuestAddress {
        GuestAddress(KVM_TSS_START)
    }

    /// Where KVM's identity-map page goes (`KVM_SET_IDENTITY_MAP_ADDR`).
    pub fn kvm_identity_map_address(&self) -> GuestAddress {
        GuestAddress(KVM_IDENTITY_MAP_START)
    }

    /// The window below 4 GiB from which 32-bit MMIO ranges are allocated.
    pub fn mmio32_window(&self) -> AddressRange {
        AddressRange::new(GuestAddress(MMIO32_START), MMIO32_SIZE)
    }

    /// The window above RAM from which 64-bit MMIO ranges are allocated.
    pub fn mmio64_window(&self) -> AddressRange {
        self.mmio64
    }

    /// The window of ports handed out by the port-I/O allocator.
    pub fn pio_window(&self) -> PortRange {
        PortRange::new(PIO_START, PIO_LAST - PIO_START + 1)
    }

    /// The GSIs handed out by the GSI allocator: the IOAPIC pins after the legacy ISA IRQs.
    pub fn gsi_range(&self) -> RangeInclusive<u32> {
        GSI_FIRST..=GSI_LAST
    }

    /// Maps the guest's RAM into the VMM: one anonymous, private, lazily populated mapping per
    /// RAM region, at the region's guest address.
    pub fn create_guest_memory(&self) -> Result<GuestMemoryMmap, MemoryError> {
        let ranges = self
            .ram_regions
            .iter()
            .map(|r| {
                usize::try_from(r.size)
                    .map(|size| (r.start, size))
                    .map_err(|_| MemoryError::HostSize {
                        start: r.start.0,
                        size: r.size,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        GuestMemoryMmap::from_ranges(&ranges).map_err(MemoryError::Mmap)
    }

    /// Fresh allocators for this layout's MMIO32, MMIO64, port-I/O and GSI spaces.
    pub fn allocators(&self) -> Result<Allocators, AllocatorError> {
        Allocators::new(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{
        EBDA_START, HIGH_MEMORY_START, IOAPIC_START, KVM_TSS_SIZE, LAPIC_START, MMIO_HOLE_START,
        PCI_ECAM_START,
    };
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn rejects_sizes_that_do_not_fit() {
        assert_eq!(GuestLayout::new(0), Err(LayoutError::ZeroRamSize));
        assert_eq!(
            GuestLayout::new(16 * MIB + 1),
            Err(LayoutError::UnalignedRamSize(16 * MIB + 1))
        );
        assert_eq!(
            GuestLayout::new(MIB),
            Err(LayoutError::RamTooSmall {
                size: MIB,
                min: MIN_RAM_SIZE
            })
        );
        assert_eq!(
            GuestLayout::new(MIN_RAM_SIZE - PAGE_SIZE),
            Err(LayoutError::RamTooSmall {
                size: MIN_RAM_SIZE - PAGE_SIZE,
                min: MIN_RAM_SIZE
            })
        );
        let max = (1 << 39) - 2 * GIB;
        assert_eq!(GuestLayout::max_ram_size(DEFAULT_PHYS_BITS), max);
        assert_eq!(
            GuestLayout::new(max + PAGE_SIZE),
            Err(LayoutError::RamTooLarge {
                size: max + PAGE_SIZE,
                max,
                phys_bits: 39
            })
        );
        assert!(matches!(
            GuestLayout::new(u64::MAX - 0xfff),
            Err(LayoutError::RamTooLarge { .. })
        ));
    }

    #[test]
    fn rejects_unsupported_phys_bits() {
        for bits in [0, 32, 35, 53, 64, 255] {
            assert_eq!(
                GuestLayout::with_phys_bits(16 * MIB, bits),
                Err(LayoutError::InvalidPhysBits(bits))
            );
            assert_eq!(GuestLayout::max_ram_size(bits), 0);
        }
        assert!(GuestLayout::with_phys_bits(16 * MIB, 36).is_ok());
        assert!(GuestLayout::with_phys_bits(16 * MIB, 52).is_ok());
    }

    #[test]
    fn error_messages_name_the_values() {
        assert_eq!(
            LayoutError::UnalignedRamSize(0x1001).to_string(),
            "guest RAM size 0x1001 is not a multiple of the 4 KiB page size"
        );
        assert_eq!(
            LayoutError::InvalidPhysBits(60).to_string(),
            "physical address width of 60 bits is outside the supported 36..=52"
        );
    }

    #[test]
    fn smallest_guest_is_valid() {
        let layout = GuestLayout::new(MIN_RAM_SIZE).unwrap();
        assert_eq!(layout.ram_size(), MIN_RAM_SIZE);
        assert_eq!(
            layout.ram_regions(),
            &[RamRegion::new(GuestAddress(0), MIN_RAM_SIZE)]
        );
        let usable: Vec<_> = layout
            .memory_map()
            .iter()
            .filter(|e| e.kind == MemoryKind::Ram)
            .map(|e| (e.addr, e.size))
            .collect();
        assert_eq!(usable, vec![(0, EBDA_START), (HIGH_MEMORY_START, MIB)]);
    }

    #[test]
    fn guest_of_exactly_three_gib_has_no_high_ram() {
        let layout = GuestLayout::new(3 * GIB).unwrap();
        assert_eq!(
            layout.ram_regions(),
            &[RamRegion::new(GuestAddress(0), 3 * GIB)]
        );
        assert_eq!(layout.mmio64_window().start, GuestAddress(4 * GIB));
        assert_eq!((layout.ram_below_4g(), layout.ram_above_4g()), (3 * GIB, 0));
    }

    #[test]
    fn large_guest_splits_ram_around_the_hole() {
        let layout = GuestLayout::new(5 * GIB).unwrap();
        assert_eq!(
            layout.ram_regions(),
            &[
                RamRegion::new(GuestAddress(0), 3 * GIB),
                RamRegion::new(GuestAddress(4 * GIB), 2 * GIB),
            ]
        );
        assert_eq!(
            (layout.ram_below_4g(), layout.ram_above_4g()),
            (3 * GIB, 2 * GIB)
        );
        let small = GuestLayout::new(512 * MIB).unwrap();
        assert_eq!((small.ram_below_4g(), small.ram_above_4g()), (512 * MIB, 0));
        let last = layout.memory_map().last().unwrap();
        assert_eq!(
            (last.addr, last.size, last.kind),
            (4 * GIB, 2 * GIB, MemoryKind::Ram)
        );
        let hole = AddressRange::new(GuestAddress(MMIO_HOLE_START), MMIO_HOLE_SIZE);
        assert!(layout.ram_regions().iter().all(|r| !r.overlaps(&hole)));
        assert_eq!(
            layout.mmio64_window(),
            AddressRange::new(GuestAddress(6 * GIB), (1 << 39) - 6 * GIB)
        );
    }

    #[test]
    fn mmio64_window_starts_at_a_gib_boundary_after_ram() {
        let layout = GuestLayout::with_phys_bits(3 * GIB + 4 * MIB, 46).unwrap();
        assert_eq!(layout.phys_bits(), 46);
        assert_eq!(layout.mmio64_window().start, GuestAddress(5 * GIB));
        assert_eq!(layout.mmio64_window().end(), GuestAddress(1 << 46));
        // The largest guest leaves exactly one GiB of MMIO64 window.
        let max = GuestLayout::max_ram_size(36);
        let layout = GuestLayout::with_phys_bits(max, 36).unwrap();
        assert_eq!(
            layout.mmio64_window(),
            AddressRange::new(GuestAddress((1 << 36) - GIB), GIB)
        );
    }

    #[test]
    fn fixed_windows_and_pages() {
        let layout = GuestLayout::new(64 * MIB).unwrap();
        assert_eq!(layout.kvm_tss_address(), GuestAddress(0xFFFB_D000));
        assert_eq!(layout.kvm_identity_map_address(), GuestAddress(0xFFFB_C000));
        assert_eq!(
            layout.mmio32_window(),
            AddressRange::new(GuestAddress(0xD000_0000), IOAPIC_START - 0xD000_0000)
        );
        assert_eq!(layout.pio_window(), PortRange::new(0x1000, 0xF000));
        assert_eq!(layout.gsi_range(), 16..=23);
        // The windows are gaps of the memory map.
        for e in layout.memory_map() {
            let e = AddressRange::new(GuestAddress(e.addr), e.size);
            assert!(!e.overlaps(&layout.mmio32_window()));
            assert!(!e.overlaps(&layout.mmio64_window()));
        }
        // Everything the guest must not touch is reserved.
        for (addr, size) in [
            (PCI_ECAM_START, 256 * MIB),
            (IOAPIC_START, PAGE_SIZE),
            (LAPIC_START, PAGE_SIZE),
            (KVM_TSS_START, KVM_TSS_SIZE),
            (KVM_IDENTITY_MAP_START, PAGE_SIZE),
        ] {
            assert!(layout.memory_map().iter().any(|e| {
                e.kind == MemoryKind::Reserved && e.addr <= addr && addr + size <= e.end()
            }));
        }
    }

    #[test]
    fn is_ram_checks_whole_ranges() {
        let layout = GuestLayout::new(4 * GIB).unwrap();
        assert!(layout.is_ram(GuestAddress(0), 3 * GIB));
        assert!(layout.is_ram(GuestAddress(4 * GIB), GIB));
        assert!(!layout.is_ram(GuestAddress(3 * GIB - 1), 2));
        assert!(!layout.is_ram(GuestAddress(4 * GIB), GIB + 1));
        assert!(!layout.is_ram(GuestAddress(0x1000), 0));
        assert!(!layout.is_ram(GuestAddress(u64::MAX), 2));
    }

    #[test]
    fn set_memory_kind_marks_ram_and_rejects_the_rest() {
        let mut layout = GuestLayout::new(64 * MIB).unwrap();
        layout
            .set_memory_kind(GuestAddress(0x20_0000), 0x3000, MemoryKind::Acpi)
            .unwrap();
        assert!(layout.memory_map().contains(&MemoryMapEntry {
            addr: 0x20_0000,
            size: 0x3000,
            kind: MemoryKind::Acpi
        }));
        let before = layout.clone();
        for (addr, size) in [
            (0x20_0000, 0),
            (64 * MIB - 0x1000, 0x2000),
            (PCI_ECAM_START, 0x1000),
            (u64::MAX, 1),
        ] {
            assert_eq!(
                layout.set_memory_kind(GuestAddress(addr), size, MemoryKind::Reserved),
                Err(LayoutError::NotRam { addr, size })
            );
        }
        assert_eq!(layout, before);
    }

    #[test]
    fn set_memory_kind_limits_the_map_length() {
        let mut layout = GuestLayout::new(64 * MIB).unwrap();
        let mut addr = 0x20_0000;
        let result = loop {
            // Alternate single reserved pages with RAM so nothing merges.
            if let Err(e) = layout.set_memory_kind(GuestAddress(addr), 0x1000, MemoryKind::Nvs) {
                break e;
            }
            addr += 0x2000;
        };
        assert_eq!(result, LayoutError::TooManyEntries(MAX_MEMORY_MAP_ENTRIES));
        assert_eq!(layout.memory_map().len(), MAX_MEMORY_MAP_ENTRIES - 1);
    }

    #[test]
    fn guest_memory_of_a_small_guest() {
        let layout = GuestLayout::new(16 * MIB).unwrap();
        let mem = layout.create_guest_memory().unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(mem.last_addr(), GuestAddress(16 * MIB - 1));
        mem.write_obj(0xdead_beef_u32, GuestAddress(16 * MIB - 4))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(16 * MIB - 4)).unwrap(),
            0xdead_beef
        );
        assert!(mem.write_obj(0u32, GuestAddress(16 * MIB - 2)).is_err());
    }

    #[test]
    fn guest_memory_of_a_large_guest_matches_the_layout() {
        let layout = GuestLayout::new(5 * GIB).unwrap();
        let mem = layout.create_guest_memory().unwrap();
        let regions: Vec<_> = mem
            .iter()
            .map(|r| RamRegion::new(r.start_addr(), r.len()))
            .collect();
        assert_eq!(regions, layout.ram_regions());
        // RAM on both sides of the hole, nothing inside it.
        mem.write_obj(1u8, GuestAddress(3 * GIB - 1)).unwrap();
        mem.write_obj(2u8, GuestAddress(4 * GIB)).unwrap();
        mem.write_obj(3u8, GuestAddress(6 * GIB - 1)).unwrap();
        assert!(mem.write_obj(0u8, GuestAddress(3 * GIB)).is_err());
        assert!(mem.write_obj(0u8, GuestAddress(4 * GIB - 1)).is_err());
        assert!(mem.write_obj(0u8, GuestAddress(6 * GIB)).is_err());
        // Every RAM entry of the map is backed by guest memory.
        for e in layout.memory_map() {
            let backed = mem.check_range(GuestAddress(e.addr), e.size as usize);
            assert_eq!(
                backed,
                e.kind != MemoryKind::Reserved || e.addr < HIGH_MEMORY_START
            );
        }
    }

    #[test]
    fn guest_memory_errors_are_typed() {
        // 2 PiB of RAM is a valid 52-bit layout, but no host has that much address space to map.
        let layout = GuestLayout::with_phys_bits(1 << 51, 52).unwrap();
        match layout.create_guest_memory() {
            Err(MemoryError::Mmap(e)) => assert!(!e.to_string().is_empty()),
            other => panic!("expected an mmap error, got {other:?}"),
        }
    }
}
