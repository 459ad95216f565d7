//! A long-running `cdp run` as an operator sees it: health, readiness once caught up, Prometheus
//! metrics that add up to the input, and a clean exit on SIGTERM.

mod support;

use std::time::{Duration, Instant};
use support::{cdp, generate, get, Running};

/// The value of an unlabelled sample in a Prometheus text exposition.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing in\n{metrics}"))
}

#[test]
fn health_readiness_metrics_and_a_clean_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("workload");
    generate(&input, 120);
    let mut run = Running::start(&dir.path().join("data"), &[], &input);
    let fed = support::records_in(&input);
    assert!(fed > 0, "a workload to feed");

    let r = get(run.addr, "/healthz");
    assert_eq!((r.status, r.body.trim()), (200, "ok"));

    // Ready only once every stage has caught up (ready_max_lag = 0 here).
    let ready = run.wait_ready();
    for stage in ["ingest", "resolver", "activation"] {
        assert_eq!(ready["stages"][stage]["lag"], 0, "{ready}");
    }

    // Counters are bumped just after each commit: give the last batch a moment to be counted.
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let r = get(run.addr, "/metrics");
        assert_eq!(r.status, 200);
        let m = r.body;
        let settled = sample(&m, "cdp_ingest_records_in_total") == fed as f64
            && sample(&m, "cdp_resolver_records_in_total")
                == sample(&m, "cdp_ingest_records_out_total");
        if settled || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        sample(&metrics, "cdp_ingest_records_in_total"),
        fed as f64,
        "every raw record counted once"
    );
    let by_outcome: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("cdp_ingest_records_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(
        by_outcome, fed as f64,
        "records by source and outcome add up"
    );
    assert!(metrics.contains("cdp_ingest_records_total{outcome=\"accepted\",source=\"web\"}"));
    let signals = sample(&metrics, "cdp_ingest_records_out_total");
    assert_eq!(sample(&metrics, "cdp_resolver_records_in_total"), signals);
    assert!(sample(&metrics, "cdp_resolver_merges_total") > 0.0);
    assert!(metrics.contains("cdp_activation_cohort_changes_total{change=\"entered\"}"));
    assert!(
        !metrics.contains('@'),
        "no email-like label or value in metrics"
    );
    // Every database the process holds reports its RocksDB figures, and what was written sits
    // either in memtables or in table files.
    for store in ["bus", "resolver", "activation"] {
        let of = |name: &str| sample(&metrics, &format!("{name}{{store=\"{store}\"}}"));
        // Present (`sample` fails on a missing one); their values depend on RocksDB's timing.
        for name in [
            "cdp_rocksdb_live_data_size_bytes",
            "cdp_rocksdb_pending_compaction_bytes",
            "cdp_rocksdb_compactions_running",
        ] {
            of(name);
        }
        let held = of("cdp_rocksdb_memtable_bytes") + of("cdp_rocksdb_sst_files_size_bytes");
        assert!(held > 0.0, "{store} holds no bytes:\n{metrics}");
    }

    assert_eq!(get(run.addr, "/nope").status, 404);

    run.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(status) = run.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit within 60 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(exit.success(), "SIGTERM exits cleanly: {exit:?}");
}

#[test]
fn a_taken_port_fails_the_command_with_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = cdp(dir.path())
        .env("CDP_HTTP__LISTEN", &addr)
        .arg("run")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&addr), "{stderr}");
}

#[test]
fn sighup_reloads_cohorts_and_refuses_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("workload");
    generate(&input, 30);
    let config = dir.path().join("cdp.toml");
    std::fs::write(&config, "").unwrap();
    let run = Running::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
        &input,
    );
    run.wait_ready();

    let defaults = cdp(dir.path())
        .args(["config", "--print-default"])
        .output()
        .unwrap();
    let mut text = String::from_utf8(defaults.stdout).unwrap();
    text.push_str("\n[[activation.cohorts]]\nkey = \"everyone\"\nexpression = \"true\"\n");
    std::fs::write(&config, &text).unwrap();
    run.signal("HUP");
    let line = run.wait_line("reloaded activation");
    assert!(line.contains("5 cohorts"), "{line}");

    std::fs::write(
        &config,
        "[[activation.cohorts]]\nkey = \"broken\"\nexpression = \"profile.x ==\"\n",
    )
    .unwrap();
    run.signal("HUP");
    let line = run.wait_line("config reload refused");
    assert!(
        line.contains("broken"),
        "the error names the cohort: {line}"
    );
    assert_eq!(get(run.addr, "/healthz").status, 200, "still running");
}
