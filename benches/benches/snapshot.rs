//! `cdp snapshot` at scale: builds a resolver store of N profiles, then in the same run times the
//! Parquet snapshot (`cdp::snapshot`, the code `cdp snapshot` runs) against a plain
//! JSON-lines export of the same profiles (one `Profile` as JSON per line), both read from the
//! same read-only view. Prints seconds, bytes and profiles/s of each.
//!
//! The store holds real profiles: a generated workload of a few thousand people goes through
//! ingest and the resolver, and its profiles are cloned with fresh identifiers and canonical ids
//! (union-find nodes, parents and canonical index included) until there are N. The link log is
//! not cloned, so the refused-merges table is empty here.
//!
//! `cargo bench -p cdp-benches --bench snapshot` (profiles: CDP_BENCH_PROFILES, default
//! 100000; scratch space: CDP_BENCH_DIR, default the system temp dir, removed at the end).

use cdp::snapshot;
use cdp_benches::{peak_rss_bytes, raw_records, signals};
use cdp_ingest::IngestConfig;
use cdp_proto::{Identifier, Profile};
use cdp_resolver::export::ExportView;
use cdp_resolver::txn::Txn;
use cdp_resolver::{stage, Resolver, ResolverConfig, RocksStore};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Profiles committed per write while building the store.
const BUILD_BATCH: usize = 10_000;

/// Real profiles: a small workload resolved in a scratch store.
fn templates(dir: &Path) -> Vec<Profile> {
    let ingest = IngestConfig::default();
    let config = ResolverConfig::default();
    let raw = raw_records(&ingest, 3000, 42).expect("workload generates");
    let signals = signals(&ingest, &raw);
    let store = RocksStore::open(&dir.join("templates")).expect("scratch store opens");
    let resolver = Resolver::new(config.policy.clone());
    for chunk in signals.chunks(config.batch_size) {
        stage::apply_records(&resolver, &store, &config, chunk).expect("batch applies");
    }
    cdp_resolver::lookup::profiles(&store, &ingest.default_tenant).expect("profiles read")
}

/// Copy `n` of `template`: every identifier and canonical id made unique by the suffix.
fn clone_profile(template: &Profile, n: usize) -> Profile {
    let mut p = template.clone();
    let rename = |id: &str| format!("{id}_{n}");
    for id in &mut p.identifiers {
        id.value = format!("{}-{n}", id.value);
    }
    p.canonical_id = rename(&p.canonical_id);
    p.aliases = p.aliases.iter().map(|a| rename(a)).collect();
    for m in &mut p.merge_history {
        m.from = rename(&m.from);
        m.into = rename(&m.into);
    }
    p
}

/// A resolver store of `profiles` profiles in `dir`, built as the resolver lays it out.
fn build_store(dir: &Path, templates: &[Profile], profiles: usize) {
    let store = RocksStore::open(dir).expect("store opens");
    let mut made = 0;
    while made < profiles {
        let mut txn = Txn::begin(&store).expect("txn begins");
        for n in made..(made + BUILD_BATCH).min(profiles) {
            let p = clone_profile(&templates[n % templates.len()], n);
            let ids: Vec<Identifier> = p.identifiers.clone();
            let root = txn.create_node(&p.tenant, &ids[0]);
            for id in &ids[1..] {
                let node = txn.create_node(&p.tenant, id);
                txn.set_parent(node, Some(root));
            }
            txn.set_canonical(&p.tenant, &p.canonical_id, Some(root));
            txn.put_profile(root, Some(p));
        }
        txn.commit().expect("batch commits");
        made = (made + BUILD_BATCH).min(profiles);
    }
    drop(store);
    // A long-running resolver holds almost everything in table files; flushing the memtables
    // keeps both exports from paying to replay the whole build from the WAL on open.
    let names = cdp_resolver::store::Cf::ALL.map(|cf| cf.name());
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir, names).expect("store reopens");
    for name in names {
        db.flush_cf(&db.cf_handle(name).expect("opened above"))
            .expect("memtable flushes");
    }
}

/// CPU time this process has used so far (every thread), from /proc/self/stat.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // utime and stime are the 14th and 15th fields, in clock ticks (USER_HZ, 100 on Linux),
    // counted from the command name's closing parenthesis (the name may hold spaces).
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Wall and CPU seconds of `f`.
fn timed<T>(f: impl FnOnce() -> T) -> (T, f64, Option<f64>) {
    let (t, cpu) = (Instant::now(), process_cpu());
    let out = f();
    let cpu = process_cpu()
        .zip(cpu)
        .map(|(end, start)| (end - start).as_secs_f64());
    (out, t.elapsed().as_secs_f64(), cpu)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn main() {
    // `cargo bench` passes harness flags (e.g. --bench); this tool takes none.
    let profiles: usize = std::env::var("CDP_BENCH_PROFILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let scratch = match std::env::var_os("CDP_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .expect("scratch dir");
    let data = scratch.path();

    let t = Instant::now();
    let templates = templates(data);
    assert!(!templates.is_empty(), "the workload resolved to no profile");
    let resolver_dir = data.join("resolver");
    build_store(&resolver_dir, &templates, profiles);
    // Reopened read-only below: the snapshot's view of a store nothing else writes.
    let identifiers: usize = templates.iter().map(|p| p.identifiers.len()).sum();
    println!(
        "store: {profiles} profiles cloned from {} resolved ones ({:.2} identifiers each), \
         {:.1} MB of RocksDB files, built in {:.1}s",
        templates.len(),
        identifiers as f64 / templates.len() as f64,
        dir_bytes(&resolver_dir) as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    let (summary, parquet_secs, parquet_cpu) = timed(|| {
        snapshot::write(&snapshot::SnapshotOptions {
            resolver_dir: resolver_dir.clone(),
            activation_dir: data.join("activation"),
            out: data.join("parquet"),
            at: chrono::Utc::now(),
        })
        .expect("snapshot writes")
    });
    assert_eq!(
        summary.tables[0].rows as usize, profiles,
        "every profile is in the snapshot"
    );

    let jsonl = data.join("profiles.jsonl");
    let (lines, json_secs, json_cpu) = timed(|| {
        let view = ExportView::open(&resolver_dir).expect("view opens");
        let file = std::fs::File::create(&jsonl).expect("jsonl creates");
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        let mut lines = 0usize;
        for p in view.profiles() {
            serde_json::to_writer(&mut out, &p.expect("profile decodes")).expect("json writes");
            out.write_all(b"\n").expect("json writes");
            lines += 1;
        }
        out.into_inner()
            .expect("json flushes")
            .sync_all()
            .expect("json syncs");
        lines
    });
    let json_bytes = std::fs::metadata(&jsonl).expect("jsonl exists").len();
    assert_eq!(lines, profiles);

    println!();
    // On a shared machine wall time says little: the CPU seconds (every thread) are the cost.
    println!(
        "{:<26} {:>9} {:>9} {:>10} {:>14} {:>12}",
        "export", "wall s", "cpu s", "MB", "profiles/cpu-s", "bytes/profile"
    );
    let row = |name: &str, secs: f64, cpu: Option<f64>, bytes: u64| {
        let cpu_s = cpu.map_or("-".to_string(), |c| format!("{c:.2}"));
        let rate = cpu
            .filter(|c| *c > 0.0)
            .map_or("-".to_string(), |c| format!("{:.0}", profiles as f64 / c));
        println!(
            "{name:<26} {secs:>9.2} {cpu_s:>9} {:>10.1} {rate:>14} {:>12.0}",
            bytes as f64 / 1e6,
            bytes as f64 / profiles as f64
        );
    };
    row(
        "parquet (5 tables, snappy)",
        parquet_secs,
        parquet_cpu,
        summary.bytes(),
    );
    row("json lines (profiles)", json_secs, json_cpu, json_bytes);
    for t in &summary.tables {
        println!(
            "  {:<24} {:>10} rows {:>10.1} MB",
            t.table.name(),
            t.rows,
            t.bytes as f64 / 1e6
        );
    }
    if let Some(rss) = peak_rss_bytes() {
        println!("peak RSS {:.0} MB", rss as f64 / 1e6);
    }
}
