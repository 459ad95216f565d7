//! Reading JSON records. JSON text is UTF-8 (RFC 8259 §8.1); checking the whole record once
//! and parsing it as text lets `serde_json` take each string as it finds it, where parsing bytes
//! checks every string separately: a signal decodes in about 0.7–0.8x the time.
//!
//! The one difference from `serde_json::from_slice`: a record with invalid UTF-8 in a field the
//! target type skips is refused here, where `from_slice` passed over it unchecked.

use serde::de::Error as _;
use serde::Deserialize;

/// `raw` parsed as a `T`, refused if it is not UTF-8.
pub fn from_bytes<'a, T: Deserialize<'a>>(raw: &'a [u8]) -> serde_json::Result<T> {
    let text = std::str::from_utf8(raw).map_err(|e| {
        serde_json::Error::custom(format_args!(
            "not UTF-8: invalid byte at offset {}",
            e.valid_up_to()
        ))
    })?;
    serde_json::from_str(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Named {
        name: String,
    }

    #[test]
    fn parses_what_from_slice_parses() {
        let raw =
            br#"{"name":"Zo\u00eb \"Z\" M\u00fcller","n":[1,2.5,{"k":null}],"u":"\u00e9t\u00e9"}"#;
        let ours: Value = from_bytes(raw).unwrap();
        let theirs: Value = serde_json::from_slice(raw).unwrap();
        assert_eq!(ours, theirs);
        let raw = "{\"name\":\"Zoë 東京 🙂\"}".as_bytes();
        assert_eq!(
            from_bytes::<Named>(raw).unwrap(),
            serde_json::from_slice::<Named>(raw).unwrap()
        );
    }

    #[test]
    fn refuses_invalid_utf8_with_its_offset_even_in_a_skipped_field() {
        let mut raw = br#"{"name":"a","skipped":"x"#.to_vec();
        raw.push(0xff);
        raw.extend_from_slice(br#""}"#);
        let e = from_bytes::<Named>(&raw).unwrap_err().to_string();
        assert!(e.contains("not UTF-8: invalid byte at offset 24"), "{e}");
    }

    #[test]
    fn keeps_serde_json_errors_with_their_position() {
        let e = from_bytes::<Named>(b"{\"name\": 1}").unwrap_err();
        assert_eq!((e.line(), e.column()), (1, 10));
        assert!(
            e.to_string().starts_with("invalid type: integer `1`"),
            "{e}"
        );
    }
}
