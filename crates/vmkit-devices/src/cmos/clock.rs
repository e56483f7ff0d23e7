//! Where the RTC gets the time: the host clock, or one a test moves by hand.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use vmkit_exits::record::{Record, RecordWriter};

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

/// A clock that records every reading (a [`Record::Clock`], attributed to the exit being
/// handled) before it returns it: a replay answers the guest's RTC reads from the recording.
#[derive(Debug)]
pub struct RecordingClock<C> {
    inner: C,
    recorder: Arc<RecordWriter>,
}

impl<C: WallClock> RecordingClock<C> {
    /// Wraps `inner`, recording to `recorder`.
    pub fn new(inner: C, recorder: Arc<RecordWriter>) -> Self {
        Self { inner, recorder }
    }
}

impl<C: WallClock> WallClock for RecordingClock<C> {
    fn now(&self) -> Duration {
        let now = self.inner.now();
        self.recorder.write(&Record::Clock {
            at: self.recorder.attribution(),
            since_epoch: now,
        });
        now
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

    #[test]
    fn recording_clock_records_each_reading() {
        use vmkit_exits::record::{Attribution, ExitScope, RecordReader};
        let path = std::env::temp_dir().join(format!("vmkit-clock-{}.vmrec", std::process::id()));
        let recorder = Arc::new(RecordWriter::new(
            std::fs::File::create(&path).unwrap(),
            u64::MAX,
        ));
        let manual = Arc::new(ManualWallClock::new(Duration::from_secs(7)));
        let clock = RecordingClock::new(manual.clone(), recorder.clone());
        assert_eq!(clock.now(), Duration::from_secs(7));
        manual.advance(Duration::from_nanos(5));
        {
            let _exit = ExitScope::enter(recorder.begin_exit());
            assert_eq!(clock.now(), Duration::new(7, 5));
        }
        assert!(format!("{clock:?}").contains("RecordingClock"));
        recorder.finish();
        let records = RecordReader::new(std::fs::File::open(&path).unwrap())
            .unwrap()
            .read_all()
            .unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(
            records,
            [
                Record::Clock {
                    at: Attribution::Outside { exits_before: 0 },
                    since_epoch: Duration::from_secs(7)
                },
                Record::Clock {
                    at: Attribution::Exit(0),
                    since_epoch: Duration::new(7, 5)
                },
            ]
        );
    }
}
