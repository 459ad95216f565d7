//! The cohort and destination definitions the stage runs with, and swapping them while it runs
//! (`cdp` calls [`Activation::reload`] on SIGHUP). A reload is all or nothing: a config that does
//! not validate, compile, resolve its secrets or read its suppression lists is refused and the
//! running definitions stay.

use crate::cohort::Cohorts;
use crate::config::ActivationConfig;
use crate::destination::Destination;
use crate::frequency::FrequencyCaps;
use crate::priority::Priority;
use crate::suppression::Suppression;
use crate::{ActivationError, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Compiled cohorts, resolved destinations, and which destinations each cohort feeds.
#[derive(Debug)]
pub struct Definitions {
    pub cohorts: Cohorts,
    pub destinations: Vec<Destination>,
    /// Per cohort (same index as `cohorts.list`): indices into `destinations`.
    pub feeds: Vec<Vec<usize>>,
    /// Per destination: the cohorts feeding it, in cohort order.
    pub fed_by: Vec<Vec<usize>>,
    /// Identifiers each destination must never be sent.
    pub suppression: Suppression,
    /// Frequency caps per channel.
    pub caps: FrequencyCaps,
    /// Which cohorts compete for a person, and which wins.
    pub priority: Priority,
    /// Some expression reads a windowed counter: memberships can change as time passes.
    pub uses_windows: bool,
    /// Some expression reads `days_since_last_engagement`, which changes every day.
    pub uses_recency: bool,
}

impl Definitions {
    pub fn compile(config: &ActivationConfig) -> Result<Self> {
        config
            .validate()
            .map_err(|e| ActivationError::Config(e.to_string()))?;
        let cohorts = Cohorts::compile(&config.cohorts)?;
        let destinations = config
            .destinations
            .iter()
            .cloned()
            .map(Destination::new)
            .collect::<Result<Vec<_>>>()?;
        let feeds: Vec<Vec<usize>> = cohorts
            .list
            .iter()
            .map(|c| {
                c.config
                    .destinations
                    .iter()
                    .filter_map(|k| destinations.iter().position(|d| d.key() == k))
                    .collect()
            })
            .collect();
        let fed_by = (0..destinations.len())
            .map(|d| {
                (0..feeds.len())
                    .filter(|c| feeds[*c].contains(&d))
                    .collect()
            })
            .collect();
        let reads = |word: &str| config.cohorts.iter().any(|c| c.expression.contains(word));
        Ok(Self {
            uses_windows: reads("counts"),
            uses_recency: reads("days_since_last_engagement"),
            suppression: Suppression::compile(config)?,
            caps: FrequencyCaps::compile(config),
            priority: Priority::compile(&cohorts, &config.exclusive_groups),
            cohorts,
            destinations,
            feeds,
            fed_by,
        })
    }
}

/// What a reload changed, for the log line of the caller.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReloadSummary {
    pub cohorts: usize,
    pub destinations: usize,
    /// Settings that differ from the running ones but only take effect on restart (topics, group...).
    pub needs_restart: Vec<&'static str>,
}

/// The running definitions; shared by the stage and whoever reloads them.
#[derive(Debug)]
pub struct Activation {
    config: RwLock<ActivationConfig>,
    current: RwLock<Arc<Definitions>>,
    generation: AtomicU64,
}

impl Activation {
    pub fn new(config: &ActivationConfig) -> Result<Self> {
        Ok(Self {
            current: RwLock::new(Arc::new(Definitions::compile(config)?)),
            config: RwLock::new(config.clone()),
            generation: AtomicU64::new(0),
        })
    }

    /// The definitions to use for the next batch.
    pub fn current(&self) -> Arc<Definitions> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Grows by one with every accepted reload.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Replaces cohorts and destinations with those of `config`, or refuses with the reason and
    /// keeps the running ones. Cohorts are evaluated with the new definitions from the next batch
    /// on; members of a changed cohort are re-evaluated on their next update or timer.
    pub fn reload(&self, config: &ActivationConfig) -> Result<ReloadSummary> {
        let defs = Definitions::compile(config)?;
        let mut running = self.config.write().unwrap_or_else(|e| e.into_inner());
        let mut needs_restart = Vec::new();
        for (name, changed) in [
            ("group", running.group != config.group),
            (
                "profiles_topic",
                running.profiles_topic != config.profiles_topic,
            ),
            (
                "changes_topic",
                running.changes_topic != config.changes_topic,
            ),
            (
                "cohorts_topic",
                running.cohorts_topic != config.cohorts_topic,
            ),
            (
                "membership_topic",
                running.membership_topic != config.membership_topic,
            ),
            ("dlq_topic", running.dlq_topic != config.dlq_topic),
            ("batch_size", running.batch_size != config.batch_size),
            (
                "poll_timeout_ms",
                running.poll_timeout_ms != config.poll_timeout_ms,
            ),
            (
                "timer_interval_ms",
                running.timer_interval_ms != config.timer_interval_ms,
            ),
        ] {
            if changed {
                needs_restart.push(name);
            }
        }
        let summary = ReloadSummary {
            cohorts: defs.cohorts.list.len(),
            destinations: defs.destinations.len(),
            needs_restart,
        };
        running.cohorts = config.cohorts.clone();
        running.destinations = config.destinations.clone();
        running.suppression_lists = config.suppression_lists.clone();
        running.frequency_caps = config.frequency_caps.clone();
        running.exclusive_groups = config.exclusive_groups.clone();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(defs);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DestinationConfig;

    #[test]
    fn reload_swaps_definitions_and_refuses_invalid_ones() {
        let a = Activation::new(&ActivationConfig::default()).unwrap();
        assert_eq!(a.current().cohorts.list.len(), 4);

        let mut next = ActivationConfig::default();
        next.cohorts.truncate(1);
        next.cohorts[0].expression = "profile.total_touchpoints > 3".into();
        next.batch_size = 10;
        let summary = a.reload(&next).unwrap();
        assert_eq!(summary.cohorts, 1);
        assert_eq!(summary.needs_restart, ["batch_size"]);
        assert_eq!(a.generation(), 1);
        assert_eq!(
            a.current().cohorts.list[0].config.expression,
            "profile.total_touchpoints > 3"
        );

        let mut bad = next.clone();
        bad.cohorts[0].expression = "profile.total_touchpoints >".into();
        let err = a.reload(&bad).unwrap_err().to_string();
        assert!(err.contains("high_intent"), "{err}");

        let mut missing_secret = next.clone();
        let mut hook = DestinationConfig::webhook("crm", "http://127.0.0.1:1/");
        hook.secret_env = "CDP_TEST_SECRET_THAT_IS_NOT_SET".into();
        missing_secret.destinations.push(hook);
        let err = a.reload(&missing_secret).unwrap_err().to_string();
        assert!(err.contains("CDP_TEST_SECRET_THAT_IS_NOT_SET"), "{err}");

        let mut unknown = next.clone();
        unknown.cohorts[0].destinations = vec!["nowhere".into()];
        let err = a.reload(&unknown).unwrap_err().to_string();
        assert!(err.contains("cohorts[high_intent].destinations"), "{err}");

        assert_eq!(a.generation(), 1, "refused reloads change nothing");
        assert_eq!(
            a.current().cohorts.list[0].config.expression,
            "profile.total_touchpoints > 3"
        );
    }

    #[test]
    fn feeds_and_time_sensitivity_follow_the_expressions() {
        let d = Definitions::compile(&ActivationConfig::default()).unwrap();
        assert!(d.feeds.iter().all(|f| f == &[0]));
        assert!(d.uses_windows);
        assert!(!d.uses_recency);
    }
}
