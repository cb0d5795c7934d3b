//! Auto-trace: a pod's `container-tracer.io/trace-hook` annotations, passed by the runtime as OCI
//! annotations (as CRI-O does, and containerd with `pod_annotations`), make tracer-node start a
//! session for the pod at its container's creation, before the hook is answered, so the
//! container's first exec is traced; the session stops with the pod and is removed after its
//! retention time.

use std::{collections::BTreeMap, time::Duration};

use e2e::{containerd_annotations, require, unique, wait_until, Bundle, Node, Runtime};
use serde_json::Value;
use tracer_spec::annotations as ann;

fn annotated(pod: &str, container: &str, wish: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut a = containerd_annotations(pod, "shop", container);
    for (k, v) in wish {
        a.insert((*k).to_owned(), (*v).to_owned());
    }
    a
}

/// The auto-trace sessions of `pod`.
fn auto_sessions(node: &Node, pod: &str) -> Vec<Value> {
    let (_, all) = node.call("GET", "/v1/trace-session/all", None).expect("all");
    all.as_object()
        .expect("sessions")
        .values()
        .filter(|s| s["AutoTrace"] == true && s["Containers"].get(pod).is_some())
        .cloned()
        .collect()
}

#[test]
fn an_annotated_pod_is_traced_from_its_first_exec_and_its_session_goes_with_it() {
    if !require(&["runc"]) {
        return;
    }
    let node =
        Node::start_with(&["--auto-trace-retention-secs", "2", "--attach-budget-ms", "900"]).expect("tracer-node");
    let rt = Runtime::new("runc").expect("runc");
    let pod = unique("auto");
    let wish = [(ann::TRACE_HOOK, "trace_exec"), (ann::TRACE_CONTEXT, "auto e2e")];
    let (app, side) = (unique("ct-auto-app"), unique("ct-auto-side"));
    let b1 = Bundle::new(
        &["sh", "-c", "sleep 1; exit 0"],
        &annotated(&pod, "app", &wish),
        Bundle::hooks_with_deadline(&node, 1000),
    )
    .expect("bundle");
    rt.create(&app, &b1).expect("create");
    let init = rt.pid(&app).expect("pid");
    // Started before the hook answered: running while runc still holds the init before exec.
    let sessions = auto_sessions(&node, &pod);
    assert_eq!(sessions.len(), 1, "one session for the pod: {sessions:?}");
    let s = &sessions[0];
    assert_eq!(s["Running"], true, "{s}");
    assert_eq!(s["Context"], "auto e2e");
    assert_eq!(s["TraceHook"], "trace_exec");
    let sid = s["Id"].as_str().expect("id").to_owned();
    // A second container of the pod joins the same session.
    let b2 = Bundle::new(&["sleep", "1"], &annotated(&pod, "side", &wish), Bundle::hooks_with_deadline(&node, 1000))
        .expect("bundle");
    rt.create(&side, &b2).expect("create");
    let s = node.session(&sid).expect("session");
    assert_eq!(s["Containers"][&pod], serde_json::json!(["app", "side"]), "{s}");
    assert_eq!(auto_sessions(&node, &pod).len(), 1);
    rt.start(&app).expect("start");
    rt.start(&side).expect("start");
    rt.keep(b1);
    rt.keep(b2);

    // The pod's containers exit: the session stops, its events kept until the retention ends.
    assert!(
        wait_until(Duration::from_secs(15), || node.session(&sid).is_ok_and(|s| s["Running"] == false)),
        "stopped once the pod is gone: {}",
        node.log()
    );
    let events = node.events(&sid).expect("events");
    let first = events.iter().find(|e| e["pid"] == i64::from(init)).expect("an event of the init");
    assert_eq!(first["event"], "sched_process_exec", "the init's first event is its exec: {first}");
    assert!(events.iter().any(|e| e["container"] == "side"), "the second container is traced too");
    assert!(
        wait_until(Duration::from_secs(10), || node
            .call("GET", &format!("/v1/trace-session/{sid}"), None)
            .is_ok_and(|(status, _)| status == 404)),
        "removed after its retention time"
    );
    assert!(node.instances().is_empty());
    let _ = rt.delete(&app);
    let _ = rt.delete(&side);
}

#[test]
fn annotations_the_node_refuses_give_a_session_with_an_error_and_the_container_starts() {
    if !require(&["runc"]) {
        return;
    }
    let node = Node::start().expect("tracer-node");
    let rt = Runtime::new("runc").expect("runc");
    let pod = unique("auto-bad");
    // Grammar-valid (the webhook lets it through) but no such system call on this kernel.
    let wish = [(ann::TRACE_HOOK, "trace_syscalls"), (ann::TRACE_ARGUMENTS, "-s no_such_call_xyz")];
    let id = unique("ct-auto-bad");
    let b = Bundle::new(&["sleep", "30"], &annotated(&pod, "app", &wish), Bundle::hooks_for(&node)).expect("bundle");
    rt.create(&id, &b).expect("the container is created");
    rt.start(&id).expect("and starts");
    rt.keep(b);
    let sessions = auto_sessions(&node, &pod);
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let s = &sessions[0];
    assert_eq!(s["Running"], false, "{s}");
    let error = s["Error"][0].as_str().unwrap_or_default();
    assert!(error.contains("no_such_call_xyz"), "{s}");
    assert!(node.log().contains("auto-trace session not started"), "a log line");
    assert_eq!(node.container(&pod, "app").expect("pods").map(|c| c["Id"].clone()), Some(Value::from("app")));

    // Not even the grammar: refused the same way (no webhook checked it).
    let pod2 = unique("auto-worse");
    let id2 = unique("ct-auto-worse");
    let b = Bundle::new(
        &["sleep", "30"],
        &annotated(&pod2, "app", &[(ann::TRACE_HOOK, "trace_everything")]),
        Bundle::hooks_for(&node),
    )
    .expect("bundle");
    rt.create(&id2, &b).expect("created");
    rt.keep(b);
    let s = &auto_sessions(&node, &pod2)[0];
    assert!(s["Error"][0].as_str().is_some_and(|e| e.contains("trace_everything")), "{s}");
    rt.kill(&id).expect("kill");
    let _ = rt.delete(&id);
    let _ = rt.delete(&id2);
}

#[test]
fn auto_sessions_past_the_limit_are_refused_and_counted() {
    if !require(&["runc"]) {
        return;
    }
    let node = Node::start_with(&["--max-auto-sessions", "1"]).expect("tracer-node");
    let rt = Runtime::new("runc").expect("runc");
    let wish = [(ann::TRACE_HOOK, "trace_exec")];
    let mut ids = Vec::new();
    let pods: Vec<String> = (0..2).map(|_| unique("auto-limit")).collect();
    for pod in &pods {
        let id = unique("ct-auto-limit");
        let b = Bundle::new(&["sleep", "30"], &annotated(pod, "app", &wish), Bundle::hooks_for(&node)).expect("bundle");
        rt.create(&id, &b).expect("create");
        rt.keep(b);
        ids.push(id);
    }
    let first = &auto_sessions(&node, &pods[0])[0];
    assert_eq!(first["Running"], true, "{first}");
    let second = &auto_sessions(&node, &pods[1])[0];
    assert_eq!(second["Running"], false, "{second}");
    assert!(second["Error"][0].as_str().is_some_and(|e| e.contains("--max-auto-sessions")), "{second}");
    let text = e2e::agent()
        .get(&format!("{}/metrics", node.url))
        .call()
        .expect("metrics")
        .body_mut()
        .read_to_string()
        .expect("text");
    assert!(text.contains("container_tracer_auto_trace_sessions_total{result=\"refused\"} 1"), "{text}");
    assert!(text.contains("container_tracer_auto_trace_sessions_total{result=\"started\"} 1"), "{text}");
    for id in ids {
        let _ = rt.delete(&id);
    }
}
