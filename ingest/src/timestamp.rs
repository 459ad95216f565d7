//! Reading the timestamps sources send: RFC 3339 (Segment, HubSpot), ISO 8601 with a `+0000`
//! offset (Salesforce), zone-less `YYYY-MM-DD HH:MM:SS.sss` in UTC (AppsFlyer), and epoch numbers
//! (Adjust seconds, Firebase microseconds).

use crate::fields::{str_of, Fields};
use crate::json::Json;
use crate::rejection::{invalid_timestamp, wrong_type};
use cdp_proto::dlq::Rejection;
use cdp_proto::Timestamp;
use chrono::{DateTime, NaiveDateTime, SecondsFormat, TimeDelta, Utc};

/// Parses a textual timestamp in any of the forms above. Zone-less text is read as UTC, which is
/// what every source that omits the zone documents.
pub(crate) fn parse_text(s: &str) -> Option<Timestamp> {
    let s = s.trim();
    if let Some(t) = rfc3339_fast(s.as_bytes()) {
        return Some(t);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%z"] {
        if let Ok(t) = DateTime::parse_from_str(s, format) {
            return Some(t.with_timezone(&Utc));
        }
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, format) {
            return Some(t.and_utc());
        }
    }
    None
}

/// The common spelling of RFC 3339, `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, read without
/// chrono's general parser (most of the cost of a timestamp). `None` for anything else, which
/// then goes the general way: leap seconds, other separators, out-of-range fields.
fn rfc3339_fast(b: &[u8]) -> Option<Timestamp> {
    fn digits(b: &[u8]) -> Option<u32> {
        b.iter().try_fold(0u32, |n, &c| {
            let d = c.wrapping_sub(b'0');
            (d < 10).then(|| n * 10 + u32::from(d))
        })
    }
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])?;
    let minute = digits(&b[14..16])?;
    let second = digits(&b[17..19])?;
    let mut rest = &b[19..];
    let mut nanos = 0u32;
    if rest.first() == Some(&b'.') {
        let len = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if len == 0 || len > 9 {
            return None;
        }
        nanos = digits(&rest[1..=len])? * 10u32.pow(9 - len as u32);
        rest = &rest[1 + len..];
    }
    let offset_seconds: i64 = match rest {
        [b'Z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let h = i64::from(digits(&[*h1, *h2])?);
            let m = i64::from(digits(&[*m1, *m2])?);
            if h > 23 || m > 59 {
                return None;
            }
            let s = h * 3600 + m * 60;
            if *sign == b'-' {
                -s
            } else {
                s
            }
        }
        _ => return None,
    };
    if hour > 23 || minute > 59 || second > 59 || day == 0 || day > days_in_month(year, month)? {
        return None;
    }
    let seconds = days_from_civil(year, month, day) * 86_400
        + i64::from(hour * 3600 + minute * 60 + second)
        - offset_seconds;
    DateTime::from_timestamp(seconds, nanos)
}

/// Days in `month` of `year` (proleptic Gregorian), `None` for a month that does not exist.
fn days_in_month(year: u32, month: u32) -> Option<u32> {
    let leap = year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400));
    Some(match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    })
}

/// Days from 1970-01-01 to a valid date of years 0 to 9999 (H. Hinnant's `days_from_civil`,
/// with years counted from March so that the leap day is the last of its year).
fn days_from_civil(year: u32, month: u32, day: u32) -> i64 {
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let year_of_era = y.rem_euclid(400);
    let month_from_march = i64::from((month + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The unit of an epoch number.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Epoch {
    Seconds,
    Micros,
}

/// An optional textual timestamp field. Present but unreadable is a rejection: guessing a time
/// would put the event in the wrong window of every cohort that counts it.
pub(crate) fn text_field(f: &Fields<'_>, key: &str) -> Result<Option<Timestamp>, Rejection> {
    text_value(f.get(key), || f.name(key))
}

/// [`text_field`] for a value already looked up (`None` when absent or null); `name` names the
/// field in a rejection.
pub(crate) fn text_value(
    v: Option<&Json<'_>>,
    name: impl Fn() -> String,
) -> Result<Option<Timestamp>, Rejection> {
    match str_of(v, &name)? {
        None => Ok(None),
        Some(s) if s.trim().is_empty() => Ok(None),
        Some(s) => parse_text(s)
            .map(Some)
            .ok_or_else(|| invalid_timestamp(&name())),
    }
}

/// An optional epoch field, sent as a number or as digits in a string.
pub(crate) fn epoch_field(
    f: &Fields<'_>,
    key: &str,
    unit: Epoch,
) -> Result<Option<Timestamp>, Rejection> {
    let n = match f.get(key) {
        None => return Ok(None),
        Some(n @ (Json::U64(_) | Json::I64(_) | Json::F64(_))) => n.as_i64(),
        Some(Json::Str(s)) if s.trim().is_empty() => return Ok(None),
        Some(Json::Str(s)) => s.trim().parse::<i64>().ok(),
        Some(_) => return Err(wrong_type(&f.name(key), "a number")),
    };
    let t = n.and_then(|n| match unit {
        Epoch::Seconds => DateTime::from_timestamp(n, 0),
        Epoch::Micros => DateTime::from_timestamp_micros(n),
    });
    t.map(Some).ok_or_else(|| invalid_timestamp(&f.name(key)))
}

/// Segment's clock-skew correction: the device's clock may be wrong, but the difference between
/// two readings of it (`sentAt - originalTimestamp`) is right, and `receivedAt` is the server's.
pub(crate) fn skew_corrected(
    received_at: Timestamp,
    sent_at: Timestamp,
    original: Timestamp,
) -> Option<Timestamp> {
    let delay: TimeDelta = sent_at.signed_duration_since(original);
    received_at.checked_sub_signed(delay)
}

/// The form timestamps take inside event ids: RFC 3339, milliseconds, `Z`. Event ids must be
/// reproducible from the record, so this never depends on how the source spelled the time.
pub(crate) fn id_form(t: Timestamp) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap()
    }

    #[test]
    fn reads_each_source_format() {
        let expected = at("2024-05-01T12:34:56.789Z");
        for s in [
            "2024-05-01T12:34:56.789Z",
            "2024-05-01T14:34:56.789+02:00",
            "2024-05-01T12:34:56.789+0000",
            "2024-05-01 12:34:56.789",
            "2024-05-01T12:34:56.789",
        ] {
            assert_eq!(parse_text(s), Some(expected), "{s}");
        }
        assert_eq!(parse_text("yesterday"), None);
        assert_eq!(parse_text("2024-13-01T00:00:00Z"), None);
    }

    #[test]
    fn fast_rfc3339_reads_what_chrono_reads() {
        for s in [
            "2024-05-01T12:34:56Z",
            "2024-05-01T12:34:56.1Z",
            "2024-05-01T12:34:56.123456789Z",
            "2024-02-29T23:59:59.999-05:30",
            "0001-01-01T00:00:00+23:59",
            "9999-12-31T23:59:59-23:59",
        ] {
            let chrono = DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc));
            assert_eq!(rfc3339_fast(s.as_bytes()), chrono.ok(), "{s}");
        }
        // Every day (and a few non-days) of years around the calendar's edge cases.
        for year in [0, 4, 1900, 1969, 1970, 2000, 2023, 2024, 9999] {
            for month in 0..=13 {
                for day in 0..=32 {
                    let s = format!("{year:04}-{month:02}-{day:02}T23:59:59.5-01:30");
                    let chrono = DateTime::parse_from_rfc3339(&s).map(|t| t.with_timezone(&Utc));
                    assert_eq!(rfc3339_fast(s.as_bytes()), chrono.ok(), "{s}");
                }
            }
        }
        // Left to chrono (which may still accept them): it alone decides these.
        for s in [
            "2023-02-29T00:00:00Z",
            "2024-05-01T12:34:60Z",
            "2024-05-01t12:34:56Z",
            "2024-05-01 12:34:56Z",
            "2024-05-01T12:34:56.Z",
            "2024-05-01T12:34:56.1234567890Z",
            "2024-05-01T12:34:56+0000",
            "2024-05-01T24:00:00Z",
            "+2024-05-01T12:34:56Z",
        ] {
            assert_eq!(rfc3339_fast(s.as_bytes()), None, "{s}");
        }
    }

    proptest::proptest! {
        /// Wherever the fast path answers, chrono answers the same.
        #[test]
        fn fast_rfc3339_never_disagrees_with_chrono(
            s in "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-2][0-9]:[0-6][0-9]:[0-6][0-9](\\.[0-9]{1,10})?(Z|z|[+-][0-2][0-9]:[0-6][0-9])",
            year in 0u32..10_000,
            month in 1u32..=12,
            day in 1u32..=31,
        ) {
            if let Some(t) = rfc3339_fast(s.as_bytes()) {
                let chrono = DateTime::parse_from_rfc3339(&s).map(|t| t.with_timezone(&Utc));
                proptest::prop_assert_eq!(Some(t), chrono.ok(), "{}", s);
            }
            let valid = format!("{year:04}-{month:02}-{day:02}T01:02:03.5+01:00");
            let chrono = DateTime::parse_from_rfc3339(&valid).map(|t| t.with_timezone(&Utc)).ok();
            proptest::prop_assert_eq!(rfc3339_fast(valid.as_bytes()), chrono, "{}", valid);
        }
    }

    #[test]
    fn skew_correction_uses_server_time() {
        // The device clock is an hour fast; it took 2 s to send.
        let t = skew_corrected(
            at("2024-05-01T12:00:10Z"),
            at("2024-05-01T13:00:08Z"),
            at("2024-05-01T13:00:06Z"),
        );
        assert_eq!(t, Some(at("2024-05-01T12:00:08Z")));
    }

    #[test]
    fn id_form_is_stable() {
        assert_eq!(
            id_form(at("2024-05-01T14:34:56.7+02:00")),
            "2024-05-01T12:34:56.700Z"
        );
    }
}
