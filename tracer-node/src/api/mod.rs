//! The v1 REST API of tracer-node (see `docs/api.md`) plus health endpoints.

pub mod error;
pub mod pods;
pub mod sessions;

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use axum::{
    extract::{DefaultBodyLimit, State},
    http::StatusCode,
    routing::get,
    Json, Router,
};
use serde_json::{json, Value};
use tracing::instrument;

pub use self::error::ApiError;
use crate::{registry::Registry, sessions::SessionManager};
/// Authentication and per-namespace authorization, shared with tracer-svc.
pub use tracer_auth::http as auth;

/// What `--insecure-no-auth` on a non-loopback address means, at start-up and on `/readyz`.
pub const INSECURE_WARNING: &str =
    "the API is served to other hosts with no authentication (--insecure-no-auth): anyone who can connect can trace every container";

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The live container registry.
    pub registry: Arc<Registry>,
    /// Trace sessions.
    pub sessions: Arc<SessionManager>,
    /// This node's name.
    pub node_name: String,
    /// Set once the registry is loaded, the socket bound and the spool replayed.
    pub ready: Arc<AtomicBool>,
    /// Who may call the API.
    pub auth: Arc<auth::AuthPolicy>,
    /// Set when a non-loopback address is served with `--insecure-no-auth`: `/readyz` says so.
    pub insecure: bool,
    /// Counters of the HTTP server loop (connections, timeouts), for `/metrics`.
    pub http: Arc<tracer_http::ServerStats>,
}

/// The API router; tests drive it with `tower::ServiceExt::oneshot`, no socket needed.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/pods", get(get_pods))
        .route("/v1/trace-hooks", get(sessions::get_trace_hooks))
        .route("/v1/trace-session", axum::routing::post(sessions::post_session))
        .route(
            "/v1/trace-session/{id}",
            get(sessions::get_session).put(sessions::put_session).delete(sessions::delete_session),
        )
        .route("/v1/trace-session/{id}/events", get(sessions::get_events))
        .route("/v1/trace-session/{id}/stats", get(sessions::get_stats))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(sessions::MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(state.auth.clone(), auth::authenticate))
        .layer(axum::middleware::from_fn_with_state(sessions::MAX_BODY, tracer_http::json_errors))
        .with_state(state)
}

#[instrument(skip_all)]
async fn get_pods(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<auth::Caller>,
) -> Result<Json<tracer_api::v1::Pods>, ApiError> {
    let mut entries = state.registry.snapshot();
    // A namespace-scoped user sees the pods of its namespaces only.
    let namespaces: Vec<String> = entries.iter().map(|e| e.record.namespace.clone()).collect();
    if let Some(allowed) =
        caller.namespaces_allowed("list", "pods", None, namespaces.iter().map(String::as_str)).await?
    {
        if allowed.is_empty() {
            // Not even one namespace: the reason names what is missing.
            caller.check("list", "pods", None, None).await?;
        }
        entries.retain(|e| allowed.contains(&e.record.namespace));
    }
    let registry = state.registry.clone();
    // Reading cgroups and stats is blocking file I/O: keep it off the async workers.
    let pods =
        tokio::task::spawn_blocking(move || pods::build(&entries, registry.procfs(), registry.tracker().map(|t| &**t)))
            .await
            .map_err(|e| ApiError::Internal(format!("pods task failed: {e}")))?;
    Ok(Json(pods))
}

/// Prometheus text exposition of the node's counters.
async fn metrics(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    let (sessions, sessions_running, live_overrun) = state.sessions.gauges().await;
    let gauges = crate::metrics::Gauges {
        containers: state.registry.len() as u64,
        sessions,
        sessions_running,
        live_overrun,
        export_enabled: state.sessions.exporter().is_some(),
        exit_watcher_up: state.registry.exit_watcher_alive(),
        task_tracker_up: state.registry.tracker().is_some_and(|t| t.is_alive()),
        task_tracker: state.registry.tracker().map(|t| t.counters.snapshot()).unwrap_or_default(),
    };
    let text = crate::metrics::render(state.sessions.metrics(), &state.registry.counters, &state.http, &gauges);
    ([(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
}

async fn healthz() -> Json<Value> {
    Json(json!({}))
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    if !state.registry.exit_watcher_alive() {
        // Containers whose init is killed would stay listed, and sessions would keep them.
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"Error": "the exit watcher stopped: exits are seen only at poststop; restart tracer-node"})),
        );
    }
    if state.ready.load(Ordering::Acquire) {
        let mut body = json!({"Node": state.node_name, "Containers": state.registry.len()});
        if state.insecure {
            body["Warning"] = json!(INSECURE_WARNING);
        }
        (StatusCode::OK, Json(body))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"Error": "starting: registry not loaded yet"})))
    }
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}
