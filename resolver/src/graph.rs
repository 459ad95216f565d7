//! Applying signals to the identity graph: nodes for identifiers, links between them, unions
//! that the merge policy allows, attributes folded into the surviving profile, and the change
//! records that describe what happened.

use crate::fold::{fold_signal, merge_into};
use crate::link::{Link, LinkDecision};
use crate::matching::field::{Field, Record};
use crate::matching::{self, model::Score, stream, Matcher, MatchingConfig};
use crate::outbox::RenderedUpdate;
use crate::overlay::ByBytes;
use crate::policy::{MergePolicy, PolicyConfig};
use crate::txn::{NodeId, Txn};
use crate::Result;
use cdp_proto::{
    Identifier, IdentityChange, IdentityChangeKind, IdentityLink, MergeRecord, Profile, Signal,
    Timestamp,
};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// Canonical id of a profile founded by `id`: stable across replays and rebuilds.
pub fn canonical_id_for(tenant: &str, id: &Identifier) -> String {
    // `cdp_` and the first 20 hex digits of sha256("{tenant}\0{kind}\0{value}").
    let digest = Sha256::new()
        .chain_update(tenant)
        .chain_update([0])
        .chain_update(id.kind.as_str())
        .chain_update([0])
        .chain_update(&id.value)
        .finalize();
    let mut hex = [0u8; 20];
    hex::encode_to_slice(&digest[..10], &mut hex).expect("10 bytes are 20 hex digits");
    let mut canonical = String::with_capacity(24);
    canonical.push_str("cdp_");
    canonical.push_str(std::str::from_utf8(&hex).expect("hex is ASCII"));
    canonical
}

/// What a batch produced: the records to publish and counts for the report.
#[derive(Debug, Default)]
pub struct BatchOutput {
    pub changes: Vec<IdentityChange>,
    /// Rendered from the profiles before the batch is committed.
    pub updates: Vec<RenderedUpdate>,
    pub merges: u64,
    pub refused: u64,
    pub candidates: u64,
    pub new_profiles: u64,
    /// Identifiers dropped from signals because `forget` erased them.
    pub tombstoned: u64,
    /// Probabilistic links asserted (merges, refusals and candidates alike).
    pub probabilistic: u64,
    /// Record pairs probabilistic matching compared.
    pub compared: u64,
    /// Blocking keys that grew past the cap (and stopped yielding candidates).
    pub blocks_overflowed: u64,
    /// Blocking keys skipped because they had grown past the cap.
    pub blocks_skipped: u64,
}

/// A merge seen during a batch, reported once the batch's final survivors are known.
struct MergeEvent {
    tenant: String,
    survivor: String,
    retired: String,
    rule: String,
    confidence: f64,
}

/// Per-batch bookkeeping.
#[derive(Default)]
pub struct Batch {
    /// Profiles touched (tenant -> canonical id), with the signal that touched them last.
    /// Nested rather than keyed by a pair so that a profile touched again is found by `&str`
    /// and updated in place, without building a key; hashed, as only [`Resolver::finish`]
    /// needs them in order, and sorts them once.
    touched: HashMap<String, HashMap<String, (String, Timestamp), ByBytes>, ByBytes>,
    /// Canonical ids the signal being applied touched (a few): each gets one version bump per
    /// signal.
    by_signal: Vec<String>,
    merges: Vec<MergeEvent>,
    refused: u64,
    candidates: u64,
    new_profiles: u64,
    tombstoned: u64,
    probabilistic: u64,
    compared: u64,
    blocks_overflowed: u64,
    blocks_skipped: u64,
}

impl Batch {
    /// How many profiles the batch has touched so far (each will get one update).
    pub fn touched(&self) -> usize {
        self.touched.values().map(HashMap::len).sum()
    }
}

/// The resolver's decision logic. State lives in the store behind a [`Txn`].
#[derive(Debug, Clone)]
pub struct Resolver {
    policy: MergePolicy,
    /// Probabilistic matching, when configured.
    matcher: Option<Arc<Matcher>>,
}

impl Resolver {
    /// A resolver of deterministic links only.
    pub fn new(policy: PolicyConfig) -> Self {
        Self {
            policy: MergePolicy::new(policy),
            matcher: None,
        }
    }

    /// A resolver that also matches records probabilistically (when `matching` enables it for
    /// any tenant); probabilistic links merge from `matching.merge_threshold`.
    pub fn with_matching(policy: PolicyConfig, matching: MatchingConfig) -> Result<Self> {
        let enabled =
            matching.enabled || matching.tenants.values().any(|t| t.enabled == Some(true));
        let policy = matching::policy_with_threshold(policy, &matching);
        let matcher = if enabled {
            Some(Arc::new(Matcher::new(matching)?))
        } else {
            None
        };
        Ok(Self {
            policy: MergePolicy::new(policy),
            matcher,
        })
    }

    /// The resolver `config` describes.
    pub fn from_config(config: &crate::ResolverConfig) -> Result<Self> {
        Self::with_matching(config.policy.clone(), config.matching.clone())
    }

    pub fn policy(&self) -> &MergePolicy {
        &self.policy
    }

    /// Applies one signal inside `txn`.
    pub fn apply(&self, txn: &mut Txn, mut signal: Signal, batch: &mut Batch) -> Result<()> {
        let signal_traits = std::mem::take(&mut signal.traits);
        let signal = &signal;
        let tenant = signal.tenant.as_str();
        batch.by_signal.clear();
        // Roots of profiles this signal created: joining them is growth, not a merge.
        let mut fresh: HashSet<NodeId> = HashSet::new();
        // The node of every endpoint, looked up once; identifiers seen for the first time get
        // one, unless `forget` erased them. Only an identifier without a node can have been
        // erased, so known identifiers cost no tombstone read.
        let mut nodes: Vec<(&Identifier, NodeId)> = Vec::with_capacity(signal.identifiers.len());
        let mut erased: HashSet<&Identifier> = HashSet::new();
        let endpoints = signal
            .identifiers
            .iter()
            .chain(signal.links.iter().flat_map(|l| [&l.a, &l.b]));
        for id in endpoints {
            if nodes.iter().any(|(known, _)| *known == id) || erased.contains(id) {
                continue;
            }
            match txn.node_of(tenant, id)? {
                Some(node) => nodes.push((id, node)),
                None if txn.is_tombstoned(tenant, id)? => {
                    erased.insert(id);
                }
                None => nodes.push((id, self.create_node(txn, signal, id, &mut fresh, batch))),
            }
        }
        batch.tombstoned += erased.len() as u64;
        let kept = |id: &Identifier| !erased.contains(id);
        let node_of = |id: &Identifier| {
            nodes
                .iter()
                .find(|(known, _)| *known == id)
                .map(|(_, node)| *node)
        };

        let mut links: Vec<_> = signal
            .links
            .iter()
            .filter(|l| kept(&l.a) && kept(&l.b))
            .collect();
        // Strongest assertions first: when a limit must refuse one, it refuses the weaker.
        links.sort_by(|x, y| y.confidence.total_cmp(&x.confidence));
        for l in links {
            let (Some(a), Some(b)) = (node_of(&l.a), node_of(&l.b)) else {
                continue;
            };
            self.assert_link(txn, signal, (a, b), l, None, &mut fresh, batch)?;
        }

        // Attributes go to the profile of the signal's first (strongest) identifier.
        if let Some(primary) = signal.identifiers.iter().find(|id| kept(id)) {
            if let Some(node) = node_of(primary) {
                // The record to match is read from the traits before they move into the profile.
                let to_match = self.record_to_match(signal, &signal_traits);
                let root = txn.find(node)?;
                if let Some(profile) = txn.profile_mut(root)? {
                    fold_signal(profile, signal, signal_traits);
                    touch(batch, signal, &profile.canonical_id);
                }
                if let Some((matcher, fields, record)) = to_match {
                    let at = (primary, node);
                    self.match_record(
                        matcher, fields, &record, txn, signal, at, &mut fresh, batch,
                    )?;
                }
            }
        }
        bump_versions(txn, tenant, batch)
    }

    /// The record `signal` carries (`traits`' comparison fields) when matching is on for its
    /// tenant and it has enough fields to compare, with the matcher and those fields.
    fn record_to_match(
        &self,
        signal: &Signal,
        traits: &BTreeMap<String, serde_json::Value>,
    ) -> Option<(&Matcher, &[Field], Record)> {
        let matcher = self.matcher.as_deref()?;
        let fields = matcher.config.fields_for(&signal.tenant)?;
        let record = Record::from_traits(traits, fields);
        (record.len() >= matcher.config.min_fields.max(1)).then_some((matcher, fields, record))
    }

    /// Compares `record` (what `signal` carries, filed under the node of its first identifier)
    /// with its blocking candidates, and asserts a probabilistic link to each likely one; the
    /// links are decided like any other.
    #[allow(clippy::too_many_arguments)]
    fn match_record(
        &self,
        matcher: &Matcher,
        fields: &[Field],
        record: &Record,
        txn: &mut Txn,
        signal: &Signal,
        (primary, node): (&Identifier, NodeId),
        fresh: &mut HashSet<NodeId>,
        batch: &mut Batch,
    ) -> Result<()> {
        let mut stats = stream::Stats::default();
        let proposals = stream::propose(
            matcher,
            txn,
            &signal.tenant,
            node,
            record,
            fields,
            &mut stats,
        )?;
        batch.compared += stats.compared;
        batch.blocks_overflowed += stats.blocks_overflowed;
        batch.blocks_skipped += stats.blocks_skipped;
        for p in proposals {
            let l = IdentityLink {
                a: primary.clone(),
                b: p.identifier,
                rule: matching::RULE.to_string(),
                confidence: p.score.probability,
            };
            batch.probabilistic += 1;
            self.assert_link(txn, signal, (node, p.node), &l, Some(p.score), fresh, batch)?;
        }
        Ok(())
    }

    /// Logs the assertion `l` between nodes `a` and `b` (once per pair and rule) and decides
    /// it: a merge, a refusal or a candidate.
    #[allow(clippy::too_many_arguments)]
    fn assert_link(
        &self,
        txn: &mut Txn,
        signal: &Signal,
        (a, b): (NodeId, NodeId),
        l: &IdentityLink,
        evidence: Option<Score>,
        fresh: &mut HashSet<NodeId>,
        batch: &mut Batch,
    ) -> Result<()> {
        if a == b {
            return Ok(());
        }
        let logged = txn.pair(a, b, &l.rule)?;
        if let Some(id) = logged {
            if txn
                .link(id)?
                .is_some_and(|stored| matches!(stored.decision, LinkDecision::Removed(_)))
            {
                // An operator unmerged this assertion; replays must not redo the merge.
                return Ok(());
            }
        }
        let decision = self.decide(txn, signal, (a, b), l, logged.is_none(), fresh, batch)?;
        match logged {
            None => {
                txn.append_link(
                    a,
                    b,
                    Link {
                        id: 0,
                        tenant: signal.tenant.clone(),
                        a: l.a.clone(),
                        b: l.b.clone(),
                        rule: l.rule.clone(),
                        confidence: l.confidence,
                        observed_at: signal.event_time,
                        signal_id: signal.event_id.clone(),
                        decision,
                        evidence,
                    },
                );
            }
            Some(id) => {
                if let Some(mut stored) = txn.link(id)? {
                    // A re-scored pair (a record changed) keeps its latest score.
                    let rescored = match (&evidence, &stored.evidence) {
                        (Some(new), Some(old)) => new.differs(old),
                        (new, _) => new.is_some(),
                    };
                    if stored.decision != decision || rescored {
                        stored.decision = decision;
                        if rescored {
                            stored.confidence = l.confidence;
                            stored.evidence = evidence;
                        }
                        txn.update_link(stored);
                    }
                }
            }
        }
        Ok(())
    }

    /// A node and a profile of its own for `id`, seen for the first time.
    fn create_node(
        &self,
        txn: &mut Txn,
        signal: &Signal,
        id: &Identifier,
        fresh: &mut HashSet<NodeId>,
        batch: &mut Batch,
    ) -> NodeId {
        let tenant = signal.tenant.as_str();
        let node = txn.create_node(tenant, id);
        let canonical_id = canonical_id_for(tenant, id);
        let profile = Profile::new(
            tenant,
            canonical_id.clone(),
            vec![id.clone()],
            signal.received_at,
        );
        txn.found_profile(node, profile);
        touch(batch, signal, &canonical_id);
        fresh.insert(node);
        batch.new_profiles += 1;
        node
    }

    #[allow(clippy::too_many_arguments)]
    fn decide(
        &self,
        txn: &mut Txn,
        signal: &Signal,
        (a, b): (NodeId, NodeId),
        l: &IdentityLink,
        new_link: bool,
        fresh: &mut HashSet<NodeId>,
        batch: &mut Batch,
    ) -> Result<LinkDecision> {
        let (rule, confidence) = (l.rule.as_str(), l.confidence);
        if !self.policy.merges(rule, confidence) {
            batch.candidates += 1;
            return Ok(LinkDecision::Candidate);
        }
        let (ra, rb) = (txn.find(a)?, txn.find(b)?);
        if ra == rb {
            return Ok(LinkDecision::Accepted);
        }
        if let Err(refusal) = crate::hub::reach(
            txn,
            &self.policy,
            [(a, &l.a.kind), (b, &l.b.kind)],
            signal.event_time,
            new_link,
        )? {
            batch.refused += 1;
            return Ok(LinkDecision::Refused(refusal.code()));
        }
        let missing = || crate::ResolverError::Corrupt {
            cf: "profiles",
            detail: format!("root {ra} or {rb} has no profile"),
        };
        let (Some(pa), Some(pb)) = txn.profile_pair(ra, rb)? else {
            return Err(missing());
        };
        if let Err(refusal) = self.policy.check_union(pa, pb) {
            batch.refused += 1;
            return Ok(LinkDecision::Refused(refusal.code()));
        }
        // Moved out rather than copied: the union writes the merged one back.
        let (Some(pa), Some(pb)) = (txn.take_profile(ra)?, txn.take_profile(rb)?) else {
            return Err(missing());
        };
        self.union(
            txn,
            signal,
            (ra, pa),
            (rb, pb),
            rule,
            confidence,
            fresh,
            batch,
        );
        Ok(LinkDecision::Accepted)
    }

    #[allow(clippy::too_many_arguments)]
    fn union(
        &self,
        txn: &mut Txn,
        signal: &Signal,
        a: (NodeId, Profile),
        b: (NodeId, Profile),
        rule: &str,
        confidence: f64,
        fresh: &mut HashSet<NodeId>,
        batch: &mut Batch,
    ) {
        let tenant = signal.tenant.as_str();
        let a_fresh = fresh.contains(&a.0);
        let b_fresh = fresh.contains(&b.0);
        // The older profile keeps its canonical id; a profile this signal created is youngest.
        let a_survives = match (a_fresh, b_fresh) {
            (false, true) => true,
            (true, false) => false,
            _ => (a.1.created_at, &a.1.canonical_id) <= (b.1.created_at, &b.1.canonical_id),
        };
        let ((s_root, mut survivor), (l_root, loser), loser_fresh) = if a_survives {
            (a, b, b_fresh)
        } else {
            (b, a, a_fresh)
        };
        // Union by size keeps trees shallow; which root wins is independent of which id survives.
        let (root, child) = if survivor.identifiers.len() >= loser.identifiers.len() {
            (s_root, l_root)
        } else {
            (l_root, s_root)
        };
        txn.set_parent(child, Some(root));
        fresh.remove(&child);
        if !(a_fresh && b_fresh) {
            fresh.remove(&root);
        }

        let survivor_id = survivor.canonical_id.clone();
        let loser_id = loser.canonical_id.clone();
        for alias in &loser.aliases {
            txn.set_alias(tenant, alias, Some(survivor_id.clone()));
        }
        // Above both, so the survivor's updates sort after everything either profile emitted.
        survivor.version = survivor.version.max(loser.version);
        merge_into(&mut survivor, loser);
        if !loser_fresh {
            // A profile that existed before this signal is retired: record it and keep its id resolvable.
            survivor.aliases.push(loser_id.clone());
            survivor.merge_history.push(MergeRecord {
                merged_at: signal.received_at,
                rule: rule.to_string(),
                confidence,
                from: loser_id.clone(),
                into: survivor_id.clone(),
            });
            txn.set_alias(tenant, &loser_id, Some(survivor_id.clone()));
            batch.merges.push(MergeEvent {
                tenant: tenant.to_string(),
                survivor: survivor_id.clone(),
                retired: loser_id.clone(),
                rule: rule.to_string(),
                confidence,
            });
        }
        txn.set_canonical(tenant, &loser_id, None);
        txn.set_canonical(tenant, &survivor_id, Some(root));
        txn.put_profile(child, None);
        txn.put_profile(root, Some(survivor));
        touch(batch, signal, &survivor_id);
    }

    /// Bumps the version of every profile the batch changed and builds the change records.
    pub fn finish(&self, txn: &mut Txn, batch: Batch) -> Result<BatchOutput> {
        let mut out = BatchOutput {
            merges: batch.merges.len() as u64,
            refused: batch.refused,
            candidates: batch.candidates,
            new_profiles: batch.new_profiles,
            tombstoned: batch.tombstoned,
            probabilistic: batch.probabilistic,
            compared: batch.compared,
            blocks_overflowed: batch.blocks_overflowed,
            blocks_skipped: batch.blocks_skipped,
            ..Default::default()
        };
        // The live profile each touched id ended in. Of several touched ids that end in one
        // profile, the last in (tenant, id) order gives the cause: sorted by (tenant, final
        // id, touched id), the last of each run of equal finals is kept.
        let mut resolved: Vec<(String, String, String, (String, Timestamp))> = Vec::new();
        for (tenant, profiles) in batch.touched {
            for (id, cause) in profiles {
                if let Some(final_id) = resolve_alias(txn, &tenant, &id)? {
                    resolved.push((tenant.clone(), final_id, id, cause));
                }
            }
        }
        resolved.sort_unstable_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)));
        resolved.dedup_by(|later, kept| {
            let same = later.0 == kept.0 && later.1 == kept.1;
            if same {
                std::mem::swap(&mut later.3, &mut kept.3);
            }
            same
        });
        let finals = &mut resolved;
        // Per update, in (tenant, id) order as `out.updates`: which final it is, and the
        // profile's version.
        let mut emitted: Vec<(usize, u64)> = Vec::with_capacity(finals.len());
        for (i, (tenant, id, _, (cause, received_at))) in finals.iter_mut().enumerate() {
            let Some(root) = txn.root_of_canonical(tenant, id)? else {
                continue;
            };
            let Some(profile) = txn.profile_ref(root)? else {
                continue;
            };
            emitted.push((i, profile.version));
            out.updates.push(RenderedUpdate::of(
                profile,
                Some(std::mem::take(cause)),
                Some(*received_at),
            ));
        }
        // One identity change per surviving profile per batch, listing every id it retired,
        // in the order of the updates.
        let mut grouped: Vec<Option<IdentityChange>> = Vec::new();
        grouped.resize_with(emitted.len(), || None);
        for m in batch.merges {
            let Some(final_id) = resolve_alias(txn, &m.tenant, &m.survivor)? else {
                continue;
            };
            let found = emitted.binary_search_by(|(i, _)| {
                let (tenant, id, _, _) = &finals[*i];
                (tenant.as_str(), id.as_str()).cmp(&(m.tenant.as_str(), final_id.as_str()))
            });
            let Ok(at) = found else {
                continue;
            };
            let (version, updated_at) = (emitted[at].1, out.updates[at].updated_at);
            let change = grouped[at].get_or_insert_with(|| IdentityChange {
                tenant: m.tenant.clone(),
                kind: IdentityChangeKind::Merged,
                canonical_id: final_id,
                retired: Vec::new(),
                created: Vec::new(),
                rule: None,
                confidence: None,
                version,
                at: updated_at,
            });
            change.retired.push(m.retired);
            change.rule = Some(m.rule);
            change.confidence = Some(m.confidence);
        }
        out.changes = grouped.into_iter().flatten().collect();
        Ok(out)
    }
}

fn touch(batch: &mut Batch, signal: &Signal, canonical_id: &str) {
    let profiles = match batch.touched.get_mut(signal.tenant.as_str()) {
        Some(profiles) => profiles,
        None => batch.touched.entry(signal.tenant.clone()).or_default(),
    };
    match profiles.get_mut(canonical_id) {
        Some((event_id, at)) => {
            event_id.clone_from(&signal.event_id);
            *at = signal.received_at;
        }
        None => {
            profiles.insert(
                canonical_id.to_string(),
                (signal.event_id.clone(), signal.received_at),
            );
        }
    }
    if !batch.by_signal.iter().any(|id| id == canonical_id) {
        batch.by_signal.push(canonical_id.to_string());
    }
}

/// One version per signal for every profile it changed. Counting signals rather than batches
/// makes a profile's version a function of its input alone: however the stream is cut into
/// batches (or a crash cuts it), replaying it yields the same versions.
fn bump_versions(txn: &mut Txn, tenant: &str, batch: &mut Batch) -> Result<()> {
    // A live profile has one canonical id and one root: counting roots counts profiles.
    let mut live: Vec<NodeId> = Vec::with_capacity(batch.by_signal.len());
    for id in batch.by_signal.drain(..) {
        if let Some((root, _)) = live_root(txn, tenant, &id)? {
            if !live.contains(&root) {
                live.push(root);
            }
        }
    }
    for root in live {
        if let Some(profile) = txn.profile_mut(root)? {
            profile.version += 1;
        }
    }
    Ok(())
}

/// The live canonical id for `id`: itself if live, its survivor if retired, `None` if unknown.
pub fn resolve_alias(txn: &mut Txn, tenant: &str, id: &str) -> Result<Option<String>> {
    Ok(live_root(txn, tenant, id)?.map(|(_, live)| live.unwrap_or_else(|| id.to_string())))
}

/// The root of the live profile `id` names, with its canonical id when that is not `id` (a
/// live id, the common case, costs no copy).
fn live_root(txn: &mut Txn, tenant: &str, id: &str) -> Result<Option<(NodeId, Option<String>)>> {
    if let Some(root) = txn.root_of_canonical(tenant, id)? {
        return Ok(Some((root, None)));
    }
    let mut current = match txn.alias(tenant, id)? {
        Some(next) => next,
        None => return Ok(None),
    };
    // Aliases point at the survivor of their time; a few hops reach today's profile.
    for _ in 0..63 {
        if let Some(root) = txn.root_of_canonical(tenant, &current)? {
            return Ok(Some((root, Some(current))));
        }
        match txn.alias(tenant, &current)? {
            Some(next) => current = next,
            None => return Ok(None),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cdp_proto::{normalize::sha256_hex, IdentifierKind};

    /// Canonical ids are keys downstream (cohort members, snapshots, webhooks): they must stay
    /// what they were for the same founding identifier.
    #[test]
    fn canonical_ids_stay_the_digest_of_tenant_kind_and_value() {
        for (tenant, kind, value) in [
            ("acme", IdentifierKind::UserId, "u-1"),
            ("default", IdentifierKind::EmailSha256, "ab12"),
            ("tenant ö", IdentifierKind::CrmId, "lead/00Q5e00000ñ"),
        ] {
            let digest = sha256_hex(&format!("{tenant}\0{}\0{value}", kind.as_str()));
            let id = Identifier::new(kind, value);
            assert_eq!(
                canonical_id_for(tenant, &id),
                format!("cdp_{}", &digest[..20])
            );
        }
    }
}
