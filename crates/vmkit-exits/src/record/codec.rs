//! The byte encoding of records: a tag, a LEB128 length, a payload of LEB128 integers, byte
//! strings (LEB128 length + bytes) and raw 32-byte hashes.

use std::time::Duration;

use super::{
    Attribution, ContentHash, Data, Direction, DiskOp, ExitRecord, LineEvent, Record, RecordedExit,
    Route,
};
use crate::action::{ExitAction, StopReason};
use crate::exit::{ExitKind, InsnBytes, MAX_INSN_LEN, SystemEvent};

pub(super) const TAG_META: u8 = 1;
pub(super) const TAG_EXIT: u8 = 2;
pub(super) const TAG_INTERRUPT: u8 = 3;
pub(super) const TAG_MSI: u8 = 4;
pub(super) const TAG_CLOCK: u8 = 5;
pub(super) const TAG_MEMORY: u8 = 6;
pub(super) const TAG_DISK: u8 = 7;
pub(super) const TAG_PAYLOAD: u8 = 8;
pub(super) const TAG_TRUNCATED: u8 = 9;

/// The most bytes a LEB128 `u64` takes.
pub(super) const MAX_LEB_LEN: usize = 10;

/// Appends `v` as unsigned LEB128.
pub(super) fn put_u64(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u64(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_attribution(out: &mut Vec<u8>, at: Attribution) {
    // The low bit tells the two apart; sequence numbers never reach 2^63.
    match at {
        Attribution::Exit(seq) => put_u64(out, seq << 1),
        Attribution::Outside { exits_before } => put_u64(out, (exits_before << 1) | 1),
    }
}

fn put_bool(out: &mut Vec<u8>, b: bool) {
    out.push(u8::from(b));
}

/// Appends a payload record of `bytes` with `hash` (without building a [`Record`]).
pub(super) fn encode_payload(hash: &ContentHash, bytes: &[u8], out: &mut Vec<u8>) {
    out.push(TAG_PAYLOAD);
    let len = hash.0.len() + leb_len(bytes.len() as u64) + bytes.len();
    put_u64(out, len as u64);
    out.extend_from_slice(&hash.0);
    put_bytes(out, bytes);
}

fn leb_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// Appends `record` (tag, length, payload) to `out`.
pub(super) fn encode(record: &Record, out: &mut Vec<u8>) {
    if let Record::Payload { hash, bytes } = record {
        encode_payload(hash, bytes, out);
        return;
    }
    let mut payload = Vec::with_capacity(32);
    let tag = encode_payload_of(record, &mut payload);
    out.push(tag);
    put_u64(out, payload.len() as u64);
    out.extend_from_slice(&payload);
}

fn encode_payload_of(record: &Record, p: &mut Vec<u8>) -> u8 {
    match record {
        Record::Meta { key, value } => {
            put_bytes(p, key.as_bytes());
            put_bytes(p, value.as_bytes());
            TAG_META
        }
        Record::Exit(exit) => {
            encode_exit(exit, p);
            TAG_EXIT
        }
        Record::Interrupt {
            at,
            line,
            event,
            ok,
        } => {
            put_attribution(p, *at);
            put_u64(p, u64::from(*line));
            p.push(match event {
                LineEvent::Edge => 0,
                LineEvent::Assert => 1,
                LineEvent::Deassert => 2,
            });
            put_bool(p, *ok);
            TAG_INTERRUPT
        }
        Record::Msi {
            at,
            address,
            data,
            ok,
        } => {
            put_attribution(p, *at);
            put_u64(p, *address);
            put_u64(p, u64::from(*data));
            put_bool(p, *ok);
            TAG_MSI
        }
        Record::Clock { at, since_epoch } => {
            put_attribution(p, *at);
            put_u64(p, since_epoch.as_secs());
            put_u64(p, u64::from(since_epoch.subsec_nanos()));
            TAG_CLOCK
        }
        Record::Memory {
            at,
            gpa,
            direction,
            data,
        } => {
            put_attribution(p, *at);
            put_u64(p, *gpa);
            p.push(match direction {
                Direction::Read => 0,
                Direction::Write => 1,
            });
            match data {
                Data::Inline(bytes) => {
                    p.push(0);
                    put_bytes(p, bytes);
                }
                Data::Stored { hash, len } => {
                    p.push(1);
                    p.extend_from_slice(&hash.0);
                    put_u64(p, *len);
                }
            }
            TAG_MEMORY
        }
        Record::Disk {
            at,
            disk,
            op,
            offset,
            len,
            hash,
            ok,
        } => {
            put_attribution(p, *at);
            put_u64(p, u64::from(*disk));
            p.push(match op {
                DiskOp::Read => 0,
                DiskOp::Write => 1,
                DiskOp::Flush => 2,
            });
            put_u64(p, *offset);
            put_u64(p, *len);
            put_bool(p, *ok);
            match hash {
                Some(hash) => {
                    p.push(1);
                    p.extend_from_slice(&hash.0);
                }
                None => p.push(0),
            }
            TAG_DISK
        }
        Record::Truncated { at } => {
            put_attribution(p, *at);
            TAG_TRUNCATED
        }
        // Encoded by `encode_payload`, without a copy.
        Record::Payload { .. } => TAG_PAYLOAD,
    }
}

fn encode_exit(exit: &ExitRecord, p: &mut Vec<u8>) {
    put_u64(p, exit.seq);
    put_u64(p, u64::from(exit.vcpu));
    p.push(exit.exit.kind() as u8);
    p.push(match exit.route {
        Route::Device => 0,
        Route::Unclaimed => 1,
        Route::BadSize => 2,
        Route::NotAnAccess => 3,
    });
    match &exit.exit {
        RecordedExit::IoIn { port, data } | RecordedExit::IoOut { port, data } => {
            put_u64(p, u64::from(*port));
            put_bytes(p, data);
        }
        RecordedExit::MmioRead { addr, data } | RecordedExit::MmioWrite { addr, data } => {
            put_u64(p, *addr);
            put_bytes(p, data);
        }
        RecordedExit::Hlt | RecordedExit::TripleFault => {}
        RecordedExit::SystemEvent(event) => match event {
            SystemEvent::Reset => p.push(0),
            SystemEvent::PowerOff => p.push(1),
            SystemEvent::Crash => p.push(2),
            SystemEvent::Other(raw) => {
                p.push(3);
                put_u64(p, u64::from(*raw));
            }
        },
        RecordedExit::FailEntry { reason, cpu } => {
            put_u64(p, *reason);
            put_u64(p, u64::from(*cpu));
        }
        RecordedExit::InternalError { suberror, insn } => {
            put_u64(p, u64::from(*suberror));
            put_insn(p, insn);
        }
        RecordedExit::Debug { pc, exception } => {
            put_u64(p, *pc);
            put_u64(p, u64::from(*exception));
        }
        RecordedExit::Other { reason } => put_u64(p, u64::from(*reason)),
    }
    match exit.action {
        ExitAction::Resume => p.push(0),
        ExitAction::Halt => p.push(1),
        ExitAction::Stop(reason) => {
            p.push(2);
            encode_stop(reason, p);
        }
    }
}

fn put_insn(p: &mut Vec<u8>, insn: &Option<InsnBytes>) {
    match insn {
        Some(insn) => {
            p.push(1);
            put_bytes(p, insn.as_slice());
        }
        None => p.push(0),
    }
}

fn encode_stop(reason: StopReason, p: &mut Vec<u8>) {
    match reason {
        StopReason::GuestExit(code) => {
            p.push(0);
            put_u64(p, u64::from(code));
        }
        StopReason::Reset => p.push(1),
        StopReason::PowerOff => p.push(2),
        StopReason::TripleFault => p.push(3),
        StopReason::Crash => p.push(4),
        StopReason::EntryFailed(reason) => {
            p.push(5);
            put_u64(p, reason);
        }
        StopReason::InternalError { suberror, insn } => {
            p.push(6);
            put_u64(p, u64::from(suberror));
            put_insn(p, &insn);
        }
        StopReason::Unhandled(reason) => {
            p.push(7);
            put_u64(p, u64::from(reason));
        }
    }
}

/// Why a payload does not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DecodeError {
    /// A field runs past the end of the payload.
    Short,
    /// A field holds a value the format does not allow.
    Invalid(&'static str),
}

type Result<T> = std::result::Result<T, DecodeError>;

/// Reads fields from one record's payload.
struct Decoder<'a> {
    bytes: &'a [u8],
}

impl<'a> Decoder<'a> {
    fn u8(&mut self) -> Result<u8> {
        let (&first, rest) = self.bytes.split_first().ok_or(DecodeError::Short)?;
        self.bytes = rest;
        Ok(first)
    }

    fn u64(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for i in 0..MAX_LEB_LEN {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7f);
            if i == MAX_LEB_LEN - 1 && bits > 1 {
                return Err(DecodeError::Invalid("integer overflows 64 bits"));
            }
            value |= bits << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::Invalid("integer longer than 10 bytes"))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32> {
        u32::try_from(self.u64()?).map_err(|_| DecodeError::Invalid(what))
    }

    fn bool(&mut self) -> Result<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Invalid("flag is neither 0 nor 1")),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.bytes.len() {
            return Err(DecodeError::Short);
        }
        let (taken, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(taken)
    }

    fn bytes(&mut self) -> Result<&'a [u8]> {
        let len = usize::try_from(self.u64()?).map_err(|_| DecodeError::Short)?;
        self.take(len)
    }

    fn string(&mut self) -> Result<String> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::Invalid("text is not UTF-8"))
    }

    fn hash(&mut self) -> Result<ContentHash> {
        let mut hash = [0u8; 32];
        hash.copy_from_slice(self.take(32)?);
        Ok(ContentHash(hash))
    }

    fn attribution(&mut self) -> Result<Attribution> {
        let v = self.u64()?;
        Ok(if v & 1 == 0 {
            Attribution::Exit(v >> 1)
        } else {
            Attribution::Outside {
                exits_before: v >> 1,
            }
        })
    }

    fn insn(&mut self) -> Result<Option<InsnBytes>> {
        if !self.bool()? {
            return Ok(None);
        }
        let bytes = self.bytes()?;
        if bytes.len() > MAX_INSN_LEN {
            return Err(DecodeError::Invalid("instruction longer than 15 bytes"));
        }
        Ok(Some(InsnBytes::new(bytes)))
    }
}

/// Decodes the payload of a record with `tag`; `Ok(None)` when the tag is unknown.
pub(super) fn decode(tag: u8, payload: &[u8]) -> Result<Option<Record>> {
    let mut d = Decoder { bytes: payload };
    let record = match tag {
        TAG_META => Record::Meta {
            key: d.string()?,
            value: d.string()?,
        },
        TAG_EXIT => Record::Exit(decode_exit(&mut d)?),
        TAG_INTERRUPT => Record::Interrupt {
            at: d.attribution()?,
            line: d.u32("line number exceeds 32 bits")?,
            event: match d.u8()? {
                0 => LineEvent::Edge,
                1 => LineEvent::Assert,
                2 => LineEvent::Deassert,
                _ => return Err(DecodeError::Invalid("unknown line event")),
            },
            ok: d.bool()?,
        },
        TAG_MSI => Record::Msi {
            at: d.attribution()?,
            address: d.u64()?,
            data: d.u32("MSI data exceeds 32 bits")?,
            ok: d.bool()?,
        },
        TAG_CLOCK => {
            let at = d.attribution()?;
            let secs = d.u64()?;
            let nanos = d.u32("nanoseconds exceed 32 bits")?;
            if nanos >= 1_000_000_000 {
                return Err(DecodeError::Invalid("nanoseconds of a second exceed 10^9"));
            }
            Record::Clock {
                at,
                since_epoch: Duration::new(secs, nanos),
            }
        }
        TAG_MEMORY => Record::Memory {
            at: d.attribution()?,
            gpa: d.u64()?,
            direction: match d.u8()? {
                0 => Direction::Read,
                1 => Direction::Write,
                _ => return Err(DecodeError::Invalid("unknown memory direction")),
            },
            data: match d.u8()? {
                0 => Data::Inline(d.bytes()?.to_vec()),
                1 => Data::Stored {
                    hash: d.hash()?,
                    len: d.u64()?,
                },
                _ => return Err(DecodeError::Invalid("unknown data form")),
            },
        },
        TAG_DISK => Record::Disk {
            at: d.attribution()?,
            disk: d.u32("disk number exceeds 32 bits")?,
            op: match d.u8()? {
                0 => DiskOp::Read,
                1 => DiskOp::Write,
                2 => DiskOp::Flush,
                _ => return Err(DecodeError::Invalid("unknown disk operation")),
            },
            offset: d.u64()?,
            len: d.u64()?,
            ok: d.bool()?,
            hash: if d.bool()? { Some(d.hash()?) } else { None },
        },
        TAG_PAYLOAD => {
            let hash = d.hash()?;
            let bytes = d.bytes()?.to_vec();
            Record::Payload { hash, bytes }
        }
        TAG_TRUNCATED => Record::Truncated {
            at: d.attribution()?,
        },
        _ => return Ok(None),
    };
    if !d.bytes.is_empty() {
        return Err(DecodeError::Invalid(
            "bytes left over after the record's fields",
        ));
    }
    Ok(Some(record))
}

fn decode_exit(d: &mut Decoder<'_>) -> Result<ExitRecord> {
    let seq = d.u64()?;
    let vcpu = d.u32("vCPU id exceeds 32 bits")?;
    let kind = *ExitKind::ALL
        .get(usize::from(d.u8()?))
        .ok_or(DecodeError::Invalid("unknown exit kind"))?;
    let route = match d.u8()? {
        0 => Route::Device,
        1 => Route::Unclaimed,
        2 => Route::BadSize,
        3 => Route::NotAnAccess,
        _ => return Err(DecodeError::Invalid("unknown route")),
    };
    let port = |d: &mut Decoder<'_>| {
        u16::try_from(d.u64()?).map_err(|_| DecodeError::Invalid("port exceeds 16 bits"))
    };
    let exit = match kind {
        ExitKind::IoIn => RecordedExit::IoIn {
            port: port(d)?,
            data: d.bytes()?.to_vec(),
        },
        ExitKind::IoOut => RecordedExit::IoOut {
            port: port(d)?,
            data: d.bytes()?.to_vec(),
        },
        ExitKind::MmioRead => RecordedExit::MmioRead {
            addr: d.u64()?,
            data: d.bytes()?.to_vec(),
        },
        ExitKind::MmioWrite => RecordedExit::MmioWrite {
            addr: d.u64()?,
            data: d.bytes()?.to_vec(),
        },
        ExitKind::Hlt => RecordedExit::Hlt,
        ExitKind::TripleFault => RecordedExit::TripleFault,
        ExitKind::SystemEvent => RecordedExit::SystemEvent(match d.u8()? {
            0 => SystemEvent::Reset,
            1 => SystemEvent::PowerOff,
            2 => SystemEvent::Crash,
            3 => SystemEvent::Other(d.u32("event type exceeds 32 bits")?),
            _ => return Err(DecodeError::Invalid("unknown system event")),
        }),
        ExitKind::FailEntry => RecordedExit::FailEntry {
            reason: d.u64()?,
            cpu: d.u32("CPU number exceeds 32 bits")?,
        },
        ExitKind::InternalError => RecordedExit::InternalError {
            suberror: d.u32("sub-error exceeds 32 bits")?,
            insn: d.insn()?,
        },
        ExitKind::Debug => RecordedExit::Debug {
            pc: d.u64()?,
            exception: d.u32("exception vector exceeds 32 bits")?,
        },
        ExitKind::Other => RecordedExit::Other {
            reason: d.u32("exit reason exceeds 32 bits")?,
        },
    };
    let action = match d.u8()? {
        0 => ExitAction::Resume,
        1 => ExitAction::Halt,
        2 => ExitAction::Stop(decode_stop(d)?),
        _ => return Err(DecodeError::Invalid("unknown exit action")),
    };
    Ok(ExitRecord {
        seq,
        vcpu,
        exit,
        route,
        action,
    })
}

fn decode_stop(d: &mut Decoder<'_>) -> Result<StopReason> {
    Ok(match d.u8()? {
        0 => StopReason::GuestExit(d.u32("guest status exceeds 32 bits")?),
        1 => StopReason::Reset,
        2 => StopReason::PowerOff,
        3 => StopReason::TripleFault,
        4 => StopReason::Crash,
        5 => StopReason::EntryFailed(d.u64()?),
        6 => StopReason::InternalError {
            suberror: d.u32("sub-error exceeds 32 bits")?,
            insn: d.insn()?,
        },
        7 => StopReason::Unhandled(d.u32("exit reason exceeds 32 bits")?),
        _ => return Err(DecodeError::Invalid("unknown stop reason")),
    })
}
