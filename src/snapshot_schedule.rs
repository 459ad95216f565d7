//! Snapshots on a schedule: the process that runs the resolver writes what `cdp snapshot`
//! writes, every `snapshot.every_secs`, into `snapshot.out`, while the stages keep running.

use crate::snapshot::{write, SnapshotOptions};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Writes a snapshot every `every` until `stop` is set, on a thread of its own; a failed
/// snapshot is logged and the next one is tried on time.
pub fn spawn(
    resolver_dir: PathBuf,
    activation_dir: PathBuf,
    out: PathBuf,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let tick = Duration::from_millis(200).min(every);
        let mut due = Instant::now() + every;
        while !stop.load(Ordering::Relaxed) {
            if Instant::now() < due {
                std::thread::sleep(tick);
                continue;
            }
            due += every;
            let options = SnapshotOptions {
                resolver_dir: resolver_dir.clone(),
                activation_dir: activation_dir.clone(),
                out: out.clone(),
                at: chrono::Utc::now(),
            };
            match write(&options) {
                Ok(summary) => {
                    tracing::info!(tables = summary.tables.len(), "scheduled snapshot written")
                }
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "scheduled snapshot failed"),
            }
        }
    })
}
