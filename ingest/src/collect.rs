//! Request bodies of the Segment HTTP Tracking API as `cdp collect` receives them, without HTTP:
//! which messages a request holds, whether each is one the ingest stage will accept, and the
//! raw record each becomes.
//!
//! A request is accepted or refused whole, like ingest's batches: a partly accepted batch would
//! leave the client unable to tell which messages to send again. Each accepted message becomes
//! one raw record: on the app topic when its `context.app` or `context.device` is an object
//! (every Segment mobile library sets both; analytics.js and the server libraries set neither),
//! else on the web topic; keyed by `anonymousId`, else `userId`, so one device's events before
//! and after a login stay on one partition. As Segment does, the collector stamps `receivedAt`
//! (its own clock, always: ingest's clock-skew correction needs the server's reading) and a
//! `messageId` when the client sent none. Batch-level `context` and `integrations` fill keys the
//! message lacks, and the batch's `sentAt` fills a missing one; a `writeKey` in a body is taken
//! out, so no raw record carries it.
//!
//! Bodies may come gzip-compressed (`Content-Encoding: gzip`, what Segment's libraries send with
//! compression on); [`decode`] inflates them within the route's body limit, so a small body that
//! inflates to gigabytes (a zip bomb) costs no more than the limit. Other encodings are refused.

use cdp_proto::Source;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::io::Read;

/// The routes of the Tracking API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Batch,
    Track,
    Identify,
    Page,
    Screen,
    Alias,
    Group,
}

impl Route {
    pub const ALL: [Route; 7] = [
        Route::Batch,
        Route::Track,
        Route::Identify,
        Route::Page,
        Route::Screen,
        Route::Alias,
        Route::Group,
    ];

    /// The last path segment (`/v1/{name}`), also the metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Batch => "batch",
            Route::Track => "track",
            Route::Identify => "identify",
            Route::Page => "page",
            Route::Screen => "screen",
            Route::Alias => "alias",
            Route::Group => "group",
        }
    }

    /// The message type a single-message route implies; `None` for `batch`.
    fn message_type(self) -> Option<&'static str> {
        match self {
            Route::Batch => None,
            other => Some(other.as_str()),
        }
    }
}

/// Segment's message types.
const MESSAGE_TYPES: [&str; 6] = ["track", "page", "screen", "identify", "alias", "group"];

/// Size limits of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest message, as the compact JSON record it becomes.
    pub max_message_bytes: usize,
    /// Largest `batch` request body.
    pub max_batch_bytes: usize,
}

impl Limits {
    /// Largest request body `route` takes.
    pub fn body_limit(&self, route: Route) -> usize {
        match route {
            Route::Batch => self.max_batch_bytes,
            _ => self.max_message_bytes,
        }
    }
}

/// Why a request is refused; each has a stable [`code`](CollectError::code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CollectError {
    #[error("the body is not JSON: {0}")]
    InvalidJson(String),
    #[error("{0}")]
    InvalidMessage(String),
    #[error("{0}")]
    MissingField(String),
    #[error("{0}")]
    InvalidType(String),
    #[error("{at} is {size} bytes, more than the {limit} allowed per message")]
    MessageTooLarge {
        at: String,
        size: usize,
        limit: usize,
    },
    #[error("the batch is {size} bytes or more, more than the {limit} allowed per batch")]
    BatchTooLarge { size: usize, limit: usize },
    #[error("the body's Content-Encoding is not accepted: send gzip or plain JSON")]
    UnsupportedEncoding,
    #[error("the gzip body could not be inflated: {0}")]
    InvalidGzip(String),
    #[error("the gzip body inflates to more than the {limit} bytes allowed for this route")]
    InflatedTooLarge { limit: usize },
}

impl CollectError {
    pub fn code(&self) -> &'static str {
        match self {
            CollectError::InvalidJson(_) => "invalid_json",
            CollectError::InvalidMessage(_) => "invalid_message",
            CollectError::MissingField(_) => "missing_field",
            CollectError::InvalidType(_) => "invalid_type",
            CollectError::MessageTooLarge { .. } => "message_too_large",
            CollectError::BatchTooLarge { .. } => "batch_too_large",
            CollectError::UnsupportedEncoding => "unsupported_encoding",
            // A body that cannot be read is one that is not JSON, as for a broken plain body.
            CollectError::InvalidGzip(_) => "invalid_json",
            CollectError::InflatedTooLarge { .. } => "body_too_large",
        }
    }
}

/// A request body's `Content-Encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
}

impl Encoding {
    /// The encoding a `Content-Encoding` header value names (`None`: no header). Only one
    /// coding is accepted: a list (`gzip, br`) is refused like any coding other than gzip.
    pub fn from_header(value: Option<&[u8]>) -> Result<Encoding, CollectError> {
        let Some(value) = value else {
            return Ok(Encoding::Identity);
        };
        let value = value.trim_ascii();
        if value.is_empty() || value.eq_ignore_ascii_case(b"identity") {
            Ok(Encoding::Identity)
        } else if value.eq_ignore_ascii_case(b"gzip") || value.eq_ignore_ascii_case(b"x-gzip") {
            Ok(Encoding::Gzip)
        } else {
            Err(CollectError::UnsupportedEncoding)
        }
    }
}

/// The JSON of a body sent with `encoding`: as it is, or inflated to at most `limit` bytes
/// (the route's body limit, [`Limits::body_limit`]). Inflating stops one byte past the limit, so
/// an oversize body is refused without ever being held whole.
pub fn decode(
    encoding: Encoding,
    body: &[u8],
    limit: usize,
) -> Result<Cow<'_, [u8]>, CollectError> {
    match encoding {
        Encoding::Identity => Ok(Cow::Borrowed(body)),
        Encoding::Gzip => {
            // Concatenated gzip members are one body (RFC 1952), as `gzip -c a b` writes them.
            let decoder = flate2::read::MultiGzDecoder::new(body);
            let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
            let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
            decoder
                .take(cap)
                .read_to_end(&mut out)
                .map_err(|e| CollectError::InvalidGzip(e.to_string()))?;
            if out.len() > limit {
                return Err(CollectError::InflatedTooLarge { limit });
            }
            Ok(Cow::Owned(out))
        }
    }
}

/// A request body that parsed as JSON, before its messages are checked.
#[derive(Debug)]
pub struct Body {
    route: Route,
    root: Map<String, Value>,
}

/// One accepted message, as the raw record it becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Web or app: which raw topic.
    pub source: Source,
    /// `anonymousId`, else `userId`.
    pub key: String,
    /// The message as compact JSON, stamped.
    pub value: Vec<u8>,
}

/// Parses a body of `route`; `body` must already be within [`Limits::body_limit`].
pub fn parse(route: Route, body: &[u8]) -> Result<Body, CollectError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| CollectError::InvalidJson(e.to_string()))?;
    match value {
        Value::Object(root) => Ok(Body { route, root }),
        _ => Err(CollectError::InvalidMessage(
            "the body must be a JSON object".into(),
        )),
    }
}

impl Body {
    /// The `writeKey` of the body (analytics.js and analytics-python send one there).
    pub fn write_key(&self) -> Option<&str> {
        self.root.get("writeKey").and_then(Value::as_str)
    }

    /// How many messages the body holds (a batch's entries; one otherwise).
    pub fn message_count(&self) -> usize {
        match (self.route, self.root.get("batch")) {
            (Route::Batch, Some(Value::Array(messages))) => messages.len(),
            (Route::Batch, _) => 0,
            _ => 1,
        }
    }

    /// Checks every message and stamps it with `received_at` (RFC 3339) and, where it has none,
    /// a `messageId` from `new_id`.
    pub fn into_messages(
        self,
        limits: &Limits,
        received_at: &str,
        new_id: &mut dyn FnMut() -> String,
    ) -> Result<Vec<Message>, CollectError> {
        let Body { route, mut root } = self;
        root.remove("writeKey");
        let Some(implied) = route.message_type() else {
            return batch(root, limits, received_at, new_id);
        };
        match root.get("type") {
            None => {
                root.insert("type".into(), Value::String(implied.into()));
            }
            Some(Value::String(t)) if t.trim().eq_ignore_ascii_case(implied) => {}
            Some(_) => {
                return Err(CollectError::InvalidType(format!(
                    "field `type` must be {implied:?} on /v1/{implied} (or absent)"
                )))
            }
        }
        let message = accept(root, "the message", limits, received_at, new_id)?;
        Ok(vec![message])
    }
}

fn batch(
    mut root: Map<String, Value>,
    limits: &Limits,
    received_at: &str,
    new_id: &mut dyn FnMut() -> String,
) -> Result<Vec<Message>, CollectError> {
    let messages = match root.remove("batch") {
        Some(Value::Array(messages)) if !messages.is_empty() => messages,
        Some(Value::Array(_)) => {
            return Err(CollectError::MissingField(
                "field `batch` has no messages".into(),
            ))
        }
        Some(_) => {
            return Err(CollectError::InvalidMessage(
                "field `batch` must be an array of messages".into(),
            ))
        }
        None => {
            return Err(CollectError::MissingField(
                "field `batch` is missing".into(),
            ))
        }
    };
    let shared: Vec<(&str, Map<String, Value>)> = ["context", "integrations"]
        .into_iter()
        .filter_map(|key| match root.remove(key) {
            Some(Value::Object(map)) => Some((key, map)),
            _ => None,
        })
        .collect();
    let sent_at = root.remove("sentAt").filter(Value::is_string);
    let mut out = Vec::with_capacity(messages.len());
    for (i, message) in messages.into_iter().enumerate() {
        let at = format!("batch[{i}]");
        let Value::Object(mut message) = message else {
            return Err(CollectError::InvalidMessage(format!(
                "{at} must be a JSON object"
            )));
        };
        message.remove("writeKey");
        for (key, fill) in &shared {
            fill_absent(&mut message, key, fill);
        }
        if let Some(sent_at) = &sent_at {
            message.entry("sentAt").or_insert_with(|| sent_at.clone());
        }
        out.push(accept(message, &at, limits, received_at, new_id)?);
    }
    Ok(out)
}

/// Gives `message[key]` every entry of `fill` it does not have itself.
fn fill_absent(message: &mut Map<String, Value>, key: &str, fill: &Map<String, Value>) {
    match message.get_mut(key) {
        Some(Value::Object(own)) => {
            for (k, v) in fill {
                own.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        Some(_) => {}
        None => {
            message.insert(key.to_string(), Value::Object(fill.clone()));
        }
    }
}

/// Checks one message (`at` names it in errors) and makes it a record.
fn accept(
    mut m: Map<String, Value>,
    at: &str,
    limits: &Limits,
    received_at: &str,
    new_id: &mut dyn FnMut() -> String,
) -> Result<Message, CollectError> {
    let kind = match m.get("type") {
        None => return Err(CollectError::MissingField(format!("{at} has no `type`"))),
        Some(Value::String(t)) => {
            let t = t.trim().to_ascii_lowercase();
            MESSAGE_TYPES
                .into_iter()
                .find(|known| *known == t)
                .ok_or_else(|| {
                    CollectError::InvalidType(format!(
                        "{at}: `type` must be one of {}",
                        MESSAGE_TYPES.join(", ")
                    ))
                })?
        }
        Some(_) => {
            return Err(CollectError::InvalidType(format!(
                "{at}: `type` must be a string"
            )))
        }
    };
    let user_id = id_text(&m, "userId", at)?;
    let anonymous_id = id_text(&m, "anonymousId", at)?;
    let key = match (&anonymous_id, &user_id) {
        (Some(a), _) => a.clone(),
        (None, Some(u)) => u.clone(),
        (None, None) => {
            return Err(CollectError::MissingField(format!(
                "{at} needs a `userId` or an `anonymousId`"
            )))
        }
    };
    if kind == "alias" {
        if user_id.is_none() {
            return Err(CollectError::MissingField(format!(
                "{at}: an alias needs a `userId`"
            )));
        }
        if id_text(&m, "previousId", at)?.is_none() {
            return Err(CollectError::MissingField(format!(
                "{at}: an alias needs a `previousId`"
            )));
        }
    }
    if kind == "track" {
        match m.get("event") {
            Some(Value::String(e)) if !e.trim().is_empty() => {}
            Some(Value::String(_)) | None => {
                return Err(CollectError::MissingField(format!(
                    "{at}: a track call needs an `event` name"
                )))
            }
            Some(_) => {
                return Err(CollectError::InvalidMessage(format!(
                    "{at}: `event` must be a string"
                )))
            }
        }
    }
    if let Some(context) = m.get("context") {
        if !context.is_object() {
            return Err(CollectError::InvalidMessage(format!(
                "{at}: `context` must be an object"
            )));
        }
    }
    match id_text(&m, "messageId", at)? {
        Some(_) => {}
        None => {
            m.insert("messageId".into(), Value::String(new_id()));
        }
    }
    m.insert("receivedAt".into(), Value::String(received_at.into()));
    let source = if is_mobile(&m) {
        Source::App
    } else {
        Source::Web
    };
    let message = Value::Object(m);
    let size = crate::json::compact_len(&message);
    if size > limits.max_message_bytes {
        return Err(CollectError::MessageTooLarge {
            at: at.to_string(),
            size,
            limit: limits.max_message_bytes,
        });
    }
    let value = serde_json::to_vec(&message)
        .map_err(|e| CollectError::InvalidMessage(format!("{at}: {e}")))?;
    Ok(Message { source, key, value })
}

/// An id field as text: Segment libraries send strings, some callers numbers. Empty is absent.
fn id_text(m: &Map<String, Value>, key: &str, at: &str) -> Result<Option<String>, CollectError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(CollectError::InvalidMessage(format!(
            "{at}: `{key}` must be a string"
        ))),
    }
}

/// A message from a Segment mobile library: its context describes the app or the device.
fn is_mobile(m: &Map<String, Value>) -> bool {
    m.get("context").is_some_and(|c| {
        c.get("app").is_some_and(Value::is_object) || c.get("device").is_some_and(Value::is_object)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: Limits = Limits {
        max_message_bytes: 32768,
        max_batch_bytes: 512000,
    };
    const NOW: &str = "2026-11-23T10:00:00.000Z";

    fn messages(route: Route, body: Value) -> Result<Vec<Message>, CollectError> {
        let mut n = 0;
        let mut new_id = || {
            n += 1;
            format!("generated-{n}")
        };
        parse(route, body.to_string().as_bytes())?.into_messages(&LIMITS, NOW, &mut new_id)
    }

    fn value(m: &Message) -> Value {
        serde_json::from_slice(&m.value).unwrap()
    }

    #[test]
    fn a_batch_becomes_one_stamped_record_per_message() {
        let body = json!({
            "writeKey": "wk",
            "sentAt": "2026-11-23T09:59:59Z",
            "context": {"library": {"name": "analytics-python"}},
            "batch": [
                {"type": "identify", "userId": "u1", "traits": {"email": "a@example.com"}, "messageId": "m1"},
                {"type": "track", "event": "Signed Up", "anonymousId": "a1", "userId": "u1",
                 "context": {"ip": "1.2.3.4"}},
                {"type": "screen", "anonymousId": "a2", "name": "Home",
                 "context": {"app": {"name": "Shop"}, "device": {"advertisingId": "x"}}},
            ]
        });
        let out = messages(Route::Batch, body).unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(
            out.iter().map(|m| m.source).collect::<Vec<_>>(),
            [Source::Web, Source::Web, Source::App]
        );
        assert_eq!(
            out.iter().map(|m| m.key.as_str()).collect::<Vec<_>>(),
            ["u1", "a1", "a2"]
        );
        let first = value(&out[0]);
        assert_eq!(first["messageId"], "m1", "a client's id is kept");
        assert_eq!(first["receivedAt"], NOW);
        assert_eq!(first["sentAt"], "2026-11-23T09:59:59Z");
        assert_eq!(first["context"]["library"]["name"], "analytics-python");
        assert!(first.get("writeKey").is_none());
        let second = value(&out[1]);
        assert_eq!(second["messageId"], "generated-1");
        assert_eq!(second["context"]["ip"], "1.2.3.4");
        assert_eq!(second["context"]["library"]["name"], "analytics-python");
    }

    #[test]
    fn a_single_message_route_implies_its_type() {
        let out = messages(
            Route::Page,
            json!({"anonymousId": "a", "name": "Pricing", "writeKey": "wk"}),
        )
        .unwrap();
        let v = value(&out[0]);
        assert_eq!(v["type"], "page");
        assert!(v.get("writeKey").is_none());
        let err = messages(Route::Track, json!({"type": "identify", "userId": "u"})).unwrap_err();
        assert_eq!(err.code(), "invalid_type");
    }

    #[test]
    fn a_body_names_its_write_key() {
        let body = parse(Route::Batch, br#"{"writeKey":"abc","batch":[]}"#).unwrap();
        assert_eq!(body.write_key(), Some("abc"));
        assert_eq!(body.message_count(), 0);
        let body = parse(Route::Track, br#"{"event":"x"}"#).unwrap();
        assert_eq!(body.write_key(), None);
        assert_eq!(body.message_count(), 1);
        let body = parse(Route::Batch, br#"{"batch":[{}, {}]}"#).unwrap();
        assert_eq!(body.message_count(), 2);
    }

    #[test]
    fn bad_requests_are_refused_with_a_code_naming_the_message() {
        let cases = [
            (
                Route::Batch,
                json!({"batch": [{"userId": "u"}]}),
                "missing_field",
                "batch[0]",
            ),
            (Route::Batch, json!({"batch": []}), "missing_field", "batch"),
            (
                Route::Batch,
                json!({"batch": {}}),
                "invalid_message",
                "batch",
            ),
            (Route::Batch, json!({}), "missing_field", "batch"),
            (
                Route::Batch,
                json!({"batch": [{"type": "track", "event": "E", "userId": "u"}, 3]}),
                "invalid_message",
                "batch[1]",
            ),
            (
                Route::Batch,
                json!({"batch": [{"type": "launch", "userId": "u"}]}),
                "invalid_type",
                "batch[0]",
            ),
            (
                Route::Track,
                json!({"event": "E"}),
                "missing_field",
                "userId",
            ),
            (
                Route::Track,
                json!({"userId": "u"}),
                "missing_field",
                "event",
            ),
            (
                Route::Track,
                json!({"userId": {"id": 1}, "event": "E"}),
                "invalid_message",
                "userId",
            ),
            (
                Route::Alias,
                json!({"userId": "u"}),
                "missing_field",
                "previousId",
            ),
            (
                Route::Alias,
                json!({"anonymousId": "a", "previousId": "p"}),
                "missing_field",
                "userId",
            ),
            (
                Route::Identify,
                json!({"userId": "u", "context": "web"}),
                "invalid_message",
                "context",
            ),
        ];
        for (route, body, code, names) in cases {
            let err = messages(route, body.clone()).unwrap_err();
            assert_eq!(err.code(), code, "{body}: {err}");
            assert!(err.to_string().contains(names), "{body}: {err}");
        }
        let err = parse(Route::Batch, b"{\"batch\": [").unwrap_err();
        assert_eq!(err.code(), "invalid_json");
        let err = parse(Route::Batch, b"[1]").unwrap_err();
        assert_eq!(err.code(), "invalid_message");
    }

    #[test]
    fn a_message_over_the_limit_is_refused_as_its_record_would_be() {
        let limits = Limits {
            max_message_bytes: 200,
            max_batch_bytes: 10_000,
        };
        let big = "x".repeat(200);
        let body = json!({"batch": [
            {"type": "track", "event": "E", "userId": "u"},
            {"type": "track", "event": "E", "userId": "u", "properties": {"p": big}},
        ]});
        let err = parse(Route::Batch, body.to_string().as_bytes())
            .unwrap()
            .into_messages(&limits, NOW, &mut || "id".into())
            .unwrap_err();
        assert_eq!(err.code(), "message_too_large");
        assert!(err.to_string().starts_with("batch[1] is"), "{err}");
        let ok = json!({"batch": [{"type": "track", "event": "E", "userId": "u"}]});
        let out = parse(Route::Batch, ok.to_string().as_bytes())
            .unwrap()
            .into_messages(&limits, NOW, &mut || "id".into())
            .unwrap();
        assert!(out[0].value.len() <= limits.max_message_bytes);
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn encodings_are_gzip_or_none() {
        for (header, want) in [
            (None, Some(Encoding::Identity)),
            (Some(&b"identity"[..]), Some(Encoding::Identity)),
            (Some(b""), Some(Encoding::Identity)),
            (Some(b"gzip"), Some(Encoding::Gzip)),
            (Some(b" GZip "), Some(Encoding::Gzip)),
            (Some(b"x-gzip"), Some(Encoding::Gzip)),
            (Some(b"br"), None),
            (Some(b"deflate"), None),
            (Some(b"gzip, br"), None),
        ] {
            let got = Encoding::from_header(header);
            match want {
                Some(e) => assert_eq!(got, Ok(e), "{header:?}"),
                None => assert_eq!(
                    got.unwrap_err().code(),
                    "unsupported_encoding",
                    "{header:?}"
                ),
            }
        }
    }

    #[test]
    fn a_gzip_batch_reads_as_the_plain_one() {
        let body = json!({"batch": [
            {"type": "track", "event": "Signed Up", "userId": "u1", "messageId": "m1"},
            {"type": "identify", "userId": "u1", "traits": {"plan": "pro"}, "messageId": "m2"},
        ]})
        .to_string();
        let mut members = gzip(&body.as_bytes()[..10]);
        members.extend(gzip(&body.as_bytes()[10..]));
        for compressed in [gzip(body.as_bytes()), members] {
            let plain = decode(Encoding::Gzip, &compressed, body.len()).unwrap();
            assert_eq!(plain.as_ref(), body.as_bytes());
            let read = |bytes: &[u8]| {
                parse(Route::Batch, bytes)
                    .unwrap()
                    .into_messages(&LIMITS, NOW, &mut || "id".into())
                    .unwrap()
            };
            assert_eq!(read(&plain), read(body.as_bytes()));
        }
        assert!(matches!(
            decode(Encoding::Identity, body.as_bytes(), 1),
            Ok(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn a_zip_bomb_is_refused_at_the_limit() {
        // 16 MB of zeros compress to about 16 KB.
        let bomb = gzip(&vec![0u8; 16 << 20]);
        assert!(bomb.len() < LIMITS.max_batch_bytes);
        let err = decode(Encoding::Gzip, &bomb, LIMITS.max_batch_bytes).unwrap_err();
        assert_eq!(err.code(), "body_too_large");
        assert_eq!(
            err,
            CollectError::InflatedTooLarge {
                limit: LIMITS.max_batch_bytes
            }
        );
        // Exactly at the limit is allowed.
        let at_limit = gzip(&vec![b' '; 1000]);
        assert_eq!(decode(Encoding::Gzip, &at_limit, 1000).unwrap().len(), 1000);
        assert_eq!(
            decode(Encoding::Gzip, &at_limit, 999).unwrap_err().code(),
            "body_too_large"
        );
    }

    #[test]
    fn a_broken_gzip_body_is_unreadable_json() {
        let good = gzip(b"{\"batch\": []}");
        for broken in [
            &b"{\"batch\": []}"[..],
            &good[..good.len() - 4],
            &[0x1f, 0x8b, 0x08],
        ] {
            let err = decode(Encoding::Gzip, broken, 1000).unwrap_err();
            assert!(matches!(err, CollectError::InvalidGzip(_)), "{err:?}");
            assert_eq!(err.code(), "invalid_json");
        }
    }

    #[test]
    fn limits_per_route() {
        assert_eq!(LIMITS.body_limit(Route::Batch), 512000);
        assert_eq!(LIMITS.body_limit(Route::Identify), 32768);
    }
}
