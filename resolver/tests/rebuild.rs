//! `rebuild` replays the link log under a changed policy: it previews the difference without
//! touching the state, applies it atomically with change records in the outbox, and a second
//! rebuild under the same policy finds nothing left to change.

mod support;

use cdp_bus::Record;
use cdp_proto::{
    time::from_millis, Identifier, IdentifierKind, IdentityChange, IdentityChangeKind, Signal,
    Source,
};
use cdp_resolver::policy::PolicyConfig;
use cdp_resolver::rebuild::{rebuild, RebuildOptions, RebuildReport};
use cdp_resolver::stage::apply_records;
use cdp_resolver::store::Cf;
use cdp_resolver::{lookup, GraphStore, MemStore, Resolver, ResolverConfig};

fn id(kind: IdentifierKind, v: &str) -> Identifier {
    Identifier::new(kind, v)
}
fn user(v: &str) -> Identifier {
    id(IdentifierKind::UserId, v)
}
fn email(v: &str) -> Identifier {
    id(IdentifierKind::EmailSha256, v)
}
fn device(v: &str) -> Identifier {
    id(IdentifierKind::DeviceId, v)
}

fn record(n: i64, ids: &[Identifier]) -> Record {
    let s = support::signal(n, Source::App, ids, "deterministic_login", 1.0);
    Record {
        topic: "cdp.signals".into(),
        partition: 0,
        offset: n,
        timestamp_ms: 0,
        key: None,
        value: Some(serde_json::to_vec(&s).unwrap()),
        headers: vec![],
    }
}

fn canonical(store: &dyn GraphStore, i: &Identifier) -> String {
    lookup::canonical_of(store, "acme", i).unwrap().unwrap()
}

fn run(store: &dyn GraphStore, policy: PolicyConfig, apply: bool) -> RebuildReport {
    let config = ResolverConfig {
        policy,
        ..ResolverConfig::default()
    };
    let options = RebuildOptions {
        tenant: "acme".into(),
        apply,
        examples: 5,
        at: from_millis(1_800_000_000_000),
    };
    rebuild(
        store,
        &Resolver::new(config.policy.clone()),
        &config,
        &options,
    )
    .unwrap()
}

fn changes(store: &dyn GraphStore) -> Vec<IdentityChange> {
    cdp_resolver::outbox::records(store)
        .unwrap()
        .into_iter()
        .filter(|r| r.topic == "cdp.identity.changes")
        .map(|r| serde_json::from_slice(r.value.as_deref().unwrap()).unwrap())
        .collect()
}

/// Ann has three emails; Ben one; Cy and Di share a tablet (Di's login there was refused).
fn graph() -> MemStore {
    let store = MemStore::default();
    let config = ResolverConfig::default();
    let records = vec![
        record(0, &[user("ann"), email("a1"), email("a2")]),
        record(1, &[user("ann"), email("a3")]),
        record(2, &[user("ben"), email("b1")]),
        record(3, &[user("cy"), device("tablet")]),
        record(4, &[user("di"), device("tablet")]),
    ];
    apply_records(
        &Resolver::new(config.policy.clone()),
        &store,
        &config,
        &records,
    )
    .unwrap();
    // Publishing is not part of this test: an empty outbox shows what the rebuild adds.
    let drained: Vec<_> = store
        .scan_prefix(Cf::Outbox, b"")
        .unwrap()
        .into_iter()
        .map(|(k, _)| (Cf::Outbox, k, None))
        .collect();
    store.write(drained).unwrap();
    store
}

#[test]
fn same_policy_changes_nothing() {
    let store = graph();
    let before = store.dump();
    let report = run(&store, PolicyConfig::default(), true);
    assert_eq!(
        (report.splits, report.merges, report.links_changed),
        (0, 0, 0)
    );
    assert_eq!(report.identifiers, 9);
    assert_eq!(report.links, 6);
    assert_eq!(report.profiles_before, report.profiles_after);
    let mut after = store.dump();
    // Path compression may shorten parent pointers; nothing else may differ.
    after.remove(&Cf::Parent);
    let mut before = before;
    before.remove(&Cf::Parent);
    assert_eq!(after, before);
}

#[test]
fn tightening_a_limit_previews_then_applies_the_splits() {
    let store = graph();
    let ann = canonical(&store, &user("ann"));
    let mut tight = PolicyConfig::default();
    tight.max_per_kind.insert("email_sha256".into(), 1);

    let before = store.dump();
    let preview = run(&store, tight.clone(), false);
    assert_eq!(store.dump(), before, "a preview writes nothing");
    assert_eq!(
        (preview.splits, preview.merges, preview.links_changed),
        (1, 0, 2)
    );
    assert_eq!(preview.profiles_after, preview.profiles_before + 2);
    let example = &preview.split_examples[0];
    assert_eq!(example.canonical_id, ann);
    let mut sizes: Vec<usize> = example.into.iter().map(Vec::len).collect();
    sizes.sort();
    assert_eq!(sizes, vec![1, 1, 2]);
    assert!(example
        .into
        .iter()
        .any(|p| p == &vec![user("ann"), email("a1")]));

    let applied = run(&store, tight.clone(), true);
    assert!(applied.applied);
    assert_eq!(applied.splits, 1);
    assert_eq!(
        canonical(&store, &email("a1")),
        canonical(&store, &user("ann"))
    );
    let parts: std::collections::BTreeSet<String> = [user("ann"), email("a2"), email("a3")]
        .iter()
        .map(|i| canonical(&store, i))
        .collect();
    assert_eq!(parts.len(), 3);
    assert!(parts.contains(&ann), "one part keeps the id");
    let split = changes(&store);
    assert_eq!(split.len(), 1);
    assert_eq!(split[0].kind, IdentityChangeKind::Split);
    assert_eq!(split[0].canonical_id, ann);
    assert_eq!(split[0].created.len(), 2);
    assert_eq!(split[0].rule.as_deref(), Some("rebuild"));

    let again = run(&store, tight, false);
    assert_eq!((again.splits, again.merges, again.links_changed), (0, 0, 0));
}

#[test]
fn loosening_a_limit_merges_what_was_refused() {
    let store = graph();
    let cy = canonical(&store, &user("cy"));
    let di = canonical(&store, &user("di"));
    assert_ne!(cy, di);
    let mut loose = PolicyConfig::default();
    loose.max_per_kind.insert("user_id".into(), 2);
    let report = run(&store, loose.clone(), true);
    assert_eq!(
        (report.splits, report.merges, report.links_changed),
        (0, 1, 1)
    );
    assert_eq!(report.merge_examples[0].canonical_ids.len(), 2);
    assert_eq!(report.merge_examples[0].identifiers, 3);
    let merged = canonical(&store, &user("di"));
    assert_eq!(merged, canonical(&store, &user("cy")));
    let c = changes(&store);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].kind, IdentityChangeKind::Merged);
    assert_eq!(c[0].canonical_id, merged);
    assert_eq!(c[0].retired.len(), 1);
    // The retired id still resolves.
    let retired = &c[0].retired[0];
    let p = lookup::profile_by_canonical(&store, "acme", retired)
        .unwrap()
        .unwrap();
    assert_eq!(p.canonical_id, merged);
    assert_eq!(p.merge_history.last().unwrap().rule, "rebuild");
    assert_eq!(run(&store, loose, false).merges, 0);
}

mod model {
    use super::*;
    use crate::support::partition;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

        /// Rebuilding under policy B (limits and hub detection) the state built under policy A,
        /// then going on under B, gives the partition that the same input under B from scratch
        /// gives.
        #[test]
        fn rebuild_equals_a_fresh_run_under_the_new_policy(
            edges in prop::collection::vec((0u8..24, 0u8..24), 1..60),
            limits in (1usize..3, 1usize..4, 1usize..4, 0usize..4),
        ) {
            // A third of the identifiers are user ids, so limits bite.
            let ids: Vec<Identifier> = (0..24)
                .map(|n| match n % 3 {
                    0 => user(&format!("u{n}")),
                    1 => email(&format!("e{n}")),
                    _ => device(&format!("d{n}")),
                })
                .collect();
            let records: Vec<Record> = edges
                .iter()
                .enumerate()
                .map(|(n, (a, b))| record(n as i64, &[ids[*a as usize].clone(), ids[*b as usize].clone()]))
                .filter(|r| {
                    let s: Signal = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
                    s.identifiers[0] != s.identifiers[1]
                })
                .collect();
            let mut b = PolicyConfig::default();
            b.max_per_kind.insert("user_id".into(), limits.0);
            b.max_per_kind.insert("email_sha256".into(), limits.1);
            b.max_per_kind.insert("device_id".into(), limits.2);
            // Hubs too (0 = off): a device reaching more profiles than this is quarantined.
            b.hub_max_profiles_per_kind.insert("device_id".into(), limits.3);
            let config_a = ResolverConfig::default();
            let config_b = ResolverConfig { policy: b.clone(), ..ResolverConfig::default() };

            // Half the input under A, the rebuild to B, then the rest under B.
            let half = records.len() / 2;
            let rebuilt = MemStore::default();
            apply_records(&Resolver::new(config_a.policy.clone()), &rebuilt, &config_a, &records[..half]).unwrap();
            run(&rebuilt, b.clone(), true);
            apply_records(&Resolver::new(b.clone()), &rebuilt, &config_b, &records[half..]).unwrap();
            let fresh = MemStore::default();
            apply_records(&Resolver::new(b.clone()), &fresh, &config_b, &records).unwrap();
            prop_assert_eq!(partition(&rebuilt, &ids), partition(&fresh, &ids));
            let again = run(&rebuilt, b, false);
            prop_assert_eq!((again.splits, again.merges, again.links_changed), (0, 0, 0));
        }
    }
}
