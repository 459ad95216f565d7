//! `cdp graph`: operating on the identity graph. `explain` reads the resolver's state (a
//! read-only view works while a pipeline runs). `forget` and `unmerge` change the graph, and the
//! resolver is the single writer of its state, so they are commands put on the commands topic
//! that the resolver applies in order with its signals; on the embedded bus, when no other
//! process holds the data directory, this process then runs the resolver until the command is
//! applied and prints what it did.

use crate::config::{Backend, Config};
use crate::pipeline;
use anyhow::{bail, Context, Result};
use cdp_bus::OutRecord;
use cdp_resolver::command::{
    CommandOp, CommandOutcome, CommandStatus, GraphCommand, Target, UnmergePart,
};
use cdp_resolver::stage::{command_outcome, ResolverCounters};
use cdp_resolver::RocksStore;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// `KIND:VALUE` as users type it: raw emails and phones are normalised the way ingest does;
/// `canonical_id:cdp_…` names a profile directly.
pub fn parse_identifier(text: &str, config: &Config) -> Result<cdp_proto::Identifier> {
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

/// `KIND:VALUE` (raw emails and phones normalised as ingest does), `canonical_id:cdp_…`, or a
/// bare `cdp_…` canonical id.
pub fn parse_target(text: &str, config: &Config) -> Result<Target> {
    if text.starts_with("cdp_") && !text.contains(':') {
        return Ok(Target::CanonicalId(text.to_string()));
    }
    let id = parse_identifier(text, config)?;
    Ok(if id.kind.as_str() == "canonical_id" {
        Target::CanonicalId(id.value)
    } else {
        Target::Identifier(id)
    })
}

/// Prints the explanation of the profile `target` names, as JSON.
pub fn explain(config: &Config, data: &Path, tenant: &str, target: &str) -> Result<()> {
    let target = parse_target(target, config)?;
    let store = open_for_reading(data)?;
    match cdp_resolver::explain::explain(&store, tenant, &target)? {
        Some(e) => print_json(&e)?,
        None => bail!(
            "no profile holds {} in tenant {tenant:?}",
            describe(&target)
        ),
    }
    Ok(())
}

pub fn forget(
    config: &Config,
    data: &Path,
    tenant: &str,
    target: &str,
    shutdown: &AtomicBool,
) -> Result<()> {
    let target = parse_target(target, config)?;
    submit(config, data, tenant, CommandOp::Forget { target }, shutdown)
}

pub fn unmerge(
    config: &Config,
    data: &Path,
    tenant: &str,
    canonical_id: &str,
    link: Option<u64>,
    identifier: Option<&str>,
    shutdown: &AtomicBool,
) -> Result<()> {
    let part = match (link, identifier) {
        (Some(id), None) => UnmergePart::Link(id),
        (None, Some(text)) => match parse_target(text, config)? {
            Target::Identifier(id) => UnmergePart::Identifier(id),
            Target::CanonicalId(_) => bail!("--identifier takes KIND:VALUE, not a canonical id"),
        },
        _ => bail!("give exactly one of --link ID or --identifier KIND:VALUE"),
    };
    let op = CommandOp::Unmerge {
        canonical_id: canonical_id.to_string(),
        part,
    };
    submit(config, data, tenant, op, shutdown)
}

/// Pretty JSON on stdout; a closed pipe (`| head`) is an error, not a panic.
fn print_json(value: &impl serde::Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Recomputes the tenant's partition from the link log under the configured policy and prints
/// the difference; with `apply`, writes it and publishes the resulting changes.
pub fn rebuild(
    config: &Config,
    data: &Path,
    tenant: &str,
    apply: bool,
    examples: usize,
) -> Result<()> {
    let dir = pipeline::resolver_dir(data);
    if !dir.exists() {
        bail!(
            "no resolver state in {} (run `cdp run` or `cdp demo` first, or pass --data)",
            dir.display()
        );
    }
    let store = RocksStore::open_with(&dir, &config.resolver.storage).with_context(|| {
        format!(
            "the resolver state in {} is in use by another cdp process: rebuild runs offline, \
             stop that process first",
            dir.display()
        )
    })?;
    let resolver = cdp_resolver::Resolver::new(config.resolver.policy.clone());
    let options = cdp_resolver::rebuild::RebuildOptions {
        tenant: tenant.to_string(),
        apply,
        examples,
        at: chrono::Utc::now(),
    };
    let report = cdp_resolver::rebuild::rebuild(&store, &resolver, &config.resolver, &options)?;
    if apply {
        // The changes wait in the resolver's outbox; publish them now rather than at its next start.
        let bus = pipeline::open_bus(config, data)?;
        let mut producer = bus.producer()?;
        let mut outbox = cdp_resolver::outbox::OutboxCursor::default();
        cdp_resolver::outbox::publish_outbox(&store, producer.as_mut(), &mut outbox)?;
    }
    print_json(&report)
}

fn describe(target: &Target) -> String {
    match target {
        Target::Identifier(id) => id.to_string(),
        Target::CanonicalId(id) => id.clone(),
    }
}

fn open_for_reading(data: &Path) -> Result<RocksStore> {
    let dir = pipeline::resolver_dir(data);
    if !dir.exists() {
        bail!(
            "no resolver state in {} (run `cdp run` or `cdp demo` first, or pass --data)",
            dir.display()
        );
    }
    RocksStore::open_read_only(&dir)
        .with_context(|| format!("opening resolver state in {} read-only", dir.display()))
}

/// A command with a fresh id (the resolver applies an id once).
pub fn new_command(tenant: &str, op: CommandOp) -> GraphCommand {
    let now = chrono::Utc::now();
    GraphCommand {
        id: format!(
            "cmd-{}-{:08x}",
            now.timestamp_millis(),
            rand::random::<u32>()
        ),
        tenant: tenant.to_string(),
        requested_at: now,
        op,
    }
}

/// Produces `op` on the commands topic; on the embedded bus, applies it here and reports.
fn submit(
    config: &Config,
    data: &Path,
    tenant: &str,
    op: CommandOp,
    shutdown: &AtomicBool,
) -> Result<()> {
    let command = new_command(tenant, op);
    let bus = match config.bus.backend {
        Backend::Embedded => pipeline::open_bus(config, data).with_context(|| {
            format!(
                "the data directory {} is in use by another cdp process (the embedded bus allows \
                 one): stop it, run this command again, then restart it",
                data.display()
            )
        })?,
        Backend::Kafka => pipeline::open_bus(config, data)?,
    };
    let mut producer = bus.producer()?;
    let value = serde_json::to_vec(&command)?;
    producer.send(OutRecord::new(
        config.resolver.commands_topic.clone(),
        tenant.as_bytes(),
        value,
    ))?;
    producer.flush()?;
    if config.bus.backend == Backend::Kafka {
        // The resolver that owns this tenant's state applies it; running one here would join its
        // consumer group and take partitions away from it.
        println!(
            "{}",
            serde_json::json!({"command_id": command.id, "status": "queued",
                "topic": config.resolver.commands_topic})
        );
        return Ok(());
    }

    eprintln!(
        "command {} queued; applying it here (input queued before it is applied first)",
        command.id
    );
    let dir = pipeline::resolver_dir(data);
    std::fs::create_dir_all(&dir)?;
    let store = RocksStore::open_with(&dir, &config.resolver.storage)
        .with_context(|| format!("opening resolver state in {}", dir.display()))?;
    let stop = AtomicBool::new(false);
    let counters = ResolverCounters::default();
    let outcome = std::thread::scope(|scope| -> Result<Option<CommandOutcome>> {
        let resolver = scope.spawn(|| {
            cdp_resolver::stage::run(bus.as_ref(), &store, &config.resolver, &counters, &stop)
        });
        // Everything queued before the command is applied first, in order: that is the point.
        let outcome = loop {
            if let Some(o) = command_outcome(&store, &command.id)? {
                break Some(o);
            }
            if resolver.is_finished() || shutdown.load(Ordering::Relaxed) {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        stop.store(true, Ordering::Relaxed);
        match resolver.join() {
            Ok(r) => r.context("resolver stage failed")?,
            Err(_) => bail!("resolver stage panicked"),
        }
        Ok(outcome)
    })?;
    let Some(outcome) = outcome else {
        bail!(
            "interrupted before command {} was applied; it stays queued and the resolver applies \
             it when it next runs",
            command.id
        );
    };
    print_json(&outcome)?;
    match outcome.status {
        CommandStatus::Applied => Ok(()),
        CommandStatus::NotFound if outcome.identifiers_erased > 0 => Ok(()),
        CommandStatus::NotFound | CommandStatus::Rejected => bail!(
            "{} {}: {}",
            outcome.op,
            if outcome.status == CommandStatus::Rejected {
                "rejected"
            } else {
                "found nothing"
            },
            outcome.detail.unwrap_or_default()
        ),
    }
}
