//! What a cohort expression sees: a flat, documented view of a profile at an evaluation time,
//! with per-event counters already windowed (`counts["Pricing Viewed"].last_7d`).

use cdp_proto::{Profile, Timestamp};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize)]
pub struct Counts {
    pub total: i64,
    pub last_1d: i64,
    pub last_7d: i64,
    pub last_30d: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProfileView {
    pub canonical_id: String,
    pub lifecycle_stage: String,
    pub segment: String,
    pub total_touchpoints: i64,
    pub channels_active: Vec<String>,
    /// Days since the last event, or -1 when there was none.
    pub days_since_last_engagement: i64,
    pub counts: BTreeMap<String, Counts>,
    pub traits: BTreeMap<String, serde_json::Value>,
    pub consent: BTreeMap<String, bool>,
    /// Number of identifiers per kind.
    pub identifiers: BTreeMap<String, i64>,
}

impl ProfileView {
    pub fn new(p: &Profile, now: Timestamp) -> Self {
        let a = &p.attributes;
        let mut identifiers = BTreeMap::new();
        for id in &p.identifiers {
            *identifiers.entry(id.kind.as_str().to_string()).or_insert(0) += 1;
        }
        Self {
            canonical_id: p.canonical_id.clone(),
            lifecycle_stage: a.lifecycle_stage.clone().unwrap_or_default(),
            segment: a.segment.clone().unwrap_or_default(),
            total_touchpoints: a.total_touchpoints as i64,
            channels_active: a
                .channels_active
                .iter()
                .map(|s| s.as_str().to_string())
                .collect(),
            days_since_last_engagement: a
                .last_engagement
                .map(|t| (now - t).num_days().max(0))
                .unwrap_or(-1),
            counts: a
                .counts
                .iter()
                .map(|(name, c)| {
                    let counts = Counts {
                        total: c.total as i64,
                        last_1d: c.within_days(now, 1) as i64,
                        last_7d: c.within_days(now, 7) as i64,
                        last_30d: c.within_days(now, 30) as i64,
                    };
                    (name.clone(), counts)
                })
                .collect(),
            traits: a.traits.clone(),
            consent: p.consent.0.clone(),
            identifiers,
        }
    }
}
