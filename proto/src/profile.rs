//! The unified profile: one person as the identity graph sees them, with the history of how their
//! identifiers came together and the attributes folded from their signals.

use crate::identifier::Identifier;
use crate::signal::{Consent, Source};
use crate::time::{epoch_day, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// One merge: profile `from` was folded into `into` because of a link accepted under `rule`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergeRecord {
    #[serde(with = "crate::rfc3339")]
    pub merged_at: Timestamp,
    pub rule: String,
    pub confidence: f64,
    pub from: String,
    pub into: String,
}

/// Occurrences of one event name: a total plus per-day buckets for the last 30 days.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EventCounter {
    pub total: u64,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::rfc3339::option"
    )]
    pub last_at: Option<Timestamp>,
    /// Count per day (days since the Unix epoch). Buckets older than [`Self::WINDOW_DAYS`] are pruned.
    #[serde(default)]
    pub daily: BTreeMap<i64, u64>,
}

impl EventCounter {
    pub const WINDOW_DAYS: i64 = 30;

    pub fn record(&mut self, at: Timestamp) {
        self.total += 1;
        if self.last_at.is_none_or(|last| at > last) {
            self.last_at = Some(at);
        }
        *self.daily.entry(epoch_day(at)).or_default() += 1;
        let newest = *self.daily.keys().next_back().unwrap_or(&0);
        self.daily
            .retain(|day, _| *day > newest - Self::WINDOW_DAYS);
    }

    /// Occurrences on the `days` calendar days ending with the day of `now`.
    pub fn within_days(&self, now: Timestamp, days: i64) -> u64 {
        let today = epoch_day(now);
        self.daily
            .range(today - days + 1..=today)
            .map(|(_, n)| *n)
            .sum()
    }

    pub fn merge(&mut self, other: &EventCounter) {
        self.total += other.total;
        self.last_at = self.last_at.max(other.last_at);
        for (day, n) in &other.daily {
            *self.daily.entry(*day).or_default() += n;
        }
    }
}

/// Attributes folded from signals.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Attributes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle_stage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::rfc3339::option"
    )]
    pub first_seen: Option<Timestamp>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::rfc3339::option"
    )]
    pub last_engagement: Option<Timestamp>,
    #[serde(default)]
    pub total_touchpoints: u64,
    #[serde(default)]
    pub channels_active: BTreeSet<Source>,
    /// Tenant traits (`first_name`, `plan`, ...), last write by event time wins.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub traits: BTreeMap<String, serde_json::Value>,
    /// Event time of the write that set each trait, so late events do not overwrite newer values.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        with = "crate::rfc3339::map"
    )]
    pub trait_times: BTreeMap<String, Timestamp>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub counts: BTreeMap<String, EventCounter>,
}

/// The unified profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub tenant: String,
    pub canonical_id: String,
    /// Identifiers of the profile, sorted.
    pub identifiers: Vec<Identifier>,
    /// Canonical ids retired by merges into this profile; they still resolve here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub merge_history: Vec<MergeRecord>,
    pub attributes: Attributes,
    #[serde(default)]
    pub consent: Consent,
    /// Grows by at least one with every change; consumers drop anything not newer than what they hold.
    pub version: u64,
    #[serde(with = "crate::rfc3339")]
    pub created_at: Timestamp,
    #[serde(with = "crate::rfc3339")]
    pub updated_at: Timestamp,
}

impl Profile {
    /// A profile holding `identifiers` and nothing else yet: no history, attributes or consent,
    /// version 0, created and updated `at`.
    pub fn new(
        tenant: impl Into<String>,
        canonical_id: impl Into<String>,
        identifiers: Vec<Identifier>,
        at: Timestamp,
    ) -> Self {
        Self {
            tenant: tenant.into(),
            canonical_id: canonical_id.into(),
            identifiers,
            aliases: Vec::new(),
            merge_history: Vec::new(),
            attributes: Attributes::default(),
            consent: Consent::default(),
            version: 0,
            created_at: at,
            updated_at: at,
        }
    }

    pub fn count_of(&self, kind: &crate::identifier::IdentifierKind) -> usize {
        self.identifiers.iter().filter(|i| &i.kind == kind).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::from_millis;

    const DAY_MS: i64 = 86_400_000;

    #[test]
    fn counter_windows_and_pruning() {
        let base = 20_000 * DAY_MS;
        let mut c = EventCounter::default();
        c.record(from_millis(base));
        c.record(from_millis(base + DAY_MS * 5));
        c.record(from_millis(base + DAY_MS * 6));
        let now = from_millis(base + DAY_MS * 6 + 1000);
        assert_eq!(c.within_days(now, 1), 1);
        assert_eq!(c.within_days(now, 7), 3);
        assert_eq!(c.total, 3);
        c.record(from_millis(base + DAY_MS * 40));
        assert_eq!(c.daily.len(), 1, "buckets older than 30 days are pruned");
        assert_eq!(c.total, 4);
    }

    #[test]
    fn profile_json_round_trip() {
        let mut attributes = Attributes {
            lifecycle_stage: Some("lead".into()),
            total_touchpoints: 3,
            ..Default::default()
        };
        attributes.channels_active.insert(Source::Web);
        attributes
            .counts
            .entry("Pricing Viewed".into())
            .or_default()
            .record(from_millis(1_700_000_000_000));
        let p = Profile {
            tenant: "acme".into(),
            canonical_id: "cdp_0000000000000001".into(),
            identifiers: vec![Identifier::new(crate::IdentifierKind::UserId, "u1")],
            aliases: vec!["cdp_0000000000000002".into()],
            merge_history: vec![MergeRecord {
                merged_at: from_millis(1_700_000_000_000),
                rule: "deterministic_login".into(),
                confidence: 1.0,
                from: "cdp_0000000000000002".into(),
                into: "cdp_0000000000000001".into(),
            }],
            attributes,
            consent: Consent::default(),
            version: 7,
            created_at: from_millis(1_600_000_000_000),
            updated_at: from_millis(1_700_000_000_000),
        };
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Profile>(&json).unwrap(), p);
    }
}
