//! Where the RTC gets the time: the host clock, or one a test moves by hand.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time, in UTC.
pub trait WallClock: Send + Sync {
    /// Time since the Unix epoch (1970-01-01T00:00:00Z).
    fn now(&self) -> Duration;
}

impl<C: WallClock + ?Sized> WallClock for Arc<C> {
    fn now(&self) -> Duration {
        (**self).now()
    }
}

/// The host's real-time clock ([`SystemTime`]). A host clock before the epoch reads as the epoch.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now(&self) -> Duration {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    }
}

/// A clock that moves only when told to: deterministic tests and fuzzing.
#[derive(Debug, Default)]
pub struct ManualWallClock {
    now: Mutex<Duration>,
}

impl ManualWallClock {
    /// A clock reading `now` since the epoch.
    pub fn new(now: Duration) -> Self {
        Self {
            now: Mutex::new(now),
        }
    }

    /// Sets the time.
    pub fn set(&self, now: Duration) {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) = now;
    }

    /// Moves the time forward by `by` (saturating at the largest [`Duration`]).
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now = now.saturating_add(by);
    }
}

impl WallClock for ManualWallClock {
    fn now(&self) -> Duration {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now() > Duration::from_secs(1_577_836_800));
    }

    #[test]
    fn manual_clock_moves_when_told() {
        let clock = Arc::new(ManualWallClock::new(Duration::from_secs(5)));
        assert_eq!(clock.now(), Duration::from_secs(5));
        clock.advance(Duration::from_millis(1500));
        assert_eq!(clock.now(), Duration::from_millis(6500));
        clock.set(Duration::ZERO);
        assert_eq!(WallClock::now(&clock), Duration::ZERO);
        clock.set(Duration::MAX);
        clock.advance(Duration::from_secs(1));
        assert_eq!(clock.now(), Duration::MAX);
    }
}
