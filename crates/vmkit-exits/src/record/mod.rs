//! Recorded exits: a compact, versioned log of every exit a dispatcher answered, its answer, and
//! what the devices did meanwhile, so that a replay can run the same exits against freshly built
//! devices and check every answer byte for byte, without a hypervisor.
//!
//! A VMM gives its [`ExitDispatcher`](crate::ExitDispatcher) a shared [`RecordWriter`]
//! ([`with_recorder`](crate::ExitDispatcher::with_recorder)) and wraps what its devices reach
//! outside the exit's own bytes in recording decorators: interrupt lines and MSI senders
//! ([`RecordingLine`](crate::trigger::RecordingLine),
//! [`RecordingMsi`](crate::trigger::RecordingMsi)), and, in vmkit-devices, the CMOS clock, the
//! disk backends and virtio-blk's guest memory. [`RecordReader`] reads a recording back into
//! typed [`Record`]s.
//!
//! # Attribution
//!
//! The dispatcher takes a global sequence number for every exit before it calls any device (the
//! order of exits across vCPUs) and marks it current on its thread ([`ExitScope`]) while the
//! devices run; every record a decorator writes meanwhile is attributed to that exit
//! ([`Attribution::Exit`]). A decorator called outside any exit — COM1's receive interrupt raised
//! by the thread that feeds it host input, a clock read while the VMM builds the CMOS — writes
//! [`Attribution::Outside`] with the number of exits sequenced so far. A replay treats those as
//! asynchronous host events between exits: it does not check them against any exit's answer,
//! and a divergence right after one points at host input the recording does not hold rather than
//! at a device.
//!
//! The records of an exit precede its [`Record::Exit`], which is written when the answer is
//! known. With one vCPU the exits appear in sequence order; with several, their records
//! interleave and a reader orders exits by [`ExitRecord::seq`].
//!
//! # Encoding
//!
//! A 12-byte header — [`MAGIC`], [`VERSION`] (`u16`, little-endian) and two reserved zero bytes —
//! then records, each a tag byte, its payload's length and the payload. Integers are unsigned
//! LEB128: most values in a recording are small (ports, sizes, vCPU ids, line numbers, sequence
//! numbers in the millions), so a port-I/O exit takes about a dozen bytes where fixed-width
//! fields would take three times that; a decoder of LEB128 is a short loop with an overflow
//! check. Byte strings are a LEB128 length and the bytes; content hashes are 32 raw bytes
//! (SHA-256). The length prefix lets a reader bound every record before it decodes it and check
//! that the payload was consumed exactly. Disk data, and guest memory longer than
//! [`INLINE_MAX`] bytes, is stored once per content hash in a [`Record::Payload`] and referred
//! to by its hash ([`Data::Stored`]): a sector read from the disk and the same bytes written to
//! guest memory cost one copy.

mod codec;
mod context;
mod reader;
mod writer;

use std::time::Duration;

use crate::action::ExitAction;
use crate::exit::{ExitKind, InsnBytes, SystemEvent, VmExit};

pub use context::{ExitScope, current_exit, current_vcpu, set_current_vcpu};
pub use reader::{ReadError, RecordReader};
pub use writer::{RecordStats, RecordWriter};

/// The first eight bytes of every recording.
pub const MAGIC: [u8; 8] = *b"VMKITREC";
/// The format version this crate writes and reads. A change to any record's encoding bumps it.
pub const VERSION: u16 = 1;
/// Bytes of the header: [`MAGIC`], [`VERSION`] and two reserved zero bytes.
pub const HEADER_LEN: usize = 12;
/// The longest payload a record may have; a reader refuses longer ones before reading them.
pub const MAX_RECORD_LEN: u64 = 16 << 20;
/// Guest-memory data longer than this is stored by content hash rather than inline.
pub const INLINE_MAX: usize = 64;

/// The SHA-256 of a disk or memory payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentHash(pub [u8; 32]);

impl ContentHash {
    /// The hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest;
        Self(sha2::Sha256::digest(bytes).into())
    }
}

impl std::fmt::Display for ContentHash {
    /// The first eight bytes in hex, as a short name.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for byte in &self.0[..8] {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// The exit a record belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Attribution {
    /// It happened while the exit with this sequence number was being handled.
    Exit(u64),
    /// It happened outside any exit (another thread of the VMM, or before the first exit), when
    /// `exits_before` exits had been sequenced.
    Outside {
        /// The number of exits sequenced before it.
        exits_before: u64,
    },
}

/// How the dispatcher answered an access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// A device on the bus handled it.
    Device,
    /// No device claims the address: reads returned all ones, writes were dropped.
    Unclaimed,
    /// The size is not 1, 2, 4 or 8: answered as unclaimed.
    BadSize,
    /// Not an access: the dispatcher answered the exit itself (halt, shutdown, events).
    NotAnAccess,
}

/// An exit as the dispatcher saw it, owning its data: for reads, the bytes returned to the
/// guest; for writes, the bytes written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordedExit {
    /// [`VmExit::IoIn`].
    IoIn {
        /// The port.
        port: u16,
        /// The bytes returned.
        data: Vec<u8>,
    },
    /// [`VmExit::IoOut`].
    IoOut {
        /// The port.
        port: u16,
        /// The bytes written.
        data: Vec<u8>,
    },
    /// [`VmExit::MmioRead`].
    MmioRead {
        /// Guest-physical address.
        addr: u64,
        /// The bytes returned.
        data: Vec<u8>,
    },
    /// [`VmExit::MmioWrite`].
    MmioWrite {
        /// Guest-physical address.
        addr: u64,
        /// The bytes written.
        data: Vec<u8>,
    },
    /// [`VmExit::Hlt`].
    Hlt,
    /// [`VmExit::TripleFault`].
    TripleFault,
    /// [`VmExit::SystemEvent`].
    SystemEvent(SystemEvent),
    /// [`VmExit::FailEntry`].
    FailEntry {
        /// Hardware entry-failure reason.
        reason: u64,
        /// The physical CPU.
        cpu: u32,
    },
    /// [`VmExit::InternalError`].
    InternalError {
        /// The backend's sub-error code.
        suberror: u32,
        /// The instruction bytes, when reported.
        insn: Option<InsnBytes>,
    },
    /// [`VmExit::Debug`].
    Debug {
        /// Guest instruction pointer.
        pc: u64,
        /// The exception vector.
        exception: u32,
    },
    /// [`VmExit::Other`].
    Other {
        /// The backend's raw exit reason.
        reason: u32,
    },
}

impl RecordedExit {
    /// A copy of `exit` (its data as it is now: call it after the dispatcher filled a read).
    pub fn from_exit(exit: &VmExit<'_>) -> Self {
        match exit {
            VmExit::IoIn { port, data } => Self::IoIn {
                port: *port,
                data: data.to_vec(),
            },
            VmExit::IoOut { port, data } => Self::IoOut {
                port: *port,
                data: data.to_vec(),
            },
            VmExit::MmioRead { addr, data } => Self::MmioRead {
                addr: *addr,
                data: data.to_vec(),
            },
            VmExit::MmioWrite { addr, data } => Self::MmioWrite {
                addr: *addr,
                data: data.to_vec(),
            },
            VmExit::Hlt => Self::Hlt,
            VmExit::TripleFault => Self::TripleFault,
            VmExit::SystemEvent(event) => Self::SystemEvent(*event),
            VmExit::FailEntry { reason, cpu } => Self::FailEntry {
                reason: *reason,
                cpu: *cpu,
            },
            VmExit::InternalError { suberror, insn } => Self::InternalError {
                suberror: *suberror,
                insn: *insn,
            },
            VmExit::Debug { pc, exception } => Self::Debug {
                pc: *pc,
                exception: *exception,
            },
            VmExit::Other { reason } => Self::Other { reason: *reason },
        }
    }

    /// The exit to hand a dispatcher again. A read's `data` is the buffer the dispatcher fills
    /// (its length is the access size): keep the recorded bytes elsewhere to compare.
    pub fn as_exit(&mut self) -> VmExit<'_> {
        match self {
            Self::IoIn { port, data } => VmExit::IoIn { port: *port, data },
            Self::IoOut { port, data } => VmExit::IoOut { port: *port, data },
            Self::MmioRead { addr, data } => VmExit::MmioRead { addr: *addr, data },
            Self::MmioWrite { addr, data } => VmExit::MmioWrite { addr: *addr, data },
            Self::Hlt => VmExit::Hlt,
            Self::TripleFault => VmExit::TripleFault,
            Self::SystemEvent(event) => VmExit::SystemEvent(*event),
            Self::FailEntry { reason, cpu } => VmExit::FailEntry {
                reason: *reason,
                cpu: *cpu,
            },
            Self::InternalError { suberror, insn } => VmExit::InternalError {
                suberror: *suberror,
                insn: *insn,
            },
            Self::Debug { pc, exception } => VmExit::Debug {
                pc: *pc,
                exception: *exception,
            },
            Self::Other { reason } => VmExit::Other { reason: *reason },
        }
    }

    /// The kind of the exit.
    pub fn kind(&self) -> ExitKind {
        match self {
            Self::IoIn { .. } => ExitKind::IoIn,
            Self::IoOut { .. } => ExitKind::IoOut,
            Self::MmioRead { .. } => ExitKind::MmioRead,
            Self::MmioWrite { .. } => ExitKind::MmioWrite,
            Self::Hlt => ExitKind::Hlt,
            Self::TripleFault => ExitKind::TripleFault,
            Self::SystemEvent(_) => ExitKind::SystemEvent,
            Self::FailEntry { .. } => ExitKind::FailEntry,
            Self::InternalError { .. } => ExitKind::InternalError,
            Self::Debug { .. } => ExitKind::Debug,
            Self::Other { .. } => ExitKind::Other,
        }
    }
}

/// One exit and the dispatcher's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitRecord {
    /// The global sequence number taken when the dispatcher received the exit.
    pub seq: u64,
    /// The vCPU that exited ([`set_current_vcpu`] of the thread that dispatched it).
    pub vcpu: u32,
    /// The exit, with the data written or returned.
    pub exit: RecordedExit,
    /// Who answered an access.
    pub route: Route,
    /// What the dispatcher told the vCPU loop.
    pub action: ExitAction,
}

/// What a device did to an interrupt line, as [`InterruptTrigger`](crate::InterruptTrigger)
/// defines it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LineEvent {
    /// One edge ([`trigger`](crate::InterruptTrigger::trigger)).
    Edge,
    /// The level line raised ([`assert`](crate::InterruptTrigger::assert)).
    Assert,
    /// The level line lowered ([`deassert`](crate::InterruptTrigger::deassert)).
    Deassert,
}

/// Whether a device read or wrote guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The device read these bytes (as they were when it read them).
    Read,
    /// The device wrote these bytes (as they are after the write).
    Write,
}

/// Bytes of a record: inline, or a reference to a [`Record::Payload`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Data {
    /// The bytes themselves.
    Inline(Vec<u8>),
    /// `len` bytes stored in the payload of this hash.
    Stored {
        /// The payload's hash.
        hash: ContentHash,
        /// Its length.
        len: u64,
    },
}

impl Data {
    /// How many bytes.
    pub fn len(&self) -> u64 {
        match self {
            Data::Inline(bytes) => bytes.len() as u64,
            Data::Stored { len, .. } => *len,
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a disk backend was asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DiskOp {
    /// Read `len` bytes at `offset`.
    Read,
    /// Write `len` bytes at `offset`.
    Write,
    /// Make completed writes durable.
    Flush,
}

/// One entry of a recording.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A fact about the recorded VM (the VMM, the guest, memory and disk sizes), for whoever
    /// builds the devices of a replay.
    Meta {
        /// The name.
        key: String,
        /// The value.
        value: String,
    },
    /// An exit and its answer.
    Exit(ExitRecord),
    /// A device raised, lowered or pulsed interrupt line `line` (the GSI the VMM wired it to).
    Interrupt {
        /// When.
        at: Attribution,
        /// The line.
        line: u32,
        /// What happened to it.
        event: LineEvent,
        /// Whether the backend accepted it.
        ok: bool,
    },
    /// A device sent a message-signalled interrupt.
    Msi {
        /// When.
        at: Attribution,
        /// The message address.
        address: u64,
        /// The message data.
        data: u32,
        /// Whether the backend accepted it.
        ok: bool,
    },
    /// A device read the wall clock (the CMOS RTC).
    Clock {
        /// When.
        at: Attribution,
        /// The time read, since the Unix epoch.
        since_epoch: Duration,
    },
    /// A device read or wrote guest memory (virtio-blk's rings, descriptors and buffers).
    Memory {
        /// When.
        at: Attribution,
        /// Guest-physical address of the first byte.
        gpa: u64,
        /// Read or write.
        direction: Direction,
        /// The bytes read, or the bytes after the write.
        data: Data,
    },
    /// A device called its disk backend.
    Disk {
        /// When.
        at: Attribution,
        /// Which disk (the VMM's numbering: 0 is the first `--disk`).
        disk: u32,
        /// What it asked.
        op: DiskOp,
        /// Byte offset on the disk (0 for a flush).
        offset: u64,
        /// Bytes moved (0 for a flush).
        len: u64,
        /// The hash of the bytes read or written, when the call succeeded and moved any.
        hash: Option<ContentHash>,
        /// Whether the backend succeeded.
        ok: bool,
    },
    /// The bytes of a hash that [`Data::Stored`] and [`Record::Disk`] refer to, stored once,
    /// before the first record that refers to it.
    Payload {
        /// `ContentHash::of(&bytes)`.
        hash: ContentHash,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// The recording stops here: the writer reached its size limit. Nothing after it was kept.
    Truncated {
        /// The first record that was not kept.
        at: Attribution,
    },
}

impl Record {
    /// The exit the record belongs to (`None` for metadata and payloads).
    pub fn attribution(&self) -> Option<Attribution> {
        match self {
            Record::Exit(exit) => Some(Attribution::Exit(exit.seq)),
            Record::Interrupt { at, .. }
            | Record::Msi { at, .. }
            | Record::Clock { at, .. }
            | Record::Memory { at, .. }
            | Record::Disk { at, .. }
            | Record::Truncated { at } => Some(*at),
            Record::Meta { .. } | Record::Payload { .. } => None,
        }
    }

    /// Appends the record's encoding (tag, length, payload) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        codec::encode(self, out);
    }
}

/// The header every recording starts with.
pub fn header() -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..8].copy_from_slice(&MAGIC);
    header[8..10].copy_from_slice(&VERSION.to_le_bytes());
    header
}

#[cfg(test)]
mod tests;
