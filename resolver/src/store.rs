//! Where the graph lives: a small key-value engine trait over named column families, with a
//! RocksDB implementation (production) and an in-memory one (tests and models). Column family
//! names are defined here and nowhere else.

use crate::held::{Answer, HeldKeys};
use crate::{ResolverError, Result};
use rocksdb::{ColumnFamilyDescriptor, Options, DB};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Column families of the resolver's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cf {
    /// `tenant \0 kind \0 value` -> node id.
    Ids,
    /// node id -> `NodeRecord` (tenant and identifier).
    Nodes,
    /// node id -> parent node id; roots have no entry.
    Parent,
    /// root node id -> `Profile`.
    Profiles,
    /// `tenant \0 canonical id` -> root node id.
    Canon,
    /// `tenant \0 retired canonical id` -> surviving canonical id.
    Aliases,
    /// link id -> `Link`, append-only: the decision is updated when it changes (an unmerge marks
    /// it removed), and only `forget` erases a link.
    Links,
    /// `node a, node b, rule` -> link id: each distinct assertion is logged once.
    Pairs,
    /// input `topic \0 partition` -> next offset to apply.
    Offsets,
    /// sequence -> output record not yet acknowledged by the bus.
    Outbox,
    /// counters (next node id, next link id, next outbox sequence).
    Meta,
    /// `node, link id` -> empty: every link touching a node, so a component's links are found
    /// without scanning the whole log.
    NodeLinks,
    /// `tenant \0 sha256(kind \0 value)` -> `Tombstone`: identifiers erased by `forget`.
    Tombstones,
    /// command id -> `CommandOutcome`: what each graph command did (and that it was applied).
    Commands,
    /// node -> when its links reached other profiles (hub detection), newest kept.
    Hubs,
    /// `tenant \0 rule \0 hashed key value` -> the nodes filed under a blocking key of
    /// probabilistic matching, each with its record (see `matching::blocking`), or a mark that
    /// it grew too large.
    Blocks,
    /// node id -> the normalised record the node is filed under in `blocks` with: its keys are
    /// derived from it, so a changed record or `forget` takes the node out of exactly those.
    MatchRecords,
}

impl Cf {
    pub const ALL: [Cf; 17] = [
        Cf::Ids,
        Cf::Nodes,
        Cf::Parent,
        Cf::Profiles,
        Cf::Canon,
        Cf::Aliases,
        Cf::Links,
        Cf::Pairs,
        Cf::Offsets,
        Cf::Outbox,
        Cf::Meta,
        Cf::NodeLinks,
        Cf::Tombstones,
        Cf::Commands,
        Cf::Hubs,
        Cf::Blocks,
        Cf::MatchRecords,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Cf::Ids => "ids",
            Cf::Nodes => "nodes",
            Cf::Parent => "parent",
            Cf::Profiles => "profiles",
            Cf::Canon => "canon",
            Cf::Aliases => "aliases",
            Cf::Links => "links",
            Cf::Pairs => "pairs",
            Cf::Offsets => "offsets",
            Cf::Outbox => "outbox",
            Cf::Meta => "meta",
            Cf::NodeLinks => "node_links",
            Cf::Tombstones => "tombstones",
            Cf::Commands => "commands",
            Cf::Hubs => "hubs",
            Cf::Blocks => "blocks",
            Cf::MatchRecords => "match_records",
        }
    }

    /// Whether the stage reads the column family in key order while it writes it: the outbox
    /// (published from its head), each node's links, and the tombstones (a transaction that
    /// carries no state asks whether there are any). The others are read by key only, except
    /// by whole passes (rebuild, training, exports) that are rare. An iterator over a
    /// hash-indexed memtable visits every bucket and sorts a copy of the memtable: about a
    /// millisecond even when the column family is empty.
    fn scanned_while_writing(self) -> bool {
        matches!(self, Cf::Outbox | Cf::NodeLinks | Cf::Tombstones)
    }
}

/// One write of a batch: `None` deletes.
pub type Op = (Cf, Vec<u8>, Option<Vec<u8>>);

/// What [`GraphStore::for_each_prefix`] calls with each entry (key, value).
pub type Visit<'f> = dyn FnMut(&[u8], &[u8]) -> Result<()> + 'f;

/// The engine the graph is written against.
pub trait GraphStore: Send + Sync {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Applies all `ops` atomically.
    fn write(&self, ops: Vec<Op>) -> Result<()>;
    /// Applies all `ops` atomically, leaving them to the caller (a [`crate::pipelined`] store
    /// reads them while they are written). Engines that can write from borrowed bytes override it.
    fn write_ops(&self, ops: &[Op]) -> Result<()> {
        self.write(ops.to_vec())
    }
    /// Every entry of `cf` whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, cf: Cf, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Every entry of `cf` whose key is `from` or after it, in key order. Engines that can seek
    /// override it: a queue whose head is deleted as it is consumed (the outbox) is read from
    /// its first live key, not over every deletion before it.
    fn scan_from(&self, cf: Cf, from: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut all = self.scan_prefix(cf, b"")?;
        all.retain(|(k, _)| k.as_slice() >= from);
        Ok(all)
    }
    /// Calls `f` with every entry of `cf` whose key starts with `prefix`, in key order, one at a
    /// time: a pass over a whole column family (`rebuild`) must not hold it all in memory.
    fn for_each_prefix(&self, cf: Cf, prefix: &[u8], f: &mut Visit<'_>) -> Result<()> {
        for (k, v) in self.scan_prefix(cf, prefix)? {
            f(&k, &v)?;
        }
        Ok(())
    }
    /// Whether `cf` holds any entry. Engines that can seek override it, so that the answer
    /// reads one entry, not all of them.
    fn holds_any(&self, cf: Cf) -> Result<bool> {
        Ok(!self.scan_prefix(cf, b"")?.is_empty())
    }
}

/// `[resolver.storage]`: the memory RocksDB may take, whatever the size of the graph. Without
/// it each column family's table reader keeps its index and filter blocks outside any cache
/// (they grow with the data) and each column family has its own memtables (17 of them, up to
/// 128 MiB each): the resolver's memory would follow the graph, not the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Block cache shared by every column family, index and filter blocks included (MiB).
    pub block_cache_mb: usize,
    /// Memtables of all column families together (MiB); past it the largest are flushed.
    pub write_buffer_mb: usize,
    /// Decoded entries (identifiers, parents, profiles, links, ...) the stage keeps between
    /// batches, per column family, so hot identifiers are not read and decoded again; 0 = off.
    /// Off by default: it pays only when it holds the working set, and one a little smaller
    /// than that churns and costs more than it saves.
    pub state_cache_entries: usize,
    /// Hash-indexed memtables for the column families read by key only (see
    /// `cdp_bus::hash_indexed_memtable`): cheaper inserts and point reads for the stage, paid
    /// for by sorting each memtable when it is flushed, on RocksDB's background threads. Off:
    /// skip lists everywhere, for a host whose cores the stages already keep busy.
    pub hash_memtables: bool,
    /// Keys of the blocking index kept in memory as 4-byte fingerprints ([`crate::held`]), so
    /// that reading a block no record has been filed under costs no lookup; 0 = off. A store
    /// holding more keys than this reads every block from RocksDB, as with 0.
    pub blocking_keys_in_memory: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            block_cache_mb: 256,
            write_buffer_mb: 256,
            state_cache_entries: 0,
            hash_memtables: true,
            blocking_keys_in_memory: 8_000_000,
        }
    }
}

/// RocksDB-backed store: one database, one column family per [`Cf`].
pub struct RocksStore {
    db: Arc<DB>,
    /// The options of every point read, made once: creating them for each read (a C++ object
    /// allocated, initialised and freed) was a tenth of the read's instructions.
    read: rocksdb::ReadOptions,
    /// Fingerprints of the blocking index's keys (none in a read-only view).
    blocks: Option<Arc<HeldKeys>>,
    /// The scan gathering them, stopped and joined when the store is dropped.
    scan: Mutex<Option<Scan>>,
}

struct Scan {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl RocksStore {
    /// Opens (creating) the store with the default [`StorageConfig`].
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, &StorageConfig::default())
    }

    /// Opens (creating) the store, its memory bounded by `memory`.
    pub fn open_with(dir: &Path, memory: &StorageConfig) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // Most reads of a batch ask for keys that do not exist yet (a new identifier, a pair
        // never linked, a tombstone nobody wrote): bloom filters in every table file (and in
        // the skip-list memtables; a hash-indexed one's bucket does as well) answer those
        // without searching.
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        table.set_whole_key_filtering(true);
        // One cache for all column families, holding index and filter blocks too (those of
        // level 0 pinned: they are read by nearly every lookup).
        let cache = rocksdb::Cache::new_lru_cache(memory.block_cache_mb.max(1) << 20);
        table.set_block_cache(&cache);
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        opts.set_block_based_table_factory(&table);
        let memtables = rocksdb::WriteBufferManager::new_write_buffer_manager(
            memory.write_buffer_mb.max(1) << 20,
            false,
        );
        opts.set_write_buffer_manager(&memtables);
        opts.set_memtable_whole_key_filtering(true);
        opts.set_memtable_prefix_bloom_ratio(0.02);
        // One writer: the stage's batch. Memtables other than skip lists require it.
        opts.set_allow_concurrent_memtable_write(false);
        let cfs = Cf::ALL.map(|cf| {
            let mut cf_opts = opts.clone();
            if memory.hash_memtables && !cf.scanned_while_writing() {
                cdp_bus::hash_indexed_memtable(&mut cf_opts);
                // No memtable Bloom filter: the key's bucket already answers an absent key
                // after a few entries, and the filter cost a hash and probe on every insert,
                // and zeroing 2% of each memtable's size when it is created.
                cf_opts.set_memtable_whole_key_filtering(false);
                cf_opts.set_memtable_prefix_bloom_ratio(0.0);
            }
            ColumnFamilyDescriptor::new(cf.name(), cf_opts)
        });
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(storage)?;
        Ok(Self {
            db: Arc::new(db),
            read: rocksdb::ReadOptions::default(),
            blocks: Some(Arc::new(HeldKeys::new(memory.blocking_keys_in_memory))),
            scan: Mutex::new(None),
        })
    }

    /// Opens the store for reading while a running resolver owns it (a point-in-time view).
    /// Column families a state written by an older version lacks read as empty.
    pub fn open_read_only(dir: &Path) -> Result<Self> {
        let existing = DB::list_cf(&Options::default(), dir).map_err(storage)?;
        Ok(Self {
            db: Arc::new(open_existing_read_only(dir, &existing)?),
            read: rocksdb::ReadOptions::default(),
            blocks: None,
            scan: Mutex::new(None),
        })
    }

    /// Size and compaction figures of the database, for `/metrics`.
    pub fn rocksdb_stats(&self) -> cdp_bus::RocksDbStats {
        cdp_bus::RocksDbStats::read(&self.db, Cf::ALL.map(Cf::name))
    }

    fn cf(&self, cf: Cf) -> Option<&rocksdb::ColumnFamily> {
        self.db.cf_handle(cf.name())
    }

    /// Whether the blocking index's keys are held in memory now (their scan has ended).
    pub fn blocking_keys_held(&self) -> bool {
        self.blocks.as_ref().is_some_and(|held| held.is_ready())
    }

    /// Starts gathering the fingerprints of the blocking index's keys, on a thread of its own.
    fn start_scan(&self, held: &Arc<HeldKeys>) {
        if !held.scan_started() {
            return;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (db, gather, stopped) = (Arc::clone(&self.db), Arc::clone(held), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("resolver-keys".into())
            .spawn(move || gather.scanned(fingerprints(&db, &gather, &stopped)));
        match thread {
            Ok(thread) => *lock(&self.scan) = Some(Scan { stop, thread }),
            Err(e) => {
                tracing::warn!(error = %e, "blocking keys not held in memory: no scan thread");
                held.scanned(None);
            }
        }
    }
}

/// The fingerprints of every key of the blocking index; `None` if there are more than the
/// budget, the scan failed, or `stop` was set.
fn fingerprints(
    db: &DB,
    held: &HeldKeys,
    stop: &AtomicBool,
) -> Option<std::collections::HashSet<u32, crate::overlay::ById>> {
    let handle = db.cf_handle(Cf::Blocks.name())?;
    let mut it = whole_pass(db, handle, b"");
    let mut found = std::collections::HashSet::default();
    while let Some(key) = it.key() {
        found.insert(held.fingerprint(key));
        if found.len() % 4096 == 0 && (found.len() > held.budget() || stop.load(Ordering::Relaxed))
        {
            return None;
        }
        it.next();
    }
    if let Err(e) = it.status() {
        tracing::warn!(error = %e, "blocking keys not held in memory: the scan failed");
        return None;
    }
    Some(found)
}

/// An iterator for a pass over a column family from `from` on, in key order (hash-indexed
/// memtables included): its blocks are not cached, they would only push the stage's working
/// set out of the block cache.
fn whole_pass<'d>(
    db: &'d DB,
    handle: &rocksdb::ColumnFamily,
    from: &[u8],
) -> rocksdb::DBRawIterator<'d> {
    let mut read = rocksdb::ReadOptions::default();
    read.fill_cache(false);
    read.set_readahead_size(4 << 20);
    read.set_total_order_seek(true);
    let mut it = db.raw_iterator_cf_opt(handle, read);
    it.seek(from);
    it
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Drop for RocksStore {
    fn drop(&mut self) {
        // The scan holds the database open: stop it before the store closes.
        if let Some(scan) = lock(&self.scan).take() {
            scan.stop.store(true, Ordering::Relaxed);
            let _ = scan.thread.join();
        }
    }
}

/// Opens the state in `dir` read-only with those of the column families that `existing` (its
/// `list_cf`) names: a state written by an older version may lack some.
pub(crate) fn open_existing_read_only(dir: &Path, existing: &[String]) -> Result<DB> {
    let names = Cf::ALL
        .map(Cf::name)
        .into_iter()
        .filter(|n| existing.iter().any(|e| e == n));
    DB::open_cf_for_read_only(&Options::default(), dir, names, false).map_err(storage)
}

impl GraphStore for RocksStore {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let (Cf::Blocks, Some(held)) = (cf, &self.blocks) {
            match held.may_hold(key) {
                Answer::Absent => return Ok(None),
                Answer::MaybeStartScan => self.start_scan(held),
                Answer::Maybe => {}
            }
        }
        match self.cf(cf) {
            Some(handle) => self.db.get_cf_opt(handle, key, &self.read).map_err(storage),
            None => Ok(None),
        }
    }

    fn write(&self, ops: Vec<Op>) -> Result<()> {
        self.write_ops(&ops)
    }

    fn write_ops(&self, ops: &[Op]) -> Result<()> {
        let bytes = ops
            .iter()
            .map(|(_, k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum();
        if let Some(held) = &self.blocks {
            // Before the write: a key the store holds is never missing from the set.
            held.note(
                ops.iter()
                    .filter(|(cf, _, v)| *cf == Cf::Blocks && v.is_some())
                    .map(|(_, k, _)| k.as_slice()),
            );
        }
        let mut batch = cdp_bus::sized_write_batch(ops.len(), bytes);
        // Ops come grouped by column family: look each handle up once per run.
        let mut current: Option<(Cf, &rocksdb::ColumnFamily)> = None;
        for (cf, k, v) in ops {
            let handle = match current {
                Some((c, handle)) if c == *cf => handle,
                _ => {
                    // Only a read-only view lacks column families, and it cannot write anyway.
                    let handle = self.cf(*cf).ok_or_else(|| {
                        ResolverError::Storage(format!("column family {} is not open", cf.name()))
                    })?;
                    current = Some((*cf, handle));
                    handle
                }
            };
            match v {
                Some(v) => batch.put_cf(handle, k, v),
                None => batch.delete_cf(handle, k),
            }
        }
        self.db.write(batch).map_err(storage)
    }

    fn for_each_prefix(&self, cf: Cf, prefix: &[u8], f: &mut Visit<'_>) -> Result<()> {
        let Some(handle) = self.cf(cf) else {
            return Ok(());
        };
        let mut it = whole_pass(&self.db, handle, prefix);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if !k.starts_with(prefix) {
                break;
            }
            f(k, v)?;
            it.next();
        }
        it.status().map_err(storage)
    }

    fn scan_prefix(&self, cf: Cf, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.scan(cf, prefix, prefix)
    }

    fn scan_from(&self, cf: Cf, from: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.scan(cf, from, b"")
    }

    fn holds_any(&self, cf: Cf) -> Result<bool> {
        let Some(handle) = self.cf(cf) else {
            return Ok(false);
        };
        let mut read = rocksdb::ReadOptions::default();
        read.set_total_order_seek(true);
        match self
            .db
            .iterator_cf_opt(handle, read, rocksdb::IteratorMode::Start)
            .next()
        {
            Some(item) => item.map(|_| true).map_err(storage),
            None => Ok(false),
        }
    }
}

impl RocksStore {
    /// Entries of `cf` from `from` on while their key starts with `prefix`.
    fn scan(&self, cf: Cf, from: &[u8], prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let Some(handle) = self.cf(cf) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut read = rocksdb::ReadOptions::default();
        read.set_total_order_seek(true);
        let it = self.db.iterator_cf_opt(
            handle,
            read,
            rocksdb::IteratorMode::From(from, rocksdb::Direction::Forward),
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
}

/// Every entry of every column family, in key order.
pub type Dump = BTreeMap<Cf, BTreeMap<Vec<u8>, Vec<u8>>>;

/// In-memory store with the same semantics, for tests and as a model.
#[derive(Default)]
pub struct MemStore {
    cfs: Mutex<Dump>,
}

impl MemStore {
    /// Every entry of every column family: used to compare two stores byte for byte.
    pub fn dump(&self) -> Dump {
        self.cfs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Entries of `cf` from `from` on while their key starts with `prefix`.
    fn scan(&self, cf: Cf, from: &[u8], prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let cfs = self.cfs.lock().unwrap_or_else(|e| e.into_inner());
        cfs.get(&cf)
            .map(|m| {
                m.range(from.to_vec()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl GraphStore for MemStore {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let cfs = self.cfs.lock().unwrap_or_else(|e| e.into_inner());
        Ok(cfs.get(&cf).and_then(|m| m.get(key)).cloned())
    }

    fn write(&self, ops: Vec<Op>) -> Result<()> {
        let mut cfs = self.cfs.lock().unwrap_or_else(|e| e.into_inner());
        for (cf, k, v) in ops {
            let m = cfs.entry(cf).or_default();
            match v {
                Some(v) => {
                    m.insert(k, v);
                }
                None => {
                    m.remove(&k);
                }
            }
        }
        Ok(())
    }

    fn scan_prefix(&self, cf: Cf, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(self.scan(cf, prefix, prefix))
    }

    fn scan_from(&self, cf: Cf, from: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(self.scan(cf, from, b""))
    }
}

fn storage(e: rocksdb::Error) -> ResolverError {
    ResolverError::Storage(e.into_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Reads a block once (starting the scan of the blocking index's keys) and waits for it.
    fn wait_held(store: &RocksStore) {
        wait_scan(store);
        assert!(store.blocking_keys_held());
    }

    /// Reads a block once (starting the scan of the blocking index's keys) and waits for the
    /// scan to end, whatever it found.
    fn wait_scan(store: &RocksStore) {
        store.get(Cf::Blocks, b"any").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while lock(&store.scan)
            .as_ref()
            .is_none_or(|s| !s.thread.is_finished())
        {
            assert!(std::time::Instant::now() < deadline, "the scan did not end");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    #[derive(Debug, Clone)]
    enum BlockOp {
        Put(u8, u8),
        Delete(u8),
        Get(u8),
        Reopen,
    }

    fn block_op() -> impl Strategy<Value = BlockOp> {
        prop_oneof![
            4 => (0u8..40, any::<u8>()).prop_map(|(k, v)| BlockOp::Put(k, v)),
            2 => (0u8..40).prop_map(BlockOp::Delete),
            6 => (0u8..40).prop_map(BlockOp::Get),
            1 => Just(BlockOp::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// With the blocking index's keys in memory (and a set that passes its budget, and one
        /// read before its scan has ended), every read of a block answers as the model does:
        /// a key the store holds is never taken for absent, across reopens.
        #[test]
        fn blocks_read_as_the_model_with_their_keys_in_memory(
            ops in proptest::collection::vec(block_op(), 1..80),
            budget in prop_oneof![Just(0usize), Just(10), Just(1000)],
            wait in any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let memory = StorageConfig {
                blocking_keys_in_memory: budget,
                ..StorageConfig::default()
            };
            let mem = MemStore::default();
            let mut rocks = Some(RocksStore::open_with(dir.path(), &memory).unwrap());
            let key = |k: u8| format!("block-{k}").into_bytes();
            for op in ops {
                let store = rocks.as_ref().unwrap();
                match op {
                    BlockOp::Put(k, v) => {
                        let put = vec![(Cf::Blocks, key(k), Some(vec![v]))];
                        store.write(put.clone()).unwrap();
                        mem.write(put).unwrap();
                    }
                    BlockOp::Delete(k) => {
                        store.write(vec![(Cf::Blocks, key(k), None)]).unwrap();
                        mem.write(vec![(Cf::Blocks, key(k), None)]).unwrap();
                    }
                    BlockOp::Get(k) => prop_assert_eq!(
                        store.get(Cf::Blocks, &key(k)).unwrap(),
                        mem.get(Cf::Blocks, &key(k)).unwrap()
                    ),
                    BlockOp::Reopen => {
                        drop(rocks.take());
                        let store = RocksStore::open_with(dir.path(), &memory).unwrap();
                        // (A budget of 10 is passed by the 40 keys: its set is dropped.)
                        if wait && budget == 1000 {
                            wait_held(&store);
                        }
                        rocks = Some(store);
                    }
                }
            }
            let store = rocks.as_ref().unwrap();
            if budget == 1000 {
                wait_held(store);
            }
            for k in 0..40 {
                prop_assert_eq!(
                    store.get(Cf::Blocks, &key(k)).unwrap(),
                    mem.get(Cf::Blocks, &key(k)).unwrap()
                );
            }
        }
    }

    #[test]
    fn blocking_keys_are_gathered_from_the_store_and_dropped_past_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let puts = |range: std::ops::Range<u32>| -> Vec<Op> {
            range
                .map(|i| (Cf::Blocks, i.to_be_bytes().to_vec(), Some(vec![1])))
                .collect()
        };
        {
            let store = RocksStore::open(dir.path()).unwrap();
            store.write(puts(0..10_000)).unwrap();
        }
        // Reopened: found by the scan, in the memtable rebuilt from the log and in table files.
        let store = RocksStore::open(dir.path()).unwrap();
        store.db.flush_cf(store.cf(Cf::Blocks).unwrap()).unwrap();
        store.write(puts(10_000..12_000)).unwrap();
        assert!(!store.blocking_keys_held(), "no block read yet");
        wait_held(&store);
        for i in [0u32, 9_999, 10_000, 11_999] {
            assert_eq!(
                store.get(Cf::Blocks, &i.to_be_bytes()).unwrap(),
                Some(vec![1])
            );
        }
        assert_eq!(
            store.get(Cf::Blocks, &20_000u32.to_be_bytes()).unwrap(),
            None
        );
        drop(store);
        // More keys than the budget: every read goes to the store.
        let small = StorageConfig {
            blocking_keys_in_memory: 5_000,
            ..StorageConfig::default()
        };
        let store = RocksStore::open_with(dir.path(), &small).unwrap();
        wait_scan(&store);
        assert_eq!(store.blocks.as_ref().unwrap().may_hold(b"x"), Answer::Maybe);
        assert!(!store.blocking_keys_held());
        assert_eq!(
            store.get(Cf::Blocks, &7u32.to_be_bytes()).unwrap(),
            Some(vec![1])
        );
        // A read-only view reads every block from the store.
        let view = RocksStore::open_read_only(dir.path()).unwrap();
        assert_eq!(
            view.get(Cf::Blocks, &7u32.to_be_bytes()).unwrap(),
            Some(vec![1])
        );
        assert!(!view.blocking_keys_held());
    }

    #[test]
    fn the_configured_cache_is_the_one_rocksdb_uses() {
        let dir = tempfile::tempdir().unwrap();
        let memory = StorageConfig {
            block_cache_mb: 3,
            write_buffer_mb: 5,
            ..StorageConfig::default()
        };
        let store = RocksStore::open_with(dir.path(), &memory).unwrap();
        for cf in Cf::ALL {
            let handle = store.cf(cf).unwrap();
            let capacity = store
                .db
                .property_int_value_cf(handle, "rocksdb.block-cache-capacity")
                .unwrap();
            assert_eq!(capacity, Some(3 << 20), "{}", cf.name());
        }
        store
            .write(vec![(Cf::ALL[0], b"k".to_vec(), Some(b"v".to_vec()))])
            .unwrap();
        assert_eq!(store.get(Cf::ALL[0], b"k").unwrap(), Some(b"v".to_vec()));
    }

    #[test]
    fn holds_any_answers_as_a_scan_would_after_writes_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let rocks = RocksStore::open(dir.path()).unwrap();
        let mem = MemStore::default();
        let stores: [&dyn GraphStore; 2] = [&rocks, &mem];
        for store in stores {
            assert!(!store.holds_any(Cf::Tombstones).unwrap());
            store
                .write(vec![(Cf::Tombstones, b"t".to_vec(), Some(b"x".to_vec()))])
                .unwrap();
            assert!(store.holds_any(Cf::Tombstones).unwrap());
            assert!(!store.holds_any(Cf::Aliases).unwrap(), "another family");
            store
                .write(vec![(Cf::Tombstones, b"t".to_vec(), None)])
                .unwrap();
            assert!(!store.holds_any(Cf::Tombstones).unwrap());
        }
    }

    /// Column families with a hash-indexed memtable still read in key order: entries in the
    /// memtable, in table files, and both at once, whatever order they were written in.
    #[test]
    fn every_column_family_scans_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<Vec<u8>> = [5u8, 1, 9, 3, 7, 2, 8, 0, 6, 4]
            .iter()
            .flat_map(|n| {
                [
                    format!("acme\0{n}"),
                    format!("acme\0{n}\0x"),
                    format!("beta\0{n}"),
                ]
            })
            .map(String::into_bytes)
            .collect();
        let (first, second) = keys.split_at(keys.len() / 2);
        let put = |store: &RocksStore, keys: &[Vec<u8>]| {
            let ops = Cf::ALL
                .iter()
                .flat_map(|cf| keys.iter().map(|k| (*cf, k.clone(), Some(k.clone()))))
                .collect();
            store.write(ops).unwrap();
        };
        let check = |store: &RocksStore, written: &[Vec<u8>]| {
            let mut acme: Vec<Vec<u8>> = written
                .iter()
                .filter(|k| k.starts_with(b"acme\0"))
                .cloned()
                .collect();
            acme.sort();
            let mut from_3: Vec<Vec<u8>> = written
                .iter()
                .filter(|k| k.as_slice() >= b"acme\x003".as_slice())
                .cloned()
                .collect();
            from_3.sort();
            for cf in Cf::ALL {
                let keys_of = |entries: Vec<(Vec<u8>, Vec<u8>)>| {
                    entries.into_iter().map(|(k, _)| k).collect::<Vec<_>>()
                };
                assert_eq!(
                    keys_of(store.scan_prefix(cf, b"acme\0").unwrap()),
                    acme,
                    "{}",
                    cf.name()
                );
                assert_eq!(
                    keys_of(store.scan_from(cf, b"acme\x003").unwrap()),
                    from_3,
                    "{}",
                    cf.name()
                );
                let mut visited = Vec::new();
                store
                    .for_each_prefix(cf, b"acme\0", &mut |k, _| {
                        visited.push(k.to_vec());
                        Ok(())
                    })
                    .unwrap();
                assert_eq!(visited, acme, "{}", cf.name());
            }
        };
        // Hash-indexed memtables, then skip lists on the same files: a store can switch.
        let hashed = StorageConfig::default();
        let skip_lists = StorageConfig {
            hash_memtables: false,
            ..StorageConfig::default()
        };
        let store = RocksStore::open_with(dir.path(), &hashed).unwrap();
        put(&store, first);
        check(&store, first);
        drop(store);
        // Reopened: the first half is in table files, the second in the memtable.
        let store = RocksStore::open_with(dir.path(), &skip_lists).unwrap();
        store
            .db
            .flush_cfs_opt(
                &Cf::ALL.map(|cf| store.cf(cf).unwrap()),
                &rocksdb::FlushOptions::default(),
            )
            .unwrap();
        put(&store, second);
        check(&store, &keys);
        drop(store);
        // And hashed again, over table files both wrote.
        let store = RocksStore::open_with(dir.path(), &hashed).unwrap();
        check(&store, &keys);
    }
}
