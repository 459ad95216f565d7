//! Membership state in RocksDB: who is in which cohort, the per-(cohort, profile) change
//! sequence, the last profile version applied, input offsets and the outbox. A batch's writes
//! are collected in a [`MembershipTxn`] and committed atomically.

use crate::{ActivationError, Result};
use cdp_proto::Timestamp;
use rocksdb::{ColumnFamilyDescriptor, Options, WriteBatch, DB};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

const CF_MEMBERS: &str = "members";
const CF_VERSIONS: &str = "versions";
const CF_OFFSETS: &str = "offsets";
const CF_OUTBOX: &str = "outbox";
const CF_META: &str = "meta";
const ALL_CFS: [&str; 5] = [CF_MEMBERS, CF_VERSIONS, CF_OFFSETS, CF_OUTBOX, CF_META];
const META_NEXT_OUTBOX: &[u8] = b"next_outbox";

/// A profile's standing in one cohort.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberState {
    pub member: bool,
    /// Version of the last change emitted for this (cohort, profile); strictly increasing.
    pub seq: u64,
    pub since: Timestamp,
}

pub struct MembershipStore {
    db: DB,
}

impl MembershipStore {
    pub fn open(dir: &Path) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let cfs = ALL_CFS.map(|n| ColumnFamilyDescriptor::new(n, opts.clone()));
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(storage)?;
        Ok(Self { db })
    }

    pub fn open_read_only(dir: &Path) -> Result<Self> {
        let db =
            DB::open_cf_for_read_only(&Options::default(), dir, ALL_CFS, false).map_err(storage)?;
        Ok(Self { db })
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("every column family is opened in open()")
    }

    fn scan(&self, cf: &str, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        let it = self.db.iterator_cf(
            self.cf(cf),
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

    pub fn offset(&self, topic: &str, partition: i32) -> Result<Option<i64>> {
        let v = self
            .db
            .get_cf(self.cf(CF_OFFSETS), offset_key(topic, partition))
            .map_err(storage)?;
        Ok(v.and_then(|b| b.as_slice().try_into().ok().map(i64::from_be_bytes)))
    }

    /// Current members of every cohort: `(tenant, canonical_id, audience_key)`.
    pub fn members(&self) -> Result<Vec<(String, String, String, MemberState)>> {
        let mut out = Vec::new();
        for (k, v) in self.scan(CF_MEMBERS, b"")? {
            let state: MemberState = decode(&v)?;
            if !state.member {
                continue;
            }
            let parts: Vec<&[u8]> = k.split(|b| *b == 0).collect();
            if let [t, c, a] = parts.as_slice() {
                let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                out.push((s(t), s(c), s(a), state));
            }
        }
        Ok(out)
    }

    /// Outbox records in order, with their keys for deletion.
    pub fn outbox(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.scan(CF_OUTBOX, b"")
    }

    pub fn delete_outbox(&self, keys: Vec<Vec<u8>>) -> Result<()> {
        let mut batch = WriteBatch::default();
        for k in keys {
            batch.delete_cf(self.cf(CF_OUTBOX), k);
        }
        self.db.write(batch).map_err(storage)
    }

    pub fn txn(&self) -> Result<MembershipTxn<'_>> {
        let next_outbox = self
            .db
            .get_cf(self.cf(CF_META), META_NEXT_OUTBOX)
            .map_err(storage)?
            .and_then(|b| b.as_slice().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0);
        Ok(MembershipTxn {
            store: self,
            members: BTreeMap::new(),
            versions: BTreeMap::new(),
            offsets: BTreeMap::new(),
            outbox: Vec::new(),
            next_outbox,
        })
    }
}

/// Writes of one batch, read-your-writes, committed atomically.
pub struct MembershipTxn<'s> {
    store: &'s MembershipStore,
    members: BTreeMap<Vec<u8>, Option<MemberState>>,
    versions: BTreeMap<Vec<u8>, u64>,
    offsets: BTreeMap<Vec<u8>, i64>,
    outbox: Vec<Vec<u8>>,
    next_outbox: u64,
}

impl MembershipTxn<'_> {
    pub fn state(
        &mut self,
        tenant: &str,
        canonical_id: &str,
        audience: &str,
    ) -> Result<Option<MemberState>> {
        let key = member_key(tenant, canonical_id, audience);
        if let Some(v) = self.members.get(&key) {
            return Ok(v.clone());
        }
        let v = self
            .store
            .db
            .get_cf(self.store.cf(CF_MEMBERS), &key)
            .map_err(storage)?
            .map(|b| decode(&b))
            .transpose()?;
        self.members.insert(key, v.clone());
        Ok(v)
    }

    pub fn set_state(
        &mut self,
        tenant: &str,
        canonical_id: &str,
        audience: &str,
        state: MemberState,
    ) {
        self.members
            .insert(member_key(tenant, canonical_id, audience), Some(state));
    }

    /// Audience keys `canonical_id` is currently a member of.
    pub fn memberships(&mut self, tenant: &str, canonical_id: &str) -> Result<Vec<String>> {
        let mut prefix = tenant.as_bytes().to_vec();
        prefix.push(0);
        prefix.extend_from_slice(canonical_id.as_bytes());
        prefix.push(0);
        let mut keys: Vec<Vec<u8>> = self
            .store
            .scan(CF_MEMBERS, &prefix)?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        keys.extend(
            self.members
                .keys()
                .filter(|k| k.starts_with(&prefix))
                .cloned(),
        );
        keys.sort();
        keys.dedup();
        let mut out = Vec::new();
        for k in keys {
            let audience = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            if self
                .state(tenant, canonical_id, &audience)?
                .is_some_and(|s| s.member)
            {
                out.push(audience);
            }
        }
        Ok(out)
    }

    pub fn version(&mut self, tenant: &str, canonical_id: &str) -> Result<u64> {
        let key = pair_key(tenant, canonical_id);
        if let Some(v) = self.versions.get(&key) {
            return Ok(*v);
        }
        let v = self
            .store
            .db
            .get_cf(self.store.cf(CF_VERSIONS), &key)
            .map_err(storage)?
            .and_then(|b| b.as_slice().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0);
        self.versions.insert(key, v);
        Ok(v)
    }

    pub fn set_version(&mut self, tenant: &str, canonical_id: &str, version: u64) {
        self.versions
            .insert(pair_key(tenant, canonical_id), version);
    }

    pub fn set_offset(&mut self, topic: &str, partition: i32, next: i64) {
        self.offsets.insert(offset_key(topic, partition), next);
    }

    pub fn push_outbox(&mut self, encoded: Vec<u8>) {
        self.outbox.push(encoded);
    }

    pub fn commit(self) -> Result<()> {
        let s = self.store;
        let mut batch = WriteBatch::default();
        for (k, v) in self.members {
            if let Some(v) = v {
                batch.put_cf(
                    s.cf(CF_MEMBERS),
                    k,
                    serde_json::to_vec(&v).expect("MemberState serialises"),
                );
            }
        }
        for (k, v) in self.versions {
            batch.put_cf(s.cf(CF_VERSIONS), k, v.to_be_bytes());
        }
        for (k, v) in self.offsets {
            batch.put_cf(s.cf(CF_OFFSETS), k, v.to_be_bytes());
        }
        let mut seq = self.next_outbox;
        for record in self.outbox {
            batch.put_cf(s.cf(CF_OUTBOX), seq.to_be_bytes(), record);
            seq += 1;
        }
        batch.put_cf(s.cf(CF_META), META_NEXT_OUTBOX, seq.to_be_bytes());
        s.db.write(batch).map_err(storage)
    }
}

fn member_key(tenant: &str, canonical_id: &str, audience: &str) -> Vec<u8> {
    let mut k = pair_key(tenant, canonical_id);
    k.push(0);
    k.extend_from_slice(audience.as_bytes());
    k
}

fn pair_key(tenant: &str, canonical_id: &str) -> Vec<u8> {
    let mut k = tenant.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(canonical_id.as_bytes());
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
