//! `cdp collect`: a Segment-compatible HTTP Tracking API (`POST /v1/batch`, `/v1/track`,
//! `/v1/identify`, `/v1/page`, `/v1/screen`, `/v1/alias`, `/v1/group`, and the short paths
//! analytics.js posts to from browsers, `/v1/b`, `/v1/t`, `/v1/i`, `/v1/p`, `/v1/s`, `/v1/a`,
//! `/v1/g`, with CORS) in front of ingest's web and app topics, so a Segment library pointed at
//! it feeds cdp.
//!
//! The write key comes as HTTP Basic auth (username, empty password: what Segment's libraries
//! send) or as `writeKey` in the body (analytics.js); it names the tenant, which travels in the
//! `cdp.tenant` header ingest reads. What a body must hold, and the records it becomes, is
//! [`cdp_ingest::collect`]; here is the HTTP around it and the way to the bus.
//!
//! Bodies may be gzip-compressed (`Content-Encoding: gzip`); the route's body limit holds for the
//! inflated body too (`body_too_large`, 413, for one that inflates past it), and any other
//! encoding is refused (`unsupported_encoding`, 415).
//!
//! Durability: a 200 is sent only once the bus has acknowledged every record of the request.
//! One producer thread owns the bus producer; requests hand it their records through a bounded
//! channel and wait for the flush, which covers every request that arrived meanwhile (group
//! commit). Backpressure: at most `collect.max_in_flight_requests` requests are read and held at
//! once; the next one gets 503 with `Retry-After` before its body is read, so memory stays
//! bounded however fast clients send. Errors are `{"error": {"code", "message"}}` like the rest of
//! the HTTP API, with the codes of [`Code`], and the same `code` and `message` on top, where
//! Segment's libraries look for them.

use crate::api::{ApiError, ErrorCode};
use crate::config::{Config, WriteKey};
use crate::http;
use crate::pipeline::{self, Counters, Stages};
use anyhow::{bail, Context, Result};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, MethodRouter};
use axum::Json;
use base64::Engine;
use cdp_bus::{Bus, OutRecord, Producer};
use cdp_ingest::collect::{self as segment, CollectError, Limits, Message, Route};
use cdp_ingest::stage::TENANT_HEADER;
use cdp_proto::Source;
use prometheus::{IntCounterVec, Opts, Registry};
use serde_json::json;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Records handed to the bus in one flush at most; more requests wait for the next flush.
const MAX_RECORDS_PER_FLUSH: usize = 20_000;
/// Seconds a client is asked to wait after a 503.
const RETRY_AFTER_SECONDS: &str = "1";

crate::error_code::error_codes! {
    /// The stable `code` of a collector error body.
    pub enum Code {
        Unauthorized = "unauthorized", UNAUTHORIZED;
        InvalidJson = "invalid_json", BAD_REQUEST;
        InvalidMessage = "invalid_message", BAD_REQUEST;
        MissingField = "missing_field", BAD_REQUEST;
        InvalidType = "invalid_type", BAD_REQUEST;
        MessageTooLarge = "message_too_large", BAD_REQUEST;
        BatchTooLarge = "batch_too_large", BAD_REQUEST;
        BodyTooLarge = "body_too_large", PAYLOAD_TOO_LARGE;
        UnsupportedEncoding = "unsupported_encoding", UNSUPPORTED_MEDIA_TYPE;
        Overloaded = "overloaded", SERVICE_UNAVAILABLE;
        Unavailable = "unavailable", SERVICE_UNAVAILABLE;
        Internal = "internal", INTERNAL_SERVER_ERROR;
    }
}

/// A refused request.
#[derive(Debug)]
pub struct Refusal {
    code: Code,
    message: String,
}

impl Refusal {
    fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<CollectError> for Refusal {
    fn from(e: CollectError) -> Self {
        let code = match &e {
            CollectError::InvalidJson(_) => Code::InvalidJson,
            CollectError::InvalidMessage(_) => Code::InvalidMessage,
            CollectError::MissingField(_) => Code::MissingField,
            CollectError::InvalidType(_) => Code::InvalidType,
            CollectError::MessageTooLarge { .. } => Code::MessageTooLarge,
            CollectError::BatchTooLarge { .. } => Code::BatchTooLarge,
            CollectError::UnsupportedEncoding => Code::UnsupportedEncoding,
            CollectError::InvalidGzip(_) => Code::InvalidJson,
            CollectError::InflatedTooLarge { .. } => Code::BodyTooLarge,
        };
        Self::new(code, e.to_string())
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let code = self.code.as_str();
        // The API's error shape, plus `code` and `message` on top, where Segment's libraries
        // (analytics-python's APIError) read them.
        let body = json!({
            "error": { "code": code, "message": &self.message },
            "code": code,
            "message": &self.message,
        });
        let mut response = (self.code.status(), Json(body)).into_response();
        if self.code.status() == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        response
    }
}

/// Records of one request on their way to the bus, and where to say how it went.
struct Job {
    records: Vec<OutRecord>,
    done: oneshot::Sender<Result<(), String>>,
}

/// The collector's counters, registered in the process's registry.
struct CollectMetrics {
    requests: IntCounterVec,
    messages: IntCounterVec,
}

impl CollectMetrics {
    fn register(registry: &Registry) -> Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "cdp_collect_requests_total",
                "Tracking API requests by route and outcome (accepted, or the error code)",
            ),
            &["route", "outcome"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        let messages = IntCounterVec::new(
            Opts::new(
                "cdp_collect_messages_total",
                "Messages by outcome: accepted (on the bus), rejected (in a refused request that \
                 parsed), failed (the bus did not acknowledge)",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(messages.clone()))?;
        Ok(Self { requests, messages })
    }
}

/// The Tracking API's state: keys, limits, and the way to the producer thread.
pub struct Collector {
    keys: Vec<WriteKey>,
    limits: Limits,
    web_topic: String,
    app_topic: String,
    permits: Semaphore,
    jobs: mpsc::Sender<Job>,
    metrics: CollectMetrics,
}

impl Collector {
    /// The collector and its producer thread, which ends once the collector is dropped and every
    /// request already handed over is acknowledged.
    pub fn start(
        config: &Config,
        bus: &dyn Bus,
        registry: &Registry,
    ) -> Result<(Arc<Self>, std::thread::JoinHandle<()>)> {
        let c = &config.collect;
        if c.write_keys.is_empty() {
            tracing::warn!(
                "collect.write_keys is empty: every Tracking API request is refused with 401"
            );
        }
        let producer = bus.producer()?;
        let (jobs, queue) = mpsc::channel(c.max_in_flight_requests);
        let thread = std::thread::Builder::new()
            .name("collect-producer".into())
            .spawn(move || produce(producer, queue))?;
        let collector = Self {
            keys: c.write_keys.clone(),
            limits: Limits {
                max_message_bytes: c.max_message_bytes,
                max_batch_bytes: c.max_batch_bytes,
            },
            web_topic: config.ingest.web_topic.clone(),
            app_topic: config.ingest.app_topic.clone(),
            permits: Semaphore::new(c.max_in_flight_requests),
            jobs,
            metrics: CollectMetrics::register(registry)?,
        };
        Ok((Arc::new(collector), thread))
    }

    /// The tenant of `key`.
    fn tenant(&self, key: Option<&str>) -> Result<&str, Refusal> {
        let Some(key) = key.filter(|k| !k.is_empty()) else {
            return Err(Refusal::new(
                Code::Unauthorized,
                "send the write key as HTTP Basic auth username (empty password) or as `writeKey`",
            ));
        };
        let hash = cdp_proto::normalize::sha256_hex(key);
        self.keys
            .iter()
            .find(|k| k.key_sha256 == hash)
            .map(|k| k.tenant.as_str())
            .ok_or_else(|| Refusal::new(Code::Unauthorized, "unknown write key"))
    }

    /// Handles one request to the end: the number of messages on the bus, or why none are.
    async fn collect(&self, route: Route, headers: &HeaderMap, body: Body) -> Result<(), Refusal> {
        let _permit = self.permits.try_acquire().map_err(|_| {
            Refusal::new(
                Code::Overloaded,
                "too many requests in flight; retry after the Retry-After delay",
            )
        })?;
        // The body is read (within its limit) even when the request is refused for its key or
        // encoding: a connection closed on unread data is reset, and the client may then never
        // see the answer.
        let bytes = self.read_body(route, headers, body).await?;
        let encoding = segment::Encoding::from_header(
            headers.get(header::CONTENT_ENCODING).map(|v| v.as_bytes()),
        )?;
        let header_tenant = match basic_auth_user(headers) {
            Some(key) => Some(self.tenant(Some(&key))?.to_string()),
            None => None,
        };
        // Parsing and checking a batch is CPU work: off the listener's one async thread.
        let limits = self.limits;
        let received = chrono::Utc::now();
        let checked = tokio::task::spawn_blocking(move || {
            // The inflated body is held to the limit the plain one is.
            let json = segment::decode(encoding, &bytes, limits.body_limit(route))?;
            let parsed = segment::parse(route, &json)?;
            let key = parsed.write_key().map(str::to_string);
            let count = parsed.message_count() as u64;
            let received_at = received.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let messages = parsed.into_messages(&limits, &received_at, &mut message_id);
            Ok::<_, CollectError>((key, count, messages))
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "collect: checking a request failed");
            Refusal::new(Code::Internal, "internal error; see the server log")
        })?;
        let (body_key, count, messages) = checked?;
        // The key decides before the messages: an unknown key learns nothing about them.
        let tenant = match header_tenant {
            Some(t) => t,
            None => self.tenant(body_key.as_deref())?.to_string(),
        };
        let messages = messages.inspect_err(|_| {
            self.metrics
                .messages
                .with_label_values(&["rejected"])
                .inc_by(count)
        })?;
        let n = messages.len() as u64;
        let records = messages
            .into_iter()
            .map(|m| self.record(m, &tenant, received.timestamp_millis()))
            .collect();
        match self.produce(records).await {
            Ok(()) => {
                self.metrics
                    .messages
                    .with_label_values(&["accepted"])
                    .inc_by(n);
                Ok(())
            }
            Err(e) => {
                self.metrics
                    .messages
                    .with_label_values(&["failed"])
                    .inc_by(n);
                tracing::error!(error = %e, "collect: the bus did not acknowledge a request");
                Err(Refusal::new(
                    Code::Unavailable,
                    "the events could not be stored; retry after the Retry-After delay",
                ))
            }
        }
    }

    /// The body, refused unread when its declared length is over the route's limit.
    async fn read_body(
        &self,
        route: Route,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<axum::body::Bytes, Refusal> {
        let limit = self.limits.body_limit(route);
        let too_large = |size: usize| -> Refusal {
            let e = match route {
                Route::Batch => CollectError::BatchTooLarge { size, limit },
                _ => CollectError::MessageTooLarge {
                    at: "the message".into(),
                    size,
                    limit,
                },
            };
            e.into()
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if let Some(size) = declared.filter(|size| *size > limit) {
            return Err(too_large(size));
        }
        axum::body::to_bytes(body, limit).await.map_err(|e| {
            if is_length_limit(&e) {
                too_large(limit + 1)
            } else {
                Refusal::new(
                    Code::InvalidJson,
                    format!("the body could not be read: {e}"),
                )
            }
        })
    }

    fn record(&self, message: Message, tenant: &str, received_ms: i64) -> OutRecord {
        let topic = match message.source {
            Source::App => &self.app_topic,
            _ => &self.web_topic,
        };
        let mut record = OutRecord::new(topic.as_str(), message.key, message.value).with_headers(
            vec![(TENANT_HEADER.to_string(), tenant.as_bytes().to_vec())],
        );
        record.timestamp_ms = Some(received_ms);
        record
    }

    /// Hands `records` to the producer thread and waits for the bus's acknowledgement.
    async fn produce(&self, records: Vec<OutRecord>) -> Result<(), String> {
        let (done, acknowledged) = oneshot::channel();
        self.jobs
            .send(Job { records, done })
            .await
            .map_err(|_| "the producer thread has stopped".to_string())?;
        acknowledged
            .await
            .map_err(|_| "the producer thread has stopped".to_string())?
    }
}

/// The producer thread: sends what requests hand over, flushes once for every request waiting,
/// and tells each one how it went.
fn produce(mut producer: Box<dyn Producer>, mut queue: mpsc::Receiver<Job>) {
    while let Some(first) = queue.blocking_recv() {
        let mut records = first.records.len();
        let mut jobs = vec![first];
        while records < MAX_RECORDS_PER_FLUSH {
            match queue.try_recv() {
                Ok(job) => {
                    records += job.records.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let mut sent = || -> cdp_bus::Result<()> {
            for job in &mut jobs {
                for record in std::mem::take(&mut job.records) {
                    producer.send(record)?;
                }
            }
            producer.flush()
        };
        let result = sent().map_err(|e| e.to_string());
        if result.is_err() {
            // Leaves nothing pending for the next flush; those requests are answered 503.
            let _ = producer.flush();
        }
        for job in jobs {
            let _ = job.done.send(result.clone());
        }
    }
}

/// The username of `Authorization: Basic …`, which Segment libraries set to the write key.
fn basic_auth_user(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let user = text.split_once(':').map_or(text.as_str(), |(u, _)| u);
    Some(user.to_string())
}

/// `true` when reading a body stopped at its length limit.
fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.to_string().contains("length limit exceeded") {
            return true;
        }
        source = s.source();
    }
    false
}

/// A random (v4) UUID, what Segment's libraries use as `messageId`.
fn message_id() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The handlers of `route`. A process that does not run the collector still routes its paths,
/// answering 404 `unknown_route`, so every listener answers what `/openapi.json` documents.
pub fn method_router(route: Route, collector: Option<Arc<Collector>>) -> MethodRouter {
    let Some(collector) = collector else {
        return post(not_here).options(not_here);
    };
    post(
        move |State(c): State<Arc<Collector>>, headers: HeaderMap, body: Body| async move {
            let result = c.collect(route, &headers, body).await;
            let outcome = match &result {
                Ok(()) => "accepted",
                Err(refusal) => refusal.code.as_str(),
            };
            c.metrics
                .requests
                .with_label_values(&[route.as_str(), outcome])
                .inc();
            let mut response = match result {
                Ok(()) => Json(json!({ "success": true })).into_response(),
                Err(refusal) => refusal.into_response(),
            };
            // analytics.js posts from the visitor's browser, from the site's origin.
            response.headers_mut().insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
            response
        },
    )
    .options(preflight)
    .with_state(collector)
}

async fn not_here() -> ApiError {
    ApiError::new(
        ErrorCode::UnknownRoute,
        "this process does not run the collector: it is `cdp collect` (or `cdp run --collect`) \
         on collect.listen",
    )
}

/// The CORS preflight of a browser that sends the key in a header or JSON as `application/json`
/// (analytics.js itself sends `text/plain`, which needs none).
async fn preflight() -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            (header::ACCESS_CONTROL_ALLOW_METHODS, "POST, OPTIONS"),
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                "Authorization, Content-Type",
            ),
            (header::ACCESS_CONTROL_MAX_AGE, "86400"),
        ],
    )
        .into_response()
}

/// The Tracking API serving on `collect.listen`, with health, readiness and metrics. Dropping
/// it answers the requests in flight (once their records are acknowledged), then stops.
pub struct Serving {
    server: Option<http::Server>,
    producer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        // Dropping the server waits for requests in flight; with it goes the last collector
        // handle, which lets the producer thread finish.
        drop(self.server.take());
        if let Some(producer) = self.producer.take() {
            if producer.join().is_err() {
                tracing::error!("the collector's producer thread panicked");
            }
        }
    }
}

/// Starts the Tracking API on `bus`, whose topics must exist; says where on stderr.
pub fn serve(config: &Config, bus: Arc<dyn Bus>, shutdown: Arc<AtomicBool>) -> Result<Serving> {
    if config.collect.listen.is_empty() {
        bail!("collect.listen is empty: the collector needs an address to serve");
    }
    let none = Stages {
        ingest: false,
        resolve: false,
        activate: false,
    };
    let mut probe = http::Probe::new(
        config,
        none,
        bus.clone(),
        Arc::new(Counters::default()),
        shutdown,
    )?;
    let (collector, producer) = Collector::start(config, bus.as_ref(), probe.metrics.registry())?;
    probe.collector = Some(collector);
    let server = http::start(&config.collect.listen, probe)
        .context("starting the collector (collect.listen)")?;
    eprintln!("collect listening on {}", server.addr);
    Ok(Serving {
        server: Some(server),
        producer: Some(producer),
    })
}

/// Runs `cdp collect` until `shutdown` is set.
pub fn run(config: &Config, data: &Path, shutdown: Arc<AtomicBool>) -> Result<()> {
    let bus = pipeline::open_bus(config, data)?;
    let serving = serve(config, bus, shutdown.clone())?;
    while !shutdown.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(serving);
    eprintln!("collect stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn basic_auth_gives_the_username() {
        let mut headers = HeaderMap::new();
        // "wk_123:" as analytics-python sends it.
        headers.insert(header::AUTHORIZATION, "Basic d2tfMTIzOg==".parse().unwrap());
        assert_eq!(basic_auth_user(&headers).as_deref(), Some("wk_123"));
        headers.insert(
            header::AUTHORIZATION,
            "Bearer d2tfMTIzOg==".parse().unwrap(),
        );
        assert_eq!(basic_auth_user(&headers), None);
        headers.insert(header::AUTHORIZATION, "Basic !!".parse().unwrap());
        assert_eq!(basic_auth_user(&headers), None);
    }

    #[test]
    fn message_ids_are_v4_uuids() {
        let a = message_id();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert_ne!(a, message_id());
    }

    #[test]
    fn the_openapi_document_lists_every_collector_code_and_its_status() {
        let doc: serde_json::Value = serde_json::from_str(http::OPENAPI).unwrap();
        let code = &doc["components"]["schemas"]["CollectError"]["properties"]["error"]
            ["properties"]["code"];
        let listed: BTreeSet<&str> = code["enum"]
            .as_array()
            .expect("CollectError lists its codes")
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        let returned: BTreeSet<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(listed, returned);
        let described = code["description"].as_str().unwrap();
        for c in Code::ALL {
            let line = format!("- `{}` ({}):", c.as_str(), c.status().as_u16());
            assert!(described.contains(&line), "{line} in the code description");
        }
        for route in Route::ALL {
            for path in [
                format!("/v1/{}", route.as_str()),
                format!("/v1/{}", &route.as_str()[..1]),
            ] {
                assert!(doc["paths"][&path]["post"].is_object(), "{path} documented");
            }
        }
    }
}
