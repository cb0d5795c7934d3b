//! Benchmark of issue #3: a traced container doing > 1 M getppid calls per second. Prints, for
//! the same workload, container-tracer (raw per-CPU pages), `perf record` and a plain text
//! `trace_pipe` reader: events captured vs calls made, kernel overruns, the workload's slowdown
//! and the tracer's CPU time. Run as root: `scripts/bench.sh`.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use e2e::{
    bench::{build_workload, cpu_ticks, getppid_instance, parse_ns, ticks_to_ms, workload_bundle, workload_rootfs},
    require, unique, wait_until, Node, Runtime,
};
use serde_json::json;

const CALLS: u64 = 4_000_000;

fn untraced(bin: &Path) -> f64 {
    let out = Command::new(bin).arg(CALLS.to_string()).output().expect("workload");
    parse_ns(&out.stdout)
}

fn container_tracer(bin: &Path, dir: &Path) {
    let node = Node::start().expect("tracer-node");
    let rt = Runtime::new("runc").expect("runc");
    let pod = unique("bench");
    let sid = node
        .create_session(&json!({"pod": pod, "container": "*", "trace-hook": "trace_syscalls",
            "trace-arguments": "-s sys_enter_getppid", "wait-for-containers": true}))
        .expect("session");
    node.run_session(&sid, true).expect("start");
    let root = workload_rootfs(bin, dir);
    let mut bundle = workload_bundle(&node, &pod, &root, &["/bin/getppid", &CALLS.to_string()]);
    let cpu0 = cpu_ticks(node.pid());
    let out = rt.run(&unique("ct-bench"), &bundle).expect("runc run");
    let workload_ms = parse_ns(&out.stdout);
    // Let the readers drain what is left in the kernel buffers.
    let stats = || node.call("GET", &format!("/v1/trace-session/{sid}/stats"), None).expect("stats").1;
    let mut last = 0;
    wait_until(Duration::from_secs(30), || {
        let n = stats()["events_read"].as_u64().unwrap_or(0);
        let settled = n == last && n > 0;
        last = n;
        std::thread::sleep(Duration::from_millis(200));
        settled
    });
    node.run_session(&sid, false).expect("stop");
    let cpu = cpu_ticks(node.pid()) - cpu0;
    let s = stats();
    let read = s["events_read"].as_u64().unwrap_or(0);
    println!("container-tracer (raw per-CPU pages, session in a runc container):");
    println!(
        "  calls {CALLS}, events read {read} ({:.2}%), kernel overrun {}, dropped {}",
        100.0 * read as f64 / CALLS as f64,
        s["events_lost_kernel"],
        s["events_dropped"]
    );
    println!(
        "  workload {workload_ms:.0} ms ({:.2} M calls/s), tracer-node CPU {:.0} ms ({:.0} ms per million events)",
        CALLS as f64 / workload_ms / 1e3,
        ticks_to_ms(cpu),
        ticks_to_ms(cpu) / (read as f64 / 1e6)
    );
    bundle.dir = tempfile::tempdir().expect("swap");
}

fn perf_record(bin: &Path, dir: &Path) {
    let p = e2e::bench::perf_record(bin, dir, CALLS);
    println!("perf record -e syscalls:sys_enter_getppid:");
    println!("  samples {} of {CALLS} calls, {}", p.samples, p.lost);
    println!("  workload {:.0} ms, perf record wall {:.0} ms", p.workload_ms, p.wall_ms);
}

fn text_trace_pipe(bin: &Path) {
    let (inst, mut child) = getppid_instance(bin, CALLS, None);
    let lines = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let pipe = fs::File::open(inst.join("trace_pipe")).expect("trace_pipe");
    let (l2, d2) = (lines.clone(), done.clone());
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::with_capacity(1 << 20, pipe);
        let mut line = String::new();
        while !d2.load(Ordering::Relaxed) {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    l2.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    child.stdin.take().expect("stdin").write_all(b"go\n").expect("go");
    let out = child.wait_with_output().expect("wait");
    let mut last = 0;
    wait_until(Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(300));
        let n = lines.load(Ordering::Relaxed);
        let settled = n == last;
        last = n;
        settled
    });
    fs::write(inst.join("tracing_on"), "0").expect("off");
    let overrun: u64 = (0..64)
        .filter_map(|c| fs::read_to_string(inst.join(format!("per_cpu/cpu{c}/stats"))).ok())
        .filter_map(|t| t.lines().find_map(|l| l.strip_prefix("overrun:")).and_then(|v| v.trim().parse::<u64>().ok()))
        .sum();
    done.store(true, Ordering::Relaxed);
    // The reader blocks in read(): a marker event wakes it.
    let _ = fs::write(inst.join("trace_marker"), "end\n");
    let _ = fs::write(inst.join("tracing_on"), "1");
    let _ = fs::write(inst.join("trace_marker"), "end\n");
    let _ = reader.join();
    let read = lines.load(Ordering::Relaxed);
    println!("text trace_pipe, one reader:");
    println!(
        "  lines read {read} of {CALLS} calls ({:.2}%), kernel overrun {overrun}",
        100.0 * read as f64 / CALLS as f64
    );
    println!("  workload {:.0} ms", parse_ns(&out.stdout));
    let _ = fs::write(inst.join("tracing_on"), "0");
    let _ = fs::remove_dir(&inst);
}

fn main() {
    if !require(&["runc", "gcc", "perf"]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = build_workload(dir.path());
    println!("workload: {CALLS} getppid() calls, static binary; untraced {:.0} ms", untraced(&bin));
    container_tracer(&bin, dir.path());
    perf_record(&bin, dir.path());
    text_trace_pipe(&bin);
}
