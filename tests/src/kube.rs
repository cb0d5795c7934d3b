//! The stand-in Kubernetes API server (`tests/support/kube_standin.py`), which answers
//! TokenReview and SubjectAccessReview from a policy as the real one does, and requests as a
//! user with a bearer token.

use std::time::Duration;

use crate::{agent, wait_until, Node};

/// The stand-in API server (tests/support/kube_standin.py), killed on drop.
pub struct KubeStandIn {
    child: std::process::Child,
    log: std::path::PathBuf,
    port: u16,
}

impl KubeStandIn {
    /// Starts it with `policy` (see the script), its files in `dir`.
    pub fn start(dir: &std::path::Path, policy: &serde_json::Value) -> Self {
        let (policy_file, port_file, log) = (dir.join("policy.json"), dir.join("port"), dir.join("requests.log"));
        std::fs::write(&policy_file, policy.to_string()).expect("policy");
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("support/kube_standin.py");
        let child = std::process::Command::new("python3")
            .arg(script)
            .args([&policy_file, &port_file, &log])
            .spawn()
            .expect("start the stand-in API server");
        assert!(wait_until(Duration::from_secs(10), || port_file.exists()), "stand-in API server up");
        let port = std::fs::read_to_string(&port_file).expect("port").trim().parse().expect("port number");
        KubeStandIn { child, log, port }
    }

    /// How many reviews of `kind` (`tokenreviews`, `subjectaccessreviews`) were asked.
    pub fn asked(&self, kind: &str) -> usize {
        std::fs::read_to_string(&self.log).unwrap_or_default().lines().filter(|l| l.contains(kind)).count()
    }

    /// A kubeconfig in `dir` aimed at it, with a token of the node's own.
    pub fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        self.kubeconfig_in(dir, None)
    }

    /// A kubeconfig whose context has `namespace` (the client's default namespace).
    pub fn kubeconfig_in(&self, dir: &std::path::Path, namespace: Option<&str>) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        let ns = namespace.map(|n| format!("\n    namespace: {n}")).unwrap_or_default();
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: http://127.0.0.1:{}\n\
             users:\n- name: node\n  user:\n    token: node-sa-token\ncontexts:\n- name: standin\n  context:\n    \
             cluster: standin\n    user: node{ns}\ncurrent-context: standin\n",
            self.port
        );
        std::fs::write(&path, config).expect("kubeconfig");
        path
    }

    fn control(&self, path: &str, body: &serde_json::Value) {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let resp = agent().post(&url).send(body.to_string()).expect("stand-in control");
        assert_eq!(resp.status(), 200, "{path}");
    }

    /// Adds, changes (`MODIFIED`) or removes (`DELETED`) an EndpointSlice; open watches see it.
    pub fn endpoint_slice(&self, change: &str, slice: &serde_json::Value) {
        self.control("/_standin/endpointslices", &serde_json::json!({"type": change, "object": slice}));
    }

    /// Ends every open watch (a dropped connection: the client resumes from its version).
    pub fn break_watches(&self) {
        self.control("/_standin/break", &serde_json::json!({}));
    }

    /// Ends every open watch and forgets the versions before now (a resumed watch gets 410
    /// Expired and must list again).
    pub fn expire(&self) {
        self.control("/_standin/expire", &serde_json::json!({}));
    }

    /// The GETs it was asked, as logged (`{"method", "path", "query"}`).
    pub fn gets(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["method"] == "GET")
            .collect()
    }
}

impl Drop for KubeStandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `method path` with a bearer token; answers the status and the JSON body (null if none).
pub fn get_as(node: &Node, method: &str, path: &str, token: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let url = format!("{}{path}", node.url);
    let auth = format!("Bearer {token}");
    let agent = agent();
    let mut resp = match (method, body) {
        ("GET", _) => agent.get(&url).header("Authorization", &auth).call(),
        ("DELETE", _) => agent.delete(&url).header("Authorization", &auth).call(),
        ("POST", b) => agent.post(&url).header("Authorization", &auth).send(b.unwrap_or("")),
        (_, b) => agent.put(&url).header("Authorization", &auth).send(b.unwrap_or("")),
    }
    .expect("request");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}
