//! `cdp snapshot` end to end: a small pipeline runs until drained, the snapshot is written, and
//! DuckDB reads the Parquet tables back: row counts equal what the stores hold (counted through
//! the resolver's and activation's own read paths, not the export), and identifiers and cohort
//! membership join profiles without orphan canonical ids.
//!
//! DuckDB comes from scripts/install-duckdb.sh (`make test` runs it) in the Python venv at
//! $HOME/.cache/cdp/venv (or $CDP_CHART_VENV). Without it the DuckDB test is skipped with a
//! message, unless CDP_REQUIRE_HELM=1 (the venv's convention, see tests/deploy.rs), which turns
//! its absence into a failure.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use support::{command, generate_seeded, stdout_of};

/// The venv's Python when it can import duckdb, or why not.
fn duckdb_python() -> Result<PathBuf, String> {
    support::venv_python("duckdb")
}

/// Counts and joins over the snapshot in `dir`, as DuckDB sees them, printed as one JSON object.
const QUERIES: &str = r#"
import duckdb, json, sys
con = duckdb.connect()
def t(name):
    return f"read_parquet('{sys.argv[1]}/dt=*/{name}.parquet', hive_partitioning = true)"
def one(sql):
    return con.execute(sql).fetchone()[0]
out = {"rows": {}, "columns": {}}
for name in ["profiles", "identifiers", "merges", "refused_merges", "cohort_membership"]:
    out["rows"][name] = one(f"select count(*) from {t(name)}")
    out["columns"][name] = [r[0] for r in con.execute(f"describe select * from {t(name)}").fetchall()]
for name in ["identifiers", "merges", "cohort_membership"]:
    out[name + "_joined"] = one(
        f"select count(*) from {t(name)} x join {t('profiles')} p using (canonical_id)")
    out[name + "_orphans"] = one(
        f"select count(*) from {t(name)} x anti join {t('profiles')} p using (canonical_id)")
out["identifier_sum"] = one(f"select sum(identifier_count) from {t('profiles')}")
out["stages"] = one(f"select count(distinct lifecycle_stage) from {t('profiles')}")
print(json.dumps(out))
"#;

/// A drained pipeline over a small workload, in `dir/data`: this one has merges, refused merges
/// (shared devices) and cohort members.
fn drained_pipeline(dir: &Path) -> PathBuf {
    let input = dir.join("in");
    generate_seeded(&input, 300, 7);
    let data = dir.join("data");
    support::run_until_drained(&data, &input);
    data
}

/// Rows each table must have, counted through the stores' own read paths.
struct Expected {
    profiles: usize,
    identifiers: usize,
    merges: usize,
    refused: usize,
    members: usize,
}

fn expected(data: &Path) -> Expected {
    let resolver = cdp_resolver::RocksStore::open_read_only(&data.join("resolver")).unwrap();
    let profiles = cdp_resolver::lookup::profiles(&resolver, "default").unwrap();
    assert_eq!(
        cdp_resolver::lookup::count_profiles(&resolver).unwrap(),
        profiles.len() as u64,
        "the workload has one tenant"
    );
    let mut refused = 0;
    for p in &profiles {
        let target = cdp_resolver::command::Target::CanonicalId(p.canonical_id.clone());
        let e = cdp_resolver::explain::explain(&resolver, "default", &target)
            .unwrap()
            .unwrap();
        refused += e.refused.len();
    }
    let activation =
        cdp_activation::membership::MembershipStore::open_read_only(&data.join("activation"))
            .unwrap();
    Expected {
        profiles: profiles.len(),
        identifiers: profiles.iter().map(|p| p.identifiers.len()).sum(),
        merges: profiles.iter().map(|p| p.merge_history.len()).sum(),
        refused,
        members: activation.members().unwrap().len(),
    }
}

#[test]
fn duckdb_reads_the_snapshot_with_the_stores_row_counts_and_joins() {
    let python = match duckdb_python() {
        Ok(p) => p,
        Err(why) if std::env::var("CDP_REQUIRE_HELM").as_deref() == Ok("1") => {
            panic!(
                "CDP_REQUIRE_HELM=1 but duckdb is missing ({why}); run scripts/install-duckdb.sh"
            )
        }
        Err(why) => {
            eprintln!("skipping the DuckDB snapshot check: {why}; run scripts/install-duckdb.sh");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let data = drained_pipeline(dir.path());
    let out = dir.path().join("snapshots");
    let printed = stdout_of(command(&data, &["snapshot", "--out"]).arg(&out));
    assert_eq!(printed.lines().count(), 5, "one line per table:\n{printed}");

    let result = Command::new(&python)
        .args(["-c", QUERIES])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        result.status.success(),
        "duckdb: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&result.stdout).unwrap();
    let want = expected(&data);
    // Each end of a refused link is listed in its own profile's explanation.
    let refused_links = got["rows"]["refused_merges"].as_u64().unwrap() as usize;
    assert!(want.refused >= refused_links && want.refused <= 2 * refused_links);
    for (table, rows) in [
        ("profiles", want.profiles),
        ("identifiers", want.identifiers),
        ("merges", want.merges),
        ("cohort_membership", want.members),
    ] {
        assert_eq!(got["rows"][table], rows, "{table} rows: {got}");
    }
    assert!(
        want.profiles > 0 && want.merges > 0 && want.members > 0,
        "{got}"
    );
    assert!(refused_links > 0, "shared devices must be refused: {got}");
    assert_eq!(got["identifier_sum"], want.identifiers, "{got}");
    assert!(got["stages"].as_u64().unwrap() > 1, "{got}");
    for table in ["identifiers", "merges", "cohort_membership"] {
        assert_eq!(got[format!("{table}_orphans")], 0, "{table}: {got}");
        assert_eq!(
            got[format!("{table}_joined")],
            got["rows"][table],
            "{table}: {got}"
        );
    }
    let profile_columns = got["columns"]["profiles"].as_array().unwrap();
    for column in ["canonical_id", "lifecycle_stage", "traits", "version", "dt"] {
        assert!(
            profile_columns.iter().any(|c| c == column),
            "{column} not in {profile_columns:?}"
        );
    }
}

#[test]
fn a_snapshot_is_taken_while_the_stores_are_held_and_replaces_the_days_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = drained_pipeline(dir.path());
    let want = expected(&data);
    // A writer holds the resolver's store, as a running pipeline does.
    let held = cdp_resolver::RocksStore::open(&data.join("resolver")).unwrap();
    let out = dir.path().join("snapshots");
    for _ in 0..2 {
        let printed = stdout_of(command(&data, &["snapshot", "--out"]).arg(&out));
        let profiles = printed
            .lines()
            .find(|l| l.ends_with("profiles.parquet"))
            .unwrap_or_else(|| panic!("no profiles line in\n{printed}"));
        assert!(
            profiles.starts_with(&format!("profiles: {} rows, ", want.profiles)),
            "{profiles}"
        );
    }
    drop(held);
    // One `dt=` partition per day (two if the runs straddled midnight UTC), holding only
    // finished tables: the second run replaced the first's files, no temporary file is left.
    for day in std::fs::read_dir(&out).unwrap() {
        let day = day.unwrap().path();
        assert!(day
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("dt="));
        let mut files: Vec<String> = std::fs::read_dir(&day)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(
            files,
            [
                "cohort_membership.parquet",
                "identifiers.parquet",
                "merges.parquet",
                "profiles.parquet",
                "refused_merges.parquet"
            ]
        );
    }
}

#[test]
fn a_data_directory_without_state_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = command(dir.path(), &["snapshot", "--out"])
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("opening resolver state"), "{err}");
}

#[test]
fn the_resolver_writes_snapshots_on_a_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    generate_seeded(&input, 100, 3);
    let out = dir.path().join("snapshots");
    let config = dir.path().join("cdp.toml");
    std::fs::write(
        &config,
        format!(
            "[snapshot]\nout = {:?}\nevery_secs = 1\n",
            out.display().to_string()
        ),
    )
    .unwrap();
    let run = support::Running::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
        &input,
    );
    run.wait_ready();
    let tables = [
        "profiles",
        "identifiers",
        "merges",
        "refused_merges",
        "cohort_membership",
    ];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let day = loop {
        let day = std::fs::read_dir(&out).ok().and_then(|entries| {
            entries.filter_map(Result::ok).map(|e| e.path()).find(|p| {
                tables
                    .iter()
                    .all(|t| p.join(format!("{t}.parquet")).exists())
            })
        });
        if let Some(day) = day {
            break day;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no scheduled snapshot in {}",
            out.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(day
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("dt="));
    run.signal("TERM");
    let mut run = run;
    assert!(run.child.wait().unwrap().success(), "exits 0 on SIGTERM");
    // Stopping waited for a snapshot in progress: every file is whole, none half-written.
    for entry in std::fs::read_dir(&day).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!name.starts_with('.'), "a temporary file is left: {name}");
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1"),
            "{name} is a whole Parquet file"
        );
    }
}
