//! tracer-node: the per-node container-tracer daemon. `run` wires the pieces; `router` exposes
//! the REST API for tests.

pub mod api;
pub mod batch;
pub mod caps;
pub mod config;
pub mod export;
pub mod ftrace;
pub mod hooks;
pub mod http_limits;
pub mod ids;
pub mod metrics;
pub mod registry;
pub mod sessions;
pub mod tasks;

use std::sync::{atomic::AtomicBool, Arc};

pub use api::{router, AppState};
pub use config::Config;
use registry::{procfs::Procfs, socket, spool, store::Store, Registry};
use tracing::{info, warn};

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// Capabilities are missing.
    #[error(transparent)]
    Caps(#[from] caps::CapsError),
    /// tracefs is unavailable.
    #[error(transparent)]
    Tracefs(#[from] ftrace::TracefsError),
    /// The state directory is unusable.
    #[error(transparent)]
    Store(#[from] registry::store::StoreError),
    /// Another daemon holds this one's directories.
    #[error(transparent)]
    Lock(#[from] registry::lock::LockError),
    /// The registry could not start (its exit watcher).
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    /// The registry socket could not be bound.
    #[error(transparent)]
    Socket(#[from] socket::SocketError),
    /// The spool directory is unusable.
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
    /// The TLS certificate or key is unusable.
    #[error(transparent)]
    Tls(#[from] tracer_tls::TlsError),
    /// The token file is unusable, or there is no Kubernetes API to check tokens with.
    #[error(transparent)]
    Auth(#[from] tracer_auth::http::AuthSetupError),
    /// The OTLP exporter could not be set up.
    #[error(transparent)]
    Export(#[from] export::transport::TransportError),
    /// The API address could not be bound or serving failed.
    #[error("REST API on {address}: {source}")]
    Serve {
        /// The address.
        address: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl RunError {
    /// Whether the error is the operator's configuration (exit 64) rather than the host.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            RunError::Config(_)
                | RunError::Export(_)
                | RunError::Auth(tracer_auth::http::AuthSetupError::TokenFile(_))
                | RunError::Tls(_)
        )
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), RunError> {
    config.validate()?;
    // A token file that cannot be used is a configuration error, found before anything is touched.
    let auth = api::auth::Auth::from_flags(config.auth_token_file.as_deref(), config.auth_kubernetes).await?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(tracer_tls::ReloadingCert::open(cert, key)?),
        _ => None,
    };
    caps::check()?;
    // Before any file is opened: the connection cap is sized within this limit.
    let fd = tracer_http::fd_limit::raise(1 << 20);
    // Before anything is touched: a second daemon must fail here, not after it has replaced the
    // first one's socket or removed its ftrace instances as stale.
    let socket_dir = config.registry_socket.parent().unwrap_or(std::path::Path::new("/"));
    let _lock = registry::lock::DirLock::acquire(&[socket_dir, &config.state_dir])?;
    let tracefs = ftrace::Tracefs::find_or_mount(&config.sysfs_path)?.with_prefix(&config.instance_prefix);
    let node_name = config.node_name();
    info!(node = %node_name, tracefs = %tracefs.root().display(), "starting tracer-node");

    // Instances a killed predecessor left behind are ours to remove before anything starts.
    let stale = tracefs.remove_stale_instances(&[])?;
    if stale > 0 {
        info!(removed = stale, "removed ftrace instances left by a previous run");
    }

    let registry =
        Registry::new(Procfs::new(&config.procfs_path, &config.sysfs_path), Some(Store::open(&config.state_dir)?))?;
    // Before any container is loaded: each registration is then followed from the start.
    let tracker = match tasks::TaskTracker::start(&tracefs, registry.procfs().clone(), config.task_buffer_kb) {
        Ok(t) => {
            registry.set_tracker(t.clone());
            Some(t)
        }
        Err(e) => {
            warn!(error = %e, "task tracker unavailable: GET /v1/pods reads every container from procfs");
            None
        }
    };
    let external = match &config.trace_hooks {
        Some(dir) => {
            let env =
                hooks::external::ProviderEnv { procfs: config.procfs_path.clone(), sysfs: config.sysfs_path.clone() };
            hooks::external::ExternalProvider::discover(dir, &env).await
        }
        None => Vec::new(),
    };
    let metrics = Arc::new(metrics::Metrics::default());
    let exporter = match config.export.resolve().map_err(config::ConfigError::from)? {
        Some(c) => Some(export::Exporter::new(c, metrics.clone())?),
        None => {
            info!("OTLP export off (no endpoint)");
            None
        }
    };
    let sessions = sessions::SessionManager::new(
        node_name.clone(),
        tracefs.clone(),
        Arc::new(hooks::Catalog::new(tracefs.clone(), external)),
        registry.clone(),
        sessions::Settings {
            buffer_kb: config.trace_buffer_kb,
            max_sessions: usize::try_from(config.max_sessions).unwrap_or(usize::MAX),
            max_running: usize::try_from(config.max_running_sessions).unwrap_or(usize::MAX),
            max_auto_running: usize::try_from(config.max_auto_sessions).unwrap_or(usize::MAX),
            auto_retention: std::time::Duration::from_secs(config.auto_trace_retention_secs),
            memory_budget_kb: config.trace_memory_budget_mb.saturating_mul(1024),
            retention_events: usize::try_from(config.trace_retention).unwrap_or(usize::MAX),
            exporter: exporter.clone(),
            metrics,
        },
    );
    let loaded = registry.load_persisted()?;
    info!(loaded, "registry loaded from the state directory");

    // Listen before replaying the spool: hooks firing meanwhile are served live, and every
    // registration is checked for liveness, so the order of the two sources does not matter.
    let listener = socket::bind(&config.registry_socket)?;
    let budget = std::time::Duration::from_millis(config.attach_budget_ms);
    let socket_task = tokio::spawn(socket::serve(listener, registry.clone(), budget));
    let spool = Arc::new(spool::Spool::open(&config.spool_dir)?);
    let spool_task = {
        let registry = registry.clone();
        tokio::task::spawn_blocking(move || spool::watch(spool, registry)).await.map_err(|e| {
            RunError::Spool(spool::SpoolError::Dir {
                op: "replay",
                path: config.spool_dir.clone(),
                source: std::io::Error::other(e),
            })
        })??
    };

    let token_watch = auth.watch();
    let insecure = auth.warn_exposure(config.address, tls.is_some(), api::INSECURE_WARNING);
    let policy = Arc::new(api::auth::AuthPolicy { auth, protect_metrics: config.auth_metrics });
    let sizing = http_limits::size(&config, fd, sessions.cpus());
    if sizing.starved {
        warn!(
            fd_soft_limit = fd.soft,
            fd_hard_limit = fd.hard,
            reserve = sizing.reserve,
            max_connections = sizing.limits.max_connections,
            "the fd limit is too low for --max-running-sessions and the registry: raise LimitNOFILE"
        );
    }
    info!(
        fd_soft_limit = fd.soft,
        raised_from = fd.was,
        max_connections = sizing.limits.max_connections,
        "connection cap sized"
    );
    let ready = Arc::new(AtomicBool::new(false));
    let http_stats = Arc::new(tracer_http::ServerStats::default());
    let state = AppState {
        registry: registry.clone(),
        sessions: sessions.clone(),
        node_name,
        ready: ready.clone(),
        auth: policy,
        insecure,
        http: http_stats.clone(),
    };
    let address = config.address;
    let http = tracer_http::bind(address).map_err(|source| RunError::Serve { address, source })?;
    ready.store(true, std::sync::atomic::Ordering::Release);
    info!(
        %address, tls = tls.is_some(), registry_socket = %config.registry_socket.display(),
        containers = registry.len(), "ready"
    );
    let cert_watch = tls.as_ref().map(tracer_auth::reload::watch);
    let server_tls = match &tls {
        Some(cert) => Some(cert.server_config()?),
        None => None,
    };
    tracer_http::serve(http, server_tls, router(state), sizing.limits, http_stats, tracer_http::shutdown_signal())
        .await;
    if let Some(t) = cert_watch {
        t.abort();
    }

    socket_task.abort();
    spool_task.abort();
    if let Some(t) = token_watch {
        t.abort();
    }
    // Leave no instance behind: the tracker's, then every session's (their readers drain).
    if let Some(t) = tracker.clone() {
        let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
    }
    if let Err(e) = sessions.delete_all().await {
        tracing::warn!(error = %e, "cleaning up sessions at shutdown failed");
    }
    if let Some(ex) = &exporter {
        ex.drain(std::time::Duration::from_secs(20)).await;
    }
    let _ = std::fs::remove_file(&config.registry_socket);
    info!("stopped");
    Ok(())
}
