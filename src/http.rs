//! The HTTP listener every cdp process serves: `/healthz` (alive), `/readyz` (consuming and
//! caught up within `http.ready_max_lag`), `/metrics` (Prometheus text), `/openapi.json`, the
//! identity console (`/console`, where the resolver runs) and the API routes of the stages it
//! runs ([`ROUTES`], the one table the router is built from and the OpenAPI document is checked
//! against). It runs on its own thread with a small multi-threaded tokio runtime (`http.workers`
//! threads), so one slow response does not hold up the probes; bus calls it makes (lag) and
//! store reads that scan run on the blocking pool so a slow broker never stalls the listener
//! (profile lookups, an answer from the read tier or a few point reads, run on the workers: see
//! `api::blocking` and `read_tier`).

use crate::api::{self, ApiError, CohortApi, ProfileApi};
use crate::collect::{self, Collector};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::pipeline::{self, Counters, Stages};
use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::{Json, Router};
use cdp_bus::Bus;
use cdp_ingest::collect::Route as TrackingRoute;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What the routes read.
pub struct Probe {
    pub bus: Arc<dyn Bus>,
    pub counters: Arc<Counters>,
    pub shutdown: Arc<AtomicBool>,
    /// (stage, consumer group, input topics) of each stage this process runs.
    pub groups: Vec<(&'static str, String, Vec<String>)>,
    pub ready_max_lag: u64,
    /// Threads of the listener's runtime (`http.workers`).
    pub workers: usize,
    pub metrics: Metrics,
    /// The profile routes, where this process runs the resolver.
    pub profiles: Option<Arc<ProfileApi>>,
    /// The cohort routes, where this process runs activation.
    pub cohorts: Option<Arc<CohortApi>>,
    /// The Segment Tracking API routes, where this process is `cdp collect`.
    pub collector: Option<Arc<Collector>>,
}

impl Probe {
    pub fn new(
        config: &Config,
        stages: Stages,
        bus: Arc<dyn Bus>,
        counters: Arc<Counters>,
        shutdown: Arc<AtomicBool>,
    ) -> Result<Self> {
        Ok(Self {
            bus,
            counters,
            shutdown,
            groups: pipeline::stage_groups(config, stages),
            ready_max_lag: config.http.ready_max_lag,
            workers: config.http.workers,
            metrics: Metrics::new(stages)?,
            profiles: None,
            cohorts: None,
            collector: None,
        })
    }

    /// Consumer lag of each stage; a stage whose lag cannot be read is reported as an error.
    fn lags(&self) -> Vec<(&'static str, Result<u64>)> {
        self.groups
            .iter()
            .map(|(stage, group, topics)| (*stage, self.bus.lag(group, topics).map_err(Into::into)))
            .collect()
    }
}

/// A running listener; dropping it stops it.
pub struct Server {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Binds `listen` now (so a taken port fails the command at once) and serves on a thread.
pub fn start(listen: &str, probe: Probe) -> Result<Server> {
    let addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("http.listen {listen:?} is not an address"))?;
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("binding the HTTP listener to {addr}"))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(probe.workers.max(1))
        .thread_name("http-worker")
        .enable_all()
        .build()?;
    let app = router(Arc::new(probe));
    let thread = std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "http listener");
                        return;
                    }
                };
                let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                    let _ = stopped.await;
                });
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "http listener stopped");
                }
            })
        })?;
    tracing::info!(%addr, "http listening");
    Ok(Server {
        addr,
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// One route of the listener: its path (axum and OpenAPI spell parameters alike) and its
/// handlers, from what this process serves (`None` where it does not run the owning stage).
pub struct Route {
    pub path: &'static str,
    mount: fn(&Arc<Probe>) -> Option<MethodRouter>,
}

/// Every route the listener can serve; `openapi.json` documents exactly these paths.
pub const ROUTES: &[Route] = &[
    Route {
        path: "/healthz",
        mount: |_| Some(get(healthz)),
    },
    Route {
        path: "/readyz",
        mount: |p| Some(get(readyz).with_state(p.clone())),
    },
    Route {
        path: "/metrics",
        mount: |p| Some(get(metrics).with_state(p.clone())),
    },
    Route {
        path: "/openapi.json",
        mount: |_| Some(get(openapi)),
    },
    Route {
        path: "/v1/profiles/{canonical_id}",
        mount: |p| {
            let api = p.profiles.clone()?;
            Some(
                get(api::profile_by_canonical)
                    .delete(api::erase_canonical)
                    .with_state(api),
            )
        },
    },
    Route {
        path: "/v1/profiles/{canonical_id}/explain",
        mount: |p| Some(get(api::explain).with_state(p.profiles.clone()?)),
    },
    Route {
        path: "/v1/profiles/{canonical_id}/history",
        mount: |p| Some(get(api::history).with_state(p.profiles.clone()?)),
    },
    Route {
        path: "/v1/profiles/{canonical_id}/cohorts",
        mount: |p| {
            let state = (p.cohorts.clone()?, p.profiles.clone());
            Some(get(api::profile_cohorts).with_state(state))
        },
    },
    Route {
        path: "/v1/profiles/{kind}/{value}",
        mount: |p| {
            let api = p.profiles.clone()?;
            Some(
                get(api::profile_by_identifier)
                    .delete(api::erase)
                    .with_state(api),
            )
        },
    },
    Route {
        path: "/v1/commands/{command_id}",
        mount: |p| Some(get(api::command).with_state(p.profiles.clone()?)),
    },
    Route {
        path: "/v1/cohorts",
        mount: |p| Some(get(api::cohorts).with_state(p.cohorts.clone()?)),
    },
    Route {
        path: "/v1/cohorts/{key}/members",
        mount: |p| Some(get(api::cohort_members).with_state(p.cohorts.clone()?)),
    },
    Route {
        path: "/v1/batch",
        mount: |p| {
            Some(collect::method_router(
                TrackingRoute::Batch,
                p.collector.clone(),
            ))
        },
    },
    Route {
        path: "/v1/track",
        mount: |p| {
            Some(collect::method_router(
                TrackingRoute::Track,
                p.collector.clone(),
            ))
        },
    },
    Route {
        path: "/v1/identify",
        mount: |p| {
            Some(collect::method_router(
                TrackingRoute::Identify,
                p.collector.clone(),
            ))
        },
    },
    Route {
        path: "/v1/page",
        mount: |p| {
            Some(collect::method_router(
                TrackingRoute::Page,
                p.collector.clone(),
            ))
        },
    },
    Route {
        path: "/v1/screen",
        mount: |p| {
            Some(collect::method_router(
                TrackingRoute::Screen,
                p.collector.clone(),
            ))
        },
    },
    Route {
        path: "/v1/alias",
        mount: |p| {
            Some(collect::method_router(
                TrackingRoute::Alias,
                p.collector.clone(),
            ))
        },
    },
    Route {
        path: "/v1/group",
        mount: |p| {
            Some(collect::method_router(
                TrackingRoute::Group,
                p.collector.clone(),
            ))
        },
    },
    // analytics.js's short path for /v1/batch.
    Route {
        path: "/v1/b",
        mount: |p| {
            Some(collect::method_router(
                TrackingRoute::Batch,
                p.collector.clone(),
            ))
        },
    },
    // analytics.js's short path for /v1/track.
    Route {
        path: "/v1/t",
        mount: |p| {
            Some(collect::method_router(
                TrackingRoute::Track,
                p.collector.clone(),
            ))
        },
    },
    // analytics.js's short path for /v1/identify.
    Route {
        path: "/v1/i",
        mount: |p| {
            Some(collect::method_router(
                TrackingRoute::Identify,
                p.collector.clone(),
            ))
        },
    },
    // analytics.js's short path for /v1/page.
    Route {
        path: "/v1/p",
        mount: |p| {
            Some(collect::method_router(
                TrackingRoute::Page,
                p.collector.clone(),
            ))
        },
    },
    // analytics.js's short path for /v1/screen.
    Route {
        path: "/v1/s",
        mount: |p| {
            Some(collect::method_router(
                TrackingRoute::Screen,
                p.collector.clone(),
            ))
        },
    },
    // analytics.js's short path for /v1/alias.
    Route {
        path: "/v1/a",
        mount: |p| {
            Some(collect::method_router(
                TrackingRoute::Alias,
                p.collector.clone(),
            ))
        },
    },
    // analytics.js's short path for /v1/group.
    Route {
        path: "/v1/g",
        mount: |p| {
            Some(collect::method_router(
                TrackingRoute::Group,
                p.collector.clone(),
            ))
        },
    },
    Route {
        path: "/console",
        mount: |p| p.profiles.as_ref().map(|_| get(crate::console::page)),
    },
];

/// The OpenAPI 3.1 document of [`ROUTES`], served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

fn router(probe: Arc<Probe>) -> Router {
    ROUTES
        .iter()
        .filter_map(|route| Some((route.path, (route.mount)(&probe)?)))
        .fold(Router::new(), |router, (path, handlers)| {
            router.route(path, handlers)
        })
        .fallback(api::unknown_route)
        .method_not_allowed_fallback(api::method_not_allowed)
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(probe): State<Arc<Probe>>) -> Response {
    let result = tokio::task::spawn_blocking(move || {
        let stopping = probe.shutdown.load(Ordering::Relaxed);
        let lags = probe.lags();
        let mut ready = !stopping;
        let mut stages = serde_json::Map::new();
        for (stage, lag) in lags {
            let value = match lag {
                Ok(lag) => {
                    ready &= lag <= probe.ready_max_lag;
                    json!({ "lag": lag })
                }
                Err(e) => {
                    ready = false;
                    json!({ "error": format!("{e:#}") })
                }
            };
            stages.insert(stage.to_string(), value);
        }
        (
            ready,
            json!({ "ready": ready, "stopping": stopping, "stages": stages }),
        )
    })
    .await;
    match result {
        Ok((true, body)) => (StatusCode::OK, Json(body)).into_response(),
        Ok((false, body)) => (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response(),
        Err(e) => internal(e.into()),
    }
}

async fn metrics(State(probe): State<Arc<Probe>>) -> Response {
    let result = tokio::task::spawn_blocking(move || {
        let lags = probe.lags();
        probe.metrics.refresh(&probe.counters, |stage| {
            lags.iter()
                .find(|(s, _)| *s == stage)
                .and_then(|(_, lag)| lag.as_ref().ok().copied())
        });
        probe.metrics.encode()
    })
    .await;
    match result {
        Ok(Ok(text)) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e.into()),
    }
}

fn internal(e: anyhow::Error) -> Response {
    ApiError::internal(format!("{e:#}")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ErrorCode;
    use serde_json::Value;
    use std::collections::BTreeSet;

    fn document() -> Value {
        serde_json::from_str(OPENAPI).expect("openapi.json is JSON")
    }

    /// Every `$ref` in `v`, e.g. `#/components/schemas/Error`.
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("$ref", Value::String(r)) => out.push(r),
                        _ => refs(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
        match v["$ref"].as_str() {
            Some(r) => doc
                .pointer(r.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("{r} resolves")),
            None => v,
        }
    }

    #[test]
    fn the_document_describes_exactly_the_routes_of_the_router() {
        let doc = document();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."));
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        let routed: Vec<&str> = ROUTES.iter().map(|r| r.path).collect();
        let routed_set: BTreeSet<&str> = routed.iter().copied().collect();
        assert_eq!(routed.len(), routed_set.len(), "a path is routed twice");
        let documented: BTreeSet<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(routed_set, documented);

        // Every operation declares each parameter of its path, and no path parameter it lacks.
        for (path, item) in doc["paths"].as_object().unwrap() {
            let in_path: BTreeSet<&str> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            for (method, op) in item.as_object().unwrap() {
                let declared: BTreeSet<&str> = op["parameters"]
                    .as_array()
                    .map(|ps| {
                        ps.iter()
                            .map(|p| resolve(&doc, p))
                            .filter(|p| p["in"] == "path")
                            .map(|p| p["name"].as_str().unwrap())
                            .collect()
                    })
                    .unwrap_or_default();
                assert_eq!(declared, in_path, "{method} {path}");
                assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()));
            }
        }
        let mut all = Vec::new();
        refs(&doc, &mut all);
        for r in all {
            assert!(doc.pointer(r.trim_start_matches('#')).is_some(), "{r}");
        }
    }

    /// The keys of an object schema, and (for string enums) its values.
    fn keys(schema: &Value) -> BTreeSet<&str> {
        schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect()
    }

    fn enumerated(schema: &Value) -> BTreeSet<&str> {
        schema["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect()
    }

    /// What explain returns for a refused probabilistic link, serialised by the resolver's own
    /// types, has exactly the keys the Link, MatchEvidence and FieldContribution schemas list;
    /// every field and level the matcher can report is in their enums.
    #[test]
    fn the_document_describes_the_links_and_evidence_explain_returns() {
        use cdp_proto::{Identifier, IdentifierKind};
        use cdp_resolver::explain::ExplainedLink;
        use cdp_resolver::link::{Link, LinkDecision};
        use cdp_resolver::matching::compare::Level;
        use cdp_resolver::matching::field::Field;
        use cdp_resolver::matching::model::{Contribution, Score};

        let doc = document();
        let schemas = &doc["components"]["schemas"];
        let link = ExplainedLink {
            link: Link {
                id: 7,
                tenant: "acme".into(),
                a: Identifier::new(IdentifierKind::CrmId, "crm-1"),
                b: Identifier::new(IdentifierKind::CrmId, "crm-2"),
                rule: cdp_resolver::matching::RULE.into(),
                confidence: 0.97,
                observed_at: chrono::Utc::now(),
                signal_id: "evt-1".into(),
                decision: LinkDecision::Refused("conflicting_identifier".into()),
                evidence: Some(Score {
                    model_version: 3,
                    probability: 0.97,
                    weight: 5.1,
                    contributions: vec![Contribution {
                        field: Field::LastName,
                        level: Level::Close,
                        weight: 2.5,
                    }],
                }),
            },
            other_profile: Some("cdp_0123".into()),
        };
        let v = serde_json::to_value(&link).unwrap();
        let have =
            |v: &Value| -> BTreeSet<String> { v.as_object().unwrap().keys().cloned().collect() };
        let want =
            |s: &Value| -> BTreeSet<String> { keys(s).into_iter().map(String::from).collect() };
        assert_eq!(have(&v), want(&schemas["Link"]));
        assert_eq!(have(&v["evidence"]), want(&schemas["MatchEvidence"]));
        let contribution = &v["evidence"]["contributions"][0];
        assert_eq!(have(contribution), want(&schemas["FieldContribution"]));
        let evidence = &schemas["Link"]["properties"]["evidence"]["$ref"];
        assert_eq!(evidence, "#/components/schemas/MatchEvidence");
        for list in ["links", "refused", "candidates", "removed"] {
            let items = &schemas["Explanation"]["properties"][list]["items"]["$ref"];
            assert_eq!(items, "#/components/schemas/Link", "{list}");
        }

        let as_str = |v: Value| v.as_str().unwrap().to_string();
        let decisions: BTreeSet<String> = [
            LinkDecision::Accepted,
            LinkDecision::Candidate,
            LinkDecision::Refused(String::new()),
            LinkDecision::Removed(String::new()),
        ]
        .iter()
        .map(|d| as_str(serde_json::to_value(d).unwrap()["decision"].clone()))
        .collect();
        let listed = |s: &Value| -> BTreeSet<String> {
            enumerated(s).into_iter().map(String::from).collect()
        };
        assert_eq!(
            decisions,
            listed(&schemas["Link"]["properties"]["decision"])
        );
        let fields: BTreeSet<String> = Field::ALL
            .iter()
            .map(|f| as_str(serde_json::to_value(f).unwrap()))
            .collect();
        let contribution = &schemas["FieldContribution"]["properties"];
        assert_eq!(fields, listed(&contribution["field"]));
        let levels: BTreeSet<String> = Level::TEXT
            .iter()
            .chain(&Level::DATE)
            .map(|l| as_str(serde_json::to_value(l).unwrap()))
            .collect();
        assert_eq!(levels, listed(&contribution["level"]));
    }

    #[test]
    fn the_document_lists_every_error_code_and_its_status() {
        let doc = document();
        let code =
            &doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"];
        let listed: BTreeSet<&str> = code["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        let returned: BTreeSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(listed, returned);
        let described = code["description"].as_str().unwrap();
        for c in ErrorCode::ALL {
            let line = format!("- `{}` ({}):", c.as_str(), c.status().as_u16());
            assert!(described.contains(&line), "{line} in the code description");
        }
    }
}
