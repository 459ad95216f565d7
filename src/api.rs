//! The HTTP API over the state a process owns: profiles where it runs the resolver (look a
//! profile up by any identifier or canonical id, explain it, read its merge history, erase it)
//! and cohorts where it runs activation (the definitions, each cohort's members, paged, and the
//! cohorts one profile is in).
//!
//! Reads go straight to the stages' RocksDB (committed batches only; the stages keep writing).
//! Erasure is a `forget` command on the commands topic, which the resolver applies in order with
//! its input; `GET /v1/commands/{command_id}` reports its outcome. Every route is scoped to the
//! tenant of the caller's API key; errors are `{"error": {"code", "message"}}` with a code from
//! [`ErrorCode`]. Which path serves which handler is the route table in `http`.

use crate::config::{ApiKey, Config, Scope};
use crate::read_tier::{Lookup, ReadTier};
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cdp_activation::membership::MembershipStore;
use cdp_activation::Activation;
use cdp_bus::{Bus, OutRecord, Producer};
use cdp_proto::{Identifier, IdentifierKind, NormalizeOptions, Profile};
use cdp_resolver::command::{CommandOp, Target};
use cdp_resolver::lookup::{Changes, Stamps};
use cdp_resolver::GraphStore;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};

/// Members per page when the caller does not say.
pub const DEFAULT_PAGE_LIMIT: usize = 100;
/// Most members per page: bounds the work and the response of one request.
pub const MAX_PAGE_LIMIT: usize = 1000;

/// Who may call, by API key; shared by the profile and cohort routes.
#[derive(Clone)]
pub struct Auth {
    keys: Vec<Key>,
    default_tenant: String,
}

/// A configured API key, its digest decoded once so a request compares 32 bytes per key.
#[derive(Clone)]
struct Key {
    /// `None` for a digest that does not decode (config validation rejects those): no match.
    token_sha256: Option<[u8; 32]>,
    tenant: String,
    scopes: Vec<Scope>,
}

impl Key {
    fn new(key: &ApiKey) -> Self {
        let mut digest = [0u8; 32];
        let decoded = hex::decode_to_slice(&key.token_sha256, &mut digest).is_ok();
        Self {
            token_sha256: decoded.then_some(digest),
            tenant: key.tenant.clone(),
            scopes: key.scopes.clone(),
        }
    }
}

impl Auth {
    pub fn new(config: &Config) -> Self {
        if config.http.api_keys.is_empty() {
            tracing::warn!(
                "the HTTP API has no API keys: it answers anyone who reaches the listener \
                 (read-only, tenant {:?})",
                config.ingest.default_tenant
            );
        }
        Self {
            keys: config.http.api_keys.iter().map(Key::new).collect(),
            default_tenant: config.ingest.default_tenant.clone(),
        }
    }

    /// The caller, whose key must hold one of `any_of`. Without configured keys everyone reads
    /// the default tenant and nobody erases.
    fn caller(&self, credentials: &Credentials, any_of: &[Scope]) -> Result<Caller, ApiError> {
        let needed = || {
            let names: Vec<&str> = any_of
                .iter()
                .map(|s| match s {
                    Scope::Read => "read",
                    Scope::Erase => "erase",
                })
                .collect();
            format!(
                "this route needs an API key with the {} scope",
                names.join(" or ")
            )
        };
        if self.keys.is_empty() {
            if any_of.contains(&Scope::Read) {
                return Ok(Caller {
                    tenant: self.default_tenant.clone(),
                });
            }
            let message = format!("{}; no API key is configured", needed());
            return Err(ApiError::new(ErrorCode::Forbidden, message));
        }
        let token = credentials
            .0
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::Unauthorized,
                    "send an API key as `Authorization: Bearer TOKEN`",
                )
            })?;
        let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        let key = self
            .keys
            .iter()
            .find(|k| k.token_sha256 == Some(digest))
            .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "unknown API key"))?;
        if !any_of.iter().any(|s| key.scopes.contains(s)) {
            return Err(ApiError::new(ErrorCode::Forbidden, needed()));
        }
        Ok(Caller {
            tenant: key.tenant.clone(),
        })
    }
}

/// The `Authorization` header of a request: the one header the API reads, so a request does
/// not copy all of its headers to answer.
pub struct Credentials(Option<HeaderValue>);

impl<S: Send + Sync> FromRequestParts<S> for Credentials {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Credentials(
            parts.headers.get(header::AUTHORIZATION).cloned(),
        ))
    }
}

/// Who is calling: the one tenant they may see.
struct Caller {
    tenant: String,
}

/// What the profile routes need (where the process runs the resolver).
pub struct ProfileApi {
    auth: Auth,
    store: Arc<dyn GraphStore>,
    normalize: NormalizeOptions,
    commands_topic: String,
    producer: Mutex<Box<dyn Producer>>,
    /// Answers of recent lookups (`http.read_tier_mb`); `store` must then be the
    /// `WatchedStore` the resolver writes through, counting into the tier's changes.
    tier: Option<Arc<ReadTier>>,
}

impl ProfileApi {
    pub fn new(
        config: &Config,
        auth: Auth,
        store: Arc<dyn GraphStore>,
        tier: Option<Arc<ReadTier>>,
        bus: &dyn Bus,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            auth,
            store,
            tier,
            normalize: NormalizeOptions::with_region(&config.ingest.default_phone_region)?,
            commands_topic: config.resolver.commands_topic.clone(),
            producer: Mutex::new(bus.producer()?),
        })
    }
}

/// What the cohort routes need (where the process runs activation): the running definitions,
/// which a reload swaps, and the membership state the stage writes.
pub struct CohortApi {
    auth: Auth,
    activation: Arc<Activation>,
    store: Arc<MembershipStore>,
}

impl CohortApi {
    pub fn new(auth: Auth, activation: Arc<Activation>, store: Arc<MembershipStore>) -> Self {
        Self {
            auth,
            activation,
            store,
        }
    }
}

crate::error_code::error_codes! {
    /// The stable `code` of an error body.
    pub enum ErrorCode {
        Unauthorized = "unauthorized", UNAUTHORIZED;
        Forbidden = "forbidden", FORBIDDEN;
        ProfileNotFound = "profile_not_found", NOT_FOUND;
        CohortNotFound = "cohort_not_found", NOT_FOUND;
        UnknownRoute = "unknown_route", NOT_FOUND;
        MethodNotAllowed = "method_not_allowed", METHOD_NOT_ALLOWED;
        InvalidIdentifierKind = "invalid_identifier_kind", BAD_REQUEST;
        InvalidIdentifier = "invalid_identifier", BAD_REQUEST;
        InvalidCanonicalId = "invalid_canonical_id", BAD_REQUEST;
        InvalidLimit = "invalid_limit", BAD_REQUEST;
        InvalidCursor = "invalid_cursor", BAD_REQUEST;
        InvalidPath = "invalid_path", BAD_REQUEST;
        InvalidQuery = "invalid_query", BAD_REQUEST;
        Internal = "internal", INTERNAL_SERVER_ERROR;
    }
}

/// An error as the API reports it.
#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn profile_not_found(what: impl std::fmt::Display) -> Self {
        Self::new(
            ErrorCode::ProfileNotFound,
            format!("no profile holds {what}"),
        )
    }

    /// Logs the cause; the caller gets no detail of the server's insides.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "http handler");
        Self::new(ErrorCode::Internal, "internal error; see the server log")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code.as_str(), "message": self.message } });
        (self.code.status(), Json(body)).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

/// Path parameters; a segment that does not decode is an API error, not axum's plain text.
pub struct ApiPath<T>(T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(e) => Err(ApiError::new(ErrorCode::InvalidPath, e.body_text())),
        }
    }
}

/// Query parameters, rejected as an API error like [`ApiPath`].
pub struct ApiQuery<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(ApiQuery(value)),
            Err(e) => Err(ApiError::new(ErrorCode::InvalidQuery, e.body_text())),
        }
    }
}

/// The answer to a path no route serves in this process.
pub async fn unknown_route() -> ApiError {
    ApiError::new(
        ErrorCode::UnknownRoute,
        "no such route here; see /openapi.json (profile routes are served where the resolver \
         runs, cohort routes where activation runs)",
    )
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this route does not take that method; see /openapi.json",
    )
}

/// Runs a RocksDB read that walks a component or scans (explain, members, command outcomes) or
/// a bus call off the async workers.
///
/// A profile lookup does not come here: it is two to four point reads that RocksDB answers
/// from its memtables and block cache (or the OS page cache) in microseconds, and handing it to
/// the blocking pool cost more than the reads: two thread wake-ups per request, which doubled
/// the server's CPU per lookup (see the README's Performance section). The listener runs on its
/// own runtime (`http.workers` threads), apart from the pipeline, so the worst case, a read
/// that waits for the disk, delays that worker's other connections for one read.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
}

/// `cdp_…` names a profile by canonical id; anything else is `KIND` of a `KIND/VALUE` pair.
fn is_canonical(text: &str) -> bool {
    text.starts_with("cdp_")
}

fn identifier(api: &ProfileApi, kind: &str, value: &str) -> Result<Identifier, ApiError> {
    let kind: IdentifierKind = kind
        .parse()
        .map_err(|e| ApiError::new(ErrorCode::InvalidIdentifierKind, format!("{e}")))?;
    cdp_proto::normalize(kind, value, &api.normalize)
        .map_err(|e| ApiError::new(ErrorCode::InvalidIdentifier, format!("{e}")))
}

fn canonical(id: &str) -> Result<(), ApiError> {
    if is_canonical(id) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::InvalidCanonicalId,
            "a canonical id starts with cdp_; look identifiers up at /v1/profiles/{kind}/{value}",
        ))
    }
}

/// `GET /v1/profiles/{canonical_id}`: a retired id redirects to the profile that absorbed it.
pub async fn profile_by_canonical(
    State(api): State<Arc<ProfileApi>>,
    credentials: Credentials,
    ApiPath(id): ApiPath<String>,
) -> ApiResult {
    let caller = api.auth.caller(&credentials, &[Scope::Read])?;
    canonical(&id)?;
    let (store, tenant) = (api.store.as_ref(), caller.tenant.as_str());
    let key = cdp_resolver::txn::tenant_key(tenant, &id);
    tiered_lookup(
        api.tier.as_deref(),
        Lookup::Canonical(&key),
        || cdp_resolver::lookup::profile_by_canonical(store, tenant, &id),
        |changes| cdp_resolver::lookup::watched::profile_by_canonical(store, changes, tenant, &id),
        || ApiError::profile_not_found(&id),
        |profile| canonical_answer(&id, profile),
    )
}

/// A profile lookup, answered on this worker (point reads, see `blocking`). With a read tier
/// (`http.read_tier_mb`) a current answer it holds is returned as it is; otherwise the store is
/// read (`watched`: noting what was read, so the tier can tell when the answer goes stale) and
/// `answer` makes the response, and the body the tier may keep (none for a redirect).
fn tiered_lookup(
    tier: Option<&ReadTier>,
    lookup: Lookup<'_>,
    unwatched: impl FnOnce() -> cdp_resolver::Result<Option<Profile>>,
    watched: impl FnOnce(&Changes) -> cdp_resolver::Result<(Option<Profile>, Stamps)>,
    not_found: impl FnOnce() -> ApiError,
    answer: impl FnOnce(&Profile) -> Result<(Response, Option<Bytes>), ApiError>,
) -> ApiResult {
    let Some(tier) = tier else {
        let profile = unwatched()
            .map_err(ApiError::internal)?
            .ok_or_else(not_found)?;
        return answer(&profile).map(|(response, _)| response);
    };
    if let Some(body) = tier.get(lookup) {
        return Ok(json_body(body));
    }
    let (profile, stamps) = watched(tier.changes()).map_err(ApiError::internal)?;
    let profile = profile.ok_or_else(not_found)?;
    let (response, body) = answer(&profile)?;
    if let Some(body) = body {
        tier.put(lookup, body, stamps);
    }
    Ok(response)
}

/// The answer to `GET /v1/profiles/{id}` when `profile` holds `id`, with its body when it is
/// the profile itself (a redirect from a retired id is not kept in the read tier).
fn canonical_answer(id: &str, profile: &Profile) -> Result<(Response, Option<Bytes>), ApiError> {
    if profile.canonical_id != id {
        let location = format!("/v1/profiles/{}", profile.canonical_id);
        let redirect = (
            StatusCode::PERMANENT_REDIRECT,
            [(header::LOCATION, location)],
            Json(json!({ "retired": id, "canonical_id": profile.canonical_id })),
        );
        return Ok((redirect.into_response(), None));
    }
    let body = json_bytes(profile)?;
    Ok((json_body(body.clone()), Some(body)))
}

/// `GET /v1/profiles/{canonical_id}/explain`: the component's identifiers, links, merges and
/// refused merges.
pub async fn explain(
    State(api): State<Arc<ProfileApi>>,
    credentials: Credentials,
    ApiPath(id): ApiPath<String>,
) -> ApiResult {
    if !is_canonical(&id) {
        // The router prefers this literal segment: `{kind}/explain` is an identifier lookup.
        return identifier_lookup(api, credentials, id, "explain".into()).await;
    }
    let caller = api.auth.caller(&credentials, &[Scope::Read])?;
    let store = api.store.clone();
    let target = Target::CanonicalId(id.clone());
    let e = blocking(move || {
        cdp_resolver::explain::explain(store.as_ref(), &caller.tenant, &target)
            .map_err(ApiError::internal)
    })
    .await?
    .ok_or_else(|| ApiError::profile_not_found(&id))?;
    Ok(Json(e).into_response())
}

/// `GET /v1/profiles/{canonical_id}/history`: the merge history and retired ids.
pub async fn history(
    State(api): State<Arc<ProfileApi>>,
    credentials: Credentials,
    ApiPath(id): ApiPath<String>,
) -> ApiResult {
    if !is_canonical(&id) {
        return identifier_lookup(api, credentials, id, "history".into()).await;
    }
    let caller = api.auth.caller(&credentials, &[Scope::Read])?;
    // Point reads, on this worker (see `blocking`).
    let p = cdp_resolver::lookup::profile_by_canonical(api.store.as_ref(), &caller.tenant, &id)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::profile_not_found(&id))?;
    Ok(Json(json!({
        "canonical_id": p.canonical_id,
        "version": p.version,
        "created_at": p.created_at,
        "aliases": p.aliases,
        "merge_history": p.merge_history,
    }))
    .into_response())
}

/// `GET /v1/profiles/{kind}/{value}`: the value is normalised as ingest does (raw e-mail
/// addresses and phone numbers are hashed).
pub async fn profile_by_identifier(
    State(api): State<Arc<ProfileApi>>,
    credentials: Credentials,
    ApiPath((kind, value)): ApiPath<(String, String)>,
) -> ApiResult {
    identifier_lookup(api, credentials, kind, value).await
}

async fn identifier_lookup(
    api: Arc<ProfileApi>,
    credentials: Credentials,
    kind: String,
    value: String,
) -> ApiResult {
    let caller = api.auth.caller(&credentials, &[Scope::Read])?;
    let id = identifier(&api, &kind, &value)?;
    let (store, tenant) = (api.store.as_ref(), caller.tenant.as_str());
    let key = cdp_resolver::txn::id_key(tenant, &id);
    tiered_lookup(
        api.tier.as_deref(),
        Lookup::Identifier(&key),
        || cdp_resolver::lookup::profile_by_identifier(store, tenant, &id),
        |changes| cdp_resolver::lookup::watched::profile_by_identifier(store, changes, tenant, &id),
        || ApiError::profile_not_found(&id),
        |profile| {
            let body = json_bytes(profile)?;
            Ok((json_body(body.clone()), Some(body)))
        },
    )
}

/// `value` as JSON, written into a buffer the size of a typical profile (axum's `Json` starts
/// small and regrows it several times).
fn json_bytes(value: &impl Serialize) -> Result<Bytes, ApiError> {
    let mut body = Vec::with_capacity(4096);
    serde_json::to_writer(&mut body, value).map_err(ApiError::internal)?;
    Ok(Bytes::from(body))
}

/// A 200 answer of JSON `body`.
fn json_body(body: Bytes) -> Response {
    let json = HeaderValue::from_static("application/json");
    ([(header::CONTENT_TYPE, json)], body).into_response()
}

/// `DELETE /v1/profiles/{kind}/{value}`: queues the erasure of the person holding the identifier
/// (the identifier is tombstoned even if nobody holds it). 202 with the command id.
pub async fn erase(
    State(api): State<Arc<ProfileApi>>,
    credentials: Credentials,
    ApiPath((kind, value)): ApiPath<(String, String)>,
) -> ApiResult {
    let caller = api.auth.caller(&credentials, &[Scope::Erase])?;
    let target = Target::Identifier(identifier(&api, &kind, &value)?);
    queue_forget(api, caller, target).await
}

/// `DELETE /v1/profiles/{canonical_id}`.
pub async fn erase_canonical(
    State(api): State<Arc<ProfileApi>>,
    credentials: Credentials,
    ApiPath(id): ApiPath<String>,
) -> ApiResult {
    let caller = api.auth.caller(&credentials, &[Scope::Erase])?;
    canonical(&id)?;
    queue_forget(api, caller, Target::CanonicalId(id)).await
}

async fn queue_forget(api: Arc<ProfileApi>, caller: Caller, target: Target) -> ApiResult {
    let command = crate::graph::new_command(&caller.tenant, CommandOp::Forget { target });
    let value = serde_json::to_vec(&command).map_err(ApiError::internal)?;
    let record = OutRecord::new(api.commands_topic.clone(), caller.tenant.as_bytes(), value);
    blocking(move || {
        let mut producer = api
            .producer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        producer.send(record).map_err(ApiError::internal)?;
        producer.flush().map_err(ApiError::internal)
    })
    .await?;
    let location = format!("/v1/commands/{}", command.id);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(json!({ "command_id": command.id, "status": "queued" })),
    )
        .into_response())
}

/// `GET /v1/commands/{command_id}`: the outcome of a queued command of the caller's tenant.
pub async fn command(
    State(api): State<Arc<ProfileApi>>,
    credentials: Credentials,
    ApiPath(id): ApiPath<String>,
) -> ApiResult {
    // Whoever may erase may follow their erasure.
    let caller = api
        .auth
        .caller(&credentials, &[Scope::Read, Scope::Erase])?;
    let store = api.store.clone();
    let wanted = id.clone();
    let outcome = blocking(move || {
        cdp_resolver::stage::command_outcome(store.as_ref(), &wanted).map_err(ApiError::internal)
    })
    .await?;
    match outcome {
        Some(o) if o.tenant == caller.tenant => Ok(Json(o).into_response()),
        // Not applied yet, or another tenant's: the same answer, so ids leak nothing.
        _ => Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "command_id": id, "status": "pending" })),
        )
            .into_response()),
    }
}

/// `GET /v1/cohorts`: the cohorts activation runs now (a reload changes them). Every tenant has
/// the same definitions; members are per tenant. No member counts: membership is keyed by
/// person, so a count would walk every membership of the tenant.
pub async fn cohorts(State(api): State<Arc<CohortApi>>, credentials: Credentials) -> ApiResult {
    api.auth.caller(&credentials, &[Scope::Read])?;
    let defs = api.activation.current();
    let list: Vec<_> = defs
        .cohorts
        .list
        .iter()
        .map(|c| {
            let c = &c.config;
            json!({
                "key": c.key,
                "description": c.description,
                "expression": c.expression,
                "priority": c.priority,
                "identifiers": c.identifiers,
                "destinations": c.destinations,
            })
        })
        .collect();
    Ok(Json(json!({ "cohorts": list })).into_response())
}

/// `GET /v1/profiles/{canonical_id}/cohorts`: the configured cohorts the profile is in now, with
/// when it entered each. Membership is activation's, which knows a person by the canonical id of
/// the profile updates it applied: an id it never saw, or one retired by a merge, is in none.
pub async fn profile_cohorts(
    State((api, profiles)): State<(Arc<CohortApi>, Option<Arc<ProfileApi>>)>,
    credentials: Credentials,
    ApiPath(id): ApiPath<String>,
) -> ApiResult {
    if !is_canonical(&id) {
        // As for explain: `{kind}/cohorts` is an identifier lookup, where the resolver runs.
        return match profiles {
            Some(profiles) => identifier_lookup(profiles, credentials, id, "cohorts".into()).await,
            None => Err(unknown_route().await),
        };
    }
    let caller = api.auth.caller(&credentials, &[Scope::Read])?;
    let store = api.store.clone();
    let wanted = id.clone();
    let held = blocking(move || {
        store
            .profile_memberships(&caller.tenant, &wanted)
            .map_err(ApiError::internal)
    })
    .await?;
    // A cohort a reload removed may still hold members until they are re-evaluated.
    let defs = api.activation.current();
    let cohorts: Vec<_> = held
        .into_iter()
        .filter(|(key, _)| defs.cohorts.list.iter().any(|c| c.key() == key))
        .map(|(key, state)| json!({ "key": key, "entered_at": state.since, "version": state.seq }))
        .collect();
    Ok(Json(json!({ "canonical_id": id, "cohorts": cohorts })).into_response())
}

#[derive(Deserialize)]
pub struct PageQuery {
    limit: Option<String>,
    after: Option<String>,
}

/// `GET /v1/cohorts/{key}/members?limit=N&after=CURSOR`: the caller's tenant's current members
/// in canonical id order. `next_after` is the cursor of the next page (`null` on the last); it is
/// the last canonical id of the page, so it stays valid while membership changes: a person who
/// enters behind the cursor shows up on a later page, one who leaves is simply not listed.
pub async fn cohort_members(
    State(api): State<Arc<CohortApi>>,
    credentials: Credentials,
    ApiPath(key): ApiPath<String>,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> ApiResult {
    let caller = api.auth.caller(&credentials, &[Scope::Read])?;
    let defined = api
        .activation
        .current()
        .cohorts
        .list
        .iter()
        .any(|c| c.key() == key);
    if !defined {
        return Err(ApiError::new(
            ErrorCode::CohortNotFound,
            format!("no cohort {key:?} is configured; GET /v1/cohorts lists them"),
        ));
    }
    let limit = match &page.limit {
        None => DEFAULT_PAGE_LIMIT,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidLimit,
                    format!("limit must be an integer from 1 to {MAX_PAGE_LIMIT}"),
                )
            })?,
    };
    if let Some(after) = &page.after {
        let well_formed = is_canonical(after)
            && after.len() <= 64
            && after
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !well_formed {
            return Err(ApiError::new(
                ErrorCode::InvalidCursor,
                "after must be the next_after of a previous page (a canonical id)",
            ));
        }
    }
    let store = api.store.clone();
    let (tenant, audience, after) = (caller.tenant, key.clone(), page.after);
    // One more than asked tells whether another page follows.
    let mut rows = blocking(move || {
        store
            .cohort_members(&tenant, &audience, after.as_deref(), limit + 1)
            .map_err(ApiError::internal)
    })
    .await?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = if more {
        rows.last().map(|(id, _)| id.clone())
    } else {
        None
    };
    let members: Vec<_> = rows
        .into_iter()
        .map(|(id, state)| {
            json!({ "canonical_id": id, "entered_at": state.since, "version": state.seq })
        })
        .collect();
    Ok(Json(json!({ "cohort": key, "members": members, "next_after": next })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(keys: &[(&str, &str, &[Scope])]) -> Auth {
        let mut config = Config::default();
        config.http.api_keys = keys
            .iter()
            .map(|(tenant, token, scopes)| ApiKey {
                tenant: tenant.to_string(),
                token_sha256: cdp_proto::normalize::sha256_hex(token),
                scopes: scopes.to_vec(),
            })
            .collect();
        Auth::new(&config)
    }

    fn bearer(token: &str) -> Credentials {
        Credentials(Some(format!("Bearer {token}").parse().unwrap()))
    }

    fn code(r: Result<Caller, ApiError>) -> &'static str {
        r.err().map(|e| e.code.as_str()).unwrap_or("ok")
    }

    #[test]
    fn keys_give_their_tenant_and_only_their_scopes() {
        let auth = auth(&[
            ("acme", "reader", &[Scope::Read]),
            ("acme", "eraser", &[Scope::Erase]),
            ("zeta", "both", &[Scope::Read, Scope::Erase]),
        ]);
        let read = [Scope::Read];
        let erase = [Scope::Erase];
        assert_eq!(code(auth.caller(&Credentials(None), &read)), "unauthorized");
        assert_eq!(code(auth.caller(&bearer("nope"), &read)), "unauthorized");
        assert_eq!(
            auth.caller(&bearer("reader"), &read).ok().map(|c| c.tenant),
            Some("acme".into())
        );
        assert_eq!(code(auth.caller(&bearer("reader"), &erase)), "forbidden");
        assert_eq!(code(auth.caller(&bearer("eraser"), &read)), "forbidden");
        assert_eq!(
            code(auth.caller(&bearer("eraser"), &[Scope::Read, Scope::Erase])),
            "ok"
        );
        assert_eq!(
            auth.caller(&bearer("both"), &erase).ok().map(|c| c.tenant),
            Some("zeta".into())
        );
    }

    #[test]
    fn without_keys_everyone_reads_the_default_tenant_and_nobody_erases() {
        let auth = auth(&[]);
        let caller = auth.caller(&Credentials(None), &[Scope::Read]);
        assert_eq!(caller.ok().map(|c| c.tenant), Some("default".into()));
        assert_eq!(
            code(auth.caller(&Credentials(None), &[Scope::Erase])),
            "forbidden"
        );
    }
}
