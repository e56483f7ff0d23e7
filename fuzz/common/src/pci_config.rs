//! Fuzz surface `pci_config`: arbitrary sequences of CONFIG_ADDRESS/CONFIG_DATA accesses (any
//! port of 0xCF8..0xD00, any size), ECAM accesses and BAR accesses against a root complex with
//! a host bridge and a virtio-blk device.
//!
//! Checked after every operation: nothing panics; CONFIG_ADDRESS reads back what was written
//! (reserved bits clear); absent functions read all ones; the identity registers of both
//! functions never change; every BAR range on the MMIO bus is exactly one the configuration
//! space decodes, and a BAR that should decode but is not placed was refused by the bus (a
//! counted conflict); the ECAM and port ranges stay registered.
//!
//! The input is a sequence of [`Op`]s in a small byte format (a tag byte, then fields read
//! with `arbitrary`'s primitives), so [`encode`] writes seeds that decode to exactly the
//! intended operations.

use std::sync::{Arc, Mutex};

use arbitrary::{Arbitrary, Unstructured};
use vmkit_devices::pci::{BarMapping, CONFIG_ADDRESS_ENABLE, PciDevice, PciRoot};
use vmkit_devices::virtio::VirtioPciInterrupts;
use vmkit_devices::{MemDisk, NoopTrigger, VirtioBlock, VirtioPciDevice};
use vmkit_exits::{IoBus, MmioAddress, MmioBus, PioAddress};
use vmkit_memory::GuestLayout;
use vmkit_memory::layout::{PCI_ECAM_SIZE, PCI_ECAM_START};

/// Most operations taken from one input.
pub const MAX_OPS: usize = 512;

/// One step of a fuzz input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A dword write of CONFIG_ADDRESS.
    Address(u32),
    /// Selects `device`'s dword register `reg` (enable bit set, bus 0, function 0).
    Select {
        /// Device number (any value; masked to 5 bits).
        device: u8,
        /// Register offset (low 2 bits dropped).
        reg: u8,
    },
    /// An `in` of `size` (0..=4) bytes at 0xCF8 + `port` (0..=7).
    Read {
        /// Port offset.
        port: u8,
        /// Size.
        size: u8,
    },
    /// An `out` of `data` (0..=4 bytes) at 0xCF8 + `port`.
    Write {
        /// Port offset.
        port: u8,
        /// Bytes.
        data: Vec<u8>,
    },
    /// An ECAM read of `size` (0..=8) bytes at `offset` inside the window.
    EcamRead {
        /// Offset (bus, device, function and register bits).
        offset: u32,
        /// Size.
        size: u8,
    },
    /// An ECAM write.
    EcamWrite {
        /// Offset.
        offset: u32,
        /// Bytes (0..=8).
        data: Vec<u8>,
    },
    /// An MMIO read at `offset` from where the device's BAR 0 is placed (if it is).
    BarRead {
        /// Offset from the BAR's base (wraps in the BAR's size).
        offset: u16,
        /// Size (0..=8).
        size: u8,
    },
    /// An MMIO write at `offset` from BAR 0.
    BarWrite {
        /// Offset from the BAR's base.
        offset: u16,
        /// Bytes (0..=8).
        data: Vec<u8>,
    },
}

const OP_KINDS: u8 = 8;

fn bytes(u: &mut Unstructured<'_>, max: u8) -> arbitrary::Result<Vec<u8>> {
    let len = u8::arbitrary(u)? % (max + 1);
    Ok(u.bytes(usize::from(len))?.to_vec())
}

impl Op {
    fn read(u: &mut Unstructured<'_>) -> arbitrary::Result<Self> {
        Ok(match u8::arbitrary(u)? % OP_KINDS {
            0 => Op::Address(u32::arbitrary(u)?),
            1 => Op::Select {
                device: u8::arbitrary(u)?,
                reg: u8::arbitrary(u)?,
            },
            2 => Op::Read {
                port: u8::arbitrary(u)? % 8,
                size: u8::arbitrary(u)? % 5,
            },
            3 => Op::Write {
                port: u8::arbitrary(u)? % 8,
                data: bytes(u, 4)?,
            },
            4 => Op::EcamRead {
                offset: u32::arbitrary(u)?,
                size: u8::arbitrary(u)? % 9,
            },
            5 => Op::EcamWrite {
                offset: u32::arbitrary(u)?,
                data: bytes(u, 8)?,
            },
            6 => Op::BarRead {
                offset: u16::arbitrary(u)?,
                size: u8::arbitrary(u)? % 9,
            },
            _ => Op::BarWrite {
                offset: u16::arbitrary(u)?,
                data: bytes(u, 8)?,
            },
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let bytes = |out: &mut Vec<u8>, data: &[u8]| {
            out.push(data.len() as u8);
            out.extend_from_slice(data);
        };
        match self {
            Op::Address(a) => {
                out.push(0);
                out.extend_from_slice(&a.to_le_bytes());
            }
            Op::Select { device, reg } => out.extend_from_slice(&[1, *device, *reg]),
            Op::Read { port, size } => out.extend_from_slice(&[2, *port, *size]),
            Op::Write { port, data } => {
                out.extend_from_slice(&[3, *port]);
                bytes(out, data);
            }
            Op::EcamRead { offset, size } => {
                out.push(4);
                out.extend_from_slice(&offset.to_le_bytes());
                out.push(*size);
            }
            Op::EcamWrite { offset, data } => {
                out.push(5);
                out.extend_from_slice(&offset.to_le_bytes());
                bytes(out, data);
            }
            Op::BarRead { offset, size } => {
                out.push(6);
                out.extend_from_slice(&offset.to_le_bytes());
                out.push(*size);
            }
            Op::BarWrite { offset, data } => {
                out.push(7);
                out.extend_from_slice(&offset.to_le_bytes());
                bytes(out, data);
            }
        }
    }
}

/// The operations an input decodes to (at most [`MAX_OPS`]).
pub fn parse(data: &[u8]) -> Vec<Op> {
    crate::ops::decode(&mut Unstructured::new(data), MAX_OPS, Op::read)
}

/// The bytes that decode to `ops`.
pub fn encode(ops: &[Op]) -> Vec<u8> {
    crate::ops::encode(ops, Op::encode)
}

type Blk = VirtioPciDevice<VirtioBlock<MemDisk>>;

struct Harness {
    io: Arc<IoBus>,
    mmio: Arc<MmioBus>,
    root: Arc<PciRoot>,
    blk: Arc<Mutex<Blk>>,
    slot: u8,
    address: u32,
    bar_size: u64,
}

const HOST_BRIDGE_ID: u32 = 0x0D57_8086;
const BLK_ID: u32 = 0x1042_1AF4;

impl Harness {
    fn new() -> Self {
        let io = Arc::new(IoBus::new());
        let mmio = Arc::new(MmioBus::new());
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
        let bar_size = root.placed_bars(slot)[0].size;
        Self {
            io,
            mmio,
            root,
            blk,
            slot,
            address: 0,
            bar_size,
        }
    }

    fn in_port(&self, port: u8, size: u8) -> Vec<u8> {
        let mut data = vec![0x5A; usize::from(size)];
        let claimed = self.io.read(PioAddress(0xCF8 + u16::from(port)), &mut data);
        // The root covers the eight ports: an access that fits is always answered.
        assert_eq!(
            claimed,
            size > 0 && usize::from(port) + usize::from(size) <= 8
        );
        data
    }

    fn out_port(&mut self, port: u8, data: &[u8]) {
        self.io.write(PioAddress(0xCF8 + u16::from(port)), data);
        if port == 0 && data.len() == 4 {
            self.address = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) & 0x80FF_FFFC;
        }
    }

    /// Whether CONFIG_ADDRESS selects a function that exists.
    fn selects_present(&self) -> bool {
        let a = self.address;
        let bus = (a >> 16) & 0xFF;
        let device = ((a >> 11) & 0x1F) as u8;
        let function = (a >> 8) & 7;
        a & CONFIG_ADDRESS_ENABLE != 0
            && bus == 0
            && function == 0
            && (device == 0 || device == self.slot)
    }

    fn data_read(&self, port: u8, size: u8) {
        let data = self.in_port(port, size);
        if port >= 4 && !data.is_empty() && usize::from(port) + data.len() <= 8 {
            if !self.selects_present() {
                assert!(
                    data.iter().all(|&b| b == 0xFF),
                    "absent function {data:02x?}"
                );
            }
        } else if port == 0 && size == 4 {
            assert_eq!(
                u32::from_le_bytes([data[0], data[1], data[2], data[3]]),
                self.address
            );
        } else if !data.is_empty() && usize::from(port) + data.len() <= 8 {
            assert!(data.iter().all(|&b| b == 0xFF), "odd access {port}/{size}");
        }
    }

    fn ecam_read(&self, offset: u32, size: u8) {
        let offset = u64::from(offset) % PCI_ECAM_SIZE;
        let mut data = vec![0x5A; usize::from(size)];
        // An access running past the window's end belongs to no range.
        let claimed = self
            .mmio
            .read(MmioAddress(PCI_ECAM_START + offset), &mut data);
        assert_eq!(
            claimed,
            size > 0 && offset + u64::from(size) <= PCI_ECAM_SIZE
        );
        let device = ((offset >> 15) & 0x1F) as u8;
        let absent =
            offset >> 20 != 0 || (offset >> 12) & 7 != 0 || (device != 0 && device != self.slot);
        let fits = size > 0 && (offset % 4) as usize + usize::from(size) <= 4;
        if claimed && (absent || !fits) {
            assert!(data.iter().all(|&b| b == 0xFF), "ECAM {offset:#x}/{size}");
        }
    }

    fn bar_base(&self) -> Option<u64> {
        self.root.placed_bars(self.slot).first().map(|m| m.address)
    }

    fn check(&self) {
        // Identity registers never change.
        let mut id = [0u8; 4];
        self.root.config_read(0, 0, 0, 0, &mut id);
        assert_eq!(u32::from_le_bytes(id), HOST_BRIDGE_ID);
        self.root.config_read(0, self.slot, 0, 0, &mut id);
        assert_eq!(u32::from_le_bytes(id), BLK_ID);
        // The bus holds exactly the BARs the function decodes, as the device trait reports them
        // and as its configuration space computes them.
        let wanted = BarMapping::decoded(&self.blk.bars());
        let computed = self
            .blk
            .lock()
            .expect("not poisoned")
            .config_space()
            .bar_mappings();
        assert_eq!(wanted, computed);
        for placed in self.root.placed_bars(self.slot) {
            assert_eq!(Some(placed), wanted[usize::from(placed.index)]);
            let route = self
                .mmio
                .lookup(MmioAddress(placed.address), 1)
                .expect("placed BAR is routed");
            assert_eq!(route.base, MmioAddress(placed.address));
        }
        let placed = self.root.placed_bars(self.slot).len();
        let decoding = wanted.iter().flatten().count();
        if placed < decoding {
            assert!(self.root.stats().bar_conflicts > 0);
        }
        assert!(self.mmio.lookup(MmioAddress(PCI_ECAM_START), 4).is_some());
        assert!(self.io.lookup(PioAddress(0xCF8), 4).is_some());
    }
}

/// Target body.
pub fn run(data: &[u8]) {
    let mut h = Harness::new();
    for op in parse(data) {
        match op {
            Op::Address(a) => h.out_port(0, &a.to_le_bytes()),
            Op::Select { device, reg } => {
                let a = CONFIG_ADDRESS_ENABLE
                    | (u32::from(device & 0x1F) << 11)
                    | u32::from(reg & 0xFC);
                h.out_port(0, &a.to_le_bytes());
            }
            Op::Read { port, size } => h.data_read(port, size),
            Op::Write { port, data } => h.out_port(port, &data),
            Op::EcamRead { offset, size } => h.ecam_read(offset, size),
            Op::EcamWrite { offset, data } => {
                let offset = u64::from(offset) % PCI_ECAM_SIZE;
                h.mmio.write(MmioAddress(PCI_ECAM_START + offset), &data);
            }
            Op::BarRead { offset, size } => {
                if let Some(base) = h.bar_base() {
                    let mut data = vec![0u8; usize::from(size)];
                    h.mmio.read(
                        MmioAddress(base + u64::from(offset) % h.bar_size),
                        &mut data,
                    );
                }
            }
            Op::BarWrite { offset, data } => {
                if let Some(base) = h.bar_base() {
                    h.mmio
                        .write(MmioAddress(base + u64::from(offset) % h.bar_size), &data);
                }
            }
        }
        h.check();
    }
    let stats = h.root.stats();
    assert!(stats.unclaimed <= stats.config_reads + stats.config_writes);
}

/// Named seed inputs: small, meaningful scenarios.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let dword = |v: u32| v.to_le_bytes().to_vec();
    let sel = |device, reg| Op::Select { device, reg };
    let rd = Op::Read { port: 4, size: 4 };
    let wr = |v: u32| Op::Write {
        port: 4,
        data: dword(v),
    };
    let mut scan = Vec::new();
    for device in 0..32 {
        scan.push(sel(device, 0));
        scan.push(rd.clone());
    }
    let scenarios: Vec<(&'static str, Vec<Op>)> = vec![
        (
            "linux_type1_probe",
            vec![
                Op::Write {
                    port: 3,
                    data: vec![1],
                },
                Op::Address(0x8000_0000),
                Op::Read { port: 0, size: 4 },
                sel(0, 8),
                rd.clone(),
                Op::Address(0),
            ],
        ),
        ("scan_bus0", scan),
        (
            "firmware_bar_sizing",
            vec![
                sel(1, 4),
                wr(0x0010_0006),
                sel(1, 0x10),
                rd.clone(),
                wr(u32::MAX),
                rd.clone(),
                sel(1, 0x14),
                wr(u32::MAX),
                rd.clone(),
                wr(0),
                Op::BarRead {
                    offset: 0x12,
                    size: 2,
                },
            ],
        ),
        (
            "bar_move_and_decode",
            vec![
                sel(1, 0x10),
                wr(0xE000_0000),
                Op::BarRead {
                    offset: 0x14,
                    size: 1,
                },
                sel(1, 4),
                wr(0),
                Op::BarRead { offset: 0, size: 4 },
                wr(2),
                sel(1, 0x10),
                wr(0xC000_0000),
                sel(1, 0x14),
                wr(1),
            ],
        ),
        (
            "capability_walk",
            vec![
                sel(1, 0x34),
                Op::Read { port: 4, size: 1 },
                sel(1, 0x40),
                rd.clone(),
                sel(1, 0x4C),
                rd.clone(),
                Op::Read { port: 5, size: 2 },
                Op::Read { port: 7, size: 1 },
                sel(1, 0x42),
                Op::Write {
                    port: 6,
                    data: vec![0, 0x80],
                },
            ],
        ),
        (
            "ecam",
            vec![
                Op::EcamRead {
                    offset: 1 << 15,
                    size: 4,
                },
                Op::EcamRead {
                    offset: (1 << 15) | 0x100,
                    size: 4,
                },
                Op::EcamWrite {
                    offset: (1 << 15) | 0x3C,
                    data: vec![9],
                },
                Op::EcamRead {
                    offset: 1 << 20,
                    size: 8,
                },
                Op::EcamRead {
                    offset: (1 << 15) | 2,
                    size: 4,
                },
            ],
        ),
        (
            "odd_port_accesses",
            vec![
                Op::Write {
                    port: 1,
                    data: vec![6],
                },
                Op::Read { port: 0, size: 2 },
                Op::Read { port: 3, size: 2 },
                Op::Read { port: 6, size: 2 },
                Op::Write {
                    port: 7,
                    data: vec![],
                },
                Op::Address(0xFFFF_FFFF),
                rd.clone(),
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
    use super::*;
    use crate::seed_files;

    #[test]
    fn seeds_round_trip_and_pass() {
        for (name, bytes) in seeds() {
            assert_eq!(encode(&parse(&bytes)), bytes, "{name}");
            run(&bytes);
        }
    }

    #[test]
    fn committed_seeds_replay() {
        seed_files::replay("pci_config", &seeds(), true, run);
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
        seed_files::write("pci_config", &seeds());
    }
}
