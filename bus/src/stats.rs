//! Counters every stage keeps about its own loop, read by `cdp demo`'s report and by the
//! Prometheus exporter. Plain atomics: the stage thread writes, anyone reads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Default)]
pub struct StageCounters {
    /// Records read from input topics.
    pub consumed: AtomicU64,
    /// Records written to output topics (not counting the DLQ).
    pub produced: AtomicU64,
    /// Records sent to the DLQ.
    pub dead_lettered: AtomicU64,
    /// Time spent processing batches (not waiting for input), in nanoseconds.
    pub busy_nanos: AtomicU64,
    /// Batches processed.
    pub batches: AtomicU64,
    /// Whether the stage's last poll found nothing to read. A stage publishes what a batch
    /// produced before it polls again, so an idle stage has published everything it read.
    idle: AtomicBool,
}

impl StageCounters {
    pub fn record_batch(&self, consumed: u64, produced: u64, dead_lettered: u64, busy: Duration) {
        self.consumed.fetch_add(consumed, Ordering::Relaxed);
        self.produced.fetch_add(produced, Ordering::Relaxed);
        self.dead_lettered
            .fetch_add(dead_lettered, Ordering::Relaxed);
        self.busy_nanos
            .fetch_add(busy.as_nanos() as u64, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
    }

    /// Notes what a poll returned (see [`Self::idle`]).
    pub fn polled(&self, records: usize) {
        self.idle.store(records == 0, Ordering::SeqCst);
    }

    /// Whether the last poll found nothing: everything the stage read before it is applied
    /// and published.
    pub fn idle(&self) -> bool {
        self.idle.load(Ordering::SeqCst)
    }

    pub fn consumed(&self) -> u64 {
        self.consumed.load(Ordering::Relaxed)
    }

    pub fn produced(&self) -> u64 {
        self.produced.load(Ordering::Relaxed)
    }

    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.load(Ordering::Relaxed)
    }

    pub fn busy(&self) -> Duration {
        Duration::from_nanos(self.busy_nanos.load(Ordering::Relaxed))
    }

    /// Records consumed per second of busy time: the stage's own throughput.
    pub fn rate_per_busy_second(&self) -> f64 {
        let secs = self.busy().as_secs_f64();
        if secs > 0.0 {
            self.consumed() as f64 / secs
        } else {
            0.0
        }
    }
}
