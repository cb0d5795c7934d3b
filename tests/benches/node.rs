//! tracer-node attacked and loaded, with figures: `/healthz` p99 while slowloris clients hold
//! connections (and how soon the daemon closes them), authentication latency uncached and
//! cached against the stand-in API server (TokenReview + SubjectAccessReview), how many
//! sessions, running sessions and followers the limits let in, and RSS before and after.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use e2e::{
    agent,
    kube::{get_as, KubeStandIn},
    poller::quantile,
    require, rss_mb,
    standin::{register, StandIn},
    unique, Node,
};
use serde_json::json;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `n` GETs of `/healthz`, each on a new connection as a kubelet probe makes; sorted.
fn healthz(node: &Node, n: usize) -> Vec<Duration> {
    let mut took: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            let r = agent().get(&format!("{}/healthz", node.url)).call().expect("healthz");
            assert_eq!(r.status(), 200);
            t.elapsed()
        })
        .collect();
    took.sort();
    took
}

/// Whether the daemon closed `s` (EOF or reset); `s` is non-blocking.
fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 512];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            // An answer (408, 400...): read on to the close.
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// Slowloris clients of three kinds, 300 each, trickling a few bytes a second: unfinished
/// headers, a body shorter than its Content-Length, an endless chunked body.
fn slowloris() {
    const EACH: usize = 300;
    let node =
        Node::start_with(&["--http-header-timeout-secs", "5", "--http-body-timeout-secs", "5"]).expect("tracer-node");
    let idle = healthz(&node, 200);
    let kinds: [(&str, &[u8], &[u8]); 3] = [
        ("unfinished headers", b"GET /v1/pods HTTP/1.1\r\nHost: x\r\n", b"X-Slow: 1\r\n"),
        ("false Content-Length", b"POST /v1/trace-session HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n{", b" "),
        (
            "endless chunked body",
            b"POST /v1/trace-session HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"1\r\n \r\n",
        ),
    ];
    let mut conns: Vec<(usize, TcpStream)> = Vec::new();
    for (k, (_, head, _)) in kinds.iter().enumerate() {
        for _ in 0..EACH {
            let mut s = TcpStream::connect(("127.0.0.1", node.port())).expect("connect");
            s.write_all(head).expect("head");
            s.set_nonblocking(true).expect("nonblocking");
            conns.push((k, s));
        }
    }
    let started = Instant::now();
    let mut during = Vec::new();
    let mut closed_at: Vec<Option<Duration>> = vec![None; conns.len()];
    // Trickle a piece a second on every connection still open, probing /healthz in between.
    while started.elapsed() < Duration::from_secs(12) {
        for (i, (k, s)) in conns.iter_mut().enumerate() {
            if closed_at[i].is_some() {
                continue;
            }
            if closed_by_peer(s) || s.write_all(kinds[*k].2).is_err() {
                closed_at[i] = Some(started.elapsed());
            }
        }
        let tick = Instant::now();
        while tick.elapsed() < Duration::from_secs(1) {
            during.extend(healthz(&node, 5));
        }
    }
    during.sort();
    println!("slowloris: {EACH} clients each of three kinds trickling a piece a second (header and body timeouts 5 s)");
    println!(
        "  /healthz on new connections: idle p99 {:.1} ms; during the attack p99 {:.1} ms, max {:.1} ms ({} probes)",
        ms(quantile(&idle, 0.99)),
        ms(quantile(&during, 0.99)),
        ms(quantile(&during, 1.0)),
        during.len()
    );
    for (k, (name, _, _)) in kinds.iter().enumerate() {
        let mut times: Vec<Duration> =
            conns.iter().enumerate().filter(|(_, (kk, _))| *kk == k).filter_map(|(i, _)| closed_at[i]).collect();
        times.sort();
        println!(
            "  {name}: {} of {EACH} closed by the daemon within 12 s (median after {:.1} s)",
            times.len(),
            quantile(&times, 0.5).as_secs_f64()
        );
    }
}

/// Authentication and authorization through the stand-in API server: the first request of
/// each of 200 tokens (a TokenReview and a SubjectAccessReview each) and 1,000 cached ones,
/// against the same requests to a daemon without auth.
fn auth_latency() {
    const TOKENS: usize = 200;
    const CACHED: usize = 1000;
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens: serde_json::Map<String, serde_json::Value> = (0..TOKENS)
        .map(|i| {
            (format!("token-{i}"), json!({"username": format!("user-{i}"), "uid": format!("u{i}"), "groups": ["ops"]}))
        })
        .collect();
    let rules: Vec<serde_json::Value> = (0..TOKENS)
        .map(|i| json!({"user": format!("user-{i}"), "verbs": ["*"], "resources": ["*"], "namespace": "*"}))
        .collect();
    let standin = KubeStandIn::start(dir.path(), &json!({"tokens": tokens, "rules": rules}));
    let kubeconfig = standin.kubeconfig(dir.path());
    let node = Node::start_with_env(&["--auth-kubernetes"], &[("KUBECONFIG", kubeconfig.to_str().expect("utf8"))])
        .expect("tracer-node with --auth-kubernetes");
    let plain = Node::start().expect("tracer-node without auth");
    let time = |f: &mut dyn FnMut() -> u16| {
        let t = Instant::now();
        assert_eq!(f(), 200);
        t.elapsed()
    };
    let mut uncached: Vec<Duration> =
        (0..TOKENS).map(|i| time(&mut || get_as(&node, "GET", "/v1/pods", &format!("token-{i}"), None).0)).collect();
    // Interleaved, so both see the same machine; the same client code for both.
    let (mut cached, mut none) = (Vec::with_capacity(CACHED), Vec::with_capacity(CACHED));
    for i in 0..CACHED {
        cached.push(time(&mut || get_as(&node, "GET", "/v1/pods", &format!("token-{}", i % TOKENS), None).0));
        none.push(time(&mut || get_as(&plain, "GET", "/v1/pods", "none", None).0));
    }
    for v in [&mut uncached, &mut cached, &mut none] {
        v.sort();
    }
    let reviews = (standin.asked("tokenreviews"), standin.asked("subjectaccessreviews"));
    println!("authentication: GET /v1/pods through --auth-kubernetes (stand-in API server, loopback HTTP)");
    println!(
        "  uncached ({TOKENS} new tokens): p50 {:.2} ms, p99 {:.2} ms; cached ({CACHED}): p50 {:.3} ms, p99 {:.3} ms; \
         no auth: p50 {:.3} ms, p99 {:.3} ms",
        ms(quantile(&uncached, 0.5)),
        ms(quantile(&uncached, 0.99)),
        ms(quantile(&cached, 0.5)),
        ms(quantile(&cached, 0.99)),
        ms(quantile(&none, 0.5)),
        ms(quantile(&none, 0.99)),
    );
    println!(
        "  cached minus no auth at p50: {:+.3} ms; the API server was asked {} TokenReviews and {} SubjectAccessReviews",
        ms(quantile(&cached, 0.5)) - ms(quantile(&none, 0.5)),
        reviews.0,
        reviews.1
    );
}

/// Opens a following stream of session `sid` on a raw connection; answers the status.
fn follow(node: &Node, sid: &str) -> (u16, TcpStream) {
    let mut s = TcpStream::connect(("127.0.0.1", node.port())).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(s, "GET /v1/trace-session/{sid}/events?follow=true HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
    let mut head = [0u8; 12];
    let status = s.read_exact(&mut head).ok().and_then(|()| std::str::from_utf8(&head[9..12]).ok()?.parse().ok());
    (status.unwrap_or(0), s)
}

/// How many sessions, running sessions and followers the default limits let in, and the RSS
/// before, at the peak and after the floods.
fn limits() {
    let node = Node::start().expect("tracer-node");
    let pid = node.pid();
    let start_rss = rss_mb(pid);
    let context = "c".repeat(63 * 1024);
    let waiting = json!({"pod": unique("nobody"), "container": "*", "trace-hook": "trace_exec",
                         "wait-for-containers": true, "trace-user-context": context})
    .to_string();
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..4000 {
        match node.call("POST", "/v1/trace-session", Some(&waiting)).expect("post").0 {
            200 => accepted += 1,
            429 => refused += 1,
            other => panic!("POST answered {other}"),
        }
    }
    let peak = rss_mb(pid);
    assert_eq!(node.call("DELETE", "/v1/trace-session/all", None).expect("delete").0, 200);
    let after = rss_mb(pid);
    println!("limits (defaults) and memory");
    println!(
        "  4,000 POSTs with 63 KiB contexts: {accepted} sessions accepted, {refused} refused (429); \
         RSS {start_rss:.1} MB before, {peak:.1} MB at the peak, {after:.1} MB after DELETE all"
    );

    let prefix = unique("limits");
    let st = StandIn::start(&format!("{prefix}-0")).expect("stand-in");
    register(&node, &st.created(&format!("{prefix}-0"), "limits")).expect("register");
    let body = json!({"pod": format!("{prefix}-*"), "container": "*", "trace-hook": "trace_exec"});
    let (mut running, mut refused_run) = (Vec::new(), 0);
    for _ in 0..40 {
        let sid = node.create_session(&body).expect("session");
        match node.call("PUT", &format!("/v1/trace-session/{sid}"), Some(&json!({"Run": true}).to_string())) {
            Ok((200, _)) => running.push(sid),
            Ok((429, _)) => refused_run += 1,
            other => panic!("start answered {other:?}"),
        }
    }
    let with_running = rss_mb(pid);
    println!(
        "  40 starts: {} running, {refused_run} refused (429); RSS with them running {with_running:.1} MB",
        running.len()
    );
    let mut streams = Vec::new();
    let (mut per_session, mut refused_follow) = (0, 0);
    for (i, sid) in running.iter().enumerate() {
        for _ in 0..20 {
            let (status, s) = follow(&node, sid);
            match status {
                200 => {
                    if i == 0 {
                        per_session += 1;
                    }
                    streams.push(s);
                }
                429 => refused_follow += 1,
                other => panic!("follow answered {other}"),
            }
        }
    }
    let with_followers = rss_mb(pid);
    println!(
        "  followers: {per_session} accepted on one session, {} in all over {} sessions, {refused_follow} refused (429); \
         RSS with them held unread {with_followers:.1} MB",
        streams.len(),
        running.len()
    );
    drop(streams);
    let started = Instant::now();
    assert_eq!(node.call("DELETE", "/v1/trace-session/all", None).expect("delete").0, 200);
    println!(
        "  DELETE all of {} running sessions: {:.0} ms; RSS after {:.1} MB",
        running.len(),
        ms(started.elapsed()),
        rss_mb(pid)
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported here.
    if !require(&["python3", "unshare"]) {
        return;
    }
    slowloris();
    auth_latency();
    limits();
}
