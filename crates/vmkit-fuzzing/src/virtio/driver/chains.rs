//! Chains: laying out a chain's buffers and descriptors in guest memory and publishing it.

use super::*;

/// One buffer of a chain being built.
#[derive(Clone, Copy)]
struct Buf {
    addr: u64,
    len: u32,
    write: bool,
}

/// One descriptor: address, length, flags, next.
pub(super) type Desc = (u64, u32, u16, u16);

impl Sim<'_> {
    // ---- chains ----

    /// Room for `len` bytes among the buffers (16-byte aligned, wrapping to the start).
    pub(super) fn alloc(&mut self, len: u64) -> u64 {
        let len = len
            .min(self.data_end - self.data_start)
            .next_multiple_of(16);
        if self.data_next + len > self.data_end {
            self.data_next = self.data_start;
        }
        let addr = self.data_next;
        self.data_next += len;
        addr
    }

    pub(super) fn chain(&mut self, step: usize, chain: &Chain) {
        self.sync(step);
        let Some(index) = self
            .live
            .get(usize::from(chain.queue))
            .and_then(Option::as_ref)
            .map(|_| usize::from(chain.queue))
        else {
            return;
        };
        let mut segments = std::mem::take(&mut self.guest.scratch.segments);
        segments.clear();
        self.hooks
            .request(u16::from(chain.queue), &chain.payload, &mut segments);
        // The buffers, as laid out in memory.
        let mut bufs: Vec<Buf> = Vec::with_capacity(segments.len() + 1);
        for (i, segment) in segments.iter().enumerate() {
            let (len, bytes, write) = match segment {
                Segment::Readable(bytes) => (bytes.len() as u32, Some(bytes), false),
                Segment::Writable(len) => (*len, None, true),
            };
            if chain.merge && write && bufs.last().is_some_and(|b| b.write) {
                if let Some(last) = bufs.last_mut() {
                    last.len = last.len.saturating_add(len);
                }
                continue;
            }
            let addr = self.alloc(u64::from(len));
            if let Some(bytes) = bytes {
                let bytes = &bytes[..bytes.len().min((self.data_end - addr) as usize)];
                self.write_mem(step, addr, bytes, false);
            }
            if chain.split && i == 0 && len >= 2 {
                let first = len / 2;
                bufs.push(Buf {
                    addr,
                    len: first,
                    write,
                });
                bufs.push(Buf {
                    addr: addr + u64::from(first),
                    len: len - first,
                    write,
                });
            } else {
                bufs.push(Buf { addr, len, write });
            }
        }
        self.guest.scratch.segments = segments;
        if bufs.is_empty() {
            let addr = self.alloc(0);
            bufs.push(Buf {
                addr,
                len: 0,
                write: false,
            });
        }
        let n = bufs.len();
        let Some(q) = self.live[index].as_ref() else {
            return;
        };
        let rings = q.rings();
        let size = q.size;
        match chain.flaw {
            Flaw::Overlapping => {
                let first = bufs[0].addr;
                for b in &mut bufs {
                    b.addr = first;
                }
            }
            Flaw::OverRings(k) => bufs[usize::from(k) % n].addr = rings[usize::from(k / 16 % 3)].0,
            Flaw::ZeroLength(k) => bufs[usize::from(k) % n].len = 0,
            Flaw::HugeLength(k) => bufs[usize::from(k) % n].len = u32::MAX - u32::from(k),
            _ => {}
        }
        let writable: Vec<(u64, u32)> = bufs
            .iter()
            .filter(|b| b.write)
            .map(|b| (b.addr, b.len))
            .collect();
        let writable_len = writable.iter().fold(0u32, |sum, b| sum.saturating_add(b.1));
        let desc = |b: &Buf| -> Desc { (b.addr, b.len, if b.write { F_WRITE } else { 0 }, 0) };
        // The descriptors of the ring (slot, descriptor) and of each table.
        let mut ring: Vec<Desc> = Vec::new();
        let mut tables: Vec<Vec<Desc>> = Vec::new();
        match chain.form {
            Form::Direct => ring.extend(bufs.iter().map(desc)),
            Form::Indirect => {
                ring.push((0, 0, F_INDIRECT, 0));
                tables.push(bufs.iter().map(desc).collect());
            }
            Form::Chained => {
                ring.push(desc(&bufs[0]));
                if n > 1 {
                    ring.push((0, 0, F_INDIRECT, 0));
                    tables.push(bufs[1..].iter().map(desc).collect());
                }
            }
            Form::Nested => {
                ring.push((0, 0, F_INDIRECT, 0));
                let mut outer: Vec<Desc> = bufs[..n - 1].iter().map(desc).collect();
                outer.push((0, 0, F_INDIRECT, 0));
                tables.push(outer);
                tables.push(vec![desc(&bufs[n - 1])]);
            }
        }
        // Link each sequence.
        for seq in std::iter::once(&mut ring).chain(tables.iter_mut()) {
            let len = seq.len();
            for (i, d) in seq.iter_mut().enumerate() {
                if i + 1 < len {
                    d.2 |= F_NEXT;
                    d.3 = (i + 1) as u16;
                }
            }
        }
        // The flaw of the last link, in the sequence holding the last buffer.
        let in_ring = tables.is_empty();
        let last_seq = match tables.last_mut() {
            Some(table) => table,
            None => &mut ring,
        };
        // Past the end of the ring's table, or of the indirect table.
        let seq_end = if in_ring { size } else { last_seq.len() as u16 };
        if let Some(last) = last_seq.last_mut() {
            match chain.flaw {
                Flaw::Loop => {
                    last.2 |= F_NEXT;
                    last.3 = 0;
                }
                Flaw::NextOutOfRange(k) => {
                    last.2 |= F_NEXT;
                    last.3 = seq_end.wrapping_add(u16::from(k));
                }
                _ => {}
            }
        }
        // Place the tables, innermost first so each outer entry knows its address.
        let mut table_ranges = Vec::new();
        let mut inner: Option<(u64, u32)> = None;
        for table in tables.iter_mut().rev() {
            if let (Some(last), Some((addr, len))) = (table.last_mut(), inner)
                && last.2 & F_INDIRECT != 0
            {
                last.0 = addr;
                last.1 = len;
            }
            let bytes = table.len() as u64 * 16;
            let addr = self.alloc(bytes);
            inner = Some((addr, bytes as u32));
            table_ranges.push((addr, bytes));
        }
        if let (Some(d), Some((addr, len))) =
            (ring.iter_mut().find(|d| d.2 & F_INDIRECT != 0), inner)
        {
            d.0 = addr;
            d.1 = len;
        }
        // Write the tables (their addresses were given out innermost first).
        for (table, &(addr, _)) in tables.iter().rev().zip(&table_ranges) {
            let raw: Vec<u8> = table.iter().flat_map(raw_desc).collect();
            self.write_mem(step, addr, &raw, true);
        }
        // Ring slots.
        let head = if let Flaw::HeadOutOfRange(k) = chain.flaw {
            Some((size.wrapping_add(u16::from(k)), Vec::new()))
        } else {
            self.take_slots(index, ring.len())
        };
        let Some((head, slots)) = head else {
            return;
        };
        if !slots.is_empty() {
            // Ring `next` fields name slots (a loop returns to the head); one past the table
            // stays as it is.
            for d in &mut ring {
                if let (true, Some(&slot)) = (d.2 & F_NEXT != 0, slots.get(usize::from(d.3))) {
                    d.3 = slot;
                }
            }
            let desc_table = rings[0].0;
            for (&slot, d) in slots.iter().zip(&ring) {
                let raw = raw_desc(d);
                self.write_mem(
                    step,
                    desc_table.wrapping_add(16 * u64::from(slot)),
                    &raw,
                    true,
                );
            }
        }
        let outstanding = Outstanding {
            head,
            slots,
            writable,
            writable_len,
            tables: table_ranges,
            well_formed: matches!(chain.flaw, Flaw::None) && chain.form != Form::Nested,
            fresh: true,
            payload: chain.payload.clone(),
        };
        // The buffers become the device's to write: what it wrote there before is judged first.
        for &(addr, len) in &outstanding.writable {
            self.look(step, addr, u64::from(len));
        }
        let Some(q) = self.live[index].as_mut() else {
            return;
        };
        let avail = q.avail;
        let slot = u64::from(q.avail_idx % q.size);
        q.avail_idx = q.avail_idx.wrapping_add(1);
        let idx = q.avail_idx;
        q.outstanding.push(outstanding);
        self.published += 1;
        self.write_mem(
            step,
            avail.wrapping_add(4 + 2 * slot),
            &head.to_le_bytes(),
            true,
        );
        self.write_mem(step, avail.wrapping_add(2), &idx.to_le_bytes(), true);
    }

    /// `count` free descriptor slots of queue `index` (the first is the head), marked taken.
    pub(super) fn take_slots(&mut self, index: usize, count: usize) -> Option<(u16, Vec<u16>)> {
        let q = self.live[index].as_mut()?;
        let free = q.taken.iter().filter(|t| !**t).count();
        if count == 0 || count > free {
            return None;
        }
        let mut slots = Vec::with_capacity(count);
        let mut at = q.next_slot;
        while slots.len() < count {
            if !q.taken[usize::from(at)] {
                q.taken[usize::from(at)] = true;
                slots.push(at);
            }
            at = (at + 1) % q.size;
        }
        q.next_slot = at;
        Some((slots[0], slots))
    }
}

fn raw_desc(&(addr, len, flags, next): &Desc) -> [u8; 16] {
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&addr.to_le_bytes());
    raw[8..12].copy_from_slice(&len.to_le_bytes());
    raw[12..14].copy_from_slice(&flags.to_le_bytes());
    raw[14..].copy_from_slice(&next.to_le_bytes());
    raw
}
