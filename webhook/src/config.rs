//! Command line and environment of the webhook.

use std::{net::SocketAddr, path::PathBuf};

use clap::Parser;

/// container-tracer's mutating admission webhook.
#[derive(Debug, Clone, Parser)]
#[command(name = "webhook", version, about)]
pub struct Config {
    /// Address of the HTTPS server (`HOST:PORT`, or `:PORT` for every interface).
    #[arg(long, env = "TRACER_WEBHOOK_ADDRESS", default_value = ":8443", value_parser = tracer_http::parse_address)]
    pub address: SocketAddr,

    /// Serving certificate (PEM chain, leaf first); reloaded when it changes.
    #[arg(long, env = "TRACER_WEBHOOK_TLS_CERT")]
    pub tls_cert: PathBuf,

    /// Private key of the serving certificate (PEM); reloaded with it.
    #[arg(long, env = "TRACER_WEBHOOK_TLS_KEY")]
    pub tls_key: PathBuf,

    /// The sidecar injected into pods annotated `container-tracer.io/sidecar: "true"`: YAML or
    /// JSON with `containers` and optional `initContainers` and `volumes`. Without it such pods
    /// are denied (or warned about, with --lenient).
    #[arg(long, env = "TRACER_WEBHOOK_SIDECAR_TEMPLATE")]
    pub sidecar_template: Option<PathBuf>,

    /// Admit pods whose container-tracer.io annotations are invalid, with a warning, instead of
    /// denying them.
    #[arg(long, env = "TRACER_WEBHOOK_LENIENT")]
    pub lenient: bool,

    /// The webhook's own namespace (the downward API's `metadata.namespace`): its pods are never
    /// mutated, whatever the webhook configuration's selectors say.
    #[arg(long, env = "TRACER_WEBHOOK_NAMESPACE")]
    pub own_namespace: Option<String>,

    /// Largest AdmissionReview accepted, in KiB (the API server's objects stay under 1.5 MiB).
    #[arg(long, env = "TRACER_WEBHOOK_MAX_BODY_KB", default_value_t = 4096,
          value_parser = clap::value_parser!(u64).range(16..=65_536))]
    pub max_body_kb: u64,

    /// Seconds a client has to send a request's headers (and idle keep-alive connections live).
    #[arg(long, env = "TRACER_WEBHOOK_HEADER_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_timeout_secs: u64,

    /// Seconds a client has to send a request's body (the API server waits 10 s at most).
    #[arg(long, env = "TRACER_WEBHOOK_BODY_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub body_timeout_secs: u64,
}
