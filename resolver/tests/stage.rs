//! The stage's writes land on a thread of their own while it applies the next batch; what a
//! batch publishes must still wait for its write. A store whose writes can be held shows it.

mod support;

use cdp_bus::embedded::EmbeddedBus;
use cdp_bus::{Bus, ConsumerOptions, OutRecord, Producer};
use cdp_proto::{Identifier, IdentifierKind, Source};
use cdp_resolver::stage::{self, stored_offset, ResolverCounters};
use cdp_resolver::store::{Cf, GraphStore, Op};
use cdp_resolver::{MemStore, ResolverConfig, Result};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};
use support::{signal, FailingStore};

/// A store whose writes wait while it is held.
#[derive(Default)]
struct Held {
    inner: MemStore,
    held: Mutex<bool>,
    released: Condvar,
    /// Writes that have begun (landed or waiting).
    begun: AtomicUsize,
}

impl Held {
    fn hold(&self, on: bool) {
        *self.held.lock().unwrap() = on;
        self.released.notify_all();
    }
}

impl GraphStore for Held {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get(cf, key)
    }

    fn write(&self, ops: Vec<Op>) -> Result<()> {
        self.begun.fetch_add(1, Ordering::SeqCst);
        let mut held = self.held.lock().unwrap();
        while *held {
            held = self.released.wait(held).unwrap();
        }
        self.inner.write(ops)
    }

    fn scan_prefix(&self, cf: Cf, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner.scan_prefix(cf, prefix)
    }
}

/// Releases the store and stops the stage when dropped, so a failed assertion does not leave
/// the test waiting on a stage that runs on.
struct Stop<'a>(&'a Held, &'a AtomicBool);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        self.0.hold(false);
        self.1.store(true, Ordering::SeqCst);
    }
}

/// Sends person `n`'s signal (one hashed email) to the resolver's input.
fn send_signal(producer: &mut dyn Producer, config: &ResolverConfig, n: i64) {
    let ids = [Identifier::new(
        IdentifierKind::EmailSha256,
        format!("{n:064x}"),
    )];
    let s = signal(n, Source::Web, &ids, "deterministic_login", 1.0);
    producer
        .send(OutRecord::new(
            &config.signals_topic,
            Vec::new(),
            serde_json::to_vec(&s).unwrap(),
        ))
        .unwrap();
    producer.flush().unwrap();
}

fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_batch_is_published_only_once_its_write_has_landed() {
    let config = ResolverConfig::default();
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path()).unwrap();
    for topic in [
        &config.signals_topic,
        &config.commands_topic,
        &config.profiles_topic,
        &config.changes_topic,
        &config.dlq_topic,
    ] {
        bus.create_topic(topic, 1).unwrap();
    }
    let mut producer = bus.producer().unwrap();
    let mut send = |n: i64| send_signal(producer.as_mut(), &config, n);
    let mut profiles = bus
        .consumer(ConsumerOptions::group("check", &[&config.profiles_topic]))
        .unwrap();
    let mut read = |wait_ms: u64| {
        profiles
            .poll(100, Duration::from_millis(wait_ms))
            .unwrap()
            .len()
    };

    let store = Held::default();
    let (counters, shutdown) = (ResolverCounters::default(), AtomicBool::new(false));
    std::thread::scope(|scope| {
        let stage = scope.spawn(|| stage::run(&bus, &store, &config, &counters, &shutdown));
        let stop = Stop(&store, &shutdown);
        // One person applied and published: the stage is running.
        send(0);
        let mut seen = 0;
        until("the first profile", || {
            seen += read(10);
            seen == 1
        });

        until("the first outbox emptied", || {
            store.inner.scan_prefix(Cf::Outbox, b"").unwrap().is_empty()
        });

        // The next person's batch is applied and its write handed over, but held.
        store.hold(true);
        let before = store.begun.load(Ordering::SeqCst);
        send(1);
        until("the held write", || {
            store.begun.load(Ordering::SeqCst) > before
        });
        assert_eq!(read(300), 0, "published before its write landed");
        assert_eq!(
            stored_offset(&store.inner, &config.signals_topic, 0).unwrap(),
            Some(1),
            "nothing of the held batch is in the store"
        );

        store.hold(false);
        until("the second profile", || {
            seen += read(10);
            seen == 2
        });
        until("the second offset", || {
            stored_offset(&store.inner, &config.signals_topic, 0).unwrap() == Some(2)
        });
        drop(stop);
        stage.join().unwrap().unwrap();
    });
    assert_eq!(read(10), 0, "each profile once");
    assert!(
        store.inner.scan_prefix(Cf::Outbox, b"").unwrap().is_empty(),
        "everything published was removed from the outbox"
    );
}

#[test]
fn a_write_failing_on_the_writer_thread_stops_the_stage_with_its_error() {
    let config = ResolverConfig::default();
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path()).unwrap();
    for topic in config.input_topics() {
        bus.create_topic(topic, 1).unwrap();
    }
    send_signal(bus.producer().unwrap().as_mut(), &config, 0);

    let store = FailingStore::new(Some(0));
    let (counters, shutdown) = (ResolverCounters::default(), AtomicBool::new(false));
    let err = std::thread::scope(|scope| {
        let stage = scope.spawn(|| stage::run(&bus, &store, &config, &counters, &shutdown));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !stage.is_finished() {
            if Instant::now() > deadline {
                shutdown.store(true, Ordering::SeqCst);
                panic!("the stage kept running on a failing store");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        stage.join().unwrap().unwrap_err()
    });
    assert!(err.to_string().contains("injected write failure"), "{err}");
    assert_eq!(
        stored_offset(&store.inner, &config.signals_topic, 0).unwrap(),
        None
    );
}
