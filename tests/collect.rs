//! `cdp collect` as Segment libraries and operators see it: a batch posted with a write key is on
//! the raw topics when the 200 arrives and becomes signals of the key's tenant; bad requests get
//! a JSON error with a stable code and leave nothing behind; the exact requests analytics-python
//! (plain and gzip), analytics-node and analytics.js (from a browser) send are accepted; health,
//! readiness, metrics and a clean SIGTERM.

mod support;

use base64::Engine;
use serde_json::{json, Value};
use sha2::Digest;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::{get, ok, read_topic, Response, Running};

const WRITE_KEY: &str = "wk_live_acme_5f1c";
const TENANT: &str = "acme";

/// A config with one write key for `acme`.
fn config(dir: &Path) -> PathBuf {
    let hash = hex::encode(sha2::Sha256::digest(WRITE_KEY.as_bytes()));
    let path = dir.join("cdp.toml");
    let text = format!("[[collect.write_keys]]\ntenant = \"{TENANT}\"\nkey_sha256 = \"{hash}\"\n");
    std::fs::write(&path, text).unwrap();
    path
}

/// `cdp collect` on `data` with `config`, listening on a free loopback port.
fn start(data: &Path, config: &Path) -> Running {
    collector(data, config, &["collect"])
}

/// The binary with `args` on `data` and `config`, its collector on a free loopback port, once
/// the collector is listening.
fn collector(data: &Path, config: &Path, args: &[&str]) -> Running {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cdp"));
    c.env("CDP_HTTP__LISTEN", "")
        .env("CDP_COLLECT__LISTEN", "127.0.0.1:0")
        .arg("--data")
        .arg(data)
        .arg("--config")
        .arg(config)
        .args(args);
    Running::spawn(c, "collect listening on ", Duration::from_secs(60))
}

/// SIGTERM, then the exit status (the process gets a minute).
fn stop(mut run: Running) {
    run.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = run.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit within 60 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "cdp collect exited with {status}");
}

/// `bytes` gzip-compressed, as Segment's libraries compress a body.
fn gzipped(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// One HTTP/1.1 request with `headers` and `body`.
fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Response {
    exchange(addr, method, path, headers, body.len(), Some(body))
}

/// A request that declares a body of `length` bytes and sends only its head: the server must
/// refuse an oversize body without reading it.
fn send_head(addr: SocketAddr, path: &str, headers: &[(&str, String)], length: usize) -> Response {
    exchange(addr, "POST", path, headers, length, None)
}

fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    length: usize,
    body: Option<&[u8]>,
) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {length}\r\n\r\n"));
    let mut request = head.into_bytes();
    request.extend_from_slice(body.unwrap_or_default());
    stream.write_all(&request).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("a response");
    support::parse_response(&String::from_utf8_lossy(&raw))
}

/// `Authorization: Basic base64(KEY:)`, as Segment's libraries send the write key.
fn basic(key: &str) -> (&'static str, String) {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{key}:"));
    ("Authorization", format!("Basic {encoded}"))
}

fn post(addr: SocketAddr, path: &str, key: Option<&str>, body: &Value) -> Response {
    let mut headers = vec![("Content-Type", "application/json".to_string())];
    headers.extend(key.map(basic));
    send(addr, "POST", path, &headers, body.to_string().as_bytes())
}

/// The value of the sample `name{labels}` in a Prometheus text exposition.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{series} missing in\n{metrics}"))
}

fn error_code(r: &Response) -> String {
    r.json()["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_segment_batch_is_on_the_raw_topics_and_becomes_signals_of_the_key_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run = start(&data, &config(dir.path()));
    assert_eq!(get(run.addr, "/healthz").status, 200);
    assert_eq!(get(run.addr, "/readyz").status, 200);

    let batch = json!({
        "batch": [
            {"type": "identify", "messageId": "m-identify", "userId": "u-1",
             "anonymousId": "anon-1", "traits": {"email": "Jane.Doe@Example.com", "plan": "pro"},
             "timestamp": "2026-11-23T09:00:00.000Z"},
            {"type": "track", "messageId": "m-track", "userId": "u-1", "anonymousId": "anon-1",
             "event": "Order Completed", "properties": {"revenue": 42.5}},
            {"type": "page", "messageId": "m-page", "anonymousId": "anon-1", "name": "Pricing",
             "context": {"page": {"url": "https://shop.example.com/pricing?gclid=Cj0KCQ_abc"}}},
            {"type": "screen", "messageId": "m-screen", "anonymousId": "device-anon-9",
             "name": "Home",
             "context": {"app": {"name": "Shop", "version": "3.1"},
                         "device": {"id": "idfv-1234", "advertisingId": "6D92078A-8246-4BA4-AE5B-76104861E7DC",
                                    "adTrackingEnabled": true}}},
            {"type": "alias", "messageId": "m-alias", "userId": "u-1", "previousId": "anon-0"},
            {"type": "group", "messageId": "m-group", "userId": "u-1", "groupId": "g-7",
             "traits": {"name": "Initech"}},
        ],
        "sentAt": "2026-11-23T09:00:01.000Z",
        "context": {"library": {"name": "analytics-python", "version": "2.3.2"}}
    });
    let r = post(run.addr, "/v1/batch", Some(WRITE_KEY), &batch);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"success": true}));
    // analytics.js puts the key in the body of a single call, and often no messageId.
    let single = json!({"writeKey": WRITE_KEY, "userId": "u-2", "event": "Signed Up"});
    let r = post(run.addr, "/v1/track", None, &single);
    assert_eq!(r.status, 200, "{}", r.body);

    let metrics = get(run.addr, "/metrics").body;
    assert_eq!(
        sample(
            &metrics,
            "cdp_collect_requests_total{outcome=\"accepted\",route=\"batch\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(&metrics, "cdp_collect_messages_total{outcome=\"accepted\"}"),
        7.0
    );
    stop(run);

    // On the raw topics already (a 200 means acknowledged), with the tenant header.
    let web = read_topic(&data, "cdp.raw.web");
    let app = read_topic(&data, "cdp.raw.app");
    assert_eq!((web.len(), app.len()), (6, 1), "web {web:?}\napp {app:?}");
    assert_eq!(app[0]["value"]["messageId"], "m-screen");
    assert_eq!(app[0]["key"], "device-anon-9");
    for record in web.iter().chain(&app) {
        assert_eq!(record["headers"]["cdp.tenant"], TENANT, "{record}");
        let v = &record["value"];
        assert!(v["receivedAt"].is_string(), "{v}");
        assert!(v.get("writeKey").is_none(), "the key is not kept: {v}");
        assert!(v["messageId"].as_str().is_some_and(|id| !id.is_empty()));
    }
    let track = web
        .iter()
        .find(|r| r["value"]["event"] == "Signed Up")
        .expect("the single track call");
    assert_eq!(track["value"]["type"], "track", "implied by the route");
    assert_eq!(track["key"], "u-2");
    let identify = web
        .iter()
        .find(|r| r["value"]["messageId"] == "m-identify")
        .unwrap();
    assert_eq!(identify["key"], "anon-1");
    assert_eq!(identify["value"]["sentAt"], "2026-11-23T09:00:01.000Z");
    assert_eq!(
        identify["value"]["context"]["library"]["name"], "analytics-python",
        "the batch's context fills the message's"
    );

    // Ingest turns every message into a signal of the write key's tenant.
    ok(&data, &["ingest", "--until-drained"]);
    let signals = read_topic(&data, "cdp.signals");
    assert_eq!(signals.len(), 7, "{signals:?}");
    assert!(read_topic(&data, "cdp.dlq").is_empty());
    for s in &signals {
        assert_eq!(s["value"]["tenant"], TENANT, "{s}");
    }
    let mut ids: Vec<&str> = signals
        .iter()
        .filter_map(|s| s["value"]["event_id"].as_str())
        .filter(|id| id.starts_with("m-"))
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            "m-alias",
            "m-group",
            "m-identify",
            "m-page",
            "m-screen",
            "m-track"
        ]
    );
    let screen = signals
        .iter()
        .find(|s| s["value"]["event_id"] == "m-screen")
        .unwrap();
    assert_eq!(screen["value"]["source"], "app");
    let text = serde_json::to_string(&signals).unwrap();
    assert!(
        !text.contains("Jane.Doe") && !text.to_lowercase().contains("jane.doe@"),
        "no raw email in signals"
    );
}

#[test]
fn bad_requests_are_refused_with_a_code_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run = start(&data, &config(dir.path()));
    let good = json!({"batch": [{"type": "track", "event": "E", "userId": "u"}]});

    let r = post(run.addr, "/v1/batch", Some("wk_unknown"), &good);
    assert_eq!((r.status, error_code(&r).as_str()), (401, "unauthorized"));
    let r = post(run.addr, "/v1/batch", None, &good);
    assert_eq!((r.status, error_code(&r).as_str()), (401, "unauthorized"));
    let mut keyed = good.clone();
    keyed["writeKey"] = json!("wk_unknown");
    let r = post(run.addr, "/v1/batch", None, &keyed);
    assert_eq!((r.status, error_code(&r).as_str()), (401, "unauthorized"));

    let auth = [basic(WRITE_KEY)];
    let r = send_head(run.addr, "/v1/track", &auth, 40_000);
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (400, "message_too_large")
    );
    let r = send_head(run.addr, "/v1/batch", &auth, 600_000);
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (400, "batch_too_large")
    );
    let big = "x".repeat(40_000);
    let r = post(
        run.addr,
        "/v1/batch",
        Some(WRITE_KEY),
        &json!({"batch": [{"type": "track", "event": "E", "userId": "u", "properties": {"p": big}}]}),
    );
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (400, "message_too_large")
    );
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("batch[0]"));
    let r = send(run.addr, "POST", "/v1/batch", &auth, b"{\"batch\": [");
    assert_eq!((r.status, error_code(&r).as_str()), (400, "invalid_json"));
    let r = post(
        run.addr,
        "/v1/batch",
        Some(WRITE_KEY),
        &json!({"batch": [{"event": "E", "userId": "u"}]}),
    );
    assert_eq!((r.status, error_code(&r).as_str()), (400, "missing_field"));
    let r = post(
        run.addr,
        "/v1/identify",
        Some(WRITE_KEY),
        &json!({"traits": {"plan": "pro"}}),
    );
    assert_eq!((r.status, error_code(&r).as_str()), (400, "missing_field"));
    let brotli = [basic(WRITE_KEY), ("Content-Encoding", "br".to_string())];
    let r = send(run.addr, "POST", "/v1/batch", &brotli, &[0x1f, 0x8b, 0x08]);
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (415, "unsupported_encoding")
    );
    // A zip bomb: 8 KB on the wire, 8 MB inflated, far past the batch limit.
    let gzip = [basic(WRITE_KEY), ("Content-Encoding", "gzip".to_string())];
    let r = send(
        run.addr,
        "POST",
        "/v1/batch",
        &gzip,
        &gzipped(&vec![b' '; 8 << 20]),
    );
    assert_eq!((r.status, error_code(&r).as_str()), (413, "body_too_large"));
    let r = send(run.addr, "POST", "/v1/batch", &gzip, &[0x1f, 0x8b, 0x08]);
    assert_eq!((r.status, error_code(&r).as_str()), (400, "invalid_json"));
    assert_eq!(get(run.addr, "/v1/batch").status, 405);

    let metrics = get(run.addr, "/metrics").body;
    assert_eq!(
        sample(
            &metrics,
            "cdp_collect_requests_total{outcome=\"unauthorized\",route=\"batch\"}"
        ),
        3.0
    );
    // The messages of the three refused requests that parsed and had a good key.
    assert_eq!(
        sample(&metrics, "cdp_collect_messages_total{outcome=\"rejected\"}"),
        3.0
    );
    assert!(!metrics.contains("outcome=\"accepted\""), "{metrics}");
    stop(run);
    assert!(read_topic(&data, "cdp.raw.web").is_empty());
    assert!(read_topic(&data, "cdp.raw.app").is_empty());
}

#[test]
fn the_requests_segment_libraries_send_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run = start(&data, &config(dir.path()));

    // analytics-python 2.x (request.py): Basic auth with the key as username, `writeKey` and
    // `sentAt` in the body, json.dumps separators, null ids it was not given.
    let python = format!(
        concat!(
            "{{\"batch\": [{{\"integrations\": {{}}, \"anonymousId\": null, \"properties\": {{\"plan\": \"Pro\"}}, ",
            "\"timestamp\": \"2026-11-23T09:00:00.123456+00:00\", \"context\": {{\"library\": {{\"name\": \"analytics-python\", ",
            "\"version\": \"2.3.2\"}}}}, \"type\": \"track\", \"userId\": \"py-user\", \"event\": \"Plan Upgraded\", ",
            "\"messageId\": \"4a4fb9f5-1d6a-4a3e-9d1e-5b1e64d0c1aa\"}}], ",
            "\"sentAt\": \"2026-11-23T09:00:00.523456+00:00\", \"writeKey\": \"{key}\"}}"
        ),
        key = WRITE_KEY
    );
    let headers = [
        basic(WRITE_KEY),
        ("Content-Type", "application/json".to_string()),
        ("User-Agent", "analytics-python/2.3.2".to_string()),
        ("Accept-Encoding", "gzip, deflate".to_string()),
    ];
    let r = send(run.addr, "POST", "/v1/batch", &headers, python.as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["success"], true);

    // analytics-python with `gzip=True`: the same request, compressed.
    let compressed = python.replace("py-user", "py-gzip-user").replace(
        "4a4fb9f5-1d6a-4a3e-9d1e-5b1e64d0c1aa",
        "5b5fb9f5-1d6a-4a3e-9d1e-5b1e64d0c1bb",
    );
    let headers = [
        basic(WRITE_KEY),
        ("Content-Type", "application/json".to_string()),
        ("Content-Encoding", "gzip".to_string()),
        ("User-Agent", "analytics-python/2.3.2".to_string()),
    ];
    let r = send(
        run.addr,
        "POST",
        "/v1/batch",
        &headers,
        &gzipped(compressed.as_bytes()),
    );
    assert_eq!(r.status, 200, "{}", r.body);

    // @segment/analytics-node: Basic auth, `batch` and `sentAt`, no writeKey in the body.
    let node = json!({
        "batch": [{
            "type": "identify", "userId": "node-user", "traits": {"email": "node@example.com"},
            "messageId": "node-1a2b", "timestamp": "2026-11-23T09:00:00.000Z",
            "context": {"library": {"name": "@segment/analytics-node", "version": "2.1.0"}},
            "integrations": {}, "_metadata": {"jsRuntime": "node"}
        }],
        "sentAt": "2026-11-23T09:00:00.100Z"
    });
    let headers = [
        basic(WRITE_KEY),
        ("Content-Type", "application/json".to_string()),
        ("User-Agent", "analytics-node-next/latest".to_string()),
    ];
    let r = send(
        run.addr,
        "POST",
        "/v1/batch",
        &headers,
        node.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);

    // analytics.js in a browser: its short path, JSON as text/plain (no CORS preflight), the
    // key in the body, an answer the page's origin may read.
    let browser = json!({
        "type": "page", "anonymousId": "b7c1e2f0-browser", "messageId": "ajs-next-9f8e7d",
        "writeKey": WRITE_KEY, "name": "Pricing",
        "properties": {"url": "https://shop.example.com/pricing?gclid=Cj0KCQ_abc"},
        "context": {"page": {"url": "https://shop.example.com/pricing?gclid=Cj0KCQ_abc"},
                    "library": {"name": "analytics.js", "version": "next-1.70.0"},
                    "userAgent": "Mozilla/5.0"},
        "timestamp": "2026-11-23T09:00:00.000Z", "sentAt": "2026-11-23T09:00:00.050Z"
    });
    let headers = [
        ("Content-Type", "text/plain".to_string()),
        ("Origin", "https://shop.example.com".to_string()),
    ];
    let r = send(
        run.addr,
        "POST",
        "/v1/p",
        &headers,
        browser.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let r = send(run.addr, "OPTIONS", "/v1/batch", &headers, b"");
    assert_eq!(r.status, 204);
    assert!(r
        .header("access-control-allow-headers")
        .is_some_and(|h| h.contains("Authorization")));
    stop(run);

    ok(&data, &["ingest", "--until-drained"]);
    let signals = read_topic(&data, "cdp.signals");
    let ids: Vec<&str> = signals
        .iter()
        .filter_map(|s| s["value"]["event_id"].as_str())
        .collect();
    assert!(
        ids.contains(&"4a4fb9f5-1d6a-4a3e-9d1e-5b1e64d0c1aa")
            && ids.contains(&"5b5fb9f5-1d6a-4a3e-9d1e-5b1e64d0c1bb")
            && ids.contains(&"node-1a2b")
            && ids.contains(&"ajs-next-9f8e7d"),
        "{signals:?}"
    );
    assert!(signals.iter().all(|s| s["value"]["tenant"] == TENANT));
    assert!(read_topic(&data, "cdp.dlq").is_empty());
}

/// The venv's Python when it has Segment's analytics-python library, or why not.
fn segment_python() -> Result<PathBuf, String> {
    support::venv_python("segment.analytics")
        .map_err(|e| format!("{e} (pip install segment-analytics-python)"))
}

/// Segment's own analytics-python, pointed at the collector, sends every message type; an unknown
/// key surfaces in the library as Segment's API error with our code. Runs where the library is
/// installed; CDP_REQUIRE_SEGMENT=1 turns its absence into a failure.
#[test]
fn analytics_python_pointed_at_the_collector_works() {
    let python = match segment_python() {
        Ok(p) => p,
        Err(why) if std::env::var("CDP_REQUIRE_SEGMENT").as_deref() == Ok("1") => {
            panic!("CDP_REQUIRE_SEGMENT=1 but {why}")
        }
        Err(why) => {
            eprintln!("skipping the analytics-python check: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run = start(&data, &config(dir.path()));
    let script = r#"
import sys
import segment.analytics as analytics
from segment.analytics.request import APIError

analytics.host, analytics.write_key = sys.argv[1], sys.argv[2]
analytics.sync_mode = True  # each call posts /v1/batch and raises on an error answer
analytics.identify("py-lib-user", {"email": "lib@example.com", "plan": "pro"}, anonymous_id="py-anon")
analytics.track("py-lib-user", "Plan Upgraded", {"plan": "pro"})
analytics.page("py-lib-user", "Docs", "Pricing", {"url": "https://example.com/pricing?gclid=abc"})
analytics.screen("py-lib-user", "App", "Home")
analytics.group("py-lib-user", "g-1", {"name": "Initech"})
analytics.alias("py-anon", "py-lib-user")

analytics.write_key = "wk_not_configured"
analytics.default_client = None
try:
    analytics.track("py-lib-user", "Should Not Arrive")
    sys.exit("an unknown write key was accepted")
except APIError as e:
    print(f"refused {e.status} {e.code}")
"#;
    let out = Command::new(python)
        .args(["-c", script, &format!("http://{}", run.addr), WRITE_KEY])
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "analytics-python failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "refused 401 unauthorized"
    );
    stop(run);

    ok(&data, &["ingest", "--until-drained"]);
    let signals = read_topic(&data, "cdp.signals");
    assert_eq!(signals.len(), 6, "{signals:?}");
    assert!(signals.iter().all(|s| s["value"]["tenant"] == TENANT));
    assert!(read_topic(&data, "cdp.dlq").is_empty());
}

/// With the embedded bus one process owns the data directory: `cdp run --collect` serves the
/// Tracking API next to the stages, and what it accepts is resolved into a profile.
#[test]
fn cdp_run_collect_serves_the_tracking_api_next_to_the_stages() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run = collector(&data, &config(dir.path()), &["run", "--collect"]);

    let batch = json!({"batch": [
        {"type": "identify", "messageId": "run-1", "anonymousId": "run-anon", "userId": "run-user"},
        {"type": "track", "messageId": "run-2", "anonymousId": "run-anon", "event": "Signed Up"},
    ]});
    let r = post(run.addr, "/v1/batch", Some(WRITE_KEY), &batch);
    assert_eq!(r.status, 200, "{}", r.body);

    // The stages pick the records up while the collector keeps serving (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(120);
    let profile = loop {
        let out = support::output(
            &data,
            &["profile", "get", "user_id:run-user", "--tenant", TENANT],
        );
        if out.status.success() {
            break serde_json::from_slice::<Value>(&out.stdout).expect("a profile");
        }
        assert!(
            Instant::now() < deadline,
            "no profile for the collected events: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(profile.to_string().contains("run-anon"), "{profile}");
    stop(run);
}
