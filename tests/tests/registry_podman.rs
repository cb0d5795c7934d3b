//! The CRI-O style path: podman with the `hooks.d` files shipped in `deploy/hooks.d`, which fire
//! only for containers carrying a Kubernetes pod annotation.

use std::time::Duration;

use e2e::{require, unique, wait_until, Node, Podman};

#[test]
fn podman_hooks_d_registers_annotated_containers_only() {
    if !require(&["podman", "conmon"]) {
        return;
    }
    let node = Node::start().expect("tracer-node");
    let podman = Podman::new(&node).expect("podman setup");
    let pod = unique("crio-pod");
    let annotated = podman
        .run_detached(
            &unique("annotated"),
            &[
                ("io.kubernetes.pod.name", &pod),
                ("io.kubernetes.pod.namespace", "team-a"),
                ("io.kubernetes.container.name", "web"),
            ],
            &["sleep", "300"],
        )
        .expect("podman run annotated");
    let c = node
        .container(&pod, "web")
        .expect("pods")
        .unwrap_or_else(|| panic!("annotated container not registered:\n{}", node.log()));
    assert_eq!(c["Namespace"], "team-a");
    assert_eq!(c["ContainerId"], annotated.as_str());
    assert!(c["Tasks"][0].as_u64().is_some_and(|p| p > 1), "{c}");

    let plain = podman.run_detached(&unique("plain"), &[], &["sleep", "300"]).expect("podman run plain");
    let ids = node.container_ids().expect("pods");
    assert!(!ids.contains(&plain), "a container without the annotation must not be registered: {ids:?}");
    assert_eq!(ids, vec![annotated.clone()]);

    podman.cmd(&["rm", "--force", "--time", "0", &annotated]).expect("podman rm");
    assert!(
        wait_until(Duration::from_secs(10), || node.container(&pod, "web").expect("pods").is_none()),
        "still listed after podman rm:\n{}",
        node.log()
    );
}
