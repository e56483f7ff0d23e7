//! Fuzz surface `virtio_pci`: the virtio-pci transport of a virtio-blk device, driven by
//! vmkit-fuzzing's virtio driver simulator: status and feature negotiation in and out of order,
//! queue set-up anywhere, block requests in chains of every shape, notifications, resets in
//! flight, MSI-X and INTx#, register accesses at any offset and size (BAR 0 and configuration
//! space, including the MSI-X and PCI-configuration-access capabilities), and failing
//! interrupts. The input starts with the driver at reset: bringing the device up is part of it.
//!
//! The simulator checks what every virtio device owes its driver (see `vmkit_fuzzing::virtio`).
//! This target adds the transport's own invariants after every step: the status register only
//! holds states the state machine allows (`DRIVER_OK` implies `FEATURES_OK` implies `DRIVER`
//! implies `ACKNOWLEDGE`; accepted features are offered and include `VERSION_1`, and
//! `FEATURES_OK` is refused only for features that are not; a live device has `DRIVER_OK`, a
//! device with status 0 is not live); the queue-size register holds a power of two no larger
//! than the maximum; an asserted INTx# line shows in the PCI status register and is never
//! asserted while INTx# is disabled; the block device's counters add up.

use std::cell::Cell;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use vmkit_devices::pci::{COMMAND_INTX_DISABLE, MutPciDevice, STATUS, STATUS_INTERRUPT};
use vmkit_devices::virtio::block::QUEUE_SIZE;
use vmkit_devices::virtio::{
    F_VERSION_1, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
    TRANSPORT_FEATURES, VirtioDevice, VirtioPciInterrupts, common_cfg,
};
use vmkit_devices::{MemDisk, VirtioBlock, VirtioPciDevice};
use vmkit_fuzzing::Line;
use vmkit_fuzzing::arbitrary::Unstructured;
use vmkit_fuzzing::virtio::{
    Chain, DriverView, Form, Place, QueueSetup, Segment, Structure, VirtioFixture, VirtioFuzzer,
    VirtioOp, Wiring,
};
use vmkit_fuzzing::vm_memory::GuestMemoryMmap;
use vmkit_fuzzing::vmkit_exits::PciDevice;

use crate::virtio_blk::request;

/// Bytes of guest memory: the rings of the one queue and room for requests (the simulator
/// compares all of it after the device's steps, so no more than that).
pub const MEMORY_SIZE: u64 = 0x8000;

/// The transport under test.
pub type Transport = VirtioPciDevice<VirtioBlock<MemDisk>>;

/// One device: the transport, its INTx# line and the guest memory.
pub struct Devices {
    /// The transport, as the PCI root holds it.
    pub dev: Arc<Mutex<Transport>>,
    /// Its INTx# line.
    pub intx: Line,
    /// The guest memory.
    pub memory: GuestMemoryMmap,
    /// `FEATURES_OK` refusals counted at the last check.
    refused: Cell<u64>,
}

impl Devices {
    /// The transport, locked.
    pub fn lock(&self) -> MutexGuard<'_, Transport> {
        self.dev.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The fixture: a virtio-blk device of 16 KiB on the transport, with INTx# and MSI-X.
pub struct Fixture;

impl VirtioFixture for Fixture {
    type Devices = Devices;
    type Config = ();

    fn config(&self, _u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
        Ok(())
    }

    fn encode_config(&self, _config: &(), _out: &mut Vec<u8>) {}

    fn memory(&self, _config: &()) -> Vec<(u64, usize)> {
        vec![(0, MEMORY_SIZE as usize)]
    }

    fn build(&self, _config: &(), wiring: &mut Wiring) -> (Arc<dyn PciDevice>, Devices) {
        let intx = wiring.interrupt();
        let memory = wiring.memory().clone();
        let dev = VirtioPciDevice::new(
            VirtioBlock::new(MemDisk::new(vec![0; 16 << 10], false)),
            memory.clone(),
            VirtioPciInterrupts {
                intx: Some(Arc::new(intx.clone())),
                intx_line: 16,
                msi: Some(wiring.msi()),
            },
        )
        .expect("virtio-blk fits the transport");
        let dev = Arc::new(Mutex::new(dev));
        let devices = Devices {
            dev: dev.clone(),
            intx,
            memory,
            refused: Cell::new(0),
        };
        (dev, devices)
    }

    fn request(&self, _devices: &Devices, _queue: u16, payload: &[u8], out: &mut Vec<Segment>) {
        request::segments(payload, out);
    }

    fn payload(&self, _queue: u16, segments: &[Segment]) -> Option<Vec<u8>> {
        request::payload_of(segments)
    }

    fn check(&self, devices: &Devices, driver: &DriverView) {
        let mut dev = devices.lock();
        let status = dev.status();
        let implies = |a: u8, b: u8| status & a == 0 || status & b != 0;
        assert!(implies(STATUS_DRIVER_OK, STATUS_FEATURES_OK), "{status:#x}");
        assert!(implies(STATUS_FEATURES_OK, STATUS_DRIVER), "{status:#x}");
        assert!(implies(STATUS_DRIVER, STATUS_ACKNOWLEDGE), "{status:#x}");
        let acked = dev.acked_features();
        let offered = dev.device().features() | TRANSPORT_FEATURES;
        let acceptable = acked & !offered == 0 && acked & F_VERSION_1 != 0;
        if status & STATUS_FEATURES_OK != 0 {
            assert!(acceptable, "FEATURES_OK with features {acked:#x}");
        }
        let refused = dev.stats().features_refused;
        if refused != devices.refused.replace(refused) {
            assert!(!acceptable, "FEATURES_OK refused for features {acked:#x}");
        }
        if dev.is_active() {
            assert_ne!(status & STATUS_DRIVER_OK, 0);
        }
        if status == 0 {
            assert!(!dev.is_active(), "live after a reset");
        }
        // Queue-size register of the selected queue: a valid size, or 0 for none.
        let mut size = [0u8; 2];
        dev.bar_read(0, common_cfg::QUEUE_SIZE, &mut size);
        let size = u16::from_le_bytes(size);
        assert!(
            size == 0 || (size.is_power_of_two() && size <= QUEUE_SIZE),
            "{size}"
        );
        let mut queues = [0u8; 2];
        dev.bar_read(0, common_cfg::NUM_QUEUES, &mut queues);
        assert_eq!(u16::from_le_bytes(queues), 1, "one queue");
        // INTx# as the guest sees it.
        if !driver.interrupts_failed && devices.intx.is_asserted() {
            let mut s = [0u8; 2];
            dev.config_read(STATUS as u8, &mut s);
            assert_ne!(
                u16::from_le_bytes(s) & STATUS_INTERRUPT,
                0,
                "asserted but not pending"
            );
            let command = dev.config_space().command();
            assert_eq!(command & COMMAND_INTX_DISABLE, 0, "asserted while disabled");
        }
        let s = dev.device().stats();
        assert_eq!(
            s.requests,
            s.reads + s.writes + s.flushes + s.get_ids + s.unsupported + s.errors
        );
    }
}

/// The simulator on the fixture.
pub fn fuzzer() -> VirtioFuzzer<Fixture> {
    VirtioFuzzer::new(Fixture)
}

thread_local! {
    /// The target's simulator: it keeps guest memory from one input to the next.
    static FUZZER: VirtioFuzzer<Fixture> = fuzzer();
}

/// Target body.
pub fn run(data: &[u8]) {
    FUZZER.with(|fuzzer| fuzzer.run(data));
}

/// An honest bring-up accepting `features` (of those offered), queue 0 of `size` entries at the
/// simulator's places with MSI-X vector `vector`.
fn init(features: u64, size: u16, vector: Option<u16>) -> Vec<VirtioOp> {
    vec![
        VirtioOp::Negotiate { mask: features },
        VirtioOp::Queue(QueueSetup {
            size,
            vector,
            ..QueueSetup::honest(0)
        }),
        VirtioOp::DriverOk,
    ]
}

/// A well-formed request of direct descriptors on queue 0.
fn request(kind: u8, sector: u64, data: u8) -> VirtioOp {
    VirtioOp::Chain(Chain::direct(0, &request::payload(kind, sector, data, &[])))
}

/// Named seed inputs: small, meaningful scenarios.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let common = |field: u8, value: u64| VirtioOp::Common { field, value };
    let config_write = |offset: u8, data: &[u8]| VirtioOp::ConfigWrite {
        offset,
        data: data.to_vec(),
    };
    let scenarios: Vec<(&'static str, Vec<VirtioOp>)> = vec![
        (
            // Firmware: VERSION_1 only, a queue of 16, one sector read, the ISR polled.
            "firmware_read",
            [
                init(F_VERSION_1, 16, Some(1)),
                vec![
                    request(0, 0, 1),
                    VirtioOp::Notify(0),
                    VirtioOp::Read {
                        at: Structure::Isr,
                        offset: 0,
                        size: 1,
                    },
                ],
            ]
            .concat(),
        ),
        (
            // Linux: MSI-X on, vector 1 programmed, the features it takes, a GET_ID, the PBA.
            "linux_msix",
            [
                vec![
                    VirtioOp::Interrupts(1),
                    VirtioOp::Msix {
                        entry: 1,
                        address: 0xFEE0_0000,
                        data: 0x41,
                        masked: false,
                    },
                ],
                init(F_VERSION_1 | (1 << 29) | (1 << 28) | (1 << 9), 16, Some(1)),
                vec![
                    request(3, 0, request::ID_DATA),
                    VirtioOp::Notify(0),
                    VirtioOp::Read {
                        at: Structure::Bar(0),
                        offset: 0x6000,
                        size: 8,
                    },
                ],
            ]
            .concat(),
        ),
        (
            // Status bits out of order, features refused, a reset, a bring-up without
            // VERSION_1 and DRIVER_OK over a refused FEATURES_OK.
            "status_machine",
            [
                vec![
                    common(6, 2),
                    common(6, 1),
                    common(6, 3),
                    common(2, 1),
                    common(3, 0xFFFF_FFFF),
                    common(6, 0xB),
                    common(6, 0),
                    VirtioOp::Status(4),
                ],
                init(0, 8, None),
                vec![common(6, 0xF)],
            ]
            .concat(),
        ),
        (
            // Queue registers: invalid sizes, addresses in halves, enabling, a missing queue.
            "queue_registers",
            vec![
                common(8, 0),
                common(9, 3),
                common(9, 512),
                common(9, 8),
                common(13, 0x1000),
                common(16, 1),
                common(14, 0x2001),
                common(11, 1),
                common(9, 4),
                common(8, 7),
                VirtioOp::Read {
                    at: Structure::Common,
                    offset: 0x18,
                    size: 2,
                },
                VirtioOp::Queue(QueueSetup {
                    queue: 3,
                    size: 4,
                    desc: Place::Raw(0x1_0000_0000),
                    avail: Place::Ram(0x2001),
                    used: Place::Ram(0x2000),
                    vector: Some(0xFFFF),
                    enable: true,
                }),
            ],
        ),
        (
            // The PCI configuration access capability (the last one, at 0x90) reaching BAR 0.
            "pci_cfg_window",
            vec![
                config_write(0x94, &[0]),
                config_write(0x98, &[0x12, 0, 0, 0]),
                config_write(0x9C, &[2, 0, 0, 0]),
                VirtioOp::ConfigRead {
                    offset: 0xA0,
                    size: 3,
                },
                config_write(0x98, &[0x14, 0, 0, 0]),
                config_write(0x9C, &[1, 0, 0, 0]),
                config_write(0xA0, &[1]),
            ],
        ),
        (
            // INTx#: a flush raises it, ISR reads lower it, INTx# disabled and enabled again,
            // failing lines.
            "intx_and_isr",
            [
                init(F_VERSION_1, 16, None),
                vec![
                    request(2, 0, 0),
                    VirtioOp::Notify(0),
                    VirtioOp::ConfigRead { offset: 6, size: 1 },
                    config_write(5, &[4]),
                    config_write(5, &[0]),
                    VirtioOp::FailInterrupts(true),
                    VirtioOp::Read {
                        at: Structure::Isr,
                        offset: 0,
                        size: 4,
                    },
                    VirtioOp::FailInterrupts(false),
                ],
            ]
            .concat(),
        ),
        (
            // Chains of every form in flight when the driver resets, then a fresh bring-up
            // with rings of its own choosing.
            "reset_in_flight",
            [
                init(u64::MAX, 8, Some(0)),
                vec![
                    VirtioOp::Chain(Chain {
                        form: Form::Indirect,
                        ..Chain::direct(0, &request::payload(0, 1, 2, &[]))
                    }),
                    VirtioOp::Chain(Chain {
                        form: Form::Chained,
                        split: true,
                        ..Chain::direct(0, &request::payload(1, 2, 1, &[0xAB]))
                    }),
                    VirtioOp::Reset,
                    VirtioOp::Notify(0),
                    VirtioOp::Negotiate { mask: u64::MAX },
                    VirtioOp::Queue(QueueSetup {
                        size: 4,
                        desc: Place::Ram(0x7000),
                        avail: Place::Ram(0x7400),
                        used: Place::Ram(0x7800),
                        ..QueueSetup::honest(0)
                    }),
                    VirtioOp::DriverOk,
                    request(0, 2, 1),
                    VirtioOp::Notify(0),
                ],
            ]
            .concat(),
        ),
    ];
    let fuzzer = fuzzer();
    scenarios
        .into_iter()
        .map(|(name, ops)| (name, fuzzer.encode(&(), &ops)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed_files;
    use vmkit_fuzzing::vm_memory::{Bytes, GuestAddress};
    use vmkit_memory::layout::MMIO32_START;

    #[test]
    fn seeds_round_trip_and_pass() {
        let fuzzer = fuzzer();
        for (name, bytes) in seeds() {
            let (config, ops) = fuzzer.decode(&bytes).unwrap();
            assert_eq!(fuzzer.encode(&config, &ops), bytes, "{name}");
            run(&bytes);
        }
    }

    #[test]
    fn the_firmware_seed_completes_its_read() {
        let (name, bytes) = seeds().remove(0);
        assert_eq!(name, "firmware_read");
        let fuzzer = fuzzer();
        let (config, ops) = fuzzer.decode(&bytes).unwrap();
        let (active, reads, used, asserts, driver) =
            fuzzer.run_ops_then(&config, &ops, |devices, driver| {
                let dev = devices.lock();
                let used: u16 = devices.memory.read_obj(GuestAddress(0x3002)).unwrap();
                (
                    dev.is_active(),
                    dev.device().stats().reads,
                    used,
                    devices.intx.asserts(),
                    *driver,
                )
            });
        assert!(active && !driver.tainted);
        assert_eq!((reads, used, asserts, driver.outstanding), (1, 1, 1, 0));
    }

    #[test]
    fn the_reset_seed_drops_what_was_in_flight_and_serves_the_new_ring() {
        let bytes = seeds()
            .into_iter()
            .find(|(n, _)| *n == "reset_in_flight")
            .unwrap()
            .1;
        let fuzzer = fuzzer();
        let (config, ops) = fuzzer.decode(&bytes).unwrap();
        let (stats, driver) = fuzzer.run_ops_then(&config, &ops, |devices, driver| {
            (devices.lock().device().stats(), *driver)
        });
        assert_eq!((stats.requests, stats.reads), (1, 1));
        assert_eq!(
            (driver.resets, driver.published, driver.outstanding),
            (3, 1, 0)
        );
    }

    /// The blk guest's driver (`guests/recordings/blk.vmrec`), whose BAR 0 the reference VMM
    /// put at the start of the 32-bit window, as the simulator's operations.
    fn recorded_ops(recording: &vmkit_fuzzing::Recording) -> Vec<VirtioOp> {
        fuzzer().ops_from_recording(&(), recording, &[(0, MMIO32_START)])
    }

    /// The seeds taken from the committed recordings: the driver's set-up, then its requests.
    fn recorded_seeds() -> Vec<(String, Vec<u8>)> {
        let max_len = seed_files::recorded_seed_len(&seeds());
        seed_files::recorded(|recording| {
            seed_files::virtio_inputs(&fuzzer(), &(), &recorded_ops(recording), true, max_len)
        })
    }

    /// Every seed: the written ones and the recorded ones.
    fn all_seeds() -> Vec<(String, Vec<u8>)> {
        seed_files::all(seeds(), recorded_seeds())
    }

    #[test]
    fn the_recorded_driver_sets_the_device_up_and_reads_and_writes_through_it() {
        let recording = seed_files::recordings()
            .into_iter()
            .find(|(guest, _)| guest == "blk")
            .unwrap()
            .1;
        let ops = recorded_ops(&recording);
        let set_up: Vec<_> = ops
            .iter()
            .take_while(|op| !matches!(op, VirtioOp::Chain(_)))
            .cloned()
            .collect();
        // Reset, ACKNOWLEDGE | DRIVER, VERSION_1 and no other feature, FEATURES_OK, queue 0 of
        // four entries, DRIVER_OK, the capacity read.
        let common = |field: u8, value: u64| VirtioOp::Common { field, value };
        let read_config = |offset: u16| VirtioOp::Read {
            at: Structure::Device,
            offset,
            size: 4,
        };
        assert_eq!(
            set_up,
            [
                VirtioOp::Reset,
                VirtioOp::Status(1),
                VirtioOp::Status(3),
                // The device features, both windows.
                common(0, 0),
                common(0, 1),
                VirtioOp::Features {
                    select: 0,
                    value: 0
                },
                VirtioOp::Features {
                    select: 1,
                    value: 1
                },
                VirtioOp::Status(0xB),
                VirtioOp::Queue(QueueSetup {
                    size: 4,
                    ..QueueSetup::honest(0)
                }),
                VirtioOp::Status(0xF),
                // The capacity.
                read_config(0),
                read_config(4),
            ]
        );
        let chains: Vec<_> = ops
            .iter()
            .filter_map(|op| match op {
                VirtioOp::Chain(chain) => Some(chain.payload[0]),
                _ => None,
            })
            .collect();
        let notifies = ops.iter().filter(|op| **op == VirtioOp::Notify(0)).count();
        assert_eq!(chains.len(), notifies, "one chain per notification");
        // Reads (kind 0), writes (1) and a flush (2), as the guest made them.
        for kind in 0..3 {
            assert!(chains.contains(&kind), "{chains:?}");
        }
        let (stats, driver) = fuzzer().run_ops_then(&(), &ops, |devices, driver| {
            (devices.lock().device().stats(), *driver)
        });
        assert_eq!(stats.requests as usize, chains.len());
        assert!(stats.reads > 0 && stats.writes > 0 && stats.flushes > 0);
        assert!(!driver.tainted && driver.outstanding == 0);
    }

    #[test]
    fn the_recorded_seeds_start_with_the_set_up_and_hold_requests() {
        let seeds = recorded_seeds();
        // The blk guest's driver, and the hostile guest's at the same place.
        assert!(
            seeds
                .iter()
                .any(|(name, _)| name.starts_with("recorded-blk-"))
        );
        for (name, bytes) in &seeds {
            let (_, ops) = fuzzer().decode(bytes).unwrap();
            assert_eq!(ops[0], VirtioOp::Reset, "{name}: {ops:?}");
            assert!(ops.contains(&VirtioOp::Notify(0)), "{name}");
        }
    }

    #[test]
    fn committed_seeds_replay() {
        seed_files::replay("virtio_pci", &seed_files::named(&all_seeds()), true, run);
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        seed_files::odd_inputs(run);
    }

    /// Writes the seed files; run with `cargo test -- --ignored write_seeds`.
    #[test]
    #[ignore]
    fn write_seeds() {
        seed_files::write("virtio_pci", &seed_files::named(&all_seeds()));
    }
}
