//! Change records: what the resolver and activation publish. Each carries the profile's `version`
//! so consumers can drop duplicates and notice gaps after a replay.

use crate::identifier::Identifier;
use crate::profile::Profile;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityChangeKind {
    /// `retired` profiles were folded into `canonical_id`.
    Merged,
    /// `canonical_id` was split; `created` are the new profiles carved out of it.
    Split,
    /// `canonical_id` was erased.
    Deleted,
}

/// Published on `cdp.identity.changes`, keyed by `canonical_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdentityChange {
    pub tenant: String,
    pub kind: IdentityChangeKind,
    pub canonical_id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub created: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    pub version: u64,
    #[serde(with = "crate::rfc3339")]
    pub at: Timestamp,
}

/// Published on `cdp.profiles`, keyed by canonical id: the whole profile after a change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileUpdate {
    pub profile: Profile,
    /// Equals `profile.version`; repeated at the top level so consumers need not parse the profile.
    pub version: u64,
    /// The `event_id` of the signal that caused the change, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// When the causing signal entered cdp, for end-to-end latency.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::rfc3339::option"
    )]
    pub received_at: Option<Timestamp>,
}

impl ProfileUpdate {
    /// The JSON of the update of `profile` (at its version), from a borrowed profile: the same
    /// bytes as serialising the [`ProfileUpdate`] that owns a copy of it, without the copy.
    pub fn json_of(
        profile: &Profile,
        cause: Option<&str>,
        received_at: Option<Timestamp>,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(1024);
        crate::render::profile_update(&mut out, profile, cause, received_at);
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CohortChangeKind {
    Entered,
    Exited,
}

impl CohortChangeKind {
    /// The serialised name.
    pub fn as_str(self) -> &'static str {
        match self {
            CohortChangeKind::Entered => "entered",
            CohortChangeKind::Exited => "exited",
        }
    }
}

/// Published on `cdp.cohorts`, keyed `audience_key:canonical_id`, as a Segment-style track event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CohortChange {
    /// `Audience Entered` or `Audience Exited`.
    pub event: String,
    #[serde(rename = "type")]
    pub kind: CohortChangeKind,
    pub tenant: String,
    pub audience_key: String,
    pub canonical_id: String,
    /// Per (cohort, profile): strictly increasing.
    pub version: u64,
    #[serde(with = "crate::rfc3339")]
    pub at: Timestamp,
    /// The identifiers this output may carry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identifiers: Vec<Identifier>,
}

impl CohortChange {
    /// The change's JSON: the bytes `serde_json` writes for it, written faster (see
    /// `crate::render`).
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        crate::render::cohort_change(&mut out, self);
        out
    }

    pub fn key(&self) -> String {
        let mut key = String::with_capacity(self.audience_key.len() + 1 + self.canonical_id.len());
        key.push_str(&self.audience_key);
        key.push(':');
        key.push_str(&self.canonical_id);
        key
    }

    pub fn event_name(kind: CohortChangeKind) -> &'static str {
        match kind {
            CohortChangeKind::Entered => "Audience Entered",
            CohortChangeKind::Exited => "Audience Exited",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::from_millis;

    #[test]
    fn identity_change_round_trip() {
        let c = IdentityChange {
            tenant: "t".into(),
            kind: IdentityChangeKind::Merged,
            canonical_id: "cdp_1".into(),
            retired: vec!["cdp_2".into()],
            created: vec![],
            rule: Some("email_match".into()),
            confidence: Some(0.95),
            version: 3,
            at: from_millis(0),
        };
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains("\"kind\":\"merged\""));
        assert_eq!(serde_json::from_str::<IdentityChange>(&json).unwrap(), c);
    }

    #[test]
    fn an_update_rendered_from_a_borrowed_profile_is_the_owned_update_serialised() {
        let at = from_millis(1_700_000_000_123);
        let ids = vec![Identifier::new(
            crate::IdentifierKind::UserId,
            "a\"b\\c@example.com",
        )];
        let mut p = Profile::new("acme", "cdp_1", ids, at);
        p.version = 4;
        p.attributes
            .traits
            .insert("note".into(), serde_json::json!("line\nbreak \u{1}"));
        for (cause, received_at) in [(Some("evt_1"), Some(at)), (None, None)] {
            let owned = ProfileUpdate {
                version: p.version,
                profile: p.clone(),
                cause: cause.map(str::to_string),
                received_at,
            };
            assert_eq!(
                ProfileUpdate::json_of(&p, cause, received_at),
                serde_json::to_vec(&owned).unwrap()
            );
        }
    }

    #[test]
    fn cohort_change_is_a_segment_style_event() {
        let c = CohortChange {
            event: CohortChange::event_name(CohortChangeKind::Entered).into(),
            kind: CohortChangeKind::Entered,
            tenant: "t".into(),
            audience_key: "high_intent".into(),
            canonical_id: "cdp_9".into(),
            version: 1,
            at: from_millis(0),
            identifiers: vec![],
        };
        assert_eq!(c.key(), "high_intent:cdp_9");
        let v: serde_json::Value = serde_json::to_value(&c).unwrap();
        assert_eq!(v["event"], "Audience Entered");
        assert_eq!(v["type"], "entered");
        assert_eq!(serde_json::from_value::<CohortChange>(v).unwrap(), c);
    }
}
