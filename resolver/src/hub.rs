//! Hub detection: an identifier whose links reach too many distinct profiles within a window (a
//! shared kiosk cookie, a test device, a click id pasted around) would chain unrelated people
//! together, so once it passes its kind's limit its links are refused with `hub:KIND` instead
//! of merging. A link counts for both its ends, at its event time, when it is first logged and
//! joins two different profiles. Online decisions and replays (`rebuild`, `unmerge`) share
//! [`observe`], so both decide alike.

use crate::policy::{MergePolicy, Refusal};
use crate::txn::{NodeId, Txn};
use crate::Result;
use cdp_proto::{IdentifierKind, Timestamp};

/// When a node's links reached another profile (Unix millis, ascending). Only the newest
/// `limit + 1` are kept: more inside any window already makes the node a hub.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reaches(Vec<i64>);

impl Reaches {
    pub fn decode(b: &[u8]) -> Option<Self> {
        let chunks = b.chunks_exact(8);
        if !chunks.remainder().is_empty() {
            return None;
        }
        Some(Reaches(
            chunks
                .map(|c| i64::from_be_bytes(c.try_into().expect("chunks of 8")))
                .collect(),
        ))
    }

    pub fn encode(&self) -> Vec<u8> {
        self.0.iter().flat_map(|t| t.to_be_bytes()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn record(&mut self, at: i64, keep: usize) {
        let pos = self.0.partition_point(|t| *t <= at);
        self.0.insert(pos, at);
        if self.0.len() > keep {
            let excess = self.0.len() - keep;
            self.0.drain(..excess);
        }
    }

    fn since(&self, from: i64) -> u64 {
        (self.0.len() - self.0.partition_point(|t| *t < from)) as u64
    }
}

/// Records a reach at `at` (when the link is `new`) and checks the node against its limit.
pub fn observe(
    policy: &MergePolicy,
    kind: &IdentifierKind,
    reaches: &mut Reaches,
    at: Timestamp,
    new: bool,
) -> Result<(), Refusal> {
    let Some(max) = policy.hub_limit(kind) else {
        return Ok(());
    };
    let t = at.timestamp_millis();
    if new {
        reaches.record(t, max + 1);
    }
    let from = policy
        .hub_window_ms()
        .map_or(i64::MIN, |w| t.saturating_sub(w));
    policy.check_hub(kind, reaches.since(from))
}

/// [`observe`] for both ends of a link between two different profiles, against stored state.
pub fn reach(
    txn: &mut Txn,
    policy: &MergePolicy,
    ends: [(NodeId, &IdentifierKind); 2],
    at: Timestamp,
    new: bool,
) -> Result<Result<(), Refusal>> {
    let mut verdict = Ok(());
    for (node, kind) in ends {
        if policy.hub_limit(kind).is_none() {
            continue;
        }
        let mut reaches = txn.hub_reaches(node)?;
        let checked = observe(policy, kind, &mut reaches, at, new);
        if new {
            txn.set_hub_reaches(node, Some(reaches));
        }
        if verdict.is_ok() {
            verdict = checked;
        }
    }
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyConfig;
    use cdp_proto::time::from_millis;

    const DAY: i64 = 86_400_000;

    #[test]
    fn only_reaches_inside_the_window_count() {
        let mut config = PolicyConfig::default();
        config
            .hub_max_profiles_per_kind
            .insert("cookie_id".into(), 2);
        config.hub_window_days = 7;
        let policy = MergePolicy::new(config);
        let kind = IdentifierKind::CookieId;
        let mut r = Reaches::default();
        let at = |day: i64| from_millis(1_700_000_000_000 + day * DAY);
        assert!(observe(&policy, &kind, &mut r, at(0), true).is_ok());
        assert!(observe(&policy, &kind, &mut r, at(1), true).is_ok());
        assert_eq!(
            observe(&policy, &kind, &mut r, at(2), true),
            Err(Refusal::Hub("cookie_id".into()))
        );
        // Three weeks later the old reaches have left the window.
        assert!(observe(&policy, &kind, &mut r, at(21), true).is_ok());
        assert_eq!(r.0.len(), 3, "only limit + 1 are kept");
        assert_eq!(Reaches::decode(&r.encode()), Some(r));
    }
}
