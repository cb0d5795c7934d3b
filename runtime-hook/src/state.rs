//! Reads the OCI state from stdin (bounded in size and time) and turns it into a registry event.

use std::{collections::BTreeMap, fs, io::Read, os::fd::AsFd, path::Path, time::Instant};

use oci_spec::runtime::{ContainerState, State};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use tracer_api::{hook::MESSAGE_VERSION, procfs, ContainerCreated, ContainerKind, ContainerStopped, RegistryEvent};

use crate::error::HookError;

/// Largest state accepted on stdin (the same bound as a registry message).
pub const MAX_STATE_BYTES: usize = tracer_api::hook::MAX_MESSAGE_BYTES;

/// What the hook does at a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Register the container (prestart, createRuntime).
    Register,
    /// Unregister it (poststop).
    Unregister,
    /// Nothing to do at this stage.
    Ignore,
}

/// Maps a stage argument to an action. Names are matched as the OCI spec writes them, and also
/// case-insensitively since hook configs are hand-written.
pub fn action_for_stage(stage: &str) -> Result<Action, HookError> {
    match stage.to_ascii_lowercase().as_str() {
        "prestart" | "createruntime" => Ok(Action::Register),
        "poststop" => Ok(Action::Unregister),
        "createcontainer" | "startcontainer" | "poststart" => Ok(Action::Ignore),
        _ => Err(HookError::UnknownStage(stage.to_owned())),
    }
}

/// Infers the action from the state's status when no stage was given. runc reports `creating`
/// and crun `created` at createRuntime; both report `stopped` at poststop.
pub fn action_for_status(status: &ContainerState) -> Action {
    match status {
        ContainerState::Creating | ContainerState::Created => Action::Register,
        ContainerState::Stopped => Action::Unregister,
        _ => Action::Ignore,
    }
}

/// Reads all of `input` until EOF, at most `MAX_STATE_BYTES`, waiting no later than `deadline`.
/// The runtime writes the state and closes the pipe; a runtime that never closes it must not
/// stall container creation, hence the poll.
pub fn read_state<R: Read + AsFd>(mut input: R, deadline: Instant, deadline_ms: u64) -> Result<Vec<u8>, HookError> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HookError::StateTimeout(deadline_ms));
        }
        let timeout = Timespec::try_from(left).unwrap_or(Timespec { tv_sec: 0, tv_nsec: 0 });
        let ready = {
            let fd = input.as_fd();
            let mut fds = [PollFd::new(&fd, PollFlags::IN)];
            poll(&mut fds, Some(&timeout)).map_err(|e| HookError::ReadState(e.into()))?
        };
        if ready == 0 {
            return Err(HookError::StateTimeout(deadline_ms));
        }
        let n = match input.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(HookError::ReadState(e)),
        };
        if n == 0 {
            break;
        }
        if buf.len() + n > MAX_STATE_BYTES {
            return Err(HookError::StateTooLarge { limit: MAX_STATE_BYTES });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    if buf.iter().all(u8::is_ascii_whitespace) {
        return Err(HookError::EmptyState);
    }
    Ok(buf)
}

/// Parses and checks an OCI state.
pub fn parse_state(bytes: &[u8]) -> Result<State, HookError> {
    let state: State = serde_json::from_slice(bytes).map_err(HookError::ParseState)?;
    // oci-spec defaults every field, so `{}` parses: insist on what identifies a container.
    if state.id().is_empty() {
        return Err(HookError::InvalidState("no container id"));
    }
    if state.id().len() > 1024 || state.id().contains(['/', '\0', '\n']) {
        return Err(HookError::InvalidState("container id has a path separator, control character or is too long"));
    }
    Ok(state)
}

/// Pod, namespace and container name, from Kubernetes annotations or the documented fallback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// Pod name.
    pub pod: String,
    /// Namespace (empty outside Kubernetes).
    pub namespace: String,
    /// Container name.
    pub name: String,
    /// Workload or sandbox.
    pub kind: ContainerKind,
}

/// containerd's CRI plugin annotations.
mod cri {
    pub const POD: &str = "io.kubernetes.cri.sandbox-name";
    pub const NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
    pub const CONTAINER: &str = "io.kubernetes.cri.container-name";
    pub const TYPE: &str = "io.kubernetes.cri.container-type";
}

/// CRI-O's annotations (also what a hand-written `podman --annotation` uses).
mod crio {
    pub const POD: &str = "io.kubernetes.pod.name";
    pub const NAMESPACE: &str = "io.kubernetes.pod.namespace";
    pub const CONTAINER: &str = "io.kubernetes.container.name";
    pub const TYPE: &str = "io.kubernetes.cri-o.ContainerType";
}

/// Name of a sandbox in `/v1/pods`-adjacent records; kubelet calls the pause container `POD`.
const SANDBOX_NAME: &str = "POD";

/// Works out the names. Kubernetes annotations win (containerd's, then CRI-O's); without them the
/// container is its own pod: pod = the OCI `hostname` of the bundle's config.json (else the id),
/// container name = the container id, namespace empty.
/// The bundle is read only within `deadline`.
pub fn names(id: &str, annotations: &BTreeMap<String, String>, bundle: &Path, deadline: Instant) -> Names {
    let get = |k: &str| annotations.get(k).filter(|v| !v.is_empty()).cloned();
    for keys in [
        (cri::POD, cri::NAMESPACE, cri::CONTAINER, cri::TYPE),
        (crio::POD, crio::NAMESPACE, crio::CONTAINER, crio::TYPE),
    ] {
        let (pod_k, ns_k, name_k, type_k) = keys;
        if let Some(pod) = get(pod_k) {
            let kind = match get(type_k).as_deref() {
                Some("sandbox") => ContainerKind::Sandbox,
                _ => ContainerKind::Container,
            };
            let name = get(name_k).unwrap_or_else(|| match kind {
                ContainerKind::Sandbox => SANDBOX_NAME.to_owned(),
                ContainerKind::Container => id.to_owned(),
            });
            return Names { pod, namespace: get(ns_k).unwrap_or_default(), name, kind };
        }
    }
    let pod = bundle_hostname(bundle, deadline).unwrap_or_else(|| id.to_owned());
    Names { pod, namespace: String::new(), name: id.to_owned(), kind: ContainerKind::Container }
}

/// Largest config.json read for its hostname.
const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// The `hostname` of the bundle's config.json, read only when there are no Kubernetes names,
/// and only within `deadline`: the file is opened without blocking (a FIFO there used to hold
/// the hook for minutes), must be a regular file, and is read on a helper thread that the hook
/// stops waiting for at the deadline (a hung filesystem cannot stall the container either).
fn bundle_hostname(bundle: &Path, deadline: Instant) -> Option<String> {
    let left = deadline.checked_duration_since(Instant::now())?;
    let path = bundle.join("config.json");
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("read-config".into())
        .spawn(move || {
            let _ = tx.send(read_hostname(&path));
        })
        .ok()?;
    rx.recv_timeout(left).ok().flatten()
}

fn read_hostname(path: &Path) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Spec {
        hostname: Option<String>,
    }
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let file = fs::File::from(rustix::fs::open(path, flags, Mode::empty()).ok()?);
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.len() > MAX_CONFIG_BYTES {
        return None;
    }
    let spec: Spec = serde_json::from_reader(std::io::BufReader::new(file.take(MAX_CONFIG_BYTES))).ok()?;
    spec.hostname.filter(|h| !h.is_empty())
}

/// The runtime that ran us: the hook is a child of runc/crun at createRuntime and poststop.
/// runc's helper processes rename themselves `runc:[1:CHILD]`, hence the trim.
fn runtime_name(proc_root: &Path) -> Option<String> {
    let ppid = rustix::process::getppid()?.as_raw_nonzero().get();
    let comm = fs::read_to_string(proc_root.join(ppid.to_string()).join("comm")).ok()?;
    let comm = comm.trim().split(':').next()?.trim();
    (!comm.is_empty()).then(|| comm.to_owned())
}

/// Reads the start time of `pid` from procfs.
fn start_time(proc_root: &Path, pid: u32) -> Option<u64> {
    let text = fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    procfs::parse_stat(&text).map(|s| s.start_time)
}

/// Builds the registry event for `action` from a parsed state.
/// Files are read only within `deadline`.
pub fn build_event(
    state: &State,
    action: Action,
    now_unix_ns: u64,
    proc_root: &Path,
    deadline: Instant,
) -> Result<Option<RegistryEvent>, HookError> {
    let id = state.id().clone();
    match action {
        Action::Ignore => Ok(None),
        Action::Unregister => Ok(Some(RegistryEvent::Stopped(ContainerStopped {
            version: MESSAGE_VERSION,
            id,
            stopped_unix_ns: now_unix_ns,
        }))),
        Action::Register => {
            let pid = state.pid().filter(|p| *p > 0).ok_or(HookError::InvalidState("no init pid at a create stage"))?;
            let pid = u32::try_from(pid).map_err(|_| HookError::InvalidState("init pid out of range"))?;
            let annotations: BTreeMap<String, String> = state
                .annotations()
                .as_ref()
                .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default();
            let names = names(&id, &annotations, state.bundle(), deadline);
            Ok(Some(RegistryEvent::Created(ContainerCreated {
                version: MESSAGE_VERSION,
                pid,
                pid_start_time: start_time(proc_root, pid),
                pod: names.pod,
                namespace: names.namespace,
                name: names.name,
                kind: names.kind,
                runtime: runtime_name(proc_root),
                bundle: state.bundle().to_string_lossy().into_owned(),
                annotations,
                created_unix_ns: now_unix_ns,
                id,
            })))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn soon() -> Instant {
        Instant::now() + std::time::Duration::from_secs(5)
    }

    #[test]
    fn a_fifo_or_a_hang_in_the_bundle_costs_no_more_than_the_deadline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("config.json");
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, rustix::fs::Mode::RWXU, 0)
            .expect("mkfifo");
        let started = Instant::now();
        let n = names("c1", &BTreeMap::new(), dir.path(), started + std::time::Duration::from_millis(100));
        assert_eq!(n.pod, "c1", "the id is the fallback");
        assert!(started.elapsed() < std::time::Duration::from_millis(500), "took {:?}", started.elapsed());
        // A writer keeps the FIFO open without writing: a reader that opened it would wait forever.
        let _writer = std::fs::OpenOptions::new().read(true).write(true).open(&fifo).expect("open fifo");
        let started = Instant::now();
        let n = names("c2", &BTreeMap::new(), dir.path(), started + std::time::Duration::from_millis(100));
        assert_eq!(n.pod, "c2");
        assert!(started.elapsed() < std::time::Duration::from_millis(500), "took {:?}", started.elapsed());
    }

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn containerd_annotations_name_the_container() {
        let a =
            ann(&[(cri::POD, "web-1"), (cri::NAMESPACE, "shop"), (cri::CONTAINER, "nginx"), (cri::TYPE, "container")]);
        let n = names("abc", &a, Path::new("/nonexistent"), soon());
        assert_eq!(
            n,
            Names {
                pod: "web-1".into(),
                namespace: "shop".into(),
                name: "nginx".into(),
                kind: ContainerKind::Container
            }
        );
    }

    #[test]
    fn crio_sandbox_is_recorded_as_sandbox() {
        let a = ann(&[(crio::POD, "web-1"), (crio::NAMESPACE, "shop"), (crio::TYPE, "sandbox")]);
        let n = names("abc", &a, Path::new("/nonexistent"), soon());
        assert_eq!(n.kind, ContainerKind::Sandbox);
        assert_eq!(n.name, "POD");
    }

    #[test]
    fn plain_container_falls_back_to_hostname_then_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("config.json"), r#"{"hostname":"box","process":{}}"#).expect("write");
        let n = names("c1", &BTreeMap::new(), dir.path(), soon());
        assert_eq!((n.pod.as_str(), n.name.as_str(), n.namespace.as_str()), ("box", "c1", ""));
        let n = names("c1", &BTreeMap::new(), Path::new("/nonexistent"), soon());
        assert_eq!(n.pod, "c1");
    }

    #[test]
    fn stages_map_to_actions() {
        assert_eq!(action_for_stage("createRuntime").expect("ok"), Action::Register);
        assert_eq!(action_for_stage("prestart").expect("ok"), Action::Register);
        assert_eq!(action_for_stage("poststop").expect("ok"), Action::Unregister);
        assert_eq!(action_for_stage("poststart").expect("ok"), Action::Ignore);
        assert!(matches!(action_for_stage("explode"), Err(HookError::UnknownStage(_))));
    }

    #[test]
    fn runc_and_crun_states_parse_and_empty_ones_do_not() {
        let runc = br#"{"ociVersion":"1.0.2-dev","id":"x1","status":"creating","pid":2534,"bundle":"/tmp/b","annotations":{"a":"b"}}"#;
        let s = parse_state(runc).expect("runc state");
        assert_eq!(s.pid(), &Some(2534));
        let crun = br#"{"ociVersion":"1.0","id":"x1","status":"stopped","pid":0,"root":"/run/crun","bundle":"/tmp/b"}"#;
        let s = parse_state(crun).expect("crun state");
        assert_eq!(action_for_status(s.status()), Action::Unregister);
        let ev = build_event(&s, Action::Register, 1, Path::new("/proc"), soon());
        assert!(matches!(ev, Err(HookError::InvalidState(_))), "pid 0 cannot register");
        assert!(matches!(parse_state(b"{}"), Err(HookError::InvalidState(_))));
        assert!(matches!(parse_state(b"not json"), Err(HookError::ParseState(_))));
        assert!(matches!(parse_state(br#"{"id":"../etc"}"#), Err(HookError::InvalidState(_))));
    }

    #[test]
    fn stdin_reading_is_bounded_in_size_and_time() {
        let (r, mut w) = std::io::pipe().expect("pipe");
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let big = vec![b' '; MAX_STATE_BYTES + 10];
            let _ = w.write_all(&big);
        });
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        assert!(matches!(read_state(r, deadline, 5000), Err(HookError::StateTooLarge { .. })));
        writer.join().expect("writer");

        let (r, _w_kept_open) = std::io::pipe().expect("pipe");
        let start = Instant::now();
        let deadline = start + std::time::Duration::from_millis(50);
        assert!(matches!(read_state(r, deadline, 50), Err(HookError::StateTimeout(50))));
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
    }
}
