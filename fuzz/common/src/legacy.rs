//! Fuzz surface `legacy_devices`: the 16550 UART, the i8042, the CMOS RTC and the debug-exit
//! port on vmkit-fuzzing's device harness: guest reads and writes through the port bus and
//! handed to the devices directly (any size and offset), interleaved with what the VMM does to
//! them (serial input, key injection, clock movements, as the fixture's own operations) and
//! interrupt lines that fail.
//!
//! The devices are registered as the reference VMM registers them: the UART at 0x3F8 (8 ports),
//! the debug-exit port at 0xF4 (4), the i8042 data port at 0x60 and command port at 0x64 (one
//! each), the CMOS at 0x70 (4). There is no reference model of their answers: the harness runs
//! two instances in lockstep, and the fixture's model only counts the accesses each region
//! claimed. Checked after every operation:
//!
//! - nothing panics; reads fill the whole buffer and are deterministic (one instance reads into
//!   0x00 bytes, the other into 0xFF bytes, and they agree); both instances claim the same
//!   accesses, answer writes alike and make the same interrupt-line calls: the harness;
//! - the work of one access is bounded: at most two interrupt-line calls
//!   ([`Fixture::max_line_calls_per_access`]: the UART's received-data and transmitter-empty
//!   conditions, each raised at most once by one access; the keyboard's once);
//! - the debug-exit port stops the VM with exactly the value written (the first four bytes,
//!   little-endian), and an empty write continues it; only the i8042 may ask for a reset, and
//!   no other device stops the VM: [`Fixture::check_access`] on every write answer;
//! - serial input never exceeds the FIFO's room, and the room shrinks by what was taken; the
//!   input taken and the outcome of each key injection are the same on both instances (the
//!   answers of the fixture's own operations, which the harness compares);
//! - serial output is counted exactly: what the guest transmitted reached the output, none was
//!   lost, and the time of the first output is known exactly when there was output;
//! - the RTC's time registers always hold valid BCD or binary values for the current mode,
//!   UIP is never set while SET holds the clock, and register D reports valid time (checked
//!   after every step that could change them: a write to the CMOS, a clock movement);
//! - every device counted each access its regions claimed: [`Fixture::check`] against the
//!   model's counts.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use vmkit_devices::cmos::{
    CMOS_PORT, CMOS_PORT_LEN, REG_A, REG_A_UIP, REG_B, REG_B_24H, REG_B_BINARY, REG_B_SET, REG_D,
};
use vmkit_devices::debug_exit::{DEBUG_EXIT_PORT, DEBUG_EXIT_PORT_LEN};
use vmkit_devices::i8042::{I8042_COMMAND_PORT, I8042_DATA_PORT};
use vmkit_devices::serial::{COM1_PORT, SERIAL_PORT_LEN};
use vmkit_devices::{CmosRtc, DebugExit, I8042Device, I8042Error, ManualWallClock, SerialDevice};
use vmkit_exits::{DeviceAction, StopReason};
use vmkit_fuzzing::{
    Access, Answer, Claimed, DeviceFuzzer, Fixture, Line, Offset, Op, Setup, encode,
};

/// The clock every instance starts at (2023-11-14T22:13:20Z).
const START_SECS: u64 = 1_700_000_000;

/// The fixture's own operations, by tag (taken modulo 5). The VMM pushes the operation's bytes
/// into the UART's receive FIFO; answers how many the FIFO took.
pub const SERIAL_INPUT: u8 = 0;
/// The VMM injects Ctrl+Alt+Delete; answers the injection's outcome ([`injection_answer`]).
pub const CTRL_ALT_DEL: u8 = 1;
/// The VMM injects the operation's bytes as scancodes; answers the injection's outcome.
pub const INJECT_KEYS: u8 = 2;
/// The clock moves forward by the microseconds in the first four bytes (little-endian, missing
/// bytes 0).
pub const ADVANCE_CLOCK: u8 = 3;
/// The clock jumps to the seconds since the epoch in the first eight bytes (little-endian,
/// missing bytes 0; any value, absurd ones included).
pub const SET_CLOCK: u8 = 4;
const USER_OPS: u8 = 5;

/// The regions, in the order the fixture registers them.
const SERIAL: usize = 0;
const DEBUG_EXIT: usize = 1;
const I8042_DATA: usize = 2;
const I8042_COMMAND: usize = 3;
const CMOS: usize = 4;
const REGIONS: usize = 5;

/// The fixture's model: the accesses each region claimed, (reads, writes), and how often the
/// RTC's time and mode may have changed (a write to it, a clock movement).
#[derive(Debug, Default)]
pub struct AccessCounts {
    accesses: [(u64, u64); REGIONS],
    rtc_changes: u64,
}

impl vmkit_fuzzing::Model for AccessCounts {
    // No model of the answers: two instances in lockstep, compared with each other.
    const COMPARES: bool = false;

    fn read(&mut self, region: usize, _offset: u64, _data: &mut [u8]) {
        self.accesses[region].0 += 1;
    }

    fn write(&mut self, region: usize, _offset: u64, _data: &[u8]) -> DeviceAction {
        self.accesses[region].1 += 1;
        self.rtc_changes += u64::from(region == CMOS);
        DeviceAction::Resume
    }

    fn user_op(&mut self, tag: u8, _data: &[u8]) -> u64 {
        self.rtc_changes += u64::from(matches!(tag % USER_OPS, ADVANCE_CLOCK | SET_CLOCK));
        0
    }
}

/// The devices on the port bus, as the reference VMM wires them.
pub struct LegacyFixture;

/// One instance.
pub struct LegacyDevices {
    /// The model's count of RTC changes when the RTC was last checked: the RTC's time and mode
    /// change only through writes to its ports and the clock, and reading them all is the
    /// dearest check.
    rtc_checked: Cell<Option<u64>>,
    clock: Arc<ManualWallClock>,
    serial: Arc<SerialDevice<Line, Vec<u8>>>,
    debug_exit: Arc<DebugExit>,
    i8042: Arc<I8042Device<Line>>,
    cmos: Arc<CmosRtc<Arc<ManualWallClock>>>,
}

/// The answer of a key injection: 0 when the keys were queued, otherwise a code per error
/// (with the queue's room and the bytes needed for a full queue).
pub fn injection_answer(result: Result<(), I8042Error>) -> u64 {
    match result {
        Ok(()) => 0,
        Err(I8042Error::ScanningDisabled) => 1,
        Err(I8042Error::Interrupt(_)) => 2,
        Err(I8042Error::QueueFull { free, needed }) => {
            3 | (free as u64) << 8 | (needed as u64) << 32
        }
    }
}

/// `N` little-endian bytes from the start of `data`, missing ones 0.
fn le_prefix<const N: usize>(data: &[u8]) -> [u8; N] {
    let mut bytes = [0u8; N];
    for (dst, src) in bytes.iter_mut().zip(data) {
        *dst = *src;
    }
    bytes
}

impl Fixture for LegacyFixture {
    type Devices = LegacyDevices;
    type Model = AccessCounts;

    fn build(&self, setup: &mut Setup) -> LegacyDevices {
        let clock = Arc::new(ManualWallClock::new(Duration::from_secs(START_SECS)));
        let serial = Arc::new(SerialDevice::new(setup.interrupt(), Vec::new()));
        let debug_exit = Arc::new(DebugExit::new());
        let i8042 = Arc::new(I8042Device::new(setup.interrupt()));
        let cmos = Arc::new(CmosRtc::with_clock(clock.clone(), 3 << 30, 1 << 30));
        setup.pio("serial", COM1_PORT, SERIAL_PORT_LEN, serial.clone());
        let debug_exit_len = DEBUG_EXIT_PORT_LEN;
        setup.pio(
            "debug_exit",
            DEBUG_EXIT_PORT,
            debug_exit_len,
            debug_exit.clone(),
        );
        setup.pio("i8042_data", I8042_DATA_PORT, 1, i8042.clone());
        setup.pio("i8042_command", I8042_COMMAND_PORT, 1, i8042.clone());
        setup.pio("cmos", CMOS_PORT, CMOS_PORT_LEN, cmos.clone());
        LegacyDevices {
            rtc_checked: Cell::new(None),
            clock,
            serial,
            debug_exit,
            i8042,
            cmos,
        }
    }

    fn model(&self) -> AccessCounts {
        AccessCounts::default()
    }

    fn user_op(&self, devices: &LegacyDevices, tag: u8, data: &[u8]) -> u64 {
        match tag % USER_OPS {
            SERIAL_INPUT => {
                let serial = &devices.serial;
                let room = serial.fifo_capacity();
                let taken = serial.enqueue_input(data);
                assert!(taken <= data.len() && taken <= room, "{taken} of {room}");
                assert_eq!(serial.fifo_capacity(), room - taken);
                taken as u64
            }
            CTRL_ALT_DEL => injection_answer(devices.i8042.trigger_ctrl_alt_del()),
            INJECT_KEYS => injection_answer(devices.i8042.inject_scancodes(data)),
            ADVANCE_CLOCK => {
                let micros = u32::from_le_bytes(le_prefix(data));
                devices
                    .clock
                    .advance(Duration::from_micros(u64::from(micros)));
                0
            }
            _ => {
                let secs = u64::from_le_bytes(le_prefix(data));
                devices.clock.set(Duration::from_secs(secs));
                0
            }
        }
    }

    fn check(&self, devices: &LegacyDevices, counts: &AccessCounts) {
        if devices.rtc_checked.replace(Some(counts.rtc_changes)) != Some(counts.rtc_changes) {
            check_rtc(&devices.cmos);
        }
        let serial = &devices.serial;
        let written = serial.with_output(|out| out.len() as u64);
        assert_eq!(serial.bytes_written(), written);
        assert_eq!(serial.bytes_lost(), 0);
        assert_eq!(serial.first_output_at().is_some(), written > 0);
        let [serial, debug_exit, data, command, cmos] = counts.accesses;
        for (name, stats, (reads, writes)) in [
            ("serial", devices.serial.stats(), serial),
            ("debug_exit", devices.debug_exit.stats(), debug_exit),
            (
                "i8042",
                devices.i8042.stats(),
                (data.0 + command.0, data.1 + command.1),
            ),
            ("cmos", devices.cmos.stats(), cmos),
        ] {
            assert_eq!((stats.reads, stats.writes), (reads, writes), "{name}");
        }
    }

    fn check_access(&self, _counts: &AccessCounts, access: &Claimed<'_>) {
        let Answer::Write { data, action } = access.answer else {
            return;
        };
        match access.region {
            DEBUG_EXIT if data.is_empty() => assert_eq!(action, DeviceAction::Resume),
            DEBUG_EXIT => {
                let value = u32::from_le_bytes(le_prefix(data));
                assert_eq!(action, DeviceAction::Stop(StopReason::GuestExit(value)));
            }
            I8042_DATA | I8042_COMMAND => assert!(
                matches!(
                    action,
                    DeviceAction::Resume | DeviceAction::Stop(StopReason::Reset)
                ),
                "{access:?}"
            ),
            _ => assert_eq!(action, DeviceAction::Resume, "{access:?}"),
        }
    }

    fn max_line_calls_per_access(&self) -> u64 {
        2
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
    DeviceFuzzer::new(LegacyFixture).run(data);
}

/// The length of region `region`.
fn region_len(region: usize) -> u16 {
    match region {
        SERIAL => SERIAL_PORT_LEN,
        DEBUG_EXIT => DEBUG_EXIT_PORT_LEN,
        I8042_DATA | I8042_COMMAND => 1,
        _ => CMOS_PORT_LEN,
    }
}

/// An access at `offset` of `region`: through the bus where a guest access of its size lands
/// inside the region (as in a VMM), handed to the device directly otherwise.
fn access(region: usize, offset: u16, access: Access) -> Op {
    let size = access.read.map_or(access.data.len(), usize::from);
    let fits = usize::from(offset) + size <= usize::from(region_len(region));
    if matches!(size, 1 | 2 | 4 | 8) && fits {
        Op::Access(access)
    } else {
        Op::Direct(access)
    }
}

/// Offset `offset` of `region`: from the start up to 8 bytes past the end, as itself (only
/// for direct accesses) beyond.
fn at(region: usize, offset: u16) -> Offset {
    if offset < region_len(region) + 8 {
        Offset::FromStart(offset)
    } else {
        Offset::Absolute(u64::from(offset))
    }
}

fn r(region: usize, offset: u16, size: u8) -> Op {
    let read = Access::read_at(region as u8, at(region, offset), size);
    access(region, offset, read)
}

fn w(region: usize, offset: u16, data: &[u8]) -> Op {
    let write = Access::write_at(region as u8, at(region, offset), data);
    access(region, offset, write)
}

fn user(tag: u8, data: &[u8]) -> Op {
    Op::User {
        tag,
        data: data.to_vec(),
    }
}

fn advance(micros: u32) -> Op {
    user(ADVANCE_CLOCK, &micros.to_le_bytes())
}

fn set_clock(secs: u64) -> Op {
    user(SET_CLOCK, &secs.to_le_bytes())
}

/// Named seed inputs: small, meaningful scenarios that reach every device and operation.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    // CMOS register write and read: index at offset 0, data at offset 1.
    let cmos_w = |index: u8, value: u8| [w(CMOS, 0, &[index]), w(CMOS, 1, &[value])];
    let cmos_r = |index: u8| [w(CMOS, 0, &[index]), r(CMOS, 1, 1)];
    let (data, command) = (I8042_DATA, I8042_COMMAND);

    let mut serial_hello = vec![w(SERIAL, 1, &[0x03])];
    serial_hello.extend(b"hello\n".iter().map(|&b| w(SERIAL, 0, &[b])));
    serial_hello.extend([
        r(SERIAL, 5, 1),
        r(SERIAL, 2, 1),
        user(SERIAL_INPUT, b"typed"),
        r(SERIAL, 5, 1),
        r(SERIAL, 0, 1),
        r(SERIAL, 0, 4),
        user(SERIAL_INPUT, &[b'x'; 64]),
        user(SERIAL_INPUT, b"more"),
    ]);

    let serial_dlab_loopback = vec![
        w(SERIAL, 3, &[0x80]),
        w(SERIAL, 0, &[0x01, 0x00]),
        r(SERIAL, 0, 2),
        w(SERIAL, 3, &[0x03]),
        w(SERIAL, 4, &[0x10]),
        w(SERIAL, 0, b"L"),
        r(SERIAL, 0, 1),
        r(SERIAL, 6, 1),
        w(SERIAL, 7, &[0x5A]),
        r(SERIAL, 7, 1),
        Op::FailInterrupts(true),
        w(SERIAL, 4, &[0x08]),
        w(SERIAL, 1, &[0x0F]),
        user(SERIAL_INPUT, b"lost irq"),
        Op::FailInterrupts(false),
        // Every register in one access, the interrupts enabled on the way.
        w(SERIAL, 0, &[b'Z', 0x0F, 0, 0x03, 0x10, 0, 0, 0xA5]),
        r(SERIAL, 0, 8),
    ];

    let debug_exit = vec![
        w(DEBUG_EXIT, 0, &[0x10]),
        w(DEBUG_EXIT, 1, &[0x34, 0x12]),
        w(DEBUG_EXIT, 3, &[1, 0, 0, 0x80]),
        w(DEBUG_EXIT, 0, &[1, 2, 3, 4, 5, 6, 7, 8]),
        w(DEBUG_EXIT, 0, &[]),
        r(DEBUG_EXIT, 0, 4),
        w(DEBUG_EXIT, 0, &0xDEAD_BEEFu32.to_le_bytes()),
    ];

    // The sequence Linux's i8042 driver and atkbd go through, then a reboot.
    let i8042_linux_probe = vec![
        r(command, 0, 1),
        w(command, 0, &[0xAA]),
        r(data, 0, 1),
        w(command, 0, &[0x20]),
        r(data, 0, 1),
        w(command, 0, &[0x60]),
        w(data, 0, &[0x45]),
        w(command, 0, &[0xD3]),
        w(data, 0, &[0xF0]),
        r(command, 0, 1),
        r(data, 0, 1),
        w(command, 0, &[0xA9]),
        r(data, 0, 1),
        w(data, 0, &[0xF2]),
        r(data, 0, 1),
        r(data, 0, 1),
        r(data, 0, 1),
        w(data, 0, &[0xED]),
        w(data, 0, &[0x02]),
        w(data, 0, &[0xF4]),
        user(CTRL_ALT_DEL, &[]),
        r(data, 0, 8),
        user(INJECT_KEYS, &[0x1C, 0xF0, 0x1C]),
        w(command, 0, &[0xFE]),
    ];

    let i8042_output_port = vec![
        w(command, 0, &[0xD0]),
        r(data, 0, 1),
        w(command, 0, &[0xD1]),
        w(data, 0, &[0xDF]),
        w(command, 0, &[0xD2]),
        w(data, 0, &[0x33]),
        w(command, 0, &[0xD4]),
        w(data, 0, &[0xFF]),
        w(data, 0, &[0xF5]),
        user(INJECT_KEYS, &[0x1C]),
        user(INJECT_KEYS, &[0; 20]),
        w(command, 0, &[0xD1]),
        w(data, 0, &[0x00]),
        // The data and command ports in one access, handed to the controller at once.
        w(data, 0, &[0xF4, 0, 0, 0, 0xAE]),
        Op::Burst {
            count: 20,
            access: Access::read_at(data as u8, Offset::FromStart(0), 1),
        },
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
    cmos_set_time.push(advance(3_000_000));
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
    cmos_alarm_periodic.push(advance(500_000));
    cmos_alarm_periodic.extend(cmos_r(0x0C));
    cmos_alarm_periodic.push(advance(60_000_000));
    cmos_alarm_periodic.extend(cmos_r(0x0C));
    // Into the last 244 µs of the second: UIP reads set.
    cmos_alarm_periodic.push(advance(499_800));
    cmos_alarm_periodic.extend(cmos_r(0x0A));

    let cmos_nvram = vec![
        w(CMOS, 0, &[0x40, 0x77]),
        w(CMOS, 0, &[0x80 | 0x40]),
        r(CMOS, 0, 2),
        w(CMOS, 2, &[0x05, 0x99]),
        r(CMOS, 2, 2),
        r(CMOS, 0, 8),
        w(CMOS, 0, &[0x34]),
        r(CMOS, 1, 1),
        w(CMOS, 0, &[0x5B]),
        r(CMOS, 1, 1),
    ];

    let clock_extremes = vec![
        set_clock(u64::MAX),
        w(CMOS, 0, &[0x09]),
        r(CMOS, 1, 1),
        w(CMOS, 1, &[0x00]),
        set_clock(0),
        w(CMOS, 0, &[0x32]),
        w(CMOS, 1, &[0x00]),
        w(CMOS, 0, &[0x0C]),
        r(CMOS, 1, 1),
        advance(u32::MAX),
        r(CMOS, 1, 1),
        Op::Reset,
        w(CMOS, 0, &[0x09]),
        r(CMOS, 1, 1),
    ];

    // Odd sizes at odd offsets, one seed per region: libFuzzer's first length limit is the
    // longest seed's length, and longer inputs make fewer runs.
    let odd_accesses = |region: usize| {
        let mut ops = Vec::new();
        for offset in [7, 8, 15, 0xC0C0, 0xFFFF] {
            for size in [0, 1, 3, 8] {
                ops.push(r(region, offset, size));
            }
            ops.push(w(region, offset, &[]));
            ops.push(w(region, offset, &[0x01, 0x02, 0x03]));
        }
        let before = Offset::BeforeStart(0);
        ops.push(Op::Direct(Access::read_at(region as u8, before, 2)));
        ops.push(Op::Direct(Access::write_at(region as u8, before, &[1, 2])));
        ops.push(Op::Access(Access::read_at(region as u8, before, 2)));
        encode(&ops)
    };

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
        ("odd_serial_accesses", odd_accesses(SERIAL)),
        ("odd_debug_exit_accesses", odd_accesses(DEBUG_EXIT)),
        ("odd_i8042_data_accesses", odd_accesses(I8042_DATA)),
        ("odd_i8042_command_accesses", odd_accesses(I8042_COMMAND)),
        ("odd_cmos_accesses", odd_accesses(CMOS)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed_files;

    /// The seeds taken from the committed recordings: each guest's accesses to the devices'
    /// regions, through the buses, as the fixture registers them.
    fn recorded_seeds() -> Vec<(String, Vec<u8>)> {
        let mut setup = vmkit_fuzzing::Setup::default();
        LegacyFixture.build(&mut setup);
        let max_len = seed_files::recorded_seed_len(&seeds());
        seed_files::recorded(|recording| {
            let ops = vmkit_fuzzing::ops_for_regions(recording, setup.regions());
            seed_files::harness_inputs(&ops, max_len)
        })
    }

    /// Every seed: the written ones and the recorded ones.
    fn all_seeds() -> Vec<(String, Vec<u8>)> {
        seed_files::all(seeds(), recorded_seeds())
    }

    fn seed(name: &str) -> Vec<Op> {
        let (_, bytes) = seeds().into_iter().find(|(n, _)| *n == name).unwrap();
        vmkit_fuzzing::decode(&bytes)
    }

    #[test]
    fn seeds_round_trip_and_pass() {
        for (name, bytes) in seeds() {
            let ops = vmkit_fuzzing::decode(&bytes);
            assert_eq!(encode(&ops), bytes, "{name}");
            run(&bytes);
        }
    }

    #[test]
    fn committed_seeds_replay() {
        seed_files::replay(
            "legacy_devices",
            &seed_files::named(&all_seeds()),
            true,
            run,
        );
    }

    #[test]
    fn seeds_reach_what_they_were_written_for() {
        let fuzzer = DeviceFuzzer::new(LegacyFixture);
        fuzzer.run_ops_then(&seed("serial_hello"), |devices, _| {
            let output = devices.serial.with_output(|out| out.clone());
            assert_eq!(output, b"hello\n");
            // "typed" and as much of the rest as fit; the guest read one byte and four more.
            assert_eq!(devices.serial.fifo_capacity(), 0);
        });
        fuzzer.run_ops_then(&seed("i8042_linux_probe"), |devices, counts| {
            assert_eq!(devices.i8042.leds(), 0x02);
            assert_eq!(counts.accesses[I8042_COMMAND].1, 6);
        });
        fuzzer.run_ops_then(&seed("cmos_set_time"), |devices, _| {
            // 2024-02-29 23:59:58 and three seconds: 1 March, read in binary at the end.
            assert_eq!(devices.cmos.register(0x08), 3);
            assert_eq!(devices.cmos.register(0x09), 24);
        });
        fuzzer.run_ops_then(&seed("debug_exit"), |devices, counts| {
            assert_eq!(devices.debug_exit.stats().writes, 6);
            assert_eq!(counts.accesses[DEBUG_EXIT], (1, 6));
        });
    }

    #[test]
    fn answers_the_fixture_checks_are_caught() {
        // A debug-exit write that stops with another value, and a UART write that stops the
        // VM: the fixture's check of each answer names them.
        let stop = |region, data: &[u8], action| {
            let claimed = Claimed {
                region,
                offset: 0,
                direct: false,
                answer: Answer::Write { data, action },
            };
            std::panic::catch_unwind(|| {
                LegacyFixture.check_access(&AccessCounts::default(), &claimed)
            })
            .is_err()
        };
        let exit = |code| DeviceAction::Stop(StopReason::GuestExit(code));
        assert!(!stop(DEBUG_EXIT, &[0x34, 0x12], exit(0x1234)));
        assert!(stop(DEBUG_EXIT, &[0x34, 0x12], exit(0x34)));
        assert!(stop(DEBUG_EXIT, &[], exit(0)));
        assert!(!stop(
            I8042_COMMAND,
            &[0xFE],
            DeviceAction::Stop(StopReason::Reset)
        ));
        assert!(stop(SERIAL, &[0xFE], DeviceAction::Stop(StopReason::Reset)));
        assert!(stop(CMOS, &[0], DeviceAction::Stop(StopReason::PowerOff)));
    }

    #[test]
    fn recorded_seeds_are_what_the_guests_did() {
        let recorded = recorded_seeds();
        // Every guest prints through the UART: each gives at least its first seed, and each
        // seed's first access is to the UART (the hello guest writes no other device).
        for guest in [
            "assist",
            "blk",
            "exits",
            "hello",
            "hello-poweroff",
            "hostile",
            "paging",
        ] {
            let name = format!("recorded-{guest}-0");
            let (_, bytes) = recorded.iter().find(|(n, _)| *n == name).unwrap();
            let ops = vmkit_fuzzing::decode(bytes);
            assert!(
                matches!(&ops[0], Op::Access(access) if usize::from(access.region) == SERIAL),
                "{name}: {:?}",
                ops[0]
            );
        }
        let fuzzer = DeviceFuzzer::new(LegacyFixture);
        let (_, hello) = recorded
            .iter()
            .find(|(n, _)| n == "recorded-hello-0")
            .unwrap();
        fuzzer.run_ops_then(&vmkit_fuzzing::decode(hello), |devices, _| {
            let printed = devices.serial.with_output(|out| out.clone());
            assert!(!printed.is_empty() && printed.is_ascii(), "{printed:?}");
        });
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        seed_files::odd_inputs(run);
    }

    /// Writes the seed files; run with `cargo test -- --ignored write_seeds`.
    #[test]
    #[ignore]
    fn write_seeds() {
        seed_files::write("legacy_devices", &seed_files::named(&all_seeds()));
    }
}
