//! Benchmark of issue #4: OTLP export of a traced getppid container to a local receiver
//! (`tests/otlp_receiver.py --count-only`, Python grpcio). Prints, per protocol:
//! 1. capacity: the workload at full speed with a queue large enough to hold everything, the
//!    rate at which events reach the receiver, and tracer-node CPU per million exported;
//! 2. sustained: the workload paced at 80% of that capacity, then at `BENCH_EXPORT_RATE`
//!    (1 M/s), for 10 s each with the default queue, and the drops (the target: none), export
//!    rate, CPU per million, and the receiver's CPU (where it is busy all along, it is the
//!    limit).
//!
//! Run as root: `scripts/bench.sh`.

use std::time::{Duration, Instant};

use e2e::{
    bench::{build_workload, cpu_ticks, parse_ns, ticks_to_ms, workload_bundle, workload_rootfs},
    require_otlp, unique, wait_until, Node, Receiver, Runtime,
};
use serde_json::{json, Value};

struct Phase {
    calls: u64,
    read: u64,
    exported: u64,
    dropped: u64,
    lost_kernel: u64,
    workload_ms: f64,
    export_s: f64,
    cpu_ms: f64,
    receiver_cpu_ms: f64,
}

fn stats(node: &Node, sid: &str) -> Value {
    node.call("GET", &format!("/v1/trace-session/{sid}/stats"), None).expect("stats").1
}

fn run_phase(node: &Node, receiver: &Receiver, root: &std::path::Path, calls: u64, rate: u64) -> Phase {
    let rt = Runtime::new("runc").expect("runc");
    let pod = unique("bench-otlp");
    let sid = node
        .create_session(&json!({"pod": pod, "container": "*", "trace-hook": "trace_syscalls",
            "trace-arguments": "-s sys_enter_getppid", "wait-for-containers": true}))
        .expect("session");
    node.run_session(&sid, true).expect("start");
    let before = receiver.counts()["logs"].as_u64().unwrap_or(0);
    let mut bundle = workload_bundle(node, &pod, root, &["/bin/getppid", &calls.to_string(), &rate.to_string()]);
    let cpu0 = cpu_ticks(node.pid());
    let receiver_cpu0 = receiver.pid().map_or(0, cpu_ticks);
    let t0 = Instant::now();
    let out = rt.run(&unique("ct-bench-otlp"), &bundle).expect("runc run");
    // Every event read is either at the receiver or counted as dropped.
    let mut export_s = 0.0;
    wait_until(Duration::from_secs(600), || {
        let s = stats(node, &sid);
        let got = receiver.counts()["logs"].as_u64().unwrap_or(0) - before;
        let read = s["events_read"].as_u64().unwrap_or(0);
        let dropped = s["events_export_dropped"].as_u64().unwrap_or(0);
        let lost = s["events_lost_kernel"].as_u64().unwrap_or(0);
        export_s = t0.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(50));
        // Events the kernel overwrote never come: they are reported, not waited for.
        read + lost >= calls && got + dropped >= read
    });
    let cpu = cpu_ticks(node.pid()) - cpu0;
    let receiver_cpu = receiver.pid().map_or(0, cpu_ticks) - receiver_cpu0;
    node.run_session(&sid, false).expect("stop");
    let s = stats(node, &sid);
    let _ = node.call("DELETE", &format!("/v1/trace-session/{sid}"), None);
    bundle.dir = tempfile::tempdir().expect("swap");
    Phase {
        calls,
        read: s["events_read"].as_u64().unwrap_or(0),
        exported: receiver.counts()["logs"].as_u64().unwrap_or(0) - before,
        dropped: s["events_export_dropped"].as_u64().unwrap_or(0),
        lost_kernel: s["events_lost_kernel"].as_u64().unwrap_or(0),
        workload_ms: parse_ns(&out.stdout),
        export_s,
        cpu_ms: ticks_to_ms(cpu),
        receiver_cpu_ms: ticks_to_ms(receiver_cpu),
    }
}

fn print(label: &str, p: &Phase) {
    println!("  {label}:");
    println!(
        "    calls {}, read {}, exported {}, dropped {}, kernel overrun {}",
        p.calls, p.read, p.exported, p.dropped, p.lost_kernel
    );
    println!(
        "    workload {:.0} ms ({:.0} k calls/s); all exported after {:.2} s: {:.0} k events/s exported",
        p.workload_ms,
        p.calls as f64 / p.workload_ms,
        p.export_s,
        p.exported as f64 / p.export_s / 1e3
    );
    println!(
        "    tracer-node CPU {:.0} ms = {:.0} ms per million exported (reading and exporting)",
        p.cpu_ms,
        p.cpu_ms / (p.exported.max(1) as f64 / 1e6)
    );
    // Where the receiver is busy all along, it is the limit of the rate, not tracer-node.
    println!(
        "    receiver CPU {:.0} ms over the {:.2} s: {:.0}% of a core",
        p.receiver_cpu_ms,
        p.export_s,
        p.receiver_cpu_ms / (p.export_s * 10.0)
    );
}

fn protocol(label: &str, root: &std::path::Path, grpc: bool, calls: u64, batch: &str) {
    let receiver = Receiver::start_counting().expect("receiver");
    let (endpoint, proto) = if grpc { (receiver.grpc_url(), "grpc") } else { (receiver.http_url(), "http/protobuf") };
    println!("OTLP {label} to the local Python receiver ({proto}, {batch} events per request):");
    let big = Node::start_with(&[
        "--otlp-endpoint",
        &endpoint,
        "--otlp-protocol",
        proto,
        "--otlp-queue-events",
        &(calls * 2).to_string(),
        "--otlp-batch-events",
        batch,
        "--trace-retention",
        "1000",
    ])
    .expect("node");
    let cap = run_phase(&big, &receiver, root, calls, 0);
    print("burst (full-speed workload, queue holds everything; its time includes the start and the last flush)", &cap);
    drop(big);
    let capacity = (cap.exported as f64 / cap.export_s) as u64;
    let rate = capacity * 8 / 10;
    // About 10 s of paced load with the default queue.
    let paced_calls = (rate * 10).max(100_000);
    let node = Node::start_with(&[
        "--otlp-endpoint",
        &endpoint,
        "--otlp-protocol",
        proto,
        "--otlp-batch-events",
        batch,
        "--trace-retention",
        "1000",
    ])
    .expect("node");
    let sustained = run_phase(&node, &receiver, root, paced_calls, rate);
    print(&format!("sustained (paced at {} k calls/s, default queue 262144)", rate / 1000), &sustained);
    // The burst's rate is bounded by the container's start and the last flush (up to a second
    // after the workload ended), not by throughput: the target rate is paced as well.
    let target: u64 = std::env::var("BENCH_EXPORT_RATE").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let at_target = run_phase(&node, &receiver, root, target * 10, target);
    print(&format!("sustained (paced at {} k calls/s, default queue 262144)", target / 1000), &at_target);
}

fn main() {
    if !require_otlp() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = build_workload(dir.path());
    let root = workload_rootfs(&bin, dir.path());
    let calls: u64 = std::env::var("BENCH_EXPORT_CALLS").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000_000);
    // BENCH_EXPORT_PROTOCOLS=http (or grpc) runs one protocol only (e.g. to profile it).
    let only = std::env::var("BENCH_EXPORT_PROTOCOLS").unwrap_or_default();
    // BENCH_EXPORT_BATCH sets --otlp-batch-events (the default, 8192, without).
    let batch = std::env::var("BENCH_EXPORT_BATCH").unwrap_or_else(|_| "8192".into());
    for (grpc, name) in [(true, "grpc"), (false, "http")] {
        if only.is_empty() || only.split(',').any(|p| p == name) {
            protocol("export", &root, grpc, calls, &batch);
        }
    }
}
