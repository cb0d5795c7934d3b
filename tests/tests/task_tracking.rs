//! `GET /v1/pods` from memory: the task tracker's answer against a fresh read of the
//! container's cgroup, on a real runc container forking as fast as it can, with a process
//! entering it through `runc exec`, and the host forking too.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use e2e::{containerd_annotations, get_text, require, unique, wait_until, Bundle, Node, Runtime};

/// The container's cgroup directory, read the way a user would: the unified hierarchy on a
/// cgroup v2 host, else the `pids` controller's.
fn cgroup_dir(init: u32) -> PathBuf {
    let text = fs::read_to_string(format!("/proc/{init}/cgroup")).expect("cgroup file");
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let path = text
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            Some((it.next()?, it.next()?, it.next()?))
        })
        .find(|(id, c, _)| if v2 { *id == "0" } else { c.split(',').any(|x| x == "pids") })
        .map(|(_, _, p)| p.trim_start_matches('/').to_owned())
        .expect("the container's cgroup line");
    let root = if v2 { PathBuf::from("/sys/fs/cgroup") } else { PathBuf::from("/sys/fs/cgroup/pids") };
    root.join(path)
}

/// Every process in `dir` and its child cgroups, now.
fn scan(dir: &Path) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(text) = fs::read_to_string(d.join("cgroup.procs")) {
            out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    out
}

/// (tasks, parent) of the container as `/v1/pods` lists it.
fn listed(node: &Node, pod: &str) -> (Vec<u32>, u32) {
    let c = node.container(pod, "forker").expect("pods").expect("the container is listed");
    let tasks = c["Tasks"].as_array().expect("Tasks").iter().map(|t| t.as_u64().expect("pid") as u32).collect();
    (tasks, c["Parent"][0].as_u64().expect("Parent") as u32)
}

/// Whether `pid` is gone, a zombie or inside exit (`PF_EXITING`): the tracker drops a process
/// at its exit event, which the kernel records a little before the process leaves its cgroup
/// (on a busy machine the exiting task can be preempted in between for milliseconds).
fn exiting_or_gone(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return true };
    let Some(end) = stat.rfind(')') else { return true };
    let fields: Vec<&str> = stat[end + 2..].split(' ').collect();
    let flags: u64 = fields.get(6).and_then(|f| f.parse().ok()).unwrap_or(0);
    matches!(fields.first(), Some(&"Z") | Some(&"X")) || flags & 0x4 != 0
}

fn ppid(pid: u32) -> u32 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("comm end") + 2..];
    after.split(' ').nth(1).and_then(|p| p.parse().ok()).expect("ppid")
}

/// The value of an unlabelled-or-labelled metric line of `/metrics`.
fn metric(node: &Node, line_start: &str) -> u64 {
    get_text(&format!("{}/metrics", node.url))
        .lines()
        .find_map(|l| l.strip_prefix(line_start).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no metric {line_start}"))
}

/// The two looping shells (not the init, whose command line holds theirs).
fn loop_shells(procs: &BTreeSet<u32>, init: u32) -> Vec<u32> {
    procs
        .iter()
        .copied()
        .filter(|p| *p != init)
        .filter(|p| fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains("while")))
        .collect()
}

#[test]
fn pods_lists_what_a_fresh_scan_finds_under_fork_heavy_load() {
    if !require(&["runc"]) {
        return;
    }
    let node = Node::start().expect("tracer-node");
    let rt = Runtime::new("runc").expect("runc");
    let pod = unique("tasks");
    // A stable sleep, a shell forking /bin/true as fast as it can, and one starting and
    // killing sleeps (processes that live a little while).
    let script = "sleep 1000 & \
        sh -c 'while :; do /bin/true; done' & \
        sh -c 'while :; do sleep 1000 & p=$!; /bin/true; kill $p; wait $p; done' & \
        wait";
    let bundle =
        Bundle::new(&["sh", "-c", script], &containerd_annotations(&pod, "ns", "forker"), Bundle::hooks_for(&node))
            .expect("bundle");
    let id = unique("ct-tasks");
    rt.create(&id, &bundle).expect("create");
    let init = rt.pid(&id).expect("pid");
    rt.start(&id).expect("start");
    rt.keep(bundle);
    let dir = cgroup_dir(init);
    assert!(wait_until(Duration::from_secs(10), || scan(&dir).len() >= 4), "the container's processes start");
    let memory_before = metric(&node, "container_tracer_pod_task_reads_total{source=\"memory\"}");

    // The host forks too: none of its processes may be listed.
    let host_load = AtomicBool::new(true);
    std::thread::scope(|s| {
        s.spawn(|| {
            while host_load.load(Ordering::Relaxed) {
                let _ = std::process::Command::new("/bin/true").status();
            }
        });
        // Stops the host's load however this scope ends (a failed assertion too).
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Relaxed);
            }
        }
        let _stop = Stop(&host_load);
        let started = Instant::now();
        let (mut rounds, mut exec_done) = (0u32, false);
        let mut previous_extra: BTreeSet<u32> = BTreeSet::new();
        while started.elapsed() < Duration::from_secs(8) || rounds < 40 {
            if !exec_done && started.elapsed() > Duration::from_secs(3) {
                // A process entering the container from outside: no descendant of its init.
                let out = rt.cmd(&["exec", "--detach", &id, "sleep", "999"]).expect("runc exec");
                assert!(out.status.success(), "runc exec: {}", String::from_utf8_lossy(&out.stderr));
                exec_done = true;
            }
            let before = scan(&dir);
            let (tasks, _) = listed(&node, &pod);
            let after = scan(&dir);
            rounds += 1;
            assert_eq!(tasks.first(), Some(&init), "the init comes first");
            let answer: BTreeSet<u32> = tasks.iter().copied().collect();
            assert_eq!(answer.len(), tasks.len(), "no process twice: {tasks:?}");
            // Alive before and after the request, and not exiting: listed.
            let stable: BTreeSet<u32> = before.intersection(&after).copied().collect();
            let missing: Vec<&u32> = stable.difference(&answer).filter(|p| !exiting_or_gone(**p)).collect();
            let what = |p: &u32| {
                let cmd = fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                let stat = fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
                format!("{p}: {:?} {stat}", String::from_utf8_lossy(&cmd))
            };
            assert!(
                missing.is_empty(),
                "round {rounds}: running processes not listed: {:?} (listed {tasks:?})",
                missing.iter().map(|p| what(p)).collect::<Vec<_>>()
            );
            // Listed but in neither read: born after the first and gone before the second, and
            // then never listed again (a process whose exit was missed would stay).
            let extra: BTreeSet<u32> = answer.difference(&before).filter(|p| !after.contains(p)).copied().collect();
            let ghosts: Vec<&u32> = previous_extra.intersection(&extra).collect();
            assert!(ghosts.is_empty(), "round {rounds}: processes listed long after they were gone: {ghosts:?}");
            previous_extra = extra;
        }
        host_load.store(false, Ordering::Relaxed);
        eprintln!("{rounds} rounds compared under load");
    });
    let memory_reads = metric(&node, "container_tracer_pod_task_reads_total{source=\"memory\"}") - memory_before;
    let rescans = metric(&node, "container_tracer_task_tracker_rescans_total");
    eprintln!("served from memory: {memory_reads}; tracker rescans: {rescans}");
    assert!(memory_reads >= 20, "most answers came from memory, not procfs ({memory_reads})");

    // The load stops: then the answer is exactly what the cgroup holds, exec'd process included.
    for shell in loop_shells(&scan(&dir), init) {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(shell as i32).expect("pid"),
            rustix::process::Signal::KILL,
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..5 {
        let before = scan(&dir);
        let (tasks, parent) = listed(&node, &pod);
        let answer: BTreeSet<u32> = tasks.iter().copied().collect();
        assert_eq!(answer, before, "quiet container: the answer is the cgroup's content");
        assert_eq!(parent, ppid(init), "the init's live parent");
        assert!(
            answer.iter().any(|p| fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep\x00999"))),
            "the exec'd process is listed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // `DELETE all` cleans up every session's instance, never the tracker's.
    let (status, _) = node.call("DELETE", "/v1/trace-session/all", None).expect("DELETE all");
    assert_eq!(status, 200);
    let tasks_instance = format!("/sys/kernel/tracing/instances/{}", node.tracker_instances()[0]);
    assert_eq!(fs::read_to_string(format!("{tasks_instance}/tracing_on")).expect("tracing_on").trim(), "1");
    let memory = metric(&node, "container_tracer_pod_task_reads_total{source=\"memory\"}");
    listed(&node, &pod);
    assert_eq!(metric(&node, "container_tracer_pod_task_reads_total{source=\"memory\"}"), memory + 1);

    rt.kill(&id).expect("kill");
    assert!(
        wait_until(Duration::from_secs(10), || node.container(&pod, "forker").expect("pods").is_none()),
        "the container is gone from /v1/pods"
    );
    assert_eq!(metric(&node, "container_tracer_task_tracker_up"), 1);
    // Deleted while the node runs: its poststop is delivered, not spooled into the node's
    // directory after the node is gone.
    rt.delete(&id).expect("delete");
    // A graceful stop removes the tracker's instances.
    let mut node = node;
    node.stop(true);
    assert_eq!(node.all_instances(), Vec::<String>::new(), "nothing left in tracefs");
}
