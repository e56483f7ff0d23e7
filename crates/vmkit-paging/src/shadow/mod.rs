//! The shadow MMU: GVA → HPA tables built lazily from the guest's tables and a GPA → HPA map,
//! as a hypervisor without EPT/NPT (or a nested or software hypervisor) must keep them.
//!
//! The design is Linux KVM's shadow MMU:
//!
//! - **Lazily built.** [`ShadowMmu::translate`] first walks the shadow tables; a miss (or an
//!   access the shadow entry does not allow) is a *shadow fault*: the MMU walks the guest's
//!   tables with the crate's walker (which sets the guest's accessed and dirty flags exactly as
//!   the processor does) and, if the guest allows the access, installs the shadow entries of the
//!   whole path. A guest that does not allow it gets its page fault, with the walker's error
//!   code, to inject.
//! - **Keyed by a role.** Each shadow page shadows one guest table (or, *direct*, one guest
//!   large page split into smaller host pages) under one [`Role`]: its level, the access rights
//!   the upper levels grant, and the paging-mode bits that change what an entry means (CR0.WP,
//!   CR4.SMEP, CR4.SMAP, EFER.NXE, 4/5-level). The same guest table used under two roles has
//!   two shadows, as in KVM's `kvm_mmu_page_role`. A direct page's role also holds the level
//!   of the guest's large page, whose size its leaves report: the 4 KiB pages of a 2 MiB guest
//!   page and those of a 1 GiB guest page at the same frames are two shadows, not one.
//! - **Guest tables write-protected.** No shadow entry lets the guest write a page that holds a
//!   guest table the MMU shadows; such a write reaches the MMU as a write fault
//!   ([`ShadowError::PageTableWrite`]), the VMM emulates it through [`ShadowMmu::write_guest`],
//!   and the MMU invalidates exactly the shadow entries derived from the written guest entry.
//!   With [`SyncPolicy::Unsync`], a last-level table the guest writes is instead unprotected
//!   ("unsync"): the guest writes it freely, and its shadow is brought back in sync at the next
//!   INVLPG of an address it maps or the next CR3 load, the points where the architecture lets
//!   a TLB hold stale entries until.
//! - **Guest accessed and dirty flags** are set when a shadow entry is first installed (the
//!   walk that builds it sets them); a shadow entry for a guest page whose dirty flag is clear
//!   does not allow writes, so the first write faults and sets it.
//! - **Bounded.** At most [`ShadowConfig::max_pages`] shadow pages exist; creating one beyond
//!   that evicts the oldest page no shadow table links (an orphan kept for reuse), else the
//!   oldest page that is not the current root.
//! - **Bookkeeping as KVM's.** Each shadow page marks the entries that lead to unsync tables
//!   (KVM's `unsync_child_bitmap`), so linking a shadow anew syncs what lies below it by
//!   following the marks, not by searching every unsync table; the links to a page and the
//!   leaves that map a frame are lists that hold their usual one entry inline (KVM's
//!   `pte_list`); a page's present entries are a bit set, so freeing or syncing it visits only
//!   those; and the entries live in chunks of pages that eviction and
//!   [`reset`](ShadowMmu::reset) keep for the pages to come.
//!
//! Shadow tables here are the MMU's own memory (the hardware walks them in a real hypervisor);
//! their entries carry the host-physical page, the rights the guest grants, and whether a write
//! needs no fault.

mod map;

pub use map::{GpaMap, GpaRanges, RangeError};

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use core::fmt;

use crate::access::Access;
use crate::error::WalkError;
use crate::format::{ADDRESS_BITS, EntryKind, PagingFormat, Rights};
use crate::memory::{MemoryError, PhysMemory};
use crate::size::PageSize;
use crate::tlb::Invpcid;
use crate::x86::{
    self, CR0_WP, CR4_LA57, CR4_SMAP, CR4_SMEP, DIRTY, EFER_NXE, NO_EXECUTE, PageFault, USER,
    WRITABLE, X86Paging, X86Rules, X86Walker,
};

pub use crate::x86::{CR3_NO_FLUSH, CR4_PCIDE, CR4_PGE};

/// The fewest shadow pages an MMU keeps: enough for one path of a 5-level walk with a split
/// large page.
pub const MIN_SHADOW_PAGES: usize = 8;

/// How the MMU keeps write-protected guest tables in step with the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyncPolicy {
    /// Every guest table stays write-protected; every write to one is a write fault that the
    /// VMM emulates ([`ShadowError::PageTableWrite`]) and that invalidates the entries derived
    /// from the written guest entry at once.
    Resync,
    /// A last-level guest table the guest writes becomes unsync: unprotected, written without
    /// faults, and compared with its shadow at the next INVLPG of an address it maps or the
    /// next CR3 load. Fewer faults for a guest that writes its tables in bursts (fork, exec),
    /// more work at those points.
    Unsync,
}

/// The MMU's limits and policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShadowConfig {
    /// The most shadow pages (4 KiB tables) in use at once; at least [`MIN_SHADOW_PAGES`].
    pub max_pages: usize,
    /// How guest table writes are tracked.
    pub policy: SyncPolicy,
}

impl Default for ShadowConfig {
    /// 4096 shadow pages (16 MiB of tables), [`SyncPolicy::Resync`].
    fn default() -> Self {
        ShadowConfig {
            max_pages: 4096,
            policy: SyncPolicy::Resync,
        }
    }
}

/// Access bits of a [`Role`]: what the entries above a shadow page allow.
pub mod access {
    /// Writes allowed (R/W set above).
    pub const WRITE: u8 = 1 << 0;
    /// User accesses allowed (U/S set above).
    pub const USER: u8 = 1 << 1;
    /// Fetches allowed (XD clear above).
    pub const EXEC: u8 = 1 << 2;
    /// Direct pages only: the guest's large page is dirty, so its host pages may be written.
    pub const DIRTY: u8 = 1 << 3;
    /// Everything a root allows.
    pub const ALL: u8 = WRITE | USER | EXEC;
}

/// What a shadow page shadows and under which rules: one guest table (or guest large page) has
/// one shadow per role it is used under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Role {
    /// The level of the shadow page (1 = it maps 4 KiB pages).
    pub level: u8,
    /// The page maps part of a guest large page with smaller host pages instead of shadowing a
    /// guest table.
    pub direct: bool,
    /// For a direct page, the level of the guest's large page (2 for 2 MiB, 3 for 1 GiB); 0
    /// for a page that shadows a guest table.
    pub guest_level: u8,
    /// The rights the upper levels grant ([`access`] bits).
    pub access: u8,
    /// CR0.WP.
    pub wp: bool,
    /// CR4.SMEP.
    pub smep: bool,
    /// CR4.SMAP.
    pub smap: bool,
    /// EFER.NXE.
    pub nxe: bool,
    /// CR4.LA57.
    pub five_level: bool,
}

/// A successful shadow translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShadowTranslation {
    /// The guest-physical address the guest's tables give.
    pub gpa: u64,
    /// The host-physical address.
    pub hpa: u64,
    /// The size of the guest's page (the shadow may map it with smaller host pages).
    pub page_size: PageSize,
    /// The rights the guest's tables grant.
    pub rights: Rights,
    /// Memory references: shadow entries read for a hit; for a fill, those plus the guest
    /// walk's.
    pub refs: u32,
    /// Whether a shadow fault served it (a guest walk that may have set accessed and dirty
    /// flags, then shadow entries installed); `false` for a hit, which touches no guest memory.
    pub filled: bool,
}

/// Why a shadow translation gives no host address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, displaydoc::Display, thiserror::Error)]
#[ignore_extra_doc_attributes]
pub enum ShadowError {
    /// the guest takes a page fault, to be injected: {0}
    GuestPageFault(PageFault),
    /// linear address {gva:#x} maps GPA {gpa:#x}, which no memory backs (MMIO or a hole)
    NoBacking {
        /// The linear address.
        gva: u64,
        /// The guest-physical address.
        gpa: u64,
    },
    /// the write to linear address {gva:#x} hits the write-protected guest page table at GPA
    /// {gpa:#x}: emulate it through `write_guest`
    PageTableWrite {
        /// The linear address written.
        gva: u64,
        /// The guest-physical address written.
        gpa: u64,
    },
    /// the guest walk failed without a page fault: {0}
    Walk(WalkError),
}

/// The MMU's costs since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShadowStats {
    /// Translations asked.
    pub translations: u64,
    /// Translations served by the shadow tables alone.
    pub hits: u64,
    /// Shadow faults: misses (or accesses a shadow entry refused) that the guest allows, served
    /// by a guest walk and a fill.
    pub shadow_faults: u64,
    /// Writes to write-protected guest tables (emulated, or unsyncing the table).
    pub write_protect_faults: u64,
    /// Guest page faults reported.
    pub guest_faults: u64,
    /// Translations to guest-physical addresses nothing backs.
    pub no_backing: u64,
    /// Guest tables (or single entries, at INVLPG) compared with their shadows and brought
    /// back in sync.
    pub syncs: u64,
    /// Guest tables made unsync.
    pub unsyncs: u64,
    /// Shadow entries invalidated.
    pub zaps: u64,
    /// Shadow pages created.
    pub pages_created: u64,
    /// Shadow pages evicted to stay within the bound.
    pub evictions: u64,
    /// Shadow pages in use now.
    pub pages_in_use: usize,
    /// The most shadow pages in use at once.
    pub max_pages_in_use: usize,
}

/// Shadow entry bits (x86-64 positions where the meaning is the same).
const S_PRESENT: u64 = x86::PRESENT;
/// A write needs no fault: the guest's page is dirty and holds no shadowed guest table.
const S_WRITABLE: u64 = x86::WRITABLE;
/// The guest grants user accesses.
const S_USER: u64 = x86::USER;
/// A leaf above level 1.
const S_LARGE: u64 = x86::PAGE_SIZE;
/// The guest grants writes.
const S_GUEST_WRITE: u64 = 1 << 9;
/// The guest denies fetches.
const S_NO_EXEC: u64 = x86::NO_EXECUTE;
/// Bits 11:10: the level of the guest's leaf (for reporting its page size).
const S_GUEST_LEVEL_SHIFT: u32 = 10;

type PageId = usize;

/// A shadow page's key in the MMU's map: the guest frame above [`ROLE_BITS`] bits of role, so
/// that one integer comparison orders keys as `(gfn, role)` pairs and the pages of one frame
/// form one range. Frames come from entries' address bits (at most 40 bits), so they fit.
type PageKey = u64;

/// The bits of a packed [`Role`].
const ROLE_BITS: u32 = 16;

/// The direct bit of a packed [`Role`].
const KEY_DIRECT: u64 = 1 << 11;

impl Role {
    /// The role in 15 bits, most significant field first, so that packed roles compare as
    /// roles do.
    const fn packed(&self) -> u64 {
        ((self.level as u64 & 7) << 12)
            | ((self.direct as u64) << 11)
            | ((self.guest_level as u64 & 3) << 9)
            | ((self.access as u64 & 0xf) << 5)
            | ((self.wp as u64) << 4)
            | ((self.smep as u64) << 3)
            | ((self.smap as u64) << 2)
            | ((self.nxe as u64) << 1)
            | (self.five_level as u64)
    }
}

/// The key of the shadow of guest frame `gfn` under `role`.
const fn page_key(gfn: u64, role: &Role) -> PageKey {
    (gfn << ROLE_BITS) | role.packed()
}

/// The keys of the pages of the `count` guest frames from `gfn` on (none for frames no entry
/// can name).
fn frame_keys(gfn: u64, count: u64) -> core::ops::Range<PageKey> {
    let key = |gfn: u64| gfn.checked_mul(1 << ROLE_BITS);
    match key(gfn) {
        Some(start) => start..key(gfn.saturating_add(count)).unwrap_or(PageKey::MAX),
        None => 0..0,
    }
}

/// The entries of a shadow page: 4 KiB of shadow entries, each with what it was made from.
const ENTRIES: usize = 512;

/// One entry of a shadow page and its origin.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// The shadow entry (0: not present).
    entry: u64,
    /// The guest entry it was derived from (indirect pages; for a direct page's leaves, the
    /// guest's large-page entry).
    guest: u64,
    /// For a leaf: the guest-physical base of the page it maps.
    gpa: u64,
}

/// A set of the entries of one shadow page, one bit each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct SlotSet([u64; ENTRIES / 64]);

impl SlotSet {
    fn insert(&mut self, slot: usize) {
        if let Some(word) = self.0.get_mut(slot / 64) {
            *word |= 1 << (slot % 64);
        }
    }

    fn remove(&mut self, slot: usize) {
        if let Some(word) = self.0.get_mut(slot / 64) {
            *word &= !(1 << (slot % 64));
        }
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(|&word| word == 0)
    }

    #[cfg(test)]
    fn contains(&self, slot: usize) -> bool {
        self.0
            .get(slot / 64)
            .is_some_and(|word| word & (1 << (slot % 64)) != 0)
    }

    /// The entries in the set, in ascending order.
    fn iter(self) -> impl Iterator<Item = usize> {
        self.0.into_iter().enumerate().flat_map(|(at, mut word)| {
            core::iter::from_fn(move || {
                if word == 0 {
                    return None;
                }
                let bit = word.trailing_zeros() as usize;
                word &= word - 1;
                Some(at * 64 + bit)
            })
        })
    }
}

/// Shadow entries, each a (page, index) pair, that point at one thing: the links to a shadow
/// page, or the leaves that map a guest frame. Almost every such list holds one entry, kept
/// inline without an allocation (KVM's `pte_list`).
#[derive(Debug, Clone, Default)]
struct EntryList {
    first: Option<(PageId, usize)>,
    /// The others; empty while `first` is `None`.
    more: Vec<(PageId, usize)>,
}

impl EntryList {
    fn push(&mut self, entry: (PageId, usize)) {
        match self.first {
            None => self.first = Some(entry),
            Some(_) => self.more.push(entry),
        }
    }

    fn remove(&mut self, entry: (PageId, usize)) {
        self.more.retain(|&other| other != entry);
        if self.first == Some(entry) {
            self.first = self.more.pop();
        }
    }

    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn iter(&self) -> impl Iterator<Item = (PageId, usize)> + '_ {
        self.first.into_iter().chain(self.more.iter().copied())
    }
}

/// Shadow pages whose entries share one allocation: a new page allocates nothing until a chunk
/// is full, and no page's entries move when the MMU grows.
const CHUNK_PAGES: usize = 8;

/// One shadow page's bookkeeping; its entries are in the MMU's slot chunks (kept when the page
/// is freed, for the next page that takes its id).
struct ShadowPage {
    /// The guest table's frame, or for a direct page the first guest frame it maps.
    gfn: u64,
    role: Role,
    /// The entries that are present: freeing or syncing a page visits only these.
    present: SlotSet,
    /// The links to children that are unsync or have unsync tables below them (KVM's
    /// `unsync_child_bitmap`). A page with one set, or whose table is unsync, has it set in
    /// every parent's entry that links it; a set bit may be stale (its subtree synced since),
    /// and is cleared by the next search that finds nothing below it.
    unsync_children: SlotSet,
    /// The shadow entries that link this page.
    parents: EntryList,
    /// Creation order, for eviction.
    seq: u64,
}

/// Invalidations requested and not yet carried out: syncs read guest memory, which the next
/// translation has.
#[derive(Debug, Default)]
struct Pending {
    all: bool,
    gvas: Vec<u64>,
}

/// The most single-address invalidations kept before they become a full resync.
const MAX_PENDING_GVAS: usize = 16;

/// A shadow MMU for one vCPU's address spaces; see the [module documentation](self).
pub struct ShadowMmu {
    config: ShadowConfig,
    paging: X86Paging,
    walker: X86Walker,
    rules: X86Rules,
    pge: bool,
    pcide: bool,
    pcid: u16,
    pages: Vec<Option<ShadowPage>>,
    /// The entries of every page, [`ENTRIES`] per page id, [`CHUNK_PAGES`] ids per chunk; a
    /// free id's are all zero.
    slots: Vec<Box<[Slot]>>,
    free: Vec<PageId>,
    /// Every page by (gfn, role), packed ([`PageKey`]).
    hash: BTreeMap<PageKey, PageId>,
    /// Every page by creation order.
    order: BTreeMap<u64, PageId>,
    /// 4 KiB shadow leaves by the guest frame they map.
    rmap: BTreeMap<u64, EntryList>,
    /// Large shadow leaves by the first guest frame they map.
    large_rmap: BTreeMap<u64, EntryList>,
    /// Guest tables made unsync.
    unsync: BTreeSet<u64>,
    root: Option<PageId>,
    pending: Pending,
    seq: u64,
    stats: ShadowStats,
}

impl fmt::Debug for ShadowMmu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShadowMmu")
            .field("config", &self.config)
            .field("paging", &self.paging)
            .field("pcid", &self.pcid)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// The [`access`] bits an x86-64 entry grants.
fn entry_access(entry: u64) -> u8 {
    let mut bits = 0;
    if entry & WRITABLE != 0 {
        bits |= access::WRITE;
    }
    if entry & USER != 0 {
        bits |= access::USER;
    }
    if entry & NO_EXECUTE == 0 {
        bits |= access::EXEC;
    }
    bits
}

/// The index of `addr` in a table at `level`.
fn index(addr: u64, level: u8) -> usize {
    ((addr >> (12 + 9 * u32::from(level - 1))) & 0x1ff) as usize
}

/// The size a leaf at `level` maps; levels without leaves give 4 KiB (never used).
fn size_of_level(level: u8) -> PageSize {
    PageSize::from_level(level).unwrap_or(PageSize::Size4K)
}

impl ShadowMmu {
    /// An MMU for a guest in the paging state `paging` (CR4.PGE and CR4.PCIDE clear until
    /// [`write_cr4`](Self::write_cr4) sets them), with no shadow page yet.
    pub fn new(paging: X86Paging, config: ShadowConfig) -> ShadowMmu {
        let config = ShadowConfig {
            max_pages: config.max_pages.max(MIN_SHADOW_PAGES),
            ..config
        };
        ShadowMmu {
            config,
            paging,
            walker: paging.walker(),
            rules: paging.rules(),
            pge: false,
            pcide: false,
            pcid: 0,
            pages: Vec::new(),
            slots: Vec::new(),
            free: Vec::new(),
            hash: BTreeMap::new(),
            order: BTreeMap::new(),
            rmap: BTreeMap::new(),
            large_rmap: BTreeMap::new(),
            unsync: BTreeSet::new(),
            root: None,
            pending: Pending::default(),
            seq: 0,
            stats: ShadowStats::default(),
        }
    }

    /// Starts over as [`new`](Self::new) would with `paging` and `config` (no shadow page,
    /// zeroed counts), for a vCPU reset, a reboot or another guest, but keeps the memory that
    /// held the shadow pages for the pages to come: an MMU reset and refilled allocates
    /// nothing until it needs more pages than it had.
    pub fn reset(&mut self, paging: X86Paging, config: ShadowConfig) {
        let mut slots = core::mem::take(&mut self.slots);
        let mut pages = core::mem::take(&mut self.pages);
        // The chunks' entries must read zero for the pages created next.
        for (id, page) in pages.iter().enumerate() {
            let (Some(page), Some(chunk)) = (page, slots.get_mut(id / CHUNK_PAGES)) else {
                continue;
            };
            for slot in page.present.iter() {
                if let Some(entry) = chunk.get_mut((id % CHUNK_PAGES) * ENTRIES + slot) {
                    entry.entry = 0;
                }
            }
        }
        pages.clear();
        *self = ShadowMmu::new(paging, config);
        self.slots = slots;
        self.pages = pages;
    }

    /// The guest's paging state as the MMU knows it.
    pub fn paging(&self) -> &X86Paging {
        &self.paging
    }

    /// The configuration (with `max_pages` raised to [`MIN_SHADOW_PAGES`] if it was lower).
    pub fn config(&self) -> &ShadowConfig {
        &self.config
    }

    /// The current PCID (0 without CR4.PCIDE).
    pub fn pcid(&self) -> u16 {
        self.pcid
    }

    /// The costs so far.
    pub fn stats(&self) -> ShadowStats {
        ShadowStats {
            pages_in_use: self.hash.len(),
            ..self.stats
        }
    }

    /// The roles under which guest table `gfn` is shadowed now.
    pub fn roles_of(&self, gfn: u64) -> Vec<Role> {
        self.pages_of(gfn)
            .filter_map(|id| self.page(id).map(|page| page.role))
            .collect()
    }

    /// Whether guest table `gfn` is unsync.
    pub fn is_unsync(&self, gfn: u64) -> bool {
        self.unsync.contains(&gfn)
    }

    /// The role of the current root.
    fn root_role(&self) -> Role {
        self.role(self.levels(), access::ALL)
    }

    /// The role of the shadow of a guest table at `level` reached with `access`.
    fn role(&self, level: u8, access: u8) -> Role {
        Role {
            level,
            direct: false,
            guest_level: 0,
            access,
            wp: self.paging.wp,
            smep: self.paging.smep,
            smap: self.paging.smap,
            nxe: self.paging.format.nxe,
            five_level: self.paging.format.five_level,
        }
    }

    /// The role of a direct page at `level` that maps part of a guest page of `guest_level`
    /// with `access`.
    fn direct_role(&self, level: u8, guest_level: u8, access: u8) -> Role {
        Role {
            direct: true,
            guest_level,
            ..self.role(level, access)
        }
    }

    // ---------------------------------------------------------------------------------------
    // Guest state changes and invalidations.

    /// A new paging state with the same CR3: the walker is prepared again and, if a bit of the
    /// role changed, the next translation starts from another root.
    fn set_paging(&mut self, paging: X86Paging) {
        let old_role = self.root_role();
        self.paging = paging;
        self.walker = paging.walker();
        self.rules = paging.rules();
        if self.root_role() != old_role {
            self.root = None;
            self.pending.all = true;
        }
    }

    /// MOV to CR3. With CR4.PCIDE, bits 11:0 are the new PCID and bit 63
    /// ([`CR3_NO_FLUSH`]) asks to keep its TLB entries.
    ///
    /// The MMU switches to the shadow root of the new table (shadow pages of tables shared
    /// between address spaces, such as a kernel's, are reused as they are) and resyncs unsync
    /// tables before the next translation, no-flush or not: a resync is never staler than the
    /// architecture allows, and the no-flush bit is for the TLB (see [`crate::tlb`]).
    pub fn write_cr3(&mut self, cr3: u64) {
        let value = if self.pcide { cr3 & !CR3_NO_FLUSH } else { cr3 };
        self.pcid = if self.pcide {
            (value & 0xfff) as u16
        } else {
            0
        };
        self.set_paging(X86Paging {
            cr3: value,
            ..self.paging
        });
        self.root = None;
        self.pending.all = true;
    }

    /// MOV to CR0: CR0.WP changes the role.
    pub fn write_cr0(&mut self, cr0: u64) {
        self.set_paging(X86Paging {
            wp: cr0 & CR0_WP != 0,
            ..self.paging
        });
    }

    /// MOV to CR4: SMEP, SMAP and LA57 change the role; toggling PGE, or clearing PCIDE,
    /// flushes everything (global translations included), which for the MMU is a resync.
    pub fn write_cr4(&mut self, cr4: u64) {
        let pge = cr4 & CR4_PGE != 0;
        let pcide = cr4 & CR4_PCIDE != 0;
        if pge != self.pge || (self.pcide && !pcide) {
            self.pending.all = true;
        }
        self.pge = pge;
        self.pcide = pcide;
        if !pcide {
            self.pcid = 0;
        }
        self.set_paging(X86Paging {
            smep: cr4 & CR4_SMEP != 0,
            smap: cr4 & CR4_SMAP != 0,
            ..self.paging.with_five_level(cr4 & CR4_LA57 != 0)
        });
    }

    /// WRMSR to EFER: NXE changes the role.
    pub fn write_efer(&mut self, efer: u64) {
        let format = self.paging.format.with_nxe(efer & EFER_NXE != 0);
        self.set_paging(self.paging.with_format(format));
    }

    /// RFLAGS.AC (STAC, CLAC, POPF): applied to each access, no invalidation.
    pub fn set_ac(&mut self, ac: bool) {
        self.set_paging(X86Paging { ac, ..self.paging });
    }

    /// INVLPG `gva`: the shadow entry that maps it, if its table is unsync, is compared with
    /// the guest's entry before the next translation.
    pub fn invlpg(&mut self, gva: u64) {
        if self.pending.gvas.len() < MAX_PENDING_GVAS {
            self.pending.gvas.push(gva);
        } else {
            self.pending.all = true;
        }
    }

    /// INVPCID of `kind`. Translations of another PCID than the current one need nothing now:
    /// the CR3 load that makes it current resyncs.
    pub fn invpcid(&mut self, kind: Invpcid) {
        match kind {
            Invpcid::Address { pcid, gva } if pcid == self.pcid => self.invlpg(gva),
            Invpcid::SingleContext { pcid } if pcid == self.pcid => self.pending.all = true,
            Invpcid::Address { .. } | Invpcid::SingleContext { .. } => {}
            Invpcid::AllIncludingGlobal | Invpcid::AllNonGlobal => self.pending.all = true,
        }
    }

    /// Writes `value` to the guest-physical word at `gpa` (8-byte aligned) for the guest or the
    /// VMM — the completion of a [`ShadowError::PageTableWrite`], a device's DMA, or a guest
    /// table change observed from outside — and invalidates the shadow entries derived from
    /// it.
    pub fn write_guest<M: PhysMemory + ?Sized>(
        &mut self,
        mem: &M,
        gpa: u64,
        value: u64,
    ) -> Result<(), MemoryError> {
        mem.write_u64(gpa, value)?;
        self.guest_wrote(gpa);
        Ok(())
    }

    /// The guest-physical word at `gpa` has changed (written by other means than
    /// [`write_guest`](Self::write_guest)): invalidates exactly the shadow entries derived from
    /// it, in every shadow of the guest table that holds it.
    pub fn guest_wrote(&mut self, gpa: u64) {
        let gfn = gpa >> 12;
        let slot = ((gpa & 0xfff) / 8) as usize;
        let shadows: Vec<PageId> = self.pages_of(gfn).collect();
        for id in shadows {
            self.zap_entry(id, slot);
        }
    }

    // ---------------------------------------------------------------------------------------
    // Translation.

    /// Translates `gva` for `access`: a hit in the shadow tables, else a shadow fault (a guest
    /// walk, then a fill). `mem` is guest-physical memory (where the guest's tables are), `map`
    /// the host backing.
    ///
    /// Errors: the guest's page fault to inject, [`ShadowError::NoBacking`],
    /// [`ShadowError::PageTableWrite`] (a write to a write-protected guest table, to emulate),
    /// or the walk's other errors (non-canonical address, tables outside memory).
    pub fn translate<M, G>(
        &mut self,
        mem: &M,
        map: &G,
        gva: u64,
        access: Access,
    ) -> Result<ShadowTranslation, ShadowError>
    where
        M: PhysMemory + ?Sized,
        G: GpaMap + ?Sized,
    {
        self.stats.translations += 1;
        if self.pending.all || !self.pending.gvas.is_empty() {
            self.run_pending(mem);
        }
        if let Some(hit) = self.lookup(gva)
            && self.rules.permits(hit.rights(), access)
            && (!access.is_write() || hit.entry & S_WRITABLE != 0)
        {
            self.stats.hits += 1;
            return Ok(hit.translation(gva, &self.rules));
        }
        self.shadow_fault(mem, map, gva, access)
    }

    /// The shadow leaf that maps `gva`, if any.
    fn lookup(&self, gva: u64) -> Option<Hit> {
        if !self.paging.is_canonical(gva) {
            return None;
        }
        let mut id = self.root?;
        let levels = self.levels();
        for level in (1..=levels).rev() {
            let slot = self.slot(id, index(gva, level))?;
            let entry = slot.entry;
            let refs = u32::from(levels - level) + 1;
            if entry & S_PRESENT == 0 {
                return None;
            }
            if level == 1 || entry & S_LARGE != 0 {
                return Some(Hit {
                    entry,
                    level,
                    gpa_base: slot.gpa,
                    refs,
                });
            }
            id = (entry >> 12) as PageId;
        }
        None
    }

    fn levels(&self) -> u8 {
        if self.paging.format.five_level { 5 } else { 4 }
    }

    fn shadow_fault<M, G>(
        &mut self,
        mem: &M,
        map: &G,
        gva: u64,
        access: Access,
    ) -> Result<ShadowTranslation, ShadowError>
    where
        M: PhysMemory + ?Sized,
        G: GpaMap + ?Sized,
    {
        let walked = match self.walker.translate(mem, gva, access) {
            Ok(walked) => walked,
            Err(WalkError::PageFault(fault)) => {
                self.stats.guest_faults += 1;
                return Err(ShadowError::GuestPageFault(fault));
            }
            Err(err) => return Err(ShadowError::Walk(err)),
        };
        let gpa = walked.address;
        let gfn = gpa >> 12;
        if access.is_write() && self.is_tracked(gfn) {
            self.stats.write_protect_faults += 1;
            if !self.try_unsync(gfn) {
                return Err(ShadowError::PageTableWrite { gva, gpa });
            }
        }
        let Some((hpa, _)) = map.lookup(gpa) else {
            self.stats.no_backing += 1;
            return Err(ShadowError::NoBacking { gva, gpa });
        };
        self.stats.shadow_faults += 1;
        let shadow_refs = self.fill(mem, map, gva, gpa, walked.page_size);
        // The fill may have made the written page a shadowed table: the guest writing the
        // table that maps the write (its own root, a self-map) is emulated too.
        if access.is_write() && self.is_tracked(gfn) && !self.try_unsync(gfn) {
            self.stats.write_protect_faults += 1;
            return Err(ShadowError::PageTableWrite { gva, gpa });
        }
        Ok(ShadowTranslation {
            gpa,
            hpa,
            page_size: walked.page_size,
            rights: walked.rights,
            refs: walked.refs + shadow_refs,
            filled: true,
        })
    }

    /// Installs the shadow entries of `gva`'s path after a successful guest walk that gave
    /// `gpa` in a page of `size`, reading the guest's entries again (now with their accessed
    /// and dirty flags). Returns the shadow entries written. Installs nothing if the tables no
    /// longer give that translation (another vCPU changed them) or cannot be read.
    fn fill<M, G>(&mut self, mem: &M, map: &G, gva: u64, gpa: u64, size: PageSize) -> u32
    where
        M: PhysMemory + ?Sized,
        G: GpaMap + ?Sized,
    {
        let levels = self.levels();
        self.make_room(usize::from(levels) + 2);
        let root = match self.root {
            Some(root) => root,
            None => {
                let root = self.get_page(mem, self.paging.root() >> 12, self.root_role());
                self.root = Some(root);
                root
            }
        };
        let (mut id, mut table, mut acc, mut written) = (root, self.paging.root(), access::ALL, 0);
        for level in (1..=levels).rev() {
            let slot = index(gva, level);
            let Ok(entry) = mem.read_u64(table + slot as u64 * 8) else {
                return written;
            };
            written += 1;
            match self.rules.decode(entry, level) {
                EntryKind::Table(next) if level > 1 => {
                    acc &= entry_access(entry);
                    let role = self.role(level - 1, acc);
                    let child = match self.linked(id, slot, next >> 12, role) {
                        // Already linked: reused as it is (an unsync table stays unsync).
                        Some(child) => {
                            if let Some(linked) = self.slot_mut(id, slot) {
                                linked.guest = entry;
                            }
                            child
                        }
                        None => {
                            let child = self.get_page(mem, next >> 12, role);
                            self.link(id, slot, child, entry);
                            child
                        }
                    };
                    (id, table) = (child, next);
                }
                EntryKind::Page(base) => {
                    let Some(leaf_size) = PageSize::from_level(level) else {
                        return written;
                    };
                    if leaf_size != size || base | (gva & size.offset_mask()) != gpa {
                        return written;
                    }
                    let leaf = Leaf {
                        rights: acc & entry_access(entry),
                        dirty: entry & DIRTY != 0,
                        guest_level: level,
                        guest_entry: entry,
                    };
                    return written + self.install(map, id, slot, level, base, gva, leaf);
                }
                _ => return written,
            }
        }
        written
    }

    /// Maps the guest page at `base` (or the part of it around `gva`) from entry `slot` of
    /// shadow page `id` at `level`: with one shadow leaf if the host backs the whole page
    /// contiguously and aligned and it holds no write-protected guest table, else through a
    /// direct shadow page one level down.
    #[allow(clippy::too_many_arguments)]
    fn install<G: GpaMap + ?Sized>(
        &mut self,
        map: &G,
        id: PageId,
        slot: usize,
        level: u8,
        base: u64,
        gva: u64,
        leaf: Leaf,
    ) -> u32 {
        let size = size_of_level(level);
        let Some((hpa, contiguous)) = map.lookup(base) else {
            return 0;
        };
        let frames = size.bytes() >> 12;
        let whole = level == 1
            || (hpa & size.offset_mask() == 0
                && contiguous >= size.bytes()
                && !self.any_tracked(base >> 12, frames));
        if whole {
            let writable = leaf.dirty && (level > 1 || !self.is_tracked(base >> 12));
            let mut entry = (hpa & ADDRESS_BITS)
                | S_PRESENT
                | (u64::from(leaf.guest_level) << S_GUEST_LEVEL_SHIFT);
            if level > 1 {
                entry |= S_LARGE;
            }
            if writable {
                entry |= S_WRITABLE;
            }
            if leaf.rights & access::WRITE != 0 {
                entry |= S_GUEST_WRITE;
            }
            if leaf.rights & access::USER != 0 {
                entry |= S_USER;
            }
            if leaf.rights & access::EXEC == 0 {
                entry |= S_NO_EXEC;
            }
            self.set_leaf(id, slot, entry, leaf.guest_entry, base, level);
            return 1;
        }
        let dirty = if leaf.dirty { access::DIRTY } else { 0 };
        let role = self.direct_role(level - 1, leaf.guest_level, leaf.rights | dirty);
        let child = self.get_direct_page(base >> 12, role);
        self.link(id, slot, child, leaf.guest_entry);
        let sub_level = level - 1;
        let sub_size = size_of_level(sub_level);
        let sub_base = base | (gva & size.offset_mask() & !sub_size.offset_mask());
        1 + self.install(
            map,
            child,
            index(gva, sub_level),
            sub_level,
            sub_base,
            gva,
            leaf,
        )
    }

    // ---------------------------------------------------------------------------------------
    // Shadow pages.

    fn page(&self, id: PageId) -> Option<&ShadowPage> {
        self.pages.get(id).and_then(Option::as_ref)
    }

    fn page_mut(&mut self, id: PageId) -> Option<&mut ShadowPage> {
        self.pages.get_mut(id).and_then(Option::as_mut)
    }

    /// Entry `slot` of page `id` (present or not).
    fn slot(&self, id: PageId, slot: usize) -> Option<&Slot> {
        let at = (id % CHUNK_PAGES) * ENTRIES + slot;
        self.slots.get(id / CHUNK_PAGES)?.get(at)
    }

    fn slot_mut(&mut self, id: PageId, slot: usize) -> Option<&mut Slot> {
        let at = (id % CHUNK_PAGES) * ENTRIES + slot;
        self.slots.get_mut(id / CHUNK_PAGES)?.get_mut(at)
    }

    /// Shadow entry `slot` of page `id`, 0 if there is none.
    fn entry(&self, id: PageId, slot: usize) -> u64 {
        self.slot(id, slot).map_or(0, |slot| slot.entry)
    }

    /// The shadow pages of guest table `gfn` (not the direct pages of a large page there).
    fn pages_of(&self, gfn: u64) -> impl Iterator<Item = PageId> + '_ {
        self.hash
            .range(frame_keys(gfn, 1))
            .filter(|(key, _)| *key & KEY_DIRECT == 0)
            .map(|(_, &id)| id)
    }

    /// Whether writes to guest frame `gfn` must fault: it holds a shadowed guest table that
    /// is not unsync.
    fn is_tracked(&self, gfn: u64) -> bool {
        !self.unsync.contains(&gfn) && self.pages_of(gfn).next().is_some()
    }

    /// Whether any of the `count` frames from `gfn` on is tracked.
    fn any_tracked(&self, gfn: u64, count: u64) -> bool {
        self.hash
            .range(frame_keys(gfn, count))
            .any(|(key, _)| key & KEY_DIRECT == 0 && !self.unsync.contains(&(key >> ROLE_BITS)))
    }

    /// The child that entry `slot` of `id` links, if it is the shadow of `gfn` under `role`.
    fn linked(&self, id: PageId, slot: usize, gfn: u64, role: Role) -> Option<PageId> {
        let entry = self.entry(id, slot);
        if entry & S_PRESENT == 0 || entry & S_LARGE != 0 {
            return None;
        }
        let child = (entry >> 12) as PageId;
        let page = self.page(child)?;
        (page.gfn == gfn && page.role == role).then_some(child)
    }

    /// The shadow page of guest table `gfn` under `role`, to be linked anew, created (and its
    /// table write-protected) if there is none. An unsync table is synced first, as KVM does
    /// when it links one anew: entries reached through the new link must be current. So are
    /// the unsync tables below an existing page, which the new link reaches as well.
    fn get_page<M: PhysMemory + ?Sized>(&mut self, mem: &M, gfn: u64, role: Role) -> PageId {
        if self.unsync.contains(&gfn) {
            self.sync_table(mem, gfn);
        }
        if let Some(&id) = self.hash.get(&page_key(gfn, &role)) {
            self.sync_below(mem, id);
            return id;
        }
        let id = self.create(gfn, role);
        self.write_protect(gfn);
        id
    }

    /// Syncs the unsync tables shadowed below shadow page `id`: a new link to `id` makes their
    /// entries reachable through linear addresses that never used them, and no TLB can hold a
    /// stale translation of an address it never translated.
    ///
    /// The search follows the marked links only (KVM's `mmu_unsync_walk`), so it costs the
    /// paths to the unsync tables, not the number of unsync tables or of shadow pages, and
    /// clears the marks of the subtrees it leaves in sync.
    fn sync_below<M: PhysMemory + ?Sized>(&mut self, mem: &M, id: PageId) {
        let Some(page) = self.page(id) else {
            return;
        };
        let (marked, level) = (page.unsync_children, page.role.level);
        for slot in marked.iter() {
            let entry = self.entry(id, slot);
            if entry & S_PRESENT != 0 && entry & S_LARGE == 0 {
                let child = (entry >> 12) as PageId;
                // Links go one level down; the check keeps the recursion bounded by the levels
                // whatever the entries hold.
                if let Some(page) = self.page(child).filter(|page| page.role.level < level) {
                    let (gfn, direct) = (page.gfn, page.role.direct);
                    if !direct && self.unsync.contains(&gfn) {
                        self.sync_table(mem, gfn);
                    }
                    self.sync_below(mem, child);
                }
            }
            if let Some(page) = self.page_mut(id) {
                page.unsync_children.remove(slot);
            }
        }
    }

    /// Marks `links` (parent, entry) as leading to an unsync table, and the links to their
    /// pages in turn (KVM's `kvm_mmu_mark_parents_unsync`). A page that already had a marked
    /// entry has its own links marked, so the marking stops there.
    fn mark_unsync(&mut self, mut links: Vec<(PageId, usize)>) {
        while let Some((id, slot)) = links.pop() {
            let Some(page) = self.page_mut(id) else {
                continue;
            };
            let had_marks = !page.unsync_children.is_empty();
            page.unsync_children.insert(slot);
            if !had_marks {
                links.extend(page.parents.iter());
            }
        }
    }

    /// The direct shadow page for the guest frames from `gfn` on under `role`.
    fn get_direct_page(&mut self, gfn: u64, role: Role) -> PageId {
        match self.hash.get(&page_key(gfn, &role)) {
            Some(&id) => id,
            None => self.create(gfn, role),
        }
    }

    fn create(&mut self, gfn: u64, role: Role) -> PageId {
        self.seq += 1;
        let page = ShadowPage {
            gfn,
            role,
            present: SlotSet::default(),
            unsync_children: SlotSet::default(),
            parents: EntryList::default(),
            seq: self.seq,
        };
        let id = match self.free.pop() {
            // A freed page's entries are all zero: freeing it zapped the present ones.
            Some(id) => {
                if let Some(slot) = self.pages.get_mut(id) {
                    *slot = Some(page);
                }
                id
            }
            None => {
                if self.pages.len() >= self.slots.len() * CHUNK_PAGES {
                    let chunk = alloc::vec![Slot::default(); CHUNK_PAGES * ENTRIES];
                    self.slots.push(chunk.into_boxed_slice());
                }
                self.pages.push(Some(page));
                self.pages.len() - 1
            }
        };
        self.hash.insert(page_key(gfn, &role), id);
        self.order.insert(self.seq, id);
        self.stats.pages_created += 1;
        self.stats.max_pages_in_use = self.stats.max_pages_in_use.max(self.hash.len());
        id
    }

    /// Evicts pages until `needed` more fit in the bound: the oldest orphan first (a page no
    /// shadow table links, kept for reuse), else the oldest page; never the current root.
    fn make_room(&mut self, needed: usize) {
        while self.hash.len() + needed > self.config.max_pages {
            let victim = {
                let mut candidates = self
                    .order
                    .values()
                    .copied()
                    .filter(|&id| Some(id) != self.root);
                let oldest = candidates.clone().next();
                candidates
                    .find(|&id| self.page(id).is_some_and(|page| page.parents.is_empty()))
                    .or(oldest)
            };
            let Some(victim) = victim else {
                return;
            };
            self.free_page(victim);
            self.stats.evictions += 1;
        }
    }

    fn free_page(&mut self, id: PageId) {
        let Some(present) = self.page(id).map(|page| page.present) else {
            return;
        };
        for slot in present.iter() {
            self.zap_entry(id, slot);
        }
        let Some(page) = self.pages.get_mut(id).and_then(Option::take) else {
            return;
        };
        for (parent, slot) in page.parents.iter() {
            if let Some(parent_page) = self.pages.get_mut(parent).and_then(Option::as_mut) {
                parent_page.present.remove(slot);
                parent_page.unsync_children.remove(slot);
                if let Some(link) = self.slot_mut(parent, slot) {
                    link.entry = 0;
                }
                self.stats.zaps += 1;
            }
        }
        self.hash.remove(&page_key(page.gfn, &page.role));
        self.order.remove(&page.seq);
        if !page.role.direct && self.pages_of(page.gfn).next().is_none() {
            self.unsync.remove(&page.gfn);
        }
        if self.root == Some(id) {
            self.root = None;
        }
        self.free.push(id);
    }

    /// Points entry `slot` of `id` at `child`, derived from guest entry `guest_entry`.
    fn link(&mut self, id: PageId, slot: usize, child: PageId, guest_entry: u64) {
        let Some(page) = self.page(id) else {
            return;
        };
        let current = self.entry(id, slot);
        let is_link = current & S_PRESENT != 0 && page.role.level > 1 && current & S_LARGE == 0;
        if is_link && (current >> 12) as PageId == child {
            if let Some(linked) = self.slot_mut(id, slot) {
                linked.guest = guest_entry;
            }
            return;
        }
        self.zap_entry(id, slot);
        let Some(linked) = self.slot_mut(id, slot) else {
            return;
        };
        linked.entry = ((child as u64) << 12) | S_PRESENT | S_WRITABLE | S_USER;
        linked.guest = guest_entry;
        if let Some(page) = self.page_mut(id) {
            page.present.insert(slot);
        }
        if let Some(child) = self.page_mut(child) {
            child.parents.push((id, slot));
        }
        // A child with unsync tables below it (or unsync itself) marks its new link.
        let carries_unsync = self.page(child).is_some_and(|child| {
            !child.unsync_children.is_empty()
                || (!child.role.direct && self.unsync.contains(&child.gfn))
        });
        if carries_unsync {
            self.mark_unsync(alloc::vec![(id, slot)]);
        }
    }

    fn set_leaf(
        &mut self,
        id: PageId,
        slot: usize,
        entry: u64,
        guest_entry: u64,
        base: u64,
        level: u8,
    ) {
        self.zap_entry(id, slot);
        let Some(page) = self.page_mut(id) else {
            return;
        };
        page.present.insert(slot);
        if let Some(leaf) = self.slot_mut(id, slot) {
            *leaf = Slot {
                entry,
                guest: guest_entry,
                gpa: base,
            };
        }
        let rmap = if level == 1 {
            &mut self.rmap
        } else {
            &mut self.large_rmap
        };
        rmap.entry(base >> 12).or_default().push((id, slot));
    }

    /// Invalidates entry `slot` of `id`: a leaf leaves the reverse map, a link leaves its
    /// child's parents (the child stays, an orphan, for reuse).
    fn zap_entry(&mut self, id: PageId, slot: usize) {
        let Some(zapped) = self.slot_mut(id, slot) else {
            return;
        };
        let entry = zapped.entry;
        if entry & S_PRESENT == 0 {
            return;
        }
        zapped.entry = 0;
        let gfn = zapped.gpa >> 12;
        let Some(page) = self.page_mut(id) else {
            return;
        };
        page.present.remove(slot);
        page.unsync_children.remove(slot);
        let level = page.role.level;
        self.stats.zaps += 1;
        if level == 1 || entry & S_LARGE != 0 {
            let rmap = if level == 1 {
                &mut self.rmap
            } else {
                &mut self.large_rmap
            };
            if let Some(users) = rmap.get_mut(&gfn) {
                users.remove((id, slot));
                if users.is_empty() {
                    rmap.remove(&gfn);
                }
            }
        } else if let Some(child) = self.page_mut((entry >> 12) as PageId) {
            child.parents.remove((id, slot));
        }
    }

    /// Guest frame `gfn` now holds a tracked table: no 4 KiB shadow leaf may write it, and no
    /// large shadow leaf may map it.
    fn write_protect(&mut self, gfn: u64) {
        if let Some(users) = self.rmap.get(&gfn) {
            for (id, slot) in users.clone().iter() {
                if let Some(leaf) = self.slot_mut(id, slot) {
                    leaf.entry &= !S_WRITABLE;
                }
            }
        }
        let mut covering = Vec::new();
        for size in [PageSize::Size2M, PageSize::Size1G] {
            let base = gfn & !((size.bytes() >> 12) - 1);
            if let Some(users) = self.large_rmap.get(&base) {
                for (id, slot) in users.iter() {
                    let level = self.page(id).map_or(0, |page| page.role.level);
                    if gfn < base + (size_of_level(level).bytes() >> 12) {
                        covering.push((id, slot));
                    }
                }
            }
        }
        for (id, slot) in covering {
            self.zap_entry(id, slot);
        }
    }

    /// With [`SyncPolicy::Unsync`], makes guest table `gfn` unsync if it is shadowed only as a
    /// last-level table (and marks the links to its shadows); returns whether it is unsync
    /// now.
    fn try_unsync(&mut self, gfn: u64) -> bool {
        if self.config.policy != SyncPolicy::Unsync {
            return false;
        }
        let last_level_only = self
            .pages_of(gfn)
            .all(|id| self.page(id).is_some_and(|page| page.role.level == 1));
        if last_level_only && self.unsync.insert(gfn) {
            self.stats.unsyncs += 1;
            let links: Vec<(PageId, usize)> = self
                .pages_of(gfn)
                .filter_map(|id| self.page(id))
                .flat_map(|page| page.parents.iter())
                .collect();
            self.mark_unsync(links);
        }
        last_level_only
    }

    /// Compares every shadow of unsync guest table `gfn` with the table, invalidates the
    /// entries whose guest entry changed, and protects the table again.
    fn sync_table<M: PhysMemory + ?Sized>(&mut self, mem: &M, gfn: u64) {
        let shadows: Vec<PageId> = self.pages_of(gfn).collect();
        for id in shadows {
            let Some(present) = self.page(id).map(|page| page.present) else {
                continue;
            };
            for slot in present.iter() {
                self.sync_entry(mem, id, slot);
            }
        }
        self.unsync.remove(&gfn);
        self.write_protect(gfn);
        self.stats.syncs += 1;
    }

    /// Invalidates entry `slot` of `id` if the guest entry it came from changed.
    fn sync_entry<M: PhysMemory + ?Sized>(&mut self, mem: &M, id: PageId, slot: usize) {
        let (Some(page), Some(shadow)) = (self.page(id), self.slot(id, slot)) else {
            return;
        };
        if shadow.entry & S_PRESENT == 0 {
            return;
        }
        let addr = (page.gfn << 12) + slot as u64 * 8;
        if mem.read_u64(addr).ok() != Some(shadow.guest) {
            self.zap_entry(id, slot);
        }
    }

    /// Carries out the pending invalidations: a resync of every unsync table, or of the
    /// entries mapping the addresses invalidated one by one.
    fn run_pending<M: PhysMemory + ?Sized>(&mut self, mem: &M) {
        let pending = core::mem::take(&mut self.pending);
        if pending.all {
            let tables: Vec<u64> = self.unsync.iter().copied().collect();
            for gfn in tables {
                self.sync_table(mem, gfn);
            }
            return;
        }
        for gva in pending.gvas {
            let Some(id) = self.last_level_page(gva) else {
                continue;
            };
            if self
                .page(id)
                .is_some_and(|page| !page.role.direct && self.unsync.contains(&page.gfn))
            {
                self.sync_entry(mem, id, index(gva, 1));
                self.stats.syncs += 1;
            }
        }
    }

    /// Checks the bookkeeping against the entries (for the crate's tests and its differential
    /// property): each page's present set is its nonzero entries and a free id has none; each
    /// link goes one level down to a page that lists it among its parents, and each parent
    /// listed links the page; a page that is unsync or has marked children is marked in every
    /// parent; the maps hold the live pages.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) -> Result<(), alloc::string::String> {
        use alloc::format;
        let chunk_ids = self.slots.len() * CHUNK_PAGES;
        for id in 0..chunk_ids.max(self.pages.len()) {
            let page = self.page(id);
            for slot in 0..ENTRIES {
                let entry = self.entry(id, slot);
                let Some(page) = page else {
                    if entry != 0 {
                        return Err(format!("free page {id} has entry {slot}: {entry:#x}"));
                    }
                    continue;
                };
                if (entry != 0) != page.present.contains(slot)
                    || (entry != 0 && entry & S_PRESENT == 0)
                {
                    return Err(format!("page {id} entry {slot} {entry:#x} vs present set"));
                }
                let is_link = entry & S_PRESENT != 0 && entry & S_LARGE == 0 && page.role.level > 1;
                if is_link {
                    let child = (entry >> 12) as PageId;
                    let linked = self.page(child).is_some_and(|c| {
                        c.role.level + 1 == page.role.level
                            && c.parents.iter().any(|parent| parent == (id, slot))
                    });
                    if !linked {
                        return Err(format!("page {id} entry {slot} links {child} unlisted"));
                    }
                }
            }
            let Some(page) = page else {
                continue;
            };
            if self.hash.get(&page_key(page.gfn, &page.role)) != Some(&id) {
                return Err(format!("page {id} is not in the map under its key"));
            }
            for (parent, slot) in page.parents.iter() {
                if self.entry(parent, slot) & !0xfff & ADDRESS_BITS != (id as u64) << 12 {
                    return Err(format!(
                        "page {id} lists parent {parent}/{slot}, not linked"
                    ));
                }
                let carries = !page.unsync_children.is_empty()
                    || (!page.role.direct && self.unsync.contains(&page.gfn));
                let marked = self
                    .page(parent)
                    .is_some_and(|p| p.unsync_children.contains(slot));
                if carries && !marked {
                    return Err(format!(
                        "page {id} carries unsync, {parent}/{slot} unmarked"
                    ));
                }
            }
        }
        let live = self.pages.iter().flatten().count();
        if live != self.hash.len() || live != self.order.len() {
            return Err(format!(
                "{live} pages, {} hashed, {} ordered",
                self.hash.len(),
                self.order.len()
            ));
        }
        Ok(())
    }

    /// The level-1 shadow page on `gva`'s path, if the path reaches one.
    fn last_level_page(&self, gva: u64) -> Option<PageId> {
        let mut id = self.root?;
        for level in (2..=self.levels()).rev() {
            let entry = self.slot(id, index(gva, level))?.entry;
            if entry & S_PRESENT == 0 || entry & S_LARGE != 0 {
                return None;
            }
            id = (entry >> 12) as PageId;
        }
        Some(id)
    }
}

/// What a guest leaf grants, for [`ShadowMmu::install`].
#[derive(Debug, Clone, Copy)]
struct Leaf {
    /// The [`access`] bits over the whole path.
    rights: u8,
    /// The guest's dirty flag (after the walk).
    dirty: bool,
    /// The level of the guest's leaf.
    guest_level: u8,
    /// The guest's leaf entry.
    guest_entry: u64,
}

/// A shadow leaf found for an address.
#[derive(Debug, Clone, Copy)]
struct Hit {
    entry: u64,
    level: u8,
    gpa_base: u64,
    refs: u32,
}

impl Hit {
    /// The rights in the walker's combined form (XD inverted).
    fn rights(&self) -> u64 {
        let mut rights = 0;
        if self.entry & S_GUEST_WRITE != 0 {
            rights |= WRITABLE;
        }
        if self.entry & S_USER != 0 {
            rights |= USER;
        }
        if self.entry & S_NO_EXEC == 0 {
            rights |= NO_EXECUTE;
        }
        rights
    }

    fn translation(&self, gva: u64, rules: &X86Rules) -> ShadowTranslation {
        let size = size_of_level(self.level);
        let guest_level = ((self.entry >> S_GUEST_LEVEL_SHIFT) & 3) as u8;
        let guest_size = size_of_level(guest_level);
        let offset = gva & size.offset_mask();
        ShadowTranslation {
            gpa: self.gpa_base | offset,
            hpa: (self.entry & ADDRESS_BITS & !size.offset_mask()) | offset,
            page_size: guest_size,
            rights: rules.rights(self.rights()),
            refs: self.refs,
            filled: false,
        }
    }
}

#[cfg(test)]
mod tests;
