//! Writing to stderr with a deadline, so that a reader who stopped reading (a full pipe, a
//! terminal on hold) can neither block a vCPU that logs nor keep a stopping VMM alive.
//!
//! Each write first waits, at most until the deadline, for stderr to accept data (`poll` for
//! `POLLOUT`), then writes at most 256 bytes: a pipe that polled writable has a page free and a
//! terminal that did has room for that much, so the write does not block. One lock orders the
//! writers of this module, so a line is not cut by another.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a one-line message waits for stderr before it is given up.
pub const LINE_WAIT: Duration = Duration::from_millis(100);

/// What one `write` may carry and still be taken whole by a pipe or a terminal that polled
/// writable.
const CHUNK: usize = 256;

static WRITER: Mutex<()> = Mutex::new(());

/// Writes all of `bytes` to stderr unless the deadline passes first; returns whether it did.
pub fn write_until(bytes: &[u8], deadline: Instant) -> bool {
    write_fd_until(libc::STDERR_FILENO, bytes, deadline)
}

/// Writes `reference-vmm: {message}` and a newline, waiting at most [`LINE_WAIT`].
pub fn line(message: impl std::fmt::Display) -> bool {
    let deadline = Instant::now()
        .checked_add(LINE_WAIT)
        .unwrap_or_else(Instant::now);
    line_until(message, deadline)
}

/// Writes `reference-vmm: {message}` and a newline unless `deadline` passes first.
pub fn line_until(message: impl std::fmt::Display, deadline: Instant) -> bool {
    write_until(format!("reference-vmm: {message}\n").as_bytes(), deadline)
}

/// [`write_until`] on any descriptor (the log file; the tests use a pipe), under the same lock.
pub fn write_fd_until(fd: libc::c_int, bytes: &[u8], deadline: Instant) -> bool {
    let _writer = WRITER.lock().unwrap_or_else(PoisonError::into_inner);
    write_unlocked(fd, bytes, deadline)
}

/// Writes `bytes` to `fd` unless `deadline` passes first; the caller holds the lock.
fn write_unlocked(fd: libc::c_int, mut bytes: &[u8], deadline: Instant) -> bool {
    while !bytes.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: `poll` is one valid, writable pollfd and the count says one.
        let ready = unsafe { libc::poll(&mut poll, 1, timeout) };
        if ready < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                && Instant::now() < deadline
            {
                continue;
            }
            return false;
        }
        if ready == 0 || poll.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
            return false;
        }
        let chunk = &bytes[..bytes.len().min(CHUNK)];
        // SAFETY: `chunk` is valid for reads of its length for the duration of the call;
        // write only reads it.
        let written = unsafe { libc::write(fd, chunk.as_ptr().cast(), chunk.len()) };
        match usize::try_from(written) {
            Ok(n) => bytes = &bytes[n.min(bytes.len())..],
            Err(_) => {
                let kind = std::io::Error::last_os_error().kind();
                let retry = matches!(
                    kind,
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                );
                if !retry || Instant::now() >= deadline {
                    return false;
                }
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd};

    fn pipe() -> (File, File) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
        unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
    }

    #[test]
    fn a_pipe_nobody_reads_gives_up_at_the_deadline() {
        let (mut reader, writer) = pipe();
        let fd = writer.as_raw_fd();
        let in_a_second = || Instant::now() + Duration::from_secs(1);
        assert!(write_fd_until(fd, b"first\n", in_a_second()));
        // Fill the pipe (64 KiB by default) until a write with no time left fails.
        let block = vec![b'x'; 4096];
        let mut filled = 0;
        while write_fd_until(fd, &block, Instant::now()) {
            filled += 1;
            assert!(filled < 1 << 16, "the pipe never filled");
        }
        let start = Instant::now();
        assert!(!write_fd_until(
            fd,
            b"late\n",
            start + Duration::from_millis(50)
        ));
        assert!(start.elapsed() < Duration::from_secs(5));
        let mut first = [0u8; 6];
        reader.read_exact(&mut first).unwrap();
        assert_eq!(&first, b"first\n");
    }

    #[test]
    fn a_closed_reader_is_an_error_not_a_wait() {
        let (reader, writer) = pipe();
        drop(reader);
        let start = Instant::now();
        assert!(!write_fd_until(
            writer.as_raw_fd(),
            b"nobody\n",
            start + Duration::from_secs(10)
        ));
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
