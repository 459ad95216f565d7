//! Ingest throughput: parse + normalise + hash of raw records, per source and mixed, against the
//! baseline of parsing the same bytes into a `serde_json::Value` (the floor of any JSON pipeline
//! that looks at every record), measured in the same run.
//!
//! The corpus is the workload generator's (`cdp_ingest::workload`): realistic shapes and noise,
//! ~0.1% invalid lines that exercise the rejection path. Each benchmark runs over the whole corpus
//! of its source, so criterion's times are per corpus pass and its throughput is records/s.
//! After criterion's report, a summary prints records/s and signals/s of every benchmark, computed
//! from all of criterion's own timed iterations, and the ratio of ours to the baseline; then a
//! second table from the fastest of alternating passes of ours and the baseline, the steadier
//! figure on a machine shared with other work.
//!
//! A last group times one phone number through the fast path and through the `phonenumber`
//! parser.
//!
//! Run: `cargo bench -p cdp-benches --bench ingest` (`CDP_BENCH_PROFILES` sets the corpus size,
//! default 1000 people, about 30,000 records).

use cdp_ingest::workload::{file_name, generate};
use cdp_ingest::{normalize_payload_counted, DroppedIdentifiers, NormalizeOptions};
use cdp_proto::{Source, Timestamp};
use criterion::{criterion_group, Bencher, BenchmarkId, Criterion, Throughput};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// The allocator the `cdp` binary runs with (src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One corpus: raw records and the source each belongs to.
struct Corpus {
    name: &'static str,
    records: Vec<(Source, Vec<u8>)>,
    /// Signals the records yield (a Segment batch yields several).
    signals: u64,
}

/// What criterion timed, per benchmark: `(corpus passes, total time)`.
type Timings = BTreeMap<(String, &'static str), (u64, Duration)>;

thread_local! {
    static TIMINGS: RefCell<Timings> = const { RefCell::new(BTreeMap::new()) };
}

fn received_at() -> Timestamp {
    cdp_ingest::workload::default_now()
}

fn load() -> Vec<Corpus> {
    let profiles = std::env::var("CDP_BENCH_PROFILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let dir = tempfile::tempdir().expect("temporary directory");
    generate(dir.path(), profiles, 42).expect("workload");
    let opts = NormalizeOptions::default();
    let mut corpora = Vec::new();
    let mut mixed = Vec::new();
    for source in Source::ALL {
        let text = std::fs::read(dir.path().join(file_name(source))).expect("workload file");
        let records: Vec<(Source, Vec<u8>)> = text
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| (source, l.to_vec()))
            .collect();
        mixed.extend(records.iter().cloned());
        corpora.push(Corpus {
            name: source.as_str(),
            signals: count_signals(&records, &opts),
            records,
        });
    }
    // The mixed corpus interleaves the sources as one consumer of all four topics sees them.
    mixed.sort_by_key(|(_, bytes)| fxhash(bytes));
    corpora.push(Corpus {
        name: "mixed",
        signals: count_signals(&mixed, &opts),
        records: mixed,
    });
    corpora
}

/// A cheap deterministic shuffle key.
fn fxhash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn count_signals(records: &[(Source, Vec<u8>)], opts: &NormalizeOptions) -> u64 {
    let mut dropped = DroppedIdentifiers::default();
    records
        .iter()
        .filter_map(|(source, bytes)| {
            normalize_payload_counted(*source, "default", bytes, received_at(), opts, &mut dropped)
                .ok()
        })
        .map(|s| s.len() as u64)
        .sum()
}

fn ours(corpus: &Corpus, opts: &NormalizeOptions) -> usize {
    let mut dropped = DroppedIdentifiers::default();
    let mut n = 0;
    for (source, bytes) in &corpus.records {
        let out = normalize_payload_counted(
            *source,
            "default",
            black_box(bytes),
            received_at(),
            opts,
            &mut dropped,
        );
        n += black_box(out).map_or(0, |s| s.len());
    }
    n
}

fn baseline(corpus: &Corpus) -> usize {
    let mut n = 0;
    for (_, bytes) in &corpus.records {
        let v = serde_json::from_slice::<serde_json::Value>(black_box(bytes));
        n += usize::from(black_box(v).is_ok());
    }
    n
}

fn bench(c: &mut Criterion) {
    let corpora = load();
    let opts = NormalizeOptions::default();
    for corpus in &corpora {
        let mut group = c.benchmark_group(format!("ingest/{}", corpus.name));
        group.throughput(Throughput::Elements(corpus.records.len() as u64));
        group.sample_size(20);
        group.measurement_time(Duration::from_secs(8));
        group.bench_function(BenchmarkId::new("parse_normalize_hash", corpus.name), |b| {
            timed(b, corpus.name, "ours", || ours(corpus, &opts))
        });
        group.bench_function(BenchmarkId::new("serde_json_value", corpus.name), |b| {
            timed(b, corpus.name, "baseline", || baseline(corpus))
        });
        group.finish();
    }
    summary(&corpora);
    best_of(&corpora, &opts);
    phones(c);
}

/// Ours and the baseline in alternation, `CDP_BENCH_PASSES` (default 10) passes each, keeping
/// each one's fastest pass: on a shared machine the fastest pass is the one least disturbed by
/// other work, and alternating exposes both to the same disturbances.
fn best_of(corpora: &[Corpus], opts: &NormalizeOptions) {
    let passes: usize = std::env::var("CDP_BENCH_PASSES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    println!();
    println!("fastest of {passes} alternating passes (one thread)");
    println!(
        "{:<7} {:>14} {:>14} {:>16} {:>8}",
        "corpus", "records/s", "signals/s", "baseline rec/s", "ratio"
    );
    for c in corpora {
        if !filter.is_empty()
            && !filter
                .iter()
                .any(|f| format!("ingest/{}", c.name).contains(f.as_str()) || f.contains(c.name))
        {
            continue;
        }
        let mut ours_best = Duration::MAX;
        let mut base_best = Duration::MAX;
        for _ in 0..passes {
            let start = Instant::now();
            black_box(ours(c, opts));
            ours_best = ours_best.min(start.elapsed());
            let start = Instant::now();
            black_box(baseline(c));
            base_best = base_best.min(start.elapsed());
        }
        let records = c.records.len() as f64;
        let ours_rate = records / ours_best.as_secs_f64();
        let base_rate = records / base_best.as_secs_f64();
        println!(
            "{:<7} {:>14.0} {:>14.0} {:>16.0} {:>8.2}",
            c.name,
            ours_rate,
            c.signals as f64 / ours_best.as_secs_f64(),
            base_rate,
            ours_rate / base_rate
        );
    }
}

/// One phone number through `cdp_proto::normalize`: a North American format the fast path
/// reads, and an international number that goes through the `phonenumber` parser.
fn phones(c: &mut Criterion) {
    let opts = cdp_proto::NormalizeOptions::default();
    let mut group = c.benchmark_group("ingest/phone");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(3));
    for (name, raw) in [
        ("nanp_fast_path", "(415) 555-2671"),
        ("parser", "+44 20 7946 0018"),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                cdp_proto::normalize(
                    cdp_proto::IdentifierKind::PhoneSha256,
                    black_box(raw),
                    &opts,
                )
            })
        });
    }
    group.finish();
}

/// Runs `run` as criterion asks, also adding the passes and their time to [`TIMINGS`].
fn timed(b: &mut Bencher, corpus: &str, which: &'static str, run: impl Fn() -> usize) {
    b.iter_custom(|iters| {
        let start = Instant::now();
        for _ in 0..iters {
            black_box(run());
        }
        let elapsed = start.elapsed();
        TIMINGS.with(|t| {
            let mut t = t.borrow_mut();
            let e = t.entry((corpus.to_string(), which)).or_default();
            e.0 += iters;
            e.1 += elapsed;
        });
        elapsed
    })
}

/// Prints records/s, signals/s and the ratio to the baseline for every corpus.
fn summary(corpora: &[Corpus]) {
    let timings = TIMINGS.with(|t| t.borrow().clone());
    let rate = |name: &str, which: &'static str, per_pass: u64| -> Option<f64> {
        let (passes, time) = timings.get(&(name.to_string(), which))?;
        Some((*passes * per_pass) as f64 / time.as_secs_f64())
    };
    println!();
    println!("ingest throughput (one thread; all criterion iterations)");
    println!(
        "{:<7} {:>8} {:>8} {:>14} {:>14} {:>16} {:>8}",
        "corpus", "records", "signals", "records/s", "signals/s", "baseline rec/s", "ratio"
    );
    for c in corpora {
        let records = c.records.len() as u64;
        let (Some(ours), Some(signals), Some(base)) = (
            rate(c.name, "ours", records),
            rate(c.name, "ours", c.signals),
            rate(c.name, "baseline", records),
        ) else {
            continue;
        };
        println!(
            "{:<7} {:>8} {:>8} {:>14.0} {:>14.0} {:>16.0} {:>8.2}",
            c.name,
            records,
            c.signals,
            ours,
            signals,
            base,
            ours / base
        );
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
