//! Comparison fields: which person attributes probabilistic matching compares, under which
//! trait names they arrive (ingest's CRM parsers write these names), and how a record of them
//! is read, normalised, from a signal's or a profile's traits.

use super::normalize;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

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

    /// The normalised form of a raw value; `None` when nothing comparable is left.
    pub fn normalise(self, raw: &str) -> Option<String> {
        let v = match self {
            Field::BirthDate => {
                let (y, m, d) = normalize::date(raw)?;
                format!("{y:04}-{m:02}-{d:02}")
            }
            Field::PostalCode => normalize::compact(raw),
            Field::Phone => normalize::digits(raw),
            Field::EmailLocal => {
                let local = raw.split('@').next().unwrap_or_default();
                normalize::compact(local)
            }
            _ => normalize::text(raw),
        };
        (!v.is_empty()).then_some(v)
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The normalised comparison fields one record (or profile) has; absent fields are missing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record(pub BTreeMap<Field, String>);

impl Record {
    /// Reads `fields` from traits (string values; other JSON types are not comparable).
    pub fn from_traits(traits: &BTreeMap<String, serde_json::Value>, fields: &[Field]) -> Self {
        let mut r = Record::default();
        for f in fields {
            if let Some(v) = traits
                .get(f.name())
                .and_then(serde_json::Value::as_str)
                .and_then(|raw| f.normalise(raw))
            {
                r.0.insert(*f, v);
            }
        }
        r
    }

    pub fn get(&self, f: Field) -> Option<&str> {
        self.0.get(&f).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
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
}
