//! A throw-away `tansu` broker (Kafka wire protocol, memory storage) for the Kafka tests: started
//! on a free loopback port, killed when dropped.
//!
//! The binary is `$CDP_TANSU_BIN`, else `$HOME/.cache/cdp/tansu/bin/tansu`
//! (`scripts/install-tansu.sh` puts it there). Without it the Kafka tests are skipped with a
//! notice, unless `CDP_REQUIRE_KAFKA=1`, where they fail instead (CI sets that).

use cdp_bus::kafka::{KafkaBus, KafkaConfig};
use cdp_bus::Bus;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long a broker may take to answer metadata after it was spawned.
const STARTUP: Duration = Duration::from_secs(30);

pub struct Tansu {
    child: Child,
    brokers: String,
    log: PathBuf,
    _dir: TempDir,
}

impl Tansu {
    /// Starts a broker for `test`, or prints why not and returns `None` when tansu is not
    /// installed (and the caller should return, skipping the test).
    pub fn start_or_skip(test: &str) -> Option<Tansu> {
        let bin = binary();
        if !bin.is_file() {
            let hint = "run scripts/install-tansu.sh or set CDP_TANSU_BIN";
            if std::env::var("CDP_REQUIRE_KAFKA").as_deref() == Ok("1") {
                panic!(
                    "CDP_REQUIRE_KAFKA=1 but there is no tansu binary at {}: {hint}",
                    bin.display()
                );
            }
            // Straight to the stderr handle: libtest captures `eprintln!` of passing tests,
            // and a skip must be visible.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED kafka::{test}: no tansu binary at {} ({hint})",
                bin.display()
            );
            return None;
        }
        // Another process can take the free port between our probe and tansu's bind: retry.
        let mut last_error = String::new();
        for _ in 0..3 {
            match Tansu::start(&bin) {
                Ok(tansu) => return Some(tansu),
                Err(e) => last_error = e,
            }
        }
        panic!("tansu did not start: {last_error}");
    }

    fn start(bin: &PathBuf) -> Result<Tansu, String> {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let log = dir.path().join("tansu.log");
        let out = File::create(&log).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", bin.display()))?;
        let mut tansu = Tansu {
            child,
            brokers: format!("127.0.0.1:{port}"),
            log,
            _dir: dir,
        };
        tansu.await_ready()?;
        Ok(tansu)
    }

    /// Waits until the broker accepts connections and answers a metadata request.
    fn await_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP;
        let addr: SocketAddr = self.brokers.parse().map_err(|e| format!("{e}"))?;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("tansu exited with {status}: {}", self.log_tail()));
            }
            let accepting = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok();
            if accepting {
                let bus = self.bus_with_timeout(Duration::from_secs(5));
                if bus.topics().is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "tansu on {} not ready after {STARTUP:?}: {}",
                    self.brokers,
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A bus talking to this broker.
    pub fn bus(&self) -> KafkaBus {
        self.bus_with_timeout(Duration::from_secs(30))
    }

    fn bus_with_timeout(&self, timeout: Duration) -> KafkaBus {
        // tansu 0.6.0 (memory storage) keys its log by batch: ListOffsets(latest) answers the
        // newest batch's base offset + 1, and a fetch from an offset inside a batch skips that
        // batch. With one record per batch both are right, so the contract holds as on Kafka.
        let properties = [("batch.num.messages".to_string(), "1".to_string())].into();
        KafkaBus::new(KafkaConfig {
            brokers: self.brokers.clone(),
            properties,
            operation_timeout_ms: timeout.as_millis() as u64,
            ..KafkaConfig::default()
        })
        .expect("kafka client config is valid")
    }

    fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        let start = text.len().saturating_sub(4000);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        format!("log tail:\n{}", &text[start..])
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("tansu on {}: {}", self.brokers, self.log_tail());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CDP_TANSU_BIN") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    PathBuf::from(home).join(".cache/cdp/tansu/bin/tansu")
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
