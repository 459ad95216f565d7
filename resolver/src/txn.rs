//! A transaction over the graph store: reads go through a typed cache, writes stay in memory,
//! and `commit` turns everything (graph, link log, outbox, input offsets) into one atomic write.
//! Begun with a [`StateCache`], it starts from the state earlier transactions committed and
//! hands its own back once committed.

use crate::link::Link;
use crate::matching::blocking::Block;
use crate::matching::field::Record;
use crate::overlay::{ByBytes, Overlay};
use crate::state_cache::{Held, StateCache};
use crate::store::{Cf, GraphStore, Op};
use crate::{ResolverError, Result};
use cdp_proto::{Identifier, Profile};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

pub type NodeId = u64;

/// What a node stands for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub tenant: String,
    pub identifier: Identifier,
}

pub struct Txn<'s> {
    store: &'s dyn GraphStore,
    ids: Overlay<Vec<u8>, NodeId, ByBytes>,
    nodes: Overlay<NodeId, NodeRecord>,
    parent: Overlay<NodeId, NodeId>,
    profiles: Overlay<NodeId, Profile>,
    canon: Overlay<Vec<u8>, NodeId, ByBytes>,
    aliases: Overlay<Vec<u8>, String, ByBytes>,
    links: Overlay<u64, Link>,
    pairs: Overlay<Vec<u8>, u64, ByBytes>,
    hubs: Overlay<NodeId, crate::hub::Reaches>,
    blocks: Overlay<Vec<u8>, Block, ByBytes>,
    match_records: Overlay<NodeId, Record>,
    extra: Vec<Op>,
    next_node: NodeId,
    /// The first node minted in this transaction (`next_node` when it began).
    first_new_node: NodeId,
    next_link: u64,
    next_outbox: u64,
    /// Whether the tombstones column family holds anything (`None`: not looked yet); carried
    /// by the cache, so a stream of new identifiers reads no tombstone while none exists.
    tombstones: Option<bool>,
    /// Where the state goes back to after commit (empty meanwhile).
    cache: Option<&'s mut StateCache>,
}

const META_NEXT_NODE: &[u8] = b"next_node";
const META_NEXT_LINK: &[u8] = b"next_link";
const META_NEXT_OUTBOX: &[u8] = b"next_outbox";

impl<'s> Txn<'s> {
    /// A transaction that reads everything from the store.
    pub fn begin(store: &'s dyn GraphStore) -> Result<Self> {
        Self::open(store, None)
    }

    /// A transaction that reads what `cache` carries before the store, and gives the cache
    /// its state back on a successful commit only (a failed or dropped one leaves it empty).
    pub fn begin_cached(store: &'s dyn GraphStore, cache: &'s mut StateCache) -> Result<Self> {
        Self::open(store, Some(cache))
    }

    fn open(store: &'s dyn GraphStore, mut cache: Option<&'s mut StateCache>) -> Result<Self> {
        let held = cache.as_deref_mut().map(StateCache::take);
        let counter = |key: &[u8]| stored_counter(store, key);
        let counters = match held.as_ref().and_then(|h| h.counters) {
            Some(c) => c,
            None => [
                counter(META_NEXT_NODE)?,
                counter(META_NEXT_LINK)?,
                counter(META_NEXT_OUTBOX)?,
            ],
        };
        // Without a cache: empty carried state that keeps nothing, so every read goes to the store.
        let h = held.unwrap_or_else(|| Held::new(0));
        // Node 0 is never used, so a zero in a key is never a real node.
        let next_node = counters[0].max(1);
        let next_link = counters[1].max(1);
        Ok(Self {
            store,
            ids: Overlay::carrying(Cf::Ids, h.ids),
            nodes: Overlay::carrying(Cf::Nodes, h.nodes).minting_from(next_node),
            parent: Overlay::carrying(Cf::Parent, h.parent).minting_from(next_node),
            profiles: Overlay::carrying(Cf::Profiles, h.profiles).minting_from(next_node),
            canon: Overlay::carrying(Cf::Canon, h.canon),
            aliases: Overlay::carrying(Cf::Aliases, h.aliases),
            links: Overlay::carrying(Cf::Links, h.links).minting_from(next_link),
            pairs: Overlay::carrying(Cf::Pairs, h.pairs),
            hubs: Overlay::carrying(Cf::Hubs, h.hubs).minting_from(next_node),
            blocks: Overlay::carrying(Cf::Blocks, h.blocks),
            match_records: Overlay::carrying(Cf::MatchRecords, h.match_records)
                .minting_from(next_node),
            extra: Vec::new(),
            next_node,
            first_new_node: next_node,
            next_link,
            next_outbox: counters[2],
            tombstones: h.tombstones,
            cache,
        })
    }

    pub fn node_of(&mut self, tenant: &str, id: &Identifier) -> Result<Option<NodeId>> {
        self.ids
            .get(self.store, id_key(tenant, id), |b| decode_u64(Cf::Ids, b))
            .map(Option::<&NodeId>::copied)
    }

    /// Creates a node for `id` (which must not have one yet).
    pub fn create_node(&mut self, tenant: &str, id: &Identifier) -> NodeId {
        let node = self.next_node;
        self.next_node += 1;
        self.ids.put(id_key(tenant, id), Some(node));
        self.nodes.put_new(
            node,
            NodeRecord {
                tenant: tenant.to_string(),
                identifier: id.clone(),
            },
        );
        node
    }

    /// Founds the profile of a node created in this transaction under its new canonical id.
    /// Neither key holds anything in the store, so if a merge retires the profile before
    /// commit (the usual fate of a new identifier's profile), nothing is written for it.
    pub fn found_profile(&mut self, node: NodeId, profile: Profile) {
        let canon = tenant_key(&profile.tenant, &profile.canonical_id);
        self.canon.put_new(canon, node);
        self.profiles.put_new(node, profile);
    }

    pub fn node(&mut self, node: NodeId) -> Result<Option<NodeRecord>> {
        self.nodes
            .get(self.store, node, decode_node)
            .map(Option::<&NodeRecord>::cloned)
    }

    pub fn parent(&mut self, node: NodeId) -> Result<Option<NodeId>> {
        self.parent
            .get(self.store, node, |b| decode_u64(Cf::Parent, b))
            .map(Option::<&NodeId>::copied)
    }

    pub fn set_parent(&mut self, node: NodeId, parent: Option<NodeId>) {
        self.parent.put(node, parent);
    }

    /// The root of `node`'s set, compressing the path on the way.
    pub fn find(&mut self, node: NodeId) -> Result<NodeId> {
        let mut root = node;
        let mut path = Vec::new();
        while let Some(p) = self.parent(root)? {
            path.push(root);
            root = p;
        }
        // Everything but the last hop now points straight at the root.
        for n in path.iter().rev().skip(1) {
            self.set_parent(*n, Some(root));
        }
        Ok(root)
    }

    /// A copy of the profile at `root`; [`Self::profile_ref`] and [`Self::profile_mut`] avoid it.
    pub fn profile(&mut self, root: NodeId) -> Result<Option<Profile>> {
        Ok(self.profile_ref(root)?.cloned())
    }

    pub fn profile_ref(&mut self, root: NodeId) -> Result<Option<&Profile>> {
        self.profiles.get(self.store, root, decode_profile)
    }

    /// The profile at `root`, changed in place and written at commit.
    pub fn profile_mut(&mut self, root: NodeId) -> Result<Option<&mut Profile>> {
        self.profiles.get_mut(self.store, root, decode_profile)
    }

    /// The profiles at two roots, read together (a union compares them).
    pub fn profile_pair(
        &mut self,
        a: NodeId,
        b: NodeId,
    ) -> Result<(Option<&Profile>, Option<&Profile>)> {
        self.profile_ref(a)?;
        self.profile_ref(b)?;
        Ok((self.profiles.cached(&a), self.profiles.cached(&b)))
    }

    /// Moves the profile out of `root`, which holds none unless one is put back.
    pub fn take_profile(&mut self, root: NodeId) -> Result<Option<Profile>> {
        self.profiles.take(self.store, root, decode_profile)
    }

    pub fn put_profile(&mut self, root: NodeId, profile: Option<Profile>) {
        self.profiles.put(root, profile);
    }

    pub fn root_of_canonical(
        &mut self,
        tenant: &str,
        canonical_id: &str,
    ) -> Result<Option<NodeId>> {
        self.canon
            .get(self.store, tenant_key(tenant, canonical_id), |b| {
                decode_u64(Cf::Canon, b)
            })
            .map(Option::<&NodeId>::copied)
    }

    pub fn set_canonical(&mut self, tenant: &str, canonical_id: &str, root: Option<NodeId>) {
        self.canon.put(tenant_key(tenant, canonical_id), root);
    }

    pub fn alias(&mut self, tenant: &str, retired: &str) -> Result<Option<String>> {
        self.aliases
            .get(self.store, tenant_key(tenant, retired), |b| {
                String::from_utf8(b.to_vec()).map_err(|e| corrupt(Cf::Aliases, e))
            })
            .map(Option::<&String>::cloned)
    }

    pub fn set_alias(&mut self, tenant: &str, retired: &str, survivor: Option<String>) {
        self.aliases.put(tenant_key(tenant, retired), survivor);
    }

    /// The id of the logged link for `(a, b, rule)`, if that assertion was seen before.
    pub fn pair(&mut self, a: NodeId, b: NodeId, rule: &str) -> Result<Option<u64>> {
        // A node minted in this transaction was never in a stored pair.
        let new = a.max(b) >= self.first_new_node;
        self.pairs
            .get_unless_new(self.store, pair_key(a, b, rule), new, |b| {
                decode_u64(Cf::Pairs, b)
            })
            .map(Option::<&u64>::copied)
    }

    pub fn link(&mut self, id: u64) -> Result<Option<Link>> {
        self.links
            .get(self.store, id, decode_link)
            .map(Option::<&Link>::cloned)
    }

    /// Appends `link` (its id is assigned here) and indexes its pair and both endpoints.
    pub fn append_link(&mut self, a: NodeId, b: NodeId, mut link: Link) -> u64 {
        let id = self.next_link;
        self.next_link += 1;
        link.id = id;
        self.pairs.put(pair_key(a, b, &link.rule), Some(id));
        self.links.put(id, Some(link));
        for node in [a, b] {
            self.extra
                .push((Cf::NodeLinks, node_link_key(node, id), Some(Vec::new())));
        }
        id
    }

    /// Ids of every link touching `node`, as committed (links appended in this transaction are
    /// not included: callers that need them commit first).
    pub fn committed_links_of(&self, node: NodeId) -> Result<Vec<u64>> {
        self.store
            .scan_prefix(Cf::NodeLinks, &node.to_be_bytes())?
            .into_iter()
            .map(|(k, _)| decode_u64(Cf::NodeLinks, &k[8..]))
            .collect()
    }

    /// Erases a link from the log and its indexes (only `forget` does this: erasure wins over
    /// the log being append-only).
    pub fn erase_link(&mut self, link: &Link, a: NodeId, b: NodeId) {
        self.pairs.put(pair_key(a, b, &link.rule), None);
        self.links.put(link.id, None);
        for node in [a, b] {
            self.extra
                .push((Cf::NodeLinks, node_link_key(node, link.id), None));
        }
    }

    /// Erases a node: its identifier mapping, record and parent pointer.
    pub fn erase_node(&mut self, tenant: &str, id: &Identifier, node: NodeId) {
        self.hubs.put(node, None);
        self.ids.put(id_key(tenant, id), None);
        self.nodes.put(node, None);
        self.parent.put(node, None);
    }

    /// Whether `id` was erased by `forget` (as committed).
    pub fn is_tombstoned(&mut self, tenant: &str, id: &Identifier) -> Result<bool> {
        let any = match self.tombstones {
            Some(any) => any,
            None => *self
                .tombstones
                .insert(self.store.holds_any(Cf::Tombstones)?),
        };
        if !any {
            return Ok(false);
        }
        Ok(self
            .store
            .get(Cf::Tombstones, &crate::tombstone::key(tenant, id))?
            .is_some())
    }

    pub fn put_tombstone(
        &mut self,
        tenant: &str,
        id: &Identifier,
        tombstone: &crate::tombstone::Tombstone,
    ) {
        self.tombstones = Some(true);
        self.extra.push((
            Cf::Tombstones,
            crate::tombstone::key(tenant, id),
            Some(encode_json(tombstone)),
        ));
    }

    /// Records what a graph command did; its presence marks the command as applied.
    pub fn put_command_outcome(&mut self, outcome: &crate::command::CommandOutcome) {
        self.extra.push((
            Cf::Commands,
            outcome.command_id.as_bytes().to_vec(),
            Some(encode_json(outcome)),
        ));
    }

    pub fn update_link(&mut self, link: Link) {
        self.links.put(link.id, Some(link));
    }

    /// When the links of `node` reached other profiles (hub detection).
    pub fn hub_reaches(&mut self, node: NodeId) -> Result<crate::hub::Reaches> {
        Ok(self
            .hubs
            .get(self.store, node, |b| {
                crate::hub::Reaches::decode(b)
                    .ok_or_else(|| corrupt(Cf::Hubs, "not a list of times"))
            })?
            .cloned()
            .unwrap_or_default())
    }

    pub fn set_hub_reaches(&mut self, node: NodeId, reaches: Option<crate::hub::Reaches>) {
        self.hubs.put(node, reaches);
    }

    /// Calls `f` with the block under `key` (an empty open block if no node is filed there)
    /// to read and perhaps change; `f` says whether it changed it. An open block with no nodes
    /// left is deleted, as if the key had never been filed under.
    pub fn with_block<R>(
        &mut self,
        key: &[u8],
        f: impl FnOnce(&mut Block) -> (R, bool),
    ) -> Result<R> {
        let decode = |b: &[u8]| Block::decode(b).ok_or_else(|| corrupt(Cf::Blocks, "not a block"));
        self.blocks
            .update(self.store, key.to_vec(), decode, |slot| {
                let mut block = slot.take().unwrap_or_else(Block::empty);
                let out = f(&mut block);
                *slot = (!block.is_empty()).then_some(block);
                out
            })
    }

    /// The block under `key` as this transaction last read or changed it through
    /// [`Self::with_block`] (`None` if it did neither, or no node is filed there).
    pub fn block(&self, key: &[u8]) -> Option<&Block> {
        self.blocks.cached(key)
    }

    /// The record `node` is filed under in the blocking index with, if it is filed.
    pub fn match_record(&mut self, node: NodeId) -> Result<Option<&Record>> {
        self.match_records.get(self.store, node, |b| {
            Record::decode(b).ok_or_else(|| corrupt(Cf::MatchRecords, "not a record"))
        })
    }

    pub fn set_match_record(&mut self, node: NodeId, record: Option<Record>) {
        self.match_records.put(node, record);
    }

    /// Queues an encoded outbox entry ([`crate::outbox`]), in order. Returns its key.
    pub fn push_outbox(&mut self, encoded: Vec<u8>) -> Vec<u8> {
        let seq = self.next_outbox;
        self.next_outbox += 1;
        let key = seq.to_be_bytes().to_vec();
        self.extra.push((Cf::Outbox, key.clone(), Some(encoded)));
        key
    }

    /// Stores the next offset to apply for an input partition.
    pub fn set_offset(&mut self, topic: &str, partition: i32, next: i64) {
        self.extra.push((
            Cf::Offsets,
            offset_key(topic, partition),
            Some(next.to_be_bytes().to_vec()),
        ));
    }

    /// Everything this transaction wrote, as one atomic batch.
    pub fn commit(mut self) -> Result<()> {
        // Sized once for every op the overlays may append and the three counters: grown
        // overlay by overlay, the batch's ops were copied over and over.
        let most = self.extra.len()
            + 3
            + self.ids.keys_used()
            + self.parent.keys_used()
            + self.canon.keys_used()
            + self.pairs.keys_used()
            + self.hubs.keys_used()
            + self.blocks.keys_used()
            + self.match_records.keys_used()
            + self.nodes.keys_used()
            + self.profiles.keys_used()
            + self.links.keys_used()
            + self.aliases.keys_used();
        let mut ops = std::mem::take(&mut self.extra);
        ops.reserve_exact(most - ops.len());
        let be = |v: &u64| v.to_be_bytes().to_vec();
        self.ids.push_ops(&mut ops, be);
        self.parent.push_ops(&mut ops, be);
        self.canon.push_ops(&mut ops, be);
        self.pairs.push_ops(&mut ops, be);
        self.hubs.push_ops(&mut ops, |r| r.encode());
        self.blocks.push_ops(&mut ops, Block::encode);
        self.match_records.push_ops(&mut ops, Record::encode);
        self.nodes.push_ops(&mut ops, crate::codec::encode_node);
        self.profiles
            .push_ops(&mut ops, crate::codec::encode_profile);
        self.links.push_ops(&mut ops, crate::codec::encode_link);
        self.aliases.push_ops(&mut ops, |s| s.as_bytes().to_vec());
        let counters = [self.next_node, self.next_link, self.next_outbox];
        for (key, value) in [META_NEXT_NODE, META_NEXT_LINK, META_NEXT_OUTBOX]
            .into_iter()
            .zip(counters)
        {
            ops.push((Cf::Meta, key.to_vec(), Some(value.to_be_bytes().to_vec())));
        }
        self.store.write(ops)?;
        // Committed: what the overlays hold is now the store's state.
        if let Some(cache) = self.cache.take() {
            cache.put_back(Held {
                ids: self.ids.into_carried(),
                nodes: self.nodes.into_carried(),
                parent: self.parent.into_carried(),
                profiles: self.profiles.into_carried(),
                canon: self.canon.into_carried(),
                aliases: self.aliases.into_carried(),
                links: self.links.into_carried(),
                pairs: self.pairs.into_carried(),
                hubs: self.hubs.into_carried(),
                match_records: self.match_records.into_carried(),
                blocks: self.blocks.into_carried(),
                counters: Some(counters),
                tombstones: self.tombstones,
            });
        }
        Ok(())
    }
}

/// The sequence number the next outbox entry will take, as `store` holds it: every entry below
/// it is committed there (or already published and deleted).
pub fn stored_next_outbox(store: &dyn GraphStore) -> Result<u64> {
    stored_counter(store, META_NEXT_OUTBOX)
}

/// The `meta` counter under `key` as `store` holds it (0 before the first commit).
fn stored_counter(store: &dyn GraphStore, key: &[u8]) -> Result<u64> {
    Ok(store
        .get(Cf::Meta, key)?
        .map(|b| decode_u64(Cf::Meta, &b))
        .transpose()?
        .unwrap_or(0))
}

pub fn id_key(tenant: &str, id: &Identifier) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + id.kind.as_str().len() + id.value.len() + 2);
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(id.kind.as_str().as_bytes());
    k.push(0);
    k.extend_from_slice(id.value.as_bytes());
    k
}

pub fn tenant_key(tenant: &str, s: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + s.len() + 1);
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(s.as_bytes());
    k
}

pub fn offset_key(topic: &str, partition: i32) -> Vec<u8> {
    let mut k = topic.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

fn node_link_key(node: NodeId, link: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&node.to_be_bytes());
    k.extend_from_slice(&link.to_be_bytes());
    k
}

fn pair_key(a: NodeId, b: NodeId, rule: &str) -> Vec<u8> {
    // Unordered pair: (a, b) and (b, a) are one assertion.
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut k = Vec::with_capacity(16 + rule.len());
    k.extend_from_slice(&lo.to_be_bytes());
    k.extend_from_slice(&hi.to_be_bytes());
    k.extend_from_slice(rule.as_bytes());
    k
}

pub fn decode_u64(cf: Cf, b: &[u8]) -> Result<u64> {
    b.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| corrupt(cf, "expected 8 bytes"))
}

fn decode_profile(b: &[u8]) -> Result<Profile> {
    crate::codec::decode_profile(b).map_err(|e| corrupt(Cf::Profiles, e))
}

pub fn decode_link(b: &[u8]) -> Result<Link> {
    crate::codec::decode_link(b).map_err(|e| corrupt(Cf::Links, e))
}

pub fn decode_node(b: &[u8]) -> Result<NodeRecord> {
    crate::codec::decode_node(b).map_err(|e| corrupt(Cf::Nodes, e))
}

pub fn decode_json<T: DeserializeOwned>(cf: Cf, b: &[u8]) -> Result<T> {
    cdp_proto::json::from_bytes(b).map_err(|e| corrupt(cf, e))
}

pub fn encode_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("state types serialise to JSON")
}

fn corrupt(cf: Cf, e: impl std::fmt::Display) -> ResolverError {
    ResolverError::Corrupt {
        cf: cf.name(),
        detail: e.to_string(),
    }
}
