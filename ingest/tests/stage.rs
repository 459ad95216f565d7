//! The ingest stage on the embedded bus: good and poison records in, exactly one output per input
//! (its signals, or one DLQ record with the error headers), and the loop keeps running.

use cdp_bus::embedded::EmbeddedBus;
use cdp_bus::{
    Bus, BusError, Consumer, ConsumerOptions, OutRecord, Producer, Record, StageCounters, TopicInfo,
};
use cdp_ingest::metrics::Outcome;
use cdp_ingest::{
    process_batch, process_batch_with, rejection, stage, Deduplicator, IngestConfig, IngestMetrics,
    NormalizeOptions,
};
use cdp_proto::dlq;
use cdp_proto::Signal;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
            .join("tests/fixtures")
            .join(path),
    )
    .unwrap()
}

/// What one input record must become.
#[derive(Debug, Clone)]
enum Expect {
    Signals {
        tenant: &'static str,
        event_ids: Vec<&'static str>,
    },
    Dead(&'static str),
}

struct Input {
    topic: &'static str,
    key: String,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
    expect: Expect,
}

fn input(n: usize, topic: &'static str, value: &[u8], expect: Expect) -> Input {
    Input {
        topic,
        key: format!("in-{n}"),
        value: Some(value.to_vec()),
        headers: Vec::new(),
        expect,
    }
}

fn signals(tenant: &'static str, event_ids: &[&'static str]) -> Expect {
    Expect::Signals {
        tenant,
        event_ids: event_ids.to_vec(),
    }
}

fn first_round() -> Vec<Input> {
    let mut tenant_header = input(
        3,
        "cdp.raw.crm",
        &fixture("crm/salesforce_contact.json"),
        signals(
            "eu-shop",
            &["sf:0035g00000XyZ12AAF@2024-05-01T12:34:56.000Z"],
        ),
    );
    tenant_header.headers = vec![("cdp.tenant".into(), b"eu-shop".to_vec())];
    let mut bad_tenant = input(
        9,
        "cdp.raw.crm",
        &fixture("crm/hubspot_contact.json"),
        Expect::Dead(rejection::INVALID_TENANT),
    );
    bad_tenant.headers = vec![("cdp.tenant".into(), b"Bad Tenant".to_vec())];
    let mut tombstone = input(
        10,
        "cdp.raw.media",
        b"",
        Expect::Dead(rejection::INVALID_JSON),
    );
    tombstone.value = None;
    vec![
        input(
            0,
            "cdp.raw.web",
            &fixture("web/track_paid_landing.json"),
            signals("default", &["ajs-next-69b3f1f2-4e0f-4f7e-9a4c-1d2b3c4d5e6f"]),
        ),
        input(
            1,
            "cdp.raw.web",
            &fixture("web/batch.json"),
            signals("default", &["ajs-next-batch-0001", "ajs-next-batch-0002"]),
        ),
        input(
            2,
            "cdp.raw.app",
            &fixture("app/segment_android_order.json"),
            signals("default", &["2b3c4d5e-6f70-4182-9394-a5b6c7d8e9f0"]),
        ),
        tenant_header,
        input(
            4,
            "cdp.raw.media",
            &fixture("media/click_log.json"),
            signals("default", &["click:Cj0KCQjw8J2xBhCdARIsABC-DefGhIjK"]),
        ),
        input(5, "cdp.raw.web", b"{\"type\":\"page\",\"messageId\":", Expect::Dead(rejection::INVALID_JSON)),
        input(
            6,
            "cdp.raw.app",
            br#"{"type":"track","event":"Application Opened","anonymousId":"a-1"}"#,
            Expect::Dead(rejection::MISSING_FIELD),
        ),
        input(
            7,
            "cdp.raw.crm",
            br#"{"attributes":{"type":"Contact"},"Id":"0035g00000XyZ99","Email":12345}"#,
            Expect::Dead(rejection::WRONG_TYPE),
        ),
        input(
            8,
            "cdp.raw.web",
            br#"{"type":"identify","messageId":"m-8","userId":"undefined","traits":{"email":"test@test.com"}}"#,
            Expect::Dead(rejection::NO_IDENTIFIERS),
        ),
        bad_tenant,
        tombstone,
        input(11, "cdp.raw.media", b"\"just a string\"", Expect::Dead(rejection::NOT_AN_OBJECT)),
    ]
}

fn second_round() -> Vec<Input> {
    vec![
        input(
            20,
            "cdp.raw.web",
            b"not json at all",
            Expect::Dead(rejection::INVALID_JSON),
        ),
        input(
            21,
            "cdp.raw.web",
            &fixture("web/identify.json"),
            signals(
                "default",
                &["ajs-next-0c2e5a3b-7d1f-4b8e-9f60-a1b2c3d4e5f6"],
            ),
        ),
        input(
            22,
            "cdp.raw.media",
            &fixture("media/appsflyer_install.json"),
            signals(
                "default",
                &["af:1714560000000-1234567890123456789:1714561200000:install"],
            ),
        ),
    ]
}

fn open_bus(dir: &std::path::Path) -> EmbeddedBus {
    let bus = EmbeddedBus::open(dir).unwrap();
    for t in [
        "cdp.raw.web",
        "cdp.raw.app",
        "cdp.raw.crm",
        "cdp.raw.media",
        "cdp.signals",
    ] {
        bus.create_topic(t, 2).unwrap();
    }
    bus.create_topic("cdp.dlq", 1).unwrap();
    bus
}

fn produce(bus: &dyn Bus, inputs: &[Input]) {
    let mut p = bus.producer().unwrap();
    for i in inputs {
        p.send(OutRecord {
            topic: i.topic.into(),
            partition: None,
            key: Some(i.key.clone().into_bytes()),
            value: i.value.clone(),
            headers: i.headers.clone(),
            timestamp_ms: Some(1_717_200_000_000),
        })
        .unwrap();
    }
    p.flush().unwrap();
}

fn raw_topics() -> Vec<String> {
    ["cdp.raw.web", "cdp.raw.app", "cdp.raw.crm", "cdp.raw.media"]
        .map(String::from)
        .to_vec()
}

/// Waits for the stage to commit everything. A deadline only guards against a hung test; no
/// assertion depends on how long processing took.
fn wait_until_caught_up(bus: &dyn Bus, group: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while bus.lag(group, &raw_topics()).unwrap() > 0 {
        assert!(Instant::now() < deadline, "the stage never caught up");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn read_all(bus: &dyn Bus, topic: &str) -> Vec<Record> {
    let end: i64 = bus.end_offsets(topic).unwrap().iter().sum();
    let mut options = ConsumerOptions::group("test-reader", &[topic]);
    options.commit = false;
    let mut c = bus.consumer(options).unwrap();
    let mut out = Vec::new();
    while (out.len() as i64) < end {
        let got = c.poll(1000, Duration::from_millis(50)).unwrap();
        assert!(
            !got.is_empty(),
            "{topic} has fewer records than its end offsets say"
        );
        out.extend(got);
    }
    out
}

fn header<'a>(r: &'a Record, name: &str) -> &'a str {
    std::str::from_utf8(r.header(name).unwrap_or_else(|| panic!("no {name} header"))).unwrap()
}

#[test]
fn every_input_yields_exactly_one_output_and_poison_does_not_stop_the_stage() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open_bus(dir.path());
    let config = IngestConfig {
        batch_size: 4,
        poll_timeout_ms: 20,
        ..IngestConfig::default()
    };
    let counters = StageCounters::default();
    let metrics = IngestMetrics::default();
    let shutdown = AtomicBool::new(false);
    let first = first_round();
    let second = second_round();

    std::thread::scope(|scope| {
        let stage =
            scope.spawn(|| stage::run_with_metrics(&bus, &config, &counters, &metrics, &shutdown));
        produce(&bus, &first);
        wait_until_caught_up(&bus, &config.group);
        // More input after the poison records: still processed.
        produce(&bus, &second);
        wait_until_caught_up(&bus, &config.group);
        shutdown.store(true, Ordering::Relaxed);
        stage.join().unwrap().unwrap();
    });

    let inputs: Vec<&Input> = first.iter().chain(&second).collect();
    // Where each input landed, by its unique key.
    let positions: BTreeMap<String, Record> = raw_topics()
        .iter()
        .flat_map(|t| read_all(&bus, t))
        .map(|r| (String::from_utf8(r.key.clone().unwrap()).unwrap(), r))
        .collect();

    let signals = read_all(&bus, "cdp.signals");
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for r in &signals {
        let s: Signal = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        assert_eq!(
            r.key.as_deref(),
            Some(s.tenant.as_bytes()),
            "signals are keyed by tenant"
        );
        *seen
            .entry(format!("{}/{}", s.tenant, s.event_id))
            .or_default() += 1;
    }
    let mut expected_signals = BTreeMap::new();
    let mut expected_dead = BTreeMap::new();
    for i in &inputs {
        match &i.expect {
            Expect::Signals { tenant, event_ids } => {
                for e in event_ids {
                    expected_signals.insert(format!("{tenant}/{e}"), 1);
                }
            }
            Expect::Dead(code) => {
                expected_dead.insert(i.key.clone(), *code);
            }
        }
    }
    assert_eq!(seen, expected_signals);

    let dead = read_all(&bus, "cdp.dlq");
    assert_eq!(dead.len(), expected_dead.len());
    for r in &dead {
        let key = String::from_utf8(r.key.clone().unwrap()).unwrap();
        let original = &positions[&key];
        let input = inputs.iter().find(|i| i.key == key).unwrap();
        assert_eq!(header(r, dlq::HEADER_CODE), expected_dead[&key], "{key}");
        assert_eq!(header(r, dlq::HEADER_STAGE), "ingest");
        assert_eq!(header(r, dlq::HEADER_SOURCE_TOPIC), original.topic);
        assert_eq!(
            header(r, dlq::HEADER_SOURCE_PARTITION),
            original.partition.to_string()
        );
        assert_eq!(
            header(r, dlq::HEADER_SOURCE_OFFSET),
            original.offset.to_string()
        );
        assert!(!header(r, dlq::HEADER_MESSAGE).is_empty());
        assert_eq!(r.value, input.value, "the DLQ keeps the original bytes");
        for (k, v) in &input.headers {
            assert_eq!(r.header(k), Some(v.as_slice()), "original headers are kept");
        }
    }

    assert_eq!(counters.consumed(), inputs.len() as u64);
    assert_eq!(counters.produced(), signals.len() as u64);
    assert_eq!(counters.dead_lettered(), dead.len() as u64);
    let rejected = metrics.rejected();
    assert_eq!(rejected.get(rejection::INVALID_JSON), Some(&3));
    assert_eq!(rejected.values().sum::<u64>(), dead.len() as u64);
    assert_eq!(metrics.dropped().get("phone_sha256", "empty"), 0);
    // Every input record is counted once, by source and outcome, and every batch is timed.
    let records = metrics.records();
    let outcome_total = |o: Outcome| -> u64 {
        records
            .iter()
            .filter(|(_, outcome, _)| *outcome == o.label())
            .map(|(_, _, n)| n)
            .sum()
    };
    assert_eq!(outcome_total(Outcome::DeadLettered), dead.len() as u64);
    assert_eq!(
        outcome_total(Outcome::Accepted) + outcome_total(Outcome::DeadLettered),
        inputs.len() as u64
    );
    assert!(metrics.batch_duration().count >= 1);
}

#[test]
fn restart_resumes_from_committed_positions() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open_bus(dir.path());
    let config = IngestConfig {
        poll_timeout_ms: 20,
        ..IngestConfig::default()
    };
    let counters = StageCounters::default();
    for round in [first_round(), second_round()] {
        let shutdown = AtomicBool::new(false);
        produce(&bus, &round);
        std::thread::scope(|scope| {
            let stage = scope.spawn(|| stage::run(&bus, &config, &counters, &shutdown));
            wait_until_caught_up(&bus, &config.group);
            shutdown.store(true, Ordering::Relaxed);
            stage.join().unwrap().unwrap();
        });
    }
    // The second run started where the first committed: nothing was processed twice.
    assert_eq!(
        counters.consumed(),
        (first_round().len() + second_round().len()) as u64
    );
}

/// A bus whose producer cannot deliver: the stage must fail without committing.
struct UndeliverableBus(EmbeddedBus);

struct FailingProducer;

impl Producer for FailingProducer {
    fn send(&mut self, _record: OutRecord) -> cdp_bus::Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> cdp_bus::Result<()> {
        Err(BusError::Delivery {
            failed: 1,
            reason: "broker unreachable".into(),
        })
    }
}

impl Bus for UndeliverableBus {
    fn create_topic(&self, name: &str, partitions: i32) -> cdp_bus::Result<()> {
        self.0.create_topic(name, partitions)
    }
    fn topics(&self) -> cdp_bus::Result<Vec<TopicInfo>> {
        self.0.topics()
    }
    fn producer(&self) -> cdp_bus::Result<Box<dyn Producer>> {
        Ok(Box::new(FailingProducer))
    }
    fn consumer(&self, options: ConsumerOptions) -> cdp_bus::Result<Box<dyn Consumer>> {
        self.0.consumer(options)
    }
    fn lag(&self, group: &str, topics: &[String]) -> cdp_bus::Result<u64> {
        self.0.lag(group, topics)
    }
    fn end_offsets(&self, topic: &str) -> cdp_bus::Result<Vec<i64>> {
        self.0.end_offsets(topic)
    }
}

#[test]
fn failed_delivery_stops_the_stage_without_committing() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open_bus(dir.path());
    let inputs = second_round();
    produce(&bus, &inputs);
    let config = IngestConfig::default();
    let counters = StageCounters::default();
    let shutdown = AtomicBool::new(false);
    let failing = UndeliverableBus(bus.clone());
    let err = stage::run(&failing, &config, &counters, &shutdown).unwrap_err();
    assert!(
        matches!(err, cdp_ingest::IngestError::Bus(BusError::Delivery { .. })),
        "{err}"
    );
    assert_eq!(
        bus.lag(&config.group, &raw_topics()).unwrap(),
        inputs.len() as u64
    );
    assert_eq!(counters.consumed(), 0);
    assert_eq!(
        bus.end_offsets("cdp.signals").unwrap().iter().sum::<i64>(),
        0
    );
}

#[test]
fn invalid_config_is_refused_before_consuming() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open_bus(dir.path());
    let config = IngestConfig {
        default_phone_region: "XX".into(),
        ..IngestConfig::default()
    };
    let err = stage::run(
        &bus,
        &config,
        &StageCounters::default(),
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(matches!(
        err,
        cdp_ingest::IngestError::Config {
            field: "default_phone_region",
            ..
        }
    ));
}

#[test]
fn process_batch_replaces_old_error_headers_and_ignores_foreign_topics() {
    let config = IngestConfig::default();
    let record = |topic: &str, value: &[u8], headers: Vec<(String, Vec<u8>)>| Record {
        topic: topic.into(),
        partition: 1,
        offset: 41,
        timestamp_ms: 1_717_200_000_000,
        key: Some(b"k".to_vec()),
        value: Some(value.to_vec()),
        headers,
    };
    let replayed = record(
        "cdp.raw.web",
        b"{",
        vec![
            (dlq::HEADER_CODE.into(), b"missing_field".to_vec()),
            ("cdp.tenant".into(), b"acme".to_vec()),
        ],
    );
    let foreign = record("cdp.raw.other", &fixture("web/identify.json"), Vec::new());
    let good = record("cdp.raw.web", &fixture("web/identify.json"), Vec::new());
    let out = process_batch(
        &config,
        &NormalizeOptions::default(),
        &[replayed, foreign, good],
    )
    .unwrap();
    assert_eq!((out.signals, out.dead_lettered), (1, 2));
    assert_eq!(out.records.len(), 3);

    let codes: Vec<&[u8]> = out.records[0]
        .headers
        .iter()
        .filter(|(k, _)| k == dlq::HEADER_CODE)
        .map(|(_, v)| v.as_slice())
        .collect();
    assert_eq!(
        codes,
        [b"invalid_json".as_slice()],
        "one, fresh, code header"
    );
    assert!(out.records[0]
        .headers
        .iter()
        .any(|(k, v)| k == "cdp.tenant" && v == b"acme"));
    assert_eq!(out.records[0].topic, "cdp.dlq");
    assert_eq!(out.records[1].topic, "cdp.dlq");
    assert_eq!(out.rejected.get(rejection::UNKNOWN_SHAPE), Some(&1));
    assert_eq!(out.records[2].topic, "cdp.signals");
    assert_eq!(out.records[2].key.as_deref(), Some(b"default".as_slice()));
    let s: Signal = serde_json::from_slice(out.records[2].value.as_deref().unwrap()).unwrap();
    assert_eq!(s.received_at.timestamp_millis(), 1_717_200_000_000);
}

#[test]
fn retried_events_are_dropped_once_within_the_window_and_counted() {
    let config = IngestConfig {
        dedup_window_ms: 60_000,
        ..IngestConfig::default()
    };
    let options = NormalizeOptions::default();
    let t0 = 1_717_200_000_000;
    let record = |partition: i32, offset: i64, at: i64, value: Vec<u8>| Record {
        topic: "cdp.raw.web".into(),
        partition,
        offset,
        timestamp_ms: at,
        key: None,
        value: Some(value),
        headers: Vec::new(),
    };
    let msg = |id: &str| {
        format!(r#"{{"type":"track","event":"Retry","messageId":"{id}","anonymousId":"a-1"}}"#)
    };
    let batch = |ids: &[&str]| {
        let messages: Vec<String> = ids.iter().map(|id| msg(id)).collect();
        format!(r#"{{"batch":[{}]}}"#, messages.join(","))
    };
    let mut dedup = Deduplicator::new(config.dedup_options());
    let first = [
        record(0, 0, t0, msg("m-1").into_bytes()),
        // A retry of m-1 on the same partition, and an envelope re-sending m-1 with a new m-2.
        record(0, 1, t0 + 1_000, msg("m-1").into_bytes()),
        record(0, 2, t0 + 2_000, batch(&["m-1", "m-2"]).into_bytes()),
        // Another partition remembers its own ids.
        record(1, 0, t0 + 2_000, msg("m-1").into_bytes()),
    ];
    let out = process_batch_with(&config, &options, &first, &mut dedup).unwrap();
    let ids: Vec<String> = out
        .records
        .iter()
        .map(|r| serde_json::from_slice::<Signal>(r.value.as_deref().unwrap()).unwrap())
        .map(|s| s.event_id)
        .collect();
    assert_eq!(ids, ["m-1", "m-2", "m-1"]);
    assert_eq!(out.duplicates.get(Some(cdp_proto::Source::Web)), 2);
    assert_eq!(
        out.outcomes
            .get(Some(cdp_proto::Source::Web), Outcome::Duplicate),
        1
    );
    assert_eq!(
        out.outcomes
            .get(Some(cdp_proto::Source::Web), Outcome::Accepted),
        3
    );

    // The memory lasts across batches, and only for the window.
    let later = [
        record(0, 3, t0 + 30_000, msg("m-2").into_bytes()),
        record(0, 4, t0 + 61_000, msg("m-1").into_bytes()),
    ];
    let out = process_batch_with(&config, &options, &later, &mut dedup).unwrap();
    assert_eq!(out.signals, 1);
    assert_eq!(out.duplicates.total(), 1);

    // With the window at 0 every copy passes.
    let off = IngestConfig {
        dedup_window_ms: 0,
        ..IngestConfig::default()
    };
    let out = process_batch(&off, &options, &first).unwrap();
    assert_eq!((out.signals, out.duplicates.total()), (5, 0));

    // The stage's metrics see the same counts.
    let metrics = IngestMetrics::default();
    metrics.record(&process_batch(&config, &options, &first).unwrap());
    assert_eq!(
        metrics.duplicate_events().get(Some(cdp_proto::Source::Web)),
        2
    );
    assert_eq!(
        metrics
            .records()
            .get(Some(cdp_proto::Source::Web), Outcome::Duplicate),
        1
    );
}

#[test]
fn events_without_identity_consent_are_counted_as_unlinked() {
    let config = IngestConfig::default();
    let record = |offset: i64, consent: &str| {
        Record {
        topic: "cdp.raw.web".into(),
        partition: 0,
        offset,
        timestamp_ms: 1_717_200_000_000,
        key: None,
        value: Some(
            format!(
                r#"{{"type":"identify","messageId":"m-{offset}","userId":"u-1","anonymousId":"a-1","context":{{"consent":{consent}}}}}"#
            )
            .into_bytes(),
        ),
        headers: Vec::new(),
    }
    };
    let records = [
        record(0, r#"{"ad_user_data":"denied"}"#),
        record(1, r#"{"ad_user_data":"granted"}"#),
    ];
    let out = process_batch(&config, &NormalizeOptions::default(), &records).unwrap();
    assert_eq!(out.signals, 2);
    assert_eq!(out.unlinked.get(Some(cdp_proto::Source::Web)), 1);
    let links: Vec<usize> = out
        .records
        .iter()
        .map(|r| serde_json::from_slice::<Signal>(r.value.as_deref().unwrap()).unwrap())
        .map(|s| s.links.len())
        .collect();
    assert_eq!(links, [0, 1]);
    let metrics = IngestMetrics::default();
    metrics.record(&out);
    assert_eq!(metrics.unlinked_events().total(), 1);
    assert_eq!(
        metrics
            .records()
            .get(Some(cdp_proto::Source::Web), Outcome::Accepted),
        2
    );
}
