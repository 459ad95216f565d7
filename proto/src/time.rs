//! Timestamps on the wire: UTC, RFC 3339 in JSON, millisecond precision.

/// A UTC instant. Serialised as an RFC 3339 string, which is what users read with `cdp topic read`.
pub type Timestamp = chrono::DateTime<chrono::Utc>;

/// Milliseconds since the Unix epoch, the unit the bus uses for record timestamps.
pub fn from_millis(ms: i64) -> Timestamp {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// Days since the Unix epoch, the bucket of per-event day counters.
pub fn epoch_day(t: Timestamp) -> i64 {
    t.timestamp().div_euclid(86_400)
}
