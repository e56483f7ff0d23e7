use std::sync::Arc;
use std::time::Duration;

use super::*;

/// 2023-11-14T22:13:20Z, a Tuesday.
const T0: u64 = 1_700_000_000;
const GIB: u64 = 1 << 30;

fn rtc() -> (Arc<ManualWallClock>, CmosRtc<Arc<ManualWallClock>>) {
    let clock = Arc::new(ManualWallClock::new(Duration::from_secs(T0)));
    (
        Arc::clone(&clock),
        CmosRtc::with_clock(clock, 3 * GIB, 4 * GIB),
    )
}

/// An RTC without periodic events (rate 0), so register C shows only updates and alarms.
fn quiet_rtc() -> (Arc<ManualWallClock>, CmosRtc<Arc<ManualWallClock>>) {
    let (clock, dev) = rtc();
    write(&dev, REG_A, 0x20);
    (clock, dev)
}

fn read(dev: &impl PioDevice, index: u8) -> u8 {
    dev.pio_write(PioAddress(CMOS_PORT), 0, &[index]);
    let mut data = [0u8];
    dev.pio_read(PioAddress(CMOS_PORT), 1, &mut data);
    data[0]
}

fn write(dev: &impl PioDevice, index: u8, value: u8) {
    dev.pio_write(PioAddress(CMOS_PORT), 0, &[index]);
    assert_eq!(
        dev.pio_write(PioAddress(CMOS_PORT), 1, &[value]),
        DeviceAction::Resume
    );
}

/// (sec, min, hour, weekday, day, month, year, century) as raw register bytes.
fn time(dev: &impl PioDevice) -> [u8; 8] {
    [0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32].map(|i| read(dev, i))
}

/// Every time register holds a valid value for the current mode.
fn assert_valid_time<C: WallClock>(dev: &CmosRtc<C>) {
    let b = dev.register(REG_B);
    let decode = |raw: u8| {
        if b & REG_B_BINARY != 0 {
            Some(raw)
        } else {
            calendar::from_bcd(raw)
        }
    };
    let in_range = |index: u8, lo: u8, hi: u8| {
        let raw = dev.register(index);
        let v = decode(raw);
        assert!(
            v.is_some_and(|v| (lo..=hi).contains(&v)),
            "register {index:#x} = {raw:#x} (B = {b:#x})"
        );
    };
    in_range(REG_SECONDS, 0, 59);
    in_range(REG_MINUTES, 0, 59);
    in_range(REG_WEEKDAY, 1, 7);
    in_range(REG_DAY, 1, 31);
    in_range(REG_MONTH, 1, 12);
    in_range(REG_YEAR, 0, 99);
    in_range(REG_CENTURY, 0, 99);
    let hour = dev.register(REG_HOURS);
    if b & REG_B_24H != 0 {
        in_range(REG_HOURS, 0, 23);
    } else {
        assert!(decode(hour & 0x7F).is_some_and(|h| (1..=12).contains(&h)));
    }
}

#[test]
fn reads_the_clock_in_bcd_24h_by_default() {
    let (_, dev) = rtc();
    assert_eq!(time(&dev), [0x20, 0x13, 0x22, 0x03, 0x14, 0x11, 0x23, 0x20]);
    assert_eq!(read(&dev, REG_A), REG_A_DEFAULT);
    assert_eq!(read(&dev, REG_B), REG_B_24H);
    assert_eq!(read(&dev, REG_D), REG_D_VRT);
}

#[test]
fn binary_and_12_hour_modes() {
    let (clock, dev) = rtc();
    write(&dev, REG_B, REG_B_BINARY | REG_B_24H);
    assert_eq!(time(&dev), [20, 13, 22, 3, 14, 11, 23, 20]);
    write(&dev, REG_B, REG_B_BINARY);
    assert_eq!(read(&dev, REG_HOURS), 0x80 | 10);
    write(&dev, REG_B, 0);
    assert_eq!(read(&dev, REG_HOURS), 0x90);
    // Midnight is 12 AM, noon 12 PM.
    clock.set(Duration::from_secs(T0 - 22 * 3600));
    assert_eq!(read(&dev, REG_HOURS), 0x12);
    clock.set(Duration::from_secs(T0 - 10 * 3600));
    assert_eq!(read(&dev, REG_HOURS), 0x92);
    // 12-hour writes: 1 AM, 12 AM, 12 PM.
    write(&dev, REG_HOURS, 0x01);
    write(&dev, REG_B, REG_B_24H);
    assert_eq!(read(&dev, REG_HOURS), 0x01);
    write(&dev, REG_B, 0);
    write(&dev, REG_HOURS, 0x12);
    write(&dev, REG_B, REG_B_24H);
    assert_eq!(read(&dev, REG_HOURS), 0x00);
    write(&dev, REG_B, 0);
    write(&dev, REG_HOURS, 0x92);
    write(&dev, REG_B, REG_B_24H);
    assert_eq!(read(&dev, REG_HOURS), 0x12);
}

#[test]
fn the_clock_runs() {
    let (clock, dev) = rtc();
    clock.advance(Duration::from_secs(61));
    assert_eq!(read(&dev, REG_SECONDS), 0x21);
    assert_eq!(read(&dev, REG_MINUTES), 0x14);
    // Two days later is a Thursday.
    clock.advance(Duration::from_secs(2 * 86_400));
    assert_eq!(read(&dev, REG_WEEKDAY), 5);
    assert_eq!(read(&dev, REG_DAY), 0x16);
}

#[test]
fn uip_is_only_set_just_before_an_update() {
    let (clock, dev) = rtc();
    assert_eq!(read(&dev, REG_A) & REG_A_UIP, 0);
    clock.set(Duration::from_secs(T0) + Duration::from_nanos(999_800_000));
    assert_eq!(read(&dev, REG_A) & REG_A_UIP, REG_A_UIP);
    clock.set(Duration::from_secs(T0) + Duration::from_nanos(999_700_000));
    assert_eq!(read(&dev, REG_A) & REG_A_UIP, 0);
    clock.set(Duration::from_secs(T0 + 1));
    assert_eq!(read(&dev, REG_A) & REG_A_UIP, 0);
    // Never while SET holds the clock.
    clock.set(Duration::from_secs(T0) + Duration::from_nanos(999_900_000));
    write(&dev, REG_B, REG_B_SET | REG_B_24H);
    assert_eq!(read(&dev, REG_A) & REG_A_UIP, 0);
    // UIP is read-only; the other bits are stored.
    write(&dev, REG_A, 0xA6);
    assert_eq!(read(&dev, REG_A), 0x26);
}

#[test]
fn set_holds_the_clock_for_rewriting() {
    let (clock, dev) = rtc();
    write(&dev, REG_B, REG_B_SET | REG_B_24H);
    clock.advance(Duration::from_secs(5));
    // Held: still the time SET was written at.
    assert_eq!(read(&dev, REG_SECONDS), 0x20);
    // 2000-02-29 23:59:58.
    for (index, value) in [
        (REG_CENTURY, 0x20),
        (REG_YEAR, 0x00),
        (REG_MONTH, 0x02),
        (REG_DAY, 0x29),
        (REG_HOURS, 0x23),
        (REG_MINUTES, 0x59),
        (REG_SECONDS, 0x58),
    ] {
        write(&dev, index, value);
    }
    assert_eq!(read(&dev, REG_WEEKDAY), 3);
    clock.advance(Duration::from_secs(100));
    assert_eq!(read(&dev, REG_SECONDS), 0x58);
    write(&dev, REG_B, REG_B_24H);
    clock.advance(Duration::from_secs(3));
    // 2000-03-01 00:00:01, a Wednesday.
    assert_eq!(time(&dev), [0x01, 0x00, 0x00, 0x04, 0x01, 0x03, 0x00, 0x20]);
}

#[test]
fn running_writes_keep_the_sub_second_phase() {
    let (clock, dev) = rtc();
    clock.set(Duration::from_secs(T0) + Duration::from_millis(600));
    write(&dev, REG_SECONDS, 0x45);
    assert_eq!(read(&dev, REG_SECONDS), 0x45);
    clock.advance(Duration::from_millis(300));
    assert_eq!(read(&dev, REG_SECONDS), 0x45);
    clock.advance(Duration::from_millis(100));
    assert_eq!(read(&dev, REG_SECONDS), 0x46);
    // Century and year writes while running.
    write(&dev, REG_CENTURY, 0x19);
    write(&dev, REG_YEAR, 0x99);
    assert_eq!(read(&dev, REG_YEAR), 0x99);
    assert_eq!(read(&dev, REG_CENTURY), 0x19);
    // 1999-11-14 was a Sunday.
    assert_eq!(read(&dev, REG_WEEKDAY), 1);
}

#[test]
fn invalid_time_writes_are_ignored_and_counted() {
    let (_, dev) = rtc();
    let before = time(&dev);
    for (index, value) in [
        (REG_SECONDS, 0x5A),
        (REG_SECONDS, 0x60),
        (REG_MINUTES, 0xFF),
        (REG_HOURS, 0x24),
        (REG_DAY, 0x00),
        (REG_DAY, 0x32),
        (REG_MONTH, 0x00),
        (REG_MONTH, 0x13),
        (REG_YEAR, 0xA0),
        (REG_CENTURY, 0x9A),
        (REG_WEEKDAY, 0x01),
        (REG_C, 0xFF),
        (REG_D, 0x00),
    ] {
        write(&dev, index, value);
    }
    assert_eq!(time(&dev), before);
    assert_eq!(dev.stats().ignored, 13);
    // 12-hour mode: hour 0 and 13 do not exist.
    write(&dev, REG_B, 0);
    write(&dev, REG_HOURS, 0x00);
    write(&dev, REG_HOURS, 0x13);
    assert_eq!(read(&dev, REG_HOURS), 0x90);
    // Binary mode: 60 seconds is out of range.
    write(&dev, REG_B, REG_B_BINARY | REG_B_24H);
    write(&dev, REG_SECONDS, 60);
    assert_eq!(read(&dev, REG_SECONDS), 20);
    assert_eq!(read(&dev, REG_D), REG_D_VRT);
}

#[test]
fn day_past_the_month_end_carries_over() {
    let (_, dev) = rtc();
    write(&dev, REG_B, REG_B_SET | REG_B_24H);
    write(&dev, REG_MONTH, 0x02);
    write(&dev, REG_DAY, 0x31);
    // Held values read back as written.
    assert_eq!(read(&dev, REG_DAY), 0x31);
    write(&dev, REG_B, REG_B_24H);
    assert_eq!((read(&dev, REG_MONTH), read(&dev, REG_DAY)), (0x03, 0x03));
}

#[test]
fn update_flag_latches_and_clears() {
    let (clock, dev) = quiet_rtc();
    assert_eq!(read(&dev, REG_C), 0);
    clock.advance(Duration::from_secs(1));
    assert_eq!(dev.register(REG_C), REG_C_UF);
    // Peeking does not clear.
    assert_eq!(read(&dev, REG_C), REG_C_UF);
    assert_eq!(read(&dev, REG_C), 0);
    write(&dev, REG_B, REG_B_UIE | REG_B_24H);
    clock.advance(Duration::from_secs(1));
    assert_eq!(read(&dev, REG_C), REG_C_IRQF | REG_C_UF);
}

#[test]
fn set_clears_uie_and_stops_updates() {
    let (clock, dev) = quiet_rtc();
    write(&dev, REG_B, REG_B_SET | REG_B_UIE | REG_B_24H);
    assert_eq!(read(&dev, REG_B), REG_B_SET | REG_B_24H);
    clock.advance(Duration::from_secs(5));
    assert_eq!(read(&dev, REG_C), 0);
    write(&dev, REG_B, REG_B_24H);
    assert_eq!(read(&dev, REG_C), 0);
    clock.advance(Duration::from_secs(1));
    assert_eq!(read(&dev, REG_C), REG_C_UF);
}

#[test]
fn updates_before_set_stay_latched() {
    let (clock, dev) = quiet_rtc();
    clock.advance(Duration::from_secs(2));
    write(&dev, REG_B, REG_B_SET | REG_B_24H);
    assert_eq!(read(&dev, REG_C), REG_C_UF);
}

#[test]
fn periodic_flag_follows_the_rate() {
    let (clock, dev) = rtc();
    // Rate 0: no periodic events.
    write(&dev, REG_A, 0x20);
    read(&dev, REG_C);
    clock.advance(Duration::from_millis(10));
    assert_eq!(read(&dev, REG_C) & REG_C_PF, 0);
    // 1024 Hz: a period is ~977 µs.
    write(&dev, REG_A, 0x26);
    read(&dev, REG_C);
    clock.advance(Duration::from_micros(500));
    assert_eq!(read(&dev, REG_C) & REG_C_PF, 0);
    clock.advance(Duration::from_micros(500));
    assert_eq!(read(&dev, REG_C), REG_C_PF);
    write(&dev, REG_B, REG_B_PIE | REG_B_24H);
    clock.advance(Duration::from_millis(1));
    assert_eq!(read(&dev, REG_C), REG_C_IRQF | REG_C_PF);
    // Rates 1 and 2 are 256 and 128 Hz; 15 is 2 Hz.
    for (rate, period_ms) in [(1u8, 4u64), (2, 8), (15, 500)] {
        write(&dev, REG_A, 0x20 | rate);
        read(&dev, REG_C);
        clock.advance(Duration::from_millis(period_ms));
        assert_ne!(read(&dev, REG_C) & REG_C_PF, 0, "rate {rate}");
    }
}

#[test]
fn alarm_flag() {
    let (clock, dev) = quiet_rtc();
    // Alarm at 22:13:25.
    write(&dev, REG_HOURS_ALARM, 0x22);
    write(&dev, REG_MINUTES_ALARM, 0x13);
    write(&dev, REG_SECONDS_ALARM, 0x25);
    assert_eq!(read(&dev, REG_SECONDS_ALARM), 0x25);
    read(&dev, REG_C);
    clock.advance(Duration::from_secs(4));
    assert_eq!(read(&dev, REG_C), REG_C_UF);
    clock.advance(Duration::from_secs(1));
    assert_eq!(read(&dev, REG_C), REG_C_UF | REG_C_AF);
    write(&dev, REG_B, REG_B_AIE | REG_B_24H);
    // A day later, across the match.
    clock.advance(Duration::from_secs(86_400));
    assert_eq!(read(&dev, REG_C), REG_C_IRQF | REG_C_UF | REG_C_AF);
    // Just under a day later, the window ends one second short of the match.
    clock.advance(Duration::from_secs(86_399));
    assert_eq!(read(&dev, REG_C), REG_C_UF);
    clock.advance(Duration::from_secs(1));
    assert_eq!(read(&dev, REG_C), REG_C_IRQF | REG_C_UF | REG_C_AF);
}

#[test]
fn alarm_dont_care_fields_and_invalid_fields() {
    let (clock, dev) = quiet_rtc();
    // Every second of every minute of 22h.
    write(&dev, REG_HOURS_ALARM, 0x22);
    write(&dev, REG_MINUTES_ALARM, 0xC0);
    write(&dev, REG_SECONDS_ALARM, 0xFF);
    read(&dev, REG_C);
    clock.advance(Duration::from_secs(1));
    assert_eq!(read(&dev, REG_C), REG_C_UF | REG_C_AF);
    // Minute 30 of any hour, second 0: not within the next 10 minutes.
    write(&dev, REG_HOURS_ALARM, 0xC0);
    write(&dev, REG_MINUTES_ALARM, 0x30);
    write(&dev, REG_SECONDS_ALARM, 0x00);
    clock.advance(Duration::from_secs(600));
    assert_eq!(read(&dev, REG_C), REG_C_UF);
    clock.advance(Duration::from_secs(600));
    assert_eq!(read(&dev, REG_C), REG_C_UF | REG_C_AF);
    // An invalid alarm never fires, even across days.
    write(&dev, REG_SECONDS_ALARM, 0x7A);
    clock.advance(Duration::from_secs(3 * 86_400));
    assert_eq!(read(&dev, REG_C), REG_C_UF);
    // 12-hour alarm: 10 PM.
    write(&dev, REG_B, 0);
    write(&dev, REG_HOURS_ALARM, 0x90);
    write(&dev, REG_MINUTES_ALARM, 0xC0);
    write(&dev, REG_SECONDS_ALARM, 0xC0);
    clock.set(Duration::from_secs(T0 - 3600));
    read(&dev, REG_C);
    clock.set(Duration::from_secs(T0));
    assert_eq!(read(&dev, REG_C), REG_C_UF | REG_C_AF);
}

#[test]
fn clock_going_backwards_raises_nothing() {
    let (clock, dev) = quiet_rtc();
    read(&dev, REG_C);
    clock.set(Duration::from_secs(T0 - 100));
    assert_eq!(read(&dev, REG_C), 0);
    // Updates count again from the earlier time.
    clock.advance(Duration::from_secs(1));
    assert_eq!(read(&dev, REG_C), REG_C_UF);
    clock.set(Duration::from_secs(T0 + 1));
    assert_eq!(read(&dev, REG_C), REG_C_UF);
}

#[test]
fn nvram_and_extended_bank() {
    let (_, dev) = rtc();
    for index in 0x0E..0x80u8 {
        if index == REG_CENTURY {
            continue;
        }
        write(&dev, index, index ^ 0x5A);
    }
    for index in 0x0E..0x80u8 {
        if index != REG_CENTURY {
            assert_eq!(read(&dev, index), index ^ 0x5A);
        }
    }
    dev.pio_write(PioAddress(CMOS_PORT), 2, &[0x85]);
    dev.pio_write(PioAddress(CMOS_PORT), 3, &[0x42]);
    let mut data = [0u8];
    dev.pio_read(PioAddress(CMOS_PORT), 3, &mut data);
    assert_eq!(data[0], 0x42);
    assert_eq!(dev.register(0x85), 0x42);
    // Bank 1 does not alias bank 0.
    assert_eq!(read(&dev, 0x05), 0);
}

#[test]
fn memory_size_registers() {
    let (_, dev) = rtc();
    let word = |lo: u8| u16::from_le_bytes([dev.register(lo), dev.register(lo + 1)]);
    assert_eq!(word(0x15), 640);
    assert_eq!(word(0x17), 0xFFFF);
    assert_eq!(word(0x30), 0xFFFF);
    assert_eq!(word(0x34), ((3 * GIB - (16 << 20)) >> 16) as u16);
    assert_eq!(
        [dev.register(0x5B), dev.register(0x5C), dev.register(0x5D)],
        [0x00, 0x00, 0x01]
    );
    let sum: u16 = (0x10..=0x2D).map(|i| u16::from(dev.register(i))).sum();
    assert_eq!(word(0x2E).swap_bytes(), sum);

    let small = CmosRtc::with_clock(ManualWallClock::default(), 512 << 10, 0);
    let word = |lo: u8| u16::from_le_bytes([small.register(lo), small.register(lo + 1)]);
    assert_eq!((word(0x15), word(0x17), word(0x34)), (512, 0, 0));
    let mid = CmosRtc::new(32 << 20, 1 << 50);
    let word = |lo: u8| u16::from_le_bytes([mid.register(lo), mid.register(lo + 1)]);
    assert_eq!((word(0x15), word(0x17), word(0x34)), (640, 31 << 10, 256));
    assert_eq!(
        [mid.register(0x5B), mid.register(0x5C), mid.register(0x5D)],
        [0xFF; 3]
    );
}

#[test]
fn vmm_nvram_access() {
    let (_, dev) = rtc();
    dev.set_nvram(0x5F, 3).unwrap();
    assert_eq!(read(&dev, 0x5F), 3);
    dev.set_nvram(0xFF, 9).unwrap();
    assert_eq!(dev.register(0xFF), 9);
    for index in [0x00, 0x0A, 0x0D, REG_CENTURY] {
        assert_eq!(
            dev.set_nvram(index, 0),
            Err(CmosError::ClockRegister(index))
        );
    }
    assert!(CmosError::ClockRegister(0x32).to_string().contains("0x32"));
}

#[test]
fn index_port_nmi_bit_and_reads() {
    let (_, dev) = rtc();
    assert!(!dev.nmi_disabled());
    dev.pio_write(PioAddress(CMOS_PORT), 0, &[0x80 | REG_SECONDS]);
    assert!(dev.nmi_disabled());
    let mut data = [0u8];
    dev.pio_read(PioAddress(CMOS_PORT), 1, &mut data);
    assert_eq!(data[0], 0x20);
    dev.pio_read(PioAddress(CMOS_PORT), 0, &mut data);
    assert_eq!(data[0], OPEN_BUS);
    dev.pio_write(PioAddress(CMOS_PORT), 0, &[REG_SECONDS]);
    assert!(!dev.nmi_disabled());
}

#[test]
fn wide_and_out_of_range_accesses() {
    let (_, dev) = rtc();
    // outw 0x70: index then data.
    dev.pio_write(PioAddress(CMOS_PORT), 0, &[0x40, 0x77]);
    assert_eq!(dev.register(0x40), 0x77);
    dev.pio_write(PioAddress(CMOS_PORT), 2, &[0x01, 0x99]);
    let mut data = [0u8; 4];
    dev.pio_read(PioAddress(CMOS_PORT), 0, &mut data);
    assert_eq!(data, [OPEN_BUS, 0x77, OPEN_BUS, 0x99]);
    let mut data = [0u8; 8];
    dev.pio_read(PioAddress(CMOS_PORT), 0, &mut data);
    assert_eq!(&data[4..], [OPEN_BUS; 4]);
    for offset in [4, 0x100, u16::MAX] {
        dev.pio_write(PioAddress(CMOS_PORT), offset, &[0; 8]);
    }
    assert_eq!(dev.stats().ignored, 4 + 3 * 8);
    let mut empty: [u8; 0] = [];
    dev.pio_read(PioAddress(CMOS_PORT), 1, &mut empty);
    assert_eq!(
        dev.pio_write(PioAddress(CMOS_PORT), 1, &[]),
        DeviceAction::Resume
    );
}

#[test]
fn extreme_clocks_stay_in_range() {
    let clock = Arc::new(ManualWallClock::new(Duration::MAX));
    let dev = CmosRtc::with_clock(Arc::clone(&clock), 0, 0);
    assert_eq!(
        time(&dev),
        [
            0x59,
            0x59,
            0x23,
            read(&dev, REG_WEEKDAY),
            0x31,
            0x12,
            0x99,
            0x99
        ]
    );
    assert_valid_time(&dev);
    write(&dev, REG_YEAR, 0x00);
    assert_eq!(read(&dev, REG_YEAR), 0x00);
    clock.set(Duration::ZERO);
    write(&dev, REG_CENTURY, 0x00);
    write(&dev, REG_YEAR, 0x00);
    assert_eq!((read(&dev, REG_CENTURY), read(&dev, REG_YEAR)), (0, 0));
    assert_valid_time(&dev);
}

#[test]
fn every_write_keeps_the_time_registers_valid() {
    let (clock, dev) = rtc();
    for mode in [0, REG_B_24H, REG_B_BINARY, REG_B_BINARY | REG_B_24H] {
        for index in 0..0x40u8 {
            for value in 0..=255u8 {
                write(&dev, REG_B, mode);
                write(&dev, index, value);
                clock.advance(Duration::from_millis(997));
                assert_valid_time(&dev);
            }
        }
    }
}
