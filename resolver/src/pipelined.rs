//! Batch writes on a thread of their own, so the stage applies its next batch while RocksDB
//! inserts the last one (memtable inserts and the write-ahead log were about a fifth of the
//! resolver's thread with matching on).
//!
//! One write is in flight at a time. Until it is applied, reads of the keys it writes are
//! answered from it, and reads of any other key from the store, which holds the same for them
//! whether or not the write has landed (RocksDB makes a batch visible all at once). The next
//! write waits for it first, so writes land in order; scans wait for it too (they are rare in
//! the stage: graph commands). A write that fails is reported by the next write or
//! [`PipelinedStore::sync`], and the stage stops, as it does when a write fails in place.
//!
//! What the outbox publishes is read from [`PipelinedStore::durable`], the store under it: a
//! record is published only once the write holding it has landed, so a crash never publishes
//! what the store does not hold.

use crate::overlay::ById;
use crate::store::{Cf, GraphStore, Op, Visit};
use crate::{ResolverError, Result};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};

/// A store whose writes are applied on a writer thread (or in place: [`Self::inline`]).
pub struct PipelinedStore<'s> {
    inner: &'s dyn GraphStore,
    writer: Option<Writer>,
    inflight: Mutex<Option<Inflight>>,
    hasher: crate::overlay::ByBytes,
}

struct Writer {
    to: SyncSender<Arc<Vec<Op>>>,
    done: Mutex<Receiver<Result<()>>>,
}

/// The write on the writer thread, indexed by key.
struct Inflight {
    ops: Arc<Vec<Op>>,
    /// Hash of (column family, key) -> the last op writing it.
    by_hash: HashMap<u64, usize, ById>,
    /// Ops whose hash another key of the write already had.
    collided: HashMap<(Cf, Vec<u8>), usize>,
}

impl<'s> PipelinedStore<'s> {
    /// Writes on a thread spawned in `scope`, which ends when the store is dropped.
    pub fn spawn<'scope>(
        scope: &'scope std::thread::Scope<'scope, '_>,
        inner: &'s dyn GraphStore,
        name: &str,
    ) -> Result<Self>
    where
        's: 'scope,
    {
        // Room for one write waiting while one is written: the stage waits for the first
        // before it hands over the next anyway.
        let (to, from) = mpsc::sync_channel::<Arc<Vec<Op>>>(1);
        let (done_to, done) = mpsc::sync_channel::<Result<()>>(1);
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn_scoped(scope, move || {
                for ops in from {
                    let written = inner.write_ops(&ops);
                    drop(ops);
                    if done_to.send(written).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| ResolverError::Storage(format!("starting the writer thread: {e}")))?;
        Ok(Self {
            inner,
            writer: Some(Writer {
                to,
                done: Mutex::new(done),
            }),
            inflight: Mutex::new(None),
            hasher: Default::default(),
        })
    }

    /// Writes in place, as the store under it does.
    pub fn inline(inner: &'s dyn GraphStore) -> Self {
        Self {
            inner,
            writer: None,
            inflight: Mutex::new(None),
            hasher: Default::default(),
        }
    }

    /// The store under it: everything it holds has landed.
    pub fn durable(&self) -> &'s dyn GraphStore {
        self.inner
    }

    /// Waits until the write in flight, if any, has landed; its error if it failed.
    pub fn sync(&self) -> Result<()> {
        let mut inflight = self.lock();
        self.wait(&mut inflight)
    }

    fn lock(&self) -> MutexGuard<'_, Option<Inflight>> {
        self.inflight.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait(&self, inflight: &mut Option<Inflight>) -> Result<()> {
        if inflight.take().is_none() {
            return Ok(());
        }
        let writer = self
            .writer
            .as_ref()
            .expect("only a writer leaves a write in flight");
        let done = writer.done.lock().unwrap_or_else(|e| e.into_inner());
        done.recv()
            .map_err(|_| ResolverError::Storage("the writer thread stopped".into()))?
    }

    fn hash(&self, cf: Cf, key: &[u8]) -> u64 {
        self.hasher.hash_one((cf, key))
    }
}

impl Inflight {
    fn find(&self, hash: u64, cf: Cf, key: &[u8]) -> Option<usize> {
        let at = *self.by_hash.get(&hash)?;
        let (c, k, _) = &self.ops[at];
        if *c == cf && k.as_slice() == key {
            return Some(at);
        }
        // Collisions are rare and the map is usually empty: no key is built for it otherwise.
        if self.collided.is_empty() {
            return None;
        }
        self.collided.get(&(cf, key.to_vec())).copied()
    }
}

impl GraphStore for PipelinedStore<'_> {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        {
            let inflight = self.lock();
            if let Some(f) = inflight.as_ref() {
                if let Some(at) = f.find(self.hash(cf, key), cf, key) {
                    return Ok(f.ops[at].2.clone());
                }
            }
        }
        self.inner.get(cf, key)
    }

    fn write(&self, ops: Vec<Op>) -> Result<()> {
        let mut inflight = self.lock();
        self.wait(&mut inflight)?;
        let Some(writer) = &self.writer else {
            return self.inner.write(ops);
        };
        let mut by_hash = HashMap::with_capacity_and_hasher(ops.len(), ById::default());
        let mut collided = HashMap::new();
        for (at, (cf, key, _)) in ops.iter().enumerate() {
            match by_hash.entry(self.hash(*cf, key)) {
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(at);
                }
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    let (c, k, _) = &ops[*e.get()];
                    if c == cf && k == key {
                        // The same key written again: the later op is what lands.
                        e.insert(at);
                    } else {
                        collided.insert((*cf, key.clone()), at);
                    }
                }
            }
        }
        let ops = Arc::new(ops);
        writer
            .to
            .send(Arc::clone(&ops))
            .map_err(|_| ResolverError::Storage("the writer thread stopped".into()))?;
        *inflight = Some(Inflight {
            ops,
            by_hash,
            collided,
        });
        Ok(())
    }

    fn scan_prefix(&self, cf: Cf, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.sync()?;
        self.inner.scan_prefix(cf, prefix)
    }

    fn scan_from(&self, cf: Cf, from: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.sync()?;
        self.inner.scan_from(cf, from)
    }

    fn for_each_prefix(&self, cf: Cf, prefix: &[u8], f: &mut Visit<'_>) -> Result<()> {
        self.sync()?;
        self.inner.for_each_prefix(cf, prefix, f)
    }

    fn holds_any(&self, cf: Cf) -> Result<bool> {
        self.sync()?;
        self.inner.holds_any(cf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemStore, RocksStore};

    fn put(cf: Cf, k: &[u8], v: &[u8]) -> Op {
        (cf, k.to_vec(), Some(v.to_vec()))
    }

    /// A store whose writes fail, to see the failure reported.
    struct Failing;
    impl GraphStore for Failing {
        fn get(&self, _: Cf, _: &[u8]) -> Result<Option<Vec<u8>>> {
            Ok(None)
        }
        fn write(&self, _: Vec<Op>) -> Result<()> {
            Err(ResolverError::Storage("disk full".into()))
        }
        fn scan_prefix(&self, _: Cf, _: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
            Ok(Vec::new())
        }
    }

    #[test]
    fn reads_see_the_write_in_flight_and_writes_land_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let rocks = RocksStore::open(dir.path()).unwrap();
        std::thread::scope(|scope| {
            let store = PipelinedStore::spawn(scope, &rocks, "test-writer").unwrap();
            store
                .write(vec![
                    put(Cf::Ids, b"a", b"1"),
                    put(Cf::Nodes, b"a", b"node"),
                    put(Cf::Ids, b"b", b"2"),
                    (Cf::Ids, b"b".to_vec(), None),
                ])
                .unwrap();
            // Whether or not the write has landed, reads answer as if it had.
            assert_eq!(store.get(Cf::Ids, b"a").unwrap(), Some(b"1".to_vec()));
            assert_eq!(store.get(Cf::Nodes, b"a").unwrap(), Some(b"node".to_vec()));
            assert_eq!(store.get(Cf::Ids, b"b").unwrap(), None, "the later op wins");
            assert_eq!(store.get(Cf::Parent, b"a").unwrap(), None);
            store
                .write(vec![
                    put(Cf::Ids, b"a", b"3"),
                    (Cf::Nodes, b"a".to_vec(), None),
                ])
                .unwrap();
            assert_eq!(store.get(Cf::Ids, b"a").unwrap(), Some(b"3".to_vec()));
            assert_eq!(store.get(Cf::Nodes, b"a").unwrap(), None);
            // Scans wait for the write.
            assert_eq!(
                store.scan_prefix(Cf::Ids, b"").unwrap(),
                vec![(b"a".to_vec(), b"3".to_vec())]
            );
            store.write(vec![put(Cf::Ids, b"c", b"4")]).unwrap();
            store.sync().unwrap();
            assert_eq!(rocks.get(Cf::Ids, b"c").unwrap(), Some(b"4".to_vec()));
            assert_eq!(
                store.durable().get(Cf::Ids, b"a").unwrap(),
                Some(b"3".to_vec())
            );
        });
    }

    #[test]
    fn colliding_hashes_still_find_their_own_key() {
        let mem = MemStore::default();
        std::thread::scope(|scope| {
            let store = PipelinedStore::spawn(scope, &mem, "test-writer").unwrap();
            let ops: Vec<Op> = (0..2000u32)
                .map(|i| put(Cf::Blocks, &i.to_be_bytes(), &i.to_le_bytes()))
                .collect();
            let mut inflight = Inflight {
                ops: Arc::new(ops.clone()),
                by_hash: HashMap::default(),
                collided: HashMap::new(),
            };
            // Every key under one hash: all but the first are found through the collisions.
            inflight.by_hash.insert(7, 0);
            for (at, (cf, k, _)) in ops.iter().enumerate().skip(1) {
                inflight.collided.insert((*cf, k.clone()), at);
            }
            for (at, (cf, k, v)) in ops.iter().enumerate() {
                let found = inflight.find(7, *cf, k).expect("found");
                assert_eq!((found, &inflight.ops[found].2), (at, v));
            }
            assert_eq!(inflight.find(7, Cf::Ids, &0u32.to_be_bytes()), None);
            assert_eq!(inflight.find(8, Cf::Blocks, &0u32.to_be_bytes()), None);
            // And through the store, with real hashes.
            store.write(ops.clone()).unwrap();
            for (cf, k, v) in &ops {
                assert_eq!(store.get(*cf, k).unwrap().as_ref(), v.as_ref());
            }
        });
        assert_eq!(mem.scan_prefix(Cf::Blocks, b"").unwrap().len(), 2000);
    }

    #[test]
    fn a_failed_write_is_reported_by_the_next_write_or_sync() {
        std::thread::scope(|scope| {
            let store = PipelinedStore::spawn(scope, &Failing, "test-writer").unwrap();
            store.write(vec![put(Cf::Ids, b"a", b"1")]).unwrap();
            let err = store.write(vec![put(Cf::Ids, b"b", b"2")]).unwrap_err();
            assert!(err.to_string().contains("disk full"), "{err}");
            // The second write was not handed over: nothing is in flight.
            store.sync().unwrap();
            store.write(vec![put(Cf::Ids, b"c", b"3")]).unwrap();
            assert!(store.sync().unwrap_err().to_string().contains("disk full"));
        });
        let inline = PipelinedStore::inline(&Failing);
        assert!(inline.write(vec![put(Cf::Ids, b"a", b"1")]).is_err());
        inline.sync().unwrap();
    }
}
