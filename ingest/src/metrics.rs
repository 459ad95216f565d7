//! What the ingest stage counts beyond the [`cdp_bus::StageCounters`] every stage keeps: records
//! rejected per code and identifier values dropped per kind and reason. Labels are bounded (codes,
//! kind labels, reasons); the Prometheus exporter reads snapshots of these.

use crate::dropped::DroppedIdentifiers;
use crate::stage::BatchOutput;
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

#[derive(Debug, Default)]
pub struct IngestMetrics {
    inner: Mutex<Totals>,
}

#[derive(Debug, Default, Clone)]
struct Totals {
    rejected: BTreeMap<&'static str, u64>,
    dropped: DroppedIdentifiers,
}

impl IngestMetrics {
    /// Adds one batch's counts. Called once per batch, so the lock is uncontended.
    pub fn record(&self, batch: &BatchOutput) {
        let mut t = self.lock();
        for (code, n) in &batch.rejected {
            *t.rejected.entry(code).or_default() += n;
        }
        t.dropped.merge(&batch.dropped);
    }

    /// Records rejected so far, by [`crate::rejection`] code.
    pub fn rejected(&self) -> BTreeMap<&'static str, u64> {
        self.lock().rejected.clone()
    }

    /// Identifier values dropped so far.
    pub fn dropped(&self) -> DroppedIdentifiers {
        self.lock().dropped.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Totals> {
        // Counters stay meaningful even if a reader panicked while holding the lock.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}
