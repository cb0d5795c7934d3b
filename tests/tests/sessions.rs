//! Trace sessions on the real tracefs with real runc containers: what is traced, from when,
//! how it stops, what is left behind, and how bad requests are answered.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

use e2e::{
    agent, containerd_annotations, looping_container, reader_threads, require, unique, wait_until, Bundle, Node,
    Runtime, LOOP_SCRIPT,
};
use serde_json::{json, Value};

/// A host process outside any container doing the same system call as the container.
struct Noise(Child);

impl Noise {
    fn start() -> Self {
        let child = Command::new("python3")
            .args(["-c", "import time\nwhile True:\n    open('/etc/hostname').read()\n    time.sleep(0.001)"])
            .stdin(Stdio::null())
            .spawn()
            .expect("start the noise process");
        Noise(child)
    }
}

impl Drop for Noise {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_syscall_session_traces_the_containers_threads_and_their_children_only() {
    if !require(&["runc", "python3"]) {
        return;
    }
    let node = Node::start().expect("tracer-node");
    let rt = Runtime::new("runc").expect("runc");
    let pod = unique("traced");
    let (cid, init) = looping_container(&node, &rt, &pod, LOOP_SCRIPT);
    let noise = Noise::start();
    let sid = node
        .create_session(&json!({"pod": pod, "container": "*", "trace-hook": "trace_syscalls",
                                "trace-arguments": "-s openat", "trace-user-context": "e2e"}))
        .expect("create session");
    let s = node.session(&sid).expect("session");
    assert_eq!(s["Running"], false);
    assert_eq!(s["Containers"][&pod], json!(["looper"]));
    assert_eq!(s["TraceParams"], json!(["-s", "openat"]));
    node.run_session(&sid, true).expect("start");
    // The node's shared recording (a session with no kernel filter has none of its own).
    let inst = format!("{}rec", node.prefix);
    assert_eq!(node.instances(), vec![inst.clone()]);
    let filter = std::fs::read_to_string(format!("/sys/kernel/tracing/instances/{inst}/set_event_pid")).expect("pids");
    assert!(filter.split_whitespace().any(|p| p == init.to_string()), "init {init} in the filter: {filter}");
    std::thread::sleep(Duration::from_millis(1500));
    node.run_session(&sid, false).expect("stop");
    assert!(node.instances().is_empty(), "stopping removes the instance");

    let events = node.events(&sid).expect("events");
    assert!(events.len() > 20, "too few events: {}", events.len());
    let noise_pid = i64::from(noise.0.id());
    for e in &events {
        assert!(e["pid"] != noise_pid && e["tgid"] != noise_pid, "an event of the host process leaked: {e}");
        assert!(e["event"] == "sys_enter_openat" || e["event"] == "sys_exit_openat", "{e}");
        for key in [
            "timestamp",
            "cpu",
            "pid",
            "tgid",
            "comm",
            "event",
            "fields",
            "node",
            "namespace",
            "pod",
            "container",
            "session",
        ] {
            assert!(e.get(key).is_some(), "{key} missing in {e}");
        }
        assert_eq!(e["session"], sid.as_str());
        assert_eq!(e["pod"], pod.as_str(), "{e}");
        assert_eq!(e["container_id"], cid.as_str(), "{e}");
    }
    assert!(events.iter().any(|e| e["pid"] == i64::from(init)), "the init's own calls are traced");
    let children: Vec<&Value> = events.iter().filter(|e| e["pid"] != i64::from(init)).collect();
    assert!(!children.is_empty(), "processes forked after the start are traced (event-fork)");
    assert!(children.iter().any(|e| e["comm"] == "cat"), "forked cat processes carry their name");
    let enter = events.iter().find(|e| e["event"] == "sys_enter_openat").expect("an openat entry");
    assert!(enter["fields"]["filename"].as_str().is_some_and(|f| f.starts_with("0x")), "{enter}");
    let ts: Vec<u64> = events.iter().filter_map(|e| e["timestamp"].as_u64()).collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "retained events come out in time order");

    let (status, stats) = node.call("GET", &format!("/v1/trace-session/{sid}/stats"), None).expect("stats");
    assert_eq!(status, 200);
    assert_eq!(stats["events_read"].as_u64(), Some(events.len() as u64), "{stats}");
    assert_eq!(stats["events_lost_kernel"], 0);
    assert_eq!(stats["events_dropped"], 0);
    rt.delete(&cid).expect("delete");
}

#[test]
fn a_session_started_before_the_container_exists_sees_its_first_exec() {
    if !require(&["runc"]) {
        return;
    }
    let node = Node::start().expect("tracer-node");
    let rt = Runtime::new("runc").expect("runc");
    let pod = unique("early");
    let (status, v) = node
        .call(
            "POST",
            "/v1/trace-session",
            Some(&json!({"pod": pod, "container": "*", "trace-hook": "trace_exec"}).to_string()),
        )
        .expect("post");
    assert_eq!(status, 404, "no container yet, no wait: 404 as in the original: {v}");
    let sid = node
        .create_session(&json!({"pod": pod, "container": "*", "trace-hook": "trace_exec", "wait-for-containers": true}))
        .expect("create waiting session");
    node.run_session(&sid, true).expect("start with no container");
    assert_eq!(node.session(&sid).expect("s")["Running"], true);

    let id = unique("ct-early");
    let bundle = Bundle::new(
        &["sh", "-c", "sleep 0.2; exit 3"],
        &containerd_annotations(&pod, "ns", "app"),
        Bundle::hooks_for(&node),
    )
    .expect("bundle");
    rt.create(&id, &bundle).expect("create");
    let init = rt.pid(&id).expect("pid");
    assert_eq!(node.session(&sid).expect("s")["Containers"][&pod], json!(["app"]), "attached at creation");
    rt.start(&id).expect("start");
    assert!(
        wait_until(Duration::from_secs(10), || node.container(&pod, "app").expect("pods").is_none()),
        "container ends"
    );
    node.run_session(&sid, false).expect("stop");

    let events = node.events(&sid).expect("events");
    // The container's very first exec: the earliest exec in the trace is its init becoming the
    // entrypoint (the runtime's own threads may fork before it, but never exec).
    let execs: Vec<&Value> = events.iter().filter(|e| e["event"] == "sched_process_exec").collect();
    let first = execs.first().unwrap_or_else(|| panic!("no exec traced: {events:?}"));
    assert_eq!(first["pid"], i64::from(init), "the first exec is the init's: {first}");
    assert!(first["fields"]["filename"].as_str().is_some_and(|f| f.ends_with("sh")), "{first}");
    assert_eq!(first["container"], "app", "{first}");
    assert!(events.iter().any(|e| e["event"] == "sched_process_fork"), "the shell forks sleep");
    assert!(
        events.iter().any(|e| e["event"] == "sys_enter_exit_group" && e["fields"]["error_code"] == 3),
        "the exit code is traced: {events:?}"
    );
    assert!(events.iter().any(|e| e["event"] == "sched_process_exit"));
    let _ = rt.delete(&id);
}

#[test]
fn timed_sessions_stop_by_themselves_and_delete_leaves_no_instance() {
    if !require(&["runc"]) {
        return;
    }
    let mut node = Node::start().expect("tracer-node");
    let rt = Runtime::new("runc").expect("runc");
    let pod = unique("timed");
    let (cid, _) = looping_container(&node, &rt, &pod, LOOP_SCRIPT);
    let body = |args: &str| json!({"pod": pod, "container": "looper", "trace-hook": "trace_syscalls", "trace-arguments": args});

    let timed = node.create_session(&body("-t 500")).expect("create");
    node.run_session(&timed, true).expect("start");
    let (status, v) = node.call("PUT", &format!("/v1/trace-session/{timed}"), Some(r#"{"run": true}"#)).expect("put");
    assert_eq!(status, 409, "start of a running session: {v}");
    assert!(
        wait_until(Duration::from_secs(5), || node.session(&timed).expect("s")["Running"] == false),
        "-t 500 did not stop the session"
    );
    assert!(node.instances().is_empty(), "{:?}", node.instances());
    assert!(node.events(&timed).expect("events").len() > 1, "events were read before the stop");

    let running = node.create_session(&body("")).expect("create");
    node.run_session(&running, true).expect("start");
    assert_eq!(node.instances().len(), 1);
    let (status, v) = node.call("DELETE", &format!("/v1/trace-session/{running}"), None).expect("delete");
    assert_eq!((status, v), (200, json!({})));
    assert!(node.instances().is_empty());
    assert_eq!(node.call("GET", &format!("/v1/trace-session/{running}"), None).expect("get").0, 404);

    let (a, b) = (node.create_session(&body("")).expect("a"), node.create_session(&body("-s read")).expect("b"));
    node.run_session(&a, true).expect("start a");
    node.run_session(&b, true).expect("start b");
    assert_eq!(node.instances().len(), 1, "both on the shared recording");
    let (status, v) = node.call("DELETE", "/v1/trace-session/all", None).expect("delete all");
    assert_eq!((status, v), (200, json!({})));
    assert!(node.instances().is_empty());
    assert_eq!(node.call("GET", "/v1/trace-session/all", None).expect("all").1, json!({}));

    // A daemon killed with a running session leaves its instance; the next start removes it.
    let c = node.create_session(&body("")).expect("c");
    node.run_session(&c, true).expect("start c");
    node.stop(false);
    assert_eq!(node.instances().len(), 1, "SIGKILL leaves the instance behind");
    node.start_again().expect("restart");
    assert!(node.instances().is_empty(), "start-up removes instances of ours: {:?}", node.instances());
    rt.delete(&cid).expect("delete container");
}

/// The daemon's ftrace reader threads (named `ftrace-cpuN`) now.
/// A start that waited for the session while a delete ran used to go ahead with the session it
/// had fetched before: its instance and reader threads could then never be stopped, and every
/// later `DELETE all` failed. Any interleaving of start, stop, delete and expiry leaves nothing.
#[test]
fn starts_racing_deletes_leave_no_instance_and_no_thread_behind() {
    if !require(&["runc"]) {
        return;
    }
    let node = Node::start().expect("tracer-node");
    let rt = Runtime::new("runc").expect("runc");
    let pod = unique("race");
    let (cid, _) = looping_container(&node, &rt, &pod, LOOP_SCRIPT);
    let body = |args: &str| {
        json!({"pod": pod, "container": "looper", "trace-hook": "trace_syscalls", "trace-arguments": args}).to_string()
    };
    for round in 0..25 {
        // Every fourth session expires by itself while the others race it.
        let args = if round % 4 == 3 { "-s openat -t 30" } else { "-s openat" };
        let sid = node.create_session(&serde_json::from_str(&body(args)).expect("json")).expect("create");
        let path = format!("/v1/trace-session/{sid}");
        std::thread::scope(|scope| {
            let run = || node.call("PUT", &path, Some(r#"{"Run":true}"#)).map(|r| r.0);
            let stop = || node.call("PUT", &path, Some(r#"{"Run":false}"#)).map(|r| r.0);
            let delete = || node.call("DELETE", &path, None).map(|r| r.0);
            let handles =
                [scope.spawn(run), scope.spawn(delete), scope.spawn(run), scope.spawn(stop), scope.spawn(run)];
            for h in handles {
                let status = h.join().expect("client thread").expect("request");
                assert!([200, 404, 409].contains(&status), "round {round}: unexpected status {status}");
            }
        });
        assert_eq!(node.call("GET", &path, None).expect("get").0, 404, "round {round}: the delete won in the end");
        assert!(node.instances().is_empty(), "round {round}: instance left behind: {:?}", node.instances());
    }
    let started = std::time::Instant::now();
    let (status, v) = node.call("DELETE", "/v1/trace-session/all", None).expect("delete all");
    assert_eq!((status, &v), (200, &json!({})), "DELETE all after the races");
    assert!(started.elapsed() < Duration::from_secs(2), "DELETE all took {:?}", started.elapsed());
    assert_eq!(reader_threads(node.pid()), 0, "reader threads outlived their runs");
    rt.delete(&cid).expect("delete container");
}

#[test]
fn bad_session_requests_get_the_right_status_and_change_nothing() {
    if !require(&["runc"]) {
        return;
    }
    let node = Node::start().expect("tracer-node");
    let rt = Runtime::new("runc").expect("runc");
    let pod = unique("bad");
    let (cid, _) = looping_container(&node, &rt, &pod, LOOP_SCRIPT);
    let post = |body: &str| node.call("POST", "/v1/trace-session", Some(body)).expect("post");
    let ok = |hook: &str, args: &str| {
        json!({"pod": pod, "container": "*", "trace-hook": hook, "trace-arguments": args}).to_string()
    };
    let cases: Vec<(String, u16, &str)> = vec![
        (ok("no_such_hook", ""), 404, "unknown trace hook"),
        (ok("trace_syscalls", "-s openat nosuchsyscall"), 400, "nosuchsyscall"),
        (ok("trace_syscalls", "-t soon"), 400, "bad trace arguments"),
        (ok("trace_events", "-e sched:sched_switch -f prev_pid = 1"), 400, "filter"),
        (ok("trace_events", "-e sched:sched_switch -f nofield == 1"), 400, "nofield"),
        (ok("trace_events", "-e nosys:noevent"), 400, "unknown event"),
        ("{not json".into(), 400, "malformed JSON"),
        (json!({"pod": pod, "trace-hook": "trace_syscalls"}).to_string(), 400, "container"),
        (json!({"pod": pod, "container": "*", "trace-hook": "trace_exec", "bogus": 1}).to_string(), 400, "bogus"),
        (
            json!({"pod": "nothing-matches-*", "container": "*", "trace-hook": "trace_exec"}).to_string(),
            404,
            "no container",
        ),
        (json!({"pod": "", "container": "*", "trace-hook": "trace_exec"}).to_string(), 400, "pattern"),
    ];
    for (body, status, says) in &cases {
        let (got, v) = post(body);
        assert_eq!(got, *status, "{body}: {v}");
        let err = v["Error"].as_str().unwrap_or_else(|| panic!("{body}: no Error in {v}"));
        assert!(err.contains(says), "{body}: {err:?} should mention {says:?}");
    }
    let huge =
        json!({"pod": pod, "container": "*", "trace-hook": "trace_exec", "trace-user-context": "x".repeat(200_000)});
    let (got, v) = post(&huge.to_string());
    assert_eq!(got, 413, "{v}");
    for (method, path, body, status) in [
        ("GET", "/v1/trace-session/12abc", None, 400),
        ("GET", "/v1/trace-session/99999999999999999999999", None, 400),
        ("GET", "/v1/trace-session/42", None, 404),
        ("PUT", "/v1/trace-session/42", Some(r#"{"Run": true}"#), 404),
        ("PUT", "/v1/trace-session/all", Some(r#"{"Run": true}"#), 400),
        ("DELETE", "/v1/trace-session/x", None, 400),
        ("GET", "/v1/trace-session/42/events", None, 404),
    ] {
        let (got, v) = node.call(method, path, body).expect("call");
        assert_eq!(got, status, "{method} {path}: {v}");
        assert!(v["Error"].is_string(), "{method} {path}: {v}");
    }
    // A PUT with a bad body on a real session changes nothing.
    let sid = node.create_session(&json!({"pod": pod, "container": "*", "trace-hook": "trace_exec"})).expect("create");
    let (got, _) = node.call("PUT", &format!("/v1/trace-session/{sid}"), Some(r#"{"Run": "yes"}"#)).expect("put");
    assert_eq!(got, 400);
    assert_eq!(node.session(&sid).expect("s")["Running"], false);
    let all = node.call("GET", "/v1/trace-session/all", None).expect("all").1;
    assert_eq!(all.as_object().map(|o| o.len()), Some(1), "failed requests created nothing: {all}");
    assert!(node.instances().is_empty());
    rt.delete(&cid).expect("delete");
}

#[test]
fn a_following_stream_delivers_live_events_and_ends_when_the_session_stops() {
    if !require(&["runc"]) {
        return;
    }
    let node = Node::start().expect("tracer-node");
    let rt = Runtime::new("runc").expect("runc");
    let pod = unique("follow");
    let (cid, _) = looping_container(&node, &rt, &pod, LOOP_SCRIPT);
    let sid = node
        .create_session(
            &json!({"pod": pod, "container": "*", "trace-hook": "trace_syscalls", "trace-arguments": "-s openat"}),
        )
        .expect("create");
    node.run_session(&sid, true).expect("start");
    let url = format!("{}/v1/trace-session/{sid}/events?follow=true", node.url);
    let reader = std::thread::spawn(move || {
        let resp = agent().get(&url).call().expect("follow");
        assert_eq!(resp.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("application/x-ndjson"));
        let lines = BufReader::new(resp.into_body().into_reader()).lines();
        lines.map(|l| l.expect("line")).filter(|l| !l.is_empty()).count()
    });
    std::thread::sleep(Duration::from_millis(1500));
    node.run_session(&sid, false).expect("stop");
    let streamed = reader.join().expect("reader");
    let stats = node.call("GET", &format!("/v1/trace-session/{sid}/stats"), None).expect("stats").1;
    assert!(streamed > 10, "streamed {streamed}");
    assert_eq!(stats["events_dropped"], 0, "{stats}");
    assert_eq!(Some(streamed as u64), stats["events_read"].as_u64(), "everything read was streamed: {stats}");
    rt.delete(&cid).expect("delete");
}

#[test]
fn a_hook_the_kernel_refuses_fails_with_a_clear_error_and_leaves_nothing() {
    if !require(&["runc"]) {
        return;
    }
    // Whether this kernel allows the function tracer, asked of a probe instance of our own.
    let probe = std::path::Path::new("/sys/kernel/tracing/instances").join(unique("ct-probe"));
    std::fs::create_dir(&probe).expect("probe instance");
    let locked_down = std::fs::write(probe.join("current_tracer"), "function").is_err();
    let _ = std::fs::write(probe.join("current_tracer"), "nop");
    std::fs::remove_dir(&probe).expect("remove probe instance");
    let node = Node::start().expect("tracer-node");
    let rt = Runtime::new("runc").expect("runc");
    let pod = unique("func");
    let (cid, _) = looping_container(&node, &rt, &pod, LOOP_SCRIPT);
    let sid = node
        .create_session(
            &json!({"pod": pod, "container": "*", "trace-hook": "trace_functions", "trace-arguments": "-f vfs_*"}),
        )
        .expect("create");
    let (status, v) = node.call("PUT", &format!("/v1/trace-session/{sid}"), Some(r#"{"Run": true}"#)).expect("put");
    if locked_down {
        assert_eq!(status, 400, "{v}");
        let s = node.session(&sid).expect("session");
        assert_eq!(s["Running"], false);
        let err = s["Error"][0].as_str().expect("Error set");
        assert!(err.contains("function tracer") && err.contains("lockdown"), "{err}");
        assert!(v["Error"].as_str().is_some_and(|e| e.contains("function tracer")), "{v}");
    } else {
        assert_eq!(status, 200, "{v}");
        node.run_session(&sid, false).expect("stop");
    }
    assert!(node.instances().is_empty(), "no instance left: {:?}", node.instances());
    rt.delete(&cid).expect("delete");
}

#[test]
fn an_external_provider_script_is_listed_and_runs_with_the_containers_pids() {
    if !require(&["runc"]) {
        return;
    }
    let hooks = tempfile::tempdir().expect("hooks dir");
    let provider = hooks.path().join("demo");
    std::fs::create_dir(&provider).expect("mkdir");
    let record = hooks.path().join("record.txt");
    let script = format!(
        r#"#!/bin/sh
# A provider honouring the original protocol.
case "$1" in
  --get-all) echo "trace_demo" ;;
  --describe) echo "Demo hook"; echo "  -x : nothing" ;;
  --clear) echo cleared >> "{record}" ;;
  --run)
    echo "args=$4 pids=$TRACER_PIDS procfs=$TRACER_PROCFS_PATH" >> "{record}"
    echo "/tmp/demo-trace-$TRACER_SESSION_ID"
    trap 'echo stopped >> "{record}"; exit 0' INT
    while :; do sleep 0.05; done ;;
  *) echo "unknown call $1" >&2; exit 2 ;;
esac
"#,
        record = record.display()
    );
    let manager = provider.join("manager.sh");
    std::fs::write(&manager, script).expect("write manager");
    std::os::unix::fs::PermissionsExt::set_mode(&mut std::fs::metadata(&manager).expect("meta").permissions(), 0o755);
    std::fs::set_permissions(&manager, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    // A broken provider next to it is skipped, not fatal.
    let broken = hooks.path().join("broken");
    std::fs::create_dir(&broken).expect("mkdir");
    std::fs::write(broken.join("manager.py"), "#!/bin/sh\nexit 1\n").expect("write");
    std::fs::set_permissions(broken.join("manager.py"), std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");

    let dir = hooks.path().display().to_string();
    let node = Node::start_with(&["--trace-hooks", &dir]).expect("tracer-node");
    let (_, listed) = node.call("GET", "/v1/trace-hooks", None).expect("hooks");
    let demo = listed
        .as_array()
        .and_then(|a| a.iter().find_map(|p| p.get("trace-hooks/demo")))
        .unwrap_or_else(|| panic!("provider not listed: {listed}"));
    assert_eq!(demo["Tracers"]["trace_demo"]["Description"], json!(["Demo hook", "-x : nothing"]));
    assert_eq!(demo["Tracers"]["trace_demo"]["Name"], "trace_demo");
    assert!(listed.as_array().is_some_and(|a| a.iter().all(|p| p.get("trace-hooks/broken").is_none())));

    let rt = Runtime::new("runc").expect("runc");
    let pod = unique("ext");
    let (cid, init) = looping_container(&node, &rt, &pod, LOOP_SCRIPT);
    let sid = node
        .create_session(&json!({"pod": pod, "container": "*", "trace-hook": "trace_demo", "trace-arguments": "-x 1"}))
        .expect("create");
    node.run_session(&sid, true).expect("start");
    let s = node.session(&sid).expect("session");
    assert_eq!(s["Running"], true);
    assert_eq!(s["Output"], json!([format!("/tmp/demo-trace-{sid}")]));
    let text = std::fs::read_to_string(&record).expect("record");
    assert!(text.contains("args=-x 1 --pid "), "{text}");
    assert!(text.contains(&init.to_string()), "the container's pids are passed: {text}");
    assert!(text.contains("procfs=/proc"), "{text}");
    node.run_session(&sid, false).expect("stop");
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read_to_string(&record).is_ok_and(|t| t.contains("stopped")))
    );
    assert_eq!(node.session(&sid).expect("s")["Running"], false);
    node.call("DELETE", "/v1/trace-session/all", None).expect("delete all");
    assert!(std::fs::read_to_string(&record).expect("record").contains("cleared"), "DELETE all resets providers");
    rt.delete(&cid).expect("delete");
}

/// With several containers in one session, a process that exited before its events were read
/// can no longer be tied to its container through procfs; the session follows the kernel's
/// fork events instead. Every event of a fork-heavy container, beside quieter ones, carries its
/// own container, in a session whose hook asks for fork events and in one whose does not.
#[test]
fn every_event_of_a_multi_container_session_is_attributed_to_its_own_container() {
    if !require(&["runc"]) {
        return;
    }
    let node = Node::start().expect("tracer-node");
    let rt = Runtime::new("runc").expect("runc");
    let prefix = unique("attr");
    let (busy, quiet) = (format!("{prefix}-busy"), format!("{prefix}-quiet"));
    let (busy_id, busy_init) = looping_container(&node, &rt, &busy, "while :; do cat /dev/null; done");
    let (quiet_id, quiet_init) =
        looping_container(&node, &rt, &quiet, "while :; do ls /dev/null >/dev/null; sleep 0.02; done");
    let pattern = format!("{prefix}-*");
    let exec = node
        .create_session(&json!({"pod": pattern, "container": "*", "trace-hook": "trace_exec"}))
        .expect("exec session");
    let opens = node
        .create_session(&json!({"pod": pattern, "container": "*", "trace-hook": "trace_syscalls",
                                "trace-arguments": "-s openat"}))
        .expect("syscall session");
    for sid in [&exec, &opens] {
        node.run_session(sid, true).expect("start");
    }
    std::thread::sleep(Duration::from_secs(3));
    for sid in [&exec, &opens] {
        node.run_session(sid, false).expect("stop");
    }
    // The truth, from the kernel's own fork and exit events of the exec session: each child
    // forked by a container's init, and the time it lived, belongs to that container (the
    // test does not trust commands: those of exited processes come from the kernel's small
    // saved_cmdlines table, and thread ids are reused once the pid space wraps).
    let exec_events = node.events(&exec).expect("exec events");
    let mut exits: HashMap<i64, Vec<u64>> = HashMap::new();
    for e in exec_events.iter().filter(|e| e["event"] == "sched_process_exit") {
        if let (Some(pid), Some(ts)) = (e["pid"].as_i64(), e["timestamp"].as_u64()) {
            exits.entry(pid).or_default().push(ts);
        }
    }
    let mut lives: HashMap<i64, Vec<(u64, u64, &str)>> = HashMap::new();
    for e in exec_events.iter().filter(|e| e["event"] == "sched_process_fork") {
        let pod = match e["fields"]["parent_pid"].as_i64() {
            Some(p) if p == i64::from(busy_init) => busy.as_str(),
            Some(p) if p == i64::from(quiet_init) => quiet.as_str(),
            _ => continue,
        };
        let (Some(child), Some(start)) = (e["fields"]["child_pid"].as_i64(), e["timestamp"].as_u64()) else {
            continue;
        };
        let end = exits.get(&child).and_then(|t| t.iter().copied().filter(|t| *t >= start).min()).unwrap_or(u64::MAX);
        lives.entry(child).or_default().push((start, end, pod));
    }
    assert!(lives.len() > 100, "only {} children of the inits forked", lives.len());
    let owner = |e: &Value| {
        let (pid, ts) = (e["pid"].as_i64()?, e["timestamp"].as_u64()?);
        lives.get(&pid)?.iter().find(|(start, end, _)| *start <= ts && ts <= *end).map(|l| l.2)
    };
    for (sid, what) in [(&exec, "exec"), (&opens, "openat")] {
        let events = node.events(sid).expect("events");
        let unattributed: Vec<&Value> = events.iter().filter(|e| e["container"] == "").collect();
        assert!(
            unattributed.is_empty(),
            "{what}: {} of {} events without a container, e.g. {:?}; readers that gave up waiting: {:?}",
            unattributed.len(),
            events.len(),
            &unattributed[..unattributed.len().min(3)],
            node.log().lines().filter(|l| l.contains("did not catch up")).collect::<Vec<_>>()
        );
        let mut checked = 0;
        for e in &events {
            if let Some(pod) = owner(e) {
                // Everything the truth holds of this thread id goes in the message: the one failure
                // seen (1 run of ~40 under load) printed the event alone and could not be explained.
                assert_eq!(
                    e["pod"],
                    pod,
                    "{what}: an event attributed to the wrong container: {e}; lives of its id (fork, exit, pod): {:?}",
                    e["pid"].as_i64().and_then(|p| lives.get(&p))
                );
                checked += 1;
            }
        }
        assert!(checked > 100, "{what}: only {checked} events of the inits' children");
    }
    rt.delete(&busy_id).expect("delete");
    rt.delete(&quiet_id).expect("delete");
}

/// Attaching a new container writes the pid filter of every matching running session, and the
/// kernel serialises those writes behind an RCU grace period each (tens of ms). With 40 such
/// sessions the hook is still answered within its deadline (nothing is spooled), the work runs
/// off the async workers (`/healthz` answers meanwhile), and every session gets the container.
#[test]
fn a_container_created_under_forty_running_sessions_is_answered_in_time_and_attached_to_all() {
    if !require(&["runc"]) {
        return;
    }
    let node = Node::start_with(&["--max-running-sessions", "40"]).expect("tracer-node");
    let rt = Runtime::new("runc").expect("runc");
    let prefix = unique("many");
    // Every session traces a container already: each new pid filter write then replaces a
    // list, which is what costs the kernel a grace period.
    let (old, _) = looping_container(&node, &rt, &format!("{prefix}-old"), LOOP_SCRIPT);
    let pod = format!("{prefix}-new");
    let sessions: Vec<String> = (0..40)
        .map(|_| {
            let sid = node
                .create_session(&json!({"pod": format!("{prefix}-*"), "container": "*", "trace-hook": "trace_exec"}))
                .expect("create");
            node.run_session(&sid, true).expect("start");
            sid
        })
        .collect();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (id, init, worst) = std::thread::scope(|scope| {
        let poller = scope.spawn(|| {
            let mut worst = Duration::ZERO;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = std::time::Instant::now();
                agent().get(&format!("{}/healthz", node.url)).call().expect("healthz");
                worst = worst.max(t.elapsed());
                std::thread::sleep(Duration::from_millis(5));
            }
            worst
        });
        let id = unique("ct-many");
        // The hook gets a whole second (its default is 250 ms): on a loaded machine the rest of
        // the registration must fit beside the daemon's 150 ms attach budget, and the point is
        // that attaching 40 sessions (about 1.8 s) does not hold the answer, not the margin.
        let mut hooks = Bundle::hooks_for(&node);
        hooks["createRuntime"][0]["args"].as_array_mut().expect("args").push(json!("--deadline-ms=1000"));
        let bundle =
            Bundle::new(&["sh", "-c", "sleep 4"], &containerd_annotations(&pod, "ns", "app"), hooks).expect("bundle");
        rt.create(&id, &bundle).expect("create");
        let init = rt.pid(&id).expect("pid");
        rt.start(&id).expect("start");
        rt.keep(bundle);
        let attached = wait_until(Duration::from_secs(10), || {
            sessions.iter().all(|sid| node.session(sid).expect("session")["Containers"][&pod] == json!(["app"]))
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(attached, "every session gets the container");
        (id, init, poller.join().expect("poller"))
    });
    let spooled: Vec<_> = std::fs::read_dir(node.spool()).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(spooled.is_empty(), "the hook was answered in time, nothing spooled: {spooled:?}");
    assert!(!node.log().contains("spooled"), "the hook delivered its event live");
    assert!(wait_until(Duration::from_secs(10), || node.container(&pod, "app").expect("pods").is_none()), "exit");
    let mut first_exec = 0;
    for sid in &sessions {
        node.run_session(sid, false).expect("stop");
        let events = node.events(sid).expect("events");
        let exec = events.iter().find(|e| e["event"] == "sched_process_exec" && e["pod"] == pod.as_str());
        if exec.is_some_and(|e| e["pid"] == i64::from(init)) {
            first_exec += 1;
        }
        assert!(events.iter().any(|e| e["pod"] == pod.as_str()), "session {sid} traced the container");
    }
    println!("40 sessions: {first_exec} saw the container's first exec; worst /healthz {worst:?} meanwhile");
    assert!(first_exec >= 1, "the sessions attached within the budget see the first exec");
    let _ = rt.delete(&id);
    rt.delete(&old).expect("delete");
}

/// Sessions, running sessions and the kernel memory of their ring buffers are bounded; past a
/// bound the answer is a 429 naming the flag, and a place freed can be taken again.
#[test]
fn session_limits_answer_429_naming_the_flag_and_free_places_are_taken_again() {
    if !require(&["runc"]) {
        return;
    }
    let node = Node::start_with(&["--max-sessions", "3", "--max-running-sessions", "2"]).expect("tracer-node");
    let rt = Runtime::new("runc").expect("runc");
    let pod = unique("limits");
    let (cid, _) = looping_container(&node, &rt, &pod, LOOP_SCRIPT);
    let body = json!({"pod": pod, "container": "*", "trace-hook": "trace_exec"}).to_string();
    let ids: Vec<String> =
        (0..3).map(|_| node.create_session(&serde_json::from_str(&body).expect("json")).expect("create")).collect();
    let (status, v) = node.call("POST", "/v1/trace-session", Some(&body)).expect("post");
    assert_eq!(status, 429, "{v}");
    assert!(v["Error"].as_str().is_some_and(|e| e.contains("--max-sessions")), "{v}");
    node.run_session(&ids[0], true).expect("start 1");
    node.run_session(&ids[1], true).expect("start 2");
    let (status, v) = node.call("PUT", &format!("/v1/trace-session/{}", ids[2]), Some(r#"{"Run":true}"#)).expect("put");
    assert_eq!(status, 429, "{v}");
    assert!(v["Error"].as_str().is_some_and(|e| e.contains("--max-running-sessions")), "{v}");
    assert_eq!(node.instances().len(), 1, "the two running sessions share one recording; the refused start made none");
    node.run_session(&ids[0], false).expect("stop 1");
    node.run_session(&ids[2], true).expect("the freed place is taken");
    assert_eq!(node.call("DELETE", &format!("/v1/trace-session/{}", ids[1]), None).expect("delete").0, 200);
    node.create_session(&serde_json::from_str(&body).expect("json")).expect("a deleted session frees its place");
    assert_eq!(node.call("DELETE", "/v1/trace-session/all", None).expect("delete all").0, 200);

    // Kernel memory: 2 CPUs x 1024 KiB is more than a 1 MiB budget. The container goes first,
    // while the node its hooks talk to still runs (its poststop would spool otherwise).
    rt.delete(&cid).expect("delete");
    drop(node);
    let node = Node::start_with(&["--trace-buffer-kb", "1024", "--trace-memory-budget-mb", "1"]).expect("tracer-node");
    let sid = node
        .create_session(&json!({"pod": pod, "container": "*", "trace-hook": "trace_exec", "wait-for-containers": true}))
        .expect("create");
    let (status, v) = node.call("PUT", &format!("/v1/trace-session/{sid}"), Some(r#"{"Run":true}"#)).expect("put");
    assert_eq!(status, 429, "{v}");
    assert!(v["Error"].as_str().is_some_and(|e| e.contains("--trace-memory-budget-mb")), "{v}");
    assert!(node.instances().is_empty());
}
