//! What floods of requests did to tracer-node, and must not any more: `GET .../all` answers
//! held whole in memory for clients that do not read them, sessions and their contexts piling
//! up, and deleting busy sessions that took a minute draining buffers nobody would read.

use std::{
    io::Write,
    net::TcpStream,
    time::{Duration, Instant},
};

use e2e::{looping_container, reader_threads, require, rss_mb, unique, wait_until, Node, Runtime};
use serde_json::json;

/// A session that matches nothing yet, with a context of `context_kb` KiB.
fn waiting_session(context_kb: usize) -> String {
    json!({
        "pod": unique("nobody"), "container": "*", "trace-hook": "trace_exec",
        "wait-for-containers": true, "trace-user-context": "c".repeat(context_kb * 1024),
    })
    .to_string()
}

#[test]
fn get_all_is_streamed_so_clients_that_do_not_read_hold_no_memory() {
    if !require(&[]) {
        return;
    }
    let node = Node::start().expect("tracer-node");
    // 256 sessions (the default --max-sessions) with 60 KiB contexts: a 15 MiB answer.
    for _ in 0..256 {
        let (status, v) = node.call("POST", "/v1/trace-session", Some(&waiting_session(60))).expect("post");
        assert_eq!(status, 200, "{v}");
    }
    let before = rss_mb(node.pid());
    // Eight clients ask and never read.
    let unread: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", node.port())).expect("connect");
            s.write_all(b"GET /v1/trace-session/all HTTP/1.1\r\nhost: x\r\n\r\n").expect("write");
            s
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let held = rss_mb(node.pid());
    eprintln!("RSS with 256 sessions of 60 KiB: {before:.1} MB; with 8 unread GET all: {held:.1} MB");
    // Built whole, each answer would take 15 MiB (120 MiB for the eight).
    assert!(held - before < 40.0, "unread answers held in memory: {before:.1} -> {held:.1} MB");
    // A client that reads gets every session, as the one JSON object of the contract.
    let (status, all) = node.call("GET", "/v1/trace-session/all", None).expect("get all");
    assert_eq!(status, 200);
    let all = all.as_object().expect("an object");
    assert_eq!(all.len(), 256);
    for (id, s) in all {
        assert_eq!(s["Id"].as_str(), Some(id.as_str()));
        assert_eq!(s["Context"].as_str().map(str::len), Some(60 * 1024));
    }
    let mut ids: Vec<&String> = all.keys().collect();
    ids.sort();
    assert_eq!(ids, all.keys().collect::<Vec<_>>(), "keys in order, as a map of Sessions is");
    drop(unread);
}

#[test]
fn a_flood_of_sessions_is_refused_past_the_limit_and_its_memory_bounded() {
    if !require(&[]) {
        return;
    }
    let node = Node::start().expect("tracer-node");
    let before = rss_mb(node.pid());
    let (mut accepted, mut refused) = (0, 0);
    let body = waiting_session(63);
    for _ in 0..4000 {
        match node.call("POST", "/v1/trace-session", Some(&body)).expect("post").0 {
            200 => accepted += 1,
            429 => refused += 1,
            other => panic!("POST answered {other}"),
        }
    }
    let peak = rss_mb(node.pid());
    assert_eq!((accepted, refused), (256, 3744), "--max-sessions 256");
    assert_eq!(node.call("DELETE", "/v1/trace-session/all", None).expect("delete").0, 200);
    let after = rss_mb(node.pid());
    eprintln!(
        "4,000 POSTs of 63 KiB contexts: {accepted} accepted, {refused} refused; RSS {before:.1} -> {peak:.1} MB, {after:.1} MB after DELETE all"
    );
    // 256 contexts of 63 KiB are 16 MiB: the flood cannot take more than that and change.
    assert!(peak - before < 64.0, "RSS {before:.1} -> {peak:.1} MB");
    assert!(after - before < 64.0, "RSS after delete {after:.1} MB (before {before:.1})");
    assert_eq!(node.call("GET", "/v1/trace-session/all", None).expect("all").1, json!({}));
}

#[test]
fn deleting_busy_sessions_throws_away_what_nobody_will_read_instead_of_draining_it() {
    if !require(&["runc"]) {
        return;
    }
    let node = Node::start_with(&["--max-running-sessions", "10"]).expect("tracer-node");
    let rt = Runtime::new("runc").expect("runc");
    let pod = unique("busy");
    let (id, _) = looping_container(&node, &rt, &pod, "while :; do cat /dev/null; done");
    let ids: Vec<String> = (0..10)
        .map(|_| {
            let s = node
                .create_session(&json!({"pod": pod, "container": "looper", "trace-hook": "trace_syscalls"}))
                .expect("session");
            node.run_session(&s, true).expect("start");
            s
        })
        .collect();
    // Buffers fill (8 MiB per CPU each) faster than the readers keep up under ten sessions.
    std::thread::sleep(Duration::from_secs(3));
    let read: u64 = ids
        .iter()
        .map(|s| {
            let (_, v) = node.call("GET", &format!("/v1/trace-session/{s}/stats"), None).expect("stats");
            v["events_read"].as_u64().unwrap_or(0)
        })
        .sum();
    assert!(read > 0, "the sessions read events");
    let started = Instant::now();
    let (status, v) = node.call("DELETE", "/v1/trace-session/all", None).expect("delete all");
    let took = started.elapsed();
    assert_eq!(status, 200, "{v}");
    eprintln!("DELETE all of 10 busy trace_syscalls sessions ({read} events read): {took:?}");
    assert!(node.instances().is_empty(), "instances left: {:?}", node.instances());
    assert!(wait_until(Duration::from_secs(5), || reader_threads(node.pid()) == 0), "reader threads left");
    rt.kill(&id).expect("kill");
    rt.delete(&id).expect("delete");
}
