//! The entry point from raw bytes to signals: size limits, JSON parsing, dispatch to the parser
//! of the record's source, and the assembly of a [`Signal`] from what a parser found.

use crate::consent::IdentityConsent;
use crate::dropped::DroppedIdentifiers;
use crate::fields::Object;
use crate::identifiers::IdentifierSet;
use crate::json::{Json, Obj};
use crate::links::{star, LinkRule};
use crate::message::{self, Payload};
use crate::rejection::{self, invalid_json, not_an_object, oversize};
use crate::segment::{self, Flavor};
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
    let text = as_text(payload)?;
    let mut local = DroppedIdentifiers::default();
    let mut cx = Context {
        source,
        tenant,
        received_at,
        options: opts,
        payload_len: payload.len(),
        dropped: &mut local,
    };
    let signals = match source {
        Source::Web => segment_or_other(text, &mut cx, Flavor::Web)?,
        Source::App => segment_or_other(text, &mut cx, Flavor::App)?,
        Source::Crm => crm::parse(&parse_object(text)?, &mut cx)?,
        Source::Media => media::parse(&parse_object(text)?, &mut cx)?,
    };
    dropped.merge(&local);
    Ok(signals)
}

/// A web or app payload: a Segment message or batch envelope, read typed by
/// [`segment::parse`]; anything else is read as a tree by its source's parser (a GA4 row).
fn segment_or_other(
    text: &str,
    cx: &mut Context<'_>,
    flavor: Flavor,
) -> Result<Vec<Signal>, Rejection> {
    // Small enough payloads cannot hold an oversize message. Others are measured on the whole
    // tree first: the typed form keeps too little of a message to tell its size.
    let sizes = if messages_fit(text.as_bytes(), cx.options.max_message_bytes) {
        None
    } else {
        let obj = parse_object(text)?;
        if !segment::is_segment(&obj) {
            return other_shape(&obj, cx);
        }
        Some(segment::message_sizes(&obj))
    };
    match message::parse(text).map_err(|e| invalid_json(&e))? {
        Payload::NotAnObject => Err(not_an_object("payload")),
        Payload::Message(m) if m.is_segment() => segment::parse(*m, sizes.as_deref(), cx, flavor),
        Payload::Message(_) => other_shape(&parse_object(text)?, cx),
    }
}

/// A web or app payload that is not Segment.
fn other_shape(obj: &Obj<'_>, cx: &mut Context<'_>) -> Result<Vec<Signal>, Rejection> {
    match cx.source {
        Source::App => app::parse(obj, cx),
        _ => Err(web::not_segment()),
    }
}

/// The payload's JSON tree, which must be an object.
fn parse_object(text: &str) -> Result<Obj<'_>, Rejection> {
    match serde_json::from_str(text).map_err(|e| invalid_json(&e))? {
        Json::Object(obj) => Ok(obj),
        _ => Err(not_an_object("payload")),
    }
}

/// The payload as text. UTF-8 is checked once for the whole payload (with SIMD, several times
/// faster than the standard check), so the parser need not check each string again; a payload
/// that is not UTF-8 is parsed from bytes only to get serde_json's own error for it, which says
/// where.
fn as_text(payload: &[u8]) -> Result<&str, Rejection> {
    match simdutf8::basic::from_utf8(payload) {
        Ok(text) => Ok(text),
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
    // Most events are small enough to fit even if every byte were a digit: no need to count.
    if payload.len().saturating_mul(24) <= limit {
        return true;
    }
    let budget = (limit - payload.len()) / 23;
    count_digits(payload) <= budget
}

/// ASCII digits in `bytes`, counted in blocks with a byte-wide counter so that the loop
/// vectorises (a block of 255 bytes cannot overflow it).
fn count_digits(bytes: &[u8]) -> usize {
    bytes
        .chunks(255)
        .map(|block| {
            let n: u8 = block
                .iter()
                .map(|b| u8::from(b.wrapping_sub(b'0') < 10))
                .fold(0u8, u8::wrapping_add);
            usize::from(n)
        })
        .sum()
}

/// What every parser needs besides the payload.
pub(crate) struct Context<'a> {
    pub(crate) source: Source,
    pub(crate) tenant: &'a str,
    pub(crate) received_at: Timestamp,
    pub(crate) options: &'a NormalizeOptions,
    /// Size of the whole record, for the per-message limit of non-batch payloads.
    pub(crate) payload_len: usize,
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
            traits: self.traits,
            consent: self.consent,
        })
    }
}

/// Event properties from a JSON object map.
pub(crate) fn event(kind: &str, name: Option<String>, properties: Object) -> EventInfo {
    EventInfo {
        kind: kind.to_string(),
        name,
        properties,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bound as first written: every digit may grow by 23 characters.
    fn fits_by_definition(payload: &[u8], limit: usize) -> bool {
        let digits = payload.iter().filter(|b| b.is_ascii_digit()).count();
        payload.len() <= limit && payload.len() + digits * 23 <= limit
    }

    #[test]
    fn messages_fit_agrees_with_its_definition() {
        let mut payload = Vec::new();
        for i in 0..2_000u32 {
            // Digits, letters and bytes either side of the digit range, in a varying mix.
            payload.push(match i % 7 {
                0 | 3 => b'0' + (i % 10) as u8,
                1 => b'/',
                2 => b':',
                _ => b'a',
            });
            for limit in [0, 100, 1_000, 4_000, 20_000, 40_000, 48_100] {
                assert_eq!(
                    messages_fit(&payload, limit),
                    fits_by_definition(&payload, limit),
                    "len {} limit {limit}",
                    payload.len()
                );
            }
        }
        assert_eq!(count_digits(&[b'7'; 1_000]), 1_000);
    }
}
