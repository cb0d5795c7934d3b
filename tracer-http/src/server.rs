//! The accept loop and each connection's task.

use std::{convert::Infallible, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use hyper::{body::Incoming, Request};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ServerConfig;
use std::sync::atomic::Ordering;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinSet,
};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::{
    body::{DeadlineBody, GuardedBody},
    connections::{Admission, Connections, Registration, ServerStats},
    io::WriteDeadline,
};

/// What one server allows each connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once (TLS handshakes included). Keep it below the fd limit with
    /// room for the daemon's other files.
    pub max_connections: usize,
    /// Time to send a request's headers, from the connection's start or the end of the
    /// previous request on it: it also closes idle keep-alive connections.
    pub header_timeout: Duration,
    /// Time to send a request's whole body.
    pub body_timeout: Duration,
    /// Time a client may read nothing of its answer before it is dropped.
    pub write_timeout: Duration,
    /// Time to finish a TLS handshake.
    pub handshake_timeout: Duration,
    /// Largest request head (request line and headers), in bytes (at least 8 KiB).
    pub max_header_bytes: usize,
    /// At shutdown, time given to requests in progress before their connections are closed.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            header_timeout: Duration::from_secs(15),
            body_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            max_header_bytes: 32 * 1024,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Pending connections the kernel queues before they are accepted (it caps this at
/// `net.core.somaxconn`, 4,096 by default): tokio's 1,024 made a burst of connects wait for
/// SYN retransmits, a second or more each.
const BACKLOG: u32 = 4096;

/// Binds a listening socket for [`serve`] (with `SO_REUSEADDR`, so a restart does not wait
/// for the previous run's connections in TIME_WAIT).
pub fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(BACKLOG)
}

/// The answer to a connection refused at the cap: written without reading anything, best effort.
fn full_response() -> String {
    let body = r#"{"Error":"too many connections, each with a request in progress; retry later"}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\nretry-after: 1\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Serves `app` on `listener` (over TLS with `tls`) until `shutdown` resolves, then lets
/// requests in progress finish for `limits.shutdown_grace` and closes what remains.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    app: axum::Router,
    limits: Limits,
    stats: Arc<ServerStats>,
    shutdown: impl Future<Output = ()>,
) {
    let table = Connections::new(stats.clone());
    let tls = tls.map(TlsAcceptor::from);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut last_accept_warning: Option<tokio::time::Instant> = None;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        // EMFILE and the like: the connection waits in the backlog; wait
                        // instead of spinning, and say so once in a while, not 20 times a second.
                        if !matches!(last_accept_warning, Some(t) if t.elapsed() < Duration::from_secs(10)) {
                            warn!(error = %e, "accept failed");
                            last_accept_warning = Some(tokio::time::Instant::now());
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                match table.admit(limits.max_connections) {
                    Admission::Admitted(reg) => {
                        let ctx = Ctx { app: app.clone(), limits, stats: stats.clone(), stop: stop_rx.clone() };
                        tasks.spawn(connection(stream, peer, reg, tls.clone(), ctx));
                    }
                    Admission::Full => {
                        stats.refused.fetch_add(1, Ordering::Relaxed);
                        if tls.is_none() {
                            let _ = stream.try_write(full_response().as_bytes());
                        }
                        debug!(%peer, "connection refused: every connection has a request in progress");
                    }
                }
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let open = tasks.len();
    if open > 0 {
        info!(connections = open, grace = ?limits.shutdown_grace, "closing connections");
    }
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.shutdown_grace, drain).await.is_err() {
        // Followers and slow clients: their requests are cut off.
        table.evict_all();
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

/// What every connection's task shares.
struct Ctx {
    app: axum::Router,
    limits: Limits,
    stats: Arc<ServerStats>,
    stop: watch::Receiver<bool>,
}

async fn connection(stream: TcpStream, peer: SocketAddr, reg: Registration, tls: Option<TlsAcceptor>, mut ctx: Ctx) {
    let _ = stream.set_nodelay(true);
    let io = WriteDeadline::new(stream, ctx.limits.write_timeout, ctx.stats.clone());
    let Some(acceptor) = tls else { return http(io, peer, reg, ctx).await };
    let conn = reg.conn.clone();
    let handshake = tokio::time::timeout(ctx.limits.handshake_timeout, acceptor.accept(io));
    let tls = tokio::select! {
        r = handshake => r,
        // An unfinished handshake is idle: it makes room at the cap like any idle connection.
        () = conn.evicted.notified() => return,
        _ = ctx.stop.changed() => return,
    };
    match tls {
        Ok(Ok(io)) => http(io, peer, reg, ctx).await,
        Ok(Err(e)) => {
            ctx.stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
            debug!(%peer, error = %e, "TLS handshake failed");
        }
        Err(_) => {
            ctx.stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
            debug!(%peer, "TLS handshake timed out");
        }
    }
}

async fn http<I>(io: I, peer: SocketAddr, reg: Registration, mut ctx: Ctx)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = reg.conn.clone();
    let reg = Arc::new(reg);
    let service = {
        let (app, stats, body_timeout) = (ctx.app.clone(), ctx.stats.clone(), ctx.limits.body_timeout);
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let (reg, app, stats) = (reg.clone(), app.clone(), stats.clone());
            async move {
                let Some(busy) = reg.begin() else { return Ok::<_, Infallible>(closing()) };
                let req = req.map(|b| axum::body::Body::new(DeadlineBody::new(b, body_timeout, stats)));
                let response = match tower::ServiceExt::oneshot(app, req).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                Ok(response.map(|b| axum::body::Body::new(GuardedBody::new(b, busy))))
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.limits.header_timeout)
        .max_buf_size(ctx.limits.max_header_bytes.max(8192));
    let served = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(served);
    let evicted = conn.evicted.notified();
    tokio::pin!(evicted);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = served.as_mut() => {
                if let Err(e) = r {
                    if e.is_timeout() {
                        ctx.stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
                    }
                    debug!(%peer, error = %e, "connection ended");
                }
                return;
            }
            // Chosen at the cap while idle, or at the end of the shutdown grace: dropping the
            // connection closes it.
            () = &mut evicted => return,
            _ = ctx.stop.changed(), if !stopping => {
                // Finish the request in progress, then close; an idle connection closes now.
                served.as_mut().graceful_shutdown();
                stopping = true;
            }
        }
    }
}

/// The answer to a request that raced its connection's closing.
fn closing() -> hyper::Response<axum::body::Body> {
    let mut r = hyper::Response::new(axum::body::Body::from(
        r#"{"Error":"this connection is being closed to make room; retry on a new one"}"#,
    ));
    *r.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    r.headers_mut().insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("close"));
    r
}
