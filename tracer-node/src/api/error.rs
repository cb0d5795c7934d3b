//! The one error type of the REST API, rendered as the contract's `{"Error": "..."}`.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use tracer_api::v1::ErrorBody;
use tracing::error;

use super::sessions::MAX_BODY;

/// An API failure and the status it maps to.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state (start of a running session).
    #[error("{0}")]
    Conflict(String),
    /// The body is too large.
    #[error("{0}")]
    TooLarge(String),
    /// The request URI is too long.
    #[error("request URI longer than {0} bytes")]
    UriTooLong(usize),
    /// Authenticated, but not allowed (403): the message names what is missing.
    #[error("{0}")]
    Forbidden(String),
    /// A limit of the node is reached (429).
    #[error("{0}")]
    TooManyRequests(String),
    /// Not possible now, maybe later (503): the kernel is short of memory.
    #[error("{0}")]
    Unavailable(String),
    /// No valid credentials (401).
    #[error(transparent)]
    Unauthenticated(#[from] tracer_auth::Unauthenticated),
    /// A fault of ours: logged with details, answered without them.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<tracer_auth::http::Refusal> for ApiError {
    fn from(r: tracer_auth::http::Refusal) -> Self {
        use tracer_auth::http::Refusal;
        match r {
            Refusal::Unauthenticated(why) => ApiError::Unauthenticated(why),
            Refusal::Forbidden(m) => ApiError::Forbidden(m),
            Refusal::Unavailable(m) => ApiError::Unavailable(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m),
            ApiError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, m),
            e @ ApiError::UriTooLong(_) => (StatusCode::URI_TOO_LONG, e.to_string()),
            ApiError::Unauthenticated(why) => (StatusCode::UNAUTHORIZED, why.to_string()),
            ApiError::TooManyRequests(m) => (StatusCode::TOO_MANY_REQUESTS, m),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
            ApiError::Internal(detail) => {
                error!(%detail, "internal error answering a request");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error, see the tracer-node log".to_owned())
            }
        };
        (status, Json(ErrorBody { error: message })).into_response()
    }
}

/// Largest body read and dropped before a 413, so the client reads the answer.
const MAX_DRAIN: u64 = 1024 * 1024;
/// Time given to the client to send such a body.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Longest request URI served; longer ones get a 414 in the contract's shape.
pub const MAX_URI: usize = 8 * 1024;

/// Middleware: refuses over-long URIs, and turns every error response that is not JSON yet
/// (axum's 405 for a wrong method, extractor rejections) into the contract's `{"Error": ...}`,
/// so a client never has to parse anything else.
pub async fn json_errors(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let uri_len = request.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > MAX_URI {
        return ApiError::UriTooLong(MAX_URI).into_response();
    }
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared.filter(|l| *l > MAX_BODY as u64) {
        // Answering before the body is read makes the connection close under a client still
        // sending, which then sees a broken pipe instead of the 413: a body of reasonable size
        // is read (briefly) and dropped first.
        if len <= MAX_DRAIN {
            let body = request.into_body();
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, axum::body::to_bytes(body, MAX_DRAIN as usize)).await;
        }
        return ApiError::TooLarge(format!("request body larger than {MAX_BODY} bytes")).into_response();
    }
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    // Rejection texts are short; anything longer is not a message worth echoing.
    let text = match axum::body::to_bytes(body, 4096).await {
        Ok(b) if !b.is_empty() => String::from_utf8_lossy(&b).trim().to_owned(),
        _ => String::new(),
    };
    let message = if text.is_empty() {
        match status {
            StatusCode::METHOD_NOT_ALLOWED => {
                let allowed = parts.headers.get(axum::http::header::ALLOW).and_then(|v| v.to_str().ok()).unwrap_or("");
                format!("method not allowed here (allowed: {allowed})")
            }
            s => s.canonical_reason().unwrap_or("error").to_lowercase(),
        }
    } else {
        text
    };
    let mut out = (status, Json(ErrorBody { error: message })).into_response();
    if let Some(allow) = parts.headers.get(axum::http::header::ALLOW) {
        out.headers_mut().insert(axum::http::header::ALLOW, allow.clone());
    }
    out
}
