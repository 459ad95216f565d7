//! The log abstraction every stage talks through: keyed records with headers on topics,
//! partitions and offsets, consumed by groups that store how far they got.
//!
//! Two backends implement it: [`embedded::EmbeddedBus`] (RocksDB in the process, the default, so
//! `cdp demo` needs nothing else running) and [`kafka::KafkaBus`] (rdkafka against a real cluster).
//! Stages are written once against the traits here and run unchanged on either.
//!
//! The contract is at-least-once: a consumer commits a position only after the outputs of the
//! records before it were flushed, so a crash replays, never loses.

pub mod ahead;
pub mod embedded;
pub mod kafka;
pub mod landing;
mod partitioner;
mod record;
pub mod rocksdb_memtable;
pub mod rocksdb_stats;
pub mod stats;
pub mod write_batch;

pub use partitioner::partition_for_key;
pub use record::{OutRecord, Record};
pub use rocksdb_memtable::hash_indexed_memtable;
pub use rocksdb_stats::RocksDbStats;
pub use stats::StageCounters;
pub use write_batch::sized_write_batch;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, thiserror::Error)]
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
    #[error("reading the stored position of {topic}/{partition}: {reason}")]
    Positions {
        topic: String,
        partition: i32,
        reason: String,
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

/// Where a consumer starts on each partition it is assigned.
#[derive(Clone, Default)]
pub enum StartFrom {
    /// At the group's committed position; at the beginning where the group has none.
    #[default]
    Earliest,
    /// At the group's committed position; at the end where the group has none.
    Latest,
    /// Where the stage's own state says, ignoring the group's committed positions.
    ///
    /// For stages that store their input offsets with their state (exactly-once state): when
    /// that state is behind the group (a fresh volume, or one restored from an older backup),
    /// starting at the group's position would silently skip history. Every partition the
    /// consumer is assigned — at creation and on every later rebalance, including incremental
    /// (cooperative-sticky) ones — starts at the offset [`PositionSource::position`] returns,
    /// or at the beginning of the partition when it returns `None`. An offset outside the
    /// partition (state that belongs to another log) restarts at the beginning, as an
    /// out-of-range committed offset does: re-reading is safe, skipping is not. Commits happen
    /// as before, so lag and monitoring stay right; they just do not decide where reading starts.
    ///
    /// If the source fails, the consumer reads nothing more: creating it fails, or, when the
    /// failure comes with a later rebalance, every later `poll` returns [`BusError::Positions`].
    Positions(Arc<dyn PositionSource>),
}

impl fmt::Debug for StartFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Earliest => f.write_str("Earliest"),
            Self::Latest => f.write_str("Latest"),
            Self::Positions(_) => f.write_str("Positions(..)"),
        }
    }
}

/// A stage's own record of where it is in its inputs, consulted by consumers started with
/// [`StartFrom::Positions`] whenever they are assigned a partition.
///
/// Called on the consumer's thread while it polls (on Kafka, from the rebalance callback), so
/// it should be a quick read of local state.
pub trait PositionSource: Send + Sync {
    /// The next offset to read on `topic`/`partition`, or `None` when the state has nothing for
    /// that partition (reading then starts at its beginning).
    fn position(
        &self,
        topic: &str,
        partition: i32,
    ) -> std::result::Result<Option<i64>, Box<dyn std::error::Error + Send + Sync>>;
}

/// A fixed set of positions: partitions not in the map start at the beginning.
impl PositionSource for Positions {
    fn position(
        &self,
        topic: &str,
        partition: i32,
    ) -> std::result::Result<Option<i64>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(self.get(&(topic.to_string(), partition)).copied())
    }
}

/// The positions a stateful stage records for every partition of `topics`, read from its state
/// with `stored` (the next offset to apply, or `None`). A snapshot is enough for
/// [`StartFrom::Positions`]: the state only moves ahead of it, and a stage skips records its state
/// already holds, so starting from an older position re-reads but never loses.
pub fn stored_positions<E: From<BusError>>(
    bus: &dyn Bus,
    topics: &[&str],
    stored: impl Fn(&str, i32) -> std::result::Result<Option<i64>, E>,
) -> std::result::Result<Positions, E> {
    let mut positions = Positions::new();
    for info in bus.topics()? {
        if !topics.contains(&info.name.as_str()) {
            continue;
        }
        for partition in 0..info.partitions {
            if let Some(next) = stored(&info.name, partition)? {
                positions.insert((info.name.clone(), partition), next);
            }
        }
    }
    Ok(positions)
}

/// Records of `topics` a stateful stage has not applied yet, by its own stored positions
/// (`stored`, as for [`stored_positions`]) rather than its group's commits.
pub fn state_lag<E: From<BusError>>(
    bus: &dyn Bus,
    topics: &[&str],
    stored: impl Fn(&str, i32) -> std::result::Result<Option<i64>, E>,
) -> std::result::Result<u64, E> {
    let mut lag = 0;
    for topic in topics {
        for (partition, end) in bus.end_offsets(topic)?.into_iter().enumerate() {
            let partition = i32::try_from(partition).unwrap_or(i32::MAX);
            let next = stored(topic, partition)?.unwrap_or(0);
            lag += u64::try_from(end - next).unwrap_or(0);
        }
    }
    Ok(lag)
}

/// Asks `source` where `topic`/`partition` starts, as a bus error naming the partition if it fails.
pub(crate) fn stored_position(
    source: &dyn PositionSource,
    topic: &str,
    partition: i32,
) -> Result<Option<i64>> {
    source
        .position(topic, partition)
        .map_err(|e| BusError::Positions {
            topic: topic.to_string(),
            partition,
            reason: e.to_string(),
        })
}

/// How to consume.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    pub group: String,
    pub topics: Vec<String>,
    /// Where reading starts on each assigned partition; see [`StartFrom::Positions`] for
    /// stages that keep their input offsets in their own state.
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
    /// Size and compaction figures of the backend's local RocksDB, where it keeps one.
    fn rocksdb_stats(&self) -> Option<RocksDbStats> {
        None
    }
    /// Deletes the records of `topic` written before `cutoff_ms` and returns how many went, where
    /// the backend keeps its own log. A Kafka cluster applies each topic's `retention.ms`
    /// itself, so this does nothing there.
    fn expire(&self, _topic: &str, _cutoff_ms: i64) -> Result<u64> {
        Ok(0)
    }
    /// Ends every poll waiting for records now, with what it has (perhaps nothing): a process
    /// shutting down calls it so that its stages see the request at once instead of at the
    /// end of their poll timeouts. Polls begun afterwards wait as usual. A Kafka consumer's
    /// poll is bounded by its timeout alone, so this does nothing there.
    fn wake_consumers(&self) {}
}

/// Writes records. Records are durable and visible to consumers once `flush` returns `Ok`.
pub trait Producer: Send {
    fn send(&mut self, record: OutRecord) -> Result<()>;
    /// Blocks until every record sent so far is acknowledged; fails if any was not.
    fn flush(&mut self) -> Result<()>;
    /// Flushes, and with `Some((group, positions))` stores the positions as the group's in the
    /// same atomic write where the bus can: then a crash keeps both the records and the
    /// positions, or neither. Returns whether it stored them; if not (the default: flush only),
    /// the caller commits them through its consumer once this returns.
    fn flush_with_positions(&mut self, positions: Option<(&str, &Positions)>) -> Result<bool> {
        let _ = positions;
        self.flush()?;
        Ok(false)
    }
    /// [`Self::flush_with_positions`] without waiting for this write to land: it returns once
    /// every earlier write has landed (failing with the first earlier write's error, in which
    /// case this one is not started), and the next flush of any kind waits for this one. A
    /// caller that deletes what it sent once delivered does so for the writes before, after
    /// this returns; a crash loses at most the write in flight, its records and positions
    /// together. Returns whether the positions ride with the write; a bus that cannot store
    /// them so returns `false` only once the write has landed, as the caller then commits them
    /// through its consumer. Default: [`Self::flush_with_positions`], landed on return.
    fn flush_behind(&mut self, positions: Option<(&str, &Positions)>) -> Result<bool> {
        self.flush_with_positions(positions)
    }
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
