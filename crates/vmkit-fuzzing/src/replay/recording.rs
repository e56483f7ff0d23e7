//! [`Recording`]: a recording read whole and indexed for a replay — its facts, its exits in
//! sequence order, what the devices did during each exit, the host events outside any, and the
//! payloads by hash.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::time::Duration;

use vmkit_exits::record::{
    Attribution, ContentHash, Data, Direction, DiskOp, ExitRecord, LineEvent, Record, RecordReader,
};

use super::error::ReplayError;

/// The payloads of a recording by content hash: the disk data and the longer guest-memory data
/// its records refer to.
#[derive(Clone, Debug, Default)]
pub struct PayloadStore {
    payloads: HashMap<ContentHash, Vec<u8>>,
}

impl PayloadStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `bytes` under `hash` after checking that they hash to it.
    pub fn insert(&mut self, hash: ContentHash, bytes: Vec<u8>) -> Result<(), ReplayError> {
        if ContentHash::of(&bytes) != hash {
            return Err(ReplayError::BadPayload { hash });
        }
        self.payloads.insert(hash, bytes);
        Ok(())
    }

    /// The bytes stored under `hash`.
    pub fn get(&self, hash: &ContentHash) -> Option<&[u8]> {
        self.payloads.get(hash).map(Vec::as_slice)
    }

    /// The bytes `data` stands for: inline, or the payload it refers to.
    pub fn resolve<'a>(&'a self, data: &'a Data) -> Option<&'a [u8]> {
        match data {
            Data::Inline(bytes) => Some(bytes),
            Data::Stored { hash, .. } => self.get(hash),
        }
    }

    /// How many payloads.
    pub fn len(&self) -> usize {
        self.payloads.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.payloads.is_empty()
    }
}

/// One call a device made to an interrupt line, as the recording holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineCall {
    /// The line (the GSI the VMM wired it to).
    pub line: u32,
    /// Edge, assert or deassert.
    pub event: LineEvent,
}

impl std::fmt::Display for LineCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let event = match self.event {
            LineEvent::Edge => "edge",
            LineEvent::Assert => "assert",
            LineEvent::Deassert => "deassert",
        };
        write!(f, "line {} {event}", self.line)
    }
}

/// One message a device sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiCall {
    /// The message address.
    pub address: u64,
    /// The message data.
    pub data: u32,
}

impl std::fmt::Display for MsiCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x} <- {:#x}", self.address, self.data)
    }
}

/// One call a device made to a disk backend: what a replay compares (whether the backend
/// succeeded is the recording's answer, which the replay gives back).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskCall {
    /// Which disk (the VMM's numbering).
    pub disk: u32,
    /// Read, write or flush.
    pub op: DiskOp,
    /// Byte offset (0 for a flush).
    pub offset: u64,
    /// Bytes moved (0 for a flush).
    pub len: u64,
    /// The hash of the bytes moved, when the call succeeded and moved any.
    pub hash: Option<ContentHash>,
}

impl std::fmt::Display for DiskCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = match self.op {
            DiskOp::Read => "read",
            DiskOp::Write => "write",
            DiskOp::Flush => return write!(f, "disk {} flush", self.disk),
        };
        write!(
            f,
            "disk {} {op} of {} bytes at {:#x}",
            self.disk, self.len, self.offset
        )?;
        match self.hash {
            Some(hash) => write!(f, " ({hash})"),
            None => Ok(()),
        }
    }
}

/// A guest-memory access of a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryAccess {
    /// Guest-physical address of the first byte.
    pub gpa: u64,
    /// Read or write.
    pub direction: Direction,
    /// The bytes read, or the bytes after the write.
    pub data: Data,
}

/// What the devices did while one exit was handled, in the order they did it, with the answers
/// the host gave them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Interrupt-line calls and whether the backend accepted each.
    pub interrupts: Vec<(LineCall, bool)>,
    /// Messages and whether the backend accepted each.
    pub msis: Vec<(MsiCall, bool)>,
    /// Wall-clock readings.
    pub clock: Vec<Duration>,
    /// Guest-memory accesses.
    pub memory: Vec<MemoryAccess>,
    /// Disk calls and whether the backend succeeded.
    pub disk: Vec<(DiskCall, bool)>,
}

impl Effects {
    fn add(&mut self, record: Record) {
        match record {
            Record::Interrupt {
                line, event, ok, ..
            } => self.interrupts.push((LineCall { line, event }, ok)),
            Record::Msi {
                address, data, ok, ..
            } => self.msis.push((MsiCall { address, data }, ok)),
            Record::Clock { since_epoch, .. } => self.clock.push(since_epoch),
            Record::Memory {
                gpa,
                direction,
                data,
                ..
            } => self.memory.push(MemoryAccess {
                gpa,
                direction,
                data,
            }),
            Record::Disk {
                disk,
                op,
                offset,
                len,
                hash,
                ok,
                ..
            } => self.disk.push((
                DiskCall {
                    disk,
                    op,
                    offset,
                    len,
                    hash,
                },
                ok,
            )),
            Record::Meta { .. }
            | Record::Exit(_)
            | Record::Payload { .. }
            | Record::Truncated { .. } => {}
        }
    }
}

/// A recording read whole: its facts, its exits ordered by sequence number, what the devices did
/// during each exit, and its payloads.
///
/// Records attributed to no exit ([`Attribution::Outside`]) are host events — COM1's receive
/// interrupt raised by the thread feeding it input, a clock reading while the VMM built the
/// CMOS: a replay compares none of them; it hands the clock readings among them to the devices
/// that read the clock between the same exits (see [`RecordedClock`](super::RecordedClock)),
/// and counts the rest. Records attributed to an exit the recording does not hold (the exit's
/// own record was cut off) are counted with them.
#[derive(Clone, Debug, Default)]
pub struct Recording {
    meta: Vec<(String, String)>,
    exits: Vec<ExitRecord>,
    effects: HashMap<u64, Effects>,
    outside_clock: Vec<(u64, Duration)>,
    host_events: u64,
    payloads: PayloadStore,
    truncated: bool,
}

impl Recording {
    /// Reads a whole recording from `input` (which may be truncated, corrupt or hostile: a
    /// record that cannot be read is an error, never a panic).
    pub fn read(input: impl Read) -> Result<Self, ReplayError> {
        let reader = RecordReader::new(input).map_err(ReplayError::Read)?;
        let records = reader
            .collect::<Result<Vec<_>, _>>()
            .map_err(ReplayError::Read)?;
        Self::from_records(records)
    }

    /// Indexes `records`, in the order a recording holds them. A payload is checked against its
    /// hash; an exit's sequence number may appear once.
    pub fn from_records(records: impl IntoIterator<Item = Record>) -> Result<Self, ReplayError> {
        let mut recording = Recording::default();
        let mut pending: HashMap<u64, Effects> = HashMap::new();
        let mut exits = BTreeMap::new();
        for record in records {
            match record {
                Record::Meta { key, value } => recording.meta.push((key, value)),
                Record::Exit(exit) => {
                    let seq = exit.seq;
                    if exits.insert(seq, exit).is_some() {
                        return Err(ReplayError::DuplicateExit { seq });
                    }
                }
                Record::Payload { hash, bytes } => recording.payloads.insert(hash, bytes)?,
                Record::Truncated { .. } => recording.truncated = true,
                Record::Clock {
                    at: Attribution::Outside { exits_before },
                    since_epoch,
                } => {
                    recording.outside_clock.push((exits_before, since_epoch));
                    recording.host_events += 1;
                }
                other => match other.attribution() {
                    Some(Attribution::Exit(seq)) => pending.entry(seq).or_default().add(other),
                    _ => recording.host_events += 1,
                },
            }
        }
        for (seq, effects) in pending {
            if exits.contains_key(&seq) {
                recording.effects.insert(seq, effects);
            } else {
                recording.host_events += effects.count();
            }
        }
        recording.exits = exits.into_values().collect();
        Ok(recording)
    }

    /// The value of the first fact named `key` (`memory`, `com1`, ... as the recording VMM
    /// wrote them).
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.meta
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The values of every fact named `key`, in order (a VMM may write one per disk).
    pub fn meta_values<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.meta
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The exits, in sequence order.
    pub fn exits(&self) -> &[ExitRecord] {
        &self.exits
    }

    /// What the devices did during exit `seq` (nothing, for an exit during which they did
    /// nothing or that the recording does not hold).
    pub fn effects(&self, seq: u64) -> Option<&Effects> {
        self.effects.get(&seq)
    }

    /// The payloads.
    pub fn payloads(&self) -> &PayloadStore {
        &self.payloads
    }

    /// Records no replay compares: host events outside any exit and records of exits the
    /// recording does not hold.
    pub fn host_events(&self) -> u64 {
        self.host_events
    }

    /// Whether the recording ends with a truncation marker (its writer reached its size limit):
    /// a replay covers the exits before it.
    pub fn is_truncated(&self) -> bool {
        self.truncated
    }

    /// The parts a replay takes apart.
    pub(super) fn into_parts(self) -> Parts {
        Parts {
            exits: self.exits,
            effects: self.effects,
            outside_clock: self.outside_clock,
            host_events: self.host_events,
            payloads: self.payloads,
            truncated: self.truncated,
        }
    }
}

impl Effects {
    fn count(&self) -> u64 {
        (self.interrupts.len()
            + self.msis.len()
            + self.clock.len()
            + self.memory.len()
            + self.disk.len()) as u64
    }
}

/// A [`Recording`] taken apart by [`Replay`](super::Replay).
pub(super) struct Parts {
    pub(super) exits: Vec<ExitRecord>,
    pub(super) effects: HashMap<u64, Effects>,
    pub(super) outside_clock: Vec<(u64, Duration)>,
    pub(super) host_events: u64,
    pub(super) payloads: PayloadStore,
    pub(super) truncated: bool,
}
