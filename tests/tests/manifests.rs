//! The Kubernetes manifests in `deploy/`, validated offline: each overlay rendered with
//! `kubectl kustomize` and every built-in kind checked with `kubernetes-validate --strict`
//! against the real 1.30 schemas (cert-manager's kinds are not in it and are left out).

use std::{collections::BTreeSet, path::Path, process::Command};

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

fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn args_of(container: &Value) -> Vec<String> {
    container["args"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// What the whole deployment must hold in every overlay: the node DaemonSet as the issue and
/// the daemon's own checks want it, tracer-svc, least-privilege RBAC, the NetworkPolicy, the
/// webhook included, images built by the shipped Dockerfiles, and flags the binaries take.
fn check_deployment(docs: &[Value], tls: bool) {
    use clap::Parser;
    let ds = named(docs, "DaemonSet", "tracer-node");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    assert_eq!(pod["tolerations"], serde_json::json!([{"operator": "Exists"}]), "every node");
    let node = &pod["containers"][0];
    let sc = &node["securityContext"];
    assert_ne!(sc["privileged"], true, "not privileged");
    let mut added: Vec<String> = sc["capabilities"]["add"]
        .as_array()
        .expect("caps")
        .iter()
        .map(|c| c.as_str().expect("cap").to_owned())
        .collect();
    let mut needed: Vec<String> =
        tracer_node::caps::NEEDED.iter().map(|(c, _)| c.to_string().trim_start_matches("CAP_").to_owned()).collect();
    added.sort();
    needed.sort();
    assert_eq!(added, needed, "exactly the capabilities tracer-node checks for");
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let host_paths: Vec<&str> =
        pod["volumes"].as_array().expect("volumes").iter().filter_map(|v| v["hostPath"]["path"].as_str()).collect();
    for p in ["/proc", "/sys", "/run/container-tracer", "/etc/containers/oci/hooks.d", "/opt/container-tracer/bin"] {
        assert!(host_paths.contains(&p), "host {p} mounted: {host_paths:?}");
    }
    assert_eq!(node["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(node["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert!(node["resources"]["limits"]["memory"].is_string() && node["resources"]["requests"]["cpu"].is_string());
    let init = &pod["initContainers"][0];
    let script = init["args"][0].as_str().expect("install script");
    assert!(script.contains("runtime-hook") && script.contains("hooks.d"), "{script}");
    let node_args = args_of(node);
    assert!(node_args.contains(&"--auth-kubernetes".to_owned()));
    let mut argv = vec!["tracer-node".to_owned()];
    argv.extend(node_args.iter().cloned());
    let parsed = tracer_node::Config::try_parse_from(&argv).unwrap_or_else(|e| panic!("tracer-node {argv:?}: {e}"));
    assert_eq!(parsed.tls_cert.is_some(), tls);
    assert_eq!(node["env"][0]["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName", "named after its node");

    // The headless Service whose slices tracer-svc watches, with the port name it looks for.
    let defaults = tracer_svc::Config::try_parse_from(["tracer-svc"]).expect("defaults");
    let backend = named(docs, "Service", &defaults.kube_service);
    assert_eq!(backend["spec"]["clusterIP"], "None");
    assert_eq!(backend["spec"]["ports"][0]["name"], serde_json::json!(defaults.kube_port_name));

    let svc = named(docs, "Deployment", "tracer-svc");
    let svc_pod = &svc["spec"]["template"]["spec"];
    assert_eq!(svc_pod["securityContext"]["runAsNonRoot"], true);
    let svc_container = &svc_pod["containers"][0];
    let mut argv = vec!["tracer-svc".to_owned()];
    argv.extend(args_of(svc_container));
    let parsed = tracer_svc::Config::try_parse_from(&argv).unwrap_or_else(|e| panic!("tracer-svc {argv:?}: {e}"));
    assert!(parsed.auth_kubernetes && parsed.nodes.is_empty(), "discovery, callers authorized");
    assert_eq!((parsed.node_tls, parsed.tls_cert.is_some()), (tls, tls));
    if tls {
        assert_eq!(parsed.node_tls_server_name.as_deref(), Some("container-tracer-backend.container-tracer.svc"));
        // The Secrets mounted exist in the overlay (a Certificate or a generated Secret).
        for volume in
            svc_pod["volumes"].as_array().expect("volumes").iter().chain(pod["volumes"].as_array().expect("v"))
        {
            if let Some(secret) = volume["secret"]["secretName"].as_str() {
                let made = docs.iter().any(|d| {
                    (d["kind"] == "Secret" && d["metadata"]["name"] == secret)
                        || (d["kind"] == "Certificate" && d["spec"]["secretName"] == secret)
                });
                assert!(made, "the Secret {secret} is made by the overlay");
            }
        }
    }
    named(docs, "Service", "container-tracer");

    // RBAC: discovery reads exactly endpointslices list/watch in its namespace.
    let role = named(docs, "Role", "tracer-svc-discovery");
    assert_eq!(
        role["rules"],
        serde_json::json!([{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}])
    );
    let bound = |binding: &str, sa: &str, role: &str| {
        let b = docs
            .iter()
            .find(|d| {
                d["metadata"]["name"] == binding && d["kind"].as_str().is_some_and(|k| k.ends_with("RoleBinding"))
            })
            .unwrap_or_else(|| panic!("no binding {binding}"));
        assert_eq!(b["roleRef"]["name"], role, "{binding}");
        assert_eq!(b["subjects"][0]["name"], sa, "{binding}");
    };
    bound("container-tracer-node-auth-delegator", "tracer-node", "system:auth-delegator");
    bound("container-tracer-svc-auth-delegator", "tracer-svc", "system:auth-delegator");
    bound("container-tracer-svc-calls-nodes", "tracer-svc", "container-tracer-tracer");
    bound("tracer-svc-discovery", "tracer-svc", "tracer-svc-discovery");
    assert_eq!(pod["serviceAccountName"], "tracer-node");
    assert_eq!(svc_pod["serviceAccountName"], "tracer-svc");

    // Only tracer-svc and Prometheus reach the node API.
    let np = named(docs, "NetworkPolicy", "tracer-node-api");
    assert_eq!(np["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"], "tracer-node");
    let from = &np["spec"]["ingress"][0]["from"];
    assert_eq!(from[0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"], "tracer-svc");
    assert_eq!(from[1]["podSelector"]["matchLabels"]["app.kubernetes.io/name"], "prometheus");
    assert_eq!(np["spec"]["ingress"].as_array().map(Vec::len), Some(1));

    // The webhook is in, and every image is one a shipped Dockerfile builds.
    named(docs, "MutatingWebhookConfiguration", "container-tracer");
    let dockerfiles: String = std::fs::read_dir(repo().join("deploy/docker"))
        .expect("deploy/docker")
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).expect("Dockerfile"))
        .collect();
    let mut images = BTreeSet::new();
    for d in docs.iter().filter(|d| matches!(d["kind"].as_str(), Some("Deployment" | "DaemonSet"))) {
        let spec = &d["spec"]["template"]["spec"];
        for c in spec["containers"].as_array().into_iter().chain(spec["initContainers"].as_array()).flatten() {
            images.insert(c["image"].as_str().expect("image").to_owned());
        }
    }
    assert_eq!(images.len(), 3, "{images:?}");
    for image in &images {
        let repository = image.split(':').next().expect("repository");
        assert!(dockerfiles.contains(&format!("# {repository}:")), "no Dockerfile builds {image}");
    }
}

#[test]
fn every_deployment_overlay_renders_validates_and_wires_node_svc_and_webhook() {
    if !require(&["kubectl", "openssl"]) || !require_python("import kubernetes_validate") {
        return;
    }
    let scratch = tempfile::tempdir().expect("scratch");
    let deploy = scratch.path().join("deploy");
    assert!(Command::new("cp").arg("-r").arg(repo().join("deploy")).arg(&deploy).status().expect("cp").success());
    for (script, dir) in
        [("webhook-certs.sh", "webhook/overlays/self-signed"), ("tracer-certs.sh", "overlays/external-cert")]
    {
        let out = Command::new(repo().join("scripts").join(script)).arg(deploy.join(dir)).output().expect(script);
        assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // Objects of built-in kinds in each overlay: 24 in plain (webhook 8, node and svc 16);
    // cert-manager without the webhook's generated Secret; external-cert with two more.
    for (overlay, tls, builtin) in [("plain", false, 24), ("cert-manager", true, 23), ("external-cert", true, 26)] {
        let docs = render(&deploy.join("overlays").join(overlay));
        assert_eq!(validate(&docs, scratch.path()), builtin, "{overlay}");
        check_deployment(&docs, tls);
    }
}
