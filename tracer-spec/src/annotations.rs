//! The `container-tracer.io/` pod annotations: what users write on a pod template to have its
//! containers traced from their creation, and what the admission webhook stamps on the pod for
//! the node, which learns a container's pod only through the annotations the runtime passes.
//! Both binaries read and check them here, the same way.

use std::collections::BTreeMap;

use crate::args::{self, ArgsError, Builtin, Request};

/// The prefix of every key.
pub const PREFIX: &str = "container-tracer.io/";
/// A built-in trace hook name: the pod's containers are traced from their creation.
pub const TRACE_HOOK: &str = "container-tracer.io/trace-hook";
/// The hook's arguments, as the REST API takes them.
pub const TRACE_ARGUMENTS: &str = "container-tracer.io/trace-arguments";
/// A container-name glob; `*` when absent.
pub const TRACE_CONTAINERS: &str = "container-tracer.io/trace-containers";
/// The session's user context.
pub const TRACE_CONTEXT: &str = "container-tracer.io/trace-context";
/// `"true"`: the webhook injects the configured sidecar.
pub const SIDECAR: &str = "container-tracer.io/sidecar";
/// Label: `disabled` on a pod makes the webhook leave it alone; `enabled` on a namespace puts
/// its pods in the webhook's scope.
pub const INJECT: &str = "container-tracer.io/inject";
/// Written by the webhook: the pod's labels, one JSON object.
pub const LABELS: &str = "container-tracer.io/labels";
/// Written by the webhook: `<kind>/<name>` of the pod's controller.
pub const OWNER: &str = "container-tracer.io/owner";
/// Written by the webhook: a digest of the sidecar template it injected (the guard against a
/// second injection).
pub const SIDECAR_INJECTED: &str = "container-tracer.io/sidecar-injected";

/// Longest user context, as the REST API takes it.
pub const MAX_CONTEXT: usize = 64 * 1024;
/// Longest container-name glob.
pub const MAX_PATTERN: usize = 253;

/// Why the annotations are refused; names the annotation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnotationError {
    /// A trace annotation without the hook that gives it a meaning.
    #[error("annotation {key} is set but {TRACE_HOOK} is not")]
    WithoutHook {
        /// The stray annotation.
        key: &'static str,
    },
    /// The hook or its arguments.
    #[error("annotation {key}: {source}")]
    Arguments {
        /// [`TRACE_HOOK`] or [`TRACE_ARGUMENTS`].
        key: &'static str,
        /// What is wrong.
        #[source]
        source: ArgsError,
    },
    /// A value out of its bounds or with control characters.
    #[error("annotation {key}: {problem}")]
    Value {
        /// The annotation.
        key: &'static str,
        /// What is wrong.
        problem: &'static str,
    },
}

/// A pod's wish to be traced from its containers' creation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoTrace {
    /// The hook.
    pub hook: Builtin,
    /// Its arguments, as written.
    pub arguments: String,
    /// What they ask for.
    pub request: Request,
    /// Which containers of the pod (a glob on their names).
    pub containers: String,
    /// The session's user context.
    pub context: String,
}

/// The pod's auto-trace wish, if it has one, checked. An annotation that is present but wrong is
/// an error, never ignored.
pub fn auto_trace(annotations: &BTreeMap<String, String>) -> Result<Option<AutoTrace>, AnnotationError> {
    let get = |k: &str| annotations.get(k).map(String::as_str);
    let Some(hook) = get(TRACE_HOOK) else {
        for key in [TRACE_ARGUMENTS, TRACE_CONTAINERS, TRACE_CONTEXT] {
            if annotations.contains_key(key) {
                return Err(AnnotationError::WithoutHook { key });
            }
        }
        return Ok(None);
    };
    let hook =
        Builtin::from_name(hook.trim()).map_err(|source| AnnotationError::Arguments { key: TRACE_HOOK, source })?;
    let arguments = get(TRACE_ARGUMENTS).unwrap_or_default().to_owned();
    if arguments.len() > 16 * 1024 || arguments.chars().any(|c| c.is_control() && !c.is_whitespace()) {
        return Err(AnnotationError::Value {
            key: TRACE_ARGUMENTS,
            problem: "longer than 16 KiB or holds control characters",
        });
    }
    let request =
        args::parse(hook, &arguments).map_err(|source| AnnotationError::Arguments { key: TRACE_ARGUMENTS, source })?;
    let containers = get(TRACE_CONTAINERS).unwrap_or("*").trim().to_owned();
    if containers.is_empty() || containers.len() > MAX_PATTERN || containers.chars().any(char::is_control) {
        return Err(AnnotationError::Value {
            key: TRACE_CONTAINERS,
            problem: "must be a container-name glob of 1 to 253 printable characters",
        });
    }
    let context = get(TRACE_CONTEXT).unwrap_or_default().to_owned();
    if context.len() > MAX_CONTEXT {
        return Err(AnnotationError::Value { key: TRACE_CONTEXT, problem: "longer than 64 KiB" });
    }
    Ok(Some(AutoTrace { hook, arguments, request, containers, context }))
}

/// The pod's labels the webhook stamped, when present and a JSON object of strings.
pub fn stamped_labels(annotations: &BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    serde_json::from_str(annotations.get(LABELS)?).ok()
}

/// The pod's controller the webhook stamped, `(kind, name)`.
pub fn stamped_owner(annotations: &BTreeMap<String, String>) -> Option<(&str, &str)> {
    let (kind, name) = annotations.get(OWNER)?.split_once('/')?;
    (!kind.is_empty() && !name.is_empty() && !name.contains('/')).then_some((kind, name))
}

/// OpenTelemetry's `k8s.*` resource attributes of the pod's workload, from the stamped owner:
/// `k8s.replicaset.name` and, when the ReplicaSet's name is the Deployment's plus the pod's
/// `pod-template-hash`, `k8s.deployment.name`; `k8s.statefulset.name`, `k8s.daemonset.name`,
/// `k8s.job.name` for those controllers.
pub fn workload_attributes(annotations: &BTreeMap<String, String>) -> Vec<(&'static str, String)> {
    let Some((kind, name)) = stamped_owner(annotations) else { return Vec::new() };
    match kind {
        "ReplicaSet" => {
            let mut out = vec![("k8s.replicaset.name", name.to_owned())];
            let hash = stamped_labels(annotations).and_then(|l| l.get("pod-template-hash").cloned());
            if let Some(deployment) = hash.and_then(|h| name.strip_suffix(&format!("-{h}")).map(str::to_owned)) {
                out.push(("k8s.deployment.name", deployment));
            }
            out
        }
        "StatefulSet" => vec![("k8s.statefulset.name", name.to_owned())],
        "DaemonSet" => vec![("k8s.daemonset.name", name.to_owned())],
        "Job" => vec![("k8s.job.name", name.to_owned())],
        _ => Vec::new(),
    }
}

/// Whether the pod asks for the sidecar: `"true"` or `"false"` (absent: no); anything else is
/// an error.
pub fn sidecar_requested(annotations: &BTreeMap<String, String>) -> Result<bool, AnnotationError> {
    match annotations.get(SIDECAR).map(|v| v.trim()) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(AnnotationError::Value { key: SIDECAR, problem: "must be \"true\" or \"false\"" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn a_valid_wish_parses_and_every_wrong_one_names_its_annotation() {
        assert_eq!(auto_trace(&ann(&[])), Ok(None));
        let t = auto_trace(&ann(&[(TRACE_HOOK, "trace_syscalls"), (TRACE_ARGUMENTS, "-s openat connect")]))
            .expect("valid")
            .expect("wish");
        assert_eq!((t.hook, t.containers.as_str()), (Builtin::Syscalls, "*"));
        let e = auto_trace(&ann(&[(TRACE_ARGUMENTS, "-s openat")])).expect_err("no hook");
        assert!(e.to_string().contains(TRACE_ARGUMENTS), "{e}");
        let e = auto_trace(&ann(&[(TRACE_HOOK, "trace_nothing")])).expect_err("unknown");
        assert!(e.to_string().contains(TRACE_HOOK) && e.to_string().contains("trace_nothing"), "{e}");
        let e = auto_trace(&ann(&[(TRACE_HOOK, "trace_syscalls"), (TRACE_ARGUMENTS, "--bogus")])).expect_err("args");
        assert!(e.to_string().contains(TRACE_ARGUMENTS), "{e}");
        let e = auto_trace(&ann(&[(TRACE_HOOK, "trace_exec"), (TRACE_CONTAINERS, "")])).expect_err("glob");
        assert!(e.to_string().contains(TRACE_CONTAINERS), "{e}");
        let big = "c".repeat(MAX_CONTEXT + 1);
        assert!(auto_trace(&ann(&[(TRACE_HOOK, "trace_exec"), (TRACE_CONTEXT, &big)])).is_err());
        assert_eq!(sidecar_requested(&ann(&[(SIDECAR, "true")])), Ok(true));
        let stamped = ann(&[(LABELS, r#"{"app":"web"}"#), (OWNER, "ReplicaSet/web-7d9f8c")]);
        assert_eq!(stamped_labels(&stamped), Some(BTreeMap::from([("app".into(), "web".into())])));
        assert_eq!(stamped_owner(&stamped), Some(("ReplicaSet", "web-7d9f8c")));
        assert_eq!(stamped_labels(&ann(&[(LABELS, "[1]")])), None);
        assert_eq!(stamped_owner(&ann(&[(OWNER, "nope")])), None);
        let rs = ann(&[(LABELS, r#"{"pod-template-hash":"7d9f8c"}"#), (OWNER, "ReplicaSet/web-7d9f8c")]);
        assert_eq!(
            workload_attributes(&rs),
            vec![("k8s.replicaset.name", "web-7d9f8c".to_owned()), ("k8s.deployment.name", "web".to_owned())]
        );
        assert_eq!(
            workload_attributes(&ann(&[(OWNER, "StatefulSet/db")])),
            vec![("k8s.statefulset.name", "db".to_owned())]
        );
        assert!(workload_attributes(&ann(&[])).is_empty());
        assert!(sidecar_requested(&ann(&[(SIDECAR, "yes")])).is_err());
    }
}
