//! `GET /v1/pods` and `GET /v1/trace-hooks`: the union over every node.

use std::time::Instant;

use axum::{
    extract::State,
    http::Method,
    response::{IntoResponse, Response},
    Extension, Json,
};
use tracer_api::v1::{Pods, TraceHooks};
use tracer_auth::http::Caller;

use super::{no_answer, ApiError, AppState};
use crate::{fanout::fan_out, fanout::Missing, merge};

pub(super) async fn get_pods(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> Response {
    let started = Instant::now();
    let mut missing = Missing::default();
    let result = pods(&state, &caller, &mut missing).await;
    state.finish("pods", started, &missing, result)
}

async fn pods(state: &AppState, caller: &Caller, missing: &mut Missing) -> Result<Response, ApiError> {
    let nodes = state.targets()?;
    let f = fan_out(&nodes, &state.metrics, "pods", |n| {
        let client = state.client.clone();
        async move { client.call(&n, Method::GET, "/v1/pods", None).await?.json::<Pods>() }
    })
    .await;
    f.note_missing(missing);
    if f.none_answered() {
        return Err(no_answer(&f));
    }
    let mut pods = merge::pods(f.answered.into_iter().map(|(_, p)| p));
    // A namespace-scoped caller sees the pods of its namespaces only, as on a node.
    let namespaces: Vec<String> =
        pods.values().flat_map(|p| p.containers.values().map(|c| c.namespace.clone())).collect();
    if let Some(allowed) =
        caller.namespaces_allowed("list", "pods", None, namespaces.iter().map(String::as_str)).await?
    {
        if allowed.is_empty() {
            caller.check("list", "pods", None, None).await?;
        }
        pods.retain(|_, p| p.containers.values().all(|c| allowed.contains(&c.namespace)));
    }
    Ok(Json(pods).into_response())
}

pub(super) async fn get_trace_hooks(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> Response {
    let started = Instant::now();
    let mut missing = Missing::default();
    let result = trace_hooks(&state, &caller, &mut missing).await;
    state.finish("trace-hooks", started, &missing, result)
}

async fn trace_hooks(state: &AppState, caller: &Caller, missing: &mut Missing) -> Result<Response, ApiError> {
    caller.check("list", "trace-hooks", None, None).await?;
    let nodes = state.targets()?;
    let f = fan_out(&nodes, &state.metrics, "trace-hooks", |n| {
        let client = state.client.clone();
        async move { client.call(&n, Method::GET, "/v1/trace-hooks", None).await?.json::<TraceHooks>() }
    })
    .await;
    f.note_missing(missing);
    if f.none_answered() {
        return Err(no_answer(&f));
    }
    Ok(Json(merge::trace_hooks(f.answered.into_iter().map(|(_, h)| h))).into_response())
}
