//! The state cache the stage keeps between batches changes nothing but speed: a random input
//! of signals and graph commands applied through a cache (of any size, with commits that fail
//! and are retried) leaves a store byte for byte equal to the same input applied without one.

mod support;

use cdp_bus::Record;
use cdp_proto::{time::from_millis, Identifier, IdentifierKind, Source};
use cdp_resolver::command::{CommandOp, GraphCommand, Target, UnmergePart};
use cdp_resolver::stage::{apply_records, apply_records_cached};
use cdp_resolver::state_cache::StateCache;
use cdp_resolver::store::Cf;
use cdp_resolver::txn::Txn;
use cdp_resolver::{lookup, MemStore, Resolver, ResolverConfig};
use proptest::prelude::*;
use support::{signal, FailingStore, TENANT};

const KINDS: [IdentifierKind; 4] = [
    IdentifierKind::UserId,
    IdentifierKind::EmailSha256,
    IdentifierKind::DeviceId,
    IdentifierKind::CookieId,
];

fn ident(kind: u8, value: u8) -> Identifier {
    Identifier {
        kind: KINDS[usize::from(kind) % KINDS.len()].clone(),
        value: format!("v{value}"),
    }
}

/// One step of the input.
#[derive(Debug, Clone)]
enum Step {
    /// A signal whose first identifier is linked to the others, strongly or as a candidate.
    Signal(Vec<(u8, u8)>, bool),
    Forget(u8, u8),
    /// Take an identifier out of its profile.
    Unmerge(u8, u8),
    /// End of a stage batch.
    Cut,
}

fn step() -> impl Strategy<Value = Step> {
    let id = (0u8..4, 0u8..12);
    prop_oneof![
        8 => (prop::collection::vec(id.clone(), 1..4), prop::bool::weighted(0.8))
            .prop_map(|(ids, strong)| Step::Signal(ids, strong)),
        1 => id.clone().prop_map(|(k, v)| Step::Forget(k, v)),
        1 => id.prop_map(|(k, v)| Step::Unmerge(k, v)),
        2 => Just(Step::Cut),
    ]
}

fn record(topic: &str, offset: i64, value: Vec<u8>) -> Record {
    Record {
        topic: topic.into(),
        partition: 0,
        offset,
        timestamp_ms: 0,
        key: Some(TENANT.as_bytes().to_vec()),
        value: Some(value),
        headers: vec![],
    }
}

/// The input as stage batches. Commands name the profile the identifier is in at that point,
/// as an operator would read it: `reference` is applied along the way to find it.
fn batches(steps: &[Step], config: &ResolverConfig, resolver: &Resolver) -> Vec<Vec<Record>> {
    let reference = MemStore::default();
    let mut out = vec![Vec::new()];
    let (mut signals, mut commands) = (0i64, 0i64);
    for (n, s) in steps.iter().enumerate() {
        let current = out.last_mut().unwrap();
        let op = match s {
            Step::Cut => {
                apply_records(resolver, &reference, config, current).unwrap();
                out.push(Vec::new());
                continue;
            }
            Step::Signal(ids, strong) => {
                let ids: Vec<Identifier> = ids.iter().map(|(k, v)| ident(*k, *v)).collect();
                let (rule, confidence) = if *strong {
                    ("deterministic_login", 1.0)
                } else {
                    ("device_match", 0.5)
                };
                let s = signal(signals, Source::Web, &ids, rule, confidence);
                current.push(record(
                    &config.signals_topic,
                    signals,
                    serde_json::to_vec(&s).unwrap(),
                ));
                signals += 1;
                continue;
            }
            Step::Forget(k, v) => CommandOp::Forget {
                target: Target::Identifier(ident(*k, *v)),
            },
            Step::Unmerge(k, v) => {
                // The batch so far must be in the reference to name the profile.
                apply_records(resolver, &reference, config, current).unwrap();
                let Some(canonical_id) =
                    lookup::canonical_of(&reference, TENANT, &ident(*k, *v)).unwrap()
                else {
                    continue;
                };
                CommandOp::Unmerge {
                    canonical_id,
                    part: UnmergePart::Identifier(ident(*k, *v)),
                }
            }
        };
        let c = GraphCommand {
            id: format!("cmd-{n}"),
            tenant: TENANT.into(),
            requested_at: from_millis(1_800_000_000_000 + n as i64),
            op,
        };
        current.push(record(
            &config.commands_topic,
            commands,
            serde_json::to_vec(&c).unwrap(),
        ));
        commands += 1;
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn a_cached_run_writes_the_same_bytes_as_an_uncached_one(
        steps in prop::collection::vec(step(), 1..80),
        entries in prop_oneof![0usize..6, Just(100_000)],
        fail_at in prop::option::of(0usize..40),
    ) {
        // Batches not cut by time: the runs are compared byte for byte, outbox included.
        let config = ResolverConfig { max_batch_ms: 0, ..ResolverConfig::default() };
        let resolver = Resolver::from_config(&config).unwrap();
        let input = batches(&steps, &config, &resolver);

        let plain = MemStore::default();
        for batch in &input {
            apply_records(&resolver, &plain, &config, batch).unwrap();
        }

        let cached = FailingStore::new(fail_at);
        let mut cache = StateCache::new(entries);
        for batch in &input {
            if apply_records_cached(&resolver, &cached, &mut cache, &config, batch).is_err() {
                // What committed before the failure stays; the rest is applied again, with
                // the same cache (already applied records are skipped by their offsets).
                apply_records_cached(&resolver, &cached, &mut cache, &config, batch).unwrap();
            }
        }
        let (want, got) = (plain.dump(), cached.inner.dump());
        for cf in Cf::ALL {
            prop_assert_eq!(want.get(&cf), got.get(&cf), "{:?}", cf);
        }
    }
}

#[test]
fn a_dropped_transaction_leaves_the_cache_empty_and_a_committed_one_fills_it() {
    let store = MemStore::default();
    let config = ResolverConfig::default();
    let resolver = Resolver::from_config(&config).unwrap();
    let mut cache = StateCache::new(1000);
    let s = signal(
        0,
        Source::Web,
        &[ident(0, 1), ident(3, 2)],
        "deterministic_login",
        1.0,
    );
    let records = [record(
        &config.signals_topic,
        0,
        serde_json::to_vec(&s).unwrap(),
    )];
    apply_records_cached(&resolver, &store, &mut cache, &config, &records).unwrap();
    assert!(!cache.is_empty());

    let mut txn = Txn::begin_cached(&store, &mut cache).unwrap();
    let node = txn.node_of(TENANT, &ident(0, 1)).unwrap().unwrap();
    let root = txn.find(node).unwrap();
    let profile = txn.profile_mut(root).unwrap().unwrap();
    let committed = profile.version;
    profile.version += 100;
    drop(txn);
    assert!(
        cache.is_empty(),
        "an uncommitted transaction's state was kept"
    );

    // Read from the store again: the abandoned change is nowhere.
    let mut txn = Txn::begin_cached(&store, &mut cache).unwrap();
    let root = txn.find(node).unwrap();
    let version = txn.profile_ref(root).unwrap().unwrap().version;
    assert_eq!(version, committed);
    txn.commit().unwrap();
    assert!(!cache.is_empty());
}
