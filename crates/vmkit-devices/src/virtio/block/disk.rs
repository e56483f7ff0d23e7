//! Disk backends: a raw image file (`DiskImage`, advisory-locked, positional I/O; feature
//! `file-disk`) and an in-memory disk ([`MemDisk`]) for tests and fuzzing.

use std::io;
use std::path::PathBuf;
#[cfg(feature = "file-disk")]
use std::{
    fs::{File, OpenOptions},
    io::{Seek, SeekFrom},
    os::fd::AsRawFd,
    os::unix::fs::{FileExt, MetadataExt},
    path::Path,
};

/// Bytes per sector: the unit of virtio-blk addresses and capacity.
pub const SECTOR_SIZE: u64 = 512;
/// Bytes of a virtio-blk device ID (`VIRTIO_BLK_T_GET_ID`).
pub const SERIAL_LEN: usize = 20;

/// Storage behind a virtio-blk device. Offsets and lengths are checked by the device before it
/// calls in: every access lies inside `0..size()`.
pub trait DiskBackend: Send {
    /// Size in bytes, a multiple of [`SECTOR_SIZE`].
    fn size(&self) -> u64;
    /// Whether writes are refused (the device offers `VIRTIO_BLK_F_RO`).
    fn read_only(&self) -> bool;
    /// Fills `buf` from `offset`.
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes completed writes durable.
    fn flush(&mut self) -> io::Result<()>;
    /// The device ID reported to `GET_ID` (zero-padded).
    fn serial(&self) -> [u8; SERIAL_LEN] {
        [0; SERIAL_LEN]
    }
}

/// A boxed backend is a backend: a VMM can choose its disks' decorators at run time.
impl<D: DiskBackend + ?Sized> DiskBackend for Box<D> {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_only(&self) -> bool {
        (**self).read_only()
    }
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        (**self).write_all_at(buf, offset)
    }
    fn flush(&mut self) -> io::Result<()> {
        (**self).flush()
    }
    fn serial(&self) -> [u8; SERIAL_LEN] {
        (**self).serial()
    }
}

/// Why a disk image cannot be used; the message names the path for the VMM to print.
#[derive(Debug, displaydoc::Display, thiserror::Error)]
#[ignore_extra_doc_attributes]
pub enum DiskError {
    /// disk image {0} does not exist
    NotFound(PathBuf),
    /// disk image {path} cannot be opened or read
    Unreadable {
        /// The image.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// disk image {path} is {size} bytes, not a multiple of 512
    SizeNotSectorMultiple {
        /// The image.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// disk image {0} is locked by another process (another VMM using it?)
    Locked(PathBuf),
    /// disk image {path} cannot be locked
    LockFailed {
        /// The image.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
}

/// A raw disk image file (or block device), locked against other users while open: exclusively
/// when writable, shared when read-only, so two VMMs never write one image (`flock`, advisory:
/// it binds processes that also lock, as VMMs do).
#[cfg(feature = "file-disk")]
#[cfg_attr(docsrs, doc(cfg(feature = "file-disk")))]
#[derive(Debug)]
pub struct DiskImage {
    file: File,
    path: PathBuf,
    size: u64,
    read_only: bool,
    serial: [u8; SERIAL_LEN],
}

#[cfg(feature = "file-disk")]
impl DiskImage {
    /// Opens and locks `path`; its size must be a multiple of 512 bytes.
    pub fn open(path: impl AsRef<Path>, read_only: bool) -> Result<Self, DiskError> {
        let path = path.as_ref().to_path_buf();
        let unreadable = |source| DiskError::Unreadable {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(&path)
            .map_err(|source| match source.kind() {
                io::ErrorKind::NotFound => DiskError::NotFound(path.clone()),
                _ => unreadable(source),
            })?;
        let metadata = file.metadata().map_err(unreadable)?;
        if metadata.is_dir() {
            return Err(unreadable(io::Error::other("is a directory")));
        }
        let operation = if read_only {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        // SAFETY: `file` owns an open descriptor for the duration of the call; flock only
        // reads its arguments and changes the lock state of that descriptor's open file.
        let locked = unsafe { libc::flock(file.as_raw_fd(), operation | libc::LOCK_NB) };
        if locked != 0 {
            let err = io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::EWOULDBLOCK) => DiskError::Locked(path),
                _ => DiskError::LockFailed { path, source: err },
            });
        }
        // Seeking to the end sizes regular files and block devices alike.
        let size = file.seek(SeekFrom::End(0)).map_err(unreadable)?;
        if size % SECTOR_SIZE != 0 {
            return Err(DiskError::SizeNotSectorMultiple { path, size });
        }
        let mut serial = [0u8; SERIAL_LEN];
        let id = format!("{:x}{:x}", metadata.dev(), metadata.ino());
        let n = id.len().min(SERIAL_LEN);
        serial[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(Self {
            file,
            path,
            size,
            read_only,
            serial,
        })
    }

    /// The path the image was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(feature = "file-disk")]
impl DiskBackend for DiskImage {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from(io::ErrorKind::PermissionDenied));
        }
        self.file.write_all_at(buf, offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }

    /// The image's device and inode numbers in hex: stable for the file, distinct per file.
    fn serial(&self) -> [u8; SERIAL_LEN] {
        self.serial
    }
}

/// A disk held in memory (its size rounded down to whole sectors). It can be told to fail, to
/// exercise a device's error paths.
#[derive(Clone, Debug, Default)]
pub struct MemDisk {
    data: Vec<u8>,
    read_only: bool,
    failing: bool,
    flushes: u64,
}

impl MemDisk {
    /// A disk holding `data` (bytes past the last whole sector are not part of it).
    pub fn new(mut data: Vec<u8>, read_only: bool) -> Self {
        data.truncate(data.len() - data.len() % SECTOR_SIZE as usize);
        Self {
            data,
            read_only,
            failing: false,
            flushes: 0,
        }
    }

    /// The disk's bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Makes every later read, write and flush fail (`true`) or succeed again.
    pub fn set_failing(&mut self, failing: bool) {
        self.failing = failing;
    }

    /// How many flushes succeeded.
    pub fn flushes(&self) -> u64 {
        self.flushes
    }

    fn range(&self, offset: u64, len: usize) -> io::Result<std::ops::Range<usize>> {
        if self.failing {
            return Err(io::Error::other("disk configured to fail"));
        }
        usize::try_from(offset)
            .ok()
            .and_then(|start| Some(start..start.checked_add(len)?))
            .filter(|r| r.end <= self.data.len())
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
    }
}

impl DiskBackend for MemDisk {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let range = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.data[range]);
        Ok(())
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from(io::ErrorKind::PermissionDenied));
        }
        let range = self.range(offset, buf.len())?;
        self.data[range].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.range(0, 0)?;
        self.flushes += 1;
        Ok(())
    }

    fn serial(&self) -> [u8; SERIAL_LEN] {
        let mut serial = [0u8; SERIAL_LEN];
        serial[..6].copy_from_slice(b"memory");
        serial
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::tempfile::TempFile;

    fn image(len: usize) -> TempFile {
        let file = TempFile::new().unwrap();
        file.as_file().set_len(len as u64).unwrap();
        file
    }

    #[test]
    fn opens_and_does_positional_io() {
        let tmp = image(4096);
        let mut disk = DiskImage::open(tmp.as_path(), false).unwrap();
        assert_eq!(disk.size(), 4096);
        assert!(!disk.read_only());
        assert_eq!(disk.path(), tmp.as_path());
        disk.write_all_at(b"hello", 512).unwrap();
        disk.flush().unwrap();
        let mut buf = [0u8; 5];
        disk.read_exact_at(&mut buf, 512).unwrap();
        assert_eq!(&buf, b"hello");
        assert!(disk.read_exact_at(&mut buf, 4094).is_err(), "past the end");
        assert_ne!(disk.serial(), [0; SERIAL_LEN]);
    }

    #[test]
    fn writable_images_are_locked_exclusively() {
        let tmp = image(512);
        let first = DiskImage::open(tmp.as_path(), false).unwrap();
        for read_only in [false, true] {
            let err = DiskImage::open(tmp.as_path(), read_only).unwrap_err();
            assert!(matches!(err, DiskError::Locked(_)), "{err}");
            assert!(err.to_string().contains("locked"));
        }
        drop(first);
        // Read-only users share the image, and keep writers out.
        let a = DiskImage::open(tmp.as_path(), true).unwrap();
        let _b = DiskImage::open(tmp.as_path(), true).unwrap();
        assert!(matches!(
            DiskImage::open(tmp.as_path(), false),
            Err(DiskError::Locked(_))
        ));
        assert!(a.read_only());
    }

    #[test]
    fn read_only_images_refuse_writes() {
        let tmp = image(1024);
        let mut disk = DiskImage::open(tmp.as_path(), true).unwrap();
        assert_eq!(
            disk.write_all_at(&[1], 0).unwrap_err().kind(),
            io::ErrorKind::PermissionDenied
        );
        disk.flush().unwrap();
        let mut buf = [0xFFu8; 4];
        disk.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(buf, [0; 4]);
    }

    #[test]
    fn open_reports_typed_errors() {
        let err = DiskImage::open("/nonexistent/vmkit/disk.img", true).unwrap_err();
        assert!(matches!(err, DiskError::NotFound(_)), "{err}");
        assert!(err.to_string().contains("does not exist"));

        let odd = image(1000);
        let err = DiskImage::open(odd.as_path(), false).unwrap_err();
        assert!(
            matches!(err, DiskError::SizeNotSectorMultiple { size: 1000, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("1000 bytes"));

        let dir = std::env::temp_dir();
        let err = DiskImage::open(&dir, true).unwrap_err();
        assert!(matches!(err, DiskError::Unreadable { .. }), "{err}");

        let ro = image(512);
        let mut perms = ro.as_file().metadata().unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o400);
        std::fs::set_permissions(ro.as_path(), perms).unwrap();
        // Root may write anyway; only check the error's shape when the open fails.
        if let Err(err) = DiskImage::open(ro.as_path(), false) {
            assert!(matches!(err, DiskError::Unreadable { .. }), "{err}");
        }
        let lock = DiskError::LockFailed {
            path: PathBuf::from("x"),
            source: io::Error::other("no locks"),
        };
        assert!(lock.to_string().contains("cannot be locked"));
    }

    #[test]
    fn memory_disk() {
        let mut disk = MemDisk::new(vec![7; 1100], false);
        assert_eq!(disk.size(), 1024);
        disk.write_all_at(&[1, 2], 1022).unwrap();
        assert!(disk.write_all_at(&[1, 2], 1023).is_err());
        assert!(disk.write_all_at(&[1], u64::MAX).is_err());
        let mut buf = [0u8; 2];
        disk.read_exact_at(&mut buf, 1022).unwrap();
        assert_eq!(buf, [1, 2]);
        disk.flush().unwrap();
        assert_eq!(disk.flushes(), 1);
        disk.set_failing(true);
        assert!(disk.read_exact_at(&mut buf, 0).is_err());
        assert!(disk.flush().is_err());
        assert_eq!(&disk.serial()[..6], b"memory");
        let mut ro = MemDisk::new(vec![0; 512], true);
        assert!(ro.read_only());
        assert!(ro.write_all_at(&[1], 0).is_err());
        assert_eq!(ro.data(), &[0; 512][..]);
    }
}
