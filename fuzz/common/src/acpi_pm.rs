//! Fuzz surface `acpi_pm`: arbitrary sequences of port reads and writes of any size and offset to
//! the ACPI power-management registers (sleep control, sleep status, reset), interleaved with
//! movements of the clock that times the device's log limit.
//!
//! The device runs against a byte-wise reference model of ACPI 6.x §4.8.3.6–7. Checked after
//! every operation: nothing panics; every read fills the whole buffer with what the model says
//! (sleep status reads WAK_STS while it is set, control and reset read 0, everything else
//! 0xFF); a write stops the VM with `PowerOff` only when a byte landing on sleep control carries
//! SLP_EN with sleep type 5, with `Reset` only when a byte landing on the reset register is
//! `RESET_VALUE`, the first such byte deciding, and otherwise continues; any other sleep
//! request sets WAK_STS, which only a 1 written to bit 7 of sleep status clears; and the
//! device's counters (accesses, ignored bytes, wide accesses, refused sleeps, ignored reset
//! values, log lines let through or suppressed) match the model's.
//!
//! The input is a sequence of [`Op`]s in a small byte format (a tag byte, then fields of one
//! byte or little-endian integers, read with `arbitrary`'s primitives), so [`encode`] writes
//! seeds that decode to exactly the intended operations.

use std::sync::Arc;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use vmkit_devices::AcpiPmDevice;
use vmkit_devices::acpi_pm::{
    ACPI_PM_PORT, RESET_OFFSET, RESET_VALUE, S5_SLEEP_TYPE, SLEEP_CONTROL_OFFSET,
    SLEEP_STATUS_OFFSET, SLP_EN, SLP_TYP_MASK, SLP_TYP_SHIFT, WAK_STS, sleep_control_value,
};
use vmkit_exits::{DeviceAction, LogLimit, ManualClock, PioAddress, PioDevice, StopReason};

/// Most operations taken from one input.
pub const MAX_OPS: usize = 512;

/// The log limit the device runs with: small, so that inputs reach suppression.
const LOG_LIMIT: LogLimit = LogLimit {
    per_second: 2,
    burst: 3,
};

/// The offset an offset code stands for: codes below 0xC0 give offsets 0..=7 (the registers,
/// the reserved port and the ports just past the block); 0xC0..=0xFF give far offsets
/// (0xC0C0..=0xFFFF, so accesses also run past port 0xFFFF).
pub fn offset_of(code: u8) -> u16 {
    if code < 0xC0 {
        u16::from(code & 0x07)
    } else {
        u16::from_le_bytes([code, code])
    }
}

/// One step of a fuzz input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A guest read of `size` (0..=8) bytes.
    Read {
        /// The offset code (see [`offset_of`]).
        offset: u8,
        /// How many bytes.
        size: u8,
    },
    /// A guest write of `data` (0..=8 bytes).
    Write {
        /// The offset code (see [`offset_of`]).
        offset: u8,
        /// The bytes.
        data: Vec<u8>,
    },
    /// The clock of the log limit moves forward.
    AdvanceClock {
        /// Milliseconds.
        millis: u16,
    },
}

const OP_KINDS: u8 = 3;
const MAX_ACCESS: u8 = 8;

impl Op {
    fn read(u: &mut Unstructured<'_>) -> arbitrary::Result<Self> {
        Ok(match u8::arbitrary(u)? % OP_KINDS {
            0 => Op::Read {
                offset: u8::arbitrary(u)?,
                size: u8::arbitrary(u)? % (MAX_ACCESS + 1),
            },
            1 => {
                let offset = u8::arbitrary(u)?;
                let len = u8::arbitrary(u)? % (MAX_ACCESS + 1);
                Op::Write {
                    offset,
                    data: u.bytes(usize::from(len))?.to_vec(),
                }
            }
            _ => Op::AdvanceClock {
                millis: u16::arbitrary(u)?,
            },
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Op::Read { offset, size } => out.extend_from_slice(&[0, *offset, *size]),
            Op::Write { offset, data } => {
                out.extend_from_slice(&[1, *offset, data.len() as u8]);
                out.extend_from_slice(data);
            }
            Op::AdvanceClock { millis } => {
                out.push(2);
                out.extend_from_slice(&millis.to_le_bytes());
            }
        }
    }
}

/// The operations an input decodes to (at most [`MAX_OPS`]; a truncated last operation is
/// dropped when its byte string is cut short).
pub fn parse(data: &[u8]) -> Vec<Op> {
    crate::ops::decode(&mut Unstructured::new(data), MAX_OPS, Op::read)
}

/// The bytes that decode to `ops`.
pub fn encode(ops: &[Op]) -> Vec<u8> {
    crate::ops::encode(ops, Op::encode)
}

const CONTROL: u32 = SLEEP_CONTROL_OFFSET as u32;
const STATUS: u32 = SLEEP_STATUS_OFFSET as u32;
const RESET: u32 = RESET_OFFSET as u32;

/// The reference model: the register state and the counters the device must report.
#[derive(Debug, Default)]
struct Model {
    wake: bool,
    reads: u64,
    writes: u64,
    ignored: u64,
    wide: u64,
    unsupported_sleeps: u64,
    ignored_reset_values: u64,
}

impl Model {
    /// Counts an access of `len` bytes; returns whether it has bytes.
    fn access(&mut self, len: usize) -> bool {
        match len {
            0 => self.ignored += 1,
            1 => {}
            _ => self.wide += 1,
        }
        len > 0
    }

    fn read(&mut self, offset: u16, size: usize) -> Vec<u8> {
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

    fn write(&mut self, offset: u16, data: &[u8]) -> DeviceAction {
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

/// Where byte `i` of an access at `offset` lands; past 0xFFFF positions do not wrap.
fn position(offset: u16, i: usize) -> u32 {
    u32::from(offset).saturating_add(i as u32)
}

struct Harness {
    clock: Arc<ManualClock>,
    device: AcpiPmDevice,
    model: Model,
}

impl Harness {
    fn new() -> Self {
        let clock = Arc::new(ManualClock::new());
        Self {
            device: AcpiPmDevice::with_log_limit(LOG_LIMIT, clock.clone()),
            clock,
            model: Model::default(),
        }
    }

    fn read(&mut self, offset: u8, size: u8) {
        let offset = offset_of(offset);
        let expected = self.model.read(offset, usize::from(size));
        // Pre-filled with the complement of the answer: a byte left unwritten shows.
        let mut data: Vec<u8> = expected.iter().map(|b| !b).collect();
        self.device
            .pio_read(PioAddress(ACPI_PM_PORT), offset, &mut data);
        assert_eq!(data, expected, "read of {size} bytes at offset {offset:#x}");
    }

    fn write(&mut self, offset: u8, data: &[u8]) {
        let offset = offset_of(offset);
        let expected = self.model.write(offset, data);
        let action = self
            .device
            .pio_write(PioAddress(ACPI_PM_PORT), offset, data);
        assert_eq!(action, expected, "write of {data:x?} at offset {offset:#x}");
        // The invariants, stated without the model.
        let landing = |target: u32| {
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
    }

    fn check(&self) {
        let stats = self.device.stats();
        let m = &self.model;
        assert_eq!(self.device.wake_status(), m.wake);
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
}

/// Target body.
pub fn run(data: &[u8]) {
    let mut h = Harness::new();
    for op in parse(data) {
        match op {
            Op::Read { offset, size } => h.read(offset, size),
            Op::Write { offset, data } => h.write(offset, &data),
            Op::AdvanceClock { millis } => {
                h.clock.advance(Duration::from_millis(u64::from(millis)))
            }
        }
        h.check();
    }
}

/// Named seed inputs: small, meaningful scenarios that reach every register and answer.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let r = |offset: u16, size| Op::Read {
        offset: offset as u8,
        size,
    };
    let w = |offset: u16, data: &[u8]| Op::Write {
        offset: offset as u8,
        data: data.to_vec(),
    };
    let s5 = sleep_control_value(S5_SLEEP_TYPE);

    // What Linux does for `poweroff` on a hardware-reduced platform.
    let linux_poweroff = vec![
        w(SLEEP_STATUS_OFFSET, &[WAK_STS]),
        w(SLEEP_CONTROL_OFFSET, &[s5]),
    ];

    let linux_reset = vec![r(RESET_OFFSET, 1), w(RESET_OFFSET, &[RESET_VALUE])];

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
        log_bursts.push(Op::AdvanceClock { millis: 700 });
    }
    log_bursts.push(Op::AdvanceClock { millis: u16::MAX });
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
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed_files;

    #[test]
    fn seeds_round_trip_and_pass() {
        for (name, bytes) in seeds() {
            let ops = parse(&bytes);
            assert_eq!(encode(&ops), bytes, "{name}");
            run(&bytes);
        }
    }

    #[test]
    fn committed_seeds_replay() {
        seed_files::replay("acpi_pm", &seeds(), true, run);
    }

    #[test]
    fn poweroff_and_reset_seeds_stop_the_vm() {
        for (name, reason) in [
            ("linux_poweroff", StopReason::PowerOff),
            ("linux_reset", StopReason::Reset),
        ] {
            let (_, bytes) = seeds().into_iter().find(|(n, _)| *n == name).unwrap();
            let h = Harness::new();
            let mut last = DeviceAction::Resume;
            for op in parse(&bytes) {
                if let Op::Write { offset, data } = op {
                    last = h
                        .device
                        .pio_write(PioAddress(ACPI_PM_PORT), offset_of(offset), &data);
                }
            }
            assert_eq!(last, DeviceAction::Stop(reason), "{name}");
        }
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        run(&[]);
        run(&[0xff; 64]);
        run(&(0..=255).collect::<Vec<u8>>());
        for tag in 0..=255u8 {
            run(&[tag]);
            run(&[tag, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        }
    }

    #[test]
    fn offsets_cover_registers_and_far_ports() {
        assert_eq!(offset_of(0), 0);
        assert_eq!(offset_of(0x1F), 7);
        assert_eq!(offset_of(0xC0), 0xC0C0);
        assert_eq!(offset_of(0xFF), 0xFFFF);
    }

    /// Writes the seed files; run with `cargo test -- --ignored write_seeds`.
    #[test]
    #[ignore]
    fn write_seeds() {
        seed_files::write("acpi_pm", &seeds());
    }
}
