//! The activation stage loop: profile updates and identity changes in, cohort changes out, to
//! the cohort topics and to every destination the cohort feeds.
//!
//! Ordering and idempotence: a profile update not newer than the last applied version is
//! ignored; each (cohort, profile) change carries a sequence that only grows, and so does each
//! (destination, cohort, profile) event. Outputs go through the outbox and the destinations'
//! delivery queues, committed with the membership state and the input offsets (see
//! `membership`). Webhook destinations are drained by their own threads (see `delivery`); a
//! timer re-evaluates profiles whose windows expired (see `timer`).

use crate::config::{ActivationConfig, DestinationKind};
use crate::definitions::{Activation, Definitions};
use crate::delivery::Worker;
use crate::destination::{self, Destination, Subject};
use crate::frequency::FrequencyCaps;
use crate::membership::{Applied, MemberState, MembershipStore, MembershipTxn};
use crate::Result;
use cdp_bus::ahead::{Ahead, Decode, DecodeAhead};
use cdp_bus::landing::Landing;
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
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::thread::{Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

pub const STAGE: &str = "activation";

#[derive(Debug, Default)]
pub struct ActivationCounters {
    pub stage: StageCounters,
    pub entered: AtomicU64,
    pub exited: AtomicU64,
    pub eval_errors: AtomicU64,
    /// Cohort expressions run, and those skipped because their inputs had not changed.
    pub evaluations: AtomicU64,
    pub evaluations_skipped: AtomicU64,
    /// Sum and count of end-to-end latency (signal received -> cohort change), in microseconds.
    pub latency_us_sum: AtomicU64,
    pub latency_samples: AtomicU64,
    /// Profiles re-evaluated because their windows changed, not because of an event.
    pub timer_evaluations: AtomicU64,
    /// Events acknowledged by webhook receivers.
    pub webhook_delivered: AtomicU64,
    /// Webhook attempts that failed and were retried.
    pub webhook_retries: AtomicU64,
    /// Events dead-lettered by webhook destinations.
    pub webhook_dead: AtomicU64,
    /// Deliveries kept from destinations by suppression, priority or frequency caps.
    pub withheld: crate::rules::WithheldCounters,
}

/// A running webhook delivery thread.
struct WorkerSlot<'scope> {
    config: crate::config::DestinationConfig,
    stop: Arc<AtomicBool>,
    wake: SyncSender<()>,
    handle: ScopedJoinHandle<'scope, Result<()>>,
}

/// Runs activation until `shutdown` is set. Cohorts and destinations are read from `activation`
/// before each batch, so a reload takes effect without a restart.
pub fn run(
    bus: &dyn Bus,
    store: &MembershipStore,
    config: &ActivationConfig,
    activation: &Activation,
    counters: &ActivationCounters,
    shutdown: &AtomicBool,
) -> Result<()> {
    let mut producer = bus.producer()?;
    ensure_topics(bus, config, &activation.current())?;
    let mut publisher = Publisher::default();
    publisher.publish(store, producer.as_mut(), None, false)?;
    let topics = config.input_topics();
    let mut options = ConsumerOptions::group(config.group.clone(), &topics);
    // Start where the membership state says, not where the group committed: a fresh or restored
    // volume is behind the group, and what it has not applied must be read again.
    let positions = cdp_bus::stored_positions(bus, &topics, |t, p| store.offset(t, p))?;
    options.start = cdp_bus::StartFrom::Positions(std::sync::Arc::new(positions));
    let mut consumer = bus.consumer(options)?;
    let timeout = Duration::from_millis(config.poll_timeout_ms);
    let timer_interval = Duration::from_millis(config.timer_interval_ms);
    let result = std::thread::scope(|scope| {
        let mut workers: BTreeMap<String, WorkerSlot> = BTreeMap::new();
        let result = (|| -> Result<()> {
            let mut generation = None;
            let mut defs = activation.current();
            let mut last_timer: Option<Instant> = None;
            // Profile updates decoded ahead of the stage while it applies them.
            let decoder = DecodeAhead::spawn("activate-decode")?;
            while !shutdown.load(Ordering::Relaxed) {
                let records = Arc::new(consumer.poll(config.batch_size, timeout)?);
                counters.stage.polled(records.len());
                // Checked after the poll: records that arrived after a reload use its definitions.
                if generation != Some(activation.generation()) {
                    generation = Some(activation.generation());
                    defs = activation.current();
                    ensure_topics(bus, config, &defs)?;
                    sync_workers(scope, &mut workers, &defs, store, bus, counters)?;
                    let swept = crate::rules::sweep_suppressed(
                        store,
                        &defs,
                        chrono::Utc::now(),
                        config.batch_size,
                        &counters.withheld,
                    )?;
                    if swept > 0 {
                        tracing::info!(
                            exits = swept,
                            "suppressed people removed from destinations"
                        );
                        publisher.publish(store, producer.as_mut(), None, false)?;
                        nudge(&workers);
                    }
                }
                reap_failed_workers(&mut workers)?;
                if last_timer.is_none_or(|t| t.elapsed() >= timer_interval) {
                    last_timer = Some(Instant::now());
                    let fired = fire_timers(store, config, &defs, chrono::Utc::now(), counters)?;
                    if fired > 0 {
                        publisher.publish(store, producer.as_mut(), None, false)?;
                        nudge(&workers);
                    }
                    if fired >= config.batch_size {
                        // More are due (say, at midnight): keep going between batches.
                        last_timer = None;
                    }
                }
                if records.is_empty() {
                    // Idle: the write left landing has landed; it leaves the outbox now.
                    publisher.publish(store, producer.as_mut(), None, false)?;
                    continue;
                }
                let started = Instant::now();
                let ahead = {
                    let (topic, defs) = (config.profiles_topic.clone(), defs.clone());
                    let decode: Decode<Decoded> =
                        Arc::new(move |r: &Record| Some(decode_input(&topic, &defs, r)));
                    decoder.start(records.clone(), decode)
                };
                let applied = apply_decoded(
                    store,
                    config,
                    &defs,
                    &records,
                    Some(&ahead),
                    chrono::Utc::now(),
                    counters,
                );
                ahead.finish();
                let dead = applied?;
                let mut positions = Positions::new();
                advance(&mut positions, &records);
                // The batch's records land while the next batch is applied.
                let (published, committed) = publisher.publish(
                    store,
                    producer.as_mut(),
                    Some((&config.group, &positions)),
                    true,
                )?;
                nudge(&workers);
                if !committed {
                    consumer.commit(&positions)?;
                }
                counters.stage.record_batch(
                    records.len() as u64,
                    published.saturating_sub(dead),
                    dead,
                    started.elapsed(),
                );
            }
            // The last batch's records land, and leave the outbox, before the group is left.
            publisher.publish(store, producer.as_mut(), None, false)?;
            Ok(())
        })();
        let stopped = stop_workers(std::mem::take(&mut workers));
        result.and(stopped)
    });
    consumer.close()?;
    result
}

/// Creates the topics of Kafka destinations and the destinations' DLQs, with as many partitions
/// as the cohorts topic.
fn ensure_topics(bus: &dyn Bus, config: &ActivationConfig, defs: &Definitions) -> Result<()> {
    let partitions = bus
        .topics()?
        .into_iter()
        .find(|t| t.name == config.cohorts_topic)
        .map(|t| t.partitions)
        .unwrap_or(1);
    for d in &defs.destinations {
        if d.config.kind == DestinationKind::Kafka {
            bus.create_topic(&d.config.topic, partitions)?;
        }
        bus.create_topic(&d.config.dlq_topic, partitions)?;
    }
    Ok(())
}

/// Starts a delivery thread for each webhook destination without one, and stops those of
/// destinations that were removed or changed.
fn sync_workers<'scope, 'env>(
    scope: &'scope Scope<'scope, 'env>,
    workers: &mut BTreeMap<String, WorkerSlot<'scope>>,
    defs: &Definitions,
    store: &'env MembershipStore,
    bus: &'env dyn Bus,
    counters: &'env ActivationCounters,
) -> Result<()> {
    let wanted: BTreeMap<&str, &Destination> = defs
        .destinations
        .iter()
        .filter(|d| d.config.kind == DestinationKind::Webhook)
        .map(|d| (d.key(), d))
        .collect();
    let outdated: Vec<String> = workers
        .iter()
        .filter(|(k, w)| wanted.get(k.as_str()).is_none_or(|d| d.config != w.config))
        .map(|(k, _)| k.clone())
        .collect();
    let mut old = BTreeMap::new();
    for k in outdated {
        if let Some(w) = workers.remove(&k) {
            old.insert(k, w);
        }
    }
    stop_workers(old)?;
    for (key, dest) in wanted {
        if workers.contains_key(key) {
            continue;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (wake, woken) = sync_channel(1);
        let worker = Worker::new(store, bus, dest.clone(), counters);
        let thread_stop = stop.clone();
        let handle = std::thread::Builder::new()
            .name(format!("webhook-{key}"))
            .spawn_scoped(scope, move || worker.run(&thread_stop, &woken))
            .map_err(|e| crate::ActivationError::Storage(format!("spawning a worker: {e}")))?;
        workers.insert(
            key.to_string(),
            WorkerSlot {
                config: dest.config.clone(),
                stop,
                wake,
                handle,
            },
        );
    }
    Ok(())
}

fn nudge(workers: &BTreeMap<String, WorkerSlot>) {
    for w in workers.values() {
        // A full channel means a nudge is already pending.
        let _ = w.wake.try_send(());
    }
}

/// A worker that ended on its own failed (storage or bus): the stage fails with its error.
fn reap_failed_workers(workers: &mut BTreeMap<String, WorkerSlot>) -> Result<()> {
    let finished: Vec<String> = workers
        .iter()
        .filter(|(_, w)| w.handle.is_finished())
        .map(|(k, _)| k.clone())
        .collect();
    let mut done = BTreeMap::new();
    for k in finished {
        if let Some(w) = workers.remove(&k) {
            done.insert(k, w);
        }
    }
    stop_workers(done)
}

fn stop_workers(workers: BTreeMap<String, WorkerSlot>) -> Result<()> {
    for w in workers.values() {
        w.stop.store(true, Ordering::Relaxed);
    }
    let mut first = Ok(());
    for (key, w) in workers {
        let r = match w.handle.join() {
            Ok(r) => r,
            Err(_) => Err(crate::ActivationError::Storage(format!(
                "webhook worker {key} panicked"
            ))),
        };
        if first.is_ok() {
            first = r;
        }
    }
    first
}

/// Applies a batch atomically; returns how many records went to the DLQ.
pub fn apply_records(
    store: &MembershipStore,
    config: &ActivationConfig,
    defs: &Definitions,
    records: &[Record],
    now: Timestamp,
    counters: &ActivationCounters,
) -> Result<u64> {
    apply_decoded(store, config, defs, records, None, now, counters)
}

/// What a record of activation's input decodes to, or why it goes to the DLQ.
type Decoded = std::result::Result<Input, Rejection>;

/// A record of `cdp.profiles` or `cdp.identity.changes`, decoded as far as `defs` read it.
fn decode_input(profiles_topic: &str, defs: &Definitions, r: &Record) -> Decoded {
    if r.topic == profiles_topic {
        value(r)
            .and_then(|v| crate::update::decode(v, defs.cohorts.reads()).map_err(invalid))
            .map(|u| Input::Update(Box::new(u)))
    } else {
        decode::<IdentityChange>(r).map(Input::Change)
    }
}

/// [`apply_records`], taking each record decoded from `ahead` where a helper thread got to it
/// first.
#[allow(clippy::too_many_arguments)]
fn apply_decoded(
    store: &MembershipStore,
    config: &ActivationConfig,
    defs: &Definitions,
    records: &[Record],
    ahead: Option<&Ahead<Decoded>>,
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
        let outcome = match ahead.and_then(|a| a.take(r)) {
            Some(decoded) => decoded,
            None => decode_input(&config.profiles_topic, defs, r),
        };
        match outcome {
            Ok(Input::Update(u)) => {
                let raw = r.value.as_deref().unwrap_or_default();
                on_update(&mut txn, config, defs, &u, raw, now, counters)?
            }
            Ok(Input::Change(c)) => on_identity_change(&mut txn, config, defs, &c, now, counters)?,
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

/// Re-evaluates the profiles whose windows changed by `now` (at most a batch of them) and
/// schedules their next check. Returns how many were re-evaluated.
pub fn fire_timers(
    store: &MembershipStore,
    config: &ActivationConfig,
    defs: &Definitions,
    now: Timestamp,
    counters: &ActivationCounters,
) -> Result<usize> {
    let due = store.due(now.timestamp_millis().max(0) as u64, config.batch_size)?;
    if due.is_empty() {
        return Ok(0);
    }
    let mut txn = store.txn()?;
    for (_, tenant, canonical_id) in &due {
        let update = txn
            .profile(tenant, canonical_id)?
            .and_then(|raw| Some((crate::update::decode(&raw, defs.cohorts.reads()).ok()?, raw)));
        let Some((update, raw)) = update else {
            txn.schedule(tenant, canonical_id, None)?;
            continue;
        };
        let mut applied = txn.applied(tenant, canonical_id)?;
        txn.load_person(&defs.destinations, tenant, canonical_id)?;
        evaluate(
            &mut txn,
            config,
            defs,
            &update.profile,
            now,
            counters,
            &mut applied,
        )?;
        txn.set_applied(tenant, canonical_id, applied)?;
        let next = crate::timer::next_due(defs, &update.profile, now).map(|due| (raw, due));
        txn.schedule(tenant, canonical_id, next)?;
    }
    txn.commit()?;
    counters
        .timer_evaluations
        .fetch_add(due.len() as u64, Ordering::Relaxed);
    Ok(due.len())
}

enum Input {
    Update(Box<ProfileUpdate>),
    Change(IdentityChange),
}

fn decode<T: serde::de::DeserializeOwned>(r: &Record) -> Result<T, Rejection> {
    cdp_proto::json::from_bytes(value(r)?).map_err(invalid)
}

fn value(r: &Record) -> Result<&[u8], Rejection> {
    r.value
        .as_deref()
        .ok_or_else(|| Rejection::new("tombstone", "record has no value"))
}

fn invalid(e: serde_json::Error) -> Rejection {
    Rejection::new("invalid_record", e.to_string())
}

fn on_update(
    txn: &mut MembershipTxn,
    config: &ActivationConfig,
    defs: &Definitions,
    update: &ProfileUpdate,
    raw: &[u8],
    now: Timestamp,
    counters: &ActivationCounters,
) -> Result<()> {
    let p = &update.profile;
    let mut applied = txn.applied(&p.tenant, &p.canonical_id)?;
    if update.version <= applied.version {
        return Ok(()); // a duplicate or a stale replay
    }
    applied.version = update.version;
    txn.load_person(&defs.destinations, &p.tenant, &p.canonical_id)?;
    let changed = evaluate(txn, config, defs, p, now, counters, &mut applied)?;
    txn.set_applied(&p.tenant, &p.canonical_id, applied)?;
    if defs.uses_windows || defs.uses_recency {
        let next = crate::timer::next_due(defs, p, now).map(|due| (raw.to_vec(), due));
        txn.schedule(&p.tenant, &p.canonical_id, next)?;
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

/// Evaluates the cohorts for `p` at `now` whose inputs changed since `applied` (the others keep
/// their result), emits the changes, brings the destinations in line (see `rules`), and records
/// what each cohort was evaluated on in `applied`. Returns whether any membership changed.
fn evaluate(
    txn: &mut MembershipTxn,
    config: &ActivationConfig,
    defs: &Definitions,
    p: &Profile,
    now: Timestamp,
    counters: &ActivationCounters,
    applied: &mut Applied,
) -> Result<bool> {
    let outcomes = defs.cohorts.evaluate_changed(p, now, &applied.inputs);
    let n = defs.cohorts.list.len();
    let mut inputs = Vec::with_capacity(n);
    let mut members = vec![false; n];
    let mut flipped = vec![false; n];
    for (i, (cohort, outcome)) in defs.cohorts.list.iter().zip(outcomes).enumerate() {
        let fingerprint = outcome.fingerprint;
        if !outcome.evaluated {
            counters.evaluations_skipped.fetch_add(1, Ordering::Relaxed);
            let member = outcome.result?;
            inputs.push(fingerprint | u64::from(member));
            // A member's consent or identifiers can change without their membership changing:
            // destinations are checked on every update of a member.
            members[i] = member;
            continue;
        }
        counters.evaluations.fetch_add(1, Ordering::Relaxed);
        let member = match outcome.result {
            Ok(m) => m,
            Err(e) => {
                counters.eval_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "cohort evaluation failed; membership unchanged");
                members[i] = txn
                    .state(&p.tenant, &p.canonical_id, cohort.key())?
                    .is_some_and(|s| s.member);
                continue;
            }
        };
        inputs.push(fingerprint | u64::from(member));
        members[i] = member;
        let state = txn.state(&p.tenant, &p.canonical_id, cohort.key())?;
        if state.as_ref().map(|s| s.member).unwrap_or(false) != member {
            flipped[i] = true;
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
            )?;
        }
    }
    crate::rules::deliver(txn, defs, p, &members, &flipped, now, &counters.withheld)?;
    inputs.sort_unstable();
    applied.inputs = inputs;
    Ok(flipped.contains(&true))
}

fn on_identity_change(
    txn: &mut MembershipTxn,
    config: &ActivationConfig,
    defs: &Definitions,
    change: &IdentityChange,
    now: Timestamp,
    counters: &ActivationCounters,
) -> Result<()> {
    let gone: Vec<&String> = match change.kind {
        // Retired ids leave every cohort; the survivor's update re-evaluates it.
        IdentityChangeKind::Merged => change.retired.iter().collect(),
        IdentityChangeKind::Deleted => vec![&change.canonical_id],
        // Both sides get profile updates of their own, which re-evaluate them.
        IdentityChangeKind::Split => Vec::new(),
    };
    for id in gone {
        // Profile versions are ordered across merges and erasure (a survivor's version is above
        // everything the retired profile emitted; a deletion's is above every version the profile
        // had), but changes and updates travel on different topics and arrive in either order.
        // A change not newer than what was applied to `id` is older than its present life (a split
        // gave the id back since): ignore it. Otherwise it is the id's newest version, so that its
        // older updates, read later, are ignored as stale and cannot bring it back into cohorts.
        if change.version <= txn.version(&change.tenant, id)? {
            continue;
        }
        txn.set_version(&change.tenant, id, change.version)?;
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
            )?;
            if let Some(i) = defs.cohorts.list.iter().position(|c| c.key() == audience) {
                let who = Subject {
                    tenant: &change.tenant,
                    canonical_id: id,
                    audience: &audience,
                };
                for d in &defs.feeds[i] {
                    let dest = &defs.destinations[*d];
                    match change.kind {
                        IdentityChangeKind::Merged => {
                            destination::exit_merged(txn, dest, who, &change.canonical_id, now)?
                        }
                        _ => destination::route(txn, dest, who, None, now)?,
                    };
                }
            }
        }
        match change.kind {
            IdentityChangeKind::Deleted => {
                for dest in &defs.destinations {
                    destination::delete(txn, dest, &change.tenant, id, change.version, now)?;
                }
                FrequencyCaps::forget(txn, &change.tenant, id)?;
            }
            IdentityChangeKind::Merged => {
                defs.caps
                    .merge_into(txn, &change.tenant, id, &change.canonical_id)?
            }
            IdentityChangeKind::Split => {}
        }
        txn.schedule(&change.tenant, id, None)?;
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
) -> Result<()> {
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
    )?;
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
    txn.push_outbox(crate::outbox::change(
        &config.cohorts_topic,
        &config.membership_topic,
        change.key().as_bytes(),
        &change.to_json(),
        member,
    ));
    let counter = if member {
        &counters.entered
    } else {
        &counters.exited
    };
    counter.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Publishes the outbox in order, then empties it. Returns how many records.
pub fn publish_outbox(store: &MembershipStore, producer: &mut dyn Producer) -> Result<u64> {
    Ok(publish_outbox_with_positions(store, producer, None)?.0)
}

/// [`publish_outbox`], storing `positions` as `group`'s with the records where the bus can
/// (see [`Producer::flush_with_positions`]). Returns how many records, and whether it stored
/// the positions.
pub fn publish_outbox_with_positions(
    store: &MembershipStore,
    producer: &mut dyn Producer,
    positions: Option<(&str, &Positions)>,
) -> Result<(u64, bool)> {
    Publisher::default().publish(store, producer, positions, false)
}

/// Publishes the outbox for the stage, which leaves a batch's records landing on the bus's
/// writer thread while it applies the next ([`Producer::flush_behind`]).
#[derive(Debug, Default)]
struct Publisher {
    /// Keys of the outbox records of the write left landing: sent, so not sent again, and
    /// deleted once a later flush has waited for the write.
    landing: Landing,
}

impl Publisher {
    /// Sends what the outbox holds beyond the write landing, then flushes: waiting for this
    /// write too, or (`behind`) only for the one before. Deletes what is known delivered.
    /// Returns how many records were sent, and whether the positions ride with them.
    fn publish(
        &mut self,
        store: &MembershipStore,
        producer: &mut dyn Producer,
        positions: Option<(&str, &Positions)>,
        behind: bool,
    ) -> Result<(u64, bool)> {
        let pending = store.outbox()?;
        if pending.is_empty() && positions.is_none() {
            return Ok((0, false));
        }
        let mut keys = Vec::with_capacity(pending.len());
        let mut n = 0;
        // The outbox starts with the records landing: nothing older is left in it.
        for (k, bytes) in pending.into_iter().skip(self.landing.len()) {
            let (record, then) = crate::outbox::records(&bytes).ok_or_else(|| {
                crate::ActivationError::Corrupt("undecodable outbox record".into())
            })?;
            for record in std::iter::once(record).chain(then) {
                producer.send(record)?;
                n += 1;
            }
            keys.push(k);
        }
        let (committed, delivered) = self.landing.flush(producer, positions, keys, behind)?;
        if !delivered.is_empty() {
            store.delete_outbox(delivered)?;
        }
        Ok((n, committed))
    }
}

/// The profile a cohort change is about, for tests and tools.
pub fn is_member(store: &MembershipStore, profile: &Profile, audience: &str) -> Result<bool> {
    let mut txn = store.txn()?;
    Ok(txn
        .state(&profile.tenant, &profile.canonical_id, audience)?
        .is_some_and(|s| s.member))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cdp_bus::embedded::EmbeddedBus;
    use cdp_bus::OutRecord;

    fn queue(store: &MembershipStore, values: std::ops::Range<u32>) {
        let mut txn = store.txn().unwrap();
        for v in values {
            let record = OutRecord::new("out", Vec::new(), v.to_string().into_bytes());
            txn.push_outbox(record.to_bytes());
        }
        txn.commit().unwrap();
    }

    fn published(bus: &EmbeddedBus) -> Vec<String> {
        let mut c = bus
            .consumer(ConsumerOptions::group("check", &["out"]))
            .unwrap();
        c.poll(100, Duration::from_millis(10))
            .unwrap()
            .into_iter()
            .map(|r| String::from_utf8(r.value.unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn a_batch_published_behind_is_sent_once_and_leaves_the_outbox_once_landed() {
        let dir = tempfile::tempdir().unwrap();
        let store = MembershipStore::open(&dir.path().join("activation")).unwrap();
        let bus = EmbeddedBus::open(&dir.path().join("bus")).unwrap();
        bus.create_topic("out", 1).unwrap();
        let mut producer = bus.producer().unwrap();
        let mut publisher = Publisher::default();

        queue(&store, 0..3);
        let sent = publisher.publish(&store, producer.as_mut(), None, true);
        assert_eq!(sent.unwrap().0, 3);
        assert_eq!(store.outbox().unwrap().len(), 3, "landing: kept");
        // The next batch sends only its own records; the landed ones leave the outbox.
        queue(&store, 3..5);
        let sent = publisher.publish(&store, producer.as_mut(), None, true);
        assert_eq!(sent.unwrap().0, 2);
        assert_eq!(store.outbox().unwrap().len(), 2);
        // A publish that waits (timers, the stage stopping) sends the rest and empties it.
        queue(&store, 5..6);
        let sent = publisher.publish(&store, producer.as_mut(), None, false);
        assert_eq!(sent.unwrap().0, 1);
        assert!(store.outbox().unwrap().is_empty());
        assert_eq!(published(&bus), ["0", "1", "2", "3", "4", "5"]);
    }
}
