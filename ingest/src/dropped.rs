//! Identifier values ingest refused while keeping the event: placeholders (`"null"` user ids,
//! `test@test.com`), all-zero advertising ids, ad ids of users who turned ad tracking off,
//! malformed emails and phones. An event loses such a value, not its other identifiers, and each
//! loss is counted here by identifier kind and reason, so an operator can see a source going bad.

use cdp_proto::IdentifierKind;
use std::collections::BTreeMap;

/// Reason for an advertising id present in the payload but not used because the user limited
/// ad tracking (`adTrackingEnabled: false`, `is_lat`, `tracking_limited`).
pub const AD_TRACKING_DISABLED: &str = "ad_tracking_disabled";

/// Counts of dropped identifier values, keyed by `(kind, reason)`. Both parts are bounded labels:
/// the kind's metric label and a [`cdp_proto::NormalizeError::code`] or [`AD_TRACKING_DISABLED`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DroppedIdentifiers {
    counts: BTreeMap<(&'static str, &'static str), u64>,
    /// Events whose identifiers were kept but not linked, for lack of identity consent.
    unlinked: u64,
}

impl DroppedIdentifiers {
    pub fn record(&mut self, kind: &IdentifierKind, reason: &'static str) {
        *self
            .counts
            .entry((kind.metric_label(), reason))
            .or_default() += 1;
    }

    /// How many values of `kind` (a metric label such as `"device_id"`) were dropped for `reason`.
    pub fn get(&self, kind: &str, reason: &str) -> u64 {
        self.counts
            .iter()
            .filter(|((k, r), _)| *k == kind && *r == reason)
            .map(|(_, n)| *n)
            .sum()
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// `(kind, reason, count)` in a stable order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &'static str, u64)> + '_ {
        self.counts.iter().map(|((k, r), n)| (*k, *r, *n))
    }

    /// Counts an event whose identifiers were passed on without links (identity consent denied).
    pub fn record_unlinked(&mut self) {
        self.unlinked += 1;
    }

    /// Events whose identifiers were passed on without links.
    pub fn unlinked(&self) -> u64 {
        self.unlinked
    }

    pub fn merge(&mut self, other: &DroppedIdentifiers) {
        self.unlinked += other.unlinked;
        for ((k, r), n) in &other.counts {
            *self.counts.entry((k, r)).or_default() += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_kind_and_reason_and_merges() {
        let mut a = DroppedIdentifiers::default();
        a.record(&IdentifierKind::UserId, "blocked");
        a.record(&IdentifierKind::UserId, "blocked");
        a.record(&IdentifierKind::DeviceId, AD_TRACKING_DISABLED);
        let mut b = DroppedIdentifiers::default();
        b.record(&IdentifierKind::UserId, "blocked");
        b.record(&IdentifierKind::Custom("member_no".into()), "empty");
        b.merge(&a);
        assert_eq!(b.get("user_id", "blocked"), 3);
        assert_eq!(b.get("device_id", AD_TRACKING_DISABLED), 1);
        assert_eq!(b.get("custom", "empty"), 1);
        assert_eq!(b.total(), 5);
        assert_eq!(b.iter().count(), 3);
    }
}
