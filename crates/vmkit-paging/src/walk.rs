//! The one generic page walker, instantiated per format and per way of reaching the entries.
//!
//! Its semantics, shared by every format:
//!
//! 1. An input address the format does not accept stops the walk before any reference.
//! 2. From the root down, each level reads one entry. A not-present entry or a present entry
//!    with a reserved bit (EPT: a misconfiguration) stops the walk there: there is no valid
//!    translation, and rights are not checked.
//! 3. At the leaf, the rights combined over all levels are checked against the access.
//! 4. Only a translation that succeeds sets flags: the accessed flag in every entry used, from
//!    the root down, and the dirty flag in the leaf for a write. Each update is a
//!    compare-exchange against the value the walk read, as the processor's locked update; if
//!    the entry changed since, the whole walk restarts (at most [`MAX_RETRIES`] times).

use crate::access::{Access, AccessKind};
use crate::format::{EntryKind, PagingFormat, Rights};
use core::sync::atomic::Ordering;

use crate::memory::{MemoryError, PhysMemory, TABLE_ENTRIES};
use crate::size::PageSize;

/// How many times a walk restarts because an entry changed between its read and its
/// accessed/dirty update before it gives up with [`WalkError::Contended`](crate::WalkError).
pub const MAX_RETRIES: u32 = 8;

/// The deepest walk: 5-level paging.
pub(crate) const MAX_LEVELS: usize = 5;

/// How the walker reaches the entries it reads and updates: directly in physical memory, or
/// through a nested translation of each entry's guest-physical address.
pub(crate) trait EntryAccess {
    /// Why an entry could not be reached.
    type Error;

    /// Reads the entry at `addr`, used at `level`.
    fn read(&mut self, addr: u64, level: u8) -> Result<u64, Self::Error>;

    /// Reads entry `index` (below 512) of the table at `table`, used at `level`: the entry at
    /// `table + index * 8`.
    #[inline(always)]
    fn read_in(&mut self, table: u64, index: u64, level: u8) -> Result<u64, Self::Error> {
        self.read(table.wrapping_add(index * 8), level)
    }

    /// Replaces the entry at `addr` (used at `level`) with `new` if it still holds `current`;
    /// returns whether it did.
    fn update(&mut self, addr: u64, level: u8, current: u64, new: u64)
    -> Result<bool, Self::Error>;
}

/// Why a walk stopped without a translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop<E> {
    /// The format does not accept the input address.
    BadInput,
    /// The entry at `level` is not present; `rights` combines the entries read, that one
    /// included.
    NotPresent {
        /// The level of the entry.
        level: u8,
        /// The combined rights.
        rights: u64,
    },
    /// The entry at `level` sets a reserved bit.
    Reserved {
        /// The level of the entry.
        level: u8,
    },
    /// The translation is valid but its rights do not allow the access.
    Denied {
        /// The level of the leaf entry.
        level: u8,
        /// The combined rights.
        rights: u64,
    },
    /// An entry could not be reached.
    Access(E),
    /// Accessed/dirty updates kept failing.
    Contended,
}

impl<E> Stop<E> {
    /// What the stop means for the input address, without the walk's bookkeeping (levels and
    /// combined rights): a caller that only needs this lets the compiler drop that bookkeeping.
    #[inline(always)]
    pub fn outcome(self) -> Outcome<E> {
        match self {
            Stop::BadInput => Outcome::BadInput,
            Stop::NotPresent { .. } => Outcome::NotPresent,
            Stop::Reserved { .. } => Outcome::Reserved,
            Stop::Denied { .. } => Outcome::Denied,
            Stop::Access(err) => Outcome::Access(err),
            Stop::Contended => Outcome::Contended,
        }
    }
}

/// A [`Stop`] reduced to its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome<E> {
    /// See [`Stop::BadInput`].
    BadInput,
    /// See [`Stop::NotPresent`].
    NotPresent,
    /// See [`Stop::Reserved`].
    Reserved,
    /// See [`Stop::Denied`].
    Denied,
    /// See [`Stop::Access`].
    Access(E),
    /// See [`Stop::Contended`].
    Contended,
}

/// A successful walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Walked {
    /// The translated address.
    pub address: u64,
    /// The size of the page mapped.
    pub size: PageSize,
    /// The leaf entry as read.
    pub leaf: u64,
    /// The combined rights.
    pub rights: u64,
    /// The entries read, restarts included.
    pub reads: u32,
}

impl Walked {
    /// The public form, with `refs` memory references in all.
    pub fn translation<F: PagingFormat + ?Sized>(self, format: &F, refs: u32) -> Translation {
        Translation {
            address: self.address,
            page_size: self.size,
            leaf: self.leaf,
            rights: format.rights(self.rights),
            refs,
        }
    }
}

/// A successful translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// The translated (output) address.
    pub address: u64,
    /// The size of the page that maps it.
    pub page_size: PageSize,
    /// The leaf entry as the walk read it (before its own accessed/dirty update).
    pub leaf: u64,
    /// The effective rights of the page.
    pub rights: Rights,
    /// The paging-structure entries read, restarts included.
    pub refs: u32,
}

/// Where a walk goes after one level.
enum Flow {
    /// On to the table at this address, one level down.
    Next(u64),
    /// The leaf: the translated address (computed where the page size is a constant), the
    /// page's size and the entry.
    Leaf(u64, PageSize, u64),
}

/// The state of one walk attempt.
struct Attempt {
    path: [(u64, u64); MAX_LEVELS],
    /// The AND of the entries read.
    all: u64,
    /// The OR of the entries read.
    any: u64,
}

impl Attempt {
    /// The rights combined as [`PagingFormat`] defines: the AND over the entries of
    /// `entry ^ RIGHTS_INVERT`, which is the AND of the entries for the other bits and the
    /// complement of their OR for the inverted ones (two operations per level, not three).
    #[inline(always)]
    fn rights<F: PagingFormat + ?Sized>(&self) -> u64 {
        (self.all & !F::RIGHTS_INVERT) | (!self.any & F::RIGHTS_INVERT)
    }
}

/// One level of a walk: `LEVEL` is a constant so that the format's rules for it fold.
#[inline(always)]
fn step<F, A, const UPDATE: bool, const LEVEL: u8>(
    format: &F,
    addr: u64,
    table: u64,
    levels: u8,
    attempt: &mut Attempt,
    entries: &mut A,
) -> Result<Flow, Stop<A::Error>>
where
    F: PagingFormat + ?Sized,
    A: EntryAccess,
{
    let index = (addr >> (12 + 9 * u32::from(LEVEL - 1))) & 0x1ff;
    let entry = entries.read_in(table, index, LEVEL).map_err(Stop::Access)?;
    if UPDATE {
        attempt.path[usize::from(levels - LEVEL)] = (table.wrapping_add(index * 8), entry);
    }
    attempt.all &= entry;
    if F::RIGHTS_INVERT != 0 {
        attempt.any |= entry;
    }
    match format.decode(entry, LEVEL) {
        EntryKind::NotPresent => Err(Stop::NotPresent {
            level: LEVEL,
            rights: attempt.rights::<F>(),
        }),
        EntryKind::Reserved => Err(Stop::Reserved { level: LEVEL }),
        EntryKind::Table(next) if LEVEL > 1 => Ok(Flow::Next(next)),
        EntryKind::Page(base) => match PageSize::from_level(LEVEL) {
            Some(size) => Ok(Flow::Leaf(base | (addr & size.offset_mask()), size, entry)),
            None => Err(Stop::Reserved { level: LEVEL }),
        },
        EntryKind::Table(_) => Err(Stop::Reserved { level: LEVEL }),
    }
}

/// Walks `format`'s tables rooted at `root` to translate `addr` for `access`, setting
/// accessed/dirty flags if `UPDATE` (a probe, without, records nothing it would not need).
///
/// The levels are unrolled (one [`step`] per constant level) and the walk is always inlined: a
/// walk is a short chain of dependent loads, and a loop over a variable level or a result
/// returned through memory would cost more than the loads.
#[inline(always)]
pub(crate) fn walk<F, A, const UPDATE: bool>(
    format: &F,
    root: u64,
    addr: u64,
    access: Access,
    entries: &mut A,
) -> Result<Walked, Stop<A::Error>>
where
    F: PagingFormat + ?Sized,
    A: EntryAccess,
{
    let levels = format.levels();
    if !format.accepts(addr) || !(4..=5).contains(&levels) {
        return Err(Stop::BadInput);
    }
    let accessed = if UPDATE { format.accessed_flag() } else { 0 };
    let dirty = if UPDATE && access.kind == AccessKind::Write {
        format.dirty_flag()
    } else {
        0
    };
    let mut reads = 0;
    'attempt: for _ in 0..=MAX_RETRIES {
        let mut attempt = Attempt {
            path: [(0, 0); MAX_LEVELS],
            all: u64::MAX,
            any: 0,
        };
        let a = &mut attempt;
        let mut flow = Flow::Next(root);
        if levels == 5 {
            flow = step::<F, A, UPDATE, 5>(format, addr, root, levels, a, entries)?;
        }
        if let Flow::Next(table) = flow {
            flow = step::<F, A, UPDATE, 4>(format, addr, table, levels, a, entries)?;
        }
        if let Flow::Next(table) = flow {
            flow = step::<F, A, UPDATE, 3>(format, addr, table, levels, a, entries)?;
        }
        if let Flow::Next(table) = flow {
            flow = step::<F, A, UPDATE, 2>(format, addr, table, levels, a, entries)?;
        }
        if let Flow::Next(table) = flow {
            flow = step::<F, A, UPDATE, 1>(format, addr, table, levels, a, entries)?;
        }
        let Flow::Leaf(address, size, leaf) = flow else {
            // Level 1 never continues to a table.
            return Err(Stop::Reserved { level: 1 });
        };
        let level = size.level();
        // One entry per level from the root down to the leaf.
        reads += u32::from(levels - level) + 1;
        let rights = attempt.rights::<F>();
        if !format.permits(rights, access) {
            return Err(Stop::Denied { level, rights });
        }
        // The AND of the entries has the accessed flag exactly when every entry has it: the
        // common case, a page used before, writes nothing and skips the loop.
        let settled = attempt.all & accessed == accessed && leaf & dirty == dirty;
        if UPDATE && !settled {
            let used = usize::from(levels - level) + 1;
            for (i, &(entry_addr, entry)) in attempt.path[..used].iter().enumerate() {
                let mut new = entry | accessed;
                if i + 1 == used {
                    new |= dirty;
                }
                let entry_level = levels - i as u8;
                if new != entry
                    && !entries
                        .update(entry_addr, entry_level, entry, new)
                        .map_err(Stop::Access)?
                {
                    continue 'attempt;
                }
            }
        }
        return Ok(Walked {
            address,
            size,
            leaf,
            rights,
            reads,
        });
    }
    Err(Stop::Contended)
}

/// Entries read straight from physical memory.
pub(crate) struct Direct<'a, M: ?Sized>(pub &'a M);

impl<M: PhysMemory + ?Sized> EntryAccess for Direct<'_, M> {
    type Error = MemoryError;

    #[inline(always)]
    fn read(&mut self, addr: u64, _level: u8) -> Result<u64, MemoryError> {
        self.0.read_u64(addr)
    }

    /// Through [`PhysMemory::table`] when the memory offers it: one check per table.
    #[inline(always)]
    fn read_in(&mut self, table: u64, index: u64, _level: u8) -> Result<u64, MemoryError> {
        match self.0.table(table) {
            Some(entries) => Ok(entries[index as usize % TABLE_ENTRIES].load(Ordering::Relaxed)),
            None if M::WHOLE_TABLES => read_outside(self.0, table.wrapping_add(index * 8)),
            None => self.0.read_u64(table.wrapping_add(index * 8)),
        }
    }

    #[inline]
    fn update(
        &mut self,
        addr: u64,
        _level: u8,
        current: u64,
        new: u64,
    ) -> Result<bool, MemoryError> {
        Ok(self.0.compare_exchange_u64(addr, current, new)?.is_ok())
    }
}

/// [`PhysMemory::read_u64`] of an entry in a table that a memory with
/// [`WHOLE_TABLES`](PhysMemory::WHOLE_TABLES) did not give: it reports the error, out of the
/// walk's way.
#[cold]
#[inline(never)]
fn read_outside<M: PhysMemory + ?Sized>(mem: &M, addr: u64) -> Result<u64, MemoryError> {
    mem.read_u64(addr)
}
