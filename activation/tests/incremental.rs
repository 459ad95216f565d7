//! Re-evaluating only the cohorts whose inputs changed gives the memberships of evaluating every
//! cohort on every update: random profile updates over days, checked against the naive model.

mod support;

use cdp_activation::config::{ActivationConfig, CohortConfig};
use cdp_activation::membership::MembershipStore;
use cdp_activation::stage::{apply_records, is_member, ActivationCounters};
use cdp_activation::view::ProfileView;
use cdp_activation::Definitions;
use cdp_proto::time::from_millis;
use cdp_proto::{Profile, Source};
use rand::{Rng, SeedableRng};
use std::sync::atomic::Ordering;
use support::*;

fn cohort(key: &str, expression: &str) -> CohortConfig {
    CohortConfig {
        key: key.into(),
        description: String::new(),
        expression: expression.into(),
        priority: 0,
        identifiers: vec![],
        destinations: vec![],
    }
}

fn config(lead_threshold: i64) -> ActivationConfig {
    ActivationConfig {
        cohorts: vec![
            cohort(
                "hot_leads",
                &format!(
                    r#"profile.lifecycle_stage == "lead" && profile.counts["Pricing Viewed"].last_7d >= {lead_threshold}"#
                ),
            ),
            cohort(
                "buyers",
                r#"profile.counts["Order Completed"].last_30d >= 1"#,
            ),
            cohort("busy", "profile.total_touchpoints >= 6"),
            cohort(
                "cross_channel",
                r#""web" in profile.channels_active && "app" in profile.channels_active"#,
            ),
            cohort("emailable", r#"profile.consent["email"] == true"#),
            cohort("smb", r#"profile.traits["plan"] == "smb""#),
            cohort("dormant", "profile.days_since_last_engagement >= 3"),
            cohort(
                "anything",
                r#"size(profile.counts) >= 2 && profile.segment != "x""#,
            ),
            cohort(
                "never_bought",
                r#"!("Order Completed" in profile.counts) && profile.total_touchpoints >= 2"#,
            ),
        ],
        destinations: vec![],
        ..ActivationConfig::default()
    }
}

fn mutate(p: &mut Profile, rng: &mut impl Rng, now: cdp_proto::Timestamp) {
    match rng.gen_range(0..8) {
        0 => {
            let stages = ["visitor", "lead", "customer"];
            p.attributes.lifecycle_stage = Some(stages[rng.gen_range(0..3)].into());
        }
        1 | 2 => {
            let events = ["Pricing Viewed", "Order Completed", "Page Viewed"];
            let name = events[rng.gen_range(0..3)];
            p.attributes
                .counts
                .entry(name.into())
                .or_default()
                .record(now);
            p.attributes.total_touchpoints += 1;
            p.attributes.last_engagement = Some(now);
        }
        3 => {
            let sources = [Source::Web, Source::App, Source::Crm];
            p.attributes
                .channels_active
                .insert(sources[rng.gen_range(0..3)]);
        }
        4 => {
            p.consent.0.insert("email".into(), rng.gen_bool(0.5));
        }
        5 => {
            let plans = ["smb", "enterprise"];
            p.attributes
                .traits
                .insert("plan".into(), plans[rng.gen_range(0..2)].into());
        }
        6 => p.attributes.segment = Some(["x", "y"][rng.gen_range(0..2)].into()),
        // An update that changes nothing a cohort reads.
        _ => p.updated_at = now,
    }
}

#[test]
fn incremental_evaluation_equals_evaluating_every_cohort() {
    let dir = tempfile::tempdir().unwrap();
    let store = MembershipStore::open(dir.path()).unwrap();
    let mut config = config(2);
    let mut defs = Definitions::compile(&config).unwrap();
    let counters = ActivationCounters::default();
    let mut input = Input::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut people: Vec<(Profile, u64)> = (0..12)
        .map(|i| (profile(&format!("p{i}"), "visitor", None), 0))
        .collect();
    for step in 0..600 {
        // Time moves in hours, so windows and recency change between updates too.
        let now = from_millis(T0_MS + step * 3_600_000);
        if step == 300 {
            // A reload that changes one expression: its members are re-evaluated on their next update.
            config = self::config(1);
            defs = Definitions::compile(&config).unwrap();
        }
        let who = rng.gen_range(0..people.len());
        let (p, version) = &mut people[who];
        mutate(p, &mut rng, now);
        *version += 1;
        let records = vec![input.update(p, *version)];
        apply_records(&store, &config, &defs, &records, now, &counters).unwrap();

        let expected = defs.cohorts.evaluate(&ProfileView::new(p, now));
        for (i, result) in expected {
            let key = defs.cohorts.list[i].key();
            assert_eq!(
                is_member(&store, p, key).unwrap(),
                result.unwrap(),
                "step {step}: {} in {key}",
                p.canonical_id
            );
        }
    }
    let run = counters.evaluations.load(Ordering::Relaxed);
    let skipped = counters.evaluations_skipped.load(Ordering::Relaxed);
    assert_eq!(run + skipped, 600 * 9);
    assert!(
        skipped > run,
        "most cohorts keep their inputs between updates: {skipped} skipped, {run} run"
    );
}
