//! `Signal`: one normalised observation from a source, written by ingest to `cdp.signals`.

use crate::identifier::Identifier;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The channel a signal came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Web,
    App,
    Crm,
    Media,
}

impl Source {
    pub const ALL: [Source; 4] = [Source::Web, Source::App, Source::Crm, Source::Media];

    pub fn as_str(&self) -> &'static str {
        match self {
            Source::Web => "web",
            Source::App => "app",
            Source::Crm => "crm",
            Source::Media => "media",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Source {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Source::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| format!("unknown source {s:?} (web, app, crm, media)"))
    }
}

/// An explicit identity assertion carried by a signal: `a` and `b` belong to one person,
/// by `rule`, with `confidence` in [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdentityLink {
    pub a: Identifier,
    pub b: Identifier,
    pub rule: String,
    pub confidence: f64,
}

/// What happened, when the signal is an event (track, page, screen, identify, ...).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct EventInfo {
    /// Message type: `track`, `page`, `screen`, `identify`, `alias`, `group`, `record`, `install`, `click`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Event name (`Pricing Viewed`), page name, or record type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, serde_json::Value>,
}

/// Consent purposes and their state, e.g. `{"analytics": true, "ad_personalization": false}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Consent(pub BTreeMap<String, bool>);

impl Consent {
    /// `Some(granted)` when the purpose was stated, `None` when unknown.
    pub fn purpose(&self, name: &str) -> Option<bool> {
        self.0.get(name).copied()
    }

    /// Later statements override earlier ones, purpose by purpose.
    pub fn apply(&mut self, newer: &Consent) {
        for (k, v) in &newer.0 {
            self.0.insert(k.clone(), *v);
        }
    }
}

/// A normalised observation. Identifiers are already normalised (hashed where they are PII).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    pub tenant: String,
    pub source: Source,
    /// The source's record id (Segment `messageId`, CRM record id, postback id): unique per source.
    pub event_id: String,
    #[serde(with = "crate::rfc3339")]
    pub event_time: Timestamp,
    #[serde(with = "crate::rfc3339")]
    pub received_at: Timestamp,
    pub identifiers: Vec<Identifier>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<IdentityLink>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<EventInfo>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub traits: BTreeMap<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "is_empty_consent")]
    pub consent: Consent,
}

impl Signal {
    /// The signal's JSON: the bytes `serde_json` writes for it, written faster (see
    /// `crate::render`).
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        crate::render::signal(&mut out, self);
        out
    }
}

fn is_empty_consent(c: &Consent) -> bool {
    c.0.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identifier::IdentifierKind;

    fn sample() -> Signal {
        let email = Identifier::new(IdentifierKind::EmailSha256, "ab".repeat(32));
        let user = Identifier::new(IdentifierKind::UserId, "u-1");
        Signal {
            tenant: "acme".into(),
            source: Source::Web,
            event_id: "m-1".into(),
            event_time: crate::time::from_millis(1_700_000_000_123),
            received_at: crate::time::from_millis(1_700_000_000_456),
            identifiers: vec![user.clone(), email.clone()],
            links: vec![IdentityLink {
                a: user,
                b: email,
                rule: "deterministic_login".into(),
                confidence: 1.0,
            }],
            event: Some(EventInfo {
                kind: "track".into(),
                name: Some("Pricing Viewed".into()),
                properties: [("plan".to_string(), serde_json::json!("pro"))].into(),
            }),
            traits: [("first_name".to_string(), serde_json::json!("Ada"))].into(),
            consent: Consent([("analytics".to_string(), true)].into()),
        }
    }

    #[test]
    fn signal_json_round_trip() {
        let s = sample();
        let json = serde_json::to_string(&s).unwrap();
        assert!(
            json.contains("\"event_time\":\"2023-11-14T22:13:20.123Z\""),
            "{json}"
        );
        assert!(json.contains("\"kind\":\"user_id\""));
        let back: Signal = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn minimal_signal_parses_with_defaults() {
        let json = r#"{"tenant":"t","source":"crm","event_id":"e","event_time":"2024-01-01T00:00:00Z",
            "received_at":"2024-01-01T00:00:01Z","identifiers":[{"kind":"crm_id","value":"003A"}]}"#;
        let s: Signal = serde_json::from_str(json).unwrap();
        assert_eq!(s.source, Source::Crm);
        assert!(s.links.is_empty() && s.event.is_none() && s.consent.0.is_empty());
    }

    #[test]
    fn consent_later_statement_wins() {
        let mut c = Consent([("ads".to_string(), true), ("analytics".to_string(), true)].into());
        c.apply(&Consent([("ads".to_string(), false)].into()));
        assert_eq!(c.purpose("ads"), Some(false));
        assert_eq!(c.purpose("analytics"), Some(true));
        assert_eq!(c.purpose("email"), None);
    }
}
