//! Orchestration rules through the stage's batch apply, with an injected clock: suppression
//! lists (and reloading them), frequency caps per channel and window, and competing cohorts
//! resolved by priority; a run restarted between batches and replaying what it had applied
//! delivers exactly what an uninterrupted run does; and, against a model, what a destination
//! holds under random memberships and suppressions.

mod support;

use cdp_activation::config::{
    ActivationConfig, CohortConfig, DestinationConfig, ExclusiveGroupConfig, FrequencyCapConfig,
    SuppressionListConfig,
};
use cdp_activation::destination::DestinationEvent;
use cdp_activation::membership::MembershipStore;
use cdp_activation::rules::{sweep_suppressed, Withheld};
use cdp_activation::stage::{apply_records, is_member, ActivationCounters};
use cdp_activation::Activation;
use cdp_bus::{OutRecord, Record};
use cdp_proto::time::from_millis;
use cdp_proto::{Identifier, IdentifierKind, NormalizeOptions, Profile, Timestamp};
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
use support::*;

const ESP: &str = "t.esp";
const ADS: &str = "t.ads";

fn cohort(key: &str, priority: i32, destinations: &[&str]) -> CohortConfig {
    CohortConfig {
        key: key.into(),
        description: String::new(),
        // Each cohort is switched on by a trait of its own name.
        expression: format!(r#"profile.traits["{key}"] == true"#),
        priority,
        identifiers: vec![],
        destinations: destinations.iter().map(|s| s.to_string()).collect(),
    }
}

/// `esp` (channel email) and `ads` (channel ads) destinations; cohorts as given.
fn config(cohorts: Vec<CohortConfig>) -> ActivationConfig {
    let mut esp = DestinationConfig::kafka("esp", ESP);
    esp.identifiers = vec!["email_sha256".into()];
    esp.channel = "email".into();
    let mut ads = DestinationConfig::kafka("ads", ADS);
    ads.identifiers = vec!["email_sha256".into()];
    ads.channel = "ads".into();
    ActivationConfig {
        cohorts,
        destinations: vec![esp, ads],
        ..ActivationConfig::default()
    }
}

fn email(raw: &str) -> Identifier {
    cdp_proto::normalize(
        IdentifierKind::EmailSha256,
        raw,
        &NormalizeOptions::default(),
    )
    .unwrap()
}

/// A person with a hashed e-mail of `<id>@example.com`, in the cohorts named.
fn person(id: &str, cohorts: &[&str]) -> Profile {
    let mut p = profile(id, "visitor", None);
    p.identifiers = vec![email(&format!("{id}@example.com"))];
    for c in cohorts {
        p.attributes.traits.insert(c.to_string(), true.into());
    }
    p
}

fn suppression(key: &str, file: &std::path::Path, destinations: &[&str]) -> SuppressionListConfig {
    SuppressionListConfig {
        key: key.into(),
        kind: "email_sha256".into(),
        file: file.to_string_lossy().into_owned(),
        values: vec![],
        destinations: destinations.iter().map(|s| s.to_string()).collect(),
        phone_region: "US".into(),
    }
}

struct Harness {
    dir: tempfile::TempDir,
    store: Option<MembershipStore>,
    config: ActivationConfig,
    activation: Activation,
    counters: ActivationCounters,
    input: Input,
    version: u64,
}

impl Harness {
    fn new(config: ActivationConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = MembershipStore::open(&dir.path().join("state")).unwrap();
        Self {
            dir,
            store: Some(store),
            activation: Activation::new(&config).unwrap(),
            config,
            counters: ActivationCounters::default(),
            input: Input::default(),
            version: 0,
        }
    }

    fn store(&self) -> &MembershipStore {
        self.store.as_ref().unwrap()
    }

    /// Closes and reopens the state, as a restarted process does.
    fn restart(&mut self) {
        self.store = None;
        self.store = Some(MembershipStore::open(&self.dir.path().join("state")).unwrap());
    }

    /// The next update of each profile, as records.
    fn updates(&mut self, people: &[&Profile]) -> Vec<Record> {
        self.version += 1;
        let v = self.version;
        people.iter().map(|p| self.input.update(p, v)).collect()
    }

    fn apply(&mut self, records: &[Record], now: Timestamp) -> Vec<OutRecord> {
        let defs = self.activation.current();
        let dead = apply_records(
            self.store(),
            &self.config,
            &defs,
            records,
            now,
            &self.counters,
        )
        .unwrap();
        assert_eq!(dead, 0);
        take_outbox(self.store())
    }

    fn update(&mut self, people: &[&Profile], now: Timestamp) -> Vec<OutRecord> {
        let records = self.updates(people);
        self.apply(&records, now)
    }

    fn withheld(&self, dest: &str, reason: Withheld) -> u64 {
        self.counters.withheld.get(dest, reason)
    }
}

fn row(event: &str, audience: &str, id: &str, version: u64) -> (String, String, String, u64) {
    (event.into(), audience.into(), id.into(), version)
}

fn cohort_changes(out: &[OutRecord]) -> Vec<String> {
    out.iter()
        .filter(|r| r.topic == "cdp.cohorts")
        .map(|r| String::from_utf8(r.key.clone().unwrap()).unwrap())
        .collect()
}

#[test]
fn a_suppressed_identifier_is_never_delivered_but_membership_is_still_published() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("unsubscribed.txt");
    // Raw e-mails as a marketer exports them: any case, stray spaces, a comment.
    std::fs::write(&list, "# unsubscribed\n  P1@Example.COM \n").unwrap();
    let mut config = config(vec![cohort("leads", 0, &["esp", "ads"])]);
    config.suppression_lists = vec![suppression("unsubscribed", &list, &["esp"])];
    let mut h = Harness::new(config);

    let (p1, p2) = (person("p1", &["leads"]), person("p2", &["leads"]));
    let out = h.update(&[&p1, &p2], t0());
    assert_eq!(cohort_changes(&out), ["leads:p1", "leads:p2"]);
    assert_eq!(
        summary(&events_on(&out, ESP)),
        [row("Audience Entered", "leads", "p2", 1)],
        "p1 is suppressed at the ESP"
    );
    assert_eq!(
        events_on(&out, ADS).len(),
        2,
        "the list is for the ESP only"
    );
    assert!(is_member(h.store(), &p1, "leads").unwrap());
    assert_eq!(h.withheld("esp", Withheld::Suppressed), 1);

    // Further updates of p1 send nothing and count nothing more.
    let out = h.update(&[&p1], t0());
    assert!(events_on(&out, ESP).is_empty());
    assert_eq!(h.withheld("esp", Withheld::Suppressed), 1);

    // p1 leaves and is erased: the ESP never received them, so it gets no deletion either.
    let records = vec![h
        .input
        .change(cdp_proto::IdentityChangeKind::Deleted, "p1", &[], 50)];
    let out = h.apply(&records, t0());
    assert!(
        events_on(&out, ESP).is_empty(),
        "{:?}",
        events_on(&out, ESP)
    );
    assert_eq!(
        summary(&events_on(&out, ADS)),
        [
            row("Audience Exited", "leads", "p1", 2),
            row("Profile Deleted", "", "p1", 50),
        ]
    );
}

#[test]
fn a_reloaded_list_removes_people_already_delivered_and_releases_those_taken_off_it() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("suppress.txt");
    std::fs::write(&list, "").unwrap();
    let mut config = config(vec![cohort("leads", 0, &["esp"])]);
    config.suppression_lists = vec![suppression("optouts", &list, &[])];
    let mut h = Harness::new(config.clone());
    let (p1, p2) = (person("p1", &["leads"]), person("p2", &["leads"]));
    let out = h.update(&[&p1, &p2], t0());
    assert_eq!(events_on(&out, ESP).len(), 2);

    // p2 opts out: the file changes and the definitions are reloaded (SIGHUP). The stage sweeps
    // the destinations right after a reload: p2 leaves the ESP without a new event.
    std::fs::write(&list, "p2@example.com\n").unwrap();
    h.activation.reload(&config).unwrap();
    let defs = h.activation.current();
    let swept = sweep_suppressed(h.store(), &defs, t0(), 1, &h.counters.withheld).unwrap();
    assert_eq!(swept, 1);
    let out = take_outbox(h.store());
    let esp = events_on(&out, ESP);
    assert_eq!(summary(&esp), [row("Audience Exited", "leads", "p2", 2)]);
    assert_eq!(
        esp[0].identifiers, p2.identifiers,
        "the exit names who to remove"
    );
    assert!(
        out.iter().all(|r| r.topic != "cdp.cohorts"),
        "still a member"
    );
    assert_eq!(h.withheld("esp", Withheld::Suppressed), 1);
    // Their next update, or another sweep, sends nothing more.
    assert_eq!(
        sweep_suppressed(h.store(), &defs, t0(), 1, &h.counters.withheld).unwrap(),
        0
    );
    let out = h.update(&[&p1, &p2], t0());
    assert!(events_on(&out, ESP).is_empty());
    assert_eq!(h.withheld("esp", Withheld::Suppressed), 1);

    // A file that no longer reads is refused and the running list stays.
    std::fs::write(&list, "p2@example.com\nnot an email\n").unwrap();
    let err = h.activation.reload(&config).unwrap_err().to_string();
    assert!(
        err.contains("suppression_lists[optouts]") && err.contains("line 2"),
        "{err}"
    );
    let out = h.update(&[&p2], t0());
    assert!(events_on(&out, ESP).is_empty());

    // Taken off the list: delivered again.
    std::fs::write(&list, "# nobody\n").unwrap();
    h.activation.reload(&config).unwrap();
    let out = h.update(&[&p2], t0());
    assert_eq!(
        summary(&events_on(&out, ESP)),
        [row("Audience Entered", "leads", "p2", 3)]
    );
}

#[test]
fn a_frequency_cap_withholds_entries_over_it_until_the_window_passes() {
    let mut config = config(vec![
        cohort("a", 0, &["esp"]),
        cohort("b", 0, &["esp", "ads"]),
        cohort("c", 0, &["esp"]),
        cohort("d", 0, &["esp"]),
    ]);
    config.frequency_caps = vec![FrequencyCapConfig {
        channel: "email".into(),
        max: 2,
        window: "7d".into(),
    }];
    let mut h = Harness::new(config);

    // Three entries on the email channel at once: the cap of 2 lets the first two through.
    let mut p = person("p1", &["a", "b", "c"]);
    let out = h.update(&[&p], t0());
    assert_eq!(cohort_changes(&out), ["a:p1", "b:p1", "c:p1"]);
    assert_eq!(
        summary(&events_on(&out, ESP)),
        [
            row("Audience Entered", "a", "p1", 1),
            row("Audience Entered", "b", "p1", 1),
        ]
    );
    assert_eq!(
        events_on(&out, ADS).len(),
        1,
        "another channel has its own count"
    );
    assert_eq!(h.withheld("esp", Withheld::FrequencyCap), 1);

    // Exits are never capped; the capped entry stays withheld while the membership lasts.
    p.attributes.traits.remove("a");
    let day2 = from_millis(T0_MS + DAY_MS);
    let out = h.update(&[&p], day2);
    assert_eq!(
        summary(&events_on(&out, ESP)),
        [row("Audience Exited", "a", "p1", 2)]
    );
    assert_eq!(h.withheld("esp", Withheld::FrequencyCap), 1, "counted once");

    // Within the window a new entry is still over the cap.
    p.attributes.traits.insert("d".into(), true.into());
    let out = h.update(&[&p], from_millis(T0_MS + 6 * DAY_MS));
    assert!(events_on(&out, ESP).is_empty());
    assert_eq!(h.withheld("esp", Withheld::FrequencyCap), 2);

    // Seven days after the first two, entries are delivered again.
    p.attributes.traits.insert("a".into(), true.into());
    let out = h.update(&[&p], from_millis(T0_MS + 7 * DAY_MS));
    assert_eq!(
        summary(&events_on(&out, ESP)),
        [row("Audience Entered", "a", "p1", 3)]
    );
    // c and d were dropped, not postponed: a new entry of theirs is checked again.
    p.attributes.traits.remove("c");
    let out = h.update(&[&p], from_millis(T0_MS + 7 * DAY_MS));
    assert!(events_on(&out, ESP).is_empty(), "c was never delivered");
    p.attributes.traits.insert("c".into(), true.into());
    let out = h.update(&[&p], from_millis(T0_MS + 7 * DAY_MS));
    assert_eq!(
        summary(&events_on(&out, ESP)),
        [row("Audience Entered", "c", "p1", 1)]
    );
    assert_eq!(h.withheld("esp", Withheld::FrequencyCap), 2);
}

#[test]
fn entering_a_better_cohort_exits_the_lesser_one_and_leaving_it_enters_it_again() {
    let mut config = config(vec![
        cohort("nurture", 10, &["esp", "ads"]),
        cohort("high_intent", 30, &["esp"]),
        cohort("winback", 30, &["esp"]),
    ]);
    config.exclusive_groups = vec![ExclusiveGroupConfig {
        key: "lifecycle".into(),
        cohorts: vec!["nurture".into(), "high_intent".into(), "winback".into()],
    }];
    let mut h = Harness::new(config);

    let mut p = person("p1", &["nurture"]);
    let out = h.update(&[&p], t0());
    assert_eq!(
        summary(&events_on(&out, ESP)),
        [row("Audience Entered", "nurture", "p1", 1)]
    );

    p.attributes
        .traits
        .insert("high_intent".into(), true.into());
    let out = h.update(&[&p], t0());
    assert_eq!(
        cohort_changes(&out),
        ["high_intent:p1"],
        "membership is the truth"
    );
    assert_eq!(
        summary(&events_on(&out, ESP)),
        [
            row("Audience Exited", "nurture", "p1", 2),
            row("Audience Entered", "high_intent", "p1", 1),
        ],
        "the exit comes first"
    );
    assert!(
        events_on(&out, ADS).is_empty(),
        "high_intent does not compete at ads"
    );
    assert!(is_member(h.store(), &p, "nurture").unwrap());
    assert_eq!(h.withheld("esp", Withheld::Priority), 1);

    // winback ties with high_intent on priority: the smaller key (high_intent) keeps the person.
    p.attributes.traits.insert("winback".into(), true.into());
    let out = h.update(&[&p], t0());
    assert!(events_on(&out, ESP).is_empty());
    // Leaving high_intent hands the person to winback, then leaving winback back to nurture.
    p.attributes.traits.remove("high_intent");
    let out = h.update(&[&p], t0());
    assert_eq!(
        summary(&events_on(&out, ESP)),
        [
            row("Audience Exited", "high_intent", "p1", 2),
            row("Audience Entered", "winback", "p1", 1),
        ]
    );
    p.attributes.traits.remove("winback");
    let out = h.update(&[&p], t0());
    assert_eq!(
        summary(&events_on(&out, ESP)),
        [
            row("Audience Exited", "winback", "p1", 2),
            row("Audience Entered", "nurture", "p1", 3),
        ]
    );

    // Entering two competing cohorts at once delivers only the better one.
    let q = person("q1", &["nurture", "high_intent"]);
    let out = h.update(&[&q], t0());
    assert_eq!(
        summary(&events_on(&out, ESP)),
        [row("Audience Entered", "high_intent", "q1", 1)]
    );
    assert_eq!(
        summary(&events_on(&out, ADS)),
        [row("Audience Entered", "nurture", "q1", 1)]
    );
}

/// What one run delivered, without the evaluation time.
fn delivered(out: &[OutRecord]) -> Vec<(String, String, String, String, u64, Vec<Identifier>)> {
    out.iter()
        .filter(|r| r.topic == ESP || r.topic == ADS)
        .map(|r| {
            let e: DestinationEvent = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
            (
                e.destination,
                e.event,
                e.audience_key,
                e.canonical_id,
                e.version,
                e.identifiers,
            )
        })
        .collect()
}

#[test]
fn a_restarted_run_replaying_its_input_delivers_exactly_what_an_uninterrupted_run_does() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("suppress.txt");
    std::fs::write(&list, "p3@example.com\n").unwrap();
    let mut config = config(vec![
        cohort("nurture", 10, &["esp", "ads"]),
        cohort("high_intent", 30, &["esp"]),
        cohort("offers", 0, &["esp"]),
        cohort("lookalike", 0, &["ads"]),
    ]);
    config.suppression_lists = vec![suppression("optouts", &list, &["esp"])];
    config.frequency_caps = vec![FrequencyCapConfig {
        channel: "email".into(),
        max: 2,
        window: "3d".into(),
    }];
    config.exclusive_groups = vec![ExclusiveGroupConfig {
        key: "lifecycle".into(),
        cohorts: vec!["nurture".into(), "high_intent".into()],
    }];

    // Random memberships for 6 people over 12 days, one batch a day.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let names = ["nurture", "high_intent", "offers", "lookalike"];
    let mut batches: Vec<(Vec<Profile>, Timestamp)> = Vec::new();
    for day in 0..12 {
        let mut people = Vec::new();
        for i in 0..6 {
            if rng.gen_bool(0.7) {
                let chosen: Vec<&str> = names
                    .iter()
                    .copied()
                    .filter(|_| rng.gen_bool(0.5))
                    .collect();
                people.push(person(&format!("p{i}"), &chosen));
            }
        }
        batches.push((people, from_millis(T0_MS + day * DAY_MS)));
    }

    let mut straight = Harness::new(config.clone());
    let mut expected = Vec::new();
    for (people, now) in &batches {
        let refs: Vec<&Profile> = people.iter().collect();
        let records = straight.updates(&refs);
        expected.extend(delivered(&straight.apply(&records, *now)));
    }
    assert!(
        straight.withheld("esp", Withheld::FrequencyCap) > 0,
        "the cap was reached"
    );
    assert!(
        straight.withheld("esp", Withheld::Priority) > 0,
        "cohorts competed"
    );
    assert!(
        straight.withheld("esp", Withheld::Suppressed) > 0,
        "p3 was suppressed"
    );

    // The same input; after every batch the process restarts and reads the previous batch again,
    // as it does when it died after committing its state but before committing to the group.
    let mut restarted = Harness::new(config);
    let mut got = Vec::new();
    let mut previous: Vec<Record> = Vec::new();
    for (people, now) in &batches {
        restarted.restart();
        let refs: Vec<&Profile> = people.iter().collect();
        let records = restarted.updates(&refs);
        let mut replay = previous.clone();
        replay.extend(records.iter().cloned());
        got.extend(delivered(&restarted.apply(&replay, *now)));
        previous = records;
    }
    assert_eq!(got, expected);
    let caps = |h: &Harness| h.store().entries("caps").unwrap();
    assert_eq!(caps(&restarted), caps(&straight));
    assert!(!caps(&straight).is_empty());
}

#[test]
fn what_a_destination_holds_equals_the_model_under_random_memberships() {
    // Three competing cohorts with distinct priorities and one free cohort, on one destination
    // with a suppression list; no cap. The destination must hold exactly the best member cohort
    // of the group plus the free one, nobody while suppressed, and the event stream must say so.
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("suppress.txt");
    std::fs::write(&list, "blocked@example.com\n").unwrap();
    let names = ["low", "mid", "high", "free"];
    let mut config = config(vec![
        cohort("low", 1, &["esp"]),
        cohort("mid", 2, &["esp"]),
        cohort("high", 3, &["esp"]),
        cohort("free", 0, &["esp"]),
    ]);
    config.exclusive_groups = vec![ExclusiveGroupConfig {
        key: "tier".into(),
        cohorts: vec!["low".into(), "mid".into(), "high".into()],
    }];
    config.suppression_lists = vec![suppression("optouts", &list, &[])];

    for seed in 0..20 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut h = Harness::new(config.clone());
        let mut held: BTreeSet<String> = BTreeSet::new();
        for step in 0..40 {
            let chosen: Vec<&str> = names
                .iter()
                .copied()
                .filter(|_| rng.gen_bool(0.5))
                .collect();
            let mut p = person("p1", &chosen);
            let suppressed = rng.gen_bool(0.2);
            if suppressed {
                p.identifiers.push(email("blocked@example.com"));
            }
            let out = h.update(&[&p], t0());
            for e in events_on(&out, ESP) {
                match e.event.as_str() {
                    "Audience Entered" => assert!(held.insert(e.audience_key.clone())),
                    "Audience Exited" => assert!(held.remove(&e.audience_key)),
                    other => panic!("unexpected {other}"),
                }
            }
            let mut model = BTreeSet::new();
            if !suppressed {
                if let Some(best) = ["high", "mid", "low"].iter().find(|c| chosen.contains(c)) {
                    model.insert(best.to_string());
                }
                if chosen.contains(&"free") {
                    model.insert("free".to_string());
                }
            }
            assert_eq!(
                held, model,
                "seed {seed} step {step}: {chosen:?} suppressed={suppressed}"
            );
        }
    }
}
