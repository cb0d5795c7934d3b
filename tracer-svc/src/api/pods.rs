//! `GET /v1/pods` and `GET /v1/trace-hooks`: the union over every node.

use axum::{
    extract::State,
    http::{header, Method},
    response::{IntoResponse, Response},
    Extension, Json,
};
use tracer_api::v1::TraceHooks;
use tracer_auth::http::Caller;

use super::{no_answer, ApiError, AppState};
use crate::{
    client::NodeError,
    fanout::{fan_out, Missing},
    merge::{self, pods::PodsIndex},
};

pub(super) async fn get_pods(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> Response {
    let missing = Missing::default();
    state.answer("pods", &missing, pods(&state, &caller, &missing)).await
}

async fn pods(state: &AppState, caller: &Caller, missing: &Missing) -> Result<Response, ApiError> {
    let nodes = state.targets()?;
    let mut f = fan_out(&nodes, &state.metrics, "pods", |n| {
        let client = state.client.clone();
        async move { client.call(&n, Method::GET, "/v1/pods", None).await?.success() }
    })
    .await;
    let bodies = std::mem::take(&mut f.answered);
    let mut index = PodsIndex::new();
    for (node, body) in &bodies {
        if let Err(e) = merge::pods::add(&mut index, body) {
            f.fail(node.clone(), NodeError::BadAnswer(format!("not the API's /v1/pods: {e}")), &state.metrics, "pods");
        }
    }
    f.note_missing(missing);
    if f.failed.len() == nodes.len() {
        return Err(no_answer(&f));
    }
    // A namespace-scoped caller sees the pods of its namespaces only, as on a node.
    let namespaces: Vec<String> = index.namespaces().into_iter().map(str::to_owned).collect();
    if let Some(allowed) =
        caller.namespaces_allowed("list", "pods", None, namespaces.iter().map(String::as_str)).await?
    {
        if allowed.is_empty() {
            caller.check("list", "pods", None, None).await?;
        }
        index.retain(|ns| allowed.contains(ns));
    }
    Ok(([(header::CONTENT_TYPE, "application/json")], index.to_json()).into_response())
}

pub(super) async fn get_trace_hooks(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> Response {
    let missing = Missing::default();
    state.answer("trace-hooks", &missing, trace_hooks(&state, &caller, &missing)).await
}

async fn trace_hooks(state: &AppState, caller: &Caller, missing: &Missing) -> Result<Response, ApiError> {
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
