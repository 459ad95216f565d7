//! The activation stage loop: profile updates and identity changes in, cohort changes out.
//!
//! Ordering and idempotence: a profile update not newer than the last applied version is
//! ignored; each (cohort, profile) change carries a sequence that only grows. Outputs go through
//! the outbox committed with the membership state and the input offsets (see `membership`).

use crate::cohort::Cohorts;
use crate::config::ActivationConfig;
use crate::membership::{MemberState, MembershipStore, MembershipTxn};
use crate::view::ProfileView;
use crate::Result;
use cdp_bus::{
    advance, Bus, ConsumerOptions, OutRecord, Positions, Producer, Record, StageCounters,
};
use cdp_proto::dlq::{self, Rejection};
use cdp_proto::{
    CohortChange, CohortChangeKind, IdentityChange, IdentityChangeKind, Profile, ProfileUpdate,
    Timestamp,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const STAGE: &str = "activation";

#[derive(Debug, Default)]
pub struct ActivationCounters {
    pub stage: StageCounters,
    pub entered: AtomicU64,
    pub exited: AtomicU64,
    pub eval_errors: AtomicU64,
    /// Sum and count of end-to-end latency (signal received -> cohort change), in microseconds.
    pub latency_us_sum: AtomicU64,
    pub latency_samples: AtomicU64,
}

/// Runs activation until `shutdown` is set.
pub fn run(
    bus: &dyn Bus,
    store: &MembershipStore,
    config: &ActivationConfig,
    cohorts: &Cohorts,
    counters: &ActivationCounters,
    shutdown: &AtomicBool,
) -> Result<()> {
    let mut producer = bus.producer()?;
    publish_outbox(store, producer.as_mut())?;
    let topics = [
        config.profiles_topic.as_str(),
        config.changes_topic.as_str(),
    ];
    let mut consumer = bus.consumer(ConsumerOptions::group(config.group.clone(), &topics))?;
    let timeout = Duration::from_millis(config.poll_timeout_ms);
    while !shutdown.load(Ordering::Relaxed) {
        let records = consumer.poll(config.batch_size, timeout)?;
        if records.is_empty() {
            continue;
        }
        let started = Instant::now();
        let dead = apply_records(
            store,
            config,
            cohorts,
            &records,
            chrono::Utc::now(),
            counters,
        )?;
        let published = publish_outbox(store, producer.as_mut())?;
        let mut positions = Positions::new();
        advance(&mut positions, &records);
        consumer.commit(&positions)?;
        counters.stage.record_batch(
            records.len() as u64,
            published.saturating_sub(dead),
            dead,
            started.elapsed(),
        );
    }
    consumer.close()?;
    Ok(())
}

/// Applies a batch atomically; returns how many records went to the DLQ.
pub fn apply_records(
    store: &MembershipStore,
    config: &ActivationConfig,
    cohorts: &Cohorts,
    records: &[Record],
    now: Timestamp,
    counters: &ActivationCounters,
) -> Result<u64> {
    let mut txn = store.txn()?;
    let mut applied: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut dead = 0;
    for r in records {
        let part = (r.topic.clone(), r.partition);
        let next = match applied.get(&part) {
            Some(n) => *n,
            None => store.offset(&r.topic, r.partition)?.unwrap_or(0),
        };
        if r.offset < next {
            continue;
        }
        applied.insert(part, r.offset + 1);
        let outcome = if r.topic == config.profiles_topic {
            decode::<ProfileUpdate>(r).map(|u| Input::Update(Box::new(u)))
        } else {
            decode::<IdentityChange>(r).map(Input::Change)
        };
        match outcome {
            Ok(Input::Update(u)) => on_update(&mut txn, config, cohorts, &u, now, counters)?,
            Ok(Input::Change(c)) => on_identity_change(&mut txn, config, &c, now, counters)?,
            Err(rejection) => {
                dead += 1;
                let headers = dlq::headers(STAGE, &rejection, &r.topic, r.partition, r.offset);
                let record = OutRecord {
                    topic: config.dlq_topic.clone(),
                    partition: None,
                    key: r.key.clone(),
                    value: r.value.clone(),
                    headers,
                    timestamp_ms: None,
                };
                txn.push_outbox(record.to_bytes());
            }
        }
    }
    for ((topic, partition), next) in applied {
        txn.set_offset(&topic, partition, next);
    }
    txn.commit()?;
    Ok(dead)
}

enum Input {
    Update(Box<ProfileUpdate>),
    Change(IdentityChange),
}

fn decode<T: serde::de::DeserializeOwned>(r: &Record) -> Result<T, Rejection> {
    let value = r
        .value
        .as_deref()
        .ok_or_else(|| Rejection::new("tombstone", "record has no value"))?;
    serde_json::from_slice(value).map_err(|e| Rejection::new("invalid_record", e.to_string()))
}

fn on_update(
    txn: &mut MembershipTxn,
    config: &ActivationConfig,
    cohorts: &Cohorts,
    update: &ProfileUpdate,
    now: Timestamp,
    counters: &ActivationCounters,
) -> Result<()> {
    let p = &update.profile;
    if update.version <= txn.version(&p.tenant, &p.canonical_id)? {
        return Ok(()); // a duplicate or a stale replay
    }
    txn.set_version(&p.tenant, &p.canonical_id, update.version);
    let view = ProfileView::new(p, now);
    let mut changed = false;
    for (i, result) in cohorts.evaluate(&view) {
        let cohort = &cohorts.list[i];
        let member = match result {
            Ok(m) => m,
            Err(e) => {
                counters.eval_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "cohort evaluation failed; membership unchanged");
                continue;
            }
        };
        let state = txn.state(&p.tenant, &p.canonical_id, cohort.key())?;
        if state.as_ref().map(|s| s.member).unwrap_or(false) == member {
            continue;
        }
        let kind = if member {
            CohortChangeKind::Entered
        } else {
            CohortChangeKind::Exited
        };
        let kinds = &cohort.config.identifiers;
        let identifiers = p
            .identifiers
            .iter()
            .filter(|id| kinds.iter().any(|k| k == id.kind.as_str()))
            .cloned()
            .collect();
        emit(
            txn,
            config,
            p.tenant.clone(),
            cohort.key(),
            p.canonical_id.clone(),
            kind,
            state,
            identifiers,
            now,
            counters,
        );
        changed = true;
    }
    if changed {
        if let Some(received) = update.received_at {
            let us = (now - received).num_microseconds().unwrap_or(0).max(0) as u64;
            counters.latency_us_sum.fetch_add(us, Ordering::Relaxed);
            counters.latency_samples.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

fn on_identity_change(
    txn: &mut MembershipTxn,
    config: &ActivationConfig,
    change: &IdentityChange,
    now: Timestamp,
    counters: &ActivationCounters,
) -> Result<()> {
    let gone: Vec<&String> = match change.kind {
        // Retired ids leave every cohort; the survivor's update re-evaluates it.
        IdentityChangeKind::Merged => change.retired.iter().collect(),
        IdentityChangeKind::Deleted => vec![&change.canonical_id],
        IdentityChangeKind::Split => Vec::new(),
    };
    for id in gone {
        for audience in txn.memberships(&change.tenant, id)? {
            let state = txn.state(&change.tenant, id, &audience)?;
            emit(
                txn,
                config,
                change.tenant.clone(),
                &audience,
                id.clone(),
                CohortChangeKind::Exited,
                state,
                Vec::new(),
                now,
                counters,
            );
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn emit(
    txn: &mut MembershipTxn,
    config: &ActivationConfig,
    tenant: String,
    audience: &str,
    canonical_id: String,
    kind: CohortChangeKind,
    previous: Option<MemberState>,
    identifiers: Vec<cdp_proto::Identifier>,
    now: Timestamp,
    counters: &ActivationCounters,
) {
    let seq = previous.map(|s| s.seq).unwrap_or(0) + 1;
    let member = kind == CohortChangeKind::Entered;
    txn.set_state(
        &tenant,
        &canonical_id,
        audience,
        MemberState {
            member,
            seq,
            since: now,
        },
    );
    let change = CohortChange {
        event: CohortChange::event_name(kind).to_string(),
        kind,
        tenant,
        audience_key: audience.to_string(),
        canonical_id,
        version: seq,
        at: now,
        identifiers,
    };
    let key = change.key();
    let value = serde_json::to_vec(&change).expect("CohortChange serialises");
    txn.push_outbox(
        OutRecord::new(&config.cohorts_topic, key.as_bytes(), value.clone()).to_bytes(),
    );
    let membership = if member {
        OutRecord::new(&config.membership_topic, key.as_bytes(), value)
    } else {
        OutRecord::tombstone(&config.membership_topic, key.as_bytes())
    };
    txn.push_outbox(membership.to_bytes());
    let counter = if member {
        &counters.entered
    } else {
        &counters.exited
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Publishes the outbox in order, then empties it. Returns how many records.
pub fn publish_outbox(store: &MembershipStore, producer: &mut dyn Producer) -> Result<u64> {
    let pending = store.outbox()?;
    if pending.is_empty() {
        return Ok(0);
    }
    let mut keys = Vec::with_capacity(pending.len());
    for (k, bytes) in pending {
        let record = OutRecord::from_bytes(&bytes)
            .ok_or_else(|| crate::ActivationError::Corrupt("undecodable outbox record".into()))?;
        producer.send(record)?;
        keys.push(k);
    }
    producer.flush()?;
    let n = keys.len() as u64;
    store.delete_outbox(keys)?;
    Ok(n)
}

/// The profile a cohort change is about, for tests and tools.
pub fn is_member(store: &MembershipStore, profile: &Profile, audience: &str) -> Result<bool> {
    let mut txn = store.txn()?;
    Ok(txn
        .state(&profile.tenant, &profile.canonical_id, audience)?
        .is_some_and(|s| s.member))
}
