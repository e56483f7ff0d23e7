//! Fuzz surface `acpi_pm`: the ACPI power-management registers (sleep control, sleep status,
//! reset) on vmkit-fuzzing's device harness: guest reads and writes through the port bus and
//! handed to the device directly (any size and offset), with movements of the clock that times
//! the device's log limit as the fixture's own operation.
//!
//! The device runs against a byte-wise reference model of ACPI 6.x §4.8.3.6–7. Checked after
//! every operation, besides what the harness checks of every device (no panic, reads fill every
//! byte deterministically, the bound on interrupt-line calls): every read answers what the
//! model says (sleep status reads WAK_STS while it is set, control and reset read 0, everything
//! else 0xFF); a write stops the VM with `PowerOff` only when a byte landing on sleep control
//! carries SLP_EN with sleep type 5, with `Reset` only when a byte landing on the reset register
//! is `RESET_VALUE`, the first such byte deciding, and otherwise continues; any other sleep
//! request sets WAK_STS, which only a 1 written to bit 7 of sleep status clears; and the
//! device's counters (accesses, ignored bytes, wide accesses, refused sleeps, ignored reset
//! values, log lines let through or suppressed) match the model's.

use std::sync::Arc;
use std::time::Duration;

use vmkit_devices::AcpiPmDevice;
use vmkit_devices::acpi_pm::{
    ACPI_PM_PORT, ACPI_PM_PORT_LEN, RESET_OFFSET, RESET_VALUE, S5_SLEEP_TYPE, SLEEP_CONTROL_OFFSET,
    SLEEP_STATUS_OFFSET, SLP_EN, SLP_TYP_MASK, SLP_TYP_SHIFT, WAK_STS, sleep_control_value,
};
use vmkit_exits::{DeviceAction, LogLimit, ManualClock, StopReason};
use vmkit_fuzzing::{Access, DeviceFuzzer, Fixture, Offset, Op, Setup, encode};

/// The log limit the device runs with: small, so that inputs reach suppression.
const LOG_LIMIT: LogLimit = LogLimit {
    per_second: 2,
    burst: 3,
};

/// The fixture's own operation: the clock moves forward by the milliseconds in its first two
/// bytes (little-endian).
pub const ADVANCE_CLOCK: u8 = 0;

const CONTROL: u64 = SLEEP_CONTROL_OFFSET as u64;
const STATUS: u64 = SLEEP_STATUS_OFFSET as u64;
const RESET: u64 = RESET_OFFSET as u64;

/// The reference model: the register state and the counters the device must report.
#[derive(Debug, Default)]
pub struct PmModel {
    wake: bool,
    reads: u64,
    writes: u64,
    ignored: u64,
    wide: u64,
    unsupported_sleeps: u64,
    ignored_reset_values: u64,
}

impl PmModel {
    /// Counts an access of `len` bytes; returns whether it has bytes.
    fn access(&mut self, len: usize) -> bool {
        match len {
            0 => self.ignored += 1,
            1 => {}
            _ => self.wide += 1,
        }
        len > 0
    }

    fn answer(&mut self, offset: u64, size: usize) -> Vec<u8> {
        self.reads += 1;
        if !self.access(size) {
            return Vec::new();
        }
        (0..size)
            .map(|i| match position(offset, i) {
                STATUS if self.wake => WAK_STS,
                CONTROL | STATUS | RESET => 0,
                _ => {
                    self.ignored += 1;
                    0xFF
                }
            })
            .collect()
    }

    fn store(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        self.writes += 1;
        if !self.access(data.len()) {
            return DeviceAction::Resume;
        }
        let mut action = None;
        for (i, &value) in data.iter().enumerate() {
            let stop = match position(offset, i) {
                CONTROL if value & SLP_EN == 0 => {
                    self.ignored += 1;
                    None
                }
                CONTROL if (value & SLP_TYP_MASK) >> SLP_TYP_SHIFT == S5_SLEEP_TYPE => {
                    Some(StopReason::PowerOff)
                }
                CONTROL => {
                    self.unsupported_sleeps += 1;
                    self.wake = true;
                    None
                }
                STATUS if value & WAK_STS != 0 => {
                    self.wake = false;
                    None
                }
                RESET if value == RESET_VALUE => Some(StopReason::Reset),
                RESET => {
                    self.ignored_reset_values += 1;
                    self.ignored += 1;
                    None
                }
                _ => {
                    self.ignored += 1;
                    None
                }
            };
            action = action.or(stop);
        }
        action.map_or(DeviceAction::Resume, DeviceAction::Stop)
    }
}

impl vmkit_fuzzing::Model for PmModel {
    fn read(&mut self, _region: usize, offset: u64, data: &mut [u8]) {
        data.copy_from_slice(&self.answer(offset, data.len()));
    }

    fn write(&mut self, _region: usize, offset: u64, data: &[u8]) -> DeviceAction {
        let action = self.store(offset, data);
        // The invariants, stated without the model.
        let landing = |target: u64| {
            data.iter()
                .enumerate()
                .filter(move |&(i, _)| position(offset, i) == target)
                .map(|(_, &v)| v)
        };
        match action {
            DeviceAction::Stop(StopReason::PowerOff) => assert!(
                landing(CONTROL)
                    .any(|v| v & (SLP_TYP_MASK | SLP_EN) == sleep_control_value(S5_SLEEP_TYPE))
            ),
            DeviceAction::Stop(StopReason::Reset) => {
                assert!(landing(RESET).any(|v| v == RESET_VALUE))
            }
            DeviceAction::Resume => {}
            DeviceAction::Stop(other) => panic!("unexpected stop {other:?}"),
        }
        action
    }
}

/// Where byte `i` of an access at `offset` lands; positions do not wrap.
fn position(offset: u64, i: usize) -> u64 {
    offset.saturating_add(i as u64)
}

/// The device on the port bus, with a manual clock for its log limit.
pub struct PmFixture;

/// One instance: the device and its clock.
pub struct PmDevices {
    clock: Arc<ManualClock>,
    device: Arc<AcpiPmDevice>,
}

impl Fixture for PmFixture {
    type Devices = PmDevices;
    type Model = PmModel;

    fn build(&self, setup: &mut Setup) -> PmDevices {
        let clock = Arc::new(ManualClock::new());
        let device = Arc::new(AcpiPmDevice::with_log_limit(LOG_LIMIT, clock.clone()));
        setup.pio("acpi_pm", ACPI_PM_PORT, ACPI_PM_PORT_LEN, device.clone());
        PmDevices { clock, device }
    }

    fn model(&self) -> PmModel {
        PmModel::default()
    }

    fn user_op(&self, devices: &PmDevices, tag: u8, data: &[u8]) -> u64 {
        if tag == ADVANCE_CLOCK {
            let millis = u16::from_le_bytes([
                data.first().copied().unwrap_or(0),
                data.get(1).copied().unwrap_or(0),
            ]);
            devices
                .clock
                .advance(Duration::from_millis(u64::from(millis)));
        }
        0
    }

    fn check(&self, devices: &PmDevices, m: &PmModel) {
        let stats = devices.device.stats();
        assert_eq!(devices.device.wake_status(), m.wake);
        assert_eq!(
            (stats.io.reads, stats.io.writes, stats.io.ignored),
            (m.reads, m.writes, m.ignored)
        );
        assert_eq!(stats.wide_accesses, m.wide);
        assert_eq!(stats.unsupported_sleeps, m.unsupported_sleeps);
        assert_eq!(stats.ignored_reset_values, m.ignored_reset_values);
        assert_eq!(
            stats.log_lines + stats.log_lines_suppressed,
            m.unsupported_sleeps
        );
    }

    fn max_line_calls_per_access(&self) -> u64 {
        0
    }
}

/// Target body.
pub fn run(data: &[u8]) {
    DeviceFuzzer::new(PmFixture).run(data);
}

/// Named seed inputs: small, meaningful scenarios that reach every register and answer.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    // Handed to the device directly, as the seeds of the device's own harness were; a few go
    // through the bus below.
    let at = |offset: u16| {
        if offset < 0xC0 {
            Offset::FromStart(offset)
        } else {
            Offset::Absolute(u64::from(u16::from_le_bytes([offset as u8, offset as u8])))
        }
    };
    let r = |offset: u16, size| Op::Direct(Access::read_at(0, at(offset), size));
    let w = |offset: u16, data: &[u8]| Op::Direct(Access::write_at(0, at(offset), data));
    let clock = |millis: u16| Op::User {
        tag: ADVANCE_CLOCK,
        data: millis.to_le_bytes().to_vec(),
    };
    let s5 = sleep_control_value(S5_SLEEP_TYPE);

    // What Linux does for `poweroff` on a hardware-reduced platform.
    let linux_poweroff = vec![
        w(SLEEP_STATUS_OFFSET, &[WAK_STS]),
        w(SLEEP_CONTROL_OFFSET, &[s5]),
    ];

    let linux_reset = vec![r(RESET_OFFSET, 1), w(RESET_OFFSET, &[RESET_VALUE])];

    // Through the bus, as a guest's accesses reach the device in a VMM: inside the block,
    // straddling its end, just before it.
    let bus = |access| Op::Access(access);
    let through_the_bus = vec![
        bus(Access::write_at(0, Offset::FromStart(1), &[WAK_STS])),
        bus(Access::read_at(0, Offset::FromStart(0), 4)),
        bus(Access::read_at(0, Offset::BeforeEnd(1), 4)),
        bus(Access::write_at(0, Offset::BeforeStart(0), &[0, s5])),
        bus(Access::write_at(
            0,
            Offset::FromStart(0),
            &[sleep_control_value(3)],
        )),
        bus(Access::read_at(0, Offset::FromStart(1), 1)),
        bus(Access::write_at(0, Offset::FromStart(2), &[RESET_VALUE])),
    ];

    // A suspend request: clear, sleep, poll for the wake, clear again.
    let s3_wakes_at_once = vec![
        w(SLEEP_STATUS_OFFSET, &[WAK_STS]),
        w(SLEEP_CONTROL_OFFSET, &[sleep_control_value(3)]),
        r(SLEEP_STATUS_OFFSET, 1),
        w(SLEEP_STATUS_OFFSET, &[0x7F]),
        r(SLEEP_STATUS_OFFSET, 1),
        w(SLEEP_STATUS_OFFSET, &[WAK_STS]),
        r(SLEEP_STATUS_OFFSET, 1),
    ];

    let mut every_sleep_type = Vec::new();
    for sleep_type in 0..8u8 {
        every_sleep_type.push(w(SLEEP_CONTROL_OFFSET, &[sleep_type << SLP_TYP_SHIFT]));
        every_sleep_type.push(w(SLEEP_CONTROL_OFFSET, &[sleep_control_value(sleep_type)]));
        every_sleep_type.push(w(
            SLEEP_CONTROL_OFFSET,
            &[sleep_control_value(sleep_type) | 0xC3],
        ));
        every_sleep_type.push(r(SLEEP_STATUS_OFFSET, 1));
    }

    let mut reset_values = Vec::new();
    for value in [0, 2, 6, 0x0E, 0xFE, 0xFF, RESET_VALUE] {
        reset_values.push(w(RESET_OFFSET, &[value]));
    }
    reset_values.push(w(SLEEP_STATUS_OFFSET, &[RESET_VALUE]));
    reset_values.push(w(3, &[RESET_VALUE]));

    let wide_accesses = vec![
        w(SLEEP_CONTROL_OFFSET, &[sleep_control_value(1)]),
        r(0, 2),
        r(0, 4),
        r(1, 8),
        w(0, &[s5, WAK_STS]),
        w(0, &[0, WAK_STS, RESET_VALUE, 0]),
        w(0, &[s5, 0, RESET_VALUE, 0]),
        w(1, &[0, RESET_VALUE, 0, 0, 0, 0, 0, 0]),
        w(0, &[sleep_control_value(4), 0, 0, 0]),
        r(0, 4),
    ];

    let mut odd_accesses = Vec::new();
    for offset in [3, 4, 7, 0xC0, 0xFF] {
        for size in [0, 1, 3, 8] {
            odd_accesses.push(r(offset, size));
        }
        odd_accesses.push(w(offset, &[]));
        odd_accesses.push(w(offset, &[s5, WAK_STS, RESET_VALUE]));
    }
    odd_accesses.push(r(0, 0));
    odd_accesses.push(w(0, &[]));

    let mut log_bursts = Vec::new();
    for round in 0..3 {
        for _ in 0..10 {
            log_bursts.push(w(SLEEP_CONTROL_OFFSET, &[sleep_control_value(round + 1)]));
        }
        log_bursts.push(clock(700));
    }
    log_bursts.push(clock(u16::MAX));
    log_bursts.push(w(SLEEP_CONTROL_OFFSET, &[sleep_control_value(2)]));

    vec![
        ("linux_poweroff", encode(&linux_poweroff)),
        ("linux_reset", encode(&linux_reset)),
        ("s3_wakes_at_once", encode(&s3_wakes_at_once)),
        ("every_sleep_type", encode(&every_sleep_type)),
        ("reset_values", encode(&reset_values)),
        ("wide_accesses", encode(&wide_accesses)),
        ("odd_accesses", encode(&odd_accesses)),
        ("log_bursts", encode(&log_bursts)),
        ("through_the_bus", encode(&through_the_bus)),
    ]
}

#[cfg(test)]
mod tests {
    use vmkit_fuzzing::{Space, ops_for_region};

    use super::*;
    use crate::seed_files;

    #[test]
    fn seeds_round_trip_and_pass() {
        for (name, bytes) in seeds() {
            let ops = vmkit_fuzzing::decode(&bytes);
            assert_eq!(encode(&ops), bytes, "{name}");
            run(&bytes);
        }
    }

    /// The seeds taken from the committed recordings: each guest's accesses to the registers,
    /// as operations through the bus (the hello guest powering off through the ACPI tables,
    /// `guests/recordings/hello-poweroff.vmrec`, is the one that touches them).
    fn recorded_seeds() -> Vec<(String, Vec<u8>)> {
        let max_len = seed_files::recorded_seed_len(&seeds());
        seed_files::recorded(|recording| {
            let ops = ops_for_region(
                recording,
                Space::Pio,
                ACPI_PM_PORT.into(),
                ACPI_PM_PORT_LEN.into(),
                0,
            );
            seed_files::harness_inputs(&ops, max_len)
        })
    }

    /// Every seed: the written ones and the recorded ones.
    fn all_seeds() -> Vec<(String, Vec<u8>)> {
        seed_files::all(seeds(), recorded_seeds())
    }

    #[test]
    fn the_recorded_seed_is_what_the_guest_wrote() {
        let recorded = recorded_seeds();
        let names: Vec<_> = recorded.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["recorded-hello-poweroff-0"]);
        let (_, bytes) = &recorded[0];
        let ops = vmkit_fuzzing::decode(bytes);
        // Clear WAK_STS, then sleep in S5: as Linux powers off.
        let s5 = sleep_control_value(S5_SLEEP_TYPE);
        assert_eq!(
            ops,
            [
                Op::Access(Access::write_at(
                    0,
                    Offset::FromStart(SLEEP_STATUS_OFFSET),
                    &[WAK_STS]
                )),
                Op::Access(Access::write_at(
                    0,
                    Offset::FromStart(SLEEP_CONTROL_OFFSET),
                    &[s5]
                )),
            ]
        );
        run(bytes);
    }

    #[test]
    fn committed_seeds_replay() {
        seed_files::replay("acpi_pm", &seed_files::named(&all_seeds()), true, run);
    }

    #[test]
    fn poweroff_and_reset_seeds_stop_the_vm() {
        for (name, reason) in [
            ("linux_poweroff", StopReason::PowerOff),
            ("linux_reset", StopReason::Reset),
        ] {
            let (_, bytes) = seeds().into_iter().find(|(n, _)| *n == name).unwrap();
            let device = AcpiPmDevice::with_log_limit(LOG_LIMIT, Arc::new(ManualClock::new()));
            let mut last = DeviceAction::Resume;
            for op in vmkit_fuzzing::decode(&bytes) {
                if let Op::Direct(access) = op
                    && access.read.is_none()
                {
                    let offset = access.offset.relative(4, 0xFFFF) as u16;
                    last = vmkit_exits::PioDevice::pio_write(
                        &device,
                        vmkit_exits::PioAddress(ACPI_PM_PORT),
                        offset,
                        &access.data,
                    );
                }
            }
            assert_eq!(last, DeviceAction::Stop(reason), "{name}");
        }
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        seed_files::odd_inputs(run);
    }

    /// Writes the seed files; run with `cargo test -- --ignored write_seeds`.
    #[test]
    #[ignore]
    fn write_seeds() {
        seed_files::write("acpi_pm", &seed_files::named(&all_seeds()));
    }
}
