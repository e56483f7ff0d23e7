//! How walkers and builders reach physical memory: the [`PhysMemory`] trait and a plain buffer.

use core::sync::atomic::AtomicU64;

/// An access to physical memory failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, displaydoc::Display, thiserror::Error)]
#[ignore_extra_doc_attributes]
pub enum MemoryError {
    /// physical address {0:#x} is outside memory
    OutOfRange(u64),
    /// physical address {0:#x} is not 8-byte aligned
    Misaligned(u64),
}

impl MemoryError {
    /// The address of the failed access.
    pub const fn address(self) -> u64 {
        match self {
            MemoryError::OutOfRange(addr) | MemoryError::Misaligned(addr) => addr,
        }
    }
}

/// Physical memory holding page tables, accessed as aligned 64-bit words.
///
/// Walkers read entries with [`read_u64`](Self::read_u64) and set accessed and dirty flags with
/// [`compare_exchange_u64`](Self::compare_exchange_u64), which must be atomic with respect to
/// other users of the memory (vCPUs running the guest), as the processor's locked update is. The
/// builder writes with [`write_u64`](Self::write_u64). Every address is 8-byte aligned: the walker
/// and the builder only touch paging-structure entries. An address outside the memory is an
/// error, never a panic.
pub trait PhysMemory {
    /// Reads the 64-bit word at `addr`.
    fn read_u64(&self, addr: u64) -> Result<u64, MemoryError>;

    /// Writes `value` to the 64-bit word at `addr`.
    fn write_u64(&self, addr: u64, value: u64) -> Result<(), MemoryError>;

    /// Atomically replaces the word at `addr` with `new` if it holds `current`.
    ///
    /// Returns `Ok(Ok(current))` when it did, `Ok(Err(actual))` with the value found when it did
    /// not.
    fn compare_exchange_u64(
        &self,
        addr: u64,
        current: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, MemoryError>;

    /// The 512 entries of the 4 KiB paging structure at `frame`, when the memory holds them
    /// as atomic words: a walker then checks the frame once instead of every entry, and loads
    /// the entry it needs with relaxed ordering, as [`read_u64`](Self::read_u64) would.
    ///
    /// `None` (the default) sends the walker to `read_u64` for each entry. The words returned
    /// must be the ones `read_u64` reads at `frame..frame + 4096`; a `frame` that is not 4 KiB
    /// aligned or not wholly inside the memory must give `None`, and `read_u64` then reports
    /// the error.
    #[inline(always)]
    fn table(&self, frame: u64) -> Option<&[AtomicU64; 512]> {
        let _ = frame;
        None
    }

    /// Whether [`table`](Self::table) gives every 4 KiB-aligned frame wholly inside the
    /// memory, so that `None` means the frame is outside it: a walker then reads no entry of
    /// that table one by one, and only [`read_u64`](Self::read_u64) of it reports the error.
    const WHOLE_TABLES: bool = false;
}

impl<T: PhysMemory + ?Sized> PhysMemory for &T {
    fn read_u64(&self, addr: u64) -> Result<u64, MemoryError> {
        (**self).read_u64(addr)
    }

    fn write_u64(&self, addr: u64, value: u64) -> Result<(), MemoryError> {
        (**self).write_u64(addr, value)
    }

    fn compare_exchange_u64(
        &self,
        addr: u64,
        current: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, MemoryError> {
        (**self).compare_exchange_u64(addr, current, new)
    }

    #[inline(always)]
    fn table(&self, frame: u64) -> Option<&[AtomicU64; 512]> {
        (**self).table(frame)
    }

    const WHOLE_TABLES: bool = T::WHOLE_TABLES;
}

/// The entries of one paging structure.
pub(crate) const TABLE_ENTRIES: usize = 512;
