//! The hook never breaks or stalls a container, and nothing registered while tracer-node is
//! down, hung or restarting is lost.

use std::{
    io::Write,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use e2e::{binary, containerd_annotations, require, unique, wait_until, Bundle, Node, Runtime};
use rustix::process::Signal;
use serde_json::json;

fn spool_files(node: &Node) -> Vec<String> {
    std::fs::read_dir(node.spool())
        .map(|d| {
            d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| !n.starts_with('.')).collect()
        })
        .unwrap_or_default()
}

#[test]
fn after_a_restart_the_registry_is_exactly_the_live_containers() {
    if !require(&["runc"]) {
        return;
    }
    let mut node = Node::start().expect("tracer-node");
    let rt = Runtime::new("runc").expect("runtime");
    let bundle = |name: &str| {
        Bundle::new(&["sleep", "300"], &containerd_annotations(&unique("pod"), "ns", name), Bundle::hooks_for(&node))
            .expect("bundle")
    };
    let (kept, deleted, killed, late, brief) =
        (unique("ct-kept"), unique("ct-deleted"), unique("ct-killed"), unique("ct-late"), unique("ct-brief"));
    let (b_kept, b_deleted, b_killed, b_late, b_brief) =
        (bundle("kept"), bundle("deleted"), bundle("killed"), bundle("late"), bundle("brief"));
    for (id, b) in [(&kept, &b_kept), (&deleted, &b_deleted), (&killed, &b_killed)] {
        rt.create(id, b).expect("create");
        rt.start(id).expect("start");
    }
    assert_eq!(node.container_ids().expect("pods").len(), 3);

    // Hard stop: no chance to save anything at shutdown.
    node.stop(false);
    rt.delete(&deleted).expect("delete while down");
    let pid = rt.pid(&killed).expect("pid");
    rustix::process::kill_process(rustix::process::Pid::from_raw(pid as i32).expect("pid"), Signal::KILL)
        .expect("kill");
    rt.create(&late, &b_late).expect("create while down");
    rt.create(&brief, &b_brief).expect("create while down");
    rt.delete(&brief).expect("delete while down");
    assert!(spool_files(&node).len() >= 4, "events were spooled: {:?}", spool_files(&node));

    node.start_again().expect("restart");
    let mut expected = vec![kept.clone(), late.clone()];
    expected.sort();
    // Registration state is restored before /readyz answers: no waiting needed.
    assert_eq!(node.container_ids().expect("pods"), expected, "{}", node.log());
    assert!(
        wait_until(Duration::from_secs(5), || spool_files(&node).is_empty()),
        "spool not drained: {:?}",
        spool_files(&node)
    );

    // Replay is idempotent: a third start changes nothing.
    node.restart().expect("restart again");
    assert_eq!(node.container_ids().expect("pods"), expected);
}

#[test]
fn a_hung_tracer_node_delays_container_creation_by_at_most_the_deadline_and_loses_nothing() {
    if !require(&["runc"]) {
        return;
    }
    let node = Node::start().expect("tracer-node");
    let rt = Runtime::new("runc").expect("runtime");
    let pod = unique("hung");
    let with_hook =
        Bundle::new(&["sleep", "300"], &containerd_annotations(&pod, "ns", "app"), Bundle::hooks_for(&node))
            .expect("bundle");
    let without_hook =
        Bundle::new(&["sleep", "300"], &containerd_annotations(&pod, "ns", "x"), json!({})).expect("bundle");

    // Baseline: the same create without any hook.
    let base_id = unique("ct-base");
    let t = Instant::now();
    rt.create(&base_id, &without_hook).expect("create baseline");
    let baseline = t.elapsed();
    rt.delete(&base_id).expect("delete baseline");

    node.signal(Signal::STOP);
    let id = unique("ct-hung");
    let t = Instant::now();
    let created = rt.create(&id, &with_hook);
    let with_hung_daemon = t.elapsed();
    node.signal(Signal::CONT);
    created.expect("runc create must succeed with tracer-node hung");
    let delay = with_hung_daemon.saturating_sub(baseline);
    eprintln!("runc create: {baseline:?} without hook, {with_hung_daemon:?} with the hook and tracer-node stopped: +{delay:?}");
    // Default deadline 250 ms, plus exec and scheduling slack.
    assert!(delay < Duration::from_millis(750), "hook delayed create by {delay:?}");
    assert!(with_hung_daemon >= Duration::from_millis(200), "the hook should have waited for its deadline");

    // Once the daemon runs again, the container is there (from the backlog or the spool) and
    // the spool is drained.
    assert!(
        wait_until(Duration::from_secs(10), || node.container(&pod, "app").expect("pods").is_some()),
        "container lost:\n{}",
        node.log()
    );
    assert!(wait_until(Duration::from_secs(5), || spool_files(&node).is_empty()), "{:?}", spool_files(&node));
    assert!(node.log().contains("replayed spooled event"), "the event went through the spool:\n{}", node.log());
    rt.delete(&id).expect("delete");
}

/// Runs the hook binary with `args` and `stdin`, returning (exit code, stderr, duration).
fn run_hook(args: &[&str], stdin: &[u8]) -> (i32, String, Duration) {
    let t = Instant::now();
    let mut child = Command::new(binary("runtime-hook"))
        .args(args)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hook");
    let mut input = child.stdin.take().expect("stdin");
    // The hook may stop reading early (huge input): a broken pipe here is expected.
    let _ = input.write_all(stdin);
    drop(input);
    let out = child.wait_with_output().expect("hook output");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned(), t.elapsed())
}

#[test]
fn bad_hook_input_gets_a_clear_message_and_never_fails_the_container() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("none.sock").display().to_string();
    let spool = dir.path().join("spool").display().to_string();
    let base = ["--socket", &sock, "--spool-dir", &spool];
    let huge = vec![b'x'; 4 * 1024 * 1024];
    let cases: Vec<(&str, Vec<&str>, &[u8], &str)> = vec![
        ("empty stdin", vec!["createRuntime"], b"", "stdin is empty"),
        ("malformed stdin", vec!["createRuntime"], b"{not json", "not an OCI container state"),
        ("no id", vec!["createRuntime"], b"{\"pid\":1}", "no container id"),
        ("huge stdin", vec!["createRuntime"], &huge, "larger than"),
        ("unknown stage", vec!["explode"], b"{}", "unknown hook stage"),
        ("bad flag", vec!["--bogus", "createRuntime"], b"{}", "--bogus"),
    ];
    for (what, extra, input, message) in cases {
        let args: Vec<&str> = base.iter().copied().chain(extra.iter().copied()).collect();
        let (code, stderr, took) = run_hook(&args, input);
        assert_eq!(code, 0, "{what}: fails open, got {code}: {stderr}");
        assert!(stderr.contains(message), "{what}: stderr {stderr:?} should say {message:?}");
        assert_eq!(stderr.trim().lines().count(), 1, "{what}: one line: {stderr:?}");
        assert!(took < Duration::from_secs(2), "{what}: took {took:?}");
        let strict: Vec<&str> = std::iter::once("--strict").chain(args.iter().copied()).collect();
        let (code, _, _) = run_hook(&strict, input);
        assert_ne!(code, 0, "{what}: --strict must fail");
    }
    // Nothing undeliverable was produced by bad input: the spool stays empty.
    assert!(
        !dir.path().join("spool").exists() || std::fs::read_dir(dir.path().join("spool")).expect("ls").next().is_none()
    );
}

#[test]
fn a_container_whose_hook_is_misconfigured_or_has_no_daemon_still_runs() {
    if !require(&["runc"]) {
        return;
    }
    let rt = Runtime::new("runc").expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("absent.sock").display().to_string();
    let spool = dir.path().join("spool");
    let args = |stage: &str| {
        vec!["--socket".to_owned(), sock.clone(), "--spool-dir".into(), spool.display().to_string(), stage.into()]
    };
    let hooks = json!({
        "createRuntime": [e2e::hook_entry(args("createRuntime")), e2e::hook_entry(args("no-such-stage"))],
        "poststop": [e2e::hook_entry(args("poststop"))],
    });
    let bundle =
        Bundle::new(&["sh", "-c", "echo ran"], &containerd_annotations("p", "ns", "c"), hooks).expect("bundle");
    let out = rt.run(&unique("ct-noda"), &bundle).expect("runc run must succeed");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ran"));
    // Both the create and the stop were kept for replay.
    let mut kinds: Vec<String> = std::fs::read_dir(&spool)
        .expect("spool dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().rsplit('-').next().unwrap_or_default().to_owned())
        .collect();
    kinds.sort();
    assert_eq!(kinds, vec!["created.json", "stopped.json"]);
}

/// A FIFO named like a spool file used to wedge replay for good: the HTTP port was never bound
/// and SIGTERM was never served.
#[test]
fn a_fifo_in_the_spool_neither_blocks_start_up_nor_shutdown() {
    if !require(&[]) {
        return;
    }
    let mut node = Node::start().expect("tracer-node");
    node.stop(true);
    let fifo = node.spool().join("00000000000000000001-1-created.json");
    rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, rustix::fs::Mode::RWXU, 0).expect("mkfifo");
    node.start_again().expect("ready with a FIFO in the spool");
    assert!(!fifo.exists(), "the FIFO is removed, not replayed");
    assert!(node.log().contains("not a regular file (FIFO)"), "{}", node.log());
    let started = std::time::Instant::now();
    node.stop(true);
    assert!(started.elapsed() < Duration::from_secs(5), "SIGTERM took {:?}", started.elapsed());
    assert!(node.log().contains("stopped"), "graceful stop: {}", node.log());
}
