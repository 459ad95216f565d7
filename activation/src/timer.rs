//! Time-based exits (and entries): a windowed counter drops an old day as time passes, so a
//! membership such as `counts["Order Completed"].last_30d >= 1` can end with no new event. Each
//! profile is indexed by the next instant its windows change; the stage scans the index
//! periodically and re-evaluates the profiles that are due (see `stage::fire_timers`).

use crate::definitions::Definitions;
use cdp_proto::{Profile, Timestamp};

const DAY_MS: i64 = 86_400_000;
/// The windows a [`crate::view::Counts`] exposes, in days.
const WINDOWS_DAYS: [i64; 3] = [1, 7, 30];

/// The first instant after `now` at which re-evaluating `profile` could give a different result
/// without a new event, in ms since the epoch; `None` when only a new event can change it.
pub fn next_due(defs: &Definitions, profile: &Profile, now: Timestamp) -> Option<u64> {
    let now_ms = now.timestamp_millis();
    let mut due: Option<i64> = None;
    let mut consider = |t: i64| {
        if t > now_ms {
            due = Some(due.map_or(t, |d| d.min(t)));
        }
    };
    if defs.uses_windows {
        // A day bucket `d` counts in a window of `w` days through day `d + w - 1` (see
        // `EventCounter::within_days`), so it leaves it at the start of day `d + w`.
        for counter in profile.attributes.counts.values() {
            for day in counter.daily.keys() {
                for w in WINDOWS_DAYS {
                    consider((day + w) * DAY_MS);
                }
            }
        }
    }
    if defs.uses_recency {
        if let Some(last) = profile.attributes.last_engagement {
            // `days_since_last_engagement` steps up every 24 hours after the last event.
            let last_ms = last.timestamp_millis();
            let elapsed = (now_ms - last_ms).max(0);
            consider(last_ms + (elapsed / DAY_MS + 1) * DAY_MS);
        }
    }
    due.map(|d| d as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ActivationConfig;
    use cdp_proto::time::from_millis;

    fn profile() -> Profile {
        Profile {
            version: 1,
            ..Profile::new("t", "cdp_1", vec![], from_millis(0))
        }
    }

    #[test]
    fn due_when_the_next_day_bucket_leaves_a_window() {
        let defs = Definitions::compile(&ActivationConfig::default()).unwrap();
        let mut p = profile();
        let day = 20_000;
        let event = from_millis(day * DAY_MS + 3_600_000);
        p.attributes
            .counts
            .entry("Order Completed".into())
            .or_default()
            .record(event);
        // Leaves last_1d at the start of the next day, then last_7d, then last_30d.
        assert_eq!(
            next_due(&defs, &p, event),
            Some(((day + 1) * DAY_MS) as u64)
        );
        let after_1d = from_millis((day + 1) * DAY_MS);
        assert_eq!(
            next_due(&defs, &p, after_1d),
            Some(((day + 7) * DAY_MS) as u64)
        );
        let after_7d = from_millis((day + 7) * DAY_MS);
        assert_eq!(
            next_due(&defs, &p, after_7d),
            Some(((day + 30) * DAY_MS) as u64)
        );
        assert_eq!(next_due(&defs, &p, from_millis((day + 30) * DAY_MS)), None);
    }

    #[test]
    fn nothing_is_due_when_no_expression_depends_on_time() {
        let mut config = ActivationConfig::default();
        config.cohorts.retain(|c| !c.expression.contains("counts"));
        let defs = Definitions::compile(&config).unwrap();
        let mut p = profile();
        p.attributes
            .counts
            .entry("Order Completed".into())
            .or_default()
            .record(from_millis(0));
        assert_eq!(next_due(&defs, &p, from_millis(0)), None);

        config.cohorts[0].expression = "profile.days_since_last_engagement > 14".into();
        let defs = Definitions::compile(&config).unwrap();
        p.attributes.last_engagement = Some(from_millis(1000));
        assert_eq!(
            next_due(&defs, &p, from_millis(DAY_MS * 3 + 5)),
            Some((1000 + 3 * DAY_MS) as u64)
        );
    }
}
