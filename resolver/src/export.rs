//! Whole-state reads for exports (`cdp snapshot`): a read-only, point-in-time view of the
//! resolver's RocksDB that streams every live profile and every link without collecting them,
//! so a snapshot of millions of profiles runs in bounded memory while the resolver keeps
//! writing. The view also implements [`GraphStore`] (reads only), so the [`crate::lookup`]
//! functions answer questions about the same instant.

use crate::link::Link;
use crate::store::{Cf, GraphStore, Op};
use crate::{ResolverError, Result};
use cdp_proto::Profile;
use rocksdb::{IteratorMode, Options, DB};
use std::path::Path;

/// The resolver's state as of [`ExportView::open`]: a read-only open sees the last committed
/// batch (WAL included) and nothing written after it, and every batch is one atomic write, so
/// all column families agree with each other.
pub struct ExportView {
    db: DB,
}

impl ExportView {
    /// Opens the state in `dir` read-only; a resolver running on it is not disturbed.
    pub fn open(dir: &Path) -> Result<Self> {
        let existing = DB::list_cf(&Options::default(), dir).map_err(storage)?;
        for needed in [Cf::Profiles, Cf::Links] {
            if !existing.iter().any(|e| e == needed.name()) {
                return Err(ResolverError::Storage(format!(
                    "{} holds no resolver state (column family {} is missing)",
                    dir.display(),
                    needed.name()
                )));
            }
        }
        Ok(Self {
            db: crate::store::open_existing_read_only(dir, &existing)?,
        })
    }

    /// Every live profile (one per union-find root), in root-node order.
    pub fn profiles(&self) -> impl Iterator<Item = Result<Profile>> + '_ {
        self.values(Cf::Profiles).map(|item| {
            item.and_then(|v| {
                crate::codec::decode_profile(&v).map_err(|e| ResolverError::Corrupt {
                    cf: Cf::Profiles.name(),
                    detail: e.to_string(),
                })
            })
        })
    }

    /// Every link of the log (accepted, refused, candidate, removed), in link-id order.
    pub fn links(&self) -> impl Iterator<Item = Result<Link>> + '_ {
        self.values(Cf::Links)
            .map(|item| item.and_then(|v| crate::txn::decode_link(&v)))
    }

    fn values(&self, cf: Cf) -> impl Iterator<Item = Result<Box<[u8]>>> + '_ {
        let handle = self
            .db
            .cf_handle(cf.name())
            .expect("open() checked that the column family exists");
        self.db
            .iterator_cf(handle, IteratorMode::Start)
            .map(|item| item.map(|(_, v)| v).map_err(storage))
    }
}

impl GraphStore for ExportView {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.db.cf_handle(cf.name()) {
            Some(handle) => self.db.get_cf(handle, key).map_err(storage),
            None => Ok(None),
        }
    }

    fn write(&self, _ops: Vec<Op>) -> Result<()> {
        Err(ResolverError::Storage(
            "an export view is read-only".to_string(),
        ))
    }

    fn scan_prefix(&self, cf: Cf, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let Some(handle) = self.db.cf_handle(cf.name()) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mode = IteratorMode::From(prefix, rocksdb::Direction::Forward);
        for item in self.db.iterator_cf(handle, mode) {
            let (k, v) = item.map_err(storage)?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }
}

fn storage(e: rocksdb::Error) -> ResolverError {
    ResolverError::Storage(e.into_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Batch;
    use crate::policy::PolicyConfig;
    use crate::txn::Txn;
    use crate::{Resolver, RocksStore};
    use cdp_proto::{Identifier, IdentifierKind, IdentityLink, Signal, Source};

    fn signal(id: &str, ids: Vec<Identifier>, links: Vec<IdentityLink>) -> Signal {
        let at = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        Signal {
            tenant: "t".into(),
            source: Source::Web,
            event_id: id.into(),
            event_time: at,
            received_at: at,
            identifiers: ids,
            links,
            event: None,
            traits: Default::default(),
            consent: Default::default(),
        }
    }

    #[test]
    fn streams_the_state_a_read_only_open_sees() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path()).unwrap();
        let resolver = Resolver::new(PolicyConfig::default());
        let user = Identifier::new(IdentifierKind::UserId, "u1");
        let cookie = Identifier::new(IdentifierKind::CookieId, "c1");
        let other = Identifier::new(IdentifierKind::CookieId, "c2");
        let mut txn = Txn::begin(&store).unwrap();
        let mut batch = Batch::default();
        let login = IdentityLink {
            a: user.clone(),
            b: cookie.clone(),
            rule: "deterministic_login".into(),
            confidence: 1.0,
        };
        // Two profiles that exist before the login joins them: a merge, not growth.
        for s in [
            signal("e1", vec![cookie.clone()], vec![]),
            signal("e2", vec![user.clone()], vec![]),
            signal("e3", vec![user.clone(), cookie.clone()], vec![login]),
            signal("e4", vec![other.clone()], vec![]),
        ] {
            resolver.apply(&mut txn, s, &mut batch).unwrap();
        }
        resolver.finish(&mut txn, batch).unwrap();
        txn.commit().unwrap();

        // Read while the writer still holds the database, as `cdp snapshot` does.
        let view = ExportView::open(dir.path()).unwrap();
        let profiles: Vec<Profile> = view.profiles().collect::<Result<_>>().unwrap();
        assert_eq!(profiles.len(), 2);
        let merged = profiles.iter().find(|p| p.identifiers.len() == 2).unwrap();
        assert_eq!(merged.merge_history.len(), 1);
        let links: Vec<Link> = view.links().collect::<Result<_>>().unwrap();
        assert_eq!(links.len(), 1);
        assert_eq!(
            crate::lookup::canonical_of(&view, "t", &user).unwrap(),
            Some(merged.canonical_id.clone())
        );
        assert!(view.write(Vec::new()).is_err());
    }

    #[test]
    fn a_directory_without_resolver_state_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ExportView::open(dir.path()).is_err());
    }
}
