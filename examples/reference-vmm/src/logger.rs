//! A minimal logger for the `log` facade. The level comes from `-v`/`--verbose` (repeatable:
//! `-v` info, `-vv` debug, `-vvv` trace), or, without `-v`, from `VMKIT_LOG` (`error`, `warn` —
//! the default —, `info`, `debug`, `trace` or `off`); `-v` wins when both are given. Lines go to
//! stderr, or to `--log-file` (a regular file, appended, or a character device), in Cloud Hypervisor's shape:
//! `reference-vmm: 12.345678ms: <vcpu0> WARN:vmkit_devices::serial: message`, the time elapsed
//! since the VMM started and the name of the thread that logged.
//!
//! A guest can provoke log lines (in the device models, in the VMM's interrupt paths, in
//! virtio-queue, whose `error!` lines name each malformed avail entry), so every line goes
//! through a token bucket of its target (module): at most [`LINE_LIMIT`]'s burst at once and its
//! rate after that. The line that follows a suppressed run says how many were suppressed. Lines
//! are written without waiting ([`crate::stderr`]): one stderr cannot take is dropped and
//! counted, so a reader who stopped reading never blocks a vCPU.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;

use log::{LevelFilter, Log, Metadata, Record};
use vmkit_exits::{LogLimit, MonotonicClock, RateLimiter};

/// Lines per target: 10 a second, after a burst of 64 (room for the VMM's start-up lines).
pub const LINE_LIMIT: LogLimit = LogLimit {
    per_second: 10,
    burst: 64,
};

/// Log lines the rate limiter suppressed and lines stderr did not take.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Lines suppressed by the rate limiter.
    pub suppressed: u64,
    /// Lines let through that stderr (or the log file) did not take in time.
    pub unwritten: u64,
}

/// The per-target rate limiters and the counts of lines lost.
#[derive(Debug, Default)]
struct Limits {
    limiters: Mutex<HashMap<String, Arc<RateLimiter>>>,
    unwritten: AtomicU64,
}

impl Limits {
    /// Whether a line of `target` may be written now: `Some(n)` with the lines of that target
    /// suppressed since its last line, `None` when this one is suppressed.
    fn check(&self, target: &str, limit: LogLimit) -> Option<u64> {
        let limiter = {
            let mut limiters = self.limiters.lock().unwrap_or_else(PoisonError::into_inner);
            match limiters.get(target) {
                Some(limiter) => limiter.clone(),
                None => {
                    let limiter = Arc::new(RateLimiter::new(limit, Arc::new(MonotonicClock)));
                    limiters.insert(target.to_string(), limiter.clone());
                    limiter
                }
            }
        };
        limiter.check()
    }

    fn stats(&self) -> LogStats {
        let limiters = self.limiters.lock().unwrap_or_else(PoisonError::into_inner);
        LogStats {
            suppressed: limiters.values().map(|l| l.suppressed()).sum(),
            unwritten: self.unwritten.load(Ordering::Relaxed),
        }
    }
}

/// The text of one line: the time since the VMM started, the thread, the level, the target,
/// the message, and the count of lines suppressed before it.
fn format_line(record: &Record<'_>, suppressed: u64, elapsed: Duration, thread: &str) -> String {
    let note = match suppressed {
        0 => String::new(),
        n => format!(" ({n} earlier lines of {} suppressed)", record.target()),
    };
    format!(
        "reference-vmm: {elapsed:.6?}: <{thread}> {}:{}: {}{note}\n",
        record.level(),
        record.target(),
        record.args()
    )
}

struct StderrLogger {
    limits: Limits,
    /// When the VMM started: lines say how long after.
    start: OnceLock<Instant>,
    /// `--log-file`: lines go there instead of stderr.
    file: OnceLock<File>,
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let Some(suppressed) = self.limits.check(record.target(), LINE_LIMIT) else {
            return;
        };
        let now = Instant::now();
        let elapsed = self.start.get().map_or(Duration::ZERO, |start| {
            now.saturating_duration_since(*start)
        });
        let thread = std::thread::current();
        let line = format_line(
            record,
            suppressed,
            elapsed,
            thread.name().unwrap_or("unnamed"),
        );
        // A regular file always takes the line; stderr may not, and is not waited for.
        let written = match self.file.get() {
            Some(file) => crate::stderr::write_fd_until(file.as_raw_fd(), line.as_bytes(), now),
            None => crate::stderr::write_until(line.as_bytes(), now),
        };
        if !written {
            self.limits.unwritten.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn flush(&self) {}
}

static LOGGER: std::sync::LazyLock<StderrLogger> = std::sync::LazyLock::new(|| StderrLogger {
    limits: Limits::default(),
    start: OnceLock::new(),
    file: OnceLock::new(),
});

/// The level `verbose` (the count of `-v`) asks for, or, when it is 0, `VMKIT_LOG`'s.
fn level(verbose: u8, env: Option<&str>) -> anyhow::Result<LevelFilter> {
    Ok(match (verbose, env) {
        (0, None) => LevelFilter::Warn,
        (0, Some(v)) => v
            .parse::<LevelFilter>()
            .map_err(|_| anyhow::anyhow!("VMKIT_LOG: unknown level {v:?}"))?,
        (1, _) => LevelFilter::Info,
        (2, _) => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    })
}

/// Whether lines can go to a file of this type: a regular file, or a character device (a
/// terminal, `/dev/null`), which the non-blocking writes never wait for.
fn loggable(file_type: std::fs::FileType) -> bool {
    use std::os::unix::fs::FileTypeExt;
    file_type.is_file() || file_type.is_char_device()
}

/// Opens `--log-file PATH` for appending (creating it); anything but a regular file or a
/// character device is refused, and nothing is waited for (`O_NONBLOCK`).
fn open_log_file(path: &Path) -> anyhow::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let refuse = |file_type| {
        anyhow::anyhow!(
            "log file {} is {}, not a regular file or a character device",
            path.display(),
            crate::files::kind(file_type)
        )
    };
    if let Ok(meta) = std::fs::metadata(path)
        && !loggable(meta.file_type())
    {
        return Err(refuse(meta.file_type()));
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("log file {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("log file {}", path.display()))?;
    if !loggable(meta.file_type()) {
        return Err(refuse(meta.file_type()));
    }
    Ok(file)
}

/// Installs the logger: the level from `verbose` (the count of `-v`) or `VMKIT_LOG` (an unknown
/// level is an error naming it), lines to `log_file` when given (anything but a regular file
/// or character device is an error), times counted from `start`.
pub fn init(verbose: u8, log_file: Option<&Path>, start: Instant) -> anyhow::Result<()> {
    let env = std::env::var("VMKIT_LOG").ok();
    let level = level(verbose, env.as_deref())?;
    if let Some(path) = log_file {
        let _ = LOGGER.file.set(open_log_file(path)?);
    }
    let _ = LOGGER.start.set(start);
    // A logger set twice (only possible in tests) keeps the first.
    let _ = log::set_logger(&*LOGGER);
    log::set_max_level(level);
    Ok(())
}

/// The lines lost so far, for `--stats`.
pub fn stats() -> LogStats {
    LOGGER.limits.stats()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flooding_target_is_limited_and_others_are_not() {
        let limits = Limits::default();
        let limit = LogLimit {
            per_second: 1,
            burst: 5,
        };
        let passed = (0..10_000)
            .filter(|_| limits.check("virtio_queue::queue", limit).is_some())
            .count();
        // The burst, and at most a line or two the clock refilled while the loop ran.
        assert!((5..=7).contains(&passed), "{passed}");
        assert_eq!(limits.check("vmkit_devices::serial", limit), Some(0));
        assert_eq!(limits.stats().suppressed, 10_000 - passed as u64);
    }

    #[test]
    fn a_line_names_what_was_suppressed_before_it() {
        let args = format_args!("head index 70000 out of range");
        let record = Record::builder()
            .args(args)
            .level(log::Level::Error)
            .target("virtio_queue::queue")
            .build();
        let elapsed = Duration::from_micros(12_345_678) / 1000;
        assert_eq!(
            format_line(&record, 0, elapsed, "vcpu0"),
            "reference-vmm: 12.345678ms: <vcpu0> ERROR:virtio_queue::queue: head index 70000 out \
             of range\n"
        );
        assert!(
            format_line(&record, 12, elapsed, "vcpu0")
                .ends_with("(12 earlier lines of virtio_queue::queue suppressed)\n")
        );
    }

    #[test]
    fn verbose_wins_over_the_environment() {
        assert_eq!(level(0, None).unwrap(), LevelFilter::Warn);
        assert_eq!(level(0, Some("off")).unwrap(), LevelFilter::Off);
        assert!(level(0, Some("loud")).is_err());
        assert_eq!(level(1, Some("off")).unwrap(), LevelFilter::Info);
        assert_eq!(level(2, None).unwrap(), LevelFilter::Debug);
        assert_eq!(level(3, Some("error")).unwrap(), LevelFilter::Trace);
        assert_eq!(level(9, None).unwrap(), LevelFilter::Trace);
    }
}
