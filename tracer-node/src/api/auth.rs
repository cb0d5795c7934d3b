//! Who may call the API. The API hands out every system call of every container on the node,
//! so everything but the health endpoints (and `/metrics`, unless asked) needs a valid bearer
//! token when an auth mode is configured. A missing or bad token is a 401 with
//! `WWW-Authenticate: Bearer`; the token itself is never logged.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::header,
    middleware::Next,
    response::{IntoResponse, Response},
};
use tracer_auth::{bearer, TokenFile};
use tracing::debug;

use super::ApiError;

/// How requests are authenticated.
#[derive(Debug, Clone, Default)]
pub enum Auth {
    /// No authentication: a loopback address, or `--insecure-no-auth`.
    #[default]
    Open,
    /// Bearer tokens from `--auth-token-file`.
    Tokens(Arc<TokenFile>),
}

/// The auth settings of the router.
#[derive(Debug, Clone, Default)]
pub struct AuthPolicy {
    /// The mode.
    pub auth: Auth,
    /// Whether `/metrics` needs authentication too.
    pub protect_metrics: bool,
}

impl AuthPolicy {
    fn is_open(&self, path: &str) -> bool {
        matches!(path, "/healthz" | "/readyz") || (path == "/metrics" && !self.protect_metrics)
    }
}

/// The middleware: lets a request through or answers 401.
pub async fn authenticate(State(policy): State<Arc<AuthPolicy>>, req: Request, next: Next) -> Response {
    let Auth::Tokens(tokens) = &policy.auth else { return next.run(req).await };
    if policy.is_open(req.uri().path()) {
        return next.run(req).await;
    }
    let checked =
        bearer(req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes())).and_then(|token| tokens.check(token));
    match checked {
        Ok(()) => next.run(req).await,
        Err(why) => {
            debug!(path = %req.uri().path(), reason = %why, "request refused: not authenticated");
            let mut resp = ApiError::Unauthenticated(why).into_response();
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            resp
        }
    }
}
