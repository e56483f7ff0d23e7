//! Fuzz surface `legacy_devices`: arbitrary sequences of port reads and writes of any size and
//! offset to the 16550 UART, the i8042, the CMOS RTC and the debug-exit port, interleaved with
//! what the VMM does to them (serial input, key injection, clock jumps, failing interrupt lines).
//!
//! Two identical sets of devices run in lockstep; every read goes to both, into a buffer filled
//! with 0x00 for one and 0xFF for the other. Checked after every operation: nothing panics;
//! reads fill the whole buffer and are deterministic (both copies agree); writes return the same
//! action on both; the debug-exit port stops with exactly the written value; only the i8042 can
//! ask for a reset and nothing else stops the VM; serial input never exceeds the FIFO's room and
//! output is counted exactly; the RTC's time registers always hold valid BCD or binary values
//! for the current mode, UIP is never set while SET holds the clock, register D reports valid
//! time; and every device counted each access.
//!
//! The input is a sequence of [`Op`]s in a small byte format (a tag byte, then fields of one
//! byte or little-endian integers, read with `arbitrary`'s primitives), so [`encode`] writes
//! seeds that decode to exactly the intended operations.

use std::sync::Arc;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use vmkit_devices::cmos::{REG_A, REG_A_UIP, REG_B, REG_B_24H, REG_B_BINARY, REG_B_SET, REG_D};
use vmkit_devices::{
    CmosRtc, CountingTrigger, DebugExit, I8042Device, I8042Error, ManualWallClock, SerialDevice,
};
use vmkit_exits::{DeviceAction, PioAddress, PioDevice, StopReason};

/// Most operations taken from one input.
pub const MAX_OPS: usize = 512;

/// The clock both device sets start at (2023-11-14T22:13:20Z).
const START_SECS: u64 = 1_700_000_000;

/// Which device an access goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The UART at 0x3F8.
    Serial,
    /// The debug-exit port at 0xF4.
    DebugExit,
    /// The i8042 registered as one range at 0x60 (offset 4 is the command port).
    I8042,
    /// The CMOS at 0x70.
    Cmos,
}

const DEVICES: [Device; 4] = [
    Device::Serial,
    Device::DebugExit,
    Device::I8042,
    Device::Cmos,
];

impl Device {
    fn base(self) -> u16 {
        match self {
            Device::Serial => 0x3F8,
            Device::DebugExit => 0xF4,
            Device::I8042 => 0x60,
            Device::Cmos => 0x70,
        }
    }

    fn index(self) -> u8 {
        match self {
            Device::Serial => 0,
            Device::DebugExit => 1,
            Device::I8042 => 2,
            Device::Cmos => 3,
        }
    }
}

/// The offset an offset code stands for: codes below 0xC0 give the register offsets 0..=15
/// (every device's registers and the ports just past them); 0xC0..=0xFF give far offsets
/// (0xC0C0..=0xFFFF, so accesses also run past port 0xFFFF).
pub fn offset_of(code: u8) -> u16 {
    if code < 0xC0 {
        u16::from(code & 0x0F)
    } else {
        u16::from_le_bytes([code, code])
    }
}

/// One step of a fuzz input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A guest read of `size` (0..=8) bytes.
    Read {
        /// Which device.
        device: Device,
        /// The offset code (see [`offset_of`]).
        offset: u8,
        /// How many bytes.
        size: u8,
    },
    /// A guest write of `data` (0..=8 bytes).
    Write {
        /// Which device.
        device: Device,
        /// The offset code (see [`offset_of`]).
        offset: u8,
        /// The bytes.
        data: Vec<u8>,
    },
    /// The VMM pushes serial input (0..=80 bytes).
    SerialInput(Vec<u8>),
    /// The VMM injects Ctrl+Alt+Delete.
    CtrlAltDel,
    /// The VMM injects scancodes (0..=20 bytes).
    InjectKeys(Vec<u8>),
    /// The clock moves forward.
    AdvanceClock {
        /// Microseconds.
        micros: u32,
    },
    /// The clock jumps to a time (seconds since the epoch; any value, including absurd ones).
    SetClock {
        /// Seconds since the epoch.
        secs: u64,
    },
    /// The interrupt lines start (`true`) or stop failing.
    FailInterrupts(bool),
}

const OP_KINDS: u8 = 8;
const MAX_ACCESS: u8 = 8;
const MAX_SERIAL_INPUT: u8 = 80;
const MAX_KEYS: u8 = 20;

impl Op {
    fn read(u: &mut Unstructured<'_>) -> arbitrary::Result<Self> {
        let device = |u: &mut Unstructured<'_>| -> arbitrary::Result<Device> {
            Ok(DEVICES[usize::from(u8::arbitrary(u)? % 4)])
        };
        let bytes = |u: &mut Unstructured<'_>, max: u8| -> arbitrary::Result<Vec<u8>> {
            let len = u8::arbitrary(u)? % (max + 1);
            Ok(u.bytes(usize::from(len))?.to_vec())
        };
        Ok(match u8::arbitrary(u)? % OP_KINDS {
            0 => Op::Read {
                device: device(u)?,
                offset: u8::arbitrary(u)?,
                size: u8::arbitrary(u)? % (MAX_ACCESS + 1),
            },
            1 => Op::Write {
                device: device(u)?,
                offset: u8::arbitrary(u)?,
                data: bytes(u, MAX_ACCESS)?,
            },
            2 => Op::SerialInput(bytes(u, MAX_SERIAL_INPUT)?),
            3 => Op::CtrlAltDel,
            4 => Op::InjectKeys(bytes(u, MAX_KEYS)?),
            5 => Op::AdvanceClock {
                micros: u32::arbitrary(u)?,
            },
            6 => Op::SetClock {
                secs: u64::arbitrary(u)?,
            },
            _ => Op::FailInterrupts(u8::arbitrary(u)? & 1 != 0),
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let bytes = |out: &mut Vec<u8>, data: &[u8]| {
            out.push(data.len() as u8);
            out.extend_from_slice(data);
        };
        match self {
            Op::Read {
                device,
                offset,
                size,
            } => out.extend_from_slice(&[0, device.index(), *offset, *size]),
            Op::Write {
                device,
                offset,
                data,
            } => {
                out.extend_from_slice(&[1, device.index(), *offset]);
                bytes(out, data);
            }
            Op::SerialInput(data) => {
                out.push(2);
                bytes(out, data);
            }
            Op::CtrlAltDel => out.push(3),
            Op::InjectKeys(codes) => {
                out.push(4);
                bytes(out, codes);
            }
            Op::AdvanceClock { micros } => {
                out.push(5);
                out.extend_from_slice(&micros.to_le_bytes());
            }
            Op::SetClock { secs } => {
                out.push(6);
                out.extend_from_slice(&secs.to_le_bytes());
            }
            Op::FailInterrupts(fail) => out.extend_from_slice(&[7, u8::from(*fail)]),
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

/// One set of devices, as a VMM would wire them.
struct Devices {
    clock: Arc<ManualWallClock>,
    serial_irq: Arc<CountingTrigger>,
    keyboard_irq: Arc<CountingTrigger>,
    serial: SerialDevice<Arc<CountingTrigger>, Vec<u8>>,
    debug_exit: DebugExit,
    i8042: I8042Device<Arc<CountingTrigger>>,
    cmos: CmosRtc<Arc<ManualWallClock>>,
}

impl Devices {
    fn new() -> Self {
        let clock = Arc::new(ManualWallClock::new(Duration::from_secs(START_SECS)));
        let serial_irq = Arc::new(CountingTrigger::new());
        let keyboard_irq = Arc::new(CountingTrigger::new());
        Self {
            serial: SerialDevice::new(Arc::clone(&serial_irq), Vec::new()),
            debug_exit: DebugExit::new(),
            i8042: I8042Device::new(Arc::clone(&keyboard_irq)),
            cmos: CmosRtc::with_clock(Arc::clone(&clock), 3 << 30, 1 << 30),
            clock,
            serial_irq,
            keyboard_irq,
        }
    }

    fn device(&self, device: Device) -> &dyn PioDevice {
        match device {
            Device::Serial => &self.serial,
            Device::DebugExit => &self.debug_exit,
            Device::I8042 => &self.i8042,
            Device::Cmos => &self.cmos,
        }
    }
}

/// What a key injection did, comparable across the two sets.
fn injection_outcome(result: Result<(), I8042Error>) -> Option<String> {
    result.err().map(|err| err.to_string())
}

struct Harness {
    a: Devices,
    b: Devices,
    /// Accesses per device, in [`Device::index`] order: (reads, writes).
    accesses: [(u64, u64); 4],
}

impl Harness {
    fn new() -> Self {
        Self {
            a: Devices::new(),
            b: Devices::new(),
            accesses: [(0, 0); 4],
        }
    }

    fn read(&mut self, device: Device, offset: u8, size: u8) {
        let offset = offset_of(offset);
        let mut zeros = vec![0x00; usize::from(size)];
        let mut ones = vec![0xFF; usize::from(size)];
        self.a
            .device(device)
            .pio_read(PioAddress(device.base()), offset, &mut zeros);
        self.b
            .device(device)
            .pio_read(PioAddress(device.base()), offset, &mut ones);
        assert_eq!(
            zeros, ones,
            "{device:?} read at {offset:#x} left bytes unfilled or differs"
        );
        self.accesses[usize::from(device.index())].0 += 1;
    }

    fn write(&mut self, device: Device, offset: u8, data: &[u8]) {
        let offset = offset_of(offset);
        let base = PioAddress(device.base());
        let action = self.a.device(device).pio_write(base, offset, data);
        let again = self.b.device(device).pio_write(base, offset, data);
        assert_eq!(action, again);
        self.accesses[usize::from(device.index())].1 += 1;
        match device {
            Device::DebugExit if data.is_empty() => assert_eq!(action, DeviceAction::Resume),
            Device::DebugExit => {
                let mut value = [0u8; 4];
                for (dst, src) in value.iter_mut().zip(data) {
                    *dst = *src;
                }
                assert_eq!(
                    action,
                    DeviceAction::Stop(StopReason::GuestExit(u32::from_le_bytes(value)))
                );
            }
            Device::I8042 => assert!(matches!(
                action,
                DeviceAction::Resume | DeviceAction::Stop(StopReason::Reset)
            )),
            Device::Serial | Device::Cmos => assert_eq!(action, DeviceAction::Resume),
        }
    }

    fn serial_input(&mut self, input: &[u8]) {
        let room = self.a.serial.fifo_capacity();
        let taken = self.a.serial.enqueue_input(input);
        assert_eq!(taken, self.b.serial.enqueue_input(input));
        assert!(taken <= input.len() && taken <= room);
        assert_eq!(self.a.serial.fifo_capacity(), room - taken);
    }

    fn inject(&mut self, codes: Option<&[u8]>) {
        let (a, b) = match codes {
            Some(codes) => (
                self.a.i8042.inject_scancodes(codes),
                self.b.i8042.inject_scancodes(codes),
            ),
            None => (
                self.a.i8042.trigger_ctrl_alt_del(),
                self.b.i8042.trigger_ctrl_alt_del(),
            ),
        };
        assert_eq!(injection_outcome(a), injection_outcome(b));
    }

    fn clock(&mut self, f: impl Fn(&ManualWallClock)) {
        f(&self.a.clock);
        f(&self.b.clock);
    }

    fn fail_interrupts(&mut self, fail: bool) {
        for set in [&self.a, &self.b] {
            set.serial_irq.set_failing(fail);
            set.keyboard_irq.set_failing(fail);
        }
    }

    fn check(&self) {
        check_rtc(&self.a.cmos);
        for set in [&self.a, &self.b] {
            let written = set.serial.with_output(|out| out.len() as u64);
            assert_eq!(set.serial.bytes_written(), written);
            assert_eq!(set.serial.bytes_lost(), 0);
            assert_eq!(set.serial.first_output_at().is_some(), written > 0);
            for device in DEVICES {
                let stats = match device {
                    Device::Serial => set.serial.stats(),
                    Device::DebugExit => set.debug_exit.stats(),
                    Device::I8042 => set.i8042.stats(),
                    Device::Cmos => set.cmos.stats(),
                };
                let (reads, writes) = self.accesses[usize::from(device.index())];
                assert_eq!((stats.reads, stats.writes), (reads, writes), "{device:?}");
            }
        }
        assert_eq!(
            self.a.serial_irq.edges() + self.a.keyboard_irq.edges(),
            self.b.serial_irq.edges() + self.b.keyboard_irq.edges()
        );
    }
}

/// The RTC's time registers hold valid values for the current mode, and the status registers
/// behave.
fn check_rtc(cmos: &CmosRtc<Arc<ManualWallClock>>) {
    let b = cmos.register(REG_B);
    let decode = |raw: u8| {
        if b & REG_B_BINARY != 0 {
            Some(raw)
        } else {
            let (high, low) = (raw >> 4, raw & 0x0F);
            (high <= 9 && low <= 9).then_some(high * 10 + low)
        }
    };
    for (index, lo, hi) in [
        (0x00, 0, 59),
        (0x02, 0, 59),
        (0x06, 1, 7),
        (0x07, 1, 31),
        (0x08, 1, 12),
        (0x09, 0, 99),
        (0x32, 0, 99),
    ] {
        let raw = cmos.register(index);
        assert!(
            decode(raw).is_some_and(|v| (lo..=hi).contains(&v)),
            "CMOS register {index:#x} = {raw:#x} with B = {b:#x}"
        );
    }
    let hour = cmos.register(0x04);
    let valid_hour = if b & REG_B_24H != 0 {
        decode(hour).is_some_and(|h| h <= 23)
    } else {
        decode(hour & 0x7F).is_some_and(|h| (1..=12).contains(&h))
    };
    assert!(valid_hour, "CMOS hour {hour:#x} with B = {b:#x}");
    if b & REG_B_SET != 0 {
        assert_eq!(cmos.register(REG_A) & REG_A_UIP, 0);
    }
    assert_eq!(cmos.register(REG_D), 0x80);
}

/// Target body.
pub fn run(data: &[u8]) {
    let mut h = Harness::new();
    for op in parse(data) {
        match op {
            Op::Read {
                device,
                offset,
                size,
            } => h.read(device, offset, size),
            Op::Write {
                device,
                offset,
                data,
            } => h.write(device, offset, &data),
            Op::SerialInput(input) => h.serial_input(&input),
            Op::CtrlAltDel => h.inject(None),
            Op::InjectKeys(codes) => h.inject(Some(&codes)),
            Op::AdvanceClock { micros } => {
                h.clock(|c| c.advance(Duration::from_micros(u64::from(micros))))
            }
            Op::SetClock { secs } => h.clock(|c| c.set(Duration::from_secs(secs))),
            Op::FailInterrupts(fail) => h.fail_interrupts(fail),
        }
        h.check();
    }
}

/// Named seed inputs: small, meaningful scenarios that reach every device and operation.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use Device::{Cmos, DebugExit, I8042, Serial};
    let r = |device, offset, size| Op::Read {
        device,
        offset,
        size,
    };
    let w = |device, offset, data: &[u8]| Op::Write {
        device,
        offset,
        data: data.to_vec(),
    };
    // CMOS register write and read: index at offset 0, data at offset 1.
    let cmos_w = |index: u8, value: u8| [w(Cmos, 0, &[index]), w(Cmos, 1, &[value])];
    let cmos_r = |index: u8| [w(Cmos, 0, &[index]), r(Cmos, 1, 1)];

    let mut serial_hello = vec![w(Serial, 1, &[0x03])];
    serial_hello.extend(b"hello\n".iter().map(|&b| w(Serial, 0, &[b])));
    serial_hello.extend([
        r(Serial, 5, 1),
        r(Serial, 2, 1),
        Op::SerialInput(b"typed".to_vec()),
        r(Serial, 5, 1),
        r(Serial, 0, 1),
        r(Serial, 0, 4),
        Op::SerialInput(vec![b'x'; 80]),
        Op::SerialInput(b"more".to_vec()),
    ]);

    let serial_dlab_loopback = vec![
        w(Serial, 3, &[0x80]),
        w(Serial, 0, &[0x01, 0x00]),
        r(Serial, 0, 2),
        w(Serial, 3, &[0x03]),
        w(Serial, 4, &[0x10]),
        w(Serial, 0, b"L"),
        r(Serial, 0, 1),
        r(Serial, 6, 1),
        w(Serial, 7, &[0x5A]),
        r(Serial, 7, 1),
        Op::FailInterrupts(true),
        w(Serial, 4, &[0x08]),
        w(Serial, 1, &[0x0F]),
        Op::SerialInput(b"lost irq".to_vec()),
        Op::FailInterrupts(false),
    ];

    let debug_exit = vec![
        w(DebugExit, 0, &[0x10]),
        w(DebugExit, 1, &[0x34, 0x12]),
        w(DebugExit, 3, &[1, 0, 0, 0x80]),
        w(DebugExit, 0, &[1, 2, 3, 4, 5, 6, 7, 8]),
        w(DebugExit, 0, &[]),
        r(DebugExit, 0, 4),
    ];

    // The sequence Linux's i8042 driver and atkbd go through, then a reboot.
    let i8042_linux_probe = vec![
        r(I8042, 4, 1),
        w(I8042, 4, &[0xAA]),
        r(I8042, 0, 1),
        w(I8042, 4, &[0x20]),
        r(I8042, 0, 1),
        w(I8042, 4, &[0x60]),
        w(I8042, 0, &[0x45]),
        w(I8042, 4, &[0xD3]),
        w(I8042, 0, &[0xF0]),
        r(I8042, 4, 1),
        r(I8042, 0, 1),
        w(I8042, 4, &[0xA9]),
        r(I8042, 0, 1),
        w(I8042, 0, &[0xF2]),
        r(I8042, 0, 1),
        r(I8042, 0, 1),
        r(I8042, 0, 1),
        w(I8042, 0, &[0xED]),
        w(I8042, 0, &[0x02]),
        w(I8042, 0, &[0xF4]),
        Op::CtrlAltDel,
        r(I8042, 0, 8),
        Op::InjectKeys(vec![0x1C, 0xF0, 0x1C]),
        w(I8042, 4, &[0xFE]),
    ];

    let i8042_output_port = vec![
        w(I8042, 4, &[0xD0]),
        r(I8042, 0, 1),
        w(I8042, 4, &[0xD1]),
        w(I8042, 0, &[0xDF]),
        w(I8042, 4, &[0xD2]),
        w(I8042, 0, &[0x33]),
        w(I8042, 4, &[0xD4]),
        w(I8042, 0, &[0xFF]),
        w(I8042, 0, &[0xF5]),
        Op::InjectKeys(vec![0x1C]),
        Op::InjectKeys(vec![0; 20]),
        w(I8042, 4, &[0xD1]),
        w(I8042, 0, &[0x00]),
    ];

    let mut cmos_set_time = Vec::new();
    cmos_set_time.extend(cmos_w(0x0B, 0x82));
    for (index, value) in [
        (0x32, 0x20),
        (0x09, 0x24),
        (0x08, 0x02),
        (0x07, 0x29),
        (0x04, 0x23),
        (0x02, 0x59),
        (0x00, 0x58),
    ] {
        cmos_set_time.extend(cmos_w(index, value));
    }
    cmos_set_time.extend(cmos_w(0x0B, 0x02));
    cmos_set_time.push(Op::AdvanceClock { micros: 3_000_000 });
    for index in [
        0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32, 0x0A, 0x0C, 0x0D,
    ] {
        cmos_set_time.extend(cmos_r(index));
    }
    cmos_set_time.extend(cmos_w(0x0B, 0x04));
    cmos_set_time.extend(cmos_r(0x04));
    cmos_set_time.extend(cmos_w(0x04, 0x8C));
    cmos_set_time.extend(cmos_w(0x00, 0x99));

    let mut cmos_alarm_periodic = Vec::new();
    cmos_alarm_periodic.extend(cmos_w(0x01, 0xC0));
    cmos_alarm_periodic.extend(cmos_w(0x03, 0x14));
    cmos_alarm_periodic.extend(cmos_w(0x05, 0xFF));
    cmos_alarm_periodic.extend(cmos_w(0x0B, 0x72));
    cmos_alarm_periodic.extend(cmos_w(0x0A, 0x2F));
    cmos_alarm_periodic.push(Op::AdvanceClock { micros: 500_000 });
    cmos_alarm_periodic.extend(cmos_r(0x0C));
    cmos_alarm_periodic.push(Op::AdvanceClock { micros: 60_000_000 });
    cmos_alarm_periodic.extend(cmos_r(0x0C));
    // Into the last 244 µs of the second: UIP reads set.
    cmos_alarm_periodic.push(Op::AdvanceClock { micros: 499_800 });
    cmos_alarm_periodic.extend(cmos_r(0x0A));

    let cmos_nvram = vec![
        w(Cmos, 0, &[0x40, 0x77]),
        w(Cmos, 0, &[0x80 | 0x40]),
        r(Cmos, 0, 2),
        w(Cmos, 2, &[0x05, 0x99]),
        r(Cmos, 2, 2),
        r(Cmos, 0, 8),
        w(Cmos, 0, &[0x34]),
        r(Cmos, 1, 1),
        w(Cmos, 0, &[0x5B]),
        r(Cmos, 1, 1),
    ];

    let clock_extremes = vec![
        Op::SetClock { secs: u64::MAX },
        w(Cmos, 0, &[0x09]),
        r(Cmos, 1, 1),
        w(Cmos, 1, &[0x00]),
        Op::SetClock { secs: 0 },
        w(Cmos, 0, &[0x32]),
        w(Cmos, 1, &[0x00]),
        w(Cmos, 0, &[0x0C]),
        r(Cmos, 1, 1),
        Op::AdvanceClock { micros: u32::MAX },
        r(Cmos, 1, 1),
    ];

    let mut odd_accesses = Vec::new();
    for device in DEVICES {
        for offset in [7, 8, 15, 0xC0, 0xFF] {
            for size in [0, 1, 3, 8] {
                odd_accesses.push(r(device, offset, size));
            }
            odd_accesses.push(w(device, offset, &[]));
            odd_accesses.push(w(device, offset, &[0x01, 0x02, 0x03]));
        }
    }

    vec![
        ("serial_hello", encode(&serial_hello)),
        ("serial_dlab_loopback", encode(&serial_dlab_loopback)),
        ("debug_exit", encode(&debug_exit)),
        ("i8042_linux_probe", encode(&i8042_linux_probe)),
        ("i8042_output_port", encode(&i8042_output_port)),
        ("cmos_set_time", encode(&cmos_set_time)),
        ("cmos_alarm_periodic", encode(&cmos_alarm_periodic)),
        ("cmos_nvram", encode(&cmos_nvram)),
        ("clock_extremes", encode(&clock_extremes)),
        ("odd_accesses", encode(&odd_accesses)),
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
        seed_files::replay("legacy_devices", &seeds(), true, run);
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
        assert_eq!(offset_of(0x1F), 15);
        assert_eq!(offset_of(0xC0), 0xC0C0);
        assert_eq!(offset_of(0xFF), 0xFFFF);
    }

    /// Writes the seed files; run with `cargo test -- --ignored write_seeds`.
    #[test]
    #[ignore]
    fn write_seeds() {
        seed_files::write("legacy_devices", &seeds());
    }
}
