//! `/v1/trace-session[...]` through tracer-svc. A session has one id on every node it runs on:
//! tracer-svc picks it and creates the session with it on each node at once. Requests about an
//! id go to the nodes that have it; nothing that starts a session is ever sent twice.

use std::collections::BTreeMap;

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, Path, State},
    http::{Method, StatusCode},
    response::{IntoResponse, Response},
    Extension, Json,
};
use serde_json::json;
use tracer_api::v1::{NewSession, RunChange, SessionInfo, SessionStats, Sessions};
use tracer_auth::http::Caller;
use tracer_spec::session::{namespace_of, parse_id};

use super::{no_answer, refused, ApiError, AppState, MAX_BODY};
use crate::{
    client::NodeError,
    fanout::{fan_out, Missing},
    merge,
    nodes::NodeEndpoint,
};

/// Parses a JSON body with the router's limit.
fn json_body<T: serde::de::DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    Ok(tracer_http::json_body(body, MAX_BODY)?)
}

/// A session id of the path, as a node checks it.
pub(super) fn session_id(id: &str) -> Result<u64, ApiError> {
    parse_id(id).ok_or_else(|| {
        ApiError::BadRequest(format!("invalid session id {:?}", id.chars().take(64).collect::<String>()))
    })
}

/// A random session id, from the kernel's CSPRNG, as a node picks one.
fn new_id() -> Result<u64, ApiError> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| ApiError::Internal(format!("no random session id: {e}")))?;
    Ok(u64::from_ne_bytes(b))
}

/// The nodes that have session `id`, with its view there.
pub(super) struct Located {
    pub holders: Vec<(NodeEndpoint, SessionInfo)>,
    /// The session as one: its `Namespace` is what requests about it are authorized in.
    pub merged: SessionInfo,
}

/// Asks every node for session `id`. A 404 means "not here"; no holder among the nodes that
/// answered is a 404 (with the others named missing), no answer at all a 502/504.
pub(super) async fn locate(state: &AppState, id: u64, missing: &Missing) -> Result<Located, ApiError> {
    let nodes = state.targets()?;
    let path = format!("/v1/trace-session/{id}");
    let f = fan_out(&nodes, &state.metrics, "trace-session", |n| {
        let (client, path) = (state.client.clone(), path.clone());
        async move {
            let reply = client.call(&n, Method::GET, &path, None).await?;
            if reply.status == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            let mut one: Sessions = reply.json()?;
            one.remove(&id.to_string())
                .map(Some)
                .ok_or_else(|| NodeError::BadAnswer(format!("the answer does not hold session {id}")))
        }
    })
    .await;
    f.note_missing(missing);
    if f.none_answered() {
        return Err(no_answer(&f));
    }
    let holders: Vec<(NodeEndpoint, SessionInfo)> =
        f.answered.into_iter().filter_map(|(n, s)| s.map(|s| (n, s))).collect();
    match merge::session(holders.iter().map(|(_, s)| s.clone()).collect()) {
        Some(merged) => Ok(Located { holders, merged }),
        None if missing.is_empty() => Err(ApiError::NotFound(format!("no session {id} on any node"))),
        None => Err(ApiError::NotFound(format!("no session {id} on any node that answered"))),
    }
}

pub(super) async fn post_session(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let missing = Missing::default();
    state.answer("create", &missing, create(&state, &caller, body, &missing)).await
}

async fn create(
    state: &AppState,
    caller: &Caller,
    body: Result<Bytes, BytesRejection>,
    missing: &Missing,
) -> Result<Response, ApiError> {
    let mut spec: NewSession = json_body(body)?;
    // The same check a node makes: a pattern naming one namespace needs rights there only.
    caller.check("create", "trace-sessions", None, namespace_of(&spec.pod)).await?;
    let id = match spec.session_id.as_deref() {
        Some(chosen) => session_id(chosen)?,
        None => new_id()?,
    };
    spec.session_id = Some(id.to_string());
    let body = Bytes::from(serde_json::to_vec(&spec).map_err(|e| ApiError::Internal(e.to_string()))?);
    let nodes = state.targets()?;
    // Sent once to each node, never retried: a node that timed out may have made the session,
    // and then shows it under this id; a second try could make it twice.
    let f = fan_out(&nodes, &state.metrics, "create", |n| {
        let (client, body) = (state.client.clone(), body.clone());
        async move {
            let reply = client.call(&n, Method::POST, "/v1/trace-session", Some(body)).await?;
            if reply.status == StatusCode::NOT_FOUND {
                // No matching container (or no such hook) there: this node is simply not in it.
                return Ok(Err(reply.error_message()));
            }
            let mut one: Sessions = reply.json()?;
            one.remove(&id.to_string())
                .map(Ok)
                .ok_or_else(|| NodeError::BadAnswer(format!("the answer does not hold session {id}")))
        }
    })
    .await;
    created(f, id, missing)
}

fn created(
    mut f: crate::fanout::Fanout<Result<SessionInfo, String>>,
    id: u64,
    missing: &Missing,
) -> Result<Response, ApiError> {
    let mut made = Vec::new();
    let mut not_here = Vec::new();
    for (n, r) in std::mem::take(&mut f.answered) {
        match r {
            Ok(info) => made.push(info),
            Err(why) => not_here.push((n, why)),
        }
    }
    if !made.is_empty() {
        // Nodes that refused (a kernel without the system call, a limit) are named missing:
        // the session runs without them.
        f.note_missing(missing);
        let merged = merge::session(made).ok_or_else(|| ApiError::Internal("no session to merge".into()))?;
        return Ok(Json(BTreeMap::from([(id.to_string(), merged)])).into_response());
    }
    // Nothing made: a node's own refusal (a bad argument, a taken id, a limit) says why.
    if not_here.is_empty() || f.failed.iter().any(|(_, e)| e.client_error().is_some()) {
        return Err(refused(&f, missing, |_| false));
    }
    f.note_missing(missing);
    let (_, why) = &not_here[0];
    let scope = if missing.is_empty() { "any node" } else { "any node that answered" };
    Err(ApiError::NotFound(format!("no container matches on {scope} ({why})")))
}

pub(super) async fn get_session(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let missing = Missing::default();
    let make = async {
        if id == "all" {
            list(&state, &caller, &missing).await
        } else {
            one(&state, &caller, &id, &missing).await
        }
    };
    state.answer("trace-session", &missing, make).await
}

async fn one(state: &AppState, caller: &Caller, id: &str, missing: &Missing) -> Result<Response, ApiError> {
    let id = session_id(id)?;
    let located = locate(state, id, missing).await?;
    caller.check("get", "trace-sessions", None, located.merged.namespace.as_deref()).await?;
    Ok(Json(BTreeMap::from([(id.to_string(), located.merged)])).into_response())
}

async fn list(state: &AppState, caller: &Caller, missing: &Missing) -> Result<Response, ApiError> {
    let nodes = state.targets()?;
    let f = fan_out(&nodes, &state.metrics, "trace-session/all", |n| {
        let client = state.client.clone();
        async move { client.call(&n, Method::GET, "/v1/trace-session/all", None).await?.json::<Sessions>() }
    })
    .await;
    f.note_missing(missing);
    if f.none_answered() {
        return Err(no_answer(&f));
    }
    let mut all = merge::sessions(f.answered.into_iter().map(|(_, s)| s));
    let named: Vec<String> = all.values().filter_map(|s| s.namespace.clone()).collect();
    if let Some(allowed) =
        caller.namespaces_allowed("list", "trace-sessions", None, named.iter().map(String::as_str)).await?
    {
        // Sessions of any namespace are shown only to who may list them everywhere.
        all.retain(|_, s| s.namespace.as_ref().is_some_and(|ns| allowed.contains(ns)));
    }
    Ok(Json(all).into_response())
}

pub(super) async fn put_session(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let missing = Missing::default();
    state.answer("update", &missing, change(&state, &caller, &id, body, &missing)).await
}

async fn change(
    state: &AppState,
    caller: &Caller,
    id: &str,
    body: Result<Bytes, BytesRejection>,
    missing: &Missing,
) -> Result<Response, ApiError> {
    let id = session_id(id)?;
    let run: RunChange = json_body(body)?;
    let located = locate(state, id, missing).await?;
    caller.check("update", "trace-sessions", None, located.merged.namespace.as_deref()).await?;
    let body = Bytes::from(json!({ "Run": run.run }).to_string());
    let holders: Vec<NodeEndpoint> = located.holders.into_iter().map(|(n, _)| n).collect();
    let path = format!("/v1/trace-session/{id}");
    let f = fan_out(&holders, &state.metrics, "update", |n| {
        let (client, path, body) = (state.client.clone(), path.clone(), body.clone());
        async move { client.call(&n, Method::PUT, &path, Some(body)).await?.json::<serde_json::Value>().map(|_| ()) }
    })
    .await;
    all_or_some(f, missing, StatusCode::CONFLICT)
}

/// The answer to a change sent to several nodes: `{}` when at least one node made it (the
/// others named missing; with `already` the nodes that answered it, e.g. a 409 "already
/// running", are in the asked state and not missing); else the first node's refusal.
fn all_or_some(f: crate::fanout::Fanout<()>, missing: &Missing, already: StatusCode) -> Result<Response, ApiError> {
    let in_state = |e: &NodeError| e.client_error().is_some_and(|(s, _)| s == already);
    if !f.answered.is_empty() {
        for (n, e) in &f.failed {
            if !in_state(e) {
                missing.add(n);
            }
        }
        return Ok(Json(json!({})).into_response());
    }
    Err(refused(&f, missing, in_state))
}

pub(super) async fn delete_session(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let missing = Missing::default();
    state.answer("delete", &missing, delete(&state, &caller, &id, &missing)).await
}

async fn delete(state: &AppState, caller: &Caller, id: &str, missing: &Missing) -> Result<Response, ApiError> {
    let (targets, path) = if id == "all" {
        caller.check("delete", "trace-sessions", None, None).await?;
        ((*state.targets()?).clone(), "/v1/trace-session/all".to_owned())
    } else {
        let id = session_id(id)?;
        let located = locate(state, id, missing).await?;
        caller.check("delete", "trace-sessions", None, located.merged.namespace.as_deref()).await?;
        (located.holders.into_iter().map(|(n, _)| n).collect(), format!("/v1/trace-session/{id}"))
    };
    let f = fan_out(&targets, &state.metrics, "delete", |n| {
        let (client, path) = (state.client.clone(), path.clone());
        async move { client.call(&n, Method::DELETE, &path, None).await?.json::<serde_json::Value>().map(|_| ()) }
    })
    .await;
    // A node where it is gone already (deleted meanwhile) is in the asked state.
    all_or_some(f, missing, StatusCode::NOT_FOUND)
}

pub(super) async fn get_stats(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let missing = Missing::default();
    state.answer("stats", &missing, stats(&state, &caller, &id, &missing)).await
}

async fn stats(state: &AppState, caller: &Caller, id: &str, missing: &Missing) -> Result<Response, ApiError> {
    let id = session_id(id)?;
    let located = locate(state, id, missing).await?;
    caller.check("get", "trace-sessions", None, located.merged.namespace.as_deref()).await?;
    // Each node's statistics under the name it gives itself, as its events carry it.
    let names: BTreeMap<String, String> =
        located.holders.iter().map(|(n, s)| (n.url.clone(), s.node.clone())).collect();
    let holders: Vec<NodeEndpoint> = located.holders.into_iter().map(|(n, _)| n).collect();
    let path = format!("/v1/trace-session/{id}/stats");
    let f = fan_out(&holders, &state.metrics, "stats", |n| {
        let (client, path) = (state.client.clone(), path.clone());
        async move { client.call(&n, Method::GET, &path, None).await?.json::<SessionStats>() }
    })
    .await;
    f.note_missing(missing);
    if f.none_answered() {
        return Err(no_answer(&f));
    }
    let parts = f.answered.into_iter().map(|(n, s)| (names.get(&n.url).cloned().unwrap_or(n.name), s));
    Ok(Json(merge::stats(parts)).into_response())
}
