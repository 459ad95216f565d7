//! Memory of activation with its state on disk: one profile update for each of a million people
//! goes through the durable stage (`stage::apply_records` into RocksDB, batches as configured)
//! with the 20 cohorts of the activation bench; prints peak RSS (VmHWM), the rate, what was
//! entered and the size of the state on disk.
//!
//! The profiles are synthetic (the resolver's workload takes an hour to make a million of):
//! identifiers, lifecycle stage, channels, consent, traits and windowed counters drawn from a
//! seeded generator, so that every cohort has members.
//!
//! `cargo bench -p cdp-benches --bench activation_memory` (people: CDP_BENCH_PEOPLE, default
//! 1000000).

mod activation_cohorts;

use cdp_activation::membership::MembershipStore;
use cdp_activation::stage::{self, ActivationCounters};
use cdp_activation::Definitions;
use cdp_benches::{peak_rss_bytes, SplitMix64};
use cdp_bus::Record;
use cdp_proto::{Identifier, IdentifierKind, Profile, ProfileUpdate, Source, Timestamp};
use std::sync::atomic::Ordering;
use std::time::Instant;

const STAGES: [&str; 4] = ["lead", "customer", "subscriber", "marketingqualifiedlead"];
const EVENTS: [&str; 8] = [
    "Pricing Viewed",
    "Product Viewed",
    "Order Completed",
    "Application Opened",
    "Ad Clicked",
    "install",
    "Signed Up",
    "Newsletter Subscribed",
];

fn profile(i: u64, now: Timestamp) -> Profile {
    let mut d = SplitMix64(i);
    let mut ids = vec![Identifier::new(
        IdentifierKind::EmailSha256,
        format!(
            "{:016x}{:016x}{:016x}{:016x}",
            d.next_u64(),
            d.next_u64(),
            d.next_u64(),
            d.next_u64()
        ),
    )];
    if d.below(3) == 0 {
        ids.push(Identifier::new(IdentifierKind::CrmId, format!("crm_{i}")));
    }
    if d.below(4) == 0 {
        ids.push(Identifier::new(
            IdentifierKind::PhoneSha256,
            format!("{:016x}{:016x}", d.next_u64(), d.next_u64()),
        ));
    }
    // The id the resolver mints for the person's first identifier: ids spread over the key
    // space as real ones do, not in insertion order.
    let canonical_id = cdp_resolver::graph::canonical_id_for("acme", &ids[0]);
    ids.sort();
    let mut p = Profile::new("acme", canonical_id, ids, now);
    p.version = 1;
    let a = &mut p.attributes;
    a.lifecycle_stage = Some(STAGES[d.below(4) as usize].to_string());
    for s in Source::ALL {
        if d.below(2) == 0 {
            a.channels_active.insert(s);
        }
    }
    let events = 1 + d.below(12);
    a.total_touchpoints = events;
    for _ in 0..events {
        let at = now - chrono::Duration::hours(d.below(24 * 40) as i64);
        let name = EVENTS[d.below(EVENTS.len() as u64) as usize];
        a.counts.entry(name.to_string()).or_default().record(at);
        a.last_engagement = a.last_engagement.max(Some(at));
    }
    if d.below(3) == 0 {
        a.traits
            .insert("lead_source".into(), serde_json::json!("Webinar"));
    }
    a.traits.insert(
        "plan".into(),
        serde_json::json!(["free", "pro"][d.below(2) as usize]),
    );
    for purpose in ["email", "phone", "advertising"] {
        p.consent.0.insert(purpose.into(), d.below(3) != 0);
    }
    p
}

fn record(topic: &str, i: u64, now: Timestamp) -> Record {
    let update = ProfileUpdate {
        profile: profile(i, now),
        version: 1,
        cause: None,
        received_at: None,
    };
    Record {
        topic: topic.to_string(),
        partition: 0,
        offset: i as i64,
        timestamp_ms: 0,
        key: Some(update.profile.canonical_id.clone().into_bytes()),
        value: Some(serde_json::to_vec(&update).expect("serialises")),
        headers: Vec::new(),
    }
}

fn dir_size(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// CPU time the calling thread has run (`/proc/thread-self/schedstat`, in ns), if Linux says.
fn thread_cpu() -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = stat.split_whitespace().next()?.parse().ok()?;
    Some(std::time::Duration::from_nanos(ns))
}

fn main() {
    let people: u64 = std::env::var("CDP_BENCH_PEOPLE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let config = activation_cohorts::config();
    let defs = Definitions::compile(&config).expect("cohorts compile");
    let now = cdp_ingest::workload::default_now();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = MembershipStore::open(dir.path()).expect("rocksdb opens");
    let counters = ActivationCounters::default();
    let cpu_before = thread_cpu();
    let start = Instant::now();
    let batch = config.batch_size as u64;
    let mut first = 0;
    while first < people {
        let last = (first + batch).min(people);
        let records: Vec<Record> = (first..last)
            .map(|i| record(&config.profiles_topic, i, now))
            .collect();
        stage::apply_records(&store, &config, &defs, &records, now, &counters)
            .expect("batch applies");
        // The outbox is published and emptied after each batch in the stage.
        let keys = store
            .outbox()
            .expect("outbox")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        store.delete_outbox(keys).expect("outbox emptied");
        first = last;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = thread_cpu()
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "{people} people x {} cohorts through the durable stage in {elapsed:.1}s \
         ({:.0} updates/s, 1 thread): {} entered, {} cohort evaluations",
        defs.cohorts.list.len(),
        people as f64 / elapsed,
        counters.entered.load(Ordering::Relaxed),
        counters.evaluations.load(Ordering::Relaxed),
    );
    if let Some(cpu) = cpu {
        // Making the synthetic records is in it too: a lower bound of the stage's rate.
        println!(
            "per CPU second of the applying thread (making the records included): {:.0} updates/s",
            people as f64 / cpu.as_secs_f64()
        );
    }
    println!(
        "state on disk (rocksdb, lz4): {:.0} MiB",
        mib(dir_size(dir.path()))
    );
    if let Some(rss) = peak_rss_bytes() {
        println!("peak RSS {:.0} MiB", mib(rss));
    }
}
