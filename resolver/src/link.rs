//! Links: immutable records that two identifiers were asserted to belong together, and what the
//! resolver decided about it. The link log is the source of truth the union-find indexes.

use cdp_proto::{Identifier, Timestamp};
use serde::{Deserialize, Serialize};

/// What the resolver did with a link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "decision", content = "reason")]
pub enum LinkDecision {
    /// The link joined (or already was within) one profile.
    Accepted,
    /// Below the rule's merge threshold: kept for consumers with a lower threshold.
    Candidate,
    /// The merge policy refused it; the reason is a stable code.
    Refused(String),
    /// An operator took it out (`unmerge`); the reason names the command. Seeing the same
    /// assertion again does not bring it back.
    Removed(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Link {
    pub id: u64,
    pub tenant: String,
    pub a: Identifier,
    pub b: Identifier,
    pub rule: String,
    pub confidence: f64,
    pub observed_at: Timestamp,
    pub signal_id: String,
    #[serde(flatten)]
    pub decision: LinkDecision,
    /// For probabilistic links: the match probability (also the confidence), the model version
    /// and what each compared field contributed. Levels, not values, so no PII is kept here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<crate::matching::model::Score>,
}
