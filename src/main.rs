//! The `cdp` command line. Parsing and dispatch only: the work is done by the crates.

use anyhow::{Context, Result};
use cdp::{
    api, collect, config, demo, eval, graph, http, pipeline, read_tier, snapshot,
    snapshot_schedule, topic,
};
use clap::{Parser, Subcommand, ValueEnum};
use config::Config;
use pipeline::Stages;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// mimalloc rather than the system allocator: the stages allocate and free many small,
/// short-lived values per record (signals, profile fields, JSON), which it serves from per-thread
/// pages. Ingest runs 6% faster with it (`--bench ingest`, same corpus).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "cdp",
    version,
    about = "Streaming customer data platform with real-time identity resolution"
)]
struct Cli {
    /// Data directory (embedded bus and stage state).
    #[arg(long, global = true, default_value = "./data")]
    data: PathBuf,
    /// Configuration file (TOML); defaults apply when omitted.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Write a realistic multi-source workload (raw payloads and ground truth).
    Generate {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1000)]
        profiles: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Events fall in the 30 days before this instant (RFC 3339); default: now.
        /// Fix it to get the same files for the same seed.
        #[arg(long)]
        now: Option<String>,
    },
    /// Run every stage in this process.
    Run {
        /// Feed DIR/{web,app,crm,media}.jsonl into the raw topics first.
        #[arg(long)]
        input: Option<PathBuf>,
        /// Exit once every stage has caught up.
        #[arg(long)]
        until_drained: bool,
        /// Also serve the Segment-compatible Tracking API (`collect.listen`), as `cdp collect`
        /// does: with the embedded bus, one process must own the data directory.
        #[arg(long)]
        collect: bool,
    },
    /// Run only the ingest stage.
    Ingest {
        /// Exit once the stage has caught up with its input.
        #[arg(long)]
        until_drained: bool,
    },
    /// Run only the resolver stage.
    Resolve {
        /// Exit once the stage has caught up with its input.
        #[arg(long)]
        until_drained: bool,
    },
    /// Serve the Segment-compatible HTTP Tracking API (`collect.listen`), producing to the
    /// web and app raw topics.
    Collect,
    /// Run only the activation stage.
    Activate {
        /// Exit once the stage has caught up with its input.
        #[arg(long)]
        until_drained: bool,
    },
    /// Generate a workload, run the pipeline until drained, and report.
    Demo {
        #[arg(long, default_value_t = 5000)]
        profiles: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Score the resolved profiles against ground truth: pairwise and B-cubed precision, recall
    /// and F1, over- and under-merge counts.
    Eval {
        /// CSV `source,record,person` with a header line; `record` is the signal's event id.
        #[arg(long)]
        truth: PathBuf,
        /// Print the scores as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Look up unified profiles.
    Profile {
        #[command(subcommand)]
        command: ProfileCommand,
    },
    /// Explain, erase and repair the identity graph.
    Graph {
        #[command(subcommand)]
        command: GraphCommand,
    },
    /// Write the profiles, identifiers, merges, refused merges and cohort membership as
    /// Parquet tables under OUT/dt=YYYY-MM-DD/ (read-only: the pipeline may keep running).
    Snapshot {
        #[arg(long)]
        out: PathBuf,
    },
    /// Probabilistic matching: fit its model to the resolver's profiles.
    Match {
        #[command(subcommand)]
        command: MatchCommand,
    },
    /// Inspect topics.
    Topic {
        #[command(subcommand)]
        command: TopicCommand,
    },
    /// Configuration.
    Config {
        /// Print the documented default configuration.
        #[arg(long)]
        print_default: bool,
    },
}

#[derive(Subcommand)]
enum ProfileCommand {
    /// Print the unified profile holding KIND:VALUE (raw emails and phones are normalised).
    Get {
        identifier: String,
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(Subcommand)]
enum GraphCommand {
    /// Print the component of KIND:VALUE or a canonical id as JSON: identifiers, links with
    /// rules and confidences, merges, refused merges with reasons, candidates.
    Explain {
        target: String,
        /// Default: the ingest default tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Erase the profile holding KIND:VALUE (or a canonical id) and tombstone its identifiers.
    Forget {
        target: String,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Take a link or an identifier out of a profile and rebuild that component.
    Unmerge {
        canonical_id: String,
        /// Link id, as `explain` shows it.
        #[arg(long, conflicts_with = "identifier")]
        link: Option<u64>,
        /// KIND:VALUE of an identifier to detach into a profile of its own.
        #[arg(long)]
        identifier: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Recompute every profile from the link log under the configured policy and print the
    /// difference (profiles split or merged); offline: stop the pipeline first.
    Rebuild {
        /// Write the new partition and publish the resulting changes.
        #[arg(long)]
        apply: bool,
        /// Examples of each kind of difference to print.
        #[arg(long, default_value_t = 10)]
        examples: usize,
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(Subcommand)]
enum MatchCommand {
    /// Estimate u from random pairs of profiles and m by EM over blocking candidates, and write
    /// the model (next version) as JSON; point `resolver.matching.model_path` at it.
    Train {
        /// Profiles sampled, and most candidate pairs for m.
        #[arg(long, default_value_t = 10_000)]
        sample: usize,
        /// Random pairs of sampled profiles for u.
        #[arg(long, default_value_t = 100_000)]
        random_pairs: usize,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(Subcommand)]
enum TopicCommand {
    /// List topics with partition and record counts.
    List,
    /// Print records as JSON lines.
    Read {
        topic: String,
        #[arg(long)]
        from_beginning: bool,
        #[arg(long)]
        limit: Option<usize>,
        /// Stop after this long without new records (from the beginning, also at the end).
        #[arg(long, default_value_t = 1000)]
        idle_ms: u64,
    },
}

fn main() {
    if let Err(e) = shutdown_flag() {
        eprintln!("error: installing signal handlers: {e:#}");
        std::process::exit(1);
    }
    let cli = Cli::parse();
    init_logging(cli.log_format);
    if let Err(e) = dispatch(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CDP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The process's flag set on SIGINT/SIGTERM: stages finish their batch, commit, and stop.
/// Registered once, first thing in `main`, so a signal during start-up is not fatal.
fn shutdown_flag() -> Result<Arc<AtomicBool>> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    if let Some(flag) = FLAG.get() {
        return Ok(flag.clone());
    }
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, flag.clone())?;
    }
    Ok(FLAG.get_or_init(|| flag).clone())
}

fn dispatch(cli: Cli) -> Result<()> {
    if let Command::Config { print_default } = &cli.command {
        if *print_default {
            print!("{}", config::DEFAULT_TOML);
        } else {
            let c = Config::load(cli.config.as_deref())?;
            print!("{}", toml::to_string_pretty(&c)?);
        }
        return Ok(());
    }
    let config = Config::load(cli.config.as_deref())?;
    let data = cli.data;
    match cli.command {
        Command::Generate {
            out,
            profiles,
            seed,
            now,
        } => {
            let now = match now {
                Some(text) => chrono::DateTime::parse_from_rfc3339(&text)
                    .with_context(|| format!("--now {text:?} is not an RFC 3339 timestamp"))?
                    .to_utc(),
                None => chrono::Utc::now(),
            };
            let options = cdp_ingest::workload::WorkloadOptions {
                profiles,
                seed,
                now,
            };
            let summary = cdp_ingest::workload::generate_with(&out, &options)
                .with_context(|| format!("writing workload to {}", out.display()))?;
            println!(
                "{} records for {profiles} people in {}",
                summary.records(),
                out.display()
            );
        }
        Command::Run {
            input,
            until_drained,
            collect,
        } => {
            let opened = pipeline::open_bus_and_stores(&config, &data, Stages::ALL)?;
            // Stopped (its requests answered) when the stages have stopped.
            let _collector = if collect {
                Some(collect::serve(
                    &config,
                    opened.bus.clone(),
                    shutdown_flag()?,
                )?)
            } else {
                None
            };
            let shutdown = shutdown_flag()?;
            // Fed while the stages run: they start on the first records.
            let feed = match input {
                Some(dir) => {
                    let (bus, config) = (opened.bus.clone(), config.clone());
                    let stop = shutdown.clone();
                    let feed = move || -> Result<()> {
                        let fed = pipeline::feed_inputs_until(bus.as_ref(), &config, &dir, &stop)?;
                        for (source, n) in fed {
                            eprintln!("fed {n} {source} records");
                        }
                        Ok(())
                    };
                    Some(
                        std::thread::Builder::new()
                            .name("feed".into())
                            .spawn(feed)?,
                    )
                }
                None => None,
            };
            serve_and_run(
                &config,
                cli.config.as_deref(),
                &data,
                opened,
                Stages::ALL,
                until_drained,
                feed,
            )?;
        }
        Command::Ingest { until_drained }
        | Command::Resolve { until_drained }
        | Command::Activate { until_drained } => {
            let stages = Stages {
                ingest: matches!(cli.command, Command::Ingest { .. }),
                resolve: matches!(cli.command, Command::Resolve { .. }),
                activate: matches!(cli.command, Command::Activate { .. }),
            };
            let opened = pipeline::open_bus_and_stores(&config, &data, stages)?;
            serve_and_run(
                &config,
                cli.config.as_deref(),
                &data,
                opened,
                stages,
                until_drained,
                None,
            )?;
        }
        Command::Collect => collect::run(&config, &data, shutdown_flag()?)?,
        Command::Demo { profiles, seed } => {
            let opts = demo::DemoOptions {
                profiles,
                seed,
                data,
            };
            demo::run(&config, &opts, shutdown_flag()?)?;
        }
        Command::Eval { truth, json } => {
            let bus = pipeline::open_bus_for_reading(&config, &data)?;
            let dir = pipeline::resolver_dir(&data);
            let store = cdp_resolver::RocksStore::open_read_only(&dir)
                .with_context(|| format!("opening resolver state in {}", dir.display()))?;
            let scores = eval::evaluate(bus.as_ref(), &config, &store, &truth)?;
            if json {
                println!("{}", serde_json::to_string(&scores)?);
            } else {
                eval::print(&scores);
            }
        }
        Command::Profile {
            command: ProfileCommand::Get { identifier, tenant },
        } => {
            let tenant = tenant.unwrap_or_else(|| config.ingest.default_tenant.clone());
            let id = graph::parse_identifier(&identifier, &config)?;
            let dir = pipeline::resolver_dir(&data);
            let store = cdp_resolver::RocksStore::open_with(&dir, &config.resolver.storage)
                .or_else(|_| cdp_resolver::RocksStore::open_read_only(&dir))
                .with_context(|| format!("opening resolver state in {}", dir.display()))?;
            let profile = if id.kind.as_str() == "canonical_id" {
                cdp_resolver::lookup::profile_by_canonical(&store, &tenant, &id.value)?
            } else {
                cdp_resolver::lookup::profile_by_identifier(&store, &tenant, &id)?
            };
            match profile {
                Some(p) => println!("{}", serde_json::to_string_pretty(&p)?),
                None => anyhow::bail!("no profile holds {id} in tenant {tenant:?}"),
            }
        }
        Command::Graph { command } => match command {
            GraphCommand::Explain { target, tenant } => {
                let tenant = tenant.unwrap_or_else(|| config.ingest.default_tenant.clone());
                graph::explain(&config, &data, &tenant, &target)?;
            }
            GraphCommand::Forget { target, tenant } => {
                let tenant = tenant.unwrap_or_else(|| config.ingest.default_tenant.clone());
                graph::forget(&config, &data, &tenant, &target, &*shutdown_flag()?)?;
            }
            GraphCommand::Unmerge {
                canonical_id,
                link,
                identifier,
                tenant,
            } => {
                let tenant = tenant.unwrap_or_else(|| config.ingest.default_tenant.clone());
                graph::unmerge(
                    &config,
                    &data,
                    &tenant,
                    &canonical_id,
                    link,
                    identifier.as_deref(),
                    &*shutdown_flag()?,
                )?;
            }
            GraphCommand::Rebuild {
                apply,
                examples,
                tenant,
            } => {
                let tenant = tenant.unwrap_or_else(|| config.ingest.default_tenant.clone());
                graph::rebuild(&config, &data, &tenant, apply, examples)?;
            }
        },
        Command::Snapshot { out } => {
            let summary = snapshot::write(&snapshot::SnapshotOptions {
                resolver_dir: pipeline::resolver_dir(&data),
                activation_dir: pipeline::activation_dir(&data),
                out,
                at: chrono::Utc::now(),
            })?;
            for t in &summary.tables {
                let (name, rows, bytes) = (t.table.name(), t.rows, t.bytes);
                println!("{name}: {rows} rows, {bytes} bytes, {}", t.path.display());
            }
            eprintln!(
                "snapshot of {} bytes in {}",
                summary.bytes(),
                summary.dir.display()
            );
            if summary.activation_missing {
                eprintln!("no activation state under --data: cohort_membership is empty");
            }
        }
        Command::Match {
            command:
                MatchCommand::Train {
                    sample,
                    random_pairs,
                    out,
                    seed,
                    tenant,
                },
        } => {
            let options = cdp_resolver::matching::train::TrainOptions {
                tenant: tenant.unwrap_or_else(|| config.ingest.default_tenant.clone()),
                sample,
                random_pairs,
                seed,
                max_iterations: 200,
            };
            let dir = pipeline::resolver_dir(&data);
            let store = cdp_resolver::RocksStore::open_read_only(&dir)
                .with_context(|| format!("no resolver state in {}", dir.display()))?;
            let (model, report) =
                cdp_resolver::matching::train::train(&store, &config.resolver.matching, &options)?;
            std::fs::write(&out, serde_json::to_vec_pretty(&model)?)
                .with_context(|| format!("writing {}", out.display()))?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Command::Topic { command } => {
            let bus = pipeline::open_bus_for_reading(&config, &data)?;
            let mut out = std::io::stdout().lock();
            match command {
                TopicCommand::List => topic::list(bus.as_ref(), &mut out)?,
                TopicCommand::Read {
                    topic,
                    from_beginning,
                    limit,
                    idle_ms,
                } => {
                    topic::read(
                        bus.as_ref(),
                        &topic,
                        from_beginning,
                        limit,
                        Duration::from_millis(idle_ms),
                        &mut out,
                    )?;
                }
            }
        }
        Command::Config { .. } => unreachable!("handled above"),
    }
    Ok(())
}

/// Runs `stages` with the process's HTTP listener (health, readiness, metrics, and the profile
/// API where the resolver runs) unless `http.listen` is empty.
fn serve_and_run(
    config: &Config,
    config_path: Option<&std::path::Path>,
    data: &std::path::Path,
    opened: pipeline::Opened,
    stages: Stages,
    until_drained: bool,
    feed: Option<std::thread::JoinHandle<Result<()>>>,
) -> Result<()> {
    let counters = Arc::new(pipeline::Counters::default());
    let shutdown = shutdown_flag()?;
    let pipeline::Opened {
        bus,
        resolver: resolver_store,
        activation,
    } = opened;
    let (activation_store, activation) = activation.unzip();
    // Held to the end of a run until drained, which leaves without closing them (see below).
    let held = (
        bus.clone(),
        resolver_store.clone(),
        activation_store.clone(),
    );
    // The store the resolver writes through: the profile API's, where it serves one.
    let mut watched_store: Option<Arc<dyn cdp_resolver::GraphStore>> = None;
    let _http = if config.http.listen.is_empty() {
        None
    } else {
        let mut probe = http::Probe::new(
            config,
            stages,
            bus.clone(),
            counters.clone(),
            shutdown.clone(),
        )?;
        let watched = bus.clone();
        probe
            .metrics
            .watch_rocksdb("bus", move || watched.rocksdb_stats());
        if let Some(store) = resolver_store.clone() {
            probe
                .metrics
                .watch_rocksdb("resolver", move || Some(store.rocksdb_stats()));
        }
        if let Some(store) = activation_store.clone() {
            probe
                .metrics
                .watch_rocksdb("activation", move || Some(store.rocksdb_stats()));
        }
        // Only a process with API routes warns about missing API keys.
        let auth = (stages.resolve || stages.activate).then(|| api::Auth::new(config));
        if let (Some(store), Some(auth)) = (&resolver_store, &auth) {
            let tier = read_tier::ReadTier::new(config.http.read_tier_mb).map(Arc::new);
            if let Some(tier) = &tier {
                probe.metrics.watch_read_tier(tier.clone())?;
            }
            let read: Arc<dyn cdp_resolver::GraphStore> = match &tier {
                // The resolver writes through the watched store, so the tier sees its commits.
                Some(tier) => Arc::new(cdp_resolver::lookup::WatchedStore::new(
                    store.clone(),
                    tier.changes().clone(),
                )),
                None => store.clone(),
            };
            watched_store = Some(read.clone());
            probe.profiles = Some(Arc::new(api::ProfileApi::new(
                config,
                auth.clone(),
                read,
                tier,
                bus.as_ref(),
            )?));
        }
        if let (Some(store), Some(activation), Some(auth)) = (&activation_store, &activation, auth)
        {
            probe.cohorts = Some(Arc::new(api::CohortApi::new(
                auth,
                activation.clone(),
                store.clone(),
            )));
        }
        let server = http::start(&config.http.listen, probe)?;
        eprintln!("http listening on {}", server.addr);
        Some(server)
    };
    // Scheduled snapshots, where the resolver runs; stopped when the stages stop.
    let snapshots = (stages.resolve && !config.snapshot.out.is_empty()).then(|| {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = snapshot_schedule::spawn(
            pipeline::resolver_dir(data),
            pipeline::activation_dir(data),
            PathBuf::from(&config.snapshot.out),
            Duration::from_secs(config.snapshot.every_secs),
            stop.clone(),
        );
        (stop, thread)
    });
    let result = pipeline::run(
        config,
        data,
        bus,
        stages,
        counters.clone(),
        shutdown,
        pipeline::RunOptions {
            until_drained,
            resolver_store: watched_store.or_else(|| resolver_store.map(|s| s as _)),
            activation_store,
            activation,
            reload: Some(pipeline::Reload {
                requested: reload_flag()?,
                config_path: config_path.map(PathBuf::from),
            }),
            feed,
        },
    );
    if let Some((stop, thread)) = snapshots {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = thread.join();
    }
    result?;
    if until_drained {
        eprint!("{}", counters.table(stages));
        exit_without_teardown(held);
    }
    Ok(())
}

/// Ends a finished run at once. Every stage has stopped and every write it made has landed
/// (each RocksDB write is in its log), so nothing is left to do but free memory: the bus's
/// newest records, the memtables and caches of three databases. Dropped piece by piece that
/// took tens of milliseconds; the operating system takes it back whole. A database left
/// without closing is opened next time as after any stop: from its log.
fn exit_without_teardown<T>(held: T) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::mem::forget(held);
    std::process::exit(0)
}

/// Set on SIGHUP: re-read the config file and swap activation's cohorts and destinations.
fn reload_flag() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, flag.clone())?;
    Ok(flag)
}
