//! Matching one arriving record: file it under its blocking keys, compare it with the records
//! of the nodes filed under the same keys, and score each. The cost is bounded by
//! `max_block_candidates`, never by the number of profiles: each key is one read that carries
//! the records of its newest nodes, at most that many of them are compared per key, and only
//! the few pairs likely enough to become links look anything else up (their profile roots and
//! identifiers).

use super::blocking::{self, Filed};
use super::compare::compare_records;
use super::field::{Field, Record};
use super::model::Score;
use super::Matcher;
use crate::overlay::ById;
use crate::txn::{NodeId, Txn};
use crate::Result;
use cdp_proto::Identifier;
use std::collections::HashSet;

/// A pair worth a link: the candidate's node and identifier, and the score.
#[derive(Debug, Clone)]
pub struct Proposal {
    pub node: NodeId,
    pub identifier: Identifier,
    pub score: Score,
}

/// What matching one record did, for counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Pairs compared.
    pub compared: u64,
    /// Keys that became oversized on this record.
    pub blocks_overflowed: u64,
    /// Keys skipped because they were oversized.
    pub blocks_skipped: u64,
    /// Keys that listed more nodes than `max_block_candidates`: passed over when the record
    /// had a more selective key, else only their newest nodes were compared.
    pub blocks_crowded: u64,
}

/// Files the record of `node` (with `record`'s fields, in `tenant`) and returns the pairs at or
/// above the candidate threshold, most probable first, at most one per other profile (its
/// most probable node); nodes of the profile holding `node` are not proposed.
///
/// The node's record is the one it was filed with before, updated by `record`'s values and
/// limited to the `fields` compared now; a node whose record changes leaves the keys of the
/// old one. It is compared with the record of each candidate node: every node filed under
/// its keys that list at most `max_block_candidates` others; of a key that lists more, none
/// when one of those selective keys exists, else its newest `max_block_candidates`.
pub fn propose(
    matcher: &Matcher,
    txn: &mut Txn,
    tenant: &str,
    node: NodeId,
    record: &Record,
    fields: &[Field],
    stats: &mut Stats,
) -> Result<Vec<Proposal>> {
    let cap = matcher.config.max_block_size;
    let previous = txn.match_record(node)?.cloned();
    let current = match &previous {
        Some(previous) => previous.updated(record, fields),
        None => record.clone(),
    };
    let keys = blocking::keys(tenant, &current);
    if previous.as_ref() != Some(&current) {
        if let Some(previous) = &previous {
            for old in blocking::keys(tenant, previous) {
                if !keys.contains(&old) {
                    txn.with_block(&old, |block| ((), block.remove(node)))?;
                }
            }
        }
        txn.set_match_record(node, Some(current.clone()));
    }

    // File the node under each key; note which keys list more than `limit` other nodes.
    let limit = matcher.config.max_block_candidates;
    // The newest `limit` others of a key, and the node itself, keep their records.
    let keep = limit + 1;
    let mut crowded: Vec<Option<bool>> = Vec::with_capacity(keys.len());
    for key in &keys {
        let (filed, others) = txn.with_block(key, |block| {
            let filed = block.file(node, &current, cap, keep);
            let others = block.entries().len().saturating_sub(1);
            (
                (filed, others),
                !matches!(filed, Filed::AlreadyThere | Filed::Oversized),
            )
        })?;
        let open = match filed {
            Filed::Overflowed => {
                stats.blocks_overflowed += 1;
                false
            }
            Filed::Oversized => {
                stats.blocks_skipped += 1;
                false
            }
            Filed::Added | Filed::AlreadyThere | Filed::Updated => true,
        };
        // An oversized key yields nothing from now on, this record included, so the result
        // does not depend on which record came last.
        crowded.push(open.then_some(others > limit));
    }
    // A key listing more than `limit` others (a common name, a common birth date) is passed
    // over when the record has a more selective key: a duplicate agrees with it on more than
    // a common name, and a key made of those other fields lists it, so only pairs whose
    // evidence is mostly that common name are not compared. A record with no selective key
    // is compared with the newest of each.
    let selective = crowded.contains(&Some(false));
    let thresholds = matcher.thresholds();
    let mut seen: HashSet<NodeId, ById> = HashSet::default();
    let mut likely: Vec<(NodeId, Score)> = Vec::new();
    // Candidates filed before the newest were kept: their records are read by node.
    let mut unkept: Vec<NodeId> = Vec::new();
    let mut compare = |candidate: NodeId, theirs: &Record, stats: &mut Stats| {
        stats.compared += 1;
        let levels = compare_records(&current, theirs, thresholds);
        if matcher.weights.probability(&levels) >= matcher.config.candidate_threshold {
            likely.push((candidate, matcher.model.score(&levels)));
        }
    };
    for (key, crowded) in keys.iter().zip(crowded) {
        match crowded {
            None => continue,
            Some(true) => {
                stats.blocks_crowded += 1;
                if selective {
                    continue;
                }
            }
            Some(false) => {}
        }
        // Filed under above, so the transaction holds the block.
        let Some(block) = txn.block(key) else {
            continue;
        };
        for e in block.newest(node, limit) {
            if !seen.insert(e.node) {
                continue;
            }
            match &e.record {
                Some(theirs) => compare(e.node, theirs, stats),
                None => unkept.push(e.node),
            }
        }
    }
    for candidate in unkept {
        // `forget` unfiles the nodes it erases with their records: a node listed without one
        // is not compared.
        if let Some(theirs) = txn.match_record(candidate)? {
            compare(candidate, theirs, stats);
        }
    }

    likely.sort_by(|a, b| {
        b.1.probability
            .total_cmp(&a.1.probability)
            .then(a.0.cmp(&b.0))
    });
    let own_root = txn.find(node)?;
    let mut roots: HashSet<NodeId, ById> = HashSet::default();
    let mut out = Vec::new();
    for (candidate, score) in likely {
        let root = txn.find(candidate)?;
        if root == own_root || !roots.insert(root) {
            continue;
        }
        // `forget` unfiles what it erases; a node without a record is skipped all the same.
        let Some(other) = txn.node(candidate)? else {
            continue;
        };
        out.push(Proposal {
            node: candidate,
            identifier: other.identifier,
            score,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matching::MatchingConfig;
    use crate::store::MemStore;
    use cdp_proto::IdentifierKind;

    fn person(first: &str, last: &str, birth: &str, postcode: &str) -> Record {
        [
            (Field::FirstName, first),
            (Field::LastName, last),
            (Field::BirthDate, birth),
            (Field::PostalCode, postcode),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn crowded_keys_give_way_to_selective_ones_else_yield_their_newest() {
        let store = MemStore::default();
        let config = MatchingConfig {
            enabled: true,
            max_block_candidates: 2,
            ..MatchingConfig::default()
        };
        let fields = config.fields.clone();
        let matcher = Matcher::new(config).unwrap();
        let mut txn = Txn::begin(&store).unwrap();
        let mut file = |n: usize, record: &Record| {
            let id = Identifier::new(IdentifierKind::CrmId, format!("sf:{n}"));
            let node = txn.create_node("acme", &id);
            let mut stats = Stats::default();
            let proposed = propose(
                &matcher, &mut txn, "acme", node, record, &fields, &mut stats,
            )
            .unwrap()
            .into_iter()
            .map(|p| p.identifier.value)
            .collect::<Vec<_>>();
            (stats.compared, stats.blocks_crowded, proposed)
        };
        // Five John Smiths, otherwise apart: they share only the two name keys, which are
        // crowded (more than 2 others) from the fourth on.
        let postcodes = ["2000", "3517", "4862", "5193", "6748"];
        let mut seen = Vec::new();
        for (n, postcode) in postcodes.iter().enumerate() {
            let birth = format!("19{}-01-0{}", 50 + n, n + 1);
            let (compared, crowded, proposed) = file(n, &person("john", "smith", &birth, postcode));
            assert!(proposed.is_empty(), "strangers with one name");
            seen.push((compared, crowded));
        }
        assert_eq!(seen, [(0, 0), (1, 0), (2, 0), (0, 2), (0, 2)]);
        // The first John Smith again, under another record id: the crowded name keys are
        // passed over, and his birth date and postcode find him.
        let (compared, _, proposed) = file(5, &person("john", "smith", "1950-01-01", "2000"));
        assert_eq!((compared, proposed), (1, vec!["sf:0".to_string()]));
        // A John Smith with nothing but his names has no selective key: the newest two of each
        // name key (the same two nodes) are compared.
        let names_only: Record = [(Field::FirstName, "john"), (Field::LastName, "smith")]
            .into_iter()
            .collect();
        let (compared, crowded, _) = file(6, &names_only);
        assert_eq!((compared, crowded), (2, 2));
    }
}
