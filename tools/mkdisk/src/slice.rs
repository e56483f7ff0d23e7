//! A window onto part of a device, so a file system sees a partition as a whole volume.

use std::io::{self, Read, Seek, SeekFrom, Write};

/// `len` bytes of `inner` from byte `start`, as a device of its own: offsets are relative to
/// `start`, reads end at the window's end, and writes past it fail with
/// [`io::ErrorKind::WriteZero`] instead of touching the rest of the device.
#[derive(Debug)]
pub struct PartitionSlice<D> {
    inner: D,
    start: u64,
    len: u64,
    pos: u64,
}

impl<D: Seek> PartitionSlice<D> {
    /// The window `start..start + len` of `inner`, positioned at its beginning.
    pub fn new(inner: D, start: u64, len: u64) -> io::Result<Self> {
        if start.checked_add(len).is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "partition window overflows the device's address space",
            ));
        }
        Ok(Self {
            inner,
            start,
            len,
            pos: 0,
        })
    }

    /// The window's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Gives the device back.
    pub fn into_inner(self) -> D {
        self.inner
    }

    /// Bytes from the position to the window's end, capped at `want`.
    fn room(&self, want: usize) -> usize {
        let left = self.len.saturating_sub(self.pos);
        usize::try_from(left).map_or(want, |left| left.min(want))
    }

    fn seek_inner(&mut self) -> io::Result<()> {
        // `pos <= len` when this is called with bytes to move, so the sum does not overflow
        // (checked in `new`).
        self.inner.seek(SeekFrom::Start(self.start + self.pos))?;
        Ok(())
    }
}

impl<D: Read + Seek> Read for PartitionSlice<D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.room(buf.len());
        if n == 0 {
            return Ok(0);
        }
        self.seek_inner()?;
        let read = self.inner.read(&mut buf[..n])?;
        self.pos += read as u64;
        Ok(read)
    }
}

impl<D: Write + Seek> Write for PartitionSlice<D> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.room(buf.len());
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the partition",
            ));
        }
        self.seek_inner()?;
        let written = self.inner.write(&buf[..n])?;
        self.pos += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<D: Seek> Seek for PartitionSlice<D> {
    fn seek(&mut self, from: SeekFrom) -> io::Result<u64> {
        let target = match from {
            SeekFrom::Start(offset) => Some(offset),
            SeekFrom::End(delta) => self.len.checked_add_signed(delta),
            SeekFrom::Current(delta) => self.pos.checked_add_signed(delta),
        };
        match target {
            Some(pos) => {
                self.pos = pos;
                Ok(pos)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the partition",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn reads_and_writes_stay_inside_the_window() {
        let mut device = Cursor::new(vec![0u8; 16]);
        {
            let mut slice = PartitionSlice::new(&mut device, 4, 8).unwrap();
            assert_eq!(slice.len(), 8);
            assert!(!slice.is_empty());
            assert_eq!(slice.write(b"abcdefghij").unwrap(), 8);
            assert_eq!(
                slice.write(b"x").unwrap_err().kind(),
                io::ErrorKind::WriteZero
            );
            assert_eq!(slice.write(b"").unwrap(), 0);
            assert_eq!(slice.seek(SeekFrom::End(-3)).unwrap(), 5);
            let mut buf = [0u8; 8];
            assert_eq!(slice.read(&mut buf).unwrap(), 3);
            assert_eq!(&buf[..3], b"fgh");
            assert_eq!(slice.read(&mut buf).unwrap(), 0);
            assert_eq!(slice.seek(SeekFrom::Current(-8)).unwrap(), 0);
            assert_eq!(slice.seek(SeekFrom::Start(100)).unwrap(), 100);
            assert_eq!(slice.read(&mut buf).unwrap(), 0);
            assert!(slice.seek(SeekFrom::Current(-101)).is_err());
            assert!(slice.seek(SeekFrom::End(-9)).is_err());
            slice.flush().unwrap();
        }
        assert_eq!(&device.get_ref()[..], b"\0\0\0\0abcdefgh\0\0\0\0");
    }

    #[test]
    fn window_must_fit_the_address_space() {
        let device = Cursor::new(Vec::<u8>::new());
        assert!(PartitionSlice::new(device, u64::MAX, 1).is_err());
        let empty = PartitionSlice::new(Cursor::new(Vec::<u8>::new()), 0, 0).unwrap();
        assert!(empty.is_empty());
        assert!(empty.into_inner().get_ref().is_empty());
    }
}
