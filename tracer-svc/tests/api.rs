//! tracer-svc's router on bad input, without sockets: every refusal is the contract's
//! `{"Error": ...}` with a 4xx, decided before anything is sent to a node.

use std::sync::Arc;

use axum::{body::Body, http::Request};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use tracer_svc::{
    client::{ClientSettings, NodeClient},
    metrics::Metrics,
    nodes::{Membership, NodeEndpoint},
    router, AppState,
};

fn state(nodes: Vec<NodeEndpoint>) -> AppState {
    let client = NodeClient::new(ClientSettings {
        timeout: std::time::Duration::from_millis(300),
        max_in_flight: 8,
        max_body: 1 << 20,
        token: None,
        ca_pem: None,
        server_name: None,
    })
    .expect("client");
    AppState {
        nodes: Membership::fixed(nodes),
        client: Arc::new(client),
        auth: Arc::new(Default::default()),
        metrics: Arc::new(Metrics::default()),
        insecure: false,
    }
}

/// A node address nothing listens on: a request that reached it would fail, not hang.
fn dead_node() -> NodeEndpoint {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    NodeEndpoint::from_url(&format!("http://127.0.0.1:{port}")).expect("url")
}

async fn call(state: &AppState, method: &str, path: &str, body: &str) -> (u16, Option<String>, Value) {
    let req = Request::builder().method(method).uri(path).body(Body::from(body.to_owned())).expect("request");
    let resp = router(state.clone()).oneshot(req).await.expect("response");
    let status = resp.status().as_u16();
    let missing = resp.headers().get("x-tracer-missing-nodes").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, missing, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test]
async fn bad_requests_are_refused_before_any_node_is_asked() {
    let s = state(vec![dead_node()]);
    let big = format!(r#"{{"pod": "{}", "container": "*", "trace-hook": "trace_exec"}}"#, "x".repeat(70_000));
    for (method, path, body, want) in [
        ("POST", "/v1/trace-session", "{not json", 400),
        ("POST", "/v1/trace-session", r#"{"pod": "a", "container": "*", "trace-hook": "x", "bogus": 1}"#, 400),
        ("POST", "/v1/trace-session", r#"{"pod": "a", "container": "*", "trace-hook": "x", "session-id": "-1"}"#, 400),
        ("POST", "/v1/trace-session", big.as_str(), 413),
        ("PUT", "/v1/trace-session/all", r#"{"Run": true}"#, 400),
        ("PUT", "/v1/trace-session/12", r#"{"Run": "yes"}"#, 400),
        ("GET", "/v1/trace-session/1x/stats", "", 400),
        ("GET", "/v1/trace-session/1/events?follow=maybe", "", 400),
        ("DELETE", "/v1/trace-session/99999999999999999999999", "", 400),
        ("PATCH", "/v1/pods", "", 405),
        ("GET", "/v2/pods", "", 404),
    ] {
        let (status, missing, v) = call(&s, method, path, body).await;
        assert_eq!(status, want, "{method} {path}: {v}");
        assert!(v["Error"].as_str().is_some_and(|e| !e.is_empty()), "{method} {path}: {v}");
        assert_eq!(missing, None, "{method} {path}: no node was asked");
    }
}

#[tokio::test]
async fn no_node_known_is_a_503_and_no_node_answering_a_502_naming_it() {
    let (status, _, v) = call(&state(Vec::new()), "GET", "/v1/pods", "").await;
    assert_eq!(status, 503, "{v}");
    let dead = dead_node();
    let s = state(vec![dead.clone()]);
    let (status, missing, v) = call(&s, "GET", "/v1/trace-session/all", "").await;
    assert_eq!(status, 502, "{v}");
    assert_eq!(missing.as_deref(), Some(dead.name.as_str()));
    assert!(v["Error"].as_str().is_some_and(|e| e.contains(&dead.name)), "{v}");
    let (status, _, v) = call(&s, "GET", "/readyz", "").await;
    assert_eq!((status, &v["Nodes"]), (200, &Value::from(1)), "ready: the list is complete");
    let (status, _, _) = call(&s, "GET", "/healthz", "").await;
    assert_eq!(status, 200);
}
