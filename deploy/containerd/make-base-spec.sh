#!/usr/bin/env bash
# Writes containerd's default OCI spec with container-tracer's hooks added, for the CRI
# plugin's `base_runtime_spec` (see config.toml.snippet). The CRI plugin starts every container
# spec from this file, so every pod container calls runtime-hook at createRuntime and poststop.
# Usage: make-base-spec.sh [OUTPUT] [HOOK_PATH]
set -euo pipefail
out=${1:-/etc/containerd/container-tracer-spec.json}
hook=${2:-/usr/local/bin/runtime-hook}
command -v ctr >/dev/null || { echo "ctr (containerd) not found" >&2; exit 1; }
ctr oci spec | python3 -c '
import json, sys
spec = json.load(sys.stdin)
hook = sys.argv[1]
entry = lambda stage: {"path": hook, "args": ["runtime-hook", stage], "timeout": 5}
hooks = spec.setdefault("hooks", {})
hooks.setdefault("createRuntime", []).append(entry("createRuntime"))
hooks.setdefault("poststop", []).append(entry("poststop"))
json.dump(spec, sys.stdout, indent=2)
' "$hook" > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out"
