//! Exactly-once resolver state: a resolver process killed with SIGKILL at random points while it
//! works through the signals, and restarted each time, ends with exactly the state (every column
//! family, byte for byte) and the downstream profile view of a run that was never interrupted.

mod support;

use cdp_resolver::store::{Cf, GraphStore};
use cdp_resolver::RocksStore;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::{read_topic, stdout_of, State};

/// The resolver of the crashing runs uses its own group, state and output topics, so it replays
/// exactly the signals the reference resolver saw.
const CRASH_ENV: [(&str, &str); 3] = [
    ("CDP_RESOLVER__GROUP", "cdp-resolver-crash"),
    ("CDP_RESOLVER__PROFILES_TOPIC", "crash.profiles"),
    ("CDP_RESOLVER__CHANGES_TOPIC", "crash.identity.changes"),
];

fn cdp(data: &Path, args: &[&str], crash: bool) -> Command {
    let mut c = support::command(data, args);
    if crash {
        c.envs(CRASH_ENV);
    }
    c
}

/// Every column family, except the numbering of the outbox: how many updates were published
/// depends on where batches (and crashes) cut the input; what they say is compared downstream.
fn state(dir: &Path) -> State {
    let store = RocksStore::open_read_only(dir).expect("resolver state opens");
    Cf::ALL
        .iter()
        .filter(|cf| **cf != Cf::Outbox)
        .map(|cf| {
            let mut entries = store.scan_prefix(*cf, b"").expect("scan");
            entries.retain(|(k, _)| !(*cf == Cf::Meta && k.as_slice() == b"next_outbox"));
            (cf.name(), entries)
        })
        .collect()
}

/// The newest profile per canonical id on a profiles topic (duplicates after a crash are
/// allowed: consumers keep the highest version).
fn profile_view(data: &Path, topic: &str) -> BTreeMap<String, (u64, Value)> {
    let mut view: BTreeMap<String, (u64, Value)> = BTreeMap::new();
    for record in read_topic(data, topic) {
        let key = record["key"].as_str().unwrap().to_string();
        let value = record["value"].clone();
        let version = value["version"].as_u64().expect("versioned update");
        match view.get(&key) {
            Some((v, _)) if *v >= version => {}
            _ => {
                view.insert(key, (version, value["profile"].clone()));
            }
        }
    }
    view
}

/// How a run is interrupted.
#[derive(Clone, Copy, PartialEq)]
enum Interrupt {
    /// SIGKILL: no chance to finish the batch in flight.
    Kill,
    /// SIGTERM: what Kubernetes sends; the stage finishes its batch and exits 0.
    Term,
}

#[test]
fn killed_resolver_ends_in_the_state_of_an_uninterrupted_run() {
    interrupted_resolver_ends_in_the_state_of_an_uninterrupted_run(Interrupt::Kill, 7);
}

#[test]
fn terminated_resolver_exits_cleanly_and_ends_in_the_same_state() {
    interrupted_resolver_ends_in_the_state_of_an_uninterrupted_run(Interrupt::Term, 9);
}

fn interrupted_resolver_ends_in_the_state_of_an_uninterrupted_run(how: Interrupt, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("workload");
    let data = dir.path().join("data");
    support::generate_seeded(&input, 250, 11);
    support::run_until_drained(&data, &input);
    let resolver_dir = data.join("resolver");
    let reference = state(&resolver_dir);
    assert!(!reference["profiles"].is_empty());
    std::fs::rename(&resolver_dir, dir.path().join("reference-resolver")).unwrap();

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut kills = 0;
    for _ in 0..6 {
        let mut child = cdp(&data, &["resolve"], true)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.gen_range(150..1500)));
        if child.try_wait().unwrap().is_none() {
            match how {
                Interrupt::Kill => child.kill().unwrap(),
                Interrupt::Term => {
                    let pid = child.id().to_string();
                    let sent = Command::new("kill").args(["-TERM", &pid]).status();
                    assert!(sent.unwrap().success());
                }
            }
            kills += 1;
        }
        let status = child.wait().unwrap();
        if how == Interrupt::Term {
            assert!(status.success(), "SIGTERM mid-stream exits 0: {status:?}");
        }
    }
    assert!(kills > 0, "at least one run was interrupted mid-stream");
    stdout_of(&mut cdp(&data, &["resolve", "--until-drained"], true));

    let recovered = state(&resolver_dir);
    let differing = support::differing(&reference, &recovered);
    assert!(
        differing.is_empty(),
        "after {kills} interruptions these column families differ: {differing:?}"
    );

    // Downstream, both runs leave every live profile at the same latest version and content,
    // which is the profile in the resolver's state. (Profiles retired along the way may have
    // been published in one run and merged before publication in the other.)
    let live = {
        let store = RocksStore::open_read_only(&resolver_dir).unwrap();
        cdp_resolver::lookup::profiles(&store, "default").unwrap()
    };
    assert!(live.len() > 100);
    let expected = profile_view(&data, "cdp.profiles");
    let got = profile_view(&data, "crash.profiles");
    for profile in &live {
        let state = serde_json::to_value(profile).unwrap();
        let id = &profile.canonical_id;
        assert_eq!(
            expected.get(id),
            Some(&(profile.version, state.clone())),
            "{id}"
        );
        assert_eq!(got.get(id), Some(&(profile.version, state)), "{id}");
    }
}

/// Ingest is at least once: killed at random points and restarted, every raw record ends up as
/// its signals or as a DLQ record; duplicates are allowed, losses are not.
#[test]
fn killed_ingest_accounts_for_every_raw_record() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("workload");
    let data = dir.path().join("data");
    support::generate_seeded(&input, 250, 12);
    // The first round feeds the input (and runs every stage); the later ones run ingest alone.
    // The input is fed while the stages run: the first round is killed only once all of it is
    // on the bus (`fed` lines), as the test is of ingest, not of an interrupted feed.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
    let mut kills = 0;
    for round in 0..5 {
        let mut c = cdp(&data, &["ingest"], false);
        if round == 0 {
            c = cdp(&data, &["run", "--input"], false);
            c.arg(&input);
        }
        let mut child = c
            .stdout(Stdio::null())
            .stderr(if round == 0 {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .spawn()
            .unwrap();
        if let Some(stderr) = child.stderr.take() {
            let mut lines = BufReader::new(stderr).lines().map_while(Result::ok);
            assert!(
                lines.any(|l| l.starts_with("fed ")),
                "the first round feeds the input"
            );
            // Read on, so the process never blocks writing to a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(300..1500)));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
    }
    assert!(kills > 0);
    stdout_of(&mut cdp(&data, &["ingest", "--until-drained"], false));

    let truth = std::fs::read_to_string(input.join("truth.csv")).unwrap();
    let expected: std::collections::BTreeSet<String> = truth
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().to_string())
        .collect();
    let got: std::collections::BTreeSet<String> = read_topic(&data, "cdp.signals")
        .iter()
        .map(|r| r["value"]["event_id"].as_str().unwrap().to_string())
        .collect();
    let missing: Vec<_> = expected.difference(&got).take(5).collect();
    assert!(
        missing.is_empty(),
        "{} signals lost, e.g. {missing:?}",
        expected.difference(&got).count()
    );
    assert_eq!(
        got.len(),
        expected.len(),
        "no signal that the input does not hold"
    );

    let invalid_lines: usize = ["web", "app", "crm", "media"]
        .iter()
        .map(|s| {
            std::fs::read_to_string(input.join(format!("{s}.jsonl")))
                .unwrap()
                .lines()
                .filter(|l| serde_json::from_str::<Value>(l).is_err())
                .count()
        })
        .sum();
    let dead: std::collections::BTreeSet<(String, String, String)> = read_topic(&data, "cdp.dlq")
        .iter()
        .map(|r| {
            let h = |name: &str| r["headers"][name].as_str().unwrap_or_default().to_string();
            (
                h("cdp.source.topic"),
                h("cdp.source.partition"),
                h("cdp.source.offset"),
            )
        })
        .collect();
    assert!(
        dead.len() >= invalid_lines,
        "{} distinct DLQ records for {invalid_lines} invalid lines",
        dead.len()
    );
}

/// A resolver on an empty volume (a lost disk, a new pod) rebuilds the same graph from the
/// signals topic, although its consumer group committed everything long ago: it starts from its
/// own (empty) state, not from the group's offsets.
#[test]
fn a_fresh_resolver_volume_replays_the_signals_its_group_already_committed() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("workload");
    let data = dir.path().join("data");
    support::generate_seeded(&input, 120, 13);
    support::run_until_drained(&data, &input);
    let resolver_dir = data.join("resolver");
    let reference = state(&resolver_dir);
    std::fs::remove_dir_all(&resolver_dir).unwrap();

    stdout_of(&mut cdp(&data, &["resolve", "--until-drained"], false));
    let restored = state(&resolver_dir);
    let differing: Vec<&str> = reference
        .iter()
        .filter(|(cf, entries)| restored[*cf] != **entries)
        .map(|(cf, _)| *cf)
        .collect();
    assert!(
        differing.is_empty(),
        "restored state differs in {differing:?}"
    );
}

/// A resolver killed after committing its last batch to its state but before committing it to
/// its group starts again with nothing to read, and nothing moves its group's commit on:
/// `--until-drained` still ends, once its state is at the end of its input and it is idle.
#[test]
fn until_drained_ends_when_the_group_commit_is_behind_the_state() {
    use cdp_bus::{Bus, BusError, ConsumerOptions};
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("workload");
    let data = dir.path().join("data");
    support::generate_seeded(&input, 50, 3);
    support::run_until_drained(&data, &input);
    // What such a kill leaves behind: the group's commit behind the state.
    {
        let resolver = cdp_resolver::ResolverConfig::default();
        let topics = resolver.input_topics();
        let bus = cdp_bus::embedded::EmbeddedBus::open(&data.join("bus")).unwrap();
        let positions =
            cdp_bus::stored_positions::<BusError>(&bus, &topics, |_, _| Ok(Some(0))).unwrap();
        assert!(!positions.is_empty());
        let mut group = bus
            .consumer(ConsumerOptions::group(resolver.group.clone(), &topics))
            .unwrap();
        group.commit(&positions).unwrap();
        group.close().unwrap();
        assert!(bus.lag(&resolver.group, &topics.map(String::from)).unwrap() > 0);
    }
    let mut child = cdp(&data, &["resolve", "--until-drained"], false)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("`cdp resolve --until-drained` did not end with its group behind its state");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
}
