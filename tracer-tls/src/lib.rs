//! TLS for container-tracer's HTTP servers (tracer-node's API, the admission webhook and
//! tracer-svc): a certificate and key read from PEM files and reloaded when they change (a
//! cert-manager renewal takes effect without a restart). Handshakes are done by the server loop
//! of `tracer-http`, inside its connection cap and with a deadline. Also the client side that
//! the OTLP exporter and tracer-svc use.

mod cert;
mod client;

pub use cert::{ReloadingCert, TlsError};
pub use client::{client_config, pem_certificates};
