//! A virtio driver simulator for any virtio-pci (virtio 1.x, modern) device: the driver side of
//! feature negotiation, queue set-up, descriptor chains and notifications, driven by fuzz input,
//! with the requirements the specification places on every device checked after every step.
//!
//! The device is a [`PciDevice`] over guest memory ([`GuestMemoryMmap`]) that the simulator
//! owns. It finds the common-configuration, notification, ISR and device-configuration
//! structures by walking the capability list, as a driver does, and the MSI-X table through
//! the MSI-X capability: nothing of a particular device's layout is assumed.
//!
//! An input is the fixture's [`VirtioFixture::Config`] (a few bytes the fixture reads: disk
//! size, memory layout) and then [`VirtioOp`]s: status and feature negotiation, honest and out
//! of order; queue set-up at the simulator's places or anywhere (overlapping, misaligned, past
//! memory); chains built from structure ([`Chain`]: direct, indirect, chained, nested, and
//! flawed on purpose: loops, out-of-range `next` and head indices, overlapping buffers, buffers
//! over the rings, zero and huge lengths) from request bytes the fixture turns into buffers
//! ([`VirtioFixture::request`]); notifications; resets with chains in flight; MSI-X and INTx#
//! set-up; register and configuration-space accesses; guest memory scribbled by the driver;
//! failing interrupt lines; and operations of the fixture's own.
//!
//! After every step that called the device, [`VirtioFuzzer`] checks:
//!
//! - nothing panicked;
//! - every used-ring entry names a head the driver published and the device has not used yet,
//!   at most once, and the used index never moves past the chains outstanding;
//! - a used entry's length is at most the device-writable length of its chain;
//! - the device wrote guest memory only inside the device-writable buffers of chains
//!   outstanding (published, not yet used) and the used rings of live queues: the simulator
//!   keeps a copy of guest memory as the driver left it and compares, which sees every byte a
//!   device changed whatever path it wrote through. It compares a range whenever what the
//!   device may write there is about to change (a chain published or used, a queue going live,
//!   a reset) and before the driver writes it, so a change is judged by the rights it was made
//!   under; what the device may write after each step that called it; and all of memory at the
//!   end of the input, where a write far from every buffer is found at the latest;
//! - the status register only holds bits the driver wrote since the last reset (and
//!   `DEVICE_NEEDS_RESET`): the device never sets `DRIVER_OK` itself, and never accepts
//!   `FEATURES_OK` for features it did not offer;
//! - no used entry before `DRIVER_OK`, and after a reset the device reads as reset (status 0,
//!   every queue disabled) and touches none of the chains that were in flight;
//! - reads of the common and device configuration and of configuration space fill every byte
//!   (two reads, into 0x00 and into 0xFF bytes, agree);
//! - one notification uses at most [`VirtioFixture::max_chains_per_notify`] chains and makes at
//!   most [`VirtioFixture::max_line_calls_per_notify`] interrupt calls;
//! - the fixture's own checks: its state after every step ([`VirtioFixture::check`]), around
//!   every notification ([`VirtioFixture::after_notify`]) and on every completed chain
//!   ([`VirtioFixture::completed`]), where a fixture can compare with a model of its device.
//!
//! A driver that hands the device its own structures (a device-writable buffer over the
//! descriptor table or a ring, rings that overlap, a scribble over a ring or a table in
//! flight) gives up the checks that rest on those structures: from the first such write on,
//! the queue checks and the memory check are off until the next reset ([`DriverView::tainted`]);
//! nothing-panics and the fixture's checks still hold.

mod driver;
pub mod ops;
mod recorded;
#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arbitrary::Unstructured;
use vm_memory::GuestMemoryMmap;
use vmkit_exits::{MsiTrigger, PciDevice};

use crate::lines::{Line, Lines};
pub use ops::{Chain, Flaw, Form, MAX_PAYLOAD, Place, QueueSetup, Structure, VirtioOp};

/// Bytes of guest memory a fixture gets by default ([`VirtioFixture::memory`]): one region at 0.
pub const DEFAULT_MEMORY: usize = 0x1_0000;

/// One buffer of a request, as a fixture describes it ([`VirtioFixture::request`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// A device-readable buffer holding these bytes.
    Readable(Vec<u8>),
    /// A device-writable buffer of this many bytes.
    Writable(u32),
}

/// A chain the device used, as [`VirtioFixture::completed`] sees it.
#[derive(Clone, Copy, Debug)]
pub struct Completion<'a> {
    /// The queue.
    pub queue: u16,
    /// The head the device returned.
    pub head: u16,
    /// The length the device reported.
    pub len: u32,
    /// Whether the chain was well-formed: no flaw, no nesting.
    pub well_formed: bool,
    /// The request bytes the chain was built from.
    pub payload: &'a [u8],
    /// The chain's device-writable buffers (address, length), in order: read what the device
    /// wrote from the guest memory the fixture was built on.
    pub writable: &'a [(u64, u32)],
}

/// What a notification did, as [`VirtioFixture::after_notify`] sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Notified {
    /// The queue index written.
    pub queue: u16,
    /// Used entries the device added (on every queue) during the notification.
    pub used: u64,
    /// Chains outstanding on the queue before it.
    pub outstanding_before: usize,
    /// Of those, the well-formed ones.
    pub well_formed_before: usize,
    /// Of those, the well-formed ones published since the queue's last notification.
    pub fresh: usize,
    /// Whether the device was live and healthy (status with `DRIVER_OK` and without
    /// `DEVICE_NEEDS_RESET` or `FAILED`) and the driver's structures intact, before and after.
    pub healthy: bool,
}

/// The driver's side of things, as the fixture's checks see it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriverView {
    /// The status register as last read.
    pub status: u8,
    /// Every status bit the driver wrote since the last reset (all ones where a write could
    /// not be followed, such as one through the PCI configuration access window).
    pub status_written: u8,
    /// Whether the driver saw `DRIVER_OK` and set its queues live.
    pub live: bool,
    /// Whether the driver handed the device its own structures since the last reset (see the
    /// [module documentation](self)): the queue and memory checks are off.
    pub tainted: bool,
    /// Whether the interrupt lines or MSI ever failed in this run.
    pub interrupts_failed: bool,
    /// Chains outstanding, on every queue.
    pub outstanding: usize,
    /// Chains published since the last reset.
    pub published: u64,
    /// Resets the driver saw (a fixture keeps per-reset baselines of cumulative counters).
    pub resets: u64,
}

/// An MSI sender for the device: counts the messages (each counts towards the bound on a
/// notification's interrupt calls) and fails while the input says interrupts fail.
#[derive(Debug, Default)]
pub struct Msi {
    calls: AtomicU64,
    sent: AtomicU64,
    failing: AtomicBool,
}

impl Msi {
    /// Messages delivered.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Sends asked for, failed ones included.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

impl MsiTrigger for Msi {
    fn send(&self, _address: u64, _data: u32) -> io::Result<()> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.failing.load(Ordering::Relaxed) {
            return Err(io::Error::other("MSI failing"));
        }
        self.sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// What a fixture builds its device on: the guest memory the simulator owns, interrupt lines
/// and an MSI sender whose every call the simulator counts.
pub struct Wiring {
    memory: GuestMemoryMmap,
    lines: Lines,
    msi: Arc<Msi>,
}

impl fmt::Debug for Wiring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wiring")
            .field("lines", &self.lines.len())
            .field("msi", &self.msi)
            .finish_non_exhaustive()
    }
}

impl Wiring {
    /// The guest memory (the device's queues live in it; clone it for the device).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// An interrupt line (INTx#) for the device.
    pub fn interrupt(&mut self) -> Line {
        self.lines.add()
    }

    /// The MSI sender for the device.
    pub fn msi(&self) -> Arc<Msi> {
        self.msi.clone()
    }

    fn calls(&self) -> u64 {
        self.lines.calls() + self.msi.calls()
    }

    fn set_failing(&self, failing: bool) {
        self.lines.set_failing(failing);
        self.msi.failing.store(failing, Ordering::Relaxed);
    }
}

/// A virtio-pci device under test, as a fuzz target describes it.
///
/// `build` must make the same device every time for the same configuration, deterministic in
/// what it does (the simulator walks the capabilities of the first device built for a
/// configuration only); the device does its work inside the calls the simulator makes (no threads of
/// its own writing guest memory meanwhile).
pub trait VirtioFixture {
    /// What the fixture keeps of one device, for its hooks.
    type Devices;
    /// The per-input configuration the input starts with (`()` for none).
    type Config: Clone + fmt::Debug + PartialEq;

    /// Reads the configuration from the start of an input.
    fn config(&self, u: &mut Unstructured<'_>) -> arbitrary::Result<Self::Config>;

    /// Appends the bytes [`config`](Self::config) reads back as `config`.
    fn encode_config(&self, config: &Self::Config, out: &mut Vec<u8>);

    /// The guest memory regions (address, length), in ascending order: one of
    /// [`DEFAULT_MEMORY`] bytes at 0 by default. The simulator puts the rings and the buffers
    /// in the first; it should hold at least 64 KiB.
    fn memory(&self, config: &Self::Config) -> Vec<(u64, usize)> {
        let _ = config;
        vec![(0, DEFAULT_MEMORY)]
    }

    /// Builds the device on `wiring`'s memory and lines: the device as a [`PciDevice`], and
    /// what the fixture keeps of it.
    fn build(
        &self,
        config: &Self::Config,
        wiring: &mut Wiring,
    ) -> (Arc<dyn PciDevice>, Self::Devices);

    /// The driver steps that bring the device up, run before every input and again at each
    /// [`VirtioOp::Restart`] (a fixture whose target is the device's request handling rather
    /// than its bring-up starts it live). None by default.
    fn prologue(&self, config: &Self::Config, ops: &mut Vec<VirtioOp>) {
        let _ = (config, ops);
    }

    /// The buffers of a request for queue `queue` made from `payload` (the device-specific
    /// part: a block request's header, data and status): appends them to `segments`. By
    /// default, the payload as one readable buffer and one writable buffer of its length.
    fn request(
        &self,
        devices: &Self::Devices,
        queue: u16,
        payload: &[u8],
        segments: &mut Vec<Segment>,
    ) {
        let _ = (devices, queue);
        segments.push(Segment::Readable(payload.to_vec()));
        segments.push(Segment::Writable(payload.len() as u32));
    }

    /// The payload whose [`request`](Self::request) makes buffers like `segments` (a recorded
    /// guest's chain, as the device read it), as near as the fixture's payloads come: how
    /// [`VirtioFuzzer::ops_from_recording`] makes a recorded chain a [`VirtioOp::Chain`].
    /// `None` leaves the chain out. By default the first buffer's bytes when it is readable
    /// (the default [`request`](Self::request) makes them that buffer).
    fn payload(&self, queue: u16, segments: &[Segment]) -> Option<Vec<u8>> {
        let _ = queue;
        match segments.first() {
            Some(Segment::Readable(bytes)) => Some(bytes[..bytes.len().min(MAX_PAYLOAD)].to_vec()),
            _ => None,
        }
    }

    /// Performs the fixture's operation `tag` with `data` ([`VirtioOp::User`]). Nothing by
    /// default.
    fn user_op(&self, devices: &Self::Devices, tag: u8, data: &[u8]) {
        let _ = (devices, tag, data);
    }

    /// Called before each notification (to take counts the notification is checked against).
    fn before_notify(&self, devices: &Self::Devices) {
        let _ = devices;
    }

    /// Checks a notification once the simulator checked it. Panics on a violation. Nothing by
    /// default.
    fn after_notify(&self, devices: &Self::Devices, notified: &Notified) {
        let _ = (devices, notified);
    }

    /// Checks one chain the device used (a model compares the device's answer here). Panics on
    /// a violation. Nothing by default.
    fn completed(&self, devices: &Self::Devices, completion: &Completion<'_>) {
        let _ = (devices, completion);
    }

    /// Checks the fixture's own invariants after every step that called the device. Panics on a
    /// violation. Nothing by default.
    fn check(&self, devices: &Self::Devices, driver: &DriverView) {
        let _ = (devices, driver);
    }

    /// The most chains one notification may use, on all queues together (each queue's size
    /// bounds it too). Unbounded by default.
    fn max_chains_per_notify(&self) -> u64 {
        u64::MAX
    }

    /// The most interrupt-line and MSI calls one notification may make. 4 by default.
    fn max_line_calls_per_notify(&self) -> u64 {
        4
    }
}

/// Runs driver simulations against a [`VirtioFixture`]'s device, checking every invariant of
/// the [module documentation](self) after every step.
pub struct VirtioFuzzer<F: VirtioFixture> {
    fixture: F,
    /// Guest memory kept for the next input.
    guest: RefCell<Option<driver::Guest>>,
    /// The last input's configuration and capability walk.
    walk: RefCell<Option<(F::Config, driver::Walk)>>,
}

impl<F: VirtioFixture> fmt::Debug for VirtioFuzzer<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtioFuzzer").finish_non_exhaustive()
    }
}

impl<F: VirtioFixture> VirtioFuzzer<F> {
    /// A simulator for `fixture`'s device.
    pub fn new(fixture: F) -> Self {
        VirtioFuzzer {
            fixture,
            guest: RefCell::new(None),
            walk: RefCell::new(None),
        }
    }

    /// The fixture.
    pub fn fixture(&self) -> &F {
        &self.fixture
    }

    /// The configuration and operations `data` decodes to; `None` when it is too short for a
    /// configuration.
    pub fn decode(&self, data: &[u8]) -> Option<(F::Config, Vec<VirtioOp>)> {
        let mut u = Unstructured::new(data);
        let config = self.fixture.config(&mut u).ok()?;
        Some((config, ops::decode_ops(&mut u)))
    }

    /// The bytes [`decode`](Self::decode) reads back as `config` and `ops`: a seed.
    pub fn encode(&self, config: &F::Config, ops: &[VirtioOp]) -> Vec<u8> {
        let mut out = Vec::new();
        self.fixture.encode_config(config, &mut out);
        out.extend(ops::encode(ops));
        out
    }

    /// Runs the input `data`. Panics on a violation.
    pub fn run(&self, data: &[u8]) {
        if let Some((config, ops)) = self.decode(data) {
            self.run_ops(&config, &ops);
        }
    }

    /// Runs decoded operations on a device built for `config`.
    pub fn run_ops(&self, config: &F::Config, ops: &[VirtioOp]) {
        self.run_ops_then(config, ops, |_, _| ());
    }

    /// Runs decoded operations, then hands `inspect` the fixture's devices and the driver's
    /// view as the run left them: for a test that a seed reaches what it was written to reach.
    pub fn run_ops_then<R>(
        &self,
        config: &F::Config,
        ops: &[VirtioOp],
        inspect: impl FnOnce(&F::Devices, &DriverView) -> R,
    ) -> R {
        self.simulate(
            config,
            |sim| {
                sim.restart();
                for (step, op) in ops.iter().enumerate() {
                    sim.step(step, op);
                }
                sim.finish(ops.len());
            },
            |devices, view, _| inspect(devices, view),
        )
    }

    /// Builds the device for `config` in the guest memory kept from the last input, hands `run`
    /// the simulation on it, then `inspect` the fixture's devices, the driver's view and the
    /// capability walk.
    fn simulate<R>(
        &self,
        config: &F::Config,
        run: impl FnOnce(&mut driver::Sim<'_>),
        inspect: impl FnOnce(&F::Devices, &DriverView, &driver::Walk) -> R,
    ) -> R {
        let kept = self.guest.borrow_mut().take();
        let guest = driver::Guest::reuse(kept, self.fixture.memory(config));
        let walk = match self.walk.borrow_mut().take() {
            Some((last, walk)) if last == *config => Some(walk),
            _ => None,
        };
        let mut wiring = driver::wiring(&guest);
        let (device, devices) = self.fixture.build(config, &mut wiring);
        let bound = driver::Bound {
            fixture: &self.fixture,
            devices,
        };
        let mut prologue = Vec::new();
        self.fixture.prologue(config, &mut prologue);
        let mut sim = driver::Sim::new(&bound, guest, wiring, device, walk, prologue);
        run(&mut sim);
        // The device goes first, then what the fixture kept of it.
        let (view, guest, walk) = sim.into_parts();
        let answer = inspect(&bound.devices, &view, &walk);
        drop(bound);
        *self.guest.borrow_mut() = Some(guest);
        *self.walk.borrow_mut() = Some((config.clone(), walk));
        answer
    }
}
