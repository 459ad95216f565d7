//! The generated workload: deterministic for a seed, every line in a shape the parsers accept,
//! and `truth.csv` naming exactly the event ids the parsers emit.

use cdp_ingest::workload::{file_name, generate, generate_with, WorkloadOptions, TRUTH_FILE};
use cdp_ingest::{normalize_payload_counted, rejection, DroppedIdentifiers, NormalizeOptions};
use cdp_proto::{IdentifierKind, Signal, Source};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap()
}

struct Parsed {
    /// `(source, record_id) -> person_id` from truth.csv.
    truth: BTreeMap<(String, String), String>,
    signals: Vec<Signal>,
    invalid_lines: u64,
    dropped: DroppedIdentifiers,
}

fn parse_all(dir: &Path) -> Parsed {
    let mut truth = BTreeMap::new();
    let text = read(dir, TRUTH_FILE);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("source,record_id,person_id"));
    for line in lines {
        let (source, rest) = line.split_once(',').unwrap();
        let (record, person) = rest.rsplit_once(',').unwrap();
        let record = record.trim_matches('"').replace("\"\"", "\"");
        let previous = truth.insert((source.to_string(), record.clone()), person.to_string());
        assert!(
            previous.is_none(),
            "record id {source}/{record} is not unique"
        );
    }
    let mut signals = Vec::new();
    let mut invalid_lines = 0;
    let mut dropped = DroppedIdentifiers::default();
    let received = cdp_proto::time::from_millis(1_735_689_600_000);
    for source in Source::ALL {
        for line in read(dir, file_name(source)).lines() {
            match normalize_payload_counted(
                source,
                "default",
                line.as_bytes(),
                received,
                &NormalizeOptions::default(),
                &mut dropped,
            ) {
                Ok(s) => signals.extend(s),
                Err(r) => {
                    assert_eq!(r.code, rejection::INVALID_JSON, "{source}: {r}: {line}");
                    invalid_lines += 1;
                }
            }
        }
    }
    Parsed {
        truth,
        signals,
        invalid_lines,
        dropped,
    }
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let c = tempfile::tempdir().unwrap();
    let sa = generate(a.path(), 150, 42).unwrap();
    let sb = generate(b.path(), 150, 42).unwrap();
    let sc = generate(c.path(), 150, 43).unwrap();
    assert_eq!(sa, sb);
    for name in [
        "web.jsonl",
        "app.jsonl",
        "crm.jsonl",
        "media.jsonl",
        TRUTH_FILE,
    ] {
        assert_eq!(read(a.path(), name), read(b.path(), name), "{name}");
    }
    assert_ne!(read(a.path(), "web.jsonl"), read(c.path(), "web.jsonl"));
    assert_ne!(sa, sc);
}

#[test]
fn truth_names_exactly_the_event_ids_the_parsers_emit() {
    let dir = tempfile::tempdir().unwrap();
    let summary = generate(dir.path(), 600, 7).unwrap();
    let parsed = parse_all(dir.path());

    let emitted: BTreeSet<(String, String)> = parsed
        .signals
        .iter()
        .map(|s| (s.source.as_str().to_string(), s.event_id.clone()))
        .collect();
    assert_eq!(
        emitted.len(),
        parsed.signals.len(),
        "event ids are unique per source"
    );
    let truth_ids: BTreeSet<(String, String)> = parsed.truth.keys().cloned().collect();
    assert_eq!(emitted, truth_ids);
    assert_eq!(summary.truth_rows, parsed.truth.len() as u64);
    assert_eq!(summary.invalid, parsed.invalid_lines);

    // Line counts per file match the summary, and every person is in the truth.
    for source in Source::ALL {
        let lines = read(dir.path(), file_name(source)).lines().count() as u64;
        assert_eq!(lines, summary.for_source(source), "{source}");
        assert!(lines > 0, "{source}");
    }
    let people: BTreeSet<&String> = parsed.truth.values().collect();
    assert_eq!(people.len(), 600);
}

#[test]
fn workload_is_realistic_and_noisy() {
    let dir = tempfile::tempdir().unwrap();
    let summary = generate(dir.path(), 1_000, 11).unwrap();
    let per_person = summary.truth_rows as f64 / 1_000.0;
    assert!(
        (20.0..=40.0).contains(&per_person),
        "{per_person} records per person"
    );
    let parsed = parse_all(dir.path());

    // No raw address survives normalisation. (CRM event ids use `@` before the version time.)
    for s in &parsed.signals {
        let mut v = serde_json::to_value(s).unwrap();
        v["event_id"] = serde_json::Value::Null;
        let json = v.to_string();
        assert!(!json.contains('@'), "raw email in {json}");
    }

    // The noise is there, and it is dropped per identifier.
    let d = &parsed.dropped;
    assert!(d.get("user_id", "blocked") > 0, "\"null\" user ids");
    assert!(d.get("email_sha256", "blocked") > 0, "test@test.com");
    assert!(
        d.get("device_id", "ad_tracking_disabled") > 0,
        "limited ad tracking"
    );
    assert!(
        d.get("device_id", "zero_advertising_id") > 0,
        "all-zero IDFAs"
    );
    assert!(d.get("device_id", "blocked") > 0, "unfilled MMP macros");

    let person_of =
        |s: &Signal| parsed.truth[&(s.source.as_str().to_string(), s.event_id.clone())].clone();
    let mut users_of_device: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut people_of_email: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stages = BTreeSet::new();
    let mut crm_people = BTreeSet::new();
    let mut kinds = BTreeSet::new();
    let mut rules = BTreeSet::new();
    for s in &parsed.signals {
        let person = person_of(s);
        for id in &s.identifiers {
            kinds.insert(id.kind.as_str().to_string());
            match id.kind {
                IdentifierKind::DeviceId if s.source == Source::App => {
                    users_of_device
                        .entry(id.value.clone())
                        .or_default()
                        .insert(person.clone());
                }
                IdentifierKind::EmailSha256 => {
                    people_of_email
                        .entry(id.value.clone())
                        .or_default()
                        .insert(person.clone());
                }
                _ => {}
            }
        }
        for l in &s.links {
            rules.insert(l.rule.clone());
        }
        if s.source == Source::Crm {
            crm_people.insert(person);
            if let Some(stage) = s.traits.get("lifecycle_stage").and_then(|v| v.as_str()) {
                stages.insert(stage.to_string());
            }
        }
    }
    // Shared office and family devices: one install, several people.
    assert!(users_of_device.values().any(|people| people.len() >= 2));
    // Email variants still hash to one identifier per person, never shared between people.
    assert!(people_of_email.values().all(|people| people.len() == 1));
    let crm_share = crm_people.len() as f64 / 1_000.0;
    assert!(
        (0.35..=0.65).contains(&crm_share),
        "{crm_share} of people in the CRM"
    );
    let vocabulary = [
        "subscriber",
        "lead",
        "marketingqualifiedlead",
        "salesqualifiedlead",
        "opportunity",
        "customer",
    ];
    assert!(
        stages.iter().all(|s| vocabulary.contains(&s.as_str())),
        "{stages:?}"
    );
    assert!(stages.len() >= 5, "{stages:?}");
    for kind in [
        "user_id",
        "crm_id",
        "email_sha256",
        "phone_sha256",
        "device_id",
        "cookie_id",
        "click_id",
        "anonymous_id",
    ] {
        assert!(kinds.contains(kind), "{kind}");
    }
    for rule in [
        "deterministic_login",
        "crm_record",
        "mmp_attribution",
        "device_match",
        "same_event",
        "click_id_match",
    ] {
        assert!(rules.contains(rule), "{rule}");
    }
}

#[test]
fn now_is_a_parameter() {
    let dir = tempfile::tempdir().unwrap();
    let now = chrono::DateTime::parse_from_rfc3339("2030-06-15T00:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    generate_with(
        dir.path(),
        &WorkloadOptions {
            profiles: 50,
            seed: 1,
            now,
        },
    )
    .unwrap();
    let parsed = parse_all(dir.path());
    let earliest = now - chrono::Duration::days(31);
    let latest = now + chrono::Duration::days(1);
    for s in &parsed.signals {
        assert!(
            s.event_time > earliest && s.event_time < latest,
            "{} at {}",
            s.event_id,
            s.event_time
        );
    }
}
