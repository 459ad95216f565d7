//! Dropping retried events: Segment libraries, MMP postbacks and CRM syncs resend an event when
//! they did not see an acknowledgement, so one event id can arrive several times. Within a window
//! (by record time), a repeat of a `(tenant, source, event_id)` already seen on the same input
//! partition is dropped and counted; the first copy goes on.
//!
//! Memory is bounded: each partition remembers at most `max_ids` events, the oldest forgotten
//! first, as 64-bit hashes (a false match needs two of ~10^5 remembered ids to collide in 64
//! bits: odds around 10^-9). The memory is the stage's, not durable: after a restart, replayed
//! records pass again, and the resolver drops those by event id.

use cdp_proto::Source;
use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

/// How long and how many event ids are remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupOptions {
    /// A repeat later than this after the first copy (record time) is not a duplicate. 0 turns
    /// de-duplication off.
    pub window_ms: u64,
    /// Most ids remembered per input partition.
    pub max_ids: usize,
}

/// Remembered event ids of every input partition.
#[derive(Debug)]
pub struct Deduplicator {
    options: DedupOptions,
    /// topic -> partition -> ids.
    partitions: HashMap<String, HashMap<i32, Seen>>,
}

/// One partition's ids: hash -> first seen, and the order they were first seen in.
#[derive(Debug, Default)]
struct Seen {
    first_seen: HashMap<u64, i64>,
    order: VecDeque<(u64, i64)>,
}

impl Deduplicator {
    pub fn new(options: DedupOptions) -> Self {
        Self {
            options,
            partitions: HashMap::new(),
        }
    }

    /// `true` when the event was seen on `(topic, partition)` within the window before
    /// `time_ms`: drop it. Otherwise remembers it and returns `false`.
    pub fn is_duplicate(
        &mut self,
        topic: &str,
        partition: i32,
        tenant: &str,
        source: Source,
        event_id: &str,
        time_ms: i64,
    ) -> bool {
        if self.options.window_ms == 0 || self.options.max_ids == 0 {
            return false;
        }
        let window = i64::try_from(self.options.window_ms).unwrap_or(i64::MAX);
        if !self.partitions.contains_key(topic) {
            self.partitions.insert(topic.to_string(), HashMap::new());
        }
        let Some(topic_partitions) = self.partitions.get_mut(topic) else {
            return false;
        };
        let seen = topic_partitions.entry(partition).or_default();
        seen.expire(time_ms.saturating_sub(window));
        let key = key(tenant, source, event_id);
        match seen.first_seen.entry(key) {
            Entry::Occupied(first) if time_ms.saturating_sub(*first.get()) <= window => true,
            Entry::Occupied(mut first) => {
                first.insert(time_ms);
                seen.order.push_back((key, time_ms));
                seen.evict(self.options.max_ids);
                false
            }
            Entry::Vacant(slot) => {
                slot.insert(time_ms);
                seen.order.push_back((key, time_ms));
                seen.evict(self.options.max_ids);
                false
            }
        }
    }

    /// Ids remembered for `(topic, partition)`.
    pub fn remembered(&self, topic: &str, partition: i32) -> usize {
        self.partitions
            .get(topic)
            .and_then(|p| p.get(&partition))
            .map_or(0, |s| s.first_seen.len())
    }
}

impl Seen {
    /// Forgets ids first seen before `oldest_ms` (records arrive roughly in time order; a late
    /// one is kept until the ids around it go).
    fn expire(&mut self, oldest_ms: i64) {
        while let Some(&(key, t)) = self.order.front() {
            if t >= oldest_ms {
                break;
            }
            self.order.pop_front();
            self.forget(key, t);
        }
    }

    fn evict(&mut self, max_ids: usize) {
        while self.first_seen.len() > max_ids {
            let Some((key, t)) = self.order.pop_front() else {
                break;
            };
            self.forget(key, t);
        }
    }

    /// Removes `key` unless it was seen again (re-remembered) after `t`.
    fn forget(&mut self, key: u64, t: i64) {
        if self.first_seen.get(&key) == Some(&t) {
            self.first_seen.remove(&key);
        }
    }
}

fn key(tenant: &str, source: Source, event_id: &str) -> u64 {
    // Fixed keys: the same id always hashes the same within the process that remembers it.
    let mut h = DefaultHasher::new();
    (tenant, source.as_str(), event_id).hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dedup(window_ms: u64, max_ids: usize) -> Deduplicator {
        Deduplicator::new(DedupOptions { window_ms, max_ids })
    }

    #[test]
    fn a_repeat_within_the_window_is_a_duplicate_once_per_copy() {
        let mut d = dedup(1_000, 10);
        assert!(!d.is_duplicate("t", 0, "acme", Source::Web, "m1", 0));
        assert!(d.is_duplicate("t", 0, "acme", Source::Web, "m1", 500));
        assert!(d.is_duplicate("t", 0, "acme", Source::Web, "m1", 1_000));
        // Past the window it is a new event again, and remembered from then on.
        assert!(!d.is_duplicate("t", 0, "acme", Source::Web, "m1", 1_001));
        assert!(d.is_duplicate("t", 0, "acme", Source::Web, "m1", 1_500));
    }

    #[test]
    fn tenant_source_and_partition_are_part_of_the_key() {
        let mut d = dedup(1_000, 10);
        assert!(!d.is_duplicate("t", 0, "acme", Source::Web, "m1", 0));
        assert!(!d.is_duplicate("t", 0, "other", Source::Web, "m1", 0));
        assert!(!d.is_duplicate("t", 0, "acme", Source::App, "m1", 0));
        assert!(!d.is_duplicate("t", 1, "acme", Source::Web, "m1", 0));
        assert!(d.is_duplicate("t", 1, "acme", Source::Web, "m1", 1));
    }

    #[test]
    fn memory_is_bounded_and_the_oldest_id_goes_first() {
        let mut d = dedup(u64::MAX, 3);
        for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
            assert!(!d.is_duplicate("t", 0, "x", Source::Web, id, i as i64));
        }
        assert_eq!(d.remembered("t", 0), 3);
        // `a` was evicted; `d` is still remembered.
        assert!(!d.is_duplicate("t", 0, "x", Source::Web, "a", 10));
        assert!(d.is_duplicate("t", 0, "x", Source::Web, "d", 10));
        assert_eq!(d.remembered("t", 0), 3);
    }

    #[test]
    fn expired_ids_are_forgotten() {
        let mut d = dedup(100, 1_000);
        for i in 0..50 {
            d.is_duplicate("t", 0, "x", Source::Web, &format!("m{i}"), i);
        }
        assert_eq!(d.remembered("t", 0), 50);
        d.is_duplicate("t", 0, "x", Source::Web, "late", 1_000);
        assert_eq!(d.remembered("t", 0), 1);
    }

    #[test]
    fn window_zero_turns_it_off() {
        let mut d = dedup(0, 10);
        assert!(!d.is_duplicate("t", 0, "x", Source::Web, "m", 0));
        assert!(!d.is_duplicate("t", 0, "x", Source::Web, "m", 0));
    }
}
