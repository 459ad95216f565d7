//! The JSON of the records every event passes through (signals, profile updates, cohort
//! changes), written directly: the same bytes `serde_json` writes for them, without its
//! per-string work. `serde_json` writes every key and every value through its escaping loop and
//! its writer one fragment at a time; these records are mostly fixed keys, timestamps and short
//! plain strings, and each stage writes one or more per event. Here fixed keys go out as literals, timestamps are written in place, and a
//! string is checked for characters to escape in one pass (handed to `serde_json` when it has
//! any). Trait values and the rare float still go through `serde_json`.
//!
//! Field order and omissions follow the serde attributes of the types written; tests compare
//! the output with `serde_json`'s.

use crate::change::CohortChange;
use crate::identifier::Identifier;
use crate::profile::{Attributes, EventCounter, MergeRecord, Profile};
use crate::signal::{Consent, Signal};
use crate::time::Timestamp;
use std::collections::BTreeMap;

/// Appends `s` to `out`.
pub(crate) fn signal(out: &mut Vec<u8>, s: &Signal) {
    out.extend_from_slice(b"{\"tenant\":");
    write_str(out, &s.tenant);
    out.extend_from_slice(b",\"source\":");
    write_str(out, s.source.as_str());
    out.extend_from_slice(b",\"event_id\":");
    write_str(out, &s.event_id);
    out.extend_from_slice(b",\"event_time\":");
    crate::rfc3339::write_json(&s.event_time, out);
    out.extend_from_slice(b",\"received_at\":");
    crate::rfc3339::write_json(&s.received_at, out);
    out.extend_from_slice(b",\"identifiers\":");
    write_identifiers(out, &s.identifiers);
    if !s.links.is_empty() {
        out.extend_from_slice(b",\"links\":[");
        for (i, link) in s.links.iter().enumerate() {
            comma(out, i);
            out.extend_from_slice(b"{\"a\":");
            write_identifier(out, &link.a);
            out.extend_from_slice(b",\"b\":");
            write_identifier(out, &link.b);
            out.extend_from_slice(b",\"rule\":");
            write_str(out, &link.rule);
            out.extend_from_slice(b",\"confidence\":");
            write_f64(out, link.confidence);
            out.push(b'}');
        }
        out.push(b']');
    }
    if let Some(event) = &s.event {
        out.extend_from_slice(b",\"event\":{\"type\":");
        write_str(out, &event.kind);
        if let Some(name) = &event.name {
            out.extend_from_slice(b",\"name\":");
            write_str(out, name);
        }
        if !event.properties.is_empty() {
            out.extend_from_slice(b",\"properties\":");
            write_values(out, &event.properties);
        }
        out.push(b'}');
    }
    if !s.traits.is_empty() {
        out.extend_from_slice(b",\"traits\":");
        write_values(out, &s.traits);
    }
    if !s.consent.0.is_empty() {
        out.extend_from_slice(b",\"consent\":");
        write_consent(out, &s.consent);
    }
    out.push(b'}');
}

/// Appends `c` to `out`.
pub(crate) fn cohort_change(out: &mut Vec<u8>, c: &CohortChange) {
    out.extend_from_slice(b"{\"event\":");
    write_str(out, &c.event);
    out.extend_from_slice(b",\"type\":");
    write_str(out, c.kind.as_str());
    out.extend_from_slice(b",\"tenant\":");
    write_str(out, &c.tenant);
    out.extend_from_slice(b",\"audience_key\":");
    write_str(out, &c.audience_key);
    out.extend_from_slice(b",\"canonical_id\":");
    write_str(out, &c.canonical_id);
    out.extend_from_slice(b",\"version\":");
    write_u64(out, c.version);
    out.extend_from_slice(b",\"at\":");
    crate::rfc3339::write_json(&c.at, out);
    if !c.identifiers.is_empty() {
        out.extend_from_slice(b",\"identifiers\":");
        write_identifiers(out, &c.identifiers);
    }
    out.push(b'}');
}

/// Appends the update of `profile` (at its version) to `out`.
pub(crate) fn profile_update(
    out: &mut Vec<u8>,
    profile: &Profile,
    cause: Option<&str>,
    received_at: Option<Timestamp>,
) {
    out.extend_from_slice(b"{\"profile\":");
    write_profile(out, profile);
    out.extend_from_slice(b",\"version\":");
    write_u64(out, profile.version);
    if let Some(cause) = cause {
        out.extend_from_slice(b",\"cause\":");
        write_str(out, cause);
    }
    if let Some(at) = received_at {
        out.extend_from_slice(b",\"received_at\":");
        crate::rfc3339::write_json(&at, out);
    }
    out.push(b'}');
}

fn write_profile(out: &mut Vec<u8>, p: &Profile) {
    out.extend_from_slice(b"{\"tenant\":");
    write_str(out, &p.tenant);
    out.extend_from_slice(b",\"canonical_id\":");
    write_str(out, &p.canonical_id);
    out.extend_from_slice(b",\"identifiers\":");
    write_identifiers(out, &p.identifiers);
    if !p.aliases.is_empty() {
        out.extend_from_slice(b",\"aliases\":[");
        for (i, alias) in p.aliases.iter().enumerate() {
            comma(out, i);
            write_str(out, alias);
        }
        out.push(b']');
    }
    out.extend_from_slice(b",\"merge_history\":[");
    for (i, m) in p.merge_history.iter().enumerate() {
        comma(out, i);
        write_merge(out, m);
    }
    out.extend_from_slice(b"],\"attributes\":");
    write_attributes(out, &p.attributes);
    out.extend_from_slice(b",\"consent\":");
    write_consent(out, &p.consent);
    out.extend_from_slice(b",\"version\":");
    write_u64(out, p.version);
    out.extend_from_slice(b",\"created_at\":");
    crate::rfc3339::write_json(&p.created_at, out);
    out.extend_from_slice(b",\"updated_at\":");
    crate::rfc3339::write_json(&p.updated_at, out);
    out.push(b'}');
}

fn write_merge(out: &mut Vec<u8>, m: &MergeRecord) {
    out.extend_from_slice(b"{\"merged_at\":");
    crate::rfc3339::write_json(&m.merged_at, out);
    out.extend_from_slice(b",\"rule\":");
    write_str(out, &m.rule);
    out.extend_from_slice(b",\"confidence\":");
    write_f64(out, m.confidence);
    out.extend_from_slice(b",\"from\":");
    write_str(out, &m.from);
    out.extend_from_slice(b",\"into\":");
    write_str(out, &m.into);
    out.push(b'}');
}

fn write_attributes(out: &mut Vec<u8>, a: &Attributes) {
    // Every key after the first optional ones is preceded by a comma; `first` says whether
    // one was written yet.
    out.push(b'{');
    let mut first = true;
    let mut key = |out: &mut Vec<u8>, name: &[u8]| {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(name);
        out.extend_from_slice(b"\":");
    };
    if let Some(stage) = &a.lifecycle_stage {
        key(out, b"lifecycle_stage");
        write_str(out, stage);
    }
    if let Some(segment) = &a.segment {
        key(out, b"segment");
        write_str(out, segment);
    }
    if let Some(at) = &a.first_seen {
        key(out, b"first_seen");
        crate::rfc3339::write_json(at, out);
    }
    if let Some(at) = &a.last_engagement {
        key(out, b"last_engagement");
        crate::rfc3339::write_json(at, out);
    }
    key(out, b"total_touchpoints");
    write_u64(out, a.total_touchpoints);
    out.extend_from_slice(b",\"channels_active\":[");
    for (i, source) in a.channels_active.iter().enumerate() {
        comma(out, i);
        write_str(out, source.as_str());
    }
    out.push(b']');
    if !a.traits.is_empty() {
        out.extend_from_slice(b",\"traits\":");
        write_values(out, &a.traits);
    }
    if !a.trait_times.is_empty() {
        out.extend_from_slice(b",\"trait_times\":{");
        for (i, (name, at)) in a.trait_times.iter().enumerate() {
            comma(out, i);
            write_str(out, name);
            out.push(b':');
            crate::rfc3339::write_json(at, out);
        }
        out.push(b'}');
    }
    if !a.counts.is_empty() {
        out.extend_from_slice(b",\"counts\":{");
        for (i, (name, counter)) in a.counts.iter().enumerate() {
            comma(out, i);
            write_str(out, name);
            out.push(b':');
            write_counter(out, counter);
        }
        out.push(b'}');
    }
    out.push(b'}');
}

fn write_counter(out: &mut Vec<u8>, c: &EventCounter) {
    out.extend_from_slice(b"{\"total\":");
    write_u64(out, c.total);
    if let Some(at) = &c.last_at {
        out.extend_from_slice(b",\"last_at\":");
        crate::rfc3339::write_json(at, out);
    }
    out.extend_from_slice(b",\"daily\":{");
    for (i, (day, n)) in c.daily.iter().enumerate() {
        comma(out, i);
        // Integer map keys are strings in JSON.
        out.push(b'"');
        out.extend_from_slice(itoa::Buffer::new().format(*day).as_bytes());
        out.extend_from_slice(b"\":");
        write_u64(out, *n);
    }
    out.extend_from_slice(b"}}");
}

fn write_identifiers(out: &mut Vec<u8>, ids: &[Identifier]) {
    out.push(b'[');
    for (i, id) in ids.iter().enumerate() {
        comma(out, i);
        write_identifier(out, id);
    }
    out.push(b']');
}

fn write_identifier(out: &mut Vec<u8>, id: &Identifier) {
    out.extend_from_slice(b"{\"kind\":");
    write_str(out, id.kind.as_str());
    out.extend_from_slice(b",\"value\":");
    write_str(out, &id.value);
    out.push(b'}');
}

fn write_consent(out: &mut Vec<u8>, consent: &Consent) {
    out.push(b'{');
    for (i, (purpose, granted)) in consent.0.iter().enumerate() {
        comma(out, i);
        write_str(out, purpose);
        out.extend_from_slice(if *granted { b":true" } else { b":false" });
    }
    out.push(b'}');
}

/// A map of arbitrary JSON values (traits, event properties); the values go through serde_json.
fn write_values(out: &mut Vec<u8>, map: &BTreeMap<String, serde_json::Value>) {
    out.push(b'{');
    for (i, (name, value)) in map.iter().enumerate() {
        comma(out, i);
        write_str(out, name);
        out.push(b':');
        serde_json::to_writer(&mut *out, value).expect("a JSON value serialises");
    }
    out.push(b'}');
}

/// Through serde_json, which writes non-finite floats as `null`.
fn write_f64(out: &mut Vec<u8>, f: f64) {
    serde_json::to_writer(&mut *out, &f).expect("a float serialises");
}

fn comma(out: &mut Vec<u8>, index: usize) {
    if index > 0 {
        out.push(b',');
    }
}

fn write_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `s` as a JSON string. Most strings need no escape: one pass over the bytes (without an
/// early exit, so it runs a word at a time) says so, and they are copied whole.
fn write_str(out: &mut Vec<u8>, s: &str) {
    let needs_escape = s.bytes().fold(false, |any, b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if needs_escape {
        serde_json::to_writer(&mut *out, s).expect("a string serialises");
    } else {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

#[cfg(test)]
mod tests {
    use crate::change::{CohortChange, CohortChangeKind};
    use crate::identifier::{Identifier, IdentifierKind};
    use crate::profile::{EventCounter, MergeRecord, Profile};
    use crate::signal::{Consent, EventInfo, IdentityLink, Signal, Source};
    use crate::time::Timestamp;
    use crate::ProfileUpdate;
    use proptest::collection::{btree_map, btree_set, vec};
    use proptest::prelude::*;
    use serde_json::{json, Value};

    /// Text with what JSON must escape (quotes, backslashes, control characters), what it
    /// must not (`/`, DEL, non-ASCII) and plain ASCII.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9_:.@-]{0,24}",
            "[a-z\"\\\\/\\x00-\\x1f\\x7f é東🙂]{0,12}",
        ]
    }

    /// Instants from before year 0 to after 9999 (written by chrono there), at every precision.
    fn instant() -> impl Strategy<Value = Timestamp> {
        let nanos = prop_oneof![
            Just(0u32),
            (0u32..1000).prop_map(|ms| ms * 1_000_000),
            0u32..1_000_000_000,
        ];
        (-62_200_000_000i64..253_500_000_000, nanos)
            .prop_map(|(secs, nano)| chrono::DateTime::from_timestamp(secs, nano).unwrap())
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| json!(f)),
            text().prop_map(Value::from),
        ];
        leaf.prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..3).prop_map(Value::from),
                btree_map(text(), inner, 0..3).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn kind() -> impl Strategy<Value = IdentifierKind> {
        prop_oneof![
            proptest::sample::select(IdentifierKind::BUILT_IN.to_vec()),
            text().prop_map(IdentifierKind::Custom),
        ]
    }

    fn counter() -> impl Strategy<Value = EventCounter> {
        (
            any::<u64>(),
            proptest::option::of(instant()),
            btree_map(any::<i64>(), any::<u64>(), 0..3),
        )
            .prop_map(|(total, last_at, daily)| EventCounter {
                total,
                last_at,
                daily,
            })
    }

    fn merge() -> impl Strategy<Value = MergeRecord> {
        (instant(), text(), confidence(), text(), text()).prop_map(
            |(merged_at, rule, confidence, from, into)| MergeRecord {
                merged_at,
                rule,
                confidence,
                from,
                into,
            },
        )
    }

    fn identifier() -> impl Strategy<Value = Identifier> {
        (kind(), text()).prop_map(|(k, v)| Identifier::new(k, v))
    }

    fn confidence() -> impl Strategy<Value = f64> {
        prop_oneof![0.0f64..=1.0, any::<f64>()]
    }

    prop_compose! {
        fn signal()(
            tenant in text(),
            source in proptest::sample::select(Source::ALL.to_vec()),
            event_id in text(),
            event_time in instant(),
            received_at in instant(),
            identifiers in vec(identifier(), 0..3),
            links in vec((identifier(), identifier(), text(), confidence()), 0..2),
            event in proptest::option::of((
                text(),
                proptest::option::of(text()),
                btree_map(text(), value(), 0..3),
            )),
            traits in btree_map(text(), value(), 0..3),
            consent in btree_map(text(), any::<bool>(), 0..3),
        ) -> Signal {
            Signal {
                tenant,
                source,
                event_id,
                event_time,
                received_at,
                identifiers,
                links: links
                    .into_iter()
                    .map(|(a, b, rule, confidence)| IdentityLink { a, b, rule, confidence })
                    .collect(),
                event: event.map(|(kind, name, properties)| EventInfo { kind, name, properties }),
                traits,
                consent: Consent(consent),
            }
        }
    }

    prop_compose! {
        fn cohort_change()(
            entered in any::<bool>(),
            event in text(),
            tenant in text(),
            audience_key in text(),
            canonical_id in text(),
            version in any::<u64>(),
            at in instant(),
            identifiers in vec(identifier(), 0..3),
        ) -> CohortChange {
            let kind = if entered { CohortChangeKind::Entered } else { CohortChangeKind::Exited };
            CohortChange { event, kind, tenant, audience_key, canonical_id, version, at, identifiers }
        }
    }

    prop_compose! {
        fn profile()(
            tenant in text(),
            canonical_id in text(),
            identifiers in vec(identifier(), 0..3),
            aliases in vec(text(), 0..2),
            merge_history in vec(merge(), 0..2),
            lifecycle_stage in proptest::option::of(text()),
            segment in proptest::option::of(text()),
            first_seen in proptest::option::of(instant()),
            last_engagement in proptest::option::of(instant()),
            total_touchpoints in any::<u64>(),
            channels_active in btree_set(proptest::sample::select(Source::ALL.to_vec()), 0..4),
            traits in btree_map(text(), value(), 0..4),
            trait_times in btree_map(text(), instant(), 0..3),
            counts in btree_map(text(), counter(), 0..3),
            consent in btree_map(text(), any::<bool>(), 0..3),
            version in any::<u64>(),
            created_at in instant(),
            updated_at in instant(),
        ) -> Profile {
            let mut p = Profile::new(tenant, canonical_id, identifiers, created_at);
            p.aliases = aliases;
            p.merge_history = merge_history;
            p.attributes.lifecycle_stage = lifecycle_stage;
            p.attributes.segment = segment;
            p.attributes.first_seen = first_seen;
            p.attributes.last_engagement = last_engagement;
            p.attributes.total_touchpoints = total_touchpoints;
            p.attributes.channels_active = channels_active;
            p.attributes.traits = traits;
            p.attributes.trait_times = trait_times;
            p.attributes.counts = counts;
            p.consent.0 = consent;
            p.version = version;
            p.updated_at = updated_at;
            p
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn writes_profile_updates_as_serde_json_does(
            p in profile(),
            cause in proptest::option::of(text()),
            received_at in proptest::option::of(instant()),
        ) {
            let owned = ProfileUpdate {
                version: p.version,
                profile: p.clone(),
                cause: cause.clone(),
                received_at,
            };
            let ours = ProfileUpdate::json_of(&p, cause.as_deref(), received_at);
            let theirs = serde_json::to_vec(&owned).unwrap();
            prop_assert_eq!(String::from_utf8(ours).unwrap(), String::from_utf8(theirs).unwrap());
        }

        #[test]
        fn writes_signals_as_serde_json_does(s in signal()) {
            let theirs = serde_json::to_vec(&s).unwrap();
            prop_assert_eq!(String::from_utf8(s.to_json()).unwrap(), String::from_utf8(theirs).unwrap());
        }

        #[test]
        fn writes_cohort_changes_as_serde_json_does(c in cohort_change()) {
            let theirs = serde_json::to_vec(&c).unwrap();
            prop_assert_eq!(String::from_utf8(c.to_json()).unwrap(), String::from_utf8(theirs).unwrap());
        }
    }
}
