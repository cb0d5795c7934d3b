//! OTLP export from a real traced runc container to an independent receiver (Python
//! `opentelemetry-proto` + `grpcio`): what arrives (spans, log records, attributes, counts),
//! over both protocols, and what happens when the collector is down or hangs.

use std::{collections::BTreeMap, process::Command, time::Duration};

use e2e::{
    agent, binary, containerd_annotations, looping_container, require, require_otlp, unique, wait_until, Bundle, Node,
    Receiver, Runtime, LOOP_SCRIPT,
};
use serde_json::{json, Value};

fn stats(node: &Node, sid: &str) -> Value {
    let (status, v) = node.call("GET", &format!("/v1/trace-session/{sid}/stats"), None).expect("stats");
    assert_eq!(status, 200, "{v}");
    v
}

fn metrics(node: &Node) -> String {
    agent()
        .get(&format!("{}/metrics", node.url))
        .call()
        .expect("metrics")
        .body_mut()
        .read_to_string()
        .expect("metrics text")
}

fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos() as u64
}

/// Traces a looping container for a while with export on, then checks that the receiver got
/// exactly the session's events, tied to the container's span, with the semantic-convention
/// resource attributes.
fn every_event_arrives(protocol: &str, extra: &[&str], via_http: bool) {
    let receiver = Receiver::start().expect("receiver");
    let endpoint = if via_http { receiver.http_url() } else { receiver.grpc_url() };
    let mut flags = vec!["--otlp-endpoint", &endpoint, "--otlp-protocol", protocol, "--node-name", "e2e-node"];
    flags.extend_from_slice(extra);
    let node = Node::start_with(&flags).expect("tracer-node");
    let rt = Runtime::new("runc").expect("runc");
    let pod = unique("otlp");
    let (cid, init) = looping_container(&node, &rt, &pod, LOOP_SCRIPT);
    let sid = node
        .create_session(&json!({"pod": pod, "container": "*", "trace-hook": "trace_syscalls",
                                "trace-arguments": "-s openat", "trace-user-context": "otlp e2e"}))
        .expect("create session");
    let started = unix_now();
    node.run_session(&sid, true).expect("start");
    let output = node.session(&sid).expect("session")["Output"].clone();
    std::thread::sleep(Duration::from_millis(1500));
    node.run_session(&sid, false).expect("stop");
    let stopped = unix_now();
    let events = node.events(&sid).expect("events");
    assert!(events.len() > 20, "too few events: {}", events.len());

    assert!(
        wait_until(Duration::from_secs(30), || receiver.log_records().len() >= events.len()
            && receiver.spans().iter().any(|(_, s)| s["name"] == format!("trace-session {sid}"))),
        "receiver got {} of {} events and spans {:?}\n{}",
        receiver.log_records().len(),
        events.len(),
        receiver.spans(),
        node.log()
    );
    let logs = receiver.log_records();
    assert_eq!(logs.len(), events.len(), "same count as the event stream");
    // The same events, not just as many: (kernel timestamp, thread) pairs match one to one.
    let key = |ts: &Value, tid: &Value| (ts.as_u64().expect("ts"), tid.as_i64().expect("tid"));
    let mut streamed: Vec<(u64, i64)> = events.iter().map(|e| key(&e["timestamp"], &e["pid"])).collect();
    let mut exported: Vec<(u64, i64)> =
        logs.iter().map(|(_, r)| key(&r["attributes"]["ftrace.timestamp"], &r["attributes"]["thread.id"])).collect();
    streamed.sort_unstable();
    exported.sort_unstable();
    assert_eq!(streamed, exported);

    let spans = receiver.spans();
    let (cres, cspan) = spans
        .iter()
        .find(|(_, s)| s["name"] == format!("ns/{pod}/looper"))
        .unwrap_or_else(|| panic!("no container span in {spans:?}"));
    let (_, root) = spans.iter().find(|(_, s)| s["name"] == format!("trace-session {sid}")).expect("session span");
    assert_eq!(cspan["parent_span_id"], root["span_id"]);
    assert_eq!(cspan["trace_id"], root["trace_id"]);
    assert!(
        output.as_array().is_some_and(|o| o
            .iter()
            .any(|l| l.as_str().is_some_and(|l| l.ends_with(root["trace_id"].as_str().expect("trace id"))))),
        "the session's Output names its trace: {output}"
    );
    for (k, v) in [
        ("service.name", "looper"),
        ("k8s.pod.name", pod.as_str()),
        ("k8s.namespace.name", "ns"),
        ("k8s.container.name", "looper"),
        ("container.id", cid.as_str()),
        ("k8s.node.name", "e2e-node"),
        ("container.runtime", "runc"),
        ("container_tracer.session.id", sid.as_str()),
        ("container_tracer.trace_hook", "trace_syscalls"),
        ("container_tracer.trace_arguments", "-s openat"),
        ("container_tracer.user_context", "otlp e2e"),
    ] {
        assert_eq!(cres[k], k_v(v), "resource attribute {k}: {cres}");
    }
    assert_eq!(cspan["attributes"]["process.pid"], i64::from(init));
    assert_eq!(cspan["attributes"]["container_tracer.attached_at_creation"], false);
    let (s0, s1) = (cspan["start"].as_u64().expect("start"), cspan["end"].as_u64().expect("end"));
    assert!(
        started <= s0 + 50_000_000 && s0 <= s1 && s1 <= stopped + 50_000_000,
        "span {s0}..{s1} in {started}..{stopped}"
    );

    for (res, rec) in &logs {
        assert_eq!(res["container.id"], cid.as_str(), "every event is the container's: {rec}");
        assert_eq!(rec["trace_id"], cspan["trace_id"]);
        assert_eq!(rec["span_id"], cspan["span_id"], "correlated to the container span");
        let t = rec["time"].as_u64().expect("time");
        assert!(started - 1_000_000_000 < t && t < stopped + 1_000_000_000, "wall time {t} in {started}..{stopped}");
        let event = rec["attributes"]["ftrace.event"].as_str().expect("event");
        assert!(event == "sys_enter_openat" || event == "sys_exit_openat", "{rec}");
        assert_eq!(rec["event_name"], format!("syscalls:{event}"));
        assert!(rec["attributes"]["process.pid"].as_i64().is_some() && rec["attributes"]["thread.name"].is_string());
        assert!(rec["attributes"]["ftrace.cpu"].as_i64().is_some());
        assert!(rec["body"].is_object(), "fields are the body: {rec}");
    }
    assert!(
        logs.iter().any(|(_, r)| r["event_name"] == "syscalls:sys_enter_openat"
            && r["body"]["dfd"].is_number()
            && r["body"]["flags"].is_number()),
        "decoded fields arrive"
    );

    let st = stats(&node, &sid);
    assert_eq!(st["events_exported"], st["events_read"], "{st}");
    assert_eq!((st["events_export_dropped"].as_u64(), st["events_lost_kernel"].as_u64()), (Some(0), Some(0)), "{st}");
    let m = metrics(&node);
    assert_eq!(metric(&m, "container_tracer_exported_records_total{signal=\"events\"}"), events.len() as u64);
    assert_eq!(metric(&m, "container_tracer_export_dropped_records_total{signal=\"events\"}"), 0);
    assert_eq!(metric(&m, "container_tracer_export_queue_events"), 0);
    assert!(metric(&m, "container_tracer_hook_deliveries_total{event=\"created\",result=\"applied\"}") >= 1);
    let _ = rt.kill(&cid);
}

fn k_v(v: &str) -> Value {
    Value::String(v.to_owned())
}

#[test]
fn grpc_export_delivers_every_event_tied_to_the_container_span() {
    if !require_otlp() {
        return;
    }
    every_event_arrives("grpc", &[], false);
}

#[test]
fn http_protobuf_export_with_gzip_delivers_every_event() {
    if !require_otlp() {
        return;
    }
    every_event_arrives("http/protobuf", &["--otlp-compression", "gzip", "--otlp-headers", "x-tenant=e2e"], true);
}

#[test]
fn a_container_attached_at_creation_gets_a_span_from_creation_to_exit_with_its_exit_code() {
    if !require_otlp() {
        return;
    }
    let receiver = Receiver::start().expect("receiver");
    let node = Node::start_with(&["--otlp-endpoint", &receiver.grpc_url(), "--otlp-protocol", "grpc"]).expect("node");
    let rt = Runtime::new("runc").expect("runc");
    let pod = unique("otlp-exit");
    let sid = node
        .create_session(&json!({"pod": pod, "container": "*", "trace-hook": "trace_exec", "wait-for-containers": true}))
        .expect("create waiting session");
    node.run_session(&sid, true).expect("start");
    let id = unique("ct-otlp-exit");
    // As the admission webhook stamps a Deployment's pod, and CRI-O passes it on.
    let mut annotations = containerd_annotations(&pod, "ns", "app");
    annotations.insert("container-tracer.io/labels".into(), r#"{"app":"web","pod-template-hash":"7d9f8c"}"#.into());
    annotations.insert("container-tracer.io/owner".into(), "ReplicaSet/web-7d9f8c".into());
    let bundle =
        Bundle::new(&["sh", "-c", "sleep 0.2; exit 3"], &annotations, Bundle::hooks_for(&node)).expect("bundle");
    let before = unix_now();
    rt.create(&id, &bundle).expect("create");
    rt.start(&id).expect("start");
    // The span is sent once the container has exited (plus a short grace for its last events),
    // while the session still runs.
    assert!(
        wait_until(Duration::from_secs(20), || receiver
            .spans()
            .iter()
            .any(|(_, s)| s["name"] == format!("ns/{pod}/app"))),
        "container span exported while the session runs: {:?}\n{}",
        receiver.spans(),
        node.log()
    );
    let spans = receiver.spans();
    let (resource, span) = spans.iter().find(|(_, s)| s["name"] == format!("ns/{pod}/app")).expect("span");
    assert_eq!(resource["k8s.replicaset.name"], "web-7d9f8c", "{resource}");
    assert_eq!(resource["k8s.deployment.name"], "web", "{resource}");
    let a = &span["attributes"];
    assert_eq!(a["container_tracer.attached_at_creation"], true, "{span}");
    assert_eq!(a["container_tracer.container_exited"], true, "{span}");
    assert_eq!(a["process.exit.code"], 3, "{span}");
    assert_eq!(span["status_code"], 2, "exit code 3 is an error status: {span}");
    assert_eq!(span["status_message"], "exit code 3");
    let start = span["start"].as_u64().expect("start");
    assert!(before <= start && start <= span["end"].as_u64().expect("end"), "span starts at creation: {span}");
    node.run_session(&sid, false).expect("stop");
    let events = node.events(&sid).expect("events");
    assert!(wait_until(Duration::from_secs(20), || receiver.log_records().len() >= events.len()));
    let logs = receiver.log_records();
    assert_eq!(logs.len(), events.len());
    let first_exec = logs
        .iter()
        .filter(|(_, r)| r["event_name"] == "sched:sched_process_exec")
        .min_by_key(|(_, r)| r["time"].as_u64())
        .expect("exec exported");
    assert_eq!(first_exec.1["span_id"], span["span_id"], "the first exec belongs to the container span");
    let _ = rt.delete(&id);
}

#[test]
fn the_original_jaeger_endpoint_sends_events_as_span_events_to_jaegers_otlp_port() {
    if !require_otlp() {
        return;
    }
    // Jaeger's OTLP/gRPC port; the old collector address is mapped to it.
    let receiver = Receiver::start_on(4317, 0).expect("receiver on 4317 (is something else using it?)");
    let node = Node::start_with(&["--jaeger-endpoint", "http://127.0.0.1:14268/api/traces"]).expect("node");
    let rt = Runtime::new("runc").expect("runc");
    let (events, _, sid, pod, cid) = short_session(&node, &rt, Duration::from_millis(1500));
    let span_events =
        |r: &Receiver| -> usize { r.spans().iter().map(|(_, s)| s["events"].as_array().map_or(0, Vec::len)).sum() };
    assert!(
        wait_until(Duration::from_secs(30), || span_events(&receiver) >= events.len()
            && receiver.spans().iter().any(|(_, s)| s["name"] == format!("trace-session {sid}"))),
        "{} of {} events arrived as span events\n{}",
        span_events(&receiver),
        events.len(),
        node.log()
    );
    assert_eq!(span_events(&receiver), events.len());
    assert!(receiver.log_records().is_empty(), "Jaeger stores no logs: nothing is sent as logs");
    let spans = receiver.spans();
    let (_, container) = spans.iter().find(|(_, s)| s["name"] == format!("ns/{pod}/looper")).expect("container span");
    for (res, chunk) in spans.iter().filter(|(_, s)| !s["events"].as_array().is_some_and(Vec::is_empty)) {
        assert_eq!(chunk["parent_span_id"], container["span_id"], "event chunks hang under the container span");
        assert_eq!(res["container.id"], cid.as_str());
        let e = &chunk["events"][0];
        assert!(e["name"].as_str().is_some_and(|n| n.starts_with("syscalls:sys_")), "{e}");
        assert!(
            e["attributes"]["thread.id"].is_i64() && e["attributes"]["dfd"].is_number(),
            "fields as attributes: {e}"
        );
    }
}

#[test]
fn a_down_or_hanging_collector_costs_drops_not_kernel_events_and_export_resumes() {
    if !require_otlp() {
        return;
    }
    let mut receiver = Receiver::start().expect("receiver");
    receiver.set_mode("hang");
    let node = Node::start_with(&[
        "--otlp-endpoint",
        &receiver.grpc_url(),
        "--otlp-protocol",
        "grpc",
        "--otlp-timeout",
        "500",
        "--otlp-queue-events",
        "2000",
        "--otlp-batch-events",
        "500",
    ])
    .expect("node");
    let rt = Runtime::new("runc").expect("runc");
    let pod = unique("otlp-down");
    // Busy: thousands of openat a second from forked children.
    let (cid, _) =
        looping_container(&node, &rt, &pod, "while true; do cat /etc/hostname /etc/hostname > /dev/null; done");
    let sid = node
        .create_session(
            &json!({"pod": pod, "container": "*", "trace-hook": "trace_syscalls", "trace-arguments": "-s openat"}),
        )
        .expect("create");
    node.run_session(&sid, true).expect("start");

    // Hanging collector: the queue fills and the rest is dropped, while the API answers at once.
    assert!(
        wait_until(Duration::from_secs(20), || stats(&node, &sid)["events_export_dropped"].as_u64() > Some(0)),
        "drops counted: {}",
        stats(&node, &sid)
    );
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let (status, _) = node.call("GET", "/v1/pods", None).expect("pods");
        assert_eq!(status, 200);
        assert!(t.elapsed() < Duration::from_secs(1), "API answered in {:?} with the collector hanging", t.elapsed());
        let t = std::time::Instant::now();
        let _ = stats(&node, &sid);
        assert!(t.elapsed() < Duration::from_secs(1));
    }
    let st = stats(&node, &sid);
    assert!(st["events_export_queued"].as_u64() <= Some(2000 + 1024), "queue stays bounded: {st}");

    // Down: connection refused.
    receiver.kill();
    std::thread::sleep(Duration::from_secs(2));
    let down = stats(&node, &sid);
    assert!(down["events_export_dropped"].as_u64() > st["events_export_dropped"].as_u64(), "{down}");

    // Back: export resumes.
    receiver.set_mode("ok");
    receiver.restart().expect("receiver back");
    assert!(
        wait_until(Duration::from_secs(40), || receiver.log_records().len() > 100),
        "export resumed: {} records, stats {}\n{}",
        receiver.log_records().len(),
        stats(&node, &sid),
        node.log()
    );
    node.run_session(&sid, false).expect("stop");
    let end = stats(&node, &sid);
    assert_eq!(end["events_lost_kernel"], 0, "the kernel reader never waited for the exporter: {end}");
    let read = end["events_read"].as_u64().expect("read");
    // Everything read is accounted for once the run's export is over.
    assert!(
        wait_until(Duration::from_secs(30), || {
            let s = stats(&node, &sid);
            s["events_export_queued"] == 0
                && s["events_exported"].as_u64().unwrap_or(0) + s["events_export_dropped"].as_u64().unwrap_or(0) == read
        }),
        "exported + dropped == read: {}",
        stats(&node, &sid)
    );
    assert!(node.log().contains("OTLP export dropped events"), "drops are logged");
    let m = metrics(&node);
    assert!(metric(&m, "container_tracer_export_dropped_records_total{signal=\"events\"}") > 0);
    assert!(metric(&m, "container_tracer_export_requests_total{result=\"failed\"}") > 0);
    let _ = rt.kill(&cid);
}

/// Traces a new looping container with `-s openat` for `run`; answers the session's events, its
/// stats, the session id, the pod and the container id.
fn short_session(node: &Node, rt: &Runtime, run: Duration) -> (Vec<Value>, Value, String, String, String) {
    let pod = unique("otlp-short");
    let (cid, _) = looping_container(node, rt, &pod, LOOP_SCRIPT);
    let sid = node
        .create_session(
            &json!({"pod": pod, "container": "*", "trace-hook": "trace_syscalls", "trace-arguments": "-s openat"}),
        )
        .expect("create");
    node.run_session(&sid, true).expect("start");
    std::thread::sleep(run);
    node.run_session(&sid, false).expect("stop");
    let _ = rt.kill(&cid);
    (node.events(&sid).expect("events"), stats(node, &sid), sid, pod, cid)
}

#[test]
fn tls_endpoints_are_verified_against_the_configured_ca() {
    if !require_otlp() || !require(&["openssl"]) {
        return;
    }
    let certs = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = e2e::test_certificates(certs.path()).expect("certificates");
    let receiver = Receiver::start_tls(&cert, &key).expect("TLS receiver");
    let rt = Runtime::new("runc").expect("runc");
    let ca = ca.to_string_lossy().into_owned();
    for (proto, port) in [("grpc", receiver.grpc_port), ("http/protobuf", receiver.http_port)] {
        let before = receiver.log_records().len();
        let endpoint = format!("https://localhost:{port}");
        let node =
            Node::start_with(&["--otlp-endpoint", &endpoint, "--otlp-protocol", proto, "--otlp-certificate", &ca])
                .expect("node");
        let (events, _, _, _, cid) = short_session(&node, &rt, Duration::from_secs(1));
        assert!(
            wait_until(Duration::from_secs(20), || receiver.log_records().len() - before >= events.len()),
            "{proto} over TLS: {} of {} events\n{}",
            receiver.log_records().len() - before,
            events.len(),
            node.log()
        );
        assert_eq!(receiver.log_records().len() - before, events.len(), "{proto}");
        // While this node still runs: a poststop aimed at a node that is gone would spool into
        // (and so re-create) its removed temp directory.
        rt.delete(&cid).expect("delete container");
    }
    // Without the CA the server is not trusted: nothing is sent, the loss is counted, and a
    // certificate error is not retried for seconds.
    for (proto, port) in [("grpc", receiver.grpc_port), ("http/protobuf", receiver.http_port)] {
        let before = receiver.log_records().len();
        let endpoint = format!("https://localhost:{port}");
        let node =
            Node::start_with(&["--otlp-endpoint", &endpoint, "--otlp-protocol", proto, "--otlp-timeout", "1000"])
                .expect("node");
        let (events, _, sid, _, cid) = short_session(&node, &rt, Duration::from_secs(1));
        assert!(
            wait_until(Duration::from_secs(10), || stats(&node, &sid)["events_export_dropped"].as_u64()
                == Some(events.len() as u64)),
            "{proto}, untrusted server: every event dropped and counted: {}\n{}",
            stats(&node, &sid),
            node.log()
        );
        assert_eq!(receiver.log_records().len(), before, "nothing reached the untrusted server");
        assert!(node.log().contains("certificate"), "the log says why");
        rt.delete(&cid).expect("delete container");
    }
}

#[test]
fn bad_export_configuration_is_a_usage_error() {
    if !require(&[]) {
        return;
    }
    let cases: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::from([
        ("--otlp-endpoint", vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")]),
        (
            "--otlp-protocol",
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
        ),
        (
            "--otlp-headers",
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_EXPORTER_OTLP_HEADERS", "broken")],
        ),
        ("--otlp-compression", vec![("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")]),
        ("--otlp-certificate", vec![("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem")]),
        ("--jaeger-endpoint", vec![("TRACER_JEAGER_ENDPOINT", "http://")]),
        ("--otlp-timeout", vec![("OTEL_EXPORTER_OTLP_TIMEOUT", "soon")]),
    ]);
    for (needle, env) in cases {
        let mut cmd = Command::new(binary("tracer-node"));
        cmd.args(["--address", "127.0.0.1:1", "--state-dir", "/nonexistent-ct-state"]);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run tracer-node");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{env:?}: {stderr}");
        assert!(
            stderr.contains(needle) || stderr.contains(&needle.to_lowercase().replace('_', "-")),
            "{env:?}: error names {needle}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// An auto-trace session (made by the pod's annotations at its container's creation) is exported
/// like any other: its run's span, the container's span from creation, and its events.
#[test]
fn an_auto_trace_session_is_exported_like_any_other() {
    if !require_otlp() {
        return;
    }
    let receiver = Receiver::start().expect("receiver");
    // The start must be over before the hook's answer however loaded the machine: a long
    // deadline and attach budget (at 150 ms under a loaded CI run the exec came first).
    let node = Node::start_with(&[
        "--otlp-endpoint",
        &receiver.grpc_url(),
        "--otlp-protocol",
        "grpc",
        "--attach-budget-ms",
        "900",
    ])
    .expect("node");
    let rt = Runtime::new("runc").expect("runc");
    let pod = unique("otlp-auto");
    let mut annotations = containerd_annotations(&pod, "ns", "app");
    annotations.insert("container-tracer.io/trace-hook".into(), "trace_exec".into());
    let id = unique("ct-otlp-auto");
    let bundle =
        Bundle::new(&["sh", "-c", "sleep 0.2; exit 0"], &annotations, Bundle::hooks_with_deadline(&node, 1000))
            .expect("bundle");
    rt.create(&id, &bundle).expect("create");
    rt.start(&id).expect("start");
    rt.keep(bundle);
    let (_, all) = node.call("GET", "/v1/trace-session/all", None).expect("sessions");
    let sid = all.as_object().and_then(|o| o.keys().next().cloned()).expect("the auto-trace session");
    // The pod goes: the session stops, and its run's span and the container's are exported.
    assert!(
        wait_until(Duration::from_secs(20), || {
            let spans = receiver.spans();
            spans.iter().any(|(_, s)| s["name"] == format!("trace-session {sid}"))
                && spans.iter().any(|(_, s)| s["name"] == format!("ns/{pod}/app"))
        }),
        "spans of the auto-trace session: {:?}\n{}",
        receiver.spans(),
        node.log()
    );
    let spans = receiver.spans();
    let (_, span) = spans.iter().find(|(_, s)| s["name"] == format!("ns/{pod}/app")).expect("span");
    assert_eq!(span["attributes"]["container_tracer.attached_at_creation"], true, "{span}");
    let events = node.events(&sid).expect("events");
    assert!(wait_until(Duration::from_secs(20), || receiver.log_records().len() >= events.len()));
    assert!(events.iter().any(|e| e["event"] == "sched_process_exec"), "the exec is traced");
    let _ = rt.delete(&id);
}
