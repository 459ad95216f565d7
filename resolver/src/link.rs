//! Links: immutable records that two identifiers were asserted to belong together, and what the
//! resolver decided about it. The link log is the source of truth the union-find indexes.

use cdp_proto::{Identifier, Timestamp};
use serde::{Deserialize, Deserializer, Serialize};
use std::borrow::Cow;

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

/// The fields of a stored [`Link`] a replay of the whole log reads, borrowed from its stored
/// form (see [`crate::codec::decode_link_head`]): over millions of links, allocating every
/// link's strings cost more than deciding it.
#[derive(Debug)]
pub struct LinkHead<'a> {
    pub id: u64,
    pub tenant: Cow<'a, str>,
    pub a: EndRef<'a>,
    pub b: EndRef<'a>,
    pub rule: Cow<'a, str>,
    pub confidence: f64,
    /// `observed_at` in Unix milliseconds.
    pub observed_at_ms: i64,
    /// The tag of the [`LinkDecision`] (its reason is not read).
    pub decision: Cow<'a, str>,
    /// Whether the link carries evidence (a reader that needs it reads the link whole).
    pub has_evidence: bool,
}

/// An [`Identifier`] as a [`LinkHead`] borrows it.
#[derive(Debug, Deserialize)]
pub struct EndRef<'a> {
    #[serde(borrow)]
    pub kind: Cow<'a, str>,
    #[serde(borrow)]
    pub value: Cow<'a, str>,
}

/// A [`LinkHead`] as the JSON form of a link (written by older versions) holds it.
#[derive(Deserialize)]
pub(crate) struct LinkJsonHead<'a> {
    id: u64,
    #[serde(borrow)]
    tenant: Cow<'a, str>,
    #[serde(borrow)]
    a: EndRef<'a>,
    #[serde(borrow)]
    b: EndRef<'a>,
    #[serde(borrow)]
    rule: Cow<'a, str>,
    confidence: f64,
    #[serde(borrow)]
    observed_at: Cow<'a, str>,
    #[serde(borrow)]
    decision: Cow<'a, str>,
    #[serde(default, deserialize_with = "present")]
    evidence: bool,
}

impl<'a> LinkJsonHead<'a> {
    /// The head, if `observed_at` is a time.
    pub(crate) fn head(self) -> Option<LinkHead<'a>> {
        Some(LinkHead {
            id: self.id,
            tenant: self.tenant,
            a: self.a,
            b: self.b,
            rule: self.rule,
            confidence: self.confidence,
            observed_at_ms: self
                .observed_at
                .parse::<Timestamp>()
                .ok()?
                .timestamp_millis(),
            decision: self.decision,
            has_evidence: self.evidence,
        })
    }
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

impl LinkDecision {
    /// The tag the stored form names the decision by.
    pub fn tag(&self) -> &'static str {
        match self {
            LinkDecision::Accepted => "accepted",
            LinkDecision::Candidate => "candidate",
            LinkDecision::Refused(_) => "refused",
            LinkDecision::Removed(_) => "removed",
        }
    }
}
