//! Where guest-physical memory lives on the host: the GPA → HPA map a shadow MMU composes with
//! the guest's own tables.

use alloc::vec::Vec;

/// The host backing of guest-physical memory.
///
/// A shadow MMU asks it for the host-physical address of every guest page it maps; `None` means
/// nothing backs the address (an MMIO region or a hole), which the MMU reports instead of
/// mapping it.
pub trait GpaMap {
    /// The host-physical address backing guest-physical `gpa` and the number of bytes from
    /// `gpa` on that are backed contiguously (so that a large guest page can be shadowed by a
    /// large host page), or `None`. Pages map to pages: the offset in the 4 KiB page is kept.
    fn lookup(&self, gpa: u64) -> Option<(u64, u64)>;
}

impl<T: GpaMap + ?Sized> GpaMap for &T {
    fn lookup(&self, gpa: u64) -> Option<(u64, u64)> {
        (**self).lookup(gpa)
    }
}

/// A range could not be added to a [`GpaRanges`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, displaydoc::Display, thiserror::Error)]
#[ignore_extra_doc_attributes]
pub enum RangeError {
    /// the range at GPA {0:#x} is empty, not 4 KiB aligned, or wraps the address space
    Invalid(u64),
    /// the range at GPA {0:#x} overlaps a range already mapped
    Overlap(u64),
}

/// A [`GpaMap`] made of page-aligned ranges of guest RAM, each backed contiguously on the host
/// (as a VMM's memory slots are).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpaRanges {
    /// `(gpa, len, hpa)`, sorted by `gpa`, disjoint.
    ranges: Vec<(u64, u64, u64)>,
}

impl GpaRanges {
    /// No memory at all.
    pub const fn new() -> GpaRanges {
        GpaRanges { ranges: Vec::new() }
    }

    /// Adds `len` bytes at guest-physical `gpa`, backed from host-physical `hpa` on.
    pub fn insert(&mut self, gpa: u64, len: u64, hpa: u64) -> Result<(), RangeError> {
        let aligned = (gpa | len | hpa) & 0xfff == 0;
        if len == 0 || !aligned || gpa.checked_add(len).is_none() || hpa.checked_add(len).is_none()
        {
            return Err(RangeError::Invalid(gpa));
        }
        let at = self.ranges.partition_point(|&(start, _, _)| start < gpa);
        let overlaps_next = self
            .ranges
            .get(at)
            .is_some_and(|&(start, _, _)| start < gpa + len);
        let overlaps_prev = at
            .checked_sub(1)
            .and_then(|prev| self.ranges.get(prev))
            .is_some_and(|&(start, size, _)| start + size > gpa);
        if overlaps_next || overlaps_prev {
            return Err(RangeError::Overlap(gpa));
        }
        self.ranges.insert(at, (gpa, len, hpa));
        Ok(())
    }

    /// This map with one more range; see [`insert`](Self::insert).
    pub fn with(mut self, gpa: u64, len: u64, hpa: u64) -> Result<GpaRanges, RangeError> {
        self.insert(gpa, len, hpa)?;
        Ok(self)
    }
}

impl GpaMap for GpaRanges {
    fn lookup(&self, gpa: u64) -> Option<(u64, u64)> {
        let at = self.ranges.partition_point(|&(start, _, _)| start <= gpa);
        let &(start, len, hpa) = self.ranges.get(at.checked_sub(1)?)?;
        let offset = gpa - start;
        (offset < len).then(|| (hpa + offset, len - offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_inside_between_and_outside_ranges() {
        let map = GpaRanges::new()
            .with(0x10_0000, 0x20_0000, 0x4000_0000)
            .and_then(|map| map.with(0, 0x1000, 0x9000))
            .unwrap();
        assert_eq!(
            map.lookup(0x10_0123),
            Some((0x4000_0123, 0x20_0000 - 0x123))
        );
        assert_eq!(map.lookup(0x2f_ffff), Some((0x401f_ffff, 1)));
        assert_eq!(map.lookup(0x30_0000), None);
        assert_eq!(map.lookup(0x8), Some((0x9008, 0xff8)));
        assert_eq!(map.lookup(0x1000), None);
        assert_eq!(GpaMap::lookup(&&map, u64::MAX), None);
    }

    #[test]
    fn invalid_and_overlapping_ranges_are_refused() {
        let mut map = GpaRanges::new();
        assert_eq!(map.insert(0x1000, 0, 0), Err(RangeError::Invalid(0x1000)));
        assert_eq!(
            map.insert(0x1001, 0x1000, 0),
            Err(RangeError::Invalid(0x1001))
        );
        assert_eq!(
            map.insert(!0xfff, 0x2000, 0),
            Err(RangeError::Invalid(!0xfff))
        );
        map.insert(0x2000, 0x2000, 0).unwrap();
        assert_eq!(
            map.insert(0x1000, 0x2000, 0),
            Err(RangeError::Overlap(0x1000))
        );
        assert_eq!(
            map.insert(0x3000, 0x1000, 0),
            Err(RangeError::Overlap(0x3000))
        );
        map.insert(0x4000, 0x1000, 0).unwrap();
        map.insert(0x1000, 0x1000, 0).unwrap();
        assert!(alloc::format!("{}", RangeError::Overlap(1)).contains("0x1"));
    }
}
