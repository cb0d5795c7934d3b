//! container-tracer's mutating admission webhook. On every Pod CREATE in its scope it checks
//! the pod's `container-tracer.io/` trace annotations with the grammar tracer-node uses, stamps
//! the pod's labels and controller as annotations (the runtime passes only annotations to the
//! node), and injects the configured sidecar where asked. HTTPS only, the certificate reloaded
//! when its files change (a Secret volume's `..data` swap included).

pub mod admission;
pub mod config;
pub mod metrics;
pub mod mutate;
pub mod sidecar;

use std::{sync::Arc, time::Instant};

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, DefaultBodyLimit, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use serde_json::json;
use tracing::{info, warn};

pub use config::Config;
use metrics::{Metrics, Outcome};
use mutate::Settings;

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    /// How pods are mutated.
    pub settings: Settings,
    /// Counters and latency.
    pub metrics: Metrics,
    /// The largest body taken, in bytes.
    pub max_body: usize,
}

/// The webhook's routes: `POST /mutate`, `/healthz`, `/readyz`, `/metrics`.
pub fn router(state: Arc<AppState>) -> Router {
    let max_body = state.max_body;
    Router::new()
        .route("/mutate", post(mutate_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ready" }))
        .route("/metrics", get(metrics_handler))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

fn error(status: StatusCode, message: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], json!({ "Error": message }).to_string()).into_response()
}

async fn mutate_handler(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    let started = Instant::now();
    let body = match body {
        Ok(b) => b,
        Err(r) => {
            state.metrics.observe(Outcome::Invalid, 0, started.elapsed().as_secs_f64());
            return if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                error(StatusCode::PAYLOAD_TOO_LARGE, format!("AdmissionReview larger than {} bytes", state.max_body))
            } else {
                error(StatusCode::BAD_REQUEST, format!("cannot read the request body: {r}"))
            };
        }
    };
    // A review is a few kB of JSON and microseconds of work: done inline.
    match admission::review(&body, &state.settings) {
        Ok(review) => {
            let r = &review.response;
            let outcome = match (r.allowed, r.patch.is_some()) {
                (false, _) => Outcome::Denied,
                (true, true) => Outcome::Mutated,
                (true, false) => Outcome::Admitted,
            };
            if let Some(s) = &r.status {
                info!(uid = %r.uid, reason = %s.message, "pod denied");
            }
            state.metrics.observe(outcome, r.warnings.len(), started.elapsed().as_secs_f64());
            let text = serde_json::to_string(&review).unwrap_or_default();
            ([(header::CONTENT_TYPE, "application/json")], text).into_response()
        }
        Err(e) => {
            warn!(error = %e, "unusable AdmissionReview");
            state.metrics.observe(Outcome::Invalid, 0, started.elapsed().as_secs_f64());
            error(StatusCode::BAD_REQUEST, e.to_string())
        }
    }
}

async fn metrics_handler(State(state): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.encode())
        .into_response()
}

/// Why the webhook cannot start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The sidecar template.
    #[error(transparent)]
    Sidecar(#[from] sidecar::TemplateError),
    /// The certificate or key.
    #[error(transparent)]
    Tls(#[from] tracer_tls::TlsError),
    /// The address cannot be bound.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address.
        address: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Runs the webhook until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), RunError> {
    let sidecar = config.sidecar_template.as_deref().map(sidecar::Sidecar::load).transpose()?;
    let cert = tracer_tls::ReloadingCert::open(&config.tls_cert, &config.tls_key)?;
    let tls = cert.server_config()?;
    let watch = tracer_auth::reload::watch(&cert);
    let fd = tracer_http::fd_limit::raise(1 << 16);
    let limits = tracer_http::Limits {
        max_connections: (fd.soft.saturating_sub(64) as usize).clamp(16, 4096),
        header_timeout: std::time::Duration::from_secs(config.header_timeout_secs),
        body_timeout: std::time::Duration::from_secs(config.body_timeout_secs),
        // A client gets as long for its TLS handshake as for its headers.
        handshake_timeout: std::time::Duration::from_secs(config.header_timeout_secs),
        ..tracer_http::Limits::default()
    };
    let state = Arc::new(AppState {
        settings: Settings { sidecar, lenient: config.lenient, own_namespace: config.own_namespace.clone() },
        metrics: Metrics::default(),
        max_body: usize::try_from(config.max_body_kb * 1024).unwrap_or(usize::MAX),
    });
    let address = config.address;
    let listener = tracer_http::bind(address).map_err(|source| RunError::Listen { address, source })?;
    info!(%address, sidecar = state.settings.sidecar.is_some(), lenient = config.lenient, "webhook ready");
    let stats = Arc::new(tracer_http::ServerStats::default());
    tracer_http::serve(listener, Some(tls), router(state), limits, stats, tracer_http::shutdown_signal()).await;
    watch.abort();
    Ok(())
}
