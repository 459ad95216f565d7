//! The bus contract: what every stage relies on, written once over `&dyn Bus` and run against
//! both backends — the embedded RocksDB bus (`embedded::*`) and Kafka via a real Kafka-protocol
//! broker, tansu, on loopback (`kafka::*`; skipped with a notice when tansu is not installed,
//! failing instead when `CDP_REQUIRE_KAFKA=1`).
//!
//! Each case gets a topic-name prefix of its own so cases never see each other's data, even on
//! a shared broker.

mod support;

use cdp_bus::embedded::EmbeddedBus;
use cdp_bus::{
    advance, partition_for_key, Bus, BusError, Consumer, ConsumerOptions, OutRecord,
    PositionSource, Positions, Record, StartFrom, TopicInfo,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bounds how long a read may wait for records that should arrive, so a broken backend fails
/// the test instead of hanging it. Not a performance expectation.
const READ_DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(500);

/// Generates `embedded::<case>` and `kafka::<case>` for every contract case.
macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[test]
                fn $case() {
                    let dir = tempfile::tempdir().expect("tempdir");
                    let bus = cdp_bus::embedded::EmbeddedBus::open(dir.path()).expect("open bus");
                    super::$case(&bus, &super::prefix(stringify!($case)));
                }
            )*
        }
        mod kafka {
            $(
                #[test]
                fn $case() {
                    let Some(broker) = super::support::tansu::Tansu::start_or_skip(stringify!($case))
                    else {
                        return;
                    };
                    let bus = broker.bus();
                    super::$case(&bus, &super::prefix(stringify!($case)));
                }
            )*
        }
    };
}

contract!(
    create_topic_is_idempotent_and_listed,
    unknown_topics_are_reported,
    keyed_records_round_trip_in_partition_order,
    explicit_partition_and_timestamp_are_respected,
    tombstones_round_trip,
    group_resumes_exactly_after_committed_positions,
    groups_are_independent,
    lag_follows_commits,
    end_offsets_grow_with_writes,
    poll_on_empty_topic_returns_empty_after_timeout,
    reader_without_commit_sees_everything_and_stores_nothing,
    latest_reader_sees_only_new_records,
    failed_delivery_is_reported_once_and_producer_recovers,
    stored_position_behind_the_group_rereads_from_it,
    no_stored_position_starts_at_the_beginning_whatever_the_group_committed,
    stored_position_ahead_of_the_group_skips_ahead,
    stored_positions_apply_per_partition,
    stored_position_outside_the_log_restarts_at_the_beginning,
    failing_position_source_stops_the_consumer,
);

fn prefix(case: &str) -> String {
    format!("cdp-test-{}-{}", std::process::id(), case.replace('_', "-"))
}

// ---------------------------------------------------------------------------------------------
// Contract cases
// ---------------------------------------------------------------------------------------------

fn create_topic_is_idempotent_and_listed(bus: &dyn Bus, prefix: &str) {
    let orders = format!("{prefix}.orders");
    let users = format!("{prefix}.users");
    bus.create_topic(&orders, 3).expect("create");
    bus.create_topic(&orders, 3)
        .expect("creating an existing topic is not an error");
    // A different count for an existing topic leaves it as it is.
    bus.create_topic(&orders, 5)
        .expect("creating an existing topic is not an error");
    bus.create_topic(&users, 1).expect("create");

    let ours: Vec<TopicInfo> = bus
        .topics()
        .expect("topics")
        .into_iter()
        .filter(|t| t.name.starts_with(prefix))
        .collect();
    assert_eq!(
        ours,
        vec![
            TopicInfo {
                name: orders.clone(),
                partitions: 3
            },
            TopicInfo {
                name: users.clone(),
                partitions: 1
            },
        ]
    );
    assert_eq!(
        bus.end_offsets(&orders).expect("end offsets"),
        vec![0, 0, 0]
    );

    assert!(matches!(
        bus.create_topic("has space", 1),
        Err(BusError::InvalidTopicName(_))
    ));
    assert!(bus.create_topic(&format!("{prefix}.none"), 0).is_err());
}

fn unknown_topics_are_reported(bus: &dyn Bus, prefix: &str) {
    let missing = format!("{prefix}.missing");
    assert!(matches!(bus.end_offsets(&missing), Err(BusError::UnknownTopic(t)) if t == missing));
    assert!(matches!(
        bus.lag("g", std::slice::from_ref(&missing)),
        Err(BusError::UnknownTopic(t)) if t == missing
    ));
    let consumer = bus.consumer(ConsumerOptions::group(format!("{prefix}.g"), &[&missing]));
    assert!(matches!(consumer, Err(BusError::UnknownTopic(t)) if t == missing));
    // Asking about a topic does not create it.
    assert!(!bus
        .topics()
        .expect("topics")
        .iter()
        .any(|t| t.name == missing));
}

fn keyed_records_round_trip_in_partition_order(bus: &dyn Bus, prefix: &str) {
    let topic = format!("{prefix}.signals");
    let partitions = 4;
    bus.create_topic(&topic, partitions).expect("create");

    let sent: Vec<OutRecord> = (0..120)
        .map(|i| {
            // Binary-safe values (NUL, 0xff) and headers with a repeated name and an empty value.
            let mut value = format!("event-{i}").into_bytes();
            value.extend_from_slice(&[0, 0xff]);
            OutRecord::new(&topic, format!("user-{}", i % 13), value).with_headers(vec![
                ("cdp.seq".to_string(), i.to_string().into_bytes()),
                ("cdp.source".to_string(), b"web".to_vec()),
                ("cdp.seq".to_string(), b"again".to_vec()),
                ("empty".to_string(), Vec::new()),
            ])
        })
        .collect();
    produce(bus, sent.clone());

    let mut consumer = group_consumer(bus, &format!("{prefix}.g"), &topic);
    let received = read_exactly(consumer.as_mut(), sent.len());
    consumer.close().expect("close");

    for r in &received {
        let key = r.key.as_deref().expect("keyed record");
        assert_eq!(
            r.partition,
            partition_for_key(key, partitions),
            "key {:?} on the wrong partition",
            String::from_utf8_lossy(key)
        );
    }

    // Per partition: offsets 0, 1, 2, ... in exactly the order the records were sent.
    let by_partition = by_partition(&received);
    for (partition, records) in &by_partition {
        let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, (0..records.len() as i64).collect::<Vec<_>>());
        let expected: Vec<&Option<Vec<u8>>> = sent
            .iter()
            .filter(|s| {
                partition_for_key(s.key.as_deref().unwrap_or_default(), partitions) == *partition
            })
            .map(|s| &s.value)
            .collect();
        let got: Vec<&Option<Vec<u8>>> = records.iter().map(|r| &r.value).collect();
        assert_eq!(got, expected, "order on partition {partition}");
    }

    // Every record exactly as sent: key, value, and headers in order.
    let mut received_by_seq: Vec<&Record> = received.iter().collect();
    received_by_seq.sort_by_key(|r| seq(r));
    assert_eq!(received_by_seq.len(), sent.len());
    for (got, want) in received_by_seq.iter().zip(&sent) {
        assert_eq!(got.topic, want.topic);
        assert_eq!(got.key, want.key);
        assert_eq!(got.value, want.value);
        assert_eq!(got.headers, want.headers);
        assert_eq!(got.header("cdp.source"), Some(&b"web"[..]));
    }

    let ends = bus.end_offsets(&topic).expect("end offsets");
    let counts: Vec<i64> = (0..partitions)
        .map(|p| by_partition.get(&p).map_or(0, |r| r.len() as i64))
        .collect();
    assert_eq!(ends, counts);
}

fn explicit_partition_and_timestamp_are_respected(bus: &dyn Bus, prefix: &str) {
    let topic = format!("{prefix}.routed");
    bus.create_topic(&topic, 3).expect("create");
    let key = b"tenant-a".to_vec();
    // A partition the key would not hash to, so the test can tell the two apart.
    let forced = (partition_for_key(&key, 3) + 1) % 3;
    let ts = 1_700_000_000_123;
    let mut keyed = OutRecord::new(&topic, key.clone(), b"forced".to_vec()).with_partition(forced);
    keyed.timestamp_ms = Some(ts);
    let mut keyless = OutRecord::new(&topic, Vec::new(), b"keyless".to_vec()).with_partition(2);
    keyless.key = None;
    produce(bus, vec![keyed, keyless]);

    let mut consumer = group_consumer(bus, &format!("{prefix}.g"), &topic);
    let mut received = read_exactly(consumer.as_mut(), 2);
    consumer.close().expect("close");
    received.sort_by(|a, b| a.value.cmp(&b.value));

    let (forced_record, keyless_record) = (&received[0], &received[1]);
    assert_eq!(forced_record.value.as_deref(), Some(&b"forced"[..]));
    assert_eq!(forced_record.partition, forced);
    assert_eq!(forced_record.timestamp_ms, ts);
    assert_eq!(forced_record.key, Some(key));
    assert_eq!(keyless_record.partition, 2);
    assert_eq!(keyless_record.key, None);
}

fn tombstones_round_trip(bus: &dyn Bus, prefix: &str) {
    let topic = format!("{prefix}.membership");
    bus.create_topic(&topic, 2).expect("create");
    produce(
        bus,
        vec![
            OutRecord::new(&topic, "vip:profile-1", "{\"member\":true}"),
            OutRecord::tombstone(&topic, "vip:profile-1")
                .with_headers(vec![("reason".to_string(), b"exited".to_vec())]),
        ],
    );

    let mut consumer = group_consumer(bus, &format!("{prefix}.g"), &topic);
    let received = read_exactly(consumer.as_mut(), 2);
    consumer.close().expect("close");

    let (put, delete) = (&received[0], &received[1]);
    assert_eq!(put.value.as_deref(), Some(&b"{\"member\":true}"[..]));
    assert_eq!(delete.value, None, "a tombstone has no value");
    assert_eq!(delete.key.as_deref(), Some(&b"vip:profile-1"[..]));
    assert_eq!(delete.header("reason"), Some(&b"exited"[..]));
    assert_eq!(delete.partition, put.partition);
    assert_eq!(delete.offset, put.offset + 1);
}

fn group_resumes_exactly_after_committed_positions(bus: &dyn Bus, prefix: &str) {
    let topic = format!("{prefix}.events");
    let group = format!("{prefix}.g");
    bus.create_topic(&topic, 3).expect("create");
    produce(bus, keyed(&topic, 0..60));

    // First member reads everything but commits only the first half of each partition, as a
    // stage does when it crashes before flushing the rest.
    let mut first = group_consumer(bus, &group, &topic);
    let all = read_exactly(first.as_mut(), 60);
    let mut committed = Positions::new();
    for records in by_partition(&all).values() {
        advance(&mut committed, &records[..records.len() / 2]);
    }
    first.commit(&committed).expect("commit");
    first.close().expect("close");

    let expected_after = |records: &[Record]| -> BTreeSet<(i32, i64)> {
        records
            .iter()
            .filter(|r| r.offset >= start_of(&committed, &topic, r.partition))
            .map(|r| (r.partition, r.offset))
            .collect()
    };

    // A new member resumes at the committed positions: nothing before them, nothing skipped.
    let mut second = group_consumer(bus, &group, &topic);
    let want = expected_after(&all);
    let got = read_exactly(second.as_mut(), want.len());
    assert_resumes_at(&got, &committed, &topic);
    assert_eq!(coordinates(&got), want);
    // Reading without committing stores nothing: closing must not move the group on.
    second.close().expect("close");

    produce(bus, keyed(&topic, 60..69));
    let mut third = group_consumer(bus, &group, &topic);
    let all_written = read_all_with_reader(bus, &topic, 69);
    let want = expected_after(&all_written);
    let got = read_exactly(third.as_mut(), want.len());
    assert_resumes_at(&got, &committed, &topic);
    assert_eq!(coordinates(&got), want);

    let mut done = committed.clone();
    advance(&mut done, &got);
    third.commit(&done).expect("commit");
    third.close().expect("close");
    assert_eq!(
        bus.lag(&group, std::slice::from_ref(&topic)).expect("lag"),
        0
    );
}

fn groups_are_independent(bus: &dyn Bus, prefix: &str) {
    let topic = format!("{prefix}.profiles");
    let (a, b) = (format!("{prefix}.a"), format!("{prefix}.b"));
    bus.create_topic(&topic, 2).expect("create");
    produce(bus, keyed(&topic, 0..20));

    let mut consumer_a = group_consumer(bus, &a, &topic);
    let read_a = read_exactly(consumer_a.as_mut(), 20);
    let mut positions = Positions::new();
    advance(&mut positions, &read_a);
    consumer_a.commit(&positions).expect("commit");
    consumer_a.close().expect("close");

    let topics = [topic.clone()];
    assert_eq!(bus.lag(&a, &topics).expect("lag"), 0);
    assert_eq!(bus.lag(&b, &topics).expect("lag"), 20);

    // Group b starts from the beginning, whatever group a committed.
    let mut consumer_b = group_consumer(bus, &b, &topic);
    let read_b = read_exactly(consumer_b.as_mut(), 20);
    consumer_b.close().expect("close");
    assert_eq!(coordinates(&read_b), coordinates(&read_a));
    assert_eq!(bus.lag(&a, &topics).expect("lag"), 0);
}

fn lag_follows_commits(bus: &dyn Bus, prefix: &str) {
    let topic = format!("{prefix}.cohorts");
    let group = format!("{prefix}.g");
    let topics = [topic.clone()];
    bus.create_topic(&topic, 3).expect("create");
    assert_eq!(bus.lag(&group, &topics).expect("lag"), 0);

    produce(bus, keyed(&topic, 0..15));
    assert_eq!(
        bus.lag(&group, &topics).expect("lag"),
        15,
        "nothing committed yet"
    );

    let mut consumer = group_consumer(bus, &group, &topic);
    // `poll` never returns more than asked for.
    let mut read = Vec::new();
    let deadline = Instant::now() + READ_DEADLINE;
    while read.is_empty() {
        assert!(Instant::now() < deadline, "no record arrived");
        read = consumer.poll(4, POLL).expect("poll");
    }
    assert!(read.len() <= 4, "poll(4) returned {}", read.len());
    read.extend(read_exactly(consumer.as_mut(), 15 - read.len()));

    let mut positions = Positions::new();
    advance(&mut positions, &read);
    consumer.commit(&positions).expect("commit");
    assert_eq!(bus.lag(&group, &topics).expect("lag"), 0);

    produce(bus, keyed(&topic, 15..19));
    assert_eq!(bus.lag(&group, &topics).expect("lag"), 4);

    // Committing one partition leaves the others' records counted.
    let new = read_exactly(consumer.as_mut(), 4);
    let partition = new[0].partition;
    let on_partition: Vec<Record> = new
        .iter()
        .filter(|r| r.partition == partition)
        .cloned()
        .collect();
    advance(&mut positions, &on_partition);
    consumer.commit(&positions).expect("commit");
    assert_eq!(
        bus.lag(&group, &topics).expect("lag"),
        (4 - on_partition.len()) as u64
    );
    consumer.close().expect("close");
}

fn end_offsets_grow_with_writes(bus: &dyn Bus, prefix: &str) {
    let topic = format!("{prefix}.dlq");
    bus.create_topic(&topic, 2).expect("create");
    assert_eq!(bus.end_offsets(&topic).expect("end offsets"), vec![0, 0]);

    let to = |p: i32, n: std::ops::Range<u32>| -> Vec<OutRecord> {
        n.map(|i| OutRecord::new(&topic, format!("k{i}"), "v").with_partition(p))
            .collect()
    };
    produce(bus, [to(0, 0..3), to(1, 0..5)].concat());
    assert_eq!(bus.end_offsets(&topic).expect("end offsets"), vec![3, 5]);
    produce(bus, to(1, 5..7));
    assert_eq!(bus.end_offsets(&topic).expect("end offsets"), vec![3, 7]);
}

fn poll_on_empty_topic_returns_empty_after_timeout(bus: &dyn Bus, prefix: &str) {
    let topic = format!("{prefix}.quiet");
    bus.create_topic(&topic, 2).expect("create");
    let timeout = Duration::from_millis(300);

    let mut member = group_consumer(bus, &format!("{prefix}.g"), &topic);
    let mut reader = reader(bus, &format!("{prefix}.r"), &topic, StartFrom::Earliest);
    for consumer in [&mut member, &mut reader] {
        let started = Instant::now();
        let records = consumer.poll(10, timeout).expect("poll");
        assert!(records.is_empty(), "{records:?}");
        // A lower bound only: poll waits out its timeout when nothing arrives.
        assert!(started.elapsed() >= timeout);
    }
    member.close().expect("close");
    reader.close().expect("close");
}

fn reader_without_commit_sees_everything_and_stores_nothing(bus: &dyn Bus, prefix: &str) {
    let topic = format!("{prefix}.changes");
    let group = format!("{prefix}.g");
    let topics = [topic.clone()];
    bus.create_topic(&topic, 3).expect("create");
    produce(bus, keyed(&topic, 0..12));

    // The group has a position part-way through...
    let mut member = group_consumer(bus, &group, &topic);
    let first = read_exactly(member.as_mut(), 5);
    let mut positions = Positions::new();
    advance(&mut positions, &first);
    member.commit(&positions).expect("commit");
    member.close().expect("close");
    let lag = bus.lag(&group, &topics).expect("lag");
    assert_eq!(lag, 7);

    // ...which a reader named after it ignores, and cannot move.
    let mut reader = reader(bus, &group, &topic, StartFrom::Earliest);
    let all = read_exactly(reader.as_mut(), 12);
    let mut everything = Positions::new();
    advance(&mut everything, &all);
    reader
        .commit(&everything)
        .expect("a reader's commit is a no-op");
    reader.close().expect("close");

    assert_eq!(coordinates(&all).len(), 12);
    assert_eq!(bus.lag(&group, &topics).expect("lag"), lag);
}

fn latest_reader_sees_only_new_records(bus: &dyn Bus, prefix: &str) {
    let topic = format!("{prefix}.tail");
    bus.create_topic(&topic, 2).expect("create");
    produce(bus, keyed(&topic, 0..4));

    let mut tail = reader(bus, &format!("{prefix}.r"), &topic, StartFrom::Latest);
    produce(bus, keyed(&topic, 4..7));
    let got = read_exactly(tail.as_mut(), 3);
    tail.close().expect("close");
    let values: BTreeSet<Vec<u8>> = got.into_iter().filter_map(|r| r.value).collect();
    let want: BTreeSet<Vec<u8>> = (4..7).map(|i| format!("v{i}").into_bytes()).collect();
    assert_eq!(values, want);
}

fn failed_delivery_is_reported_once_and_producer_recovers(bus: &dyn Bus, prefix: &str) {
    let topic = format!("{prefix}.out");
    bus.create_topic(&topic, 2).expect("create");
    let mut producer = bus.producer().expect("producer");
    let bad = OutRecord::new(&topic, "k", "to nowhere").with_partition(7);
    let result = producer.send(bad).and_then(|()| producer.flush());
    assert!(
        result.is_err(),
        "writing to a partition that does not exist must fail"
    );

    // The failure was reported; the producer goes on delivering good records.
    producer
        .send(OutRecord::new(&topic, "k", "fine"))
        .expect("send");
    producer.flush().expect("flush after a reported failure");

    let mut consumer = group_consumer(bus, &format!("{prefix}.g"), &topic);
    let got = read_exactly(consumer.as_mut(), 1);
    consumer.close().expect("close");
    assert_eq!(got[0].value.as_deref(), Some(&b"fine"[..]));
    assert_eq!(
        bus.end_offsets(&topic)
            .expect("end offsets")
            .iter()
            .sum::<i64>(),
        1
    );
}

/// Ten records on partition 0 of a new one-partition topic, and `group` committed at `committed`.
fn one_partition_with_commit(bus: &dyn Bus, topic: &str, group: &str, committed: i64) {
    bus.create_topic(topic, 1).expect("create");
    produce(bus, on_partition(topic, 0, 0..10));
    commit_as(bus, group, topic, &[(0, committed)]);
    assert_eq!(
        bus.lag(group, &[topic.to_string()]).expect("lag"),
        (10 - committed) as u64,
        "the group committed {committed}"
    );
}

fn stored_position_behind_the_group_rereads_from_it(bus: &dyn Bus, prefix: &str) {
    let topic = format!("{prefix}.signals");
    let group = format!("{prefix}.g");
    one_partition_with_commit(bus, &topic, &group, 8);

    // The stage's state was restored from a backup taken at offset 3.
    let mut consumer = from_positions(bus, &group, &topic, &[(0, 3)]);
    let got = read_exactly(consumer.as_mut(), 7);
    assert_eq!(offsets(&got, 0), (3..10).collect::<Vec<_>>());

    // Commits still move the group, so lag reports what the stage has done.
    let mut positions = Positions::new();
    advance(&mut positions, &got);
    consumer.commit(&positions).expect("commit");
    consumer.close().expect("close");
    assert_eq!(bus.lag(&group, &[topic]).expect("lag"), 0);
}

fn no_stored_position_starts_at_the_beginning_whatever_the_group_committed(
    bus: &dyn Bus,
    prefix: &str,
) {
    let topic = format!("{prefix}.signals");
    let group = format!("{prefix}.g");
    one_partition_with_commit(bus, &topic, &group, 8);

    // A fresh volume: the state has nothing for the partition.
    let mut consumer = from_positions(bus, &group, &topic, &[]);
    let got = read_exactly(consumer.as_mut(), 10);
    consumer.close().expect("close");
    assert_eq!(offsets(&got, 0), (0..10).collect::<Vec<_>>());
    assert_eq!(
        bus.lag(&group, &[topic]).expect("lag"),
        2,
        "reading without committing leaves the group where it was"
    );
}

fn stored_position_ahead_of_the_group_skips_ahead(bus: &dyn Bus, prefix: &str) {
    let topic = format!("{prefix}.signals");
    let group = format!("{prefix}.g");
    // The stage flushed its state up to 7 but crashed before committing past 3.
    one_partition_with_commit(bus, &topic, &group, 3);

    let mut consumer = from_positions(bus, &group, &topic, &[(0, 7)]);
    let got = read_exactly(consumer.as_mut(), 3);
    consumer.close().expect("close");
    assert_eq!(offsets(&got, 0), vec![7, 8, 9]);
}

fn stored_positions_apply_per_partition(bus: &dyn Bus, prefix: &str) {
    let topic = format!("{prefix}.signals");
    let group = format!("{prefix}.g");
    bus.create_topic(&topic, 3).expect("create");
    produce(
        bus,
        [
            on_partition(&topic, 0, 0..10),
            on_partition(&topic, 1, 0..10),
            on_partition(&topic, 2, 0..10),
        ]
        .concat(),
    );
    commit_as(bus, &group, &topic, &[(0, 5), (1, 5), (2, 5)]);

    // Behind the group on 0, ahead on 1, nothing stored for 2.
    let mut consumer = from_positions(bus, &group, &topic, &[(0, 2), (1, 6)]);
    let got = read_exactly(consumer.as_mut(), 8 + 4 + 10);
    consumer.close().expect("close");
    assert_eq!(offsets(&got, 0), (2..10).collect::<Vec<_>>());
    assert_eq!(offsets(&got, 1), (6..10).collect::<Vec<_>>());
    assert_eq!(offsets(&got, 2), (0..10).collect::<Vec<_>>());
}

fn stored_position_outside_the_log_restarts_at_the_beginning(bus: &dyn Bus, prefix: &str) {
    let topic = format!("{prefix}.signals");
    let group = format!("{prefix}.g");
    one_partition_with_commit(bus, &topic, &group, 8);

    // State that belongs to another log (a recreated topic): re-reading is safe, skipping is not.
    let mut consumer = from_positions(bus, &group, &topic, &[(0, 1_000)]);
    let got = read_exactly(consumer.as_mut(), 10);
    consumer.close().expect("close");
    assert_eq!(offsets(&got, 0), (0..10).collect::<Vec<_>>());
}

fn failing_position_source_stops_the_consumer(bus: &dyn Bus, prefix: &str) {
    struct Unreadable;
    impl PositionSource for Unreadable {
        fn position(
            &self,
            _: &str,
            _: i32,
        ) -> Result<Option<i64>, Box<dyn std::error::Error + Send + Sync>> {
            Err("state store unreadable".into())
        }
    }
    let topic = format!("{prefix}.signals");
    let group = format!("{prefix}.g");
    one_partition_with_commit(bus, &topic, &group, 8);

    let mut options = ConsumerOptions::group(&group, &[&topic]);
    options.start = StartFrom::Positions(Arc::new(Unreadable));
    // Either creating the consumer fails, or (when partitions arrive later, with a group
    // rebalance) polling does; no record is ever read from an unknown start.
    let error = match bus.consumer(options) {
        Err(e) => e,
        Ok(mut consumer) => {
            let deadline = Instant::now() + READ_DEADLINE;
            loop {
                assert!(Instant::now() < deadline, "the failure was never reported");
                match consumer.poll(10, POLL) {
                    Ok(records) => assert!(records.is_empty(), "read {records:?}"),
                    Err(e) => break e,
                }
            }
        }
    };
    match error {
        BusError::Positions {
            topic: t,
            partition,
            reason,
        } => {
            assert_eq!((t.as_str(), partition), (topic.as_str(), 0));
            assert!(reason.contains("unreadable"), "{reason}");
        }
        other => panic!("expected a positions error, got {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Embedded only
// ---------------------------------------------------------------------------------------------

#[test]
fn embedded_records_survive_reopen_and_read_only_sees_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let topic = "cdp.signals";
    let group = "resolver";
    let topics = [topic.to_string()];
    {
        let bus = EmbeddedBus::open(dir.path()).expect("open");
        bus.create_topic(topic, 2).expect("create");
        produce(&bus, keyed(topic, 0..10));
        let mut consumer = group_consumer(&bus, group, topic);
        let read = read_exactly(consumer.as_mut(), 4);
        let mut positions = Positions::new();
        advance(&mut positions, &read);
        consumer.commit(&positions).expect("commit");
        consumer.close().expect("close");
    }

    let bus = EmbeddedBus::open(dir.path()).expect("reopen");
    assert_eq!(
        bus.topics().expect("topics"),
        vec![TopicInfo {
            name: topic.to_string(),
            partitions: 2
        }]
    );
    assert_eq!(
        bus.end_offsets(topic)
            .expect("end offsets")
            .iter()
            .sum::<i64>(),
        10
    );
    assert_eq!(bus.lag(group, &topics).expect("lag"), 6);
    let mut consumer = group_consumer(&bus, group, topic);
    let rest = read_exactly(consumer.as_mut(), 6);
    consumer.close().expect("close");
    let values: BTreeSet<Vec<u8>> = rest.into_iter().filter_map(|r| r.value).collect();
    assert_eq!(values.len(), 6);

    // The writer keeps the database open; a read-only view sees what it flushed.
    produce(&bus, keyed(topic, 10..12));
    let view = EmbeddedBus::open_read_only(dir.path()).expect("open read-only");
    assert_eq!(
        view.end_offsets(topic)
            .expect("end offsets")
            .iter()
            .sum::<i64>(),
        12
    );
    let mut reader = reader(&view, "inspect", topic, StartFrom::Earliest);
    let all = read_exactly(reader.as_mut(), 12);
    reader.close().expect("close");
    let values: BTreeSet<Vec<u8>> = all.into_iter().filter_map(|r| r.value).collect();
    let want: BTreeSet<Vec<u8>> = (0..12).map(|i| format!("v{i}").into_bytes()).collect();
    assert_eq!(values, want);
    assert!(view.producer().is_err(), "a read-only view cannot write");
    assert_eq!(
        view.lag(group, &topics).expect("lag"),
        8,
        "positions are visible read-only"
    );
}

// ---------------------------------------------------------------------------------------------
// Kafka only
// ---------------------------------------------------------------------------------------------

/// Partitions that move between members in a cooperative-sticky rebalance start at the stored
/// positions too — on the member that joins and on the one that gets them back — not where the
/// group or the previous owner was.
#[test]
fn kafka_rebalanced_partitions_start_at_stored_positions() {
    let Some(broker) = support::tansu::Tansu::start_or_skip("rebalanced_partitions") else {
        return;
    };
    let bus = broker.bus();
    let prefix = prefix("rebalanced_partitions");
    let topic = format!("{prefix}.signals");
    let group = format!("{prefix}.g");
    bus.create_topic(&topic, 2).expect("create");
    produce(
        &bus,
        [
            on_partition(&topic, 0, 0..10),
            on_partition(&topic, 1, 0..10),
        ]
        .concat(),
    );
    commit_as(&bus, &group, &topic, &[(0, 10), (1, 10)]);
    let stored = [(0, 4), (1, 6)];
    let stored_at = |p: i32| stored.iter().find(|(q, _)| *q == p).expect("stored").1;

    // The first member owns both partitions and keeps polling, so it takes part in rebalances.
    let mut first = from_positions(&bus, &group, &topic, &stored);
    let got = read_exactly(first.as_mut(), 6 + 4);
    assert_eq!(offsets(&got, 0), (4..10).collect::<Vec<_>>());
    assert_eq!(offsets(&got, 1), (6..10).collect::<Vec<_>>());
    let seen = Arc::new(std::sync::Mutex::new(Vec::<Record>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let (seen, stop) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            // Errors go back through `join`: a panic here would only add noise to the
            // main thread's report when that fails first and stops the broker.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let batch = first.poll(100, POLL)?;
                seen.lock().expect("lock").extend(batch);
            }
            first.close()
        })
    };

    // A second member joins and is handed one partition incrementally.
    let mut second = from_positions(&bus, &group, &topic, &stored);
    let mut moved = Vec::new();
    let deadline = Instant::now() + READ_DEADLINE;
    while moved.is_empty() {
        assert!(
            Instant::now() < deadline,
            "no partition moved to the new member"
        );
        moved = second.poll(10, POLL).expect("poll");
    }
    let partition = moved[0].partition;
    let want: Vec<i64> = (stored_at(partition)..10).collect();
    moved.extend(read_exactly(second.as_mut(), want.len() - moved.len()));
    assert_eq!(offsets(&moved, partition), want);
    assert_eq!(
        moved.len(),
        want.len(),
        "the new member read only its partition"
    );

    // When it leaves, the partition goes back to the first member, which starts it at the
    // stored position again rather than where it had read to.
    second.close().expect("close");
    let deadline = Instant::now() + READ_DEADLINE;
    loop {
        let back = offsets(&seen.lock().expect("lock"), partition);
        if back.len() >= want.len() {
            assert_eq!(back, want);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first member re-read {back:?} of {want:?} after getting partition {partition} back"
        );
        std::thread::sleep(POLL);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    poller
        .join()
        .expect("first member")
        .expect("first member polls and closes");
    let other = 1 - partition;
    assert!(
        offsets(&seen.lock().expect("lock"), other).is_empty(),
        "the partition the first member kept was not restarted"
    );
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn produce(bus: &dyn Bus, records: Vec<OutRecord>) {
    let mut producer = bus.producer().expect("producer");
    for record in records {
        producer.send(record).expect("send");
    }
    producer.flush().expect("flush");
}

/// Records `k{i % 7}` -> `v{i}` for `i` in `range`.
fn keyed(topic: &str, range: std::ops::Range<u32>) -> Vec<OutRecord> {
    range
        .map(|i| OutRecord::new(topic, format!("k{}", i % 7), format!("v{i}")))
        .collect()
}

fn group_consumer(bus: &dyn Bus, group: &str, topic: &str) -> Box<dyn Consumer> {
    bus.consumer(ConsumerOptions::group(group, &[topic]))
        .expect("consumer")
}

/// A group member that starts each partition where `stored` says (the beginning if not listed).
fn from_positions(
    bus: &dyn Bus,
    group: &str,
    topic: &str,
    stored: &[(i32, i64)],
) -> Box<dyn Consumer> {
    let positions: Positions = stored
        .iter()
        .map(|(p, offset)| ((topic.to_string(), *p), *offset))
        .collect();
    let mut options = ConsumerOptions::group(group, &[topic]);
    options.start = StartFrom::Positions(Arc::new(positions));
    bus.consumer(options).expect("consumer")
}

/// Commits `positions` for `group`, as an earlier member of it would have.
fn commit_as(bus: &dyn Bus, group: &str, topic: &str, positions: &[(i32, i64)]) {
    let mut member = group_consumer(bus, group, topic);
    // A Kafka member commits only partitions it owns, which it learns by polling.
    let total: i64 = bus.end_offsets(topic).expect("end offsets").iter().sum();
    read_exactly(member.as_mut(), total as usize);
    let positions: Positions = positions
        .iter()
        .map(|(p, offset)| ((topic.to_string(), *p), *offset))
        .collect();
    member.commit(&positions).expect("commit");
    member.close().expect("close");
}

/// Records `k{i}` -> `v{i}` for `i` in `range`, all on `partition`.
fn on_partition(topic: &str, partition: i32, range: std::ops::Range<u32>) -> Vec<OutRecord> {
    range
        .map(|i| OutRecord::new(topic, format!("k{i}"), format!("v{i}")).with_partition(partition))
        .collect()
}

/// Offsets of the records read on `partition`, in the order they arrived.
fn offsets(records: &[Record], partition: i32) -> Vec<i64> {
    records
        .iter()
        .filter(|r| r.partition == partition)
        .map(|r| r.offset)
        .collect()
}

fn reader(bus: &dyn Bus, group: &str, topic: &str, start: StartFrom) -> Box<dyn Consumer> {
    let mut options = ConsumerOptions::group(group, &[topic]);
    options.commit = false;
    options.start = start;
    bus.consumer(options).expect("reader")
}

/// Polls until exactly `n` records arrived (asking never for more than are still missing).
fn read_exactly(consumer: &mut dyn Consumer, n: usize) -> Vec<Record> {
    let deadline = Instant::now() + READ_DEADLINE;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "read {} of {n} records within {READ_DEADLINE:?}",
            out.len()
        );
        let batch = consumer.poll(n - out.len(), POLL).expect("poll");
        assert!(batch.len() <= n - out.len(), "poll returned more than max");
        out.extend(batch);
    }
    // Within a partition, records arrive in offset order.
    let mut last: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for r in &out {
        if let Some(prev) = last.insert((r.topic.as_str(), r.partition), r.offset) {
            assert!(
                r.offset > prev,
                "{}/{} went from {prev} to {}",
                r.topic,
                r.partition,
                r.offset
            );
        }
    }
    out
}

/// Everything in `topic` (which holds `n` records), read by a throw-away reader.
fn read_all_with_reader(bus: &dyn Bus, topic: &str, n: usize) -> Vec<Record> {
    let mut r = reader(bus, "snapshot", topic, StartFrom::Earliest);
    let all = read_exactly(r.as_mut(), n);
    r.close().expect("close");
    all
}

fn by_partition(records: &[Record]) -> BTreeMap<i32, Vec<Record>> {
    let mut out: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
    for r in records {
        out.entry(r.partition).or_default().push(r.clone());
    }
    for records in out.values_mut() {
        records.sort_by_key(|r| r.offset);
    }
    out
}

fn coordinates(records: &[Record]) -> BTreeSet<(i32, i64)> {
    let set: BTreeSet<(i32, i64)> = records.iter().map(|r| (r.partition, r.offset)).collect();
    assert_eq!(set.len(), records.len(), "a record was delivered twice");
    set
}

fn start_of(positions: &Positions, topic: &str, partition: i32) -> i64 {
    positions
        .get(&(topic.to_string(), partition))
        .copied()
        .unwrap_or(0)
}

/// The first record read on each partition is the one at the committed position.
fn assert_resumes_at(records: &[Record], committed: &Positions, topic: &str) {
    for (partition, records) in by_partition(records) {
        assert_eq!(
            records[0].offset,
            start_of(committed, topic, partition),
            "partition {partition} did not resume at its committed position"
        );
    }
}

fn seq(record: &Record) -> u32 {
    let raw = record.header("cdp.seq").expect("cdp.seq header");
    std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("numeric cdp.seq")
}
