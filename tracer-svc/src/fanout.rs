//! One request to many nodes at once. Every node gets its own deadline (the client's), so an
//! answer takes as long as the slowest node that answers, or the deadline, never their sum; a
//! node that fails is logged, counted and named, and the others' answers are used.

use std::future::Future;

use axum::{
    http::HeaderValue,
    response::{IntoResponse, Response},
};
use tracing::warn;

use crate::{
    client::NodeError,
    metrics::{CallResult, Metrics},
    nodes::NodeEndpoint,
};

/// The response header that names the nodes an answer is missing, comma-separated.
pub const MISSING_NODES: &str = "x-tracer-missing-nodes";

/// The nodes left out of one answer, gathered while it is made (shared by reference with the
/// code making it; never held across an await).
#[derive(Debug, Default)]
pub struct Missing(std::sync::Mutex<Vec<String>>);

impl Missing {
    fn names_mut(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a node.
    pub fn add(&self, node: &NodeEndpoint) {
        let mut names = self.names_mut();
        if !names.contains(&node.name) {
            names.push(node.name.clone());
        }
    }

    /// Whether no node is missing.
    pub fn is_empty(&self) -> bool {
        self.names_mut().is_empty()
    }

    /// The names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut n = self.names_mut().clone();
        n.sort();
        n
    }

    /// `response` with the header (when nodes are missing).
    pub fn stamp(&self, response: impl IntoResponse) -> Response {
        let mut response = response.into_response();
        if !self.is_empty() {
            // Names come from URLs and Kubernetes node names; anything else is dropped so the
            // header stays valid.
            let text: String = self.names().join(",").chars().filter(|c| c.is_ascii_graphic()).collect();
            if let Ok(v) = HeaderValue::from_str(&text) {
                response.headers_mut().insert(MISSING_NODES, v);
            }
        }
        response
    }
}

/// What every node answered.
#[derive(Debug)]
pub struct Fanout<T> {
    /// Nodes that answered, with their answers, in the order of the node list.
    pub answered: Vec<(NodeEndpoint, T)>,
    /// Nodes that did not, and why.
    pub failed: Vec<(NodeEndpoint, NodeError)>,
}

impl<T> Fanout<T> {
    /// Names the failed nodes in `missing`.
    pub fn note_missing(&self, missing: &Missing) {
        for (n, _) in &self.failed {
            missing.add(n);
        }
    }

    /// Records `node` as failed (counted and logged), also for an answer found unusable after
    /// the call.
    pub fn fail(&mut self, node: NodeEndpoint, e: NodeError, metrics: &Metrics, what: &'static str) {
        let kind = if matches!(e, NodeError::Timeout(_)) { CallResult::Timeout } else { CallResult::Error };
        metrics.node_call(&node.name, kind);
        warn!(node = %node.name, url = %node.url, request = what, error = %e, "node left out of the answer");
        self.failed.push((node, e));
    }

    /// Whether every node failed (and there was at least one).
    pub fn none_answered(&self) -> bool {
        self.answered.is_empty() && !self.failed.is_empty()
    }
}

/// Calls `call` for every node at once and waits for all (each bounded by its own deadline).
/// `what` names the request in the log.
pub async fn fan_out<T, F, Fut>(nodes: &[NodeEndpoint], metrics: &Metrics, what: &'static str, call: F) -> Fanout<T>
where
    F: Fn(NodeEndpoint) -> Fut,
    Fut: Future<Output = Result<T, NodeError>>,
{
    let results = futures_util::future::join_all(nodes.iter().map(|n| {
        let fut = call(n.clone());
        async move { (n.clone(), fut.await) }
    }))
    .await;
    let mut out = Fanout { answered: Vec::with_capacity(results.len()), failed: Vec::new() };
    for (node, result) in results {
        match result {
            Ok(v) => {
                metrics.node_call(&node.name, CallResult::Ok);
                out.answered.push((node, v));
            }
            Err(e) => out.fail(node, e, metrics, what),
        }
    }
    out
}
