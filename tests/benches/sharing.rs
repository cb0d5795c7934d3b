//! Benchmark of issue 11, one kernel recording for many sessions. Prints, in one run:
//! - the kernel's recording floor beside us for 4 M getppid calls in a runc container:
//!   untraced, an ftrace instance recording them that nobody reads, tracer-node with 1 session,
//!   with 10 overlapping sessions and with 10 overlapping `trace_events -f` sessions (filtered
//!   in user space; each session's count and kernel losses), `perf record`;
//! - kernel memory (ring buffers), reader threads, all threads and RSS of tracer-node with 1,
//!   10 and 100 running sessions on one container;
//! - the time to stop 100 running sessions, and to delete them all.
//!
//! Run as root: `scripts/bench.sh` (or `cargo bench -p e2e --bench sharing`).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use e2e::{
    bench::{
        build_workload, cpu_ticks, parse_ns, perf_record, ring_buffers_mb, threads, ticks_to_ms, unread_instance,
        workload_bundle, workload_rootfs,
    },
    looping_container, reader_threads, require, rss_mb, unique, wait_until, Node, Runtime, LOOP_SCRIPT,
};
use serde_json::json;

const CALLS: u64 = 4_000_000;
/// The node's default per-CPU buffer, used for the floor's instance too.
const BUFFER_KB: u64 = 8192;

fn untraced(bin: &Path) -> f64 {
    let out = std::process::Command::new(bin).arg(CALLS.to_string()).output().expect("workload");
    parse_ns(&out.stdout)
}

/// `sessions` overlapping sessions of `hook` with `args` on the workload's container: the
/// workload's time, and per session (events read, kernel losses); tracer-node's CPU.
fn traced(bin: &Path, dir: &Path, sessions: usize, hook: &str, args: &str) -> (f64, Vec<(u64, u64)>, f64) {
    let node = Node::start().expect("tracer-node");
    let rt = Runtime::new("runc").expect("runc");
    let pod = unique("bench-share");
    let ids: Vec<String> = (0..sessions)
        .map(|_| {
            node.create_session(&json!({"pod": pod, "container": "*", "trace-hook": hook,
                "trace-arguments": args, "wait-for-containers": true}))
                .expect("session")
        })
        .collect();
    for sid in &ids {
        node.run_session(sid, true).expect("start");
    }
    let root = workload_rootfs(bin, dir);
    let mut bundle = workload_bundle(&node, &pod, &root, &["/bin/getppid", &CALLS.to_string()]);
    let cpu0 = cpu_ticks(node.pid());
    let out = rt.run(&unique("ct-bench"), &bundle).expect("runc run");
    let workload_ms = parse_ns(&out.stdout);
    let stats = |sid: &str| node.call("GET", &format!("/v1/trace-session/{sid}/stats"), None).expect("stats").1;
    // Until the readers have delivered what the kernel still holds.
    let mut last = 0;
    wait_until(Duration::from_secs(60), || {
        let n: u64 = ids.iter().map(|s| stats(s)["events_read"].as_u64().unwrap_or(0)).sum();
        let settled = n == last && n > 0;
        last = n;
        std::thread::sleep(Duration::from_millis(300));
        settled
    });
    let per_session = ids
        .iter()
        .map(|sid| {
            let s = stats(sid);
            (s["events_read"].as_u64().unwrap_or(0), s["events_lost_kernel"].as_u64().unwrap_or(0))
        })
        .collect();
    let cpu = ticks_to_ms(cpu_ticks(node.pid()) - cpu0);
    assert_eq!(node.call("DELETE", "/v1/trace-session/all", None).expect("delete").0, 200);
    let _ = std::fs::remove_dir_all(&root);
    bundle.dir = tempfile::tempdir().expect("swap");
    (workload_ms, per_session, cpu)
}

fn floor(bin: &Path, dir: &Path) {
    println!("== recording floor: {CALLS} getppid() calls, sys_enter_getppid recorded (2 runs each)");
    for round in 1..=2 {
        let base = untraced(bin);
        let unread = unread_instance(bin, CALLS, BUFFER_KB);
        println!("round {round}: untraced {base:.0} ms; an instance recording, no reader: {unread:.0} ms (the floor)");
        // A filter on an integer field is evaluated in user space: those sessions share too
        // (this one takes every call, so each count can be checked).
        let filtered = "-e syscalls:sys_enter_getppid -f common_pid > 0 && __syscall_nr >= 0";
        for (n, hook, args, what) in [
            (1, "trace_syscalls", "-s sys_enter_getppid", "session(s)"),
            (10, "trace_syscalls", "-s sys_enter_getppid", "session(s)"),
            (10, "trace_events", filtered, "filtered session(s)"),
        ] {
            let (ms, per, cpu) = traced(bin, dir, n, hook, args);
            let reads: Vec<u64> = per.iter().map(|p| p.0).collect();
            let lost: u64 = per.iter().map(|p| p.1).max().unwrap_or(0);
            // The container's runtime calls getppid too (runc's init, once): each session must have
            // at least the workload's calls, and all the same count.
            let same = reads.iter().all(|r| *r == reads[0] && *r >= CALLS);
            println!(
                "  tracer-node, {n:>2} {what}: workload {ms:.0} ms = {:.2}x the floor; events per session {}..{} \
                 (all equal and complete: {same}); most kernel overrun in a session {lost}; tracer-node CPU {cpu:.0} ms",
                ms / unread,
                reads.iter().min().unwrap_or(&0),
                reads.iter().max().unwrap_or(&0),
            );
        }
        let p = perf_record(bin, dir, CALLS);
        println!(
            "  perf record: workload {:.0} ms = {:.2}x the floor, {} samples, {}",
            p.workload_ms,
            p.workload_ms / unread,
            p.samples,
            p.lost
        );
    }
}

fn scale() {
    println!("== sessions on one container (a shell loop): kernel memory, threads, stop and delete");
    let node = Node::start_with(&["--max-running-sessions", "128"]).expect("tracer-node");
    let rt = Runtime::new("runc").expect("runc");
    let pod = unique("bench-scale");
    let (cid, _) = looping_container(&node, &rt, &pod, LOOP_SCRIPT);
    // A mix of hooks: openat, every system call, exec.
    let body = |i: usize| {
        let (hook, args) = match i % 3 {
            0 => ("trace_syscalls", "-s openat"),
            1 => ("trace_syscalls", ""),
            _ => ("trace_exec", ""),
        };
        json!({"pod": pod, "container": "*", "trace-hook": hook, "trace-arguments": args})
    };
    let (rss0, threads0) = (rss_mb(node.pid()), threads(node.pid()));
    println!("  idle: RSS {rss0:.1} MB, {threads0} threads");
    let mut ids: Vec<String> = Vec::new();
    for n in [1, 10, 100] {
        let (t, before) = (Instant::now(), ids.len());
        while ids.len() < n {
            let sid = node.create_session(&body(ids.len())).expect("create");
            node.run_session(&sid, true).expect("start");
            ids.push(sid);
        }
        let started = t.elapsed();
        std::thread::sleep(Duration::from_millis(500));
        println!(
            "  {n:>3} running sessions: ring buffers {:.1} MB in {} instance(s), {} reader threads, {} threads, RSS {:.1} MB \
             (starting {} more took {:.0} ms)",
            ring_buffers_mb(&node.prefix),
            node.instances().len(),
            reader_threads(node.pid()),
            threads(node.pid()),
            rss_mb(node.pid()),
            n - before,
            started.as_secs_f64() * 1e3
        );
    }
    // Stop all 100, from 10 clients at once.
    let t = Instant::now();
    std::thread::scope(|s| {
        for chunk in ids.chunks(10) {
            let node = &node;
            s.spawn(move || {
                for sid in chunk {
                    node.run_session(sid, false).expect("stop");
                }
            });
        }
    });
    let stopped = t.elapsed();
    for sid in &ids {
        node.run_session(sid, true).expect("start again");
    }
    let t = Instant::now();
    assert_eq!(node.call("DELETE", "/v1/trace-session/all", None).expect("delete all").0, 200);
    let deleted = t.elapsed();
    println!(
        "  stopping 100 running sessions: {:.0} ms; DELETE all of 100 running: {:.0} ms; instances left {}",
        stopped.as_secs_f64() * 1e3,
        deleted.as_secs_f64() * 1e3,
        node.instances().len()
    );
    rt.delete(&cid).expect("delete container");
}

fn main() {
    if !require(&["runc", "gcc", "perf"]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = build_workload(dir.path());
    floor(&bin, dir.path());
    scale();
}
