//! Shared by the end-to-end tests: a long-running `cdp run` with its HTTP listener, and a plain
//! HTTP/1.1 client for it.
#![allow(dead_code)] // each test file uses its own part

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The repository, as `cargo test` names it when it runs the test (read at run time: a path
/// compiled in would be stale in a test binary built for another clone sharing the target dir).
pub fn repo_root() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .expect("cargo test sets CARGO_MANIFEST_DIR")
}

/// The binary, on `data`, listening on a free port.
pub fn cdp(data: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cdp"));
    c.env("CDP_HTTP__LISTEN", "127.0.0.1:0")
        .arg("--data")
        .arg(data);
    c
}

/// The binary on `data` with `args`, HTTP listener off (many run side by side in tests).
pub fn command(data: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cdp"));
    c.env("CDP_HTTP__LISTEN", "")
        .arg("--data")
        .arg(data)
        .args(args);
    c
}

/// Runs `c`, which must succeed; its stdout.
pub fn stdout_of(c: &mut Command) -> String {
    let out = c.output().expect("cdp runs");
    assert!(
        out.status.success(),
        "{c:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command to completion (HTTP listener off), whatever its exit status.
pub fn output(data: &Path, args: &[&str]) -> Output {
    command(data, args).output().expect("cdp runs")
}

/// Runs a command that must succeed.
pub fn ok(data: &Path, args: &[&str]) -> Output {
    let out = output(data, args);
    assert!(
        out.status.success(),
        "cdp {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

/// Every record of `topic`, as the JSON objects `cdp topic read` prints.
pub fn read_topic(data: &Path, topic: &str) -> Vec<serde_json::Value> {
    let out = ok(
        data,
        &[
            "topic",
            "read",
            topic,
            "--from-beginning",
            "--idle-ms",
            "5000",
        ],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("topic read prints JSON lines"))
        .collect()
}

/// E-mail addresses of a workload's CRM records exactly as the CRM sent them (case, spaces).
pub fn crm_emails(input: &Path) -> Vec<String> {
    std::fs::read_to_string(input.join("crm.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["Email"].as_str().map(str::to_string))
        .filter(|e| e.contains('@'))
        .collect()
}

/// Writes a workload of `profiles` people to `out`.
pub fn generate(out: &Path, profiles: usize) {
    generate_seeded(out, profiles, 42);
}

/// Runs every stage on `data`, feeding the workload in `input`, until drained; must succeed.
pub fn run_until_drained(data: &Path, input: &Path) -> Output {
    let mut c = command(data, &["run", "--until-drained", "--input"]);
    let out = c.arg(input).output().expect("cdp runs");
    assert!(
        out.status.success(),
        "cdp run --until-drained failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The raw records of a workload directory (its non-blank lines), as `cdp run --input` feeds them.
pub fn records_in(input: &Path) -> u64 {
    ["web", "app", "crm", "media"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(input.join(format!("{f}.jsonl"))).ok())
        .map(|text| text.lines().filter(|l| !l.trim().is_empty()).count() as u64)
        .sum()
}

/// Writes a workload of `profiles` people drawn with `seed` to `out`.
pub fn generate_seeded(out: &Path, profiles: usize, seed: u64) {
    generate_with(out, profiles, seed, &[]);
}

/// Writes a workload of `profiles` people drawn with `seed`, their events in the 30 days before
/// `now` (RFC 3339), to `out`.
pub fn generate_at(out: &Path, profiles: usize, seed: u64, now: &str) {
    generate_with(out, profiles, seed, &["--now", now]);
}

fn generate_with(out: &Path, profiles: usize, seed: u64, extra: &[&str]) {
    let status = cdp(&out.with_extension("unused"))
        .args(["generate", "--profiles", &profiles.to_string()])
        .args(["--seed", &seed.to_string()])
        .args(extra)
        .arg("--out")
        .arg(out)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// One HTTP/1.1 request with an optional bearer token.
pub fn request(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("response");
    parse_response(&raw)
}

/// A whole HTTP/1.1 response (the server closed the connection after it).
pub fn parse_response(raw: &str) -> Response {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Response {
        status,
        headers,
        body: body.to_string(),
    }
}

/// The Python of the venv `make test` installs its tools into (`CDP_CHART_VENV`, default
/// `~/.cache/cdp/venv`) when it can run `import MODULES`, or why not.
pub fn venv_python(modules: &str) -> Result<std::path::PathBuf, String> {
    let venv = std::env::var_os("CDP_CHART_VENV")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache/cdp/venv"))
        })
        .ok_or("neither CDP_CHART_VENV nor HOME is set")?;
    let python = venv.join("bin/python3");
    let probe = Command::new(&python)
        .args(["-c", &format!("import {modules}")])
        .output()
        .map_err(|e| format!("{}: {e}", python.display()))?;
    if !probe.status.success() {
        return Err(format!(
            "{} cannot import {modules}: {}",
            python.display(),
            String::from_utf8_lossy(&probe.stderr).trim()
        ));
    }
    Ok(python)
}

pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, None)
}

/// Percent-encodes a path segment.
pub fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A `cdp run` in the background; killed and reaped when dropped.
pub struct Running {
    pub child: Child,
    pub addr: SocketAddr,
    /// Lines the process writes to stderr after its listener is up.
    pub stderr: mpsc::Receiver<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    /// Starts `cdp run` (with `extra` arguments before the subcommand) feeding `input`, and
    /// returns once its listener is up.
    pub fn start(data: &Path, extra: &[&str], input: &Path) -> Running {
        let mut c = cdp(data);
        c.env("CDP_HTTP__READY_MAX_LAG", "0")
            .args(extra)
            .args(["run", "--input"])
            .arg(input);
        Running::spawn(c, "http listening on ", Duration::from_secs(120))
    }

    /// Spawns `command` with its stderr piped, and returns once it prints `announce` followed by
    /// its address (waiting up to `within`).
    pub fn spawn(mut command: Command, announce: &str, within: Duration) -> Running {
        let child = command.stderr(Stdio::piped()).spawn().expect("cdp starts");
        let (tx, rx) = mpsc::channel();
        // Owned by `Running` from here on, so a failed assertion still kills and reaps it.
        let mut run = Running {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stderr: rx,
        };
        let stderr = run.child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + within;
        loop {
            let line = run
                .stderr
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("cdp announces {announce:?}"));
            if let Some(addr) = line.strip_prefix(announce) {
                run.addr = addr.parse().expect("an address");
                return run;
            }
        }
    }

    /// The next stderr line that starts with `prefix`, waiting up to a minute.
    pub fn wait_line(&self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let line = self
                .stderr
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("no stderr line starting with {prefix:?}"));
            if line.starts_with(prefix) {
                return line;
            }
        }
    }

    /// Sends `signal` (e.g. "HUP", "TERM") to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits until `/readyz` says every stage has caught up; returns its body.
    pub fn wait_ready(&self) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let r = get(self.addr, "/readyz");
            match r.status {
                200 => return r.json(),
                503 => {
                    assert!(Instant::now() < deadline, "never ready: {}", r.body);
                    std::thread::sleep(Duration::from_millis(200));
                }
                other => panic!("/readyz answered {other}: {}", r.body),
            }
        }
    }
}

/// A store's entries by column family (name -> key/value pairs in key order), as crash tests
/// compare a recovered state with an uninterrupted run's.
pub type State = std::collections::BTreeMap<&'static str, Vec<(Vec<u8>, Vec<u8>)>>;

/// The column families whose entries differ between `reference` and `recovered`, each with
/// both entry counts.
pub fn differing(reference: &State, recovered: &State) -> Vec<String> {
    reference
        .iter()
        .filter(|(cf, entries)| recovered.get(*cf) != Some(*entries))
        .map(|(cf, entries)| {
            format!(
                "{cf} ({} vs {} entries)",
                entries.len(),
                recovered.get(cf).map_or(0, Vec::len)
            )
        })
        .collect()
}
