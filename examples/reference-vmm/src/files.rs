//! The user's input files, checked before they are read: a kernel, firmware or initramfs is a
//! regular file of at most [`MAX_IMAGE_SIZE`] bytes, a disk a regular file or a block device.
//! Special files are refused without blocking: the file is opened with `O_NONBLOCK` (so a FIFO
//! with no writer does not wait for one), its type checked with `fstat`, and only then is
//! `O_NONBLOCK` cleared.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{Context, Result, bail};

/// The largest kernel, firmware or initramfs the VMM reads: 1 GiB.
pub const MAX_IMAGE_SIZE: u64 = 1 << 30;

/// What a file is, for messages.
pub fn kind(file_type: std::fs::FileType) -> &'static str {
    if file_type.is_file() {
        "a regular file"
    } else if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

/// Opens `path` for reading without blocking on a FIFO, and says what it is.
fn open_nonblocking(path: &Path) -> io::Result<(File, std::fs::FileType, u64)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let metadata = file.metadata()?;
    Ok((file, metadata.file_type(), metadata.len()))
}

/// Clears `O_NONBLOCK` on `file`, so reads wait for the data as usual.
pub fn set_blocking(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: `fd` is open for the duration of the call (owned by `file`); F_GETFL reads the
    // descriptor's status flags and touches no memory.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above; F_SETFL only changes the status flags of that open file.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads the kernel, firmware or initramfs `path` (`what` names it in messages): a regular file
/// of at most [`MAX_IMAGE_SIZE`] bytes.
pub fn read_image(what: &str, path: &Path) -> Result<Vec<u8>> {
    read_image_limited(what, path, MAX_IMAGE_SIZE)
}

fn read_image_limited(what: &str, path: &Path, max: u64) -> Result<Vec<u8>> {
    let name = || format!("{what} {}", path.display());
    let (file, file_type, size) =
        open_nonblocking(path).with_context(|| format!("cannot read {}", name()))?;
    if !file_type.is_file() {
        bail!("{} is {}, not a regular file", name(), kind(file_type));
    }
    if size > max {
        bail!(
            "{} is {size} bytes, more than the {max} bytes a {what} may have",
            name()
        );
    }
    set_blocking(&file).with_context(|| format!("cannot read {}", name()))?;
    // A file that grows while it is read is cut at the limit plus one byte, and refused.
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", name()))?;
    if bytes.len() as u64 > max {
        bail!("{} grew past {max} bytes while it was read", name());
    }
    Ok(bytes)
}

/// Refuses a disk `path` that is neither a regular file nor a block device (a FIFO, a character
/// device such as `/dev/zero`, a socket), without blocking. A path that cannot be opened or is
/// a directory is left to the disk image's own checks, which name the problem.
pub fn check_disk(path: &Path) -> Result<()> {
    let Ok((_, file_type, _)) = open_nonblocking(path) else {
        return Ok(());
    };
    if file_type.is_file() || file_type.is_block_device() || file_type.is_dir() {
        return Ok(());
    }
    bail!(
        "disk image {} is {}, not a regular file or a block device",
        path.display(),
        kind(file_type)
    )
}

/// Opens `path` for appending guest output (creating it), refusing a FIFO nobody reads instead
/// of waiting for a reader.
pub fn open_output(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENXIO) => io::Error::other("a FIFO with no reader"),
            _ => e,
        })?;
    set_blocking(&file)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("vmkit-files-{}-{name}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn fifo(&self, name: &str) -> PathBuf {
            let path = self.0.join(name);
            let c = CString::new(path.as_os_str().as_bytes()).unwrap();
            // SAFETY: `c` is a NUL-terminated path that lives for the call.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn images_are_regular_files_under_the_limit() {
        let dir = TempDir::new("images");
        let small = dir.0.join("small");
        std::fs::write(&small, b"kernel").unwrap();
        assert_eq!(read_image("kernel", &small).unwrap(), b"kernel");
        let err = read_image_limited("kernel", &small, 5).unwrap_err();
        assert!(
            err.to_string().contains("6 bytes, more than the 5 bytes"),
            "{err}"
        );
        let err = read_image("initramfs", &dir.0).unwrap_err();
        assert!(err.to_string().contains("is a directory"), "{err}");
        let err = read_image("kernel", Path::new("/dev/zero")).unwrap_err();
        assert!(
            err.to_string()
                .contains("/dev/zero is a character device, not a regular file"),
            "{err}"
        );
        let err = read_image("kernel", &dir.0.join("missing")).unwrap_err();
        assert!(
            format!("{err:#}").starts_with("cannot read kernel"),
            "{err:#}"
        );
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = TempDir::new("fifo");
        let fifo = dir.fifo("fifo");
        let start = Instant::now();
        let err = read_image("firmware", &fifo).unwrap_err();
        assert!(err.to_string().contains("is a FIFO"), "{err}");
        let err = check_disk(&fifo).unwrap_err();
        assert!(
            err.to_string()
                .contains("is a FIFO, not a regular file or a block device"),
            "{err}"
        );
        let err = open_output(&fifo).unwrap_err();
        assert!(err.to_string().contains("no reader"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn disks_are_regular_files_or_block_devices() {
        let dir = TempDir::new("disks");
        let image = dir.0.join("disk.img");
        std::fs::write(&image, [0u8; 512]).unwrap();
        check_disk(&image).unwrap();
        // Left to the disk image's own messages.
        check_disk(&dir.0).unwrap();
        check_disk(&dir.0.join("missing")).unwrap();
        let err = check_disk(Path::new("/dev/zero")).unwrap_err();
        assert!(err.to_string().contains("a character device"), "{err}");
    }

    #[test]
    fn output_files_are_appended() {
        let dir = TempDir::new("output");
        let path = dir.0.join("serial.log");
        std::fs::write(&path, b"old ").unwrap();
        let mut file = open_output(&path).unwrap();
        std::io::Write::write_all(&mut file, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"old new");
    }
}
