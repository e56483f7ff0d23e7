//! What devices reach outside their registers, fed from the recording: interrupt lines and an
//! MSI sender that note every call and give the recorded answer, a wall clock that gives the
//! recorded readings, disks that serve the recorded data, and the trait through which a replay
//! loads and checks the caller's guest memory.
//!
//! The kit names no device crate, so each source is device-neutral: the lines and the MSI sender
//! implement vmkit-exits' trigger traits; the clock and the disks have the methods of the usual
//! traits (`now`, `read_exact_at`, `write_all_at`, `flush`), which the caller forwards from its
//! own trait in a few lines.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use vmkit_exits::record::{ContentHash, DiskOp, LineEvent};
use vmkit_exits::{InterruptTrigger, MsiTrigger};

use super::recording::{DiskCall, LineCall, MsiCall, PayloadStore};

/// Where the replay is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Position {
    /// Between exits: the next exit to replay has this sequence number (or, after the last,
    /// one more than the last's).
    Before(u64),
    /// Inside the exit of this sequence number.
    Exit(u64),
}

/// What the recording says the devices were answered during the current exit.
#[derive(Debug, Default)]
pub(super) struct Expected {
    pub(super) interrupts: Vec<(LineCall, bool)>,
    pub(super) msis: Vec<(MsiCall, bool)>,
    pub(super) clock: VecDeque<Duration>,
    pub(super) disk: Vec<(DiskCall, bool)>,
}

/// What the devices did during the current exit.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Observed {
    pub(super) interrupts: Vec<LineCall>,
    pub(super) msis: Vec<MsiCall>,
    pub(super) clock_reads: usize,
    pub(super) disk: Vec<DiskCall>,
}

pub(super) struct State {
    pub(super) position: Position,
    pub(super) expected: Expected,
    pub(super) observed: Observed,
    /// Readings outside any exit, by the number of exits sequenced before them, in order.
    pub(super) outside_clock: VecDeque<(u64, Duration)>,
    /// The last reading given: what a read the recording has no reading for gets.
    pub(super) last_reading: Duration,
    pub(super) payloads: Arc<PayloadStore>,
}

/// The state the replay and its sources share.
pub(super) struct Shared(Mutex<State>);

impl Shared {
    pub(super) fn new(state: State) -> Arc<Self> {
        Arc::new(Self(Mutex::new(state)))
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("position", &self.lock().position)
            .finish_non_exhaustive()
    }
}

/// The error a source gives where the recording says the host failed, or holds no such call.
fn refused(what: &str) -> io::Error {
    io::Error::other(format!("replay: {what}"))
}

/// An interrupt line of a replay: every call during an exit is compared with the recording's
/// calls of that exit, and answered as the recording says the backend answered it (a call the
/// recording does not hold succeeds). Calls between exits are host events: accepted, not
/// compared.
#[derive(Clone, Debug)]
pub struct ReplayLine {
    line: u32,
    shared: Arc<Shared>,
}

impl ReplayLine {
    pub(super) fn new(line: u32, shared: Arc<Shared>) -> Self {
        Self { line, shared }
    }

    /// The line's number (the GSI it was wired to when recorded).
    pub fn line(&self) -> u32 {
        self.line
    }

    fn call(&self, event: LineEvent) -> io::Result<()> {
        let mut state = self.shared.lock();
        if !matches!(state.position, Position::Exit(_)) {
            return Ok(());
        }
        let call = LineCall {
            line: self.line,
            event,
        };
        let index = state.observed.interrupts.len();
        state.observed.interrupts.push(call);
        match state.expected.interrupts.get(index) {
            Some((recorded, false)) if *recorded == call => {
                Err(refused("the recorded interrupt failed"))
            }
            _ => Ok(()),
        }
    }
}

impl InterruptTrigger for ReplayLine {
    fn trigger(&self) -> io::Result<()> {
        self.call(LineEvent::Edge)
    }
    fn assert(&self) -> io::Result<()> {
        self.call(LineEvent::Assert)
    }
    fn deassert(&self) -> io::Result<()> {
        self.call(LineEvent::Deassert)
    }
}

/// The MSI sender of a replay: as [`ReplayLine`], for messages.
#[derive(Clone, Debug)]
pub struct ReplayMsi {
    shared: Arc<Shared>,
}

impl ReplayMsi {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

impl MsiTrigger for ReplayMsi {
    fn send(&self, address: u64, data: u32) -> io::Result<()> {
        let mut state = self.shared.lock();
        if !matches!(state.position, Position::Exit(_)) {
            return Ok(());
        }
        let call = MsiCall { address, data };
        let index = state.observed.msis.len();
        state.observed.msis.push(call);
        match state.expected.msis.get(index) {
            Some((recorded, false)) if *recorded == call => {
                Err(refused("the recorded message failed"))
            }
            _ => Ok(()),
        }
    }
}

/// The wall clock of a replay: each reading during an exit is the next one the recording holds
/// for that exit; a reading between exits is the next host reading recorded before the same
/// exit (the CMOS reads the clock when it is built, before the first exit). A reading the
/// recording does not hold repeats the last one given; during an exit, the replay reports the
/// difference in the number of readings.
///
/// Forward it from your clock trait: `fn now(&self) -> Duration { self.0.now() }`.
#[derive(Clone, Debug)]
pub struct RecordedClock {
    shared: Arc<Shared>,
}

impl RecordedClock {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The time since the Unix epoch, as recorded.
    pub fn now(&self) -> Duration {
        let mut state = self.shared.lock();
        let reading = match state.position {
            Position::Exit(_) => {
                state.observed.clock_reads += 1;
                state.expected.clock.pop_front()
            }
            Position::Before(next) => {
                // Host readings recorded before an earlier exit were never asked for.
                while state
                    .outside_clock
                    .front()
                    .is_some_and(|(before, _)| *before < next)
                {
                    state.outside_clock.pop_front();
                }
                match state.outside_clock.front() {
                    Some((before, _)) if *before == next => {
                        state.outside_clock.pop_front().map(|(_, reading)| reading)
                    }
                    _ => None,
                }
            }
        };
        if let Some(reading) = reading {
            state.last_reading = reading;
        }
        state.last_reading
    }
}

/// A disk of a replay (disk `index` in the recording VMM's numbering): each call during an exit
/// is compared with the recording's next disk call of that exit; a read the recording holds is
/// served the recorded bytes, and every call succeeds or fails as it did. A call the recording
/// does not hold, or one between exits, fails.
///
/// Forward the three I/O methods from your disk trait; its size, read-only flag and ID come from
/// the recording's facts.
#[derive(Clone, Debug)]
pub struct RecordedDisk {
    disk: u32,
    shared: Arc<Shared>,
}

impl RecordedDisk {
    pub(super) fn new(disk: u32, shared: Arc<Shared>) -> Self {
        Self { disk, shared }
    }

    /// The disk's number.
    pub fn disk(&self) -> u32 {
        self.disk
    }

    /// Notes `call` and returns the recorded call at its place with whether it succeeded, if
    /// the recording holds the same call there (`matches` compares them).
    fn note(
        &self,
        state: &mut State,
        call: DiskCall,
        matches: impl Fn(&DiskCall) -> bool,
    ) -> Option<(DiskCall, bool)> {
        if !matches!(state.position, Position::Exit(_)) {
            return None;
        }
        let index = state.observed.disk.len();
        state.observed.disk.push(call);
        state
            .expected
            .disk
            .get(index)
            .copied()
            .filter(|(recorded, _)| matches(recorded))
    }

    /// Fills `buf` with the bytes the recording's read at `offset` returned.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut state = self.shared.lock();
        let call = DiskCall {
            disk: self.disk,
            op: DiskOp::Read,
            offset,
            len: buf.len() as u64,
            hash: None,
        };
        let served = self.note(&mut state, call, |recorded| {
            DiskCall {
                hash: None,
                ..*recorded
            } == call
        });
        let Some((recorded, ok)) = served else {
            return Err(refused("the recording holds no such disk read"));
        };
        if !ok {
            return Err(refused("the recorded disk read failed"));
        }
        let bytes = match recorded.hash {
            Some(hash) => state.payloads.get(&hash).map(<[u8]>::to_vec),
            // A successful read of nothing.
            None => Some(Vec::new()),
        };
        match bytes {
            Some(bytes) if bytes.len() == buf.len() => {
                buf.copy_from_slice(&bytes);
                if let Some(last) = state.observed.disk.last_mut() {
                    last.hash = recorded.hash;
                }
                Ok(())
            }
            _ => Err(refused("the recorded disk data is missing")),
        }
    }

    /// Checks `buf` against the recording's write at `offset` and answers as it was answered.
    pub fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut state = self.shared.lock();
        let hash = (!buf.is_empty()).then(|| ContentHash::of(buf));
        let call = DiskCall {
            disk: self.disk,
            op: DiskOp::Write,
            offset,
            len: buf.len() as u64,
            hash,
        };
        // A failed write is recorded without its hash.
        let served = self.note(&mut state, call, |recorded| {
            *recorded == call || DiskCall { hash: None, ..call } == *recorded
        });
        match served {
            Some((recorded, true)) if recorded == call => Ok(()),
            Some((_, false)) => {
                if let Some(last) = state.observed.disk.last_mut() {
                    last.hash = None;
                }
                Err(refused("the recorded disk write failed"))
            }
            _ => Err(refused("the recording holds no such disk write")),
        }
    }

    /// Answers a flush as the recording's was answered.
    pub fn flush(&self) -> io::Result<()> {
        let mut state = self.shared.lock();
        let call = DiskCall {
            disk: self.disk,
            op: DiskOp::Flush,
            offset: 0,
            len: 0,
            hash: None,
        };
        match self.note(&mut state, call, |recorded| *recorded == call) {
            Some((_, true)) => Ok(()),
            Some((_, false)) => Err(refused("the recorded flush failed")),
            None => Err(refused("the recording holds no such flush")),
        }
    }
}

/// Guest memory as a replay reaches it: an adapter of the caller's memory (a few lines over
/// vm-memory's `GuestMemoryMmap`, or a plain `Vec` in a test).
///
/// Before each exit the replay writes the bytes the recording says a device read during it (as
/// the guest had left them); after it, the replay reads back what the recording says a device
/// wrote and compares.
pub trait ReplayMemory {
    /// Writes `bytes` at guest-physical `gpa`; `false` where they are not all guest memory.
    fn write(&mut self, gpa: u64, bytes: &[u8]) -> bool;
    /// Fills `buf` from guest-physical `gpa`; `false` where they are not all guest memory.
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> bool;
}
