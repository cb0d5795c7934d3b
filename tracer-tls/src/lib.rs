//! TLS for container-tracer's HTTP servers (tracer-node's API today; the admission webhook and
//! tracer-svc next): a certificate and key read from PEM files and reloaded when they change (a
//! cert-manager renewal takes effect without a restart), and a listener that does handshakes in
//! tasks of their own, each with a deadline, so a client that never finishes its handshake
//! cannot hold up the others.

mod cert;
mod listener;

pub use cert::{ReloadingCert, TlsError};
pub use listener::TlsListener;
