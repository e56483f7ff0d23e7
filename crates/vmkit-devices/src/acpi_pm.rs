//! The ACPI power-management registers of a hardware-reduced platform: sleep control, sleep
//! status and reset (ACPI 6.x §4.8.3.6 and §4.8.3.7).
//!
//! A hardware-reduced FADT points the guest at three 8-bit registers in system I/O space
//! (`SLEEP_CONTROL_REG`, `SLEEP_STATUS_REG`, `RESET_REG`, each a GAS with bit width
//! [`REGISTER_BIT_WIDTH`]), announces [`RESET_VALUE`] as `RESET_VALUE`, and its DSDT names the
//! soft-off sleep type in the `_S5` package ([`S5_SLEEP_TYPE`]). The constants here are the ones
//! a VMM hands its table builder, so the tables and the device cannot disagree.
//!
//! The device decodes offsets from the base it is registered at ([`ACPI_PM_PORT`] by default;
//! any base works), in a block of [`ACPI_PM_PORT_LEN`] = 4 ports, so a naturally aligned
//! 32-bit access at the base stays inside it:
//!
//! | offset | port (default) | register | reads | writes |
//! |---|---|---|---|---|
//! | 0 | 0x600 | sleep control | 0 | [`SLP_EN`] with SLP_TYP [`S5_SLEEP_TYPE`] stops the VM with [`StopReason::PowerOff`]; [`SLP_EN`] with another type is refused with an immediate wake (sets [`WAK_STS`]); without [`SLP_EN`] ignored |
//! | 1 | 0x601 | sleep status | [`WAK_STS`] when set, else 0 | a 1 in bit 7 clears [`WAK_STS`] (write-1-to-clear); other bits are reserved |
//! | 2 | 0x602 | reset | 0 | [`RESET_VALUE`] stops the VM with [`StopReason::Reset`]; other values ignored |
//! | 3 | 0x603 | reserved | [`OPEN_BUS`] | ignored |
//! | 4 and up | — | none | [`OPEN_BUS`] | ignored |
//!
//! Only the soft-off state is supported: a guest that sets [`SLP_EN`] with any other sleep type
//! (one it took for S1–S4, or a type no `_Sx` package names) finds [`WAK_STS`] set at once, as if a wake event had ended the sleep immediately, so the loop in
//! which an OS waits for the wake ends instead of spinning forever. Each refusal is counted
//! ([`AcpiPmStats::unsupported_sleeps`]) and logged at `warn` level, rate-limited.
//!
//! Like the other legacy devices, an access wider than one byte is split into byte accesses at
//! consecutive offsets, lowest byte first; the first byte that stops the VM decides the action,
//! and the remaining bytes are still applied. Wide accesses are counted
//! ([`AcpiPmStats::wide_accesses`]). Bytes outside every register read [`OPEN_BUS`] and are
//! counted as ignored, as are writes that change nothing; an empty access (no bytes) is counted
//! as one ignored access.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use log::{debug, warn};
use vmkit_exits::{
    Clock, DeviceAction, LogLimit, MonotonicClock, PioAddress, PioDevice, RateLimiter, StopReason,
};

use crate::io::{IoCounters, IoStats, OPEN_BUS, read_bytewise, write_bytewise};

/// The default base port of the register block.
pub const ACPI_PM_PORT: u16 = 0x600;
/// The size of the register block, in ports: the three registers and one reserved port.
pub const ACPI_PM_PORT_LEN: u16 = 4;

/// The offset of the sleep control register in the block.
pub const SLEEP_CONTROL_OFFSET: u16 = 0;
/// The offset of the sleep status register in the block.
pub const SLEEP_STATUS_OFFSET: u16 = 1;
/// The offset of the reset register in the block.
pub const RESET_OFFSET: u16 = 2;

/// The FADT's `SLEEP_CONTROL_REG` address with the default base.
pub const SLEEP_CONTROL_PORT: u16 = ACPI_PM_PORT + SLEEP_CONTROL_OFFSET;
/// The FADT's `SLEEP_STATUS_REG` address with the default base.
pub const SLEEP_STATUS_PORT: u16 = ACPI_PM_PORT + SLEEP_STATUS_OFFSET;
/// The FADT's `RESET_REG` address with the default base.
pub const RESET_PORT: u16 = ACPI_PM_PORT + RESET_OFFSET;

/// The bit width of each register, as its GAS announces it (accessed one byte at a time).
pub const REGISTER_BIT_WIDTH: u8 = 8;

/// The value the FADT's `RESET_VALUE` announces: writing it to the reset register resets.
pub const RESET_VALUE: u8 = 1;
/// The soft-off (S5) sleep type, as the DSDT's `_S5` package gives it.
pub const S5_SLEEP_TYPE: u8 = 5;

/// Sleep control: the position of the SLP_TYPx field (bits 2..=4).
pub const SLP_TYP_SHIFT: u32 = 2;
/// Sleep control: the SLP_TYPx field.
pub const SLP_TYP_MASK: u8 = 0x07 << SLP_TYP_SHIFT;
/// Sleep control: SLP_EN, enter the sleep state given by SLP_TYPx.
pub const SLP_EN: u8 = 1 << 5;
/// Sleep status: WAK_STS, the system woke (write 1 to clear).
pub const WAK_STS: u8 = 1 << 7;

/// The sleep control value that enters sleep type `sleep_type` (its low three bits).
pub const fn sleep_control_value(sleep_type: u8) -> u8 {
    ((sleep_type << SLP_TYP_SHIFT) & SLP_TYP_MASK) | SLP_EN
}

// Every register lies inside the block the VMM registers.
const _: () = assert!(RESET_OFFSET < ACPI_PM_PORT_LEN);

/// The offsets as positions of the byte-wise split.
const SLEEP_CONTROL: u32 = SLEEP_CONTROL_OFFSET as u32;
const SLEEP_STATUS: u32 = SLEEP_STATUS_OFFSET as u32;
const RESET: u32 = RESET_OFFSET as u32;

/// Counts of the guest's accesses to an [`AcpiPmDevice`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AcpiPmStats {
    /// Reads, writes, and bytes that hit no register or changed nothing.
    pub io: IoStats,
    /// Sleep requests for a state other than S5, answered with an immediate wake.
    pub unsupported_sleeps: u64,
    /// Bytes written to the reset register other than [`RESET_VALUE`] (also in `io.ignored`).
    pub ignored_reset_values: u64,
    /// Accesses wider than one byte (split into byte accesses).
    pub wide_accesses: u64,
    /// Warning lines logged about unsupported sleep requests.
    pub log_lines: u64,
    /// Warning lines the rate limit suppressed.
    pub log_lines_suppressed: u64,
}

/// The sleep control, sleep status and reset registers of a hardware-reduced ACPI platform.
#[derive(Debug)]
pub struct AcpiPmDevice {
    wake_status: AtomicBool,
    counters: IoCounters,
    unsupported_sleeps: AtomicU64,
    ignored_reset_values: AtomicU64,
    wide_accesses: AtomicU64,
    log: RateLimiter,
}

impl Default for AcpiPmDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl AcpiPmDevice {
    /// A device with [`WAK_STS`] clear that logs unsupported sleep requests at the default
    /// [`LogLimit`] on the monotonic clock.
    pub fn new() -> Self {
        Self::with_log_limit(LogLimit::default(), Arc::new(MonotonicClock))
    }

    /// A device that logs unsupported sleep requests at most at `limit`, timed by `clock`.
    pub fn with_log_limit(limit: LogLimit, clock: Arc<dyn Clock>) -> Self {
        Self {
            wake_status: AtomicBool::new(false),
            counters: IoCounters::default(),
            unsupported_sleeps: AtomicU64::new(0),
            ignored_reset_values: AtomicU64::new(0),
            wide_accesses: AtomicU64::new(0),
            log: RateLimiter::new(limit, clock),
        }
    }

    /// Whether [`WAK_STS`] is set.
    pub fn wake_status(&self) -> bool {
        self.wake_status.load(Ordering::Relaxed)
    }

    /// Counts of the guest's accesses.
    pub fn stats(&self) -> AcpiPmStats {
        AcpiPmStats {
            io: self.counters.snapshot(),
            unsupported_sleeps: self.unsupported_sleeps.load(Ordering::Relaxed),
            ignored_reset_values: self.ignored_reset_values.load(Ordering::Relaxed),
            wide_accesses: self.wide_accesses.load(Ordering::Relaxed),
            log_lines: self.log.allowed(),
            log_lines_suppressed: self.log.suppressed(),
        }
    }

    /// Counts an access that is empty (as ignored) or wider than a byte; returns whether it has
    /// bytes to handle.
    fn classify(&self, len: usize) -> bool {
        match len {
            0 => {
                self.counters.ignored();
                false
            }
            1 => true,
            _ => {
                self.wide_accesses.fetch_add(1, Ordering::Relaxed);
                true
            }
        }
    }

    fn read_register(&self, position: u32) -> u8 {
        match position {
            SLEEP_STATUS if self.wake_status() => WAK_STS,
            SLEEP_CONTROL | SLEEP_STATUS | RESET => 0,
            _ => {
                self.counters.ignored();
                OPEN_BUS
            }
        }
    }

    fn write_register(&self, position: u32, value: u8) -> Option<DeviceAction> {
        match position {
            SLEEP_CONTROL => self.sleep_control(value),
            SLEEP_STATUS => {
                if value & WAK_STS != 0 {
                    self.wake_status.store(false, Ordering::Relaxed);
                } else {
                    self.counters.ignored();
                }
                None
            }
            RESET if value == RESET_VALUE => {
                debug!("acpi-pm: guest wrote the reset value");
                Some(DeviceAction::Stop(StopReason::Reset))
            }
            RESET => {
                debug!("acpi-pm: ignored reset register value {value:#x}");
                self.ignored_reset_values.fetch_add(1, Ordering::Relaxed);
                self.counters.ignored();
                None
            }
            _ => {
                debug!("acpi-pm: ignored write of {value:#x} at offset {position:#x}");
                self.counters.ignored();
                None
            }
        }
    }

    fn sleep_control(&self, value: u8) -> Option<DeviceAction> {
        if value & SLP_EN == 0 {
            // SLP_TYPx acts only together with SLP_EN; the register keeps nothing.
            self.counters.ignored();
            return None;
        }
        let sleep_type = (value & SLP_TYP_MASK) >> SLP_TYP_SHIFT;
        if sleep_type == S5_SLEEP_TYPE {
            debug!("acpi-pm: guest entered S5 (soft off)");
            return Some(DeviceAction::Stop(StopReason::PowerOff));
        }
        self.unsupported_sleeps.fetch_add(1, Ordering::Relaxed);
        self.wake_status.store(true, Ordering::Relaxed);
        if let Some(suppressed) = self.log.check() {
            warn!(
                "acpi-pm: sleep type {sleep_type} is not supported, the guest wakes at once{}",
                Suppressed(suppressed)
            );
        }
        None
    }
}

/// Prints ` (N similar lines suppressed)` after a log line when N is not 0.
struct Suppressed(u64);

impl fmt::Display for Suppressed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => Ok(()),
            n => write!(f, " ({n} similar lines suppressed)"),
        }
    }
}

impl PioDevice for AcpiPmDevice {
    /// Fills every byte: sleep status reads [`WAK_STS`] or 0, sleep control and reset read 0,
    /// other offsets [`OPEN_BUS`].
    fn pio_read(&self, _base: PioAddress, offset: u16, data: &mut [u8]) {
        self.counters.read();
        if self.classify(data.len()) {
            read_bytewise(u32::from(offset), data, |position| {
                self.read_register(position)
            });
        }
    }

    /// Applies every byte at its offset; the first byte that stops the VM decides the action.
    fn pio_write(&self, _base: PioAddress, offset: u16, data: &[u8]) -> DeviceAction {
        self.counters.write();
        if !self.classify(data.len()) {
            return DeviceAction::Resume;
        }
        write_bytewise(u32::from(offset), data, |position, value| {
            self.write_register(position, value)
        })
        .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use vmkit_exits::ManualClock;

    use super::*;

    fn read(dev: &AcpiPmDevice, offset: u16) -> u8 {
        let mut data = [0xAA];
        dev.pio_read(PioAddress(ACPI_PM_PORT), offset, &mut data);
        data[0]
    }

    fn write(dev: &AcpiPmDevice, offset: u16, value: u8) -> DeviceAction {
        dev.pio_write(PioAddress(ACPI_PM_PORT), offset, &[value])
    }

    const POWER_OFF: DeviceAction = DeviceAction::Stop(StopReason::PowerOff);
    const RESET_ACTION: DeviceAction = DeviceAction::Stop(StopReason::Reset);

    #[test]
    fn constants_match_the_fadt_layout() {
        assert_eq!(
            (SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT, RESET_PORT),
            (0x600, 0x601, 0x602)
        );
        assert_eq!(sleep_control_value(S5_SLEEP_TYPE), 0x34);
        assert_eq!(sleep_control_value(0xFF), SLP_TYP_MASK | SLP_EN);
        assert_eq!(SLP_TYP_MASK, 0x1C);
    }

    #[test]
    fn s5_with_slp_en_powers_off() {
        let dev = AcpiPmDevice::new();
        assert_eq!(
            write(
                &dev,
                SLEEP_CONTROL_OFFSET,
                sleep_control_value(S5_SLEEP_TYPE)
            ),
            POWER_OFF
        );
        // Reserved bits do not matter.
        assert_eq!(write(&dev, SLEEP_CONTROL_OFFSET, 0x34 | 0xC3), POWER_OFF);
        // Any base: the device decodes offsets.
        assert_eq!(dev.pio_write(PioAddress(0x1234), 0, &[0x34]), POWER_OFF);
        assert_eq!(dev.stats().unsupported_sleeps, 0);
        assert!(!dev.wake_status());
    }

    #[test]
    fn sleep_type_without_slp_en_is_ignored() {
        let dev = AcpiPmDevice::new();
        assert_eq!(
            write(&dev, SLEEP_CONTROL_OFFSET, S5_SLEEP_TYPE << SLP_TYP_SHIFT),
            DeviceAction::Resume
        );
        assert_eq!(write(&dev, SLEEP_CONTROL_OFFSET, 0), DeviceAction::Resume);
        let stats = dev.stats();
        assert_eq!((stats.io.writes, stats.io.ignored), (2, 2));
        assert!(!dev.wake_status());
    }

    #[test]
    fn other_sleep_types_wake_at_once_and_are_counted() {
        let dev = AcpiPmDevice::new();
        for sleep_type in [0, 1, 2, 3, 4, 6, 7] {
            // What an OS does: clear WAK_STS, enter the state, wait for WAK_STS.
            assert_eq!(
                write(&dev, SLEEP_STATUS_OFFSET, WAK_STS),
                DeviceAction::Resume
            );
            assert_eq!(read(&dev, SLEEP_STATUS_OFFSET), 0);
            assert_eq!(
                write(&dev, SLEEP_CONTROL_OFFSET, sleep_control_value(sleep_type)),
                DeviceAction::Resume
            );
            assert_eq!(
                read(&dev, SLEEP_STATUS_OFFSET),
                WAK_STS,
                "type {sleep_type}"
            );
            assert!(dev.wake_status());
        }
        let stats = dev.stats();
        assert_eq!(stats.unsupported_sleeps, 7);
        assert_eq!(stats.io.ignored, 0);
        assert_eq!(stats.log_lines, 7);
    }

    #[test]
    fn wake_status_is_write_one_to_clear() {
        let dev = AcpiPmDevice::new();
        write(&dev, SLEEP_CONTROL_OFFSET, sleep_control_value(3));
        // Writing 0 or reserved bits leaves WAK_STS set.
        assert_eq!(write(&dev, SLEEP_STATUS_OFFSET, 0x7F), DeviceAction::Resume);
        assert_eq!(read(&dev, SLEEP_STATUS_OFFSET), WAK_STS);
        assert_eq!(dev.stats().io.ignored, 1);
        assert_eq!(write(&dev, SLEEP_STATUS_OFFSET, 0xFF), DeviceAction::Resume);
        assert_eq!(read(&dev, SLEEP_STATUS_OFFSET), 0);
        // Clearing a clear bit is harmless.
        write(&dev, SLEEP_STATUS_OFFSET, WAK_STS);
        assert!(!dev.wake_status());
    }

    #[test]
    fn reset_value_resets_and_other_values_are_counted() {
        let dev = AcpiPmDevice::new();
        assert_eq!(write(&dev, RESET_OFFSET, RESET_VALUE), RESET_ACTION);
        for value in [0, 2, 0x06, 0xFE, 0xFF] {
            assert_eq!(write(&dev, RESET_OFFSET, value), DeviceAction::Resume);
        }
        // The reset value elsewhere is no reset.
        assert_eq!(
            write(&dev, SLEEP_STATUS_OFFSET, RESET_VALUE),
            DeviceAction::Resume
        );
        assert_eq!(write(&dev, 3, RESET_VALUE), DeviceAction::Resume);
        let stats = dev.stats();
        assert_eq!(stats.ignored_reset_values, 5);
        assert_eq!(stats.io.ignored, 7);
    }

    #[test]
    fn control_and_reset_read_zero_and_the_rest_is_open_bus() {
        let dev = AcpiPmDevice::new();
        assert_eq!(read(&dev, SLEEP_CONTROL_OFFSET), 0);
        assert_eq!(read(&dev, SLEEP_STATUS_OFFSET), 0);
        assert_eq!(read(&dev, RESET_OFFSET), 0);
        for offset in [3, 4, 0x100, u16::MAX] {
            assert_eq!(read(&dev, offset), OPEN_BUS);
            assert_eq!(write(&dev, offset, 0x34), DeviceAction::Resume);
        }
        let stats = dev.stats();
        assert_eq!((stats.io.reads, stats.io.writes), (7, 4));
        assert_eq!(stats.io.ignored, 8);
    }

    #[test]
    fn wide_accesses_are_split_into_bytes_and_counted() {
        let dev = AcpiPmDevice::new();
        write(&dev, SLEEP_CONTROL_OFFSET, sleep_control_value(1));
        let mut data = [0u8; 4];
        dev.pio_read(PioAddress(ACPI_PM_PORT), 0, &mut data);
        assert_eq!(data, [0, WAK_STS, 0, OPEN_BUS]);
        let mut data = [0u8; 8];
        dev.pio_read(PioAddress(ACPI_PM_PORT), 2, &mut data);
        assert_eq!(
            data,
            [
                0, OPEN_BUS, OPEN_BUS, OPEN_BUS, OPEN_BUS, OPEN_BUS, OPEN_BUS, OPEN_BUS
            ]
        );
        // A 16-bit write of 0x8034 at the base: S5 in the control byte, WAK_STS cleared by
        // the status byte.
        assert_eq!(
            dev.pio_write(PioAddress(ACPI_PM_PORT), 0, &[0x34, WAK_STS]),
            POWER_OFF
        );
        assert!(!dev.wake_status());
        // The first stopping byte decides: power-off before reset.
        assert_eq!(
            dev.pio_write(PioAddress(ACPI_PM_PORT), 0, &[0x34, 0, RESET_VALUE, 0]),
            POWER_OFF
        );
        assert_eq!(
            dev.pio_write(PioAddress(ACPI_PM_PORT), 1, &[0, RESET_VALUE]),
            RESET_ACTION
        );
        // Past port 0xFFFF positions do not wrap back to the registers.
        let mut data = [0u8; 4];
        dev.pio_read(PioAddress(ACPI_PM_PORT), u16::MAX, &mut data);
        assert_eq!(data, [OPEN_BUS; 4]);
        assert_eq!(
            dev.pio_write(
                PioAddress(ACPI_PM_PORT),
                u16::MAX,
                &[0, 0x34, 0, RESET_VALUE]
            ),
            DeviceAction::Resume
        );
        assert_eq!(dev.stats().wide_accesses, 7);
    }

    #[test]
    fn empty_accesses_are_ignored() {
        let dev = AcpiPmDevice::new();
        let mut empty: [u8; 0] = [];
        dev.pio_read(PioAddress(ACPI_PM_PORT), 0, &mut empty);
        assert_eq!(
            dev.pio_write(PioAddress(ACPI_PM_PORT), 0, &[]),
            DeviceAction::Resume
        );
        let stats = dev.stats();
        assert_eq!(
            stats.io,
            IoStats {
                reads: 1,
                writes: 1,
                ignored: 2
            }
        );
        assert_eq!(stats.wide_accesses, 0);
    }

    #[test]
    fn unsupported_sleep_warnings_are_rate_limited() {
        let clock = Arc::new(ManualClock::new());
        let dev = AcpiPmDevice::with_log_limit(
            LogLimit {
                per_second: 1,
                burst: 2,
            },
            clock.clone(),
        );
        for _ in 0..5 {
            write(&dev, SLEEP_CONTROL_OFFSET, sleep_control_value(3));
        }
        let stats = dev.stats();
        assert_eq!((stats.log_lines, stats.log_lines_suppressed), (2, 3));
        clock.advance(Duration::from_secs(1));
        write(&dev, SLEEP_CONTROL_OFFSET, sleep_control_value(3));
        let stats = dev.stats();
        assert_eq!((stats.log_lines, stats.log_lines_suppressed), (3, 3));
        assert_eq!(stats.unsupported_sleeps, 6);
    }

    #[test]
    fn suppressed_lines_are_mentioned() {
        assert_eq!(Suppressed(0).to_string(), "");
        assert_eq!(Suppressed(4).to_string(), " (4 similar lines suppressed)");
    }

    #[test]
    fn default_is_a_fresh_device() {
        let dev = AcpiPmDevice::default();
        assert!(!dev.wake_status());
        assert_eq!(dev.stats(), AcpiPmStats::default());
    }
}
