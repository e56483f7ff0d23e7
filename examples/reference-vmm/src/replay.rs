//! `--replay FILE`: a recording made by `--record-exits`, replayed against the VMM's devices
//! built anew, without a hypervisor: every exit's answer and side effects are compared with the
//! recording's, and the first exit that differs is named.
//!
//! The devices are the run's: [`devices::build`] with the recording's facts (RAM size, whether
//! COM1 and pc-testdev exist, each disk's size, read-only flag and device ID), wired to
//! vmkit-fuzzing's replay sources instead of the backend — its interrupt lines and MSI sender,
//! the recorded clock readings for the CMOS, disks that serve the recorded data, and guest
//! memory loaded with what the devices read before each exit and checked for what they wrote
//! after it. COM1's output goes nowhere. No hypervisor is opened and no thread is started.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use vmkit_boot::mark_acpi_memory;
use vmkit_devices::DiskBackend;
use vmkit_devices::cmos::{CmosRtc, WallClock};
use vmkit_devices::serial::{COM1_IRQ, SerialDevice};
use vmkit_devices::virtio::block::SERIAL_LEN;
use vmkit_exits::record::RecordWriter;
use vmkit_exits::{ExitDispatcher, MsiTrigger, PioDevice};
use vmkit_fuzzing::replay::{
    RecordedClock, RecordedDisk, Recording, Replay, ReplayError, ReplayMemory, ReplayReport,
};
use vmkit_memory::GuestLayout;
use vmkit_memory::layout::MAX_PHYS_BITS;
use vmkit_memory::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::devices::{self, Devices, Disk, Plan, Wiring};
use crate::exit_code;
use crate::recording::{DiskFacts, Line};
use crate::stderr;

/// What a recording says about the VM it was made of: what the replay builds.
#[derive(Debug, PartialEq, Eq)]
pub struct RecordedVm {
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Whether COM1 exists.
    pub com1: bool,
    /// Whether pc-testdev exists.
    pub testdev: bool,
    /// The disks, `vda` first.
    pub disks: Vec<DiskFacts>,
}

impl RecordedVm {
    /// Reads the facts the reference VMM writes first in every recording
    /// ([`Recording::create`](crate::recording::Recording::create)).
    pub fn of(recording: &Recording) -> Result<Self> {
        let vmm = recording.meta("vmm").unwrap_or_default();
        if !vmm.starts_with("reference-vmm ") {
            bail!("not a recording of the reference VMM (its facts name {vmm:?})");
        }
        let memory = recording
            .meta("memory")
            .and_then(|value| value.parse().ok())
            .ok_or_else(|| anyhow!("the recording does not say the guest's RAM size"))?;
        let disks = recording
            .meta_values("disk")
            .enumerate()
            .map(|(index, value)| {
                parse_disk(index, value)
                    .ok_or_else(|| anyhow!("the recording's disk {index} is unreadable: {value:?}"))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            memory,
            com1: on(recording, "com1")?,
            testdev: on(recording, "testdev")?,
            disks,
        })
    }
}

/// The on/off fact `key`.
fn on(recording: &Recording, key: &str) -> Result<bool> {
    match recording.meta(key) {
        Some("on") => Ok(true),
        Some("off") => Ok(false),
        other => bail!("the recording's fact {key} is {other:?}, not on or off"),
    }
}

/// `INDEX size=BYTES readonly=on|off serial=ID`, as the recording writes disk `index`.
fn parse_disk(index: usize, value: &str) -> Option<DiskFacts> {
    let rest = value.strip_prefix(&format!("{index} size="))?;
    let (size, rest) = rest.split_once(" readonly=")?;
    let (read_only, id) = rest.split_once(" serial=")?;
    let mut serial = [0u8; SERIAL_LEN];
    if id.len() > SERIAL_LEN {
        return None;
    }
    for (byte, c) in serial.iter_mut().zip(id.chars()) {
        *byte = u8::try_from(c).ok()?;
    }
    Some(DiskFacts {
        size: size.parse().ok()?,
        read_only: match read_only {
            "on" => true,
            "off" => false,
            _ => return None,
        },
        serial,
    })
}

/// The devices' wiring on the replay's sources.
struct ReplayWiring<'a>(&'a Replay);

impl Wiring for ReplayWiring<'_> {
    fn line(&self, gsi: u32) -> Line {
        Arc::new(self.0.line(gsi))
    }

    fn msi(&self) -> Arc<dyn MsiTrigger> {
        Arc::new(self.0.msi())
    }

    fn cmos(&self, low_ram: u64, high_ram: u64) -> Arc<dyn PioDevice> {
        Arc::new(CmosRtc::with_clock(
            ReplayClock(self.0.clock()),
            low_ram,
            high_ram,
        ))
    }

    fn block_recorder(&self) -> Option<Arc<RecordWriter>> {
        None
    }
}

/// The CMOS clock, reading the recorded readings.
struct ReplayClock(RecordedClock);

impl WallClock for ReplayClock {
    fn now(&self) -> Duration {
        self.0.now()
    }
}

/// A disk as the guest saw it, its data the recorded data.
struct ReplayDisk {
    disk: RecordedDisk,
    facts: DiskFacts,
}

impl DiskBackend for ReplayDisk {
    fn size(&self) -> u64 {
        self.facts.size
    }
    fn read_only(&self) -> bool {
        self.facts.read_only
    }
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.disk.read_exact_at(buf, offset)
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.disk.write_all_at(buf, offset)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.disk.flush()
    }
    fn serial(&self) -> [u8; SERIAL_LEN] {
        self.facts.serial
    }
}

/// Guest memory, as the replay loads and checks it.
struct Memory(GuestMemoryMmap);

impl ReplayMemory for Memory {
    fn write(&mut self, gpa: u64, bytes: &[u8]) -> bool {
        self.0.write_slice(bytes, GuestAddress(gpa)).is_ok()
    }
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> bool {
        self.0.read_slice(buf, GuestAddress(gpa)).is_ok()
    }
}

/// Replays `recording` against the devices its facts describe. A divergence is the
/// [`ReplayError`] of the error (`downcast_ref`); a recording whose facts cannot be built is an
/// error of its own.
pub fn replay(recording: Recording) -> Result<ReplayReport> {
    let vm = RecordedVm::of(&recording)?;
    // The address width only places the 64-bit PCI window, which no device uses: the widest
    // takes every RAM size a run could have had.
    let mut layout = GuestLayout::with_phys_bits(vm.memory, MAX_PHYS_BITS)
        .context("the recording's RAM size")?;
    mark_acpi_memory(&mut layout).context("cannot reserve the ACPI tables' memory")?;
    let mut allocators = layout
        .allocators()
        .context("cannot set up the address allocators")?;
    let memory = layout
        .create_guest_memory()
        .context("cannot allocate guest memory")?;

    let replay = Replay::new(recording);
    let wiring = ReplayWiring(&replay);
    let com1 = vm.com1.then(|| {
        let output: Box<dyn io::Write + Send> = Box::new(io::sink());
        Arc::new(SerialDevice::new(wiring.line(COM1_IRQ), output))
    });
    let disks = vm
        .disks
        .into_iter()
        .enumerate()
        .map(|(index, facts)| Disk {
            path: format!("recorded disk {index}"),
            backend: Box::new(ReplayDisk {
                disk: replay.disk(index as u32),
                facts,
            }),
        })
        .collect();
    let plan = Plan {
        com1,
        testdev: vm.testdev,
        disks,
    };
    let Devices {
        io_bus, mmio_bus, ..
    } = devices::build(&wiring, plan, &layout, &memory, &mut allocators)?;
    let dispatcher = ExitDispatcher::new(io_bus, mmio_bus);
    Ok(replay.with_memory(Memory(memory)).run(&dispatcher)?)
}

/// `--replay FILE`: replays the recording in `path`, says how it went on stderr and returns the
/// exit status: 0 when every exit matches, [`exit_code::REPLAY_DIVERGED`] at the first that
/// does not.
pub fn run(path: &Path) -> Result<u8> {
    let file =
        File::open(path).with_context(|| format!("--replay: cannot open {}", path.display()))?;
    let recording = Recording::read(io::BufReader::new(file))
        .with_context(|| format!("--replay {}", path.display()))?;
    match replay(recording) {
        Ok(report) => {
            stderr::line(format_args!("replayed {}: {report}", path.display()));
            Ok(0)
        }
        Err(e) if matches!(e.downcast_ref(), Some(ReplayError::Diverged { .. })) => {
            stderr::line(format_args!("replay of {}: {e:#}", path.display()));
            Ok(exit_code::REPLAY_DIVERGED)
        }
        Err(e) => Err(e.context(format!("--replay {}", path.display()))),
    }
}

#[cfg(test)]
mod tests;
