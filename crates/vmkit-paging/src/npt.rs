//! AMD NPT (APM Vol. 2, 15.25): nested tables in the x86-64 format, rooted at nCR3 and walked
//! with the host's paging controls, every access a user access.

use crate::access::AccessKind;
use crate::error::WalkError;
use crate::format::{ADDRESS_BITS, reserved_phys_bits};
use crate::memory::PhysMemory;
use crate::nested::{self, NestedCause, NestedFormat, NestedKind, Stage};
use crate::walk::Translation;
use crate::x86::{self, Checks, X86Rules};

/// EXITINFO1 bit 32 of a #VMEXIT(NPF): the fault is on the final guest-physical access.
pub const EXITINFO1_FINAL: u64 = 1 << 32;
/// EXITINFO1 bit 33 of a #VMEXIT(NPF): the fault is on a guest page-table access.
pub const EXITINFO1_GUEST_TABLE: u64 = 1 << 33;

/// AMD nested page tables: nCR3 and the host paging controls that govern the nested walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Npt {
    /// nCR3: the root table in bits M-1:12.
    pub ncr3: u64,
    /// 5-level nested tables (host CR4.LA57).
    pub five_level: bool,
    /// The host's EFER.NXE: XD is honoured, not reserved.
    pub nxe: bool,
    /// Host MAXPHYADDR.
    pub max_phys_bits: u8,
    /// 1 GiB pages supported.
    pub gbpages: bool,
}

impl Npt {
    /// 4-level nested tables rooted at `ncr3`, NXE set, MAXPHYADDR 52, 1 GiB pages supported.
    #[inline]
    pub const fn new(ncr3: u64) -> Npt {
        Npt {
            ncr3,
            five_level: false,
            nxe: true,
            max_phys_bits: 52,
            gbpages: true,
        }
    }

    /// Translates `gpa` for an access of `kind` (a user access), setting accessed/dirty flags.
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
}

x86::delegate_format!(Npt, X86Rules);

impl NestedFormat for Npt {
    type Rules = X86Rules;

    #[inline]
    fn rules(&self) -> X86Rules {
        X86Rules::new(
            self.five_level,
            self.nxe,
            self.max_phys_bits,
            self.gbpages,
            Checks::Nested,
        )
    }

    #[inline]
    fn root(&self) -> u64 {
        self.ncr3 & ADDRESS_BITS & !reserved_phys_bits(self.max_phys_bits)
    }

    #[inline]
    fn kind(&self) -> NestedKind {
        NestedKind::Npt
    }

    /// The processor may set accessed/dirty flags in any guest table it reads, so guest
    /// page-table accesses are user writes for the nested walk.
    #[inline]
    fn guest_table_access(&self) -> AccessKind {
        AccessKind::Write
    }

    /// EXITINFO1 of a #VMEXIT(NPF) (APM Vol. 2, 15.25.6): the page-fault error code of the nested
    /// walk (P, RW, US always set, RSVD, ID when NXE is on) with bit 32 set for the final
    /// access and bit 33 for a guest page-table access.
    #[inline]
    fn exit_info(&self, cause: NestedCause, access: AccessKind, _rights: u64, stage: Stage) -> u64 {
        let mut info = u64::from(x86::PageFault::USER);
        match cause {
            NestedCause::NotPresent => {}
            NestedCause::Denied => info |= u64::from(x86::PageFault::PRESENT),
            NestedCause::Reserved => {
                info |= u64::from(x86::PageFault::PRESENT | x86::PageFault::RESERVED)
            }
        }
        if access == AccessKind::Write {
            info |= u64::from(x86::PageFault::WRITE);
        }
        if access == AccessKind::Fetch && self.nxe {
            info |= u64::from(x86::PageFault::FETCH);
        }
        info | match stage {
            Stage::Direct => 0,
            Stage::GuestTable { .. } => EXITINFO1_GUEST_TABLE,
            Stage::Final => EXITINFO1_FINAL,
        }
    }
}

#[cfg(test)]
mod tests;
