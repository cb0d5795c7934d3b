//! Helpers of the benchmarks: the static getppid workload, its rootfs, CPU accounting.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Instant,
};

use serde_json::json;

use crate::{containerd_annotations, rootfs, Bundle, Node};

/// Builds the static getppid workload into `dir`.
pub fn build_workload(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/getppid.c");
    let out = dir.join("getppid");
    let st = Command::new("gcc").args(["-O2", "-static", "-o"]).arg(&out).arg(&src).status().expect("gcc");
    assert!(st.success(), "gcc -static failed (libc6-dev installed?)");
    out
}

/// A rootfs with busybox and the workload, for the traced container.
pub fn workload_rootfs(bin: &Path, dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    let st = Command::new("cp").arg("-a").arg(rootfs()).arg(&root).status().expect("cp");
    assert!(st.success());
    fs::copy(bin, root.join("bin/getppid")).expect("copy workload");
    root
}

/// utime + stime of a process (all threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime (all threads) are fields 14 and 15: indexes 11 and 12 after the comm.
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

/// Clock ticks (USER_HZ 100) to ms.
pub fn ticks_to_ms(t: u64) -> f64 {
    t as f64 * 1000.0 / 100.0
}

/// The workload's own elapsed time (last number it printed, ns), in ms.
pub fn parse_ns(out: &[u8]) -> f64 {
    String::from_utf8_lossy(out).lines().rev().find_map(|l| l.trim().parse::<f64>().ok()).unwrap_or(f64::NAN) / 1e6
}

/// A bundle running `args` in `root` (a [`workload_rootfs`]) as container `w` of `pod`, with
/// `node`'s hooks.
pub fn workload_bundle(node: &Node, pod: &str, root: &Path, args: &[&str]) -> Bundle {
    let bundle = Bundle::new(args, &containerd_annotations(pod, "ns", "w"), Bundle::hooks_for(node)).expect("bundle");
    let cfg = bundle.dir.path().join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&fs::read(&cfg).expect("cfg")).expect("json");
    spec["root"]["path"] = json!(root);
    fs::write(&cfg, serde_json::to_vec(&spec).expect("ser")).expect("write cfg");
    bundle
}

/// What `perf record` made of the workload.
pub struct PerfRun {
    /// Samples it wrote (`perf report --stats`).
    pub samples: String,
    /// Its `LOST events` line.
    pub lost: String,
    /// The workload's own time, ms.
    pub workload_ms: f64,
    /// perf's wall time, ms.
    pub wall_ms: f64,
}

/// `perf record -e syscalls:sys_enter_getppid` of `calls` calls of the workload `bin`: the
/// reference for "every event captured".
pub fn perf_record(bin: &Path, dir: &Path, calls: u64) -> PerfRun {
    let data = dir.join("perf.data");
    let t = Instant::now();
    let out = Command::new("perf")
        .args(["record", "-q", "-e", "syscalls:sys_enter_getppid", "-o"])
        .arg(&data)
        .arg("--")
        .arg(bin)
        .arg(calls.to_string())
        .output()
        .expect("perf record");
    let wall_ms = t.elapsed().as_secs_f64() * 1e3;
    let report = Command::new("perf").args(["report", "--stats", "-i"]).arg(&data).output().expect("perf report");
    let text = String::from_utf8_lossy(&report.stdout);
    let samples = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("SAMPLE events:"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or("?")
        .to_owned();
    let lost = text
        .lines()
        .find(|l| l.contains("LOST events:"))
        .map(|l| l.trim().to_owned())
        .unwrap_or("LOST events: 0".into());
    let _ = fs::remove_file(&data);
    PerfRun { samples, lost, workload_ms: parse_ns(&out.stdout), wall_ms }
}

/// A new ftrace instance recording `sys_enter_getppid` of the workload `bin` (`calls` calls),
/// sized `buffer_kb` per CPU when given. The workload waits on its stdin, so that its pid is in
/// the filter before it runs: write a line to start it.
pub fn getppid_instance(bin: &Path, calls: u64, buffer_kb: Option<u64>) -> (PathBuf, Child) {
    let inst = Path::new("/sys/kernel/tracing/instances").join(crate::unique("ct-bench-inst"));
    fs::create_dir(&inst).expect("instance");
    fs::write(inst.join("tracing_on"), "0").expect("off");
    if let Some(kb) = buffer_kb {
        fs::write(inst.join("buffer_size_kb"), kb.to_string()).expect("buffer");
    }
    let child = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("read go; exec {} {calls}", bin.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("workload");
    fs::write(inst.join("set_event_pid"), child.id().to_string()).expect("pid");
    fs::write(inst.join("events/syscalls/sys_enter_getppid/enable"), "1").expect("enable");
    fs::write(inst.join("tracing_on"), "1").expect("on");
    (inst, child)
}

/// The kernel's own recording floor: `calls` calls of `bin` recorded by an ftrace instance of
/// `buffer_kb` per CPU that nobody reads (it overwrites). Answers the workload's time, ms.
pub fn unread_instance(bin: &Path, calls: u64, buffer_kb: u64) -> f64 {
    let (inst, mut child) = getppid_instance(bin, calls, Some(buffer_kb));
    child.stdin.take().expect("stdin").write_all(b"go\n").expect("go");
    let out = child.wait_with_output().expect("wait");
    let _ = fs::write(inst.join("tracing_on"), "0");
    let _ = fs::remove_dir(&inst);
    parse_ns(&out.stdout)
}

/// Threads of process `pid`.
pub fn threads(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0)
}

/// Kernel memory of the ring buffers of the instances whose names start with `prefix`, in MB
/// (`buffer_total_size_kb`).
pub fn ring_buffers_mb(prefix: &str) -> f64 {
    let Ok(dir) = fs::read_dir("/sys/kernel/tracing/instances") else { return 0.0 };
    dir.flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .filter_map(|e| fs::read_to_string(e.path().join("buffer_total_size_kb")).ok())
        .filter_map(|t| t.trim().parse::<f64>().ok())
        .sum::<f64>()
        / 1024.0
}
