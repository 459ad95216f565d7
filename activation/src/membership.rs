//! Membership state in RocksDB: who is in which cohort, the per-(cohort, profile) change
//! sequence and the last profile version applied (one record per person), input offsets and the
//! outbox; per destination,
//! who it holds and the queue of events still to deliver; the last profile of each person with
//! the time its windows next change (the timer index). A batch's writes are collected in a
//! [`MembershipTxn`] and committed atomically.

pub use crate::standing::Applied;
use crate::standing::Standing;
use crate::{ActivationError, Result};
use cdp_proto::Timestamp;
use rocksdb::{ColumnFamilyDescriptor, Options, WriteBatch, DB};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// `tenant \0 canonical_id` -> the person's record ([`Standing`]): the version applied and
/// their memberships.
const CF_MEMBERSHIPS: &str = "memberships";
/// Where memberships were kept one key per cohort (`tenant \0 canonical_id \0 audience` ->
/// [`MemberState`] as JSON) by earlier versions: moved into [`CF_MEMBERSHIPS`] on open.
const CF_LEGACY_MEMBERS: &str = "members";
/// Where the applied version was kept apart from the memberships (`tenant \0 canonical_id` ->
/// [`Applied`] as 8-byte words) by earlier versions: moved into [`CF_MEMBERSHIPS`] on open.
const CF_LEGACY_VERSIONS: &str = "versions";
const CF_OFFSETS: &str = "offsets";
const CF_OUTBOX: &str = "outbox";
const CF_META: &str = "meta";
/// `dest \0 tenant \0 canonical_id \0 audience` -> [`DestMember`].
pub(crate) const CF_DEST_MEMBERS: &str = "dest_members";
/// `dest \0 seq` -> an encoded delivery (see `delivery`), drained by the destination's worker.
pub(crate) const CF_DELIVERIES: &str = "deliveries";
/// `tenant \0 canonical_id` -> the last profile applied (JSON), for timer re-evaluation.
pub(crate) const CF_PROFILES: &str = "profiles";
/// `due_ms \0 tenant \0 canonical_id` -> empty: when a profile's windows next change.
pub(crate) const CF_DUE: &str = "due";
/// `tenant \0 canonical_id` -> its entry's `due_ms` in [`CF_DUE`], to move it.
pub(crate) const CF_DUE_OF: &str = "due_of";
/// `tenant \0 canonical_id \0 channel` -> when its last `Audience Entered` deliveries on the
/// channel were sent (ms, 8 bytes big endian each, oldest first), for frequency caps.
pub(crate) const CF_CAPS: &str = "caps";
const ALL_CFS: [&str; 10] = [
    CF_MEMBERSHIPS,
    CF_OFFSETS,
    CF_OUTBOX,
    CF_META,
    CF_DEST_MEMBERS,
    CF_DELIVERIES,
    CF_PROFILES,
    CF_DUE,
    CF_DUE_OF,
    CF_CAPS,
];
/// The column families of the membership state.
pub const COLUMN_FAMILIES: [&str; 10] = ALL_CFS;
/// The column families read by key only, which get hash-indexed memtables: the others are
/// scanned in key order (what a destination holds of a person, a destination's queue, the
/// outbox, due times). Memberships are read by key by the stage but paged in key order by the
/// cohort members API, and an iterator over a hash-indexed memtable sorts a copy of all of it:
/// a page of 100 members took 310–360 ms over 200,000 people in the memtable, 31–86 µs with a
/// skip list.
const READ_BY_KEY: [&str; 4] = [CF_PROFILES, CF_DUE_OF, CF_OFFSETS, CF_META];

const META_NEXT_OUTBOX: &[u8] = b"next_outbox";
/// Bytes of the block cache all column families share.
const BLOCK_CACHE: usize = 32 << 20;
/// The most outbox records [`MembershipStore`] keeps in memory: many batches' worth.
const OUTBOX_KEPT: usize = 100_000;

/// Outbox records by sequence number, in order.
type KeptOutbox = VecDeque<(u64, Vec<u8>)>;
const META_NEXT_DELIVERY: &[u8] = b"next_delivery\0";
const META_INFLIGHT: &[u8] = b"inflight\0";

/// A profile's standing in one cohort.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberState {
    pub member: bool,
    /// Version of the last change emitted for this (cohort, profile); strictly increasing.
    pub seq: u64,
    #[serde(with = "cdp_proto::rfc3339")]
    pub since: Timestamp,
}

/// What one destination was last sent for a (cohort, profile).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DestMember {
    pub member: bool,
    /// Version of the last event this destination got for the pair; strictly increasing.
    pub seq: u64,
    /// The identifiers it was sent on entry, so the exit names the same people.
    #[serde(default)]
    pub identifiers: Vec<cdp_proto::Identifier>,
    /// The rule that keeps the person from this destination now, if one does: recorded so that
    /// it is counted once, and so that a capped entry stays withheld while the membership lasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withheld: Option<crate::rules::Withheld>,
}

pub struct MembershipStore {
    db: DB,
    /// The options of every point read, made once: creating them for each read allocates,
    /// initialises and frees a C++ object.
    read: rocksdb::ReadOptions,
    /// An outbox key below which there is nothing left: where the next outbox scan starts.
    /// Published records are deleted, and a scan from the start would step over every deletion
    /// not yet compacted away, more with each batch. Outbox keys only grow, so nothing is ever
    /// added below it.
    outbox_floor: AtomicU64,
    /// The outbox, in key order, while this process knows all of it: `None` until a read of
    /// RocksDB finds nothing left from before; from then on commits add to it and deletions
    /// take from it, and [`Self::outbox`] hands out the records the last batch committed
    /// without reading them back. Past [`OUTBOX_KEPT`] records (nobody publishing) it is
    /// dropped, and the outbox is read from RocksDB again.
    outbox_kept: std::sync::Mutex<Option<KeptOutbox>>,
    /// Per destination, the same for its delivery queue (whose sequence numbers only grow).
    delivery_floors: std::sync::Mutex<HashMap<String, u64>>,
}

impl MembershipStore {
    pub fn open(dir: &Path) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // Memtables other than skip lists take no concurrent inserts: writers (the stage's
        // batches, the delivery workers' queue updates) insert in turn.
        opts.set_allow_concurrent_memtable_write(false);
        // One block cache for all column families, of RocksDB's default size: a table factory
        // of its own would otherwise bring a cache of its own.
        let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE);
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_block_cache(&cache);
        opts.set_block_based_table_factory(&table);
        let legacy = holds(dir, CF_LEGACY_MEMBERS);
        let legacy_versions = holds(dir, CF_LEGACY_VERSIONS);
        let mut cfs: Vec<ColumnFamilyDescriptor> = ALL_CFS
            .iter()
            .map(|&n| {
                let mut cf_opts = opts.clone();
                if READ_BY_KEY.contains(&n) {
                    // Each update writes and reads a person's record, profile and due time at
                    // keys spread at random.
                    cdp_bus::hash_indexed_memtable(&mut cf_opts);
                }
                if n == CF_MEMBERSHIPS {
                    // Every update reads its person's record, which all but one of the table
                    // files it could be in do not hold.
                    let mut table = rocksdb::BlockBasedOptions::default();
                    table.set_block_cache(&cache);
                    table.set_bloom_filter(10.0, false);
                    cf_opts.set_block_based_table_factory(&table);
                }
                ColumnFamilyDescriptor::new(n, cf_opts)
            })
            .collect();
        if legacy {
            cfs.push(ColumnFamilyDescriptor::new(CF_LEGACY_MEMBERS, opts.clone()));
        }
        if legacy_versions {
            cfs.push(ColumnFamilyDescriptor::new(
                CF_LEGACY_VERSIONS,
                opts.clone(),
            ));
        }
        let mut db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(storage)?;
        // Memberships first: the versions are then moved into the records they made.
        if legacy {
            move_legacy_members(&mut db)?;
        }
        if legacy_versions {
            move_legacy_versions(&mut db)?;
        }
        Ok(Self {
            db,
            read: rocksdb::ReadOptions::default(),
            outbox_floor: AtomicU64::new(0),
            outbox_kept: Default::default(),
            delivery_floors: Default::default(),
        })
    }

    /// Opens the state for reading while a running stage owns it (a point-in-time view). A state
    /// written by an older version that kept memberships one key per cohort, or the applied
    /// versions apart, is refused: opening it for writing once ([`Self::open`], as the stage
    /// does) moves them.
    pub fn open_read_only(dir: &Path) -> Result<Self> {
        let older = [
            (CF_LEGACY_MEMBERS, "memberships one key per cohort"),
            (CF_LEGACY_VERSIONS, "the applied profile versions apart"),
        ];
        if let Some((_, what)) = older.iter().find(|(cf, _)| holds(dir, cf)) {
            return Err(ActivationError::Storage(format!(
                "the membership state in {} was written by an older cdp, which kept {what}: run \
                 activation on it once (it moves them when it opens the state for writing), then \
                 read it",
                dir.display()
            )));
        }
        let db =
            DB::open_cf_for_read_only(&Options::default(), dir, ALL_CFS, false).map_err(storage)?;
        Ok(Self {
            db,
            read: rocksdb::ReadOptions::default(),
            outbox_floor: AtomicU64::new(0),
            outbox_kept: Default::default(),
            delivery_floors: Default::default(),
        })
    }

    /// Size and compaction figures of the database, for `/metrics`.
    pub fn rocksdb_stats(&self) -> cdp_bus::RocksDbStats {
        cdp_bus::RocksDbStats::read(&self.db, ALL_CFS)
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("every column family is opened in open()")
    }

    fn scan(&self, cf: &str, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        let it = self.db.iterator_cf_opt(
            self.cf(cf),
            total_order_reads(),
            rocksdb::IteratorMode::From(prefix, rocksdb::Direction::Forward),
        );
        for item in it {
            let (k, v) = item.map_err(storage)?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// The record committed for the person `tenant \0 canonical_id` (`pair`), if there is one.
    fn standing(&self, pair: &[u8]) -> Result<Option<Standing>> {
        self.db
            .get_pinned_cf_opt(self.cf(CF_MEMBERSHIPS), pair, &self.read)
            .map_err(storage)?
            .map(|b| Standing::decode(&b))
            .transpose()
    }

    /// Every entry of the column family `cf` (one of [`COLUMN_FAMILIES`]) in key order, for
    /// tools and tests that compare whole states.
    pub fn entries(&self, cf: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if !ALL_CFS.contains(&cf) {
            return Err(ActivationError::Storage(format!("no column family {cf:?}")));
        }
        self.scan(cf, b"")
    }

    pub fn offset(&self, topic: &str, partition: i32) -> Result<Option<i64>> {
        let v = self
            .db
            .get_cf_opt(
                self.cf(CF_OFFSETS),
                offset_key(topic, partition),
                &self.read,
            )
            .map_err(storage)?;
        Ok(v.and_then(|b| b.as_slice().try_into().ok().map(i64::from_be_bytes)))
    }

    /// Current members of every cohort: `(tenant, canonical_id, audience_key)`.
    pub fn members(&self) -> Result<Vec<(String, String, String, MemberState)>> {
        let mut out = Vec::new();
        for (k, v) in self.scan(CF_MEMBERSHIPS, b"")? {
            let Some(split) = k.iter().position(|b| *b == 0) else {
                continue;
            };
            let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            let (tenant, canonical_id) = (s(&k[..split]), s(&k[split + 1..]));
            for (audience, state) in Standing::decode(&v)?.current() {
                out.push((
                    tenant.clone(),
                    canonical_id.clone(),
                    audience.to_string(),
                    state.clone(),
                ));
            }
        }
        Ok(out)
    }

    /// Up to `limit` current members of `audience` in `tenant`, in canonical id order, starting
    /// after the canonical id `after`: `(canonical_id, state)`. Ordering by canonical id makes
    /// `after` a cursor that stays valid while memberships change. Keys are
    /// `tenant \0 canonical_id`, so this walks the tenant's people from the cursor (everyone
    /// activation has applied an update to, in a cohort or not) and keeps `audience`'s members:
    /// a page of a sparse cohort walks further.
    pub fn cohort_members(
        &self,
        tenant: &str,
        audience: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, MemberState)>> {
        let mut prefix = tenant.as_bytes().to_vec();
        prefix.push(0);
        let mut start = prefix.clone();
        if let Some(after) = after {
            // `after \0` sorts after `after` and before any longer id.
            start.extend_from_slice(after.as_bytes());
            start.push(0);
        }
        let mut out = Vec::new();
        // Across people: in key order.
        let it = self.db.iterator_cf_opt(
            self.cf(CF_MEMBERSHIPS),
            total_order_reads(),
            rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward),
        );
        for item in it {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(storage)?;
            let Some(id) = k.strip_prefix(prefix.as_slice()) else {
                break;
            };
            if let Some(state) = Standing::decode(&v)?.get(audience).filter(|s| s.member) {
                let id = String::from_utf8_lossy(id).into_owned();
                out.push((id, state.clone()));
            }
        }
        Ok(out)
    }

    /// The cohorts `canonical_id` of `tenant` is currently a member of, in audience key order:
    /// `(audience_key, state)`. One point read: a person's memberships are one record.
    pub fn profile_memberships(
        &self,
        tenant: &str,
        canonical_id: &str,
    ) -> Result<Vec<(String, MemberState)>> {
        Ok(self
            .standing(&pair_key(tenant, canonical_id))?
            .unwrap_or_default()
            .current()
            .map(|(a, s)| (a.to_string(), s.clone()))
            .collect())
    }

    /// Outbox records in order, with their keys for deletion.
    pub fn outbox(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut kept = self.outbox_kept();
        if let Some(records) = kept.as_ref() {
            return Ok(records
                .iter()
                .map(|(seq, record)| (seq.to_be_bytes().to_vec(), record.clone()))
                .collect());
        }
        let floor = self.outbox_floor.load(Ordering::Relaxed).to_be_bytes();
        let mut out = Vec::new();
        let it = self.db.iterator_cf(
            self.cf(CF_OUTBOX),
            rocksdb::IteratorMode::From(&floor, rocksdb::Direction::Forward),
        );
        for item in it {
            let (k, v) = item.map_err(storage)?;
            out.push((k.to_vec(), v.to_vec()));
        }
        if let Some(first) = out.first().and_then(|(k, _)| k.as_slice().try_into().ok()) {
            self.outbox_floor
                .fetch_max(u64::from_be_bytes(first), Ordering::Relaxed);
        }
        if out.is_empty() {
            *kept = Some(VecDeque::new());
        }
        Ok(out)
    }

    fn outbox_kept(&self) -> std::sync::MutexGuard<'_, Option<KeptOutbox>> {
        self.outbox_kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Deletes published outbox records: `keys` are the first records [`Self::outbox`]
    /// returned (all of them or the ones before some that stay), so the next `outbox` starts
    /// after the last of them and does not step over their deletions again.
    ///
    /// Records published in order are a run of consecutive sequence numbers, deleted with one
    /// range deletion: a point deletion per record is an insert into the outbox's skip list
    /// below everything written since, each a search from the top. Nothing reads the outbox
    /// by key, and a scan of it steps over a range deletion at once.
    pub fn delete_outbox(&self, keys: Vec<Vec<u8>>) -> Result<()> {
        let mut batch = WriteBatch::default();
        let mut past = None;
        let mut deleted = Vec::with_capacity(keys.len());
        for k in &keys {
            if let Ok(seq) = <[u8; 8]>::try_from(k.as_slice()) {
                let seq = u64::from_be_bytes(seq);
                past = past.max(Some(seq + 1));
                deleted.push(seq);
            }
        }
        let run = deleted.len() == keys.len()
            && deleted.windows(2).all(|w| w[1] == w[0] + 1)
            && !deleted.is_empty();
        if run {
            let (first, end) = (deleted[0], deleted[deleted.len() - 1] + 1);
            batch.delete_range_cf(self.cf(CF_OUTBOX), first.to_be_bytes(), end.to_be_bytes());
        } else {
            for k in keys {
                batch.delete_cf(self.cf(CF_OUTBOX), k);
            }
        }
        self.db.write(batch).map_err(storage)?;
        if let Some(records) = self.outbox_kept().as_mut() {
            deleted.sort_unstable();
            records.retain(|(seq, _)| deleted.binary_search(seq).is_err());
        }
        if let Some(past) = past {
            self.outbox_floor.fetch_max(past, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Up to `max` queued deliveries of `dest` in order, with their sequence numbers.
    pub fn deliveries(&self, dest: &str, max: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let prefix = dest_prefix(dest);
        let floor = {
            let floors = self
                .delivery_floors
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            floors.get(dest).copied().unwrap_or(0)
        };
        let start = delivery_key(dest, floor);
        let mut out = Vec::new();
        let it = self.db.iterator_cf(
            self.cf(CF_DELIVERIES),
            rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward),
        );
        for item in it {
            let (k, v) = item.map_err(storage)?;
            if !k.starts_with(&prefix) || out.len() >= max {
                break;
            }
            let seq = k[prefix.len()..]
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| ActivationError::Corrupt("delivery key".into()))?;
            out.push((seq, v.to_vec()));
        }
        if let Some((first, _)) = out.first() {
            let mut floors = self
                .delivery_floors
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let at = floors.entry(dest.to_string()).or_insert(0);
            *at = (*at).max(*first);
        }
        Ok(out)
    }

    /// Removes delivered (or dead-lettered) entries of `dest` and its in-flight marker.
    pub fn complete_deliveries(&self, dest: &str, seqs: &[u64]) -> Result<()> {
        let mut batch = WriteBatch::default();
        for seq in seqs {
            batch.delete_cf(self.cf(CF_DELIVERIES), delivery_key(dest, *seq));
        }
        batch.delete_cf(self.cf(CF_META), meta_key(META_INFLIGHT, dest));
        self.db.write(batch).map_err(storage)
    }

    /// The batch of `dest` being attempted (its sequence numbers), kept so that a restart
    /// retries exactly the same batch under the same webhook id.
    pub fn inflight(&self, dest: &str) -> Result<Option<Vec<u64>>> {
        self.db
            .get_cf_opt(self.cf(CF_META), meta_key(META_INFLIGHT, dest), &self.read)
            .map_err(storage)?
            .map(|b| decode(&b))
            .transpose()
    }

    pub fn set_inflight(&self, dest: &str, seqs: &[u64]) -> Result<()> {
        let value = serde_json::to_vec(seqs).expect("sequence numbers serialise");
        self.db
            .put_cf(self.cf(CF_META), meta_key(META_INFLIGHT, dest), value)
            .map_err(storage)
    }

    /// One queued delivery of `dest`, if it is still queued.
    pub fn delivery(&self, dest: &str, seq: u64) -> Result<Option<Vec<u8>>> {
        self.db
            .get_cf_opt(self.cf(CF_DELIVERIES), delivery_key(dest, seq), &self.read)
            .map_err(storage)
    }

    /// What `dest` holds for a (cohort, profile).
    pub fn dest_member(
        &self,
        dest: &str,
        tenant: &str,
        canonical_id: &str,
        audience: &str,
    ) -> Result<Option<DestMember>> {
        self.db
            .get_cf_opt(
                self.cf(CF_DEST_MEMBERS),
                dest_member_key(dest, tenant, canonical_id, audience),
                &self.read,
            )
            .map_err(storage)?
            .map(|b| decode(&b))
            .transpose()
    }

    /// The (cohort, profile) pairs `dest` has state for that satisfy `keep`:
    /// `(tenant, canonical_id, audience, state)`, in key order.
    pub fn dest_members_where(
        &self,
        dest: &str,
        keep: impl Fn(&DestMember) -> bool,
    ) -> Result<Vec<(String, String, String, DestMember)>> {
        let prefix = dest_prefix(dest);
        let mut out = Vec::new();
        let it = self.db.iterator_cf(
            self.cf(CF_DEST_MEMBERS),
            rocksdb::IteratorMode::From(&prefix, rocksdb::Direction::Forward),
        );
        for item in it {
            let (k, v) = item.map_err(storage)?;
            let Some(rest) = k.strip_prefix(prefix.as_slice()) else {
                break;
            };
            let state: DestMember = decode(&v)?;
            if !keep(&state) {
                continue;
            }
            let parts: Vec<&[u8]> = rest.split(|b| *b == 0).collect();
            if let [t, c, a] = parts.as_slice() {
                let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                out.push((s(t), s(c), s(a), state));
            }
        }
        Ok(out)
    }

    /// Profiles whose windows change at or before `now_ms`: `(due_ms, tenant, canonical_id)`.
    pub fn due(&self, now_ms: u64, max: usize) -> Result<Vec<(u64, String, String)>> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_DUE), rocksdb::IteratorMode::Start)
        {
            let (k, _) = item.map_err(storage)?;
            if out.len() >= max || k.len() < 9 {
                break;
            }
            let due = u64::from_be_bytes(k[..8].try_into().expect("8 bytes checked above"));
            if due > now_ms {
                break;
            }
            let parts: Vec<&[u8]> = k[9..].split(|b| *b == 0).collect();
            if let [t, c] = parts.as_slice() {
                let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                out.push((due, s(t), s(c)));
            }
        }
        Ok(out)
    }

    pub fn txn(&self) -> Result<MembershipTxn<'_>> {
        let next_outbox = self
            .db
            .get_cf_opt(self.cf(CF_META), META_NEXT_OUTBOX, &self.read)
            .map_err(storage)?
            .and_then(|b| b.as_slice().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0);
        Ok(MembershipTxn {
            store: self,
            people: Keyed::default(),
            loaded: Vec::new(),
            key: Vec::new(),
            kv_reads: HashMap::default(),
            offsets: BTreeMap::new(),
            outbox: Vec::new(),
            next_outbox,
            kv: BTreeMap::new(),
            deliveries: BTreeMap::new(),
            iters: Vec::new(),
        })
    }
}

/// A transaction's reads and writes by key. Keys hold tenant-supplied bytes, so the hasher is
/// seeded; a batch of a few hundred people looks up thousands of them, where a search of an
/// ordered map cost a memcmp per level. The order writes reach the write batch does not matter.
type Keyed<V> = HashMap<Vec<u8>, V, Seeded>;
/// The hasher of every read cache of a transaction: foldhash, seeded at random per process.
type Seeded = foldhash::quality::RandomState;

/// A person's record in a [`MembershipTxn`].
struct Person {
    standing: Standing,
    /// Whether the batch changed them: only those are written.
    written: bool,
}

/// Writes of one batch, read-your-writes, committed atomically. What it read is cached apart
/// from what it wrote, so that a commit writes only what changed.
pub struct MembershipTxn<'s> {
    store: &'s MembershipStore,
    /// The record of each person read or written, by `tenant \0 canonical_id`: as read from
    /// the store, with this batch's writes applied.
    people: Keyed<Person>,
    /// Per column family, the prefixes read whole into the read caches
    /// ([`MembershipTxn::load_person`]): a key under one of them that is not cached is absent
    /// from the store.
    loaded: Vec<(&'static str, HashSet<Vec<u8>, Seeded>)>,
    /// Where [`MembershipTxn::person`] builds the key it looks up, so a cached answer costs no
    /// allocation.
    key: Vec<u8>,
    /// Reads of the other column families (`None`: absent).
    kv_reads: HashMap<(&'static str, Vec<u8>), Option<Vec<u8>>, Seeded>,
    offsets: BTreeMap<Vec<u8>, i64>,
    outbox: Vec<Vec<u8>>,
    next_outbox: u64,
    /// Writes to the other column families: `None` deletes.
    kv: BTreeMap<(&'static str, Vec<u8>), Option<Vec<u8>>>,
    /// Per destination: next sequence number and the entries queued in this batch.
    deliveries: BTreeMap<String, (u64, Vec<Vec<u8>>)>,
    /// One iterator per column family scanned (what destinations hold), made at its first scan
    /// and sought again for the next: making an iterator costs more than the scan of a person's
    /// few keys. Only transactions write those column families, and the stage commits them one
    /// at a time (delivery workers write their queues only), so the view an iterator was made
    /// at stays the committed state while the transaction is open.
    iters: Vec<(&'static str, rocksdb::DBRawIteratorWithThreadMode<'s, DB>)>,
}

impl<'s> MembershipTxn<'s> {
    /// The committed entries of `cf` under `prefix`, in key order.
    fn scan(&mut self, cf: &'static str, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let store = self.store;
        let at = match self.iters.iter().position(|(name, _)| *name == cf) {
            Some(at) => at,
            None => {
                self.iters
                    .push((cf, store.db.raw_iterator_cf(store.cf(cf))));
                self.iters.len() - 1
            }
        };
        let it = &mut self.iters[at].1;
        it.seek(prefix);
        let mut out = Vec::new();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
            it.next();
        }
        it.status().map_err(storage)?;
        Ok(out)
    }

    /// The person's record in this batch: read from the store the first time.
    fn person(&mut self, tenant: &str, canonical_id: &str) -> Result<&mut Person> {
        let mut key = std::mem::take(&mut self.key);
        key.clear();
        push_pair_key(&mut key, tenant, canonical_id);
        if !self.people.contains_key(&key) {
            let standing = match self.store.standing(&key)? {
                Some(standing) => standing,
                None => {
                    // Never applied: a due time is written only with the person's record (in
                    // the same write), and records are never deleted, so there is none to read.
                    self.kv_reads.insert((CF_DUE_OF, key.clone()), None);
                    Standing::default()
                }
            };
            let person = Person {
                standing,
                written: false,
            };
            self.people.insert(key.clone(), person);
        }
        let person = self.people.get_mut(&key).expect("inserted above");
        self.key = key;
        Ok(person)
    }

    pub fn state(
        &mut self,
        tenant: &str,
        canonical_id: &str,
        audience: &str,
    ) -> Result<Option<MemberState>> {
        Ok(self
            .person(tenant, canonical_id)?
            .standing
            .get(audience)
            .cloned())
    }

    /// Reads every membership of the person (one record), and what each destination holds of
    /// them in one prefix scan per destination: those keys sit side by side, and a scan finds
    /// them all for the price of about one point read each would cost. Later reads of the
    /// person are served from the cache.
    pub fn load_person(
        &mut self,
        dests: &[crate::destination::Destination],
        tenant: &str,
        canonical_id: &str,
    ) -> Result<()> {
        self.person(tenant, canonical_id)?;
        let mut prefix = pair_key(tenant, canonical_id);
        prefix.push(0);
        for dest in dests {
            let mut under = dest_prefix(dest.key());
            under.extend_from_slice(&prefix);
            if self.mark_loaded(CF_DEST_MEMBERS, &under) {
                for (k, v) in self.scan(CF_DEST_MEMBERS, &under)? {
                    self.kv_reads.insert((CF_DEST_MEMBERS, k), Some(v));
                }
            }
        }
        Ok(())
    }

    pub fn set_state(
        &mut self,
        tenant: &str,
        canonical_id: &str,
        audience: &str,
        state: MemberState,
    ) -> Result<()> {
        let person = self.person(tenant, canonical_id)?;
        person.standing.set(audience, state);
        person.written = true;
        Ok(())
    }

    /// Audience keys `canonical_id` is currently a member of.
    pub fn memberships(&mut self, tenant: &str, canonical_id: &str) -> Result<Vec<String>> {
        Ok(self
            .person(tenant, canonical_id)?
            .standing
            .current()
            .map(|(a, _)| a.to_string())
            .collect())
    }

    /// The last profile version applied to the person and the fingerprints of its cohort inputs.
    pub fn applied(&mut self, tenant: &str, canonical_id: &str) -> Result<Applied> {
        Ok(self.person(tenant, canonical_id)?.standing.applied.clone())
    }

    pub fn set_applied(
        &mut self,
        tenant: &str,
        canonical_id: &str,
        applied: Applied,
    ) -> Result<()> {
        let person = self.person(tenant, canonical_id)?;
        person.standing.applied = applied;
        person.written = true;
        Ok(())
    }

    pub fn version(&mut self, tenant: &str, canonical_id: &str) -> Result<u64> {
        Ok(self.person(tenant, canonical_id)?.standing.applied.version)
    }

    /// Sets the person's version and forgets the fingerprints of its inputs: its memberships
    /// change other than by evaluation (an identity change), so the next update evaluates them all.
    pub fn set_version(&mut self, tenant: &str, canonical_id: &str, version: u64) -> Result<()> {
        let applied = Applied {
            version,
            inputs: Vec::new(),
        };
        self.set_applied(tenant, canonical_id, applied)
    }

    pub fn set_offset(&mut self, topic: &str, partition: i32, next: i64) {
        self.offsets.insert(offset_key(topic, partition), next);
    }

    pub fn push_outbox(&mut self, encoded: Vec<u8>) {
        self.outbox.push(encoded);
    }

    fn is_loaded(&self, cf: &str, prefix: &[u8]) -> bool {
        self.loaded
            .iter()
            .any(|(c, prefixes)| *c == cf && prefixes.contains(prefix))
    }

    /// Notes `prefix` of `cf` as read whole; `false` if it already was.
    fn mark_loaded(&mut self, cf: &'static str, prefix: &[u8]) -> bool {
        let at = match self.loaded.iter().position(|(c, _)| *c == cf) {
            Some(at) => at,
            None => {
                self.loaded.push((cf, HashSet::default()));
                self.loaded.len() - 1
            }
        };
        let prefixes = &mut self.loaded[at].1;
        !prefixes.contains(prefix) && prefixes.insert(prefix.to_vec())
    }

    fn get(&mut self, cf: &'static str, key: Vec<u8>) -> Result<Option<Vec<u8>>> {
        let entry = (cf, key);
        if let Some(v) = self.kv.get(&entry).or_else(|| self.kv_reads.get(&entry)) {
            return Ok(v.clone());
        }
        let (cf, key) = entry;
        if self.is_loaded(cf, person_prefix(&key)) {
            return Ok(None);
        }
        let v = self
            .store
            .db
            .get_cf_opt(self.store.cf(cf), &key, &self.store.read)
            .map_err(storage)?;
        self.kv_reads.insert((cf, key), v.clone());
        Ok(v)
    }

    fn put(&mut self, cf: &'static str, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.kv.insert((cf, key), value);
    }

    pub fn dest_member(
        &mut self,
        dest: &str,
        tenant: &str,
        canonical_id: &str,
        audience: &str,
    ) -> Result<Option<DestMember>> {
        let key = dest_member_key(dest, tenant, canonical_id, audience);
        self.get(CF_DEST_MEMBERS, key)?
            .map(|b| decode(&b))
            .transpose()
    }

    pub fn set_dest_member(
        &mut self,
        dest: &str,
        tenant: &str,
        canonical_id: &str,
        audience: &str,
        state: &DestMember,
    ) {
        let key = dest_member_key(dest, tenant, canonical_id, audience);
        let value = serde_json::to_vec(state).expect("DestMember serialises");
        self.put(CF_DEST_MEMBERS, key, Some(value));
    }

    /// Whether `dest` was ever sent anything about the person; forgets it when `forget`.
    pub fn dest_received(
        &mut self,
        dest: &str,
        tenant: &str,
        canonical_id: &str,
        forget: bool,
    ) -> Result<bool> {
        let mut prefix = dest_prefix(dest);
        prefix.extend_from_slice(&pair_key(tenant, canonical_id));
        prefix.push(0);
        let mut keys: Vec<Vec<u8>> = self
            .scan(CF_DEST_MEMBERS, &prefix)?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        keys.extend(
            self.kv
                .iter()
                .filter(|((cf, k), v)| {
                    *cf == CF_DEST_MEMBERS && k.starts_with(&prefix) && v.is_some()
                })
                .map(|((_, k), _)| k.clone()),
        );
        keys.sort();
        keys.dedup();
        let mut received = false;
        for k in keys {
            if let Some(v) = self.get(CF_DEST_MEMBERS, k.clone())? {
                // An entry with no event sent only records a rule that withheld the person.
                received |= decode::<DestMember>(&v)?.seq > 0;
                if forget {
                    self.put(CF_DEST_MEMBERS, k, None);
                }
            }
        }
        Ok(received)
    }

    /// When the person's last `Audience Entered` deliveries on `channel` were sent (ms), oldest
    /// first.
    pub fn cap_history(
        &mut self,
        tenant: &str,
        canonical_id: &str,
        channel: &str,
    ) -> Result<Vec<u64>> {
        let Some(b) = self.get(CF_CAPS, cap_key(tenant, canonical_id, channel))? else {
            return Ok(Vec::new());
        };
        if !b.len().is_multiple_of(8) {
            return Err(ActivationError::Corrupt(format!(
                "frequency cap entry of {} bytes",
                b.len()
            )));
        }
        Ok(b.chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().expect("chunks of 8")))
            .collect())
    }

    /// Replaces the person's history on `channel`; an empty one is removed.
    pub fn set_cap_history(
        &mut self,
        tenant: &str,
        canonical_id: &str,
        channel: &str,
        sent_ms: &[u64],
    ) {
        let value =
            (!sent_ms.is_empty()).then(|| sent_ms.iter().flat_map(|t| t.to_be_bytes()).collect());
        self.put(CF_CAPS, cap_key(tenant, canonical_id, channel), value);
    }

    /// The channels the person has a frequency cap history on.
    pub fn cap_channels(&mut self, tenant: &str, canonical_id: &str) -> Result<Vec<String>> {
        let mut prefix = pair_key(tenant, canonical_id);
        prefix.push(0);
        let mut keys: Vec<Vec<u8>> = self
            .store
            .scan(CF_CAPS, &prefix)?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        keys.extend(
            self.kv
                .keys()
                .filter(|(cf, k)| *cf == CF_CAPS && k.starts_with(&prefix))
                .map(|(_, k)| k.clone()),
        );
        keys.sort();
        keys.dedup();
        let mut out = Vec::new();
        for k in keys {
            if self.get(CF_CAPS, k.clone())?.is_some() {
                out.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
            }
        }
        Ok(out)
    }

    /// Queues an encoded delivery for `dest`'s worker.
    pub fn push_delivery(&mut self, dest: &str, encoded: Vec<u8>) -> Result<()> {
        if !self.deliveries.contains_key(dest) {
            let next = self
                .store
                .db
                .get_cf_opt(
                    self.store.cf(CF_META),
                    meta_key(META_NEXT_DELIVERY, dest),
                    &self.store.read,
                )
                .map_err(storage)?
                .and_then(|b| b.as_slice().try_into().ok().map(u64::from_be_bytes))
                .unwrap_or(0);
            self.deliveries.insert(dest.to_string(), (next, Vec::new()));
        }
        let entry = self.deliveries.get_mut(dest).expect("inserted above");
        entry.1.push(encoded);
        Ok(())
    }

    /// The last profile stored for the person (raw JSON).
    pub fn profile(&mut self, tenant: &str, canonical_id: &str) -> Result<Option<Vec<u8>>> {
        self.get(CF_PROFILES, pair_key(tenant, canonical_id))
    }

    /// Stores the person's last profile update (raw JSON) and when it must next be re-evaluated,
    /// or with `None` forgets both: only a new event can change their memberships.
    pub fn schedule(
        &mut self,
        tenant: &str,
        canonical_id: &str,
        next: Option<(Vec<u8>, u64)>,
    ) -> Result<()> {
        let pair = pair_key(tenant, canonical_id);
        let old = self
            .get(CF_DUE_OF, pair.clone())?
            .and_then(|b| b.as_slice().try_into().ok().map(u64::from_be_bytes));
        match (old, next) {
            (None, None) => {}
            (Some(old), None) => {
                self.put(CF_DUE, due_key(old, &pair), None);
                self.put(CF_DUE_OF, pair.clone(), None);
                self.put(CF_PROFILES, pair, None);
            }
            (old, Some((profile, due))) => {
                if old != Some(due) {
                    if let Some(old) = old {
                        self.put(CF_DUE, due_key(old, &pair), None);
                    }
                    self.put(CF_DUE, due_key(due, &pair), Some(Vec::new()));
                    self.put(CF_DUE_OF, pair.clone(), Some(due.to_be_bytes().to_vec()));
                }
                self.put(CF_PROFILES, pair, Some(profile));
            }
        }
        Ok(())
    }

    pub fn commit(self) -> Result<()> {
        let s = self.store;
        let mut batch = WriteBatch::default();
        for ((cf, k), v) in self.kv {
            match v {
                Some(v) => batch.put_cf(s.cf(cf), k, v),
                None => batch.delete_cf(s.cf(cf), k),
            }
        }
        for (dest, (mut seq, entries)) in self.deliveries {
            for e in entries {
                batch.put_cf(s.cf(CF_DELIVERIES), delivery_key(&dest, seq), e);
                seq += 1;
            }
            batch.put_cf(
                s.cf(CF_META),
                meta_key(META_NEXT_DELIVERY, &dest),
                seq.to_be_bytes(),
            );
        }
        for (k, person) in self.people {
            if person.written {
                batch.put_cf(s.cf(CF_MEMBERSHIPS), k, person.standing.encode());
            }
        }
        for (k, v) in self.offsets {
            batch.put_cf(s.cf(CF_OFFSETS), k, v.to_be_bytes());
        }
        let first = self.next_outbox;
        for (seq, record) in (first..).zip(&self.outbox) {
            batch.put_cf(s.cf(CF_OUTBOX), seq.to_be_bytes(), record);
        }
        let next = first + self.outbox.len() as u64;
        batch.put_cf(s.cf(CF_META), META_NEXT_OUTBOX, next.to_be_bytes());
        s.db.write(batch).map_err(storage)?;
        let mut kept = s.outbox_kept();
        if let Some(records) = kept.as_mut() {
            records.extend((first..).zip(self.outbox));
            if records.len() > OUTBOX_KEPT {
                *kept = None;
            }
        }
        Ok(())
    }
}

fn member_key(tenant: &str, canonical_id: &str, audience: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + canonical_id.len() + audience.len() + 2);
    push_pair_key(&mut k, tenant, canonical_id);
    k.push(0);
    k.extend_from_slice(audience.as_bytes());
    k
}

/// Reads in key order across a column family: one with a hash-indexed memtable is otherwise
/// read within the seek key's bucket only.
fn total_order_reads() -> rocksdb::ReadOptions {
    let mut read = rocksdb::ReadOptions::default();
    read.set_total_order_seek(true);
    read
}

/// Whether the state in `dir` has the column family `cf` (those of older layouts are dropped once
/// moved); `false` when there is no database yet.
fn holds(dir: &Path, cf: &str) -> bool {
    DB::list_cf(&Options::default(), dir).is_ok_and(|cfs| cfs.iter().any(|n| n == cf))
}

/// Moves memberships kept one key per cohort ([`CF_LEGACY_MEMBERS`]) into one record per person
/// ([`CF_MEMBERSHIPS`]), then drops the old column family. It runs as the state opens, before
/// anything else writes memberships, and the old column family goes last: a move cut short is
/// redone whole on the next open, writing the same records again.
fn move_legacy_members(db: &mut DB) -> Result<()> {
    tracing::info!(
        "moving memberships from one key per cohort to one record per person (once, on the \
         first open by this version)"
    );
    let started = std::time::Instant::now();
    let mut people = 0usize;
    let last = {
        let (from, to) = (
            db.cf_handle(CF_LEGACY_MEMBERS).expect("opened with it"),
            db.cf_handle(CF_MEMBERSHIPS).expect("opened with it"),
        );
        let mut batch = WriteBatch::default();
        let mut person: Option<(Vec<u8>, Standing)> = None;
        let mut put = |batch: &mut WriteBatch, (pair, standing): (Vec<u8>, Standing)| {
            batch.put_cf(to, pair, standing.encode());
            people += 1;
        };
        let it = db.iterator_cf_opt(from, total_order_reads(), rocksdb::IteratorMode::Start);
        for item in it {
            let (k, v) = item.map_err(storage)?;
            // `tenant \0 canonical_id \0 audience`: a person's keys are side by side.
            let corrupt = || {
                let key = String::from_utf8_lossy(&k);
                ActivationError::Corrupt(format!("membership key {key:?}"))
            };
            let split = k
                .iter()
                .rposition(|b| *b == 0)
                .filter(|&at| k[..at].contains(&0))
                .ok_or_else(corrupt)?;
            let (pair, audience) = (&k[..split], &k[split + 1..]);
            let audience = std::str::from_utf8(audience).map_err(|_| corrupt())?;
            let state: MemberState = decode(&v)?;
            match person.as_mut() {
                Some((p, standing)) if p.as_slice() == pair => standing.set(audience, state),
                _ => {
                    if let Some(done) = person.take() {
                        put(&mut batch, done);
                        if batch.len() >= MOVE_CHUNK {
                            db.write(std::mem::take(&mut batch)).map_err(storage)?;
                        }
                    }
                    let mut standing = Standing::default();
                    standing.set(audience, state);
                    person = Some((pair.to_vec(), standing));
                }
            }
        }
        if let Some(done) = person.take() {
            put(&mut batch, done);
        }
        batch
    };
    finish_move(db, last, CF_LEGACY_MEMBERS)?;
    moved(
        people,
        started,
        "moved memberships from one key per cohort to one record per person",
    );
    Ok(())
}

/// Moves the applied versions kept apart ([`CF_LEGACY_VERSIONS`]) into each person's record
/// ([`CF_MEMBERSHIPS`]), then drops the old column family. Like [`move_legacy_members`] it runs
/// as the state opens, and a move cut short is redone whole on the next open: a record already
/// holding its version gets the same version again.
fn move_legacy_versions(db: &mut DB) -> Result<()> {
    tracing::info!(
        "moving applied profile versions into the people's records (once, on the first open by \
         this version)"
    );
    let started = std::time::Instant::now();
    let mut people = 0usize;
    let last = {
        let (from, to) = (
            db.cf_handle(CF_LEGACY_VERSIONS).expect("opened with it"),
            db.cf_handle(CF_MEMBERSHIPS).expect("opened with it"),
        );
        let mut batch = WriteBatch::default();
        let it = db.iterator_cf_opt(from, total_order_reads(), rocksdb::IteratorMode::Start);
        for item in it {
            let (pair, v) = item.map_err(storage)?;
            let mut standing = db
                .get_pinned_cf(to, &pair)
                .map_err(storage)?
                .map_or_else(|| Ok(Standing::default()), |b| Standing::decode(&b))?;
            standing.applied = Applied::decode_words(&v)?;
            batch.put_cf(to, &pair, standing.encode());
            people += 1;
            if batch.len() >= MOVE_CHUNK {
                db.write(std::mem::take(&mut batch)).map_err(storage)?;
            }
        }
        batch
    };
    finish_move(db, last, CF_LEGACY_VERSIONS)?;
    moved(
        people,
        started,
        "moved applied profile versions into the people's records",
    );
    Ok(())
}

/// People written per batch by a move into [`CF_MEMBERSHIPS`].
const MOVE_CHUNK: usize = 10_000;

/// Ends a move into [`CF_MEMBERSHIPS`]: writes its `last` batch, flushes the records to table
/// files, then drops the old column family `from`, which goes last so that a move cut short is
/// made again on the next open.
fn finish_move(db: &mut DB, last: WriteBatch, from: &str) -> Result<()> {
    db.write(last).map_err(storage)?;
    let to = db.cf_handle(CF_MEMBERSHIPS).expect("opened with it");
    db.flush_cf(to).map_err(storage)?;
    db.drop_cf(from).map_err(storage)
}

/// Logs a finished move of `people` records.
fn moved(people: usize, started: std::time::Instant, what: &str) {
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(people, seconds, "{what}");
}

/// A key up to and including its last `\0`: for `… tenant \0 canonical_id \0 name` keys, the
/// person's prefix (names, audience keys and channels, hold no `\0`).
fn person_prefix(key: &[u8]) -> &[u8] {
    let end = key.iter().rposition(|b| *b == 0).map_or(0, |i| i + 1);
    &key[..end]
}

fn pair_key(tenant: &str, canonical_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + 1 + canonical_id.len());
    push_pair_key(&mut k, tenant, canonical_id);
    k
}

/// Appends a person's key, `tenant \0 canonical_id`, to `k`.
fn push_pair_key(k: &mut Vec<u8>, tenant: &str, canonical_id: &str) {
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(canonical_id.as_bytes());
}

fn cap_key(tenant: &str, canonical_id: &str, channel: &str) -> Vec<u8> {
    let mut k = pair_key(tenant, canonical_id);
    k.push(0);
    k.extend_from_slice(channel.as_bytes());
    k
}

fn dest_prefix(dest: &str) -> Vec<u8> {
    let mut k = dest.as_bytes().to_vec();
    k.push(0);
    k
}

fn dest_member_key(dest: &str, tenant: &str, canonical_id: &str, audience: &str) -> Vec<u8> {
    let mut k = dest_prefix(dest);
    k.extend_from_slice(&member_key(tenant, canonical_id, audience));
    k
}

fn delivery_key(dest: &str, seq: u64) -> Vec<u8> {
    let mut k = dest_prefix(dest);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn due_key(due_ms: u64, pair: &[u8]) -> Vec<u8> {
    let mut k = due_ms.to_be_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(pair);
    k
}

fn meta_key(prefix: &[u8], dest: &str) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(dest.as_bytes());
    k
}

fn offset_key(topic: &str, partition: i32) -> Vec<u8> {
    let mut k = topic.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

fn decode<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T> {
    serde_json::from_slice(b).map_err(|e| ActivationError::Corrupt(e.to_string()))
}

fn storage(e: rocksdb::Error) -> ActivationError {
    ActivationError::Storage(e.into_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(member: bool, seq: u64) -> MemberState {
        MemberState {
            member,
            seq,
            since: chrono::DateTime::from_timestamp(1_700_000_000 + seq as i64, 0).unwrap(),
        }
    }

    #[test]
    fn column_families_read_by_key_still_list_in_key_order_before_and_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<String> = (0..200)
            .map(|n| format!("cdp_{}", (n * 7919) % 1000))
            .collect();
        let mut expected: Vec<Vec<u8>> = ids.iter().map(|id| pair_key("acme", id)).collect();
        expected.sort();
        let keys = |store: &MembershipStore| -> Vec<Vec<u8>> {
            store
                .entries(CF_MEMBERSHIPS)
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        {
            let store = MembershipStore::open(dir.path()).unwrap();
            // Half in one batch, half in the next, each in a scattered order.
            for half in ids.chunks(100) {
                let mut txn = store.txn().unwrap();
                for id in half {
                    txn.set_version("acme", id, 1).unwrap();
                }
                for p in [3, 0, 2, 1] {
                    txn.set_offset("cdp.profiles", p, 10);
                }
                txn.commit().unwrap();
            }
            assert_eq!(keys(&store), expected);
            let offsets: Vec<Vec<u8>> = store
                .entries(CF_OFFSETS)
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            assert_eq!(
                offsets,
                (0..4)
                    .map(|p| offset_key("cdp.profiles", p))
                    .collect::<Vec<_>>()
            );
        }
        // Reopened: the log is recovered into table files, read in the same order.
        let store = MembershipStore::open(dir.path()).unwrap();
        assert_eq!(keys(&store), expected);
        let mut txn = store.txn().unwrap();
        assert_eq!(txn.version("acme", &ids[17]).unwrap(), 1);
        assert_eq!(txn.version("acme", "cdp_unknown").unwrap(), 0);
    }

    #[test]
    fn cohort_members_pages_one_tenant_and_one_cohort_in_id_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = MembershipStore::open(dir.path()).unwrap();
        let mut txn = store.txn().unwrap();
        // `cdp_1` and `cdp_10`: one id is a prefix of the next, the cursor must not skip it.
        for id in ["cdp_3", "cdp_1", "cdp_10", "cdp_2", "cdp_4"] {
            txn.set_state("acme", id, "buyers", state(true, 1)).unwrap();
            txn.set_state("acme", id, "leads", state(true, 1)).unwrap();
            txn.set_state("zeta", id, "buyers", state(true, 1)).unwrap();
        }
        txn.set_state("acme", "cdp_2", "buyers", state(false, 2))
            .unwrap();
        txn.set_state("acme", "cdp_5", "leads", state(true, 1))
            .unwrap();
        txn.set_state("acm", "cdp_0", "buyers", state(true, 1))
            .unwrap();
        txn.commit().unwrap();

        let check = |store: &MembershipStore| {
            let ids = |after: Option<&str>, limit| -> Vec<String> {
                store
                    .cohort_members("acme", "buyers", after, limit)
                    .unwrap()
                    .into_iter()
                    .map(|(id, _)| id)
                    .collect()
            };
            assert_eq!(ids(None, 100), ["cdp_1", "cdp_10", "cdp_3", "cdp_4"]);
            assert_eq!(ids(None, 2), ["cdp_1", "cdp_10"]);
            assert_eq!(ids(Some("cdp_1"), 2), ["cdp_10", "cdp_3"]);
            assert_eq!(ids(Some("cdp_10"), 2), ["cdp_3", "cdp_4"]);
            // A cursor that is no longer a member (or never was) still places the page.
            assert_eq!(ids(Some("cdp_2"), 2), ["cdp_3", "cdp_4"]);
            assert_eq!(ids(Some("cdp_4"), 2), Vec::<String>::new());
            let leads = store
                .cohort_members("acme", "leads", Some("cdp_4"), 10)
                .unwrap();
            assert_eq!(leads, [("cdp_5".to_string(), state(true, 1))]);
            assert!(store
                .cohort_members("nobody", "buyers", None, 10)
                .unwrap()
                .is_empty());
        };
        // From the memtable (hashed by person), then from table files.
        check(&store);
        drop(store);
        check(&MembershipStore::open(dir.path()).unwrap());
    }

    #[test]
    fn a_loaded_person_reads_as_point_reads_do_and_sees_its_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = MembershipStore::open(dir.path()).unwrap();
        let mut txn = store.txn().unwrap();
        txn.set_state("acme", "cdp_1", "leads", state(true, 1))
            .unwrap();
        txn.set_state("acme", "cdp_1", "buyers", state(false, 2))
            .unwrap();
        // People whose ids start with the person's.
        txn.set_state("acme", "cdp_10", "vips", state(true, 1))
            .unwrap();
        txn.set_state("acme", "cdp_1x", "leads", state(true, 5))
            .unwrap();
        txn.commit().unwrap();
        // Read from table files as well as from the memtable: reopened, the first write is in
        // a table file and the next in the memtable.
        drop(store);
        let store = MembershipStore::open(dir.path()).unwrap();

        let read = |load: bool| {
            let mut txn = store.txn().unwrap();
            if load {
                txn.load_person(&[], "acme", "cdp_1").unwrap();
            }
            ["leads", "buyers", "vips", "lapsed"].map(|a| txn.state("acme", "cdp_1", a).unwrap())
        };
        assert_eq!(read(true), read(false));
        assert_eq!(
            read(true),
            [Some(state(true, 1)), Some(state(false, 2)), None, None]
        );

        let mut txn = store.txn().unwrap();
        txn.load_person(&[], "acme", "cdp_1").unwrap();
        txn.set_state("acme", "cdp_1", "lapsed", state(true, 3))
            .unwrap();
        assert_eq!(
            txn.state("acme", "cdp_1", "lapsed").unwrap(),
            Some(state(true, 3))
        );
        assert_eq!(
            txn.memberships("acme", "cdp_1").unwrap(),
            ["lapsed", "leads"]
        );
        txn.commit().unwrap();
        let held = store.profile_memberships("acme", "cdp_1").unwrap();
        assert_eq!(
            held,
            [
                ("lapsed".to_string(), state(true, 3)),
                ("leads".to_string(), state(true, 1))
            ]
        );
    }

    #[test]
    fn the_outbox_reads_in_order_after_deletions_and_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let seqs = |store: &MembershipStore| -> Vec<Vec<u8>> {
            store
                .outbox()
                .unwrap()
                .into_iter()
                .map(|(_, v)| v)
                .collect()
        };
        {
            let store = MembershipStore::open(dir.path()).unwrap();
            let mut published = 0u8;
            for batch in 0..4u8 {
                let mut txn = store.txn().unwrap();
                for i in 0..3 {
                    txn.push_outbox(vec![batch * 3 + i]);
                }
                txn.commit().unwrap();
                let pending = store.outbox().unwrap();
                // Read from memory once the store knows the whole outbox; the same either way.
                assert_eq!(pending, store.entries(CF_OUTBOX).unwrap());
                let values: Vec<Vec<u8>> = pending.iter().map(|(_, v)| v.clone()).collect();
                let expected: Vec<Vec<u8>> = (published..batch * 3 + 3).map(|i| vec![i]).collect();
                assert_eq!(values, expected);
                // Publish all but the last record of the batch: it stays first in line.
                let (keys, _): (Vec<_>, Vec<_>) =
                    pending[..pending.len() - 1].iter().cloned().unzip();
                published = batch * 3 + 2;
                store.delete_outbox(keys).unwrap();
                assert_eq!(store.outbox().unwrap(), store.entries(CF_OUTBOX).unwrap());
            }
            assert_eq!(seqs(&store), [vec![11]]);
        }
        let store = MembershipStore::open(dir.path()).unwrap();
        assert_eq!(seqs(&store), [vec![11]]);
        // What the last run left is read from RocksDB, and new records queue behind it.
        let mut txn = store.txn().unwrap();
        txn.push_outbox(vec![12]);
        txn.commit().unwrap();
        assert_eq!(seqs(&store), [vec![11], vec![12]]);
        let (keys, _): (Vec<_>, Vec<_>) = store.outbox().unwrap().into_iter().unzip();
        store.delete_outbox(keys).unwrap();
        assert!(store.outbox().unwrap().is_empty());
        let mut txn = store.txn().unwrap();
        txn.push_outbox(vec![13]);
        txn.commit().unwrap();
        assert_eq!(seqs(&store), [vec![13]]);
        assert_eq!(store.outbox().unwrap(), store.entries(CF_OUTBOX).unwrap());
    }

    #[test]
    fn an_outbox_nobody_publishes_is_read_back_from_rocksdb_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = MembershipStore::open(dir.path()).unwrap();
        assert!(store.outbox().unwrap().is_empty());
        assert!(
            store.outbox_kept().is_some(),
            "kept from the first empty read on"
        );
        for batch in 0..2u32 {
            let mut txn = store.txn().unwrap();
            for i in 0..OUTBOX_KEPT as u32 / 2 + 1 {
                txn.push_outbox((batch << 24 | i).to_be_bytes().to_vec());
            }
            txn.commit().unwrap();
        }
        assert!(store.outbox_kept().is_none(), "not kept past OUTBOX_KEPT");
        let pending = store.outbox().unwrap();
        assert_eq!(pending.len(), OUTBOX_KEPT + 2);
        assert_eq!(pending, store.entries(CF_OUTBOX).unwrap());
    }

    /// A state written by a version that kept memberships one key per cohort (with the person's
    /// prefix hashed) is moved to one record per person when opened for writing, and read the
    /// same; a read-only view refuses it until then.
    #[test]
    fn memberships_kept_one_key_per_cohort_are_moved_to_one_record_per_person_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut opts = Options::default();
            opts.create_if_missing(true);
            opts.create_missing_column_families(true);
            opts.set_allow_concurrent_memtable_write(false);
            let mut legacy = opts.clone();
            legacy.set_prefix_extractor(rocksdb::SliceTransform::create(
                "cdp.person",
                person_prefix,
                Some(|key: &[u8]| key.contains(&0)),
            ));
            legacy.set_memtable_factory(rocksdb::MemtableFactory::HashSkipList {
                bucket_count: 1_000,
                height: 4,
                branching_factor: 4,
            });
            let mut cfs: Vec<ColumnFamilyDescriptor> = ALL_CFS
                .iter()
                .filter(|&&n| n != CF_MEMBERSHIPS)
                .map(|&n| ColumnFamilyDescriptor::new(n, opts.clone()))
                .collect();
            cfs.push(ColumnFamilyDescriptor::new(CF_LEGACY_MEMBERS, legacy));
            let db = DB::open_cf_descriptors(&opts, dir.path(), cfs).unwrap();
            let members = db.cf_handle(CF_LEGACY_MEMBERS).unwrap();
            let put = |id: &str, audience: &str, s: MemberState| {
                let value = serde_json::to_vec(&s).unwrap();
                db.put_cf(members, member_key("acme", id, audience), value)
                    .unwrap();
            };
            put("cdp_1", "leads", state(true, 1));
            put("cdp_10", "leads", state(true, 1));
            db.flush_cf(members).unwrap();
            // One in a table file, the others left in the log; `cdp_1`'s in both.
            put("cdp_1", "buyers", state(true, 2));
            put("cdp_1", "leads", state(false, 5));
            put("cdp_2", "leads", state(false, 3));
            put("cdp_1x", "vips", state(true, 1));
        }
        let refused = MembershipStore::open_read_only(dir.path()).err().unwrap();
        assert!(refused.to_string().contains("run activation on it once"));

        let store = MembershipStore::open(dir.path()).unwrap();
        assert!(!holds(dir.path(), CF_LEGACY_MEMBERS));
        let check = |store: &MembershipStore| {
            assert_eq!(
                store.profile_memberships("acme", "cdp_1").unwrap(),
                [("buyers".to_string(), state(true, 2))]
            );
            let leads: Vec<String> = store
                .cohort_members("acme", "leads", None, 10)
                .unwrap()
                .into_iter()
                .map(|(id, _)| id)
                .collect();
            assert_eq!(leads, ["cdp_10"]);
            let people: Vec<Vec<u8>> = store
                .entries(CF_MEMBERSHIPS)
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            let expected = ["cdp_1", "cdp_10", "cdp_1x", "cdp_2"].map(|id| pair_key("acme", id));
            assert_eq!(people, expected);
        };
        check(&store);
        let mut txn = store.txn().unwrap();
        txn.load_person(&[], "acme", "cdp_2").unwrap();
        assert_eq!(
            txn.state("acme", "cdp_2", "leads").unwrap(),
            Some(state(false, 3))
        );
        assert_eq!(txn.state("acme", "cdp_2", "buyers").unwrap(), None);
        assert_eq!(txn.memberships("acme", "cdp_1").unwrap(), ["buyers"]);
        // Written now, read back with the moved ones.
        txn.set_state("acme", "cdp_10", "buyers", state(true, 4))
            .unwrap();
        txn.commit().unwrap();
        assert_eq!(
            store.profile_memberships("acme", "cdp_10").unwrap(),
            [
                ("buyers".to_string(), state(true, 4)),
                ("leads".to_string(), state(true, 1))
            ]
        );
        drop(store);
        let view = MembershipStore::open_read_only(dir.path()).unwrap();
        assert_eq!(
            view.profile_memberships("acme", "cdp_1x").unwrap(),
            [("vips".to_string(), state(true, 1))]
        );
        drop(view);
        // Opened again: nothing left to move, the same state.
        let store = MembershipStore::open(dir.path()).unwrap();
        check(&store);
        assert_eq!(store.members().unwrap().len(), 4);
    }

    /// A state written by a version that kept the applied versions in a column family of their
    /// own has them moved into the people's records when opened for writing; a read-only view
    /// refuses it until then.
    #[test]
    fn applied_versions_kept_apart_are_moved_into_the_records_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let words = |version: u64, inputs: &[u64]| -> Vec<u8> {
            std::iter::once(version)
                .chain(inputs.iter().copied())
                .flat_map(u64::to_be_bytes)
                .collect()
        };
        {
            let mut opts = Options::default();
            opts.create_if_missing(true);
            opts.create_missing_column_families(true);
            let mut names = ALL_CFS.to_vec();
            names.push(CF_LEGACY_VERSIONS);
            let db = DB::open_cf(&opts, dir.path(), names).unwrap();
            let (versions, members) = (
                db.cf_handle(CF_LEGACY_VERSIONS).unwrap(),
                db.cf_handle(CF_MEMBERSHIPS).unwrap(),
            );
            // Memberships as that version wrote them: format 1, no applied state.
            let mut standing = Standing::default();
            standing.set("leads", state(true, 3));
            let mut old = vec![1];
            old.extend_from_slice(&standing.encode()[1 + 8 + 4..]);
            db.put_cf(members, pair_key("acme", "cdp_1"), &old).unwrap();
            db.put_cf(versions, pair_key("acme", "cdp_1"), words(5, &[8, 9]))
                .unwrap();
            db.flush_cf(versions).unwrap();
            // Evaluated into no cohort: a version and no memberships.
            db.put_cf(versions, pair_key("acme", "cdp_2"), words(2, &[]))
                .unwrap();
        }
        let refused = MembershipStore::open_read_only(dir.path()).err().unwrap();
        assert!(
            refused
                .to_string()
                .contains("the applied profile versions apart"),
            "{refused}"
        );
        let check = |store: &MembershipStore| {
            let mut txn = store.txn().unwrap();
            assert_eq!(
                txn.applied("acme", "cdp_1").unwrap(),
                Applied {
                    version: 5,
                    inputs: vec![8, 9]
                }
            );
            assert_eq!(txn.version("acme", "cdp_2").unwrap(), 2);
            assert_eq!(txn.version("acme", "cdp_3").unwrap(), 0);
            assert_eq!(txn.memberships("acme", "cdp_1").unwrap(), ["leads"]);
            assert!(txn.memberships("acme", "cdp_2").unwrap().is_empty());
        };
        let store = MembershipStore::open(dir.path()).unwrap();
        assert!(!holds(dir.path(), CF_LEGACY_VERSIONS));
        check(&store);
        drop(store);
        let view = MembershipStore::open_read_only(dir.path()).unwrap();
        assert_eq!(
            view.profile_memberships("acme", "cdp_1").unwrap(),
            [("leads".to_string(), state(true, 3))]
        );
        drop(view);
        // Opened again: nothing left to move, the same state.
        check(&MembershipStore::open(dir.path()).unwrap());
    }

    /// A key of the old layout that names no cohort stops the move with the key, and leaves
    /// the old column family in place.
    #[test]
    fn a_damaged_key_of_the_old_layout_stops_the_move_with_the_key() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut opts = Options::default();
            opts.create_if_missing(true);
            opts.create_missing_column_families(true);
            let db = DB::open_cf(&opts, dir.path(), [CF_LEGACY_MEMBERS]).unwrap();
            let members = db.cf_handle(CF_LEGACY_MEMBERS).unwrap();
            let value = serde_json::to_vec(&state(true, 1)).unwrap();
            db.put_cf(members, member_key("acme", "cdp_1", "leads"), &value)
                .unwrap();
            db.put_cf(members, b"acme\0cdp_2", &value).unwrap();
        }
        let err = MembershipStore::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains(r#"membership key "acme\0cdp_2""#), "{err}");
        assert!(holds(dir.path(), CF_LEGACY_MEMBERS));
    }

    #[test]
    fn profile_memberships_lists_one_persons_current_cohorts() {
        let dir = tempfile::tempdir().unwrap();
        let store = MembershipStore::open(dir.path()).unwrap();
        let mut txn = store.txn().unwrap();
        txn.set_state("acme", "cdp_1", "leads", state(true, 1))
            .unwrap();
        txn.set_state("acme", "cdp_1", "buyers", state(true, 2))
            .unwrap();
        txn.set_state("acme", "cdp_1", "lapsed", state(false, 3))
            .unwrap();
        // `cdp_10` starts with `cdp_1`; another tenant holds the same id.
        txn.set_state("acme", "cdp_10", "vips", state(true, 1))
            .unwrap();
        txn.set_state("zeta", "cdp_1", "vips", state(true, 1))
            .unwrap();
        txn.commit().unwrap();
        let check = |store: &MembershipStore| {
            let held = store.profile_memberships("acme", "cdp_1").unwrap();
            assert_eq!(
                held,
                [
                    ("buyers".to_string(), state(true, 2)),
                    ("leads".to_string(), state(true, 1))
                ]
            );
            assert!(store
                .profile_memberships("acme", "cdp_2")
                .unwrap()
                .is_empty());
        };
        check(&store);
        drop(store);
        check(&MembershipStore::open(dir.path()).unwrap());
    }
}
