//! Cutting a poll into batches that each take about `max_batch_ms` at most, applying and
//! committing together. A batch's closing work (versions, profile updates, encoding, the write)
//! grows with the profiles it touched, so the pacer stops taking signals once the time spent
//! applying plus the expected closing time of what has been touched reaches the budget. The
//! closing cost per profile is learnt from the batches before: heavy stretches of input (each
//! signal a different large profile) make batches smaller rather than slower.

use crate::config::ResolverConfig;
use std::time::Duration;

/// Closing cost per touched profile assumed before any batch has been measured.
const INITIAL_PER_PROFILE: Duration = Duration::from_micros(20);

/// Weight of the newest batch in the moving average of the closing cost (1/8).
const SMOOTHING_SHIFT: u32 = 3;

#[derive(Debug, Clone)]
pub struct BatchPacer {
    budget: Option<Duration>,
    /// Closing time per touched profile, a moving average over recent batches (nanoseconds).
    per_profile_ns: u64,
}

impl BatchPacer {
    pub fn new(config: &ResolverConfig) -> Self {
        Self {
            budget: config.batch_budget(),
            per_profile_ns: INITIAL_PER_PROFILE.as_nanos() as u64,
        }
    }

    /// Whether a batch that has been applying for `elapsed` and touched `profiles` profiles
    /// should take no more signals.
    pub fn full(&self, elapsed: Duration, profiles: usize) -> bool {
        self.budget.is_some_and(|budget| {
            let closing = Duration::from_nanos(self.per_profile_ns.saturating_mul(profiles as u64));
            elapsed + closing >= budget
        })
    }

    /// Learns from a batch that touched `profiles` profiles and took `closing` to finish and
    /// commit.
    pub fn observe(&mut self, profiles: usize, closing: Duration) {
        if profiles == 0 {
            return;
        }
        let sample = (closing.as_nanos() / profiles as u128).min(u128::from(u64::MAX)) as u64;
        let old = self.per_profile_ns;
        // new = old + (sample - old) / 8, in integers either side of old.
        self.per_profile_ns = if sample >= old {
            old + ((sample - old) >> SMOOTHING_SHIFT)
        } else {
            old - ((old - sample) >> SMOOTHING_SHIFT)
        };
    }

    /// The closing time per touched profile the pacer currently expects.
    pub fn per_profile(&self) -> Duration {
        Duration::from_nanos(self.per_profile_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pacer(ms: u64) -> BatchPacer {
        BatchPacer::new(&ResolverConfig {
            max_batch_ms: ms,
            ..ResolverConfig::default()
        })
    }

    #[test]
    fn a_batch_is_full_when_applying_plus_the_expected_closing_reaches_the_budget() {
        let p = pacer(4);
        // 20 µs a profile: 100 profiles close in 2 ms.
        assert!(!p.full(Duration::from_millis(1), 100));
        assert!(p.full(Duration::from_millis(2), 100));
        assert!(p.full(Duration::from_millis(4), 0));
        assert!(!p.full(Duration::from_millis(3), 0));
    }

    #[test]
    fn no_budget_never_cuts() {
        assert!(!pacer(0).full(Duration::from_secs(60), 1_000_000));
    }

    #[test]
    fn the_closing_cost_follows_what_batches_measure() {
        let mut p = pacer(4);
        for _ in 0..100 {
            p.observe(50, Duration::from_millis(5)); // 100 µs a profile
        }
        let learnt = p.per_profile().as_micros();
        assert!((95..=100).contains(&learnt), "{learnt} µs");
        // Now 35 profiles are expected to take about 3.4 ms to close.
        assert!(p.full(Duration::from_millis(1), 35));
        assert!(!p.full(Duration::from_micros(500), 35));
        for _ in 0..100 {
            p.observe(50, Duration::from_micros(250)); // 5 µs a profile
        }
        let learnt = p.per_profile().as_micros();
        assert!((5..=10).contains(&learnt), "{learnt} µs");
        p.observe(0, Duration::from_secs(1));
        assert_eq!(
            p.per_profile().as_micros(),
            learnt,
            "an empty batch teaches nothing"
        );
    }
}
