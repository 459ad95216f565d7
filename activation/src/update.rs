//! Decoding a `ProfileUpdate` from `cdp.profiles` as activation needs it: the fields that
//! cohorts, destinations and timers read, into a [`ProfileUpdate`] whose other fields are left
//! empty. The topic's format is unchanged (other consumers read the whole profile); activation
//! skips the merge history, aliases, trait and counter timestamps and first-seen time without
//! building them, which is most of what decoding a long-lived profile costs.
//!
//! Traits and event counters are decoded only as far as the cohorts read them ([`Reads`]): only
//! the traits named when no expression reads `profile.traits` whole (none when none reads a
//! trait), and only the counters named when none reads `profile.counts` whole. What no cohort reads cannot change a membership, nor the instant a
//! window could change one ([`crate::timer`]).
//!
//! The fields it skips must still be present where the full type requires them (`created_at`
//! and `updated_at` are decoded), so a record the full decoder rejects for a missing field is
//! rejected here too; `traits` and `counts` must be objects whether or not they are read.

use crate::inputs::Reads;
use cdp_proto::{
    Attributes, Consent, EventCounter, Identifier, Profile, ProfileUpdate, Source, Timestamp,
};
use serde::de::{self, DeserializeOwned, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;

/// The update, with only what activation reads of the profile (see the module doc) and of its
/// traits and counters what `reads` names.
pub fn decode(raw: &[u8], reads: &Reads) -> Result<ProfileUpdate, serde_json::Error> {
    let u: Update = cdp_proto::json::from_bytes(raw)?;
    let p = u.profile;
    let a = p.attributes;
    let traits = match a.traits {
        Some(t) if reads.field("traits") => serde_json::from_str(t.get())?,
        Some(t) if !reads.traits().is_empty() => {
            entries(t, |name| reads.traits().iter().any(|n| n == name))?
        }
        // No trait read: only its shape is checked.
        Some(t) if !t.get().starts_with('{') => {
            return Err(de::Error::invalid_type(
                de::Unexpected::Other(t.get()),
                &"a map",
            ));
        }
        _ => BTreeMap::new(),
    };
    let counts = match a.counts {
        Some(c) => {
            let all = reads.field("counts");
            let counters = entries(c, |name| all || reads.counters().iter().any(|n| n == name))?;
            counters
                .into_iter()
                .map(|(name, c): (String, LeanCounter)| {
                    let counter = EventCounter {
                        total: c.total,
                        last_at: None,
                        daily: c.daily,
                    };
                    (name, counter)
                })
                .collect()
        }
        None => BTreeMap::new(),
    };
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
            traits,
            counts,
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
struct Update<'a> {
    #[serde(borrow)]
    profile: LeanProfile<'a>,
    version: u64,
    #[serde(default, with = "cdp_proto::rfc3339::option")]
    received_at: Option<Timestamp>,
}

#[derive(Deserialize)]
struct LeanProfile<'a> {
    tenant: String,
    canonical_id: String,
    identifiers: Vec<Identifier>,
    #[serde(borrow)]
    attributes: LeanAttributes<'a>,
    #[serde(default)]
    consent: Consent,
    version: u64,
    #[serde(with = "cdp_proto::rfc3339")]
    created_at: Timestamp,
    #[serde(with = "cdp_proto::rfc3339")]
    updated_at: Timestamp,
}

#[derive(Deserialize)]
struct LeanAttributes<'a> {
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
    /// Kept as JSON text until it is known what of it the cohorts read.
    #[serde(default, borrow, deserialize_with = "present")]
    traits: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    counts: Option<&'a RawValue>,
}

/// A field that is there, `null` included (which then fails as the full type fails on it).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct LeanCounter {
    total: u64,
    #[serde(default)]
    daily: BTreeMap<i64, u64>,
}

/// The entries of the JSON object `json` whose names `wanted` accepts, decoded; the others are
/// skipped without being decoded.
fn entries<T: DeserializeOwned>(
    json: &RawValue,
    wanted: impl Fn(&str) -> bool,
) -> Result<BTreeMap<String, T>, serde_json::Error> {
    let mut d = serde_json::Deserializer::from_str(json.get());
    let map = d.deserialize_map(Entries(wanted, PhantomData))?;
    d.end()?;
    Ok(map)
}

struct Entries<F, T>(F, PhantomData<T>);

impl<'de, F: Fn(&str) -> bool, T: DeserializeOwned> Visitor<'de> for Entries<F, T> {
    type Value = BTreeMap<String, T>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a map")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(Key(name)) = map.next_key()? {
            if (self.0)(&name) {
                let value = map.next_value()?;
                out.insert(name.into_owned(), value);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(out)
    }
}

/// A map key, borrowed from the input unless it has escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_string())))
            }
        }
        d.deserialize_str(V)
    }
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
        let everything = Reads::everything();
        let u = full();
        let raw = serde_json::to_vec(&u).unwrap();
        assert_eq!(decode(&raw, &everything).unwrap(), as_activation_sees(u));
        let bare = ProfileUpdate {
            profile: Profile::new("t", "cdp_2", Vec::new(), from_millis(0)),
            version: 1,
            cause: None,
            received_at: None,
        };
        let raw = serde_json::to_vec(&bare).unwrap();
        assert_eq!(decode(&raw, &everything).unwrap(), bare);
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
            broken(
                &["profile", "attributes", "traits"],
                Some(serde_json::json!(["plan"])),
            ),
            broken(
                &["profile", "attributes", "traits"],
                Some(serde_json::Value::Null),
            ),
            broken(
                &["profile", "attributes", "counts"],
                Some(serde_json::json!(3)),
            ),
            b"{nope".to_vec(),
        ] {
            assert!(serde_json::from_slice::<ProfileUpdate>(&bad).is_err());
            for reads in [Reads::everything(), Reads::nothing()] {
                let refused = decode(&bad, &reads).is_err();
                assert!(refused, "{}", String::from_utf8_lossy(&bad));
            }
        }
    }

    #[test]
    fn decodes_traits_and_counters_only_as_far_as_cohorts_read_them() {
        let u = full();
        let raw = serde_json::to_vec(&u).unwrap();
        let whole = as_activation_sees(u);
        let reads = |expressions: &[&str]| {
            let mut r = Reads::nothing();
            for e in expressions {
                r.add(&Reads::of(e));
            }
            r
        };

        // The default cohorts: a counter by name, no trait.
        let named = reads(&[
            r#"profile.lifecycle_stage == "lead" && profile.counts["Pricing Viewed"].last_7d >= 2"#,
            r#"profile.counts["Order Completed"].last_30d >= 1"#,
        ]);
        let lean = decode(&raw, &named).unwrap();
        let a = &lean.profile.attributes;
        assert!(a.traits.is_empty());
        assert_eq!(a.counts.keys().collect::<Vec<_>>(), ["Pricing Viewed"]);
        assert_eq!(
            a.counts["Pricing Viewed"],
            whole.profile.attributes.counts["Pricing Viewed"]
        );
        let mut expected = whole.clone();
        expected.profile.attributes.traits.clear();
        expected.profile.attributes.counts.remove("Signed Up");
        assert_eq!(lean, expected);

        // A trait read by name: that trait (here, every one the profile has).
        let mut v = serde_json::to_value(full()).unwrap();
        v["profile"]["attributes"]["traits"]["seats"] = serde_json::json!(12);
        let two = serde_json::to_vec(&v).unwrap();
        let plan = reads(&[r#"profile.traits.plan.tier[0] == "pro""#]);
        let lean = decode(&two, &plan).unwrap();
        assert_eq!(
            lean.profile.attributes.traits,
            whole.profile.attributes.traits
        );
        assert!(lean.profile.attributes.counts.is_empty());
        let seats = reads(&[
            r#"has(profile.traits.seats)"#,
            r#""plan" in profile.traits"#,
        ]);
        let lean = decode(&two, &seats).unwrap();
        assert_eq!(lean.profile.attributes.traits.len(), 2);

        // The traits or `counts` read whole: every trait, every counter.
        let traits = reads(&["size(profile.traits) > 0", "size(profile.counts) > 1"]);
        assert_eq!(decode(&raw, &traits).unwrap(), whole);

        // An unread counter is not decoded, so its type is not checked.
        let mut v = serde_json::to_value(full()).unwrap();
        v["profile"]["attributes"]["counts"]["Signed Up"] = serde_json::json!("many");
        let odd = serde_json::to_vec(&v).unwrap();
        assert_eq!(decode(&odd, &named).unwrap(), expected);
        assert!(decode(&odd, &traits).is_err());
    }
}
