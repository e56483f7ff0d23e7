//! Seed corpora from recordings: what a guest really did to a device, as the operations of the
//! device harness ([`Op`]), so that a fuzzer starts from real driver sequences.

use vmkit_exits::record::RecordedExit;

use crate::harness::Space;
use crate::ops::{Access, MAX_ACCESS, MAX_BURST, Offset, Op};
use crate::replay::Recording;

/// The recording's accesses that touch `[base, base + len)` of `space`, in sequence order, as
/// operations on the fixture's region `region`: port exits for [`Space::Pio`], MMIO exits for
/// [`Space::Mmio`], each routed through the bus ([`Op::Access`]) at the offset that names the
/// same address (from the region's start, or just before it for an access straddling its
/// start). A run of identical accesses (a driver polling a status register) becomes one
/// [`Op::Burst`] per [`MAX_BURST`] repetitions.
///
/// Give the result to [`encode`](crate::encode) for a seed file; a decoder reads at most
/// [`MAX_OPS`](crate::ops::MAX_OPS) operations of one input, so split longer sequences
/// (`ops.chunks(MAX_OPS)`).
pub fn ops_for_region(
    recording: &Recording,
    space: Space,
    base: u64,
    len: u64,
    region: u8,
) -> Vec<Op> {
    let end = base.saturating_add(len);
    let mut ops: Vec<Op> = Vec::new();
    for record in recording.exits() {
        let (addr, data, read) = match (&record.exit, space) {
            (RecordedExit::IoIn { port, data }, Space::Pio) => (u64::from(*port), data, true),
            (RecordedExit::IoOut { port, data }, Space::Pio) => (u64::from(*port), data, false),
            (RecordedExit::MmioRead { addr, data }, Space::Mmio) => (*addr, data, true),
            (RecordedExit::MmioWrite { addr, data }, Space::Mmio) => (*addr, data, false),
            _ => continue,
        };
        let touches = addr < end && addr.saturating_add(data.len() as u64) > base;
        if !touches || data.len() > MAX_ACCESS {
            continue;
        }
        let offset = if addr >= base {
            u16::try_from(addr - base).map_or(Offset::Absolute(addr), Offset::FromStart)
        } else {
            // It touches the region, so it starts fewer than MAX_ACCESS bytes before it.
            Offset::BeforeStart((base - addr - 1) as u8)
        };
        let access = if read {
            Access::read_at(region, offset, data.len() as u8)
        } else {
            Access::write_at(region, offset, data)
        };
        push(&mut ops, access);
    }
    ops
}

/// Appends `access`, folding it into the last operation when that is the same access.
fn push(ops: &mut Vec<Op>, access: Access) {
    if let Some(last) = ops.last_mut() {
        match last {
            Op::Access(previous) if *previous == access => {
                *last = Op::Burst { count: 2, access };
                return;
            }
            Op::Burst {
                count,
                access: previous,
            } if *previous == access && *count < MAX_BURST => {
                *count += 1;
                return;
            }
            _ => {}
        }
    }
    ops.push(Op::Access(access));
}

#[cfg(test)]
mod tests {
    use vmkit_exits::ExitAction;
    use vmkit_exits::record::{ExitRecord, Record, Route};

    use super::*;

    fn exit(seq: u64, exit: RecordedExit) -> Record {
        Record::Exit(ExitRecord {
            seq,
            vcpu: 0,
            exit,
            route: Route::Device,
            action: ExitAction::Resume,
        })
    }

    #[test]
    fn accesses_touching_the_region_become_operations_on_it() {
        let io_in = |port, data: &[u8]| RecordedExit::IoIn {
            port,
            data: data.to_vec(),
        };
        let io_out = |port, data: &[u8]| RecordedExit::IoOut {
            port,
            data: data.to_vec(),
        };
        let mut records = vec![
            exit(0, io_out(0x600, &[0x80])),
            // Straddling the start, and the end; far before and after.
            exit(1, io_in(0x5fe, &[1, 2, 3, 4])),
            exit(2, io_in(0x603, &[1, 2])),
            exit(3, io_in(0x500, &[1])),
            exit(4, io_out(0x604, &[1])),
            // MMIO at the same numbers is another space.
            exit(
                5,
                RecordedExit::MmioRead {
                    addr: 0x600,
                    data: vec![0],
                },
            ),
            exit(6, RecordedExit::Hlt),
            // Wider than any access the harness makes.
            exit(7, io_in(0x600, &[0; 9])),
        ];
        // A poll of 70 reads: a burst of 64, then one of 6.
        records.extend((8..78).map(|seq| exit(seq, io_in(0x601, &[0]))));
        records.push(exit(78, io_out(0x600, &[0x14])));
        let recording = Recording::from_records(records).unwrap();
        let ops = ops_for_region(&recording, Space::Pio, 0x600, 4, 2);
        let poll = Access::read_at(2, Offset::FromStart(1), 1);
        assert_eq!(
            ops,
            [
                Op::Access(Access::write_at(2, Offset::FromStart(0), &[0x80])),
                Op::Access(Access::read_at(2, Offset::BeforeStart(1), 4)),
                Op::Access(Access::read_at(2, Offset::FromStart(3), 2)),
                Op::Burst {
                    count: 64,
                    access: poll.clone()
                },
                Op::Burst {
                    count: 6,
                    access: poll
                },
                Op::Access(Access::write_at(2, Offset::FromStart(0), &[0x14])),
            ]
        );
        // Each operation names the recorded address.
        for op in &ops {
            let (Op::Access(access) | Op::Burst { access, .. }) = op else {
                unreachable!()
            };
            let addr = access.offset.address(0x600, 4, 0xffff).unwrap();
            assert!((0x5fe..0x604).contains(&addr), "{op:?}");
        }
    }

    #[test]
    fn far_and_wide_mmio_offsets_are_absolute() {
        let read = |addr| RecordedExit::MmioRead {
            addr,
            data: vec![0; 8],
        };
        let recording = Recording::from_records([
            exit(0, read(0xd000_0000 + 0x2_0000)),
            exit(1, read(0xd000_0000 - 16)),
            exit(
                2,
                RecordedExit::MmioWrite {
                    addr: 0xd000_0008,
                    data: vec![1; 4],
                },
            ),
            exit(3, read(0xd000_0000 - 4)),
        ])
        .unwrap();
        let ops = ops_for_region(&recording, Space::Mmio, 0xd000_0000, 0x4_0000, 0);
        assert_eq!(
            ops,
            [
                Op::Access(Access::read_at(0, Offset::Absolute(0xd002_0000), 8)),
                Op::Access(Access::write_at(0, Offset::FromStart(8), &[1; 4])),
                Op::Access(Access::read_at(0, Offset::BeforeStart(3), 8)),
            ]
        );
        // An access straddling the start by more than 8 bytes cannot be: accesses are at most
        // 8 bytes. The one before the region by 16 touches nothing.
        assert!(ops_for_region(&recording, Space::Pio, 0, 0x1_0000, 0).is_empty());
    }
}
