//! The page-table format trait that the one generic walker and the builder are written against.

use crate::access::Access;
use crate::size::{PageSize, PageSizes};

/// What one paging-structure entry means at one level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// The entry is not present: translation stops without a valid result.
    NotPresent,
    /// The entry is present but malformed: a reserved bit is set, or (EPT) its permissions or
    /// memory type form a misconfiguration.
    Reserved,
    /// The entry references the next paging structure at this physical address.
    Table(u64),
    /// The entry maps a page of the size its level maps, starting at this physical address.
    Page(u64),
}

/// The effective access rights of a translation, combined over every entry used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rights {
    /// Data reads are allowed (always true for x86-64 paging; EPT read permission).
    pub read: bool,
    /// Data writes are allowed (R/W set at every level; EPT write permission at every level).
    pub write: bool,
    /// Instruction fetches are allowed (XD clear at every level; EPT execute permission).
    pub execute: bool,
    /// The page is a user-mode page (U/S set at every level). Always false for EPT.
    pub user: bool,
}

/// A page-table format: how entries are decoded and built, and what access rights they grant.
///
/// The generic walker (one loop for every format, as Linux's `paging_tmpl.h`) and the table
/// builder are written against this trait; x86-64 paging ([`X86Format`](crate::X86Format)),
/// AMD NPT ([`Npt`](crate::Npt)) and Intel EPT ([`Ept`](crate::Ept)) implement it.
///
/// The walker combines the rights of the entries it uses as
/// `rights = AND over the entries of (entry ^ RIGHTS_INVERT)`, so a bit that grants a right
/// must be set at every level, and a bit that denies one ([`RIGHTS_INVERT`](Self::RIGHTS_INVERT),
/// the x86 XD bit) denies it when set at any level.
pub trait PagingFormat {
    /// Flags of a page mapping, as the builder takes them.
    type Flags: Copy;

    /// Bits that deny a right when set; see the trait documentation.
    const RIGHTS_INVERT: u64;

    /// The number of paging levels (4 or 5).
    fn levels(&self) -> u8;

    /// Whether `addr` can be translated at all: canonical for linear addresses, inside the
    /// address width for guest-physical addresses.
    fn accepts(&self, addr: u64) -> bool;

    /// What `entry` means at `level` (1 = the level that maps 4 KiB pages).
    fn decode(&self, entry: u64, level: u8) -> EntryKind;

    /// Whether the combined `rights` (see the trait documentation) allow `access`.
    fn permits(&self, rights: u64, access: Access) -> bool;

    /// The combined `rights` in readable form.
    fn rights(&self, rights: u64) -> Rights;

    /// The accessed flag the walker sets in every entry of a successful translation, or 0 when
    /// the format (or its configuration) has none.
    fn accessed_flag(&self) -> u64;

    /// The dirty flag the walker sets in the leaf entry of a successful write, or 0.
    fn dirty_flag(&self) -> u64;

    /// The physical-address width (MAXPHYADDR) of the addresses in the entries.
    fn max_phys_bits(&self) -> u8;

    /// The page sizes the format can map in its current configuration.
    fn page_sizes(&self) -> PageSizes;

    /// An entry referencing the paging structure at `table`, granting every right (the page
    /// entries restrict them).
    fn table_entry(&self, table: u64) -> u64;

    /// An entry mapping the page of `size` at `base` with `flags`, or `None` if the flags are
    /// not valid in this format and configuration.
    fn page_entry(&self, base: u64, size: PageSize, flags: Self::Flags) -> Option<u64>;
}

/// The mask of address bits 51:12 of paging-structure entries.
pub(crate) const ADDRESS_BITS: u64 = 0x000f_ffff_ffff_f000;

/// The MAXPHYADDR-dependent reserved bits 51:`max_phys_bits` of an entry (none for 52).
#[inline]
pub(crate) const fn reserved_phys_bits(max_phys_bits: u8) -> u64 {
    let bits = clamp_phys_bits(max_phys_bits);
    ADDRESS_BITS & !((1u64 << bits) - 1)
}

/// MAXPHYADDR limited to what x86-64 allows: 32 to 52 bits.
#[inline]
pub(crate) const fn clamp_phys_bits(max_phys_bits: u8) -> u8 {
    if max_phys_bits < 32 {
        32
    } else if max_phys_bits > 52 {
        52
    } else {
        max_phys_bits
    }
}

/// Whether `addr` fits in the input width of a `levels`-level walk (48 or 57 bits).
#[inline]
pub(crate) const fn fits_width(addr: u64, levels: u8) -> bool {
    let bits = 12 + 9 * levels as u32;
    bits >= 64 || addr >> bits == 0
}

/// Bits `hi..=lo` set.
#[inline]
pub(crate) const fn bits(hi: u32, lo: u32) -> u64 {
    (u64::MAX >> (63 - hi)) & !((1u64 << lo) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_helpers() {
        assert_eq!(bits(20, 13), 0x1f_e000);
        assert_eq!(bits(63, 63), 1 << 63);
        assert_eq!(bits(51, 12), ADDRESS_BITS);
        assert_eq!(reserved_phys_bits(52), 0);
        assert_eq!(reserved_phys_bits(46), bits(51, 46));
        assert_eq!(reserved_phys_bits(8), bits(51, 32));
        assert_eq!(reserved_phys_bits(60), 0);
        assert!(fits_width((1 << 48) - 1, 4));
        assert!(!fits_width(1 << 48, 4));
        assert!(fits_width(1 << 56, 5));
        assert!(!fits_width(1 << 57, 5));
        assert!(fits_width(u64::MAX, 6));
    }
}
