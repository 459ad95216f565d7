//! Reading profiles: by any identifier or by canonical id (retired ids resolve to the survivor).
//! Reads run in a transaction that is never committed, so they change nothing.

use crate::graph::resolve_alias;
use crate::store::GraphStore;
use crate::txn::Txn;
use crate::Result;
use cdp_proto::{Identifier, Profile};

/// The live canonical id of the profile that holds `id`.
pub fn canonical_of(
    store: &dyn GraphStore,
    tenant: &str,
    id: &Identifier,
) -> Result<Option<String>> {
    Ok(profile_by_identifier(store, tenant, id)?.map(|p| p.canonical_id))
}

pub fn profile_by_identifier(
    store: &dyn GraphStore,
    tenant: &str,
    id: &Identifier,
) -> Result<Option<Profile>> {
    let mut txn = Txn::begin(store)?;
    let Some(node) = txn.node_of(tenant, id)? else {
        return Ok(None);
    };
    let root = txn.find(node)?;
    txn.profile(root)
}

pub fn profile_by_canonical(
    store: &dyn GraphStore,
    tenant: &str,
    canonical_id: &str,
) -> Result<Option<Profile>> {
    let mut txn = Txn::begin(store)?;
    let Some(live) = resolve_alias(&mut txn, tenant, canonical_id)? else {
        return Ok(None);
    };
    match txn.root_of_canonical(tenant, &live)? {
        Some(root) => txn.profile(root),
        None => Ok(None),
    }
}

/// Every live profile of `tenant`, in canonical-id order.
pub fn profiles(store: &dyn GraphStore, tenant: &str) -> Result<Vec<Profile>> {
    let mut prefix = tenant.as_bytes().to_vec();
    prefix.push(0);
    let mut txn = Txn::begin(store)?;
    let mut out = Vec::new();
    for (_, root) in store.scan_prefix(crate::store::Cf::Canon, &prefix)? {
        let root = crate::txn::decode_u64(crate::store::Cf::Canon, &root)?;
        if let Some(p) = txn.profile(root)? {
            out.push(p);
        }
    }
    Ok(out)
}

/// Number of live profiles across all tenants.
pub fn count_profiles(store: &dyn GraphStore) -> Result<u64> {
    Ok(store.scan_prefix(crate::store::Cf::Canon, b"")?.len() as u64)
}
