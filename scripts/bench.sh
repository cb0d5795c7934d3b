#!/usr/bin/env bash
# Runs the registry benchmarks (hook overhead on `runc run`, GET /v1/pods latency) and prints
# the figures. Needs root and what scripts/test.sh installs. BENCH_RUNS sets the runc runs (200).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --locked
cargo bench -p e2e --locked
