//! A poll is cut into batches once applying has taken `max_batch_ms`: the batches are smaller,
//! never different in effect. Whatever the cuts, the graph state is the state of applying the
//! poll in one batch, and every signal is applied once.

mod support;

use cdp_bus::Record;
use cdp_proto::{Identifier, IdentifierKind, Source};
use cdp_resolver::stage::{apply_next, apply_records, stored_offset, StageState};
use cdp_resolver::store::Cf;
use cdp_resolver::{MemStore, Resolver, ResolverConfig};
use support::signal;

/// `n` signals of people who each show up on a few devices and later log in, so that batches
/// create nodes, merge profiles and fold attributes.
fn input(config: &ResolverConfig, n: i64) -> Vec<Record> {
    (0..n)
        .map(|i| {
            let person = i % 97;
            let mut ids = vec![Identifier::new(
                IdentifierKind::CookieId,
                format!("ck-{person}-{}", i % 5),
            )];
            if i % 3 == 0 {
                ids.push(Identifier::new(
                    IdentifierKind::EmailSha256,
                    format!("{person:064x}"),
                ));
            }
            let s = signal(i, Source::Web, &ids, "deterministic_login", 1.0);
            Record {
                topic: config.signals_topic.clone(),
                partition: 0,
                offset: i,
                timestamp_ms: 0,
                key: None,
                value: Some(serde_json::to_vec(&s).unwrap()),
                headers: vec![],
            }
        })
        .collect()
}

#[test]
fn a_poll_cut_by_the_budget_leaves_the_state_of_one_batch() {
    let whole = ResolverConfig {
        batch_size: 10_000,
        max_batch_ms: 0,
        ..ResolverConfig::default()
    };
    // A millisecond is far less than 6,000 signals take, so the poll must be cut.
    let budgeted = ResolverConfig {
        max_batch_ms: 1,
        ..whole.clone()
    };
    let records = input(&whole, 6_000);
    let resolver = Resolver::new(whole.policy.clone());

    let reference = MemStore::default();
    apply_records(&resolver, &reference, &whole, &records).unwrap();

    let cut = MemStore::default();
    let mut state = StageState::new(&budgeted);
    let mut rest = &records[..];
    let mut batches = Vec::new();
    while !rest.is_empty() {
        let (applied, used) = apply_next(&resolver, &cut, &mut state, &budgeted, rest).unwrap();
        assert!(used >= 1 && used <= rest.len());
        assert_eq!(applied.dead, 0);
        rest = &rest[used..];
        batches.push(used);
        // Each batch commits the offsets of exactly what it applied.
        let applied_through: usize = batches.iter().sum();
        assert_eq!(
            stored_offset(&cut, &whole.signals_topic, 0).unwrap(),
            Some(applied_through as i64)
        );
    }
    assert!(
        batches.len() > 1,
        "6,000 signals fit a 1 ms budget: {batches:?}"
    );

    // The graph is the same; only the outbox differs (one profile update per batch), and with
    // it the outbox's sequence.
    let graph = |store: &MemStore| {
        let mut dump = store.dump();
        dump.remove(&Cf::Outbox);
        if let Some(meta) = dump.get_mut(&Cf::Meta) {
            meta.remove(b"next_outbox".as_slice());
        }
        dump
    };
    let (a, b) = (graph(&reference), graph(&cut));
    assert!(a == b, "cutting the poll changed the graph state");

    // Applying the poll again (a redelivery after a crash) applies nothing.
    let before = cut.dump();
    apply_records(&resolver, &cut, &budgeted, &records).unwrap();
    assert!(cut.dump() == before, "a redelivered poll was applied again");
}
