//! [`Allocators`]: MMIO32, MMIO64, port-I/O and GSI allocation for one guest.

use std::collections::BTreeMap;
use std::fmt;

use vm_allocator::{AddressAllocator, AllocPolicy, IdAllocator, RangeInclusive};
use vm_memory::GuestAddress;

use crate::guest_layout::GuestLayout;
use crate::range::{AddressRange, PortRange};

/// The resource an allocator hands out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    /// Guest physical addresses in the MMIO32 window.
    Mmio32,
    /// Guest physical addresses in the MMIO64 window.
    Mmio64,
    /// Ports in the port-I/O window.
    Pio,
    /// Global system interrupts routed through the IOAPIC.
    Gsi,
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResourceKind::Mmio32 => "MMIO32",
            ResourceKind::Mmio64 => "MMIO64",
            ResourceKind::Pio => "port I/O",
            ResourceKind::Gsi => "GSI",
        })
    }
}

/// Errors of the allocators.
#[derive(Debug, Clone, PartialEq, Eq, displaydoc::Display, thiserror::Error)]
#[ignore_extra_doc_attributes]
pub enum AllocatorError {
    /// cannot allocate an empty {0} range
    ///
    /// An empty range was requested.
    ZeroSize(ResourceKind),
    /// {kind} alignment {align:#x} is not a power of two
    InvalidAlignment {
        /// The address space.
        kind: ResourceKind,
        /// The requested alignment.
        align: u64,
    },
    /// no free {kind} range of {size:#x} units aligned to {align:#x}
    ///
    /// No free range of the requested size and alignment is left in the window.
    OutOfSpace {
        /// The address space.
        kind: ResourceKind,
        /// The requested size.
        size: u64,
        /// The requested alignment.
        align: u64,
    },
    /// {kind} range {start:#x}+{size:#x} is outside the window or already allocated
    ///
    /// A fixed range leaves the window or overlaps an allocated range.
    Unavailable {
        /// The address space.
        kind: ResourceKind,
        /// First unit of the requested range.
        start: u64,
        /// Size of the requested range.
        size: u64,
    },
    /// {kind} range {start:#x}+{size:#x} is not allocated
    ///
    /// The range to free is not exactly one live allocation.
    NotAllocated {
        /// The address space.
        kind: ResourceKind,
        /// First unit of the range.
        start: u64,
        /// Size of the range.
        size: u64,
    },
    /// no free GSI is left
    ///
    /// Every GSI of the IOAPIC pins after the legacy IRQs is allocated.
    GsiExhausted,
    /// GSI {0} is not allocated
    ///
    /// The GSI to free is not allocated.
    GsiNotAllocated(u32),
    /// {kind} allocator failed
    ///
    /// The underlying allocator failed where the bookkeeping said it could not.
    Backend {
        /// The address space.
        kind: ResourceKind,
        /// The allocator's error.
        source: vm_allocator::Error,
    },
}

/// First-fit allocation of ranges in one window, on `vm_allocator::AddressAllocator`.
///
/// Two properties of `AddressAllocator` (vm-allocator 0.1.4) shape this wrapper:
/// - It finds interval-tree nodes by probing two-unit ranges (`start..=start + 1` for an exact
///   placement, `start - 2..=start - 1` and `end + 1..=end + 2` for merging a freed range with
///   its free neighbours), so a one-unit node is invisible to those probes: the last free unit of
///   a run cannot be placed exactly, and a freed range next to a one-unit gap is never merged with
///   it, fragmenting the window for good. The inner allocator therefore works in half units: unit
///   `u` is `2u..=2u + 1`, every node has an even start and an even length of at least two, and
///   every probe lands in the node it means.
/// - Its `free` deletes whatever node has the given key, free or allocated, and its exact
///   placement does not check that the node it splits is free. `live` records every allocation
///   so that only a live allocation is ever freed and a fixed range is placed only over free
///   space; it is also what the error paths are decided on.
#[derive(Clone, Debug)]
struct WindowAllocator {
    kind: ResourceKind,
    base: u64,
    size: u64,
    inner: AddressAllocator,
    /// Live allocations: start → size, in units.
    live: BTreeMap<u64, u64>,
}

impl WindowAllocator {
    fn new(kind: ResourceKind, base: u64, size: u64) -> Result<Self, AllocatorError> {
        let backend = |source| AllocatorError::Backend { kind, source };
        let overflow = backend(vm_allocator::Error::Overflow);
        let inner_base = base.checked_mul(2).ok_or(overflow.clone())?;
        let inner_size = size.checked_mul(2).ok_or(overflow)?;
        let inner = AddressAllocator::new(inner_base, inner_size).map_err(backend)?;
        Ok(WindowAllocator {
            kind,
            base,
            size,
            inner,
            live: BTreeMap::new(),
        })
    }

    /// The lowest free range of `size` units whose start is a multiple of `align`.
    fn allocate(&mut self, size: u64, align: u64) -> Result<u64, AllocatorError> {
        let kind = self.kind;
        if size == 0 {
            return Err(AllocatorError::ZeroSize(kind));
        }
        if !align.is_power_of_two() {
            return Err(AllocatorError::InvalidAlignment { kind, align });
        }
        let out_of_space = AllocatorError::OutOfSpace { kind, size, align };
        // An alignment of 2^63 or more has no multiple inside any window (none starts at 0).
        let (Some(inner_size), Some(inner_align)) = (size.checked_mul(2), align.checked_mul(2))
        else {
            return Err(out_of_space);
        };
        if size > self.size {
            return Err(out_of_space);
        }
        match self
            .inner
            .allocate(inner_size, inner_align, AllocPolicy::FirstMatch)
        {
            Ok(range) => {
                let start = range.start() / 2;
                self.live.insert(start, size);
                Ok(start)
            }
            Err(vm_allocator::Error::ResourceNotAvailable) => Err(out_of_space),
            Err(source) => Err(AllocatorError::Backend { kind, source }),
        }
    }

    /// Whether `start..start + size` lies in the window and overlaps no live allocation.
    fn is_free(&self, start: u64, size: u64) -> bool {
        let Some(end) = start.checked_add(size) else {
            return false;
        };
        if start < self.base || end > self.base + self.size {
            return false;
        }
        // Only the last allocation starting before `end` can reach into the range.
        match self.live.range(..end).next_back() {
            Some((&s, &len)) => s + len <= start,
            None => true,
        }
    }

    /// Allocates exactly `start..start + size`.
    fn allocate_at(&mut self, start: u64, size: u64) -> Result<u64, AllocatorError> {
        let kind = self.kind;
        if size == 0 {
            return Err(AllocatorError::ZeroSize(kind));
        }
        if !self.is_free(start, size) {
            return Err(AllocatorError::Unavailable { kind, start, size });
        }
        // In range and free, so both products fit (the window's end does).
        self.inner
            .allocate(size * 2, 1, AllocPolicy::ExactMatch(start * 2))
            .map_err(|source| AllocatorError::Backend { kind, source })?;
        self.live.insert(start, size);
        Ok(start)
    }

    /// Frees the live allocation `start..start + size`.
    fn free(&mut self, start: u64, size: u64) -> Result<(), AllocatorError> {
        let kind = self.kind;
        if self.live.get(&start) != Some(&size) {
            return Err(AllocatorError::NotAllocated { kind, start, size });
        }
        let backend = |source| AllocatorError::Backend { kind, source };
        // A live allocation lies in the window, so the half-unit range is valid.
        let key = RangeInclusive::new(start * 2, (start + size) * 2 - 1).map_err(backend)?;
        self.inner.free(&key).map_err(backend)?;
        self.live.remove(&start);
        Ok(())
    }
}

/// The allocators of one guest: ranges of the MMIO32 and MMIO64 windows, ports of the port-I/O
/// window (`0x1000..=0xFFFF`) and GSIs of the IOAPIC pins after the legacy ISA IRQs (`16..=23`).
///
/// Ranges are placed first-fit (the lowest free range with the requested alignment) or at a fixed
/// address, and only inside their window, so they never cover RAM, ECAM, the IOAPIC, the LAPIC or
/// the KVM pages. A range is freed by passing back exactly what was allocated; anything else is an
/// error and changes nothing.
#[derive(Clone, Debug)]
pub struct Allocators {
    mmio32: WindowAllocator,
    mmio64: WindowAllocator,
    pio: WindowAllocator,
    gsi: IdAllocator,
}

impl Allocators {
    /// Fresh allocators over the windows of `layout`, with nothing allocated.
    pub fn new(layout: &GuestLayout) -> Result<Self, AllocatorError> {
        let mmio32 = layout.mmio32_window();
        let mmio64 = layout.mmio64_window();
        let pio = layout.pio_window();
        let gsi = layout.gsi_range();
        Ok(Allocators {
            mmio32: WindowAllocator::new(ResourceKind::Mmio32, mmio32.start.0, mmio32.size)?,
            mmio64: WindowAllocator::new(ResourceKind::Mmio64, mmio64.start.0, mmio64.size)?,
            pio: WindowAllocator::new(ResourceKind::Pio, pio.start.into(), pio.size.into())?,
            gsi: IdAllocator::new(*gsi.start(), *gsi.end()).map_err(|source| {
                AllocatorError::Backend {
                    kind: ResourceKind::Gsi,
                    source,
                }
            })?,
        })
    }

    /// The window MMIO32 ranges are allocated from.
    pub fn mmio32_window(&self) -> AddressRange {
        AddressRange::new(GuestAddress(self.mmio32.base), self.mmio32.size)
    }

    /// The window MMIO64 ranges are allocated from.
    pub fn mmio64_window(&self) -> AddressRange {
        AddressRange::new(GuestAddress(self.mmio64.base), self.mmio64.size)
    }

    /// The window ports are allocated from.
    pub fn pio_window(&self) -> PortRange {
        // The window is the one built from `PortRange` in `new`, so both values fit.
        PortRange::new(self.pio.base as u16, self.pio.size as u16)
    }

    /// Allocates the lowest free `size` bytes of the MMIO32 window aligned to `align` (a power of
    /// two; a BAR's alignment is its size).
    pub fn allocate_mmio32(
        &mut self,
        size: u64,
        align: u64,
    ) -> Result<AddressRange, AllocatorError> {
        let start = self.mmio32.allocate(size, align)?;
        Ok(AddressRange::new(GuestAddress(start), size))
    }

    /// Allocates exactly `size` bytes of the MMIO32 window from `start`.
    pub fn allocate_mmio32_at(
        &mut self,
        start: GuestAddress,
        size: u64,
    ) -> Result<AddressRange, AllocatorError> {
        self.mmio32.allocate_at(start.0, size)?;
        Ok(AddressRange::new(start, size))
    }

    /// Frees an MMIO32 range returned by an allocation.
    pub fn free_mmio32(&mut self, range: AddressRange) -> Result<(), AllocatorError> {
        self.mmio32.free(range.start.0, range.size)
    }

    /// Allocates the lowest free `size` bytes of the MMIO64 window aligned to `align` (a power of
    /// two).
    pub fn allocate_mmio64(
        &mut self,
        size: u64,
        align: u64,
    ) -> Result<AddressRange, AllocatorError> {
        let start = self.mmio64.allocate(size, align)?;
        Ok(AddressRange::new(GuestAddress(start), size))
    }

    /// Allocates exactly `size` bytes of the MMIO64 window from `start`.
    pub fn allocate_mmio64_at(
        &mut self,
        start: GuestAddress,
        size: u64,
    ) -> Result<AddressRange, AllocatorError> {
        self.mmio64.allocate_at(start.0, size)?;
        Ok(AddressRange::new(start, size))
    }

    /// Frees an MMIO64 range returned by an allocation.
    pub fn free_mmio64(&mut self, range: AddressRange) -> Result<(), AllocatorError> {
        self.mmio64.free(range.start.0, range.size)
    }

    /// Allocates the lowest `size` free ports aligned to `align` (a power of two).
    pub fn allocate_pio(&mut self, size: u16, align: u16) -> Result<PortRange, AllocatorError> {
        let start = self.pio.allocate(size.into(), align.into())?;
        // The window ends at 0x10000, so a range in it starts below that.
        Ok(PortRange::new(start as u16, size))
    }

    /// Allocates exactly `size` ports from `start`.
    pub fn allocate_pio_at(&mut self, start: u16, size: u16) -> Result<PortRange, AllocatorError> {
        self.pio.allocate_at(start.into(), size.into())?;
        Ok(PortRange::new(start, size))
    }

    /// Frees a port range returned by an allocation.
    pub fn free_pio(&mut self, range: PortRange) -> Result<(), AllocatorError> {
        self.pio.free(range.start.into(), range.size.into())
    }

    /// Allocates a GSI from the IOAPIC pins after the legacy ISA IRQs (the lowest free one).
    pub fn allocate_gsi(&mut self) -> Result<u32, AllocatorError> {
        self.gsi.allocate_id().map_err(|source| match source {
            vm_allocator::Error::ResourceNotAvailable => AllocatorError::GsiExhausted,
            source => AllocatorError::Backend {
                kind: ResourceKind::Gsi,
                source,
            },
        })
    }

    /// Frees an allocated GSI.
    pub fn free_gsi(&mut self, gsi: u32) -> Result<(), AllocatorError> {
        if !self.gsi.is_allocated(gsi) {
            return Err(AllocatorError::GsiNotAllocated(gsi));
        }
        self.gsi
            .free_id(gsi)
            .map(drop)
            .map_err(|source| AllocatorError::Backend {
                kind: ResourceKind::Gsi,
                source,
            })
    }

    /// Whether `gsi` is currently allocated.
    pub fn is_gsi_allocated(&self, gsi: u32) -> bool {
        self.gsi.is_allocated(gsi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{GSI_FIRST, GSI_LAST, IOAPIC_START, MMIO32_START};

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn allocators() -> Allocators {
        GuestLayout::new(256 * MIB).unwrap().allocators().unwrap()
    }

    #[test]
    fn windows_match_the_layout() {
        let layout = GuestLayout::new(5 * GIB).unwrap();
        let a = Allocators::new(&layout).unwrap();
        assert_eq!(a.mmio32_window(), layout.mmio32_window());
        assert_eq!(a.mmio64_window(), layout.mmio64_window());
        assert_eq!(a.pio_window(), layout.pio_window());
    }

    #[test]
    fn mmio32_first_fit_with_alignment() {
        let mut a = allocators();
        let r1 = a.allocate_mmio32(0x1000, 0x1000).unwrap();
        assert_eq!(r1, AddressRange::new(GuestAddress(MMIO32_START), 0x1000));
        // A 1 MiB BAR is naturally aligned, leaving a gap that a small range then fills.
        let r2 = a.allocate_mmio32(MIB, MIB).unwrap();
        assert_eq!(r2.start, GuestAddress(MMIO32_START + MIB));
        let r3 = a.allocate_mmio32(0x100, 0x10).unwrap();
        assert_eq!(r3.start, GuestAddress(MMIO32_START + 0x1000));
        // Freeing merges the space back: the whole window can be allocated again.
        for r in [r2, r1, r3] {
            a.free_mmio32(r).unwrap();
        }
        let all = a.allocate_mmio32(a.mmio32_window().size, 1).unwrap();
        assert_eq!(all, a.mmio32_window());
        assert_eq!(
            all.end(),
            GuestAddress(IOAPIC_START),
            "the window stops below the IOAPIC"
        );
    }

    #[test]
    fn allocation_errors_are_typed() {
        let mut a = allocators();
        let kind = ResourceKind::Mmio32;
        assert_eq!(a.allocate_mmio32(0, 1), Err(AllocatorError::ZeroSize(kind)));
        assert_eq!(
            a.allocate_mmio32(0x1000, 0),
            Err(AllocatorError::InvalidAlignment { kind, align: 0 })
        );
        assert_eq!(
            a.allocate_mmio32(0x1000, 0x3000),
            Err(AllocatorError::InvalidAlignment {
                kind,
                align: 0x3000
            })
        );
        let too_big = a.mmio32_window().size + 1;
        assert_eq!(
            a.allocate_mmio32(too_big, 1),
            Err(AllocatorError::OutOfSpace {
                kind,
                size: too_big,
                align: 1
            })
        );
        // No multiple of 4 GiB lies in the window.
        assert!(matches!(
            a.allocate_mmio32(0x1000, 4 * GIB),
            Err(AllocatorError::OutOfSpace { .. })
        ));
        assert!(matches!(
            a.allocate_mmio64(0x1000, 1 << 63),
            Err(AllocatorError::OutOfSpace { .. })
        ));
        assert!(matches!(
            a.allocate_mmio64(u64::MAX, 1),
            Err(AllocatorError::OutOfSpace { .. })
        ));
        assert_eq!(
            AllocatorError::ZeroSize(ResourceKind::Pio).to_string(),
            "cannot allocate an empty port I/O range"
        );
    }

    #[test]
    fn window_fills_up_and_frees() {
        let mut a = allocators();
        let size = a.mmio32_window().size;
        let half = a.allocate_mmio32(size / 2, 1).unwrap();
        assert!(matches!(
            a.allocate_mmio32(size / 2 + 1, 1),
            Err(AllocatorError::OutOfSpace { .. })
        ));
        let rest = a.allocate_mmio32(size - size / 2, 1).unwrap();
        assert_eq!(rest.end(), a.mmio32_window().end());
        a.free_mmio32(half).unwrap();
        assert_eq!(a.allocate_mmio32(size / 2, 1).unwrap(), half);
    }

    #[test]
    fn fixed_allocation() {
        let mut a = allocators();
        let at = GuestAddress(MMIO32_START + 0x10_0000);
        assert_eq!(
            a.allocate_mmio32_at(at, 0x1000).unwrap(),
            AddressRange::new(at, 0x1000)
        );
        let kind = ResourceKind::Mmio32;
        // Overlapping, outside the window, wrapping, empty.
        for (start, size) in [
            (at.0, 1),
            (at.0 - 1, 2),
            (at.0 + 0xfff, 0x10),
            (MMIO32_START - 0x1000, 0x1000),
            (MMIO32_START - 1, 2),
            (IOAPIC_START, 0x1000),
            (IOAPIC_START - 1, 2),
            (u64::MAX, 2),
        ] {
            assert_eq!(
                a.allocate_mmio32_at(GuestAddress(start), size),
                Err(AllocatorError::Unavailable { kind, start, size }),
                "{start:#x}+{size:#x}"
            );
        }
        assert_eq!(
            a.allocate_mmio32_at(at, 0),
            Err(AllocatorError::ZeroSize(kind))
        );
        // Directly next to the live range on both sides works.
        a.allocate_mmio32_at(GuestAddress(at.0 - 1), 1).unwrap();
        a.allocate_mmio32_at(GuestAddress(at.0 + 0x1000), 1)
            .unwrap();
        // First fit uses the space below the fixed ranges if the request fits there.
        let r = a.allocate_mmio32(0x1000, 0x1000).unwrap();
        assert_eq!(r.start, GuestAddress(MMIO32_START));
        let r = a.allocate_mmio32(0x10_0000, 0x10_0000).unwrap();
        assert_eq!(r.start, GuestAddress(MMIO32_START + 0x20_0000));
    }

    #[test]
    fn last_unit_of_a_free_run_can_be_placed_exactly() {
        // Raw vm-allocator 0.1.4 cannot place the last free unit of a run exactly.
        let mut raw = AddressAllocator::new(0x1000, 0x10).unwrap();
        assert!(raw.allocate(1, 1, AllocPolicy::ExactMatch(0x100f)).is_err());

        let mut a = allocators();
        let w = a.pio_window();
        assert_eq!(
            a.allocate_pio_at(0xffff, 1).unwrap(),
            PortRange::new(0xffff, 1)
        );
        a.allocate_pio_at(w.start, 1).unwrap();
        a.allocate_pio_at(w.start + 2, 1).unwrap();
        // The one-port gap between two live ports.
        a.allocate_pio_at(w.start + 1, 1).unwrap();
        assert_eq!(
            a.allocate_pio(1, 1).unwrap(),
            PortRange::new(w.start + 3, 1)
        );
    }

    #[test]
    fn free_merges_with_a_one_unit_neighbour() {
        let mut a = allocators();
        let p0 = a.allocate_pio(1, 1).unwrap();
        let p1 = a.allocate_pio(8, 1).unwrap();
        let rest = a.allocate_pio(0xF000 - 9, 1).unwrap();
        a.free_pio(p0).unwrap();
        a.free_pio(p1).unwrap();
        // The freed one-port and eight-port ranges form one free run of nine ports.
        assert_eq!(a.allocate_pio(9, 1).unwrap(), PortRange::new(0x1000, 9));
        a.free_pio(rest).unwrap();
    }

    #[test]
    fn free_rejects_what_is_not_a_live_allocation() {
        let mut a = allocators();
        let r = a.allocate_mmio32(0x2000, 0x1000).unwrap();
        let kind = ResourceKind::Mmio32;
        for bad in [
            AddressRange::new(r.start, 0x1000),
            AddressRange::new(GuestAddress(r.start.0 + 0x1000), 0x1000),
            AddressRange::new(r.end(), 0x1000),
            AddressRange::new(GuestAddress(0), 0x1000),
            AddressRange::new(r.start, 0),
        ] {
            assert_eq!(
                a.free_mmio32(bad),
                Err(AllocatorError::NotAllocated {
                    kind,
                    start: bad.start.0,
                    size: bad.size
                })
            );
        }
        // The free remainder of the window is not an allocation either.
        let free_tail = AddressRange::new(r.end(), a.mmio32_window().end().0 - r.end().0);
        assert!(a.free_mmio32(free_tail).is_err());
        a.free_mmio32(r).unwrap();
        assert!(a.free_mmio32(r).is_err(), "double free");
        assert_eq!(a.allocate_mmio32(0x2000, 0x1000).unwrap(), r);
    }

    #[test]
    fn mmio64_allocates_above_ram() {
        let layout = GuestLayout::new(5 * GIB).unwrap();
        let mut a = layout.allocators().unwrap();
        let bar = a.allocate_mmio64(GIB, GIB).unwrap();
        assert_eq!(bar.start, GuestAddress(6 * GIB));
        let fixed = a.allocate_mmio64_at(GuestAddress(8 * GIB), 0x1000).unwrap();
        assert!(a.allocate_mmio64_at(GuestAddress(5 * GIB), 0x1000).is_err());
        a.free_mmio64(fixed).unwrap();
        a.free_mmio64(bar).unwrap();
        assert!(a.free_mmio64(bar).is_err());
        let top = a.mmio64_window().end().0;
        assert_eq!(
            a.allocate_mmio64_at(GuestAddress(top - 0x1000), 0x1000)
                .unwrap()
                .end(),
            GuestAddress(1 << 39)
        );
    }

    #[test]
    fn pio_allocates_above_the_legacy_ports() {
        let mut a = allocators();
        let r = a.allocate_pio(0x20, 0x20).unwrap();
        assert_eq!(r, PortRange::new(0x1000, 0x20));
        assert_eq!(
            a.allocate_pio_at(0x3f8, 8),
            Err(AllocatorError::Unavailable {
                kind: ResourceKind::Pio,
                start: 0x3f8,
                size: 8
            })
        );
        assert_eq!(
            a.allocate_pio(0, 1),
            Err(AllocatorError::ZeroSize(ResourceKind::Pio))
        );
        a.free_pio(r).unwrap();
        assert!(a.free_pio(r).is_err());
        let all = a.allocate_pio(0xF000, 1).unwrap();
        assert_eq!(all.end(), 0x1_0000);
        assert!(a.allocate_pio(1, 1).is_err());
    }

    #[test]
    fn gsis_are_the_ioapic_pins_after_the_legacy_irqs() {
        let mut a = allocators();
        let gsis: Vec<u32> = (GSI_FIRST..=GSI_LAST)
            .map(|_| a.allocate_gsi().unwrap())
            .collect();
        assert_eq!(gsis, (16..=23).collect::<Vec<_>>());
        assert_eq!(a.allocate_gsi(), Err(AllocatorError::GsiExhausted));
        assert!(a.is_gsi_allocated(20));
        a.free_gsi(20).unwrap();
        assert!(!a.is_gsi_allocated(20));
        assert_eq!(a.free_gsi(20), Err(AllocatorError::GsiNotAllocated(20)));
        assert_eq!(a.free_gsi(4), Err(AllocatorError::GsiNotAllocated(4)));
        assert_eq!(a.free_gsi(24), Err(AllocatorError::GsiNotAllocated(24)));
        assert_eq!(a.allocate_gsi(), Ok(20));
    }

    #[test]
    fn unallocated_gsi_cannot_be_freed() {
        let mut a = allocators();
        assert_eq!(a.free_gsi(16), Err(AllocatorError::GsiNotAllocated(16)));
        assert_eq!(a.allocate_gsi(), Ok(16));
    }

    #[test]
    fn backend_errors_are_reported() {
        // A window that wraps cannot be built; the error is typed, not a panic.
        assert!(matches!(
            WindowAllocator::new(ResourceKind::Mmio64, 1 << 63, 1),
            Err(AllocatorError::Backend { .. })
        ));
        assert!(matches!(
            WindowAllocator::new(ResourceKind::Mmio64, 0x1000, 1 << 63),
            Err(AllocatorError::Backend { .. })
        ));
        assert!(matches!(
            WindowAllocator::new(ResourceKind::Mmio64, 0x1000, 0),
            Err(AllocatorError::Backend { .. })
        ));
        let e = AllocatorError::Backend {
            kind: ResourceKind::Gsi,
            source: vm_allocator::Error::Overflow,
        };
        assert!(e.to_string().starts_with("GSI allocator failed"));
    }

    #[test]
    fn clones_are_independent() {
        let mut a = allocators();
        let b = a.clone();
        a.allocate_gsi().unwrap();
        assert!(a.is_gsi_allocated(16));
        assert!(!b.is_gsi_allocated(16));
    }
}
