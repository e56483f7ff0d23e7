//! A tagged TLB model: set-associative arrays per page size, each entry tagged as Intel tags
//! them, and the architectural invalidations.
//!
//! **Tags (Intel).** An entry caches the translation of one linear page and is tagged with the
//! VPID it was made under (0 for the host and for guests run without VPID), the EP4TA (the
//! address bits of the EPTP) for a guest-physical translation made through EPT (a *combined*
//! mapping; 0 for a *linear* mapping, made without EPT), and the PCID (0 without CR4.PCIDE). A
//! global entry (G set in the leaf with CR4.PGE) matches every PCID. A lookup matches VPID,
//! EP4TA and page, and PCID unless the entry is global.
//!
//! **AMD.** The ASID plays the VPID's part ([`Tag::vpid`], ASID 0 being the host); nCR3 is no
//! tag (a hypervisor that changes a guest's nested tables flushes its ASID), so
//! [`Tag::ep4ta`] stays 0. Flushes are requested on VMRUN through the VMCB's TLB_CONTROL
//! ([`Tlb::vmrun`]), and INVLPGA ([`Tlb::invlpga`]) invalidates one address in one ASID. VM
//! entry and exit (VMRUN and #VMEXIT) flush nothing by themselves.
//!
//! **Invalidations** (SDM Vol. 3A 4.10.4 and Vol. 3C 28.4.3): INVLPG, the four INVPCID types,
//! MOV to CR3 with and without the no-flush bit, MOV to CR4 toggling PGE or clearing PCIDE,
//! the four INVVPID types, the two INVEPT types, and VM entry and exit without VPID (which
//! flush VPID 0: host and guest share it). Instructions the guest executes act on the current
//! VPID and every EP4TA. The model never returns a translation the architecture says was
//! flushed; it may forget one it was allowed to keep (an entry evicted from its set).

use alloc::vec::Vec;

use crate::format::Rights;
use crate::size::PageSize;

/// The geometry of a TLB: sets and ways for each page size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TlbConfig {
    /// Sets of the 4 KiB array (a power of two).
    pub sets_4k: usize,
    /// Ways of the 4 KiB array.
    pub ways_4k: usize,
    /// Sets of the 2 MiB array (a power of two).
    pub sets_2m: usize,
    /// Ways of the 2 MiB array.
    pub ways_2m: usize,
    /// Sets of the 1 GiB array (a power of two).
    pub sets_1g: usize,
    /// Ways of the 1 GiB array.
    pub ways_1g: usize,
}

impl Default for TlbConfig {
    /// A first-level data TLB of a recent Intel core: 64 entries for 4 KiB pages (16 sets of 4),
    /// 32 for 2 MiB pages (8 sets of 4), 4 for 1 GiB pages (fully associative).
    fn default() -> Self {
        TlbConfig {
            sets_4k: 16,
            ways_4k: 4,
            sets_2m: 8,
            ways_2m: 4,
            sets_1g: 1,
            ways_1g: 4,
        }
    }
}

/// The most entries one array may have.
pub const MAX_TLB_ENTRIES: usize = 1 << 16;

/// A TLB could not be built, or an invalidation is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, displaydoc::Display, thiserror::Error)]
#[ignore_extra_doc_attributes]
pub enum TlbError {
    /// the {0} array needs a power-of-two number of sets, at least one way, and at most 65536
    /// entries
    Geometry(PageSize),
    /// INVVPID of this type with VPID 0 fails (VMfailValid)
    InvalidVpid,
}

/// What an entry is tagged with; see the [module documentation](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Tag {
    /// The VPID (Intel) or ASID (AMD); 0 for the host and for guests run without VPID.
    pub vpid: u16,
    /// The EP4TA of a combined mapping (EPTP bits 51:12), 0 for a linear mapping.
    pub ep4ta: u64,
    /// The PCID (CR3 bits 11:0 with CR4.PCIDE), 0 without.
    pub pcid: u16,
}

/// A cached translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlbEntry {
    /// The host-physical (or, without nested paging, physical) base of the page.
    pub base: u64,
    /// The size of the page.
    pub size: PageSize,
    /// The rights the translation granted when it was cached; an access they deny, or a write
    /// through an entry that is not dirty, walks again.
    pub rights: Rights,
    /// The leaf's dirty flag was set.
    pub dirty: bool,
    /// Global: G set in the leaf with CR4.PGE.
    pub global: bool,
}

/// The four INVPCID types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Invpcid {
    /// Type 0: one linear address in one PCID, global translations excepted.
    Address {
        /// The PCID.
        pcid: u16,
        /// The linear address.
        gva: u64,
    },
    /// Type 1: every translation of one PCID, global translations excepted.
    SingleContext {
        /// The PCID.
        pcid: u16,
    },
    /// Type 2: every translation of every PCID, global translations included.
    AllIncludingGlobal,
    /// Type 3: every translation of every PCID, global translations excepted.
    AllNonGlobal,
}

/// The four INVVPID types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Invvpid {
    /// Type 0: one linear address of one VPID (every PCID and EP4TA, globals included).
    Address {
        /// The VPID (not 0).
        vpid: u16,
        /// The linear address.
        gva: u64,
    },
    /// Type 1: everything of one VPID.
    SingleContext {
        /// The VPID (not 0).
        vpid: u16,
    },
    /// Type 2: everything of every VPID but 0.
    AllContexts,
    /// Type 3: everything of one VPID but its global translations.
    SingleContextRetainingGlobals {
        /// The VPID (not 0).
        vpid: u16,
    },
}

/// The two INVEPT types: they invalidate combined mappings (made through EPT) of every VPID
/// and PCID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Invept {
    /// Type 1: the combined mappings of the EPTP's EP4TA.
    SingleContext {
        /// The EPTP (its bits 51:12 are the EP4TA).
        eptp: u64,
    },
    /// Type 2: every combined mapping.
    Global,
}

/// AMD's VMCB TLB_CONTROL, acted on at VMRUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlbControl {
    /// 0: flush nothing.
    Nothing,
    /// 1: flush every entry of every ASID.
    All,
    /// 3: flush the guest's ASID.
    Asid,
    /// 7: flush the guest's ASID but its global entries.
    AsidNonGlobal,
}

/// Counts of a TLB's work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TlbStats {
    /// Lookups.
    pub lookups: u64,
    /// Lookups that hit.
    pub hits: u64,
    /// Entries inserted.
    pub inserts: u64,
    /// Valid entries replaced to make room.
    pub evictions: u64,
    /// Valid entries invalidated.
    pub invalidated: u64,
}

impl TlbStats {
    /// Lookups that missed.
    pub fn misses(&self) -> u64 {
        self.lookups - self.hits
    }
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    valid: bool,
    tag: Tag,
    /// The linear page number at the array's page size.
    page: u64,
    entry: TlbEntry,
    /// Last use, for LRU replacement in the set.
    stamp: u64,
}

const EMPTY: Slot = Slot {
    valid: false,
    tag: Tag {
        vpid: 0,
        ep4ta: 0,
        pcid: 0,
    },
    page: 0,
    entry: TlbEntry {
        base: 0,
        size: PageSize::Size4K,
        rights: Rights {
            read: false,
            write: false,
            execute: false,
            user: false,
        },
        dirty: false,
        global: false,
    },
    stamp: 0,
};

#[derive(Debug, Clone)]
struct Array {
    size: PageSize,
    sets: usize,
    ways: usize,
    slots: Vec<Slot>,
}

impl Array {
    fn new(size: PageSize, sets: usize, ways: usize) -> Result<Array, TlbError> {
        let entries = sets.checked_mul(ways).filter(|&n| n <= MAX_TLB_ENTRIES);
        if !sets.is_power_of_two() || ways == 0 || entries.is_none() {
            return Err(TlbError::Geometry(size));
        }
        Ok(Array {
            size,
            sets,
            ways,
            slots: alloc::vec![EMPTY; sets * ways],
        })
    }

    fn set(&mut self, page: u64) -> &mut [Slot] {
        let first = (page as usize & (self.sets - 1)) * self.ways;
        &mut self.slots[first..first + self.ways]
    }
}

/// A set-associative, tagged TLB; see the [module documentation](self).
#[derive(Debug, Clone)]
pub struct Tlb {
    arrays: [Array; 3],
    clock: u64,
    stats: TlbStats,
}

impl Tlb {
    /// An empty TLB of the geometry `config`.
    pub fn new(config: TlbConfig) -> Result<Tlb, TlbError> {
        Ok(Tlb {
            arrays: [
                Array::new(PageSize::Size4K, config.sets_4k, config.ways_4k)?,
                Array::new(PageSize::Size2M, config.sets_2m, config.ways_2m)?,
                Array::new(PageSize::Size1G, config.sets_1g, config.ways_1g)?,
            ],
            clock: 0,
            stats: TlbStats::default(),
        })
    }

    /// The counts so far.
    pub fn stats(&self) -> TlbStats {
        self.stats
    }

    /// The valid entries.
    pub fn len(&self) -> usize {
        self.slots().filter(|slot| slot.valid).count()
    }

    /// Whether no entry is valid.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.arrays.iter().flat_map(|array| array.slots.iter())
    }

    /// The cached translation of `gva` under `tag`, if any: the host-physical address and the
    /// entry.
    pub fn lookup(&mut self, tag: Tag, gva: u64) -> Option<(u64, TlbEntry)> {
        self.stats.lookups += 1;
        self.clock += 1;
        let clock = self.clock;
        for array in &mut self.arrays {
            let page = gva >> array.size.shift();
            let offset = gva & array.size.offset_mask();
            for slot in array.set(page) {
                let matches = slot.valid
                    && slot.page == page
                    && slot.tag.vpid == tag.vpid
                    && slot.tag.ep4ta == tag.ep4ta
                    && (slot.tag.pcid == tag.pcid || slot.entry.global);
                if matches {
                    slot.stamp = clock;
                    self.stats.hits += 1;
                    return Some((slot.entry.base | offset, slot.entry));
                }
            }
        }
        None
    }

    /// Caches `entry` as the translation of the page of `gva` under `tag`, replacing an entry
    /// for the same page and tag, else the set's least recently used entry.
    pub fn insert(&mut self, tag: Tag, gva: u64, entry: TlbEntry) {
        self.stats.inserts += 1;
        self.clock += 1;
        let clock = self.clock;
        let Some(array) = self
            .arrays
            .iter_mut()
            .find(|array| array.size == entry.size)
        else {
            return;
        };
        let page = gva >> array.size.shift();
        let entry = TlbEntry {
            base: entry.base & !entry.size.offset_mask(),
            ..entry
        };
        let set = array.set(page);
        let same = set
            .iter()
            .position(|slot| slot.valid && slot.page == page && slot.tag == tag);
        let victim = same
            .or_else(|| set.iter().position(|slot| !slot.valid))
            .unwrap_or_else(|| {
                (0..set.len())
                    .min_by_key(|&way| set[way].stamp)
                    .unwrap_or(0)
            });
        let evicted = same.is_none() && set[victim].valid;
        set[victim] = Slot {
            valid: true,
            tag,
            page,
            entry,
            stamp: clock,
        };
        if evicted {
            self.stats.evictions += 1;
        }
    }

    /// Invalidates every entry `flushed` selects.
    fn flush(&mut self, flushed: impl Fn(&Slot, PageSize) -> bool) {
        for array in &mut self.arrays {
            let size = array.size;
            for slot in &mut array.slots {
                if slot.valid && flushed(slot, size) {
                    slot.valid = false;
                    self.stats.invalidated += 1;
                }
            }
        }
    }

    /// Whether `slot`, in the array of `size`, maps `gva`.
    fn covers(slot: &Slot, size: PageSize, gva: u64) -> bool {
        slot.page == gva >> size.shift()
    }

    /// INVLPG `gva` (or a guest's write to CR3-independent state that invalidates one page):
    /// the entries mapping it in the current VPID, for the current PCID and global ones, every
    /// EP4TA.
    pub fn invlpg(&mut self, current: Tag, gva: u64) {
        self.flush(|slot, size| {
            slot.tag.vpid == current.vpid
                && (slot.tag.pcid == current.pcid || slot.entry.global)
                && Self::covers(slot, size, gva)
        });
    }

    /// INVPCID of `kind`, executed in VPID `vpid`.
    pub fn invpcid(&mut self, vpid: u16, kind: Invpcid) {
        self.flush(|slot, size| {
            slot.tag.vpid == vpid
                && match kind {
                    Invpcid::Address { pcid, gva } => {
                        slot.tag.pcid == pcid && !slot.entry.global && Self::covers(slot, size, gva)
                    }
                    Invpcid::SingleContext { pcid } => slot.tag.pcid == pcid && !slot.entry.global,
                    Invpcid::AllIncludingGlobal => true,
                    Invpcid::AllNonGlobal => !slot.entry.global,
                }
        });
    }

    /// MOV to CR3 loading `new.pcid` in VPID `new.vpid`: unless `no_flush` (CR3 bit 63 with
    /// CR4.PCIDE), the non-global entries of that PCID go (PCID 0 without CR4.PCIDE).
    pub fn write_cr3(&mut self, new: Tag, no_flush: bool) {
        if !no_flush {
            self.flush(|slot, _| {
                slot.tag.vpid == new.vpid && slot.tag.pcid == new.pcid && !slot.entry.global
            });
        }
    }

    /// MOV to CR4 that toggles CR4.PGE or clears CR4.PCIDE, in VPID `vpid`: every entry of the
    /// VPID goes, global ones included.
    pub fn flush_vpid(&mut self, vpid: u16) {
        self.flush(|slot, _| slot.tag.vpid == vpid);
    }

    /// INVVPID of `kind`. Types 0, 1 and 3 with VPID 0 fail, as the instruction does.
    pub fn invvpid(&mut self, kind: Invvpid) -> Result<(), TlbError> {
        match kind {
            Invvpid::Address { vpid: 0, .. }
            | Invvpid::SingleContext { vpid: 0 }
            | Invvpid::SingleContextRetainingGlobals { vpid: 0 } => Err(TlbError::InvalidVpid),
            Invvpid::Address { vpid, gva } => {
                self.flush(|slot, size| slot.tag.vpid == vpid && Self::covers(slot, size, gva));
                Ok(())
            }
            Invvpid::SingleContext { vpid } => {
                self.flush_vpid(vpid);
                Ok(())
            }
            Invvpid::AllContexts => {
                self.flush(|slot, _| slot.tag.vpid != 0);
                Ok(())
            }
            Invvpid::SingleContextRetainingGlobals { vpid } => {
                self.flush(|slot, _| slot.tag.vpid == vpid && !slot.entry.global);
                Ok(())
            }
        }
    }

    /// INVEPT of `kind`: combined mappings of every VPID and PCID.
    pub fn invept(&mut self, kind: Invept) {
        match kind {
            Invept::SingleContext { eptp } => {
                let ep4ta = eptp & crate::format::ADDRESS_BITS;
                self.flush(|slot, _| slot.tag.ep4ta != 0 && slot.tag.ep4ta == ep4ta);
            }
            Invept::Global => self.flush(|slot, _| slot.tag.ep4ta != 0),
        }
    }

    /// A VM entry or VM exit (Intel). Without VPID the guest runs with VPID 0, as the host
    /// does, and each transition flushes every VPID-0 entry; with VPID nothing is flushed.
    pub fn vm_transition(&mut self, vpid_enabled: bool) {
        if !vpid_enabled {
            self.flush_vpid(0);
        }
    }

    /// VMRUN (AMD) of a guest with ASID `asid` and TLB_CONTROL `control`.
    pub fn vmrun(&mut self, asid: u16, control: TlbControl) {
        match control {
            TlbControl::Nothing => {}
            TlbControl::All => self.flush(|_, _| true),
            TlbControl::Asid => self.flush_vpid(asid),
            TlbControl::AsidNonGlobal => {
                self.flush(|slot, _| slot.tag.vpid == asid && !slot.entry.global);
            }
        }
    }

    /// INVLPGA (AMD): the entries mapping `gva` in ASID `asid`, global ones included.
    pub fn invlpga(&mut self, asid: u16, gva: u64) {
        self.flush(|slot, size| slot.tag.vpid == asid && Self::covers(slot, size, gva));
    }
}

#[cfg(test)]
mod tests;
