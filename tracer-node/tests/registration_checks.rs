//! A registration is a claim by whoever reached the socket: each one is checked against the
//! kernel before the container is listed or traced.

mod common;

use std::{sync::Arc, time::Duration};

use common::{create_event, eventually, registry, stop_event, Proc};
use tracer_node::registry::{procfs::Procfs, Registry, RegistryError};

fn strict() -> Arc<Registry> {
    Registry::new(Procfs::new("/proc", "/sys"), None).expect("registry")
}

#[tokio::test]
async fn pid_1_and_the_daemon_itself_are_never_containers() {
    for reg in [strict(), registry(None)] {
        for pid in [1, std::process::id()] {
            let r = reg.apply(create_event("c", pid, "p", "ns", "c"));
            assert!(matches!(r, Err(RegistryError::NotAContainer { .. })), "pid {pid}: {r:?}");
        }
        assert!(reg.is_empty());
    }
}

#[tokio::test]
async fn a_host_process_outside_any_container_cgroup_is_refused() {
    let reg = strict();
    let host = Proc::spawn();
    let r = reg.apply(create_event("not-a-container", host.pid(), "p", "ns", "c"));
    match r {
        Err(RegistryError::NotAContainer { reason, .. }) => {
            assert!(reason.contains("host's pid namespace"), "{reason}")
        }
        other => panic!("a plain host process was accepted: {other:?}"),
    }
    assert!(reg.is_empty());
}

/// The host pid of the process `unshare --pid --fork` runs as pid 1 of a new pid namespace.
struct InNewPidNamespace(Proc);

impl InNewPidNamespace {
    fn start() -> Option<(Self, u32)> {
        let child = std::process::Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child", "sleep", "300"])
            .spawn()
            .ok()?;
        let unshare = Proc(child);
        let children = format!("/proc/{0}/task/{0}/children", unshare.pid());
        for _ in 0..250 {
            let pid = std::fs::read_to_string(&children).ok().and_then(|t| t.split_whitespace().next()?.parse().ok());
            if let Some(pid) = pid {
                return Some((InNewPidNamespace(unshare), pid));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

#[tokio::test]
async fn an_init_in_a_pid_namespace_of_its_own_is_accepted_and_a_stop_waits_for_its_exit() {
    if !common::require_root("for a new pid namespace") {
        return;
    }
    let reg = strict();
    let (mut ns, pid) = InNewPidNamespace::start().expect("unshare --pid --fork");
    reg.apply(create_event("isolated", pid, "p", "ns", "c")).expect("an isolated init is accepted");
    let r = reg.apply(stop_event("isolated"));
    assert!(matches!(r, Err(RegistryError::StillRunning { .. })), "a forged stop is refused: {r:?}");
    assert!(reg.contains("isolated"));
    // SIGKILL of the namespace's init, as `kill -9` of a container's init (--kill-child would
    // do it at unshare's exit too).
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).expect("pid"),
        rustix::process::Signal::KILL,
    );
    ns.0.kill();
    assert!(eventually(|| reg.is_empty()).await, "the exit removes it");
}
