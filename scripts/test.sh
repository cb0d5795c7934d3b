#!/usr/bin/env bash
# Runs every check and test of container-tracer against the real kernel and container runtimes.
# Needs root. Installs what the tests use when it is missing (Debian/Ubuntu: apt), mounts
# tracefs, and makes crun usable on hybrid cgroup hosts. Idempotent: safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/test.sh: run as root (sudo $0): the tests start real containers and use tracefs" >&2
  exit 1
fi

# 1. Packages: runtimes, podman's helpers, a static busybox for the test rootfs.
missing=()
for pkg in runc crun podman conmon containerd busybox-static python3 openssl; do
  # The test rootfs needs the *static* busybox: the plain busybox package would not run in it.
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# 1b. Independent peers from PyPI, in a venv of their own (Debian's Python refuses system-wide
#     pip installs): the OTLP receiver of the export tests (opentelemetry-proto + grpcio), and for
#     the webhook tests an RFC 6902 implementation (jsonpatch) and the offline Kubernetes schema
#     validator (kubernetes-validate).
PYENV=/var/tmp/container-tracer-pyenv
if ! "$PYENV/bin/python" -c 'import grpc, opentelemetry.proto.collector.logs.v1.logs_service_pb2_grpc, jsonpatch, kubernetes_validate' 2>/dev/null; then
  echo "== installing the tests' Python packages into $PYENV"
  if ! python3 -m venv "$PYENV" 2>/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$PYENV"
  fi
  "$PYENV/bin/pip" install -q --disable-pip-version-check "opentelemetry-proto>=1.27,<2" "grpcio>=1.60,<2" \
    "jsonpatch>=1.33,<2" "kubernetes-validate>=1.30"
fi
export TRACER_TEST_PYTHON="$PYENV/bin/python"

# 2. tracefs (tracer-node mounts it too, but the tests look at it directly).
if [ ! -e /sys/kernel/tracing/trace ]; then
  mount -t tracefs nodev /sys/kernel/tracing
fi

# 3. crun refuses a hybrid cgroup layout (v1 controllers plus a unified hierarchy) while any
#    controller is enabled on the v2 side; mount those controllers as v1 instead.
if [ -f /sys/fs/cgroup/unified/cgroup.controllers ]; then
  for c in $(cat /sys/fs/cgroup/unified/cgroup.controllers); do
    mkdir -p "/sys/fs/cgroup/$c"
    mountpoint -q "/sys/fs/cgroup/$c" || mount -t cgroup -o "$c" cgroup "/sys/fs/cgroup/$c"
  done
fi

# 4. Lints, then build every binary (the end-to-end tests run the built runtime-hook and
#    tracer-node), then all tests.
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build"
cargo build --workspace --all-targets --locked
echo "== cargo test"
cargo test --workspace --locked --no-fail-fast "$@"
