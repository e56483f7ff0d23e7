//! The disk under the fuzzed device: in memory, or a sparse file of realistic size. Either way
//! it counts every call (the per-exit bound is asserted on the counts), checks that every call
//! stays inside the disk, and can be told to fail.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use vmkit_devices::{DiskBackend, DiskImage, MemDisk, virtio::block::SERIAL_LEN};

/// Size of the file-backed disk: a realistic guest disk, sparse on the host.
pub const FILE_DISK_BYTES: u64 = 256 << 20;

/// The file behind file-backed runs: created once per process and unlinked at once, so it
/// lives exactly as long as the process; each run opens it again by its descriptor's path.
struct SharedFile {
    file: File,
    /// Runs take turns on the file (an image is locked while open).
    turn: Mutex<()>,
}

fn shared_file() -> &'static SharedFile {
    static FILE: OnceLock<SharedFile> = OnceLock::new();
    FILE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("vmkit-fuzz-blk-{}.img", std::process::id()));
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .expect("a temporary file for the disk image");
        let _ = std::fs::remove_file(&path);
        file.set_len(FILE_DISK_BYTES)
            .expect("a sparse file of the disk's size");
        SharedFile {
            file,
            turn: Mutex::new(()),
        }
    })
}

enum Backend {
    Memory(MemDisk),
    File(DiskImage),
}

/// Calls a disk took, counted since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskCalls {
    /// Reads, writes and flushes, failed ones included.
    pub calls: u64,
    /// Bytes the reads and writes asked for.
    pub bytes: u64,
    /// Writes that changed the disk.
    pub writes: u64,
}

/// The fuzzed device's disk.
pub struct FuzzDisk {
    backend: Backend,
    failing: bool,
    counts: DiskCalls,
    /// Ranges written to the shared file, zeroed again when the run ends.
    written: Vec<(u64, usize)>,
}

/// Exclusive use of the shared file for one run (released after the disk is dropped).
pub struct FileTurn {
    _guard: MutexGuard<'static, ()>,
}

impl FuzzDisk {
    /// A disk of `data` in memory.
    pub fn memory(data: Vec<u8>, read_only: bool) -> Self {
        Self::with(Backend::Memory(MemDisk::new(data, read_only)))
    }

    /// The shared sparse file of [`FILE_DISK_BYTES`], and the turn that keeps other runs off it
    /// (drop it after the disk).
    pub fn file(read_only: bool) -> (Self, FileTurn) {
        let shared = shared_file();
        let turn = shared.turn.lock().unwrap_or_else(PoisonError::into_inner);
        let path = format!("/proc/self/fd/{}", shared.file.as_raw_fd());
        let image = DiskImage::open(path, read_only).expect("the shared disk file opens");
        (Self::with(Backend::File(image)), FileTurn { _guard: turn })
    }

    fn with(backend: Backend) -> Self {
        Self {
            backend,
            failing: false,
            counts: DiskCalls::default(),
            written: Vec::new(),
        }
    }

    /// The calls so far.
    pub fn counts(&self) -> DiskCalls {
        self.counts
    }

    /// The contents of an in-memory disk.
    pub fn memory_data(&self) -> Option<&[u8]> {
        match &self.backend {
            Backend::Memory(disk) => Some(disk.data()),
            Backend::File(_) => None,
        }
    }

    /// Makes every later call fail (`true`) or succeed again.
    pub fn set_failing(&mut self, failing: bool) {
        self.failing = failing;
    }

    fn backend(&mut self) -> &mut dyn DiskBackend {
        match &mut self.backend {
            Backend::Memory(disk) => disk,
            Backend::File(disk) => disk,
        }
    }

    /// Counts a call of `len` bytes at `offset` and checks that it lies inside the disk (the
    /// device checks requests before it calls in); then whether it may go ahead.
    fn call(&mut self, offset: u64, len: usize) -> io::Result<()> {
        self.counts.calls += 1;
        self.counts.bytes += len as u64;
        let end = offset.checked_add(len as u64);
        assert!(
            end.is_some_and(|end| end <= self.size()),
            "a disk call of {len} bytes at {offset:#x} outside the disk"
        );
        match self.failing {
            true => Err(io::Error::other("disk configured to fail")),
            false => Ok(()),
        }
    }
}

impl DiskBackend for FuzzDisk {
    fn size(&self) -> u64 {
        match &self.backend {
            Backend::Memory(disk) => disk.size(),
            Backend::File(disk) => disk.size(),
        }
    }

    fn read_only(&self) -> bool {
        match &self.backend {
            Backend::Memory(disk) => disk.read_only(),
            Backend::File(disk) => disk.read_only(),
        }
    }

    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.call(offset, buf.len())?;
        self.backend().read_exact_at(buf, offset)
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.call(offset, buf.len())?;
        self.backend().write_all_at(buf, offset)?;
        self.counts.writes += 1;
        if matches!(self.backend, Backend::File(_)) {
            self.written.push((offset, buf.len()));
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.call(0, 0)?;
        self.backend().flush()
    }

    fn serial(&self) -> [u8; SERIAL_LEN] {
        match &self.backend {
            Backend::Memory(disk) => disk.serial(),
            Backend::File(disk) => disk.serial(),
        }
    }
}

impl Drop for FuzzDisk {
    /// Zeroes what the run wrote to the shared file, so every run starts from the same disk.
    fn drop(&mut self) {
        let written = std::mem::take(&mut self.written);
        for (offset, len) in written {
            let _ = self.backend().write_all_at(&vec![0; len], offset);
        }
    }
}
