//! The registry's rules: liveness checks, exit watching, persistence, spool replay and the
//! registry socket.

mod common;

use common::{create_event, created, eventually, private_dir, registry, stop_event, Proc};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tracer_api::{HookReply, RegistryEvent, SpooledEvent};
use tracer_node::registry::{socket, spool, store::Store, Applied, RegistryError};

#[tokio::test]
async fn registration_is_idempotent_and_stop_removes() {
    let reg = registry(None);
    let mut init = Proc::spawn();
    assert_eq!(reg.apply(create_event("c1", init.pid(), "p", "ns", "c")).expect("register"), Applied::Registered);
    assert_eq!(reg.apply(create_event("c1", init.pid(), "p", "ns", "c")).expect("again"), Applied::AlreadyRegistered);
    assert_eq!(reg.len(), 1);
    // Runtimes send poststop once the init is gone: a stop while it runs is forged or stale.
    let r = reg.apply(stop_event("c1"));
    assert!(matches!(r, Err(RegistryError::StillRunning { .. })), "{r:?}");
    assert!(reg.contains("c1"), "a refused stop removes nothing");
    init.kill();
    // The exit watcher may remove it first; either way the stop leaves it gone.
    let r = reg.apply(stop_event("c1")).expect("stop");
    assert!(matches!(r, Applied::Unregistered | Applied::NotRegistered), "{r:?}");
    assert_eq!(reg.apply(stop_event("c1")).expect("stop again"), Applied::NotRegistered);
    assert!(reg.is_empty());
}

#[tokio::test]
async fn a_dead_init_or_a_reused_pid_is_refused() {
    let reg = registry(None);
    let mut dead = Proc::spawn();
    let pid = dead.pid();
    dead.kill();
    assert!(matches!(reg.apply(create_event("c1", pid, "p", "ns", "c")), Err(RegistryError::InitGone { .. })));

    let live = Proc::spawn();
    let mut rec = created("c2", live.pid(), "p", "ns", "c");
    rec.pid_start_time = Some(1);
    assert!(matches!(reg.apply(RegistryEvent::Created(rec)), Err(RegistryError::PidReused { .. })));
    assert!(reg.is_empty(), "a refused event changes nothing");
}

#[tokio::test]
async fn invalid_records_are_refused() {
    let reg = registry(None);
    let live = Proc::spawn();
    for (id, pod, name) in
        [("a/b", "p", "c"), ("", "p", "c"), ("ok", "", "c"), ("ok", "p/q", "c"), ("ok", "p", "line\nbreak")]
    {
        let r = reg.apply(create_event(id, live.pid(), pod, "ns", name));
        assert!(matches!(r, Err(RegistryError::Invalid { .. })), "{id:?} {pod:?} {name:?}: {r:?}");
    }
    let mut rec = created("v", live.pid(), "p", "ns", "c");
    rec.version = 99;
    assert!(matches!(reg.apply(RegistryEvent::Created(rec)), Err(RegistryError::Version(99))));
}

#[tokio::test]
async fn the_exit_of_an_init_removes_its_container_without_a_stop_event() {
    let reg = registry(None);
    let mut init = Proc::spawn();
    reg.apply(create_event("c1", init.pid(), "p", "ns", "c")).expect("register");
    init.kill();
    assert!(eventually(|| reg.is_empty()).await, "exit not noticed");
}

/// The watcher thread used to start inside `Arc::new_cyclic` and quit silently when it ran
/// before the registry existed (about one start in eight under load): every registry must see
/// the exit. Registries are built from two threads at once, as a loaded node schedules them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_new_registry_sees_a_kill_of_an_init() {
    const REGISTRIES: usize = 128;
    let build = || {
        (0..REGISTRIES / 2)
            .map(|_| {
                let reg = registry(None);
                let init = Proc::spawn();
                reg.apply(create_event("c", init.pid(), "p", "ns", "c")).expect("register");
                (reg, init)
            })
            .collect::<Vec<_>>()
    };
    let other = std::thread::spawn(build);
    let mut registries = build();
    registries.extend(other.join().expect("builder thread"));
    for (i, (reg, _)) in registries.iter().enumerate() {
        assert!(reg.exit_watcher_alive(), "registry {i}: exit watcher not running");
    }
    for (_, init) in &mut registries {
        // SIGKILL, like `kill -9` of a container's init: no stop event ever comes.
        init.kill();
    }
    for (i, (reg, _)) in registries.iter().enumerate() {
        assert!(eventually(|| reg.is_empty()).await, "registry {i} of {REGISTRIES} never saw its init exit");
        assert!(reg.exit_watcher_alive(), "registry {i}: exit watcher stopped");
    }
}

#[tokio::test]
async fn the_persisted_registry_reloads_live_containers_and_forgets_dead_ones() {
    let dir = private_dir();
    let (live, mut dying) = (Proc::spawn(), Proc::spawn());
    {
        let reg = registry(Some(Store::open(dir.path()).expect("store")));
        reg.apply(create_event("live", live.pid(), "p", "ns", "a")).expect("register");
        reg.apply(create_event("dying", dying.pid(), "p", "ns", "b")).expect("register");
    }
    dying.kill();
    std::fs::write(dir.path().join("garbage.json"), "{").expect("write");
    let reg = registry(Some(Store::open(dir.path()).expect("store")));
    assert_eq!(reg.load_persisted().expect("load"), 1);
    assert!(reg.contains("live") && !reg.contains("dying"));
    let mut files: Vec<String> = std::fs::read_dir(dir.path())
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, vec!["live.json"]);
}

fn spool(dir: &std::path::Path, name: &str, event: RegistryEvent) {
    let body = serde_json::to_vec(&SpooledEvent { reason: "daemon down".into(), event }).expect("ser");
    std::fs::write(dir.join(name), body).expect("write");
}

#[tokio::test]
async fn spool_replay_applies_in_order_and_deletes_every_file() {
    let dir = private_dir();
    let reg = registry(None);
    let (live, mut gone) = (Proc::spawn(), Proc::spawn());
    let gone_pid = gone.pid();
    gone.kill();
    spool(dir.path(), "00000000000000000001-1-created.json", create_event("live", live.pid(), "p", "ns", "a"));
    spool(dir.path(), "00000000000000000002-2-created.json", create_event("brief", gone_pid, "p", "ns", "b"));
    spool(dir.path(), "00000000000000000003-3-stopped.json", stop_event("brief"));
    // A stop for "live" that predates its creation must not remove it: order is by name.
    spool(dir.path(), "00000000000000000000-4-stopped.json", stop_event("live"));
    std::fs::write(dir.path().join("00000000000000000005-5-created.json"), "not json").expect("write");
    std::fs::write(dir.path().join(".00000000000000000006-6-created.json.tmp"), "partial").expect("write");
    let done = spool::Spool::open(dir.path()).expect("spool").replay(&reg).expect("replay");
    assert_eq!((done.applied, done.refused, done.unreadable, done.deferred), (3, 1, 1, 0));
    let c = &reg.counters;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!((load(&c.spool_applied), load(&c.spool_refused), load(&c.spool_unreadable)), (3, 1, 1), "in /metrics");
    assert!(reg.contains("live") && !reg.contains("brief"));
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec![".00000000000000000006-6-created.json.tmp"], "only the in-progress temp file stays");
}

#[tokio::test]
async fn files_appearing_in_the_spool_are_replayed_while_running() {
    let dir = private_dir();
    let reg = registry(None);
    let spool = std::sync::Arc::new(spool::Spool::open(dir.path()).expect("spool"));
    let task = spool::watch(spool, reg.clone()).expect("watch");
    let live = Proc::spawn();
    // Written the way the hook writes: a temp file renamed into place.
    let tmp = dir.path().join(".x.tmp");
    let body = serde_json::to_vec(&SpooledEvent {
        reason: "r".into(),
        event: create_event("late", live.pid(), "p", "ns", "c"),
    })
    .expect("ser");
    std::fs::write(&tmp, body).expect("write");
    std::fs::rename(&tmp, dir.path().join("00000000000000000009-1-created.json")).expect("rename");
    assert!(eventually(|| reg.contains("late")).await, "not replayed");
    assert!(eventually(|| std::fs::read_dir(dir.path()).expect("ls").next().is_none()).await, "not deleted");
    task.abort();
}

async fn round_trip(path: &std::path::Path, line: &[u8]) -> HookReply {
    let mut s = tokio::net::UnixStream::connect(path).await.expect("connect");
    s.write_all(line).await.expect("write");
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).await.expect("read");
    serde_json::from_str(&reply).expect("reply JSON")
}

#[tokio::test]
async fn the_registry_socket_registers_and_answers_bad_messages_with_a_reason() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("run/registry.sock");
    let listener = socket::bind(&path).expect("bind");
    assert_eq!(std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777, 0o600);
    let reg = registry(None);
    let task = tokio::spawn(socket::serve(listener, reg.clone(), std::time::Duration::from_millis(200)));

    let live = Proc::spawn();
    let mut msg = serde_json::to_vec(&create_event("c1", live.pid(), "p", "ns", "c")).expect("ser");
    msg.push(b'\n');
    let reply = round_trip(&path, &msg).await;
    assert!(reply.ok, "{reply:?}");
    assert!(reg.contains("c1"), "registered before the reply");

    let reply = round_trip(&path, b"{\"event\":\"created\"}\n").await;
    assert!(!reply.ok && reply.error.as_deref().is_some_and(|e| e.contains("malformed")), "{reply:?}");
    let reply = round_trip(&path, b"\xff\xfe\n").await;
    assert!(!reply.ok, "{reply:?}");
    let mut huge = vec![b' '; tracer_api::hook::MAX_MESSAGE_BYTES + 10];
    huge.push(b'\n');
    let reply = round_trip(&path, &huge).await;
    assert!(reply.error.as_deref().is_some_and(|e| e.contains("larger than")), "{reply:?}");
    assert_eq!(reg.len(), 1, "bad messages change nothing");
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!((load(&reg.counters.hook_created), load(&reg.counters.hook_refused)), (1, 3), "in /metrics");
    task.abort();
}
