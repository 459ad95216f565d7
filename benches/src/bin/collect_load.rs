//! Load on the collector (`cdp collect`): N keep-alive connections each posting Segment batches
//! to `/v1/batch` as fast as the answers come, for a while; prints requests/s, messages/s,
//! latency percentiles, answers by status, and the collector's peak RSS.
//!
//! ```text
//! collect_load --cdp target/release/cdp [--connections 16] [--batch 20] [--seconds 10]
//! collect_load --url http://127.0.0.1:8088 --write-key KEY [--pid PID]
//! ```
//!
//! With `--cdp` it starts `cdp collect` on a fresh embedded data directory (a temporary config
//! with one write key), so the numbers include the durable write of every batch before its 200.

use base64::Engine;
use cdp_benches::{peak_rss_bytes, percentile};
use clap::Parser;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Load on the collector: Segment batches posted to /v1/batch")]
#[command(group(clap::ArgGroup::new("target").required(true).args(["cdp", "url"])))]
struct Options {
    /// Start `cdp collect` from this binary on a fresh embedded data directory.
    #[arg(long)]
    cdp: Option<String>,
    /// Load a collector already running at http://HOST:PORT.
    #[arg(long, requires = "write_key")]
    url: Option<String>,
    /// The write key batches are posted with.
    #[arg(long, default_value = "wk_load_test")]
    write_key: String,
    /// The running collector's process id, for its peak RSS (with --url).
    #[arg(long, requires = "url")]
    pid: Option<u32>,
    /// Keep-alive connections, each posting as fast as its answers come.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    connections: u64,
    /// Messages per batch.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    batch: u64,
    /// How long the load runs.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
}

/// `cdp collect` on a temporary data directory; killed when dropped.
struct Collector {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_collector(cdp: &str, write_key: &str) -> Collector {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = dir.path().join("cdp.toml");
    let hash = cdp_proto::normalize::sha256_hex(write_key);
    std::fs::write(
        &config,
        format!("[[collect.write_keys]]\ntenant = \"load\"\nkey_sha256 = \"{hash}\"\n"),
    )
    .expect("the config is written");
    let mut child = Command::new(cdp)
        .env("CDP_HTTP__LISTEN", "")
        .env("CDP_COLLECT__LISTEN", "127.0.0.1:0")
        .arg("--data")
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&config)
        .arg("collect")
        .stderr(Stdio::piped())
        .spawn()
        .expect("cdp collect starts");
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(addr) = line.strip_prefix("collect listening on ") {
                    break addr.parse().expect("an address");
                }
            }
            _ => panic!("cdp collect exited before listening"),
        }
    };
    // Keep draining stderr so the collector never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    Collector {
        child,
        addr,
        _dir: dir,
    }
}

/// A batch of `n` Segment messages (mixed track, page and identify), about 400 bytes each.
fn batch_body(connection: usize, request: u64, n: usize) -> Vec<u8> {
    let mut messages = Vec::with_capacity(n);
    for i in 0..n {
        let anon = format!("anon-{connection}-{}", (request as usize * n + i) % 5000);
        let id = format!("load-{connection}-{request}-{i}");
        let message = match i % 3 {
            0 => serde_json::json!({
                "type": "track", "messageId": id, "anonymousId": anon, "event": "Product Viewed",
                "properties": {"sku": format!("sku-{}", i % 97), "price": 19.99, "currency": "EUR"},
                "context": {"ip": "203.0.113.7", "userAgent": "Mozilla/5.0 (X11; Linux x86_64)",
                            "page": {"url": "https://shop.example.com/p?utm_source=news&gclid=Cj0KCQ_x"}},
                "timestamp": "2026-11-23T09:00:00.000Z"
            }),
            1 => serde_json::json!({
                "type": "page", "messageId": id, "anonymousId": anon, "name": "Pricing",
                "context": {"page": {"url": "https://shop.example.com/pricing"}},
                "timestamp": "2026-11-23T09:00:00.000Z"
            }),
            _ => serde_json::json!({
                "type": "identify", "messageId": id, "anonymousId": anon,
                "userId": format!("user-{connection}-{}", i % 50),
                "traits": {"email": format!("person{i}@example.com"), "plan": "pro"},
                "timestamp": "2026-11-23T09:00:00.000Z"
            }),
        };
        messages.push(message);
    }
    let body = serde_json::json!({ "batch": messages, "sentAt": "2026-11-23T09:00:00.100Z" });
    serde_json::to_vec(&body).expect("a batch encodes")
}

/// What one connection measured.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    statuses: BTreeMap<u16, u64>,
    accepted_messages: u64,
}

/// Reads one response (status line, headers, `Content-Length` body) off a keep-alive connection.
fn read_response(reader: &mut BufReader<TcpStream>) -> std::io::Result<u16> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut length = 0usize;
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(status)
}

fn drive(addr: SocketAddr, auth: &str, connection: usize, batch: usize, until: Instant) -> Tally {
    let mut tally = Tally::default();
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut writer = stream.try_clone().expect("a second handle");
    let mut reader = BufReader::new(stream);
    let mut request = 0u64;
    while Instant::now() < until {
        let body = batch_body(connection, request, batch);
        let mut message = format!(
            "POST /v1/batch HTTP/1.1\r\nHost: collector\r\nAuthorization: {auth}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        message.extend_from_slice(&body);
        let started = Instant::now();
        writer.write_all(&message).expect("the request is sent");
        let status = read_response(&mut reader).expect("a response");
        tally.latencies.push(started.elapsed());
        *tally.statuses.entry(status).or_default() += 1;
        if status == 200 {
            tally.accepted_messages += batch as u64;
        }
        request += 1;
    }
    tally
}

/// Peak RSS of process `pid` (Linux `VmHWM`), in bytes.
fn peak_rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("n/a".into(), |b| {
        format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
    })
}

fn main() {
    let o = Options::parse();
    let spawned = o
        .cdp
        .as_deref()
        .map(|cdp| spawn_collector(cdp, &o.write_key));
    let (addr, pid) = match (&spawned, &o.url) {
        (Some(c), _) => (c.addr, Some(c.child.id())),
        (None, Some(url)) => {
            let host = url.trim_start_matches("http://").trim_end_matches('/');
            let Some(addr) = host.to_socket_addrs().ok().and_then(|mut a| a.next()) else {
                eprintln!("error: --url {url}: not an http://HOST:PORT address");
                std::process::exit(2);
            };
            (addr, o.pid)
        }
        (None, None) => unreachable!("clap requires --cdp or --url"),
    };
    let batch = o.batch as usize;
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:", o.write_key))
    );
    let sample_bytes = batch_body(0, 0, batch).len();
    println!(
        "collect_load: {} connections, {} messages per batch (~{} bytes), {} s against {addr}",
        o.connections, o.batch, sample_bytes, o.seconds
    );
    let started = Instant::now();
    let until = started + Duration::from_secs(o.seconds);
    let threads: Vec<_> = (0..o.connections as usize)
        .map(|c| {
            let auth = auth.clone();
            std::thread::spawn(move || drive(addr, &auth, c, batch, until))
        })
        .collect();
    let mut latencies = Vec::new();
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    let mut messages = 0u64;
    for t in threads {
        let tally = t.join().expect("a connection thread");
        latencies.extend(tally.latencies);
        for (status, n) in tally.statuses {
            *statuses.entry(status).or_default() += n;
        }
        messages += tally.accepted_messages;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let requests = latencies.len();
    println!(
        "requests: {requests} in {elapsed:.1} s = {:.0} requests/s; accepted messages {:.0}/s",
        requests as f64 / elapsed,
        messages as f64 / elapsed
    );
    println!(
        "latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&mut latencies, 50.0).as_secs_f64() * 1e3,
        percentile(&mut latencies, 99.0).as_secs_f64() * 1e3,
        percentile(&mut latencies, 100.0).as_secs_f64() * 1e3
    );
    println!("answers by status: {statuses:?}");
    println!(
        "peak RSS: collector {}, load tool {}",
        mib(pid.and_then(peak_rss_of)),
        mib(peak_rss_bytes())
    );
}
