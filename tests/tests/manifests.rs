//! The Kubernetes manifests in `deploy/`, validated offline: each overlay rendered with
//! `kubectl kustomize` and every built-in kind checked with `kubernetes-validate --strict`
//! against the real 1.30 schemas (cert-manager's kinds are not in it and are left out).

use std::{path::Path, process::Command};

use e2e::{otlp_python, require, require_python};
use serde_json::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root")
}

/// `kubectl kustomize dir`, as JSON values.
fn render(dir: &Path) -> Vec<Value> {
    let out = Command::new("kubectl").arg("kustomize").arg(dir).output().expect("kubectl");
    assert!(out.status.success(), "kustomize {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf8");
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("YAML document"))
        .collect()
}

/// Validates the built-in kinds of `docs` strictly; answers how many were validated.
fn validate(docs: &[Value], scratch: &Path) -> usize {
    let builtin: Vec<&Value> =
        docs.iter().filter(|d| !d["apiVersion"].as_str().unwrap_or_default().starts_with("cert-manager.io/")).collect();
    let file = scratch.join("rendered.yaml");
    let text: String = builtin.iter().map(|d| format!("---\n{}", serde_yaml::to_string(d).expect("YAML"))).collect();
    std::fs::write(&file, text).expect("write");
    let validator = otlp_python().parent().expect("venv").join("kubernetes-validate");
    let out =
        Command::new(validator).args(["-k", "1.30.0", "--strict"]).arg(&file).output().expect("kubernetes-validate");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    builtin.len()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn the_webhook_manifests_render_and_validate_strictly_in_both_tls_overlays() {
    if !require(&["kubectl", "openssl"]) || !require_python("import kubernetes_validate") {
        return;
    }
    let scratch = tempfile::tempdir().expect("scratch");
    let deploy = scratch.path().join("deploy");
    let copied = Command::new("cp").arg("-r").arg(repo().join("deploy")).arg(&deploy).status().expect("cp");
    assert!(copied.success());
    let overlay = deploy.join("webhook/overlays/self-signed");
    let made = Command::new(repo().join("scripts/webhook-certs.sh")).arg(&overlay).output().expect("webhook-certs.sh");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));

    let self_signed = render(&overlay);
    assert_eq!(
        validate(&self_signed, scratch.path()),
        8,
        "namespace, service account, config map, secret, service, deployment, PDB, webhook configuration"
    );
    let hook = &find(&self_signed, "MutatingWebhookConfiguration")["webhooks"][0];
    assert!(hook["clientConfig"]["caBundle"].as_str().is_some_and(|b| b.len() > 100), "the CA is filled in: {hook}");
    // Merged into the webhook, not replacing it.
    assert_eq!(hook["failurePolicy"], "Ignore");
    assert_eq!(hook["timeoutSeconds"], 2);
    assert_eq!(hook["reinvocationPolicy"], "IfNeeded");
    assert_eq!(hook["sideEffects"], "None");
    assert_eq!(hook["rules"][0]["operations"], serde_json::json!(["CREATE"]));
    assert_eq!(hook["clientConfig"]["service"]["name"], "container-tracer-webhook");
    assert_eq!(find(&self_signed, "Secret")["type"], "kubernetes.io/tls");

    let cert_manager = render(&deploy.join("webhook/overlays/cert-manager"));
    assert_eq!(validate(&cert_manager, scratch.path()), 7, "the same without the Secret");
    let config = find(&cert_manager, "MutatingWebhookConfiguration");
    assert_eq!(
        config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "container-tracer/container-tracer-webhook"
    );
    let cert = find(&cert_manager, "Certificate");
    assert_eq!(cert["spec"]["secretName"], "container-tracer-webhook-tls", "the Secret the Deployment mounts");

    let deployment = find(&cert_manager, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(pod["containers"][0]["readinessProbe"]["httpGet"]["scheme"], "HTTPS");

    // The example sidecar is one the webhook takes.
    let template = find(&cert_manager, "ConfigMap")["data"]["sidecar.yaml"].as_str().expect("sidecar.yaml").to_owned();
    let file = scratch.path().join("sidecar.yaml");
    std::fs::write(&file, template).expect("write");
    webhook::sidecar::Sidecar::load(&file).expect("the shipped sidecar template loads");
}
