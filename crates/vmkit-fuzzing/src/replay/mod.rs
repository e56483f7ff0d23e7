//! Replay of recorded exits: the exits of a recording (vmkit-exits' `record` format) run again,
//! one by one, against devices built anew, and every answer and side effect checked against the
//! recording, byte for byte. No hypervisor is involved: a replay is an ordinary test.
//!
//! # How
//!
//! Read the recording ([`Recording::read`]), build the devices its facts describe
//! ([`Recording::meta`]) on buses, and wire what they reach outside their registers to the
//! replay's sources instead of the host's: interrupt lines ([`Replay::line`]), the MSI sender
//! ([`Replay::msi`]), the wall clock ([`Replay::clock`]), the disks ([`Replay::disk`]) and guest
//! memory ([`Replay::with_memory`]). Then [`Replay::run`] hands each recorded exit to your
//! [`ExitDispatcher`] (or [`Replay::run_with`], to any handler) and compares, in this order:
//!
//! 1. the answer: the bytes a read returned (the replay's buffer starts as the complement of the
//!    recorded bytes, so a byte nobody wrote differs), who answered ([`Route`]: a device,
//!    nobody, or a bad size; [`Replay::run_with`] compares it when the handler says it) and the
//!    [`ExitAction`];
//! 2. the side effects attributed to the exit: the interrupt-line calls and messages, in order;
//!    the number of clock readings; the disk calls (disk, operation, offset, length and, for
//!    writes, the data's hash); and the guest memory the devices wrote, as it is after the exit.
//!
//! The first difference ends the replay with [`ReplayError::Diverged`], which names the exit
//! ([`ExitId`]: sequence number, vCPU, kind, address, size) and what differs, expected against
//! actual ([`Mismatch`]).
//!
//! What the devices read from outside comes from the recording: a clock reading is the recorded
//! reading, a disk read returns the recorded bytes, and before each exit the bytes a device read
//! from guest memory during it are written to the replay's guest memory (the parts no earlier
//! access of the same exit covered, so that the memory is as the guest had left it). A call the
//! sources are asked that the recording does not hold is answered as a failure (the disks) or
//! as the last answer (the clock), and the exit's comparison reports it.
//!
//! # What is not compared
//!
//! Records attributed to no exit are host events: COM1's receive interrupt raised by the thread
//! that feeds it host input, the clock read while the VMM built the CMOS, anything another
//! thread of the VMM did between exits. The replay compares none of them; the clock readings
//! among them are given to devices that read the clock between the same exits (when they are
//! built, for the first exit), and the rest are counted ([`ReplayReport::host_events`]). Host
//! input itself (serial bytes) is not in a recording: a guest that read it diverges at the read.
//! Without [`Replay::with_memory`], guest-memory records are neither loaded nor compared.
//!
//! # Several vCPUs
//!
//! Exits replay one at a time, in sequence order, on the calling thread; the vCPU is
//! informative. A sequence number is taken when the dispatcher receives an exit, before any
//! device runs, so two vCPUs that reached the same device at the same instant may have been
//! served in the other order: the replay then diverges at the first of them. That is the rare
//! race the recording caught, not a device bug; every other interleaving replays as recorded,
//! since devices answer each exit under their own lock.

mod error;
mod recording;
mod sources;

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;

use vmkit_exits::record::{Data, Direction, ExitRecord, ExitScope, RecordedExit, Route};
use vmkit_exits::{ExitAction, ExitDispatcher, VmExit};

pub use error::{Bytes, Calls, ExitId, Mismatch, ReplayError};
pub use recording::{DiskCall, Effects, LineCall, MemoryAccess, MsiCall, PayloadStore, Recording};
pub use sources::{RecordedClock, RecordedDisk, ReplayLine, ReplayMemory, ReplayMsi};

use sources::{Expected, Position, Shared, State};

/// A handler's answer to an exit: the action, and who answered it where the handler knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    /// What the vCPU does next.
    pub action: ExitAction,
    /// Who answered: compared with the recording's route when given.
    pub route: Option<Route>,
}

impl From<ExitAction> for Answer {
    fn from(action: ExitAction) -> Self {
        Self {
            action,
            route: None,
        }
    }
}

impl From<(ExitAction, Route)> for Answer {
    fn from((action, route): (ExitAction, Route)) -> Self {
        Self {
            action,
            route: Some(route),
        }
    }
}

/// What a replay that matched its recording compared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Exits replayed.
    pub exits: u64,
    /// Interrupt-line calls compared.
    pub interrupts: u64,
    /// Messages compared.
    pub msis: u64,
    /// Clock readings given during exits.
    pub clock_reads: u64,
    /// Guest-memory accesses loaded (reads) or compared (writes).
    pub memory_accesses: u64,
    /// Disk calls compared.
    pub disk_calls: u64,
    /// Records not compared: host events outside any exit, and records of exits the recording
    /// does not hold.
    pub host_events: u64,
    /// Whether the recording was cut by its size limit (the replay covered what it holds).
    pub truncated: bool,
}

impl std::fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} exits replayed, every answer as recorded; compared {} interrupt-line calls, {} \
             messages, {} clock readings, {} guest-memory accesses and {} disk calls; {} host \
             events not compared",
            self.exits,
            self.interrupts,
            self.msis,
            self.clock_reads,
            self.memory_accesses,
            self.disk_calls,
            self.host_events
        )?;
        if self.truncated {
            f.write_str("; the recording was truncated")?;
        }
        Ok(())
    }
}

/// A replay of one recording: hands out the sources the devices are built with, then runs the
/// exits against them. See the [module](self) for what it compares.
pub struct Replay {
    exits: Vec<ExitRecord>,
    effects: HashMap<u64, Effects>,
    host_events: u64,
    truncated: bool,
    payloads: Arc<PayloadStore>,
    shared: Arc<Shared>,
    memory: Option<Box<dyn ReplayMemory>>,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("exits", &self.exits.len())
            .field("host_events", &self.host_events)
            .field("memory", &self.memory.is_some())
            .finish_non_exhaustive()
    }
}

impl Replay {
    /// A replay of `recording`, before its first exit.
    pub fn new(recording: Recording) -> Self {
        let parts = recording.into_parts();
        let payloads = Arc::new(parts.payloads);
        let shared = Shared::new(State {
            position: Position::Before(0),
            expected: Expected::default(),
            observed: Default::default(),
            last_reading: parts
                .outside_clock
                .first()
                .map(|(_, reading)| *reading)
                .unwrap_or_default(),
            outside_clock: parts.outside_clock.into(),
            payloads: payloads.clone(),
        });
        Self {
            exits: parts.exits,
            effects: parts.effects,
            host_events: parts.host_events,
            truncated: parts.truncated,
            payloads,
            shared,
            memory: None,
        }
    }

    /// A replay of the recording `input` holds ([`Recording::read`]).
    pub fn read(input: impl Read) -> Result<Self, ReplayError> {
        Recording::read(input).map(Self::new)
    }

    /// Interrupt line `line` (the number the recording VMM gave it: the GSI it was wired to).
    pub fn line(&self, line: u32) -> ReplayLine {
        ReplayLine::new(line, self.shared.clone())
    }

    /// The MSI sender.
    pub fn msi(&self) -> ReplayMsi {
        ReplayMsi::new(self.shared.clone())
    }

    /// The wall clock.
    pub fn clock(&self) -> RecordedClock {
        RecordedClock::new(self.shared.clone())
    }

    /// Disk `index` (the recording VMM's numbering).
    pub fn disk(&self, index: u32) -> RecordedDisk {
        RecordedDisk::new(index, self.shared.clone())
    }

    /// This replay with the devices' guest-memory accesses loaded into and checked against
    /// `memory`: the guest memory the devices were built with.
    pub fn with_memory(mut self, memory: impl ReplayMemory + 'static) -> Self {
        self.memory = Some(Box::new(memory));
        self
    }

    /// Replays every exit through `dispatcher`, comparing the route too.
    pub fn run(self, dispatcher: &ExitDispatcher) -> Result<ReplayReport, ReplayError> {
        self.run_with(|exit| dispatcher.dispatch_routed(exit))
    }

    /// Replays every exit through `handler`, which answers with an [`ExitAction`] or, to have
    /// the route compared too, an `(ExitAction, Route)`.
    pub fn run_with<A: Into<Answer>>(
        mut self,
        mut handler: impl FnMut(VmExit<'_>) -> A,
    ) -> Result<ReplayReport, ReplayError> {
        let mut report = ReplayReport {
            host_events: self.host_events,
            truncated: self.truncated,
            ..ReplayReport::default()
        };
        let exits = std::mem::take(&mut self.exits);
        for record in &exits {
            let effects = self.effects.remove(&record.seq).unwrap_or_default();
            self.replay_exit(record, &effects, &mut handler, &mut report)?;
            report.exits += 1;
        }
        Ok(report)
    }

    fn replay_exit<A: Into<Answer>>(
        &mut self,
        record: &ExitRecord,
        effects: &Effects,
        handler: &mut impl FnMut(VmExit<'_>) -> A,
        report: &mut ReplayReport,
    ) -> Result<(), ReplayError> {
        let id = ExitId::of(record);
        let diverged = |mismatch| ReplayError::Diverged { exit: id, mismatch };
        if let Some(memory) = self.memory.as_deref_mut() {
            report.memory_accesses += load(memory, &self.payloads, record.seq, effects, &id)?;
        }
        {
            let mut state = self.shared.lock();
            state.position = Position::Exit(record.seq);
            state.expected = Expected {
                interrupts: effects.interrupts.clone(),
                msis: effects.msis.clone(),
                clock: effects.clock.iter().copied().collect(),
                disk: effects.disk.clone(),
            };
            state.observed = Default::default();
        }

        // The recorded exit, a read's buffer holding the complement of the recorded bytes.
        let mut exit = record.exit.clone();
        if let RecordedExit::IoIn { data, .. } | RecordedExit::MmioRead { data, .. } = &mut exit {
            data.iter_mut().for_each(|byte| *byte = !*byte);
        }
        let answer: Answer = {
            let _scope = ExitScope::enter(record.seq);
            handler(exit.as_exit()).into()
        };
        let observed = {
            let mut state = self.shared.lock();
            state.position = Position::Before(record.seq.saturating_add(1));
            std::mem::take(&mut state.observed)
        };

        if let (
            RecordedExit::IoIn { data: actual, .. } | RecordedExit::MmioRead { data: actual, .. },
            RecordedExit::IoIn { data: expected, .. }
            | RecordedExit::MmioRead { data: expected, .. },
        ) = (&exit, &record.exit)
            && actual != expected
        {
            return Err(diverged(Mismatch::Data {
                expected: Bytes(expected.clone()),
                actual: Bytes(actual.clone()),
            }));
        }
        if let Some(route) = answer.route
            && route != record.route
        {
            return Err(diverged(Mismatch::Route {
                expected: record.route,
                actual: route,
            }));
        }
        if answer.action != record.action {
            return Err(diverged(Mismatch::Action {
                expected: record.action,
                actual: answer.action,
            }));
        }
        let expected: Vec<_> = effects.interrupts.iter().map(|(call, _)| *call).collect();
        if observed.interrupts != expected {
            return Err(diverged(Mismatch::Interrupts {
                expected: Calls(expected),
                actual: Calls(observed.interrupts),
            }));
        }
        let expected: Vec<_> = effects.msis.iter().map(|(call, _)| *call).collect();
        if observed.msis != expected {
            return Err(diverged(Mismatch::Msis {
                expected: Calls(expected),
                actual: Calls(observed.msis),
            }));
        }
        if observed.clock_reads != effects.clock.len() {
            return Err(diverged(Mismatch::ClockReads {
                expected: effects.clock.len(),
                actual: observed.clock_reads,
            }));
        }
        let expected: Vec<_> = effects.disk.iter().map(|(call, _)| *call).collect();
        if observed.disk != expected {
            return Err(diverged(Mismatch::Disk {
                expected: Calls(expected),
                actual: Calls(observed.disk),
            }));
        }
        if let Some(memory) = self.memory.as_deref_mut() {
            report.memory_accesses += check(memory, &self.payloads, record.seq, effects, &id)?;
        }
        report.interrupts += effects.interrupts.len() as u64;
        report.msis += effects.msis.len() as u64;
        report.clock_reads += effects.clock.len() as u64;
        report.disk_calls += effects.disk.len() as u64;
        Ok(())
    }
}

/// Half-open address ranges, sorted and disjoint.
#[derive(Debug, Default)]
struct Ranges(Vec<(u64, u64)>);

impl Ranges {
    /// The parts of `[start, end)` no range covers.
    fn uncovered(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut parts = Vec::new();
        let mut at = start;
        for &(s, e) in &self.0 {
            if e <= at {
                continue;
            }
            if s >= end {
                break;
            }
            if s > at {
                parts.push((at, s));
            }
            at = e;
            if at >= end {
                break;
            }
        }
        if at < end {
            parts.push((at, end));
        }
        parts
    }

    fn add(&mut self, start: u64, end: u64) {
        self.0.push((start, end));
        self.0.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.0.len());
        for &(s, e) in &self.0 {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        self.0 = merged;
    }
}

/// The bytes of `access` and the range they cover, or the error naming what is missing.
fn bytes_of<'a>(
    payloads: &'a PayloadStore,
    seq: u64,
    access: &'a MemoryAccess,
) -> Result<(&'a [u8], u64, u64), ReplayError> {
    let bytes = match &access.data {
        Data::Inline(bytes) => bytes.as_slice(),
        Data::Stored { hash, .. } => payloads
            .get(hash)
            .ok_or(ReplayError::MissingPayload { seq, hash: *hash })?,
    };
    let end = access.gpa.saturating_add(bytes.len() as u64);
    Ok((bytes, access.gpa, end))
}

/// Writes into `memory` the bytes the devices read during the exit, where no earlier access of
/// the exit covers them; returns how many reads it loaded.
fn load(
    memory: &mut dyn ReplayMemory,
    payloads: &PayloadStore,
    seq: u64,
    effects: &Effects,
    id: &ExitId,
) -> Result<u64, ReplayError> {
    let mut covered = Ranges::default();
    let mut loaded = 0;
    for access in &effects.memory {
        let (bytes, start, end) = bytes_of(payloads, seq, access)?;
        if access.direction == Direction::Read {
            for (s, e) in covered.uncovered(start, end) {
                let part = &bytes[(s - start) as usize..(e - start) as usize];
                if !memory.write(s, part) {
                    return Err(ReplayError::Diverged {
                        exit: *id,
                        mismatch: Mismatch::MemoryLoad {
                            gpa: access.gpa,
                            len: bytes.len(),
                        },
                    });
                }
            }
            loaded += 1;
        }
        covered.add(start, end);
    }
    Ok(loaded)
}

/// Compares the guest memory the devices wrote during the exit, as the last write of each byte
/// left it, with `memory`; returns how many writes it compared.
fn check(
    memory: &mut dyn ReplayMemory,
    payloads: &PayloadStore,
    seq: u64,
    effects: &Effects,
    id: &ExitId,
) -> Result<u64, ReplayError> {
    let mut covered = Ranges::default();
    let mut checked = 0;
    let writes = effects
        .memory
        .iter()
        .rev()
        .filter(|access| access.direction == Direction::Write);
    for access in writes {
        let (bytes, start, end) = bytes_of(payloads, seq, access)?;
        for (s, e) in covered.uncovered(start, end) {
            let expected = &bytes[(s - start) as usize..(e - start) as usize];
            let mut actual = vec![0u8; expected.len()];
            let diverged = |mismatch| ReplayError::Diverged {
                exit: *id,
                mismatch,
            };
            if !memory.read(s, &mut actual) {
                return Err(diverged(Mismatch::MemoryRead {
                    gpa: access.gpa,
                    len: bytes.len(),
                }));
            }
            if let Some(first) = expected.iter().zip(&actual).position(|(a, b)| a != b) {
                let shown = first..expected.len().min(first + 16);
                return Err(diverged(Mismatch::MemoryWrite {
                    gpa: s + first as u64,
                    expected: Bytes(expected[shown.clone()].to_vec()),
                    actual: Bytes(actual[shown].to_vec()),
                }));
            }
        }
        covered.add(start, end);
        checked += 1;
    }
    Ok(checked)
}

#[cfg(test)]
mod tests;
