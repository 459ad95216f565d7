//! Activation throughput with 20 cohorts (the 4 defaults and 16 more of the kinds marketing
//! teams run: lifecycle, windowed counters, channels, consent, recency). The profile updates and
//! identity changes are those the resolver makes of a generated workload. Prints, on one thread:
//! - evaluation in updates/s, re-evaluating only the cohorts whose inputs changed, against
//!   running all 20 CEL programs on every update (the naive way), in the same run;
//! - the durable apply path (`stage::apply_records` into RocksDB: memberships, versions, outbox
//!   and offsets in one write per batch) in updates/s with batch latency percentiles;
//! - peak RSS.
//!
//! `cargo bench -p cdp-benches --bench activation` (people: CDP_BENCH_PROFILES, default 20000).

use cdp_activation::config::{ActivationConfig, CohortConfig};
use cdp_activation::inputs::InputHashes;
use cdp_activation::membership::MembershipStore;
use cdp_activation::stage::{self, ActivationCounters};
use cdp_activation::view::ProfileView;
use cdp_activation::Definitions;
use cdp_benches::{peak_rss_bytes, percentile, raw_records, signals};
use cdp_bus::{OutRecord, Record};
use cdp_ingest::IngestConfig;
use cdp_proto::{ProfileUpdate, Timestamp};
use cdp_resolver::store::Cf;
use cdp_resolver::{GraphStore, MemStore, Resolver, ResolverConfig};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The 16 cohorts added to the 4 defaults.
const COHORTS: [(&str, &str); 16] = [
    (
        "mqls",
        r#"profile.lifecycle_stage == "marketingqualifiedlead""#,
    ),
    (
        "webinar_leads",
        r#"profile.lifecycle_stage == "lead" && profile.traits["lead_source"] == "Webinar""#,
    ),
    (
        "nurture_subscribers",
        r#"profile.lifecycle_stage == "subscriber" && profile.consent["email"] == true"#,
    ),
    (
        "engaged_browsers",
        r#"profile.counts["Product Viewed"].last_7d >= 3"#,
    ),
    (
        "daily_app_users",
        r#"profile.counts["Application Opened"].last_1d >= 1"#,
    ),
    (
        "installed_not_registered",
        r#"profile.counts["install"].total >= 1 && !("af_complete_registration" in profile.counts)"#,
    ),
    (
        "cart_intent",
        r#"profile.counts["Product Viewed"].last_7d >= 2 && !("Order Completed" in profile.counts)"#,
    ),
    (
        "repeat_buyers",
        r#"profile.counts["Order Completed"].total >= 2"#,
    ),
    (
        "lapsed_customers",
        r#"profile.lifecycle_stage == "customer" && profile.days_since_last_engagement >= 14"#,
    ),
    (
        "ad_responders",
        r#"profile.counts["Ad Clicked"].last_30d >= 1 && profile.consent["advertising"] == true"#,
    ),
    (
        "email_reachable",
        r#"profile.consent["email"] == true && profile.identifiers["email_sha256"] >= 1"#,
    ),
    (
        "sms_reachable",
        r#"profile.consent["phone"] == true && profile.identifiers["phone_sha256"] >= 1"#,
    ),
    ("omnichannel", "size(profile.channels_active) >= 3"),
    ("web_only", r#"profile.channels_active == ["web"]"#),
    ("power_users", "profile.total_touchpoints >= 25"),
    (
        "newsletter_not_signed_up",
        r#"profile.counts["Newsletter Subscribed"].total >= 1 && !("Signed Up" in profile.counts)"#,
    ),
];

fn config() -> ActivationConfig {
    let mut config = ActivationConfig::default();
    for (key, expression) in COHORTS {
        config.cohorts.push(CohortConfig {
            key: key.into(),
            description: String::new(),
            expression: expression.into(),
            priority: 0,
            identifiers: vec!["email_sha256".into()],
            destinations: vec!["audience_topic".into()],
        });
    }
    config
}

/// What the resolver publishes for `signals`, as records of the profiles and identity changes
/// topics (one partition each, in publication order).
fn resolver_output(signals: &[Record]) -> Vec<Record> {
    let config = ResolverConfig::default();
    let resolver = Resolver::new(config.policy.clone());
    let store = MemStore::default();
    let mut out = Vec::new();
    let mut offsets: HashMap<String, i64> = HashMap::new();
    for chunk in signals.chunks(config.batch_size) {
        cdp_resolver::stage::apply_records(&resolver, &store, &config, chunk)
            .expect("batch applies");
        let outbox = store.scan_prefix(Cf::Outbox, b"").expect("outbox");
        let mut done = Vec::with_capacity(outbox.len());
        for (key, bytes) in outbox {
            let r = OutRecord::from_bytes(&bytes).expect("outbox record");
            if r.topic == config.profiles_topic || r.topic == config.changes_topic {
                let offset = offsets.entry(r.topic.clone()).or_insert(0);
                out.push(Record {
                    topic: r.topic,
                    partition: 0,
                    offset: *offset,
                    timestamp_ms: 0,
                    key: r.key,
                    value: r.value,
                    headers: r.headers,
                });
                *offset += 1;
            }
            done.push((Cf::Outbox, key, None));
        }
        store.write(done).expect("outbox emptied");
    }
    out
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

/// Where an evaluation of all cohorts spends its time, per update: building the view, the CEL
/// context, running the programs, and fingerprinting the inputs of every cohort.
fn breakdown(defs: &Definitions, updates: &[ProfileUpdate], now: Timestamp) -> [Duration; 4] {
    let mut spent = [Duration::ZERO; 4];
    for u in updates {
        let t = Instant::now();
        let view = ProfileView::new(&u.profile, now);
        spent[0] += t.elapsed();
        let t = Instant::now();
        let ctx = defs.cohorts.context(&view).expect("context");
        spent[1] += t.elapsed();
        let t = Instant::now();
        for c in &defs.cohorts.list {
            let _ = std::hint::black_box(c.matches(&ctx));
        }
        spent[2] += t.elapsed();
        let t = Instant::now();
        let mut hashes = InputHashes::new(&u.profile, now);
        for c in &defs.cohorts.list {
            std::hint::black_box(hashes.fingerprint(c.key(), &c.config.expression, &c.reads));
        }
        spent[3] += t.elapsed();
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
    let updates: Vec<ProfileUpdate> = input
        .iter()
        .filter(|r| r.topic == config.profiles_topic)
        .map(|r| serde_json::from_slice(r.value.as_deref().expect("value")).expect("update"))
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

    let (naive_rate, naive_members) = naive(&defs, &updates, now);
    let (rate, members, skipped) = incremental(&defs, &updates, now);
    assert_eq!(
        members, naive_members,
        "both ways find the same memberships"
    );
    println!("{:<34} {:>12}", "evaluation (1 thread)", "updates/s");
    println!(
        "{:<34} {naive_rate:>12.0}",
        "naive: all 20 cohorts per update"
    );
    println!(
        "{:<34} {rate:>12.0}   {:.2}x naive, {:.0}% of evaluations skipped",
        "only cohorts whose inputs changed",
        rate / naive_rate,
        skipped * 100.0
    );

    let [view, context, programs, fingerprints] = breakdown(&defs, &updates, now);
    println!(
        "per update, all cohorts: view {:.1} us, CEL context {:.1} us, 20 programs {:.1} us; \
         fingerprints {:.1} us",
        view.as_secs_f64() * 1e6,
        context.as_secs_f64() * 1e6,
        programs.as_secs_f64() * 1e6,
        fingerprints.as_secs_f64() * 1e6,
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let store = MembershipStore::open(dir.path()).expect("rocksdb opens");
    let counters = ActivationCounters::default();
    let mut batches: Vec<Duration> = Vec::new();
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
    if let Some(rss) = peak_rss_bytes() {
        println!("peak RSS {:.0} MiB", rss as f64 / (1024.0 * 1024.0));
    }
}
