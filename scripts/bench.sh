#!/usr/bin/env bash
# Runs the benchmarks and prints the figures: hook overhead on `runc run`, GET /v1/pods latency,
# a burst of 200 registrations and a session start over 200 containers (API latency meanwhile),
# lossless tracing of a 1 M+ syscalls/s container against perf and text trace_pipe, OTLP export
# rate and CPU, /healthz under slowloris, auth latency against the stand-in API server, the
# limits and RSS under floods, tracer-svc's fan-out over 1, 10 and 50 nodes, one kernel recording
# for 1, 10 and 100 sessions against the kernel's floor and perf record, the OTLP encoding alone, and every fuzz target for FUZZ_SECONDS (20) with its executions
# and findings.
# Needs root and what scripts/test.sh installs. BENCH_RUNS sets the runc runs (200).
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
for pkg in gcc libc6-dev linux-perf python3; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
if [ ${#missing[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cargo build --release --workspace --locked
cargo bench -p tracer-node --bench encode --locked
cargo bench -p e2e --locked
