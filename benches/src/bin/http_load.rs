//! Profile lookups over HTTP on loopback (`GET /v1/profiles/email_sha256/{raw e-mail}`), against
//! the `cdp` binary serving a resolved store while it ingests more.
//!
//! It resolves a workload of `--profiles` people (`cdp run --until-drained`), then starts
//! `cdp run` on the same data feeding a second workload of `--ingest-profiles` people (0: none),
//! so the lookups run while the resolver writes. The load is open-loop (wrk2 style):
//! `--connections` keep-alive HTTP/1.1 connections share a fixed schedule of `--rate`
//! requests/s, and each latency is measured from when its request was due, so time spent
//! queueing behind a slow answer counts. Prints achieved requests/s, the latency distribution,
//! the status counts and how many signals the resolver consumed meanwhile.
//!
//! ```text
//! cargo build --release --bin cdp && cargo build --release -p cdp-benches --bin http_load
//! $CARGO_TARGET_DIR/release/http_load --work /dev/shm/cdp-http-load --profiles 20000 \
//!     --ingest-profiles 10000 --rate 20000 --connections 32 --seconds 20
//! ```
//!
//! `--work DIR` keeps the store and reuses it on the next run (each run feeds new people);
//! without it everything lives in a temporary directory (`TMPDIR`). `--cdp PATH` names the
//! binary to serve (default: `cdp` next to this one).

use cdp_benches::percentile;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The API key the benchmark sends, and its SHA-256 as the server's config holds it.
const TOKEN: &str = "bench-token";
const TOKEN_SHA256: &str = "7137e16f75a1d75b6fd65930672814806cdc1a0d6e0aa38611afc996a402258b";

struct Options {
    cdp: PathBuf,
    profiles: usize,
    ingest_profiles: usize,
    rate: u64,
    connections: usize,
    seconds: u64,
    warmup_seconds: u64,
    /// Where the workloads and the store live; kept, and the resolved store reused, across runs.
    work: Option<PathBuf>,
}

impl Options {
    fn parse() -> Result<Self, String> {
        let sibling = std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("cdp");
        let mut o = Options {
            cdp: sibling,
            profiles: 20_000,
            ingest_profiles: 20_000,
            rate: 20_000,
            connections: 32,
            seconds: 20,
            warmup_seconds: 3,
            work: None,
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|_| format!("{flag} {value:?} is not a number"))
            };
            match flag.as_str() {
                "--cdp" => o.cdp = PathBuf::from(&value),
                "--profiles" => o.profiles = number()? as usize,
                "--ingest-profiles" => o.ingest_profiles = number()? as usize,
                "--rate" => o.rate = number()?.max(1),
                "--connections" => o.connections = number()?.max(1) as usize,
                "--seconds" => o.seconds = number()?.max(1),
                "--warmup-seconds" => o.warmup_seconds = number()?,
                "--work" => o.work = Some(PathBuf::from(&value)),
                _ => return Err(format!("unknown flag {flag}")),
            }
        }
        if !o.cdp.exists() {
            return Err(format!(
                "no cdp binary at {} (build it, or pass --cdp PATH)",
                o.cdp.display()
            ));
        }
        Ok(o)
    }
}

fn main() {
    let options = match Options::parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&options) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(o: &Options) -> Result<(), String> {
    let temp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = o.work.as_deref().unwrap_or(temp.path());
    let data = dir.join("data");
    let config = dir.join("cdp.toml");
    let toml =
        format!("[[http.api_keys]]\ntenant = \"default\"\ntoken_sha256 = \"{TOKEN_SHA256}\"\n");
    std::fs::write(&config, toml).map_err(|e| e.to_string())?;

    let base = dir.join("base");
    let resolved = dir.join("base.resolved");
    if resolved.exists() {
        println!("reusing the store resolved in {}", dir.display());
    } else {
        resolve_base(o, &base, &data, &config)?;
        std::fs::write(&resolved, b"").map_err(|e| e.to_string())?;
    }
    let paths = lookup_paths(&base)?;

    let more = dir.join("more");
    let feed = if o.ingest_profiles > 0 {
        // A new seed each run, so a reused store gets people it has not seen.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(7, |d| d.as_secs());
        let _ = std::fs::remove_dir_all(&more);
        generate(o, &more, o.ingest_profiles, seed)?;
        Some(more.as_path())
    } else {
        None
    };
    let mut server = Server::start(o, &data, &config, feed)?;
    let addr = server.addr;
    let ingested_before = resolver_records_in(addr)?;

    println!(
        "{} lookup paths; {} connections at {} req/s for {} s (after {} s warm-up)",
        paths.len(),
        o.connections,
        o.rate,
        o.seconds,
        o.warmup_seconds
    );
    if o.warmup_seconds > 0 {
        load(addr, &paths, o.rate, o.connections, o.warmup_seconds);
    }
    let measured_from = Instant::now();
    let result = load(addr, &paths, o.rate, o.connections, o.seconds);
    let elapsed = measured_from.elapsed().as_secs_f64();
    let ingested = resolver_records_in(addr)?.saturating_sub(ingested_before);
    let still_ingesting = resolver_lag(addr)? > 0;
    server.stop();

    let mut latencies = result.latencies;
    let completed = latencies.len();
    println!(
        "sent {} requests, completed {completed} in {elapsed:.1} s: {:.0} req/s",
        result.sent,
        completed as f64 / elapsed
    );
    for p in [50.0, 90.0, 99.0, 99.9, 100.0] {
        let d = percentile(&mut latencies, p);
        let name = if p == 100.0 {
            "max".to_string()
        } else {
            format!("p{p}")
        };
        println!("  {name:>6}: {:>9.3} ms", d.as_secs_f64() * 1e3);
    }
    let statuses: Vec<String> = result
        .statuses
        .iter()
        .map(|(s, n)| format!("{s}: {n}"))
        .collect();
    println!(
        "  statuses {{{}}}, transport errors {}",
        statuses.join(", "),
        result.errors
    );
    println!(
        "  resolver consumed {ingested} signals during the load ({:.0}/s); {}",
        ingested as f64 / (elapsed + o.warmup_seconds as f64),
        if still_ingesting {
            "still ingesting at the end"
        } else {
            "ingestion had caught up before the end"
        }
    );
    Ok(())
}

/// Generates the base workload into `base` and resolves it into `data`.
fn resolve_base(o: &Options, base: &Path, data: &Path, config: &Path) -> Result<(), String> {
    generate(o, base, o.profiles, 42)?;
    let started = Instant::now();
    let out = cdp(o, data, config, "")
        .args(["run", "--until-drained", "--input"])
        .arg(base)
        .stdout(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "resolving the base workload failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    println!(
        "resolved {} people in {:.1} s",
        o.profiles,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn cdp(o: &Options, data: &Path, config: &Path, listen: &str) -> Command {
    let mut c = Command::new(&o.cdp);
    c.env("CDP_HTTP__LISTEN", listen)
        .arg("--data")
        .arg(data)
        .arg("--config")
        .arg(config);
    c
}

fn generate(o: &Options, out: &Path, profiles: usize, seed: u64) -> Result<(), String> {
    let status = Command::new(&o.cdp)
        .env("CDP_HTTP__LISTEN", "")
        .args(["generate", "--profiles", &profiles.to_string()])
        .args(["--seed", &seed.to_string(), "--out"])
        .arg(out)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cdp generate failed: {status}"))
    }
}

/// A lookup path per CRM e-mail address of the workload, raw as the CRM sent it (the API
/// normalises and hashes it, as an application calling it would rely on).
fn lookup_paths(workload: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(workload.join("crm.jsonl")).map_err(|e| e.to_string())?;
    let paths: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["Email"].as_str().map(str::to_string))
        .filter(|e| e.contains('@'))
        .map(|e| format!("/v1/profiles/email_sha256/{}", encode(&e)))
        .collect();
    if paths.is_empty() {
        return Err("the workload has no CRM e-mail addresses".into());
    }
    Ok(paths)
}

fn encode(segment: &str) -> String {
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

/// `cdp run`, feeding a workload if given, with its listener on a free loopback port; killed on
/// drop.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(
        o: &Options,
        data: &Path,
        config: &Path,
        input: Option<&Path>,
    ) -> Result<Self, String> {
        let mut command = cdp(o, data, config, "127.0.0.1:0");
        command.arg("run");
        if let Some(input) = input {
            command.arg("--input").arg(input);
        }
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(addr) = line.strip_prefix("http listening on ") {
                        break addr.parse().map_err(|_| format!("bad address {addr:?}"))?;
                    }
                }
                _ => {
                    let _ = child.kill();
                    return Err("cdp run exited before listening".into());
                }
            }
        };
        // Keep draining its stderr so the process never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Server { child, addr })
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A keep-alive HTTP/1.1 connection that reads each response in full.
struct Connection {
    stream: BufReader<TcpStream>,
}

impl Connection {
    fn open(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Self {
            stream: BufReader::new(stream),
        })
    }

    /// Sends `GET path` and returns the status once the whole body has arrived.
    fn get(&mut self, path: &str, body: &mut Vec<u8>) -> std::io::Result<u16> {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
        self.stream.get_mut().write_all(request.as_bytes())?;
        let mut line = String::new();
        self.stream.read_line(&mut line)?;
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut length = 0usize;
        loop {
            line.clear();
            if self.stream.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().map_err(std::io::Error::other)?;
                }
            }
        }
        body.resize(length, 0);
        self.stream.read_exact(body)?;
        Ok(status)
    }
}

#[derive(Default)]
struct LoadResult {
    sent: u64,
    latencies: Vec<Duration>,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
}

/// `rate` requests/s for `seconds`, spread over `connections` threads: request `i` is due at
/// `i / rate` and goes out on connection `i % connections`.
fn load(
    addr: SocketAddr,
    paths: &[String],
    rate: u64,
    connections: usize,
    seconds: u64,
) -> LoadResult {
    let total = rate * seconds;
    let paths: Arc<Vec<String>> = Arc::new(paths.to_vec());
    let start = Instant::now() + Duration::from_millis(50);
    let threads: Vec<_> = (0..connections)
        .map(|c| {
            let paths = paths.clone();
            std::thread::spawn(move || {
                let mut out = LoadResult::default();
                let mut connection = Connection::open(addr).ok();
                let mut body = Vec::new();
                let mut i = c as u64;
                while i < total {
                    let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    // Spread over every person, in an order unrelated to the connections.
                    let path =
                        &paths[(i.wrapping_mul(2_654_435_761) % paths.len() as u64) as usize];
                    out.sent += 1;
                    let answer = match connection.as_mut() {
                        Some(conn) => conn.get(path, &mut body),
                        None => Err(std::io::ErrorKind::NotConnected.into()),
                    };
                    match answer {
                        Ok(status) => {
                            out.latencies.push(due.elapsed());
                            *out.statuses.entry(status).or_default() += 1;
                        }
                        Err(_) => {
                            out.errors += 1;
                            connection = Connection::open(addr).ok();
                        }
                    }
                    i += connections as u64;
                }
                out
            })
        })
        .collect();
    let mut all = LoadResult::default();
    for t in threads {
        let part = t.join().expect("a load thread panicked");
        all.sent += part.sent;
        all.latencies.extend(part.latencies);
        all.errors += part.errors;
        for (s, n) in part.statuses {
            *all.statuses.entry(s).or_default() += n;
        }
    }
    all
}

/// A metric of the server's `/metrics`, summed over its labels.
fn metric(addr: SocketAddr, name: &str) -> Result<u64, String> {
    let mut conn = Connection::open(addr).map_err(|e| e.to_string())?;
    let mut body = Vec::new();
    conn.get("/metrics", &mut body).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&body);
    Ok(text
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

fn resolver_records_in(addr: SocketAddr) -> Result<u64, String> {
    metric(addr, "cdp_resolver_records_in_total")
}

fn resolver_lag(addr: SocketAddr) -> Result<u64, String> {
    metric(addr, "cdp_resolver_consumer_lag_records")
}
