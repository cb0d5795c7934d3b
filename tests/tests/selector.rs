//! `pod-selector`: a session selects pods by the labels the admission webhook stamped, as
//! `kubectl -l` does, and traces exactly their containers.

use std::collections::{BTreeMap, HashSet};

use e2e::{
    require,
    standin::{register, StandIn},
    unique, Node,
};
use serde_json::json;

#[test]
fn a_session_with_a_pod_selector_traces_exactly_the_matching_pods_containers() {
    if !require(&["unshare"]) {
        return;
    }
    let node = Node::start().expect("tracer-node");
    let prefix = unique("sel");
    let pods = [
        ("web-a", r#"{"app":"web","tier":"front"}"#, true),
        ("web-b", r#"{"app":"web"}"#, true),
        ("web-db", r#"{"app":"web","tier":"db"}"#, false),
        ("api", r#"{"app":"api"}"#, false),
        ("unstamped", "", false),
    ];
    let mut standins = Vec::new();
    for (name, labels, _) in &pods {
        let pod = format!("{prefix}-{name}");
        let st = StandIn::start(&pod).expect("stand-in");
        let mut annotations = BTreeMap::new();
        if !labels.is_empty() {
            annotations.insert("container-tracer.io/labels".to_owned(), (*labels).to_owned());
        }
        register(&node, &st.created_with(&pod, "shop", annotations)).expect("register");
        standins.push(st);
    }
    let sid = node
        .create_session(&json!({"pod-selector": "app=web,tier!=db", "container": "*", "trace-hook": "trace_exec"}))
        .expect("session");
    let s = node.session(&sid).expect("session");
    let mut got: Vec<String> = s["Containers"].as_object().expect("containers").keys().cloned().collect();
    got.sort();
    let want: Vec<String> = pods.iter().filter(|p| p.2).map(|p| format!("{prefix}-{}", p.0)).collect();
    assert_eq!(got, want, "{s}");

    // Running, its filter holds exactly those inits.
    node.run_session(&sid, true).expect("start");
    let s = node.session(&sid).expect("session");
    let instance = s["Output"][0].as_str().and_then(|o| o.strip_prefix("ftrace instance ")).expect("instance");
    let filter =
        std::fs::read_to_string(format!("/sys/kernel/tracing/instances/{instance}/set_event_pid")).expect("pids");
    let filtered: HashSet<u32> = filter.split_whitespace().filter_map(|t| t.parse().ok()).collect();
    let expected: HashSet<u32> = standins.iter().zip(&pods).filter(|(_, p)| p.2).map(|(st, _)| st.pid).collect();
    assert_eq!(filtered, expected);

    // A later pod that matches joins; a bad selector is a 400.
    let late = StandIn::start(&format!("{prefix}-web-c")).expect("stand-in");
    let labels = BTreeMap::from([("container-tracer.io/labels".to_owned(), r#"{"app":"web"}"#.to_owned())]);
    register(&node, &late.created_with(&format!("{prefix}-web-c"), "shop", labels)).expect("register");
    let s = node.session(&sid).expect("session");
    assert!(s["Containers"].get(format!("{prefix}-web-c")).is_some(), "{s}");
    let (status, v) = node
        .call(
            "POST",
            "/v1/trace-session",
            Some(&json!({"pod-selector": "app=we b", "container": "*", "trace-hook": "trace_exec"}).to_string()),
        )
        .expect("post");
    assert_eq!(status, 400, "{v}");
    assert!(v["Error"].as_str().is_some_and(|e| e.contains("pod-selector")), "{v}");
    let (status, _) = node.call("DELETE", &format!("/v1/trace-session/{sid}"), None).expect("delete");
    assert_eq!(status, 200);
}
