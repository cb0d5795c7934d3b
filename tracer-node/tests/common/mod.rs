//! Helpers shared by tracer-node's crate tests: real child processes stand in for container
//! inits, so the registry's pidfd and procfs checks run for real without root.

#![allow(dead_code)]

use std::{process::Child, sync::Arc, time::Duration};

use tracer_api::{hook::MESSAGE_VERSION, ContainerCreated, ContainerKind, ContainerStopped, RegistryEvent};
use tracer_node::registry::{procfs::Procfs, store::Store, Isolation, Registry};

/// A `sleep` child, killed and reaped on drop.
pub struct Proc(pub Child);

impl Proc {
    pub fn spawn() -> Self {
        Proc(std::process::Command::new("sleep").arg("300").spawn().expect("spawn sleep"))
    }
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A registry that takes plain child processes as container inits (they share our pid
/// namespace and have no container cgroup); every other check is the daemon's.
pub fn registry(store: Option<Store>) -> Arc<Registry> {
    Registry::with_isolation(Procfs::new("/proc", "/sys"), store, Isolation::NotChecked)
        .expect("registry with its exit watcher")
}

pub fn created(id: &str, pid: u32, pod: &str, namespace: &str, name: &str) -> ContainerCreated {
    ContainerCreated {
        version: MESSAGE_VERSION,
        id: id.into(),
        pid,
        pid_start_time: None,
        pod: pod.into(),
        namespace: namespace.into(),
        name: name.into(),
        kind: ContainerKind::Container,
        runtime: Some("runc".into()),
        bundle: "/b".into(),
        annotations: Default::default(),
        created_unix_ns: 1,
    }
}

pub fn create_event(id: &str, pid: u32, pod: &str, namespace: &str, name: &str) -> RegistryEvent {
    RegistryEvent::Created(created(id, pid, pod, namespace, name))
}

pub fn stop_event(id: &str) -> RegistryEvent {
    RegistryEvent::Stopped(ContainerStopped { version: MESSAGE_VERSION, id: id.into(), stopped_unix_ns: 2 })
}

/// A temp directory of mode 0700, as the daemon requires of its spool and state directories.
pub fn private_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod 0700");
    dir
}

/// Whether the test runs as root; outside CI a test that needs it is skipped with a message,
/// under CI it fails.
pub fn require_root(why: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "CI is set, so this test may not skip: it needs root {why}");
    eprintln!("SKIPPED: needs root {why}");
    false
}

pub async fn eventually(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..250 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// The API's state over `reg`, with a tracefs that is only a directory (sessions are covered
/// against the real tracefs in the end-to-end tests).
pub fn app_state(
    reg: Arc<Registry>,
    auth: tracer_node::api::auth::AuthPolicy,
    insecure: bool,
) -> tracer_node::AppState {
    let tracefs = tracer_node::ftrace::Tracefs::at(std::env::temp_dir());
    let catalog = Arc::new(tracer_node::hooks::Catalog::new(tracefs.clone(), Vec::new()));
    let sessions =
        tracer_node::sessions::SessionManager::new("node-a".into(), tracefs, catalog, reg.clone(), Default::default());
    tracer_node::AppState {
        registry: reg,
        sessions,
        node_name: "node-a".into(),
        ready: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        auth: Arc::new(auth),
        insecure,
        http: Default::default(),
    }
}
