//! Decoding a `ProfileUpdate` from `cdp.profiles` as activation needs it: the fields that
//! cohorts, destinations and timers read, into a [`ProfileUpdate`] whose other fields are left
//! empty. The topic's format is unchanged (other consumers read the whole profile); activation
//! skips the merge history, aliases, trait and counter timestamps and first-seen time without
//! building them, which is most of what decoding a long-lived profile costs.
//!
//! The fields it skips must still be present where the full type requires them (`created_at`
//! and `updated_at` are decoded), so a record the full decoder rejects for a missing field is
//! rejected here too.

use cdp_proto::{
    Attributes, Consent, EventCounter, Identifier, Profile, ProfileUpdate, Source, Timestamp,
};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

/// The update, with only what activation reads of the profile (see the module doc).
pub fn decode(raw: &[u8]) -> Result<ProfileUpdate, serde_json::Error> {
    let u: Update = serde_json::from_slice(raw)?;
    let p = u.profile;
    let a = p.attributes;
    let profile = Profile {
        tenant: p.tenant,
        canonical_id: p.canonical_id,
        identifiers: p.identifiers,
        aliases: Vec::new(),
        merge_history: Vec::new(),
        attributes: Attributes {
            lifecycle_stage: a.lifecycle_stage,
            segment: a.segment,
            last_engagement: a.last_engagement,
            total_touchpoints: a.total_touchpoints,
            channels_active: a.channels_active,
            traits: a.traits,
            counts: a
                .counts
                .into_iter()
                .map(|(name, c)| {
                    let counter = EventCounter {
                        total: c.total,
                        last_at: None,
                        daily: c.daily,
                    };
                    (name, counter)
                })
                .collect(),
            ..Attributes::default()
        },
        consent: p.consent,
        version: p.version,
        created_at: p.created_at,
        updated_at: p.updated_at,
    };
    Ok(ProfileUpdate {
        profile,
        version: u.version,
        cause: None,
        received_at: u.received_at,
    })
}

#[derive(Deserialize)]
struct Update {
    profile: LeanProfile,
    version: u64,
    #[serde(default, with = "cdp_proto::rfc3339::option")]
    received_at: Option<Timestamp>,
}

#[derive(Deserialize)]
struct LeanProfile {
    tenant: String,
    canonical_id: String,
    identifiers: Vec<Identifier>,
    attributes: LeanAttributes,
    #[serde(default)]
    consent: Consent,
    version: u64,
    #[serde(with = "cdp_proto::rfc3339")]
    created_at: Timestamp,
    #[serde(with = "cdp_proto::rfc3339")]
    updated_at: Timestamp,
}

#[derive(Deserialize)]
struct LeanAttributes {
    #[serde(default)]
    lifecycle_stage: Option<String>,
    #[serde(default)]
    segment: Option<String>,
    #[serde(default, with = "cdp_proto::rfc3339::option")]
    last_engagement: Option<Timestamp>,
    #[serde(default)]
    total_touchpoints: u64,
    #[serde(default)]
    channels_active: BTreeSet<Source>,
    #[serde(default)]
    traits: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    counts: BTreeMap<String, LeanCounter>,
}

#[derive(Deserialize)]
struct LeanCounter {
    total: u64,
    #[serde(default)]
    daily: BTreeMap<i64, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use cdp_proto::time::from_millis;
    use cdp_proto::{IdentifierKind, MergeRecord};

    fn full() -> ProfileUpdate {
        let now = from_millis(1_700_000_000_000);
        let ids = vec![
            Identifier::new(IdentifierKind::EmailSha256, "ab".repeat(32)),
            Identifier::new(IdentifierKind::CrmId, "crm_1"),
        ];
        let mut p = Profile::new("acme", "cdp_1", ids, now - chrono::Duration::days(40));
        p.version = 7;
        p.updated_at = now;
        p.aliases = vec!["cdp_0".into()];
        p.merge_history.push(MergeRecord {
            merged_at: now,
            rule: "deterministic_login".into(),
            confidence: 1.0,
            from: "cdp_0".into(),
            into: "cdp_1".into(),
        });
        let a = &mut p.attributes;
        a.lifecycle_stage = Some("lead".into());
        a.segment = Some("smb".into());
        a.first_seen = Some(now - chrono::Duration::days(40));
        a.last_engagement = Some(now);
        a.total_touchpoints = 12;
        a.channels_active.insert(Source::Web);
        a.channels_active.insert(Source::Crm);
        a.traits
            .insert("plan".into(), serde_json::json!({"tier": ["pro", 2]}));
        a.trait_times.insert("plan".into(), now);
        for days_ago in [0, 3, 3, 29] {
            let c = a.counts.entry("Pricing Viewed".into()).or_default();
            c.record(now - chrono::Duration::days(days_ago));
        }
        a.counts.entry("Signed Up".into()).or_default().record(now);
        p.consent.0.insert("email".into(), true);
        p.consent.0.insert("advertising".into(), false);
        ProfileUpdate {
            version: p.version,
            profile: p,
            cause: Some("evt_1".into()),
            received_at: Some(now),
        }
    }

    /// The full update with what activation does not decode emptied.
    fn as_activation_sees(mut u: ProfileUpdate) -> ProfileUpdate {
        let p = &mut u.profile;
        p.aliases.clear();
        p.merge_history.clear();
        p.attributes.first_seen = None;
        p.attributes.trait_times.clear();
        for c in p.attributes.counts.values_mut() {
            c.last_at = None;
        }
        u.cause = None;
        u
    }

    #[test]
    fn keeps_every_field_activation_reads() {
        let u = full();
        let raw = serde_json::to_vec(&u).unwrap();
        assert_eq!(decode(&raw).unwrap(), as_activation_sees(u));
        let bare = ProfileUpdate {
            profile: Profile::new("t", "cdp_2", Vec::new(), from_millis(0)),
            version: 1,
            cause: None,
            received_at: None,
        };
        let raw = serde_json::to_vec(&bare).unwrap();
        assert_eq!(decode(&raw).unwrap(), bare);
    }

    #[test]
    fn refuses_what_the_full_decoder_refuses_for_the_fields_it_reads() {
        let raw = serde_json::to_value(full()).unwrap();
        let broken = |path: &[&str], value: Option<serde_json::Value>| {
            let mut v = raw.clone();
            let (last, parents) = path.split_last().unwrap();
            let mut at = &mut v;
            for p in parents {
                at = at.get_mut(*p).unwrap();
            }
            let obj = at.as_object_mut().unwrap();
            match value {
                Some(x) => obj.insert(last.to_string(), x),
                None => obj.remove(*last),
            };
            serde_json::to_vec(&v).unwrap()
        };
        for bad in [
            broken(&["profile", "updated_at"], None),
            broken(&["profile", "created_at"], None),
            broken(&["version"], Some(serde_json::json!("x"))),
            broken(&["profile", "canonical_id"], Some(serde_json::json!(7))),
            broken(
                &["profile", "attributes", "total_touchpoints"],
                Some(serde_json::json!(-1)),
            ),
            broken(
                &["profile", "attributes", "channels_active"],
                Some(serde_json::json!(["fax"])),
            ),
            b"{nope".to_vec(),
        ] {
            assert!(serde_json::from_slice::<ProfileUpdate>(&bad).is_err());
            assert!(decode(&bad).is_err(), "{}", String::from_utf8_lossy(&bad));
        }
    }
}
