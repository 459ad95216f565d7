//! Exactly-once activation: an activation process killed with SIGKILL at random points while it
//! works through the profile updates and identity changes, and restarted each time, leaves the
//! downstream membership view and its membership state equal to those of a run that was never
//! interrupted, and never emits a lower version of a (cohort, profile) after a higher one.

mod support;

use cdp_activation::membership::{MembershipStore, COLUMN_FAMILIES};
use cdp_activation::standing::Standing;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::{read_topic, stdout_of, State};

/// The activation of the crashing runs has its own group, state and output topics, so it reads
/// exactly the profile updates and identity changes the reference activation saw. Its batches
/// are small, so that a kill has many commits to land between.
const CRASH_ENV: [(&str, &str); 4] = [
    ("CDP_ACTIVATION__GROUP", "cdp-activation-crash"),
    ("CDP_ACTIVATION__COHORTS_TOPIC", "crash.cohorts"),
    (
        "CDP_ACTIVATION__MEMBERSHIP_TOPIC",
        "crash.cohorts.membership",
    ),
    ("CDP_ACTIVATION__BATCH_SIZE", "100"),
];

fn cdp(data: &Path, args: &[&str], crash: bool) -> Command {
    let mut c = support::command(data, args);
    if crash {
        c.envs(CRASH_ENV);
    }
    c
}

/// Every record of `topic`, in partition order, as `(key, value)`; a tombstone's value is null.
fn records(data: &Path, topic: &str) -> Vec<(String, Value)> {
    read_topic(data, topic)
        .into_iter()
        .map(|record| {
            let key = record["key"].as_str().expect("keyed record").to_string();
            (key, record["value"].clone())
        })
        .collect()
}

/// What a change says, without `at`: the wall-clock time it was evaluated differs between runs.
fn content(value: &Value) -> Value {
    let mut v = value.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("at");
    }
    v
}

/// The compacted view of a membership topic: the latest record per key; a tombstone removes it.
fn membership_view(data: &Path, topic: &str) -> BTreeMap<String, Value> {
    let mut view = BTreeMap::new();
    for (key, value) in records(data, topic) {
        if value.is_null() {
            view.remove(&key);
        } else {
            view.insert(key, content(&value));
        }
    }
    view
}

/// Canonical ids that a merge retired or an erasure deleted.
fn retired_ids(data: &Path) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for (_, change) in records(data, "cdp.identity.changes") {
        match change["kind"].as_str() {
            Some("merged") => ids.extend(
                change["retired"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|id| id.as_str().map(String::from)),
            ),
            Some("deleted") => ids.extend(change["canonical_id"].as_str().map(String::from)),
            _ => {}
        }
    }
    ids
}

/// The canonical id a `memberships` key as [`state`] lists it (`tenant \0 id \0 audience`) or a
/// `dest_members` key (`dest \0 tenant \0 id \0 audience`) is about.
fn subject(cf: &str, key: &[u8]) -> String {
    let at = if cf == "memberships" { 1 } else { 2 };
    let part = key.split(|b| *b == 0).nth(at).unwrap_or_default();
    String::from_utf8_lossy(part).into_owned()
}

/// Every column family but the outbox and its numbering (`meta` `next_outbox`): how many records
/// went through the outbox depends on where batches and crashes cut the input, and what they
/// said is compared on the topics. `memberships` is listed per (person, cohort); its `since` is
/// the wall-clock time of the change and is left out: membership and its version are compared.
fn state(dir: &Path) -> State {
    let store = MembershipStore::open_read_only(dir).expect("activation state opens");
    COLUMN_FAMILIES
        .iter()
        .filter(|cf| **cf != "outbox")
        .map(|cf| {
            let mut entries = store.entries(cf).expect("scan");
            entries.retain(|(k, _)| !(*cf == "meta" && k.as_slice() == b"next_outbox"));
            if *cf == "memberships" {
                // One entry per (person, cohort), keyed `tenant \0 id \0 audience`.
                entries = entries
                    .into_iter()
                    .flat_map(|(person, v)| {
                        let standing = Standing::decode(&v).expect("memberships record");
                        standing
                            .iter()
                            .map(|(audience, s)| {
                                let key = [&person[..], b"\0", audience.as_bytes()].concat();
                                let value = format!("member={} seq={}", s.member, s.seq);
                                (key, value.into_bytes())
                            })
                            .collect::<Vec<_>>()
                    })
                    .collect();
            }
            (*cf, entries)
        })
        .collect()
}

/// Input records the state in `dir` has applied (the sum of its stored offsets); none when the
/// process was killed before it created its state, or while RocksDB was still adding its column
/// families (the database exists without some of them; the next open adds them, and nothing is
/// written before that open returns).
fn applied(dir: &Path) -> i64 {
    if !dir.join("CURRENT").exists() {
        return 0;
    }
    let store = match MembershipStore::open_read_only(dir) {
        Ok(store) => store,
        Err(e) if e.to_string().contains("Column family not found") => return 0,
        Err(e) => panic!("activation state opens: {e}"),
    };
    store
        .entries("offsets")
        .expect("scan")
        .iter()
        .map(|(_, v)| i64::from_be_bytes(v.as_slice().try_into().expect("8-byte offset")))
        .sum()
}

#[test]
fn killed_activation_ends_with_the_membership_of_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("workload");
    let data = dir.path().join("data");
    support::generate_seeded(&input, 600, 21);
    support::run_until_drained(&data, &input);
    let activation_dir = data.join("activation");
    let reference_dir = dir.path().join("reference-activation");
    std::fs::rename(&activation_dir, &reference_dir).unwrap();
    let reference = state(&reference_dir);
    let total = applied(&reference_dir);
    assert!(
        reference["memberships"].len() > 50,
        "the workload puts people in cohorts"
    );

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut mid_stream = 0;
    for _ in 0..6 {
        let mut child = cdp(&data, &["activate"], true)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.gen_range(300..3000)));
        child.kill().unwrap();
        child.wait().unwrap();
        let progress = applied(&activation_dir);
        eprintln!("killed after applying {progress} of {total} input records");
        if progress < total {
            mid_stream += 1;
        }
    }
    assert!(
        mid_stream > 0,
        "at least one kill landed before the input was applied"
    );
    stdout_of(&mut cdp(&data, &["activate", "--until-drained"], true));
    assert_eq!(applied(&activation_dir), total);

    let mut recovered = state(&activation_dir);
    // A retired id's history is not a function of the input alone: its last updates and the
    // change that retired it are on different topics, and whichever is read first decides
    // whether those updates were applied (entered, then exited at the merge) or ignored as
    // stale (never entered). Both runs must leave it in no cohort and no destination; which
    // exits it went through (the `memberships` and `dest_members` entries of retired ids) is left
    // out of the comparison.
    let retired = retired_ids(&data);
    assert!(!retired.is_empty(), "the workload merges profiles");
    let mut reference = reference;
    for st in [&mut reference, &mut recovered] {
        for cf in ["memberships", "dest_members"] {
            let entries = st.get_mut(cf).unwrap();
            for (k, v) in entries.iter() {
                let still_in = if cf == "memberships" {
                    v.starts_with(b"member=true")
                } else {
                    let held: cdp_activation::membership::DestMember =
                        serde_json::from_slice(v).expect("destination state");
                    held.member
                };
                assert!(
                    !(still_in && retired.contains(&subject(cf, k))),
                    "retired {} is still in {cf}",
                    subject(cf, k)
                );
            }
            entries.retain(|(k, _)| !retired.contains(&subject(cf, k)));
        }
    }
    let differing = support::differing(&reference, &recovered);
    assert!(
        differing.is_empty(),
        "after {mid_stream} kills mid-stream these column families differ: {differing:?}"
    );

    let expected = membership_view(&data, "cdp.cohorts.membership");
    assert!(!expected.is_empty());
    let got = membership_view(&data, "crash.cohorts.membership");
    let wrong: Vec<_> = expected
        .keys()
        .chain(got.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|k| expected.get(*k) != got.get(*k))
        .take(5)
        .map(|k| (k, expected.get(k), got.get(k)))
        .collect();
    assert!(wrong.is_empty(), "membership views differ, e.g. {wrong:?}");

    // Per (cohort, profile), versions never go down, and a version repeated after a crash says
    // the same thing.
    let output = records(&data, "crash.cohorts");
    let mut last: BTreeMap<&str, (u64, Value)> = BTreeMap::new();
    for (key, value) in &output {
        let version = value["version"].as_u64().expect("versioned change");
        let said = content(value);
        if let Some((prev, prev_said)) = last.get(key.as_str()) {
            assert!(
                version >= *prev,
                "{key}: version {version} emitted after {prev}"
            );
            if version == *prev {
                assert_eq!(&said, prev_said, "{key}: version {version} said twice");
            }
        }
        last.insert(key, (version, said));
    }
    // Every change of the uninterrupted run about a live profile is there, and no other: a live
    // profile's history depends only on its own updates, which one partition orders.
    let live_changes = |records: Vec<(String, Value)>| -> BTreeSet<(String, u64)> {
        records
            .into_iter()
            .filter(|(_, v)| {
                v["canonical_id"]
                    .as_str()
                    .is_some_and(|id| !retired.contains(id))
            })
            .map(|(key, v)| (key, v["version"].as_u64().expect("versioned change")))
            .collect()
    };
    let expected = live_changes(records(&data, "cdp.cohorts"));
    let got = live_changes(output);
    assert!(!got.is_empty());
    let missing: Vec<_> = expected.difference(&got).take(5).collect();
    assert!(
        missing.is_empty(),
        "changes never emitted, e.g. {missing:?}"
    );
    let extra: Vec<_> = got.difference(&expected).take(5).collect();
    assert!(extra.is_empty(), "changes of its own, e.g. {extra:?}");
}
