//! Matching one arriving record: file it under its blocking keys, compare it with the profiles
//! filed under the same keys, and score each. The cost is bounded by the blocks' capacity
//! (`max_block_size` per key, a few keys per record), never by the number of profiles.

use super::blocking::{self, Filed};
use super::compare::compare_records;
use super::field::Record;
use super::model::Score;
use super::Matcher;
use crate::txn::{NodeId, Txn};
use crate::Result;
use cdp_proto::Identifier;
use std::collections::{BTreeSet, HashSet};

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
/// above the candidate threshold, most probable first. Profiles already holding `node` are not
/// compared; each other profile is compared once, through its lowest filed node.
pub fn propose(
    matcher: &Matcher,
    txn: &mut Txn,
    tenant: &str,
    node: NodeId,
    record: &Record,
    fields: &[super::field::Field],
    stats: &mut Stats,
) -> Result<Vec<Proposal>> {
    let cap = matcher.config.max_block_size;
    let mut candidates: BTreeSet<NodeId> = BTreeSet::new();
    for key in blocking::keys(tenant, record) {
        let mut block = txn.block(&key)?;
        let filed_before = block.nodes().to_vec();
        match block.file(node, cap) {
            Filed::Added => txn.set_block(&key, block),
            Filed::AlreadyThere => {}
            Filed::Overflowed => {
                stats.blocks_overflowed += 1;
                txn.set_block(&key, block);
                // Too common a key: it yields nothing from now on, this record included, so
                // the result does not depend on which record came last.
                continue;
            }
            Filed::Oversized => {
                stats.blocks_skipped += 1;
                continue;
            }
        }
        candidates.extend(filed_before.into_iter().filter(|n| *n != node));
    }
    let own_root = txn.find(node)?;
    let mut roots: HashSet<NodeId> = HashSet::new();
    let mut out = Vec::new();
    for candidate in candidates {
        let root = txn.find(candidate)?;
        if root == own_root || !roots.insert(root) {
            continue;
        }
        // An erased (forgotten) node has no record and no profile: it is skipped.
        let Some(other) = txn.node(candidate)? else {
            continue;
        };
        let Some(profile) = txn.profile_ref(root)? else {
            continue;
        };
        let theirs = Record::from_traits(&profile.attributes.traits, fields);
        let levels = compare_records(record, &theirs, matcher.thresholds());
        stats.compared += 1;
        let score = matcher.model.score(&levels);
        if score.probability >= matcher.config.candidate_threshold {
            out.push(Proposal {
                node: candidate,
                identifier: other.identifier,
                score,
            });
        }
    }
    out.sort_by(|a, b| {
        b.score
            .probability
            .total_cmp(&a.score.probability)
            .then(a.node.cmp(&b.node))
    });
    Ok(out)
}
