//! TLS for container-tracer's HTTP servers (tracer-node's API today; the admission webhook and
//! tracer-svc next): a certificate and key read from PEM files and reloaded when they change (a
//! cert-manager renewal takes effect without a restart). Handshakes are done by the server loop
//! of `tracer-http`, inside its connection cap and with a deadline.

mod cert;

pub use cert::{ReloadingCert, TlsError};
