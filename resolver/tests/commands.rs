//! Graph commands applied by the stage: `forget` erases a person for good (replays and late
//! events cannot bring them back), `unmerge` splits a wrong merge back apart. Both run through
//! `apply_records` exactly as the stage runs them, on RocksDB and in memory alike. `explain`
//! shows the decisions behind a profile.

mod support;

use cdp_bus::{OutRecord, Record};
use cdp_proto::{
    time::from_millis, Identifier, IdentifierKind, IdentityChange, IdentityChangeKind, Profile,
    ProfileUpdate, Signal, Source,
};
use cdp_resolver::command::{
    CommandOp, CommandOutcome, CommandStatus, GraphCommand, Target, UnmergePart,
};
use cdp_resolver::explain::explain;
use cdp_resolver::link::{Link, LinkDecision};
use cdp_resolver::stage::{apply_records, command_outcome};
use cdp_resolver::store::Cf;
use cdp_resolver::{lookup, GraphStore, MemStore, Resolver, ResolverConfig, RocksStore};

const SIGNALS: &str = "cdp.signals";
const COMMANDS: &str = "cdp.identity.commands";

fn id(kind: IdentifierKind, v: &str) -> Identifier {
    Identifier::new(kind, v)
}

fn user(v: &str) -> Identifier {
    id(IdentifierKind::UserId, v)
}
fn cookie(v: &str) -> Identifier {
    id(IdentifierKind::CookieId, v)
}
fn email(c: char) -> Identifier {
    id(IdentifierKind::EmailSha256, &c.to_string().repeat(64))
}
fn crm(v: &str) -> Identifier {
    id(IdentifierKind::CrmId, v)
}
fn device(v: &str) -> Identifier {
    id(IdentifierKind::DeviceId, v)
}

/// A web signal whose first identifier is linked to each of the others.
fn signal(n: i64, ids: &[Identifier], rule: &str, confidence: f64) -> Signal {
    support::signal(n, Source::Web, ids, rule, confidence)
}

/// An input log: signals and commands with their offsets, as the stage polls them.
#[derive(Default)]
struct Input {
    records: Vec<Record>,
    next_signal: i64,
    next_command: i64,
}

impl Input {
    fn signal(&mut self, s: &Signal) -> Record {
        let r = Record {
            topic: SIGNALS.into(),
            partition: 0,
            offset: self.next_signal,
            timestamp_ms: 0,
            key: Some(b"acme".to_vec()),
            value: Some(serde_json::to_vec(s).unwrap()),
            headers: vec![],
        };
        self.next_signal += 1;
        self.records.push(r.clone());
        r
    }

    fn command(&mut self, n: u32, op: CommandOp) -> Record {
        let c = GraphCommand {
            id: format!("cmd-{n}"),
            tenant: "acme".into(),
            requested_at: from_millis(1_800_000_000_000 + i64::from(n)),
            op,
        };
        let r = Record {
            topic: COMMANDS.into(),
            partition: 0,
            offset: self.next_command,
            timestamp_ms: 0,
            key: Some(b"acme".to_vec()),
            value: Some(serde_json::to_vec(&c).unwrap()),
            headers: vec![],
        };
        self.next_command += 1;
        self.records.push(r.clone());
        r
    }
}

fn forget(target: Target) -> CommandOp {
    CommandOp::Forget { target }
}

fn canonical(store: &dyn GraphStore, i: &Identifier) -> Option<String> {
    lookup::canonical_of(store, "acme", i).unwrap()
}

fn profile(store: &dyn GraphStore, i: &Identifier) -> Profile {
    lookup::profile_by_identifier(store, "acme", i)
        .unwrap()
        .expect("identifier known")
}

fn outbox(store: &dyn GraphStore) -> Vec<OutRecord> {
    cdp_resolver::outbox::records(store).unwrap()
}

fn changes(store: &dyn GraphStore) -> Vec<IdentityChange> {
    outbox(store)
        .into_iter()
        .filter(|r| r.topic == "cdp.identity.changes")
        .map(|r| serde_json::from_slice(r.value.as_deref().unwrap()).unwrap())
        .collect()
}

fn updates(store: &dyn GraphStore) -> Vec<ProfileUpdate> {
    outbox(store)
        .into_iter()
        .filter(|r| r.topic == "cdp.profiles")
        .map(|r| serde_json::from_slice(r.value.as_deref().unwrap()).unwrap())
        .collect()
}

fn links(store: &dyn GraphStore) -> Vec<Link> {
    store
        .scan_prefix(Cf::Links, b"")
        .unwrap()
        .into_iter()
        .map(|(_, v)| cdp_resolver::codec::decode_link(&v).unwrap())
        .collect()
}

fn outcome(store: &dyn GraphStore, n: u32) -> CommandOutcome {
    command_outcome(store, &format!("cmd-{n}"))
        .unwrap()
        .expect("command applied")
}

/// Alice logs in on the web and the app; Bob logs in on the family tablet Alice used first
/// (refused: two user ids); Carol is a CRM record with an email.
fn people() -> Vec<Signal> {
    vec![
        signal(
            1,
            &[user("alice"), cookie("a-web"), email('a')],
            "deterministic_login",
            1.0,
        ),
        signal(
            2,
            &[user("alice"), device("a-phone"), device("tablet")],
            "deterministic_login",
            1.0,
        ),
        signal(
            3,
            &[user("bob"), device("tablet"), cookie("b-web")],
            "deterministic_login",
            1.0,
        ),
        signal(4, &[crm("carol"), email('c')], "crm_record", 1.0),
        signal(5, &[cookie("a-web"), cookie("a-other")], "same_event", 0.5),
    ]
}

fn alice_ids() -> Vec<Identifier> {
    vec![
        user("alice"),
        cookie("a-web"),
        email('a'),
        device("a-phone"),
        device("tablet"),
        cookie("a-other"),
    ]
}

#[test]
fn forgotten_person_stays_gone_after_a_full_replay_and_others_are_untouched() {
    let config = ResolverConfig::default();
    let r = Resolver::new(config.policy.clone());
    let store = MemStore::default();
    let mut input = Input::default();
    let first: Vec<Record> = people().iter().map(|s| input.signal(s)).collect();
    apply_records(&r, &store, &config, &first).unwrap();
    let alice = profile(&store, &user("alice"));
    let bob_before = profile(&store, &user("bob"));
    let carol_before = profile(&store, &crm("carol"));
    assert!(links(&store)
        .iter()
        .any(|l| matches!(&l.decision, LinkDecision::Refused(_))));

    let cmd = input.command(1, forget(Target::Identifier(email('a'))));
    let applied = apply_records(&r, &store, &config, &[cmd]).unwrap();
    assert_eq!(applied.commands, 1);
    let done = outcome(&store, 1);
    assert_eq!(done.status, CommandStatus::Applied);
    assert_eq!(
        done.identifiers_erased, 5,
        "a-other was only a candidate: its own profile"
    );
    let deleted = changes(&store)
        .into_iter()
        .find(|c| c.kind == IdentityChangeKind::Deleted)
        .expect("a deleted change is published");
    assert_eq!(deleted.canonical_id, alice.canonical_id);
    assert!(deleted.version > alice.version);
    assert_eq!(done.changes, vec![deleted]);

    for i in &alice_ids()[..5] {
        assert_eq!(canonical(&store, i), None, "{i} erased");
    }
    assert_eq!(
        lookup::profile_by_canonical(&store, "acme", &alice.canonical_id).unwrap(),
        None
    );
    // Every link that named one of Alice's identifiers is gone, including Bob's refused one.
    for l in links(&store) {
        for i in &alice_ids()[..5] {
            assert!(l.a != *i && l.b != *i, "link {} still names {i}", l.id);
        }
    }
    assert_eq!(profile(&store, &user("bob")), bob_before);
    assert_eq!(profile(&store, &crm("carol")), carol_before);

    // The whole input once more (a replay from the start, at new offsets), plus a late event.
    let mut replay: Vec<Record> = people().iter().map(|s| input.signal(s)).collect();
    replay.push(input.signal(&signal(
        0,
        &[device("a-phone"), cookie("a-web")],
        "same_event",
        1.0,
    )));
    let again = apply_records(&r, &store, &config, &replay).unwrap();
    assert!(
        again.tombstoned >= 10,
        "erased identifiers are dropped: {again:?}"
    );
    for i in &alice_ids()[..5] {
        assert_eq!(canonical(&store, i), None, "{i} came back");
    }
    let bob = profile(&store, &user("bob"));
    assert_eq!(bob.canonical_id, bob_before.canonical_id);
    assert_eq!(bob.identifiers, bob_before.identifiers);
    assert_eq!(
        profile(&store, &crm("carol")).identifiers,
        carol_before.identifiers
    );
}

#[test]
fn forget_by_retired_canonical_id_and_repeats_and_unknown_identifiers() {
    let config = ResolverConfig::default();
    let r = Resolver::new(config.policy.clone());
    let store = MemStore::default();
    let mut input = Input::default();
    let mut records: Vec<Record> = vec![
        input.signal(&signal(1, &[cookie("x")], "same_event", 1.0)),
        input.signal(&signal(2, &[crm("k"), email('k')], "crm_record", 1.0)),
    ];
    apply_records(&r, &store, &config, &records).unwrap();
    let retired = canonical(&store, &crm("k")).unwrap();
    records = vec![input.signal(&signal(
        3,
        &[cookie("x"), email('k')],
        "deterministic_login",
        1.0,
    ))];
    apply_records(&r, &store, &config, &records).unwrap();
    let survivor = canonical(&store, &crm("k")).unwrap();
    assert_ne!(survivor, retired);

    let commands = vec![
        input.command(1, forget(Target::CanonicalId(retired.clone()))),
        input.command(1, forget(Target::CanonicalId(retired.clone()))),
        input.command(2, forget(Target::Identifier(user("never-seen")))),
        input.command(3, forget(Target::CanonicalId("cdp_nothing".into()))),
    ];
    let applied = apply_records(&r, &store, &config, &commands).unwrap();
    assert_eq!(applied.commands, 3, "the repeated id is applied once");
    let deleted: Vec<_> = changes(&store)
        .into_iter()
        .filter(|c| c.kind == IdentityChangeKind::Deleted)
        .collect();
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0].canonical_id, survivor);
    assert_eq!(deleted[0].retired, vec![retired.clone()]);
    assert_eq!(
        lookup::profile_by_canonical(&store, "acme", &retired).unwrap(),
        None,
        "the alias is erased too"
    );
    assert_eq!(outcome(&store, 2).status, CommandStatus::NotFound);
    assert_eq!(outcome(&store, 2).identifiers_erased, 1);
    assert_eq!(outcome(&store, 3).status, CommandStatus::NotFound);

    // An identifier forgotten before it was ever seen is never created.
    let late = vec![input.signal(&signal(
        4,
        &[user("never-seen"), cookie("y")],
        "deterministic_login",
        1.0,
    ))];
    let out = apply_records(&r, &store, &config, &late).unwrap();
    assert_eq!(out.tombstoned, 1);
    assert_eq!(canonical(&store, &user("never-seen")), None);
    assert!(canonical(&store, &cookie("y")).is_some());
}

#[test]
fn bad_commands_go_to_the_dlq_and_redelivered_ones_are_skipped() {
    let config = ResolverConfig::default();
    let r = Resolver::new(config.policy.clone());
    let store = MemStore::default();
    let mut input = Input::default();
    let good = input.command(1, forget(Target::Identifier(user("u"))));
    let bad_json = Record {
        value: Some(b"{\"op\":\"explode\"}".to_vec()),
        offset: 1,
        ..good.clone()
    };
    let mut bad_tenant: GraphCommand =
        serde_json::from_slice(good.value.as_deref().unwrap()).unwrap();
    bad_tenant.tenant = "Not A Tenant".into();
    bad_tenant.id = "cmd-2".into();
    let bad_tenant = Record {
        value: Some(serde_json::to_vec(&bad_tenant).unwrap()),
        offset: 2,
        ..good.clone()
    };
    let records = [bad_json, bad_tenant, Record { offset: 3, ..good }];
    let out = apply_records(&r, &store, &config, &records).unwrap();
    assert_eq!((out.dead, out.commands), (2, 1));
    // Redelivered after a crash that lost the bus position: skipped by the stored offsets.
    let before = store.dump();
    let again = apply_records(&r, &store, &config, &records).unwrap();
    assert_eq!((again.dead, again.commands), (0, 0));
    assert_eq!(store.dump()[&Cf::Outbox], before[&Cf::Outbox]);
    let codes: Vec<String> = outbox(&store)
        .iter()
        .filter(|r| r.topic == "cdp.dlq")
        .map(|r| {
            let h = r
                .headers
                .iter()
                .find(|(k, _)| k == "cdp.error.code")
                .unwrap();
            String::from_utf8(h.1.clone()).unwrap()
        })
        .collect();
    assert_eq!(codes, vec!["invalid_command", "invalid_tenant"]);
}

/// The same input (signals, a forget, a replay, an unmerge) on RocksDB and in memory.
#[test]
fn rocks_and_memory_agree_byte_for_byte_through_commands() {
    // Batches cut by time would differ between the two stores' runs, and the outbox with them.
    let config = ResolverConfig {
        max_batch_ms: 0,
        ..ResolverConfig::default()
    };
    let r = Resolver::new(config.policy.clone());
    let mut input = Input::default();
    let mut batches: Vec<Vec<Record>> = vec![people().iter().map(|s| input.signal(s)).collect()];
    batches.push(vec![
        input.signal(&signal(
            6,
            &[crm("dave"), cookie("d-web")],
            "crm_record",
            1.0,
        )),
        input.command(1, forget(Target::Identifier(user("alice")))),
        input.signal(&signal(
            7,
            &[cookie("d-web"), email('c')],
            "email_match",
            0.9,
        )),
    ]);
    let mut replay: Vec<Record> = people().iter().map(|s| input.signal(s)).collect();
    replay.push(input.command(
        2,
        CommandOp::Unmerge {
            canonical_id: "placeholder".into(),
            part: UnmergePart::Identifier(cookie("d-web")),
        },
    ));
    batches.push(replay);

    let mem = MemStore::default();
    let dir = tempfile::tempdir().unwrap();
    let rocks = RocksStore::open(dir.path()).unwrap();
    for store in [&mem as &dyn GraphStore, &rocks] {
        for (i, batch) in batches.iter().enumerate() {
            let mut batch = batch.clone();
            if i == 2 {
                // The unmerge names Dave's merged profile, known only now.
                let dave = canonical(store, &crm("dave")).unwrap();
                let last = batch.last_mut().unwrap();
                let mut c: GraphCommand =
                    serde_json::from_slice(last.value.as_deref().unwrap()).unwrap();
                c.op = CommandOp::Unmerge {
                    canonical_id: dave,
                    part: UnmergePart::Identifier(cookie("d-web")),
                };
                last.value = Some(serde_json::to_vec(&c).unwrap());
            }
            apply_records(&r, store, &config, &batch).unwrap();
        }
    }
    assert_eq!(outcome(&mem, 2).status, CommandStatus::Applied);
    let dump = mem.dump();
    for cf in Cf::ALL {
        let rocks_entries = rocks.scan_prefix(cf, b"").unwrap();
        let mem_entries: Vec<_> = dump
            .get(&cf)
            .map(|m| m.clone().into_iter().collect())
            .unwrap_or_default();
        assert_eq!(rocks_entries, mem_entries, "{cf:?}");
    }
    assert!(!dump[&Cf::Tombstones].is_empty());
}

/// A shared cookie wrongly joins Erin (web login) with Frank's CRM record; unmerging that link
/// gives Frank his profile back, and replaying the same signal does not merge them again.
#[test]
fn unmerge_splits_a_wrong_merge_back_apart() {
    let config = ResolverConfig::default();
    let r = Resolver::new(config.policy.clone());
    let store = MemStore::default();
    let mut input = Input::default();
    let wrong = signal(3, &[email('f'), cookie("kiosk")], "email_match", 0.9);
    let first = vec![
        input.signal(&signal(
            1,
            &[user("erin"), cookie("kiosk"), email('e')],
            "deterministic_login",
            1.0,
        )),
        input.signal(&signal(2, &[crm("frank"), email('f')], "crm_record", 1.0)),
    ];
    apply_records(&r, &store, &config, &first).unwrap();
    let erin = canonical(&store, &user("erin")).unwrap();
    let frank = canonical(&store, &crm("frank")).unwrap();
    let third = vec![input.signal(&wrong)];
    apply_records(&r, &store, &config, &third).unwrap();
    assert_eq!(canonical(&store, &crm("frank")), Some(erin.clone()));
    let merged = profile(&store, &user("erin"));
    let bad = links(&store)
        .into_iter()
        .find(|l| l.rule == "email_match")
        .unwrap();

    // Wrong link id, a link of another profile, and an unknown profile are refused with reasons.
    let cmds = vec![
        input.command(
            1,
            CommandOp::Unmerge {
                canonical_id: erin.clone(),
                part: UnmergePart::Link(999),
            },
        ),
        input.command(
            2,
            CommandOp::Unmerge {
                canonical_id: "cdp_nobody".into(),
                part: UnmergePart::Link(bad.id),
            },
        ),
        input.command(
            3,
            CommandOp::Unmerge {
                canonical_id: frank.clone(),
                part: UnmergePart::Link(bad.id),
            },
        ),
    ];
    apply_records(&r, &store, &config, &cmds).unwrap();
    assert_eq!(outcome(&store, 1).status, CommandStatus::Rejected);
    assert!(outcome(&store, 1).detail.unwrap().contains("999"));
    assert_eq!(outcome(&store, 2).status, CommandStatus::NotFound);
    // Frank's retired id resolves to the merged profile, so naming it works too.
    assert_eq!(outcome(&store, 3).status, CommandStatus::Applied);

    let done = outcome(&store, 3);
    assert_eq!(done.links_removed, 1);
    assert_eq!(done.profiles, vec![erin.clone(), frank.clone()]);
    let split = &done.changes[0];
    assert_eq!(split.kind, IdentityChangeKind::Split);
    assert_eq!(split.canonical_id, erin, "the older part keeps the id");
    assert_eq!(
        split.created,
        vec![frank.clone()],
        "Frank's old id is live again"
    );
    assert!(split.version > merged.version);
    assert_eq!(canonical(&store, &crm("frank")), Some(frank.clone()));
    assert_eq!(canonical(&store, &email('f')), Some(frank.clone()));
    assert_eq!(canonical(&store, &cookie("kiosk")), Some(erin.clone()));
    let e = profile(&store, &user("erin"));
    assert!(e.aliases.is_empty());
    assert_eq!(e.merge_history.last().unwrap().rule, "unmerge");
    assert_eq!(e.identifiers.len(), 3);
    let f = profile(&store, &crm("frank"));
    assert_eq!(f.merge_history.len(), 1);
    assert_eq!(
        (
            f.merge_history[0].from.as_str(),
            f.merge_history[0].into.as_str()
        ),
        (erin.as_str(), frank.as_str())
    );
    let published: Vec<_> = updates(&store)
        .into_iter()
        .filter(|u| u.cause.as_deref() == Some("cmd-3"))
        .map(|u| (u.profile.canonical_id, u.version))
        .collect();
    assert_eq!(
        published,
        vec![
            (erin.clone(), split.version),
            (frank.clone(), split.version)
        ]
    );
    assert!(matches!(
        links(&store)
            .iter()
            .find(|l| l.id == bad.id)
            .unwrap()
            .decision,
        LinkDecision::Removed(_)
    ));

    let e = explain(&store, "acme", &Target::CanonicalId(erin.clone()))
        .unwrap()
        .unwrap();
    assert_eq!(e.removed.len(), 1);
    assert_eq!(e.removed[0].other_profile.as_deref(), Some(frank.as_str()));
    assert!(e.merges.iter().any(|m| m.rule == "unmerge"));

    // The same wrong assertion again stays removed.
    let again = vec![input.signal(&wrong)];
    let out = apply_records(&r, &store, &config, &again).unwrap();
    assert_eq!(out.merges, 0);
    assert_ne!(
        canonical(&store, &crm("frank")),
        canonical(&store, &user("erin"))
    );
}

#[test]
fn unmerging_an_identifier_makes_it_a_profile_of_its_own() {
    let config = ResolverConfig::default();
    let r = Resolver::new(config.policy.clone());
    let store = MemStore::default();
    let mut input = Input::default();
    let first = vec![
        input.signal(&signal(
            1,
            &[user("gus"), device("shared"), cookie("g")],
            "deterministic_login",
            1.0,
        )),
        input.signal(&signal(
            2,
            &[cookie("g"), device("shared")],
            "same_event",
            1.0,
        )),
    ];
    apply_records(&r, &store, &config, &first).unwrap();
    let gus = canonical(&store, &user("gus")).unwrap();
    let cmds = vec![input.command(
        1,
        CommandOp::Unmerge {
            canonical_id: gus.clone(),
            part: UnmergePart::Identifier(device("shared")),
        },
    )];
    apply_records(&r, &store, &config, &cmds).unwrap();
    let done = outcome(&store, 1);
    assert_eq!(
        done.links_removed, 2,
        "both links of the device are taken out"
    );
    let shared = canonical(&store, &device("shared")).unwrap();
    assert_ne!(shared, gus);
    assert_eq!(canonical(&store, &cookie("g")), Some(gus.clone()));
    assert_eq!(done.changes[0].created, vec![shared]);

    // A profile of one identifier has nothing to unmerge.
    let shared_id = canonical(&store, &device("shared")).unwrap();
    let cmds = vec![input.command(
        2,
        CommandOp::Unmerge {
            canonical_id: shared_id,
            part: UnmergePart::Identifier(device("shared")),
        },
    )];
    apply_records(&r, &store, &config, &cmds).unwrap();
    assert_eq!(outcome(&store, 2).status, CommandStatus::Rejected);
}

#[test]
fn explain_shows_links_refusals_candidates_and_merges() {
    let config = ResolverConfig::default();
    let r = Resolver::new(config.policy.clone());
    let dir = tempfile::tempdir().unwrap();
    let rocks = RocksStore::open(dir.path()).unwrap();
    let mut input = Input::default();
    let mut records: Vec<Record> = people().iter().map(|s| input.signal(s)).collect();
    records.push(input.signal(&signal(
        6,
        &[crm("alice-crm"), email('a')],
        "crm_record",
        1.0,
    )));
    apply_records(&r, &rocks, &config, &records[..5]).unwrap();
    apply_records(&r, &rocks, &config, &records[5..]).unwrap();
    // A read-only view works while the writer holds the database.
    let view = RocksStore::open_read_only(dir.path()).unwrap();
    let e = explain(&view, "acme", &Target::Identifier(device("tablet")))
        .unwrap()
        .expect("tablet is known");
    let alice = canonical(&rocks, &user("alice")).unwrap();
    let bob = canonical(&rocks, &user("bob")).unwrap();
    assert_eq!(e.canonical_id, alice);
    assert_eq!(e.identifiers.len(), 6);
    assert_eq!(e.links.len(), 5, "{:#?}", e.links);
    assert!(e.links.iter().all(|l| l.other_profile.is_none()));
    let login = e
        .links
        .iter()
        .find(|l| l.link.b == device("tablet"))
        .unwrap();
    assert_eq!(
        (login.link.rule.as_str(), login.link.confidence),
        ("deterministic_login", 1.0)
    );
    assert_eq!(login.link.signal_id, "e2");
    assert_eq!(e.refused.len(), 1);
    assert_eq!(
        e.refused[0].link.decision,
        LinkDecision::Refused("kind_limit:user_id".into())
    );
    assert_eq!(e.refused[0].other_profile.as_deref(), Some(bob.as_str()));
    assert_eq!(e.candidates.len(), 1);
    assert_eq!(e.candidates[0].link.b, cookie("a-other"));
    assert!(e.candidates[0].other_profile.is_some());
    assert!(e.removed.is_empty());
    assert_eq!(
        e.merges.len(),
        0,
        "a new CRM identifier joining is growth, not a merge"
    );
    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(json["refused"][0]["reason"], "kind_limit:user_id");

    // The same component from Bob's side: the refused link is there too, pointing at Alice.
    let b = explain(&view, "acme", &Target::CanonicalId(bob.clone()))
        .unwrap()
        .unwrap();
    assert_eq!(b.refused[0].other_profile.as_deref(), Some(alice.as_str()));
    assert_eq!(
        explain(&view, "acme", &Target::Identifier(user("nobody"))).unwrap(),
        None
    );
    assert_eq!(
        explain(&view, "other", &Target::CanonicalId(alice)).unwrap(),
        None,
        "tenants are apart"
    );
}

mod model {
    use super::*;
    use cdp_resolver::policy::PolicyConfig;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    use crate::support::partition;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, .. ProptestConfig::default() })]

        /// Forgetting anyone and then replaying the whole input leaves exactly the graph a run
        /// that never saw that person's identifiers builds, and none of them exists again.
        #[test]
        fn forget_then_replay_equals_never_having_seen_them(
            edges in prop::collection::vec((0u8..18, 0u8..18), 1..40),
            who in 0u8..18,
        ) {
            let ids: Vec<Identifier> = (0..18)
                .map(|n| if n % 3 == 0 { user(&format!("u{n}")) } else { cookie(&format!("c{n}")) })
                .collect();
            let signals: Vec<Signal> = edges
                .iter()
                .filter(|(a, b)| a != b)
                .enumerate()
                .map(|(n, (a, b))| signal(n as i64, &[ids[*a as usize].clone(), ids[*b as usize].clone()], "same_event", 1.0))
                .collect();
            prop_assume!(!signals.is_empty());
            // Limits (one user id per profile) but no hub detection: a forgotten hub's count
            // would legitimately differ from a run that never saw it.
            let policy = PolicyConfig { hub_max_profiles: 0, hub_max_profiles_per_kind: BTreeMap::new(), ..PolicyConfig::default() };
            // Batches not cut by time: the stores' runs are compared byte for byte.
            let config = ResolverConfig { policy: policy.clone(), max_batch_ms: 0, ..ResolverConfig::default() };
            let r = Resolver::new(policy);
            let target = ids[who as usize].clone();

            let mem = MemStore::default();
            let dir = tempfile::tempdir().unwrap();
            let rocks = RocksStore::open(dir.path()).unwrap();
            let mut gone = BTreeSet::new();
            for store in [&mem as &dyn GraphStore, &rocks] {
                let mut input = Input::default();
                let first: Vec<Record> = signals.iter().map(|s| input.signal(s)).collect();
                apply_records(&r, store, &config, &first).unwrap();
                gone = lookup::profile_by_identifier(store, "acme", &target)
                    .unwrap()
                    .map(|p| p.identifiers.into_iter().collect())
                    .unwrap_or_else(|| BTreeSet::from([target.clone()]));
                let cmd = input.command(1, forget(Target::Identifier(target.clone())));
                apply_records(&r, store, &config, &[cmd]).unwrap();
                let replay: Vec<Record> = signals.iter().map(|s| input.signal(s)).collect();
                apply_records(&r, store, &config, &replay).unwrap();
            }
            for i in &gone {
                prop_assert_eq!(canonical(&mem, i), None);
            }
            let never = MemStore::default();
            let filtered: Vec<Record> = signals
                .iter()
                .map(|s| {
                    let mut s = s.clone();
                    s.identifiers.retain(|i| !gone.contains(i));
                    s.links.retain(|l| !gone.contains(&l.a) && !gone.contains(&l.b));
                    s
                })
                .filter(|s| !s.identifiers.is_empty())
                .enumerate()
                .map(|(n, s)| Record { offset: n as i64, ..Input::default().signal(&s) })
                .collect();
            apply_records(&r, &never, &config, &filtered).unwrap();
            prop_assert_eq!(partition(&mem, &ids), partition(&never, &ids));
            let dump = mem.dump();
            for cf in Cf::ALL {
                let rocks_entries = rocks.scan_prefix(cf, b"").unwrap();
                let mem_entries: Vec<_> = dump.get(&cf).map(|m| m.clone().into_iter().collect()).unwrap_or_default();
                prop_assert_eq!(rocks_entries, mem_entries, "{:?}", cf);
            }
        }
    }
}
