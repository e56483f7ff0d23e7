//! Intel EPT (SDM Vol. 3C, 29.3): the entry format of extended page tables (GPA → HPA), the
//! EPTP, and the violation and misconfiguration rules.

use core::ops::{BitOr, BitOrAssign};

use crate::access::{Access, AccessKind};
use crate::error::WalkError;
use crate::format::{
    ADDRESS_BITS, EntryKind, PagingFormat, Rights, bits, clamp_phys_bits, fits_width,
    reserved_phys_bits,
};
use crate::memory::PhysMemory;
use crate::nested::{self, NestedCause, NestedFormat, NestedKind, Stage};
use crate::size::{PageSize, PageSizes};
use crate::walk::Translation;
use crate::x86;

/// Entry bit 0: reads allowed.
pub const READ: u64 = 1 << 0;
/// Entry bit 1: writes allowed.
pub const WRITE: u64 = 1 << 1;
/// Entry bit 2: instruction fetches allowed.
pub const EXECUTE: u64 = 1 << 2;
/// Entry bits 5:3 of a page entry: the EPT memory type.
pub const MEMORY_TYPE: u64 = 0b111 << 3;
/// Entry bit 6 of a page entry: ignore the guest PAT memory type.
pub const IGNORE_PAT: u64 = 1 << 6;
/// Entry bit 7: the entry maps a page (in a PDPTE or PDE).
pub const PAGE_SIZE: u64 = 1 << 7;
/// Entry bit 8: accessed (when enabled in the EPTP).
pub const ACCESSED: u64 = 1 << 8;
/// Entry bit 9: dirty, in page entries (when enabled in the EPTP).
pub const DIRTY: u64 = 1 << 9;

/// An EPT memory type (page entries and the EPTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MemoryType {
    /// Uncacheable (0).
    Uncacheable = 0,
    /// Write combining (1).
    WriteCombining = 1,
    /// Write through (4).
    WriteThrough = 4,
    /// Write protected (5).
    WriteProtected = 5,
    /// Write back (6).
    WriteBack = 6,
}

impl MemoryType {
    /// The memory type encoded as `bits`, if it is one (2, 3 and 7 are not).
    #[inline]
    pub const fn from_bits(bits: u8) -> Option<MemoryType> {
        match bits {
            0 => Some(MemoryType::Uncacheable),
            1 => Some(MemoryType::WriteCombining),
            4 => Some(MemoryType::WriteThrough),
            5 => Some(MemoryType::WriteProtected),
            6 => Some(MemoryType::WriteBack),
            _ => None,
        }
    }
}

/// The memory type of an EPT page entry (bits 5:3).
#[inline]
pub const fn memory_type(leaf: u64) -> u8 {
    ((leaf >> 3) & 0b111) as u8
}

/// Whether an EPT page entry ignores the guest PAT (bit 6).
#[inline]
pub const fn ignores_pat(leaf: u64) -> bool {
    leaf & IGNORE_PAT != 0
}

/// Flags of an EPT page mapping, as the table builder takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EptFlags(u64);

impl EptFlags {
    /// Read permission.
    pub const READ: EptFlags = EptFlags(READ);
    /// Write permission (needs read).
    pub const WRITE: EptFlags = EptFlags(WRITE);
    /// Execute permission (alone needs execute-only support).
    pub const EXECUTE: EptFlags = EptFlags(EXECUTE);
    /// Ignore the guest PAT.
    pub const IGNORE_PAT: EptFlags = EptFlags(IGNORE_PAT);
    /// Accessed, preset.
    pub const ACCESSED: EptFlags = EptFlags(ACCESSED);
    /// Dirty, preset.
    pub const DIRTY: EptFlags = EptFlags(DIRTY);
    /// Read, write and execute, write-back: ordinary RAM.
    pub const RAM: EptFlags =
        EptFlags(READ | WRITE | EXECUTE | (MemoryType::WriteBack as u64) << 3);

    /// These flags with memory type `memory_type` (the default is uncacheable).
    #[inline]
    pub const fn with_memory_type(self, memory_type: MemoryType) -> EptFlags {
        EptFlags((self.0 & !MEMORY_TYPE) | (memory_type as u64) << 3)
    }

    /// The flags as entry bits.
    #[inline]
    pub const fn bits(self) -> u64 {
        self.0
    }
}

impl BitOr for EptFlags {
    type Output = EptFlags;
    fn bitor(self, rhs: EptFlags) -> EptFlags {
        EptFlags(self.0 | rhs.0)
    }
}

impl BitOrAssign for EptFlags {
    fn bitor_assign(&mut self, rhs: EptFlags) {
        self.0 |= rhs.0;
    }
}

/// What the processor's EPT supports (IA32_VMX_EPT_VPID_CAP and MAXPHYADDR).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EptCaps {
    /// Execute-only translations (bit 0); without it, R = W = 0 with X = 1 is a
    /// misconfiguration.
    pub execute_only: bool,
    /// 5-level EPT (bit 7).
    pub five_level: bool,
    /// 1 GiB pages (bit 17); without it, PS in a PDPTE is a misconfiguration.
    pub gbpages: bool,
    /// Accessed and dirty flags (bit 21).
    pub accessed_dirty: bool,
    /// MAXPHYADDR of the host: entry address bits at and above it are reserved.
    pub max_phys_bits: u8,
}

impl EptCaps {
    /// The capabilities an IA32_VMX_EPT_VPID_CAP value reports, with host MAXPHYADDR
    /// `max_phys_bits`.
    #[inline]
    pub const fn from_msr(ept_vpid_cap: u64, max_phys_bits: u8) -> EptCaps {
        EptCaps {
            execute_only: ept_vpid_cap & 1 != 0,
            five_level: ept_vpid_cap & (1 << 7) != 0,
            gbpages: ept_vpid_cap & (1 << 17) != 0,
            accessed_dirty: ept_vpid_cap & (1 << 21) != 0,
            max_phys_bits: clamp_phys_bits(max_phys_bits),
        }
    }

    /// Every feature, with host MAXPHYADDR `max_phys_bits`.
    #[inline]
    pub const fn all(max_phys_bits: u8) -> EptCaps {
        EptCaps {
            execute_only: true,
            five_level: true,
            gbpages: true,
            accessed_dirty: true,
            max_phys_bits: clamp_phys_bits(max_phys_bits),
        }
    }
}

/// An EPTP the processor would refuse at VM entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, displaydoc::Display, thiserror::Error)]
#[ignore_extra_doc_attributes]
pub enum EptpError {
    /// EPTP memory type {0} is neither uncacheable (0) nor write-back (6)
    MemoryType(u8),
    /// EPTP asks for a {0}-level walk, which the processor does not support
    WalkLength(u8),
    /// EPTP enables accessed and dirty flags, which the processor does not support
    AccessedDirty,
    /// EPTP sets reserved bits {0:#x}
    Reserved(u64),
}

/// Intel EPT tables: their root, walk length, accessed/dirty enable, and the processor's
/// capabilities. The [`NestedFormat`] for the two-dimensional walk, and the format the
/// [`TableBuilder`](crate::TableBuilder) uses to build EPT tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ept {
    /// The physical address of the root table (EPT PML4 or PML5).
    pub root: u64,
    /// A 5-level walk (57-bit guest-physical addresses) instead of 4-level.
    pub five_level: bool,
    /// Accessed and dirty flags enabled (EPTP bit 6). Guest paging-structure accesses then
    /// count as writes.
    pub accessed_dirty: bool,
    /// What the processor supports.
    pub caps: EptCaps,
}

impl Ept {
    /// 4-level EPT rooted at `root`, accessed/dirty flags disabled.
    #[inline]
    pub const fn new(root: u64, caps: EptCaps) -> Ept {
        Ept {
            root,
            five_level: false,
            accessed_dirty: false,
            caps,
        }
    }

    /// The EPT an EPTP value selects, validated as VM entry does.
    pub fn from_eptp(eptp: u64, caps: EptCaps) -> Result<Ept, EptpError> {
        let memory_type = (eptp & 0b111) as u8;
        if memory_type != MemoryType::Uncacheable as u8
            && memory_type != MemoryType::WriteBack as u8
        {
            return Err(EptpError::MemoryType(memory_type));
        }
        let levels = ((eptp >> 3) & 0b111) as u8 + 1;
        let five_level = match levels {
            4 => false,
            5 if caps.five_level => true,
            _ => return Err(EptpError::WalkLength(levels)),
        };
        let accessed_dirty = eptp & (1 << 6) != 0;
        if accessed_dirty && !caps.accessed_dirty {
            return Err(EptpError::AccessedDirty);
        }
        let reserved = eptp & (bits(11, 8) | !((1u64 << caps.max_phys_bits) - 1));
        if reserved != 0 {
            return Err(EptpError::Reserved(reserved));
        }
        Ok(Ept {
            root: eptp & ADDRESS_BITS,
            five_level,
            accessed_dirty,
            caps,
        })
    }

    /// The EPTP selecting these tables, write-back.
    #[inline]
    pub const fn eptp(&self) -> u64 {
        let walk_length = if self.five_level { 4 } else { 3 };
        (self.root & ADDRESS_BITS)
            | MemoryType::WriteBack as u64
            | walk_length << 3
            | (self.accessed_dirty as u64) << 6
    }

    /// Translates `gpa` for an access of `kind`, setting accessed/dirty flags if enabled.
    pub fn translate<M: PhysMemory + ?Sized>(
        &self,
        mem: &M,
        gpa: u64,
        kind: AccessKind,
    ) -> Result<Translation, WalkError> {
        nested::translate_gpa(self, mem, gpa, kind)
    }

    /// Like [`translate`](Self::translate) without setting any flag.
    pub fn probe<M: PhysMemory + ?Sized>(
        &self,
        mem: &M,
        gpa: u64,
        kind: AccessKind,
    ) -> Result<Translation, WalkError> {
        nested::probe_gpa(self, mem, gpa, kind)
    }

    /// The entry rules of these tables, with their masks computed: what the walker runs.
    #[inline]
    pub const fn rules(&self) -> EptRules {
        EptRules {
            reserved: reserved_phys_bits(self.caps.max_phys_bits),
            max_phys_bits: clamp_phys_bits(self.caps.max_phys_bits),
            five_level: self.five_level,
            accessed_dirty: self.accessed_dirty,
            execute_only: self.caps.execute_only,
            gbpages: self.caps.gbpages,
        }
    }
}

/// The EPT entry rules of one configuration, with the reserved-bit mask computed once: the
/// [`PagingFormat`] the walker runs for [`Ept`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EptRules {
    /// Bits 51:MAXPHYADDR.
    reserved: u64,
    max_phys_bits: u8,
    five_level: bool,
    accessed_dirty: bool,
    execute_only: bool,
    gbpages: bool,
}

impl EptRules {
    /// Whether the R/W/X bits form a misconfiguration: write without read, or execute alone
    /// without execute-only support.
    fn permission_misconfigured(&self, entry: u64) -> bool {
        let rwx = entry & (READ | WRITE | EXECUTE);
        rwx & (READ | WRITE) == WRITE || (rwx == EXECUTE && !self.execute_only)
    }
}

/// Whether a page entry's memory type is 2, 3 or 7: a misconfiguration.
#[inline]
const fn bad_memory_type(entry: u64) -> bool {
    MemoryType::from_bits(memory_type(entry)).is_none()
}

impl PagingFormat for EptRules {
    type Flags = EptFlags;
    const RIGHTS_INVERT: u64 = 0;

    fn levels(&self) -> u8 {
        if self.five_level { 5 } else { 4 }
    }

    fn accepts(&self, addr: u64) -> bool {
        fits_width(addr, self.levels())
    }

    #[inline]
    fn decode(&self, entry: u64, level: u8) -> EntryKind {
        if entry & (READ | WRITE | EXECUTE) == 0 {
            return EntryKind::NotPresent;
        }
        if self.permission_misconfigured(entry) || entry & self.reserved != 0 {
            return EntryKind::Reserved;
        }
        // Written as early returns: the next table's address must not wait on the checks.
        let large = entry & PAGE_SIZE != 0;
        let (reserved, address) = match level {
            1 => (0, ADDRESS_BITS),
            2 | 3 if large => {
                if level == 3 && !self.gbpages {
                    return EntryKind::Reserved;
                }
                if level == 2 {
                    (bits(20, 12), bits(51, 21))
                } else {
                    (bits(29, 12), bits(51, 30))
                }
            }
            2 | 3 if entry & bits(6, 3) != 0 => return EntryKind::Reserved,
            2 | 3 => return EntryKind::Table(entry & ADDRESS_BITS),
            _ if entry & bits(7, 3) != 0 => return EntryKind::Reserved,
            _ => return EntryKind::Table(entry & ADDRESS_BITS),
        };
        if entry & reserved != 0 || bad_memory_type(entry) {
            EntryKind::Reserved
        } else {
            EntryKind::Page(entry & address)
        }
    }

    #[inline]
    fn permits(&self, rights: u64, access: Access) -> bool {
        let needed = match access.kind {
            AccessKind::Read => READ,
            AccessKind::Write => WRITE,
            AccessKind::Fetch => EXECUTE,
        };
        rights & needed != 0
    }

    fn rights(&self, rights: u64) -> Rights {
        Rights {
            read: rights & READ != 0,
            write: rights & WRITE != 0,
            execute: rights & EXECUTE != 0,
            user: false,
        }
    }

    fn accessed_flag(&self) -> u64 {
        if self.accessed_dirty { ACCESSED } else { 0 }
    }

    fn dirty_flag(&self) -> u64 {
        if self.accessed_dirty { DIRTY } else { 0 }
    }

    fn max_phys_bits(&self) -> u8 {
        self.max_phys_bits
    }

    fn page_sizes(&self) -> PageSizes {
        if self.gbpages {
            PageSizes::ALL
        } else {
            PageSizes::UP_TO_2M
        }
    }

    fn table_entry(&self, table: u64) -> u64 {
        (table & ADDRESS_BITS) | READ | WRITE | EXECUTE
    }

    fn page_entry(&self, base: u64, size: PageSize, flags: EptFlags) -> Option<u64> {
        let entry = base
            | flags.bits()
            | if size == PageSize::Size4K {
                0
            } else {
                PAGE_SIZE
            };
        let valid = base & size.offset_mask() == 0
            && base & !ADDRESS_BITS == 0
            && base & self.reserved == 0
            && entry & (READ | WRITE | EXECUTE) != 0
            && !self.permission_misconfigured(entry)
            && !bad_memory_type(entry)
            && (size != PageSize::Size1G || self.gbpages);
        valid.then_some(entry)
    }
}

x86::delegate_format!(Ept, EptRules);

impl NestedFormat for Ept {
    type Rules = EptRules;

    #[inline]
    fn rules(&self) -> EptRules {
        Ept::rules(self)
    }

    #[inline]
    fn root(&self) -> u64 {
        self.root & ADDRESS_BITS
    }

    #[inline]
    fn kind(&self) -> NestedKind {
        NestedKind::Ept
    }

    #[inline]
    fn guest_table_access(&self) -> AccessKind {
        if self.accessed_dirty {
            AccessKind::Write
        } else {
            AccessKind::Read
        }
    }

    /// The exit qualification of an EPT violation (SDM Vol. 3C, Table 28-7): bits 2:0 the
    /// access, bits 5:3 the R/W/X rights combined over the entries used, bit 7 set when a
    /// linear address is behind the access, bit 8 set when it is the final access rather than
    /// a guest paging-structure access. A misconfiguration has no qualification: 0.
    #[inline]
    fn exit_info(&self, cause: NestedCause, access: AccessKind, rights: u64, stage: Stage) -> u64 {
        if cause == NestedCause::Reserved {
            return 0;
        }
        let access_bit = match access {
            AccessKind::Read => 1,
            AccessKind::Write => 2,
            AccessKind::Fetch => 4,
        };
        let stage_bits = match stage {
            Stage::Direct => 0,
            Stage::GuestTable { .. } => 1 << 7,
            Stage::Final => (1 << 7) | (1 << 8),
        };
        access_bit | (rights & (READ | WRITE | EXECUTE)) << 3 | stage_bits
    }
}

#[cfg(test)]
mod tests;
