#!/usr/bin/env bash
# Makes a CA and a serving certificate for the admission webhook's Service, for clusters without
# cert-manager, and writes what deploy/webhook/overlays/self-signed needs:
#   tls.crt, tls.key        the serving pair (the Secret the Deployment mounts)
#   ca-bundle.patch.yaml    the CA, as caBundle of the MutatingWebhookConfiguration
# usage: scripts/webhook-certs.sh [OUT_DIR] [NAMESPACE] [DAYS]
#   OUT_DIR defaults to deploy/webhook/overlays/self-signed, NAMESPACE to container-tracer.
# Then: kubectl apply -k deploy/webhook/overlays/self-signed
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-deploy/webhook/overlays/self-signed}
ns=${2:-container-tracer}
days=${3:-825}
svc=container-tracer-webhook
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days "$days" \
  -subj "/CN=container-tracer webhook CA" -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$svc.$ns.svc" \
  -keyout "$work/tls.key" -out "$work/tls.csr" 2>/dev/null
printf 'subjectAltName=DNS:%s,DNS:%s.%s,DNS:%s.%s.svc,DNS:%s.%s.svc.cluster.local\nextendedKeyUsage=serverAuth\n' \
  "$svc" "$svc" "$ns" "$svc" "$ns" "$svc" "$ns" > "$work/ext"
openssl x509 -req -in "$work/tls.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" -CAcreateserial \
  -days "$days" -extfile "$work/ext" -out "$work/tls.crt" 2>/dev/null
mkdir -p "$out"
install -m 0644 "$work/tls.crt" "$out/tls.crt"
install -m 0600 "$work/tls.key" "$out/tls.key"
cat > "$out/ca-bundle.patch.yaml" <<YAML
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: container-tracer
webhooks:
  - name: pods.container-tracer.io
    clientConfig:
      caBundle: $(base64 -w0 < "$work/ca.crt")
YAML
echo "wrote $out/tls.crt, $out/tls.key and $out/ca-bundle.patch.yaml (CA valid $days days)"
