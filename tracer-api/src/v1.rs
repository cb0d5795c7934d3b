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
