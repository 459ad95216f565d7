//! Comparison fields: which person attributes probabilistic matching compares, under which
//! trait names they arrive (ingest's CRM parsers write these names), and how a record of them
//! is read, normalised, from a signal's or a profile's traits, and the compact binary form a
//! record is kept in beside the blocking index (so a comparison decodes a few bytes, not a
//! profile).

use super::normalize;
use crate::varint;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

/// A field the matcher can compare. The serialised name is also the trait it is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    FirstName,
    LastName,
    BirthDate,
    PostalCode,
    Street,
    City,
    /// Digits of a phone number, for tenants that send it as a trait (ingest does not: it hashes
    /// phones into `phone_sha256`).
    Phone,
    /// The part of an email address before `@`, for tenants that send it as a trait.
    EmailLocal,
}

impl Field {
    pub const ALL: [Field; 8] = [
        Field::FirstName,
        Field::LastName,
        Field::BirthDate,
        Field::PostalCode,
        Field::Street,
        Field::City,
        Field::Phone,
        Field::EmailLocal,
    ];

    /// The field's position in [`Field::ALL`]: its tag in a record's binary form.
    pub fn index(self) -> u8 {
        self as u8
    }

    /// The trait name the value is read from.
    pub fn name(self) -> &'static str {
        match self {
            Field::FirstName => "first_name",
            Field::LastName => "last_name",
            Field::BirthDate => "birth_date",
            Field::PostalCode => "postal_code",
            Field::Street => "street",
            Field::City => "city",
            Field::Phone => "phone",
            Field::EmailLocal => "email_local",
        }
    }

    /// Whether the field is a calendar date (compared by date parts, not by spelling).
    pub fn is_date(self) -> bool {
        self == Field::BirthDate
    }

    /// Appends the normalised form of a raw value to `out` (nothing when nothing comparable
    /// is left).
    fn normalise_into(self, raw: &str, out: &mut String) {
        match self {
            Field::BirthDate => {
                if let Some((y, m, d)) = normalize::date(raw) {
                    // Writing to a `String` cannot fail.
                    let _ = write!(out, "{y:04}-{m:02}-{d:02}");
                }
            }
            Field::PostalCode => normalize::text_into(raw, out, false),
            Field::Phone => normalize::digits_into(raw, out),
            Field::EmailLocal => {
                let local = raw.split('@').next().unwrap_or_default();
                normalize::text_into(local, out, false);
            }
            _ => normalize::text_into(raw, out, true),
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The normalised comparison fields one record (or profile) has; absent fields are missing.
/// The values sit one after the other in one string, in field order, so that reading a record
/// from a block (every candidate of every arriving record) is one allocation.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Record {
    text: String,
    /// Per field of [`Field::ALL`], where its value ends in `text` (it starts where the value
    /// of the previous field present ends).
    ends: [u32; Field::ALL.len()],
    /// Bit `i` set: field `i` of [`Field::ALL`] is present.
    present: u8,
}

impl<S: AsRef<str>> FromIterator<(Field, S)> for Record {
    /// A record of these values; of two values of one field, the later counts.
    fn from_iter<I: IntoIterator<Item = (Field, S)>>(values: I) -> Self {
        let mut slots: [Option<S>; Field::ALL.len()] = Default::default();
        for (f, v) in values {
            slots[usize::from(f.index())] = Some(v);
        }
        let mut r = Record::default();
        for (i, v) in slots.iter().enumerate() {
            if let Some(v) = v {
                r.push(i, v.as_ref());
            }
        }
        r
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Record {
    /// Reads `fields` from traits (string values; other JSON types are not comparable).
    pub fn from_traits(traits: &BTreeMap<String, serde_json::Value>, fields: &[Field]) -> Self {
        // Normalised straight into the record's text, in field order, with room for a
        // person's name, birth date and address: grown a character at a time from nothing,
        // the text was reallocated about four times.
        let mut r = Record {
            text: String::with_capacity(64),
            ..Record::default()
        };
        for (i, f) in Field::ALL.iter().enumerate() {
            if !fields.contains(f) {
                continue;
            }
            let Some(raw) = traits.get(f.name()).and_then(serde_json::Value::as_str) else {
                continue;
            };
            let start = r.text.len();
            f.normalise_into(raw, &mut r.text);
            if r.text.len() > start {
                r.end_field(i);
            }
        }
        r
    }

    /// Appends the value of field `i`, which must come after every field present.
    fn push(&mut self, i: usize, v: &str) {
        self.text.push_str(v);
        self.end_field(i);
    }

    /// Marks field `i` present, its value ending where `text` ends now.
    fn end_field(&mut self, i: usize) {
        self.ends[i] = self.text.len() as u32;
        self.present |= 1 << i;
    }

    pub fn get(&self, f: Field) -> Option<&str> {
        let i = usize::from(f.index());
        if self.present & (1 << i) == 0 {
            return None;
        }
        // The previous field present ends where this one starts.
        let below = self.present & ((1u8 << i) - 1);
        let start = match below {
            0 => 0,
            b => self.ends[7 - b.leading_zeros() as usize],
        };
        Some(&self.text[start as usize..self.ends[i] as usize])
    }

    /// The fields present and their values, in field order.
    pub fn iter(&self) -> impl Iterator<Item = (Field, &str)> + '_ {
        let mut start = 0;
        Field::ALL.iter().enumerate().filter_map(move |(i, f)| {
            if self.present & (1 << i) == 0 {
                return None;
            }
            let end = self.ends[i] as usize;
            let v = &self.text[start..end];
            start = end;
            Some((*f, v))
        })
    }

    pub fn len(&self) -> usize {
        self.present.count_ones() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.present == 0
    }

    /// This record's values of `fields`, updated by those of `newer`.
    pub fn updated(&self, newer: &Record, fields: &[Field]) -> Record {
        self.iter()
            .filter(|(f, _)| fields.contains(f))
            .chain(newer.iter())
            .collect()
    }

    /// A record with no field is no bytes. Any other is [`CONTIGUOUS`], the bits of the fields
    /// present (bit `i`: field `i` of [`Field::ALL`]), each present value's length in bytes as a
    /// LEB128 varint in field order, then the values' text in one piece.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut b);
        b
    }

    /// The length of [`Self::encode`]'s bytes, without encoding.
    pub fn encoded_len(&self) -> usize {
        if self.present == 0 {
            return 0;
        }
        2 + self
            .iter()
            .map(|(_, v)| varint::len(v.len() as u64))
            .sum::<usize>()
            + self.text.len()
    }

    pub fn encode_into(&self, b: &mut Vec<u8>) {
        if self.present == 0 {
            return;
        }
        b.push(CONTIGUOUS);
        b.push(self.present);
        for (_, v) in self.iter() {
            varint::write(b, v.len() as u64);
        }
        b.extend_from_slice(self.text.as_bytes());
    }

    /// The record [`Self::encode`] wrote, or the per-field form written before it (per field
    /// present, in field order: its index, the value's length, the value); `None` if `b` is
    /// neither (fields out of order included: there is one encoding per record in each form).
    pub fn decode(b: &[u8]) -> Option<Self> {
        match b.split_first() {
            Some((&CONTIGUOUS, rest)) => Self::decode_contiguous(rest),
            _ => Self::decode_per_field(b),
        }
    }

    fn decode_contiguous(b: &[u8]) -> Option<Self> {
        let (&present, mut rest) = b.split_first()?;
        // No field at all is written as no bytes.
        if present == 0 {
            return None;
        }
        let mut ends = [0u32; Field::ALL.len()];
        let mut end = 0usize;
        for (i, slot) in ends.iter_mut().enumerate() {
            if present & (1 << i) != 0 {
                end = end.checked_add(read_len(&mut rest)?)?;
                *slot = u32::try_from(end).ok()?;
            }
        }
        if rest.len() != end {
            return None;
        }
        let text = std::str::from_utf8(rest).ok()?;
        // Each value whole: no boundary inside a character.
        if !ends.iter().all(|e| text.is_char_boundary(*e as usize)) {
            return None;
        }
        Some(Record {
            text: text.to_string(),
            ends,
            present,
        })
    }

    fn decode_per_field(mut b: &[u8]) -> Option<Self> {
        let mut r = Record {
            text: String::with_capacity(b.len()),
            ..Record::default()
        };
        let mut next = 0;
        while let Some((&index, rest)) = b.split_first() {
            let i = usize::from(index);
            if i < next || i >= Field::ALL.len() {
                return None;
            }
            next = i + 1;
            let mut rest = rest;
            let len = read_len(&mut rest)?;
            let value = rest.get(..len)?;
            r.push(i, std::str::from_utf8(value).ok()?);
            b = &rest[len..];
        }
        Some(r)
    }
}

/// First byte of a record's contiguous form; the per-field form starts with a field index.
const CONTIGUOUS: u8 = 0x80;

/// A length written as a LEB128 varint (at most 4 bytes), taken off the front of `b`.
fn read_len(b: &mut &[u8]) -> Option<usize> {
    let (mut len, mut shift) = (0usize, 0u32);
    loop {
        let (&byte, tail) = b.split_first()?;
        *b = tail;
        len |= usize::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(len);
        }
        shift += 7;
        if shift > 28 {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn records_read_and_normalise_known_traits() {
        let traits: BTreeMap<String, serde_json::Value> = [
            ("first_name", json!("Zoë")),
            ("last_name", json!("  ")),
            ("birth_date", json!("1984-03-07")),
            ("postal_code", json!("SW1A 1AA")),
            ("email_local", json!("Zoe.Smith@example.com")),
            ("city", json!(42)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let r = Record::from_traits(&traits, &Field::ALL);
        assert_eq!(r.get(Field::FirstName), Some("zoe"));
        assert_eq!(r.get(Field::LastName), None, "blank is missing");
        assert_eq!(r.get(Field::BirthDate), Some("1984-03-07"));
        assert_eq!(r.get(Field::PostalCode), Some("sw1a1aa"));
        assert_eq!(r.get(Field::EmailLocal), Some("zoesmith"));
        assert_eq!(r.get(Field::City), None, "not a string");
        let only_names = Record::from_traits(&traits, &[Field::FirstName]);
        assert_eq!(only_names.len(), 1);
    }

    #[test]
    fn records_round_trip_through_their_binary_form() {
        for (i, f) in Field::ALL.iter().enumerate() {
            assert_eq!(usize::from(f.index()), i, "{f}: the tag is the position");
        }
        let long = "x".repeat(300);
        let r: Record = [
            (Field::EmailLocal, ""),
            (Field::FirstName, "zoe"),
            (Field::Street, long.as_str()),
            (Field::BirthDate, "1984-03-07"),
        ]
        .into_iter()
        .collect();
        assert_eq!(r.get(Field::FirstName), Some("zoe"));
        assert_eq!(r.get(Field::BirthDate), Some("1984-03-07"));
        assert_eq!(r.get(Field::Street), Some(long.as_str()));
        assert_eq!(r.get(Field::EmailLocal), Some(""));
        assert_eq!(r.get(Field::LastName), None);
        assert_eq!(
            r.iter().map(|(f, _)| f).collect::<Vec<_>>(),
            [
                Field::FirstName,
                Field::BirthDate,
                Field::Street,
                Field::EmailLocal
            ],
            "in field order"
        );
        let moved: Record = [(Field::Street, "1 new road"), (Field::City, "leeds")]
            .into_iter()
            .collect();
        let updated = r.updated(&moved, &[Field::FirstName, Field::Street, Field::City]);
        assert_eq!(
            updated.iter().collect::<Vec<_>>(),
            [
                (Field::FirstName, "zoe"),
                (Field::Street, "1 new road"),
                (Field::City, "leeds")
            ],
            "newer values win; fields no longer compared are dropped"
        );
        let b = r.encode();
        assert_eq!(
            b.len(),
            2 + (1 + 1 + 2 + 1) + (3 + 10 + 300),
            "varint lengths"
        );
        assert_eq!(r.encoded_len(), b.len());
        assert_eq!(Record::default().encoded_len(), 0);
        assert!(Record::default().encode().is_empty());
        assert_eq!(Record::decode(&b), Some(r.clone()));
        assert_eq!(Record::decode(&[]), Some(Record::default()));
        // Every cut of the contiguous form is refused.
        for cut in 1..b.len() {
            assert_eq!(Record::decode(&b[..cut]), None, "cut at {cut}");
        }
        assert_eq!(
            Record::decode(&[CONTIGUOUS, 0]),
            None,
            "no field is no bytes"
        );
        assert_eq!(
            Record::decode(&[CONTIGUOUS, 1, 1, b'a', b'b']),
            None,
            "trailing bytes"
        );
        assert_eq!(Record::decode(&[CONTIGUOUS, 1, 1, 0xff]), None, "not UTF-8");
        let split = [CONTIGUOUS, 0b11, 1, 1, 0xc3, 0xa9];
        assert_eq!(
            Record::decode(&split),
            None,
            "a boundary inside a character"
        );

        // The per-field form written before still reads, as the same record.
        let mut old = Vec::new();
        for (f, v) in r.iter() {
            old.push(f.index());
            varint::write(&mut old, v.len() as u64);
            old.extend_from_slice(v.as_bytes());
        }
        assert_eq!(old.len(), (2 + 3) + (2 + 10) + (3 + 300) + 2);
        assert_eq!(Record::decode(&old), Some(r));
        assert_eq!(Record::decode(&[8, 0]), None, "no ninth field");
        assert_eq!(Record::decode(&[1, 0, 0, 0]), None, "out of field order");
        assert_eq!(Record::decode(&[0, 5, b'z']), None, "cut short");
        assert_eq!(Record::decode(&[0, 0x80]), None, "unterminated length");
        assert_eq!(Record::decode(&[0, 1, 0xff]), None, "not UTF-8");
    }
}
