//! Resolver throughput: applies the signals of a generated workload in the stage's batches,
//! durably (RocksDB: graph writes, outbox and offsets in one write per batch) and in memory,
//! and prints signals/s, batch latency percentiles, the cost of durability and peak RSS.
//! On a shared machine wall time says little, so it also prints the rate per second of CPU
//! the process used (every thread, RocksDB's background work included).
//!
//! `cargo bench -p cdp-benches --bench resolver` (people: CDP_BENCH_PROFILES, default 20000).

use cdp_benches::{peak_rss_bytes, percentile, raw_records, signals};
use cdp_bus::Record;
use cdp_ingest::IngestConfig;
use cdp_resolver::{stage, GraphStore, MemStore, Resolver, ResolverConfig, RocksStore};
use std::time::{Duration, Instant};

struct Run {
    elapsed: Duration,
    cpu: Option<Duration>,
    batches: Vec<Duration>,
    merges: u64,
    dead: u64,
}

fn apply_all(store: &dyn GraphStore, config: &ResolverConfig, signals: &[Record]) -> Run {
    let resolver = Resolver::new(config.policy.clone());
    let mut batches = Vec::new();
    let mut merges = 0;
    let mut dead = 0;
    let start = Instant::now();
    let cpu_start = process_cpu();
    for chunk in signals.chunks(config.batch_size) {
        let t = Instant::now();
        let applied = stage::apply_records(&resolver, store, config, chunk).expect("batch applies");
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

fn report(name: &str, n: usize, run: &mut Run, baseline: Option<f64>) -> f64 {
    assert!(
        run.dead * 100 < n as u64,
        "{} of {n} signals dead-lettered: the workload is not what the resolver expects",
        run.dead
    );
    let rate = n as f64 / run.elapsed.as_secs_f64();
    let p50 = percentile(&mut run.batches, 50.0);
    let p99 = percentile(&mut run.batches, 99.0);
    let ratio = baseline.map_or(String::from("1.00"), |b| format!("{:.2}", rate / b));
    let cpu_rate = run
        .cpu
        .filter(|c| !c.is_zero())
        .map_or(String::from("-"), |c| {
            format!("{:.0}", n as f64 / c.as_secs_f64())
        });
    println!(
        "{name:<10} {n:>9} {:>8.2}s {rate:>12.0} {cpu_rate:>14} {:>9.2} {:>9.2} {:>8} {ratio:>10}",
        run.elapsed.as_secs_f64(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
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
    println!(
        "{:<10} {:>9} {:>9} {:>12} {:>14} {:>9} {:>9} {:>8} {:>10}",
        "store",
        "signals",
        "time",
        "signals/s",
        "signals/cpu-s",
        "p50 ms",
        "p99 ms",
        "merges",
        "vs memory"
    );
    let memory = report(
        "memory",
        signals.len(),
        &mut apply_all(&MemStore::default(), &config, &signals),
        None,
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let rocks = RocksStore::open(dir.path()).expect("rocksdb opens");
    report(
        "rocksdb",
        signals.len(),
        &mut apply_all(&rocks, &config, &signals),
        Some(memory),
    );
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
