//! Prometheus metrics of this process. The stages count in plain atomics on their own threads;
//! a scrape copies those counts into a `prometheus` registry and encodes it. Labels are bounded
//! (stage names, change kinds): no identifiers, profile ids or tenants. The RocksDB databases
//! the process holds are read at scrape time too ([`Metrics::watch_rocksdb`]).

use crate::pipeline::{Counters, Stages};
use anyhow::Result;
use cdp_bus::{RocksDbStats, StageCounters};
use prometheus::{
    Counter, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::atomic::{AtomicU64, Ordering};

/// The registry and the metrics it holds, one set per stage this process runs.
pub struct Metrics {
    registry: Registry,
    ingest: Option<(StageMetrics, IngestMetrics)>,
    resolver: Option<(StageMetrics, ResolverMetrics)>,
    activation: Option<(StageMetrics, ActivationMetrics)>,
    rocksdb: RocksDbMetrics,
    read_tier: Option<ReadTierMetrics>,
}

/// The profile API's read tier (`http.read_tier_mb`), where it is on.
struct ReadTierMetrics {
    tier: std::sync::Arc<crate::read_tier::ReadTier>,
    /// Lookups by outcome: `hit`, `miss` (no kept answer), `stale` (a key it read had changed).
    lookups: IntCounterVec,
    evictions: IntCounter,
    bytes: IntGauge,
}

/// Reads one database's figures; `None` when the store keeps no RocksDB (the Kafka bus).
type ReadStats = Box<dyn Fn() -> Option<RocksDbStats> + Send + Sync>;

/// Per-database gauges, labelled `store` (`bus`, `resolver`, `activation`: a fixed set).
struct RocksDbMetrics {
    live_data: IntGaugeVec,
    sst_files: IntGaugeVec,
    pending_compaction: IntGaugeVec,
    compactions_running: IntGaugeVec,
    memtable: IntGaugeVec,
    watched: Vec<(&'static str, ReadStats)>,
}

struct StageMetrics {
    records_in: IntCounter,
    records_out: IntCounter,
    records_dlq: IntCounter,
    batches: IntCounter,
    busy: Counter,
    lag: IntGauge,
}

struct IngestMetrics {
    /// The batch-duration histogram as of the last refresh: ingest keeps its own buckets, which
    /// the registry's histograms cannot take, so it is written out in the text format directly.
    batch_duration: std::sync::Mutex<cdp_ingest::metrics::Histogram>,
    records: IntCounterVec,
    dropped: IntCounterVec,
    duplicates: IntCounterVec,
    unlinked: IntCounterVec,
}

struct ResolverMetrics {
    merges: IntCounter,
    refused: IntCounter,
    candidates: IntCounter,
    profiles_created: IntCounter,
    tombstoned: IntCounter,
    commands: IntCounter,
    probabilistic_links: IntCounter,
    comparisons: IntCounter,
    blocks_oversized: IntCounter,
}

struct ActivationMetrics {
    changes: IntCounterVec,
    webhook_events: IntCounterVec,
    webhook_retries: IntCounter,
    timer_evaluations: IntCounter,
    evaluations: IntCounterVec,
    eval_errors: IntCounter,
    latency_sum: Counter,
    latency_count: IntCounter,
    /// Labelled by destination key (from the operator's config) and a fixed set of reasons.
    withheld: IntCounterVec,
}

impl Metrics {
    pub fn new(stages: Stages) -> Result<Self> {
        let registry = Registry::new();
        let ingest = if stages.ingest {
            use cdp_ingest::metrics as m;
            let stage = StageMetrics::register(&registry, "ingest")?;
            let i = IngestMetrics {
                batch_duration: Default::default(),
                records: counter_vec(
                    &registry,
                    m::RECORDS_TOTAL,
                    "Raw records by source and outcome (accepted, dead_lettered, duplicate)",
                    &["source", "outcome"],
                )?,
                dropped: counter_vec(
                    &registry,
                    m::IDENTIFIERS_DROPPED_TOTAL,
                    "Identifier values dropped from accepted records (placeholders, invalid)",
                    &["kind", "reason"],
                )?,
                duplicates: counter_vec(
                    &registry,
                    m::DUPLICATE_EVENTS_TOTAL,
                    "Events dropped as retries of an event already passed on",
                    &["source"],
                )?,
                unlinked: counter_vec(
                    &registry,
                    m::UNLINKED_EVENTS_TOTAL,
                    "Events whose identifiers were not linked for lack of identity consent",
                    &["source"],
                )?,
            };
            Some((stage, i))
        } else {
            None
        };
        let resolver = if stages.resolve {
            let stage = StageMetrics::register(&registry, "resolver")?;
            let r = ResolverMetrics {
                merges: counter(&registry, "cdp_resolver_merges_total", "Profiles merged")?,
                refused: counter(
                    &registry,
                    "cdp_resolver_merges_refused_total",
                    "Merges the policy refused (kept as links with a reason)",
                )?,
                candidates: counter(
                    &registry,
                    "cdp_resolver_links_candidate_total",
                    "Links below their rule's merge threshold, kept as candidates",
                )?,
                profiles_created: counter(
                    &registry,
                    "cdp_resolver_profiles_created_total",
                    "Profiles created",
                )?,
                tombstoned: counter(
                    &registry,
                    "cdp_resolver_identifiers_tombstoned_total",
                    "Identifiers dropped from signals because they were forgotten",
                )?,
                commands: counter(
                    &registry,
                    "cdp_resolver_commands_total",
                    "Graph commands (forget, unmerge) applied",
                )?,
                // One total: the resolver counts probabilistic assertions, not how each was
                // decided; the merge, refusal and candidate counters above count all rules.
                probabilistic_links: counter(
                    &registry,
                    "cdp_resolver_probabilistic_links_total",
                    "Links probabilistic matching asserted (merged, refused or kept as candidates)",
                )?,
                comparisons: counter(
                    &registry,
                    "cdp_resolver_match_comparisons_total",
                    "Record pairs probabilistic matching compared",
                )?,
                blocks_oversized: counter(
                    &registry,
                    "cdp_resolver_blocks_oversized_total",
                    "Blocking keys that grew past max_block_size and stopped yielding candidates",
                )?,
            };
            Some((stage, r))
        } else {
            None
        };
        let activation = if stages.activate {
            let stage = StageMetrics::register(&registry, "activation")?;
            let changes = IntCounterVec::new(
                Opts::new(
                    "cdp_activation_cohort_changes_total",
                    "Cohort changes emitted, by change",
                ),
                &["change"],
            )?;
            registry.register(Box::new(changes.clone()))?;
            let latency_sum = Counter::new(
                "cdp_activation_change_latency_seconds_total",
                "Sum of signal-received to cohort-change latencies",
            )?;
            registry.register(Box::new(latency_sum.clone()))?;
            let webhook_events = IntCounterVec::new(
                Opts::new(
                    "cdp_activation_webhook_events_total",
                    "Cohort events webhook destinations accepted or dead-lettered, by outcome",
                ),
                &["outcome"],
            )?;
            registry.register(Box::new(webhook_events.clone()))?;
            let a = ActivationMetrics {
                changes,
                webhook_events,
                webhook_retries: counter(
                    &registry,
                    "cdp_activation_webhook_retries_total",
                    "Webhook attempts that failed and will be retried",
                )?,
                timer_evaluations: counter(
                    &registry,
                    "cdp_activation_timer_evaluations_total",
                    "Profiles re-evaluated because a window expired, not because of an event",
                )?,
                evaluations: counter_vec(
                    &registry,
                    "cdp_activation_evaluations_total",
                    "Cohort expressions run, or skipped because their inputs had not changed",
                    &["outcome"],
                )?,
                eval_errors: counter(
                    &registry,
                    "cdp_activation_evaluation_errors_total",
                    "Cohort expressions that failed to evaluate",
                )?,
                latency_sum,
                latency_count: counter(
                    &registry,
                    "cdp_activation_change_latency_samples_total",
                    "Cohort changes whose latency is in the latency sum",
                )?,
                withheld: counter_vec(
                    &registry,
                    "cdp_activation_deliveries_withheld_total",
                    "Members of a cohort kept from a destination, by destination and the rule \
                     (suppressed, priority, frequency_cap)",
                    &["destination", "reason"],
                )?,
            };
            Some((stage, a))
        } else {
            None
        };
        let rocksdb = RocksDbMetrics {
            live_data: gauge_vec(
                &registry,
                "cdp_rocksdb_live_data_size_bytes",
                "Estimated bytes of live data, summed over column families",
            )?,
            sst_files: gauge_vec(
                &registry,
                "cdp_rocksdb_sst_files_size_bytes",
                "Bytes of all table files, summed over column families",
            )?,
            pending_compaction: gauge_vec(
                &registry,
                "cdp_rocksdb_pending_compaction_bytes",
                "Estimated bytes compaction still has to rewrite",
            )?,
            compactions_running: gauge_vec(
                &registry,
                "cdp_rocksdb_compactions_running",
                "Compactions running now",
            )?,
            memtable: gauge_vec(
                &registry,
                "cdp_rocksdb_memtable_bytes",
                "Bytes in active and immutable memtables, summed over column families",
            )?,
            watched: Vec::new(),
        };
        Ok(Self {
            registry,
            ingest,
            resolver,
            activation,
            rocksdb,
            read_tier: None,
        })
    }

    /// Reports the RocksDB figures `read` returns under `store="<store>"` at every scrape.
    pub fn watch_rocksdb(
        &mut self,
        store: &'static str,
        read: impl Fn() -> Option<RocksDbStats> + Send + Sync + 'static,
    ) {
        self.rocksdb.watched.push((store, Box::new(read)));
    }

    /// Reports the profile API's read tier: lookups by outcome, evictions and bytes kept.
    pub fn watch_read_tier(
        &mut self,
        tier: std::sync::Arc<crate::read_tier::ReadTier>,
    ) -> Result<()> {
        let bytes = gauge(
            &self.registry,
            "cdp_http_read_tier_bytes",
            "Bytes the read tier's kept answers take",
        )?;
        self.read_tier = Some(ReadTierMetrics {
            tier,
            lookups: counter_vec(
                &self.registry,
                "cdp_http_read_tier_lookups_total",
                "Profile lookups by read-tier outcome (hit, miss, stale: a key it read had changed)",
                &["outcome"],
            )?,
            evictions: counter(
                &self.registry,
                "cdp_http_read_tier_evictions_total",
                "Answers dropped from the read tier to make room for newer ones",
            )?,
            bytes,
        });
        Ok(())
    }

    /// Copies the stages' counts in; `lag` gives each stage's consumer lag where known.
    pub fn refresh(&self, counters: &Counters, lag: impl Fn(&str) -> Option<u64>) {
        if let Some((m, i)) = &self.ingest {
            m.refresh(&counters.ingest, lag("ingest"));
            let detail = &counters.ingest_detail;
            for (source, outcome, n) in detail.records().iter() {
                sync_to(&i.records.with_label_values(&[source, outcome]), n);
            }
            for (kind, reason, n) in detail.dropped().iter() {
                sync_to(&i.dropped.with_label_values(&[kind, reason]), n);
            }
            for (source, n) in detail.duplicate_events().iter() {
                sync_to(&i.duplicates.with_label_values(&[source]), n);
            }
            for (source, n) in detail.unlinked_events().iter() {
                sync_to(&i.unlinked.with_label_values(&[source]), n);
            }
            *i.batch_duration.lock().unwrap_or_else(|e| e.into_inner()) = detail.batch_duration();
        }
        if let Some((m, r)) = &self.resolver {
            let c = &counters.resolver;
            m.refresh(&c.stage, lag("resolver"));
            sync(&r.merges, &c.merges);
            sync(&r.refused, &c.refused);
            sync(&r.candidates, &c.candidates);
            sync(&r.profiles_created, &c.new_profiles);
            sync(&r.tombstoned, &c.tombstoned);
            sync(&r.commands, &c.commands);
            sync(&r.probabilistic_links, &c.probabilistic);
            sync(&r.comparisons, &c.compared);
            sync(&r.blocks_oversized, &c.blocks_overflowed);
        }
        if let Some((m, a)) = &self.activation {
            let c = &counters.activation;
            m.refresh(&c.stage, lag("activation"));
            sync(&a.changes.with_label_values(&["entered"]), &c.entered);
            sync(&a.changes.with_label_values(&["exited"]), &c.exited);
            sync(&a.eval_errors, &c.eval_errors);
            sync(
                &a.webhook_events.with_label_values(&["delivered"]),
                &c.webhook_delivered,
            );
            sync(
                &a.webhook_events.with_label_values(&["dead_lettered"]),
                &c.webhook_dead,
            );
            sync(&a.webhook_retries, &c.webhook_retries);
            sync(&a.timer_evaluations, &c.timer_evaluations);
            sync(&a.evaluations.with_label_values(&["run"]), &c.evaluations);
            sync(
                &a.evaluations.with_label_values(&["skipped"]),
                &c.evaluations_skipped,
            );
            sync_seconds(
                &a.latency_sum,
                c.latency_us_sum.load(Ordering::Relaxed) as f64 / 1e6,
            );
            sync(&a.latency_count, &c.latency_samples);
            for (destination, reason, n) in c.withheld.snapshot() {
                sync_to(&a.withheld.with_label_values(&[&destination, reason]), n);
            }
        }
        self.rocksdb.refresh();
        if let Some(t) = &self.read_tier {
            let s = t.tier.stats();
            sync_to(&t.lookups.with_label_values(&["hit"]), s.hits);
            sync_to(&t.lookups.with_label_values(&["miss"]), s.misses);
            sync_to(&t.lookups.with_label_values(&["stale"]), s.stale);
            sync_to(&t.evictions, s.evictions);
            t.bytes.set(i64::try_from(s.bytes).unwrap_or(i64::MAX));
        }
    }

    /// The registry, for parts of the process that keep their own metrics (the collector).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of everything registered.
    pub fn encode(&self) -> Result<String> {
        let mut text = TextEncoder::new().encode_to_string(&self.registry.gather())?;
        if let Some((_, i)) = &self.ingest {
            let h = i.batch_duration.lock().unwrap_or_else(|e| e.into_inner());
            write_histogram(
                &mut text,
                cdp_ingest::metrics::BATCH_DURATION_SECONDS,
                "Time from a batch's poll to its commit",
                &h,
            );
        }
        Ok(text)
    }
}

impl RocksDbMetrics {
    fn refresh(&self) {
        for (store, read) in &self.watched {
            let Some(s) = read() else { continue };
            let set = |g: &IntGaugeVec, v: u64| {
                g.with_label_values(&[*store])
                    .set(i64::try_from(v).unwrap_or(i64::MAX))
            };
            set(&self.live_data, s.live_data_size_bytes);
            set(&self.sst_files, s.sst_files_size_bytes);
            set(&self.pending_compaction, s.pending_compaction_bytes);
            set(&self.compactions_running, s.compactions_running);
            set(&self.memtable, s.memtable_bytes);
        }
    }
}

impl StageMetrics {
    fn register(registry: &Registry, stage: &str) -> Result<Self> {
        let busy = Counter::new(
            format!("cdp_{stage}_busy_seconds_total"),
            "Time spent processing batches, not waiting for input",
        )?;
        registry.register(Box::new(busy.clone()))?;
        let lag = gauge(
            registry,
            &format!("cdp_{stage}_consumer_lag_records"),
            "Records in the input topics not yet committed by this stage's group",
        )?;
        Ok(Self {
            records_in: counter(
                registry,
                &format!("cdp_{stage}_records_in_total"),
                "Records read from input topics",
            )?,
            records_out: counter(
                registry,
                &format!("cdp_{stage}_records_out_total"),
                "Records written to output topics, not counting the DLQ",
            )?,
            records_dlq: counter(
                registry,
                &format!("cdp_{stage}_records_dlq_total"),
                "Records sent to the dead-letter topic",
            )?,
            batches: counter(
                registry,
                &format!("cdp_{stage}_batches_total"),
                "Batches processed and committed",
            )?,
            busy,
            lag,
        })
    }

    fn refresh(&self, c: &StageCounters, lag: Option<u64>) {
        sync(&self.records_in, &c.consumed);
        sync(&self.records_out, &c.produced);
        sync(&self.records_dlq, &c.dead_lettered);
        sync(&self.batches, &c.batches);
        sync_seconds(&self.busy, c.busy().as_secs_f64());
        if let Some(lag) = lag {
            self.lag.set(i64::try_from(lag).unwrap_or(i64::MAX));
        }
    }
}

fn counter(registry: &Registry, name: &str, help: &str) -> Result<IntCounter> {
    let c = IntCounter::new(name, help)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> Result<IntGauge> {
    let g = IntGauge::new(name, help)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

/// A histogram in the Prometheus text format: cumulative buckets, `+Inf`, sum and count.
fn write_histogram(out: &mut String, name: &str, help: &str, h: &cdp_ingest::metrics::Histogram) {
    use std::fmt::Write;
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (le, count) in h.cumulative() {
        let le = if le.is_infinite() {
            "+Inf".to_string()
        } else {
            le.to_string()
        };
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_sum {}", h.sum_seconds);
    let _ = writeln!(out, "{name}_count {}", h.count);
}

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge_vec(registry: &Registry, name: &str, help: &str) -> Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), &["store"])?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

/// Brings a Prometheus counter up to a count that only grows.
fn sync(counter: &IntCounter, source: &AtomicU64) {
    sync_to(counter, source.load(Ordering::Relaxed));
}

fn sync_to(counter: &IntCounter, now: u64) {
    counter.inc_by(now.saturating_sub(counter.get()));
}

fn sync_seconds(counter: &Counter, now: f64) {
    let delta = now - counter.get();
    if delta > 0.0 {
        counter.inc_by(delta);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrape_reports_stage_counts_with_bounded_names() {
        let metrics = Metrics::new(Stages::ALL).unwrap();
        let counters = Counters::default();
        counters
            .resolver
            .stage
            .record_batch(10, 7, 1, std::time::Duration::from_millis(5));
        counters.resolver.merges.store(3, Ordering::Relaxed);
        counters.resolver.probabilistic.store(4, Ordering::Relaxed);
        counters.resolver.compared.store(25, Ordering::Relaxed);
        counters
            .resolver
            .blocks_overflowed
            .store(1, Ordering::Relaxed);
        counters.activation.entered.store(2, Ordering::Relaxed);
        counters
            .activation
            .withheld
            .add("crm", cdp_activation::rules::Withheld::Suppressed);
        metrics.refresh(&counters, |stage| (stage == "resolver").then_some(42));
        // A second scrape with unchanged counts must not double them.
        metrics.refresh(&counters, |stage| (stage == "resolver").then_some(42));
        let text = metrics.encode().unwrap();
        for line in [
            "cdp_resolver_records_in_total 10",
            "cdp_resolver_records_out_total 7",
            "cdp_resolver_records_dlq_total 1",
            "cdp_resolver_merges_total 3",
            "cdp_resolver_probabilistic_links_total 4",
            "cdp_resolver_match_comparisons_total 25",
            "cdp_resolver_blocks_oversized_total 1",
            "cdp_resolver_consumer_lag_records 42",
            "cdp_activation_cohort_changes_total{change=\"entered\"} 2",
            "cdp_activation_deliveries_withheld_total{destination=\"crm\",reason=\"suppressed\"} 1",
            "cdp_ingest_records_in_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn ingest_batch_durations_are_a_cumulative_histogram() {
        let metrics = Metrics::new(Stages::ALL).unwrap();
        let counters = Counters::default();
        for ms in [2, 2, 40, 5000] {
            counters
                .ingest_detail
                .observe_batch(std::time::Duration::from_millis(ms));
        }
        metrics.refresh(&counters, |_| None);
        let text = metrics.encode().unwrap();
        for line in [
            "# TYPE cdp_ingest_batch_duration_seconds histogram",
            "cdp_ingest_batch_duration_seconds_bucket{le=\"0.001\"} 0",
            "cdp_ingest_batch_duration_seconds_bucket{le=\"0.0025\"} 2",
            "cdp_ingest_batch_duration_seconds_bucket{le=\"0.05\"} 3",
            "cdp_ingest_batch_duration_seconds_bucket{le=\"1\"} 3",
            "cdp_ingest_batch_duration_seconds_bucket{le=\"+Inf\"} 4",
            "cdp_ingest_batch_duration_seconds_count 4",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn watched_rocksdb_figures_are_gauges_by_store() {
        let mut metrics = Metrics::new(Stages::ALL).unwrap();
        metrics.watch_rocksdb("resolver", || {
            Some(RocksDbStats {
                live_data_size_bytes: 10,
                sst_files_size_bytes: 20,
                pending_compaction_bytes: 30,
                compactions_running: 1,
                memtable_bytes: 40,
            })
        });
        // A bus without a RocksDB (Kafka) reports nothing rather than zeros.
        metrics.watch_rocksdb("bus", || None);
        metrics.refresh(&Counters::default(), |_| None);
        let text = metrics.encode().unwrap();
        for line in [
            "cdp_rocksdb_live_data_size_bytes{store=\"resolver\"} 10",
            "cdp_rocksdb_sst_files_size_bytes{store=\"resolver\"} 20",
            "cdp_rocksdb_pending_compaction_bytes{store=\"resolver\"} 30",
            "cdp_rocksdb_compactions_running{store=\"resolver\"} 1",
            "cdp_rocksdb_memtable_bytes{store=\"resolver\"} 40",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(!text.contains("store=\"bus\""), "{text}");
    }

    #[test]
    fn the_read_tier_reports_lookups_by_outcome_and_its_size() {
        use crate::read_tier::{Lookup, ReadTier};
        let tier = std::sync::Arc::new(ReadTier::new(1).unwrap());
        let mut metrics = Metrics::new(Stages::ALL).unwrap();
        metrics.watch_read_tier(tier.clone()).unwrap();
        let key = b"acme\0user_id\0u1".as_slice();
        assert!(tier.get(Lookup::Identifier(key)).is_none());
        tier.put(
            Lookup::Identifier(key),
            axum::body::Bytes::from("{}"),
            Default::default(),
        );
        assert!(tier.get(Lookup::Identifier(key)).is_some());
        assert!(tier.get(Lookup::Identifier(key)).is_some());
        metrics.refresh(&Counters::default(), |_| None);
        let text = metrics.encode().unwrap();
        let bytes = tier.stats().bytes;
        assert!(bytes > 0);
        for line in [
            "cdp_http_read_tier_lookups_total{outcome=\"hit\"} 2".to_string(),
            "cdp_http_read_tier_lookups_total{outcome=\"miss\"} 1".to_string(),
            "cdp_http_read_tier_lookups_total{outcome=\"stale\"} 0".to_string(),
            "cdp_http_read_tier_evictions_total 0".to_string(),
            format!("cdp_http_read_tier_bytes {bytes}"),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        // Counters only grow between scrapes.
        assert!(tier.get(Lookup::Identifier(key)).is_some());
        metrics.refresh(&Counters::default(), |_| None);
        let text = metrics.encode().unwrap();
        assert!(text.contains("cdp_http_read_tier_lookups_total{outcome=\"hit\"} 3"));
    }

    /// deploy/grafana/cdp.json is the dashboard; the chart's dashboards/cdp.json is a symlink to
    /// it (Helm follows it when it loads or packages the chart). Should the link be replaced by a
    /// copy, the two must not drift. It charts the RocksDB figures exported here.
    #[test]
    fn the_chart_ships_the_grafana_dashboard_unchanged() {
        // Read at run time: a compiled-in path would be another clone's in a shared target dir.
        let root = std::path::PathBuf::from(
            std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"),
        );
        let source = std::fs::read(root.join("deploy/grafana/cdp.json")).unwrap();
        let shipped = std::fs::read(root.join("deploy/helm/cdp/dashboards/cdp.json")).unwrap();
        assert!(
            source == shipped,
            "deploy/helm/cdp/dashboards/cdp.json differs from deploy/grafana/cdp.json: link it"
        );
        let text = String::from_utf8(source).unwrap();
        for name in [
            "cdp_rocksdb_live_data_size_bytes",
            "cdp_rocksdb_sst_files_size_bytes",
            "cdp_rocksdb_pending_compaction_bytes",
            "cdp_rocksdb_compactions_running",
            "cdp_rocksdb_memtable_bytes",
        ] {
            assert!(text.contains(name), "the dashboard does not chart {name}");
        }
    }

    #[test]
    fn only_the_stages_this_process_runs_are_exported() {
        let stages = Stages {
            ingest: true,
            resolve: false,
            activate: false,
        };
        let text = Metrics::new(stages).unwrap().encode().unwrap();
        assert!(text.contains("cdp_ingest_records_in_total"));
        assert!(!text.contains("cdp_resolver_"), "{text}");
    }
}
