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

use crate::consent::{self, GOOGLE_CONSENT_TYPES};
use crate::fields::{id_value, insert_absent, is_contact_key, Fields, Object};
use crate::identifiers::IdentifierSet;
use crate::json::{Json, Obj};
use crate::links::{event_rule, LinkRule};
use crate::normalize::{event, Context, Draft};
use crate::rejection::{
    self, in_batch, invalid_timestamp, missing, not_an_object, oversize, wrong_type,
};
use crate::timestamp::{skew_corrected, text_field};
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
        let t = match s.trim().to_ascii_lowercase().as_str() {
            "track" => MessageType::Track,
            "page" => MessageType::Page,
            "screen" => MessageType::Screen,
            "identify" => MessageType::Identify,
            "alias" => MessageType::Alias,
            "group" => MessageType::Group,
            _ => return None,
        };
        Some(t)
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
            let size = serialized_len(message);
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
        Flavor::Web => web::landing_page(f, context, &mut ids, &mut properties)?,
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

/// Size of a message as compact JSON: the measure of the per-message limit inside a batch,
/// where the original byte span is no longer known.
fn serialized_len(v: &Json<'_>) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a Value into a sink that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, v);
    count.0
}
