//! The one error type of the REST API, rendered as the contract's `{"Error": "..."}`.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use tracer_api::v1::ErrorBody;
use tracing::error;

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

impl From<tracer_http::BodyError> for ApiError {
    fn from(e: tracer_http::BodyError) -> Self {
        match e {
            tracer_http::BodyError::TooLarge(_) => ApiError::TooLarge(e.to_string()),
            tracer_http::BodyError::Bad(m) => ApiError::BadRequest(m),
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
