//! The shadow MMU's differential property: after any sequence of guest page-table writes (the
//! guest's own stores through its mappings, and the VMM's), INVLPG, INVPCID, CR3 loads with and
//! without the PCID no-flush bit and mode-bit changes, every translation of the
//! [`ShadowMmu`] equals a fresh guest walk composed with the GPA map — outcome, page fault
//! error code, and every accessed/dirty flag written — except where the architecture allows a
//! stale translation, which the check models:
//!
//! - a translation served by a shadow fault (`filled`) must equal the crate's walker run at
//!   that moment, and must write exactly what the walker writes;
//! - a hit writes nothing and, with [`SyncPolicy::Resync`], equals the fresh walk, which must
//!   itself have nothing to write (its accessed/dirty flags were set when the entry was made);
//! - with [`SyncPolicy::Unsync`], a hit may instead equal the walk of the tables as they were
//!   at some moment since the last invalidation that covers the address (a CR3 load, a
//!   mode-bit change, INVPCID of the whole context, INVLPG or INVPCID of its page): what a TLB
//!   may still hold. A write hit also needs the leaf dirty at that moment.
//!
//! Inputs decode from bytes (every byte string is an input), for the property test and the
//! `paging_shadow` fuzz target.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;

use crate::shadow::{
    CR3_NO_FLUSH, CR4_PCIDE, CR4_PGE, GpaMap, GpaRanges, ShadowConfig, ShadowError, ShadowMmu,
    ShadowTranslation, SyncPolicy,
};
use crate::tlb::Invpcid;
use crate::x86::{
    ACCESSED, CR0_WP, CR4_LA57, CR4_SMAP, CR4_SMEP, DIRTY, EFER_NXE, GLOBAL, NO_EXECUTE, PAGE_SIZE,
    PRESENT, USER, WRITABLE,
};
use crate::{Access, AccessKind, BufferMemory, MemoryError, PhysMemory, Privilege, WalkError};

/// Guest memory holding the tables: 16 pages from GPA 0.
pub const TABLE_PAGES: u64 = 16;
/// Host-physical base of guest RAM.
const HOST: u64 = 0x1_0000_0000;
/// Guest RAM: the table pages but the last two (left unbacked, as MMIO), and a 2 MiB page at
/// 2 MiB that the host backs contiguously.
fn gpa_map() -> GpaRanges {
    let mut map = GpaRanges::new();
    let _ = map.insert(0, (TABLE_PAGES - 2) << 12, HOST);
    let _ = map.insert(0x20_0000, 0x20_0000, HOST + 0x20_0000);
    map
}

/// Bytes, then a generator seeded from them.
struct Source<'a> {
    data: &'a [u8],
    pos: usize,
    state: u64,
}

impl Source<'_> {
    fn byte(&mut self) -> u8 {
        if let Some(&b) = self.data.get(self.pos) {
            self.pos += 1;
            return b;
        }
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        (self.state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
    }

    fn below(&mut self, n: u32) -> u64 {
        u64::from(u32::from(self.byte()) % n.max(1))
    }

    /// True one time in `n`; never for a zero byte, so that zeros decode to a calm guest.
    fn one_in(&mut self, n: u32) -> bool {
        self.below(n) == u64::from(n.max(1) - 1)
    }
}

/// An entry value: a table page, a large page, or garbage now and then.
fn entry(src: &mut Source<'_>) -> u64 {
    let mut value = match src.below(32) {
        29 => 0x20_0000 | PAGE_SIZE,
        30 => src.below(TABLE_PAGES as u32) << 21 | PAGE_SIZE,
        31 => 0x40_0000 + (src.below(16) << 12),
        _ => src.below(TABLE_PAGES as u32) << 12,
    };
    value |= PRESENT | WRITABLE | USER;
    for (bit, one_in) in [
        (PRESENT, 32),
        (WRITABLE, 8),
        (USER, 16),
        (ACCESSED, 2),
        (DIRTY, 2),
        (GLOBAL, 3),
    ] {
        if src.one_in(one_in) {
            value ^= bit;
        }
    }
    if src.one_in(10) {
        value |= NO_EXECUTE;
    }
    if src.one_in(32) {
        value |= 1 << (40 + src.below(12));
    }
    value
}

/// A linear address whose indices at every level are among 0, 1, 2 and 511.
fn address(src: &mut Source<'_>, five_level: bool) -> u64 {
    const INDICES: [u64; 4] = [0, 1, 2, 511];
    let levels = if five_level { 5 } else { 4 };
    // Offsets of the entries tables use, so that stores through a table's mapping change it.
    let mut gva = match src.below(8) {
        7 => src.below(256) * 8,
        pick => [0, 8, 16, 4088][pick as usize % 4],
    };
    for level in 1..=levels {
        gva |= INDICES[src.below(4) as usize] << (12 + 9 * (level - 1));
    }
    let width = 12 + 9 * levels;
    (((gva << (64 - width)) as i64) >> (64 - width)) as u64
}

/// A write to guest memory: (address, old value, new value).
type Write = (u64, u64, u64);

/// Memory that records the writes made through it, in a buffer it borrows (emptied first), so
/// that a run reuses its buffers from access to access.
struct Logged<'a, 'b> {
    mem: &'a BufferMemory,
    log: RefCell<&'b mut Vec<Write>>,
}

impl<'a, 'b> Logged<'a, 'b> {
    fn new(mem: &'a BufferMemory, log: &'b mut Vec<Write>) -> Self {
        log.clear();
        Logged {
            mem,
            log: RefCell::new(log),
        }
    }

    /// The writes made through this memory.
    fn into_log(self) -> &'b mut Vec<Write> {
        self.log.into_inner()
    }
}

/// The write logs of one access: the MMU's, and the fresh walk's it is compared with.
#[derive(Default)]
struct Logs {
    shadow: Vec<Write>,
    fresh: Vec<Write>,
}

impl PhysMemory for Logged<'_, '_> {
    fn read_u64(&self, addr: u64) -> Result<u64, MemoryError> {
        self.mem.read_u64(addr)
    }

    fn write_u64(&self, addr: u64, value: u64) -> Result<(), MemoryError> {
        let old = self.mem.read_u64(addr)?;
        self.mem.write_u64(addr, value)?;
        self.log.borrow_mut().push((addr, old, value));
        Ok(())
    }

    fn compare_exchange_u64(
        &self,
        addr: u64,
        current: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, MemoryError> {
        let result = self.mem.compare_exchange_u64(addr, current, new)?;
        if result.is_ok() {
            self.log.borrow_mut().push((addr, current, new));
        }
        Ok(result)
    }
}

/// Guest memory as it was before the writes of `undo` (address → old value).
struct Overlay<'a> {
    mem: &'a BufferMemory,
    undo: BTreeMap<u64, u64>,
}

impl PhysMemory for Overlay<'_> {
    fn read_u64(&self, addr: u64) -> Result<u64, MemoryError> {
        match self.undo.get(&addr) {
            Some(&old) => Ok(old),
            None => self.mem.read_u64(addr),
        }
    }

    fn write_u64(&self, addr: u64, _value: u64) -> Result<(), MemoryError> {
        Err(MemoryError::OutOfRange(addr))
    }

    fn compare_exchange_u64(
        &self,
        addr: u64,
        _current: u64,
        _new: u64,
    ) -> Result<Result<u64, u64>, MemoryError> {
        Err(MemoryError::OutOfRange(addr))
    }
}

/// The run of one input.
struct Run<'a> {
    mem: &'a BufferMemory,
    map: GpaRanges,
    mmu: &'a mut ShadowMmu,
    policy: SyncPolicy,
    /// Every write to guest memory, in order: (address, old value). A moment is a length of
    /// it: the memory after that many writes.
    history: &'a mut Vec<(u64, u64)>,
    /// The moment of the last invalidation of everything.
    barrier: usize,
    /// The moment of the last invalidation of a page.
    page_barriers: BTreeMap<u64, usize>,
    /// Hits that served a translation the tables no longer give.
    stale_hits: u64,
    /// Buffers for the write logs.
    logs: &'a mut Logs,
}

/// What a run went through: the MMU's counts and the stale hits the model allowed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Coverage {
    /// The MMU's counts at the end.
    pub stats: crate::ShadowStats,
    /// Hits of stale translations (allowed with [`SyncPolicy::Unsync`]).
    pub stale_hits: u64,
}

impl Run<'_> {
    fn record(&mut self, log: &[Write]) {
        for &(addr, old, _) in log {
            self.history.push((addr, old));
        }
    }

    /// The MMU writes `value` to the guest-physical word at `gpa` for the guest or the VMM.
    fn write_guest(&mut self, gpa: u64, value: u64) {
        let mut log = core::mem::take(&mut self.logs.shadow);
        let logged = Logged::new(self.mem, &mut log);
        let _ = self.mmu.write_guest(&logged, gpa, value);
        self.record(logged.into_log());
        self.logs.shadow = log;
    }

    fn write(&mut self, gpa: u64, value: u64) {
        if let Ok(old) = self.mem.read_u64(gpa)
            && self.mem.write_u64(gpa, value).is_ok()
        {
            self.history.push((gpa, old));
        }
    }

    /// Whether `got` is the translation `walked` composed with the GPA map.
    fn same(&self, got: &ShadowTranslation, walked: &crate::Translation) -> bool {
        let hpa = self.map.lookup(walked.address).map(|(hpa, _)| hpa);
        got.gpa == walked.address
            && Some(got.hpa) == hpa
            && got.page_size == walked.page_size
            && got.rights == walked.rights
    }

    /// A hit that differs from the fresh walk: allowed if it is the walk of the tables at some
    /// moment since the last invalidation covering `gva`.
    fn stale_allowed(&self, got: &ShadowTranslation, gva: u64, access: Access) -> bool {
        let since = self
            .page_barriers
            .get(&(gva >> 12))
            .map_or(self.barrier, |&page| page.max(self.barrier));
        let walker = self.mmu.paging().walker();
        let mut undo = BTreeMap::new();
        for moment in (since..=self.history.len()).rev() {
            if let Some(&(addr, old)) = self.history.get(moment) {
                undo.insert(addr, old);
            }
            let then = Overlay {
                mem: self.mem,
                undo: undo.clone(),
            };
            if let Ok(walked) = walker.probe(&then, gva, access)
                && self.same(got, &walked)
                && (!access.is_write() || walked.leaf & DIRTY != 0)
            {
                return true;
            }
        }
        false
    }

    fn access(&mut self, gva: u64, access: Access) -> Result<Option<u64>, String> {
        let mut logs = core::mem::take(&mut *self.logs);
        let result = self.access_logging_to(gva, access, &mut logs);
        *self.logs = logs;
        result
    }

    fn access_logging_to(
        &mut self,
        gva: u64,
        access: Access,
        logs: &mut Logs,
    ) -> Result<Option<u64>, String> {
        let logged = Logged::new(self.mem, &mut logs.shadow);
        let got = self.mmu.translate(&logged, &self.map, gva, access);
        let shadow_writes = logged.into_log();
        let walker = self.mmu.paging().walker();
        if let Ok(hit) = &got
            && !hit.filled
        {
            if !shadow_writes.is_empty() {
                return Err(format!("hit of {gva:#x} wrote {shadow_writes:x?}"));
            }
            let fresh = Logged::new(self.mem, &mut logs.fresh);
            let walked = walker.translate(&fresh, gva, access);
            let fresh_writes = fresh.into_log();
            let current = matches!(&walked, Ok(walked) if self.same(hit, walked));
            for &(addr, old, _) in fresh_writes.iter().rev() {
                let _ = self.mem.write_u64(addr, old);
            }
            let allowed = match self.policy {
                SyncPolicy::Resync => current && fresh_writes.is_empty(),
                SyncPolicy::Unsync => {
                    current || {
                        self.stale_hits += 1;
                        self.stale_allowed(hit, gva, access)
                    }
                }
            };
            if !allowed {
                return Err(format!(
                    "{access:?} of {gva:#x}: shadow hit {hit:x?}, fresh walk {walked:x?} \
                     writing {fresh_writes:x?}"
                ));
            }
            return Ok(Some(hit.gpa));
        }
        // Served by a guest walk: the walker, run now on the same memory, decides.
        for &(addr, old, _) in shadow_writes.iter().rev() {
            let _ = self.mem.write_u64(addr, old);
        }
        let fresh = Logged::new(self.mem, &mut logs.fresh);
        let walked = walker.translate(&fresh, gva, access);
        let fresh_writes = fresh.into_log();
        self.record(fresh_writes);
        if shadow_writes != fresh_writes {
            return Err(format!(
                "{access:?} of {gva:#x}: shadow wrote {shadow_writes:x?}, walk {fresh_writes:x?}"
            ));
        }
        let agree = match (&got, &walked) {
            (Ok(t), Ok(w)) => self.same(t, w),
            (Err(ShadowError::NoBacking { gpa, .. }), Ok(w)) => {
                *gpa == w.address && self.map.lookup(w.address).is_none()
            }
            (Err(ShadowError::PageTableWrite { gpa, .. }), Ok(w)) => {
                access.is_write() && *gpa == w.address
            }
            (Err(ShadowError::GuestPageFault(f)), Err(WalkError::PageFault(g))) => f == g,
            (Err(ShadowError::Walk(e)), Err(g)) => e == g,
            _ => false,
        };
        if !agree {
            return Err(format!(
                "{access:?} of {gva:#x}: shadow {got:x?}, fresh walk {walked:x?}"
            ));
        }
        Ok(match got {
            Ok(t) => Some(t.gpa),
            Err(ShadowError::PageTableWrite { gpa, .. }) => Some(gpa | 1),
            Err(_) => None,
        })
    }

    fn barrier(&mut self) {
        self.barrier = self.history.len();
        self.page_barriers.clear();
    }

    fn page_barrier(&mut self, gva: u64) {
        self.page_barriers.insert(gva >> 12, self.history.len());
    }
}

/// The paging modes of an input: its first byte.
const MODE_FIVE_LEVEL: u8 = 1;
const MODE_UNSYNC: u8 = 2;
const MODE_PCIDE: u8 = 4;

/// Decodes `data` into a guest and operations, runs them, and checks every translation;
/// `Err` describes the first disagreement.
pub fn check(data: &[u8]) -> Result<(), String> {
    run(data).map(|_| ())
}

/// [`check`], returning what the run went through.
pub fn run(data: &[u8]) -> Result<Coverage, String> {
    run_reusing(data, &mut Scratch::default())
}

/// The guest memory, write history and MMU one run works on, kept between runs by
/// [`run_reusing`]: a fuzzer that runs input after input then allocates (and page-faults in)
/// none of them again. The MMU is [reset](ShadowMmu::reset) for each input, which makes it the
/// MMU a new one would be.
#[derive(Default)]
pub struct Scratch {
    mem: Option<BufferMemory>,
    history: Vec<(u64, u64)>,
    mmu: Option<ShadowMmu>,
    logs: Logs,
}

/// [`run`] with the memories of `scratch` (cleared first, and left in it for the next input).
pub fn run_reusing(data: &[u8], scratch: &mut Scratch) -> Result<Coverage, String> {
    let mem = match &mut scratch.mem {
        Some(mem) => {
            mem.zero();
            mem
        }
        empty => {
            empty.insert(BufferMemory::new(0, TABLE_PAGES << 12).map_err(|err| format!("{err}"))?)
        }
    };
    let mut history = core::mem::take(&mut scratch.history);
    history.clear();
    let result = run_in(data, mem, &mut history, &mut scratch.mmu, &mut scratch.logs);
    scratch.history = history;
    result
}

fn run_in(
    data: &[u8],
    mem: &BufferMemory,
    history: &mut Vec<(u64, u64)>,
    kept: &mut Option<ShadowMmu>,
    logs: &mut Logs,
) -> Result<Coverage, String> {
    let seed = data
        .iter()
        .fold(0x9e37_79b9_7f4a_7c15u64 ^ data.len() as u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
    let mut src = Source {
        data,
        pos: 0,
        state: seed | 1,
    };
    let mode = src.byte();
    let five_level = mode & MODE_FIVE_LEVEL != 0;
    let policy = if mode & MODE_UNSYNC != 0 {
        SyncPolicy::Unsync
    } else {
        SyncPolicy::Resync
    };
    // Tables: entries at the indices addresses use, in every page.
    for page in 0..TABLE_PAGES {
        for index in [0u64, 1, 2, 511] {
            if src.one_in(16) {
                continue;
            }
            let _ = mem.write_u64((page << 12) + index * 8, entry(&mut src));
        }
    }
    let cr0 = if src.one_in(4) { 0 } else { CR0_WP };
    let mut cr4 = if five_level { CR4_LA57 } else { 0 };
    if mode & MODE_PCIDE != 0 {
        cr4 |= CR4_PCIDE | CR4_PGE;
    }
    let mut efer = EFER_NXE;
    let paging = crate::X86Paging::from_registers(cr0, 0, cr4, efer, 0).with_five_level(five_level);
    let config = ShadowConfig {
        max_pages: 8 + src.below(64) as usize,
        policy,
    };
    let mmu = match kept {
        Some(mmu) => {
            mmu.reset(paging, config);
            mmu
        }
        none => none.insert(ShadowMmu::new(paging, config)),
    };
    mmu.write_cr4(cr4);
    let mut run = Run {
        mem,
        map: gpa_map(),
        mmu,
        policy,
        history,
        barrier: 0,
        page_barriers: BTreeMap::new(),
        stale_hits: 0,
        logs,
    };
    // A few addresses used again and again (so that shadow entries are hit), and now and then
    // another.
    let pool: [u64; 6] = core::array::from_fn(|_| address(&mut src, five_level));
    let ops = 8 + src.below(48);
    for step in 1..=ops as usize {
        let op = src.below(32);
        let gva = match pool.get(src.below(8) as usize) {
            Some(&gva) => gva,
            None => address(&mut src, five_level),
        };
        let fail = |err: String| format!("step {step} (op {op}): {err}");
        match op {
            0..=13 => {
                let kind =
                    [AccessKind::Read, AccessKind::Write, AccessKind::Fetch][src.below(3) as usize];
                let privilege = [Privilege::User, Privilege::Supervisor, Privilege::Implicit]
                    [src.below(3) as usize];
                run.access(gva, Access::new(kind, privilege))
                    .map_err(fail)?;
            }
            14..=20 => {
                // The guest stores an entry-like value through its own mapping.
                let value = entry(&mut src);
                let store = Access::write(Privilege::Supervisor);
                match run.access(gva, store).map_err(fail)? {
                    Some(gpa) if gpa & 1 == 1 => run.write_guest(gpa & !1, value),
                    Some(gpa) => run.write(gpa, value),
                    None => {}
                }
            }
            21..=22 => {
                // The VMM (or a device) writes a table entry.
                let gpa = (src.below(TABLE_PAGES as u32) << 12)
                    + [0u64, 8, 16, 4088][src.below(4) as usize];
                let value = entry(&mut src);
                run.write_guest(gpa, value);
            }
            23..=24 => {
                run.mmu.invlpg(gva);
                run.page_barrier(gva);
            }
            25 => {
                let pcid = if src.one_in(2) { run.mmu.pcid() } else { 1 };
                let kind = match src.below(4) {
                    0 => Invpcid::Address { pcid, gva },
                    1 => Invpcid::SingleContext { pcid },
                    2 => Invpcid::AllIncludingGlobal,
                    _ => Invpcid::AllNonGlobal,
                };
                run.mmu.invpcid(kind);
                match kind {
                    Invpcid::Address { pcid, gva } if pcid == run.mmu.pcid() => {
                        run.page_barrier(gva)
                    }
                    Invpcid::Address { .. } => {}
                    Invpcid::SingleContext { pcid } if pcid != run.mmu.pcid() => {}
                    _ => run.barrier(),
                }
            }
            26..=28 => {
                let root = src.below(4) << 12;
                let pcid = src.below(3);
                let no_flush = if src.one_in(2) { CR3_NO_FLUSH } else { 0 };
                let cr3 = if cr4 & CR4_PCIDE != 0 {
                    root | pcid | no_flush
                } else {
                    root
                };
                run.mmu.write_cr3(cr3);
                run.barrier();
            }
            29 => {
                let bit = [CR4_PGE, CR4_PCIDE, CR4_PGE, CR4_PCIDE, CR4_SMEP, CR4_SMAP]
                    [src.below(6) as usize];
                cr4 ^= bit;
                run.mmu.write_cr4(cr4);
                // Setting PCIDE flushes nothing; the other changes flush (PGE, PCIDE cleared)
                // or change the role (SMEP, SMAP), which the MMU resyncs for.
                if !(bit == CR4_PCIDE && cr4 & CR4_PCIDE != 0) {
                    run.barrier();
                }
            }
            30 => {
                if src.one_in(2) {
                    run.mmu
                        .write_cr0(if run.mmu.paging().wp { 0 } else { CR0_WP });
                } else {
                    efer ^= EFER_NXE;
                    run.mmu.write_efer(efer);
                }
                run.barrier();
            }
            _ => {
                let ac = !run.mmu.paging().ac;
                run.mmu.set_ac(ac);
            }
        }
    }
    #[cfg(test)]
    run.mmu.check_invariants()?;
    let stats = run.mmu.stats();
    if stats.pages_in_use > run.mmu.config().max_pages {
        return Err(format!(
            "{} shadow pages in use, bound {}",
            stats.pages_in_use,
            run.mmu.config().max_pages
        ));
    }
    Ok(Coverage {
        stats,
        stale_hits: run.stale_hits,
    })
}
