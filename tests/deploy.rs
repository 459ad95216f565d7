//! The Kubernetes deployment (deploy/: Helm chart, Strimzi topics, Dockerfile) checked against the
//! real binary: scripts/check-chart.py lints and renders the chart with Helm's engine, validates
//! every manifest against the Kubernetes schemas and asserts the wiring; this test hands it the
//! topics the binary uses by default and the binary itself, which must accept the rendered config.
//!
//! The pods' probes and the Grafana dashboard are checked against the binary too: each stage
//! process serves /healthz, /readyz and /metrics on the address `CDP_HTTP__LISTEN` gives it (the
//! collector: `CDP_COLLECT__LISTEN`, which the chart sets to the same port), turns ready, exits 0
//! on SIGTERM, and exposes every metric the dashboard queries.
//!
//! The tools come from scripts/install-chart-tools.sh (`make test` runs it). Without them the test
//! is skipped with a message, unless CDP_REQUIRE_HELM=1, which turns their absence into a failure.

mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::Duration;

/// Every topic the default config names, as `section.key=name`: its `*_topic` keys and the
/// `topic` of each destination, at any depth (array items as `[i]`).
fn default_topics() -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_cdp"))
        .args(["config", "--print-default"])
        .output()
        .expect("cdp runs");
    assert!(
        out.status.success(),
        "cdp config --print-default failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("the default config is UTF-8");
    let config: toml::Table = toml::from_str(&text).expect("the default config is TOML");
    let mut topics = Vec::new();
    collect_topics(&toml::Value::Table(config), "", &mut topics);
    topics
}

fn collect_topics(value: &toml::Value, path: &str, out: &mut Vec<String>) {
    match value {
        toml::Value::Table(table) => {
            for (key, v) in table {
                let p = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match v {
                    toml::Value::String(name) if key == "topic" || key.ends_with("_topic") => {
                        out.push(format!("{p}={name}"))
                    }
                    _ => collect_topics(v, &p, out),
                }
            }
        }
        toml::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                collect_topics(v, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// The venv's Python when it has the chart tools, or why not.
fn chart_python() -> Result<PathBuf, String> {
    support::venv_python("helm_python, kubernetes_validate")
}

#[test]
fn the_binary_knows_the_topics_the_deployment_needs() {
    let topics = default_topics();
    for role in ["signals_topic=", "membership_topic="] {
        assert!(
            topics.iter().any(|t| t.contains(role)),
            "no {role} among the default topics {topics:?}"
        );
    }
}

#[test]
fn chart_renders_validates_and_matches_the_binary() {
    let python = match chart_python() {
        Ok(p) => p,
        Err(why) if std::env::var("CDP_REQUIRE_HELM").as_deref() == Ok("1") => {
            panic!("CDP_REQUIRE_HELM=1 but the chart tools are missing ({why}); run scripts/install-chart-tools.sh")
        }
        Err(why) => {
            eprintln!("skipping the chart check: {why}; run scripts/install-chart-tools.sh");
            return;
        }
    };
    let root = &support::repo_root();
    let mut cmd = Command::new(python);
    cmd.arg(root.join("scripts/check-chart.py"))
        .arg("--cdp")
        .arg(env!("CARGO_BIN_EXE_cdp"));
    for topic in default_topics() {
        cmd.arg("--topic").arg(topic);
    }
    let out = cmd.output().expect("check-chart.py runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    assert!(
        out.status.success(),
        "scripts/check-chart.py failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains(" passed, 0 failed"),
        "check-chart.py reported no result:\n{stdout}"
    );
}

/// A stage process on the embedded bus with its HTTP listener on a free loopback port.
struct StageProcess {
    child: Child,
    port: u16,
    stderr: PathBuf,
}

impl StageProcess {
    fn start(data: &Path, command: &str) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let stderr = data.join(format!("{command}.stderr"));
        let child = Command::new(env!("CARGO_BIN_EXE_cdp"))
            .arg("--data")
            .arg(data.join(command))
            .arg(command)
            .env("CDP_HTTP__LISTEN", format!("127.0.0.1:{port}"))
            // `cdp collect` serves its probes with the Tracking API, as the chart configures it.
            .env("CDP_COLLECT__LISTEN", format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("cdp starts");
        StageProcess {
            child,
            port,
            stderr,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// GET `path`: the status code and the whole response, or None while nothing listens.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let status = response.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, response))
    }

    /// Polls `path` until it answers `want` (bounded: the process gets up to a minute).
    fn wait_for(&mut self, path: &str, want: u16) -> String {
        let mut last = None;
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "cdp exited with {status} before {path} answered:\n{}",
                    self.log()
                );
            }
            match self.get(path) {
                Some((status, body)) if status == want => return body,
                other => last = other,
            }
            sleep(Duration::from_millis(100));
        }
        panic!(
            "{path} never answered {want} (last: {last:?}):\n{}",
            self.log()
        );
    }

    /// SIGTERM, as the kubelet sends it; the exit status once the process is gone.
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -TERM {pid} failed");
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        panic!(
            "cdp did not exit within a minute of SIGTERM:\n{}",
            self.log()
        );
    }
}

/// Metric names in a Prometheus text exposition (its `# TYPE` lines).
fn exposed_metrics(response: &str) -> BTreeSet<String> {
    response
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

/// Every `cdp_…` metric name the dashboard's queries use.
fn dashboard_metrics(dashboard: &serde_json::Value, out: &mut BTreeSet<String>) {
    match dashboard {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match v {
                    serde_json::Value::String(expr) if key == "expr" => {
                        for (i, _) in expr.match_indices("cdp_") {
                            let name: String = expr[i..]
                                .chars()
                                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                                .collect();
                            out.insert(name);
                        }
                    }
                    _ => dashboard_metrics(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| dashboard_metrics(v, out)),
        _ => {}
    }
}

#[test]
fn stages_serve_the_probe_routes_and_the_dashboard_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let mut exposed = BTreeSet::new();
    for command in ["ingest", "resolve", "activate", "collect"] {
        let mut stage = StageProcess::start(dir.path(), command);
        let health = stage.wait_for("/healthz", 200);
        assert!(health.ends_with("ok\n"), "{command} /healthz: {health}");
        // Idle and caught up, the stage turns ready: the readiness probe lets its pod serve.
        let ready = stage.wait_for("/readyz", 200);
        assert!(
            ready.contains("\"ready\":true"),
            "{command} /readyz: {ready}"
        );
        let (status, metrics) = stage.get("/metrics").expect("/metrics answers");
        assert_eq!(status, 200, "{command} /metrics: {metrics}");
        exposed.extend(exposed_metrics(&metrics));
        let log = stage.log();
        let status = stage.terminate();
        assert!(
            status.success(),
            "{command} exited {status} on SIGTERM:\n{log}"
        );
    }

    let path = support::repo_root().join("deploy/helm/cdp/dashboards/cdp.json");
    let text = std::fs::read_to_string(&path).expect("the dashboard exists");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut queried = BTreeSet::new();
    dashboard_metrics(&dashboard, &mut queried);
    assert!(!queried.is_empty(), "the dashboard queries no cdp metric");
    let missing: Vec<_> = queried.difference(&exposed).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics no stage exposes: {missing:?}\nexposed: {exposed:?}"
    );
}

/// The security settings the production values use (TLS, SASL/SCRAM) are ones this build of
/// librdkafka supports: creating clients with them succeeds (they connect lazily).
#[test]
fn kafka_clients_accept_tls_and_scram() {
    for (protocol, mechanism) in [
        ("SASL_SSL", Some("SCRAM-SHA-512")),
        ("SASL_SSL", Some("SCRAM-SHA-256")),
        ("SASL_SSL", Some("PLAIN")),
        ("SSL", None),
    ] {
        let mut config = cdp_bus::kafka::KafkaConfig::default();
        config
            .properties
            .insert("security.protocol".into(), protocol.into());
        if let Some(m) = mechanism {
            config.properties.insert("sasl.mechanism".into(), m.into());
            config
                .properties
                .insert("sasl.username".into(), "cdp".into());
            config
                .properties
                .insert("sasl.password".into(), "secret".into());
        }
        let bus = cdp_bus::kafka::KafkaBus::new(config)
            .unwrap_or_else(|e| panic!("{protocol} {mechanism:?}: {e}"));
        cdp_bus::Bus::producer(&bus).unwrap_or_else(|e| panic!("{protocol} {mechanism:?}: {e}"));
    }
}
