//! What the ingest stage counts beyond the [`cdp_bus::StageCounters`] every stage keeps, under
//! the names and labels the Prometheus exporter publishes:
//!
//! - [`RECORDS_TOTAL`] `{source, outcome}`: input records by source (`web`, `app`, `crm`,
//!   `media`, or `unknown` for a topic that is not a raw topic) and [`Outcome`];
//! - [`IDENTIFIERS_DROPPED_TOTAL`] `{kind, reason}`: identifier values dropped from accepted
//!   records, by kind label and reason code ([`DroppedIdentifiers`]);
//! - [`DUPLICATE_EVENTS_TOTAL`] `{source}`: events dropped as retries ([`crate::dedup`]);
//! - [`UNLINKED_EVENTS_TOTAL`] `{source}`: events whose identifiers were not linked for lack of
//!   identity consent;
//! - [`BATCH_DURATION_SECONDS`]: a histogram of the time from a batch's poll to its commit.
//!
//! Every label value comes from a fixed list, never from the payload. Rejections by code are
//! kept too (`rejected`), for the DLQ dashboards.

use crate::dropped::DroppedIdentifiers;
use crate::stage::BatchOutput;
use cdp_proto::Source;
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

pub const RECORDS_TOTAL: &str = "cdp_ingest_records_total";
pub const IDENTIFIERS_DROPPED_TOTAL: &str = "cdp_ingest_identifiers_dropped_total";
pub const DUPLICATE_EVENTS_TOTAL: &str = "cdp_ingest_duplicate_events_total";
pub const UNLINKED_EVENTS_TOTAL: &str = "cdp_ingest_unlinked_events_total";
pub const BATCH_DURATION_SECONDS: &str = "cdp_ingest_batch_duration_seconds";

/// Upper bounds (seconds) of the batch duration histogram's buckets; `+Inf` is implied.
pub const BATCH_DURATION_BUCKETS: [f64; 10] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// A histogram snapshot in Prometheus' form: cumulative counts per upper bound.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Observations in each bucket of [`BATCH_DURATION_BUCKETS`] (not cumulative), then `+Inf`.
    counts: [u64; 11],
    pub sum_seconds: f64,
    pub count: u64,
}

impl Histogram {
    pub fn observe(&mut self, seconds: f64) {
        let i = BATCH_DURATION_BUCKETS
            .iter()
            .position(|le| seconds <= *le)
            .unwrap_or(BATCH_DURATION_BUCKETS.len());
        self.counts[i] += 1;
        self.sum_seconds += seconds;
        self.count += 1;
    }

    /// `(upper bound, cumulative count)` per bucket, ending with `(+Inf, count)`.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        BATCH_DURATION_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.counts)
            .map(|(le, n)| {
                total += n;
                (le, total)
            })
            .collect()
    }
}

/// The `source` label of a record from a topic that is not one of the raw topics.
pub const UNKNOWN_SOURCE: &str = "unknown";

/// What became of an input record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// It yielded at least one signal.
    Accepted,
    /// It went to the DLQ.
    DeadLettered,
    /// Every event in it was a retry of one already passed on.
    Duplicate,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Outcome::Accepted, Outcome::DeadLettered, Outcome::Duplicate];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::Duplicate => "duplicate",
        }
    }
}

/// The `source` label values, in a stable order.
pub const SOURCE_LABELS: [&str; 5] = ["web", "app", "crm", "media", UNKNOWN_SOURCE];

fn source_index(source: Option<Source>) -> usize {
    match source {
        Some(Source::Web) => 0,
        Some(Source::App) => 1,
        Some(Source::Crm) => 2,
        Some(Source::Media) => 3,
        None => 4,
    }
}

/// Counts by `(source, outcome)`; every combination exists (as 0), so every series is exported
/// from the start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordCounts {
    counts: [[u64; 3]; 5],
}

impl RecordCounts {
    pub fn add(&mut self, source: Option<Source>, outcome: Outcome, n: u64) {
        self.counts[source_index(source)][outcome as usize] += n;
    }

    pub fn get(&self, source: Option<Source>, outcome: Outcome) -> u64 {
        self.counts[source_index(source)][outcome as usize]
    }

    /// `(source label, outcome label, count)` for every combination.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &'static str, u64)> + '_ {
        SOURCE_LABELS
            .iter()
            .enumerate()
            .flat_map(move |(s, label)| {
                Outcome::ALL
                    .iter()
                    .map(move |o| (*label, o.label(), self.counts[s][*o as usize]))
            })
    }

    pub fn merge(&mut self, other: &RecordCounts) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            for (a, b) in mine.iter_mut().zip(theirs.iter()) {
                *a += b;
            }
        }
    }
}

/// Counts by source label, for per-source event counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceCounts {
    counts: [u64; 5],
}

impl SourceCounts {
    pub fn add(&mut self, source: Option<Source>, n: u64) {
        self.counts[source_index(source)] += n;
    }

    pub fn get(&self, source: Option<Source>) -> u64 {
        self.counts[source_index(source)]
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// `(source label, count)` for every source label.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        SOURCE_LABELS
            .iter()
            .copied()
            .zip(self.counts.iter().copied())
    }

    pub fn merge(&mut self, other: &SourceCounts) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
    }
}

#[derive(Debug, Default)]
pub struct IngestMetrics {
    inner: Mutex<Totals>,
}

#[derive(Debug, Default, Clone)]
struct Totals {
    rejected: BTreeMap<&'static str, u64>,
    dropped: DroppedIdentifiers,
    records: RecordCounts,
    duplicates: SourceCounts,
    unlinked: SourceCounts,
    batch_duration: Histogram,
}

impl IngestMetrics {
    /// Adds the time one batch took from poll to commit.
    pub fn observe_batch(&self, elapsed: std::time::Duration) {
        self.lock().batch_duration.observe(elapsed.as_secs_f64());
    }

    /// Batch durations so far ([`BATCH_DURATION_SECONDS`]).
    pub fn batch_duration(&self) -> Histogram {
        self.lock().batch_duration.clone()
    }

    /// Adds one batch's counts. Called once per batch, so the lock is uncontended.
    pub fn record(&self, batch: &BatchOutput) {
        let mut t = self.lock();
        for (code, n) in &batch.rejected {
            *t.rejected.entry(code).or_default() += n;
        }
        t.dropped.merge(&batch.dropped);
        t.records.merge(&batch.outcomes);
        t.duplicates.merge(&batch.duplicates);
        t.unlinked.merge(&batch.unlinked);
    }

    /// Records rejected so far, by [`crate::rejection`] code.
    pub fn rejected(&self) -> BTreeMap<&'static str, u64> {
        self.lock().rejected.clone()
    }

    /// Identifier values dropped so far ([`IDENTIFIERS_DROPPED_TOTAL`]).
    pub fn dropped(&self) -> DroppedIdentifiers {
        self.lock().dropped.clone()
    }

    /// Input records by source and outcome ([`RECORDS_TOTAL`]).
    pub fn records(&self) -> RecordCounts {
        self.lock().records.clone()
    }

    /// Events dropped as retries, by source ([`DUPLICATE_EVENTS_TOTAL`]).
    pub fn duplicate_events(&self) -> SourceCounts {
        self.lock().duplicates.clone()
    }

    /// Events passed on without links for lack of identity consent ([`UNLINKED_EVENTS_TOTAL`]).
    pub fn unlinked_events(&self) -> SourceCounts {
        self.lock().unlinked.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Totals> {
        // Counters stay meaningful even if a reader panicked while holding the lock.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_combination_is_listed_with_bounded_values() {
        let mut c = RecordCounts::default();
        c.add(Some(Source::Crm), Outcome::DeadLettered, 2);
        c.add(None, Outcome::DeadLettered, 1);
        let all: Vec<_> = c.iter().collect();
        assert_eq!(all.len(), 15);
        assert!(all.contains(&("crm", "dead_lettered", 2)));
        assert!(all.contains(&("unknown", "dead_lettered", 1)));
        assert!(all.contains(&("web", "accepted", 0)));
        let mut d = RecordCounts::default();
        d.merge(&c);
        d.merge(&c);
        assert_eq!(d.get(Some(Source::Crm), Outcome::DeadLettered), 4);
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::default();
        for s in [0.0005, 0.003, 0.003, 2.0] {
            h.observe(s);
        }
        let c = h.cumulative();
        assert_eq!(c.len(), 11);
        assert_eq!(c[0], (0.001, 1));
        assert_eq!(c[2], (0.005, 3));
        assert_eq!(c[9], (1.0, 3));
        assert_eq!(c[10], (f64::INFINITY, 4));
        assert_eq!(h.count, 4);
        assert!((h.sum_seconds - 2.0065).abs() < 1e-9);
    }

    #[test]
    fn source_counts_add_and_merge() {
        let mut s = SourceCounts::default();
        s.add(Some(Source::Web), 3);
        let mut t = SourceCounts::default();
        t.merge(&s);
        t.add(Some(Source::App), 1);
        assert_eq!(t.get(Some(Source::Web)), 3);
        assert_eq!(t.total(), 4);
        assert_eq!(t.iter().count(), 5);
    }
}
