//! Proleptic Gregorian calendar arithmetic (days from 1970-01-01 and back) and BCD.

/// Seconds in a day.
pub(crate) const SECS_PER_DAY: i64 = 86_400;

/// A broken-down UTC date and time. `day` may exceed the month's length (a guest can write
/// February 31 while the clock is held); [`to_unix`](Self::to_unix) carries it into the next
/// month.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DateTime {
    pub(crate) year: i64,
    pub(crate) month: u8,
    pub(crate) day: u8,
    pub(crate) hour: u8,
    pub(crate) minute: u8,
    pub(crate) second: u8,
}

/// The first second the CMOS can show (0000-01-01T00:00:00).
pub(crate) const MIN_UNIX: i64 = -62_167_219_200;
/// The last second the CMOS can show (9999-12-31T23:59:59).
pub(crate) const MAX_UNIX: i64 = 253_402_300_799;

/// Days since 1970-01-01 of a date (month 1–12; days past the month's end carry over).
pub(crate) fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let (month, day) = (i64::from(month), i64::from(day));
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date `days` days after 1970-01-01, as (year, month 1–12, day 1–31).
pub(crate) fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    // Both fit in u8 by construction: day 1–31, month 1–12.
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u8;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u8;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl DateTime {
    /// The date and time `secs` seconds after the epoch, clamped to what the CMOS can show.
    pub(crate) fn from_unix(secs: i64) -> Self {
        let secs = secs.clamp(MIN_UNIX, MAX_UNIX);
        let (year, month, day) = civil_from_days(secs.div_euclid(SECS_PER_DAY));
        let time = secs.rem_euclid(SECS_PER_DAY);
        // All three are below 60 (or 24) by construction.
        Self {
            year,
            month,
            day,
            hour: (time / 3600) as u8,
            minute: (time / 60 % 60) as u8,
            second: (time % 60) as u8,
        }
    }

    /// Seconds since the epoch.
    pub(crate) fn to_unix(self) -> i64 {
        days_from_civil(self.year, self.month, self.day) * SECS_PER_DAY
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }

    /// Day of the week, 1 = Sunday … 7 = Saturday.
    pub(crate) fn weekday(self) -> u8 {
        // 1970-01-01 was a Thursday (5).
        ((days_from_civil(self.year, self.month, self.day) + 4).rem_euclid(7) + 1) as u8
    }
}

/// `value` (0–99) in packed BCD.
pub(crate) fn to_bcd(value: u8) -> u8 {
    ((value / 10) << 4) | (value % 10)
}

/// The value of a packed-BCD byte, if both digits are decimal.
pub(crate) fn from_bcd(bcd: u8) -> Option<u8> {
    let (high, low) = (bcd >> 4, bcd & 0x0F);
    (high <= 9 && low <= 9).then_some(high * 10 + low)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_and_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        let t = DateTime::from_unix(1_700_000_000);
        assert_eq!(
            t,
            DateTime {
                year: 2023,
                month: 11,
                day: 14,
                hour: 22,
                minute: 13,
                second: 20
            }
        );
        // 2023-11-14 was a Tuesday.
        assert_eq!(t.weekday(), 3);
        assert_eq!(DateTime::from_unix(0).weekday(), 5);
    }

    #[test]
    fn round_trips_across_the_whole_range() {
        let mut days = days_from_civil(0, 1, 1);
        let end = days_from_civil(10_000, 1, 1);
        while days < end {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
            days += 37;
        }
        for secs in [MIN_UNIX, -1, 0, 951_782_400, MAX_UNIX] {
            assert_eq!(DateTime::from_unix(secs).to_unix(), secs);
        }
    }

    #[test]
    fn range_limits_are_the_first_and_last_second_of_years_0_to_9999() {
        assert_eq!(MIN_UNIX, days_from_civil(0, 1, 1) * SECS_PER_DAY);
        assert_eq!(MAX_UNIX, days_from_civil(10_000, 1, 1) * SECS_PER_DAY - 1);
    }

    #[test]
    fn range_is_clamped() {
        assert_eq!(DateTime::from_unix(i64::MIN).year, 0);
        let last = DateTime::from_unix(i64::MAX);
        assert_eq!((last.year, last.month, last.day), (9999, 12, 31));
        assert_eq!((last.hour, last.minute, last.second), (23, 59, 59));
    }

    #[test]
    fn day_overflow_carries_into_the_next_month() {
        let feb31 = DateTime {
            year: 2023,
            month: 2,
            day: 31,
            hour: 0,
            minute: 0,
            second: 0,
        };
        let normal = DateTime::from_unix(feb31.to_unix());
        assert_eq!((normal.month, normal.day), (3, 3));
    }

    #[test]
    fn bcd() {
        assert_eq!(to_bcd(0), 0);
        assert_eq!(to_bcd(59), 0x59);
        assert_eq!(to_bcd(99), 0x99);
        assert_eq!(from_bcd(0x59), Some(59));
        assert_eq!(from_bcd(0x5A), None);
        assert_eq!(from_bcd(0xA0), None);
        for v in 0..100 {
            assert_eq!(from_bcd(to_bcd(v)), Some(v));
        }
    }
}
