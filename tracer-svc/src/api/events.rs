//! `GET /v1/trace-session/<id>/events[?follow=true]` through tracer-svc: one NDJSON stream
//! merged from every node that has the session. Lines are passed on whole as they arrive from
//! each node (each event names its `node`; kernel timestamps of two nodes are not comparable,
//! so there is no cross-node ordering to restore). A node whose stream breaks ends its part
//! only; with `follow` the answer ends when every node has ended its part (the session stopped
//! everywhere). The caller reading slowly slows the node streams through TCP, and each node
//! accounts for what its follower missed (`events_dropped`).

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::{Path, Query, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Extension,
};
use bytes::{Bytes, BytesMut};
use futures_util::{stream, Stream};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use tracer_auth::http::Caller;
use tracing::warn;

use super::{
    refused,
    sessions::{locate, session_id},
    ApiError, AppState,
};
use crate::{
    client::{error_message, NodeError},
    fanout::{fan_out, Missing},
    metrics::Metrics,
    nodes::NodeEndpoint,
};

/// Longest event line taken from a node (a node's events are a few hundred bytes; an
/// `execve` with long arguments a few KiB).
const MAX_LINE: usize = 1024 * 1024;

/// Query of the events stream.
#[derive(Debug, Deserialize)]
pub(super) struct EventsQuery {
    #[serde(default)]
    follow: bool,
}

pub(super) async fn get_events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let missing = Missing::default();
    let make = async {
        let Query(q) = query.map_err(|e| ApiError::BadRequest(format!("bad query: {e}")))?;
        events(&state, &caller, &id, q.follow, &missing).await
    };
    state.answer("events", &missing, make).await
}

async fn events(
    state: &AppState,
    caller: &Caller,
    id: &str,
    follow: bool,
    missing: &Missing,
) -> Result<Response, ApiError> {
    let id = session_id(id)?;
    let located = locate(state, id, missing).await?;
    caller.check("get", "trace-sessions", Some("events"), located.merged.namespace.as_deref()).await?;
    let holders: Vec<NodeEndpoint> = located.holders.into_iter().map(|(n, _)| n).collect();
    let path = format!("/v1/trace-session/{id}/events{}", if follow { "?follow=true" } else { "" });
    let f = fan_out(&holders, &state.metrics, "events", |n| {
        let (client, path) = (state.client.clone(), path.clone());
        async move {
            let (status, body) = client.open(&n, &path).await?;
            if status.is_success() {
                return Ok(body);
            }
            let text = tokio::time::timeout(client.timeout(), Limited::new(body, 64 * 1024).collect())
                .await
                .ok()
                .and_then(Result::ok)
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Err(NodeError::Status { status, message: error_message(&text) })
        }
    })
    .await;
    if f.answered.is_empty() {
        // e.g. a 429: a node's limit of followers.
        return Err(refused(&f, missing, |_| false));
    }
    f.note_missing(missing);
    // Without follow a node's part is its retained events, sent at once: a node silent for the
    // node timeout mid-way is cut off. Following, silence is a quiet session.
    let idle = (!follow).then(|| state.client.timeout());
    let parts: Vec<_> =
        f.answered.into_iter().map(|(n, body)| Box::pin(node_lines(n, body, idle, state.metrics.clone()))).collect();
    let merged = stream::select_all(parts);
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(merged)).into_response())
}

/// A node's event stream as chunks of whole lines. It ends (logged and counted) on a broken
/// connection, an over-long line or, with `idle`, silence that long.
fn node_lines(
    node: NodeEndpoint,
    body: Incoming,
    idle: Option<Duration>,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    stream::unfold(Some((body, BytesMut::new())), move |state| {
        let (node, metrics) = (node.clone(), metrics.clone());
        async move {
            let (mut body, mut buf) = state?;
            let broke = |why: String| {
                metrics.stream_breaks.inc();
                warn!(node = %node.name, reason = %why, "a node's event stream ended early; the others go on");
            };
            loop {
                let frame = match idle {
                    Some(d) => match tokio::time::timeout(d, body.frame()).await {
                        Ok(f) => f,
                        Err(_) => {
                            broke(format!("nothing for {} ms", d.as_millis()));
                            return None;
                        }
                    },
                    None => body.frame().await,
                };
                match frame {
                    None => {
                        if !buf.is_empty() {
                            broke(format!("{} bytes after the last whole line", buf.len()));
                        }
                        return None;
                    }
                    Some(Err(e)) => {
                        broke(e.to_string());
                        return None;
                    }
                    Some(Ok(frame)) => {
                        let Ok(data) = frame.into_data() else { continue };
                        buf.extend_from_slice(&data);
                        if let Some(end) = buf.iter().rposition(|b| *b == b'\n') {
                            let whole = buf.split_to(end + 1).freeze();
                            return Some((Ok(whole), Some((body, buf))));
                        }
                        if buf.len() > MAX_LINE {
                            broke(format!("a line longer than {MAX_LINE} bytes"));
                            return None;
                        }
                    }
                }
            }
        }
    })
}
