//! tracer-svc's fan-out: `GET /v1/pods` and `GET /v1/trace-session/all` through tracer-svc over
//! 1, 10 and 50 nodes, each a simulated node on loopback answering after a fixed 20 ms (a node
//! across a cluster network, busy), and tracer-svc's own cost next to calling one real
//! tracer-node directly. Closed loop, keep-alive; p50 and p99 of `REQUESTS` requests each.
//! Target: 50 nodes within 1.5x of one node.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use axum::{routing::get, Router};
use e2e::{
    agent,
    poller::quantile,
    require,
    standin::{register, StandIn},
    svc::Svc,
    unique, Node,
};
use serde_json::json;
use tracer_api::v1::{Container, Pod, Pods, SessionInfo, Sessions};

const REQUESTS: usize = 300;
const DELAY: Duration = Duration::from_millis(20);

/// What a simulated node answers: 20 pods of 2 containers, 5 sessions (ids shared by nodes).
fn answers(node: usize) -> (Pods, Sessions) {
    let mut pods = Pods::new();
    for p in 0..20 {
        let name = format!("web-{node}-{p}");
        let containers = ["app", "sidecar"]
            .iter()
            .map(|c| {
                let container = Container {
                    id: (*c).into(),
                    parent: vec![1000 + p],
                    pod: name.clone(),
                    tasks: vec![2000 + p, 3000 + p],
                    namespace: "shop".into(),
                    container_id: format!("{node:032x}{p:032x}"),
                    runtime: Some("runc".into()),
                    created_unix_ns: 1_764_000_000_000_000_000,
                    labels: Some(BTreeMap::from([("app".into(), "web".into())])),
                    owner: Some("ReplicaSet/web-7d9f8c".into()),
                };
                ((*c).to_owned(), container)
            })
            .collect();
        pods.insert(name, Pod { containers });
    }
    let sessions = (0..5)
        .map(|s| {
            let id = format!("{}", 6_903_485_068_587_058_765u64 + s);
            let info = SessionInfo {
                auto_trace: false,
                containers: BTreeMap::from([(format!("web-{node}-0"), vec!["app".into()])]),
                context: "bench".into(),
                error: None,
                id: id.clone(),
                node: format!("sim-{node}"),
                nodes: None,
                namespace: Some("shop".into()),
                output: Some(vec![format!("ftrace instance container-tracer-{id}")]),
                running: true,
                trace_hook: "trace_syscalls".into(),
                trace_params: vec!["-s".into(), "openat".into()],
            };
            (id, info)
        })
        .collect();
    (pods, sessions)
}

/// Starts `n` simulated nodes answering after `delay`; answers their URLs.
fn simulated(rt: &tokio::runtime::Runtime, n: usize, delay: Duration) -> Vec<String> {
    (0..n)
        .map(|i| {
            // Encoded once: a real node encodes on its own machine, so the simulated ones must
            // not charge that to the cores tracer-svc and the client share here.
            let (pods, sessions) = answers(i);
            let pods = axum::body::Bytes::from(serde_json::to_vec(&pods).expect("pods"));
            let sessions = axum::body::Bytes::from(serde_json::to_vec(&sessions).expect("sessions"));
            let json = |body: axum::body::Bytes| {
                move || {
                    let body = body.clone();
                    async move {
                        tokio::time::sleep(delay).await;
                        ([(axum::http::header::CONTENT_TYPE, "application/json")], body)
                    }
                }
            };
            let app =
                Router::new().route("/v1/pods", get(json(pods))).route("/v1/trace-session/all", get(json(sessions)));
            let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
            let addr: SocketAddr = listener.local_addr().expect("addr");
            rt.spawn(async move { axum::serve(listener, app).await });
            format!("http://{addr}")
        })
        .collect()
}

/// p50 and p99 of `GET base+path`, after a warm-up; checks every answer is complete.
fn measure(base: &str, path: &str, nodes: usize) -> (Duration, Duration) {
    let agent = agent();
    let url = format!("{base}{path}");
    let mut took = Vec::with_capacity(REQUESTS);
    for i in 0..REQUESTS + 20 {
        let t = Instant::now();
        let mut resp = agent.get(&url).call().expect("GET");
        assert_eq!(resp.status(), 200, "{url}");
        assert!(resp.headers().get("x-tracer-missing-nodes").is_none(), "{url}: a node missing");
        let body = resp.body_mut().with_config().limit(256 << 20).read_to_string().expect("body");
        let elapsed = t.elapsed();
        if i == 0 && path == "/v1/pods" && nodes > 0 {
            let v: serde_json::Value = serde_json::from_str(&body).expect("json");
            assert_eq!(v.as_object().map(|o| o.len()), Some(20 * nodes), "every node's pods");
        }
        if i >= 20 {
            took.push(elapsed);
        }
    }
    took.sort();
    (quantile(&took, 0.5), quantile(&took, 0.99))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    if !require(&["unshare"]) {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    // BENCH_SVC_DELAY_MS=0 shows tracer-svc's CPU cost alone.
    let delay =
        std::env::var("BENCH_SVC_DELAY_MS").ok().and_then(|v| v.parse().ok()).map_or(DELAY, Duration::from_millis);
    println!(
        "== tracer-svc fan-out: simulated nodes answering after {} ms, {REQUESTS} requests each",
        delay.as_millis()
    );
    let mut one = BTreeMap::new();
    for n in [1usize, 10, 50] {
        let urls = simulated(&rt, n, delay);
        let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
        let svc = Svc::start(&refs, &[]).expect("tracer-svc");
        for path in ["/v1/pods", "/v1/trace-session/all"] {
            let cpu = e2e::bench::cpu_ticks(svc.pid());
            let (p50, p99) = measure(&svc.url, path, n);
            let cpu_ms = (e2e::bench::cpu_ticks(svc.pid()) - cpu) as f64 * 10.0 / (REQUESTS + 20) as f64;
            let (b50, b99) = *one.entry(path).or_insert((p50, p99));
            println!(
                "  {n:>2} nodes {path:<22} p50 {:>6.2} ms  p99 {:>6.2} ms  ({:.2}x / {:.2}x one node), tracer-svc CPU {cpu_ms:.2} ms a request",
                ms(p50),
                ms(p99),
                p50.as_secs_f64() / b50.as_secs_f64(),
                p99.as_secs_f64() / b99.as_secs_f64()
            );
        }
    }

    println!("== tracer-svc's own cost: one real tracer-node (40 stand-in containers, 5 sessions), direct vs through tracer-svc");
    let node = Node::start().expect("tracer-node");
    let tag = unique("bsvc");
    let mut standins = Vec::new();
    for i in 0..40 {
        let pod = format!("{tag}-{i}");
        let st = StandIn::start(&pod).expect("stand-in");
        register(&node, &st.created(&pod, "shop")).expect("register");
        standins.push(st);
    }
    for _ in 0..5 {
        node.create_session(&json!({"pod": format!("{tag}-*"), "container": "*", "trace-hook": "trace_exec"}))
            .expect("session");
    }
    let svc = Svc::start(&[&node.url], &[]).expect("tracer-svc");
    for path in ["/v1/pods", "/v1/trace-session/all"] {
        let (d50, d99) = measure(&node.url, path, 0);
        let (s50, s99) = measure(&svc.url, path, 0);
        println!(
            "  {path:<22} direct p50 {:>5.2} ms p99 {:>5.2} ms | via tracer-svc p50 {:>5.2} ms p99 {:>5.2} ms | ratio {:.2}x / {:.2}x, +{:.2} ms at p50",
            ms(d50),
            ms(d99),
            ms(s50),
            ms(s99),
            s50.as_secs_f64() / d50.as_secs_f64(),
            s99.as_secs_f64() / d99.as_secs_f64(),
            ms(s50.saturating_sub(d50))
        );
    }
    let (status, _) = node.call("DELETE", "/v1/trace-session/all", None).expect("delete");
    assert_eq!(status, 200);
    drop(standins);
}
