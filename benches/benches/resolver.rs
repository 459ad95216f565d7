//! Resolver throughput: applies the signals of a generated workload in the stage's batches,
//! durably (RocksDB: graph writes, outbox and offsets in one write per batch) and in memory,
//! and prints signals/s, batch latency percentiles, the cost of durability and peak RSS.
//! On a shared machine wall time says little, so it also prints the rate per second of CPU
//! the process used (every thread, RocksDB's background work included).
//!
//! The signals are applied as the stage applies them: polls of `batch_size` records, each cut
//! into batches of at most `max_batch_ms` (CDP_BENCH_BATCH_MS overrides it; 0: batches of
//! `batch_size`), every batch's outputs handed to a producer and the outbox emptied after each
//! poll. A batch's latency is its apply and commit. Columns: `poll` and mean signals per
//! `batch`, profile updates per signal and their size.
//!
//! Rows: `memory` and `rocksdb` read every batch's state from the store; `rocksdb+w` writes
//! each batch on a thread of its own while the next is applied, as the stage does (its batch
//! latency is the apply and the hand-over; with a core to spare its rate is the stage's);
//! `rocksdb+c` keeps decoded state between batches (`[resolver.storage]
//! state_cache_entries`); then `fixed` rows
//! apply batches of each of CDP_BENCH_BATCH_SIZES (default 200,2000) without the time cut,
//! durably and without a cache: what fixed sizes give in rate and latency.
//!
//! `cargo bench -p cdp-benches --bench resolver` (people: CDP_BENCH_PROFILES, default 20000;
//! state cache entries per column family: CDP_BENCH_CACHE_ENTRIES, default 1,000,000).

use cdp_benches::{peak_rss_bytes, percentile, raw_records, signals};
use cdp_bus::{OutRecord, Producer, Record};
use cdp_ingest::IngestConfig;
use cdp_resolver::pipelined::PipelinedStore;
use cdp_resolver::state_cache::StateCache;
use cdp_resolver::{stage, GraphStore, MemStore, Resolver, ResolverConfig, RocksStore};
use std::time::{Duration, Instant};

struct Run {
    elapsed: Duration,
    cpu: Option<Duration>,
    batches: Vec<Duration>,
    merges: u64,
    dead: u64,
    /// Profile updates published, and their bytes.
    updates: u64,
    update_bytes: u64,
}

/// The producer the outbox is published to: counts what it is given and keeps nothing.
struct Sink {
    profiles_topic: String,
    updates: u64,
    update_bytes: u64,
}

impl Producer for Sink {
    fn send(&mut self, record: OutRecord) -> cdp_bus::Result<()> {
        if record.topic == self.profiles_topic {
            self.updates += 1;
            self.update_bytes += record.value.map_or(0, |v| v.len() as u64);
        }
        Ok(())
    }

    fn flush(&mut self) -> cdp_bus::Result<()> {
        Ok(())
    }
}

/// Applies `signals` as the stage does: polls of `config.batch_size` records, each cut into
/// batches (`config.max_batch_ms`), every batch's outputs handed to the producer when it is
/// committed and the outbox emptied after each poll; with the state cache `entries` long
/// (0: none). A batch's latency is its apply and commit.
fn apply_all(
    store: &dyn GraphStore,
    config: &ResolverConfig,
    entries: usize,
    signals: &[Record],
) -> Run {
    // Written in place: a batch's time is its durable apply, write included.
    apply_on(&PipelinedStore::inline(store), config, entries, signals)
}

/// [`apply_all`] with each batch's write on a thread of its own, as the stage writes.
fn apply_all_pipelined(store: &dyn GraphStore, config: &ResolverConfig, signals: &[Record]) -> Run {
    std::thread::scope(|scope| {
        let store = PipelinedStore::spawn(scope, store, "bench-write").expect("writer starts");
        let run = apply_on(&store, config, 0, signals);
        store.sync().expect("the last write lands");
        run
    })
}

fn apply_on(
    store: &PipelinedStore,
    config: &ResolverConfig,
    entries: usize,
    signals: &[Record],
) -> Run {
    let resolver = Resolver::new(config.policy.clone());
    let mut state = stage::StageState {
        cache: StateCache::new(entries),
        ..stage::StageState::new(config)
    };
    let mut sink = Sink {
        profiles_topic: config.profiles_topic.clone(),
        updates: 0,
        update_bytes: 0,
    };
    let mut batches = Vec::new();
    let mut merges = 0;
    let mut dead = 0;
    let start = Instant::now();
    let cpu_start = process_cpu();
    for poll in signals.chunks(config.batch_size) {
        stage::apply_poll(
            &resolver,
            store,
            &mut state,
            &mut sink,
            config,
            poll,
            None,
            |applied, took| {
                batches.push(took);
                merges += applied.merges;
                dead += applied.dead;
            },
        )
        .expect("poll applies");
    }
    let elapsed = start.elapsed();
    Run {
        elapsed,
        cpu: process_cpu().zip(cpu_start).map(|(end, start)| end - start),
        batches,
        merges,
        dead,
        updates: sink.updates,
        update_bytes: sink.update_bytes,
    }
}

fn report(name: &str, batch: usize, n: usize, run: &mut Run, baseline: Option<f64>) -> f64 {
    assert!(
        run.dead * 100 < n as u64,
        "{} of {n} signals dead-lettered: the workload is not what the resolver expects",
        run.dead
    );
    let rate = n as f64 / run.elapsed.as_secs_f64();
    let p50 = percentile(&mut run.batches, 50.0);
    let p90 = percentile(&mut run.batches, 90.0);
    let p99 = percentile(&mut run.batches, 99.0);
    let max = run.batches.iter().max().copied().unwrap_or_default();
    let ratio = baseline.map_or(String::from("1.00"), |b| format!("{:.2}", rate / b));
    let cpu_rate = run
        .cpu
        .filter(|c| !c.is_zero())
        .map_or(String::from("-"), |c| {
            format!("{:.0}", n as f64 / c.as_secs_f64())
        });
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mean = n as f64 / run.batches.len().max(1) as f64;
    let update_kib = run.update_bytes as f64 / run.updates.max(1) as f64 / 1024.0;
    let per_signal = run.updates as f64 / n.max(1) as f64;
    println!(
        "{name:<10} {batch:>6} {mean:>6.0} {n:>9} {:>8.2}s {rate:>10.0} {cpu_rate:>13} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>8} {per_signal:>7.2} {update_kib:>7.1} {ratio:>7}",
        run.elapsed.as_secs_f64(),
        ms(p50),
        ms(p90),
        ms(p99),
        ms(max),
        run.merges,
    );
    rate
}

fn main() {
    // `cargo bench` passes harness flags (e.g. --bench); this tool takes none.
    let profiles: usize = std::env::var("CDP_BENCH_PROFILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let ingest = IngestConfig::default();
    let mut config = ResolverConfig::default();
    if let Some(ms) = std::env::var("CDP_BENCH_BATCH_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.max_batch_ms = ms;
    }
    let t = Instant::now();
    let raw = raw_records(&ingest, profiles, 42).expect("workload");
    let signals = signals(&ingest, &raw);
    println!(
        "workload: {profiles} people, {} raw records, {} signals (prepared in {:.1}s); poll {}, batches of at most {} ms (0: no limit)",
        raw.len(),
        signals.len(),
        t.elapsed().as_secs_f64(),
        config.batch_size,
        config.max_batch_ms
    );
    drop(raw);
    let sizes: Vec<usize> = std::env::var("CDP_BENCH_BATCH_SIZES")
        .unwrap_or_else(|_| String::from("200,2000"))
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .filter(|n| *n > 0)
        .collect();
    println!(
        "{:<10} {:>6} {:>6} {:>9} {:>9} {:>10} {:>13} {:>7} {:>7} {:>7} {:>7} {:>8} {:>7} {:>7} {:>7}",
        "store",
        "poll",
        "batch",
        "signals",
        "time",
        "signals/s",
        "sig/cpu-s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "merges",
        "upd/sig",
        "KiB/upd",
        "ratio"
    );
    let n = signals.len();
    let batch = config.batch_size;
    let memory = report(
        "memory",
        batch,
        n,
        &mut apply_all(&MemStore::default(), &config, 0, &signals),
        None,
    );
    // Each durable run in a store of its own, removed before the next (the disk is shared).
    let durable = |config: &ResolverConfig, entries: usize| {
        let dir = tempfile::tempdir().expect("tempdir");
        let rocks = RocksStore::open_with(dir.path(), &config.storage).expect("rocksdb opens");
        apply_all(&rocks, config, entries, &signals)
    };
    let rocks = report("rocksdb", batch, n, &mut durable(&config, 0), Some(memory));
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksStore::open_with(dir.path(), &config.storage).expect("rocksdb opens");
        let mut run = apply_all_pipelined(&store, &config, &signals);
        report("rocksdb+w", batch, n, &mut run, Some(memory));
    }
    let entries = std::env::var("CDP_BENCH_CACHE_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        // The cache is off by default; this size holds the bench's working set.
        .unwrap_or(1_000_000);
    println!("state cache: {entries} entries per column family");
    report(
        "rocksdb+c",
        batch,
        n,
        &mut durable(&config, entries),
        Some(memory),
    );
    println!("ratio: to memory above; to rocksdb (no cache, the configured batches) below");
    for size in sizes {
        let fixed = ResolverConfig {
            batch_size: size,
            max_batch_ms: 0,
            ..config.clone()
        };
        report("fixed", size, n, &mut durable(&fixed, 0), Some(rocks));
    }
    if let Some(rss) = peak_rss_bytes() {
        println!("peak RSS {:.0} MiB", rss as f64 / (1024.0 * 1024.0));
    }
}

/// CPU time (user and system, all threads) this process has used so far, from `/proc/self/stat`.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at its closing parenthesis;
    // utime and stime are the 14th and 15th fields, in clock ticks.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // Linux reports these in USER_HZ, which is 100 on every architecture it runs on.
    Some(Duration::from_millis(ticks * 10))
}
