//! Page sizes and sets of page sizes.

use core::fmt;

/// The size of a page mapped by one paging-structure entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PageSize {
    /// 4 KiB, mapped by a level-1 entry (PTE).
    Size4K,
    /// 2 MiB, mapped by a level-2 entry (PDE) with PS = 1.
    Size2M,
    /// 1 GiB, mapped by a level-3 entry (PDPTE) with PS = 1.
    Size1G,
}

impl PageSize {
    /// All sizes, largest first.
    pub const LARGEST_FIRST: [PageSize; 3] = [PageSize::Size1G, PageSize::Size2M, PageSize::Size4K];

    /// log2 of the size in bytes.
    #[inline]
    pub const fn shift(self) -> u32 {
        match self {
            PageSize::Size4K => 12,
            PageSize::Size2M => 21,
            PageSize::Size1G => 30,
        }
    }

    /// The size in bytes.
    #[inline]
    pub const fn bytes(self) -> u64 {
        1 << self.shift()
    }

    /// The mask of the offset bits inside a page of this size.
    #[inline]
    pub const fn offset_mask(self) -> u64 {
        self.bytes() - 1
    }

    /// The paging level (1 = PTE, 2 = PDE, 3 = PDPTE) whose entries map pages of this size.
    #[inline]
    pub const fn level(self) -> u8 {
        match self {
            PageSize::Size4K => 1,
            PageSize::Size2M => 2,
            PageSize::Size1G => 3,
        }
    }

    /// The size mapped by a leaf entry at `level`, if pages can be mapped there.
    pub const fn from_level(level: u8) -> Option<PageSize> {
        match level {
            1 => Some(PageSize::Size4K),
            2 => Some(PageSize::Size2M),
            3 => Some(PageSize::Size1G),
            _ => None,
        }
    }

    const fn bit(self) -> u8 {
        1 << (self.level() - 1)
    }
}

impl fmt::Display for PageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PageSize::Size4K => "4 KiB",
            PageSize::Size2M => "2 MiB",
            PageSize::Size1G => "1 GiB",
        })
    }
}

/// A set of page sizes: the sizes a backend supports or a caller allows.
///
/// Not every host can back 1 GiB guest pages, and not every CPU model offers them to a guest, so
/// the table builder takes the set it may use from its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PageSizes(u8);

impl PageSizes {
    /// No size at all.
    pub const EMPTY: PageSizes = PageSizes(0);
    /// 4 KiB pages only.
    pub const SMALL: PageSizes = PageSizes(1);
    /// 4 KiB and 2 MiB pages: what every x86-64 CPU and EPT implementation supports.
    pub const UP_TO_2M: PageSizes = PageSizes(0b011);
    /// 4 KiB, 2 MiB and 1 GiB pages.
    pub const ALL: PageSizes = PageSizes(0b111);

    /// The set holding exactly `sizes`.
    pub const fn of(sizes: &[PageSize]) -> PageSizes {
        let mut set = PageSizes::EMPTY;
        let mut i = 0;
        while i < sizes.len() {
            set = set.with(sizes[i]);
            i += 1;
        }
        set
    }

    /// This set plus `size`.
    pub const fn with(self, size: PageSize) -> PageSizes {
        PageSizes(self.0 | size.bit())
    }

    /// This set minus `size`.
    pub const fn without(self, size: PageSize) -> PageSizes {
        PageSizes(self.0 & !size.bit())
    }

    /// Whether `size` is in the set.
    pub const fn contains(self, size: PageSize) -> bool {
        self.0 & size.bit() != 0
    }

    /// The sizes in both sets.
    pub const fn intersection(self, other: PageSizes) -> PageSizes {
        PageSizes(self.0 & other.0)
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The sizes in the set, largest first.
    pub fn iter(self) -> impl Iterator<Item = PageSize> {
        PageSize::LARGEST_FIRST
            .into_iter()
            .filter(move |size| self.contains(*size))
    }

    /// The largest size in the set that can map `virt` to `phys` with `len` bytes left to map:
    /// both addresses aligned to it and `len` at least as large.
    pub fn largest_fit(self, virt: u64, phys: u64, len: u64) -> Option<PageSize> {
        self.iter()
            .find(|size| (virt | phys) & size.offset_mask() == 0 && len >= size.bytes())
    }
}

impl FromIterator<PageSize> for PageSizes {
    fn from_iter<I: IntoIterator<Item = PageSize>>(iter: I) -> Self {
        iter.into_iter().fold(PageSizes::EMPTY, PageSizes::with)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn sizes_and_levels() {
        for size in PageSize::LARGEST_FIRST {
            assert_eq!(PageSize::from_level(size.level()), Some(size));
            assert_eq!(size.bytes(), 1 << size.shift());
            assert_eq!(size.offset_mask() + 1, size.bytes());
        }
        assert_eq!(PageSize::from_level(0), None);
        assert_eq!(PageSize::from_level(4), None);
        assert_eq!(PageSize::Size2M.bytes(), 0x20_0000);
        assert_eq!(alloc::format!("{}", PageSize::Size1G), "1 GiB");
        assert_eq!(alloc::format!("{}", PageSize::Size2M), "2 MiB");
        assert_eq!(alloc::format!("{}", PageSize::Size4K), "4 KiB");
    }

    #[test]
    fn set_operations() {
        let set = PageSizes::of(&[PageSize::Size4K, PageSize::Size1G]);
        assert!(set.contains(PageSize::Size4K));
        assert!(!set.contains(PageSize::Size2M));
        assert!(set.contains(PageSize::Size1G));
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            [PageSize::Size1G, PageSize::Size4K]
        );
        assert_eq!(set.without(PageSize::Size1G), PageSizes::SMALL);
        assert_eq!(
            PageSizes::ALL.intersection(PageSizes::UP_TO_2M),
            PageSizes::UP_TO_2M
        );
        assert!(PageSizes::EMPTY.is_empty());
        assert!(!PageSizes::SMALL.is_empty());
        let collected: PageSizes = [PageSize::Size2M, PageSize::Size4K].into_iter().collect();
        assert_eq!(collected, PageSizes::UP_TO_2M);
        assert_eq!(PageSizes::default(), PageSizes::EMPTY);
    }

    #[test]
    fn largest_fit_respects_alignment_length_and_set() {
        let all = PageSizes::ALL;
        assert_eq!(all.largest_fit(0, 0, 1 << 30), Some(PageSize::Size1G));
        assert_eq!(all.largest_fit(0, 0, (1 << 30) - 1), Some(PageSize::Size2M));
        assert_eq!(
            all.largest_fit(0x20_0000, 0, 1 << 30),
            Some(PageSize::Size2M)
        );
        assert_eq!(all.largest_fit(0, 0x1000, 1 << 30), Some(PageSize::Size4K));
        assert_eq!(all.largest_fit(0, 0, 0xfff), None);
        assert_eq!(
            PageSizes::UP_TO_2M.largest_fit(0, 0, 1 << 30),
            Some(PageSize::Size2M)
        );
        assert_eq!(
            PageSizes::of(&[PageSize::Size2M]).largest_fit(0x1000, 0x1000, 1 << 30),
            None
        );
    }
}
