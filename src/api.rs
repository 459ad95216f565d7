//! The profile API, served by the process that runs the resolver: look a profile up by any
//! identifier or canonical id, explain it, read its merge history, and erase it.
//!
//! Reads go straight to the resolver's RocksDB (committed batches only; the stage keeps writing).
//! Erasure is a `forget` command on the commands topic, which the resolver applies in order with
//! its input; `GET /v1/commands/{id}` reports its outcome. Every route is scoped to the tenant of
//! the caller's API key; errors are `{"error": {"code", "message"}}` with a stable code.

use crate::config::{ApiKey, Config, Scope};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cdp_bus::{Bus, OutRecord, Producer};
use cdp_proto::{Identifier, IdentifierKind, NormalizeOptions};
use cdp_resolver::command::{CommandOp, GraphCommand, Target};
use cdp_resolver::GraphStore;
use serde_json::json;
use std::sync::{Arc, Mutex};

/// What the routes need.
pub struct Api {
    store: Arc<dyn GraphStore>,
    keys: Vec<ApiKey>,
    default_tenant: String,
    normalize: NormalizeOptions,
    commands_topic: String,
    producer: Mutex<Box<dyn Producer>>,
}

impl Api {
    pub fn new(config: &Config, store: Arc<dyn GraphStore>, bus: &dyn Bus) -> anyhow::Result<Self> {
        if config.http.api_keys.is_empty() {
            tracing::warn!(
                "the profile API has no API keys: it answers anyone who reaches the listener \
                 (read-only, tenant {:?})",
                config.ingest.default_tenant
            );
        }
        Ok(Self {
            store,
            keys: config.http.api_keys.clone(),
            default_tenant: config.ingest.default_tenant.clone(),
            normalize: NormalizeOptions::with_region(&config.ingest.default_phone_region)?,
            commands_topic: config.resolver.commands_topic.clone(),
            producer: Mutex::new(bus.producer()?),
        })
    }
}

pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route(
            "/v1/profiles/{id}",
            get(profile_by_canonical).delete(erase_canonical),
        )
        .route(
            "/v1/profiles/{first}/{second}",
            get(profile_by_pair).delete(erase),
        )
        .route("/v1/commands/{id}", get(command))
        .with_state(api)
}

/// An error as the API reports it.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "profile_not_found",
            format!("no profile holds {what}"),
        )
    }

    fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "profile API");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

/// Who is calling: the tenant they may see and whether they may erase.
struct Caller {
    tenant: String,
    erase: bool,
}

fn caller(api: &Api, headers: &HeaderMap) -> Result<Caller, ApiError> {
    if api.keys.is_empty() {
        return Ok(Caller {
            tenant: api.default_tenant.clone(),
            erase: false,
        });
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send an API key as `Authorization: Bearer TOKEN`",
            )
        })?;
    let hash = cdp_proto::normalize::sha256_hex(token.trim());
    let key = api
        .keys
        .iter()
        .find(|k| k.token_sha256.eq_ignore_ascii_case(&hash))
        .ok_or_else(|| {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "unknown API key")
        })?;
    Ok(Caller {
        tenant: key.tenant.clone(),
        erase: key.scopes.contains(&Scope::Erase),
    })
}

/// Runs a RocksDB read off the async workers.
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

fn identifier(api: &Api, kind: &str, value: &str) -> Result<Identifier, ApiError> {
    let kind: IdentifierKind = kind.parse().map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_identifier_kind",
            format!("{e}"),
        )
    })?;
    cdp_proto::normalize(kind, value, &api.normalize).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_identifier",
            format!("{e}"),
        )
    })
}

/// `GET /v1/profiles/{canonical_id}`: a retired id redirects to the profile that absorbed it.
async fn profile_by_canonical(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let caller = caller(&api, &headers)?;
    if !is_canonical(&id) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_canonical_id",
            "a canonical id starts with cdp_; look identifiers up at /v1/profiles/{kind}/{value}",
        ));
    }
    let store = api.store.clone();
    let wanted = id.clone();
    let profile = blocking(move || {
        cdp_resolver::lookup::profile_by_canonical(store.as_ref(), &caller.tenant, &wanted)
            .map_err(ApiError::internal)
    })
    .await?
    .ok_or_else(|| ApiError::not_found(&id))?;
    if profile.canonical_id != id {
        let location = format!("/v1/profiles/{}", profile.canonical_id);
        return Ok((
            StatusCode::PERMANENT_REDIRECT,
            [(header::LOCATION, location)],
            Json(json!({ "retired": id, "canonical_id": profile.canonical_id })),
        )
            .into_response());
    }
    Ok(Json(profile).into_response())
}

/// `GET /v1/profiles/{kind}/{value}`, or `/v1/profiles/{canonical_id}/explain|history`.
async fn profile_by_pair(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path((first, second)): Path<(String, String)>,
) -> ApiResult {
    let caller = caller(&api, &headers)?;
    let store = api.store.clone();
    if is_canonical(&first) {
        let id = first.clone();
        return match second.as_str() {
            "explain" => {
                let e = blocking(move || {
                    cdp_resolver::explain::explain(
                        store.as_ref(),
                        &caller.tenant,
                        &Target::CanonicalId(id),
                    )
                    .map_err(ApiError::internal)
                })
                .await?
                .ok_or_else(|| ApiError::not_found(&first))?;
                Ok(Json(e).into_response())
            }
            "history" => {
                let p = blocking(move || {
                    cdp_resolver::lookup::profile_by_canonical(store.as_ref(), &caller.tenant, &id)
                        .map_err(ApiError::internal)
                })
                .await?
                .ok_or_else(|| ApiError::not_found(&first))?;
                Ok(Json(json!({
                    "canonical_id": p.canonical_id,
                    "version": p.version,
                    "created_at": p.created_at,
                    "aliases": p.aliases,
                    "merge_history": p.merge_history,
                }))
                .into_response())
            }
            _ => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_route",
                "after a canonical id: /explain or /history",
            )),
        };
    }
    let id = identifier(&api, &first, &second)?;
    let shown = id.clone();
    let profile = blocking(move || {
        cdp_resolver::lookup::profile_by_identifier(store.as_ref(), &caller.tenant, &id)
            .map_err(ApiError::internal)
    })
    .await?
    .ok_or_else(|| ApiError::not_found(shown))?;
    Ok(Json(profile).into_response())
}

/// `DELETE /v1/profiles/{kind}/{value}`: queues the erasure of the person holding the identifier
/// (the identifier is tombstoned even if nobody holds it). 202 with the command id.
async fn erase(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path((kind, value)): Path<(String, String)>,
) -> ApiResult {
    let caller = eraser(&api, &headers)?;
    let target = Target::Identifier(identifier(&api, &kind, &value)?);
    queue_forget(api, caller, target).await
}

/// `DELETE /v1/profiles/{canonical_id}`.
async fn erase_canonical(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let caller = eraser(&api, &headers)?;
    if !is_canonical(&id) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_canonical_id",
            "a canonical id starts with cdp_",
        ));
    }
    queue_forget(api, caller, Target::CanonicalId(id)).await
}

fn eraser(api: &Api, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let caller = caller(api, headers)?;
    if !caller.erase {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "erasure needs an API key with the erase scope",
        ));
    }
    Ok(caller)
}

async fn queue_forget(api: Arc<Api>, caller: Caller, target: Target) -> ApiResult {
    let now = chrono::Utc::now();
    let command = GraphCommand {
        id: format!(
            "cmd-{}-{:08x}",
            now.timestamp_millis(),
            rand::random::<u32>()
        ),
        tenant: caller.tenant.clone(),
        requested_at: now,
        op: CommandOp::Forget { target },
    };
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

/// `GET /v1/commands/{id}`: the outcome of a queued command of the caller's tenant.
async fn command(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let caller = caller(&api, &headers)?;
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
