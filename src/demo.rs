//! `cdp demo`: generate a workload, run the whole pipeline on it until drained, and report what
//! happened, including pairwise accuracy against the workload's ground truth.

use crate::config::Config;
use crate::eval::{pairwise, PairwiseScores};
use crate::pipeline::{self, Counters, Stages};
use anyhow::{Context, Result};
use cdp_bus::{Bus, ConsumerOptions, StartFrom};
use cdp_proto::Signal;
use cdp_resolver::{lookup, GraphStore, RocksStore};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct DemoOptions {
    pub profiles: usize,
    pub seed: u64,
    /// Everything the demo writes goes under `DIR/demo`, cleared first.
    pub data: PathBuf,
}

pub fn run(config: &Config, opts: &DemoOptions, shutdown: Arc<AtomicBool>) -> Result<()> {
    let root = opts.data.join("demo");
    if root.exists() {
        std::fs::remove_dir_all(&root).with_context(|| format!("clearing {}", root.display()))?;
    }
    let workload = root.join("workload");
    let state = root.join("state");

    let t = Instant::now();
    // Events fall in the 30 days before now, so recency cohorts see them as the live stream would.
    let options = cdp_ingest::workload::WorkloadOptions {
        profiles: opts.profiles,
        seed: opts.seed,
        now: chrono::Utc::now(),
    };
    let summary = cdp_ingest::workload::generate_with(&workload, &options)
        .with_context(|| format!("generating workload in {}", workload.display()))?;
    println!(
        "generated {} people, {} records in {:.1}s -> {}",
        opts.profiles,
        summary.records(),
        t.elapsed().as_secs_f64(),
        workload.display()
    );

    let bus = pipeline::open_bus(config, &state)?;
    pipeline::create_topics(bus.as_ref(), config)?;
    let fed = pipeline::feed_inputs(bus.as_ref(), config, &workload)?;
    let raw_total: u64 = fed.iter().map(|(_, n)| n).sum();

    let counters = Arc::new(Counters::default());
    let t = Instant::now();
    pipeline::run(
        config,
        &state,
        bus.clone(),
        Stages::ALL,
        counters.clone(),
        shutdown.clone(),
        pipeline::RunOptions {
            until_drained: true,
            ..Default::default()
        },
    )?;
    let wall = t.elapsed();
    if shutdown.load(Ordering::Relaxed)
        && bus.lag(
            &config.activation.group,
            std::slice::from_ref(&config.activation.profiles_topic),
        )? > 0
    {
        println!("interrupted before the pipeline drained");
    }

    let store = RocksStore::open(&pipeline::resolver_dir(&state))?;
    let scores = accuracy(bus.as_ref(), config, &store, &workload.join("truth.csv"))?;
    let members =
        cdp_activation::membership::MembershipStore::open(&pipeline::activation_dir(&state))?
            .members()?;
    let mut per_cohort: BTreeMap<String, u64> = BTreeMap::new();
    for (_, _, audience, _) in members {
        *per_cohort.entry(audience).or_default() += 1;
    }
    report(
        &fed,
        raw_total,
        wall,
        &counters,
        lookup::count_profiles(&store)?,
        &per_cohort,
        &scores,
    );
    println!(
        "\nstate and topics: {} (inspect with `cdp topic list --data {}`)",
        state.display(),
        state.display()
    );
    Ok(())
}

fn rate(n: u64, d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs <= 0.0 {
        return "-".into();
    }
    format!("{:.0}/s", n as f64 / secs)
}

fn report(
    fed: &[(String, u64)],
    raw_total: u64,
    wall: Duration,
    c: &Counters,
    profiles: u64,
    per_cohort: &BTreeMap<String, u64>,
    scores: &PairwiseScores,
) {
    let r = &c.resolver;
    let a = &c.activation;
    let load = |x: &std::sync::atomic::AtomicU64| x.load(Ordering::Relaxed);
    println!("\n== pipeline (embedded bus) ==");
    let sources: Vec<String> = fed.iter().map(|(s, n)| format!("{s} {n}")).collect();
    println!("raw records        {raw_total} ({})", sources.join(", "));
    println!(
        "drained in         {:.2}s wall, {} end to end",
        wall.as_secs_f64(),
        rate(raw_total, wall)
    );
    println!(
        "{:<18} {:>10} {:>10} {:>8} {:>14}",
        "stage", "in", "out", "dlq", "rate (busy)"
    );
    for (name, s) in [
        ("ingest", &c.ingest),
        ("resolver", &r.stage),
        ("activation", &a.stage),
    ] {
        println!(
            "{:<18} {:>10} {:>10} {:>8} {:>14}",
            name,
            s.consumed(),
            s.produced(),
            s.dead_lettered(),
            rate(s.consumed(), s.busy())
        );
    }
    println!("\n== identity ==");
    println!("profiles           {profiles}");
    println!("merges             {}", load(&r.merges));
    println!("refused merges     {}", load(&r.refused));
    println!("candidate links    {}", load(&r.candidates));
    println!("\n== cohorts ==");
    println!("entered            {}", load(&a.entered));
    println!("exited             {}", load(&a.exited));
    for (k, n) in per_cohort {
        println!("  {k:<16} {n} members");
    }
    let samples = load(&a.latency_samples);
    if samples > 0 {
        println!(
            "signal -> cohort change  {:.0} ms mean (includes the wait of the preloaded input)",
            load(&a.latency_us_sum) as f64 / samples as f64 / 1000.0
        );
    }
    println!("\n== accuracy vs truth.csv (pairwise) ==");
    println!("records            {}", scores.records);
    println!("precision          {:.4}", scores.precision);
    println!("recall             {:.4}", scores.recall);
    println!("F1                 {:.4}", scores.f1);
    println!(
        "false pairs        {} (joined, truth apart)",
        scores.false_pairs
    );
    println!(
        "missed pairs       {} (truth joined, kept apart)",
        scores.missed_pairs
    );
}

/// Pairwise accuracy: each signal's record id mapped to the profile its first identifier is in now.
pub fn accuracy(
    bus: &dyn Bus,
    config: &Config,
    store: &dyn GraphStore,
    truth: &Path,
) -> Result<PairwiseScores> {
    let mut truth_map: HashMap<(String, String), String> = HashMap::new();
    let text =
        std::fs::read_to_string(truth).with_context(|| format!("reading {}", truth.display()))?;
    for line in text.lines().skip(1) {
        let mut parts = line.splitn(3, ',');
        if let (Some(source), Some(record), Some(person)) =
            (parts.next(), parts.next(), parts.next())
        {
            truth_map.insert((source.to_string(), record.to_string()), person.to_string());
        }
    }
    let mut consumer = bus.consumer(ConsumerOptions {
        group: format!("cdp-demo-eval-{}", std::process::id()),
        topics: vec![config.resolver.signals_topic.clone()],
        start: StartFrom::Earliest,
        commit: false,
    })?;
    let ends: i64 = bus
        .end_offsets(&config.resolver.signals_topic)?
        .iter()
        .sum();
    let mut seen = 0i64;
    let mut predicted: HashMap<(String, String), String> = HashMap::new();
    let mut cache: HashMap<(String, String), Option<String>> = HashMap::new();
    while seen < ends {
        let records = consumer.poll(5000, Duration::from_millis(500))?;
        if records.is_empty() {
            break;
        }
        seen += records.len() as i64;
        for r in records {
            let Some(signal) = r
                .value
                .as_deref()
                .and_then(|v| serde_json::from_slice::<Signal>(v).ok())
            else {
                continue;
            };
            let Some(first) = signal.identifiers.first() else {
                continue;
            };
            let key = (signal.tenant.clone(), first.to_string());
            let canonical = match cache.get(&key) {
                Some(c) => c.clone(),
                None => {
                    let c = lookup::canonical_of(store, &signal.tenant, first)?;
                    cache.insert(key, c.clone());
                    c
                }
            };
            if let Some(c) = canonical {
                predicted.insert((signal.source.as_str().to_string(), signal.event_id), c);
            }
        }
    }
    consumer.close()?;
    Ok(pairwise(&truth_map, &predicted))
}
