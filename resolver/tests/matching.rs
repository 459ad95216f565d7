//! Probabilistic matching in the stream: duplicate CRM records of one person merge with an
//! explained probabilistic link, look-alikes do not, weaker pairs stay candidates, blocks stop
//! growing at their cap, and the state stays replay-safe and identical in RocksDB and memory.

mod support;

use cdp_bus::Record;
use cdp_proto::{Identifier, IdentifierKind, Signal, Source};
use cdp_resolver::command::{CommandOp, GraphCommand, Target};
use cdp_resolver::explain::{explain, Explanation};
use cdp_resolver::forget::forget;
use cdp_resolver::link::LinkDecision;
use cdp_resolver::matching::blocking::Block;
use cdp_resolver::matching::compare::Level;
use cdp_resolver::matching::field::Field;
use cdp_resolver::matching::model::Model;
use cdp_resolver::matching::RULE;
use cdp_resolver::rebuild::{rebuild, RebuildOptions};
use cdp_resolver::stage::apply_records;
use cdp_resolver::store::Cf;
use cdp_resolver::txn::Txn;
use cdp_resolver::{GraphStore, MemStore, Resolver, ResolverConfig, RocksStore};
use proptest::prelude::*;
use std::collections::BTreeSet;
use support::{apply, partition, signal, TENANT};

fn crm(v: &str) -> Identifier {
    Identifier::new(IdentifierKind::CrmId, v)
}

/// Matching on, everything else default.
fn config() -> ResolverConfig {
    let mut c = ResolverConfig::default();
    c.matching.enabled = true;
    c
}

/// The `n`th CRM record, of record id `id`, with `traits`.
fn person(n: i64, id: &str, traits: &[(&str, &str)]) -> Signal {
    let mut s = signal(n, Source::Crm, &[crm(id)], "crm_record", 1.0);
    s.traits = traits
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
        .collect();
    s
}

fn explained(store: &dyn GraphStore, id: &Identifier) -> Explanation {
    explain(store, TENANT, &Target::Identifier(id.clone()))
        .unwrap()
        .expect("identifier known")
}

fn together(store: &dyn GraphStore, a: &Identifier, b: &Identifier) -> bool {
    partition(store, &[a.clone(), b.clone()]).len() == 1
}

fn maria(n: i64, id: &str, last: &str) -> Signal {
    person(
        n,
        id,
        &[
            ("first_name", "Maria"),
            ("last_name", last),
            ("birth_date", "1984-03-07"),
            ("postal_code", "94105"),
        ],
    )
}

#[test]
fn lead_and_contact_of_one_person_merge_with_explained_contributions() {
    let store = MemStore::default();
    let r = Resolver::from_config(&config()).unwrap();
    let (lead, contact) = (crm("sf:00Q-lead"), crm("sf:003-contact"));
    apply(&store, &r, &[maria(1, "sf:00Q-lead", "Johnson")]);
    let out = apply(&store, &r, &[maria(2, "sf:003-contact", "Jonhson")]);
    assert_eq!(out.probabilistic, 1);
    assert!(together(&store, &lead, &contact));

    let e = explained(&store, &contact);
    let link = e
        .links
        .iter()
        .find(|l| l.link.rule == RULE)
        .expect("a probabilistic link joined them");
    assert_eq!(link.link.decision, LinkDecision::Accepted);
    let ev = link.link.evidence.as_ref().expect("evidence kept");
    assert_eq!(link.link.confidence, ev.probability);
    assert!(ev.probability >= 0.95, "{}", ev.probability);
    let levels: Vec<(Field, Level)> = ev
        .contributions
        .iter()
        .map(|c| (c.field, c.level))
        .collect();
    assert_eq!(
        levels,
        vec![
            (Field::FirstName, Level::Exact),
            (Field::LastName, Level::Close),
            (Field::BirthDate, Level::Exact),
            (Field::PostalCode, Level::Exact),
        ]
    );
    assert!(ev.contributions.iter().all(|c| c.weight > 0.0));
    // The JSON `explain` prints (and the API serves) carries the same.
    let json = serde_json::to_value(&e).unwrap();
    let shown = json["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["rule"] == RULE)
        .unwrap();
    assert_eq!(shown["evidence"]["contributions"][1]["field"], "last_name");
    assert_eq!(shown["evidence"]["contributions"][1]["level"], "close");
    assert!(
        !json.to_string().contains("Jonhson"),
        "no values in the evidence"
    );
}

#[test]
fn same_common_name_with_other_birth_date_and_postcode_does_not_merge() {
    let store = MemStore::default();
    let r = Resolver::from_config(&config()).unwrap();
    let john = |n, id: &str, dob, pc| {
        person(
            n,
            id,
            &[
                ("first_name", "John"),
                ("last_name", "Smith"),
                ("birth_date", dob),
                ("postal_code", pc),
            ],
        )
    };
    let out = apply(
        &store,
        &r,
        &[
            john(1, "hs:1", "1980-01-01", "10001"),
            john(2, "hs:2", "1975-06-30", "94107"),
        ],
    );
    assert_eq!(out.compared, 1, "the name block made them candidates");
    assert_eq!(out.probabilistic, 0);
    assert!(!together(&store, &crm("hs:1"), &crm("hs:2")));
    assert!(explained(&store, &crm("hs:2")).candidates.is_empty());
}

#[test]
fn a_pair_between_the_thresholds_is_a_candidate_not_a_merge() {
    let store = MemStore::default();
    let r = Resolver::from_config(&config()).unwrap();
    // Same name, other postcode, no birth date: some evidence, not enough.
    apply(
        &store,
        &r,
        &[
            person(
                1,
                "hs:1",
                &[
                    ("first_name", "Ada"),
                    ("last_name", "Lovelace"),
                    ("postal_code", "N1 9GU"),
                ],
            ),
            person(
                2,
                "hs:2",
                &[
                    ("first_name", "Ada"),
                    ("last_name", "Lovelace"),
                    ("postal_code", "SW1A 1AA"),
                ],
            ),
        ],
    );
    assert!(!together(&store, &crm("hs:1"), &crm("hs:2")));
    let e = explained(&store, &crm("hs:1"));
    assert_eq!(e.candidates.len(), 1);
    let c = &e.candidates[0];
    assert_eq!(c.link.rule, RULE);
    assert!(
        (0.5..0.95).contains(&c.link.confidence),
        "{}",
        c.link.confidence
    );
    assert_eq!(
        c.other_profile,
        Some(explained(&store, &crm("hs:2")).canonical_id)
    );

    // A consumer with a lower threshold would merge it: lowering the threshold and rebuilding
    // (re-scoring under the same model) previews exactly that.
    let mut lower = config();
    lower.matching.merge_threshold = 0.5;
    let report = rebuild(
        &store,
        &Resolver::from_config(&lower).unwrap(),
        &lower,
        &options(false),
    )
    .unwrap();
    assert_eq!(
        (report.merges, report.links_changed, report.links_rescored),
        (1, 1, 0)
    );
}

fn options(apply: bool) -> RebuildOptions {
    RebuildOptions {
        tenant: TENANT.into(),
        apply,
        examples: 5,
        at: cdp_proto::time::from_millis(1_800_000_000_000),
    }
}

#[test]
fn the_merge_policy_limits_probabilistic_merges() {
    let store = MemStore::default();
    let r = Resolver::from_config(&config()).unwrap();
    let records: Vec<Signal> = (0..4)
        .map(|n| maria(n, &format!("sf:{n}"), "Johnson"))
        .collect();
    apply(&store, &r, &records);
    let ids: Vec<Identifier> = (0..4).map(|n| crm(&format!("sf:{n}"))).collect();
    // At most 3 crm_ids on a profile: the fourth record stays apart, its links refused.
    let parts = partition(&store, &ids);
    assert_eq!(parts.len(), 2, "{parts:?}");
    assert!(parts.iter().any(|p| p.len() == 3));
    let e = explained(&store, &ids[3]);
    assert!(!e.refused.is_empty());
    assert!(e.refused.iter().all(|l| l.link.rule == RULE
        && l.link.decision == LinkDecision::Refused("kind_limit:crm_id".into())));
}

#[test]
fn a_full_block_stops_yielding_candidates() {
    let store = MemStore::default();
    let mut c = config();
    c.matching.max_block_size = 3;
    let r = Resolver::from_config(&c).unwrap();
    // Six John Smiths: two name blocks (surname + first-name prefix, and the names' sounds),
    // each otherwise apart (own birth date and postcode).
    let mut compared = Vec::new();
    let mut overflowed = 0;
    let mut skipped = 0;
    for n in 0..6 {
        let s = person(
            n,
            &format!("hs:{n}"),
            &[
                ("first_name", "John"),
                ("last_name", "Smith"),
                ("birth_date", &format!("19{}-01-0{}", 50 + n, n + 1)),
                ("postal_code", &format!("1000{n}")),
            ],
        );
        let out = apply(&store, &r, &[s]);
        compared.push(out.compared);
        overflowed += out.blocks_overflowed;
        skipped += out.blocks_skipped;
    }
    assert_eq!(compared, vec![0, 1, 2, 0, 0, 0]);
    assert_eq!((overflowed, skipped), (2, 4));
    let oversized = store
        .scan_prefix(Cf::Blocks, b"")
        .unwrap()
        .into_iter()
        .filter(|(_, v)| Block::decode(v) == Some(Block::Oversized))
        .count();
    assert_eq!(oversized, 2, "each name key is marked, once");
}

/// The nodes each blocking key lists, in key order (`None` for an oversized key).
fn blocks(store: &dyn GraphStore) -> Vec<Option<Vec<u64>>> {
    store
        .scan_prefix(Cf::Blocks, b"")
        .unwrap()
        .into_iter()
        .map(|(_, v)| match Block::decode(&v).expect("a block") {
            b @ Block::Open(_) => Some(b.nodes()),
            Block::Oversized => None,
        })
        .collect()
}

#[test]
fn a_forgotten_person_leaves_the_blocks_and_is_no_candidate() {
    let (lead, contact, again) = (crm("sf:00Q-lead"), crm("sf:003-contact"), crm("sf:003-new"));
    let mem = MemStore::default();
    let dir = tempfile::tempdir().unwrap();
    let rocks = RocksStore::open(dir.path()).unwrap();
    for store in [&mem as &dyn GraphStore, &rocks] {
        let r = Resolver::from_config(&config()).unwrap();
        apply(store, &r, &[maria(1, "sf:00Q-lead", "Johnson")]);
        apply(store, &r, &[maria(2, "sf:003-contact", "Johnson")]);
        assert!(together(store, &lead, &contact));
        let mut txn = Txn::begin(store).unwrap();
        let filed: Vec<u64> = [&lead, &contact]
            .iter()
            .map(|id| txn.node_of(TENANT, id).unwrap().expect("filed"))
            .collect();
        drop(txn);
        // Five keys (surname+postcode, date+initial, surname+prefix, date+postcode, name
        // sounds), each listing both.
        assert_eq!(blocks(store), vec![Some(filed.clone()); 5]);

        let command = GraphCommand {
            id: "erase-maria".into(),
            tenant: TENANT.into(),
            requested_at: cdp_proto::time::from_millis(1_700_000_100_000),
            op: CommandOp::Forget {
                target: Target::Identifier(lead.clone()),
            },
        };
        let mut txn = Txn::begin(store).unwrap();
        forget(&mut txn, &command, &Target::Identifier(lead.clone())).unwrap();
        txn.commit().unwrap();
        assert_eq!(blocks(store), Vec::new(), "no key lists an erased node");

        // The same person arriving under a new record id starts afresh: nothing to compare.
        let out = apply(store, &r, &[maria(3, "sf:003-new", "Johnson")]);
        assert_eq!((out.compared, out.probabilistic), (0, 0));
        let mut txn = Txn::begin(store).unwrap();
        let new = txn.node_of(TENANT, &again).unwrap().expect("filed");
        assert!(!filed.contains(&new));
        assert_eq!(blocks(store), vec![Some(vec![new]); 5]);
        let e = explained(store, &again);
        assert!(e.links.is_empty() && e.candidates.is_empty() && e.refused.is_empty());
    }
    assert_eq!(
        mem.scan_prefix(Cf::Blocks, b"").unwrap(),
        rocks.scan_prefix(Cf::Blocks, b"").unwrap()
    );
}

/// Whether any stored value of `cfs` holds `needle` (a normalised name or postcode).
fn stored_anywhere(store: &dyn GraphStore, cfs: &[Cf], needle: &str) -> bool {
    cfs.iter().any(|cf| {
        store
            .scan_prefix(*cf, b"")
            .unwrap()
            .iter()
            .any(|(_, v)| v.windows(needle.len()).any(|w| w == needle.as_bytes()))
    })
}

#[test]
fn a_moved_person_leaves_the_old_keys_and_forget_erases_every_copy_of_the_record() {
    let mem = MemStore::default();
    let dir = tempfile::tempdir().unwrap();
    let rocks = RocksStore::open(dir.path()).unwrap();
    let kept = [Cf::Blocks, Cf::MatchRecords];
    for store in [&mem as &dyn GraphStore, &rocks] {
        let r = Resolver::from_config(&config()).unwrap();
        apply(store, &r, &[maria(1, "sf:a", "Johnson")]);
        let mut txn = Txn::begin(store).unwrap();
        let node = txn.node_of(TENANT, &crm("sf:a")).unwrap().expect("filed");
        let filed = txn
            .match_record(node)
            .unwrap()
            .cloned()
            .expect("record kept");
        assert_eq!(filed.get(Field::PostalCode), Some("94105"));
        drop(txn);
        assert!(stored_anywhere(store, &kept, "94105"));

        // The same record, moved house and with no birth date this time: the node keeps its
        // birth date, takes the new postcode, and leaves the two keys made of the old one.
        let moved = person(
            2,
            "sf:a",
            &[
                ("first_name", "Maria"),
                ("last_name", "Johnson"),
                ("postal_code", "10001"),
            ],
        );
        apply(store, &r, &[moved]);
        let mut txn = Txn::begin(store).unwrap();
        let record = txn
            .match_record(node)
            .unwrap()
            .cloned()
            .expect("record kept");
        assert_eq!(record.get(Field::PostalCode), Some("10001"));
        assert_eq!(record.get(Field::BirthDate), Some("1984-03-07"));
        drop(txn);
        assert_eq!(blocks(store), vec![Some(vec![node]); 5]);
        assert!(!stored_anywhere(store, &kept, "94105"), "old key left");
        assert!(stored_anywhere(store, &kept, "10001"));

        // Someone else at the old address is not compared through a stale key.
        let out = apply(
            store,
            &r,
            &[person(
                3,
                "sf:b",
                &[
                    ("first_name", "Pedro"),
                    ("last_name", "Alvarez"),
                    ("postal_code", "94105"),
                    ("birth_date", "1984-03-07"),
                ],
            )],
        );
        assert_eq!(out.compared, 0);

        let command = GraphCommand {
            id: "erase-maria".into(),
            tenant: TENANT.into(),
            requested_at: cdp_proto::time::from_millis(1_700_000_100_000),
            op: CommandOp::Forget {
                target: Target::Identifier(crm("sf:a")),
            },
        };
        let mut txn = Txn::begin(store).unwrap();
        forget(&mut txn, &command, &Target::Identifier(crm("sf:a"))).unwrap();
        txn.commit().unwrap();
        let mut txn = Txn::begin(store).unwrap();
        assert_eq!(txn.match_record(node).unwrap(), None, "record erased");
        drop(txn);
        for needle in ["johnson", "maria", "10001"] {
            assert!(
                !stored_anywhere(store, &[Cf::Blocks, Cf::MatchRecords, Cf::Profiles], needle),
                "{needle} is still stored"
            );
        }
        assert!(
            stored_anywhere(store, &kept, "alvarez"),
            "others stay filed"
        );
    }
    for cf in Cf::ALL {
        assert_eq!(
            mem.scan_prefix(cf, b"").unwrap(),
            rocks.scan_prefix(cf, b"").unwrap(),
            "{cf:?}"
        );
    }
}

fn rec(offset: i64, s: &Signal) -> Record {
    Record {
        topic: "cdp.signals".into(),
        partition: 0,
        offset,
        timestamp_ms: 0,
        key: Some(TENANT.as_bytes().to_vec()),
        value: Some(serde_json::to_vec(s).unwrap()),
        headers: vec![],
    }
}

/// Records of a few people, each several times with typos, among look-alikes.
fn crowd() -> Vec<Signal> {
    let people = [
        ("Maria", "Johnson", "1984-03-07", "94105"),
        ("Maria", "Johnsen", "1990-11-02", "94105"),
        ("John", "Smith", "1980-01-01", "10001"),
        ("John", "Smith", "1975-06-30", "94107"),
        ("Zoë", "O'Neil", "1979-12-24", "SW1A 1AA"),
    ];
    let variants = |last: &str, k: usize| match k % 3 {
        0 => last.to_string(),
        1 => format!("{last}e"),
        _ => last.to_uppercase(),
    };
    (0..15)
        .map(|n| {
            let (first, last, dob, pc) = people[n % people.len()];
            person(
                n as i64,
                &format!("sf:{n}"),
                &[
                    ("first_name", first),
                    ("last_name", &variants(last, n / 5)),
                    ("birth_date", dob),
                    ("postal_code", pc),
                ],
            )
        })
        .collect()
}

#[test]
fn replaying_with_matching_on_changes_nothing() {
    let store = MemStore::default();
    let c = config();
    let r = Resolver::from_config(&c).unwrap();
    let records: Vec<Record> = crowd()
        .iter()
        .enumerate()
        .map(|(n, s)| rec(n as i64, s))
        .collect();
    apply_records(&r, &store, &c, &records[..9]).unwrap();
    apply_records(&r, &store, &c, &records[6..]).unwrap();
    let mut once = store.dump();
    let out = apply_records(&r, &store, &c, &records).unwrap();
    assert_eq!((out.updates, out.probabilistic), (0, 0));
    let mut again = store.dump();
    once.remove(&Cf::Outbox);
    again.remove(&Cf::Outbox);
    assert_eq!(once, again);
    assert!(once.get(&Cf::Blocks).is_some_and(|b| !b.is_empty()));
}

#[test]
fn a_model_change_is_previewed_by_rebuild_and_applied() {
    let store = MemStore::default();
    let c = config();
    let r = Resolver::from_config(&c).unwrap();
    apply(
        &store,
        &r,
        &[maria(1, "sf:a", "Johnson"), maria(2, "sf:b", "Jonhson")],
    );
    assert!(together(&store, &crm("sf:a"), &crm("sf:b")));

    let same = rebuild(&store, &r, &c, &options(false)).unwrap();
    assert_eq!(
        (same.splits, same.links_changed, same.links_rescored),
        (0, 0, 0)
    );

    // A model that trusts nothing but exact surnames and expects few matches.
    let mut model = Model::builtin();
    model.version = 2;
    model.prior = 1e-9;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.json");
    std::fs::write(&path, serde_json::to_vec(&model).unwrap()).unwrap();
    let mut strict = config();
    strict.matching.model_path = path.display().to_string();
    let r2 = Resolver::from_config(&strict).unwrap();
    let preview = rebuild(&store, &r2, &strict, &options(false)).unwrap();
    assert_eq!(
        (
            preview.splits,
            preview.links_changed,
            preview.links_rescored
        ),
        (1, 1, 1)
    );
    assert!(
        together(&store, &crm("sf:a"), &crm("sf:b")),
        "a preview writes nothing"
    );
    let applied = rebuild(&store, &r2, &strict, &options(true)).unwrap();
    assert!(applied.applied);
    assert!(!together(&store, &crm("sf:a"), &crm("sf:b")));
    let e = explained(&store, &crm("sf:a"));
    let link = &e
        .candidates
        .iter()
        .chain(&e.refused)
        .next()
        .expect("kept as a candidate")
        .link;
    assert_eq!(link.evidence.as_ref().unwrap().model_version, 2);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// With matching on, RocksDB and memory hold the same bytes, and cutting the input into
    /// other batches changes nothing but the outbox.
    #[test]
    fn rocks_and_memory_agree_with_matching_on(
        order in Just(crowd()).prop_shuffle(),
        split in 1usize..6,
        cap in 2usize..6,
    ) {
        let mut c = config();
        c.matching.max_block_size = cap;
        let r = Resolver::from_config(&c).unwrap();
        let signals: Vec<Signal> = order
            .into_iter()
            .enumerate()
            .map(|(n, mut s)| {
                let t = cdp_proto::time::from_millis(1_700_000_000_000 + n as i64 * 1000);
                (s.event_time, s.received_at) = (t, t);
                s
            })
            .collect();
        let mem = MemStore::default();
        let dir = tempfile::tempdir().unwrap();
        let rocks = RocksStore::open(dir.path()).unwrap();
        let chunked = MemStore::default();
        apply(&mem, &r, &signals);
        apply(&rocks, &r, &signals);
        for chunk in signals.chunks(split) {
            apply(&chunked, &r, chunk);
        }
        let dump = mem.dump();
        let chunked_dump = chunked.dump();
        for cf in Cf::ALL {
            let rocks_entries = rocks.scan_prefix(cf, b"").unwrap();
            let mem_entries: Vec<_> = dump.get(&cf).map(|m| m.clone().into_iter().collect()).unwrap_or_default();
            prop_assert_eq!(&rocks_entries, &mem_entries, "{:?}", cf);
            if cf == Cf::Outbox || cf == Cf::Meta {
                continue;
            }
            let chunked_entries: Vec<_> = chunked_dump.get(&cf).map(|m| m.clone().into_iter().collect()).unwrap_or_default();
            prop_assert_eq!(&chunked_entries, &mem_entries, "{:?} depends on batching", cf);
        }
        let ids: Vec<Identifier> = (0..15).map(|n| crm(&format!("sf:{n}"))).collect();
        let parts = partition(&mem, &ids);
        prop_assert_eq!(parts.iter().map(BTreeSet::len).sum::<usize>(), 15);
    }
}

#[test]
fn training_on_a_resolved_state_writes_the_next_model_version() {
    let store = MemStore::default();
    // Resolved without matching: the duplicates are still separate profiles.
    apply(&store, &Resolver::new(config().policy), &crowd());
    let c = config();
    let options = cdp_resolver::matching::train::TrainOptions {
        tenant: TENANT.into(),
        sample: 1000,
        random_pairs: 1000,
        seed: 7,
        max_iterations: 200,
    };
    let (model, report) =
        cdp_resolver::matching::train::train(&store, &c.matching, &options).unwrap();
    assert_eq!((model.version, report.version), (2, 2));
    assert_eq!(report.profiles, 15);
    assert!(report.candidate_pairs > 0 && report.random_pairs > 0);
    // At most one draw per pair of the 15 profiles (a draw of a profile with itself is dropped).
    assert!(
        report.random_pairs <= 15 * 14 / 2,
        "{}",
        report.random_pairs
    );
    let fewer = cdp_resolver::matching::train::TrainOptions {
        random_pairs: 10,
        ..options.clone()
    };
    let (_, few) = cdp_resolver::matching::train::train(&store, &c.matching, &fewer).unwrap();
    assert!(
        few.random_pairs > 0 && few.random_pairs <= 10,
        "{}",
        few.random_pairs
    );
    // The prior is the chance that two random records match (it goes with u, which comes from
    // random pairs): at most the share of all pairs that are candidates.
    let all_pairs = (report.sampled * (report.sampled - 1) / 2) as f64;
    assert!(model.prior > 0.0);
    assert!(
        model.prior <= report.candidate_pairs as f64 / all_pairs,
        "prior {} over {} candidate pairs of {all_pairs}",
        model.prior,
        report.candidate_pairs
    );
    model.check().unwrap();
    model.covers(&c.matching.fields).unwrap();
    // What it learnt ranks a typo'd duplicate above a namesake born elsewhere and elsewhen.
    let dupe = model.score(&[
        (Field::FirstName, Level::Exact),
        (Field::LastName, Level::Close),
        (Field::BirthDate, Level::Exact),
        (Field::PostalCode, Level::Exact),
    ]);
    let namesake = model.score(&[
        (Field::FirstName, Level::Exact),
        (Field::LastName, Level::Exact),
        (Field::BirthDate, Level::Else),
        (Field::PostalCode, Level::Else),
    ]);
    assert!(dupe.probability > namesake.probability);
    assert!(
        namesake.probability < c.matching.merge_threshold,
        "a namesake born elsewhere and elsewhen does not merge: {}",
        namesake.probability
    );

    let empty = MemStore::default();
    let err = cdp_resolver::matching::train::train(&empty, &c.matching, &options).unwrap_err();
    assert!(err.to_string().contains("cannot train"), "{err}");
}
