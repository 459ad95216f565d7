//! Webhook delivery end to end: the activation stage runs on the embedded bus and delivers to
//! real HTTP servers on loopback that verify every signature and inject failures (500s, 429 with
//! Retry-After, responses slower than the client's timeout, slow successes, refusals). Nothing is
//! lost, a redelivered event keeps its id, consent and suppression lists are honoured on the
//! wire, a dead destination
//! dead-letters without holding up the others, and a restart retries the same batch id.

mod support;

use cdp_activation::config::{ActivationConfig, CohortConfig, DestinationConfig};
use cdp_activation::membership::MembershipStore;
use cdp_activation::stage::{self, ActivationCounters};
use cdp_activation::webhook::Secret;
use cdp_activation::Activation;
use cdp_bus::embedded::EmbeddedBus;
use cdp_bus::{Bus, ConsumerOptions, OutRecord, StartFrom};
use cdp_proto::{IdentityChangeKind, Profile};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Upper bound for waiting on a condition; reaching it fails the test (it is not a measurement).
const PATIENCE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
enum Reply {
    Status(u16),
    /// 429 with `Retry-After: secs`.
    RetryAfter(u64),
    /// Answers `status` only after `delay` (longer than the client's timeout: a lost response).
    Slow(Duration, u16),
}

#[derive(Debug, Clone)]
struct Received {
    at: Instant,
    webhook_id: String,
    idempotency_key: String,
    signature_ok: bool,
    body: Vec<u8>,
    status: u16,
}

#[derive(Default)]
struct ServerState {
    script: VecDeque<Reply>,
    default: Option<Reply>,
    requests: Vec<Received>,
}

/// A minimal HTTP/1.1 receiver: one request per connection, answered from a script.
struct Receiver {
    addr: SocketAddr,
    state: Arc<Mutex<ServerState>>,
}

impl Receiver {
    fn start(script: Vec<Reply>, default: Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(ServerState {
            script: script.into(),
            default: Some(default),
            requests: Vec::new(),
        }));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let state = shared.clone();
                std::thread::spawn(move || serve(stream, &state));
            }
        });
        Self { addr, state }
    }

    fn url(&self) -> String {
        format!("http://{}/hooks/cdp", self.addr)
    }

    fn requests(&self) -> Vec<Received> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Events of every request answered 2xx, in arrival order (redeliveries included).
    fn accepted_events(&self) -> Vec<Value> {
        self.requests()
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .flat_map(|r| {
                let v: Value = serde_json::from_slice(&r.body).unwrap();
                v["events"].as_array().unwrap().clone()
            })
            .collect()
    }

    fn distinct_accepted(&self) -> usize {
        self.accepted_events()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect::<BTreeSet<_>>()
            .len()
    }
}

fn serve(stream: std::net::TcpStream, state: &Mutex<ServerState>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut headers = BTreeMap::new();
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let header = |k: &str| headers.get(k).cloned().unwrap_or_default();
    let timestamp: i64 = header("webhook-timestamp").parse().unwrap_or(-1);
    let signature_ok = Secret::parse(SECRET).unwrap().verify(
        &header("webhook-id"),
        timestamp,
        &body,
        &header("webhook-signature"),
    ) && (chrono::Utc::now().timestamp() - timestamp).abs() < 300;
    let reply = {
        let mut s = state.lock().unwrap();
        let reply = s.script.pop_front().or(s.default).unwrap();
        // A bad signature is refused, as a receiver must.
        let reply = if signature_ok {
            reply
        } else {
            Reply::Status(401)
        };
        let status = match reply {
            Reply::Status(c) | Reply::Slow(_, c) => c,
            Reply::RetryAfter(_) => 429,
        };
        s.requests.push(Received {
            at: Instant::now(),
            webhook_id: header("webhook-id"),
            idempotency_key: header("idempotency-key"),
            signature_ok,
            body,
            status,
        });
        reply
    };
    let (status, extra) = match reply {
        Reply::Status(c) => (c, String::new()),
        Reply::RetryAfter(secs) => (429, format!("retry-after: {secs}\r\n")),
        Reply::Slow(delay, c) => {
            std::thread::sleep(delay);
            (c, String::new())
        }
    };
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n{extra}\r\n"
    );
}

fn hook(key: &str, url: &str) -> DestinationConfig {
    let mut d = DestinationConfig::webhook(key, url);
    d.secret = SECRET.into();
    d.identifiers = vec!["crm_id".into()];
    d.batch_size = 4;
    d.timeout_ms = 400;
    d.initial_backoff_ms = 10;
    d.max_backoff_ms = 100;
    d.max_attempts = 20;
    d
}

fn config(destinations: Vec<DestinationConfig>) -> ActivationConfig {
    let keys = destinations.iter().map(|d| d.key.clone()).collect();
    ActivationConfig {
        cohorts: vec![CohortConfig {
            key: "leads".into(),
            description: String::new(),
            expression: r#"profile.lifecycle_stage == "lead""#.into(),
            priority: 0,
            identifiers: vec![],
            destinations: keys,
        }],
        destinations,
        poll_timeout_ms: 20,
        ..ActivationConfig::default()
    }
}

/// A stage on an embedded bus in a temporary directory.
struct Env {
    dir: tempfile::TempDir,
    bus: EmbeddedBus,
    store: MembershipStore,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open(&dir.path().join("bus")).unwrap();
        for t in cdp_proto::topics::ALL {
            bus.create_topic(t, 2).unwrap();
        }
        let store = MembershipStore::open(&dir.path().join("activation")).unwrap();
        Self { dir, bus, store }
    }

    fn produce(&self, records: Vec<cdp_bus::Record>) {
        let mut p = self.bus.producer().unwrap();
        for r in records {
            p.send(OutRecord::new(r.topic, r.key.unwrap(), r.value.unwrap()))
                .unwrap();
        }
        p.flush().unwrap();
    }

    fn drained(&self, config: &ActivationConfig) -> bool {
        self.bus
            .lag(
                &config.group,
                &[config.profiles_topic.clone(), config.changes_topic.clone()],
            )
            .unwrap()
            == 0
    }

    fn read(&self, topic: &str) -> Vec<cdp_bus::Record> {
        let mut c = self
            .bus
            .consumer(ConsumerOptions {
                group: "test-reader".into(),
                topics: vec![topic.into()],
                start: StartFrom::Earliest,
                commit: false,
            })
            .unwrap();
        let mut out = Vec::new();
        loop {
            let batch = c.poll(1000, Duration::from_millis(50)).unwrap();
            if batch.is_empty() {
                return out;
            }
            out.extend(batch);
        }
    }
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < PATIENCE, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sets the stage's shutdown flag when dropped, so a failing assertion does not leave the scope
/// waiting for a stage that never stops.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Runs the stage while `body` runs, then stops it and returns its result.
fn with_stage(env: &Env, config: &ActivationConfig, body: impl FnOnce(&ActivationCounters)) {
    let activation = Activation::new(config).unwrap();
    let counters = ActivationCounters::default();
    let shutdown = AtomicBool::new(false);
    std::thread::scope(|s| {
        let stage = s.spawn(|| {
            stage::run(
                &env.bus,
                &env.store,
                config,
                &activation,
                &counters,
                &shutdown,
            )
        });
        let stop = StopOnDrop(&shutdown);
        body(&counters);
        drop(stop);
        stage.join().unwrap().unwrap();
    });
}

fn people() -> Vec<Profile> {
    (0..20)
        .map(|i| profile(&format!("p{i:02}"), "lead", Some(i % 2 == 0)))
        .collect()
}

#[test]
fn faults_lose_nothing_duplicates_keep_their_ids_and_consent_holds_on_the_wire() {
    let env = Env::new();
    let receiver = Receiver::start(
        vec![
            Reply::Status(500),
            Reply::RetryAfter(1),
            Reply::Slow(Duration::from_millis(1200), 200),
            Reply::Slow(Duration::from_millis(50), 200),
            Reply::Status(503),
            Reply::Status(502),
        ],
        Reply::Status(200),
    );
    let mut ads = hook("ads", &receiver.url());
    ads.consent = vec!["ad_personalization".into()];
    ads.identifiers = vec!["email_sha256".into()];
    let config = config(vec![ads]);
    let mut input = Input::default();
    let everyone = people();

    with_stage(&env, &config, |_| {
        // Everyone becomes a lead, then p00..p09 become customers, then three are erased.
        env.produce(everyone.iter().map(|p| input.update(p, 1)).collect());
        wait_for("phase 1", || env.drained(&config));
        let mut customers = Vec::new();
        for p in &everyone[..10] {
            let mut c = p.clone();
            c.attributes.lifecycle_stage = Some("customer".into());
            customers.push(input.update(&c, 2));
        }
        env.produce(customers);
        wait_for("phase 2", || env.drained(&config));
        env.produce(vec![
            input.change(IdentityChangeKind::Deleted, "p00", &[], 7),
            input.change(IdentityChangeKind::Deleted, "p01", &[], 7),
            input.change(IdentityChangeKind::Deleted, "p12", &[], 7),
        ]);
        wait_for("phase 3", || env.drained(&config));
        // Consenting (even) people: 10 entries, 5 exits, p12's exit, 2 deletions.
        wait_for("every event acknowledged", || {
            receiver.distinct_accepted() >= 18
        });
        wait_for("the queue drained", || {
            env.store.deliveries("ads", 1).unwrap().is_empty()
        });
    });

    let requests = receiver.requests();
    assert!(
        requests.iter().all(|r| r.signature_ok),
        "every request is signed"
    );
    assert!(requests.iter().all(|r| r.idempotency_key == r.webhook_id));
    // A batch is the same message on every attempt.
    let mut bodies: BTreeMap<&str, &[u8]> = BTreeMap::new();
    for r in &requests {
        let first = bodies.entry(&r.webhook_id).or_insert(&r.body);
        assert_eq!(
            *first,
            r.body.as_slice(),
            "batch {} changed on retry",
            r.webhook_id
        );
    }
    assert!(
        requests.len() > bodies.len(),
        "faults were injected, so some batch was retried"
    );
    // Retry-After was honoured: the request after the 429 came at least 1 s later.
    let i = requests.iter().position(|r| r.status == 429).unwrap();
    assert!(requests[i + 1].at - requests[i].at >= Duration::from_secs(1));

    // Exactly the expected events, each id always with the same content.
    let mut by_id: BTreeMap<String, Value> = BTreeMap::new();
    for e in receiver.accepted_events() {
        let id = e["id"].as_str().unwrap().to_string();
        let first = by_id.entry(id).or_insert(e.clone());
        assert_eq!(*first, e, "a redelivered id carries the same event");
    }
    let got: BTreeSet<(String, String, u64)> = by_id
        .values()
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_string(),
                e["canonical_id"].as_str().unwrap().to_string(),
                e["version"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut want = BTreeSet::new();
    for i in (0..20).step_by(2) {
        want.insert(("Audience Entered".to_string(), format!("p{i:02}"), 1));
    }
    for i in (0..10).step_by(2) {
        want.insert(("Audience Exited".to_string(), format!("p{i:02}"), 2));
    }
    want.insert(("Audience Exited".to_string(), "p12".into(), 2));
    want.insert(("Profile Deleted".to_string(), "p00".into(), 7));
    want.insert(("Profile Deleted".to_string(), "p12".into(), 7));
    assert_eq!(got, want, "nothing lost, nothing without consent");
    // In order per person: the first delivery of each event follows the version order.
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for e in receiver.accepted_events() {
        if e["type"] == "profile_deleted" {
            continue;
        }
        let cid = e["canonical_id"].as_str().unwrap().to_string();
        let v = e["version"].as_u64().unwrap();
        let seen = last.entry(cid).or_insert(0);
        assert!(v >= *seen, "versions go backwards: {e}");
        *seen = v;
    }
    // The ad destination got hashed emails only.
    for e in by_id.values() {
        for id in e["identifiers"].as_array().into_iter().flatten() {
            assert_eq!(id["kind"], "email_sha256", "{e}");
        }
    }
}

#[test]
fn a_dead_or_refusing_destination_dead_letters_and_never_holds_up_the_others() {
    let env = Env::new();
    let healthy = Receiver::start(vec![], Reply::Status(204));
    let dead = Receiver::start(vec![], Reply::Status(500));
    let refusing = Receiver::start(vec![], Reply::Status(422));
    // Parked: every answer asks for an hour's wait.
    let parked = Receiver::start(vec![], Reply::RetryAfter(3600));

    let mut dead_hook = hook("dead", &dead.url());
    dead_hook.max_attempts = 3;
    dead_hook.dlq_topic = "t.dlq.dead".into();
    let mut refusing_hook = hook("refusing", &refusing.url());
    refusing_hook.dlq_topic = "t.dlq.refusing".into();
    let parked_hook = hook("parked", &parked.url());
    let config = config(vec![
        hook("healthy", &healthy.url()),
        dead_hook,
        refusing_hook,
        parked_hook,
    ]);
    let mut input = Input::default();
    let everyone = people();

    with_stage(&env, &config, |counters| {
        env.produce(everyone.iter().map(|p| input.update(p, 1)).collect());
        wait_for("the healthy receiver got everyone", || {
            healthy.distinct_accepted() == 20
        });
        wait_for("the dead destination dead-lettered everyone", || {
            counters.webhook_dead.load(Ordering::Relaxed) == 40
        });
        assert!(parked.requests().len() <= 1, "the parked one waits as told");
    });

    for (topic, code, attempts) in [
        ("t.dlq.dead", "webhook_retries_exhausted", "3"),
        ("t.dlq.refusing", "webhook_rejected", "1"),
    ] {
        let records = env.read(topic);
        assert_eq!(records.len(), 20, "{topic}");
        let ids: BTreeSet<String> = records
            .iter()
            .map(|r| {
                let v: Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
                v["canonical_id"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(ids.len(), 20, "each person once in {topic}");
        for r in &records {
            assert_eq!(r.header("cdp.error.stage"), Some(b"activation".as_slice()));
            assert_eq!(r.header("cdp.error.code"), Some(code.as_bytes()));
            assert_eq!(r.header("cdp.webhook.attempts"), Some(attempts.as_bytes()));
            let message = String::from_utf8_lossy(r.header("cdp.error.message").unwrap());
            assert!(message.starts_with("HTTP "), "{message}");
            assert!(r.header("cdp.destination").is_some());
            assert!(r.header("cdp.webhook.id").is_some());
        }
    }
    let batches = |r: &Receiver| {
        r.requests()
            .iter()
            .map(|q| q.webhook_id.clone())
            .collect::<BTreeSet<_>>()
            .len()
    };
    assert_eq!(
        dead.requests().len(),
        3 * batches(&dead),
        "3 attempts per batch"
    );
    assert_eq!(
        refusing.requests().len(),
        batches(&refusing),
        "a refusal is not retried"
    );
    // The parked destination still holds its events for later.
    assert_eq!(env.store.deliveries("parked", 100).unwrap().len(), 20);
}

#[test]
fn a_restart_retries_the_same_batch_under_the_same_id() {
    let env = Env::new();
    let receiver = Receiver::start(vec![Reply::Status(503)], Reply::Status(200));
    let mut slow_retry = hook("crm", &receiver.url());
    slow_retry.initial_backoff_ms = 3_600_000;
    slow_retry.max_backoff_ms = 3_600_000;
    let config_before = config(vec![slow_retry]);
    let mut input = Input::default();
    let everyone = people();

    with_stage(&env, &config_before, |_| {
        env.produce(everyone[..3].iter().map(|p| input.update(p, 1)).collect());
        wait_for("the first attempt", || !receiver.requests().is_empty());
    });
    // More events arrived meanwhile; the retried batch must not absorb them.
    env.produce(everyone[3..6].iter().map(|p| input.update(p, 1)).collect());
    let config_after = config(vec![hook("crm", &receiver.url())]);
    with_stage(&env, &config_after, |_| {
        wait_for("all six acknowledged", || receiver.distinct_accepted() == 6);
    });

    let requests = receiver.requests();
    assert_eq!(requests[0].status, 503);
    assert_eq!(
        requests[1].webhook_id, requests[0].webhook_id,
        "the restarted stage retried the in-flight batch first"
    );
    assert_eq!(requests[1].body, requests[0].body);
    assert!(requests[2..]
        .iter()
        .all(|r| r.webhook_id != requests[0].webhook_id));
    assert_eq!(receiver.accepted_events().len(), 6, "no event twice");
    let _ = &env.dir;
}

#[test]
fn a_reload_starts_new_destinations_and_a_refused_one_keeps_the_running_definitions() {
    let env = Env::new();
    let receiver = Receiver::start(vec![], Reply::Status(200));
    let before = config(vec![]);
    let activation = Activation::new(&before).unwrap();
    let counters = ActivationCounters::default();
    let shutdown = AtomicBool::new(false);
    let mut input = Input::default();
    let everyone = people();
    std::thread::scope(|s| {
        let stage = s.spawn(|| {
            stage::run(
                &env.bus,
                &env.store,
                &before,
                &activation,
                &counters,
                &shutdown,
            )
        });
        let stop = StopOnDrop(&shutdown);
        env.produce(everyone[..2].iter().map(|p| input.update(p, 1)).collect());
        wait_for("the first people", || env.drained(&before));

        let after = config(vec![hook("crm", &receiver.url())]);
        activation.reload(&after).unwrap();
        let mut broken = after.clone();
        broken.cohorts[0].expression = "profile.lifecycle_stage ==".into();
        let err = activation.reload(&broken).unwrap_err().to_string();
        assert!(err.contains("leads"), "{err}");

        env.produce(everyone[2..5].iter().map(|p| input.update(p, 1)).collect());
        wait_for(
            "the new destination got the people after the reload",
            || receiver.distinct_accepted() == 3,
        );
        drop(stop);
        stage.join().unwrap().unwrap();
    });
    let ids: BTreeSet<String> = receiver
        .accepted_events()
        .iter()
        .map(|e| e["canonical_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["p02", "p03", "p04"].map(String::from).into());
}

#[test]
fn a_suppressed_person_never_reaches_the_webhook_but_stays_a_member() {
    let env = Env::new();
    let receiver = Receiver::start(vec![], Reply::Status(200));
    let mut config = config(vec![hook("crm", &receiver.url())]);
    config.suppression_lists = vec![cdp_activation::SuppressionListConfig {
        key: "do_not_contact".into(),
        kind: "crm_id".into(),
        file: String::new(),
        values: vec!["crm-p03".into(), "crm-p07".into()],
        destinations: vec!["crm".into()],
        phone_region: "US".into(),
    }];
    let mut input = Input::default();
    let everyone = people();

    with_stage(&env, &config, |counters| {
        env.produce(everyone.iter().map(|p| input.update(p, 1)).collect());
        wait_for("everyone applied", || env.drained(&config));
        wait_for("the others acknowledged", || {
            receiver.distinct_accepted() == 18
        });
        wait_for("the queue drained", || {
            env.store.deliveries("crm", 1).unwrap().is_empty()
        });
        assert_eq!(
            counters
                .withheld
                .get("crm", cdp_activation::rules::Withheld::Suppressed),
            2
        );
    });

    let ids: BTreeSet<String> = receiver
        .accepted_events()
        .iter()
        .map(|e| e["canonical_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 18);
    assert!(!ids.contains("p03") && !ids.contains("p07"), "{ids:?}");
    let members: BTreeSet<String> = env
        .read("cdp.cohorts.membership")
        .iter()
        .map(|r| String::from_utf8(r.key.clone().unwrap()).unwrap())
        .collect();
    assert!(members.contains("leads:p03") && members.contains("leads:p07"));
    assert_eq!(members.len(), 20);
}
