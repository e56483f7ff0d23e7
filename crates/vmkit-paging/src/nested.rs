//! Nested paging: GPA → HPA translation through EPT or NPT tables, and the two-dimensional walk
//! GVA → GPA → HPA in which every guest paging-structure access is itself translated.
//!
//! The semantics of the two-dimensional walk, in order:
//!
//! 1. A non-canonical GVA fails before any memory reference.
//! 2. For each guest level, the guest-physical address of the entry is translated through the
//!    nested tables (a complete nested translation, which sets the nested accessed flags, and the
//!    nested dirty flag when it counts as a write), then the entry is read at the host-physical
//!    address. Guest-table accesses are writes for the nested walk when the processor treats them
//!    so ([`NestedFormat::guest_table_access`]): always with NPT, with EPT when its accessed and
//!    dirty flags are enabled; otherwise reads. Every nested access counts as a user access.
//! 3. The guest rights are checked; a guest failure is a guest page fault.
//! 4. The guest accessed/dirty updates are made as by the native walker, each one through a
//!    fresh nested translation of the entry's address as a write (so with EPT accessed/dirty
//!    flags disabled a read-only guest table faults here).
//! 5. The final guest-physical address is translated for the access itself.
//!
//! Each memory reference is counted: 24 for a 4-level guest on 4-level nested tables with
//! 4 KiB pages, fewer with large pages.

use core::fmt;

use crate::access::{Access, AccessKind, Privilege};
use crate::error::WalkError;
use crate::format::PagingFormat;
use crate::memory::PhysMemory;
use crate::walk::{Direct, EntryAccess, Stop, Translation, walk};
use crate::x86::X86Paging;

/// Which nested format a fault comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NestedKind {
    /// Intel EPT: the fault is an EPT violation or an EPT misconfiguration.
    Ept,
    /// AMD NPT: the fault is a #VMEXIT(NPF).
    Npt,
}

/// Which access of a translation the nested walk served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// A guest-physical address translated alone, with no linear address behind it.
    Direct,
    /// The access to a guest paging-structure entry used at `level` of the guest walk.
    GuestTable {
        /// The guest level (5 or 4 = the root table, 1 = the PTE).
        level: u8,
    },
    /// The access to the final guest-physical address of the translated linear address.
    Final,
}

/// Why a nested translation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NestedCause {
    /// An entry is not present (EPT violation; NPF with P = 0).
    NotPresent,
    /// The nested rights do not allow the access (EPT violation; NPF with P = 1).
    Denied,
    /// An entry sets a reserved bit (EPT misconfiguration; NPF with RSVD = 1).
    Reserved,
}

/// A nested-paging fault: what the hypervisor gets instead of the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NestedFault {
    /// EPT or NPT.
    pub kind: NestedKind,
    /// The guest-physical address whose translation failed.
    pub gpa: u64,
    /// The linear address being translated, if any.
    pub linear: Option<u64>,
    /// Which access of the translation failed.
    pub stage: Stage,
    /// The nested access: read, write or fetch (guest-table accesses as the format treats them).
    pub access: AccessKind,
    /// Not present, denied, or reserved bit / misconfiguration.
    pub cause: NestedCause,
    /// The nested level at which the walk stopped.
    pub level: u8,
    /// The architectural fault information: for EPT the exit qualification (0 for a
    /// misconfiguration, which has none), for NPT EXITINFO1 (EXITINFO2 is [`gpa`](Self::gpa)).
    pub info: u64,
}

impl NestedFault {
    /// Whether this is an EPT misconfiguration (VM-exit reason 49) rather than a violation.
    pub const fn is_ept_misconfig(&self) -> bool {
        matches!(self.kind, NestedKind::Ept) && matches!(self.cause, NestedCause::Reserved)
    }
}

impl fmt::Display for NestedFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match (self.kind, self.cause) {
            (NestedKind::Ept, NestedCause::Reserved) => "EPT misconfiguration",
            (NestedKind::Ept, _) => "EPT violation",
            (NestedKind::Npt, _) => "nested page fault",
        };
        write!(
            f,
            "{what} at GPA {:#x} ({:?}, {:?} during {:?}), info {:#x}",
            self.gpa, self.cause, self.access, self.stage, self.info
        )
    }
}

/// A nested table format (EPT or NPT): its entry rules and what the two-dimensional walk needs
/// beyond them.
pub trait NestedFormat {
    /// The entry rules the nested walk runs.
    type Rules: PagingFormat;

    /// The entry rules of this configuration, computed once per walk.
    fn rules(&self) -> Self::Rules;

    /// The physical address of the root table (from the EPTP or nCR3).
    fn root(&self) -> u64;

    /// EPT or NPT.
    fn kind(&self) -> NestedKind;

    /// How the nested walk treats the processor's accesses to guest paging-structure entries.
    fn guest_table_access(&self) -> AccessKind;

    /// The architectural fault information (see [`NestedFault::info`]) of a fault.
    fn exit_info(&self, cause: NestedCause, access: AccessKind, rights: u64, stage: Stage) -> u64;
}

/// A successful two-dimensional translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NestedTranslation {
    /// The host-physical address.
    pub hpa: u64,
    /// The guest-physical address the guest tables gave.
    pub gpa: u64,
    /// The guest translation (GVA → GPA); its `refs` counts every reference of the guest walk,
    /// the nested ones for its tables included.
    pub guest: Translation,
    /// The nested translation of the final GPA; its `refs` counts its own references.
    pub host: Translation,
    /// All memory references of the translation: `guest.refs + host.refs`.
    pub refs: u32,
}

/// Translates `gpa` through `nested`'s tables in `mem` for an access of `kind`, setting the
/// nested accessed/dirty flags on success.
pub fn translate_gpa<N, M>(
    nested: &N,
    mem: &M,
    gpa: u64,
    kind: AccessKind,
) -> Result<Translation, WalkError>
where
    N: NestedFormat + ?Sized,
    M: PhysMemory + ?Sized,
{
    let mut refs = 0;
    let walked = nested_walk(nested, mem, gpa, kind, Stage::Direct, None, true, &mut refs)?;
    Ok(walked.translation(&nested.rules(), refs))
}

/// Like [`translate_gpa`] but without setting any flag.
pub fn probe_gpa<N, M>(
    nested: &N,
    mem: &M,
    gpa: u64,
    kind: AccessKind,
) -> Result<Translation, WalkError>
where
    N: NestedFormat + ?Sized,
    M: PhysMemory + ?Sized,
{
    let mut refs = 0;
    let walked = nested_walk(
        nested,
        mem,
        gpa,
        kind,
        Stage::Direct,
        None,
        false,
        &mut refs,
    )?;
    Ok(walked.translation(&nested.rules(), refs))
}

/// Translates `gva` for `access` through `guest`'s tables (in guest-physical memory) and
/// `nested`'s tables (in `mem`, host-physical memory), as the processor does with nested
/// paging; see the [module documentation](self) for the exact order of events.
///
/// Errors: a guest [`WalkError::PageFault`] or [`WalkError::NonCanonical`], a
/// [`WalkError::Nested`] fault for the hypervisor, [`WalkError::Memory`] when a host address
/// lies outside `mem`, [`WalkError::Contended`].
pub fn translate<N, M>(
    guest: &X86Paging,
    nested: &N,
    mem: &M,
    gva: u64,
    access: Access,
) -> Result<NestedTranslation, WalkError>
where
    N: NestedFormat + ?Sized,
    M: PhysMemory + ?Sized,
{
    two_dimensional(guest, nested, mem, gva, access, true)
}

/// Like [`translate`] with the same checks, but without setting any flag, guest or nested.
pub fn probe<N, M>(
    guest: &X86Paging,
    nested: &N,
    mem: &M,
    gva: u64,
    access: Access,
) -> Result<NestedTranslation, WalkError>
where
    N: NestedFormat + ?Sized,
    M: PhysMemory + ?Sized,
{
    two_dimensional(guest, nested, mem, gva, access, false)
}

fn two_dimensional<N, M>(
    guest: &X86Paging,
    nested: &N,
    mem: &M,
    gva: u64,
    access: Access,
    update: bool,
) -> Result<NestedTranslation, WalkError>
where
    N: NestedFormat + ?Sized,
    M: PhysMemory + ?Sized,
{
    let mut entries = ThroughNested {
        nested,
        mem,
        linear: gva,
        update,
        refs: 0,
    };
    let root = guest.root();
    let rules = guest.rules();
    let guest_walk = if update {
        walk::<_, _, true>(&rules, root, gva, access, &mut entries)
    } else {
        walk::<_, _, false>(&rules, root, gva, access, &mut entries)
    }
    .map_err(|stop| guest.walk_error(stop.outcome(), gva, access, |err| err))?;
    let guest_refs = entries.refs + guest_walk.reads;
    let mut host_refs = 0;
    let host_walk = nested_walk(
        nested,
        mem,
        guest_walk.address,
        access.kind,
        Stage::Final,
        Some(gva),
        update,
        &mut host_refs,
    )?;
    Ok(NestedTranslation {
        hpa: host_walk.address,
        gpa: guest_walk.address,
        guest: guest_walk.translation(&rules, guest_refs),
        host: host_walk.translation(&nested.rules(), host_refs),
        refs: guest_refs + host_refs,
    })
}

/// One nested translation of `gpa`, counting its references into `refs`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn nested_walk<N, M>(
    nested: &N,
    mem: &M,
    gpa: u64,
    kind: AccessKind,
    stage: Stage,
    linear: Option<u64>,
    update: bool,
    refs: &mut u32,
) -> Result<crate::walk::Walked, WalkError>
where
    N: NestedFormat + ?Sized,
    M: PhysMemory + ?Sized,
{
    let access = Access::new(kind, Privilege::User);
    let root = nested.root();
    let rules = nested.rules();
    let result = if update {
        walk::<_, _, true>(&rules, root, gpa, access, &mut Direct(mem))
    } else {
        walk::<_, _, false>(&rules, root, gpa, access, &mut Direct(mem))
    };
    let (cause, level, rights) = match result {
        Ok(walked) => {
            *refs += walked.reads;
            return Ok(walked);
        }
        Err(Stop::BadInput) => (NestedCause::NotPresent, rules.levels(), 0),
        Err(Stop::NotPresent { level, rights }) => (NestedCause::NotPresent, level, rights),
        Err(Stop::Reserved { level }) => (NestedCause::Reserved, level, 0),
        Err(Stop::Denied { level, rights }) => (NestedCause::Denied, level, rights),
        Err(Stop::Access(err)) => {
            log::debug!("nested walk of GPA {gpa:#x} left memory: {err}");
            return Err(WalkError::Memory(err));
        }
        Err(Stop::Contended) => {
            log::debug!("nested walk of GPA {gpa:#x} contended");
            return Err(WalkError::Contended);
        }
    };
    Err(WalkError::Nested(NestedFault {
        kind: nested.kind(),
        gpa,
        linear,
        stage,
        access: kind,
        cause,
        level,
        info: nested.exit_info(cause, kind, rights, stage),
    }))
}

/// Guest entries reached through the nested tables.
struct ThroughNested<'a, N: ?Sized, M: ?Sized> {
    nested: &'a N,
    mem: &'a M,
    linear: u64,
    update: bool,
    refs: u32,
}

impl<N: NestedFormat + ?Sized, M: PhysMemory + ?Sized> ThroughNested<'_, N, M> {
    fn host_address(&mut self, gpa: u64, level: u8, kind: AccessKind) -> Result<u64, WalkError> {
        let stage = Stage::GuestTable { level };
        let walked = nested_walk(
            self.nested,
            self.mem,
            gpa,
            kind,
            stage,
            Some(self.linear),
            self.update,
            &mut self.refs,
        )?;
        Ok(walked.address)
    }
}

impl<N: NestedFormat + ?Sized, M: PhysMemory + ?Sized> EntryAccess for ThroughNested<'_, N, M> {
    type Error = WalkError;

    fn read(&mut self, gpa: u64, level: u8) -> Result<u64, WalkError> {
        let hpa = self.host_address(gpa, level, self.nested.guest_table_access())?;
        self.mem.read_u64(hpa).map_err(|err| {
            log::debug!("guest table entry at GPA {gpa:#x} is outside memory: {err}");
            WalkError::Memory(err)
        })
    }

    fn update(&mut self, gpa: u64, level: u8, current: u64, new: u64) -> Result<bool, WalkError> {
        let hpa = self.host_address(gpa, level, AccessKind::Write)?;
        Ok(self.mem.compare_exchange_u64(hpa, current, new)?.is_ok())
    }
}

#[cfg(test)]
mod tests;
