//! The resolver stage loop, exactly-once over its own state.
//!
//! Per batch: signals are applied in one [`Txn`]; the resulting change records go into the
//! outbox and the next input offsets into the offsets column family, and all of it is committed
//! in one atomic write. Only then is the outbox published and emptied, and the consumer's
//! position committed. The write lands on a thread of its own ([`PipelinedStore`]) while the
//! next batch is applied; its outbox is published once it has landed, and the published
//! records land on the bus's writer thread while the next poll is applied. After a crash the
//! resolver republishes what is left in the outbox (consumers drop duplicates by `version`)
//! and skips input below its stored offsets, so its state equals that of a run that never
//! crashed; the bus's committed position is advisory.
//!
//! Graph commands (`forget`, `unmerge`) arrive on their own topic in the same consumer and are
//! applied in poll order with the signals, each in a transaction of its own with its offset.

use crate::command::{CommandOp, CommandOutcome, GraphCommand};
use crate::config::ResolverConfig;
use crate::graph::{Batch, BatchOutput, Resolver};
use crate::outbox::{self, publish_outbox, OutboxCursor, RenderedUpdate};
use crate::pacer::BatchPacer;
use crate::pipelined::PipelinedStore;
use crate::state_cache::StateCache;
use crate::store::{Cf, GraphStore};
use crate::txn::{offset_key, Txn};
use crate::Result;
use cdp_bus::ahead::{Ahead, Decode, DecodeAhead};
use cdp_bus::{
    advance, Bus, ConsumerOptions, OutRecord, Positions, Producer, Record, StageCounters,
};
use cdp_proto::dlq::{self, Rejection};
use cdp_proto::{IdentityChange, Signal};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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
    /// Identifiers dropped from signals because they were forgotten.
    pub tombstoned: std::sync::atomic::AtomicU64,
    /// Graph commands applied.
    pub commands: std::sync::atomic::AtomicU64,
    /// Probabilistic links asserted (merged, refused or kept as candidates).
    pub probabilistic: std::sync::atomic::AtomicU64,
    /// Record pairs probabilistic matching compared.
    pub compared: std::sync::atomic::AtomicU64,
    /// Blocking keys that grew past `max_block_size` and stopped yielding candidates.
    pub blocks_overflowed: std::sync::atomic::AtomicU64,
}

/// Runs the resolver until `shutdown` is set.
pub fn run(
    bus: &dyn Bus,
    store: &dyn GraphStore,
    config: &ResolverConfig,
    counters: &ResolverCounters,
    shutdown: &AtomicBool,
) -> Result<()> {
    // The stage's writes land on a thread of their own while it applies the next batch.
    std::thread::scope(|scope| {
        let store = PipelinedStore::spawn(scope, store, "resolver-write")?;
        let ran = run_on(bus, &store, config, counters, shutdown);
        // Whatever stopped the loop, the last write lands (or its error is told) before return.
        let synced = store.sync();
        ran.and(synced)
    })
}

fn run_on(
    bus: &dyn Bus,
    store: &PipelinedStore,
    config: &ResolverConfig,
    counters: &ResolverCounters,
    shutdown: &AtomicBool,
) -> Result<()> {
    let resolver = Resolver::from_config(config)?;
    let mut producer = bus.producer()?;
    // Empty at start: a restart reads the store, whatever the last run held.
    let mut state = StageState::new(config);
    publish_outbox(store.durable(), producer.as_mut(), &mut state.outbox)?;
    let topics = config.input_topics();
    let mut options = ConsumerOptions::group(config.group.clone(), &topics);
    // Start where the graph's state says, not where the group committed: a fresh or restored
    // volume is behind the group, and what it has not applied must be read again.
    let positions = cdp_bus::stored_positions(bus, &topics, |t, p| stored_offset(store, t, p))?;
    options.start = cdp_bus::StartFrom::Positions(std::sync::Arc::new(positions));
    let mut consumer = bus.consumer(options)?;
    let timeout = Duration::from_millis(config.poll_timeout_ms);
    // Signals decoded ahead of the stage; graph commands are decoded as they are applied.
    let decoder = DecodeAhead::spawn("resolver-decode")?;
    let commands = config.commands_topic.clone();
    let decode: Decode<Result<Signal, Rejection>> =
        Arc::new(move |r: &Record| (r.topic != commands).then(|| decode_signal(r)));
    while !shutdown.load(Ordering::Relaxed) {
        let records = Arc::new(consumer.poll(config.batch_size, timeout)?);
        counters.stage.polled(records.len());
        if records.is_empty() {
            // Idle: what the last poll left landing has landed; it leaves the outbox now.
            state.outbox.confirm(store, producer.as_mut())?;
            continue;
        }
        let started = Instant::now();
        let mut positions = Positions::new();
        advance(&mut positions, &records);
        let ahead = decoder.start(records.clone(), decode.clone());
        state.ahead = Some(ahead.clone());
        let polled = apply_poll(
            &resolver,
            store,
            &mut state,
            producer.as_mut(),
            config,
            &records,
            Some((&config.group, &positions)),
            |_, _| {},
        );
        ahead.finish();
        state.ahead = None;
        let Polled {
            applied: out,
            published,
            committed,
        } = polled?;
        let dead = out.dead;
        if !committed {
            consumer.commit(&positions)?;
        }

        counters.merges.fetch_add(out.merges, Ordering::Relaxed);
        counters.refused.fetch_add(out.refused, Ordering::Relaxed);
        counters
            .candidates
            .fetch_add(out.candidates, Ordering::Relaxed);
        counters
            .new_profiles
            .fetch_add(out.new_profiles, Ordering::Relaxed);
        counters
            .tombstoned
            .fetch_add(out.tombstoned, Ordering::Relaxed);
        counters.commands.fetch_add(out.commands, Ordering::Relaxed);
        counters
            .probabilistic
            .fetch_add(out.probabilistic, Ordering::Relaxed);
        counters.compared.fetch_add(out.compared, Ordering::Relaxed);
        counters
            .blocks_overflowed
            .fetch_add(out.blocks_overflowed, Ordering::Relaxed);
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
            probabilistic = out.probabilistic,
            dead_lettered = dead,
            "resolver batch applied"
        );
    }
    // The last poll's records land, and leave the outbox, before the group is left.
    state.outbox.confirm(store, producer.as_mut())?;
    consumer.close()?;
    Ok(())
}

/// What [`apply_records`] did, summed over its transactions.
#[derive(Debug, Default)]
pub struct Applied {
    pub merges: u64,
    pub refused: u64,
    pub candidates: u64,
    pub new_profiles: u64,
    pub tombstoned: u64,
    /// Graph commands applied (each in its own transaction).
    pub commands: u64,
    /// Records sent to the DLQ.
    pub dead: u64,
    /// Identity changes and profile updates put in the outbox.
    pub changes: u64,
    pub updates: u64,
    pub probabilistic: u64,
    pub compared: u64,
    pub blocks_overflowed: u64,
    pub blocks_skipped: u64,
}

impl Applied {
    /// Adds what another call applied.
    pub fn add(&mut self, other: &Applied) {
        self.merges += other.merges;
        self.refused += other.refused;
        self.candidates += other.candidates;
        self.new_profiles += other.new_profiles;
        self.tombstoned += other.tombstoned;
        self.commands += other.commands;
        self.dead += other.dead;
        self.changes += other.changes;
        self.updates += other.updates;
        self.probabilistic += other.probabilistic;
        self.compared += other.compared;
        self.blocks_overflowed += other.blocks_overflowed;
        self.blocks_skipped += other.blocks_skipped;
    }
}

impl From<&BatchOutput> for Applied {
    /// What one batch of signals applied (its dead letters are counted by the caller).
    fn from(out: &BatchOutput) -> Self {
        Applied {
            merges: out.merges,
            refused: out.refused,
            candidates: out.candidates,
            new_profiles: out.new_profiles,
            tombstoned: out.tombstoned,
            changes: out.changes.len() as u64,
            updates: out.updates.len() as u64,
            probabilistic: out.probabilistic,
            compared: out.compared,
            blocks_overflowed: out.blocks_overflowed,
            blocks_skipped: out.blocks_skipped,
            ..Applied::default()
        }
    }
}

/// What the stage keeps from one poll to the next.
pub struct StageState {
    /// Decoded state committed by earlier batches (`[resolver.storage] state_cache_entries`).
    pub cache: StateCache,
    pub pacer: BatchPacer,
    pub outbox: OutboxCursor,
    /// The poll's signals as a helper thread decodes them ahead of the stage, if one does.
    pub ahead: Option<Arc<Ahead<Result<Signal, Rejection>>>>,
}

impl StageState {
    /// Empty: nothing cached, nothing learnt, the outbox read from its start.
    pub fn new(config: &ResolverConfig) -> Self {
        Self {
            cache: StateCache::new(config.storage.state_cache_entries),
            pacer: BatchPacer::new(config),
            outbox: OutboxCursor::default(),
            ahead: None,
        }
    }
}

/// Applies one poll's `records` as the stage does: in batches ([`apply_next`]), each batch's
/// outputs handed to `producer` as soon as its write has landed (with a writer thread, after
/// the next batch is applied; the poll's last at the end), so a signal waits for its own batch
/// rather than for the whole poll. The poll's records are then flushed behind
/// ([`OutboxCursor::confirm_behind`]): they land while the next poll is applied, and leave the
/// outbox once the next poll's flush, or the stage's last, has waited for them.
/// `on_batch` is told what each batch applied and how long it took to apply and commit (with a
/// writer thread, to hand its write over).
/// `positions`, the group's positions after `records`, are stored with the last outputs where
/// the bus can.
#[allow(clippy::too_many_arguments)]
pub fn apply_poll(
    resolver: &Resolver,
    store: &PipelinedStore,
    state: &mut StageState,
    producer: &mut dyn Producer,
    config: &ResolverConfig,
    records: &[Record],
    positions: Option<(&str, &Positions)>,
    mut on_batch: impl FnMut(&Applied, Duration),
) -> Result<Polled> {
    let mut sum = Applied::default();
    let mut published = 0;
    let mut rest = records;
    while !rest.is_empty() {
        let started = Instant::now();
        let (applied, used) = apply_next(resolver, store, state, config, rest)?;
        on_batch(&applied, started.elapsed());
        sum.add(&applied);
        published += state.outbox.send(store.durable(), producer)?;
        rest = &rest[used..];
    }
    store.sync()?;
    published += state.outbox.send(store.durable(), producer)?;
    let committed = state.outbox.confirm_behind(store, producer, positions)?;
    Ok(Polled {
        applied: sum,
        published,
        committed,
    })
}

/// What [`apply_poll`] did.
#[derive(Debug, Default)]
pub struct Polled {
    /// The poll's sum.
    pub applied: Applied,
    /// Records published.
    pub published: u64,
    /// Whether the group's positions were stored with the outputs; if not, the caller commits
    /// them through its consumer.
    pub committed: bool,
}

/// Applies `records` (signals and graph commands) skipping any already applied. Consecutive
/// signals are one atomic transaction; each command is a transaction of its own, committed
/// after the signals before it, so it sees them and the signals after it see its effect.
pub fn apply_records(
    resolver: &Resolver,
    store: &dyn GraphStore,
    config: &ResolverConfig,
    records: &[Record],
) -> Result<Applied> {
    apply_records_cached(resolver, store, &mut StateCache::new(0), config, records)
}

/// [`apply_records`] reading the state earlier calls committed from `cache` before `store`
/// (one cache per store, used by every call that writes it). What the calls queue stays in
/// the outbox.
pub fn apply_records_cached(
    resolver: &Resolver,
    store: &dyn GraphStore,
    cache: &mut StateCache,
    config: &ResolverConfig,
    records: &[Record],
) -> Result<Applied> {
    let mut state = StageState {
        cache: std::mem::replace(cache, StateCache::new(0)),
        ..StageState::new(config)
    };
    let result = apply_all(resolver, store, &mut state, config, records);
    // Also after an error: the failed transaction left the cache empty, not stale.
    *cache = state.cache;
    result
}

fn apply_all(
    resolver: &Resolver,
    store: &dyn GraphStore,
    state: &mut StageState,
    config: &ResolverConfig,
    records: &[Record],
) -> Result<Applied> {
    let mut applied = Applied::default();
    let mut rest = records;
    while !rest.is_empty() {
        let (out, used) = apply_next(resolver, store, state, config, rest)?;
        applied.add(&out);
        rest = &rest[used..];
    }
    Ok(applied)
}

/// Applies one transaction from the front of `records` (not empty): the signals before the
/// first command, cut by `batch_size` and by `pacer` ([`ResolverConfig::max_batch_ms`]), or that
/// command. Returns what it did and how many records it consumed (at least one).
pub fn apply_next(
    resolver: &Resolver,
    store: &dyn GraphStore,
    state: &mut StageState,
    config: &ResolverConfig,
    records: &[Record],
) -> Result<(Applied, usize)> {
    let signals = records
        .iter()
        .take(config.batch_size.max(1))
        .take_while(|r| r.topic != config.commands_topic)
        .count();
    if signals > 0 {
        return apply_signals(resolver, store, state, config, &records[..signals]);
    }
    let (out, dead) = apply_command(resolver, store, state, config, &records[0])?;
    let applied = Applied {
        commands: u64::from(out.is_some()),
        dead,
        changes: out.as_ref().map_or(0, |o| o.changes.len() as u64),
        updates: out.as_ref().map_or(0, |o| o.profiles.len() as u64),
        ..Applied::default()
    };
    Ok((applied, 1))
}

/// Whether `r` is still to be applied (false when it was applied before a crash), given the
/// next offsets this transaction has reached (`applied`) and, beyond them, the stored ones.
fn unapplied(
    store: &dyn GraphStore,
    applied: &BTreeMap<(String, i32), i64>,
    r: &Record,
) -> Result<bool> {
    // A batch spans a handful of partitions: a scan beats cloning the topic for a lookup.
    let next = match applied
        .iter()
        .find(|((t, p), _)| *t == r.topic && *p == r.partition)
    {
        Some((_, n)) => *n,
        None => stored_offset(store, &r.topic, r.partition)?.unwrap_or(0),
    };
    Ok(r.offset >= next)
}

fn dead_letter(config: &ResolverConfig, r: &Record, rejection: &Rejection) -> OutRecord {
    OutRecord {
        topic: config.dlq_topic.clone(),
        partition: None,
        key: r.key.clone(),
        value: r.value.clone(),
        headers: dlq::headers(STAGE, rejection, &r.topic, r.partition, r.offset),
        timestamp_ms: None,
    }
}

/// Applies signals from the front of `records` in one atomic transaction, skipping any already
/// applied, until they run out or `pacer` finds the batch full. Returns what the batch
/// applied (with how many records went to the DLQ) and how many records it consumed.
fn apply_signals(
    resolver: &Resolver,
    store: &dyn GraphStore,
    state: &mut StageState,
    config: &ResolverConfig,
    records: &[Record],
) -> Result<(Applied, usize)> {
    let started = Instant::now();
    let StageState {
        cache,
        pacer,
        outbox,
        ahead,
    } = state;
    let mut txn = Txn::begin_cached(store, cache)?;
    let mut batch = Batch::default();
    let mut applied: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut dead = Vec::new();
    let mut used = 0;
    for r in records {
        used += 1;
        if !unapplied(store, &applied, r)? {
            // Applied before a crash: the state already contains it.
            continue;
        }
        let known = applied
            .iter_mut()
            .find(|((t, p), _)| *t == r.topic && *p == r.partition);
        match known {
            Some((_, next)) => *next = r.offset + 1,
            None => {
                applied.insert((r.topic.clone(), r.partition), r.offset + 1);
            }
        }
        let decoded = match ahead.as_ref().and_then(|a| a.take(r)) {
            Some(decoded) => decoded,
            None => decode_signal(r),
        };
        match decoded {
            Ok(signal) => resolver.apply(&mut txn, signal, &mut batch)?,
            Err(rejection) => dead.push(dead_letter(config, r, &rejection)),
        }
        if pacer.full(started.elapsed(), batch.touched()) {
            break;
        }
    }
    let closing = Instant::now();
    let touched = batch.touched();
    let out = resolver.finish(&mut txn, batch)?;
    // Everything queued, in key order, handed to the outbox cursor once committed.
    let mut queued = push_changes(&mut txn, config, &out.changes);
    let keys: Vec<_> = out
        .updates
        .iter()
        .map(|u| outbox::push_update(&mut txn, &config.profiles_topic, u))
        .collect();
    let dead_count = dead.len() as u64;
    let dead: Vec<_> = dead
        .into_iter()
        .map(|d| (txn.push_outbox(d.to_bytes()), d))
        .collect();
    for ((topic, partition), next) in applied {
        txn.set_offset(&topic, partition, next);
    }
    txn.commit()?;
    let applied = Applied {
        dead: dead_count,
        ..Applied::from(&out)
    };
    let updates = keys.into_iter().zip(out.updates);
    queued.extend(updates.map(|(key, u)| (key, u.into_record(&config.profiles_topic))));
    queued.extend(dead);
    outbox.stage(queued);
    pacer.observe(touched, closing.elapsed());
    Ok((applied, used))
}

/// Applies one command record in its own transaction. Returns the outcome when the command
/// was applied now (not before a crash, not a repeat of an applied id, not dead-lettered).
fn apply_command(
    resolver: &Resolver,
    store: &dyn GraphStore,
    state: &mut StageState,
    config: &ResolverConfig,
    r: &Record,
) -> Result<(Option<CommandOutcome>, u64)> {
    if !unapplied(store, &BTreeMap::new(), r)? {
        return Ok((None, 0));
    }
    let mut txn = Txn::begin_cached(store, &mut state.cache)?;
    txn.set_offset(&r.topic, r.partition, r.offset + 1);
    let command = match decode_command(r) {
        Ok(c) => c,
        Err(rejection) => {
            let dead = dead_letter(config, r, &rejection);
            let key = txn.push_outbox(dead.to_bytes());
            txn.commit()?;
            state.outbox.stage([(key, dead)]);
            return Ok((None, 1));
        }
    };
    if store.get(Cf::Commands, command.id.as_bytes())?.is_some() {
        // The same request produced twice: it was applied once, and that is what it asked for.
        txn.commit()?;
        return Ok((None, 0));
    }
    let outcome = match &command.op {
        CommandOp::Forget { target } => crate::forget::forget(&mut txn, &command, target)?,
        CommandOp::Unmerge { canonical_id, part } => {
            crate::unmerge::unmerge(resolver, &mut txn, &command, canonical_id, part)?
        }
    };
    let mut queued = push_changes(&mut txn, config, &outcome.changes);
    let mut updates = Vec::new();
    for canonical_id in &outcome.profiles {
        let Some(root) = txn.root_of_canonical(&command.tenant, canonical_id)? else {
            continue;
        };
        if let Some(profile) = txn.profile_ref(root)? {
            let cause = Some(command.id.clone());
            let update = RenderedUpdate::of(profile, cause, Some(command.requested_at));
            let key = outbox::push_update(&mut txn, &config.profiles_topic, &update);
            updates.push((key, update));
        }
    }
    txn.put_command_outcome(&outcome);
    txn.commit()?;
    let updates = updates.into_iter();
    queued.extend(updates.map(|(key, u)| (key, u.into_record(&config.profiles_topic))));
    state.outbox.stage(queued);
    tracing::info!(
        op = command.op.name(),
        status = ?outcome.status,
        changes = outcome.changes.len(),
        "graph command applied"
    );
    Ok((Some(outcome), 0))
}

/// Queues `changes`; their outbox keys and records, in order.
fn push_changes(
    txn: &mut Txn,
    config: &ResolverConfig,
    changes: &[IdentityChange],
) -> Vec<(Vec<u8>, OutRecord)> {
    changes
        .iter()
        .map(|change| outbox::push_change(txn, &config.changes_topic, change))
        .collect()
}

/// The outcome of the command `id`, once the resolver has applied it.
pub fn command_outcome(store: &dyn GraphStore, id: &str) -> Result<Option<CommandOutcome>> {
    store
        .get(Cf::Commands, id.as_bytes())?
        .map(|b| crate::txn::decode_json(Cf::Commands, &b))
        .transpose()
}

/// The next offset the resolver will apply for an input partition.
pub fn stored_offset(store: &dyn GraphStore, topic: &str, partition: i32) -> Result<Option<i64>> {
    Ok(store
        .get(Cf::Offsets, &offset_key(topic, partition))?
        .and_then(|b| b.as_slice().try_into().ok().map(i64::from_be_bytes)))
}

/// The tenant a record names, checked: 1-64 of `[a-z0-9_-]`.
fn check_tenant(t: &str) -> Result<(), Rejection> {
    let valid = !t.is_empty()
        && t.len() <= 64
        && t.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(Rejection::new(
            "invalid_tenant",
            "tenant must be 1-64 of [a-z0-9_-]",
        ))
    }
}

/// A `record`'s value parsed as a `what`; a tombstone, or a value that is not one, is
/// rejected (with `code` for the latter).
fn parse<T: serde::de::DeserializeOwned>(
    r: &Record,
    record: &str,
    code: &'static str,
    what: &str,
) -> Result<T, Rejection> {
    let value = r
        .value
        .as_deref()
        .ok_or_else(|| Rejection::new("tombstone", format!("{record} record has no value")))?;
    cdp_proto::json::from_bytes(value)
        .map_err(|e| Rejection::new(code, format!("not a {what}: {e}")))
}

/// Parses and checks a command record.
pub fn decode_command(r: &Record) -> Result<GraphCommand, Rejection> {
    let command: GraphCommand = parse(r, "command", "invalid_command", "graph command")?;
    check_tenant(&command.tenant)?;
    if command.id.is_empty() || command.id.len() > 128 {
        return Err(Rejection::new(
            "invalid_command",
            "command id must be 1-128 bytes",
        ));
    }
    Ok(command)
}

/// Parses and checks a signal record; what cannot be applied is rejected with a reason.
pub fn decode_signal(r: &Record) -> Result<Signal, Rejection> {
    let signal: Signal = parse(r, "signal", "invalid_signal", "Signal")?;
    check_tenant(&signal.tenant)?;
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
