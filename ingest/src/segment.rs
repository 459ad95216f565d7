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
//! Messages arrive in one of two forms: typed ([`crate::message`], [`parse_typed`]), the fast
//! path for every payload whose messages cannot exceed the per-message limit, and the JSON tree
//! ([`parse`]) for larger payloads, whose batch messages must each be measured. Both read the same
//! fields in the same order; a property test holds them to the same signals and rejections.

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
use crate::timestamp::{skew_corrected, text_field, text_value};
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

/// Parses a Segment message or batch envelope into its signals.
pub(crate) fn parse(
    obj: &Obj<'_>,
    cx: &mut Context<'_>,
    flavor: Flavor,
) -> Result<Vec<Signal>, Rejection> {
    let root = Fields::root(obj);
    match root.get("batch") {
        Some(Json::Array(messages)) => parse_batch(root, messages, cx, flavor),
        Some(_) => Err(wrong_type("batch", "an array")),
        None => {
            cx.check_message_size()?;
            Ok(vec![parse_message(root, None, cx, flavor)?])
        }
    }
}

/// A batch is accepted or rejected whole: a partly accepted batch could not go to the DLQ as the
/// original bytes without replaying its accepted messages twice.
fn parse_batch(
    root: Fields<'_>,
    messages: &[Json<'_>],
    cx: &mut Context<'_>,
    flavor: Flavor,
) -> Result<Vec<Signal>, Rejection> {
    if messages.is_empty() {
        return Err(Rejection::new(
            rejection::MISSING_FIELD,
            "field `batch` has no messages",
        ));
    }
    // Segment's HTTP batch call may give `sentAt` once for all messages.
    let envelope_sent_at = text_field(&root, "sentAt")?;
    let limit = cx.options.max_message_bytes;
    let mut signals = Vec::with_capacity(messages.len());
    for (i, message) in messages.iter().enumerate() {
        if !cx.messages_fit {
            let size = crate::json::compact_len(message);
            if size > limit {
                return Err(in_batch(i, oversize("message", size, limit)));
            }
        }
        let Json::Object(obj) = message else {
            return Err(in_batch(i, not_an_object("message")));
        };
        let signal = parse_message(Fields::root(obj), envelope_sent_at, cx, flavor)
            .map_err(|r| in_batch(i, r))?;
        signals.push(signal);
    }
    Ok(signals)
}

fn parse_message(
    f: Fields<'_>,
    envelope_sent_at: Option<Timestamp>,
    cx: &mut Context<'_>,
    flavor: Flavor,
) -> Result<Signal, Rejection> {
    let kind = MessageType::parse(f.required_str("type")?).ok_or_else(|| {
        Rejection::new(
            rejection::UNKNOWN_SHAPE,
            "field `type` is not a Segment message type (track, page, screen, identify, alias, group)",
        )
    })?;
    let event_id = f.record_id("messageId")?.into_owned();
    let event_time = event_time(f, envelope_sent_at, cx.received_at)?;
    let context = f.child("context", "context")?;

    let name = match kind {
        MessageType::Track => Some(f.required_str("event")?.to_string()),
        MessageType::Page => Some("Page Viewed".to_string()),
        MessageType::Screen => Some("Screen Viewed".to_string()),
        MessageType::Identify | MessageType::Alias | MessageType::Group => None,
    };
    let mut properties = match kind {
        MessageType::Group => {
            let mut p = f.map("traits")?;
            p.retain(|k, _| !is_contact_key(k));
            if let Some(group_id) = f.id_text("groupId")? {
                p.insert("group_id".into(), Value::String(group_id.into_owned()));
            }
            p
        }
        MessageType::Identify | MessageType::Alias => Object::new(),
        MessageType::Track | MessageType::Page | MessageType::Screen => f.map("properties")?,
    };
    if matches!(kind, MessageType::Page | MessageType::Screen) {
        for key in ["name", "category"] {
            if let Some(v) = f.str(key)? {
                insert_absent(&mut properties, key, Value::String(v.to_string()));
            }
        }
    }
    let consent = consent(context)?;

    let mut ids = cx.identifiers();
    let user = match f.id_text("userId")? {
        Some(v) => ids.add(IdentifierKind::UserId, &v),
        None if kind == MessageType::Alias => return Err(missing("userId")),
        None => None,
    };
    if let Some(v) = f.id_text("anonymousId")? {
        ids.add(IdentifierKind::AnonymousId, &v);
    }
    let previous = if kind == MessageType::Alias {
        let v = f
            .id_text("previousId")?
            .ok_or_else(|| missing("previousId"))?;
        ids.add(IdentifierKind::AnonymousId, &v)
    } else {
        None
    };

    // Person traits: the context's, overridden by an identify call's own.
    let mut traits = Object::new();
    if let Some(c) = context {
        if let Some(t) = c.child("traits", "context.traits")? {
            take_traits(t, &mut ids, &mut traits)?;
        }
    }
    if kind == MessageType::Identify {
        if let Some(t) = f.child("traits", "traits")? {
            take_traits(t, &mut ids, &mut traits)?;
        }
    }
    // A form's email in track properties is the person's too; it must not stay there raw.
    take_contact_properties(f, &mut ids, &mut properties)?;

    match flavor {
        Flavor::Web => {
            let url = match web::page_url(context)? {
                Some(url) => Some(url),
                None => match f.child("properties", "properties")? {
                    Some(p) => p.str("url")?,
                    None => None,
                },
            };
            web::landing_page(url, context, &mut ids, &mut properties)?
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

/// [`parse`] for a message read into typed fields ([`crate::message`]): the same checks in the
/// same order, so the same signals and the same rejections. Only for payloads whose messages
/// all fit the per-message limit (the typed form has no per-message size).
pub(crate) fn parse_typed(
    mut m: Message<'_>,
    cx: &mut Context<'_>,
    flavor: Flavor,
) -> Result<Vec<Signal>, Rejection> {
    debug_assert!(cx.messages_fit, "typed messages carry no size to check");
    match m.batch.take() {
        Some(Slot::Value(messages)) => {
            if messages.is_empty() {
                return Err(Rejection::new(
                    rejection::MISSING_FIELD,
                    "field `batch` has no messages",
                ));
            }
            let envelope_sent_at = text_value(present(&m.sent_at), || "sentAt".into())?;
            let mut signals = Vec::with_capacity(messages.len());
            for (i, message) in messages.into_iter().enumerate() {
                let Payload::Message(message) = message else {
                    return Err(in_batch(i, not_an_object("message")));
                };
                let signal = parse_typed_message(*message, envelope_sent_at, cx, flavor)
                    .map_err(|r| in_batch(i, r))?;
                signals.push(signal);
            }
            Ok(signals)
        }
        Some(Slot::Other) => Err(wrong_type("batch", "an array")),
        None | Some(Slot::Null) => {
            cx.check_message_size()?;
            Ok(vec![parse_typed_message(m, None, cx, flavor)?])
        }
    }
}

/// A typed field's value, a JSON `null` counting as absent (as [`Fields::get`] has it).
fn present<'a, 'b>(v: &'a Option<Json<'b>>) -> Option<&'a Json<'b>> {
    v.as_ref().filter(|v| !v.is_null())
}

/// A typed object field as a property map: empty when absent or null (as [`Fields::map`]).
fn take_object(slot: &mut Option<Slot<Object>>, name: &str) -> Result<Object, Rejection> {
    match slot.take() {
        None | Some(Slot::Null) => Ok(Object::new()),
        Some(Slot::Value(map)) => Ok(map),
        Some(Slot::Other) => Err(wrong_type(name, "an object")),
    }
}

fn parse_typed_message(
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
fn event_time(
    f: Fields<'_>,
    envelope_sent_at: Option<Timestamp>,
    record_time: Timestamp,
) -> Result<Timestamp, Rejection> {
    let original = text_field(&f, "originalTimestamp")?;
    let sent = text_field(&f, "sentAt")?.or(envelope_sent_at);
    let received = text_field(&f, "receivedAt")?.unwrap_or(record_time);
    let timestamp = text_field(&f, "timestamp")?;
    corrected_time(original, sent, received, timestamp, record_time)
}

/// The choice [`event_time`] makes among the times it read.
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

fn take_contact_properties(
    f: Fields<'_>,
    ids: &mut IdentifierSet<'_>,
    properties: &mut Object,
) -> Result<(), Rejection> {
    if !properties.keys().any(|k| is_contact_key(k)) {
        return Ok(());
    }
    if let Some(p) = f.child("properties", "properties")? {
        for (key, value) in p.entries() {
            if is_contact_key(key) {
                add_contact(p, key, value, ids)?;
            }
        }
    }
    properties.retain(|k, _| !is_contact_key(k));
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
