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
use crate::memory::{MemoryError, PhysMemory};
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

/// Walks `format`'s tables rooted at `root` to translate `addr` for `access`, setting
/// accessed/dirty flags if `UPDATE` (a probe, without, records nothing it would not need).
#[inline]
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
    if !format.accepts(addr) || levels == 0 || usize::from(levels) > MAX_LEVELS {
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
        let mut path = [(0u64, 0u64); MAX_LEVELS];
        let mut table = root;
        let mut rights = u64::MAX;
        let mut level = levels;
        let (base, size, leaf) = loop {
            let index = (addr >> (12 + 9 * u32::from(level - 1))) & 0x1ff;
            let entry_addr = table.wrapping_add(index * 8);
            let entry = entries.read(entry_addr, level).map_err(Stop::Access)?;
            if UPDATE {
                path[usize::from(levels - level)] = (entry_addr, entry);
            }
            reads += 1;
            rights &= entry ^ F::RIGHTS_INVERT;
            match format.decode(entry, level) {
                EntryKind::NotPresent => return Err(Stop::NotPresent { level, rights }),
                EntryKind::Reserved => return Err(Stop::Reserved { level }),
                EntryKind::Table(next) if level > 1 => {
                    table = next;
                    level -= 1;
                }
                EntryKind::Page(base) => match PageSize::from_level(level) {
                    Some(size) => break (base, size, entry),
                    None => return Err(Stop::Reserved { level }),
                },
                EntryKind::Table(_) => return Err(Stop::Reserved { level }),
            }
        };
        if !format.permits(rights, access) {
            return Err(Stop::Denied { level, rights });
        }
        if UPDATE && accessed | dirty != 0 {
            let used = usize::from(levels - level) + 1;
            for (i, &(entry_addr, entry)) in path[..used].iter().enumerate() {
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
            address: base | (addr & size.offset_mask()),
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

    #[inline]
    fn read(&mut self, addr: u64, _level: u8) -> Result<u64, MemoryError> {
        self.0.read_u64(addr)
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
