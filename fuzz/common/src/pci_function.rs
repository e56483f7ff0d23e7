//! Fuzz surface `pci_function`: vmkit-devices' virtio-blk PCI function (`VirtioPciDevice` over
//! an in-memory disk) driven directly as a PCI function through vmkit-fuzzing's harness
//! ([`Setup::pci`]), without a root: configuration reads and writes at any offset and size,
//! BAR accesses wherever the guest has put the BARs (and handed to the function directly at
//! any offset and size), guest-memory writes (rings, descriptors, requests) as the fixture's
//! own operation, failing interrupt lines, resets.
//!
//! Checked after every operation, besides what the harness checks of every device (no panic,
//! reads fill every byte deterministically, both instances agree, the bound on
//! interrupt-line and MSI calls per access) and of every PCI function (identity registers
//! never change, `bars()` is well-formed and agrees with the BAR registers and the sizing
//! protocol): the device status only holds states the virtio state machine allows
//! (`DRIVER_OK` implies `FEATURES_OK` implies `DRIVER` implies `ACKNOWLEDGE`; accepted
//! features are offered and include `VERSION_1`; a live device has `DRIVER_OK`), and the block
//! device's request counters add up: [`Fixture::check`].

use std::sync::{Arc, Mutex};

use vmkit_devices::pci::MutPciDevice;
use vmkit_devices::virtio::driver::{
    self, Bar0, DEFAULT_AVAIL, DEFAULT_DESC, DEFAULT_USED, QueueConfig,
};
use vmkit_devices::virtio::{
    F_VERSION_1, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
    TRANSPORT_FEATURES, VirtioDevice, VirtioPciInterrupts,
};
use vmkit_devices::{MemDisk, VirtioBlock, VirtioPciDevice};
use vmkit_fuzzing::{Access, DeviceFuzzer, Fixture, Line, NoModel, Offset, Op, Setup, encode};
use vmkit_memory::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// The fixture's own operation (any tag: it is the only one): writes `data[2..]` into guest
/// memory at the address in `data[0..2]` (little-endian), as a driver fills its rings.
pub const WRITE_MEMORY: u8 = 0;

/// Bytes of guest memory.
pub const MEMORY_SIZE: u64 = 0x1_0000;

/// The regions [`Setup::pci`] registers: the configuration space, then BAR registers 0 to 5.
const CONFIG: u8 = 0;
const BAR0: u8 = 1;

type Blk = VirtioPciDevice<VirtioBlock<MemDisk>>;

/// One machine: the function and its guest memory.
pub struct Devices {
    blk: Arc<Mutex<Blk>>,
    memory: GuestMemoryMmap,
    // The lines stay with the devices for the length of the run.
    _lines: (Line, Line),
}

/// The fixture: virtio-blk over a 16 KiB disk, its INTx# and MSI-X on the harness's lines.
pub struct PciFunctionFixture;

impl Fixture for PciFunctionFixture {
    type Devices = Devices;
    type Model = NoModel;

    fn build(&self, setup: &mut Setup) -> Devices {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY_SIZE as usize)])
            .expect("64 KiB of guest memory");
        let intx = setup.interrupt();
        let msi = setup.interrupt();
        let blk = VirtioPciDevice::new(
            VirtioBlock::new(MemDisk::new(vec![0; 16 << 10], false)),
            memory.clone(),
            VirtioPciInterrupts {
                intx: Some(Arc::new(intx.clone())),
                intx_line: 16,
                msi: Some(Arc::new(msi.clone())),
            },
        )
        .expect("virtio-blk fits the transport");
        let blk = Arc::new(Mutex::new(blk));
        setup.pci("vda", blk.clone());
        Devices {
            blk,
            memory,
            _lines: (intx, msi),
        }
    }

    fn model(&self) -> NoModel {
        NoModel
    }

    fn user_op(&self, devices: &Devices, _tag: u8, data: &[u8]) -> u64 {
        let [a, b, bytes @ ..] = data else {
            return 0;
        };
        let address = u64::from(u16::from_le_bytes([*a, *b]));
        // Bytes past the end of guest memory are dropped: the answer is how many landed.
        let fit = bytes.len().min((MEMORY_SIZE - address) as usize);
        let written = devices
            .memory
            .write_slice(&bytes[..fit], GuestAddress(address))
            .is_ok();
        if written { fit as u64 } else { 0 }
    }

    fn check(&self, devices: &Devices, _model: &NoModel) {
        let blk = devices.blk.lock().expect("not poisoned");
        let status = blk.status();
        let implies = |a: u8, b: u8| status & a == 0 || status & b != 0;
        assert!(implies(STATUS_DRIVER_OK, STATUS_FEATURES_OK), "{status:#x}");
        assert!(implies(STATUS_FEATURES_OK, STATUS_DRIVER), "{status:#x}");
        assert!(implies(STATUS_DRIVER, STATUS_ACKNOWLEDGE), "{status:#x}");
        if status & STATUS_FEATURES_OK != 0 {
            let acked = blk.acked_features();
            let offered = blk.device().features() | TRANSPORT_FEATURES;
            assert_eq!(acked & !offered, 0);
            assert_ne!(acked & F_VERSION_1, 0);
        }
        if blk.is_active() {
            assert_ne!(status & STATUS_DRIVER_OK, 0);
        }
        let s = blk.device().stats();
        assert_eq!(
            s.requests,
            s.reads + s.writes + s.flushes + s.get_ids + s.unsupported + s.errors
        );
    }
}

/// The harness over [`PciFunctionFixture`].
pub fn fuzzer() -> DeviceFuzzer<PciFunctionFixture> {
    DeviceFuzzer::new(PciFunctionFixture)
}

/// Target body.
pub fn run(data: &[u8]) {
    fuzzer().run(data);
}

/// Where the seeds put BAR 0 (the BAR is 32 KiB, so aligned to it).
const BAR0_ADDRESS: u32 = 0xE000_0000;

/// A dword configuration write.
fn config_write(offset: u16, value: u32) -> Op {
    Op::Access(Access::write_at(
        CONFIG,
        Offset::FromStart(offset),
        &value.to_le_bytes(),
    ))
}

/// A driver's BAR 0 accesses written down as the harness's operations, as they happen on a
/// live function (so that reads the driver makes decisions on answer what they would).
struct Recorder {
    device: Arc<Mutex<Blk>>,
    ops: Vec<Op>,
}

impl Recorder {
    fn new() -> Self {
        let fixture = PciFunctionFixture;
        let mut setup = Setup::default();
        let devices = fixture.build(&mut setup);
        Recorder {
            device: devices.blk,
            ops: Vec::new(),
        }
    }
}

impl Bar0 for Recorder {
    fn write(&mut self, offset: u64, data: &[u8]) {
        let at = Offset::FromStart(offset as u16);
        self.ops.push(Op::Access(Access::write_at(BAR0, at, data)));
        self.device
            .lock()
            .expect("not poisoned")
            .bar_write(0, offset, data);
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let at = Offset::FromStart(offset as u16);
        self.ops
            .push(Op::Access(Access::read_at(BAR0, at, data.len() as u8)));
        self.device
            .lock()
            .expect("not poisoned")
            .bar_read(0, offset, data);
    }
}

/// Writes `bytes` to guest memory at `address`.
fn memory(address: u16, bytes: &[u8]) -> Op {
    let mut data = address.to_le_bytes().to_vec();
    data.extend_from_slice(bytes);
    Op::User {
        tag: WRITE_MEMORY,
        data,
    }
}

/// A descriptor: address, length, flags, next.
fn descriptor(addr: u64, len: u32, flags: u16, next: u16) -> Vec<u8> {
    let mut d = addr.to_le_bytes().to_vec();
    d.extend_from_slice(&len.to_le_bytes());
    d.extend_from_slice(&flags.to_le_bytes());
    d.extend_from_slice(&next.to_le_bytes());
    d
}

/// The firmware's set-up of the function: BAR 0 placed, memory decoding and bus mastering on.
fn firmware() -> Vec<Op> {
    vec![
        config_write(0x10, BAR0_ADDRESS),
        config_write(0x14, 0),
        Op::Access(Access::write_at(CONFIG, Offset::FromStart(4), &[0x06, 0])),
    ]
}

/// A driver's bring-up of queue 0 and one read request of sector 0 (header, data, status
/// descriptors chained), notified.
fn read_request() -> Vec<Op> {
    let mut recorder = Recorder::new();
    let queue = QueueConfig {
        size: 8,
        desc: DEFAULT_DESC,
        driver: DEFAULT_AVAIL,
        device: DEFAULT_USED,
        msix_vector: None,
    };
    let status = driver::init(&mut recorder, F_VERSION_1, &[queue]);
    assert!(
        status.is_ok_and(|s| s & STATUS_DRIVER_OK != 0),
        "{status:?}"
    );
    let mut ops = firmware();
    ops.append(&mut recorder.ops);
    let (header, data, status) = (0x4000u64, 0x5000u64, 0x6000u64);
    let mut table = descriptor(header, 16, driver::DESC_F_NEXT, 1);
    table.extend(descriptor(
        data,
        512,
        driver::DESC_F_NEXT | driver::DESC_F_WRITE,
        2,
    ));
    table.extend(descriptor(status, 1, driver::DESC_F_WRITE, 0));
    ops.push(memory(DEFAULT_DESC as u16, &table));
    // Request header: type 0 (read), reserved, sector 0.
    ops.push(memory(header as u16, &[0; 16]));
    // The available ring: flags 0, index 1, head 0.
    ops.push(memory(DEFAULT_AVAIL as u16, &[0, 0, 1, 0, 0, 0]));
    driver::notify(&mut recorder, 0);
    ops.append(&mut recorder.ops);
    ops
}

/// Named seed inputs: small, meaningful scenarios.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut read = read_request();
    // ISR (reading it deasserts INTx#).
    read.push(Op::Access(Access::read_at(
        BAR0,
        Offset::FromStart(0x1000),
        1,
    )));
    let mut reset_mid_flight = read_request();
    reset_mid_flight.insert(reset_mid_flight.len() - 1, Op::Reset);
    let scenarios: Vec<(&'static str, Vec<Op>)> = vec![
        (
            "config_header_and_edges",
            vec![
                Op::Access(Access::read_at(CONFIG, Offset::FromStart(0), 4)),
                Op::Access(Access::read_at(CONFIG, Offset::FromStart(0x34), 1)),
                Op::Access(Access::read_at(CONFIG, Offset::FromStart(0x40), 4)),
                Op::Access(Access::read_at(CONFIG, Offset::BeforeEnd(3), 4)),
                Op::Direct(Access::read_at(CONFIG, Offset::BeforeEnd(1), 8)),
                Op::Direct(Access::write_at(CONFIG, Offset::BeforeEnd(2), &[0xFF; 8])),
                Op::Direct(Access::read_at(CONFIG, Offset::FromStart(0x3E), 0)),
                config_write(0x3C, 0xFFFF_FFFF),
            ],
        ),
        (
            "bar_sizing_and_move",
            vec![
                config_write(0x10, u32::MAX),
                Op::Access(Access::read_at(CONFIG, Offset::FromStart(0x10), 4)),
                config_write(0x14, u32::MAX),
                Op::Access(Access::read_at(CONFIG, Offset::FromStart(0x14), 4)),
                config_write(0x10, BAR0_ADDRESS),
                config_write(0x14, 1),
                Op::Access(Access::write_at(CONFIG, Offset::FromStart(4), &[2, 0])),
                Op::Access(Access::read_at(BAR0, Offset::FromStart(0x14), 1)),
                Op::Access(Access::read_at(BAR0, Offset::BeforeEnd(7), 8)),
                Op::Direct(Access::read_at(BAR0, Offset::BeforeEnd(1), 8)),
                // Decoding off: routed accesses reach nothing.
                Op::Access(Access::write_at(CONFIG, Offset::FromStart(4), &[0, 0])),
                Op::Access(Access::read_at(BAR0, Offset::FromStart(0), 4)),
            ],
        ),
        ("read_request", read),
        ("reset_mid_flight", reset_mid_flight),
        (
            "failing_lines",
            [
                firmware(),
                vec![Op::FailInterrupts(true)],
                read_request(),
                vec![Op::FailInterrupts(false)],
            ]
            .concat(),
        ),
    ];
    scenarios
        .into_iter()
        .map(|(name, ops)| (name, encode(&ops)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed_files;
    use vmkit_devices::virtio::BAR_SIZE;
    use vmkit_fuzzing::{RecordedFunction, ops_for_pci_function};
    use vmkit_memory::layout::{MMIO32_START, PCI_ECAM_START};

    #[test]
    fn seeds_round_trip_and_pass() {
        for (name, bytes) in seeds() {
            let ops = vmkit_fuzzing::decode(&bytes);
            assert_eq!(encode(&ops), bytes, "{name}");
            run(&bytes);
        }
    }

    #[test]
    fn the_read_request_seed_completes_the_request() {
        let ops = vmkit_fuzzing::decode(&seeds()[2].1);
        let stats = fuzzer().run_ops_then(&ops, |d, _| d.blk.lock().unwrap().device().stats());
        assert_eq!((stats.requests, stats.reads), (1, 1), "{stats:?}");
    }

    /// The seeds taken from the committed recordings: each guest's configuration accesses to
    /// the reference VMM's first virtio-blk function (00:01.0, through ports 0xCF8 and 0xCFC)
    /// and its accesses to BAR 0, which the VMM put at the start of the 32-bit window.
    fn recorded_seeds() -> Vec<(String, Vec<u8>)> {
        let max_len = seed_files::recorded_seed_len(&seeds());
        let function = RecordedFunction {
            bdf: 1 << 3,
            ecam: Some(PCI_ECAM_START),
            bars: vec![(0, MMIO32_START, BAR_SIZE)],
        };
        seed_files::recorded(|recording| {
            let ops = ops_for_pci_function(recording, &function, CONFIG);
            seed_files::harness_inputs(&ops, max_len)
        })
    }

    /// Every seed: the written ones and the recorded ones.
    fn all_seeds() -> Vec<(String, Vec<u8>)> {
        seed_files::all(seeds(), recorded_seeds())
    }

    #[test]
    fn the_recorded_seeds_find_the_function_and_negotiate() {
        let seeds = recorded_seeds();
        let blk: Vec<_> = seeds
            .iter()
            .filter(|(name, _)| name.starts_with("recorded-blk-"))
            .collect();
        assert!(!blk.is_empty());
        // The first reads the function's identity; together they negotiate features (the
        // recorded rings lie outside the fixture's guest memory: the device stays off).
        let first = vmkit_fuzzing::decode(&blk[0].1);
        assert_eq!(
            first[0],
            Op::Access(Access::read_at(CONFIG, Offset::FromStart(0), 4))
        );
        let ops: Vec<Op> = blk
            .iter()
            .flat_map(|(_, bytes)| vmkit_fuzzing::decode(bytes))
            .collect();
        let status = fuzzer().run_ops_then(&ops, |d, _| d.blk.lock().unwrap().status());
        assert_eq!(
            status & (STATUS_FEATURES_OK | STATUS_DRIVER_OK),
            STATUS_FEATURES_OK | STATUS_DRIVER_OK,
            "{status:#x}"
        );
        for (_, bytes) in &seeds {
            run(bytes);
        }
    }

    #[test]
    fn committed_seeds_replay() {
        seed_files::replay("pci_function", &seed_files::named(&all_seeds()), true, run);
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

    /// Writes the seed files; run with `cargo test -- --ignored write_seeds`.
    #[test]
    #[ignore]
    fn write_seeds() {
        seed_files::write("pci_function", &seed_files::named(&all_seeds()));
    }
}
