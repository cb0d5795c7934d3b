//! The contract's error shape for what no handler answers: over-long URIs, over-large bodies
//! and axum's own rejections (a wrong method, a bad path) all become `{"Error": "..."}`, so a
//! client of a v1 API server never has to parse anything else.

use axum::{
    extract::{Request, State},
    http::{header, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
    Json,
};

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "Error": message }))).into_response()
}

/// Largest body read and dropped before a 413, so the client reads the answer.
const MAX_DRAIN: u64 = 1024 * 1024;
/// Time given to the client to send such a body.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Longest request URI served; longer ones get a 414 in the contract's shape.
pub const MAX_URI: usize = 8 * 1024;

/// Middleware (state: the largest request body, in bytes): refuses over-long URIs and bodies
/// declared too large, and turns every error response that is not JSON yet (axum's 405 for a
/// wrong method, extractor rejections) into the contract's `{"Error": ...}`.
pub async fn json_errors(State(max_body): State<usize>, request: Request, next: Next) -> Response {
    let uri_len = request.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > MAX_URI {
        return error(StatusCode::URI_TOO_LONG, format!("request URI longer than {MAX_URI} bytes"));
    }
    let declared =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared.filter(|l| *l > max_body as u64) {
        // Answering before the body is read makes the connection close under a client still
        // sending, which then sees a broken pipe instead of the 413: a body of reasonable size
        // is read (briefly) and dropped first.
        if len <= MAX_DRAIN {
            let body = request.into_body();
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, axum::body::to_bytes(body, MAX_DRAIN as usize)).await;
        }
        return error(StatusCode::PAYLOAD_TOO_LARGE, format!("request body larger than {max_body} bytes"));
    }
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
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
                let allowed = parts.headers.get(header::ALLOW).and_then(|v| v.to_str().ok()).unwrap_or("");
                format!("method not allowed here (allowed: {allowed})")
            }
            s => s.canonical_reason().unwrap_or("error").to_lowercase(),
        }
    } else {
        text
    };
    let mut out = error(status, message);
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        out.headers_mut().insert(header::ALLOW, allow.clone());
    }
    out
}

/// Why a JSON request body was refused.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Larger than the limit (413).
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    /// Unreadable or not the JSON expected (400).
    #[error("{0}")]
    Bad(String),
}

/// Parses a JSON request body, whatever its content type (curl users often leave it out);
/// `max` is the router's body limit, named in the 413.
pub fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
    max: usize,
) -> Result<T, BodyError> {
    let bytes = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            BodyError::TooLarge(max)
        } else {
            BodyError::Bad(format!("cannot read request body: {r}"))
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| BodyError::Bad(format!("malformed JSON body: {e}")))
}
