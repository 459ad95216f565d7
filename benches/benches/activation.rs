//! Activation throughput with 20 cohorts (the 4 defaults and 16 more of the kinds marketing
//! teams run: lifecycle, windowed counters, channels, consent, recency). The profile updates and
//! identity changes are those the resolver makes of a generated workload. Prints, on one thread:
//! - evaluation in updates/s, against running all 20 CEL programs through the interpreter on
//!   every update (the naive way), in the same run: the cohorts compiled to native code, all 20
//!   per update, and only those whose inputs changed (what the stage does);
//! - where the time of an update goes: decoding it, the interpreter's view, context and
//!   programs, the compiled cohorts, fingerprinting the inputs;
//! - the durable apply path (`stage::apply_records` into RocksDB: memberships, versions, outbox
//!   and offsets in one write per batch) in updates/s with batch latency percentiles, against
//!   the naive rate above, and per CPU second of the applying thread (RocksDB's flushes and
//!   compactions run on threads of their own);
//! - what the stage reads per update (applied inputs, the person's memberships record, what the
//!   destination holds of them) on the state the run left;
//! - peak RSS.
//!
//! `cargo bench -p cdp-benches --bench activation` (people: CDP_BENCH_PROFILES, default 20000).

mod activation_cohorts;

use activation_cohorts::config;
use cdp_activation::inputs::InputHashes;
use cdp_activation::membership::MembershipStore;
use cdp_activation::stage::{self, ActivationCounters};
use cdp_activation::view::ProfileView;
use cdp_activation::{Compilation, Definitions};
use cdp_benches::{peak_rss_bytes, percentile, raw_records, signals};
use cdp_bus::{OutRecord, Record};
use cdp_ingest::IngestConfig;
use cdp_proto::{ProfileUpdate, Timestamp};
use cdp_resolver::{MemStore, Resolver, ResolverConfig};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Keeps what the resolver publishes.
#[derive(Default)]
struct Published(Vec<OutRecord>);

impl cdp_bus::Producer for Published {
    fn send(&mut self, record: OutRecord) -> cdp_bus::Result<()> {
        self.0.push(record);
        Ok(())
    }

    fn flush(&mut self) -> cdp_bus::Result<()> {
        Ok(())
    }
}

/// What the resolver publishes for `signals`, as records of the profiles and identity changes
/// topics (one partition each, in publication order).
fn resolver_output(signals: &[Record]) -> Vec<Record> {
    let config = ResolverConfig::default();
    let resolver = Resolver::new(config.policy.clone());
    let store = MemStore::default();
    let mut published = Published::default();
    let mut cursor = cdp_resolver::outbox::OutboxCursor::default();
    for chunk in signals.chunks(config.batch_size) {
        cdp_resolver::stage::apply_records(&resolver, &store, &config, chunk)
            .expect("batch applies");
        cdp_resolver::outbox::publish_outbox(&store, &mut published, &mut cursor)
            .expect("outbox published");
    }
    let mut offsets: HashMap<String, i64> = HashMap::new();
    published
        .0
        .into_iter()
        .filter(|r| r.topic == config.profiles_topic || r.topic == config.changes_topic)
        .map(|r| {
            let offset = offsets.entry(r.topic.clone()).or_insert(0);
            let record = Record {
                topic: r.topic,
                partition: 0,
                offset: *offset,
                timestamp_ms: 0,
                key: r.key,
                value: r.value,
                headers: r.headers,
            };
            *offset += 1;
            record
        })
        .collect()
}

/// Updates/s of evaluating every cohort on every update.
fn naive(defs: &Definitions, updates: &[ProfileUpdate], now: Timestamp) -> (f64, u64) {
    let start = Instant::now();
    let mut members = 0u64;
    for u in updates {
        let view = ProfileView::new(&u.profile, now);
        for (_, r) in defs.cohorts.evaluate(&view) {
            members += u64::from(r.unwrap_or(false));
        }
    }
    (
        updates.len() as f64 / start.elapsed().as_secs_f64(),
        members,
    )
}

/// Updates/s of evaluating every cohort on every update, compiled to native code.
fn compiled(defs: &Definitions, updates: &[ProfileUpdate], now: Timestamp) -> (f64, u64) {
    let start = Instant::now();
    let mut members = 0u64;
    for u in updates {
        let scope = defs.cohorts.scope(&u.profile, now);
        for c in &defs.cohorts.list {
            members += u64::from(c.evaluate(&scope).unwrap_or(false));
        }
    }
    (
        updates.len() as f64 / start.elapsed().as_secs_f64(),
        members,
    )
}

/// Where the time of one update goes, on average: decoding it from JSON; the interpreter's view,
/// CEL context and 20 programs; the 20 compiled predicates; fingerprinting the inputs of every
/// cohort; decoding only what activation reads (`update::decode`, what the stage does).
fn breakdown(
    defs: &Definitions,
    records: &[&[u8]],
    updates: &[ProfileUpdate],
    now: Timestamp,
) -> [Duration; 7] {
    let mut spent = [Duration::ZERO; 7];
    let t = Instant::now();
    for r in records {
        std::hint::black_box(serde_json::from_slice::<ProfileUpdate>(r).expect("update"));
    }
    spent[0] = t.elapsed();
    let t = Instant::now();
    for r in records {
        let reads = defs.cohorts.reads();
        std::hint::black_box(cdp_activation::update::decode(r, reads).expect("update"));
    }
    spent[6] = t.elapsed();
    for u in updates {
        let t = Instant::now();
        let view = ProfileView::new(&u.profile, now);
        spent[1] += t.elapsed();
        let t = Instant::now();
        let ctx = defs.cohorts.context(&view).expect("context");
        spent[2] += t.elapsed();
        let t = Instant::now();
        for c in &defs.cohorts.list {
            let _ = std::hint::black_box(c.matches(&ctx));
        }
        spent[3] += t.elapsed();
        let t = Instant::now();
        let scope = defs.cohorts.scope(&u.profile, now);
        for c in &defs.cohorts.list {
            let _ = std::hint::black_box(c.evaluate(&scope));
        }
        spent[4] += t.elapsed();
        let t = Instant::now();
        let mut hashes = InputHashes::new(&u.profile, now);
        for c in &defs.cohorts.list {
            std::hint::black_box(hashes.fingerprint(c.seed(), &c.reads));
        }
        spent[5] += t.elapsed();
    }
    spent.map(|d| d / updates.len().max(1) as u32)
}

/// Updates/s of evaluating only the cohorts whose inputs changed since the person's last update
/// (what the stage does; here the fingerprints are kept in memory). Also returns the share of
/// cohort evaluations skipped.
fn incremental(defs: &Definitions, updates: &[ProfileUpdate], now: Timestamp) -> (f64, u64, f64) {
    let mut known: HashMap<&str, Vec<u64>> = HashMap::new();
    let (mut members, mut run, mut skipped) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    for u in updates {
        let inputs = known.entry(u.profile.canonical_id.as_str()).or_default();
        let outcomes = defs.cohorts.evaluate_changed(&u.profile, now, inputs);
        inputs.clear();
        for o in outcomes {
            let member = o.result.unwrap_or(false);
            members += u64::from(member);
            if o.evaluated {
                run += 1;
            } else {
                skipped += 1;
            }
            inputs.push(o.fingerprint | u64::from(member));
        }
        inputs.sort_unstable();
    }
    let rate = updates.len() as f64 / start.elapsed().as_secs_f64();
    (rate, members, skipped as f64 / (run + skipped) as f64)
}

/// CPU time the calling thread has run (`/proc/thread-self/schedstat`, in ns), if Linux says.
fn thread_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

fn main() {
    // `cargo bench` passes harness flags (e.g. --bench); this tool takes none.
    let profiles: usize = std::env::var("CDP_BENCH_PROFILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let ingest = IngestConfig::default();
    let t = Instant::now();
    let raw = raw_records(&ingest, profiles, 42).expect("workload");
    let signals = signals(&ingest, &raw);
    drop(raw);
    let input = resolver_output(&signals);
    let config = config();
    let records: Vec<&[u8]> = input
        .iter()
        .filter(|r| r.topic == config.profiles_topic)
        .map(|r| r.value.as_deref().expect("value"))
        .collect();
    let updates: Vec<ProfileUpdate> = records
        .iter()
        .map(|r| serde_json::from_slice(r).expect("update"))
        .collect();
    let defs = Definitions::compile(&config).expect("cohorts compile");
    // The workload's events lead up to its "now"; evaluate there, so that windows hold them.
    let now = cdp_ingest::workload::default_now();
    println!(
        "workload: {profiles} people, {} signals -> {} profile updates, {} identity changes \
         (prepared in {:.1}s); {} cohorts",
        signals.len(),
        updates.len(),
        input.len() - updates.len(),
        t.elapsed().as_secs_f64(),
        defs.cohorts.list.len(),
    );
    drop(signals);

    for c in &defs.cohorts.list {
        if c.compilation() != Compilation::Native {
            println!("cohort {} runs {:?}", c.key(), c.compilation());
        }
    }
    let (naive_rate, naive_members) = naive(&defs, &updates, now);
    let (compiled_rate, compiled_members) = compiled(&defs, &updates, now);
    let (rate, members, skipped) = incremental(&defs, &updates, now);
    assert_eq!(
        members, naive_members,
        "both ways find the same memberships"
    );
    assert_eq!(compiled_members, naive_members, "compiled finds the same");
    println!("{:<42} {:>12}", "evaluation (1 thread)", "updates/s");
    println!(
        "{:<42} {naive_rate:>12.0}",
        "naive: all 20 CEL programs per update"
    );
    println!(
        "{:<42} {compiled_rate:>12.0}   {:.2}x naive",
        "compiled: all 20 cohorts per update",
        compiled_rate / naive_rate,
    );
    println!(
        "{:<42} {rate:>12.0}   {:.2}x naive, {:.0}% of evaluations skipped",
        "compiled, only cohorts whose inputs changed",
        rate / naive_rate,
        skipped * 100.0
    );

    let [decode, view, context, programs, native, fingerprints, lean] =
        breakdown(&defs, &records, &updates, now);
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "per update: decode JSON {:.2} us (only what activation reads: {:.2} us); interpreter: \
         view {:.2} us, CEL context {:.2} us, 20 programs {:.2} us; compiled: 20 cohorts {:.2} us; \
         fingerprints of 20 cohorts {:.2} us",
        us(decode),
        us(lean),
        us(view),
        us(context),
        us(programs),
        us(native),
        us(fingerprints),
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let store = MembershipStore::open(dir.path()).expect("rocksdb opens");
    let counters = ActivationCounters::default();
    let mut batches: Vec<Duration> = Vec::new();
    let cpu_before = thread_cpu();
    let start = Instant::now();
    for chunk in input.chunks(config.batch_size) {
        let t = Instant::now();
        stage::apply_records(&store, &config, &defs, chunk, now, &counters).expect("batch applies");
        // The outbox is published and emptied after each batch in the stage.
        let keys = store
            .outbox()
            .expect("outbox")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        store.delete_outbox(keys).expect("outbox emptied");
        batches.push(t.elapsed());
    }
    let elapsed = start.elapsed();
    let cpu = thread_cpu()
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let durable_rate = input.len() as f64 / elapsed.as_secs_f64();
    println!(
        "durable apply (rocksdb, batches of {}): {durable_rate:.0} records/s ({} updates and \
         changes in {:.2}s), batch p50 {:.2} ms, p99 {:.2} ms; {} entered, {} exited, {} cohort \
         evaluations run, {} skipped",
        config.batch_size,
        input.len(),
        elapsed.as_secs_f64(),
        percentile(&mut batches, 50.0).as_secs_f64() * 1e3,
        percentile(&mut batches, 99.0).as_secs_f64() * 1e3,
        counters.entered.load(Ordering::Relaxed),
        counters.exited.load(Ordering::Relaxed),
        counters.evaluations.load(Ordering::Relaxed),
        counters.evaluations_skipped.load(Ordering::Relaxed),
    );
    println!(
        "durable apply: {:.2}x naive (all 20 CEL programs, no state, no decoding)",
        durable_rate / naive_rate
    );
    if let Some(cpu) = cpu {
        // On a shared machine the thread waits for a core: its CPU time is what one core does.
        println!(
            "durable apply per CPU second of the applying thread: {:.0} records/s (on CPU {:.0}% \
             of the wall time)",
            input.len() as f64 / cpu.as_secs_f64(),
            cpu.as_secs_f64() * 100.0 / elapsed.as_secs_f64()
        );
    }
    // What the durable path reads per update, on the state the run left: the person's applied
    // inputs, memberships and what the destination holds, as the stage reads them.
    let t = Instant::now();
    for chunk in updates.chunks(config.batch_size) {
        let mut txn = store.txn().expect("txn");
        for u in chunk {
            let p = &u.profile;
            std::hint::black_box(txn.applied(&p.tenant, &p.canonical_id).expect("applied"));
            txn.load_person(&defs.destinations, &p.tenant, &p.canonical_id)
                .expect("person loads");
            for c in &defs.cohorts.list {
                let state = txn.state(&p.tenant, &p.canonical_id, c.key());
                std::hint::black_box(state.expect("state"));
            }
        }
    }
    println!(
        "membership reads per update (stage): applied inputs, the memberships record, one scan \
         of the destination's, 20 states from it {:.1} us",
        t.elapsed().as_secs_f64() * 1e6 / updates.len().max(1) as f64
    );
    drop(store);
    if let Some(rss) = peak_rss_bytes() {
        println!("peak RSS {:.0} MiB", rss as f64 / (1024.0 * 1024.0));
    }
}
