//! One kernel recording for many sessions: overlapping sessions share one ftrace instance and
//! one reader per CPU, and each still sees exactly its own events, with its own statistics and
//! its own stop, on real runc containers and the real tracefs.

use std::{collections::BTreeSet, time::Duration};

use e2e::{containerd_annotations, reader_threads, require, unique, wait_until, Bundle, Node, Runtime};
use serde_json::{json, Value};

/// Runs a container of `pod` named `name` doing `rounds` forked `cat`s, and waits until it is
/// gone; answers its id and init pid.
fn run_rounds(node: &Node, rt: &Runtime, pod: &str, name: &str, rounds: u32) -> (String, u32) {
    let id = unique("ct-shared");
    let script = format!("i=0; while [ $i -lt {rounds} ]; do cat /etc/hostname > /dev/null; i=$((i+1)); done");
    let bundle = Bundle::new(&["sh", "-c", &script], &containerd_annotations(pod, "ns", name), Bundle::hooks_for(node))
        .expect("bundle");
    rt.create(&id, &bundle).expect("create");
    let init = rt.pid(&id).expect("pid");
    rt.start(&id).expect("start");
    rt.keep(bundle);
    assert!(
        wait_until(Duration::from_secs(20), || node.container(pod, name).expect("pods").is_none()),
        "container {name} of {pod} ends"
    );
    (id, init)
}

/// (timestamp, cpu, pid, event) of each event: what tells two copies of one kernel event apart
/// from two events.
fn keys<'a>(events: impl IntoIterator<Item = &'a Value>) -> BTreeSet<(u64, u64, i64, String)> {
    events
        .into_iter()
        .map(|e| {
            (
                e["timestamp"].as_u64().expect("timestamp"),
                e["cpu"].as_u64().expect("cpu"),
                e["pid"].as_i64().expect("pid"),
                e["event"].as_str().expect("event").to_owned(),
            )
        })
        .collect()
}

fn is_openat(e: &Value) -> bool {
    e["event"] == "sys_enter_openat" || e["event"] == "sys_exit_openat"
}

#[test]
fn overlapping_sessions_share_one_recording_and_each_sees_exactly_its_own_events() {
    if !require(&["runc"]) {
        return;
    }
    let node = Node::start().expect("tracer-node");
    let rt = Runtime::new("runc").expect("runc");
    let (x, y) = (unique("shared-x"), unique("shared-y"));
    let session = |pod: &str, hook: &str, args: &str| {
        node.create_session(&json!({"pod": pod, "container": "*", "trace-hook": hook, "trace-arguments": args,
                                    "wait-for-containers": true}))
            .expect("create")
    };
    let openat = session(&x, "trace_syscalls", "-s openat");
    let all = session(&x, "trace_syscalls", "");
    let exec = session(&x, "trace_exec", "");
    let other_pod = session(&y, "trace_syscalls", "-s openat");
    // A string filter is the kernel's, which applies to every reader of an event: this one
    // gets a recording of its own. An integer filter is evaluated as records are routed: that
    // one shares.
    let filtered = session(&x, "trace_events", "-e sched:sched_process_exec -f filename ~ \"/proc/*\"");
    let shared_filter = session(&x, "trace_events", "-e syscalls:sys_exit_openat -f ret >= 0 && ret < 100");
    let ids = [&openat, &all, &exec, &other_pod, &filtered, &shared_filter];
    for sid in ids {
        node.run_session(sid, true).expect("start");
    }
    let shared = format!("{}rec", node.prefix);
    let mut instances = node.instances();
    instances.sort();
    let mut expected = vec![shared.clone(), format!("{}{filtered}", node.prefix)];
    expected.sort();
    assert_eq!(instances, expected, "five sessions on one recording, the kernel-filtered one on its own");
    let cpus = std::fs::read_dir(format!("/sys/kernel/tracing/instances/{shared}/per_cpu")).expect("per_cpu").count();
    // A new thread takes its name when it first runs: on a loaded machine that can be a while.
    assert!(
        wait_until(Duration::from_secs(5), || reader_threads(node.pid()) == 2 * cpus),
        "one reader per CPU per recording, not per session: {} readers",
        reader_threads(node.pid())
    );
    for sid in ids {
        assert!(node.session(sid).expect("s")["Output"][0].as_str().is_some_and(|o| o.starts_with("ftrace instance")));
    }

    let (cx, init_x) = run_rounds(&node, &rt, &x, "app", 100);
    let (cy, _) = run_rounds(&node, &rt, &y, "app", 20);
    // One session stops; the others go on, on the same recording, and see the next container.
    node.run_session(&openat, false).expect("stop openat");
    assert_eq!(node.instances().len(), 2, "the recording stays for the sessions left on it");
    let (cz, _) = run_rounds(&node, &rt, &x, "late", 10);
    for sid in [&all, &exec, &other_pod, &filtered, &shared_filter] {
        node.run_session(sid, false).expect("stop");
    }
    assert!(node.instances().is_empty(), "the last session closed the recording: {:?}", node.instances());
    assert!(wait_until(Duration::from_secs(5), || reader_threads(node.pid()) == 0), "readers stopped");

    let events = |sid: &str| node.events(sid).expect("events");
    let (ev_openat, ev_all, ev_exec, ev_other, ev_filtered, ev_shared_filter) =
        (events(&openat), events(&all), events(&exec), events(&other_pod), events(&filtered), events(&shared_filter));
    for (sid, evs) in [
        (&openat, &ev_openat),
        (&all, &ev_all),
        (&exec, &ev_exec),
        (&other_pod, &ev_other),
        (&shared_filter, &ev_shared_filter),
    ] {
        assert!(!evs.is_empty(), "session {sid} saw nothing");
        for e in evs.iter() {
            assert_eq!(e["session"], sid.as_str(), "{e}");
        }
        let (_, stats) = node.call("GET", &format!("/v1/trace-session/{sid}/stats"), None).expect("stats");
        assert_eq!(stats["events_read"].as_u64(), Some(evs.len() as u64), "session {sid}: {stats}");
        assert_eq!(stats["events_lost_kernel"], 0, "session {sid}: {stats}");
        assert_eq!(stats["events_dropped"], 0, "session {sid}: {stats}");
    }
    // A command is a command: the fork event's `__data_loc` commands (kernels since 6.10) were
    // once read as text, which gave processes gone before they were looked up names like "\u{1b}".
    for e in
        ev_openat.iter().chain(&ev_all).chain(&ev_exec).chain(&ev_other).chain(&ev_filtered).chain(&ev_shared_filter)
    {
        let comm = e["comm"].as_str().unwrap_or_default();
        assert!(!comm.chars().any(char::is_control), "a command with control characters: {e}");
    }
    // Only its pod, only its events.
    assert!(ev_openat.iter().all(|e| e["pod"] == x.as_str() && e["container_id"] == cx.as_str() && is_openat(e)));
    assert!(ev_other.iter().all(|e| e["pod"] == y.as_str() && e["container_id"] == cy.as_str() && is_openat(e)));
    assert!(ev_all.iter().all(|e| e["pod"] == x.as_str()), "the full-syscall session saw another pod");
    assert!(ev_all.iter().any(|e| !is_openat(e) && e["system"] == "syscalls"), "every system call, not only openat");
    let exec_events =
        ["sched_process_fork", "sched_process_exec", "sched_process_exit", "sys_enter_exit_group", "sys_enter_exit"];
    assert!(ev_exec.iter().all(|e| exec_events.contains(&e["event"].as_str().unwrap_or_default())));

    // The same kernel events, not copies or a subset: the openat session saw exactly what the
    // full-syscall session saw of openat in the container, both from its first instruction.
    let in_x = |e: &&Value| e["container_id"] == cx.as_str();
    let openat_of_all = keys(ev_all.iter().filter(in_x).filter(|e| is_openat(e)));
    assert_eq!(keys(&ev_openat), openat_of_all, "the openat session and the full-syscall one disagree");
    let execs: Vec<&Value> = ev_exec.iter().filter(in_x).filter(|e| e["event"] == "sched_process_exec").collect();
    assert_eq!(execs.first().map(|e| e["pid"].clone()), Some(json!(init_x)), "the container's first exec is first");
    // The init's exec, then one per round (busybox's sh runs `cat` as /proc/self/exe).
    assert_eq!(execs.len(), 101, "one exec per round");
    // The filtered sessions ran on while the late container came.
    let in_x_or_late = |e: &&Value| e["container_id"] == cx.as_str() || e["container_id"] == cz.as_str();
    let kernel_filtered = keys(ev_exec.iter().filter(in_x_or_late).filter(|e| {
        e["event"] == "sched_process_exec" && e["fields"]["filename"].as_str().is_some_and(|f| f.starts_with("/proc/"))
    }));
    assert_eq!(kernel_filtered.len(), 110, "the rounds' execs of /proc/self/exe");
    assert_eq!(
        keys(&ev_filtered).len(),
        kernel_filtered.len(),
        "the kernel-filtered session's own recording saw every exec it asked for"
    );
    let user_filtered = keys(ev_all.iter().filter(in_x_or_late).filter(|e| {
        e["event"] == "sys_exit_openat" && e["fields"]["ret"].as_i64().is_some_and(|r| (0..100).contains(&r))
    }));
    assert!(user_filtered.len() >= 110, "every round's cat opened its file: {}", user_filtered.len());
    assert_eq!(
        keys(&ev_shared_filter),
        user_filtered,
        "the session filtered on the shared recording saw exactly the records its filter takes"
    );
    // After its stop the openat session got nothing of the late container; the others did.
    assert!(ev_openat.iter().all(|e| e["container_id"] != cz.as_str()));
    assert!(ev_all.iter().any(|e| e["container_id"] == cz.as_str()), "the others go on after one stops");
    let late_execs: Vec<&Value> =
        ev_exec.iter().filter(|e| e["container_id"] == cz.as_str() && e["event"] == "sched_process_exec").collect();
    assert_eq!(late_execs.len(), 11);
}
