//! [`RecordWriter`]: appends records from any thread to one sink, buffered, within a size limit.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use log::warn;

use super::codec::{self, MAX_LEB_LEN};
use super::context;
use super::{Attribution, ContentHash, HEADER_LEN, MAX_RECORD_LEN, Record, header};

/// Bytes buffered before they are written to the sink.
const BUFFER_LEN: usize = 64 << 10;
/// The most bytes a [`Record::Truncated`] takes: tag, length, attribution.
const TRUNCATED_LEN: u64 = 2 + MAX_LEB_LEN as u64;

/// What a [`RecordWriter`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordStats {
    /// Records written (payloads included, the final truncation marker not).
    pub records: u64,
    /// Distinct payloads stored.
    pub payloads: u64,
    /// Bytes written, header included (once [`finish`](RecordWriter::finish)ed: bytes in the
    /// sink; after a write error, those written before the failed write).
    pub bytes: u64,
    /// Records not written: past the size limit, lost with a failed write or handed in after
    /// it, after `finish`, or longer than [`MAX_RECORD_LEN`].
    pub dropped: u64,
    /// Whether the size limit was reached (the recording ends with [`Record::Truncated`]).
    pub limit_reached: bool,
    /// Why the sink stopped taking bytes, if it did (a full disk: `StorageFull`).
    pub failure: Option<io::ErrorKind>,
}

impl std::fmt::Display for RecordStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} records ({} payloads), {} bytes written",
            self.records, self.payloads, self.bytes
        )?;
        if self.limit_reached {
            write!(f, "; size limit reached, {} records dropped", self.dropped)?;
        } else if let Some(kind) = self.failure {
            write!(
                f,
                "; write failed ({kind}), {} records dropped",
                self.dropped
            )?;
        } else if self.dropped > 0 {
            write!(f, "; {} records dropped", self.dropped)?;
        }
        Ok(())
    }
}

/// Writes a recording: the header, then every record handed to it, from any thread.
///
/// It hands out the exits' sequence numbers ([`begin_exit`](Self::begin_exit)) and attributes
/// the records of decorators to the exit current on their thread
/// ([`attribution`](Self::attribution)). Records go through a 64 KiB buffer to the sink, under
/// one lock. Nothing it meets panics or stops the VM: a record that would take the recording
/// past `limit` bytes is replaced by a final [`Record::Truncated`] and everything after it is
/// dropped and counted; a sink that fails (a full disk) stops the recording, with one log line
/// and the error kind in [`stats`](Self::stats).
pub struct RecordWriter {
    next_seq: AtomicU64,
    state: Mutex<State>,
}

struct State {
    sink: Option<Box<dyn Write + Send>>,
    buffer: Vec<u8>,
    scratch: Vec<u8>,
    limit: u64,
    stats: RecordStats,
    payloads: BTreeSet<ContentHash>,
    /// Bytes the sink took.
    flushed: u64,
    /// Records in `buffer`.
    buffered: u64,
}

impl std::fmt::Debug for RecordWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordWriter")
            .field("next_seq", &self.next_seq)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl RecordWriter {
    /// A writer to `sink` of at most `limit` bytes (header and truncation marker included; a
    /// limit below the header and one marker is raised to that).
    pub fn new(sink: impl Write + Send + 'static, limit: u64) -> Self {
        let mut buffer = Vec::with_capacity(BUFFER_LEN);
        buffer.extend_from_slice(&header());
        Self {
            next_seq: AtomicU64::new(0),
            state: Mutex::new(State {
                sink: Some(Box::new(sink)),
                buffer,
                scratch: Vec::new(),
                limit: limit.max(HEADER_LEN as u64 + TRUNCATED_LEN),
                stats: RecordStats {
                    bytes: HEADER_LEN as u64,
                    ..RecordStats::default()
                },
                payloads: BTreeSet::new(),
                flushed: 0,
                buffered: 0,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the next exit's sequence number.
    pub fn begin_exit(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// How many sequence numbers were taken.
    pub fn exits(&self) -> u64 {
        self.next_seq.load(Ordering::Relaxed)
    }

    /// The exit a record made now on this thread belongs to: the exit this thread is handling,
    /// or, outside any, the number of exits sequenced so far.
    pub fn attribution(&self) -> Attribution {
        match context::current_exit() {
            Some(seq) => Attribution::Exit(seq),
            None => Attribution::Outside {
                exits_before: self.exits(),
            },
        }
    }

    /// Appends `record`.
    pub fn write(&self, record: &Record) {
        let mut state = self.state();
        let mut scratch = std::mem::take(&mut state.scratch);
        scratch.clear();
        record.encode(&mut scratch);
        let at = record.attribution().unwrap_or_else(|| self.attribution());
        state.append(&scratch, at);
        state.scratch = scratch;
    }

    /// Stores `bytes` as a [`Record::Payload`] unless a payload of the same content is stored
    /// already, and returns its hash for the records that refer to it.
    pub fn store_payload(&self, bytes: &[u8]) -> ContentHash {
        // Hashing is the expensive part: outside the lock.
        let hash = ContentHash::of(bytes);
        let mut state = self.state();
        if state.payloads.contains(&hash) {
            return hash;
        }
        let mut scratch = std::mem::take(&mut state.scratch);
        scratch.clear();
        codec::encode_payload(&hash, bytes, &mut scratch);
        if state.append(&scratch, self.attribution()) {
            state.payloads.insert(hash);
            state.stats.payloads += 1;
        }
        state.scratch = scratch;
        hash
    }

    /// Writes what is buffered to the sink.
    pub fn flush(&self) {
        self.state().flush();
    }

    /// Writes what is buffered, flushes and drops the sink (closing a file on the calling
    /// thread); later records are dropped. Returns the final statistics.
    pub fn finish(&self) -> RecordStats {
        let mut state = self.state();
        state.flush();
        if let Some(mut sink) = state.sink.take()
            && let Err(e) = sink.flush()
        {
            state.fail(&e);
        }
        state.stats
    }

    /// What was written so far.
    pub fn stats(&self) -> RecordStats {
        self.state().stats
    }
}

impl State {
    /// Appends one encoded record; returns whether it was kept.
    fn append(&mut self, encoded: &[u8], at: Attribution) -> bool {
        let len = encoded.len() as u64;
        let payload_too_long = len > MAX_RECORD_LEN + 1 + MAX_LEB_LEN as u64;
        if self.sink.is_none() || self.stats.limit_reached || payload_too_long {
            self.stats.dropped += 1;
            return false;
        }
        if self.stats.bytes + len + TRUNCATED_LEN > self.limit {
            let mut marker = Vec::with_capacity(TRUNCATED_LEN as usize);
            Record::Truncated { at }.encode(&mut marker);
            self.buffer.extend_from_slice(&marker);
            self.stats.bytes += marker.len() as u64;
            self.stats.limit_reached = true;
            self.stats.dropped += 1;
            self.flush();
            return false;
        }
        self.buffer.extend_from_slice(encoded);
        self.stats.bytes += len;
        self.stats.records += 1;
        self.buffered += 1;
        if self.buffer.len() >= BUFFER_LEN {
            self.flush();
        }
        true
    }

    fn flush(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        let Some(sink) = self.sink.as_mut() else {
            return;
        };
        match sink.write_all(&self.buffer) {
            Ok(()) => self.flushed += self.buffer.len() as u64,
            Err(e) => {
                // What the buffer held is lost (some of it may be in the sink).
                self.stats.records -= self.buffered;
                self.stats.dropped += self.buffered;
                self.fail(&e);
            }
        }
        self.buffered = 0;
        self.buffer.clear();
    }

    /// The sink failed: the recording stops here.
    fn fail(&mut self, e: &io::Error) {
        warn!("exit recording stopped: cannot write the recording: {e}");
        self.stats.failure = Some(e.kind());
        self.stats.bytes = self.flushed;
        self.sink = None;
    }
}
