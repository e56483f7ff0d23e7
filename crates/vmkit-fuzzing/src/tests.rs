//! The harness against devices that break each rule: it must catch every one.

use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use vmkit_exits::{DeviceAction, InterruptTrigger, MmioAddress, MmioDevice, PioAddress, PioDevice};

use crate::{
    Access, Answer, Claimed, DeviceFuzzer, Fixture, Line, Model, NoModel, Offset, Op, Setup,
};

/// What each device gets wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flaw {
    None,
    /// Leaves the last byte of every read as it found it.
    Unfilled,
    /// Answers reads from a global counter: not deterministic.
    Global,
    /// Rings its line twice per write.
    ChattyLine,
    /// Panics on a 8-byte write.
    PanicsOnWide,
    /// Takes the fixture's own operation otherwise than the model does.
    Sneaky,
    /// Rings its line on every other write, counted over both instances: they disagree.
    FlakyLine,
    /// Stops the VM on every write.
    StopsAlways,
}

static GLOBAL: AtomicU32 = AtomicU32::new(0);
/// Only [`Flaw::FlakyLine`] counts here, so that its instances alternate whatever else runs.
static FLAKY: AtomicU32 = AtomicU32::new(0);

/// The byte of the register that byte `i` of an access at `offset` lands on (any offset: the
/// harness hands devices offsets far past their registers).
fn lane(offset: u64, i: usize) -> Option<usize> {
    usize::try_from(offset).ok()?.checked_add(i)
}

struct Register {
    value: Mutex<u64>,
    irq: Line,
    flaw: Flaw,
}

impl Register {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let value = match self.flaw {
            Flaw::Global => u64::from(GLOBAL.fetch_add(1, Ordering::Relaxed)),
            _ => *self.value.lock().unwrap_or_else(|e| e.into_inner()),
        };
        let bytes = value.to_le_bytes();
        let len = data.len();
        for (i, byte) in data.iter_mut().enumerate() {
            if self.flaw == Flaw::Unfilled && i == len - 1 {
                continue;
            }
            *byte = lane(offset, i)
                .and_then(|p| bytes.get(p))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write(&self, offset: u64, data: &[u8]) -> DeviceAction {
        if self.flaw == Flaw::PanicsOnWide && data.len() == 8 {
            panic!("wide write");
        }
        let mut value = self.value.lock().unwrap_or_else(|e| e.into_inner());
        let mut bytes = value.to_le_bytes();
        for (i, &byte) in data.iter().enumerate() {
            if let Some(slot) = lane(offset, i).and_then(|p| bytes.get_mut(p)) {
                *slot = byte;
            }
        }
        *value = u64::from_le_bytes(bytes);
        let rings = match self.flaw {
            Flaw::ChattyLine => 2,
            Flaw::FlakyLine => FLAKY.fetch_add(1, Ordering::Relaxed) % 2,
            _ => 1,
        };
        for _ in 0..rings {
            let _ = self.irq.trigger();
        }
        if offset == 7 || self.flaw == Flaw::StopsAlways {
            DeviceAction::Stop(vmkit_exits::StopReason::PowerOff)
        } else {
            DeviceAction::Resume
        }
    }
}

impl PioDevice for Register {
    fn pio_read(&self, _base: PioAddress, offset: u16, data: &mut [u8]) {
        self.read(u64::from(offset), data);
    }
    fn pio_write(&self, _base: PioAddress, offset: u16, data: &[u8]) -> DeviceAction {
        self.write(u64::from(offset), data)
    }
}

impl MmioDevice for Register {
    fn mmio_read(&self, _base: MmioAddress, offset: u64, data: &mut [u8]) {
        self.read(offset, data);
    }
    fn mmio_write(&self, _base: MmioAddress, offset: u64, data: &[u8]) -> DeviceAction {
        self.write(offset, data)
    }
}

/// A port register and an MMIO register with the same flaw; with a log, every claimed access
/// the harness hands to `check_access`.
struct Registers<M>(Flaw, Option<Arc<Mutex<Vec<String>>>>, PhantomData<M>);

fn registers<M>(flaw: Flaw) -> Registers<M> {
    Registers(flaw, None, PhantomData)
}

impl<M: Model + Default> Fixture for Registers<M> {
    type Devices = (Arc<Register>, Arc<Register>);
    type Model = M;

    fn model(&self) -> M {
        M::default()
    }

    fn build(&self, setup: &mut Setup) -> Self::Devices {
        let make = |setup: &mut Setup| {
            Arc::new(Register {
                value: Mutex::new(0),
                irq: setup.interrupt(),
                flaw: self.0,
            })
        };
        let port = make(setup);
        let mmio = make(setup);
        setup.pio("port", 0x80, 8, port.clone());
        setup.mmio("mmio", 0xFFFF_FFFF_FFFF_FFF8, 8, mmio.clone());
        (port, mmio)
    }

    /// Puts the value into the port register and answers the value it held.
    fn user_op(&self, devices: &Self::Devices, _tag: u8, data: &[u8]) -> u64 {
        let value = user_value(data);
        let value = if self.0 == Flaw::Sneaky {
            !value
        } else {
            value
        };
        let old = std::mem::replace(
            &mut *devices.0.value.lock().unwrap_or_else(|e| e.into_inner()),
            value,
        );
        match self.0 {
            Flaw::Global => u64::from(GLOBAL.fetch_add(1, Ordering::Relaxed)),
            _ => old,
        }
    }

    fn check_access(&self, _model: &M, access: &Claimed<'_>) {
        // The answers a correct register gives: a write at its last byte powers off.
        if let Answer::Write { action, .. } = access.answer {
            let stops = action != DeviceAction::Resume;
            assert_eq!(stops, access.offset == 7, "{access:?}");
        }
        if let Some(log) = &self.1 {
            log.lock().unwrap().push(format!("{access:?}"));
        }
    }

    fn max_line_calls_per_access(&self) -> u64 {
        1
    }
}

/// The value the fixture's own operation puts in the port register: its first 8 bytes.
fn user_value(data: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = data.len().min(8);
    bytes[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(bytes)
}

/// The same register as a model: what a correct device answers.
#[derive(Default)]
struct RegisterModel {
    values: [u64; 2],
}

impl Model for RegisterModel {
    fn read(&mut self, region: usize, offset: u64, data: &mut [u8]) {
        let bytes = self.values[region].to_le_bytes();
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = lane(offset, i)
                .and_then(|p| bytes.get(p))
                .copied()
                .unwrap_or(0);
        }
    }
    fn write(&mut self, region: usize, offset: u64, data: &[u8]) -> DeviceAction {
        let mut bytes = self.values[region].to_le_bytes();
        for (i, &byte) in data.iter().enumerate() {
            if let Some(slot) = lane(offset, i).and_then(|p| bytes.get_mut(p)) {
                *slot = byte;
            }
        }
        self.values[region] = u64::from_le_bytes(bytes);
        if offset == 7 {
            DeviceAction::Stop(vmkit_exits::StopReason::PowerOff)
        } else {
            DeviceAction::Resume
        }
    }
    fn user_op(&mut self, _tag: u8, data: &[u8]) -> u64 {
        std::mem::replace(&mut self.values[0], user_value(data))
    }
}

fn scenario() -> Vec<Op> {
    let mut ops = Vec::new();
    for region in 0..2 {
        ops.extend([
            Op::Access(Access::write_at(
                region,
                Offset::FromStart(0),
                &[1, 2, 3, 4],
            )),
            Op::Access(Access::read_at(region, Offset::FromStart(0), 4)),
            Op::Access(Access::read_at(region, Offset::FromStart(2), 2)),
            Op::Access(Access::write_at(region, Offset::FromStart(7), &[9])),
            Op::Access(Access::read_at(region, Offset::BeforeEnd(3), 4)),
            Op::Access(Access::read_at(region, Offset::BeforeEnd(1), 4)),
            Op::Access(Access::read_at(region, Offset::BeforeStart(0), 2)),
            Op::Access(Access::write_at(region, Offset::FromStart(0), &[5; 8])),
            Op::Burst {
                count: 3,
                access: Access::read_at(region, Offset::FromStart(1), 1),
            },
            Op::Access(Access::read_at(region, Offset::Absolute(0x1234), 8)),
            Op::FailInterrupts(true),
            Op::Access(Access::write_at(region, Offset::FromStart(1), &[7])),
            Op::FailInterrupts(false),
            Op::Reset,
            Op::Access(Access::read_at(region, Offset::FromStart(0), 8)),
        ]);
    }
    ops
}

fn outcome(flaw: Flaw, ops: &[Op], with_model: bool) -> Result<(), String> {
    catch_unwind(AssertUnwindSafe(|| {
        if with_model {
            DeviceFuzzer::new(registers::<RegisterModel>(flaw)).run_ops(ops);
        } else {
            DeviceFuzzer::new(registers::<NoModel>(flaw)).run_ops(ops);
        }
    }))
    .map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default()
    })
}

#[test]
fn a_correct_device_passes_with_and_without_its_model() {
    outcome(Flaw::None, &scenario(), true).unwrap();
    outcome(Flaw::None, &scenario(), false).unwrap();
    // Random inputs too.
    let plain = DeviceFuzzer::new(registers::<NoModel>(Flaw::None));
    let modelled = DeviceFuzzer::new(registers::<RegisterModel>(Flaw::None));
    for seed in 0..200u32 {
        let bytes: Vec<u8> = (0..512u32)
            .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed * 40_503) >> 13) as u8)
            .collect();
        plain.run(&bytes);
        modelled.run(&bytes);
    }
}

#[test]
fn each_flaw_is_caught_and_named() {
    let unfilled = outcome(Flaw::Unfilled, &scenario(), false).unwrap_err();
    assert!(unfilled.contains("bytes left unfilled"), "{unfilled}");
    assert!(
        unfilled.contains("step 1: read of 4 bytes at address 0x80"),
        "{unfilled}"
    );
    // With a model, one instance: the complement of the model's answer shows the hole.
    let unfilled = outcome(Flaw::Unfilled, &scenario(), true).unwrap_err();
    assert!(unfilled.contains("bytes were left unfilled"), "{unfilled}");
    let chatty = outcome(Flaw::ChattyLine, &scenario(), true).unwrap_err();
    assert!(chatty.contains("more than the bound of 1"), "{chatty}");
    let global = outcome(Flaw::Global, &scenario(), false).unwrap_err();
    assert!(global.contains("not deterministic"), "{global}");
    let chatty = outcome(Flaw::ChattyLine, &scenario(), false).unwrap_err();
    assert!(
        chatty.contains("2 interrupt-line calls, more than the bound of 1"),
        "{chatty}"
    );
    let wide = outcome(Flaw::PanicsOnWide, &scenario(), false).unwrap_err();
    assert_eq!(wide, "wide write");
}

#[test]
fn a_device_that_differs_from_its_model_is_caught() {
    // The device takes the fixture's own operation otherwise than the model.
    let ops = [
        Op::User {
            tag: 1,
            data: vec![0xAA],
        },
        Op::Access(Access::read_at(0, Offset::FromStart(0), 1)),
    ];
    outcome(Flaw::None, &ops, true).unwrap();
    outcome(Flaw::Sneaky, &ops, false).unwrap();
    let message = outcome(Flaw::Sneaky, &ops, true).unwrap_err();
    assert!(message.contains("the model answers otherwise"), "{message}");
}

#[test]
fn accesses_outside_every_region_reach_no_device() {
    // Straddling the end of the space and before the start: unclaimed, never routed.
    let ops = [
        Op::Access(Access::write_at(1, Offset::BeforeEnd(0), &[1, 2])),
        Op::Access(Access::write_at(0, Offset::BeforeStart(0), &[1, 2, 3, 4])),
        Op::Access(Access::read_at(0, Offset::FromStart(0), 8)),
        Op::Access(Access::read_at(1, Offset::FromStart(0), 8)),
    ];
    outcome(Flaw::None, &ops, true).unwrap();
}

/// Registers the same range twice: the fixture's mistake, named.
struct Overlapping;

impl Fixture for Overlapping {
    type Devices = ();
    type Model = NoModel;

    fn build(&self, setup: &mut Setup) {
        let device = Arc::new(Register {
            value: Mutex::new(0),
            irq: setup.interrupt(),
            flaw: Flaw::None,
        });
        assert!(setup.regions().is_empty());
        setup.mmio("first", 0x1000, 0x10, device.clone());
        assert_eq!(setup.mmio_bus().len(), 1);
        assert!(setup.io_bus().is_empty());
        setup.mmio("second", 0x1008, 0x10, device);
    }

    fn model(&self) -> NoModel {
        NoModel
    }
}

#[test]
fn a_fixture_that_overlaps_its_ranges_is_named() {
    let message = catch_unwind(AssertUnwindSafe(|| {
        DeviceFuzzer::new(Overlapping).run(&[0]);
    }))
    .unwrap_err();
    let message = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        message.starts_with("fixture: cannot register second"),
        "{message}"
    );
}

/// No regions at all: every access is a no-op, and nothing panics.
struct Empty;

impl Fixture for Empty {
    type Devices = ();
    type Model = NoModel;

    fn build(&self, setup: &mut Setup) {
        assert!(format!("{setup:?}").contains("regions: []"));
    }

    fn model(&self) -> NoModel {
        NoModel
    }
}

#[test]
fn a_fixture_without_regions_runs_every_operation() {
    let fuzzer = DeviceFuzzer::new(Empty);
    assert!(format!("{fuzzer:?}").starts_with("DeviceFuzzer"));
    let ops = [
        Op::Access(Access::read_at(0, Offset::FromStart(0), 4)),
        Op::Direct(Access::write_at(0, Offset::FromStart(0), &[1])),
        Op::Reset,
        Op::User {
            tag: 0,
            data: vec![],
        },
    ];
    fuzzer.run_ops(&ops);
    fuzzer.run(&[0xAB; 100]);
}

#[test]
fn direct_accesses_reach_both_spaces_at_any_offset_and_size() {
    let mut ops = Vec::new();
    for region in 0..2 {
        for size in 0..=8 {
            ops.push(Op::Direct(Access::read_at(
                region,
                Offset::BeforeStart(1),
                size,
            )));
            ops.push(Op::Direct(Access::write_at(
                region,
                Offset::FromStart(6),
                &[0xA5; 8][..usize::from(size)],
            )));
            ops.push(Op::Direct(Access::read_at(
                region,
                Offset::FromStart(0),
                size,
            )));
            ops.push(Op::Direct(Access::read_at(
                region,
                Offset::Absolute(u64::MAX),
                size,
            )));
        }
    }
    outcome(Flaw::None, &ops, true).unwrap();
    outcome(Flaw::None, &ops, false).unwrap();
    let message = outcome(Flaw::Unfilled, &ops, false).unwrap_err();
    assert!(
        message.contains("step 4: direct read of 1 bytes at offset 0xfffe"),
        "{message}"
    );
}

#[test]
fn the_fixtures_own_operations_answer_alike_and_as_the_model_says() {
    let user = |value| Op::User {
        tag: 1,
        data: vec![value],
    };
    let ops = [user(0xAA), user(0x55)];
    outcome(Flaw::None, &ops, true).unwrap();
    outcome(Flaw::None, &ops, false).unwrap();
    // The second operation answers the value the first one put: the complement, here.
    let sneaky = outcome(Flaw::Sneaky, &ops, true).unwrap_err();
    assert!(
        sneaky.contains("step 1: operation 1 of the fixture: the model answers otherwise"),
        "{sneaky}"
    );
    let global = outcome(Flaw::Global, &ops, false).unwrap_err();
    assert!(
        global.contains("step 0: operation 1 of the fixture: the instances disagree"),
        "{global}"
    );
}

#[test]
fn instances_that_ring_their_lines_differently_are_caught() {
    let flaky = outcome(Flaw::FlakyLine, &scenario(), false).unwrap_err();
    assert!(
        flaky.contains("step 0: the instances made different interrupt-line calls"),
        "{flaky}"
    );
}

#[test]
fn the_fixture_checks_each_claimed_access_once() {
    let ops = [
        Op::Access(Access::write_at(0, Offset::FromStart(7), &[1])),
        // Straddles the start: no region claims it, the fixture does not see it.
        Op::Access(Access::read_at(0, Offset::BeforeStart(0), 2)),
        Op::Direct(Access::read_at(0, Offset::BeforeStart(0), 2)),
        Op::Direct(Access::write_at(1, Offset::FromStart(2), &[3, 4])),
        Op::Burst {
            count: 2,
            access: Access::read_at(1, Offset::FromStart(2), 2),
        },
    ];
    let expected = [
        "Claimed { region: 0, offset: 7, direct: false, answer: Write { data: [1], \
         action: Stop(PowerOff) } }",
        "Claimed { region: 0, offset: 65535, direct: true, answer: Read([0, 0]) }",
        "Claimed { region: 1, offset: 2, direct: true, answer: Write { data: [3, 4], \
         action: Resume } }",
        "Claimed { region: 1, offset: 2, direct: false, answer: Read([3, 4]) }",
        "Claimed { region: 1, offset: 2, direct: false, answer: Read([3, 4]) }",
    ];
    let log = Arc::new(Mutex::new(Vec::new()));
    DeviceFuzzer::new(Registers::<NoModel>(
        Flaw::None,
        Some(log.clone()),
        PhantomData,
    ))
    .run_ops(&ops);
    assert_eq!(std::mem::take(&mut *log.lock().unwrap()), expected);
    DeviceFuzzer::new(Registers::<RegisterModel>(
        Flaw::None,
        Some(log.clone()),
        PhantomData,
    ))
    .run_ops(&ops);
    assert_eq!(*log.lock().unwrap(), expected);
    // Without a model, only the fixture's check sees a write that stops the VM where it
    // should not.
    let stops = outcome(Flaw::StopsAlways, &scenario(), false).unwrap_err();
    assert!(stops.contains("offset: 0, direct: false"), "{stops}");
}

/// A latch: a write rings the line; a read answers whether the last ring went through.
struct Latch {
    delivered: Mutex<u8>,
    irq: Line,
}

impl PioDevice for Latch {
    fn pio_read(&self, _base: PioAddress, _offset: u16, data: &mut [u8]) {
        data.fill(*self.delivered.lock().unwrap());
    }
    fn pio_write(&self, _base: PioAddress, _offset: u16, _data: &[u8]) -> DeviceAction {
        *self.delivered.lock().unwrap() = u8::from(self.irq.trigger().is_ok());
        DeviceAction::Resume
    }
}

/// The latch's model; `deaf` ignores the news of failing lines.
#[derive(Default)]
struct LatchModel {
    deaf: bool,
    failing: bool,
    delivered: u8,
}

impl Model for LatchModel {
    fn read(&mut self, _region: usize, _offset: u64, data: &mut [u8]) {
        data.fill(self.delivered);
    }
    fn write(&mut self, _region: usize, _offset: u64, _data: &[u8]) -> DeviceAction {
        self.delivered = u8::from(!self.failing);
        DeviceAction::Resume
    }
    fn fail_interrupts(&mut self, failing: bool) {
        if !self.deaf {
            self.failing = failing;
        }
    }
}

struct LatchFixture {
    deaf: bool,
}

impl Fixture for LatchFixture {
    type Devices = ();
    type Model = LatchModel;

    fn build(&self, setup: &mut Setup) {
        let irq = setup.interrupt();
        let latch = Arc::new(Latch {
            delivered: Mutex::new(0),
            irq,
        });
        setup.pio("latch", 0x10, 1, latch);
    }

    fn model(&self) -> LatchModel {
        LatchModel {
            deaf: self.deaf,
            ..LatchModel::default()
        }
    }
}

#[test]
fn a_model_hears_when_lines_fail() {
    let ring_and_look = [
        Op::Access(Access::write_at(0, Offset::FromStart(0), &[1])),
        Op::Access(Access::read_at(0, Offset::FromStart(0), 1)),
    ];
    let mut ops = Vec::new();
    for failing in [false, true, false] {
        ops.push(Op::FailInterrupts(failing));
        ops.extend(ring_and_look.iter().cloned());
    }
    let latch = DeviceFuzzer::new(LatchFixture { deaf: false });
    latch.run_ops(&ops);
    // The run leaves the model as the last step did: the last ring went through.
    assert_eq!(latch.run_ops_then(&ops, |(), model| model.delivered), 1);
    assert_eq!(
        latch.run_ops_then(&ops[..5], |(), model| (model.failing, model.delivered)),
        (true, 0)
    );
    let deaf = catch_unwind(AssertUnwindSafe(|| {
        DeviceFuzzer::new(LatchFixture { deaf: true }).run_ops(&ops);
    }))
    .unwrap_err();
    let deaf = deaf.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(deaf.contains("step 5: read of 1 bytes"), "{deaf}");
}

/// Counts the builds and checks the harness asks of it.
#[derive(Default)]
struct Counted {
    builds: Arc<AtomicU32>,
    checks: Arc<AtomicU32>,
}

impl Fixture for Counted {
    type Devices = ();
    type Model = NoModel;

    fn build(&self, setup: &mut Setup) {
        self.builds.fetch_add(1, Ordering::Relaxed);
        let irq = setup.interrupt();
        let device = Arc::new(Register {
            value: Mutex::new(0),
            irq,
            flaw: Flaw::None,
        });
        setup.pio("port", 0x80, 8, device);
    }

    fn model(&self) -> NoModel {
        NoModel
    }

    fn check(&self, (): &(), _model: &NoModel) {
        self.checks.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn steps_that_reach_no_device_are_not_checked_and_leave_the_machine_fresh() {
    let fixture = Counted::default();
    let (builds, checks) = (fixture.builds.clone(), fixture.checks.clone());
    DeviceFuzzer::new(fixture).run_ops(&[
        // No region holds these: no device is called, and the reset after them is skipped.
        Op::Access(Access::read_at(0, Offset::Absolute(0x1234), 1)),
        Op::Burst {
            count: 3,
            access: Access::write_at(0, Offset::BeforeStart(0), &[1, 2]),
        },
        Op::Reset,
        Op::Access(Access::read_at(0, Offset::FromStart(0), 1)),
        Op::Reset,
        Op::FailInterrupts(true),
        Op::Reset,
        Op::Reset,
    ]);
    // Two instances (no model) at the start and at each of the two resets that counted.
    assert_eq!(builds.load(Ordering::Relaxed), 6);
    // The read, two resets (on both instances) and the failing lines.
    assert_eq!(checks.load(Ordering::Relaxed), 8);
}

/// A port register that registered itself on the bus, and an MMIO register that the fixture's
/// own operation moves (or takes off the bus): the regions a PCI root's ranges and BARs are.
struct SelfPlaced(Arc<Mutex<Vec<String>>>);

/// Where the moving register is (`None`: nowhere), shared with its `locate`.
type Place = Arc<Mutex<Option<u64>>>;

impl Fixture for SelfPlaced {
    type Devices = (Arc<vmkit_exits::IoBus>, Arc<vmkit_exits::MmioBus>, Place);
    type Model = NoModel;

    fn build(&self, setup: &mut Setup) -> Self::Devices {
        let register = |setup: &mut Setup| {
            Arc::new(Register {
                value: Mutex::new(0),
                irq: setup.interrupt(),
                flaw: Flaw::None,
            })
        };
        let port = register(setup);
        setup.io_bus().register(0x80..0x88, port).unwrap();
        setup.registered("port", crate::Space::Pio, 0x80, 8);
        let moving = register(setup);
        setup.mmio_bus().register(0x1000..0x1008, moving).unwrap();
        let place = Arc::new(Mutex::new(Some(0x1000)));
        let locate = place.clone();
        setup.moving("moving", crate::Space::Mmio, 8, move || {
            *locate.lock().unwrap()
        });
        (setup.io_bus().clone(), setup.mmio_bus().clone(), place)
    }

    fn model(&self) -> NoModel {
        NoModel
    }

    /// Moves the register to `data[0]` pages, or off the bus for 0; tag 1 takes the port
    /// register off its bus (a device losing its range: the harness's finding).
    fn user_op(&self, (io, bus, place): &Self::Devices, tag: u8, data: &[u8]) -> u64 {
        if tag == 1 {
            let _ = io.unregister(PioAddress(0x80));
            return 0;
        }
        let mut place = place.lock().unwrap();
        let to = data.first().map_or(0, |&page| u64::from(page) << 12);
        let handler = place.and_then(|at| bus.unregister(MmioAddress(at)).ok());
        *place = None;
        if let (Some(handler), true) = (handler, to != 0) {
            bus.register(to..to + 8, handler).unwrap();
            *place = Some(to);
        }
        0
    }

    fn check_access(&self, _model: &NoModel, access: &Claimed<'_>) {
        let kind = if access.direct { "direct" } else { "routed" };
        self.0
            .lock()
            .unwrap()
            .push(format!("{kind} {} {:#x}", access.region, access.offset));
    }
}

#[test]
fn ranges_a_device_places_itself_are_reached_where_they_are_now() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let moved = |page: u8| Op::User {
        tag: 0,
        data: vec![page],
    };
    let ops = [
        Op::Access(Access::read_at(0, Offset::FromStart(4), 4)),
        Op::Direct(Access::read_at(0, Offset::FromStart(9), 1)),
        Op::Access(Access::write_at(1, Offset::FromStart(2), &[1, 2])),
        moved(5),
        Op::Access(Access::read_at(1, Offset::FromStart(2), 2)),
        Op::Access(Access::read_at(1, Offset::BeforeEnd(3), 4)),
        Op::Direct(Access::read_at(1, Offset::BeforeEnd(0), 4)),
        moved(0),
        Op::Access(Access::read_at(1, Offset::FromStart(2), 2)),
        Op::Direct(Access::read_at(1, Offset::FromStart(2), 2)),
    ];
    DeviceFuzzer::new(SelfPlaced(log.clone())).run_ops(&ops);
    assert_eq!(
        *log.lock().unwrap(),
        [
            "routed 0 0x4",
            "direct 0 0x9",
            "routed 1 0x2",
            "routed 1 0x2",
            "routed 1 0x4",
            "direct 1 0x7",
        ]
    );
    for lost in [
        Op::Access(Access::read_at(0, Offset::FromStart(0), 1)),
        Op::Access(Access::write_at(0, Offset::FromStart(0), &[1])),
    ] {
        let ops = [
            Op::User {
                tag: 1,
                data: vec![],
            },
            lost,
        ];
        let message = catch_unwind(AssertUnwindSafe(|| {
            DeviceFuzzer::new(SelfPlaced(log.clone())).run_ops(&ops);
        }))
        .unwrap_err();
        let message = message
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(message.contains("step 1: "), "{message}");
        assert!(message.contains("no device claimed it"), "{message}");
    }
    let message = catch_unwind(AssertUnwindSafe(|| {
        let mut setup = Setup::default();
        setup.registered("nothing", crate::Space::Mmio, 0x2000, 8);
    }))
    .unwrap_err();
    let message = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        message.contains("no range of the Mmio bus starts at 0x2000"),
        "{message}"
    );
}
