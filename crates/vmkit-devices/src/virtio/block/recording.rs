//! Recording what virtio-blk does outside the exit's own bytes: its disk calls
//! ([`RecordingDisk`]) and its guest-memory accesses (`RecordingMemory`, which the device puts
//! in front of its guest memory while it serves a notification, when it has a recorder).

use std::cell::RefCell;
use std::io;
use std::sync::Arc;

use vm_memory::bitmap::BS;
use vm_memory::guest_memory::GuestMemorySliceIterator;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryResult, Permissions};
use vmkit_exits::record::{Data, Direction, DiskOp, INLINE_MAX, Record, RecordWriter};

use super::disk::{DiskBackend, SERIAL_LEN};

/// A disk backend that records every call (a [`Record::Disk`] with the content hash of the bytes
/// moved, whose payload is stored once) before it returns the inner backend's answer.
pub struct RecordingDisk<D> {
    inner: D,
    disk: u32,
    recorder: Arc<RecordWriter>,
}

impl<D> std::fmt::Debug for RecordingDisk<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingDisk")
            .field("disk", &self.disk)
            .finish_non_exhaustive()
    }
}

impl<D: DiskBackend> RecordingDisk<D> {
    /// Wraps `inner`, recorded as disk number `disk` to `recorder`.
    pub fn new(inner: D, disk: u32, recorder: Arc<RecordWriter>) -> Self {
        Self {
            inner,
            disk,
            recorder,
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    fn record(&self, op: DiskOp, offset: u64, bytes: Option<&[u8]>, ok: bool) {
        let len = bytes.map_or(0, |b| b.len() as u64);
        let hash = bytes
            .filter(|b| ok && !b.is_empty())
            .map(|b| self.recorder.store_payload(b));
        self.recorder.write(&Record::Disk {
            at: self.recorder.attribution(),
            disk: self.disk,
            op,
            offset,
            len,
            hash,
            ok,
        });
    }
}

impl<D: DiskBackend> DiskBackend for RecordingDisk<D> {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_only(&self) -> bool {
        self.inner.read_only()
    }

    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let result = self.inner.read_exact_at(buf, offset);
        self.record(DiskOp::Read, offset, Some(buf), result.is_ok());
        result
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let result = self.inner.write_all_at(buf, offset);
        self.record(DiskOp::Write, offset, Some(buf), result.is_ok());
        result
    }

    fn flush(&mut self) -> io::Result<()> {
        let result = self.inner.flush();
        self.record(DiskOp::Flush, 0, None, result.is_ok());
        result
    }

    fn serial(&self) -> [u8; SERIAL_LEN] {
        self.inner.serial()
    }
}

/// Guest memory that records the device's accesses: a read with the bytes as they are when the
/// device asks for them, a write with the bytes as they are after it (recorded at the device's
/// next access, or when the notification's work is done: [`finish`](Self::finish)).
///
/// Every access the device and virtio-queue make — ring indices and entries, descriptors,
/// request headers, data buffers, status bytes, used elements — goes through
/// [`GuestMemory::get_slices`], which says the address, the length and whether it reads or
/// writes; the wrapper records there and hands the access to the real memory. Range checks are
/// not accesses and are not recorded.
pub(crate) struct RecordingMemory<'a, M> {
    inner: &'a M,
    recorder: &'a RecordWriter,
    /// Writes handed out whose bytes are not recorded yet.
    pending: RefCell<Vec<(GuestAddress, usize)>>,
}

impl<'a, M: GuestMemory> RecordingMemory<'a, M> {
    pub(crate) fn new(inner: &'a M, recorder: &'a RecordWriter) -> Self {
        Self {
            inner,
            recorder,
            pending: RefCell::new(Vec::new()),
        }
    }

    /// Records the writes still pending.
    pub(crate) fn finish(self) {
        self.record_pending();
    }

    fn record_pending(&self) {
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        for (addr, len) in pending {
            self.record(addr, len, Direction::Write);
        }
    }

    /// Records the `len` bytes at `addr` as they are now (nothing when they are not all guest
    /// memory: the access fails as well).
    fn record(&self, addr: GuestAddress, len: usize, direction: Direction) {
        let mut bytes = vec![0u8; len];
        if self.inner.read_slice(&mut bytes, addr).is_err() {
            return;
        }
        let data = if len > INLINE_MAX {
            Data::Stored {
                hash: self.recorder.store_payload(&bytes),
                len: len as u64,
            }
        } else {
            Data::Inline(bytes)
        };
        self.recorder.write(&Record::Memory {
            at: self.recorder.attribution(),
            gpa: addr.0,
            direction,
            data,
        });
    }
}

impl<M: GuestMemory> GuestMemory for RecordingMemory<'_, M> {
    type PhysicalMemory = M::PhysicalMemory;
    type Bitmap = M::Bitmap;

    fn check_range(&self, addr: GuestAddress, count: usize, access: Permissions) -> bool {
        self.inner.check_range(addr, count, access)
    }

    fn get_slices<'b>(
        &'b self,
        addr: GuestAddress,
        count: usize,
        access: Permissions,
    ) -> GuestMemoryResult<impl GuestMemorySliceIterator<'b, BS<'b, Self::Bitmap>>> {
        // Earlier writes are done by now: their bytes go first, in the order they happened.
        self.record_pending();
        if count > 0 {
            if matches!(access, Permissions::Read | Permissions::ReadWrite) {
                self.record(addr, count, Direction::Read);
            }
            if matches!(access, Permissions::Write | Permissions::ReadWrite) {
                self.pending.borrow_mut().push((addr, count));
            }
        }
        self.inner.get_slices(addr, count, access)
    }

    /// None: every access must go through [`get_slices`](Self::get_slices) to be recorded.
    fn physical_memory(&self) -> Option<&Self::PhysicalMemory> {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use vm_memory::GuestMemoryMmap;
    use vmkit_exits::record::{Attribution, ContentHash, ExitScope, RecordReader};

    use super::super::tests::{Blk, DATA, HDR, STATUS, mem_disk};
    use super::super::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_OUT, VirtioBlock};
    use super::*;
    use crate::trigger::CountingTrigger;
    use crate::virtio::testing::{HOLE, Ring, init, memory};
    use crate::virtio::{VirtioPciDevice, VirtioPciInterrupts};

    /// A sink the test reads back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn records(&self) -> Vec<Record> {
            let bytes = self.0.lock().unwrap().clone();
            RecordReader::new(&bytes[..]).unwrap().read_all().unwrap()
        }
    }

    type Recorded = Blk<RecordingDisk<Box<dyn DiskBackend>>>;

    fn recorded_blk(recorder: &Arc<RecordWriter>, disk: Box<dyn DiskBackend>) -> Recorded {
        let mem = memory();
        let intx = Arc::new(CountingTrigger::new());
        let device = VirtioBlock::new(RecordingDisk::new(disk, 3, recorder.clone()))
            .with_recorder(recorder.clone());
        let mut dev = VirtioPciDevice::new(
            device,
            mem.clone(),
            VirtioPciInterrupts {
                intx: Some(intx.clone()),
                intx_line: 5,
                msi: None,
            },
        )
        .unwrap();
        let ring = Ring::new(&mem, 16);
        init(&mut dev, 0, &ring);
        Blk { dev, ring, intx }
    }

    #[test]
    fn a_request_records_its_memory_and_disk_work_with_one_copy_of_its_data() {
        let sink = Shared::default();
        let recorder = Arc::new(RecordWriter::new(sink.clone(), u64::MAX));
        let mut b = recorded_blk(&recorder, Box::new(mem_disk(8)));
        let sector = vec![0xabu8; 512];
        b.mem().write_slice(&sector, GuestAddress(DATA)).unwrap();
        b.header(HDR, VIRTIO_BLK_T_OUT, 1);
        let write_seq = recorder.begin_exit();
        {
            let _exit = ExitScope::enter(write_seq);
            b.submit(&[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)]);
        }
        assert_eq!(b.status_at(STATUS), VIRTIO_BLK_S_OK);
        let read_seq = recorder.begin_exit();
        {
            let _exit = ExitScope::enter(read_seq);
            assert_eq!(b.read(1, DATA + 0x1000, 512).0, VIRTIO_BLK_S_OK);
        }
        assert_eq!(b.bytes(DATA + 0x1000, 512), sector);
        recorder.finish();

        let hash = ContentHash::of(&sector);
        let stored = Data::Stored { hash, len: 512 };
        let records = sink.records();
        let payloads: Vec<_> = records
            .iter()
            .filter(|r| matches!(r, Record::Payload { .. }))
            .collect();
        assert_eq!(
            payloads,
            [&Record::Payload {
                hash,
                bytes: sector.clone()
            }],
            "stored once"
        );
        let disk: Vec<_> = records
            .iter()
            .filter_map(|r| match r {
                Record::Disk {
                    at,
                    disk,
                    op,
                    offset,
                    len,
                    hash,
                    ok,
                } => Some((*at, *disk, *op, *offset, *len, *hash, *ok)),
                _ => None,
            })
            .collect();
        assert_eq!(
            disk,
            [
                (
                    Attribution::Exit(write_seq),
                    3,
                    DiskOp::Write,
                    512,
                    512,
                    Some(hash),
                    true
                ),
                (
                    Attribution::Exit(read_seq),
                    3,
                    DiskOp::Read,
                    512,
                    512,
                    Some(hash),
                    true
                ),
            ]
        );
        // Every memory access, keyed by (exit, address, direction).
        let mut memory = BTreeMap::new();
        for record in &records {
            if let Record::Memory {
                at: Attribution::Exit(seq),
                gpa,
                direction,
                data,
            } = record
            {
                memory.insert((*seq, *gpa, *direction as u8), data.clone());
            } else {
                assert!(!matches!(record, Record::Memory { .. }), "{record:?}");
            }
        }
        let (read, write) = (Direction::Read as u8, Direction::Write as u8);
        let mut header = vec![0u8; 16];
        header[..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
        header[8] = 1;
        assert_eq!(memory[&(write_seq, HDR, read)], Data::Inline(header));
        assert_eq!(memory[&(write_seq, DATA, read)], stored);
        assert_eq!(memory[&(write_seq, STATUS, write)], Data::Inline(vec![0]));
        assert_eq!(memory[&(read_seq, DATA + 0x1000, write)], stored);
        assert_eq!(memory[&(read_seq, STATUS, write)], Data::Inline(vec![0]));
        // The rings: descriptors read, used elements written, in both exits.
        for seq in [write_seq, read_seq] {
            let reads = memory.keys().filter(|k| k.0 == seq && k.2 == read).count();
            let writes = memory.keys().filter(|k| k.0 == seq && k.2 == write).count();
            assert!(
                reads >= 5 && writes >= 3,
                "{seq}: {reads} reads, {writes} writes"
            );
        }
        assert!(b.intx.asserts() > 0);
    }

    #[test]
    fn failed_disk_calls_and_flushes_are_recorded_without_data() {
        let sink = Shared::default();
        let recorder = Arc::new(RecordWriter::new(sink.clone(), u64::MAX));
        let mut failing = mem_disk(8);
        failing.set_failing(true);
        let mut b = recorded_blk(&recorder, Box::new(failing));
        assert_eq!(b.dev.device().disk().inner().size(), 8 * 512);
        assert!(!b.dev.device().disk().inner().read_only());
        assert_ne!(b.read(0, DATA, 512).0, VIRTIO_BLK_S_OK);
        b.header(HDR, VIRTIO_BLK_T_FLUSH, 0);
        b.submit(&[(HDR, 16, false), (STATUS, 1, true)]);
        recorder.finish();
        let disk: Vec<_> = sink
            .records()
            .into_iter()
            .filter(|r| matches!(r, Record::Disk { .. }))
            .collect();
        let outside = Attribution::Outside { exits_before: 0 };
        assert_eq!(
            disk,
            [
                Record::Disk {
                    at: outside,
                    disk: 3,
                    op: DiskOp::Read,
                    offset: 0,
                    len: 512,
                    hash: None,
                    ok: false
                },
                Record::Disk {
                    at: outside,
                    disk: 3,
                    op: DiskOp::Flush,
                    offset: 0,
                    len: 0,
                    hash: None,
                    ok: false
                },
            ]
        );
        assert!(format!("{:?}", b.dev.device().disk()).contains("RecordingDisk"));
    }

    #[test]
    fn the_memory_wrapper_records_accesses_not_checks() {
        let sink = Shared::default();
        let recorder = RecordWriter::new(sink.clone(), u64::MAX);
        let mem: GuestMemoryMmap = memory();
        mem.write_slice(&[1, 2, 3, 4], GuestAddress(0x100)).unwrap();
        let recording = RecordingMemory::new(&mem, &recorder);
        assert!(recording.physical_memory().is_none());
        assert!(recording.check_range(GuestAddress(0x100), 4, Permissions::Read));
        assert!(!recording.check_range(GuestAddress(HOLE), 4, Permissions::Read));
        // A read, a write recorded at the next access, a read-write, and accesses that record
        // nothing: empty, outside memory, or without permissions.
        let mut word = [0u8; 2];
        recording
            .read_slice(&mut word, GuestAddress(0x100))
            .unwrap();
        recording.write_slice(&[9, 9], GuestAddress(0x102)).unwrap();
        for access in [Permissions::ReadWrite, Permissions::No] {
            let _ = recording
                .get_slices(GuestAddress(0x100), 4, access)
                .unwrap();
        }
        let _ = recording.get_slices(GuestAddress(0x100), 0, Permissions::Read);
        assert!(recording.read_slice(&mut word, GuestAddress(HOLE)).is_err());
        recording.write_slice(&[7], GuestAddress(0x103)).unwrap();
        recording.finish();
        recorder.finish();
        let at = Attribution::Outside { exits_before: 0 };
        let memory = |gpa, direction, bytes: &[u8]| Record::Memory {
            at,
            gpa,
            direction,
            data: Data::Inline(bytes.to_vec()),
        };
        assert_eq!(
            sink.records(),
            [
                memory(0x100, Direction::Read, &[1, 2]),
                memory(0x102, Direction::Write, &[9, 9]),
                memory(0x100, Direction::Read, &[1, 2, 9, 9]),
                memory(0x100, Direction::Write, &[1, 2, 9, 9]),
                memory(0x103, Direction::Write, &[7]),
            ]
        );
    }
}
