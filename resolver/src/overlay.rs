//! The per-column-family cache of a [`crate::txn::Txn`]: values are decoded once when first
//! read, read and mutated in place while the transaction runs, and encoded once, at commit,
//! if they changed. Cloning a profile out and putting it back per signal is what made the
//! resolver slow; here a signal borrows it. Keys not read yet are looked up in the state the
//! last committed transaction carried over ([`crate::state_cache`]) before the store.

use crate::state_cache::{Carried, Generations};
use crate::store::{Cf, GraphStore, Op};
use crate::Result;
use std::borrow::Borrow;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};

/// A key of a column family as the cache holds it.
pub trait StoreKey: Hash + Eq {
    /// Calls `f` with the key's bytes in the store.
    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R;
    fn into_bytes(self) -> Vec<u8>;
    /// Whether the key is an id at or above `floor`, the next one the resolver will mint:
    /// such an id has never been written, so the store holds nothing under it.
    fn minted_from(&self, _floor: u64) -> bool {
        false
    }
}

/// Node and link ids, stored big-endian so the store iterates them in order.
impl StoreKey for u64 {
    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(&self.to_be_bytes())
    }
    fn into_bytes(self) -> Vec<u8> {
        self.to_be_bytes().to_vec()
    }
    fn minted_from(&self, floor: u64) -> bool {
        *self >= floor
    }
}

impl StoreKey for Vec<u8> {
    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(self)
    }
    fn into_bytes(self) -> Vec<u8> {
        self
    }
}

/// A multiplicative hash for ids the resolver assigns itself (node and link ids): several
/// times cheaper than SipHash, and nobody outside can choose them to collide. Keys built from
/// tenant-supplied strings keep a hasher seeded at random per process ([`ByBytes`]).
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }

    fn finish(&self) -> u64 {
        // The multiply leaves its entropy in the high bits; the table indexes by the low ones.
        self.0.rotate_left(26)
    }
}

pub type ById = BuildHasherDefault<IdHasher>;
/// Keys made of tenant-supplied bytes (identifiers, canonical ids, blocking keys): foldhash,
/// seeded at random per process, so keys cannot be chosen ahead to collide, and several times
/// cheaper than the standard library's SipHash on keys of a few dozen bytes.
pub type ByBytes = foldhash::quality::RandomState;

/// A value as the transaction sees it: `None` is absent (or deleted); `dirty` if written;
/// `stored` unless the store is known to hold nothing under the key (read as absent, or a key
/// the transaction created), so deleting it again needs no write.
struct Slot<V> {
    value: Option<V>,
    dirty: bool,
    stored: bool,
}

/// Cached reads and pending writes of one column family.
pub struct Overlay<K, V, S = ById> {
    cf: Cf,
    entries: HashMap<K, Slot<V>, S>,
    /// Committed values carried over from earlier transactions, taken as they are read.
    carried: Carried<K, V, S>,
    /// Ids from here up were not minted when the transaction began, so neither the store nor
    /// the carried state holds them: reading one costs no lookup (`u64::MAX`: no such ids).
    unminted: u64,
}

impl<K: StoreKey, V, S: BuildHasher + Default> Overlay<K, V, S> {
    /// An overlay that reads everything from the store.
    pub fn new(cf: Cf) -> Self {
        Self::carrying(cf, Generations::new(0))
    }

    /// An overlay that reads a key from `carried` (committed state) before the store.
    pub fn carrying(cf: Cf, carried: Carried<K, V, S>) -> Self {
        Self {
            cf,
            entries: HashMap::with_capacity_and_hasher(carried.last_used, S::default()),
            carried,
            unminted: u64::MAX,
        }
    }

    /// Keys are ids minted in turn from a counter that stood at `next` when the transaction
    /// began (and that committed writes advance with them): none at or above it is stored.
    pub fn minting_from(mut self, next: u64) -> Self {
        self.unminted = next;
        self
    }

    fn slot(
        &mut self,
        store: &dyn GraphStore,
        key: K,
        decode: impl Fn(&[u8]) -> Result<V>,
    ) -> Result<&mut Slot<V>> {
        self.slot_unless_new(store, key, false, decode)
    }

    /// The key's slot, read from the carried state or the store unless `new` says the key
    /// names something minted in this transaction (so nothing is stored under it).
    fn slot_unless_new(
        &mut self,
        store: &dyn GraphStore,
        key: K,
        new: bool,
        decode: impl Fn(&[u8]) -> Result<V>,
    ) -> Result<&mut Slot<V>> {
        match self.entries.entry(key) {
            Entry::Occupied(e) => Ok(e.into_mut()),
            Entry::Vacant(e) => {
                if new || e.key().minted_from(self.unminted) {
                    return Ok(e.insert(Slot {
                        value: None,
                        dirty: false,
                        stored: false,
                    }));
                }
                let value = match self.carried.take(e.key()) {
                    Some(value) => value,
                    None => {
                        let cf = self.cf;
                        e.key()
                            .with_bytes(|k| store.get(cf, k))?
                            .map(|b| decode(&b))
                            .transpose()?
                    }
                };
                Ok(e.insert(Slot {
                    stored: value.is_some(),
                    value,
                    dirty: false,
                }))
            }
        }
    }

    /// Reads the value (from the store the first time).
    pub fn get(
        &mut self,
        store: &dyn GraphStore,
        key: K,
        decode: impl Fn(&[u8]) -> Result<V>,
    ) -> Result<Option<&V>> {
        Ok(self.slot(store, key, decode)?.value.as_ref())
    }

    /// Reads the value; `new` says the key names something minted in this transaction, which
    /// the store cannot hold (a pair of nodes one of which is new), so it is not looked up.
    pub fn get_unless_new(
        &mut self,
        store: &dyn GraphStore,
        key: K,
        new: bool,
        decode: impl Fn(&[u8]) -> Result<V>,
    ) -> Result<Option<&V>> {
        Ok(self
            .slot_unless_new(store, key, new, decode)?
            .value
            .as_ref())
    }

    /// The value to change in place; it is written at commit.
    pub fn get_mut(
        &mut self,
        store: &dyn GraphStore,
        key: K,
        decode: impl Fn(&[u8]) -> Result<V>,
    ) -> Result<Option<&mut V>> {
        let slot = self.slot(store, key, decode)?;
        slot.dirty |= slot.value.is_some();
        Ok(slot.value.as_mut())
    }

    /// Calls `f` with the value (`None`: absent) to read and perhaps change in place; `f` says
    /// whether it changed it, and only then is it written at commit (a block every record
    /// reads but few change is not rewritten).
    pub fn update<R>(
        &mut self,
        store: &dyn GraphStore,
        key: K,
        decode: impl Fn(&[u8]) -> Result<V>,
        f: impl FnOnce(&mut Option<V>) -> (R, bool),
    ) -> Result<R> {
        let slot = self.slot(store, key, decode)?;
        let (r, changed) = f(&mut slot.value);
        slot.dirty |= changed;
        Ok(r)
    }

    /// A value already read in this transaction (`None` if it was not read, or is absent).
    pub fn cached<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.get(key).and_then(|s| s.value.as_ref())
    }

    /// Removes the value and hands it over: the key is deleted at commit unless put again.
    pub fn take(
        &mut self,
        store: &dyn GraphStore,
        key: K,
        decode: impl Fn(&[u8]) -> Result<V>,
    ) -> Result<Option<V>> {
        let slot = self.slot(store, key, decode)?;
        slot.dirty = true;
        Ok(slot.value.take())
    }

    pub fn put(&mut self, key: K, value: Option<V>) {
        match self.entries.entry(key) {
            Entry::Occupied(mut e) => {
                let slot = e.get_mut();
                slot.value = value;
                slot.dirty = true;
            }
            // Not read: the store may hold a value under it, unless it is an id not yet minted
            // when the transaction began.
            Entry::Vacant(e) => {
                let stored = !e.key().minted_from(self.unminted);
                e.insert(Slot {
                    value,
                    dirty: true,
                    stored,
                });
            }
        }
    }

    /// Puts a value under a key the store holds nothing under (one this transaction minted):
    /// if it is deleted again before commit, nothing is written for it.
    pub fn put_new(&mut self, key: K, value: V) {
        self.entries.insert(
            key,
            Slot {
                value: Some(value),
                dirty: true,
                stored: false,
            },
        );
    }

    /// Keys read or written in this transaction: at most the ops [`Self::push_ops`] appends.
    pub fn keys_used(&self) -> usize {
        self.entries.len()
    }

    /// Appends a write (or delete) for every changed key, keeping the values for
    /// [`Self::into_carried`]. A key deleted that the store never held is not written.
    pub fn push_ops(&self, ops: &mut Vec<Op>, encode: impl Fn(&V) -> Vec<u8>) {
        for (k, slot) in &self.entries {
            if slot.dirty && (slot.stored || slot.value.is_some()) {
                let key = k.with_bytes(<[u8]>::to_vec);
                ops.push((self.cf, key, slot.value.as_ref().map(&encode)));
            }
        }
    }

    /// The carried state with every value this transaction read or wrote added: call only
    /// once the writes of [`Self::push_ops`] are committed, as that is what it now holds.
    pub fn into_carried(self) -> Carried<K, V, S> {
        let mut carried = self.carried;
        carried.last_used = self.entries.len();
        for (k, slot) in self.entries {
            carried.insert(k, slot.value);
        }
        carried
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    fn decode(b: &[u8]) -> Result<u64> {
        Ok(u64::from_be_bytes(b.try_into().expect("8 bytes")))
    }

    fn ops(overlay: &Overlay<u64, u64>) -> Vec<Op> {
        let mut ops = Vec::new();
        overlay.push_ops(&mut ops, |v| v.to_be_bytes().to_vec());
        ops.sort();
        ops
    }

    #[test]
    fn deleting_what_the_store_never_held_writes_nothing() {
        let store = MemStore::default();
        store
            .write(vec![(
                Cf::Parent,
                1u64.to_be_bytes().to_vec(),
                Some(vec![0; 8]),
            )])
            .unwrap();
        let mut overlay: Overlay<u64, u64> = Overlay::new(Cf::Parent);
        // Minted here, then deleted: no write.
        overlay.put_new(10, 5);
        overlay.put(10, None);
        // Read as absent, written, deleted: no write.
        assert_eq!(overlay.get(&store, 11, decode).unwrap(), None);
        overlay.put(11, Some(5));
        overlay.put(11, None);
        // Read as present, then deleted: a delete.
        assert!(overlay.get(&store, 1, decode).unwrap().is_some());
        overlay.put(1, None);
        // Not read: the store may hold it, so a delete.
        overlay.put(12, None);
        // Minted and kept: a write.
        overlay.put_new(13, 7);
        let be = |k: u64| k.to_be_bytes().to_vec();
        assert_eq!(
            ops(&overlay),
            vec![
                (Cf::Parent, be(1), None),
                (Cf::Parent, be(12), None),
                (Cf::Parent, be(13), Some(be(7))),
            ]
        );
    }

    #[test]
    fn an_id_not_yet_minted_is_read_as_absent_without_a_lookup_and_deleted_without_a_write() {
        let store = MemStore::default();
        // Below the floor the store is read; at and above it, it is not (the store here holds
        // a value there only to show that no lookup happens).
        store
            .write(vec![
                (Cf::Parent, 4u64.to_be_bytes().to_vec(), Some(vec![0; 8])),
                (Cf::Parent, 9u64.to_be_bytes().to_vec(), Some(vec![0; 8])),
            ])
            .unwrap();
        let mut overlay: Overlay<u64, u64> = Overlay::new(Cf::Parent).minting_from(5);
        assert_eq!(overlay.get(&store, 4, decode).unwrap(), Some(&0));
        assert_eq!(overlay.get(&store, 9, decode).unwrap(), None);
        // Minted, written and deleted again, or deleted unread: nothing to write.
        overlay.put(5, Some(1));
        overlay.put(5, None);
        overlay.put(6, None);
        overlay.put(7, Some(2));
        let be = |k: u64| k.to_be_bytes().to_vec();
        assert_eq!(ops(&overlay), vec![(Cf::Parent, be(7), Some(be(2)))]);
    }
}
