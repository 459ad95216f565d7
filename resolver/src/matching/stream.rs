//! Matching one arriving record: file it under its blocking keys, compare it with the records
//! filed under the same keys, and score each. The cost is bounded by the blocks' capacity
//! (`max_block_size` per key, a few keys per record), never by the number of profiles: each
//! block is one read that carries its candidates' records, and only the few pairs likely
//! enough to become links look anything else up (their profile roots and identifiers).

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
}

/// Files the record of `node` (with `record`'s fields, in `tenant`) and returns the pairs at or
/// above the candidate threshold, most probable first, at most one per other profile (its
/// most probable node); nodes of the profile holding `node` are not proposed.
///
/// The node's record is the one it was filed with before, updated by `record`'s values and
/// limited to the `fields` compared now; a node whose record changes leaves the keys of the
/// old one. Every filed node is compared with that record of each candidate node.
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

    let thresholds = matcher.thresholds();
    let mut seen: HashSet<NodeId, ById> = HashSet::default();
    let mut likely: Vec<(NodeId, Score)> = Vec::new();
    for key in &keys {
        let filed = txn.with_block(key, |block| {
            let filed = block.file(node, &current, cap);
            // An oversized key yields nothing from now on, this record included, so the
            // result does not depend on which record came last.
            if matches!(filed, Filed::Added | Filed::AlreadyThere | Filed::Updated) {
                for e in block.entries() {
                    if e.node == node || !seen.insert(e.node) {
                        continue;
                    }
                    stats.compared += 1;
                    let levels = compare_records(&current, &e.record, thresholds);
                    if matcher.weights.probability(&levels) >= matcher.config.candidate_threshold {
                        likely.push((e.node, matcher.model.score(&levels)));
                    }
                }
            }
            (
                filed,
                !matches!(filed, Filed::AlreadyThere | Filed::Oversized),
            )
        })?;
        match filed {
            Filed::Overflowed => stats.blocks_overflowed += 1,
            Filed::Oversized => stats.blocks_skipped += 1,
            Filed::Added | Filed::AlreadyThere | Filed::Updated => {}
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
