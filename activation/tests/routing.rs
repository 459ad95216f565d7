//! Routing cohort changes to destinations through the stage's batch apply, with an injected
//! clock: consent gating (and its withdrawal), identifiers per destination, deletions, merges,
//! and exits fired by the timer when a window expires with no new event.

mod support;

use cdp_activation::config::{ActivationConfig, CohortConfig, DestinationConfig};
use cdp_activation::membership::MembershipStore;
use cdp_activation::stage::{apply_records, fire_timers, is_member, ActivationCounters};
use cdp_activation::Definitions;
use cdp_proto::time::from_millis;
use cdp_proto::{IdentityChangeKind, Timestamp};
use support::*;

const ADS: &str = "t.ads";
const CRM: &str = "t.crm";

fn config() -> ActivationConfig {
    let cohort = |key: &str, expression: &str, destinations: &[&str]| CohortConfig {
        key: key.into(),
        description: String::new(),
        expression: expression.into(),
        priority: 0,
        identifiers: vec!["crm_id".into()],
        destinations: destinations.iter().map(|s| s.to_string()).collect(),
    };
    let mut ads = DestinationConfig::kafka("ads", ADS);
    ads.identifiers = vec!["email_sha256".into()];
    ads.consent = vec!["ad_personalization".into()];
    let mut crm = DestinationConfig::kafka("crm", CRM);
    crm.identifiers = vec!["crm_id".into()];
    ActivationConfig {
        cohorts: vec![
            cohort(
                "leads",
                r#"profile.lifecycle_stage == "lead""#,
                &["ads", "crm"],
            ),
            cohort(
                "buyers",
                r#"profile.counts["Order Completed"].last_30d >= 1"#,
                &["crm"],
            ),
        ],
        destinations: vec![ads, crm],
        ..ActivationConfig::default()
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    store: MembershipStore,
    config: ActivationConfig,
    defs: Definitions,
    counters: ActivationCounters,
    input: Input,
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = MembershipStore::open(dir.path()).unwrap();
        let config = config();
        let defs = Definitions::compile(&config).unwrap();
        Self {
            _dir: dir,
            store,
            config,
            defs,
            counters: ActivationCounters::default(),
            input: Input::default(),
        }
    }

    fn apply(&mut self, records: Vec<cdp_bus::Record>, now: Timestamp) -> Vec<cdp_bus::OutRecord> {
        let dead = apply_records(
            &self.store,
            &self.config,
            &self.defs,
            &records,
            now,
            &self.counters,
        )
        .unwrap();
        assert_eq!(dead, 0);
        take_outbox(&self.store)
    }

    fn timers(&mut self, now: Timestamp) -> (usize, Vec<cdp_bus::OutRecord>) {
        let n = fire_timers(&self.store, &self.config, &self.defs, now, &self.counters).unwrap();
        (n, take_outbox(&self.store))
    }
}

fn row(event: &str, audience: &str, id: &str, version: u64) -> (String, String, String, u64) {
    (event.into(), audience.into(), id.into(), version)
}

#[test]
fn consent_gates_each_destination_and_withdrawal_is_an_exit_there() {
    let mut h = Harness::new();
    let granted = profile("p1", "lead", Some(true));
    let refused = profile("p2", "lead", Some(false));
    let unknown = profile("p3", "lead", None);
    let records = vec![
        h.input.update(&granted, 1),
        h.input.update(&refused, 1),
        h.input.update(&unknown, 1),
    ];
    let out = h.apply(records, t0());

    let cohorts: Vec<_> = out.iter().filter(|r| r.topic == "cdp.cohorts").collect();
    assert_eq!(cohorts.len(), 3, "the cohort topic has every change");
    let ads = events_on(&out, ADS);
    assert_eq!(summary(&ads), [row("Audience Entered", "leads", "p1", 1)]);
    assert_eq!(
        ads[0].identifiers,
        [granted.identifiers[0].clone()],
        "only hashed email goes to the ad destination"
    );
    let crm = events_on(&out, CRM);
    assert_eq!(crm.len(), 3, "the CRM needs no consent");
    assert!(crm
        .iter()
        .all(|e| e.identifiers.len() == 1
            && e.identifiers[0].kind == cdp_proto::IdentifierKind::CrmId));
    assert!(out
        .iter()
        .filter(|r| r.topic == ADS)
        .all(|r| r.key.as_deref() == Some(b"leads:p1".as_slice())));

    // p1 withdraws consent while staying a lead: exit at ads only, naming the email sent before.
    let mut withdrawn = granted.clone();
    withdrawn
        .consent
        .0
        .insert("ad_personalization".into(), false);
    withdrawn.identifiers.remove(0);
    // p2 grants it: entry at ads.
    let mut granted_later = refused.clone();
    granted_later
        .consent
        .0
        .insert("ad_personalization".into(), true);
    let records = vec![
        h.input.update(&withdrawn, 2),
        h.input.update(&granted_later, 2),
    ];
    let out = h.apply(records, t0());
    assert!(events_on(&out, CRM).is_empty());
    assert!(out.iter().all(|r| r.topic != "cdp.cohorts"));
    let ads = events_on(&out, ADS);
    assert_eq!(
        summary(&ads),
        [
            row("Audience Exited", "leads", "p1", 2),
            row("Audience Entered", "leads", "p2", 1),
        ]
    );
    assert_eq!(ads[0].identifiers, [granted.identifiers[0].clone()]);

    // p2 leaves the cohort: exits everywhere, versions keep growing per destination.
    let mut customer = granted_later.clone();
    customer.attributes.lifecycle_stage = Some("customer".into());
    let records = vec![h.input.update(&customer, 3)];
    let out = h.apply(records, t0());
    assert_eq!(
        summary(&events_on(&out, ADS)),
        [row("Audience Exited", "leads", "p2", 2)]
    );
    assert_eq!(
        summary(&events_on(&out, CRM)),
        [row("Audience Exited", "leads", "p2", 2)]
    );
    assert!(!is_member(&h.store, &customer, "leads").unwrap());

    // Event ids are distinct per event.
    let mut ids: Vec<String> = ads.iter().map(|e| e.id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), ads.len());
}

#[test]
fn deletion_reaches_every_destination_that_received_the_person_and_no_other() {
    let mut h = Harness::new();
    let consenting = profile("p1", "lead", Some(true));
    let silent = profile("p3", "lead", None);
    let records = vec![h.input.update(&consenting, 1), h.input.update(&silent, 1)];
    h.apply(records, t0());

    let records = vec![h.input.change(IdentityChangeKind::Deleted, "p3", &[], 9)];
    let out = h.apply(records, t0());
    assert!(events_on(&out, ADS).is_empty(), "ads never received p3");
    assert_eq!(
        summary(&events_on(&out, CRM)),
        [
            row("Audience Exited", "leads", "p3", 2),
            row("Profile Deleted", "", "p3", 9),
        ]
    );
    let membership: Vec<_> = out
        .iter()
        .filter(|r| r.topic == "cdp.cohorts.membership")
        .collect();
    assert_eq!(membership.len(), 1);
    assert!(membership[0].value.is_none(), "a tombstone");

    let records = vec![
        h.input.change(IdentityChangeKind::Deleted, "p1", &[], 4),
        h.input
            .change(IdentityChangeKind::Deleted, "nobody", &[], 1),
    ];
    let out = h.apply(records, t0());
    let ads = events_on(&out, ADS);
    assert_eq!(
        summary(&ads),
        [
            row("Audience Exited", "leads", "p1", 2),
            row("Profile Deleted", "", "p1", 4),
        ]
    );
    assert_eq!(ads[0].identifiers, [consenting.identifiers[0].clone()]);
    assert_eq!(events_on(&out, CRM).len(), 2);
    assert!(out
        .iter()
        .all(|r| !r.key.as_deref().is_some_and(|k| k.ends_with(b"nobody"))));

    // Deleting again sends nothing more: what the destinations held was forgotten.
    let records = vec![h.input.change(IdentityChangeKind::Deleted, "p1", &[], 5)];
    assert!(h.apply(records, t0()).is_empty());
}

#[test]
fn a_merge_exits_the_retired_id_and_the_survivor_is_re_evaluated() {
    let mut h = Harness::new();
    let retired = profile("p_old", "lead", Some(true));
    let survivor = profile("p_new", "visitor", Some(true));
    let records = vec![h.input.update(&retired, 1), h.input.update(&survivor, 1)];
    h.apply(records, t0());
    assert!(is_member(&h.store, &retired, "leads").unwrap());

    // The resolver publishes the merge, then the survivor's profile carrying what both had.
    let mut merged = survivor.clone();
    merged.attributes.lifecycle_stage = Some("lead".into());
    merged.aliases = vec!["p_old".into()];
    let records = vec![
        h.input
            .change(IdentityChangeKind::Merged, "p_new", &["p_old"], 2),
        h.input.update(&merged, 2),
    ];
    let out = h.apply(records, t0());
    let cohorts: Vec<(String, Option<String>)> = out
        .iter()
        .filter(|r| r.topic == "cdp.cohorts")
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
            (
                String::from_utf8(r.key.clone().unwrap()).unwrap(),
                v["event"].as_str().map(String::from),
            )
        })
        .collect();
    assert_eq!(
        cohorts,
        [
            ("leads:p_old".into(), Some("Audience Exited".into())),
            ("leads:p_new".into(), Some("Audience Entered".into())),
        ]
    );
    assert_eq!(
        summary(&events_on(&out, ADS)),
        [
            row("Audience Exited", "leads", "p_old", 2),
            row("Audience Entered", "leads", "p_new", 1),
        ]
    );
    assert!(!is_member(&h.store, &retired, "leads").unwrap());
    assert!(is_member(&h.store, &merged, "leads").unwrap());

    // A late replay of the retired profile's old update changes nothing.
    let records = vec![h.input.update(&retired, 1)];
    assert!(h.apply(records, t0()).is_empty());
}

#[test]
fn a_window_expiring_without_a_new_event_exits_from_the_timer() {
    let mut h = Harness::new();
    let mut buyer = profile("p1", "visitor", None);
    buyer
        .attributes
        .counts
        .entry("Order Completed".into())
        .or_default()
        .record(t0());
    let records = vec![h.input.update(&buyer, 1)];
    let out = h.apply(records, t0());
    assert_eq!(
        summary(&events_on(&out, CRM)),
        [row("Audience Entered", "buyers", "p1", 1)]
    );

    // Nothing is due before the first day boundary.
    let (fired, out) = h.timers(from_millis(T0_MS + 3_600_000));
    assert_eq!((fired, out.len()), (0, 0));
    // At the boundaries of the 1- and 7-day windows it is re-evaluated and stays a member.
    let day = T0_MS - T0_MS % DAY_MS;
    let (fired, out) = h.timers(from_millis(day + DAY_MS));
    assert_eq!((fired, out.len()), (1, 0));
    let (fired, out) = h.timers(from_millis(day + 7 * DAY_MS));
    assert_eq!((fired, out.len()), (1, 0));
    assert!(is_member(&h.store, &buyer, "buyers").unwrap());

    // The 30-day window empties: the exit fires with no new event.
    let (fired, out) = h.timers(from_millis(day + 30 * DAY_MS + 1));
    assert_eq!(fired, 1);
    assert_eq!(
        summary(&events_on(&out, CRM)),
        [row("Audience Exited", "buyers", "p1", 2)]
    );
    let cohorts: Vec<_> = out.iter().filter(|r| r.topic == "cdp.cohorts").collect();
    assert_eq!(cohorts.len(), 1);
    assert!(!is_member(&h.store, &buyer, "buyers").unwrap());

    // Nothing is left to fire.
    let (fired, out) = h.timers(from_millis(day + 400 * DAY_MS));
    assert_eq!((fired, out.len()), (0, 0));
}

#[test]
fn a_counter_no_cohort_reads_sets_no_timer() {
    let mut h = Harness::new();
    let mut browser = profile("p1", "visitor", None);
    browser
        .attributes
        .counts
        .entry("Page Viewed".into())
        .or_default()
        .record(t0());
    let records = vec![h.input.update(&browser, 1)];
    h.apply(records, t0());
    // The cohorts read `Order Completed` only: nothing is due at any window's boundary.
    for days in [1, 7, 30, 31] {
        let (fired, out) = h.timers(from_millis(T0_MS + days * DAY_MS));
        assert_eq!((fired, out.len()), (0, 0), "day {days}");
    }

    // An order is read: its windows are due.
    browser
        .attributes
        .counts
        .entry("Order Completed".into())
        .or_default()
        .record(t0());
    let records = vec![h.input.update(&browser, 2)];
    h.apply(records, t0());
    let (fired, _) = h.timers(from_millis(T0_MS + 31 * DAY_MS));
    assert_eq!(fired, 1);
}

#[test]
fn a_new_event_reschedules_and_deletion_cancels_the_timer() {
    let mut h = Harness::new();
    let mut buyer = profile("p1", "visitor", None);
    let orders = buyer
        .attributes
        .counts
        .entry("Order Completed".into())
        .or_default();
    orders.record(t0());
    let records = vec![h.input.update(&buyer, 1)];
    h.apply(records, t0());

    // Another order 20 days later keeps p1 in past the first order's 30 days.
    let later = from_millis(T0_MS + 20 * DAY_MS);
    buyer
        .attributes
        .counts
        .get_mut("Order Completed")
        .unwrap()
        .record(later);
    let records = vec![h.input.update(&buyer, 2)];
    h.apply(records, later);
    let (_, out) = h.timers(from_millis(T0_MS + 31 * DAY_MS));
    assert!(out.is_empty(), "still a member: {out:?}");
    assert!(is_member(&h.store, &buyer, "buyers").unwrap());

    let records = vec![h.input.change(IdentityChangeKind::Deleted, "p1", &[], 3)];
    h.apply(records, later);
    let (fired, out) = h.timers(from_millis(T0_MS + 400 * DAY_MS));
    assert_eq!((fired, out.len()), (0, 0), "a deleted person has no timer");
}

#[test]
fn bad_input_is_dead_lettered_with_reasons_and_the_batch_goes_on() {
    let mut h = Harness::new();
    let good = profile("p1", "lead", Some(true));
    let mut wrong_types = h.input.update(&good, 1);
    wrong_types.value = Some(br#"{"profile":{"canonical_id":7},"version":"x"}"#.to_vec());
    let mut not_json = h.input.change(IdentityChangeKind::Deleted, "p1", &[], 1);
    not_json.value = Some(b"{nope".to_vec());
    let records = vec![wrong_types, not_json, h.input.update(&good, 1)];
    let dead = apply_records(&h.store, &h.config, &h.defs, &records, t0(), &h.counters).unwrap();
    assert_eq!(dead, 2);
    let out = take_outbox(&h.store);
    let dlq: Vec<_> = out.iter().filter(|r| r.topic == "cdp.dlq").collect();
    assert_eq!(dlq.len(), 2);
    for r in &dlq {
        let header = |k: &str| {
            r.headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(header("cdp.error.stage").as_deref(), Some("activation"));
        assert_eq!(header("cdp.error.code").as_deref(), Some("invalid_record"));
        assert!(header("cdp.error.message").is_some_and(|m| !m.is_empty()));
    }
    assert_eq!(
        summary(&events_on(&out, ADS)),
        [row("Audience Entered", "leads", "p1", 1)],
        "the good record after them was applied"
    );
}

#[test]
fn a_member_whose_identifiers_change_is_sent_them_again() {
    let mut h = Harness::new();
    let mut p = profile("p1", "lead", Some(true));
    let records = vec![h.input.update(&p, 1)];
    h.apply(records, t0());

    let new_email =
        cdp_proto::Identifier::new(cdp_proto::IdentifierKind::EmailSha256, "e".repeat(64));
    p.identifiers.push(new_email.clone());
    let records = vec![h.input.update(&p, 2)];
    let out = h.apply(records, t0());
    let ads = events_on(&out, ADS);
    assert_eq!(summary(&ads), [row("Audience Entered", "leads", "p1", 2)]);
    assert!(ads[0].identifiers.contains(&new_email));
    assert!(events_on(&out, CRM).is_empty(), "the CRM id did not change");
    assert!(
        out.iter().all(|r| r.topic != "cdp.cohorts"),
        "membership did not change"
    );

    // An exit afterwards names every identifier the destination holds.
    p.attributes.lifecycle_stage = Some("customer".into());
    let records = vec![h.input.update(&p, 3)];
    let out = h.apply(records, t0());
    let ads = events_on(&out, ADS);
    assert_eq!(summary(&ads), [row("Audience Exited", "leads", "p1", 3)]);
    assert_eq!(ads[0].identifiers.len(), 2);
}

#[test]
fn a_merge_whose_survivor_arrives_first_does_not_remove_the_identifiers_that_moved() {
    let mut h = Harness::new();
    let email =
        |v: &str| cdp_proto::Identifier::new(cdp_proto::IdentifierKind::EmailSha256, v.repeat(64));
    let mut retired = profile("p_old", "lead", Some(true));
    retired.identifiers = vec![email("a")];
    let mut survivor = profile("p_new", "lead", Some(true));
    survivor.identifiers = vec![email("b")];
    let records = vec![h.input.update(&retired, 1), h.input.update(&survivor, 1)];
    h.apply(records, t0());

    // The survivor's profile (now with both emails) is applied before the merge change.
    let mut merged = survivor.clone();
    merged.identifiers = vec![email("a"), email("b")];
    let records = vec![
        h.input.update(&merged, 2),
        h.input
            .change(IdentityChangeKind::Merged, "p_new", &["p_old"], 2),
    ];
    let out = h.apply(records, t0());
    let ads = events_on(&out, ADS);
    assert_eq!(
        summary(&ads),
        [
            row("Audience Entered", "leads", "p_new", 2),
            row("Audience Exited", "leads", "p_old", 2),
        ]
    );
    assert_eq!(ads[0].identifiers, [email("a"), email("b")]);
    assert!(
        ads[1].identifiers.is_empty(),
        "email a moved to the survivor: {:?}",
        ads[1].identifiers
    );
}

#[test]
fn a_merge_read_before_the_retired_ids_last_updates_keeps_it_out_of_every_cohort() {
    let mut h = Harness::new();
    let mut retired = profile("p_old", "visitor", Some(true));
    let records = vec![h.input.update(&retired, 1)];
    h.apply(records, t0());

    // Updates and identity changes travel on different topics: the merge (version 4, above all
    // p_old ever emitted) is read before p_old's update 3, which would make it a lead.
    retired.attributes.lifecycle_stage = Some("lead".into());
    let records = vec![
        h.input
            .change(IdentityChangeKind::Merged, "p_new", &["p_old"], 4),
        h.input.update(&retired, 3),
    ];
    let out = h.apply(records, t0());
    assert!(out.iter().all(|r| r.topic != "cdp.cohorts"), "{out:?}");
    assert!(!is_member(&h.store, &retired, "leads").unwrap());

    // A split gives the id back with a version above the merge: it is evaluated again, and the
    // merge, if it were read again now, is older than its present life and changes nothing.
    let records = vec![h.input.update(&retired, 6)];
    let out = h.apply(records, t0());
    assert!(is_member(&h.store, &retired, "leads").unwrap());
    assert!(out.iter().any(|r| r.topic == "cdp.cohorts"));
    let records = vec![h
        .input
        .change(IdentityChangeKind::Merged, "p_new", &["p_old"], 4)];
    assert!(h.apply(records, t0()).is_empty());
    assert!(is_member(&h.store, &retired, "leads").unwrap());
}
