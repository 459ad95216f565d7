//! The Kafka backend: [`KafkaBus`] maps the bus traits onto rdkafka clients against a real cluster.
//!
//! It owns the client settings the bus contract depends on: idempotent `acks=all` producers with
//! the Java-compatible murmur2 partitioner (so a key lands where [`partition_for_key`] says),
//! consumers that never store offsets on their own (`enable.auto.offset.store=false`, no
//! auto-commit) and commit exactly the positions a stage hands to [`Consumer::commit`],
//! synchronously, so a restarted group member resumes where the last commit left off — unless
//! the stage started it from its own positions ([`StartFrom::Positions`]), which the consumer
//! context applies to every partition it is assigned, in the rebalance callback.
//!
//! [`partition_for_key`]: crate::partition_for_key

use crate::{
    stored_position, validate_topic_name, Bus, BusError, Consumer, ConsumerOptions, OutRecord,
    PositionSource, Positions, Producer, Record, Result, StartFrom, TopicInfo,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, RebalanceProtocol,
};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, DeliveryResult, Header, Headers, Message, OwnedHeaders};
use rdkafka::metadata::Metadata;
use rdkafka::producer::{BaseRecord, Producer as _, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How to reach the cluster. Every field has a default that works against a local broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated (`host:port,host:port`).
    pub brokers: String,
    /// Extra librdkafka properties given to every client (SASL, TLS, `client.id`, tuning).
    /// They cannot override the settings the bus contract depends on (acks, idempotence,
    /// partitioner, group id, offset storage, assignment strategy).
    pub properties: BTreeMap<String, String>,
    /// Replication factor of topics created by [`Bus::create_topic`].
    pub replication_factor: i32,
    /// Upper bound for admin and metadata requests and for a topic to become visible.
    pub operation_timeout_ms: u64,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".to_string(),
            properties: BTreeMap::new(),
            replication_factor: 1,
            operation_timeout_ms: 30_000,
        }
    }
}

/// The Kafka backend. Holds one admin client for topic management and metadata; producers and
/// consumers are separate librdkafka clients, one per stage thread.
pub struct KafkaBus {
    config: KafkaConfig,
    admin: AdminClient<BusContext>,
}

impl KafkaBus {
    /// Creates the admin client. librdkafka connects lazily, so this succeeds without a reachable
    /// broker; the first call that needs one reports the failure.
    pub fn new(config: KafkaConfig) -> Result<Self> {
        let admin = client_config(&config, &[]).create_with_context(BusContext::default())?;
        Ok(Self { config, admin })
    }

    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.operation_timeout_ms)
    }

    fn metadata(&self) -> Result<Metadata> {
        // Always ask for every topic: a metadata request naming a missing topic can create it
        // on brokers with auto-creation enabled.
        Ok(self.admin.inner().fetch_metadata(None, self.timeout())?)
    }

    /// Partition count of each of `topics`, failing on the first one that does not exist.
    fn partition_counts(&self, topics: &[String]) -> Result<Vec<(String, i32)>> {
        let metadata = self.metadata()?;
        topics
            .iter()
            .map(|name| {
                metadata
                    .topics()
                    .iter()
                    .find(|t| t.name() == name && !t.partitions().is_empty())
                    .map(|t| (name.clone(), t.partitions().len() as i32))
                    .ok_or_else(|| BusError::UnknownTopic(name.clone()))
            })
            .collect()
    }

    /// Waits until `name` shows up in metadata: on a multi-broker cluster CreateTopics can
    /// return before every broker knows the topic, and a consumer created right after would
    /// be told it does not exist.
    fn await_topic(&self, name: &str) -> Result<()> {
        let deadline = Instant::now() + self.timeout();
        loop {
            let metadata = self.metadata()?;
            let visible = metadata
                .topics()
                .iter()
                .any(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty());
            if visible {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(BusError::Kafka(format!(
                    "topic {name:?} was created but is not visible in metadata after {:?}",
                    self.timeout()
                )));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn high_watermark(&self, topic: &str, partition: i32) -> Result<i64> {
        let (_, high) = self
            .admin
            .inner()
            .fetch_watermarks(topic, partition, self.timeout())?;
        Ok(high)
    }
}

impl Bus for KafkaBus {
    fn create_topic(&self, name: &str, partitions: i32) -> Result<()> {
        validate_topic_name(name)?;
        if partitions < 1 {
            return Err(BusError::Kafka(format!(
                "topic {name:?} needs at least one partition"
            )));
        }
        let topic = NewTopic::new(
            name,
            partitions,
            TopicReplication::Fixed(self.config.replication_factor),
        );
        let options = AdminOptions::new()
            .operation_timeout(Some(self.timeout()))
            .request_timeout(Some(self.timeout()));
        for result in block_on(self.admin.create_topics([&topic], &options))? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(BusError::Kafka(format!("creating topic {topic:?}: {code}")))
                }
            }
        }
        self.await_topic(name)
    }

    fn topics(&self) -> Result<Vec<TopicInfo>> {
        let metadata = self.metadata()?;
        let mut topics: Vec<TopicInfo> = metadata
            .topics()
            .iter()
            // `__consumer_offsets` and friends belong to the cluster, not to cdp.
            .filter(|t| !t.name().starts_with("__") && !t.partitions().is_empty())
            .map(|t| TopicInfo {
                name: t.name().to_string(),
                partitions: t.partitions().len() as i32,
            })
            .collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(topics)
    }

    fn producer(&self) -> Result<Box<dyn Producer>> {
        let producer = client_config(
            &self.config,
            &[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                // Java-compatible murmur2 for keyed records (what `partition_for_key` computes).
                ("partitioner", "murmur2_random"),
            ],
        )
        .create_with_context(DeliveryTracker::default())?;
        Ok(Box::new(KafkaProducer { producer }))
    }

    fn consumer(&self, options: ConsumerOptions) -> Result<Box<dyn Consumer>> {
        let partitions = self.partition_counts(&options.topics)?;
        // For stored positions, the fallback should one fall outside the log after all (see
        // `start_offset`): re-reading beats skipping.
        let reset = match options.start {
            StartFrom::Earliest | StartFrom::Positions(_) => "earliest",
            StartFrom::Latest => "latest",
        };
        let positions = match &options.start {
            StartFrom::Positions(source) => Some(StoredStart {
                source: source.clone(),
                timeout: self.timeout(),
            }),
            _ => None,
        };
        // A throw-away reader gets a group of its own so it can never disturb the positions of
        // the group it was named after.
        let group = if options.commit {
            options.group.clone()
        } else {
            reader_group(&options.group)
        };
        let consumer: BaseConsumer<BusContext> = client_config(
            &self.config,
            &[
                ("group.id", &group),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", reset),
                ("partition.assignment.strategy", "cooperative-sticky"),
            ],
        )
        .create_with_context(BusContext {
            positions,
            failure: Mutex::default(),
        })?;

        if options.commit {
            let topics: Vec<&str> = options.topics.iter().map(String::as_str).collect();
            consumer.subscribe(&topics)?;
        } else {
            // Readers take every partition directly: no group join to wait for, and the start
            // is resolved to concrete offsets now, so a `Latest` reader sees exactly what is
            // written after it was created.
            let mut assignment = TopicPartitionList::new();
            for (topic, count) in &partitions {
                for p in 0..*count {
                    let start = match &options.start {
                        StartFrom::Earliest => Offset::Beginning,
                        StartFrom::Latest => Offset::Offset(self.high_watermark(topic, p)?),
                        StartFrom::Positions(source) => {
                            start_offset(stored_position(source.as_ref(), topic, p)?, || {
                                self.admin
                                    .inner()
                                    .fetch_watermarks(topic, p, self.timeout())
                            })
                        }
                    };
                    assignment.add_partition_offset(topic, p, start)?;
                }
            }
            consumer.assign(&assignment)?;
        }
        Ok(Box::new(KafkaConsumer {
            consumer,
            commit: options.commit,
            deferred: None,
        }))
    }

    fn lag(&self, group: &str, topics: &[String]) -> Result<u64> {
        let partitions = self.partition_counts(topics)?;
        let mut query = TopicPartitionList::new();
        for (topic, count) in &partitions {
            for p in 0..*count {
                query.add_partition(topic, p);
            }
        }
        // Committed offsets are per group, so asking needs a client that carries the group id.
        // It never subscribes, so it does not join (or disturb) the group.
        let reader: BaseConsumer<BusContext> = client_config(
            &self.config,
            &[("group.id", group), ("enable.auto.commit", "false")],
        )
        .create_with_context(BusContext::default())?;
        let committed = reader.committed_offsets(query, self.timeout())?;
        let mut lag = 0u64;
        for elem in committed.elements() {
            let position = match elem.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            };
            let end = self.high_watermark(elem.topic(), elem.partition())?;
            lag += (end - position).max(0) as u64;
        }
        Ok(lag)
    }

    fn end_offsets(&self, topic: &str) -> Result<Vec<i64>> {
        let counts = self.partition_counts(&[topic.to_string()])?;
        let count = counts.first().map_or(0, |(_, count)| *count);
        (0..count).map(|p| self.high_watermark(topic, p)).collect()
    }
}

struct KafkaProducer {
    producer: ThreadedProducer<DeliveryTracker>,
}

impl Producer for KafkaProducer {
    fn send(&mut self, record: OutRecord) -> Result<()> {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (key, value) in &record.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut out = BaseRecord::<[u8], [u8]>::to(&record.topic).headers(headers);
        if let Some(key) = &record.key {
            out = out.key(key.as_slice());
        }
        // No payload is a tombstone.
        if let Some(value) = &record.value {
            out = out.payload(value.as_slice());
        }
        if let Some(partition) = record.partition {
            out = out.partition(partition);
        }
        if let Some(ts) = record.timestamp_ms {
            out = out.timestamp(ts);
        }
        loop {
            match self.producer.send(out) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // The local queue is full: wait for deliveries to free room, then retry.
                    out = back;
                    self.producer.poll(Duration::from_millis(100));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }

    fn flush(&mut self) -> Result<()> {
        // Every enqueued record gets a delivery report within `message.timeout.ms`, so
        // waiting without a deadline here is bounded by librdkafka.
        let flushed = self.producer.flush(Timeout::Never);
        let failures = self.producer.context().take_failures();
        flushed?;
        match failures {
            Some((failed, reason)) => Err(BusError::Delivery { failed, reason }),
            None => Ok(()),
        }
    }
}

struct KafkaConsumer {
    consumer: BaseConsumer<BusContext>,
    commit: bool,
    /// An error met while draining after records were already collected; returned by the next
    /// poll so those records are not lost.
    deferred: Option<BusError>,
}

impl Consumer for KafkaConsumer {
    fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Record>> {
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        let max = max.max(1);
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < max {
            // Wait only for the first record; after that take what is already fetched.
            let wait = if out.is_empty() {
                deadline.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            let polled = self.consumer.poll(wait);
            // A rebalance served by that poll could not learn where a partition starts: read
            // nothing more. Records already collected were not committed, so a restart
            // re-reads them.
            if let Some(failure) = self.consumer.context().failure() {
                return Err(failure);
            }
            match polled {
                Some(Ok(message)) => out.push(to_record(&message)),
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) if out.is_empty() => return Err(e.into()),
                Some(Err(e)) => {
                    self.deferred = Some(e.into());
                    break;
                }
                // Nothing ready. An early `None` can also mean a rebalance was served, so keep
                // waiting until the deadline while there is nothing to return.
                None if out.is_empty() && Instant::now() < deadline => {}
                None => break,
            }
        }
        Ok(out)
    }

    fn commit(&mut self, positions: &Positions) -> Result<()> {
        if !self.commit || positions.is_empty() {
            return Ok(());
        }
        // Only commit partitions this member still owns: after a rebalance the new owner may
        // already have committed further, and an older position from here would rewind it.
        let owned = self.consumer.assignment()?;
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), next) in positions {
            if owned.find_partition(topic, *partition).is_some() {
                offsets.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
            } else {
                tracing::debug!(
                    topic,
                    partition,
                    "not committing a partition no longer assigned"
                );
            }
        }
        if offsets.count() == 0 {
            return Ok(());
        }
        // Synchronous, so `lag` and a restarted member see the position as soon as this returns.
        self.consumer.commit(&offsets, CommitMode::Sync)?;
        Ok(())
    }

    fn close(self: Box<Self>) -> Result<()> {
        // Every commit was already synchronous. Dropping the consumer closes it the way
        // librdkafka wants (rdkafka's Drop closes the queue and serves the final revoke until
        // the member has left the group); closing explicitly first would make that Drop try a
        // second close and log an error.
        drop(self);
        Ok(())
    }
}

fn to_record(message: &BorrowedMessage<'_>) -> Record {
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| {
                    (
                        h.key.to_string(),
                        h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Record {
        topic: message.topic().to_string(),
        partition: message.partition(),
        offset: message.offset(),
        // -1 is Kafka's "no timestamp"; brokers set one on every record they accept.
        timestamp_ms: message.timestamp().to_millis().unwrap_or(-1),
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().map(<[u8]>::to_vec),
        headers,
    }
}

/// `base` settings, then the user's properties, then `contract` (which the user cannot override).
fn client_config(config: &KafkaConfig, contract: &[(&str, &str)]) -> ClientConfig {
    let mut out = ClientConfig::new();
    out.set("client.id", "cdp");
    // Topics are created explicitly (`create_topic`, or by the operator); a typo in a topic
    // name must fail rather than create a topic with the broker's default partition count.
    out.set("allow.auto.create.topics", "false");
    for (key, value) in &config.properties {
        out.set(key, value);
    }
    out.set("bootstrap.servers", &config.brokers);
    for (key, value) in contract {
        out.set(*key, *value);
    }
    out
}

/// A group id nobody else uses, for readers that must not share positions with anyone.
fn reader_group(base: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{base}.reader-{}-{nanos}-{seq}", std::process::id())
}

/// Runs an rdkafka admin future on the calling thread. The admin client's own polling thread
/// completes it, so all this needs is to park until woken.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(output) => return output,
            Poll::Pending => thread::park(),
        }
    }
}

impl From<KafkaError> for BusError {
    fn from(e: KafkaError) -> Self {
        BusError::Kafka(e.to_string())
    }
}

/// Routes librdkafka's logs and global errors to `tracing`, like the rest of cdp.
fn log_to_tracing(level: RDKafkaLogLevel, facility: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", facility, "{message}"),
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", facility, "{message}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
    }
}

/// Where a partition starts for a stage's stored position (`None`: nothing stored): at the
/// position while the partition holds it, else at the beginning (state that belongs to another
/// log). The bounds are checked here rather than left to `auto.offset.reset` because not every
/// Kafka-protocol broker reports a fetch past the end as out of range (tansu 0.6 waits instead).
fn start_offset(
    stored: Option<i64>,
    watermarks: impl FnOnce() -> KafkaResult<(i64, i64)>,
) -> Offset {
    let Some(offset) = stored.filter(|o| *o >= 0) else {
        return Offset::Beginning;
    };
    match watermarks() {
        Ok((low, high)) if (low..=high).contains(&offset) => Offset::Offset(offset),
        Ok(_) => Offset::Beginning,
        Err(error) => {
            // Bounds unknown: start at the position and leave a bad one to the broker.
            tracing::warn!(%error, "cannot check a stored position against the partition");
            Offset::Offset(offset)
        }
    }
}

/// A stage's own positions, for a consumer that starts every assigned partition at them.
struct StoredStart {
    source: Arc<dyn PositionSource>,
    /// Bound for asking the broker about a partition's offsets during a rebalance.
    timeout: Duration,
}

/// Context of admin clients and consumers: logging, and rebalances as rdkafka's default does them
/// (incremental assign/unassign under cooperative-sticky), except that a consumer started from a
/// stage's own positions sets the start offset of every newly assigned partition first.
#[derive(Default)]
struct BusContext {
    positions: Option<StoredStart>,
    /// The first failure to read `positions`; from then on every poll reports it.
    failure: Mutex<Option<BusError>>,
}

impl BusContext {
    fn failure(&self) -> Option<BusError> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn fail(&self, error: BusError) {
        tracing::error!(%error, "consumer cannot start an assigned partition");
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(error);
    }

    /// Sets each partition of `assignment` to start where `source` says. librdkafka starts a
    /// partition at the offset its assignment list carries and consults the group's committed
    /// offset only when that is unset, so this is what makes the group's position advisory.
    fn start_at_stored_positions(
        &self,
        consumer: &BaseConsumer<Self>,
        stored: &StoredStart,
        assignment: &mut TopicPartitionList,
    ) {
        let partitions: Vec<(String, i32)> = assignment
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        for (topic, partition) in partitions {
            let offset = match stored_position(stored.source.as_ref(), &topic, partition) {
                Ok(position) => start_offset(position, || {
                    consumer.fetch_watermarks(&topic, partition, stored.timeout)
                }),
                Err(error) => {
                    // The partition must still be assigned to keep the group protocol going;
                    // the failure stops the consumer from returning anything read from it.
                    self.fail(error);
                    Offset::Beginning
                }
            };
            if let Err(error) = assignment.set_partition_offset(&topic, partition, offset) {
                self.fail(error.into());
            }
        }
    }
}

impl ClientContext for BusContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        log_to_tracing(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Most client errors are transient (a broker restarting); librdkafka retries them.
        tracing::warn!(target: "librdkafka", %error, reason, "kafka client error");
    }
}

impl ConsumerContext for BusContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                if let Some(stored) = &self.positions {
                    self.start_at_stored_positions(consumer, stored, partitions);
                }
                // Under cooperative-sticky `partitions` holds only the newly added partitions.
                if cooperative {
                    consumer.incremental_assign(partitions)
                } else {
                    consumer.assign(partitions)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS if cooperative => {
                consumer.incremental_unassign(partitions)
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => consumer.unassign(),
            other => {
                // As rdkafka's default: give up the partitions and let the group reassign.
                tracing::warn!(target: "librdkafka", error = ?other, "rebalance error");
                if cooperative {
                    consumer.incremental_unassign(partitions)
                } else {
                    consumer.unassign()
                }
            }
        };
        if let Err(error) = result {
            tracing::warn!(target: "librdkafka", %error, "applying a rebalance failed");
        }
    }
}

/// Producer context that remembers failed deliveries until the next `flush` reports them.
#[derive(Default)]
struct DeliveryTracker {
    failures: Mutex<Option<(usize, String)>>,
}

impl DeliveryTracker {
    /// Failures since the last call: how many, and the first reason.
    fn take_failures(&self) -> Option<(usize, String)> {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

impl ClientContext for DeliveryTracker {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        log_to_tracing(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", %error, reason, "kafka producer error");
    }
}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, message)) = result {
            let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            let (count, _) = failures.get_or_insert_with(|| {
                (
                    0,
                    format!("{}/{}: {error}", message.topic(), message.partition()),
                )
            });
            *count += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_fill_missing_fields() {
        let config: KafkaConfig =
            serde_json::from_str(r#"{"brokers": "kafka:9092"}"#).expect("valid config");
        assert_eq!(config.brokers, "kafka:9092");
        assert_eq!(config.replication_factor, 1);
        assert_eq!(config.operation_timeout_ms, 30_000);
        assert!(config.properties.is_empty());
    }

    #[test]
    fn config_rejects_unknown_fields() {
        let err = serde_json::from_str::<KafkaConfig>(r#"{"broker": "kafka:9092"}"#)
            .expect_err("typo must be rejected");
        assert!(err.to_string().contains("broker"), "{err}");
    }

    #[test]
    fn contract_settings_win_over_user_properties() {
        let mut config = KafkaConfig::default();
        config.properties.insert("acks".into(), "1".into());
        config
            .properties
            .insert("security.protocol".into(), "SASL_SSL".into());
        let client = client_config(&config, &[("acks", "all")]);
        assert_eq!(client.get("acks"), Some("all"));
        assert_eq!(client.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(client.get("bootstrap.servers"), Some("127.0.0.1:9092"));
    }

    #[test]
    fn stored_positions_start_inside_the_partition_or_at_its_beginning() {
        let bounds = || Ok((2, 10));
        assert_eq!(start_offset(Some(5), bounds), Offset::Offset(5));
        assert_eq!(start_offset(Some(2), bounds), Offset::Offset(2));
        // The end is where the next record goes: the stage is up to date.
        assert_eq!(start_offset(Some(10), bounds), Offset::Offset(10));
        assert_eq!(start_offset(None, bounds), Offset::Beginning);
        // Past the end or below the retained start: the state belongs to another log.
        assert_eq!(start_offset(Some(11), bounds), Offset::Beginning);
        assert_eq!(start_offset(Some(1), bounds), Offset::Beginning);
        assert_eq!(start_offset(Some(-1), bounds), Offset::Beginning);
        // Bounds unknown: the position stands, and the broker judges it.
        let unknown = || {
            Err(KafkaError::MetadataFetch(
                RDKafkaErrorCode::BrokerTransportFailure,
            ))
        };
        assert_eq!(start_offset(Some(5), unknown), Offset::Offset(5));
    }

    #[test]
    fn reader_groups_are_unique() {
        assert_ne!(reader_group("g"), reader_group("g"));
        assert!(reader_group("g").starts_with("g.reader-"));
    }
}
