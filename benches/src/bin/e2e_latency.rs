//! End to end on the embedded bus: raw event -> cohort change, at a fixed offered rate.
//!
//! It runs the pipeline `cdp run` runs (`cdp::pipeline`: ingest, resolver and activation on their
//! own threads, talking through topics) on a fresh embedded bus, and produces Segment `identify`
//! calls to `cdp.raw.web` on a fixed schedule of `--rate` events/s for `--seconds`, round-robin
//! over `--people` people. A person's events set the trait `e2e_phase` to `in`, `out`, `in`, ...
//! and the `e2e_toggle` cohort (`profile.traits.e2e_phase == "in"`, whose changes carry the
//! `user_id`) is added to the configured ones, so every event changes that person's membership: the
//! person's n-th change on `cdp.cohorts` (its `version`) answers their n-th event. The tool reads
//! `cdp.cohorts` and measures each event's latency from when it was *due*, not when it was sent
//! (wrk2 style), so a producer or pipeline that falls behind shows up in the latency instead of
//! lowering the load.
//!
//! It prints the offered and achieved rates, latency percentiles over the events after
//! `--warmup-seconds`, events that produced no change (duplicates and changes that answer no
//! event are counted too), the stage counters, and the CPU each thread of the process used.
//!
//! ```text
//! cargo build --release -p cdp-benches --bin e2e_latency
//! $CARGO_TARGET_DIR/release/e2e_latency --rate 10000 --seconds 20 [--people N] [--data DIR]
//! ```
//!
//! `--people` defaults to 10 s of events, so a person's events are 10 s apart: two events of one
//! person closer than the pipeline's latency could be folded into one profile update, and the
//! change of the second then taken for the first's (their latency overstated, a change missing).
//! `--data DIR` keeps the bus and state there (default: a temporary directory in `TMPDIR`,
//! removed at the end). `--no-default-cohorts` evaluates `e2e_toggle` alone. The configuration
//! is the default one; `CDP_…` variables override it as they do for `cdp run`
//! (`CDP_BUS__PARTITIONS=2`, `CDP_ACTIVATION__BATCH_SIZE=500`, ...).

use anyhow::{bail, Context, Result};
use cdp::pipeline::{Counters, Stages};
use cdp::{config, pipeline};
use cdp_activation::CohortConfig;
use cdp_benches::{percentile, thread_cpu};
use cdp_bus::{Bus, ConsumerOptions, OutRecord, StartFrom};
use cdp_proto::{CohortChange, CohortChangeKind};
use clap::Parser;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The cohort every event flips, and the trait that flips it.
const COHORT: &str = "e2e_toggle";
const TRAIT: &str = "e2e_phase";

/// Most events written to the bus in one flush when the producer is behind.
const MAX_FLUSH: u64 = 5_000;

#[derive(Parser)]
#[command(about = "End to end on the embedded bus: raw event -> cohort change, at a fixed rate")]
struct Options {
    /// Events offered per second.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    rate: u64,
    /// How long events are offered.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
    /// People the events go round-robin over (default: 10 s of events).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    people: Option<u64>,
    /// Events due in the first seconds are left out of the percentiles.
    #[arg(long, default_value_t = 2)]
    warmup_seconds: u64,
    /// Longest wait without a new change after the last event was due.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    drain_seconds: u64,
    /// Evaluate `e2e_toggle` alone, without the configured cohorts.
    #[arg(long = "no-default-cohorts", action = clap::ArgAction::SetFalse)]
    default_cohorts: bool,
    /// Keep the bus and state here (default: a temporary directory, removed at the end).
    #[arg(long)]
    data: Option<PathBuf>,
}

impl Options {
    fn people(&self) -> u64 {
        self.people.unwrap_or(self.rate * 10)
    }
}

fn main() {
    let options = Options::parse();
    if let Err(e) = run(&options) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// The run's timetable: event `i` is due `i / rate` seconds after the start and belongs to
/// person `i % people`, whose `i / people`-th event it is.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    rate: u64,
    people: u64,
    total: u64,
}

impl Schedule {
    fn due(&self, i: u64) -> Duration {
        Duration::from_nanos((u128::from(i) * 1_000_000_000 / u128::from(self.rate)) as u64)
    }

    /// How many events are due `elapsed` after the start.
    fn due_by(&self, elapsed: Duration) -> u64 {
        let n = elapsed.as_nanos() * u128::from(self.rate) / 1_000_000_000 + 1;
        n.min(u128::from(self.total)) as u64
    }

    fn person(&self, i: u64) -> u64 {
        i % self.people
    }

    /// The trait value event `i` sets: people enter on their even events and leave on odd ones.
    fn phase(&self, i: u64) -> &'static str {
        if (i / self.people).is_multiple_of(2) {
            "in"
        } else {
            "out"
        }
    }

    /// The event that `person`'s change number `version` (1, 2, ...) answers, if the run has it.
    fn event_of(&self, person: u64, version: u64) -> Option<u64> {
        if person >= self.people || version == 0 {
            return None;
        }
        let i = (version - 1)
            .checked_mul(self.people)?
            .checked_add(person)?;
        (i < self.total).then_some(i)
    }

    /// What change number `version` of a person must be: entries are the odd ones.
    fn kind_of(version: u64) -> CohortChangeKind {
        if version % 2 == 1 {
            CohortChangeKind::Entered
        } else {
            CohortChangeKind::Exited
        }
    }
}

/// What became of one cohort change read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Matched,
    /// Its event already had a change.
    Duplicate,
    /// It answers no event of the run: unknown person or version, the wrong direction, or read
    /// before its event was due.
    Unexpected,
}

/// Each event's latency, from the changes read back.
struct Matcher {
    schedule: Schedule,
    /// Microseconds from due to read, per event; `NONE` until its change is read.
    latency_us: Vec<u32>,
    matched: u64,
    duplicates: u64,
    unexpected: u64,
    /// When the last matched change was read, from the start.
    last_read: Duration,
}

impl Matcher {
    const NONE: u32 = u32::MAX;

    fn new(schedule: Schedule) -> Self {
        Self {
            schedule,
            latency_us: vec![Self::NONE; schedule.total as usize],
            matched: 0,
            duplicates: 0,
            unexpected: 0,
            last_read: Duration::ZERO,
        }
    }

    /// Takes `person`'s change number `version`, of direction `kind`, read `read_at` after the
    /// start.
    fn record(
        &mut self,
        person: u64,
        version: u64,
        kind: CohortChangeKind,
        read_at: Duration,
    ) -> Outcome {
        let Some(i) = self.schedule.event_of(person, version) else {
            self.unexpected += 1;
            return Outcome::Unexpected;
        };
        let due = self.schedule.due(i);
        if kind != Schedule::kind_of(version) || read_at < due {
            self.unexpected += 1;
            return Outcome::Unexpected;
        }
        let slot = &mut self.latency_us[i as usize];
        if *slot != Self::NONE {
            self.duplicates += 1;
            return Outcome::Duplicate;
        }
        let us = (read_at - due).as_micros();
        *slot = u32::try_from(us).unwrap_or(Self::NONE - 1);
        self.matched += 1;
        self.last_read = self.last_read.max(read_at);
        Outcome::Matched
    }

    /// Latencies of the first `sent` events that were due at or after `warmup`, and how many of
    /// the `sent` got no change.
    fn latencies(&self, sent: u64, warmup: Duration) -> (Vec<Duration>, u64) {
        let mut measured = Vec::new();
        let mut missing = 0;
        for (i, &us) in self.latency_us.iter().enumerate().take(sent as usize) {
            if us == Self::NONE {
                missing += 1;
            } else if self.schedule.due(i as u64) >= warmup {
                measured.push(Duration::from_micros(u64::from(us)));
            }
        }
        (measured, missing)
    }

    /// Latencies of the first `sent` events by when they were due, in windows of `width`: a
    /// pipeline that keeps up has the same distribution in each, one that does not grows.
    fn by_window(&self, sent: u64, width: Duration) -> Vec<Vec<Duration>> {
        let width = width.as_nanos().max(1);
        let mut windows: Vec<Vec<Duration>> = Vec::new();
        for (i, &us) in self.latency_us.iter().enumerate().take(sent as usize) {
            let w = (self.schedule.due(i as u64).as_nanos() / width) as usize;
            if windows.len() <= w {
                windows.resize_with(w + 1, Vec::new);
            }
            if us != Self::NONE {
                windows[w].push(Duration::from_micros(u64::from(us)));
            }
        }
        windows
    }
}

/// Percentiles of `samples` as one line, in milliseconds.
fn distribution(samples: &mut [Duration]) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut line = String::new();
    for (name, p) in [
        ("p50", 50.0),
        ("p90", 90.0),
        ("p99", 99.0),
        ("p99.9", 99.9),
        ("max", 100.0),
    ] {
        line.push_str(&format!("{name} {:.1} ms  ", ms(percentile(samples, p))));
    }
    line.trim_end().to_string()
}

/// The default configuration (with `CDP_…` overrides from the environment), plus the cohort the
/// events flip.
fn configuration(o: &Options) -> Result<config::Config> {
    let mut cohorts = if o.default_cohorts {
        config::Config::default().activation.cohorts
    } else {
        Vec::new()
    };
    cohorts.push(CohortConfig {
        key: COHORT.into(),
        description: "e2e_latency: every event of a person flips it".into(),
        expression: format!("profile.traits.{TRAIT} == \"in\""),
        priority: 0,
        identifiers: vec!["user_id".into()],
        destinations: Vec::new(),
    });
    let mut activation = toml::Table::new();
    activation.insert("cohorts".into(), toml::Value::try_from(cohorts)?);
    let mut root = toml::Table::new();
    root.insert("activation".into(), toml::Value::Table(activation));
    config::Config::from_toml_with_env(&toml::to_string(&root)?, std::env::vars())
}

/// One Segment `identify` call: event `i` of the run, due at `due_ms` (Unix ms).
fn event(prefix: &str, schedule: &Schedule, i: u64, due_ms: i64) -> (String, String) {
    let user = format!("{prefix}{}", schedule.person(i));
    let time = chrono::DateTime::from_timestamp_millis(due_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let value = format!(
        concat!(
            r#"{{"type":"identify","messageId":"{prefix}m{i}","userId":"{user}","#,
            r#""timestamp":"{time}","traits":{{"{trait_}":"{phase}"}}}}"#
        ),
        prefix = prefix,
        i = i,
        user = user,
        time = time,
        trait_ = TRAIT,
        phase = schedule.phase(i)
    );
    (user, value)
}

fn run(o: &Options) -> Result<()> {
    let people = o.people();
    let schedule = Schedule {
        rate: o.rate,
        people,
        total: o.rate * o.seconds,
    };
    let config = configuration(o)?;
    let temp = tempfile::tempdir()?;
    let data = o.data.clone().unwrap_or_else(|| temp.path().to_path_buf());
    let bus = pipeline::open_bus(&config, &data)?;

    let counters = Arc::new(Counters::default());
    let shutdown = Arc::new(AtomicBool::new(false));
    let stages = {
        let (config, data, bus, counters, shutdown) = (
            config.clone(),
            data.clone(),
            bus.clone(),
            counters.clone(),
            shutdown.clone(),
        );
        std::thread::Builder::new()
            .name("e2e-pipeline".into())
            .spawn(move || {
                pipeline::run(
                    &config,
                    &data,
                    bus,
                    Stages::ALL,
                    counters,
                    shutdown,
                    pipeline::RunOptions::default(),
                )
            })?
    };

    // A new prefix each run, so people of an earlier run in a reused `--data` are not matched.
    let run_id = chrono::Utc::now().timestamp_millis();
    let prefix = format!("e2e-{run_id}-");
    let consumer = bus.consumer(ConsumerOptions {
        group: "e2e-latency".into(),
        topics: vec![config.activation.cohorts_topic.clone()],
        start: StartFrom::Latest,
        commit: false,
    })?;
    let matched = Arc::new(AtomicU64::new(0));
    let stop_reading = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let start_ms = chrono::Utc::now().timestamp_millis();
    let reader = {
        let (matched, stop, prefix) = (matched.clone(), stop_reading.clone(), prefix.clone());
        std::thread::Builder::new()
            .name("e2e-read".into())
            .spawn(move || read_changes(consumer, schedule, &prefix, start, &matched, &stop))?
    };

    println!(
        "offered    {} events/s for {} s: {} events over {people} people (a person every {:.1} s)",
        o.rate,
        o.seconds,
        schedule.total,
        people as f64 / o.rate as f64
    );
    let load_before = load_average();
    let cpu_before = thread_cpu();
    let produced = produce(
        bus.as_ref(),
        &config,
        &schedule,
        &prefix,
        start,
        start_ms,
        &stages,
    );
    let sent = match &produced {
        Ok(p) => p.sent,
        Err(_) => 0,
    };
    let produce_wall = start.elapsed();
    // Wait for the changes, as long as they keep coming.
    let mut last = (matched.load(Ordering::Relaxed), Instant::now());
    while produced.is_ok() && !stages.is_finished() {
        let now = matched.load(Ordering::Relaxed);
        if now >= sent {
            break;
        }
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(o.drain_seconds) {
            println!(
                "stopped waiting: no change for {} s, {} of {sent} events answered",
                o.drain_seconds, now
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let cpu_after = thread_cpu();
    let wall = start.elapsed();
    let load_after = load_average();
    stop_reading.store(true, Ordering::Relaxed);
    shutdown.store(true, Ordering::Relaxed);
    let matcher = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the reader panicked"))??;
    let pipeline_result = stages
        .join()
        .map_err(|_| anyhow::anyhow!("the pipeline panicked"))?;
    let produced = produced?;
    pipeline_result.context("the pipeline stopped")?;

    println!(
        "produced   {sent} in {:.2} s ({:.0}/s); the producer was at most {:.1} ms behind schedule",
        produce_wall.as_secs_f64(),
        sent as f64 / produce_wall.as_secs_f64(),
        produced.max_behind.as_secs_f64() * 1000.0
    );
    let warmup = Duration::from_secs(o.warmup_seconds);
    let (mut latencies, missing) = matcher.latencies(sent, warmup);
    let span = matcher.last_read.max(Duration::from_millis(1));
    println!(
        "achieved   {} cohort changes by {:.2} s after the first event was due ({:.0}/s)",
        matcher.matched,
        span.as_secs_f64(),
        matcher.matched as f64 / span.as_secs_f64()
    );
    println!(
        "no change  {missing} events; {} duplicate and {} unexpected changes",
        matcher.duplicates, matcher.unexpected
    );
    println!(
        "latency    event due -> cohort change read, {} events after the {} s warm-up:",
        latencies.len(),
        o.warmup_seconds
    );
    println!("           {}", distribution(&mut latencies));
    // At most eight windows, so the table stays short whatever `--seconds` is.
    let width = Duration::from_secs(o.seconds.div_ceil(8));
    println!("by due time, {} s windows:", width.as_secs());
    for (n, mut window) in matcher.by_window(sent, width).into_iter().enumerate() {
        let from = width.as_secs() * n as u64;
        println!(
            "  {:>4}-{:<4} s  {}",
            from,
            from + width.as_secs(),
            distribution(&mut window)
        );
    }
    println!();
    print!("{}", counters.table(Stages::ALL));
    print_batches(&counters);
    println!();
    print_cpu(&cpu_before, &cpu_after, wall, matcher.matched);
    println!("load average (1 min) {load_before} before, {load_after} after");
    if o.data.is_some() {
        println!("bus and state kept in {}", data.display());
    }
    Ok(())
}

/// How many batches each stage applied, and their mean size: what each batch's fixed costs
/// (its writes, its wake-ups of the next stage) were shared by.
fn print_batches(counters: &Counters) {
    let each: Vec<String> = counters
        .by_stage()
        .into_iter()
        .map(|(name, s)| {
            let batches = s.batches.load(std::sync::atomic::Ordering::Relaxed);
            let mean = s.consumed() as f64 / batches.max(1) as f64;
            format!("{name} {batches} ({mean:.1} records each)")
        })
        .collect();
    println!("batches    {}", each.join(", "));
}

/// What the producer did.
struct Produced {
    sent: u64,
    /// The longest an event was sent after it was due.
    max_behind: Duration,
}

/// Sends every event when it is due (those due together in one flush), until the schedule ends
/// or the pipeline stops.
fn produce(
    bus: &dyn Bus,
    config: &config::Config,
    schedule: &Schedule,
    prefix: &str,
    start: Instant,
    start_ms: i64,
    stages: &std::thread::JoinHandle<Result<()>>,
) -> Result<Produced> {
    let topic = &config.ingest.web_topic;
    let mut producer = bus.producer()?;
    let mut next = 0;
    let mut max_behind = Duration::ZERO;
    while next < schedule.total {
        if stages.is_finished() {
            bail!("the pipeline stopped after {next} events");
        }
        let elapsed = start.elapsed();
        let due = schedule.due_by(elapsed);
        if due <= next {
            std::thread::sleep(schedule.due(next).saturating_sub(elapsed));
            continue;
        }
        max_behind = max_behind.max(elapsed.saturating_sub(schedule.due(next)));
        let end = due.min(next + MAX_FLUSH);
        for i in next..end {
            let due_ms = start_ms + schedule.due(i).as_millis() as i64;
            let (key, value) = event(prefix, schedule, i, due_ms);
            producer.send(OutRecord::new(topic.as_str(), key, value))?;
        }
        producer.flush()?;
        next = end;
    }
    Ok(Produced {
        sent: next,
        max_behind,
    })
}

/// Reads the cohort topic until told to stop, matching each `e2e_toggle` change to its event.
fn read_changes(
    mut consumer: Box<dyn cdp_bus::Consumer>,
    schedule: Schedule,
    prefix: &str,
    start: Instant,
    matched: &AtomicU64,
    stop: &AtomicBool,
) -> Result<Matcher> {
    let mut matcher = Matcher::new(schedule);
    loop {
        let records = consumer.poll(10_000, Duration::from_millis(20))?;
        let read_at = start.elapsed();
        if records.is_empty() && stop.load(Ordering::Relaxed) {
            return Ok(matcher);
        }
        for r in records {
            let Some(value) = r.value.as_deref() else {
                continue;
            };
            let change: CohortChange = serde_json::from_slice(value)
                .with_context(|| format!("a record of {} is not a CohortChange", r.topic))?;
            if change.audience_key != COHORT {
                continue;
            }
            let person = change
                .identifiers
                .iter()
                .find(|id| id.kind.as_str() == "user_id")
                .and_then(|id| id.value.strip_prefix(prefix))
                .and_then(|n| n.parse::<u64>().ok());
            match person {
                Some(person) => {
                    matcher.record(person, change.version, change.kind, read_at);
                }
                None => matcher.unexpected += 1,
            }
        }
        matched.store(matcher.matched, Ordering::Relaxed);
    }
}

/// CPU used by each group of threads between two snapshots, in all against the wall time, and
/// per event: on a shared machine the time per event says more than the rate reached.
fn print_cpu(
    before: &BTreeMap<String, Duration>,
    after: &BTreeMap<String, Duration>,
    wall: Duration,
    events: u64,
) {
    let mut used: BTreeMap<&str, Duration> = BTreeMap::new();
    for (name, t) in after {
        let spent = t.saturating_sub(before.get(name).copied().unwrap_or_default());
        // RocksDB names its pools `rocksdb:low`, `rocksdb:high`...: one line for all.
        let group = if name.starts_with("rocksdb") {
            "rocksdb (flush, compaction)"
        } else {
            name.as_str()
        };
        *used.entry(group).or_default() += spent;
    }
    let total: Duration = used.values().sum();
    let mut rows: Vec<_> = used.into_iter().filter(|(_, t)| !t.is_zero()).collect();
    rows.sort_by_key(|row| std::cmp::Reverse(row.1));
    let per_event = |t: Duration| t.as_secs_f64() * 1e6 / events.max(1) as f64;
    println!(
        "cpu        {:.1} s in {:.1} s wall ({:.2} cores), {:.0} us per event; by thread:",
        total.as_secs_f64(),
        wall.as_secs_f64(),
        total.as_secs_f64() / wall.as_secs_f64(),
        per_event(total)
    );
    for (name, t) in rows {
        println!(
            "           {name:<28} {:>6.1} s {:>6.1} us/event",
            t.as_secs_f64(),
            per_event(t)
        );
    }
}

/// The 1-minute load average of the machine, as `/proc/loadavg` says.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> Schedule {
        Schedule {
            rate: 1000,
            people: 10,
            total: 35,
        }
    }

    #[test]
    fn the_schedule_spaces_events_and_assigns_them_round_robin() {
        let s = schedule();
        assert_eq!(s.due(0), Duration::ZERO);
        assert_eq!(s.due(7), Duration::from_millis(7));
        assert_eq!(s.due_by(Duration::ZERO), 1);
        assert_eq!(s.due_by(Duration::from_micros(6_999)), 7);
        assert_eq!(s.due_by(Duration::from_millis(7)), 8);
        assert_eq!(s.due_by(Duration::from_secs(60)), 35, "never past the end");
        assert_eq!((s.person(3), s.phase(3)), (3, "in"));
        assert_eq!((s.person(13), s.phase(13)), (3, "out"));
        assert_eq!((s.person(23), s.phase(23)), (3, "in"));
    }

    #[test]
    fn a_change_answers_the_event_of_its_person_and_version() {
        let s = schedule();
        for i in 0..s.total {
            let version = i / s.people + 1;
            assert_eq!(s.event_of(s.person(i), version), Some(i));
            let expected = if s.phase(i) == "in" {
                CohortChangeKind::Entered
            } else {
                CohortChangeKind::Exited
            };
            assert_eq!(Schedule::kind_of(version), expected);
        }
        assert_eq!(s.event_of(10, 1), None, "no such person");
        assert_eq!(s.event_of(3, 0), None, "versions start at 1");
        assert_eq!(s.event_of(5, 4), None, "event 35 is past the run");
    }

    #[test]
    fn latency_is_counted_from_when_the_event_was_due() {
        let mut m = Matcher::new(schedule());
        // Event 13 (person 3's second, an exit) is due at 13 ms.
        let read = Duration::from_millis(250);
        assert_eq!(
            m.record(3, 2, CohortChangeKind::Exited, read),
            Outcome::Matched
        );
        assert_eq!(
            m.record(3, 2, CohortChangeKind::Exited, read),
            Outcome::Duplicate
        );
        assert_eq!(
            m.record(4, 2, CohortChangeKind::Entered, read),
            Outcome::Unexpected,
            "a second change is an exit"
        );
        assert_eq!(
            m.record(4, 3, CohortChangeKind::Entered, Duration::from_millis(10)),
            Outcome::Unexpected,
            "event 24 was not due yet"
        );
        assert_eq!(
            m.record(4, 1, CohortChangeKind::Entered, read),
            Outcome::Matched
        );
        assert_eq!((m.matched, m.duplicates, m.unexpected), (2, 1, 2));
        assert_eq!(m.last_read, read);

        let (mut all, missing) = m.latencies(35, Duration::ZERO);
        all.sort();
        assert_eq!(
            all,
            [Duration::from_millis(237), Duration::from_millis(246)],
            "250 ms read minus 13 ms and 4 ms due"
        );
        assert_eq!(missing, 33);
        let (after_warmup, missing) = m.latencies(20, Duration::from_millis(5));
        assert_eq!(after_warmup, [Duration::from_millis(237)]);
        assert_eq!(missing, 18, "of the 20 sent");
        assert_eq!(
            m.by_window(35, Duration::from_millis(10)),
            [
                vec![Duration::from_millis(246)],
                vec![Duration::from_millis(237)],
                vec![],
                vec![],
            ],
            "events due at 4 and 13 ms; the last window holds events 30 to 34"
        );
    }

    #[test]
    fn events_are_segment_identify_calls_ingest_accepts() {
        let s = schedule();
        let (key, value) = event("e2e-1-", &s, 13, 1_700_000_000_013);
        assert_eq!(key, "e2e-1-3");
        let v: serde_json::Value = serde_json::from_str(&value).unwrap();
        assert_eq!(v["type"], "identify");
        assert_eq!(v["userId"], "e2e-1-3");
        assert_eq!(v["messageId"], "e2e-1-m13");
        assert_eq!(v["traits"][TRAIT], "out");
        assert_eq!(v["timestamp"], "2023-11-14T22:13:20.013Z");

        let ingest = cdp_ingest::IngestConfig::default();
        let raw = cdp_bus::Record {
            topic: ingest.web_topic.clone(),
            partition: 0,
            offset: 0,
            timestamp_ms: 1_700_000_000_100,
            key: Some(key.into_bytes()),
            value: Some(value.into_bytes()),
            headers: Vec::new(),
        };
        let options = ingest.normalize_options().unwrap();
        let batch = cdp_ingest::stage::process_batch(&ingest, &options, &[raw]).unwrap();
        let signals: Vec<cdp_proto::Signal> = batch
            .records
            .iter()
            .filter(|r| r.topic == ingest.signals_topic)
            .map(|r| serde_json::from_slice(r.value.as_deref().unwrap()).unwrap())
            .collect();
        assert_eq!(signals.len(), 1, "accepted, not dead-lettered");
        assert_eq!(signals[0].traits[TRAIT], "out");
        assert!(signals[0]
            .identifiers
            .iter()
            .any(|id| id.kind.as_str() == "user_id" && id.value == "e2e-1-3"));
    }

    #[test]
    fn the_configuration_adds_the_cohort_to_the_defaults() {
        let mut o = Options::parse_from(["e2e_latency"]);
        let c = configuration(&o).unwrap();
        let keys: Vec<&str> = c
            .activation
            .cohorts
            .iter()
            .map(|c| c.key.as_str())
            .collect();
        assert_eq!(keys.last(), Some(&COHORT));
        assert!(keys.len() > 1);
        o.default_cohorts = false;
        assert_eq!(configuration(&o).unwrap().activation.cohorts.len(), 1);
    }
}
