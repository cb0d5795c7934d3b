//! tracer-node refuses to start, with a clear message, when it cannot work.

use std::process::Command;

use e2e::{binary, require};

#[test]
fn without_cap_sys_admin_tracer_node_refuses_to_start_and_names_it() {
    if !require(&["setpriv"]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new("setpriv")
        .args(["--bounding-set", "-sys_admin", "--inh-caps", "-sys_admin", "--"])
        .arg(binary("tracer-node"))
        .args(["--address", "127.0.0.1:0"])
        .arg("--registry-socket")
        .arg(dir.path().join("s.sock"))
        .arg("--spool-dir")
        .arg(dir.path().join("spool"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .expect("run tracer-node");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must not start: {stderr}");
    assert!(stderr.contains("CAP_SYS_ADMIN") && stderr.contains("missing capabilities"), "{stderr}");
    assert!(!dir.path().join("s.sock").exists(), "nothing is bound before the check");
}

#[test]
fn bad_configuration_exits_64_before_binding_anything() {
    let dir = tempfile::tempdir().expect("tempdir");
    for args in [
        vec!["--state-dir", "relative/state"],
        vec!["--address", "not-an-address"],
        vec!["--procfs-path", "/nonexistent-proc"],
        // Other hosts may reach it: an auth mode or an explicit opt-out is required.
        vec!["--address", "0.0.0.0:0"],
        vec!["--auth-token-file", "/nonexistent/tokens"],
        vec!["--auth-token-file", "/etc/hostname-tokens", "--insecure-no-auth"],
    ] {
        let out = Command::new(binary("tracer-node"))
            .args(&args)
            .arg("--registry-socket")
            .arg(dir.path().join("s.sock"))
            .output()
            .expect("run tracer-node");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(!stderr.is_empty() && !stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!dir.path().join("s.sock").exists());
        if args[1] == "0.0.0.0:0" {
            assert!(stderr.contains("--auth-token-file") && stderr.contains("--insecure-no-auth"), "{stderr}");
        }
    }
}

/// A second daemon given the first one's socket used to unlink and re-bind it before failing
/// on its busy port, leaving the first serving REST while hook events went nowhere.
#[test]
fn a_second_daemon_on_the_same_socket_refuses_to_start_and_leaves_the_first_alone() {
    use std::os::unix::fs::MetadataExt;
    if !require(&[]) {
        return;
    }
    let node = e2e::Node::start().expect("first tracer-node");
    let before = std::fs::metadata(node.socket()).expect("socket").ino();
    let other = tempfile::tempdir().expect("tempdir");
    for state_dir in [other.path().join("state"), node.dir.path().join("state")] {
        let out = Command::new(binary("tracer-node"))
            .args(["--address", "127.0.0.1:0"])
            .arg("--registry-socket")
            .arg(node.socket())
            .arg("--spool-dir")
            .arg(other.path().join("spool"))
            .arg("--state-dir")
            .arg(&state_dir)
            .args(["--instance-prefix", &node.prefix])
            .output()
            .expect("run a second tracer-node");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "a second daemon must not start: {stderr}");
        assert!(stderr.contains("another tracer-node is running"), "{stderr}");
    }
    assert_eq!(std::fs::metadata(node.socket()).expect("socket still there").ino(), before, "socket replaced");
    std::os::unix::net::UnixStream::connect(node.socket()).expect("the first daemon still takes hook events");
    assert_eq!(node.pods().expect("pods"), serde_json::json!({}));
}
