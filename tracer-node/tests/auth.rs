//! Authentication of the API through the router: bearer tokens from a file, open health
//! endpoints, 401s in the contract's shape.

mod common;

use axum::{body::Body, http::Request};
use common::{private_dir, registry};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use tracer_node::{
    api::auth::{Auth, AuthPolicy},
    router, AppState,
};

fn state(policy: AuthPolicy, insecure: bool) -> AppState {
    common::app_state(registry(None), policy, insecure)
}

async fn call(app: &AppState, path: &str, authorization: Option<&str>) -> (u16, Option<String>, Value) {
    let mut req = Request::get(path);
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    let resp = router(app.clone()).oneshot(req.body(Body::empty()).expect("request")).await.expect("response");
    let status = resp.status().as_u16();
    let challenge = resp.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, challenge, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test]
async fn only_a_listed_bearer_token_opens_the_api_and_health_stays_open() {
    let dir = private_dir();
    let file = dir.path().join("tokens");
    std::fs::write(&file, "# ops\ns3cret-one\ns3cret-two\n").expect("tokens");
    let tokens = tracer_auth::TokenFile::open(&file).expect("token file");
    let app = state(AuthPolicy { auth: Auth::Tokens(tokens.clone()), protect_metrics: false }, false);

    for (auth, why) in [
        (None, "authentication required"),
        (Some("Bearer wrong"), "not valid"),
        (Some("Basic czNjcmV0LW9uZQ=="), "must be Bearer"),
        (Some("Bearer s3cret-on"), "not valid"),
    ] {
        for path in ["/v1/pods", "/v1/trace-hooks", "/v1/trace-session/all", "/nonexistent"] {
            let (status, challenge, body) = call(&app, path, auth).await;
            assert_eq!(status, 401, "{path} with {auth:?}");
            assert_eq!(challenge.as_deref(), Some("Bearer"));
            assert!(body["Error"].as_str().is_some_and(|e| e.contains(why)), "{path} {auth:?}: {body}");
        }
    }
    assert_eq!(call(&app, "/v1/pods", Some("Bearer s3cret-one")).await.0, 200);
    assert_eq!(call(&app, "/v1/pods", Some("bearer s3cret-two")).await.0, 200, "the scheme in any case");
    for open in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(call(&app, open, None).await.0, 200, "{open} needs no token");
    }

    // A rotated file takes effect without a restart.
    std::fs::write(dir.path().join("next"), "s3cret-three\n").expect("next");
    std::fs::rename(dir.path().join("next"), &file).expect("rotate");
    tokens.reload_if_changed();
    assert_eq!(call(&app, "/v1/pods", Some("Bearer s3cret-three")).await.0, 200);
    assert_eq!(call(&app, "/v1/pods", Some("Bearer s3cret-one")).await.0, 401, "the rotated-out token");

    let protected = state(AuthPolicy { auth: Auth::Tokens(tokens), protect_metrics: true }, false);
    assert_eq!(call(&protected, "/metrics", None).await.0, 401, "--auth-metrics");
    assert_eq!(call(&protected, "/metrics", Some("Bearer s3cret-three")).await.0, 200);
    assert_eq!(call(&protected, "/healthz", None).await.0, 200);
}

#[tokio::test]
async fn an_unauthenticated_api_on_other_hosts_says_so_on_readyz() {
    let (status, _, body) = call(&state(AuthPolicy::default(), true), "/readyz", None).await;
    assert_eq!(status, 200);
    assert!(body["Warning"].as_str().is_some_and(|w| w.contains("no authentication")), "{body}");
    let (_, _, body) = call(&state(AuthPolicy::default(), false), "/readyz", None).await;
    assert!(body.get("Warning").is_none(), "{body}");
}
