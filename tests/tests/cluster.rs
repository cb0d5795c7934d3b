//! tracer-svc in front of three real tracer-nodes on loopback (each its own registry socket,
//! state and instance prefix), with real runc containers registered through the hook: the
//! cluster answers as one, sessions get one id on exactly the nodes with matching pods, events
//! stream from all of them, and a stopped node is named, never waited on for more than the
//! node timeout.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use e2e::{looping_container, require, svc::Svc, unique, Node, Runtime, LOOP_SCRIPT};
use serde_json::{json, Value};

fn node(name: &str) -> Node {
    Node::start_with(&["--node-name", name]).expect("tracer-node")
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
}

#[test]
fn three_nodes_answer_as_one_cluster_through_tracer_svc() {
    if !require(&["runc"]) {
        return;
    }
    let tag = unique("cl");
    let names = [format!("{tag}-a"), format!("{tag}-b"), format!("{tag}-c")];
    let nodes: Vec<Node> = names.iter().map(|n| node(n)).collect();
    let rt = Runtime::new("runc").expect("runc");
    // web pods on the first two nodes, a db pod on the third.
    let pods = [format!("{tag}-web-1"), format!("{tag}-web-2"), format!("{tag}-db-1")];
    for (n, pod) in nodes.iter().zip(&pods) {
        looping_container(n, &rt, pod, LOOP_SCRIPT);
    }
    let urls: Vec<&str> = nodes.iter().map(|n| n.url.as_str()).collect();
    let svc = Svc::start(&urls, &["--node-timeout", "3000"]).expect("tracer-svc");

    // /v1/pods is the union of the nodes' answers.
    let a = svc.call("GET", "/v1/pods", None);
    assert_eq!((a.status, a.missing.len()), (200, 0), "{a:?}");
    let mut union = BTreeSet::new();
    for n in &nodes {
        union.extend(keys(&n.pods().expect("pods")));
    }
    assert_eq!(keys(&a.body), union);
    for pod in &pods {
        assert_eq!(a.body[pod]["Containers"]["looper"]["Pod"], json!(pod), "{}", a.body);
    }
    let hooks = svc.call("GET", "/v1/trace-hooks", None);
    assert_eq!(hooks.status, 200);
    assert!(hooks.body.to_string().contains("trace_syscalls"), "{}", hooks.body);

    // One session over the web pods: one id, on exactly the first two nodes.
    let (sid, info) = svc
        .create(&json!({"pod": format!("{tag}-web-*"), "container": "*", "trace-hook": "trace_syscalls",
                         "trace-arguments": "-s openat", "trace-user-context": "cluster e2e"}))
        .expect("create");
    let both = format!("{},{}", names[0], names[1]);
    assert_eq!(info["Node"], json!(both), "{info}");
    assert_eq!(info["Nodes"], json!([names[0], names[1]]), "{info}");
    assert_eq!(keys(&info["Containers"]), BTreeSet::from([pods[0].clone(), pods[1].clone()]));
    for (i, n) in nodes.iter().enumerate() {
        let (status, v) = n.call("GET", &format!("/v1/trace-session/{sid}"), None).expect("node");
        assert_eq!(status, if i < 2 { 200 } else { 404 }, "node {i}: {v}");
    }

    // Started through tracer-svc, followed through it: events of both nodes in one stream.
    let run = svc.call("PUT", &format!("/v1/trace-session/{sid}"), Some(r#"{"Run": true}"#));
    assert_eq!((run.status, run.missing.len()), (200, 0), "{run:?}");
    assert_eq!(nodes[0].instances().len() + nodes[1].instances().len(), 2);
    assert!(nodes[2].instances().is_empty());
    let mut seen = BTreeSet::new();
    let started = Instant::now();
    let (ended, missing, _) =
        svc.stream(&format!("/v1/trace-session/{sid}/events?follow=true"), Duration::from_secs(20), |e| {
            assert_eq!(e["session"], json!(sid));
            assert!(e["event"].as_str().is_some_and(|n| n.ends_with("_openat")), "{e}");
            seen.insert(e["node"].as_str().unwrap_or_default().to_owned());
            seen.len() < 2
        });
    assert!(!ended && missing.is_empty());
    assert_eq!(seen, BTreeSet::from([names[0].clone(), names[1].clone()]), "after {:?}", started.elapsed());

    // A follower ends when the session has stopped everywhere.
    let follower = {
        let (url, sid) = (svc.url.clone(), sid.clone());
        std::thread::spawn(move || {
            let agent: ureq::Agent =
                ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(20))).build().into();
            let mut resp =
                agent.get(&format!("{url}/v1/trace-session/{sid}/events?follow=true")).call().expect("follow");
            let body = resp.body_mut().with_config().limit(1 << 30).read_to_string().expect("stream ends");
            body.lines().count()
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let stop = svc.call("PUT", &format!("/v1/trace-session/{sid}"), Some(r#"{"Run": false}"#));
    assert_eq!(stop.status, 200, "{stop:?}");
    let lines = follower.join().expect("the follow stream ended by itself");
    assert!(lines > 0, "the follower saw events");

    // Statistics per node and summed.
    let stats = svc.call("GET", &format!("/v1/trace-session/{sid}/stats"), None);
    assert_eq!(stats.status, 200, "{stats:?}");
    let per: u64 = names[..2].iter().map(|n| stats.body["nodes"][n]["events_read"].as_u64().expect("per node")).sum();
    assert_eq!(stats.body["events_read"].as_u64(), Some(per), "{}", stats.body);
    assert_eq!(stats.body["running"], json!(false));
    let listed = svc.call("GET", "/v1/trace-session/all", None);
    assert_eq!(listed.body[&sid]["Nodes"], json!([names[0], names[1]]), "{}", listed.body);

    // A pattern no node matches is a 404; a bad id a 400 (never forwarded).
    let none = svc.call(
        "POST",
        "/v1/trace-session",
        Some(&json!({"pod": format!("{tag}-nothing"), "container": "*", "trace-hook": "trace_exec"}).to_string()),
    );
    assert_eq!(none.status, 404, "{none:?}");
    assert_eq!(svc.call("GET", "/v1/trace-session/12x", None).status, 400);

    // DELETE all clears every node.
    let del = svc.call("DELETE", "/v1/trace-session/all", None);
    assert_eq!((del.status, del.missing.len()), (200, 0), "{del:?}");
    for n in &nodes {
        assert_eq!(n.call("GET", "/v1/trace-session/all", None).expect("node").1, json!({}));
        assert!(n.instances().is_empty());
    }
}

#[test]
fn a_stopped_node_is_named_and_every_endpoint_answers_within_the_node_timeout() {
    if !require(&[]) {
        return;
    }
    let tag = unique("stop");
    let names = [format!("{tag}-a"), format!("{tag}-b"), format!("{tag}-c")];
    let nodes: Vec<Node> = names.iter().map(|n| node(n)).collect();
    let urls: Vec<&str> = nodes.iter().map(|n| n.url.as_str()).collect();
    let timeout = Duration::from_millis(1000);
    let svc = Svc::start(&urls, &["--node-timeout", "1000"]).expect("tracer-svc");
    let (sid, info) = svc
        .create(&json!({"pod": format!("{tag}-*"), "container": "*", "trace-hook": "trace_exec",
                         "wait-for-containers": true}))
        .expect("create");
    assert_eq!(info["Nodes"].as_array().map(Vec::len), Some(3), "{info}");

    let stopped = &nodes[2];
    let stopped_name = stopped.url.trim_start_matches("http://").to_owned();
    stopped.signal(rustix::process::Signal::STOP);
    // Every thread stopped before the first request (a thread busy in the kernel stops on its
    // way out, a moment later).
    let stopped_all = e2e::wait_until(Duration::from_secs(5), || {
        std::fs::read_dir(format!("/proc/{}/task", stopped.pid())).is_ok_and(|tasks| {
            tasks.flatten().all(|t| {
                std::fs::read_to_string(t.path().join("stat"))
                    .is_ok_and(|st| st.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('T')))
            })
        })
    });
    assert!(stopped_all, "the node stopped");
    let margin = Duration::from_millis(700);
    let requests: Vec<(&str, String, Option<String>)> = vec![
        ("GET", "/v1/pods".into(), None),
        ("GET", "/v1/trace-hooks".into(), None),
        ("GET", "/v1/trace-session/all".into(), None),
        ("GET", format!("/v1/trace-session/{sid}"), None),
        ("GET", format!("/v1/trace-session/{sid}/stats"), None),
        ("GET", format!("/v1/trace-session/{sid}/events"), None),
        ("PUT", format!("/v1/trace-session/{sid}"), Some(r#"{"Run": true}"#.into())),
        ("PUT", format!("/v1/trace-session/{sid}"), Some(r#"{"Run": false}"#.into())),
    ];
    for (method, path, body) in &requests {
        let a = svc.call(method, path, body.as_deref());
        assert_eq!(a.status, 200, "{method} {path}: {a:?}");
        // The stopped node is named; on a machine loaded enough, a slow healthy node may be
        // too (it is missing from the answer as well), which is the product doing its job.
        assert!(a.missing.contains(&stopped_name), "{method} {path}: {a:?}");
        // Two round trips for the requests that first find the session's nodes.
        let rounds = if path.contains(&sid) && (method != &"GET" || path.ends_with("stats") || path.ends_with("events"))
        {
            2
        } else {
            1
        };
        assert!(a.took < timeout * rounds + margin, "{method} {path} took {:?}", a.took);
    }
    // A follow stream answers within the timeout too, and carries the header.
    let (_, missing, took) =
        svc.stream(&format!("/v1/trace-session/{sid}/events?follow=true"), Duration::from_secs(2), |_| false);
    assert!(missing.contains(&stopped_name), "{missing:?}");
    assert!(took < timeout * 2 + margin, "follow took {took:?} to answer");
    let metrics = e2e::get_text(&format!("{}/metrics", svc.url));
    assert!(
        metrics.lines().any(|l| l.starts_with("container_tracer_svc_node_requests_total")
            && l.contains(&stopped_name)
            && l.contains("result=\"timeout\"")),
        "{metrics}"
    );
    assert!(svc.log_text().contains("node left out of the answer"), "logged");

    // Back after SIGCONT.
    stopped.signal(rustix::process::Signal::CONT);
    assert!(
        svc.wait_for("/v1/pods", Duration::from_secs(10), |a| a.status == 200 && a.missing.is_empty()),
        "the node is back"
    );
    let a = svc.call("GET", &format!("/v1/trace-session/{sid}"), None);
    assert_eq!((a.status, a.missing.len()), (200, 0), "{a:?}");
    assert_eq!(a.body[&sid]["Nodes"].as_array().map(Vec::len), Some(3));
    let del = svc.call("DELETE", &format!("/v1/trace-session/{sid}"), None);
    assert_eq!((del.status, del.missing.len()), (200, 0), "{del:?}");
    for n in &nodes {
        assert_eq!(n.call("GET", "/v1/trace-session/all", None).expect("node").1, json!({}));
    }
}

#[test]
fn a_node_that_drops_out_of_a_follow_ends_its_part_and_the_others_go_on() {
    if !require(&["runc"]) {
        return;
    }
    let tag = unique("drop");
    let names = [format!("{tag}-a"), format!("{tag}-b")];
    let mut nodes: Vec<Node> = names.iter().map(|n| node(n)).collect();
    let rt = Runtime::new("runc").expect("runc");
    for (i, n) in nodes.iter().enumerate() {
        looping_container(n, &rt, &format!("{tag}-web-{i}"), LOOP_SCRIPT);
    }
    let urls: Vec<&str> = nodes.iter().map(|n| n.url.as_str()).collect();
    let svc = Svc::start(&urls, &["--node-timeout", "3000"]).expect("tracer-svc");
    let (sid, _) = svc
        .create(&json!({"pod": format!("{tag}-web-*"), "container": "*", "trace-hook": "trace_syscalls",
                         "trace-arguments": "-s openat"}))
        .expect("create");
    assert_eq!(svc.call("PUT", &format!("/v1/trace-session/{sid}"), Some(r#"{"Run": true}"#)).status, 200);

    // Follow; once both nodes are seen, node b is killed mid-stream; a's events keep coming.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let follower = {
        let (url, sid) = (svc.url.clone(), sid.clone());
        std::thread::spawn(move || {
            let agent: ureq::Agent =
                ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(60))).build().into();
            let resp = agent.get(&format!("{url}/v1/trace-session/{sid}/events?follow=true")).call().expect("follow");
            use std::io::BufRead;
            for line in std::io::BufReader::new(resp.into_body().into_reader()).lines() {
                let Ok(line) = line else { return false };
                let v: Value = serde_json::from_str(&line).expect("whole event lines");
                if tx.send(v["node"].as_str().unwrap_or_default().to_owned()).is_err() {
                    return false;
                }
            }
            true
        })
    };
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < 2 && Instant::now() < deadline {
        if let Ok(n) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.insert(n);
        }
    }
    assert_eq!(seen.len(), 2, "events of both nodes: {seen:?}");
    nodes[1].stop(false);
    // Drain what was on the way, then a's events must still arrive.
    std::thread::sleep(Duration::from_millis(300));
    while rx.try_recv().is_ok() {}
    let mut after = 0;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        if let Ok(n) = rx.recv_timeout(Duration::from_millis(100)) {
            assert_eq!(n, names[0], "only a is left");
            after += 1;
        }
    }
    assert!(after > 5, "a's events go on after b dropped out: {after}");
    // Stopping the session ends the stream (b's part ended with b).
    let stop = svc.call("PUT", &format!("/v1/trace-session/{sid}"), Some(r#"{"Run": false}"#));
    assert_eq!(stop.status, 200, "{stop:?}");
    assert_eq!(stop.missing, vec![nodes[1].url.trim_start_matches("http://").to_owned()]);
    assert!(follower.join().expect("follower"), "the stream ended by itself");
    let metrics = e2e::get_text(&format!("{}/metrics", svc.url));
    assert!(
        metrics.lines().any(|l| l.starts_with("container_tracer_svc_node_stream_breaks_total") && !l.ends_with(" 0")),
        "the break was counted: {metrics}"
    );
    let del = svc.call("DELETE", "/v1/trace-session/all", None);
    assert_eq!(del.status, 200);
}
