//! Why a replay stops: a recording it cannot use, or the first exit whose answer or side effects
//! differ from the recording's.

use std::fmt;

use vmkit_exits::record::{ContentHash, ExitRecord, ReadError, RecordedExit, Route};
use vmkit_exits::{ExitAction, ExitKind};

use super::recording::{DiskCall, LineCall, MsiCall};

/// Why a replay stopped.
#[derive(Debug, displaydoc::Display, thiserror::Error)]
pub enum ReplayError {
    /// cannot read the recording
    Read(#[source] ReadError),
    /// the recording holds exit {seq} twice
    DuplicateExit {
        /// The sequence number.
        seq: u64,
    },
    /// payload {hash} does not hash to its name
    BadPayload {
        /// The hash it is stored under.
        hash: ContentHash,
    },
    /// exit {seq} refers to payload {hash}, which the recording does not hold
    MissingPayload {
        /// The exit.
        seq: u64,
        /// The payload.
        hash: ContentHash,
    },
    /// {exit} diverges: {mismatch}
    Diverged {
        /// The first exit that differs.
        exit: ExitId,
        /// What differs.
        mismatch: Mismatch,
    },
}

impl ReplayError {
    /// The exit that diverged, for [`ReplayError::Diverged`].
    pub fn exit(&self) -> Option<&ExitId> {
        match self {
            ReplayError::Diverged { exit, .. } => Some(exit),
            _ => None,
        }
    }

    /// What differs, for [`ReplayError::Diverged`].
    pub fn mismatch(&self) -> Option<&Mismatch> {
        match self {
            ReplayError::Diverged { mismatch, .. } => Some(mismatch),
            _ => None,
        }
    }
}

/// An exit, as a divergence names it: its sequence number, vCPU, kind, address and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitId {
    /// The global sequence number.
    pub seq: u64,
    /// The vCPU that exited.
    pub vcpu: u32,
    /// The kind of exit.
    pub kind: ExitKind,
    /// The port or guest-physical address of an access.
    pub addr: Option<u64>,
    /// The bytes of an access.
    pub size: usize,
}

impl ExitId {
    /// The exit of `record`.
    pub fn of(record: &ExitRecord) -> Self {
        let (addr, size) = match &record.exit {
            RecordedExit::IoIn { port, data } | RecordedExit::IoOut { port, data } => {
                (Some(u64::from(*port)), data.len())
            }
            RecordedExit::MmioRead { addr, data } | RecordedExit::MmioWrite { addr, data } => {
                (Some(*addr), data.len())
            }
            _ => (None, 0),
        };
        Self {
            seq: record.seq,
            vcpu: record.vcpu,
            kind: record.exit.kind(),
            addr,
            size,
        }
    }
}

impl fmt::Display for ExitId {
    /// `exit 12 (io-in of 1 byte at 0x3fd, vCPU 0)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "exit {} ({}", self.seq, self.kind)?;
        if let Some(addr) = self.addr {
            let plural = if self.size == 1 { "" } else { "s" };
            write!(f, " of {} byte{plural} at {addr:#x}", self.size)?;
        }
        write!(f, ", vCPU {})", self.vcpu)
    }
}

/// Bytes, printed in hex (`[de ad]`).
#[derive(Clone, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, byte) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{byte:02x}")?;
        }
        f.write_str("]")
    }
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A list of calls, printed joined (`line 4 assert, line 4 deassert`, or `none`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Calls<T>(pub Vec<T>);

impl<T: fmt::Display> fmt::Display for Calls<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        for (i, call) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{call}")?;
        }
        Ok(())
    }
}

/// What differs between a replayed exit and its recording: the answer (data, route, action),
/// then the side effects in this order.
#[derive(Clone, Debug, PartialEq, Eq, displaydoc::Display)]
pub enum Mismatch {
    /// it returned {actual} where the recording has {expected}
    Data {
        /// The bytes the recording returned.
        expected: Bytes,
        /// The bytes the replay returned.
        actual: Bytes,
    },
    /// it was answered as {actual:?} where the recording has {expected:?}
    Route {
        /// The recording's route.
        expected: Route,
        /// The replay's.
        actual: Route,
    },
    /// it told the vCPU {actual:?} where the recording has {expected:?}
    Action {
        /// The recording's action.
        expected: ExitAction,
        /// The replay's.
        actual: ExitAction,
    },
    /// its interrupt-line calls are {actual} where the recording has {expected}
    Interrupts {
        /// The recording's calls.
        expected: Calls<LineCall>,
        /// The replay's.
        actual: Calls<LineCall>,
    },
    /// its messages are {actual} where the recording has {expected}
    Msis {
        /// The recording's messages.
        expected: Calls<MsiCall>,
        /// The replay's.
        actual: Calls<MsiCall>,
    },
    /// it read the wall clock {actual} times where the recording has {expected}
    ClockReads {
        /// The recording's readings.
        expected: usize,
        /// The replay's.
        actual: usize,
    },
    /// its disk calls are {actual} where the recording has {expected}
    Disk {
        /// The recording's calls.
        expected: Calls<DiskCall>,
        /// The replay's.
        actual: Calls<DiskCall>,
    },
    /// it left {actual} at {gpa:#x} in guest memory where the recording has {expected}
    MemoryWrite {
        /// The first byte that differs.
        gpa: u64,
        /// The recording's bytes from there (at most 16).
        expected: Bytes,
        /// The replay's.
        actual: Bytes,
    },
    /// the {len} bytes a device read at {gpa:#x} are not all in the replay's guest memory
    MemoryLoad {
        /// Where the device read.
        gpa: u64,
        /// How many bytes.
        len: usize,
    },
    /// the {len} bytes a device wrote at {gpa:#x} are not all in the replay's guest memory
    MemoryRead {
        /// Where the device wrote.
        gpa: u64,
        /// How many bytes.
        len: usize,
    },
}
