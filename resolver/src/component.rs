//! A component of the graph: one profile's root, its nodes and every link that touches them.
//! Forget, explain and unmerge all start by loading one.

use crate::command::Target;
use crate::graph::resolve_alias;
use crate::link::Link;
use crate::txn::{NodeId, Txn};
use crate::{ResolverError, Result};
use cdp_proto::{Identifier, Profile};
use std::collections::BTreeMap;

pub struct Component {
    pub tenant: String,
    pub root: NodeId,
    pub profile: Profile,
    /// Every node of the profile, with its identifier.
    pub nodes: BTreeMap<NodeId, Identifier>,
}

/// A logged link with the nodes of its two ends.
pub struct NodeLink {
    pub link: Link,
    pub a: NodeId,
    pub b: NodeId,
}

/// The root of the profile `target` names, if any.
pub fn root_of(txn: &mut Txn, tenant: &str, target: &Target) -> Result<Option<NodeId>> {
    match target {
        Target::Identifier(id) => match txn.node_of(tenant, id)? {
            Some(node) => Ok(Some(txn.find(node)?)),
            None => Ok(None),
        },
        Target::CanonicalId(cid) => match resolve_alias(txn, tenant, cid)? {
            Some(live) => txn.root_of_canonical(tenant, &live),
            None => Ok(None),
        },
    }
}

/// The component rooted at `root`.
pub fn load(txn: &mut Txn, tenant: &str, root: NodeId) -> Result<Option<Component>> {
    let Some(profile) = txn.profile(root)? else {
        return Ok(None);
    };
    let mut nodes = BTreeMap::new();
    for id in &profile.identifiers {
        let node = txn
            .node_of(tenant, id)?
            .ok_or_else(|| ResolverError::Corrupt {
                cf: "ids",
                detail: format!(
                    "profile {} lists an identifier without a node",
                    profile.canonical_id
                ),
            })?;
        nodes.insert(node, id.clone());
    }
    Ok(Some(Component {
        tenant: tenant.to_string(),
        root,
        profile,
        nodes,
    }))
}

impl Component {
    /// Every committed link with at least one end in this component, in log order.
    pub fn links(&self, txn: &mut Txn) -> Result<Vec<NodeLink>> {
        let mut ids: Vec<u64> = Vec::new();
        for node in self.nodes.keys() {
            ids.extend(txn.committed_links_of(*node)?);
        }
        ids.sort_unstable();
        ids.dedup();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(link) = txn.link(id)? else {
                continue;
            };
            let (Some(a), Some(b)) = (
                txn.node_of(&self.tenant, &link.a)?,
                txn.node_of(&self.tenant, &link.b)?,
            ) else {
                return Err(ResolverError::Corrupt {
                    cf: "links",
                    detail: format!("link {id} has an end without a node"),
                });
            };
            out.push(NodeLink { link, a, b });
        }
        Ok(out)
    }
}
