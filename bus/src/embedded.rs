//! The embedded bus: topics, partitions, offsets and consumer-group positions stored in one RocksDB
//! database inside the process. It is what `cdp run` and `cdp demo` use by default, so a laptop
//! runs the same stage code that runs against Kafka, with nothing else installed.
//!
//! Layout: column family `log` maps `topic \0 partition(be32) offset(be64)` to an encoded record;
//! `meta` holds topic partition counts and group positions. Every flush is one atomic
//! `WriteBatch` written through the WAL, so a killed process loses no acknowledged record.

use crate::record::codec;
use crate::{
    partition_for_key, stored_position, validate_topic_name, Bus, BusError, Consumer,
    ConsumerOptions, OutRecord, Positions, Producer, Record, Result, StartFrom, TopicInfo,
};
use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, DB};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const CF_LOG: &str = "log";
const CF_META: &str = "meta";

/// The embedded backend. Cheap to clone; all clones share one database.
#[derive(Clone)]
pub struct EmbeddedBus {
    inner: Arc<Inner>,
}

struct Inner {
    db: DB,
    read_only: bool,
    /// End offset (next offset to assign) per partition, per topic.
    ends: Mutex<BTreeMap<String, Vec<i64>>>,
    appended: Condvar,
}

impl EmbeddedBus {
    /// Opens (creating if needed) the bus stored in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let cfs = [CF_LOG, CF_META].map(|n| ColumnFamilyDescriptor::new(n, opts.clone()));
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(storage)?;
        Self::from_db(db, false)
    }

    /// Opens the bus in `dir` for reading while another process owns it (a point-in-time view).
    pub fn open_read_only(dir: &Path) -> Result<Self> {
        let opts = Options::default();
        let db =
            DB::open_cf_for_read_only(&opts, dir, [CF_LOG, CF_META], false).map_err(storage)?;
        Self::from_db(db, true)
    }

    fn from_db(db: DB, read_only: bool) -> Result<Self> {
        let mut ends = BTreeMap::new();
        {
            let meta = db.cf_handle(CF_META).expect("meta cf opened above");
            let log = db.cf_handle(CF_LOG).expect("log cf opened above");
            for item in db.prefix_iterator_cf(meta, b"t\0") {
                let (k, v) = item.map_err(storage)?;
                if !k.starts_with(b"t\0") {
                    break;
                }
                let topic = String::from_utf8_lossy(&k[2..]).into_owned();
                let partitions = u32::from_le_bytes(v[..4].try_into().map_err(|_| corrupt_meta())?);
                let mut offsets = Vec::with_capacity(partitions as usize);
                for p in 0..partitions as i32 {
                    let last = log_key(&topic, p, i64::MAX);
                    let mut it = db.iterator_cf(log, IteratorMode::From(&last, Direction::Reverse));
                    let end = match it.next() {
                        Some(Ok((k, _))) if k.starts_with(&partition_prefix(&topic, p)) => {
                            decode_offset(&k) + 1
                        }
                        Some(Err(e)) => return Err(storage(e)),
                        _ => 0,
                    };
                    offsets.push(end);
                }
                ends.insert(topic, offsets);
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                read_only,
                ends: Mutex::new(ends),
                appended: Condvar::new(),
            }),
        })
    }

    fn committed(&self, group: &str, topic: &str, partition: i32) -> Result<Option<i64>> {
        let meta = self.inner.meta();
        let v = self
            .inner
            .db
            .get_cf(meta, group_key(group, topic, partition))
            .map_err(storage)?;
        Ok(v.and_then(|b| b.as_slice().try_into().ok().map(i64::from_le_bytes)))
    }
}

impl Inner {
    fn meta(&self) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(CF_META).expect("meta cf exists")
    }

    fn log(&self) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(CF_LOG).expect("log cf exists")
    }

    fn ends(&self) -> MutexGuard<'_, BTreeMap<String, Vec<i64>>> {
        // A panic while holding this lock cannot leave the map half-updated: recover it.
        self.ends.lock().unwrap_or_else(|e| e.into_inner())
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
        Some(crate::RocksDbStats::read(&self.inner.db, [CF_LOG, CF_META]))
    }

    fn create_topic(&self, name: &str, partitions: i32) -> Result<()> {
        validate_topic_name(name)?;
        self.inner.writable()?;
        if partitions < 1 {
            return Err(BusError::Storage(format!(
                "topic {name:?} needs at least one partition"
            )));
        }
        let mut ends = self.inner.ends();
        if ends.contains_key(name) {
            return Ok(());
        }
        let mut key = b"t\0".to_vec();
        key.extend_from_slice(name.as_bytes());
        self.inner
            .db
            .put_cf(self.inner.meta(), key, (partitions as u32).to_le_bytes())
            .map_err(storage)?;
        ends.insert(name.to_string(), vec![0; partitions as usize]);
        Ok(())
    }

    fn topics(&self) -> Result<Vec<TopicInfo>> {
        Ok(self
            .inner
            .ends()
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
        }))
    }

    fn consumer(&self, options: ConsumerOptions) -> Result<Box<dyn Consumer>> {
        if options.commit {
            self.inner.writable()?;
        }
        let ends = self.inner.ends().clone();
        let mut positions = BTreeMap::new();
        for topic in &options.topics {
            let parts = ends
                .get(topic)
                .ok_or_else(|| BusError::UnknownTopic(topic.clone()))?;
            for (p, end) in parts.iter().enumerate() {
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
                positions.insert((topic.clone(), p), start);
            }
        }
        Ok(Box::new(EmbeddedConsumer {
            inner: self.inner.clone(),
            group: options.group,
            commit: options.commit,
            assignment: positions.keys().cloned().collect(),
            positions,
            cursor: 0,
        }))
    }

    fn lag(&self, group: &str, topics: &[String]) -> Result<u64> {
        let ends = self.inner.ends().clone();
        let mut lag = 0u64;
        for topic in topics {
            let parts = ends
                .get(topic)
                .ok_or_else(|| BusError::UnknownTopic(topic.clone()))?;
            for (p, end) in parts.iter().enumerate() {
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
        let Some(ends) = self.inner.ends().get(topic).cloned() else {
            return Ok(0);
        };
        let log = self.inner.log();
        let mut expired = 0;
        for (p, end) in ends.iter().enumerate() {
            let prefix = partition_prefix(topic, p as i32);
            let mut first = None;
            let mut keep_from = None;
            for item in self.inner.db.prefix_iterator_cf(log, &prefix) {
                let (k, v) = item.map_err(storage)?;
                if !k.starts_with(&prefix) {
                    break;
                }
                let offset = decode_offset(&k);
                first.get_or_insert(offset);
                let written = v
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(i64::from_le_bytes)
                    .ok_or_else(|| BusError::Corrupt {
                        topic: topic.to_string(),
                        partition: p as i32,
                        offset,
                    })?;
                if written >= cutoff_ms || offset + 1 >= *end {
                    keep_from = Some(offset);
                    break;
                }
                expired += 1;
            }
            if let (Some(first), Some(keep_from)) = (first, keep_from) {
                if keep_from > first {
                    self.inner
                        .db
                        .delete_range_cf(
                            log,
                            log_key(topic, p as i32, first),
                            log_key(topic, p as i32, keep_from),
                        )
                        .map_err(storage)?;
                }
            }
        }
        Ok(expired)
    }

    fn end_offsets(&self, topic: &str) -> Result<Vec<i64>> {
        self.inner
            .ends()
            .get(topic)
            .cloned()
            .ok_or_else(|| BusError::UnknownTopic(topic.to_string()))
    }
}

struct EmbeddedProducer {
    inner: Arc<Inner>,
    pending: Vec<OutRecord>,
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
        if self.pending.is_empty() {
            return Ok(());
        }
        // A failed batch is reported once and dropped, as Kafka drops records whose delivery
        // failed: keeping it would fail every later flush and wedge the producer for good.
        let pending = std::mem::take(&mut self.pending);
        let now = now_ms();
        let mut batch = WriteBatch::default();
        let mut ends = self.inner.ends();
        let mut next = ends.clone();
        for r in &pending {
            let parts = next
                .get_mut(&r.topic)
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
            let offset = parts[p as usize];
            parts[p as usize] += 1;
            batch.put_cf(
                self.inner.log(),
                log_key(&r.topic, p, offset),
                encode(r, r.timestamp_ms.unwrap_or(now)),
            );
        }
        self.inner.db.write(batch).map_err(storage)?;
        *ends = next;
        drop(ends);
        self.pending.clear();
        self.inner.appended.notify_all();
        Ok(())
    }
}

struct EmbeddedConsumer {
    inner: Arc<Inner>,
    group: String,
    commit: bool,
    assignment: Vec<(String, i32)>,
    positions: BTreeMap<(String, i32), i64>,
    /// Partition to read first on the next poll: the one after the last partition a poll read
    /// from, so a backlog is served round-robin over the partitions that have records. Starting
    /// one further along each poll instead would hand every empty partition's turn to the next
    /// busy one, so the first partition of a busy topic beside idle ones would be read most.
    cursor: usize,
}

impl EmbeddedConsumer {
    fn read_available(
        &mut self,
        max: usize,
        ends: &BTreeMap<String, Vec<i64>>,
    ) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        let n = self.assignment.len();
        let mut last_read = None;
        for i in 0..n {
            if out.len() >= max {
                break;
            }
            let index = (self.cursor + i) % n;
            let (topic, p) = &self.assignment[index];
            let end = ends.get(topic).map(|v| v[*p as usize]).unwrap_or(0);
            let pos = self.positions[&(topic.clone(), *p)];
            if pos >= end {
                continue;
            }
            let want = ((end - pos) as usize).min(max - out.len());
            let start = log_key(topic, *p, pos);
            let it = self.inner.db.iterator_cf(
                self.inner.log(),
                IteratorMode::From(&start, Direction::Forward),
            );
            let mut last = pos - 1;
            for item in it.take(want) {
                let (k, v) = item.map_err(storage)?;
                let offset = decode_offset(&k);
                if !k.starts_with(&partition_prefix(topic, *p)) || offset >= end {
                    break;
                }
                out.push(decode(topic, *p, offset, &v)?);
                last = offset;
            }
            self.positions.insert((topic.clone(), *p), last + 1);
            last_read = Some(index);
        }
        if let Some(index) = last_read {
            self.cursor = (index + 1) % n;
        }
        Ok(out)
    }
}

impl Consumer for EmbeddedConsumer {
    fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Record>> {
        let deadline = Instant::now() + timeout;
        loop {
            let ends = self.inner.ends().clone();
            let records = self.read_available(max.max(1), &ends)?;
            if !records.is_empty() {
                return Ok(records);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(records);
            }
            let guard = self.inner.ends();
            if *guard != ends {
                continue;
            }
            let _ = self
                .inner
                .appended
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    fn commit(&mut self, positions: &Positions) -> Result<()> {
        if !self.commit || positions.is_empty() {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        for ((topic, p), pos) in positions {
            batch.put_cf(
                self.inner.meta(),
                group_key(&self.group, topic, *p),
                pos.to_le_bytes(),
            );
        }
        self.inner.db.write(batch).map_err(storage)
    }

    fn close(self: Box<Self>) -> Result<()> {
        Ok(())
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

fn log_key(topic: &str, partition: i32, offset: i64) -> Vec<u8> {
    let mut k = partition_prefix(topic, partition);
    k.extend_from_slice(&(offset as u64).to_be_bytes());
    k
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

fn encode(r: &OutRecord, ts: i64) -> Vec<u8> {
    let size = 32 + r.key.as_ref().map_or(0, Vec::len) + r.value.as_ref().map_or(0, Vec::len);
    let mut out = Vec::with_capacity(size);
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
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open(dir.path()).unwrap();
        bus.create_topic("t", 2).unwrap();
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
}
