//! Undoing a wrong merge: `unmerge` takes a link (or every link of one identifier) out of a
//! profile's component, marks it removed in the link log, and rebuilds only that component from
//! its remaining links under the current policy. The part holding the profile's founding
//! identifier keeps the canonical id (the oldest part); every other part becomes a profile of its
//! own, announced by one `split` change. Both sides' merge history records the unmerge.

use crate::command::{CommandOutcome, CommandStatus, GraphCommand, Target, UnmergePart};
use crate::component::{self, Component, NodeLink};
use crate::graph::{canonical_id_for, Resolver};
use crate::link::LinkDecision;
use crate::partition;
use crate::txn::{NodeId, Txn};
use crate::Result;
use cdp_proto::{
    normalize::sha256_hex, IdentityChange, IdentityChangeKind, MergeRecord, Profile, Timestamp,
};
use std::collections::{BTreeMap, BTreeSet};

/// The rule name merge history and split changes carry for an unmerge.
pub const UNMERGE_RULE: &str = "unmerge";

pub fn unmerge(
    resolver: &Resolver,
    txn: &mut Txn,
    command: &GraphCommand,
    canonical_id: &str,
    part: &UnmergePart,
) -> Result<CommandOutcome> {
    let tenant = command.tenant.as_str();
    let target = Target::CanonicalId(canonical_id.to_string());
    let component = match component::root_of(txn, tenant, &target)? {
        Some(root) => component::load(txn, tenant, root)?,
        None => None,
    };
    let Some(component) = component else {
        let mut outcome = CommandOutcome::new(command, CommandStatus::NotFound);
        outcome.detail = Some("no profile has this canonical id".into());
        return Ok(outcome);
    };
    let mut links = component.links(txn)?;
    let inside =
        |l: &NodeLink| component.nodes.contains_key(&l.a) && component.nodes.contains_key(&l.b);
    let removed: Vec<usize> = match part {
        UnmergePart::Link(id) => {
            let found = links.iter().position(|l| l.link.id == *id && inside(l));
            match found {
                Some(i) if links[i].link.decision == LinkDecision::Accepted => vec![i],
                Some(i) => {
                    return Ok(rejected(
                        command,
                        format!(
                            "link {id} did not merge anything (decision: {})",
                            decision_name(&links[i].link.decision)
                        ),
                    ))
                }
                None => {
                    return Ok(rejected(
                        command,
                        format!("link {id} does not join two identifiers of this profile"),
                    ))
                }
            }
        }
        UnmergePart::Identifier(id) => {
            let Some((&node, _)) = component.nodes.iter().find(|(_, i)| *i == id) else {
                return Ok(rejected(
                    command,
                    format!("{id} is not an identifier of this profile"),
                ));
            };
            if component.nodes.len() == 1 {
                return Ok(rejected(
                    command,
                    "the profile holds only this identifier".into(),
                ));
            }
            links
                .iter()
                .enumerate()
                .filter(|(_, l)| {
                    inside(l)
                        && (l.a == node || l.b == node)
                        && !matches!(l.link.decision, LinkDecision::Removed(_))
                })
                .map(|(i, _)| i)
                .collect()
        }
    };
    let reason = format!("{UNMERGE_RULE}:{}", command.id);
    for i in &removed {
        links[*i].link.decision = LinkDecision::Removed(reason.clone());
        txn.update_link(links[*i].link.clone());
    }
    let replayed = partition::replay(resolver.policy(), &component.nodes, &links);
    for l in &links {
        if let Some(d) = replayed.decisions.get(&l.link.id) {
            if *d != l.link.decision {
                let mut link = l.link.clone();
                link.decision = d.clone();
                txn.update_link(link);
            }
        }
    }
    let mut outcome = CommandOutcome::new(command, CommandStatus::Applied);
    outcome.links_removed = removed.len() as u64;
    let detached = match part {
        UnmergePart::Identifier(id) => component
            .nodes
            .iter()
            .find(|(_, i)| *i == id)
            .map(|(n, _)| *n),
        UnmergePart::Link(_) => None,
    };
    let change = materialize(
        txn,
        &component,
        &replayed.sets,
        detached,
        UNMERGE_RULE,
        command.requested_at,
    )?;
    outcome.profiles = change.profiles;
    if let Some(c) = change.split {
        outcome.changes.push(c);
    } else {
        outcome.detail = Some("other links still join the profile: it stays one".into());
    }
    Ok(outcome)
}

fn rejected(command: &GraphCommand, detail: String) -> CommandOutcome {
    let mut outcome = CommandOutcome::new(command, CommandStatus::Rejected);
    outcome.detail = Some(detail);
    outcome
}

fn decision_name(d: &LinkDecision) -> String {
    match d {
        LinkDecision::Accepted => "accepted".into(),
        LinkDecision::Candidate => "candidate".into(),
        LinkDecision::Refused(r) => format!("refused {r}"),
        LinkDecision::Removed(r) => format!("removed {r}"),
    }
}

/// What writing a component's new partition produced.
pub struct Materialized {
    /// Canonical ids of every resulting profile, the one that kept the old id first.
    pub profiles: Vec<String>,
    /// The `split` change, when the component became more than one profile.
    pub split: Option<IdentityChange>,
}

/// Writes `sets` (a partition of `component`'s nodes) as the component's profiles, recording
/// `rule` (what caused the split) in merge history and the split change. The part
/// holding the founding identifier keeps the canonical id, unless that identifier is the one
/// being `detached` (then the first other part keeps it).
pub fn materialize(
    txn: &mut Txn,
    component: &Component,
    sets: &[BTreeSet<NodeId>],
    detached: Option<NodeId>,
    rule: &str,
    at: Timestamp,
) -> Result<Materialized> {
    let tenant = component.tenant.as_str();
    let old = &component.profile;
    // The canonical id was minted from the identifier that founded the profile.
    let founder = component
        .nodes
        .iter()
        .find(|(_, id)| canonical_id_for(tenant, id) == old.canonical_id)
        .map(|(n, _)| *n);
    let holds_detached = |s: &BTreeSet<NodeId>| detached.is_some_and(|d| s.contains(&d));
    let keeper = founder
        .and_then(|f| sets.iter().position(|s| s.contains(&f)))
        .filter(|i| !holds_detached(&sets[*i]))
        .or_else(|| sets.iter().position(|s| !holds_detached(s)))
        .unwrap_or(0);
    let version = old.version + 1;
    // Retired ids follow the identifier that founded them.
    let minted: BTreeMap<String, NodeId> = component
        .nodes
        .iter()
        .map(|(n, id)| (canonical_id_for(tenant, id), *n))
        .collect();
    let mut ids: Vec<String> = Vec::with_capacity(sets.len());
    for (i, set) in sets.iter().enumerate() {
        if i == keeper {
            ids.push(old.canonical_id.clone());
            continue;
        }
        // A part that was a profile of its own until it was merged into this one gets that id
        // back (the last such merge); otherwise the id its oldest identifier mints.
        let restored = old
            .merge_history
            .iter()
            .rev()
            .filter(|m| m.into == old.canonical_id && old.aliases.contains(&m.from))
            .find(|m| minted.get(&m.from).is_some_and(|n| set.contains(n)))
            .map(|m| m.from.clone());
        let first = &component.nodes[set.first().expect("partition sets are not empty")];
        let mut id = restored.unwrap_or_else(|| canonical_id_for(tenant, first));
        // The founder of the old id went to a new part: mint a new id from it instead.
        if id == old.canonical_id || txn.root_of_canonical(tenant, &id)?.is_some() {
            let digest = sha256_hex(&format!("{tenant}\0{first}\0split\0{}", old.canonical_id));
            id = format!("cdp_{}", &digest[..20]);
        }
        ids.push(id);
    }

    let mut profiles: Vec<Profile> = Vec::with_capacity(sets.len());
    for (i, set) in sets.iter().enumerate() {
        let identifiers: Vec<_> = set.iter().map(|n| component.nodes[n].clone()).collect();
        let aliases: Vec<String> = old
            .aliases
            .iter()
            .filter(|a| {
                let home = minted
                    .get(*a)
                    .and_then(|n| sets.iter().position(|s| s.contains(n)))
                    .unwrap_or(keeper);
                home == i && **a != ids[i]
            })
            .cloned()
            .collect();
        let mut p = if i == keeper {
            Profile {
                identifiers,
                aliases,
                version,
                ..old.clone()
            }
        } else {
            // Attributes were folded from signals that are not kept; the carved-out part
            // starts empty (and without consent) and fills from its next signals.
            Profile {
                aliases,
                version,
                ..Profile::new(tenant, ids[i].clone(), identifiers, at)
            }
        };
        if sets.len() > 1 {
            let records = if i == keeper {
                ids.iter()
                    .enumerate()
                    .filter(|(j, _)| *j != keeper)
                    .map(|(_, id)| id.clone())
                    .collect()
            } else {
                vec![ids[i].clone()]
            };
            for into in records {
                p.merge_history.push(MergeRecord {
                    merged_at: at,
                    rule: rule.to_string(),
                    confidence: 1.0,
                    from: old.canonical_id.clone(),
                    into,
                });
            }
        }
        p.identifiers.sort();
        profiles.push(p);
    }

    txn.put_profile(component.root, None);
    txn.set_canonical(tenant, &old.canonical_id, None);
    for (set, profile) in sets.iter().zip(profiles) {
        let root = *set.first().expect("partition sets are not empty");
        for n in set {
            txn.set_parent(*n, (*n != root).then_some(root));
        }
        txn.set_alias(tenant, &profile.canonical_id, None);
        for alias in &profile.aliases {
            txn.set_alias(tenant, alias, Some(profile.canonical_id.clone()));
        }
        txn.set_canonical(tenant, &profile.canonical_id, Some(root));
        txn.put_profile(root, Some(profile));
    }
    let mut ordered = vec![ids[keeper].clone()];
    ordered.extend(
        ids.iter()
            .enumerate()
            .filter(|(i, _)| *i != keeper)
            .map(|(_, id)| id.clone()),
    );
    let split = (sets.len() > 1).then(|| IdentityChange {
        tenant: tenant.to_string(),
        kind: IdentityChangeKind::Split,
        canonical_id: old.canonical_id.clone(),
        retired: Vec::new(),
        created: ordered[1..].to_vec(),
        rule: Some(rule.to_string()),
        confidence: None,
        version,
        at,
    });
    Ok(Materialized {
        profiles: ordered,
        split,
    })
}
