//! tracer-svc's v1 API: the node API's routes (see `docs/api.md`), each answered by fanning
//! out to every node and merging, plus health and metrics.

pub mod error;
pub mod events;
pub mod pods;
pub mod sessions;

use std::{sync::Arc, time::Instant};

use axum::{
    extract::{DefaultBodyLimit, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde_json::json;

pub use self::error::ApiError;
use crate::{
    client::{NodeClient, NodeError},
    fanout::{Fanout, Missing},
    metrics::Metrics,
    nodes::{Membership, NodeEndpoint},
};

/// Largest request body accepted (a node takes 64 KiB too).
pub const MAX_BODY: usize = 64 * 1024;

/// What `--insecure-no-auth` on a non-loopback address means, at start-up and on `/readyz`.
pub const INSECURE_WARNING: &str =
    "the cluster API is served to other hosts with no authentication (--insecure-no-auth): anyone who can connect can trace every container of every node";

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The nodes.
    pub nodes: Arc<Membership>,
    /// The client of every node.
    pub client: Arc<NodeClient>,
    /// Who may call tracer-svc.
    pub auth: Arc<tracer_auth::http::AuthPolicy>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Set when a non-loopback address is served with no authentication.
    pub insecure: bool,
}

impl AppState {
    /// The nodes to ask now; none known is a 503.
    fn targets(&self) -> Result<Arc<Vec<NodeEndpoint>>, ApiError> {
        let nodes = self.nodes.current();
        if nodes.is_empty() {
            let why = if self.nodes.is_synced() {
                "no tracer-node is known: the tracer-node Service has no ready endpoint"
            } else {
                "no tracer-node is known yet: discovery has not listed the nodes"
            };
            return Err(ApiError::NoNodes(why.into()));
        }
        Ok(nodes)
    }

    /// Makes the answer to an `endpoint` request with `make` (which names the nodes it leaves
    /// out in `missing`): its result with the missing nodes' header, timed and counted.
    async fn answer(
        &self,
        endpoint: &'static str,
        missing: &Missing,
        make: impl std::future::Future<Output = Result<Response, ApiError>>,
    ) -> Response {
        let started = Instant::now();
        let result = make.await;
        self.metrics.answered(endpoint, started.elapsed().as_secs_f64(), !missing.is_empty());
        missing.stamp(result.unwrap_or_else(IntoResponse::into_response))
    }
}

/// The error when no node gave a usable answer: each node and why.
fn no_answer<T>(f: &Fanout<T>) -> ApiError {
    let timed_out = f.failed.iter().all(|(_, e)| matches!(e, NodeError::Timeout(_)));
    let each: Vec<String> = f.failed.iter().map(|(n, e)| format!("{}: {e}", n.name)).collect();
    ApiError::NoAnswer { timed_out, message: format!("no tracer-node answered ({})", each.join("; ")) }
}

/// The error when no node did what was asked: the first node's own refusal (a 4xx, relayed
/// with its status and name: it answered, so it is not missing), the other failed nodes named
/// missing unless they are `in_state` (already as asked); without a refusal, [`no_answer`].
fn refused<T>(f: &Fanout<T>, missing: &Missing, in_state: impl Fn(&NodeError) -> bool) -> ApiError {
    let refusal = f.failed.iter().find_map(|(n, e)| e.client_error().map(|c| (n, c)));
    for (m, e) in &f.failed {
        if refusal.is_none_or(|(n, _)| n != m) && !in_state(e) {
            missing.add(m);
        }
    }
    match refusal {
        Some((n, (status, message))) => upstream(n, status, message),
        None => no_answer(f),
    }
}

/// A node's own refusal, relayed with its status and name.
fn upstream(node: &NodeEndpoint, status: StatusCode, message: &str) -> ApiError {
    ApiError::Upstream { status, message: format!("{}: {message}", node.name) }
}

/// The API router; tests drive it with `tower::ServiceExt::oneshot`, no socket needed.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/pods", get(pods::get_pods))
        .route("/v1/trace-hooks", get(pods::get_trace_hooks))
        .route("/v1/trace-session", axum::routing::post(sessions::post_session))
        .route(
            "/v1/trace-session/{id}",
            get(sessions::get_session).put(sessions::put_session).delete(sessions::delete_session),
        )
        .route("/v1/trace-session/{id}/events", get(events::get_events))
        .route("/v1/trace-session/{id}/stats", get(sessions::get_stats))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { Json(json!({})) }))
        .route("/readyz", get(readyz))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(state.auth.clone(), tracer_auth::http::authenticate))
        .layer(axum::middleware::from_fn_with_state(MAX_BODY, tracer_http::json_errors))
        .with_state(state)
}

async fn metrics(State(state): State<AppState>) -> Response {
    let nodes = state.nodes.current();
    state.metrics.forget_absent(&nodes);
    state.metrics.nodes.set(i64::try_from(nodes.len()).unwrap_or(i64::MAX));
    state.metrics.synced.set(i64::from(state.nodes.is_synced()));
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.encode())
        .into_response()
}

/// Ready once the node list is complete (at once with `--nodes`); it does not ask the nodes,
/// so one node down does not take the cluster API out of its Service.
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    if !state.nodes.is_synced() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"Error": "starting: discovery has not listed the tracer-nodes yet"})),
        );
    }
    let mut body = json!({"Nodes": state.nodes.current().len()});
    if state.insecure {
        body["Warning"] = json!(INSECURE_WARNING);
    }
    (StatusCode::OK, Json(body))
}
