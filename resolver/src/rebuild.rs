//! `rebuild`: recomputes a tenant's whole partition from the link log under the current policy
//! (which may have changed since the links were decided) and reports the difference: profiles
//! that would split, profiles that would merge, links whose decision changes. With `apply` the
//! new partition is written in one atomic write, with its change records in the outbox. Offline:
//! it holds the state for its whole run.
//!
//! The log is streamed through a compact replay ([`partition::Replay`]): what it keeps is a few
//! words per node (dense indexes, kinds, the union-find, hub times), each link's two nodes (read
//! from the pair index, so no identifier is looked up), and the links whose decision changes.
//! Links are read from their stored form without allocating ([`LinkHead`]), in log order (the
//! key order of `links`).
//!
//! Probabilistic links are re-scored under the configured model first: each keeps the
//! comparison level of every field it compared, so a new model (new m/u, a new prior) or new
//! thresholds are previewed exactly. What re-scoring cannot change is which pairs were compared
//! and at which levels: a change of fields, Jaro-Winkler thresholds or blocking needs the
//! input replayed.

use crate::component;
use crate::fold::merge_into;
use crate::graph::Resolver;
use crate::link::{Link, LinkDecision, LinkHead};
use crate::partition::{reaches_of, Decided, Replay};
use crate::store::{Cf, GraphStore};
use crate::txn::{decode_link, decode_u64, NodeId, Txn};
use crate::unmerge::materialize;
use crate::{ResolverConfig, ResolverError, Result};
use cdp_proto::{
    Identifier, IdentifierKind, IdentityChange, IdentityChangeKind, MergeRecord, Timestamp,
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
    let model = config.matching.model()?;
    let policy = crate::policy::MergePolicy::new(crate::matching::policy_with_threshold(
        resolver.policy().config().clone(),
        &config.matching,
    ));
    let nodes = TenantNodes::load(store, tenant)?;
    // The current partition and the links' ends are independent scans: one runs on a thread
    // of its own.
    let (old_root, ends) = std::thread::scope(|s| {
        let roots = s.spawn(|| nodes.current_roots(store));
        let ends = nodes.link_ends(store);
        let roots = roots
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (roots, ends)
    });
    let (old_root, ends) = (old_root?, ends?);
    let n = nodes.ids.len();
    let mut replay = Replay::new(&policy, nodes.kinds.clone());
    for k in &nodes.kind {
        replay.add_node(*k);
    }

    let mut links = 0u64;
    let mut rescored = 0u64;
    // Links whose decision may change or that were re-scored, with what the replay decided.
    let mut pending: Vec<Pending> = Vec::new();
    let mut visit = |v: &[u8]| -> Result<()> {
        let head = crate::codec::decode_link_head(v).map_err(|e| ResolverError::Corrupt {
            cf: "links",
            detail: e.to_string(),
        })?;
        if head.tenant != tenant {
            return Ok(());
        }
        links += 1;
        let (a, b) = nodes.ends_of(&head, &ends)?;
        // Probabilistic links are re-scored under the configured model first.
        let mut whole: Option<Link> = None;
        let mut confidence = head.confidence;
        let mut was_rescored = false;
        if head.has_evidence {
            let mut link = decode_link(v)?;
            if let Some(evidence) = &link.evidence {
                let levels: Vec<_> = evidence
                    .contributions
                    .iter()
                    .map(|c| (c.field, c.level))
                    .collect();
                let score = model.score(&levels);
                if score.differs(evidence) {
                    was_rescored = true;
                    link.confidence = score.probability;
                    link.evidence = Some(score);
                }
            }
            confidence = link.confidence;
            whole = Some(link);
        }
        rescored += u64::from(was_rescored);
        if head.decision == LinkDecision::Removed(String::new()).tag() {
            return Ok(());
        }
        let strong = policy.merges(&head.rule, confidence);
        let at = || Ok::<_, ResolverError>(head.observed_at_ms);
        let Some(decided) = replay.link(Some(a), Some(b), strong, at)? else {
            return Ok(());
        };
        let decision = decided.decision();
        // A refusal's reason is that of the link's latest sighting; only the decision counts.
        let same = decision.tag() == head.decision;
        if !same || was_rescored {
            let link = match whole {
                Some(link) => link,
                None => decode_link(v)?,
            };
            let joined = decided == (Decided::Accepted { joined: true });
            pending.push(Pending {
                link,
                decision,
                joined,
                ends: (a, b),
                same,
                rescored: was_rescored,
            });
        }
        Ok(())
    };
    scan_links(store, &mut visit)?;
    drop(ends);

    let new_root: Vec<u32> = (0..n as u32).map(|i| replay.find(i)).collect();
    let mut decisions_changed = 0u64;
    let mut changed_links: Vec<Link> = Vec::new();
    for p in pending {
        // A link that joins nothing, between ends that are together anyway, is accepted or
        // refused depending only on whether it was seen again after its ends joined.
        let (a, b) = p.ends;
        let idle = new_root[a as usize] == new_root[b as usize] && !p.joined;
        let equivalent = idle
            && matches!(
                (&p.decision, &p.link.decision),
                (LinkDecision::Accepted, LinkDecision::Refused(_))
                    | (LinkDecision::Refused(_), LinkDecision::Accepted)
            );
        let changed = !p.same && !equivalent;
        decisions_changed += u64::from(changed);
        if changed || p.rescored {
            changed_links.push(Link {
                decision: p.decision,
                ..p.link
            });
        }
    }

    let diff = Diff::of(&old_root, &new_root);
    let mut report = RebuildReport {
        tenant: tenant.to_string(),
        identifiers: n as u64,
        links,
        profiles_before: diff.profiles_before,
        profiles_after: diff.profiles_after,
        splits: diff.splitting.iter().filter(|s| **s).count() as u64,
        merges: diff.merging.iter().filter(|s| **s).count() as u64,
        links_changed: decisions_changed,
        links_rescored: rescored,
        split_examples: Vec::new(),
        merge_examples: Vec::new(),
        applied: false,
    };
    // Every difference when applying; the examples' only when previewing.
    let wanted = if options.apply {
        usize::MAX
    } else {
        options.examples
    };
    let groups = diff.groups(&old_root, &new_root, wanted);

    let mut txn = Txn::begin(store)?;
    let canonical = |txn: &mut Txn, root: NodeId| -> Result<String> {
        Ok(txn
            .profile(root)?
            .map(|p| p.canonical_id)
            .unwrap_or_default())
    };
    for (old, pieces) in groups.splits.iter().take(options.examples) {
        let mut into = Vec::with_capacity(pieces.len());
        for piece in pieces.values() {
            let mut ids = Vec::with_capacity(piece.len());
            for i in piece {
                let node = nodes.ids[*i as usize];
                let record = txn.node(node)?.ok_or_else(|| ResolverError::Corrupt {
                    cf: "nodes",
                    detail: format!("node {node} has no record"),
                })?;
                ids.push(record.identifier);
            }
            into.push(ids);
        }
        report.split_examples.push(SplitExample {
            canonical_id: canonical(&mut txn, nodes.ids[*old as usize])?,
            into,
        });
    }
    for set in groups.merges.iter().take(options.examples) {
        let olds: BTreeSet<u32> = set.iter().map(|i| old_root[*i as usize]).collect();
        let mut ids = Vec::with_capacity(olds.len());
        for o in olds {
            ids.push(canonical(&mut txn, nodes.ids[o as usize])?);
        }
        report.merge_examples.push(MergeExample {
            canonical_ids: ids,
            identifiers: set.len(),
        });
    }
    if !options.apply {
        return Ok(report);
    }

    for link in changed_links {
        txn.update_link(link);
    }
    // Hub state as the replay found it, so decisions after the rebuild continue from it: the
    // stored state is read in one pass, and only what differs is written.
    let mut stored = vec![false; n];
    store.for_each_prefix(Cf::Hubs, b"", &mut |k, v| {
        let Some(i) = nodes.index_of_node(decode_u64(Cf::Hubs, k)?) else {
            return Ok(());
        };
        if v.len() % 8 != 0 {
            return Err(ResolverError::Corrupt {
                cf: "hubs",
                detail: "not a list of times".into(),
            });
        }
        stored[i as usize] = true;
        let times = replay.reaches(i);
        if !v
            .chunks_exact(8)
            .map(|c| i64::from_be_bytes(c.try_into().expect("8 bytes")))
            .eq(times.iter().copied())
        {
            txn.set_hub_reaches(
                nodes.ids[i as usize],
                (!times.is_empty()).then(|| reaches_of(times)),
            );
        }
        Ok(())
    })?;
    for (i, was_stored) in stored.iter().enumerate() {
        let times = replay.reaches(i as u32);
        if !was_stored && !times.is_empty() {
            txn.set_hub_reaches(nodes.ids[i], Some(reaches_of(times)));
        }
    }
    drop(stored);
    let mut changes: Vec<IdentityChange> = Vec::new();
    let mut republish: BTreeSet<String> = BTreeSet::new();
    // First every profile that splits becomes its pieces (its intersections with new sets)...
    for (old, pieces) in &groups.splits {
        let Some(comp) = component::load(&mut txn, tenant, nodes.ids[*old as usize])? else {
            continue;
        };
        let mut sorted: Vec<BTreeSet<NodeId>> = pieces
            .values()
            .map(|piece| piece.iter().map(|i| nodes.ids[*i as usize]).collect())
            .collect();
        sorted.sort_by_key(|s| s.first().copied());
        let done = materialize(&mut txn, &comp, &sorted, None, REBUILD_RULE, options.at)?;
        republish.extend(done.profiles);
        changes.extend(done.split);
    }
    // ...then every new set spread over several profiles joins them, the oldest surviving.
    for members in &groups.merges {
        let set: BTreeSet<NodeId> = members.iter().map(|i| nodes.ids[*i as usize]).collect();
        let set = &set;
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
        crate::outbox::push_change(&mut txn, &config.changes_topic, change);
    }
    for id in &republish {
        let Some(root) = txn.root_of_canonical(tenant, id)? else {
            continue;
        };
        if txn.profile_ref(root)?.is_none() {
            continue;
        }
        // Published from the outbox by whoever publishes it next, rendered from the store.
        let reference = crate::outbox::UpdateRef {
            topic: config.profiles_topic.clone(),
            tenant: tenant.to_string(),
            canonical_id: id.clone(),
            cause: Some(REBUILD_RULE.into()),
            received_at: Some(options.at),
        };
        crate::outbox::push_reference(&mut txn, &reference);
    }
    txn.commit()?;
    report.applied = true;
    Ok(report)
}

/// A link the replay may decide differently than the log says, or that was re-scored.
struct Pending {
    link: Link,
    decision: LinkDecision,
    joined: bool,
    ends: (u32, u32),
    /// Whether the new decision has the logged one's tag.
    same: bool,
    rescored: bool,
}

/// "No node".
const NONE: u32 = u32::MAX;

/// The tenant's nodes as dense indexes (in node order), with their kinds.
struct TenantNodes {
    kinds: Vec<IdentifierKind>,
    /// Index -> node id.
    ids: Vec<NodeId>,
    /// Index -> index of its kind in `kinds`.
    kind: Vec<u16>,
    /// Node id -> index (`NONE`: not the tenant's).
    index: Vec<u32>,
}

impl TenantNodes {
    /// The tenant's nodes, from its identifiers in `ids` (`tenant \0 kind \0 value` -> node).
    fn load(store: &dyn GraphStore, tenant: &str) -> Result<Self> {
        let mut prefix = tenant.as_bytes().to_vec();
        prefix.push(0);
        let mut kind_names: Vec<Vec<u8>> = Vec::new();
        let mut kinds: Vec<IdentifierKind> = Vec::new();
        let mut kind_of_node: Vec<u16> = Vec::new();
        let corrupt = |detail: String| ResolverError::Corrupt { cf: "ids", detail };
        store.for_each_prefix(Cf::Ids, &prefix, &mut |k, v| {
            let rest = &k[prefix.len()..];
            let sep = rest
                .iter()
                .position(|b| *b == 0)
                .ok_or_else(|| corrupt("a key without a kind".into()))?;
            let kind = match kind_names.iter().position(|name| name == &rest[..sep]) {
                Some(kind) => kind,
                None => {
                    let parsed = std::str::from_utf8(&rest[..sep])
                        .ok()
                        .and_then(|s| s.parse::<IdentifierKind>().ok())
                        .ok_or_else(|| corrupt("an unknown identifier kind".into()))?;
                    if kinds.len() >= usize::from(u16::MAX) {
                        return Err(corrupt("more identifier kinds than a replay holds".into()));
                    }
                    kind_names.push(rest[..sep].to_vec());
                    kinds.push(parsed);
                    kinds.len() - 1
                }
            };
            let node = decode_u64(Cf::Ids, v)?;
            let at = usize::try_from(node).map_err(|_| corrupt(format!("node {node}")))?;
            if at >= kind_of_node.len() {
                kind_of_node.resize(at + 1, u16::MAX);
            }
            if kind_of_node[at] != u16::MAX {
                return Err(corrupt(format!("node {node} has two identifiers")));
            }
            kind_of_node[at] = kind as u16;
            Ok(())
        })?;
        let mut ids = Vec::new();
        let mut kind = Vec::new();
        let mut index = vec![NONE; kind_of_node.len()];
        for (node, k) in kind_of_node.iter().enumerate() {
            if *k != u16::MAX {
                index[node] = u32::try_from(ids.len())
                    .ok()
                    .filter(|i| *i != NONE)
                    .ok_or_else(|| corrupt("more nodes than a replay holds".into()))?;
                ids.push(node as NodeId);
                kind.push(*k);
            }
        }
        Ok(Self {
            kinds,
            ids,
            kind,
            index,
        })
    }

    fn index_of_node(&self, node: NodeId) -> Option<u32> {
        let i = *self.index.get(usize::try_from(node).ok()?)?;
        (i != NONE).then_some(i)
    }

    /// The two ends of every link of the tenant, by link id, from `pairs` (`node, node, rule`
    /// -> link id, the smaller node first): reading them there costs no identifier lookup.
    fn link_ends(&self, store: &dyn GraphStore) -> Result<Vec<[u32; 2]>> {
        let mut ends: Vec<[u32; 2]> = Vec::new();
        store.for_each_prefix(Cf::Pairs, b"", &mut |k, v| {
            let corrupt = || ResolverError::Corrupt {
                cf: "pairs",
                detail: "a key without two nodes".into(),
            };
            let lo = decode_u64(Cf::Pairs, k.get(..8).ok_or_else(corrupt)?)?;
            let hi = decode_u64(Cf::Pairs, k.get(8..16).ok_or_else(corrupt)?)?;
            let (Some(lo), Some(hi)) = (self.index_of_node(lo), self.index_of_node(hi)) else {
                return Ok(());
            };
            let id = usize::try_from(decode_u64(Cf::Pairs, v)?).map_err(|_| corrupt())?;
            if id >= ends.len() {
                ends.resize(id + 1, [NONE; 2]);
            }
            ends[id] = [lo, hi];
            Ok(())
        })?;
        Ok(ends)
    }

    /// The indexes of a link's ends `a` and `b`, from [`Self::link_ends`]. The pair index does
    /// not say which end is `a`: the kinds do, and where both ends are of one kind, which is
    /// which decides nothing (the union-find is symmetric; a hub refusal names the kind).
    fn ends_of(&self, head: &LinkHead, ends: &[[u32; 2]]) -> Result<(u32, u32)> {
        let corrupt = || ResolverError::Corrupt {
            cf: "links",
            detail: format!("link {} has an end without a node", head.id),
        };
        let [lo, hi] = *usize::try_from(head.id)
            .ok()
            .and_then(|id| ends.get(id))
            .filter(|e| e[0] != NONE)
            .ok_or_else(corrupt)?;
        let kind = |i: u32| self.kinds[self.kind[i as usize] as usize].as_str();
        let (a, b) = if kind(lo) == head.a.kind {
            (lo, hi)
        } else {
            (hi, lo)
        };
        if kind(a) != head.a.kind || kind(b) != head.b.kind {
            return Err(corrupt());
        }
        Ok((a, b))
    }

    /// The root each node has now, from `parent` (node -> parent; roots have no entry).
    fn current_roots(&self, store: &dyn GraphStore) -> Result<Vec<u32>> {
        let mut parent: Vec<u32> = (0..self.ids.len() as u32).collect();
        store.for_each_prefix(Cf::Parent, b"", &mut |k, v| {
            let Some(i) = self.index_of_node(decode_u64(Cf::Parent, k)?) else {
                return Ok(());
            };
            let p = decode_u64(Cf::Parent, v)?;
            parent[i as usize] = self
                .index_of_node(p)
                .ok_or_else(|| ResolverError::Corrupt {
                    cf: "parent",
                    detail: format!(
                        "the parent {p} of node {} is not the tenant's",
                        self.ids[i as usize]
                    ),
                })?;
            Ok(())
        })?;
        for i in 0..parent.len() {
            let mut r = i;
            while parent[r] as usize != r {
                let grand = parent[parent[r] as usize];
                parent[r] = grand;
                r = grand as usize;
            }
            parent[i] = r as u32;
        }
        Ok(parent)
    }
}

/// Stored links copied per chunk from the reading thread to the replaying one: large enough
/// that handing one over costs nothing next to the links in it, small enough to stay in cache.
const CHUNK_BYTES: usize = 1 << 20;
/// Chunks read ahead of the replay.
const CHUNKS_AHEAD: usize = 4;

/// Calls `visit` with every stored link, in log order. A thread of its own iterates the column
/// family (block reads, decompression, key comparisons) while this one replays: the replay
/// must see links in order, the reading need not wait for it.
fn scan_links(store: &dyn GraphStore, visit: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
    struct Chunk {
        bytes: Vec<u8>,
        /// Where each link ends in `bytes`.
        ends: Vec<usize>,
    }
    let fresh = || Chunk {
        bytes: Vec::with_capacity(CHUNK_BYTES + 4096),
        ends: Vec::new(),
    };
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Chunk>(CHUNKS_AHEAD);
        let reader = s.spawn(move || -> Result<()> {
            let mut chunk = fresh();
            store.for_each_prefix(Cf::Links, b"", &mut |_, v| {
                chunk.bytes.extend_from_slice(v);
                chunk.ends.push(chunk.bytes.len());
                if chunk.bytes.len() >= CHUNK_BYTES {
                    let full = std::mem::replace(&mut chunk, fresh());
                    // The replay stopped (on an error it returns itself): stop reading.
                    tx.send(full).map_err(|_| stopped())?;
                }
                Ok(())
            })?;
            if !chunk.ends.is_empty() {
                tx.send(chunk).map_err(|_| stopped())?;
            }
            Ok(())
        });
        let mut replayed = Ok(());
        'chunks: for chunk in rx {
            let mut start = 0;
            for end in chunk.ends {
                if let Err(e) = visit(&chunk.bytes[start..end]) {
                    replayed = Err(e);
                    break 'chunks;
                }
                start = end;
            }
        }
        // The receiver is gone here (the loop consumed it), so a reader blocked on a full
        // channel returns.
        let read = reader
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        replayed.and(read)
    })
}

fn stopped() -> ResolverError {
    ResolverError::Storage("the link scan stopped: the replay failed".into())
}

/// How the new partition differs from the current one, per dense index.
struct Diff {
    profiles_before: u64,
    profiles_after: u64,
    /// Per old root: whether its nodes are spread over several new sets.
    splitting: Vec<bool>,
    /// Per new root: whether its nodes come from several old sets.
    merging: Vec<bool>,
    /// Per new root: its set's smallest index (sets are ordered by it).
    set_min: Vec<u32>,
}

/// The nodes of the differences a rebuild shows or writes.
struct Groups {
    /// Old root -> its pieces (set min -> indexes), in old root order.
    splits: BTreeMap<u32, BTreeMap<u32, Vec<u32>>>,
    /// The indexes of each new set joining several old ones, in set order.
    merges: Vec<Vec<u32>>,
}

impl Diff {
    fn of(old_root: &[u32], new_root: &[u32]) -> Self {
        let n = old_root.len();
        let mut first_old = vec![NONE; n];
        let mut first_new = vec![NONE; n];
        let mut diff = Diff {
            profiles_before: 0,
            profiles_after: 0,
            splitting: vec![false; n],
            merging: vec![false; n],
            set_min: vec![NONE; n],
        };
        for i in 0..n {
            let (o, r) = (old_root[i] as usize, new_root[i] as usize);
            diff.profiles_before += u64::from(o == i);
            diff.profiles_after += u64::from(r == i);
            if first_old[r] == NONE {
                first_old[r] = o as u32;
                diff.set_min[r] = i as u32;
            } else if first_old[r] != o as u32 {
                diff.merging[r] = true;
            }
            if first_new[o] == NONE {
                first_new[o] = r as u32;
            } else if first_new[o] != r as u32 {
                diff.splitting[o] = true;
            }
        }
        diff
    }

    /// The nodes of the first `wanted` splits (in old root order) and merges (in set order).
    fn groups(&self, old_root: &[u32], new_root: &[u32], wanted: usize) -> Groups {
        let splits: BTreeSet<u32> = (0..old_root.len() as u32)
            .filter(|o| self.splitting[*o as usize])
            .take(wanted)
            .collect();
        // Sets in order of their smallest index: index i starts the set it is the min of.
        let merges: Vec<u32> = (0..new_root.len())
            .map(|i| new_root[i])
            .enumerate()
            .filter(|(i, r)| self.merging[*r as usize] && self.set_min[*r as usize] == *i as u32)
            .map(|(_, r)| r)
            .take(wanted)
            .collect();
        let rank: HashMap<u32, usize> = merges.iter().enumerate().map(|(k, r)| (*r, k)).collect();
        let mut groups = Groups {
            splits: BTreeMap::new(),
            merges: vec![Vec::new(); merges.len()],
        };
        if splits.is_empty() && merges.is_empty() {
            return groups;
        }
        for i in 0..old_root.len() {
            let (o, r) = (old_root[i], new_root[i]);
            if splits.contains(&o) {
                groups
                    .splits
                    .entry(o)
                    .or_default()
                    .entry(self.set_min[r as usize])
                    .or_default()
                    .push(i as u32);
            }
            if let Some(k) = rank.get(&r) {
                groups.merges[*k].push(i as u32);
            }
        }
        groups
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    /// Links big enough that the log spans several chunks.
    fn store_of(links: u64) -> MemStore {
        let store = MemStore::default();
        let ops = (0..links)
            .map(|i| {
                let value = vec![(i % 251) as u8; 1000 + (i % 7) as usize];
                (Cf::Links, i.to_be_bytes().to_vec(), Some(value))
            })
            .collect();
        store.write(ops).unwrap();
        store
    }

    #[test]
    fn the_link_scan_visits_every_link_once_in_log_order() {
        let n = 3 * CHUNK_BYTES as u64 / 1000;
        let store = store_of(n);
        let mut seen = Vec::new();
        scan_links(&store, &mut |v| {
            seen.push(v.to_vec());
            Ok(())
        })
        .unwrap();
        let want: Vec<Vec<u8>> = store
            .scan_prefix(Cf::Links, b"")
            .unwrap()
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        assert_eq!(seen.len() as u64, n);
        assert_eq!(seen, want);
    }

    #[test]
    fn a_replay_error_stops_the_scan_and_is_the_one_returned() {
        let store = store_of(3 * CHUNK_BYTES as u64 / 1000);
        let mut visited = 0;
        let err = scan_links(&store, &mut |_| {
            visited += 1;
            if visited == 10 {
                return Err(ResolverError::Corrupt {
                    cf: "links",
                    detail: "bad link".into(),
                });
            }
            Ok(())
        })
        .unwrap_err();
        assert_eq!(visited, 10);
        assert!(
            matches!(err, ResolverError::Corrupt { cf: "links", .. }),
            "{err}"
        );
    }
}
