//! `cdp demo`: generate a workload, run the whole pipeline on it until drained, and report what
//! happened, including pairwise accuracy against the workload's ground truth.

use crate::config::Config;
use crate::eval::{self, Scores};
use crate::pipeline::{self, Counters, Stages};
use anyhow::{Context, Result};
use cdp_resolver::{lookup, RocksStore};
use std::collections::BTreeMap;
use std::path::PathBuf;
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

    let store = RocksStore::open_with(&pipeline::resolver_dir(&state), &config.resolver.storage)?;
    let scores = eval::evaluate(bus.as_ref(), config, &store, &workload.join("truth.csv"))?;
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

fn report(
    fed: &[(String, u64)],
    raw_total: u64,
    wall: Duration,
    c: &Counters,
    profiles: u64,
    per_cohort: &BTreeMap<String, u64>,
    scores: &Scores,
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
        pipeline::rate(raw_total, wall)
    );
    print!("{}", c.table(Stages::ALL));
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
    println!("\n== accuracy vs truth.csv ==");
    eval::print(scores);
}
