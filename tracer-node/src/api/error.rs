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
    /// A fault of ours: logged with details, answered without them.
    #[error("internal error: {0}")]
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m),
            ApiError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, m),
            ApiError::Internal(detail) => {
                error!(%detail, "internal error answering a request");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error, see the tracer-node log".to_owned())
            }
        };
        (status, Json(ErrorBody { error: message })).into_response()
    }
}
