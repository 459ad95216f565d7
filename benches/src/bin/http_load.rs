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
//! binary to serve (default: `cdp` next to this one); `--workers N` sets its `http.workers`,
//! `--read-tier-mb N` its `http.read_tier_mb` (0: every lookup reads the store),
//! `--pipeline-nice N` its `http.pipeline_nice` (the stages' and RocksDB's niceness).
//! It also reports the CPU the server, its HTTP listener threads and the load tool itself used
//! while measuring (the load tool shares the machine, so its share is the server's loss).

use cdp_benches::percentile;
use clap::Parser;
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

#[derive(Parser)]
#[command(about = "Profile lookups over HTTP on loopback while cdp ingests")]
struct Options {
    /// The cdp binary to serve.
    #[arg(long, default_value_os_t = sibling_cdp())]
    cdp: PathBuf,
    /// People resolved before the load starts.
    #[arg(long, default_value_t = 20_000)]
    profiles: usize,
    /// People ingested while the load runs (0: none).
    #[arg(long, default_value_t = 20_000)]
    ingest_profiles: usize,
    /// Requests offered per second.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    rate: u64,
    /// Keep-alive connections sharing the schedule.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..))]
    connections: u64,
    /// How long the load runs.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
    /// Requests due in the first seconds are left out of the percentiles.
    #[arg(long, default_value_t = 3)]
    warmup_seconds: u64,
    /// `http.workers` of the server (its default when not given).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    workers: Option<u64>,
    /// `http.read_tier_mb` of the server (its default when not given).
    #[arg(long)]
    read_tier_mb: Option<u64>,
    /// `http.pipeline_nice` of the server (its default when not given).
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=19))]
    pipeline_nice: Option<u64>,
    /// Where the workloads and the store live; kept, and the resolved store reused, across runs.
    #[arg(long)]
    work: Option<PathBuf>,
}

/// `cdp` next to this binary (both are built into the same target directory).
fn sibling_cdp() -> PathBuf {
    std::env::current_exe()
        .map(|exe| exe.with_file_name("cdp"))
        .unwrap_or_else(|_| PathBuf::from("cdp"))
}

fn main() {
    let options = Options::parse();
    if !options.cdp.exists() {
        eprintln!(
            "error: no cdp binary at {} (build it, or pass --cdp PATH)",
            options.cdp.display()
        );
        std::process::exit(2);
    }
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
    let mut toml = String::from("[http]\n");
    if let Some(workers) = o.workers {
        toml.push_str(&format!("workers = {workers}\n"));
    }
    if let Some(mb) = o.read_tier_mb {
        toml.push_str(&format!("read_tier_mb = {mb}\n"));
    }
    if let Some(nice) = o.pipeline_nice {
        toml.push_str(&format!("pipeline_nice = {nice}\n"));
    }
    toml.push_str(&format!(
        "[[http.api_keys]]\ntenant = \"default\"\ntoken_sha256 = \"{TOKEN_SHA256}\"\n"
    ));
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
    let requests: Arc<Vec<Vec<u8>>> = Arc::new(paths.iter().map(|p| request(p)).collect());

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
        load(
            addr,
            &requests,
            o.rate,
            o.connections as usize,
            o.warmup_seconds,
        );
    }
    let measured_from = Instant::now();
    let cpu_before = (
        cpu_seconds(Some(server.pid()), |_| true),
        cpu_seconds(None, |_| true),
    );
    let listener_before = cpu_seconds(Some(server.pid()), is_listener);
    let result = load(addr, &requests, o.rate, o.connections as usize, o.seconds);
    let elapsed = measured_from.elapsed().as_secs_f64();
    let cpu = (
        cpu_seconds(Some(server.pid()), |_| true) - cpu_before.0,
        cpu_seconds(None, |_| true) - cpu_before.1,
    );
    let listener = cpu_seconds(Some(server.pid()), is_listener) - listener_before;
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
    // Threads that ended during the run (idle blocking-pool threads) are missing from the
    // listener's share; the process total has them.
    println!(
        "  CPU: server {:.2} cores (its HTTP listener threads {:.2}: {:.0} µs per answer), \
         load tool {:.2} cores",
        cpu.0 / elapsed,
        listener / elapsed,
        listener * 1e6 / completed.max(1) as f64,
        cpu.1 / elapsed,
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

/// The bytes of a keep-alive `GET path` with the benchmark's API key.
fn request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {TOKEN}\r\n\r\n")
        .into_bytes()
}

/// CPU time (user and system) of the threads of process `pid` (`None`: this one) whose name
/// `pick` accepts, from `/proc` (in clock ticks of 1/100 s, Linux's fixed `USER_HZ`); 0 where
/// `/proc` cannot tell.
fn cpu_seconds(pid: Option<u32>, pick: impl Fn(&str) -> bool) -> f64 {
    let dir = match pid {
        Some(pid) => PathBuf::from(format!("/proc/{pid}/task")),
        None => PathBuf::from("/proc/self/task"),
    };
    let Ok(tasks) = std::fs::read_dir(dir) else {
        return 0.0;
    };
    let mut ticks = 0u64;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ...`: the name may hold spaces, so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !pick(&stat[open + 1..close]) {
            continue;
        }
        // After the name: state is field 3, utime 14, stime 15.
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        ticks += field(14).unwrap_or(0) + field(15).unwrap_or(0);
    }
    ticks as f64 / 100.0
}

/// The HTTP listener's threads in `cdp`: the one serving accepts and the runtime's workers and
/// blocking pool (`http`, `http-worker`).
fn is_listener(name: &str) -> bool {
    name == "http" || name == "http-worker"
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
        // Keep draining its stderr so the process never blocks on a full pipe; its errors and
        // panics are shown, since they explain a run that fails.
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let failed = line.starts_with("error");
                if failed || line.contains("ERROR") || line.contains("panicked") {
                    eprintln!("cdp: {line}");
                }
            }
        });
        Ok(Server { child, addr })
    }

    fn pid(&self) -> u32 {
        self.child.id()
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

/// `GET path` on a connection of its own, blocking (for `/metrics`): the status and the body.
fn fetch(addr: SocketAddr, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(&request(path))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    loop {
        if let Some((status, head, length)) = parse_answer(&buf)? {
            if buf.len() >= length {
                return Ok((status, buf[head..length].to_vec()));
            }
        }
        match stream.read(&mut chunk)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[derive(Default)]
struct LoadResult {
    sent: u64,
    latencies: Vec<Duration>,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
}

impl LoadResult {
    fn absorb(&mut self, part: LoadResult) {
        self.sent += part.sent;
        self.latencies.extend(part.latencies);
        self.errors += part.errors;
        for (s, n) in part.statuses {
            *self.statuses.entry(s).or_default() += n;
        }
    }
}

/// Shortest sleep of the pacer: it releases every request due by the time it wakes, so at high
/// rates one wake-up releases a few. A request released late is still timed from when it was
/// due, so this (and the kernel's timer slack) can only make latencies look worse.
const PACER_TICK: Duration = Duration::from_micros(100);

/// `rate` requests/s for `seconds` over `connections` keep-alive connections: request `i` is due
/// at `i / rate` and goes out on connection `i % connections` as soon as both it is due and that
/// connection has its previous answer (so it queues behind a slow answer, and that wait counts).
///
/// A pacer thread sleeps until each request is due and hands it to its connection; the
/// connections are tasks on one thread with non-blocking sockets. (A thread per connection,
/// blocking, cost the load tool about a quarter of the CPU it was measuring.)
fn load(
    addr: SocketAddr,
    requests: &Arc<Vec<Vec<u8>>>,
    rate: u64,
    connections: usize,
    seconds: u64,
) -> LoadResult {
    let total = rate * seconds;
    let start = Instant::now() + Duration::from_millis(50);
    let (queues, inboxes): (Vec<_>, Vec<_>) = (0..connections)
        .map(|_| tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>())
        .unzip();
    let pacer = std::thread::spawn(move || {
        let mut i = 0;
        while i < total {
            let now = Instant::now();
            while i < total {
                let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
                if due > now {
                    std::thread::sleep((due - now).max(PACER_TICK));
                    break;
                }
                // Fails only if that connection's task panicked, which ends the run anyway.
                let _ = queues[(i % connections as u64) as usize].send((i, due));
                i += 1;
            }
        }
        // Dropping the queues ends each connection once it has answered what it was given.
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime for the load");
    let mut all = runtime.block_on(async {
        let tasks: Vec<_> = inboxes
            .into_iter()
            .map(|inbox| tokio::spawn(connection(addr, requests.clone(), inbox)))
            .collect();
        let mut all = LoadResult::default();
        for t in tasks {
            all.absorb(t.await.expect("a connection task panicked"));
        }
        all
    });
    pacer.join().expect("the pacer panicked");
    all.latencies.shrink_to_fit();
    all
}

/// One keep-alive connection: sends each request it is handed, reads the answer in full, and
/// times it from when the request was due. A broken connection is reopened.
async fn connection(
    addr: SocketAddr,
    requests: Arc<Vec<Vec<u8>>>,
    mut inbox: tokio::sync::mpsc::UnboundedReceiver<(u64, Instant)>,
) -> LoadResult {
    let mut out = LoadResult::default();
    let mut stream = open(addr).await.ok();
    let mut buf = Vec::with_capacity(16 << 10);
    while let Some((i, due)) = inbox.recv().await {
        // Spread over every person, in an order unrelated to the connections.
        let request = &requests[(i.wrapping_mul(2_654_435_761) % requests.len() as u64) as usize];
        out.sent += 1;
        let answer = match stream.as_ref() {
            Some(s) => exchange(s, request, &mut buf).await,
            None => Err(std::io::ErrorKind::NotConnected.into()),
        };
        match answer {
            Ok(status) => {
                out.latencies.push(due.elapsed());
                *out.statuses.entry(status).or_default() += 1;
            }
            Err(_) => {
                out.errors += 1;
                stream = open(addr).await.ok();
            }
        }
    }
    out
}

async fn open(addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Writes `request` and reads one answer (headers and a `Content-Length` body); its status.
async fn exchange(
    stream: &tokio::net::TcpStream,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> std::io::Result<u16> {
    let mut written = 0;
    while written < request.len() {
        stream.writable().await?;
        match stream.try_write(&request[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    buf.clear();
    loop {
        if let Some((status, _, length)) = parse_answer(buf)? {
            if buf.len() >= length {
                return Ok(status);
            }
        }
        stream.readable().await?;
        let filled = buf.len();
        buf.resize(filled + (8 << 10), 0);
        let read = stream.try_read(&mut buf[filled..]);
        buf.truncate(filled + *read.as_ref().unwrap_or(&0));
        match read {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// The status, the length of the head and the total length (head and body) of the answer at
/// the start of `buf`, once its head has arrived.
fn parse_answer(buf: &[u8]) -> std::io::Result<Option<(u16, usize, usize)>> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let bad = |what: &str| std::io::Error::other(format!("bad answer: {what}"));
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| bad("head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("status line"))?;
    let mut length = 0usize;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().map_err(|_| bad("content-length"))?;
            }
        }
    }
    Ok(Some((status, head_end + 4, head_end + 4 + length)))
}

/// A metric of the server's `/metrics`, summed over its labels.
fn metric(addr: SocketAddr, name: &str) -> Result<u64, String> {
    let (_, body) = fetch(addr, "/metrics").map_err(|e| e.to_string())?;
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
