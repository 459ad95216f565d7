//! Probabilistic matching cost per record against the number of profiles: builds a RocksDB
//! graph of N synthetic CRM person records (matching on, so the blocking index is filled),
//! then applies probe records (each in a transaction that is not committed, so the graph stays
//! at N) with and without matching, and prints the time per record and the pairs compared.
//! The claim under test: a record costs O(block size), not O(N).
//!
//! `cargo bench -p cdp-benches --bench matching` (sizes: CDP_BENCH_MATCHING_SIZES, default
//! `10000,100000`; name pools: CDP_BENCH_MATCHING_NAMES=`FIRST,LAST`, default `100,1000`; small
//! pools make common names, whose blocks fill up to `max_block_size`).

use cdp_proto::time::from_millis;
use cdp_proto::{Identifier, IdentifierKind, Signal, Source};
use cdp_resolver::graph::Batch;
use cdp_resolver::txn::Txn;
use cdp_resolver::{Resolver, ResolverConfig, RocksStore};
use std::time::{Duration, Instant};

const SYLLABLES: [&str; 24] = [
    "an", "be", "ca", "do", "el", "fi", "ga", "ho", "is", "ju", "ka", "lo", "ma", "ne", "ol", "pa",
    "ri", "sa", "to", "ul", "va", "we", "ya", "zo",
];

/// SplitMix64 of `x`: reproducible pseudo-random fields.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn word(x: u64, syllables: u32) -> String {
    (0..syllables)
        .map(|i| SYLLABLES[(mix(x + u64::from(i)) % 24) as usize])
        .collect()
}

/// Person `n` of population `seed`: names from pools of `first` and `last` names, a birth date
/// among 20,000 days, a postcode among 20,000.
fn person(seed: u64, n: u64, (first, last): (u64, u64)) -> Signal {
    let h = |k: u64| mix(mix(seed << 40 ^ n) ^ k);
    let traits = [
        ("first_name", word(h(1) % first, 2)),
        ("last_name", word(1_000_000 + h(2) % last, 3)),
        (
            "birth_date",
            format!(
                "{}-{:02}-{:02}",
                1940 + h(3) % 60,
                1 + h(4) % 12,
                1 + h(5) % 28
            ),
        ),
        ("postal_code", format!("{:05}", h(6) % 20_000)),
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

/// Mean and p99 time per probe, and pairs compared per probe.
fn probe(
    store: &RocksStore,
    r: &Resolver,
    probes: u64,
    pools: (u64, u64),
) -> (Duration, Duration, f64) {
    let mut times = Vec::with_capacity(probes as usize);
    let mut compared = 0;
    for p in 0..probes {
        let s = person(99, p, pools);
        let started = Instant::now();
        let mut txn = Txn::begin(store).expect("txn");
        let mut batch = Batch::default();
        r.apply(&mut txn, &s, &mut batch).expect("apply");
        compared += r.finish(&mut txn, batch).expect("finish").compared;
        times.push(started.elapsed());
    }
    times.sort();
    let mean = times.iter().sum::<Duration>() / probes as u32;
    let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
    (mean, p99, compared as f64 / probes as f64)
}

fn main() {
    let sizes: Vec<u64> = std::env::var("CDP_BENCH_MATCHING_SIZES")
        .unwrap_or_else(|_| "10000,100000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let pools: Vec<u64> = std::env::var("CDP_BENCH_MATCHING_NAMES")
        .unwrap_or_else(|_| "100,1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let pools = match pools[..] {
        [first, last] if first > 0 && last > 0 => (first, last),
        _ => panic!("CDP_BENCH_MATCHING_NAMES must be FIRST,LAST pool sizes"),
    };
    println!(
        "name pools: {} first names, {} last names",
        pools.0, pools.1
    );
    let mut config = ResolverConfig::default();
    config.matching.enabled = true;
    let matching = Resolver::from_config(&config).expect("matching config");
    let plain = Resolver::new(config.policy.clone());
    println!("profiles  with matching (mean / p99)  without (mean / p99)  pairs/record");
    for n in sizes {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksStore::open(dir.path()).expect("store");
        let mut next = 0;
        while next < n {
            let mut txn = Txn::begin(&store).expect("txn");
            let mut batch = Batch::default();
            for _ in 0..2000.min(n - next) {
                matching
                    .apply(&mut txn, &person(1, next, pools), &mut batch)
                    .expect("apply");
                next += 1;
            }
            matching.finish(&mut txn, batch).expect("finish");
            txn.commit().expect("commit");
        }
        let (m_mean, m_p99, pairs) = probe(&store, &matching, 5000, pools);
        let (p_mean, p_p99, _) = probe(&store, &plain, 5000, pools);
        println!(
            "{n:>8}  {:>9.1} / {:>7.1} us          {:>7.1} / {:>7.1} us    {pairs:.2}",
            m_mean.as_secs_f64() * 1e6,
            m_p99.as_secs_f64() * 1e6,
            p_mean.as_secs_f64() * 1e6,
            p_p99.as_secs_f64() * 1e6,
        );
    }
}
