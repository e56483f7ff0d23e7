//! One virtio-blk request: framing a descriptor chain and carrying it out.
//!
//! The chain is read as the specification frames it (virtio 1.x, 2.6.4 and 5.2.6), without
//! assuming how the driver split it into descriptors: the device-readable bytes are the 16-byte
//! header followed by the data to write; the device-writable bytes are the data to read followed
//! by the status byte, which is the last byte of the chain. A chain whose end cannot be trusted
//! (looping, a bad `next` index, an unreadable descriptor, longer than [`MAX_DESCRIPTORS`], where
//! reading stops) or whose last byte is not a writable byte of guest memory has no status to
//! report and is dropped; every other problem is answered in the status byte.

use std::io;

use virtio_queue::DescriptorChain;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

use virtio_bindings::virtio_blk;

use super::disk::{DiskBackend, SECTOR_SIZE, SERIAL_LEN};

/// Request type: read sectors.
pub const VIRTIO_BLK_T_IN: u32 = virtio_blk::VIRTIO_BLK_T_IN;
/// Request type: write sectors.
pub const VIRTIO_BLK_T_OUT: u32 = virtio_blk::VIRTIO_BLK_T_OUT;
/// Request type: make completed writes durable.
pub const VIRTIO_BLK_T_FLUSH: u32 = virtio_blk::VIRTIO_BLK_T_FLUSH;
/// Request type: read the device ID.
pub const VIRTIO_BLK_T_GET_ID: u32 = virtio_blk::VIRTIO_BLK_T_GET_ID;
/// Status: success.
pub const VIRTIO_BLK_S_OK: u8 = virtio_blk::VIRTIO_BLK_S_OK as u8;
/// Status: the request failed.
pub const VIRTIO_BLK_S_IOERR: u8 = virtio_blk::VIRTIO_BLK_S_IOERR as u8;
/// Status: the request type is not supported.
pub const VIRTIO_BLK_S_UNSUPP: u8 = virtio_blk::VIRTIO_BLK_S_UNSUPP as u8;

/// Bytes of the request header (`type`, `reserved`, `sector`).
pub const HEADER_LEN: u64 = 16;
/// Most descriptors of one chain the device reads, counting those of an indirect table (plus the
/// one pointing at the table); a longer chain is dropped without a status, since its end is
/// never read (Linux uses at most `seg_max` + 2 = 256).
pub const MAX_DESCRIPTORS: usize = 1024;

/// Why a chain was dropped without a status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// The first descriptor is unreadable (or an indirect table invalid).
    Empty,
    /// The chain ends on a descriptor that still points to a next one: a loop, a `next` index
    /// out of range, or an unreadable descriptor.
    Truncated,
    /// The chain goes on past [`MAX_DESCRIPTORS`].
    TooLong,
    /// The last descriptor is not device-writable, or is empty, or its last byte is not guest
    /// memory.
    NoStatus,
}

/// A guest buffer: `len` bytes at `addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    addr: GuestAddress,
    len: u64,
}

/// A chain split into its readable and writable bytes, with the status byte located.
#[derive(Debug)]
pub(crate) struct Framed {
    readable: Vec<Segment>,
    writable: Vec<Segment>,
    status: GuestAddress,
    /// A readable descriptor came after a writable one.
    malformed: bool,
}

impl Framed {
    /// Frames `chain`, or says why it has no status byte.
    pub(crate) fn parse<M: GuestMemory>(
        chain: DescriptorChain<&M>,
        memory: &M,
    ) -> Result<Self, Dropped> {
        let mut framed = Framed {
            readable: Vec::new(),
            writable: Vec::new(),
            status: GuestAddress(0),
            malformed: false,
        };
        let mut last: Option<Descriptor> = None;
        // Reading stops at the limit, so a table of 65 535 entries costs no more than this.
        for desc in chain.take(MAX_DESCRIPTORS) {
            let segment = Segment {
                addr: desc.addr(),
                len: desc.len().into(),
            };
            if desc.is_write_only() {
                framed.writable.push(segment);
            } else {
                framed.malformed |= !framed.writable.is_empty();
                framed.readable.push(segment);
            }
            last = Some(desc);
        }
        let last = last.ok_or(Dropped::Empty)?;
        if last.has_next() {
            let read = framed.readable.len() + framed.writable.len();
            return Err(if read == MAX_DESCRIPTORS {
                Dropped::TooLong
            } else {
                Dropped::Truncated
            });
        }
        if !last.is_write_only() || last.len() == 0 {
            return Err(Dropped::NoStatus);
        }
        let status = last
            .addr()
            .checked_add(u64::from(last.len()) - 1)
            .filter(|&a| memory.check_range(a, 1, Permissions::Write))
            .ok_or(Dropped::NoStatus)?;
        framed.status = status;
        // The status byte is not data: take it off the last writable segment (the last
        // descriptor).
        if let Some(segment) = framed.writable.last_mut() {
            segment.len -= 1;
            if segment.len == 0 {
                framed.writable.pop();
            }
        }
        Ok(framed)
    }

    /// Where the status byte goes.
    pub(crate) fn status_address(&self) -> GuestAddress {
        self.status
    }
}

/// The result of a request: its status and the bytes the device wrote (status included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Completion {
    pub(crate) status: u8,
    pub(crate) used_len: u32,
    pub(crate) kind: Kind,
}

/// What the request was, for the statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Read(u64),
    Write(u64),
    Flush,
    GetId,
    Unsupported,
    /// Failed before or while doing its work.
    Failed,
}

impl Completion {
    fn ok(used_len: u64, kind: Kind) -> Self {
        Self {
            status: VIRTIO_BLK_S_OK,
            // Requests are capped far below 4 GiB.
            used_len: used_len as u32 + 1,
            kind,
        }
    }

    fn status(status: u8, kind: Kind) -> Self {
        Self {
            status,
            used_len: 1,
            kind,
        }
    }

    fn ioerr() -> Self {
        Self::status(VIRTIO_BLK_S_IOERR, Kind::Failed)
    }
}

/// What a request may do: the device's limits and its disk.
pub(crate) struct Executor<'a, B: DiskBackend, M: GuestMemory> {
    pub(crate) disk: &'a mut B,
    pub(crate) memory: &'a M,
    pub(crate) bounce: &'a mut Vec<u8>,
    pub(crate) max_request: u64,
    pub(crate) serial: [u8; SERIAL_LEN],
}

fn total(segments: &[Segment]) -> u64 {
    segments.iter().map(|s| s.len).sum()
}

impl<B: DiskBackend, M: GuestMemory> Executor<'_, B, M> {
    /// Carries out `framed` and reports how it went (the caller writes the status).
    pub(crate) fn execute(&mut self, framed: &Framed) -> Completion {
        if framed.malformed {
            return Completion::ioerr();
        }
        let memory = self.memory;
        let in_memory = |access: Permissions| {
            move |s: &Segment| {
                usize::try_from(s.len).is_ok_and(|len| memory.check_range(s.addr, len, access))
            }
        };
        if !framed.readable.iter().all(in_memory(Permissions::Read))
            || !framed.writable.iter().all(in_memory(Permissions::Write))
        {
            return Completion::ioerr();
        }
        let Some((header, out_data)) = self.split_header(&framed.readable) else {
            return Completion::ioerr();
        };
        let request_type = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let sector = u64::from_le_bytes([
            header[8], header[9], header[10], header[11], header[12], header[13], header[14],
            header[15],
        ]);
        let in_data = &framed.writable;
        match request_type {
            VIRTIO_BLK_T_IN => {
                if !out_data.is_empty() {
                    return Completion::ioerr();
                }
                let len = total(in_data);
                match self.check_range(sector, len) {
                    Some(offset) if self.transfer(offset, in_data, true).is_ok() => {
                        Completion::ok(len, Kind::Read(len))
                    }
                    _ => Completion::ioerr(),
                }
            }
            VIRTIO_BLK_T_OUT => {
                if !in_data.is_empty() || self.disk.read_only() {
                    return Completion::ioerr();
                }
                let len = total(&out_data);
                match self.check_range(sector, len) {
                    Some(offset) if self.transfer(offset, &out_data, false).is_ok() => {
                        Completion::ok(0, Kind::Write(len))
                    }
                    _ => Completion::ioerr(),
                }
            }
            // Data buffers of a flush are ignored: a driver may reuse a descriptor slot.
            VIRTIO_BLK_T_FLUSH => match self.disk.flush() {
                Ok(()) => Completion::ok(0, Kind::Flush),
                Err(_) => Completion::ioerr(),
            },
            VIRTIO_BLK_T_GET_ID => {
                let mut written = 0u64;
                for segment in in_data {
                    let n = segment.len.min(SERIAL_LEN as u64 - written);
                    let bytes = &self.serial[written as usize..(written + n) as usize];
                    if self.memory.write_slice(bytes, segment.addr).is_err() {
                        return Completion::ioerr();
                    }
                    written += n;
                }
                Completion::ok(written, Kind::GetId)
            }
            _ => Completion::status(VIRTIO_BLK_S_UNSUPP, Kind::Unsupported),
        }
    }

    /// The 16 header bytes and the readable segments after them, or `None` when the readable
    /// part is shorter than a header.
    fn split_header(&self, readable: &[Segment]) -> Option<([u8; 16], Vec<Segment>)> {
        let mut header = [0u8; HEADER_LEN as usize];
        let mut got = 0u64;
        let mut rest = Vec::new();
        for segment in readable {
            let take = segment.len.min(HEADER_LEN - got);
            if take > 0 {
                let dst = &mut header[got as usize..(got + take) as usize];
                self.memory.read_slice(dst, segment.addr).ok()?;
                got += take;
            }
            if take < segment.len {
                rest.push(Segment {
                    addr: segment.addr.checked_add(take)?,
                    len: segment.len - take,
                });
            }
        }
        (got == HEADER_LEN).then_some((header, rest))
    }

    /// The byte offset of `len` bytes at `sector`, if the request is whole sectors, within the
    /// cap and inside the disk.
    fn check_range(&self, sector: u64, len: u64) -> Option<u64> {
        if !len.is_multiple_of(SECTOR_SIZE) || len > self.max_request {
            return None;
        }
        let offset = sector.checked_mul(SECTOR_SIZE)?;
        (offset.checked_add(len)? <= self.disk.size()).then_some(offset)
    }

    /// Moves the segments' bytes from (`to_guest`) or to the disk at `offset`, through the
    /// bounce buffer in chunks of its capacity.
    fn transfer(
        &mut self,
        mut offset: u64,
        segments: &[Segment],
        to_guest: bool,
    ) -> io::Result<()> {
        let chunk = self.bounce.len() as u64;
        if chunk == 0 {
            return Err(io::Error::other("no bounce buffer"));
        }
        for segment in segments {
            let mut done = 0;
            while done < segment.len {
                let n = (segment.len - done).min(chunk) as usize;
                let buf = &mut self.bounce[..n];
                let addr = segment
                    .addr
                    .checked_add(done)
                    .ok_or_else(|| io::Error::other("segment wraps"))?;
                if to_guest {
                    self.disk.read_exact_at(buf, offset)?;
                    self.memory
                        .write_slice(buf, addr)
                        .map_err(io::Error::other)?;
                } else {
                    self.memory
                        .read_slice(buf, addr)
                        .map_err(io::Error::other)?;
                    self.disk.write_all_at(buf, offset)?;
                }
                done += n as u64;
                offset += n as u64;
            }
        }
        Ok(())
    }
}
