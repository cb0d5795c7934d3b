//! Helpers of the benchmarks: the static getppid workload, its rootfs, CPU accounting.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
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
