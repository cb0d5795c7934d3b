//! tracer-svc: the v1 API for the whole cluster. Each request is forwarded to every
//! tracer-node at once (each with its own deadline, over pooled keep-alive connections) and
//! the answers are merged in the contract's shape; nodes that fail are named in
//! `X-Tracer-Missing-Nodes`, logged and counted. The nodes are the ready endpoints of the
//! tracer-node Service, watched through the Kubernetes API, or a static `--nodes` list.

pub mod api;
pub mod client;
pub mod config;
pub mod discovery;
pub mod fanout;
pub mod merge;
pub mod metrics;
pub mod nodes;

use std::{path::Path, sync::Arc};

use tracing::info;

pub use api::{router, AppState};
pub use config::Config;
use tracer_auth::http::{Auth, AuthPolicy};

/// Why tracer-svc cannot start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The flags.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The callers' auth (a token file, `--auth-kubernetes` without a reachable API).
    #[error(transparent)]
    Auth(#[from] tracer_auth::http::AuthSetupError),
    /// The node token file.
    #[error(transparent)]
    NodeToken(#[from] tracer_auth::TokenFileError),
    /// The serving certificate.
    #[error(transparent)]
    Tls(#[from] tracer_tls::TlsError),
    /// The node client.
    #[error(transparent)]
    Client(#[from] client::ClientError),
    /// The CA bundle cannot be read.
    #[error("cannot read --node-ca-file {path}: {source}")]
    CaFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No `--nodes` and no Kubernetes API to discover them with.
    #[error("no --nodes given and no Kubernetes API to discover them ({0})")]
    NoDiscovery(String),
    /// The address cannot be bound.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address.
        address: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The node list: static, or watched (the task returned then).
async fn membership(
    config: &Config,
    metrics: &Arc<metrics::Metrics>,
) -> Result<(Arc<nodes::Membership>, Option<tokio::task::JoinHandle<()>>), RunError> {
    if !config.nodes.is_empty() {
        info!(nodes = config.nodes.len(), "static node list");
        return Ok((nodes::Membership::fixed(config.nodes.clone()), None));
    }
    let kube_config = kube::Config::infer().await.map_err(|e| RunError::NoDiscovery(e.to_string()))?;
    // The service account's namespace in a pod, the context's with a kubeconfig.
    let namespace = config.kube_namespace.clone().unwrap_or_else(|| kube_config.default_namespace.clone());
    let client = kube::Client::try_from(kube_config).map_err(|e| RunError::NoDiscovery(e.to_string()))?;
    let membership = nodes::Membership::discovered();
    let target = discovery::Target {
        namespace,
        service: config.kube_service.clone(),
        port_name: config.kube_port_name.clone(),
        tls: config.node_tls,
    };
    let task = discovery::spawn(client, target, membership.clone(), metrics.clone());
    Ok((membership, Some(task)))
}

/// The token presented to nodes: `--node-token-file`, else the pod's service-account token.
fn node_token(config: &Config) -> Result<Option<Arc<tracer_auth::TokenFile>>, RunError> {
    let path = match &config.node_token_file {
        Some(p) => p.clone(),
        None if Path::new(config::SERVICE_ACCOUNT_TOKEN).exists() => config::SERVICE_ACCOUNT_TOKEN.into(),
        None => {
            info!("no node token (no --node-token-file, no service-account token): nodes are called without one");
            return Ok(None);
        }
    };
    Ok(Some(tracer_auth::TokenFile::open_credential(&path)?))
}

/// Runs tracer-svc until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), RunError> {
    config.validate()?;
    let auth = Auth::from_flags(config.auth_token_file.as_deref(), config.auth_kubernetes).await?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(tracer_tls::ReloadingCert::open(cert, key)?),
        _ => None,
    };
    let token = node_token(&config)?;
    let ca_pem = match &config.node_ca_file {
        Some(path) => Some(std::fs::read(path).map_err(|source| RunError::CaFile { path: path.clone(), source })?),
        None => None,
    };
    let client = Arc::new(client::NodeClient::new(client::ClientSettings {
        timeout: config.node_timeout(),
        max_in_flight: usize::try_from(config.max_node_requests).unwrap_or(usize::MAX),
        max_body: usize::try_from(config.max_node_body_mb.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX),
        token: token.clone(),
        ca_pem,
        server_name: config.node_tls_server_name.clone(),
    })?);
    let metrics = Arc::new(metrics::Metrics::default());
    let (nodes, discovery) = membership(&config, &metrics).await?;

    let mut watches = Vec::new();
    if let Some(t) = &token {
        // A projected service-account token is rotated by the kubelet.
        watches.push(tracer_auth::reload::watch(t));
    }
    watches.extend(auth.watch());
    if let Some(cert) = &tls {
        watches.push(tracer_auth::reload::watch(cert));
    }
    let insecure = auth.warn_exposure(config.address, tls.is_some(), api::INSECURE_WARNING);
    let state = AppState {
        nodes,
        client,
        auth: Arc::new(AuthPolicy { auth, protect_metrics: config.auth_metrics }),
        metrics,
        insecure,
    };
    let fd = tracer_http::fd_limit::raise(1 << 20);
    let limits = tracer_http::Limits {
        // Room below the fd limit for the connections to the nodes.
        max_connections: usize::try_from(config.max_connections)
            .unwrap_or(usize::MAX)
            .min((fd.soft / 2) as usize)
            .max(16),
        write_timeout: std::time::Duration::from_secs(config.http_write_timeout_secs),
        ..tracer_http::Limits::default()
    };
    let address = config.address;
    let listener = tracer_http::bind(address).map_err(|source| RunError::Listen { address, source })?;
    let server_tls = match &tls {
        Some(cert) => Some(cert.server_config()?),
        None => None,
    };
    info!(%address, tls = server_tls.is_some(), node_timeout_ms = config.node_timeout, "tracer-svc ready");
    let stats = Arc::new(tracer_http::ServerStats::default());
    tracer_http::serve(listener, server_tls, router(state), limits, stats, tracer_http::shutdown_signal()).await;
    for w in watches {
        w.abort();
    }
    if let Some(d) = discovery {
        d.abort();
    }
    info!("stopped");
    Ok(())
}
