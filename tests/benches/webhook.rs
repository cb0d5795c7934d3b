//! The admission webhook under load, over TLS on loopback: a typical Deployment pod (plain, with
//! an auto-trace wish, with a sidecar to inject) at fixed offered rates of 500 and 2,000
//! reviews/s, against a trivial always-allow handler served by the same stack (tracer-http's
//! server loop, rustls with the reloading certificate) as the reference.
//!
//! Open loop: each client connection sends on a fixed schedule and latency is counted from when
//! a request was due, so a slow answer delays (and is charged for) the ones behind it instead of
//! hiding them (coordinated omission).

use std::{
    io::{Read, Write},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{body::Bytes, routing::post, Router};
use e2e::{poller::quantile, test_certificates, webhook::SIDECAR_TEMPLATE};
use serde_json::{json, Value};
use tracer_spec::annotations as ann;

/// Client connections, each with its share of the rate.
const CONNECTIONS: usize = 4;
/// How long each run offers its rate.
const RUN: Duration = Duration::from_secs(5);
/// Rounds of every case.
const REPS: usize = 3;

fn review(annotations: Value) -> Vec<u8> {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop", "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {
                    "generateName": "web-7d9f8c-", "namespace": "shop",
                    "labels": {"app": "web", "tier": "frontend", "pod-template-hash": "7d9f8c"},
                    "annotations": annotations,
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f8c",
                                         "uid": "0b1f5a7e", "controller": true, "blockOwnerDeletion": true}]
                },
                "spec": {
                    "containers": [{"name": "nginx", "image": "nginx:1.27", "ports": [{"containerPort": 80}],
                                    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                                    "env": [{"name": "MODE", "value": "production"}]}],
                    "restartPolicy": "Always", "serviceAccountName": "web"
                }
            },
            "oldObject": null, "dryRun": false
        }
    })
    .to_string()
    .into_bytes()
}

/// A keep-alive TLS connection sending reviews.
struct Client {
    tls: rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr, ca: &std::path::Path) -> Self {
        let conn = e2e::https::client(&[ca]);
        let tcp = std::net::TcpStream::connect(addr).expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        tcp.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        Client { tls: rustls::StreamOwned::new(conn, tcp), buf: Vec::new() }
    }

    /// One review; answers its status.
    fn post(&mut self, body: &[u8]) -> u16 {
        let head = format!(
            "POST /mutate?timeout=2s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.tls.write_all(head.as_bytes()).expect("write");
        self.tls.write_all(body).expect("write");
        self.buf.clear();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let n = self.tls.read(&mut chunk).expect("read");
            assert!(n > 0, "the server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
            let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("content-length");
            if self.buf.len() >= end + 4 + len {
                return head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            }
        }
    }
}

/// Offers `rate` reviews/s for [`RUN`]: latencies (sorted) and the achieved rate.
fn offer(addr: SocketAddr, ca: &std::path::Path, body: &[u8], rate: u64) -> (Vec<Duration>, f64) {
    let per_conn = Duration::from_secs_f64(CONNECTIONS as f64 / rate as f64);
    let started = Instant::now() + Duration::from_millis(200);
    let results: Vec<Vec<Duration>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CONNECTIONS)
            .map(|k| {
                s.spawn(move || {
                    let mut c = Client::connect(addr, ca);
                    assert_eq!(c.post(body), 200, "warm-up");
                    // The connections' schedules are staggered over one interval.
                    let mut due = started + per_conn.mul_f64(k as f64 / CONNECTIONS as f64);
                    let mut lat = Vec::new();
                    while due < started + RUN {
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        assert_eq!(c.post(body), 200);
                        lat.push(due.elapsed());
                        due += per_conn;
                    }
                    lat
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("client")).collect()
    });
    let wall = started.elapsed().as_secs_f64();
    let mut all: Vec<Duration> = results.into_iter().flatten().collect();
    all.sort();
    let achieved = all.len() as f64 / wall.max(RUN.as_secs_f64());
    (all, achieved)
}

/// Serves `app` over TLS with tracer-http on a runtime of two workers; answers its address.
fn serve(app: Router, cert: &std::path::Path, key: &std::path::Path) -> (SocketAddr, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let tls = tracer_tls::ReloadingCert::open(cert, key).expect("cert").server_config().expect("tls");
    let listener = rt.block_on(async { tracer_http::bind("127.0.0.1:0".parse().expect("addr")) }).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stats = Arc::new(tracer_http::ServerStats::default());
    rt.spawn(tracer_http::serve(
        listener,
        Some(tls),
        app,
        tracer_http::Limits::default(),
        stats,
        std::future::pending(),
    ));
    (addr, rt)
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = test_certificates(dir.path()).expect("certificates (openssl)");
    let template = dir.path().join("sidecar.yaml");
    std::fs::write(&template, SIDECAR_TEMPLATE).expect("template");
    let state = Arc::new(webhook::AppState {
        settings: webhook::mutate::Settings {
            sidecar: Some(webhook::sidecar::Sidecar::load(&template).expect("sidecar")),
            lenient: false,
            own_namespace: None,
        },
        metrics: webhook::metrics::Metrics::default(),
        max_body: 4 << 20,
    });
    let (hook_addr, _hook_rt) = serve(webhook::router(state), &cert, &key);
    // The reference: parses nothing, allows everything, on the same server stack.
    let trivial = Router::new().route(
        "/mutate",
        post(|_body: Bytes| async {
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"705ab4f5-6393-11e8-b7cc-42010a800002","allowed":true}}"#
        }),
    );
    let (trivial_addr, _trivial_rt) = serve(trivial, &cert, &key);
    let cases = [
        ("trivial always-allow handler", trivial_addr, review(json!({}))),
        ("Deployment pod, stamped only", hook_addr, review(json!({}))),
        (
            "with auto-trace annotations",
            hook_addr,
            review(json!({ann::TRACE_HOOK: "trace_syscalls", ann::TRACE_ARGUMENTS: "-s openat connect -t 60000"})),
        ),
        (
            "with auto-trace and a sidecar",
            hook_addr,
            review(json!({ann::TRACE_HOOK: "trace_exec", ann::SIDECAR: "true"})),
        ),
    ];
    println!(
        "admission webhook over TLS on loopback ({CONNECTIONS} keep-alive connections, open loop, {} s per run; \
         {REPS} rounds with the cases interleaved, median of the rounds)",
        RUN.as_secs()
    );
    for rate in [500u64, 2000] {
        // rounds[case] = (p50, p99, achieved) of each round.
        let mut rounds: Vec<Vec<(Duration, Duration, f64)>> = vec![Vec::new(); cases.len()];
        for _ in 0..REPS {
            for (i, (_, addr, body)) in cases.iter().enumerate() {
                let (lat, achieved) = offer(*addr, &ca, body, rate);
                rounds[i].push((quantile(&lat, 0.5), quantile(&lat, 0.99), achieved));
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let mut reference = 0.0;
        for (i, (name, _, _)) in cases.iter().enumerate() {
            let p50 = median(&mut rounds[i].iter().map(|r| r.0.as_secs_f64() * 1e3).collect());
            let p99 = median(&mut rounds[i].iter().map(|r| r.1.as_secs_f64() * 1e3).collect());
            let achieved = median(&mut rounds[i].iter().map(|r| r.2).collect());
            let vs = if i == 0 {
                reference = p99;
                String::new()
            } else {
                format!(", p99 {:.2}x the trivial handler's", p99 / reference.max(1e-9))
            };
            println!("  {rate:>4}/s offered, {name}: achieved {achieved:.0}/s, p50 {p50:.3} ms, p99 {p99:.3} ms{vs}");
        }
    }
}
