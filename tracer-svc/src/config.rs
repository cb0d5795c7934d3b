//! Command line and environment of tracer-svc. The discovery variables keep the original's
//! names (`TRACE_KUBE_SERVICE`, `TRACE_KUBE_NAMESPACE`).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;

use crate::nodes::{NodeEndpoint, NodeUrlError};

/// The cluster-wide v1 API: each request goes to every tracer-node at once and the answers
/// are merged; nodes that fail are named in `X-Tracer-Missing-Nodes`.
#[derive(Debug, Clone, Parser)]
#[command(name = "tracer-svc", version)]
pub struct Config {
    /// Address of the API: `HOST:PORT`, or `:PORT` for every interface.
    #[arg(long, env = "TRACER_SVC_ADDRESS", default_value = "127.0.0.1:8090", value_parser = tracer_http::parse_address)]
    pub address: SocketAddr,

    /// The tracer-nodes, as base URLs (`http://10.0.0.5:8080,https://node-b:8443`). Without it
    /// the nodes are the ready endpoints of the tracer-node Service, watched through the
    /// Kubernetes API (in-cluster or `KUBECONFIG`).
    #[arg(long, env = "TRACER_SVC_NODES", value_delimiter = ',', value_parser = NodeEndpoint::from_url)]
    pub nodes: Vec<NodeEndpoint>,

    /// Time each node has to answer, in milliseconds (for a follow stream: to answer its
    /// headers). A node past it is left out of the answer and named.
    #[arg(long, env = "TRACER_SVC_NODE_TIMEOUT", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub node_timeout: u64,

    /// Requests to nodes in flight at once, over all callers (one answer for 50 nodes takes 50).
    #[arg(long, env = "TRACER_SVC_MAX_NODE_REQUESTS", default_value_t = 512,
          value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub max_node_requests: u64,

    /// Largest answer read from one node, in MiB (a node's `/v1/pods` with 1,000 containers
    /// is about 1 MiB).
    #[arg(long, env = "TRACER_SVC_MAX_NODE_BODY_MB", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub max_node_body_mb: u64,

    /// The bearer token tracer-svc presents to the nodes, re-read when it changes. Default: the
    /// pod's service-account token, when there is one.
    #[arg(long, env = "TRACER_SVC_NODE_TOKEN_FILE")]
    pub node_token_file: Option<PathBuf>,

    /// CA bundle (PEM) that node certificates must chain to; then only it is trusted for them.
    /// Default: the system's roots.
    #[arg(long, env = "TRACER_SVC_NODE_CA_FILE")]
    pub node_ca_file: Option<PathBuf>,

    /// Reach discovered nodes over HTTPS (a static `--nodes` URL says its scheme itself).
    #[arg(long, env = "TRACER_SVC_NODE_TLS")]
    pub node_tls: bool,

    /// The name node certificates are checked against, whatever address a node is reached at
    /// (a DaemonSet's pods share one certificate, e.g. for
    /// `container-tracer-backend.container-tracer.svc`). Default: the node URL's host.
    #[arg(long, env = "TRACER_SVC_NODE_TLS_SERVER_NAME")]
    pub node_tls_server_name: Option<String>,

    /// The tracer-node Service whose EndpointSlices are watched.
    #[arg(long, env = "TRACE_KUBE_SERVICE", default_value = "container-tracer-backend")]
    pub kube_service: String,

    /// Its namespace. Default: the service account's namespace, else the kubeconfig context's.
    #[arg(long, env = "TRACE_KUBE_NAMESPACE")]
    pub kube_namespace: Option<String>,

    /// The name of the Service port that serves the node API; the slice's first port when
    /// no port has this name.
    #[arg(long, env = "TRACER_SVC_KUBE_PORT_NAME", default_value = "api")]
    pub kube_port_name: String,

    /// Bearer tokens, one per line, that tracer-svc's own API accepts (reloaded on change).
    #[arg(long, env = "TRACER_SVC_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,

    /// Check callers' tokens with the Kubernetes API and authorize each request as a node
    /// would (`container-tracer.io` resources, per namespace), across the whole cluster.
    #[arg(long, env = "TRACER_SVC_AUTH_KUBERNETES")]
    pub auth_kubernetes: bool,

    /// Serve a non-loopback address with no authentication at all (logged, shown by `/readyz`).
    #[arg(long, env = "TRACER_SVC_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// Require authentication for `/metrics` too.
    #[arg(long, env = "TRACER_SVC_AUTH_METRICS")]
    pub auth_metrics: bool,

    /// Serve the API over TLS with this certificate chain (PEM); reloaded when it changes.
    #[arg(long, env = "TRACER_SVC_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM) of `--tls-cert`.
    #[arg(long, env = "TRACER_SVC_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// API connections open at once at most (the connection idle the longest is closed to
    /// admit a new one).
    #[arg(long, env = "TRACER_SVC_MAX_CONNECTIONS", default_value_t = 4096,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,

    /// Seconds a caller may read nothing of an answer (an event stream) before it is dropped.
    #[arg(long, env = "TRACER_SVC_HTTP_WRITE_TIMEOUT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub http_write_timeout_secs: u64,
}

/// Where the kubelet puts the pod's service-account token.
pub const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A `--nodes` entry.
    #[error(transparent)]
    NodeUrl(#[from] NodeUrlError),
    /// The same node twice.
    #[error("--nodes names {0} twice")]
    DuplicateNode(String),
    /// More than one auth mode.
    #[error("choose one of --auth-token-file, --auth-kubernetes and --insecure-no-auth")]
    TwoAuthModes,
    /// A non-loopback address without auth and without saying so.
    #[error("{0} is not a loopback address: give --auth-token-file or --auth-kubernetes (or --insecure-no-auth)")]
    OpenToTheNetwork(SocketAddr),
    /// A server name that is not one.
    #[error("--node-tls-server-name {0:?} is not a DNS name or an IP address")]
    ServerName(String),
}

impl Config {
    /// Checks what can be checked before anything is opened.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::BTreeSet::new();
        for n in &self.nodes {
            if !seen.insert(&n.url) {
                return Err(ConfigError::DuplicateNode(n.url.clone()));
            }
        }
        let modes = [self.auth_token_file.is_some(), self.auth_kubernetes, self.insecure_no_auth];
        if modes.iter().filter(|m| **m).count() > 1 {
            return Err(ConfigError::TwoAuthModes);
        }
        let open = self.auth_token_file.is_none() && !self.auth_kubernetes;
        if open && !self.insecure_no_auth && !self.address.ip().is_loopback() {
            return Err(ConfigError::OpenToTheNetwork(self.address));
        }
        if let Some(name) = &self.node_tls_server_name {
            rustls::pki_types::ServerName::try_from(name.as_str())
                .map_err(|_| ConfigError::ServerName(name.clone()))?;
        }
        Ok(())
    }

    /// `--node-timeout` as a duration.
    pub fn node_timeout(&self) -> Duration {
        Duration::from_millis(self.node_timeout)
    }
}
