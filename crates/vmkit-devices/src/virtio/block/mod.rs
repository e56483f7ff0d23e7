//! virtio-blk (virtio 1.x, section 5.2) over a [`DiskBackend`]: reads, writes, flushes and
//! device IDs, with a read-only mode.
//!
//! Requests are carried out synchronously when the driver notifies the queue, so a polling
//! driver finds them complete as soon as its notifying write returns. Data moves through a
//! bounce buffer of [`SIZE_MAX`] bytes; a request moves at most [`MAX_REQUEST_BYTES`], which
//! the advertised `seg_max` × `size_max` already keeps a conforming driver under. Nothing a
//! request says can reach outside the disk or guest memory: ranges are checked with overflow
//! checks before any I/O, and every failure is a status (or, when the chain has no status byte,
//! a counted drop).
//!
//! One notification does work bounded by constants no guest value can raise. It reads
//! `avail.idx` once and serves only the chains published before that read, at most
//! [`MAX_CHAINS_PER_NOTIFY`], even when a request's data lands on the available ring or on the
//! headers of other requests and so publishes more: those wait for the next notification, which
//! the driver sends because the device never asks it not to (it offers no `EVENT_IDX` and never
//! sets `VRING_USED_F_NO_NOTIFY`), so nothing an honest driver queued is left waiting. Each chain
//! costs at most [`MAX_DESCRIPTORS`] descriptor reads (those of an indirect table included, plus
//! the descriptor pointing at it), [`MAX_REQUEST_BYTES`] moved and [`MAX_DISK_CALLS_PER_CHAIN`]
//! disk calls. A head index out of range is consumed and counted
//! ([`BlockStats::invalid_heads`]), without a log line.

mod disk;
mod recording;
mod request;

use std::sync::Arc;

use log::debug;
use virtio_bindings::{virtio_blk, virtio_ring};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};
use vmkit_exits::record::RecordWriter;

use super::{ActivateError, QueueError, TYPE_BLOCK, VirtioDevice, VirtioInterrupt};
use recording::RecordingMemory;
use request::{Completion, Executor, Framed, Kind};

#[cfg(feature = "file-disk")]
pub use disk::DiskImage;
pub use disk::{DiskBackend, DiskError, MemDisk, SECTOR_SIZE, SERIAL_LEN};
pub use recording::RecordingDisk;
pub use request::{
    HEADER_LEN, MAX_DESCRIPTORS, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};

/// Feature: `size_max` gives the largest segment.
pub const VIRTIO_BLK_F_SIZE_MAX: u64 = 1 << virtio_blk::VIRTIO_BLK_F_SIZE_MAX;
/// Feature: `seg_max` gives the most segments of a request.
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << virtio_blk::VIRTIO_BLK_F_SEG_MAX;
/// Feature: the device is read-only.
pub const VIRTIO_BLK_F_RO: u64 = 1 << virtio_blk::VIRTIO_BLK_F_RO;
/// Feature: `blk_size` gives the logical block size.
pub const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << virtio_blk::VIRTIO_BLK_F_BLK_SIZE;
/// Feature: the device takes `VIRTIO_BLK_T_FLUSH`.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << virtio_blk::VIRTIO_BLK_F_FLUSH;

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most data segments of a request (the queue size less header and status).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Largest data segment, and the bounce buffer's size.
pub const SIZE_MAX: u32 = 128 << 10;
/// Most data one request moves.
pub const MAX_REQUEST_BYTES: u64 = SEG_MAX as u64 * SIZE_MAX as u64;
/// Most chains one notification serves: those published before it, which the queue size
/// bounds (a driver claiming more breaks the ring, and the transport asks for a reset).
pub const MAX_CHAINS_PER_NOTIFY: u64 = QUEUE_SIZE as u64;
/// Most disk calls one chain makes: one per data segment, plus one per [`SIZE_MAX`] bytes moved
/// (a flush makes one).
pub const MAX_DISK_CALLS_PER_CHAIN: u64 = MAX_DESCRIPTORS as u64 + SEG_MAX as u64;
/// Bytes of configuration space (`struct virtio_blk_config` up to `num_queues`).
pub const CONFIG_LEN: usize = 0x24;

/// Counts of a block device's requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// Requests completed (any status).
    pub requests: u64,
    /// Successful reads.
    pub reads: u64,
    /// Successful writes.
    pub writes: u64,
    /// Successful flushes.
    pub flushes: u64,
    /// Successful device-ID requests.
    pub get_ids: u64,
    /// Requests of an unsupported type.
    pub unsupported: u64,
    /// Requests that failed (bad framing, out of range, outside memory, read-only, I/O error).
    pub errors: u64,
    /// Chains dropped without a status (looping, truncated, too long, no writable status byte).
    pub dropped: u64,
    /// Available-ring entries whose head index is out of range: consumed and counted, with
    /// nothing to give back.
    pub invalid_heads: u64,
    /// Bytes read from the disk.
    pub bytes_read: u64,
    /// Bytes written to the disk.
    pub bytes_written: u64,
    /// Completions the driver asked not to be interrupted for.
    pub interrupts_suppressed: u64,
}

struct Active {
    queue: Queue,
    memory: GuestMemoryMmap,
    interrupt: Arc<dyn VirtioInterrupt>,
}

/// `VRING_AVAIL_F_NO_INTERRUPT`: the driver does not want used-buffer notifications.
const AVAIL_F_NO_INTERRUPT: u16 = virtio_ring::VRING_AVAIL_F_NO_INTERRUPT as u16;

/// Whether the driver wants a used-buffer notification now (virtio 1.x, 2.7.7): unless it set
/// `VRING_AVAIL_F_NO_INTERRUPT`, which virtio-queue does not read, so the device does. A polling
/// driver then costs no interrupt per request. (`EVENT_IDX` is not offered, so `used_event`
/// plays no part.)
fn wants_interrupt<M: GuestMemory>(queue: &Queue, memory: &M) -> bool {
    // Order the used-ring writes before the read of the driver's flags.
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    let flags = memory
        .read_obj::<u16>(GuestAddress(queue.avail_ring()))
        .map(u16::from_le)
        // The ring was validated at DRIVER_OK; an unreadable flag word interrupts.
        .unwrap_or(0);
    flags & AVAIL_F_NO_INTERRUPT == 0
}

/// A virtio-blk device with one request queue.
pub struct VirtioBlock<B: DiskBackend> {
    disk: B,
    config: [u8; CONFIG_LEN],
    serial: [u8; SERIAL_LEN],
    features: u64,
    queue_sizes: [u16; 1],
    /// [`SIZE_MAX`] bytes from the first notification on: a device that never serves a request
    /// (most of those a VMM or a fuzzer builds and drops) never allocates it.
    bounce: Vec<u8>,
    active: Option<Active>,
    stats: BlockStats,
    recorder: Option<Arc<RecordWriter>>,
}

impl<B: DiskBackend> std::fmt::Debug for VirtioBlock<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioBlock")
            .field("capacity", &self.capacity())
            .field("read_only", &self.disk.read_only())
            .field("active", &self.active.is_some())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<B: DiskBackend> VirtioBlock<B> {
    /// A device serving `disk`; its device ID is the disk's [`serial`](DiskBackend::serial).
    pub fn new(disk: B) -> Self {
        let mut config = [0u8; CONFIG_LEN];
        let capacity = disk.size() / SECTOR_SIZE;
        config[0..8].copy_from_slice(&capacity.to_le_bytes());
        config[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        config[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        config[34..36].copy_from_slice(&1u16.to_le_bytes());
        let mut features = VIRTIO_BLK_F_SIZE_MAX
            | VIRTIO_BLK_F_SEG_MAX
            | VIRTIO_BLK_F_BLK_SIZE
            | VIRTIO_BLK_F_FLUSH;
        if disk.read_only() {
            features |= VIRTIO_BLK_F_RO;
        }
        Self {
            serial: disk.serial(),
            disk,
            config,
            features,
            queue_sizes: [QUEUE_SIZE],
            bounce: Vec::new(),
            active: None,
            stats: BlockStats::default(),
            recorder: None,
        }
    }

    /// This device with its guest-memory accesses recorded to `recorder`: every read of a ring,
    /// descriptor, header or data buffer with the bytes read, every write with the bytes
    /// written (data longer than [`INLINE_MAX`](vmkit_exits::record::INLINE_MAX) stored once by
    /// content hash), attributed to the exit that notified the queue. Wrap the disk in a
    /// [`RecordingDisk`] to record the disk calls too.
    pub fn with_recorder(mut self, recorder: Arc<RecordWriter>) -> Self {
        self.recorder = Some(recorder);
        self
    }

    /// Replaces the device ID (at most 20 bytes are kept; shorter IDs are zero-padded).
    pub fn set_serial(&mut self, serial: &[u8]) {
        self.serial = [0; SERIAL_LEN];
        let n = serial.len().min(SERIAL_LEN);
        self.serial[..n].copy_from_slice(&serial[..n]);
    }

    /// The capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.size() / SECTOR_SIZE
    }

    /// The disk.
    pub fn disk(&self) -> &B {
        &self.disk
    }

    /// The disk, mutably.
    pub fn disk_mut(&mut self) -> &mut B {
        &mut self.disk
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> BlockStats {
        self.stats
    }
}

/// Serves the chains the driver published before this call: `avail.idx` is read once, so at
/// most the queue size of chains, however the requests rewrite the ring while they run (a
/// chain published later comes with its own notification: the device never suppresses them).
/// Returns whether any chain went to the used ring.
///
/// Generic over the memory so that tests can count every access.
fn serve<B: DiskBackend, M: GuestMemory>(
    queue: &mut Queue,
    executor: &mut Executor<'_, B, M>,
    stats: &mut BlockStats,
) -> Result<bool, virtio_queue::Error> {
    let memory = executor.memory;
    // The iterator reads `avail.idx` once and every head up to it now, before any request
    // runs: nothing the requests write to the ring can lengthen this batch.
    let chains: Vec<_> = queue.iter(memory)?.collect();
    let mut used = false;
    for chain in chains {
        let head = chain.head_index();
        if head >= queue.size() {
            // Nothing to give back, and virtio-queue would log each one: count it only.
            stats.invalid_heads += 1;
            continue;
        }
        let used_len = match Framed::parse(chain, memory) {
            Ok(framed) => {
                let completion = executor.execute(&framed);
                if completion.status != VIRTIO_BLK_S_OK {
                    debug!("virtio-blk: request {head} failed: {completion:?}");
                }
                // Framing checked that the status byte is guest memory.
                let _ = memory.write_obj(completion.status, framed.status_address());
                count(stats, &completion);
                completion.used_len
            }
            Err(reason) => {
                debug!("virtio-blk: chain at {head} dropped: {reason:?}");
                stats.dropped += 1;
                0
            }
        };
        queue.add_used(memory, head, used_len)?;
        used = true;
    }
    Ok(used)
}

/// One notification's work: serve the queue, then signal the driver if it wants it.
struct Notify<'a, B: DiskBackend> {
    queue: &'a mut Queue,
    disk: &'a mut B,
    bounce: &'a mut Vec<u8>,
    serial: [u8; SERIAL_LEN],
    stats: &'a mut BlockStats,
    interrupt: &'a dyn VirtioInterrupt,
}

impl<B: DiskBackend> Notify<'_, B> {
    fn run<M: GuestMemory>(&mut self, memory: &M, index: u16) -> Result<(), QueueError> {
        let mut executor = Executor {
            disk: &mut *self.disk,
            memory,
            bounce: &mut *self.bounce,
            max_request: MAX_REQUEST_BYTES,
            serial: self.serial,
        };
        let used = serve(self.queue, &mut executor, self.stats)
            .map_err(|source| QueueError::Broken { index, source })?;
        if used {
            if wants_interrupt(self.queue, memory) {
                self.interrupt.signal_used_queue(index);
            } else {
                self.stats.interrupts_suppressed += 1;
            }
        }
        Ok(())
    }
}

fn count(s: &mut BlockStats, completion: &Completion) {
    s.requests += 1;
    match completion.kind {
        Kind::Read(n) => {
            s.reads += 1;
            s.bytes_read += n;
        }
        Kind::Write(n) => {
            s.writes += 1;
            s.bytes_written += n;
        }
        Kind::Flush => s.flushes += 1,
        Kind::GetId => s.get_ids += 1,
        Kind::Unsupported => s.unsupported += 1,
        Kind::Failed => s.errors += 1,
    }
}

impl<B: DiskBackend> VirtioDevice for VirtioBlock<B> {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn config_len(&self) -> usize {
        CONFIG_LEN
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset.saturating_add(i as u64))
                .ok()
                .and_then(|o| self.config.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `writeback` is writable, and only with VIRTIO_BLK_F_CONFIG_WCE (not offered).
        debug!(
            "virtio-blk: ignored config write of {} bytes at {offset:#x}",
            data.len()
        );
    }

    fn activate(
        &mut self,
        _acked_features: u64,
        queues: Vec<Queue>,
        memory: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        let got = queues.len();
        let Ok([queue]) = <[Queue; 1]>::try_from(queues) else {
            return Err(ActivateError::QueueCount { expected: 1, got });
        };
        if !queue.ready() {
            return Err(ActivateError::QueueNotEnabled(0));
        }
        self.active = Some(Active {
            queue,
            memory,
            interrupt,
        });
        Ok(())
    }

    fn process_queue(&mut self, index: u16) -> Result<(), QueueError> {
        let Some(active) = self.active.as_mut().filter(|_| index == 0) else {
            return Err(QueueError::NotActive(index));
        };
        let Active {
            queue,
            memory,
            interrupt,
        } = active;
        if self.bounce.is_empty() {
            self.bounce = vec![0; SIZE_MAX as usize];
        }
        let mut work = Notify {
            queue,
            disk: &mut self.disk,
            bounce: &mut self.bounce,
            serial: self.serial,
            stats: &mut self.stats,
            interrupt: interrupt.as_ref(),
        };
        match &self.recorder {
            None => work.run(memory, index),
            Some(recorder) => {
                let recording = RecordingMemory::new(&*memory, recorder);
                let result = work.run(&recording, index);
                recording.finish();
                result
            }
        }
    }

    fn reset(&mut self) {
        self.active = None;
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod work_tests;
