//! Command line and environment of tracer-node. Flag and variable names follow the original
//! container-tracer where it had them (`TRACER_API_ADDRESS`, `TRACER_NODE_NAME`, ...).

use std::{net::SocketAddr, path::PathBuf};

use clap::Parser;
use tracer_api::hook::{DEFAULT_SOCKET, DEFAULT_SPOOL_DIR};

/// Per-node container-tracer daemon: keeps the live container registry fed by the runtime hook
/// and serves the v1 REST API.
#[derive(Debug, Clone, Parser)]
#[command(name = "tracer-node", version)]
pub struct Config {
    /// Address of the REST API: `HOST:PORT`, or `:PORT` for every interface.
    #[arg(long, env = "TRACER_API_ADDRESS", default_value = "127.0.0.1:8080", value_parser = parse_address)]
    pub address: SocketAddr,

    /// Bearer tokens, one per line, that the API accepts; the file is reloaded when it
    /// changes. `/healthz` and `/readyz` stay open.
    #[arg(long, env = "TRACER_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,

    /// Check bearer tokens with the Kubernetes API (TokenReview) and authorize each request
    /// (SubjectAccessReview) in the virtual API group `container-tracer.io`, with the pod's or
    /// session's namespace. The API is found in-cluster or through `KUBECONFIG`.
    #[arg(long, env = "TRACER_AUTH_KUBERNETES")]
    pub auth_kubernetes: bool,

    /// Serve a non-loopback address with no authentication at all (the API streams every
    /// system call of every container): logged as a warning at start-up and shown by `/readyz`.
    #[arg(long, env = "TRACER_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// Require authentication for `/metrics` too (it is open by default, like `/healthz`).
    #[arg(long, env = "TRACER_AUTH_METRICS")]
    pub auth_metrics: bool,

    /// Serve the API over TLS with this certificate chain (PEM, leaf first); reloaded when it
    /// changes. Needs `--tls-key`.
    #[arg(long, env = "TRACER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM) of `--tls-cert`.
    #[arg(long, env = "TRACER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Name of this node in answers (defaults to the hostname).
    #[arg(long, env = "TRACER_NODE_NAME")]
    pub node_name: Option<String>,

    /// Where the host's procfs is mounted (the daemon must share the host pid namespace).
    #[arg(long, env = "TRACER_PROCFS_PATH", default_value = "/proc")]
    pub procfs_path: PathBuf,

    /// Where the host's sysfs is mounted (cgroups under `fs/cgroup`, tracefs under `kernel/tracing`).
    #[arg(long, env = "TRACER_SYSFS_PATH", default_value = "/sys")]
    pub sysfs_path: PathBuf,

    /// Unix socket on which the runtime hook registers containers (root only, mode 0600).
    #[arg(long, env = "TRACER_REGISTRY_SOCKET", default_value = DEFAULT_SOCKET)]
    pub registry_socket: PathBuf,

    /// Directory of events the hook could not deliver; replayed at start and as files appear.
    #[arg(long, env = "TRACER_SPOOL_DIR", default_value = DEFAULT_SPOOL_DIR)]
    pub spool_dir: PathBuf,

    /// Directory of external trace hook providers (each sub-directory with an executable
    /// `manager.*`); none when unset.
    #[arg(long = "trace-hooks", env = "TRACER_HOOKS")]
    pub trace_hooks: Option<PathBuf>,

    /// Per-CPU ring buffer of each session's ftrace instance, in KiB.
    #[arg(long, env = "TRACER_TRACE_BUFFER_KB", default_value_t = 8192,
          value_parser = clap::value_parser!(u64).range(64..=1_048_576))]
    pub trace_buffer_kb: u64,

    /// Per-CPU ring buffer of the task tracker's instance (the containers' forks, exits and
    /// execs, which keep `GET /v1/pods` in memory), in KiB. A fork costs about 100 bytes; a
    /// buffer that overflows between two reads makes every container be read again.
    #[arg(long, env = "TRACER_TASK_BUFFER_KB", default_value_t = 512,
          value_parser = clap::value_parser!(u64).range(16..=65_536))]
    pub task_buffer_kb: u64,

    /// Events each session keeps for `GET /v1/trace-session/<id>/events`.
    #[arg(long, env = "TRACER_TRACE_RETENTION", default_value_t = 262_144,
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub trace_retention: u64,

    /// Name prefix of the ftrace instances this daemon creates and owns (removed at start-up
    /// and by `DELETE /v1/trace-session/all`). Change it only to run several daemons on a host.
    #[arg(long, env = "TRACER_INSTANCE_PREFIX", default_value = crate::ftrace::INSTANCE_PREFIX)]
    pub instance_prefix: String,

    /// Sessions (running or not) this node keeps at most; more are refused with a 429.
    #[arg(long, env = "TRACER_MAX_SESSIONS", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_sessions: u64,

    /// Sessions running at once at most (each is an ftrace instance and a reader thread per CPU).
    #[arg(long, env = "TRACER_MAX_RUNNING_SESSIONS", default_value_t = 32,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub max_running_sessions: u64,

    /// Auto-trace sessions (made by pods' `container-tracer.io/trace-hook` annotations) running
    /// at once at most: a flood of annotated pods cannot take the kernel's memory. Past it the
    /// session shows the refusal in `Error`; the container starts regardless.
    #[arg(long, env = "TRACER_MAX_AUTO_SESSIONS", default_value_t = 16,
          value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub max_auto_sessions: u64,

    /// Seconds an auto-trace session is kept after its pod's last container is gone (stopped, its
    /// events still readable), then deleted.
    #[arg(long, env = "TRACER_AUTO_TRACE_RETENTION_SECS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(0..=604_800))]
    pub auto_trace_retention_secs: u64,

    /// Kernel memory the running sessions' ring buffers may take in all, in MiB: a start that
    /// would exceed it (`--trace-buffer-kb` x CPUs per session) is refused with a 429.
    #[arg(long, env = "TRACER_TRACE_MEMORY_BUDGET_MB", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub trace_memory_budget_mb: u64,

    /// Directory where the registry is persisted, so a restart keeps the live containers.
    #[arg(long, env = "TRACER_STATE_DIR", default_value = "/run/container-tracer/state")]
    pub state_dir: PathBuf,

    /// How long attaching a new container to the running sessions may hold its hook's answer,
    /// in milliseconds; keep it below the hook's `--deadline-ms` (250). Past it the hook is
    /// answered and attaching goes on.
    #[arg(long, env = "TRACER_ATTACH_BUDGET_MS", default_value_t = 150,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub attach_budget_ms: u64,

    /// REST API connections open at once at most (TLS handshakes included); at the cap the
    /// connection idle the longest is closed to admit a new one. The daemon raises its fd soft
    /// limit to the hard one at start-up and lowers this cap to fit below it, with room for the
    /// registry socket, the spool and the running sessions' files.
    #[arg(long, env = "TRACER_MAX_CONNECTIONS", default_value_t = 4096,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,

    /// Seconds a client has to send a request's headers, from its connection's start or the
    /// end of its previous request (so it also closes idle keep-alive connections).
    #[arg(long, env = "TRACER_HTTP_HEADER_TIMEOUT_SECS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub http_header_timeout_secs: u64,

    /// Seconds a client has to send a request's whole body.
    #[arg(long, env = "TRACER_HTTP_BODY_TIMEOUT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub http_body_timeout_secs: u64,

    /// Seconds a client may read nothing of an answer (a stalled download or event stream)
    /// before its connection is dropped.
    #[arg(long, env = "TRACER_HTTP_WRITE_TIMEOUT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub http_write_timeout_secs: u64,

    /// OTLP export.
    #[command(flatten)]
    pub export: crate::export::ExportArgs,
}

/// Accepts the original's Go-style `:8080` as well as `HOST:PORT`.
use tracer_http::parse_address;

/// A configuration that cannot work, found before anything is bound or mounted.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A path flag is relative: the daemon's working directory is not something to depend on.
    #[error("--{flag} must be an absolute path, got {path:?}")]
    RelativePath {
        /// The flag.
        flag: &'static str,
        /// Its value.
        path: PathBuf,
    },
    /// The procfs path does not look like a procfs.
    #[error("--procfs-path {0:?} is not a procfs (no self/stat)")]
    NotProcfs(PathBuf),
    /// The instance prefix is unusable as a directory name prefix.
    #[error("--instance-prefix {0:?} must be 1 to 64 characters of a-z, 0-9, '-' and '_'")]
    InstancePrefix(String),
    /// The node name is empty or has characters that do not belong in a name.
    #[error("--node-name {0:?} is not a valid node name")]
    NodeName(String),
    /// A non-loopback address with no authentication, not explicitly asked for.
    #[error(
        "--address {0} is reachable from other hosts: give --auth-token-file FILE or --auth-kubernetes, or --insecure-no-auth to serve every container's trace to anyone who can connect"
    )]
    Unauthenticated(SocketAddr),
    /// Both an auth mode and `--insecure-no-auth`.
    #[error("choose one of --auth-token-file, --auth-kubernetes and --insecure-no-auth")]
    AuthContradiction,
    /// An export setting is unusable.
    #[error(transparent)]
    Export(#[from] crate::export::ExportConfigError),
}

impl Config {
    /// Checks what can be checked without side effects.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (flag, path) in [
            ("procfs-path", &self.procfs_path),
            ("sysfs-path", &self.sysfs_path),
            ("registry-socket", &self.registry_socket),
            ("spool-dir", &self.spool_dir),
            ("state-dir", &self.state_dir),
        ]
        .into_iter()
        .chain(self.trace_hooks.as_ref().map(|p| ("trace-hooks", p)))
        .chain(self.tls_cert.as_ref().map(|p| ("tls-cert", p)))
        .chain(self.tls_key.as_ref().map(|p| ("tls-key", p)))
        {
            if !path.is_absolute() {
                return Err(ConfigError::RelativePath { flag, path: path.clone() });
            }
        }
        if !self.procfs_path.join("self/stat").exists() {
            return Err(ConfigError::NotProcfs(self.procfs_path.clone()));
        }
        if let Some(path) = &self.auth_token_file {
            if !path.is_absolute() {
                return Err(ConfigError::RelativePath { flag: "auth-token-file", path: path.clone() });
            }
        }
        let modes = [self.auth_token_file.is_some(), self.auth_kubernetes, self.insecure_no_auth];
        if modes.iter().filter(|m| **m).count() > 1 {
            return Err(ConfigError::AuthContradiction);
        }
        if !modes.iter().any(|m| *m) && !self.address.ip().is_loopback() {
            return Err(ConfigError::Unauthenticated(self.address));
        }
        let p = &self.instance_prefix;
        if p.is_empty()
            || p.len() > 64
            || !p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(ConfigError::InstancePrefix(p.clone()));
        }
        if let Some(name) = &self.node_name {
            if name.is_empty() || name.len() > 253 || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(ConfigError::NodeName(name.clone()));
            }
        }
        self.export.resolve()?;
        Ok(())
    }

    /// The node name: the flag, else the kernel's hostname.
    pub fn node_name(&self) -> String {
        self.node_name.clone().unwrap_or_else(|| rustix::system::uname().nodename().to_string_lossy().into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_style_and_full_addresses_parse() {
        assert_eq!(parse_address(":8080").expect("ok"), "0.0.0.0:8080".parse::<SocketAddr>().expect("addr"));
        assert_eq!(parse_address("127.0.0.1:9").expect("ok").port(), 9);
        assert!(parse_address("nonsense").is_err());
    }

    #[test]
    fn a_non_loopback_address_needs_auth_or_an_explicit_opt_out() {
        let c = Config::parse_from(["tracer-node"]);
        assert!(c.address.ip().is_loopback(), "the default listens on loopback only");
        let c = Config::parse_from(["tracer-node", "--address", ":8080"]);
        assert!(matches!(c.validate(), Err(ConfigError::Unauthenticated(_))));
        Config::parse_from(["tracer-node", "--address", ":8080", "--insecure-no-auth"]).validate().expect("opt-out");
        Config::parse_from(["tracer-node", "--address", ":8080", "--auth-token-file", "/etc/tokens"])
            .validate()
            .expect("token file");
        let both = Config::parse_from(["tracer-node", "--auth-token-file", "/t", "--insecure-no-auth"]);
        assert!(matches!(both.validate(), Err(ConfigError::AuthContradiction)));
        let relative = Config::parse_from(["tracer-node", "--auth-token-file", "tokens"]);
        assert!(matches!(relative.validate(), Err(ConfigError::RelativePath { flag: "auth-token-file", .. })));
    }

    #[test]
    fn relative_paths_are_refused() {
        let mut c = Config::parse_from(["tracer-node"]);
        c.validate().expect("defaults are valid");
        c.state_dir = "state".into();
        assert!(matches!(c.validate(), Err(ConfigError::RelativePath { flag: "state-dir", .. })));
    }
}
