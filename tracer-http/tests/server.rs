//! The server loop against real loopback clients: the cap closes idle connections first,
//! refuses when every connection is busy, and each kind of slow client is cut off in time.

use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use axum::{routing::get, routing::post, Router};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{oneshot, Notify},
};
use tracer_http::{serve, Limits, ServerStats};

struct Server {
    addr: std::net::SocketAddr,
    stats: Arc<ServerStats>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(limits: Limits, release: Arc<Notify>) -> Self {
        let app = Router::new()
            .route("/ok", get(|| async { "ok" }))
            // Held until the test releases it: a request in progress.
            .route(
                "/hold",
                get(move || {
                    let release = release.clone();
                    async move {
                        release.notified().await;
                        "released"
                    }
                }),
            )
            .route(
                "/echo",
                post(|body: axum::body::Body| async move {
                    match axum::body::to_bytes(body, 1 << 20).await {
                        Ok(b) => (axum::http::StatusCode::OK, format!("{} bytes", b.len())),
                        Err(e) => (axum::http::StatusCode::BAD_REQUEST, format!("cannot read the body: {e}")),
                    }
                }),
            );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stats = Arc::new(ServerStats::default());
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(serve(listener, None, app, limits, stats.clone(), async {
            let _ = rx.await;
        }));
        Self { addr, stats, stop: Some(tx), task }
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.expect("connect")
    }

    async fn get(&self, path: &str) -> String {
        let mut s = self.connect().await;
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
            .await
            .expect("write");
        read_to_end(&mut s, Duration::from_secs(10)).await
    }

    async fn stop(mut self) -> Duration {
        let started = Instant::now();
        let _ = self.stop.take().expect("running").send(());
        tokio::time::timeout(Duration::from_secs(20), &mut self.task).await.expect("stops").expect("joins");
        started.elapsed()
    }
}

async fn read_to_end(s: &mut TcpStream, limit: Duration) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut out)).await.expect("the server ends the answer in time");
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the server closed `s` within `limit` (reads end, or fail with a reset).
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

fn limits(max_connections: usize) -> Limits {
    Limits { max_connections, ..Limits::default() }
}

#[tokio::test]
async fn at_the_cap_the_oldest_idle_connection_is_closed_to_admit_a_new_one() {
    let server = Server::start(limits(4), Arc::default()).await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(server.connect().await);
        // The connections must be admitted in this order.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(server.get("/ok").await.ends_with("ok"), "a new connection is served at the cap");
    assert!(closed_within(&mut idle[0], Duration::from_secs(5)).await, "the oldest idle one made room");
    assert!(!closed_within(&mut idle[3], Duration::from_millis(200)).await, "the others stay");
    assert_eq!(server.stats.evicted.load(Ordering::Relaxed), 1);
    server.stop().await;
}

#[tokio::test]
async fn at_the_cap_with_every_connection_busy_a_new_one_gets_a_503() {
    let release = Arc::new(Notify::new());
    let server = Server::start(limits(2), release.clone()).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = server.connect().await;
        s.write_all(b"GET /hold HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("write");
        held.push(s);
    }
    // Both requests are in progress once the server has read them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = server.get("/ok").await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains(r#"{"Error":"too many connections"#), "{refused}");
    assert_eq!(server.stats.refused.load(Ordering::Relaxed), 1);
    // Requests in progress were never cut off for it.
    release.notify_waiters();
    for s in &mut held {
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("answer").expect("read");
        assert!(String::from_utf8_lossy(&buf[..n]).contains("released"));
    }
    server.stop().await;
}

#[tokio::test]
async fn unfinished_headers_and_idle_keep_alives_are_closed_after_the_header_timeout() {
    let limits = Limits { header_timeout: Duration::from_millis(300), ..limits(64) };
    let server = Server::start(limits, Arc::default()).await;
    let mut slow = server.connect().await;
    slow.write_all(b"GET /ok HTTP/1.1\r\nhost: x\r\nx-slow: ").await.expect("write");
    let mut silent = server.connect().await;
    let mut kept = server.connect().await;
    kept.write_all(b"GET /ok HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("write");
    let started = Instant::now();
    for s in [&mut slow, &mut silent, &mut kept] {
        assert!(closed_within(s, Duration::from_secs(5)).await, "closed by the header timeout");
    }
    assert!(started.elapsed() >= Duration::from_millis(250), "not before the timeout");
    assert_eq!(server.stats.header_timeouts.load(Ordering::Relaxed), 3);
    server.stop().await;
}

#[tokio::test]
async fn a_dripping_body_and_a_false_content_length_end_at_the_body_deadline() {
    let limits = Limits { body_timeout: Duration::from_millis(500), ..limits(64) };
    let server = Arc::new(Server::start(limits, Arc::default()).await);
    let drip = {
        let server = server.clone();
        tokio::spawn(async move {
            let mut s = server.connect().await;
            s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n").await.expect("write");
            // One byte every 50 ms, for ever: never idle long, never done.
            let started = Instant::now();
            let mut answer = Vec::new();
            let mut buf = [0u8; 1024];
            while started.elapsed() < Duration::from_secs(10) {
                if s.write_all(b"1\r\nx\r\n").await.is_err() {
                    break;
                }
                if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await {
                    if n == 0 {
                        break;
                    }
                    answer.extend_from_slice(&buf[..n]);
                }
            }
            String::from_utf8_lossy(&answer).into_owned()
        })
    };
    let mut short = server.connect().await;
    short.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{}").await.expect("write");
    let answer = read_to_end(&mut short, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("did not arrive within"), "{answer}");
    let answer = drip.await.expect("drip");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(server.stats.body_timeouts.load(Ordering::Relaxed), 2);
    let server = Arc::into_inner(server).expect("one owner");
    server.stop().await;
}

#[tokio::test]
async fn shutdown_lets_requests_finish_within_the_grace_and_then_closes_the_rest() {
    let limits = Limits { shutdown_grace: Duration::from_millis(500), ..limits(64) };
    let server = Server::start(limits, Arc::default()).await;
    let mut held = server.connect().await;
    held.write_all(b"GET /hold HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("write");
    let mut idle = server.connect().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let took = server.stop().await;
    assert!(took < Duration::from_secs(5), "a request that never ends does not hold shutdown: {took:?}");
    assert!(closed_within(&mut idle, Duration::from_secs(1)).await);
    assert!(closed_within(&mut held, Duration::from_secs(1)).await);
}
