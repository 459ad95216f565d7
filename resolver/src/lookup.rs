//! Reading profiles: by any identifier or by canonical id (retired ids resolve to the survivor).
//! A lookup is a few point reads straight from the store: it writes nothing, so it needs none
//! of a transaction's cache, counters or path compression, and the profile API serves it per
//! request. The reads are not one snapshot: a merge the resolver commits between two of them
//! can leave the walk at a root that no longer holds a profile, and the lookup then reads again.

use crate::graph::resolve_alias;
use crate::store::{Cf, GraphStore};
use crate::txn::{decode_u64, id_key, tenant_key, NodeId, Txn};
use crate::{ResolverError, Result};
use cdp_proto::{Identifier, Profile};

/// Reads of one lookup before it gives up on a graph that keeps moving under it: each retry
/// needs another merge committed within microseconds, so a few are plenty.
const ATTEMPTS: usize = 4;

/// Longest parent chain a walk follows: the resolver compresses paths on every write, so a
/// real chain is a few hops; a longer one is a cycle, i.e. a corrupt store.
const MAX_HOPS: usize = 4096;

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
    let key = id_key(tenant, id);
    for _ in 0..ATTEMPTS {
        let Some(node) = read_u64(store, Cf::Ids, &key)? else {
            return Ok(None);
        };
        if let Some(p) = profile_at(store, root_of(store, node)?)? {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

pub fn profile_by_canonical(
    store: &dyn GraphStore,
    tenant: &str,
    canonical_id: &str,
) -> Result<Option<Profile>> {
    for _ in 0..ATTEMPTS {
        let Some(root) = read_u64(store, Cf::Canon, &tenant_key(tenant, canonical_id))? else {
            return retired(store, tenant, canonical_id);
        };
        if let Some(p) = profile_at(store, root)? {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// The survivor of a retired canonical id (rarely asked: aliases are followed in a transaction).
fn retired(store: &dyn GraphStore, tenant: &str, canonical_id: &str) -> Result<Option<Profile>> {
    let mut txn = Txn::begin(store)?;
    let Some(live) = resolve_alias(&mut txn, tenant, canonical_id)? else {
        return Ok(None);
    };
    match txn.root_of_canonical(tenant, &live)? {
        Some(root) => txn.profile(root),
        None => Ok(None),
    }
}

fn read_u64(store: &dyn GraphStore, cf: Cf, key: &[u8]) -> Result<Option<u64>> {
    store.get(cf, key)?.map(|b| decode_u64(cf, &b)).transpose()
}

/// The root of `node`'s set (roots have no parent entry).
fn root_of(store: &dyn GraphStore, node: NodeId) -> Result<NodeId> {
    let mut at = node;
    for _ in 0..MAX_HOPS {
        match read_u64(store, Cf::Parent, &at.to_be_bytes())? {
            Some(parent) => at = parent,
            None => return Ok(at),
        }
    }
    Err(ResolverError::Corrupt {
        cf: Cf::Parent.name(),
        detail: format!("no root within {MAX_HOPS} hops of node {node}"),
    })
}

fn profile_at(store: &dyn GraphStore, root: NodeId) -> Result<Option<Profile>> {
    store
        .get(Cf::Profiles, &root.to_be_bytes())?
        .map(|b| {
            crate::codec::decode_profile(&b).map_err(|e| ResolverError::Corrupt {
                cf: Cf::Profiles.name(),
                detail: e.to_string(),
            })
        })
        .transpose()
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
