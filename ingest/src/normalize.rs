//! The entry point from raw bytes to signals: size limits, JSON parsing, dispatch to the parser
//! of the record's source, and the assembly of a [`Signal`] from what a parser found.

use crate::consent::IdentityConsent;
use crate::dropped::DroppedIdentifiers;
use crate::fields::Object;
use crate::identifiers::IdentifierSet;
use crate::json::{self, Json};
use crate::links::{star, LinkRule};
use crate::rejection::{self, invalid_json, not_an_object, oversize};
use crate::{app, crm, media, web};
use cdp_proto::dlq::Rejection;
use cdp_proto::{Consent, EventInfo, Identifier, Signal, Source, Timestamp};

/// Segment's limit for one message, which ingest applies to every event (web, app, media).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 32 * 1024;
/// Segment's limit for a batch request, which ingest applies to every record (CRM records, whose
/// custom fields make them large, are limited by this alone).
pub const DEFAULT_MAX_RECORD_BYTES: usize = 500 * 1024;

/// How payloads are normalised.
#[derive(Debug, Clone)]
pub struct NormalizeOptions {
    /// How identifier values are normalised (the default phone region).
    pub identifiers: cdp_proto::NormalizeOptions,
    /// Largest single event: a non-batch payload, or one message inside a batch envelope.
    pub max_message_bytes: usize,
    /// Largest record (payload) of any source.
    pub max_record_bytes: usize,
    /// Which consent purposes make up identity consent, and what their denial does.
    pub identity_consent: IdentityConsent,
}

impl Default for NormalizeOptions {
    fn default() -> Self {
        Self {
            identifiers: cdp_proto::NormalizeOptions::default(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            identity_consent: IdentityConsent::default(),
        }
    }
}

/// Normalises one raw record of `source` into the signals it holds (several for a Segment
/// `batch`), or says why it cannot be used. Pure: no I/O, no clock (`received_at` is the bus
/// record's timestamp).
pub fn normalize_payload(
    source: Source,
    tenant: &str,
    payload: &[u8],
    received_at: Timestamp,
    opts: &NormalizeOptions,
) -> Result<Vec<Signal>, Rejection> {
    let mut dropped = DroppedIdentifiers::default();
    normalize_payload_counted(source, tenant, payload, received_at, opts, &mut dropped)
}

/// [`normalize_payload`], adding the identifier values it dropped to `dropped`. Drops are added
/// only when the record is accepted: a rejected record is counted once, by its rejection code.
pub fn normalize_payload_counted(
    source: Source,
    tenant: &str,
    payload: &[u8],
    received_at: Timestamp,
    opts: &NormalizeOptions,
    dropped: &mut DroppedIdentifiers,
) -> Result<Vec<Signal>, Rejection> {
    if payload.len() > opts.max_record_bytes {
        return Err(oversize("record", payload.len(), opts.max_record_bytes));
    }
    // Small enough payloads skip the per-message size check, and Segment ones may then leave
    // out the parts of `context` no parser reads (their sizes no longer matter).
    let messages_fit = messages_fit(payload, opts.max_message_bytes);
    let lean = messages_fit && matches!(source, Source::Web | Source::App);
    let value = parse_json(payload, lean)?;
    let Json::Object(obj) = value else {
        return Err(not_an_object("payload"));
    };
    let mut local = DroppedIdentifiers::default();
    let mut cx = Context {
        source,
        tenant,
        received_at,
        options: opts,
        payload_len: payload.len(),
        messages_fit,
        dropped: &mut local,
    };
    let signals = match source {
        Source::Web => web::parse(&obj, &mut cx)?,
        Source::App => app::parse(&obj, &mut cx)?,
        Source::Crm => crm::parse(&obj, &mut cx)?,
        Source::Media => media::parse(&obj, &mut cx)?,
    };
    dropped.merge(&local);
    Ok(signals)
}

/// The payload as a JSON tree. UTF-8 is checked once for the whole payload, so the parser need
/// not check each string again; a payload that is not UTF-8 is parsed from bytes only to get
/// serde_json's own error for it, which says where.
fn parse_json(payload: &[u8], lean: bool) -> Result<Json<'_>, Rejection> {
    match std::str::from_utf8(payload) {
        Ok(text) if lean => json::parse_segment(text).map_err(|e| invalid_json(&e)),
        Ok(text) => serde_json::from_str(text).map_err(|e| invalid_json(&e)),
        Err(_) => match serde_json::from_slice::<Json<'_>>(payload) {
            Err(e) => Err(invalid_json(&e)),
            // Bytes that are not UTF-8 can be neither a JSON string nor JSON syntax.
            Ok(_) => Err(Rejection::new(
                rejection::INVALID_JSON,
                "payload is not valid UTF-8",
            )),
        },
    }
}

/// `true` when no message inside `payload` can be larger than `limit` as compact JSON, the
/// measure of the per-message limit in a batch. Compact JSON never makes strings, keys or
/// structure longer than they were written; a number (at least one digit) becomes at most 24
/// characters. So a payload within `limit` even with every digit grown by 23 holds no oversize
/// message.
fn messages_fit(payload: &[u8], limit: usize) -> bool {
    if payload.len() > limit {
        return false;
    }
    let digits = payload.iter().filter(|b| b.is_ascii_digit()).count();
    payload.len().saturating_add(digits.saturating_mul(23)) <= limit
}

/// What every parser needs besides the payload.
pub(crate) struct Context<'a> {
    pub(crate) source: Source,
    pub(crate) tenant: &'a str,
    pub(crate) received_at: Timestamp,
    pub(crate) options: &'a NormalizeOptions,
    /// Size of the whole record, for the per-message limit of non-batch payloads.
    pub(crate) payload_len: usize,
    /// No message of the payload can exceed the per-message limit (see `messages_fit`).
    pub(crate) messages_fit: bool,
    pub(crate) dropped: &'a mut DroppedIdentifiers,
}

impl Context<'_> {
    pub(crate) fn identifiers(&mut self) -> IdentifierSet<'_> {
        IdentifierSet::new(&self.options.identifiers, self.dropped)
    }

    /// Rejects a non-batch event payload larger than one message may be.
    pub(crate) fn check_message_size(&self) -> Result<(), Rejection> {
        let limit = self.options.max_message_bytes;
        if self.payload_len > limit {
            Err(oversize("message", self.payload_len, limit))
        } else {
            Ok(())
        }
    }
}

/// What a parser found in one event, before it becomes a [`Signal`].
pub(crate) struct Draft {
    pub(crate) event_id: String,
    pub(crate) event_time: Timestamp,
    pub(crate) identifiers: Vec<Identifier>,
    pub(crate) event: Option<EventInfo>,
    pub(crate) traits: Object,
    pub(crate) consent: Consent,
}

impl Draft {
    /// The signal, with links from the strongest identifier under `rule(ids, centre, other)`,
    /// unless the event denies identity consent (see [`crate::consent`]). An event with no
    /// identifier left cannot join anything and is rejected.
    pub(crate) fn into_signal(
        self,
        cx: &mut Context<'_>,
        rule: impl Fn(&[Identifier], usize, usize) -> LinkRule,
    ) -> Result<Signal, Rejection> {
        if self.identifiers.is_empty() {
            return Err(rejection::no_identifiers(cx.source.as_str()));
        }
        let ids = &self.identifiers;
        let links = if cx.options.identity_consent.allows_links(&self.consent) {
            star(ids, |c, o| rule(ids, c, o))
        } else {
            if ids.len() > 1 {
                cx.dropped.record_unlinked();
            }
            Vec::new()
        };
        Ok(Signal {
            tenant: cx.tenant.to_string(),
            source: cx.source,
            event_id: self.event_id,
            event_time: self.event_time,
            received_at: cx.received_at,
            links,
            identifiers: self.identifiers,
            event: self.event,
            traits: self.traits.into_iter().collect(),
            consent: self.consent,
        })
    }
}

/// Event properties from a JSON object map.
pub(crate) fn event(kind: &str, name: Option<String>, properties: Object) -> EventInfo {
    EventInfo {
        kind: kind.to_string(),
        name,
        properties: properties.into_iter().collect(),
    }
}
