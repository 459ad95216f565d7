//! The JSON form of a [`Timestamp`]: RFC 3339 text, exactly as chrono's serde writes and reads
//! it, without going through `fmt`.
//!
//! Every signal, profile update and cohort change carries timestamps (a profile one per trait),
//! and chrono writes each through `fmt::Display` and reads it with its general parser: about a
//! twentieth of the stages' time. Here the common form, `YYYY-MM-DDTHH:MM:SS[.fff]Z` with a
//! year in 0..=9999, is written and read directly; anything else (other offsets, a space for
//! the `T`, leap seconds, more than nine fraction digits, years outside 0..=9999) goes to
//! chrono, so what is written and what is accepted do not change.
//!
//! Use with `#[serde(with = "crate::rfc3339")]`, or [`option`] and [`map`] for
//! `Option<Timestamp>` and `BTreeMap<String, Timestamp>`.

use crate::time::Timestamp;
use chrono::{Datelike, NaiveDate, Timelike};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`, the longest text [`write`] produces.
const MAX_LEN: usize = 30;

/// `t` as chrono's serde writes it: fraction digits in groups of three, only as many as the
/// value needs, and `Z`. `None` for what chrono writes otherwise (a year outside 0..=9999, a
/// leap second).
fn write(t: &Timestamp, buf: &mut [u8; MAX_LEN]) -> Option<usize> {
    let naive = t.naive_utc();
    let (date, time) = (naive.date(), naive.time());
    let year = date.year();
    let nano = time.nanosecond();
    if !(0..=9999).contains(&year) || nano >= 1_000_000_000 {
        return None;
    }
    let year = year as u32;
    for (at, value) in [
        (0, year / 100),
        (2, year % 100),
        (5, date.month()),
        (8, date.day()),
        (11, time.hour()),
        (14, time.minute()),
        (17, time.second()),
    ] {
        buf[at] = b'0' + (value / 10) as u8;
        buf[at + 1] = b'0' + (value % 10) as u8;
    }
    for (at, sep) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')] {
        buf[at] = sep;
    }
    let (digits, mut fraction) = match nano {
        0 => (0, 0),
        n if n % 1_000_000 == 0 => (3, n / 1_000_000),
        n if n % 1_000 == 0 => (6, n / 1_000),
        n => (9, n),
    };
    let mut len = 19;
    if digits > 0 {
        buf[19] = b'.';
        for at in (20..20 + digits).rev() {
            buf[at] = b'0' + (fraction % 10) as u8;
            fraction /= 10;
        }
        len = 20 + digits;
    }
    buf[len] = b'Z';
    Some(len + 1)
}

/// The instant `s` names when it has the form [`write`] produces (with one to nine fraction
/// digits); `None` for anything else, valid or not.
fn read_common(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    if b.len() < 20
        || b.len() > MAX_LEN
        || [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')]
            .iter()
            .any(|&(at, sep)| b[at] != sep)
        || b[b.len() - 1] != b'Z'
    {
        return None;
    }
    let number = |digits: &[u8]| {
        digits.iter().try_fold(0u32, |n, d| {
            d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
        })
    };
    let nano = match &b[19..b.len() - 1] {
        [] => 0,
        [b'.', digits @ ..] if (1..=9).contains(&digits.len()) => {
            number(digits)? * 10u32.pow(9 - digits.len() as u32)
        }
        _ => return None,
    };
    let date = NaiveDate::from_ymd_opt(
        number(&b[0..4])? as i32,
        number(&b[5..7])?,
        number(&b[8..10])?,
    )?;
    let second = number(&b[17..19])?;
    if second > 59 {
        return None;
    }
    date.and_hms_nano_opt(number(&b[11..13])?, number(&b[14..16])?, second, nano)
        .map(|naive| naive.and_utc())
}

/// Parses RFC 3339 text as chrono's serde does, the common form without chrono's parser.
pub fn parse(s: &str) -> Result<Timestamp, chrono::ParseError> {
    match read_common(s) {
        Some(t) => Ok(t),
        None => s.parse(),
    }
}

pub fn serialize<S: Serializer>(t: &Timestamp, serializer: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; MAX_LEN];
    match write(t, &mut buf) {
        Some(len) => serializer
            .serialize_str(std::str::from_utf8(&buf[..len]).expect("written as ASCII digits")),
        None => t.serialize(serializer),
    }
}

/// Appends `t` as a JSON string to `out`: the bytes [`serialize`] makes `serde_json` write.
pub fn write_json(t: &Timestamp, out: &mut Vec<u8>) {
    let mut buf = [0u8; MAX_LEN];
    match write(t, &mut buf) {
        Some(len) => {
            out.push(b'"');
            out.extend_from_slice(&buf[..len]);
            out.push(b'"');
        }
        None => serde_json::to_writer(out, t).expect("a timestamp serialises"),
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Timestamp, D::Error> {
    deserializer.deserialize_str(Visitor)
}

struct Visitor;

impl de::Visitor<'_> for Visitor {
    type Value = Timestamp;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        // chrono's words, so errors read as before.
        f.write_str("an RFC 3339 formatted date and time string")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Timestamp, E> {
        parse(s).map_err(E::custom)
    }
}

/// A timestamp to serialise in this form inside another value.
struct Wire<'a>(&'a Timestamp);

impl Serialize for Wire<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize(self.0, serializer)
    }
}

/// A timestamp read in this form inside another value.
struct Read(Timestamp);

impl<'de> Deserialize<'de> for Read {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize(deserializer).map(Read)
    }
}

/// `#[serde(with = "crate::rfc3339::option")]`, for `Option<Timestamp>` (with `default` when
/// the field may be missing).
pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(
        t: &Option<Timestamp>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => serializer.serialize_some(&Wire(t)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Timestamp>, D::Error> {
        Ok(Option::<Read>::deserialize(deserializer)?.map(|t| t.0))
    }
}

/// `#[serde(with = "crate::rfc3339::map")]`, for `BTreeMap<String, Timestamp>`.
pub mod map {
    use super::*;

    pub fn serialize<S: Serializer>(
        map: &BTreeMap<String, Timestamp>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_map(map.iter().map(|(k, t)| (k, Wire(t))))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<String, Timestamp>, D::Error> {
        deserializer.deserialize_map(MapVisitor)
    }

    struct MapVisitor;

    impl<'de> de::Visitor<'de> for MapVisitor {
        type Value = BTreeMap<String, Timestamp>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map of RFC 3339 formatted date and time strings")
        }

        fn visit_map<A: de::MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let mut map = BTreeMap::new();
            while let Some((k, t)) = access.next_entry::<String, Read>()? {
                map.insert(k, t.0);
            }
            Ok(map)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Seconds from year 0 to the end of year 9999, around the Unix epoch.
    const YEAR_0: i64 = -62_167_219_200;
    const YEAR_10000: i64 = 253_402_300_800;

    fn ours(t: &Timestamp) -> String {
        serialize(t, serde_json::value::Serializer)
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn chronos(t: &Timestamp) -> String {
        serde_json::to_value(t)
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn nanos() -> impl Strategy<Value = u32> {
        prop_oneof![
            Just(0u32),
            (0u32..1000).prop_map(|ms| ms * 1_000_000),
            (0u32..1_000_000).prop_map(|us| us * 1_000),
            0u32..1_000_000_000,
        ]
    }

    proptest! {
        #[test]
        fn writes_and_reads_what_chrono_does(secs in YEAR_0 - 86_400 * 800..YEAR_10000 + 86_400 * 800, nano in nanos()) {
            let t = chrono::DateTime::from_timestamp(secs, nano).unwrap();
            let text = ours(&t);
            prop_assert_eq!(&text, &chronos(&t));
            prop_assert_eq!(parse(&text).unwrap(), t);
            prop_assert_eq!(parse(&text).unwrap(), text.parse::<Timestamp>().unwrap());
        }

        #[test]
        fn accepts_and_refuses_what_chrono_does(
            secs in YEAR_0..YEAR_10000,
            nano in nanos(),
            edit in 0usize..12,
            at in 0usize..40,
            byte in prop::sample::select(&b"0123456789-:.TtZz +x"[..]),
        ) {
            let mut text = chronos(&chrono::DateTime::from_timestamp(secs, nano).unwrap()).into_bytes();
            let at = at % (text.len() + 1);
            match edit {
                0 => { text.insert(at, byte); }
                1 if at < text.len() => { text.remove(at); }
                2 if at < text.len() => { text[at] = byte; }
                3 => { text.pop(); text.extend_from_slice(b"+02:30"); }
                4 => { text.truncate(19); text.extend_from_slice(b".1234567891Z"); }
                _ => {}
            }
            let text = String::from_utf8(text).unwrap();
            prop_assert_eq!(parse(&text).ok(), text.parse::<Timestamp>().ok(), "{}", text);
        }
    }

    #[test]
    fn leap_seconds_and_far_years_are_chronos_too() {
        let leap = NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_milli_opt(23, 59, 59, 1_500)
            .unwrap()
            .and_utc();
        let far = chrono::DateTime::from_timestamp(YEAR_10000 + 5, 7_000).unwrap();
        for t in [leap, far] {
            assert_eq!(ours(&t), chronos(&t));
            assert_eq!(parse(&ours(&t)).unwrap(), t);
        }
        assert_eq!(ours(&leap), "2016-12-31T23:59:60.500Z");
    }

    #[test]
    fn fields_in_every_form_round_trip_and_errors_name_the_value() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Fields {
            #[serde(with = "super")]
            at: Timestamp,
            #[serde(with = "super::option", default)]
            maybe: Option<Timestamp>,
            #[serde(with = "super::map")]
            times: BTreeMap<String, Timestamp>,
        }
        let t = chrono::DateTime::from_timestamp_millis(1_700_000_000_123).unwrap();
        let value = Fields {
            at: t,
            maybe: Some(t),
            times: BTreeMap::from([("plan".to_owned(), t)]),
        };
        let json = serde_json::to_string(&value).unwrap();
        assert_eq!(
            json,
            r#"{"at":"2023-11-14T22:13:20.123Z","maybe":"2023-11-14T22:13:20.123Z","times":{"plan":"2023-11-14T22:13:20.123Z"}}"#
        );
        assert_eq!(serde_json::from_str::<Fields>(&json).unwrap(), value);
        let bare: Fields =
            serde_json::from_str(r#"{"at":"2023-11-14T23:13:20.123+01:00","times":{}}"#).unwrap();
        assert_eq!((bare.at, bare.maybe), (t, None));
        let err = serde_json::from_str::<Fields>(r#"{"at":"2023-13-14T22:13:20Z","times":{}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("out of range"), "{err}");
        assert!(serde_json::from_str::<Fields>(r#"{"at":7,"times":{}}"#).is_err());
    }
}
