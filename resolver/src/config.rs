//! Resolver configuration: where it reads and writes, and the merge policy.

use crate::policy::PolicyConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResolverConfig {
    /// Consumer group on the signals topic.
    pub group: String,
    pub signals_topic: String,
    /// Graph commands (`forget`, `unmerge`), applied in order with the signals.
    pub commands_topic: String,
    pub changes_topic: String,
    pub profiles_topic: String,
    pub dlq_topic: String,
    /// Records read per poll, and at most applied per atomic batch.
    pub batch_size: usize,
    /// What a batch may take, applying and committing (milliseconds): it stops taking signals
    /// when the time spent plus the expected cost of committing what it touched reaches this,
    /// is committed and published, and the rest of the poll goes to the next batch
    /// ([`crate::pacer`]). 0 = only `batch_size` cuts.
    pub max_batch_ms: u64,
    pub poll_timeout_ms: u64,
    pub policy: PolicyConfig,
    /// Probabilistic matching of person records (names, birth date, address).
    pub matching: crate::matching::MatchingConfig,
    /// RocksDB's memory.
    pub storage: crate::store::StorageConfig,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        Self {
            group: "cdp-resolver".into(),
            signals_topic: cdp_proto::topics::SIGNALS.into(),
            commands_topic: crate::command::COMMANDS_TOPIC.into(),
            changes_topic: cdp_proto::topics::IDENTITY_CHANGES.into(),
            profiles_topic: cdp_proto::topics::PROFILES.into(),
            dlq_topic: cdp_proto::topics::DLQ.into(),
            batch_size: 2000,
            max_batch_ms: 4,
            poll_timeout_ms: 20,
            policy: PolicyConfig::default(),
            matching: crate::matching::MatchingConfig::default(),
            storage: crate::store::StorageConfig::default(),
        }
    }
}

impl ResolverConfig {
    /// How long a batch may take ([`Self::max_batch_ms`]).
    pub fn batch_budget(&self) -> Option<std::time::Duration> {
        (self.max_batch_ms > 0).then(|| std::time::Duration::from_millis(self.max_batch_ms))
    }

    /// What the resolver consumes, in one group: signals and the graph commands applied in
    /// order with them.
    pub fn input_topics(&self) -> [&str; 2] {
        [self.signals_topic.as_str(), self.commands_topic.as_str()]
    }
}
