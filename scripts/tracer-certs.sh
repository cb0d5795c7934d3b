#!/usr/bin/env bash
# Makes a CA and the serving pairs of tracer-node and tracer-svc, for
# deploy/overlays/external-cert when there is no CA of your own at hand:
#   ca.crt                the CA (tracer-svc trusts only it for the nodes)
#   node.crt, node.key    the nodes' pair, for the headless Service's name (tracer-svc checks
#                         that name whatever pod IP it dials: --node-tls-server-name)
#   svc.crt, svc.key      tracer-svc's pair, for its Service's name
# usage: scripts/tracer-certs.sh [OUT_DIR] [NAMESPACE] [DAYS]
#   OUT_DIR defaults to deploy/overlays/external-cert, NAMESPACE to container-tracer.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-deploy/overlays/external-cert}
ns=${2:-container-tracer}
days=${3:-825}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days "$days" \
  -subj "/CN=container-tracer CA" -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null
leaf() { # name, service
  local name=$1 svc=$2
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$svc.$ns.svc" \
    -keyout "$work/$name.key" -out "$work/$name.csr" 2>/dev/null
  printf 'subjectAltName=DNS:%s.%s.svc,DNS:%s.%s.svc.cluster.local\nextendedKeyUsage=serverAuth\n' \
    "$svc" "$ns" "$svc" "$ns" > "$work/$name.ext"
  openssl x509 -req -in "$work/$name.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" -CAcreateserial \
    -days "$days" -extfile "$work/$name.ext" -out "$work/$name.crt" 2>/dev/null
}
leaf node container-tracer-backend
leaf svc container-tracer
mkdir -p "$out"
install -m 0644 "$work/ca.crt" "$work/node.crt" "$work/svc.crt" "$out/"
install -m 0600 "$work/node.key" "$work/svc.key" "$out/"
echo "wrote $out/ca.crt, node.crt, node.key, svc.crt, svc.key (valid $days days)"
