//! The harness against devices that break each rule: it must catch every one.

use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use vmkit_exits::{
    CountingTrigger, DeviceAction, InterruptTrigger, MmioAddress, MmioDevice, PioAddress, PioDevice,
};

use crate::{Access, DeviceFuzzer, Fixture, Model, NoModel, Offset, Op, Setup};

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
}

static GLOBAL: AtomicU32 = AtomicU32::new(0);

/// The byte of the register that byte `i` of an access at `offset` lands on (any offset: the
/// harness hands devices offsets far past their registers).
fn lane(offset: u64, i: usize) -> Option<usize> {
    usize::try_from(offset).ok()?.checked_add(i)
}

struct Register {
    value: Mutex<u64>,
    irq: Arc<CountingTrigger>,
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
        let _ = self.irq.trigger();
        if self.flaw == Flaw::ChattyLine {
            let _ = self.irq.trigger();
        }
        if offset == 7 {
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

struct Registers<M>(Flaw, PhantomData<M>);

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

    fn user_op(&self, devices: &Self::Devices, _tag: u8, data: &[u8]) {
        let value = user_value(data);
        let value = if self.0 == Flaw::Sneaky {
            !value
        } else {
            value
        };
        *devices.0.value.lock().unwrap_or_else(|e| e.into_inner()) = value;
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
    fn user_op(&mut self, _tag: u8, data: &[u8]) {
        self.values[0] = user_value(data);
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
            DeviceFuzzer::new(Registers::<RegisterModel>(flaw, PhantomData)).run_ops(ops);
        } else {
            DeviceFuzzer::new(Registers::<NoModel>(flaw, PhantomData)).run_ops(ops);
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
    let plain = DeviceFuzzer::new(Registers::<NoModel>(Flaw::None, PhantomData));
    let modelled = DeviceFuzzer::new(Registers::<RegisterModel>(Flaw::None, PhantomData));
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
