//! Identifiers: a kind and a normalised value. Their text form `kind:value` is what users type
//! (`cdp profile get email_sha256:542d…`) and what keys the identity graph.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// What an identifier identifies. Tenant-defined kinds are `Custom`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdentifierKind {
    UserId,
    CrmId,
    EmailSha256,
    PhoneSha256,
    /// Advertising or vendor device id (IDFA, GAID, IDFV).
    DeviceId,
    CookieId,
    LoyaltyId,
    /// gclid/fbclid/ttclid/msclkid: case-sensitive, never hashed.
    ClickId,
    AnonymousId,
    Custom(String),
}

impl IdentifierKind {
    /// The built-in kinds, in a stable order.
    pub const BUILT_IN: [IdentifierKind; 9] = [
        IdentifierKind::UserId,
        IdentifierKind::CrmId,
        IdentifierKind::EmailSha256,
        IdentifierKind::PhoneSha256,
        IdentifierKind::DeviceId,
        IdentifierKind::CookieId,
        IdentifierKind::LoyaltyId,
        IdentifierKind::ClickId,
        IdentifierKind::AnonymousId,
    ];

    pub fn as_str(&self) -> &str {
        match self {
            IdentifierKind::Custom(name) => name,
            builtin => builtin.metric_label(),
        }
    }

    /// A bounded label for metrics: a built-in kind's name; custom kinds collapse to `custom`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            IdentifierKind::UserId => "user_id",
            IdentifierKind::CrmId => "crm_id",
            IdentifierKind::EmailSha256 => "email_sha256",
            IdentifierKind::PhoneSha256 => "phone_sha256",
            IdentifierKind::DeviceId => "device_id",
            IdentifierKind::CookieId => "cookie_id",
            IdentifierKind::LoyaltyId => "loyalty_id",
            IdentifierKind::ClickId => "click_id",
            IdentifierKind::AnonymousId => "anonymous_id",
            IdentifierKind::Custom(_) => "custom",
        }
    }
}

impl fmt::Display for IdentifierKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for IdentifierKind {
    type Err = ParseIdentifierError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(kind) = Self::BUILT_IN.iter().find(|k| k.as_str() == s) {
            return Ok(kind.clone());
        }
        let valid = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if valid {
            Ok(IdentifierKind::Custom(s.to_string()))
        } else {
            Err(ParseIdentifierError::InvalidKind)
        }
    }
}

impl Serialize for IdentifierKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for IdentifierKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A normalised identifier. Construct through [`crate::normalize`] from raw input.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Identifier {
    pub kind: IdentifierKind,
    pub value: String,
}

impl Identifier {
    pub fn new(kind: IdentifierKind, value: impl Into<String>) -> Self {
        Self {
            kind,
            value: value.into(),
        }
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseIdentifierError {
    #[error("identifier must be KIND:VALUE")]
    MissingSeparator,
    #[error("identifier kind must be lowercase letters, digits and '_' (at most 64)")]
    InvalidKind,
    #[error("identifier value is empty")]
    EmptyValue,
}

impl FromStr for Identifier {
    type Err = ParseIdentifierError;

    /// Parses `kind:value`. The value is taken as it is: callers that accept raw input normalise it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, value) = s
            .split_once(':')
            .ok_or(ParseIdentifierError::MissingSeparator)?;
        if value.is_empty() {
            return Err(ParseIdentifierError::EmptyValue);
        }
        Ok(Identifier::new(kind.parse()?, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_text_and_json() {
        for kind in IdentifierKind::BUILT_IN {
            assert_eq!(kind.as_str().parse::<IdentifierKind>().unwrap(), kind);
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(serde_json::from_str::<IdentifierKind>(&json).unwrap(), kind);
        }
        let custom: IdentifierKind = "member_no".parse().unwrap();
        assert_eq!(custom, IdentifierKind::Custom("member_no".into()));
        assert_eq!(custom.metric_label(), "custom");
    }

    #[test]
    fn parses_kind_value_with_colons_in_value() {
        let id: Identifier = "click_id:Cj0:KQ".parse().unwrap();
        assert_eq!(id.kind, IdentifierKind::ClickId);
        assert_eq!(id.value, "Cj0:KQ");
        assert_eq!(id.to_string(), "click_id:Cj0:KQ");
    }

    #[test]
    fn rejects_malformed_text() {
        assert_eq!(
            "nocolon".parse::<Identifier>(),
            Err(ParseIdentifierError::MissingSeparator)
        );
        assert_eq!(
            "Bad Kind:x".parse::<Identifier>(),
            Err(ParseIdentifierError::InvalidKind)
        );
        assert_eq!(
            "user_id:".parse::<Identifier>(),
            Err(ParseIdentifierError::EmptyValue)
        );
    }
}
