//! The REST API driven through the router, without sockets.

mod common;

use std::sync::Arc;

use axum::{body::Body, http::Request};
use common::{create_event, registry, Proc};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use tracer_node::{router, AppState};

fn state(reg: Arc<tracer_node::registry::Registry>) -> AppState {
    common::app_state(reg, Default::default(), false)
}

async fn get(app: &AppState, path: &str) -> (u16, Option<String>, Value) {
    let resp =
        router(app.clone()).oneshot(Request::get(path).body(Body::empty()).expect("request")).await.expect("response");
    let status = resp.status().as_u16();
    let ctype = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, ctype, serde_json::from_slice(&bytes).expect("JSON body"))
}

#[tokio::test]
async fn pods_is_an_empty_json_object_when_nothing_is_registered() {
    let app = state(registry(None));
    let (status, ctype, body) = get(&app, "/v1/pods").await;
    assert_eq!(status, 200);
    assert_eq!(ctype.as_deref(), Some("application/json"));
    assert_eq!(body, serde_json::json!({}));
}

#[tokio::test]
async fn a_registered_container_is_listed_in_the_contract_shape() {
    let reg = registry(None);
    let init = Proc::spawn();
    reg.apply(create_event("c1", init.pid(), "web-1", "shop", "nginx")).expect("register");
    let (status, _, body) = get(&state(reg), "/v1/pods").await;
    assert_eq!(status, 200);
    let c = &body["web-1"]["Containers"]["nginx"];
    assert_eq!(c["Id"], "nginx");
    assert_eq!(c["Pod"], "web-1");
    assert_eq!(c["Namespace"], "shop");
    assert_eq!(c["ContainerId"], "c1");
    assert_eq!(c["Tasks"], serde_json::json!([init.pid()]));
    assert_eq!(c["Parent"], serde_json::json!([std::process::id()]));
}

#[tokio::test]
async fn pods_sharing_a_name_across_namespaces_are_keyed_by_namespace() {
    let reg = registry(None);
    let (a, b, c) = (Proc::spawn(), Proc::spawn(), Proc::spawn());
    reg.apply(create_event("a", a.pid(), "web", "team-a", "app")).expect("register");
    reg.apply(create_event("b", b.pid(), "web", "team-b", "app")).expect("register");
    reg.apply(create_event("c", c.pid(), "db", "team-a", "pg")).expect("register");
    let (_, _, body) = get(&state(reg), "/v1/pods").await;
    let mut keys: Vec<&String> = body.as_object().expect("object").keys().collect();
    keys.sort();
    assert_eq!(keys, ["db", "team-a/web", "team-b/web"]);
    assert_eq!(body["team-b/web"]["Containers"]["app"]["Pod"], "web");
}

#[tokio::test]
async fn unknown_paths_answer_a_json_404() {
    let (status, _, body) = get(&state(registry(None)), "/v1/nothing").await;
    assert_eq!(status, 404);
    assert!(body["Error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
}

#[tokio::test]
async fn readyz_reflects_start_up_state() {
    let app = state(registry(None));
    assert_eq!(get(&app, "/readyz").await.0, 200);
    app.ready.store(false, std::sync::atomic::Ordering::Release);
    let (status, _, body) = get(&app, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body["Error"].is_string());
    assert_eq!(get(&app, "/healthz").await.0, 200);
}

#[tokio::test]
async fn metrics_are_openmetrics_text_with_the_registry_counts() {
    let reg = registry(None);
    let app = state(reg.clone());
    let live = Proc::spawn();
    reg.apply(create_event("m1", live.pid(), "p", "ns", "c")).expect("register");
    let resp =
        router(app).oneshot(Request::get("/metrics").body(Body::empty()).expect("request")).await.expect("response");
    assert_eq!(resp.status().as_u16(), 200);
    let ctype = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    assert!(ctype.starts_with("application/openmetrics-text; version=1.0.0"), "{ctype}");
    let text = String::from_utf8(resp.into_body().collect().await.expect("body").to_bytes().to_vec()).expect("utf8");
    assert!(text.contains("\ncontainer_tracer_registered_containers 1\n"), "{text}");
    assert!(text.contains("\ncontainer_tracer_sessions_running 0\n"), "{text}");
    assert!(text.contains("\ncontainer_tracer_export_enabled 0\n"), "{text}");
    assert!(
        text.contains("container_tracer_hook_deliveries_total{event=\"created\",result=\"applied\"} 0\n"),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
}

async fn send(app: &AppState, method: &str, path: &str) -> (u16, Option<String>, Value) {
    let req = Request::builder().method(method).uri(path).body(Body::empty()).expect("request");
    let resp = router(app.clone()).oneshot(req).await.expect("response");
    let status = resp.status().as_u16();
    let ctype = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
    (status, ctype, body)
}

#[tokio::test]
async fn every_error_is_the_contracts_json_including_wrong_methods_and_long_uris() {
    let app = state(registry(None));
    let long = format!("/v1/trace-session/{}", "1".repeat(9000));
    for (method, path, want) in [
        ("GET", "/v1/trace-session", 405),
        ("DELETE", "/v1/pods", 405),
        ("PATCH", "/v1/trace-session/1", 405),
        ("GET", "/v1/trace-session/%FF", 400),
        ("GET", long.as_str(), 414),
        ("GET", "/nope", 404),
    ] {
        let (status, ctype, body) = send(&app, method, path).await;
        assert_eq!(status, want, "{method} {path}: {body}");
        assert_eq!(ctype.as_deref(), Some("application/json"), "{method} {path}");
        assert!(body["Error"].as_str().is_some_and(|e| !e.is_empty()), "{method} {path}: {body}");
    }
}

async fn post(app: &AppState, path: &str, body: &Value) -> (u16, Value) {
    let req = Request::post(path).body(Body::from(body.to_string())).expect("request");
    let resp = router(app.clone()).oneshot(req).await.expect("response");
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&bytes).expect("JSON body"))
}

/// `session-id`: the caller names the session (tracer-svc gives one id to the session on every
/// node); the id must be a decimal u64 and free.
#[tokio::test]
async fn a_caller_chosen_session_id_is_used_checked_and_never_taken_twice() {
    let app = state(registry(None));
    let body = |id: &str| {
        serde_json::json!({"pod": "web-*", "container": "*", "trace-hook": "trace_functions",
                           "wait-for-containers": true, "session-id": id})
    };
    let (status, v) = post(&app, "/v1/trace-session", &body("4242")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["4242"]["Id"], "4242", "{v}");
    let (status, v) = post(&app, "/v1/trace-session", &body("4242")).await;
    assert_eq!(status, 409, "a taken id: {v}");
    assert!(v["Error"].as_str().is_some_and(|e| e.contains("4242")), "{v}");
    for bad in ["all", "-1", "12a", "", "123456789012345678901"] {
        let (status, v) = post(&app, "/v1/trace-session", &body(bad)).await;
        assert_eq!(status, 400, "{bad:?}: {v}");
    }
    let (status, _, v) = send(&app, "GET", "/v1/trace-session/4242").await;
    assert_eq!(status, 200, "{v}");
}
