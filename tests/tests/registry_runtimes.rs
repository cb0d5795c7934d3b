//! The runtime hook registers containers with tracer-node at creation and removes them at
//! poststop, with real runc and crun containers.

use std::time::Duration;

use e2e::{containerd_annotations, require, unique, wait_until, Bundle, Node, Runtime};

fn registers_at_create_and_unregisters_at_delete(runtime: &'static str) {
    if !require(&[runtime]) {
        return;
    }
    let node = Node::start().expect("tracer-node");
    let rt = Runtime::new(runtime).expect("runtime");
    let id = unique(&format!("ct-{runtime}"));
    let pod = unique("web");
    let bundle =
        Bundle::new(&["sleep", "300"], &containerd_annotations(&pod, "shop", "nginx"), Bundle::hooks_for(&node))
            .expect("bundle");

    rt.create(&id, &bundle).expect("create");
    // No waiting: registration is synchronous, so the container is listed when create returns.
    let c = node
        .container(&pod, "nginx")
        .expect("GET /v1/pods")
        .unwrap_or_else(|| panic!("not registered:\n{}", node.log()));
    let pid = rt.pid(&id).expect("state pid");
    assert_eq!(c["Id"], "nginx");
    assert_eq!(c["Pod"], pod.as_str());
    assert_eq!(c["Namespace"], "shop");
    assert_eq!(c["ContainerId"], id.as_str());
    assert_eq!(c["Runtime"], runtime);
    assert_eq!(c["Tasks"][0].as_u64(), Some(u64::from(pid)), "init first: {c}");
    assert_eq!(c["Parent"].as_array().map(Vec::len), Some(1), "{c}");

    rt.start(&id).expect("start");
    // The container's own processes: a child started inside it shows up in Tasks.
    let c = node.container(&pod, "nginx").expect("pods").expect("still listed");
    assert_eq!(c["Tasks"][0].as_u64(), Some(u64::from(pid)));

    rt.delete(&id).expect("delete");
    assert!(
        wait_until(Duration::from_secs(5), || node.container(&pod, "nginx").expect("pods").is_none()),
        "still listed after delete:\n{}",
        node.log()
    );
}

#[test]
fn runc_container_is_registered_at_create_and_removed_at_delete() {
    registers_at_create_and_unregisters_at_delete("runc");
}

#[test]
fn crun_container_is_registered_at_create_and_removed_at_delete() {
    registers_at_create_and_unregisters_at_delete("crun");
}

#[test]
fn every_process_of_the_container_is_listed_in_tasks() {
    if !require(&["runc"]) {
        return;
    }
    let node = Node::start().expect("tracer-node");
    let rt = Runtime::new("runc").expect("runtime");
    let id = unique("ct-tasks");
    let pod = unique("tasks");
    // The init forks two long-lived children.
    let bundle = Bundle::new(
        &["sh", "-c", "sleep 300 & sleep 300 & exec sleep 300"],
        &containerd_annotations(&pod, "ns", "multi"),
        Bundle::hooks_for(&node),
    )
    .expect("bundle");
    rt.create(&id, &bundle).expect("create");
    rt.start(&id).expect("start");
    let pid = rt.pid(&id).expect("pid");
    assert!(
        wait_until(Duration::from_secs(5), || {
            node.container(&pod, "multi")
                .expect("pods")
                .is_some_and(|c| c["Tasks"].as_array().is_some_and(|t| t.len() == 3))
        }),
        "expected init + 2 children: {:?}",
        node.container(&pod, "multi")
    );
    let c = node.container(&pod, "multi").expect("pods").expect("listed");
    assert_eq!(c["Tasks"][0].as_u64(), Some(u64::from(pid)));
    rt.delete(&id).expect("delete");
}

#[test]
fn sigkill_of_the_init_removes_the_container_without_any_poststop() {
    if !require(&["runc"]) {
        return;
    }
    let node = Node::start().expect("tracer-node");
    let rt = Runtime::new("runc").expect("runtime");
    let id = unique("ct-kill");
    let pod = unique("kill");
    let bundle =
        Bundle::new(&["sleep", "300"], &containerd_annotations(&pod, "ns", "victim"), Bundle::hooks_for(&node))
            .expect("bundle");
    rt.create(&id, &bundle).expect("create");
    rt.start(&id).expect("start");
    assert!(node.container(&pod, "victim").expect("pods").is_some());
    let pid = rt.pid(&id).expect("pid");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).expect("pid"),
        rustix::process::Signal::KILL,
    )
    .expect("kill init");
    // No runc delete: no poststop hook runs. The pidfd watch must remove it on its own.
    assert!(
        wait_until(Duration::from_secs(5), || node.container(&pod, "victim").expect("pods").is_none()),
        "still listed after its init was killed:\n{}",
        node.log()
    );
    assert!(node.log().contains("init exited"), "{}", node.log());
}

#[test]
fn sandbox_containers_are_recorded_but_not_listed_as_workloads() {
    if !require(&["runc"]) {
        return;
    }
    let node = Node::start().expect("tracer-node");
    let rt = Runtime::new("runc").expect("runtime");
    let pod = unique("sbx");
    let mut sandbox = containerd_annotations(&pod, "ns", "");
    sandbox.remove("io.kubernetes.cri.container-name");
    sandbox.insert("io.kubernetes.cri.container-type".into(), "sandbox".into());
    let pause = Bundle::new(&["sleep", "300"], &sandbox, Bundle::hooks_for(&node)).expect("bundle");
    let app = Bundle::new(&["sleep", "300"], &containerd_annotations(&pod, "ns", "app"), Bundle::hooks_for(&node))
        .expect("bundle");
    let (pause_id, app_id) = (unique("ct-pause"), unique("ct-app"));
    rt.create(&pause_id, &pause).expect("create pause");
    rt.create(&app_id, &app).expect("create app");
    let pods = node.pods().expect("pods");
    let containers = pods[&pod]["Containers"].as_object().expect("pod listed");
    assert_eq!(containers.keys().collect::<Vec<_>>(), vec!["app"], "{pods}");
    assert!(node.log().contains(&pause_id), "sandbox registration is logged:\n{}", node.log());
}
