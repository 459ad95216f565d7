//! Running stages: opening the bus and state stores from config, creating topics, feeding input
//! files into the raw topics, and running ingest, resolver and activation on their own threads
//! (each stage owns its state; they talk only through topics).

use crate::config::{Backend, Config};
use anyhow::{Context, Result};
use cdp_activation::membership::MembershipStore;
use cdp_activation::stage::ActivationCounters;
use cdp_bus::{embedded::EmbeddedBus, kafka::KafkaBus, Bus, OutRecord};
use cdp_resolver::stage::ResolverCounters;
use cdp_resolver::RocksStore;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Which stages a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stages {
    pub ingest: bool,
    pub resolve: bool,
    pub activate: bool,
}

impl Stages {
    pub const ALL: Stages = Stages {
        ingest: true,
        resolve: true,
        activate: true,
    };
}

/// Counters of every stage, shared with the threads running them.
#[derive(Debug, Default)]
pub struct Counters {
    pub ingest: cdp_bus::StageCounters,
    /// Ingest's counts by source, outcome and dropped identifier kind.
    pub ingest_detail: cdp_ingest::IngestMetrics,
    pub resolver: ResolverCounters,
    pub activation: ActivationCounters,
}

/// `n` over `d` as `N/s`, or `-` when no time passed.
pub fn rate(n: u64, d: std::time::Duration) -> String {
    let secs = d.as_secs_f64();
    if secs <= 0.0 {
        return "-".into();
    }
    format!("{:.0}/s", n as f64 / secs)
}

impl Counters {
    /// Each stage's name and loop counters, in pipeline order.
    pub fn by_stage(&self) -> [(&'static str, &cdp_bus::StageCounters); 3] {
        [
            (cdp_ingest::stage::STAGE, &self.ingest),
            (cdp_resolver::stage::STAGE, &self.resolver.stage),
            (cdp_activation::stage::STAGE, &self.activation.stage),
        ]
    }

    /// The loop counters of the stage named `stage`.
    pub fn stage(&self, stage: &str) -> Option<&cdp_bus::StageCounters> {
        let (_, counters) = self
            .by_stage()
            .into_iter()
            .find(|(name, _)| *name == stage)?;
        Some(counters)
    }

    /// Records in, out and dead-lettered, and the busy-time rate, of each of `stages`: the table
    /// `cdp demo` prints, and `cdp run --until-drained` prints when it stops.
    pub fn table(&self, stages: Stages) -> String {
        let mut out = format!(
            "{:<18} {:>10} {:>10} {:>8} {:>14}\n",
            "stage", "in", "out", "dlq", "rate (busy)"
        );
        let ran = [stages.ingest, stages.resolve, stages.activate];
        for ((name, s), ran) in self.by_stage().into_iter().zip(ran) {
            if !ran {
                continue;
            }
            out.push_str(&format!(
                "{:<18} {:>10} {:>10} {:>8} {:>14}\n",
                name,
                s.consumed(),
                s.produced(),
                s.dead_lettered(),
                rate(s.consumed(), s.busy())
            ));
        }
        out
    }
}

/// The configured bus, with every topic the stages use created (`[bus] partitions` each).
pub fn open_bus(config: &Config, data: &Path) -> Result<Arc<dyn Bus>> {
    let names = topic_names(config);
    Ok(match config.bus.backend {
        Backend::Embedded => {
            let dir = data.join("bus");
            std::fs::create_dir_all(&dir)?;
            let embedded = &config.bus.embedded;
            let fetch = cdp_bus::embedded::Fetch {
                min_records: embedded.fetch_min_records.max(1),
                max_wait: Duration::from_millis(embedded.fetch_max_wait_ms),
            };
            let topics: Vec<(&str, i32)> = names
                .iter()
                .map(|n| (n.as_str(), config.bus.partitions))
                .collect();
            Arc::new(
                EmbeddedBus::open_with_topics(&dir, &topics)
                    .with_context(|| format!("opening bus in {}", dir.display()))?
                    .with_fetch(fetch),
            )
        }
        Backend::Kafka => {
            let bus = KafkaBus::new(config.bus.kafka.clone())?;
            for name in &names {
                bus.create_topic(name, config.bus.partitions)
                    .with_context(|| format!("creating topic {name}"))?;
            }
            Arc::new(bus)
        }
    })
}

/// A view of the bus for tools that only read, usable while a pipeline owns the data directory.
pub fn open_bus_for_reading(config: &Config, data: &Path) -> Result<Arc<dyn Bus>> {
    if config.bus.backend == Backend::Embedded {
        let dir = data.join("bus");
        if !dir.exists() {
            anyhow::bail!(
                "no embedded bus in {} (run `cdp run` or `cdp demo` first, or pass --data)",
                dir.display()
            );
        }
        if let Ok(bus) = EmbeddedBus::open(&dir) {
            return Ok(Arc::new(bus));
        }
        return Ok(Arc::new(EmbeddedBus::open_read_only(&dir)?));
    }
    open_bus(config, data)
}

/// Every topic the configured stages use.
pub fn topic_names(config: &Config) -> Vec<String> {
    let i = &config.ingest;
    let r = &config.resolver;
    let a = &config.activation;
    let mut names = vec![
        i.web_topic.clone(),
        i.app_topic.clone(),
        i.crm_topic.clone(),
        i.media_topic.clone(),
        i.signals_topic.clone(),
        i.dlq_topic.clone(),
        r.dlq_topic.clone(),
        r.commands_topic.clone(),
        r.changes_topic.clone(),
        r.profiles_topic.clone(),
        a.cohorts_topic.clone(),
        a.membership_topic.clone(),
        a.dlq_topic.clone(),
    ];
    // Destinations' topics too: on the embedded bus the topics named here are created with the
    // database at once, and creating one later rewrites RocksDB's options file once per
    // partition (about 25 ms each with the default topics).
    for d in &a.destinations {
        if d.kind == cdp_activation::config::DestinationKind::Kafka {
            names.push(d.topic.clone());
        }
        names.push(d.dlq_topic.clone());
    }
    names.sort();
    names.dedup();
    names
}

/// Produces every line of `DIR/{web,app,crm,media}.jsonl` to its raw topic. Returns lines per file.
pub fn feed_inputs(bus: &dyn Bus, config: &Config, dir: &Path) -> Result<Vec<(String, u64)>> {
    feed_inputs_until(bus, config, dir, &AtomicBool::new(false))
}

/// Records the feed writes at a time: the stages start on the first ones while the rest are read.
const FEED_FLUSH_RECORDS: u64 = 1000;

/// [`feed_inputs`], stopping (with what it fed so far) once `stop` is set.
pub fn feed_inputs_until(
    bus: &dyn Bus,
    config: &Config,
    dir: &Path,
    stop: &AtomicBool,
) -> Result<Vec<(String, u64)>> {
    let i = &config.ingest;
    let mut producer = bus.producer()?;
    let mut fed = Vec::new();
    for (file, topic) in [
        ("web.jsonl", &i.web_topic),
        ("app.jsonl", &i.app_topic),
        ("crm.jsonl", &i.crm_topic),
        ("media.jsonl", &i.media_topic),
    ] {
        let path = dir.join(file);
        if !path.exists() {
            continue;
        }
        let reader = std::io::BufReader::new(
            std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?,
        );
        let mut n = 0u64;
        for line in reader.split(b'\n') {
            let line = line?;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            // Keyed by position so records spread over partitions like independent sources.
            let key = format!("{file}:{n}");
            producer.send(OutRecord::new(topic.clone(), key, line))?;
            n += 1;
            if n % FEED_FLUSH_RECORDS == 0 {
                producer.flush()?;
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
        }
        producer.flush()?;
        fed.push((file.trim_end_matches(".jsonl").to_string(), n));
        if stop.load(Ordering::Relaxed) {
            break;
        }
    }
    Ok(fed)
}

/// The state directories of a data directory.
pub fn resolver_dir(data: &Path) -> PathBuf {
    data.join("resolver")
}

pub fn activation_dir(data: &Path) -> PathBuf {
    data.join("activation")
}

/// How [`run`] runs.
#[derive(Default)]
pub struct RunOptions {
    /// Return once every stage has caught up, instead of at shutdown.
    pub until_drained: bool,
    /// The resolver's state, when the caller opened it (to serve it too); else `run` opens it.
    /// The resolver writes through this one (the profile API's read tier watches its writes).
    pub resolver_store: Option<Arc<dyn cdp_resolver::GraphStore>>,
    /// Activation's membership state, when the caller opened it (to serve it too); else `run`
    /// opens it.
    pub activation_store: Option<Arc<MembershipStore>>,
    /// Activation's running definitions, when the caller built them (to serve them too).
    pub activation: Option<Arc<cdp_activation::Activation>>,
    /// Reload activation's cohorts and destinations from the config file on request (SIGHUP).
    pub reload: Option<Reload>,
    /// A thread feeding input into the bus while the stages run: a run until drained is not
    /// drained before it has finished, and its failure fails the run.
    pub feed: Option<std::thread::JoinHandle<Result<()>>>,
}

/// A request to re-read the config file, and where it is.
pub struct Reload {
    pub requested: Arc<AtomicBool>,
    pub config_path: Option<PathBuf>,
}

/// Swaps activation's cohorts and destinations for those of the config file as it is now; a file
/// that does not load leaves the running definitions in place. Says what happened on stderr.
fn reload_activation(reload: &Reload, activation: &cdp_activation::Activation) {
    let result = Config::load(reload.config_path.as_deref())
        .and_then(|config| Ok(activation.reload(&config.activation)?));
    match result {
        Ok(summary) => {
            eprintln!(
                "reloaded activation: {} cohorts, {} destinations",
                summary.cohorts, summary.destinations
            );
            if !summary.needs_restart.is_empty() {
                eprintln!(
                    "changed settings that take effect only after a restart: {}",
                    summary.needs_restart.join(", ")
                );
            }
        }
        Err(e) => eprintln!("config reload refused, the running definitions stay: {e:#}"),
    }
}

/// Opens (creating) the resolver's state; the stage writes it, the profile API reads it.
pub fn open_resolver_store(data: &Path, config: &Config) -> Result<Arc<RocksStore>> {
    let dir = resolver_dir(data);
    std::fs::create_dir_all(&dir)?;
    let store = RocksStore::open_with(&dir, &config.resolver.storage)
        .with_context(|| format!("opening {}", dir.display()))?;
    Ok(Arc::new(store))
}

/// Opens (creating) activation's membership state; the stage writes it, the cohort API reads it.
pub fn open_activation_store(data: &Path) -> Result<Arc<MembershipStore>> {
    let dir = activation_dir(data);
    std::fs::create_dir_all(&dir)?;
    let store =
        MembershipStore::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
    Ok(Arc::new(store))
}

/// The bus, and the state of the stages a process runs (each opened if its stage runs), with
/// activation's definitions built from the config.
pub struct Opened {
    pub bus: Arc<dyn Bus>,
    pub resolver: Option<Arc<RocksStore>>,
    pub activation: Option<(Arc<MembershipStore>, Arc<cdp_activation::Activation>)>,
}

/// Opens the bus and the state of `stages`, the three on threads of their own, and builds
/// activation's definitions (a bad cohort or destination is refused before anything is fed).
/// Opening a RocksDB database with dozens of column families costs tens of milliseconds of CPU
/// (their options are written to a file and parsed back), which a run would otherwise pay
/// three times over before its first record.
pub fn open_bus_and_stores(config: &Config, data: &Path, stages: Stages) -> Result<Opened> {
    std::thread::scope(|s| {
        let resolver = s.spawn(|| {
            stages
                .resolve
                .then(|| open_resolver_store(data, config))
                .transpose()
        });
        let activation = s.spawn(|| {
            stages
                .activate
                .then(|| -> Result<_> {
                    let definitions = cdp_activation::Activation::new(&config.activation)?;
                    Ok((open_activation_store(data)?, Arc::new(definitions)))
                })
                .transpose()
        });
        let bus = open_bus(config, data);
        let joined = |what: &str| anyhow::anyhow!("opening {what} panicked");
        let resolver = resolver
            .join()
            .map_err(|_| joined("the resolver's state"))?;
        let activation = activation
            .join()
            .map_err(|_| joined("activation's state"))?;
        Ok(Opened {
            bus: bus?,
            resolver: resolver?,
            activation: activation?,
        })
    })
}

/// Runs `stages` until `shutdown` is set, or, with `until_drained`, until every stage has caught up.
pub fn run(
    config: &Config,
    data: &Path,
    bus: Arc<dyn Bus>,
    stages: Stages,
    counters: Arc<Counters>,
    shutdown: Arc<AtomicBool>,
    options: RunOptions,
) -> Result<()> {
    let RunOptions {
        until_drained,
        resolver_store,
        activation_store,
        activation,
        reload,
        mut feed,
    } = options;
    let mut activation_defs: Option<Arc<cdp_activation::Activation>> = None;
    // How far each stateful stage's own state is behind its input: a stage that restarts on an
    // empty volume re-reads input its group already committed, so group lag alone is not enough.
    let mut state_lags: Vec<(&str, StateLag)> = Vec::new();
    let mut handles: Vec<StageThread> = Vec::new();
    let nice = config.http.pipeline_nice;
    if stages.ingest {
        let (bus, cfg, c, s) = (
            bus.clone(),
            config.ingest.clone(),
            counters.clone(),
            shutdown.clone(),
        );
        handles.push(spawn_stage("ingest", nice, move || {
            cdp_ingest::stage::run_with_metrics(bus.as_ref(), &cfg, &c.ingest, &c.ingest_detail, &s)
        })?);
    }
    if stages.resolve {
        let store: Arc<dyn cdp_resolver::GraphStore> = match resolver_store {
            Some(store) => store,
            None => open_resolver_store(data, config)?,
        };
        let (checked, cfg) = (store.clone(), config.resolver.clone());
        state_lags.push((
            cdp_resolver::stage::STAGE,
            Box::new(move |bus: &dyn Bus| {
                Ok(cdp_bus::state_lag(bus, &cfg.input_topics(), |t, p| {
                    cdp_resolver::stage::stored_offset(checked.as_ref(), t, p)
                })?)
            }),
        ));
        let (bus, cfg, c, s) = (
            bus.clone(),
            config.resolver.clone(),
            counters.clone(),
            shutdown.clone(),
        );
        handles.push(spawn_stage("resolver", nice, move || {
            cdp_resolver::stage::run(bus.as_ref(), store.as_ref(), &cfg, &c.resolver, &s)
        })?);
    }
    if stages.activate {
        let store = match activation_store {
            Some(store) => store,
            None => open_activation_store(data)?,
        };
        let (checked, cfg) = (store.clone(), config.activation.clone());
        state_lags.push((
            cdp_activation::stage::STAGE,
            Box::new(move |bus: &dyn Bus| {
                Ok(cdp_bus::state_lag(bus, &cfg.input_topics(), |t, p| {
                    checked.offset(t, p)
                })?)
            }),
        ));
        let activation = match activation {
            Some(activation) => activation,
            None => Arc::new(cdp_activation::Activation::new(&config.activation)?),
        };
        activation_defs = Some(activation.clone());
        let (bus, cfg, c, s) = (
            bus.clone(),
            config.activation.clone(),
            counters.clone(),
            shutdown.clone(),
        );
        handles.push(spawn_stage("activation", nice, move || {
            cdp_activation::stage::run(bus.as_ref(), &store, &cfg, &activation, &c.activation, &s)
        })?);
    }

    // RocksDB's background threads (flushes, compactions) exist once the stores are open; the
    // stages lowered themselves as they started.
    match crate::priority::lower_threads_named("rocksdb:", nice) {
        Ok(n) if nice > 0 => tracing::info!(nice, rocksdb_threads = n, "pipeline threads lowered"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "lowering RocksDB's threads failed"),
    }
    let groups = stage_groups(config, stages);
    let mut failure = None;
    let mut expiry = crate::retention::Expiry::default();
    // A run until drained stops as soon as it is: its wall time is what a backfill waits for.
    let tick = Duration::from_millis(if until_drained { 5 } else { 50 });
    loop {
        std::thread::sleep(tick);
        if config.bus.backend == Backend::Embedded {
            let now_ms = chrono::Utc::now().timestamp_millis();
            if let Err(e) = expiry.tick(bus.as_ref(), &config.bus.embedded, now_ms) {
                tracing::warn!(error = %format!("{e:#}"), "expiring bus records failed");
            }
        }
        if let Some(pos) = handles.iter().position(|(_, h)| h.is_finished()) {
            // A stage that stops on its own has failed (or was told to stop): stop the rest.
            let (name, handle) = handles.remove(pos);
            if let Err(e) = join(&format!("{name} stage"), handle) {
                failure = Some(e);
            }
            shutdown.store(true, Ordering::Relaxed);
            break;
        }
        if shutdown.load(Ordering::Relaxed) {
            break;
        }
        if let (Some(reload), Some(activation)) = (&reload, &activation_defs) {
            if reload.requested.swap(false, Ordering::Relaxed) {
                reload_activation(reload, activation);
            }
        }
        if feed.as_ref().is_some_and(|f| f.is_finished()) {
            if let Err(e) = join(FEED, feed.take().expect("checked above")) {
                failure = Some(e);
                shutdown.store(true, Ordering::Relaxed);
                break;
            }
        }
        if until_drained
            && feed.is_none()
            && drained(bus.as_ref(), &groups, &state_lags, &counters)?
        {
            shutdown.store(true, Ordering::Relaxed);
            break;
        }
    }
    // Stages waiting for records see the shutdown now, not at the end of their poll timeouts.
    bus.wake_consumers();
    for (name, handle) in handles {
        if let Err(e) = join(&format!("{name} stage"), handle) {
            failure.get_or_insert(e);
        }
    }
    // It stops at its next flush once `shutdown` is set.
    if let Some(Err(e)) = feed.map(|f| join(FEED, f)) {
        failure.get_or_insert(e);
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A stage running on its own thread, with its name.
type StageThread = (&'static str, std::thread::JoinHandle<Result<()>>);

/// Runs `stage` on a thread named `name`, at niceness `nice` (`http.pipeline_nice`).
fn spawn_stage<E: Into<anyhow::Error>>(
    name: &'static str,
    nice: i32,
    stage: impl FnOnce() -> Result<(), E> + Send + 'static,
) -> Result<StageThread> {
    let handle = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if let Err(e) = crate::priority::lower_this_thread(nice) {
                tracing::warn!(stage = name, error = %e, "lowering the stage's priority failed");
            }
            stage().map_err(Into::into)
        })?;
    Ok((name, handle))
}

/// What the input feed is called in errors.
const FEED: &str = "feeding the input";

/// Waits for the thread doing `what` ("ingest stage", [`FEED`]); its error or panic is the
/// run's.
fn join(what: &str, handle: std::thread::JoinHandle<Result<()>>) -> Result<()> {
    match handle.join() {
        Ok(r) => r.with_context(|| format!("{what} failed")),
        Err(_) => anyhow::bail!("{what} panicked"),
    }
}

/// (stage, consumer group, input topics) of each running stage, in pipeline order.
pub fn stage_groups(config: &Config, stages: Stages) -> Vec<(&'static str, String, Vec<String>)> {
    let i = &config.ingest;
    let mut groups = Vec::new();
    if stages.ingest {
        groups.push((
            cdp_ingest::stage::STAGE,
            i.group.clone(),
            i.raw_topics().iter().map(|(t, _)| t.to_string()).collect(),
        ));
    }
    if stages.resolve {
        groups.push((
            cdp_resolver::stage::STAGE,
            config.resolver.group.clone(),
            to_strings(&config.resolver.input_topics()),
        ));
    }
    if stages.activate {
        let a = &config.activation;
        groups.push((
            cdp_activation::stage::STAGE,
            a.group.clone(),
            to_strings(&a.input_topics()),
        ));
    }
    groups
}

fn to_strings(topics: &[&str]) -> Vec<String> {
    topics.iter().map(|t| t.to_string()).collect()
}

/// Whether every stage has caught up: nothing left of its input by its group's commits and,
/// for a stateful stage, by its own state. Checked upstream first: a stage commits only after
/// its outputs are flushed, so once ingest is at zero, all signals exist, and so on down.
///
/// A stateful stage whose state is at the end of its input and whose last poll found nothing
/// (read after the state, so no batch can have come between) has published everything: it
/// publishes a batch's output before it polls again. Its group's commit alone may then be
/// behind for good, when the process was killed between committing a batch to its state and to
/// its group, with nothing left to read to move the group on.
fn drained(
    bus: &dyn Bus,
    groups: &[(&str, String, Vec<String>)],
    state_lags: &[(&str, StateLag)],
    counters: &Counters,
) -> Result<bool> {
    for (stage, group, topics) in groups {
        let mut idle_at_end = false;
        if let Some((_, lag)) = state_lags.iter().find(|(s, _)| s == stage) {
            if lag(bus)? > 0 {
                return Ok(false);
            }
            idle_at_end = counters.stage(stage).is_some_and(|c| c.idle());
        }
        if !idle_at_end && bus.lag(group, topics)? > 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Records a stateful stage has not applied, by its own state.
type StateLag = Box<dyn Fn(&dyn Bus) -> Result<u64>>;
