//! The HTTP listener every cdp process serves: `/healthz` (alive), `/readyz` (consuming and
//! caught up within `http.ready_max_lag`) and `/metrics` (Prometheus text). It runs on its own
//! thread with a small tokio runtime; bus calls it makes (lag) run on the blocking pool so a slow
//! broker never stalls the listener.

use crate::config::Config;
use crate::metrics::Metrics;
use crate::pipeline::{self, Counters, Stages};
use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cdp_bus::Bus;
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
    pub metrics: Metrics,
    /// The profile API, where this process runs the resolver.
    pub api: Option<Arc<crate::api::Api>>,
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
            metrics: Metrics::new(stages)?,
            api: None,
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
    let runtime = tokio::runtime::Builder::new_current_thread()
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

fn router(probe: Arc<Probe>) -> Router {
    let api = probe.api.clone();
    let probes = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(probe);
    match api {
        Some(api) => probes.merge(crate::api::router(api)),
        None => probes,
    }
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
    tracing::error!(error = %format!("{e:#}"), "http handler");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({ "error": { "code": "internal", "message": format!("{e:#}") } })),
    )
        .into_response()
}
