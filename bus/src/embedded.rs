//! The embedded bus: topics, partitions, offsets and consumer-group positions stored in one RocksDB
//! database inside the process. It is what `cdp run` and `cdp demo` use by default, so a laptop
//! runs the same stage code that runs against Kafka, with nothing else installed.
//!
//! Layout: each partition of each topic is a column family of its own, `log/<topic>/<partition>`,
//! mapping the offset (be64) to an encoded record; `meta` holds topic partition counts and group
//! positions. Every flush is one atomic `WriteBatch` written through the WAL, so a killed process
//! loses no acknowledged record.
//!
//! A partition is appended to only, so each file RocksDB flushes from a partition's column family
//! lies after everything already in it, and compaction moves it down the levels without
//! rewriting it. In one column family for the whole log, every flush held new offsets of every
//! partition, each file's key range spanned the whole log, and each compaction rewrote all of it:
//! the cost of writing grew with the log. A bus written that way (a `log` column family) is
//! moved to this layout when it is opened for writing.
//!
//! The stages of one process read what the others have just written, so each partition also
//! keeps its newest records in memory (at most [`TAIL_BYTES`]): a consumer at or near the end
//! of a partition is served from there, and only one that has fallen further behind (or reads
//! a bus opened again) reads RocksDB. A flush wakes only the consumers waiting on its topics.

use crate::record::codec;
use crate::{
    partition_for_key, stored_position, validate_topic_name, Bus, BusError, Consumer,
    ConsumerOptions, OutRecord, Positions, Producer, Record, Result, StartFrom, TopicInfo,
};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode,
    Options, WriteBatch, DB,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const CF_META: &str = "meta";
/// The whole log in one column family, keyed `topic \0 partition(be32) offset(be64)`: the layout
/// before each partition had a column family of its own.
const CF_LEGACY_LOG: &str = "log";

/// Memtable bytes of one column family before it is flushed.
const WRITE_BUFFER: usize = 16 << 20;
/// Memtable bytes of all column families together; past it the oldest memtable is flushed.
const DB_WRITE_BUFFER: usize = 128 << 20;
/// WAL bytes kept before the column families holding the oldest WAL file are flushed: a
/// partition written rarely would otherwise keep every WAL file written since.
const MAX_WAL: u64 = 256 << 20;
/// One block cache for all column families (each would otherwise get its own).
const BLOCK_CACHE: usize = 32 << 20;
/// Bytes of records per write batch when a bus is moved to the current layout.
const UPGRADE_BATCH_BYTES: usize = 8 << 20;

/// The embedded backend. Cheap to clone; all clones share one database.
#[derive(Clone)]
pub struct EmbeddedBus {
    inner: Arc<Inner>,
    fetch: Fetch,
}

/// How long a consumer group's poll waits for records to gather, as Kafka's `fetch.min.bytes`
/// and `fetch.wait.max.ms` do: a poll that finds fewer than `min_records` waits `max_wait` (at
/// most its own timeout) once, then returns what has arrived by then, up to its maximum.
///
/// Each batch a stage applies has costs its records share: a write to its state, one to the
/// bus, the wake-up of the next stage. At a few thousand records a second per stage, polls
/// that return each flush as it lands apply batches of a handful of records. Throw-away
/// readers (`commit: false`, such as `cdp topic read`) never wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetch {
    pub min_records: usize,
    pub max_wait: Duration,
}

impl Default for Fetch {
    /// Return at once: what a poll has always done.
    fn default() -> Self {
        Self {
            min_records: 1,
            max_wait: Duration::ZERO,
        }
    }
}

/// Locks are taken in the order `append`, `db`, `state`, and `db` is never taken again by a
/// thread that holds it (a waiting writer would block the second read).
struct Inner {
    /// Locked for writing only to create a topic's column families.
    db: RwLock<DB>,
    /// Options of every column family (one block cache among them).
    cf_options: Options,
    read_only: bool,
    /// Held by a producer from choosing its offsets to making its records readable, so producers
    /// append in turn; `state` is only locked around the reads and updates in between, so
    /// consumers are not held up while a flush is written. Lag and end offsets are read in a
    /// turn too: a flush writes a group's positions to RocksDB with its records before the
    /// partitions take the records, and read in between, positions would be past the ends the
    /// partitions show (a run until drained could stop before the records were consumed).
    append: Mutex<()>,
    state: Mutex<State>,
}

/// Bytes of the newest records each partition keeps in memory (keys, values and headers).
pub const TAIL_BYTES: usize = 1 << 20;

/// What the bus holds in memory, under one lock.
#[derive(Default)]
struct State {
    /// The partitions of each topic.
    topics: BTreeMap<String, Vec<Partition>>,
    /// Consumers blocked in `poll` until a record arrives on one of their topics.
    waiting: Vec<Waiter>,
    /// Bumped by [`Bus::wake_consumers`]: a poll that sees it change returns.
    wake_ups: u64,
}

#[derive(Default)]
struct Partition {
    /// The next offset to assign.
    end: i64,
    /// The newest records, the last at offset `end - 1`, in order and without gaps.
    tail: VecDeque<Arc<Record>>,
    tail_bytes: usize,
}

impl Partition {
    fn new(end: i64) -> Self {
        Self {
            end,
            ..Self::default()
        }
    }

    /// Appends the record at offset `end` (producers append in turn, so the offset a flush
    /// chose is that one), then drops the oldest kept records past the budget.
    fn append(&mut self, record: Record) {
        debug_assert_eq!(record.offset, self.end, "offsets are appended without gaps");
        self.end += 1;
        self.tail_bytes += size_of(&record);
        self.tail.push_back(Arc::new(record));
        while self.tail_bytes > TAIL_BYTES && self.tail.len() > 1 {
            let oldest = self.tail.pop_front().expect("more than one record kept");
            self.tail_bytes -= size_of(&oldest);
        }
    }

    /// Up to `max` records from offset `from`, if the tail still holds it.
    fn kept_from(&self, from: i64, max: usize) -> Option<Vec<Arc<Record>>> {
        let first = self.end - self.tail.len() as i64;
        if from < first || from >= self.end {
            return None;
        }
        let skip = (from - first) as usize;
        Some(self.tail.iter().skip(skip).take(max).cloned().collect())
    }

    /// Forgets kept records below `offset` (expired from the log).
    fn drop_below(&mut self, offset: i64) {
        while let Some(oldest) = self.tail.front() {
            if oldest.offset >= offset {
                break;
            }
            self.tail_bytes -= size_of(oldest);
            self.tail.pop_front();
        }
    }
}

/// What a kept record counts against [`TAIL_BYTES`].
fn size_of(r: &Record) -> usize {
    64 + r.key.as_ref().map_or(0, Vec::len)
        + r.value.as_ref().map_or(0, Vec::len)
        + r.headers
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

/// A consumer blocked in `poll`: woken (and taken off the list) by a flush to one of `topics`.
struct Waiter {
    topics: Arc<[String]>,
    wake: Arc<Condvar>,
}

impl EmbeddedBus {
    /// Opens (creating if needed) the bus stored in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with_topics(dir, &[])
    }

    /// Opens (creating if needed) the bus stored in `dir` with `topics` (name, partitions)
    /// created as [`Bus::create_topic`] creates them. Their partitions' column families are
    /// created with the database, at once: RocksDB rewrites a file listing every column family's
    /// options for each one created in an open database, so creating a few dozen one by one
    /// takes a noticeable part of a second.
    pub fn open_with_topics(dir: &Path, topics: &[(&str, i32)]) -> Result<Self> {
        for (name, partitions) in topics {
            validate_topic(name, *partitions)?;
        }
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_db_write_buffer_size(DB_WRITE_BUFFER);
        opts.set_max_total_wal_size(MAX_WAL);
        let cf_options = cf_options();
        let mut names = existing_column_families(dir)?;
        let mut wanted = vec![CF_META.to_string()];
        for (topic, partitions) in topics {
            // A topic with column families was created before, maybe with other partitions.
            if !names.contains(&partition_cf_name(topic, 0)) {
                wanted.extend((0..*partitions).map(|p| partition_cf_name(topic, p)));
            }
        }
        for name in wanted {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        let cfs = names
            .iter()
            .map(|n| ColumnFamilyDescriptor::new(n, cf_options.clone()));
        let mut db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(storage)?;
        if names.iter().any(|n| n == CF_LEGACY_LOG) {
            upgrade_legacy_log(&mut db, &cf_options)?;
        }
        let bus = Self::from_db(db, cf_options, false)?;
        for (name, partitions) in topics {
            bus.create_topic(name, *partitions)?;
        }
        Ok(bus)
    }

    /// Opens the bus in `dir` for reading while another process owns it (a point-in-time view:
    /// topics created after it was opened are not seen).
    pub fn open_read_only(dir: &Path) -> Result<Self> {
        let cf_options = cf_options();
        let names = existing_column_families(dir)?;
        if names.iter().any(|n| n == CF_LEGACY_LOG) {
            return Err(BusError::Storage(format!(
                "the bus in {} has the layout of an older cdp: open it for writing once \
                 (`cdp run`, or any command while no other process has it open) to move it",
                dir.display()
            )));
        }
        let db = DB::open_cf_for_read_only(&cf_options, dir, names, false).map_err(storage)?;
        Self::from_db(db, cf_options, true)
    }

    /// Sets how consumer groups made from now on wait for records to gather.
    pub fn with_fetch(mut self, fetch: Fetch) -> Self {
        self.fetch = fetch;
        self
    }

    fn from_db(mut db: DB, cf_options: Options, read_only: bool) -> Result<Self> {
        let mut topics = BTreeMap::new();
        for (topic, partitions) in stored_topics(&db)? {
            let mut parts = Vec::with_capacity(partitions as usize);
            for p in 0..partitions as i32 {
                let name = partition_cf_name(&topic, p);
                if db.cf_handle(&name).is_none() {
                    // Created with the topic; a read-only view of a bus whose topic is being
                    // created sees its partitions empty.
                    if read_only {
                        parts.push(Partition::new(0));
                        continue;
                    }
                    db.create_cf(&name, &cf_options).map_err(storage)?;
                }
                let cf = db.cf_handle(&name).expect("created above");
                let end = match db.iterator_cf(cf, IteratorMode::End).next() {
                    Some(Ok((k, _))) => decode_offset(&k) + 1,
                    Some(Err(e)) => return Err(storage(e)),
                    None => 0,
                };
                parts.push(Partition::new(end));
            }
            topics.insert(topic, parts);
        }
        Ok(Self {
            fetch: Fetch::default(),
            inner: Arc::new(Inner {
                db: RwLock::new(db),
                cf_options,
                read_only,
                append: Mutex::new(()),
                state: Mutex::new(State {
                    topics,
                    waiting: Vec::new(),
                    wake_ups: 0,
                }),
            }),
        })
    }

    fn committed(&self, group: &str, topic: &str, partition: i32) -> Result<Option<i64>> {
        let db = self.inner.db();
        let v = db
            .get_cf(meta(&db), group_key(group, topic, partition))
            .map_err(storage)?;
        Ok(v.and_then(|b| b.as_slice().try_into().ok().map(i64::from_le_bytes)))
    }
}

/// Options of every column family of one database: LZ4, and one block cache among them.
fn cf_options() -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&Cache::new_lru_cache(BLOCK_CACHE));
    let mut opts = Options::default();
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    opts.set_write_buffer_size(WRITE_BUFFER);
    opts.set_block_based_table_factory(&table);
    opts
}

/// The column families of the database in `dir` (none if there is no database yet).
fn existing_column_families(dir: &Path) -> Result<Vec<String>> {
    if !dir.join("CURRENT").exists() {
        return Ok(Vec::new());
    }
    DB::list_cf(&Options::default(), dir).map_err(storage)
}

/// Each topic and its partition count, as `meta` holds them.
fn stored_topics(db: &DB) -> Result<Vec<(String, u32)>> {
    let meta = meta(db);
    let mut topics = Vec::new();
    for item in db.prefix_iterator_cf(meta, b"t\0") {
        let (k, v) = item.map_err(storage)?;
        if !k.starts_with(b"t\0") {
            break;
        }
        let topic = String::from_utf8_lossy(&k[2..]).into_owned();
        let partitions = u32::from_le_bytes(
            v.get(..4)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(corrupt_meta)?,
        );
        topics.push((topic, partitions));
    }
    Ok(topics)
}

/// Moves every record of the whole-log column family into its partition's column family, then
/// drops the old one. Records are copied as they are stored; a copy cut short is made again
/// from the start the next time the bus is opened, as the old column family is dropped last.
fn upgrade_legacy_log(db: &mut DB, cf_options: &Options) -> Result<()> {
    for (topic, partitions) in stored_topics(db)? {
        for p in 0..partitions as i32 {
            let name = partition_cf_name(&topic, p);
            if db.cf_handle(&name).is_none() {
                db.create_cf(&name, cf_options).map_err(storage)?;
            }
            let legacy = db.cf_handle(CF_LEGACY_LOG).expect("opened with it");
            let cf = db.cf_handle(&name).expect("created above");
            let prefix = partition_prefix(&topic, p);
            let mut batch = WriteBatch::default();
            let it = db.iterator_cf(legacy, IteratorMode::From(&prefix, Direction::Forward));
            for item in it {
                let (k, v) = item.map_err(storage)?;
                if !k.starts_with(&prefix) {
                    break;
                }
                batch.put_cf(cf, offset_key(decode_offset(&k)), v);
                if batch.size_in_bytes() >= UPGRADE_BATCH_BYTES {
                    db.write(std::mem::take(&mut batch)).map_err(storage)?;
                }
            }
            db.write(batch).map_err(storage)?;
        }
    }
    db.drop_cf(CF_LEGACY_LOG).map_err(storage)
}

fn validate_topic(name: &str, partitions: i32) -> Result<()> {
    validate_topic_name(name)?;
    if partitions < 1 {
        return Err(BusError::Storage(format!(
            "topic {name:?} needs at least one partition"
        )));
    }
    Ok(())
}

fn meta(db: &DB) -> &ColumnFamily {
    db.cf_handle(CF_META).expect("meta cf exists")
}

/// The column family of `topic`'s `partition`, created with the topic.
fn partition_cf<'a>(db: &'a DB, topic: &str, partition: i32) -> Result<&'a ColumnFamily> {
    db.cf_handle(&partition_cf_name(topic, partition))
        .ok_or_else(|| BusError::UnknownTopic(format!("{topic} (partition {partition})")))
}

fn partition_cf_name(topic: &str, partition: i32) -> String {
    format!("log/{topic}/{partition}")
}

impl Inner {
    fn db(&self) -> RwLockReadGuard<'_, DB> {
        // Nothing under this lock is left half-changed by a panic: RocksDB's calls are atomic.
        self.db.read().unwrap_or_else(|e| e.into_inner())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every change under this lock is made after the write it reflects succeeded, in steps
        // that leave it consistent: a panic while holding it cannot leave it half-updated.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// End offset of each partition of `topic`.
    /// The producers' turn ([`Inner::append`]), also taken to read ends and positions together.
    fn turn(&self) -> std::sync::MutexGuard<'_, ()> {
        self.append.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ends(&self, topic: &str) -> Result<Vec<i64>> {
        self.state()
            .topics
            .get(topic)
            .map(|parts| parts.iter().map(|p| p.end).collect())
            .ok_or_else(|| BusError::UnknownTopic(topic.to_string()))
    }

    fn writable(&self) -> Result<()> {
        if self.read_only {
            Err(BusError::Storage("bus opened read-only".into()))
        } else {
            Ok(())
        }
    }
}

impl Bus for EmbeddedBus {
    fn rocksdb_stats(&self) -> Option<crate::RocksDbStats> {
        let mut names = vec![CF_META.to_string()];
        for (topic, parts) in &self.inner.state().topics {
            names.extend((0..parts.len() as i32).map(|p| partition_cf_name(topic, p)));
        }
        let db = self.inner.db();
        Some(crate::RocksDbStats::read(
            &db,
            names.iter().map(String::as_str),
        ))
    }

    fn create_topic(&self, name: &str, partitions: i32) -> Result<()> {
        validate_topic(name, partitions)?;
        self.inner.writable()?;
        // Column families are created under the write lock, which waits for every read.
        let mut db = self.inner.db.write().unwrap_or_else(|e| e.into_inner());
        let mut state = self.inner.state();
        if state.topics.contains_key(name) {
            return Ok(());
        }
        // The partitions first: a topic listed in `meta` has them all.
        for p in 0..partitions {
            let cf = partition_cf_name(name, p);
            if db.cf_handle(&cf).is_none() {
                db.create_cf(&cf, &self.inner.cf_options).map_err(storage)?;
            }
        }
        let mut key = b"t\0".to_vec();
        key.extend_from_slice(name.as_bytes());
        db.put_cf(meta(&db), key, (partitions as u32).to_le_bytes())
            .map_err(storage)?;
        state.topics.insert(
            name.to_string(),
            (0..partitions).map(|_| Partition::new(0)).collect(),
        );
        Ok(())
    }

    fn topics(&self) -> Result<Vec<TopicInfo>> {
        Ok(self
            .inner
            .state()
            .topics
            .iter()
            .map(|(name, p)| TopicInfo {
                name: name.clone(),
                partitions: p.len() as i32,
            })
            .collect())
    }

    fn producer(&self) -> Result<Box<dyn Producer>> {
        self.inner.writable()?;
        Ok(Box::new(EmbeddedProducer {
            inner: self.inner.clone(),
            pending: Vec::new(),
            behind: None,
        }))
    }

    fn consumer(&self, options: ConsumerOptions) -> Result<Box<dyn Consumer>> {
        if options.commit {
            self.inner.writable()?;
        }
        // Each topic once, in name order, then its partitions in order.
        let topics: BTreeSet<String> = options.topics.iter().cloned().collect();
        let mut assignment = Vec::new();
        let mut positions = Vec::new();
        for topic in &topics {
            for (p, end) in self.inner.ends(topic)?.iter().enumerate() {
                let p = p as i32;
                // A throw-away reader never starts at the group's position.
                let committed = || {
                    if options.commit {
                        self.committed(&options.group, topic, p)
                    } else {
                        Ok(None)
                    }
                };
                let start = match &options.start {
                    StartFrom::Earliest => committed()?.unwrap_or(0),
                    StartFrom::Latest => committed()?.unwrap_or(*end),
                    // The stage's state decides; the group's position is only reported. A
                    // position outside the log belongs to another one: re-read from the start.
                    StartFrom::Positions(source) => {
                        match stored_position(source.as_ref(), topic, p)? {
                            Some(pos) if (0..=*end).contains(&pos) => pos,
                            _ => 0,
                        }
                    }
                };
                assignment.push((topic.clone(), p));
                positions.push(start);
            }
        }
        Ok(Box::new(EmbeddedConsumer {
            inner: self.inner.clone(),
            group: options.group,
            commit: options.commit,
            topics: topics.into_iter().collect(),
            assignment,
            positions,
            cursor: 0,
            wake: Arc::new(Condvar::new()),
            fetch: if options.commit {
                self.fetch
            } else {
                Fetch::default()
            },
        }))
    }

    fn lag(&self, group: &str, topics: &[String]) -> Result<u64> {
        // In a producer's turn, so that positions and ends are read from the same side of its
        // write (see `Inner::append`).
        let _turn = self.inner.turn();
        let mut lag = 0u64;
        for topic in topics {
            for (p, end) in self.inner.ends(topic)?.iter().enumerate() {
                let pos = self.committed(group, topic, p as i32)?.unwrap_or(0);
                lag += (*end - pos).max(0) as u64;
            }
        }
        Ok(lag)
    }

    /// Each partition keeps at least its last record, whatever its age: the end offset is read
    /// back from it when the bus is opened again, and offsets must never be reused.
    fn expire(&self, topic: &str, cutoff_ms: i64) -> Result<u64> {
        self.inner.writable()?;
        let Ok(ends) = self.inner.ends(topic) else {
            return Ok(0);
        };
        let mut expired = 0;
        for (p, end) in ends.iter().enumerate() {
            let p = p as i32;
            let db = self.inner.db();
            let cf = partition_cf(&db, topic, p)?;
            let mut first = None;
            let mut keep_from = None;
            for item in db.iterator_cf(cf, IteratorMode::Start) {
                let (k, v) = item.map_err(storage)?;
                let offset = decode_offset(&k);
                first.get_or_insert(offset);
                let written = v
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(i64::from_le_bytes)
                    .ok_or_else(|| BusError::Corrupt {
                        topic: topic.to_string(),
                        partition: p,
                        offset,
                    })?;
                if written >= cutoff_ms || offset + 1 >= *end {
                    keep_from = Some(offset);
                    break;
                }
                expired += 1;
            }
            let (Some(first), Some(keep_from)) = (first, keep_from) else {
                continue;
            };
            if keep_from == first {
                continue;
            }
            // Files holding only expired offsets go at once (their range ends before
            // `keep_from`, inclusive): compaction moves a log's files down without rewriting them,
            // so the range deletion alone could leave them on disk.
            db.delete_file_in_range_cf(cf, offset_key(first), offset_key(keep_from - 1))
                .map_err(storage)?;
            db.delete_range_cf(cf, offset_key(first), offset_key(keep_from))
                .map_err(storage)?;
            drop(db);
            if let Some(part) = self
                .inner
                .state()
                .topics
                .get_mut(topic)
                .and_then(|parts| parts.get_mut(p as usize))
            {
                part.drop_below(keep_from);
            }
        }
        Ok(expired)
    }

    fn end_offsets(&self, topic: &str) -> Result<Vec<i64>> {
        let _turn = self.inner.turn();
        self.inner.ends(topic)
    }

    fn wake_consumers(&self) {
        let mut state = self.inner.state();
        state.wake_ups += 1;
        for w in state.waiting.drain(..) {
            w.wake.notify_all();
        }
    }
}

struct EmbeddedProducer {
    inner: Arc<Inner>,
    pending: Vec<OutRecord>,
    /// The thread writing behind the caller ([`Producer::flush_behind`]), once one was asked.
    behind: Option<Behind>,
}

/// A producer's writer thread: one write at a time, in the order they were handed over.
struct Behind {
    jobs: mpsc::Sender<Job>,
    done: mpsc::Receiver<Result<()>>,
    /// A write handed over whose outcome was not collected yet.
    in_flight: bool,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What one write behind holds: the records, and the group's positions to store with them.
struct Job {
    pending: Vec<OutRecord>,
    commit: Option<(String, Positions)>,
}

impl Behind {
    fn spawn(inner: Arc<Inner>) -> Result<Self> {
        let (jobs, todo) = mpsc::channel::<Job>();
        let (report, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("bus-write".into())
            .spawn(move || {
                for job in todo {
                    let commit = job.commit.as_ref().map(|(g, p)| (g.as_str(), p));
                    if report.send(write(&inner, job.pending, commit)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| BusError::Storage(format!("cannot start the bus's writer: {e}")))?;
        Ok(Self {
            jobs,
            done,
            in_flight: false,
            thread: Some(thread),
        })
    }

    /// Waits for the write in flight, if any; its error, once.
    fn settle(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.in_flight) {
            return Ok(());
        }
        self.done
            .recv()
            .map_err(|_| BusError::Storage("the bus's writer thread stopped".into()))?
    }
}

impl Drop for Behind {
    /// The write in flight lands before the producer is gone; its error is logged, as no
    /// caller is left to tell (a stage stopping cleanly flushes first, and hears it).
    fn drop(&mut self) {
        if let Err(e) = self.settle() {
            tracing::error!(error = %e, "the bus's last write behind failed");
        }
        // Closing the channel (the fields are dropped only after this) ends the thread's loop.
        let (closed, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.jobs, closed));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Records buffered before a producer writes them without being asked to flush.
const MAX_PENDING: usize = 50_000;

impl Producer for EmbeddedProducer {
    fn send(&mut self, record: OutRecord) -> Result<()> {
        self.pending.push(record);
        if self.pending.len() >= MAX_PENDING {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.settle()?;
        write(&self.inner, std::mem::take(&mut self.pending), None)
    }

    /// The records and the group's positions in one write batch.
    fn flush_with_positions(&mut self, positions: Option<(&str, &Positions)>) -> Result<bool> {
        self.settle()?;
        write(&self.inner, std::mem::take(&mut self.pending), positions)?;
        Ok(positions.is_some())
    }

    /// The same write batch, on the producer's writer thread.
    fn flush_behind(&mut self, positions: Option<(&str, &Positions)>) -> Result<bool> {
        self.settle()?;
        let commit = positions
            .filter(|(_, p)| !p.is_empty())
            .map(|(group, p)| (group.to_string(), p.clone()));
        if self.pending.is_empty() && commit.is_none() {
            return Ok(positions.is_some());
        }
        let behind = match &mut self.behind {
            Some(behind) => behind,
            None => self.behind.insert(Behind::spawn(self.inner.clone())?),
        };
        let job = Job {
            pending: std::mem::take(&mut self.pending),
            commit,
        };
        behind
            .jobs
            .send(job)
            .map_err(|_| BusError::Storage("the bus's writer thread stopped".into()))?;
        behind.in_flight = true;
        Ok(positions.is_some())
    }
}

impl EmbeddedProducer {
    /// Waits for the write behind in flight, if any.
    fn settle(&mut self) -> Result<()> {
        self.behind.as_mut().map_or(Ok(()), Behind::settle)
    }
}

/// Writes `pending` (and `commit`'s positions for a group, if given) in one batch, then hands
/// the records to their partitions. A failed batch is reported once and dropped (the producer
/// handed it over), as Kafka drops records whose delivery failed: keeping it would fail every
/// later flush and wedge the producer for good.
fn write(inner: &Inner, pending: Vec<OutRecord>, commit: Option<(&str, &Positions)>) -> Result<()> {
    let commit = commit.filter(|(_, positions)| !positions.is_empty());
    if pending.is_empty() {
        if let Some((group, positions)) = commit {
            let db = inner.db();
            let mut batch = WriteBatch::default();
            put_positions(&mut batch, meta(&db), group, positions);
            db.write(batch).map_err(storage)?;
        }
        return Ok(());
    }
    let now = now_ms();
    let bytes = pending
        .iter()
        .map(|r| OFFSET_KEY_LEN + encoded_len(r))
        .sum();
    // The partitions take the records only once they are written.
    let _turn = inner.turn();
    let state = inner.state();
    let mut placed: Vec<(i32, i64, i64)> = Vec::with_capacity(pending.len());
    let mut entries: Vec<(&str, i32, i64, Vec<u8>)> = Vec::with_capacity(pending.len());
    let mut taken: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for r in &pending {
        let parts = state
            .topics
            .get(&r.topic)
            .ok_or_else(|| BusError::UnknownTopic(r.topic.clone()))?;
        let n = parts.len() as i32;
        let p = match (r.partition, &r.key) {
            (Some(p), _) if (0..n).contains(&p) => p,
            (Some(p), _) => {
                return Err(BusError::Storage(format!(
                    "partition {p} out of range for {} ({n} partitions)",
                    r.topic
                )))
            }
            (None, Some(k)) => partition_for_key(k, n),
            (None, None) => 0,
        };
        let next = taken
            .entry((r.topic.as_str(), p))
            .or_insert(parts[p as usize].end);
        let offset = *next;
        *next += 1;
        let timestamp_ms = r.timestamp_ms.unwrap_or(now);
        entries.push((&r.topic, p, offset, encode(r, timestamp_ms)));
        placed.push((p, offset, timestamp_ms));
    }
    drop(state);
    // Each partition's records together (in offset order, as they were sent), so each
    // column family is looked up once.
    entries.sort_unstable_by_key(|(topic, p, offset, _)| (*topic, *p, *offset));
    let db = inner.db();
    let mut batch = crate::sized_write_batch(entries.len(), bytes);
    let mut cf: Option<(&str, i32, &ColumnFamily)> = None;
    for (topic, p, offset, value) in &entries {
        let handle = match cf {
            Some((t, q, handle)) if t == *topic && q == *p => handle,
            _ => {
                let handle = partition_cf(&db, topic, *p)?;
                cf = Some((topic, *p, handle));
                handle
            }
        };
        batch.put_cf(handle, offset_key(*offset), value);
    }
    if let Some((group, positions)) = commit {
        put_positions(&mut batch, meta(&db), group, positions);
    }
    db.write(batch).map_err(storage)?;
    drop(db);
    drop(entries);
    let mut state = inner.state();
    let mut touched: Vec<String> = Vec::new();
    for (r, (partition, offset, timestamp_ms)) in pending.into_iter().zip(placed) {
        let OutRecord {
            topic,
            key,
            value,
            headers,
            ..
        } = r;
        let parts = state
            .topics
            .get_mut(&topic)
            .expect("every topic was looked up above");
        let part = &mut parts[partition as usize];
        if !touched.contains(&topic) {
            touched.push(topic.clone());
        }
        part.append(Record {
            topic,
            partition,
            offset,
            timestamp_ms,
            key,
            value,
            headers,
        });
    }
    state.waiting.retain(|w| {
        let woken = w.topics.iter().any(|t| touched.contains(t));
        if woken {
            w.wake.notify_one();
        }
        !woken
    });
    Ok(())
}

struct EmbeddedConsumer {
    inner: Arc<Inner>,
    group: String,
    commit: bool,
    /// The topics read, each once.
    topics: Arc<[String]>,
    assignment: Vec<(String, i32)>,
    /// The next offset to read of each partition of `assignment`.
    positions: Vec<i64>,
    /// Partition to read first on the next poll: the one after the last partition a poll read
    /// from, so a backlog is served round-robin over the partitions that have records. Starting
    /// one further along each poll instead would hand every empty partition's turn to the next
    /// busy one, so the first partition of a busy topic beside idle ones would be read most.
    cursor: usize,
    /// What a flush to one of `topics` signals while this consumer waits in `poll`.
    wake: Arc<Condvar>,
    fetch: Fetch,
}

/// What one poll reads from one partition of the assignment: `want` records from `pos` (the
/// partition ended at `end`), the kept ones if the partition still holds them.
struct Read {
    index: usize,
    pos: i64,
    end: i64,
    want: usize,
    kept: Option<Vec<Arc<Record>>>,
}

impl EmbeddedConsumer {
    fn read_available(&mut self, max: usize) -> Result<Vec<Record>> {
        // What to read from each partition, decided under one lock: the kept records are taken
        // there (references only), the log is read after it is released.
        let mut plan: Vec<Read> = Vec::new();
        {
            let state = self.inner.state();
            let n = self.assignment.len();
            let mut budget = max;
            for i in 0..n {
                if budget == 0 {
                    break;
                }
                let index = (self.cursor + i) % n;
                let (topic, p) = &self.assignment[index];
                let Some(part) = state.topics.get(topic).and_then(|v| v.get(*p as usize)) else {
                    continue;
                };
                let pos = self.positions[index];
                if pos >= part.end {
                    continue;
                }
                let want = ((part.end - pos) as usize).min(budget);
                budget -= want;
                plan.push(Read {
                    index,
                    pos,
                    end: part.end,
                    want,
                    kept: part.kept_from(pos, want),
                });
            }
        }
        let mut out = Vec::new();
        let mut last_read = None;
        for Read {
            index,
            pos,
            end,
            want,
            kept,
        } in plan
        {
            let mut last = pos - 1;
            match kept {
                Some(kept) => {
                    for r in kept {
                        last = r.offset;
                        out.push(Record::clone(&r));
                    }
                }
                None => {
                    let (topic, p) = &self.assignment[index];
                    // Expiry may have deleted offsets from `pos` on: read on to the end.
                    let start = offset_key(pos);
                    let db = self.inner.db();
                    let it = db.iterator_cf(
                        partition_cf(&db, topic, *p)?,
                        IteratorMode::From(&start, Direction::Forward),
                    );
                    for item in it.take(want) {
                        let (k, v) = item.map_err(storage)?;
                        let offset = decode_offset(&k);
                        if offset >= end {
                            break;
                        }
                        out.push(decode(topic, *p, offset, &v)?);
                        last = offset;
                    }
                }
            }
            self.positions[index] = last + 1;
            last_read = Some(index);
        }
        if let Some(index) = last_read {
            self.cursor = (index + 1) % self.assignment.len();
        }
        Ok(out)
    }

    /// Whether a partition it reads has records past its position.
    fn behind(&self, state: &State) -> bool {
        self.assignment
            .iter()
            .zip(&self.positions)
            .any(|((topic, p), pos)| {
                state
                    .topics
                    .get(topic)
                    .and_then(|v| v.get(*p as usize))
                    .is_some_and(|part| *pos < part.end)
            })
    }
}

impl Consumer for EmbeddedConsumer {
    fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Record>> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut records = self.read_available(max.max(1))?;
            if !records.is_empty() {
                if records.len() < self.fetch.min_records.min(max) {
                    let now = Instant::now();
                    let until = (now + self.fetch.max_wait).min(deadline);
                    if until > now {
                        // A sleep, not a wait to be woken: flushes landing meanwhile wake
                        // nobody, and the records they bring are read once, below.
                        std::thread::sleep(until - now);
                        let more = self.read_available(max - records.len())?;
                        records.extend(more);
                    }
                }
                return Ok(records);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(records);
            }
            let mut state = self.inner.state();
            // Records may have come between the read and the lock.
            if self.behind(&state) {
                continue;
            }
            let wake_ups = state.wake_ups;
            state.waiting.push(Waiter {
                topics: self.topics.clone(),
                wake: self.wake.clone(),
            });
            let (mut state, _) = self
                .wake
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner());
            // Still listed when it timed out (or woke spuriously).
            state.waiting.retain(|w| !Arc::ptr_eq(&w.wake, &self.wake));
            if state.wake_ups != wake_ups {
                return Ok(records);
            }
        }
    }

    fn commit(&mut self, positions: &Positions) -> Result<()> {
        if !self.commit || positions.is_empty() {
            return Ok(());
        }
        let db = self.inner.db();
        let mut batch = WriteBatch::default();
        put_positions(&mut batch, meta(&db), &self.group, positions);
        db.write(batch).map_err(storage)
    }

    fn close(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

/// `group`'s committed positions, as a consumer of the group reads them back.
fn put_positions(batch: &mut WriteBatch, meta: &ColumnFamily, group: &str, positions: &Positions) {
    for ((topic, p), pos) in positions {
        batch.put_cf(meta, group_key(group, topic, *p), pos.to_le_bytes());
    }
}

fn storage(e: rocksdb::Error) -> BusError {
    BusError::Storage(e.into_string())
}

fn corrupt_meta() -> BusError {
    BusError::Storage("corrupt topic metadata".into())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn partition_prefix(topic: &str, partition: i32) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + 5);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(&(partition as u32).to_be_bytes());
    k
}

/// A record's key in its partition's column family: the offset.
const OFFSET_KEY_LEN: usize = 8;

fn offset_key(offset: i64) -> [u8; OFFSET_KEY_LEN] {
    (offset as u64).to_be_bytes()
}

fn decode_offset(key: &[u8]) -> i64 {
    let tail: [u8; 8] = key[key.len() - 8..]
        .try_into()
        .expect("log keys end in 8 bytes");
    u64::from_be_bytes(tail) as i64
}

fn group_key(group: &str, topic: &str, partition: i32) -> Vec<u8> {
    let mut k = b"g\0".to_vec();
    k.extend_from_slice(group.as_bytes());
    k.push(0);
    k.extend_from_slice(&partition_prefix(topic, partition));
    k
}

/// About the length of `encode(r)`: the headers' bytes are not counted.
fn encoded_len(r: &OutRecord) -> usize {
    32 + r.key.as_ref().map_or(0, Vec::len) + r.value.as_ref().map_or(0, Vec::len)
}

fn encode(r: &OutRecord, ts: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len(r));
    out.extend_from_slice(&ts.to_le_bytes());
    codec::put_bytes(&mut out, r.key.as_deref());
    codec::put_bytes(&mut out, r.value.as_deref());
    codec::put_headers(&mut out, &r.headers);
    out
}

fn decode(topic: &str, partition: i32, offset: i64, v: &[u8]) -> Result<Record> {
    let corrupt = || BusError::Corrupt {
        topic: topic.to_string(),
        partition,
        offset,
    };
    let mut r = codec::Reader(v);
    let ts = i64::from_le_bytes(
        r.take(8)
            .ok_or_else(corrupt)?
            .try_into()
            .map_err(|_| corrupt())?,
    );
    let key = r.bytes().ok_or_else(corrupt)?;
    let value = r.bytes().ok_or_else(corrupt)?;
    let headers = r.headers().ok_or_else(corrupt)?;
    Ok(Record {
        topic: topic.to_string(),
        partition,
        offset,
        timestamp_ms: ts,
        key,
        value,
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(partition: i32, ts: i64, value: &str) -> OutRecord {
        let mut r = OutRecord::new("t", Vec::new(), value.as_bytes().to_vec());
        r.partition = Some(partition);
        r.timestamp_ms = Some(ts);
        r
    }

    /// A bus in a directory of its own (kept as long as the first value) with topic `t`.
    fn bus_with_t(partitions: i32) -> (tempfile::TempDir, EmbeddedBus) {
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open(dir.path()).unwrap();
        bus.create_topic("t", partitions).unwrap();
        (dir, bus)
    }

    fn values(bus: &EmbeddedBus, group: &str) -> Vec<String> {
        let mut c = bus.consumer(ConsumerOptions::group(group, &["t"])).unwrap();
        let mut out: Vec<String> = c
            .poll(100, Duration::from_millis(10))
            .unwrap()
            .into_iter()
            .map(|r| String::from_utf8(r.value.unwrap()).unwrap())
            .collect();
        out.sort();
        out
    }

    #[test]
    fn expiry_deletes_old_records_keeps_each_partitions_last_and_never_reuses_offsets() {
        let (dir, bus) = bus_with_t(2);
        let mut p = bus.producer().unwrap();
        for r in [
            at(0, 100, "a0"),
            at(0, 200, "a1"),
            at(0, 900, "a2"),
            at(0, 300, "a3"),
            at(1, 100, "b0"),
            at(1, 150, "b1"),
        ] {
            p.send(r).unwrap();
        }
        p.flush().unwrap();

        assert_eq!(bus.expire("t", 50).unwrap(), 0);
        assert_eq!(bus.expire("unknown", 1_000).unwrap(), 0);
        // Partition 0 stops at the first record not older than the cutoff (a2), so a3 stays
        // behind it; partition 1 keeps its last record although it is old.
        assert_eq!(bus.expire("t", 500).unwrap(), 3);
        assert_eq!(values(&bus, "g1"), ["a2", "a3", "b1"]);
        assert_eq!(bus.lag("g2", &["t".to_string()]).unwrap(), 6);

        drop(p);
        drop(bus);
        let bus = EmbeddedBus::open(dir.path()).unwrap();
        assert_eq!(bus.end_offsets("t").unwrap(), [4, 2]);
        let mut p = bus.producer().unwrap();
        p.send(at(1, 1_000, "b2")).unwrap();
        p.flush().unwrap();
        let mut c = bus.consumer(ConsumerOptions::group("g3", &["t"])).unwrap();
        let b2 = c
            .poll(100, Duration::from_millis(10))
            .unwrap()
            .into_iter()
            .find(|r| r.value.as_deref() == Some(&b"b2"[..]))
            .unwrap();
        assert_eq!((b2.partition, b2.offset), (1, 2));
    }

    /// Files of partition 0 of `t`, as (first offset, last offset), in offset order.
    fn partition_files(bus: &EmbeddedBus) -> Vec<(i64, i64)> {
        let name = partition_cf_name("t", 0);
        let mut files: Vec<(i64, i64)> = bus
            .inner
            .db()
            .live_files()
            .unwrap()
            .into_iter()
            .filter(|f| f.column_family_name == name)
            .map(|f| {
                (
                    decode_offset(&f.start_key.unwrap()),
                    decode_offset(&f.end_key.unwrap()),
                )
            })
            .collect();
        files.sort();
        files
    }

    #[test]
    fn expiry_deletes_the_files_holding_only_expired_records_and_keeps_the_rest_readable() {
        let (dir, bus) = bus_with_t(1);
        let mut p = bus.producer().unwrap();
        // Three files of ten records: the first all expired, the second expired but for its
        // last record, the third kept.
        for file in 0..3 {
            for i in file * 10..file * 10 + 10 {
                let ts = if i >= 19 { 1_000 } else { 100 };
                p.send(at(0, ts, &i.to_string())).unwrap();
            }
            p.flush().unwrap();
            let db = bus.inner.db();
            let cf = partition_cf(&db, "t", 0).unwrap();
            db.flush_cf(cf).unwrap();
            // Below level 0, where files are deleted whole.
            let (first, last) = (offset_key(file * 10), offset_key(file * 10 + 9));
            db.compact_range_cf(cf, Some(first), Some(last));
        }
        assert_eq!(partition_files(&bus), [(0, 9), (10, 19), (20, 29)]);

        assert_eq!(bus.expire("t", 500).unwrap(), 19);
        assert_eq!(partition_files(&bus), [(10, 19), (20, 29)]);
        let mut expected: Vec<String> = (19..30).map(|i| i.to_string()).collect();
        expected.sort();
        assert_eq!(values(&bus, "g1"), expected);

        drop(p);
        drop(bus);
        let bus = EmbeddedBus::open(dir.path()).unwrap();
        assert_eq!(bus.end_offsets("t").unwrap(), [30]);
        let mut c = bus.consumer(ConsumerOptions::group("g2", &["t"])).unwrap();
        let read = c.poll(100, Duration::from_millis(10)).unwrap();
        let offsets: Vec<i64> = read.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, (19..30).collect::<Vec<_>>());
    }

    #[test]
    fn topics_given_at_open_are_created_and_existing_ones_keep_their_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let bad = EmbeddedBus::open_with_topics(dir.path(), &[("t", 2), ("no spaces", 1)]);
        assert!(matches!(bad, Err(BusError::InvalidTopicName(_))));
        assert!(matches!(
            EmbeddedBus::open_with_topics(dir.path(), &[("t", 0)]),
            Err(BusError::Storage(_))
        ));
        let partitions = |bus: &EmbeddedBus| -> Vec<(String, i32)> {
            let topics = bus.topics().unwrap();
            topics.into_iter().map(|t| (t.name, t.partitions)).collect()
        };
        {
            let bus = EmbeddedBus::open_with_topics(dir.path(), &[("t", 2), ("u", 3)]).unwrap();
            assert_eq!(partitions(&bus), [("t".into(), 2), ("u".into(), 3)]);
            let mut p = bus.producer().unwrap();
            p.send(at(1, 5, "kept")).unwrap();
            p.flush().unwrap();
        }
        // Asked again with other counts: the stored topics stay as they are, new ones are added.
        let bus = EmbeddedBus::open_with_topics(dir.path(), &[("t", 8), ("v", 1)]).unwrap();
        assert_eq!(
            partitions(&bus),
            [("t".into(), 2), ("u".into(), 3), ("v".into(), 1)]
        );
        assert_eq!(bus.end_offsets("t").unwrap(), [0, 1]);
        assert_eq!(values(&bus, "g"), ["kept"]);
        let cfs = DB::list_cf(&Options::default(), dir.path()).unwrap();
        assert!(!cfs.contains(&partition_cf_name("t", 2)), "{cfs:?}");
    }

    #[test]
    fn a_bus_in_the_whole_log_layout_is_moved_to_a_column_family_per_partition_on_open() {
        let dir = tempfile::tempdir().unwrap();
        // Written as a bus before per-partition column families: one `log` column family.
        {
            let mut opts = Options::default();
            opts.create_if_missing(true);
            opts.create_missing_column_families(true);
            let cfs = [CF_LEGACY_LOG, CF_META]
                .map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
            let db = DB::open_cf_descriptors(&opts, dir.path(), cfs).unwrap();
            let (log, meta) = (
                db.cf_handle(CF_LEGACY_LOG).unwrap(),
                db.cf_handle(CF_META).unwrap(),
            );
            for topic in ["t", "u"] {
                db.put_cf(
                    meta,
                    [b"t\0", topic.as_bytes()].concat(),
                    2u32.to_le_bytes(),
                )
                .unwrap();
            }
            let legacy_key = |topic: &str, p: i32, offset: i64| {
                [
                    partition_prefix(topic, p),
                    (offset as u64).to_be_bytes().to_vec(),
                ]
                .concat()
            };
            for (topic, p, n) in [("t", 0, 3), ("t", 1, 2), ("u", 1, 1)] {
                for offset in 0..n {
                    let mut r = OutRecord::new(
                        topic,
                        format!("k{offset}").into_bytes(),
                        format!("{topic}{p}:{offset}").into_bytes(),
                    );
                    r.headers.push(("h".to_string(), b"x".to_vec()));
                    let value = encode(&r, 1_000 + offset);
                    db.put_cf(log, legacy_key(topic, p, offset), value).unwrap();
                }
            }
            db.put_cf(meta, group_key("g", "t", 0), 2i64.to_le_bytes())
                .unwrap();
        }
        let refused = EmbeddedBus::open_read_only(dir.path()).err().unwrap();
        assert!(refused.to_string().contains("older cdp"), "{refused}");

        let bus = EmbeddedBus::open(dir.path()).unwrap();
        assert_eq!(bus.end_offsets("t").unwrap(), [3, 2]);
        assert_eq!(bus.end_offsets("u").unwrap(), [0, 1]);
        assert_eq!(bus.lag("g", &["t".to_string()]).unwrap(), 3);
        let cfs = DB::list_cf(&Options::default(), dir.path()).unwrap();
        assert!(!cfs.iter().any(|n| n == CF_LEGACY_LOG), "{cfs:?}");
        let mut c = bus.consumer(ConsumerOptions::group("g", &["t"])).unwrap();
        let read = c.poll(100, Duration::from_millis(10)).unwrap();
        let got: Vec<(i32, i64, i64, String, String)> = read
            .iter()
            .map(|r| {
                assert_eq!(r.headers, [("h".to_string(), b"x".to_vec())]);
                (
                    r.partition,
                    r.offset,
                    r.timestamp_ms,
                    String::from_utf8(r.key.clone().unwrap()).unwrap(),
                    String::from_utf8(r.value.clone().unwrap()).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (0, 2, 1_002, "k2".into(), "t0:2".into()),
                (1, 0, 1_000, "k0".into(), "t1:0".into()),
                (1, 1, 1_001, "k1".into(), "t1:1".into()),
            ]
        );
        // New records follow the moved ones; a read-only view now opens.
        let mut p = bus.producer().unwrap();
        p.send(at(0, 2_000, "new")).unwrap();
        p.flush().unwrap();
        drop((c, p, bus));
        let view = EmbeddedBus::open_read_only(dir.path()).unwrap();
        assert_eq!(view.end_offsets("t").unwrap(), [4, 2]);
    }

    #[test]
    fn a_consumer_behind_the_kept_records_reads_the_log_then_the_kept_ones_without_gap() {
        let (_dir, bus) = bus_with_t(1);
        let mut p = bus.producer().unwrap();
        // Three times what a partition keeps in memory, in several flushes.
        let body = "x".repeat(1_000);
        let n = 3 * TAIL_BYTES / 1_000;
        for i in 0..n {
            p.send(at(0, i as i64, &format!("{i:06}{body}"))).unwrap();
            if i % 700 == 0 {
                p.flush().unwrap();
            }
        }
        p.flush().unwrap();
        {
            let state = bus.inner.state();
            let part = &state.topics["t"][0];
            assert!(part.tail.len() < n / 2, "the oldest records were let go");
            assert!(part.kept_from(0, 10).is_none());
            assert_eq!(part.kept_from(n as i64 - 1, 10).unwrap().len(), 1);
        }
        let mut c = bus.consumer(ConsumerOptions::group("g", &["t"])).unwrap();
        let mut read = Vec::new();
        while read.len() < n {
            let records = c.poll(333, Duration::from_secs(60)).unwrap();
            assert!(!records.is_empty(), "{} of {n} read", read.len());
            read.extend(records);
        }
        let offsets: Vec<i64> = read.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, (0..n as i64).collect::<Vec<_>>());
        for r in &read {
            let value = r.value.as_deref().unwrap();
            assert_eq!(&value[..6], format!("{:06}", r.offset).as_bytes());
            assert_eq!(r.timestamp_ms, r.offset);
        }
        assert!(c.poll(10, Duration::from_millis(10)).unwrap().is_empty());
    }

    #[test]
    fn one_flush_over_interleaved_topics_and_partitions_keeps_each_partitions_send_order() {
        let dir = tempfile::tempdir().unwrap();
        let sent: Vec<(&str, i32, String)> = (0..30)
            .map(|i| (["t", "u"][i % 2], (i % 3) as i32, format!("v{i}")))
            .collect();
        let read_all = |bus: &EmbeddedBus| {
            let mut c = bus
                .consumer(ConsumerOptions::group("g", &["t", "u"]))
                .unwrap();
            let mut read = c.poll(100, Duration::from_secs(60)).unwrap();
            read.sort_by(|a, b| {
                (&a.topic, a.partition, a.offset).cmp(&(&b.topic, b.partition, b.offset))
            });
            read.into_iter()
                .map(|r| {
                    let value = String::from_utf8(r.value.unwrap()).unwrap();
                    (r.topic, r.partition, r.offset, value)
                })
                .collect::<Vec<_>>()
        };
        // Each partition's records at offsets from 0, in the order they were sent.
        let mut expected: Vec<(String, i32, i64, String)> = Vec::new();
        for (topic, partition, value) in &sent {
            let offset = expected
                .iter()
                .filter(|(t, p, _, _)| t == topic && p == partition)
                .count() as i64;
            expected.push((topic.to_string(), *partition, offset, value.clone()));
        }
        expected.sort();
        {
            let bus = EmbeddedBus::open(dir.path()).unwrap();
            bus.create_topic("t", 3).unwrap();
            bus.create_topic("u", 3).unwrap();
            let mut p = bus.producer().unwrap();
            for (topic, partition, value) in &sent {
                let mut r = OutRecord::new(*topic, Vec::new(), value.as_bytes().to_vec());
                r.partition = Some(*partition);
                p.send(r).unwrap();
            }
            p.flush().unwrap();
            assert_eq!(read_all(&bus), expected, "read from the kept records");
        }
        // Opened again, the bus reads the log in RocksDB.
        let bus = EmbeddedBus::open(dir.path()).unwrap();
        assert_eq!(read_all(&bus), expected, "read from the log");
    }

    /// A stage's flush writes its outputs and its input positions together. Whoever reads the
    /// group's lag and then the output topic's ends (as a run until drained does) must never
    /// find the positions past what the outputs show: each position k comes with k outputs.
    #[test]
    fn a_groups_lag_is_never_read_ahead_of_the_outputs_flushed_with_it() {
        const N: i64 = 3_000;
        let (_dir, bus) = bus_with_t(1);
        bus.create_topic("out", 1).unwrap();
        let mut p = bus.producer().unwrap();
        for i in 0..N {
            p.send(at(0, 0, &i.to_string())).unwrap();
        }
        p.flush().unwrap();
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let mut p = bus.producer().unwrap();
                for k in 1..=N {
                    p.send(OutRecord::new("out", Vec::new(), b"o".to_vec()))
                        .unwrap();
                    let positions = Positions::from([(("t".to_string(), 0), k)]);
                    // Written by this thread, or behind it by the producer's own.
                    if k % 2 == 0 {
                        p.flush_behind(Some(("g", &positions))).unwrap();
                    } else {
                        p.flush_with_positions(Some(("g", &positions))).unwrap();
                    }
                }
                p.flush().unwrap();
                done.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            let topics = ["t".to_string()];
            let mut checks = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) || checks == 0 {
                let consumed = N - bus.lag("g", &topics).unwrap() as i64;
                let outputs = bus.end_offsets("out").unwrap()[0];
                assert!(
                    outputs >= consumed,
                    "positions at {consumed} with {outputs} outputs readable"
                );
                checks += 1;
            }
        });
        assert_eq!(bus.lag("g", &["t".to_string()]).unwrap(), 0);
        assert_eq!(bus.end_offsets("out").unwrap(), [N]);
    }

    fn values_of(bus: &EmbeddedBus, topic: &str) -> Vec<String> {
        let mut c = bus.consumer(ConsumerOptions::group("v", &[topic])).unwrap();
        c.poll(1_000, Duration::from_millis(10))
            .unwrap()
            .iter()
            .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into())
            .collect()
    }

    #[test]
    fn a_write_behind_lands_in_order_and_the_next_flush_waits_for_it() {
        let (_dir, bus) = bus_with_t(1);
        let mut p = bus.producer().unwrap();
        for i in 0..3 {
            p.send(at(0, i, &i.to_string())).unwrap();
        }
        assert!(!p.flush_behind(None).unwrap());
        p.send(at(0, 3, "3")).unwrap();
        let positions = Positions::from([(("t".to_string(), 0), 1)]);
        assert!(p.flush_behind(Some(("g", &positions))).unwrap());
        // Returned once the write before had landed.
        assert!(bus.end_offsets("t").unwrap()[0] >= 3);
        p.flush().unwrap();
        assert_eq!(bus.end_offsets("t").unwrap(), [4]);
        assert_eq!(values_of(&bus, "t"), ["0", "1", "2", "3"]);
        // The positions rode with the second write.
        assert_eq!(bus.lag("g", &["t".to_string()]).unwrap(), 3);
    }

    #[test]
    fn a_failed_write_behind_is_told_by_the_next_flush_which_writes_nothing() {
        let (_dir, bus) = bus_with_t(1);
        let mut p = bus.producer().unwrap();
        p.send(OutRecord::new("missing", Vec::new(), b"x".to_vec()))
            .unwrap();
        p.flush_behind(None).unwrap();
        p.send(at(0, 0, "kept")).unwrap();
        let positions = Positions::from([(("t".to_string(), 0), 1)]);
        let err = p.flush_behind(Some(("g", &positions))).unwrap_err();
        assert!(matches!(err, BusError::UnknownTopic(_)), "{err}");
        assert_eq!(bus.end_offsets("t").unwrap(), [0]);
        assert_eq!(bus.lag("g", &["t".to_string()]).unwrap(), 0, "no positions");
        // Told once: the failed write is dropped, what was sent after it is not.
        p.flush().unwrap();
        assert_eq!(values_of(&bus, "t"), ["kept"]);
    }

    #[test]
    fn a_producer_dropped_with_a_write_behind_lands_it_first() {
        let (_dir, bus) = bus_with_t(1);
        let mut p = bus.producer().unwrap();
        for i in 0..100 {
            p.send(at(0, i, &i.to_string())).unwrap();
        }
        p.flush_behind(None).unwrap();
        drop(p);
        assert_eq!(bus.end_offsets("t").unwrap(), [100]);
    }

    #[test]
    fn flush_with_positions_stores_the_records_and_the_groups_positions_in_one_write() {
        let dir = tempfile::tempdir().unwrap();
        let offsets = |bus: &EmbeddedBus, group: &str, topic: &str| -> Vec<i64> {
            let mut c = bus
                .consumer(ConsumerOptions::group(group, &[topic]))
                .unwrap();
            c.poll(100, Duration::from_millis(10))
                .unwrap()
                .iter()
                .map(|r| r.offset)
                .collect()
        };
        {
            let bus = EmbeddedBus::open(dir.path()).unwrap();
            bus.create_topic("t", 1).unwrap();
            bus.create_topic("out", 1).unwrap();
            let mut p = bus.producer().unwrap();
            for i in 0..4 {
                p.send(at(0, i, &i.to_string())).unwrap();
            }
            p.flush().unwrap();
            // Two inputs read, one output: written together with the positions after them.
            p.send(OutRecord::new("out", Vec::new(), b"o".to_vec()))
                .unwrap();
            let positions = Positions::from([(("t".to_string(), 0), 2)]);
            assert!(p.flush_with_positions(Some(("g", &positions))).unwrap());
        }
        let bus = EmbeddedBus::open(dir.path()).unwrap();
        assert_eq!(
            offsets(&bus, "g", "t"),
            [2, 3],
            "the group resumes after its positions"
        );
        assert_eq!(offsets(&bus, "other", "out"), [0]);
        // Nothing to write but positions: they are stored all the same.
        let mut p = bus.producer().unwrap();
        let positions = Positions::from([(("t".to_string(), 0), 4)]);
        assert!(p.flush_with_positions(Some(("g", &positions))).unwrap());
        assert!(offsets(&bus, "g", "t").is_empty());
    }

    #[test]
    fn a_consumer_before_expired_offsets_skips_to_the_first_kept_one_whatever_it_asks_for() {
        let (_dir, bus) = bus_with_t(1);
        let mut p = bus.producer().unwrap();
        for i in 0..10 {
            p.send(at(0, if i < 8 { 100 } else { 900 }, &i.to_string()))
                .unwrap();
        }
        p.flush().unwrap();
        assert_eq!(bus.expire("t", 500).unwrap(), 8);
        // From offset 0, two at a time: the eight deleted offsets are more than it asks for.
        let mut c = bus.consumer(ConsumerOptions::group("g", &["t"])).unwrap();
        let records = c.poll(2, Duration::from_secs(60)).unwrap();
        let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [8, 9]);
    }

    #[test]
    fn a_topic_named_twice_is_read_once_in_partition_order() {
        let (_dir, bus) = bus_with_t(2);
        let mut p = bus.producer().unwrap();
        for (partition, value) in [(1, "b0"), (0, "a0"), (1, "b1")] {
            p.send(at(partition, 1, value)).unwrap();
        }
        p.flush().unwrap();
        let mut c = bus
            .consumer(ConsumerOptions::group("g", &["t", "t"]))
            .unwrap();
        let mut read = Vec::new();
        loop {
            let records = c.poll(100, Duration::from_millis(10)).unwrap();
            if records.is_empty() {
                break;
            }
            read.extend(records.into_iter().map(|r| (r.partition, r.offset)));
        }
        assert_eq!(read, [(0, 0), (1, 0), (1, 1)]);
    }

    #[test]
    fn a_waiting_consumer_is_woken_by_a_write_to_any_of_its_topics() {
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open(dir.path()).unwrap();
        for t in ["a", "b", "other"] {
            bus.create_topic(t, 2).unwrap();
        }
        let mut c = bus
            .consumer(ConsumerOptions::group("g", &["a", "b"]))
            .unwrap();
        let writer = {
            let bus = bus.clone();
            std::thread::spawn(move || {
                let mut p = bus.producer().unwrap();
                std::thread::sleep(Duration::from_millis(50));
                // A write elsewhere first: the consumer goes on waiting.
                p.send(OutRecord::new("other", b"k".to_vec(), b"o".to_vec()))
                    .unwrap();
                p.flush().unwrap();
                std::thread::sleep(Duration::from_millis(50));
                p.send(OutRecord::new("b", b"k".to_vec(), b"v".to_vec()))
                    .unwrap();
                p.flush().unwrap();
            })
        };
        // The timeout is far longer than the test: only the write to `b` ends this poll.
        let records = c.poll(10, Duration::from_secs(600)).unwrap();
        writer.join().unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(
            (records[0].topic.as_str(), records[0].value.as_deref()),
            ("b", Some(&b"v"[..]))
        );
        assert!(bus.inner.state().waiting.is_empty());
    }

    #[test]
    fn waking_the_consumers_ends_a_waiting_poll_and_later_polls_wait_as_usual() {
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open(dir.path()).unwrap();
        bus.create_topic("t", 1).unwrap();
        let mut c = bus.consumer(ConsumerOptions::group("g", &["t"])).unwrap();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let waker = {
            let (bus, done) = (bus.clone(), done.clone());
            // Until the poll has returned: a wake-up before it waits would find nobody.
            std::thread::spawn(move || {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                    bus.wake_consumers();
                }
            })
        };
        // The timeout is far longer than the test: only the wake-up ends this poll.
        let records = c.poll(10, Duration::from_secs(600)).unwrap();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        waker.join().unwrap();
        assert!(records.is_empty());
        assert!(bus.inner.state().waiting.is_empty());

        // A poll begun afterwards waits for a record as before.
        let writer = {
            let bus = bus.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(30));
                let mut p = bus.producer().unwrap();
                p.send(OutRecord::new("t", b"k".to_vec(), b"v".to_vec()))
                    .unwrap();
                p.flush().unwrap();
            })
        };
        let records = c.poll(10, Duration::from_secs(600)).unwrap();
        writer.join().unwrap();
        assert_eq!(records.len(), 1);
    }

    #[test]
    fn a_backlog_is_read_round_robin_over_the_partitions_that_have_records() {
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open(dir.path()).unwrap();
        // An idle topic first in the assignment, as when a stage reads several sources and only
        // one of them is busy.
        bus.create_topic("idle", 4).unwrap();
        bus.create_topic("t", 4).unwrap();
        let mut p = bus.producer().unwrap();
        for partition in 0..4 {
            for i in 0..20 {
                p.send(at(partition, i, &format!("{partition}-{i}")))
                    .unwrap();
            }
        }
        p.flush().unwrap();
        let mut c = bus
            .consumer(ConsumerOptions::group("g", &["idle", "t"]))
            .unwrap();
        let mut served = Vec::new();
        for _ in 0..8 {
            let records = c.poll(10, Duration::from_millis(10)).unwrap();
            assert_eq!(records.len(), 10);
            assert!(records.iter().all(|r| r.partition == records[0].partition));
            served.push(records[0].partition);
        }
        assert_eq!(served, [0, 1, 2, 3, 0, 1, 2, 3]);
    }

    #[test]
    fn a_group_poll_with_too_few_records_waits_for_more_and_returns_them_together() {
        let (_dir, bus) = bus_with_t(1);
        let wait = Duration::from_millis(500);
        let bus = bus.with_fetch(Fetch {
            min_records: 10,
            max_wait: wait,
        });
        let mut group = bus.consumer(ConsumerOptions::group("g", &["t"])).unwrap();
        let mut p = bus.producer().unwrap();
        p.send(at(0, 0, "first")).unwrap();
        p.flush().unwrap();
        // Four more land while the group's poll is waiting (or just before its first read:
        // five are still fewer than ten, so it waits all the same).
        let writer = {
            let bus = bus.clone();
            std::thread::spawn(move || {
                let mut p = bus.producer().unwrap();
                for i in 1..5 {
                    p.send(at(0, i, &format!("late{i}"))).unwrap();
                    p.flush().unwrap();
                }
            })
        };
        let started = Instant::now();
        let records = group.poll(100, Duration::from_secs(60)).unwrap();
        assert!(started.elapsed() >= wait, "it waited for more records");
        writer.join().unwrap();
        let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [0, 1, 2, 3, 4]);
        // Nothing new: a poll waits for its first record until its own timeout, no longer.
        let started = Instant::now();
        assert!(group
            .poll(100, Duration::from_millis(50))
            .unwrap()
            .is_empty());
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn a_group_poll_with_enough_records_and_a_throw_away_reader_never_wait() {
        let (_dir, bus) = bus_with_t(1);
        // A wait far longer than the test could take: polls that waited would show.
        let bus = bus.with_fetch(Fetch {
            min_records: 3,
            max_wait: Duration::from_secs(600),
        });
        let mut p = bus.producer().unwrap();
        p.send(at(0, 0, "only")).unwrap();
        p.flush().unwrap();
        let started = Instant::now();
        let mut reader = bus
            .consumer(ConsumerOptions {
                commit: false,
                ..ConsumerOptions::group("reader", &["t"])
            })
            .unwrap();
        assert_eq!(reader.poll(100, Duration::from_secs(600)).unwrap().len(), 1);
        for i in 1..4 {
            p.send(at(0, i, "more")).unwrap();
        }
        p.flush().unwrap();
        let mut group = bus.consumer(ConsumerOptions::group("g", &["t"])).unwrap();
        assert_eq!(group.poll(100, Duration::from_secs(600)).unwrap().len(), 4);
        // A poll asking for fewer than the minimum has all it asked for.
        p.send(at(0, 4, "last")).unwrap();
        p.flush().unwrap();
        let mut small = bus.consumer(ConsumerOptions::group("h", &["t"])).unwrap();
        assert_eq!(small.poll(2, Duration::from_secs(600)).unwrap().len(), 2);
        assert!(started.elapsed() < Duration::from_secs(300));
    }
}
