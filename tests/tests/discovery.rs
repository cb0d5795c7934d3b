//! tracer-svc finds the nodes by watching the tracer-node Service's EndpointSlices, against a
//! stand-in API server speaking the real list/watch protocol, reached through a kubeconfig:
//! nodes added, made not-ready and removed by watch events are used without a restart; a
//! broken watch resumes from its version without a re-list; an expired one re-lists.

use std::{collections::BTreeSet, time::Duration};

use e2e::{kube::KubeStandIn, require, svc::Svc, unique, wait_until, Node};
use serde_json::{json, Value};

const NAMESPACE: &str = "tracing";

fn slice(name: &str, service: &str, node: &Node, node_name: &str, ready: bool) -> Value {
    json!({
        "metadata": {"name": name, "namespace": NAMESPACE,
                     "labels": {"kubernetes.io/service-name": service, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4",
        "ports": [{"name": "metrics", "port": 1, "protocol": "TCP"}, {"name": "api", "port": node.port(), "protocol": "TCP"}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": ready}, "nodeName": node_name,
                       "targetRef": {"kind": "Pod", "name": format!("tracer-node-{node_name}"), "namespace": NAMESPACE}}]
    })
}

/// The nodes tracer-svc uses now: a session made on every node it knows (wait-for-containers)
/// lists them; it is deleted again.
fn nodes_used(svc: &Svc, tag: &str) -> BTreeSet<String> {
    let Ok((id, info)) = svc
        .create(&json!({"pod": format!("{tag}-none"), "container": "*", "trace-hook": "trace_exec",
                                            "wait-for-containers": true}))
    else {
        return BTreeSet::new();
    };
    let del = svc.call("DELETE", &format!("/v1/trace-session/{id}"), None);
    assert_eq!(del.status, 200, "{del:?}");
    info["Nodes"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

fn lists(standin: &KubeStandIn) -> usize {
    standin
        .gets()
        .iter()
        .filter(|g| g["path"].as_str().is_some_and(|p| p.ends_with("/endpointslices")) && g["query"]["watch"].is_null())
        .count()
}

#[test]
fn nodes_join_turn_unready_and_leave_as_the_endpoint_slice_watch_reports_them() {
    if !require(&["python3"]) {
        return;
    }
    let tag = unique("disc");
    let names = [format!("{tag}-a"), format!("{tag}-b"), format!("{tag}-c")];
    let nodes: Vec<Node> = names.iter().map(|n| Node::start_with(&["--node-name", n]).expect("tracer-node")).collect();
    let dir = tempfile::Builder::new().prefix("ct-disc-").tempdir().expect("dir");
    let standin = KubeStandIn::start(dir.path(), &json!({"tokens": {}, "rules": []}));
    let service = "container-tracer-backend";
    standin.endpoint_slice("ADDED", &slice("backend-a", service, &nodes[0], &names[0], true));
    standin.endpoint_slice("ADDED", &slice("backend-b", service, &nodes[1], &names[1], true));
    // Another Service's slice in the namespace is not ours.
    standin.endpoint_slice("ADDED", &slice("other-c", "something-else", &nodes[2], &names[2], true));

    let kubeconfig = standin.kubeconfig_in(dir.path(), Some(NAMESPACE));
    let svc =
        Svc::spawn(&["--node-timeout".into(), "2000".into()], &[("KUBECONFIG", kubeconfig.to_str().expect("path"))])
            .expect("tracer-svc");
    let ready = svc.call("GET", "/readyz", None);
    assert_eq!((ready.status, &ready.body["Nodes"]), (200, &json!(2)), "ready once listed: {ready:?}");
    let set = |v: &[&String]| v.iter().map(|s| (*s).clone()).collect::<BTreeSet<String>>();
    let wait_for = |want: BTreeSet<String>, what: &str| {
        let mut last = BTreeSet::new();
        let ok = wait_until(Duration::from_secs(15), || {
            last = nodes_used(&svc, &tag);
            last == want
        });
        assert!(ok, "{what}: tracer-svc uses {last:?}, not {want:?}\n{}", svc.log_text());
    };
    wait_for(set(&[&names[0], &names[1]]), "the initial list");

    // A node turning not-ready is left out; a new one is used.
    standin.endpoint_slice("MODIFIED", &slice("backend-b", service, &nodes[1], &names[1], false));
    wait_for(set(&[&names[0]]), "b not ready");
    standin.endpoint_slice("ADDED", &slice("backend-c", service, &nodes[2], &names[2], true));
    wait_for(set(&[&names[0], &names[2]]), "c added");
    assert_eq!(lists(&standin), 1, "watch events, not re-lists: {:?}", standin.gets());

    // A dropped watch resumes from its version: no re-list, and what happened meanwhile arrives.
    standin.break_watches();
    standin.endpoint_slice("MODIFIED", &slice("backend-b", service, &nodes[1], &names[1], true));
    wait_for(set(&[&names[0], &names[1], &names[2]]), "b ready again after a broken watch");
    assert_eq!(lists(&standin), 1, "resumed without a re-list: {:?}", standin.gets());

    // An expired version forces a re-list; the nodes are used meanwhile, and a deletion lands.
    standin.expire();
    standin.endpoint_slice("DELETED", &slice("backend-a", service, &nodes[0], &names[0], true));
    wait_for(set(&[&names[1], &names[2]]), "a deleted after an expired watch");
    assert!(lists(&standin) >= 2, "re-listed after 410: {:?}", standin.gets());
    // A node that left takes its counters with it; the others keep theirs.
    let metrics = e2e::get_text(&format!("{}/metrics", svc.url));
    let calls = |name: &str| {
        metrics.lines().any(|l| l.starts_with("container_tracer_svc_node_requests_total") && l.contains(name))
    };
    assert!(!calls(&names[0]) && calls(&names[1]), "{metrics}");
    assert!(metrics.contains("container_tracer_svc_discovery_synced 1"), "{metrics}");
    let watches = standin.gets().iter().filter(|g| g["query"]["watch"] == "true").count();
    assert!(watches <= 12, "watches, not a poll loop: {watches}");
    for g in standin.gets() {
        assert_eq!(g["query"]["labelSelector"], json!(format!("kubernetes.io/service-name={service}")), "{g}");
        assert_eq!(g["auth"], json!("Bearer node-sa-token"), "the kubeconfig's credentials: {g}");
    }
}
