//! The profile API's read tier: the JSON answers of recent lookups, kept in memory up to
//! `http.read_tier_mb`, so a profile asked for again is answered without reading, decoding
//! and serialising it. An answer is kept with the stamps of the store keys its lookup read
//! ([`cdp_resolver::lookup::Changes`]) and served only while none of those keys has changed: a
//! merge, unmerge or forget the resolver has committed changes a key the lookup read (the
//! identifier, the parent chain, the profile), so the next request reads the store again. A
//! forgotten person's answer is therefore never served, and nothing is served across tenants
//! (the tenant is part of the key).

use axum::body::Bytes;
use cdp_resolver::lookup::{Changes, Stamps, CHANGE_SLOT_BYTES};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Shards of the tier, each behind its own lock, so listener threads rarely wait on each other.
const SHARDS: usize = 16;

/// Bookkeeping bytes an answer costs beyond its key and body (map slot, queue slot, `Bytes`).
const ENTRY_OVERHEAD_BYTES: usize = 96;

/// Share of `read_tier_mb` given to the change counters: more slots mean fewer answers dropped
/// because a key that merely shares their slot changed.
const CHANGES_SHARE: usize = 4;

/// What a request is looking up, as the tier keys it.
#[derive(Debug, Clone, Copy)]
pub enum Lookup<'a> {
    /// By identifier: the store's key of the tenant's identifier.
    Identifier(&'a [u8]),
    /// By canonical id: the tenant's canonical id key.
    Canonical(&'a [u8]),
}

impl Lookup<'_> {
    fn key(self) -> Vec<u8> {
        let (tag, key) = match self {
            Lookup::Identifier(k) => (b'i', k),
            Lookup::Canonical(k) => (b'c', k),
        };
        let mut out = Vec::with_capacity(key.len() + 1);
        out.push(tag);
        out.extend_from_slice(key);
        out
    }
}

pub struct ReadTier {
    changes: Arc<Changes>,
    shards: Box<[Mutex<Shard>]>,
    shard_budget: usize,
    hasher: RandomState,
    counts: Counts,
}

/// What the tier has done since it started, for `/metrics`.
#[derive(Debug, Default)]
struct Counts {
    /// Lookups answered from the tier.
    hits: AtomicU64,
    /// Lookups with no kept answer.
    misses: AtomicU64,
    /// Lookups whose kept answer was dropped because a key it read had changed.
    stale: AtomicU64,
    /// Answers dropped to make room for newer ones.
    evictions: AtomicU64,
}

/// A reading of the tier's counts and size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TierStats {
    pub hits: u64,
    pub misses: u64,
    pub stale: u64,
    pub evictions: u64,
    /// Bytes the kept answers take, bookkeeping included.
    pub bytes: u64,
}

#[derive(Default)]
struct Shard {
    answers: HashMap<Vec<u8>, Answer>,
    /// Keys in the order they were stored, each with the generation it was stored as: the
    /// oldest goes first when the shard is over budget.
    order: VecDeque<(Vec<u8>, u64)>,
    bytes: usize,
    generation: u64,
}

struct Answer {
    body: Bytes,
    stamps: Stamps,
    generation: u64,
    bytes: usize,
}

impl Shard {
    fn remove(&mut self, key: &[u8]) {
        if let Some(gone) = self.answers.remove(key) {
            self.bytes -= gone.bytes;
        }
    }
}

impl ReadTier {
    /// A tier of `budget_mb` MiB in all (change counters included), or `None` for 0.
    pub fn new(budget_mb: usize) -> Option<Self> {
        let budget = budget_mb.checked_mul(1 << 20).filter(|b| *b > 0)?;
        // Rounded down to a power of two, so the counters stay within their share.
        let slots = (budget / CHANGES_SHARE / CHANGE_SLOT_BYTES).max(1);
        let slots = 1usize << slots.ilog2();
        let answers = budget - slots * CHANGE_SLOT_BYTES;
        Some(Self {
            changes: Arc::new(Changes::new(slots)),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            shard_budget: answers / SHARDS,
            hasher: RandomState::new(),
            counts: Counts::default(),
        })
    }

    /// Lookups answered and missed, answers evicted, and the bytes kept, so far.
    pub fn stats(&self) -> TierStats {
        let c = &self.counts;
        TierStats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            stale: c.stale.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
            bytes: self
                .shards
                .iter()
                .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).bytes as u64)
                .sum(),
        }
    }

    /// The counters the resolver's writes must go through (see `lookup::WatchedStore`).
    pub fn changes(&self) -> &Arc<Changes> {
        &self.changes
    }

    fn shard(&self, key: &[u8]) -> std::sync::MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        self.shards[i]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The kept answer to `lookup`, if nothing it read has changed since.
    pub fn get(&self, lookup: Lookup<'_>) -> Option<Bytes> {
        let key = lookup.key();
        let mut shard = self.shard(&key);
        let Some(answer) = shard.answers.get(&key) else {
            self.counts.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        if self.changes.unchanged(&answer.stamps) {
            self.counts.hits.fetch_add(1, Ordering::Relaxed);
            return Some(answer.body.clone());
        }
        shard.remove(&key);
        self.counts.stale.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Keeps `body`, the answer of a lookup that read with `stamps`. An answer larger than a
    /// shard, or read from keys that have changed already, is not kept.
    pub fn put(&self, lookup: Lookup<'_>, body: Bytes, stamps: Stamps) {
        if !self.changes.unchanged(&stamps) {
            return;
        }
        let key = lookup.key();
        let bytes = key.len() * 2 + body.len() + stamps.size_bytes() + ENTRY_OVERHEAD_BYTES;
        if bytes > self.shard_budget {
            return;
        }
        let mut guard = self.shard(&key);
        let shard = &mut *guard;
        shard.remove(&key);
        while shard.bytes + bytes > self.shard_budget {
            let Some((oldest, generation)) = shard.order.pop_front() else {
                break;
            };
            // A key stored again since, or dropped as changed, is not this queue slot's.
            if shard.answers.get(&oldest).map(|a| a.generation) == Some(generation) {
                shard.remove(&oldest);
                self.counts.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        shard.generation += 1;
        let generation = shard.generation;
        shard.order.push_back((key.clone(), generation));
        shard.bytes += bytes;
        shard.answers.insert(
            key,
            Answer {
                body,
                stamps,
                generation,
                bytes,
            },
        );
        // Queue slots of keys stored again or dropped are left behind; keep the queue bounded
        // by the answers it orders.
        if shard.order.len() > 2 * shard.answers.len() + 64 {
            let answers = &shard.answers;
            let live: VecDeque<_> = std::mem::take(&mut shard.order)
                .into_iter()
                .filter(|(k, g)| answers.get(k).map(|a| a.generation) == Some(*g))
                .collect();
            shard.order = live;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cdp_proto::{Identifier, IdentifierKind, Profile};
    use cdp_resolver::lookup::{watched, WatchedStore};
    use cdp_resolver::store::Cf;
    use cdp_resolver::txn::id_key;
    use cdp_resolver::{GraphStore, MemStore};

    fn shard_bytes(tier: &ReadTier) -> usize {
        tier.shards.iter().map(|s| s.lock().unwrap().bytes).sum()
    }

    #[test]
    fn an_answer_is_served_until_a_key_its_lookup_read_is_written() {
        let tier = ReadTier::new(1).unwrap();
        let store = WatchedStore::new(Arc::new(MemStore::default()), tier.changes().clone());
        let id = Identifier::new(IdentifierKind::UserId, "u1");
        let key = id_key("acme", &id);
        let profile = Profile::new("acme", "cdp_1", vec![id.clone()], chrono::Utc::now());
        let put = |p: &Profile| {
            let encoded = cdp_resolver::codec::encode_profile(p);
            vec![
                (Cf::Ids, key.clone(), Some(1u64.to_be_bytes().to_vec())),
                (Cf::Profiles, 1u64.to_be_bytes().to_vec(), Some(encoded)),
            ]
        };
        store.write(put(&profile)).unwrap();
        let (found, stamps) =
            watched::profile_by_identifier(&store, tier.changes(), "acme", &id).unwrap();
        assert_eq!(found.as_ref(), Some(&profile));
        tier.put(Lookup::Identifier(&key), Bytes::from("v1"), stamps);
        assert_eq!(tier.get(Lookup::Identifier(&key)), Some(Bytes::from("v1")));
        // The same key under the other route, or another tenant's key, is another answer.
        assert_eq!(tier.get(Lookup::Canonical(&key)), None);
        let other = id_key("zeta", &id);
        assert_eq!(tier.get(Lookup::Identifier(&other)), None);

        let changed = Profile {
            version: 2,
            ..profile
        };
        assert!(tier.stats().bytes > 0);
        store.write(put(&changed)).unwrap();
        assert_eq!(tier.get(Lookup::Identifier(&key)), None);
        assert_eq!(shard_bytes(&tier), 0, "the changed answer is dropped");
        assert_eq!(
            tier.stats(),
            TierStats {
                hits: 1,
                misses: 2,
                stale: 1,
                evictions: 0,
                bytes: 0
            }
        );
    }

    #[test]
    fn answers_read_before_a_write_they_missed_are_not_kept() {
        let tier = ReadTier::new(1).unwrap();
        let store = WatchedStore::new(Arc::new(MemStore::default()), tier.changes().clone());
        let id = Identifier::new(IdentifierKind::UserId, "u1");
        let key = id_key("acme", &id);
        let (_, stamps) =
            watched::profile_by_identifier(&store, tier.changes(), "acme", &id).unwrap();
        store
            .write(vec![(
                Cf::Ids,
                key.clone(),
                Some(1u64.to_be_bytes().to_vec()),
            )])
            .unwrap();
        tier.put(Lookup::Identifier(&key), Bytes::from("none"), stamps);
        assert_eq!(tier.get(Lookup::Identifier(&key)), None);
    }

    #[test]
    fn the_tier_keeps_the_newest_answers_within_its_budget() {
        let tier = ReadTier::new(1).unwrap();
        let budget = tier.shard_budget * SHARDS;
        assert!(budget > 512 * 1024 && budget <= 1 << 20, "{budget}");
        let body = Bytes::from(vec![b'x'; 8 * 1024]);
        let keys: Vec<Vec<u8>> = (0..1000u32).map(|n| n.to_be_bytes().to_vec()).collect();
        for key in &keys {
            tier.put(Lookup::Identifier(key), body.clone(), Stamps::default());
            assert!(shard_bytes(&tier) <= budget);
        }
        let kept = keys
            .iter()
            .filter(|k| tier.get(Lookup::Identifier(k)).is_some())
            .count();
        // 8 KiB answers in a budget of under 1 MiB: at most ~96 fit, and most of them do.
        assert!((40..=96).contains(&kept), "{kept}");
        let stats = tier.stats();
        assert_eq!(
            stats.evictions,
            1000 - kept as u64,
            "every answer not kept was evicted"
        );
        assert_eq!(
            (stats.hits, stats.misses),
            (kept as u64, 1000 - kept as u64)
        );
        assert_eq!(stats.bytes, shard_bytes(&tier) as u64);
        assert!(tier.get(Lookup::Identifier(keys.last().unwrap())).is_some());
        assert!(tier.get(Lookup::Identifier(&keys[0])).is_none());
        // Storing keys again leaves no queue slots behind without bound.
        for _ in 0..50 {
            tier.put(
                Lookup::Identifier(&keys[999]),
                body.clone(),
                Stamps::default(),
            );
        }
        for shard in tier.shards.iter() {
            let shard = shard.lock().unwrap();
            assert!(shard.order.len() <= 2 * shard.answers.len() + 64);
        }
        assert!(ReadTier::new(0).is_none());
    }
}
