//! The device harness: runs a decoded input against a fixture's devices (one instance beside a
//! reference model, or two identical instances in lockstep) and checks, after every step, what
//! every device owes the VMM.

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;

use vmkit_exits::{
    BusAddress, BusRange, DeviceAction, IoBus, MmioAddress, MmioBus, MmioDevice, PciDevice,
    PioAddress, PioDevice, is_valid_access_size,
};

use crate::lines::{Line, Lines};
use crate::ops::{AccessRef, Offset, Op, Step, steps};
use crate::pci::{self, Function};

/// The address space a region lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    /// Port I/O (16-bit ports).
    Pio,
    /// Memory-mapped I/O (64-bit guest-physical addresses).
    Mmio,
    /// The configuration space of a PCI function ([`Setup::pci`]): offsets 0 to 0xFF.
    PciConfig,
    /// The BAR with this register index (0 to 5) of a PCI function ([`Setup::pci`]): wherever
    /// the function presents it now, if it presents one.
    PciBar(u8),
}

impl Space {
    fn last(self) -> u64 {
        match self {
            Space::Pio => u64::from(u16::MAX),
            Space::Mmio | Space::PciBar(_) => u64::MAX,
            Space::PciConfig => pci::CONFIG_SIZE - 1,
        }
    }

    fn is_pci(self) -> bool {
        matches!(self, Space::PciConfig | Space::PciBar(_))
    }
}

/// A range the fixture registered: the target of the accesses that name it.
///
/// The regions of a PCI function ([`Setup::pci`]) are its configuration space (base 0, 256
/// bytes) and one per BAR register, whose base and length are where the BAR was and its size
/// when the function was registered (0 and 0 for a register without a BAR): the harness aims
/// accesses at where the BAR is when they happen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    /// The fixture's name for it (in failure messages).
    pub name: &'static str,
    /// Its address space.
    pub space: Space,
    /// Its first address.
    pub base: u64,
    /// Its length in bytes (at least 1, but for a PCI BAR register without a BAR).
    pub len: u64,
}

/// What a fixture builds its devices on: the buses a VMM would route exits through, and
/// interrupt lines whose every call the harness counts.
#[derive(Default)]
pub struct Setup {
    pio: Arc<IoBus>,
    mmio: Arc<MmioBus>,
    regions: Vec<Region>,
    handlers: Vec<Handler>,
    functions: Vec<Function>,
    lines: Lines,
}

impl fmt::Debug for Setup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Setup")
            .field("regions", &self.regions)
            .field("functions", &self.functions.len())
            .field("lines", &self.lines.len())
            .finish_non_exhaustive()
    }
}

/// The device behind a region, for accesses handed to it directly.
enum Handler {
    Pio(Arc<dyn PioDevice>),
    Mmio(Arc<dyn MmioDevice>),
    /// The configuration space of function `n` (an index into `Setup::functions`).
    PciConfig(usize),
    /// BAR `index` of function `n`.
    PciBar(usize, u8),
    /// A range a device moves on the bus of the region's space: where it is now.
    Moving(Box<dyn Fn() -> Option<u64>>),
}

impl Setup {
    /// Puts `device` on the port bus at `base..base + len`, as the access target `name`.
    ///
    /// # Panics
    /// If the range is empty, runs past port 0xFFFF or overlaps one registered before: the
    /// fixture is wrong, not the device.
    pub fn pio(&mut self, name: &'static str, base: u16, len: u16, device: Arc<dyn PioDevice>) {
        if let Err(e) = self.pio.register(
            BusRange::new(PioAddress(base), u64::from(len)),
            device.clone(),
        ) {
            panic!("fixture: cannot register {name}: {e}");
        }
        let region = Region {
            name,
            space: Space::Pio,
            base: u64::from(base),
            len: u64::from(len),
        };
        self.add(region, Handler::Pio(device));
    }

    /// Puts `device` on the MMIO bus at `base..base + len`, as the access target `name`.
    ///
    /// # Panics
    /// If the range is empty, wraps or overlaps one registered before: the fixture is wrong,
    /// not the device.
    pub fn mmio(&mut self, name: &'static str, base: u64, len: u64, device: Arc<dyn MmioDevice>) {
        if let Err(e) = self
            .mmio
            .register(BusRange::new(MmioAddress(base), len), device.clone())
        {
            panic!("fixture: cannot register {name}: {e}");
        }
        let region = Region {
            name,
            space: Space::Mmio,
            base,
            len,
        };
        self.add(region, Handler::Mmio(device));
    }

    /// Names a range that a device registered on the buses itself (a PCI root registers its
    /// configuration ports and ECAM window when it is made) as the access target `name`:
    /// accesses reach it through the bus, and direct ones go to the device the bus routes
    /// `base` to.
    ///
    /// # Panics
    /// If no range of `space`'s bus starts at `base`, or `space` is not [`Space::Pio`] or
    /// [`Space::Mmio`]: the fixture is wrong, not the device.
    pub fn registered(&mut self, name: &'static str, space: Space, base: u64, len: u64) {
        let handler = match space {
            Space::Pio => PioAddress::from_u64(base)
                .and_then(|port| self.pio.lookup(port, 1))
                .filter(|route| route.base.to_u64() == base)
                .map(|route| Handler::Pio(route.handler)),
            Space::Mmio => self
                .mmio
                .lookup(MmioAddress(base), 1)
                .filter(|route| route.base.0 == base)
                .map(|route| Handler::Mmio(route.handler)),
            Space::PciConfig | Space::PciBar(_) => None,
        };
        let Some(handler) = handler else {
            panic!("fixture: no range of the {space:?} bus starts at {base:#x} for {name}");
        };
        let region = Region {
            name,
            space,
            base,
            len,
        };
        self.add(region, handler);
    }

    /// Names a range that a device places and moves on the buses itself (a BAR that a PCI root
    /// places where the guest programs it) as the access target `name`, `len` bytes long:
    /// `locate` says where it is now (`None` while it is nowhere), and accesses aim at that
    /// place when they happen; direct ones go to the device the bus routes it to there.
    ///
    /// # Panics
    /// If `space` is not [`Space::Pio`] or [`Space::Mmio`]: the fixture is wrong.
    pub fn moving(
        &mut self,
        name: &'static str,
        space: Space,
        len: u64,
        locate: impl Fn() -> Option<u64> + 'static,
    ) {
        assert!(
            matches!(space, Space::Pio | Space::Mmio),
            "fixture: {name} moves in {space:?}"
        );
        let region = Region {
            name,
            space,
            base: locate().unwrap_or(0),
            len,
        };
        self.add(region, Handler::Moving(Box::new(locate)));
    }

    /// Registers the PCI function `device` as seven access targets named `name`: its
    /// configuration space ([`Space::PciConfig`]), then its six BAR registers
    /// ([`Space::PciBar`], in index order), as a root would reach them. Routed accesses
    /// ([`Op::Access`]) are what a root passes on: configuration accesses of 1, 2 or 4 bytes
    /// inside one dword, BAR accesses of 1, 2, 4 or 8 bytes inside a BAR that decodes, where
    /// the function presents it now (the harness asks [`PciDevice::bars`] after every
    /// configuration write); direct ones ([`Op::Direct`]) hand any size at any offset to
    /// `config_read`/`config_write` (offsets wrap at 256) or to `bar_read`/`bar_write` of the
    /// register index, BAR or not. After every step the harness checks what the PCI
    /// specification asks of every function (see [`pci`]).
    ///
    /// The function is driven as it is, without a root: a function that a root also holds (a
    /// PCI root that places its BARs on the buses) is fuzzed through the root's ranges instead
    /// ([`registered`](Self::registered), [`moving`](Self::moving)), since writes handed to it
    /// here would pass the root by.
    ///
    /// # Panics
    /// If the function breaks a rule of [`pci`] already when it is registered.
    pub fn pci(&mut self, name: &'static str, device: Arc<dyn PciDevice>) {
        let function = Function::new(name, device);
        let bars = function.bars.get();
        let n = self.functions.len();
        self.functions.push(function);
        let config = Region {
            name,
            space: Space::PciConfig,
            base: 0,
            len: pci::CONFIG_SIZE,
        };
        self.add(config, Handler::PciConfig(n));
        for (index, bar) in (0u8..).zip(bars) {
            let region = Region {
                name,
                space: Space::PciBar(index),
                base: bar.map_or(0, |bar| bar.address),
                len: bar.map_or(0, |bar| bar.size),
            };
            self.add(region, Handler::PciBar(n, index));
        }
    }

    /// An interrupt line for a device: it counts every call (each counts towards the
    /// per-access bound) and fails while the input says lines fail.
    pub fn interrupt(&mut self) -> Line {
        self.lines.add()
    }

    /// The port bus, for a fixture whose devices register or move their own ranges (a PCI
    /// root; see [`registered`](Self::registered)).
    pub fn io_bus(&self) -> &Arc<IoBus> {
        &self.pio
    }

    /// The MMIO bus, for a fixture whose devices register or move their own ranges (a PCI
    /// root; see [`registered`](Self::registered)).
    pub fn mmio_bus(&self) -> &Arc<MmioBus> {
        &self.mmio
    }

    /// The regions registered so far, in order.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    fn add(&mut self, region: Region, handler: Handler) {
        // Room for the regions of most fixtures at once: an instance is built for every input
        // and at every reset, and each regrowth is an allocation.
        if self.regions.is_empty() {
            self.regions.reserve(8);
            self.handlers.reserve(8);
        }
        self.regions.push(region);
        self.handlers.push(handler);
    }

    fn line_calls(&self) -> u64 {
        self.lines.calls()
    }

    fn set_failing(&self, failing: bool) {
        self.lines.set_failing(failing);
    }

    /// Where region `index` starts now: a moving region where it is (`None` while it is
    /// nowhere), any other where it was registered.
    fn base_now(&self, index: usize) -> Option<u64> {
        match &self.handlers[index] {
            Handler::Moving(locate) => locate(),
            _ => Some(self.regions[index].base),
        }
    }

    /// A read handed to region `index`'s device at `offset`, without a bus.
    fn read_direct(&self, index: usize, offset: u64, data: &mut [u8]) {
        let base = self.regions[index].base;
        match &self.handlers[index] {
            // Region bases and relative offsets of the port space fit 16 bits.
            Handler::Pio(device) => device.pio_read(PioAddress(base as u16), offset as u16, data),
            Handler::Mmio(device) => device.mmio_read(MmioAddress(base), offset, data),
            // Configuration offsets were truncated to the space's width, a byte.
            Handler::PciConfig(n) => self.functions[*n].device.config_read(offset as u8, data),
            Handler::PciBar(n, bar) => self.functions[*n].device.bar_read(*bar, offset, data),
            Handler::Moving(locate) => {
                // The harness hands a moving region direct accesses only while it is placed.
                let base = locate().unwrap_or(0);
                match self.regions[index].space {
                    Space::Pio => {
                        let port = PioAddress(base as u16);
                        if let Some(route) = self.pio.lookup(port, 1) {
                            route.handler.pio_read(port, offset as u16, data);
                        }
                    }
                    _ => {
                        let addr = MmioAddress(base);
                        if let Some(route) = self.mmio.lookup(addr, 1) {
                            route.handler.mmio_read(addr, offset, data);
                        }
                    }
                }
            }
        }
    }

    /// A write handed to region `index`'s device at `offset`, without a bus.
    fn write_direct(&self, index: usize, offset: u64, data: &[u8]) -> DeviceAction {
        let base = self.regions[index].base;
        match &self.handlers[index] {
            Handler::Pio(device) => device.pio_write(PioAddress(base as u16), offset as u16, data),
            Handler::Mmio(device) => device.mmio_write(MmioAddress(base), offset, data),
            Handler::PciConfig(n) => {
                self.functions[*n].config_write(offset as u8, data);
                DeviceAction::Resume
            }
            Handler::PciBar(n, bar) => self.functions[*n].device.bar_write(*bar, offset, data),
            Handler::Moving(locate) => {
                let base = locate().unwrap_or(0);
                let action = match self.regions[index].space {
                    Space::Pio => {
                        let port = PioAddress(base as u16);
                        let route = self.pio.lookup(port, 1);
                        route.map(|route| route.handler.pio_write(port, offset as u16, data))
                    }
                    _ => {
                        let addr = MmioAddress(base);
                        let route = self.mmio.lookup(addr, 1);
                        route.map(|route| route.handler.mmio_write(addr, offset, data))
                    }
                };
                action.unwrap_or(DeviceAction::Resume)
            }
        }
    }

    /// The length of region `index` now: a PCI BAR's size where the function presents it now
    /// (0 without one).
    fn len_now(&self, index: usize) -> u64 {
        match self.handlers[index] {
            Handler::PciBar(n, bar) => self.functions[n].bar(bar).map_or(0, |bar| bar.size),
            _ => self.regions[index].len,
        }
    }

    /// Where a routed access of `size` bytes at `offset` of PCI region `index` goes: the
    /// configuration offset, or the guest address inside the BAR where it is now, and the
    /// offset into the region; `None` where a root would not pass it on.
    fn route_pci(&self, index: usize, offset: Offset, size: usize) -> Option<(u64, u64)> {
        match self.handlers[index] {
            Handler::PciConfig(_) => {
                let at = offset.address(0, pci::CONFIG_SIZE, pci::CONFIG_SIZE - 1)?;
                pci::config_routable(at, size).then_some((at, at))
            }
            Handler::PciBar(n, bar) => {
                let present = self.functions[n].bar(bar)?;
                let addr = offset.address(present.address, present.size, u64::MAX)?;
                Some((addr, pci::bar_offset(Some(present), addr, size)?))
            }
            _ => None,
        }
    }

    /// A routed read at `addr` (for a PCI region, as [`route_pci`](Self::route_pci) found it)
    /// of region `index`'s space: whether a device claimed it.
    fn read(&self, index: usize, addr: u64, data: &mut [u8]) -> bool {
        match self.handlers[index] {
            Handler::PciConfig(n) => {
                let routed = pci::config_routable(addr, data.len());
                if routed {
                    self.functions[n].device.config_read(addr as u8, data);
                }
                routed
            }
            Handler::PciBar(n, bar) => {
                let function = &self.functions[n];
                let offset = pci::bar_offset(function.bar(bar), addr, data.len());
                offset.inspect(|&offset| function.device.bar_read(bar, offset, data));
                offset.is_some()
            }
            _ => match self.regions[index].space {
                Space::Pio => {
                    PioAddress::from_u64(addr).is_some_and(|port| self.pio.read(port, data))
                }
                _ => self.mmio.read(MmioAddress(addr), data),
            },
        }
    }

    /// A routed write, as [`read`](Self::read): the device's answer, if one claimed it.
    fn write(&self, index: usize, addr: u64, data: &[u8]) -> Option<DeviceAction> {
        match self.handlers[index] {
            Handler::PciConfig(n) => {
                let routed = pci::config_routable(addr, data.len());
                routed.then(|| {
                    self.functions[n].config_write(addr as u8, data);
                    DeviceAction::Resume
                })
            }
            Handler::PciBar(n, bar) => {
                let function = &self.functions[n];
                let offset = pci::bar_offset(function.bar(bar), addr, data.len())?;
                Some(function.device.bar_write(bar, offset, data))
            }
            _ => match self.regions[index].space {
                Space::Pio => self.pio.write(PioAddress::from_u64(addr)?, data),
                _ => self.mmio.write(MmioAddress(addr), data),
            },
        }
    }

    /// Checks every PCI function after step `step`.
    fn check_functions(&self, step: usize) {
        for function in &self.functions {
            function.check(Some(step));
        }
    }
}

/// The devices under test, as a fuzz target describes them.
///
/// `build` must make the same devices every time, deterministic in what they answer: the
/// harness runs two instances side by side when there is no model and holds their answers
/// equal (that is how it sees a read that leaves bytes unfilled). Give devices a manual clock, not the host's.
pub trait Fixture {
    /// What the fixture keeps of one instance, for its own operations and checks.
    type Devices;
    /// The reference model the devices' answers are compared with ([`NoModel`] for none).
    type Model: Model;

    /// Builds one instance: creates the devices and registers them on `setup`.
    fn build(&self, setup: &mut Setup) -> Self::Devices;

    /// A fresh model, for a fresh machine (at the start, and at every reset).
    fn model(&self) -> Self::Model;

    /// Performs the fixture's operation `tag` with `data` on one instance (the VMM feeding
    /// serial input, a clock step, a key press) and returns its answer (how many bytes a FIFO
    /// took, an error code; 0 where there is none): the harness holds the answers of two
    /// instances equal, and equal to [`Model::user_op`]'s when a model compares. Does nothing
    /// and answers 0 by default.
    fn user_op(&self, devices: &Self::Devices, tag: u8, data: &[u8]) -> u64 {
        let _ = (devices, tag, data);
        0
    }

    /// Checks the fixture's own invariants on one instance after every step that reached the
    /// devices (all but accesses no region claimed), against the model if it keeps state to
    /// compare with (counters, say). Panics on a violation (the fuzzer reports it). Checks
    /// nothing by default.
    fn check(&self, devices: &Self::Devices, model: &Self::Model) {
        let _ = (devices, model);
    }

    /// Checks one answer of a device: called for every access a region claimed, once the
    /// instances agreed on it (and after the model saw it), with what the access was and what
    /// the device answered. For invariants on answers that need no full model ("this port
    /// never stops the VM", "a write stops it with the value written"). Panics on a violation.
    /// Checks nothing by default.
    fn check_access(&self, model: &Self::Model, access: &Claimed<'_>) {
        let _ = (model, access);
    }

    /// The most interrupt-line calls one guest access may cause: the bound on the work of one
    /// exit that no guest value can raise. 4 by default.
    fn max_line_calls_per_access(&self) -> u64 {
        4
    }
}

/// A reference model of the devices: what each access should answer. The harness compares the
/// devices' answers against it on every access a region claims.
///
/// A model that only keeps count (of accesses, say, for the fixture's [`check`](Fixture::check)
/// to compare with the devices' counters) sets [`COMPARES`](Self::COMPARES) to `false`: it
/// still sees every claimed access, and the harness runs two instances in lockstep as for
/// [`NoModel`].
pub trait Model {
    /// Whether the harness compares answers with this model: `false` for [`NoModel`] and for
    /// models that only keep count.
    const COMPARES: bool = true;
    /// The answer to a read of `data.len()` bytes at `offset` of region `region` (an index into
    /// [`Setup::regions`]).
    fn read(&mut self, region: usize, offset: u64, data: &mut [u8]);
    /// The answer to a write of `data` at `offset` of region `region`.
    fn write(&mut self, region: usize, offset: u64, data: &[u8]) -> DeviceAction;
    /// The fixture's operation `tag` with `data`, and its answer (see [`Fixture::user_op`]).
    /// Nothing, answering 0, by default.
    fn user_op(&mut self, tag: u8, data: &[u8]) -> u64 {
        let _ = (tag, data);
        0
    }
    /// The interrupt lines start (`true`) or stop failing ([`Op::FailInterrupts`]), for a model
    /// whose answers or counters depend on whether a line call went through. Nothing by
    /// default.
    fn fail_interrupts(&mut self, failing: bool) {
        let _ = failing;
    }
}

/// An access a region claimed and the device's answer: what [`Fixture::check_access`] sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claimed<'a> {
    /// The region (an index into [`Setup::regions`]).
    pub region: usize,
    /// The offset into the region; for a direct access, the offset handed to the device.
    pub offset: u64,
    /// Whether the access was handed to the device directly ([`Op::Direct`]) rather than
    /// routed by a bus.
    pub direct: bool,
    /// What the access was, and the answer.
    pub answer: Answer<'a>,
}

/// A device's answer to one access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer<'a> {
    /// A read, and the bytes it returned.
    Read(&'a [u8]),
    /// A write of `data`, and what the device asked of the VMM.
    Write {
        /// The bytes written.
        data: &'a [u8],
        /// The device's answer.
        action: DeviceAction,
    },
}

/// No model: only the invariants every device owes (and the fixture's checks) hold.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoModel;

impl Model for NoModel {
    const COMPARES: bool = false;
    fn read(&mut self, _region: usize, _offset: u64, _data: &mut [u8]) {}
    fn write(&mut self, _region: usize, _offset: u64, _data: &[u8]) -> DeviceAction {
        DeviceAction::Resume
    }
}

/// One instance's machine: its regions and buses.
struct Instance {
    setup: Setup,
    /// The interrupt-line calls counted after the last access or operation of the fixture's
    /// own (what the next access's calls are counted from).
    calls: Cell<u64>,
}

/// A run's fixture, model and devices, as the harness's code calls them. The harness sees every
/// fixture through this one type, so that its code is compiled once, in this crate, rather
/// than instantiated in each fuzz target: built without coverage instrumentation (see the crate
/// documentation), it then adds no edges of its own to a target's.
trait Bench {
    /// Whether the model states every answer ([`Model::COMPARES`]).
    fn compares(&self) -> bool;
    /// Builds the instances anew (one when the model compares, two otherwise); the devices
    /// built before are dropped after the new ones are built.
    fn build(&mut self) -> Vec<Instance>;
    /// A fresh model ([`Fixture::model`]).
    fn reset_model(&mut self);
    /// [`Fixture::user_op`] on instance `instance`.
    fn user_op(&self, instance: usize, tag: u8, data: &[u8]) -> u64;
    /// [`Fixture::check`] on instance `instance`.
    fn check(&self, instance: usize);
    /// [`Fixture::check_access`].
    fn check_access(&self, access: &Claimed<'_>);
    /// [`Fixture::max_line_calls_per_access`].
    fn max_line_calls_per_access(&self) -> u64;
    /// [`Model::read`].
    fn model_read(&mut self, region: usize, offset: u64, data: &mut [u8]);
    /// [`Model::write`].
    fn model_write(&mut self, region: usize, offset: u64, data: &[u8]) -> DeviceAction;
    /// [`Model::user_op`].
    fn model_user_op(&mut self, tag: u8, data: &[u8]) -> u64;
    /// [`Model::fail_interrupts`].
    fn model_fail_interrupts(&mut self, failing: bool);
}

/// The [`Bench`] of a fixture: the fixture, the model and each instance's devices.
struct Run<'f, F: Fixture> {
    fixture: &'f F,
    model: F::Model,
    devices: Vec<F::Devices>,
}

impl<'f, F: Fixture> Run<'f, F> {
    fn new(fixture: &'f F) -> Self {
        Run {
            fixture,
            model: fixture.model(),
            devices: Vec::new(),
        }
    }
}

impl<F: Fixture> Bench for Run<'_, F> {
    fn compares(&self) -> bool {
        F::Model::COMPARES
    }

    fn build(&mut self) -> Vec<Instance> {
        let copies = if F::Model::COMPARES { 1 } else { 2 };
        let mut devices = Vec::with_capacity(copies);
        let instances: Vec<_> = (0..copies)
            .map(|_| {
                let mut setup = Setup::default();
                devices.push(self.fixture.build(&mut setup));
                let calls = Cell::new(setup.line_calls());
                Instance { setup, calls }
            })
            .collect();
        if let [a, b] = &instances[..] {
            assert_eq!(
                a.setup.regions, b.setup.regions,
                "fixture: two builds registered different regions"
            );
        }
        self.devices = devices;
        instances
    }

    fn reset_model(&mut self) {
        self.model = self.fixture.model();
    }

    fn user_op(&self, instance: usize, tag: u8, data: &[u8]) -> u64 {
        self.fixture.user_op(&self.devices[instance], tag, data)
    }

    fn check(&self, instance: usize) {
        self.fixture.check(&self.devices[instance], &self.model);
    }

    fn check_access(&self, access: &Claimed<'_>) {
        self.fixture.check_access(&self.model, access);
    }

    fn max_line_calls_per_access(&self) -> u64 {
        self.fixture.max_line_calls_per_access()
    }

    fn model_read(&mut self, region: usize, offset: u64, data: &mut [u8]) {
        self.model.read(region, offset, data);
    }

    fn model_write(&mut self, region: usize, offset: u64, data: &[u8]) -> DeviceAction {
        self.model.write(region, offset, data)
    }

    fn model_user_op(&mut self, tag: u8, data: &[u8]) -> u64 {
        self.model.user_op(tag, data)
    }

    fn model_fail_interrupts(&mut self, failing: bool) {
        self.model.fail_interrupts(failing);
    }
}

/// Runs inputs against a [`Fixture`]'s devices.
///
/// Each input is decoded into [`Op`]s (see [`ops`](crate::ops)) and run on the fixture's
/// devices: one instance when the fixture's [`Model`] compares answers, two in lockstep when
/// it does not. After every step (an access that no region claims calls no device and is only
/// counted as a step) it checks:
///
/// - nothing panicked (a panic is the fuzzer's finding);
/// - a read that a region claims fills every byte of the access: without a model, the same on
///   both instances (one reads into a buffer of 0x00, the other of 0xFF); with one, into a
///   buffer holding the complement of the model's answer;
/// - a routed access that a region holds whole is claimed (a device's range stays on its bus);
/// - both instances claim the same accesses, give the same write answers ([`DeviceAction`])
///   and the same answers to the fixture's own operations, and make the same number of
///   interrupt-line calls;
/// - one access costs at most [`Fixture::max_line_calls_per_access`] interrupt-line calls;
/// - with a [`Model`], every claimed access and every operation of the fixture's own answers
///   what the model says;
/// - for every PCI function ([`Setup::pci`]): both instances present the same BARs, and the
///   function keeps what the PCI specification asks of every function (identity registers,
///   well-formed BARs that the BAR registers and the sizing protocol agree with; see
///   [`pci`]);
/// - the fixture's own [`check_access`](Fixture::check_access) of every claimed access, and
///   its [`check`](Fixture::check) after every step.
///
/// [`Op::Access`] goes through vmkit-exits' buses, with the sizes its dispatcher passes (1, 2, 4
/// and 8 bytes): an access a bus does not route to a region whole is unclaimed, as in a VMM.
/// [`Op::Direct`] hands any size (0 to 8) at any offset to the region's device, as another
/// VMM's bus might: the device contract says every handler answers those too.
pub struct DeviceFuzzer<F: Fixture> {
    fixture: F,
}

impl<F: Fixture> fmt::Debug for DeviceFuzzer<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceFuzzer").finish_non_exhaustive()
    }
}

impl<F: Fixture> DeviceFuzzer<F> {
    /// A harness for `fixture`'s devices.
    pub fn new(fixture: F) -> Self {
        DeviceFuzzer { fixture }
    }

    /// Runs the input `data`, checking every invariant. Panics on a violation.
    ///
    /// The operations are decoded one at a time as they run, their bytes borrowed from `data`:
    /// running an input allocates nothing per operation.
    pub fn run(&self, data: &[u8]) {
        execute(&mut Run::new(&self.fixture), &mut steps(data));
    }

    /// Runs decoded operations (seeds written as operations), as [`run`](Self::run) runs their
    /// encoding: fields wider than the format holds are clamped.
    pub fn run_ops(&self, ops: &[Op]) {
        execute(&mut Run::new(&self.fixture), &mut ops.iter().map(Op::step));
    }

    /// Runs decoded operations like [`run_ops`](Self::run_ops), then hands `inspect` the
    /// devices and the model as the run left them (the first instance's devices, where two ran
    /// in lockstep): for a test that a seed reaches what it was written to reach.
    pub fn run_ops_then<R>(
        &self,
        ops: &[Op],
        inspect: impl FnOnce(&F::Devices, &F::Model) -> R,
    ) -> R {
        let mut run = Run::new(&self.fixture);
        // The machines stay up while `inspect` looks.
        let _instances = execute(&mut run, &mut ops.iter().map(Op::step));
        inspect(&run.devices[0], &run.model)
    }
}

// The harness's code: one copy for every fixture (see [`Bench`]).

fn execute(bench: &mut dyn Bench, ops: &mut dyn Iterator<Item = Step<'_>>) -> Vec<Instance> {
    let mut instances = bench.build();
    // Whether anything happened to the instances since they were built: a reset of a fresh
    // machine changes nothing, and inputs are full of them (a reset is one byte).
    let mut fresh = true;
    for (step, op) in ops.enumerate() {
        if matches!(op, Step::Reset) && fresh {
            continue;
        }
        // Whether the step reached the devices or their lines: an access that no region
        // claims calls no device, changes nothing and leaves nothing to check.
        let reached = match op {
            Step::Access(access, direct) => perform_access(bench, &instances, step, access, direct),
            Step::Burst { count, access } => {
                let mut reached = false;
                for _ in 0..count {
                    reached |= perform_access(bench, &instances, step, access, false);
                }
                reached
            }
            Step::Reset => {
                instances = bench.build();
                bench.reset_model();
                true
            }
            Step::FailInterrupts(failing) => {
                for instance in &instances {
                    instance.setup.set_failing(failing);
                }
                bench.model_fail_interrupts(failing);
                true
            }
            Step::User { tag, data } => {
                user_op(bench, &instances, step, tag, data);
                true
            }
        };
        if !reached {
            continue;
        }
        fresh = matches!(op, Step::Reset);
        for instance in &instances {
            instance.setup.check_functions(step);
            // Line calls of the checks' own accesses count towards no guest access.
            instance.calls.set(instance.setup.line_calls());
        }
        if let [a, b] = &instances[..] {
            assert_eq!(
                a.calls.get(),
                b.calls.get(),
                "step {step}: the instances made different interrupt-line calls"
            );
            for (fa, fb) in a.setup.functions.iter().zip(&b.setup.functions) {
                assert_eq!(
                    fa.bars.get(),
                    fb.bars.get(),
                    "step {step}: PCI function {}: the instances present different BARs",
                    fa.name
                );
            }
        }
        for i in 0..instances.len() {
            bench.check(i);
        }
    }
    instances
}

fn user_op(bench: &mut dyn Bench, instances: &[Instance], step: usize, tag: u8, data: &[u8]) {
    let mut answers = [0u64; 2];
    for (i, (answer, instance)) in answers.iter_mut().zip(instances).enumerate() {
        *answer = bench.user_op(i, tag, data);
        instance.calls.set(instance.setup.line_calls());
    }
    let expected = bench.model_user_op(tag, data);
    if instances.len() == 2 {
        assert_eq!(
            answers[0], answers[1],
            "step {step}: operation {tag} of the fixture: the instances disagree"
        );
    }
    if bench.compares() {
        assert_eq!(
            answers[0], expected,
            "step {step}: operation {tag} of the fixture: the model answers otherwise"
        );
    }
}

fn perform_access(
    bench: &mut dyn Bench,
    instances: &[Instance],
    step: usize,
    access: AccessRef<'_>,
    direct: bool,
) -> bool {
    let regions = &instances[0].setup.regions;
    if regions.is_empty() {
        return false;
    }
    let index = usize::from(access.region) % regions.len();
    let region = &regions[index];
    let size = access.size();
    // Where the access goes, and the (region, offset) the model answers for: a direct
    // access always reaches its region; a routed one only a region that holds it whole.
    let setup = &instances[0].setup;
    let (addr, target) = if direct {
        if setup.base_now(index).is_none() {
            // A moving region that is nowhere: no device to hand the access to.
            return false;
        }
        let offset = access
            .offset
            .relative(setup.len_now(index), region.space.last());
        (offset, Some((index, offset)))
    } else if region.space.is_pci() {
        let Some((addr, offset)) = setup.route_pci(index, access.offset, size) else {
            return false;
        };
        (addr, Some((index, offset)))
    } else {
        let Some(addr) = setup
            .base_now(index)
            .and_then(|base| access.offset.address(base, region.len, region.space.last()))
        else {
            return false;
        };
        if !is_valid_access_size(size) {
            return false;
        }
        let last = addr.checked_add(size as u64 - 1);
        let target = (0..regions.len()).find_map(|i| {
            let r = &regions[i];
            if r.space != region.space {
                return None;
            }
            let base = setup.base_now(i)?;
            let holds = addr >= base && last.is_some_and(|last| last - base < r.len);
            holds.then(|| (i, addr - base))
        });
        (addr, target)
    };
    let at = At {
        step,
        direct,
        read: access.read.is_some(),
        size,
        addr,
        index,
        region,
        offset: access.offset,
    };
    let claimed = if at.read {
        let answer = read(bench, instances, &at, target);
        if let (Some(data), Some((region, offset))) = (answer, target) {
            let answer = Answer::Read(&data[..size]);
            check_claimed(bench, region, offset, direct, answer);
        }
        answer.is_some()
    } else {
        write(bench, instances, &at, target, access.data)
    };
    if !claimed {
        return false;
    }
    let bound = bench.max_line_calls_per_access();
    for instance in instances {
        // The calls before this access are the count the last access or operation left.
        let total = instance.setup.line_calls();
        let calls = total - instance.calls.replace(total);
        if calls > bound {
            too_many_line_calls(&at, calls, bound);
        }
    }
    true
}

fn check_claimed(bench: &dyn Bench, region: usize, offset: u64, direct: bool, answer: Answer<'_>) {
    bench.check_access(&Claimed {
        region,
        offset,
        direct,
        answer,
    });
}

/// Performs a write on every instance and checks the answers; returns whether a device
/// claimed it.
fn write(
    bench: &mut dyn Bench,
    instances: &[Instance],
    at: &At<'_>,
    target: Option<(usize, u64)>,
    data: &[u8],
) -> bool {
    let mut answers = [None; 2];
    for (answer, i) in answers.iter_mut().zip(instances) {
        *answer = if at.direct {
            Some(i.setup.write_direct(at.index, at.addr, data))
        } else {
            i.setup.write(at.index, at.addr, data)
        };
    }
    if instances.len() == 2 && answers[0] != answers[1] {
        violation(at, "the instances disagree", &answers[0], &answers[1]);
    }
    if answers[0].is_none() && target.is_some() {
        // A region holds the access whole: its device's range is gone.
        violation(at, "no device claimed it", &false, &true);
    }
    if let (Some(action), Some((index, offset))) = (answers[0], target) {
        let expected = bench.model_write(index, offset, data);
        if bench.compares() && action != expected {
            violation(at, "the model answers otherwise", &action, &expected);
        }
        let answer = Answer::Write { data, action };
        check_claimed(bench, index, offset, at.direct, answer);
    }
    answers[0].is_some()
}

/// Performs a read on every instance and checks it; returns the answer when a device
/// claimed it.
fn read(
    bench: &mut dyn Bench,
    instances: &[Instance],
    at: &At<'_>,
    target: Option<(usize, u64)>,
) -> Option<[u8; 8]> {
    let size = at.size;
    if let [a, b] = instances {
        let mut zeroes = [0u8; 8];
        let mut ones = [0xFFu8; 8];
        let claimed = [
            at.perform(&a.setup, &mut zeroes[..size]),
            at.perform(&b.setup, &mut ones[..size]),
        ];
        if claimed[0] != claimed[1] {
            violation(at, "claimed by one instance only", &claimed[0], &claimed[1]);
        }
        if !claimed[0] {
            if target.is_some() {
                // A region holds the access whole: its device's range is gone.
                violation(at, "no device claimed it", &claimed[0], &true);
            }
            return None;
        }
        if zeroes[..size] != ones[..size] {
            let problem = "bytes left unfilled, or the answer is not deterministic";
            violation(at, problem, &zeroes[..size], &ones[..size]);
        }
        if let Some((index, offset)) = target {
            let mut expected = [0u8; 8];
            bench.model_read(index, offset, &mut expected[..size]);
        }
        return Some(zeroes);
    }
    let mut data = [0u8; 8];
    let Some((index, offset)) = target else {
        // No region holds the access (or a device moved its range): nothing to compare.
        return at
            .perform(&instances[0].setup, &mut data[..size])
            .then_some(data);
    };
    let mut expected = [0u8; 8];
    bench.model_read(index, offset, &mut expected[..size]);
    for (byte, want) in data.iter_mut().zip(expected) {
        *byte = !want;
    }
    let claimed = at.perform(&instances[0].setup, &mut data[..size]);
    if !claimed {
        violation(at, "no device claimed it", &claimed, &true);
    }
    if data[..size] != expected[..size] {
        let problem = "the model answers otherwise (or bytes were left unfilled)";
        violation(at, problem, &data[..size], &expected[..size]);
    }
    Some(data)
}

/// One access, where it went: what a violation names.
struct At<'r> {
    step: usize,
    direct: bool,
    read: bool,
    size: usize,
    /// The address, or for a direct access the offset handed to the device.
    addr: u64,
    /// The region the access names, and its index.
    index: usize,
    region: &'r Region,
    offset: Offset,
}

impl At<'_> {
    /// Performs the read on one instance: handed to the region's device, or through the bus.
    fn perform(&self, setup: &Setup, data: &mut [u8]) -> bool {
        if self.direct {
            setup.read_direct(self.index, self.addr, data);
            true
        } else {
            setup.read(self.index, self.addr, data)
        }
    }
}

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "step {}: {}{} of {} bytes at {} {:#x} ({:?} region {} at {:#x}, {:?})",
            self.step,
            if self.direct { "direct " } else { "" },
            if self.read { "read" } else { "write" },
            self.size,
            if self.direct { "offset" } else { "address" },
            self.addr,
            self.region.space,
            self.region.name,
            self.region.base,
            self.offset
        )
    }
}

// The failures are out of line, so that the code every access runs keeps a small frame (the
// sanitizers the fuzzers build with pay for every byte of it on every call).

/// Panics: `problem` on access `at`, with what differed.
#[cold]
#[inline(never)]
fn violation<T: fmt::Debug + ?Sized>(at: &At<'_>, problem: &str, left: &T, right: &T) -> ! {
    panic!("{at}: {problem}\n  left: {left:?}\n right: {right:?}")
}

/// Panics: access `at` made more line calls than the bound.
#[cold]
#[inline(never)]
fn too_many_line_calls(at: &At<'_>, calls: u64, bound: u64) -> ! {
    panic!("{at}: {calls} interrupt-line calls, more than the bound of {bound}")
}
