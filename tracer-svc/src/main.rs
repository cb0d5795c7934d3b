//! The `tracer-svc` binary: flags, logging, then [`tracer_svc::run`].

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = tracer_svc::Config::parse();
    match tracer_svc::run(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "tracer-svc failed");
            // 64 (EX_USAGE) for a configuration that cannot work, as tracer-node exits.
            if matches!(e, tracer_svc::RunError::Config(_)) {
                std::process::ExitCode::from(64)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}
