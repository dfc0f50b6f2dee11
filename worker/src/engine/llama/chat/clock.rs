//! The clock behind templates' `strftime_now(format)`, and the `strftime` it formats with.
//!
//! transformers defines `strftime_now` as `datetime.now().strftime(format)`; templates use it
//! to put today's date in the system prompt (Llama 3.2, Mistral Small 3.2). Production reads
//! the system clock, in UTC (a naive `datetime.now()` on a server set to UTC); tests fix it
//! with [`Clock::Fixed`], so a reference renderer given the same instant must agree.
//!
//! Formatting follows C's `strftime` in the "C" locale, as CPython on glibc does, including
//! glibc's `-` flag (`%-d`: no padding). Not owned here: time zones (`%Z`, `%z` print nothing,
//! as for Python's naive datetimes).

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// Where `strftime_now` gets the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Clock {
    /// The system clock, in UTC.
    #[default]
    System,
    /// Always this instant: for tests and reproducible prompts.
    Fixed(DateTime),
}

impl Clock {
    /// The current instant by this clock.
    pub fn now(&self) -> DateTime {
        match self {
            Clock::System => {
                let secs = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                DateTime::from_unix_seconds(i64::try_from(secs).unwrap_or(i64::MAX))
            }
            Clock::Fixed(t) => *t,
        }
    }
}

/// A calendar date and time of day (proleptic Gregorian, no time zone), to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

impl DateTime {
    /// The date and time given, or `None` when a field is out of range (Feb 30, 25:00).
    pub fn new(
        year: i64,
        month: u32,
        day: u32,
        hour: u32,
        minute: u32,
        second: u32,
    ) -> Option<Self> {
        let valid = (1..=12).contains(&month)
            && day >= 1
            && day <= days_in_month(year, month)
            && hour < 24
            && minute < 60
            && second < 60;
        valid.then_some(Self {
            year,
            month,
            day,
            hour,
            minute,
            second,
        })
    }

    /// The UTC date and time `secs` seconds after 1970-01-01T00:00:00.
    pub fn from_unix_seconds(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let in_day = secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        // `in_day` < 86 400, so each part fits.
        let part = |v: i64| u32::try_from(v).unwrap_or(0);
        Self {
            year,
            month,
            day,
            hour: part(in_day / 3600),
            minute: part(in_day / 60 % 60),
            second: part(in_day % 60),
        }
    }

    /// Days since 1970-01-01.
    fn days_since_epoch(&self) -> i64 {
        // Howard Hinnant's days_from_civil.
        let y = if self.month <= 2 {
            self.year - 1
        } else {
            self.year
        };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let m = i64::from(self.month);
        let mp = if m > 2 { m - 3 } else { m + 9 };
        let doy = (153 * mp + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// 0 = Monday .. 6 = Sunday.
    fn weekday(&self) -> usize {
        // 1970-01-01 was a Thursday (3).
        usize::try_from((self.days_since_epoch() + 3).rem_euclid(7)).unwrap_or(0)
    }

    /// 1 = January 1st.
    fn day_of_year(&self) -> u32 {
        (1..self.month)
            .map(|m| days_in_month(self.year, m))
            .sum::<u32>()
            + self.day
    }

    /// `format` with its `%` directives replaced, as C's `strftime` in the "C" locale.
    /// An unknown directive is kept as written, as glibc does.
    pub fn strftime(&self, format: &str) -> String {
        let mut out = String::with_capacity(format.len() + 16);
        let mut chars = format.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            let mut spec = chars.next();
            let unpadded = spec == Some('-');
            if unpadded {
                spec = chars.next();
            }
            // Zero-padded to `width` digits, or not padded under the `-` flag.
            let num = |out: &mut String, v: i64, width: usize| {
                let _ = if unpadded {
                    write!(out, "{v}")
                } else {
                    write!(out, "{v:0width$}")
                };
            };
            let hour12 = match self.hour % 12 {
                0 => 12,
                h => h,
            };
            let day_name = DAYS[self.weekday()];
            let month_name = MONTHS[usize::try_from(self.month - 1).unwrap_or(0)];
            match spec {
                Some('a') => out.push_str(&day_name[..3]),
                Some('A') => out.push_str(day_name),
                Some('b' | 'h') => out.push_str(&month_name[..3]),
                Some('B') => out.push_str(month_name),
                Some('c') => out.push_str(&self.strftime("%a %b %e %H:%M:%S %Y")),
                Some('C') => num(&mut out, self.year.div_euclid(100), 2),
                Some('d') => num(&mut out, self.day.into(), 2),
                Some('D') => out.push_str(&self.strftime("%m/%d/%y")),
                Some('e') if unpadded => num(&mut out, self.day.into(), 1),
                Some('e') => {
                    let _ = write!(out, "{:2}", self.day);
                }
                Some('F') => out.push_str(&self.strftime("%Y-%m-%d")),
                Some('H') => num(&mut out, self.hour.into(), 2),
                Some('I') => num(&mut out, hour12.into(), 2),
                Some('j') => num(&mut out, self.day_of_year().into(), 3),
                Some('m') => num(&mut out, self.month.into(), 2),
                Some('M') => num(&mut out, self.minute.into(), 2),
                Some('n') => out.push('\n'),
                Some('p') => out.push_str(if self.hour < 12 { "AM" } else { "PM" }),
                Some('R') => out.push_str(&self.strftime("%H:%M")),
                Some('S') => num(&mut out, self.second.into(), 2),
                Some('t') => out.push('\t'),
                Some('T') => out.push_str(&self.strftime("%H:%M:%S")),
                Some('u') => num(&mut out, i64::try_from(self.weekday() + 1).unwrap_or(0), 1),
                Some('w') => num(
                    &mut out,
                    i64::try_from((self.weekday() + 1) % 7).unwrap_or(0),
                    1,
                ),
                Some('x') => out.push_str(&self.strftime("%m/%d/%y")),
                Some('X') => out.push_str(&self.strftime("%H:%M:%S")),
                Some('y') => num(&mut out, self.year.rem_euclid(100), 2),
                Some('Y') => {
                    let _ = write!(out, "{}", self.year);
                }
                Some('z' | 'Z') => {}
                Some('%') => out.push('%'),
                Some(other) => {
                    out.push('%');
                    if unpadded {
                        out.push('-');
                    }
                    out.push(other);
                }
                None => {
                    out.push('%');
                    if unpadded {
                        out.push('-');
                    }
                }
            }
        }
        out
    }
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// (year, month, day) of a count of days since 1970-01-01 (Howard Hinnant's civil_from_days).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let part = |v: i64| u32::try_from(v).unwrap_or(1);
    (year, part(month), part(day))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_seconds_become_the_utc_calendar_date() {
        // date -u -d @1741338303 → Fri Mar  7 09:05:03 UTC 2025
        let t = DateTime::from_unix_seconds(1_741_338_303);
        assert_eq!(t, DateTime::new(2025, 3, 7, 9, 5, 3).expect("valid"));
        assert_eq!(t.days_since_epoch(), 20_154);
        assert_eq!(
            DateTime::from_unix_seconds(0).strftime("%F %T %A"),
            "1970-01-01 00:00:00 Thursday"
        );
        // Leap day, end of a leap year.
        assert_eq!(
            DateTime::from_unix_seconds(951_782_400).strftime("%F %j"),
            "2000-02-29 060"
        );
        assert_eq!(
            DateTime::from_unix_seconds(1_735_603_200).strftime("%F %j %a"),
            "2024-12-31 366 Tue"
        );
    }

    #[test]
    fn impossible_dates_are_refused() {
        assert!(DateTime::new(2025, 2, 29, 0, 0, 0).is_none());
        assert!(DateTime::new(2024, 2, 29, 0, 0, 0).is_some());
        assert!(DateTime::new(2025, 13, 1, 0, 0, 0).is_none());
        assert!(DateTime::new(2025, 1, 1, 24, 0, 0).is_none());
    }

    #[test]
    fn strftime_formats_like_c_in_the_c_locale() {
        let t = DateTime::new(2025, 3, 7, 21, 5, 3).expect("valid");
        assert_eq!(t.strftime("%d %b %Y"), "07 Mar 2025");
        assert_eq!(t.strftime("%B %d, %Y"), "March 07, 2025");
        assert_eq!(
            t.strftime("%I%p %-I %-d/%-m %e|%u%w %y %C"),
            "09PM 9 7/3  7|55 25 20"
        );
        assert_eq!(t.strftime("%c"), "Fri Mar  7 21:05:03 2025");
        assert_eq!(t.strftime("100%% %Q %"), "100% %Q %");
    }

    #[test]
    fn a_fixed_clock_always_answers_its_instant() {
        let t = DateTime::new(2030, 1, 2, 3, 4, 5).expect("valid");
        assert_eq!(Clock::Fixed(t).now(), t);
        assert!(Clock::System.now().year >= 2025);
    }
}
