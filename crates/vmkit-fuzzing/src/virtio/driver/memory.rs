//! Guest memory: the driver's copy of it, its writes, and the check that the device wrote
//! only where it may.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;

/// Guest memory and the driver's copy of it, kept from one input to the next (mapping and
/// allocating them anew for every input would cost more than the input).
pub(crate) struct Guest {
    pub(super) regions: Vec<(u64, usize)>,
    pub(super) memory: GuestMemoryMmap,
    /// Guest memory as the driver knows it, per region.
    pub(super) shadow: Vec<Vec<u8>>,
    /// Per region, the offsets written since the memory was last zeroed.
    pub(super) dirty: Vec<(usize, usize)>,
    /// Scratch buffers of the simulator, kept with the memory.
    pub(super) scratch: Scratch,
}

/// Buffers the simulator fills and empties within one call, kept from one input to the next.
#[derive(Default)]
pub(super) struct Scratch {
    /// Changed runs of guest memory.
    pub(super) runs: Vec<(usize, usize)>,
    /// Guest memory of one range as read at the last look (grown, never shrunk).
    pub(super) snapshot: Vec<u8>,
    /// Ranges to look at.
    pub(super) ranges: Vec<(u64, u64)>,
    /// Segments of a request.
    pub(super) segments: Vec<Segment>,
}

impl Guest {
    pub(super) fn new(regions: Vec<(u64, usize)>) -> Self {
        let ranges: Vec<_> = regions
            .iter()
            .map(|&(start, len)| (GuestAddress(start), len))
            .collect();
        let memory = match GuestMemoryMmap::from_ranges(&ranges) {
            Ok(memory) => memory,
            Err(e) => panic!("fixture: guest memory {regions:x?}: {e}"),
        };
        Guest {
            shadow: regions.iter().map(|&(_, len)| vec![0u8; len]).collect(),
            dirty: vec![(usize::MAX, 0); regions.len()],
            regions,
            memory,
            scratch: Scratch::default(),
        }
    }

    /// `kept` (memory of an earlier input) cleaned when its layout is `regions`, else new
    /// memory of that layout.
    pub(crate) fn reuse(kept: Option<Guest>, regions: Vec<(u64, usize)>) -> Self {
        match kept {
            Some(mut guest) if guest.regions == regions => {
                guest.clean();
                guest
            }
            _ => Guest::new(regions),
        }
    }

    /// Notes that region `i` changed at `from..to`.
    pub(super) fn mark(&mut self, i: usize, from: usize, to: usize) {
        let dirty = &mut self.dirty[i];
        *dirty = (dirty.0.min(from), dirty.1.max(to));
    }

    /// Zeroes what changed: memory and copy as a fresh mapping has them.
    pub(super) fn clean(&mut self) {
        for (i, dirty) in self.dirty.iter_mut().enumerate() {
            let (from, to) = std::mem::replace(dirty, (usize::MAX, 0));
            if from < to {
                self.shadow[i][from..to].fill(0);
                let at = GuestAddress(self.regions[i].0 + from as u64);
                let _ = self.memory.write_slice(&self.shadow[i][from..to], at);
            }
        }
    }
}

impl Sim<'_> {
    // ---- guest memory ----

    /// Writes `data` at `addr` as the driver: to memory and to the driver's copy, where regions
    /// hold it. Unless the structure is the driver's own new one (`own`), a write over a
    /// structure in flight taints the run.
    pub(super) fn write_mem(&mut self, step: usize, addr: u64, data: &[u8], own: bool) {
        if data.is_empty() {
            return;
        }
        // What the device wrote there first is judged before the driver overwrites it.
        self.look(step, addr, data.len() as u64);
        if !own && self.touches_structures(addr, data.len() as u64, false) {
            self.tainted = true;
        }
        let end = addr.saturating_add(data.len() as u64);
        for (i, &(start, len)) in self.regions.iter().enumerate() {
            let stop = start + len as u64;
            let (from, to) = (addr.max(start), end.min(stop));
            if from >= to {
                continue;
            }
            let part = &data[(from - addr) as usize..(to - addr) as usize];
            let _ = self.memory.write_slice(part, GuestAddress(from));
            let at = (from - start) as usize;
            self.guest.shadow[i][at..at + part.len()].copy_from_slice(part);
            self.guest.mark(i, at, at + part.len());
        }
    }

    pub(super) fn read_u16(&self, addr: u64) -> Option<u16> {
        self.memory.read_obj(GuestAddress(addr)).ok()
    }

    pub(super) fn read_u32(&self, addr: u64) -> Option<u32> {
        self.memory.read_obj(GuestAddress(addr)).ok()
    }

    /// Whether `addr..addr + len` touches a live queue's rings (its used ring too, unless
    /// `device`: the device writes that one) or a table in flight.
    pub(super) fn touches_structures(&self, addr: u64, len: u64, device: bool) -> bool {
        let rings = if device { 2 } else { 3 };
        self.live.iter().flatten().any(|q| {
            q.rings()[..rings].iter().any(|&r| overlaps(r, (addr, len)))
                || q.outstanding
                    .iter()
                    .any(|o| o.tables.iter().any(|&t| overlaps(t, (addr, len))))
        })
    }

    /// Whether one buffer the device may write now holds all of `run` (the common case, checked
    /// before byte by byte).
    pub(super) fn may_write_all(&self, (addr, len): (u64, u64)) -> bool {
        let holds = |(start, n): (u64, u64)| {
            addr >= start && (addr - start).checked_add(len).is_some_and(|end| end <= n)
        };
        self.live.iter().flatten().any(|q| {
            holds(q.rings()[2])
                || q.outstanding.iter().any(|o| {
                    o.writable
                        .iter()
                        .any(|&(start, n)| holds((start, u64::from(n))))
                })
        })
    }

    /// Whether the device may write `addr` now.
    pub(super) fn may_write(&self, addr: u64) -> bool {
        self.live.iter().flatten().any(|q| {
            contains(q.rings()[2], addr)
                || q.outstanding.iter().any(|o| {
                    o.writable
                        .iter()
                        .any(|&(start, len)| contains((start, u64::from(len)), addr))
                })
        })
    }

    /// Looks at guest memory at `addr..addr + len` (where regions hold it): every byte the
    /// device changed since the driver last looked must lie in a buffer it may write now, and
    /// a change over the driver's structures taints the run.
    ///
    /// The driver looks at a range whenever what the device may write there is about to
    /// change (a chain published or retired, a queue going live, a reset) and before it writes
    /// the range itself, so between two looks at a byte the device's right to write it stayed
    /// the same: a change found is judged by the rights it was made under. Bytes the device may
    /// write are looked at after every call that may have written them; the rest of memory at
    /// the end of the input ([`Self::check_all`]), where a stray write is found at the latest.
    pub(super) fn look(&mut self, step: usize, addr: u64, len: u64) {
        let end = addr.saturating_add(len);
        for i in 0..self.regions.len() {
            let (start, size) = self.regions[i];
            let (from, to) = (addr.max(start), end.min(start + size as u64));
            if from < to {
                self.check_range(step, i, (from - start) as usize, (to - start) as usize);
            }
        }
    }

    /// Looks at every byte of guest memory.
    pub(super) fn check_all(&mut self, step: usize) {
        for i in 0..self.regions.len() {
            self.check_range(step, i, 0, self.regions[i].1);
        }
    }

    /// Looks at bytes `from..to` of region `i` (see [`Self::look`]).
    pub(super) fn check_range(&mut self, step: usize, i: usize, from: usize, to: usize) {
        let start = self.regions[i].0;
        // The changed runs (offset, length): guest memory copied out through vm-memory (a
        // device may share it: no reference to it is made), then each block compared once,
        // and halves of the blocks that differ compared whole until the 64-byte pieces that
        // differ.
        let mut runs = std::mem::take(&mut self.guest.scratch.runs);
        runs.clear();
        let mut snapshot = std::mem::take(&mut self.guest.scratch.snapshot);
        // Grown to the largest range looked at, never shrunk (growing zeroes the new bytes).
        if snapshot.len() < to - from {
            snapshot.resize(to - from, 0);
        }
        let memory = &mut snapshot[..to - from];
        if self
            .memory
            .read_slice(memory, GuestAddress(start + from as u64))
            .is_ok()
        {
            diff_blocks(memory, &self.guest.shadow[i][from..to], &mut runs);
        }
        for &(offset, n) in &runs {
            let at = start + (from + offset) as u64;
            if self.tainted || self.may_write_all((at, n as u64)) {
                if self.touches_structures(at, n as u64, true) {
                    self.tainted = true;
                }
                continue;
            }
            for addr in at..at + n as u64 {
                if !self.tainted && !self.may_write(addr) {
                    panic!(
                        "step {step}: the device wrote guest memory at {addr:#x} (by this \
                         step at the latest), outside every device-writable buffer in flight \
                         and the used rings"
                    );
                }
            }
            if self.touches_structures(at, n as u64, true) {
                self.tainted = true;
            }
        }
        for &(offset, n) in &runs {
            self.guest.shadow[i][from + offset..from + offset + n]
                .copy_from_slice(&memory[offset..offset + n]);
            self.guest.mark(i, from + offset, from + offset + n);
        }
        self.guest.scratch.snapshot = snapshot;
        self.guest.scratch.runs = runs;
    }

    /// Looks at what the device may write now: the used rings of live queues and the writable
    /// buffers of the chains in flight.
    pub(super) fn look_writable(&mut self, step: usize) {
        let mut ranges = std::mem::take(&mut self.guest.scratch.ranges);
        ranges.clear();
        for q in self.live.iter().flatten() {
            ranges.push(q.rings()[2]);
            for o in &q.outstanding {
                ranges.extend(o.writable.iter().map(|&(a, n)| (a, u64::from(n))));
            }
        }
        for &(addr, len) in &ranges {
            self.look(step, addr, len);
        }
        self.guest.scratch.ranges = ranges;
    }

    /// Checks what the device did since the last synchronisation (guest memory, then the used
    /// rings), if it was called since; returns the used entries found.
    pub(super) fn sync(&mut self, step: usize) -> u64 {
        if !std::mem::take(&mut self.pending) {
            return 0;
        }
        self.look_writable(step);
        self.collect_used(step)
    }

    /// The last synchronisation, at the end of an input.
    pub(crate) fn finish(&mut self, step: usize) {
        self.pending = true;
        self.sync(step);
        self.check_all(step);
        self.hooks.check(&self.view());
    }
}

/// Bytes compared at once when looking for changes: a block that did not change costs one
/// comparison, and only blocks that did are halved (halving the whole region instead compares
/// up to twice its length again for every change far apart from the others).
const DIFF_BLOCK: usize = 0x1000;

/// Appends the runs (offset, length) where `memory` and `copy` differ, block by block.
fn diff_blocks(memory: &[u8], copy: &[u8], runs: &mut Vec<(usize, usize)>) {
    for (k, (m, c)) in memory
        .chunks(DIFF_BLOCK)
        .zip(copy.chunks(DIFF_BLOCK))
        .enumerate()
    {
        diff(m, c, k * DIFF_BLOCK, runs);
    }
}

/// Appends the runs (offset from `base`, length) where `memory` and `copy` differ.
fn diff(memory: &[u8], copy: &[u8], base: usize, runs: &mut Vec<(usize, usize)>) {
    if memory == copy {
        return;
    }
    if memory.len() > 64 {
        let half = memory.len() / 2;
        diff(&memory[..half], &copy[..half], base, runs);
        diff(&memory[half..], &copy[half..], base + half, runs);
        return;
    }
    for (at, (a, b)) in memory.iter().zip(copy).enumerate() {
        if a != b {
            match runs.last_mut() {
                Some((from, n)) if *from + *n == base + at => *n += 1,
                _ => runs.push((base + at, 1)),
            }
        }
    }
}
