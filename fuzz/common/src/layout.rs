//! Fuzz surface `layout_allocators`: a [`GuestLayout`] built from an arbitrary RAM size and
//! physical address width, then an arbitrary sequence of allocations, fixed allocations and frees
//! on its four allocators (MMIO32, MMIO64, port I/O, GSI) and memory-map changes, each checked
//! against a naive model.
//!
//! Checked: a layout is refused exactly when the model says the size or width is invalid, with
//! the model's error; a valid layout's RAM regions are the expected ones, its memory map is
//! sorted, disjoint, tiles RAM exactly and reserves ECAM, IOAPIC, LAPIC and the KVM pages, and
//! its windows are gaps of the map. Every allocation returns exactly the model's first fit (the
//! lowest free aligned range) or the model's error; fixed allocations succeed exactly when the
//! range is free and inside the window; allocated ranges stay inside their window, never overlap
//! each other, RAM or any memory-map entry (so never the reserved pages); frees succeed exactly
//! for live allocations; after freeing everything the whole window is one free range again.
//!
//! The input is a header and a sequence of [`Op`]s in a small byte format (tags and
//! little-endian integers, read with `arbitrary`'s primitives), so [`encode`] can write seeds that
//! decode to exactly the intended input.

use std::collections::{BTreeMap, BTreeSet};

use arbitrary::{Arbitrary, Unstructured};
use vmkit_memory::vm_memory::GuestAddress;
use vmkit_memory::{
    AddressRange, AllocatorError, Allocators, GuestLayout, LayoutError, MemoryKind, PortRange,
    ResourceKind, layout,
};

/// Most operations taken from one input.
pub const MAX_OPS: usize = 256;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// The physical address width the layout is built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhysBits {
    /// `GuestLayout::new` (the default width).
    Default,
    /// `GuestLayout::with_phys_bits` with a supported width, `36..=52`.
    Supported(u8),
    /// `GuestLayout::with_phys_bits` with any width `0..=127`.
    Raw(u8),
}

/// The RAM size, in encodings that reach the interesting sizes with few bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RamSize {
    /// `n` × 2 MiB.
    Mib2(u16),
    /// `n` × 4 KiB.
    Pages(u32),
    /// Any byte count.
    Bytes(u64),
    /// 3 GiB (the start of the hole) plus `n` × 4 KiB, `n` signed.
    NearHole(i16),
}

impl RamSize {
    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        match self {
            RamSize::Mib2(n) => u64::from(n) * 2 * MIB,
            RamSize::Pages(n) => u64::from(n) * 4 * KIB,
            RamSize::Bytes(n) => n,
            RamSize::NearHole(n) => (3 * GIB).wrapping_add_signed(i64::from(n) * 4096),
        }
    }
}

/// A 64-bit quantity as `mantissa << (shift % 64)`: small inputs reach every magnitude.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scaled {
    /// The significant bits.
    pub mantissa: u32,
    /// The shift (taken modulo 64; bit 7 is the sign of an [`Op::AllocateAt`] offset).
    pub shift: u8,
}

impl Scaled {
    /// `mantissa << shift`.
    pub const fn new(mantissa: u32, shift: u8) -> Self {
        Scaled { mantissa, shift }
    }

    /// The value (bits shifted past 64 are lost).
    pub fn value(self) -> u64 {
        u64::from(self.mantissa) << (self.shift & 63)
    }

    /// `base` moved by the value: down if bit 7 of the shift is set, up otherwise (wrapping).
    pub fn offset(self, base: u64) -> u64 {
        if self.shift & 0x80 != 0 {
            base.wrapping_sub(self.value())
        } else {
            base.wrapping_add(self.value())
        }
    }
}

/// One of the three range allocators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    /// The MMIO32 window.
    Mmio32,
    /// The MMIO64 window.
    Mmio64,
    /// The port-I/O window (sizes, alignments and addresses truncated to 16 bits).
    Pio,
}

impl Space {
    fn index(self) -> usize {
        match self {
            Space::Mmio32 => 0,
            Space::Mmio64 => 1,
            Space::Pio => 2,
        }
    }

    fn kind(self) -> ResourceKind {
        match self {
            Space::Mmio32 => ResourceKind::Mmio32,
            Space::Mmio64 => ResourceKind::Mmio64,
            Space::Pio => ResourceKind::Pio,
        }
    }
}

/// Which range a free names, relative to a live allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreeTarget {
    /// Exactly the allocation.
    Exact,
    /// One unit longer.
    Longer,
    /// One unit shorter (possibly empty).
    Shorter,
    /// Starting one unit later.
    Shifted,
}

/// One step of a fuzz input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// First-fit allocation.
    Allocate {
        /// Which allocator.
        space: Space,
        /// Requested size.
        size: Scaled,
        /// Alignment: `1 << n` for `n < 64`, else `n` itself (0 for 64), mostly not a power of
        /// two.
        align: u8,
    },
    /// Fixed allocation at the window's start moved by `offset`.
    AllocateAt {
        /// Which allocator.
        space: Space,
        /// Where, relative to the window's start.
        offset: Scaled,
        /// Requested size.
        size: Scaled,
    },
    /// Free a range derived from the `pick`-th live allocation (or from the window's start when
    /// there is none).
    Free {
        /// Which allocator.
        space: Space,
        /// Which live allocation, modulo their count, in address order.
        pick: u8,
        /// How the freed range relates to it.
        target: FreeTarget,
    },
    /// Free every live allocation, allocate the whole window, and free it again.
    Drain {
        /// Which allocator.
        space: Space,
    },
    /// Allocate a GSI.
    AllocateGsi,
    /// Free a GSI.
    FreeGsi(u8),
    /// Change the memory-map kind of a range.
    SetMemoryKind {
        /// First address.
        addr: Scaled,
        /// Length.
        size: Scaled,
        /// The new kind.
        kind: MemoryKind,
    },
}

/// A whole fuzz input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    /// Physical address width.
    pub phys_bits: PhysBits,
    /// RAM size.
    pub ram_size: RamSize,
    /// The operations, at most [`MAX_OPS`].
    pub ops: Vec<Op>,
}

const OP_KINDS: u8 = 7;
const KINDS: [MemoryKind; 4] = [
    MemoryKind::Ram,
    MemoryKind::Reserved,
    MemoryKind::Acpi,
    MemoryKind::Nvs,
];

fn read_scaled(u: &mut Unstructured<'_>) -> arbitrary::Result<Scaled> {
    let shift = u8::arbitrary(u)?;
    let mantissa = u32::arbitrary(u)?;
    Ok(Scaled { mantissa, shift })
}

fn encode_scaled(s: Scaled, out: &mut Vec<u8>) {
    out.push(s.shift);
    out.extend_from_slice(&s.mantissa.to_le_bytes());
}

impl<'a> Arbitrary<'a> for Op {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let tag = u8::arbitrary(u)?;
        let space = match tag & 3 {
            0 => Space::Mmio32,
            1 => Space::Mmio64,
            _ => Space::Pio,
        };
        Ok(match (tag >> 2) % OP_KINDS {
            0 => Op::Allocate {
                space,
                size: read_scaled(u)?,
                align: u8::arbitrary(u)?,
            },
            1 => Op::AllocateAt {
                space,
                offset: read_scaled(u)?,
                size: read_scaled(u)?,
            },
            2 => Op::Free {
                space,
                pick: u8::arbitrary(u)?,
                target: match u8::arbitrary(u)? & 3 {
                    0 => FreeTarget::Exact,
                    1 => FreeTarget::Longer,
                    2 => FreeTarget::Shorter,
                    _ => FreeTarget::Shifted,
                },
            },
            3 => Op::Drain { space },
            4 => Op::AllocateGsi,
            5 => Op::FreeGsi(u8::arbitrary(u)?),
            _ => Op::SetMemoryKind {
                addr: read_scaled(u)?,
                size: read_scaled(u)?,
                kind: KINDS[usize::from(u8::arbitrary(u)? & 3)],
            },
        })
    }
}

impl Op {
    /// Appends the bytes that [`Op::arbitrary`] reads back as this operation.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let tag = |kind: u8, space: Space| (kind << 2) | space.index() as u8;
        match *self {
            Op::Allocate { space, size, align } => {
                out.push(tag(0, space));
                encode_scaled(size, out);
                out.push(align);
            }
            Op::AllocateAt {
                space,
                offset,
                size,
            } => {
                out.push(tag(1, space));
                encode_scaled(offset, out);
                encode_scaled(size, out);
            }
            Op::Free {
                space,
                pick,
                target,
            } => {
                out.extend_from_slice(&[tag(2, space), pick, target as u8]);
            }
            Op::Drain { space } => out.push(tag(3, space)),
            Op::AllocateGsi => out.push(tag(4, Space::Mmio32)),
            Op::FreeGsi(gsi) => out.extend_from_slice(&[tag(5, Space::Mmio32), gsi]),
            Op::SetMemoryKind { addr, size, kind } => {
                out.push(tag(6, Space::Mmio32));
                encode_scaled(addr, out);
                encode_scaled(size, out);
                out.push(kind.e820_type() as u8 - 1);
            }
        }
    }
}

/// The input in `data`: a header of the physical width and RAM size, then at most [`MAX_OPS`]
/// operations.
pub fn parse(data: &[u8]) -> Input {
    let mut u = Unstructured::new(data);
    // Reading integers never fails: missing bytes read as zeros.
    let bits = u8::arbitrary(&mut u).unwrap_or(0);
    let phys_bits = match bits {
        0 => PhysBits::Default,
        1..=0x7f => PhysBits::Supported(36 + (bits - 1) % 17),
        _ => PhysBits::Raw(bits & 0x7f),
    };
    let ram_size = match u8::arbitrary(&mut u).unwrap_or(0) & 3 {
        0 => RamSize::Mib2(u16::arbitrary(&mut u).unwrap_or(0)),
        1 => RamSize::Pages(u32::arbitrary(&mut u).unwrap_or(0)),
        2 => RamSize::Bytes(u64::arbitrary(&mut u).unwrap_or(0)),
        _ => RamSize::NearHole(i16::arbitrary(&mut u).unwrap_or(0)),
    };
    let ops = crate::ops::decode(&mut u, MAX_OPS, Op::arbitrary);
    Input {
        phys_bits,
        ram_size,
        ops,
    }
}

/// The bytes that [`parse`] reads back as `input` (for widths and sizes in their canonical
/// ranges: `Supported(36..=52)`, `Raw(0..=127)`).
pub fn encode(input: &Input) -> Vec<u8> {
    let mut out = Vec::new();
    out.push(match input.phys_bits {
        PhysBits::Default => 0,
        PhysBits::Supported(bits) => bits - 35,
        PhysBits::Raw(bits) => 0x80 | bits,
    });
    match input.ram_size {
        RamSize::Mib2(n) => {
            out.push(0);
            out.extend_from_slice(&n.to_le_bytes());
        }
        RamSize::Pages(n) => {
            out.push(1);
            out.extend_from_slice(&n.to_le_bytes());
        }
        RamSize::Bytes(n) => {
            out.push(2);
            out.extend_from_slice(&n.to_le_bytes());
        }
        RamSize::NearHole(n) => {
            out.push(3);
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
    for op in &input.ops {
        op.encode(&mut out);
    }
    out
}

/// The error a layout of `ram_size` bytes and `phys_bits` bits must be refused with, if any.
fn expected_layout_error(ram_size: u64, phys_bits: u8) -> Option<LayoutError> {
    if !(36..=52).contains(&phys_bits) {
        return Some(LayoutError::InvalidPhysBits(phys_bits));
    }
    if ram_size == 0 {
        return Some(LayoutError::ZeroRamSize);
    }
    if !ram_size.is_multiple_of(4 * KIB) {
        return Some(LayoutError::UnalignedRamSize(ram_size));
    }
    if ram_size < 2 * MIB {
        return Some(LayoutError::RamTooSmall {
            size: ram_size,
            min: 2 * MIB,
        });
    }
    // Everything but the hole and a 1 GiB MMIO64 window.
    let max = (1u64 << phys_bits) - 2 * GIB;
    (ram_size > max).then_some(LayoutError::RamTooLarge {
        size: ram_size,
        max,
        phys_bits,
    })
}

fn entry_range(addr: u64, size: u64) -> AddressRange {
    AddressRange::new(GuestAddress(addr), size)
}

/// Checks every structural invariant of a valid layout of `ram_size` bytes.
fn check_layout(l: &GuestLayout, ram_size: u64) {
    let low = ram_size.min(3 * GIB);
    let mut want = vec![entry_range(0, low)];
    if ram_size > low {
        want.push(entry_range(4 * GIB, ram_size - low));
    }
    assert_eq!(l.ram_regions(), want.as_slice());
    assert_eq!(l.ram_size(), ram_size);

    let map = l.memory_map();
    assert!(map.len() <= layout::MAX_MEMORY_MAP_ENTRIES);
    for pair in map.windows(2) {
        assert!(
            pair[0].end() <= pair[1].addr,
            "unsorted or overlapping {pair:?}"
        );
    }
    for e in map {
        assert!(e.size > 0, "empty entry {e:?}");
        let r = entry_range(e.addr, e.size);
        let in_ram = l.ram_regions().iter().any(|ram| ram.contains_range(&r));
        assert!(
            in_ram || e.kind == MemoryKind::Reserved,
            "{e:?} outside RAM"
        );
        assert!(
            in_ram || l.ram_regions().iter().all(|ram| !ram.overlaps(&r)),
            "{e:?} straddles RAM"
        );
    }
    // The entries in each RAM region tile it.
    for ram in l.ram_regions() {
        let mut cursor = ram.start.0;
        for e in map.iter().filter(|e| ram.contains(GuestAddress(e.addr))) {
            assert_eq!(e.addr, cursor, "gap in RAM before {e:?}");
            cursor = e.end();
        }
        assert_eq!(cursor, ram.end().0, "RAM not covered to its end");
    }
    let reserved = |addr: u64, size: u64| {
        map.iter()
            .any(|e| e.kind == MemoryKind::Reserved && e.addr <= addr && addr + size <= e.end())
    };
    assert!(reserved(0xC000_0000, 256 * MIB), "ECAM");
    assert!(reserved(0xFEC0_0000, 4 * KIB), "IOAPIC");
    assert!(reserved(0xFEE0_0000, 4 * KIB), "LAPIC");
    assert!(reserved(l.kvm_identity_map_address().0, 4 * KIB), "KVM map");
    assert!(reserved(l.kvm_tss_address().0, 12 * KIB), "KVM TSS");

    let top = 1u64 << l.phys_bits();
    for w in [l.mmio32_window(), l.mmio64_window()] {
        assert!(w.size > 0 && w.end().0 <= top);
        assert!(
            map.iter()
                .all(|e| !w.overlaps(&entry_range(e.addr, e.size)))
        );
        assert!(l.ram_regions().iter().all(|ram| !w.overlaps(ram)));
    }
    assert_eq!(l.mmio64_window().end().0, top);
    assert_eq!(l.mmio64_window().start.0 % GIB, 0);
}

/// The model of one range allocator: its window and live allocations (start → size).
struct Window {
    space: Space,
    start: u64,
    end: u64,
    live: BTreeMap<u64, u64>,
}

impl Window {
    /// The lowest start in the window aligned to `align` with `size` free units.
    fn first_fit(&self, size: u64, align: u64) -> Option<u64> {
        let mut cursor = self.start;
        let holes = self.live.iter().map(|(&s, &len)| (s, s + len));
        for (hole_end, next) in holes.chain(std::iter::once((self.end, self.end))) {
            let start = cursor.checked_next_multiple_of(align)?;
            if start.checked_add(size)? <= hole_end {
                return Some(start);
            }
            cursor = cursor.max(next);
        }
        None
    }

    fn is_free(&self, start: u64, size: u64) -> bool {
        let Some(end) = start.checked_add(size) else {
            return false;
        };
        start >= self.start
            && end <= self.end
            && self
                .live
                .iter()
                .all(|(&s, &len)| s + len <= start || end <= s)
    }
}

struct Harness {
    layout: GuestLayout,
    alloc: Allocators,
    windows: [Window; 3],
    gsis: BTreeSet<u32>,
}

impl Harness {
    fn new(layout: GuestLayout) -> Self {
        let alloc = match layout.allocators() {
            Ok(a) => a,
            Err(e) => panic!("a valid layout must give allocators: {e}"),
        };
        let window = |space, r: AddressRange| Window {
            space,
            start: r.start.0,
            end: r.end().0,
            live: BTreeMap::new(),
        };
        let pio = layout.pio_window();
        assert_eq!((pio.start, pio.end()), (0x1000, 0x1_0000));
        let windows = [
            window(Space::Mmio32, layout.mmio32_window()),
            window(Space::Mmio64, layout.mmio64_window()),
            Window {
                space: Space::Pio,
                start: pio.start.into(),
                end: pio.end().into(),
                live: BTreeMap::new(),
            },
        ];
        assert_eq!(alloc.mmio32_window(), layout.mmio32_window());
        assert_eq!(alloc.mmio64_window(), layout.mmio64_window());
        assert_eq!(alloc.pio_window(), pio);
        Harness {
            layout,
            alloc,
            windows,
            gsis: BTreeSet::new(),
        }
    }

    /// Sizes and addresses as the allocator for `space` takes them (ports are 16 bits).
    fn units(space: Space, v: u64) -> u64 {
        match space {
            Space::Pio => u64::from(v as u16),
            _ => v,
        }
    }

    fn call_allocate(
        &mut self,
        space: Space,
        size: u64,
        align: u64,
    ) -> Result<u64, AllocatorError> {
        match space {
            Space::Mmio32 => self.alloc.allocate_mmio32(size, align).map(|r| {
                assert_eq!(r.size, size);
                r.start.0
            }),
            Space::Mmio64 => self.alloc.allocate_mmio64(size, align).map(|r| {
                assert_eq!(r.size, size);
                r.start.0
            }),
            Space::Pio => self.alloc.allocate_pio(size as u16, align as u16).map(|r| {
                assert_eq!(u64::from(r.size), size);
                r.start.into()
            }),
        }
    }

    fn call_allocate_at(
        &mut self,
        space: Space,
        start: u64,
        size: u64,
    ) -> Result<u64, AllocatorError> {
        match space {
            Space::Mmio32 => self
                .alloc
                .allocate_mmio32_at(GuestAddress(start), size)
                .map(|r| r.start.0),
            Space::Mmio64 => self
                .alloc
                .allocate_mmio64_at(GuestAddress(start), size)
                .map(|r| r.start.0),
            Space::Pio => self
                .alloc
                .allocate_pio_at(start as u16, size as u16)
                .map(|r| r.start.into()),
        }
    }

    fn call_free(&mut self, space: Space, start: u64, size: u64) -> Result<(), AllocatorError> {
        match space {
            Space::Mmio32 => self.alloc.free_mmio32(entry_range(start, size)),
            Space::Mmio64 => self.alloc.free_mmio64(entry_range(start, size)),
            Space::Pio => self
                .alloc
                .free_pio(PortRange::new(start as u16, size as u16)),
        }
    }

    /// Checks a fresh allocation against the window, the live ranges and the layout, then
    /// records it.
    fn accept(&mut self, space: Space, start: u64, size: u64) {
        let w = &self.windows[space.index()];
        assert!(
            w.is_free(start, size),
            "{space:?} {start:#x}+{size:#x} not free"
        );
        if space != Space::Pio {
            let r = entry_range(start, size);
            for e in self.layout.memory_map() {
                assert!(
                    !r.overlaps(&entry_range(e.addr, e.size)),
                    "{r:?} over {e:?}"
                );
            }
            for ram in self.layout.ram_regions() {
                assert!(!r.overlaps(ram), "{r:?} over RAM");
            }
        }
        self.windows[space.index()].live.insert(start, size);
    }

    fn allocate(&mut self, space: Space, size: Scaled, align: u8) {
        let kind = space.kind();
        let align = match align {
            0..64 => 1u64 << align,
            64 => 0,
            a => u64::from(a),
        };
        let (size, align) = (Self::units(space, size.value()), Self::units(space, align));
        let w = &self.windows[space.index()];
        let expected = if size == 0 {
            Err(AllocatorError::ZeroSize(kind))
        } else if !align.is_power_of_two() {
            Err(AllocatorError::InvalidAlignment { kind, align })
        } else {
            w.first_fit(size, align)
                .ok_or(AllocatorError::OutOfSpace { kind, size, align })
        };
        let got = self.call_allocate(space, size, align);
        assert_eq!(
            got, expected,
            "{space:?} allocate {size:#x} align {align:#x}"
        );
        if let Ok(start) = got {
            self.accept(space, start, size);
        }
    }

    fn allocate_at(&mut self, space: Space, offset: Scaled, size: Scaled) {
        let kind = space.kind();
        let w = &self.windows[space.index()];
        let start = Self::units(space, offset.offset(w.start));
        let size = Self::units(space, size.value());
        let expected = if size == 0 {
            Err(AllocatorError::ZeroSize(kind))
        } else if w.is_free(start, size) {
            Ok(start)
        } else {
            Err(AllocatorError::Unavailable { kind, start, size })
        };
        let got = self.call_allocate_at(space, start, size);
        assert_eq!(got, expected, "{space:?} allocate_at {start:#x}+{size:#x}");
        if got.is_ok() {
            self.accept(space, start, size);
        }
    }

    fn free(&mut self, space: Space, pick: u8, target: FreeTarget) {
        let w = &self.windows[space.index()];
        let (start, size) = match w.live.iter().nth(usize::from(pick) % w.live.len().max(1)) {
            None => (w.start, 1),
            Some((&s, &len)) => match target {
                FreeTarget::Exact => (s, len),
                FreeTarget::Longer => (s, len + 1),
                FreeTarget::Shorter => (s, len - 1),
                FreeTarget::Shifted => (s + 1, len),
            },
        };
        let (start, size) = (Self::units(space, start), Self::units(space, size));
        let live = w.live.get(&start) == Some(&size);
        let got = self.call_free(space, start, size);
        if live {
            assert_eq!(got, Ok(()), "{space:?} free {start:#x}+{size:#x}");
            self.windows[space.index()].live.remove(&start);
        } else {
            let kind = space.kind();
            assert_eq!(
                got,
                Err(AllocatorError::NotAllocated { kind, start, size }),
                "{space:?} free of a range that is not live"
            );
        }
    }

    /// Frees everything in `space`; the whole window must then be one free range.
    fn drain(&mut self, space: Space) {
        let live = std::mem::take(&mut self.windows[space.index()].live);
        for (start, size) in live {
            assert_eq!(self.call_free(space, start, size), Ok(()));
        }
        let w = &self.windows[space.index()];
        let (start, size) = (w.start, w.end - w.start);
        assert_eq!(
            self.call_allocate(space, size, 1),
            Ok(start),
            "{space:?} fragmented"
        );
        assert_eq!(self.call_free(space, start, size), Ok(()));
    }

    fn allocate_gsi(&mut self) {
        let expected = (16..=23)
            .find(|g| !self.gsis.contains(g))
            .ok_or(AllocatorError::GsiExhausted);
        let got = self.alloc.allocate_gsi();
        assert_eq!(got, expected);
        if let Ok(gsi) = got {
            self.gsis.insert(gsi);
            assert!(self.alloc.is_gsi_allocated(gsi));
        }
    }

    fn free_gsi(&mut self, gsi: u8) {
        let gsi = u32::from(gsi);
        let live = self.gsis.remove(&gsi);
        assert_eq!(self.alloc.is_gsi_allocated(gsi), live);
        let expected = if live {
            Ok(())
        } else {
            Err(AllocatorError::GsiNotAllocated(gsi))
        };
        assert_eq!(self.alloc.free_gsi(gsi), expected);
        assert!(!self.alloc.is_gsi_allocated(gsi));
    }

    fn set_memory_kind(&mut self, addr: Scaled, size: Scaled, kind: MemoryKind) {
        let (addr, size) = (addr.value(), size.value());
        let in_ram = size > 0
            && addr.checked_add(size).is_some_and(|end| {
                self.layout
                    .ram_regions()
                    .iter()
                    .any(|r| r.start.0 <= addr && end <= r.end().0)
            });
        let before = self.layout.clone();
        match self.layout.set_memory_kind(GuestAddress(addr), size, kind) {
            Ok(()) => {
                assert!(in_ram, "{addr:#x}+{size:#x} accepted outside RAM");
                assert!(
                    self.layout
                        .memory_map()
                        .iter()
                        .any(|e| e.kind == kind && e.addr <= addr && addr + size <= e.end())
                );
            }
            Err(e) => {
                assert_eq!(self.layout, before, "a refused change changed the map");
                match e {
                    LayoutError::NotRam { .. } => assert!(!in_ram, "{addr:#x}+{size:#x} is RAM"),
                    LayoutError::TooManyEntries(n) => {
                        assert!(in_ram && n == layout::MAX_MEMORY_MAP_ENTRIES)
                    }
                    other => panic!("unexpected {other}"),
                }
            }
        }
        check_layout(&self.layout, before.ram_size());
    }
}

/// Target body.
pub fn run(data: &[u8]) {
    let input = parse(data);
    let ram_size = input.ram_size.bytes();
    let (result, bits) = match input.phys_bits {
        PhysBits::Default => (GuestLayout::new(ram_size), layout::DEFAULT_PHYS_BITS),
        PhysBits::Supported(b) | PhysBits::Raw(b) => (GuestLayout::with_phys_bits(ram_size, b), b),
    };
    let expected = expected_layout_error(ram_size, bits);
    let layout = match result {
        Ok(layout) => {
            assert_eq!(expected, None, "{ram_size:#x} at {bits} bits accepted");
            layout
        }
        Err(e) => {
            assert_eq!(Some(e.clone()), expected, "{ram_size:#x} at {bits} bits");
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    check_layout(&layout, ram_size);

    let mut h = Harness::new(layout);
    for op in input.ops {
        match op {
            Op::Allocate { space, size, align } => h.allocate(space, size, align),
            Op::AllocateAt {
                space,
                offset,
                size,
            } => h.allocate_at(space, offset, size),
            Op::Free {
                space,
                pick,
                target,
            } => h.free(space, pick, target),
            Op::Drain { space } => h.drain(space),
            Op::AllocateGsi => h.allocate_gsi(),
            Op::FreeGsi(gsi) => h.free_gsi(gsi),
            Op::SetMemoryKind { addr, size, kind } => h.set_memory_kind(addr, size, kind),
        }
    }
    for space in [Space::Mmio32, Space::Mmio64, Space::Pio] {
        assert_eq!(h.windows[space.index()].space, space);
        h.drain(space);
    }
    for gsi in std::mem::take(&mut h.gsis) {
        assert_eq!(h.alloc.free_gsi(gsi), Ok(()));
    }
    for gsi in 16..=23 {
        assert_eq!(h.alloc.allocate_gsi(), Ok(gsi));
    }
}

/// Named seed inputs: small, meaningful scenarios that reach every operation and error.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use Space::{Mmio32, Mmio64, Pio};
    let s = Scaled::new;
    let alloc = |space, size, align| Op::Allocate { space, size, align };
    let at = |space, offset, size| Op::AllocateAt {
        space,
        offset,
        size,
    };
    let free = |space, pick, target| Op::Free {
        space,
        pick,
        target,
    };
    let only = |phys_bits, ram_size| Input {
        phys_bits,
        ram_size,
        ops: Vec::new(),
    };
    let inputs: Vec<(&'static str, Input)> = vec![
        (
            "small_guest_devices",
            Input {
                phys_bits: PhysBits::Default,
                ram_size: RamSize::Mib2(32),
                ops: vec![
                    // A virtio-pci BAR, a second one, a 1 GiB 64-bit BAR, an I/O BAR, IRQs.
                    alloc(Mmio32, s(0x4000, 0), 14),
                    alloc(Mmio32, s(1, 20), 20),
                    alloc(Mmio64, s(1, 30), 30),
                    alloc(Pio, s(0x40, 0), 6),
                    Op::AllocateGsi,
                    Op::AllocateGsi,
                    free(Mmio32, 0, FreeTarget::Exact),
                    alloc(Mmio32, s(0x1000, 0), 12),
                    Op::FreeGsi(16),
                    Op::AllocateGsi,
                ],
            },
        ),
        (
            "large_guest_46_bits",
            Input {
                phys_bits: PhysBits::Supported(46),
                ram_size: RamSize::Mib2(2560), // 5 GiB
                ops: vec![
                    alloc(Mmio64, s(1, 40), 40),
                    at(Mmio64, s(0, 0), s(1, 12)),
                    at(Mmio64, s(0x8000_0000, 0x80), s(1, 12)), // 2 GiB below: RAM
                    free(Mmio64, 1, FreeTarget::Longer),
                    free(Mmio64, 1, FreeTarget::Exact),
                    Op::Drain { space: Mmio64 },
                ],
            },
        ),
        (
            "pio_one_port_fragments",
            Input {
                phys_bits: PhysBits::Default,
                ram_size: RamSize::Pages(1024),
                ops: vec![
                    at(Pio, s(0xEFFF, 0), s(1, 0)), // the last port
                    alloc(Pio, s(1, 0), 0),
                    alloc(Pio, s(8, 0), 0),
                    alloc(Pio, s(0xF000 - 10, 0), 0),
                    free(Pio, 0, FreeTarget::Exact),
                    free(Pio, 0, FreeTarget::Exact),
                    alloc(Pio, s(9, 0), 0),
                    at(Pio, s(0x1000, 0x80), s(8, 0)), // port 0: legacy, refused
                    free(Pio, 0, FreeTarget::Shifted),
                    free(Pio, 0, FreeTarget::Shorter),
                    alloc(Pio, s(1, 0), 64),
                    alloc(Pio, s(1, 0), 65),
                    Op::Drain { space: Pio },
                ],
            },
        ),
        (
            "mmio32_exhaustion_and_edges",
            Input {
                phys_bits: PhysBits::Supported(36),
                ram_size: RamSize::NearHole(1),
                ops: vec![
                    at(Mmio32, s(1, 0x80), s(2, 0)), // straddles the window's start
                    at(Mmio32, s(0x2EC0_0000 - 1, 0), s(1, 0)), // last byte below the IOAPIC
                    at(Mmio32, s(0x2EC0_0000, 0), s(1, 0)), // the IOAPIC
                    alloc(Mmio32, s(0x2EC0_0000, 0), 0),
                    alloc(Mmio32, s(0x2EC0_0000 - 1, 0), 0),
                    alloc(Mmio32, s(1, 0), 0),
                    alloc(Mmio32, s(1, 0), 32),
                    alloc(Mmio32, s(0, 0), 0),
                    free(Mmio32, 9, FreeTarget::Exact),
                    Op::Drain { space: Mmio32 },
                ],
            },
        ),
        (
            "gsi_exhaustion",
            Input {
                phys_bits: PhysBits::Default,
                ram_size: RamSize::Mib2(1),
                ops: [
                    vec![Op::FreeGsi(16), Op::FreeGsi(4)],
                    vec![Op::AllocateGsi; 9],
                    vec![
                        Op::FreeGsi(20),
                        Op::FreeGsi(20),
                        Op::AllocateGsi,
                        Op::FreeGsi(24),
                    ],
                ]
                .concat(),
            },
        ),
        (
            "memory_map_changes",
            Input {
                phys_bits: PhysBits::Default,
                ram_size: RamSize::Mib2(2048), // 4 GiB
                ops: vec![
                    Op::SetMemoryKind {
                        addr: s(0x20, 16),
                        size: s(0x3, 12),
                        kind: MemoryKind::Acpi,
                    },
                    Op::SetMemoryKind {
                        addr: s(0x9F, 12),
                        size: s(0x61, 12),
                        kind: MemoryKind::Ram,
                    },
                    Op::SetMemoryKind {
                        addr: s(4, 30),
                        size: s(1, 12),
                        kind: MemoryKind::Nvs,
                    },
                    Op::SetMemoryKind {
                        addr: s(3, 30),
                        size: s(1, 12),
                        kind: MemoryKind::Reserved,
                    },
                    Op::SetMemoryKind {
                        addr: s(0, 0),
                        size: s(0, 0),
                        kind: MemoryKind::Reserved,
                    },
                ],
            },
        ),
        ("zero_ram", only(PhysBits::Default, RamSize::Bytes(0))),
        (
            "unaligned_ram",
            only(PhysBits::Default, RamSize::Bytes(0x20_0001)),
        ),
        (
            "too_small_ram",
            only(PhysBits::Default, RamSize::Pages(511)),
        ),
        (
            "too_large_ram",
            only(PhysBits::Supported(36), RamSize::Mib2(31745)),
        ),
        (
            "largest_ram_36_bits",
            only(PhysBits::Supported(36), RamSize::Mib2(31744)),
        ),
        (
            "unsupported_phys_bits",
            only(PhysBits::Raw(53), RamSize::Mib2(8)),
        ),
    ];
    inputs
        .into_iter()
        .map(|(name, input)| (name, encode(&input)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed_files;

    #[test]
    fn seeds_round_trip_and_pass() {
        for (name, bytes) in seeds() {
            assert_eq!(encode(&parse(&bytes)), bytes, "{name}");
            run(&bytes);
        }
    }

    #[test]
    fn committed_seeds_replay() {
        seed_files::replay("layout_allocators", &seeds(), true, run);
    }

    #[test]
    fn seeds_reach_every_layout_error() {
        let mut seen = Vec::new();
        for (_, bytes) in seeds() {
            let input = parse(&bytes);
            let bits = match input.phys_bits {
                PhysBits::Default => layout::DEFAULT_PHYS_BITS,
                PhysBits::Supported(b) | PhysBits::Raw(b) => b,
            };
            if let Some(e) = expected_layout_error(input.ram_size.bytes(), bits) {
                seen.push(std::mem::discriminant(&e));
            }
        }
        seen.sort_by_key(|d| format!("{d:?}"));
        seen.dedup();
        assert_eq!(seen.len(), 5);
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        run(&[]);
        run(&[0xff; 64]);
        run(&(0..=255).collect::<Vec<u8>>());
        for tag in 0..=255u8 {
            run(&[tag]);
            run(&[0, 0, 8, 0, tag, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
            run(&[tag, 3, 0x80, 0xff, tag, 0xff, 0xff, 0xff, 0xff, 0xff, 0x40]);
        }
    }

    /// Writes the seed files; run with `cargo test -- --ignored write_layout_seeds`.
    #[test]
    #[ignore]
    fn write_layout_seeds() {
        seed_files::write("layout_allocators", &seeds());
    }
}
