//! The API behind bearer tokens, with a real daemon and a real HTTP client: 401s, open health
//! endpoints, and a token file rotated while the daemon runs.

use std::time::Duration;

use e2e::{
    agent,
    kube::{get_as, KubeStandIn},
    require, wait_until, Node,
};

fn status(node: &Node, path: &str, token: Option<&str>) -> u16 {
    let mut req = agent().get(&format!("{}{path}", node.url));
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    req.call().expect("request").status().as_u16()
}

#[test]
fn a_token_file_guards_the_api_and_a_rotation_takes_effect_while_running() {
    if !require(&[]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "first-token\n").expect("tokens");
    let node = Node::start_with(&["--auth-token-file", tokens.to_str().expect("utf8")]).expect("tracer-node");
    assert_eq!(status(&node, "/v1/pods", None), 401);
    assert_eq!(status(&node, "/v1/pods", Some("guess")), 401);
    assert_eq!(status(&node, "/v1/pods", Some("first-token")), 200);
    for open in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(status(&node, open, None), 200, "{open}");
    }
    // Rotated as a Secret volume does: written aside, renamed over.
    std::fs::write(dir.path().join("next"), "second-token\n").expect("next");
    std::fs::rename(dir.path().join("next"), &tokens).expect("rotate");
    assert!(
        wait_until(Duration::from_secs(10), || status(&node, "/v1/pods", Some("second-token")) == 200),
        "the new token works without a restart"
    );
    assert_eq!(status(&node, "/v1/pods", Some("first-token")), 401, "the old one no longer does");
    assert!(!node.log().contains("first-token") && !node.log().contains("second-token"), "tokens are never logged");
}

/// GET `path` over TLS trusting `cas` with a bearer token: the status and the leaf certificate.
fn https_get(port: u16, cas: &[&std::path::Path], path: &str, token: &str) -> (u16, Vec<u8>) {
    let a = e2e::https::https(port, cas, "GET", path, &[("Authorization", &format!("Bearer {token}"))], b"");
    (a.status, a.leaf)
}

#[test]
fn the_api_over_tls_serves_a_renewed_certificate_without_a_restart() {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    if !require(&["openssl"]) {
        return;
    }
    let (a, b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let (ca1, cert1, key1) = e2e::test_certificates(a.path()).expect("certificates");
    let (ca2, cert2, key2) = e2e::test_certificates(b.path()).expect("certificates");
    let live = a.path().join("live");
    std::fs::create_dir(&live).expect("dir");
    let (cert, key) = (live.join("tls.crt"), live.join("tls.key"));
    std::fs::copy(&cert1, &cert).expect("cert");
    std::fs::copy(&key1, &key).expect("key");
    let tokens = a.path().join("tokens");
    std::fs::write(&tokens, "tls-token\n").expect("tokens");
    let path = |p: &std::path::Path| p.to_str().expect("utf8").to_owned();
    let node =
        Node::start_with(&["--tls-cert", &path(&cert), "--tls-key", &path(&key), "--auth-token-file", &path(&tokens)])
            .expect("tracer-node over TLS");
    let port = node.port();
    let der = |p: &std::path::Path| CertificateDer::from_pem_file(p).expect("cert").to_vec();
    let (status, leaf) = https_get(port, &[&ca1], "/v1/pods", "tls-token");
    assert_eq!((status, &leaf), (200, &der(&cert1)), "the API over TLS, with the first certificate");
    assert_eq!(https_get(port, &[&ca1], "/v1/pods", "wrong").0, 401);
    assert!(
        agent().get(&format!("http://127.0.0.1:{port}/healthz")).call().is_err(),
        "plain HTTP gets no answer from the TLS port"
    );
    // A renewal (written aside and renamed over, key first then certificate).
    std::fs::copy(&key2, live.join("k.new")).expect("key");
    std::fs::copy(&cert2, live.join("c.new")).expect("cert");
    std::fs::rename(live.join("k.new"), &key).expect("rotate key");
    std::fs::rename(live.join("c.new"), &cert).expect("rotate cert");
    assert!(
        wait_until(Duration::from_secs(10), || https_get(port, &[&ca1, &ca2], "/healthz", "").1 == der(&cert2)),
        "the renewed certificate is served without a restart"
    );
    assert_eq!(https_get(port, &[&ca2], "/v1/pods", "tls-token").0, 200);
}

/// `--auth-kubernetes`: tokens reviewed by the API server, each request authorized with the
/// namespace of its pods or session, so a RoleBinding confines a user to one namespace.
#[test]
fn kubernetes_rbac_confines_a_namespace_user_to_its_namespace() {
    use serde_json::json;
    if !require(&["runc", "python3"]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let all = ["pods", "trace-hooks", "trace-sessions", "trace-sessions/events"];
    let policy = json!({
        "tokens": {
            "admin-token": {"username": "admin", "uid": "u-admin", "groups": ["system:masters"]},
            "alice-token": {"username": "alice", "uid": "u-alice", "groups": ["team-a"]},
            "bob-token": {"username": "bob", "uid": "u-bob", "groups": []},
        },
        "rules": [
            {"user": "admin", "verbs": ["*"], "resources": ["*"], "namespace": "*"},
            {"user": "admin", "verbs": ["get"], "paths": ["/metrics"], "namespace": "*"},
            {"user": "alice", "verbs": ["get", "list", "create", "update", "delete"], "resources": all, "namespace": "team-a"},
        ],
    });
    let standin = KubeStandIn::start(dir.path(), &policy);
    let kubeconfig = standin.kubeconfig(dir.path());
    let node = Node::start_with_env(
        &["--auth-kubernetes", "--auth-metrics"],
        &[("KUBECONFIG", kubeconfig.to_str().expect("utf8"))],
    )
    .expect("tracer-node");
    let rt = e2e::Runtime::new("runc").expect("runc");
    let prefix = e2e::unique("rbac");
    let mut ids = Vec::new();
    for ns in ["team-a", "team-b"] {
        let id = e2e::unique("ct-rbac");
        let bundle = e2e::Bundle::new(
            &["sleep", "30"],
            &e2e::containerd_annotations(&format!("{prefix}-{ns}"), ns, "app"),
            e2e::Bundle::hooks_for(&node),
        )
        .expect("bundle");
        rt.create(&id, &bundle).expect("create");
        rt.start(&id).expect("start");
        rt.keep(bundle);
        ids.push(id);
    }
    let (pod_a, pod_b) = (format!("{prefix}-team-a"), format!("{prefix}-team-b"));

    // Who: a bad token is a 401, a user without any grant a 403 naming what it lacks.
    assert_eq!(get_as(&node, "GET", "/v1/pods", "forged", None).0, 401);
    let (status, v) = get_as(&node, "GET", "/v1/pods", "bob-token", None);
    assert_eq!(status, 403, "{v}");
    assert!(v["Error"].as_str().is_some_and(|e| e.contains("bob may not list pods.container-tracer.io")), "{v}");
    // What: the admin sees both pods, alice her namespace's only.
    let (status, pods) = get_as(&node, "GET", "/v1/pods", "admin-token", None);
    assert_eq!(status, 200);
    assert!(pods.get(&pod_a).is_some() && pods.get(&pod_b).is_some(), "{pods}");
    let (status, pods) = get_as(&node, "GET", "/v1/pods", "alice-token", None);
    assert_eq!(status, 200);
    assert!(pods.get(&pod_a).is_some() && pods.get(&pod_b).is_none(), "alice sees team-a only: {pods}");

    // Sessions: alice may trace her namespace, named in the pattern, and nothing wider.
    let body = |pod: &str| json!({"pod": pod, "container": "*", "trace-hook": "trace_exec"}).to_string();
    let (status, v) =
        get_as(&node, "POST", "/v1/trace-session", "alice-token", Some(&body(&format!("team-a/{prefix}-*"))));
    assert_eq!(status, 200, "{v}");
    let alice_sid = v.as_object().and_then(|o| o.keys().next().cloned()).expect("id");
    for wide in [format!("{prefix}-*"), "*".into(), format!("team-b/{prefix}-*"), format!("team-*/{prefix}-*")] {
        let (status, v) = get_as(&node, "POST", "/v1/trace-session", "alice-token", Some(&body(&wide)));
        assert_eq!(status, 403, "{wide}: {v}");
    }
    let (status, v) = get_as(&node, "POST", "/v1/trace-session", "admin-token", Some(&body(&format!("{prefix}-*"))));
    assert_eq!(status, 200, "{v}");
    let admin_sid = v.as_object().and_then(|o| o.keys().next().cloned()).expect("id");
    let (_, all) = get_as(&node, "GET", "/v1/trace-session/all", "alice-token", None);
    assert_eq!(all.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()), Some(vec![alice_sid.clone()]), "{all}");
    let (_, all) = get_as(&node, "GET", "/v1/trace-session/all", "admin-token", None);
    assert_eq!(all.as_object().map(|o| o.len()), Some(2), "{all}");
    for path in [format!("/v1/trace-session/{admin_sid}"), format!("/v1/trace-session/{admin_sid}/events")] {
        assert_eq!(get_as(&node, "GET", &path, "alice-token", None).0, 403, "{path}");
    }
    let run = json!({"Run": true}).to_string();
    assert_eq!(get_as(&node, "PUT", &format!("/v1/trace-session/{admin_sid}"), "alice-token", Some(&run)).0, 403);
    assert_eq!(get_as(&node, "PUT", &format!("/v1/trace-session/{alice_sid}"), "alice-token", Some(&run)).0, 200);
    assert_eq!(get_as(&node, "GET", &format!("/v1/trace-session/{alice_sid}/events"), "alice-token", None).0, 200);
    assert_eq!(get_as(&node, "GET", &format!("/v1/trace-session/{alice_sid}/stats"), "alice-token", None).0, 200);
    assert_eq!(get_as(&node, "DELETE", "/v1/trace-session/all", "alice-token", None).0, 403);
    assert_eq!(get_as(&node, "DELETE", &format!("/v1/trace-session/{alice_sid}"), "alice-token", None).0, 200);
    assert_eq!(get_as(&node, "GET", "/metrics", "alice-token", None).0, 403, "--auth-metrics: a path check");
    assert_eq!(get_as(&node, "GET", "/metrics", "admin-token", None).0, 200);
    assert_eq!(get_as(&node, "GET", "/healthz", "", None).0, 200, "health stays open");

    // Cached: twenty more requests of alice ask the API server nothing new.
    let (reviews, accesses) = (standin.asked("tokenreviews"), standin.asked("subjectaccessreviews"));
    let started = std::time::Instant::now();
    for _ in 0..20 {
        assert_eq!(get_as(&node, "GET", "/v1/pods", "alice-token", None).0, 200);
    }
    let per_request = started.elapsed() / 20;
    assert_eq!((standin.asked("tokenreviews"), standin.asked("subjectaccessreviews")), (reviews, accesses));
    println!("cached /v1/pods as a namespace user: {per_request:?} per request");
    assert_eq!(get_as(&node, "DELETE", "/v1/trace-session/all", "admin-token", None).0, 200);
    for id in ids {
        let _ = rt.delete(&id);
    }
}
