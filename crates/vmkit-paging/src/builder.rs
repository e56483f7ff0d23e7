//! Building page tables: mappings of input ranges (GVA or GPA) to output ranges (GPA or HPA)
//! with the largest page size that fits among those the caller allows.

use crate::format::{ADDRESS_BITS, EntryKind, PagingFormat};
use crate::memory::{MemoryError, PhysMemory};
use crate::size::{PageSize, PageSizes};

/// A source of zeroable 4 KiB frames for new paging structures.
pub trait FrameAllocator {
    /// The physical address of a free, 4 KiB aligned frame, or `None` when there is none left.
    fn allocate_frame(&mut self) -> Option<u64>;
}

impl<F: FnMut() -> Option<u64>> FrameAllocator for F {
    fn allocate_frame(&mut self) -> Option<u64> {
        self()
    }
}

/// Hands out the frames of a physical range in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BumpAllocator {
    next: u64,
    end: u64,
}

impl BumpAllocator {
    /// Allocates frames from `start` (rounded up to 4 KiB) up to `end` (exclusive).
    pub const fn new(start: u64, end: u64) -> BumpAllocator {
        let next = match start.checked_add(0xfff) {
            Some(up) => up & !0xfff,
            None => end,
        };
        BumpAllocator { next, end }
    }

    /// The next frame it would hand out (the end of the used part).
    pub const fn next_frame(&self) -> u64 {
        self.next
    }
}

impl FrameAllocator for BumpAllocator {
    fn allocate_frame(&mut self) -> Option<u64> {
        let frame = self.next;
        let after = frame
            .checked_add(0x1000)
            .filter(|after| *after <= self.end)?;
        self.next = after;
        Some(frame)
    }
}

/// Why building a mapping failed. Mappings completed before the error stay in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, displaydoc::Display, thiserror::Error)]
#[ignore_extra_doc_attributes]
pub enum BuildError {
    /// address or length {0:#x} is not 4 KiB aligned
    Misaligned(u64),
    /// input address {0:#x} cannot be translated by these tables (non-canonical, too wide, or the
    /// range wraps around)
    InputOutOfRange(u64),
    /// output address {0:#x} is above MAXPHYADDR or the range wraps around
    OutputOutOfRange(u64),
    /// no allowed page size can map input address {0:#x}
    NoPageSize(u64),
    /// input address {0:#x} is already mapped
    AlreadyMapped(u64),
    /// the flags are not valid for this format and configuration
    InvalidFlags,
    /// the frame allocator has no frame left
    OutOfFrames,
    /// the frame allocator returned {0:#x}, which is not an aligned frame below MAXPHYADDR
    BadFrame(u64),
    /// the existing entry at {0:#x} is malformed
    Corrupt(u64),
    /// the tables lie outside memory
    Memory(#[from] MemoryError),
}

/// Builds page tables of format `F` in memory `M`, allocating table frames from `A`.
///
/// [`map`](Self::map) maps each part of a range with the largest page size that the alignment
/// of both addresses and the length left allow, among the sizes both the caller and the format
/// allow. Existing tables are extended; an input address that is already mapped is an error.
#[derive(Debug)]
pub struct TableBuilder<'m, F, M: ?Sized, A> {
    format: F,
    mem: &'m M,
    alloc: A,
    sizes: PageSizes,
    root: u64,
    tables: usize,
}

impl<'m, F, M, A> TableBuilder<'m, F, M, A>
where
    F: PagingFormat,
    M: PhysMemory + ?Sized,
    A: FrameAllocator,
{
    /// A builder of new, empty tables whose root it allocates now.
    pub fn new(format: F, mem: &'m M, alloc: A, sizes: PageSizes) -> Result<Self, BuildError> {
        let mut builder = TableBuilder {
            format,
            mem,
            alloc,
            sizes,
            root: 0,
            tables: 0,
        };
        builder.root = builder.new_table()?;
        Ok(builder)
    }

    /// A builder that extends the existing tables rooted at `root`.
    pub fn with_root(format: F, mem: &'m M, alloc: A, sizes: PageSizes, root: u64) -> Self {
        TableBuilder {
            format,
            mem,
            alloc,
            sizes,
            root: root & ADDRESS_BITS,
            tables: 0,
        }
    }

    /// The physical address of the root table: CR3, nCR3 or the EPTP's address field.
    pub fn root(&self) -> u64 {
        self.root
    }

    /// The format the tables are built in.
    pub fn format(&self) -> &F {
        &self.format
    }

    /// How many table frames this builder allocated, the root included.
    pub fn tables_allocated(&self) -> usize {
        self.tables
    }

    /// The frame allocator, for building more tables from the same frames.
    pub fn into_allocator(self) -> A {
        self.alloc
    }

    /// Maps `start..start + len` to itself.
    pub fn identity_map(
        &mut self,
        start: u64,
        len: u64,
        flags: F::Flags,
    ) -> Result<(), BuildError> {
        self.map(start, start, len, flags)
    }

    /// Maps input range `virt..virt + len` to output range `phys..phys + len` with `flags`.
    ///
    /// Both addresses and `len` must be 4 KiB aligned. The whole range is checked (addresses,
    /// a page size for every part, the flags) before anything is written.
    pub fn map(
        &mut self,
        virt: u64,
        phys: u64,
        len: u64,
        flags: F::Flags,
    ) -> Result<(), BuildError> {
        if len == 0 {
            return Ok(());
        }
        for value in [virt, phys, len] {
            if value & 0xfff != 0 {
                return Err(BuildError::Misaligned(value));
            }
        }
        let last_virt = virt
            .checked_add(len - 1)
            .ok_or(BuildError::InputOutOfRange(virt))?;
        if !self.format.accepts(virt)
            || !self.format.accepts(last_virt)
            || (virt ^ last_virt) >> 63 != 0
        {
            return Err(BuildError::InputOutOfRange(virt));
        }
        let last_phys = phys
            .checked_add(len - 1)
            .ok_or(BuildError::OutputOutOfRange(phys))?;
        if last_phys >> self.format.max_phys_bits() != 0 {
            return Err(BuildError::OutputOutOfRange(last_phys));
        }
        let sizes = self.sizes.intersection(self.format.page_sizes());
        for size in sizes.iter() {
            if self.format.page_entry(0, size, flags).is_none() {
                return Err(BuildError::InvalidFlags);
            }
        }
        let mut done = 0;
        while done < len {
            let size = sizes
                .largest_fit(virt + done, phys + done, len - done)
                .ok_or(BuildError::NoPageSize(virt + done))?;
            done += size.bytes();
        }
        let mut done = 0;
        while done < len {
            done += self
                .map_one(virt + done, phys + done, len - done, sizes, flags)?
                .bytes();
        }
        Ok(())
    }

    /// Maps one page at `virt`, as large as allowed and free, and returns its size.
    fn map_one(
        &mut self,
        virt: u64,
        phys: u64,
        remaining: u64,
        sizes: PageSizes,
        flags: F::Flags,
    ) -> Result<PageSize, BuildError> {
        let mut table = self.root;
        let mut level = self.format.levels();
        loop {
            let index = (virt >> (12 + 9 * u32::from(level - 1))) & 0x1ff;
            let entry_addr = table + index * 8;
            let entry = self.mem.read_u64(entry_addr)?;
            match self.format.decode(entry, level) {
                EntryKind::NotPresent => {
                    let fit = PageSize::from_level(level).filter(|size| {
                        sizes.contains(*size)
                            && (virt | phys) & size.offset_mask() == 0
                            && remaining >= size.bytes()
                    });
                    if let Some(size) = fit {
                        let page = self
                            .format
                            .page_entry(phys, size, flags)
                            .ok_or(BuildError::InvalidFlags)?;
                        self.mem.write_u64(entry_addr, page)?;
                        return Ok(size);
                    }
                    if level == 1 {
                        return Err(BuildError::NoPageSize(virt));
                    }
                    let next = self.new_table()?;
                    self.mem
                        .write_u64(entry_addr, self.format.table_entry(next))?;
                    table = next;
                }
                EntryKind::Table(next) if level > 1 => table = next,
                EntryKind::Page(_) => return Err(BuildError::AlreadyMapped(virt)),
                EntryKind::Table(_) | EntryKind::Reserved => {
                    return Err(BuildError::Corrupt(entry_addr));
                }
            }
            level -= 1;
        }
    }

    /// Allocates and zeroes a table frame.
    fn new_table(&mut self) -> Result<u64, BuildError> {
        let frame = self.alloc.allocate_frame().ok_or(BuildError::OutOfFrames)?;
        if frame & !ADDRESS_BITS != 0 || frame >> self.format.max_phys_bits() != 0 {
            return Err(BuildError::BadFrame(frame));
        }
        for offset in (0..4096).step_by(8) {
            self.mem.write_u64(frame + offset, 0)?;
        }
        self.tables += 1;
        Ok(frame)
    }
}

#[cfg(test)]
mod tests;
