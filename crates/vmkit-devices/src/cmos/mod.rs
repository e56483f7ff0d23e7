//! The CMOS RTC and NVRAM (an MC146818-compatible clock at ports 0x70/0x71).
//!
//! Port layout (offsets from [`CMOS_PORT`]): 0 index (bit 7 disables NMI; reads return
//! [`OPEN_BUS`], the register is write-only), 1 data, 2 extended-bank index, 3 extended-bank data.
//! Register the device with [`CMOS_PORT_LEN`] = 4 ports for both banks, or 2 for bank 0 only.
//! Wider accesses are split into byte accesses at consecutive ports.
//!
//! Bank 0 (128 bytes):
//! - 0x00–0x09 time, alarm and date registers, computed from the injected [`WallClock`] (UTC) plus
//!   the offset the guest set, in BCD or binary per register B's DM bit and 12- or 24-hour per its
//!   24/12 bit. The day of the week is derived from the date (writes to it are ignored). Writes of
//!   values outside a field's range are ignored and counted, so every time register always holds
//!   a valid value. Years run 0000–9999 with the century at 0x32.
//! - 0x0A register A: the divider and rate bits are stored; UIP reads 1 only during the last
//!   244 µs of each second (never while SET holds the clock), so polling loops end at once.
//! - 0x0B register B: SET freezes the time registers for the guest to rewrite (and clears UIE);
//!   clearing it restarts the clock at the written time.
//! - 0x0C register C: the update-ended, alarm and periodic flags latch lazily, computed from the
//!   clock when read; IRQF reports an enabled one; reading clears them. No interrupt is raised
//!   (IRQ 8 is not wired): guests that poll register C see the flags.
//! - 0x0D register D: VRT (valid RAM and time) always set.
//! - 0x0E–0x7F NVRAM, with the memory sizes SeaBIOS and Cloud Hypervisor read: base memory
//!   (0x15/0x16, KiB), extended memory (0x17/0x18 and 0x30/0x31, KiB above 1 MiB, at most
//!   65535), RAM between 16 MiB and the 4 GiB hole (0x34/0x35, 64 KiB units) and RAM above
//!   4 GiB (0x5B–0x5D, 64 KiB units), and the checksum of 0x10–0x2D at 0x2E/0x2F.
//!
//! Bank 1 (128 bytes, ports 0x72/0x73): plain NVRAM.

mod calendar;
mod clock;

use std::sync::{Mutex, MutexGuard, PoisonError};

use log::debug;
use vmkit_exits::{DeviceAction, PioAddress, PioDevice};

use crate::io::{IoCounters, IoStats, OPEN_BUS, read_bytewise, write_bytewise};
use calendar::{DateTime, MAX_UNIX, MIN_UNIX, from_bcd, to_bcd};
pub use clock::{ManualWallClock, RecordingClock, SystemClock, WallClock};

/// The CMOS index port.
pub const CMOS_PORT: u16 = 0x70;
/// Ports of both banks (0x70–0x73).
pub const CMOS_PORT_LEN: u16 = 4;
/// Ports of the first bank (index 0x70, data 0x71): the RTC's ports as a PC's firmware tables
/// (the DSDT's `PNP0B00` device) describe them.
pub const CMOS_BANK0_PORT_LEN: u16 = 2;
/// The ISA IRQ of a PC's RTC, as firmware tables describe it. This model raises no interrupt
/// (its periodic, alarm and update flags are polled), so nothing is wired to it.
pub const RTC_IRQ: u32 = 8;

/// Register index: seconds.
pub const REG_SECONDS: u8 = 0x00;
/// Register index: seconds alarm.
pub const REG_SECONDS_ALARM: u8 = 0x01;
/// Register index: minutes.
pub const REG_MINUTES: u8 = 0x02;
/// Register index: minutes alarm.
pub const REG_MINUTES_ALARM: u8 = 0x03;
/// Register index: hours.
pub const REG_HOURS: u8 = 0x04;
/// Register index: hours alarm.
pub const REG_HOURS_ALARM: u8 = 0x05;
/// Register index: day of the week (1 = Sunday).
pub const REG_WEEKDAY: u8 = 0x06;
/// Register index: day of the month.
pub const REG_DAY: u8 = 0x07;
/// Register index: month.
pub const REG_MONTH: u8 = 0x08;
/// Register index: year within the century.
pub const REG_YEAR: u8 = 0x09;
/// Register index: status register A.
pub const REG_A: u8 = 0x0A;
/// Register index: status register B.
pub const REG_B: u8 = 0x0B;
/// Register index: status register C.
pub const REG_C: u8 = 0x0C;
/// Register index: status register D.
pub const REG_D: u8 = 0x0D;
/// Register index: century.
pub const REG_CENTURY: u8 = 0x32;

/// Register A: update in progress.
pub const REG_A_UIP: u8 = 0x80;
/// Register B: SET (hold the clock).
pub const REG_B_SET: u8 = 0x80;
/// Register B: periodic interrupt enable.
pub const REG_B_PIE: u8 = 0x40;
/// Register B: alarm interrupt enable.
pub const REG_B_AIE: u8 = 0x20;
/// Register B: update-ended interrupt enable.
pub const REG_B_UIE: u8 = 0x10;
/// Register B: data mode binary (clear: BCD).
pub const REG_B_BINARY: u8 = 0x04;
/// Register B: 24-hour mode (clear: 12-hour).
pub const REG_B_24H: u8 = 0x02;
/// Register C: an enabled interrupt flag is set.
pub const REG_C_IRQF: u8 = 0x80;
/// Register C: periodic flag.
pub const REG_C_PF: u8 = 0x40;
/// Register C: alarm flag.
pub const REG_C_AF: u8 = 0x20;
/// Register C: update-ended flag.
pub const REG_C_UF: u8 = 0x10;
/// Register D: valid RAM and time.
pub const REG_D_VRT: u8 = 0x80;

const REG_A_DEFAULT: u8 = 0x26;
const REG_B_DEFAULT: u8 = REG_B_24H;
const NANOS_PER_SEC: i128 = 1_000_000_000;
/// UIP rises this long before each update.
const UIP_WINDOW_NANOS: i128 = 244_000;
/// Alarm field values with both top bits set match any value.
const ALARM_DONT_CARE: u8 = 0xC0;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const UNITS_64K: u64 = 64 * KIB;

/// Errors of the VMM-side NVRAM access.
#[derive(Debug, displaydoc::Display, thiserror::Error, PartialEq, Eq)]
#[ignore_extra_doc_attributes]
pub enum CmosError {
    /// CMOS index {0:#x} is a clock or status register, not NVRAM
    ClockRegister(u8),
}

#[derive(Debug)]
struct State {
    index: u8,
    nmi_disabled: bool,
    extended_index: u8,
    bank0: [u8; 128],
    bank1: [u8; 128],
    reg_a: u8,
    reg_b: u8,
    /// Guest RTC time minus the clock's time, in nanoseconds.
    offset_nanos: i128,
    /// The time fields while SET holds the clock.
    held: Option<DateTime>,
    /// Register C flags latched and not yet read.
    flags: u8,
    /// Clock and guest time up to which events are latched.
    checked_clock_nanos: i128,
    checked_guest_nanos: i128,
}

/// Whether a byte index is a clock or status register rather than NVRAM.
fn is_clock_register(index: u8) -> bool {
    index <= REG_D || index == REG_CENTURY
}

impl State {
    fn new(low_ram: u64, high_ram: u64, clock_nanos: i128) -> Self {
        let mut bank0 = [0u8; 128];
        let base_kib = (low_ram / KIB).min(640);
        let extended_kib = (low_ram.saturating_sub(MIB) / KIB).min(0xFFFF);
        let above_16m = (low_ram.saturating_sub(16 * MIB) / UNITS_64K).min(0xFFFF);
        let above_4g = (high_ram / UNITS_64K).min(0xFF_FFFF);
        let [b0, b1, ..] = base_kib.to_le_bytes();
        let [e0, e1, ..] = extended_kib.to_le_bytes();
        let [m0, m1, ..] = above_16m.to_le_bytes();
        let [h0, h1, h2, ..] = above_4g.to_le_bytes();
        bank0[0x15..=0x18].copy_from_slice(&[b0, b1, e0, e1]);
        bank0[0x30..=0x31].copy_from_slice(&[e0, e1]);
        bank0[0x34..=0x35].copy_from_slice(&[m0, m1]);
        bank0[0x5B..=0x5D].copy_from_slice(&[h0, h1, h2]);
        let checksum: u16 = bank0[0x10..=0x2D].iter().map(|&b| u16::from(b)).sum();
        bank0[0x2E..=0x2F].copy_from_slice(&checksum.to_be_bytes());
        Self {
            index: 0,
            nmi_disabled: false,
            extended_index: 0,
            bank0,
            bank1: [0; 128],
            reg_a: REG_A_DEFAULT,
            reg_b: REG_B_DEFAULT,
            offset_nanos: 0,
            held: None,
            flags: 0,
            checked_clock_nanos: clock_nanos,
            checked_guest_nanos: clock_nanos,
        }
    }

    fn guest_nanos(&self, clock_nanos: i128) -> i128 {
        clock_nanos + self.offset_nanos
    }

    /// The time the guest sees: held fields, or the running clock.
    fn fields(&self, clock_nanos: i128) -> DateTime {
        self.held.unwrap_or_else(|| {
            let secs = self.guest_nanos(clock_nanos).div_euclid(NANOS_PER_SEC);
            DateTime::from_unix(i64::try_from(secs).unwrap_or(if secs < 0 {
                MIN_UNIX
            } else {
                MAX_UNIX
            }))
        })
    }

    fn binary(&self) -> bool {
        self.reg_b & REG_B_BINARY != 0
    }

    fn hours_24(&self) -> bool {
        self.reg_b & REG_B_24H != 0
    }

    fn encode(&self, value: u8) -> u8 {
        if self.binary() { value } else { to_bcd(value) }
    }

    /// A field value written by the guest, if it is a valid encoding below `limit`.
    fn decode(&self, raw: u8, limit: u8) -> Option<u8> {
        let value = if self.binary() {
            Some(raw)
        } else {
            from_bcd(raw)
        };
        value.filter(|&v| v < limit)
    }

    fn encode_hour(&self, hour: u8) -> u8 {
        if self.hours_24() {
            return self.encode(hour);
        }
        let pm = if hour >= 12 { 0x80 } else { 0 };
        let hour12 = match hour % 12 {
            0 => 12,
            h => h,
        };
        self.encode(hour12) | pm
    }

    fn decode_hour(&self, raw: u8) -> Option<u8> {
        if self.hours_24() {
            return self.decode(raw, 24);
        }
        let hour12 = self.decode(raw & 0x7F, 13).filter(|&h| h >= 1)?;
        let pm = if raw & 0x80 != 0 { 12 } else { 0 };
        Some(hour12 % 12 + pm)
    }

    fn read_time(&self, index: u8, clock_nanos: i128) -> u8 {
        let t = self.fields(clock_nanos);
        // Both fit: year is 0–9999 after clamping.
        let (century, year) = (t.year.div_euclid(100) as u8, t.year.rem_euclid(100) as u8);
        match index {
            REG_SECONDS => self.encode(t.second),
            REG_MINUTES => self.encode(t.minute),
            REG_HOURS => self.encode_hour(t.hour),
            REG_WEEKDAY => self.encode(t.weekday()),
            REG_DAY => self.encode(t.day),
            REG_MONTH => self.encode(t.month),
            REG_YEAR => self.encode(year),
            _ => self.encode(century % 100),
        }
    }

    /// Applies a guest write to a time register; `false` if the value was rejected.
    fn write_time(&mut self, index: u8, raw: u8, clock_nanos: i128) -> bool {
        let mut t = self.fields(clock_nanos);
        let applied = match index {
            REG_SECONDS => self.decode(raw, 60).map(|v| t.second = v),
            REG_MINUTES => self.decode(raw, 60).map(|v| t.minute = v),
            REG_HOURS => self.decode_hour(raw).map(|v| t.hour = v),
            REG_DAY => self.decode(raw, 32).filter(|&v| v >= 1).map(|v| t.day = v),
            REG_MONTH => self
                .decode(raw, 13)
                .filter(|&v| v >= 1)
                .map(|v| t.month = v),
            REG_YEAR => self
                .decode(raw, 100)
                .map(|v| t.year = t.year.div_euclid(100) * 100 + i64::from(v)),
            REG_CENTURY => self
                .decode(raw, 100)
                .map(|v| t.year = i64::from(v) * 100 + t.year.rem_euclid(100)),
            // The day of the week is derived from the date.
            _ => None,
        };
        if applied.is_none() {
            return false;
        }
        if self.held.is_some() {
            self.held = Some(t);
        } else {
            let sub_second = self.guest_nanos(clock_nanos).rem_euclid(NANOS_PER_SEC);
            self.restart_at(t, sub_second, clock_nanos);
        }
        true
    }

    /// Makes the guest clock read `t` plus `sub_second` nanoseconds now.
    fn restart_at(&mut self, t: DateTime, sub_second: i128, clock_nanos: i128) {
        let secs = t.to_unix().clamp(MIN_UNIX, MAX_UNIX);
        self.offset_nanos = i128::from(secs) * NANOS_PER_SEC + sub_second - clock_nanos;
        // A jump of the guest clock is not an update: events restart from here.
        self.checked_guest_nanos = self.guest_nanos(clock_nanos);
    }

    fn write_reg_b(&mut self, value: u8, clock_nanos: i128) {
        let mut value = value;
        let was_set = self.reg_b & REG_B_SET != 0;
        if value & REG_B_SET != 0 {
            if !was_set {
                self.latch_events(clock_nanos);
                self.held = Some(self.fields(clock_nanos));
            }
            value &= !REG_B_UIE;
        } else if let Some(held) = self.held.take() {
            self.restart_at(held, 0, clock_nanos);
        }
        self.reg_b = value;
    }

    fn reg_a(&self, clock_nanos: i128) -> u8 {
        let sub_second = self.guest_nanos(clock_nanos).rem_euclid(NANOS_PER_SEC);
        let updating = self.held.is_none() && sub_second >= NANOS_PER_SEC - UIP_WINDOW_NANOS;
        self.reg_a | if updating { REG_A_UIP } else { 0 }
    }

    /// The periodic rate of register A's RS bits, in hertz.
    fn periodic_hz(&self) -> Option<i128> {
        match self.reg_a & 0x0F {
            0 => None,
            1 => Some(256),
            2 => Some(128),
            rate => Some(1 << (16 - rate)),
        }
    }

    /// The register C flags for events since the last check.
    fn pending_events(&self, clock_nanos: i128) -> u8 {
        let mut flags = 0;
        if let Some(hz) = self.periodic_hz() {
            let ticks = |nanos: i128| (nanos * hz).div_euclid(NANOS_PER_SEC);
            if ticks(clock_nanos) > ticks(self.checked_clock_nanos) {
                flags |= REG_C_PF;
            }
        }
        if self.held.is_none() {
            let from = self.checked_guest_nanos.div_euclid(NANOS_PER_SEC);
            let to = self.guest_nanos(clock_nanos).div_euclid(NANOS_PER_SEC);
            if to > from {
                flags |= REG_C_UF;
                if self.alarm_between(from, to) {
                    flags |= REG_C_AF;
                }
            }
        }
        flags
    }

    fn latch_events(&mut self, clock_nanos: i128) {
        self.flags |= self.pending_events(clock_nanos);
        self.checked_clock_nanos = clock_nanos;
        self.checked_guest_nanos = self.guest_nanos(clock_nanos);
    }

    /// An alarm field: `Some(None)` matches anything, `Some(Some(v))` matches `v`, `None` never
    /// matches (not a valid encoding).
    fn alarm_field(&self, raw: u8, decode: impl Fn(u8) -> Option<u8>) -> Option<Option<u8>> {
        if raw & ALARM_DONT_CARE == ALARM_DONT_CARE {
            Some(None)
        } else {
            decode(raw).map(Some)
        }
    }

    /// Whether the alarm matches any second in `(from, to]` (guest seconds since the epoch).
    fn alarm_between(&self, from: i128, to: i128) -> bool {
        let fields = (
            self.alarm_field(self.bank0[usize::from(REG_HOURS_ALARM)], |r| {
                self.decode_hour(r)
            }),
            self.alarm_field(self.bank0[usize::from(REG_MINUTES_ALARM)], |r| {
                self.decode(r, 60)
            }),
            self.alarm_field(self.bank0[usize::from(REG_SECONDS_ALARM)], |r| {
                self.decode(r, 60)
            }),
        );
        let (Some(hour), Some(minute), Some(second)) = fields else {
            return false;
        };
        if to - from >= i128::from(calendar::SECS_PER_DAY) {
            return true;
        }
        let matches = |field: Option<u8>, value: i128| field.is_none_or(|v| i128::from(v) == value);
        // At most 1441 minutes to look at.
        let first = from + 1;
        let mut minute_start = first.div_euclid(60) * 60;
        while minute_start <= to {
            let time_of_day = minute_start.rem_euclid(i128::from(calendar::SECS_PER_DAY));
            if matches(hour, time_of_day / 3600) && matches(minute, time_of_day / 60 % 60) {
                let (lo, hi) = (first.max(minute_start), to.min(minute_start + 59));
                match second {
                    None => return true,
                    Some(s) if (lo..=hi).contains(&(minute_start + i128::from(s))) => {
                        return true;
                    }
                    Some(_) => {}
                }
            }
            minute_start += 60;
        }
        false
    }

    /// Register C as a read returns it; `clear` makes it the real read that clears the flags.
    fn reg_c(&mut self, clock_nanos: i128, clear: bool) -> u8 {
        let flags = self.flags | self.pending_events(clock_nanos);
        let irqf = if flags & self.reg_b & (REG_C_PF | REG_C_AF | REG_C_UF) != 0 {
            REG_C_IRQF
        } else {
            0
        };
        if clear {
            self.latch_events(clock_nanos);
            self.flags = 0;
        }
        flags | irqf
    }

    fn read_bank0(&mut self, index: u8, clock_nanos: i128, clear: bool) -> u8 {
        match index {
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_WEEKDAY | REG_DAY | REG_MONTH
            | REG_YEAR | REG_CENTURY => self.read_time(index, clock_nanos),
            REG_A => self.reg_a(clock_nanos),
            REG_B => self.reg_b,
            REG_C => self.reg_c(clock_nanos, clear),
            REG_D => REG_D_VRT,
            _ => self.bank0[usize::from(index & 0x7F)],
        }
    }

    /// Applies a guest write to bank 0; `false` if it was ignored.
    fn write_bank0(&mut self, index: u8, value: u8, clock_nanos: i128) -> bool {
        match index {
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_WEEKDAY | REG_DAY | REG_MONTH
            | REG_YEAR | REG_CENTURY => self.write_time(index, value, clock_nanos),
            REG_A => {
                // Keep the periodic phase: events up to now count at the old rate.
                self.latch_events(clock_nanos);
                self.reg_a = value & !REG_A_UIP;
                true
            }
            REG_B => {
                self.write_reg_b(value, clock_nanos);
                true
            }
            REG_C | REG_D => false,
            _ => {
                self.bank0[usize::from(index & 0x7F)] = value;
                true
            }
        }
    }
}

/// The CMOS RTC and NVRAM.
#[derive(Debug)]
pub struct CmosRtc<C: WallClock = SystemClock> {
    state: Mutex<State>,
    clock: C,
    counters: IoCounters,
}

impl CmosRtc<SystemClock> {
    /// A CMOS on the host clock, reporting `low_ram` bytes of RAM below the 4 GiB hole and
    /// `high_ram` bytes above 4 GiB.
    pub fn new(low_ram: u64, high_ram: u64) -> Self {
        Self::with_clock(SystemClock, low_ram, high_ram)
    }
}

impl<C: WallClock> CmosRtc<C> {
    /// A CMOS on `clock`, reporting `low_ram` bytes of RAM below the 4 GiB hole and `high_ram`
    /// bytes above 4 GiB.
    pub fn with_clock(clock: C, low_ram: u64, high_ram: u64) -> Self {
        let now = Self::nanos(&clock);
        Self {
            state: Mutex::new(State::new(low_ram, high_ram, now)),
            clock,
            counters: IoCounters::default(),
        }
    }

    fn nanos(clock: &C) -> i128 {
        // A Duration's nanoseconds always fit in an i128.
        i128::try_from(clock.now().as_nanos()).unwrap_or(i128::MAX / 2)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The byte at `index` as a guest read would return it, without side effects (register C
    /// keeps its flags). 0x00–0x7F is bank 0, 0x80–0xFF the extended bank.
    pub fn register(&self, index: u8) -> u8 {
        let now = Self::nanos(&self.clock);
        let mut state = self.state();
        if index < 0x80 {
            state.read_bank0(index, now, false)
        } else {
            state.bank1[usize::from(index & 0x7F)]
        }
    }

    /// Sets an NVRAM byte (0x0E–0x7F except the century 0x32 in bank 0, 0x80–0xFF for the
    /// extended bank), for example a value firmware expects.
    pub fn set_nvram(&self, index: u8, value: u8) -> Result<(), CmosError> {
        if is_clock_register(index) {
            return Err(CmosError::ClockRegister(index));
        }
        let mut state = self.state();
        let slot = usize::from(index & 0x7F);
        if index < 0x80 {
            state.bank0[slot] = value;
        } else {
            state.bank1[slot] = value;
        }
        Ok(())
    }

    /// Whether the guest disabled NMIs through bit 7 of the index port.
    pub fn nmi_disabled(&self) -> bool {
        self.state().nmi_disabled
    }

    /// Counts of the guest's accesses.
    pub fn stats(&self) -> IoStats {
        self.counters.snapshot()
    }

    fn ignored(&self, what: &str, port_offset: u32) {
        debug!("cmos: ignored {what} at offset {port_offset:#x}");
        self.counters.ignored();
    }
}

impl<C: WallClock> PioDevice for CmosRtc<C> {
    fn pio_read(&self, _base: PioAddress, offset: u16, data: &mut [u8]) {
        self.counters.read();
        let now = Self::nanos(&self.clock);
        let mut state = self.state();
        read_bytewise(offset.into(), data, |offset| match offset {
            1 => {
                let index = state.index;
                state.read_bank0(index, now, true)
            }
            3 => state.bank1[usize::from(state.extended_index)],
            // The index registers are write-only.
            0 | 2 => OPEN_BUS,
            _ => {
                self.ignored("read", offset);
                OPEN_BUS
            }
        });
    }

    fn pio_write(&self, _base: PioAddress, offset: u16, data: &[u8]) -> DeviceAction {
        self.counters.write();
        let now = Self::nanos(&self.clock);
        let mut state = self.state();
        write_bytewise(offset.into(), data, |offset, value| {
            match offset {
                0 => {
                    state.index = value & 0x7F;
                    state.nmi_disabled = value & 0x80 != 0;
                }
                1 => {
                    let index = state.index;
                    if !state.write_bank0(index, value, now) {
                        self.ignored("register write", offset);
                    }
                }
                2 => state.extended_index = value & 0x7F,
                3 => {
                    let index = usize::from(state.extended_index);
                    state.bank1[index] = value;
                }
                _ => self.ignored("write", offset),
            }
            None::<()>
        });
        DeviceAction::Resume
    }
}

#[cfg(test)]
mod tests;
