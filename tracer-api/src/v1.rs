//! The v1 REST API shapes. Key names and capitalisation are the contract: clients of the original
//! container-tracer (curl + jq) depend on them, so every field is renamed explicitly.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `GET /v1/pods`: pod key (pod name, or `<namespace>/<pod>` when two namespaces share a name) to pod.
pub type Pods = BTreeMap<String, Pod>;

/// One pod and its workload containers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    /// Container name to container.
    #[serde(rename = "Containers")]
    pub containers: BTreeMap<String, Container>,
}

/// One container as the v1 API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// The container *name* (the original used the name as its id; kept for compatibility).
    #[serde(rename = "Id")]
    pub id: String,
    /// Host pid of the process that spawned the container's init (runtime or shim).
    #[serde(rename = "Parent")]
    pub parent: Vec<u32>,
    /// The pod name (without namespace).
    #[serde(rename = "Pod")]
    pub pod: String,
    /// Host pid of every process of the container, the init process first.
    #[serde(rename = "Tasks")]
    pub tasks: Vec<u32>,
    /// Kubernetes namespace of the pod; empty for containers started outside Kubernetes.
    #[serde(rename = "Namespace")]
    pub namespace: String,
    /// Extension: the runtime's container id (64 hex characters under Kubernetes).
    #[serde(rename = "ContainerId", default)]
    pub container_id: String,
    /// Extension: the OCI runtime that created the container (`runc`, `crun`, ...) when known.
    #[serde(rename = "Runtime", default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Extension: creation time, nanoseconds since the Unix epoch, as seen by the hook.
    #[serde(rename = "Created", default)]
    pub created_unix_ns: u64,
    /// Extension: the pod's labels, as the admission webhook stamped them
    /// (`container-tracer.io/labels`); absent without the webhook.
    #[serde(rename = "Labels", default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Extension: the pod's controller, `<kind>/<name>` (`container-tracer.io/owner`).
    #[serde(rename = "Owner", default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// Body of every error answer: `{"Error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for a human.
    #[serde(rename = "Error")]
    pub error: String,
}

/// Builds the `/v1/pods` key of a pod: the bare pod name, or `<namespace>/<pod>` when `qualified`.
pub fn pod_key(namespace: &str, pod: &str, qualified: bool) -> String {
    if qualified {
        format!("{namespace}/{pod}")
    } else {
        pod.to_owned()
    }
}

/// `GET /v1/trace-hooks`: a list of providers, each a one-key object `{provider: Provider}`.
pub type TraceHooks = Vec<BTreeMap<String, Provider>>;

/// The hooks of one provider.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provider {
    /// Hook name to hook.
    #[serde(rename = "Tracers")]
    pub tracers: BTreeMap<String, TraceHook>,
}

/// One trace hook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceHook {
    /// Help text, one line per entry.
    #[serde(rename = "Description")]
    pub description: Vec<String>,
    /// The hook name.
    #[serde(rename = "Name")]
    pub name: String,
}

/// `POST /v1/trace-session` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSession {
    /// Pod name pattern (`*` and `?` wildcards); matches `<pod>` or `<namespace>/<pod>`. May be
    /// left out when `pod-selector` is given (then `*`).
    #[serde(default)]
    pub pod: String,
    /// Extension: a Kubernetes label selector (`app=web,tier!=db`) on the pods' labels as the
    /// admission webhook stamped them; with `pod`, both must match.
    #[serde(rename = "pod-selector", default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<String>,
    /// Container name pattern.
    pub container: String,
    /// Hook name.
    #[serde(rename = "trace-hook")]
    pub trace_hook: String,
    /// Hook arguments, one string split on whitespace.
    #[serde(rename = "trace-arguments", default)]
    pub trace_arguments: String,
    /// Free text attached to the session.
    #[serde(rename = "trace-user-context", default)]
    pub trace_user_context: String,
    /// Extension: create the session even when no container matches yet, and attach matching
    /// containers as they appear.
    #[serde(rename = "wait-for-containers", default)]
    pub wait_for_containers: bool,
    /// Extension: the session's id, chosen by the caller (a decimal u64), so that one id names
    /// the session on every node (tracer-svc creates it so); a taken id is a 409.
    #[serde(rename = "session-id", default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

/// `PUT /v1/trace-session/<id>` body: `{"Run": bool}` (`run` accepted too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunChange {
    /// Start (`true`) or stop (`false`).
    #[serde(rename = "Run", alias = "run")]
    pub run: bool,
}

/// One session as `GET /v1/trace-session/<id>` shows it (inside `{ "<id>": ... }`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Extension: made by a pod's `container-tracer.io/trace-hook` annotation at its first
    /// container's creation (not by a client); absent otherwise.
    #[serde(rename = "AutoTrace", default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_trace: bool,
    /// Pod name to the names of the session's containers in it.
    #[serde(rename = "Containers")]
    pub containers: BTreeMap<String, Vec<String>>,
    /// The user context given at creation.
    #[serde(rename = "Context")]
    pub context: String,
    /// Lines of the hook's start-up error, if it failed.
    #[serde(rename = "Error")]
    pub error: Option<Vec<String>>,
    /// The session id, decimal.
    #[serde(rename = "Id")]
    pub id: String,
    /// The node the session runs on. Through tracer-svc: every node it runs on, sorted and
    /// joined with `,` (the key and its type kept for clients of one node; `Nodes` has the list).
    #[serde(rename = "Node")]
    pub node: String,
    /// Extension (tracer-svc): the nodes the session runs on, sorted; absent from a node.
    #[serde(rename = "Nodes", default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<String>>,
    /// Extension: the namespace the session is confined to, when its `pod` pattern names one
    /// (`ns/web*`); absent when it may select pods of every namespace. Authorization of the
    /// session's requests uses it.
    #[serde(rename = "Namespace", default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Lines the hook returned when it started.
    #[serde(rename = "Output")]
    pub output: Option<Vec<String>>,
    /// Whether the session is tracing now.
    #[serde(rename = "Running")]
    pub running: bool,
    /// The hook name.
    #[serde(rename = "TraceHook")]
    pub trace_hook: String,
    /// The hook arguments, split on whitespace.
    #[serde(rename = "TraceParams")]
    pub trace_params: Vec<String>,
}

/// `GET /v1/trace-session/<id>` and `all`: session id to session.
pub type Sessions = BTreeMap<String, SessionInfo>;

/// One kernel event of a session, a line of `GET /v1/trace-session/<id>/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceEvent {
    /// Kernel timestamp in ns (the instance's trace clock, `mono`).
    pub timestamp: u64,
    /// CPU the event was recorded on.
    pub cpu: u32,
    /// Thread id.
    pub pid: i32,
    /// Process id (thread group).
    pub tgid: i32,
    /// Command name of the thread when it was first seen (after exec, the new one).
    pub comm: String,
    /// Event name (`sys_enter_openat`).
    pub event: String,
    /// Event subsystem (`syscalls`).
    pub system: String,
    /// The event's own fields, decoded from the kernel's format description.
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// Node name.
    pub node: String,
    /// Namespace of the container's pod.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Container name (empty when the thread could not be tied to a container).
    pub container: String,
    /// Runtime container id.
    pub container_id: String,
    /// Session id.
    pub session: String,
}

/// `GET /v1/trace-session/<id>/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStats {
    /// Every event taken from the kernel.
    pub events_read: u64,
    /// Events the kernel overwrote before they were read (`overrun` of `per_cpu/cpuN/stats`).
    pub events_lost_kernel: u64,
    /// Events a live consumer (a following stream) missed because it was too slow.
    pub events_dropped: u64,
    /// Events that aged out of the retention buffer with no consumer (not a loss).
    pub events_aged_out: u64,
    /// Events held in the retention buffer now.
    pub events_retained: u64,
    /// Events waiting for OTLP export now (0 without export).
    #[serde(default)]
    pub events_export_queued: u64,
    /// Events exported over OTLP.
    #[serde(default)]
    pub events_exported: u64,
    /// Events the exporter dropped: its queue was full (collector slow or down), the
    /// collector failed or rejected them.
    #[serde(default)]
    pub events_export_dropped: u64,
    /// Whether the session is running.
    pub running: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_serialises_with_contract_key_names() {
        let c = Container {
            id: "kube-rbac-proxy".into(),
            parent: vec![7337],
            pod: "jaeger-operator-7b46f44865-jvgz8".into(),
            tasks: vec![7438],
            namespace: "observability".into(),
            container_id: "abc".into(),
            runtime: None,
            created_unix_ns: 1,
            labels: None,
            owner: None,
        };
        let v = serde_json::to_value(&c).expect("serialise");
        for key in ["Id", "Parent", "Pod", "Tasks", "Namespace"] {
            assert!(v.get(key).is_some(), "missing {key} in {v}");
        }
        assert_eq!(v["Parent"], serde_json::json!([7337]));
        assert!(v.get("Runtime").is_none());
    }

    #[test]
    fn pods_fixture_from_the_contract_round_trips() {
        let text = include_str!("../tests/fixtures/pods.json");
        let pods: Pods = serde_json::from_str(text).expect("fixture parses");
        let pod = &pods["jaeger-operator-7b46f44865-jvgz8"];
        assert_eq!(pod.containers["jaeger-operator"].tasks, vec![1002496]);
        assert_eq!(pod.containers["kube-rbac-proxy"].parent, vec![7337]);
        let again: Pods = serde_json::from_value(serde_json::to_value(&pods).expect("ser")).expect("de");
        assert_eq!(again, pods);
    }

    #[test]
    fn pod_key_qualifies_only_when_asked() {
        assert_eq!(pod_key("ns", "p", false), "p");
        assert_eq!(pod_key("ns", "p", true), "ns/p");
    }
}
