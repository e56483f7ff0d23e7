//! Port-I/O and MMIO buses: non-overlapping address ranges, each routed to a shared handler.
//!
//! One generic [`Bus`] serves both address spaces: [`IoBus`] routes ports ([`PioAddress`]) to
//! [`PioDevice`]s and [`MmioBus`] routes guest-physical addresses ([`MmioAddress`]) to
//! [`MmioDevice`]s.
//!
//! Ranges live in a `BTreeMap` keyed by base address behind an `RwLock`. A lookup takes the read
//! lock, finds the range in O(log n), bumps the range's hit counter (one relaxed atomic add),
//! clones the handler's `Arc` out and releases the lock *before* the handler runs. A handler can
//! therefore re-enter the bus — move its own range when the guest reprograms a PCI BAR, say —
//! without deadlock, and vCPU threads never wait on each other's device calls.
//!
//! An access is routed to a range only when every byte of it lies inside the range. An access that
//! straddles the end of a range (or wraps past the end of the address space) belongs to no device
//! and is answered as unclaimed by the caller, as a bus with no decoder for those bytes would.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::address::{MmioAddress, PioAddress};
use crate::device::{DeviceAction, MmioDevice, PioDevice};
use crate::stats::RangeStats;

/// An address type a [`Bus`] routes on: [`PioAddress`] for ports, [`MmioAddress`] for
/// guest-physical addresses.
pub trait BusAddress: Copy + Ord + fmt::Debug + fmt::LowerHex + Send + Sync + 'static {
    /// The plain integer an offset inside a range of this space is (`u16` for ports, `u64` for
    /// MMIO): a handler gets the base of its range as `Self` and the offset as this.
    type Offset: Copy + fmt::Debug + Send + Sync + 'static;
    /// How many hex digits print an address of this space (4 for ports, 8 for MMIO in tables).
    const HEX_DIGITS: usize;
    /// The address widened to 64 bits.
    fn to_u64(self) -> u64;
    /// The 64-bit value narrowed to this type, or `None` when it does not fit.
    fn from_u64(value: u64) -> Option<Self>;
    /// The 64-bit value as an offset of this space, or `None` when it does not fit.
    fn offset_from_u64(value: u64) -> Option<Self::Offset>;
}

/// How a [`Bus`] calls the handlers it holds.
///
/// Implemented for `dyn PioDevice` on [`PioAddress`] and for `dyn MmioDevice` on
/// [`MmioAddress`], so the one bus implementation drives both device traits.
pub trait BusHandler<A: BusAddress>: Send + Sync {
    /// A read of `data.len()` bytes at `base + offset`; fills all of `data`.
    fn bus_read(&self, base: A, offset: A::Offset, data: &mut [u8]);
    /// A write of `data` at `base + offset`.
    fn bus_write(&self, base: A, offset: A::Offset, data: &[u8]) -> DeviceAction;
}

impl BusHandler<PioAddress> for dyn PioDevice {
    fn bus_read(&self, base: PioAddress, offset: u16, data: &mut [u8]) {
        self.pio_read(base, offset, data);
    }
    fn bus_write(&self, base: PioAddress, offset: u16, data: &[u8]) -> DeviceAction {
        self.pio_write(base, offset, data)
    }
}

impl BusHandler<MmioAddress> for dyn MmioDevice {
    fn bus_read(&self, base: MmioAddress, offset: u64, data: &mut [u8]) {
        self.mmio_read(base, offset, data);
    }
    fn bus_write(&self, base: MmioAddress, offset: u64, data: &[u8]) -> DeviceAction {
        self.mmio_write(base, offset, data)
    }
}

/// A range of a bus's address space: `len` addresses from `base`.
///
/// Any value can be built; [`Bus::register`] rejects empty ranges and ranges that run past the
/// end of the address space. `From<Range<A>>` converts `start..end` (an empty or reversed range
/// becomes an empty one), also from plain `u16` (ports) and `u64` (MMIO) bounds; use
/// [`BusRange::new`] for a range that ends at the last address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BusRange<A> {
    /// The first address.
    pub base: A,
    /// The number of addresses.
    pub len: u64,
}

impl<A: BusAddress> BusRange<A> {
    /// The range of `len` addresses from `base`.
    pub const fn new(base: A, len: u64) -> Self {
        Self { base, len }
    }

    /// The last address of the range, or why the range is not valid.
    pub fn last(&self) -> Result<A, BusError> {
        let base = self.base.to_u64();
        if self.len == 0 {
            return Err(BusError::EmptyRange { base });
        }
        base.checked_add(self.len - 1)
            .and_then(A::from_u64)
            .ok_or(BusError::RangeWraps {
                base,
                len: self.len,
            })
    }
}

impl<A: BusAddress> From<Range<A>> for BusRange<A> {
    fn from(range: Range<A>) -> Self {
        let len = range.end.to_u64().saturating_sub(range.start.to_u64());
        Self::new(range.start, len)
    }
}

/// `0x3f8..0x400`: a range of ports written as plain integers (a range has no base and offset
/// to swap).
impl From<Range<u16>> for BusRange<PioAddress> {
    fn from(range: Range<u16>) -> Self {
        BusRange::from(PioAddress(range.start)..PioAddress(range.end))
    }
}

/// `0xd000_0000..0xd000_1000`: a range of guest-physical addresses written as plain integers.
impl From<Range<u64>> for BusRange<MmioAddress> {
    fn from(range: Range<u64>) -> Self {
        BusRange::from(MmioAddress(range.start)..MmioAddress(range.end))
    }
}

/// A bus operation that was refused; the bus is unchanged.
#[derive(Clone, Debug, PartialEq, Eq, displaydoc::Display, thiserror::Error)]
#[ignore_extra_doc_attributes]
pub enum BusError {
    /// the range at {base:#x} is empty
    EmptyRange {
        /// The range's base.
        base: u64,
    },
    /// the range of {len:#x} addresses at {base:#x} runs past the end of the address space
    RangeWraps {
        /// The range's base.
        base: u64,
        /// The range's length.
        len: u64,
    },
    /// the range {base:#x}..={last:#x} overlaps the registered range
    /// {other_base:#x}..={other_last:#x}
    Overlap {
        /// The refused range's base.
        base: u64,
        /// The refused range's last address.
        last: u64,
        /// The base of the registered range it overlaps.
        other_base: u64,
        /// The last address of the registered range it overlaps.
        other_last: u64,
    },
    /// no range is registered at base {0:#x}
    NotFound(u64),
}

/// Where an access was routed: the handler and the access's place in its range.
pub struct Route<A: BusAddress, H: ?Sized> {
    /// The base of the range that holds the access.
    pub base: A,
    /// The access's offset from `base`.
    pub offset: A::Offset,
    /// The range's handler.
    pub handler: Arc<H>,
}

impl<A: BusAddress, H: ?Sized> fmt::Debug for Route<A, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("base", &self.base)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

/// One registered range: the handler and, beside it, the range's hit counter.
struct Entry<A, H: ?Sized> {
    last: A,
    handler: Arc<H>,
    name: Option<Arc<str>>,
    hits: AtomicU64,
}

/// Non-overlapping address ranges of type `A`, each routed to a shared handler `H`.
///
/// `Send + Sync`: share it across vCPU threads in an `Arc`. See the [module docs](self) for the
/// locking discipline.
pub struct Bus<A, H: ?Sized> {
    ranges: RwLock<BTreeMap<A, Entry<A, H>>>,
}

/// The port-I/O bus: ports routed to [`PioDevice`]s.
pub type IoBus = Bus<PioAddress, dyn PioDevice>;

/// The MMIO bus: guest-physical addresses routed to [`MmioDevice`]s.
pub type MmioBus = Bus<MmioAddress, dyn MmioDevice>;

impl<A: BusAddress, H: ?Sized> Default for Bus<A, H> {
    fn default() -> Self {
        Self {
            ranges: RwLock::new(BTreeMap::new()),
        }
    }
}

impl<A: BusAddress, H: ?Sized> fmt::Debug for Bus<A, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ranges = self.read_lock();
        f.debug_list()
            .entries(
                ranges
                    .iter()
                    .map(|(base, e)| (base.to_u64(), e.last.to_u64(), e.name.clone())),
            )
            .finish()
    }
}

impl<A: BusAddress, H: ?Sized> Bus<A, H> {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    // No code panics while holding either lock (the map operations only allocate), so a
    // poisoned lock still guards a consistent map: keep serving it.
    fn read_lock(&self) -> RwLockReadGuard<'_, BTreeMap<A, Entry<A, H>>> {
        self.ranges.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_lock(&self) -> RwLockWriteGuard<'_, BTreeMap<A, Entry<A, H>>> {
        self.ranges.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Routes `range` to `handler`.
    ///
    /// Fails with [`BusError::EmptyRange`], [`BusError::RangeWraps`] or [`BusError::Overlap`].
    pub fn register(&self, range: impl Into<BusRange<A>>, handler: Arc<H>) -> Result<(), BusError> {
        self.insert(range.into(), None, handler)
    }

    /// Like [`register`](Self::register), with a name shown in the statistics.
    pub fn register_named(
        &self,
        range: impl Into<BusRange<A>>,
        name: &str,
        handler: Arc<H>,
    ) -> Result<(), BusError> {
        self.insert(range.into(), Some(Arc::from(name)), handler)
    }

    fn insert(
        &self,
        range: BusRange<A>,
        name: Option<Arc<str>>,
        handler: Arc<H>,
    ) -> Result<(), BusError> {
        let last = range.last()?;
        let mut ranges = self.write_lock();
        check_free(&ranges, range.base, last)?;
        ranges.insert(
            range.base,
            Entry {
                last,
                handler,
                name,
                hits: AtomicU64::new(0),
            },
        );
        Ok(())
    }

    /// Removes the range that starts at `base` and returns its handler.
    ///
    /// The range's hit counter goes with it. Fails with [`BusError::NotFound`].
    pub fn unregister(&self, base: A) -> Result<Arc<H>, BusError> {
        self.write_lock()
            .remove(&base)
            .map(|entry| entry.handler)
            .ok_or(BusError::NotFound(base.to_u64()))
    }

    /// Moves the range that starts at `old_base` to start at `new_base`, keeping its length,
    /// handler, name and hit count (a guest reprogramming a PCI BAR).
    ///
    /// Atomic: on error the range stays where it was, and no access sees the range missing
    /// meanwhile. The new place may overlap the old one. Fails with [`BusError::NotFound`],
    /// [`BusError::RangeWraps`] or [`BusError::Overlap`].
    pub fn relocate(&self, old_base: A, new_base: A) -> Result<(), BusError> {
        let mut ranges = self.write_lock();
        let mut entry = ranges
            .remove(&old_base)
            .ok_or(BusError::NotFound(old_base.to_u64()))?;
        let len = entry.last.to_u64() - old_base.to_u64() + 1;
        let placed = BusRange::new(new_base, len)
            .last()
            .and_then(|last| check_free(&ranges, new_base, last).map(|()| last));
        match placed {
            Ok(last) => {
                entry.last = last;
                ranges.insert(new_base, entry);
                Ok(())
            }
            Err(err) => {
                ranges.insert(old_base, entry);
                Err(err)
            }
        }
    }

    /// Finds the range that holds all `size` bytes at `addr`, counts a hit on it and returns
    /// the route; `None` when no range holds the whole access (or `size` is 0).
    ///
    /// O(log n) under the read lock, which is released before this returns.
    pub fn lookup(&self, addr: A, size: usize) -> Option<Route<A, H>> {
        let end = addr
            .to_u64()
            .checked_add(u64::try_from(size).ok()?.checked_sub(1)?)?;
        let ranges = self.read_lock();
        let (&base, entry) = ranges.range(..=addr).next_back()?;
        if end > entry.last.to_u64() {
            return None;
        }
        entry.hits.fetch_add(1, Ordering::Relaxed);
        let offset = A::offset_from_u64(addr.to_u64() - base.to_u64())?;
        Some(Route {
            base,
            offset,
            handler: Arc::clone(&entry.handler),
        })
    }

    /// The number of registered ranges.
    pub fn len(&self) -> usize {
        self.read_lock().len()
    }

    /// Whether no range is registered.
    pub fn is_empty(&self) -> bool {
        self.read_lock().is_empty()
    }

    /// Each registered range with its name and hit count, in address order.
    pub fn range_stats(&self) -> Vec<RangeStats> {
        self.read_lock()
            .iter()
            .map(|(base, entry)| RangeStats {
                base: base.to_u64(),
                last: entry.last.to_u64(),
                hex_digits: A::HEX_DIGITS,
                name: entry.name.clone(),
                hits: entry.hits.load(Ordering::Relaxed),
            })
            .collect()
    }
}

impl<A: BusAddress, H: ?Sized + BusHandler<A>> Bus<A, H> {
    /// Routes a read of `data.len()` bytes at `addr`: `true` when a handler filled `data`,
    /// `false` (and `data` untouched) when no range holds the whole access.
    pub fn read(&self, addr: A, data: &mut [u8]) -> bool {
        match self.lookup(addr, data.len()) {
            Some(route) => {
                route.handler.bus_read(route.base, route.offset, data);
                true
            }
            None => false,
        }
    }

    /// Routes a write of `data` at `addr`: the handler's answer, or `None` when no range holds
    /// the whole access.
    pub fn write(&self, addr: A, data: &[u8]) -> Option<DeviceAction> {
        let route = self.lookup(addr, data.len())?;
        Some(route.handler.bus_write(route.base, route.offset, data))
    }
}

/// Fails when `base..=last` overlaps a range of `ranges`.
///
/// Ranges do not overlap each other, so the only candidate is the one with the greatest base at
/// or below `last`: any range before it ends before it starts.
fn check_free<A: BusAddress, H: ?Sized>(
    ranges: &BTreeMap<A, Entry<A, H>>,
    base: A,
    last: A,
) -> Result<(), BusError> {
    match ranges.range(..=last).next_back() {
        Some((&other_base, other)) if other.last >= base => Err(BusError::Overlap {
            base: base.to_u64(),
            last: last.to_u64(),
            other_base: other_base.to_u64(),
            other_last: other.last.to_u64(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::Weak;

    /// Records accesses; reads answer `offset as u8 + i` with the device id in the top bits.
    #[derive(Default)]
    struct Recorder {
        id: u8,
        seen: Mutex<Vec<(u64, u64, usize, bool)>>,
    }

    impl Recorder {
        fn new(id: u8) -> Arc<Self> {
            Arc::new(Self {
                id,
                ..Self::default()
            })
        }
        fn seen(&self) -> Vec<(u64, u64, usize, bool)> {
            self.seen.lock().unwrap().clone()
        }
        fn fill(&self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = (self.id << 4) | ((offset as u8).wrapping_add(i as u8) & 0xf);
            }
        }
    }

    impl PioDevice for Recorder {
        fn pio_read(&self, base: PioAddress, offset: u16, data: &mut [u8]) {
            self.seen
                .lock()
                .unwrap()
                .push((base.into(), offset.into(), data.len(), false));
            self.fill(offset.into(), data);
        }
        fn pio_write(&self, base: PioAddress, offset: u16, data: &[u8]) -> DeviceAction {
            self.seen
                .lock()
                .unwrap()
                .push((base.into(), offset.into(), data.len(), true));
            DeviceAction::Resume
        }
    }

    impl MmioDevice for Recorder {
        fn mmio_read(&self, base: MmioAddress, offset: u64, data: &mut [u8]) {
            self.seen
                .lock()
                .unwrap()
                .push((base.into(), offset, data.len(), false));
            self.fill(offset, data);
        }
        fn mmio_write(&self, base: MmioAddress, offset: u64, data: &[u8]) -> DeviceAction {
            self.seen
                .lock()
                .unwrap()
                .push((base.into(), offset, data.len(), true));
            DeviceAction::Stop(crate::StopReason::GuestExit(u32::from(self.id)))
        }
    }

    #[test]
    fn routes_reads_and_writes_with_base_and_offset() {
        let bus = IoBus::new();
        let a = Recorder::new(1);
        let b = Recorder::new(2);
        bus.register(0x3f8..0x400, a.clone()).unwrap();
        bus.register(BusRange::new(PioAddress(0x400), 4), b.clone())
            .unwrap();
        assert_eq!(bus.len(), 2);

        let mut data = [0u8; 2];
        assert!(bus.read(PioAddress(0x3fa), &mut data));
        assert_eq!(data, [0x12, 0x13]);
        assert_eq!(
            bus.write(PioAddress(0x403), &[7]),
            Some(DeviceAction::Resume),
            "last port of b"
        );
        assert_eq!(a.seen(), vec![(0x3f8, 2, 2, false)]);
        assert_eq!(b.seen(), vec![(0x400, 3, 1, true)]);
    }

    #[test]
    fn unclaimed_and_straddling_accesses_are_not_routed() {
        let bus = IoBus::new();
        let a = Recorder::new(1);
        bus.register(0x60..0x61, a.clone()).unwrap();
        let mut data = [0xaa; 2];
        assert!(!bus.read(PioAddress(0x5f), &mut data), "below the range");
        assert!(!bus.read(PioAddress(0x60), &mut data), "straddles the end");
        assert_eq!(data, [0xaa, 0xaa], "untouched");
        assert!(
            !bus.read(PioAddress(0x61), &mut data[..1]),
            "above the range"
        );
        assert_eq!(bus.write(PioAddress(0x60), &[]), None, "empty access");
        assert!(a.seen().is_empty());
        assert!(bus.read(PioAddress(0x60), &mut data[..1]));
    }

    #[test]
    fn accesses_at_the_top_of_the_address_space() {
        let bus = MmioBus::new();
        let a = Recorder::new(3);
        bus.register(BusRange::new(MmioAddress(u64::MAX - 7), 8), a.clone())
            .unwrap();
        let mut data = [0u8; 8];
        assert!(bus.read(MmioAddress(u64::MAX - 7), &mut data));
        assert!(
            !bus.read(MmioAddress(u64::MAX), &mut data),
            "wraps past the end"
        );
        assert!(bus.read(MmioAddress(u64::MAX), &mut data[..1]));
        assert_eq!(a.seen()[1], (u64::MAX - 7, 7, 1, false));

        let io = IoBus::new();
        io.register(BusRange::new(PioAddress(0xffff), 1), Recorder::new(4))
            .unwrap();
        assert!(io.read(PioAddress(0xffff), &mut [0u8]));
        assert!(!io.read(PioAddress(0xffff), &mut [0u8; 2]));
    }

    #[test]
    fn register_rejects_bad_ranges() {
        let bus = IoBus::new();
        let d = Recorder::new(1);
        assert_eq!(
            bus.register(0x10..0x10, d.clone()),
            Err(BusError::EmptyRange { base: 0x10 })
        );
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = 0x20..0x10;
        assert_eq!(
            bus.register(reversed, d.clone()),
            Err(BusError::EmptyRange { base: 0x20 })
        );
        assert_eq!(
            bus.register(BusRange::new(PioAddress(0xfff0), 0x11), d.clone()),
            Err(BusError::RangeWraps {
                base: 0xfff0,
                len: 0x11
            })
        );
        let mmio = MmioBus::new();
        assert_eq!(
            mmio.register(BusRange::new(MmioAddress(u64::MAX), 2), d.clone()),
            Err(BusError::RangeWraps {
                base: u64::MAX,
                len: 2
            })
        );
        assert!(mmio.is_empty());

        bus.register(0x10..0x20, d.clone()).unwrap();
        for (base, len) in [
            (0x0, 0x11),
            (0x1f, 1),
            (0x12, 2),
            (0x0, 0x100),
            (0x10, 0x10),
        ] {
            assert_eq!(
                bus.register(BusRange::new(PioAddress(base), len), d.clone()),
                Err(BusError::Overlap {
                    base: u64::from(base),
                    last: u64::from(base) + len - 1,
                    other_base: 0x10,
                    other_last: 0x1f
                }),
                "{base:#x}+{len:#x}"
            );
        }
        bus.register(0x20..0x21, d.clone()).unwrap();
        bus.register(0x0..0x10, d).unwrap();
        assert_eq!(bus.len(), 3);
    }

    #[test]
    fn errors_read_well() {
        let e = BusError::Overlap {
            base: 0x10,
            last: 0x1f,
            other_base: 0x18,
            other_last: 0x20,
        };
        assert_eq!(
            e.to_string(),
            "the range 0x10..=0x1f overlaps the registered range 0x18..=0x20"
        );
        assert_eq!(
            BusError::NotFound(0x3f8).to_string(),
            "no range is registered at base 0x3f8"
        );
        assert!(
            BusError::EmptyRange { base: 1 }
                .to_string()
                .contains("empty")
        );
        assert!(
            BusError::RangeWraps { base: 1, len: 2 }
                .to_string()
                .contains("past the end")
        );
    }

    #[test]
    fn unregister_returns_the_handler() {
        let bus = IoBus::new();
        let d = Recorder::new(1);
        bus.register(0x70..0x72, d.clone()).unwrap();
        let h = bus.unregister(PioAddress(0x70)).unwrap();
        assert!(!bus.read(PioAddress(0x70), &mut [0u8]));
        h.pio_write(PioAddress(0), 0, &[1]);
        assert_eq!(d.seen().len(), 1, "the same handler came back");
        assert_eq!(
            bus.unregister(PioAddress(0x70)).err(),
            Some(BusError::NotFound(0x70))
        );
        assert!(bus.is_empty());
    }

    #[test]
    fn relocate_moves_atomically() {
        let bus = MmioBus::new();
        let a = Recorder::new(1);
        let b = Recorder::new(2);
        bus.register_named(BusRange::new(MmioAddress(0x1000), 0x100), "bar0", a.clone())
            .unwrap();
        bus.register(BusRange::new(MmioAddress(0x3000), 0x100), b.clone())
            .unwrap();
        assert!(bus.read(MmioAddress(0x1004), &mut [0u8; 4]));

        // Overlapping its old place is fine.
        bus.relocate(MmioAddress(0x1000), MmioAddress(0x1080))
            .unwrap();
        assert!(!bus.read(MmioAddress(0x1000), &mut [0u8]));
        assert!(bus.read(MmioAddress(0x1080), &mut [0u8]));
        // Onto b: refused, nothing moves.
        assert_eq!(
            bus.relocate(MmioAddress(0x1080), MmioAddress(0x2f80)),
            Err(BusError::Overlap {
                base: 0x2f80,
                last: 0x307f,
                other_base: 0x3000,
                other_last: 0x30ff
            })
        );
        assert!(bus.read(MmioAddress(0x1080), &mut [0u8]));
        assert_eq!(
            bus.relocate(MmioAddress(0x1080), MmioAddress(u64::MAX - 0x10)),
            Err(BusError::RangeWraps {
                base: u64::MAX - 0x10,
                len: 0x100
            })
        );
        assert_eq!(
            bus.relocate(MmioAddress(0x5000), MmioAddress(0x6000)),
            Err(BusError::NotFound(0x5000))
        );
        bus.relocate(MmioAddress(0x1080), MmioAddress(0x2000))
            .unwrap();
        bus.relocate(MmioAddress(0x2000), MmioAddress(0x2000))
            .unwrap();

        let stats = bus.range_stats();
        assert_eq!(stats.len(), 2);
        assert_eq!((stats[0].base, stats[0].last), (0x2000, 0x20ff));
        assert_eq!(stats[0].name.as_deref(), Some("bar0"));
        assert_eq!(stats[0].hits, 3, "hits move with the range");
        assert_eq!(stats[1].hits, 0);
        assert_eq!(stats[1].name, None);
    }

    #[test]
    fn lookup_counts_hits_and_reports_offsets() {
        let bus = IoBus::new();
        bus.register_named(0x40..0x44, "pit", Recorder::new(1))
            .unwrap();
        let route = bus.lookup(PioAddress(0x42), 2).unwrap();
        assert_eq!((route.base, route.offset), (PioAddress(0x40), 2));
        assert!(format!("{route:?}").contains("offset: 2"));
        assert!(bus.lookup(PioAddress(0x43), 2).is_none());
        assert!(bus.lookup(PioAddress(0x40), 0).is_none());
        assert_eq!(bus.range_stats()[0].hits, 1);
        assert!(format!("{bus:?}").contains("pit"));
    }

    /// A device that moves its own range when written, like a guest reprogramming a BAR.
    struct SelfMover {
        bus: Weak<MmioBus>,
        result: Mutex<Option<Result<(), BusError>>>,
    }

    impl MmioDevice for SelfMover {
        fn mmio_read(&self, _base: MmioAddress, _offset: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn mmio_write(&self, base: MmioAddress, _offset: u64, data: &[u8]) -> DeviceAction {
            let mut new = [0u8; 8];
            new[..data.len()].copy_from_slice(data);
            if let Some(bus) = self.bus.upgrade() {
                *self.result.lock().unwrap() =
                    Some(bus.relocate(base, MmioAddress(u64::from_le_bytes(new))));
            }
            DeviceAction::Resume
        }
    }

    #[test]
    fn a_handler_can_move_its_own_range() {
        let bus = Arc::new(MmioBus::new());
        let dev = Arc::new(SelfMover {
            bus: Arc::downgrade(&bus),
            result: Mutex::new(None),
        });
        bus.register(BusRange::new(MmioAddress(0xd000_0000), 0x1000), dev.clone())
            .unwrap();
        // Runs on another thread so a deadlock fails the test by timing out the join.
        let b = Arc::clone(&bus);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = b.write(MmioAddress(0xd000_0010), &0xe000_0000u64.to_le_bytes());
            tx.send(r).unwrap();
        });
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("re-entrant relocate deadlocked");
        assert_eq!(r, Some(DeviceAction::Resume));
        assert_eq!(*dev.result.lock().unwrap(), Some(Ok(())));
        assert!(bus.read(MmioAddress(0xe000_0000), &mut [0u8; 4]));
        assert!(!bus.read(MmioAddress(0xd000_0000), &mut [0u8; 4]));
    }

    #[test]
    fn buses_are_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<IoBus>();
        assert_send_sync::<MmioBus>();

        let bus = Arc::new(IoBus::new());
        bus.register(0x80..0x81, Recorder::new(1)).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let bus = Arc::clone(&bus);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        assert!(bus.read(PioAddress(0x80), &mut [0u8]));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(bus.range_stats()[0].hits, 4000);
    }
}
