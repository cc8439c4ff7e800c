//! UTC calendar dates for the names of the data files (`snapshots_YYYY-MM-DD.jsonl`), computed with
//! Howard Hinnant's `days_from_civil` / `civil_from_days` (proleptic Gregorian calendar).

use std::fmt;

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// A UTC calendar day.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UtcDate {
    year: i32,
    month: u8,
    day: u8,
}

impl UtcDate {
    /// The date, if it exists (`2024-02-30` does not).
    pub fn new(year: i32, month: u8, day: u8) -> Option<Self> {
        if !(1..=12).contains(&month) || !(1..=31).contains(&day) || !(0..=9999).contains(&year) {
            return None;
        }
        let date = Self { year, month, day };
        (Self::from_days(date.days_since_epoch()) == date).then_some(date)
    }

    /// The day that contains the instant (milliseconds since the Unix epoch).
    pub fn from_unix_ms(ms: u64) -> Self {
        let ms = i64::try_from(ms).unwrap_or(i64::MAX);
        Self::from_days(ms.div_euclid(DAY_MS))
    }

    /// Parses exactly `YYYY-MM-DD`.
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return None;
        }
        let digits = |r: std::ops::Range<usize>| -> Option<u32> {
            let part = s.get(r)?;
            part.bytes()
                .all(|c| c.is_ascii_digit())
                .then(|| part.parse().ok())
                .flatten()
        };
        let year = i32::try_from(digits(0..4)?).ok()?;
        let month = u8::try_from(digits(5..7)?).ok()?;
        let day = u8::try_from(digits(8..10)?).ok()?;
        Self::new(year, month, day)
    }

    pub fn year(self) -> i32 {
        self.year
    }

    pub fn month(self) -> u8 {
        self.month
    }

    pub fn day(self) -> u8 {
        self.day
    }

    /// Days from 1970-01-01 to this date.
    pub fn days_since_epoch(self) -> i64 {
        let m = i64::from(self.month);
        let d = i64::from(self.day);
        let y = i64::from(self.year) - i64::from(m <= 2);
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// Start of the day, milliseconds since the Unix epoch (negative before 1970).
    pub fn start_ms(self) -> i64 {
        self.days_since_epoch() * DAY_MS
    }

    /// End of the day (start of the next), milliseconds since the Unix epoch.
    pub fn end_ms(self) -> i64 {
        self.start_ms() + DAY_MS
    }

    fn from_days(days: i64) -> Self {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        Self {
            year: i32::try_from(year).unwrap_or(i32::MAX),
            // month is 1..=12 and day 1..=31 by construction.
            month: u8::try_from(month).unwrap_or(1),
            day: u8::try_from(day).unwrap_or(1),
        }
    }
}

impl fmt::Display for UtcDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(UtcDate::from_unix_ms(0).to_string(), "1970-01-01");
        // 2022-01-03T18:29:27.890Z, the origin's example alert timestamp.
        assert_eq!(
            UtcDate::from_unix_ms(1_641_234_567_890).to_string(),
            "2022-01-03"
        );
        // 2024-02-29T23:59:59.999Z and the next millisecond.
        assert_eq!(
            UtcDate::from_unix_ms(1_709_251_199_999).to_string(),
            "2024-02-29"
        );
        assert_eq!(
            UtcDate::from_unix_ms(1_709_251_200_000).to_string(),
            "2024-03-01"
        );
        let d = UtcDate::parse("2024-01-15").unwrap();
        assert_eq!((d.year(), d.month(), d.day()), (2024, 1, 15));
        assert_eq!(d.start_ms(), 1_705_276_800_000);
        assert_eq!(d.end_ms(), 1_705_363_200_000);
        assert_eq!(UtcDate::from_unix_ms(1_705_276_800_000), d);
    }

    #[test]
    fn round_trip_over_centuries() {
        for days in (-800_000..800_000).step_by(97) {
            let d = UtcDate::from_days(days);
            assert_eq!(d.days_since_epoch(), days, "{d}");
            if (0..=9999).contains(&d.year()) {
                assert_eq!(UtcDate::parse(&d.to_string()), Some(d));
            }
        }
    }

    #[test]
    fn rejects_bad_dates() {
        for s in [
            "2024-02-30",
            "2023-02-29",
            "2024-13-01",
            "2024-00-10",
            "2024-1-15",
            "2024_01_15",
            "+024-01-15",
            "2024-01-1a",
            "",
        ] {
            assert_eq!(UtcDate::parse(s), None, "{s}");
        }
        assert!(UtcDate::parse("2000-02-29").is_some());
        assert!(UtcDate::parse("1900-02-29").is_none());
    }
}
