//! `rebuild`: recomputes a tenant's whole partition from the link log under the current policy
//! (which may have changed since the links were decided) and reports the difference: profiles
//! that would split, profiles that would merge, links whose decision changes. With `apply` the
//! new partition is written in one atomic write, with its change records in the outbox. Offline:
//! it holds the state for its whole run. It keeps every node and link of the tenant in memory.
//!
//! Probabilistic links are re-scored under the configured model first: each keeps the
//! comparison level of every field it compared, so a new model (new m/u, a new prior) or new
//! thresholds are previewed exactly. What re-scoring cannot change is which pairs were compared
//! and at which levels: a change of fields, Jaro-Winkler thresholds or blocking needs the
//! input replayed.

use crate::component::{self, NodeLink};
use crate::fold::merge_into;
use crate::graph::Resolver;
use crate::link::{Link, LinkDecision};
use crate::partition;
use crate::store::{Cf, GraphStore};
use crate::txn::{decode_json, NodeId, NodeRecord, Txn};
use crate::unmerge::materialize;
use crate::{ResolverConfig, ResolverError, Result};
use cdp_bus::OutRecord;
use cdp_proto::{
    Identifier, IdentityChange, IdentityChangeKind, MergeRecord, ProfileUpdate, Timestamp,
};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The rule name merge history and change records carry for merges a rebuild makes.
pub const REBUILD_RULE: &str = "rebuild";

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SplitExample {
    pub canonical_id: String,
    /// The identifiers of each part the profile would become.
    pub into: Vec<Vec<Identifier>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MergeExample {
    /// The profiles that would become one.
    pub canonical_ids: Vec<String>,
    pub identifiers: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RebuildReport {
    pub tenant: String,
    pub identifiers: u64,
    pub links: u64,
    pub profiles_before: u64,
    pub profiles_after: u64,
    /// Profiles that become more than one.
    pub splits: u64,
    /// Profiles of the new partition that join more than one current profile.
    pub merges: u64,
    /// Links whose decision changes (accepted, refused, candidate).
    pub links_changed: u64,
    /// Probabilistic links whose probability changes under the configured model.
    pub links_rescored: u64,
    pub split_examples: Vec<SplitExample>,
    pub merge_examples: Vec<MergeExample>,
    /// Whether the new partition was written.
    pub applied: bool,
}

pub struct RebuildOptions {
    pub tenant: String,
    pub apply: bool,
    /// Examples of each kind of difference in the report.
    pub examples: usize,
    /// Time recorded on the changes an applied rebuild makes.
    pub at: Timestamp,
}

pub fn rebuild(
    store: &dyn GraphStore,
    resolver: &Resolver,
    config: &ResolverConfig,
    options: &RebuildOptions,
) -> Result<RebuildReport> {
    let tenant = options.tenant.as_str();
    let mut nodes: BTreeMap<NodeId, Identifier> = BTreeMap::new();
    let mut node_of: HashMap<Identifier, NodeId> = HashMap::new();
    for (k, v) in store.scan_prefix(Cf::Nodes, b"")? {
        let record: NodeRecord = crate::txn::decode_node(&v)?;
        if record.tenant != tenant {
            continue;
        }
        let node = crate::txn::decode_u64(Cf::Nodes, &k)?;
        node_of.insert(record.identifier.clone(), node);
        nodes.insert(node, record.identifier);
    }
    let mut links = Vec::new();
    for (_, v) in store.scan_prefix(Cf::Links, b"")? {
        let link: Link = decode_json(Cf::Links, &v)?;
        if link.tenant != tenant {
            continue;
        }
        let (Some(&a), Some(&b)) = (node_of.get(&link.a), node_of.get(&link.b)) else {
            return Err(ResolverError::Corrupt {
                cf: "links",
                detail: format!("link {} has an end without a node", link.id),
            });
        };
        links.push(NodeLink { link, a, b });
    }

    let model = config.matching.model()?;
    let mut rescored: BTreeSet<u64> = BTreeSet::new();
    for l in &mut links {
        let Some(evidence) = &l.link.evidence else {
            continue;
        };
        let levels: Vec<_> = evidence
            .contributions
            .iter()
            .map(|c| (c.field, c.level))
            .collect();
        let score = model.score(&levels);
        if score.differs(evidence) {
            rescored.insert(l.link.id);
            l.link.confidence = score.probability;
            l.link.evidence = Some(score);
        }
    }
    let policy = crate::policy::MergePolicy::new(crate::matching::policy_with_threshold(
        resolver.policy().config().clone(),
        &config.matching,
    ));

    let mut txn = Txn::begin(store)?;
    let mut current: BTreeMap<NodeId, BTreeSet<NodeId>> = BTreeMap::new();
    let mut root_of: HashMap<NodeId, NodeId> = HashMap::new();
    for n in nodes.keys() {
        let root = txn.find(*n)?;
        current.entry(root).or_default().insert(*n);
        root_of.insert(*n, root);
    }
    let replayed = partition::replay(&policy, &nodes, &links);
    let set_of: HashMap<NodeId, usize> = replayed
        .sets
        .iter()
        .enumerate()
        .flat_map(|(i, set)| set.iter().map(move |n| (*n, i)))
        .collect();
    let mut decisions_changed = 0u64;
    let changed_links: Vec<Link> = links
        .iter()
        .filter_map(|l| {
            let d = replayed.decisions.get(&l.link.id)?;
            // A link that joins nothing, between ends that are together anyway, is accepted or
            // refused depending only on whether it was seen again after its ends joined.
            let idle =
                set_of.get(&l.a) == set_of.get(&l.b) && !replayed.joined.contains(&l.link.id);
            let equivalent = idle
                && matches!(
                    (d, &l.link.decision),
                    (LinkDecision::Accepted, LinkDecision::Refused(_))
                        | (LinkDecision::Refused(_), LinkDecision::Accepted)
                );
            // A refusal's reason is that of the link's latest sighting; only the decision counts.
            let same = std::mem::discriminant(d) == std::mem::discriminant(&l.link.decision);
            let changed = !same && !equivalent;
            decisions_changed += u64::from(changed);
            (changed || rescored.contains(&l.link.id)).then(|| Link {
                decision: d.clone(),
                ..l.link.clone()
            })
        })
        .collect();

    // Old roots each new set touches, and new sets each old root is spread over.
    let mut olds_of_set: Vec<BTreeSet<NodeId>> = Vec::with_capacity(replayed.sets.len());
    let mut sets_of_old: BTreeMap<NodeId, BTreeSet<usize>> = BTreeMap::new();
    for (i, set) in replayed.sets.iter().enumerate() {
        let olds: BTreeSet<NodeId> = set.iter().map(|n| root_of[n]).collect();
        for o in &olds {
            sets_of_old.entry(*o).or_default().insert(i);
        }
        olds_of_set.push(olds);
    }
    let mut report = RebuildReport {
        tenant: tenant.to_string(),
        identifiers: nodes.len() as u64,
        links: links.len() as u64,
        profiles_before: current.len() as u64,
        profiles_after: replayed.sets.len() as u64,
        splits: 0,
        merges: 0,
        links_changed: decisions_changed,
        links_rescored: rescored.len() as u64,
        split_examples: Vec::new(),
        merge_examples: Vec::new(),
        applied: false,
    };
    let canonical = |txn: &mut Txn, root: NodeId| -> Result<String> {
        Ok(txn
            .profile(root)?
            .map(|p| p.canonical_id)
            .unwrap_or_default())
    };
    for (old, sets) in &sets_of_old {
        if sets.len() > 1 {
            report.splits += 1;
            if report.split_examples.len() < options.examples {
                report.split_examples.push(SplitExample {
                    canonical_id: canonical(&mut txn, *old)?,
                    into: sets
                        .iter()
                        .map(|i| {
                            replayed.sets[*i]
                                .intersection(&current[old])
                                .map(|n| nodes[n].clone())
                                .collect()
                        })
                        .collect(),
                });
            }
        }
    }
    for (i, olds) in olds_of_set.iter().enumerate() {
        if olds.len() > 1 {
            report.merges += 1;
            if report.merge_examples.len() < options.examples {
                let mut ids = Vec::new();
                for o in olds {
                    ids.push(canonical(&mut txn, *o)?);
                }
                report.merge_examples.push(MergeExample {
                    canonical_ids: ids,
                    identifiers: replayed.sets[i].len(),
                });
            }
        }
    }
    if !options.apply {
        return Ok(report);
    }

    for link in changed_links {
        txn.update_link(link);
    }
    // Hub state as the replay found it, so decisions after the rebuild continue from it.
    for node in nodes.keys() {
        let reaches = replayed.reached.get(node).cloned().unwrap_or_default();
        if txn.hub_reaches(*node)? != reaches {
            txn.set_hub_reaches(*node, (!reaches.is_empty()).then_some(reaches));
        }
    }
    let mut changes: Vec<IdentityChange> = Vec::new();
    let mut republish: BTreeSet<String> = BTreeSet::new();
    // First every profile that splits becomes its pieces (its intersections with new sets)...
    for (old, sets) in &sets_of_old {
        if sets.len() < 2 {
            continue;
        }
        let Some(comp) = component::load(&mut txn, tenant, *old)? else {
            continue;
        };
        let pieces: Vec<BTreeSet<NodeId>> = sets
            .iter()
            .map(|i| {
                replayed.sets[*i]
                    .intersection(&current[old])
                    .copied()
                    .collect()
            })
            .collect();
        let mut sorted = pieces;
        sorted.sort_by_key(|s| s.first().copied());
        let done = materialize(&mut txn, &comp, &sorted, None, REBUILD_RULE, options.at)?;
        republish.extend(done.profiles);
        changes.extend(done.split);
    }
    // ...then every new set spread over several profiles joins them, the oldest surviving.
    for (i, olds) in olds_of_set.iter().enumerate() {
        if olds.len() < 2 {
            continue;
        }
        let set = &replayed.sets[i];
        let mut roots = BTreeSet::new();
        for n in set {
            roots.insert(txn.find(*n)?);
        }
        let mut parts = Vec::new();
        for r in &roots {
            if let Some(p) = txn.profile(*r)? {
                parts.push((*r, p));
            }
        }
        parts.sort_by(|(_, a), (_, b)| {
            (a.created_at, &a.canonical_id).cmp(&(b.created_at, &b.canonical_id))
        });
        let mut parts = parts.into_iter();
        let Some((first_root, mut survivor)) = parts.next() else {
            continue;
        };
        let mut retired = Vec::new();
        let mut version = survivor.version;
        txn.put_profile(first_root, None);
        for (root, loser) in parts {
            txn.put_profile(root, None);
            txn.set_canonical(tenant, &loser.canonical_id, None);
            txn.set_alias(
                tenant,
                &loser.canonical_id,
                Some(survivor.canonical_id.clone()),
            );
            for alias in &loser.aliases {
                txn.set_alias(tenant, alias, Some(survivor.canonical_id.clone()));
            }
            version = version.max(loser.version);
            retired.push(loser.canonical_id.clone());
            republish.remove(&loser.canonical_id);
            let from = loser.canonical_id.clone();
            merge_into(&mut survivor, loser);
            survivor.aliases.push(from.clone());
            survivor.merge_history.push(MergeRecord {
                merged_at: options.at,
                rule: REBUILD_RULE.into(),
                confidence: 1.0,
                from,
                into: survivor.canonical_id.clone(),
            });
        }
        survivor.version = version + 1;
        let root = *set.first().expect("partition sets are not empty");
        for n in set {
            txn.set_parent(*n, (*n != root).then_some(root));
        }
        txn.set_canonical(tenant, &survivor.canonical_id, Some(root));
        changes.push(IdentityChange {
            tenant: tenant.to_string(),
            kind: IdentityChangeKind::Merged,
            canonical_id: survivor.canonical_id.clone(),
            retired,
            created: Vec::new(),
            rule: Some(REBUILD_RULE.into()),
            confidence: None,
            version: survivor.version,
            at: options.at,
        });
        republish.insert(survivor.canonical_id.clone());
        txn.put_profile(root, Some(survivor));
    }
    for change in &changes {
        let value = serde_json::to_vec(change).expect("IdentityChange serialises");
        txn.push_outbox(
            OutRecord::new(&config.changes_topic, change.canonical_id.as_bytes(), value).to_bytes(),
        );
    }
    for id in &republish {
        let Some(root) = txn.root_of_canonical(tenant, id)? else {
            continue;
        };
        let Some(profile) = txn.profile(root)? else {
            continue;
        };
        let update = ProfileUpdate {
            version: profile.version,
            profile,
            cause: Some(REBUILD_RULE.into()),
            received_at: Some(options.at),
        };
        let value = serde_json::to_vec(&update).expect("ProfileUpdate serialises");
        txn.push_outbox(OutRecord::new(&config.profiles_topic, id.as_bytes(), value).to_bytes());
    }
    txn.commit()?;
    report.applied = true;
    Ok(report)
}
