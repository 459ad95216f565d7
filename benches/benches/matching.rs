//! Probabilistic matching cost per record against the number of profiles: builds a RocksDB
//! graph of N synthetic CRM person records (matching on, so the blocking index is filled),
//! then applies probe records (each in a transaction that is not committed, so the graph stays
//! at N) with and without matching, interleaved, each with people of its own, and prints the
//! time per record, the pairs compared and the time per pair. The claim under test: a record
//! costs O(block size), not O(N).
//!
//! Two populations:
//! - `census` (the default): vocabularies that grow with the population, as real ones do.
//!   Surnames follow a Zipf–Mandelbrot law, p(rank r) ∝ 1/(r + 10), over a pool of N/10
//!   surnames: the most common is ~1% of people and the top 1,000 about half, as in census
//!   surname tables (Smith is 0.8% of the US, the top 1,000 names 42%). First names follow
//!   1/(r + 5) over N/100 names (at least 500). Postcodes: one per 40 people (about 16
//!   households of 2.5, the size of a UK postcode or a US ZIP+4). Birth dates over 65 years.
//! - `small-pools` (`CDP_BENCH_MATCHING_NAMES=FIRST,LAST`, e.g. `100,1000`): the adversarial
//!   case, fixed uniform pools of names and 20,000 postcodes whatever N, so name blocks grow
//!   linearly with N until `max_block_size` marks them oversized.
//!
//! `cargo bench -p cdp-benches --bench matching` (sizes: CDP_BENCH_MATCHING_SIZES, default
//! `10000,100000`; probes per size: CDP_BENCH_MATCHING_PROBES, default 5000; probes also run
//! with each `max_block_candidates` in CDP_BENCH_MATCHING_CANDIDATES, e.g. `4,100`; the store's
//! block cache, `[resolver.storage] block_cache_mb`: CDP_BENCH_BLOCK_CACHE_MB; its
//! `blocking_keys_in_memory`: CDP_BENCH_BLOCKING_KEYS, 0 to read every block). It also
//! prints the bytes each record's batch writes, and how full each blocking rule's keys are.

use cdp_proto::time::from_millis;
use cdp_proto::{Identifier, IdentifierKind, Signal, Source};
use cdp_resolver::graph::Batch;
use cdp_resolver::matching::blocking::Block;
use cdp_resolver::store::{Cf, Op};
use cdp_resolver::txn::Txn;
use cdp_resolver::{GraphStore, Resolver, ResolverConfig, RocksStore};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SYLLABLES: [&str; 24] = [
    "an", "be", "ca", "do", "el", "fi", "ga", "ho", "is", "ju", "ka", "lo", "ma", "ne", "ol", "pa",
    "ri", "sa", "to", "ul", "va", "we", "ya", "zo",
];

/// SplitMix64 of `x`: reproducible pseudo-random fields.
fn mix(x: u64) -> u64 {
    cdp_benches::mix(x.wrapping_add(0x9e37_79b9_7f4a_7c15))
}

/// A made-up word for `x`, distinct for distinct `x` below 24^`min_syllables` (its digits in
/// base 24, each a syllable), longer for larger `x`.
fn word(x: u64, min_syllables: u32) -> String {
    let mut out = String::new();
    let mut rest = x;
    let mut n = 0;
    while n < min_syllables || rest > 0 {
        out.push_str(SYLLABLES[(rest % 24) as usize]);
        rest /= 24;
        n += 1;
    }
    out
}

/// A Zipf–Mandelbrot law over `size` ranks, p(r) ∝ 1/(r + offset), drawn by inverting its
/// cumulative distribution.
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(size: u64, offset: f64) -> Self {
        let mut total = 0.0;
        let mut cumulative: Vec<f64> = (1..=size)
            .map(|r| {
                total += 1.0 / (r as f64 + offset);
                total
            })
            .collect();
        for c in &mut cumulative {
            *c /= total;
        }
        Self { cumulative }
    }

    /// The rank (from 0) at uniform draw `u` in [0, 1).
    fn rank(&self, u: f64) -> u64 {
        self.cumulative.partition_point(|c| *c <= u) as u64
    }

    /// The share of people the `k` most common values cover.
    fn top(&self, k: usize) -> f64 {
        self.cumulative[k.min(self.cumulative.len()) - 1]
    }
}

/// How the bench's people are drawn.
enum Population {
    Census {
        first: Zipf,
        last: Zipf,
        postcodes: u64,
    },
    SmallPools {
        first: u64,
        last: u64,
    },
}

impl Population {
    fn census(n: u64) -> Self {
        Population::Census {
            first: Zipf::new((n / 100).max(500), 5.0),
            last: Zipf::new((n / 10).max(1000), 10.0),
            postcodes: (n / 40).max(1),
        }
    }

    fn describe(&self) -> String {
        match self {
            Population::Census {
                first,
                last,
                postcodes,
            } => format!(
                "census: {} first names (top one {:.1}%), {} surnames (top one {:.2}%, top 1,000 {:.0}%), {postcodes} postcodes",
                first.cumulative.len(),
                first.top(1) * 100.0,
                last.cumulative.len(),
                last.top(1) * 100.0,
                last.top(1000) * 100.0,
            ),
            Population::SmallPools { first, last } => format!(
                "small pools: {first} first names, {last} surnames, 20000 postcodes (uniform)"
            ),
        }
    }

    /// Person `n` of population `seed`.
    fn person(&self, seed: u64, n: u64) -> Signal {
        let h = |k: u64| mix(mix(seed << 40 ^ n) ^ k);
        let unit = |k: u64| (h(k) >> 11) as f64 / (1u64 << 53) as f64;
        let (first, last, postcode) = match self {
            Population::Census {
                first,
                last,
                postcodes,
            } => (
                word(first.rank(unit(1)), 2),
                word(1_000_000 + last.rank(unit(2)), 3),
                h(6) % postcodes,
            ),
            Population::SmallPools { first, last } => (
                word(h(1) % first, 2),
                word(1_000_000 + h(2) % last, 3),
                h(6) % 20_000,
            ),
        };
        let traits = [
            ("first_name", first),
            ("last_name", last),
            (
                "birth_date",
                format!(
                    "{}-{:02}-{:02}",
                    1940 + h(3) % 65,
                    1 + h(4) % 12,
                    1 + h(5) % 28
                ),
            ),
            ("postal_code", format!("{postcode:06}")),
            ("city", word(2_000_000 + h(7) % 300, 2)),
        ];
        let t = from_millis(1_700_000_000_000 + n as i64);
        Signal {
            tenant: "bench".into(),
            source: Source::Crm,
            event_id: format!("{seed}-{n}"),
            event_time: t,
            received_at: t,
            identifiers: vec![Identifier::new(
                IdentifierKind::CrmId,
                format!("sf:{seed}:{n}"),
            )],
            links: Vec::new(),
            event: None,
            traits: traits
                .into_iter()
                .map(|(k, v)| (k.to_string(), serde_json::Value::from(v)))
                .collect(),
            consent: Default::default(),
        }
    }
}

/// The store the graph is built in, counting what each committed batch writes per column
/// family (puts and bytes of key and value), to show what matching costs the write.
struct Counted<'s> {
    store: &'s RocksStore,
    written: Mutex<BTreeMap<Cf, (u64, u64)>>,
}

impl GraphStore for Counted<'_> {
    fn get(&self, cf: Cf, key: &[u8]) -> cdp_resolver::Result<Option<Vec<u8>>> {
        self.store.get(cf, key)
    }

    fn write(&self, ops: Vec<Op>) -> cdp_resolver::Result<()> {
        let mut written = self.written.lock().expect("counts");
        for (cf, k, v) in &ops {
            let c = written.entry(*cf).or_default();
            c.0 += 1;
            c.1 += (k.len() + v.as_ref().map_or(0, Vec::len)) as u64;
        }
        drop(written);
        self.store.write(ops)
    }

    fn scan_prefix(&self, cf: Cf, prefix: &[u8]) -> cdp_resolver::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.store.scan_prefix(cf, prefix)
    }
}

/// What the probes measured.
struct Probed {
    mean: Duration,
    /// The median: on a shared machine, a few probes stalled by other work move the mean.
    p50: Duration,
    p99: Duration,
    /// Pairs compared, and blocking keys skipped as oversized, per probe.
    pairs: f64,
    skipped: f64,
}

/// Probes with each resolver of `resolvers`, interleaved record by record, so that background
/// work (compaction after the build, other processes) weighs on all alike.
fn probe(
    store: &RocksStore,
    resolvers: &[&Resolver],
    probes: u64,
    population: &Population,
) -> Vec<Probed> {
    let mut times = vec![Vec::with_capacity(probes as usize); resolvers.len()];
    let mut counts = vec![(0, 0); resolvers.len()];
    for p in 0..probes {
        for (i, r) in resolvers.iter().enumerate() {
            // Each resolver gets people of its own (drawn alike): with one record for all, the
            // first to read its blocks would warm RocksDB's cache for the others.
            let s = population.person(99 + i as u64, p);
            let started = Instant::now();
            let mut txn = Txn::begin(store).expect("txn");
            let mut batch = Batch::default();
            r.apply(&mut txn, s, &mut batch).expect("apply");
            let out = r.finish(&mut txn, batch).expect("finish");
            times[i].push(started.elapsed());
            counts[i].0 += out.compared;
            counts[i].1 += out.blocks_skipped;
        }
    }
    times
        .iter_mut()
        .zip(counts)
        .map(|(times, (compared, skipped))| {
            times.sort();
            Probed {
                mean: times.iter().sum::<Duration>() / probes as u32,
                p50: times[times.len() / 2],
                p99: times[(times.len() * 99 / 100).min(times.len() - 1)],
                pairs: compared as f64 / probes as f64,
                skipped: skipped as f64 / probes as f64,
            }
        })
        .collect()
}

/// Per blocking rule (its key tag), the size of the block a record filed under it shares, on
/// average over records (sum of squared sizes over the sum of sizes), and the keys marked
/// oversized: which keys grow with the population.
fn occupancy(store: &RocksStore) -> String {
    let mut rules: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for (k, v) in store.scan_prefix(Cf::Blocks, b"").expect("blocks") {
        let tag = k
            .split(|b| *b == 0)
            .nth(1)
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .unwrap_or_default();
        let r = rules.entry(tag).or_default();
        match Block::decode(&v).expect("a block") {
            Block::Oversized => r.2 += 1,
            b => {
                let size = b.entries().len() as u64;
                r.0 += size * size;
                r.1 += size;
            }
        }
    }
    let shown: Vec<String> = rules
        .iter()
        .map(|(tag, (squares, sizes, oversized))| {
            format!(
                "{tag} {:.1} ({oversized} oversized)",
                *squares as f64 / (*sizes).max(1) as f64
            )
        })
        .collect();
    format!(
        "block a record shares, mean size per rule: {}",
        shown.join(", ")
    )
}

fn main() {
    let list = |name: &str, default: &str| -> Vec<u64> {
        std::env::var(name)
            .unwrap_or_else(|_| default.into())
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect()
    };
    let sizes = list("CDP_BENCH_MATCHING_SIZES", "10000,100000");
    let probes = list("CDP_BENCH_MATCHING_PROBES", "5000")
        .first()
        .copied()
        .filter(|p| *p > 0)
        .expect("CDP_BENCH_MATCHING_PROBES must be a positive number");
    let small_pools = match std::env::var("CDP_BENCH_MATCHING_NAMES") {
        Err(_) => None,
        Ok(_) => match list("CDP_BENCH_MATCHING_NAMES", "")[..] {
            [first, last] if first > 0 && last > 0 => Some((first, last)),
            _ => panic!("CDP_BENCH_MATCHING_NAMES must be FIRST,LAST pool sizes"),
        },
    };
    let mut config = ResolverConfig::default();
    config.matching.enabled = true;
    if let Some(mb) = list("CDP_BENCH_BLOCK_CACHE_MB", "").first() {
        config.storage.block_cache_mb = *mb as usize;
    }
    if let Some(keys) = list("CDP_BENCH_BLOCKING_KEYS", "").first() {
        config.storage.blocking_keys_in_memory = *keys as usize;
    }
    println!(
        "max_block_size {}, block cache {} MiB, blocking keys in memory up to {}",
        config.matching.max_block_size,
        config.storage.block_cache_mb,
        config.storage.blocking_keys_in_memory
    );
    let matching = Resolver::from_config(&config).expect("matching config");
    // The probes also run with other `max_block_candidates` on the same graph (built with the
    // default), to show what the bound on a crowded key's candidates saves.
    let mut candidates = vec![config.matching.max_block_candidates];
    candidates.extend(
        list("CDP_BENCH_MATCHING_CANDIDATES", "")
            .into_iter()
            .map(|k| k as usize),
    );
    let matchers: Vec<Resolver> = candidates
        .iter()
        .map(|k| {
            let mut c = config.clone();
            c.matching.max_block_candidates = *k;
            Resolver::from_config(&c).expect("matching config")
        })
        .collect();
    let plain = Resolver::new(config.policy.clone());
    for n in sizes {
        let population = match small_pools {
            Some((first, last)) => Population::SmallPools { first, last },
            None => Population::census(n),
        };
        println!("{n} profiles, {}", population.describe());
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksStore::open_with(dir.path(), &config.storage).expect("store");
        let counted = Counted {
            store: &store,
            written: Mutex::default(),
        };
        let started = Instant::now();
        let mut next = 0;
        while next < n {
            let mut txn = Txn::begin(&counted).expect("txn");
            let mut batch = Batch::default();
            for _ in 0..2000.min(n - next) {
                matching
                    .apply(&mut txn, population.person(1, next), &mut batch)
                    .expect("apply");
                next += 1;
            }
            matching.finish(&mut txn, batch).expect("finish");
            txn.commit().expect("commit");
        }
        println!(
            "  built in {:.1} s ({:.0} records/s with matching, batches of 2,000)",
            started.elapsed().as_secs_f64(),
            n as f64 / started.elapsed().as_secs_f64()
        );
        let written = counted.written.into_inner().expect("counts");
        let (puts, bytes) = written
            .values()
            .fold((0, 0), |(p, b), (puts, bytes)| (p + puts, b + bytes));
        let per_record = |x: u64| x as f64 / n as f64;
        let of = |cf: Cf| written.get(&cf).copied().unwrap_or_default();
        let (blocks, records) = (of(Cf::Blocks), of(Cf::MatchRecords));
        println!(
            "  written per record: {:.1} keys, {:.0} bytes in all; blocks {:.1} keys, {:.0} bytes; \
             match_records {:.1} keys, {:.0} bytes",
            per_record(puts),
            per_record(bytes),
            per_record(blocks.0),
            per_record(blocks.1),
            per_record(records.0),
            per_record(records.1),
        );
        println!("  {}", occupancy(&store));
        let resolvers: Vec<&Resolver> = std::iter::once(&plain).chain(&matchers).collect();
        let probed = probe(&store, &resolvers, probes, &population);
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let p = &probed[0];
        println!(
            "  without matching {:.1} / {:.1} / {:.1} us (median / mean / p99)",
            us(p.p50),
            us(p.mean),
            us(p.p99),
        );
        for (m, k) in probed[1..].iter().zip(&candidates) {
            let per_pair = if m.pairs > 0.0 {
                format!("{:.2} us", (us(m.p50) - us(p.p50)) / m.pairs)
            } else {
                "-".into()
            };
            println!(
                "  with matching, max_block_candidates {k}: {:.1} / {:.1} / {:.1} us; \
                 {:.2} pairs compared/record, {per_pair}/pair (median matching time over pairs), \
                 {:.2} oversized keys skipped/record",
                us(m.p50),
                us(m.mean),
                us(m.p99),
                m.pairs,
                m.skipped,
            );
        }
    }
}
