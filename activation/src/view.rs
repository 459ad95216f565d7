//! What a cohort expression sees: a flat, documented view of a profile at an evaluation time,
//! with per-event counters already windowed (`counts["Pricing Viewed"].last_7d`).

use crate::inputs::Reads;
use cdp_proto::{EventCounter, Profile, Timestamp};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub total: i64,
    pub last_1d: i64,
    pub last_7d: i64,
    pub last_30d: i64,
}

impl Counts {
    /// A counter as seen at `now`: [`EventCounter::within_days`] for each window, in one pass
    /// over the days.
    pub fn of(c: &EventCounter, now: Timestamp) -> Self {
        let today = cdp_proto::time::epoch_day(now);
        let mut windows = [0u64; 3];
        for (day, n) in c.daily.range(today - 29..=today) {
            let age = today - day;
            for (w, days) in windows.iter_mut().zip([1, 7, 30]) {
                if age < days {
                    *w += n;
                }
            }
        }
        Self {
            total: c.total as i64,
            last_1d: windows[0] as i64,
            last_7d: windows[1] as i64,
            last_30d: windows[2] as i64,
        }
    }
}

/// Days since the profile's last event at `now`, or -1 when there was none.
pub fn days_since_last_engagement(p: &Profile, now: Timestamp) -> i64 {
    p.attributes
        .last_engagement
        .map(|t| (now - t).num_days().max(0))
        .unwrap_or(-1)
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
        Self::with_reads(p, now, &Reads::everything())
    }

    /// The view with only the fields (and counters) in `reads`; the others are left empty. For
    /// expressions that read nothing else it evaluates as the whole view does, and costs less.
    pub fn with_reads(p: &Profile, now: Timestamp, reads: &Reads) -> Self {
        let a = &p.attributes;
        let text = |name: &str, v: &Option<String>| {
            if reads.field(name) {
                v.clone().unwrap_or_default()
            } else {
                String::new()
            }
        };
        let counts = if reads.field("counts") {
            a.counts
                .iter()
                .map(|(name, c)| (name.clone(), Counts::of(c, now)))
                .collect()
        } else {
            reads
                .counters()
                .iter()
                .filter_map(|name| Some((name.clone(), Counts::of(a.counts.get(name)?, now))))
                .collect()
        };
        let mut identifiers = BTreeMap::new();
        if reads.field("identifiers") {
            for id in &p.identifiers {
                *identifiers.entry(id.kind.as_str().to_string()).or_insert(0) += 1;
            }
        }
        Self {
            canonical_id: if reads.field("canonical_id") {
                p.canonical_id.clone()
            } else {
                String::new()
            },
            lifecycle_stage: text("lifecycle_stage", &a.lifecycle_stage),
            segment: text("segment", &a.segment),
            total_touchpoints: a.total_touchpoints as i64,
            channels_active: if reads.field("channels_active") {
                a.channels_active
                    .iter()
                    .map(|s| s.as_str().to_string())
                    .collect()
            } else {
                Vec::new()
            },
            days_since_last_engagement: days_since_last_engagement(p, now),
            counts,
            traits: if reads.field("traits") {
                a.traits.clone()
            } else {
                reads
                    .traits()
                    .iter()
                    .filter_map(|name| Some((name.clone(), a.traits.get(name)?.clone())))
                    .collect()
            },
            consent: if reads.field("consent") {
                p.consent.0.clone()
            } else {
                BTreeMap::new()
            },
            identifiers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cdp_proto::time::from_millis;

    #[test]
    fn counts_window_as_the_counter_does() {
        let now = from_millis(1_700_000_000_000);
        let mut c = EventCounter::default();
        for days_ago in [0, 0, 1, 6, 7, 20, 29, 30, 31] {
            c.record(now - chrono::Duration::days(days_ago));
        }
        for at in [
            now,
            now + chrono::Duration::days(3),
            now - chrono::Duration::days(2),
        ] {
            let expected = Counts {
                total: c.total as i64,
                last_1d: c.within_days(at, 1) as i64,
                last_7d: c.within_days(at, 7) as i64,
                last_30d: c.within_days(at, 30) as i64,
            };
            assert_eq!(Counts::of(&c, at), expected);
        }
    }
}
