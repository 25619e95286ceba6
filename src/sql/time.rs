//! Timestamps between engines, as pure logic: an RFC 3339 time with an offset (what a PostgreSQL `timestamptz` reads
//! as) is the same instant as a UTC `DATETIME`, which MySQL and MariaDB take only without an offset.

/// `2024-03-10T10:41:00.123456+02:00` as UTC in MySQL's form, `2024-03-10 08:41:00.123456`, the fraction kept as
/// written. `None` when the text is not a date and time with an offset (`Z` included): it is then left as it is, for
/// the database to take or refuse.
pub fn utc_datetime(text: &str) -> Option<String> {
    let t = Instant::parse(text)?;
    let (days, minute_of_day) = (t.minutes.div_euclid(1440), t.minutes.rem_euclid(1440));
    let (y, m, d) = civil_from_days(days);
    if !(0..=9999).contains(&y) {
        return None;
    }
    let (second, fraction) = (t.second, t.fraction);
    Some(format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{second:02}{fraction}", minute_of_day / 60, minute_of_day % 60))
}

/// An RFC 3339 time with an offset as milliseconds since the epoch (digits past the millisecond dropped, towards the
/// past), or `None` when it is not one.
pub fn epoch_millis(text: &str) -> Option<i64> {
    let t = Instant::parse(text)?;
    let digits = t.fraction.get(1..).unwrap_or_default();
    let millis: i64 = format!("{:0<3}", &digits[..digits.len().min(3)]).parse().ok()?;
    Some((t.minutes * 60 + t.second) * 1000 + millis)
}

/// Milliseconds since the epoch as RFC 3339 in UTC: `2026-12-03T10:00:00Z`, with `.250` only when there is a fraction.
pub fn rfc3339_millis(ms: i64) -> String {
    let (secs, millis) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, second_of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (second_of_day / 3600, second_of_day / 60 % 60, second_of_day % 60);
    match millis {
        0 => format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z"),
        _ => format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{millis:03}Z"),
    }
}

/// A date and time with an offset, read: minutes since the epoch in UTC, then the second and its fraction as written.
struct Instant<'a> {
    minutes: i64,
    second: i64,
    /// `.123456`, or empty.
    fraction: &'a str,
}

impl Instant<'_> {
    fn parse(text: &str) -> Option<Instant<'_>> {
        let b = text.as_bytes();
        if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
            return None;
        }
        if b[13] != b':' || b[16] != b':' {
            return None;
        }
        let num = |from: usize, to: usize| -> Option<i64> {
            let s = text.get(from..to)?;
            s.bytes().all(|c| c.is_ascii_digit()).then(|| s.parse().ok())?
        };
        let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
        let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
        if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
            return None;
        }
        let mut rest = &text[19..];
        let mut fraction = "";
        if let Some(after) = rest.strip_prefix('.') {
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return None;
            }
            fraction = &rest[..digits + 1];
            rest = &after[digits..];
        }
        let offset_minutes = match rest.as_bytes() {
            [b'Z' | b'z'] => 0,
            [sign @ (b'+' | b'-'), ..] => {
                let digits: String = rest[1..].chars().filter(|c| *c != ':').collect();
                if digits.len() != 4 || !digits.bytes().all(|c| c.is_ascii_digit()) || !matches!(rest.len(), 5 | 6) {
                    return None;
                }
                let (h, m): (i64, i64) = (digits[..2].parse().ok()?, digits[2..].parse().ok()?);
                if h > 23 || m > 59 {
                    return None;
                }
                if *sign == b'-' {
                    -(h * 60 + m)
                } else {
                    h * 60 + m
                }
            }
            _ => return None,
        };
        let minutes = days_from_civil(year, month, day) * 1440 + hour * 60 + minute - offset_minutes;
        Some(Instant { minutes, second, fraction })
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_time_becomes_the_same_instant_in_utc_with_its_fraction() {
        assert_eq!(utc_datetime("2024-03-10T10:41:00.123456+00:00").as_deref(), Some("2024-03-10 10:41:00.123456"));
        assert_eq!(utc_datetime("2024-03-10T10:41:00+02:00").as_deref(), Some("2024-03-10 08:41:00"));
        assert_eq!(utc_datetime("2024-03-10 01:30:00.5-05:30").as_deref(), Some("2024-03-10 07:00:00.5"));
        assert_eq!(utc_datetime("2024-01-01T00:30:00Z").as_deref(), Some("2024-01-01 00:30:00"));
        // Across a day, a month, a leap day and a year.
        assert_eq!(utc_datetime("2024-03-01T00:30:00+01:00").as_deref(), Some("2024-02-29 23:30:00"));
        assert_eq!(utc_datetime("2023-12-31T23:30:00-0100").as_deref(), Some("2024-01-01 00:30:00"));
        assert_eq!(utc_datetime("1969-12-31T23:59:59.999999-00:00").as_deref(), Some("1969-12-31 23:59:59.999999"));
    }

    #[test]
    fn times_read_and_written_as_milliseconds_since_the_epoch() {
        assert_eq!(epoch_millis("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(epoch_millis("2026-12-03T10:00:00.2506+01:00"), Some(1_796_288_400_250));
        assert_eq!(epoch_millis("1969-12-31T23:59:59.5Z"), Some(-500));
        assert_eq!(epoch_millis("2026-12-03"), None);
        assert_eq!(rfc3339_millis(1_796_288_400_250), "2026-12-03T09:00:00.250Z");
        assert_eq!(rfc3339_millis(1_796_288_400_000), "2026-12-03T09:00:00Z");
        assert_eq!(rfc3339_millis(-500), "1969-12-31T23:59:59.500Z");
    }

    #[test]
    fn anything_else_is_left_alone() {
        for text in [
            "2024-03-10T10:41:00",
            "2024-03-10 10:41:00.123",
            "2024-03-10",
            "10:41:00+02:00",
            "not a time at all, no",
            "2024-13-10T10:41:00Z",
            "2024-03-10T10:41:00+2:00",
            "2024-03-10T10:41:00.Z",
            "0000-01-01T00:30:00+01:00",
            "2024-03-10T10:41:00Zulu",
        ] {
            assert_eq!(utc_datetime(text), None, "{text}");
        }
    }

    #[test]
    fn days_count_from_the_epoch_both_ways() {
        for (days, date) in [(0, (1970, 1, 1)), (19_792, (2024, 3, 10)), (-1, (1969, 12, 31)), (11_016, (2000, 2, 29))]
        {
            assert_eq!(days_from_civil(date.0, date.1, date.2), days);
            assert_eq!(civil_from_days(days), date);
        }
    }
}
