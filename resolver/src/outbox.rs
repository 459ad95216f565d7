//! The resolver's outbox: the records a batch must publish, committed in the same atomic write
//! as the state that produced them and published after it ([`crate::stage`]).
//!
//! Identity changes and dead letters are kept whole. A profile update is kept as a reference
//! ([`UpdateRef`]: topic, tenant, canonical id, cause, arrival time) because its body is the
//! profile as committed, which the store holds anyway: copied into the outbox, update bodies
//! were most of the bytes a batch wrote (1.8 KiB each, written once and deleted once). The stage
//! publishes the records it queued, update bodies as it rendered them, once the write holding
//! them has landed ([`OutboxCursor::stage`]), without reading them back; a reference still in
//! the outbox after a restart is rendered from the store's current profile,
//! at that version or a newer one, which consumers keeping the newest version treat alike.

use crate::codec::{decode_update_ref, encode_update_ref, UPDATE_REF};
use crate::store::{Cf, GraphStore};
use crate::txn::Txn;
use crate::{ResolverError, Result};
use cdp_bus::landing::Landing;
use cdp_bus::{OutRecord, Positions, Producer};
use cdp_proto::{IdentityChange, Profile, ProfileUpdate, Timestamp};
use std::collections::VecDeque;

/// A profile update named in the outbox: the profile is read when it is published.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateRef {
    pub topic: String,
    pub tenant: String,
    pub canonical_id: String,
    pub cause: Option<String>,
    pub received_at: Option<Timestamp>,
}

/// Queues `change` for `topic` in `txn`'s outbox. Returns its outbox key and the record, to
/// hand to an [`OutboxCursor`] once the transaction is committed.
pub fn push_change(txn: &mut Txn, topic: &str, change: &IdentityChange) -> (Vec<u8>, OutRecord) {
    let value = serde_json::to_vec(change).expect("IdentityChange serialises");
    let record = OutRecord::new(topic, change.canonical_id.as_bytes(), value);
    (txn.push_outbox(record.to_bytes()), record)
}

/// A profile update as a transaction produced it: what its outbox reference names, and the body
/// to publish, rendered from the profile as the transaction left it.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedUpdate {
    pub tenant: String,
    pub canonical_id: String,
    pub updated_at: Timestamp,
    pub cause: Option<String>,
    pub received_at: Option<Timestamp>,
    /// The [`ProfileUpdate`]'s JSON.
    pub body: Vec<u8>,
}

impl RenderedUpdate {
    /// The update of `profile`, rendered from the borrowed profile (no copy of it is made).
    pub fn of(profile: &Profile, cause: Option<String>, received_at: Option<Timestamp>) -> Self {
        Self {
            body: ProfileUpdate::json_of(profile, cause.as_deref(), received_at),
            tenant: profile.tenant.clone(),
            canonical_id: profile.canonical_id.clone(),
            updated_at: profile.updated_at,
            cause,
            received_at,
        }
    }

    /// The record it is published as on `topic`.
    pub fn into_record(self, topic: &str) -> OutRecord {
        OutRecord::new(topic, self.canonical_id.into_bytes(), self.body)
    }
}

/// Queues `update` for `topic` in `txn`'s outbox as a reference. Returns its outbox key, under
/// which a publisher that keeps the body ([`OutboxCursor::stage`]) hands it over.
pub fn push_update(txn: &mut Txn, topic: &str, update: &RenderedUpdate) -> Vec<u8> {
    push_reference(
        txn,
        &UpdateRef {
            topic: topic.to_string(),
            tenant: update.tenant.clone(),
            canonical_id: update.canonical_id.clone(),
            cause: update.cause.clone(),
            received_at: update.received_at,
        },
    )
}

/// Queues the update `reference` names, to be rendered from the store when it is published.
pub fn push_reference(txn: &mut Txn, reference: &UpdateRef) -> Vec<u8> {
    txn.push_outbox(encode_update_ref(reference))
}

/// The update `reference` names, rendered from the profile the store holds now (following a
/// retired id to its survivor); `None` when the profile is gone (forgotten: its deletion is
/// in the outbox after it).
pub fn render(store: &dyn GraphStore, reference: &UpdateRef) -> Result<Option<OutRecord>> {
    let profile =
        crate::lookup::profile_by_canonical(store, &reference.tenant, &reference.canonical_id)?;
    Ok(profile.map(|profile| {
        RenderedUpdate::of(&profile, reference.cause.clone(), reference.received_at)
            .into_record(&reference.topic)
    }))
}

/// An outbox entry as stored: a whole record, or a reference to a profile update.
enum Entry {
    Record(OutRecord),
    Update(UpdateRef),
}

fn decode(bytes: &[u8]) -> Result<Entry> {
    let corrupt = |detail: String| ResolverError::Corrupt {
        cf: "outbox",
        detail,
    };
    if bytes.first() == Some(&UPDATE_REF) {
        return decode_update_ref(bytes)
            .map(Entry::Update)
            .map_err(|e| corrupt(e.to_string()));
    }
    OutRecord::from_bytes(bytes)
        .map(Entry::Record)
        .ok_or_else(|| corrupt("undecodable record".into()))
}

/// Everything the outbox holds, in order, as it would be published now (references rendered
/// from the store).
pub fn records(store: &dyn GraphStore) -> Result<Vec<OutRecord>> {
    let mut out = Vec::new();
    for (_, bytes) in store.scan_prefix(Cf::Outbox, b"")? {
        match decode(&bytes)? {
            Entry::Record(r) => out.push(r),
            Entry::Update(u) => out.extend(render(store, &u)?),
        }
    }
    Ok(out)
}

/// Where the next [`OutboxCursor::send`] starts: the entry after the last record sent, and the
/// records of the entries committed since, which it publishes without reading them back.
///
/// Outbox keys are sequence numbers that only grow, and published records are deleted, so
/// nothing live lies below the cursor. Reading from the start instead would step over every
/// deletion RocksDB has not compacted away yet, more with each batch: at a few thousand signals
/// a second that walk was most of the resolver's CPU. A fresh cursor reads the outbox from its
/// start, so a restart publishes whatever the last run left.
///
/// A transaction's records are handed over once it is committed ([`Self::stage`]). A send
/// publishes them from memory while they follow on from the cursor, one sequence number after
/// the other, up to the outbox counter the store holds (what has landed: a write still landing
/// is published by a later send, so nothing goes out that a crash could take back). An entry
/// committed without being handed over breaks that run, and the outbox is read from the
/// cursor instead, as after a restart.
#[derive(Debug, Default)]
pub struct OutboxCursor {
    /// The sequence number of the entry after the last record sent, once a send has read the
    /// outbox (a fresh cursor does not know where the outbox starts, and reads it whole).
    next_seq: Option<u64>,
    /// Keys sent and not yet known delivered, removed from the outbox by [`Self::confirm`].
    sent: Vec<Vec<u8>>,
    /// Keys of the write left landing by [`Self::confirm_behind`], removed once a later flush
    /// has waited for it.
    landing: Landing,
    /// Records of committed entries not sent yet, by sequence number, ascending.
    staged: VecDeque<(u64, OutRecord)>,
}

/// The sequence number an outbox key holds (see [`Txn::push_outbox`]).
fn seq_of(key: &[u8]) -> Option<u64> {
    key.try_into().ok().map(u64::from_be_bytes)
}

impl OutboxCursor {
    /// Hands over the records of entries a transaction queued (`key` as [`Txn::push_outbox`]
    /// returned it), in key order, once it is committed. Entries not handed over are read from
    /// the store when published (update references rendered from it).
    pub fn stage(&mut self, entries: impl IntoIterator<Item = (Vec<u8>, OutRecord)>) {
        for (key, record) in entries {
            let seq = seq_of(&key).expect("outbox keys are sequence numbers");
            debug_assert!(self.staged.back().is_none_or(|(last, _)| *last < seq));
            self.staged.push_back((seq, record));
        }
    }

    /// Hands the producer everything in the outbox from the cursor on, in order, without
    /// waiting for delivery; `store` must hold only what has landed (a pipelined store's
    /// [`crate::pipelined::PipelinedStore::durable`]), so a record is published only once the
    /// write holding it has. Returns how many records.
    pub fn send(&mut self, store: &dyn GraphStore, producer: &mut dyn Producer) -> Result<u64> {
        // Read before the entries: every entry below it has landed, so a read finds it.
        let end = crate::txn::stored_next_outbox(store)?;
        let mut n = 0;
        if let Some(mut expected) = self.next_seq {
            while expected < end && self.staged.front().is_some_and(|(s, _)| *s == expected) {
                let (seq, record) = self.staged.pop_front().expect("checked above");
                producer.send(record)?;
                self.sent.push(seq.to_be_bytes().to_vec());
                expected = seq + 1;
                n += 1;
            }
            self.next_seq = Some(expected);
            if expected >= end {
                return Ok(n);
            }
        }
        Ok(n + self.read_and_send(store, producer, end)?)
    }

    /// Sends everything `store` holds from the cursor on, in order, taking the staged record
    /// of an entry where there is one; `end` is the outbox counter read before.
    fn read_and_send(
        &mut self,
        store: &dyn GraphStore,
        producer: &mut dyn Producer,
        end: u64,
    ) -> Result<u64> {
        let from = self
            .next_seq
            .map_or_else(Vec::new, |seq| seq.to_be_bytes().to_vec());
        let pending = store.scan_from(Cf::Outbox, &from)?;
        let mut n = 0;
        let mut last = None;
        for (key, bytes) in pending {
            let seq = seq_of(&key);
            let staged = seq.and_then(|seq| {
                let at = self.staged.binary_search_by_key(&seq, |(s, _)| *s).ok()?;
                self.staged.remove(at).map(|(_, record)| record)
            });
            let record = match staged {
                Some(r) => Some(r),
                None => match decode(&bytes)? {
                    Entry::Record(r) => Some(r),
                    Entry::Update(u) => render(store, &u)?,
                },
            };
            if let Some(record) = record {
                producer.send(record)?;
                n += 1;
            }
            last = seq.or(last);
            self.sent.push(key);
        }
        // Everything below `end` that was not read had been published and deleted.
        let next_seq = last.map_or(end, |l| end.max(l + 1));
        self.next_seq = Some(next_seq);
        // Records of entries below the cursor were published from the store.
        while self.staged.front().is_some_and(|(s, _)| *s < next_seq) {
            self.staged.pop_front();
        }
        Ok(n)
    }

    /// Waits until every record sent is delivered, then removes them from the outbox. Until
    /// then they stay, and a restart sends them again.
    pub fn confirm(&mut self, store: &dyn GraphStore, producer: &mut dyn Producer) -> Result<()> {
        self.confirm_with_positions(store, producer, None)?;
        Ok(())
    }

    /// [`Self::confirm`], storing `positions` as `group`'s with the records where the bus can
    /// (see [`Producer::flush_with_positions`]). Returns whether it did.
    pub fn confirm_with_positions(
        &mut self,
        store: &dyn GraphStore,
        producer: &mut dyn Producer,
        positions: Option<(&str, &Positions)>,
    ) -> Result<bool> {
        self.flush(store, producer, positions, false)
    }

    /// [`Self::confirm_with_positions`] without waiting for this write to land (see
    /// [`Producer::flush_behind`]): the records of the write before it are known delivered
    /// and removed from the outbox; this write's stay until the next confirm, so a crash
    /// while it lands sends them again.
    pub fn confirm_behind(
        &mut self,
        store: &dyn GraphStore,
        producer: &mut dyn Producer,
        positions: Option<(&str, &Positions)>,
    ) -> Result<bool> {
        self.flush(store, producer, positions, true)
    }

    /// Flushes, waiting for this write too or (`behind`) only for the one before, then deletes
    /// what is known delivered.
    fn flush(
        &mut self,
        store: &dyn GraphStore,
        producer: &mut dyn Producer,
        positions: Option<(&str, &Positions)>,
        behind: bool,
    ) -> Result<bool> {
        if positions.is_none() && self.sent.is_empty() && self.landing.is_empty() {
            return Ok(false);
        }
        let sent = std::mem::take(&mut self.sent);
        let (committed, delivered) = self.landing.flush(producer, positions, sent, behind)?;
        if !delivered.is_empty() {
            store.write(
                delivered
                    .into_iter()
                    .map(|k| (Cf::Outbox, k, None))
                    .collect(),
            )?;
        }
        Ok(committed)
    }
}

/// Publishes everything in the outbox from `cursor` on, in order, waits for its delivery, then
/// removes it. Returns how many records.
pub fn publish_outbox(
    store: &dyn GraphStore,
    producer: &mut dyn Producer,
    cursor: &mut OutboxCursor,
) -> Result<u64> {
    let n = cursor.send(store, producer)?;
    cursor.confirm(store, producer)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemStore, RocksStore};
    use cdp_bus::embedded::EmbeddedBus;
    use cdp_bus::{Bus, ConsumerOptions};
    use std::time::Duration;

    /// Commits records "N" for the next `seqs` of the outbox, as a transaction queues them;
    /// returns their keys and records.
    fn queue(store: &dyn GraphStore, seqs: std::ops::Range<u64>) -> Vec<(Vec<u8>, OutRecord)> {
        let mut txn = Txn::begin(store).unwrap();
        let queued = seqs
            .map(|seq| {
                let record = OutRecord::new("out", Vec::new(), seq.to_string().into_bytes());
                let key = txn.push_outbox(record.to_bytes());
                assert_eq!(key, seq.to_be_bytes(), "the next sequence numbers");
                (key, record)
            })
            .collect();
        txn.commit().unwrap();
        queued
    }

    /// What `records` say, for assertions.
    fn values(records: &[OutRecord]) -> Vec<String> {
        records
            .iter()
            .map(|r| String::from_utf8(r.value.clone().unwrap()).unwrap())
            .collect()
    }

    /// The record "N" for sequence number `seq`, as a stage would hand it over (it says so).
    fn staged(seq: u64) -> (Vec<u8>, OutRecord) {
        let value = format!("{seq} staged").into_bytes();
        (
            seq.to_be_bytes().to_vec(),
            OutRecord::new("out", Vec::new(), value),
        )
    }

    #[test]
    fn staged_records_are_published_from_memory_once_landed_and_in_order() {
        let store = MemStore::default();
        let mut cursor = OutboxCursor::default();
        let mut sent = Sent::default();
        // A fresh cursor reads the outbox: what the last run left goes out first.
        queue(&store, 0..2);
        assert_eq!(publish_outbox(&store, &mut sent, &mut cursor).unwrap(), 2);

        // Records handed over for entries the store does not hold yet (a write still landing)
        // wait; once it holds them they go out as handed over, not read back.
        cursor.stage([staged(2), staged(3)]);
        assert_eq!(cursor.send(&store, &mut sent).unwrap(), 0);
        queue(&store, 2..4);
        assert_eq!(cursor.send(&store, &mut sent).unwrap(), 2);
        cursor.confirm(&store, &mut sent).unwrap();

        // An entry committed without being handed over (4) breaks the run: the outbox is read
        // from the cursor, and the records handed over are still used where they exist.
        queue(&store, 4..7);
        cursor.stage([staged(5), staged(6)]);
        assert_eq!(publish_outbox(&store, &mut sent, &mut cursor).unwrap(), 3);
        // Then from memory again.
        queue(&store, 7..8);
        cursor.stage([staged(7)]);
        assert_eq!(publish_outbox(&store, &mut sent, &mut cursor).unwrap(), 1);

        assert_eq!(
            values(&sent.0),
            ["0", "1", "2 staged", "3 staged", "4", "5 staged", "6 staged", "7 staged"]
        );
        assert!(store.scan_prefix(Cf::Outbox, b"").unwrap().is_empty());
    }

    fn published(bus: &EmbeddedBus) -> Vec<String> {
        let mut c = bus
            .consumer(ConsumerOptions::group("check", &["out"]))
            .unwrap();
        c.poll(100, Duration::from_millis(10))
            .unwrap()
            .into_iter()
            .map(|r| String::from_utf8(r.value.unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn the_outbox_is_published_once_in_order_from_where_the_last_publish_ended() {
        let dir = tempfile::tempdir().unwrap();
        let rocks = RocksStore::open(&dir.path().join("graph")).unwrap();
        let memory = MemStore::default();
        for (name, store) in [("rocksdb", &rocks as &dyn GraphStore), ("memory", &memory)] {
            let bus_dir = tempfile::tempdir().unwrap();
            let bus = EmbeddedBus::open(bus_dir.path()).unwrap();
            bus.create_topic("out", 1).unwrap();
            let mut producer = bus.producer().unwrap();
            let mut cursor = OutboxCursor::default();

            queue(store, 0..3);
            assert_eq!(
                publish_outbox(store, producer.as_mut(), &mut cursor).unwrap(),
                3
            );
            assert_eq!(
                publish_outbox(store, producer.as_mut(), &mut cursor).unwrap(),
                0
            );
            queue(store, 3..5);
            assert_eq!(
                publish_outbox(store, producer.as_mut(), &mut cursor).unwrap(),
                2
            );
            assert!(
                store.scan_prefix(Cf::Outbox, b"").unwrap().is_empty(),
                "{name}"
            );

            // What a run queued but did not publish goes out after a restart (a fresh cursor).
            queue(store, 5..7);
            let mut restarted = OutboxCursor::default();
            assert_eq!(
                publish_outbox(store, producer.as_mut(), &mut restarted).unwrap(),
                2
            );
            assert_eq!(
                published(&bus),
                ["0", "1", "2", "3", "4", "5", "6"],
                "{name}"
            );
        }
    }

    #[test]
    fn records_flushed_behind_leave_the_outbox_once_a_later_flush_waited_for_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(&dir.path().join("graph")).unwrap();
        let bus_dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open(bus_dir.path()).unwrap();
        bus.create_topic("out", 1).unwrap();
        let mut producer = bus.producer().unwrap();
        let mut cursor = OutboxCursor::default();
        let outbox = |store: &RocksStore| store.scan_prefix(Cf::Outbox, b"").unwrap().len();

        queue(&store, 0..3);
        cursor.send(&store, producer.as_mut()).unwrap();
        cursor
            .confirm_behind(&store, producer.as_mut(), None)
            .unwrap();
        assert_eq!(outbox(&store), 3, "landing: still in the outbox");
        // The next poll's records: the write before is waited for, and its records go.
        queue(&store, 3..5);
        cursor.send(&store, producer.as_mut()).unwrap();
        cursor
            .confirm_behind(&store, producer.as_mut(), None)
            .unwrap();
        assert_eq!(outbox(&store), 2);
        // A restart now sends the landing write's records again: nothing is lost.
        let mut restarted = OutboxCursor::default();
        assert_eq!(restarted.send(&store, producer.as_mut()).unwrap(), 2);
        // A confirm that waits empties the outbox.
        cursor.confirm(&store, producer.as_mut()).unwrap();
        assert_eq!(outbox(&store), 0);
        producer.flush().unwrap();
        assert_eq!(published(&bus), ["0", "1", "2", "3", "4", "3", "4"]);
    }

    fn profile(canonical_id: &str, version: u64) -> cdp_proto::Profile {
        let at = cdp_proto::time::from_millis(1_700_000_000_000);
        let id = cdp_proto::Identifier::new(cdp_proto::IdentifierKind::UserId, canonical_id);
        let mut p = cdp_proto::Profile::new("acme", canonical_id, vec![id], at);
        p.version = version;
        p
    }

    fn update(p: &cdp_proto::Profile, cause: &str) -> RenderedUpdate {
        RenderedUpdate::of(p, Some(cause.into()), Some(p.created_at))
    }

    /// Commits `p` at node `root` with an update referring to it; returns the reference's key
    /// and the body the stage would publish.
    fn commit_update(
        store: &dyn GraphStore,
        root: u64,
        p: &cdp_proto::Profile,
    ) -> (Vec<u8>, OutRecord) {
        let mut txn = Txn::begin(store).unwrap();
        txn.set_canonical(&p.tenant, &p.canonical_id, Some(root));
        txn.put_profile(root, Some(p.clone()));
        let u = update(p, "e1");
        let key = push_update(&mut txn, "cdp.profiles", &u);
        txn.commit().unwrap();
        (key, u.into_record("cdp.profiles"))
    }

    fn versions(records: &[OutRecord]) -> Vec<(String, u64)> {
        records
            .iter()
            .map(|r| {
                let u: ProfileUpdate = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
                (u.profile.canonical_id, u.version)
            })
            .collect()
    }

    /// Collects what is sent; `flush` does nothing.
    #[derive(Default)]
    struct Sent(Vec<OutRecord>);

    impl Producer for Sent {
        fn send(&mut self, record: OutRecord) -> cdp_bus::Result<()> {
            self.0.push(record);
            Ok(())
        }
        fn flush(&mut self) -> cdp_bus::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn an_update_is_kept_as_a_reference_and_published_whole() {
        let dir = tempfile::tempdir().unwrap();
        let rocks = RocksStore::open(&dir.path().join("graph")).unwrap();
        let memory = MemStore::default();
        for (name, store) in [("rocksdb", &rocks as &dyn GraphStore), ("memory", &memory)] {
            let ann = profile("cdp_ann", 1);
            let (key, body) = commit_update(store, 1, &ann);
            let stored = store.get(Cf::Outbox, &key).unwrap().unwrap();
            assert!(
                stored.len() < 64,
                "{name}: the outbox holds a reference, not the body"
            );
            // The body is the update as the stage built it, whichever way it is published.
            assert_eq!(body, update(&ann, "e1").into_record("cdp.profiles"));
            assert_eq!(records(store).unwrap(), vec![body.clone()], "{name}");

            // The stage publishes the body it kept, not a rendering from the store.
            let mut cursor = OutboxCursor::default();
            let kept = OutRecord::new("cdp.profiles", b"cdp_ann".to_vec(), b"kept".to_vec());
            cursor.stage([(key, kept.clone())]);
            let mut sent = Sent::default();
            assert_eq!(publish_outbox(store, &mut sent, &mut cursor).unwrap(), 1);
            assert_eq!(sent.0, vec![kept], "{name}");
            assert!(records(store).unwrap().is_empty(), "{name}");
        }
    }

    #[test]
    fn after_a_restart_references_are_rendered_from_the_current_profile() {
        let store = MemStore::default();
        // Two batches updated Ann (versions 1 and 2) and one updated Ben, who was then
        // erased: nothing was published before the restart.
        commit_update(&store, 1, &profile("cdp_ann", 1));
        commit_update(&store, 1, &profile("cdp_ann", 2));
        let ben = profile("cdp_ben", 1);
        commit_update(&store, 2, &ben);
        let mut txn = Txn::begin(&store).unwrap();
        txn.set_canonical("acme", "cdp_ben", None);
        txn.put_profile(2, None);
        txn.commit().unwrap();

        let mut sent = Sent::default();
        let n = publish_outbox(&store, &mut sent, &mut OutboxCursor::default()).unwrap();
        // Ann at her current version for both references (consumers keep the newest and drop
        // the repeat); nothing for Ben, whose profile is gone.
        assert_eq!(n, 2);
        let ann = ("cdp_ann".to_string(), 2);
        assert_eq!(versions(&sent.0), vec![ann.clone(), ann]);
        assert!(store.scan_prefix(Cf::Outbox, b"").unwrap().is_empty());
    }

    #[test]
    fn a_damaged_reference_is_an_error_not_a_panic() {
        let store = MemStore::default();
        let ops = vec![(
            Cf::Outbox,
            0u64.to_be_bytes().to_vec(),
            Some(vec![UPDATE_REF, 9]),
        )];
        store.write(ops).unwrap();
        assert!(matches!(
            records(&store),
            Err(ResolverError::Corrupt { cf: "outbox", .. })
        ));
    }
}
