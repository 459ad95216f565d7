//! The log abstraction every stage talks through: keyed records with headers on topics,
//! partitions and offsets, consumed by groups that store how far they got.
//!
//! Two backends implement it: [`embedded::EmbeddedBus`] (RocksDB in the process, the default, so
//! `cdp demo` needs nothing else running) and [`kafka::KafkaBus`] (rdkafka against a real cluster).
//! Stages are written once against the traits here and run unchanged on either.
//!
//! The contract is at-least-once: a consumer commits a position only after the outputs of the
//! records before it were flushed, so a crash replays, never loses.

pub mod embedded;
pub mod kafka;
mod partitioner;
mod record;
pub mod stats;

pub use partitioner::partition_for_key;
pub use record::{OutRecord, Record};
pub use stats::StageCounters;

use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("storage error: {0}")]
    Storage(String),
    #[error("kafka error: {0}")]
    Kafka(String),
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    #[error("invalid topic name {0:?}: use letters, digits, '.', '_' and '-'")]
    InvalidTopicName(String),
    #[error("corrupt record in {topic}/{partition}@{offset}")]
    Corrupt {
        topic: String,
        partition: i32,
        offset: i64,
    },
    #[error("delivery failed for {failed} record(s): {reason}")]
    Delivery { failed: usize, reason: String },
}

pub type Result<T, E = BusError> = std::result::Result<T, E>;

/// A topic and its partition count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub partitions: i32,
}

/// Where a consumer starts on a partition for which its group has no stored position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    #[default]
    Earliest,
    Latest,
}

/// How to consume.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    pub group: String,
    pub topics: Vec<String>,
    pub start: StartFrom,
    /// `false` for throw-away readers (`cdp topic read`): positions are never stored.
    pub commit: bool,
}

impl ConsumerOptions {
    pub fn group(group: impl Into<String>, topics: &[&str]) -> Self {
        Self {
            group: group.into(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            start: StartFrom::Earliest,
            commit: true,
        }
    }
}

/// Next offset to read, per (topic, partition). What a consumer commits.
pub type Positions = BTreeMap<(String, i32), i64>;

/// Records the positions after `records` into `positions` (the offset after the highest seen).
pub fn advance(positions: &mut Positions, records: &[Record]) {
    for r in records {
        let next = r.offset + 1;
        let slot = positions
            .entry((r.topic.clone(), r.partition))
            .or_insert(next);
        if next > *slot {
            *slot = next;
        }
    }
}

/// A log backend.
pub trait Bus: Send + Sync {
    /// Creates `name` with `partitions` partitions. Creating an existing topic is not an error.
    fn create_topic(&self, name: &str, partitions: i32) -> Result<()>;
    fn topics(&self) -> Result<Vec<TopicInfo>>;
    fn producer(&self) -> Result<Box<dyn Producer>>;
    fn consumer(&self, options: ConsumerOptions) -> Result<Box<dyn Consumer>>;
    /// Records in `topics` not yet committed by `group` (end offset minus committed position).
    fn lag(&self, group: &str, topics: &[String]) -> Result<u64>;
    /// End offset (next offset to be written) of every partition of `topic`.
    fn end_offsets(&self, topic: &str) -> Result<Vec<i64>>;
}

/// Writes records. Records are durable and visible to consumers once `flush` returns `Ok`.
pub trait Producer: Send {
    fn send(&mut self, record: OutRecord) -> Result<()>;
    /// Blocks until every record sent so far is acknowledged; fails if any was not.
    fn flush(&mut self) -> Result<()>;
}

/// Reads records of a group's topics.
pub trait Consumer: Send {
    /// Up to `max` records, waiting at most `timeout` for the first.
    fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Record>>;
    /// Stores `positions` (next offsets) for the group. Call after the outputs of the records
    /// before them are flushed.
    fn commit(&mut self, positions: &Positions) -> Result<()>;
    /// Commits what was stored and leaves the group.
    fn close(self: Box<Self>) -> Result<()>;
}

/// Topic names shared by both backends' rules (Kafka's legal characters, 249 at most).
pub fn validate_topic_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(BusError::InvalidTopicName(name.to_string()))
    }
}
