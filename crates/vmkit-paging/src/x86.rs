//! x86-64 paging (4-level and 5-level): the entry format ([`X86Format`], what the table
//! builder takes), the vCPU state that governs translation ([`X86Paging`]: the format, the
//! root and the access checks), and the guest walker (GVA → GPA) with the exact page-fault
//! semantics of the Intel SDM Vol. 3A, chapter 4.

use core::fmt;
use core::ops::{BitOr, BitOrAssign};

use crate::access::{Access, AccessKind, Privilege};
use crate::error::WalkError;
use crate::format::{
    ADDRESS_BITS, EntryKind, PagingFormat, Rights, bits, clamp_phys_bits, reserved_phys_bits,
};
use crate::memory::{MemoryError, PhysMemory};
use crate::size::{PageSize, PageSizes};
use crate::walk::{Direct, Outcome, Stop, Translation, Walked, walk};

/// Entry bit 0: present.
pub const PRESENT: u64 = 1 << 0;
/// Entry bit 1: writes allowed (R/W).
pub const WRITABLE: u64 = 1 << 1;
/// Entry bit 2: user-mode accesses allowed (U/S).
pub const USER: u64 = 1 << 2;
/// Entry bit 3: page-level write-through (PWT).
pub const WRITE_THROUGH: u64 = 1 << 3;
/// Entry bit 4: page-level cache disable (PCD).
pub const CACHE_DISABLE: u64 = 1 << 4;
/// Entry bit 5: accessed.
pub const ACCESSED: u64 = 1 << 5;
/// Entry bit 6: dirty (leaf entries).
pub const DIRTY: u64 = 1 << 6;
/// Entry bit 7: page size (PS) in PDPTEs and PDEs; PAT in PTEs; reserved in PML4Es and PML5Es.
pub const PAGE_SIZE: u64 = 1 << 7;
/// Entry bit 8: global (leaf entries).
pub const GLOBAL: u64 = 1 << 8;
/// Entry bit 12: PAT in entries that map 2 MiB and 1 GiB pages.
pub const LARGE_PAT: u64 = 1 << 12;
/// Entry bit 63: execute disable (XD); reserved when EFER.NXE = 0.
pub const NO_EXECUTE: u64 = 1 << 63;

// Control-register, EFER and RFLAGS bits: the one definition every vmkit crate uses (this
// crate is the lowest layer that needs them).

/// CR0.PE: protected mode.
pub const CR0_PE: u64 = 1 << 0;
/// CR0.MP: `wait`/`fwait` honour CR0.TS.
pub const CR0_MP: u64 = 1 << 1;
/// CR0.EM: x87 emulation (x87 and SSE instructions raise `#UD`/`#NM`).
pub const CR0_EM: u64 = 1 << 2;
/// CR0.TS: task switched (the next x87/SSE instruction raises `#NM`).
pub const CR0_TS: u64 = 1 << 3;
/// CR0.ET: extension type (hard-wired to 1 on every CPU since the 486).
pub const CR0_ET: u64 = 1 << 4;
/// CR0.WP: supervisor writes honour R/W.
pub const CR0_WP: u64 = 1 << 16;
/// CR0.PG: paging.
pub const CR0_PG: u64 = 1 << 31;
/// CR3 bit 63 with CR4.PCIDE set: keep the TLB entries of the new PCID.
pub const CR3_NO_FLUSH: u64 = 1 << 63;
/// CR4.PAE: physical address extension (required by long mode).
pub const CR4_PAE: u64 = 1 << 5;
/// CR4.PGE: global pages enabled.
pub const CR4_PGE: u64 = 1 << 7;
/// CR4.OSFXSR: the OS supports `fxsave`/`fxrstor` and SSE.
pub const CR4_OSFXSR: u64 = 1 << 9;
/// CR4.LA57: 5-level paging.
pub const CR4_LA57: u64 = 1 << 12;
/// CR4.PCIDE: process-context identifiers enabled.
pub const CR4_PCIDE: u64 = 1 << 17;
/// CR4.OSXSAVE: the OS supports `xsave` and XCR0.
pub const CR4_OSXSAVE: u64 = 1 << 18;
/// CR4.SMEP: supervisor-mode execution prevention.
pub const CR4_SMEP: u64 = 1 << 20;
/// CR4.SMAP: supervisor-mode access prevention.
pub const CR4_SMAP: u64 = 1 << 21;
/// EFER.SCE: `syscall`/`sysret` enabled.
pub const EFER_SCE: u64 = 1 << 0;
/// EFER.LME: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA: long mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// EFER.NXE: execute-disable bit enabled.
pub const EFER_NXE: u64 = 1 << 11;
/// RFLAGS.CF: carry.
pub const RFLAGS_CF: u64 = 1 << 0;
/// RFLAGS bit 1, which always reads as 1.
pub const RFLAGS_RESERVED: u64 = 1 << 1;
/// RFLAGS.PF: parity.
pub const RFLAGS_PF: u64 = 1 << 2;
/// RFLAGS.AF: auxiliary carry.
pub const RFLAGS_AF: u64 = 1 << 4;
/// RFLAGS.ZF: zero.
pub const RFLAGS_ZF: u64 = 1 << 6;
/// RFLAGS.SF: sign.
pub const RFLAGS_SF: u64 = 1 << 7;
/// RFLAGS.TF: trap (single-step).
pub const RFLAGS_TF: u64 = 1 << 8;
/// RFLAGS.OF: overflow.
pub const RFLAGS_OF: u64 = 1 << 11;
/// RFLAGS.AC: alignment check / SMAP override.
pub const RFLAGS_AC: u64 = 1 << 18;

/// Flags of an x86-64 page mapping, as the table builder takes them. Present (and PS for large
/// pages) are implied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PteFlags(u64);

impl PteFlags {
    /// No flag: a read-only, supervisor, executable page.
    pub const EMPTY: PteFlags = PteFlags(0);
    /// R/W.
    pub const WRITABLE: PteFlags = PteFlags(WRITABLE);
    /// U/S.
    pub const USER: PteFlags = PteFlags(USER);
    /// PWT.
    pub const WRITE_THROUGH: PteFlags = PteFlags(WRITE_THROUGH);
    /// PCD.
    pub const CACHE_DISABLE: PteFlags = PteFlags(CACHE_DISABLE);
    /// Accessed, preset.
    pub const ACCESSED: PteFlags = PteFlags(ACCESSED);
    /// Dirty, preset.
    pub const DIRTY: PteFlags = PteFlags(DIRTY);
    /// Global.
    pub const GLOBAL: PteFlags = PteFlags(GLOBAL);
    /// PAT (bit 7 of a PTE, bit 12 of a large-page entry: the builder places it).
    pub const PAT: PteFlags = PteFlags(PAGE_SIZE);
    /// Execute disable; needs EFER.NXE.
    pub const NO_EXECUTE: PteFlags = PteFlags(NO_EXECUTE);

    /// The flags as entry bits (PAT at bit 7).
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: PteFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for PteFlags {
    type Output = PteFlags;
    fn bitor(self, rhs: PteFlags) -> PteFlags {
        PteFlags(self.0 | rhs.0)
    }
}

impl BitOrAssign for PteFlags {
    fn bitor_assign(&mut self, rhs: PteFlags) {
        self.0 |= rhs.0;
    }
}

/// A page fault as the processor delivers it: the error code it pushes and the linear address
/// it loads into CR2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PageFault {
    /// The faulting linear address (CR2).
    pub address: u64,
    /// The error code: a combination of the `PageFault::` bit constants.
    pub error_code: u32,
}

impl PageFault {
    /// Error-code bit 0 (P): 0 if a not-present entry caused the fault, 1 otherwise.
    pub const PRESENT: u32 = 1 << 0;
    /// Error-code bit 1 (W/R): the access was a write.
    pub const WRITE: u32 = 1 << 1;
    /// Error-code bit 2 (U/S): the access was a user-mode access.
    pub const USER: u32 = 1 << 2;
    /// Error-code bit 3 (RSVD): a reserved bit was set in an entry.
    pub const RESERVED: u32 = 1 << 3;
    /// Error-code bit 4 (I/D): the access was an instruction fetch and EFER.NXE or CR4.SMEP is
    /// set.
    pub const FETCH: u32 = 1 << 4;
}

impl fmt::Display for PageFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "#PF at {:#x}, error code {:#x}",
            self.address, self.error_code
        )
    }
}

/// Why a page fault happened: the part of the error code the tables decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FaultCause {
    NotPresent,
    Reserved,
    Denied,
}

/// How a CPU reads x86-64 page tables: what an entry means and how many levels a walk takes.
///
/// The CPU model fixes MAXPHYADDR and 1 GiB page support; two mode bits change the entry
/// format as well, CR4.LA57 (4 or 5 levels) and EFER.NXE (bit 63 is XD, or reserved). The
/// [`TableBuilder`](crate::TableBuilder) takes this format (it is the [`PagingFormat`] for
/// x86-64 tables); the walker's [`X86Paging`] holds one, with the root and the access checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct X86Format {
    /// CR4.LA57: 5-level paging (57-bit linear addresses) instead of 4-level.
    pub five_level: bool,
    /// EFER.NXE: the XD bit is honoured (and not reserved).
    pub nxe: bool,
    /// MAXPHYADDR (CPUID.80000008H:EAX\[7:0\]): entry address bits at and above it are reserved.
    pub max_phys_bits: u8,
    /// 1 GiB pages supported (CPUID.80000001H:EDX\[26\]); without them PS in a PDPTE is
    /// reserved.
    pub gbpages: bool,
}

impl Default for X86Format {
    fn default() -> Self {
        X86Format::new()
    }
}

impl X86Format {
    /// 4-level tables as a usual 64-bit kernel runs them: NXE set, MAXPHYADDR 52, 1 GiB pages
    /// supported.
    #[inline]
    pub const fn new() -> X86Format {
        X86Format {
            five_level: false,
            nxe: true,
            max_phys_bits: 52,
            gbpages: true,
        }
    }

    /// This format with MAXPHYADDR `bits` (clamped to 32..=52).
    #[inline]
    pub const fn with_max_phys_bits(mut self, bits: u8) -> Self {
        self.max_phys_bits = clamp_phys_bits(bits);
        self
    }

    /// This format with or without 1 GiB page support.
    #[inline]
    pub const fn with_gbpages(mut self, gbpages: bool) -> Self {
        self.gbpages = gbpages;
        self
    }

    /// This format with 5-level paging on or off.
    #[inline]
    pub const fn with_five_level(mut self, five_level: bool) -> Self {
        self.five_level = five_level;
        self
    }

    /// This format with EFER.NXE on or off.
    #[inline]
    pub const fn with_nxe(mut self, nxe: bool) -> Self {
        self.nxe = nxe;
        self
    }

    /// Whether `addr` is canonical: bits 63:47 (63:56 with 5-level paging) all equal.
    #[inline]
    pub const fn is_canonical(&self, addr: u64) -> bool {
        let unused = if self.five_level { 7 } else { 16 };
        (((addr << unused) as i64) >> unused) as u64 == addr
    }

    /// The entry rules of this format, with the access checks of `checks`.
    #[inline]
    const fn rules_checking(&self, checks: Checks) -> X86Rules {
        X86Rules::new(
            self.five_level,
            self.nxe,
            self.max_phys_bits,
            self.gbpages,
            checks,
        )
    }

    /// The rules the [`PagingFormat`] implementation delegates to. The format alone has no
    /// access checks; those of [`X86Paging::new`] stand in (a builder never asks).
    #[inline]
    const fn rules(&self) -> X86Rules {
        X86Paging::new(0).with_format(*self).rules()
    }
}

/// The x86-64 paging state of a vCPU, what a walk needs: the tables' [`X86Format`] and what
/// CR3, CR0.WP, CR4.SMEP, CR4.SMAP and RFLAGS.AC say. Long mode with paging enabled is assumed.
/// [`from_registers`](Self::from_registers) takes all of it from the registers but the CPU
/// model's part of the format (MAXPHYADDR, 1 GiB pages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct X86Paging {
    /// How the tables are read: CR4.LA57, EFER.NXE, MAXPHYADDR, 1 GiB page support.
    pub format: X86Format,
    /// CR3: the root table in bits M-1:12 (PCID and other bits are ignored).
    pub cr3: u64,
    /// CR0.WP: supervisor writes honour R/W.
    pub wp: bool,
    /// CR4.SMEP: supervisor fetches from user pages fault.
    pub smep: bool,
    /// CR4.SMAP: supervisor data accesses to user pages fault unless RFLAGS.AC allows them.
    pub smap: bool,
    /// RFLAGS.AC at the time of the access.
    pub ac: bool,
}

impl Default for X86Paging {
    fn default() -> Self {
        X86Paging::new(0)
    }
}

impl X86Paging {
    /// Paging rooted at `cr3` in the default [`X86Format`] (4-level, NXE, MAXPHYADDR 52, 1 GiB
    /// pages), as a usual 64-bit kernel runs: WP set, SMEP, SMAP and AC clear.
    #[inline]
    pub const fn new(cr3: u64) -> X86Paging {
        X86Paging {
            format: X86Format::new(),
            cr3,
            wp: true,
            smep: false,
            smap: false,
            ac: false,
        }
    }

    /// The state the registers describe, the format's LA57 and NXE included; MAXPHYADDR 52 and
    /// 1 GiB pages until set otherwise.
    #[inline]
    pub const fn from_registers(cr0: u64, cr3: u64, cr4: u64, efer: u64, rflags: u64) -> Self {
        X86Paging {
            format: X86Format::new()
                .with_five_level(cr4 & CR4_LA57 != 0)
                .with_nxe(efer & EFER_NXE != 0),
            cr3,
            wp: cr0 & CR0_WP != 0,
            smep: cr4 & CR4_SMEP != 0,
            smap: cr4 & CR4_SMAP != 0,
            ac: rflags & RFLAGS_AC != 0,
        }
    }

    /// This state reading tables of `format` (all of it: level count, NXE, MAXPHYADDR and
    /// 1 GiB pages).
    #[inline]
    pub const fn with_format(mut self, format: X86Format) -> Self {
        self.format = format;
        self
    }

    /// This state with MAXPHYADDR `bits` (clamped to 32..=52).
    #[inline]
    pub const fn with_max_phys_bits(mut self, bits: u8) -> Self {
        self.format = self.format.with_max_phys_bits(bits);
        self
    }

    /// This state with or without 1 GiB page support.
    #[inline]
    pub const fn with_gbpages(mut self, gbpages: bool) -> Self {
        self.format = self.format.with_gbpages(gbpages);
        self
    }

    /// This state with 5-level paging on or off.
    #[inline]
    pub const fn with_five_level(mut self, five_level: bool) -> Self {
        self.format = self.format.with_five_level(five_level);
        self
    }

    /// The physical address of the root table (PML4 or PML5).
    #[inline]
    pub const fn root(&self) -> u64 {
        self.cr3 & ADDRESS_BITS & !reserved_phys_bits(self.format.max_phys_bits)
    }

    /// The entry and access rules of this state, with their masks computed: what the walker
    /// runs.
    #[inline]
    pub const fn rules(&self) -> X86Rules {
        self.format.rules_checking(Checks::Guest {
            wp: self.wp,
            smep: self.smep,
            smap: self.smap,
            ac: self.ac,
        })
    }

    /// Whether `addr` is canonical: bits 63:47 (63:56 with 5-level paging) all equal.
    #[inline]
    pub const fn is_canonical(&self, addr: u64) -> bool {
        self.format.is_canonical(addr)
    }

    /// The walker of this state, its rules prepared: for many translations under one
    /// CR0/CR3/CR4/EFER/RFLAGS state, prepare once and walk with it.
    #[inline]
    pub const fn walker(&self) -> X86Walker {
        X86Walker {
            paging: *self,
            rules: self.rules(),
            root: self.root(),
        }
    }

    /// Translates `addr` for `access` as the processor does, setting accessed and dirty flags
    /// on success.
    ///
    /// Errors: [`WalkError::PageFault`] with the error code and CR2 the processor reports,
    /// [`WalkError::NonCanonical`] (the processor raises #GP or #SS instead),
    /// [`WalkError::Memory`] when a table lies outside `mem`, [`WalkError::Contended`].
    ///
    /// Prepares the rules for this one walk; [`walker`](Self::walker) prepares them for many.
    #[inline]
    pub fn translate<M: PhysMemory + ?Sized>(
        &self,
        mem: &M,
        addr: u64,
        access: Access,
    ) -> Result<Translation, WalkError> {
        self.walker().translate(mem, addr, access)
    }

    /// Like [`translate`](Self::translate) with the same checks, but reads only: no accessed or
    /// dirty flag is set. For debuggers, instruction emulation look-ahead, and benchmarks.
    #[inline]
    pub fn probe<M: PhysMemory + ?Sized>(
        &self,
        mem: &M,
        addr: u64,
        access: Access,
    ) -> Result<Translation, WalkError> {
        self.walker().probe(mem, addr, access)
    }

    /// The error a stopped walk of `addr` for `access` gives the guest.
    pub(crate) fn walk_error<E>(
        &self,
        stop: Outcome<E>,
        addr: u64,
        access: Access,
        on_access_error: impl FnOnce(E) -> WalkError,
    ) -> WalkError {
        let cause = match stop {
            Outcome::BadInput => return WalkError::NonCanonical(addr),
            Outcome::Access(err) => return on_access_error(err),
            Outcome::Contended => {
                log::debug!("guest page walk of {addr:#x} contended");
                return WalkError::Contended;
            }
            Outcome::NotPresent => FaultCause::NotPresent,
            Outcome::Reserved => FaultCause::Reserved,
            Outcome::Denied => FaultCause::Denied,
        };
        WalkError::PageFault(self.page_fault(addr, access, cause))
    }

    /// The page fault for an access to `addr` that failed for `cause`.
    pub(crate) fn page_fault(&self, addr: u64, access: Access, cause: FaultCause) -> PageFault {
        let mut error_code = 0;
        match cause {
            FaultCause::NotPresent => {}
            FaultCause::Reserved => error_code |= PageFault::PRESENT | PageFault::RESERVED,
            FaultCause::Denied => error_code |= PageFault::PRESENT,
        }
        if access.kind == AccessKind::Write {
            error_code |= PageFault::WRITE;
        }
        if access.privilege == Privilege::User {
            error_code |= PageFault::USER;
        }
        if access.kind == AccessKind::Fetch && (self.format.nxe || self.smep) {
            error_code |= PageFault::FETCH;
        }
        PageFault {
            address: addr,
            error_code,
        }
    }
}

/// A guest walker prepared for one paging state ([`X86Paging::walker`]): the reserved-bit
/// masks and rights rules of the CR0/CR4/EFER/RFLAGS state and the root table are computed once,
/// not per walk. Prepare a new one whenever that state changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct X86Walker {
    paging: X86Paging,
    rules: X86Rules,
    root: u64,
}

impl X86Walker {
    /// The paging state this walker was prepared for.
    pub const fn paging(&self) -> &X86Paging {
        &self.paging
    }

    /// [`X86Paging::translate`] with the prepared rules.
    #[inline(always)]
    pub fn translate<M: PhysMemory + ?Sized>(
        &self,
        mem: &M,
        addr: u64,
        access: Access,
    ) -> Result<Translation, WalkError> {
        let result = walk::<_, _, true>(&self.rules, self.root, addr, access, &mut Direct(mem));
        self.finish(result, addr, access)
    }

    /// [`X86Paging::probe`] with the prepared rules: the same checks, no accessed or dirty
    /// update.
    #[inline(always)]
    pub fn probe<M: PhysMemory + ?Sized>(
        &self,
        mem: &M,
        addr: u64,
        access: Access,
    ) -> Result<Translation, WalkError> {
        // The root is aligned already; masking says so to the compiler, which then drops the
        // alignment test of the memory's table look-up.
        let root = self.root & ADDRESS_BITS;
        match walk::<_, _, false>(&self.rules, root, addr, access, &mut Direct(mem)) {
            Ok(walked) => Ok(walked.translation(&self.rules, walked.reads)),
            // Why the walk stopped is not kept on the way: the fast path carries no error
            // detail, and a failed probe walks again, out of line, to find it.
            Err(_) => self.probe_again(mem, addr, access),
        }
    }

    /// A probe that failed, walked again with its error kept. Tables the guest changed in
    /// between give the second walk's answer, which is as valid as the first's.
    #[cold]
    #[inline(never)]
    fn probe_again<M: PhysMemory + ?Sized>(
        &self,
        mem: &M,
        addr: u64,
        access: Access,
    ) -> Result<Translation, WalkError> {
        let root = self.root & ADDRESS_BITS;
        let result = walk::<_, _, false>(&self.rules, root, addr, access, &mut Direct(mem));
        self.finish(result, addr, access)
    }

    #[inline(always)]
    fn finish(
        &self,
        result: Result<Walked, Stop<MemoryError>>,
        addr: u64,
        access: Access,
    ) -> Result<Translation, WalkError> {
        match result {
            Ok(walked) => Ok(walked.translation(&self.rules, walked.reads)),
            Err(stop) => Err(self.fail(stop.outcome(), addr, access)),
        }
    }

    /// The error of a stopped walk, out of the translation's way.
    #[cold]
    #[inline(never)]
    fn fail(&self, stop: Outcome<MemoryError>, addr: u64, access: Access) -> WalkError {
        self.paging.walk_error(stop, addr, access, |err| {
            log::debug!("guest page walk of {addr:#x} left memory: {err}");
            WalkError::Memory(err)
        })
    }
}

/// How an [`X86Rules`] checks rights and input addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Checks {
    /// Guest paging: linear addresses must be canonical; privilege, WP, SMEP and SMAP apply.
    Guest {
        wp: bool,
        smep: bool,
        smap: bool,
        ac: bool,
    },
    /// NPT: inputs are guest-physical addresses, every access is a user access.
    Nested,
}

/// The x86-64 entry and access rules of one configuration (guest paging or NPT), with the
/// reserved-bit masks computed once: the [`PagingFormat`] the walker runs for
/// [`X86Paging`] and [`Npt`](crate::Npt).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct X86Rules {
    /// Bits 51:MAXPHYADDR, and XD without NXE: reserved in every present entry.
    reserved: u64,
    /// `reserved` and PS: a present non-leaf entry without any of them references a table.
    table_stop: u64,
    /// The input check without a branch on guest or nested: an address is accepted when
    /// `(addr + input_bias) >> width == 0`, the width being 48 or 57 bits; the bias is
    /// 2^(width-1) for linear addresses, whose sign-extension bits it carries out to zero
    /// exactly when they all equal the top translated bit, and 0 for NPT.
    input_bias: u64,
    max_phys_bits: u8,
    five_level: bool,
    nxe: bool,
    gbpages: bool,
    checks: Checks,
}

impl X86Rules {
    #[inline]
    pub(crate) const fn new(
        five_level: bool,
        nxe: bool,
        max_phys_bits: u8,
        gbpages: bool,
        checks: Checks,
    ) -> X86Rules {
        let input_bits = if five_level { 57 } else { 48 };
        let mut reserved = reserved_phys_bits(max_phys_bits);
        if !nxe {
            reserved |= NO_EXECUTE;
        }
        X86Rules {
            reserved,
            table_stop: reserved | PAGE_SIZE,
            input_bias: match checks {
                Checks::Guest { .. } => 1 << (input_bits - 1),
                Checks::Nested => 0,
            },
            max_phys_bits: clamp_phys_bits(max_phys_bits),
            five_level,
            nxe,
            gbpages,
            checks,
        }
    }

    /// [`decode`](PagingFormat::decode) of a present entry at level 2 or above that sets a
    /// reserved bit or PS: a large page or a reserved-bit fault.
    #[inline]
    fn decode_large(&self, entry: u64, level: u8) -> EntryKind {
        if entry & self.reserved != 0 {
            return EntryKind::Reserved;
        }
        let (reserved, address) = match level {
            2 => (bits(20, 13), bits(51, 21)),
            // Without 1 GiB page support, PS itself is reserved in a PDPTE.
            3 if self.gbpages => (bits(29, 13), bits(51, 30)),
            // PS is reserved in PML4Es and PML5Es.
            _ => return EntryKind::Reserved,
        };
        if entry & reserved != 0 {
            EntryKind::Reserved
        } else {
            EntryKind::Page(entry & address)
        }
    }
}

/// The access-rights rules of SDM Vol. 3A, 4.6.1, for rights combined with XD inverted.
#[inline(always)]
fn permits(rights: u64, access: Access, wp: bool, smep: bool, smap: bool, ac: bool) -> bool {
    let user_page = rights & USER != 0;
    let writable = rights & WRITABLE != 0;
    // XD is inverted when combining: the bit is set when no level set XD. With NXE clear, a set
    // XD is a reserved bit, so a valid translation never has it.
    let executable = rights & NO_EXECUTE != 0;
    match (access.privilege, access.kind) {
        (Privilege::User, AccessKind::Read) => user_page,
        (Privilege::User, AccessKind::Write) => user_page && writable,
        (Privilege::User, AccessKind::Fetch) => user_page && executable,
        (_, AccessKind::Fetch) => executable && !(user_page && smep),
        (privilege, kind) => {
            let smap_denies = user_page && smap && (privilege == Privilege::Implicit || !ac);
            !smap_denies && (kind != AccessKind::Write || writable || !wp)
        }
    }
}

impl PagingFormat for X86Rules {
    type Flags = PteFlags;
    const RIGHTS_INVERT: u64 = NO_EXECUTE;

    #[inline(always)]
    fn levels(&self) -> u8 {
        if self.five_level { 5 } else { 4 }
    }

    #[inline(always)]
    fn accepts(&self, addr: u64) -> bool {
        // Constant shifts: the branch is the walk's own choice of level count.
        let biased = addr.wrapping_add(self.input_bias);
        if self.five_level {
            biased >> 57 == 0
        } else {
            biased >> 48 == 0
        }
    }

    #[inline(always)]
    fn decode(&self, entry: u64, level: u8) -> EntryKind {
        if level == 1 {
            // Present and no reserved bit, in one test.
            if (entry ^ PRESENT) & (self.reserved | PRESENT) == 0 {
                EntryKind::Page(entry & ADDRESS_BITS)
            } else if entry & PRESENT == 0 {
                EntryKind::NotPresent
            } else {
                EntryKind::Reserved
            }
        } else if entry & PRESENT == 0 {
            EntryKind::NotPresent
        } else if entry & self.table_stop == 0 {
            // The common case, one test: neither a reserved bit nor PS.
            EntryKind::Table(entry & ADDRESS_BITS)
        } else {
            self.decode_large(entry, level)
        }
    }

    #[inline(always)]
    fn permits(&self, rights: u64, access: Access) -> bool {
        match self.checks {
            Checks::Guest { wp, smep, smap, ac } => permits(rights, access, wp, smep, smap, ac),
            Checks::Nested => permits(
                rights,
                Access::new(access.kind, Privilege::User),
                false,
                false,
                false,
                false,
            ),
        }
    }

    fn rights(&self, rights: u64) -> Rights {
        Rights {
            read: true,
            write: rights & WRITABLE != 0,
            execute: rights & NO_EXECUTE != 0,
            user: rights & USER != 0,
        }
    }

    fn accessed_flag(&self) -> u64 {
        ACCESSED
    }

    fn dirty_flag(&self) -> u64 {
        DIRTY
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
        (table & ADDRESS_BITS) | PRESENT | WRITABLE | USER
    }

    /// A page entry; for NPT, U/S is always set, as every nested access is a user access.
    fn page_entry(&self, base: u64, size: PageSize, flags: PteFlags) -> Option<u64> {
        if base & size.offset_mask() != 0 || base & !ADDRESS_BITS != 0 {
            return None;
        }
        if base & self.reserved & ADDRESS_BITS != 0 {
            return None;
        }
        if flags.contains(PteFlags::NO_EXECUTE) && !self.nxe {
            return None;
        }
        let mut entry = base | PRESENT | (flags.bits() & !PAGE_SIZE);
        if self.checks == Checks::Nested {
            entry |= USER;
        }
        if flags.contains(PteFlags::PAT) {
            entry |= if size == PageSize::Size4K {
                PAGE_SIZE
            } else {
                LARGE_PAT
            };
        }
        if size != PageSize::Size4K {
            entry |= PAGE_SIZE;
        }
        Some(entry)
    }
}

/// Implements [`PagingFormat`] for a configuration type by delegating to its precomputed rules
/// (`self.rules()`); for the builder and other occasional users. Walks use the rules directly.
macro_rules! delegate_format {
    ($ty:ty, $rules:ty) => {
        impl $crate::format::PagingFormat for $ty {
            type Flags = <$rules as $crate::format::PagingFormat>::Flags;
            const RIGHTS_INVERT: u64 = <$rules as $crate::format::PagingFormat>::RIGHTS_INVERT;

            fn levels(&self) -> u8 {
                self.rules().levels()
            }

            fn accepts(&self, addr: u64) -> bool {
                self.rules().accepts(addr)
            }

            fn decode(&self, entry: u64, level: u8) -> $crate::format::EntryKind {
                self.rules().decode(entry, level)
            }

            fn permits(&self, rights: u64, access: $crate::access::Access) -> bool {
                self.rules().permits(rights, access)
            }

            fn rights(&self, rights: u64) -> $crate::format::Rights {
                self.rules().rights(rights)
            }

            fn accessed_flag(&self) -> u64 {
                self.rules().accessed_flag()
            }

            fn dirty_flag(&self) -> u64 {
                self.rules().dirty_flag()
            }

            fn max_phys_bits(&self) -> u8 {
                self.rules().max_phys_bits()
            }

            fn page_sizes(&self) -> $crate::size::PageSizes {
                self.rules().page_sizes()
            }

            fn table_entry(&self, table: u64) -> u64 {
                self.rules().table_entry(table)
            }

            fn page_entry(
                &self,
                base: u64,
                size: $crate::size::PageSize,
                flags: Self::Flags,
            ) -> Option<u64> {
                self.rules().page_entry(base, size, flags)
            }
        }
    };
}
pub(crate) use delegate_format;

delegate_format!(X86Format, X86Rules);

#[cfg(test)]
mod tests;
