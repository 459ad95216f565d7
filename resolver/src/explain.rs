//! `explain`: why a profile is what it is. For the component of an identifier or canonical id
//! it lists the identifiers, every link that touches them with its rule, confidence, when and by
//! which signal it was observed and what the policy decided (accepted, refused with the reason,
//! candidate below threshold, removed by an operator), and the merge history. Probabilistic
//! links carry their `evidence`: the match probability and each field's level and weight.
//! Read-only.

use crate::command::Target;
use crate::component::{self, NodeLink};
use crate::graph::resolve_alias;
use crate::link::{Link, LinkDecision};
use crate::store::GraphStore;
use crate::txn::Txn;
use crate::Result;
use cdp_proto::{Identifier, MergeRecord};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExplainedLink {
    #[serde(flatten)]
    pub link: Link,
    /// The live profile of the end outside this component, for links that cross to another.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub other_profile: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    pub tenant: String,
    pub canonical_id: String,
    pub version: u64,
    pub aliases: Vec<String>,
    pub identifiers: Vec<Identifier>,
    /// Links that joined (or were within) this profile.
    pub links: Vec<ExplainedLink>,
    /// Links the merge policy refused, with the reason in `reason`.
    pub refused: Vec<ExplainedLink>,
    /// Links below their rule's merge threshold.
    pub candidates: Vec<ExplainedLink>,
    /// Links an operator took out with `unmerge`.
    pub removed: Vec<ExplainedLink>,
    pub merges: Vec<MergeRecord>,
}

/// The explanation of the profile `target` names in `tenant`, if one does.
pub fn explain(
    store: &dyn GraphStore,
    tenant: &str,
    target: &Target,
) -> Result<Option<Explanation>> {
    // Never committed: a read, even on a read-only store.
    let mut txn = Txn::begin(store)?;
    let Some(root) = component::root_of(&mut txn, tenant, target)? else {
        return Ok(None);
    };
    let Some(c) = component::load(&mut txn, tenant, root)? else {
        return Ok(None);
    };
    let mut e = Explanation {
        tenant: tenant.to_string(),
        canonical_id: c.profile.canonical_id.clone(),
        version: c.profile.version,
        aliases: c.profile.aliases.clone(),
        identifiers: c.profile.identifiers.clone(),
        links: Vec::new(),
        refused: Vec::new(),
        candidates: Vec::new(),
        removed: Vec::new(),
        merges: c.profile.merge_history.clone(),
    };
    for NodeLink { link, a, b } in c.links(&mut txn)? {
        let outside = [a, b].into_iter().find(|n| !c.nodes.contains_key(n));
        let other_profile = match outside {
            Some(n) => {
                let root = txn.find(n)?;
                match txn.profile(root)? {
                    Some(p) => resolve_alias(&mut txn, tenant, &p.canonical_id)?,
                    None => None,
                }
            }
            None => None,
        };
        let list = match link.decision {
            LinkDecision::Accepted => &mut e.links,
            LinkDecision::Refused(_) => &mut e.refused,
            LinkDecision::Candidate => &mut e.candidates,
            LinkDecision::Removed(_) => &mut e.removed,
        };
        list.push(ExplainedLink {
            link,
            other_profile,
        });
    }
    Ok(Some(e))
}
