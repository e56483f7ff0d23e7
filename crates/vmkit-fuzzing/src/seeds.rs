//! Seed corpora from recordings: what a guest really did to a device, as the operations of the
//! device harness ([`Op`]), so that a fuzzer starts from real driver sequences.

use vmkit_exits::record::RecordedExit;

use crate::harness::{Region, Space};
use crate::ops::{Access, MAX_ACCESS, MAX_BURST, MAX_OPS, Offset, Op};
use crate::replay::Recording;

/// The recording's accesses that touch `[base, base + len)` of `space`, in sequence order, as
/// operations on the fixture's region `region`: port exits for [`Space::Pio`], MMIO exits for
/// [`Space::Mmio`], each routed through the bus ([`Op::Access`]) at the offset that names the
/// same address (from the region's start, or just before it for an access straddling its
/// start). A run of identical accesses (a driver polling a status register) becomes one
/// [`Op::Burst`] per [`MAX_BURST`] repetitions.
///
/// Give the result to [`seed_inputs`] for seed files: a decoder reads at most
/// [`MAX_OPS`] operations of one input.
pub fn ops_for_region(
    recording: &Recording,
    space: Space,
    base: u64,
    len: u64,
    region: u8,
) -> Vec<Op> {
    ops_touching(recording, &[(region, space, base, len)])
}

/// The recording's accesses that touch any of `regions`, in sequence order, as operations on
/// the region they touch, named by its index in `regions`: what [`ops_for_region`] makes of
/// one region, for a fixture with several (pass [`Setup::regions`](crate::Setup::regions)
/// after building the fixture's devices on a [`Setup`](crate::Setup), and the indices are the
/// fixture's own). An access touching two regions goes to the one holding its first byte, or
/// else to the first in `regions` it touches; regions past index 255 (which an [`Access`]
/// cannot name) are left out.
pub fn ops_for_regions(recording: &Recording, regions: &[Region]) -> Vec<Op> {
    let regions: Vec<_> = regions
        .iter()
        .zip(0..=u8::MAX)
        .map(|(r, index)| (index, r.space, r.base, r.len))
        .collect();
    ops_touching(recording, &regions)
}

/// The accesses touching `regions` (index, space, base, length), as operations on them.
fn ops_touching(recording: &Recording, regions: &[(u8, Space, u64, u64)]) -> Vec<Op> {
    let mut ops: Vec<Op> = Vec::new();
    for record in recording.exits() {
        let (space, addr, data, read) = match &record.exit {
            RecordedExit::IoIn { port, data } => (Space::Pio, u64::from(*port), data, true),
            RecordedExit::IoOut { port, data } => (Space::Pio, u64::from(*port), data, false),
            RecordedExit::MmioRead { addr, data } => (Space::Mmio, *addr, data, true),
            RecordedExit::MmioWrite { addr, data } => (Space::Mmio, *addr, data, false),
            _ => continue,
        };
        if data.len() > MAX_ACCESS {
            continue;
        }
        let touches = |&&(_, s, base, len): &&(u8, Space, u64, u64)| {
            s == space
                && addr < base.saturating_add(len)
                && addr.saturating_add(data.len() as u64) > base
        };
        let holds_start = |r: &&(u8, Space, u64, u64)| touches(r) && addr >= r.2;
        let Some(&(region, _, base, _)) = regions
            .iter()
            .find(holds_start)
            .or_else(|| regions.iter().find(touches))
        else {
            continue;
        };
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

/// The legacy configuration mechanism's address port (the data port follows at 0xCFC).
const CONFIG_ADDRESS: u16 = 0xCF8;
/// Its data port.
const CONFIG_DATA: u16 = 0xCFC;

/// Where a recorded guest found one PCI function: its bus/device/function number, the ECAM
/// window if the guest had one, and where its BARs were.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordedFunction {
    /// `bus << 8 | device << 3 | function`.
    pub bdf: u16,
    /// The base of the ECAM window (bus 0 at its start), if configuration accesses went there
    /// too.
    pub ecam: Option<u64>,
    /// The BARs that decoded guest-physical MMIO: register index, address, size.
    pub bars: Vec<(u8, u64, u64)>,
}

/// The recording's accesses to one PCI function, in sequence order, as operations on the
/// regions [`Setup::pci`](crate::Setup::pci) registers for it, the first of which (its
/// configuration space) is `region`: configuration accesses through the legacy mechanism
/// (a dword written to port 0xCF8 selecting `function.bdf`, then 1, 2 or 4 bytes at 0xCFC to
/// 0xCFF) or through the ECAM window, as accesses to region `region` at their offset in the
/// function's configuration space (past 0xFF: left out, [`Setup::pci`](crate::Setup::pci)
/// registers 256 bytes); accesses to a BAR, as accesses to region `region + 1 + index` at
/// their offset in the BAR, wherever the function presents that BAR when they run. Runs of
/// identical accesses fold into bursts as in [`ops_for_region`].
pub fn ops_for_pci_function(
    recording: &Recording,
    function: &RecordedFunction,
    region: u8,
) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut address = 0u32;
    for record in recording.exits() {
        let (config, addr, data, read) = match &record.exit {
            RecordedExit::IoOut { port, data } if *port == CONFIG_ADDRESS && data.len() == 4 => {
                address = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                continue;
            }
            RecordedExit::IoIn { port, data } => (true, u64::from(*port), data, true),
            RecordedExit::IoOut { port, data } => (true, u64::from(*port), data, false),
            RecordedExit::MmioRead { addr, data } => (false, *addr, data, true),
            RecordedExit::MmioWrite { addr, data } => (false, *addr, data, false),
            _ => continue,
        };
        let len = data.len() as u64;
        let target = if config {
            // The data port, while the address port selects this function.
            let selected = address & 0x8000_0000 != 0
                && (address >> 8) as u16 == function.bdf
                && (u64::from(CONFIG_DATA)..u64::from(CONFIG_DATA) + 4).contains(&addr)
                && addr + len <= u64::from(CONFIG_DATA) + 4;
            selected.then(|| {
                (
                    region,
                    u64::from(address & 0xFC) + addr - u64::from(CONFIG_DATA),
                )
            })
        } else {
            let ecam = function.ecam.and_then(|base| {
                let start = base.checked_add(u64::from(function.bdf) << 12)?;
                let offset = addr.checked_sub(start)?;
                (offset + len <= 0x100).then_some((region, offset))
            });
            ecam.or_else(|| {
                function.bars.iter().find_map(|&(index, base, size)| {
                    let offset = addr.checked_sub(base)?;
                    let bar = region.checked_add(1)?.checked_add(index)?;
                    (offset.checked_add(len)? <= size).then_some((bar, offset))
                })
            })
        };
        let Some((region, offset)) = target else {
            continue;
        };
        if data.len() > MAX_ACCESS {
            continue;
        }
        let offset = u16::try_from(offset).map_or(Offset::Absolute(offset), Offset::FromStart);
        push(
            &mut ops,
            match read {
                true => Access::read_at(region, offset, data.len() as u8),
                false => Access::write_at(region, offset, data),
            },
        );
    }
    ops
}

/// `ops` as seed inputs: encoded ([`encode`](crate::encode)) in order and cut into inputs that a decoder
/// reads whole, each at most [`MAX_OPS`] operations and at most `max_len` bytes (libFuzzer
/// takes inputs of up to 4096 bytes unless told otherwise, and a longer seed raises that
/// limit for every input of the run). An operation longer than `max_len` on its own, which no
/// input can hold, is left out.
pub fn seed_inputs(ops: &[Op], max_len: usize) -> Vec<Vec<u8>> {
    let mut inputs = Vec::new();
    let mut input = Vec::new();
    let mut count = 0;
    let mut op_bytes = Vec::new();
    for op in ops {
        op_bytes.clear();
        op.encode(&mut op_bytes);
        if op_bytes.len() > max_len {
            continue;
        }
        if count == MAX_OPS || input.len() + op_bytes.len() > max_len {
            inputs.push(std::mem::take(&mut input));
            count = 0;
        }
        input.extend_from_slice(&op_bytes);
        count += 1;
    }
    if !input.is_empty() {
        inputs.push(input);
    }
    inputs
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
    fn a_pci_functions_configuration_and_bar_accesses_become_operations_on_its_regions() {
        let out = |seq, port, data: &[u8]| {
            exit(
                seq,
                RecordedExit::IoOut {
                    port,
                    data: data.to_vec(),
                },
            )
        };
        let io_in = |seq, port, data: &[u8]| {
            exit(
                seq,
                RecordedExit::IoIn {
                    port,
                    data: data.to_vec(),
                },
            )
        };
        let mmio = |seq, addr, data: &[u8], write: bool| {
            let data = data.to_vec();
            exit(
                seq,
                match write {
                    true => RecordedExit::MmioWrite { addr, data },
                    false => RecordedExit::MmioRead { addr, data },
                },
            )
        };
        let records = vec![
            // Another function (00:02.0), then 00:01.0's BAR 0 register and its upper half.
            out(0, 0xCF8, &0x8000_1010u32.to_le_bytes()),
            io_in(1, 0xCFC, &[0xFF; 4]),
            out(2, 0xCF8, &0x8000_0810u32.to_le_bytes()),
            io_in(3, 0xCFC, &[4, 0, 0, 0xD0]),
            io_in(4, 0xCFE, &[0, 0xD0]),
            // Enable bit clear: no configuration access.
            out(5, 0xCF8, &0x0000_0804u32.to_le_bytes()),
            out(6, 0xCFC, &[6, 0]),
            // The same function through ECAM (its command register), and past 0xFF.
            mmio(7, 0xE000_8004, &[6, 0], true),
            mmio(8, 0xE000_8100, &[0; 4], false),
            // BAR 0 and BAR 2; past BAR 0's end; another device's BAR.
            mmio(9, 0xD000_0014, &[0xF], true),
            mmio(10, 0xD000_4000, &[0; 2], false),
            mmio(11, 0xD000_0FFF, &[0; 2], false),
            mmio(12, 0xD000_8000, &[0; 4], false),
        ];
        let recording = Recording::from_records(records).unwrap();
        let function = RecordedFunction {
            bdf: 0x08,
            ecam: Some(0xE000_0000),
            bars: vec![(0, 0xD000_0000, 0x1000), (2, 0xD000_4000, 0x100)],
        };
        assert_eq!(
            ops_for_pci_function(&recording, &function, 3),
            [
                Op::Access(Access::read_at(3, Offset::FromStart(0x10), 4)),
                Op::Access(Access::read_at(3, Offset::FromStart(0x12), 2)),
                Op::Access(Access::write_at(3, Offset::FromStart(4), &[6, 0])),
                Op::Access(Access::write_at(4, Offset::FromStart(0x14), &[0xF])),
                Op::Access(Access::read_at(6, Offset::FromStart(0), 2)),
            ]
        );
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

    #[test]
    fn accesses_go_to_the_region_they_touch() {
        let io = |seq, port, data: &[u8]| {
            exit(
                seq,
                RecordedExit::IoOut {
                    port,
                    data: data.to_vec(),
                },
            )
        };
        let mmio = |seq, addr| {
            exit(
                seq,
                RecordedExit::MmioRead {
                    addr,
                    data: vec![0; 4],
                },
            )
        };
        let recording = Recording::from_records([
            io(0, 0x64, &[0xAA]),
            io(1, 0x60, &[1]),
            io(2, 0x80, &[0]),
            // Straddling both regions: the one holding its first byte.
            io(3, 0x62, &[1, 2, 3, 4]),
            // Straddling the start of the second one only.
            io(4, 0x5f, &[1, 2]),
            io(5, 0x64, &[0xAA]),
            io(6, 0x64, &[0xAA]),
            mmio(7, 0xfed0_0000),
            mmio(8, 0x64),
        ])
        .unwrap();
        let region = |name, space, base, len| Region {
            name,
            space,
            base,
            len,
        };
        let regions = [
            region("command", Space::Pio, 0x64, 1),
            region("data", Space::Pio, 0x60, 4),
            region("timer", Space::Mmio, 0xfed0_0000, 0x400),
        ];
        let w = |region, offset, data: &[u8]| Access::write_at(region, offset, data);
        assert_eq!(
            ops_for_regions(&recording, &regions),
            [
                Op::Access(w(0, Offset::FromStart(0), &[0xAA])),
                Op::Access(w(1, Offset::FromStart(0), &[1])),
                Op::Access(w(1, Offset::FromStart(2), &[1, 2, 3, 4])),
                Op::Access(w(1, Offset::BeforeStart(0), &[1, 2])),
                Op::Burst {
                    count: 2,
                    access: w(0, Offset::FromStart(0), &[0xAA])
                },
                Op::Access(Access::read_at(2, Offset::FromStart(0), 4)),
            ]
        );
        // One region is what ops_for_region makes of it, under its index.
        assert_eq!(
            ops_for_regions(&recording, &regions[2..]),
            ops_for_region(&recording, Space::Mmio, 0xfed0_0000, 0x400, 0)
        );
        assert!(ops_for_regions(&recording, &[]).is_empty());
    }

    #[test]
    fn seed_inputs_are_read_whole() {
        let op = |n: u16| Op::Access(Access::write_at(0, Offset::FromStart(n), &[1, 2, 3, 4]));
        // Each operation is 10 bytes: tag, region, offset kind and two bytes, size, 4 data bytes.
        let ops: Vec<Op> = (0..1000).map(op).collect();
        let inputs = seed_inputs(&ops, 4096);
        assert_eq!(
            inputs.iter().map(Vec::len).collect::<Vec<_>>(),
            [4090, 4090, 1820],
            "409 operations fit 4096 bytes"
        );
        let few = seed_inputs(&ops, 1 << 20);
        assert_eq!(
            few.iter().map(Vec::len).collect::<Vec<_>>(),
            [MAX_OPS * 10, (1000 - MAX_OPS) * 10]
        );
        for inputs in [inputs, few] {
            let decoded: Vec<Op> = inputs.iter().flat_map(|i| crate::decode(i)).collect();
            assert_eq!(decoded, ops);
        }
        assert!(seed_inputs(&ops, 8).is_empty(), "no operation fits");
        assert!(seed_inputs(&[], 4096).is_empty());
    }
}
