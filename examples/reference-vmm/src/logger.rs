//! A minimal stderr logger for the `log` facade; the level comes from `VMKIT_LOG`
//! (`error`, `warn` — the default —, `info`, `debug`, `trace` or `off`).
//!
//! A guest can provoke log lines (in the device models, in the VMM's interrupt paths, in
//! virtio-queue, whose `error!` lines name each malformed avail entry), so every line goes
//! through a token bucket of its target (module): at most [`LINE_LIMIT`]'s burst at once and its
//! rate after that. The line that follows a suppressed run says how many were suppressed. Lines
//! are written without waiting ([`crate::stderr`]): one stderr cannot take is dropped and
//! counted, so a reader who stopped reading never blocks a vCPU.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

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
    /// Lines let through that stderr did not take in time.
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

/// The text of one line, with the count of lines suppressed before it.
fn format_line(record: &Record<'_>, suppressed: u64) -> String {
    let note = match suppressed {
        0 => String::new(),
        n => format!(" ({n} earlier lines of {} suppressed)", record.target()),
    };
    format!(
        "reference-vmm: [{}] {}: {}{note}\n",
        record.level(),
        record.target(),
        record.args()
    )
}

struct StderrLogger {
    limits: Limits,
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
        if !crate::stderr::write_until(format_line(record, suppressed).as_bytes(), Instant::now()) {
            self.limits.unwritten.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn flush(&self) {}
}

static LOGGER: std::sync::LazyLock<StderrLogger> = std::sync::LazyLock::new(|| StderrLogger {
    limits: Limits::default(),
});

/// Installs the logger; an unknown level in `VMKIT_LOG` is an error naming it.
pub fn init() -> anyhow::Result<()> {
    let level = match std::env::var("VMKIT_LOG") {
        Ok(v) => v
            .parse::<LevelFilter>()
            .map_err(|_| anyhow::anyhow!("VMKIT_LOG: unknown level {v:?}"))?,
        Err(_) => LevelFilter::Warn,
    };
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
        assert_eq!(
            format_line(&record, 0),
            "reference-vmm: [ERROR] virtio_queue::queue: head index 70000 out of range\n"
        );
        assert!(
            format_line(&record, 12)
                .ends_with("(12 earlier lines of virtio_queue::queue suppressed)\n")
        );
    }
}
