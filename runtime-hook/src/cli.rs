//! Command line of the hook. Every flag has an env fallback, but the runtime usually gives the hook
//! no environment at all, so every default must work alone.

use std::path::PathBuf;

use clap::Parser;

use tracer_api::hook::{DEFAULT_SOCKET, DEFAULT_SPOOL_DIR};

/// OCI runtime hook: registers containers with tracer-node at creation, removes them at poststop.
///
/// Reads the OCI container state JSON on stdin. Fails open: whatever goes wrong, the container
/// starts and the event is spooled for tracer-node to replay.
#[derive(Debug, Clone, Parser)]
#[command(name = "runtime-hook", version)]
pub struct Cli {
    /// Unix socket of tracer-node's container registry.
    #[arg(long, env = "TRACER_REGISTRY_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,

    /// Directory where undeliverable events are written for tracer-node to replay.
    #[arg(long, env = "TRACER_SPOOL_DIR", default_value = DEFAULT_SPOOL_DIR)]
    pub spool_dir: PathBuf,

    /// Total time the hook may take, in milliseconds, before it spools the event and returns.
    #[arg(long, env = "TRACER_HOOK_DEADLINE_MS", default_value_t = 250,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub deadline_ms: u64,

    /// Exit non-zero on bad usage or unreadable state instead of failing open.
    #[arg(long, env = "TRACER_HOOK_STRICT")]
    pub strict: bool,

    /// The OCI hook stage: prestart or createRuntime register, poststop unregisters, other stages
    /// are accepted and ignored. Without it the stage is inferred from the state's status.
    pub stage: Option<String>,
}
