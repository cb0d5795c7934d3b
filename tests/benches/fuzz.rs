//! Runs every fuzz target of `e2e::fuzz` for `FUZZ_SECONDS` (20 by default) each and prints
//! executions, rate and findings.

use std::time::Duration;

use e2e::fuzz::{targets, Budget};

fn main() {
    let secs = std::env::var("FUZZ_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20u64);
    println!("fuzzing (proptest, {secs} s per target; random, mutated and grammar-generated inputs)");
    let mut total = 0;
    let mut findings = 0;
    for t in targets() {
        let r = (t.run)(Budget::Time(Duration::from_secs(secs)));
        println!(
            "  {:<16} {:>10} executions in {:.1} s ({:.0}/s), findings: {}",
            r.name,
            r.executions,
            r.elapsed.as_secs_f64(),
            r.executions as f64 / r.elapsed.as_secs_f64().max(1e-9),
            r.findings.len()
        );
        for f in &r.findings {
            println!("    finding: {f}");
        }
        total += r.executions;
        findings += r.findings.len();
    }
    println!("  all targets: {total} executions, {findings} findings");
}
