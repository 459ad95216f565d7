//! Shared by the resolver's integration tests.
#![allow(dead_code)] // each test file uses its own part

use cdp_proto::time::from_millis;
use cdp_proto::{Identifier, IdentityLink, Signal, Source};
use cdp_resolver::graph::Batch;
use cdp_resolver::store::{Cf, Op};
use cdp_resolver::txn::Txn;
use cdp_resolver::{lookup, GraphStore, MemStore, Resolver, ResolverError};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The tenant every test writes to.
pub const TENANT: &str = "acme";

/// How `ids` are partitioned into profiles of [`TENANT`] (identifiers no profile holds left out).
pub fn partition(store: &dyn GraphStore, ids: &[Identifier]) -> BTreeSet<BTreeSet<Identifier>> {
    let mut groups: BTreeMap<String, BTreeSet<Identifier>> = BTreeMap::new();
    for i in ids {
        if let Some(c) = lookup::canonical_of(store, TENANT, i).unwrap() {
            groups.entry(c).or_default().insert(i.clone());
        }
    }
    groups.into_values().collect()
}

/// The `n`th signal of a test input (one a second) from `source`, whose first identifier is
/// linked by `rule` to each of the others.
pub fn signal(n: i64, source: Source, ids: &[Identifier], rule: &str, confidence: f64) -> Signal {
    Signal {
        tenant: TENANT.into(),
        source,
        event_id: format!("e{n}"),
        event_time: from_millis(1_700_000_000_000 + n * 1000),
        received_at: from_millis(1_700_000_000_000 + n * 1000),
        identifiers: ids.to_vec(),
        links: ids[1..]
            .iter()
            .map(|b| IdentityLink {
                a: ids[0].clone(),
                b: b.clone(),
                rule: rule.into(),
                confidence,
            })
            .collect(),
        event: None,
        traits: Default::default(),
        consent: Default::default(),
    }
}

/// Applies `signals` in one transaction and commits it, as one stage batch does.
pub fn apply(
    store: &dyn GraphStore,
    resolver: &Resolver,
    signals: &[Signal],
) -> cdp_resolver::BatchOutput {
    let mut txn = Txn::begin(store).unwrap();
    let mut batch = Batch::default();
    for s in signals {
        resolver.apply(&mut txn, s.clone(), &mut batch).unwrap();
    }
    let out = resolver.finish(&mut txn, batch).unwrap();
    txn.commit().unwrap();
    out
}

/// A store whose `n`th write fails (as a full disk or a killed write would), once.
pub struct FailingStore {
    pub inner: MemStore,
    writes: AtomicUsize,
    fail_at: usize,
}

impl FailingStore {
    /// Fails write `fail_at` (0: the first); `None`, none.
    pub fn new(fail_at: Option<usize>) -> Self {
        Self {
            inner: MemStore::default(),
            writes: AtomicUsize::new(0),
            fail_at: fail_at.unwrap_or(usize::MAX),
        }
    }
}

impl GraphStore for FailingStore {
    fn get(&self, cf: Cf, key: &[u8]) -> cdp_resolver::Result<Option<Vec<u8>>> {
        self.inner.get(cf, key)
    }

    fn write(&self, ops: Vec<Op>) -> cdp_resolver::Result<()> {
        if self.writes.fetch_add(1, Ordering::SeqCst) == self.fail_at {
            return Err(ResolverError::Storage("injected write failure".into()));
        }
        self.inner.write(ops)
    }

    fn scan_prefix(&self, cf: Cf, prefix: &[u8]) -> cdp_resolver::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner.scan_prefix(cf, prefix)
    }
}
