//! Fuzz surface `pci_config`: the PCI root complex (CONFIG_ADDRESS/CONFIG_DATA at 0xCF8..0xD00
//! and the ECAM window) with its host bridge and a virtio-blk function, on vmkit-fuzzing's
//! device harness: guest reads and writes through the port and MMIO buses and handed to the
//! root directly (any size and offset), and accesses to the function's BAR 0 wherever the
//! guest has moved it.
//!
//! The root is registered as a VMM registers it (`PciRoot::new` on the buses, which puts its
//! ports and ECAM window there; the function plugged as firmware plugs it), and the harness
//! names those ranges ([`Setup::registered`], [`Setup::moving`] for the BAR the root places).
//! Checked after every operation, besides what the harness checks of every device (no panic,
//! reads fill every byte deterministically, the bound on interrupt-line calls):
//!
//! - CONFIG_ADDRESS reads back what was written (reserved bits clear); a configuration read
//!   through CONFIG_DATA of a function that does not exist reads all ones, as does every other
//!   port access the mechanism does not define; an ECAM read of an absent function, or of a
//!   size or alignment the mechanism does not define, reads all ones: [`Fixture::check_access`];
//! - the root counts no more unclaimed accesses than configuration accesses; and after every
//!   step in which a write reached the machine (nothing else changes what these look at): the
//!   identity registers of both functions never change; every BAR range on the MMIO bus is
//!   exactly one the configuration space decodes, and a BAR that should decode but is not
//!   placed was refused by the bus (a counted conflict); the ECAM and port ranges stay
//!   registered: [`Fixture::check`].

use std::cell::Cell;
use std::sync::{Arc, Mutex};

use vmkit_devices::pci::{
    BarMapping, CONFIG_ADDRESS_ENABLE, CONFIG_IO_PORT, NUM_BARS, PciDevice, PciRoot,
};
use vmkit_devices::virtio::VirtioPciInterrupts;
use vmkit_devices::{MemDisk, NoopTrigger, VirtioBlock, VirtioPciDevice};
use vmkit_exits::{DeviceAction, IoBus, MmioAddress, MmioBus, PioAddress};
use vmkit_fuzzing::{
    Access, Answer, Claimed, DeviceFuzzer, Fixture, Model, Offset, Op, Setup, Space, encode,
};
use vmkit_memory::GuestLayout;
use vmkit_memory::layout::{PCI_ECAM_SIZE, PCI_ECAM_START};

/// The regions, in the order the fixture registers them.
const PORTS: u8 = 0;
const ECAM: u8 = 1;
const BAR0: u8 = 2;

/// The ports of the mechanism (0xCF8..0xD00).
const PORTS_LEN: u64 = 8;
/// CONFIG_ADDRESS bits that hold state.
const CONFIG_ADDRESS_MASK: u32 = 0x80FF_FFFC;

const HOST_BRIDGE_ID: u32 = 0x0D57_8086;
const BLK_ID: u32 = 0x1042_1AF4;

type Blk = VirtioPciDevice<VirtioBlock<MemDisk>>;

/// One machine: the buses, the root and the function it holds.
pub struct Devices {
    io: Arc<IoBus>,
    mmio: Arc<MmioBus>,
    root: Arc<PciRoot>,
    blk: Arc<Mutex<Blk>>,
    slot: u8,
    /// The model's count of writes when this machine's state was last checked (`None`: never).
    checked: Cell<Option<u64>>,
}

/// What the checks need to know of the guest's accesses: the CONFIG_ADDRESS it last wrote, and
/// how many writes reached the machine. It only keeps count; the harness runs two machines in
/// lockstep.
#[derive(Debug, Default)]
pub struct AddressModel {
    address: u32,
    writes: u64,
}

impl Model for AddressModel {
    const COMPARES: bool = false;

    fn read(&mut self, _region: usize, _offset: u64, _data: &mut [u8]) {}

    fn write(&mut self, region: usize, offset: u64, data: &[u8]) -> DeviceAction {
        self.writes += 1;
        if region == usize::from(PORTS)
            && offset == 0
            && let &[a, b, c, d] = data
        {
            self.address = u32::from_le_bytes([a, b, c, d]) & CONFIG_ADDRESS_MASK;
        }
        DeviceAction::Resume
    }
}

impl AddressModel {
    /// Whether CONFIG_ADDRESS selects a function that exists.
    fn selects_present(&self, slot: u8) -> bool {
        let a = self.address;
        let bus = (a >> 16) & 0xFF;
        let device = ((a >> 11) & 0x1F) as u8;
        let function = (a >> 8) & 7;
        a & CONFIG_ADDRESS_ENABLE != 0
            && bus == 0
            && function == 0
            && (device == 0 || device == slot)
    }
}

/// The slot the root gives the function: the first after the host bridge's.
const SLOT: u8 = 1;

/// The fixture: a root with a host bridge and virtio-blk over an 8 KiB in-memory disk.
pub struct PciConfigFixture;

impl Fixture for PciConfigFixture {
    type Devices = Devices;
    type Model = AddressModel;

    fn build(&self, setup: &mut Setup) -> Devices {
        let io = setup.io_bus().clone();
        let mmio = setup.mmio_bus().clone();
        let root = PciRoot::new(&io, &mmio).expect("empty buses take the root");
        let layout = GuestLayout::new(4 << 20).expect("a small layout");
        let mut allocators = layout.allocators().expect("fresh allocators");
        let memory = layout.create_guest_memory().expect("4 MiB of guest memory");
        let blk = VirtioPciDevice::new(
            VirtioBlock::new(MemDisk::new(vec![0; 8 << 10], false)),
            memory,
            VirtioPciInterrupts {
                intx: Some(Arc::new(NoopTrigger)),
                intx_line: 16,
                msi: Some(Arc::new(NoopTrigger)),
            },
        )
        .expect("virtio-blk fits the transport");
        let blk = Arc::new(Mutex::new(blk));
        let slot = root
            .add_device("vda", blk.clone(), &mut allocators)
            .expect("a slot and BAR space");
        assert_eq!(slot, SLOT);
        setup.registered("pci-config", Space::Pio, CONFIG_IO_PORT.into(), PORTS_LEN);
        setup.registered("pci-ecam", Space::Mmio, PCI_ECAM_START, PCI_ECAM_SIZE);
        let bar_size = root.placed_bar(slot, 0).expect("BAR 0 placed").size;
        let placed = Arc::downgrade(&root);
        setup.moving("vda-bar0", Space::Mmio, bar_size, move || {
            Some(placed.upgrade()?.placed_bar(slot, 0)?.address)
        });
        Devices {
            io,
            mmio,
            root,
            blk,
            slot,
            checked: Cell::new(None),
        }
    }

    fn model(&self) -> AddressModel {
        AddressModel::default()
    }

    fn check_access(&self, model: &AddressModel, access: &Claimed<'_>) {
        let Answer::Read(data) = access.answer else {
            return;
        };
        let (offset, size) = (access.offset, data.len());
        let all_ones = || data.iter().all(|&b| b == 0xFF);
        match u8::try_from(access.region) {
            Ok(PORTS) => {
                if offset == 0 && size == 4 {
                    let read = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                    assert_eq!(read, model.address, "CONFIG_ADDRESS");
                } else if (4..8).contains(&offset) && size > 0 && offset - 4 + size as u64 <= 4 {
                    if !model.selects_present(SLOT) {
                        assert!(all_ones(), "absent function {data:02x?}");
                    }
                } else {
                    assert!(all_ones(), "odd access {offset}/{size}: {data:02x?}");
                }
            }
            Ok(ECAM) if offset < PCI_ECAM_SIZE => {
                let device = ((offset >> 15) & 0x1F) as u8;
                let absent =
                    offset >> 20 != 0 || (offset >> 12) & 7 != 0 || (device != 0 && device != SLOT);
                let fits = size > 0 && (offset % 4) as usize + size <= 4;
                if absent || !fits {
                    assert!(all_ones(), "ECAM {offset:#x}/{size}: {data:02x?}");
                }
            }
            _ => {}
        }
    }

    fn check(&self, d: &Devices, model: &AddressModel) {
        let stats = d.root.stats();
        assert!(stats.unclaimed <= stats.config_reads + stats.config_writes);
        // What follows changes only when a write reaches the machine (reads are checked one by
        // one in `check_access`): identity registers, BAR placement, the buses' ranges.
        if d.checked.replace(Some(model.writes)) == Some(model.writes) {
            return;
        }
        // Identity registers never change.
        let mut id = [0u8; 4];
        d.root.config_read(0, 0, 0, 0, &mut id);
        assert_eq!(u32::from_le_bytes(id), HOST_BRIDGE_ID);
        d.root.config_read(0, d.slot, 0, 0, &mut id);
        assert_eq!(u32::from_le_bytes(id), BLK_ID);
        // The bus holds exactly the BARs the function decodes, as the device trait reports them
        // and as its configuration space computes them.
        let wanted = BarMapping::decoded(&d.blk.bars());
        let computed = d
            .blk
            .lock()
            .expect("not poisoned")
            .config_space()
            .bar_mappings();
        assert_eq!(wanted, computed);
        // BAR by BAR (`placed_bar`): `placed_bars` would allocate a vector at every check.
        let mut placed = 0;
        for index in (0u8..).take(NUM_BARS) {
            let Some(bar) = d.root.placed_bar(d.slot, index) else {
                continue;
            };
            placed += 1;
            assert_eq!(Some(bar), wanted[usize::from(bar.index)]);
            let route = d
                .mmio
                .lookup(MmioAddress(bar.address), 1)
                .expect("placed BAR is routed");
            assert_eq!(route.base, MmioAddress(bar.address));
        }
        let decoding = wanted.iter().flatten().count();
        if placed < decoding {
            assert!(d.root.stats().bar_conflicts > 0);
        }
        assert!(d.mmio.lookup(MmioAddress(PCI_ECAM_START), 4).is_some());
        assert!(d.io.lookup(PioAddress(CONFIG_IO_PORT), 4).is_some());
    }
}

/// The harness over [`PciConfigFixture`].
pub fn fuzzer() -> DeviceFuzzer<PciConfigFixture> {
    DeviceFuzzer::new(PciConfigFixture)
}

/// Target body.
pub fn run(data: &[u8]) {
    fuzzer().run(data);
}

/// A dword write of CONFIG_ADDRESS.
fn address(value: u32) -> Op {
    Op::Access(Access::write_at(
        PORTS,
        Offset::FromStart(0),
        &value.to_le_bytes(),
    ))
}

/// Selects `device`'s dword register `reg` (enable bit set, bus 0, function 0).
fn select(device: u8, reg: u8) -> Op {
    address(CONFIG_ADDRESS_ENABLE | (u32::from(device & 0x1F) << 11) | u32::from(reg & 0xFC))
}

/// An `in` of `size` bytes at 0xCF8 + `port`: routed where the bus routes the size, handed to
/// the root directly otherwise (0 and 3 bytes).
fn port_read(port: u16, size: u8) -> Op {
    let access = Access::read_at(PORTS, Offset::FromStart(port), size);
    if matches!(size, 1 | 2 | 4) {
        Op::Access(access)
    } else {
        Op::Direct(access)
    }
}

/// An `out` of `data` at 0xCF8 + `port`, as [`port_read`].
fn port_write(port: u16, data: &[u8]) -> Op {
    let access = Access::write_at(PORTS, Offset::FromStart(port), data);
    if matches!(data.len(), 1 | 2 | 4) {
        Op::Access(access)
    } else {
        Op::Direct(access)
    }
}

/// The ECAM window at `offset`.
fn ecam(offset: u64) -> Offset {
    Offset::Absolute(PCI_ECAM_START + offset)
}

/// Named seed inputs: small, meaningful scenarios.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let rd = port_read(4, 4);
    let wr = |v: u32| port_write(4, &v.to_le_bytes());
    let bar_read =
        |offset: u16, size: u8| Op::Access(Access::read_at(BAR0, Offset::FromStart(offset), size));
    // Bus 0 scanned for vendor IDs, in four seeds of eight slots: every seed stays short (the
    // longest seed sets libFuzzer's first length limit, and longer inputs run slower).
    let scan = |devices: std::ops::Range<u8>| -> Vec<Op> {
        devices
            .flat_map(|device| [select(device, 0), rd.clone()])
            .collect()
    };
    let scenarios: Vec<(&'static str, Vec<Op>)> = vec![
        (
            "linux_type1_probe",
            vec![
                port_write(3, &[1]),
                address(0x8000_0000),
                port_read(0, 4),
                select(0, 8),
                rd.clone(),
                address(0),
            ],
        ),
        ("scan_bus0_slots_0_7", scan(0..8)),
        ("scan_bus0_slots_8_15", scan(8..16)),
        ("scan_bus0_slots_16_23", scan(16..24)),
        ("scan_bus0_slots_24_31", scan(24..32)),
        (
            "firmware_bar_sizing",
            vec![
                select(SLOT, 4),
                wr(0x0010_0006),
                select(SLOT, 0x10),
                rd.clone(),
                wr(u32::MAX),
                rd.clone(),
                select(SLOT, 0x14),
                wr(u32::MAX),
                rd.clone(),
                wr(0),
                bar_read(0x12, 2),
            ],
        ),
        (
            "bar_move_and_decode",
            vec![
                select(SLOT, 0x10),
                wr(0xE000_0000),
                bar_read(0x14, 1),
                select(SLOT, 4),
                wr(0),
                bar_read(0, 4),
                wr(2),
                select(SLOT, 0x10),
                wr(0xC000_0000),
                select(SLOT, 0x14),
                wr(1),
                bar_read(0x20, 4),
                // Where the BAR was: nothing answers there any more.
                Op::Access(Access::read_at(BAR0, Offset::Absolute(0xE000_0000), 4)),
            ],
        ),
        (
            "capability_walk",
            vec![
                select(SLOT, 0x34),
                port_read(4, 1),
                select(SLOT, 0x40),
                rd.clone(),
                select(SLOT, 0x4C),
                rd.clone(),
                port_read(5, 2),
                port_read(7, 1),
                select(SLOT, 0x42),
                port_write(6, &[0, 0x80]),
            ],
        ),
        (
            "ecam",
            vec![
                Op::Access(Access::read_at(ECAM, ecam(1 << 15), 4)),
                Op::Access(Access::read_at(ECAM, ecam((1 << 15) | 0x100), 4)),
                Op::Access(Access::write_at(ECAM, ecam((1 << 15) | 0x3C), &[9])),
                Op::Access(Access::read_at(ECAM, ecam(1 << 20), 8)),
                Op::Access(Access::read_at(ECAM, ecam((1 << 15) | 2), 4)),
                // The last bytes of the window, and past its end.
                Op::Access(Access::read_at(ECAM, Offset::BeforeEnd(3), 4)),
                Op::Access(Access::read_at(ECAM, Offset::BeforeEnd(1), 4)),
                Op::Direct(Access::read_at(ECAM, Offset::FromStart(0x8001), 3)),
            ],
        ),
        (
            "odd_port_accesses",
            vec![
                port_write(1, &[6]),
                port_read(0, 2),
                port_read(3, 2),
                port_read(6, 2),
                port_write(7, &[]),
                address(0xFFFF_FFFF),
                rd.clone(),
                port_read(5, 3),
                Op::Direct(Access::read_at(PORTS, Offset::BeforeEnd(0), 8)),
                Op::Access(Access::read_at(PORTS, Offset::BeforeEnd(1), 4)),
            ],
        ),
    ];
    scenarios
        .into_iter()
        .map(|(name, ops)| (name, encode(&ops)))
        .collect()
}

#[cfg(test)]
mod tests {
    use vmkit_fuzzing::{Recording, ops_for_region};

    use super::*;
    use crate::seed_files;

    #[test]
    fn seeds_round_trip_and_pass() {
        for (name, bytes) in all_seeds() {
            let ops = vmkit_fuzzing::decode(&bytes);
            assert_eq!(encode(&ops), bytes, "{name}");
            run(&bytes);
        }
    }

    /// The blk guest's accesses to the configuration ports, as operations.
    fn recorded_ops() -> Vec<Op> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../guests/recordings/blk.vmrec");
        let recording = Recording::read(std::fs::File::open(path).unwrap()).unwrap();
        let ports = CONFIG_IO_PORT.into();
        let ops = ops_for_region(&recording, Space::Pio, ports, PORTS_LEN, PORTS);
        assert!(!ops.is_empty() && ops.len() <= vmkit_fuzzing::ops::MAX_OPS);
        ops
    }

    /// The most bytes of one recorded seed: as long as the longest written seed, so that the
    /// recording does not raise libFuzzer's first length limit (longer inputs run slower).
    const RECORDED_SEED_BYTES: usize = 128;

    /// The blk guest's accesses to the configuration ports (no recording touches the ECAM
    /// window): its driver finding the function and setting it up through CONFIG_ADDRESS and
    /// CONFIG_DATA, in order, cut into seeds of at most [`RECORDED_SEED_BYTES`] that each start
    /// at a CONFIG_ADDRESS write (each selects what its data accesses reach).
    fn recorded_seeds() -> Vec<(&'static str, Vec<u8>)> {
        let ops = recorded_ops();
        let selects = |op: &Op| {
            matches!(op, Op::Access(a) if a.region == PORTS
                && a.offset == Offset::FromStart(0) && a.data.len() == 4)
        };
        // Runs of operations from one CONFIG_ADDRESS write to the next, packed into seeds.
        let mut runs: Vec<Vec<Op>> = Vec::new();
        for op in ops {
            match runs.last_mut() {
                Some(run) if !selects(&op) => run.push(op),
                _ => runs.push(vec![op]),
            }
        }
        let mut chunks: Vec<Vec<Op>> = Vec::new();
        for run in runs {
            match chunks.last_mut() {
                Some(chunk) if encode(chunk).len() + encode(&run).len() <= RECORDED_SEED_BYTES => {
                    chunk.extend(run)
                }
                _ => chunks.push(run),
            }
        }
        chunks
            .iter()
            .enumerate()
            .map(|(i, chunk)| {
                let bytes = encode(chunk);
                assert!(bytes.len() <= RECORDED_SEED_BYTES, "a run of {chunk:?}");
                let name: &'static str = format!("recorded-blk-{i}").leak();
                (name, bytes)
            })
            .collect()
    }

    #[test]
    fn the_recorded_seeds_select_the_function_and_read_its_id() {
        let ops = vmkit_fuzzing::decode(&recorded_seeds()[0].1);
        assert!(ops.contains(&select(SLOT, 0)), "{ops:?}");
        assert!(ops.contains(&port_read(4, 4)), "{ops:?}");
    }

    #[test]
    fn the_recorded_seeds_hold_the_whole_recording_in_order() {
        let seeds = recorded_seeds();
        assert!(seeds.len() > 1, "cut into several");
        let joined: Vec<Op> = seeds
            .iter()
            .flat_map(|(_, bytes)| vmkit_fuzzing::decode(bytes))
            .collect();
        assert_eq!(joined, recorded_ops());
    }

    /// Every seed: the written ones and the recorded ones.
    fn all_seeds() -> Vec<(&'static str, Vec<u8>)> {
        let mut seeds = seeds();
        seeds.extend(recorded_seeds());
        seeds
    }

    #[test]
    fn committed_seeds_replay() {
        seed_files::replay("pci_config", &all_seeds(), true, run);
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        run(&[]);
        run(&[0xFF; 64]);
        run(&(0..=255).collect::<Vec<u8>>());
        for tag in 0..=255u8 {
            run(&[tag, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        }
    }

    #[test]
    fn the_bar_seed_reaches_the_moved_bar() {
        let seeds = seeds();
        let (_, bytes) = seeds
            .iter()
            .find(|(name, _)| *name == "bar_move_and_decode")
            .unwrap();
        let ops = vmkit_fuzzing::decode(bytes);
        let placed = fuzzer().run_ops_then(&ops, |d, _| d.root.placed_bars(d.slot));
        // BAR 0 is 64-bit: the upper register took the 1.
        assert_eq!(placed[0].address, (1 << 32) | 0xC000_0000);
    }

    /// Writes the seed files; run with `cargo test -- --ignored write_seeds`.
    #[test]
    #[ignore]
    fn write_seeds() {
        seed_files::write("pci_config", &all_seeds());
    }
}
