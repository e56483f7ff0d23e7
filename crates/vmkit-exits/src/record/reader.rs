//! [`RecordReader`]: parses a recording, which may be truncated, corrupt or hostile, into
//! records.

use std::io::{self, BufReader, Read};

use super::codec::{self, DecodeError, MAX_LEB_LEN};
use super::{HEADER_LEN, MAGIC, MAX_RECORD_LEN, Record, VERSION};

/// Why a recording cannot be read.
#[derive(Debug, displaydoc::Display, thiserror::Error)]
pub enum ReadError {
    /// cannot read the recording
    Io(#[source] io::Error),
    /// not an exit recording (its first bytes are not the recording magic)
    BadMagic,
    /// recording format version {0} is not supported (this reader reads version 1)
    UnsupportedVersion(u16),
    /// the recording ends inside the record at byte {offset}
    Truncated {
        /// Where the record starts.
        offset: u64,
    },
    /// the record at byte {offset} has unknown tag {tag:#04x}
    UnknownTag {
        /// Where the record starts.
        offset: u64,
        /// Its tag.
        tag: u8,
    },
    /// the record at byte {offset} claims {len} bytes, more than a record may have
    TooLong {
        /// Where the record starts.
        offset: u64,
        /// The length it claims.
        len: u64,
    },
    /// the record at byte {offset} is malformed: {reason}
    Malformed {
        /// Where the record starts.
        offset: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Reads a recording's records in file order.
///
/// [`new`](Self::new) checks the header; the iterator then yields each record, or the first
/// error, after which it ends. Every length is checked against what the input holds before
/// anything is allocated for it, so a hostile length costs no memory, and no input panics.
#[derive(Debug)]
pub struct RecordReader<R: Read> {
    input: BufReader<R>,
    offset: u64,
    done: bool,
}

impl<R: Read> RecordReader<R> {
    /// Reads and checks the header of `input`.
    pub fn new(input: R) -> Result<Self, ReadError> {
        let mut input = BufReader::new(input);
        let mut header = [0u8; HEADER_LEN];
        let mut got = 0;
        while got < HEADER_LEN {
            match input.read(&mut header[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
        if got < MAGIC.len() || header[..8] != MAGIC {
            return Err(ReadError::BadMagic);
        }
        if got < HEADER_LEN {
            return Err(ReadError::Truncated { offset: 0 });
        }
        let version = u16::from_le_bytes([header[8], header[9]]);
        if version != VERSION {
            return Err(ReadError::UnsupportedVersion(version));
        }
        Ok(Self {
            input,
            offset: HEADER_LEN as u64,
            done: false,
        })
    }

    /// Every record, or the first error.
    pub fn read_all(self) -> Result<Vec<Record>, ReadError> {
        self.collect()
    }

    /// One byte, or `None` at the end of the input.
    fn byte(&mut self) -> Result<Option<u8>, ReadError> {
        let mut byte = [0u8; 1];
        loop {
            return match self.input.read(&mut byte) {
                Ok(0) => Ok(None),
                Ok(_) => Ok(Some(byte[0])),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(ReadError::Io(e)),
            };
        }
    }

    fn next_record(&mut self) -> Result<Option<Record>, ReadError> {
        let offset = self.offset;
        let Some(tag) = self.byte()? else {
            return Ok(None);
        };
        let truncated = ReadError::Truncated { offset };
        // The payload's length, LEB128.
        let mut len = 0u64;
        let mut header_len = 1u64;
        for i in 0..MAX_LEB_LEN {
            let byte = self.byte()?.ok_or(ReadError::Truncated { offset })?;
            header_len += 1;
            let bits = u64::from(byte & 0x7f);
            if i == MAX_LEB_LEN - 1 && (bits > 1 || byte & 0x80 != 0) {
                return Err(ReadError::Malformed {
                    offset,
                    reason: "record length overflows 64 bits",
                });
            }
            len |= bits << (7 * i);
            if byte & 0x80 == 0 {
                break;
            }
        }
        if len > MAX_RECORD_LEN {
            return Err(ReadError::TooLong { offset, len });
        }
        // Grows with what the input holds, not with what the length claims.
        let mut payload = Vec::new();
        (&mut self.input)
            .take(len)
            .read_to_end(&mut payload)
            .map_err(ReadError::Io)?;
        if (payload.len() as u64) < len {
            return Err(truncated);
        }
        self.offset += header_len + len;
        match codec::decode(tag, &payload) {
            Ok(Some(record)) => Ok(Some(record)),
            Ok(None) => Err(ReadError::UnknownTag { offset, tag }),
            Err(DecodeError::Short) => Err(ReadError::Malformed {
                offset,
                reason: "a field runs past the end of the record",
            }),
            Err(DecodeError::Invalid(reason)) => Err(ReadError::Malformed { offset, reason }),
        }
    }
}

impl<R: Read> Iterator for RecordReader<R> {
    type Item = Result<Record, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_record() {
            Ok(Some(record)) => Some(Ok(record)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl<R: Read> std::iter::FusedIterator for RecordReader<R> {}
