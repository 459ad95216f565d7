//! Recomputing a partition from the link log: an in-memory union-find (union by size, path
//! halving) that replays links in log order under a merge policy, deciding each one afresh.
//! `unmerge` runs it over one component, `rebuild` over a whole tenant.

use crate::component::NodeLink;
use crate::hub::{self, Reaches};
use crate::link::LinkDecision;
use crate::policy::{MergePolicy, Refusal, Tally};
use crate::txn::NodeId;
use cdp_proto::Identifier;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The sets the links form and what the policy decides about each link now.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Sets of nodes, each sorted, ordered by their smallest node.
    pub sets: Vec<BTreeSet<NodeId>>,
    /// Link id -> decision, for every link replayed.
    pub decisions: BTreeMap<u64, LinkDecision>,
    /// When each hub-limited node's links reached other profiles (see [`crate::hub`]).
    pub reached: HashMap<NodeId, Reaches>,
    /// Links that joined two sets (accepted links whose ends were already together are not).
    pub joined: BTreeSet<u64>,
}

struct UnionFind {
    parent: HashMap<NodeId, NodeId>,
    tally: HashMap<NodeId, Tally>,
}

impl UnionFind {
    fn find(&mut self, mut n: NodeId) -> NodeId {
        while let Some(&p) = self.parent.get(&n) {
            if p == n {
                break;
            }
            let grand = self.parent.get(&p).copied().unwrap_or(p);
            self.parent.insert(n, grand);
            n = p;
        }
        n
    }
}

/// Replays `links` (in log order) over `nodes` under `policy`. Links with an end outside `nodes`
/// and links an operator removed are left out.
pub fn replay(
    policy: &MergePolicy,
    nodes: &BTreeMap<NodeId, Identifier>,
    links: &[NodeLink],
) -> Replayed {
    let mut uf = UnionFind {
        parent: nodes.keys().map(|n| (*n, *n)).collect(),
        tally: nodes
            .iter()
            .map(|(n, id)| {
                let mut t = Tally::default();
                t.add(&id.kind);
                (*n, t)
            })
            .collect(),
    };
    let mut ordered: Vec<&NodeLink> = links.iter().collect();
    ordered.sort_by_key(|l| l.link.id);
    let mut decisions = BTreeMap::new();
    let mut joined = BTreeSet::new();
    // When each node's links reached other profiles, for hub detection (as online).
    let mut reached: HashMap<NodeId, Reaches> = HashMap::new();
    let mut reach = |node: NodeId, at| -> Result<(), Refusal> {
        let kind = &nodes[&node].kind;
        if policy.hub_limit(kind).is_none() {
            return Ok(());
        }
        hub::observe(policy, kind, reached.entry(node).or_default(), at, true)
    };
    for l in ordered {
        if matches!(l.link.decision, LinkDecision::Removed(_)) {
            continue;
        }
        let strong = policy.merges(&l.link.rule, l.link.confidence);
        match (nodes.contains_key(&l.a), nodes.contains_key(&l.b)) {
            (true, true) => {}
            // A link to another component reached a profile other than this one.
            (true, false) if strong => {
                let _ = reach(l.a, l.link.observed_at);
                continue;
            }
            (false, true) if strong => {
                let _ = reach(l.b, l.link.observed_at);
                continue;
            }
            _ => continue,
        }
        let decision = if !strong {
            LinkDecision::Candidate
        } else {
            let (ra, rb) = (uf.find(l.a), uf.find(l.b));
            if ra == rb {
                LinkDecision::Accepted
            } else if let Err(refusal) =
                reach(l.a, l.link.observed_at).and(reach(l.b, l.link.observed_at))
            {
                LinkDecision::Refused(refusal.code())
            } else {
                match policy.check_tallies(&uf.tally[&ra], &uf.tally[&rb]) {
                    Err(refusal) => LinkDecision::Refused(refusal.code()),
                    Ok(()) => {
                        let (big, small) = if uf.tally[&ra].total >= uf.tally[&rb].total {
                            (ra, rb)
                        } else {
                            (rb, ra)
                        };
                        let moved = uf.tally.remove(&small).unwrap_or_default();
                        uf.tally.entry(big).or_default().absorb(&moved);
                        uf.parent.insert(small, big);
                        joined.insert(l.link.id);
                        LinkDecision::Accepted
                    }
                }
            }
        };
        decisions.insert(l.link.id, decision);
    }
    let mut by_root: BTreeMap<NodeId, BTreeSet<NodeId>> = BTreeMap::new();
    for n in nodes.keys() {
        let root = uf.find(*n);
        by_root.entry(root).or_default().insert(*n);
    }
    let mut sets: Vec<BTreeSet<NodeId>> = by_root.into_values().collect();
    sets.sort_by_key(|s| s.first().copied());
    Replayed {
        sets,
        decisions,
        reached,
        joined,
    }
}
