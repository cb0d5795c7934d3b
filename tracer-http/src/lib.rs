//! The HTTP server loop of container-tracer's daemons (tracer-node's API today; the admission
//! webhook and tracer-svc next).
//!
//! `axum::serve` holds every connection it accepts for as long as the client likes: on a node
//! whose fd limit is 1,024, 1,100 idle connections stopped the daemon (the registry socket
//! could no longer accept, hooks spooled), and unfinished headers, endless bodies and idle
//! keep-alives were all held for minutes. This loop bounds each of them:
//!
//! - at most [`Limits::max_connections`] connections; at the cap the connection idle the
//!   longest (no request in progress: keep-alive, unfinished headers, TLS handshake) is
//!   closed to admit the new one, as nginx reuses keep-alive connections when it runs out; when
//!   every connection has a request in progress the new one is answered 503 and closed;
//! - a request's headers must arrive within [`Limits::header_timeout`] of the connection's
//!   start or of the end of its previous request (which also closes idle keep-alives);
//! - a request's body must arrive within [`Limits::body_timeout`] in total (a per-read timeout
//!   lets a client dripping a byte a second hold a connection for ever);
//! - a client that reads nothing of its answer for [`Limits::write_timeout`] is dropped;
//! - TLS handshakes run inside the cap with [`Limits::handshake_timeout`].

mod body;
mod connections;
pub mod fd_limit;
mod io;
mod json_errors;
mod server;

pub use connections::ServerStats;
pub use json_errors::{json_body, json_errors, BodyError, MAX_URI};
pub use server::{bind, serve, Limits};

/// Resolves on SIGTERM or SIGINT (logged): the servers' shutdown trigger. Never resolves when
/// the SIGTERM handler cannot be installed, rather than shutting down at once.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else { return std::future::pending().await };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}

/// Parses a listening address: `HOST:PORT`, or `:PORT` for every IPv4 interface (a clap value
/// parser for the servers' `--address`).
pub fn parse_address(s: &str) -> Result<std::net::SocketAddr, String> {
    let full = if s.starts_with(':') { format!("0.0.0.0{s}") } else { s.to_owned() };
    full.parse().map_err(|e| format!("{s:?} is not HOST:PORT or :PORT ({e})"))
}
