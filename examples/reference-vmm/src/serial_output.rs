//! The guest's serial output on its way to the host: a bounded buffer that the UART writes into
//! (under its lock, on a vCPU thread) and a thread of its own that drains it to stdout or a file.
//!
//! The UART's side never waits: when the buffer is full because the host does not read (stdout
//! is a pipe nobody reads, a terminal on hold), or when `--serial file=PATH,limit=SIZE` has
//! written its limit, the byte is dropped and counted, and the guest runs on.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

/// Bytes the buffer holds while the host is not reading.
pub const BUFFER_SIZE: usize = 16 << 10;

/// What the drain thread takes from the buffer per write.
const CHUNK: usize = 16 << 10;

#[derive(Debug, Default)]
struct Buffer {
    bytes: VecDeque<u8>,
    closed: bool,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    written: AtomicU64,
    dropped_full: AtomicU64,
    dropped_limit: AtomicU64,
    failed: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    buffer: Mutex<Buffer>,
    ready: Condvar,
    capacity: usize,
    limit: Option<u64>,
    counters: Counters,
}

impl Shared {
    fn buffer(&self) -> MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What became of the guest's serial output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutputStats {
    /// Bytes written to the host.
    pub written: u64,
    /// Bytes dropped because the buffer was full (the host did not read).
    pub dropped_full: u64,
    /// Bytes dropped because the output reached its size limit.
    pub dropped_limit: u64,
    /// Bytes the host refused (a write error).
    pub failed: u64,
    /// Bytes taken into the buffer and not written yet (still queued, or held by a write the
    /// host has not completed).
    pub pending: u64,
}

impl OutputStats {
    /// Every byte the guest sent that did not reach the host.
    pub fn dropped(&self) -> u64 {
        self.dropped_full + self.dropped_limit + self.failed
    }
}

/// The UART's end: a [`Write`] that queues the guest's bytes and never blocks. A byte that does
/// not fit is refused with `WouldBlock` (the UART counts it as lost) and counted here.
#[derive(Clone, Debug)]
pub struct SerialOutput {
    shared: Arc<Shared>,
}

/// The host's end: drains the buffer into the sink; [`SerialDrain::run`] is the body of the
/// serial output thread.
pub struct SerialDrain {
    shared: Arc<Shared>,
    sink: Box<dyn Write + Send>,
}

impl std::fmt::Debug for SerialDrain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDrain").finish_non_exhaustive()
    }
}

/// A buffer of `capacity` bytes in front of `sink`, which receives at most `limit` bytes.
pub fn channel(
    sink: Box<dyn Write + Send>,
    capacity: usize,
    limit: Option<u64>,
) -> (SerialOutput, SerialDrain) {
    let shared = Arc::new(Shared {
        buffer: Mutex::new(Buffer::default()),
        ready: Condvar::new(),
        capacity,
        limit,
        counters: Counters::default(),
    });
    (
        SerialOutput {
            shared: shared.clone(),
        },
        SerialDrain { shared, sink },
    )
}

impl SerialOutput {
    /// What became of the output so far.
    pub fn stats(&self) -> OutputStats {
        let c = &self.shared.counters;
        let written = c.written.load(Ordering::Relaxed);
        let failed = c.failed.load(Ordering::Relaxed);
        OutputStats {
            written,
            dropped_full: c.dropped_full.load(Ordering::Relaxed),
            dropped_limit: c.dropped_limit.load(Ordering::Relaxed),
            failed,
            pending: c
                .accepted
                .load(Ordering::Relaxed)
                .saturating_sub(written + failed),
        }
    }

    /// Ends the output: the drain thread writes what is queued, then returns. Bytes written
    /// after this are dropped.
    pub fn close(&self) {
        self.shared.buffer().closed = true;
        self.shared.ready.notify_all();
    }
}

impl Write for SerialOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let shared = &*self.shared;
        let counters = &shared.counters;
        let mut room = buf.len();
        if let Some(limit) = shared.limit {
            let left = limit.saturating_sub(counters.accepted.load(Ordering::Relaxed));
            room = room.min(usize::try_from(left).unwrap_or(usize::MAX));
            if room == 0 {
                counters
                    .dropped_limit
                    .fetch_add(buf.len() as u64, Ordering::Relaxed);
                return Err(io::ErrorKind::WouldBlock.into());
            }
        }
        let mut buffer = shared.buffer();
        let free = if buffer.closed {
            0
        } else {
            shared.capacity.saturating_sub(buffer.bytes.len())
        };
        let taken = room.min(free);
        if taken == 0 {
            drop(buffer);
            counters
                .dropped_full
                .fetch_add(buf.len() as u64, Ordering::Relaxed);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let was_empty = buffer.bytes.is_empty();
        buffer.bytes.extend(&buf[..taken]);
        drop(buffer);
        counters.accepted.fetch_add(taken as u64, Ordering::Relaxed);
        // The drain thread waits only on an empty buffer, so only the first byte wakes it.
        if was_empty {
            shared.ready.notify_one();
        }
        Ok(taken)
    }

    /// Nothing to do: the drain thread writes as soon as bytes arrive.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl SerialDrain {
    /// Writes queued bytes to the sink until the output is closed and the buffer empty. A write
    /// the sink refuses loses those bytes (counted) and the thread carries on.
    pub fn run(mut self) {
        let shared = &*self.shared;
        let mut chunk = Vec::with_capacity(CHUNK);
        loop {
            {
                let mut buffer = shared.buffer();
                while buffer.bytes.is_empty() && !buffer.closed {
                    buffer = shared
                        .ready
                        .wait(buffer)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                if buffer.bytes.is_empty() {
                    break;
                }
                let n = buffer.bytes.len().min(CHUNK);
                chunk.clear();
                chunk.extend(buffer.bytes.drain(..n));
            }
            let counters = &shared.counters;
            let result = self.sink.write_all(&chunk).and_then(|()| self.sink.flush());
            match result {
                Ok(()) => counters
                    .written
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed),
                Err(_) => counters
                    .failed
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::thread;
    use std::time::{Duration, Instant};

    /// A sink that blocks until told to go on: a host that does not read.
    struct Stalled(mpsc::Receiver<()>, Arc<Mutex<Vec<u8>>>);

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _ = self.0.recv();
            self.1.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A sink that takes everything.
    #[derive(Clone, Default)]
    struct Collect(Arc<Mutex<Vec<u8>>>);

    impl Write for Collect {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_reaches_the_sink_in_order_and_close_flushes_it() {
        let sink = Collect::default();
        let (mut out, drain) = channel(Box::new(sink.clone()), 1024, None);
        let thread = thread::spawn(move || drain.run());
        for i in 0..4000u32 {
            let byte = [b'a' + (i % 26) as u8];
            // The thread keeps up with a 1 KiB buffer only if we let it.
            while out.write(&byte).is_err() {
                thread::yield_now();
            }
        }
        out.close();
        thread.join().unwrap();
        let bytes = sink.0.lock().unwrap().clone();
        assert_eq!(bytes.len(), 4000);
        assert!(
            bytes
                .iter()
                .enumerate()
                .all(|(i, &b)| b == b'a' + (i % 26) as u8)
        );
        assert_eq!(out.stats().written, 4000);
    }

    #[test]
    fn a_host_that_does_not_read_costs_bytes_not_time() {
        let (go, wait) = mpsc::channel();
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = Stalled(wait, received.clone());
        let (mut out, drain) = channel(Box::new(sink), 16, None);
        let thread = thread::spawn(move || drain.run());
        let start = Instant::now();
        let mut refused = 0u64;
        for _ in 0..10_000 {
            if out.write_all(b"x").is_err() {
                refused += 1;
            }
        }
        // 10 000 writes against a stalled host: none waited for it.
        assert!(start.elapsed() < Duration::from_secs(5));
        let stats = out.stats();
        assert_eq!(stats.dropped_full, refused);
        // The drain thread may hold one chunk it took before stalling.
        assert!(refused >= 10_000 - 32, "{refused}");
        assert_eq!(stats.written, 0);
        assert_eq!(stats.pending, 10_000 - refused);
        out.close();
        drop(go);
        thread.join().unwrap();
        let delivered = received.lock().unwrap().len() as u64;
        assert_eq!(delivered + refused, 10_000);
        assert_eq!(out.stats().pending, 0);
    }

    #[test]
    fn the_limit_caps_what_reaches_the_sink() {
        let sink = Collect::default();
        let (mut out, drain) = channel(Box::new(sink.clone()), 1024, Some(10));
        assert_eq!(out.write(b"0123456").unwrap(), 7);
        // Three bytes fit under the limit; the rest of this write is refused.
        assert!(out.write_all(b"789abc").is_err());
        assert!(out.write_all(b"d").is_err());
        out.close();
        drain.run();
        assert_eq!(sink.0.lock().unwrap().as_slice(), b"0123456789");
        let stats = out.stats();
        assert_eq!(stats.written, 10);
        assert_eq!(stats.dropped_limit, 3 + 1);
        assert_eq!(stats.dropped(), 4);
    }

    #[test]
    fn a_failing_sink_is_counted_and_does_not_stop_the_thread() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (mut out, drain) = channel(Box::new(Broken), 64, None);
        out.write_all(b"hello").unwrap();
        out.close();
        // Written after close: dropped.
        assert!(out.write_all(b"!").is_err());
        drain.run();
        let stats = out.stats();
        assert_eq!((stats.written, stats.failed, stats.dropped_full), (0, 5, 1));
        assert_eq!(out.flush().ok(), Some(()));
        assert_eq!(out.write(b"").unwrap(), 0);
    }
}
