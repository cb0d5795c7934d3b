//! The one error type of tracer-svc's API, rendered as the contract's `{"Error": "..."}`.

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
    /// No node that answered has what was asked for.
    #[error("{0}")]
    NotFound(String),
    /// The body is too large.
    #[error("{0}")]
    TooLarge(String),
    /// The caller is refused (401, 403, or 503 when the API server cannot be asked).
    #[error(transparent)]
    Refused(#[from] tracer_auth::http::Refusal),
    /// No node is known.
    #[error("{0}")]
    NoNodes(String),
    /// A node's own refusal, relayed with its status (`<node>: <its Error>`).
    #[error("{message}")]
    Upstream {
        /// The node's status.
        status: StatusCode,
        /// What it said, after its name.
        message: String,
    },
    /// No node gave a usable answer: 504 when they all timed out, else 502.
    #[error("{message}")]
    NoAnswer {
        /// Whether every failure was a timeout.
        timed_out: bool,
        /// Which nodes and why.
        message: String,
    },
    /// A fault of ours: logged with details, answered without them.
    #[error("internal error: {0}")]
    Internal(String),
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
            ApiError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, m),
            ApiError::Refused(r) => return r.into_response(),
            ApiError::NoNodes(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
            ApiError::Upstream { status, message } => (status, message),
            ApiError::NoAnswer { timed_out, message } => {
                (if timed_out { StatusCode::GATEWAY_TIMEOUT } else { StatusCode::BAD_GATEWAY }, message)
            }
            ApiError::Internal(detail) => {
                error!(%detail, "internal error answering a request");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error, see the tracer-svc log".to_owned())
            }
        };
        (status, Json(ErrorBody { error: message })).into_response()
    }
}
