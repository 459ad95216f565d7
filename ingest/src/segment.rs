//! The Segment Spec, shared by the web and app sources: the six message types (`track`, `page`,
//! `screen`, `identify`, `alias`, `group`), `batch` envelopes, the common identifiers
//! (`userId`, `anonymousId`, `previousId`, traits' `email`/`phone`), consent, and event time.
//! What differs by source (landing-page click ids, device ids) is in [`crate::web`] and
//! [`crate::app`].
//!
//! Event names: `track` keeps its `event`; `page` and `screen` become `Page Viewed` and
//! `Screen Viewed` with the page or screen `name` in the properties, so cohorts count page views
//! under one name; `identify`, `alias` and `group` have no name. `group` traits describe the
//! account, not the person: they go into the properties (contact fields removed), not the traits.
//! `previousId` of an `alias` is read as an anonymous id, which is what Segment's libraries send.
//!
//! Messages are read into typed, borrowed fields ([`crate::message`]) by the one reader here. A
//! payload that may hold a batch message over the per-message limit is measured first, on the
//! JSON tree of everything it holds ([`message_sizes`]), as the limit is a message's size as
//! compact JSON.

use crate::consent::{self, GOOGLE_CONSENT_TYPES};
use crate::fields::{
    id_text_of, id_value, insert_absent, is_contact_key, record_id_of, required_str_of, str_of,
    Fields, Object,
};
use crate::identifiers::IdentifierSet;
use crate::json::{Json, Obj};
use crate::links::{event_rule, LinkRule};
use crate::message::{Message, Payload, Slot};
use crate::normalize::{event, Context, Draft};
use crate::rejection::{
    self, in_batch, invalid_timestamp, missing, not_an_object, oversize, wrong_type,
};
use crate::timestamp::{skew_corrected, text_value};
use crate::{app, web};
use cdp_proto::dlq::Rejection;
use cdp_proto::{Consent, IdentifierKind, Signal, Timestamp};
use serde_json::Value;

/// Which source's Segment library sent the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    Web,
    App,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MessageType {
    Track,
    Page,
    Screen,
    Identify,
    Alias,
    Group,
}

impl MessageType {
    fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        [
            MessageType::Track,
            MessageType::Page,
            MessageType::Screen,
            MessageType::Identify,
            MessageType::Alias,
            MessageType::Group,
        ]
        .into_iter()
        .find(|t| s.eq_ignore_ascii_case(t.as_str()))
    }

    fn as_str(self) -> &'static str {
        match self {
            MessageType::Track => "track",
            MessageType::Page => "page",
            MessageType::Screen => "screen",
            MessageType::Identify => "identify",
            MessageType::Alias => "alias",
            MessageType::Group => "group",
        }
    }
}

/// `true` when the object looks like Segment: a message or a batch envelope.
pub(crate) fn is_segment(obj: &Obj<'_>) -> bool {
    obj.contains_key("batch") || obj.contains_key("type") || obj.contains_key("messageId")
}

/// Parses a Segment message or batch envelope read into typed fields ([`crate::message`]).
///
/// `sizes` holds the compact JSON size of each `batch` entry (see [`message_sizes`]) when the
/// payload may hold a message over the per-message limit; `None` when none can be. A batch is
/// accepted or rejected whole: a partly accepted batch could not go to the DLQ as the original
/// bytes without replaying its accepted messages twice.
pub(crate) fn parse(
    mut m: Message<'_>,
    sizes: Option<&[usize]>,
    cx: &mut Context<'_>,
    flavor: Flavor,
) -> Result<Vec<Signal>, Rejection> {
    match m.batch.take() {
        Some(Slot::Value(messages)) => {
            if messages.is_empty() {
                return Err(Rejection::new(
                    rejection::MISSING_FIELD,
                    "field `batch` has no messages",
                ));
            }
            // Segment's HTTP batch call may give `sentAt` once for all messages.
            let envelope_sent_at = text_value(present(&m.sent_at), || "sentAt".into())?;
            let limit = cx.options.max_message_bytes;
            let mut signals = Vec::with_capacity(messages.len());
            for (i, message) in messages.into_iter().enumerate() {
                // The size first, as a message's size is known before its fields are read.
                if let Some(&size) = sizes.and_then(|s| s.get(i)) {
                    if size > limit {
                        return Err(in_batch(i, oversize("message", size, limit)));
                    }
                }
                let Payload::Message(message) = message else {
                    return Err(in_batch(i, not_an_object("message")));
                };
                let signal = parse_message(*message, envelope_sent_at, cx, flavor)
                    .map_err(|r| in_batch(i, r))?;
                signals.push(signal);
            }
            Ok(signals)
        }
        Some(Slot::Other) => Err(wrong_type("batch", "an array")),
        None | Some(Slot::Null) => {
            cx.check_message_size()?;
            Ok(vec![parse_message(m, None, cx, flavor)?])
        }
    }
}

/// The size of each entry of a batch envelope's `batch` as compact JSON (the measure of the
/// per-message limit), read from the whole tree of the payload; empty for a single message.
pub(crate) fn message_sizes(obj: &Obj<'_>) -> Vec<usize> {
    match obj.get("batch") {
        Some(Json::Array(messages)) => messages.iter().map(crate::json::compact_len).collect(),
        _ => Vec::new(),
    }
}

/// A typed field's value, a JSON `null` counting as absent (as [`Fields::get`] has it for the
/// objects inside a message).
fn present<'a, 'b>(v: &'a Option<Json<'b>>) -> Option<&'a Json<'b>> {
    v.as_ref().filter(|v| !v.is_null())
}

/// A typed object field as a property map: empty when absent or null.
fn take_object(slot: &mut Option<Slot<Object>>, name: &str) -> Result<Object, Rejection> {
    match slot.take() {
        None | Some(Slot::Null) => Ok(Object::new()),
        Some(Slot::Value(map)) => Ok(map),
        Some(Slot::Other) => Err(wrong_type(name, "an object")),
    }
}

fn parse_message(
    mut m: Message<'_>,
    envelope_sent_at: Option<Timestamp>,
    cx: &mut Context<'_>,
    flavor: Flavor,
) -> Result<Signal, Rejection> {
    let kind = required_str_of(present(&m.kind), || "type".into())?;
    let kind = MessageType::parse(kind).ok_or_else(|| {
        Rejection::new(
            rejection::UNKNOWN_SHAPE,
            "field `type` is not a Segment message type (track, page, screen, identify, alias, group)",
        )
    })?;
    let event_id = record_id_of(present(&m.message_id), || "messageId".into())?.into_owned();
    let event_time = {
        let original = text_value(present(&m.original_timestamp), || {
            "originalTimestamp".into()
        })?;
        let sent = text_value(present(&m.sent_at), || "sentAt".into())?.or(envelope_sent_at);
        let received =
            text_value(present(&m.received_at), || "receivedAt".into())?.unwrap_or(cx.received_at);
        let timestamp = text_value(present(&m.timestamp), || "timestamp".into())?;
        corrected_time(original, sent, received, timestamp, cx.received_at)?
    };
    let context = match present(&m.context) {
        None => None,
        Some(Json::Object(obj)) => Some(Fields::at(obj, "context")),
        Some(_) => return Err(wrong_type("context", "an object")),
    };

    let name = match kind {
        MessageType::Track => {
            Some(required_str_of(present(&m.event), || "event".into())?.to_string())
        }
        MessageType::Page => Some("Page Viewed".to_string()),
        MessageType::Screen => Some("Screen Viewed".to_string()),
        MessageType::Identify | MessageType::Alias | MessageType::Group => None,
    };
    let mut properties = match kind {
        MessageType::Group => {
            let mut p = take_object(&mut m.traits, "traits")?;
            p.retain(|k, _| !is_contact_key(k));
            if let Some(group_id) = id_text_of(present(&m.group_id), || "groupId".into())? {
                p.insert("group_id".into(), Value::String(group_id.into_owned()));
            }
            p
        }
        MessageType::Identify | MessageType::Alias => Object::new(),
        MessageType::Track | MessageType::Page | MessageType::Screen => {
            take_object(&mut m.properties, "properties")?
        }
    };
    if matches!(kind, MessageType::Page | MessageType::Screen) {
        for (key, v) in [("name", &m.name), ("category", &m.category)] {
            if let Some(v) = str_of(present(v), || key.into())? {
                insert_absent(&mut properties, key, Value::String(v.to_string()));
            }
        }
    }
    let consent = consent(context)?;

    let mut ids = cx.identifiers();
    let user = match id_text_of(present(&m.user_id), || "userId".into())? {
        Some(v) => ids.add(IdentifierKind::UserId, &v),
        None if kind == MessageType::Alias => return Err(missing("userId")),
        None => None,
    };
    if let Some(v) = id_text_of(present(&m.anonymous_id), || "anonymousId".into())? {
        ids.add(IdentifierKind::AnonymousId, &v);
    }
    let previous = if kind == MessageType::Alias {
        let v = id_text_of(present(&m.previous_id), || "previousId".into())?
            .ok_or_else(|| missing("previousId"))?;
        ids.add(IdentifierKind::AnonymousId, &v)
    } else {
        None
    };

    let mut traits = Object::new();
    if let Some(c) = context {
        if let Some(t) = c.child("traits", "context.traits")? {
            take_traits(t, &mut ids, &mut traits)?;
        }
    }
    if kind == MessageType::Identify {
        let own = take_object(&mut m.traits, "traits")?;
        take_contacts(own, "traits", &mut ids, &mut traits)?;
    }
    if properties.keys().any(|k| is_contact_key(k)) {
        let all = std::mem::take(&mut properties);
        take_contacts(all, "properties", &mut ids, &mut properties)?;
    }

    match flavor {
        Flavor::Web => {
            let page_url = web::page_url(context)?;
            // The event's own `properties.url` when the page's is absent. Track, page and screen
            // events hold their properties in `properties` by now; the others' are unread.
            let url: Option<String> = match page_url {
                Some(_) => None,
                None => {
                    let own = match kind {
                        MessageType::Track | MessageType::Page | MessageType::Screen => {
                            Some(&properties)
                        }
                        _ => match &m.properties {
                            None | Some(Slot::Null) => None,
                            Some(Slot::Value(p)) => Some(p),
                            Some(Slot::Other) => return Err(wrong_type("properties", "an object")),
                        },
                    };
                    match own.and_then(|p| p.get("url")) {
                        None | Some(Value::Null) => None,
                        Some(Value::String(url)) => Some(url.clone()),
                        Some(_) => return Err(wrong_type("properties.url", "a string")),
                    }
                }
            };
            web::landing_page(
                page_url.or(url.as_deref()),
                context,
                &mut ids,
                &mut properties,
            )?
        }
        Flavor::App => app::device(context, &mut ids, &mut properties)?,
    }
    let identifiers = ids.into_vec();

    let draft = Draft {
        event_id,
        event_time,
        identifiers,
        event: Some(event(kind.as_str(), name, properties)),
        traits,
        consent,
    };
    let app = flavor == Flavor::App;
    draft.into_signal(cx, |ids, centre, other| {
        if Some(centre) == user && Some(other) == previous {
            LinkRule::AliasCall
        } else {
            event_rule(&ids[centre].kind, &ids[other].kind, app)
        }
    })
}

/// Moves `map` into `out`, turning `email` and `phone` into hashed identifiers on the way (in
/// key order, as [`take_traits`] does); `path` names the map in rejections.
fn take_contacts(
    map: Object,
    path: &str,
    ids: &mut IdentifierSet<'_>,
    out: &mut Object,
) -> Result<(), Rejection> {
    for (key, value) in map {
        if is_contact_key(&key) {
            add_contact_value(&value, || format!("{path}.{key}"), &key, ids)?;
        } else {
            out.insert(key, value);
        }
    }
    Ok(())
}

/// [`add_contact`] for a value already in a property map.
fn add_contact_value(
    value: &Value,
    name: impl FnOnce() -> String,
    key: &str,
    ids: &mut IdentifierSet<'_>,
) -> Result<(), Rejection> {
    if key.eq_ignore_ascii_case("email") {
        match value {
            Value::Null => {}
            Value::String(s) => {
                ids.add(IdentifierKind::EmailSha256, s);
            }
            _ => return Err(wrong_type(&name(), "a string")),
        }
    } else {
        match value {
            Value::Null => {}
            Value::String(s) => {
                ids.add(IdentifierKind::PhoneSha256, s);
            }
            Value::Number(n) if n.is_i64() || n.is_u64() => {
                ids.add(IdentifierKind::PhoneSha256, &n.to_string());
            }
            _ => return Err(wrong_type(&name(), "a string or an integer")),
        }
    }
    Ok(())
}

/// Segment's event time: `receivedAt - (sentAt - originalTimestamp)` when the device's two clock
/// readings are there, else what the device said (`timestamp`, `originalTimestamp`), else the
/// time the record reached the bus.
fn corrected_time(
    original: Option<Timestamp>,
    sent: Option<Timestamp>,
    received: Timestamp,
    timestamp: Option<Timestamp>,
    record_time: Timestamp,
) -> Result<Timestamp, Rejection> {
    match (sent, original) {
        (Some(sent), Some(original)) => {
            skew_corrected(received, sent, original).ok_or_else(|| invalid_timestamp("sentAt"))
        }
        _ => Ok(timestamp.or(original).unwrap_or(record_time)),
    }
}

/// Copies traits into `out`, turning `email` and `phone` into hashed identifiers on the way.
fn take_traits(
    t: Fields<'_>,
    ids: &mut IdentifierSet<'_>,
    out: &mut Object,
) -> Result<(), Rejection> {
    for (key, value) in t.entries() {
        if is_contact_key(key) {
            add_contact(t, key, value, ids)?;
        } else {
            out.insert(key.to_string(), value.to_value());
        }
    }
    Ok(())
}

/// An `email` or `phone` value. Phones may arrive as numbers; emails must be text.
fn add_contact(
    f: Fields<'_>,
    key: &str,
    value: &Json<'_>,
    ids: &mut IdentifierSet<'_>,
) -> Result<(), Rejection> {
    if value.is_null() {
        return Ok(());
    }
    if key.eq_ignore_ascii_case("email") {
        let Json::Str(s) = value else {
            return Err(wrong_type(&f.name(key), "a string"));
        };
        ids.add(IdentifierKind::EmailSha256, s);
    } else {
        let s =
            id_value(value).ok_or_else(|| wrong_type(&f.name(key), "a string or an integer"))?;
        ids.add(IdentifierKind::PhoneSha256, &s);
    }
    Ok(())
}

/// `context.consent`: Segment's `categoryPreferences` (purpose -> granted) and Google Consent
/// Mode types stated next to it (see [`crate::consent`]). Consent Mode types win over a
/// category of the same name.
fn consent(context: Option<Fields<'_>>) -> Result<Consent, Rejection> {
    let mut out = Consent::default();
    let Some(c) = context
        .map(|c| c.child("consent", "context.consent"))
        .transpose()?
        .flatten()
    else {
        return Ok(out);
    };
    if let Some(prefs) = c.child("categoryPreferences", "context.consent.categoryPreferences")? {
        for (purpose, granted) in prefs.entries() {
            let state = consent::state(granted)
                .map_err(|()| wrong_type(&prefs.name(purpose), "a boolean"))?;
            if let Some(b) = state {
                out.0.insert(purpose.to_string(), b);
            }
        }
    }
    for purpose in GOOGLE_CONSENT_TYPES {
        if let Some(v) = c.get(purpose) {
            let state = consent::state(v)
                .map_err(|()| wrong_type(&c.name(purpose), "\"granted\" or \"denied\""))?;
            if let Some(b) = state {
                out.0.insert(purpose.to_string(), b);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::{normalize_payload_counted, NormalizeOptions};
    use crate::query::{self, CLICK_ID_PARAMS};
    use crate::DroppedIdentifiers;
    use cdp_proto::{Identifier, Source};
    use proptest::prelude::*;
    use serde_json::{json, Map};
    use std::collections::BTreeSet;

    /// A value for a field: one a source sends there, or (with weight `noise` against 6) null
    /// or a wrong type.
    fn field(noise: u32, good: Vec<Value>) -> BoxedStrategy<Value> {
        if noise == 0 {
            return prop::sample::select(good).boxed();
        }
        prop_oneof![
            6 => prop::sample::select(good),
            noise => Just(Value::Null),
            noise => prop_oneof![
                any::<bool>().prop_map(Value::from),
                any::<i32>().prop_map(Value::from),
                Just(json!(1.5)),
                Just(json!([1, "a"])),
                Just(json!({"k": "v"})),
                "[a-z ]{0,6}".prop_map(Value::from),
            ],
        ]
        .boxed()
    }

    fn text(values: &[&str]) -> Vec<Value> {
        values.iter().map(|v| Value::from(*v)).collect()
    }

    /// An object of some of `fields`; a key may repeat, as JSON allows.
    fn object(fields: Vec<(&'static str, BoxedStrategy<Value>)>) -> BoxedStrategy<String> {
        let entries: Vec<_> = fields
            .into_iter()
            .map(|(k, v)| (any::<u8>(), v).prop_map(move |(pick, v)| (pick, k, v)))
            .collect();
        entries
            .prop_map(|entries| {
                let body: Vec<String> = entries
                    .into_iter()
                    .filter(|(pick, _, _)| pick % 3 != 0)
                    .flat_map(|(pick, k, v)| {
                        let one = format!("{}:{}", Value::from(k), v);
                        // Now and then a key twice, with another value first.
                        if pick % 17 == 1 {
                            vec![format!("{}:null", Value::from(k)), one]
                        } else {
                            vec![one]
                        }
                    })
                    .collect();
                format!("{{{}}}", body.join(","))
            })
            .boxed()
    }

    fn raw(s: BoxedStrategy<String>) -> BoxedStrategy<Value> {
        s.prop_map(|t| serde_json::from_str::<Value>(&t).unwrap_or(Value::Null))
            .boxed()
    }

    fn times(noise: u32) -> BoxedStrategy<Value> {
        field(
            noise,
            text(&[
                "2024-05-01T12:00:00.000Z",
                "2024-05-01T13:00:02Z",
                "2024-05-01T14:00:00+02:00",
                "2024-05-01 12:00:00.000",
                "",
                "yesterday",
            ]),
        )
        .boxed()
    }

    fn context(noise: u32) -> BoxedStrategy<String> {
        let urls = text(&[
            "https://shop.example/p?gclid=Cj0KCQ&utm_source=google&utm_campaign=spring",
            "https://shop.example/?fbclid=IwAR1&msclkid=m1&utm_medium=cpc",
            "https://shop.example/plain",
        ]);
        let page = object(vec![
            ("url", field(noise, urls).boxed()),
            ("path", field(noise, text(&["/p"])).boxed()),
            ("title", field(noise, text(&["T\u{e9}"])).boxed()),
        ]);
        let traits = object(vec![
            (
                "email",
                field(noise, text(&["Maria@Example.com", "test@test.com", "x"])).boxed(),
            ),
            ("Email", field(noise, text(&["b@corp.example"])).boxed()),
            (
                "phone",
                field(noise, vec![json!("(415) 555-2671"), json!(4155552671u64)]).boxed(),
            ),
            ("plan", field(noise, text(&["pro"])).boxed()),
        ]);
        let campaign = object(vec![
            ("source", field(noise, text(&["newsletter"])).boxed()),
            ("name", field(noise, text(&["spring"])).boxed()),
            ("medium", field(noise, text(&["email"])).boxed()),
        ]);
        let prefs = object(vec![
            (
                "advertising",
                field(noise, vec![json!(true), json!(false)]).boxed(),
            ),
            (
                "identity",
                field(noise, vec![json!(false), json!("denied")]).boxed(),
            ),
        ]);
        let consent = object(vec![
            ("categoryPreferences", raw(prefs)),
            (
                "ad_user_data",
                field(noise, text(&["granted", "denied", "DENIED"])).boxed(),
            ),
        ]);
        let device = object(vec![
            (
                "advertisingId",
                field(
                    noise,
                    text(&[
                        "6D92078A-8246-4BA4-AE5B-76104861E7DC",
                        "00000000-0000-0000-0000-000000000000",
                    ]),
                )
                .boxed(),
            ),
            (
                "adTrackingEnabled",
                field(noise, vec![json!(true), json!(false), json!("0")]).boxed(),
            ),
            (
                "id",
                field(
                    noise,
                    vec![json!("B4A5C6D7-1111-2222-3333-444455556666"), json!(7)],
                )
                .boxed(),
            ),
            ("model", field(noise, text(&["iPhone15,2"])).boxed()),
        ]);
        let named = || {
            raw(object(vec![
                ("name", field(noise, vec![json!("Shop"), json!(3)]).boxed()),
                (
                    "version",
                    field(noise, vec![json!("1.2"), json!(12)]).boxed(),
                ),
                ("build", field(noise, text(&["99"])).boxed()),
            ]))
        };
        object(vec![
            ("page", raw(page)),
            ("traits", raw(traits)),
            ("campaign", raw(campaign)),
            ("consent", raw(consent)),
            ("device", raw(device)),
            ("app", named()),
            ("os", named()),
            (
                "library",
                field(noise, vec![json!({"name": "analytics.js"})]).boxed(),
            ),
            ("userAgent", field(noise, text(&["Mozilla/5.0"])).boxed()),
        ])
    }

    fn message(noise: u32) -> BoxedStrategy<String> {
        let kinds = text(&[
            "track", "page", "screen", "identify", "alias", "group", "Track ", "x",
        ]);
        let ids = vec![
            json!("u-1"),
            json!("null"),
            json!(42),
            json!("  "),
            json!("a-2"),
        ];
        let properties = object(vec![
            (
                "url",
                field(
                    noise,
                    text(&["https://shop.example/?ttclid=t1&utm_term=shoes"]),
                )
                .boxed(),
            ),
            ("email", field(noise, text(&["Form@Example.com"])).boxed()),
            (
                "Phone",
                field(noise, vec![json!("+44 20 7946 0018"), json!(-5)]).boxed(),
            ),
            ("plan", field(noise, text(&["pro"])).boxed()),
            ("name", field(noise, text(&["Own name"])).boxed()),
            ("revenue", field(noise, vec![json!(9.99)]).boxed()),
        ]);
        let traits = object(vec![
            ("email", field(noise, text(&["Jane@Corp.Example"])).boxed()),
            (
                "phone",
                field(noise, vec![json!("415-555-0000"), json!(4155550000u64)]).boxed(),
            ),
            ("name", field(noise, text(&["Acme"])).boxed()),
        ]);
        object(vec![
            ("type", field(noise, kinds).boxed()),
            ("messageId", field(noise, text(&["m-1", "m-2", ""])).boxed()),
            ("userId", field(noise, ids.clone()).boxed()),
            ("anonymousId", field(noise, ids.clone()).boxed()),
            ("previousId", field(noise, ids.clone()).boxed()),
            ("groupId", field(noise, ids).boxed()),
            (
                "event",
                field(noise, text(&["Order Completed", ""])).boxed(),
            ),
            ("name", field(noise, text(&["Pricing"])).boxed()),
            ("category", field(noise, text(&["Docs"])).boxed()),
            ("timestamp", times(noise)),
            ("originalTimestamp", times(noise)),
            ("sentAt", times(noise)),
            ("receivedAt", times(noise)),
            ("context", raw(context(noise))),
            ("properties", raw(properties)),
            ("traits", raw(traits)),
            (
                "integrations",
                field(noise, vec![json!({"All": true})]).boxed(),
            ),
        ])
    }

    /// A message that web ingest accepts when it comes alone (most generated ones it refuses).
    fn accepted() -> BoxedStrategy<String> {
        message(0)
            .prop_filter("accepted alone", |t| {
                read(Source::Web, t, &NormalizeOptions::default()).0.is_ok()
            })
            .boxed()
    }

    /// A batch's messages (mostly accepted ones, some refused, some not objects) and its
    /// envelope's `sentAt`.
    fn batch(noise: u32) -> BoxedStrategy<(Vec<String>, Value)> {
        (
            prop::collection::vec(
                prop_oneof![
                    8 => accepted(),
                    2 => message(noise),
                    1 => Just("7".to_string()),
                ],
                0..4,
            ),
            times(noise),
        )
            .boxed()
    }

    fn batch_text(messages: &[String], sent_at: &Value) -> String {
        format!(r#"{{"batch":[{}],"sentAt":{sent_at}}}"#, messages.join(","))
    }

    fn payload(noise: u32) -> BoxedStrategy<String> {
        prop_oneof![
            3 => message(noise),
            1 => batch(noise).prop_map(|(messages, sent_at)| batch_text(&messages, &sent_at)),
        ]
        .boxed()
    }

    type Outcome = (Result<Vec<Signal>, Rejection>, DroppedIdentifiers);

    fn received() -> Timestamp {
        cdp_proto::time::from_millis(1_714_564_800_000)
    }

    fn read(source: Source, text: &str, opts: &NormalizeOptions) -> Outcome {
        let mut dropped = DroppedIdentifiers::default();
        let out =
            normalize_payload_counted(source, "t", text.as_bytes(), received(), opts, &mut dropped);
        (out, dropped)
    }

    fn source(app: bool) -> Source {
        if app {
            Source::App
        } else {
            Source::Web
        }
    }

    /// What a batch must yield, from its messages read alone: each message with the envelope's
    /// `sentAt` where it has none, the first rejection (placed in the batch) or all the signals.
    fn batch_model(
        source: Source,
        messages: &[String],
        sent_at: &Value,
        opts: &NormalizeOptions,
    ) -> Outcome {
        let rejected = |r: Rejection| (Err(r), DroppedIdentifiers::default());
        if messages.is_empty() {
            return rejected(Rejection::new(
                rejection::MISSING_FIELD,
                "field `batch` has no messages",
            ));
        }
        let envelope_text = sent_at.to_string();
        let envelope: Json = serde_json::from_str(&envelope_text).unwrap();
        if let Err(r) = text_value(Some(&envelope).filter(|v| !v.is_null()), || "sentAt".into()) {
            return rejected(r);
        }
        let mut signals = Vec::new();
        let mut dropped = DroppedIdentifiers::default();
        for (i, text) in messages.iter().enumerate() {
            let Ok(Value::Object(mut m)) = serde_json::from_str::<Value>(text) else {
                return rejected(in_batch(i, not_an_object("message")));
            };
            // Inside a batch every object is read as a message, Segment-looking or not.
            if !m.contains_key("type") && !m.contains_key("messageId") {
                return rejected(in_batch(i, missing("type")));
            }
            let own = m.get("sentAt");
            if own.is_none_or(|v| v.is_null() || v.as_str().is_some_and(|s| s.trim().is_empty())) {
                m.insert("sentAt".into(), sent_at.clone());
            }
            let (out, d) = read(source, &Value::Object(m).to_string(), opts);
            match out {
                Ok(mut one) => {
                    assert_eq!(one.len(), 1);
                    signals.append(&mut one);
                    dropped.merge(&d);
                }
                Err(r) => return rejected(in_batch(i, r)),
            }
        }
        (Ok(signals), dropped)
    }

    /// An id-like value as the Segment libraries send it: text, or an integer.
    fn id_of(v: Option<&Value>) -> Option<String> {
        match v? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
            _ => None,
        }
    }

    fn child<'v>(v: Option<&'v Value>, key: &str) -> Option<&'v Map<String, Value>> {
        v?.get(key)?.as_object()
    }

    /// The identifiers an accepted message must carry, from the Segment Spec as this module's
    /// docs and [`crate::web`] and [`crate::app`] give it, each normalised by `cdp_proto`.
    fn identifier_model(
        m: &Map<String, Value>,
        app: bool,
        opts: &NormalizeOptions,
    ) -> BTreeSet<Identifier> {
        let kind = m["type"].as_str().unwrap().trim().to_ascii_lowercase();
        let context = m.get("context");
        let mut raw: Vec<(IdentifierKind, String)> = Vec::new();
        let mut add = |kind: IdentifierKind, v: Option<String>| {
            if let Some(v) = v {
                raw.push((kind, v));
            }
        };
        add(IdentifierKind::UserId, id_of(m.get("userId")));
        add(IdentifierKind::AnonymousId, id_of(m.get("anonymousId")));
        if kind == "alias" {
            add(IdentifierKind::AnonymousId, id_of(m.get("previousId")));
        }
        let mut contacts = vec![child(context, "traits")];
        match kind.as_str() {
            "identify" => contacts.push(m.get("traits").and_then(Value::as_object)),
            "track" | "page" | "screen" => {
                contacts.push(m.get("properties").and_then(Value::as_object))
            }
            _ => {}
        }
        for (k, v) in contacts.into_iter().flatten().flatten() {
            if k.eq_ignore_ascii_case("email") {
                add(IdentifierKind::EmailSha256, v.as_str().map(str::to_string));
            } else if k.eq_ignore_ascii_case("phone") {
                add(IdentifierKind::PhoneSha256, id_of(Some(v)));
            }
        }
        if app {
            if let Some(d) = child(context, "device") {
                let tracking_off = matches!(d.get("adTrackingEnabled"), Some(Value::Bool(false)))
                    || d.get("adTrackingEnabled") == Some(&json!("0"));
                if !tracking_off {
                    add(
                        IdentifierKind::DeviceId,
                        d.get("advertisingId")
                            .and_then(Value::as_str)
                            .map(str::to_string),
                    );
                }
                add(IdentifierKind::DeviceId, id_of(d.get("id")));
            }
        } else {
            let page_url = child(context, "page").and_then(|p| p.get("url")?.as_str());
            let own_url = m.get("properties").and_then(|p| p.get("url")?.as_str());
            if let Some(url) = page_url.or(own_url) {
                for (k, v) in query::pairs(url) {
                    if !v.is_empty() && CLICK_ID_PARAMS.iter().any(|p| k.eq_ignore_ascii_case(p)) {
                        add(IdentifierKind::ClickId, Some(v.into_owned()));
                    }
                }
            }
        }
        raw.into_iter()
            .filter(|(_, v)| !v.trim().is_empty())
            .filter_map(|(kind, v)| cdp_proto::normalize(kind, &v, &opts.identifiers).ok())
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// An accepted message carries the identifiers the Spec gives it and no others, its own
        /// event id and name, and no contact field left raw in its traits or properties.
        #[test]
        fn accepted_messages_carry_what_the_spec_gives_them(
            text in prop_oneof![accepted(), (0u32..2).prop_flat_map(message)],
            app in any::<bool>(),
        ) {
            let opts = NormalizeOptions::default();
            let (out, _) = read(source(app), &text, &opts);
            if let Ok(signals) = out {
                prop_assert_eq!(signals.len(), 1);
                let s = &signals[0];
                let Value::Object(m) = serde_json::from_str::<Value>(&text).unwrap() else {
                    unreachable!("the generator writes objects")
                };
                let got: BTreeSet<Identifier> = s.identifiers.iter().cloned().collect();
                prop_assert_eq!(got.len(), s.identifiers.len(), "no identifier twice");
                prop_assert_eq!(&got, &identifier_model(&m, app, &opts), "{}", text);
                prop_assert_eq!(Some(s.event_id.clone()), id_of(m.get("messageId")));
                let kind = m["type"].as_str().unwrap().trim().to_ascii_lowercase();
                let event = s.event.as_ref().unwrap();
                prop_assert_eq!(&event.kind, &kind);
                let name = match kind.as_str() {
                    "track" => m["event"].as_str().map(str::to_string),
                    "page" => Some("Page Viewed".to_string()),
                    "screen" => Some("Screen Viewed".to_string()),
                    _ => None,
                };
                prop_assert_eq!(&event.name, &name);
                // A mobile context's app and OS descriptors (no generated event has its own).
                for (object, prop) in [("app", "app"), ("os", "os")] {
                    for field in ["name", "version"] {
                        let want = child(m.get("context"), object)
                            .and_then(|o| o.get(field))
                            .filter(|v| app && !v.is_null());
                        let got = event.properties.get(&format!("{prop}_{field}"));
                        prop_assert_eq!(got, want, "{}.{} of {}", object, field, text);
                    }
                }
                for key in s.traits.keys().chain(event.properties.keys()) {
                    prop_assert!(!is_contact_key(key), "{} left raw in {}", key, text);
                }
            }
        }

        /// A batch yields what its messages yield alone, given the envelope's `sentAt`.
        #[test]
        fn batches_read_as_their_messages_alone(
            (messages, sent_at) in (0u32..2).prop_flat_map(batch),
            app in any::<bool>(),
        ) {
            let opts = NormalizeOptions::default();
            let text = batch_text(&messages, &sent_at);
            let got = read(source(app), &text, &opts);
            prop_assert_eq!(got, batch_model(source(app), &messages, &sent_at, &opts), "{}", text);
        }

        /// Key order, spacing and repeated keys (the last wins) do not change what a payload
        /// yields; spaced out, a batch also takes the path that measures each message.
        #[test]
        fn payloads_read_the_same_however_they_are_written(text in payload(1), app in any::<bool>()) {
            let opts = NormalizeOptions::default();
            let value: Value = serde_json::from_str(&text).unwrap();
            let spaced = serde_json::to_string_pretty(&value).unwrap();
            let compact = value.to_string();
            prop_assert_eq!(read(source(app), &text, &opts), read(source(app), &compact, &opts), "{}", text);
            prop_assert_eq!(read(source(app), &text, &opts), read(source(app), &spaced, &opts), "{}", text);
        }
    }

    #[test]
    fn batch_messages_are_measured_as_compact_json_in_order() {
        let opts = NormalizeOptions {
            max_message_bytes: 300,
            ..NormalizeOptions::default()
        };
        let message = |pad: usize, extra: &str| {
            format!(
                r#"{{"type":"track","event":"E","userId":"u","messageId":"m",{extra}"properties":{{"p":"{}"}}}}"#,
                "x".repeat(pad)
            )
        };
        let small = message(10, "");
        let big = message(300, "");
        // Spaces make the payload look large; compact, its message is small.
        let spaced = format!(r#"{{"batch":[{small}{}]}}"#, " ".repeat(400));
        let (out, _) = read(Source::Web, &spaced, &opts);
        assert_eq!(out.unwrap().len(), 1);
        let (out, _) = read(
            Source::Web,
            &format!(r#"{{"batch":[{small},{big}]}}"#),
            &opts,
        );
        let r = out.unwrap_err();
        assert_eq!(r.code, rejection::OVERSIZE);
        assert!(
            r.message.starts_with("batch[1]: message is "),
            "{}",
            r.message
        );
        // A message is measured when its turn comes: an earlier bad message is named first.
        let bad = message(10, r#""timestamp":"yesterday","#);
        let (out, _) = read(Source::App, &format!(r#"{{"batch":[{bad},{big}]}}"#), &opts);
        let r = out.unwrap_err();
        assert_eq!(r.code, rejection::INVALID_TIMESTAMP, "{}", r.message);
        assert!(r.message.starts_with("batch[0]: "), "{}", r.message);
        // A large payload that is not Segment goes to its source's own parser.
        let ga4 = format!(
            r#"{{"event_name":"e","user_pseudo_id":"p","event_timestamp":1714564800000000,"x":"{}"}}"#,
            "9".repeat(400)
        );
        let (out, _) = read(Source::App, &ga4, &opts);
        assert_eq!(
            out.unwrap_err().code,
            rejection::OVERSIZE,
            "a GA4 row is one message"
        );
        let (out, _) = read(Source::Web, &ga4, &opts);
        assert_eq!(out.unwrap_err().code, rejection::UNKNOWN_SHAPE);
    }
}
