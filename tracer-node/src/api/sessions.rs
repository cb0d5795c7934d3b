//! `/v1/trace-hooks` and `/v1/trace-session[...]` handlers, plus the session events stream
//! and statistics (extensions on new paths).

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    body::{Body, Bytes},
    extract::{rejection::BytesRejection, Path, Query, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Extension, Json,
};
use futures_util::{stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tracer_api::v1::{NewSession, RunChange, SessionStats, Sessions, TraceHooks};
use tracing::instrument;

use super::{auth::Caller, error::ApiError, AppState};
use crate::{
    batch::Batch,
    hooks::HookError,
    sessions::{events::to_wire, namespace_of, parse_id, SessionError},
};

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::NotFound(_) | SessionError::NoMatch { .. } | SessionError::Hook(HookError::Unknown(_)) => {
                ApiError::NotFound(e.to_string())
            }
            SessionError::BadId(_)
            | SessionError::Invalid(_)
            | SessionError::Hook(HookError::BadArguments(_) | HookError::Filter(_) | HookError::Args(_))
            | SessionError::StartFailed { .. } => ApiError::BadRequest(e.to_string()),
            SessionError::ShuttingDown => ApiError::Unavailable(e.to_string()),
            SessionError::AlreadyRunning(_) | SessionError::IdTaken(_) => ApiError::Conflict(e.to_string()),
            SessionError::Limit { .. } => ApiError::TooManyRequests(e.to_string()),
            SessionError::KernelShort { .. } => ApiError::Unavailable(e.to_string()),
            SessionError::Hook(HookError::Kernel(_)) | SessionError::Task { .. } | SessionError::Tracefs(_) => {
                ApiError::Internal(e.to_string())
            }
        }
    }
}

/// Parses a JSON body with the router's limit.
fn json_body<T: serde::de::DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    Ok(tracer_http::json_body(body, MAX_BODY)?)
}

pub(super) async fn get_trace_hooks(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<TraceHooks>, ApiError> {
    caller.check("list", "trace-hooks", None, None).await?;
    Ok(Json(state.sessions.catalog().describe()))
}

/// Checks `verb` on session `id` (in its namespace) and answers the session.
async fn session_for(
    state: &AppState,
    caller: &Caller,
    verb: &'static str,
    subresource: Option<&'static str>,
    id: u64,
) -> Result<Arc<crate::sessions::Session>, ApiError> {
    let s = state.sessions.get(id)?;
    caller.check(verb, "trace-sessions", subresource, s.namespace()).await?;
    Ok(s)
}

#[instrument(skip_all)]
pub(super) async fn post_session(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Sessions>, ApiError> {
    let spec: NewSession = json_body(body)?;
    // A session whose pod pattern names one namespace selects containers there only; any other
    // pattern may select every namespace's, and needs the right cluster-wide.
    caller.check("create", "trace-sessions", None, namespace_of(&spec.pod)).await?;
    let info = state.sessions.create(spec)?;
    Ok(Json(BTreeMap::from([(info.id.clone(), info)])))
}

#[instrument(skip_all, fields(session = %id))]
pub(super) async fn get_session(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if id == "all" {
        let mut all = state.sessions.list();
        let named: Vec<&str> = all.iter().filter_map(|s| s.namespace()).collect();
        if let Some(allowed) = caller.namespaces_allowed("list", "trace-sessions", None, named).await? {
            // Sessions of any namespace are shown only to who may list them everywhere.
            all.retain(|s| s.namespace().is_some_and(|ns| allowed.contains(ns)));
        }
        return Ok(stream_sessions(state.sessions.clone(), all));
    }
    let s = session_for(&state, &caller, "get", None, parse_id(&id)?).await?;
    let info = state.sessions.info(&s);
    Ok(Json(BTreeMap::from([(info.id.clone(), info)])).into_response())
}

/// `sessions` as the JSON object `Sessions`, one session per chunk, each read when the client
/// is ready for it: the answer for every session of a node (a few MB at `--max-sessions` with
/// large contexts) is never held in memory at once, however many clients ask and read slowly.
fn stream_sessions(
    manager: Arc<crate::sessions::SessionManager>,
    sessions: Vec<Arc<crate::sessions::Session>>,
) -> Response {
    let entries = stream::iter(sessions.into_iter().enumerate()).map(move |(i, s)| {
        let info = manager.info(&s);
        let mut chunk = Vec::with_capacity(512);
        if i > 0 {
            chunk.push(b',');
        }
        serde_json::to_writer(&mut chunk, &info.id)?;
        chunk.push(b':');
        serde_json::to_writer(&mut chunk, &info)?;
        Ok::<_, serde_json::Error>(Bytes::from(chunk))
    });
    let body = stream::once(async { Ok(Bytes::from_static(b"{")) })
        .chain(entries)
        .chain(stream::once(async { Ok(Bytes::from_static(b"}")) }));
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], Body::from_stream(body)).into_response()
}

#[instrument(skip_all, fields(session = %id))]
pub(super) async fn put_session(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let change: RunChange = json_body(body)?;
    session_for(&state, &caller, "update", None, id).await?;
    if change.run {
        state.sessions.start(id).await?;
    } else {
        state.sessions.stop(id).await?;
    }
    Ok(Json(json!({})))
}

#[instrument(skip_all, fields(session = %id))]
pub(super) async fn delete_session(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if id == "all" {
        caller.check("delete", "trace-sessions", None, None).await?;
        state.sessions.delete_all().await?;
    } else {
        let id = parse_id(&id)?;
        session_for(&state, &caller, "delete", None, id).await?;
        state.sessions.delete(id).await?;
    }
    Ok(Json(json!({})))
}

pub(super) async fn get_stats(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<SessionStats>, ApiError> {
    let id = parse_id(&id)?;
    session_for(&state, &caller, "get", None, id).await?;
    Ok(Json(state.sessions.stats(id).await?))
}

/// Query of the events stream.
#[derive(Debug, Deserialize)]
pub(super) struct EventsQuery {
    #[serde(default)]
    follow: bool,
}

/// Events per chunk of the streamed body.
const CHUNK_EVENTS: usize = 512;

pub(super) async fn get_events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(format!("bad query: {e}")))?;
    let id = parse_id(&id)?;
    let session = session_for(&state, &caller, "get", Some("events"), id).await?;
    let (store, formats) = session.events();
    let node = state.node_name.clone();
    let sid = id.to_string();
    let (snapshot, live) = if q.follow {
        store.follow().map_err(|e| ApiError::TooManyRequests(e.to_string()))?
    } else {
        (store.snapshot(), store.follow_closed())
    };
    // What is retained comes out in time order across CPUs; live batches as they arrive.
    let mut order: Vec<(u64, u32, u32)> = Vec::new();
    for (b, batch) in snapshot.iter().enumerate() {
        for (r, rec) in batch.records.iter().enumerate() {
            order.push((rec.ts, b as u32, r as u32));
        }
    }
    order.sort_unstable();
    let snapshot = Arc::new(snapshot);
    let (f1, n1, s1) = (formats.clone(), node.clone(), sid.clone());
    let head = stream::iter(order.chunks(CHUNK_EVENTS).map(<[_]>::to_vec).collect::<Vec<_>>()).map(move |chunk| {
        let mut out = Vec::with_capacity(chunk.len() * 256);
        for (_, b, r) in chunk {
            let batch = &snapshot[b as usize];
            encode(&mut out, batch, &batch.records[r as usize], &f1, &n1, &s1);
        }
        Ok::<_, std::convert::Infallible>(Bytes::from(out))
    });
    let tail = stream::unfold(live, move |mut rx| {
        let (formats, node, sid) = (formats.clone(), node.clone(), sid.clone());
        async move {
            let batch: Arc<Batch> = rx.recv().await?;
            let mut out = Vec::with_capacity(batch.records.len() * 256);
            for rec in &batch.records {
                encode(&mut out, &batch, rec, &formats, &node, &sid);
            }
            Some((Ok(Bytes::from(out)), rx))
        }
    });
    let body = Body::from_stream(head.chain(tail));
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

fn encode(
    out: &mut Vec<u8>,
    batch: &Batch,
    rec: &crate::batch::Record,
    formats: &std::collections::HashMap<u16, crate::ftrace::format::EventFormat>,
    node: &str,
    sid: &str,
) {
    let ev = to_wire(batch, rec, formats, node, sid);
    if serde_json::to_writer(&mut *out, &ev).is_ok() {
        out.push(b'\n');
    }
}
