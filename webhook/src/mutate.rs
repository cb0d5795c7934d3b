//! What the webhook does to a Pod: checks its `container-tracer.io/` trace annotations, stamps
//! its labels and controller for the node (which learns a container's pod only through the
//! annotations the runtime passes), and injects the sidecar where asked. The result is a JSON
//! Patch; a pod that already carries all of it gets an empty one.

use std::collections::BTreeMap;

use json_patch::{jsonptr::PointerBuf, AddOperation, PatchOperation};
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;
use tracer_spec::annotations::{self as ann, AnnotationError};

use crate::sidecar::Sidecar;

/// How the webhook is set up.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// The sidecar, when one is configured.
    pub sidecar: Option<Sidecar>,
    /// Admit invalid annotations with a warning instead of denying.
    pub lenient: bool,
    /// The webhook's own namespace, never mutated.
    pub own_namespace: Option<String>,
}

/// What becomes of a pod.
#[derive(Debug, Default, PartialEq)]
pub struct Mutation {
    /// The patch (empty: none).
    pub patch: Vec<PatchOperation>,
    /// Warnings for the client (`--lenient`).
    pub warnings: Vec<String>,
}

/// Why a pod is refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Denial {
    /// An invalid trace annotation.
    #[error(transparent)]
    Annotation(#[from] AnnotationError),
    /// A sidecar was asked for but none is configured.
    #[error("annotation {}: no sidecar template is configured on the webhook", ann::SIDECAR)]
    NoSidecar,
    /// The sidecar's container or volume names are taken.
    #[error("cannot inject the sidecar: the pod already has a {what} named {name:?}")]
    NameClash {
        /// `container`, `init container` or `volume`.
        what: &'static str,
        /// The name.
        name: String,
    },
}

/// Where the pod is.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The request's namespace (a pod made from a template has no namespace of its own yet).
    pub namespace: Option<&'a str>,
}

/// Decides what to do with `pod`.
pub fn mutate(pod: &Pod, ctx: Context<'_>, settings: &Settings) -> Result<Mutation, Denial> {
    let meta = &pod.metadata;
    let labels = meta.labels.clone().unwrap_or_default();
    if labels.get(ann::INJECT).map(String::as_str) == Some("disabled") {
        return Ok(Mutation::default());
    }
    let namespace = ctx.namespace.or(meta.namespace.as_deref());
    if settings.own_namespace.is_some() && namespace == settings.own_namespace.as_deref() {
        return Ok(Mutation::default());
    }
    let annotations = meta.annotations.clone().unwrap_or_default();
    let mut out = Mutation::default();
    let refuse = |e: Denial, out: &mut Mutation| -> Result<(), Denial> {
        if settings.lenient {
            out.warnings.push(format!("container-tracer: {e}; admitted because the webhook is lenient"));
            Ok(())
        } else {
            Err(e)
        }
    };
    if let Err(e) = ann::auto_trace(&annotations) {
        refuse(e.into(), &mut out)?;
    }
    let wants_sidecar = match ann::sidecar_requested(&annotations) {
        Ok(w) => w,
        Err(e) => {
            refuse(e.into(), &mut out)?;
            false
        }
    };

    let mut stamps: BTreeMap<&str, String> = BTreeMap::new();
    let labels_json = serde_json::to_string(&labels).unwrap_or_else(|_| "{}".into());
    stamps.insert(ann::LABELS, labels_json);
    if let Some(owner) = meta.owner_references.iter().flatten().find(|o| o.controller == Some(true)) {
        stamps.insert(ann::OWNER, format!("{}/{}", owner.kind, owner.name));
    }
    let mut spec_ops = Vec::new();
    if wants_sidecar && !annotations.contains_key(ann::SIDECAR_INJECTED) {
        match &settings.sidecar {
            None => refuse(Denial::NoSidecar, &mut out)?,
            Some(sidecar) => {
                spec_ops = inject(pod, sidecar)?;
                stamps.insert(ann::SIDECAR_INJECTED, sidecar.digest.clone());
            }
        }
    }
    stamps.retain(|k, v| annotations.get(*k) != Some(v));
    if !stamps.is_empty() {
        if meta.annotations.is_none() {
            let all: serde_json::Map<String, Value> =
                stamps.into_iter().map(|(k, v)| (k.to_owned(), Value::String(v))).collect();
            out.patch.push(add(&["metadata", "annotations"], Value::Object(all)));
        } else {
            for (k, v) in stamps {
                out.patch.push(add(&["metadata", "annotations", k], Value::String(v)));
            }
        }
    }
    out.patch.extend(spec_ops);
    Ok(out)
}

/// An `add` at the path made of `tokens` (each escaped: `/` is `~1`, `~` is `~0`).
fn add(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path: PointerBuf::from_tokens(tokens.iter().copied()), value })
}

/// The operations adding the sidecar's containers, init containers and volumes, after checking
/// that none of their names is taken.
fn inject(pod: &Pod, sidecar: &Sidecar) -> Result<Vec<PatchOperation>, Denial> {
    let spec = pod.spec.clone().unwrap_or_default();
    let t = &sidecar.template;
    let clash = |what, taken: Vec<&str>, ours: Vec<&str>| match ours.into_iter().find(|n| taken.contains(n)) {
        Some(name) => Err(Denial::NameClash { what, name: name.to_owned() }),
        None => Ok(()),
    };
    let containers: Vec<&str> =
        spec.containers.iter().chain(spec.init_containers.iter().flatten()).map(|c| c.name.as_str()).collect();
    clash("container", containers.clone(), t.containers.iter().map(|c| c.name.as_str()).collect())?;
    clash("init container", containers, t.init_containers.iter().map(|c| c.name.as_str()).collect())?;
    let volumes: Vec<&str> = spec.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
    clash("volume", volumes, t.volumes.iter().map(|v| v.name.as_str()).collect())?;
    let mut ops = Vec::new();
    let mut append = |field: &str, present: bool, items: Vec<Value>| {
        if items.is_empty() {
            return;
        }
        if present {
            for item in items {
                ops.push(add(&["spec", field, "-"], item));
            }
        } else {
            ops.push(add(&["spec", field], Value::Array(items)));
        }
    };
    append("initContainers", spec.init_containers.is_some(), t.init_containers.iter().map(to_json).collect());
    append("containers", true, t.containers.iter().map(to_json).collect());
    append("volumes", spec.volumes.is_some(), t.volumes.iter().map(to_json).collect());
    Ok(ops)
}

/// A typed object as JSON (they always serialize).
fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sidecar::Template;
    use serde_json::json;

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).expect("pod")
    }

    fn apply(p: &Pod, m: &Mutation) -> Value {
        let mut doc = serde_json::to_value(p).expect("json");
        json_patch::patch(&mut doc, &m.patch).expect("the patch applies");
        doc
    }

    fn sidecar() -> Sidecar {
        Sidecar::new(Template {
            containers: vec![serde_json::from_value(json!({"name": "tracer-agent", "image": "agent:1"})).expect("c")],
            init_containers: vec![],
            volumes: vec![serde_json::from_value(json!({"name": "tracer-run", "emptyDir": {}})).expect("v")],
        })
    }

    fn settings() -> Settings {
        Settings { sidecar: Some(sidecar()), ..Settings::default() }
    }

    const NS: Context<'static> = Context { namespace: Some("shop") };

    #[test]
    fn a_deployment_pod_is_stamped_and_a_second_pass_changes_nothing() {
        let p = pod(json!({
            "metadata": {"generateName": "web-7d9f8c-", "labels": {"app": "web", "a/b~c": "x"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f8c", "uid": "u1", "controller": true}]},
            "spec": {"containers": [{"name": "nginx", "image": "nginx"}]}
        }));
        let m = mutate(&p, NS, &settings()).expect("admitted");
        let out = apply(&p, &m);
        assert_eq!(out["metadata"]["annotations"][ann::OWNER], "ReplicaSet/web-7d9f8c");
        let labels: Value =
            serde_json::from_str(out["metadata"]["annotations"][ann::LABELS].as_str().expect("labels")).expect("json");
        assert_eq!(labels, json!({"app": "web", "a/b~c": "x"}));
        let again = mutate(&pod(out), NS, &settings()).expect("admitted");
        assert!(again.patch.is_empty(), "{:?}", again.patch);
    }

    #[test]
    fn keys_with_slash_and_tilde_are_escaped_into_an_existing_annotations_map() {
        let p = pod(json!({"metadata": {"name": "p", "annotations": {"x~y/z": "1"}}, "spec": {"containers": []}}));
        let m = mutate(&p, NS, &settings()).expect("admitted");
        let text = serde_json::to_string(&m.patch).expect("json");
        assert!(text.contains("/metadata/annotations/container-tracer.io~1labels"), "{text}");
        assert_eq!(apply(&p, &m)["metadata"]["annotations"]["x~y/z"], "1");
    }

    #[test]
    fn the_sidecar_is_injected_once_and_a_name_clash_is_denied() {
        let p = pod(json!({
            "metadata": {"name": "p", "annotations": {ann::SIDECAR: "true"}},
            "spec": {"containers": [{"name": "app", "image": "a"}], "initContainers": [{"name": "init", "image": "i"}]}
        }));
        let m = mutate(&p, NS, &settings()).expect("admitted");
        let out = apply(&p, &m);
        let names: Vec<&str> =
            out["spec"]["containers"].as_array().expect("c").iter().filter_map(|c| c["name"].as_str()).collect();
        assert_eq!(names, ["app", "tracer-agent"]);
        assert_eq!(out["spec"]["volumes"][0]["name"], "tracer-run");
        assert_eq!(out["metadata"]["annotations"][ann::SIDECAR_INJECTED], sidecar().digest);
        assert!(mutate(&pod(out), NS, &settings()).expect("admitted").patch.is_empty(), "injected once");
        let clash = pod(json!({
            "metadata": {"name": "p", "annotations": {ann::SIDECAR: "true"}},
            "spec": {"containers": [{"name": "tracer-agent", "image": "mine"}]}
        }));
        assert_eq!(
            mutate(&clash, NS, &settings()),
            Err(Denial::NameClash { what: "container", name: "tracer-agent".into() })
        );
        assert_eq!(mutate(&p, NS, &Settings::default()), Err(Denial::NoSidecar));
    }

    #[test]
    fn invalid_trace_annotations_are_denied_or_warned_about_and_opted_out_pods_are_left_alone() {
        let bad = pod(json!({
            "metadata": {"name": "p", "annotations": {ann::TRACE_HOOK: "trace_syscalls", ann::TRACE_ARGUMENTS: "--nope"}},
            "spec": {"containers": []}
        }));
        let e = mutate(&bad, NS, &settings()).expect_err("denied");
        assert!(e.to_string().contains(ann::TRACE_ARGUMENTS), "{e}");
        let lenient = Settings { lenient: true, ..settings() };
        let m = mutate(&bad, NS, &lenient).expect("admitted");
        assert_eq!(m.warnings.len(), 1);
        assert!(!m.patch.is_empty(), "still stamped");
        let opted_out = pod(json!({"metadata": {"name": "p", "labels": {ann::INJECT: "disabled"},
            "annotations": {ann::TRACE_HOOK: "nonsense"}}, "spec": {"containers": []}}));
        assert_eq!(mutate(&opted_out, NS, &settings()), Ok(Mutation::default()));
        let own = Settings { own_namespace: Some("shop".into()), ..settings() };
        assert_eq!(mutate(&bad, NS, &own), Ok(Mutation::default()));
    }
}
