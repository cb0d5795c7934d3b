//! Benchmarks of issue #2, printed as a table (run as root: `scripts/bench.sh`).
//!
//! 1. Hook overhead: `runc run` of a trivial container with the hook wired (createRuntime and
//!    poststop, delivering to a live tracer-node) against the same container without hooks,
//!    interleaved run by run so drift hits both alike. Target: <= 1 ms added median, ratio <= 1.05.
//! 2. `GET /v1/pods` latency with 1, 100 and 1000 registered containers, then again with 10,000
//!    unrelated host processes running: the cost must not grow with the host's processes.
//!    Measured once the task tracker knows every container (the steady state); the figure
//!    says how many containers requests still read from procfs (`BENCH_REGISTRY_ONLY=pods`
//!    runs this part alone).
//!    The containers are stand-ins registered through the real socket protocol: a busybox
//!    `sleep` each, pid 1 of its own pid namespace, in its own cgroup named after its id,
//!    exactly what the registry checks.
//! 3. A burst of 200 registrations at once, with 0 and 4 matching running sessions: how long
//!    until all are registered, and `/healthz` and `/v1/pods` p99 meanwhile.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use e2e::{
    agent, containerd_annotations,
    poller::quantile,
    require, rootfs,
    standin::{register, registration_burst, start_while_registering, StandIn},
    unique, Bundle, Node, Runtime,
};
use serde_json::json;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn hook_overhead(runs: usize) {
    let node = Node::start().expect("tracer-node");
    let rt = Runtime::new("runc").expect("runc");
    let with =
        Bundle::new(&["true"], &containerd_annotations("bench", "ns", "c"), Bundle::hooks_for(&node)).expect("bundle");
    let without = Bundle::new(&["true"], &containerd_annotations("bench", "ns", "c"), json!({})).expect("bundle");
    let (mut a, mut b) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for i in 0..runs + 5 {
        for (bundle, out) in [(&without, &mut a), (&with, &mut b)] {
            let t = Instant::now();
            rt.run(&unique("ct-bench"), bundle).expect("runc run");
            if i >= 5 {
                // The first runs warm the page cache and are not counted.
                out.push(t.elapsed());
            }
        }
    }
    a.sort();
    b.sort();
    let (ma, mb) = (percentile(&a, 0.5), percentile(&b, 0.5));
    println!("hook overhead: `runc run` of `true`, {runs} runs each, interleaved");
    println!("  without hook: median {:.2} ms, p90 {:.2} ms", ms(ma), ms(percentile(&a, 0.9)));
    println!("  with hook   : median {:.2} ms, p90 {:.2} ms", ms(mb), ms(percentile(&b, 0.9)));
    println!(
        "  added median: {:+.2} ms for 2 hook runs (createRuntime + poststop), ratio {:.3}",
        ms(mb) - ms(ma),
        mb.as_secs_f64() / ma.as_secs_f64()
    );
}

fn spawn_standins(node: &Node, from: usize, to: usize, out: &mut Vec<StandIn>) {
    for i in from..to {
        let s = StandIn::start(&format!("ct-bench-{}-{i}", std::process::id())).expect("stand-in");
        register(node, &s.created(&format!("pod-{i}"), "bench")).expect("register");
        out.push(s);
    }
}

/// Containers `/v1/pods` took from the task tracker's memory and from procfs, so far.
fn pod_reads(node: &Node) -> (u64, u64) {
    let text = e2e::get_text(&format!("{}/metrics", node.url));
    let value = |source: &str| {
        let key = format!("container_tracer_pod_task_reads_total{{source=\"{source}\"}}");
        text.lines().find_map(|l| l.strip_prefix(key.as_str()).and_then(|v| v.trim().parse().ok())).unwrap_or(0)
    };
    (value("memory"), value("procfs"))
}

/// Waits until a request reads no container from procfs: the tracker has read every newly
/// registered one (the figure is the steady state, not the registration burst).
fn settle(node: &Node, expected: usize) {
    let url = format!("{}/v1/pods", node.url);
    let agent = agent();
    let settled = e2e::wait_until(Duration::from_secs(60), || {
        let (_, before) = pod_reads(node);
        let body = agent.get(&url).call().expect("GET").body_mut().read_to_string().expect("body");
        let listed = serde_json::from_str::<serde_json::Value>(&body).ok().and_then(|v| v.as_object().map(|o| o.len()));
        listed == Some(expected) && pod_reads(node).1 == before
    });
    assert!(settled, "the task tracker knows all {expected} containers within 60 s");
}

fn measure_pods(node: &Node, expected: usize, requests: usize) -> (Duration, Duration, usize, u64) {
    settle(node, expected);
    let agent = agent();
    let url = format!("{}/v1/pods", node.url);
    let mut lat = Vec::with_capacity(requests);
    let mut bytes = 0;
    let (_, live_before) = pod_reads(node);
    for _ in 0..requests {
        let t = Instant::now();
        let body = agent.get(&url).call().expect("GET").body_mut().read_to_string().expect("body");
        lat.push(t.elapsed());
        bytes = body.len();
    }
    let live = pod_reads(node).1 - live_before;
    let pods: serde_json::Value =
        serde_json::from_str(&agent.get(&url).call().expect("GET").body_mut().read_to_string().expect("body"))
            .expect("json");
    assert_eq!(pods.as_object().map(|o| o.len()), Some(expected), "registered containers listed");
    lat.sort();
    (percentile(&lat, 0.5), percentile(&lat, 0.99), bytes, live)
}

fn pods_latency() {
    let node = Node::start().expect("tracer-node");
    let mut standins = Vec::new();
    let mut results = Vec::new();
    let sizes = [1usize, 100, 1000];
    println!("GET /v1/pods latency (loopback HTTP, keep-alive; 300 requests each; containers from the task tracker's memory)");
    for n in sizes {
        spawn_standins(&node, standins.len(), n, &mut standins);
        let (p50, p99, bytes, live) = measure_pods(&node, n, 300);
        println!(
            "  {n:>5} containers: median {:.3} ms, p99 {:.3} ms ({bytes} bytes; containers read from procfs: {live})",
            ms(p50),
            ms(p99)
        );
        results.push((n, p50));
    }
    let busybox = rootfs().join("bin/busybox");
    let mut noise: Vec<Child> = (0..10_000)
        .map(|_| {
            Command::new(&busybox).args(["sleep", "600"]).stdin(Stdio::null()).spawn().expect("spawn host process")
        })
        .collect();
    println!("  with 10,000 unrelated host processes running (containers removed down to each size):");
    for (n, before) in results.iter().rev() {
        // Stand-ins killed: their inits' exits remove them from the registry.
        standins.truncate(*n);
        let (p50, p99, _, live) = measure_pods(&node, *n, 300);
        println!(
            "  {n:>5} containers: median {:.3} ms, p99 {:.3} ms (without them {:.3} ms: x{:.2}; read from procfs: {live})",
            ms(p50),
            ms(p99),
            ms(*before),
            p50.as_secs_f64() / before.as_secs_f64()
        );
    }
    for c in &mut noise {
        let _ = c.kill();
    }
    for c in &mut noise {
        let _ = c.wait();
    }
    drop(standins);
}

/// 200 containers registering at once, with 0 and 4 matching running sessions, while clients
/// poll `/healthz` and `/v1/pods`.
fn registration_burst_figures() {
    println!("registration burst: 200 stand-in containers registering at once (a thread each)");
    for sessions in [0usize, 4] {
        let node = Node::start().expect("tracer-node");
        let prefix = unique("burst");
        for _ in 0..sessions {
            let sid = node
                .create_session(&json!({"pod": format!("{prefix}-*"), "container": "*", "trace-hook": "trace_exec",
                                        "wait-for-containers": true}))
                .expect("session");
            node.run_session(&sid, true).expect("start");
        }
        let standins: Vec<StandIn> =
            (0..200).map(|i| StandIn::start(&format!("{prefix}-{i}")).expect("stand-in")).collect();
        let b = registration_burst(&node, &standins, &prefix);
        assert!(b.failures.is_empty(), "{:?}", b.failures);
        println!(
            "  {sessions} running sessions: all registered in {:.0} ms (registration p50 {:.1} ms, p99 {:.1} ms); \
             /healthz p99 {:.1} ms ({} polls); /v1/pods p99 {:.1} ms ({} polls)",
            ms(b.wall),
            ms(quantile(&b.registrations, 0.5)),
            ms(quantile(&b.registrations, 0.99)),
            ms(quantile(&b.healthz, 0.99)),
            b.healthz.len(),
            ms(quantile(&b.pods, 0.99)),
            b.pods.len()
        );
    }
}

/// A session over 200 containers starting while 50 more register: the start's round trip and
/// the latency of GET, stats and `/healthz` meanwhile (5 runs).
fn start_figures() {
    println!("session start over 200 stand-in containers while 50 more register (5 runs)");
    for _ in 0..5 {
        let node = Node::start().expect("tracer-node");
        let prefix = unique("start");
        let standins: Vec<StandIn> =
            (0..200).map(|i| StandIn::start(&format!("{prefix}-{i}")).expect("stand-in")).collect();
        let b = registration_burst(&node, &standins, &prefix);
        assert!(b.failures.is_empty(), "{:?}", b.failures);
        let sid = node
            .create_session(&json!({"pod": format!("{prefix}-*"), "container": "*", "trace-hook": "trace_exec"}))
            .expect("session");
        let late: Vec<StandIn> =
            (0..50).map(|i| StandIn::start(&format!("{prefix}-late-{i}")).expect("stand-in")).collect();
        let run = start_while_registering(&node, &sid, &late, &format!("{prefix}-late"));
        let line: Vec<String> = run
            .polled
            .iter()
            .map(|p| {
                let path = p.path.rsplit_once(&sid).map_or(p.path.clone(), |(a, b)| format!("{a}<id>{b}"));
                format!(
                    "{path} p99 {:.1} ms max {:.1} ms",
                    ms(quantile(&p.latencies, 0.99)),
                    ms(quantile(&p.latencies, 1.0))
                )
            })
            .collect();
        println!("  start {:.0} ms; {}", ms(run.start), line.join("; "));
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported here.
    if !require(&["runc"]) {
        return;
    }
    let runs = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    if std::env::var("BENCH_REGISTRY_ONLY").as_deref() == Ok("pods") {
        pods_latency();
        return;
    }
    hook_overhead(runs);
    pods_latency();
    registration_burst_figures();
    start_figures();
}
