//! Reading profiles: by any identifier or by canonical id (retired ids resolve to the survivor).
//! A lookup is a few point reads straight from the store: it writes nothing, so it needs none
//! of a transaction's cache, counters or path compression, and the profile API serves it per
//! request. The reads are not one snapshot: a merge the resolver commits between two of them
//! can leave the walk at a root that no longer holds a profile, and the lookup then reads again.
//!
//! What a lookup read can be remembered: [`WatchedStore`] counts the writes to the keys
//! lookups read ([`Changes`]): once before a write (the count turns odd: changing) and once
//! after it is committed (even again). A [`watched`] lookup returns with the count of every key
//! it read, taken before reading it. While [`Changes::unchanged`] holds, none of those keys has
//! been written since, so the same lookup would read the same values and give the same answer:
//! a cache of answers checks that instead of reading the store again. As the first count
//! precedes the commit, a check made after a commit never passes for a read made before it.

use crate::graph::resolve_alias;
use crate::store::{Cf, GraphStore, Op, Visit};
use crate::txn::{decode_u64, id_key, tenant_key, NodeId, Txn};
use crate::{ResolverError, Result};
use cdp_proto::{Identifier, Profile};
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Reads of one lookup before it gives up on a graph that keeps moving under it: each retry
/// needs another merge committed within microseconds, so a few are plenty.
const ATTEMPTS: usize = 4;

/// Longest parent chain a walk follows: the resolver compresses paths on every write, so a
/// real chain is a few hops; a longer one is a cycle, i.e. a corrupt store.
const MAX_HOPS: usize = 4096;

/// The column families a lookup reads; only writes to these can change its answer.
const READ: [Cf; 4] = [Cf::Ids, Cf::Parent, Cf::Profiles, Cf::Canon];

/// The live canonical id of the profile that holds `id`.
pub fn canonical_of(
    store: &dyn GraphStore,
    tenant: &str,
    id: &Identifier,
) -> Result<Option<String>> {
    Ok(profile_by_identifier(store, tenant, id)?.map(|p| p.canonical_id))
}

pub fn profile_by_identifier(
    store: &dyn GraphStore,
    tenant: &str,
    id: &Identifier,
) -> Result<Option<Profile>> {
    by_identifier(&mut Reads::unwatched(store), tenant, id)
}

pub fn profile_by_canonical(
    store: &dyn GraphStore,
    tenant: &str,
    canonical_id: &str,
) -> Result<Option<Profile>> {
    by_canonical(&mut Reads::unwatched(store), tenant, canonical_id)
}

/// Lookups that also return the [`Stamps`] of what they read.
pub mod watched {
    use super::*;

    /// [`profile_by_identifier`](super::profile_by_identifier), with the stamps of its reads.
    pub fn profile_by_identifier(
        store: &dyn GraphStore,
        changes: &Changes,
        tenant: &str,
        id: &Identifier,
    ) -> Result<(Option<Profile>, Stamps)> {
        let mut reads = Reads::watched(store, changes);
        let profile = by_identifier(&mut reads, tenant, id)?;
        Ok((profile, reads.stamps))
    }

    /// [`profile_by_canonical`](super::profile_by_canonical), with the stamps of its reads. A
    /// retired id is followed in a transaction, whose reads are not stamped: its stamps say so
    /// ([`Stamps::is_complete`]).
    pub fn profile_by_canonical(
        store: &dyn GraphStore,
        changes: &Changes,
        tenant: &str,
        canonical_id: &str,
    ) -> Result<(Option<Profile>, Stamps)> {
        let mut reads = Reads::watched(store, changes);
        let profile = by_canonical(&mut reads, tenant, canonical_id)?;
        Ok((profile, reads.stamps))
    }
}

fn by_identifier(reads: &mut Reads<'_>, tenant: &str, id: &Identifier) -> Result<Option<Profile>> {
    let key = id_key(tenant, id);
    for _ in 0..ATTEMPTS {
        reads.restart();
        let Some(node) = reads.u64(Cf::Ids, &key)? else {
            return Ok(None);
        };
        let root = root_of(reads, node)?;
        if let Some(p) = profile_at(reads, root)? {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

fn by_canonical(
    reads: &mut Reads<'_>,
    tenant: &str,
    canonical_id: &str,
) -> Result<Option<Profile>> {
    let key = tenant_key(tenant, canonical_id);
    for _ in 0..ATTEMPTS {
        reads.restart();
        let Some(root) = reads.u64(Cf::Canon, &key)? else {
            reads.stamps.complete = false;
            return retired(reads.store, tenant, canonical_id);
        };
        if let Some(p) = profile_at(reads, root)? {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// The survivor of a retired canonical id (rarely asked: aliases are followed in a transaction).
fn retired(store: &dyn GraphStore, tenant: &str, canonical_id: &str) -> Result<Option<Profile>> {
    let mut txn = Txn::begin(store)?;
    let Some(live) = resolve_alias(&mut txn, tenant, canonical_id)? else {
        return Ok(None);
    };
    match txn.root_of_canonical(tenant, &live)? {
        Some(root) => txn.profile(root),
        None => Ok(None),
    }
}

/// The root of `node`'s set (roots have no parent entry).
fn root_of(reads: &mut Reads<'_>, node: NodeId) -> Result<NodeId> {
    let mut at = node;
    for _ in 0..MAX_HOPS {
        match reads.u64(Cf::Parent, &at.to_be_bytes())? {
            Some(parent) => at = parent,
            None => return Ok(at),
        }
    }
    Err(ResolverError::Corrupt {
        cf: Cf::Parent.name(),
        detail: format!("no root within {MAX_HOPS} hops of node {node}"),
    })
}

fn profile_at(reads: &mut Reads<'_>, root: NodeId) -> Result<Option<Profile>> {
    reads
        .get(Cf::Profiles, &root.to_be_bytes())?
        .map(|b| {
            crate::codec::decode_profile(&b).map_err(|e| ResolverError::Corrupt {
                cf: Cf::Profiles.name(),
                detail: e.to_string(),
            })
        })
        .transpose()
}

/// Every live profile of `tenant`, in canonical-id order.
pub fn profiles(store: &dyn GraphStore, tenant: &str) -> Result<Vec<Profile>> {
    let mut prefix = tenant.as_bytes().to_vec();
    prefix.push(0);
    let mut txn = Txn::begin(store)?;
    let mut out = Vec::new();
    for (_, root) in store.scan_prefix(crate::store::Cf::Canon, &prefix)? {
        let root = crate::txn::decode_u64(crate::store::Cf::Canon, &root)?;
        if let Some(p) = txn.profile(root)? {
            out.push(p);
        }
    }
    Ok(out)
}

/// Number of live profiles across all tenants.
pub fn count_profiles(store: &dyn GraphStore) -> Result<u64> {
    Ok(store.scan_prefix(crate::store::Cf::Canon, b"")?.len() as u64)
}

/// The point reads of one lookup, stamped when it is watched.
struct Reads<'s> {
    store: &'s dyn GraphStore,
    changes: Option<&'s Changes>,
    stamps: Stamps,
}

impl<'s> Reads<'s> {
    fn unwatched(store: &'s dyn GraphStore) -> Self {
        Self {
            store,
            changes: None,
            stamps: Stamps::default(),
        }
    }

    fn watched(store: &'s dyn GraphStore, changes: &'s Changes) -> Self {
        Self {
            store,
            changes: Some(changes),
            stamps: Stamps::default(),
        }
    }

    /// A retry reads everything again: only the last attempt's reads make the answer.
    fn restart(&mut self) {
        self.stamps.taken.clear();
    }

    fn get(&mut self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(changes) = self.changes {
            // Taken before the read: a write the read misses is counted after this.
            let stamp = changes.stamp(cf, key);
            // Odd: a write to the slot is under way; what the read finds may be gone soon.
            self.stamps.complete &= stamp.count % 2 == 0;
            self.stamps.taken.push(stamp);
        }
        self.store.get(cf, key)
    }

    fn u64(&mut self, cf: Cf, key: &[u8]) -> Result<Option<u64>> {
        self.get(cf, key)?.map(|b| decode_u64(cf, &b)).transpose()
    }
}

/// Counts of writes to the keys lookups read, one counter per slot of a fixed table that keys
/// hash into (keys that share a slot share a count: a write to one makes lookups that read the
/// other look changed too, which costs a read, never a wrong answer). A counter is odd while a
/// write to its slot is under way. Counters never go back, so a count that is still what it
/// was means no write in between.
pub struct Changes {
    counters: Box<[AtomicU64]>,
    hasher: RandomState,
    /// Held across a counted write, so that writes' counts never interleave (odd and even
    /// must alternate per write).
    writing: Mutex<()>,
}

/// Bytes a slot of [`Changes`] takes.
pub const CHANGE_SLOT_BYTES: usize = std::mem::size_of::<AtomicU64>();

impl Changes {
    /// A table of at least `slots` counters (a power of two).
    pub fn new(slots: usize) -> Self {
        let slots = slots.max(1).next_power_of_two();
        Self {
            counters: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            hasher: RandomState::new(),
            writing: Mutex::new(()),
        }
    }

    fn slot(&self, cf: Cf, key: &[u8]) -> usize {
        let mut h = self.hasher.build_hasher();
        h.write_u8(cf as u8);
        h.write(key);
        // The table's length is a power of two.
        (h.finish() as usize) & (self.counters.len() - 1)
    }

    fn stamp(&self, cf: Cf, key: &[u8]) -> Stamp {
        let slot = self.slot(cf, key);
        Stamp {
            slot: slot as u32,
            count: self.counters[slot].load(Ordering::Acquire),
        }
    }

    /// The slots of the keys of `ops` that lookups read, each once.
    fn slots_of(&self, ops: &[Op]) -> Vec<usize> {
        let mut slots: Vec<usize> = ops
            .iter()
            .filter(|(cf, _, _)| READ.contains(cf))
            .map(|(cf, key, _)| self.slot(*cf, key))
            .collect();
        slots.sort_unstable();
        slots.dedup();
        slots
    }

    /// Runs `write`, counting it in `slots` before (odd) and after (even).
    fn counted<T>(&self, slots: &[usize], write: impl FnOnce() -> T) -> T {
        let _one_at_a_time = self
            .writing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for &slot in slots {
            self.counters[slot].fetch_add(1, Ordering::SeqCst);
        }
        let written = write();
        // Counted after a failed write too: its outcome is unknown.
        for &slot in slots {
            // Release: whoever sees the new count also sees the write it counts.
            self.counters[slot].fetch_add(1, Ordering::Release);
        }
        written
    }

    /// Whether no key stamped in `stamps` has been written since (false for incomplete stamps:
    /// a retired id followed, or a read that overlapped a write).
    pub fn unchanged(&self, stamps: &Stamps) -> bool {
        stamps.complete
            && stamps.taken.iter().all(|s| {
                self.counters
                    .get(s.slot as usize)
                    .is_some_and(|c| c.load(Ordering::Acquire) == s.count)
            })
    }
}

/// The count of a key's slot when a lookup read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    slot: u32,
    count: u64,
}

/// The stamps of every key a lookup read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamps {
    taken: Vec<Stamp>,
    /// False when part of the lookup read without stamps (a retired canonical id) or while a
    /// write to a key it read was under way.
    complete: bool,
}

impl Default for Stamps {
    fn default() -> Self {
        Self {
            taken: Vec::with_capacity(4),
            complete: true,
        }
    }
}

impl Stamps {
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Bytes these stamps take, for a cache that bounds its memory.
    pub fn size_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.taken.capacity() * std::mem::size_of::<Stamp>()
    }
}

/// A store whose writes are counted in [`Changes`] once they are committed. The resolver
/// writes through it where a cache of lookups reads the same store.
pub struct WatchedStore {
    inner: Arc<dyn GraphStore>,
    changes: Arc<Changes>,
}

impl WatchedStore {
    pub fn new(inner: Arc<dyn GraphStore>, changes: Arc<Changes>) -> Self {
        Self { inner, changes }
    }

    pub fn changes(&self) -> &Arc<Changes> {
        &self.changes
    }
}

impl GraphStore for WatchedStore {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get(cf, key)
    }

    fn write(&self, ops: Vec<Op>) -> Result<()> {
        let slots = self.changes.slots_of(&ops);
        self.changes.counted(&slots, || self.inner.write(ops))
    }

    fn scan_prefix(&self, cf: Cf, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner.scan_prefix(cf, prefix)
    }

    fn scan_from(&self, cf: Cf, from: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner.scan_from(cf, from)
    }

    fn for_each_prefix(&self, cf: Cf, prefix: &[u8], f: &mut Visit<'_>) -> Result<()> {
        self.inner.for_each_prefix(cf, prefix, f)
    }

    fn holds_any(&self, cf: Cf) -> Result<bool> {
        self.inner.holds_any(cf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::encode_profile;
    use crate::store::MemStore;
    use cdp_proto::IdentifierKind;

    const TENANT: &str = "acme";

    fn email(n: u32) -> Identifier {
        Identifier::new(IdentifierKind::EmailSha256, format!("{n:064x}"))
    }

    fn profile(root: NodeId, version: u64, ids: Vec<Identifier>) -> Profile {
        Profile {
            version,
            ..Profile::new(TENANT, format!("cdp_{root}"), ids, chrono::Utc::now())
        }
    }

    fn put_profile(p: &Profile, root: NodeId) -> Op {
        (
            Cf::Profiles,
            root.to_be_bytes().to_vec(),
            Some(encode_profile(p)),
        )
    }

    /// Node 1 holds email 1, node 2 email 2, each its own root with a profile.
    fn two_people() -> WatchedStore {
        let inner: Arc<dyn GraphStore> = Arc::new(MemStore::default());
        let store = WatchedStore::new(inner, Arc::new(Changes::new(1 << 12)));
        let mut ops = Vec::new();
        for n in [1u64, 2] {
            let id = email(n as u32);
            ops.push((Cf::Ids, id_key(TENANT, &id), Some(n.to_be_bytes().to_vec())));
            let canon = tenant_key(TENANT, &format!("cdp_{n}"));
            ops.push((Cf::Canon, canon, Some(n.to_be_bytes().to_vec())));
            ops.push(put_profile(&profile(n, 1, vec![id]), n));
        }
        store.write(ops).unwrap();
        store
    }

    fn look(store: &WatchedStore, n: u32) -> (Option<Profile>, Stamps) {
        watched::profile_by_identifier(store, store.changes(), TENANT, &email(n)).unwrap()
    }

    #[test]
    fn a_watched_lookup_answers_as_a_plain_one() {
        let store = two_people();
        let (p, stamps) = look(&store, 1);
        assert_eq!(p, profile_by_identifier(&store, TENANT, &email(1)).unwrap());
        assert_eq!(p.unwrap().canonical_id, "cdp_1");
        // The identifier, the root's (absent) parent and the profile.
        assert_eq!(stamps.taken.len(), 3);
        assert!(store.changes().unchanged(&stamps));
    }

    #[test]
    fn writes_to_what_a_lookup_did_not_read_leave_it_unchanged() {
        let store = two_people();
        let (_, stamps) = look(&store, 1);
        store
            .write(vec![(Cf::Links, b"link".to_vec(), Some(b"x".to_vec()))])
            .unwrap();
        // A slot of its own (a table of 4,096 slots, three keys stamped): the test reads
        // person 1 and rewrites person 2 unless their slots collide, which it checks first.
        let other = store.changes().slot(Cf::Profiles, &2u64.to_be_bytes());
        if stamps.taken.iter().all(|s| s.slot as usize != other) {
            let p2 = profile(2, 2, vec![email(2)]);
            store.write(vec![put_profile(&p2, 2)]).unwrap();
        }
        assert!(store.changes().unchanged(&stamps));
    }

    #[test]
    fn a_merge_changes_the_lookups_of_both_people() {
        let store = two_people();
        let (_, one) = look(&store, 1);
        let (_, two) = look(&store, 2);
        // Person 2 merges into person 1: node 2 gets a parent, its profile goes, 1's grows.
        let merged = profile(1, 2, vec![email(1), email(2)]);
        store
            .write(vec![
                (
                    Cf::Parent,
                    2u64.to_be_bytes().to_vec(),
                    Some(1u64.to_be_bytes().to_vec()),
                ),
                (Cf::Profiles, 2u64.to_be_bytes().to_vec(), None),
                put_profile(&merged, 1),
            ])
            .unwrap();
        assert!(!store.changes().unchanged(&one));
        assert!(!store.changes().unchanged(&two));
        let (p, stamps) = look(&store, 2);
        assert_eq!(p, Some(merged));
        // The identifier, node 2's parent, node 1's (absent) parent and the profile.
        assert_eq!(stamps.taken.len(), 4);
        assert!(store.changes().unchanged(&stamps));
    }

    #[test]
    fn a_lookup_that_overlaps_a_write_to_what_it_reads_is_never_unchanged() {
        let store = two_people();
        let ops = vec![put_profile(&profile(1, 2, vec![email(1)]), 1)];
        let slots = store.changes().slots_of(&ops);
        // Between the counts before and after the write, as a listener thread would be.
        let (p, stamps) = store.changes().counted(&slots, || look(&store, 1));
        assert_eq!(p.map(|p| p.version), Some(1));
        assert!(!stamps.is_complete());
        assert!(!store.changes().unchanged(&stamps));
        let (_, after) = look(&store, 1);
        assert!(store.changes().unchanged(&after));
    }

    #[test]
    fn forgetting_a_person_changes_their_lookup() {
        let store = two_people();
        let (_, stamps) = look(&store, 1);
        store
            .write(vec![
                (Cf::Ids, id_key(TENANT, &email(1)), None),
                (Cf::Profiles, 1u64.to_be_bytes().to_vec(), None),
            ])
            .unwrap();
        assert!(!store.changes().unchanged(&stamps));
        assert_eq!(look(&store, 1).0, None);
    }

    #[test]
    fn a_retired_canonical_id_is_never_reported_unchanged() {
        let store = two_people();
        let by_id =
            |id: &str| watched::profile_by_canonical(&store, store.changes(), TENANT, id).unwrap();
        let (p, stamps) = by_id("cdp_2");
        assert_eq!(p.map(|p| p.canonical_id), Some("cdp_2".into()));
        assert!(stamps.is_complete() && store.changes().unchanged(&stamps));
        let (p, stamps) = by_id("cdp_9");
        assert_eq!(p, None);
        assert!(!stamps.is_complete());
        assert!(!store.changes().unchanged(&stamps));
    }

    /// The stage's own writes, through the watched store: each merge, unmerge and forget it
    /// commits changes the lookups of the people it touches.
    #[test]
    fn the_stage_s_merges_unmerges_and_forgets_change_the_lookups_they_touch() {
        use crate::command::{CommandOp, GraphCommand, Target, UnmergePart};
        use crate::stage::apply_records;
        use crate::{Resolver, ResolverConfig};
        use cdp_bus::Record;
        use cdp_proto::time::from_millis;
        use cdp_proto::{IdentityLink, Signal, Source};

        let config = ResolverConfig::default();
        let resolver = Resolver::new(config.policy.clone());
        let store = WatchedStore::new(
            Arc::new(MemStore::default()),
            Arc::new(Changes::new(1 << 16)),
        );
        let mut offset = 0;
        let mut record = |topic: &str, value: Vec<u8>| {
            offset += 1;
            Record {
                topic: topic.into(),
                partition: 0,
                offset,
                timestamp_ms: 0,
                key: Some(TENANT.as_bytes().to_vec()),
                value: Some(value),
                headers: vec![],
            }
        };
        let mut signal = |n: i64, a: Identifier, b: Identifier, rule: &str, confidence: f64| {
            let s = Signal {
                tenant: TENANT.into(),
                source: Source::Web,
                event_id: format!("e{n}"),
                event_time: from_millis(1_700_000_000_000 + n * 1000),
                received_at: from_millis(1_700_000_000_000 + n * 1000),
                identifiers: vec![a.clone(), b.clone()],
                links: vec![IdentityLink {
                    a,
                    b,
                    rule: rule.into(),
                    confidence,
                }],
                event: None,
                traits: Default::default(),
                consent: Default::default(),
            };
            let r = record(&config.signals_topic, serde_json::to_vec(&s).unwrap());
            apply_records(&resolver, &store, &config, &[r]).unwrap();
        };
        let user = Identifier::new(IdentifierKind::UserId, "u1");
        let cookie = |v: &str| Identifier::new(IdentifierKind::CookieId, v);
        let mail = email(7);
        signal(1, user.clone(), cookie("c1"), "deterministic_login", 1.0);
        signal(2, mail.clone(), cookie("c2"), "deterministic_login", 1.0);
        let (p, by_user) =
            watched::profile_by_identifier(&store, store.changes(), TENANT, &user).unwrap();
        let owner = p.unwrap().canonical_id;
        let (p, by_mail) =
            watched::profile_by_identifier(&store, store.changes(), TENANT, &mail).unwrap();
        assert_ne!(p.unwrap().canonical_id, owner);
        assert!(store.changes().unchanged(&by_user) && store.changes().unchanged(&by_mail));

        // Merge: the cookie of one meets the e-mail of the other.
        signal(3, cookie("c1"), mail.clone(), "deterministic_login", 1.0);
        assert!(!store.changes().unchanged(&by_user));
        assert!(!store.changes().unchanged(&by_mail));
        let (p, by_mail) =
            watched::profile_by_identifier(&store, store.changes(), TENANT, &mail).unwrap();
        assert_eq!(p.unwrap().canonical_id, owner);

        let mut command = |n: u32, op: CommandOp| {
            let c = GraphCommand {
                id: format!("cmd-{n}"),
                tenant: TENANT.into(),
                requested_at: from_millis(1_800_000_000_000 + i64::from(n)),
                op,
            };
            let r = record(&config.commands_topic, serde_json::to_vec(&c).unwrap());
            apply_records(&resolver, &store, &config, &[r]).unwrap();
        };
        // Unmerge: the e-mail leaves the profile again.
        let (_, by_user) =
            watched::profile_by_identifier(&store, store.changes(), TENANT, &user).unwrap();
        command(
            1,
            CommandOp::Unmerge {
                canonical_id: owner.clone(),
                part: UnmergePart::Identifier(mail.clone()),
            },
        );
        assert!(!store.changes().unchanged(&by_mail));
        assert!(!store.changes().unchanged(&by_user));
        let (p, _) =
            watched::profile_by_identifier(&store, store.changes(), TENANT, &mail).unwrap();
        assert_ne!(p.map(|p| p.canonical_id), Some(owner.clone()));

        // Forget: the person is gone, and so is what a lookup of them read.
        let (p, by_user) =
            watched::profile_by_identifier(&store, store.changes(), TENANT, &user).unwrap();
        assert!(p.is_some());
        command(
            2,
            CommandOp::Forget {
                target: Target::Identifier(user.clone()),
            },
        );
        assert!(!store.changes().unchanged(&by_user));
        let (p, _) =
            watched::profile_by_identifier(&store, store.changes(), TENANT, &user).unwrap();
        assert_eq!(p, None);
    }
}
