//! Committed, decoded state kept across batches, so the identifiers and profiles a stream keeps
//! touching are not read from RocksDB and decoded again by every batch.
//!
//! Exactness comes from ownership rather than invalidation: a [`crate::txn::Txn`] begun with a
//! cache takes the entries out of it, reads a key from the cache at most once (moving the value
//! into its own overlay), and hands every value it ended with back only after its write has been
//! committed. A batch that fails or is dropped leaves the cache empty, so it can never serve
//! state that was not committed; a process starts with an empty one, so a restart reads the
//! store. One cache belongs to one store, and every write to the cached column families must go
//! through transactions that use it (the stage's are the only writers while it runs).

use crate::hub::Reaches;
use crate::link::Link;
use crate::matching::blocking::Block;
use crate::matching::field::Record;
use crate::overlay::{ByBytes, ById};
use crate::txn::{NodeId, NodeRecord};
use cdp_proto::Profile;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};

/// A bounded map of two generations: new entries go to the young one; when it is full the old
/// one is dropped and the young one ages. Anything used within the last `capacity / 2`
/// insertions is kept, at the price of one extra lookup; no per-entry bookkeeping as in an LRU.
pub struct Generations<K, V, S> {
    young: HashMap<K, V, S>,
    old: HashMap<K, V, S>,
    /// Entries per generation; 0 keeps nothing.
    half: usize,
    /// Keys the last transaction over this column family read or wrote, so the next one's
    /// table starts at that size instead of growing (and rehashing) key by key.
    pub(crate) last_used: usize,
}

impl<K: Hash + Eq, V, S: BuildHasher + Default> Generations<K, V, S> {
    /// A map of at most `capacity` entries (0: nothing is kept).
    pub fn new(capacity: usize) -> Self {
        Self {
            young: HashMap::default(),
            old: HashMap::default(),
            half: capacity.div_ceil(2),
            last_used: 0,
        }
    }

    /// Removes the entry for `key` and returns it.
    pub fn take(&mut self, key: &K) -> Option<V> {
        if self.half == 0 {
            return None;
        }
        // A key is in one generation at most (see `insert`), so the first hit is the only one.
        self.young.remove(key).or_else(|| self.old.remove(key))
    }

    pub fn insert(&mut self, key: K, value: V) {
        if self.half == 0 {
            return;
        }
        if self.young.len() >= self.half {
            // The old generation's table is reused for the new young one.
            std::mem::swap(&mut self.young, &mut self.old);
            self.young.clear();
        }
        self.old.remove(&key);
        self.young.insert(key, value);
    }

    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What one column family carries between batches: the committed value of a key, `None` when
/// the store has no entry for it (a miss is worth remembering too).
pub type Carried<K, V, S = ById> = Generations<K, Option<V>, S>;

/// The carried state of every cached column family, as a transaction takes it.
pub(crate) struct Held {
    pub ids: Carried<Vec<u8>, NodeId, ByBytes>,
    pub nodes: Carried<NodeId, NodeRecord>,
    pub parent: Carried<NodeId, NodeId>,
    pub profiles: Carried<NodeId, Profile>,
    pub canon: Carried<Vec<u8>, NodeId, ByBytes>,
    pub aliases: Carried<Vec<u8>, String, ByBytes>,
    pub links: Carried<u64, Link>,
    pub pairs: Carried<Vec<u8>, u64, ByBytes>,
    pub hubs: Carried<NodeId, Reaches>,
    pub match_records: Carried<NodeId, Record>,
    /// Keeps no block (see [`StateCache`]), only how many the last transaction read.
    pub blocks: Carried<Vec<u8>, Block, ByBytes>,
    /// The `meta` counters (next node, next link, next outbox sequence) as last committed.
    pub counters: Option<[u64; 3]>,
    /// Whether any identifier has a tombstone, once a transaction has looked (`Some(false)`
    /// spares each new identifier its tombstone read until `forget` writes one).
    pub tombstones: Option<bool>,
}

impl Held {
    pub(crate) fn new(entries: usize) -> Self {
        Self {
            ids: Generations::new(entries),
            nodes: Generations::new(entries),
            parent: Generations::new(entries),
            profiles: Generations::new(entries),
            canon: Generations::new(entries),
            aliases: Generations::new(entries),
            links: Generations::new(entries),
            pairs: Generations::new(entries),
            hubs: Generations::new(entries),
            match_records: Generations::new(entries),
            blocks: Generations::new(0),
            counters: None,
            tombstones: None,
        }
    }
}

/// Decoded committed state of one store, bounded by an entry count per column family.
/// Blocking-index blocks are not kept: each holds up to `max_block_size` records, so a count
/// of entries would not bound their memory.
pub struct StateCache {
    entries: usize,
    held: Option<Held>,
}

impl StateCache {
    /// A cache of at most `entries` keys per column family (0: a cache that keeps nothing).
    pub fn new(entries: usize) -> Self {
        Self {
            entries,
            held: None,
        }
    }

    /// The carried state, moved out: until [`Self::put_back`] the cache is empty.
    pub(crate) fn take(&mut self) -> Held {
        self.held.take().unwrap_or_else(|| Held::new(self.entries))
    }

    /// Called only once the state `held` describes has been committed.
    pub(crate) fn put_back(&mut self, held: Held) {
        self.held = Some(held);
    }

    /// Keys held now, over every column family.
    pub fn len(&self) -> usize {
        self.held.as_ref().map_or(0, |h| {
            h.ids.len()
                + h.nodes.len()
                + h.parent.len()
                + h.profiles.len()
                + h.canon.len()
                + h.aliases.len()
                + h.links.len()
                + h.pairs.len()
                + h.hubs.len()
                + h.match_records.len()
        })
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_keep_at_most_the_capacity_and_the_latest_value() {
        let mut g: Generations<u64, u64, ById> = Generations::new(4);
        for k in 0..10 {
            g.insert(k, k);
            assert!(g.len() <= 4, "{} entries after {k}", g.len());
        }
        // The two newest survive; the oldest are gone.
        assert_eq!(g.take(&9), Some(9));
        assert_eq!(g.take(&9), None);
        assert_eq!(g.take(&0), None);
        g.insert(8, 80);
        assert_eq!(g.take(&8), Some(80));
        assert_eq!(g.take(&8), None);
    }

    #[test]
    fn a_key_rewritten_after_aging_is_held_once() {
        let mut g: Generations<u64, u64, ById> = Generations::new(4);
        g.insert(1, 1);
        g.insert(2, 2);
        // 1 and 2 age; 1 written again must not leave its old value behind.
        g.insert(1, 10);
        assert_eq!(g.len(), 2);
        assert_eq!(g.take(&1), Some(10));
        assert_eq!(g.take(&1), None);
    }

    #[test]
    fn a_zero_capacity_keeps_nothing() {
        let mut g: Generations<u64, u64, ById> = Generations::new(0);
        g.insert(1, 1);
        assert!(g.is_empty());
        assert_eq!(g.take(&1), None);
    }
}
