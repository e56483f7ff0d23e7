//! What the PVH and bzImage loaders share: the checks of the command line, the memory map and
//! the fixed boot-structure areas, with the one error type they report them by, and the usable
//! RAM both place images in.

use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmkit_memory::{MemoryKind, MemoryMapEntry};

use crate::pvh::MODULE_ALIGN;

/// Why the command line, the memory map or the boot structures do not fit the boot protocol's
/// structures or the guest's RAM (a [`PvhError`](crate::PvhError) or
/// [`BzImageError`](crate::BzImageError) carries it).
#[derive(Debug, displaydoc::Display, thiserror::Error, PartialEq, Eq)]
#[ignore_extra_doc_attributes]
pub enum BootDataError {
    /// the command line is {len} bytes; at most {max} fit
    CmdlineTooLong {
        /// Length of the command line in bytes.
        len: usize,
        /// The most bytes accepted, without the terminating NUL.
        max: usize,
    },
    /// the command line contains a NUL byte
    CmdlineHasNul,
    /// the memory map has {count} entries; between 1 and {max} are accepted
    BadMemoryMapSize {
        /// Number of entries given.
        count: usize,
        /// The most entries the boot structures hold.
        max: usize,
    },
    /// the boot structures ({size:#x} bytes at {addr:#x}) do not lie in guest RAM that the memory
    /// map reports usable
    BootDataOutOfMemory {
        /// First address of the boot structure area.
        addr: u64,
        /// Size of the area.
        size: u64,
    },
}

/// Checks that `cmdline` has at most `max` bytes and no NUL.
pub(crate) fn check_cmdline(cmdline: &str, max: usize) -> Result<(), BootDataError> {
    if cmdline.len() > max {
        return Err(BootDataError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    if cmdline.bytes().any(|byte| byte == 0) {
        return Err(BootDataError::CmdlineHasNul);
    }
    Ok(())
}

/// Checks that the memory map has between 1 and `max` entries, and returns its usable RAM once
/// each of `areas` (the loader's fixed boot structures, `(address, size)`) lies in it.
pub(crate) fn usable_ram<'m, M: GuestMemoryBackend>(
    memory_map: &[MemoryMapEntry],
    max: usize,
    guest_mem: &'m M,
    areas: &[(u64, u64)],
) -> Result<UsableRam<'m, M>, BootDataError> {
    if memory_map.is_empty() || memory_map.len() > max {
        return Err(BootDataError::BadMemoryMapSize {
            count: memory_map.len(),
            max,
        });
    }
    let ram = UsableRam::new(memory_map, guest_mem);
    for &(addr, size) in areas {
        if !ram.contains(addr, size) {
            return Err(BootDataError::BootDataOutOfMemory { addr, size });
        }
    }
    Ok(ram)
}

/// The usable RAM of a memory map that guest memory backs: sorted, merged `[start, end)` ranges.
pub(crate) struct UsableRam<'m, M> {
    pub(crate) ranges: Vec<(u64, u64)>,
    guest_mem: &'m M,
}

impl<'m, M: GuestMemoryBackend> UsableRam<'m, M> {
    pub(crate) fn new(map: &[MemoryMapEntry], guest_mem: &'m M) -> Self {
        let mut entries: Vec<(u64, u64)> = map
            .iter()
            .filter(|e| e.kind == MemoryKind::Ram && e.size > 0)
            .map(|e| (e.addr, e.addr.saturating_add(e.size)))
            .collect();
        entries.sort_unstable();
        let mut ranges: Vec<(u64, u64)> = Vec::with_capacity(entries.len());
        for (start, end) in entries {
            match ranges.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => ranges.push((start, end)),
            }
        }
        UsableRam { ranges, guest_mem }
    }

    /// Whether `[addr, addr + size)` is usable RAM backed by guest memory.
    pub(crate) fn contains(&self, addr: u64, size: u64) -> bool {
        let Some(end) = addr.checked_add(size) else {
            return false;
        };
        let Ok(len) = usize::try_from(size) else {
            return false;
        };
        self.ranges
            .iter()
            .any(|&(start, stop)| start <= addr && end <= stop)
            && self.guest_mem.check_range(GuestAddress(addr), len)
    }
}

/// The highest aligned start in `[start, end)` of `size` bytes that overlaps none of `taken`.
pub(crate) fn highest_fit(
    start: u64,
    mut end: u64,
    size: u64,
    taken: &[(u64, u64)],
) -> Option<u64> {
    loop {
        let candidate = end.checked_sub(size)? & !(MODULE_ALIGN - 1);
        if candidate < start {
            return None;
        }
        let candidate_end = candidate + size;
        match taken
            .iter()
            .find(|&&(used, used_end)| used < candidate_end && candidate < used_end)
        {
            // Every fit above the candidate was ruled out; the next one ends below `used`.
            Some(&(used, _)) => end = used,
            None => return Some(candidate),
        }
    }
}
