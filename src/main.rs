//! The `cdp` command line. Parsing and dispatch only: the work is done by the crates.

mod config;
mod demo;
mod eval;
mod pipeline;
mod topic;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use config::Config;
use pipeline::Stages;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

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
    },
    /// Run only the ingest stage.
    Ingest,
    /// Run only the resolver stage.
    Resolve,
    /// Run only the activation stage.
    Activate,
    /// Generate a workload, run the pipeline until drained, and report.
    Demo {
        #[arg(long, default_value_t = 5000)]
        profiles: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Look up unified profiles.
    Profile {
        #[command(subcommand)]
        command: ProfileCommand,
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
        /// Stop after this long without new records.
        #[arg(long, default_value_t = 1000)]
        idle_ms: u64,
    },
}

fn main() {
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

/// A flag set on SIGINT/SIGTERM: stages finish their batch, commit, and stop.
fn shutdown_flag() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, flag.clone())?;
    }
    Ok(flag)
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
        } => {
            let bus = pipeline::open_bus(&config, &data)?;
            pipeline::create_topics(bus.as_ref(), &config)?;
            if let Some(dir) = input {
                for (source, n) in pipeline::feed_inputs(bus.as_ref(), &config, &dir)? {
                    eprintln!("fed {n} {source} records");
                }
            }
            let counters = Arc::new(pipeline::Counters::default());
            pipeline::run(
                &config,
                &data,
                bus,
                Stages::ALL,
                counters,
                shutdown_flag()?,
                until_drained,
            )?;
        }
        Command::Ingest | Command::Resolve | Command::Activate => {
            let stages = Stages {
                ingest: matches!(cli.command, Command::Ingest),
                resolve: matches!(cli.command, Command::Resolve),
                activate: matches!(cli.command, Command::Activate),
            };
            let bus = pipeline::open_bus(&config, &data)?;
            pipeline::create_topics(bus.as_ref(), &config)?;
            let counters = Arc::new(pipeline::Counters::default());
            pipeline::run(
                &config,
                &data,
                bus,
                stages,
                counters,
                shutdown_flag()?,
                false,
            )?;
        }
        Command::Demo { profiles, seed } => {
            let opts = demo::DemoOptions {
                profiles,
                seed,
                data,
            };
            demo::run(&config, &opts, shutdown_flag()?)?;
        }
        Command::Profile {
            command: ProfileCommand::Get { identifier, tenant },
        } => {
            let tenant = tenant.unwrap_or_else(|| config.ingest.default_tenant.clone());
            let id = parse_identifier(&identifier, &config)?;
            let dir = pipeline::resolver_dir(&data);
            let store = cdp_resolver::RocksStore::open(&dir)
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

/// `KIND:VALUE` as users type it: raw emails and phones are normalised the way ingest does;
/// `canonical_id:cdp_…` names a profile directly.
fn parse_identifier(text: &str, config: &Config) -> Result<cdp_proto::Identifier> {
    let (kind, value) = text
        .split_once(':')
        .context("identifier must be KIND:VALUE, e.g. email_sha256:person@example.com")?;
    if kind == "canonical_id" {
        return Ok(cdp_proto::Identifier::new(
            cdp_proto::IdentifierKind::Custom("canonical_id".into()),
            value,
        ));
    }
    let kind: cdp_proto::IdentifierKind = kind.parse()?;
    let opts = cdp_proto::NormalizeOptions::with_region(&config.ingest.default_phone_region)?;
    Ok(cdp_proto::normalize(kind, value, &opts)?)
}
