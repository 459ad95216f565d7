//! The ingest stage: reads the four raw topics in one consumer group, turns each record into
//! signals on `cdp.signals` (keyed by tenant, so one tenant's signals stay in order on one
//! partition) or into one DLQ record (original key, bytes and headers, plus `cdp.error.*`
//! headers), flushes, and only then commits the input positions. A crash therefore replays a
//! batch, never loses one; the resolver drops the duplicates by event id. (On the embedded bus
//! the outputs and the positions are one write, and a crash replays nothing.)
//!
//! Each input record yields either its signals or exactly one DLQ record, and no input record
//! can stop the loop: only the bus failing does. The one exception is a retry: an event whose id
//! the stage saw on the same partition within the de-duplication window ([`crate::dedup`]) is
//! dropped and counted, so a record whose every event is a retry yields nothing.

use crate::config::{is_valid_tenant, IngestConfig};
use crate::dedup::Deduplicator;
use crate::dropped::DroppedIdentifiers;
use crate::error::IngestError;
use crate::metrics::{IngestMetrics, Outcome, RecordCounts, SourceCounts};
use crate::normalize::{normalize_payload_counted, NormalizeOptions};
use crate::rejection;
use cdp_bus::{advance, Bus, ConsumerOptions, OutRecord, Positions, Record, StageCounters};
use cdp_proto::dlq::{self, Rejection};
use cdp_proto::{time, Signal};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The stage name in `cdp.error.stage` headers and metrics.
pub const STAGE: &str = "ingest";
/// Header naming the tenant of a raw record. Absent means the configured default tenant.
pub const TENANT_HEADER: &str = "cdp.tenant";

/// What one batch of input records became.
#[derive(Debug, Default)]
pub struct BatchOutput {
    /// Signals and DLQ records, in input order.
    pub records: Vec<OutRecord>,
    /// How many of `records` are signals.
    pub signals: u64,
    /// How many of `records` are DLQ records: one per rejected input record.
    pub dead_lettered: u64,
    /// Rejected input records by rejection code.
    pub rejected: BTreeMap<&'static str, u64>,
    /// Identifier values dropped from accepted records.
    pub dropped: DroppedIdentifiers,
    /// Events dropped as retries of an event seen within the de-duplication window, by source.
    pub duplicates: SourceCounts,
    /// Events passed on without links for lack of identity consent, by source.
    pub unlinked: SourceCounts,
    /// Input records by source and outcome.
    pub outcomes: RecordCounts,
}

/// Normalises `records` into output records without touching the bus, de-duplicating within
/// the batch only. Fails only when a signal cannot be encoded, which no input can cause.
pub fn process_batch(
    config: &IngestConfig,
    options: &NormalizeOptions,
    records: &[Record],
) -> Result<BatchOutput, IngestError> {
    let mut dedup = Deduplicator::new(config.dedup_options());
    process_batch_with(config, options, records, &mut dedup)
}

/// [`process_batch`] with event ids remembered in `dedup` across batches, as the stage runs.
pub fn process_batch_with(
    config: &IngestConfig,
    options: &NormalizeOptions,
    records: &[Record],
    dedup: &mut Deduplicator,
) -> Result<BatchOutput, IngestError> {
    let mut out = BatchOutput::default();
    out.records.reserve(records.len());
    for record in records {
        let source = config.source_of(&record.topic);
        let unlinked_before = out.dropped.unlinked();
        match normalize_record(config, options, record, &mut out.dropped) {
            Ok((tenant, mut signals)) => {
                let before = signals.len();
                signals.retain(|s| {
                    !dedup.is_duplicate(
                        &record.topic,
                        record.partition,
                        &tenant,
                        s.source,
                        &s.event_id,
                        record.timestamp_ms,
                    )
                });
                out.duplicates.add(source, (before - signals.len()) as u64);
                out.unlinked
                    .add(source, out.dropped.unlinked() - unlinked_before);
                let outcome = if signals.is_empty() {
                    Outcome::Duplicate
                } else {
                    Outcome::Accepted
                };
                out.outcomes.add(source, outcome, 1);
                for signal in &signals {
                    out.records.push(OutRecord::new(
                        config.signals_topic.as_str(),
                        tenant.as_bytes(),
                        signal.to_json(),
                    ));
                }
                out.signals += signals.len() as u64;
            }
            Err(rejection) => {
                tracing::debug!(
                    code = rejection.code,
                    topic = %record.topic,
                    partition = record.partition,
                    offset = record.offset,
                    "record rejected"
                );
                *out.rejected.entry(rejection.code).or_default() += 1;
                out.dead_lettered += 1;
                out.outcomes.add(source, Outcome::DeadLettered, 1);
                out.records.push(dead_letter(config, record, &rejection));
            }
        }
    }
    Ok(out)
}

/// Runs the stage until `shutdown` is set. Topics must exist (the caller creates them).
pub fn run(
    bus: &dyn Bus,
    config: &IngestConfig,
    counters: &StageCounters,
    shutdown: &AtomicBool,
) -> Result<(), IngestError> {
    run_with_metrics(bus, config, counters, &IngestMetrics::default(), shutdown)
}

/// [`run`], also counting rejections by code and dropped identifier values into `metrics`.
pub fn run_with_metrics(
    bus: &dyn Bus,
    config: &IngestConfig,
    counters: &StageCounters,
    metrics: &IngestMetrics,
    shutdown: &AtomicBool,
) -> Result<(), IngestError> {
    config.validate()?;
    let options = config.normalize_options()?;
    let topics: Vec<&str> = config.raw_topics().iter().map(|(t, _)| *t).collect();
    let mut consumer = bus.consumer(ConsumerOptions::group(config.group.as_str(), &topics))?;
    let mut producer = bus.producer()?;
    let mut positions = Positions::new();
    let mut dedup = Deduplicator::new(config.dedup_options());
    let poll_timeout = Duration::from_millis(config.poll_timeout_ms);
    tracing::info!(group = %config.group, "ingest stage started");

    while !shutdown.load(Ordering::Relaxed) {
        let records = consumer.poll(config.batch_size, poll_timeout)?;
        if records.is_empty() {
            continue;
        }
        let started = Instant::now();
        let span = tracing::debug_span!("ingest_batch", records = records.len());
        let _enter = span.enter();

        let mut batch = process_batch_with(config, &options, &records, &mut dedup)?;
        for out in std::mem::take(&mut batch.records) {
            producer.send(out)?;
        }
        // Outputs first, positions second: committing before the flush could lose the batch.
        // The embedded bus writes both at once, so a crash there replays nothing; it writes
        // them behind, while the next batch is normalised.
        advance(&mut positions, &records);
        if !producer.flush_behind(Some((&config.group, &positions)))? {
            consumer.commit(&positions)?;
        }

        counters.record_batch(
            records.len() as u64,
            batch.signals,
            batch.dead_lettered,
            started.elapsed(),
        );
        metrics.record(&batch);
        metrics.observe_batch(started.elapsed());
        tracing::debug!(
            signals = batch.signals,
            dead_lettered = batch.dead_lettered,
            duplicates = batch.duplicates.total(),
            "batch committed"
        );
    }
    // The last batch lands before the group is left.
    producer.flush()?;
    consumer.close()?;
    tracing::info!("ingest stage stopped");
    Ok(())
}

/// The tenant and signals of one record, or why it goes to the DLQ.
fn normalize_record(
    config: &IngestConfig,
    options: &NormalizeOptions,
    record: &Record,
    dropped: &mut DroppedIdentifiers,
) -> Result<(String, Vec<Signal>), Rejection> {
    let source = config.source_of(&record.topic).ok_or_else(|| {
        Rejection::new(
            rejection::UNKNOWN_SHAPE,
            "record is from a topic that is not a configured raw topic",
        )
    })?;
    let tenant = tenant(config, record)?;
    let payload = record.value.as_deref().ok_or_else(|| {
        Rejection::new(rejection::INVALID_JSON, "record has no value (a tombstone)")
    })?;
    let received_at = time::from_millis(record.timestamp_ms);
    let signals =
        normalize_payload_counted(source, &tenant, payload, received_at, options, dropped)?;
    Ok((tenant, signals))
}

fn tenant(config: &IngestConfig, record: &Record) -> Result<String, Rejection> {
    let Some(raw) = record.header(TENANT_HEADER) else {
        return Ok(config.default_tenant.clone());
    };
    match std::str::from_utf8(raw) {
        Ok(t) if is_valid_tenant(t) => Ok(t.to_string()),
        _ => Err(Rejection::new(
            rejection::INVALID_TENANT,
            format!("header `{TENANT_HEADER}` must match [a-z0-9_-]{{1,64}}"),
        )),
    }
}

/// The DLQ copy of `record`: its key, value and headers as they were (so it can be replayed
/// as is), plus the `cdp.error.*` headers saying why and where from.
fn dead_letter(config: &IngestConfig, record: &Record, rejection: &Rejection) -> OutRecord {
    let mut headers: Vec<(String, Vec<u8>)> = record
        .headers
        .iter()
        .filter(|(k, _)| !is_error_header(k))
        .cloned()
        .collect();
    headers.extend(dlq::headers(
        STAGE,
        rejection,
        &record.topic,
        record.partition,
        record.offset,
    ));
    OutRecord {
        topic: config.dlq_topic.clone(),
        partition: None,
        key: record.key.clone(),
        value: record.value.clone(),
        headers,
        timestamp_ms: None,
    }
}

/// Headers a previous DLQ pass added; a replayed record that fails again gets fresh ones.
fn is_error_header(name: &str) -> bool {
    [
        dlq::HEADER_STAGE,
        dlq::HEADER_CODE,
        dlq::HEADER_MESSAGE,
        dlq::HEADER_SOURCE_TOPIC,
        dlq::HEADER_SOURCE_PARTITION,
        dlq::HEADER_SOURCE_OFFSET,
    ]
    .contains(&name)
}
