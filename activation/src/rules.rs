//! The per-destination delivery decision, in one place: after a person's cohorts are evaluated,
//! what each destination should hold for them. In order, a person in a cohort is kept out of a
//! destination when
//! 1. they have not granted its consent purposes (see `destination`),
//! 2. they hold an identifier one of its suppression lists names ([`crate::suppression`]),
//! 3. a better cohort of the same exclusive group holds them there ([`crate::priority`]),
//! 4. a new `Audience Entered` would exceed a frequency cap of its channel
//!    ([`crate::frequency`]); such an entry stays withheld while the membership lasts.
//!
//! Kept out means: no `Audience Entered`, and an `Audience Exited` if the destination held them.
//! Membership itself (`cdp.cohorts`, `cdp.cohorts.membership`) is never affected. Per
//! destination, exits are queued before entries, so a person moving between competing cohorts is
//! never in both downstream. Rules 2-4 are recorded in the destination's state and counted once
//! per (destination, cohort, person) each time they start to apply. Rules are checked when a
//! person is evaluated (an update or a timer); suppression is also swept over what destinations
//! hold at start and after a reload ([`sweep_suppressed`]).

use crate::definitions::Definitions;
use crate::destination::{self, Subject, Want};
use crate::membership::{MembershipStore, MembershipTxn};
use crate::Result;
use cdp_proto::{Profile, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Why a destination does not hold a member of a cohort (the `reason` label of
/// `cdp_activation_deliveries_withheld_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Withheld {
    Suppressed,
    Priority,
    FrequencyCap,
}

impl Withheld {
    pub const ALL: [Withheld; 3] = [
        Withheld::Suppressed,
        Withheld::Priority,
        Withheld::FrequencyCap,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Withheld::Suppressed => "suppressed",
            Withheld::Priority => "priority",
            Withheld::FrequencyCap => "frequency_cap",
        }
    }
}

/// Deliveries withheld, per (destination key, reason). Destination keys come from the operator's
/// config, so the label set is bounded.
#[derive(Debug, Default)]
pub struct WithheldCounters {
    counts: Mutex<BTreeMap<(String, Withheld), u64>>,
}

impl WithheldCounters {
    pub fn add(&self, destination: &str, reason: Withheld) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry((destination.to_string(), reason)).or_insert(0) += 1;
    }

    /// `(destination, reason, count)` of every pair counted so far.
    pub fn snapshot(&self) -> Vec<(String, &'static str, u64)> {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts
            .iter()
            .map(|((d, r), n)| (d.clone(), r.as_str(), *n))
            .collect()
    }

    pub fn get(&self, destination: &str, reason: Withheld) -> u64 {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts
            .get(&(destination.to_string(), reason))
            .copied()
            .unwrap_or(0)
    }
}

/// Brings every destination's view of `p` in line with its memberships: `members[i]` says whether
/// `p` is now in cohort `i`, `flipped[i]` whether that changed in this evaluation (a non-member
/// that did not change needs nothing sent).
pub fn deliver(
    txn: &mut MembershipTxn,
    defs: &Definitions,
    p: &Profile,
    members: &[bool],
    flipped: &[bool],
    now: Timestamp,
    withheld: &WithheldCounters,
) -> Result<()> {
    for (d, dest) in defs.destinations.iter().enumerate() {
        let fed = &defs.fed_by[d];
        if !fed.iter().any(|&i| members[i] || flipped[i]) {
            continue;
        }
        let suppressed = defs.suppression.suppressed(d, p);
        let winners = defs.priority.winners(fed, members);
        let cap = defs.caps.channel(&dest.config.channel);
        let mut wants = Vec::with_capacity(fed.len());
        for (&i, wins) in fed.iter().zip(winners) {
            let want = if !members[i] {
                if !flipped[i] {
                    continue;
                }
                Want::Out(None)
            } else if suppressed {
                Want::Out(Some(Withheld::Suppressed))
            } else if !wins {
                Want::Out(Some(Withheld::Priority))
            } else {
                Want::Member(p, cap)
            };
            wants.push((i, want));
        }
        // Exits first: whoever leaves a cohort here leaves before anyone enters another.
        wants.sort_by_key(|(_, w)| matches!(w, Want::Member(..)));
        for (i, want) in wants {
            let who = Subject {
                tenant: &p.tenant,
                canonical_id: &p.canonical_id,
                audience: defs.cohorts.list[i].key(),
            };
            let routed = destination::transition(txn, dest, who, want, &[], now)?;
            if let Some(reason) = routed.withheld {
                withheld.add(dest.key(), reason);
            }
        }
    }
    Ok(())
}

/// Exits, from every destination, the people it holds whose identifiers there a suppression list
/// now names: run at start and after each reload, so that an opt-out added to a list reaches the
/// destinations without waiting for the person's next update. Someone suppressed by an identifier
/// the destination does not receive leaves at their next update. Commits every `batch` exits;
/// returns how many were sent.
pub fn sweep_suppressed(
    store: &MembershipStore,
    defs: &Definitions,
    now: Timestamp,
    batch: usize,
    withheld: &WithheldCounters,
) -> Result<usize> {
    let mut sent = 0;
    for (d, dest) in defs.destinations.iter().enumerate() {
        if !defs.suppression.applies_to(d) {
            continue;
        }
        let found = store.dest_members_where(dest.key(), |m| {
            m.member && defs.suppression.names_any(d, &m.identifiers)
        })?;
        for chunk in found.chunks(batch.max(1)) {
            let mut txn = store.txn()?;
            for (tenant, canonical_id, audience, _) in chunk {
                let who = Subject {
                    tenant,
                    canonical_id,
                    audience,
                };
                let want = Want::Out(Some(Withheld::Suppressed));
                let routed = destination::transition(&mut txn, dest, who, want, &[], now)?;
                sent += usize::from(routed.sent);
                if let Some(reason) = routed.withheld {
                    withheld.add(dest.key(), reason);
                }
            }
            txn.commit()?;
        }
    }
    Ok(sent)
}
