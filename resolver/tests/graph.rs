//! Behaviour of the identity graph users rely on: merges across sources, refused merges,
//! stable canonical ids, replay idempotence, and equality with a plain union-find model.

mod support;

use cdp_bus::Record;
use cdp_proto::{Identifier, IdentifierKind, Signal, Source};
use cdp_resolver::policy::PolicyConfig;
use cdp_resolver::stage::apply_records;
use cdp_resolver::{lookup, GraphStore, MemStore, Resolver, ResolverConfig, RocksStore};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use support::{apply, partition, signal};

fn id(kind: IdentifierKind, v: &str) -> Identifier {
    Identifier::new(kind, v)
}

fn canonical(store: &dyn GraphStore, i: &Identifier) -> String {
    lookup::canonical_of(store, "acme", i)
        .unwrap()
        .expect("identifier known")
}

#[test]
fn one_batch_reports_one_identity_change_per_survivor_listing_every_retired_id() {
    let store = MemStore::default();
    let r = Resolver::new(PolicyConfig::default());
    let cookies: Vec<Identifier> = (0..5)
        .map(|i| id(IdentifierKind::CookieId, &format!("c{i}")))
        .collect();
    // Five profiles of their own, one batch each (older profiles survive).
    for (n, c) in cookies.iter().enumerate() {
        apply(
            &store,
            &r,
            &[signal(
                n as i64,
                Source::Web,
                std::slice::from_ref(c),
                "same_event",
                0.9,
            )],
        );
    }
    let ids: Vec<String> = cookies.iter().map(|c| canonical(&store, c)).collect();
    // One batch: c0 takes in c1 and then c2; c3 takes in c4.
    let login = |n: i64, a: usize, b: usize| {
        signal(
            n,
            Source::Web,
            &[cookies[a].clone(), cookies[b].clone()],
            "deterministic_login",
            1.0,
        )
    };
    let out = apply(
        &store,
        &r,
        &[login(10, 0, 1), login(11, 3, 4), login(12, 0, 2)],
    );
    assert_eq!(out.merges, 3);

    // Changes in the order of the updates (by canonical id), each at its profile's version.
    let mut survivors = [(ids[0].clone(), 0usize), (ids[3].clone(), 3usize)];
    survivors.sort();
    assert_eq!(out.changes.len(), 2);
    for (change, (survivor, first)) in out.changes.iter().zip(&survivors) {
        assert_eq!(&change.canonical_id, survivor);
        let retired: Vec<String> = if *first == 0 {
            vec![ids[1].clone(), ids[2].clone()]
        } else {
            vec![ids[4].clone()]
        };
        assert_eq!(change.retired, retired);
        let p = lookup::profile_by_identifier(&store, "acme", &cookies[*first])
            .unwrap()
            .unwrap();
        assert_eq!(change.version, p.version);
        let update = out
            .updates
            .iter()
            .find(|u| &u.canonical_id == survivor)
            .expect("the survivor's update");
        assert_eq!(change.at, update.updated_at);
    }
    // Every update is of a live profile, one per profile, in canonical id order.
    let updated: Vec<&str> = out
        .updates
        .iter()
        .map(|u| u.canonical_id.as_str())
        .collect();
    let mut sorted = updated.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(updated, sorted);
    assert_eq!(
        updated,
        survivors
            .iter()
            .map(|(s, _)| s.as_str())
            .collect::<Vec<_>>()
    );
}

#[test]
fn web_login_and_crm_record_merge_into_one_profile_with_history() {
    let store = MemStore::default();
    let r = Resolver::new(PolicyConfig::default());
    let cookie = id(IdentifierKind::CookieId, "c1");
    let user = id(IdentifierKind::UserId, "u1");
    let email = id(IdentifierKind::EmailSha256, &"a".repeat(64));
    let crm = id(IdentifierKind::CrmId, "sf:003A");

    apply(
        &store,
        &r,
        &[signal(
            1,
            Source::Web,
            std::slice::from_ref(&cookie),
            "same_event",
            0.9,
        )],
    );
    let web_profile = canonical(&store, &cookie);
    apply(
        &store,
        &r,
        &[signal(
            2,
            Source::Crm,
            &[crm.clone(), email.clone()],
            "crm_record",
            1.0,
        )],
    );
    let crm_profile = canonical(&store, &crm);
    assert_ne!(web_profile, crm_profile);

    // A login on the web ties the cookie, the user id and the email together.
    let out = apply(
        &store,
        &r,
        &[signal(
            3,
            Source::Web,
            &[user.clone(), cookie.clone(), email.clone()],
            "deterministic_login",
            1.0,
        )],
    );
    assert_eq!(out.merges, 1);
    let survivor = canonical(&store, &email);
    assert_eq!(survivor, canonical(&store, &cookie));
    assert_eq!(survivor, web_profile, "the older profile keeps its id");

    let p = lookup::profile_by_identifier(&store, "acme", &crm)
        .unwrap()
        .unwrap();
    assert_eq!(p.identifiers.len(), 4);
    assert_eq!(p.merge_history.len(), 1);
    let m = &p.merge_history[0];
    assert_eq!(
        (m.from.as_str(), m.into.as_str()),
        (crm_profile.as_str(), survivor.as_str())
    );
    assert_eq!(m.rule, "deterministic_login");
    assert_eq!(out.changes.len(), 1);
    assert_eq!(out.changes[0].retired, vec![crm_profile.clone()]);
    assert_eq!(out.changes[0].version, p.version);

    // The retired id still resolves to the survivor.
    let by_alias = lookup::profile_by_canonical(&store, "acme", &crm_profile)
        .unwrap()
        .unwrap();
    assert_eq!(by_alias.canonical_id, survivor);
    assert_eq!(p.attributes.channels_active.len(), 2);
}

#[test]
fn merge_that_would_join_two_user_ids_is_refused_and_recorded() {
    let store = MemStore::default();
    let r = Resolver::new(PolicyConfig::default());
    let tablet = id(IdentifierKind::DeviceId, "family-tablet");
    let alice = id(IdentifierKind::UserId, "alice");
    let bob = id(IdentifierKind::UserId, "bob");
    let out = apply(
        &store,
        &r,
        &[
            signal(
                1,
                Source::App,
                &[alice.clone(), tablet.clone()],
                "deterministic_login",
                1.0,
            ),
            signal(
                2,
                Source::App,
                &[bob.clone(), tablet.clone()],
                "deterministic_login",
                1.0,
            ),
        ],
    );
    assert_eq!(out.refused, 1);
    assert_ne!(canonical(&store, &alice), canonical(&store, &bob));
    assert_eq!(
        canonical(&store, &tablet),
        canonical(&store, &alice),
        "first login keeps the device"
    );
    let refused: Vec<_> = store
        .scan_prefix(cdp_resolver::store::Cf::Links, b"")
        .unwrap()
        .into_iter()
        .map(|(_, v)| cdp_resolver::codec::decode_link(&v).unwrap())
        .filter(|l| matches!(&l.decision, cdp_resolver::link::LinkDecision::Refused(reason) if reason == "kind_limit:user_id"))
        .collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].signal_id, "e2");
}

#[test]
fn weak_links_stay_candidates() {
    let store = MemStore::default();
    let r = Resolver::new(PolicyConfig::default());
    let a = id(IdentifierKind::CookieId, "c1");
    let b = id(IdentifierKind::ClickId, "Cj0");
    let out = apply(
        &store,
        &r,
        &[signal(
            1,
            Source::Media,
            &[a.clone(), b.clone()],
            "click_id_match",
            0.5,
        )],
    );
    assert_eq!(out.candidates, 1);
    assert_ne!(canonical(&store, &a), canonical(&store, &b));
}

/// A kiosk cookie seen with many people's anonymous ids is a hub: after it has joined three
/// profiles its links are refused with `hub:cookie_id`, and a person's own repeat visits do not
/// count again.
#[test]
fn identifiers_linked_to_too_many_profiles_are_quarantined() {
    let store = MemStore::default();
    let mut policy = PolicyConfig::default();
    policy
        .hub_max_profiles_per_kind
        .insert("cookie_id".into(), 3);
    let r = Resolver::new(policy);
    let kiosk = id(IdentifierKind::CookieId, "kiosk");
    let people: Vec<Identifier> = (0..6)
        .map(|n| id(IdentifierKind::AnonymousId, &format!("anon{n}")))
        .collect();
    // Everyone was seen before on their own.
    let own: Vec<Signal> = people
        .iter()
        .enumerate()
        .map(|(n, p)| {
            signal(
                n as i64,
                Source::Web,
                std::slice::from_ref(p),
                "same_event",
                0.9,
            )
        })
        .collect();
    apply(&store, &r, &own);
    let mut at_kiosk = Vec::new();
    for (n, p) in people.iter().enumerate() {
        at_kiosk.push(signal(
            10 + n as i64,
            Source::Web,
            &[p.clone(), kiosk.clone()],
            "same_event",
            0.9,
        ));
        // The same person again at the kiosk: not a new profile for the kiosk.
        at_kiosk.push(signal(
            20 + n as i64,
            Source::Web,
            &[p.clone(), kiosk.clone()],
            "same_event",
            0.9,
        ));
    }
    let out = apply(&store, &r, &at_kiosk);
    assert_eq!(
        out.merges, 2,
        "the kiosk joined three profiles, then stopped"
    );
    let joined = canonical(&store, &kiosk);
    for p in &people[..3] {
        assert_eq!(canonical(&store, p), joined);
    }
    for p in &people[3..] {
        assert_ne!(canonical(&store, p), joined);
    }
    let refusals: Vec<String> = store
        .scan_prefix(cdp_resolver::store::Cf::Links, b"")
        .unwrap()
        .into_iter()
        .map(|(_, v)| cdp_resolver::codec::decode_link(&v).unwrap())
        .filter_map(|l| match l.decision {
            cdp_resolver::link::LinkDecision::Refused(reason) => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(refusals, vec!["hub:cookie_id"; 3]);
}

fn record(offset: i64, s: &Signal) -> Record {
    Record {
        topic: "cdp.signals".into(),
        partition: 0,
        offset,
        timestamp_ms: 0,
        key: Some(b"acme".to_vec()),
        value: Some(serde_json::to_vec(s).unwrap()),
        headers: vec![],
    }
}

#[test]
fn replaying_applied_records_changes_nothing() {
    let store = MemStore::default();
    let config = ResolverConfig::default();
    let r = Resolver::new(config.policy.clone());
    let signals: Vec<Record> = (0..20)
        .map(|n| {
            let s = signal(
                n,
                Source::Web,
                &[
                    id(IdentifierKind::UserId, &format!("u{}", n % 5)),
                    id(IdentifierKind::CookieId, &format!("c{n}")),
                ],
                "deterministic_login",
                1.0,
            );
            record(n, &s)
        })
        .collect();
    apply_records(&r, &store, &config, &signals[..12]).unwrap();
    apply_records(&r, &store, &config, &signals[8..]).unwrap();
    let once = store.dump();
    // The whole input again, as after a crash that lost the bus's committed position.
    let out = apply_records(&r, &store, &config, &signals).unwrap();
    assert_eq!((out.updates, out.dead), (0, 0));
    let mut after = store.dump();
    let mut before = once.clone();
    // Only the outbox grows (nothing was added to it) and meta is rewritten identically.
    after.remove(&cdp_resolver::store::Cf::Outbox);
    before.remove(&cdp_resolver::store::Cf::Outbox);
    assert_eq!(after, before);

    let fresh = MemStore::default();
    apply_records(&r, &fresh, &config, &signals).unwrap();
    let mut a = fresh.dump();
    a.remove(&cdp_resolver::store::Cf::Outbox);
    // Different batch boundaries bump versions differently; the graph itself is the same.
    for cf in [
        cdp_resolver::store::Cf::Ids,
        cdp_resolver::store::Cf::Canon,
        cdp_resolver::store::Cf::Aliases,
    ] {
        assert_eq!(a.get(&cf), before.get(&cf), "{cf:?}");
    }
}

#[test]
fn invalid_signals_go_to_the_dlq_with_reasons() {
    let store = MemStore::default();
    let config = ResolverConfig::default();
    let r = Resolver::new(config.policy.clone());
    let mut bad_tenant = signal(1, Source::Web, &[id(IdentifierKind::UserId, "u")], "x", 1.0);
    bad_tenant.tenant = "Not A Tenant".into();
    let mut future = signal(2, Source::Web, &[id(IdentifierKind::UserId, "u")], "x", 1.0);
    future.event_time = future.received_at + chrono::Duration::days(30);
    let mut records = vec![record(0, &bad_tenant), record(1, &future)];
    records.push(Record {
        value: Some(b"{not json".to_vec()),
        ..record(2, &bad_tenant)
    });
    let out = apply_records(&r, &store, &config, &records).unwrap();
    assert_eq!(out.dead, 3);
    let outbox = store
        .scan_prefix(cdp_resolver::store::Cf::Outbox, b"")
        .unwrap();
    let codes: Vec<String> = outbox
        .iter()
        .map(|(_, v)| cdp_bus::OutRecord::from_bytes(v).unwrap())
        .map(|r| {
            assert_eq!(r.topic, "cdp.dlq");
            let h = r
                .headers
                .iter()
                .find(|(k, _)| k == "cdp.error.code")
                .unwrap();
            String::from_utf8(h.1.clone()).unwrap()
        })
        .collect();
    assert_eq!(
        codes,
        vec!["invalid_tenant", "invalid_timestamp", "invalid_signal"]
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    /// With no limits in the policy, the graph's partition is exactly the union-find of the links,
    /// the RocksDB store equals the in-memory one byte for byte, and batch size does not matter.
    #[test]
    fn graph_equals_union_find_model(
        edges in prop::collection::vec((0u8..40, 0u8..40), 1..120),
        split in 1usize..10,
    ) {
        let ids: Vec<Identifier> = (0..40).map(|n| id(IdentifierKind::CookieId, &format!("c{n}"))).collect();
        let signals: Vec<Signal> = edges
            .iter()
            .enumerate()
            .map(|(n, (a, b))| signal(n as i64, Source::Web, &[ids[*a as usize].clone(), ids[*b as usize].clone()], "same_event", 1.0))
            .collect();
        let policy = PolicyConfig {
            max_per_kind: BTreeMap::new(),
            max_profile_identifiers: 10_000,
            hub_max_profiles: 0,
            hub_max_profiles_per_kind: BTreeMap::new(),
            ..PolicyConfig::default()
        };
        let r = Resolver::new(policy);

        let mem = MemStore::default();
        let dir = tempfile::tempdir().unwrap();
        let rocks = RocksStore::open(dir.path()).unwrap();
        let chunked = MemStore::default();
        apply(&mem, &r, &signals);
        apply(&rocks, &r, &signals);
        for chunk in signals.chunks(split) {
            apply(&chunked, &r, chunk);
        }

        let mut model = petgraph::unionfind::UnionFind::<usize>::new(40);
        for (a, b) in &edges {
            model.union(*a as usize, *b as usize);
        }
        let seen: BTreeSet<usize> = edges.iter().flat_map(|(a, b)| [*a as usize, *b as usize]).collect();
        let mut expected: BTreeMap<usize, BTreeSet<Identifier>> = BTreeMap::new();
        for n in &seen {
            expected.entry(model.find(*n)).or_default().insert(ids[*n].clone());
        }
        let expected: BTreeSet<_> = expected.into_values().collect();

        prop_assert_eq!(&partition(&mem, &ids), &expected);
        prop_assert_eq!(&partition(&chunked, &ids), &expected);
        prop_assert_eq!(&partition(&rocks, &ids), &expected);
        for i in &ids {
            let c = lookup::canonical_of(&mem, "acme", i).unwrap();
            prop_assert_eq!(&c, &lookup::canonical_of(&rocks, "acme", i).unwrap());
            prop_assert_eq!(&c, &lookup::canonical_of(&chunked, "acme", i).unwrap());
        }
        let dump = mem.dump();
        for cf in cdp_resolver::store::Cf::ALL {
            let rocks_entries = rocks.scan_prefix(cf, b"").unwrap();
            let mem_entries: Vec<_> = dump.get(&cf).map(|m| m.clone().into_iter().collect()).unwrap_or_default();
            prop_assert_eq!(rocks_entries, mem_entries, "{:?}", cf);
        }
        // However the input is cut into batches, the state is the same: only the output
        // bookkeeping (how many updates the outbox numbered) depends on the cut.
        let chunked_dump = chunked.dump();
        for cf in cdp_resolver::store::Cf::ALL {
            if cf == cdp_resolver::store::Cf::Outbox {
                continue;
            }
            let strip = |d: &cdp_resolver::store::Dump| -> Vec<(Vec<u8>, Vec<u8>)> {
                d.get(&cf)
                    .map(|m| m.iter().filter(|(k, _)| k.as_slice() != b"next_outbox").map(|(k, v)| (k.clone(), v.clone())).collect())
                    .unwrap_or_default()
            };
            prop_assert_eq!(strip(&dump), strip(&chunked_dump), "{:?} depends on batching", cf);
        }
    }
}
