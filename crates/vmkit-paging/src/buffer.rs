//! [`BufferMemory`]: physical memory in a plain heap buffer (feature `alloc`).

use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::memory::{MemoryError, PhysMemory, TABLE_ENTRIES};

const FRAME_SIZE: u64 = 4096;

/// Physical memory in a plain heap buffer starting at a chosen physical address.
///
/// Useful to build page tables before copying them into guest memory, for tests, and on hosts
/// without vm-memory. Accesses are atomic (each word is an [`AtomicU64`]), so one buffer can be
/// shared by threads.
pub struct BufferMemory {
    base: u64,
    /// The frames from `base` up, each one paging structure's worth of words.
    frames: Vec<Frame>,
}

/// One 4 KiB frame, aligned on the host as on the guest: a paging structure then occupies one
/// host page and its entries share cache lines as the guest's do.
#[repr(C, align(4096))]
struct Frame([AtomicU64; TABLE_ENTRIES]);

impl BufferMemory {
    /// A zeroed buffer covering physical addresses `base..base + size`, `size` rounded up to
    /// 4 KiB.
    ///
    /// Fails if `base` is not 4 KiB aligned or the range does not fit in the address space.
    pub fn new(base: u64, size: u64) -> Result<BufferMemory, MemoryError> {
        if !base.is_multiple_of(FRAME_SIZE) {
            return Err(MemoryError::Misaligned(base));
        }
        let frames = size.div_ceil(FRAME_SIZE);
        let end_ok = frames
            .checked_mul(FRAME_SIZE)
            .and_then(|bytes| base.checked_add(bytes))
            .is_some();
        // Every word must be indexable: `word` indexes them as one slice.
        let words = usize::try_from(frames * (FRAME_SIZE / 8))
            .ok()
            .filter(|_| end_ok)
            .ok_or(MemoryError::OutOfRange(base))?;
        let count = words / TABLE_ENTRIES;
        let mut frames = Vec::with_capacity(count);
        frames.resize_with(count, || {
            Frame([const { AtomicU64::new(0) }; TABLE_ENTRIES])
        });
        Ok(BufferMemory { base, frames })
    }

    /// A buffer from physical address 0 holding `words` (whole frames: a partial last frame is
    /// dropped), built frame by frame without a per-word bounds check.
    #[cfg(any(test, feature = "reference"))]
    pub(crate) fn from_words(words: &[u64]) -> BufferMemory {
        let mut buffer = BufferMemory {
            base: 0,
            frames: Vec::new(),
        };
        buffer.load_words(words);
        buffer
    }

    /// Makes this buffer hold `words` from physical address 0 (whole frames: a partial last
    /// frame is dropped), reusing its frames: refilling a buffer per input allocates nothing
    /// once it has grown.
    #[cfg(any(test, feature = "reference"))]
    pub(crate) fn load_words(&mut self, words: &[u64]) {
        let chunks = words.chunks_exact(TABLE_ENTRIES);
        self.base = 0;
        self.frames.truncate(chunks.len());
        let reused = self.frames.len();
        for (frame, chunk) in self.frames.iter_mut().zip(chunks.clone()) {
            for (word, value) in frame.0.iter_mut().zip(chunk) {
                *word.get_mut() = *value;
            }
        }
        self.frames.extend(
            chunks
                .skip(reused)
                .map(|chunk| Frame(core::array::from_fn(|i| AtomicU64::new(chunk[i])))),
        );
    }

    /// Sets every word to zero, keeping the frames.
    #[cfg(any(test, feature = "reference"))]
    pub(crate) fn zero(&mut self) {
        for frame in &mut self.frames {
            for word in &mut frame.0 {
                *word.get_mut() = 0;
            }
        }
    }

    /// Every word of the buffer, in address order.
    #[cfg(any(test, feature = "reference"))]
    pub(crate) fn words(&self) -> Vec<u64> {
        self.frames
            .iter()
            .flat_map(|frame| frame.0.iter().map(|word| word.load(Ordering::Relaxed)))
            .collect()
    }

    /// Whether the buffer holds exactly `words`, without collecting its own.
    #[cfg(any(test, feature = "reference"))]
    pub(crate) fn holds_words(&self, words: &[u64]) -> bool {
        self.frames.len() * TABLE_ENTRIES == words.len()
            && self
                .frames
                .iter()
                .zip(words.chunks_exact(TABLE_ENTRIES))
                .all(|(frame, chunk)| {
                    frame
                        .0
                        .iter()
                        .zip(chunk)
                        .all(|(word, value)| word.load(Ordering::Relaxed) == *value)
                })
    }

    /// The physical address of the first byte.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// The size in bytes.
    pub fn size(&self) -> u64 {
        self.frames.len() as u64 * FRAME_SIZE
    }

    /// Whether `addr..addr + len` lies inside the buffer.
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        addr >= self.base
            && addr
                .checked_add(len)
                .is_some_and(|end| end <= self.base + self.size())
    }

    /// The host address of the byte at [`base`](Self::base): the buffer is contiguous, so the
    /// byte at physical address `p` is at `as_ptr() + (p - base)`.
    ///
    /// Code that dereferences it must not race with the buffer's own accesses.
    pub fn as_ptr(&self) -> *const u8 {
        self.frames.as_ptr().cast()
    }

    /// The word at `addr`, with one bounds check on the fast path: the base is 4 KiB aligned,
    /// so the offset is aligned exactly when the address is, and rotating it right by 3 turns
    /// a misaligned offset into an index beyond any buffer (its low bits land in the top bits).
    #[inline(always)]
    fn word(&self, addr: u64) -> Result<&AtomicU64, MemoryError> {
        let index = addr.wrapping_sub(self.base).rotate_right(3);
        // On 32-bit hosts an index beyond `usize` saturates, which `get` then refuses.
        let index = usize::try_from(index).unwrap_or(usize::MAX);
        match self.frames.get(index / TABLE_ENTRIES) {
            Some(frame) => Ok(&frame.0[index % TABLE_ENTRIES]),
            None => Err(self.word_error(addr)),
        }
    }

    #[cold]
    fn word_error(&self, addr: u64) -> MemoryError {
        if addr.is_multiple_of(8) {
            MemoryError::OutOfRange(addr)
        } else {
            MemoryError::Misaligned(addr)
        }
    }

    /// Copies `buf.len()` bytes starting at physical address `addr` into `buf`.
    pub fn read_bytes(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.check_range(addr, buf.len())?;
        for (i, byte) in buf.iter_mut().enumerate() {
            let at = addr + i as u64;
            let word = self.word(at & !7)?.load(Ordering::Acquire);
            *byte = (word >> ((at % 8) * 8)) as u8;
        }
        Ok(())
    }

    /// Copies `data` to physical address `addr`. Each byte is stored atomically; the whole copy
    /// is not.
    pub fn write_bytes(&self, addr: u64, data: &[u8]) -> Result<(), MemoryError> {
        self.check_range(addr, data.len())?;
        for (i, byte) in data.iter().enumerate() {
            let at = addr + i as u64;
            let shift = (at % 8) * 8;
            let word = self.word(at & !7)?;
            word.fetch_and(!(0xff << shift), Ordering::AcqRel);
            word.fetch_or(u64::from(*byte) << shift, Ordering::AcqRel);
        }
        Ok(())
    }

    fn check_range(&self, addr: u64, len: usize) -> Result<(), MemoryError> {
        if self.contains(addr, len as u64) {
            Ok(())
        } else {
            Err(MemoryError::OutOfRange(addr))
        }
    }
}

impl PhysMemory for BufferMemory {
    #[inline(always)]
    fn read_u64(&self, addr: u64) -> Result<u64, MemoryError> {
        // Relaxed, as the processor's own page-walk loads: each entry is read whole, and the
        // walk orders its reads by their address dependencies. (An acquire load would also stop
        // the compiler from keeping the walk's own state in registers.)
        Ok(self.word(addr)?.load(Ordering::Relaxed))
    }

    /// One bounds check for the whole table, and the entry's host address one addition from
    /// the frame: the base is aligned (masking it only tells the compiler so), so for a frame
    /// the walker took from an entry the alignment test folds away and the frame's index
    /// times 4 KiB is the offset itself.
    #[inline(always)]
    fn table(&self, frame: u64) -> Option<&[AtomicU64; 512]> {
        let offset = frame.wrapping_sub(self.base & !(FRAME_SIZE - 1));
        if !offset.is_multiple_of(FRAME_SIZE) {
            return None;
        }
        // On 32-bit hosts an index beyond `usize` saturates, which `get` then refuses.
        self.frames
            .get(usize::try_from(offset / FRAME_SIZE).unwrap_or(usize::MAX))
            .map(|frame| &frame.0)
    }

    const WHOLE_TABLES: bool = true;

    #[inline]
    fn write_u64(&self, addr: u64, value: u64) -> Result<(), MemoryError> {
        self.word(addr)?.store(value, Ordering::Release);
        Ok(())
    }

    #[inline]
    fn compare_exchange_u64(
        &self,
        addr: u64,
        current: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, MemoryError> {
        Ok(self
            .word(addr)?
            .compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire))
    }
}

impl Clone for BufferMemory {
    fn clone(&self) -> Self {
        BufferMemory {
            base: self.base,
            frames: self
                .frames
                .iter()
                .map(|frame| {
                    Frame(core::array::from_fn(|i| {
                        AtomicU64::new(frame.0[i].load(Ordering::Acquire))
                    }))
                })
                .collect(),
        }
    }
}

impl fmt::Debug for BufferMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferMemory")
            .field("base", &format_args!("{:#x}", self.base))
            .field("size", &format_args!("{:#x}", self.size()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_bounds() {
        let mem = BufferMemory::new(0x10_0000, 0x1800).unwrap();
        assert_eq!(mem.base(), 0x10_0000);
        assert_eq!(mem.size(), 0x2000);
        mem.write_u64(0x10_1ff8, 0x1122_3344_5566_7788).unwrap();
        assert_eq!(mem.read_u64(0x10_1ff8), Ok(0x1122_3344_5566_7788));
        assert_eq!(
            mem.read_u64(0x10_2000),
            Err(MemoryError::OutOfRange(0x10_2000))
        );
        assert_eq!(
            mem.read_u64(0x0f_fff8),
            Err(MemoryError::OutOfRange(0x0f_fff8))
        );
        assert_eq!(
            mem.read_u64(0x10_0004),
            Err(MemoryError::Misaligned(0x10_0004))
        );
        assert_eq!(mem.write_u64(!7, 1), Err(MemoryError::OutOfRange(!7)));
        assert_eq!(MemoryError::Misaligned(3).address(), 3);
    }

    #[test]
    fn table_is_the_frame_words_or_none() {
        let mem = BufferMemory::new(0x10_0000, 0x2000).unwrap();
        mem.write_u64(0x10_1ff8, 7).unwrap();
        let table = mem.table(0x10_1000).unwrap();
        assert_eq!(table[511].load(Ordering::Relaxed), 7);
        assert!(core::ptr::eq(mem.word(0x10_1000).unwrap(), &table[0]));
        assert!(mem.table(0x10_0000).is_some());
        // Outside, below, misaligned, wrapping.
        for frame in [0x10_2000, 0x0f_f000, 0x10_0008, 0x10_0800, 0, !0xfff] {
            assert!(mem.table(frame).is_none(), "{frame:#x}");
        }
        let by_ref = &mem;
        assert!(PhysMemory::table(&by_ref, 0x10_1000).is_some());
        assert!(BufferMemory::new(0, 0).unwrap().table(0).is_none());
    }

    #[test]
    fn compare_exchange_reports_the_value_found() {
        let mem = BufferMemory::new(0, 0x1000).unwrap();
        mem.write_u64(8, 5).unwrap();
        assert_eq!(mem.compare_exchange_u64(8, 5, 7), Ok(Ok(5)));
        assert_eq!(mem.compare_exchange_u64(8, 5, 9), Ok(Err(7)));
        assert_eq!(mem.read_u64(8), Ok(7));
        assert_eq!(
            mem.compare_exchange_u64(0x1000, 0, 1),
            Err(MemoryError::OutOfRange(0x1000))
        );
        // Through a reference.
        let by_ref = &mem;
        assert_eq!(PhysMemory::read_u64(&by_ref, 8), Ok(7));
        by_ref.write_u64(16, 1).unwrap();
        assert_eq!(
            PhysMemory::compare_exchange_u64(&by_ref, 16, 1, 2),
            Ok(Ok(1))
        );
    }

    #[test]
    fn bytes_round_trip_across_words_and_frames() {
        let mem = BufferMemory::new(0x2000, 0x2000).unwrap();
        let data: alloc::vec::Vec<u8> = (0..40).collect();
        mem.write_bytes(0x2ffb, &data).unwrap();
        let mut back = [0u8; 40];
        mem.read_bytes(0x2ffb, &mut back).unwrap();
        assert_eq!(&back[..], &data[..]);
        assert_eq!(mem.read_u64(0x3000).unwrap() & 0xff, 5);
        assert_eq!(
            mem.write_bytes(0x3fff, &[1, 2]),
            Err(MemoryError::OutOfRange(0x3fff))
        );
        assert_eq!(
            mem.read_bytes(0x1fff, &mut back),
            Err(MemoryError::OutOfRange(0x1fff))
        );
        assert!(mem.contains(0x2000, 0x2000));
        assert!(!mem.contains(0x2000, 0x2001));
        assert!(!mem.contains(u64::MAX, 2));
    }

    #[test]
    fn construction_errors_clone_and_pointer() {
        assert_eq!(
            BufferMemory::new(0x1001, 1).err(),
            Some(MemoryError::Misaligned(0x1001))
        );
        assert_eq!(
            BufferMemory::new(!0xfff, 0x2000).err(),
            Some(MemoryError::OutOfRange(!0xfff))
        );
        let mem = BufferMemory::new(0, 0x1000).unwrap();
        mem.write_u64(0x10, 42).unwrap();
        let copy = mem.clone();
        mem.write_u64(0x10, 1).unwrap();
        assert_eq!(copy.read_u64(0x10), Ok(42));
        assert_eq!(mem.as_ptr() as usize % 8, 0);
        assert!(alloc::format!("{mem:?}").contains("0x1000"));
    }
}
