//! Resolver throughput: applies the signals of a generated workload in the stage's batches,
//! durably (RocksDB: graph writes, outbox and offsets in one write per batch) and in memory,
//! and prints signals/s, batch latency percentiles, the cost of durability and peak RSS.
//! On a shared machine wall time says little, so it also prints the rate per second of CPU
//! the process used (every thread, RocksDB's background work included).
//!
//! Rows: `memory` and `rocksdb` read every batch's state from the store; `rocksdb+c` keeps
//! decoded state between batches as the stage does (`[resolver.storage] state_cache_entries`),
//! first at the stage's batch size, then at each of CDP_BENCH_BATCH_SIZES (default
//! 200,500,2000): which batch size keeps p99 batch latency under 5 ms, and at what rate.
//!
//! `cargo bench -p cdp-benches --bench resolver` (people: CDP_BENCH_PROFILES, default 20000;
//! state cache entries per column family: CDP_BENCH_CACHE_ENTRIES, default the configured).

use cdp_benches::{peak_rss_bytes, percentile, raw_records, signals};
use cdp_bus::Record;
use cdp_ingest::IngestConfig;
use cdp_resolver::state_cache::StateCache;
use cdp_resolver::{stage, GraphStore, MemStore, Resolver, ResolverConfig, RocksStore};
use std::time::{Duration, Instant};

struct Run {
    elapsed: Duration,
    cpu: Option<Duration>,
    batches: Vec<Duration>,
    merges: u64,
    dead: u64,
}

/// Applies `signals` in batches of `config.batch_size`, with the state cache `entries` long
/// (0: none).
fn apply_all(
    store: &dyn GraphStore,
    config: &ResolverConfig,
    entries: usize,
    signals: &[Record],
) -> Run {
    let resolver = Resolver::new(config.policy.clone());
    let mut cache = StateCache::new(entries);
    let mut batches = Vec::new();
    let mut merges = 0;
    let mut dead = 0;
    let start = Instant::now();
    let cpu_start = process_cpu();
    for chunk in signals.chunks(config.batch_size) {
        let t = Instant::now();
        let applied = stage::apply_records_cached(&resolver, store, &mut cache, config, chunk)
            .expect("batch applies");
        batches.push(t.elapsed());
        merges += applied.merges;
        dead += applied.dead;
    }
    Run {
        elapsed: start.elapsed(),
        cpu: process_cpu().zip(cpu_start).map(|(end, start)| end - start),
        batches,
        merges,
        dead,
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
    println!(
        "{name:<10} {batch:>6} {n:>9} {:>8.2}s {rate:>10.0} {cpu_rate:>13} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>8} {ratio:>7}",
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
    let config = ResolverConfig::default();
    let t = Instant::now();
    let raw = raw_records(&ingest, profiles, 42).expect("workload");
    let signals = signals(&ingest, &raw);
    println!(
        "workload: {profiles} people, {} raw records, {} signals (prepared in {:.1}s); batch size {}",
        raw.len(),
        signals.len(),
        t.elapsed().as_secs_f64(),
        config.batch_size
    );
    drop(raw);
    let sizes: Vec<usize> = std::env::var("CDP_BENCH_BATCH_SIZES")
        .unwrap_or_else(|_| String::from("200,500,2000"))
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .filter(|n| *n > 0)
        .collect();
    println!(
        "{:<10} {:>6} {:>9} {:>9} {:>10} {:>13} {:>7} {:>7} {:>7} {:>7} {:>8} {:>7}",
        "store",
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
    println!("ratio: to memory above; to rocksdb (no cache, batch {batch}) below");
    for size in sizes {
        let sized = ResolverConfig {
            batch_size: size,
            ..config.clone()
        };
        report(
            "rocksdb+c",
            size,
            n,
            &mut durable(&sized, entries),
            Some(rocks),
        );
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
