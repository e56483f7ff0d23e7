//! [`PhysMemory`] for vm-memory's guest memory (`GuestMemoryMmap` and any other
//! `GuestMemoryBackend`), with atomic 64-bit accesses and dirty-bitmap tracking of writes.

use core::sync::atomic::{AtomicU64, Ordering};

use vm_memory::bitmap::Bitmap;
use vm_memory::volatile_memory::VolatileMemory;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionCollection};

use crate::memory::{MemoryError, PhysMemory};

/// Any vm-memory `GuestMemoryBackend` seen as [`PhysMemory`].
///
/// `GuestMemoryMmap` implements [`PhysMemory`] itself; this wrapper serves other backends and
/// guards (`&*guest_memory_atomic.memory()`).
#[derive(Debug, Clone, Copy)]
pub struct GuestMemoryPhys<'a, M: ?Sized>(pub &'a M);

/// Runs `op` on the atomic word at `addr`; `op` returns its result and whether it wrote, in
/// which case the page is marked dirty in the region's bitmap.
fn with_word<M, T>(
    mem: &M,
    addr: u64,
    op: impl FnOnce(&AtomicU64) -> (T, bool),
) -> Result<T, MemoryError>
where
    M: GuestMemoryBackend + ?Sized,
{
    if !addr.is_multiple_of(8) {
        return Err(MemoryError::Misaligned(addr));
    }
    let slice = mem
        .get_slice(GuestAddress(addr), 8)
        .map_err(|_| MemoryError::OutOfRange(addr))?;
    // Fails only if the region's host mapping is not 8-byte aligned.
    let word = slice
        .get_atomic_ref::<AtomicU64>(0)
        .map_err(|_| MemoryError::Misaligned(addr))?;
    let (result, wrote) = op(word);
    if wrote {
        slice.bitmap().mark_dirty(0, 8);
    }
    Ok(result)
}

fn read<M: GuestMemoryBackend + ?Sized>(mem: &M, addr: u64) -> Result<u64, MemoryError> {
    with_word(mem, addr, |word| (word.load(Ordering::Acquire), false))
}

fn write<M: GuestMemoryBackend + ?Sized>(
    mem: &M,
    addr: u64,
    value: u64,
) -> Result<(), MemoryError> {
    with_word(mem, addr, |word| {
        (word.store(value, Ordering::Release), true)
    })
}

fn compare_exchange<M: GuestMemoryBackend + ?Sized>(
    mem: &M,
    addr: u64,
    current: u64,
    new: u64,
) -> Result<Result<u64, u64>, MemoryError> {
    with_word(mem, addr, |word| {
        let result = word.compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire);
        let wrote = result.is_ok();
        (result, wrote)
    })
}

impl<R: GuestMemoryRegion> PhysMemory for GuestRegionCollection<R> {
    fn read_u64(&self, addr: u64) -> Result<u64, MemoryError> {
        read(self, addr)
    }

    fn write_u64(&self, addr: u64, value: u64) -> Result<(), MemoryError> {
        write(self, addr, value)
    }

    fn compare_exchange_u64(
        &self,
        addr: u64,
        current: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, MemoryError> {
        compare_exchange(self, addr, current, new)
    }
}

impl<M: GuestMemoryBackend + ?Sized> PhysMemory for GuestMemoryPhys<'_, M> {
    fn read_u64(&self, addr: u64) -> Result<u64, MemoryError> {
        read(self.0, addr)
    }

    fn write_u64(&self, addr: u64, value: u64) -> Result<(), MemoryError> {
        write(self.0, addr, value)
    }

    fn compare_exchange_u64(
        &self,
        addr: u64,
        current: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, MemoryError> {
        compare_exchange(self.0, addr, current, new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        Access, PageSize, PageSizes, Privilege, PteFlags, TableBuilder, X86Format, X86Paging,
    };
    use vm_memory::bitmap::AtomicBitmap;
    use vm_memory::{Bytes, GuestMemoryMmap};

    #[test]
    fn words_bounds_and_alignment() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x2000),
            (GuestAddress(0x10000), 0x1000),
        ])
        .unwrap();
        mem.write_u64(0x1ff8, 0xdead_beef).unwrap();
        assert_eq!(mem.read_u64(0x1ff8), Ok(0xdead_beef));
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(0x1ff8)).unwrap(),
            0xdead_beef
        );
        assert_eq!(mem.compare_exchange_u64(0x1ff8, 1, 2), Ok(Err(0xdead_beef)));
        assert_eq!(
            mem.compare_exchange_u64(0x1ff8, 0xdead_beef, 2),
            Ok(Ok(0xdead_beef))
        );
        assert_eq!(mem.read_u64(0x2000), Err(MemoryError::OutOfRange(0x2000)));
        assert_eq!(mem.read_u64(0x10004), Err(MemoryError::Misaligned(0x10004)));
        assert_eq!(
            mem.write_u64(0x11000, 0),
            Err(MemoryError::OutOfRange(0x11000))
        );
        let wrapped = GuestMemoryPhys(&mem);
        assert_eq!(wrapped.read_u64(0x1ff8), Ok(2));
        wrapped.write_u64(0x10000, 7).unwrap();
        assert_eq!(wrapped.compare_exchange_u64(0x10000, 7, 8), Ok(Ok(7)));
        assert_eq!(mem.read_u64(0x10000), Ok(8));
    }

    #[test]
    fn walker_sets_flags_and_dirty_bitmap_in_guest_memory() {
        let mem =
            GuestMemoryMmap::<AtomicBitmap>::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        let mut frames = (0x10_0000..0x20_0000).step_by(0x1000);
        let mut builder = TableBuilder::new(
            X86Format::default(),
            &mem,
            || frames.next(),
            PageSizes::UP_TO_2M,
        )
        .unwrap();
        builder
            .identity_map(0, 0x40_0000, PteFlags::WRITABLE)
            .unwrap();
        let paging = X86Paging::new(builder.root());
        let t = paging
            .translate(&mem, 0x20_0010, Access::write(Privilege::Supervisor))
            .unwrap();
        assert_eq!(t.address, 0x20_0010);
        assert_eq!(t.page_size, PageSize::Size2M);
        let accessed = crate::x86::ACCESSED;
        assert_eq!(mem.read_u64(paging.root()).unwrap() & accessed, accessed);

        // Writes and successful exchanges mark the page dirty; reads and failed exchanges do not.
        let region = mem.find_region(GuestAddress(0)).unwrap();
        assert!(region.bitmap().dirty_at(0x10_0000));
        mem.read_u64(0x30_0000).unwrap();
        assert_eq!(mem.compare_exchange_u64(0x30_1000, 1, 2), Ok(Err(0)));
        assert!(!region.bitmap().dirty_at(0x30_0000));
        assert!(!region.bitmap().dirty_at(0x30_1000));
        assert_eq!(mem.compare_exchange_u64(0x30_2000, 0, 2), Ok(Ok(0)));
        assert!(region.bitmap().dirty_at(0x30_2000));
    }
}
