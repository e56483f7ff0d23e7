//! Address and port ranges.

use vm_memory::GuestAddress;

/// `size` bytes of guest physical address space from `start`: a RAM region, an allocation window
/// or an allocated MMIO range.
///
/// A range returned by this crate is never empty and never wraps around the 64-bit space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressRange {
    /// First guest physical address.
    pub start: GuestAddress,
    /// Length in bytes.
    pub size: u64,
}

/// A region of guest RAM, backed by one mapping of the guest memory.
pub type RamRegion = AddressRange;

impl AddressRange {
    /// The range of `size` bytes from `start`.
    pub const fn new(start: GuestAddress, size: u64) -> Self {
        AddressRange { start, size }
    }

    /// One past the last address (saturating at `u64::MAX` for a range that reaches the top).
    pub fn end(&self) -> GuestAddress {
        GuestAddress(self.start.0.saturating_add(self.size))
    }

    /// The last address, or `None` for an empty range.
    pub fn last(&self) -> Option<GuestAddress> {
        let last = self.start.0.checked_add(self.size.checked_sub(1)?)?;
        Some(GuestAddress(last))
    }

    /// Whether `addr` lies in the range.
    pub fn contains(&self, addr: GuestAddress) -> bool {
        addr.0 >= self.start.0 && addr.0 - self.start.0 < self.size
    }

    /// Whether `other` lies entirely in the range (an empty `other` lies in every range).
    pub fn contains_range(&self, other: &AddressRange) -> bool {
        match other.last() {
            None => true,
            Some(last) => self.contains(other.start) && self.contains(last),
        }
    }

    /// Whether the two ranges share at least one address.
    pub fn overlaps(&self, other: &AddressRange) -> bool {
        match (self.last(), other.last()) {
            (Some(a), Some(b)) => self.start.0 <= b.0 && other.start.0 <= a.0,
            _ => false,
        }
    }
}

/// `size` ports from `start` in the 16-bit port-I/O space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// First port.
    pub start: u16,
    /// Number of ports.
    pub size: u16,
}

impl PortRange {
    /// The range of `size` ports from `start`.
    pub const fn new(start: u16, size: u16) -> Self {
        PortRange { start, size }
    }

    /// One past the last port (may be `0x10000`, hence `u32`).
    pub fn end(&self) -> u32 {
        u32::from(self.start) + u32::from(self.size)
    }

    /// Whether `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        port >= self.start && port - self.start < self.size
    }

    /// Whether the two ranges share at least one port.
    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.size != 0
            && other.size != 0
            && u32::from(self.start) < other.end()
            && u32::from(other.start) < self.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_range_bounds() {
        let r = AddressRange::new(GuestAddress(0x1000), 0x2000);
        assert_eq!(r.end(), GuestAddress(0x3000));
        assert_eq!(r.last(), Some(GuestAddress(0x2fff)));
        assert!(r.contains(GuestAddress(0x1000)));
        assert!(r.contains(GuestAddress(0x2fff)));
        assert!(!r.contains(GuestAddress(0x3000)));
        assert!(!r.contains(GuestAddress(0xfff)));
        assert_eq!(AddressRange::new(GuestAddress(5), 0).last(), None);
        let top = AddressRange::new(GuestAddress(u64::MAX), 1);
        assert_eq!(top.last(), Some(GuestAddress(u64::MAX)));
        assert_eq!(top.end(), GuestAddress(u64::MAX));
        assert_eq!(AddressRange::new(GuestAddress(u64::MAX), 2).last(), None);
    }

    #[test]
    fn address_range_containment_and_overlap() {
        let r = AddressRange::new(GuestAddress(0x1000), 0x2000);
        assert!(r.contains_range(&AddressRange::new(GuestAddress(0x1000), 0x2000)));
        assert!(r.contains_range(&AddressRange::new(GuestAddress(0x9000), 0)));
        assert!(!r.contains_range(&AddressRange::new(GuestAddress(0x2000), 0x1001)));
        assert!(r.overlaps(&AddressRange::new(GuestAddress(0x2fff), 1)));
        assert!(r.overlaps(&AddressRange::new(GuestAddress(0), 0x1001)));
        assert!(!r.overlaps(&AddressRange::new(GuestAddress(0x3000), 1)));
        assert!(!r.overlaps(&AddressRange::new(GuestAddress(0), 0x1000)));
        assert!(!r.overlaps(&AddressRange::new(GuestAddress(0x1800), 0)));
    }

    #[test]
    fn port_range_bounds_and_overlap() {
        let r = PortRange::new(0xfff0, 0x10);
        assert_eq!(r.end(), 0x1_0000);
        assert!(r.contains(0xffff));
        assert!(!r.contains(0xffef));
        assert!(r.overlaps(&PortRange::new(0xffff, 1)));
        assert!(!r.overlaps(&PortRange::new(0xffe0, 0x10)));
        assert!(!r.overlaps(&PortRange::new(0xfff4, 0)));
    }
}
