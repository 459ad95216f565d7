//! Shared builders for activation tests: profiles, input records, and reading what a batch queued.
#![allow(dead_code)]

use cdp_activation::destination::DestinationEvent;
use cdp_activation::membership::MembershipStore;
use cdp_bus::{OutRecord, Record};
use cdp_proto::time::from_millis;
use cdp_proto::{
    Identifier, IdentifierKind, IdentityChange, IdentityChangeKind, Profile, ProfileUpdate,
    Timestamp,
};

pub const DAY_MS: i64 = 86_400_000;
/// A fixed "now" for tests: day 20,000 since the epoch, 10:00 UTC.
pub const T0_MS: i64 = 20_000 * DAY_MS + 36_000_000;

pub fn t0() -> Timestamp {
    from_millis(T0_MS)
}

pub fn profile(id: &str, stage: &str, ad_consent: Option<bool>) -> Profile {
    let identifiers = vec![
        Identifier::new(IdentifierKind::EmailSha256, format!("{:0>64}", id.len())),
        Identifier::new(IdentifierKind::CrmId, format!("crm-{id}")),
        Identifier::new(IdentifierKind::CookieId, format!("cookie-{id}")),
    ];
    let mut p = Profile {
        version: 1,
        ..Profile::new("acme", id, identifiers, t0())
    };
    p.attributes.lifecycle_stage = Some(stage.into());
    if let Some(granted) = ad_consent {
        p.consent.0.insert("ad_personalization".into(), granted);
    }
    p
}

/// Input records with increasing offsets on one partition per topic.
#[derive(Default)]
pub struct Input {
    offsets: std::collections::BTreeMap<String, i64>,
}

impl Input {
    fn record(&mut self, topic: &str, key: &str, value: Vec<u8>) -> Record {
        let offset = self.offsets.entry(topic.to_string()).or_insert(0);
        *offset += 1;
        Record {
            topic: topic.into(),
            partition: 0,
            offset: *offset - 1,
            timestamp_ms: 0,
            key: Some(key.as_bytes().to_vec()),
            value: Some(value),
            headers: vec![],
        }
    }

    pub fn update(&mut self, p: &Profile, version: u64) -> Record {
        let mut p = p.clone();
        p.version = version;
        let u = ProfileUpdate {
            version,
            profile: p.clone(),
            cause: None,
            received_at: None,
        };
        self.record(
            cdp_proto::topics::PROFILES,
            &p.canonical_id,
            serde_json::to_vec(&u).unwrap(),
        )
    }

    pub fn change(
        &mut self,
        kind: IdentityChangeKind,
        id: &str,
        retired: &[&str],
        version: u64,
    ) -> Record {
        let c = IdentityChange {
            tenant: "acme".into(),
            kind,
            canonical_id: id.into(),
            retired: retired.iter().map(|s| s.to_string()).collect(),
            created: vec![],
            rule: None,
            confidence: None,
            version,
            at: t0(),
        };
        self.record(
            cdp_proto::topics::IDENTITY_CHANGES,
            id,
            serde_json::to_vec(&c).unwrap(),
        )
    }
}

/// Records the outbox holds (and empties it), in order.
pub fn take_outbox(store: &MembershipStore) -> Vec<OutRecord> {
    let pending = store.outbox().unwrap();
    let keys = pending.iter().map(|(k, _)| k.clone()).collect();
    let records = pending
        .into_iter()
        .flat_map(|(_, b)| {
            let (record, then) = cdp_activation::outbox::records(&b).unwrap();
            std::iter::once(record).chain(then)
        })
        .collect();
    store.delete_outbox(keys).unwrap();
    records
}

/// Destination events among `records` written to `topic`.
pub fn events_on(records: &[OutRecord], topic: &str) -> Vec<DestinationEvent> {
    records
        .iter()
        .filter(|r| r.topic == topic)
        .map(|r| serde_json::from_slice(r.value.as_deref().unwrap()).unwrap())
        .collect()
}

/// (type, audience, canonical id, version) of events, for compact assertions.
pub fn summary(events: &[DestinationEvent]) -> Vec<(String, String, String, u64)> {
    events
        .iter()
        .map(|e| {
            (
                e.event.clone(),
                e.audience_key.clone(),
                e.canonical_id.clone(),
                e.version,
            )
        })
        .collect()
}
