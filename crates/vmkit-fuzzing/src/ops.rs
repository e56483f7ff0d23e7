//! The operations a device fuzz input is made of, and their byte format.
//!
//! An input is a sequence of [`Op`]s, each a tag byte and then fields of one byte or
//! little-endian integers, read from `arbitrary`'s `Unstructured` ([`byte`], [`le_bytes`]).
//! Every byte string decodes (an operation cut short ends the sequence), and [`encode`] writes
//! the bytes that decode to exactly the given operations, so seeds are written as operations,
//! not bytes. `encode` writes one tag per kind of operation; the other tag bytes, the ones a
//! fuzzer makes up, favour guest accesses over resets, bursts and line failures.

use arbitrary::Unstructured;

/// Most operations taken from one input.
pub const MAX_OPS: usize = 512;
/// The widest access an operation makes: 8 bytes, as KVM's MMIO exits carry at most.
pub const MAX_ACCESS: usize = 8;
/// The most bytes a [`Op::User`] operation carries.
pub const MAX_USER_BYTES: usize = 64;
/// The most times a [`Op::Burst`] repeats its access.
pub const MAX_BURST: u8 = 64;

/// One byte; an error at the end of the input (where `arbitrary` would make up a zero), so
/// that an operation cut short ends the sequence instead of decoding as another.
pub fn byte(u: &mut Unstructured<'_>) -> arbitrary::Result<u8> {
    Ok(u.bytes(1)?[0])
}

/// `N` little-endian bytes; an error where the input has fewer left.
pub fn le_bytes<const N: usize>(u: &mut Unstructured<'_>) -> arbitrary::Result<[u8; N]> {
    let mut out = [0u8; N];
    out.copy_from_slice(u.bytes(N)?);
    Ok(out)
}

/// One guest access: a read of `size` bytes or a write of `data`, at an offset of a region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// Which region (an index into the regions the fixture registered, modulo their number).
    pub region: u8,
    /// Where, relative to the region: see [`Offset`].
    pub offset: Offset,
    /// A read of this many bytes (`Some`, 0 to [`MAX_ACCESS`]) or a write of `data` (`None`).
    pub read: Option<u8>,
    /// The bytes of a write (0 to [`MAX_ACCESS`]); empty for a read.
    pub data: Vec<u8>,
}

/// Where an access lands relative to its region `[base, base + len)`. Each kind aims at the
/// places devices get wrong: the registers, the last bytes (accesses straddling the end), the
/// bytes just before the base, and far addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offset {
    /// `n` bytes from the base, modulo `len + 8`: every register and the bytes just past the
    /// end.
    FromStart(u16),
    /// `n + 1` bytes before the end (saturating at the base): the last registers, and accesses
    /// that straddle the end.
    BeforeEnd(u16),
    /// `n % 8 + 1` bytes before the base: accesses that straddle the start.
    BeforeStart(u8),
    /// Any address of the space (`n`, truncated to the space's width): far from every region.
    Absolute(u64),
}

impl Offset {
    /// The address this offset stands for in a region at `base` of `len` bytes, in an address
    /// space whose last address is `space_last`; `None` where it falls outside the space.
    pub fn address(self, base: u64, len: u64, space_last: u64) -> Option<u64> {
        let addr = match self {
            Offset::FromStart(n) => base.checked_add(u64::from(n) % len.saturating_add(8))?,
            Offset::BeforeEnd(n) => base + len.saturating_sub(u64::from(n).saturating_add(1)),
            Offset::BeforeStart(n) => base.checked_sub(u64::from(n % 8) + 1)?,
            Offset::Absolute(n) => n & space_last,
        };
        (addr <= space_last).then_some(addr)
    }

    /// The offset this stands for when an access is handed to the region's device directly
    /// ([`Op::Direct`]): `FromStart` and `BeforeEnd` as for [`address`](Self::address),
    /// `BeforeStart` as the offsets that wrap below zero, `Absolute` as itself; truncated to
    /// the space's width (`space_last`).
    pub fn relative(self, len: u64, space_last: u64) -> u64 {
        let offset = match self {
            Offset::FromStart(n) => u64::from(n) % len.saturating_add(8),
            Offset::BeforeEnd(n) => len.saturating_sub(u64::from(n).saturating_add(1)),
            Offset::BeforeStart(n) => 0u64.wrapping_sub(u64::from(n % 8) + 1),
            Offset::Absolute(n) => n,
        };
        offset & space_last
    }

    fn read(u: &mut Unstructured<'_>) -> arbitrary::Result<Self> {
        Ok(match byte(u)? % 4 {
            0 => Offset::FromStart(u16::from_le_bytes(le_bytes(u)?)),
            1 => Offset::BeforeEnd(u16::from_le_bytes(le_bytes(u)?)),
            2 => Offset::BeforeStart(byte(u)?),
            _ => Offset::Absolute(u64::from_le_bytes(le_bytes(u)?)),
        })
    }

    fn encode(self, out: &mut Vec<u8>) {
        match self {
            Offset::FromStart(n) => {
                out.push(0);
                out.extend_from_slice(&n.to_le_bytes());
            }
            Offset::BeforeEnd(n) => {
                out.push(1);
                out.extend_from_slice(&n.to_le_bytes());
            }
            Offset::BeforeStart(n) => out.extend_from_slice(&[2, n]),
            Offset::Absolute(n) => {
                out.push(3);
                out.extend_from_slice(&n.to_le_bytes());
            }
        }
    }
}

/// One step of a fuzz input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// One guest access, routed by the bus as a vmkit VMM routes it: sizes 1, 2, 4 and 8, and
    /// only when the region holds the whole access.
    Access(Access),
    /// One access handed to the region's device as it is, without a bus: any size from 0 to 8
    /// at any offset ([`Offset::relative`]), as another VMM's bus might pass it. Every device
    /// handler answers any offset and size.
    Direct(Access),
    /// The same access `count` times in a row (1 to [`MAX_BURST`]): a driver polling a
    /// register, or a guest hammering a doorbell.
    Burst {
        /// How many times.
        count: u8,
        /// The access.
        access: Access,
    },
    /// The VMM resets the machine: the fixture builds the devices anew.
    Reset,
    /// The interrupt and MSI triggers the fixture handed out start (`true`) or stop failing.
    FailInterrupts(bool),
    /// An operation of the fixture's own (serial input, a clock step, a key press...): `tag`
    /// and `data` (0 to [`MAX_USER_BYTES`] bytes) go to its `user_op`.
    User {
        /// The fixture's operation code.
        tag: u8,
        /// Its bytes.
        data: Vec<u8>,
    },
}

/// The tags [`Op::encode`] writes: one per kind of operation, in the order of [`Op`]'s
/// decoding (routed read, routed write, burst, reset, failing lines, direct, the fixture's own).
const OP_KINDS: u8 = 7;

/// The kind each other tag byte stands for, by `(tag - OP_KINDS) % 16`: the bytes a fuzzer
/// makes up favour guest accesses. A reset (a whole new machine, the dearest operation there
/// is), a change of the lines' failing, and a burst (up to 64 accesses) take one in sixteen
/// each rather than one in seven; reads, writes, direct accesses and the fixture's own
/// operations the rest.
const KIND_OF_TAG: [u8; 16] = [0, 1, 5, 0, 1, 5, 6, 0, 1, 5, 6, 0, 1, 2, 3, 4];

/// The kind of operation tag byte `tag` stands for (an index into [`OP_KINDS`]'s order).
fn kind(tag: u8) -> u8 {
    match tag.checked_sub(OP_KINDS) {
        None => tag,
        Some(other) => KIND_OF_TAG[usize::from(other % 16)],
    }
}

/// An [`Access`] as the harness performs it: its bytes borrow from the input, so that running
/// an input allocates nothing per operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AccessRef<'a> {
    pub(crate) region: u8,
    pub(crate) offset: Offset,
    /// A read of this many bytes (0 to [`MAX_ACCESS`]), or a write of `data`.
    pub(crate) read: Option<u8>,
    /// The bytes of a write (at most [`MAX_ACCESS`]).
    pub(crate) data: &'a [u8],
}

impl<'a> AccessRef<'a> {
    fn read(u: &mut Unstructured<'a>, write: bool) -> arbitrary::Result<Self> {
        let region = byte(u)?;
        let offset = Offset::read(u)?;
        let size = usize::from(byte(u)?) % (MAX_ACCESS + 1);
        Ok(if write {
            AccessRef {
                region,
                offset,
                read: None,
                data: u.bytes(size)?,
            }
        } else {
            AccessRef {
                region,
                offset,
                read: Some(size as u8),
                data: &[],
            }
        })
    }

    /// The size of the access.
    pub(crate) fn size(&self) -> usize {
        self.read.map_or(self.data.len(), usize::from)
    }

    fn to_owned(self) -> Access {
        Access {
            region: self.region,
            offset: self.offset,
            read: self.read,
            data: self.data.to_vec(),
        }
    }
}

/// An [`Op`] as the harness runs it, borrowing its bytes: straight from the input when a fuzz
/// input is decoded, from the operation when a seed is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step<'a> {
    /// [`Op::Access`] (`false`) or [`Op::Direct`] (`true`).
    Access(AccessRef<'a>, bool),
    Burst {
        count: u8,
        access: AccessRef<'a>,
    },
    Reset,
    FailInterrupts(bool),
    User {
        tag: u8,
        data: &'a [u8],
    },
}

impl<'a> Step<'a> {
    /// Reads one operation.
    pub(crate) fn read(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match kind(byte(u)?) {
            tag @ (0 | 1) => Step::Access(AccessRef::read(u, tag == 1)?, false),
            2 => {
                let count = byte(u)? % MAX_BURST + 1;
                let write = byte(u)? & 1 == 1;
                Step::Burst {
                    count,
                    access: AccessRef::read(u, write)?,
                }
            }
            3 => Step::Reset,
            4 => Step::FailInterrupts(byte(u)? & 1 == 1),
            5 => {
                let write = byte(u)? & 1 == 1;
                Step::Access(AccessRef::read(u, write)?, true)
            }
            _ => {
                let tag = byte(u)?;
                let len = usize::from(byte(u)?) % (MAX_USER_BYTES + 1);
                Step::User {
                    tag,
                    data: u.bytes(len)?,
                }
            }
        })
    }

    fn to_owned(self) -> Op {
        match self {
            Step::Access(access, false) => Op::Access(access.to_owned()),
            Step::Access(access, true) => Op::Direct(access.to_owned()),
            Step::Burst { count, access } => Op::Burst {
                count,
                access: access.to_owned(),
            },
            Step::Reset => Op::Reset,
            Step::FailInterrupts(failing) => Op::FailInterrupts(failing),
            Step::User { tag, data } => Op::User {
                tag,
                data: data.to_vec(),
            },
        }
    }
}

impl Access {
    /// This access as the harness performs it, clamped as [`Op::encode`] clamps it.
    fn step(&self) -> AccessRef<'_> {
        AccessRef {
            region: self.region,
            offset: self.offset,
            read: self.read.map(|size| size.min(MAX_ACCESS as u8)),
            data: &self.data[..self.data.len().min(MAX_ACCESS)],
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.region);
        self.offset.encode(out);
        match self.read {
            Some(size) => out.push(size),
            None => {
                out.push(self.data.len() as u8);
                out.extend_from_slice(&self.data);
            }
        }
    }

    fn tag(&self) -> u8 {
        u8::from(self.read.is_none())
    }

    /// A read of `size` bytes at `offset` of region `region`.
    pub fn read_at(region: u8, offset: Offset, size: u8) -> Self {
        Access {
            region,
            offset,
            read: Some(size),
            data: Vec::new(),
        }
    }

    /// A write of `data` at `offset` of region `region`.
    pub fn write_at(region: u8, offset: Offset, data: &[u8]) -> Self {
        Access {
            region,
            offset,
            read: None,
            data: data.to_vec(),
        }
    }
}

impl Op {
    /// Reads one operation.
    pub fn read(u: &mut Unstructured<'_>) -> arbitrary::Result<Self> {
        Step::read(u).map(Step::to_owned)
    }

    /// This operation as the harness runs it: what [`decode`] would make of its
    /// [`encode`](Self::encode)ing (fields wider than the format holds are clamped).
    pub(crate) fn step(&self) -> Step<'_> {
        match self {
            Op::Access(access) => Step::Access(access.step(), false),
            Op::Direct(access) => Step::Access(access.step(), true),
            Op::Burst { count, access } => Step::Burst {
                count: *count.clamp(&1, &MAX_BURST),
                access: access.step(),
            },
            Op::Reset => Step::Reset,
            Op::FailInterrupts(failing) => Step::FailInterrupts(*failing),
            Op::User { tag, data } => Step::User {
                tag: *tag,
                data: &data[..data.len().min(MAX_USER_BYTES)],
            },
        }
    }

    /// Appends the bytes that [`Op::read`] reads back as this operation. Fields wider than the
    /// format holds (a burst of more than [`MAX_BURST`], an access of more than [`MAX_ACCESS`]
    /// bytes) are clamped.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Op::Access(access) => {
                out.push(access.tag());
                clamped(access).encode(out);
            }
            Op::Burst { count, access } => {
                out.extend_from_slice(&[2, count.clamp(&1, &MAX_BURST) - 1, access.tag()]);
                clamped(access).encode(out);
            }
            Op::Reset => out.push(3),
            Op::FailInterrupts(fail) => out.extend_from_slice(&[4, u8::from(*fail)]),
            Op::Direct(access) => {
                out.extend_from_slice(&[5, access.tag()]);
                clamped(access).encode(out);
            }
            Op::User { tag, data } => {
                let data = &data[..data.len().min(MAX_USER_BYTES)];
                out.extend_from_slice(&[6, *tag, data.len() as u8]);
                out.extend_from_slice(data);
            }
        }
    }
}

fn clamped(access: &Access) -> Access {
    Access {
        region: access.region,
        offset: access.offset,
        read: access.read.map(|size| size.min(MAX_ACCESS as u8)),
        data: access.data[..access.data.len().min(MAX_ACCESS)].to_vec(),
    }
}

/// The operations `data` decodes to: at most [`MAX_OPS`], up to the first one cut short.
pub fn decode(data: &[u8]) -> Vec<Op> {
    decode_with(&mut Unstructured::new(data), MAX_OPS, Op::read)
}

/// The operations `data` decodes to, as [`decode`] finds them, one at a time and borrowing
/// their bytes from `data`.
pub(crate) fn steps(data: &[u8]) -> impl Iterator<Item = Step<'_>> {
    let mut u = Unstructured::new(data);
    std::iter::from_fn(move || {
        if u.is_empty() {
            return None;
        }
        Step::read(&mut u).ok()
    })
    .take(MAX_OPS)
}

/// Reads values from `u` with `read` until the input ends, a value is cut short, or `max` were
/// read: the loop every operation-sequence format needs.
pub fn decode_with<'a, T>(
    u: &mut Unstructured<'a>,
    max: usize,
    mut read: impl FnMut(&mut Unstructured<'a>) -> arbitrary::Result<T>,
) -> Vec<T> {
    // Operations take a few bytes each: room for one per two bytes spares most regrowth.
    let mut ops = Vec::with_capacity((u.len() / 2).min(max));
    while !u.is_empty() && ops.len() < max {
        match read(u) {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
    }
    ops
}

/// The bytes [`decode`] reads back as `ops`.
pub fn encode(ops: &[Op]) -> Vec<u8> {
    let mut out = Vec::new();
    for op in ops {
        op.encode(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<Op> {
        vec![
            Op::Access(Access::read_at(0, Offset::FromStart(3), 4)),
            Op::Access(Access::write_at(1, Offset::BeforeEnd(0), &[1, 2])),
            Op::Access(Access::read_at(2, Offset::BeforeStart(5), 0)),
            Op::Access(Access::write_at(3, Offset::Absolute(u64::MAX), &[9; 8])),
            Op::Burst {
                count: 64,
                access: Access::read_at(0, Offset::FromStart(0), 1),
            },
            Op::Reset,
            Op::FailInterrupts(true),
            Op::Direct(Access::read_at(1, Offset::BeforeStart(2), 3)),
            Op::Direct(Access::write_at(0, Offset::FromStart(9), &[])),
            Op::User {
                tag: 7,
                data: b"input".to_vec(),
            },
        ]
    }

    #[test]
    fn every_operation_round_trips() {
        let ops = every_kind();
        assert_eq!(decode(&encode(&ops)), ops);
    }

    #[test]
    fn steps_are_the_decoded_operations_borrowed() {
        let bytes = encode(&every_kind());
        for cut in [0, 1, 5, bytes.len() / 2, bytes.len()] {
            let steps: Vec<_> = steps(&bytes[..cut]).collect();
            let ops = decode(&bytes[..cut]);
            assert_eq!(steps, ops.iter().map(Op::step).collect::<Vec<_>>());
        }
        assert_eq!(steps(&[3; 4096]).count(), MAX_OPS);
        // An operation wider than the format runs as its encoding decodes.
        let wide = [
            Op::Access(Access::write_at(0, Offset::FromStart(0), &[1; 20])),
            Op::Direct(Access::read_at(0, Offset::FromStart(0), 30)),
            Op::Burst {
                count: 0,
                access: Access::read_at(0, Offset::FromStart(0), 1),
            },
            Op::User {
                tag: 1,
                data: vec![2; 100],
            },
        ];
        let decoded = decode(&encode(&wide));
        assert_eq!(
            wide.iter().map(Op::step).collect::<Vec<_>>(),
            decoded.iter().map(Op::step).collect::<Vec<_>>()
        );
    }

    #[test]
    fn encoding_clamps_what_the_format_cannot_hold() {
        let wide = Op::Access(Access::write_at(0, Offset::FromStart(0), &[1; 20]));
        let long_burst = Op::Burst {
            count: 200,
            access: Access::read_at(0, Offset::FromStart(0), 30),
        };
        let decoded = decode(&encode(&[wide, long_burst]));
        assert_eq!(
            decoded,
            [
                Op::Access(Access::write_at(0, Offset::FromStart(0), &[1; 8])),
                Op::Burst {
                    count: MAX_BURST,
                    access: Access::read_at(0, Offset::FromStart(0), 8),
                },
            ]
        );
    }

    #[test]
    fn any_bytes_decode_and_a_cut_operation_ends_the_input() {
        let bytes = encode(&every_kind());
        for cut in 0..bytes.len() {
            let ops = decode(&bytes[..cut]);
            assert!(ops.len() <= every_kind().len());
            assert_eq!(ops[..], every_kind()[..ops.len()]);
        }
        // 3 is a reset: one byte an operation, up to the limit.
        assert_eq!(decode(&[3; 4096]).len(), MAX_OPS);
        assert_eq!(decode(&[0xFC; 4096]).len(), MAX_OPS);
        assert!(decode(&[]).is_empty());
    }

    #[test]
    fn made_up_tags_favour_accesses_over_resets() {
        let mut kinds = [0u32; OP_KINDS as usize];
        for tag in 0..=255u8 {
            kinds[usize::from(kind(tag))] += 1;
        }
        // Routed reads and writes, bursts, resets, failing lines, direct, the fixture's own.
        assert_eq!(kinds, [64, 64, 16, 16, 16, 48, 32]);
        for tag in 0..OP_KINDS {
            assert_eq!(
                kind(tag),
                tag,
                "the tags encode writes stand for themselves"
            );
        }
    }

    #[test]
    fn offsets_aim_at_the_edges() {
        let (base, len, last) = (0x3F8, 8, 0xFFFF);
        assert_eq!(Offset::FromStart(3).address(base, len, last), Some(0x3FB));
        assert_eq!(Offset::FromStart(17).address(base, len, last), Some(0x3F9));
        assert_eq!(Offset::FromStart(10).address(base, len, last), Some(0x402));
        assert_eq!(Offset::BeforeEnd(0).address(base, len, last), Some(0x3FF));
        assert_eq!(Offset::BeforeEnd(500).address(base, len, last), Some(0x3F8));
        assert_eq!(Offset::BeforeStart(0).address(base, len, last), Some(0x3F7));
        assert_eq!(
            Offset::BeforeStart(15).address(base, len, last),
            Some(0x3F0)
        );
        assert_eq!(Offset::BeforeStart(0).address(0, len, last), None);
        assert_eq!(
            Offset::Absolute(0x1_2345).address(base, len, last),
            Some(0x2345)
        );
        assert_eq!(
            Offset::FromStart(5).address(0xFFFF, 1, last),
            None,
            "past the end of the space"
        );
        assert_eq!(Offset::FromStart(10).relative(len, last), 10);
        assert_eq!(Offset::BeforeEnd(1).relative(len, last), 6);
        assert_eq!(Offset::BeforeStart(0).relative(len, last), 0xFFFF);
        assert_eq!(Offset::BeforeStart(0).relative(len, u64::MAX), u64::MAX);
        assert_eq!(Offset::Absolute(0x1_0002).relative(len, last), 2);
    }
}
