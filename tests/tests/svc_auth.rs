//! tracer-svc's callers are authenticated and authorized as the node API's are
//! (`--auth-kubernetes`, against the stand-in API server): a namespace-scoped user sees and
//! traces only its namespaces, across every node. tracer-svc calls the nodes with its own
//! token (`--node-token-file`); the nodes accept only that one, so a caller's token that
//! reached them would be refused.

use std::collections::BTreeSet;

use e2e::{
    kube::KubeStandIn,
    require,
    standin::{register, StandIn},
    svc::Svc,
    unique, Node,
};
use serde_json::json;

#[test]
fn a_namespace_scoped_caller_sees_and_traces_only_its_namespaces_on_every_node() {
    if !require(&["unshare", "python3"]) {
        return;
    }
    let dir = tempfile::Builder::new().prefix("ct-svcauth-").tempdir().expect("dir");
    let node_tokens = dir.path().join("node-tokens");
    std::fs::write(&node_tokens, "svc-node-token\n").expect("tokens");
    let svc_token = dir.path().join("svc-token");
    std::fs::write(&svc_token, "svc-node-token\n").expect("token");
    let tag = unique("sa");
    let nodes: Vec<Node> = ["a", "b"]
        .iter()
        .map(|n| {
            Node::start_with(&[
                "--node-name",
                &format!("{tag}-{n}"),
                "--auth-token-file",
                node_tokens.to_str().expect("p"),
            ])
            .expect("tracer-node")
        })
        .collect();
    // On each node a pod of team-a and one of team-b.
    let mut standins = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        for ns in ["team-a", "team-b"] {
            let pod = format!("{tag}-{ns}-{i}");
            let st = StandIn::start(&pod).expect("stand-in");
            register(n, &st.created(&pod, ns)).expect("register");
            standins.push(st);
        }
    }
    let all = ["pods", "trace-hooks", "trace-sessions", "trace-sessions/events"];
    let policy = json!({
        "tokens": {
            "admin-token": {"username": "admin", "uid": "u-admin", "groups": []},
            "alice-token": {"username": "alice", "uid": "u-alice", "groups": []},
        },
        "rules": [
            {"user": "admin", "verbs": ["*"], "resources": ["*"], "namespace": "*"},
            {"user": "alice", "verbs": ["get", "list", "create", "update", "delete"], "resources": all, "namespace": "team-a"},
        ],
    });
    let standin = KubeStandIn::start(dir.path(), &policy);
    let kubeconfig = standin.kubeconfig(dir.path());
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let svc = Svc::spawn(
        &[
            "--nodes".into(),
            urls.join(","),
            "--auth-kubernetes".into(),
            "--node-token-file".into(),
            svc_token.to_str().expect("p").into(),
        ],
        &[("KUBECONFIG", kubeconfig.to_str().expect("p"))],
    )
    .expect("tracer-svc");

    let anonymous = svc.call("GET", "/v1/pods", None);
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    assert_eq!(svc.call_as(Some("nobody"), "GET", "/v1/pods", None).status, 401);

    let mine = |p: &serde_json::Value| -> BTreeSet<String> {
        p.as_object().map(|o| o.keys().filter(|k| k.starts_with(&tag)).cloned().collect()).unwrap_or_default()
    };
    let admin = svc.call_as(Some("admin-token"), "GET", "/v1/pods", None);
    assert_eq!((admin.status, mine(&admin.body).len()), (200, 4), "{admin:?}");
    let alice = svc.call_as(Some("alice-token"), "GET", "/v1/pods", None);
    assert_eq!(alice.status, 200, "{alice:?}");
    assert_eq!(mine(&alice.body), BTreeSet::from([format!("{tag}-team-a-0"), format!("{tag}-team-a-1")]));

    // Alice may trace team-a, on both nodes, and not team-b or everything.
    let body = |pod: &str| json!({"pod": pod, "container": "*", "trace-hook": "trace_exec"}).to_string();
    let refused = svc.call_as(Some("alice-token"), "POST", "/v1/trace-session", Some(&body("team-b/*")));
    assert_eq!(refused.status, 403, "{refused:?}");
    assert!(refused.body["Error"].as_str().is_some_and(|e| e.contains("team-b")), "{refused:?}");
    assert_eq!(svc.call_as(Some("alice-token"), "POST", "/v1/trace-session", Some(&body("*"))).status, 403);
    let made = svc.call_as(Some("alice-token"), "POST", "/v1/trace-session", Some(&body(&format!("team-a/{tag}-*"))));
    assert_eq!(made.status, 200, "{made:?}");
    let sid = made.body.as_object().and_then(|o| o.keys().next().cloned()).expect("id");
    assert_eq!(made.body[&sid]["Nodes"].as_array().map(Vec::len), Some(2), "{made:?}");
    assert_eq!(made.body[&sid]["Namespace"], json!("team-a"));

    // A cluster-wide session of the admin is not alice's to see or delete.
    let wide = svc.call_as(Some("admin-token"), "POST", "/v1/trace-session", Some(&body(&format!("{tag}-*"))));
    assert_eq!(wide.status, 200, "{wide:?}");
    let wid = wide.body.as_object().and_then(|o| o.keys().next().cloned()).expect("id");
    let listed = svc.call_as(Some("alice-token"), "GET", "/v1/trace-session/all", None);
    let ids: BTreeSet<String> = listed.body.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
    assert!(ids.contains(&sid) && !ids.contains(&wid), "{listed:?}");
    assert_eq!(svc.call_as(Some("alice-token"), "GET", &format!("/v1/trace-session/{wid}"), None).status, 403);
    assert_eq!(svc.call_as(Some("alice-token"), "DELETE", &format!("/v1/trace-session/{wid}"), None).status, 403);
    assert_eq!(svc.call_as(Some("alice-token"), "DELETE", "/v1/trace-session/all", None).status, 403);
    let own = svc.call_as(Some("alice-token"), "DELETE", &format!("/v1/trace-session/{sid}"), None);
    assert_eq!((own.status, own.missing.len()), (200, 0), "{own:?}");
    let all = svc.call_as(Some("admin-token"), "DELETE", "/v1/trace-session/all", None);
    assert_eq!(all.status, 200, "{all:?}");

    // The nodes were called with tracer-svc's token only: the caller's is refused there.
    let direct = e2e::kube::get_as(&nodes[0], "GET", "/v1/pods", "alice-token", None);
    assert_eq!(direct.0, 401);
    drop(standins);
}

/// Nodes over TLS: tracer-svc trusts only `--node-ca-file` for them and checks the name they
/// share (`--node-tls-server-name`, the headless Service's), whatever address it dials.
#[test]
fn node_certificates_are_verified_against_the_node_ca_and_the_shared_name() {
    if !require(&["openssl"]) {
        return;
    }
    let dir = tempfile::Builder::new().prefix("ct-svctls-").tempdir().expect("dir");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/tracer-certs.sh");
    let made = std::process::Command::new(script).arg(dir.path()).output().expect("tracer-certs.sh");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let file = |n: &str| dir.path().join(n).to_str().expect("path").to_owned();
    let node =
        Node::start_with(&["--tls-cert", &file("node.crt"), "--tls-key", &file("node.key")]).expect("tracer-node");
    let url = format!("https://127.0.0.1:{}", node.port());
    let name = "container-tracer-backend.container-tracer.svc";

    let good = Svc::start(&[&url], &["--node-ca-file", &file("ca.crt"), "--node-tls-server-name", name]).expect("svc");
    let a = good.call("GET", "/v1/pods", None);
    assert_eq!((a.status, a.missing.len()), (200, 0), "{a:?}");

    // The certificate is not for 127.0.0.1: without the shared name the node is refused.
    let no_name = Svc::start(&[&url], &["--node-ca-file", &file("ca.crt")]).expect("svc");
    let a = no_name.call("GET", "/v1/pods", None);
    assert_eq!(a.status, 502, "{a:?}");
    assert_eq!(a.missing, vec![format!("127.0.0.1:{}", node.port())]);
    assert!(a.body["Error"].as_str().is_some_and(|e| e.contains("certificate")), "{a:?}");

    // Another CA's certificate is not trusted, even with the right name.
    let other = tempfile::Builder::new().prefix("ct-svctls-").tempdir().expect("dir");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/tracer-certs.sh");
    assert!(std::process::Command::new(script).arg(other.path()).output().expect("certs").status.success());
    let other_ca = other.path().join("ca.crt");
    let wrong = Svc::start(&[&url], &["--node-ca-file", other_ca.to_str().expect("p"), "--node-tls-server-name", name])
        .expect("svc");
    let a = wrong.call("GET", "/v1/pods", None);
    assert_eq!(a.status, 502, "{a:?}");
    assert!(a.body["Error"].as_str().is_some_and(|e| e.contains("certificate")), "{a:?}");
}
