//! Reading the timestamps sources send: RFC 3339 (Segment, HubSpot), ISO 8601 with a `+0000`
//! offset (Salesforce), zone-less `YYYY-MM-DD HH:MM:SS.sss` in UTC (AppsFlyer), and epoch numbers
//! (Adjust seconds, Firebase microseconds).

use crate::fields::Fields;
use crate::json::Json;
use crate::rejection::{invalid_timestamp, wrong_type};
use cdp_proto::dlq::Rejection;
use cdp_proto::Timestamp;
use chrono::{DateTime, NaiveDateTime, SecondsFormat, TimeDelta, Utc};

/// Parses a textual timestamp in any of the forms above. Zone-less text is read as UTC, which is
/// what every source that omits the zone documents.
pub(crate) fn parse_text(s: &str) -> Option<Timestamp> {
    let s = s.trim();
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

/// The unit of an epoch number.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Epoch {
    Seconds,
    Micros,
}

/// An optional textual timestamp field. Present but unreadable is a rejection: guessing a time
/// would put the event in the wrong window of every cohort that counts it.
pub(crate) fn text_field(f: &Fields<'_>, key: &str) -> Result<Option<Timestamp>, Rejection> {
    match f.str(key)? {
        None => Ok(None),
        Some(s) if s.trim().is_empty() => Ok(None),
        Some(s) => parse_text(s)
            .map(Some)
            .ok_or_else(|| invalid_timestamp(&f.name(key))),
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
