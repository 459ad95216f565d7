//! The resolver stage loop, exactly-once over its own state.
//!
//! Per batch: signals are applied in one [`Txn`]; the resulting change records go into the
//! outbox and the next input offsets into the offsets column family, and all of it is committed
//! in one atomic write. Only then is the outbox published and emptied, and the consumer's
//! position committed. After a crash the resolver republishes what is left in the outbox
//! (consumers drop duplicates by `version`) and skips input below its stored offsets, so its
//! state equals that of a run that never crashed; the bus's committed position is advisory.

use crate::config::ResolverConfig;
use crate::graph::{Batch, BatchOutput, Resolver};
use crate::store::{Cf, GraphStore};
use crate::txn::{offset_key, Txn};
use crate::Result;
use cdp_bus::{
    advance, Bus, ConsumerOptions, OutRecord, Positions, Producer, Record, StageCounters,
};
use cdp_proto::dlq::{self, Rejection};
use cdp_proto::Signal;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub const STAGE: &str = "resolver";

/// Counts the demo report and metrics read, beyond the generic stage counters.
#[derive(Debug, Default)]
pub struct ResolverCounters {
    pub stage: StageCounters,
    pub merges: std::sync::atomic::AtomicU64,
    pub refused: std::sync::atomic::AtomicU64,
    pub candidates: std::sync::atomic::AtomicU64,
    pub new_profiles: std::sync::atomic::AtomicU64,
}

/// Runs the resolver until `shutdown` is set.
pub fn run(
    bus: &dyn Bus,
    store: &dyn GraphStore,
    config: &ResolverConfig,
    counters: &ResolverCounters,
    shutdown: &AtomicBool,
) -> Result<()> {
    let resolver = Resolver::new(config.policy.clone());
    let mut producer = bus.producer()?;
    publish_outbox(store, producer.as_mut())?;
    let mut consumer = bus.consumer(ConsumerOptions::group(
        config.group.clone(),
        &[config.signals_topic.as_str()],
    ))?;
    let timeout = Duration::from_millis(config.poll_timeout_ms);
    while !shutdown.load(Ordering::Relaxed) {
        let records = consumer.poll(config.batch_size, timeout)?;
        if records.is_empty() {
            continue;
        }
        let started = Instant::now();
        let (out, dead) = apply_records(&resolver, store, config, &records)?;
        let published = publish_outbox(store, producer.as_mut())?;
        let mut positions = Positions::new();
        advance(&mut positions, &records);
        consumer.commit(&positions)?;

        counters.merges.fetch_add(out.merges, Ordering::Relaxed);
        counters.refused.fetch_add(out.refused, Ordering::Relaxed);
        counters
            .candidates
            .fetch_add(out.candidates, Ordering::Relaxed);
        counters
            .new_profiles
            .fetch_add(out.new_profiles, Ordering::Relaxed);
        counters.stage.record_batch(
            records.len() as u64,
            published.saturating_sub(dead),
            dead,
            started.elapsed(),
        );
        tracing::debug!(
            records = records.len(),
            merges = out.merges,
            refused = out.refused,
            dead_lettered = dead,
            "resolver batch applied"
        );
    }
    consumer.close()?;
    Ok(())
}

/// Applies `records` (signals) in one atomic transaction, skipping any already applied.
/// Returns what the batch produced and how many records went to the DLQ.
pub fn apply_records(
    resolver: &Resolver,
    store: &dyn GraphStore,
    config: &ResolverConfig,
    records: &[Record],
) -> Result<(BatchOutput, u64)> {
    let mut txn = Txn::begin(store)?;
    let mut batch = Batch::default();
    let mut applied: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut dead = Vec::new();
    for r in records {
        let part = (r.topic.clone(), r.partition);
        let next = match applied.get(&part) {
            Some(n) => *n,
            None => stored_offset(store, &r.topic, r.partition)?.unwrap_or(0),
        };
        if r.offset < next {
            // Applied before a crash: the state already contains it.
            continue;
        }
        applied.insert(part, r.offset + 1);
        match decode_signal(r) {
            Ok(signal) => resolver.apply(&mut txn, &signal, &mut batch)?,
            Err(rejection) => dead.push(OutRecord {
                topic: config.dlq_topic.clone(),
                partition: None,
                key: r.key.clone(),
                value: r.value.clone(),
                headers: dlq::headers(STAGE, &rejection, &r.topic, r.partition, r.offset),
                timestamp_ms: None,
            }),
        }
    }
    let out = resolver.finish(&mut txn, batch)?;
    for change in &out.changes {
        let value = serde_json::to_vec(change).expect("IdentityChange serialises");
        txn.push_outbox(
            OutRecord::new(&config.changes_topic, change.canonical_id.as_bytes(), value).to_bytes(),
        );
    }
    for update in &out.updates {
        let value = serde_json::to_vec(update).expect("ProfileUpdate serialises");
        let key = update.profile.canonical_id.as_bytes();
        txn.push_outbox(OutRecord::new(&config.profiles_topic, key, value).to_bytes());
    }
    let dead_count = dead.len() as u64;
    for d in dead {
        txn.push_outbox(d.to_bytes());
    }
    for ((topic, partition), next) in applied {
        txn.set_offset(&topic, partition, next);
    }
    txn.commit()?;
    Ok((out, dead_count))
}

/// Publishes everything in the outbox, in order, then removes it. Returns how many records.
pub fn publish_outbox(store: &dyn GraphStore, producer: &mut dyn Producer) -> Result<u64> {
    let pending = store.scan_prefix(Cf::Outbox, b"")?;
    if pending.is_empty() {
        return Ok(0);
    }
    let mut deletes = Vec::with_capacity(pending.len());
    for (key, bytes) in pending {
        let record = OutRecord::from_bytes(&bytes).ok_or(crate::ResolverError::Corrupt {
            cf: "outbox",
            detail: "undecodable record".into(),
        })?;
        producer.send(record)?;
        deletes.push((Cf::Outbox, key, None));
    }
    producer.flush()?;
    let n = deletes.len() as u64;
    store.write(deletes)?;
    Ok(n)
}

/// The next offset the resolver will apply for an input partition.
pub fn stored_offset(store: &dyn GraphStore, topic: &str, partition: i32) -> Result<Option<i64>> {
    Ok(store
        .get(Cf::Offsets, &offset_key(topic, partition))?
        .and_then(|b| b.as_slice().try_into().ok().map(i64::from_be_bytes)))
}

fn valid_tenant(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 64
        && t.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Parses and checks a signal record; what cannot be applied is rejected with a reason.
pub fn decode_signal(r: &Record) -> Result<Signal, Rejection> {
    let value = r
        .value
        .as_deref()
        .ok_or_else(|| Rejection::new("tombstone", "signal record has no value"))?;
    let signal: Signal = serde_json::from_slice(value)
        .map_err(|e| Rejection::new("invalid_signal", format!("not a Signal: {e}")))?;
    if !valid_tenant(&signal.tenant) {
        return Err(Rejection::new(
            "invalid_tenant",
            "tenant must be 1-64 of [a-z0-9_-]",
        ));
    }
    if signal.identifiers.is_empty() {
        return Err(Rejection::new(
            "no_identifiers",
            "signal carries no identifiers",
        ));
    }
    let day = chrono::Duration::days(1);
    let floor = chrono::DateTime::from_timestamp(946_684_800, 0).unwrap_or_default(); // 2000-01-01
    if signal.event_time > signal.received_at + day || signal.event_time < floor {
        return Err(Rejection::new(
            "invalid_timestamp",
            "event_time is more than a day after received_at or before 2000",
        ));
    }
    Ok(signal)
}
