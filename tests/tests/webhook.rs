//! The admission webhook as the API server meets it: AdmissionReview v1 fixtures shaped as the
//! API server sends them, over real HTTPS to the running binary. Each returned patch is applied
//! with an independent RFC 6902 implementation (Python `jsonpatch`), the result validated against
//! the real Pod schema (`kubernetes-validate --strict`), and re-submitted: it gets no patch.

use std::{path::PathBuf, process::Command, time::Duration};

use base64::Engine as _;
use e2e::{https::https, otlp_python, require, require_python, wait_until, webhook::Webhook};

/// The webhook tests need `openssl` for their certificates and the tests' Python with jsonpatch
/// and kubernetes-validate.
fn prerequisites() -> bool {
    require(&["openssl"]) && require_python("import jsonpatch, kubernetes_validate")
}
use serde_json::{json, Value};
use tracer_spec::annotations as ann;

/// An AdmissionReview for creating `pod` in `namespace`, as the API server sends it.
fn review_of(uid: &str, namespace: &str, pod: &Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                         "uid": "5e2c2a4f", "groups": ["system:serviceaccounts", "system:authenticated"]},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    })
}

/// A Deployment's pod: `generateName`, no name, no uid, a controller reference.
fn deployment_pod(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "generateName": "web-7d9f8c-",
            "namespace": "shop",
            "labels": {"app": "web", "pod-template-hash": "7d9f8c"},
            "annotations": annotations,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f8c",
                                 "uid": "0b1f5a7e-3c1d-4f7a-9d6e-2a8b4c6d8e0f", "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {
            "containers": [{"name": "nginx", "image": "nginx:1.27", "ports": [{"containerPort": 80}]}],
            "restartPolicy": "Always"
        }
    })
}

/// Sends `pod` for review: the response object (uid checked).
fn ask(w: &Webhook, uid: &str, pod: &Value) -> Value {
    let (status, body) = w.review(review_of(uid, "shop", pod).to_string().as_bytes());
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let review: Value = serde_json::from_slice(&body).expect("JSON answer");
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    assert_eq!(review["response"]["uid"], uid, "the uid is echoed");
    review["response"].clone()
}

fn venv_bin(name: &str) -> PathBuf {
    otlp_python().parent().expect("venv bin").join(name)
}

/// Applies the response's patch with Python `jsonpatch` and validates the result with
/// `kubernetes-validate --strict`; answers the patched pod.
fn apply_and_validate(pod: &Value, response: &Value, scratch: &std::path::Path) -> Value {
    let patch = response["patch"].as_str().expect("patch");
    assert_eq!(response["patchType"], "JSONPatch");
    let pod_file = scratch.join("pod.json");
    std::fs::write(&pod_file, pod.to_string()).expect("pod file");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("support/apply_patch.py");
    let out = Command::new(otlp_python()).arg(script).arg(&pod_file).arg(patch).output().expect("python");
    assert!(out.status.success(), "jsonpatch: {}", String::from_utf8_lossy(&out.stderr));
    let patched: Value = serde_json::from_slice(&out.stdout).expect("patched pod");
    // kubernetes-validate names what it validates: the name the API server gives a pod made from
    // a generateName after admission.
    let mut named = patched.clone();
    if named["metadata"]["name"].is_null() {
        named["metadata"]["name"] = json!("web-7d9f8c-x2kq9");
    }
    std::fs::write(&pod_file, named.to_string()).expect("pod file");
    let out = Command::new(venv_bin("kubernetes-validate"))
        .args(["-k", "1.30.0", "--strict"])
        .arg(&pod_file)
        .output()
        .expect("kubernetes-validate");
    assert!(
        out.status.success(),
        "the patched pod is not a valid Pod: {}{}\n{named:#}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    patched
}

/// Applies, validates, re-submits (no patch then) and answers the patched pod.
fn round_trip(w: &Webhook, uid: &str, pod: &Value, scratch: &std::path::Path) -> Value {
    let r = ask(w, uid, pod);
    assert_eq!(r["allowed"], true, "{r}");
    let patched = apply_and_validate(pod, &r, scratch);
    let again = ask(w, &format!("{uid}-again"), &patched);
    assert_eq!(again["allowed"], true, "{again}");
    assert!(again.get("patch").is_none() && again.get("patchType").is_none(), "re-submitted: no patch: {again}");
    patched
}

fn annotation<'a>(pod: &'a Value, key: &str) -> &'a Value {
    &pod["metadata"]["annotations"][key]
}

#[test]
fn fixtures_as_the_api_server_sends_them_get_patches_that_apply_validate_and_settle() {
    if !prerequisites() {
        return;
    }
    let w = Webhook::start(&[]).expect("webhook");
    let scratch = tempfile::tempdir().expect("scratch");

    // A Deployment's pod with a valid auto-trace wish and a sidecar.
    let pod = deployment_pod(json!({ann::TRACE_HOOK: "trace_syscalls", ann::TRACE_ARGUMENTS: "-s openat connect",
                                    ann::TRACE_CONTAINERS: "nginx", ann::SIDECAR: "true"}));
    let patched = round_trip(&w, "d1", &pod, scratch.path());
    assert_eq!(annotation(&patched, ann::OWNER), "ReplicaSet/web-7d9f8c");
    let labels: Value =
        serde_json::from_str(annotation(&patched, ann::LABELS).as_str().expect("labels")).expect("JSON");
    assert_eq!(labels, json!({"app": "web", "pod-template-hash": "7d9f8c"}));
    let names = |field: &str| -> Vec<String> {
        patched["spec"][field]
            .as_array()
            .map_or(vec![], |a| a.iter().filter_map(|c| c["name"].as_str().map(str::to_owned)).collect())
    };
    assert_eq!(names("containers"), ["nginx", "tracer-agent"]);
    assert_eq!(names("initContainers"), ["tracer-init"]);
    assert_eq!(names("volumes"), ["tracer-run"]);
    assert!(annotation(&patched, ann::SIDECAR_INJECTED).is_string());
    assert!(patched["metadata"].get("name").is_none(), "generateName kept, no name invented");

    // A bare pod: no annotations map, no labels, no owner.
    let bare = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare", "namespace": "shop"},
                      "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    let patched = round_trip(&w, "b1", &bare, scratch.path());
    assert_eq!(annotation(&patched, ann::LABELS), "{}");
    assert!(annotation(&patched, ann::OWNER).is_null());

    // Init containers and volumes already there: the sidecar's are appended; odd keys survive.
    let mut with_init = deployment_pod(json!({ann::SIDECAR: "true", "example.com/a~b/c": "v", "x": "y"}));
    with_init["spec"]["initContainers"] = json!([{"name": "migrate", "image": "busybox", "command": ["true"]}]);
    with_init["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    let patched = round_trip(&w, "i1", &with_init, scratch.path());
    let inits: Vec<&str> = patched["spec"]["initContainers"]
        .as_array()
        .expect("inits")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(inits, ["migrate", "tracer-init"]);
    assert_eq!(annotation(&patched, "example.com/a~b/c"), "v");

    // Already injected (by an earlier admission): only the stamps are written.
    let injected = deployment_pod(json!({ann::SIDECAR: "true", ann::SIDECAR_INJECTED: "0123abcd"}));
    let patched = round_trip(&w, "a1", &injected, scratch.path());
    assert_eq!(patched["spec"]["containers"].as_array().map(Vec::len), Some(1), "no second copy");

    // Opted out: left alone, invalid annotations and all.
    let mut opted_out = deployment_pod(json!({ann::TRACE_HOOK: "nonsense"}));
    opted_out["metadata"]["labels"][ann::INJECT] = json!("disabled");
    let r = ask(&w, "o1", &opted_out);
    assert!(r["allowed"] == true && r.get("patch").is_none(), "{r}");

    // Every auto-trace error is denied, naming the annotation.
    let clash = {
        let mut p = deployment_pod(json!({ann::SIDECAR: "true"}));
        p["spec"]["containers"][0]["name"] = json!("tracer-agent");
        p
    };
    for (uid, pod, names) in [
        ("e1", deployment_pod(json!({ann::TRACE_HOOK: "trace_everything"})), ann::TRACE_HOOK),
        (
            "e2",
            deployment_pod(json!({ann::TRACE_HOOK: "trace_syscalls", ann::TRACE_ARGUMENTS: "--bogus"})),
            ann::TRACE_ARGUMENTS,
        ),
        (
            "e3",
            deployment_pod(json!({ann::TRACE_HOOK: "trace_events", ann::TRACE_ARGUMENTS: "-e sched:x -f a = 1"})),
            ann::TRACE_ARGUMENTS,
        ),
        ("e4", deployment_pod(json!({ann::TRACE_ARGUMENTS: "-s openat"})), ann::TRACE_ARGUMENTS),
        (
            "e5",
            deployment_pod(json!({ann::TRACE_HOOK: "trace_exec", ann::TRACE_CONTAINERS: ""})),
            ann::TRACE_CONTAINERS,
        ),
        ("e6", deployment_pod(json!({ann::SIDECAR: "maybe"})), ann::SIDECAR),
        ("e7", clash, "tracer-agent"),
    ] {
        let r = ask(&w, uid, &pod);
        assert_eq!(r["allowed"], false, "{uid}: {r}");
        assert!(r.get("patch").is_none(), "{uid}: a denial carries no patch");
        let message = r["status"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(names), "{uid}: the denial names {names}: {message}");
        assert_eq!(r["status"]["code"], 403);
    }
    let metrics = https(w.port, &[&w.ca], "GET", "/metrics", &[], b"");
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(text.contains("container_tracer_webhook_admission_reviews_total{result=\"denied\"} 7"), "{text}");
    assert!(text.contains("container_tracer_webhook_admission_duration_seconds_count"), "{text}");
}

#[test]
fn lenient_admits_invalid_annotations_with_a_warning() {
    if !prerequisites() {
        return;
    }
    let w = Webhook::start(&["--lenient"]).expect("webhook");
    let r = ask(&w, "l1", &deployment_pod(json!({ann::TRACE_HOOK: "trace_syscalls", ann::TRACE_ARGUMENTS: "-s ../x"})));
    assert_eq!(r["allowed"], true, "{r}");
    let warnings = r["warnings"].as_array().expect("warnings");
    assert!(warnings.iter().any(|w| w.as_str().is_some_and(|w| w.contains(ann::TRACE_ARGUMENTS))), "{r}");
    assert!(r["patch"].is_string(), "still stamped: {r}");
}

#[test]
fn bad_input_gets_a_4xx_never_a_5xx_a_panic_or_a_hang() {
    if !prerequisites() {
        return;
    }
    let w = Webhook::start(&["--max-body-kb", "64", "--header-timeout-secs", "1", "--body-timeout-secs", "1"])
        .expect("webhook");
    let pod = deployment_pod(json!({}));
    let mut wrong_version = review_of("v1", "shop", &pod);
    wrong_version["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let mut no_request = review_of("n1", "shop", &pod);
    no_request.as_object_mut().expect("object").remove("request");
    for (what, body) in [
        ("not JSON", b"{\"apiVersion\": ".to_vec()),
        ("binary", vec![0xff, 0x00, 0x13]),
        ("wrong apiVersion", wrong_version.to_string().into_bytes()),
        ("no request", no_request.to_string().into_bytes()),
        ("a JSON array", b"[1,2,3]".to_vec()),
    ] {
        let (status, body) = w.review(&body);
        assert_eq!(status, 400, "{what}: {}", String::from_utf8_lossy(&body));
        let v: Value = serde_json::from_slice(&body).expect("JSON error");
        assert!(v["Error"].is_string(), "{what}: {v}");
    }
    let (status, _) = w.review(&vec![b' '; 65 * 1024]);
    assert_eq!(status, 413, "a body over --max-body-kb");

    // Not a Pod (a misconfigured webhook): allowed unchanged.
    let mut secret = review_of("s1", "shop", &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}));
    secret["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "Secret"});
    let (status, body) = w.review(secret.to_string().as_bytes());
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).expect("JSON");
    assert!(v["response"]["allowed"] == true && v["response"].get("patch").is_none(), "{v}");
    // A Pod that is no valid Pod: denied, not a 5xx.
    let broken = review_of("p1", "shop", &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": 7}}));
    let (status, body) = w.review(broken.to_string().as_bytes());
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(v["response"]["allowed"], false, "{v}");
    assert_eq!(v["response"]["uid"], "p1");

    // A client that never finishes its headers is cut off (1 s here).
    use std::io::{Read, Write};
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", w.port)).expect("connect");
    slow.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    slow.write_all(&[0x16, 0x03, 0x01]).expect("a TLS record header, then nothing");
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let _ = slow.read(&mut buf);
    assert!(started.elapsed() < Duration::from_secs(9), "a stalled handshake is dropped");
    assert_eq!(https(w.port, &[&w.ca], "GET", "/healthz", &[], b"").status, 200, "still serving");
}

#[test]
fn a_rotated_certificate_is_served_to_new_connections_without_a_restart() {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    if !prerequisites() {
        return;
    }
    let mut w = Webhook::start(&[]).expect("webhook");
    let first = https(w.port, &[&w.ca], "GET", "/healthz", &[], b"").leaf;
    for round in 0..2 {
        let (ca, cert) = w.rotate().expect("rotate");
        let want = CertificateDer::from_pem_file(&cert).expect("cert").to_vec();
        assert!(
            wait_until(Duration::from_secs(10), || https(w.port, &[&w.ca, &ca], "GET", "/healthz", &[], b"").leaf
                == want),
            "rotation {round}: the swapped ..data is served"
        );
        assert_ne!(want, first);
        let r = ask_with(&w, &ca);
        assert_eq!(r, 200, "reviews go on over the new certificate");
    }
}

fn ask_with(w: &Webhook, ca: &std::path::Path) -> u16 {
    let body = review_of("r1", "shop", &deployment_pod(json!({}))).to_string();
    https(w.port, &[ca], "POST", "/mutate", &[("Content-Type", "application/json")], body.as_bytes()).status
}

#[test]
fn the_patch_is_base64_json_patch() {
    if !prerequisites() {
        return;
    }
    let w = Webhook::start(&[]).expect("webhook");
    let r = ask(&w, "p64", &deployment_pod(json!({})));
    let patch =
        base64::engine::general_purpose::STANDARD.decode(r["patch"].as_str().expect("a string")).expect("base64");
    let ops: Value = serde_json::from_slice(&patch).expect("JSON Patch");
    assert!(ops.as_array().is_some_and(|o| o.iter().all(|op| op["op"] == "add")), "{ops}");
}

/// The webhook's stamps reach the node as CRI-O passes them: the patched pod's annotations become
/// the OCI annotations of a real runc container; `/v1/pods` shows its labels and controller, and
/// its auto-trace wish starts a session at the container's creation that sees its first exec.
#[test]
fn the_stamps_reach_v1_pods_through_a_real_container() {
    if !prerequisites() || !require(&["runc"]) {
        return;
    }
    let w = Webhook::start(&[]).expect("webhook");
    let scratch = tempfile::tempdir().expect("scratch");
    let pod = deployment_pod(json!({ann::TRACE_HOOK: "trace_exec", ann::TRACE_CONTEXT: "from the webhook"}));
    let patched = apply_and_validate(&pod, &ask(&w, "n1", &pod), scratch.path());
    let node = e2e::Node::start_with(&["--attach-budget-ms", "900"]).expect("tracer-node");
    let rt = e2e::Runtime::new("runc").expect("runc");
    let name = e2e::unique("web");
    let mut annotations = e2e::containerd_annotations(&name, "shop", "nginx");
    for (k, v) in patched["metadata"]["annotations"].as_object().expect("annotations") {
        annotations.insert(k.clone(), v.as_str().expect("string").to_owned());
    }
    let bundle =
        e2e::Bundle::new(&["sh", "-c", "exec sleep 30"], &annotations, e2e::Bundle::hooks_with_deadline(&node, 1000))
            .expect("bundle");
    let id = e2e::unique("ct-stamp");
    let created = std::time::Instant::now();
    rt.create(&id, &bundle).expect("create");
    let created = created.elapsed();
    let init = rt.pid(&id).expect("pid");
    let pods = node.pods().expect("pods");
    let c = &pods[&name]["Containers"]["nginx"];
    assert_eq!(c["Labels"], json!({"app": "web", "pod-template-hash": "7d9f8c"}), "{pods}");
    assert_eq!(c["Owner"], "ReplicaSet/web-7d9f8c");
    // The auto-trace wish came through too: a session started at the container's creation.
    let (_, all) = node.call("GET", "/v1/trace-session/all", None).expect("sessions");
    let (sid, s) = all.as_object().and_then(|o| o.iter().next()).expect("the auto-trace session");
    assert_eq!((s["AutoTrace"].clone(), s["Running"].clone()), (json!(true), json!(true)), "{s}");
    assert_eq!(s["Context"], "from the webhook");
    println!("runc create with the hook and an auto-trace start: {created:?}");
    rt.start(&id).expect("start");
    assert!(
        wait_until(Duration::from_secs(10), || node
            .events(sid)
            .is_ok_and(|e| e.iter().any(|e| e["event"] == "sched_process_exec" && e["comm"] == "sleep"))),
        "the exec of sleep is traced"
    );
    let events = node.events(sid).expect("events");
    let first = events.iter().find(|e| e["pid"] == i64::from(init)).expect("an event of the init");
    assert_eq!(first["event"], "sched_process_exec", "the init's first event is its exec: {first}");
    rt.kill(&id).expect("kill");
    rt.keep(bundle);
    assert!(
        wait_until(Duration::from_secs(10), || node.session(sid).is_ok_and(|s| s["Running"] == false)),
        "the session stops with its pod"
    );
    let _ = rt.delete(&id);
}
