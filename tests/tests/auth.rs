//! The API behind bearer tokens, with a real daemon and a real HTTP client: 401s, open health
//! endpoints, and a token file rotated while the daemon runs.

use std::time::Duration;

use e2e::{agent, require, wait_until, Node};

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
