//! A lock-free token-bucket rate limiter for log lines a guest can provoke, with an injectable
//! clock.
//!
//! A guest that hammers an unclaimed port must not flood the host's log. The limiter lets
//! `burst` lines through at once and refills at `per_second` lines a second, so any span of `t`
//! seconds logs at most `burst + per_second × t` lines. It is the generic cell-rate form of a token
//! bucket: one atomic "theoretical arrival time", updated with a compare-and-swap, so concurrent
//! vCPUs never block on it.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// A monotonic time source.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The time elapsed since the clock's own origin; never decreases.
    fn now(&self) -> Duration;
}

/// The system's monotonic clock, counted from the first time any `MonotonicClock` is read.
#[derive(Clone, Copy, Debug, Default)]
pub struct MonotonicClock;

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        ORIGIN.get_or_init(Instant::now).elapsed()
    }
}

/// A clock that moves only when told to: for tests and fuzzing.
#[derive(Debug, Default)]
pub struct ManualClock {
    nanos: AtomicU64,
}

impl ManualClock {
    /// A clock at time zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward by `by` (saturating at about 584 years).
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .nanos
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_add(by))
            });
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::Relaxed))
    }
}

/// How many lines a [`RateLimiter`] lets through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogLimit {
    /// Lines a second, sustained. 0 silences the limiter.
    pub per_second: u32,
    /// Lines let through at once after a quiet spell (at least 1 when `per_second` is not 0).
    pub burst: u32,
}

impl Default for LogLimit {
    /// 10 lines a second, bursts of 10: at most 20 lines in any one second.
    fn default() -> Self {
        Self {
            per_second: 10,
            burst: 10,
        }
    }
}

/// A token bucket that decides whether a log line may be written now.
#[derive(Debug)]
pub struct RateLimiter {
    clock: Arc<dyn Clock>,
    /// Nanoseconds between lines; 0 when silenced.
    interval: u64,
    /// How far ahead of now the arrival time may run: `(burst - 1) × interval`.
    tolerance: u64,
    /// The theoretical arrival time of the next line, in the clock's nanoseconds.
    tat: AtomicU64,
    allowed: AtomicU64,
    suppressed_total: AtomicU64,
    suppressed_since: AtomicU64,
}

impl RateLimiter {
    /// A limiter that lets `limit` through, reading time from `clock`.
    pub fn new(limit: LogLimit, clock: Arc<dyn Clock>) -> Self {
        let interval = match limit.per_second {
            0 => 0,
            n => (1_000_000_000 / u64::from(n)).max(1),
        };
        let tolerance = interval.saturating_mul(u64::from(limit.burst.max(1) - 1));
        Self {
            clock,
            interval,
            tolerance,
            tat: AtomicU64::new(0),
            allowed: AtomicU64::new(0),
            suppressed_total: AtomicU64::new(0),
            suppressed_since: AtomicU64::new(0),
        }
    }

    /// Whether a line may be written now: `Some(n)` with the number of lines suppressed since the
    /// last one let through (to mention in the line), or `None` when this one is suppressed.
    pub fn check(&self) -> Option<u64> {
        if self.take_token() {
            self.allowed.fetch_add(1, Ordering::Relaxed);
            Some(self.suppressed_since.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed_since.fetch_add(1, Ordering::Relaxed);
            self.suppressed_total.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    fn take_token(&self) -> bool {
        if self.interval == 0 {
            return false;
        }
        let now = u64::try_from(self.clock.now().as_nanos()).unwrap_or(u64::MAX);
        self.tat
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                let start = tat.max(now);
                (start - now <= self.tolerance).then(|| start.saturating_add(self.interval))
            })
            .is_ok()
    }

    /// Lines let through so far.
    pub fn allowed(&self) -> u64 {
        self.allowed.load(Ordering::Relaxed)
    }

    /// Lines suppressed so far.
    pub fn suppressed(&self) -> u64 {
        self.suppressed_total.load(Ordering::Relaxed)
    }
}

/// Prints ` (N similar lines suppressed)` after a log line when N is not 0.
pub(crate) struct Suppressed(pub(crate) u64);

impl fmt::Display for Suppressed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => Ok(()),
            n => write!(f, " ({n} similar lines suppressed)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: u32, burst: u32) -> (Arc<ManualClock>, RateLimiter) {
        let clock = Arc::new(ManualClock::new());
        let l = RateLimiter::new(LogLimit { per_second, burst }, clock.clone());
        (clock, l)
    }

    #[test]
    fn bursts_then_refills() {
        let (clock, l) = limiter(10, 3);
        assert_eq!(l.check(), Some(0));
        assert_eq!(l.check(), Some(0));
        assert_eq!(l.check(), Some(0));
        assert_eq!(l.check(), None);
        assert_eq!(l.check(), None);
        clock.advance(Duration::from_millis(99));
        assert_eq!(l.check(), None);
        clock.advance(Duration::from_millis(1));
        assert_eq!(l.check(), Some(3), "mentions the three suppressed");
        assert_eq!(l.check(), None);
        assert_eq!((l.allowed(), l.suppressed()), (4, 4));
        clock.advance(Duration::from_secs(60));
        for _ in 0..3 {
            assert!(l.check().is_some(), "a full burst after a quiet spell");
        }
        assert_eq!(l.check(), None);
    }

    #[test]
    fn bounded_within_a_second() {
        let (clock, l) = limiter(10, 10);
        let mut lines = 0;
        // 10 000 attempts spread over one simulated second.
        for _ in 0..10_000 {
            lines += u64::from(l.check().is_some());
            clock.advance(Duration::from_micros(100));
        }
        assert!(lines <= 10 + 10, "{lines}");
        assert_eq!(lines, 10 + 9);
        assert_eq!(l.suppressed(), 10_000 - lines);
    }

    #[test]
    fn zero_rate_is_silent_and_zero_burst_is_one() {
        let (_, l) = limiter(0, 5);
        assert_eq!(l.check(), None);
        assert_eq!(l.suppressed(), 1);
        let (_, l) = limiter(5, 0);
        assert!(l.check().is_some());
        assert!(l.check().is_none());
        let (_, l) = limiter(u32::MAX, u32::MAX);
        assert!(l.check().is_some());
    }

    #[test]
    fn suppressed_note() {
        assert_eq!(Suppressed(0).to_string(), "");
        assert_eq!(Suppressed(12).to_string(), " (12 similar lines suppressed)");
    }

    #[test]
    fn clocks() {
        let m = MonotonicClock;
        let a = m.now();
        assert!(m.now() >= a);
        let c = ManualClock::new();
        c.advance(Duration::MAX);
        assert_eq!(c.now(), Duration::from_nanos(u64::MAX));
        assert_eq!(LogLimit::default().per_second, 10);
    }
}
