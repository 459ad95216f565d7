//! Shared by the resolver's integration tests.

use cdp_proto::Identifier;
use cdp_resolver::{lookup, GraphStore};
use std::collections::{BTreeMap, BTreeSet};

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
